#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    meshrev::cli::main()
}

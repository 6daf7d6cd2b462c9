//! `kubectl meshrev …`: kubectl runs an executable named `kubectl-meshrev` found on PATH as
//! the plugin `meshrev`. The same command line as the `meshrev` binary; clap names itself
//! `kubectl meshrev` from `argv[0]` (see `meshrev::cli::main`).

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    meshrev::cli::main()
}

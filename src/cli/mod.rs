//! The `meshrev` command line. Thin: each subcommand parses its flags and calls the library.

mod certs;
pub mod inject;

pub use inject::inject_documents;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "meshrev",
    version,
    about = "Revision-aware sidecar injection and safe canary upgrades for Istio-compatible meshes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the serve flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the admission webhook (TLS), metrics and health endpoints.
    Serve(crate::runtime::ServeArgs),
    /// Inject sidecars into workloads offline (like `istioctl kube-inject`, revision-aware).
    Inject(inject::InjectArgs),
    /// Print the CustomResourceDefinitions of MeshRevision and RevisionTag.
    Crd,
    /// Generate a CA and serving certificate for the webhook; print the caBundle.
    Certs(certs::CertsArgs),
    /// Canary upgrade of the mesh: status, canary, switch, verify, promote, rollout,
    /// unpublish, rollback, revoke.
    Upgrade(crate::upgrade::cli::UpgradeArgs),
    /// Adopt an installed Istio: plan, --yes, --takeover, --release.
    Adopt(crate::adopt::cli::AdoptArgs),
}

/// The name to show in help and usage for a process started as `argv0`: `kubectl meshrev`
/// when the executable is the kubectl plugin `kubectl-meshrev` (as kubectl runs it, or
/// directly), `meshrev` otherwise.
pub fn display_name(argv0: Option<&std::ffi::OsStr>) -> &'static str {
    let stem = argv0
        .map(std::path::Path::new)
        .and_then(std::path::Path::file_stem)
        .and_then(std::ffi::OsStr::to_str);
    if stem == Some("kubectl-meshrev") {
        "kubectl meshrev"
    } else {
        "meshrev"
    }
}

/// Entry point of both binaries, `meshrev` and the kubectl plugin `kubectl-meshrev`.
pub fn main() -> ExitCode {
    let name = display_name(std::env::args_os().next().as_deref());
    crate::upgrade::cli::set_display_name(name);
    let matches = Cli::command()
        .bin_name(name)
        .display_name(name)
        .get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // The upgrade commands report errors themselves, naming the object and the fix; the
    // client's own error lines would only repeat them.
    init_tracing(match cli.command {
        Command::Upgrade(_) | Command::Adopt(_) => "warn,kube_client=off",
        _ => "info",
    });
    let result = match cli.command {
        Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(crate::runtime::run(args))
                    .map_err(anyhow::Error::from)
            }),
        Command::Inject(args) => inject::run(args),
        Command::Crd => {
            print!("{}", crate::config::crd_yaml());
            Ok(())
        }
        Command::Certs(args) => certs::run(args),
        Command::Upgrade(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(crate::upgrade::cli::run(args))),
        Command::Adopt(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(crate::adopt::cli::run(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Its fix line may suggest a command: as the user invoked this CLI.
            eprintln!(
                "{}",
                crate::upgrade::cli::for_display(&format!("error: {e:#}"))
            );
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("MESHREV_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::display_name;
    use std::ffi::OsStr;

    #[test]
    fn the_plugin_names_itself_kubectl_meshrev() {
        for argv0 in [
            "kubectl-meshrev",
            "/usr/local/bin/kubectl-meshrev",
            "kubectl-meshrev.exe",
        ] {
            assert_eq!(display_name(Some(OsStr::new(argv0))), "kubectl meshrev");
        }
        for argv0 in ["meshrev", "/usr/bin/meshrev", "kubectl", "kubectl-meshrevx"] {
            assert_eq!(display_name(Some(OsStr::new(argv0))), "meshrev", "{argv0}");
        }
        assert_eq!(display_name(None), "meshrev");
    }
}

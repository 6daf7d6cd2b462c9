//! The `meshrev` command line. Thin: each subcommand parses its flags and calls the library.

mod certs;
pub mod inject;

pub use inject::inject_documents;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The upgrade commands report errors themselves, naming the object and the fix; the
    // client's own error lines would only repeat them.
    init_tracing(match cli.command {
        Command::Upgrade(_) => "warn,kube_client=off",
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
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

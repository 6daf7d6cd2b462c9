//! The `meshrev` command line. Thin: each subcommand parses its flags and calls the library.

mod inject;

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

#[derive(Subcommand)]
enum Command {
    /// Run the admission webhook (TLS), metrics and health endpoints.
    Serve(crate::server::ServeArgs),
    /// Inject sidecars into workloads offline (like `istioctl kube-inject`, revision-aware).
    Inject(inject::InjectArgs),
    /// Print the CustomResourceDefinitions of MeshRevision and RevisionTag.
    Crd,
    /// Generate a CA and serving certificate for the webhook; print the caBundle.
    Certs(crate::server::certs::CertsArgs),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(crate::server::run(args))),
        Command::Inject(args) => inject::run(args),
        Command::Crd => {
            print!("{}", crate::config::crd_yaml());
            Ok(())
        }
        Command::Certs(args) => crate::server::certs::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MESHREV_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

//! `meshrev certs`: the flags and the output; the work is [`crate::server::certs`]'s.

use std::path::PathBuf;

use crate::server::certs::{ca_bundle_base64, dns_names, ensure, generate_into};

/// `meshrev certs`: generate a CA and a serving certificate for the webhook's Service.
#[derive(clap::Args, Debug)]
pub(crate) struct CertsArgs {
    /// Directory to write ca.crt, tls.crt and tls.key into (created if missing).
    #[arg(long, value_name = "DIR", default_value = "certs")]
    pub(crate) out: PathBuf,
    /// Name of the webhook's Service.
    #[arg(long, value_name = "NAME", default_value = "meshrev")]
    pub(crate) service: String,
    /// Namespace of the webhook's Service.
    #[arg(long, value_name = "NS", default_value = "meshrev-system")]
    pub(crate) namespace: String,
    /// Generate new files even when the existing ones are still valid.
    #[arg(long)]
    pub(crate) force: bool,
}

/// Writes (or reuses) the files, reports them on stderr and prints the base64 `caBundle`
/// (for a MutatingWebhookConfiguration) alone on stdout.
pub(crate) fn run(args: CertsArgs) -> anyhow::Result<()> {
    let names = dns_names(&args.service, &args.namespace);
    let got = if args.force {
        generate_into(&args.out, &names)?
    } else {
        ensure(&args.out, &names)?
    };
    eprintln!(
        "{} {} (CA), {} and {} for {}",
        if got.reused { "kept" } else { "wrote" },
        got.paths.ca.display(),
        got.paths.cert.display(),
        got.paths.key.display(),
        names.join(", ")
    );
    println!("{}", ca_bundle_base64(&got.ca_pem));
    Ok(())
}

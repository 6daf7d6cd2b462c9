//! The webhook server (being written).
pub mod certs;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {}

pub async fn run(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("meshrev serve is not built yet")
}

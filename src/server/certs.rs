#[derive(clap::Args, Debug)]
pub struct CertsArgs {}

pub fn run(_args: CertsArgs) -> anyhow::Result<()> {
    anyhow::bail!("meshrev certs is not built yet")
}

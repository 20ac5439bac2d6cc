//! `autonomy serve`: runs the control plane. (Being written by the store/server work.)
use std::process::ExitCode;

use clap::Args;

/// Run the control plane (CP).
#[derive(Debug, Args)]
pub struct ServeArgs {}

impl ServeArgs {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        anyhow::bail!("serve is not built yet")
    }
}

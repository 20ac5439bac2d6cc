//! `autonomy audit …`: query and verify the retained audit store.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use super::Ctx;
use crate::exit::{self, Exit};

pub mod query;
pub mod verify;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    Query(query::QueryArgs),
    Verify(verify::VerifyArgs),
}

impl AuditCommand {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        match self {
            AuditCommand::Query(args) => args.run(ctx),
            AuditCommand::Verify(args) => args.run(ctx),
        }
    }
}

/// An audit directory that does not exist is an error, never an empty store: a typo in the
/// path must not read as "no events" or "verified".
fn require_dir(dir: &Path, flag: &str) -> anyhow::Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(exit::failure(
            Exit::Other,
            format!(
                "no audit store at {} ({flag}): not a directory",
                dir.display()
            ),
        )),
        Err(e) => Err(exit::failure(
            Exit::Other,
            format!(
                "no audit store at {} ({flag}): {}",
                dir.display(),
                e.to_string().to_lowercase()
            ),
        )),
    }
}

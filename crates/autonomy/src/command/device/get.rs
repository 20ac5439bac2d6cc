//! `autonomy device get ID`: GET /v1/devices/{id}.

use std::process::ExitCode;

use clap::Args;

use super::device_line;
use crate::command::Ctx;

/// Show one device: GET /v1/devices/{id}
///
/// Text output is one line: id, labels, created_at, and when known installed_digest,
/// last_seen_at, revoked_at, the plan, attempt and state of its current assignment, and the
/// conditions of its last poll (JSON; SPEC §8.7).
/// Exit 4 when no device has that id.
///
/// Examples:
///   autonomy device get amr-0007
///   autonomy device get amr-0007 -o json | jq .assignment
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct GetArgs {
    /// The device's id.
    pub id: String,
}

impl GetArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        ctx.out
            .answer(&ctx.call(ctx.api.get_device(&self.id))?, device_line)?;
        Ok(ExitCode::SUCCESS)
    }
}

//! `autonomy rollout get ID`: GET /v1/rollouts/{id}.

use std::process::ExitCode;

use clap::Args;

use super::rollout_line;
use crate::command::Ctx;

/// Show one rollout plan: GET /v1/rollouts/{id}
///
/// Text output is one line: id, phase, generation, artifact_ref, created_by, updated_at (and
/// warnings, if any). `-o json` prints the whole resource, history included. Exit 4 when no
/// plan has that id.
///
/// Examples:
///   autonomy rollout get web-1
///   autonomy rollout get web-1 -o json | jq .status.history
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct GetArgs {
    /// The plan's id.
    pub id: String,
}

impl GetArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        ctx.out
            .answer(&ctx.call(ctx.api.get_rollout(&self.id))?, rollout_line)?;
        Ok(ExitCode::SUCCESS)
    }
}

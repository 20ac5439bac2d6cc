//! `autonomy token revoke ID`: POST /v1/tokens/{id}/revoke.

use std::process::ExitCode;

use clap::Args;

use super::token_line;
use crate::command::Ctx;

/// Revoke an API token (admin only): POST /v1/tokens/{id}/revoke
///
/// Takes effect on the next request made with it. Prints the token (never its secret) with
/// its `revoked_at`. Exit 4 if there is no such token.
///
/// Examples:
///   autonomy token revoke tok-3f9a…
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct RevokeArgs {
    /// The token's id (from `token list`), not its secret.
    pub id: String,
}

impl RevokeArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        ctx.out
            .answer(&ctx.call(ctx.api.revoke_token(&self.id))?, token_line)?;
        Ok(ExitCode::SUCCESS)
    }
}

//! `autonomy device revoke ID`: POST /v1/devices/{id}/revoke.

use std::process::ExitCode;

use clap::Args;

use super::device_line;
use crate::command::Ctx;

/// Revoke a device: POST /v1/devices/{id}/revoke
///
/// Its token stops working on its next request (401), and its assignments that have not
/// started are cancelled. Prints the device with its `revoked_at`. Exit 4 when no device has
/// that id.
///
/// Examples:
///   autonomy device revoke amr-0007
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct RevokeArgs {
    /// The device's id.
    pub id: String,
}

impl RevokeArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        ctx.out
            .answer(&ctx.call(ctx.api.revoke_device(&self.id))?, device_line)?;
        Ok(ExitCode::SUCCESS)
    }
}

//! `autonomy health`: GET /v1/health.

use std::process::ExitCode;

use autonomy_api::Health;
use clap::Args;

use super::Ctx;
use crate::output::logfmt;

/// Check that the control plane is up: GET /v1/health
///
/// Prints `status=ok version=… store=… server=…`; exits 3 when nothing answers at --server.
///
/// Examples:
///   autonomy health
///   autonomy health --server http://10.0.0.5:8080 -o json
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct HealthArgs {}

impl HealthArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let reply = ctx.call(ctx.api.health())?;
        let server = ctx.transport.server();
        ctx.out.answer(&reply, |h: &Health| {
            logfmt(&[
                ("status", h.status.as_str()),
                ("version", &h.version),
                ("store", &h.store),
                ("server", server),
            ])
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

//! `autonomy health` (GET /v1/health) and `autonomy leader` (GET /v1/leader).

use std::process::ExitCode;

use autonomy_api::Health;
use clap::Args;

use super::Ctx;
use crate::output::logfmt;

/// Check that the control plane is up: GET /v1/health
///
/// Prints `status=ok version=… store=… server=… audit=verifying|ok|damaged` (and, when damaged,
/// where: `audit_segment=… audit_line=… audit_seq=… audit_problem=…`); exits 3 when nothing
/// answers at --server.
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
            let mut fields = vec![
                ("status", h.status.clone()),
                ("version", h.version.clone()),
                ("store", h.store.clone()),
                ("server", server.to_string()),
            ];
            if let Some(audit) = h.audit {
                fields.push(("audit", audit.as_str().to_string()));
            }
            if let Some(d) = &h.audit_damage {
                fields.push(("audit_segment", d.segment.clone()));
                fields.push(("audit_line", d.line.to_string()));
                if let Some(seq) = d.seq {
                    fields.push(("audit_seq", seq.to_string()));
                }
                fields.push(("audit_problem", d.message.clone()));
            }
            logfmt(&fields)
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Which replica runs the promoter: GET /v1/leader
///
/// Prints `replica=… epoch=… since=… self=true|false` (`self`: the replica at --server is the
/// leader). On SQLite the one CP always leads, under the epoch its start raised; over
/// PostgreSQL the replica holding the leader lock does (SPEC §7). Needs no token.
///
/// Examples:
///   autonomy leader
///   autonomy leader --server http://10.0.0.6:8080 -o json
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct LeaderArgs {}

impl LeaderArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let reply = ctx.call(ctx.api.leader())?;
        ctx.out.answer(&reply, |l: &autonomy_api::LeaderInfo| {
            logfmt(&[
                ("replica", l.replica.clone()),
                ("epoch", l.epoch.to_string()),
                ("since", l.since.clone()),
                ("self", l.is_self.to_string()),
            ])
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

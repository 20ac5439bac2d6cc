//! `autonomy audit query`: the audit store directly (`--audit-dir`), else GET /v1/audit/events.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use autonomy_api::{AuditEvent, AuditEventList, AuditQuery};
use clap::Args;

use super::require_dir;
use crate::command::Ctx;
use crate::exit;
use crate::output::Table;

/// Query the audit trail, oldest event first
///
/// With --audit-dir (or AUTONOMY_AUDIT_DIR) the retained audit store is read directly, which
/// works while the control plane is down; otherwise the CP answers (GET /v1/audit/events).
/// Both answer the same: `-o json` prints `{"items":[…]}`, text prints a table
/// (SEQ TIME EVENT_TYPE ACTOR RESOURCE OUTCOME). Times are RFC 3339; the range is
/// start-time <= time < end-time.
///
/// Examples:
///   autonomy audit query --event-type rollback.executed --actor val11-chaos-op -o json
///   autonomy audit query --resource web-1 --outcome denied --limit 50
///   autonomy audit query --audit-dir ./autonomy-data/audit --start-time 2026-01-01T00:00:00Z
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct QueryArgs {
    /// Only events of this type, e.g. `rollback.executed`.
    #[arg(long, value_name = "TYPE")]
    pub event_type: Option<String>,

    /// Only events by this operator.
    #[arg(long, value_name = "NAME")]
    pub actor: Option<String>,

    /// Only events about this resource (e.g. a plan id).
    #[arg(long, value_name = "ID")]
    pub resource: Option<String>,

    /// Only events with this outcome: success, noop, rejected, denied or error.
    #[arg(long, value_name = "OUTCOME")]
    pub outcome: Option<String>,

    /// Only events at or after this time (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    pub start_time: Option<String>,

    /// Only events before this time (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    pub end_time: Option<String>,

    /// At most N events (default 100, at most 10000).
    #[arg(long, value_name = "N")]
    pub limit: Option<String>,

    /// Read this audit store directly instead of asking the control plane.
    #[arg(long, env = "AUTONOMY_AUDIT_DIR", value_name = "DIR")]
    pub audit_dir: Option<PathBuf>,
}

impl QueryArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let query = AuditQuery {
            event_type: self.event_type,
            actor: self.actor,
            resource: self.resource,
            outcome: self.outcome,
            start_time: self.start_time,
            end_time: self.end_time,
            limit: self.limit,
        };
        let filter = query.parse().map_err(|e| {
            exit::usage(format!(
                "invalid value for --{}: {}",
                e.field.replace('_', "-"),
                e.message
            ))
        })?;
        match self.audit_dir {
            Some(dir) => {
                require_dir(&dir, "--audit-dir")?;
                let items = autonomy_audit::query(&dir, &filter)
                    .with_context(|| format!("cannot read the audit store at {}", dir.display()))?;
                let list = AuditEventList { items };
                if ctx.out.is_json() {
                    ctx.out.print(&serde_json::to_string(&list)?)?;
                } else {
                    ctx.out.print(&table(&list))?;
                }
            }
            None => {
                let reply = ctx.call(ctx.api.audit_events(&query))?;
                ctx.out.answer(&reply, table)?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn table(list: &AuditEventList) -> String {
    let mut table = Table::new(&["SEQ", "TIME", "EVENT_TYPE", "ACTOR", "RESOURCE", "OUTCOME"]);
    for e in &list.items {
        table.row(row(e));
    }
    table.render()
}

fn row(e: &AuditEvent) -> Vec<String> {
    vec![
        e.seq.to_string(),
        e.time.clone(),
        e.event_type.clone(),
        e.actor.clone(),
        e.resource.clone(),
        e.outcome.to_string(),
    ]
}

//! `autonomy rollout stuck`: GET /v1/rollouts/stuck.

use std::process::ExitCode;

use autonomy_api::{StuckQuery, StuckReport};
use clap::Args;

use crate::command::Ctx;
use crate::output::{logfmt, Table};

/// Find stuck rollouts: GET /v1/rollouts/stuck
///
/// A plan is stuck when it is published or active and has made no progress for longer than
/// --threshold-seconds. Text output: a `stuck_count=N threshold_seconds=T` line, a table
/// (ID PHASE STALE_S DIAGNOSIS), then one `suggest=ID action="…"` line per ready-to-run
/// recovery command. Exit 0 whether or not anything is stuck.
///
/// Examples:
///   autonomy rollout stuck --threshold-seconds 300
///   autonomy rollout stuck --threshold-seconds 0.5 -o json | jq '.items[].id'
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct StuckArgs {
    /// Stuck means no progress for more than this many seconds (fractions allowed; the CP's
    /// default when omitted).
    #[arg(long, value_name = "N", value_parser = parse_threshold, allow_negative_numbers = true)]
    pub threshold_seconds: Option<f64>,

    /// At most N stuck plans.
    #[arg(long, value_name = "N", value_parser = super::limit_parser(), allow_negative_numbers = true)]
    pub limit: Option<u32>,
}

impl StuckArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let query = StuckQuery {
            threshold_seconds: self.threshold_seconds.map(|t| t.to_string()),
            limit: self.limit.map(|l| l.to_string()),
            code: None,
        };
        let reply = ctx.call(ctx.api.stuck_rollouts(&query))?;
        ctx.out.answer(&reply, |report: &StuckReport| {
            let mut lines = vec![logfmt(&[
                ("stuck_count", report.stuck_count.to_string()),
                ("threshold_seconds", report.threshold_seconds.to_string()),
            ])];
            if !report.items.is_empty() {
                let mut table = Table::new(&["ID", "PHASE", "STALE_S", "DIAGNOSIS"]);
                for item in &report.items {
                    table.row(vec![
                        item.id.clone(),
                        item.phase.to_string(),
                        format!("{:.1}", item.stale_seconds),
                        item.diagnosis.clone(),
                    ]);
                }
                lines.push(table.render());
                for item in &report.items {
                    for action in &item.suggested_actions {
                        lines.push(logfmt(&[("suggest", item.id.as_str()), ("action", action)]));
                    }
                }
            }
            lines.join("\n")
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

/// `--threshold-seconds`: a non-negative number, fractions allowed.
fn parse_threshold(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a non-negative number of seconds")),
    }
}

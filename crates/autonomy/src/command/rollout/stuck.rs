//! `autonomy rollout stuck`: GET /v1/rollouts/stuck.

use std::process::ExitCode;

use autonomy_api::{StuckCode, StuckItem, StuckQuery, StuckReport};
use clap::Args;

use crate::command::Ctx;
use crate::output::{logfmt, Table};

/// Find stuck rollouts: GET /v1/rollouts/stuck
///
/// A plan is stuck when it is published or active and has made no progress for longer than
/// --threshold-seconds. For engine-driven plans the scan also covers plans the engine paused
/// and rolled-back plans whose reverts have not finished (plans an operator paused are left
/// out), and finds why: a gate waiting for approval, the failure threshold reached, failing,
/// silent, non-converging or drifted devices. Each stuck plan has a main reason code and, for
/// an engine-driven plan, every reason found with its device count and up to 10 device ids,
/// and the stage it is on.
///
/// Text output:
///   stuck_count=N threshold_seconds=T by_code=CODE:N,…   (plans per main code)
///   a table: ID PHASE STALE_S DIAGNOSIS
///   then per plan: `plan=ID code=CODE`,
///     `stage=ID index=K name=… required=N verified=N in_flight=N failed=N`,
///     one `reason=ID code=CODE count=N devices=a,b,…` per reason,
///     one `suggest=ID action="…"` per ready-to-run recovery command.
/// Exit 0 whether or not anything is stuck.
///
/// Codes, in precedence order: promoter_not_running, awaiting_start, awaiting_approval,
/// failure_threshold_reached, stage_threshold_unreachable, failing_devices, silent_devices,
/// non_converging_devices, drifted_devices, revert_not_converging, no_progress.
///
/// Examples:
///   autonomy rollout stuck --threshold-seconds 300
///   autonomy rollout stuck --code failure_threshold_reached
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

    /// Only plans whose main reason is this code.
    #[arg(long, value_name = "CODE", value_parser = clap::value_parser!(StuckCode))]
    pub code: Option<StuckCode>,
}

impl StuckArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let query = StuckQuery {
            threshold_seconds: self.threshold_seconds.map(|t| t.to_string()),
            limit: self.limit.map(|l| l.to_string()),
            code: self.code.map(|c| c.to_string()),
        };
        let reply = ctx.call(ctx.api.stuck_rollouts(&query))?;
        ctx.out.answer(&reply, report_text)?;
        Ok(ExitCode::SUCCESS)
    }
}

fn report_text(report: &StuckReport) -> String {
    let mut head = vec![
        ("stuck_count", report.stuck_count.to_string()),
        ("threshold_seconds", report.threshold_seconds.to_string()),
    ];
    if !report.by_code.is_empty() {
        let by_code: Vec<String> = report
            .by_code
            .iter()
            .map(|(code, n)| format!("{code}:{n}"))
            .collect();
        head.push(("by_code", by_code.join(",")));
    }
    let mut lines = vec![logfmt(&head)];
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
            item_lines(item, &mut lines);
        }
    }
    lines.join("\n")
}

/// The `plan=`, `stage=`, `reason=` and `suggest=` lines of one stuck plan.
fn item_lines(item: &StuckItem, lines: &mut Vec<String>) {
    let id = item.id.as_str();
    lines.push(logfmt(&[("plan", id), ("code", item.code.as_str())]));
    if let Some(s) = &item.stage {
        lines.push(logfmt(&[
            ("stage", id.to_string()),
            ("index", s.index.to_string()),
            ("name", s.name.clone()),
            ("required", s.required.to_string()),
            ("verified", s.verified.to_string()),
            ("in_flight", s.in_flight.to_string()),
            ("failed", s.failed.to_string()),
        ]));
    }
    for reason in &item.reasons {
        lines.push(logfmt(&[
            ("reason", id.to_string()),
            ("code", reason.code.to_string()),
            ("count", reason.count.to_string()),
            ("devices", reason.devices.join(",")),
        ]));
    }
    for action in &item.suggested_actions {
        lines.push(logfmt(&[("suggest", id), ("action", action)]));
    }
}

/// `--threshold-seconds`: a non-negative number, fractions allowed.
fn parse_threshold(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a non-negative number of seconds")),
    }
}

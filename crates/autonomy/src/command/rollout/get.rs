//! `autonomy rollout get ID`: GET /v1/rollouts/{id}.

use std::process::ExitCode;

use autonomy_api::{Rollout, RolloutStatus, StageStatus};
use clap::Args;

use super::rollout_line;
use crate::command::Ctx;
use crate::output::{logfmt, Table};

/// Show one rollout plan: GET /v1/rollouts/{id}
///
/// Text output is one line: id, phase, generation, artifact_ref, created_by, updated_at (and
/// warnings, if any). For an engine-driven plan, a second line gives the engine's state
/// (`current_stage=K`, and when set `gate=K gate_since=…`, `paused_by=operator|engine`,
/// `reason=…`, `accepted_failures=N`; always `drifted=N`), then a stage table: INDEX NAME
/// SIZE REQUIRED STATE COUNTS, COUNTS being the devices per state (`verified=3 failed=1`).
/// `-o json` prints the whole resource, history included. Exit 4 when no plan has that id.
///
/// Examples:
///   autonomy rollout get web-1
///   autonomy rollout get web-1 -o json | jq .status.history
///   autonomy rollout get fw-7 -o json | jq .status.rollout.stages
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct GetArgs {
    /// The plan's id.
    pub id: String,
}

impl GetArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        ctx.out
            .answer(&ctx.call(ctx.api.get_rollout(&self.id))?, rollout_text)?;
        Ok(ExitCode::SUCCESS)
    }
}

/// The plan's line, then, for an engine-driven plan, the engine line and the stage table.
fn rollout_text(r: &Rollout) -> String {
    let mut text = rollout_line(r);
    if let Some(engine) = &r.status.rollout {
        text.push('\n');
        text.push_str(&engine_line(engine));
        text.push('\n');
        text.push_str(&stage_table(&engine.stages));
    }
    text
}

/// `current_stage=K [gate=K gate_since=…] [paused_by=… reason=…] [accepted_failures=N]
/// drifted=N`.
fn engine_line(s: &RolloutStatus) -> String {
    let mut pairs = vec![("current_stage", s.current_stage.to_string())];
    if let Some(gate) = &s.gate {
        pairs.push(("gate", gate.stage.to_string()));
        pairs.push(("gate_since", gate.since.clone()));
    }
    if let Some(by) = s.paused_by {
        pairs.push(("paused_by", by.to_string()));
    }
    if let Some(reason) = s.reason {
        pairs.push(("reason", reason.to_string()));
    }
    if s.accepted_failures > 0 {
        pairs.push(("accepted_failures", s.accepted_failures.to_string()));
    }
    pairs.push(("drifted", s.drifted.to_string()));
    logfmt(&pairs)
}

/// INDEX NAME SIZE REQUIRED STATE COUNTS, one row per stage.
fn stage_table(stages: &[StageStatus]) -> String {
    let mut table = Table::new(&["INDEX", "NAME", "SIZE", "REQUIRED", "STATE", "COUNTS"]);
    for (i, stage) in stages.iter().enumerate() {
        let counts: Vec<String> = stage
            .counts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(state, n)| format!("{state}={n}"))
            .collect();
        table.row(vec![
            i.to_string(),
            stage.name.clone(),
            stage.size.to_string(),
            stage.required.to_string(),
            stage.state.to_string(),
            counts.join(" "),
        ]);
    }
    table.render()
}

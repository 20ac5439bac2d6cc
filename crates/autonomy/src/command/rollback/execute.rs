//! `autonomy rollback execute`: POST /v1/rollback/execute.

use std::process::ExitCode;

use autonomy_api::{ExecuteRequest, ExecuteResponse, Strategy};
use autonomy_client::ClientError;
use clap::{Args, ValueEnum};

use crate::command::Ctx;
use crate::exit;
use crate::output::logfmt;

/// Recover a rollout plan: POST /v1/rollback/execute
///
/// Strategies: `retry` moves a published, active, paused or failed plan to active
/// (re-dispatch; resets the stuck clock); `rollback` moves any non-terminal or completed plan
/// to rolled_back; `abort` moves a non-terminal plan to aborted. Asking for the phase the plan
/// is already in answers `outcome=noop` (exit 0); anything else is `outcome=rejected` (exit 5,
/// the answer is still printed). `--dry-run` reports what would happen and changes nothing.
///
/// Text output: `outcome=… execution_id=… resource=… strategy=… from_phase=… to_phase=…
/// dry_run=… audit_event_id=… message="…"`.
///
/// Examples:
///   autonomy rollback execute --target rollout_plan --resource web-1 --strategy retry --reason 'stuck at gate'
///   autonomy rollback execute --resource web-1 --strategy rollback --reason 'bad artifact' --dry-run
///   autonomy rollback execute --resource web-1 --strategy abort --reason 'cancelled' --idempotency-key abort-web-1
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ExecuteArgs {
    /// What to recover (only rollout plans today).
    #[arg(
        long,
        value_enum,
        default_value = "rollout_plan",
        value_name = "TARGET"
    )]
    pub target: Target,

    /// The id of the plan to recover.
    #[arg(long, value_name = "ID")]
    pub resource: String,

    /// retry, rollback or abort.
    #[arg(long, value_name = "STRATEGY", value_parser = clap::value_parser!(Strategy))]
    pub strategy: Strategy,

    /// Why, for the plan's history and the audit trail (required).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,

    /// Report what would happen without changing anything.
    #[arg(long)]
    pub dry_run: bool,

    /// Make a retried execute return the first answer instead of acting twice.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    #[value(name = "rollout_plan")]
    RolloutPlan,
}

impl ExecuteArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        if self.reason.trim().is_empty() {
            return Err(exit::usage("invalid value for --reason: must not be empty"));
        }
        let body = ExecuteRequest {
            target: "rollout_plan".to_string(),
            resource: self.resource,
            strategy: self.strategy,
            reason: self.reason,
            dry_run: self.dry_run,
        };
        let call = ctx
            .api
            .execute_rollback(&body, self.idempotency_key.as_deref());
        match ctx.call(call) {
            Ok(reply) => {
                ctx.out.answer(&reply, execute_line)?;
                Ok(ExitCode::SUCCESS)
            }
            Err(ClientError::Rejected(rejected)) => {
                // A rejected execution still carries the full answer: show it, then fail
                // (exit 5).
                ctx.out
                    .decoded(&rejected.error.body, &rejected.execution, execute_line)?;
                Err(ClientError::Rejected(rejected).into())
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn execute_line(r: &ExecuteResponse) -> String {
    let mut pairs = vec![
        ("outcome", r.outcome.to_string()),
        ("execution_id", r.execution_id.clone()),
        ("resource", r.resource.clone()),
        ("strategy", r.strategy.to_string()),
        ("from_phase", r.from_phase.to_string()),
        ("to_phase", r.to_phase.to_string()),
        ("dry_run", r.dry_run.to_string()),
    ];
    if let Some(id) = &r.audit_event_id {
        pairs.push(("audit_event_id", id.clone()));
    }
    if let Some(generation) = r.generation {
        pairs.push(("generation", generation.to_string()));
    }
    if !r.message.is_empty() {
        pairs.push(("message", r.message.clone()));
    }
    logfmt(&pairs)
}

//! `autonomy rollout publish|start|pause|resume ID`: POST /v1/rollouts/{id}/{verb}.

use std::process::ExitCode;

use autonomy_api::{TransitionRequest, Verb};
use clap::Args;

use super::rollout_line;
use crate::command::Ctx;

pub const PUBLISH_EXAMPLES: &str = "\
Prints the plan after the change. Exit 5 if the plan is not in draft, 4 if there is no such plan.

Examples:
  autonomy rollout publish web-1
  autonomy rollout publish web-1 --reason 'reviewed by bob'";
pub const START_EXAMPLES: &str = "\
An engine-driven plan waits at a gate before its first stage and before every stage with
`approval: manual` (status.rollout.gate); `start` passes the gate it waits at. With --stage K
the approval is for gate K only: exit 5 unless the plan waits at gate K, so a stale approval
cannot pass a later gate.

Prints the plan after the change. Exit 5 if the plan is not published, 4 if there is no such plan.

Examples:
  autonomy rollout start web-1 --reason 'change window open'
  autonomy rollout start fw-7 --stage 2 --reason 'canary looks good'";
pub const PAUSE_EXAMPLES: &str = "\
Prints the plan after the change. Exit 5 if the plan is not active, 4 if there is no such plan.

Examples:
  autonomy rollout pause web-1 --reason 'error rate up in stage 2'";
pub const RESUME_EXAMPLES: &str = "\
Prints the plan after the change. Exit 5 if the plan is not paused, 4 if there is no such plan.

Examples:
  autonomy rollout resume web-1 --reason 'fix deployed'";

#[derive(Debug, Args)]
pub struct TransitionArgs {
    /// The plan's id.
    pub id: String,

    /// Why, for the plan's history and the audit trail.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

/// `rollout start`: the common flags and the gate the approval is for.
#[derive(Debug, Args)]
pub struct StartArgs {
    #[command(flatten)]
    pub common: TransitionArgs,

    /// Pass gate K only (the index of the stage it stands before; 0 is the start gate):
    /// refused (exit 5) unless the plan waits at gate K.
    #[arg(long, value_name = "K", allow_negative_numbers = true)]
    pub stage: Option<u32>,
}

impl StartArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        self.common.send(Verb::Start, self.stage, ctx)
    }
}

impl TransitionArgs {
    pub fn run(self, verb: Verb, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        self.send(verb, None, ctx)
    }

    fn send(self, verb: Verb, stage: Option<u32>, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let body = TransitionRequest {
            reason: self.reason.unwrap_or_default(),
            stage,
        };
        let reply = ctx.call(ctx.api.transition(&self.id, verb, &body))?;
        ctx.out.answer(&reply, rollout_line)?;
        Ok(ExitCode::SUCCESS)
    }
}

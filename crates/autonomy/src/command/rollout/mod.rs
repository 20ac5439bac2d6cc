//! `autonomy rollout …`: plans, the stuck scan and the operator transitions.

use std::process::ExitCode;

use autonomy_api::{Rollout, Verb};
use clap::Subcommand;

use super::Ctx;
use crate::output::logfmt;

pub mod create;
pub mod devices;
pub mod get;
pub mod list;
pub mod stuck;
pub mod transition;

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    Create(create::CreateArgs),
    Get(get::GetArgs),
    List(list::ListArgs),
    Stuck(stuck::StuckArgs),
    Devices(devices::DevicesArgs),
    /// Publish a draft plan (draft → published).
    #[command(after_help = transition::PUBLISH_EXAMPLES)]
    Publish(transition::TransitionArgs),
    /// Start a published plan (published → active), passing the gate it waits at.
    #[command(after_help = transition::START_EXAMPLES)]
    Start(transition::StartArgs),
    /// Pause an active plan (active → paused).
    #[command(after_help = transition::PAUSE_EXAMPLES)]
    Pause(transition::TransitionArgs),
    /// Resume a paused plan (paused → active).
    #[command(after_help = transition::RESUME_EXAMPLES)]
    Resume(transition::TransitionArgs),
}

impl RolloutCommand {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        match self {
            RolloutCommand::Create(args) => args.run(ctx),
            RolloutCommand::Get(args) => args.run(ctx),
            RolloutCommand::List(args) => args.run(ctx),
            RolloutCommand::Stuck(args) => args.run(ctx),
            RolloutCommand::Devices(args) => args.run(ctx),
            RolloutCommand::Publish(args) => args.run(Verb::Publish, ctx),
            RolloutCommand::Start(args) => args.run(ctx),
            RolloutCommand::Pause(args) => args.run(Verb::Pause, ctx),
            RolloutCommand::Resume(args) => args.run(Verb::Resume, ctx),
        }
    }
}

/// The text form of one rollout: `id=… phase=… generation=… artifact_ref=… created_by=…
/// updated_at=…` plus `warnings="…"` when there are any.
pub fn rollout_line(r: &Rollout) -> String {
    let m = &r.plan.metadata;
    let mut pairs = vec![
        ("id", m.id.clone()),
        ("phase", r.status.phase.to_string()),
        ("generation", m.generation.to_string()),
        ("artifact_ref", r.plan.spec.artifact_ref.clone()),
        ("created_by", m.created_by.clone()),
        ("updated_at", m.updated_at.clone()),
    ];
    if !r.status.warnings.is_empty() {
        pairs.push(("warnings", r.status.warnings.join("; ")));
    }
    logfmt(&pairs)
}

/// The parser of the list commands' `--limit N` (also `device list`): a whole number from 1 (the commands also
/// allow negative numbers, so `--limit -1` reaches this parser and its message instead of
/// reading as a flag).
pub(crate) fn limit_parser() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..)
}

//! `autonomy rollback …`: recovery of rollout plans.

use std::process::ExitCode;

use clap::Subcommand;

use super::Ctx;

pub mod execute;

#[derive(Debug, Subcommand)]
pub enum RollbackCommand {
    Execute(execute::ExecuteArgs),
}

impl RollbackCommand {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        match self {
            RollbackCommand::Execute(args) => args.run(ctx),
        }
    }
}

//! One module per verb. Each verb is an `Args` struct with `run(self, ctx)`.

use std::process::ExitCode;

use clap::Subcommand;

use autonomy_client::blocking::Transport;
use autonomy_client::{Api, Call, ClientError, Reply};

use crate::output::Output;

pub mod agent;
pub mod audit;
pub mod completions;
pub mod device;
pub mod fleet;
pub mod health;
pub mod labels;
pub mod rollback;
pub mod rollout;
pub mod serve;
pub mod token;

/// What every client command gets: who asks (token, operator), the blocking transport to
/// the CP, and the output renderer.
pub struct Ctx {
    pub api: Api,
    pub transport: Transport,
    pub out: Output,
}

impl Ctx {
    /// Sends `call` and checks the answer (a 2xx [`Reply`], else the typed error).
    pub fn call<T>(&self, call: Call<T>) -> Result<Reply<T>, ClientError> {
        self.transport.call(&call)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane (CP).
    Serve(serve::ServeArgs),
    /// Run the edge agent on a device (SPEC §9.4).
    Agent(agent::AgentArgs),
    Health(health::HealthArgs),
    Leader(health::LeaderArgs),
    /// Rollout plans: create, get, list, their devices, the stuck scan, and operator
    /// transitions.
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// The device registry: register, list, get, label and revoke devices; enroll keys.
    #[command(subcommand)]
    Device(device::DeviceCommand),
    /// Recover a rollout plan: retry, roll back or abort it.
    #[command(subcommand)]
    Rollback(rollback::RollbackCommand),
    /// The retained, hash-chained audit store: query it and verify it.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// RBAC tokens (admin only): create, list, revoke.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// A simulated fleet: thousands of devices running the agent state machine.
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
    Completions(completions::CompletionsArgs),
    Man(completions::ManArgs),
}

impl Command {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        match self {
            Command::Serve(args) => args.run(),
            Command::Agent(args) => args.run(),
            Command::Health(args) => args.run(ctx),
            Command::Leader(args) => args.run(ctx),
            Command::Rollout(cmd) => cmd.run(ctx),
            Command::Device(cmd) => cmd.run(ctx),
            Command::Rollback(cmd) => cmd.run(ctx),
            Command::Audit(cmd) => cmd.run(ctx),
            Command::Token(cmd) => cmd.run(ctx),
            Command::Fleet(cmd) => cmd.run(ctx),
            Command::Completions(args) => args.run(),
            Command::Man(args) => args.run(),
        }
    }
}

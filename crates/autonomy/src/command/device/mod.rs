//! `autonomy device …`: the device registry (SPEC §9.1).

use std::process::ExitCode;

use autonomy_api::device::Device;
use clap::Subcommand;

use super::labels::labels_text;
use super::Ctx;
use crate::output::logfmt;

pub mod enroll_key;
pub mod get;
pub mod label;
pub mod list;
pub mod register;
pub mod revoke;

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    Register(register::RegisterArgs),
    List(list::ListArgs),
    Get(get::GetArgs),
    Label(label::LabelArgs),
    Revoke(revoke::RevokeArgs),
    /// Enroll keys, for bulk enrollment (admin only).
    #[command(subcommand)]
    EnrollKey(enroll_key::EnrollKeyCommand),
}

impl DeviceCommand {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        match self {
            DeviceCommand::Register(args) => args.run(ctx),
            DeviceCommand::List(args) => args.run(ctx),
            DeviceCommand::Get(args) => args.run(ctx),
            DeviceCommand::Label(args) => args.run(ctx),
            DeviceCommand::Revoke(args) => args.run(ctx),
            DeviceCommand::EnrollKey(cmd) => cmd.run(ctx),
        }
    }
}

/// The fields of one device as logfmt pairs: `id labels created_at`, then `installed_digest`,
/// `last_seen_at`, `revoked_at` when known, then `plan attempt state` of its current
/// assignment, if any, then `conditions` (its last poll's, as JSON) when it sent any.
pub fn device_pairs(d: &Device) -> Vec<(&'static str, String)> {
    let mut pairs = vec![
        ("id", d.id.clone()),
        ("labels", labels_text(&d.labels)),
        ("created_at", d.created_at.clone()),
    ];
    for (key, value) in [
        ("installed_digest", &d.installed_digest),
        ("last_seen_at", &d.last_seen_at),
        ("revoked_at", &d.revoked_at),
    ] {
        if let Some(value) = value {
            pairs.push((key, value.clone()));
        }
    }
    if let Some(a) = &d.assignment {
        pairs.push(("plan", a.plan_id.clone()));
        pairs.push(("attempt", a.attempt.to_string()));
        pairs.push(("state", a.state.to_string()));
    }
    if !d.conditions.is_empty() {
        pairs.push((
            "conditions",
            serde_json::to_string(&d.conditions).unwrap_or_default(),
        ));
    }
    pairs
}

/// The text form of one device: [`device_pairs`] as one logfmt line.
pub fn device_line(d: &Device) -> String {
    logfmt(&device_pairs(d))
}

//! `autonomy token …`: RBAC tokens (admin only).

use std::process::ExitCode;

use autonomy_api::TokenInfo;
use clap::Subcommand;

use super::Ctx;
use crate::output::logfmt;

pub mod create;
pub mod list;
pub mod revoke;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    Create(create::CreateArgs),
    List(list::ListArgs),
    Revoke(revoke::RevokeArgs),
}

impl TokenCommand {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        match self {
            TokenCommand::Create(args) => args.run(ctx),
            TokenCommand::List(args) => args.run(ctx),
            TokenCommand::Revoke(args) => args.run(ctx),
        }
    }
}

/// The text form of one token (never its secret).
pub fn token_line(t: &TokenInfo) -> String {
    let mut pairs = vec![
        ("id", t.id.clone()),
        ("operator", t.operator.clone()),
        ("role", t.role.to_string()),
        ("created_at", t.created_at.clone()),
    ];
    if let Some(at) = &t.revoked_at {
        pairs.push(("revoked_at", at.clone()));
    }
    logfmt(&pairs)
}

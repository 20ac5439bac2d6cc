//! `autonomy token create`: POST /v1/tokens.

use std::io::Write;
use std::process::ExitCode;

use autonomy_api::{CreateTokenRequest, Role, TokenCreated};
use clap::Args;

use crate::command::Ctx;
use crate::output::logfmt;

/// Create an API token for an operator (admin only): POST /v1/tokens
///
/// The secret is shown once, now: text output is
/// `id=… operator=… role=… created_at=… token=SECRET`, `-o json` prints
/// `{"id","operator","role","token","created_at"}`. Roles: `viewer` reads; `operator` also
/// creates plans and executes recovery; `admin` also manages tokens. The token's operator is
/// the actor in the audit trail for everything done with it.
///
/// Examples:
///   autonomy --token "$(cat autonomy-data/admin.token)" token create --operator alice --role operator
///   export AUTONOMY_TOKEN=$(autonomy token create --operator ci --role viewer -o json | jq -r .token)
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct CreateArgs {
    /// The operator the token belongs to (the actor recorded in the audit trail).
    #[arg(long, value_name = "NAME")]
    pub operator: String,

    /// viewer, operator or admin.
    #[arg(long, value_name = "ROLE", value_parser = clap::value_parser!(Role))]
    pub role: Role,
}

impl CreateArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let body = CreateTokenRequest {
            operator: self.operator,
            role: self.role,
        };
        let reply = ctx.call(ctx.api.create_token(&body))?;
        ctx.out.answer(&reply, |t: &TokenCreated| {
            logfmt(&[
                ("id", t.id.as_str()),
                ("operator", &t.operator),
                ("role", t.role.as_str()),
                ("created_at", &t.created_at),
                ("token", &t.token),
            ])
        })?;
        if !ctx.out.is_json() {
            let _ = writeln!(
                std::io::stderr(),
                "note: the token is shown only this once; store it now (the CP keeps only its hash)"
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

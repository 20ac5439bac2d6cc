//! `autonomy token list`: GET /v1/tokens.

use std::process::ExitCode;

use autonomy_api::TokenList;
use clap::Args;

use crate::command::Ctx;
use crate::output::Table;

/// List API tokens (admin only): GET /v1/tokens. Secrets are never shown
///
/// Text output is a table: ID OPERATOR ROLE CREATED REVOKED.
///
/// Examples:
///   autonomy token list
///   autonomy token list -o json | jq '.items[] | select(.revoked_at == null) | .id'
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ListArgs {}

impl ListArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let reply = ctx.call(ctx.api.list_tokens())?;
        ctx.out.answer(&reply, |list: &TokenList| {
            let mut table = Table::new(&["ID", "OPERATOR", "ROLE", "CREATED", "REVOKED"]);
            for t in &list.items {
                table.row(vec![
                    t.id.clone(),
                    t.operator.clone(),
                    t.role.to_string(),
                    t.created_at.clone(),
                    t.revoked_at.clone().unwrap_or_default(),
                ]);
            }
            table.render()
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

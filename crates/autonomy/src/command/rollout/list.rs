//! `autonomy rollout list`: GET /v1/rollouts.

use std::process::ExitCode;

use autonomy_api::{ListQuery, Phase, RolloutList};
use clap::Args;

use crate::command::Ctx;
use crate::output::{logfmt, Table};

/// List rollout plans: GET /v1/rollouts
///
/// Text output is a table (ID PHASE GENERATION ARTIFACT UPDATED); when there are more plans
/// than --limit, a last line `next_cursor=…` gives the cursor of the next page.
///
/// Examples:
///   autonomy rollout list
///   autonomy rollout list --phase active --limit 20
///   autonomy rollout list --cursor "$(autonomy rollout list -o json | jq -r .next_cursor)"
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ListArgs {
    /// Only plans in this phase (draft, published, active, paused, completed, failed, aborted,
    /// rolled_back).
    #[arg(long, value_name = "PHASE", value_parser = clap::value_parser!(Phase))]
    pub phase: Option<Phase>,

    /// At most N plans per page.
    #[arg(long, value_name = "N", value_parser = super::limit_parser(), allow_negative_numbers = true)]
    pub limit: Option<u32>,

    /// Continue after this cursor (the `next_cursor` of the previous page).
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
}

impl ListArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let query = ListQuery {
            phase: self.phase.map(|p| p.to_string()),
            limit: self.limit.map(|l| l.to_string()),
            cursor: self.cursor,
        };
        let reply = ctx.call(ctx.api.list_rollouts(&query))?;
        ctx.out.answer(&reply, |list: &RolloutList| {
            let mut table = Table::new(&["ID", "PHASE", "GENERATION", "ARTIFACT", "UPDATED"]);
            for r in &list.items {
                table.row(vec![
                    r.plan.metadata.id.clone(),
                    r.status.phase.to_string(),
                    r.plan.metadata.generation.to_string(),
                    r.plan.spec.artifact_ref.clone(),
                    r.plan.metadata.updated_at.clone(),
                ]);
            }
            let mut text = table.render();
            if let Some(cursor) = &list.next_cursor {
                text.push('\n');
                text.push_str(&logfmt(&[("next_cursor", cursor)]));
            }
            text
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

//! `autonomy device list`: GET /v1/devices.

use std::collections::BTreeMap;
use std::process::ExitCode;

use autonomy_api::device::DeviceList;
use clap::Args;

use crate::command::labels::{labels_text, parse_selector};
use crate::command::rollout::limit_parser;
use crate::command::Ctx;
use crate::output::{logfmt, Table};

/// List registered devices: GET /v1/devices
///
/// Text output is a table (ID LABELS DIGEST LAST_SEEN PLAN STATE REVOKED; PLAN and STATE are
/// the device's current assignment); when there are more devices than --limit, a last line
/// `next_cursor=…` gives the cursor of the next page.
///
/// Examples:
///   autonomy device list
///   autonomy device list --selector site=berlin,model=tx2 --limit 100
///   autonomy device list --cursor "$(autonomy device list -o json | jq -r .next_cursor)"
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ListArgs {
    /// Only devices with every one of these labels: `k=v,k2=v2`.
    #[arg(long, value_name = "K=V,…", value_parser = parse_selector)]
    pub selector: Option<BTreeMap<String, String>>,

    /// At most N devices per page.
    #[arg(long, value_name = "N", value_parser = limit_parser(), allow_negative_numbers = true)]
    pub limit: Option<u32>,

    /// Continue after this cursor (the `next_cursor` of the previous page).
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
}

impl ListArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let selector = self.selector.as_ref().map(labels_text);
        let call = ctx
            .api
            .list_devices(selector.as_deref(), self.limit, self.cursor.as_deref());
        ctx.out.answer(&ctx.call(call)?, |list: &DeviceList| {
            let mut table = Table::new(&[
                "ID",
                "LABELS",
                "DIGEST",
                "LAST_SEEN",
                "PLAN",
                "STATE",
                "REVOKED",
            ]);
            for d in &list.items {
                let (plan, state) = match &d.assignment {
                    Some(a) => (a.plan_id.clone(), a.state.to_string()),
                    None => (String::new(), String::new()),
                };
                table.row(vec![
                    d.id.clone(),
                    labels_text(&d.labels),
                    d.installed_digest.clone().unwrap_or_default(),
                    d.last_seen_at.clone().unwrap_or_default(),
                    plan,
                    state,
                    d.revoked_at.clone().unwrap_or_default(),
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

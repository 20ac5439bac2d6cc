//! `autonomy rollout devices ID`: GET /v1/rollouts/{id}/devices.

use std::process::ExitCode;

use autonomy_api::device::DeviceAssignmentList;
use autonomy_api::DeviceState;
use clap::Args;

use super::limit_parser;
use crate::command::Ctx;
use crate::output::{logfmt, Table};

/// List the devices of an engine-driven plan: GET /v1/rollouts/{id}/devices
///
/// One row per device assignment: DEVICE STAGE STATE ATTEMPT DIGEST LAST_SEEN MESSAGE (DIGEST
/// is the digest the device last reported). When there are more devices than --limit, a
/// last line `next_cursor=…` gives the cursor of the next page. Exit 4 when no plan has
/// that id.
///
/// States: pending, dispatched, downloading, installing, rebooting, verifying, verified;
/// failed, timed_out, rolled_back, drifted; cancelled; reverting, reverted, revert_failed,
/// revert_unavailable.
///
/// Examples:
///   autonomy rollout devices fw-7
///   autonomy rollout devices fw-7 --state failed --stage canary
///   autonomy rollout devices fw-7 --state timed_out -o json | jq -r '.items[].device_id'
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct DevicesArgs {
    /// The plan's id.
    pub id: String,

    /// Only devices in this state.
    #[arg(long, value_name = "STATE", value_parser = clap::value_parser!(DeviceState))]
    pub state: Option<DeviceState>,

    /// Only devices of the stage with this name.
    #[arg(long, value_name = "NAME")]
    pub stage: Option<String>,

    /// At most N devices per page.
    #[arg(long, value_name = "N", value_parser = limit_parser(), allow_negative_numbers = true)]
    pub limit: Option<u32>,

    /// Continue after this cursor (the `next_cursor` of the previous page).
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
}

impl DevicesArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let call = ctx.api.rollout_devices(
            &self.id,
            self.state,
            self.stage.as_deref(),
            self.limit,
            self.cursor.as_deref(),
        );
        ctx.out
            .answer(&ctx.call(call)?, |list: &DeviceAssignmentList| {
                let mut table = Table::new(&[
                    "DEVICE",
                    "STAGE",
                    "STATE",
                    "ATTEMPT",
                    "DIGEST",
                    "LAST_SEEN",
                    "MESSAGE",
                ]);
                for a in &list.items {
                    table.row(vec![
                        a.device_id.clone(),
                        a.stage.clone(),
                        a.state.to_string(),
                        a.attempt.to_string(),
                        a.installed_digest.clone().unwrap_or_default(),
                        a.last_seen_at.clone().unwrap_or_default(),
                        a.message.clone(),
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

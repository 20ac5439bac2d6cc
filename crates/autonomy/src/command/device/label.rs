//! `autonomy device label ID`: POST /v1/devices/{id}/labels.

use std::process::ExitCode;

use autonomy_api::device::DeviceLabelsRequest;
use clap::Args;

use super::device_line;
use crate::command::labels::{label_map, parse_label};
use crate::command::Ctx;

/// Set a device's labels: POST /v1/devices/{id}/labels
///
/// The labels given replace all of the device's labels (give every label it should keep;
/// `--clear` removes them all). Prints the device after the change. Selectors of plans that
/// are already active do not see the change: their targets were frozen when they started.
/// Exit 4 when no device has that id.
///
/// Examples:
///   autonomy device label amr-0007 --label site=hamburg --label model=tx2
///   autonomy device label amr-0007 --clear
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct LabelArgs {
    /// The device's id.
    pub id: String,

    /// A label `key=value`; repeat for more.
    #[arg(
        long = "label",
        value_name = "KEY=VALUE",
        value_parser = parse_label,
        required_unless_present = "clear"
    )]
    pub labels: Vec<(String, String)>,

    /// Remove every label.
    #[arg(long, conflicts_with = "labels")]
    pub clear: bool,
}

impl LabelArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let body = DeviceLabelsRequest {
            labels: label_map("--label", &self.labels)?,
        };
        let reply = ctx.call(ctx.api.set_device_labels(&self.id, &body))?;
        ctx.out.answer(&reply, device_line)?;
        Ok(ExitCode::SUCCESS)
    }
}

//! `autonomy device register ID`: POST /v1/devices.

use std::io::Write;
use std::process::ExitCode;

use autonomy_api::device::{DeviceRegistered, RegisterDeviceRequest};
use clap::Args;

use super::device_pairs;
use crate::command::labels::{label_map, parse_label};
use crate::command::Ctx;
use crate::output::logfmt;

/// Register a device and get its token: POST /v1/devices
///
/// The device token is shown once, now (the control plane keeps only its hash): text output
/// is `id=… labels=… created_at=… token=SECRET`, `-o json` prints `{"device":{…},"token":…}`.
/// Give the token to the device's agent. Device ids follow the plan-id grammar
/// (`[a-z0-9][a-z0-9._-]{0,62}`). Exit 5 if the id is taken.
///
/// Examples:
///   autonomy device register amr-0007 --label site=berlin --label model=tx2
///   autonomy device register amr-0008 -o json | jq -r .token > amr-0008.token
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct RegisterArgs {
    /// The device's id.
    pub id: String,

    /// A label `key=value`; repeat for more.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
}

impl RegisterArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let body = RegisterDeviceRequest {
            labels: label_map("--label", &self.labels)?,
            id: self.id,
        };
        let reply = ctx.call(ctx.api.register_device(&body))?;
        ctx.out.answer(&reply, |r: &DeviceRegistered| {
            let mut pairs = device_pairs(&r.device);
            pairs.push(("token", r.token.clone()));
            logfmt(&pairs)
        })?;
        if !ctx.out.is_json() {
            let _ = writeln!(
                std::io::stderr(),
                "note: the device token is shown only this once; store it now (the CP keeps only its hash)"
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

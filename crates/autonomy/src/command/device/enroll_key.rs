//! `autonomy device enroll-key create`: POST /v1/enroll-keys.

use std::io::Write;
use std::process::ExitCode;

use autonomy_api::device::{EnrollKeyCreated, EnrollKeyRequest};
use clap::{Args, Subcommand};

use crate::command::labels::{label_map, labels_text, parse_label};
use crate::command::Ctx;
use crate::output::logfmt;

#[derive(Debug, Subcommand)]
pub enum EnrollKeyCommand {
    Create(CreateArgs),
}

impl EnrollKeyCommand {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        match self {
            EnrollKeyCommand::Create(args) => args.run(ctx),
        }
    }
}

/// Create an enroll key for bulk enrollment (admin only): POST /v1/enroll-keys
///
/// A device enrolls itself with the key as bearer (POST /v1/device/enroll) and gets its own
/// token; the key's labels win over the ones the device asks for. The key works --max-uses
/// times, for --ttl seconds. It is shown once, now: text output is
/// `id=… labels=… max_uses=… created_at=… expires_at=… key=SECRET`, `-o json` prints the
/// answer (`{"id","key","labels","max_uses","created_at","expires_at"}`).
///
/// Examples:
///   autonomy device enroll-key create --label site=berlin --max-uses 50 --ttl 86400
///   autonomy device enroll-key create --max-uses 1 --ttl 600 -o json | jq -r .key
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct CreateArgs {
    /// A label every device enrolled with the key gets, `key=value`; repeat for more.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,

    /// How many devices may enroll with the key (at least 1).
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..),
        allow_negative_numbers = true
    )]
    pub max_uses: u32,

    /// How long the key works, in seconds (at least 1).
    #[arg(
        long,
        value_name = "SECONDS",
        value_parser = clap::value_parser!(u64).range(1..),
        allow_negative_numbers = true
    )]
    pub ttl: u64,
}

impl CreateArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let body = EnrollKeyRequest {
            labels: label_map("--label", &self.labels)?,
            max_uses: self.max_uses,
            ttl_seconds: self.ttl,
        };
        let reply = ctx.call(ctx.api.create_enroll_key(&body))?;
        ctx.out.answer(&reply, |k: &EnrollKeyCreated| {
            logfmt(&[
                ("id", k.id.clone()),
                ("labels", labels_text(&k.labels)),
                ("max_uses", k.max_uses.to_string()),
                ("created_at", k.created_at.clone()),
                ("expires_at", k.expires_at.clone()),
                ("key", k.key.clone()),
            ])
        })?;
        if !ctx.out.is_json() {
            let _ = writeln!(
                std::io::stderr(),
                "note: the enroll key is shown only this once; store it now"
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

//! `autonomy rollout create`: POST /v1/rollouts.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use autonomy_api::{CreateMetadata, CreateRolloutRequest, PlanSpec};
use clap::Args;

use super::rollout_line;
use crate::command::labels::{self, parse_selector};
use crate::command::Ctx;
use crate::exit;

/// Create a rollout plan: POST /v1/rollouts
///
/// Either from flags (`--artifact-ref` is required; the id is generated when `--id` is
/// omitted), or from a JSON file holding the create request
/// (`{"metadata":{"id":…,"labels":{…}},"spec":{"artifact_ref":…,"targets":{…},"stages":[…]},"draft":false}`)
/// with `-f FILE` (`-f -` reads stdin; at most 1 MiB, and a missing, unreadable or larger
/// file is exit 2 with nothing sent). A new plan is `published` (waiting at its start
/// gate) unless `--draft`. Unknown artifact schemes and malformed digests or fingerprints are
/// accepted and reported as `warnings`. Exit 5 if the id is taken.
///
/// A plan whose targets name a `--selector` or `--device` is engine-driven: the control plane
/// rolls it out to those devices in `--stages` under `--policy`, and needs a digest to verify
/// success by (`…@sha256:…` in --artifact-ref, or a --fingerprint; else exit 1 on a 422).
/// `--stages` and `--policy` take JSON text or `@FILE` (`@-` reads stdin); the control plane
/// checks their fields (400 naming an unknown one). The robot-aware gates are policy fields
/// too: `disruption_budget` ({"group_by":["site"],"max_unavailable":N} or
/// "min_available_pct":P), `require` ({"docked":true,"idle":true,"battery_pct_min":40}) and
/// `windows` ([{"days":["mon"],"start":"22:00","end":"05:00","tz":"Europe/Berlin"}]).
///
/// Examples:
///   autonomy rollout create --id web-1 --artifact-ref oci://reg/web@sha256:… --label team=web
///   autonomy rollout create --artifact-ref oci://reg/web:2.1 --draft -o json
///   autonomy rollout create -f plan.json
///   jq -n '{spec:{artifact_ref:"oci://reg/web:2.1"}}' | autonomy rollout create -f -
///   autonomy rollout create --id fw-7 --artifact-ref oci://reg/fw@sha256:… \
///     --selector site=berlin --device amr-0007 \
///     --stages '[{"name":"canary","size":{"count":2}},{"name":"rest","approval":"manual"}]' \
///     --policy '{"failure_threshold":{"count":2},"on_failure":"pause"}'
///   autonomy rollout create --id fw-8 --artifact-ref oci://reg/fw@sha256:… \
///     --selector site=berlin --stages @stages.json --policy @policy.json
///   autonomy rollout create --id fw-9 --artifact-ref oci://reg/fw@sha256:… \
///     --selector fleet=amr --policy '{"disruption_budget":{"group_by":["site"],
///     "max_unavailable":2},"require":{"docked":true,"battery_pct_min":40},"windows":[{"days":
///     ["mon","tue","wed","thu","fri"],"start":"22:00","end":"05:00","tz":"Europe/Berlin"}]}'
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct CreateArgs {
    /// Read the whole create request (JSON, at most 1 MiB) from FILE; `-` is stdin.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        conflicts_with_all = [
            "id", "artifact_ref", "fingerprint", "labels", "draft", "selector", "devices",
            "stages", "policy",
        ]
    )]
    pub file: Option<PathBuf>,

    /// Plan id: lowercase `[a-z0-9][a-z0-9._-]{0,62}`; generated when omitted.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,

    /// The artifact to roll out, e.g. `oci://registry/app@sha256:…` (stored as given).
    #[arg(long, value_name = "REF", required_unless_present = "file")]
    pub artifact_ref: Option<String>,

    /// Target lock fingerprint, e.g. `blake3:…`.
    #[arg(long, value_name = "F")]
    pub fingerprint: Option<String>,

    /// A label `key=value`; repeat for more.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = labels::parse_label)]
    pub labels: Vec<(String, String)>,

    /// Create the plan as a draft (publish it later with `rollout publish`).
    #[arg(long)]
    pub draft: bool,

    /// Target the devices matching every label: `k=v,k2=v2` (spec.targets.selector).
    #[arg(long, value_name = "K=V,…", value_parser = parse_selector)]
    pub selector: Option<BTreeMap<String, String>>,

    /// Target this device too (spec.targets.devices); repeat for more.
    #[arg(long = "device", value_name = "ID")]
    pub devices: Vec<String>,

    /// The stages, in order (spec.stages): a JSON array of objects, or `@FILE`.
    #[arg(long, value_name = "JSON|@FILE")]
    pub stages: Option<String>,

    /// How the plan rolls out (spec.policy): a JSON object, or `@FILE`.
    #[arg(long, value_name = "JSON|@FILE")]
    pub policy: Option<String>,

    /// Make a retried create return the first answer instead of failing as a duplicate.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

impl CreateArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let key = self.idempotency_key.as_deref();
        let call = match &self.file {
            Some(path) => ctx
                .api
                .create_rollout_json(read_plan(path)?.into_bytes(), key),
            None => ctx.api.create_rollout(&self.request_from_flags()?, key),
        };
        ctx.out.answer(&ctx.call(call)?, rollout_line)?;
        Ok(ExitCode::SUCCESS)
    }

    fn request_from_flags(&self) -> anyhow::Result<CreateRolloutRequest> {
        let Some(artifact_ref) = self.artifact_ref.clone() else {
            return Err(exit::usage(
                "--artifact-ref is required (or give the plan with -f FILE)",
            ));
        };
        let labels = labels::label_map("--label", &self.labels)?;
        let mut targets = serde_json::Map::new();
        if let Some(selector) = &self.selector {
            targets.insert("selector".into(), serde_json::json!(selector));
        }
        if !self.devices.is_empty() {
            targets.insert("devices".into(), serde_json::json!(self.devices));
        }
        let stages = match &self.stages {
            None => Vec::new(),
            Some(text) => {
                let value = json_flag("--stages", text)?;
                let serde_json::Value::Array(items) = value else {
                    return Err(exit::usage(
                        "invalid value for --stages: expected a JSON array of stage objects",
                    ));
                };
                let mut stages = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    let serde_json::Value::Object(stage) = item else {
                        return Err(exit::usage(format!(
                            "invalid value for --stages: stage {i} is not a JSON object"
                        )));
                    };
                    stages.push(stage);
                }
                stages
            }
        };
        let policy = match &self.policy {
            None => None,
            Some(text) => match json_flag("--policy", text)? {
                serde_json::Value::Object(policy) => Some(policy),
                _ => {
                    return Err(exit::usage(
                        "invalid value for --policy: expected a JSON object",
                    ))
                }
            },
        };
        Ok(CreateRolloutRequest {
            metadata: CreateMetadata {
                id: self.id.clone(),
                labels,
            },
            spec: PlanSpec {
                artifact_ref,
                target_lock_fingerprint: self.fingerprint.clone(),
                targets,
                stages,
                policy,
            },
            draft: self.draft,
        })
    }
}

/// The JSON of `--stages` or `--policy`: the text itself, or `@FILE` read like `-f` (`@-`
/// is stdin; at most 1 MiB). Anything unreadable or not JSON is a usage error (exit 2).
fn json_flag(flag: &str, text: &str) -> anyhow::Result<serde_json::Value> {
    let (source, text) = match text.strip_prefix('@') {
        None => (String::new(), text.to_string()),
        Some(path) => {
            let (name, bytes) = if path == "-" {
                let what = format!("{flag} from stdin");
                (
                    "stdin".to_string(),
                    read_bounded(std::io::stdin().lock(), &what)?,
                )
            } else {
                let what = format!("the {flag} file {path}");
                let file = File::open(path)
                    .map_err(|e| exit::usage(format!("cannot read {what}: {}", io_reason(&e))))?;
                (path.to_string(), read_bounded(file, &what)?)
            };
            let text = String::from_utf8(bytes).map_err(|_| {
                exit::usage(format!(
                    "cannot read {flag} from {name}: it is not UTF-8 text"
                ))
            })?;
            (format!(" (from {name})"), text)
        }
    };
    serde_json::from_str(&text)
        .map_err(|e| exit::usage(format!("invalid value for {flag}{source}: not JSON: {e}")))
}

/// The most `-f` reads: the CP refuses larger bodies (413) anyway.
const MAX_PLAN_BYTES: u64 = 1024 * 1024;

/// Reads the plan file (or stdin), at most [`MAX_PLAN_BYTES`], and checks it is a create
/// request before sending it as is. A missing, unreadable, non-UTF-8 or larger input is a
/// usage error (exit 2): nothing is sent.
fn read_plan(path: &Path) -> anyhow::Result<String> {
    // `name` for "invalid plan in …", `what` for "cannot read …" and "… is larger".
    let (name, what, bytes) = if path.as_os_str() == "-" {
        let what = "the plan from stdin";
        (
            "stdin".to_string(),
            what.to_string(),
            read_bounded(std::io::stdin().lock(), what)?,
        )
    } else {
        let name = path.display().to_string();
        let what = format!("the plan file {name}");
        let file = File::open(path)
            .map_err(|e| exit::usage(format!("cannot read {what}: {}", io_reason(&e))))?;
        let bytes = read_bounded(file, &what)?;
        (name, what, bytes)
    };
    let text = String::from_utf8(bytes)
        .map_err(|_| exit::usage(format!("cannot read {what}: it is not UTF-8 text")))?;
    if let Err(e) = serde_json::from_str::<CreateRolloutRequest>(&text) {
        return Err(exit::usage(format!("invalid plan in {name}: {e}")));
    }
    Ok(text)
}

/// Reads `input` to its end, refusing (exit 2) one byte more than [`MAX_PLAN_BYTES`].
fn read_bounded(input: impl Read, what: &str) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    input
        .take(MAX_PLAN_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| exit::usage(format!("cannot read {what}: {}", io_reason(&e))))?;
    if bytes.len() as u64 > MAX_PLAN_BYTES {
        return Err(exit::usage(format!(
            "{what} is larger than 1 MiB, the most the control plane accepts"
        )));
    }
    Ok(bytes)
}

/// An I/O error as the end of a message: lower case, without the `(os error N)` suffix.
fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text,
    };
    text.to_lowercase()
}

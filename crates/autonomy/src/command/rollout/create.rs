//! `autonomy rollout create`: POST /v1/rollouts.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use autonomy_api::{CreateMetadata, CreateRolloutRequest, PlanSpec};
use clap::Args;

use super::rollout_line;
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
/// Examples:
///   autonomy rollout create --id web-1 --artifact-ref oci://reg/web@sha256:… --label team=web
///   autonomy rollout create --artifact-ref oci://reg/web:2.1 --draft -o json
///   autonomy rollout create -f plan.json
///   jq -n '{spec:{artifact_ref:"oci://reg/web:2.1"}}' | autonomy rollout create -f -
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct CreateArgs {
    /// Read the whole create request (JSON, at most 1 MiB) from FILE; `-` is stdin.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        conflicts_with_all = ["id", "artifact_ref", "fingerprint", "labels", "draft"]
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
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,

    /// Create the plan as a draft (publish it later with `rollout publish`).
    #[arg(long)]
    pub draft: bool,

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
        let mut labels = BTreeMap::new();
        for (k, v) in &self.labels {
            if labels.insert(k.clone(), v.clone()).is_some() {
                return Err(exit::usage(format!(
                    "invalid value for --label: key '{k}' is repeated"
                )));
            }
        }
        Ok(CreateRolloutRequest {
            metadata: CreateMetadata {
                id: self.id.clone(),
                labels,
            },
            spec: PlanSpec {
                artifact_ref,
                target_lock_fingerprint: self.fingerprint.clone(),
                targets: serde_json::Map::new(),
                stages: Vec::new(),
                policy: None,
            },
            draft: self.draft,
        })
    }
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

/// `--label key=value`: a non-empty key, then `=`, then the value (may be empty).
fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        Some(_) => Err(format!("'{s}' has an empty key (expected key=value)")),
        None => Err(format!("'{s}' is not key=value")),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_label;

    #[test]
    fn labels_need_a_key_and_an_equals_sign() {
        assert_eq!(parse_label("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(parse_label("a=").unwrap(), ("a".into(), String::new()));
        assert!(parse_label("=b").is_err());
        assert!(parse_label("ab").is_err());
    }
}

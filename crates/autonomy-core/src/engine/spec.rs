//! The engine spec of a plan (SPEC §8.1): whether a plan is engine-driven, and its typed
//! targets, stages, policy and target digest — or the field that is wrong.

use std::collections::{BTreeMap, BTreeSet};

use autonomy_api::{FailureThreshold, FieldError, Policy, Stage, StageSize, Targets};
use serde_json::{Map, Value};

use crate::is_hidden_char;

/// The name of the stage that takes the devices left after the last stage.
pub const REMAINDER_STAGE: &str = "remainder";
/// The name of the one stage of a plan without `stages`.
pub const ALL_STAGE: &str = "all";

/// The typed spec of an engine-driven plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSpec {
    pub targets: Targets,
    /// As given (possibly empty: one stage of everything, see `assign_stages`).
    pub stages: Vec<Stage>,
    pub policy: Policy,
    /// What a device must report installed to be `verified` (see [`target_digest`]).
    pub target_digest: String,
}

/// Why a plan's engine spec is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A field is unknown or has a bad value (400, naming the field).
    #[error("{0}")]
    Invalid(FieldError),
    /// The plan is engine-driven but neither `artifact_ref` carries an `@alg:hex` digest nor
    /// `target_lock_fingerprint` is one (422 under any artifact policy).
    #[error(
        "spec.artifact_ref: an engine-driven plan needs a target digest (an @sha256:/@sha512:/\
         @blake3: digest in artifact_ref, or a target_lock_fingerprint), else success could \
         never be verified"
    )]
    NoTargetDigest,
}

impl From<FieldError> for SpecError {
    fn from(e: FieldError) -> Self {
        SpecError::Invalid(e)
    }
}

/// True when `targets` names a `selector` or `devices` (SPEC §8): the plan rolls out to
/// devices. Every other plan is record-only.
pub fn is_engine_driven(targets: &Map<String, Value>) -> bool {
    targets.contains_key("selector") || targets.contains_key("devices")
}

/// The digest a device must report: the well-formed `alg:hex` after the last `@` of
/// `artifact_ref`, else a well-formed `fingerprint`, else `None`.
pub fn target_digest(artifact_ref: &str, fingerprint: Option<&str>) -> Option<String> {
    if let Some((_, digest)) = artifact_ref.rsplit_once('@') {
        if crate::digest_problem(digest, &["sha256", "sha512", "blake3"]).is_none() {
            return Some(digest.to_string());
        }
    }
    fingerprint
        .filter(|f| crate::digest_problem(f, &["blake3", "sha256"]).is_none())
        .map(str::to_string)
}

/// Parses the engine spec of a plan. `Ok(None)`: a record-only plan (its `targets` name
/// neither `selector` nor `devices`; `stages` and `policy` stay free-form). Errors name the
/// field, e.g. `spec.stages[1].size.count`.
pub fn parse_engine_spec(
    targets: &Map<String, Value>,
    stages: &[Map<String, Value>],
    policy: Option<&Map<String, Value>>,
    artifact_ref: &str,
    fingerprint: Option<&str>,
) -> Result<Option<EngineSpec>, SpecError> {
    if !is_engine_driven(targets) {
        return Ok(None);
    }
    let targets: Targets = parse_at(targets, "spec.targets")?;
    check_targets(&targets)?;
    let mut parsed = Vec::with_capacity(stages.len());
    let mut names = BTreeSet::new();
    for (i, raw) in stages.iter().enumerate() {
        let at = format!("spec.stages[{i}]");
        let stage: Stage = parse_at(raw, &at)?;
        check_stage(&stage, &at)?;
        if !names.insert(stage.name.clone()) {
            return Err(FieldError::new(
                format!("{at}.name"),
                format!("'{}' names an earlier stage too", stage.name),
            )
            .into());
        }
        parsed.push(stage);
    }
    let policy: Policy = match policy {
        Some(p) => parse_at(p, "spec.policy")?,
        None => Policy::default(),
    };
    check_policy(&policy)?;
    let target_digest =
        target_digest(artifact_ref, fingerprint).ok_or(SpecError::NoTargetDigest)?;
    Ok(Some(EngineSpec {
        targets,
        stages: parsed,
        policy,
        target_digest,
    }))
}

/// Deserialises `raw` naming the failing field below `base`.
fn parse_at<T: serde::de::DeserializeOwned>(
    raw: &Map<String, Value>,
    base: &str,
) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(Value::Object(raw.clone())).map_err(|e| {
        let mut field = base.to_string();
        for segment in e.path().iter() {
            match segment {
                serde_path_to_error::Segment::Seq { index } => {
                    field.push_str(&format!("[{index}]"))
                }
                serde_path_to_error::Segment::Map { key } => {
                    field.push('.');
                    field.push_str(key);
                }
                serde_path_to_error::Segment::Enum { variant } => {
                    field.push('.');
                    field.push_str(variant);
                }
                serde_path_to_error::Segment::Unknown => {}
            }
        }
        let message = e.into_inner().to_string();
        // serde names a missing field (and not always an unknown one) in its message only.
        for prefix in ["unknown field `", "unknown variant `", "missing field `"] {
            if let Some(rest) = message.strip_prefix(prefix) {
                if let Some((name, _)) = rest.split_once('`') {
                    let name = shown(name);
                    if !field.ends_with(&format!(".{name}")) {
                        field.push('.');
                        field.push_str(&name);
                    }
                }
            }
        }
        FieldError::new(field, message)
    })
}

/// At most 64 characters of `s`, control and invisible characters escaped.
fn shown(s: &str) -> String {
    s.chars()
        .take(64)
        .flat_map(|c| {
            if is_hidden_char(c) {
                c.escape_unicode().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// A device id or stage name: 1 to 63 characters of `a-z 0-9 . _ -`, starting with a letter or
/// digit (the plan-id grammar).
fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        && s.len() <= 63
}

fn check_selector(selector: &BTreeMap<String, String>, at: &str) -> Result<(), FieldError> {
    crate::validate_labels_at(at, selector.iter())
}

/// The most devices `targets.devices` may list.
pub const MAX_LISTED_DEVICES: usize = 10_000;

fn check_targets(t: &Targets) -> Result<(), FieldError> {
    if t.selector.is_empty() && t.devices.is_empty() {
        return Err(FieldError::new(
            "spec.targets",
            "an engine-driven plan names at least one selector label or one device",
        ));
    }
    check_selector(&t.selector, "spec.targets.selector")?;
    if t.devices.len() > MAX_LISTED_DEVICES {
        return Err(FieldError::new(
            "spec.targets.devices",
            format!("at most {MAX_LISTED_DEVICES} devices"),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, d) in t.devices.iter().enumerate() {
        let at = format!("spec.targets.devices[{i}]");
        if !valid_name(d) {
            return Err(FieldError::new(
                at,
                format!(
                    "'{}' is not a device id: 1 to 63 characters of a-z, 0-9, '.', '_', '-', \
                     starting with a letter or digit",
                    shown(d)
                ),
            ));
        }
        if !seen.insert(d.as_str()) {
            return Err(FieldError::new(at, format!("'{d}' is listed twice")));
        }
    }
    Ok(())
}

fn check_pct(pct: u32, at: String, min: u32) -> Result<(), FieldError> {
    if (min..=100).contains(&pct) {
        Ok(())
    } else {
        Err(FieldError::new(
            at,
            format!("must be a percentage from {min} to 100, got {pct}"),
        ))
    }
}

fn check_failure_threshold(t: &FailureThreshold, at: &str) -> Result<(), FieldError> {
    match *t {
        FailureThreshold::Count(0) => Err(FieldError::new(
            format!("{at}.count"),
            "must be at least 1 (a threshold of 0 failures would stop the plan at once)",
        )),
        FailureThreshold::Count(_) => Ok(()),
        FailureThreshold::Percent { percent, .. } => check_pct(percent, format!("{at}.percent"), 1),
    }
}

fn check_stage(s: &Stage, at: &str) -> Result<(), FieldError> {
    if !valid_name(&s.name) {
        return Err(FieldError::new(
            format!("{at}.name"),
            format!(
                "'{}' is not a stage name: 1 to 63 characters of a-z, 0-9, '.', '_', '-', \
                 starting with a letter or digit",
                shown(&s.name)
            ),
        ));
    }
    if s.name == REMAINDER_STAGE {
        return Err(FieldError::new(
            format!("{at}.name"),
            format!("'{REMAINDER_STAGE}' is reserved for the devices left after the last stage"),
        ));
    }
    match s.size {
        Some(StageSize::Count(0)) => {
            return Err(FieldError::new(
                format!("{at}.size.count"),
                "must be at least 1",
            ))
        }
        Some(StageSize::Percent(p)) => check_pct(p, format!("{at}.size.percent"), 1)?,
        Some(StageSize::Count(_)) | None => {}
    }
    if let Some(sel) = &s.selector {
        if sel.is_empty() {
            return Err(FieldError::new(
                format!("{at}.selector"),
                "name at least one label (or leave the selector out)",
            ));
        }
        check_selector(sel, &format!("{at}.selector"))?;
    }
    if let Some(p) = s.success_threshold_pct {
        check_pct(p, format!("{at}.success_threshold_pct"), 0)?;
    }
    if let Some(t) = &s.failure_threshold {
        check_failure_threshold(t, &format!("{at}.failure_threshold"))?;
    }
    Ok(())
}

/// The longest `device_timeout_seconds` and `silent_after_seconds`: 30 days.
pub const MAX_POLICY_SECONDS: u64 = 30 * 86_400;
/// The most automatic re-dispatches of a failed device.
pub const MAX_DEVICE_RETRIES: u32 = 100;

fn check_policy(p: &Policy) -> Result<(), FieldError> {
    check_pct(
        p.success_threshold_pct,
        "spec.policy.success_threshold_pct".into(),
        0,
    )?;
    check_failure_threshold(&p.failure_threshold, "spec.policy.failure_threshold")?;
    for (name, v) in [
        ("device_timeout_seconds", p.device_timeout_seconds),
        ("silent_after_seconds", p.silent_after_seconds),
    ] {
        if !(1..=MAX_POLICY_SECONDS).contains(&v) {
            return Err(FieldError::new(
                format!("spec.policy.{name}"),
                format!("must be from 1 to {MAX_POLICY_SECONDS} seconds, got {v}"),
            ));
        }
    }
    if p.max_device_retries > MAX_DEVICE_RETRIES {
        return Err(FieldError::new(
            "spec.policy.max_device_retries",
            format!("at most {MAX_DEVICE_RETRIES}"),
        ));
    }
    super::gates::check_gates(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use autonomy_api::{Approval, OnFailure};
    use serde_json::json;

    const REF: &str =
        "oci://reg/app@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    fn parse(
        targets: Value,
        stages: Value,
        policy: Option<Value>,
    ) -> Result<Option<EngineSpec>, SpecError> {
        let stages: Vec<_> = match stages {
            Value::Array(a) => a.into_iter().map(obj).collect(),
            other => panic!("not an array: {other}"),
        };
        let policy = policy.map(obj);
        parse_engine_spec(&obj(targets), &stages, policy.as_ref(), REF, None)
    }

    fn field_of(r: Result<Option<EngineSpec>, SpecError>) -> String {
        match r {
            Err(SpecError::Invalid(e)) => e.field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn the_spec_example_parses() {
        let spec = parse(
            json!({"selector": {"site": "berlin"}, "devices": ["amr-0007"]}),
            json!([{"name": "canary", "size": {"count": 2}},
                   {"name": "wave", "size": {"percent": 50}, "approval": "manual"},
                   {"name": "rest"}]),
            Some(
                json!({"success_threshold_pct": 100, "failure_threshold": {"count": 1},
                        "on_failure": "pause", "device_timeout_seconds": 3600,
                        "max_device_retries": 0, "reboot_required": true,
                        "silent_after_seconds": 120}),
            ),
        )
        .unwrap()
        .unwrap();
        assert_eq!(spec.targets.devices, ["amr-0007"]);
        assert_eq!(spec.stages[0].size, Some(StageSize::Count(2)));
        assert_eq!(spec.stages[1].size, Some(StageSize::Percent(50)));
        assert_eq!(spec.stages[1].approval, Some(Approval::Manual));
        assert_eq!(spec.stages[2].size, None);
        assert_eq!(spec.policy, Policy::default());
        assert_eq!(spec.policy.on_failure, OnFailure::Pause);
        assert_eq!(spec.target_digest, REF.rsplit_once('@').unwrap().1);
    }

    #[test]
    fn record_only_plans_are_none_whatever_their_stages() {
        let r = parse(
            json!({"fleet": "warehouse-7"}),
            json!([{"anything": true}]),
            Some(json!({"whatever": 1})),
        );
        assert_eq!(r, Ok(None));
        let r = parse_engine_spec(&Map::new(), &[], None, "corrupt://x", None);
        assert_eq!(r, Ok(None));
    }

    /// Each refusal names the field that is wrong.
    #[test]
    fn errors_name_the_field() {
        let t = || json!({"selector": {"site": "berlin"}});
        let cases = [
            (
                json!({"selector": {"site": "b"}, "fleet": "x"}),
                json!([]),
                None,
                "spec.targets.fleet",
            ),
            (json!({"selector": {}}), json!([]), None, "spec.targets"),
            (json!({"devices": []}), json!([]), None, "spec.targets"),
            (
                json!({"devices": ["A"]}),
                json!([]),
                None,
                "spec.targets.devices[0]",
            ),
            (
                json!({"devices": ["a", "a"]}),
                json!([]),
                None,
                "spec.targets.devices[1]",
            ),
            (
                json!({"devices": "a"}),
                json!([]),
                None,
                "spec.targets.devices",
            ),
            (
                json!({"selector": {"": "x"}}),
                json!([]),
                None,
                "spec.targets.selector.",
            ),
            (
                json!({"selector": {"k": 1}}),
                json!([]),
                None,
                "spec.targets.selector.k",
            ),
            (
                t(),
                json!([{"name": "a"}, {"name": "b", "size": {"count": 0}}]),
                None,
                "spec.stages[1].size.count",
            ),
            (
                t(),
                json!([{"name": "a"}, {"name": "b", "size": {"count": -1}}]),
                None,
                "spec.stages[1].size.count",
            ),
            (
                t(),
                json!([{"name": "a", "size": {"percent": 101}}]),
                None,
                "spec.stages[0].size.percent",
            ),
            (
                t(),
                json!([{"name": "a", "size": {"percent": 0}}]),
                None,
                "spec.stages[0].size.percent",
            ),
            (
                t(),
                json!([{"name": "a", "size": {"cnt": 1}}]),
                None,
                "spec.stages[0].size.cnt",
            ),
            (
                t(),
                json!([{"name": "a", "sise": {"count": 1}}]),
                None,
                "spec.stages[0].sise",
            ),
            (
                t(),
                json!([{"size": {"count": 1}}]),
                None,
                "spec.stages[0].name",
            ),
            (t(), json!([{"name": "Big"}]), None, "spec.stages[0].name"),
            (
                t(),
                json!([{"name": "a"}, {"name": "a"}]),
                None,
                "spec.stages[1].name",
            ),
            (
                t(),
                json!([{"name": "remainder"}]),
                None,
                "spec.stages[0].name",
            ),
            (
                t(),
                json!([{"name": "a", "approval": "auto"}]),
                None,
                "spec.stages[0].approval",
            ),
            (
                t(),
                json!([{"name": "a", "selector": {}}]),
                None,
                "spec.stages[0].selector",
            ),
            (
                t(),
                json!([{"name": "a", "success_threshold_pct": 150}]),
                None,
                "spec.stages[0].success_threshold_pct",
            ),
            (
                t(),
                json!([{"name": "a", "failure_threshold": {"count": 0}}]),
                None,
                "spec.stages[0].failure_threshold.count",
            ),
            (
                t(),
                json!([{"name": "a", "failure_threshold": {"count": 1, "percent": 1}}]),
                None,
                "spec.stages[0].failure_threshold",
            ),
            (
                t(),
                json!([]),
                Some(json!({"on_failure": "explode"})),
                "spec.policy.on_failure",
            ),
            (
                t(),
                json!([]),
                Some(json!({"retries": 1})),
                "spec.policy.retries",
            ),
            (
                t(),
                json!([]),
                Some(json!({"device_timeout_seconds": 0})),
                "spec.policy.device_timeout_seconds",
            ),
            (
                t(),
                json!([]),
                Some(json!({"silent_after_seconds": 99999999})),
                "spec.policy.silent_after_seconds",
            ),
            (
                t(),
                json!([]),
                Some(json!({"max_device_retries": 1000})),
                "spec.policy.max_device_retries",
            ),
            (
                t(),
                json!([]),
                Some(json!({"success_threshold_pct": 101})),
                "spec.policy.success_threshold_pct",
            ),
            (
                t(),
                json!([]),
                Some(json!({"failure_threshold": {"percent": 0}})),
                "spec.policy.failure_threshold.percent",
            ),
            (
                t(),
                json!([]),
                Some(json!({"failure_threshold": {"percent": 5, "x": 1}})),
                "spec.policy.failure_threshold.x",
            ),
        ];
        for (targets, stages, policy, want) in cases {
            let what = format!("{targets} {stages} {policy:?}");
            assert_eq!(field_of(parse(targets, stages, policy)), want, "{what}");
        }
    }

    #[test]
    fn an_engine_driven_plan_needs_a_target_digest() {
        let targets = obj(json!({"devices": ["d1"]}));
        let fp = format!("blake3:{}", "0".repeat(64));
        for (r, f) in [
            ("oci://reg/app:1.0", None),
            ("oci://reg/app@sha256:deadbeefcorrupt", None),
            ("oci://reg/app:1.0", Some("blake3:short")),
        ] {
            assert_eq!(
                parse_engine_spec(&targets, &[], None, r, f),
                Err(SpecError::NoTargetDigest),
                "{r} {f:?}"
            );
        }
        let spec = parse_engine_spec(&targets, &[], None, "oci://reg/app:1.0", Some(&fp))
            .unwrap()
            .unwrap();
        assert_eq!(spec.target_digest, fp);
        // A field error wins over the missing digest: the 400 is the more precise answer.
        let bad = obj(json!({"devices": ["d1"], "x": 1}));
        assert!(matches!(
            parse_engine_spec(&bad, &[], None, "oci://reg/app:1.0", None),
            Err(SpecError::Invalid(_))
        ));
    }

    #[test]
    fn target_digest_prefers_the_ref() {
        let fp = format!("blake3:{}", "1".repeat(64));
        assert_eq!(
            target_digest(REF, Some(&fp)).as_deref(),
            REF.rsplit_once('@').map(|(_, d)| d)
        );
        assert_eq!(target_digest("oci://r/a", Some(&fp)), Some(fp.clone()));
        assert_eq!(target_digest("oci://r/a", None), None);
    }
}

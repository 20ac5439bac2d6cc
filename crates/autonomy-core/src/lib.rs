//! Domain rules of the AutonomyOps control plane, as pure functions: which phase an operator
//! verb or a recovery strategy leads to, what makes a plan id, label or artifact reference
//! acceptable, and how a stuck plan is explained to an operator.
//!
//! [`plan`] holds what a change does: a new plan, a verb, a recovery request, each returning the
//! new state and its audit event.
//!
//! No IO happens here (not even reading the clock: callers pass `now`). The store applies
//! these rules inside its write transaction, so the state machine lives in exactly one place.

use autonomy_api::{timefmt, FieldError, Phase, Strategy, Verb};

pub mod device;
pub mod engine;
pub mod plan;

pub use plan::NewPlan;

/// What a recovery strategy does to a plan in a given phase (SPEC §2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// The plan moves to this phase.
    Apply(Phase),
    /// The plan is already where the strategy leads; nothing changes (`outcome=noop`).
    Noop,
    /// The strategy does not apply to this phase (`outcome=rejected`, 409).
    Reject(String),
}

/// The recovery state machine: `retry` re-dispatches published/active/paused/failed plans
/// (→ active), `rollback` takes any non-terminal or completed plan to rolled_back, `abort`
/// stops any non-terminal plan.
pub fn recovery(phase: Phase, strategy: Strategy) -> Recovery {
    use Phase::*;
    match (strategy, phase) {
        (Strategy::Retry, Published | Active | Paused | Failed) => Recovery::Apply(Active),
        (Strategy::Retry, Draft) => Recovery::Reject(
            "cannot retry a plan in phase draft: it was never dispatched; publish it first".into(),
        ),
        (Strategy::Retry, Completed | Aborted | RolledBack) => Recovery::Reject(format!(
            "cannot retry a plan in phase {phase}: the phase is terminal; create a new plan"
        )),
        (Strategy::Rollback, RolledBack) => Recovery::Noop,
        (Strategy::Rollback, Aborted) => Recovery::Reject(
            "cannot roll back a plan in phase aborted: it is terminal and nothing was left in flight"
                .into(),
        ),
        (Strategy::Rollback, _) => Recovery::Apply(RolledBack),
        (Strategy::Abort, Aborted) => Recovery::Noop,
        (Strategy::Abort, Completed | RolledBack) => Recovery::Reject(format!(
            "cannot abort a plan in phase {phase}: the phase is terminal"
        )),
        (Strategy::Abort, _) => Recovery::Apply(Aborted),
    }
}

/// The operator verbs: publish (draft→published), start (published→active, passes the start
/// gate), pause (active→paused), resume (paused→active). Anything else is an invalid
/// transition, explained.
pub fn verb_transition(phase: Phase, verb: Verb) -> Result<Phase, String> {
    use Phase::*;
    match (verb, phase) {
        (Verb::Publish, Draft) => Ok(Published),
        (Verb::Start, Published) => Ok(Active),
        (Verb::Pause, Active) => Ok(Paused),
        (Verb::Resume, Paused) => Ok(Active),
        (verb, phase) => {
            let from = match verb {
                Verb::Publish => "draft",
                Verb::Start => "published",
                Verb::Pause => "active",
                Verb::Resume => "paused",
            };
            Err(format!(
                "cannot {} a plan in phase {phase}: {} applies only to {from} plans",
                verb.as_str(),
                verb.as_str()
            ))
        }
    }
}

/// Whether a transition into `phase` counts as progress (resets the stuck clock).
pub fn is_progress(phase: Phase) -> bool {
    matches!(phase, Phase::Published | Phase::Active)
}

/// Phases the stuck scan looks at.
pub const STUCK_PHASES: [Phase; 2] = [Phase::Published, Phase::Active];

/// Ids that are route words (`GET /v1/rollouts/stuck` is the scan): creating them is refused.
pub const RESERVED_IDS: [&str; 1] = ["stuck"];

/// A character that must never be accepted in an id, label, reference or fingerprint because a
/// terminal or a browser would not show it as it is: C0/C1 controls, bidirectional overrides,
/// isolates and marks, zero-width and invisible characters (a displayed digest could be spoofed
/// with them), and the line and paragraph separators U+2028, U+2029. The CLI escapes the same
/// set in its text output.
pub fn is_hidden_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{061C}'
                | '\u{00AD}'
                | '\u{FEFF}'
        )
}

/// The first hidden character of `s` (see [`is_hidden_char`]), described for an error message.
pub fn hidden_char(s: &str) -> Option<String> {
    s.chars()
        .find(|&c| is_hidden_char(c))
        .map(|c| format!("U+{:04X}", c as u32))
}

/// Plan ids: lowercase `[a-z0-9][a-z0-9._-]{0,62}`, not a route word ([`RESERVED_IDS`]).
pub fn validate_id(id: &str) -> Result<(), String> {
    if RESERVED_IDS.contains(&id) {
        return Err(format!(
            "'{id}' is reserved (it is a route word: GET /v1/rollouts/{id}); choose another id"
        ));
    }
    let mut chars = id.chars();
    let ok_first = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_rest = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if ok_first && ok_rest && id.len() <= 63 {
        Ok(())
    } else {
        Err(format!(
            "'{}' is not a valid plan id: use 1 to 63 characters of a-z, 0-9, '.', '_', '-', \
             starting with a letter or digit",
            truncate(id, 80)
        ))
    }
}

/// Labels: keys of 1–63 characters `[A-Za-z0-9._/-]`, values up to 253 characters without
/// control characters, at most 64 labels.
pub fn validate_labels<'a>(
    labels: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<(), FieldError> {
    validate_labels_at("metadata.labels", labels)
}

/// [`validate_labels`] for labels at another place of a request (`at` names it in errors:
/// `labels`, `spec.targets.selector`, …).
pub fn validate_labels_at<'a>(
    at: &str,
    labels: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<(), FieldError> {
    if labels.len() > 64 {
        return Err(FieldError::new(at, "at most 64 labels"));
    }
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c));
        if !key_ok {
            return Err(FieldError::new(
                format!("{at}.{}", truncate(k, 80)),
                "label keys are 1 to 63 characters of A-Z, a-z, 0-9, '.', '_', '/', '-'",
            ));
        }
        if v.len() > 253 || v.chars().any(is_hidden_char) {
            return Err(FieldError::new(
                format!("{at}.{k}"),
                "label values are at most 253 characters, without control, bidi-override or \
                 zero-width characters",
            ));
        }
    }
    Ok(())
}

/// Checks the shape of a plan spec that must hold whatever the artifact policy.
pub fn validate_spec(spec: &autonomy_api::PlanSpec) -> Result<(), FieldError> {
    let r = &spec.artifact_ref;
    if r.trim().is_empty() {
        return Err(FieldError::new(
            "spec.artifact_ref",
            "is required and must not be empty",
        ));
    }
    if r.len() > 2048 || r.chars().any(|c| is_hidden_char(c) || c.is_whitespace()) {
        return Err(FieldError::new(
            "spec.artifact_ref",
            "must be at most 2048 characters without whitespace, control, bidi-override or \
             zero-width characters",
        ));
    }
    if let Some(f) = &spec.target_lock_fingerprint {
        if f.is_empty()
            || f.len() > 256
            || f.chars().any(|c| is_hidden_char(c) || c.is_whitespace())
        {
            return Err(FieldError::new(
                "spec.target_lock_fingerprint",
                "must be 1 to 256 characters without whitespace, control, bidi-override or \
                 zero-width characters",
            ));
        }
    }
    if spec.stages.len() > 1000 {
        return Err(FieldError::new("spec.stages", "at most 1000 stages"));
    }
    Ok(())
}

/// Artifact URI schemes the CP knows how to deliver.
pub const KNOWN_SCHEMES: [&str; 4] = ["oci", "https", "s3", "file"];

/// What looks wrong about an artifact reference or target-lock fingerprint. These are
/// stored as `status.warnings` (default policy) or turned into a 422 (`strict`).
pub fn artifact_warnings(artifact_ref: &str, fingerprint: Option<&str>) -> Vec<String> {
    let mut warnings = Vec::new();
    match artifact_ref.split_once("://") {
        Some((scheme, _)) if KNOWN_SCHEMES.contains(&scheme) => {}
        Some((scheme, _)) => warnings.push(format!(
            "artifact_ref scheme '{scheme}' is not a known scheme (known: {})",
            KNOWN_SCHEMES.join(", ")
        )),
        None => warnings.push("artifact_ref has no scheme (expected e.g. oci://…)".to_string()),
    }
    if let Some((_, digest)) = artifact_ref.rsplit_once('@') {
        if let Some(problem) = digest_problem(digest, &["sha256", "sha512", "blake3"]) {
            warnings.push(format!("artifact_ref digest '{digest}' {problem}"));
        }
    }
    if let Some(f) = fingerprint {
        if let Some(problem) = digest_problem(f, &["blake3", "sha256"]) {
            warnings.push(format!("target_lock_fingerprint '{f}' {problem}"));
        }
    }
    warnings
}

fn digest_problem(digest: &str, algorithms: &[&str]) -> Option<String> {
    let Some((alg, hex)) = digest.split_once(':') else {
        return Some("is not of the form <algorithm>:<hex>".to_string());
    };
    let want = match alg {
        "sha256" | "blake3" => 64,
        "sha512" => 128,
        _ => return Some(format!("uses unknown algorithm '{alg}'")),
    };
    if !algorithms.contains(&alg) {
        return Some(format!(
            "uses algorithm '{alg}', expected one of {}",
            algorithms.join(", ")
        ));
    }
    if hex.len() != want
        || !hex
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    {
        return Some(format!(
            "is not {want} lowercase hex characters after '{alg}:'"
        ));
    }
    None
}

/// Parses `threshold_seconds`: a non-negative, finite number of seconds, fractions allowed.
pub fn parse_threshold(s: &str) -> Result<f64, FieldError> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=10.0 * 365.0 * 86400.0).contains(&v) => Ok(v),
        _ => Err(FieldError::new(
            "threshold_seconds",
            format!("must be a non-negative number of seconds (fractions allowed), got '{s}'"),
        )),
    }
}

/// Explains a stuck plan: what it is waiting for and since when, and what to run.
pub fn diagnose_stuck(
    id: &str,
    phase: Phase,
    phase_changed_us: i64,
    last_progress_us: i64,
    now_us: i64,
) -> (String, Vec<String>) {
    let stale = (now_us - last_progress_us).max(0) as f64 / 1e6;
    let since = timefmt::format_us(phase_changed_us);
    let progress = timefmt::format_us(last_progress_us);
    let retry = format!(
        "autonomy rollback execute --target rollout_plan --resource {id} --strategy retry \
         --reason \"<why>\""
    );
    let rollback = format!(
        "autonomy rollback execute --target rollout_plan --resource {id} --strategy rollback \
         --reason \"<why>\""
    );
    let abort = format!(
        "autonomy rollback execute --target rollout_plan --resource {id} --strategy abort \
         --reason \"<why>\""
    );
    match phase {
        Phase::Published => (
            format!(
                "waiting at its start gate since {since}: published but not started, no \
                 progress for {stale:.1}s; nobody has passed the gate"
            ),
            vec![format!("autonomy rollout start {id}"), retry, abort],
        ),
        _ => (
            format!(
                "active since {since} but no device progress for {stale:.1}s (last progress at \
                 {progress}); devices may be unresponsive or the dispatch was lost"
            ),
            vec![
                retry,
                format!("autonomy rollout pause {id}"),
                rollback,
                abort,
            ],
        ),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The most characters a `reason` may have (it goes to the audit store).
pub const MAX_REASON_CHARS: usize = 1024;

/// Checks a free-text reason: at most [`MAX_REASON_CHARS`] characters (not bytes).
pub fn validate_reason(reason: &str, required: bool) -> Result<(), FieldError> {
    if required && reason.trim().is_empty() {
        return Err(FieldError::new(
            "reason",
            format!("say why, in 1 to {MAX_REASON_CHARS} characters (it goes to the audit store)"),
        ));
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(FieldError::new(
            "reason",
            format!("at most {MAX_REASON_CHARS} characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Phase::*;

    /// The line and paragraph separators break a line in a terminal or a log viewer, and the
    /// invisible operators and soft hyphen show nothing: all are hidden; their visible
    /// neighbours are not.
    #[test]
    fn separators_and_invisible_characters_are_hidden() {
        for c in ['\u{2028}', '\u{2029}', '\u{00AD}', '\u{2061}', '\u{2064}'] {
            assert!(is_hidden_char(c), "U+{:04X}", c as u32);
            let labels = std::collections::BTreeMap::from([("k".to_string(), format!("a{c}b"))]);
            assert!(
                validate_labels(labels.iter()).is_err(),
                "U+{:04X}",
                c as u32
            );
        }
        for c in [
            '\u{00A0}', '\u{2027}', '\u{202F}', '\u{2065}', '\u{206A}', 'é',
        ] {
            assert!(!is_hidden_char(c), "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn hidden_characters_and_reserved_ids_are_refused() {
        assert!(validate_id("stuck").unwrap_err().contains("reserved"));
        assert!(validate_id("stuck-1").is_ok());
        for bad in [
            "a\u{200B}b",
            "a\u{202E}b",
            "a\u{1b}[2J",
            "\u{FEFF}x",
            "a\u{2066}b",
        ] {
            assert!(hidden_char(bad).is_some(), "{bad:?}");
            let spec = autonomy_api::PlanSpec {
                artifact_ref: format!("oci://r/{bad}"),
                target_lock_fingerprint: None,
                targets: Default::default(),
                stages: vec![],
                policy: None,
            };
            assert!(validate_spec(&spec).is_err(), "{bad:?}");
            let labels = std::collections::BTreeMap::from([("k".to_string(), bad.to_string())]);
            assert!(validate_labels(labels.iter()).is_err(), "{bad:?}");
        }
        assert_eq!(hidden_char("plain é ü"), None);
        // Reasons are counted in characters: 1024 two-byte characters pass.
        assert!(validate_reason(&"é".repeat(1024), true).is_ok());
        assert!(validate_reason(&"é".repeat(1025), true).is_err());
        assert!(validate_reason(" ", true).is_err());
        assert!(validate_reason("", false).is_ok());
    }

    /// Every (phase, strategy) pair, written out, so a change to the table is a visible diff.
    #[test]
    fn recovery_table_is_complete() {
        let apply = |p| Recovery::Apply(p);
        let cases = [
            (Draft, Strategy::Retry, None),
            (Published, Strategy::Retry, Some(apply(Active))),
            (Active, Strategy::Retry, Some(apply(Active))),
            (Paused, Strategy::Retry, Some(apply(Active))),
            (Failed, Strategy::Retry, Some(apply(Active))),
            (Completed, Strategy::Retry, None),
            (Aborted, Strategy::Retry, None),
            (RolledBack, Strategy::Retry, None),
            (Draft, Strategy::Rollback, Some(apply(RolledBack))),
            (Published, Strategy::Rollback, Some(apply(RolledBack))),
            (Active, Strategy::Rollback, Some(apply(RolledBack))),
            (Paused, Strategy::Rollback, Some(apply(RolledBack))),
            (Failed, Strategy::Rollback, Some(apply(RolledBack))),
            (Completed, Strategy::Rollback, Some(apply(RolledBack))),
            (Aborted, Strategy::Rollback, None),
            (RolledBack, Strategy::Rollback, Some(Recovery::Noop)),
            (Draft, Strategy::Abort, Some(apply(Aborted))),
            (Published, Strategy::Abort, Some(apply(Aborted))),
            (Active, Strategy::Abort, Some(apply(Aborted))),
            (Paused, Strategy::Abort, Some(apply(Aborted))),
            (Failed, Strategy::Abort, Some(apply(Aborted))),
            (Completed, Strategy::Abort, None),
            (Aborted, Strategy::Abort, Some(Recovery::Noop)),
            (RolledBack, Strategy::Abort, None),
        ];
        assert_eq!(cases.len(), Phase::ALL.len() * Strategy::ALL.len());
        for (phase, strategy, want) in cases {
            let got = recovery(phase, strategy);
            match want {
                Some(w) => assert_eq!(got, w, "{phase} + {strategy}"),
                None => match got {
                    Recovery::Reject(why) => {
                        assert!(why.contains(phase.as_str()), "{phase} + {strategy}: {why}")
                    }
                    other => panic!("{phase} + {strategy}: expected reject, got {other:?}"),
                },
            }
        }
    }

    #[test]
    fn terminal_phases_never_leave_except_completed_rollback() {
        for phase in Phase::ALL.iter().copied().filter(|p| p.is_terminal()) {
            for &s in Strategy::ALL {
                if let Recovery::Apply(to) = recovery(phase, s) {
                    assert_eq!((phase, s, to), (Completed, Strategy::Rollback, RolledBack));
                }
            }
            for &v in Verb::ALL {
                assert!(verb_transition(phase, v).is_err());
            }
        }
    }

    #[test]
    fn verbs() {
        assert_eq!(verb_transition(Draft, Verb::Publish), Ok(Published));
        assert_eq!(verb_transition(Published, Verb::Start), Ok(Active));
        assert_eq!(verb_transition(Active, Verb::Pause), Ok(Paused));
        assert_eq!(verb_transition(Paused, Verb::Resume), Ok(Active));
        let mut ok = 0;
        for &p in Phase::ALL {
            for &v in Verb::ALL {
                match verb_transition(p, v) {
                    Ok(_) => ok += 1,
                    Err(why) => assert!(why.contains(p.as_str()), "{why}"),
                }
            }
        }
        assert_eq!(ok, 4);
    }

    #[test]
    fn ids() {
        for good in ["a", "val11-gate-1", "0.x_y-z", &"a".repeat(63)] {
            assert!(validate_id(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "A", "a b", "a/b", "é", &"a".repeat(64), ".a"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn artifact_warnings_name_the_problem() {
        let w = artifact_warnings(
            "corrupt://chaos/artifact@sha256:deadbeefcorrupt",
            Some("blake3:0000000000000000corruption"),
        );
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].contains("scheme 'corrupt'"));
        assert!(w[1].contains("sha256:deadbeefcorrupt"));
        assert!(w[2].contains("target_lock_fingerprint"));
        let good = format!("oci://reg/app@sha256:{}", "a".repeat(64));
        assert!(artifact_warnings(&good, Some(&format!("blake3:{}", "0".repeat(64)))).is_empty());
        assert_eq!(artifact_warnings("reg/app:1.0", None).len(), 1);
    }

    #[test]
    fn thresholds() {
        assert_eq!(parse_threshold("2").unwrap(), 2.0);
        assert_eq!(parse_threshold("0.5").unwrap(), 0.5);
        assert_eq!(parse_threshold("0").unwrap(), 0.0);
        for bad in ["-1", "abc", "NaN", "inf", "", "1e300"] {
            let e = parse_threshold(bad).unwrap_err();
            assert_eq!(e.field, "threshold_seconds");
        }
    }

    #[test]
    fn diagnosis_is_never_empty_and_suggests_runnable_lines() {
        for phase in STUCK_PHASES {
            let (d, actions) = diagnose_stuck("p-1", phase, 1_000_000, 1_000_000, 4_000_000);
            assert!(d.contains("3.0s"), "{d}");
            assert!(actions
                .iter()
                .all(|a| a.starts_with("autonomy ") && a.contains("p-1")));
            assert!(actions.iter().any(|a| a.contains("--strategy retry")));
        }
    }
}

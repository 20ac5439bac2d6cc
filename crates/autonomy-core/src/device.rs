//! What a device's report, poll, timeout or a recovery request does to its assignment in one
//! engine-driven plan (SPEC §8.2, §8.5, §9.2, §9.3). Pure functions: each takes the current
//! [`Assignment`] and `now` and returns the new record (and, for drift, its audit draft); the
//! store loads, calls one of these and persists what it returns, in one transaction.
//!
//! The states are [`AssignmentState`], a mirror of §8.2 kept in `autonomy_api::device` until
//! the engine's `DeviceState` replaces it at the merge (same 16 names; no rule here changes).
//!
//! Reports are not audited (SPEC §9.2: they are kept in the store, not in the audit chain);
//! drift is, once per change ([`poll_drift`]).

use std::collections::BTreeMap;
use std::fmt;

use autonomy_api::device::{
    AssignmentAction, AssignmentState, EnrollKeyRequest, EnrollRequest, PollRequest,
    RegisterDeviceRequest, ReportRequest, ReportResponse, ReportResult, ReportState,
    MAX_POLL_WAIT_SECONDS, MAX_REPORT_MESSAGE_CHARS,
};
use autonomy_api::{cut_chars, AuditEvent, EventType, FieldError, Outcome, Strategy, Target};

use crate::{hidden_char, validate_id, validate_labels};

use AssignmentState as S;

/// The most uses of one enroll key.
pub const MAX_ENROLL_KEY_USES: u32 = 1_000_000;
/// The longest life of an enroll key: one year.
pub const MAX_ENROLL_KEY_TTL_SECONDS: u64 = 365 * 24 * 3600;
/// The longest digest or boot id a device may send.
pub const MAX_DIGEST_CHARS: usize = 256;
/// The most conditions in one poll (SPEC §8.7).
pub const MAX_CONDITIONS: usize = 32;

/// One device's assignment in one plan: the record the store keeps per (plan, device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub device_id: String,
    pub plan_id: String,
    pub state: AssignmentState,
    /// 1 at creation; +1 on each retry and when a rollback turns it into a revert.
    pub attempt: u32,
    /// The highest `seq` applied in this attempt (0: none yet).
    pub last_seq: u64,
    /// The last report applied in this attempt (`None`: the device has not reported yet, so it
    /// has not started).
    pub step: Option<ReportState>,
    /// The `boot_id` of the last `installing` report of this attempt (§9.3).
    pub boot_id_at_install: Option<String>,
    /// The digest the device last reported.
    pub installed_digest: Option<String>,
    /// The digest the device had before this plan, recorded at dispatch (`None`: unknown).
    pub previous_digest: Option<String>,
    /// When anything in the record last changed (µs since the epoch).
    pub updated_at_us: i64,
    /// When `state` last changed (µs): what a non-converging scan measures.
    pub state_since_us: i64,
    /// Why the state is what it is: the device's message, or the CP's explanation
    /// (`digest_mismatch: …`, `same boot: …`). At most [`MAX_REPORT_MESSAGE_CHARS`].
    pub message: String,
}

impl Assignment {
    /// A new `pending` assignment, attempt 1.
    pub fn new(
        device_id: impl Into<String>,
        plan_id: impl Into<String>,
        previous_digest: Option<String>,
        now_us: i64,
    ) -> Self {
        Assignment {
            device_id: device_id.into(),
            plan_id: plan_id.into(),
            state: S::Pending,
            attempt: 1,
            last_seq: 0,
            step: None,
            boot_id_at_install: None,
            installed_digest: None,
            previous_digest,
            updated_at_us: now_us,
            state_since_us: now_us,
            message: String::new(),
        }
    }

    /// This record moved to `to` at `now_us` with `message`.
    fn moved(&self, to: AssignmentState, message: impl Into<String>, now_us: i64) -> Self {
        let mut next = self.clone();
        if to != self.state {
            next.state_since_us = now_us;
        }
        next.state = to;
        next.updated_at_us = now_us;
        next.message = cut_chars(&message.into(), MAX_REPORT_MESSAGE_CHARS);
        next
    }

    /// This record at the start of a new attempt in state `to`.
    fn next_attempt(&self, to: AssignmentState, message: &str, now_us: i64) -> Self {
        let mut next = self.moved(to, message, now_us);
        next.attempt = self.attempt.saturating_add(1);
        next.last_seq = 0;
        next.step = None;
        next.boot_id_at_install = None;
        next
    }
}

/// Whether the device is working on its assignment (`dispatched` … `verifying`, SPEC §8.7).
pub fn is_in_flight(state: AssignmentState) -> bool {
    matches!(
        state,
        S::Dispatched | S::Downloading | S::Installing | S::Rebooting | S::Verifying
    )
}

/// What a poll tells the device to do in this state (`None`: nothing).
pub fn poll_action(state: AssignmentState) -> Option<AssignmentAction> {
    match state {
        s if is_in_flight(s) => Some(AssignmentAction::Install),
        S::Reverting => Some(AssignmentAction::Revert),
        S::Cancelled => Some(AssignmentAction::Cancel),
        _ => None,
    }
}

/// `pending` → `dispatched` (the promoter's dispatch of one device); `None` in any other state.
pub fn dispatch(a: &Assignment, now_us: i64) -> Option<Assignment> {
    (a.state == S::Pending).then(|| a.moved(S::Dispatched, "", now_us))
}

// ---------------------------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------------------------

/// A report that was taken: `applied` with the new record, or `duplicate` with the record
/// unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportOutcome {
    pub result: ReportResult,
    pub assignment: Assignment,
}

impl ReportOutcome {
    /// The answer to the device.
    pub fn response(&self) -> ReportResponse {
        ReportResponse {
            result: self.result,
            assignment_state: self.assignment.state,
        }
    }
}

/// A report that was refused; nothing changes. All are 409 (`code()` is the error's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportRefusal {
    /// The report names another plan than the device's assignment.
    NotAssigned { plan_id: String },
    /// The report is for an older attempt than the current one.
    Superseded { reported: u32, current: u32 },
    /// The report is for an attempt that was never made.
    UnknownAttempt { reported: u32, current: u32 },
    /// The report would move the assignment where it cannot go.
    IllegalTransition {
        from: AssignmentState,
        to: ReportState,
    },
}

impl ReportRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            ReportRefusal::NotAssigned { .. } => "not_assigned",
            ReportRefusal::Superseded { .. } => "superseded",
            ReportRefusal::UnknownAttempt { .. } => "unknown_attempt",
            ReportRefusal::IllegalTransition { .. } => "illegal_transition",
        }
    }
}

impl fmt::Display for ReportRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReportRefusal::NotAssigned { plan_id } => {
                write!(f, "the device has no assignment in plan '{plan_id}'")
            }
            ReportRefusal::Superseded { reported, current } => write!(
                f,
                "attempt {reported} is superseded: the current attempt is {current}"
            ),
            ReportRefusal::UnknownAttempt { reported, current } => write!(
                f,
                "attempt {reported} was never made: the current attempt is {current}"
            ),
            ReportRefusal::IllegalTransition { from, to } => {
                write!(f, "illegal transition: {from} → {to}")
            }
        }
    }
}

impl std::error::Error for ReportRefusal {}

/// Order of the progress steps within an attempt (reports only move forward).
fn progress_rank(r: ReportState) -> Option<u8> {
    match r {
        ReportState::Downloading => Some(2),
        ReportState::Installing => Some(3),
        ReportState::Rebooting => Some(4),
        ReportState::Verifying => Some(5),
        _ => None,
    }
}

/// Order of the in-flight states of an install.
fn state_rank(s: AssignmentState) -> Option<u8> {
    match s {
        S::Dispatched => Some(1),
        S::Downloading => Some(2),
        S::Installing => Some(3),
        S::Rebooting => Some(4),
        S::Verifying => Some(5),
        _ => None,
    }
}

fn progress_state(r: ReportState) -> Option<AssignmentState> {
    match r {
        ReportState::Downloading => Some(S::Downloading),
        ReportState::Installing => Some(S::Installing),
        ReportState::Rebooting => Some(S::Rebooting),
        ReportState::Verifying => Some(S::Verifying),
        _ => None,
    }
}

/// What a report of `to` does from `from`, before the digests are looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Illegal,
    /// Plain move (progress, `failed`, `rolled_back`).
    Move(AssignmentState),
    /// `succeeded` of an install: checked against the target digest (§9.3).
    VerifyInstall,
    /// A progress report of a revert: the state stays `reverting`.
    RevertProgress,
    /// The end of a revert claimed good: checked against the previous digest.
    VerifyRevert,
    RevertFailed,
}

fn step(from: AssignmentState, last: Option<ReportState>, to: ReportState) -> Step {
    use ReportState as R;
    if let Some(from_rank) = state_rank(from) {
        let installed = from_rank >= 3;
        return match (to, progress_rank(to)) {
            // Forward (or the same step again); rebooting and verifying need an install.
            (_, Some(r)) if r >= from_rank && (r <= 3 || installed) => {
                progress_state(to).map_or(Step::Illegal, Step::Move)
            }
            (R::Succeeded, _) if installed => Step::VerifyInstall,
            (R::Failed, _) => Step::Move(S::Failed),
            (R::RolledBack, _) if installed => Step::Move(S::RolledBack),
            _ => Step::Illegal,
        };
    }
    if from != S::Reverting {
        return Step::Illegal;
    }
    let last_rank = last.and_then(progress_rank).unwrap_or(0);
    match (to, progress_rank(to)) {
        (_, Some(r)) if r >= last_rank => Step::RevertProgress,
        (_, Some(_)) => Step::Illegal,
        (R::Succeeded | R::Reverted | R::RolledBack, _) => Step::VerifyRevert,
        (R::Failed | R::RevertFailed, _) => Step::RevertFailed,
        _ => Step::Illegal,
    }
}

/// Whether a claimed success came after a reboot: when `reboot_required`, the boot must be
/// known at install and differ now (an unknown boot is never a reboot).
fn rebooted(a: &Assignment, boot_id: &str, reboot_required: bool) -> bool {
    if !reboot_required {
        return true;
    }
    match a.boot_id_at_install.as_deref() {
        Some(at_install) => !at_install.is_empty() && !boot_id.is_empty() && boot_id != at_install,
        // A revert that needed no install (the device already ran the previous digest).
        None => a.state == S::Reverting,
    }
}

/// Applies a device's report to its assignment (SPEC §9.2, §9.3), `report` having passed
/// [`validate_report`]. `target_digest` is the plan's; `previous_digest` is the record's
/// (recorded at dispatch). In order: another plan → `NotAssigned`; an older attempt →
/// `Superseded`; a newer one → `UnknownAttempt`; a `seq` not above the last → `Duplicate`,
/// nothing changes; a move the table of [`step`] refuses → `IllegalTransition`. Otherwise the
/// record moves:
/// - `succeeded` of an install is `verified` only on the target digest and, when
///   `reboot_required`, a boot other than the one of `installing` (same boot: `verifying`, never
///   counted); on the previous digest it is `rolled_back`; any other digest is `failed`
///   (`digest_mismatch`);
/// - while `reverting`, progress keeps `reverting`; success (`succeeded`, `reverted`,
///   `rolled_back`) on the previous digest is `reverted` (same boot after an install: stays
///   `reverting`), on another digest `revert_failed`; `failed`/`revert_failed` is
///   `revert_failed`.
pub fn apply_report(
    a: &Assignment,
    report: &ReportRequest,
    target_digest: &str,
    reboot_required: bool,
    now_us: i64,
) -> Result<ReportOutcome, ReportRefusal> {
    if report.plan_id != a.plan_id {
        return Err(ReportRefusal::NotAssigned {
            plan_id: report.plan_id.clone(),
        });
    }
    if report.attempt < a.attempt {
        return Err(ReportRefusal::Superseded {
            reported: report.attempt,
            current: a.attempt,
        });
    }
    if report.attempt > a.attempt {
        return Err(ReportRefusal::UnknownAttempt {
            reported: report.attempt,
            current: a.attempt,
        });
    }
    if report.seq <= a.last_seq {
        return Ok(ReportOutcome {
            result: ReportResult::Duplicate,
            assignment: a.clone(),
        });
    }
    let illegal = ReportRefusal::IllegalTransition {
        from: a.state,
        to: report.state,
    };
    let installed = report.installed_digest.as_str();
    let previous = a.previous_digest.as_deref().filter(|p| !p.is_empty());
    let said = report.message.as_str();
    let mismatch = |expected: &str| {
        format!("digest_mismatch: installed '{installed}', expected '{expected}'; {said}")
    };
    let same_boot = "same boot as at install: the success is not counted until a reboot";
    let mut next = match step(a.state, a.step, report.state) {
        Step::Illegal => return Err(illegal),
        Step::Move(to) => a.moved(to, said, now_us),
        Step::VerifyInstall if installed == target_digest => {
            if rebooted(a, &report.boot_id, reboot_required) {
                a.moved(S::Verified, said, now_us)
            } else {
                a.moved(S::Verifying, same_boot, now_us)
            }
        }
        Step::VerifyInstall if Some(installed) == previous => a.moved(
            S::RolledBack,
            format!("back on the previous digest; {said}"),
            now_us,
        ),
        Step::VerifyInstall => a.moved(S::Failed, mismatch(target_digest), now_us),
        Step::RevertProgress => a.moved(S::Reverting, said, now_us),
        Step::VerifyRevert => match previous {
            Some(p) if installed == p => {
                if rebooted(a, &report.boot_id, reboot_required) {
                    a.moved(S::Reverted, said, now_us)
                } else {
                    a.moved(S::Reverting, same_boot, now_us)
                }
            }
            Some(p) => a.moved(S::RevertFailed, mismatch(p), now_us),
            None => a.moved(S::RevertFailed, mismatch(""), now_us),
        },
        Step::RevertFailed => a.moved(S::RevertFailed, said, now_us),
    };
    next.last_seq = report.seq;
    next.step = Some(report.state);
    if report.state == ReportState::Installing {
        next.boot_id_at_install = Some(report.boot_id.clone());
    }
    if !installed.is_empty() {
        next.installed_digest = Some(installed.to_string());
    }
    Ok(ReportOutcome {
        result: ReportResult::Applied,
        assignment: next,
    })
}

// ---------------------------------------------------------------------------------------------
// Drift, timeouts, recovery
// ---------------------------------------------------------------------------------------------

/// A drift change found by a poll: the new record and its audit draft (resource: the plan id;
/// `details.device_id` names the device).
#[derive(Debug, Clone, PartialEq)]
pub struct DriftChange {
    pub assignment: Assignment,
    pub event: AuditEvent,
}

/// What a poll with `installed_digest` does to a settled assignment (SPEC §9.3): a `verified`
/// device on another digest becomes `drifted` (`device.drift_detected`); a `drifted` one back
/// on `target_digest` is `verified` again (`device.drift_resolved`). Anything else (an empty
/// digest, a drifted device on yet another digest, any other state) is `None`: drift is
/// audited once per change.
pub fn poll_drift(
    a: &Assignment,
    installed_digest: &str,
    target_digest: &str,
    now_us: i64,
) -> Option<DriftChange> {
    if installed_digest.is_empty() {
        return None;
    }
    let (to, event_type) = match a.state {
        S::Verified if installed_digest != target_digest => {
            (S::Drifted, EventType::DeviceDriftDetected)
        }
        S::Drifted if installed_digest == target_digest => {
            (S::Verified, EventType::DeviceDriftResolved)
        }
        _ => return None,
    };
    let message = if to == S::Drifted {
        format!("drifted: polled with '{installed_digest}', expected '{target_digest}'")
    } else {
        String::new()
    };
    let mut next = a.moved(to, message, now_us);
    next.installed_digest = Some(installed_digest.to_string());
    let event = AuditEvent::draft(
        event_type,
        Target::RolloutPlan,
        &a.plan_id,
        Outcome::Success,
        "",
        serde_json::json!({
            "device_id": a.device_id,
            "attempt": a.attempt,
            "target_digest": target_digest,
            "installed_digest": installed_digest,
            "from_state": a.state,
            "to_state": to,
        }),
    );
    Some(DriftChange {
        assignment: next,
        event,
    })
}

/// The deadline of an attempt dispatched at `dispatched_at_us` (saturating).
pub fn deadline_us(dispatched_at_us: i64, device_timeout_seconds: u64) -> i64 {
    let timeout = i64::try_from(device_timeout_seconds)
        .unwrap_or(i64::MAX)
        .saturating_mul(1_000_000);
    dispatched_at_us.saturating_add(timeout)
}

/// An in-flight assignment whose deadline has come (`now_us >= deadline_us`) is `timed_out`;
/// `None` otherwise (reverts do not time out: they show as not converging).
pub fn timed_out(a: &Assignment, deadline_us: i64, now_us: i64) -> Option<Assignment> {
    (is_in_flight(a.state) && now_us >= deadline_us).then(|| {
        a.moved(
            S::TimedOut,
            format!("no verified success by the deadline (was {})", a.state),
            now_us,
        )
    })
}

/// What a plan's recovery strategy does to one device (SPEC §8.5); `None`: unchanged.
/// - `retry`: `failed`, `timed_out`, `rolled_back`, `drifted` → `pending`, attempt + 1.
/// - `rollback`: a device that has not started (`pending`, `dispatched`) is `cancelled`; one
///   that started (reported in this attempt) gets a revert: `reverting`, attempt + 1, or
///   `revert_unavailable` when its previous digest is unknown. A `failed` or `timed_out`
///   device that never reported has nothing to undo and stays.
/// - `abort`: `pending` and `dispatched` are `cancelled`; devices in flight finish.
pub fn recover(a: &Assignment, strategy: Strategy, now_us: i64) -> Option<Assignment> {
    let started = a.step.is_some();
    match (strategy, a.state) {
        (Strategy::Retry, S::Failed | S::TimedOut | S::RolledBack | S::Drifted) => {
            Some(a.next_attempt(S::Pending, "", now_us))
        }
        (Strategy::Rollback | Strategy::Abort, S::Pending | S::Dispatched) => {
            Some(a.moved(S::Cancelled, format!("cancelled by {strategy}"), now_us))
        }
        (
            Strategy::Rollback,
            S::Downloading
            | S::Installing
            | S::Rebooting
            | S::Verifying
            | S::Verified
            | S::RolledBack
            | S::Drifted,
        ) => Some(revert(a, now_us)),
        (Strategy::Rollback, S::Failed | S::TimedOut) if started => Some(revert(a, now_us)),
        _ => None,
    }
}

fn revert(a: &Assignment, now_us: i64) -> Assignment {
    match a.previous_digest.as_deref() {
        Some(p) if !p.is_empty() => a.next_attempt(S::Reverting, "", now_us),
        _ => a.moved(
            S::RevertUnavailable,
            "the digest before this plan is unknown: nothing to revert to",
            now_us,
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Validation of device requests
// ---------------------------------------------------------------------------------------------

/// Device ids follow the plan-id grammar ([`validate_id`]).
pub fn validate_device_id(id: &str) -> Result<(), String> {
    validate_id(id).map_err(|e| e.replace("plan id", "device id"))
}

/// Device labels follow the plan-label rules ([`validate_labels`]); the field is `labels.<k>`.
pub fn validate_device_labels(labels: &BTreeMap<String, String>) -> Result<(), FieldError> {
    validate_labels(labels.iter()).map_err(|e| {
        let field = match e.field.strip_prefix("metadata.") {
            Some(rest) => rest.to_string(),
            None => e.field,
        };
        FieldError::new(field, e.message)
    })
}

fn id_and_labels(id: &str, labels: &BTreeMap<String, String>) -> Result<(), FieldError> {
    validate_device_id(id).map_err(|why| FieldError::new("id", why))?;
    validate_device_labels(labels)
}

/// `POST /v1/devices`.
pub fn validate_register(req: &RegisterDeviceRequest) -> Result<(), FieldError> {
    id_and_labels(&req.id, &req.labels)
}

/// `POST /v1/device/enroll`.
pub fn validate_enroll(req: &EnrollRequest) -> Result<(), FieldError> {
    id_and_labels(&req.id, &req.labels)
}

/// `POST /v1/enroll-keys`: 1 to [`MAX_ENROLL_KEY_USES`] uses, a life of 1 s to
/// [`MAX_ENROLL_KEY_TTL_SECONDS`].
pub fn validate_enroll_key(req: &EnrollKeyRequest) -> Result<(), FieldError> {
    validate_device_labels(&req.labels)?;
    if !(1..=MAX_ENROLL_KEY_USES).contains(&req.max_uses) {
        return Err(FieldError::new(
            "max_uses",
            format!("must be 1 to {MAX_ENROLL_KEY_USES}"),
        ));
    }
    if !(1..=MAX_ENROLL_KEY_TTL_SECONDS).contains(&req.ttl_seconds) {
        return Err(FieldError::new(
            "ttl_seconds",
            format!("must be 1 to {MAX_ENROLL_KEY_TTL_SECONDS}"),
        ));
    }
    Ok(())
}

/// A digest or boot id: at most [`MAX_DIGEST_CHARS`], no whitespace or hidden characters
/// (empty is allowed: "unknown").
fn validate_token_field(field: &str, v: &str) -> Result<(), FieldError> {
    if v.chars().count() > MAX_DIGEST_CHARS
        || v.chars().any(char::is_whitespace)
        || hidden_char(v).is_some()
    {
        return Err(FieldError::new(
            field,
            format!(
                "must be at most {MAX_DIGEST_CHARS} characters without whitespace, control, \
                 bidi-override or zero-width characters"
            ),
        ));
    }
    Ok(())
}

/// `POST /v1/device/poll`: `wait_seconds` ≤ [`MAX_POLL_WAIT_SECONDS`], bounded digest and boot
/// id, at most [`MAX_CONDITIONS`] conditions named like label keys with scalar values.
pub fn validate_poll(req: &PollRequest) -> Result<(), FieldError> {
    if req.wait_seconds > MAX_POLL_WAIT_SECONDS {
        return Err(FieldError::new(
            "wait_seconds",
            format!("must be at most {MAX_POLL_WAIT_SECONDS}"),
        ));
    }
    validate_token_field("installed_digest", &req.installed_digest)?;
    validate_token_field("boot_id", &req.boot_id)?;
    if req.conditions.len() > MAX_CONDITIONS {
        return Err(FieldError::new(
            "conditions",
            format!("at most {MAX_CONDITIONS} conditions"),
        ));
    }
    for (k, v) in &req.conditions {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c));
        let value_ok = match v {
            serde_json::Value::Bool(_) | serde_json::Value::Number(_) => true,
            serde_json::Value::String(s) => s.len() <= 253 && hidden_char(s).is_none(),
            _ => false,
        };
        if !key_ok || !value_ok {
            let shown: String = k.chars().take(63).flat_map(char::escape_debug).collect();
            return Err(FieldError::new(
                format!("conditions.{shown}"),
                "conditions are named like label keys and are a boolean, a number or a short \
                 string",
            ));
        }
    }
    Ok(())
}

/// `POST /v1/device/reports`: the plan id, `attempt` ≥ 1, `seq` ≥ 1, bounded digest and boot
/// id. Returns the report with its `message` cut to [`MAX_REPORT_MESSAGE_CHARS`].
pub fn validate_report(req: &ReportRequest) -> Result<ReportRequest, FieldError> {
    validate_id(&req.plan_id).map_err(|why| FieldError::new("plan_id", why))?;
    if req.attempt == 0 {
        return Err(FieldError::new("attempt", "must be at least 1"));
    }
    if req.seq == 0 {
        return Err(FieldError::new("seq", "must be at least 1"));
    }
    validate_token_field("installed_digest", &req.installed_digest)?;
    validate_token_field("boot_id", &req.boot_id)?;
    let mut report = req.clone();
    report.message = cut_chars(&req.message, MAX_REPORT_MESSAGE_CHARS);
    Ok(report)
}

#[cfg(test)]
mod tests {}

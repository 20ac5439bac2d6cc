//! What a device's report, poll, timeout or a recovery request does to its assignment in one
//! engine-driven plan (SPEC §8.2, §8.5, §9.2, §9.3). Pure functions: each takes the current
//! [`Assignment`] and `now` and returns the new record (and, for drift, its audit draft); the
//! store loads, calls one of these and persists what it returns, in one transaction.
//!
//! The states are [`DeviceState`], a mirror of §8.2 kept in `autonomy_api::device` until
//! the engine's `DeviceState` replaces it at the merge (same 16 names; no rule here changes).
//!
//! Reports are not audited (SPEC §9.2: they are kept in the store, not in the audit chain);
//! drift is, once per change ([`poll_drift`]).

use std::collections::BTreeMap;
use std::fmt;

use autonomy_api::device::{
    AssignmentAction, AssignmentView, DeviceAssignment, DeviceState, EnrollKeyRequest,
    EnrollRequest, PollRequest, RegisterDeviceRequest, ReportRequest, ReportResponse, ReportResult,
    ReportState, MAX_POLL_WAIT_SECONDS, MAX_REPORT_MESSAGE_CHARS,
};
use autonomy_api::{
    cut_chars, timefmt, AuditEvent, EventType, FieldError, Outcome, Strategy, Target,
};

use crate::{hidden_char, validate_id};

use DeviceState as S;

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
    pub state: DeviceState,
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
    /// The digest the device had before this plan, recorded at its first dispatch (`None`:
    /// unknown).
    pub previous_digest: Option<String>,
    /// When the current attempt was dispatched (µs); `None` before. Its deadline is
    /// [`deadline_us`] of this.
    pub dispatched_at_us: Option<i64>,
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
    pub fn new(device_id: impl Into<String>, plan_id: impl Into<String>, now_us: i64) -> Self {
        Assignment {
            device_id: device_id.into(),
            plan_id: plan_id.into(),
            state: S::Pending,
            attempt: 1,
            last_seq: 0,
            step: None,
            boot_id_at_install: None,
            installed_digest: None,
            previous_digest: None,
            dispatched_at_us: None,
            updated_at_us: now_us,
            state_since_us: now_us,
            message: String::new(),
        }
    }

    /// This record moved to `to` at `now_us` with `message`.
    fn moved(&self, to: DeviceState, message: impl Into<String>, now_us: i64) -> Self {
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
    fn next_attempt(&self, to: DeviceState, message: &str, now_us: i64) -> Self {
        let mut next = self.moved(to, message, now_us);
        next.attempt = self.attempt.saturating_add(1);
        next.last_seq = 0;
        next.step = None;
        next.boot_id_at_install = None;
        next.dispatched_at_us = None;
        next
    }

    /// This record as an item of `GET /v1/rollouts/{id}/devices`; `stage` is the name of the
    /// device's stage, `last_seen_at` the device's (kept outside the record).
    pub fn item(&self, stage: &str, last_seen_at: Option<String>) -> DeviceAssignment {
        DeviceAssignment {
            device_id: self.device_id.clone(),
            stage: stage.to_string(),
            state: self.state,
            attempt: self.attempt,
            installed_digest: self.installed_digest.clone(),
            last_seen_at,
            updated_at: timefmt::format_us(self.updated_at_us),
            message: self.message.clone(),
        }
    }
}

/// Whether the device is working on its assignment (`dispatched` … `verifying`, SPEC §8.7).
pub fn is_in_flight(state: DeviceState) -> bool {
    matches!(
        state,
        S::Dispatched | S::Downloading | S::Installing | S::Rebooting | S::Verifying
    )
}

/// What a poll tells the device to do in this state (`None`: nothing).
pub fn poll_action(state: DeviceState) -> Option<AssignmentAction> {
    match state {
        s if is_in_flight(s) => Some(AssignmentAction::Install),
        S::Reverting => Some(AssignmentAction::Revert),
        S::Cancelled => Some(AssignmentAction::Cancel),
        _ => None,
    }
}

/// `pending` or `waiting_ready` → `dispatched` (the promoter's dispatch of one device); `None`
/// in any other state.
/// `device_digest` is what the device last said it runs: it becomes the previous digest (the
/// one a rollback reverts to) unless an earlier attempt already recorded one.
pub fn dispatch(a: &Assignment, device_digest: Option<&str>, now_us: i64) -> Option<Assignment> {
    a.state.is_undispatched().then(|| {
        let mut next = a.moved(S::Dispatched, "", now_us);
        next.dispatched_at_us = Some(now_us);
        if next.previous_digest.is_none() {
            next.previous_digest = device_digest.filter(|d| !d.is_empty()).map(str::to_string);
        }
        next
    })
}

/// Readiness (SPEC §8.7): with `Some(why)`, a `pending` device that does not meet
/// `policy.require` → `waiting_ready` (the message says why); with `None`, a `waiting_ready`
/// device that meets it again but is held (budget, tick limit) → `pending`. `None` in any other
/// state: nothing to do.
pub fn set_readiness(a: &Assignment, waiting: Option<&str>, now_us: i64) -> Option<Assignment> {
    match (waiting, a.state) {
        (Some(why), S::Pending) => Some(a.moved(S::WaitingReady, why, now_us)),
        (None, S::WaitingReady) => Some(a.moved(S::Pending, "", now_us)),
        _ => None,
    }
}

/// What a poll shows the device for this record (`None`: nothing to do), given the plan's
/// artifact, target digest, `reboot_required` and `device_timeout_seconds`. A revert's
/// `target_digest` is the previous digest; an install's `deadline_at` is its dispatch time
/// plus the timeout.
pub fn poll_view(
    a: &Assignment,
    artifact_ref: &str,
    target_digest: &str,
    reboot_required: bool,
    device_timeout_seconds: u64,
) -> Option<AssignmentView> {
    let action = poll_action(a.state)?;
    let target = match action {
        AssignmentAction::Revert => a.previous_digest.clone().unwrap_or_default(),
        _ => target_digest.to_string(),
    };
    let deadline_at = match action {
        AssignmentAction::Install => a
            .dispatched_at_us
            .map(|at| timefmt::format_us(deadline_us(at, device_timeout_seconds))),
        _ => None,
    };
    Some(AssignmentView {
        plan_id: a.plan_id.clone(),
        attempt: a.attempt,
        action,
        artifact_ref: artifact_ref.to_string(),
        target_digest: target,
        previous_digest: a.previous_digest.clone(),
        reboot_required,
        deadline_at,
    })
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
    IllegalTransition { from: DeviceState, to: ReportState },
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
fn state_rank(s: DeviceState) -> Option<u8> {
    match s {
        S::Dispatched => Some(1),
        S::Downloading => Some(2),
        S::Installing => Some(3),
        S::Rebooting => Some(4),
        S::Verifying => Some(5),
        _ => None,
    }
}

fn progress_state(r: ReportState) -> Option<DeviceState> {
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
    Move(DeviceState),
    /// `succeeded` of an install: checked against the target digest (§9.3).
    VerifyInstall,
    /// A progress report of a revert: the state stays `reverting`.
    RevertProgress,
    /// The end of a revert claimed good: checked against the previous digest.
    VerifyRevert,
    RevertFailed,
}

fn step(from: DeviceState, last: Option<ReportState>, to: ReportState) -> Step {
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
/// nothing changes; a move the transition table refuses → `IllegalTransition`. Otherwise the
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
    // Dispatched before its first poll, the device's digest was unknown then: what it reports
    // while still downloading is what it ran before this plan (what a rollback reverts to).
    if next.previous_digest.is_none()
        && matches!(
            report.state,
            ReportState::Downloading | ReportState::Installing
        )
        && !installed.is_empty()
        && installed != target_digest
    {
        next.previous_digest = Some(installed.to_string());
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
/// - `abort`: `pending`, `waiting_ready` and `dispatched` are `cancelled`; devices in flight
///   finish.
pub fn recover(a: &Assignment, strategy: Strategy, now_us: i64) -> Option<Assignment> {
    let started = a.step.is_some();
    match (strategy, a.state) {
        (Strategy::Retry, S::Failed | S::TimedOut | S::RolledBack | S::Drifted) => {
            Some(a.next_attempt(S::Pending, "", now_us))
        }
        (Strategy::Rollback | Strategy::Abort, S::Pending | S::WaitingReady | S::Dispatched) => {
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
    crate::validate_labels_at("labels", labels.iter())
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
    crate::engine::gates::check_conditions(&req.conditions)
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
mod tests {
    use super::*;
    use ReportState as R;

    const T0: i64 = 1_800_000_000_000_000;
    const TARGET: &str = "sha256:aaaa";
    const PREV: &str = "sha256:0000";
    const OTHER: &str = "sha256:ffff";

    /// An assignment in `state` as it would be reached: reported steps recorded, the boot id
    /// `b1` recorded at install for states past `installing`; a revert fresh (no report yet).
    fn at(state: DeviceState) -> Assignment {
        let mut a = Assignment::new("amr-0001", "p1", T0);
        a.previous_digest = Some(PREV.into());
        a.dispatched_at_us = Some(T0);
        a.state = state;
        let (step, installed) = match state {
            S::Pending | S::WaitingReady | S::Dispatched | S::Cancelled | S::Reverting => {
                (None, false)
            }
            S::Downloading => (Some(R::Downloading), false),
            S::Installing => (Some(R::Installing), true),
            S::Rebooting => (Some(R::Rebooting), true),
            S::Verifying => (Some(R::Verifying), true),
            S::Failed | S::TimedOut => (Some(R::Failed), true),
            S::RolledBack => (Some(R::RolledBack), true),
            S::Verified | S::Drifted => (Some(R::Succeeded), true),
            S::Reverted => (Some(R::Reverted), false),
            S::RevertFailed => (Some(R::RevertFailed), false),
            S::RevertUnavailable => (Some(R::Verifying), true),
        };
        a.step = step;
        if installed {
            a.boot_id_at_install = Some("b1".into());
        }
        if step.is_some() {
            a.last_seq = 5;
        }
        a
    }

    fn report(state: ReportState, seq: u64, digest: &str, boot: &str) -> ReportRequest {
        ReportRequest {
            plan_id: "p1".into(),
            attempt: 1,
            seq,
            state,
            installed_digest: digest.into(),
            boot_id: boot.into(),
            message: "m".into(),
        }
    }

    fn apply(a: &Assignment, r: &ReportRequest, reboot_required: bool) -> Assignment {
        let out = apply_report(a, r, TARGET, reboot_required, T0 + 1).unwrap();
        assert_eq!(out.result, ReportResult::Applied);
        out.assignment
    }

    /// Every (state, reported state) pair, written out, so a change is a visible diff. The
    /// report is a success case (the target digest, or the previous one while reverting; a new
    /// boot); `None` is an illegal transition.
    #[test]
    fn report_table_is_complete() {
        let cases: [(DeviceState, ReportState, Option<DeviceState>); 153] = [
            (S::Pending, R::Downloading, None),
            (S::Pending, R::Installing, None),
            (S::Pending, R::Rebooting, None),
            (S::Pending, R::Verifying, None),
            (S::Pending, R::Succeeded, None),
            (S::Pending, R::Failed, None),
            (S::Pending, R::RolledBack, None),
            (S::Pending, R::Reverted, None),
            (S::Pending, R::RevertFailed, None),
            (S::WaitingReady, R::Downloading, None),
            (S::WaitingReady, R::Installing, None),
            (S::WaitingReady, R::Rebooting, None),
            (S::WaitingReady, R::Verifying, None),
            (S::WaitingReady, R::Succeeded, None),
            (S::WaitingReady, R::Failed, None),
            (S::WaitingReady, R::RolledBack, None),
            (S::WaitingReady, R::Reverted, None),
            (S::WaitingReady, R::RevertFailed, None),
            (S::Dispatched, R::Downloading, Some(S::Downloading)),
            (S::Dispatched, R::Installing, Some(S::Installing)),
            (S::Dispatched, R::Rebooting, None),
            (S::Dispatched, R::Verifying, None),
            (S::Dispatched, R::Succeeded, None),
            (S::Dispatched, R::Failed, Some(S::Failed)),
            (S::Dispatched, R::RolledBack, None),
            (S::Dispatched, R::Reverted, None),
            (S::Dispatched, R::RevertFailed, None),
            (S::Downloading, R::Downloading, Some(S::Downloading)),
            (S::Downloading, R::Installing, Some(S::Installing)),
            (S::Downloading, R::Rebooting, None),
            (S::Downloading, R::Verifying, None),
            (S::Downloading, R::Succeeded, None),
            (S::Downloading, R::Failed, Some(S::Failed)),
            (S::Downloading, R::RolledBack, None),
            (S::Downloading, R::Reverted, None),
            (S::Downloading, R::RevertFailed, None),
            (S::Installing, R::Downloading, None),
            (S::Installing, R::Installing, Some(S::Installing)),
            (S::Installing, R::Rebooting, Some(S::Rebooting)),
            (S::Installing, R::Verifying, Some(S::Verifying)),
            (S::Installing, R::Succeeded, Some(S::Verified)),
            (S::Installing, R::Failed, Some(S::Failed)),
            (S::Installing, R::RolledBack, Some(S::RolledBack)),
            (S::Installing, R::Reverted, None),
            (S::Installing, R::RevertFailed, None),
            (S::Rebooting, R::Downloading, None),
            (S::Rebooting, R::Installing, None),
            (S::Rebooting, R::Rebooting, Some(S::Rebooting)),
            (S::Rebooting, R::Verifying, Some(S::Verifying)),
            (S::Rebooting, R::Succeeded, Some(S::Verified)),
            (S::Rebooting, R::Failed, Some(S::Failed)),
            (S::Rebooting, R::RolledBack, Some(S::RolledBack)),
            (S::Rebooting, R::Reverted, None),
            (S::Rebooting, R::RevertFailed, None),
            (S::Verifying, R::Downloading, None),
            (S::Verifying, R::Installing, None),
            (S::Verifying, R::Rebooting, None),
            (S::Verifying, R::Verifying, Some(S::Verifying)),
            (S::Verifying, R::Succeeded, Some(S::Verified)),
            (S::Verifying, R::Failed, Some(S::Failed)),
            (S::Verifying, R::RolledBack, Some(S::RolledBack)),
            (S::Verifying, R::Reverted, None),
            (S::Verifying, R::RevertFailed, None),
            (S::Verified, R::Downloading, None),
            (S::Verified, R::Installing, None),
            (S::Verified, R::Rebooting, None),
            (S::Verified, R::Verifying, None),
            (S::Verified, R::Succeeded, None),
            (S::Verified, R::Failed, None),
            (S::Verified, R::RolledBack, None),
            (S::Verified, R::Reverted, None),
            (S::Verified, R::RevertFailed, None),
            (S::Failed, R::Downloading, None),
            (S::Failed, R::Installing, None),
            (S::Failed, R::Rebooting, None),
            (S::Failed, R::Verifying, None),
            (S::Failed, R::Succeeded, None),
            (S::Failed, R::Failed, None),
            (S::Failed, R::RolledBack, None),
            (S::Failed, R::Reverted, None),
            (S::Failed, R::RevertFailed, None),
            (S::TimedOut, R::Downloading, None),
            (S::TimedOut, R::Installing, None),
            (S::TimedOut, R::Rebooting, None),
            (S::TimedOut, R::Verifying, None),
            (S::TimedOut, R::Succeeded, None),
            (S::TimedOut, R::Failed, None),
            (S::TimedOut, R::RolledBack, None),
            (S::TimedOut, R::Reverted, None),
            (S::TimedOut, R::RevertFailed, None),
            (S::RolledBack, R::Downloading, None),
            (S::RolledBack, R::Installing, None),
            (S::RolledBack, R::Rebooting, None),
            (S::RolledBack, R::Verifying, None),
            (S::RolledBack, R::Succeeded, None),
            (S::RolledBack, R::Failed, None),
            (S::RolledBack, R::RolledBack, None),
            (S::RolledBack, R::Reverted, None),
            (S::RolledBack, R::RevertFailed, None),
            (S::Drifted, R::Downloading, None),
            (S::Drifted, R::Installing, None),
            (S::Drifted, R::Rebooting, None),
            (S::Drifted, R::Verifying, None),
            (S::Drifted, R::Succeeded, None),
            (S::Drifted, R::Failed, None),
            (S::Drifted, R::RolledBack, None),
            (S::Drifted, R::Reverted, None),
            (S::Drifted, R::RevertFailed, None),
            (S::Cancelled, R::Downloading, None),
            (S::Cancelled, R::Installing, None),
            (S::Cancelled, R::Rebooting, None),
            (S::Cancelled, R::Verifying, None),
            (S::Cancelled, R::Succeeded, None),
            (S::Cancelled, R::Failed, None),
            (S::Cancelled, R::RolledBack, None),
            (S::Cancelled, R::Reverted, None),
            (S::Cancelled, R::RevertFailed, None),
            (S::Reverting, R::Downloading, Some(S::Reverting)),
            (S::Reverting, R::Installing, Some(S::Reverting)),
            (S::Reverting, R::Rebooting, Some(S::Reverting)),
            (S::Reverting, R::Verifying, Some(S::Reverting)),
            (S::Reverting, R::Succeeded, Some(S::Reverted)),
            (S::Reverting, R::Failed, Some(S::RevertFailed)),
            (S::Reverting, R::RolledBack, Some(S::Reverted)),
            (S::Reverting, R::Reverted, Some(S::Reverted)),
            (S::Reverting, R::RevertFailed, Some(S::RevertFailed)),
            (S::Reverted, R::Downloading, None),
            (S::Reverted, R::Installing, None),
            (S::Reverted, R::Rebooting, None),
            (S::Reverted, R::Verifying, None),
            (S::Reverted, R::Succeeded, None),
            (S::Reverted, R::Failed, None),
            (S::Reverted, R::RolledBack, None),
            (S::Reverted, R::Reverted, None),
            (S::Reverted, R::RevertFailed, None),
            (S::RevertFailed, R::Downloading, None),
            (S::RevertFailed, R::Installing, None),
            (S::RevertFailed, R::Rebooting, None),
            (S::RevertFailed, R::Verifying, None),
            (S::RevertFailed, R::Succeeded, None),
            (S::RevertFailed, R::Failed, None),
            (S::RevertFailed, R::RolledBack, None),
            (S::RevertFailed, R::Reverted, None),
            (S::RevertFailed, R::RevertFailed, None),
            (S::RevertUnavailable, R::Downloading, None),
            (S::RevertUnavailable, R::Installing, None),
            (S::RevertUnavailable, R::Rebooting, None),
            (S::RevertUnavailable, R::Verifying, None),
            (S::RevertUnavailable, R::Succeeded, None),
            (S::RevertUnavailable, R::Failed, None),
            (S::RevertUnavailable, R::RolledBack, None),
            (S::RevertUnavailable, R::Reverted, None),
            (S::RevertUnavailable, R::RevertFailed, None),
        ];
        let pairs: Vec<_> = cases.iter().map(|&(from, to, _)| (from, to)).collect();
        let every: Vec<_> = DeviceState::ALL
            .iter()
            .flat_map(|&from| ReportState::ALL.iter().map(move |&to| (from, to)))
            .collect();
        assert_eq!(pairs, every, "one row per pair, in declaration order");
        for (from, to, want) in cases {
            let a = at(from);
            let digest = if from == S::Reverting { PREV } else { TARGET };
            let r = report(to, 6, digest, "b2");
            let got = apply_report(&a, &r, TARGET, true, T0 + 1);
            match (want, got) {
                (Some(state), Ok(out)) => {
                    assert_eq!(out.result, ReportResult::Applied, "{from} + {to}");
                    assert_eq!(out.assignment.state, state, "{from} + {to}");
                    assert_eq!(out.assignment.last_seq, 6, "{from} + {to}");
                    assert_eq!(out.assignment.step, Some(to), "{from} + {to}");
                    assert_eq!(out.assignment.updated_at_us, T0 + 1);
                    assert_eq!(out.response().assignment_state, state);
                }
                (None, Err(refusal)) => {
                    assert_eq!(
                        refusal,
                        ReportRefusal::IllegalTransition { from, to },
                        "{from} + {to}"
                    );
                    assert_eq!(
                        refusal.to_string(),
                        format!("illegal transition: {from} → {to}")
                    );
                    assert_eq!(refusal.code(), "illegal_transition");
                }
                (want, got) => panic!("{from} + {to}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn an_install_records_its_boot_and_a_reboot_verifies_it() {
        let pending = Assignment::new("amr-0001", "p1", T0);
        assert_eq!(
            poll_view(&pending, "oci://r/a@sha256:aaaa", TARGET, true, 60),
            None
        );
        let a = dispatch(&pending, Some(PREV), T0 + 1).unwrap();
        assert_eq!(dispatch(&a, Some(PREV), T0 + 2), None, "dispatched once");
        assert_eq!(a.state, S::Dispatched);
        assert_eq!(
            (a.previous_digest.as_deref(), a.dispatched_at_us),
            (Some(PREV), Some(T0 + 1))
        );
        let view = poll_view(&a, "oci://r/a@sha256:aaaa", TARGET, true, 60).unwrap();
        assert_eq!(view.action, AssignmentAction::Install);
        assert_eq!((view.attempt, view.target_digest.as_str()), (1, TARGET));
        assert_eq!(view.previous_digest.as_deref(), Some(PREV));
        assert_eq!(
            view.deadline_at,
            Some(timefmt::format_us(T0 + 1 + 60_000_000))
        );
        let a = apply(&a, &report(R::Downloading, 1, PREV, "b1"), true);
        assert_eq!(a.installed_digest.as_deref(), Some(PREV));
        let a = apply(&a, &report(R::Installing, 2, PREV, "b1"), true);
        assert_eq!(a.boot_id_at_install.as_deref(), Some("b1"));
        let a = apply(&a, &report(R::Rebooting, 3, PREV, "b1"), true);
        let a = apply(&a, &report(R::Verifying, 4, TARGET, "b2"), true);
        assert_eq!(
            a.boot_id_at_install.as_deref(),
            Some("b1"),
            "kept after install"
        );
        let a = apply(&a, &report(R::Succeeded, 5, TARGET, "b2"), true);
        assert_eq!(a.state, S::Verified);
        assert_eq!(a.installed_digest.as_deref(), Some(TARGET));
        assert_eq!(a.state_since_us, T0 + 1);
    }

    #[test]
    fn the_previous_digest_is_the_first_dispatch_s_and_a_revert_targets_it() {
        let failed = at(S::Failed);
        let retried = recover(&failed, Strategy::Retry, T0 + 1).unwrap();
        assert_eq!(retried.dispatched_at_us, None);
        let again = dispatch(&retried, Some(OTHER), T0 + 2).unwrap();
        assert_eq!(
            again.previous_digest.as_deref(),
            Some(PREV),
            "kept from attempt 1"
        );
        assert_eq!(again.dispatched_at_us, Some(T0 + 2));
        let unknown = dispatch(&Assignment::new("d", "p1", T0), Some(""), T0).unwrap();
        assert_eq!(unknown.previous_digest, None, "an empty digest is unknown");

        let reverting = recover(&at(S::Verified), Strategy::Rollback, T0 + 3).unwrap();
        let view = poll_view(&reverting, "oci://r/a@sha256:aaaa", TARGET, true, 60).unwrap();
        assert_eq!(view.action, AssignmentAction::Revert);
        assert_eq!((view.attempt, view.target_digest.as_str()), (2, PREV));
        assert_eq!(view.deadline_at, None, "reverts have no deadline");
        let cancelled = recover(&at(S::Dispatched), Strategy::Abort, T0).unwrap();
        let view = poll_view(&cancelled, "oci://r/a", TARGET, true, 60).unwrap();
        assert_eq!(view.action, AssignmentAction::Cancel);

        let item = reverting.item("canary", Some("2027-01-01T00:00:00Z".into()));
        assert_eq!(
            (item.device_id.as_str(), item.stage.as_str()),
            ("amr-0001", "canary")
        );
        assert_eq!((item.state, item.attempt), (S::Reverting, 2));
        assert_eq!(item.updated_at, timefmt::format_us(T0 + 3));
        assert_eq!(item.last_seen_at.as_deref(), Some("2027-01-01T00:00:00Z"));
    }

    /// §9.3: a false success is never counted.
    #[test]
    fn success_is_verified_only_on_the_target_after_a_reboot() {
        let installing = at(S::Installing);
        // Same boot as at install: stays verifying, explained; a later real reboot verifies.
        let same = apply(&installing, &report(R::Succeeded, 6, TARGET, "b1"), true);
        assert_eq!(same.state, S::Verifying);
        assert!(same.message.starts_with("same boot"), "{}", same.message);
        let again = apply(&same, &report(R::Succeeded, 7, TARGET, "b1"), true);
        assert_eq!(
            again.state,
            S::Verifying,
            "a repeated false success stays uncounted"
        );
        let later = apply(&again, &report(R::Succeeded, 8, TARGET, "b2"), true);
        assert_eq!(later.state, S::Verified);
        // An unknown boot (empty) is never a reboot.
        let empty = apply(&installing, &report(R::Succeeded, 6, TARGET, ""), true);
        assert_eq!(empty.state, S::Verifying);
        let mut unknown_at_install = installing.clone();
        unknown_at_install.boot_id_at_install = Some(String::new());
        let s = apply(
            &unknown_at_install,
            &report(R::Succeeded, 6, TARGET, "b2"),
            true,
        );
        assert_eq!(s.state, S::Verifying);
        // Without reboot_required the same boot is fine.
        let no_reboot = apply(&installing, &report(R::Succeeded, 6, TARGET, "b1"), false);
        assert_eq!(no_reboot.state, S::Verified);
        // The previous digest: the device fell back by itself.
        let back = apply(&installing, &report(R::Succeeded, 6, PREV, "b2"), true);
        assert_eq!(back.state, S::RolledBack);
        assert_eq!(back.installed_digest.as_deref(), Some(PREV));
        // Any other digest: failed, digest_mismatch (even with reboot_required false).
        for reboot_required in [true, false] {
            let bad = apply(
                &installing,
                &report(R::Succeeded, 6, OTHER, "b2"),
                reboot_required,
            );
            assert_eq!(bad.state, S::Failed);
            assert!(
                bad.message.starts_with("digest_mismatch"),
                "{}",
                bad.message
            );
            assert!(bad.message.contains(OTHER) && bad.message.contains(TARGET));
        }
        // No previous digest known: a non-target digest is a mismatch, never rolled_back.
        let mut no_prev = installing.clone();
        no_prev.previous_digest = None;
        let bad = apply(&no_prev, &report(R::Succeeded, 6, PREV, "b2"), true);
        assert_eq!(bad.state, S::Failed);
    }

    #[test]
    fn seq_duplicates_and_stale_attempts_change_nothing() {
        let a = at(S::Installing); // last_seq 5
        for seq in [5, 4, 1] {
            let out = apply_report(
                &a,
                &report(R::Verifying, seq, TARGET, "b1"),
                TARGET,
                true,
                T0 + 9,
            )
            .unwrap();
            assert_eq!(out.result, ReportResult::Duplicate, "seq {seq}");
            assert_eq!(out.assignment, a, "seq {seq}");
            assert_eq!(out.response().assignment_state, S::Installing);
        }
        // A duplicate is found before the transition: a retried report of a settled device
        // answers duplicate, not illegal.
        let done = apply(&a, &report(R::Succeeded, 6, TARGET, "b2"), true);
        let out = apply_report(
            &done,
            &report(R::Succeeded, 6, TARGET, "b2"),
            TARGET,
            true,
            T0,
        )
        .unwrap();
        assert_eq!(
            (out.result, out.assignment.state),
            (ReportResult::Duplicate, S::Verified)
        );
        // Another attempt.
        let mut second = a.clone();
        second.attempt = 2;
        let stale = apply_report(
            &second,
            &report(R::Verifying, 9, TARGET, "b1"),
            TARGET,
            true,
            T0,
        );
        let stale = stale.unwrap_err();
        assert_eq!(
            stale,
            ReportRefusal::Superseded {
                reported: 1,
                current: 2
            }
        );
        assert_eq!(stale.code(), "superseded");
        let mut future = report(R::Verifying, 9, TARGET, "b1");
        future.attempt = 3;
        let err = apply_report(&second, &future, TARGET, true, T0).unwrap_err();
        assert_eq!(err.code(), "unknown_attempt");
        let mut other_plan = report(R::Verifying, 9, TARGET, "b1");
        other_plan.plan_id = "p2".into();
        let err = apply_report(&a, &other_plan, TARGET, true, T0).unwrap_err();
        assert_eq!(err.code(), "not_assigned");
        // A refused report does not consume its seq.
        let err = apply_report(
            &a,
            &report(R::Downloading, 6, TARGET, "b1"),
            TARGET,
            true,
            T0,
        );
        assert!(err.is_err());
        assert_eq!(
            apply(&a, &report(R::Verifying, 6, TARGET, "b1"), true).state,
            S::Verifying
        );
    }

    #[test]
    fn a_revert_moves_forward_and_ends_on_the_previous_digest() {
        let installing = at(S::Installing);
        let reverting = recover(&installing, Strategy::Rollback, T0 + 1).unwrap();
        assert_eq!((reverting.state, reverting.attempt), (S::Reverting, 2));
        assert_eq!((reverting.last_seq, reverting.step), (0, None));
        assert_eq!(poll_action(reverting.state), Some(AssignmentAction::Revert));
        // The install attempt is superseded.
        let err = apply_report(
            &reverting,
            &report(R::Verifying, 9, TARGET, "b1"),
            TARGET,
            true,
            T0,
        );
        assert_eq!(err.unwrap_err().code(), "superseded");
        let r = |state, seq, digest: &str, boot: &str| {
            let mut r = report(state, seq, digest, boot);
            r.attempt = 2;
            r
        };
        let a = apply(&reverting, &r(R::Installing, 1, TARGET, "b2"), true);
        assert_eq!(
            (a.state, a.boot_id_at_install.as_deref()),
            (S::Reverting, Some("b2"))
        );
        let a = apply(&a, &r(R::Verifying, 2, PREV, "b3"), true);
        let back = apply_report(&a, &r(R::Downloading, 3, PREV, "b3"), TARGET, true, T0);
        assert_eq!(
            back.unwrap_err(),
            ReportRefusal::IllegalTransition {
                from: S::Reverting,
                to: R::Downloading
            }
        );
        // Same boot as the revert's install: not counted yet.
        let same = apply(&a, &r(R::Succeeded, 3, PREV, "b2"), true);
        assert_eq!(same.state, S::Reverting);
        assert_eq!(
            apply(&a, &r(R::Succeeded, 3, PREV, "b3"), true).state,
            S::Reverted
        );
        assert_eq!(
            apply(&a, &r(R::Reverted, 3, PREV, "b3"), true).state,
            S::Reverted
        );
        let bad = apply(&a, &r(R::Succeeded, 3, TARGET, "b3"), true);
        assert_eq!(bad.state, S::RevertFailed);
        assert!(bad.message.starts_with("digest_mismatch"));
        assert_eq!(
            apply(&a, &r(R::Failed, 3, TARGET, "b3"), true).state,
            S::RevertFailed
        );
    }

    #[test]
    fn drift_is_detected_and_resolved_once() {
        let verified = at(S::Verified);
        assert!(poll_drift(&verified, TARGET, TARGET, T0).is_none());
        assert!(
            poll_drift(&verified, "", TARGET, T0).is_none(),
            "unknown is not drift"
        );
        let d = poll_drift(&verified, OTHER, TARGET, T0 + 3).unwrap();
        assert_eq!(d.assignment.state, S::Drifted);
        assert_eq!(d.assignment.installed_digest.as_deref(), Some(OTHER));
        assert_eq!(d.assignment.state_since_us, T0 + 3);
        assert_eq!(d.event.event_type, "device.drift_detected");
        assert_eq!(d.event.resource, "p1");
        assert_eq!(d.event.details["device_id"], "amr-0001");
        assert_eq!(d.event.details["installed_digest"], OTHER);
        let drifted = d.assignment;
        assert!(
            poll_drift(&drifted, OTHER, TARGET, T0).is_none(),
            "audited once"
        );
        assert!(poll_drift(&drifted, PREV, TARGET, T0).is_none());
        let r = poll_drift(&drifted, TARGET, TARGET, T0 + 4).unwrap();
        assert_eq!(r.assignment.state, S::Verified);
        assert_eq!(r.event.event_type, "device.drift_resolved");
        for s in DeviceState::ALL.iter().copied() {
            if !matches!(s, S::Verified | S::Drifted) {
                assert!(poll_drift(&at(s), OTHER, TARGET, T0).is_none(), "{s}");
            }
        }
    }

    #[test]
    fn in_flight_devices_time_out_at_their_deadline() {
        let deadline = deadline_us(T0, 3600);
        assert_eq!(deadline, T0 + 3_600_000_000);
        assert_eq!(deadline_us(T0, u64::MAX), i64::MAX);
        for s in DeviceState::ALL.iter().copied() {
            let a = at(s);
            assert!(timed_out(&a, deadline, deadline - 1).is_none(), "{s}");
            let got = timed_out(&a, deadline, deadline).map(|a| a.state);
            let want = match s {
                S::Dispatched | S::Downloading | S::Installing | S::Rebooting | S::Verifying => {
                    Some(S::TimedOut)
                }
                _ => None,
            };
            assert_eq!(got, want, "{s}");
        }
        let t = timed_out(&at(S::Rebooting), deadline, deadline).unwrap();
        assert!(t.message.contains("rebooting"), "{}", t.message);
        assert_eq!(t.attempt, 1);
    }

    #[test]
    fn readiness_moves_only_undispatched_devices() {
        for &s in DeviceState::ALL {
            let a = at(s);
            let waits = set_readiness(&a, Some("docked is false (needs true)"), T0 + 1);
            let back = set_readiness(&a, None, T0 + 1);
            match s {
                S::Pending => {
                    let w = waits.unwrap();
                    assert_eq!(w.state, S::WaitingReady);
                    assert_eq!(w.message, "docked is false (needs true)");
                    assert_eq!(
                        (w.attempt, w.dispatched_at_us),
                        (a.attempt, a.dispatched_at_us)
                    );
                    assert_eq!(back, None);
                }
                S::WaitingReady => {
                    assert_eq!(waits, None);
                    assert_eq!(back.unwrap().state, S::Pending);
                }
                _ => assert_eq!((waits, back), (None, None), "{s}"),
            }
        }
    }

    /// Every (state, strategy) pair, written out. `None`: unchanged.
    #[test]
    fn recovery_table_is_complete() {
        use Strategy::{Abort, Retry, Rollback};
        let cases: [(DeviceState, [Option<DeviceState>; 3]); 17] = [
            // retry, rollback, abort
            (S::Pending, [None, Some(S::Cancelled), Some(S::Cancelled)]),
            (
                S::WaitingReady,
                [None, Some(S::Cancelled), Some(S::Cancelled)],
            ),
            (
                S::Dispatched,
                [None, Some(S::Cancelled), Some(S::Cancelled)],
            ),
            (S::Downloading, [None, Some(S::Reverting), None]),
            (S::Installing, [None, Some(S::Reverting), None]),
            (S::Rebooting, [None, Some(S::Reverting), None]),
            (S::Verifying, [None, Some(S::Reverting), None]),
            (S::Verified, [None, Some(S::Reverting), None]),
            (S::Failed, [Some(S::Pending), Some(S::Reverting), None]),
            (S::TimedOut, [Some(S::Pending), Some(S::Reverting), None]),
            (S::RolledBack, [Some(S::Pending), Some(S::Reverting), None]),
            (S::Drifted, [Some(S::Pending), Some(S::Reverting), None]),
            (S::Cancelled, [None, None, None]),
            (S::Reverting, [None, None, None]),
            (S::Reverted, [None, None, None]),
            (S::RevertFailed, [None, None, None]),
            (S::RevertUnavailable, [None, None, None]),
        ];
        assert_eq!(cases.len(), DeviceState::ALL.len());
        for (from, row) in cases {
            for (strategy, want) in [Retry, Rollback, Abort].into_iter().zip(row) {
                let a = at(from);
                let got = recover(&a, strategy, T0 + 7);
                assert_eq!(got.as_ref().map(|a| a.state), want, "{from} + {strategy}");
                if let Some(g) = got {
                    assert_eq!(g.updated_at_us, T0 + 7);
                    let new_attempt = matches!(g.state, S::Pending | S::Reverting);
                    assert_eq!(
                        g.attempt,
                        if new_attempt { 2 } else { 1 },
                        "{from} + {strategy}"
                    );
                    if new_attempt {
                        assert_eq!((g.last_seq, g.step, g.boot_id_at_install), (0, None, None));
                    }
                }
            }
        }
        // A failure that never reported (timed out while dispatched) has nothing to revert.
        let mut silent = at(S::TimedOut);
        silent.step = None;
        assert_eq!(recover(&silent, Strategy::Rollback, T0), None);
        // Without a previous digest, a started device cannot be reverted.
        let mut unknown = at(S::Verified);
        unknown.previous_digest = None;
        let got = recover(&unknown, Strategy::Rollback, T0).unwrap();
        assert_eq!((got.state, got.attempt), (S::RevertUnavailable, 1));
        assert_eq!(poll_action(S::Cancelled), Some(AssignmentAction::Cancel));
        assert_eq!(poll_action(S::Pending), None);
        assert_eq!(poll_action(S::Dispatched), Some(AssignmentAction::Install));
        assert_eq!(poll_action(S::Verified), None);
    }

    #[test]
    fn device_requests_are_validated() {
        assert!(validate_device_id("amr-0007").is_ok());
        let err = validate_device_id("AMR 7").unwrap_err();
        assert!(err.contains("not a valid device id"), "{err}");
        let labels = BTreeMap::from([("bad key".to_string(), "x".to_string())]);
        let reg = RegisterDeviceRequest {
            id: "amr-1".into(),
            labels,
        };
        let err = validate_register(&reg).unwrap_err();
        assert_eq!(err.field, "labels.bad key");
        let enroll = EnrollRequest {
            id: "".into(),
            labels: BTreeMap::new(),
        };
        assert_eq!(validate_enroll(&enroll).unwrap_err().field, "id");
        let key = |max_uses, ttl_seconds| EnrollKeyRequest {
            labels: BTreeMap::new(),
            max_uses,
            ttl_seconds,
        };
        assert!(validate_enroll_key(&key(10, 3600)).is_ok());
        assert_eq!(
            validate_enroll_key(&key(0, 3600)).unwrap_err().field,
            "max_uses"
        );
        assert_eq!(
            validate_enroll_key(&key(1, 0)).unwrap_err().field,
            "ttl_seconds"
        );
        let too_long = MAX_ENROLL_KEY_TTL_SECONDS + 1;
        assert_eq!(
            validate_enroll_key(&key(1, too_long)).unwrap_err().field,
            "ttl_seconds"
        );

        let mut poll = PollRequest {
            wait_seconds: 60,
            ..Default::default()
        };
        assert!(validate_poll(&poll).is_ok());
        poll.wait_seconds = 61;
        assert_eq!(validate_poll(&poll).unwrap_err().field, "wait_seconds");
        poll.wait_seconds = 0;
        poll.boot_id = "b\u{202E}1".into();
        assert_eq!(validate_poll(&poll).unwrap_err().field, "boot_id");
        poll.boot_id = "b1".into();
        poll.conditions
            .insert("docked".into(), serde_json::json!(true));
        poll.conditions
            .insert("battery_pct".into(), serde_json::json!(73));
        assert!(validate_poll(&poll).is_ok());
        poll.conditions
            .insert("nested".into(), serde_json::json!({"a": 1}));
        assert_eq!(validate_poll(&poll).unwrap_err().field, "conditions.nested");

        let good = report(R::Failed, 1, TARGET, "b1");
        assert_eq!(validate_report(&good).unwrap(), good);
        let mut long = good.clone();
        long.message = "é".repeat(5000);
        let cut = validate_report(&long).unwrap();
        assert_eq!(cut.message.chars().count(), MAX_REPORT_MESSAGE_CHARS);
        assert!(cut.message.ends_with(autonomy_api::CUT_MARKER));
        for (field, bad) in [
            (
                "seq",
                ReportRequest {
                    seq: 0,
                    ..good.clone()
                },
            ),
            (
                "attempt",
                ReportRequest {
                    attempt: 0,
                    ..good.clone()
                },
            ),
            (
                "plan_id",
                ReportRequest {
                    plan_id: "P 1".into(),
                    ..good.clone()
                },
            ),
            (
                "installed_digest",
                ReportRequest {
                    installed_digest: "a b".into(),
                    ..good.clone()
                },
            ),
            (
                "installed_digest",
                ReportRequest {
                    installed_digest: "x".repeat(257),
                    ..good.clone()
                },
            ),
        ] {
            assert_eq!(validate_report(&bad).unwrap_err().field, field);
        }
    }
}

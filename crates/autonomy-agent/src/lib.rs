//! `autonomy-agent`: the edge agent's state machine (SPEC §9.4), sans-IO. It decides what a
//! device does next — poll, send a report, run a hook step, exit for a reboot — and what must
//! be persisted, and nothing else: no sockets, no files, no processes, no clock. The real agent
//! (`autonomy agent`: blocking HTTP, a real `sh -c` hook, a state dir) and the fleet simulator
//! (async, thousands of devices, a simulated hook and boot id) drive the same [`Machine`], so
//! they share every rule.
//!
//! # Driving it
//!
//! ```text
//! let mut m = Machine::resume(state_from_disk, current_boot_id);   // or Machine::new
//! persist(m.state());                                              // when it said so
//! loop {
//!     let persist = match m.next() {
//!         Next::Poll { known_revision, after_seconds } => m.on_poll(&poll(m.poll_request(wait))),
//!         Next::Report(r)       => m.on_report(send(&r)),          // Ok(answer) | Err(Refusal)
//!         Next::RunHook(run)    => m.on_hook(run.step, &run_hook(&run)),
//!         Next::ExitForReboot   => exit(75),                       // the supervisor reboots
//!     };
//!     if persist.needed() { write(m.state()) }                      // before the next action
//! }
//! ```
//!
//! A transport error, a timeout or a 5xx is not an event: the driver retries the same
//! [`Next`] (with backoff). A 409 of a report is an event ([`Refusal`]); a 401 ends the
//! driver.
//!
//! # The rules
//!
//! - A job (one assignment: plan, attempt) runs `download` → `install` → (`install` exit 75:
//!   report `rebooting`, [`Next::ExitForReboot`]; after the reboot, a new boot id) → `verify`.
//!   Each step is reported before its hook runs (`downloading`, `installing` — carrying the
//!   boot id the CP compares after the reboot —, `verifying`), and the job ends with
//!   `succeeded` (the digest `verify` printed, the current boot id), or `failed` with the
//!   hook's stderr tail. A revert runs the same steps with `AUTONOMY_ACTION=revert` and ends
//!   with `reverted` (or `revert_failed`).
//! - Every report is numbered (`seq`, rising per plan and attempt) and stored in the state
//!   *before* it is sent ([`AgentState::outbox`]); after a crash it is sent again with the
//!   same `seq`. The CP answers a repeated `seq` with `duplicate` and changes nothing, which
//!   counts as delivered: each step is reported exactly once.
//! - A hook step that was running when the agent died is run again (the state says which step
//!   the job is at, and a step's outcome is recorded only with the report it produces).
//! - `cancel` drops the job; a report refused with 409 (`superseded`, `unknown_attempt`,
//!   `illegal_transition`, `not_assigned`) drops the job, and the agent polls again.
//! - A job that ended (or was dropped) is remembered by (plan, attempt), so a poll that still
//!   offers it (e.g. a success the CP keeps `verifying` until a reboot) does not start it
//!   again.

use std::fmt;

use autonomy_api::device::{
    AssignmentAction, AssignmentView, PollRequest, PollResponse, ReportRequest, ReportResponse,
    ReportState, MAX_REPORT_MESSAGE_CHARS,
};
use serde::{Deserialize, Serialize};

/// The exit code of `install` that asks for a reboot, and of the agent that passes the request
/// on to its supervisor (`EX_TEMPFAIL`).
pub const REBOOT_EXIT_CODE: i32 = 75;

/// The version of the [`AgentState`] format written by this crate.
pub const STATE_VERSION: u32 = 1;

/// A step of the hook (`AUTONOMY_STEP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookStep {
    Download,
    Install,
    Verify,
}

impl HookStep {
    pub const fn as_str(self) -> &'static str {
        match self {
            HookStep::Download => "download",
            HookStep::Install => "install",
            HookStep::Verify => "verify",
        }
    }
}

impl fmt::Display for HookStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a job does (`AUTONOMY_ACTION`): install the target, or revert to the previous digest
/// (a revert's `target_digest` is the digest to go back to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobAction {
    Install,
    Revert,
}

impl JobAction {
    pub const fn as_str(self) -> &'static str {
        match self {
            JobAction::Install => "install",
            JobAction::Revert => "revert",
        }
    }

    /// The report that ends the job well.
    pub const fn success(self) -> ReportState {
        match self {
            JobAction::Install => ReportState::Succeeded,
            JobAction::Revert => ReportState::Reverted,
        }
    }

    /// The report that ends the job badly (the CP takes `failed` for a revert too; the
    /// dedicated `revert_failed` says what failed).
    pub const fn failure(self) -> ReportState {
        match self {
            JobAction::Install => ReportState::Failed,
            JobAction::Revert => ReportState::RevertFailed,
        }
    }
}

impl fmt::Display for JobAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a job is. The report that enters a phase is queued in the same event that moves the
/// job there, so the phase's hook runs only after that report was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Run the `download` hook (`downloading` reported).
    Download,
    /// Run the `install` hook (`installing` reported, with the boot id at install).
    Install,
    /// `install` asked for a reboot (`rebooting` reported): exit 75 until the boot id changes.
    AwaitReboot,
    /// Run the `verify` hook (`verifying` reported).
    Verify,
    /// The final report is queued; the job ends when it is delivered.
    Done,
}

/// Names one attempt of one plan.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct JobKey {
    pub plan_id: String,
    pub attempt: u32,
}

/// The assignment the device works on, and how far it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub plan_id: String,
    pub attempt: u32,
    pub action: JobAction,
    pub artifact_ref: String,
    /// For an install the plan's digest; for a revert the digest to go back to.
    pub target_digest: String,
    pub previous_digest: Option<String>,
    pub reboot_required: bool,
    pub deadline_at: Option<String>,
    pub phase: Phase,
    /// The last `seq` given to a report of this attempt (0: none yet).
    pub last_seq: u64,
    /// The boot id sent with `installing` (what a reboot must change).
    pub boot_id_at_install: Option<String>,
}

impl Job {
    fn from_view(a: &AssignmentView, action: JobAction) -> Job {
        Job {
            plan_id: a.plan_id.clone(),
            attempt: a.attempt,
            action,
            artifact_ref: a.artifact_ref.clone(),
            target_digest: a.target_digest.clone(),
            previous_digest: a.previous_digest.clone(),
            reboot_required: a.reboot_required,
            deadline_at: a.deadline_at.clone(),
            phase: Phase::Download,
            last_seq: 0,
            boot_id_at_install: None,
        }
    }

    pub fn key(&self) -> JobKey {
        JobKey {
            plan_id: self.plan_id.clone(),
            attempt: self.attempt,
        }
    }

    fn is(&self, key: &JobKey) -> bool {
        self.plan_id == key.plan_id && self.attempt == key.attempt
    }
}

/// Everything the agent must remember across a crash or a reboot: write it (atomically)
/// whenever an event returns [`Persist::Write`], before acting on [`Machine::next`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    /// [`STATE_VERSION`].
    pub version: u32,
    pub device_id: String,
    /// The boot id of the current boot (set at every start by [`Machine::resume`] and by
    /// [`Machine::on_boot`]).
    pub boot_id: String,
    /// The last revision a poll answered (the long poll waits until the CP's passes it).
    pub known_revision: u64,
    /// What the device runs, as the last successful `verify` printed it; empty when unknown.
    pub installed_digest: String,
    /// What the last poll asked for before the next one, when it brought nothing to do.
    pub poll_after_seconds: u32,
    pub job: Option<Job>,
    /// The report numbered and not yet delivered; sent (again) before anything else.
    pub outbox: Option<ReportRequest>,
    /// The last job that ended or was dropped: a poll offering it again is ignored.
    pub last_job: Option<JobKey>,
}

impl AgentState {
    /// A device that has done nothing yet.
    pub fn new(device_id: impl Into<String>, boot_id: impl Into<String>) -> AgentState {
        AgentState {
            version: STATE_VERSION,
            device_id: device_id.into(),
            boot_id: boot_id.into(),
            known_revision: 0,
            installed_digest: String::new(),
            poll_after_seconds: 0,
            job: None,
            outbox: None,
            last_job: None,
        }
    }

    /// The state as pretty JSON (what `state.json` holds).
    pub fn to_json(&self) -> Vec<u8> {
        // Plain structs with string keys: serialising cannot fail.
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Reads a state written by [`AgentState::to_json`].
    pub fn from_json(bytes: &[u8]) -> Result<AgentState, StateError> {
        let state: AgentState =
            serde_json::from_slice(bytes).map_err(|e| StateError::Invalid(e.to_string()))?;
        if state.version != STATE_VERSION {
            return Err(StateError::Version(state.version));
        }
        if let (Some(job), Some(r)) = (&state.job, &state.outbox) {
            if r.plan_id != job.plan_id || r.attempt != job.attempt || r.seq > job.last_seq {
                return Err(StateError::Invalid(
                    "the report in flight does not belong to the job".into(),
                ));
            }
        }
        Ok(state)
    }
}

/// A state file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("the agent state is not valid: {0}")]
    Invalid(String),
    #[error("the agent state has version {0}; this agent reads version {STATE_VERSION}")]
    Version(u32),
}

/// Whether an event changed what must survive a crash.
#[must_use = "a state that changed must be persisted before the next action"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// Write [`Machine::state`] durably before acting on [`Machine::next`].
    Write,
    /// Nothing to write.
    Nothing,
}

impl Persist {
    pub fn needed(self) -> bool {
        self == Persist::Write
    }

    fn or(self, other: Persist) -> Persist {
        if self.needed() || other.needed() {
            Persist::Write
        } else {
            Persist::Nothing
        }
    }
}

/// One run of the hook: its step and what it is told (see [`HookRun::env`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRun {
    pub step: HookStep,
    pub action: JobAction,
    pub plan_id: String,
    pub attempt: u32,
    pub artifact_ref: String,
    pub target_digest: String,
}

impl HookRun {
    /// The hook's environment: `AUTONOMY_STEP`, `AUTONOMY_ACTION`, `AUTONOMY_ARTIFACT_REF`,
    /// `AUTONOMY_TARGET_DIGEST`, `AUTONOMY_PLAN_ID`.
    pub fn env(&self) -> [(&'static str, String); 5] {
        [
            ("AUTONOMY_STEP", self.step.as_str().to_string()),
            ("AUTONOMY_ACTION", self.action.as_str().to_string()),
            ("AUTONOMY_ARTIFACT_REF", self.artifact_ref.clone()),
            ("AUTONOMY_TARGET_DIGEST", self.target_digest.clone()),
            ("AUTONOMY_PLAN_ID", self.plan_id.clone()),
        ]
    }
}

/// How a hook run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookExit {
    /// It exited with this code (0: success; 75 from `install`: reboot needed).
    Code(i32),
    /// A signal ended it.
    Signal(i32),
    /// It ran past the timeout; its process group was killed.
    TimedOut { seconds: u64 },
    /// It could not be started (the reason).
    NotStarted(String),
}

/// A finished hook run: how it ended, the last non-empty line of its stdout (what `verify`
/// prints: the installed digest) and the tail of its stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookOutcome {
    pub exit: HookExit,
    pub stdout_last_line: String,
    pub stderr_tail: String,
}

impl HookOutcome {
    /// Exit 0 with this last stdout line.
    pub fn ok(stdout_last_line: impl Into<String>) -> HookOutcome {
        HookOutcome {
            exit: HookExit::Code(0),
            stdout_last_line: stdout_last_line.into(),
            stderr_tail: String::new(),
        }
    }

    /// Exit `code` with this stderr tail.
    pub fn code(code: i32, stderr_tail: impl Into<String>) -> HookOutcome {
        HookOutcome {
            exit: HookExit::Code(code),
            stdout_last_line: String::new(),
            stderr_tail: stderr_tail.into(),
        }
    }
}

/// Why the CP refused a report (409; the error message starts with the code). Each drops the
/// job and the agent polls again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The attempt is older than the CP's (a retry or a revert replaced it).
    #[error("superseded: {0}")]
    Superseded(String),
    /// The attempt is newer than the CP's (the CP lost it, e.g. restored from a backup).
    #[error("unknown_attempt: {0}")]
    UnknownAttempt(String),
    /// The assignment cannot move there (e.g. the CP timed the device out, or this state
    /// dir's steps are behind the CP's): going on would only be refused again, so the job is
    /// dropped and the next poll says what the CP wants now.
    #[error("illegal_transition: {0}")]
    IllegalTransition(String),
    /// The device has no assignment in that plan.
    #[error("not_assigned: {0}")]
    NotAssigned(String),
    /// Any other conflict: retrying the same report could only be refused again.
    #[error("{0}")]
    Conflict(String),
}

impl Refusal {
    /// Classifies a 409's error message by its leading code (`superseded: …`).
    pub fn from_message(message: &str) -> Refusal {
        let (code, rest) = match message.split_once(':') {
            Some((code, rest)) => (code.trim(), rest.trim().to_string()),
            None => ("", message.to_string()),
        };
        match code {
            "superseded" => Refusal::Superseded(rest),
            "unknown_attempt" => Refusal::UnknownAttempt(rest),
            "illegal_transition" => Refusal::IllegalTransition(rest),
            "not_assigned" => Refusal::NotAssigned(rest),
            _ => Refusal::Conflict(message.to_string()),
        }
    }

    /// The code (`superseded`, …; `conflict` for any other).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Superseded(_) => "superseded",
            Refusal::UnknownAttempt(_) => "unknown_attempt",
            Refusal::IllegalTransition(_) => "illegal_transition",
            Refusal::NotAssigned(_) => "not_assigned",
            Refusal::Conflict(_) => "conflict",
        }
    }
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Nothing to do: wait `after_seconds` (what the last poll asked for; 0 right after a
    /// job or at start), then long-poll with [`Machine::poll_request`] and give the answer to
    /// [`Machine::on_poll`].
    Poll {
        known_revision: u64,
        after_seconds: u32,
    },
    /// Send this report (already numbered and persisted) until the CP answers; give the
    /// answer, or its 409, to [`Machine::on_report`].
    Report(ReportRequest),
    /// Run the hook step; give the outcome to [`Machine::on_hook`].
    RunHook(HookRun),
    /// `install` asked for a reboot and the boot id has not changed: exit with
    /// [`REBOOT_EXIT_CODE`] so the supervisor reboots (the simulator calls
    /// [`Machine::on_boot`] with a new boot id instead).
    ExitForReboot,
}

/// The agent state machine over an [`AgentState`].
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    state: AgentState,
}

impl Machine {
    /// A fresh device in boot `boot_id`.
    pub fn new(device_id: impl Into<String>, boot_id: impl Into<String>) -> Machine {
        Machine {
            state: AgentState::new(device_id, boot_id),
        }
    }

    /// A device that starts again from its persisted `state`, now in boot `boot_id` (a
    /// reboot, or the same boot after a crash). Persist what it says before acting.
    pub fn resume(state: AgentState, boot_id: &str) -> (Machine, Persist) {
        let mut m = Machine { state };
        let persist = m.on_boot(boot_id);
        (m, persist)
    }

    pub fn state(&self) -> &AgentState {
        &self.state
    }

    pub fn into_state(self) -> AgentState {
        self.state
    }

    /// What to do now. Pure: calling it twice gives the same answer.
    pub fn next(&self) -> Next {
        if let Some(report) = &self.state.outbox {
            return Next::Report(report.clone());
        }
        let Some(job) = &self.state.job else {
            return Next::Poll {
                known_revision: self.state.known_revision,
                after_seconds: self.state.poll_after_seconds,
            };
        };
        let run = |step| {
            Next::RunHook(HookRun {
                step,
                action: job.action,
                plan_id: job.plan_id.clone(),
                attempt: job.attempt,
                artifact_ref: job.artifact_ref.clone(),
                target_digest: job.target_digest.clone(),
            })
        };
        match job.phase {
            Phase::Download => run(HookStep::Download),
            Phase::Install => run(HookStep::Install),
            Phase::Verify => run(HookStep::Verify),
            // The boot id did not change (else `settle` had moved on to `verify`).
            Phase::AwaitReboot => Next::ExitForReboot,
            // The final report was delivered (else the outbox had it): `on_report` ends the
            // job, so this is not reached; poll, to be safe.
            Phase::Done => Next::Poll {
                known_revision: self.state.known_revision,
                after_seconds: 0,
            },
        }
    }

    /// The poll to send: the known revision, the installed digest and boot id, and the wait
    /// (at most [`autonomy_api::device::MAX_POLL_WAIT_SECONDS`]).
    pub fn poll_request(&self, wait_seconds: u32) -> PollRequest {
        PollRequest {
            installed_digest: self.state.installed_digest.clone(),
            boot_id: self.state.boot_id.clone(),
            known_revision: self.state.known_revision,
            wait_seconds: wait_seconds.min(autonomy_api::device::MAX_POLL_WAIT_SECONDS),
            conditions: Default::default(),
        }
    }

    /// A poll's answer. An `install` or `revert` assignment that is not the current or the
    /// last job starts a job (replacing the current one: the CP no longer wants it); `cancel`
    /// drops the job; the job that ended last, offered again, is ignored.
    pub fn on_poll(&mut self, answer: &PollResponse) -> Persist {
        let s = &mut self.state;
        let mut persist = Persist::Nothing;
        if answer.revision != s.known_revision {
            s.known_revision = answer.revision;
            persist = Persist::Write;
        }
        let after = answer.poll_after_seconds;
        let Some(a) = &answer.assignment else {
            // Nothing assigned. A job in progress is left alone: its next report says
            // whether the CP still wants it.
            s.poll_after_seconds = after;
            return persist;
        };
        let key = JobKey {
            plan_id: a.plan_id.clone(),
            attempt: a.attempt,
        };
        let action = match a.action {
            AssignmentAction::Install => JobAction::Install,
            AssignmentAction::Revert => JobAction::Revert,
            AssignmentAction::Cancel => {
                s.poll_after_seconds = after;
                if s.job.as_ref().is_some_and(|j| j.plan_id == a.plan_id) {
                    self.end_job();
                    return Persist::Write;
                }
                return persist;
            }
        };
        if s.job.as_ref().is_some_and(|j| j.is(&key)) || s.last_job.as_ref() == Some(&key) {
            s.poll_after_seconds = after;
            return persist;
        }
        s.job = Some(Job::from_view(a, action));
        s.outbox = None;
        s.poll_after_seconds = 0;
        self.queue(ReportState::Downloading, String::new());
        Persist::Write
    }

    /// The CP's answer to the report in flight: delivered (`applied` or `duplicate` — a
    /// repeated `seq` changes nothing, so it was delivered before), or refused (the job is
    /// dropped).
    pub fn on_report(&mut self, answer: Result<ReportResponse, Refusal>) -> Persist {
        if self.state.outbox.is_none() {
            return Persist::Nothing;
        }
        self.state.outbox = None;
        match answer {
            Ok(_) => {
                if self
                    .state
                    .job
                    .as_ref()
                    .is_some_and(|j| j.phase == Phase::Done)
                {
                    self.end_job();
                }
            }
            // Every refusal drops the job: superseded and unknown_attempt because the CP
            // works on another attempt; illegal_transition because the CP's record of this
            // attempt went where this report cannot follow (timed out, cancelled, or a state
            // dir behind the CP), so every later report would be refused as well;
            // not_assigned and other conflicts likewise. The next poll says what is wanted.
            Err(_) => self.end_job(),
        }
        let _ = self.settle();
        Persist::Write
    }

    /// A hook step finished. A stale outcome (not the step the job is at) is ignored.
    pub fn on_hook(&mut self, step: HookStep, outcome: &HookOutcome) -> Persist {
        let Some(job) = self.state.job.as_mut() else {
            return Persist::Nothing;
        };
        let expected = match job.phase {
            Phase::Download => HookStep::Download,
            Phase::Install => HookStep::Install,
            Phase::Verify => HookStep::Verify,
            Phase::AwaitReboot | Phase::Done => return Persist::Nothing,
        };
        if step != expected || self.state.outbox.is_some() {
            return Persist::Nothing;
        }
        let action = job.action;
        let reboot = step == HookStep::Install && outcome.exit == HookExit::Code(REBOOT_EXIT_CODE);
        let ok = outcome.exit == HookExit::Code(0);
        match step {
            _ if !ok && !reboot => {
                job.phase = Phase::Done;
                self.queue(action.failure(), failure_message(step, outcome));
            }
            HookStep::Download => {
                job.phase = Phase::Install;
                job.boot_id_at_install = Some(self.state.boot_id.clone());
                self.queue(ReportState::Installing, String::new());
            }
            HookStep::Install if reboot => {
                job.phase = Phase::AwaitReboot;
                self.queue(ReportState::Rebooting, String::new());
            }
            HookStep::Install => {
                job.phase = Phase::Verify;
                self.queue(ReportState::Verifying, String::new());
            }
            HookStep::Verify => {
                let digest = outcome.stdout_last_line.trim().to_string();
                job.phase = Phase::Done;
                if digest.is_empty() {
                    let mut missing = outcome.clone();
                    missing.stderr_tail = format!(
                        "verify printed no digest on its last stdout line{}{}",
                        if outcome.stderr_tail.trim().is_empty() {
                            ""
                        } else {
                            "; stderr: "
                        },
                        outcome.stderr_tail.trim()
                    );
                    self.queue(action.failure(), cut_tail(&missing.stderr_tail));
                } else {
                    self.state.installed_digest = digest;
                    self.queue(action.success(), String::new());
                }
            }
        }
        Persist::Write
    }

    /// The device is in boot `boot_id` (at every start, and in the simulator after a
    /// simulated reboot). A job waiting for a reboot moves on to `verify` once it differs
    /// from the boot id at install.
    pub fn on_boot(&mut self, boot_id: &str) -> Persist {
        let mut persist = Persist::Nothing;
        if self.state.boot_id != boot_id {
            self.state.boot_id = boot_id.to_string();
            persist = Persist::Write;
        }
        persist.or(self.settle())
    }

    /// Numbers a report of the current job, with the current digest and boot id, and puts it
    /// in the outbox.
    fn queue(&mut self, state: ReportState, message: String) {
        let s = &mut self.state;
        let Some(job) = s.job.as_mut() else { return };
        job.last_seq += 1;
        s.outbox = Some(ReportRequest {
            plan_id: job.plan_id.clone(),
            attempt: job.attempt,
            seq: job.last_seq,
            state,
            installed_digest: s.installed_digest.clone(),
            boot_id: s.boot_id.clone(),
            message,
        });
    }

    /// Ends the current job (and forgets its report in flight), remembering its key.
    fn end_job(&mut self) {
        if let Some(job) = self.state.job.take() {
            self.state.last_job = Some(job.key());
        }
        self.state.outbox = None;
        self.state.poll_after_seconds = 0;
    }

    /// After the `rebooting` report was delivered, a new boot moves the job to `verify`.
    fn settle(&mut self) -> Persist {
        if self.state.outbox.is_some() {
            return Persist::Nothing;
        }
        let boot = self.state.boot_id.clone();
        let Some(job) = self.state.job.as_mut() else {
            return Persist::Nothing;
        };
        let rebooted = job.phase == Phase::AwaitReboot
            && !boot.is_empty()
            && job.boot_id_at_install.as_deref() != Some(boot.as_str());
        if !rebooted {
            return Persist::Nothing;
        }
        job.phase = Phase::Verify;
        self.queue(ReportState::Verifying, String::new());
        Persist::Write
    }
}

/// The message of a failed step: how the hook ended, then the tail of its stderr, at most
/// [`MAX_REPORT_MESSAGE_CHARS`] characters (the end of stderr is kept: that is where the
/// error usually is).
pub fn failure_message(step: HookStep, outcome: &HookOutcome) -> String {
    let how = match &outcome.exit {
        HookExit::Code(c) => format!("{step} hook exited with code {c}"),
        HookExit::Signal(s) => format!("{step} hook was killed by signal {s}"),
        HookExit::TimedOut { seconds } => {
            format!("{step} hook timed out after {seconds}s (its process group was killed)")
        }
        HookExit::NotStarted(why) => format!("{step} hook could not be started: {why}"),
    };
    let tail = outcome.stderr_tail.trim();
    if tail.is_empty() {
        return cut_tail(&how);
    }
    let head = format!("{how}: ");
    let room = MAX_REPORT_MESSAGE_CHARS.saturating_sub(head.chars().count());
    format!("{head}{}", keep_last_chars(tail, room))
}

fn cut_tail(s: &str) -> String {
    keep_last_chars(s, MAX_REPORT_MESSAGE_CHARS)
}

/// The last `n` characters of `s`, starting with `…` when cut.
fn keep_last_chars(s: &str, n: usize) -> String {
    let count = s.chars().count();
    if count <= n {
        return s.to_string();
    }
    let keep = n.saturating_sub(1);
    let tail: String = s.chars().skip(count - keep).collect();
    format!("…{tail}")
}

#[cfg(test)]
mod tests;

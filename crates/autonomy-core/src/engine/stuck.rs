//! Why an engine-driven plan is stuck (SPEC §8.6): which reason codes apply, in precedence
//! order, with their device counts and samples, a human diagnosis built from them and the CLI
//! lines an operator runs next.
//!
//! [`engine_stuck`] is pure: the store gathers [`StuckFacts`] for one plan (its phase, gate,
//! pause, current stage and the device samples behind each reason, already measured against
//! the scan's threshold and the plan's `silent_after_seconds`) and the scan turns the answer
//! into a `StuckItem`. Record-only plans keep [`crate::diagnose_stuck`] (code `no_progress`).
//!
//! When a code applies:
//! - `promoter_not_running`: the plan is `active` and no promoter runs, so nothing can move —
//!   at once, whatever the threshold.
//! - `awaiting_start` / `awaiting_approval`: the plan is `published` and has waited at gate 0 /
//!   gate K > 0 for at least the threshold (a published plan without a recorded gate waits at
//!   the start gate since its phase changed). A shorter wait is the gate doing its job.
//! - `failure_threshold_reached` / `stage_threshold_unreachable`: the engine paused the plan
//!   for that reason — at once: nothing moves until an operator acts. They carry the failing
//!   sample.
//! - the device codes: their sample is not empty.
//! - `outside_window` and `devices_not_ready` (SPEC §8.7): the plan is `active`, made no
//!   progress for the threshold, and has undispatched devices while no window is open / has
//!   `waiting_ready` devices. `budget_exhausted`: a disruption-budget group is full and every
//!   device in flight in it is silent or not converging (measured like those codes).
//!
//! Operator-paused plans are never stuck, nor are draft, completed, failed or aborted ones. A
//! `rolled_back` plan is stuck only by reverts that do not converge.

use std::collections::BTreeMap;

use autonomy_api::{
    timefmt, EngineReason, PausedBy, Phase, StuckCode, StuckItem, StuckReason, StuckReport,
    StuckStage, Window,
};

use crate::is_hidden_char;

/// The most device ids a reason carries (SPEC §8.6).
pub const MAX_REASON_DEVICES: usize = 10;

/// A sample of devices behind one reason: how many, and up to 10 ids (the store caps them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceSample {
    pub count: u64,
    pub devices: Vec<String>,
}

impl DeviceSample {
    /// `count` devices, of which `devices` are shown.
    pub fn new(count: u64, devices: &[&str]) -> Self {
        DeviceSample {
            count,
            devices: devices.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.count == 0 && self.devices.is_empty()
    }

    /// The count (never less than the ids shown) and at most [`MAX_REASON_DEVICES`] ids.
    fn reason(&self, code: StuckCode) -> StuckReason {
        StuckReason {
            unmet: BTreeMap::new(),
            by_condition: BTreeMap::new(),
            next_window_at: None,
            code,
            count: self.count.max(self.devices.len() as u64),
            devices: self
                .devices
                .iter()
                .take(MAX_REASON_DEVICES)
                .cloned()
                .collect(),
        }
    }
}

/// The `waiting_ready` devices of a plan: a sample, the first unmet condition of each device
/// shown, and how many devices each condition holds back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotReady {
    pub sample: DeviceSample,
    pub unmet: BTreeMap<String, String>,
    pub by_condition: BTreeMap<String, u64>,
}

/// What the store knows about one engine-driven plan at scan time.
#[derive(Debug, Clone, PartialEq)]
pub struct StuckFacts<'a> {
    pub id: &'a str,
    pub phase: Phase,
    pub promoter_running: bool,
    /// The gate the plan waits at (stage index, since µs), when published.
    pub gate: Option<(u32, i64)>,
    pub paused_by: Option<PausedBy>,
    pub reason: Option<EngineReason>,
    /// The current stage, as the answer shows it.
    pub stage: Option<StuckStage>,
    /// Failures (failed, timed_out, rolled_back) not accepted by a resume.
    pub failing: DeviceSample,
    /// In flight and no poll for silent_after_seconds.
    pub silent: DeviceSample,
    /// Polling but no state change for the threshold (incl. success without a reboot).
    pub non_converging: DeviceSample,
    pub drifted: DeviceSample,
    /// Reverting with no state change for the threshold.
    pub reverts_stuck: DeviceSample,
    pub phase_changed_us: i64,
    pub last_progress_us: i64,
    pub now_us: i64,
    pub threshold_us: i64,
    pub silent_after_seconds: u64,
    /// `waiting_ready` devices ([`super::gates::gate_stuck`]).
    pub not_ready: NotReady,
    /// In flight and stuck in a full disruption-budget group ([`super::gates::gate_stuck`]).
    pub budget_stuck: DeviceSample,
    /// Undispatched (`pending`, `waiting_ready`) devices of the started stages.
    pub undispatched: u64,
    /// `policy.windows`.
    pub windows: &'a [Window],
}

/// Why a plan is stuck: the main code, every reason, the diagnosis and the actions.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineStuck {
    /// The first of `reasons`.
    pub code: StuckCode,
    /// Every applicable code, in precedence order ([`StuckCode::ALL`]).
    pub reasons: Vec<StuckReason>,
    /// Built from the reasons; never empty.
    pub diagnosis: String,
    /// The main code's lines, then the other reasons' lines not already there.
    pub suggested_actions: Vec<String>,
}

/// Why an engine-driven plan is stuck; `None`: the plan is not stuck.
pub fn engine_stuck(f: &StuckFacts<'_>) -> Option<EngineStuck> {
    let reasons = reasons(f);
    let code = reasons.first()?.code;
    let gate_stage = f.gate.map(|(k, _)| k);
    let first_silent = f.silent.devices.first().map(String::as_str);
    let mut suggested_actions: Vec<String> = Vec::new();
    for r in &reasons {
        let device = match r.code {
            StuckCode::BudgetExhausted => f.budget_stuck.devices.first().map(String::as_str),
            _ => first_silent,
        };
        for line in actions(r.code, f.id, gate_stage, device) {
            if !suggested_actions.contains(&line) {
                suggested_actions.push(line);
            }
        }
    }
    Some(EngineStuck {
        code,
        diagnosis: diagnosis(f, &reasons),
        reasons,
        suggested_actions,
    })
}

/// The applicable reasons, in precedence order.
fn reasons(f: &StuckFacts<'_>) -> Vec<StuckReason> {
    let none = |code| StuckReason {
        unmet: BTreeMap::new(),
        by_condition: BTreeMap::new(),
        next_window_at: None,
        code,
        count: 0,
        devices: Vec::new(),
    };
    let mut out = Vec::new();
    match f.phase {
        Phase::Active => {
            if !f.promoter_running {
                out.push(none(StuckCode::PromoterNotRunning));
            }
        }
        Phase::Published => {
            let (k, since) = f.gate.unwrap_or((0, f.phase_changed_us));
            if f.now_us.saturating_sub(since) >= f.threshold_us {
                out.push(none(if k == 0 {
                    StuckCode::AwaitingStart
                } else {
                    StuckCode::AwaitingApproval
                }));
            }
        }
        Phase::Paused if f.paused_by == Some(PausedBy::Engine) => match f.reason {
            Some(EngineReason::FailureThreshold) => {
                out.push(f.failing.reason(StuckCode::FailureThresholdReached))
            }
            Some(EngineReason::ThresholdUnreachable) => {
                out.push(f.failing.reason(StuckCode::StageThresholdUnreachable))
            }
            None => {}
        },
        Phase::RolledBack => {
            // Only the reverts are left to converge; the forward rollout is over.
            if !f.reverts_stuck.is_empty() {
                out.push(f.reverts_stuck.reason(StuckCode::RevertNotConverging));
            }
            return out;
        }
        // Operator-paused, draft and settled plans are never stuck.
        _ => return Vec::new(),
    }
    for (code, sample) in [
        (StuckCode::FailingDevices, &f.failing),
        (StuckCode::SilentDevices, &f.silent),
        (StuckCode::NonConvergingDevices, &f.non_converging),
    ] {
        if !sample.is_empty() {
            out.push(sample.reason(code));
        }
    }
    if f.phase == Phase::Active {
        let stalled = f.now_us.saturating_sub(f.last_progress_us) >= f.threshold_us;
        if !f.budget_stuck.is_empty() {
            out.push(f.budget_stuck.reason(StuckCode::BudgetExhausted));
        }
        if stalled && f.undispatched > 0 && !super::gates::in_window(f.windows, f.now_us) {
            let mut r = DeviceSample::new(f.undispatched, &[]).reason(StuckCode::OutsideWindow);
            r.next_window_at =
                super::gates::next_window_start(f.windows, f.now_us).map(timefmt::format_us);
            out.push(r);
        }
        if stalled && !f.not_ready.sample.is_empty() {
            let mut r = f.not_ready.sample.reason(StuckCode::DevicesNotReady);
            r.unmet = f
                .not_ready
                .unmet
                .iter()
                .filter(|(d, _)| r.devices.contains(d))
                .map(|(d, why)| (d.clone(), why.clone()))
                .collect();
            r.by_condition = f.not_ready.by_condition.clone();
            out.push(r);
        }
    }
    for (code, sample) in [
        (StuckCode::DriftedDevices, &f.drifted),
        (StuckCode::RevertNotConverging, &f.reverts_stuck),
    ] {
        if !sample.is_empty() {
            out.push(sample.reason(code));
        }
    }
    out
}

/// One clause per reason, joined with `; `. The failing sample is told once: by the engine
/// pause when there is one, else by `failing_devices`.
fn diagnosis(f: &StuckFacts<'_>, reasons: &[StuckReason]) -> String {
    let paused_by_engine = reasons.iter().any(|r| {
        matches!(
            r.code,
            StuckCode::FailureThresholdReached | StuckCode::StageThresholdUnreachable
        )
    });
    let mut clauses = Vec::new();
    for r in reasons {
        let clause = match r.code {
            StuckCode::PromoterNotRunning => format!(
                "the promoter is not running: nothing dispatches devices or passes stages (last \
                 progress at {}, {} ago)",
                timefmt::format_us(f.last_progress_us),
                elapsed(f.now_us, f.last_progress_us)
            ),
            StuckCode::AwaitingStart | StuckCode::AwaitingApproval => {
                let (k, since) = f.gate.unwrap_or((0, f.phase_changed_us));
                let which = if r.code == StuckCode::AwaitingStart {
                    "start"
                } else {
                    "approval"
                };
                let tail = if k == 0 {
                    ": published but not started"
                } else {
                    ""
                };
                format!(
                    "waiting at the {which} gate before stage {k}{} since {} ({}){tail}",
                    stage_name(f, k),
                    timefmt::format_us(since),
                    elapsed(f.now_us, since)
                )
            }
            StuckCode::FailureThresholdReached => format!(
                "paused by the engine since {} ({}): the failure threshold was reached{}; resume \
                 accepts the current failures, retry re-dispatches the failed devices",
                timefmt::format_us(f.phase_changed_us),
                elapsed(f.now_us, f.phase_changed_us),
                failing_suffix(r)
            ),
            StuckCode::StageThresholdUnreachable => {
                let stage = match &f.stage {
                    Some(s) => format!(
                        "stage {} ({}) can no longer reach its success threshold ({} of {} \
                         required verified, {} in flight, {} failed)",
                        s.index,
                        shown(&s.name),
                        s.verified,
                        s.required,
                        s.in_flight,
                        s.failed
                    ),
                    None => "the current stage can no longer reach its success threshold".into(),
                };
                format!(
                    "paused by the engine since {} ({}): {stage}{}",
                    timefmt::format_us(f.phase_changed_us),
                    elapsed(f.now_us, f.phase_changed_us),
                    failing_suffix(r)
                )
            }
            StuckCode::FailingDevices if paused_by_engine => continue,
            StuckCode::FailingDevices => format!("{} failing{}", devices(r.count), sample(r)),
            StuckCode::SilentDevices => format!(
                "{} silent: no poll for {}s{}",
                devices(r.count),
                f.silent_after_seconds,
                sample(r)
            ),
            StuckCode::NonConvergingDevices => format!(
                "{} not converging: polling but no state change for {}{}",
                devices(r.count),
                seconds(f.threshold_us),
                sample(r)
            ),
            StuckCode::BudgetExhausted => format!(
                "the disruption budget is exhausted: {} in flight fill their group and are \
                 stuck (silent or not converging), so no other device of the group is \
                 dispatched until they settle{}",
                devices(r.count),
                sample(r)
            ),
            StuckCode::OutsideWindow => format!(
                "outside every maintenance window: {} wait to be dispatched; {}",
                devices(r.count),
                match &r.next_window_at {
                    Some(t) => format!("the next window opens at {t}"),
                    None => "no window opens again".to_string(),
                }
            ),
            StuckCode::DevicesNotReady => {
                let by: Vec<String> = r
                    .by_condition
                    .iter()
                    .map(|(c, n)| format!("{c}: {n}"))
                    .collect();
                let why: Vec<String> = r
                    .devices
                    .iter()
                    .map(|d| match r.unmet.get(d) {
                        Some(w) => format!("{}: {}", shown(d), shown(w)),
                        None => shown(d),
                    })
                    .collect();
                let more = r.count.saturating_sub(r.devices.len() as u64);
                format!(
                    "{} not ready (waiting_ready: they do not meet policy.require; by \
                     condition {}){}",
                    devices(r.count),
                    by.join(", "),
                    if why.is_empty() {
                        String::new()
                    } else if more > 0 {
                        format!(" ({} and {more} more)", why.join("; "))
                    } else {
                        format!(" ({})", why.join("; "))
                    }
                )
            }
            StuckCode::DriftedDevices => format!(
                "{} drifted: no longer running the target digest{}",
                devices(r.count),
                sample(r)
            ),
            StuckCode::RevertNotConverging => format!(
                "{} not converging on their revert: reverting with no state change for {}{}",
                devices(r.count),
                seconds(f.threshold_us),
                sample(r)
            ),
            StuckCode::NoProgress => {
                format!("no progress for {}", elapsed(f.now_us, f.last_progress_us))
            }
        };
        clauses.push(clause);
    }
    clauses.join("; ")
}

/// The lines an operator runs for one code (see [`engine_stuck`] for a whole plan). Lines that
/// name a device use a placeholder here (`<device-id>`); [`engine_stuck`] fills in a sampled
/// one. `gate_stage` is the gate the plan waits at (`awaiting_approval`).
pub fn suggested_actions(code: StuckCode, id: &str, gate_stage: Option<u32>) -> Vec<String> {
    actions(code, id, gate_stage, None)
}

fn actions(
    code: StuckCode,
    id: &str,
    gate_stage: Option<u32>,
    device: Option<&str>,
) -> Vec<String> {
    let id = shown(id);
    let strategy = |s: &str| {
        format!(
            "autonomy rollback execute --target rollout_plan --resource {id} --strategy {s} \
             --reason \"<why>\""
        )
    };
    let list = |state: &str| format!("autonomy rollout devices {id} --state {state}");
    let get = format!("autonomy rollout get {id}");
    match code {
        StuckCode::PromoterNotRunning => vec![
            "autonomy health".to_string(),
            "autonomy serve --promoter on".to_string(),
        ],
        StuckCode::AwaitingStart => vec![
            format!("autonomy rollout start {id}"),
            get,
            strategy("abort"),
        ],
        StuckCode::AwaitingApproval => {
            let k = gate_stage.map_or_else(|| "<stage>".to_string(), |k| k.to_string());
            vec![
                format!("autonomy rollout start {id} --stage {k}"),
                get,
                strategy("abort"),
            ]
        }
        StuckCode::FailureThresholdReached => vec![
            list("failed"),
            strategy("retry"),
            format!("autonomy rollout resume {id}"),
            strategy("rollback"),
        ],
        StuckCode::StageThresholdUnreachable => vec![
            list("failed"),
            strategy("retry"),
            strategy("rollback"),
            strategy("abort"),
        ],
        StuckCode::FailingDevices => vec![list("failed"), strategy("retry")],
        StuckCode::SilentDevices => vec![
            list("dispatched"),
            format!(
                "autonomy device get {}",
                device.map_or_else(|| "<device-id>".to_string(), shown)
            ),
            strategy("abort"),
        ],
        StuckCode::NonConvergingDevices => vec![list("verifying"), strategy("retry")],
        StuckCode::BudgetExhausted => vec![
            format!("autonomy rollout devices {id}"),
            format!(
                "autonomy device get {}",
                device.map_or_else(|| "<device-id>".to_string(), shown)
            ),
            strategy("abort"),
        ],
        StuckCode::OutsideWindow => vec![get, strategy("abort")],
        StuckCode::DevicesNotReady => vec![
            list("waiting_ready"),
            "autonomy device get <device-id>".to_string(),
            get,
            strategy("abort"),
        ],
        StuckCode::DriftedDevices => vec![list("drifted"), strategy("retry")],
        StuckCode::RevertNotConverging => vec![list("reverting")],
        // Record-only plans: the lines of `diagnose_stuck` for an active plan.
        StuckCode::NoProgress => crate::diagnose_stuck(&id, Phase::Active, 0, 0, 0).1,
    }
}

/// ` (wave)` when the current stage is stage `k`.
fn stage_name(f: &StuckFacts<'_>, k: u32) -> String {
    match &f.stage {
        Some(s) if s.index == k && !s.name.is_empty() => format!(" ({})", shown(&s.name)),
        _ => String::new(),
    }
}

/// `: 3 devices failing (a, b, c)` after an engine pause, when any device fails.
fn failing_suffix(r: &StuckReason) -> String {
    if r.count == 0 {
        String::new()
    } else {
        format!(" with {} failing{}", devices(r.count), sample(r))
    }
}

fn devices(n: u64) -> String {
    if n == 1 {
        "1 device".to_string()
    } else {
        format!("{n} devices")
    }
}

/// ` (a, b, c)`, or ` (a, b, c and 7 more)`; empty without ids.
fn sample(r: &StuckReason) -> String {
    if r.devices.is_empty() {
        return String::new();
    }
    let ids: Vec<String> = r.devices.iter().map(|d| shown(d)).collect();
    let more = r.count.saturating_sub(r.devices.len() as u64);
    if more > 0 {
        format!(" ({} and {more} more)", ids.join(", "))
    } else {
        format!(" ({})", ids.join(", "))
    }
}

/// `31.0s`: the time from `since` to `now` (never negative).
fn elapsed(now_us: i64, since_us: i64) -> String {
    format!(
        "{:.1}s",
        now_us.saturating_sub(since_us).max(0) as f64 / 1e6
    )
}

/// `300s`, or `0.5s` for a fraction.
fn seconds(us: i64) -> String {
    if us % 1_000_000 == 0 {
        format!("{}s", us / 1_000_000)
    } else {
        format!("{:.1}s", us as f64 / 1e6)
    }
}

/// `s` with hidden characters ([`is_hidden_char`]) escaped, so text shows what is there.
fn shown(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if is_hidden_char(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// A record-only plan that made no progress for the threshold (SPEC §2's stuck rule), as the
/// scan lists it.
pub fn record_only_item(
    id: String,
    phase: Phase,
    changed_us: i64,
    progress_us: i64,
    now_us: i64,
) -> StuckItem {
    let (diagnosis, suggested_actions) =
        crate::diagnose_stuck(&id, phase, changed_us, progress_us, now_us);
    let found = EngineStuck {
        code: StuckCode::NoProgress,
        reasons: Vec::new(),
        diagnosis,
        suggested_actions,
    };
    engine_item(id, phase, changed_us, progress_us, now_us, found, None)
}

/// An engine-driven plan `engine_stuck` found stuck, as the scan lists it.
pub fn engine_item(
    id: String,
    phase: Phase,
    changed_us: i64,
    progress_us: i64,
    now_us: i64,
    found: EngineStuck,
    stage: Option<StuckStage>,
) -> StuckItem {
    StuckItem {
        stale_seconds: ((now_us - progress_us).max(0) as f64 / 1e3).round() / 1e3,
        last_progress_at: timefmt::format_us(progress_us),
        phase_changed_at: timefmt::format_us(changed_us),
        id,
        phase,
        diagnosis: found.diagnosis,
        suggested_actions: found.suggested_actions,
        code: found.code,
        reasons: found.reasons,
        stage,
    }
}

/// The stuck scan's answer from what a store found: `record_only` (at most a page, with
/// their last progress time; `record_only_count` of them in all) and the engine-driven
/// `engine` items. `code` keeps only plans whose main reason it is; `by_code` counts every
/// plan found, whatever the filter; the items are in order of last progress, at most `limit`.
pub fn stuck_report(
    threshold_seconds: f64,
    now_us: i64,
    limit: usize,
    code: Option<StuckCode>,
    record_only: Vec<(i64, StuckItem)>,
    record_only_count: u64,
    engine: Vec<(i64, StuckItem)>,
) -> StuckReport {
    let mut by_code = BTreeMap::new();
    if record_only_count > 0 {
        by_code.insert(StuckCode::NoProgress, record_only_count);
    }
    let wants = |c: StuckCode| code.is_none_or(|w| w == c);
    let (mut stuck_count, mut items) = if wants(StuckCode::NoProgress) {
        (record_only_count, record_only)
    } else {
        (0, Vec::new())
    };
    for (progress, item) in engine {
        *by_code.entry(item.code).or_default() += 1;
        if wants(item.code) {
            stuck_count += 1;
            items.push((progress, item));
        }
    }
    items.sort_by_key(|(progress, _)| *progress);
    items.truncate(limit);
    StuckReport {
        threshold_seconds,
        scanned_at: timefmt::format_us(now_us),
        stuck_count,
        items: items.into_iter().map(|(_, i)| i).collect(),
        by_code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StuckCode::*;

    const S: i64 = 1_000_000;
    const NOW: i64 = 1_800_000_000 * S;
    /// NOW is Friday 2027-01-15 08:00 UTC; this window opens on Saturdays at 03:00 UTC.
    fn sat_window() -> &'static [Window] {
        Box::leak(Box::new([Window {
            days: vec!["sat".into()],
            start: "03:00".into(),
            end: "04:00".into(),
            tz: "UTC".into(),
        }]))
    }

    fn facts(phase: Phase) -> StuckFacts<'static> {
        StuckFacts {
            id: "p-7",
            phase,
            promoter_running: true,
            gate: None,
            paused_by: None,
            reason: None,
            stage: None,
            failing: DeviceSample::default(),
            silent: DeviceSample::default(),
            non_converging: DeviceSample::default(),
            drifted: DeviceSample::default(),
            reverts_stuck: DeviceSample::default(),
            phase_changed_us: NOW - 40 * S,
            last_progress_us: NOW - 40 * S,
            now_us: NOW,
            threshold_us: 30 * S,
            silent_after_seconds: 120,
            not_ready: NotReady::default(),
            budget_stuck: DeviceSample::default(),
            undispatched: 0,
            windows: &[],
        }
    }

    fn stage(index: u32, name: &str) -> Option<StuckStage> {
        Some(StuckStage {
            index,
            name: name.to_string(),
            required: 5,
            verified: 2,
            in_flight: 0,
            failed: 3,
        })
    }

    fn engine_paused(reason: EngineReason) -> StuckFacts<'static> {
        StuckFacts {
            paused_by: Some(PausedBy::Engine),
            reason: Some(reason),
            stage: stage(1, "wave"),
            failing: DeviceSample::new(3, &["amr-1", "amr-2", "amr-3"]),
            ..facts(Phase::Paused)
        }
    }

    fn codes(s: &EngineStuck) -> Vec<StuckCode> {
        s.reasons.iter().map(|r| r.code).collect()
    }

    /// Every code is the main one in a scenario of its own, with exact counts and samples and
    /// a diagnosis that names what is waiting.
    #[test]
    fn every_code_is_primary_in_its_own_scenario() {
        /// Facts, main code, its count and ids, texts the diagnosis must hold.
        type Case = (
            StuckFacts<'static>,
            StuckCode,
            u64,
            Vec<&'static str>,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                StuckFacts {
                    promoter_running: false,
                    ..facts(Phase::Active)
                },
                PromoterNotRunning,
                0,
                vec![],
                vec!["promoter is not running", "40.0s ago"],
            ),
            (
                StuckFacts {
                    gate: Some((0, NOW - 31 * S)),
                    stage: stage(0, "canary"),
                    ..facts(Phase::Published)
                },
                AwaitingStart,
                0,
                vec![],
                vec![
                    "start gate before stage 0 (canary)",
                    "(31.0s)",
                    "not started",
                ],
            ),
            (
                StuckFacts {
                    gate: Some((2, NOW - 31 * S)),
                    stage: stage(2, "wave"),
                    ..facts(Phase::Published)
                },
                AwaitingApproval,
                0,
                vec![],
                vec!["approval gate before stage 2 (wave)", "(31.0s)"],
            ),
            (
                engine_paused(EngineReason::FailureThreshold),
                FailureThresholdReached,
                3,
                vec!["amr-1", "amr-2", "amr-3"],
                vec![
                    "failure threshold was reached",
                    "3 devices failing (amr-1, amr-2, amr-3)",
                    "(40.0s)",
                ],
            ),
            (
                engine_paused(EngineReason::ThresholdUnreachable),
                StageThresholdUnreachable,
                3,
                vec!["amr-1", "amr-2", "amr-3"],
                vec![
                    "stage 1 (wave) can no longer reach its success threshold",
                    "2 of 5 required verified",
                    "3 devices failing (amr-1, amr-2, amr-3)",
                ],
            ),
            (
                StuckFacts {
                    failing: DeviceSample::new(1, &["amr-1"]),
                    ..facts(Phase::Active)
                },
                FailingDevices,
                1,
                vec!["amr-1"],
                vec!["1 device failing (amr-1)"],
            ),
            (
                StuckFacts {
                    silent: DeviceSample::new(2, &["amr-7", "amr-9"]),
                    ..facts(Phase::Active)
                },
                SilentDevices,
                2,
                vec!["amr-7", "amr-9"],
                vec!["2 devices silent: no poll for 120s (amr-7, amr-9)"],
            ),
            (
                StuckFacts {
                    non_converging: DeviceSample::new(1, &["amr-3"]),
                    ..facts(Phase::Active)
                },
                NonConvergingDevices,
                1,
                vec!["amr-3"],
                vec!["1 device not converging: polling but no state change for 30s (amr-3)"],
            ),
            (
                StuckFacts {
                    budget_stuck: DeviceSample::new(1, &["amr-2"]),
                    ..facts(Phase::Active)
                },
                BudgetExhausted,
                1,
                vec!["amr-2"],
                vec![
                    "disruption budget is exhausted: 1 device in flight",
                    "(amr-2)",
                ],
            ),
            (
                StuckFacts {
                    undispatched: 6,
                    windows: sat_window(),
                    ..facts(Phase::Active)
                },
                OutsideWindow,
                6,
                vec![],
                vec![
                    "outside every maintenance window: 6 devices wait",
                    "the next window opens at 2027-01-16T03:00:00",
                ],
            ),
            (
                StuckFacts {
                    not_ready: NotReady {
                        sample: DeviceSample::new(3, &["amr-1", "amr-2"]),
                        unmet: BTreeMap::from([
                            (
                                "amr-1".to_string(),
                                "docked is false (needs true)".to_string(),
                            ),
                            (
                                "amr-2".to_string(),
                                "idle is false (needs true)".to_string(),
                            ),
                        ]),
                        by_condition: BTreeMap::from([
                            ("docked".to_string(), 2),
                            ("idle".to_string(), 1),
                        ]),
                    },
                    ..facts(Phase::Active)
                },
                DevicesNotReady,
                3,
                vec!["amr-1", "amr-2"],
                vec![
                    "3 devices not ready",
                    "docked: 2, idle: 1",
                    "amr-1: docked is false (needs true); amr-2: idle is false (needs true) and \
                     1 more",
                ],
            ),
            (
                StuckFacts {
                    drifted: DeviceSample::new(4, &["amr-4", "amr-5", "amr-6", "amr-8"]),
                    ..facts(Phase::Active)
                },
                DriftedDevices,
                4,
                vec!["amr-4", "amr-5", "amr-6", "amr-8"],
                vec!["4 devices drifted", "(amr-4, amr-5, amr-6, amr-8)"],
            ),
            (
                StuckFacts {
                    reverts_stuck: DeviceSample::new(2, &["amr-1", "amr-2"]),
                    failing: DeviceSample::new(5, &["amr-9"]),
                    ..facts(Phase::RolledBack)
                },
                RevertNotConverging,
                2,
                vec!["amr-1", "amr-2"],
                vec!["2 devices not converging on their revert", "(amr-1, amr-2)"],
            ),
        ];
        let mut seen: Vec<StuckCode> = Vec::new();
        for (f, code, count, ids, texts) in cases {
            let s = engine_stuck(&f).unwrap_or_else(|| panic!("{code}: not stuck"));
            assert_eq!(s.code, code);
            let main = &s.reasons[0];
            assert_eq!((main.code, main.count), (code, count), "{code}");
            assert_eq!(main.devices, ids, "{code}");
            for t in texts {
                assert!(
                    s.diagnosis.contains(t),
                    "{code}: {t:?} not in {:?}",
                    s.diagnosis
                );
            }
            let own = suggested_actions(code, "p-7", f.gate.map(|g| g.0));
            assert!(
                s.suggested_actions.starts_with(&own)
                    || matches!(code, SilentDevices | BudgetExhausted),
                "{code}: {:?}",
                s.suggested_actions
            );
            seen.push(code);
        }
        let engine_codes: Vec<StuckCode> = StuckCode::ALL
            .iter()
            .copied()
            .filter(|&c| c != NoProgress)
            .collect();
        assert_eq!(
            seen, engine_codes,
            "one scenario per engine code, in precedence order"
        );
    }

    /// Every applicable code is listed in the order of `StuckCode::ALL`; the first is the code.
    #[test]
    fn reasons_follow_precedence() {
        let f = StuckFacts {
            gate: Some((2, NOW - 60 * S)),
            failing: DeviceSample::new(3, &["amr-1", "amr-2", "amr-3"]),
            ..facts(Phase::Published)
        };
        let s = engine_stuck(&f).unwrap();
        assert_eq!(s.code, AwaitingApproval);
        assert_eq!(codes(&s), [AwaitingApproval, FailingDevices]);
        assert_eq!((s.reasons[0].count, s.reasons[0].devices.len()), (0, 0));
        assert_eq!(s.reasons[1].count, 3);
        assert!(
            s.diagnosis.contains("approval gate before stage 2"),
            "{}",
            s.diagnosis
        );
        assert!(s
            .diagnosis
            .contains("; 3 devices failing (amr-1, amr-2, amr-3)"));

        let all = StuckFacts {
            promoter_running: false,
            failing: DeviceSample::new(1, &["a"]),
            silent: DeviceSample::new(1, &["b"]),
            non_converging: DeviceSample::new(1, &["c"]),
            drifted: DeviceSample::new(1, &["d"]),
            reverts_stuck: DeviceSample::new(1, &["e"]),
            ..facts(Phase::Active)
        };
        let s = engine_stuck(&all).unwrap();
        assert_eq!(
            codes(&s),
            [
                PromoterNotRunning,
                FailingDevices,
                SilentDevices,
                NonConvergingDevices,
                DriftedDevices,
                RevertNotConverging
            ]
        );
        let mut sorted = codes(&s);
        sorted.sort_by_key(|c| StuckCode::ALL.iter().position(|a| a == c));
        assert_eq!(sorted, codes(&s));
        assert_eq!(s.diagnosis.matches("; ").count(), 5, "{}", s.diagnosis);

        // An engine pause carries the failing sample and also lists failing_devices, but the
        // diagnosis tells the sample once.
        let s = engine_stuck(&StuckFacts {
            silent: DeviceSample::new(1, &["amr-7"]),
            ..engine_paused(EngineReason::FailureThreshold)
        })
        .unwrap();
        assert_eq!(
            codes(&s),
            [FailureThresholdReached, FailingDevices, SilentDevices]
        );
        let mut failing = s.reasons[1].clone();
        failing.code = FailureThresholdReached;
        assert_eq!(s.reasons[0], failing);
        assert_eq!(s.diagnosis.matches("amr-1").count(), 1, "{}", s.diagnosis);
        assert!(s.diagnosis.contains("1 device silent"));
    }

    /// Operator-paused plans, plans with nothing applicable and plans outside the scanned
    /// phases are not stuck.
    #[test]
    fn not_stuck() {
        let failing = DeviceSample::new(2, &["amr-1", "amr-2"]);
        let cases = [
            (
                "operator-paused with failing devices",
                StuckFacts {
                    paused_by: Some(PausedBy::Operator),
                    failing: failing.clone(),
                    silent: failing.clone(),
                    ..facts(Phase::Paused)
                },
            ),
            (
                "paused without paused_by",
                StuckFacts {
                    failing: failing.clone(),
                    ..facts(Phase::Paused)
                },
            ),
            (
                "operator-paused, promoter off",
                StuckFacts {
                    paused_by: Some(PausedBy::Operator),
                    promoter_running: false,
                    ..facts(Phase::Paused)
                },
            ),
            ("active, nothing wrong", facts(Phase::Active)),
            (
                "published, gate below the threshold",
                StuckFacts {
                    gate: Some((1, NOW - 29 * S)),
                    ..facts(Phase::Published)
                },
            ),
            (
                "rolled back, reverts converging",
                StuckFacts {
                    failing: failing.clone(),
                    ..facts(Phase::RolledBack)
                },
            ),
        ];
        for (what, f) in cases {
            assert_eq!(engine_stuck(&f), None, "{what}");
        }
        for phase in [
            Phase::Draft,
            Phase::Completed,
            Phase::Failed,
            Phase::Aborted,
        ] {
            let f = StuckFacts {
                promoter_running: false,
                failing: failing.clone(),
                drifted: failing.clone(),
                reverts_stuck: failing.clone(),
                gate: Some((0, 0)),
                ..facts(phase)
            };
            assert_eq!(engine_stuck(&f), None, "{phase}");
        }
    }

    /// A gate wait below the threshold is the gate doing its job; at the threshold it is
    /// stuck. Other reasons still apply below it.
    #[test]
    fn gate_wait_counts_from_the_threshold() {
        let at = |waited: i64, gate: u32| StuckFacts {
            gate: Some((gate, NOW - waited)),
            ..facts(Phase::Published)
        };
        assert_eq!(engine_stuck(&at(30 * S - 1, 0)), None);
        assert_eq!(engine_stuck(&at(30 * S, 0)).unwrap().code, AwaitingStart);
        assert_eq!(engine_stuck(&at(30 * S - 1, 3)), None);
        assert_eq!(engine_stuck(&at(30 * S, 3)).unwrap().code, AwaitingApproval);
        let s = engine_stuck(&StuckFacts {
            silent: DeviceSample::new(1, &["amr-7"]),
            ..at(S, 3)
        })
        .unwrap();
        assert_eq!(codes(&s), [SilentDevices]);
        // No recorded gate: the start gate, since the phase changed.
        let f = StuckFacts {
            phase_changed_us: NOW - 31 * S,
            ..facts(Phase::Published)
        };
        let s = engine_stuck(&f).unwrap();
        assert_eq!(s.code, AwaitingStart);
        assert!(s.diagnosis.contains("(31.0s)"), "{}", s.diagnosis);
        // The promoter only matters to active plans; a gate needs a human, not the promoter.
        let s = engine_stuck(&StuckFacts {
            promoter_running: false,
            ..at(60 * S, 0)
        })
        .unwrap();
        assert_eq!(codes(&s), [AwaitingStart]);
    }

    /// Counts and sampled ids in the text: more devices than shown are counted, at most 10 ids
    /// go on the wire, and hidden characters are escaped.
    #[test]
    fn diagnosis_names_counts_and_samples() {
        let ids: Vec<String> = (1..=12).map(|i| format!("amr-{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let s = engine_stuck(&StuckFacts {
            failing: DeviceSample::new(25, &refs),
            ..facts(Phase::Active)
        })
        .unwrap();
        assert_eq!(s.reasons[0].count, 25);
        assert_eq!(s.reasons[0].devices, &refs[..10]);
        assert!(
            s.diagnosis
                .contains("25 devices failing (amr-1, amr-2, amr-3, amr-4, amr-5, amr-6, amr-7, amr-8, amr-9, amr-10 and 15 more)"),
            "{}",
            s.diagnosis
        );
        assert!(!s.diagnosis.contains("amr-11"));

        let s = engine_stuck(&StuckFacts {
            silent: DeviceSample::new(1, &["amr\u{202E}x\u{1b}[2J"]),
            stage: stage(0, "can\u{200B}ary"),
            ..facts(Phase::Active)
        })
        .unwrap();
        assert!(
            s.diagnosis.contains("amr\\u{202e}x\\u{1b}[2J"),
            "{}",
            s.diagnosis
        );
        assert!(!s.diagnosis.chars().any(is_hidden_char), "{}", s.diagnosis);
        assert!(s
            .suggested_actions
            .iter()
            .all(|a| !a.chars().any(is_hidden_char)));
        // The wire keeps the id as it is (JSON escapes it).
        assert_eq!(s.reasons[0].devices, ["amr\u{202E}x\u{1b}[2J"]);

        // A count without ids still reads well; fractional thresholds show their fraction.
        let s = engine_stuck(&StuckFacts {
            non_converging: DeviceSample::new(3, &[]),
            threshold_us: S / 2,
            ..facts(Phase::Active)
        })
        .unwrap();
        assert_eq!(
            s.diagnosis,
            "3 devices not converging: polling but no state change for 0.5s"
        );
    }

    /// Each code's lines are ready to run, name the plan, and name the gate's stage.
    #[test]
    fn actions_per_code_name_the_plan_and_the_gate() {
        let retry = "autonomy rollback execute --target rollout_plan --resource p-7 --strategy \
                     retry --reason \"<why>\"";
        let (_, record_only) = crate::diagnose_stuck("p-7", Phase::Active, 0, 0, 0);
        assert!(
            record_only.contains(&retry.to_string()),
            "same shape as diagnose_stuck"
        );
        for &code in StuckCode::ALL {
            let lines = suggested_actions(code, "p-7", Some(3));
            assert!(!lines.is_empty(), "{code}");
            assert!(
                lines.iter().all(|l| l.starts_with("autonomy ")),
                "{code}: {lines:?}"
            );
            if code != PromoterNotRunning {
                assert!(
                    lines.iter().any(|l| l.contains(" p-7")),
                    "{code}: {lines:?}"
                );
            }
            let mut unique = lines.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), lines.len(), "{code}: {lines:?}");
        }
        let first = |code| suggested_actions(code, "p-7", Some(3))[0].clone();
        assert_eq!(first(AwaitingStart), "autonomy rollout start p-7");
        assert_eq!(
            first(AwaitingApproval),
            "autonomy rollout start p-7 --stage 3"
        );
        assert_eq!(first(PromoterNotRunning), "autonomy health");
        assert!(suggested_actions(PromoterNotRunning, "p-7", None)
            .iter()
            .any(|l| l.contains("autonomy serve") && l.contains("--promoter on")));
        for (code, state) in [
            (FailureThresholdReached, "failed"),
            (StageThresholdUnreachable, "failed"),
            (FailingDevices, "failed"),
            (SilentDevices, "dispatched"),
            (NonConvergingDevices, "verifying"),
            (DriftedDevices, "drifted"),
            (RevertNotConverging, "reverting"),
        ] {
            assert_eq!(
                first(code),
                format!("autonomy rollout devices p-7 --state {state}")
            );
        }
        let has = |code, line: &str| {
            suggested_actions(code, "p-7", Some(3))
                .iter()
                .any(|l| l == line)
        };
        for code in [
            FailureThresholdReached,
            StageThresholdUnreachable,
            FailingDevices,
            NonConvergingDevices,
            DriftedDevices,
        ] {
            assert!(has(code, retry), "{code}");
        }
        assert!(has(FailureThresholdReached, "autonomy rollout resume p-7"));
        assert!(has(SilentDevices, "autonomy device get <device-id>"));
        assert!(suggested_actions(StageThresholdUnreachable, "p-7", None)
            .iter()
            .any(|l| l.contains("--strategy abort")));
    }

    /// A plan's actions: the main code's lines first, then the others' new lines, in order.
    #[test]
    fn item_actions_are_merged_in_order_without_repeats() {
        let f = StuckFacts {
            silent: DeviceSample::new(2, &["amr-7", "amr-9"]),
            ..engine_paused(EngineReason::FailureThreshold)
        };
        let s = engine_stuck(&f).unwrap();
        let main = suggested_actions(FailureThresholdReached, "p-7", None);
        assert!(
            s.suggested_actions.starts_with(&main),
            "{:?}",
            s.suggested_actions
        );
        assert_eq!(
            &s.suggested_actions[main.len()..],
            [
                "autonomy rollout devices p-7 --state dispatched",
                "autonomy device get amr-7",
                "autonomy rollback execute --target rollout_plan --resource p-7 --strategy abort \
                 --reason \"<why>\"",
            ]
        );
        let mut seen = s.suggested_actions.clone();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), s.suggested_actions.len());

        let s = engine_stuck(&StuckFacts {
            gate: Some((2, NOW - 60 * S)),
            failing: DeviceSample::new(1, &["amr-1"]),
            ..facts(Phase::Published)
        })
        .unwrap();
        assert_eq!(
            s.suggested_actions[0],
            "autonomy rollout start p-7 --stage 2"
        );
        assert!(s
            .suggested_actions
            .contains(&"autonomy rollout devices p-7 --state failed".to_string()));
    }
}

//! The promoter's decision (SPEC §8.3, §8.4): given what a plan looks like now — its phase,
//! stages, policy, per-stage counters and the devices in flight — which actions move it on.
//!
//! [`decide`] is pure: the promoter loop reads a [`PlanView`] and the [`StageCounters`] in one
//! snapshot, calls it, and applies the returned actions **in order, in one write transaction,
//! only if the plan's `generation` and the leader epoch are still those it read** (so a replay
//! or a concurrent operator verb turns the whole tick into a no-op; the next tick decides
//! again). Within one tick `decide` already accounts for its own earlier actions: devices it
//! times out count as failures, a stage it passes lets the next one start in the same tick.

use std::collections::BTreeMap;

use autonomy_api::{
    DeviceState, EngineReason, FailureThreshold, OnFailure, Phase, Policy, StageState, StageStatus,
};

use super::gates::{self, GateDevice};
use super::stages::{required, StagePlan};

/// One stage as the promoter sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageView {
    pub state: StageState,
    /// Devices assigned to the stage (cancelled ones included; they are subtracted here).
    pub size: u64,
    /// A gate sits before the stage ([`StagePlan::gate`]).
    pub gate: bool,
    pub success_threshold_pct: u32,
    /// The failure threshold while this stage is current.
    pub failure_threshold: FailureThreshold,
}

impl StageView {
    /// The view of an assigned stage in `state`.
    pub fn of(plan: &StagePlan, state: StageState) -> Self {
        StageView {
            state,
            size: plan.devices.len() as u64,
            gate: plan.gate,
            success_threshold_pct: plan.success_threshold_pct,
            failure_threshold: plan.failure_threshold,
        }
    }
}

/// The counters of one stage, kept up to date by device reports in the same transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageCounters {
    /// Assignments per state (a missing state is 0).
    pub counts: BTreeMap<DeviceState, u64>,
    /// Of the `failed` devices, those with automatic retries left (`attempt` ≤
    /// `max_device_retries`): they go back to `pending` instead of counting as failures.
    pub retryable: u64,
    /// Failures of this stage a `resume` accepted: thresholds no longer count them.
    pub accepted: u64,
}

impl StageCounters {
    /// The counters with `n` devices in each given state.
    pub fn with(states: &[(DeviceState, u64)]) -> Self {
        let mut c = StageCounters::default();
        for &(s, n) in states {
            *c.counts.entry(s).or_default() += n;
        }
        c
    }

    pub fn get(&self, state: DeviceState) -> u64 {
        self.counts.get(&state).copied().unwrap_or(0)
    }

    fn sum(&self, pred: impl Fn(DeviceState) -> bool) -> u64 {
        self.counts
            .iter()
            .filter(|(s, _)| pred(**s))
            .map(|(_, n)| n)
            .sum()
    }

    fn shift(&mut self, from: DeviceState, to: DeviceState, n: u64) {
        let have = self.counts.entry(from).or_default();
        let n = n.min(*have);
        *have -= n;
        *self.counts.entry(to).or_default() += n;
    }

    /// Failures not accepted.
    fn failures(&self) -> u64 {
        self.sum(DeviceState::is_failure)
            .saturating_sub(self.accepted)
    }
}

/// A device in flight (`dispatched` … `verifying`), for the time-out check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    pub device_id: String,
    /// Index of its stage.
    pub stage: usize,
    pub state: DeviceState,
    pub dispatched_at_us: i64,
}

/// What `decide` needs of a plan. The caller may pass in `in_flight` only the devices that
/// could be overdue (dispatched before `now - device_timeout`); `decide` checks each again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanView<'a> {
    pub phase: Phase,
    /// `status.rollout.current_stage`.
    pub current_stage: usize,
    pub stages: &'a [StageView],
    pub policy: &'a Policy,
    pub in_flight: &'a [InFlight],
    /// The most devices one tick dispatches (over all stages).
    pub max_dispatch: u64,
    /// Every assignment of the plan in its order, with labels and conditions, when the policy
    /// has a disruption budget or requirements ([`gates::needs_devices`]); else empty.
    pub gate_devices: &'a [GateDevice],
}

/// One thing the promoter does. Each is audited once with actor `system:promoter` (the event
/// named on each variant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// These in-flight devices passed `device_timeout_seconds`: → `timed_out`
    /// (`device.timed_out`, one per device).
    TimeOut { devices: Vec<String> },
    /// `count` failed devices of the stage with retries left go back to `pending` with
    /// `attempt + 1` (`device.retried`).
    RetryDevices { stage: usize, count: u64 },
    /// The stage starts dispatching; `current_stage` = `stage` (`rollout.stage_started`).
    StartStage { stage: usize },
    /// Dispatch the next `count` pending devices of the stage, in its order (one
    /// `rollout.devices_dispatched` event with the ids).
    DispatchDevices { stage: usize, count: u64 },
    /// Dispatch exactly these undispatched (`pending` or `waiting_ready`) devices of the
    /// stage — a plan with a disruption budget or requirements (`rollout.devices_dispatched`).
    DispatchListed { stage: usize, devices: Vec<String> },
    /// `pending` devices that do not meet `policy.require` → `waiting_ready` (with why, the
    /// assignment's message), and `waiting_ready` devices that meet it again but are held by
    /// the budget or the tick's limit → `pending` (one `rollout.devices_waiting` event).
    SetReadiness {
        stage: usize,
        waiting: Vec<(String, String)>,
        ready: Vec<String>,
    },
    /// The stage reached its success threshold (`rollout.stage_passed`); its stragglers keep
    /// going.
    PassStage { stage: usize },
    /// The next stage has a manual gate: phase → `published`, `current_stage` = `stage`,
    /// `gate = {stage, since}` (`rollout.gate_reached` and `rollout.phase_changed`).
    ReachGate { stage: usize, since_us: i64 },
    /// Every stage passed and every assignment settled: phase → `completed`.
    Complete,
    /// `on_failure: pause`: phase → `paused`, `paused_by = engine`, `reason`.
    Pause { reason: EngineReason },
    /// `on_failure: fail`: phase → `failed`.
    Fail { reason: EngineReason },
    /// `on_failure: abort`: phase → `aborted` (unstarted devices cancelled).
    Abort { reason: EngineReason },
}

/// The action `on_failure` calls for.
pub fn on_failure(policy: OnFailure, reason: EngineReason) -> Action {
    match policy {
        OnFailure::Pause => Action::Pause { reason },
        OnFailure::Fail => Action::Fail { reason },
        OnFailure::Abort => Action::Abort { reason },
    }
}

/// True when the failures (accepted ones left out) reach `threshold`: `count` failures, or
/// `percent` of the dispatched devices once `min_settled` devices settled.
pub fn threshold_reached(threshold: FailureThreshold, counters: &[StageCounters]) -> bool {
    let failures: u64 = counters.iter().map(StageCounters::failures).sum();
    if failures == 0 {
        return false;
    }
    match threshold {
        FailureThreshold::Count(n) => failures >= u64::from(n),
        FailureThreshold::Percent {
            percent,
            min_settled,
        } => {
            let verified: u64 = counters.iter().map(|c| c.get(DeviceState::Verified)).sum();
            let in_flight: u64 = counters
                .iter()
                .map(|c| c.sum(DeviceState::is_in_flight))
                .sum();
            let settled = verified + failures;
            let dispatched = settled + in_flight;
            settled >= u64::from(min_settled) && failures * 100 >= u64::from(percent) * dispatched
        }
    }
}

/// The stage's effective population (cancelled and accepted devices left out) and the
/// verified devices it needs.
fn stage_required(view: &StageView, c: &StageCounters) -> (u64, u64) {
    let size = view
        .size
        .saturating_sub(c.get(DeviceState::Cancelled))
        .saturating_sub(c.accepted);
    (size, required(view.success_threshold_pct, size))
}

/// `status.rollout.stages[i]` of an assigned stage: its size, the verified devices it needs
/// now (cancelled and accepted devices left out) and its non-zero counts.
pub fn stage_status(plan: &StagePlan, state: StageState, counters: &StageCounters) -> StageStatus {
    let (_, required) = stage_required(&StageView::of(plan, state), counters);
    StageStatus {
        name: plan.name.clone(),
        size: plan.devices.len() as u64,
        required,
        state,
        counts: counters
            .counts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| (*s, *n))
            .collect(),
    }
}

/// What the promoter does next for one plan at `now_us` (SPEC §8.3/§8.4):
/// - draft and terminal phases: nothing;
/// - `published` (at a gate), `paused`, `failed`: only time-outs of devices in flight (they
///   finish and count; nothing new starts);
/// - `active`: time-outs, automatic retries, then `on_failure` if the failure threshold is
///   reached (nothing else that tick); else the current stage starts (its gate was passed),
///   passes when `verified ≥ required` (the next stage starts, or the plan stops at its gate),
///   or applies `on_failure` (`threshold_unreachable`) when it can no longer pass; pending
///   devices of started stages are dispatched, at most `max_dispatch` a tick, earliest stage
///   first; the plan completes when every stage passed and every assignment settled.
///
/// `counters[i]` belongs to `view.stages[i]`; missing counters count as empty.
pub fn decide(view: &PlanView<'_>, counters: &[StageCounters], now_us: i64) -> Vec<Action> {
    if view.phase == Phase::Draft || view.phase.is_terminal() {
        return Vec::new();
    }
    let n = view.stages.len();
    let mut c: Vec<StageCounters> = (0..n)
        .map(|i| counters.get(i).cloned().unwrap_or_default())
        .collect();
    let mut actions = Vec::new();

    let timeout_us = i64::try_from(view.policy.device_timeout_seconds)
        .unwrap_or(i64::MAX)
        .saturating_mul(1_000_000);
    let mut overdue = Vec::new();
    for d in view.in_flight {
        if d.state.is_in_flight() && now_us.saturating_sub(d.dispatched_at_us) >= timeout_us {
            overdue.push(d.device_id.clone());
            if let Some(sc) = c.get_mut(d.stage) {
                sc.shift(d.state, DeviceState::TimedOut, 1);
            }
        }
    }
    if !overdue.is_empty() {
        actions.push(Action::TimeOut { devices: overdue });
    }
    if view.phase != Phase::Active || view.current_stage >= n {
        return actions;
    }

    for (stage, sc) in c.iter_mut().enumerate() {
        let count = sc.retryable.min(sc.get(DeviceState::Failed));
        if count > 0 {
            sc.shift(DeviceState::Failed, DeviceState::Pending, count);
            actions.push(Action::RetryDevices { stage, count });
        }
        sc.retryable = 0;
    }

    let on_fail = |reason| on_failure(view.policy.on_failure, reason);
    let mut k = view.current_stage;
    if threshold_reached(view.stages[k].failure_threshold, &c) {
        actions.push(on_fail(EngineReason::FailureThreshold));
        return actions;
    }

    let mut state: Vec<StageState> = view.stages.iter().map(|s| s.state).collect();
    let mut entered = false;
    loop {
        match state[k] {
            StageState::Pending => {
                if entered && view.stages[k].gate {
                    actions.push(Action::ReachGate {
                        stage: k,
                        since_us: now_us,
                    });
                    return actions;
                }
                actions.push(Action::StartStage { stage: k });
                state[k] = StageState::Active;
            }
            StageState::Active => {
                let (size, need) = stage_required(&view.stages[k], &c[k]);
                let verified = c[k].get(DeviceState::Verified);
                if verified >= need {
                    actions.push(Action::PassStage { stage: k });
                    state[k] = StageState::Passed;
                    continue;
                }
                if size.saturating_sub(c[k].failures()) < need {
                    actions.push(on_fail(EngineReason::ThresholdUnreachable));
                    return actions;
                }
                break;
            }
            StageState::Passed => {
                if k + 1 < n {
                    k += 1;
                    entered = true;
                    continue;
                }
                break;
            }
        }
    }

    if !gates::in_window(&view.policy.windows, now_us) {
        // Outside every window: nothing new starts (devices in flight finish).
    } else if gates::needs_devices(view.policy) {
        gated_dispatch(view, &state, k, &mut actions);
    } else {
        let mut budget = view.max_dispatch;
        for (stage, sc) in c.iter().enumerate().take(k + 1) {
            let count = sc.get(DeviceState::Pending).min(budget);
            if state[stage] != StageState::Pending && count > 0 {
                actions.push(Action::DispatchDevices { stage, count });
                budget -= count;
            }
        }
    }

    let all_passed = state.iter().all(|s| *s == StageState::Passed);
    let all_settled = c.iter().all(|sc| sc.sum(|s| !s.is_settled()) == 0);
    if all_passed && all_settled {
        actions.push(Action::Complete);
    }
    actions
}

/// Dispatch under a disruption budget and/or requirements: the undispatched devices of the
/// started stages up to `k`, in order; a device that does not meet `require` waits
/// (`waiting_ready`); one that does is dispatched if its group has room and the tick's limit
/// is not reached, else it stays (or goes back to) `pending`.
fn gated_dispatch(view: &PlanView<'_>, state: &[StageState], k: usize, actions: &mut Vec<Action>) {
    let budget = view.policy.disruption_budget.as_ref();
    let mut loads = budget
        .map(|b| gates::group_loads(b, view.gate_devices))
        .unwrap_or_default();
    let mut left = view.max_dispatch;
    for (stage, st) in state.iter().enumerate().take(k + 1) {
        if *st == StageState::Pending {
            continue;
        }
        let (mut dispatch, mut waiting, mut ready) = (Vec::new(), Vec::new(), Vec::new());
        for d in view.gate_devices.iter().filter(|d| d.stage == stage) {
            if !d.state.is_undispatched() {
                continue;
            }
            let unmet = view
                .policy
                .require
                .as_ref()
                .and_then(|r| gates::unmet(r, &d.conditions));
            if let Some((_, why)) = unmet {
                if d.state == DeviceState::Pending {
                    waiting.push((d.device_id.clone(), why));
                }
                continue;
            }
            let room = match budget {
                Some(b) => {
                    let g = loads
                        .entry(gates::group_key(&b.group_by, &d.labels))
                        .or_default();
                    g.in_flight < g.allowed.max(1)
                }
                None => true,
            };
            if room && left > 0 {
                if let Some(b) = budget {
                    if let Some(g) = loads.get_mut(&gates::group_key(&b.group_by, &d.labels)) {
                        g.in_flight += 1;
                    }
                }
                left -= 1;
                dispatch.push(d.device_id.clone());
            } else if d.state == DeviceState::WaitingReady {
                ready.push(d.device_id.clone());
            }
        }
        if !waiting.is_empty() || !ready.is_empty() {
            actions.push(Action::SetReadiness {
                stage,
                waiting,
                ready,
            });
        }
        if !dispatch.is_empty() {
            actions.push(Action::DispatchListed {
                stage,
                devices: dispatch,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeviceState::*;
    use StageState::{Active as SActive, Passed as SPassed, Pending as SPending};

    const NOW: i64 = 10_000_000_000;

    fn st(state: StageState, size: u64, gate: bool) -> StageView {
        StageView {
            state,
            size,
            gate,
            success_threshold_pct: 100,
            failure_threshold: FailureThreshold::Count(1),
        }
    }

    fn cnt(states: &[(DeviceState, u64)]) -> StageCounters {
        StageCounters::with(states)
    }

    fn overdue(stage: usize) -> InFlight {
        InFlight {
            device_id: format!("late-{stage}"),
            stage,
            state: Installing,
            dispatched_at_us: NOW - 3600 * 1_000_000,
        }
    }

    fn recent(stage: usize) -> InFlight {
        InFlight {
            device_id: format!("fresh-{stage}"),
            stage,
            state: Downloading,
            dispatched_at_us: NOW - 3599 * 1_000_000,
        }
    }

    struct Case {
        name: &'static str,
        phase: Phase,
        current: usize,
        stages: Vec<StageView>,
        counters: Vec<StageCounters>,
        in_flight: Vec<InFlight>,
        policy: Policy,
        want: Vec<Action>,
    }

    fn case(name: &'static str, phase: Phase, current: usize) -> Case {
        Case {
            name,
            phase,
            current,
            stages: vec![st(SActive, 4, true), st(SPending, 4, false)],
            counters: vec![cnt(&[(Dispatched, 4)]), cnt(&[(Pending, 4)])],
            in_flight: vec![],
            policy: Policy::default(),
            want: vec![],
        }
    }

    impl Case {
        fn stages(mut self, s: Vec<StageView>) -> Self {
            self.stages = s;
            self
        }
        fn counters(mut self, c: Vec<StageCounters>) -> Self {
            self.counters = c;
            self
        }
        fn in_flight(mut self, f: Vec<InFlight>) -> Self {
            self.in_flight = f;
            self
        }
        fn policy(mut self, f: impl FnOnce(&mut Policy)) -> Self {
            f(&mut self.policy);
            self
        }
        fn want(mut self, w: Vec<Action>) -> Self {
            self.want = w;
            self
        }
    }

    fn timeout(ids: &[&str]) -> Action {
        Action::TimeOut {
            devices: ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn dispatch(stage: usize, count: u64) -> Action {
        Action::DispatchDevices { stage, count }
    }

    /// Every class of (phase, stage state, counters) the promoter meets, written out.
    #[test]
    fn decide_table() {
        use Action::*;
        let cases = vec![
            // --- Phases where nothing moves.
            case("draft: nothing", Phase::Draft, 0).in_flight(vec![overdue(0)]),
            case("completed: nothing", Phase::Completed, 0).in_flight(vec![overdue(0)]),
            case(
                "aborted: nothing, in-flight devices just finish",
                Phase::Aborted,
                0,
            )
            .in_flight(vec![overdue(0)]),
            case("rolled_back: nothing", Phase::RolledBack, 0).in_flight(vec![overdue(0)]),
            case("published at a gate: waits", Phase::Published, 1)
                .stages(vec![st(SPassed, 4, true), st(SPending, 4, true)])
                .counters(vec![cnt(&[(Verified, 4)]), cnt(&[(Pending, 4)])]),
            case("published at the start gate: waits", Phase::Published, 0)
                .stages(vec![st(SPending, 4, true)])
                .counters(vec![cnt(&[(Pending, 4)])]),
            case(
                "published: a straggler still times out",
                Phase::Published,
                1,
            )
            .stages(vec![st(SPassed, 4, true), st(SPending, 4, true)])
            .counters(vec![
                cnt(&[(Verified, 3), (Installing, 1)]),
                cnt(&[(Pending, 4)]),
            ])
            .policy(|p| p.success_threshold_pct = 75)
            .in_flight(vec![overdue(0), recent(0)])
            .want(vec![timeout(&["late-0"])]),
            case(
                "paused: no dispatch, no threshold, only time-outs",
                Phase::Paused,
                0,
            )
            .counters(vec![
                cnt(&[(Failed, 3), (Installing, 1)]),
                cnt(&[(Pending, 4)]),
            ])
            .in_flight(vec![overdue(0)])
            .want(vec![timeout(&["late-0"])]),
            case("failed: only time-outs", Phase::Failed, 0)
                .counters(vec![
                    cnt(&[(Failed, 1), (Pending, 3)]),
                    cnt(&[(Pending, 4)]),
                ])
                .want(vec![]),
            // --- Active: starting and dispatching.
            case(
                "active, start gate just passed: start stage 0 and dispatch",
                Phase::Active,
                0,
            )
            .stages(vec![st(SPending, 4, true), st(SPending, 4, false)])
            .counters(vec![cnt(&[(Pending, 4)]), cnt(&[(Pending, 4)])])
            .want(vec![StartStage { stage: 0 }, dispatch(0, 4)]),
            case(
                "active, manual gate K passed: start stage K",
                Phase::Active,
                1,
            )
            .stages(vec![st(SPassed, 4, true), st(SPending, 4, true)])
            .counters(vec![cnt(&[(Verified, 4)]), cnt(&[(Pending, 4)])])
            .want(vec![StartStage { stage: 1 }, dispatch(1, 4)]),
            case("active, dispatch bounded per tick", Phase::Active, 0)
                .stages(vec![st(SActive, 100, true)])
                .counters(vec![cnt(&[(Pending, 90), (Dispatched, 10)])])
                .want(vec![dispatch(0, 64)]),
            case(
                "active, all in flight, none overdue: nothing",
                Phase::Active,
                0,
            )
            .counters(vec![
                cnt(&[
                    (Dispatched, 1),
                    (Downloading, 1),
                    (Rebooting, 1),
                    (Verifying, 1),
                ]),
                cnt(&[(Pending, 4)]),
            ])
            .in_flight(vec![recent(0)]),
            // --- Passing stages.
            case(
                "active, stage passes, next starts in the same tick",
                Phase::Active,
                0,
            )
            .counters(vec![cnt(&[(Verified, 4)]), cnt(&[(Pending, 4)])])
            .want(vec![
                PassStage { stage: 0 },
                StartStage { stage: 1 },
                dispatch(1, 4),
            ]),
            case(
                "active, stage passes, next has a manual gate: stop there",
                Phase::Active,
                0,
            )
            .stages(vec![st(SActive, 4, true), st(SPending, 4, true)])
            .counters(vec![cnt(&[(Verified, 4)]), cnt(&[(Pending, 4)])])
            .want(vec![
                PassStage { stage: 0 },
                ReachGate {
                    stage: 1,
                    since_us: NOW,
                },
            ]),
            case(
                "active, passes at 50 %: stragglers keep going",
                Phase::Active,
                0,
            )
            .policy(|p| p.failure_threshold = FailureThreshold::Count(5))
            .stages(vec![
                StageView {
                    success_threshold_pct: 50,
                    ..st(SActive, 4, true)
                },
                st(SPending, 4, false),
            ])
            .counters(vec![
                cnt(&[(Verified, 2), (Pending, 1), (Verifying, 1)]),
                cnt(&[(Pending, 4)]),
            ])
            .want(vec![
                PassStage { stage: 0 },
                StartStage { stage: 1 },
                dispatch(0, 1),
                dispatch(1, 4),
            ]),
            case("active, not yet enough verified", Phase::Active, 0).counters(vec![
                cnt(&[(Verified, 3), (Verifying, 1)]),
                cnt(&[(Pending, 4)]),
            ]),
            case(
                "active, empty stages pass through to the next gate",
                Phase::Active,
                0,
            )
            .stages(vec![
                st(SActive, 2, true),
                st(SPending, 0, false),
                st(SPending, 0, false),
                st(SPending, 3, true),
            ])
            .counters(vec![
                cnt(&[(Verified, 2)]),
                cnt(&[]),
                cnt(&[]),
                cnt(&[(Pending, 3)]),
            ])
            .want(vec![
                PassStage { stage: 0 },
                StartStage { stage: 1 },
                PassStage { stage: 1 },
                StartStage { stage: 2 },
                PassStage { stage: 2 },
                ReachGate {
                    stage: 3,
                    since_us: NOW,
                },
            ]),
            case(
                "active, cancelled devices leave the stage's population",
                Phase::Active,
                0,
            )
            .counters(vec![
                cnt(&[(Verified, 3), (Cancelled, 1)]),
                cnt(&[(Pending, 4)]),
            ])
            .want(vec![
                PassStage { stage: 0 },
                StartStage { stage: 1 },
                dispatch(1, 4),
            ]),
            // --- Completing.
            case(
                "active, last stage passes with stragglers in flight: not complete",
                Phase::Active,
                1,
            )
            .stages(vec![
                st(SPassed, 4, true),
                StageView {
                    success_threshold_pct: 50,
                    ..st(SActive, 4, false)
                },
            ])
            .policy(|p| p.failure_threshold = FailureThreshold::Count(5))
            .counters(vec![
                cnt(&[(Verified, 4)]),
                cnt(&[(Verified, 2), (Installing, 2)]),
            ])
            .want(vec![PassStage { stage: 1 }]),
            case(
                "active, every stage passed, stragglers pending: dispatch them",
                Phase::Active,
                1,
            )
            .stages(vec![st(SPassed, 4, true), st(SPassed, 4, false)])
            .counters(vec![
                cnt(&[(Verified, 4)]),
                cnt(&[(Verified, 2), (Pending, 2)]),
            ])
            .want(vec![dispatch(1, 2)]),
            case(
                "active, every stage passed, all settled: complete",
                Phase::Active,
                1,
            )
            .stages(vec![st(SPassed, 4, true), st(SPassed, 4, false)])
            .counters(vec![
                cnt(&[(Verified, 4)]),
                cnt(&[(Verified, 3), (Cancelled, 1)]),
            ])
            .want(vec![Complete]),
            case(
                "active, last stage verifies in this tick, all settled: pass and complete",
                Phase::Active,
                1,
            )
            .stages(vec![st(SPassed, 4, true), st(SActive, 4, false)])
            .counters(vec![cnt(&[(Verified, 4)]), cnt(&[(Verified, 4)])])
            .want(vec![PassStage { stage: 1 }, Complete]),
            // --- Time-outs.
            case(
                "active, an overdue device times out and trips the threshold",
                Phase::Active,
                0,
            )
            .counters(vec![
                cnt(&[(Installing, 1), (Downloading, 1), (Verified, 2)]),
                cnt(&[(Pending, 4)]),
            ])
            .in_flight(vec![overdue(0), recent(0)])
            .want(vec![
                timeout(&["late-0"]),
                Pause {
                    reason: EngineReason::FailureThreshold,
                },
            ]),
            case(
                "active, a time-out under a higher threshold: the stage goes on",
                Phase::Active,
                0,
            )
            .policy(|p| p.failure_threshold = FailureThreshold::Count(2))
            .stages(vec![
                StageView {
                    success_threshold_pct: 50,
                    ..st(SActive, 4, true)
                },
                st(SPending, 4, false),
            ])
            .counters(vec![
                cnt(&[
                    (Installing, 1),
                    (Downloading, 1),
                    (Verified, 1),
                    (Pending, 1),
                ]),
                cnt(&[(Pending, 4)]),
            ])
            .in_flight(vec![overdue(0), recent(0)])
            .want(vec![timeout(&["late-0"]), dispatch(0, 1)]),
            // --- Failures.
            case(
                "active, failure count reached, on_failure pause",
                Phase::Active,
                0,
            )
            .counters(vec![
                cnt(&[(Failed, 1), (Verified, 3)]),
                cnt(&[(Pending, 4)]),
            ])
            .want(vec![Pause {
                reason: EngineReason::FailureThreshold,
            }]),
            case(
                "active, failure count reached, on_failure fail",
                Phase::Active,
                0,
            )
            .policy(|p| p.on_failure = OnFailure::Fail)
            .counters(vec![
                cnt(&[(RolledBack, 1), (Verified, 3)]),
                cnt(&[(Pending, 4)]),
            ])
            .want(vec![Fail {
                reason: EngineReason::FailureThreshold,
            }]),
            case(
                "active, failure count reached, on_failure abort",
                Phase::Active,
                0,
            )
            .policy(|p| p.on_failure = OnFailure::Abort)
            .counters(vec![
                cnt(&[(TimedOut, 1), (Verified, 3)]),
                cnt(&[(Pending, 4)]),
            ])
            .want(vec![Abort {
                reason: EngineReason::FailureThreshold,
            }]),
            case(
                "active, a drifted device in a passed stage counts",
                Phase::Active,
                1,
            )
            .stages(vec![st(SPassed, 4, true), st(SActive, 4, false)])
            .counters(vec![
                cnt(&[(Drifted, 1), (Verified, 3)]),
                cnt(&[(Dispatched, 4)]),
            ])
            .want(vec![Pause {
                reason: EngineReason::FailureThreshold,
            }]),
            case(
                "active, accepted failures no longer count",
                Phase::Active,
                0,
            )
            .stages(vec![
                StageView {
                    success_threshold_pct: 75,
                    ..st(SActive, 4, true)
                },
                st(SPending, 4, false),
            ])
            .counters(vec![
                StageCounters {
                    accepted: 1,
                    ..cnt(&[(Failed, 1), (Verified, 1), (Installing, 2)])
                },
                cnt(&[(Pending, 4)]),
            ]),
            case(
                "active, the current stage's override threshold applies",
                Phase::Active,
                1,
            )
            .stages(vec![
                st(SPassed, 4, true),
                StageView {
                    failure_threshold: FailureThreshold::Count(3),
                    success_threshold_pct: 50,
                    ..st(SActive, 4, false)
                },
            ])
            .counters(vec![
                cnt(&[(Verified, 4)]),
                cnt(&[(Failed, 2), (Verifying, 2)]),
            ]),
            case(
                "active, percent threshold below min_settled: goes on",
                Phase::Active,
                0,
            )
            .policy(|p| {
                p.failure_threshold = FailureThreshold::Percent {
                    percent: 10,
                    min_settled: 5,
                }
            })
            .stages(vec![StageView {
                success_threshold_pct: 50,
                ..st(SActive, 10, true)
            }])
            .counters(vec![cnt(&[(Failed, 1), (Verified, 3), (Installing, 6)])]),
            case(
                "active, percent threshold reached once enough settled",
                Phase::Active,
                0,
            )
            .policy(|p| {
                p.failure_threshold = FailureThreshold::Percent {
                    percent: 10,
                    min_settled: 5,
                }
            })
            .stages(vec![StageView {
                success_threshold_pct: 50,
                ..st(SActive, 10, true)
            }])
            .counters(vec![cnt(&[(Failed, 1), (Verified, 4), (Installing, 5)])])
            .want(vec![Pause {
                reason: EngineReason::FailureThreshold,
            }]),
            case(
                "active, percent threshold not reached: 1 of 11 dispatched is under 10 %",
                Phase::Active,
                0,
            )
            .policy(|p| {
                p.failure_threshold = FailureThreshold::Percent {
                    percent: 10,
                    min_settled: 5,
                }
            })
            .stages(vec![StageView {
                success_threshold_pct: 50,
                ..st(SActive, 12, true)
            }])
            .counters(vec![cnt(&[
                (Failed, 1),
                (Verified, 4),
                (Installing, 6),
                (Pending, 1),
            ])])
            .want(vec![dispatch(0, 1)]),
            case(
                "active, stage can no longer pass: threshold_unreachable",
                Phase::Active,
                0,
            )
            .policy(|p| {
                p.failure_threshold = FailureThreshold::Count(10);
                p.on_failure = OnFailure::Fail;
            })
            .stages(vec![StageView {
                success_threshold_pct: 75,
                ..st(SActive, 4, true)
            }])
            .counters(vec![cnt(&[(Failed, 2), (Verified, 1), (Installing, 1)])])
            .want(vec![Fail {
                reason: EngineReason::ThresholdUnreachable,
            }]),
            case(
                "active, unreachable stage after resume accepted its failures: goes on",
                Phase::Active,
                0,
            )
            .policy(|p| p.failure_threshold = FailureThreshold::Count(10))
            .stages(vec![StageView {
                success_threshold_pct: 75,
                ..st(SActive, 4, true)
            }])
            .counters(vec![StageCounters {
                accepted: 2,
                ..cnt(&[(Failed, 2), (Verified, 1), (Installing, 1)])
            }]),
            case(
                "active, failed devices with retries left go back to pending",
                Phase::Active,
                0,
            )
            .policy(|p| p.max_device_retries = 1)
            .counters(vec![
                StageCounters {
                    retryable: 1,
                    ..cnt(&[(Failed, 1), (Verified, 3)])
                },
                cnt(&[(Pending, 4)]),
            ])
            .want(vec![RetryDevices { stage: 0, count: 1 }, dispatch(0, 1)]),
            // --- Malformed views never panic.
            case(
                "active, current stage out of range: only time-outs",
                Phase::Active,
                5,
            )
            .in_flight(vec![overdue(0)])
            .want(vec![timeout(&["late-0"])]),
            case("active, no stages at all", Phase::Active, 0)
                .stages(vec![])
                .counters(vec![])
                .in_flight(vec![InFlight {
                    stage: 9,
                    ..overdue(0)
                }])
                .want(vec![timeout(&["late-0"])]),
            case("active, missing counters count as empty", Phase::Active, 0)
                .stages(vec![st(SActive, 0, true)])
                .counters(vec![])
                .want(vec![PassStage { stage: 0 }, Complete]),
        ];
        let mut seen_phases = std::collections::BTreeSet::new();
        for mut c in cases {
            seen_phases.insert(c.phase);
            // As in `assign_stages`: the policy's failure threshold is every stage's unless
            // the stage overrides it (the rows override with anything but `st`'s Count(1)).
            for s in &mut c.stages {
                if s.failure_threshold == FailureThreshold::Count(1) {
                    s.failure_threshold = c.policy.failure_threshold;
                }
            }
            let view = PlanView {
                phase: c.phase,
                current_stage: c.current,
                stages: &c.stages,
                policy: &c.policy,
                in_flight: &c.in_flight,
                max_dispatch: 64,
                gate_devices: &[],
            };
            let got = decide(&view, &c.counters, NOW);
            assert_eq!(got, c.want, "{}", c.name);
            // Deciding twice on the same snapshot gives the same answer.
            assert_eq!(decide(&view, &c.counters, NOW), got, "{}", c.name);
        }
        assert_eq!(seen_phases.len(), Phase::ALL.len(), "every phase has a row");
    }

    #[test]
    fn stage_status_reports_required_after_cancellations_and_acceptances() {
        let plan = StagePlan {
            name: "wave".into(),
            devices: (0..10).map(|i| format!("d{i}")).collect(),
            required: 8,
            gate: false,
            success_threshold_pct: 80,
            failure_threshold: FailureThreshold::Count(1),
        };
        let counters = StageCounters {
            accepted: 1,
            ..cnt(&[(Verified, 5), (Cancelled, 4), (Failed, 1), (Pending, 0)])
        };
        let status = stage_status(&plan, SActive, &counters);
        assert_eq!((status.size, status.required), (10, 4));
        assert_eq!(status.counts.len(), 3, "zero counts are left out");
        assert_eq!(
            stage_status(&plan, SPending, &StageCounters::default()).required,
            8
        );
    }

    #[test]
    fn on_failure_maps_every_policy() {
        let r = EngineReason::FailureThreshold;
        assert_eq!(on_failure(OnFailure::Pause, r), Action::Pause { reason: r });
        assert_eq!(on_failure(OnFailure::Fail, r), Action::Fail { reason: r });
        assert_eq!(on_failure(OnFailure::Abort, r), Action::Abort { reason: r });
    }

    #[test]
    fn timeouts_saturate_on_extreme_clocks() {
        let policy = Policy::default();
        let stages = vec![st(SActive, 1, true)];
        let in_flight = vec![InFlight {
            dispatched_at_us: i64::MIN,
            ..recent(0)
        }];
        let view = PlanView {
            phase: Phase::Active,
            current_stage: 0,
            stages: &stages,
            policy: &policy,
            in_flight: &in_flight,
            max_dispatch: 1,
            gate_devices: &[],
        };
        let got = decide(&view, &[cnt(&[(Downloading, 1)])], i64::MAX);
        assert_eq!(got[0], timeout(&["fresh-0"]));
        let got = decide(&view, &[cnt(&[(Downloading, 1)])], i64::MIN);
        assert!(got.is_empty(), "{got:?}");
    }

    fn gdev(
        id: &str,
        stage: usize,
        state: DeviceState,
        site: &str,
        c: serde_json::Value,
    ) -> GateDevice {
        GateDevice {
            device_id: id.into(),
            stage,
            state,
            labels: BTreeMap::from([("site".to_string(), site.to_string())]),
            conditions: serde_json::from_value(c).unwrap(),
        }
    }

    /// Budget, requirements and windows decide which devices a tick dispatches.
    #[test]
    fn gated_dispatch_table() {
        use serde_json::json;
        let policy = |v: serde_json::Value| -> Policy { serde_json::from_value(v).unwrap() };
        let budget = json!({"disruption_budget": {"group_by": ["site"], "max_unavailable": 1}});
        let require = json!({"require": {"docked": true}});
        let stages = vec![st(SActive, 4, true)];
        let run = |p: &Policy, devs: &[GateDevice], max: u64, now: i64| {
            let counters = vec![StageCounters::with(
                &devs.iter().map(|d| (d.state, 1)).collect::<Vec<_>>(),
            )];
            let view = PlanView {
                phase: Phase::Active,
                current_stage: 0,
                stages: &stages,
                policy: p,
                in_flight: &[],
                max_dispatch: max,
                gate_devices: devs,
            };
            decide(&view, &counters, now)
        };
        let listed = |ids: &[&str]| Action::DispatchListed {
            stage: 0,
            devices: ids.iter().map(|s| s.to_string()).collect(),
        };
        // One per site: a1 and b1 go, a2 waits for a1's group.
        let devs = [
            gdev("a1", 0, Pending, "a", json!({})),
            gdev("a2", 0, Pending, "a", json!({})),
            gdev("b1", 0, Pending, "b", json!({})),
        ];
        assert_eq!(
            run(&policy(budget.clone()), &devs, 64, NOW),
            vec![listed(&["a1", "b1"])]
        );
        // A site already at its budget dispatches nothing more.
        let devs = [
            gdev("a1", 0, Installing, "a", json!({})),
            gdev("a2", 0, Pending, "a", json!({})),
            gdev("b1", 0, Verified, "b", json!({})),
            gdev("b2", 0, Pending, "b", json!({})),
        ];
        assert_eq!(
            run(&policy(budget.clone()), &devs, 64, NOW),
            vec![listed(&["b2"])]
        );
        // The tick's limit still holds.
        let devs = [
            gdev("a1", 0, Pending, "a", json!({})),
            gdev("b1", 0, Pending, "b", json!({})),
        ];
        assert_eq!(
            run(&policy(budget.clone()), &devs, 1, NOW),
            vec![listed(&["a1"])]
        );
        // Requirements: an undocked device waits, a docked one goes, a waiting one that is
        // docked now goes.
        let devs = [
            gdev("a1", 0, Pending, "a", json!({"docked": false})),
            gdev("a2", 0, Pending, "a", json!({"docked": true})),
            gdev("a3", 0, WaitingReady, "a", json!({"docked": true})),
            gdev("a4", 0, WaitingReady, "a", json!({})),
        ];
        assert_eq!(
            run(&policy(require.clone()), &devs, 64, NOW),
            vec![
                Action::SetReadiness {
                    stage: 0,
                    waiting: vec![("a1".into(), "docked is false (needs true)".into())],
                    ready: vec![],
                },
                listed(&["a2", "a3"]),
            ]
        );
        // Both: a ready waiting device held by the budget goes back to pending.
        let both = policy(
            json!({"disruption_budget": {"group_by": ["site"], "max_unavailable": 1},
                                 "require": {"docked": true}}),
        );
        let devs = [
            gdev("a1", 0, Installing, "a", json!({"docked": true})),
            gdev("a2", 0, WaitingReady, "a", json!({"docked": true})),
        ];
        assert_eq!(
            run(&both, &devs, 64, NOW),
            vec![Action::SetReadiness {
                stage: 0,
                waiting: vec![],
                ready: vec!["a2".into()],
            }]
        );
        // Outside every window nothing is dispatched (NOW is Thursday 1970-01-01 02:46 UTC).
        let closed = policy(json!({"windows": [{"days": ["mon"], "start": "01:00",
                                                 "end": "02:00", "tz": "UTC"}]}));
        let devs = [gdev("a1", 0, Pending, "a", json!({}))];
        assert_eq!(run(&closed, &devs, 64, NOW), vec![]);
        let open = policy(json!({"windows": [{"days": ["thu"], "start": "02:00",
                                               "end": "03:00", "tz": "UTC"}]}));
        assert_eq!(
            run(&open, &devs, 64, NOW),
            vec![Action::DispatchDevices { stage: 0, count: 1 }]
        );
    }
}

//! The engine's record of one engine-driven plan (SPEC §8.3–§8.5): what a store keeps beside
//! the plan document — the frozen stages, the gate, who paused it — and the rules that change
//! it: operator verbs at gates, `resume` accepting failures, recovery at plan level, and what
//! each promoter [`Action`](super::Action) does to it. Device records are
//! `crate::device::Assignment`s, kept apart; counters are [`StageCounters`], kept by the store
//! in the same transaction as the assignments they count.

use autonomy_api::{
    timefmt, DeviceState, EngineReason, FailureThreshold, Gate, PausedBy, Phase, Policy,
    RolloutStatus, StageState, StageStatus, Strategy, Verb,
};
use serde::{Deserialize, Serialize};

use super::decide::{PlanView, StageCounters, StageView};
use super::spec::EngineSpec;
use super::stages::{assign_stages, required, AssignError, StagePlan, TargetDevice};

/// One stage, frozen when the plan first becomes active.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStage {
    pub name: String,
    /// Devices assigned to the stage.
    pub size: u64,
    /// A gate sits before the stage.
    pub gate: bool,
    pub success_threshold_pct: u32,
    pub failure_threshold: FailureThreshold,
    pub state: StageState,
    /// Failures of this stage a `resume` after an engine pause accepted.
    #[serde(default)]
    pub accepted: u64,
}

/// The engine's state of one plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnginePlan {
    pub target_digest: String,
    pub artifact_ref: String,
    pub policy: Policy,
    /// The targets are frozen and the stages assigned (the plan was active once).
    pub activated: bool,
    pub current_stage: u32,
    /// The gate the plan waits at while `published`.
    pub gate: Option<Gate>,
    pub paused_by: Option<PausedBy>,
    pub reason: Option<EngineReason>,
    /// The leader epoch of the last promoter write.
    pub epoch: u64,
    pub stages: Vec<EngineStage>,
}

/// Why an operator verb does not apply to an engine-driven plan (409).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    #[error(
        "the plan waits at the gate before stage {waiting}, not stage {asked}: a stale approval \
         cannot pass another gate (run `autonomy rollout get` to see where it waits)"
    )]
    WrongStage { waiting: u32, asked: u32 },
    #[error("only `start` takes a stage")]
    StageNotForVerb,
}

impl EnginePlan {
    /// The record of a new engine-driven plan: waiting at its start gate since `now_us`.
    pub fn new(spec: &EngineSpec, artifact_ref: &str, now_us: i64) -> Self {
        EnginePlan {
            target_digest: spec.target_digest.clone(),
            artifact_ref: artifact_ref.to_string(),
            policy: spec.policy.clone(),
            activated: false,
            current_stage: 0,
            gate: Some(Gate {
                stage: 0,
                since: timefmt::format_us(now_us),
            }),
            paused_by: None,
            reason: None,
            epoch: 0,
            stages: Vec::new(),
        }
    }

    /// Freezes the targets: assigns `devices` (the resolved population) to stages. The caller
    /// stores one `pending` assignment per device of each returned stage, in its order.
    pub fn activate(
        &mut self,
        plan_id: &str,
        spec: &EngineSpec,
        devices: &[TargetDevice],
    ) -> Result<Vec<StagePlan>, AssignError> {
        let plans = assign_stages(plan_id, spec, devices)?;
        self.stages = plans
            .iter()
            .map(|p| EngineStage {
                name: p.name.clone(),
                size: p.devices.len() as u64,
                gate: p.gate,
                success_threshold_pct: p.success_threshold_pct,
                failure_threshold: p.failure_threshold,
                state: StageState::Pending,
                accepted: 0,
            })
            .collect();
        self.activated = true;
        self.current_stage = 0;
        Ok(plans)
    }

    /// The stages as [`decide`](super::decide) sees them.
    pub fn views(&self) -> Vec<StageView> {
        self.stages
            .iter()
            .map(|s| StageView {
                state: s.state,
                size: s.size,
                gate: s.gate,
                success_threshold_pct: s.success_threshold_pct,
                failure_threshold: s.failure_threshold,
            })
            .collect()
    }

    /// The plan as `decide` sees it; `counters` get the stages' accepted failures.
    pub fn view<'a>(
        &'a self,
        phase: Phase,
        stages: &'a [StageView],
        in_flight: &'a [super::InFlight],
        max_dispatch: u64,
    ) -> PlanView<'a> {
        PlanView {
            phase,
            current_stage: self.current_stage as usize,
            stages,
            policy: &self.policy,
            in_flight,
            max_dispatch,
            gate_devices: &[],
        }
    }

    /// Stamps each stage's accepted failures into its counters (what `decide` subtracts).
    pub fn with_accepted(&self, mut counters: Vec<StageCounters>) -> Vec<StageCounters> {
        counters.resize(
            self.stages.len().max(counters.len()),
            StageCounters::default(),
        );
        for (c, s) in counters.iter_mut().zip(&self.stages) {
            c.accepted = s.accepted;
        }
        counters
    }

    /// `status.rollout` with the counters of now. The gate shows only while `published`.
    pub fn status(&self, phase: Phase, counters: &[StageCounters]) -> RolloutStatus {
        let empty = StageCounters::default();
        let stages: Vec<StageStatus> = self
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let c = counters.get(i).unwrap_or(&empty);
                let size = s
                    .size
                    .saturating_sub(c.get(DeviceState::Cancelled))
                    .saturating_sub(s.accepted);
                StageStatus {
                    name: s.name.clone(),
                    size: s.size,
                    required: required(s.success_threshold_pct, size),
                    state: s.state,
                    counts: c
                        .counts
                        .iter()
                        .filter(|(_, n)| **n > 0)
                        .map(|(st, n)| (*st, *n))
                        .collect(),
                }
            })
            .collect();
        let drifted = counters.iter().map(|c| c.get(DeviceState::Drifted)).sum();
        RolloutStatus {
            current_stage: self.current_stage,
            gate: if phase == Phase::Published {
                self.gate.clone()
            } else {
                None
            },
            paused_by: if phase == Phase::Paused {
                self.paused_by
            } else {
                None
            },
            reason: self.reason,
            accepted_failures: self.stages.iter().map(|s| s.accepted).sum(),
            drifted,
            epoch: self.epoch,
            stages,
        }
    }

    /// What an operator verb does to the engine record (the phase change itself is
    /// `plan::transition`'s). `start` passes the gate the plan waits at — only that one when
    /// `stage` is given; `pause` is the operator's; `resume` after an engine pause accepts the
    /// current failures so the plan does not pause again at once; `publish` restarts the start
    /// gate's clock.
    pub fn on_verb(
        &mut self,
        verb: Verb,
        stage: Option<u32>,
        counters: &[StageCounters],
        now_us: i64,
    ) -> Result<(), GateError> {
        if stage.is_some() && verb != Verb::Start {
            return Err(GateError::StageNotForVerb);
        }
        match verb {
            Verb::Publish => {
                self.gate = Some(Gate {
                    stage: self.current_stage,
                    since: timefmt::format_us(now_us),
                });
            }
            Verb::Start => {
                let waiting = self.gate.as_ref().map_or(self.current_stage, |g| g.stage);
                if let Some(asked) = stage {
                    if asked != waiting {
                        return Err(GateError::WrongStage { waiting, asked });
                    }
                }
                self.gate = None;
            }
            Verb::Pause => {
                self.paused_by = Some(PausedBy::Operator);
            }
            Verb::Resume => {
                if self.paused_by == Some(PausedBy::Engine) {
                    self.accept_failures(counters);
                }
                self.paused_by = None;
                self.reason = None;
            }
        }
        Ok(())
    }

    /// Every stage's current failures become accepted: thresholds stop counting them.
    pub fn accept_failures(&mut self, counters: &[StageCounters]) {
        for (i, s) in self.stages.iter_mut().enumerate() {
            let failures: u64 = counters.get(i).map_or(0, |c| {
                DeviceState::ALL
                    .iter()
                    .filter(|st| st.is_failure())
                    .map(|st| c.get(*st))
                    .sum()
            });
            s.accepted = failures;
        }
    }

    /// What a recovery strategy does to the engine record: `retry` clears accepted failures
    /// and passes a gate; all three clear an engine pause.
    pub fn on_recovery(&mut self, strategy: Strategy) {
        if strategy == Strategy::Retry {
            for s in &mut self.stages {
                s.accepted = 0;
            }
            self.gate = None;
        }
        self.paused_by = None;
        self.reason = None;
    }

    /// Applies a plan-level promoter action to the record (device-level actions — time-outs,
    /// retries, dispatches — change assignments, which the store applies). Returns the phase
    /// the plan moves to, if it does.
    pub fn apply(&mut self, action: &super::Action, epoch: u64) -> Option<Phase> {
        use super::Action as A;
        self.epoch = epoch;
        match action {
            A::StartStage { stage } => {
                if let Some(s) = self.stages.get_mut(*stage) {
                    s.state = StageState::Active;
                }
                self.current_stage = *stage as u32;
                None
            }
            A::PassStage { stage } => {
                if let Some(s) = self.stages.get_mut(*stage) {
                    s.state = StageState::Passed;
                }
                None
            }
            A::ReachGate { stage, since_us } => {
                self.current_stage = *stage as u32;
                self.gate = Some(Gate {
                    stage: *stage as u32,
                    since: timefmt::format_us(*since_us),
                });
                Some(Phase::Published)
            }
            A::Complete => Some(Phase::Completed),
            A::Pause { reason } => {
                self.paused_by = Some(PausedBy::Engine);
                self.reason = Some(*reason);
                Some(Phase::Paused)
            }
            A::Fail { reason } => {
                self.reason = Some(*reason);
                Some(Phase::Failed)
            }
            A::Abort { reason } => {
                self.reason = Some(*reason);
                Some(Phase::Aborted)
            }
            A::TimeOut { .. }
            | A::RetryDevices { .. }
            | A::DispatchDevices { .. }
            | A::DispatchListed { .. }
            | A::SetReadiness { .. } => None,
        }
    }
}

/// Whether a plan in `phase` holds its devices (a device is in at most one unsettled plan):
/// every phase but the terminal ones. A terminal plan still holds a device whose assignment is
/// unsettled (in flight or reverting), see [`holds_device`].
pub fn holds_devices(phase: Phase) -> bool {
    !phase.is_terminal()
}

/// Whether a plan in `phase` holds a device whose assignment there is in `state`.
pub fn holds_device(phase: Phase, state: DeviceState) -> bool {
    holds_devices(phase) || !state.is_settled()
}

/// The reason (for a pause, failure or abort) and the audit details of a promoter action, as
/// every store records it: `details` from applying the action, plus the stage and its name for
/// stage actions, and the epoch the action was written under (in seq order it never decreases:
/// a fenced leader's stale tick writes nothing; VAL14 checks it).
pub fn action_audit(
    action: &super::Action,
    mut details: serde_json::Value,
    plan: &EnginePlan,
    epoch: u64,
) -> (String, serde_json::Value) {
    use super::Action as A;
    let reason = match action {
        A::Pause { reason } | A::Fail { reason } | A::Abort { reason } => {
            reason.as_str().to_string()
        }
        _ => String::new(),
    };
    match action {
        A::StartStage { stage }
        | A::PassStage { stage }
        | A::DispatchDevices { stage, .. }
        | A::DispatchListed { stage, .. }
        | A::SetReadiness { stage, .. }
        | A::RetryDevices { stage, .. }
        | A::ReachGate { stage, .. } => {
            let name = plan
                .stages
                .get(*stage)
                .map(|s| s.name.clone())
                .unwrap_or_default();
            details["stage"] = serde_json::json!(stage);
            details["stage_name"] = serde_json::json!(name);
        }
        _ => {}
    }
    details["epoch"] = serde_json::json!(epoch);
    (reason, details)
}

/// The audit event name of a promoter action (SPEC §8.3).
pub fn action_event(action: &super::Action) -> autonomy_api::EventType {
    use super::Action as A;
    use autonomy_api::EventType as E;
    match action {
        A::TimeOut { .. } => E::DeviceTimedOut,
        A::RetryDevices { .. } => E::DeviceRetried,
        A::StartStage { .. } => E::RolloutStageStarted,
        A::DispatchDevices { .. } | A::DispatchListed { .. } => E::RolloutDevicesDispatched,
        A::SetReadiness { .. } => E::RolloutDevicesWaiting,
        A::PassStage { .. } => E::RolloutStagePassed,
        A::ReachGate { .. } => E::RolloutGateReached,
        A::Complete | A::Pause { .. } | A::Fail { .. } | A::Abort { .. } => E::RolloutPhaseChanged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{decide, Action};
    use autonomy_api::{Stage, StageSize, Targets};

    const T0: i64 = 1_800_000_000_000_000;

    fn spec() -> EngineSpec {
        let stage = |name: &str, size: Option<StageSize>, manual: bool| Stage {
            name: name.into(),
            size,
            approval: manual.then_some(autonomy_api::Approval::Manual),
            selector: None,
            success_threshold_pct: None,
            failure_threshold: None,
        };
        EngineSpec {
            targets: Targets {
                selector: [("site".to_string(), "b".to_string())].into(),
                devices: vec![],
            },
            stages: vec![
                stage("canary", Some(StageSize::Count(1)), false),
                stage("wave", Some(StageSize::Count(2)), true),
            ],
            policy: Policy::default(),
            target_digest: "sha256:t".into(),
        }
    }

    fn fleet(n: usize) -> Vec<TargetDevice> {
        (0..n)
            .map(|i| TargetDevice {
                id: format!("d{i}"),
                labels: Default::default(),
            })
            .collect()
    }

    #[test]
    fn activation_freezes_stages_with_a_visible_remainder() {
        let mut e = EnginePlan::new(&spec(), "oci://a@sha256:t", T0);
        assert_eq!(e.gate.as_ref().map(|g| g.stage), Some(0));
        let plans = e.activate("p", &spec(), &fleet(5)).unwrap();
        let names: Vec<_> = e.stages.iter().map(|s| (s.name.as_str(), s.size)).collect();
        assert_eq!(names, [("canary", 1), ("wave", 2), ("remainder", 2)]);
        assert_eq!(plans.iter().map(|p| p.devices.len()).sum::<usize>(), 5);
        assert!(e.stages[0].gate && e.stages[1].gate && !e.stages[2].gate);
        assert_eq!(
            e.activate("p", &spec(), &[]).unwrap_err(),
            AssignError::NoDevices
        );
    }

    #[test]
    fn start_passes_only_the_gate_the_plan_waits_at() {
        let mut e = EnginePlan::new(&spec(), "a", T0);
        e.activate("p", &spec(), &fleet(3)).unwrap();
        e.gate = Some(Gate {
            stage: 1,
            since: "t".into(),
        });
        e.current_stage = 1;
        let err = e.on_verb(Verb::Start, Some(2), &[], T0).unwrap_err();
        assert_eq!(
            err,
            GateError::WrongStage {
                waiting: 1,
                asked: 2
            }
        );
        assert!(e.gate.is_some(), "a refused approval changes nothing");
        assert_eq!(
            e.on_verb(Verb::Pause, Some(1), &[], T0).unwrap_err(),
            GateError::StageNotForVerb
        );
        e.on_verb(Verb::Start, Some(1), &[], T0).unwrap();
        assert_eq!(e.gate, None);
    }

    #[test]
    fn resume_after_an_engine_pause_accepts_the_failures_and_retry_clears_them() {
        let mut e = EnginePlan::new(&spec(), "a", T0);
        e.activate("p", &spec(), &fleet(5)).unwrap();
        e.apply(
            &Action::Pause {
                reason: EngineReason::FailureThreshold,
            },
            1,
        );
        assert_eq!(e.paused_by, Some(PausedBy::Engine));
        let c = vec![
            StageCounters::with(&[(DeviceState::Failed, 1), (DeviceState::Verified, 0)]),
            StageCounters::default(),
            StageCounters::with(&[(DeviceState::TimedOut, 2)]),
        ];
        e.on_verb(Verb::Resume, None, &c, T0).unwrap();
        assert_eq!(
            e.stages.iter().map(|s| s.accepted).collect::<Vec<_>>(),
            [1, 0, 2]
        );
        assert_eq!((e.paused_by, e.reason), (None, None));
        // The accepted failures no longer reach the threshold: decide does not pause again.
        let views = e.views();
        let mut e2 = e.clone();
        e2.stages[0].state = StageState::Active;
        let views2 = e2.views();
        let view = e2.view(Phase::Active, &views2, &[], 10);
        let acts = decide(&view, &e2.with_accepted(c.clone()), T0);
        assert!(
            !acts.iter().any(|a| matches!(a, Action::Pause { .. })),
            "{acts:?}"
        );
        assert_eq!(views.len(), 3);
        let st = e.status(Phase::Active, &c);
        assert_eq!(st.accepted_failures, 3);
        e.on_recovery(Strategy::Retry);
        assert!(e.stages.iter().all(|s| s.accepted == 0));
    }

    #[test]
    fn status_shows_the_gate_only_while_published_and_required_after_cancellations() {
        let mut e = EnginePlan::new(&spec(), "a", T0);
        e.activate("p", &spec(), &fleet(5)).unwrap();
        let c = vec![
            StageCounters::with(&[(DeviceState::Verified, 1)]),
            StageCounters::with(&[(DeviceState::Cancelled, 1), (DeviceState::Pending, 1)]),
        ];
        let st = e.status(Phase::Published, &c);
        assert_eq!(st.gate.as_ref().map(|g| g.stage), Some(0));
        assert_eq!(
            st.stages[1].required, 1,
            "a cancelled device is not required"
        );
        assert_eq!(st.stages[1].size, 2);
        assert_eq!(st.stages[0].counts[&DeviceState::Verified], 1);
        assert!(e.status(Phase::Active, &c).gate.is_none());
        assert_eq!(
            e.apply(
                &Action::ReachGate {
                    stage: 1,
                    since_us: T0
                },
                7
            ),
            Some(Phase::Published)
        );
        assert_eq!((e.current_stage, e.epoch), (1, 7));
    }

    #[test]
    fn holds_follow_the_phase_and_unsettled_assignments() {
        assert!(holds_device(Phase::Paused, DeviceState::Verified));
        assert!(holds_device(Phase::Failed, DeviceState::Failed));
        assert!(!holds_device(Phase::Completed, DeviceState::Verified));
        assert!(holds_device(Phase::RolledBack, DeviceState::Reverting));
        assert!(holds_device(Phase::Aborted, DeviceState::Installing));
        assert!(!holds_device(Phase::Aborted, DeviceState::Cancelled));
    }
}

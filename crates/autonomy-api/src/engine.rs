//! Wire types of the rollout engine (SPEC §8): the typed `targets`, `stages` and `policy` of an
//! engine-driven plan (§8.1), the device assignment states (§8.2) and `status.rollout` (§8.4).
//!
//! The plan resource keeps `targets` and `stages` as free-form JSON (a record-only plan may put
//! anything there); `autonomy_core::engine::parse_engine_spec` turns them into these types when
//! the plan is engine-driven. Every struct rejects unknown fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::string_enum;

/// `spec.targets` of an engine-driven plan: devices matching every `selector` label, plus the
/// listed `devices`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Targets {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
}

/// How many devices a stage takes: `{"count":N}` or `{"percent":P}` (of the target population,
/// or of the devices matching the stage's own selector).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StageSize {
    Count(u32),
    Percent(u32),
}

string_enum! {
    /// `stages[].approval`: `manual` puts a gate before the stage.
    pub enum Approval("approval") {
        Manual = "manual",
    }
}

/// One entry of `spec.stages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub name: String,
    /// `None`: the stage takes every device left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<StageSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// The stage takes only devices matching every label; its percent is of those devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    /// Overrides `policy.success_threshold_pct` for this stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold_pct: Option<u32>,
    /// Overrides `policy.failure_threshold` while this stage is the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<FailureThreshold>,
}

/// When failures stop the plan: `{"count":N}` failures, or `{"percent":P,"min_settled":M}` —
/// P % of the plan's dispatched devices, once at least M devices settled (`min_settled`
/// defaults to 1). Failures are `failed`, `timed_out`, `rolled_back` and `drifted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "FailureThresholdWire", into = "FailureThresholdWire")]
pub enum FailureThreshold {
    Count(u32),
    Percent { percent: u32, min_settled: u32 },
}

/// On the wire a [`FailureThreshold`] is its object form.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for FailureThreshold {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <FailureThresholdWire as utoipa::PartialSchema>::schema()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for FailureThreshold {}

impl Default for FailureThreshold {
    fn default() -> Self {
        FailureThreshold::Count(1)
    }
}

/// The object form of [`FailureThreshold`]: exactly one of `count` and `percent`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
struct FailureThresholdWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_settled: Option<u32>,
}

impl TryFrom<FailureThresholdWire> for FailureThreshold {
    type Error = String;
    fn try_from(w: FailureThresholdWire) -> Result<Self, String> {
        match (w.count, w.percent, w.min_settled) {
            (Some(n), None, None) => Ok(FailureThreshold::Count(n)),
            (None, Some(p), m) => Ok(FailureThreshold::Percent {
                percent: p,
                min_settled: m.unwrap_or(1),
            }),
            (Some(_), None, Some(_)) => {
                Err("min_settled goes with percent, not with count".to_string())
            }
            (Some(_), Some(_), _) => Err("give either count or percent, not both".to_string()),
            (None, None, _) => Err("give count or percent".to_string()),
        }
    }
}

impl From<FailureThreshold> for FailureThresholdWire {
    fn from(t: FailureThreshold) -> Self {
        match t {
            FailureThreshold::Count(n) => FailureThresholdWire {
                count: Some(n),
                percent: None,
                min_settled: None,
            },
            FailureThreshold::Percent {
                percent,
                min_settled,
            } => FailureThresholdWire {
                count: None,
                percent: Some(percent),
                min_settled: Some(min_settled),
            },
        }
    }
}

string_enum! {
    /// `policy.on_failure`: what the engine does when the failure threshold is reached or a
    /// stage can no longer reach its success threshold.
    pub enum OnFailure("on_failure") {
        Pause = "pause",
        Fail = "fail",
        Abort = "abort",
    }
}

/// `spec.policy`, every field defaulted as SPEC §8.1 shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    pub success_threshold_pct: u32,
    pub failure_threshold: FailureThreshold,
    pub on_failure: OnFailure,
    pub device_timeout_seconds: u64,
    pub max_device_retries: u32,
    pub reboot_required: bool,
    pub silent_after_seconds: u64,
    /// At most this many devices of a group in flight at once (SPEC §8.7).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disruption_budget: Option<DisruptionBudget>,
    /// Conditions a device must report before it is dispatched (SPEC §8.7).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require: Option<Require>,
    /// New dispatches only inside one of these windows; none: any time (SPEC §8.7).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<Window>,
}

/// `policy.disruption_budget`: the plan's targets are grouped by the values of the labels in
/// `group_by` (none: one group); within a group at most `max_unavailable` devices — or as many
/// as keep `min_available_pct` of the group out of flight, but always at least one — are in
/// flight (`dispatched` … `verifying`) at once. Exactly one of the two is given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DisruptionBudget {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available_pct: Option<u32>,
}

/// `policy.require`: what a device's last poll must have said for it to be dispatched. A
/// condition the device did not report is not met.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Require {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docked: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<bool>,
    /// The device reports `battery_pct` ≥ this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_pct_min: Option<u32>,
}

/// One entry of `policy.windows`: on `days` (`mon` … `sun`, the day the window opens), from
/// `start` to `end` (`HH:MM`, local time in `tz`, an IANA name); `end` before `start` wraps
/// past midnight into the next day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub days: Vec<String>,
    pub start: String,
    pub end: String,
    pub tz: String,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            success_threshold_pct: 100,
            failure_threshold: FailureThreshold::Count(1),
            on_failure: OnFailure::Pause,
            device_timeout_seconds: 3600,
            max_device_retries: 0,
            reboot_required: true,
            silent_after_seconds: 120,
            disruption_budget: None,
            require: None,
            windows: Vec::new(),
        }
    }
}

string_enum! {
    /// State of one device assignment (SPEC §8.2).
    pub enum DeviceState("device state") {
        Pending = "pending",
        /// Not dispatched because the device does not meet `policy.require` (SPEC §8.7): not
        /// a failure, no time-out running.
        WaitingReady = "waiting_ready",
        Dispatched = "dispatched",
        Downloading = "downloading",
        Installing = "installing",
        Rebooting = "rebooting",
        Verifying = "verifying",
        Verified = "verified",
        Failed = "failed",
        TimedOut = "timed_out",
        /// The device fell back to its previous digest by itself.
        RolledBack = "rolled_back",
        /// Verified, then polled with another digest.
        Drifted = "drifted",
        /// Never started; not counted.
        Cancelled = "cancelled",
        Reverting = "reverting",
        Reverted = "reverted",
        RevertFailed = "revert_failed",
        /// The previous digest is unknown.
        RevertUnavailable = "revert_unavailable",
    }
}

impl DeviceState {
    /// Dispatched and not yet settled: `dispatched` … `verifying` (the install path; a
    /// `reverting` device is on the revert path, see [`DeviceState::is_settled`]).
    pub fn is_in_flight(self) -> bool {
        use DeviceState::*;
        matches!(
            self,
            Dispatched | Downloading | Installing | Rebooting | Verifying
        )
    }

    /// Counted against the failure threshold: `failed`, `timed_out`, `rolled_back`, `drifted`.
    pub fn is_failure(self) -> bool {
        use DeviceState::*;
        matches!(self, Failed | TimedOut | RolledBack | Drifted)
    }

    /// Nothing more happens to the assignment unless an operator acts (retry, rollback):
    /// everything but `pending`, `waiting_ready`, the in-flight states and `reverting`.
    pub fn is_settled(self) -> bool {
        !(self.is_undispatched() || self == DeviceState::Reverting || self.is_in_flight())
    }

    /// Waiting to be dispatched: `pending` or `waiting_ready`.
    pub fn is_undispatched(self) -> bool {
        matches!(self, DeviceState::Pending | DeviceState::WaitingReady)
    }
}

string_enum! {
    /// State of one stage in `status.rollout.stages`.
    pub enum StageState("stage state") {
        /// Not started yet (possibly behind its gate).
        Pending = "pending",
        /// Dispatching or settling, not yet at its success threshold.
        Active = "active",
        /// Reached its success threshold (stragglers may still be in flight).
        Passed = "passed",
    }
}

string_enum! {
    /// Who paused an engine-driven plan.
    pub enum PausedBy("paused_by") {
        Operator = "operator",
        Engine = "engine",
    }
}

string_enum! {
    /// Why the engine paused, failed or aborted a plan.
    pub enum EngineReason("engine reason") {
        FailureThreshold = "failure_threshold",
        ThresholdUnreachable = "threshold_unreachable",
    }
}

/// `status.rollout.gate`: the plan waits (phase `published`) before stage `stage` since `since`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Gate {
    pub stage: u32,
    pub since: String,
}

/// One entry of `status.rollout.stages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StageStatus {
    pub name: String,
    /// Devices assigned to the stage.
    pub size: u64,
    /// Verified devices the stage needs to pass.
    pub required: u64,
    pub state: StageState,
    /// Assignments per device state (states with no device are left out).
    #[serde(default)]
    pub counts: BTreeMap<DeviceState, u64>,
}

/// `status.rollout` of an engine-driven plan (SPEC §8.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RolloutStatus {
    pub current_stage: u32,
    #[serde(default)]
    pub gate: Option<Gate>,
    #[serde(default)]
    pub paused_by: Option<PausedBy>,
    /// Why the engine paused (or failed, aborted) the plan; `None` for operator pauses.
    #[serde(default)]
    pub reason: Option<EngineReason>,
    /// Failures a `resume` accepted: thresholds no longer count them.
    #[serde(default)]
    pub accepted_failures: u64,
    /// Devices that drifted after the plan completed.
    #[serde(default)]
    pub drifted: u64,
    /// The leader epoch (SPEC §7) of the last promoter write.
    #[serde(default)]
    pub epoch: u64,
    pub stages: Vec<StageStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn policy_defaults_are_those_of_the_spec() {
        let p: Policy = serde_json::from_value(json!({})).unwrap();
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({"success_threshold_pct": 100, "failure_threshold": {"count": 1},
                   "on_failure": "pause", "device_timeout_seconds": 3600,
                   "max_device_retries": 0, "reboot_required": true,
                   "silent_after_seconds": 120})
        );
        let e = serde_json::from_value::<Policy>(json!({"on_failur": "pause"})).unwrap_err();
        assert!(e.to_string().contains("on_failur"), "{e}");
    }

    #[test]
    fn sizes_and_thresholds_round_trip() {
        for v in [json!({"count": 2}), json!({"percent": 50})] {
            let s: StageSize = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(serde_json::to_value(s).unwrap(), v);
        }
        assert!(serde_json::from_value::<StageSize>(json!({"count": 1, "percent": 2})).is_err());
        assert!(serde_json::from_value::<StageSize>(json!({"cnt": 1})).is_err());
        let t: FailureThreshold =
            serde_json::from_value(json!({"percent": 10, "min_settled": 5})).unwrap();
        assert_eq!(
            t,
            FailureThreshold::Percent {
                percent: 10,
                min_settled: 5
            }
        );
        assert_eq!(
            serde_json::to_value(t).unwrap(),
            json!({"percent": 10, "min_settled": 5})
        );
        let t: FailureThreshold = serde_json::from_value(json!({"percent": 10})).unwrap();
        assert_eq!(
            t,
            FailureThreshold::Percent {
                percent: 10,
                min_settled: 1
            }
        );
        for bad in [
            json!({"count": 1, "percent": 2}),
            json!({}),
            json!({"count": 1, "min_settled": 2}),
            json!({"count": 1, "x": 2}),
        ] {
            assert!(
                serde_json::from_value::<FailureThreshold>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn device_state_classes_partition_the_states() {
        use DeviceState::*;
        for &s in DeviceState::ALL {
            if s.is_in_flight() || s == Pending || s == WaitingReady || s == Reverting {
                assert!(!s.is_settled(), "{s}");
            } else {
                assert!(s.is_settled(), "{s}");
            }
            if s.is_failure() {
                assert!(s.is_settled() && !s.is_in_flight(), "{s}");
            }
        }
        let failures: Vec<_> = DeviceState::ALL.iter().filter(|s| s.is_failure()).collect();
        assert_eq!(failures, [&Failed, &TimedOut, &RolledBack, &Drifted]);
        let in_flight = DeviceState::ALL.iter().filter(|s| s.is_in_flight()).count();
        assert_eq!(in_flight, 5);
    }

    #[test]
    fn rollout_status_round_trips_with_counts_keyed_by_state() {
        let v = json!({"current_stage": 1, "gate": {"stage": 1, "since": "t"},
                       "paused_by": null, "reason": null, "accepted_failures": 0,
                       "drifted": 0, "epoch": 3,
                       "stages": [{"name": "canary", "size": 2, "required": 2,
                                   "state": "passed", "counts": {"verified": 2}}]});
        let s: RolloutStatus = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(s.stages[0].counts[&DeviceState::Verified], 2);
        assert_eq!(serde_json::to_value(&s).unwrap(), v);
    }
}

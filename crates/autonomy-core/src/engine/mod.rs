//! The rollout engine's pure rules (SPEC §8): what makes a plan engine-driven and its typed
//! spec ([`spec`]), which device goes in which stage ([`stages`]), what the promoter does
//! next ([`decide`]) and why a plan is stuck ([`stuck`]). No IO and no clock: the promoter
//! loop and the stuck scan in the server read the store, call these, and write or answer what
//! they return.

pub mod decide;
pub mod gates;
pub mod spec;
pub mod stages;
pub mod state;
pub mod stuck;

pub use decide::{
    decide, on_failure, stage_status, threshold_reached, Action, InFlight, PlanView, StageCounters,
    StageView,
};
pub use gates::{
    allowed_in_flight, group_key, group_loads, in_window, needs_devices, next_window_start, unmet,
    GateDevice, GroupLoad,
};
pub use spec::{
    is_engine_driven, parse_engine_spec, target_digest, EngineSpec, SpecError, ALL_STAGE,
    REMAINDER_STAGE,
};
pub use stages::{
    assign_stages, matches_selector, order, order_key, required, resolve_targets, AssignError,
    StagePlan, TargetDevice,
};
pub use state::{
    action_audit, action_event, holds_device, holds_devices, EnginePlan, EngineStage, GateError,
};
pub use stuck::{
    engine_item, engine_stuck, record_only_item, stuck_report, suggested_actions, DeviceSample,
    EngineStuck, StuckFacts, MAX_REASON_DEVICES,
};

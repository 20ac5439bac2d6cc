//! Wire types of the AutonomyOps control plane (CP): the rollout plan resource, phases,
//! recovery strategies, request and response bodies, audit events and the JSON error body.
//!
//! This crate does no IO. The server serialises these types onto the wire, the CLI parses
//! them back, and the store keeps the plan resource as the JSON these types produce. Every
//! request type rejects unknown fields, so a typo in a client is a 400 naming the field,
//! never a silently ignored setting.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub mod device;
pub mod engine;
pub mod timefmt;

pub use engine::{
    Approval, DeviceState, DisruptionBudget, EngineReason, FailureThreshold, Gate, OnFailure,
    PausedBy, Policy, Require, RolloutStatus, Stage, StageSize, StageState, StageStatus, Targets,
    Window,
};

/// Declares a string enum once: the variants and their wire names. Generates `ALL`, `as_str`,
/// `Display`, `FromStr` (whose error lists the accepted names) and serde by the same names, so
/// the name of a variant is written in exactly one place.
#[macro_export]
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name { $( $(#[$vmeta])* $variant ),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| $crate::unknown_name($what, s, $name::ALL.iter().map(|v| v.as_str())))
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <::std::borrow::Cow<'de, str> as ::serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(<D::Error as ::serde::de::Error>::custom)
            }
        }

        /// OpenAPI: a string, one of the wire names.
        #[cfg(feature = "openapi")]
        impl ::utoipa::PartialSchema for $name {
            fn schema() -> ::utoipa::openapi::RefOr<::utoipa::openapi::schema::Schema> {
                ::utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(::utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($text),+]))
                    .into()
            }
        }

        #[cfg(feature = "openapi")]
        impl ::utoipa::ToSchema for $name {}
    };
}

/// The error of a string enum's `FromStr`: `unknown phase 'x' (expected draft, … or rolled_back)`.
#[doc(hidden)]
pub fn unknown_name<'a>(what: &str, got: &str, names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    let expected = match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.to_string(),
        None => String::new(),
    };
    let shown: String = got.chars().take(64).flat_map(char::escape_debug).collect();
    format!("unknown {what} '{shown}' (expected {expected})")
}

string_enum! {
    /// Phase of a rollout plan. See SPEC §2 for the transitions.
    pub enum Phase("phase") {
        Draft = "draft",
        Published = "published",
        Active = "active",
        Paused = "paused",
        Completed = "completed",
        Failed = "failed",
        Aborted = "aborted",
        RolledBack = "rolled_back",
    }
}

impl Phase {
    /// Terminal phases accept no operator verb; only `rollback` of a `completed` plan.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Completed | Phase::Aborted | Phase::RolledBack)
    }
}

string_enum! {
    /// Recovery strategy of `POST /v1/rollback/execute`.
    pub enum Strategy("strategy") {
        Retry = "retry",
        Rollback = "rollback",
        Abort = "abort",
    }
}

string_enum! {
    /// Operator verbs that move a plan along its normal path.
    pub enum Verb("verb") {
        Publish = "publish",
        Start = "start",
        Pause = "pause",
        Resume = "resume",
    }
}

string_enum! {
    /// Outcome of an audited action.
    pub enum Outcome("outcome") {
        Success = "success",
        Noop = "noop",
        Rejected = "rejected",
        Denied = "denied",
        Error = "error",
    }
}

string_enum! {
    /// RBAC role of a token (SPEC §4). Each role includes the rights of the ones before it
    /// (the order of the variants is the order of rights).
    pub enum Role("role") {
        Viewer = "viewer",
        Operator = "operator",
        Admin = "admin",
    }
}

string_enum! {
    /// What an audit event records. A denied request carries the type of the action it
    /// attempted (reads included), with `outcome=denied`.
    pub enum EventType("event type") {
        PlanCreated = "plan.created",
        PlanRead = "plan.read",
        PlanListed = "plan.listed",
        PlanStuckScanned = "plan.stuck_scanned",
        RolloutPhaseChanged = "rollout.phase_changed",
        RollbackExecuted = "rollback.executed",
        AuditQueried = "audit.queried",
        AuditPublicKeyRead = "audit.public_key_read",
        /// `GET /v1/whoami` (only ever recorded as a sample of an aggregated `auth.denied`:
        /// every valid token may ask who it is).
        IdentityRead = "identity.read",
        TokenCreated = "token.created",
        TokenListed = "token.listed",
        TokenRevoked = "token.revoked",
        /// Requests refused for want of a valid token, aggregated per source address and
        /// window (never one event per request: an attacker must not write at will).
        AuthDenied = "auth.denied",
        /// A verified device polled with another digest (SPEC §9.3); once per drift.
        DeviceDriftDetected = "device.drift_detected",
        /// A drifted device polled with the target digest again.
        DeviceDriftResolved = "device.drift_resolved",
        /// The promoter started dispatching a stage (SPEC §8.3).
        RolloutStageStarted = "rollout.stage_started",
        /// The promoter stopped at a manual gate.
        RolloutGateReached = "rollout.gate_reached",
        /// A stage reached its success threshold.
        RolloutStagePassed = "rollout.stage_passed",
        /// The promoter dispatched devices of a stage (one event per tick and stage, with ids).
        RolloutDevicesDispatched = "rollout.devices_dispatched",
        /// Devices that do not meet `policy.require` wait (`waiting_ready`), or meet it again
        /// while the budget or a window holds them (back to `pending`) (SPEC §8.7).
        RolloutDevicesWaiting = "rollout.devices_waiting",
        /// An in-flight device passed `device_timeout_seconds`.
        DeviceTimedOut = "device.timed_out",
        /// Failed devices went back to `pending` on an automatic retry.
        DeviceRetried = "device.retried",
        /// A device was registered by an operator (SPEC §9.1).
        DeviceRegistered = "device.registered",
        /// A device enrolled itself with an enroll key.
        DeviceEnrolled = "device.enrolled",
        DeviceLabelsChanged = "device.labels_changed",
        DeviceRevoked = "device.revoked",
        DeviceRead = "device.read",
        DeviceListed = "device.listed",
        EnrollKeyCreated = "enroll_key.created",
        /// A replica took the leader lock and raised the epoch (SPEC §7); actor
        /// `system:<replica>`.
        LeaderAcquired = "leader.acquired",
    }
}

string_enum! {
    /// What an audit event is about (its `target`).
    pub enum Target("target") {
        RolloutPlan = "rollout_plan",
        Token = "token",
        Audit = "audit",
        /// The API's authentication (`auth.denied`: `resource` is the source address).
        Auth = "auth",
        Device = "device",
        EnrollKey = "enroll_key",
        /// The promoter's leadership (`leader.acquired`: `resource` is the replica).
        Leader = "leader",
    }
}

// ---------------------------------------------------------------------------------------------
// The rollout plan resource
// ---------------------------------------------------------------------------------------------

/// `GET /v1/rollouts/{id}`: the whole resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    pub plan: Plan,
    pub status: PlanStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub metadata: PlanMetadata,
    pub spec: PlanSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PlanMetadata {
    pub id: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub created_at: String,
    pub updated_at: String,
    pub created_by: String,
    pub generation: u64,
}

/// What the operator asks for. Stored as given; see `autonomy_core::artifact_warnings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    pub artifact_ref: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_lock_fingerprint: Option<String>,
    /// Which devices the plan goes to (free-form object, e.g. `{"fleet":"warehouse-7"}`).
    #[serde(default = "empty_object")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub targets: serde_json::Map<String, serde_json::Value>,
    /// The stages the rollout goes in (free-form objects, in order).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub stages: Vec<serde_json::Map<String, serde_json::Value>>,
    /// How an engine-driven plan rolls out (SPEC §8.1); free-form for a record-only plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub policy: Option<serde_json::Map<String, serde_json::Value>>,
}

fn empty_object() -> serde_json::Map<String, serde_json::Value> {
    serde_json::Map::new()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PlanStatus {
    pub phase: Phase,
    pub phase_changed_at: String,
    pub last_progress_at: String,
    #[serde(default)]
    pub warnings: Vec<String>,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
    /// The engine's state of an engine-driven plan (SPEC §8.4); absent on record-only plans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
}

/// One phase change, appended to `status.history` by every transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HistoryEntry {
    pub generation: u64,
    pub at: String,
    /// `create`, a verb (`publish`, `start`, `pause`, `resume`) or a strategy.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Phase>,
    pub to: Phase,
    pub actor: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// `POST /v1/rollouts`: the plan without server-set fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateRolloutRequest {
    #[serde(default)]
    pub metadata: CreateMetadata,
    pub spec: PlanSpec,
    /// Create the plan in `draft` instead of `published`.
    #[serde(default)]
    pub draft: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateMetadata {
    /// Generated when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$"))]
    pub id: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Optional body of `POST /v1/rollouts/{id}/publish|start|pause|resume`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TransitionRequest {
    #[serde(default)]
    pub reason: String,
    /// `start` only: the gate the approval is for; 409 unless the plan waits at that gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<u32>,
}

/// `GET /v1/rollouts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutList {
    pub items: Vec<Rollout>,
    pub next_cursor: Option<String>,
}

/// Query of `GET /v1/rollouts`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// Query of `GET /v1/rollouts/stuck`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StuckQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_seconds: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// Only plans whose main reason is this code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// `GET /v1/rollouts/stuck`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StuckReport {
    pub threshold_seconds: f64,
    pub scanned_at: String,
    pub stuck_count: u64,
    pub items: Vec<StuckItem>,
    /// Stuck plans per main reason code (before `?code=` and `limit`).
    #[serde(default)]
    pub by_code: BTreeMap<StuckCode, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StuckItem {
    pub id: String,
    pub phase: Phase,
    pub stale_seconds: f64,
    pub last_progress_at: String,
    pub phase_changed_at: String,
    /// What the plan is waiting for and since when. Never empty.
    pub diagnosis: String,
    /// Ready-to-run CLI lines.
    pub suggested_actions: Vec<String>,
    /// The main reason (the first of `reasons` in precedence order).
    pub code: StuckCode,
    /// Every reason found, in precedence order (engine-driven plans; empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<StuckReason>,
    /// The stage the plan is on (engine-driven plans).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<StuckStage>,
}

string_enum! {
    /// Why a plan is stuck (SPEC §8.6), in precedence order.
    pub enum StuckCode("stuck code") {
        PromoterNotRunning = "promoter_not_running",
        AwaitingStart = "awaiting_start",
        AwaitingApproval = "awaiting_approval",
        FailureThresholdReached = "failure_threshold_reached",
        StageThresholdUnreachable = "stage_threshold_unreachable",
        FailingDevices = "failing_devices",
        SilentDevices = "silent_devices",
        NonConvergingDevices = "non_converging_devices",
        /// A disruption-budget group is full and every device in flight in it is stuck
        /// (SPEC §8.7).
        BudgetExhausted = "budget_exhausted",
        /// Devices wait to be dispatched and no maintenance window is open (SPEC §8.7).
        OutsideWindow = "outside_window",
        /// Devices do not meet `policy.require` (`waiting_ready`, SPEC §8.7).
        DevicesNotReady = "devices_not_ready",
        DriftedDevices = "drifted_devices",
        RevertNotConverging = "revert_not_converging",
        /// A record-only plan with no progress for the threshold.
        NoProgress = "no_progress",
    }
}

/// One reason a plan is stuck: how many devices it concerns and up to 10 of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StuckReason {
    pub code: StuckCode,
    pub count: u64,
    pub devices: Vec<String>,
    /// `devices_not_ready`: the first unmet condition of each device shown, e.g.
    /// `{"amr-0007": "docked is false (needs true)"}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unmet: BTreeMap<String, String>,
    /// `devices_not_ready`: devices per unmet condition name (all of them, not only those
    /// shown), e.g. `{"docked": 3, "battery_pct": 1}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_condition: BTreeMap<String, u64>,
    /// `outside_window`: when the next maintenance window opens (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_window_at: Option<String>,
}

/// The stage a stuck plan is on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StuckStage {
    pub index: u32,
    pub name: String,
    pub required: u64,
    pub verified: u64,
    pub in_flight: u64,
    pub failed: u64,
}

/// `POST /v1/rollback/execute`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    /// Only `rollout_plan` today.
    pub target: String,
    pub resource: String,
    pub strategy: Strategy,
    pub reason: String,
    #[serde(default)]
    pub dry_run: bool,
}

/// Answer of `POST /v1/rollback/execute` (200 for success and noop, 409 for rejected; a
/// rejected answer also carries the `error` object of [`ErrorBody`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecuteResponse {
    pub outcome: Outcome,
    pub execution_id: String,
    pub target: String,
    pub resource: String,
    pub strategy: Strategy,
    pub from_phase: Phase,
    pub to_phase: Phase,
    pub dry_run: bool,
    /// The audit event of this execution; `None` for a dry run (it changes nothing).
    pub audit_event_id: Option<String>,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

// ---------------------------------------------------------------------------------------------
// Audit
// ---------------------------------------------------------------------------------------------

/// One event of the audit store (SPEC §5.4), the only audit record type: the store builds a
/// *draft* ([`AuditEvent::draft`]: what happened), stamps who and when, and
/// `autonomy_audit::seal` chains it (`seq`, `prev_hash`, `hash`). Field order is the on-disk
/// order; the hash covers the serialised event without its `hash` field.
///
/// `event_type` stays a string on the record so that a reader accepts event types it does not
/// know (a newer CP's); writers can only make the ones of [`EventType`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    pub seq: u64,
    pub id: String,
    pub time: String,
    pub event_type: String,
    pub actor: String,
    pub target: String,
    pub resource: String,
    pub outcome: Outcome,
    pub reason: String,
    pub request_id: String,
    pub details: serde_json::Value,
    pub prev_hash: String,
    /// Empty until sealed; an empty hash is not serialised (that is the hashed body).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

/// The most bytes of `resource` an audit event keeps (SPEC §4).
pub const AUDIT_MAX_RESOURCE_BYTES: usize = 128;
/// The most characters of `reason` an audit event keeps.
pub const AUDIT_MAX_REASON_CHARS: usize = 1024;
/// What marks a field that was cut to its bound.
pub const CUT_MARKER: &str = "…[cut]";

/// `s` cut to at most `max_bytes` bytes (on a character boundary) with [`CUT_MARKER`] when cut.
pub fn cut_bytes(s: &str, max_bytes: usize) -> String {
    if s.len() <= max_bytes {
        return s.to_string();
    }
    let mut end = max_bytes.saturating_sub(CUT_MARKER.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{CUT_MARKER}", &s[..end])
}

/// `s` cut to at most `max_chars` characters with [`CUT_MARKER`] when cut.
pub fn cut_chars(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        return s.to_string();
    }
    let keep = max_chars.saturating_sub(CUT_MARKER.chars().count());
    format!("{}{CUT_MARKER}", s.chars().take(keep).collect::<String>())
}

impl AuditEvent {
    /// What happened, before it is stamped (`id`, `time`, `actor`, `request_id`) and sealed.
    /// `resource` and `reason` are bounded here ([`AUDIT_MAX_RESOURCE_BYTES`],
    /// [`AUDIT_MAX_REASON_CHARS`]), so no caller can make an event of unbounded size.
    pub fn draft(
        event_type: EventType,
        target: Target,
        resource: impl Into<String>,
        outcome: Outcome,
        reason: impl Into<String>,
        details: serde_json::Value,
    ) -> Self {
        AuditEvent {
            seq: 0,
            id: String::new(),
            time: String::new(),
            event_type: event_type.as_str().to_string(),
            actor: String::new(),
            target: target.as_str().to_string(),
            resource: cut_bytes(&resource.into(), AUDIT_MAX_RESOURCE_BYTES),
            outcome,
            reason: cut_chars(&reason.into(), AUDIT_MAX_REASON_CHARS),
            request_id: String::new(),
            details,
            prev_hash: String::new(),
            hash: String::new(),
        }
    }
}

/// Filters of `GET /v1/audit/events` and `autonomy audit query`. Times are RFC 3339; the
/// range is `start_time <= time < end_time`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page: only events after it are listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// An [`AuditQuery`] after validation: parsed times (UTC microseconds) and a bounded limit.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditFilter {
    pub event_type: Option<String>,
    pub actor: Option<String>,
    pub resource: Option<String>,
    pub outcome: Option<Outcome>,
    pub start_us: Option<i64>,
    pub end_us: Option<i64>,
    pub limit: usize,
    /// Only events with a larger `seq` (the page cursor).
    pub after_seq: Option<u64>,
}

pub const AUDIT_DEFAULT_LIMIT: usize = 100;
pub const AUDIT_MAX_LIMIT: usize = 10_000;

impl AuditQuery {
    /// Validates the query; the error names the bad field.
    pub fn parse(&self) -> Result<AuditFilter, FieldError> {
        let time = |field: &'static str, v: &Option<String>| -> Result<Option<i64>, FieldError> {
            v.as_deref()
                .map(|s| {
                    timefmt::parse_rfc3339_us(s).map_err(|e| FieldError::new(field, e.to_string()))
                })
                .transpose()
        };
        let non_empty = |field: &'static str, v: &Option<String>| match v {
            Some(s) if s.is_empty() => Err(FieldError::new(field, "must not be empty")),
            _ => Ok(v.clone()),
        };
        let outcome = self
            .outcome
            .as_deref()
            .map(|s| {
                s.parse::<Outcome>()
                    .map_err(|e| FieldError::new("outcome", e))
            })
            .transpose()?;
        let limit = parse_limit(self.limit.as_deref(), AUDIT_DEFAULT_LIMIT, AUDIT_MAX_LIMIT)?;
        let start_us = time("start_time", &self.start_time)?;
        let end_us = time("end_time", &self.end_time)?;
        if let (Some(s), Some(e)) = (start_us, end_us) {
            if e < s {
                return Err(FieldError::new("end_time", "must not be before start_time"));
            }
        }
        let after_seq = self
            .cursor
            .as_deref()
            .map(|c| {
                c.parse::<u64>().map_err(|_| {
                    FieldError::new(
                        "cursor",
                        format!("must be the next_cursor of a previous page, got '{c}'"),
                    )
                })
            })
            .transpose()?;
        Ok(AuditFilter {
            event_type: non_empty("event_type", &self.event_type)?,
            actor: non_empty("actor", &self.actor)?,
            resource: non_empty("resource", &self.resource)?,
            outcome,
            start_us,
            end_us,
            limit,
            after_seq,
        })
    }
}

impl AuditFilter {
    /// No filter: every event, at most `limit` of them.
    pub fn everything(limit: usize) -> AuditFilter {
        AuditFilter {
            event_type: None,
            actor: None,
            resource: None,
            outcome: None,
            start_us: None,
            end_us: None,
            limit,
            after_seq: None,
        }
    }

    /// Whether `event` passes every filter but the limit.
    pub fn matches(&self, event: &AuditEvent, time_us: i64) -> bool {
        self.after_seq.is_none_or(|c| event.seq > c)
            && self
                .event_type
                .as_deref()
                .is_none_or(|t| t == event.event_type)
            && self.actor.as_deref().is_none_or(|a| a == event.actor)
            && self.resource.as_deref().is_none_or(|r| r == event.resource)
            && self.outcome.is_none_or(|o| o == event.outcome)
            && self.start_us.is_none_or(|s| time_us >= s)
            && self.end_us.is_none_or(|e| time_us < e)
    }
}

/// Parses a `limit` query value: a whole number in `1..=max`, `default` when absent.
pub fn parse_limit(v: Option<&str>, default: usize, max: usize) -> Result<usize, FieldError> {
    match v {
        None => Ok(default),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(FieldError::new(
                "limit",
                format!("must be a whole number from 1 to {max}, got '{s}'"),
            )),
        },
    }
}

/// `GET /v1/audit/events`: oldest first. A full page (`limit` events) carries `next_cursor`:
/// ask again with `cursor=<it>` for the events after it; `null` means there are no more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEventList {
    pub items: Vec<AuditEvent>,
    /// Absent from the answers of CPs that do not page (decoded as `None`).
    #[serde(default)]
    pub next_cursor: Option<String>,
}

impl AuditEventList {
    /// A page of a query whose limit was `limit`: `next_cursor` is the last seq when the page
    /// is full (there may be more).
    pub fn page(items: Vec<AuditEvent>, limit: usize) -> AuditEventList {
        let next_cursor = if items.len() >= limit {
            items.last().map(|e| e.seq.to_string())
        } else {
            None
        };
        AuditEventList { items, next_cursor }
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    pub operator: String,
    pub role: Role,
}

/// Answer of `POST /v1/tokens`: the only time the secret is shown. A replay of the same
/// request (same `Idempotency-Key`) answers the metadata without `token`: secrets are never
/// stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenCreated {
    pub id: String,
    pub operator: String,
    pub role: Role,
    /// Empty (and not serialised) in a replay.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    pub created_at: String,
}

/// `GET /v1/leader` (SPEC §7): which replica runs the promoter, under which epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaderInfo {
    /// The leader's replica name (empty while no replica has ever led).
    pub replica: String,
    /// Raised at each acquisition; every promoter write checks it.
    pub epoch: u64,
    /// When the leader acquired the lock (RFC 3339; empty while none has).
    pub since: String,
    /// Whether the answering replica is the leader.
    #[serde(rename = "self")]
    pub is_self: bool,
}

/// One token of `GET /v1/tokens` (never the secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenInfo {
    pub id: String,
    pub operator: String,
    pub role: Role,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenList {
    pub items: Vec<TokenInfo>,
}

/// Answer of `GET /v1/whoami`: who the caller's bearer token is (the web console shows the
/// actions the role allows). With RBAC off every caller is an admin, `operator` is the
/// `X-Autonomy-Operator` header or `anonymous`, and `token_id` is null.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WhoAmI {
    pub operator: String,
    pub role: Role,
    pub token_id: Option<String>,
    /// Whether the CP enforces RBAC (tokens are needed).
    pub rbac: bool,
}

// ---------------------------------------------------------------------------------------------
// Health and errors
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    pub status: String,
    pub version: String,
    pub store: String,
    /// The background check of the retained audit store after start-up (SPEC §5.8); absent
    /// from servers that do not run it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditCheck>,
    /// Where the audit store is damaged, when `audit` is `damaged`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_damage: Option<AuditDamage>,
}

string_enum! {
    /// State of the background audit check in `GET /v1/health`.
    pub enum AuditCheck("audit check") {
        Verifying = "verifying",
        Ok = "ok",
        Damaged = "damaged",
    }
}

/// The first bad record the background audit check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditDamage {
    /// The segment file (or `checkpoints.jsonl`).
    pub segment: String,
    /// Line within it, from 1; 0 for the file as a whole.
    pub line: u64,
    /// The seq at that place, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// What is wrong there.
    pub message: String,
}

/// `GET /v1/audit/public-key`: the key that signs the audit checkpoints (SPEC §5.9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditPublicKey {
    /// Always `ed25519`.
    pub algorithm: String,
    /// The 32-byte public key as 64 lowercase hex digits, as in `audit-signing.pub`.
    pub public_key: String,
}

/// `GET /v1/ready`: `{"status":"ready"}` once the store answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Ready {
    pub status: String,
}

/// `{"error":{"code":…,"message":…}}`, the body of every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

string_enum! {
    /// The `code` of the JSON error body. The server maps each to exactly one HTTP status.
    pub enum ErrorCode("error code") {
        NotFound = "not_found",
        InvalidRequest = "invalid_request",
        Conflict = "conflict",
        Unauthorized = "unauthorized",
        Forbidden = "forbidden",
        PayloadTooLarge = "payload_too_large",
        UnsupportedMediaType = "unsupported_media_type",
        MethodNotAllowed = "method_not_allowed",
        Unprocessable = "unprocessable",
        Unavailable = "unavailable",
        Internal = "internal",
    }
}

/// A bad value in a request, named by its field (JSON path or query parameter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

/// The header that carries the operator name when RBAC enforcement is off.
pub const OPERATOR_HEADER: &str = "x-autonomy-operator";
/// The header that makes a retried POST return its first answer.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_drafts_are_bounded() {
        let e = AuditEvent::draft(
            EventType::PlanRead,
            Target::RolloutPlan,
            "a".repeat(60_000),
            Outcome::Denied,
            "é".repeat(5000),
            serde_json::json!({}),
        );
        assert!(e.resource.len() <= AUDIT_MAX_RESOURCE_BYTES && e.resource.ends_with(CUT_MARKER));
        assert_eq!(e.reason.chars().count(), AUDIT_MAX_REASON_CHARS);
        assert!(e.reason.ends_with(CUT_MARKER));
        assert_eq!(cut_bytes("short", 128), "short");
        assert!(cut_bytes(&"é".repeat(100), 128).len() <= 128);
    }

    #[test]
    fn string_enums_round_trip_and_list_names_on_error() {
        for &p in Phase::ALL {
            assert_eq!(p.as_str().parse::<Phase>().unwrap(), p);
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
        let err = "nope".parse::<Role>().unwrap_err();
        assert_eq!(
            err,
            "unknown role 'nope' (expected viewer, operator or admin)"
        );
        assert!(serde_json::from_str::<Strategy>("\"x\"").is_err());
    }

    #[test]
    fn audit_cursor_parses_and_pages_carry_the_next_one() {
        let q = |cursor: &str| AuditQuery {
            cursor: Some(cursor.into()),
            ..AuditQuery::default()
        };
        assert_eq!(q("42").parse().unwrap().after_seq, Some(42));
        assert_eq!(AuditQuery::default().parse().unwrap().after_seq, None);
        for bad in ["", "-1", "x", "1.5", "99999999999999999999"] {
            assert_eq!(q(bad).parse().unwrap_err().field, "cursor", "{bad:?}");
        }
        let event = |seq| AuditEvent {
            seq,
            ..AuditEvent::draft(
                EventType::PlanCreated,
                Target::RolloutPlan,
                "p",
                Outcome::Success,
                "",
                serde_json::Value::Null,
            )
        };
        let full = AuditEventList::page(vec![event(7), event(9)], 2);
        assert_eq!(full.next_cursor.as_deref(), Some("9"));
        assert_eq!(AuditEventList::page(vec![event(7)], 2).next_cursor, None);
        assert_eq!(AuditEventList::page(vec![], 2).next_cursor, None);
        let mut filter = AuditFilter::everything(10);
        filter.after_seq = Some(7);
        assert!(!filter.matches(&event(7), 0));
        assert!(filter.matches(&event(8), 0));
        // The answer of a CP that does not page still decodes.
        let old: AuditEventList = serde_json::from_str(r#"{"items":[]}"#).unwrap();
        assert_eq!(old.next_cursor, None);
    }
}

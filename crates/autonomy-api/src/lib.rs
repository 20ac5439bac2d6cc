//! Wire types of the AutonomyOps control plane (CP): the rollout plan resource, phases,
//! recovery strategies, request and response bodies, audit events and the JSON error body.
//!
//! This crate does no IO. The server serialises these types onto the wire, the CLI parses
//! them back, and the store keeps the plan resource as the JSON these types produce. Every
//! request type rejects unknown fields, so a typo in a client is a 400 naming the field,
//! never a silently ignored setting.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub mod timefmt;

/// Phase of a rollout plan. See SPEC §2 for the transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Draft,
    Published,
    Active,
    Paused,
    Completed,
    Failed,
    Aborted,
    RolledBack,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Draft,
        Phase::Published,
        Phase::Active,
        Phase::Paused,
        Phase::Completed,
        Phase::Failed,
        Phase::Aborted,
        Phase::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Draft => "draft",
            Phase::Published => "published",
            Phase::Active => "active",
            Phase::Paused => "paused",
            Phase::Completed => "completed",
            Phase::Failed => "failed",
            Phase::Aborted => "aborted",
            Phase::RolledBack => "rolled_back",
        }
    }

    /// Terminal phases accept no operator verb; only `rollback` of a `completed` plan.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Completed | Phase::Aborted | Phase::RolledBack)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown phase '{s}' (expected one of: {})",
                    Phase::ALL.map(|p| p.as_str()).join(", ")
                )
            })
    }
}

/// Recovery strategy of `POST /v1/rollback/execute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Retry,
    Rollback,
    Abort,
}

impl Strategy {
    pub const ALL: [Strategy; 3] = [Strategy::Retry, Strategy::Rollback, Strategy::Abort];
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Retry => "retry",
            Strategy::Rollback => "rollback",
            Strategy::Abort => "abort",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Strategy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown strategy '{s}' (expected retry, rollback or abort)"))
    }
}

/// Operator verbs that move a plan along its normal path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verb {
    Publish,
    Start,
    Pause,
    Resume,
}

impl Verb {
    pub const ALL: [Verb; 4] = [Verb::Publish, Verb::Start, Verb::Pause, Verb::Resume];
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Publish => "publish",
            Verb::Start => "start",
            Verb::Pause => "pause",
            Verb::Resume => "resume",
        }
    }
}

impl FromStr for Verb {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Verb::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown verb '{s}'"))
    }
}

/// Outcome of an audited action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Noop,
    Rejected,
    Denied,
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Success,
        Outcome::Noop,
        Outcome::Rejected,
        Outcome::Denied,
        Outcome::Error,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Noop => "noop",
            Outcome::Rejected => "rejected",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Outcome::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!("unknown outcome '{s}' (expected success, noop, rejected, denied or error)")
            })
    }
}

/// RBAC role of a token (SPEC §4). Each role includes the rights of the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!(
                "unknown role '{s}' (expected viewer, operator or admin)"
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The rollout plan resource
// ---------------------------------------------------------------------------------------------

/// `GET /v1/rollouts/{id}`: the whole resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    pub plan: Plan,
    pub status: PlanStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub metadata: PlanMetadata,
    pub spec: PlanSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    pub artifact_ref: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_lock_fingerprint: Option<String>,
    /// Which devices the plan goes to (free-form object, e.g. `{"fleet":"warehouse-7"}`).
    #[serde(default = "empty_object")]
    pub targets: serde_json::Map<String, serde_json::Value>,
    /// The stages the rollout goes in (free-form objects, in order).
    #[serde(default)]
    pub stages: Vec<serde_json::Map<String, serde_json::Value>>,
}

fn empty_object() -> serde_json::Map<String, serde_json::Value> {
    serde_json::Map::new()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanStatus {
    pub phase: Phase,
    pub phase_changed_at: String,
    pub last_progress_at: String,
    #[serde(default)]
    pub warnings: Vec<String>,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

/// One phase change, appended to `status.history` by every transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[serde(deny_unknown_fields)]
pub struct CreateMetadata {
    /// Generated when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Optional body of `POST /v1/rollouts/{id}/publish|start|pause|resume`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransitionRequest {
    #[serde(default)]
    pub reason: String,
}

/// `GET /v1/rollouts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutList {
    pub items: Vec<Rollout>,
    pub next_cursor: Option<String>,
}

/// Query of `GET /v1/rollouts`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
#[serde(deny_unknown_fields)]
pub struct StuckQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_seconds: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

/// `GET /v1/rollouts/stuck`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StuckReport {
    pub threshold_seconds: f64,
    pub scanned_at: String,
    pub stuck_count: u64,
    pub items: Vec<StuckItem>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

/// `POST /v1/rollback/execute`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// One event of the audit store (SPEC §5.4). Field order is the on-disk order; the hash covers
/// the serialised event without its `hash` field (see `autonomy_audit`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    pub hash: String,
}

/// Filters of `GET /v1/audit/events` and `autonomy audit query`. Times are RFC 3339; the
/// range is `start_time <= time < end_time`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
        Ok(AuditFilter {
            event_type: non_empty("event_type", &self.event_type)?,
            actor: non_empty("actor", &self.actor)?,
            resource: non_empty("resource", &self.resource)?,
            outcome,
            start_us,
            end_us,
            limit,
        })
    }
}

impl AuditFilter {
    /// Whether `event` passes every filter but the limit.
    pub fn matches(&self, event: &AuditEvent, time_us: i64) -> bool {
        self.event_type
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

/// `GET /v1/audit/events`: oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEventList {
    pub items: Vec<AuditEvent>,
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    pub operator: String,
    pub role: Role,
}

/// Answer of `POST /v1/tokens`: the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub id: String,
    pub operator: String,
    pub role: Role,
    pub token: String,
    pub created_at: String,
}

/// One token of `GET /v1/tokens` (never the secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub operator: String,
    pub role: Role,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenList {
    pub items: Vec<TokenInfo>,
}

// ---------------------------------------------------------------------------------------------
// Health and errors
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub store: String,
}

/// `GET /v1/ready`: `{"status":"ready"}` once the store answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ready {
    pub status: String,
}

/// `{"error":{"code":…,"message":…}}`, the body of every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    NotFound,
    InvalidRequest,
    Conflict,
    Unauthorized,
    Forbidden,
    PayloadTooLarge,
    UnsupportedMediaType,
    MethodNotAllowed,
    Unprocessable,
    Unavailable,
    Internal,
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

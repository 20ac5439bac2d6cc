//! The control plane's store contract, free of any database: the [`Store`] trait the server is
//! generic over, [`StoreError`] (start-up failures apart from per-request ones), what a write
//! answers ([`Reply`], also what an `Idempotency-Key` replays), who asks ([`Ctx`]) and
//! backend-neutral counters ([`StoreMetrics`]).
//!
//! Every backend keeps the same promises (SPEC §5): an `Ok` answer to a write means the change
//! *and* its audit event are durable; a storage fault is [`StoreError::Unavailable`] and changes
//! nothing; the domain rules come from `autonomy_core::plan`, so two backends cannot disagree
//! about what a request does. The embedded SQLite backend is `autonomy-store-sqlite`.

use std::future::Future;

use autonomy_api::device::{
    AssignmentView, Device, DeviceAssignmentList, DeviceList, DeviceRegistered, EnrollKeyCreated,
    EnrollKeyRequest, EnrollRequest, Enrolled, RegisterDeviceRequest, ReportRequest,
    ReportResponse,
};
pub use autonomy_api::LeaderInfo;
use autonomy_api::{
    AuditEvent, AuditFilter, DeviceState, ExecuteRequest, ExecuteResponse, FieldError, Phase, Role,
    Rollout, StuckCode, StuckReport, TokenCreated, TokenInfo, Verb,
};
pub use autonomy_core::NewPlan;
use serde::{Deserialize, Serialize};

pub mod ids;
pub mod live;

pub use live::{Beat, Live};

/// The wall clock, in microseconds since the Unix epoch (UTC). Stores and the server read the
/// clock; `autonomy-api` and `autonomy-core` never do (callers pass `now`).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The most bytes of stored documents one list page carries (SPEC §5.11); a page that would
/// pass it stops early and gives `next_cursor`.
pub const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// How long an `Idempotency-Key` is remembered.
pub const IDEMPOTENCY_TTL_US: i64 = 24 * 3600 * 1_000_000;

/// The most bytes of answer an idempotency record keeps; a larger answer is replayed as the
/// resource's current state (see [`Reply::Replay`]).
pub const IDEMPOTENCY_MAX_REPLY: usize = 64 * 1024;

/// Why a store operation failed. The server maps each variant to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (duplicate id, invalid transition).
    #[error("{0}")]
    Conflict(String),
    /// The request is well-formed but cannot be accepted (e.g. a reused Idempotency-Key).
    #[error("{0}")]
    Unprocessable(String),
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// A credential the store checks itself (an enroll key) is unknown, spent or expired.
    #[error("{0}")]
    Unauthorized(String),
    /// Storage fault (disk full, I/O error, failed fsync): retry later; nothing changed.
    #[error("{0}")]
    Unavailable(String),
    /// The write queue is full: retry later; nothing changed.
    #[error("the control plane is overloaded: {0} writes are queued")]
    Overloaded(usize),
    #[error("internal store error: {0}")]
    Internal(String),
}

/// Why a store could not be opened: the CP does not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartupError(pub String);

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Who asks, and how to recognise a retry of the same request.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub actor: String,
    pub request_id: String,
    /// `Idempotency-Key` and a fingerprint of the request it was first used with.
    pub idempotency: Option<(String, String)>,
}

impl Ctx {
    /// A request the control plane makes of itself (start-up, readiness probes).
    pub fn system(request_id: &str) -> Self {
        Ctx {
            actor: "system".into(),
            request_id: request_id.into(),
            idempotency: None,
        }
    }
}

/// A successful write, as it is kept for Idempotency-Key replays.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", content = "body", rename_all = "snake_case")]
pub enum Reply {
    Created(Box<Rollout>),
    Transitioned(Box<Rollout>),
    Executed(Box<ExecuteResponse>),
    TokenCreated(TokenCreated),
    TokenRevoked(TokenInfo),
    Audited,
    DeviceRegistered(Box<DeviceRegistered>),
    Device(Box<Device>),
    EnrollKeyCreated(Box<EnrollKeyCreated>),
    Enrolled(Enrolled),
    Report(ReportResponse),
    /// A promoter tick of one plan: how many actions it applied (0: the plan changed since
    /// it was read, or there was nothing to do).
    Promoted {
        actions: u64,
    },
    /// A replica became the leader under this epoch (never answered to a client).
    LeaderAcquired {
        epoch: u64,
    },
    /// Kept by an idempotency record instead of a plan answer over
    /// [`IDEMPOTENCY_MAX_REPLY`]; a replay answers the plan as it is now. Never leaves a store.
    PlanRef {
        id: String,
        created: bool,
    },
}

impl Reply {
    /// What an idempotency record keeps of this answer: never a secret, and at most
    /// [`IDEMPOTENCY_MAX_REPLY`] bytes (a larger plan is kept by id and replayed as it is
    /// now). The same for every backend.
    pub fn kept(&self) -> Reply {
        match self {
            Reply::TokenCreated(t) => Reply::TokenCreated(TokenCreated {
                token: String::new(),
                ..t.clone()
            }),
            Reply::DeviceRegistered(d) => Reply::DeviceRegistered(Box::new(DeviceRegistered {
                token: String::new(),
                ..d.as_ref().clone()
            })),
            Reply::EnrollKeyCreated(k) => Reply::EnrollKeyCreated(Box::new(EnrollKeyCreated {
                key: String::new(),
                ..k.as_ref().clone()
            })),
            Reply::Enrolled(e) => Reply::Enrolled(Enrolled {
                token: String::new(),
                ..e.clone()
            }),
            Reply::Created(p) | Reply::Transitioned(p)
                if serde_json::to_vec(p).map_or(0, |v| v.len()) > IDEMPOTENCY_MAX_REPLY =>
            {
                Reply::PlanRef {
                    id: p.plan.metadata.id.clone(),
                    created: matches!(self, Reply::Created(_)),
                }
            }
            other => other.clone(),
        }
    }
}

/// What a device's poll shows it, read in one snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct PollState {
    /// The device's revision: rises whenever what a poll shows changes.
    pub revision: u64,
    pub assignment: Option<AssignmentView>,
    /// The device's latest assignment, when it is settled and could drift (SPEC §9.3).
    pub drift: Option<DriftCheck>,
    /// Its assignment waits for the device to meet `policy.require` (`waiting_ready`, SPEC
    /// §8.7): the server wakes the promoter on such a poll, so a poll that meets the
    /// requirements is dispatched at once.
    pub waiting_ready: bool,
}

/// A settled assignment a poll's digest is compared with.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftCheck {
    pub plan_id: String,
    pub state: DeviceState,
    pub target_digest: String,
}

/// An engine-driven plan the promoter has something to do for, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromoterDue {
    pub plan_id: String,
    pub generation: u64,
}

/// The device a device token (or, with RBAC off, the `X-Autonomy-Device` header) names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub device_id: String,
}

/// Who a bearer token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub token_id: String,
    pub operator: String,
    pub role: Role,
}

/// Counters every backend keeps, for `/metrics` and readiness.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreMetrics {
    /// Write transactions committed.
    pub commits: u64,
    /// Write requests carried by committed transactions.
    pub committed_requests: u64,
    /// Write transactions that failed to commit (answered 503).
    pub failed_commits: u64,
    /// Time spent committing, including the audit fsync.
    pub commit_micros: u64,
    /// Largest group commit so far.
    pub max_batch: u64,
    /// Audit events committed.
    pub audit_events: u64,
    /// Failed appends to the retained audit store.
    pub audit_export_failures: u64,
    /// Committed audit events not yet appended to the retained audit store (non-zero only
    /// while appends fail).
    pub audit_export_lag: u64,
    /// Write requests queued for the writer now, and how many the queue holds.
    pub queue_depth: u64,
    pub queue_capacity: u64,
    /// Committed transactions by how many requests they carried: `batch_sizes[i]` counts those
    /// of at most [`BATCH_SIZE_BUCKETS`]`[i]` (and more than the bound before); the last slot,
    /// the larger ones.
    pub batch_sizes: [u64; BATCH_SIZE_BUCKETS.len() + 1],
    /// Committed transactions by commit time, audit fsync included, in the same way over
    /// [`COMMIT_MICROS_BUCKETS`].
    pub commit_latencies: [u64; COMMIT_MICROS_BUCKETS.len() + 1],
}

/// Upper bounds of the [`StoreMetrics::batch_sizes`] buckets (requests per commit).
pub const BATCH_SIZE_BUCKETS: [u64; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];
/// Upper bounds of the [`StoreMetrics::commit_latencies`] buckets (microseconds).
pub const COMMIT_MICROS_BUCKETS: [u64; 14] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 10_000_000,
];

/// The slot of `value` in buckets with upper bounds `bounds` (the last slot: above them all).
pub fn bucket_of(bounds: &[u64], value: u64) -> usize {
    bounds.partition_point(|&b| b < value)
}

/// The store the server is generic over. Reads may run concurrently; writes are answered
/// only once durable, with their audit event.
pub trait Store: Send + Sync + 'static {
    /// The backend's name, as `/v1/health` reports it (`sqlite`, `postgres`).
    fn backend(&self) -> &'static str;

    /// Ready means: writes can be made durable now, and reads answer.
    fn ready(&self) -> impl Future<Output = Result<()>> + Send;

    fn metrics(&self) -> StoreMetrics;

    /// Stops accepting writes after finishing the queued ones. Idempotent. An error says the
    /// store did not end well (its writer failed, or the ground under it vanished): the CP
    /// must not report a clean stop.
    fn close(&self) -> Result<()>;

    fn create_plan(&self, ctx: &Ctx, plan: NewPlan) -> impl Future<Output = Result<Reply>> + Send;

    /// An operator verb; `stage` (start only) is the gate the approval is for.
    fn transition(
        &self,
        ctx: &Ctx,
        id: &str,
        verb: Verb,
        reason: String,
        stage: Option<u32>,
    ) -> impl Future<Output = Result<Reply>> + Send;

    /// Executes (or, for a dry run, only evaluates: nothing is written or audited) a recovery
    /// strategy.
    fn execute(&self, ctx: &Ctx, req: ExecuteRequest)
        -> impl Future<Output = Result<Reply>> + Send;

    fn create_token(
        &self,
        ctx: &Ctx,
        operator: String,
        role: Role,
    ) -> impl Future<Output = Result<Reply>> + Send;

    fn revoke_token(&self, ctx: &Ctx, id: &str) -> impl Future<Output = Result<Reply>> + Send;

    /// Records an event that changes nothing (a denied request): a draft from
    /// [`AuditEvent::draft`], stamped with the caller's actor and request id.
    fn audit_only(
        &self,
        ctx: &Ctx,
        event: AuditEvent,
    ) -> impl Future<Output = Result<Reply>> + Send;

    fn get(&self, id: &str) -> impl Future<Output = Result<Rollout>> + Send;

    /// A page of plans after the cursor `after` (0: from the start), and the next cursor.
    fn list(
        &self,
        phase: Option<Phase>,
        limit: usize,
        after: i64,
    ) -> impl Future<Output = Result<(Vec<Rollout>, Option<i64>)>> + Send;

    /// The stuck scan (SPEC §8.6). `promoter_running` says whether a promoter drives the
    /// engine-driven plans; `code` keeps only plans whose main reason it is.
    fn stuck(
        &self,
        threshold_seconds: f64,
        limit: usize,
        code: Option<StuckCode>,
        promoter_running: bool,
    ) -> impl Future<Output = Result<StuckReport>> + Send;

    fn audit_events(
        &self,
        filter: AuditFilter,
    ) -> impl Future<Output = Result<Vec<AuditEvent>>> + Send;

    fn identify(&self, secret: String) -> impl Future<Output = Result<Option<Identity>>> + Send;

    fn tokens(&self) -> impl Future<Output = Result<Vec<TokenInfo>>> + Send;

    /// Plans per phase, for `/metrics`.
    fn phase_counts(&self) -> impl Future<Output = Result<Vec<(String, u64)>>> + Send;

    // --- devices (SPEC §9.1) ---------------------------------------------------------------

    fn register_device(
        &self,
        ctx: &Ctx,
        req: RegisterDeviceRequest,
    ) -> impl Future<Output = Result<Reply>> + Send;

    fn create_enroll_key(
        &self,
        ctx: &Ctx,
        req: EnrollKeyRequest,
    ) -> impl Future<Output = Result<Reply>> + Send;

    /// A device enrolls itself with an enroll key's secret (401 when spent, expired or
    /// unknown: `StoreError::NotFound` is never used for keys).
    fn enroll(
        &self,
        ctx: &Ctx,
        key: String,
        req: EnrollRequest,
    ) -> impl Future<Output = Result<Reply>> + Send;

    /// Replaces the device's labels.
    fn set_device_labels(
        &self,
        ctx: &Ctx,
        id: &str,
        labels: std::collections::BTreeMap<String, String>,
    ) -> impl Future<Output = Result<Reply>> + Send;

    /// Revokes the device's token; its unstarted assignments are cancelled.
    fn revoke_device(&self, ctx: &Ctx, id: &str) -> impl Future<Output = Result<Reply>> + Send;

    fn device(&self, id: &str) -> impl Future<Output = Result<Device>> + Send;

    /// A page of devices matching every label of `selector`, after the id `after`.
    fn devices(
        &self,
        selector: std::collections::BTreeMap<String, String>,
        limit: usize,
        after: Option<String>,
    ) -> impl Future<Output = Result<DeviceList>> + Send;

    /// The device a device token belongs to (`None`: unknown or revoked).
    fn identify_device(
        &self,
        secret: String,
    ) -> impl Future<Output = Result<Option<DeviceIdentity>>> + Send;

    /// With RBAC off: the device named by id, if registered and not revoked.
    fn known_device(
        &self,
        id: String,
    ) -> impl Future<Output = Result<Option<DeviceIdentity>>> + Send;

    // --- the device protocol (SPEC §9.2) ---------------------------------------------------

    /// The device's in-memory state: heartbeats and the waiters of long polls.
    fn live(&self) -> &Live;

    fn poll(&self, device_id: &str) -> impl Future<Output = Result<PollState>> + Send;

    /// Applies a report, answered once durable.
    fn report(
        &self,
        ctx: &Ctx,
        device_id: &str,
        req: ReportRequest,
    ) -> impl Future<Output = Result<Reply>> + Send;

    /// A poll found a settled device on another digest (or back on the target): records the
    /// drift change once, audited.
    fn drift(
        &self,
        ctx: &Ctx,
        device_id: &str,
        plan_id: &str,
        installed_digest: String,
    ) -> impl Future<Output = Result<Reply>> + Send;

    /// `GET /v1/rollouts/{id}/devices`.
    fn rollout_devices(
        &self,
        plan_id: &str,
        state: Option<DeviceState>,
        stage: Option<String>,
        limit: usize,
        after: Option<i64>,
    ) -> impl Future<Output = Result<DeviceAssignmentList>> + Send;

    // --- the promoter (SPEC §8.3) ----------------------------------------------------------

    /// The leader epoch this replica writes promoter actions under; 0 while it is not the
    /// leader (SPEC §7: only the leader promotes).
    fn epoch(&self) -> u64;

    /// Who leads now, as the store records it (`GET /v1/leader`).
    fn leader(&self) -> impl Future<Output = Result<LeaderInfo>> + Send;

    /// Changes whenever this replica's epoch does (it became the leader, or stepped down), so
    /// the promoter can tick at once; `None`: it never changes while the store runs (one
    /// process, one writer).
    fn leadership(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// The engine-driven plans `decide` has something for at `now_us`, read in one snapshot.
    fn promoter_due(
        &self,
        now_us: i64,
        max_dispatch: u64,
    ) -> impl Future<Output = Result<Vec<PromoterDue>>> + Send;

    /// One promoter tick of one plan, in one transaction: decides again on what is stored
    /// now and applies the actions, only if the plan's generation is still `generation` and
    /// `epoch` is still the leader's (else `Promoted { actions: 0 }`).
    fn promote(
        &self,
        ctx: &Ctx,
        plan_id: &str,
        generation: u64,
        epoch: u64,
        max_dispatch: u64,
    ) -> impl Future<Output = Result<Reply>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_falls_in_the_first_bucket_whose_bound_holds_it() {
        let b = [1, 2, 4];
        assert_eq!(bucket_of(&b, 0), 0);
        assert_eq!(bucket_of(&b, 1), 0);
        assert_eq!(bucket_of(&b, 2), 1);
        assert_eq!(bucket_of(&b, 3), 2);
        assert_eq!(bucket_of(&b, 4), 2);
        assert_eq!(bucket_of(&b, 5), 3);
        assert_eq!(
            bucket_of(&BATCH_SIZE_BUCKETS, u64::MAX),
            BATCH_SIZE_BUCKETS.len()
        );
        assert!(COMMIT_MICROS_BUCKETS.windows(2).all(|w| w[0] < w[1]));
        assert!(BATCH_SIZE_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }
}

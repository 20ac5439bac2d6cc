//! The PostgreSQL backend of the control plane's store ([`autonomy_store::Store`], SPEC §7):
//! several CP replicas share one database.
//!
//! - **Writes**: a few writer tasks per replica, each draining a batch of queued requests into
//!   one transaction with a savepoint per request (`writer`). A 2xx means COMMIT returned.
//!   Audited batches lock the chain head, so the one BLAKE3 chain has gap-free `seq` in commit
//!   order across replicas; device reports have a queue of their own and never take it.
//! - **Reads** run on a pool of their own (`read`); polls never write (heartbeats are flushed
//!   once a second per replica).
//! - **The leader** (`leader`): one dedicated, unpooled session holds `pg_try_advisory_lock`;
//!   on acquiring it the replica raises the epoch (audited `leader.acquired`); every promoter
//!   write checks the stored epoch in its own transaction (`FOR SHARE`).
//! - **The mirror** (`mirror`): each replica with an audit dir appends the chain to JSON Lines
//!   segments in the same format as SQLite's, read by `audit query --audit-dir` and
//!   `audit verify`.
//!
//! What a request does is decided by `autonomy_core`; this crate loads, asks the core and
//! persists, like the SQLite backend.

mod engine;
mod leader;
mod mirror;
mod notify;
mod pg;
mod read;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autonomy_api::device::{
    Device, DeviceAssignmentList, DeviceList, EnrollKeyRequest, EnrollRequest,
    RegisterDeviceRequest, ReportRequest,
};
use autonomy_api::{
    AuditEvent, AuditFilter, DeviceState, ExecuteRequest, Phase, Role, Rollout, StuckCode,
    StuckReport, TokenInfo, Verb,
};
use autonomy_store::{
    Ctx, DeviceIdentity, Identity, LeaderInfo, Live, NewPlan, PollState, PromoterDue, Reply,
    Result, StartupError, Store, StoreError, StoreMetrics,
};
use tokio::sync::{mpsc, oneshot, Notify};

pub use pg::redact_url;

/// Where and how to open the store.
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// `postgres://…` (never logged as is: see [`redact_url`]).
    pub url: String,
    /// This replica's name, as `GET /v1/leader` and `leader.acquired` show it.
    pub replica: String,
    /// Where this replica keeps its own files: the first admin token (if this replica made
    /// it), the checkpoint signing key.
    pub data_dir: PathBuf,
    /// The replica's mirror of the audit chain (JSON Lines segments); `None`: no mirror.
    pub audit_dir: Option<PathBuf>,
    pub audit_segment_bytes: u64,
    pub audit_signer: Option<autonomy_audit::Signer>,
    /// Writes waiting beyond this answer `Overloaded`.
    pub queue_depth: usize,
    /// Most requests one transaction carries.
    pub max_batch: usize,
    /// Writer tasks (connections) for audited writes, and for device reports.
    pub writers: usize,
    pub report_writers: usize,
    /// Pooled connections for reads.
    pub read_connections: usize,
    /// Ends a frozen leader's session after this long idle (SPEC §7).
    pub leader_idle_timeout: Duration,
}

impl PgConfig {
    pub fn new(url: String, replica: String, data_dir: PathBuf) -> Self {
        PgConfig {
            url,
            replica,
            data_dir,
            audit_dir: None,
            audit_segment_bytes: autonomy_audit::DEFAULT_SEGMENT_BYTES,
            audit_signer: None,
            queue_depth: 4096,
            max_batch: 256,
            writers: 2,
            // One connection for reports: two would lock counters of several plans in
            // different orders and deadlock each other.
            report_writers: 1,
            read_connections: 16,
            leader_idle_timeout: Duration::from_secs(3),
        }
    }
}

/// What start-up found and did, for the log.
#[derive(Debug, Clone)]
pub struct OpenReport {
    /// The URL without its password.
    pub database: String,
    pub server_version: String,
    pub plans: u64,
    pub audit_last_seq: u64,
    /// Events the mirror appended at start-up.
    pub audit_replayed: u64,
    /// What the mirror's start-up repair cut off (a torn last line), if anything.
    pub audit_repair: Option<String>,
    /// Set when this start created the first admin token.
    pub admin_token_path: Option<PathBuf>,
}

/// Counters the writers keep.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub commits: AtomicU64,
    pub committed_requests: AtomicU64,
    pub failed_commits: AtomicU64,
    pub commit_micros: AtomicU64,
    pub max_batch: AtomicU64,
    pub audit_events: AtomicU64,
    pub audit_export_failures: AtomicU64,
    pub audit_export_lag: AtomicU64,
    pub batch_sizes: [AtomicU64; autonomy_store::BATCH_SIZE_BUCKETS.len() + 1],
    pub commit_latencies: [AtomicU64; autonomy_store::COMMIT_MICROS_BUCKETS.len() + 1],
}

/// What the writers, readers, leader and mirror share.
pub(crate) struct Shared {
    pub metrics: Metrics,
    pub live: Live,
    /// Set when a commit failed; cleared by the next one that succeeds.
    pub storage_fault: AtomicBool,
    /// Wakes the mirror after a commit that recorded events.
    pub mirror_nudge: Notify,
    /// The last time the mirror had every committed event (µs); 0: no mirror.
    pub mirror_caught_up_us: AtomicI64,
    /// The epoch this replica leads under; 0 while it is not the leader.
    pub epoch: AtomicU64,
    /// Told each time this replica becomes the leader (the promoter ticks at once).
    pub leadership: tokio::sync::watch::Sender<u64>,
    pub replica: String,
    /// Set by `close`: the leader and mirror stop.
    pub closing: AtomicBool,
    pub stop: Notify,
    /// Tasks still running (writers, leader, mirror, flusher).
    pub tasks: AtomicUsize,
    /// The leader row as last read (`GET /v1/leader` while the database is unreachable).
    pub last_leader: Mutex<Option<LeaderInfo>>,
    /// Target digest and `reboot_required` per engine-driven plan (immutable once created).
    pub engine_params: Mutex<std::collections::HashMap<String, (String, bool)>>,
}

/// The PostgreSQL store. Cheap to share behind an `Arc`.
pub struct PgStore {
    jobs: Mutex<Option<mpsc::Sender<writer::Job>>>,
    reports: Mutex<Option<mpsc::Sender<writer::Job>>>,
    readers: deadpool_postgres::Pool,
    shared: Arc<Shared>,
    queue_depth: usize,
    has_mirror: bool,
}

/// How long the mirror may lag before `/v1/ready` says 503 (SPEC §7).
const MIRROR_MAX_LAG_US: i64 = 10_000_000;

/// The advisory-lock keys (one namespace: "autonomy" in ASCII, then a number).
pub(crate) const MIGRATION_LOCK: i64 = 0x6175_746f_6e6f_0001;
pub(crate) const LEADER_LOCK: i64 = 0x6175_746f_6e6f_0002;

impl PgStore {
    /// Connects, refuses a database that would lose acknowledged writes (`fsync=off`,
    /// `synchronous_commit=off`), migrates under an advisory lock, starts the writers, the
    /// mirror and the leader election, and makes the first admin token if there is none.
    /// Must run inside a tokio runtime (it spawns the tasks).
    pub async fn open(config: &PgConfig) -> Result<(PgStore, OpenReport), StartupError> {
        let shown = redact_url(&config.url);
        let pg_config = pg::parse_url(&config.url)?;
        let setup = pg::connect(&pg_config)
            .await
            .map_err(|e| StartupError(format!("cannot connect to PostgreSQL at {shown}: {e}")))?;
        let server_version = check_settings(&setup, &shown).await?;
        migrate(&setup)
            .await
            .map_err(|e| StartupError(format!("cannot migrate the database at {shown}: {e}")))?;
        let startup = |what: &str, e: tokio_postgres::Error| {
            StartupError(format!("{what} (database {shown}): {e}"))
        };
        let plans: i64 = setup
            .query_one("SELECT count(*) FROM plans", &[])
            .await
            .map_err(|e| startup("cannot count plans", e))?
            .get(0);
        let audit_last_seq: i64 = setup
            .query_one("SELECT seq FROM audit_head WHERE id = 1", &[])
            .await
            .map_err(|e| startup("cannot read the audit chain head", e))?
            .get(0);

        let shared = Arc::new(Shared {
            metrics: Metrics::default(),
            live: Live::default(),
            storage_fault: AtomicBool::new(false),
            mirror_nudge: Notify::new(),
            mirror_caught_up_us: AtomicI64::new(0),
            epoch: AtomicU64::new(0),
            leadership: tokio::sync::watch::channel(0).0,
            replica: config.replica.clone(),
            closing: AtomicBool::new(false),
            stop: Notify::new(),
            tasks: AtomicUsize::new(0),
            engine_params: Mutex::new(std::collections::HashMap::new()),
            last_leader: Mutex::new(None),
        });
        let writers_pool = pg::pool(
            &pg_config,
            config.writers + config.report_writers + 1,
            "writer",
        )?;
        let readers = pg::pool(&pg_config, config.read_connections, "reader")?;

        // The mirror catches up before the CP serves (a mirror that disagrees with the
        // database refuses the start).
        let (mut audit_replayed, mut audit_repair) = (0, None);
        let mirror = match &config.audit_dir {
            Some(dir) => {
                let (m, replayed, repair) = mirror::Mirror::open(dir, config, &setup).await?;
                (audit_replayed, audit_repair) = (replayed, repair);
                Some(m)
            }
            None => None,
        };

        let (tx, rx) = mpsc::channel(config.queue_depth);
        let (rtx, rrx) = mpsc::channel(config.queue_depth);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let rrx = Arc::new(tokio::sync::Mutex::new(rrx));
        for (n, queue) in [(config.writers, &rx), (config.report_writers, &rrx)] {
            for _ in 0..n.max(1) {
                spawn_task(
                    &shared,
                    writer::run(
                        writers_pool.clone(),
                        queue.clone(),
                        shared.clone(),
                        config.max_batch.max(1),
                    ),
                );
            }
        }
        spawn_task(
            &shared,
            engine::flush_beats_every_second(writers_pool.clone(), shared.clone()),
        );
        let has_mirror = mirror.is_some();
        if let Some(m) = mirror {
            shared
                .mirror_caught_up_us
                .store(autonomy_store::now_us(), Ordering::SeqCst);
            spawn_task(&shared, m.run(readers.clone(), shared.clone()));
        }
        let store = PgStore {
            jobs: Mutex::new(Some(tx.clone())),
            reports: Mutex::new(Some(rtx)),
            readers,
            shared: shared.clone(),
            queue_depth: config.queue_depth,
            has_mirror,
        };
        let admin_token_path = store.bootstrap_admin(&setup, &config.data_dir).await?;
        drop(setup);
        spawn_task(&shared, notify::run(pg_config.clone(), shared.clone()));
        spawn_task(
            &shared,
            leader::run(pg_config, shared.clone(), tx, config.leader_idle_timeout),
        );
        Ok((
            store,
            OpenReport {
                database: shown,
                server_version,
                plans: plans as u64,
                audit_last_seq: audit_last_seq as u64,
                audit_replayed,
                audit_repair,
                admin_token_path,
            },
        ))
    }

    async fn write(&self, ctx: &Ctx, command: writer::Command) -> Result<Reply> {
        let queue = if matches!(command, writer::Command::Report { .. }) {
            &self.reports
        } else {
            &self.jobs
        };
        submit(queue, self.queue_depth, ctx, command).await
    }

    async fn read<T>(
        &self,
        f: impl for<'a> FnOnce(
            &'a read::R,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T>> + Send + 'a>,
        >,
    ) -> Result<T> {
        let conn = self.readers.get().await.map_err(pg::pool_error)?;
        let r = read::R { c: conn };
        f(&r).await
    }

    /// Makes the first admin token, once across replicas (under the migration lock): the
    /// secret goes to `<data-dir>/admin.token` (0600, fsync'd before the hash is committed).
    async fn bootstrap_admin(
        &self,
        setup: &tokio_postgres::Client,
        data_dir: &Path,
    ) -> Result<Option<PathBuf>, StartupError> {
        let err = |e: tokio_postgres::Error| StartupError(format!("cannot bootstrap: {e}"));
        setup
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(err)?;
        let result = async {
            let has: bool = setup
                .query_one("SELECT EXISTS (SELECT 1 FROM tokens)", &[])
                .await
                .map_err(err)?
                .get(0);
            if has {
                return Ok(None);
            }
            let secret = autonomy_store::ids::new_secret();
            std::fs::create_dir_all(data_dir)
                .map_err(|e| StartupError(format!("cannot create {}: {e}", data_dir.display())))?;
            let path = data_dir.join("admin.token");
            autonomy_audit::write_private_file(&path, format!("{secret}\n").as_bytes()).map_err(
                |e| {
                    StartupError(format!(
                        "cannot write the admin token to {}: {e}",
                        path.display()
                    ))
                },
            )?;
            let command = writer::Command::TokenCreate {
                operator: "admin".into(),
                role: Role::Admin,
                secret: Some(secret),
            };
            self.write(&Ctx::system("startup"), command)
                .await
                .map_err(|e| StartupError(format!("cannot create the first admin token: {e}")))?;
            Ok(Some(path))
        }
        .await;
        let _ = setup
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        result
    }
}

fn spawn_task(shared: &Arc<Shared>, task: impl std::future::Future<Output = ()> + Send + 'static) {
    shared.tasks.fetch_add(1, Ordering::SeqCst);
    let s = shared.clone();
    tokio::spawn(async move {
        task.await;
        s.tasks.fetch_sub(1, Ordering::SeqCst);
    });
}

pub(crate) async fn submit(
    queue: &Mutex<Option<mpsc::Sender<writer::Job>>>,
    depth: usize,
    ctx: &Ctx,
    command: writer::Command,
) -> Result<Reply> {
    let (reply_tx, reply_rx) = oneshot::channel();
    let job = writer::Job {
        ctx: ctx.clone(),
        command,
        reply: reply_tx,
    };
    {
        let guard = queue.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = guard.as_ref() else {
            return Err(StoreError::Unavailable(
                "the control plane is shutting down".into(),
            ));
        };
        tx.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Overloaded(depth),
            mpsc::error::TrySendError::Closed(_) => {
                StoreError::Unavailable("the store writers have stopped".into())
            }
        })?;
    }
    reply_rx
        .await
        .map_err(|_| StoreError::Unavailable("the store writer stopped mid-request".into()))?
}

/// Refuses a server that would lose acknowledged writes; the server's version.
async fn check_settings(c: &tokio_postgres::Client, shown: &str) -> Result<String, StartupError> {
    let show = |name: &'static str| async move {
        c.query_one(&format!("SHOW {name}"), &[])
            .await
            .map(|r| r.get::<_, String>(0))
            .map_err(|e| StartupError(format!("cannot read {name} of {shown}: {e}")))
    };
    let version = show("server_version").await?;
    let major: u32 = version
        .split(|ch: char| !ch.is_ascii_digit())
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if major < 14 {
        return Err(StartupError(format!(
            "PostgreSQL {version} at {shown} is too old: the control plane needs 14 or newer"
        )));
    }
    if show("fsync").await? == "off" {
        return Err(StartupError(format!(
            "PostgreSQL at {shown} runs with fsync=off: a crash would lose acknowledged writes; \
             turn fsync on"
        )));
    }
    if show("synchronous_commit").await? == "off" {
        return Err(StartupError(format!(
            "PostgreSQL at {shown} runs with synchronous_commit=off: a crash would lose \
             acknowledged writes; set synchronous_commit=on (for this database or the server)"
        )));
    }
    Ok(version)
}

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_gates.sql")),
];

/// Applies the numbered migrations not yet applied, under an advisory lock: replicas starting
/// together migrate once.
async fn migrate(c: &tokio_postgres::Client) -> std::result::Result<(), tokio_postgres::Error> {
    c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = async {
        c.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, \
             applied_us BIGINT NOT NULL)",
        )
        .await?;
        let current: i64 = c
            .query_one(
                "SELECT coalesce(max(version), 0) FROM schema_migrations",
                &[],
            )
            .await?
            .get(0);
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            c.batch_execute("BEGIN").await?;
            let applied = async {
                c.batch_execute(sql).await?;
                c.execute(
                    "INSERT INTO schema_migrations (version, applied_us) VALUES ($1, $2)",
                    &[version, &autonomy_store::now_us()],
                )
                .await?;
                if *version == 1 {
                    c.execute(
                        "INSERT INTO audit_head (id, seq, hash, time_us) VALUES (1, 0, $1, 0)",
                        &[&autonomy_audit::GENESIS_HASH],
                    )
                    .await?;
                }
                c.batch_execute("COMMIT").await
            }
            .await;
            if applied.is_err() {
                let _ = c.batch_execute("ROLLBACK").await;
                applied?;
            }
        }
        Ok(())
    }
    .await;
    let _ = c
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result
}

/// Boxes a reader closure's future (the readers' calling convention).
macro_rules! reading {
    ($self:ident, |$r:ident| $body:expr) => {
        $self.read(move |$r| Box::pin(async move { $body })).await
    };
}

impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    /// Ready means: the database answers, the last commit did not fail (or a probe commit
    /// passes now), and the mirror is less than 10 s behind.
    async fn ready(&self) -> Result<()> {
        if self.has_mirror {
            let caught_up = self.shared.mirror_caught_up_us.load(Ordering::SeqCst);
            let lag = autonomy_store::now_us() - caught_up;
            if lag > MIRROR_MAX_LAG_US {
                return Err(StoreError::Unavailable(format!(
                    "the audit mirror is {:.1} s behind the database",
                    lag as f64 / 1e6
                )));
            }
        }
        reading!(self, |r| r.ping().await)
    }

    fn metrics(&self) -> StoreMetrics {
        let m = &self.shared.metrics;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let depth = |q: &Mutex<Option<mpsc::Sender<writer::Job>>>| {
            q.lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map_or(0, |tx| (tx.max_capacity() - tx.capacity()) as u64)
        };
        StoreMetrics {
            commits: get(&m.commits),
            committed_requests: get(&m.committed_requests),
            failed_commits: get(&m.failed_commits),
            commit_micros: get(&m.commit_micros),
            max_batch: get(&m.max_batch),
            audit_events: get(&m.audit_events),
            audit_export_failures: get(&m.audit_export_failures),
            audit_export_lag: get(&m.audit_export_lag),
            queue_depth: depth(&self.jobs) + depth(&self.reports),
            queue_capacity: 2 * self.queue_depth as u64,
            batch_sizes: m.batch_sizes.each_ref().map(get),
            commit_latencies: m.commit_latencies.each_ref().map(get),
        }
    }

    /// Stops taking writes, lets the writers finish the queued ones, gives up the leader lock
    /// and stops the mirror (waits up to 10 s). Idempotent.
    fn close(&self) -> Result<()> {
        drop(self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take());
        drop(
            self.reports
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared.stop.notify_waiters();
        self.shared.mirror_nudge.notify_one();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.shared.tasks.load(Ordering::SeqCst) > 0 {
            if std::time::Instant::now() > deadline {
                return Err(StoreError::Unavailable(format!(
                    "{} store task(s) did not stop within 10 s",
                    self.shared.tasks.load(Ordering::SeqCst)
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    async fn create_plan(&self, ctx: &Ctx, plan: NewPlan) -> Result<Reply> {
        self.write(ctx, writer::Command::Create(Box::new(plan)))
            .await
    }

    async fn transition(
        &self,
        ctx: &Ctx,
        id: &str,
        verb: Verb,
        reason: String,
        stage: Option<u32>,
    ) -> Result<Reply> {
        let command = writer::Command::Transition {
            id: id.to_string(),
            verb,
            reason,
            stage,
        };
        self.write(ctx, command).await
    }

    async fn execute(&self, ctx: &Ctx, req: ExecuteRequest) -> Result<Reply> {
        if req.dry_run {
            return reading!(self, |r| r.dry_run(&req).await);
        }
        self.write(ctx, writer::Command::Execute(Box::new(req)))
            .await
    }

    async fn create_token(&self, ctx: &Ctx, operator: String, role: Role) -> Result<Reply> {
        let command = writer::Command::TokenCreate {
            operator,
            role,
            secret: None,
        };
        self.write(ctx, command).await
    }

    async fn revoke_token(&self, ctx: &Ctx, id: &str) -> Result<Reply> {
        self.write(ctx, writer::Command::TokenRevoke { id: id.to_string() })
            .await
    }

    async fn audit_only(&self, ctx: &Ctx, event: AuditEvent) -> Result<Reply> {
        self.write(ctx, writer::Command::AuditOnly(Box::new(event)))
            .await
    }

    async fn get(&self, id: &str) -> Result<Rollout> {
        let id = id.to_string();
        reading!(self, |r| r.get(&id).await)
    }

    async fn list(
        &self,
        phase: Option<Phase>,
        limit: usize,
        after: i64,
    ) -> Result<(Vec<Rollout>, Option<i64>)> {
        reading!(self, |r| r.list(phase, limit, after).await)
    }

    async fn stuck(
        &self,
        threshold_seconds: f64,
        limit: usize,
        code: Option<StuckCode>,
        promoter_running: bool,
    ) -> Result<StuckReport> {
        let shared = self.shared.clone();
        reading!(self, |r| r
            .stuck(
                threshold_seconds,
                limit,
                code,
                promoter_running,
                &shared.live
            )
            .await)
    }

    async fn audit_events(&self, filter: AuditFilter) -> Result<Vec<AuditEvent>> {
        reading!(self, |r| r.audit_events(&filter).await)
    }

    async fn identify(&self, secret: String) -> Result<Option<Identity>> {
        reading!(self, |r| r.identify(&secret).await)
    }

    async fn tokens(&self) -> Result<Vec<TokenInfo>> {
        reading!(self, |r| r.tokens().await)
    }

    async fn phase_counts(&self) -> Result<Vec<(String, u64)>> {
        reading!(self, |r| r.phase_counts().await)
    }

    async fn register_device(&self, ctx: &Ctx, req: RegisterDeviceRequest) -> Result<Reply> {
        self.write(ctx, writer::Command::RegisterDevice(Box::new(req)))
            .await
    }

    async fn create_enroll_key(&self, ctx: &Ctx, req: EnrollKeyRequest) -> Result<Reply> {
        self.write(ctx, writer::Command::CreateEnrollKey(Box::new(req)))
            .await
    }

    async fn enroll(&self, ctx: &Ctx, key: String, req: EnrollRequest) -> Result<Reply> {
        let command = writer::Command::Enroll {
            key,
            req: Box::new(req),
        };
        self.write(ctx, command).await
    }

    async fn set_device_labels(
        &self,
        ctx: &Ctx,
        id: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Reply> {
        let command = writer::Command::DeviceLabels {
            id: id.to_string(),
            labels,
        };
        self.write(ctx, command).await
    }

    async fn revoke_device(&self, ctx: &Ctx, id: &str) -> Result<Reply> {
        self.write(ctx, writer::Command::RevokeDevice { id: id.to_string() })
            .await
    }

    async fn device(&self, id: &str) -> Result<Device> {
        let id = id.to_string();
        reading!(self, |r| r.device(&id).await)
    }

    async fn devices(
        &self,
        selector: BTreeMap<String, String>,
        limit: usize,
        after: Option<String>,
    ) -> Result<DeviceList> {
        reading!(self, |r| r
            .devices(&selector, limit, after.as_deref())
            .await)
    }

    /// No token cache: another replica may have revoked the device (one indexed lookup).
    async fn identify_device(&self, secret: String) -> Result<Option<DeviceIdentity>> {
        reading!(self, |r| r.identify_device(&secret).await)
    }

    async fn known_device(&self, id: String) -> Result<Option<DeviceIdentity>> {
        reading!(self, |r| r.known_device(&id).await)
    }

    fn live(&self) -> &Live {
        &self.shared.live
    }

    async fn poll(&self, device_id: &str) -> Result<PollState> {
        let id = device_id.to_string();
        reading!(self, |r| r.poll(&id).await)
    }

    async fn report(&self, ctx: &Ctx, device_id: &str, req: ReportRequest) -> Result<Reply> {
        let command = writer::Command::Report {
            device_id: device_id.to_string(),
            req: Box::new(req),
        };
        self.write(ctx, command).await
    }

    async fn drift(
        &self,
        ctx: &Ctx,
        device_id: &str,
        plan_id: &str,
        installed_digest: String,
    ) -> Result<Reply> {
        let command = writer::Command::Drift {
            device_id: device_id.to_string(),
            plan_id: plan_id.to_string(),
            digest: installed_digest,
        };
        self.write(ctx, command).await
    }

    async fn rollout_devices(
        &self,
        plan_id: &str,
        state: Option<DeviceState>,
        stage: Option<String>,
        limit: usize,
        after: Option<i64>,
    ) -> Result<DeviceAssignmentList> {
        let id = plan_id.to_string();
        reading!(self, |r| r
            .rollout_devices(&id, state, stage.as_deref(), limit, after)
            .await)
    }

    fn epoch(&self) -> u64 {
        self.shared.epoch.load(Ordering::SeqCst)
    }

    fn leadership(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.shared.leadership.subscribe())
    }

    /// The leader row; when the database cannot be read (a replica cut off from it), the
    /// last one read, with `self: false` — a replica that cannot reach the database never
    /// leads (its session check has stepped it down).
    async fn leader(&self) -> Result<LeaderInfo> {
        let read = reading!(self, |r| r.leader().await);
        let mine = self.epoch();
        let mut last = self
            .shared
            .last_leader
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match read {
            Ok(mut info) => {
                *last = Some(info.clone());
                info.is_self = mine != 0 && mine == info.epoch;
                Ok(info)
            }
            Err(e) => match last.clone() {
                Some(mut info) if mine == 0 => {
                    info.is_self = false;
                    Ok(info)
                }
                _ => Err(e),
            },
        }
    }

    async fn promoter_due(&self, now_us: i64, max_dispatch: u64) -> Result<Vec<PromoterDue>> {
        let shared = self.shared.clone();
        reading!(self, |r| r
            .promoter_due(now_us, max_dispatch, &shared.live)
            .await)
    }

    async fn promote(
        &self,
        ctx: &Ctx,
        plan_id: &str,
        generation: u64,
        epoch: u64,
        max_dispatch: u64,
    ) -> Result<Reply> {
        let command = writer::Command::Promote {
            plan_id: plan_id.to_string(),
            generation,
            epoch,
            max_dispatch,
        };
        self.write(ctx, command).await
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        drop(self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take());
        drop(
            self.reports
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared.stop.notify_waiters();
    }
}

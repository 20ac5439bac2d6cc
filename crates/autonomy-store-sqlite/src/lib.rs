//! The embedded SQLite backend of the control plane's store ([`autonomy_store::Store`]); with
//! the PostgreSQL backend, the only place SQL is written, and the only crate that links rusqlite.
//!
//! [`SqliteStore`]: one dedicated writer thread owns the only write
//! connection and group-commits whatever requests are queued (one `BEGIN IMMEDIATE` … `COMMIT`
//! with `synchronous=FULL`, so one fsync serves many requests), and a small pool of read
//! connections serves reads without ever blocking the writer (WAL). Every change and its audit
//! event are written in the same transaction: the event is sealed into the BLAKE3 hash chain
//! there and kept in `audit_events` (the outbox), then appended to the retained JSON Lines
//! store ([`autonomy_audit::AuditLog`]) and fsync'd before the caller hears back. Start-up
//! replays any outbox rows the retained store is missing, so a SIGKILL between the two writes
//! neither loses nor duplicates an event.
//!
//! A caller gets an answer only after its transaction is durable; a failed commit answers
//! [`StoreError::Unavailable`] and changes nothing. What a request does is decided by
//! `autonomy_core::plan`; this crate loads, asks the core, and persists the answer.

mod engine;
pub mod limit;
mod read;
mod writer;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use std::collections::BTreeMap;

use autonomy_api::device::{
    Device, DeviceAssignmentList, DeviceList, EnrollKeyRequest, EnrollRequest,
    RegisterDeviceRequest, ReportRequest,
};
use autonomy_api::{
    AuditEvent, AuditFilter, DeviceState, ExecuteRequest, Phase, Role, Rollout, StuckCode,
    StuckReport, TokenInfo, Verb,
};
use autonomy_store::{
    Ctx, DeviceIdentity, Identity, Live, NewPlan, PollState, PromoterDue, Reply, Result,
    StartupError, Store, StoreError, StoreMetrics,
};
use tokio::sync::{mpsc, oneshot};

/// Where and how to open the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    pub audit_dir: PathBuf,
    pub audit_segment_bytes: u64,
    /// Writes waiting for the writer beyond this answer `Overloaded`.
    pub queue_depth: usize,
    /// Most requests one transaction carries.
    pub max_batch: usize,
    /// Signs checkpoints of the retained audit store (SPEC §5.9) when set.
    pub audit_signer: Option<autonomy_audit::Signer>,
    /// This CP's name, as `GET /v1/leader` shows it (the one process is always the leader).
    pub replica: String,
}

impl StoreConfig {
    pub fn new(data_dir: PathBuf, audit_dir: PathBuf) -> Self {
        StoreConfig {
            data_dir,
            audit_dir,
            audit_segment_bytes: autonomy_audit::DEFAULT_SEGMENT_BYTES,
            queue_depth: 4096,
            max_batch: 256,
            audit_signer: None,
            replica: "local".into(),
        }
    }
}

/// The writer's counters and flags, shared with the store handle.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub commits: AtomicU64,
    pub committed_requests: AtomicU64,
    pub failed_commits: AtomicU64,
    pub commit_micros: AtomicU64,
    pub max_batch: AtomicU64,
    pub audit_events: AtomicU64,
    pub audit_export_failures: AtomicU64,
    /// Committed audit events waiting for the retained store.
    pub audit_export_lag: AtomicU64,
    pub batch_sizes: [AtomicU64; autonomy_store::BATCH_SIZE_BUCKETS.len() + 1],
    pub commit_latencies: [AtomicU64; autonomy_store::COMMIT_MICROS_BUCKETS.len() + 1],
    /// Set while committed audit events wait to be appended to the retained store.
    pub audit_export_behind: AtomicBool,
    /// Set when a commit failed (disk full, I/O error); cleared by the next successful one.
    pub storage_fault: AtomicBool,
    /// Set for good when the database or audit file was found deleted or replaced.
    pub ground_lost: AtomicBool,
    /// Set when the writer thread ended by panicking.
    pub writer_failed: AtomicBool,
    pub writer_alive: AtomicBool,
}

/// What start-up found and did, for the log.
#[derive(Debug, Clone)]
pub struct OpenReport {
    pub db_path: PathBuf,
    pub plans: u64,
    pub audit_last_seq: u64,
    pub audit_replayed: u64,
    pub audit_repair: Option<String>,
    /// Set when this start created the first admin token.
    pub admin_token_path: Option<PathBuf>,
}

/// The SQLite store. Cheap to share behind an `Arc`.
pub struct SqliteStore {
    jobs: Mutex<Option<mpsc::Sender<writer::Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    checkpointer: Mutex<Option<(std::sync::mpsc::Sender<()>, JoinHandle<()>)>>,
    readers: Arc<read::Readers>,
    metrics: Arc<Metrics>,
    live: Arc<autonomy_store::Live>,
    epoch: u64,
    /// This CP's name and when this start raised the epoch, for `GET /v1/leader`.
    replica: String,
    since_us: i64,
    queue_depth: usize,
    _lock: File,
}

/// The data dir's exclusive lock, from [`SqliteStore::lock`].
pub struct DataDirLock(File);

impl SqliteStore {
    /// Creates the data dir if needed and takes its exclusive lock (`<data-dir>/LOCK`, holding
    /// our pid), so a second control plane on the same dir refuses to start and names the
    /// holder. The lock lasts while the returned [`DataDirLock`] (then the store) lives.
    pub fn lock(data_dir: &Path) -> Result<DataDirLock, StartupError> {
        fs::create_dir_all(data_dir).map_err(|e| {
            StartupError(format!(
                "cannot create data dir {}: {e}",
                data_dir.display()
            ))
        })?;
        lock_data_dir(data_dir).map(DataDirLock)
    }

    /// Opens and checks SQLite under `lock`, applies migrations, opens the retained audit
    /// store, replays any audit events it is missing, starts the writer, and makes the first
    /// admin token if there is none.
    pub fn open(
        config: &StoreConfig,
        lock: DataDirLock,
    ) -> Result<(SqliteStore, OpenReport), StartupError> {
        let DataDirLock(lock) = lock;
        let db_path = config.data_dir.join("autonomy.db");
        let conn = writer::open_write_connection(&db_path)?;
        let mut audit =
            autonomy_audit::AuditLog::open(&config.audit_dir, config.audit_segment_bytes)
                .map_err(|e| StartupError(format!("cannot open the audit store: {e}")))?;
        let audit_repair = audit.repaired().map(str::to_string);
        if let Some(signer) = &config.audit_signer {
            audit
                .set_signer(signer.clone())
                .map_err(|e| StartupError(format!("cannot read the audit checkpoints: {e}")))?;
        }
        let replayed = writer::reconcile_audit(&conn, &mut audit)?;
        // Plans are never deleted, so the largest rowid is the count (and costs no scan).
        let plans: u64 = conn
            .query_row("SELECT coalesce(max(pk), 0) FROM plans", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(|e| StartupError(format!("cannot read {}: {e}", db_path.display())))?
            as u64;
        let has_tokens: bool = conn
            .query_row("SELECT EXISTS (SELECT 1 FROM tokens)", [], |r| r.get(0))
            .map_err(|e| StartupError(format!("cannot read {}: {e}", db_path.display())))?;
        let readers = Arc::new(read::Readers::new(db_path.clone()));
        readers.check()?;
        let epoch: i64 = conn
            .query_row(
                "INSERT INTO leader (id, epoch) VALUES (1, 1) \
                 ON CONFLICT (id) DO UPDATE SET epoch = epoch + 1 RETURNING epoch",
                [],
                |r| r.get(0),
            )
            .map_err(|e| StartupError(format!("cannot raise the leader epoch: {e}")))?;
        let metrics = Arc::new(Metrics::default());
        let live = Arc::new(autonomy_store::Live::default());
        let (tx, rx) = mpsc::channel(config.queue_depth);
        let handle = writer::spawn(
            conn,
            audit,
            rx,
            metrics.clone(),
            config.max_batch,
            live.clone(),
            epoch as u64,
        )?;
        let (stop_tx, stop_rx) = std::sync::mpsc::channel();
        let checkpointer = writer::spawn_checkpointer(&db_path, stop_rx)?;
        let store = SqliteStore {
            jobs: Mutex::new(Some(tx)),
            live,
            epoch: epoch as u64,
            replica: config.replica.clone(),
            since_us: autonomy_store::now_us(),
            writer: Mutex::new(Some(handle)),
            checkpointer: Mutex::new(Some((stop_tx, checkpointer))),
            readers,
            metrics,
            queue_depth: config.queue_depth,
            _lock: lock,
        };
        let audit_last_seq = store
            .readers
            .last_audit_seq()
            .map_err(|e| StartupError(format!("cannot read the audit outbox: {e}")))?;
        let mut report = OpenReport {
            db_path,
            plans,
            audit_last_seq,
            audit_replayed: replayed,
            audit_repair,
            admin_token_path: None,
        };
        if !has_tokens {
            report.admin_token_path = Some(store.bootstrap_admin(&config.data_dir)?);
        }
        Ok((store, report))
    }

    async fn write(&self, ctx: &Ctx, command: writer::Command) -> Result<Reply> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let job = writer::Job {
            ctx: ctx.clone(),
            command,
            reply: reply_tx,
        };
        {
            let guard = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
            let Some(tx) = guard.as_ref() else {
                return Err(StoreError::Unavailable(
                    "the control plane is shutting down".into(),
                ));
            };
            tx.try_send(job).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => StoreError::Overloaded(self.queue_depth),
                mpsc::error::TrySendError::Closed(_) => {
                    StoreError::Unavailable("the store writer has stopped".into())
                }
            })?;
        }
        reply_rx
            .await
            .map_err(|_| StoreError::Unavailable("the store writer stopped mid-request".into()))?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&read::ReadConn) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let readers = self.readers.clone();
        // Never closed, so acquiring only fails if that changes; then read without a permit.
        let permit = readers.permits.clone().acquire_owned().await.ok();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            readers.with(f)
        })
        .await
        .map_err(|e| StoreError::Internal(format!("read task failed: {e}")))?
    }

    /// Makes the first admin token: the secret goes to `<data-dir>/admin.token` (mode 0600,
    /// written and fsync'd before the hashed token is committed, so a crash in between only
    /// means the next start makes another).
    fn bootstrap_admin(&self, data_dir: &Path) -> Result<PathBuf, StartupError> {
        let secret = autonomy_store::ids::new_secret();
        let path = data_dir.join("admin.token");
        autonomy_audit::write_private_file(&path, format!("{secret}\n").as_bytes()).map_err(
            |e| {
                StartupError(format!(
                    "cannot write the admin token to {}: {e}",
                    path.display()
                ))
            },
        )?;
        let ctx = Ctx::system("startup");
        let command = writer::Command::TokenCreate {
            operator: "admin".into(),
            role: Role::Admin,
            secret: Some(secret),
        };
        // Start-up runs before the server exists, so blocking on the writer is fine here.
        let (reply_tx, reply_rx) = oneshot::channel();
        let job = writer::Job {
            ctx,
            command,
            reply: reply_tx,
        };
        let tx = self.jobs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        tx.ok_or_else(|| StartupError("writer stopped".into()))?
            .blocking_send(job)
            .map_err(|_| StartupError("writer stopped".into()))?;
        reply_rx
            .blocking_recv()
            .map_err(|_| StartupError("writer stopped".into()))?
            .map_err(|e| StartupError(format!("cannot create the first admin token: {e}")))?;
        Ok(path)
    }
}

impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    /// Ready means: the writer runs, the audit store is caught up, and the database answers.
    async fn ready(&self) -> Result<()> {
        if !self.metrics.writer_alive.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "the store writer has stopped".into(),
            ));
        }
        let behind = self.metrics.audit_export_behind.load(Ordering::SeqCst);
        if behind || self.metrics.storage_fault.load(Ordering::SeqCst) {
            // After a storage fault only a write can tell whether it has cleared: the probe
            // goes through the writer, which first retries appending the audit events it
            // still owes the retained store, then writes PROBE_BYTES of headroom.
            self.write(&Ctx::system("ready"), writer::Command::Probe)
                .await
                .map_err(|e| match e {
                    StoreError::Unavailable(m) if behind => StoreError::Unavailable(format!(
                        "committed audit events are waiting to be written to the audit store: {m}"
                    )),
                    other => other,
                })?;
        }
        self.read(|r| r.ping()).await
    }

    fn metrics(&self) -> StoreMetrics {
        let m = &self.metrics;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StoreMetrics {
            commits: get(&m.commits),
            committed_requests: get(&m.committed_requests),
            failed_commits: get(&m.failed_commits),
            commit_micros: get(&m.commit_micros),
            max_batch: get(&m.max_batch),
            audit_events: get(&m.audit_events),
            audit_export_failures: get(&m.audit_export_failures),
            audit_export_lag: get(&m.audit_export_lag),
            queue_depth: self
                .jobs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map_or(0, |tx| (tx.max_capacity() - tx.capacity()) as u64),
            queue_capacity: self.queue_depth as u64,
            batch_sizes: m.batch_sizes.each_ref().map(get),
            commit_latencies: m.commit_latencies.each_ref().map(get),
        }
    }

    /// Stops the writer after it has finished every queued write. Idempotent.
    fn close(&self) -> Result<()> {
        drop(self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some((stop, h)) = self
            .checkpointer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = stop.send(());
            let _ = h.join();
        }
        if let Some(h) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            if h.join().is_err() {
                self.metrics.writer_failed.store(true, Ordering::SeqCst);
            }
        }
        if self.metrics.writer_failed.load(Ordering::SeqCst) {
            return Err(StoreError::Internal(
                "the store writer thread failed (see the log above); writes after that were \
                 refused"
                    .into(),
            ));
        }
        if self.metrics.ground_lost.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "the data dir or the audit dir was deleted or replaced while the control plane \
                 ran; writes after that were refused with 503 — restore them before restarting"
                    .into(),
            ));
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
            return self.read(move |r| r.dry_run(&req)).await;
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
        self.read(move |r| r.get(&id)).await
    }

    async fn list(
        &self,
        phase: Option<Phase>,
        limit: usize,
        after: i64,
    ) -> Result<(Vec<Rollout>, Option<i64>)> {
        self.read(move |r| r.list(phase, limit, after)).await
    }

    async fn stuck(
        &self,
        threshold_seconds: f64,
        limit: usize,
        code: Option<StuckCode>,
        promoter_running: bool,
    ) -> Result<StuckReport> {
        let live = self.live.clone();
        self.read(move |r| r.stuck(threshold_seconds, limit, code, promoter_running, &live))
            .await
    }

    async fn audit_events(&self, filter: AuditFilter) -> Result<Vec<AuditEvent>> {
        self.read(move |r| r.audit_events(&filter)).await
    }

    async fn identify(&self, secret: String) -> Result<Option<Identity>> {
        self.read(move |r| r.identify(&secret)).await
    }

    async fn tokens(&self) -> Result<Vec<TokenInfo>> {
        self.read(|r| r.tokens()).await
    }

    async fn phase_counts(&self) -> Result<Vec<(String, u64)>> {
        self.read(|r| r.phase_counts()).await
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
        self.read(move |r| r.device(&id)).await
    }

    async fn devices(
        &self,
        selector: BTreeMap<String, String>,
        limit: usize,
        after: Option<String>,
    ) -> Result<DeviceList> {
        self.read(move |r| r.devices(&selector, limit, after.as_deref()))
            .await
    }

    async fn identify_device(&self, secret: String) -> Result<Option<DeviceIdentity>> {
        let hash = autonomy_store::ids::hash_secret(&secret);
        let seen = match self.live.token_device(&hash) {
            Ok(device_id) => return Ok(Some(DeviceIdentity { device_id })),
            Err(revocations) => revocations,
        };
        let found = self.read(move |r| r.identify_device(&secret)).await?;
        if let Some(who) = &found {
            self.live.remember_token(hash, who.device_id.clone(), seen);
        }
        Ok(found)
    }

    async fn known_device(&self, id: String) -> Result<Option<DeviceIdentity>> {
        // RBAC off: the device is named, not proven; a known name is remembered like a token
        // (and forgotten the same way when the device is revoked).
        let key = format!("id:{id}");
        let seen = match self.live.token_device(&key) {
            Ok(device_id) => return Ok(Some(DeviceIdentity { device_id })),
            Err(revocations) => revocations,
        };
        let found = self.read(move |r| r.known_device(&id)).await?;
        if let Some(who) = &found {
            self.live.remember_token(key, who.device_id.clone(), seen);
        }
        Ok(found)
    }

    fn live(&self) -> &Live {
        &self.live
    }

    async fn poll(&self, device_id: &str) -> Result<PollState> {
        // A device in no plan shows only its revision: answered from memory once read (the
        // writer forgets it whenever a change could alter that), so the fleet's idle polls
        // cost no read (issue 13, F2).
        if let Some(revision) = self.live.idle_poll(device_id) {
            return Ok(PollState {
                revision,
                assignment: None,
                drift: None,
                waiting_ready: false,
            });
        }
        let generation = self.live.idle_poll_generation();
        let id = device_id.to_string();
        let (state, in_plan) = self.read(move |r| r.poll(&id)).await?;
        if !in_plan {
            self.live
                .remember_idle_poll(device_id, state.revision, generation);
        }
        Ok(state)
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
        self.read(move |r| r.rollout_devices(&id, state, stage.as_deref(), limit, after))
            .await
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }

    /// One process, one writer: this CP leads from its start, under the epoch that start
    /// raised.
    async fn leader(&self) -> Result<autonomy_store::LeaderInfo> {
        Ok(autonomy_store::LeaderInfo {
            replica: self.replica.clone(),
            epoch: self.epoch,
            since: autonomy_api::timefmt::format_us(self.since_us),
            is_self: true,
        })
    }

    async fn promoter_due(&self, now_us: i64, max_dispatch: u64) -> Result<Vec<PromoterDue>> {
        let live = self.live.clone();
        self.read(move |r| r.promoter_due(now_us, max_dispatch, &live))
            .await
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

impl Drop for SqliteStore {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// Takes the exclusive lock on `<data-dir>/LOCK` (holding our pid), so that a second control
/// plane on the same data dir refuses to start and names the holder.
fn lock_data_dir(dir: &Path) -> Result<File, StartupError> {
    autonomy_audit::lock_dir(dir, "LOCK").map_err(|e| match e {
        autonomy_audit::AuditError::Locked { pid, .. } => {
            let who = pid.map_or("another process".to_string(), |p| format!("pid {p}"));
            StartupError(format!(
                "data dir {} is in use by another control plane ({who} holds {}); stop it \
                 first or choose another --data-dir",
                dir.display(),
                dir.join("LOCK").display()
            ))
        }
        other => StartupError(format!("cannot lock data dir {}: {other}", dir.display())),
    })
}

/// What the database records of the audit chain, for cross-checking the retained store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbChain {
    /// The newest event the database holds (0 when none).
    pub last_seq: u64,
    /// The hash the database holds for the asked-for seq, if it has that event.
    pub hash_at: Option<String>,
}

/// Reads the audit chain head from `<data-dir>/autonomy.db`, read-only (safe while a CP runs).
/// `autonomy audit verify` uses it to catch what the chain alone cannot: the newest events cut
/// off the end of the retained store.
pub fn audit_chain_in_db(data_dir: &Path, at_seq: u64) -> Result<DbChain> {
    let path = data_dir.join("autonomy.db");
    let conn = rusqlite::Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    let read = |e: rusqlite::Error| {
        StoreError::Unavailable(format!("cannot read {}: {e}", path.display()))
    };
    let last_seq: i64 = conn
        .query_row("SELECT coalesce(max(seq), 0) FROM audit_events", [], |r| {
            r.get(0)
        })
        .map_err(read)?;
    let hash_at: Option<String> = conn
        .query_row(
            "SELECT hash FROM audit_events WHERE seq = ?1",
            [at_seq as i64],
            |r| r.get(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .map_err(read)?;
    Ok(DbChain {
        last_seq: last_seq as u64,
        hash_at,
    })
}

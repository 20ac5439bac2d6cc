//! The writer thread: the only connection that writes, and the group commit.
//!
//! Loop: wait for one job, take every other job already queued (up to `max_batch`), run them
//! all in one `BEGIN IMMEDIATE` transaction (each inside its own savepoint, so one failing
//! job rolls back alone), `COMMIT` (one fsync for the batch under `synchronous=FULL`), append
//! the batch's sealed audit lines to the retained store (one more fsync), then answer every
//! job. Nobody hears "done" before their change and its audit event are on disk.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use autonomy_api::{
    timefmt, AuditEvent, EventType, ExecuteRequest, Outcome, Role, Rollout, Target, TokenCreated,
    TokenInfo, Verb,
};
use autonomy_audit::AuditLog;
use autonomy_core::plan;
use autonomy_store::ids::{hash_secret, new_id, new_secret};
use autonomy_store::{
    now_us, Ctx, NewPlan, Reply, Result, StartupError, StoreError, IDEMPOTENCY_TTL_US,
};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use crate::Metrics;

#[path = "writer_engine.rs"]
mod engine_ops;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../migrations/sqlite/0002_heartbeat.sql")),
    (
        3,
        include_str!("../migrations/sqlite/0003_heartbeat_headroom.sql"),
    ),
    (
        4,
        include_str!("../migrations/sqlite/0004_audit_id_not_indexed.sql"),
    ),
    (
        5,
        include_str!("../migrations/sqlite/0005_idempotency_per_actor.sql"),
    ),
    (6, include_str!("../migrations/sqlite/0006_engine.sql")),
    (7, include_str!("../migrations/sqlite/0007_gates.sql")),
    (8, include_str!("../migrations/sqlite/0008_stuck_quiet.sql")),
];

/// Heartbeats of polls are written at most this often (SPEC §9.2: polls never write).
const BEAT_FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Expired idempotency records are purged at most this often, a bounded number at a time.
const PURGE_EVERY_US: i64 = 60 * 1_000_000;
const PURGE_ROWS: i64 = 1000;

/// The checkpointer folds the WAL into the database this often, off the writer's path.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
/// A WAL longer than this (frames of 4 KiB: ~256 MiB) gets a blocking RESTART checkpoint, so
/// it cannot grow without bound under constant load.
const WAL_RESTART_FRAMES: i64 = 65_536;

/// How much a readiness probe writes after a storage fault: room for a few hundred plans.
const PROBE_BYTES: i64 = 256 * 1024;

pub(crate) struct Job {
    pub ctx: Ctx,
    pub command: Command,
    pub reply: oneshot::Sender<Result<Reply>>,
}

impl Job {
    /// A create without an `Idempotency-Key`: it reads nothing but the plan id and changes
    /// nothing outside the transaction (no long-poll wake-up, no token cache), so the writer
    /// may run a batch of them without per-job savepoints (`Writer::run_jobs`).
    fn is_plain_create(&self) -> bool {
        matches!(self.command, Command::Create(_)) && self.ctx.idempotency.is_none()
    }
}

pub(crate) enum Command {
    Create(Box<NewPlan>),
    Transition {
        id: String,
        verb: Verb,
        reason: String,
        stage: Option<u32>,
    },
    Execute(Box<ExecuteRequest>),
    /// `secret: None` makes a fresh one.
    TokenCreate {
        operator: String,
        role: Role,
        secret: Option<String>,
    },
    TokenRevoke {
        id: String,
    },
    /// A draft event that records no change (a denied request).
    AuditOnly(Box<AuditEvent>),
    /// A write of `PROBE_BYTES` that proves the store has room again (readiness after a
    /// storage fault).
    Probe,
    RegisterDevice(Box<autonomy_api::device::RegisterDeviceRequest>),
    CreateEnrollKey(Box<autonomy_api::device::EnrollKeyRequest>),
    Enroll {
        key: String,
        req: Box<autonomy_api::device::EnrollRequest>,
    },
    DeviceLabels {
        id: String,
        labels: std::collections::BTreeMap<String, String>,
    },
    RevokeDevice {
        id: String,
    },
    Report {
        device_id: String,
        req: Box<autonomy_api::device::ReportRequest>,
    },
    Drift {
        device_id: String,
        plan_id: String,
        digest: String,
    },
    Promote {
        plan_id: String,
        generation: u64,
        epoch: u64,
        max_dispatch: u64,
    },
}

/// Opens the write connection and refuses a database that won't give WAL + synchronous=FULL.
pub(crate) fn open_write_connection(path: &Path) -> Result<Connection, StartupError> {
    let startup =
        |what: &str, e: rusqlite::Error| StartupError(format!("{what} {}: {e}", path.display()));
    make_private(path)?;
    let conn = Connection::open(path).map_err(|e| startup("cannot open database", e))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| startup("cannot configure", e))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| startup("cannot read database", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StartupError(format!(
            "database {} refused WAL mode (journal_mode={mode}); the control plane needs WAL",
            path.display()
        )));
    }
    // temp_store=MEMORY keeps the statement journal of each job's SAVEPOINT in memory (on
    // disk it cost more writes than the WAL itself); checkpoints run on their own thread.
    conn.execute_batch(
        "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA temp_store=MEMORY; \
         PRAGMA wal_autocheckpoint=0;",
    )
    .map_err(|e| startup("cannot configure", e))?;
    let sync: i64 = conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .map_err(|e| startup("cannot configure", e))?;
    if sync != 2 {
        return Err(StartupError(format!(
            "database {} did not accept synchronous=FULL (got {sync})",
            path.display()
        )));
    }
    migrate(&conn).map_err(|e| startup("cannot migrate database", e))?;
    Ok(conn)
}

/// The database and its WAL/SHM files are the operator's alone (mode 0600): creates the
/// database file that way before SQLite opens it (SQLite gives its WAL and SHM files the
/// database's mode), and tightens files an older version left readable.
fn make_private(path: &Path) -> Result<(), StartupError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |p: &Path, e: std::io::Error| {
        StartupError(format!(
            "cannot make {} private (mode 0600): {e}",
            p.display()
        ))
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| err(path, e))?;
    for suffix in ["", "-wal", "-shm"] {
        let p = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::metadata(&p) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| err(&p, e))?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {version}; COMMIT;"
        ))?;
    }
    Ok(())
}

/// Brings the retained audit store level with the database: refuses a retained store that
/// is ahead of, or disagrees with, the database; appends the outbox rows it is missing.
pub(crate) fn reconcile_audit(
    conn: &Connection,
    audit: &mut AuditLog,
) -> Result<u64, StartupError> {
    let db_err = |e: rusqlite::Error| StartupError(format!("cannot read audit outbox: {e}"));
    let db_last: i64 = conn
        .query_row("SELECT coalesce(max(seq), 0) FROM audit_events", [], |r| {
            r.get(0)
        })
        .map_err(db_err)?;
    let log_last = audit.last_seq();
    if log_last as i64 > db_last {
        return Err(StartupError(format!(
            "the audit store {} has events up to seq {log_last} but the database only up to \
             seq {db_last}: the audit dir belongs to another database, or the database was \
             restored from an older copy",
            audit.dir().display()
        )));
    }
    if log_last > 0 {
        let hash: String = conn
            .query_row(
                "SELECT hash FROM audit_events WHERE seq = ?1",
                [log_last as i64],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        if hash != audit.last_hash() {
            return Err(StartupError(format!(
                "the audit store {} disagrees with the database at seq {log_last} (hash {} vs \
                 {hash}): it belongs to another database",
                audit.dir().display(),
                audit.last_hash()
            )));
        }
    }
    // Replay in pages, so a long outbox (say, an audit dir restored from an old backup) is
    // never held in memory at once.
    let mut stmt = conn
        .prepare("SELECT seq, line FROM audit_events WHERE seq > ?1 ORDER BY seq LIMIT 1024")
        .map_err(db_err)?;
    let (mut after, mut replayed) = (log_last, 0u64);
    loop {
        let page = stmt
            .query_map([after as i64], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
            })
            .map_err(db_err)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_err)?;
        let Some(&(last, _)) = page.last() else {
            return Ok(replayed);
        };
        audit
            .append(&page)
            .map_err(|e| StartupError(format!("cannot replay audit events: {e}")))?;
        replayed += page.len() as u64;
        after = last;
    }
}

pub(crate) fn spawn(
    conn: Connection,
    audit: AuditLog,
    rx: mpsc::Receiver<Job>,
    metrics: Arc<Metrics>,
    max_batch: usize,
    live: Arc<autonomy_store::Live>,
    epoch: u64,
) -> Result<JoinHandle<()>, StartupError> {
    let (seq, hash) = conn
        .query_row(
            "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)),
        )
        .optional()
        .map_err(|e| StartupError(format!("cannot read audit chain head: {e}")))?
        .unwrap_or((0, autonomy_audit::GENESIS_HASH.to_string()));
    let last_time_us: i64 = conn
        .query_row(
            "SELECT coalesce(max(time_us), 0) FROM audit_events",
            [],
            |r| r.get(0),
        )
        .map_err(|e| StartupError(format!("cannot read audit chain head: {e}")))?;
    let db_path = conn
        .path()
        .map(std::path::PathBuf::from)
        .ok_or_else(|| StartupError("the database has no file path".into()))?;
    let db_id = {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&db_path)
            .map_err(|e| StartupError(format!("cannot stat {}: {e}", db_path.display())))?;
        (m.dev(), m.ino())
    };
    let mut writer = Writer {
        conn,
        db_path,
        db_id,
        audit,
        chain: Chain { seq, hash },
        pending: Vec::new(),
        metrics,
        last_time_us,
        last_purge_us: 0,
        live,
        woken: Vec::new(),
        joined: Vec::new(),
        revoked: Vec::new(),
        epoch,
        engine_params: std::collections::HashMap::new(),
        shifts: Vec::new(),
        last_beat_flush: Instant::now(),
        timer: tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| StartupError(format!("cannot start the writer's timer: {e}")))?,
    };
    writer.metrics.writer_alive.store(true, Ordering::SeqCst);
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || {
            writer.run(rx, max_batch.max(1));
            writer.audit_checkpoint();
            // Clean stop: fold the WAL into the database so the next start reads less.
            if let Err(e) = writer.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
                tracing::warn!(error = %e, "checkpoint at shutdown failed (harmless: WAL recovery covers it)");
            }
            writer.metrics.writer_alive.store(false, Ordering::SeqCst);
        })
        .map_err(|e| StartupError(format!("cannot start the writer thread: {e}")))
}

#[derive(Clone)]
struct Chain {
    seq: u64,
    hash: String,
}

struct Writer {
    conn: Connection,
    /// The database file and its (device, inode) at open, for [`Writer::check_ground`].
    db_path: std::path::PathBuf,
    db_id: (u64, u64),
    audit: AuditLog,
    chain: Chain,
    /// Sealed lines of this batch (and of earlier batches whose export failed).
    pending: Vec<(u64, String)>,
    metrics: Arc<Metrics>,
    /// Event times never go backwards, even if the clock does: seq order is time order.
    last_time_us: i64,
    /// When expired idempotency records were last purged.
    last_purge_us: i64,
    /// Wakes the idle writer when an audit checkpoint is due.
    timer: tokio::runtime::Runtime,
    /// Heartbeats and long-poll waiters (shared with the store handle).
    live: Arc<autonomy_store::Live>,
    /// Devices whose revision this batch raised: their long polls are woken after commit.
    woken: Vec<String>,
    /// Devices this batch put in a plan (their revision did not rise): their idle polls are
    /// forgotten after commit (`Live::forget_polls`). A rolled-back savepoint leaves its
    /// entries here: forgetting too many is only a read more.
    joined: Vec<String>,
    /// Devices this batch revoked: the token cache forgets them after commit.
    revoked: Vec<String>,
    /// The leader epoch this writer writes under.
    epoch: u64,
    /// Target digest and `reboot_required` per engine-driven plan (immutable once created).
    engine_params: std::collections::HashMap<String, (String, bool)>,
    /// Counter moves of this batch's reports, written once per counter before the commit
    /// (and before any other job, which may read counters): [`Writer::flush_shifts`].
    shifts: Vec<engine_ops::Shift>,
    last_beat_flush: Instant,
}

/// A job's failure, and the audit event that records the rejection (kept even though the
/// job's own changes are rolled back).
struct Failure {
    error: StoreError,
    audit: Option<Box<AuditEvent>>,
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        Failure { error, audit: None }
    }
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure {
            error: sql_error(e),
            audit: None,
        }
    }
}

/// Storage faults are 503s (retry later); anything else is an internal error.
pub(crate) fn sql_error(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::*;
    match e.sqlite_error_code() {
        Some(
            DiskFull | SystemIoFailure | CannotOpen | ReadOnly | DatabaseBusy | DatabaseLocked,
        ) => StoreError::Unavailable(format!("storage fault: {e}")),
        _ => StoreError::Internal(e.to_string()),
    }
}

impl Writer {
    fn run(&mut self, mut rx: mpsc::Receiver<Job>, max_batch: usize) {
        while let Some(first) = self.next_job(&mut rx) {
            let mut batch = vec![first];
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.flush_beats_alone();
            self.run_batch(batch);
        }
    }

    /// Refuses to write when the ground moved: the database file deleted or replaced (with the
    /// data dir, say), or the audit segment gone. SQLite and the audit log would otherwise
    /// keep writing into files that no longer exist and acknowledge it (SPEC §5.7).
    fn check_ground(&self) -> std::result::Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(&self.db_path) {
            Ok(m) if (m.dev(), m.ino()) == self.db_id => {}
            Ok(_) => {
                return Err(format!(
                    "the database {} was replaced by another file while the control plane ran; \
                     no write is accepted — stop the control plane and restore the data dir",
                    self.db_path.display()
                ))
            }
            Err(e) => {
                return Err(format!(
                    "the database {} is gone ({e}): the data dir was deleted or moved while the \
                     control plane ran; no write is accepted — stop the control plane and \
                     restore the data dir",
                    self.db_path.display()
                ))
            }
        }
        self.audit.check_ground().map_err(|e| {
            format!("the audit store cannot be written, so no change is accepted: {e}")
        })
    }

    /// Waits for the next job, writing a signed audit checkpoint whenever one falls due while
    /// waiting (SPEC §5.9); `None` once the queue is closed and empty.
    fn next_job(&mut self, rx: &mut mpsc::Receiver<Job>) -> Option<Job> {
        loop {
            let beats_due = self.last_beat_flush + BEAT_FLUSH_EVERY;
            let checkpoint = self.audit.checkpoint_due();
            let due = checkpoint.map_or(beats_due, |c| c.min(beats_due));
            let waited = self
                .timer
                .block_on(async { tokio::time::timeout_at(due.into(), rx.recv()).await });
            match waited {
                Ok(job) => return job,
                Err(_) => {
                    if checkpoint.is_some_and(|c| c <= Instant::now()) {
                        self.audit_checkpoint();
                    }
                    self.flush_beats_alone();
                }
            }
        }
    }

    /// Writes the polls' heartbeats in a transaction of their own, at most once a second (not
    /// audited: a heartbeat is not a change anybody asked for).
    fn flush_beats_alone(&mut self) {
        if self.last_beat_flush.elapsed() < BEAT_FLUSH_EVERY {
            return;
        }
        self.last_beat_flush = Instant::now();
        // No device polled: no transaction at all (an idle CP writes nothing).
        if !self.live.has_beats() {
            return;
        }
        if self.check_ground().is_err() || self.export().is_err() {
            return;
        }
        if self.conn.execute_batch("BEGIN IMMEDIATE").is_err() {
            return;
        }
        match self.flush_beats() {
            Ok(_) => {
                if let Err(e) = self.conn.execute_batch("COMMIT") {
                    let _ = self.conn.execute_batch("ROLLBACK");
                    tracing::warn!(error = %e, "flushing heartbeats failed; will retry");
                }
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                tracing::warn!(error = %e, "flushing heartbeats failed; will retry");
            }
        }
    }

    fn audit_checkpoint(&mut self) {
        if let Err(e) = self.audit.checkpoint() {
            tracing::error!(error = %e, "writing a signed audit checkpoint failed; will retry");
        }
    }

    fn run_batch(&mut self, batch: Vec<Job>) {
        if let Err(why) = self.check_ground() {
            self.metrics.storage_fault.store(true, Ordering::SeqCst);
            self.metrics.ground_lost.store(true, Ordering::SeqCst);
            tracing::error!(error = %why, jobs = batch.len(), "storage fault; nothing changed");
            for job in batch {
                let _ = job.reply.send(Err(StoreError::Unavailable(why.clone())));
            }
            return;
        }
        // Committed events that could not reach the retained store block new changes until
        // they do: the retained store never falls more than one batch behind.
        if let Err(e) = self.export() {
            let why = format!("the audit store cannot be written, so no change is accepted: {e}");
            for job in batch {
                let _ = job.reply.send(Err(StoreError::Unavailable(why.clone())));
            }
            return;
        }
        let started = Instant::now();
        let chain_before = self.chain.clone();
        let pending_before = self.pending.len();
        let results = match self.run_jobs(&batch) {
            Ok(results) => results,
            Err(e) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                self.chain = chain_before;
                self.pending.truncate(pending_before);
                self.shifts.clear();
                let err = sql_error(e);
                for job in batch {
                    let _ = job
                        .reply
                        .send(Err(StoreError::Unavailable(err.to_string())));
                }
                return;
            }
        };
        // The reports' counter moves go into this same transaction, or nothing commits.
        let committed = self.flush_shifts().and_then(|()| self.commit());
        if let Err(e) = committed {
            let _ = self.conn.execute_batch("ROLLBACK");
            self.chain = chain_before;
            self.pending.clear();
            self.shifts.clear();
            self.woken.clear();
            self.joined.clear();
            self.revoked.clear();
            self.metrics.failed_commits.fetch_add(1, Ordering::Relaxed);
            self.metrics.storage_fault.store(true, Ordering::SeqCst);
            let why = match sql_error(e) {
                StoreError::Unavailable(m) => m,
                other => format!("commit failed: {other}"),
            };
            tracing::error!(error = %why, jobs = batch.len(), "commit failed; nothing changed");
            for job in batch {
                let _ = job.reply.send(Err(StoreError::Unavailable(why.clone())));
            }
            return;
        }
        let m = self.metrics.clone();
        m.commits.fetch_add(1, Ordering::Relaxed);
        // A job that hit a storage fault inside a batch that still committed keeps the flag.
        let faulted = results
            .iter()
            .any(|r| matches!(r, Err(StoreError::Unavailable(_))));
        m.storage_fault.store(faulted, Ordering::SeqCst);
        m.committed_requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        m.max_batch.fetch_max(batch.len() as u64, Ordering::Relaxed);
        m.audit_events
            .fetch_add(self.pending.len() as u64, Ordering::Relaxed);
        // The batch is durable, events included (they are in the database). Now the retained
        // store; if that fails the answers stand (the change did happen) and the events stay
        // queued for the next batch, which will not start until they are written.
        if let Err(e) = self.export() {
            tracing::error!(error = %e, "audit append failed after commit; will retry before the next write");
        }
        let micros = started.elapsed().as_micros() as u64;
        m.commit_micros.fetch_add(micros, Ordering::Relaxed);
        let slot =
            autonomy_store::bucket_of(&autonomy_store::BATCH_SIZE_BUCKETS, batch.len() as u64);
        m.batch_sizes[slot].fetch_add(1, Ordering::Relaxed);
        let slot = autonomy_store::bucket_of(&autonomy_store::COMMIT_MICROS_BUCKETS, micros);
        m.commit_latencies[slot].fetch_add(1, Ordering::Relaxed);
        if !self.woken.is_empty() {
            let woken = std::mem::take(&mut self.woken);
            self.live.wake(woken.iter().map(String::as_str));
        }
        if !self.joined.is_empty() {
            let joined = std::mem::take(&mut self.joined);
            self.live.forget_polls(joined.iter().map(String::as_str));
        }
        // After the commit (a lookup before it would still find the device) and before the
        // answers: a revoked device's token is refused from the next request on.
        for id in std::mem::take(&mut self.revoked) {
            self.live.forget_device(&id);
        }
        for (job, result) in batch.into_iter().zip(results) {
            let _ = job.reply.send(result);
        }
    }

    fn export(&mut self) -> std::result::Result<(), autonomy_audit::AuditError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        match self.audit.append(&self.pending) {
            Ok(()) => {
                self.pending.clear();
                self.metrics.audit_export_lag.store(0, Ordering::Relaxed);
                self.metrics
                    .audit_export_behind
                    .store(false, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => {
                self.metrics
                    .audit_export_lag
                    .store(self.pending.len() as u64, Ordering::Relaxed);
                self.metrics
                    .audit_export_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .audit_export_behind
                    .store(true, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// Runs one transaction-control statement (`BEGIN IMMEDIATE`, `SAVEPOINT job`, …) from
    /// the statement cache: the writer runs several per batch, so they are parsed once.
    fn control(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([]).map(|_| ())
    }

    /// `COMMIT`: the one fsync of the batch (its WAL frames, audit outbox rows included).
    fn commit(&self) -> rusqlite::Result<()> {
        self.control("COMMIT")
    }

    /// Opens the batch's transaction and runs its jobs; `Err` only when `BEGIN` failed
    /// (nothing ran). On `Ok` the transaction is open, holding what the jobs that succeeded
    /// wrote.
    ///
    /// A batch of plain creates (no `Idempotency-Key`) first runs without per-job savepoints:
    /// a savepoint copies every page a job touches for the first time into the statement
    /// journal, and the hot pages (the tables' and the time-ordered indexes' last leaves) are
    /// touched by every job, so per-job savepoints cost a page copy per job per hot page
    /// (RESULTS.md, issue 13). If any of those jobs fails (a duplicate id, a storage fault),
    /// the whole transaction is rolled back, the writer's chain head and pending lines are
    /// put back, and the batch runs again the careful way, each job in its own savepoint:
    /// the outcome is the one the careful way alone gives.
    fn run_jobs(&mut self, batch: &[Job]) -> rusqlite::Result<Vec<Result<Reply>>> {
        self.control("BEGIN IMMEDIATE")?;
        let purged_at = self.last_purge_us;
        if let Err(e) = self.purge_idempotency(now_us()) {
            tracing::warn!(error = %e, "purging expired idempotency records failed; will retry");
        }
        if batch.iter().all(Job::is_plain_create) {
            let (chain, pending) = (self.chain.clone(), self.pending.len());
            let (woken, revoked) = (self.woken.len(), self.revoked.len());
            let mut replies = Vec::with_capacity(batch.len());
            for job in batch {
                match self.apply(&job.ctx, &job.command) {
                    Ok(reply) => replies.push(Ok(reply)),
                    Err(_) => break,
                }
            }
            if replies.len() == batch.len() {
                return Ok(replies);
            }
            drop(replies);
            self.chain = chain;
            self.pending.truncate(pending);
            self.woken.truncate(woken);
            self.revoked.truncate(revoked);
            self.last_purge_us = purged_at;
            self.control("ROLLBACK")?;
            self.control("BEGIN IMMEDIATE")?;
            if let Err(e) = self.purge_idempotency(now_us()) {
                tracing::warn!(error = %e, "purging expired idempotency records failed; will retry");
            }
        }
        Ok(batch.iter().map(|job| self.run_job(job)).collect())
    }

    /// Runs one job in its own savepoint.
    fn run_job(&mut self, job: &Job) -> Result<Reply> {
        let chain_before = self.chain.clone();
        let pending_before = (self.pending.len(), self.shifts.len());
        // A job other than a report may read counters: it sees this batch's reports first
        // (outside its savepoint, so its own failure cannot undo them).
        if !matches!(job.command, Command::Report { .. }) {
            if let Err(e) = self.flush_shifts() {
                return Err(sql_error(e));
            }
        }
        if let Err(e) = self.control("SAVEPOINT job") {
            return Err(sql_error(e));
        }
        match self.apply_idempotent(job) {
            Ok(reply) => match self.control("RELEASE job") {
                Ok(()) => Ok(reply),
                Err(e) => {
                    self.undo(chain_before, pending_before);
                    Err(sql_error(e))
                }
            },
            Err(failure) => {
                self.undo(chain_before, pending_before);
                // The rejection itself is audited, outside the rolled-back savepoint.
                if let Some(event) = failure.audit {
                    if let Err(e) = self.record(&job.ctx, *event) {
                        return Err(e.error);
                    }
                }
                Err(failure.error)
            }
        }
    }

    fn undo(&mut self, chain_before: Chain, (pending_before, shifts_before): (usize, usize)) {
        let _ = self
            .control("ROLLBACK TO job")
            .and_then(|()| self.control("RELEASE job"));
        self.chain = chain_before;
        self.pending.truncate(pending_before);
        self.shifts.truncate(shifts_before);
    }

    /// Runs the job once per (actor, Idempotency-Key) within [`IDEMPOTENCY_TTL_US`]: a retry
    /// gets the first answer back (never a secret: a token creation replays without it), a
    /// reuse with another request is refused.
    fn apply_idempotent(&mut self, job: &Job) -> Result<Reply, Failure> {
        let Some((key, fingerprint)) = &job.ctx.idempotency else {
            return self.apply(&job.ctx, &job.command);
        };
        let actor = &job.ctx.actor;
        let fresh_after = now_us().max(self.last_time_us) - IDEMPOTENCY_TTL_US;
        let seen: Option<(String, String)> = self
            .conn
            .prepare_cached(
                "SELECT fingerprint, reply FROM idempotency_v2 \
                 WHERE key = ?1 AND actor IN (?2, '') AND created_us > ?3 \
                 ORDER BY actor DESC LIMIT 1",
            )?
            .query_row(params![key, actor, fresh_after], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        if let Some((first, reply)) = seen {
            if &first != fingerprint {
                return Err(StoreError::Unprocessable(format!(
                    "Idempotency-Key '{key}' was already used for a different request; use a \
                     new key for a new request"
                ))
                .into());
            }
            let reply: Reply = serde_json::from_str(&reply)
                .map_err(|e| StoreError::Internal(format!("stored idempotent reply: {e}")))?;
            return match reply {
                Reply::PlanRef { id, created } => {
                    let plan = Box::new(self.load_existing(&id)?);
                    Ok(if created {
                        Reply::Created(plan)
                    } else {
                        Reply::Transitioned(plan)
                    })
                }
                other => Ok(other),
            };
        }
        let reply = self.apply(&job.ctx, &job.command)?;
        let text = serde_json::to_string(&reply.kept())
            .map_err(|e| StoreError::Internal(format!("encode reply: {e}")))?;
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO idempotency_v2 (actor, key, fingerprint, reply, created_us) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![actor, key, fingerprint, text, self.last_time_us])?;
        Ok(reply)
    }

    /// Deletes expired idempotency records, a bounded number, at most once a minute.
    fn purge_idempotency(&mut self, now: i64) -> rusqlite::Result<()> {
        if now - self.last_purge_us < PURGE_EVERY_US {
            return Ok(());
        }
        self.last_purge_us = now;
        self.conn
            .prepare_cached(
                "DELETE FROM idempotency_v2 WHERE rowid IN \
                 (SELECT rowid FROM idempotency_v2 WHERE created_us <= ?1 LIMIT ?2)",
            )?
            .execute(params![now - IDEMPOTENCY_TTL_US, PURGE_ROWS])?;
        Ok(())
    }

    fn apply(&mut self, ctx: &Ctx, command: &Command) -> Result<Reply, Failure> {
        let now = now_us().max(self.last_time_us);
        self.last_time_us = now;
        match command {
            Command::Create(plan) => self.create(ctx, plan, now),
            Command::Transition {
                id,
                verb,
                reason,
                stage,
            } => self.transition(ctx, id, *verb, reason, *stage, now),
            Command::Execute(req) => self.execute(ctx, req, now),
            Command::TokenCreate {
                operator,
                role,
                secret,
            } => self.token_create(ctx, operator, *role, secret.clone(), now),
            Command::TokenRevoke { id } => self.token_revoke(ctx, id, now),
            Command::Probe => {
                self.conn
                    .prepare_cached(
                        "INSERT INTO heartbeat (id, at_us, headroom) VALUES (1, ?1, zeroblob(?2)) \
                         ON CONFLICT (id) DO UPDATE SET at_us = excluded.at_us, \
                         headroom = excluded.headroom",
                    )?
                    .execute([now, PROBE_BYTES])?;
                Ok(Reply::Audited)
            }
            Command::AuditOnly(event) => {
                self.record(ctx, event.as_ref().clone())?;
                Ok(Reply::Audited)
            }
            Command::RegisterDevice(req) => self.register_device(ctx, req, now),
            Command::CreateEnrollKey(req) => self.create_enroll_key(ctx, req, now),
            Command::Enroll { key, req } => self.enroll(ctx, key, req, now),
            Command::DeviceLabels { id, labels } => self.set_device_labels(ctx, id, labels),
            Command::RevokeDevice { id } => self.revoke_device(ctx, id, now),
            Command::Report { device_id, req } => self.report(device_id, req, now),
            Command::Drift {
                device_id,
                plan_id,
                digest,
            } => self.drift(ctx, device_id, plan_id, digest, now),
            Command::Promote {
                plan_id,
                generation,
                epoch,
                max_dispatch,
            } => self.promote(ctx, plan_id, *generation, *epoch, *max_dispatch, now),
        }
    }

    /// Stamps `event` (id, time, the caller) and seals it into the chain, then stores it in
    /// the outbox. Its time is the job's `now` (`last_time_us`), so seq order is time order.
    fn record(&mut self, ctx: &Ctx, mut event: AuditEvent) -> Result<String, Failure> {
        let seq = self.chain.seq + 1;
        let time_us = self.last_time_us;
        event.id = new_id("evt");
        event.time = timefmt::format_us(time_us);
        event.actor = ctx.actor.clone();
        event.request_id = ctx.request_id.clone();
        let sealed = autonomy_audit::seal(event, seq, &self.chain.hash);
        let ev = &sealed.event;
        self.conn
            .prepare_cached(
                "INSERT INTO audit_events (seq, id, time_us, event_type, actor, resource, outcome, hash, line) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                seq as i64,
                ev.id,
                time_us,
                ev.event_type,
                ev.actor,
                ev.resource,
                ev.outcome.as_str(),
                ev.hash,
                sealed.line
            ])?;
        self.chain = Chain {
            seq,
            hash: ev.hash.clone(),
        };
        self.pending.push((seq, sealed.line));
        Ok(sealed.event.id)
    }

    fn load(&self, id: &str) -> Result<Option<Rollout>, Failure> {
        let doc: Option<String> = self
            .conn
            .prepare_cached("SELECT doc FROM plans WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?;
        doc.map(|d| {
            serde_json::from_str(&d).map_err(|e| {
                StoreError::Internal(format!("stored plan {id} is unreadable: {e}")).into()
            })
        })
        .transpose()
    }

    fn load_existing(&self, id: &str) -> Result<Rollout, Failure> {
        self.load(id)?
            .ok_or_else(|| StoreError::NotFound(format!("no rollout plan with id '{id}'")).into())
    }

    /// Stores the plan document (`status.rollout` is never stored: reads fill it from the
    /// engine's tables).
    fn save(&self, r: &Rollout, insert: bool) -> Result<(), Failure> {
        let doc = if r.status.rollout.is_some() {
            let mut bare = r.clone();
            bare.status.rollout = None;
            serde_json::to_string(&bare)
        } else {
            serde_json::to_string(r)
        }
        .map_err(|e| StoreError::Internal(e.to_string()))?;
        let s = &r.status;
        let changed = timefmt::parse_rfc3339_us(&s.phase_changed_at).unwrap_or(0);
        let progress = timefmt::parse_rfc3339_us(&s.last_progress_at).unwrap_or(0);
        let sql = if insert {
            "INSERT INTO plans (id, phase, phase_changed_us, last_progress_us, doc) VALUES (?1, ?2, ?3, ?4, ?5)"
        } else {
            "UPDATE plans SET phase = ?2, phase_changed_us = ?3, last_progress_us = ?4, doc = ?5 WHERE id = ?1"
        };
        self.conn.prepare_cached(sql)?.execute(params![
            r.plan.metadata.id,
            s.phase.as_str(),
            changed,
            progress,
            doc
        ])?;
        Ok(())
    }

    fn create(&mut self, ctx: &Ctx, new: &NewPlan, now: i64) -> Result<Reply, Failure> {
        if self.load(&new.id)?.is_some() {
            let refusal = plan::duplicate(&new.id);
            return Err(Failure {
                error: StoreError::Conflict(refusal.why),
                audit: Some(refusal.event),
            });
        }
        let (mut rollout, event) = plan::create(new, &ctx.actor, now);
        self.save(&rollout, true)?;
        self.engine_create(&rollout, now)?;
        self.record(ctx, event)?;
        crate::engine::fill_rollout(&self.conn, &mut rollout)?;
        Ok(Reply::Created(Box::new(rollout)))
    }

    fn transition(
        &mut self,
        ctx: &Ctx,
        id: &str,
        verb: Verb,
        reason: &str,
        stage: Option<u32>,
        now: i64,
    ) -> Result<Reply, Failure> {
        let mut rollout = self.load_existing(id)?;
        let before = rollout.clone();
        match plan::transition(&mut rollout, verb, &ctx.actor, reason, now) {
            Ok(event) => {
                self.engine_verb(&before, &rollout, verb, stage, reason, now)?;
                self.save(&rollout, false)?;
                self.record(ctx, event)?;
                crate::engine::fill_rollout(&self.conn, &mut rollout)?;
                Ok(Reply::Transitioned(Box::new(rollout)))
            }
            Err(refusal) => Err(Failure {
                error: StoreError::Conflict(refusal.why),
                audit: Some(refusal.event),
            }),
        }
    }

    fn execute(&mut self, ctx: &Ctx, req: &ExecuteRequest, now: i64) -> Result<Reply, Failure> {
        let mut rollout = self.load_existing(&req.resource)?;
        let generation = rollout.plan.metadata.generation;
        let (mut response, event) =
            plan::recover(&mut rollout, req, &ctx.actor, new_id("exe"), now);
        if rollout.plan.metadata.generation != generation {
            self.engine_recover(&rollout, req, now)?;
            self.save(&rollout, false)?;
        }
        response.audit_event_id = Some(self.record(ctx, event)?);
        Ok(Reply::Executed(Box::new(response)))
    }

    fn token_create(
        &mut self,
        ctx: &Ctx,
        operator: &str,
        role: Role,
        secret: Option<String>,
        now: i64,
    ) -> Result<Reply, Failure> {
        let secret = secret.unwrap_or_else(new_secret);
        let id = new_id("tok");
        self.conn
            .prepare_cached(
                "INSERT INTO tokens (id, hash, operator, role, created_us) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![id, hash_secret(&secret), operator, role.as_str(), now])?;
        self.record(
            ctx,
            AuditEvent::draft(
                EventType::TokenCreated,
                Target::Token,
                &id,
                Outcome::Success,
                "",
                serde_json::json!({"operator": operator, "role": role}),
            ),
        )?;
        Ok(Reply::TokenCreated(TokenCreated {
            id,
            operator: operator.to_string(),
            role,
            token: secret,
            created_at: timefmt::format_us(now),
        }))
    }

    fn token_revoke(&mut self, ctx: &Ctx, id: &str, now: i64) -> Result<Reply, Failure> {
        let row: Option<(String, String, i64, Option<i64>)> = self
            .conn
            .prepare_cached(
                "SELECT operator, role, created_us, revoked_us FROM tokens WHERE id = ?1",
            )?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()?;
        let Some((operator, role, created, revoked)) = row else {
            return Err(StoreError::NotFound(format!("no token with id '{id}'")).into());
        };
        let role: Role = role.parse().map_err(StoreError::Internal)?;
        let revoked = match revoked {
            Some(at) => at, // already revoked: same answer, no second event
            None => {
                if role == Role::Admin {
                    let admins: i64 = self
                        .conn
                        .prepare_cached(
                            "SELECT count(*) FROM tokens WHERE role = 'admin' AND revoked_us IS NULL",
                        )?
                        .query_row([], |r| r.get(0))?;
                    if admins <= 1 {
                        let why = format!(
                            "token '{id}' is the last active admin token: revoking it would leave \
                             nobody able to manage tokens; create another admin token first"
                        );
                        return Err(Failure {
                            audit: Some(Box::new(AuditEvent::draft(
                                EventType::TokenRevoked,
                                Target::Token,
                                id,
                                Outcome::Rejected,
                                "",
                                serde_json::json!({"operator": operator, "role": role, "why": why}),
                            ))),
                            error: StoreError::Conflict(why),
                        });
                    }
                }
                self.conn
                    .prepare_cached("UPDATE tokens SET revoked_us = ?2 WHERE id = ?1")?
                    .execute(params![id, now])?;
                self.record(
                    ctx,
                    AuditEvent::draft(
                        EventType::TokenRevoked,
                        Target::Token,
                        id,
                        Outcome::Success,
                        "",
                        serde_json::json!({"operator": operator, "role": role}),
                    ),
                )?;
                now
            }
        };
        Ok(Reply::TokenRevoked(TokenInfo {
            id: id.to_string(),
            operator,
            role,
            created_at: timefmt::format_us(created),
            revoked_at: Some(timefmt::format_us(revoked)),
        }))
    }
}

/// Runs PASSIVE checkpoints every [`CHECKPOINT_EVERY`] on its own connection (they never block
/// the writer or readers), escalating to RESTART when the WAL grows past
/// [`WAL_RESTART_FRAMES`]. Stops when `stop` is dropped or sent to.
pub(crate) fn spawn_checkpointer(
    path: &Path,
    stop: std::sync::mpsc::Receiver<()>,
) -> Result<JoinHandle<()>, StartupError> {
    let conn = Connection::open(path)
        .map_err(|e| StartupError(format!("checkpointer: cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| StartupError(format!("checkpointer: {e}")))?;
    std::thread::Builder::new()
        .name("store-checkpointer".into())
        .spawn(move || {
            use std::sync::mpsc::RecvTimeoutError;
            while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
                let frames =
                    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1));
                match frames {
                    Ok(n) if n > WAL_RESTART_FRAMES => {
                        if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(RESTART)") {
                            tracing::warn!(error = %e, "WAL restart checkpoint failed");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; will retry"),
                }
            }
        })
        .map_err(|e| StartupError(format!("cannot start the checkpointer: {e}")))
}

//! The replica's mirror of the audit chain (SPEC §7): the events PostgreSQL holds, appended in
//! seq order to JSON Lines segments in the same format as SQLite's retained store, so
//! `audit query --audit-dir` and `audit verify` read them as they read SQLite's. The mirror
//! follows the database (woken after this replica's commits, and every 250 ms for the other
//! replicas'); `/v1/ready` says 503 while it is more than 10 s behind.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use autonomy_audit::AuditLog;
use autonomy_store::StartupError;

use crate::{PgConfig, Shared};

const FOLLOW_EVERY: Duration = Duration::from_millis(250);
const PAGE: i64 = 1024;

pub(crate) struct Mirror {
    log: Option<AuditLog>,
}

type Page = Vec<(u64, String)>;

impl Mirror {
    /// Opens the mirror and brings it level with the database; refuses a mirror that is ahead
    /// of the database or disagrees with it (it belongs to another database).
    pub(crate) async fn open(
        dir: &Path,
        config: &PgConfig,
        c: &tokio_postgres::Client,
    ) -> Result<(Mirror, u64, Option<String>), StartupError> {
        let mut log = AuditLog::open(dir, config.audit_segment_bytes).map_err(|e| {
            StartupError(format!(
                "cannot open the audit store (this replica's mirror): {e}"
            ))
        })?;
        let repaired = log.repaired().map(str::to_string);
        if let Some(signer) = &config.audit_signer {
            log.set_signer(signer.clone())
                .map_err(|e| StartupError(format!("cannot read the audit checkpoints: {e}")))?;
        }
        let db_err = |e: tokio_postgres::Error| {
            StartupError(format!(
                "cannot read the audit chain from the database: {e}"
            ))
        };
        let db_last: i64 = c
            .query_one("SELECT seq FROM audit_head WHERE id = 1", &[])
            .await
            .map_err(db_err)?
            .get(0);
        let log_last = log.last_seq();
        if log_last as i64 > db_last {
            return Err(StartupError(format!(
                "the audit mirror {} has events up to seq {log_last} but the database only up to \
                 seq {db_last}: the audit dir belongs to another database",
                dir.display()
            )));
        }
        if log_last > 0 {
            let hash: Option<String> = c
                .query_opt(
                    "SELECT hash FROM audit_events WHERE seq = $1",
                    &[&(log_last as i64)],
                )
                .await
                .map_err(db_err)?
                .map(|r| r.get(0));
            if hash.as_deref() != Some(log.last_hash()) {
                return Err(StartupError(format!(
                    "the audit mirror {} disagrees with the database at seq {log_last}: it \
                     belongs to another database",
                    dir.display()
                )));
            }
        }
        let mut mirror = Mirror { log: Some(log) };
        let mut replayed = 0;
        loop {
            let page = next_page(c, mirror.last_seq()).await.map_err(db_err)?;
            if page.is_empty() {
                break;
            }
            replayed += page.len() as u64;
            mirror
                .append(page)
                .await
                .map_err(|e| StartupError(format!("cannot write the audit mirror: {e}")))?;
        }
        Ok((mirror, replayed, repaired))
    }

    fn last_seq(&self) -> u64 {
        self.log.as_ref().map_or(0, AuditLog::last_seq)
    }

    /// Appends (and fsyncs) off the async threads.
    async fn append(&mut self, page: Page) -> Result<(), String> {
        let Some(mut log) = self.log.take() else {
            return Err("the audit mirror was lost after a failed write".into());
        };
        let (log, result) = tokio::task::spawn_blocking(move || {
            let r = log.append(&page).map_err(|e| e.to_string());
            (log, r)
        })
        .await
        .map_err(|e| format!("the audit mirror task failed: {e}"))?;
        self.log = Some(log);
        result
    }

    async fn checkpoint_if_due(&mut self, force: bool) {
        let due = self
            .log
            .as_ref()
            .and_then(AuditLog::checkpoint_due)
            .is_some_and(|t| t <= std::time::Instant::now());
        if !(due || force) {
            return;
        }
        let Some(mut log) = self.log.take() else {
            return;
        };
        if let Ok((log, r)) = tokio::task::spawn_blocking(move || {
            let r = log.checkpoint();
            (log, r)
        })
        .await
        {
            if let Err(e) = r {
                tracing::error!(error = %e, "writing a signed audit checkpoint failed; will retry");
            }
            self.log = Some(log);
        }
    }

    /// Follows the database until the store closes (then catches up once more).
    pub(crate) async fn run(mut self, pool: deadpool_postgres::Pool, shared: Arc<Shared>) {
        let mut failing = false;
        loop {
            let closing = shared.closing.load(Ordering::SeqCst);
            match self.catch_up(&pool).await {
                Ok(()) => {
                    shared
                        .mirror_caught_up_us
                        .store(autonomy_store::now_us(), Ordering::SeqCst);
                    shared.metrics.audit_export_lag.store(0, Ordering::Relaxed);
                    if failing {
                        tracing::info!("the audit mirror caught up again");
                        failing = false;
                    }
                }
                Err(e) => {
                    shared
                        .metrics
                        .audit_export_failures
                        .fetch_add(1, Ordering::Relaxed);
                    if !failing {
                        tracing::error!(error = %e, "the audit mirror cannot follow the database; retrying");
                        failing = true;
                    }
                }
            }
            self.checkpoint_if_due(closing).await;
            if closing {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(FOLLOW_EVERY) => {}
                () = shared.mirror_nudge.notified() => {}
            }
        }
    }

    async fn catch_up(&mut self, pool: &deadpool_postgres::Pool) -> Result<(), String> {
        let c = pool.get().await.map_err(|e| e.to_string())?;
        loop {
            let page = next_page(&c, self.last_seq())
                .await
                .map_err(|e| e.to_string())?;
            let full = page.len() as i64 == PAGE;
            // A mirror dir deleted or replaced under us would swallow appends into unlinked
            // files: refuse, so the lag grows and readiness says so.
            if let Some(log) = &self.log {
                log.check_ground().map_err(|e| e.to_string())?;
            }
            if !page.is_empty() {
                self.append(page).await?;
            }
            if !full {
                return Ok(());
            }
        }
    }
}

async fn next_page(c: &tokio_postgres::Client, after: u64) -> Result<Page, tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT seq, line FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&(after as i64), &PAGE],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, String>(1)))
        .collect())
}

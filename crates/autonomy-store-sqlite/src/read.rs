//! Read connections. WAL lets them read a consistent snapshot while the writer commits, so a
//! read never waits for a write and never blocks one.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use autonomy_api::{
    timefmt, AuditEvent, AuditFilter, ExecuteRequest, Phase, Rollout, StuckCode, StuckReport,
    TokenInfo,
};
use rusqlite::{params_from_iter, Connection, OpenFlags, OptionalExtension};

use autonomy_store::ids::{hash_secret, new_id};
use autonomy_store::{now_us, Identity, Reply, Result, StartupError, StoreError};

use crate::writer::sql_error;

#[path = "read_engine.rs"]
mod engine_reads;

/// Reads that run at once (each on a thread of tokio's blocking pool); more wait for a permit
/// as cheap async tasks. Reads are CPU and page-cache work on a machine of a few cores: more
/// threads than this only add context switches (issue 13, F2: a burst of 10,000 woken long
/// polls grew the blocking pool to 438 threads, each waiting for a read connection).
pub(crate) const READS_AT_ONCE: usize = 32;

/// Idle read connections are kept up to this many: as many as reads can run at once, so a
/// burst of device polls does not open — and prepare its statements on — a fresh connection
/// per read (measured: a quarter of the CP's CPU at 128 concurrent polls with 8 kept).
const POOL: usize = READS_AT_ONCE;

pub(crate) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// [`READS_AT_ONCE`] permits, taken by `SqliteStore::read` before it hands a read to the
    /// blocking pool.
    pub(crate) permits: Arc<tokio::sync::Semaphore>,
}

/// A read connection, lent to one closure at a time.
pub struct ReadConn {
    conn: Connection,
}

impl Readers {
    pub(crate) fn new(path: PathBuf) -> Self {
        Readers {
            path,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(tokio::sync::Semaphore::new(READS_AT_ONCE)),
        }
    }

    fn open(&self) -> Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql_error)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql_error)?;
        // Many pooled readers share the OS page cache; each keeps a small cache of its own
        // (1 MiB, not SQLite's 2 MiB default), so a full pool stays small.
        conn.execute_batch("PRAGMA cache_size = -1024")
            .map_err(sql_error)?;
        Ok(conn)
    }

    /// Opens one connection to prove reads work (start-up).
    pub(crate) fn check(&self) -> Result<(), StartupError> {
        let c = self
            .open()
            .map_err(|e| StartupError(format!("cannot open a read connection: {e}")))?;
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(c);
        Ok(())
    }

    pub(crate) fn with<T>(&self, f: impl FnOnce(&ReadConn) -> Result<T>) -> Result<T> {
        let conn = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => self.open()?,
        };
        let rc = ReadConn { conn };
        let out = f(&rc);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < POOL {
            idle.push(rc.conn);
        }
        out
    }

    pub(crate) fn last_audit_seq(&self) -> Result<u64> {
        self.with(|r| {
            r.conn
                .query_row(
                    "SELECT coalesce(max(seq), 0) FROM audit_events",
                    [],
                    |row| row.get::<_, i64>(0),
                )
                .map(|v| v as u64)
                .map_err(sql_error)
        })
    }
}

fn parse_doc(id: &str, doc: &str) -> Result<Rollout> {
    serde_json::from_str(doc)
        .map_err(|e| StoreError::Internal(format!("stored plan {id} is unreadable: {e}")))
}

impl ReadConn {
    pub(crate) fn ping(&self) -> Result<()> {
        self.conn
            .query_row("SELECT 1", [], |_| Ok(()))
            .map_err(sql_error)
    }

    pub(crate) fn get(&self, id: &str) -> Result<Rollout> {
        let doc: Option<String> = self
            .conn
            .prepare_cached("SELECT doc FROM plans WHERE id = ?1")
            .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
            .map_err(sql_error)?;
        match doc {
            Some(d) => {
                let mut r = parse_doc(id, &d)?;
                crate::engine::fill_rollout(&self.conn, &mut r)?;
                Ok(r)
            }
            None => Err(StoreError::NotFound(format!(
                "no rollout plan with id '{id}'"
            ))),
        }
    }

    /// One page in creation order after `after` (a `pk`); the next cursor when there is more.
    pub(crate) fn list(
        &self,
        phase: Option<Phase>,
        limit: usize,
        after: i64,
    ) -> Result<(Vec<Rollout>, Option<i64>)> {
        let (sql, phase_s) = match phase {
            Some(p) => (
                "SELECT pk, id, doc FROM plans WHERE phase = ?3 AND pk > ?1 ORDER BY pk LIMIT ?2",
                p.as_str(),
            ),
            None => (
                "SELECT pk, id, doc FROM plans WHERE pk > ?1 AND ?3 = ?3 ORDER BY pk LIMIT ?2",
                "",
            ),
        };
        let mut stmt = self.conn.prepare_cached(sql).map_err(sql_error)?;
        let rows = stmt
            .query_map(rusqlite::params![after, (limit + 1) as i64, phase_s], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(sql_error)?;
        let mut more = rows.len() > limit;
        let mut items = Vec::with_capacity(limit.min(rows.len()));
        let (mut last, mut bytes) = (None, 0usize);
        for (pk, id, doc) in rows.into_iter().take(limit) {
            // A page is bounded in bytes too: it always carries at least one plan, and stops
            // before the one that would take it past MAX_PAGE_BYTES.
            if !items.is_empty() && bytes + doc.len() > autonomy_store::MAX_PAGE_BYTES {
                more = true;
                break;
            }
            bytes += doc.len();
            let mut r = parse_doc(&id, &doc)?;
            crate::engine::fill_rollout(&self.conn, &mut r)?;
            items.push(r);
            last = Some(pk);
        }
        Ok((items, if more { last } else { None }))
    }

    /// The stuck scan: record-only plans by staleness (today's rule), engine-driven plans by
    /// their reasons (SPEC §8.6); oldest progress first, `code` filtering by main reason.
    pub(crate) fn stuck(
        &self,
        threshold_seconds: f64,
        limit: usize,
        code: Option<StuckCode>,
        promoter_running: bool,
        live: &autonomy_store::Live,
    ) -> Result<StuckReport> {
        // Staleness is measured on the wall clock (it must survive restarts), but never behind
        // the newest time the store has recorded: a clock stepped backwards cannot make a
        // stale plan look fresh. (A forward step makes plans stale early; see ARCHITECTURE.md.)
        let high_water: i64 = self
            .conn
            .prepare_cached("SELECT coalesce(max(time_us), 0) FROM audit_events")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(sql_error)?;
        let now = now_us().max(high_water);
        let cutoff = now - (threshold_seconds * 1e6) as i64;
        let phases = autonomy_core::STUCK_PHASES.map(|p| p.as_str());
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, phase, phase_changed_us, last_progress_us FROM plans \
                 WHERE phase IN (?1, ?2) AND last_progress_us <= ?3 \
                 AND id NOT IN (SELECT plan_id FROM engine_plans) \
                 ORDER BY last_progress_us LIMIT ?4",
            )
            .map_err(sql_error)?;
        let rows = stmt
            .query_map(
                rusqlite::params![phases[0], phases[1], cutoff, limit as i64],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                },
            )
            .and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(sql_error)?;
        let count = if rows.len() < limit {
            rows.len() as u64
        } else {
            self.conn
                .query_row(
                    "SELECT count(*) FROM plans WHERE phase IN (?1, ?2) AND last_progress_us <= ?3 \
                     AND id NOT IN (SELECT plan_id FROM engine_plans)",
                    rusqlite::params![phases[0], phases[1], cutoff],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(sql_error)? as u64
        };
        let mut record_only = Vec::with_capacity(rows.len());
        for (id, phase, changed, progress) in rows {
            let phase: Phase = phase.parse().map_err(StoreError::Internal)?;
            let item = autonomy_core::engine::record_only_item(id, phase, changed, progress, now);
            record_only.push((progress, item));
        }
        let threshold_us = (threshold_seconds * 1e6) as i64;
        let found = self.engine_stuck(now, threshold_us, promoter_running, live)?;
        Ok(autonomy_core::engine::stuck_report(
            threshold_seconds,
            now,
            limit,
            code,
            record_only,
            count,
            found,
        ))
    }

    pub(crate) fn dry_run(&self, req: &ExecuteRequest) -> Result<Reply> {
        let rollout = self.get(&req.resource)?;
        let from = rollout.status.phase;
        let decision = autonomy_core::recovery(from, req.strategy);
        let mut response = autonomy_core::plan::evaluate(req, from, &decision, new_id("dry"));
        response.generation = Some(rollout.plan.metadata.generation);
        Ok(Reply::Executed(Box::new(response)))
    }

    pub(crate) fn audit_events(&self, f: &AuditFilter) -> Result<Vec<AuditEvent>> {
        let mut sql = String::from("SELECT line FROM audit_events WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut add = |clause: &str, v: rusqlite::types::Value| {
            args.push(v);
            sql.push_str(&format!(" AND {clause} ?{}", args.len()));
        };
        if let Some(t) = &f.event_type {
            add("event_type =", t.clone().into());
        }
        if let Some(a) = &f.actor {
            add("actor =", a.clone().into());
        }
        if let Some(r) = &f.resource {
            add("resource =", r.clone().into());
        }
        if let Some(o) = f.outcome {
            add("outcome =", o.as_str().to_string().into());
        }
        if let Some(s) = f.start_us {
            add("time_us >=", s.into());
        }
        if let Some(e) = f.end_us {
            add("time_us <", e.into());
        }
        if let Some(c) = f.after_seq {
            add("seq >", i64::try_from(c).unwrap_or(i64::MAX).into());
        }
        args.push((f.limit as i64).into());
        // The writer keeps event times monotonic in seq, so (time_us, seq) is seq order, and
        // it lets SQLite walk the (column, time_us) index in order instead of sorting every
        // match before the limit.
        sql.push_str(&format!(" ORDER BY time_us, seq LIMIT ?{}", args.len()));
        let mut stmt = self.conn.prepare_cached(&sql).map_err(sql_error)?;
        let lines = stmt
            .query_map(params_from_iter(args), |r| r.get::<_, String>(0))
            .and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(sql_error)?;
        lines
            .iter()
            .map(|l| {
                autonomy_audit::parse_line(l)
                    .map_err(|e| StoreError::Internal(format!("stored audit event: {e}")))
            })
            .collect()
    }

    pub(crate) fn identify(&self, secret: &str) -> Result<Option<Identity>> {
        let row: Option<(String, String, String)> = self
            .conn
            .prepare_cached(
                "SELECT id, operator, role FROM tokens WHERE hash = ?1 AND revoked_us IS NULL",
            )
            .and_then(|mut s| {
                s.query_row([hash_secret(secret)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
            })
            .map_err(sql_error)?;
        row.map(|(token_id, operator, role)| {
            Ok(Identity {
                token_id,
                operator,
                role: role.parse().map_err(StoreError::Internal)?,
            })
        })
        .transpose()
    }

    pub(crate) fn tokens(&self) -> Result<Vec<TokenInfo>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, operator, role, created_us, revoked_us FROM tokens ORDER BY created_us, id",
            )
            .map_err(sql_error)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                ))
            })
            .and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(sql_error)?;
        rows.into_iter()
            .map(|(id, operator, role, created, revoked)| {
                Ok(TokenInfo {
                    id,
                    operator,
                    role: role.parse().map_err(StoreError::Internal)?,
                    created_at: timefmt::format_us(created),
                    revoked_at: revoked.map(timefmt::format_us),
                })
            })
            .collect()
    }

    pub(crate) fn phase_counts(&self) -> Result<Vec<(String, u64)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT phase, count(*) FROM plans GROUP BY phase ORDER BY phase")
            .map_err(sql_error)?;
        stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })
        .and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sql_error)
    }
}

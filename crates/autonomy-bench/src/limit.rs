//! L, the physical limit: raw SQLite (rusqlite, WAL, `synchronous=FULL`) on the same disk as
//! the CP's data dir. Rows carry a document about the size of a stored plan, so the bytes per
//! commit are comparable to a create through the whole stack.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rusqlite::{params, Connection};
use serde::Serialize;

use crate::stats::{round1, Latency};

/// Bytes of the `doc` column of each row (a stored plan is about this size).
pub const DOC_BYTES: usize = 900;
/// Rows per transaction of the batched measurement.
pub const BATCH_ROWS: usize = 64;
/// Most commits one measurement makes, whatever the duration.
const MAX_COMMITS: u64 = 10_000_000;

#[derive(Debug, Clone, Serialize)]
pub struct LimitReport {
    pub doc_bytes: usize,
    pub journal_mode: String,
    pub synchronous: i64,
    pub single_row: SingleRow,
    pub batched: Batched,
}

#[derive(Debug, Clone, Serialize)]
pub struct SingleRow {
    pub seconds: f64,
    pub commits: u64,
    pub commits_per_sec: f64,
    pub commit_latency: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct Batched {
    pub rows_per_txn: usize,
    pub seconds: f64,
    pub transactions: u64,
    pub rows_per_sec: f64,
    pub txn_latency: Latency,
}

pub fn measure(dir: &Path, seconds: f64) -> anyhow::Result<LimitReport> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("limit.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let conn = Connection::open(&path).with_context(|| format!("open {}", path.display()))?;
    let journal_mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    conn.execute_batch("PRAGMA synchronous=FULL")?;
    let synchronous: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
    if !journal_mode.eq_ignore_ascii_case("wal") || synchronous != 2 {
        bail!("SQLite refused WAL + synchronous=FULL (journal_mode={journal_mode}, synchronous={synchronous})");
    }
    conn.execute_batch(
        "CREATE TABLE rows (pk INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, doc TEXT NOT NULL) STRICT",
    )?;
    let doc = "x".repeat(DOC_BYTES);
    let duration = Duration::from_secs_f64(seconds.max(0.1));
    let mut next = 0u64;

    // Single-row commits.
    let mut lat = Vec::new();
    let started = Instant::now();
    while started.elapsed() < duration && (lat.len() as u64) < MAX_COMMITS {
        let t = Instant::now();
        conn.execute_batch("BEGIN IMMEDIATE")?;
        insert(&conn, &mut next, &doc)?;
        conn.execute_batch("COMMIT")?;
        lat.push(t.elapsed());
    }
    let secs = started.elapsed().as_secs_f64();
    let single_row = SingleRow {
        seconds: round1(secs),
        commits: lat.len() as u64,
        commits_per_sec: round1(lat.len() as f64 / secs),
        commit_latency: Latency::of(&lat),
    };

    // 64-row transactions.
    let mut lat = Vec::new();
    let started = Instant::now();
    while started.elapsed() < duration && (lat.len() as u64) < MAX_COMMITS {
        let t = Instant::now();
        conn.execute_batch("BEGIN IMMEDIATE")?;
        for _ in 0..BATCH_ROWS {
            insert(&conn, &mut next, &doc)?;
        }
        conn.execute_batch("COMMIT")?;
        lat.push(t.elapsed());
    }
    let secs = started.elapsed().as_secs_f64();
    let batched = Batched {
        rows_per_txn: BATCH_ROWS,
        seconds: round1(secs),
        transactions: lat.len() as u64,
        rows_per_sec: round1((lat.len() * BATCH_ROWS) as f64 / secs),
        txn_latency: Latency::of(&lat),
    };
    drop(conn);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(LimitReport {
        doc_bytes: DOC_BYTES,
        journal_mode,
        synchronous,
        single_row,
        batched,
    })
}

fn insert(conn: &Connection, next: &mut u64, doc: &str) -> rusqlite::Result<()> {
    *next += 1;
    conn.prepare_cached("INSERT INTO rows (id, doc) VALUES (?1, ?2)")?
        .execute(params![format!("row-{next:012}"), doc])?;
    Ok(())
}

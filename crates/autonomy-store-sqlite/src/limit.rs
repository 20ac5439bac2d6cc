//! The physical limit the benchmarks compare the CP with: raw SQLite commits (WAL,
//! `synchronous=FULL`) on a given disk, with no server, no audit and no JSON in the way. Lives
//! here because this is the only crate that links SQLite; `autonomy-bench` reports it.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};

/// What one measurement saw: the settings SQLite accepted and every commit's latency.
#[derive(Debug, Clone)]
pub struct RawCommits {
    pub journal_mode: String,
    pub synchronous: i64,
    /// One row per transaction.
    pub single_row: Vec<Duration>,
    pub single_row_seconds: f64,
    /// `batch_rows` rows per transaction.
    pub batched: Vec<Duration>,
    pub batched_seconds: f64,
}

/// Most commits one measurement makes, whatever the duration.
const MAX_COMMITS: usize = 10_000_000;

/// Commits rows carrying a `doc_bytes` document into a fresh `dir/limit.db` for `seconds`
/// one row at a time, then for `seconds` `batch_rows` at a time; removes the database after.
pub fn measure_commits(
    dir: &Path,
    seconds: f64,
    doc_bytes: usize,
    batch_rows: usize,
) -> Result<RawCommits, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join("limit.db");
    let remove = || {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    };
    remove();
    let result = run(&path, seconds, doc_bytes, batch_rows).map_err(|e| e.to_string());
    remove();
    result
}

fn run(
    path: &Path,
    seconds: f64,
    doc_bytes: usize,
    batch_rows: usize,
) -> rusqlite::Result<RawCommits> {
    let conn = Connection::open(path)?;
    let journal_mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    conn.execute_batch("PRAGMA synchronous=FULL")?;
    let synchronous: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
    conn.execute_batch(
        "CREATE TABLE rows (pk INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, doc TEXT NOT NULL) STRICT",
    )?;
    let doc = "x".repeat(doc_bytes);
    let duration = Duration::from_secs_f64(seconds.max(0.1));
    let mut next = 0u64;
    let mut timed = |rows: usize| -> rusqlite::Result<(Vec<Duration>, f64)> {
        let mut lat = Vec::new();
        let started = Instant::now();
        while started.elapsed() < duration && lat.len() < MAX_COMMITS {
            let t = Instant::now();
            conn.execute_batch("BEGIN IMMEDIATE")?;
            for _ in 0..rows {
                next += 1;
                conn.prepare_cached("INSERT INTO rows (id, doc) VALUES (?1, ?2)")?
                    .execute(params![format!("row-{next:012}"), doc])?;
            }
            conn.execute_batch("COMMIT")?;
            lat.push(t.elapsed());
        }
        Ok((lat, started.elapsed().as_secs_f64()))
    };
    let (single_row, single_row_seconds) = timed(1)?;
    let (batched, batched_seconds) = timed(batch_rows.max(1))?;
    Ok(RawCommits {
        journal_mode,
        synchronous,
        single_row,
        single_row_seconds,
        batched,
        batched_seconds,
    })
}

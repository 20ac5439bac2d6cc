//! L, the physical limit: raw SQLite (`autonomy_store_sqlite::limit`, WAL, `synchronous=FULL`) on the same disk as
//! the CP's data dir. Rows carry a document about the size of a stored plan, so the bytes per
//! commit are comparable to a create through the whole stack.

use std::path::Path;

use anyhow::bail;
use serde::Serialize;

use crate::stats::{round1, Latency};

/// Bytes of the `doc` column of each row (a stored plan is about this size).
pub const DOC_BYTES: usize = 900;
/// Rows per transaction of the batched measurement.
pub const BATCH_ROWS: usize = 64;

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
    let raw = autonomy_store_sqlite::limit::measure_commits(dir, seconds, DOC_BYTES, BATCH_ROWS)
        .map_err(anyhow::Error::msg)?;
    if !raw.journal_mode.eq_ignore_ascii_case("wal") || raw.synchronous != 2 {
        bail!(
            "SQLite refused WAL + synchronous=FULL (journal_mode={}, synchronous={})",
            raw.journal_mode,
            raw.synchronous
        );
    }
    let single_row = SingleRow {
        seconds: round1(raw.single_row_seconds),
        commits: raw.single_row.len() as u64,
        commits_per_sec: round1(raw.single_row.len() as f64 / raw.single_row_seconds),
        commit_latency: Latency::of(&raw.single_row),
    };
    let batched = Batched {
        rows_per_txn: BATCH_ROWS,
        seconds: round1(raw.batched_seconds),
        transactions: raw.batched.len() as u64,
        rows_per_sec: round1((raw.batched.len() * BATCH_ROWS) as f64 / raw.batched_seconds),
        txn_latency: Latency::of(&raw.batched),
    };
    Ok(LimitReport {
        doc_bytes: DOC_BYTES,
        journal_mode: raw.journal_mode,
        synchronous: raw.synchronous,
        single_row,
        batched,
    })
}

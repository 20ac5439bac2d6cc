//! SQL of the rollout engine shared by the writers and the readers: engine records,
//! assignments, per-stage counters and the snapshot a promoter decision reads, and the
//! once-a-second flush of the polls' heartbeats. The rules are `autonomy_core::engine` and
//! `autonomy_core::device`; this module only loads and stores.
//!
//! Errors are [`SqlError`]: a database error is kept whole, so a writer can still tell one
//! worth a second try (a deadlock, a serialization failure) from the rest; `?` turns it into a
//! [`StoreError`] in a reader and into a [`Failure`] in a writer.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use autonomy_api::device::{Device, ReportState};
use autonomy_api::{timefmt, DeviceState, Rollout};
use autonomy_core::device::Assignment;
use autonomy_core::engine::{gates, EnginePlan, GateDevice, InFlight, StageCounters};
use autonomy_store::{Live, Result, StoreError};
use deadpool_postgres::{ClientWrapper, Pool};
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::Row;

use crate::pg::{db_error, pool_error};
use crate::writer::Failure;
use crate::Shared;

/// The in-flight states, as SQL text (the partial conditions the queries share; the partial
/// indexes `assignments_in_flight*` carry the same list).
pub(crate) const IN_FLIGHT_SQL: &str =
    "('dispatched','downloading','installing','rebooting','verifying')";

/// Most assignments one activation statement inserts.
const INSERT_CHUNK: usize = 2000;

/// How often the polls' heartbeats are written.
const BEAT_FLUSH_EVERY: Duration = Duration::from_secs(1);

/// A failed engine query: the database's error, whole, or what the stored data made of it.
#[derive(Debug)]
pub(crate) enum SqlError {
    Db(tokio_postgres::Error),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for SqlError {
    fn from(e: tokio_postgres::Error) -> Self {
        SqlError::Db(e)
    }
}

impl From<StoreError> for SqlError {
    fn from(e: StoreError) -> Self {
        SqlError::Store(e)
    }
}

impl From<SqlError> for StoreError {
    fn from(e: SqlError) -> Self {
        match e {
            SqlError::Db(e) => db_error(e),
            SqlError::Store(e) => e,
        }
    }
}

impl From<SqlError> for Failure {
    /// Keeps whether the database error may pass on a second try.
    fn from(e: SqlError) -> Self {
        match e {
            SqlError::Db(e) => Failure::from(e),
            SqlError::Store(e) => Failure::from(e),
        }
    }
}

pub(crate) type Sql<T> = Result<T, SqlError>;

fn internal(what: &str, e: impl std::fmt::Display) -> SqlError {
    SqlError::Store(StoreError::Internal(format!(
        "stored {what} is unreadable: {e}"
    )))
}

/// Column `i` of `row`; a value of another type than expected is an internal error (never a
/// panic, never a 503).
pub(crate) fn col<'a, T: FromSql<'a>>(row: &'a Row, i: usize) -> Sql<T> {
    row.try_get(i).map_err(|e| internal("row", e))
}

/// Every row `sql` answers (a cached statement).
pub(crate) async fn rows(
    c: &ClientWrapper,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Sql<Vec<Row>> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query(&stmt, params).await?)
}

/// The row `sql` answers, if any (a cached statement).
pub(crate) async fn row(
    c: &ClientWrapper,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Sql<Option<Row>> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&stmt, params).await?)
}

/// Runs `sql` (a cached statement); the rows it changed.
pub(crate) async fn exec(c: &ClientWrapper, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Sql<u64> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.execute(&stmt, params).await?)
}

/// The engine record of a plan (`None`: a record-only plan).
pub(crate) async fn load_engine(c: &ClientWrapper, plan_id: &str) -> Sql<Option<EnginePlan>> {
    let found = row(
        c,
        "SELECT doc FROM engine_plans WHERE plan_id = $1",
        &[&plan_id],
    )
    .await?;
    found.map(|r| parse_engine(col(&r, 0)?)).transpose()
}

/// An engine record from its stored text.
pub(crate) fn parse_engine(doc: &str) -> Sql<EnginePlan> {
    serde_json::from_str(doc).map_err(|e| internal("engine record", e))
}

pub(crate) async fn save_engine(c: &ClientWrapper, plan_id: &str, e: &EnginePlan) -> Sql<()> {
    let doc = serde_json::to_string(e).map_err(|e| StoreError::Internal(e.to_string()))?;
    let timeout = i64::try_from(e.policy.device_timeout_seconds).unwrap_or(i64::MAX);
    exec(
        c,
        "INSERT INTO engine_plans (plan_id, target_digest, artifact_ref, reboot_required, \
         device_timeout_s, doc) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (plan_id) DO UPDATE SET doc = excluded.doc",
        &[
            &plan_id,
            &e.target_digest,
            &e.artifact_ref,
            &e.policy.reboot_required,
            &timeout,
            &doc,
        ],
    )
    .await?;
    Ok(())
}

/// The per-stage counters of a plan with `stages` stages.
pub(crate) async fn counters(
    c: &ClientWrapper,
    plan_id: &str,
    stages: usize,
) -> Sql<Vec<StageCounters>> {
    counters_of(c, plan_id, stages, false).await
}

/// The per-stage counters; `lock`: their rows are locked until the transaction ends (in
/// stage, state order), so a report on another connection waits for the decision that read
/// them (SPEC §7).
pub(crate) async fn counters_of(
    c: &ClientWrapper,
    plan_id: &str,
    stages: usize,
    lock: bool,
) -> Sql<Vec<StageCounters>> {
    let sql = if lock {
        "SELECT stage, state, n FROM stage_counters WHERE plan_id = $1 \
         ORDER BY stage, state FOR UPDATE"
    } else {
        "SELECT stage, state, n FROM stage_counters WHERE plan_id = $1"
    };
    let mut out = vec![StageCounters::default(); stages];
    for r in rows(c, sql, &[&plan_id]).await? {
        let stage: i64 = col(&r, 0)?;
        let state: DeviceState = col::<&str>(&r, 1)?
            .parse()
            .map_err(|e| internal("counter", e))?;
        let n: i64 = col(&r, 2)?;
        if let Some(c) = usize::try_from(stage).ok().and_then(|s| out.get_mut(s)) {
            *c.counts.entry(state).or_default() += n.max(0) as u64;
        }
    }
    Ok(out)
}

/// Failed devices per stage with automatic retries left (`attempt ≤ max_device_retries`).
pub(crate) async fn retryable(
    c: &ClientWrapper,
    plan_id: &str,
    max_retries: u32,
    counters: &mut [StageCounters],
) -> Sql<()> {
    if max_retries == 0 {
        return Ok(());
    }
    let found = rows(
        c,
        "SELECT stage, count(*) FROM assignments WHERE plan_id = $1 AND state = 'failed' \
         AND attempt <= $2 GROUP BY stage",
        &[&plan_id, &i64::from(max_retries)],
    )
    .await?;
    for r in found {
        let stage: i64 = col(&r, 0)?;
        let n: i64 = col(&r, 1)?;
        if let Some(c) = usize::try_from(stage)
            .ok()
            .and_then(|s| counters.get_mut(s))
        {
            c.retryable = n.max(0) as u64;
        }
    }
    Ok(())
}

/// In-flight devices dispatched at or before `cutoff_us` (the ones that may be overdue), at
/// most `limit`.
pub(crate) async fn overdue(
    c: &ClientWrapper,
    plan_id: &str,
    cutoff_us: i64,
    limit: u64,
) -> Sql<Vec<InFlight>> {
    let sql = format!(
        "SELECT device_id, stage, state, dispatched_at_us FROM assignments \
         WHERE plan_id = $1 AND state IN {IN_FLIGHT_SQL} AND dispatched_at_us <= $2 \
         ORDER BY dispatched_at_us LIMIT $3"
    );
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut out = Vec::new();
    for r in rows(c, &sql, &[&plan_id, &cutoff_us, &limit]).await? {
        let stage: i64 = col(&r, 1)?;
        out.push(InFlight {
            device_id: col(&r, 0)?,
            stage: usize::try_from(stage).map_err(|e| internal("assignment", e))?,
            state: col::<&str>(&r, 2)?
                .parse()
                .map_err(|e| internal("assignment", e))?,
            dispatched_at_us: col(&r, 3)?,
        });
    }
    Ok(out)
}

/// Every assignment of a plan in its order with its device's labels and conditions (the
/// conditions of an unflushed poll in `live` win over the stored ones), for the gates of
/// SPEC §8.7.
pub(crate) async fn gate_devices(
    c: &ClientWrapper,
    plan_id: &str,
    live: &Live,
) -> Sql<Vec<GateDevice>> {
    let found = rows(
        c,
        "SELECT a.device_id, a.stage, a.state, d.labels::text, d.conditions FROM assignments a \
         JOIN devices d ON d.id = a.device_id WHERE a.plan_id = $1 ORDER BY a.ord",
        &[&plan_id],
    )
    .await?;
    let mut out = Vec::with_capacity(found.len());
    for r in found {
        let device_id: String = col(&r, 0)?;
        let stage: i64 = col(&r, 1)?;
        let conditions = match live.pending_conditions(&device_id) {
            Some(c) => c,
            None => conditions_from(col(&r, 4)?)?,
        };
        out.push(GateDevice {
            stage: usize::try_from(stage).map_err(|e| internal("assignment", e))?,
            state: col::<&str>(&r, 2)?
                .parse()
                .map_err(|e| internal("assignment", e))?,
            labels: labels_from(col(&r, 3)?)?,
            conditions,
            device_id,
        });
    }
    Ok(out)
}

/// The stored conditions of a device (`NULL`: none).
pub(crate) fn conditions_from(text: Option<&str>) -> Sql<BTreeMap<String, serde_json::Value>> {
    text.map_or(Ok(BTreeMap::new()), |t| {
        serde_json::from_str(t).map_err(|e| internal("device conditions", e))
    })
}

/// The conditions as the flush passes them: a JSON object, or `''` when there are none (stored
/// as `NULL`).
pub(crate) fn conditions_text(c: &BTreeMap<String, serde_json::Value>) -> String {
    if c.is_empty() {
        String::new()
    } else {
        serde_json::to_string(c).unwrap_or_else(|_| "{}".into())
    }
}

/// Everything `decide` reads for one plan, in the caller's snapshot.
pub(crate) struct Snapshot {
    pub engine: EnginePlan,
    pub counters: Vec<StageCounters>,
    pub in_flight: Vec<InFlight>,
    /// The plan's [`GateDevice`]s when its policy has a budget or requirements; else empty.
    pub gate_devices: Vec<GateDevice>,
}

/// What `decide` reads for one plan. `lock` (a writer's decision): the plan's counters are
/// locked first, so reports committed on other connections are all in what it reads and
/// later ones wait for its commit.
pub(crate) async fn snapshot(
    c: &ClientWrapper,
    plan_id: &str,
    engine: EnginePlan,
    now_us: i64,
    lock: bool,
    live: &Live,
) -> Sql<Snapshot> {
    let mut counters = counters_of(c, plan_id, engine.stages.len(), lock).await?;
    retryable(c, plan_id, engine.policy.max_device_retries, &mut counters).await?;
    let counters = engine.with_accepted(counters);
    let timeout_us = i64::try_from(engine.policy.device_timeout_seconds)
        .unwrap_or(i64::MAX)
        .saturating_mul(1_000_000);
    let in_flight = overdue(c, plan_id, now_us.saturating_sub(timeout_us), 1000).await?;
    let gate_devices = if gates::needs_devices(&engine.policy) {
        gate_devices(c, plan_id, live).await?
    } else {
        Vec::new()
    };
    Ok(Snapshot {
        engine,
        counters,
        in_flight,
        gate_devices,
    })
}

/// Fills `status.rollout` of an engine-driven plan from its record and counters.
pub(crate) async fn fill_rollout(c: &ClientWrapper, r: &mut Rollout) -> Sql<()> {
    let id = r.plan.metadata.id.clone();
    if let Some(engine) = load_engine(c, &id).await? {
        let counters = counters(c, &id, engine.stages.len()).await?;
        r.status.rollout = Some(engine.status(r.status.phase, &counters));
    }
    Ok(())
}

const ASSIGNMENT_COLUMNS: &str = "device_id, plan_id, state, attempt, last_seq, step, \
    boot_id_at_install, installed_digest, previous_digest, dispatched_at_us, updated_at_us, \
    state_since_us, message, stage, ord";

/// The columns of an assignment, for `SELECT {ASSIGNMENT_COLUMNS}` (the record, its stage
/// and its order).
pub(crate) fn assignment_columns() -> &'static str {
    ASSIGNMENT_COLUMNS
}

/// An assignment from the first 15 columns of `r` ([`assignment_columns`]), with its stage
/// and order.
pub(crate) fn assignment_from_row(r: &Row) -> Sql<(Assignment, u32, i64)> {
    let bad = |e: String| internal("assignment", e);
    let step: Option<&str> = col(r, 5)?;
    let attempt: i64 = col(r, 3)?;
    let last_seq: i64 = col(r, 4)?;
    let stage: i64 = col(r, 13)?;
    Ok((
        Assignment {
            device_id: col(r, 0)?,
            plan_id: col(r, 1)?,
            state: col::<&str>(r, 2)?.parse().map_err(bad)?,
            attempt: u32::try_from(attempt).map_err(|e| bad(e.to_string()))?,
            last_seq: u64::try_from(last_seq).map_err(|e| bad(e.to_string()))?,
            step: step
                .map(|s| s.parse::<ReportState>())
                .transpose()
                .map_err(bad)?,
            boot_id_at_install: col(r, 6)?,
            installed_digest: col(r, 7)?,
            previous_digest: col(r, 8)?,
            dispatched_at_us: col(r, 9)?,
            updated_at_us: col(r, 10)?,
            state_since_us: col(r, 11)?,
            message: col(r, 12)?,
        },
        u32::try_from(stage).map_err(|e| bad(e.to_string()))?,
        col(r, 14)?,
    ))
}

/// The assignment of `device_id` in `plan_id`, with its stage. `lock` (a writer's decision
/// on it): its row is locked until the transaction ends.
pub(crate) async fn load_assignment(
    c: &ClientWrapper,
    plan_id: &str,
    device_id: &str,
    lock: bool,
) -> Sql<Option<(Assignment, u32)>> {
    let sql = format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE plan_id = $1 AND device_id = $2{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    match row(c, &sql, &[&plan_id, &device_id]).await? {
        Some(r) => assignment_from_row(&r).map(|(a, stage, _)| Some((a, stage))),
        None => Ok(None),
    }
}

/// Inserts new assignments (activation), each with its stage and order: one statement per
/// [`INSERT_CHUNK`] assignments, not one per device.
pub(crate) async fn insert_assignments(
    c: &ClientWrapper,
    items: &[(Assignment, u32, i64)],
) -> Sql<()> {
    for chunk in items.chunks(INSERT_CHUNK) {
        let text = |f: &dyn Fn(&Assignment) -> String| -> Vec<String> {
            chunk.iter().map(|(a, _, _)| f(a)).collect()
        };
        let opt_text = |f: &dyn Fn(&Assignment) -> Option<String>| -> Vec<Option<String>> {
            chunk.iter().map(|(a, _, _)| f(a)).collect()
        };
        let plan_ids = text(&|a| a.plan_id.clone());
        let device_ids = text(&|a| a.device_id.clone());
        let states = text(&|a| a.state.as_str().to_string());
        let messages = text(&|a| a.message.clone());
        let steps = opt_text(&|a| a.step.map(|s| s.as_str().to_string()));
        let boots = opt_text(&|a| a.boot_id_at_install.clone());
        let installed = opt_text(&|a| a.installed_digest.clone());
        let previous = opt_text(&|a| a.previous_digest.clone());
        let attempts: Vec<i64> = chunk.iter().map(|(a, _, _)| i64::from(a.attempt)).collect();
        let seqs: Vec<i64> = chunk
            .iter()
            .map(|(a, _, _)| i64::try_from(a.last_seq).unwrap_or(i64::MAX))
            .collect();
        let dispatched: Vec<Option<i64>> =
            chunk.iter().map(|(a, _, _)| a.dispatched_at_us).collect();
        let updated: Vec<i64> = chunk.iter().map(|(a, _, _)| a.updated_at_us).collect();
        let since: Vec<i64> = chunk.iter().map(|(a, _, _)| a.state_since_us).collect();
        let stages: Vec<i64> = chunk.iter().map(|(_, s, _)| i64::from(*s)).collect();
        let ords: Vec<i64> = chunk.iter().map(|(_, _, o)| *o).collect();
        exec(
            c,
            "INSERT INTO assignments (plan_id, device_id, state, attempt, last_seq, step, \
             boot_id_at_install, installed_digest, previous_digest, dispatched_at_us, \
             updated_at_us, state_since_us, message, stage, ord) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], \
             $5::bigint[], $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[], \
             $11::bigint[], $12::bigint[], $13::text[], $14::bigint[], $15::bigint[])",
            &[
                &plan_ids,
                &device_ids,
                &states,
                &attempts,
                &seqs,
                &steps,
                &boots,
                &installed,
                &previous,
                &dispatched,
                &updated,
                &since,
                &messages,
                &stages,
                &ords,
            ],
        )
        .await?;
    }
    Ok(())
}

/// Stores a changed assignment.
pub(crate) async fn update_assignment(c: &ClientWrapper, a: &Assignment) -> Sql<()> {
    let state = a.state.as_str();
    let attempt = i64::from(a.attempt);
    let last_seq = i64::try_from(a.last_seq).unwrap_or(i64::MAX);
    let step = a.step.map(|s| s.as_str());
    exec(
        c,
        "UPDATE assignments SET state = $3, attempt = $4, last_seq = $5, step = $6, \
         boot_id_at_install = $7, installed_digest = $8, previous_digest = $9, \
         dispatched_at_us = $10, updated_at_us = $11, state_since_us = $12, message = $13 \
         WHERE plan_id = $1 AND device_id = $2",
        &[
            &a.plan_id,
            &a.device_id,
            &state,
            &attempt,
            &last_seq,
            &step,
            &a.boot_id_at_install,
            &a.installed_digest,
            &a.previous_digest,
            &a.dispatched_at_us,
            &a.updated_at_us,
            &a.state_since_us,
            &a.message,
        ],
    )
    .await?;
    Ok(())
}

/// Moves `n` devices of a stage's counters from one state to another.
pub(crate) async fn shift(
    c: &ClientWrapper,
    plan_id: &str,
    stage: u32,
    from: Option<DeviceState>,
    to: DeviceState,
    n: u64,
) -> Sql<()> {
    if n == 0 || from == Some(to) {
        return Ok(());
    }
    let stage = i64::from(stage);
    let n = i64::try_from(n).unwrap_or(i64::MAX);
    match from {
        // One statement (one round trip): the two rows differ, so both parts see and change
        // what they would one after the other.
        Some(from) => {
            exec(
                c,
                "WITH taken AS (UPDATE stage_counters SET n = n - $4 \
             WHERE plan_id = $1 AND stage = $2 AND state = $3) \
             INSERT INTO stage_counters (plan_id, stage, state, n) VALUES ($1, $2, $5, $4) \
             ON CONFLICT (plan_id, stage, state) DO UPDATE SET n = stage_counters.n + excluded.n",
                &[&plan_id, &stage, &from.as_str(), &n, &to.as_str()],
            )
            .await?
        }
        None => {
            exec(
                c,
                "INSERT INTO stage_counters (plan_id, stage, state, n) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (plan_id, stage, state) DO UPDATE SET n = stage_counters.n + excluded.n",
                &[&plan_id, &stage, &to.as_str(), &n],
            )
            .await?
        }
    };
    Ok(())
}

/// Raises the device's revision: its next poll shows something new.
pub(crate) async fn bump_revision(c: &ClientWrapper, device_id: &str) -> Sql<()> {
    exec(
        c,
        "UPDATE devices SET revision = revision + 1 WHERE id = $1",
        &[&device_id],
    )
    .await?;
    Ok(())
}

/// Labels from their stored JSON text (`labels::text`).
pub(crate) fn labels_from(text: &str) -> Sql<BTreeMap<String, String>> {
    serde_json::from_str(text).map_err(|e| internal("labels", e))
}

/// Labels as JSON text, for a `$n::text::jsonb` parameter (also: a selector for `@>`, which
/// matches exactly the devices carrying every one of its labels).
pub(crate) fn labels_text(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".into())
}

/// The columns of a [`DeviceRow`] (`labels` as JSON text).
pub(crate) const DEVICE_COLUMNS: &str =
    "id, labels::text, installed_digest, last_seen_us, created_us, revoked_us, plan_id, conditions";

/// A device as `GET /v1/devices/{id}` shows it.
pub(crate) async fn load_device(c: &ClientWrapper, id: &str) -> Sql<Option<Device>> {
    let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1");
    match row(c, &sql, &[&id]).await? {
        Some(r) => Ok(Some(device_of(c, device_row(&r)?).await?)),
        None => Ok(None),
    }
}

pub(crate) type DeviceRow = (
    String,
    String,
    Option<String>,
    Option<i64>,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
);

/// A [`DeviceRow`] from the first 8 columns of `r` ([`DEVICE_COLUMNS`]).
pub(crate) fn device_row(r: &Row) -> Sql<DeviceRow> {
    Ok((
        col(r, 0)?,
        col(r, 1)?,
        col(r, 2)?,
        col(r, 3)?,
        col(r, 4)?,
        col(r, 5)?,
        col(r, 6)?,
        col(r, 7)?,
    ))
}

pub(crate) async fn device_of(c: &ClientWrapper, row: DeviceRow) -> Sql<Device> {
    let (id, labels, digest, seen, created, revoked, plan, conditions) = row;
    let assignment = match plan {
        Some(p) => load_assignment(c, &p, &id, false).await?.map(|(a, _)| {
            autonomy_api::device::AssignmentSummary {
                plan_id: a.plan_id,
                attempt: a.attempt,
                state: a.state,
            }
        }),
        None => None,
    };
    Ok(Device {
        labels: labels_from(&labels)?,
        installed_digest: digest.filter(|d| !d.is_empty()),
        last_seen_at: seen.map(timefmt::format_us),
        created_at: timefmt::format_us(created),
        revoked_at: revoked.map(timefmt::format_us),
        assignment,
        conditions: conditions_from(conditions.as_deref())?,
        id,
    })
}

/// The heartbeat flusher (a task of its own, one per replica): every second, when a poll
/// left a heartbeat in memory, writes them all in one transaction on a pooled writer
/// connection. Not audited (a heartbeat is not a change anybody asked for) and never takes
/// the chain-head lock. On `close` it flushes once more and returns.
pub(crate) async fn flush_beats_every_second(pool: Pool, shared: Arc<Shared>) {
    loop {
        {
            // Registered before `closing` is read, so a `close` in between is not missed.
            let stop = shared.stop.notified();
            tokio::pin!(stop);
            stop.as_mut().enable();
            if !shared.closing.load(Ordering::SeqCst) {
                tokio::select! {
                    _ = tokio::time::sleep(BEAT_FLUSH_EVERY) => {}
                    _ = &mut stop => {}
                }
            }
        }
        let closing = shared.closing.load(Ordering::SeqCst);
        // No device polled: no transaction at all (an idle CP writes nothing).
        if shared.live.has_beats() {
            flush_beats(&pool, &shared).await;
        }
        if closing {
            return;
        }
    }
}

/// Writes the heartbeats polls left in memory; on any failure they go back (newer ones win)
/// for the next flush.
async fn flush_beats(pool: &Pool, shared: &Shared) {
    let beats = shared.live.take_beats();
    if beats.is_empty() {
        return;
    }
    let mut ids = Vec::with_capacity(beats.len());
    let mut at = Vec::with_capacity(beats.len());
    let mut digests = Vec::with_capacity(beats.len());
    let mut boots = Vec::with_capacity(beats.len());
    let mut conds = Vec::with_capacity(beats.len());
    let mut sorted: Vec<&(String, autonomy_store::Beat)> = beats.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (id, b) in sorted {
        ids.push(id.as_str());
        at.push(b.at_us);
        digests.push(b.installed_digest.as_str());
        boots.push(b.boot_id.as_str());
        conds.push(conditions_text(&b.conditions));
    }
    // Rows a writer holds are skipped, not waited for (their beats wait for the next flush):
    // the flush never deadlocks with a batch of reports.
    let written: Result<Vec<String>, StoreError> = async {
        let mut client = pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(db_error)?;
        // One statement for every device (the beats are one per device).
        let stmt = tx
            .prepare_cached(
                "WITH free AS (SELECT id FROM devices WHERE id = ANY($1::text[]) \
                 ORDER BY id FOR UPDATE SKIP LOCKED) \
                 UPDATE devices AS d SET \
                 last_seen_us = greatest(coalesce(d.last_seen_us, 0), b.at_us), \
                 installed_digest = CASE WHEN b.digest <> '' THEN b.digest \
                 ELSE d.installed_digest END, \
                 boot_id = CASE WHEN b.boot <> '' THEN b.boot ELSE d.boot_id END, \
                 conditions = CASE WHEN b.at_us >= coalesce(d.last_seen_us, 0) \
                 THEN nullif(b.conds, '') ELSE d.conditions END \
                 FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[]) \
                 AS b(id, at_us, digest, boot, conds) JOIN free f ON f.id = b.id \
                 WHERE d.id = b.id RETURNING d.id",
            )
            .await
            .map_err(db_error)?;
        let rows = tx
            .query(&stmt, &[&ids, &at, &digests, &boots, &conds])
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }
    .await;
    let beats = match written {
        Ok(done) => {
            let done: std::collections::HashSet<String> = done.into_iter().collect();
            // The skipped ones go back (devices are never deleted, only revoked).
            let rest: Vec<_> = beats
                .into_iter()
                .filter(|(id, _)| !done.contains(id))
                .collect();
            if rest.is_empty() {
                return;
            }
            shared.live.restore_beats(rest);
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "flushing heartbeats failed; will retry");
            beats
        }
    };
    shared.live.restore_beats(beats);
}

//! SQL of the rollout engine shared by the writer and the readers: engine records,
//! assignments, per-stage counters and the snapshot a promoter decision reads. The rules are
//! `autonomy_core::engine` and `autonomy_core::device`; this module only loads and stores.

use std::collections::BTreeMap;

use autonomy_api::device::{Device, ReportState};
use autonomy_api::{timefmt, DeviceState, Rollout};
use autonomy_core::device::Assignment;
use autonomy_core::engine::{gates, EnginePlan, GateDevice, InFlight, StageCounters};
use autonomy_store::{Live, Result, StoreError};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::writer::sql_error;

/// "The assignment is in flight", the condition of the partial in-flight indexes (migrations
/// 0008), written the same in every query that reads them (SQLite uses a partial index only for
/// a query carrying its condition). Spelled as comparisons, not `state IN (...)`: an `IN` list
/// of more than two constants makes SQLite build a temporary b-tree on every run of a
/// statement, and the writer evaluates these conditions in every update of an assignment
/// (measured: a fifth of a report's writer time, issue 13).
pub(crate) const IN_FLIGHT_SQL: &str = "(state = 'dispatched' OR state = 'downloading' \
    OR state = 'installing' OR state = 'rebooting' OR state = 'verifying')";

/// The condition of the partial `assignments_by_state` index (migration 0008): a state outside
/// flight. Queries of such a state carry it too.
pub(crate) const NOT_IN_FLIGHT_SQL: &str = "NOT (state = 'dispatched' OR state = 'downloading' \
    OR state = 'installing' OR state = 'rebooting' OR state = 'verifying')";

fn internal(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("stored {what} is unreadable: {e}"))
}

/// The engine record of a plan (`None`: a record-only plan).
pub(crate) fn load_engine(conn: &Connection, plan_id: &str) -> Result<Option<EnginePlan>> {
    let doc: Option<String> = conn
        .prepare_cached("SELECT doc FROM engine_plans WHERE plan_id = ?1")
        .and_then(|mut s| s.query_row([plan_id], |r| r.get(0)).optional())
        .map_err(sql_error)?;
    doc.map(|d| serde_json::from_str(&d).map_err(|e| internal("engine record", e)))
        .transpose()
}

pub(crate) fn save_engine(conn: &Connection, plan_id: &str, e: &EnginePlan) -> Result<()> {
    let doc = serde_json::to_string(e).map_err(|e| StoreError::Internal(e.to_string()))?;
    conn.prepare_cached(
        "INSERT INTO engine_plans (plan_id, target_digest, artifact_ref, reboot_required, \
         device_timeout_s, doc) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (plan_id) DO UPDATE SET doc = excluded.doc",
    )
    .and_then(|mut s| {
        s.execute(params![
            plan_id,
            e.target_digest,
            e.artifact_ref,
            e.policy.reboot_required,
            e.policy.device_timeout_seconds as i64,
            doc
        ])
    })
    .map_err(sql_error)?;
    Ok(())
}

/// The per-stage counters of a plan with `stages` stages.
pub(crate) fn counters(
    conn: &Connection,
    plan_id: &str,
    stages: usize,
) -> Result<Vec<StageCounters>> {
    let mut out = vec![StageCounters::default(); stages];
    let mut stmt = conn
        .prepare_cached("SELECT stage, state, n FROM stage_counters WHERE plan_id = ?1")
        .map_err(sql_error)?;
    let rows = stmt
        .query_map([plan_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .map_err(sql_error)?;
    for row in rows {
        let (stage, state, n) = row.map_err(sql_error)?;
        let state: DeviceState = state.parse().map_err(|e| internal("counter", e))?;
        if let Some(c) = out.get_mut(stage as usize) {
            *c.counts.entry(state).or_default() += n.max(0) as u64;
        }
    }
    Ok(out)
}

/// Failed devices per stage with automatic retries left (`attempt ≤ max_device_retries`).
pub(crate) fn retryable(
    conn: &Connection,
    plan_id: &str,
    max_retries: u32,
    counters: &mut [StageCounters],
) -> Result<()> {
    if max_retries == 0 {
        return Ok(());
    }
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT stage, count(*) FROM assignments WHERE plan_id = ?1 AND state = 'failed' \
             AND {NOT_IN_FLIGHT_SQL} AND attempt <= ?2 GROUP BY stage"
        ))
        .map_err(sql_error)?;
    let rows = stmt
        .query_map(params![plan_id, i64::from(max_retries)], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })
        .map_err(sql_error)?;
    for row in rows {
        let (stage, n) = row.map_err(sql_error)?;
        if let Some(c) = counters.get_mut(stage as usize) {
            c.retryable = n.max(0) as u64;
        }
    }
    Ok(())
}

/// In-flight devices dispatched at or before `cutoff_us` (the ones that may be overdue), at
/// most `limit`.
pub(crate) fn overdue(
    conn: &Connection,
    plan_id: &str,
    cutoff_us: i64,
    limit: u64,
) -> Result<Vec<InFlight>> {
    let sql = format!(
        "SELECT device_id, stage, state, dispatched_at_us FROM assignments \
         WHERE plan_id = ?1 AND {IN_FLIGHT_SQL} AND dispatched_at_us <= ?2 \
         ORDER BY dispatched_at_us LIMIT ?3"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(sql_error)?;
    let rows = stmt
        .query_map(params![plan_id, cutoff_us, limit as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(sql_error)?;
    let mut out = Vec::new();
    for row in rows {
        let (device_id, stage, state, at) = row.map_err(sql_error)?;
        out.push(InFlight {
            device_id,
            stage: stage as usize,
            state: state.parse().map_err(|e| internal("assignment", e))?,
            dispatched_at_us: at,
        });
    }
    Ok(out)
}

/// Every assignment of a plan in its order with its device's labels and conditions (the
/// conditions of an unflushed poll in `live` win over the stored ones), for the gates of
/// SPEC §8.7.
pub(crate) fn gate_devices(
    conn: &Connection,
    plan_id: &str,
    live: &Live,
) -> Result<Vec<GateDevice>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT a.device_id, a.stage, a.state, d.labels, d.conditions FROM assignments a \
             JOIN devices d ON d.id = a.device_id WHERE a.plan_id = ?1 ORDER BY a.ord",
        )
        .map_err(sql_error)?;
    let rows = stmt
        .query_map([plan_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })
        .map_err(sql_error)?;
    let mut out = Vec::new();
    for row in rows {
        let (device_id, stage, state, labels, conditions) = row.map_err(sql_error)?;
        let conditions = match live.pending_conditions(&device_id) {
            Some(c) => c,
            None => conditions_from(conditions.as_deref())?,
        };
        out.push(GateDevice {
            stage: stage.max(0) as usize,
            state: state.parse().map_err(|e| internal("assignment", e))?,
            labels: labels_from(&labels)?,
            conditions,
            device_id,
        });
    }
    Ok(out)
}

/// The stored conditions of a device (`NULL`: none).
pub(crate) fn conditions_from(text: Option<&str>) -> Result<BTreeMap<String, serde_json::Value>> {
    text.map_or(Ok(BTreeMap::new()), |t| {
        serde_json::from_str(t).map_err(|e| internal("device conditions", e))
    })
}

/// The conditions as stored: a JSON object, or `NULL` when there are none.
pub(crate) fn conditions_text(c: &BTreeMap<String, serde_json::Value>) -> Option<String> {
    (!c.is_empty()).then(|| serde_json::to_string(c).unwrap_or_else(|_| "{}".into()))
}

/// Everything `decide` reads for one plan, in the caller's snapshot.
pub(crate) struct Snapshot {
    pub engine: EnginePlan,
    pub counters: Vec<StageCounters>,
    pub in_flight: Vec<InFlight>,
    /// The plan's [`GateDevice`]s when its policy has a budget or requirements; else empty.
    pub gate_devices: Vec<GateDevice>,
}

pub(crate) fn snapshot(
    conn: &Connection,
    plan_id: &str,
    engine: EnginePlan,
    now_us: i64,
    live: &Live,
) -> Result<Snapshot> {
    let mut counters = counters(conn, plan_id, engine.stages.len())?;
    retryable(
        conn,
        plan_id,
        engine.policy.max_device_retries,
        &mut counters,
    )?;
    let counters = engine.with_accepted(counters);
    let timeout_us = i64::try_from(engine.policy.device_timeout_seconds)
        .unwrap_or(i64::MAX)
        .saturating_mul(1_000_000);
    let in_flight = overdue(conn, plan_id, now_us.saturating_sub(timeout_us), 1000)?;
    let gate_devices = if gates::needs_devices(&engine.policy) {
        gate_devices(conn, plan_id, live)?
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
pub(crate) fn fill_rollout(conn: &Connection, r: &mut Rollout) -> Result<()> {
    let id = r.plan.metadata.id.clone();
    if let Some(engine) = load_engine(conn, &id)? {
        let c = counters(conn, &id, engine.stages.len())?;
        r.status.rollout = Some(engine.status(r.status.phase, &c));
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

pub(crate) fn assignment_from_row(r: &Row<'_>) -> rusqlite::Result<(Assignment, u32, i64)> {
    let parse_err = |i: usize, e: String| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            Box::new(std::io::Error::other(e)),
        )
    };
    let state: String = r.get(2)?;
    let step: Option<String> = r.get(5)?;
    Ok((
        Assignment {
            device_id: r.get(0)?,
            plan_id: r.get(1)?,
            state: state.parse().map_err(|e| parse_err(2, e))?,
            attempt: r.get::<_, i64>(3)? as u32,
            last_seq: r.get::<_, i64>(4)? as u64,
            step: step
                .map(|s| s.parse::<ReportState>())
                .transpose()
                .map_err(|e| parse_err(5, e))?,
            boot_id_at_install: r.get(6)?,
            installed_digest: r.get(7)?,
            previous_digest: r.get(8)?,
            dispatched_at_us: r.get(9)?,
            updated_at_us: r.get(10)?,
            state_since_us: r.get(11)?,
            message: r.get(12)?,
        },
        r.get::<_, i64>(13)? as u32,
        r.get::<_, i64>(14)?,
    ))
}

/// The assignment of `device_id` in `plan_id`, with its stage.
pub(crate) fn load_assignment(
    conn: &Connection,
    plan_id: &str,
    device_id: &str,
) -> Result<Option<(Assignment, u32)>> {
    let sql = format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE plan_id = ?1 AND device_id = ?2"
    );
    conn.prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_row([plan_id, device_id], assignment_from_row)
                .optional()
        })
        .map(|o| o.map(|(a, stage, _)| (a, stage)))
        .map_err(sql_error)
}

/// Inserts a new assignment (activation).
pub(crate) fn insert_assignment(
    conn: &Connection,
    a: &Assignment,
    stage: u32,
    ord: i64,
) -> Result<()> {
    write_assignment(
        conn,
        "INSERT INTO assignments (plan_id, device_id, state, attempt, last_seq, step, \
         boot_id_at_install, installed_digest, previous_digest, dispatched_at_us, updated_at_us, \
         state_since_us, message, stage, ord) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        a,
        Some((stage, ord)),
    )
}

/// Stores a changed assignment.
pub(crate) fn update_assignment(conn: &Connection, a: &Assignment) -> Result<()> {
    write_assignment(
        conn,
        "UPDATE assignments SET state = ?3, attempt = ?4, last_seq = ?5, step = ?6, \
         boot_id_at_install = ?7, installed_digest = ?8, previous_digest = ?9, \
         dispatched_at_us = ?10, updated_at_us = ?11, state_since_us = ?12, message = ?13 \
         WHERE plan_id = ?1 AND device_id = ?2",
        a,
        None,
    )
}

/// Runs `sql` with the record as ?1…?13 (and stage, order as ?14, ?15 when given).
fn write_assignment(
    conn: &Connection,
    sql: &str,
    a: &Assignment,
    placed: Option<(u32, i64)>,
) -> Result<()> {
    let mut values: Vec<rusqlite::types::Value> = vec![
        a.plan_id.clone().into(),
        a.device_id.clone().into(),
        a.state.as_str().to_string().into(),
        i64::from(a.attempt).into(),
        (a.last_seq as i64).into(),
        a.step.map(|s| s.as_str().to_string()).into(),
        a.boot_id_at_install.clone().into(),
        a.installed_digest.clone().into(),
        a.previous_digest.clone().into(),
        a.dispatched_at_us.into(),
        a.updated_at_us.into(),
        a.state_since_us.into(),
        a.message.clone().into(),
    ];
    if let Some((stage, ord)) = placed {
        values.push(i64::from(stage).into());
        values.push(ord.into());
    }
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute(rusqlite::params_from_iter(values)))
        .map_err(sql_error)?;
    Ok(())
}

/// Moves `n` devices of a stage's counters from one state to another.
pub(crate) fn shift(
    conn: &Connection,
    plan_id: &str,
    stage: u32,
    from: Option<DeviceState>,
    to: DeviceState,
    n: u64,
) -> Result<()> {
    if n == 0 || from == Some(to) {
        return Ok(());
    }
    if let Some(from) = from {
        conn.prepare_cached(
            "UPDATE stage_counters SET n = n - ?4 WHERE plan_id = ?1 AND stage = ?2 AND state = ?3",
        )
        .and_then(|mut s| s.execute(params![plan_id, stage, from.as_str(), n as i64]))
        .map_err(sql_error)?;
    }
    conn.prepare_cached(
        "INSERT INTO stage_counters (plan_id, stage, state, n) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (plan_id, stage, state) DO UPDATE SET n = n + excluded.n",
    )
    .and_then(|mut s| s.execute(params![plan_id, stage, to.as_str(), n as i64]))
    .map_err(sql_error)?;
    Ok(())
}

/// Raises the device's revision: its next poll shows something new.
pub(crate) fn bump_revision(conn: &Connection, device_id: &str) -> Result<()> {
    conn.prepare_cached("UPDATE devices SET revision = revision + 1 WHERE id = ?1")
        .and_then(|mut s| s.execute([device_id]))
        .map_err(sql_error)?;
    Ok(())
}

pub(crate) fn labels_from(text: &str) -> Result<BTreeMap<String, String>> {
    serde_json::from_str(text).map_err(|e| internal("labels", e))
}

pub(crate) fn labels_text(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".into())
}

/// A device as `GET /v1/devices/{id}` shows it.
pub(crate) fn load_device(conn: &Connection, id: &str) -> Result<Option<Device>> {
    let row = conn
        .prepare_cached(
            "SELECT id, labels, installed_digest, last_seen_us, created_us, revoked_us, plan_id, \
             conditions FROM devices WHERE id = ?1",
        )
        .and_then(|mut s| s.query_row([id], device_row).optional())
        .map_err(sql_error)?;
    row.map(|r| device_of(conn, r)).transpose()
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

pub(crate) fn device_row(r: &Row<'_>) -> rusqlite::Result<DeviceRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

pub(crate) fn device_of(conn: &Connection, row: DeviceRow) -> Result<Device> {
    let (id, labels, digest, seen, created, revoked, plan, conditions) = row;
    let assignment = match plan {
        Some(p) => {
            load_assignment(conn, &p, &id)?.map(|(a, _)| autonomy_api::device::AssignmentSummary {
                plan_id: a.plan_id,
                attempt: a.attempt,
                state: a.state,
            })
        }
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

//! Reads of the rollout engine: the registry, what a poll shows, a plan's devices, the plans a
//! promoter tick is due for, and the facts of the stuck scan (SPEC §8.6).

use std::collections::BTreeMap;

use autonomy_api::device::{DeviceAssignmentList, DeviceList};
use autonomy_api::{timefmt, DeviceState, PausedBy, Phase, StuckItem, StuckStage};
use autonomy_core::device as dev;
use autonomy_core::engine::{self, decide, DeviceSample, StuckFacts, MAX_REASON_DEVICES};
use autonomy_store::ids::hash_secret;
use autonomy_store::{DeviceIdentity, DriftCheck, PollState, PromoterDue, Result, StoreError};
use rusqlite::{params, params_from_iter, OptionalExtension};

use super::ReadConn;
use crate::engine::{self as sql, IN_FLIGHT_SQL, NOT_IN_FLIGHT_SQL};

/// When a device went quiet: its last flushed poll, or its dispatch if it never polled
/// (`assignments.seen_us` mirrors `devices.last_seen_us`; the expression of the
/// `assignments_in_flight_*` indexes of migration 0008).
const QUIET_SQL: &str = "coalesce(a.seen_us, a.dispatched_at_us, 0)";
use crate::writer::sql_error;

impl ReadConn {
    pub(crate) fn device(&self, id: &str) -> Result<autonomy_api::device::Device> {
        sql::load_device(&self.conn, id)?
            .ok_or_else(|| StoreError::NotFound(format!("no device with id '{id}'")))
    }

    /// A page of devices by id after `after`, matching every label of `selector`.
    pub(crate) fn devices(
        &self,
        selector: &BTreeMap<String, String>,
        limit: usize,
        after: Option<&str>,
    ) -> Result<DeviceList> {
        let mut q = String::from(
            "SELECT id, labels, installed_digest, last_seen_us, created_us, revoked_us, plan_id, \
             conditions FROM devices WHERE id > ?1",
        );
        let mut args: Vec<rusqlite::types::Value> = vec![after.unwrap_or("").to_string().into()];
        for (k, v) in selector {
            args.push(format!("$.\"{}\"", k.replace('"', "")).into());
            args.push(v.clone().into());
            q.push_str(&format!(
                " AND json_extract(labels, ?{}) = ?{}",
                args.len() - 1,
                args.len()
            ));
        }
        args.push(((limit + 1) as i64).into());
        q.push_str(&format!(" ORDER BY id LIMIT ?{}", args.len()));
        let rows = {
            let mut stmt = self.conn.prepare_cached(&q).map_err(sql_error)?;
            let rows = stmt
                .query_map(params_from_iter(args), sql::device_row)
                .and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(sql_error)?;
            rows
        };
        let more = rows.len() > limit;
        let mut items = Vec::with_capacity(rows.len().min(limit));
        for row in rows.into_iter().take(limit) {
            items.push(sql::device_of(&self.conn, row)?);
        }
        let next_cursor = if more {
            items.last().map(|d| d.id.clone())
        } else {
            None
        };
        Ok(DeviceList { items, next_cursor })
    }

    pub(crate) fn identify_device(&self, secret: &str) -> Result<Option<DeviceIdentity>> {
        self.conn
            .prepare_cached("SELECT id FROM devices WHERE token_hash = ?1 AND revoked_us IS NULL")
            .and_then(|mut s| s.query_row([hash_secret(secret)], |r| r.get(0)).optional())
            .map(|o| o.map(|device_id| DeviceIdentity { device_id }))
            .map_err(sql_error)
    }

    pub(crate) fn known_device(&self, id: &str) -> Result<Option<DeviceIdentity>> {
        self.conn
            .prepare_cached("SELECT id FROM devices WHERE id = ?1 AND revoked_us IS NULL")
            .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
            .map(|o| o.map(|device_id| DeviceIdentity { device_id }))
            .map_err(sql_error)
    }

    /// What a poll shows the device now (SPEC §9.2), and whether the device is in a plan (one
    /// in no plan shows only its revision, which the store may then remember:
    /// `Live::remember_idle_poll`).
    pub(crate) fn poll(&self, device_id: &str) -> Result<(PollState, bool)> {
        let row: Option<(i64, Option<String>)> = self
            .conn
            .prepare_cached("SELECT revision, plan_id FROM devices WHERE id = ?1")
            .and_then(|mut s| {
                s.query_row([device_id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(sql_error)?;
        let Some((revision, plan)) = row else {
            return Err(StoreError::NotFound(format!(
                "no device with id '{device_id}'"
            )));
        };
        let mut state = PollState {
            revision: revision as u64,
            assignment: None,
            drift: None,
            waiting_ready: false,
        };
        let Some(plan) = plan else {
            return Ok((state, false));
        };
        let Some((a, _)) = sql::load_assignment(&self.conn, &plan, device_id)? else {
            return Ok((state, true));
        };
        state.waiting_ready = a.state == DeviceState::WaitingReady;
        let params: Option<(String, String, bool, i64)> = self
            .conn
            .prepare_cached(
                "SELECT target_digest, artifact_ref, reboot_required, device_timeout_s \
                 FROM engine_plans WHERE plan_id = ?1",
            )
            .and_then(|mut s| {
                s.query_row([&plan], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()
            })
            .map_err(sql_error)?;
        let Some((target, artifact, reboot, timeout)) = params else {
            return Ok((state, true));
        };
        state.assignment = dev::poll_view(&a, &artifact, &target, reboot, timeout.max(0) as u64);
        if matches!(a.state, DeviceState::Verified | DeviceState::Drifted) {
            state.drift = Some(DriftCheck {
                plan_id: plan,
                state: a.state,
                target_digest: target,
            });
        }
        Ok((state, true))
    }

    /// `GET /v1/rollouts/{id}/devices`: a page in the plan's order after `after` (an order).
    pub(crate) fn rollout_devices(
        &self,
        plan_id: &str,
        state: Option<DeviceState>,
        stage: Option<&str>,
        limit: usize,
        after: Option<i64>,
    ) -> Result<DeviceAssignmentList> {
        let exists: bool = self
            .conn
            .prepare_cached("SELECT 1 FROM plans WHERE id = ?1")
            .and_then(|mut s| s.query_row([plan_id], |_| Ok(())).optional())
            .map_err(sql_error)?
            .is_some();
        if !exists {
            return Err(StoreError::NotFound(format!(
                "no rollout plan with id '{plan_id}'"
            )));
        }
        let engine = sql::load_engine(&self.conn, plan_id)?;
        let names: Vec<String> = engine
            .as_ref()
            .map(|e| e.stages.iter().map(|s| s.name.clone()).collect())
            .unwrap_or_default();
        let stage_index = match stage {
            Some(name) => match names.iter().position(|n| n == name) {
                Some(i) => Some(i as i64),
                None => {
                    return Err(StoreError::Invalid(autonomy_api::FieldError::new(
                        "stage",
                        format!(
                            "plan '{plan_id}' has no stage '{name}' (stages: {})",
                            if names.is_empty() {
                                "none assigned yet".to_string()
                            } else {
                                names.join(", ")
                            }
                        ),
                    )))
                }
            },
            None => None,
        };
        let q = format!(
            "SELECT {}, d.last_seen_us FROM assignments a LEFT JOIN devices d ON d.id = a.device_id \
             WHERE a.plan_id = ?1 AND a.ord > ?2 AND (?3 IS NULL OR a.state = ?3) \
             AND (?4 IS NULL OR a.stage = ?4) ORDER BY a.ord LIMIT ?5",
            sql::assignment_columns()
                .split(", ")
                .map(|c| format!("a.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut stmt = self.conn.prepare_cached(&q).map_err(sql_error)?;
        let rows = stmt
            .query_map(
                params![
                    plan_id,
                    after.unwrap_or(-1),
                    state.map(|s| s.as_str()),
                    stage_index,
                    (limit + 1) as i64
                ],
                |r| Ok((sql::assignment_from_row(r)?, r.get::<_, Option<i64>>(15)?)),
            )
            .and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(sql_error)?;
        let more = rows.len() > limit;
        let mut last = None;
        let items = rows
            .into_iter()
            .take(limit)
            .map(|((a, stage, ord), seen)| {
                last = Some(ord);
                let name = names.get(stage as usize).map_or("", String::as_str);
                a.item(name, seen.map(timefmt::format_us))
            })
            .collect();
        Ok(DeviceAssignmentList {
            items,
            next_cursor: if more {
                last.map(|o| o.to_string())
            } else {
                None
            },
        })
    }

    /// Engine-driven plans `decide` has something for now.
    pub(crate) fn promoter_due(
        &self,
        now_us: i64,
        max_dispatch: u64,
        live: &autonomy_store::Live,
    ) -> Result<Vec<PromoterDue>> {
        let rows: Vec<(String, String, i64)> = {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT p.id, p.phase, json_extract(p.doc, '$.plan.metadata.generation') \
                     FROM plans p JOIN engine_plans e ON e.plan_id = p.id \
                     WHERE p.phase IN ('published', 'active', 'paused', 'failed')",
                )
                .map_err(sql_error)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(sql_error)?;
            rows
        };
        let mut due = Vec::new();
        for (id, phase, generation) in rows {
            let phase: Phase = phase.parse().map_err(StoreError::Internal)?;
            let Some(e) = sql::load_engine(&self.conn, &id)? else {
                continue;
            };
            if !e.activated {
                continue;
            }
            let snap = sql::snapshot(&self.conn, &id, e, now_us, live)?;
            let views = snap.engine.views();
            let mut view = snap
                .engine
                .view(phase, &views, &snap.in_flight, max_dispatch);
            view.gate_devices = &snap.gate_devices;
            if !decide(&view, &snap.counters, now_us).is_empty() {
                due.push(PromoterDue {
                    plan_id: id,
                    generation: generation as u64,
                });
            }
        }
        Ok(due)
    }

    /// Count (unless `known`) and up to [`MAX_REASON_DEVICES`] ids of a plan's devices that
    /// `from_where` selects (`?1` the plan id, `?2` a time; it names `a.device_id`). A known
    /// count of zero costs no query.
    fn sample(
        &self,
        plan_id: &str,
        from_where: &str,
        at_us: i64,
        known: Option<u64>,
    ) -> Result<DeviceSample> {
        if known == Some(0) {
            return Ok(DeviceSample::default());
        }
        let count = match known {
            Some(n) => n,
            None => {
                let q = format!("SELECT count(*) {from_where}");
                let n: i64 = self
                    .conn
                    .prepare_cached(&q)
                    .and_then(|mut s| s.query_row(params![plan_id, at_us], |r| r.get(0)))
                    .map_err(sql_error)?;
                n.max(0) as u64
            }
        };
        if count == 0 {
            return Ok(DeviceSample::default());
        }
        let q = format!("SELECT a.device_id {from_where} LIMIT {MAX_REASON_DEVICES}");
        let devices = self
            .conn
            .prepare_cached(&q)
            .and_then(|mut s| {
                s.query_map(params![plan_id, at_us], |r| r.get::<_, String>(0))
                    .and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>())
            })
            .map_err(sql_error)?;
        Ok(DeviceSample { count, devices })
    }

    /// Every device id `from_where` selects (see [`Self::sample`]).
    fn ids(&self, plan_id: &str, from_where: &str, at_us: i64) -> Result<Vec<String>> {
        let q = format!("SELECT a.device_id {from_where}");
        self.conn
            .prepare_cached(&q)
            .and_then(|mut s| {
                s.query_map(params![plan_id, at_us], |r| r.get::<_, String>(0))
                    .and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>())
            })
            .map_err(sql_error)
    }

    /// The silent and the non-converging samples of a plan with `in_flight` devices in flight
    /// (from its counters) of `assigned`: silent ones went quiet at or before `silent_cut`;
    /// non-converging ones have not changed since `cutoff` and are not silent. Every count is a
    /// walk of one in-flight index's entries, never a device row: the silent range, and the
    /// devices that moved after `cutoff`; the non-converging count is what remains of the
    /// in-flight devices.
    fn quiet_samples(
        &self,
        plan_id: &str,
        in_flight: u64,
        assigned: u64,
        silent_cut: i64,
        cutoff: i64,
    ) -> Result<(DeviceSample, DeviceSample)> {
        let one = |q: &str, args: &[&dyn rusqlite::ToSql]| -> Result<(i64, i64)> {
            self.conn
                .prepare_cached(q)
                .and_then(|mut s| {
                    s.query_row(args, |r| {
                        Ok((r.get(0)?, r.get::<_, Option<i64>>(1)?.unwrap_or(0)))
                    })
                })
                .map_err(sql_error)
        };
        let list = |q: &str, args: &[&dyn rusqlite::ToSql]| -> Result<Vec<String>> {
            self.conn
                .prepare_cached(q)
                .and_then(|mut s| {
                    s.query_map(args, |r| r.get::<_, String>(0))
                        .and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>())
                })
                .map_err(sql_error)
        };
        let in_flight_where =
            format!("FROM assignments a WHERE a.plan_id = ?1 AND {IN_FLIGHT_SQL}");
        // Silent, and how many of them have not changed since the cut-off either.
        let (silent_n, silent_unchanged) = one(
            &format!(
                "SELECT count(*), sum(a.state_since_us <= ?3) {in_flight_where} \
                 AND {QUIET_SQL} <= ?2"
            ),
            &[&plan_id, &silent_cut, &cutoff],
        )?;
        let (moved, _) = one(
            &format!("SELECT count(*), 0 {in_flight_where} AND a.state_since_us > ?2"),
            &[&plan_id, &cutoff],
        )?;
        let silent_n = silent_n.max(0) as u64;
        let non_converging_n = in_flight
            .saturating_sub(moved.max(0) as u64)
            .saturating_sub(silent_unchanged.max(0) as u64);
        let mut silent = DeviceSample {
            count: silent_n,
            devices: Vec::new(),
        };
        if silent_n > 0 {
            // By device id: when silent devices are a good share of the plan, walking the plan
            // in id order finds the first ones after a few rows; else sort the silent range.
            let by_id = if silent_n.saturating_mul(4) >= assigned {
                "INDEXED BY sqlite_autoindex_assignments_1"
            } else {
                ""
            };
            silent.devices = list(
                &format!(
                    "SELECT a.device_id FROM assignments a {by_id} WHERE a.plan_id = ?1 \
                     AND {IN_FLIGHT_SQL} AND {QUIET_SQL} <= ?2 \
                     ORDER BY a.device_id LIMIT {MAX_REASON_DEVICES}"
                ),
                &[&plan_id, &silent_cut],
            )?;
        }
        let mut non_converging = DeviceSample {
            count: non_converging_n,
            devices: Vec::new(),
        };
        if non_converging_n > 0 {
            // From the oldest change, in dispatch order among equal times.
            non_converging.devices = list(
                &format!(
                    "SELECT a.device_id {in_flight_where} AND a.state_since_us <= ?2 \
                     AND {QUIET_SQL} > ?3 ORDER BY a.state_since_us, a.ord \
                     LIMIT {MAX_REASON_DEVICES}"
                ),
                &[&plan_id, &cutoff, &silent_cut],
            )?;
        }
        Ok((silent, non_converging))
    }

    /// The stuck items of engine-driven plans (SPEC §8.6), with their last progress time (the
    /// scan's order).
    pub(crate) fn engine_stuck(
        &self,
        now_us: i64,
        threshold_us: i64,
        promoter_running: bool,
        live: &autonomy_store::Live,
    ) -> Result<Vec<(i64, StuckItem)>> {
        let rows: Vec<(String, String, i64, i64)> = {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT p.id, p.phase, p.phase_changed_us, p.last_progress_us FROM plans p \
                     JOIN engine_plans e ON e.plan_id = p.id \
                     WHERE p.phase IN ('published', 'active', 'paused', 'rolled_back')",
                )
                .map_err(sql_error)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(sql_error)?;
            rows
        };
        let mut out = Vec::new();
        let cutoff = now_us.saturating_sub(threshold_us);
        for (id, phase, changed, progress) in rows {
            let phase: Phase = phase.parse().map_err(StoreError::Internal)?;
            let Some(e) = sql::load_engine(&self.conn, &id)? else {
                continue;
            };
            if phase == Phase::Paused && e.paused_by != Some(PausedBy::Engine) {
                continue;
            }
            let counters = sql::counters(&self.conn, &id, e.stages.len())?;
            let total = |pred: &dyn Fn(DeviceState) -> bool| -> u64 {
                counters
                    .iter()
                    .flat_map(|c| c.counts.iter())
                    .filter(|(st, _)| pred(**st))
                    .map(|(_, n)| *n)
                    .sum()
            };
            let in_flight = total(&|st| st.is_in_flight());
            let failures = total(&|st| {
                matches!(
                    st,
                    DeviceState::Failed | DeviceState::TimedOut | DeviceState::RolledBack
                )
            });
            let drifted_n = total(&|st| st == DeviceState::Drifted);
            let reverting_n = total(&|st| st == DeviceState::Reverting);
            let status = e.status(phase, &counters);
            let stage = status.stages.get(e.current_stage as usize).map(|s| {
                let c = &s.counts;
                let get = |st: DeviceState| c.get(&st).copied().unwrap_or(0);
                StuckStage {
                    index: e.current_stage,
                    name: s.name.clone(),
                    required: s.required,
                    verified: get(DeviceState::Verified),
                    in_flight: DeviceState::ALL
                        .iter()
                        .filter(|st| st.is_in_flight())
                        .map(|st| get(*st))
                        .sum(),
                    failed: DeviceState::ALL
                        .iter()
                        .filter(|st| st.is_failure())
                        .map(|st| get(*st))
                        .sum(),
                }
            });
            let silent_cut = now_us.saturating_sub(
                i64::try_from(e.policy.silent_after_seconds)
                    .unwrap_or(i64::MAX / 2_000_000)
                    .saturating_mul(1_000_000),
            );
            let accepted: u64 = e.stages.iter().map(|s| s.accepted).sum();
            let mut failing = self.sample(
                &id,
                &format!(
                    "FROM assignments a WHERE a.plan_id = ?1 AND ?2 = ?2 \
                     AND a.state IN ('failed', 'timed_out', 'rolled_back') AND {NOT_IN_FLIGHT_SQL} \
                     ORDER BY a.ord"
                ),
                0,
                Some(failures),
            )?;
            failing.count = failing.count.saturating_sub(accepted);
            if failing.count == 0 {
                failing.devices.clear();
            }
            // Silent: in flight, and no poll since the cut (never polled: since dispatch).
            // Non-converging: in flight with no change since the cut-off, and not silent.
            // Both read only the assignment rows' in-flight indexes (migration 0008).
            let silent_where = format!(
                "FROM assignments a WHERE a.plan_id = ?1 AND {IN_FLIGHT_SQL} \
                 AND {QUIET_SQL} <= ?2"
            );
            let non_converging_where = format!(
                "FROM assignments a WHERE a.plan_id = ?1 AND {IN_FLIGHT_SQL} \
                 AND a.state_since_us <= ?2 AND {QUIET_SQL} > {silent_cut}"
            );
            let (silent, non_converging) = if in_flight == 0 {
                Default::default()
            } else {
                let assigned = total(&|_| true);
                self.quiet_samples(&id, in_flight, assigned, silent_cut, cutoff)?
            };
            // The gates (SPEC §8.7): waiting_ready devices, budget groups whose devices in
            // flight are all stuck, undispatched devices of the started stages.
            let (not_ready, budget_stuck) = if engine::needs_devices(&e.policy) {
                let devices = sql::gate_devices(&self.conn, &id, live)?;
                let mut stuck = std::collections::BTreeSet::new();
                if in_flight > 0 && e.policy.disruption_budget.is_some() {
                    stuck.extend(self.ids(&id, &silent_where, silent_cut)?);
                    stuck.extend(self.ids(&id, &non_converging_where, cutoff)?);
                }
                engine::gates::gate_stuck(&e.policy, &devices, &stuck)
            } else {
                Default::default()
            };
            let undispatched: u64 = e
                .stages
                .iter()
                .zip(&counters)
                .take(e.current_stage as usize + 1)
                .filter(|(s, _)| s.state != autonomy_api::StageState::Pending)
                .map(|(_, c)| c.get(DeviceState::Pending) + c.get(DeviceState::WaitingReady))
                .sum();
            let drifted = self.sample(
                &id,
                &format!(
                    "FROM assignments a WHERE a.plan_id = ?1 AND ?2 = ?2 \
                     AND a.state = 'drifted' AND {NOT_IN_FLIGHT_SQL} ORDER BY a.ord"
                ),
                0,
                Some(drifted_n),
            )?;
            let reverts_stuck = if reverting_n == 0 {
                DeviceSample::default()
            } else {
                self.sample(
                    &id,
                    &format!(
                        "FROM assignments a WHERE a.plan_id = ?1 AND a.state = 'reverting' \
                         AND {NOT_IN_FLIGHT_SQL} AND a.state_since_us <= ?2 ORDER BY a.ord"
                    ),
                    cutoff,
                    None,
                )?
            };
            let gate = status.gate.as_ref().map(|g| {
                (
                    g.stage,
                    timefmt::parse_rfc3339_us(&g.since).unwrap_or(changed),
                )
            });
            let facts = StuckFacts {
                id: &id,
                phase,
                promoter_running,
                gate,
                paused_by: status.paused_by,
                reason: status.reason,
                stage: stage.clone(),
                failing,
                silent,
                non_converging,
                drifted,
                reverts_stuck,
                phase_changed_us: changed,
                last_progress_us: progress,
                now_us,
                threshold_us,
                silent_after_seconds: e.policy.silent_after_seconds,
                not_ready,
                budget_stuck,
                undispatched,
                windows: &e.policy.windows,
            };
            let Some(found) = engine::engine_stuck(&facts) else {
                continue;
            };
            let item =
                engine::engine_item(id.clone(), phase, changed, progress, now_us, found, stage);
            out.push((progress, item));
        }
        Ok(out)
    }
}

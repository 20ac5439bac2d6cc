//! Reads of the rollout engine: the registry, what a poll shows, a plan's devices, the plans a
//! promoter tick is due for, and the facts of the stuck scan (SPEC §8.6). Reads lock nothing:
//! what they answer is advisory (a promoter tick decides again in the writer, under locks).

use std::collections::{BTreeMap, BTreeSet};

use autonomy_api::device::{DeviceAssignmentList, DeviceList};
use autonomy_api::{timefmt, DeviceState, PausedBy, Phase, StageState, StuckItem, StuckStage};
use autonomy_core::device as dev;
use autonomy_core::engine::{self, decide, DeviceSample, StuckFacts, MAX_REASON_DEVICES};
use autonomy_store::ids::hash_secret;
use autonomy_store::{
    DeviceIdentity, DriftCheck, Live, PollState, PromoterDue, Result, StoreError,
};
use tokio_postgres::types::ToSql;

use super::R;
use crate::engine::{self as sql, col, IN_FLIGHT_SQL};

impl R {
    pub(crate) async fn device(&self, id: &str) -> Result<autonomy_api::device::Device> {
        sql::load_device(&self.c, id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no device with id '{id}'")))
    }

    /// A page of devices by id after `after`, matching every label of `selector` (`@>` on the
    /// labels' GIN index).
    pub(crate) async fn devices(
        &self,
        selector: &BTreeMap<String, String>,
        limit: usize,
        after: Option<&str>,
    ) -> Result<DeviceList> {
        let after = after.unwrap_or("");
        let take = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        let found = if selector.is_empty() {
            let q = format!(
                "SELECT {} FROM devices WHERE id > $1 ORDER BY id LIMIT $2",
                sql::DEVICE_COLUMNS
            );
            sql::rows(&self.c, &q, &[&after, &take]).await?
        } else {
            let q = format!(
                "SELECT {} FROM devices WHERE id > $1 AND labels @> $3::text::jsonb \
                 ORDER BY id LIMIT $2",
                sql::DEVICE_COLUMNS
            );
            let selector = sql::labels_text(selector);
            sql::rows(&self.c, &q, &[&after, &take, &selector]).await?
        };
        let more = found.len() > limit;
        let mut items = Vec::with_capacity(found.len().min(limit));
        for r in found.iter().take(limit) {
            items.push(sql::device_of(&self.c, sql::device_row(r)?).await?);
        }
        let next_cursor = if more {
            items.last().map(|d| d.id.clone())
        } else {
            None
        };
        Ok(DeviceList { items, next_cursor })
    }

    pub(crate) async fn identify_device(&self, secret: &str) -> Result<Option<DeviceIdentity>> {
        let found = sql::row(
            &self.c,
            "SELECT id FROM devices WHERE token_hash = $1 AND revoked_us IS NULL",
            &[&hash_secret(secret)],
        )
        .await?;
        Ok(match found {
            Some(r) => Some(DeviceIdentity {
                device_id: col(&r, 0)?,
            }),
            None => None,
        })
    }

    pub(crate) async fn known_device(&self, id: &str) -> Result<Option<DeviceIdentity>> {
        let found = sql::row(
            &self.c,
            "SELECT id FROM devices WHERE id = $1 AND revoked_us IS NULL",
            &[&id],
        )
        .await?;
        Ok(match found {
            Some(r) => Some(DeviceIdentity {
                device_id: col(&r, 0)?,
            }),
            None => None,
        })
    }

    /// What a poll shows the device now (SPEC §9.2).
    pub(crate) async fn poll(&self, device_id: &str) -> Result<PollState> {
        let found = sql::row(
            &self.c,
            "SELECT revision, plan_id FROM devices WHERE id = $1",
            &[&device_id],
        )
        .await?;
        let Some(r) = found else {
            return Err(StoreError::NotFound(format!(
                "no device with id '{device_id}'"
            )));
        };
        let revision: i64 = col(&r, 0)?;
        let plan: Option<String> = col(&r, 1)?;
        let mut state = PollState {
            revision: revision.max(0) as u64,
            assignment: None,
            drift: None,
            waiting_ready: false,
        };
        let Some(plan) = plan else {
            return Ok(state);
        };
        let Some((a, _)) = sql::load_assignment(&self.c, &plan, device_id, false).await? else {
            return Ok(state);
        };
        state.waiting_ready = a.state == DeviceState::WaitingReady;
        let params = sql::row(
            &self.c,
            "SELECT target_digest, artifact_ref, reboot_required, device_timeout_s \
             FROM engine_plans WHERE plan_id = $1",
            &[&plan],
        )
        .await?;
        let Some(p) = params else {
            return Ok(state);
        };
        let (target, artifact, reboot, timeout): (String, &str, bool, i64) =
            (col(&p, 0)?, col(&p, 1)?, col(&p, 2)?, col(&p, 3)?);
        state.assignment = dev::poll_view(&a, artifact, &target, reboot, timeout.max(0) as u64);
        if matches!(a.state, DeviceState::Verified | DeviceState::Drifted) {
            state.drift = Some(DriftCheck {
                plan_id: plan,
                state: a.state,
                target_digest: target,
            });
        }
        Ok(state)
    }

    /// `GET /v1/rollouts/{id}/devices`: a page in the plan's order after `after` (an order).
    pub(crate) async fn rollout_devices(
        &self,
        plan_id: &str,
        state: Option<DeviceState>,
        stage: Option<&str>,
        limit: usize,
        after: Option<i64>,
    ) -> Result<DeviceAssignmentList> {
        let exists = sql::row(&self.c, "SELECT 1 FROM plans WHERE id = $1", &[&plan_id])
            .await?
            .is_some();
        if !exists {
            return Err(StoreError::NotFound(format!(
                "no rollout plan with id '{plan_id}'"
            )));
        }
        let engine = sql::load_engine(&self.c, plan_id).await?;
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
             WHERE a.plan_id = $1 AND a.ord > $2 AND ($3::text IS NULL OR a.state = $3) \
             AND ($4::bigint IS NULL OR a.stage = $4) ORDER BY a.ord LIMIT $5",
            sql::assignment_columns()
                .split(", ")
                .map(|c| format!("a.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let state = state.map(|s| s.as_str());
        let take = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        let found = sql::rows(
            &self.c,
            &q,
            &[&plan_id, &after.unwrap_or(-1), &state, &stage_index, &take],
        )
        .await?;
        let more = found.len() > limit;
        let mut last = None;
        let mut items = Vec::with_capacity(found.len().min(limit));
        for r in found.iter().take(limit) {
            let (a, stage, ord) = sql::assignment_from_row(r)?;
            let seen: Option<i64> = col(r, 15)?;
            last = Some(ord);
            let name = names.get(stage as usize).map_or("", String::as_str);
            items.push(a.item(name, seen.map(timefmt::format_us)));
        }
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
    pub(crate) async fn promoter_due(
        &self,
        now_us: i64,
        max_dispatch: u64,
        live: &Live,
    ) -> Result<Vec<PromoterDue>> {
        let found = sql::rows(
            &self.c,
            "SELECT p.id, p.phase, p.generation, e.doc \
             FROM plans p JOIN engine_plans e ON e.plan_id = p.id \
             WHERE p.phase IN ('published', 'active', 'paused', 'failed')",
            &[],
        )
        .await?;
        let mut due = Vec::new();
        for r in found {
            let id: String = col(&r, 0)?;
            let phase: Phase = col::<&str>(&r, 1)?.parse().map_err(StoreError::Internal)?;
            let generation: i64 = col(&r, 2)?;
            let e = sql::parse_engine(col(&r, 3)?)?;
            if !e.activated {
                continue;
            }
            let snap = sql::snapshot(&self.c, &id, e, now_us, false, live).await?;
            let views = snap.engine.views();
            let mut view = snap
                .engine
                .view(phase, &views, &snap.in_flight, max_dispatch);
            view.gate_devices = &snap.gate_devices;
            if !decide(&view, &snap.counters, now_us).is_empty() {
                due.push(PromoterDue {
                    plan_id: id,
                    generation: generation.max(0) as u64,
                });
            }
        }
        Ok(due)
    }

    /// Count (unless `known`) and up to [`MAX_REASON_DEVICES`] ids, first by `order_by`, of a
    /// plan's devices that `from_where` selects (`$1` the plan id, then `args` as `$2`…; it
    /// names `a.device_id`). A known count of zero costs no query.
    async fn sample(
        &self,
        plan_id: &str,
        from_where: &str,
        order_by: &str,
        args: &[&(dyn ToSql + Sync)],
        known: Option<u64>,
    ) -> Result<DeviceSample> {
        if known == Some(0) {
            return Ok(DeviceSample::default());
        }
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(args.len() + 1);
        params.push(&plan_id);
        params.extend_from_slice(args);
        let count = match known {
            Some(n) => n,
            None => {
                let q = format!("SELECT count(*) {from_where}");
                let n: i64 = match sql::row(&self.c, &q, &params).await? {
                    Some(r) => col(&r, 0)?,
                    None => 0,
                };
                n.max(0) as u64
            }
        };
        if count == 0 {
            return Ok(DeviceSample::default());
        }
        let q = format!(
            "SELECT a.device_id {from_where} ORDER BY {order_by} LIMIT {MAX_REASON_DEVICES}"
        );
        let mut devices = Vec::new();
        for r in sql::rows(&self.c, &q, &params).await? {
            devices.push(col(&r, 0)?);
        }
        Ok(DeviceSample { count, devices })
    }

    /// Every device id `from_where` selects (see [`Self::sample`]).
    async fn ids(
        &self,
        plan_id: &str,
        from_where: &str,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<String>> {
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(args.len() + 1);
        params.push(&plan_id);
        params.extend_from_slice(args);
        let q = format!("SELECT a.device_id {from_where}");
        let mut out = Vec::new();
        for r in sql::rows(&self.c, &q, &params).await? {
            out.push(col(&r, 0)?);
        }
        Ok(out)
    }

    /// The stuck items of engine-driven plans (SPEC §8.6), with their last progress time (the
    /// scan's order).
    pub(crate) async fn engine_stuck(
        &self,
        now_us: i64,
        threshold_us: i64,
        promoter_running: bool,
        live: &Live,
    ) -> Result<Vec<(i64, StuckItem)>> {
        let found = sql::rows(
            &self.c,
            "SELECT p.id, p.phase, p.phase_changed_us, p.last_progress_us, e.doc FROM plans p \
             JOIN engine_plans e ON e.plan_id = p.id \
             WHERE p.phase IN ('published', 'active', 'paused', 'rolled_back')",
            &[],
        )
        .await?;
        let mut out = Vec::new();
        let cutoff = now_us.saturating_sub(threshold_us);
        for r in found {
            let id: String = col(&r, 0)?;
            let phase: Phase = col::<&str>(&r, 1)?.parse().map_err(StoreError::Internal)?;
            let changed: i64 = col(&r, 2)?;
            let progress: i64 = col(&r, 3)?;
            let e = sql::parse_engine(col(&r, 4)?)?;
            if phase == Phase::Paused && e.paused_by != Some(PausedBy::Engine) {
                continue;
            }
            let counters = sql::counters(&self.c, &id, e.stages.len()).await?;
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
            let mut failing = self
                .sample(
                    &id,
                    "FROM assignments a WHERE a.plan_id = $1 \
                     AND a.state IN ('failed', 'timed_out', 'rolled_back')",
                    "a.ord",
                    &[],
                    Some(failures),
                )
                .await?;
            failing.count = failing.count.saturating_sub(accepted);
            if failing.count == 0 {
                failing.devices.clear();
            }
            // Silent: in flight, and no poll since the cut (never polled: since dispatch).
            let silent_where = format!(
                "FROM devices d JOIN assignments a ON a.plan_id = d.plan_id \
                 AND a.device_id = d.id WHERE d.plan_id = $1 \
                 AND coalesce(d.last_seen_us, 0) <= $2 AND a.state IN {IN_FLIGHT_SQL} \
                 AND coalesce(d.last_seen_us, a.dispatched_at_us, 0) <= $2"
            );
            let silent = if in_flight == 0 {
                DeviceSample::default()
            } else {
                self.sample(&id, &silent_where, "d.id", &[&silent_cut], None)
                    .await?
            };
            // Non-converging: in flight with no change since the cut, and still polling.
            let non_converging_where = format!(
                "FROM assignments a JOIN devices d ON d.id = a.device_id \
                 WHERE a.plan_id = $1 AND a.state IN {IN_FLIGHT_SQL} \
                 AND a.state_since_us <= $2 \
                 AND coalesce(d.last_seen_us, a.dispatched_at_us, 0) > $3"
            );
            let non_converging = if in_flight == 0 {
                DeviceSample::default()
            } else {
                self.sample(
                    &id,
                    &non_converging_where,
                    "a.state_since_us",
                    &[&cutoff, &silent_cut],
                    None,
                )
                .await?
            };
            // The gates (SPEC §8.7): waiting_ready devices, budget groups whose devices in
            // flight are all stuck, undispatched devices of the started stages.
            let (not_ready, budget_stuck) = if engine::needs_devices(&e.policy) {
                let devices = sql::gate_devices(&self.c, &id, live).await?;
                let mut stuck = BTreeSet::new();
                if in_flight > 0 && e.policy.disruption_budget.is_some() {
                    stuck.extend(self.ids(&id, &silent_where, &[&silent_cut]).await?);
                    stuck.extend(
                        self.ids(&id, &non_converging_where, &[&cutoff, &silent_cut])
                            .await?,
                    );
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
                .filter(|(s, _)| s.state != StageState::Pending)
                .map(|(_, c)| c.get(DeviceState::Pending) + c.get(DeviceState::WaitingReady))
                .sum();
            let drifted = self
                .sample(
                    &id,
                    "FROM assignments a WHERE a.plan_id = $1 \
                     AND a.state = 'drifted'",
                    "a.ord",
                    &[],
                    Some(drifted_n),
                )
                .await?;
            let reverts_stuck = if reverting_n == 0 {
                DeviceSample::default()
            } else {
                self.sample(
                    &id,
                    "FROM assignments a WHERE a.plan_id = $1 AND a.state = 'reverting' \
                     AND a.state_since_us <= $2",
                    "a.ord",
                    &[&cutoff],
                    None,
                )
                .await?
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

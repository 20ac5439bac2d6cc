//! The writer's engine commands (SPEC §8, §9): the device registry, reports, drift, operator
//! verbs and recovery on engine-driven plans, and promoter ticks. Each runs inside the writer's
//! transaction like every other command: load (locking the rows a decision reads, SPEC §7),
//! ask `autonomy_core`, store what it returns and its audit events; counters move in the same
//! transaction as the assignments they count.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use autonomy_api::device::{
    Device, DeviceRegistered, EnrollKeyCreated, EnrollKeyRequest, EnrollRequest, Enrolled,
    RegisterDeviceRequest, ReportRequest, ReportResult,
};
use autonomy_api::{
    timefmt, AuditEvent, DeviceState, EventType, ExecuteRequest, Outcome, Phase, Rollout, Strategy,
    Target, Verb,
};
use autonomy_core::device::{self as dev, Assignment};
use autonomy_core::engine::{
    self, action_event, decide, holds_device, parse_engine_spec, Action, EnginePlan, EngineSpec,
    TargetDevice,
};
use autonomy_core::plan;
use autonomy_store::ids::{hash_secret, new_id, new_secret};
use autonomy_store::{Ctx, Reply, StoreError};

use super::{Failure, Fallible, W};
use crate::engine::{self as sql, col};

/// The most devices a refusal names.
const NAMED: usize = 20;
/// Reports kept per device (between two cuts a device may have up to `PRUNE_EVERY` more).
const REPORTS_KEPT: i64 = 100;
/// How often (in reports stored) a device's history is cut back.
const PRUNE_EVERY: i64 = 16;
/// The most plans whose target digest and `reboot_required` are kept in memory.
const ENGINE_PARAMS_KEPT: usize = 10_000;

fn conflict(why: String, event: AuditEvent) -> Failure {
    Failure {
        error: StoreError::Conflict(why),
        audit: Some(Box::new(event)),
        retryable: false,
    }
}

fn rejected(id: &str, verb: &str, from: Phase, reason: &str, why: &str) -> AuditEvent {
    AuditEvent::draft(
        EventType::RolloutPhaseChanged,
        Target::RolloutPlan,
        id,
        Outcome::Rejected,
        reason,
        serde_json::json!({"verb": verb, "from_phase": from, "why": why}),
    )
}

/// The engine spec of a stored plan (`None`: record-only).
pub(crate) fn engine_spec(r: &Rollout) -> Result<Option<EngineSpec>, StoreError> {
    let s = &r.plan.spec;
    parse_engine_spec(
        &s.targets,
        &s.stages,
        s.policy.as_ref(),
        &s.artifact_ref,
        s.target_lock_fingerprint.as_deref(),
    )
    .map_err(|e| StoreError::Internal(format!("stored engine spec is invalid: {e}")))
}

fn list_names(ids: &[String]) -> String {
    let shown: Vec<&str> = ids.iter().take(NAMED).map(String::as_str).collect();
    let more = ids.len().saturating_sub(NAMED);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// A count as a SQL `BIGINT` (saturating).
fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl W<'_> {
    // --- plans -------------------------------------------------------------------------------

    /// A new engine-driven plan gets its engine record, waiting at its start gate.
    pub(crate) async fn engine_create(&mut self, r: &Rollout, now: i64) -> Fallible<()> {
        if let Some(spec) = engine_spec(r)? {
            let e = EnginePlan::new(&spec, &r.plan.spec.artifact_ref, now);
            sql::save_engine(self.c, &r.plan.metadata.id, &e).await?;
        }
        Ok(())
    }

    /// An operator verb on an engine-driven plan, after `plan::transition` allowed the phase
    /// change: gates, pauses, the first start (which freezes the targets). The caller holds
    /// the plan's row lock.
    pub(crate) async fn engine_verb(
        &mut self,
        before: &Rollout,
        after: &Rollout,
        verb: Verb,
        stage: Option<u32>,
        reason: &str,
        now: i64,
    ) -> Fallible<()> {
        let id = &before.plan.metadata.id;
        let from = before.status.phase;
        let Some(mut e) = sql::load_engine(self.c, id).await? else {
            // A record-only plan waits at gate 0 when published.
            if let (Verb::Start, Some(k)) = (verb, stage) {
                if k != 0 {
                    let why = engine::GateError::WrongStage {
                        waiting: 0,
                        asked: k,
                    }
                    .to_string();
                    return Err(conflict(
                        why.clone(),
                        rejected(id, verb.as_str(), from, reason, &why),
                    ));
                }
            }
            return Ok(());
        };
        // Locked: `resume` accepts the failures counted now, and a report committing one
        // meanwhile on another connection waits for this decision.
        let counters = sql::counters_of(self.c, id, e.stages.len(), true).await?;
        if let Err(g) = e.on_verb(verb, stage, &counters, now) {
            let why = g.to_string();
            return Err(conflict(
                why.clone(),
                rejected(id, verb.as_str(), from, reason, &why),
            ));
        }
        if after.status.phase == Phase::Active && !e.activated {
            self.activate(after, &mut e, now).await?;
        }
        sql::save_engine(self.c, id, &e).await?;
        Ok(())
    }

    /// Freezes the targets of a plan becoming active for the first time: resolves them in the
    /// registry (locking the devices it reads), refuses devices another unsettled plan holds,
    /// assigns stages and stores one `pending` assignment per device.
    async fn activate(&mut self, r: &Rollout, e: &mut EnginePlan, now: i64) -> Fallible<()> {
        let id = r.plan.metadata.id.as_str();
        let spec = engine_spec(r)?.ok_or_else(|| {
            StoreError::Internal(format!("plan {id} has an engine record but no engine spec"))
        })?;
        let registry = self.registry(&spec.targets).await?;
        let (targets, unknown) = engine::resolve_targets(&spec.targets, registry.iter());
        let refuse =
            |why: String| conflict(why.clone(), rejected(id, "start", r.status.phase, "", &why));
        if !unknown.is_empty() {
            return Err(refuse(format!(
                "spec.targets.devices names devices that are not registered (or are revoked): {}",
                list_names(&unknown)
            )));
        }
        let held = self.held_elsewhere(id, &targets).await?;
        if !held.is_empty() {
            return Err(refuse(format!(
                "{} target device(s) are held by another unsettled plan (a device is in at most \
                 one): {}",
                held.len(),
                list_names(&held)
            )));
        }
        let plans = match e.activate(id, &spec, &targets) {
            Ok(p) => p,
            Err(err) => {
                return Err(refuse(format!(
                    "{err}: selector {:?}, devices {:?}; register devices or change the targets",
                    spec.targets.selector, spec.targets.devices
                )))
            }
        };
        let mut ord = 0i64;
        for (stage, p) in plans.iter().enumerate() {
            let stage = u32::try_from(stage)
                .map_err(|_| StoreError::Internal(format!("plan {id} has too many stages")))?;
            let mut new = Vec::with_capacity(p.devices.len());
            for device in &p.devices {
                new.push((Assignment::new(device.as_str(), id, now), stage, ord));
                ord += 1;
            }
            sql::insert_assignments(self.c, &new).await?;
            self.exec(
                "UPDATE devices SET plan_id = $2 WHERE id = ANY($1::text[])",
                &[&p.devices, &id],
            )
            .await?;
            sql::shift(
                self.c,
                id,
                stage,
                None,
                DeviceState::Pending,
                p.devices.len() as u64,
            )
            .await?;
        }
        Ok(())
    }

    /// The registered, unrevoked devices `targets` could match, with their labels: the listed
    /// ids, and the devices whose labels carry every selector label (filtered in SQL with
    /// `@>`, on the labels' GIN index, so a start reads its targets, not the whole registry).
    /// `resolve_targets` decides exactly. Their rows are locked (in id order) until the
    /// transaction ends: two plans starting over the same device on two replicas serialize,
    /// and the second sees the first one's hold.
    async fn registry(&self, targets: &autonomy_api::Targets) -> Fallible<Vec<TargetDevice>> {
        let found = if targets.selector.is_empty() {
            if targets.devices.is_empty() {
                return Ok(Vec::new());
            }
            self.query(
                "SELECT id, labels::text FROM devices \
                 WHERE revoked_us IS NULL AND id = ANY($1::text[]) ORDER BY id FOR UPDATE",
                &[&targets.devices],
            )
            .await?
        } else {
            self.query(
                "SELECT id, labels::text FROM devices WHERE revoked_us IS NULL \
                 AND (id = ANY($1::text[]) OR labels @> $2::text::jsonb) ORDER BY id FOR UPDATE",
                &[&targets.devices, &sql::labels_text(&targets.selector)],
            )
            .await?
        };
        let mut out = Vec::with_capacity(found.len());
        for r in found {
            out.push(TargetDevice {
                id: col(&r, 0)?,
                labels: sql::labels_from(col(&r, 1)?)?,
            });
        }
        Ok(out)
    }

    /// The targets another plan holds (SPEC §8.2): one indexed lookup for all of them.
    async fn held_elsewhere(
        &self,
        plan_id: &str,
        targets: &[TargetDevice],
    ) -> Fallible<Vec<String>> {
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = targets.iter().map(|t| t.id.as_str()).collect();
        let found = self
            .query(
                "SELECT d.id, p.phase, a.state FROM devices d \
                 JOIN plans p ON p.id = d.plan_id \
                 JOIN assignments a ON a.plan_id = d.plan_id AND a.device_id = d.id \
                 WHERE d.id = ANY($1::text[]) AND d.plan_id <> $2",
                &[&ids, &plan_id],
            )
            .await?;
        let mut held = Vec::new();
        for r in found {
            let phase: Phase = col::<&str>(&r, 1)?.parse().map_err(StoreError::Internal)?;
            let state: DeviceState = col::<&str>(&r, 2)?.parse().map_err(StoreError::Internal)?;
            if holds_device(phase, state) {
                held.push(col(&r, 0)?);
            }
        }
        held.sort();
        Ok(held)
    }

    /// A recovery strategy applied to an engine-driven plan acts on its devices (SPEC §8.5).
    /// The caller holds the plan's row lock; the plan's assignments are locked here.
    pub(crate) async fn engine_recover(
        &mut self,
        r: &Rollout,
        req: &ExecuteRequest,
        now: i64,
    ) -> Fallible<()> {
        let id = r.plan.metadata.id.as_str();
        let Some(mut e) = sql::load_engine(self.c, id).await? else {
            return Ok(());
        };
        e.on_recovery(req.strategy);
        if req.strategy == Strategy::Retry && !e.activated && r.status.phase == Phase::Active {
            self.activate(r, &mut e, now).await?;
        }
        let sql_all = format!(
            "SELECT {} FROM assignments WHERE plan_id = $1 ORDER BY ord FOR UPDATE",
            sql::assignment_columns()
        );
        let all = self.query(&sql_all, &[&id]).await?;
        let mut changed = false;
        for row in all {
            let (a, _, _) = sql::assignment_from_row(&row)?;
            if let Some(n) = dev::recover(&a, req.strategy, now) {
                sql::update_assignment(self.c, &n).await?;
                if dev::poll_action(n.state) != dev::poll_action(a.state) || n.attempt != a.attempt
                {
                    sql::bump_revision(self.c, &a.device_id).await?;
                    self.woken.push(a.device_id.clone());
                }
                changed = true;
            }
        }
        if changed {
            self.recount(id).await?;
        }
        sql::save_engine(self.c, id, &e).await?;
        Ok(())
    }

    /// Rebuilds a plan's counters from its assignments (after a bulk change; the caller
    /// holds the assignments' row locks, so no report moves them meanwhile).
    async fn recount(&self, plan_id: &str) -> Fallible<()> {
        self.exec("DELETE FROM stage_counters WHERE plan_id = $1", &[&plan_id])
            .await?;
        self.exec(
            "INSERT INTO stage_counters (plan_id, stage, state, n) \
             SELECT plan_id, stage, state, count(*) FROM assignments WHERE plan_id = $1 \
             GROUP BY plan_id, stage, state",
            &[&plan_id],
        )
        .await?;
        Ok(())
    }

    // --- the promoter --------------------------------------------------------------------------

    /// One promoter tick of one plan (SPEC §8.3): decides again on what is stored now and
    /// applies every action, audited once each as the caller (`system:promoter`).
    ///
    /// Fenced (SPEC §7): first, in this transaction, the stored leader epoch is read under a
    /// share lock (an election's epoch bump waits for this commit); unless it is still
    /// `epoch`, nothing is written and this replica steps down.
    pub(crate) async fn promote(
        &mut self,
        ctx: &Ctx,
        plan_id: &str,
        generation: u64,
        epoch: u64,
        max_dispatch: u64,
        now: i64,
    ) -> Fallible<Reply> {
        let none = Ok(Reply::Promoted { actions: 0 });
        let stored = match self
            .query_opt("SELECT epoch FROM leader WHERE id = 1 FOR SHARE", &[])
            .await?
        {
            Some(r) => Some(col::<i64>(&r, 0)?),
            None => None,
        };
        if stored != i64::try_from(epoch).ok() {
            let stepped_down = self
                .shared
                .epoch
                .compare_exchange(epoch, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
            tracing::warn!(
                plan_id,
                epoch,
                stored_epoch = ?stored,
                stepped_down,
                "a promoter write under a stale leader epoch was refused; nothing written"
            );
            return none;
        }
        let Some(mut r) = self.load(plan_id).await? else {
            return none;
        };
        if r.plan.metadata.generation != generation {
            return none;
        }
        let Some(e) = sql::load_engine(self.c, plan_id).await? else {
            return none;
        };
        let snap = sql::snapshot(self.c, plan_id, e, now, true, &self.shared.live).await?;
        let mut e = snap.engine;
        let views = e.views();
        let actions = {
            let mut view = e.view(r.status.phase, &views, &snap.in_flight, max_dispatch);
            view.gate_devices = &snap.gate_devices;
            decide(&view, &snap.counters, now)
        };
        if actions.is_empty() {
            return none;
        }
        let mut doc_changed = false;
        for action in &actions {
            let details = self.apply_action(ctx, plan_id, &mut e, action, now).await?;
            let (reason, mut details) = engine::action_audit(action, details, &e, epoch);
            if let Some(to) = e.apply(action, epoch) {
                let from = r.status.phase;
                plan::move_phase(&mut r, "promoter", to, &ctx.actor, &reason, now);
                doc_changed = true;
                if matches!(action, Action::ReachGate { .. }) {
                    self.record(
                        ctx,
                        AuditEvent::draft(
                            EventType::RolloutGateReached,
                            Target::RolloutPlan,
                            plan_id,
                            Outcome::Success,
                            "",
                            details.clone(),
                        ),
                    )
                    .await?;
                }
                details["from_phase"] = serde_json::json!(from);
                details["to_phase"] = serde_json::json!(to);
                details["generation"] = serde_json::json!(r.plan.metadata.generation);
                self.record(
                    ctx,
                    AuditEvent::draft(
                        EventType::RolloutPhaseChanged,
                        Target::RolloutPlan,
                        plan_id,
                        Outcome::Success,
                        &reason,
                        details,
                    ),
                )
                .await?;
                if matches!(action, Action::Abort { .. }) {
                    self.cancel_unstarted(plan_id, "cancelled: the plan was aborted", now)
                        .await?;
                }
                continue;
            }
            if matches!(action, Action::TimeOut { .. }) {
                continue; // audited per device in apply_action
            }
            if matches!(action, Action::StartStage { .. } | Action::PassStage { .. }) {
                r.status.last_progress_at = timefmt::format_us(now);
                doc_changed = true;
            }
            self.record(
                ctx,
                AuditEvent::draft(
                    action_event(action),
                    Target::RolloutPlan,
                    plan_id,
                    Outcome::Success,
                    "",
                    details,
                ),
            )
            .await?;
        }
        sql::save_engine(self.c, plan_id, &e).await?;
        if doc_changed {
            r.status.rollout = None;
            self.save(&r, false).await?;
        }
        Ok(Reply::Promoted {
            actions: actions.len() as u64,
        })
    }

    /// The device-level part of an action; returns the details of its audit event.
    async fn apply_action(
        &mut self,
        ctx: &Ctx,
        plan_id: &str,
        e: &mut EnginePlan,
        action: &Action,
        now: i64,
    ) -> Fallible<serde_json::Value> {
        match action {
            Action::TimeOut { devices } => {
                let timeout = e.policy.device_timeout_seconds;
                for id in devices {
                    let Some((a, stage)) = sql::load_assignment(self.c, plan_id, id, true).await?
                    else {
                        continue;
                    };
                    let deadline = dev::deadline_us(a.dispatched_at_us.unwrap_or(now), timeout);
                    let Some(n) = dev::timed_out(&a, deadline, now) else {
                        continue;
                    };
                    sql::update_assignment(self.c, &n).await?;
                    sql::shift(self.c, plan_id, stage, Some(a.state), n.state, 1).await?;
                    sql::bump_revision(self.c, id).await?;
                    self.woken.push(id.clone());
                    self.record(
                        ctx,
                        AuditEvent::draft(
                            EventType::DeviceTimedOut,
                            Target::RolloutPlan,
                            plan_id,
                            Outcome::Success,
                            "",
                            serde_json::json!({"device_id": id, "attempt": a.attempt,
                                "stage": stage, "was": a.state,
                                "timeout_seconds": timeout}),
                        ),
                    )
                    .await?;
                }
                Ok(serde_json::json!({"devices": devices}))
            }
            Action::RetryDevices { stage, count } => {
                let picked = self
                    .pick(
                        plan_id,
                        *stage,
                        "failed",
                        Some(e.policy.max_device_retries),
                        *count,
                    )
                    .await?;
                let stage = u32::try_from(*stage)
                    .map_err(|_| StoreError::Internal(format!("plan {plan_id}: no such stage")))?;
                let mut ids = Vec::new();
                for a in picked {
                    if let Some(n) = dev::recover(&a, Strategy::Retry, now) {
                        sql::update_assignment(self.c, &n).await?;
                        sql::shift(self.c, plan_id, stage, Some(a.state), n.state, 1).await?;
                        sql::bump_revision(self.c, &a.device_id).await?;
                        self.woken.push(a.device_id.clone());
                        ids.push(a.device_id);
                    }
                }
                Ok(serde_json::json!({"devices": ids, "count": ids.len()}))
            }
            Action::DispatchDevices { stage, count } => {
                let picked = self.pick(plan_id, *stage, "pending", None, *count).await?;
                let stage = u32::try_from(*stage)
                    .map_err(|_| StoreError::Internal(format!("plan {plan_id}: no such stage")))?;
                let mut ids = Vec::with_capacity(picked.len());
                for a in picked {
                    let digest = self.device_digest(&a.device_id).await?;
                    if let Some(n) = dev::dispatch(&a, digest.as_deref(), now) {
                        sql::update_assignment(self.c, &n).await?;
                        sql::bump_revision(self.c, &a.device_id).await?;
                        self.woken.push(a.device_id.clone());
                        ids.push(a.device_id);
                    }
                }
                sql::shift(
                    self.c,
                    plan_id,
                    stage,
                    Some(DeviceState::Pending),
                    DeviceState::Dispatched,
                    ids.len() as u64,
                )
                .await?;
                Ok(serde_json::json!({"devices": ids, "count": ids.len()}))
            }
            Action::DispatchListed { stage, devices } => {
                let mut ids = Vec::with_capacity(devices.len());
                for id in devices {
                    let Some((a, at)) = sql::load_assignment(self.c, plan_id, id, true).await?
                    else {
                        continue;
                    };
                    if at as usize != *stage {
                        continue;
                    }
                    let digest = self.device_digest(id).await?;
                    if let Some(n) = dev::dispatch(&a, digest.as_deref(), now) {
                        sql::update_assignment(self.c, &n).await?;
                        sql::shift(self.c, plan_id, at, Some(a.state), n.state, 1).await?;
                        sql::bump_revision(self.c, id).await?;
                        self.woken.push(id.clone());
                        ids.push(id.clone());
                    }
                }
                Ok(serde_json::json!({"devices": ids, "count": ids.len()}))
            }
            Action::SetReadiness {
                stage,
                waiting,
                ready,
            } => {
                let mut moved_waiting = serde_json::Map::new();
                let mut moved_ready = Vec::new();
                let wanted = waiting
                    .iter()
                    .map(|(id, why)| (id, Some(why.as_str())))
                    .chain(ready.iter().map(|id| (id, None)));
                for (id, why) in wanted {
                    let Some((a, at)) = sql::load_assignment(self.c, plan_id, id, true).await?
                    else {
                        continue;
                    };
                    if at as usize != *stage {
                        continue;
                    }
                    let Some(n) = dev::set_readiness(&a, why, now) else {
                        continue;
                    };
                    sql::update_assignment(self.c, &n).await?;
                    sql::shift(self.c, plan_id, at, Some(a.state), n.state, 1).await?;
                    match why {
                        Some(why) => {
                            moved_waiting.insert(id.clone(), serde_json::json!(why));
                        }
                        None => moved_ready.push(id.clone()),
                    }
                }
                Ok(serde_json::json!({"waiting": moved_waiting, "ready": moved_ready}))
            }
            Action::StartStage { .. }
            | Action::PassStage { .. }
            | Action::ReachGate { .. }
            | Action::Complete
            | Action::Pause { .. }
            | Action::Fail { .. }
            | Action::Abort { .. } => Ok(serde_json::json!({})),
        }
    }

    /// Up to `count` assignments of a stage in `state`, in the plan's order, locked until the
    /// transaction ends.
    async fn pick(
        &self,
        plan_id: &str,
        stage: usize,
        state: &str,
        max_attempt: Option<u32>,
        count: u64,
    ) -> Fallible<Vec<Assignment>> {
        let q = format!(
            "SELECT {} FROM assignments WHERE plan_id = $1 AND state = $2 AND stage = $3 \
             AND attempt <= $4 ORDER BY ord LIMIT $5 FOR UPDATE",
            sql::assignment_columns()
        );
        let stage = i64::try_from(stage).unwrap_or(i64::MAX);
        let max_attempt = max_attempt.map_or(i64::MAX, i64::from);
        let found = self
            .query(&q, &[&plan_id, &state, &stage, &max_attempt, &big(count)])
            .await?;
        let mut out = Vec::with_capacity(found.len());
        for r in found {
            out.push(sql::assignment_from_row(&r)?.0);
        }
        Ok(out)
    }

    /// What the device last said it runs: its newest unflushed poll, else the stored digest.
    async fn device_digest(&self, device_id: &str) -> Fallible<Option<String>> {
        if let Some(b) = self.shared.live.pending_beat(device_id) {
            if !b.installed_digest.is_empty() {
                return Ok(Some(b.installed_digest));
            }
        }
        match self
            .query_opt(
                "SELECT installed_digest FROM devices WHERE id = $1",
                &[&device_id],
            )
            .await?
        {
            Some(r) => Ok(col(&r, 0)?),
            None => Ok(None),
        }
    }

    /// Cancels the unstarted devices of a plan (`pending`, `waiting_ready`, `dispatched`); their
    /// next poll says so.
    async fn cancel_unstarted(&mut self, plan_id: &str, why: &str, now: i64) -> Fallible<()> {
        let q = format!(
            "SELECT {} FROM assignments WHERE plan_id = $1 \
             AND state IN ('pending','waiting_ready','dispatched') ORDER BY ord FOR UPDATE",
            sql::assignment_columns()
        );
        let picked = self.query(&q, &[&plan_id]).await?;
        for row in picked {
            let (a, stage, _) = sql::assignment_from_row(&row)?;
            if let Some(mut n) = dev::recover(&a, Strategy::Abort, now) {
                n.message = why.to_string();
                sql::update_assignment(self.c, &n).await?;
                sql::shift(self.c, plan_id, stage, Some(a.state), n.state, 1).await?;
                sql::bump_revision(self.c, &a.device_id).await?;
                self.woken.push(a.device_id);
            }
        }
        Ok(())
    }

    // --- the device protocol -----------------------------------------------------------------

    /// The target digest and `reboot_required` of a plan (immutable: cached per replica).
    async fn engine_params(&self, plan_id: &str) -> Fallible<Option<(String, bool)>> {
        let cached = self
            .shared
            .engine_params
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(plan_id)
            .cloned();
        if cached.is_some() {
            return Ok(cached);
        }
        let found = self
            .query_opt(
                "SELECT target_digest, reboot_required FROM engine_plans WHERE plan_id = $1",
                &[&plan_id],
            )
            .await?;
        let Some(r) = found else {
            return Ok(None);
        };
        let p: (String, bool) = (col(&r, 0)?, col(&r, 1)?);
        let mut cache = self
            .shared
            .engine_params
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if cache.len() > ENGINE_PARAMS_KEPT {
            cache.clear();
        }
        cache.insert(plan_id.to_string(), p.clone());
        Ok(Some(p))
    }

    /// A device's report (SPEC §9.2): applied, a duplicate, or a 409 naming why not. Records
    /// no audit event (device reports never take the chain-head lock); the assignment is
    /// locked while it is decided on.
    /// Locks every counter row of the plan, in the order the promoter's snapshot does.
    async fn lock_counters(&self, plan_id: &str) -> Fallible<()> {
        self.query(
            "SELECT 1 FROM stage_counters WHERE plan_id = $1 ORDER BY stage, state FOR UPDATE",
            &[&plan_id],
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn report(
        &mut self,
        device_id: &str,
        req: &ReportRequest,
        now: i64,
    ) -> Fallible<Reply> {
        let not_assigned = || {
            let r = dev::ReportRefusal::NotAssigned {
                plan_id: req.plan_id.clone(),
            };
            Failure::from(StoreError::Conflict(format!("{}: {r}", r.code())))
        };
        // Locks in the promoter's order (the plan's counters, then the assignment), so a report
        // and a promoter tick of the same plan wait for each other instead of deadlocking.
        self.lock_counters(&req.plan_id).await?;
        let Some((a, stage)) = sql::load_assignment(self.c, &req.plan_id, device_id, true).await?
        else {
            return Err(not_assigned());
        };
        let Some((target, reboot)) = self.engine_params(&req.plan_id).await? else {
            return Err(not_assigned());
        };
        let outcome = dev::apply_report(&a, req, &target, reboot, now)
            .map_err(|r| StoreError::Conflict(format!("{}: {r}", r.code())))?;
        if outcome.result == ReportResult::Applied {
            let n = &outcome.assignment;
            sql::update_assignment(self.c, n).await?;
            sql::shift(self.c, &req.plan_id, stage, Some(a.state), n.state, 1).await?;
            let body =
                serde_json::to_string(req).map_err(|e| StoreError::Internal(e.to_string()))?;
            let inserted = self
                .query_opt(
                    "INSERT INTO device_reports (device_id, plan_id, attempt, seq, state, result, \
                     body, at_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                    &[
                        &device_id,
                        &req.plan_id,
                        &i64::from(req.attempt),
                        &big(req.seq),
                        &req.state.as_str(),
                        &n.state.as_str(),
                        &body,
                        &now,
                    ],
                )
                .await?;
            let report_id: i64 = match &inserted {
                Some(r) => col(r, 0)?,
                None => 0,
            };
            // The history is cut back to the last REPORTS_KEPT every PRUNE_EVERY reports of
            // the store (by row id), not on every report.
            if report_id != 0 && report_id % PRUNE_EVERY == 0 {
                self.exec(
                    "DELETE FROM device_reports WHERE device_id = $1 AND id <= \
                     (SELECT id FROM device_reports WHERE device_id = $1 \
                      ORDER BY id DESC LIMIT 1 OFFSET $2)",
                    &[&device_id, &REPORTS_KEPT],
                )
                .await?;
            }
            if !req.installed_digest.is_empty() {
                self.exec(
                    "UPDATE devices SET installed_digest = $2 WHERE id = $1",
                    &[&device_id, &req.installed_digest],
                )
                .await?;
                self.shared
                    .live
                    .supersede_digest(device_id, &req.installed_digest);
            }
        }
        Ok(Reply::Report(outcome.response()))
    }

    /// A poll's digest moved a settled device into or out of drift (SPEC §9.3).
    pub(crate) async fn drift(
        &mut self,
        ctx: &Ctx,
        device_id: &str,
        plan_id: &str,
        digest: &str,
        now: i64,
    ) -> Fallible<Reply> {
        let done = Ok(Reply::Promoted { actions: 0 });
        self.lock_counters(plan_id).await?;
        let Some((a, stage)) = sql::load_assignment(self.c, plan_id, device_id, true).await? else {
            return done;
        };
        let Some((target, _)) = self.engine_params(plan_id).await? else {
            return done;
        };
        let Some(change) = dev::poll_drift(&a, digest, &target, now) else {
            return done;
        };
        sql::update_assignment(self.c, &change.assignment).await?;
        sql::shift(
            self.c,
            plan_id,
            stage,
            Some(a.state),
            change.assignment.state,
            1,
        )
        .await?;
        self.exec(
            "UPDATE devices SET installed_digest = $2 WHERE id = $1",
            &[&device_id, &digest],
        )
        .await?;
        self.shared.live.supersede_digest(device_id, digest);
        self.record(ctx, change.event).await?;
        Ok(Reply::Promoted { actions: 1 })
    }

    // --- the registry --------------------------------------------------------------------------

    pub(crate) async fn register_device(
        &mut self,
        ctx: &Ctx,
        req: &RegisterDeviceRequest,
        now: i64,
    ) -> Fallible<Reply> {
        let token = new_secret();
        self.insert_device(&req.id, &req.labels, &token, now)
            .await?;
        self.record(
            ctx,
            AuditEvent::draft(
                EventType::DeviceRegistered,
                Target::Device,
                &req.id,
                Outcome::Success,
                "",
                serde_json::json!({"labels": req.labels}),
            ),
        )
        .await?;
        Ok(Reply::DeviceRegistered(Box::new(DeviceRegistered {
            device: self.device_now(&req.id).await?,
            token,
        })))
    }

    /// A new device; 409 if the id is taken (two replicas inserting the same id at once: the
    /// second hits the unique key, is run again and answers 409 here).
    async fn insert_device(
        &mut self,
        id: &str,
        labels: &BTreeMap<String, String>,
        token: &str,
        now: i64,
    ) -> Fallible<()> {
        let exists = self
            .query_opt("SELECT 1 FROM devices WHERE id = $1", &[&id])
            .await?
            .is_some();
        if exists {
            return Err(
                StoreError::Conflict(format!("a device with id '{id}' already exists")).into(),
            );
        }
        self.exec(
            "INSERT INTO devices (id, token_hash, labels, created_us) \
             VALUES ($1, $2, $3::text::jsonb, $4)",
            &[&id, &hash_secret(token), &sql::labels_text(labels), &now],
        )
        .await?;
        Ok(())
    }

    async fn device_now(&self, id: &str) -> Fallible<Device> {
        sql::load_device(self.c, id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no device with id '{id}'")).into())
    }

    /// Locks a device's row until the transaction ends (a change decided on what it read).
    async fn lock_device(&self, id: &str) -> Fallible<()> {
        self.query_opt("SELECT 1 FROM devices WHERE id = $1 FOR UPDATE", &[&id])
            .await?;
        Ok(())
    }

    pub(crate) async fn create_enroll_key(
        &mut self,
        ctx: &Ctx,
        req: &EnrollKeyRequest,
        now: i64,
    ) -> Fallible<Reply> {
        let id = new_id("enk");
        let key = new_secret();
        let expires = now.saturating_add(big(req.ttl_seconds).saturating_mul(1_000_000));
        self.exec(
            "INSERT INTO enroll_keys (id, hash, labels, max_uses, created_us, expires_us) \
             VALUES ($1, $2, $3::text::jsonb, $4, $5, $6)",
            &[
                &id,
                &hash_secret(&key),
                &sql::labels_text(&req.labels),
                &i64::from(req.max_uses),
                &now,
                &expires,
            ],
        )
        .await?;
        self.record(
            ctx,
            AuditEvent::draft(
                EventType::EnrollKeyCreated,
                Target::EnrollKey,
                &id,
                Outcome::Success,
                "",
                serde_json::json!({"labels": req.labels, "max_uses": req.max_uses,
                    "expires_at": timefmt::format_us(expires)}),
            ),
        )
        .await?;
        Ok(Reply::EnrollKeyCreated(Box::new(EnrollKeyCreated {
            id,
            key,
            labels: req.labels.clone(),
            max_uses: req.max_uses,
            created_at: timefmt::format_us(now),
            expires_at: timefmt::format_us(expires),
        })))
    }

    /// Enrolls a device with an enroll key; the key's row is locked while its uses are
    /// counted, so replicas enrolling at once cannot spend it beyond `max_uses`.
    pub(crate) async fn enroll(
        &mut self,
        ctx: &Ctx,
        key: &str,
        req: &EnrollRequest,
        now: i64,
    ) -> Fallible<Reply> {
        let found = self
            .query_opt(
                "SELECT id, labels::text, max_uses, uses, expires_us FROM enroll_keys \
                 WHERE hash = $1 FOR UPDATE",
                &[&hash_secret(key)],
            )
            .await?;
        let refused = || {
            Failure::from(StoreError::Unauthorized(
                "the enroll key is unknown, spent or expired".into(),
            ))
        };
        let Some(r) = found else {
            return Err(refused());
        };
        let (key_id, key_labels, max_uses, uses, expires): (String, &str, i64, i64, i64) = (
            col(&r, 0)?,
            col(&r, 1)?,
            col(&r, 2)?,
            col(&r, 3)?,
            col(&r, 4)?,
        );
        if uses >= max_uses || now >= expires {
            return Err(refused());
        }
        let mut labels = req.labels.clone();
        labels.extend(sql::labels_from(key_labels)?);
        let token = new_secret();
        self.insert_device(&req.id, &labels, &token, now).await?;
        self.exec(
            "UPDATE enroll_keys SET uses = uses + 1 WHERE id = $1",
            &[&key_id],
        )
        .await?;
        self.record(
            ctx,
            AuditEvent::draft(
                EventType::DeviceEnrolled,
                Target::Device,
                &req.id,
                Outcome::Success,
                "",
                serde_json::json!({"enroll_key": key_id, "labels": labels}),
            ),
        )
        .await?;
        Ok(Reply::Enrolled(Enrolled {
            id: req.id.clone(),
            token,
        }))
    }

    pub(crate) async fn set_device_labels(
        &mut self,
        ctx: &Ctx,
        id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Fallible<Reply> {
        self.lock_device(id).await?;
        let before = self.device_now(id).await?;
        self.exec(
            "UPDATE devices SET labels = $2::text::jsonb WHERE id = $1",
            &[&id, &sql::labels_text(labels)],
        )
        .await?;
        self.record(
            ctx,
            AuditEvent::draft(
                EventType::DeviceLabelsChanged,
                Target::Device,
                id,
                Outcome::Success,
                "",
                serde_json::json!({"from": before.labels, "to": labels}),
            ),
        )
        .await?;
        Ok(Reply::Device(Box::new(self.device_now(id).await?)))
    }

    pub(crate) async fn revoke_device(&mut self, ctx: &Ctx, id: &str, now: i64) -> Fallible<Reply> {
        // Locks in the promoter's and the reports' order: the plan's counters, then the device.
        // The plan is read unlocked first; if the assignment moved to another plan in between,
        // the locked read below still decides, and its plan's counters are only updated after
        // the device is locked (a retryable deadlock at worst, never a wrong count).
        if let Some(s) = self.device_now(id).await?.assignment {
            self.lock_counters(&s.plan_id).await?;
        }
        self.lock_device(id).await?;
        let before = self.device_now(id).await?;
        if before.revoked_at.is_some() {
            return Ok(Reply::Device(Box::new(before)));
        }
        self.exec(
            "UPDATE devices SET revoked_us = $2, token_hash = NULL WHERE id = $1",
            &[&id, &now],
        )
        .await?;
        // Forgotten by the token cache after the commit, before the answer (`run_batch`): the
        // next request is refused.
        self.revoked.push(id.to_string());
        let mut cancelled = None;
        if let Some(s) = &before.assignment {
            if matches!(
                s.state,
                DeviceState::Pending | DeviceState::WaitingReady | DeviceState::Dispatched
            ) {
                if let Some((a, stage)) = sql::load_assignment(self.c, &s.plan_id, id, true).await?
                {
                    if let Some(mut n) = dev::recover(&a, Strategy::Abort, now) {
                        n.message = "cancelled: the device was revoked".into();
                        sql::update_assignment(self.c, &n).await?;
                        sql::shift(self.c, &s.plan_id, stage, Some(a.state), n.state, 1).await?;
                        sql::bump_revision(self.c, id).await?;
                        self.woken.push(id.to_string());
                        cancelled = Some(s.plan_id.clone());
                    }
                }
            }
        }
        self.record(
            ctx,
            AuditEvent::draft(
                EventType::DeviceRevoked,
                Target::Device,
                id,
                Outcome::Success,
                "",
                serde_json::json!({"cancelled_in": cancelled}),
            ),
        )
        .await?;
        Ok(Reply::Device(Box::new(self.device_now(id).await?)))
    }
}

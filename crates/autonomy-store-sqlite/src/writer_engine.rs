//! The writer's engine commands (SPEC §8, §9): the device registry, reports, drift, operator
//! verbs and recovery on engine-driven plans, and promoter ticks. Each runs inside the writer's
//! transaction like every other command: load, ask `autonomy_core`, store what it returns and
//! its audit events; counters move in the same transaction as the assignments they count.

use std::collections::BTreeMap;

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
use rusqlite::{params, OptionalExtension};

use super::{Failure, Writer};
use crate::engine as sql;

/// A report's move of one device between two states of a stage's counters, written at the end
/// of the batch (or before the next job that is not a report) by [`Writer::flush_shifts`].
pub(super) struct Shift {
    plan_id: String,
    stage: u32,
    from: DeviceState,
    to: DeviceState,
}

/// The most devices a refusal names.
const NAMED: usize = 20;
/// Reports kept per device (between two cuts a device may have up to `PRUNE_EVERY` more).
const REPORTS_KEPT: i64 = 100;
/// How often (in reports stored) a device's history is cut back.
const PRUNE_EVERY: i64 = 16;

fn conflict(why: String, event: AuditEvent) -> Failure {
    Failure {
        error: StoreError::Conflict(why),
        audit: Some(Box::new(event)),
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

impl Writer {
    // --- plans -------------------------------------------------------------------------------

    /// A new engine-driven plan gets its engine record, waiting at its start gate.
    pub(super) fn engine_create(&mut self, r: &Rollout, now: i64) -> Result<(), Failure> {
        if let Some(spec) = engine_spec(r)? {
            let e = EnginePlan::new(&spec, &r.plan.spec.artifact_ref, now);
            sql::save_engine(&self.conn, &r.plan.metadata.id, &e)?;
        }
        Ok(())
    }

    /// An operator verb on an engine-driven plan, after `plan::transition` allowed the phase
    /// change: gates, pauses, the first start (which freezes the targets).
    pub(super) fn engine_verb(
        &mut self,
        before: &Rollout,
        after: &Rollout,
        verb: Verb,
        stage: Option<u32>,
        reason: &str,
        now: i64,
    ) -> Result<(), Failure> {
        let id = &before.plan.metadata.id;
        let from = before.status.phase;
        let Some(mut e) = sql::load_engine(&self.conn, id)? else {
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
        let counters = sql::counters(&self.conn, id, e.stages.len())?;
        if let Err(g) = e.on_verb(verb, stage, &counters, now) {
            let why = g.to_string();
            return Err(conflict(
                why.clone(),
                rejected(id, verb.as_str(), from, reason, &why),
            ));
        }
        if after.status.phase == Phase::Active && !e.activated {
            self.activate(after, &mut e, now)?;
        }
        sql::save_engine(&self.conn, id, &e)?;
        Ok(())
    }

    /// Freezes the targets of a plan becoming active for the first time: resolves them in the
    /// registry, refuses devices another unsettled plan holds, assigns stages and stores one
    /// `pending` assignment per device.
    fn activate(&mut self, r: &Rollout, e: &mut EnginePlan, now: i64) -> Result<(), Failure> {
        let id = r.plan.metadata.id.as_str();
        let spec = engine_spec(r)?.ok_or_else(|| {
            StoreError::Internal(format!("plan {id} has an engine record but no engine spec"))
        })?;
        let registry = self.registry(&spec.targets)?;
        let (targets, unknown) = engine::resolve_targets(&spec.targets, registry.iter());
        let refuse =
            |why: String| conflict(why.clone(), rejected(id, "start", r.status.phase, "", &why));
        if !unknown.is_empty() {
            return Err(refuse(format!(
                "spec.targets.devices names devices that are not registered (or are revoked): {}",
                list_names(&unknown)
            )));
        }
        let held = self.held_elsewhere(id, &targets)?;
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
            for device in &p.devices {
                let a = Assignment::new(device.as_str(), id, now);
                sql::insert_assignment(&self.conn, &a, stage as u32, ord)?;
                self.conn
                    .prepare_cached("UPDATE devices SET plan_id = ?2 WHERE id = ?1")?
                    .execute(params![device, id])?;
                self.joined.push(device.clone());
                ord += 1;
            }
            sql::shift(
                &self.conn,
                id,
                stage as u32,
                None,
                DeviceState::Pending,
                p.devices.len() as u64,
            )?;
        }
        Ok(())
    }

    /// The registered, unrevoked devices `targets` could match, with their labels: the listed
    /// ids, and the devices whose labels carry every selector label (filtered in SQL, so a
    /// start reads its targets, not the whole registry). `resolve_targets` decides exactly.
    fn registry(&self, targets: &autonomy_api::Targets) -> Result<Vec<TargetDevice>, Failure> {
        let mut out = Vec::new();
        let mut push = |id: String, labels: String| -> Result<(), Failure> {
            out.push(TargetDevice {
                id,
                labels: sql::labels_from(&labels)?,
            });
            Ok(())
        };
        {
            let mut one = self.conn.prepare_cached(
                "SELECT id, labels FROM devices WHERE id = ?1 AND revoked_us IS NULL",
            )?;
            for id in &targets.devices {
                if let Some((id, labels)) = one
                    .query_row([id], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                    })
                    .optional()?
                {
                    push(id, labels)?;
                }
            }
        }
        if !targets.selector.is_empty() {
            let mut q = String::from("SELECT id, labels FROM devices WHERE revoked_us IS NULL");
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
            for (k, v) in &targets.selector {
                args.push(format!("$.\"{}\"", k.replace('"', "")).into());
                args.push(v.clone().into());
                q.push_str(&format!(
                    " AND json_extract(labels, ?{}) = ?{}",
                    args.len() - 1,
                    args.len()
                ));
            }
            let mut stmt = self.conn.prepare(&q)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            for row in rows {
                let (id, labels) = row?;
                push(id, labels)?;
            }
        }
        Ok(out)
    }

    /// The targets another plan holds (SPEC §8.2): one indexed lookup per target.
    fn held_elsewhere(
        &self,
        plan_id: &str,
        targets: &[TargetDevice],
    ) -> Result<Vec<String>, Failure> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT p.phase, a.state FROM devices d \
             JOIN plans p ON p.id = d.plan_id \
             JOIN assignments a ON a.plan_id = d.plan_id AND a.device_id = d.id \
             WHERE d.id = ?1 AND d.plan_id != ?2",
        )?;
        let mut held = Vec::new();
        for t in targets {
            let row: Option<(String, String)> = stmt
                .query_row(params![t.id, plan_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let Some((phase, state)) = row else { continue };
            let phase: Phase = phase.parse().map_err(StoreError::Internal)?;
            let state: DeviceState = state.parse().map_err(StoreError::Internal)?;
            if holds_device(phase, state) {
                held.push(t.id.clone());
            }
        }
        held.sort();
        Ok(held)
    }

    /// A recovery strategy applied to an engine-driven plan acts on its devices (SPEC §8.5).
    pub(super) fn engine_recover(
        &mut self,
        r: &Rollout,
        req: &ExecuteRequest,
        now: i64,
    ) -> Result<(), Failure> {
        let id = r.plan.metadata.id.as_str();
        let Some(mut e) = sql::load_engine(&self.conn, id)? else {
            return Ok(());
        };
        e.on_recovery(req.strategy);
        if req.strategy == Strategy::Retry && !e.activated && r.status.phase == Phase::Active {
            self.activate(r, &mut e, now)?;
        }
        let sql_all = format!(
            "SELECT {} FROM assignments WHERE plan_id = ?1 ORDER BY ord",
            sql::assignment_columns()
        );
        let all = {
            let mut stmt = self.conn.prepare_cached(&sql_all)?;
            let rows = stmt.query_map([id], sql::assignment_from_row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        let mut changed = false;
        for (a, _, _) in all {
            if let Some(n) = dev::recover(&a, req.strategy, now) {
                sql::update_assignment(&self.conn, &n)?;
                if dev::poll_action(n.state) != dev::poll_action(a.state) || n.attempt != a.attempt
                {
                    sql::bump_revision(&self.conn, &a.device_id)?;
                    self.woken.push(a.device_id.clone());
                }
                changed = true;
            }
        }
        if changed {
            self.recount(id)?;
        }
        sql::save_engine(&self.conn, id, &e)?;
        Ok(())
    }

    /// Rebuilds a plan's counters from its assignments (after a bulk change).
    fn recount(&self, plan_id: &str) -> Result<(), Failure> {
        self.conn
            .prepare_cached("DELETE FROM stage_counters WHERE plan_id = ?1")?
            .execute([plan_id])?;
        self.conn
            .prepare_cached(
                "INSERT INTO stage_counters (plan_id, stage, state, n) \
                 SELECT plan_id, stage, state, count(*) FROM assignments WHERE plan_id = ?1 \
                 GROUP BY stage, state",
            )?
            .execute([plan_id])?;
        Ok(())
    }

    // --- the promoter --------------------------------------------------------------------------

    /// One promoter tick of one plan (SPEC §8.3): decides again on what is stored now and
    /// applies every action, audited once each as the caller (`system:promoter`).
    pub(super) fn promote(
        &mut self,
        ctx: &Ctx,
        plan_id: &str,
        generation: u64,
        epoch: u64,
        max_dispatch: u64,
        now: i64,
    ) -> Result<Reply, Failure> {
        let none = Ok(Reply::Promoted { actions: 0 });
        let Some(mut r) = self.load(plan_id)? else {
            return none;
        };
        if r.plan.metadata.generation != generation || epoch != self.epoch {
            return none;
        }
        let Some(e) = sql::load_engine(&self.conn, plan_id)? else {
            return none;
        };
        let snap = sql::snapshot(&self.conn, plan_id, e, now, &self.live)?;
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
            let details = self.apply_action(ctx, plan_id, &mut e, action, now)?;
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
                    )?;
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
                )?;
                if matches!(action, Action::Abort { .. }) {
                    self.cancel_unstarted(plan_id, "cancelled: the plan was aborted", now)?;
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
            )?;
        }
        sql::save_engine(&self.conn, plan_id, &e)?;
        if doc_changed {
            r.status.rollout = None;
            self.save(&r, false)?;
        }
        Ok(Reply::Promoted {
            actions: actions.len() as u64,
        })
    }

    /// The device-level part of an action; returns the details of its audit event.
    fn apply_action(
        &mut self,
        ctx: &Ctx,
        plan_id: &str,
        e: &mut EnginePlan,
        action: &Action,
        now: i64,
    ) -> Result<serde_json::Value, Failure> {
        match action {
            Action::TimeOut { devices } => {
                let timeout = e.policy.device_timeout_seconds;
                for id in devices {
                    let Some((a, stage)) = sql::load_assignment(&self.conn, plan_id, id)? else {
                        continue;
                    };
                    let deadline = dev::deadline_us(a.dispatched_at_us.unwrap_or(now), timeout);
                    let Some(n) = dev::timed_out(&a, deadline, now) else {
                        continue;
                    };
                    sql::update_assignment(&self.conn, &n)?;
                    sql::shift(&self.conn, plan_id, stage, Some(a.state), n.state, 1)?;
                    sql::bump_revision(&self.conn, id)?;
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
                    )?;
                }
                Ok(serde_json::json!({"devices": devices}))
            }
            Action::RetryDevices { stage, count } => {
                let picked = self.pick(
                    plan_id,
                    *stage,
                    "failed",
                    Some(e.policy.max_device_retries),
                    *count,
                )?;
                let mut ids = Vec::new();
                for a in picked {
                    if let Some(n) = dev::recover(&a, Strategy::Retry, now) {
                        sql::update_assignment(&self.conn, &n)?;
                        sql::shift(
                            &self.conn,
                            plan_id,
                            *stage as u32,
                            Some(a.state),
                            n.state,
                            1,
                        )?;
                        sql::bump_revision(&self.conn, &a.device_id)?;
                        self.woken.push(a.device_id.clone());
                        ids.push(a.device_id);
                    }
                }
                Ok(serde_json::json!({"devices": ids, "count": ids.len()}))
            }
            Action::DispatchDevices { stage, count } => {
                let picked = self.pick(plan_id, *stage, "pending", None, *count)?;
                let mut ids = Vec::with_capacity(picked.len());
                for a in picked {
                    let digest = self.device_digest(&a.device_id)?;
                    if let Some(n) = dev::dispatch(&a, digest.as_deref(), now) {
                        sql::update_assignment(&self.conn, &n)?;
                        sql::bump_revision(&self.conn, &a.device_id)?;
                        self.woken.push(a.device_id.clone());
                        ids.push(a.device_id);
                    }
                }
                sql::shift(
                    &self.conn,
                    plan_id,
                    *stage as u32,
                    Some(DeviceState::Pending),
                    DeviceState::Dispatched,
                    ids.len() as u64,
                )?;
                Ok(serde_json::json!({"devices": ids, "count": ids.len()}))
            }
            Action::DispatchListed { stage, devices } => {
                let mut ids = Vec::with_capacity(devices.len());
                for id in devices {
                    let Some((a, at)) = sql::load_assignment(&self.conn, plan_id, id)? else {
                        continue;
                    };
                    if at as usize != *stage {
                        continue;
                    }
                    let digest = self.device_digest(id)?;
                    if let Some(n) = dev::dispatch(&a, digest.as_deref(), now) {
                        sql::update_assignment(&self.conn, &n)?;
                        sql::shift(&self.conn, plan_id, at, Some(a.state), n.state, 1)?;
                        sql::bump_revision(&self.conn, id)?;
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
                    let Some((a, at)) = sql::load_assignment(&self.conn, plan_id, id)? else {
                        continue;
                    };
                    if at as usize != *stage {
                        continue;
                    }
                    let Some(n) = dev::set_readiness(&a, why, now) else {
                        continue;
                    };
                    sql::update_assignment(&self.conn, &n)?;
                    sql::shift(&self.conn, plan_id, at, Some(a.state), n.state, 1)?;
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

    /// Up to `count` assignments of a stage in `state` (one outside flight: `pending` or
    /// `failed`), in the plan's order.
    fn pick(
        &self,
        plan_id: &str,
        stage: usize,
        state: &str,
        max_attempt: Option<u32>,
        count: u64,
    ) -> Result<Vec<Assignment>, Failure> {
        let q = format!(
            "SELECT {} FROM assignments WHERE plan_id = ?1 AND state = ?2 AND stage = ?3 \
             AND {} AND attempt <= ?4 ORDER BY ord LIMIT ?5",
            sql::assignment_columns(),
            sql::NOT_IN_FLIGHT_SQL
        );
        let mut stmt = self.conn.prepare_cached(&q)?;
        let rows = stmt.query_map(
            params![
                plan_id,
                state,
                stage as i64,
                max_attempt.map_or(i64::MAX, i64::from),
                count as i64
            ],
            sql::assignment_from_row,
        )?;
        Ok(rows
            .map(|r| r.map(|(a, _, _)| a))
            .collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// What the device last said it runs: its newest unflushed poll, else the stored digest.
    fn device_digest(&self, device_id: &str) -> Result<Option<String>, Failure> {
        if let Some(b) = self.live.pending_beat(device_id) {
            if !b.installed_digest.is_empty() {
                return Ok(Some(b.installed_digest));
            }
        }
        Ok(self
            .conn
            .prepare_cached("SELECT installed_digest FROM devices WHERE id = ?1")?
            .query_row([device_id], |r| r.get::<_, Option<String>>(0))
            .optional()?
            .flatten())
    }

    /// Cancels the unstarted devices of a plan (`pending`, `dispatched`); their next poll
    /// says so.
    fn cancel_unstarted(&mut self, plan_id: &str, why: &str, now: i64) -> Result<(), Failure> {
        let q = format!(
            "SELECT {} FROM assignments WHERE plan_id = ?1 \
             AND state IN ('pending','waiting_ready','dispatched')",
            sql::assignment_columns()
        );
        let picked = {
            let mut stmt = self.conn.prepare_cached(&q)?;
            let rows = stmt.query_map([plan_id], sql::assignment_from_row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        for (a, stage, _) in picked {
            if let Some(mut n) = dev::recover(&a, Strategy::Abort, now) {
                n.message = why.to_string();
                sql::update_assignment(&self.conn, &n)?;
                sql::shift(&self.conn, plan_id, stage, Some(a.state), n.state, 1)?;
                sql::bump_revision(&self.conn, &a.device_id)?;
                self.woken.push(a.device_id);
            }
        }
        Ok(())
    }

    // --- the device protocol -----------------------------------------------------------------

    /// The target digest and `reboot_required` of a plan (immutable: cached).
    fn engine_params(&mut self, plan_id: &str) -> Result<Option<(String, bool)>, Failure> {
        if let Some(p) = self.engine_params.get(plan_id) {
            return Ok(Some(p.clone()));
        }
        let row: Option<(String, bool)> = self
            .conn
            .prepare_cached(
                "SELECT target_digest, reboot_required FROM engine_plans WHERE plan_id = ?1",
            )?
            .query_row([plan_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some(p) = &row {
            if self.engine_params.len() > 10_000 {
                self.engine_params.clear();
            }
            self.engine_params.insert(plan_id.to_string(), p.clone());
        }
        Ok(row)
    }

    /// A device's report (SPEC §9.2): applied, a duplicate, or a 409 naming why not.
    pub(super) fn report(
        &mut self,
        device_id: &str,
        req: &ReportRequest,
        now: i64,
    ) -> Result<Reply, Failure> {
        let not_assigned = || {
            let r = dev::ReportRefusal::NotAssigned {
                plan_id: req.plan_id.clone(),
            };
            Failure::from(StoreError::Conflict(format!("{}: {r}", r.code())))
        };
        let Some((a, stage)) = sql::load_assignment(&self.conn, &req.plan_id, device_id)? else {
            return Err(not_assigned());
        };
        let Some((target, reboot)) = self.engine_params(&req.plan_id)? else {
            return Err(not_assigned());
        };
        let outcome = dev::apply_report(&a, req, &target, reboot, now)
            .map_err(|r| StoreError::Conflict(format!("{}: {r}", r.code())))?;
        if outcome.result == ReportResult::Applied {
            let n = &outcome.assignment;
            sql::update_assignment(&self.conn, n)?;
            if a.state != n.state {
                self.shifts.push(Shift {
                    plan_id: req.plan_id.clone(),
                    stage,
                    from: a.state,
                    to: n.state,
                });
            }
            let body =
                serde_json::to_string(req).map_err(|e| StoreError::Internal(e.to_string()))?;
            self.conn
                .prepare_cached(
                    "INSERT INTO device_reports (device_id, plan_id, attempt, seq, state, result, \
                     body, at_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    device_id,
                    req.plan_id,
                    req.attempt,
                    req.seq as i64,
                    req.state.as_str(),
                    n.state.as_str(),
                    body,
                    now
                ])?;
            // The history is cut back to the last REPORTS_KEPT every PRUNE_EVERY reports of the
            // store (by row id), not on every report: the cut re-prepared its statement on each
            // run (measured: a fifth of the writer's time under report load).
            if self.conn.last_insert_rowid() % PRUNE_EVERY == 0 {
                self.conn
                    .prepare_cached(
                        "DELETE FROM device_reports WHERE device_id = ?1 AND id <= \
                         (SELECT id FROM device_reports WHERE device_id = ?1 \
                          ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                    )?
                    .execute(params![device_id, REPORTS_KEPT])?;
            }
            if !req.installed_digest.is_empty() {
                self.conn
                    .prepare_cached("UPDATE devices SET installed_digest = ?2 WHERE id = ?1")?
                    .execute(params![device_id, req.installed_digest])?;
                self.live.supersede_digest(device_id, &req.installed_digest);
            }
        }
        Ok(Reply::Report(outcome.response()))
    }

    /// A poll's digest moved a settled device into or out of drift (SPEC §9.3).
    pub(super) fn drift(
        &mut self,
        ctx: &Ctx,
        device_id: &str,
        plan_id: &str,
        digest: &str,
        now: i64,
    ) -> Result<Reply, Failure> {
        let done = Ok(Reply::Promoted { actions: 0 });
        let Some((a, stage)) = sql::load_assignment(&self.conn, plan_id, device_id)? else {
            return done;
        };
        let Some((target, _)) = self.engine_params(plan_id)? else {
            return done;
        };
        let Some(change) = dev::poll_drift(&a, digest, &target, now) else {
            return done;
        };
        sql::update_assignment(&self.conn, &change.assignment)?;
        sql::shift(
            &self.conn,
            plan_id,
            stage,
            Some(a.state),
            change.assignment.state,
            1,
        )?;
        self.conn
            .prepare_cached("UPDATE devices SET installed_digest = ?2 WHERE id = ?1")?
            .execute(params![device_id, digest])?;
        self.live.supersede_digest(device_id, digest);
        self.record(ctx, change.event)?;
        Ok(Reply::Promoted { actions: 1 })
    }

    /// Writes the counter moves of the reports run so far in this transaction, one statement
    /// per (plan, stage, state) they touched, atomically (on failure none is written and the
    /// moves stay queued).
    pub(super) fn flush_shifts(&mut self) -> rusqlite::Result<()> {
        if self.shifts.is_empty() {
            return Ok(());
        }
        let mut net: BTreeMap<(&str, u32, DeviceState), i64> = BTreeMap::new();
        for s in &self.shifts {
            *net.entry((&s.plan_id, s.stage, s.from)).or_default() -= 1;
            *net.entry((&s.plan_id, s.stage, s.to)).or_default() += 1;
        }
        self.conn.prepare_cached("SAVEPOINT shifts")?.execute([])?;
        let written = (|| {
            let mut stmt = self.conn.prepare_cached(
                "INSERT INTO stage_counters (plan_id, stage, state, n) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (plan_id, stage, state) DO UPDATE SET n = n + excluded.n",
            )?;
            for ((plan_id, stage, state), n) in &net {
                if *n != 0 {
                    stmt.execute(params![plan_id, stage, state.as_str(), n])?;
                }
            }
            Ok(())
        })();
        match written {
            Ok(()) => {
                self.conn.prepare_cached("RELEASE shifts")?.execute([])?;
                self.shifts.clear();
                Ok(())
            }
            Err(e) => {
                let _ = self
                    .conn
                    .prepare_cached("ROLLBACK TO shifts")
                    .and_then(|mut s| s.execute([]))
                    .and_then(|_| self.conn.prepare_cached("RELEASE shifts")?.execute([]));
                Err(e)
            }
        }
    }

    /// Writes the heartbeats polls left in memory, in this transaction.
    pub(super) fn flush_beats(&mut self) -> rusqlite::Result<usize> {
        let beats = self.live.take_beats();
        if beats.is_empty() {
            return Ok(0);
        }
        let result = (|| {
            let mut stmt = self.conn.prepare_cached(
                "UPDATE devices SET last_seen_us = max(coalesce(last_seen_us, 0), ?2), \
                 installed_digest = CASE WHEN ?3 != '' THEN ?3 ELSE installed_digest END, \
                 boot_id = CASE WHEN ?4 != '' THEN ?4 ELSE boot_id END, \
                 conditions = CASE WHEN ?2 >= coalesce(last_seen_us, 0) THEN ?5 \
                 ELSE conditions END WHERE id = ?1",
            )?;
            for (id, b) in &beats {
                stmt.execute(params![
                    id,
                    b.at_us,
                    b.installed_digest,
                    b.boot_id,
                    sql::conditions_text(&b.conditions)
                ])?;
            }
            Ok(beats.len())
        })();
        if result.is_err() {
            self.live.restore_beats(beats);
        }
        result
    }

    // --- the registry --------------------------------------------------------------------------

    pub(super) fn register_device(
        &mut self,
        ctx: &Ctx,
        req: &RegisterDeviceRequest,
        now: i64,
    ) -> Result<Reply, Failure> {
        let token = new_secret();
        self.insert_device(&req.id, &req.labels, &token, now)?;
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
        )?;
        Ok(Reply::DeviceRegistered(Box::new(DeviceRegistered {
            device: self.device_now(&req.id)?,
            token,
        })))
    }

    fn insert_device(
        &mut self,
        id: &str,
        labels: &BTreeMap<String, String>,
        token: &str,
        now: i64,
    ) -> Result<(), Failure> {
        let exists: bool = self
            .conn
            .prepare_cached("SELECT 1 FROM devices WHERE id = ?1")?
            .query_row([id], |_| Ok(()))
            .optional()?
            .is_some();
        if exists {
            return Err(
                StoreError::Conflict(format!("a device with id '{id}' already exists")).into(),
            );
        }
        self.conn
            .prepare_cached(
                "INSERT INTO devices (id, token_hash, labels, created_us) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                id,
                hash_secret(token),
                sql::labels_text(labels),
                now
            ])?;
        Ok(())
    }

    fn device_now(&self, id: &str) -> Result<Device, Failure> {
        sql::load_device(&self.conn, id)?
            .ok_or_else(|| StoreError::NotFound(format!("no device with id '{id}'")).into())
    }

    pub(super) fn create_enroll_key(
        &mut self,
        ctx: &Ctx,
        req: &EnrollKeyRequest,
        now: i64,
    ) -> Result<Reply, Failure> {
        let id = new_id("enk");
        let key = new_secret();
        let expires = now.saturating_add((req.ttl_seconds as i64).saturating_mul(1_000_000));
        self.conn
            .prepare_cached(
                "INSERT INTO enroll_keys (id, hash, labels, max_uses, created_us, expires_us) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                id,
                hash_secret(&key),
                sql::labels_text(&req.labels),
                req.max_uses,
                now,
                expires
            ])?;
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
        )?;
        Ok(Reply::EnrollKeyCreated(Box::new(EnrollKeyCreated {
            id,
            key,
            labels: req.labels.clone(),
            max_uses: req.max_uses,
            created_at: timefmt::format_us(now),
            expires_at: timefmt::format_us(expires),
        })))
    }

    pub(super) fn enroll(
        &mut self,
        ctx: &Ctx,
        key: &str,
        req: &EnrollRequest,
        now: i64,
    ) -> Result<Reply, Failure> {
        let row: Option<(String, String, i64, i64, i64)> = self
            .conn
            .prepare_cached(
                "SELECT id, labels, max_uses, uses, expires_us FROM enroll_keys WHERE hash = ?1",
            )?
            .query_row([hash_secret(key)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?;
        let refused = || {
            Failure::from(StoreError::Unauthorized(
                "the enroll key is unknown, spent or expired".into(),
            ))
        };
        let Some((key_id, key_labels, max_uses, uses, expires)) = row else {
            return Err(refused());
        };
        if uses >= max_uses || now >= expires {
            return Err(refused());
        }
        let mut labels = req.labels.clone();
        labels.extend(sql::labels_from(&key_labels)?);
        let token = new_secret();
        self.insert_device(&req.id, &labels, &token, now)?;
        self.conn
            .prepare_cached("UPDATE enroll_keys SET uses = uses + 1 WHERE id = ?1")?
            .execute([&key_id])?;
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
        )?;
        Ok(Reply::Enrolled(Enrolled {
            id: req.id.clone(),
            token,
        }))
    }

    pub(super) fn set_device_labels(
        &mut self,
        ctx: &Ctx,
        id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Reply, Failure> {
        let before = self.device_now(id)?;
        self.conn
            .prepare_cached("UPDATE devices SET labels = ?2 WHERE id = ?1")?
            .execute(params![id, sql::labels_text(labels)])?;
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
        )?;
        Ok(Reply::Device(Box::new(self.device_now(id)?)))
    }

    pub(super) fn revoke_device(
        &mut self,
        ctx: &Ctx,
        id: &str,
        now: i64,
    ) -> Result<Reply, Failure> {
        let before = self.device_now(id)?;
        if before.revoked_at.is_some() {
            return Ok(Reply::Device(Box::new(before)));
        }
        self.conn
            .prepare_cached("UPDATE devices SET revoked_us = ?2, token_hash = NULL WHERE id = ?1")?
            .execute(params![id, now])?;
        // Forgotten by the token cache after the commit, before the answer (`run_batch`): the
        // next request is refused.
        self.revoked.push(id.to_string());
        let mut cancelled = None;
        if let Some(s) = &before.assignment {
            if matches!(
                s.state,
                DeviceState::Pending | DeviceState::WaitingReady | DeviceState::Dispatched
            ) {
                if let Some((a, stage)) = sql::load_assignment(&self.conn, &s.plan_id, id)? {
                    if let Some(mut n) = dev::recover(&a, Strategy::Abort, now) {
                        n.message = "cancelled: the device was revoked".into();
                        sql::update_assignment(&self.conn, &n)?;
                        sql::shift(&self.conn, &s.plan_id, stage, Some(a.state), n.state, 1)?;
                        sql::bump_revision(&self.conn, id)?;
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
        )?;
        Ok(Reply::Device(Box::new(self.device_now(id)?)))
    }
}

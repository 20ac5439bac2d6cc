//! What a change to a plan does, decided once for every backend: building a new plan,
//! applying an operator verb, and the outcome of a recovery request. Each function takes the
//! current state, the request and `now`, and returns the new state plus the audit event that
//! records it (a draft: the store stamps id, actor and request id, then seals it). A store only
//! loads, calls one of these, and persists what it returns.

use autonomy_api::{
    timefmt, AuditEvent, CreateRolloutRequest, EventType, ExecuteRequest, ExecuteResponse,
    HistoryEntry, Outcome, Phase, Plan, PlanMetadata, PlanStatus, Rollout, Target, Verb,
};

use crate::{is_progress, recovery, verb_transition, Recovery};

/// A plan creation after the server validated it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPlan {
    pub id: String,
    pub request: CreateRolloutRequest,
    pub warnings: Vec<String>,
}

/// A decision that was refused: why, and the event that records the refusal (kept even though
/// nothing else changes).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub why: String,
    pub event: Box<AuditEvent>,
}

/// The plan `new` becomes, created by `actor` at `now_us`, and its `plan.created` event.
pub fn create(new: &NewPlan, actor: &str, now_us: i64) -> (Rollout, AuditEvent) {
    let at = timefmt::format_us(now_us);
    let phase = if new.request.draft {
        Phase::Draft
    } else {
        Phase::Published
    };
    let rollout = Rollout {
        plan: Plan {
            metadata: PlanMetadata {
                id: new.id.clone(),
                labels: new.request.metadata.labels.clone(),
                created_at: at.clone(),
                updated_at: at.clone(),
                created_by: actor.to_string(),
                generation: 1,
            },
            spec: new.request.spec.clone(),
        },
        status: PlanStatus {
            phase,
            phase_changed_at: at.clone(),
            last_progress_at: at.clone(),
            warnings: new.warnings.clone(),
            history: vec![HistoryEntry {
                generation: 1,
                at,
                action: "create".into(),
                from: None,
                to: phase,
                actor: actor.to_string(),
                reason: String::new(),
            }],
            rollout: None,
        },
    };
    let event = AuditEvent::draft(
        EventType::PlanCreated,
        Target::RolloutPlan,
        &new.id,
        Outcome::Success,
        "",
        serde_json::json!({
            "phase": phase,
            "artifact_ref": rollout.plan.spec.artifact_ref,
            "warnings": rollout.status.warnings,
        }),
    );
    (rollout, event)
}

/// The refusal of a create whose id is taken.
pub fn duplicate(id: &str) -> Refusal {
    Refusal {
        why: format!("a plan with id '{id}' already exists"),
        event: Box::new(AuditEvent::draft(
            EventType::PlanCreated,
            Target::RolloutPlan,
            id,
            Outcome::Rejected,
            "duplicate id",
            serde_json::json!({}),
        )),
    }
}

/// Applies an operator verb to `rollout` (publish, start, pause, resume), or explains why it
/// does not apply. On success `rollout` is the new state.
pub fn transition(
    rollout: &mut Rollout,
    verb: Verb,
    actor: &str,
    reason: &str,
    now_us: i64,
) -> Result<AuditEvent, Refusal> {
    let id = rollout.plan.metadata.id.clone();
    let from = rollout.status.phase;
    let to = verb_transition(from, verb).map_err(|why| Refusal {
        event: Box::new(AuditEvent::draft(
            EventType::RolloutPhaseChanged,
            Target::RolloutPlan,
            &id,
            Outcome::Rejected,
            reason,
            serde_json::json!({"verb": verb, "from_phase": from, "why": why}),
        )),
        why,
    })?;
    move_phase(rollout, verb.as_str(), to, actor, reason, now_us);
    Ok(AuditEvent::draft(
        EventType::RolloutPhaseChanged,
        Target::RolloutPlan,
        &id,
        Outcome::Success,
        reason,
        serde_json::json!({
            "verb": verb,
            "from_phase": from,
            "to_phase": to,
            "generation": rollout.plan.metadata.generation,
        }),
    ))
}

/// Runs a recovery request against `rollout`: the answer (success, noop or rejected) and its
/// `rollback.executed` event. On success `rollout` is the new state. A dry run is answered by
/// [`evaluate`] alone and records nothing.
pub fn recover(
    rollout: &mut Rollout,
    req: &ExecuteRequest,
    actor: &str,
    execution_id: String,
    now_us: i64,
) -> (ExecuteResponse, AuditEvent) {
    let from = rollout.status.phase;
    let decision = recovery(from, req.strategy);
    let mut response = evaluate(req, from, &decision, execution_id);
    if let Recovery::Apply(to) = decision {
        move_phase(
            rollout,
            req.strategy.as_str(),
            to,
            actor,
            &req.reason,
            now_us,
        );
    }
    response.generation = Some(rollout.plan.metadata.generation);
    let event = AuditEvent::draft(
        EventType::RollbackExecuted,
        Target::RolloutPlan,
        &req.resource,
        response.outcome,
        &req.reason,
        serde_json::json!({
            "execution_id": response.execution_id,
            "strategy": req.strategy,
            "from_phase": response.from_phase,
            "to_phase": response.to_phase,
            "generation": response.generation,
        }),
    );
    (response, event)
}

/// The answer to a recovery request before anything is written (also the whole answer of a
/// dry run).
pub fn evaluate(
    req: &ExecuteRequest,
    from: Phase,
    decision: &Recovery,
    execution_id: String,
) -> ExecuteResponse {
    let (outcome, to, message) = match decision {
        Recovery::Apply(to) => (
            Outcome::Success,
            *to,
            format!(
                "{} {}: {from} → {to}",
                if req.dry_run {
                    "would apply"
                } else {
                    "applied"
                },
                req.strategy
            ),
        ),
        Recovery::Noop => (
            Outcome::Noop,
            from,
            format!("plan is already {from}; nothing to do"),
        ),
        Recovery::Reject(why) => (Outcome::Rejected, from, why.clone()),
    };
    ExecuteResponse {
        outcome,
        execution_id,
        target: req.target.clone(),
        resource: req.resource.clone(),
        strategy: req.strategy,
        from_phase: from,
        to_phase: to,
        dry_run: req.dry_run,
        audit_event_id: None,
        message,
        generation: None,
        error: None,
    }
}

/// Applies a phase change: bumps generation, stamps times, appends history; a move into a
/// progress phase resets the stuck clock.
pub fn move_phase(r: &mut Rollout, action: &str, to: Phase, actor: &str, reason: &str, now: i64) {
    let at = timefmt::format_us(now);
    let from = r.status.phase;
    r.plan.metadata.generation += 1;
    r.plan.metadata.updated_at = at.clone();
    r.status.phase = to;
    r.status.phase_changed_at = at.clone();
    if is_progress(to) {
        r.status.last_progress_at = at.clone();
    }
    r.status.history.push(HistoryEntry {
        generation: r.plan.metadata.generation,
        at,
        action: action.to_string(),
        from: Some(from),
        to,
        actor: actor.to_string(),
        reason: reason.to_string(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use autonomy_api::{CreateMetadata, PlanSpec, Strategy};

    const T0: i64 = 1_800_000_000_000_000;

    fn new_plan(draft: bool) -> NewPlan {
        NewPlan {
            id: "p1".into(),
            request: CreateRolloutRequest {
                metadata: CreateMetadata {
                    id: Some("p1".into()),
                    labels: [("site".to_string(), "berlin".to_string())].into(),
                },
                spec: PlanSpec {
                    artifact_ref: "corrupt://x".into(),
                    target_lock_fingerprint: None,
                    targets: Default::default(),
                    stages: vec![],
                    policy: None,
                },
                draft,
            },
            warnings: vec!["w".into()],
        }
    }

    #[test]
    fn create_builds_generation_one_with_history_and_event() {
        let (r, ev) = create(&new_plan(false), "alice", T0);
        assert_eq!(r.status.phase, Phase::Published);
        assert_eq!(r.plan.metadata.generation, 1);
        assert_eq!(r.plan.metadata.created_by, "alice");
        assert_eq!(r.status.warnings, vec!["w".to_string()]);
        assert_eq!(r.status.history.len(), 1);
        assert_eq!(r.status.history[0].from, None);
        assert_eq!(r.status.phase_changed_at, timefmt::format_us(T0));
        assert_eq!(ev.event_type, "plan.created");
        assert_eq!(ev.outcome, Outcome::Success);
        assert_eq!(ev.details["phase"], "published");
        assert_eq!(ev.details["warnings"][0], "w");
        let (d, _) = create(&new_plan(true), "alice", T0);
        assert_eq!(d.status.phase, Phase::Draft);
        assert_eq!(duplicate("p1").event.outcome, Outcome::Rejected);
    }

    #[test]
    fn transition_moves_phase_or_refuses_without_change() {
        let (mut r, _) = create(&new_plan(false), "alice", T0);
        let before = r.clone();
        let refused = transition(&mut r, Verb::Pause, "bob", "why", T0 + 1).unwrap_err();
        assert_eq!(r, before, "a refused verb changes nothing");
        assert!(refused.why.contains("cannot pause"));
        assert_eq!(refused.event.outcome, Outcome::Rejected);
        let ev = transition(&mut r, Verb::Start, "bob", "go", T0 + 5).unwrap();
        assert_eq!(r.status.phase, Phase::Active);
        assert_eq!(r.plan.metadata.generation, 2);
        assert_eq!(r.status.last_progress_at, timefmt::format_us(T0 + 5));
        assert_eq!(r.status.history.last().unwrap().actor, "bob");
        assert_eq!(ev.details["to_phase"], "active");
        assert_eq!(ev.details["generation"], 2);
        // Pausing is not progress: the stuck clock keeps its time.
        transition(&mut r, Verb::Pause, "bob", "", T0 + 9).unwrap();
        assert_eq!(r.status.last_progress_at, timefmt::format_us(T0 + 5));
        assert_eq!(r.status.phase_changed_at, timefmt::format_us(T0 + 9));
    }

    #[test]
    fn recover_applies_noops_and_rejects() {
        let req = |strategy, dry_run| ExecuteRequest {
            target: "rollout_plan".into(),
            resource: "p1".into(),
            strategy,
            reason: "r".into(),
            dry_run,
        };
        let recover_now = |r: &mut Rollout, strategy, id: &str| {
            recover(r, &req(strategy, false), "op", id.into(), T0)
        };
        let (mut r, _) = create(&new_plan(false), "alice", T0);
        let (resp, ev) = recover_now(&mut r, Strategy::Abort, "exe_1");
        assert_eq!(resp.outcome, Outcome::Success);
        assert_eq!(resp.to_phase, Phase::Aborted);
        assert_eq!(resp.generation, Some(2));
        assert_eq!(r.status.phase, Phase::Aborted);
        assert_eq!(ev.outcome, Outcome::Success);
        let before = r.clone();
        let (resp, ev) = recover_now(&mut r, Strategy::Abort, "exe_2");
        assert_eq!((resp.outcome, ev.outcome), (Outcome::Noop, Outcome::Noop));
        assert_eq!(r, before);
        let (resp, _) = recover_now(&mut r, Strategy::Retry, "exe_3");
        assert_eq!(resp.outcome, Outcome::Rejected);
        assert_eq!(resp.generation, Some(2));
        assert_eq!(r, before);
        let dry = evaluate(
            &req(Strategy::Rollback, true),
            Phase::Active,
            &Recovery::Apply(Phase::RolledBack),
            "x".into(),
        );
        assert!(dry.message.starts_with("would apply rollback"));
    }
}

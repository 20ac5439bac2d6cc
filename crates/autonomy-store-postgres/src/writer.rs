//! The writers: group commit over pooled connections (SPEC §7 "Writes").
//!
//! Each writer task takes one job, then every other job already queued (up to `max_batch`),
//! and runs them in one transaction, each inside its own savepoint (a failing job rolls back
//! alone). The jobs' audit events are kept as drafts; only after the last job does a batch
//! lock the chain head (`audit_head`, one row), seal its drafts into the one BLAKE3 chain,
//! insert them in one statement and commit — so `seq` has no gaps in commit order across
//! every replica, and the lock is held for the sealing and the commit, not for the requests'
//! own statements (the bench's P1 profile: holding it from BEGIN serialised every writer of
//! every replica). Device reports record nothing and never take that lock. A
//! job that hits a serialization failure, a deadlock or a unique key another transaction took
//! first is run again once in a fresh savepoint; a fault after that is 503. Nobody hears
//! "done" before COMMIT returned.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use autonomy_api::{
    timefmt, AuditEvent, EventType, ExecuteRequest, Outcome, Role, Rollout, Target, TokenCreated,
    TokenInfo, Verb,
};
use autonomy_core::plan;
use autonomy_store::ids::{hash_secret, new_id, new_secret};
use autonomy_store::{now_us, Ctx, NewPlan, Reply, Result, StoreError, IDEMPOTENCY_TTL_US};
use deadpool_postgres::{ClientWrapper, Pool};
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::pg::{db_error, is_retryable, pool_error};
use crate::Shared;

#[path = "writer_engine.rs"]
mod engine_ops;

pub(crate) struct Job {
    pub ctx: Ctx,
    pub command: Command,
    pub reply: oneshot::Sender<Result<Reply>>,
}

pub(crate) enum Command {
    Create(Box<NewPlan>),
    Transition {
        id: String,
        verb: Verb,
        reason: String,
        stage: Option<u32>,
    },
    Execute(Box<ExecuteRequest>),
    /// `secret: None` makes a fresh one.
    TokenCreate {
        operator: String,
        role: Role,
        secret: Option<String>,
    },
    TokenRevoke {
        id: String,
    },
    /// A draft event that records no change (a denied request).
    AuditOnly(Box<AuditEvent>),
    RegisterDevice(Box<autonomy_api::device::RegisterDeviceRequest>),
    CreateEnrollKey(Box<autonomy_api::device::EnrollKeyRequest>),
    Enroll {
        key: String,
        req: Box<autonomy_api::device::EnrollRequest>,
    },
    DeviceLabels {
        id: String,
        labels: std::collections::BTreeMap<String, String>,
    },
    RevokeDevice {
        id: String,
    },
    Report {
        device_id: String,
        req: Box<autonomy_api::device::ReportRequest>,
    },
    Drift {
        device_id: String,
        plan_id: String,
        digest: String,
    },
    Promote {
        plan_id: String,
        generation: u64,
        epoch: u64,
        max_dispatch: u64,
    },
    /// This replica took the leader lock: raise the epoch and audit `leader.acquired`.
    LeaderAcquired {
        replica: String,
    },
}

/// A job's failure, and the audit event that records the rejection (kept even though the
/// job's own changes are rolled back).
pub(crate) struct Failure {
    pub error: StoreError,
    pub audit: Option<Box<AuditEvent>>,
    /// The database error behind it, when it may pass on a second try.
    pub retryable: bool,
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        Failure {
            error,
            audit: None,
            retryable: false,
        }
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure {
            retryable: is_retryable(&e),
            error: db_error(e),
            audit: None,
        }
    }
}

pub(crate) type Fallible<T> = std::result::Result<T, Failure>;

/// One writer task: takes batches from `rx` until it closes.
pub(crate) async fn run(
    pool: Pool,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    shared: Arc<Shared>,
    max_batch: usize,
) {
    loop {
        let batch = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            batch
        };
        run_batch(&pool, batch, &shared).await;
    }
}

async fn run_batch(pool: &Pool, batch: Vec<Job>, shared: &Shared) {
    let started = Instant::now();
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => {
            let why = pool_error(e).to_string();
            fail_all(batch, &why, shared);
            return;
        }
    };
    if let Err(e) = client.batch_execute("BEGIN").await {
        fail_all(batch, &db_error(e).to_string(), shared);
        return;
    }
    let mut w = W {
        c: &client,
        shared,
        drafts: Vec::new(),
        last_time_us: now_us(),
        woken: Vec::new(),
        revoked: Vec::new(),
    };
    let mut results = Vec::with_capacity(batch.len());
    for job in &batch {
        results.push(w.run_job(job).await);
    }
    let events = w.drafts.len() as u64;
    let committed = w.finish().await;
    if let Err(why) = committed {
        let _ = client.batch_execute("ROLLBACK").await;
        shared
            .metrics
            .failed_commits
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = %why, jobs = batch.len(), "commit failed; nothing changed");
        fail_all(batch, &why, shared);
        return;
    }
    let m = &shared.metrics;
    m.commits.fetch_add(1, Ordering::Relaxed);
    m.committed_requests
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    m.max_batch.fetch_max(batch.len() as u64, Ordering::Relaxed);
    m.audit_events.fetch_add(events, Ordering::Relaxed);
    let micros = started.elapsed().as_micros() as u64;
    m.commit_micros.fetch_add(micros, Ordering::Relaxed);
    let slot = autonomy_store::bucket_of(&autonomy_store::BATCH_SIZE_BUCKETS, batch.len() as u64);
    m.batch_sizes[slot].fetch_add(1, Ordering::Relaxed);
    let slot = autonomy_store::bucket_of(&autonomy_store::COMMIT_MICROS_BUCKETS, micros);
    m.commit_latencies[slot].fetch_add(1, Ordering::Relaxed);
    shared
        .storage_fault
        .store(false, std::sync::atomic::Ordering::SeqCst);
    if events > 0 {
        shared.mirror_nudge.notify_one();
    }
    if !w.woken.is_empty() {
        shared.live.wake(w.woken.iter().map(String::as_str));
    }
    for id in std::mem::take(&mut w.revoked) {
        shared.live.forget_device(&id);
    }
    for (job, result) in batch.into_iter().zip(results) {
        let _ = job.reply.send(result);
    }
}

fn fail_all(batch: Vec<Job>, why: &str, shared: &Shared) {
    shared.storage_fault.store(true, Ordering::SeqCst);
    for job in batch {
        let _ = job
            .reply
            .send(Err(StoreError::Unavailable(why.to_string())));
    }
}

/// One transaction of a writer: the connection, the audit events its jobs recorded (sealed
/// at the end), and what to do after the commit.
pub(crate) struct W<'a> {
    pub c: &'a ClientWrapper,
    pub shared: &'a Shared,
    /// The jobs' events, stamped (id, caller) but not yet sealed: `finish` seals them under
    /// the chain-head lock.
    pub drafts: Vec<AuditEvent>,
    /// The jobs' clock: never behind the time this batch started.
    pub last_time_us: i64,
    /// Devices whose revision this batch raised: their long polls are woken after commit.
    pub woken: Vec<String>,
    /// Devices this batch revoked: the token cache forgets them after commit.
    pub revoked: Vec<String>,
}

impl W<'_> {
    pub(crate) async fn exec(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Fallible<u64> {
        let stmt = self.c.prepare_cached(sql).await?;
        Ok(self.c.execute(&stmt, params).await?)
    }

    pub(crate) async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Fallible<Option<tokio_postgres::Row>> {
        let stmt = self.c.prepare_cached(sql).await?;
        Ok(self.c.query_opt(&stmt, params).await?)
    }

    pub(crate) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Fallible<Vec<tokio_postgres::Row>> {
        let stmt = self.c.prepare_cached(sql).await?;
        Ok(self.c.query(&stmt, params).await?)
    }

    /// Seals the batch's drafts under the chain-head lock (taken last, held only for the
    /// sealing and the commit), stores them and the moved head in two statements, then
    /// commits. Event times never go backwards in seq order, across replicas: each is at
    /// least the head's.
    async fn finish(&mut self) -> std::result::Result<(), String> {
        if !self.drafts.is_empty() {
            self.seal_drafts().await.map_err(|e| e.error.to_string())?;
        }
        // Long polls on other replicas: delivered only if this commits (`notify.rs`).
        for payload in crate::notify::payloads(&self.woken) {
            self.exec(
                "SELECT pg_notify($1, $2)",
                &[&crate::notify::CHANNEL, &payload],
            )
            .await
            .map_err(|e| e.error.to_string())?;
        }
        self.c
            .batch_execute("COMMIT")
            .await
            .map_err(|e| db_error(e).to_string())
    }

    async fn seal_drafts(&mut self) -> Fallible<()> {
        let row = self
            .query_opt(
                "SELECT seq, hash, time_us FROM audit_head WHERE id = 1 FOR UPDATE",
                &[],
            )
            .await?
            .ok_or_else(|| StoreError::Internal("the audit chain head row is missing".into()))?;
        let (mut seq, mut hash, head_time): (i64, String, i64) =
            (row.get(0), row.get(1), row.get(2));
        let time_us = now_us().max(self.last_time_us).max(head_time);
        let n = self.drafts.len();
        let (mut seqs, mut ids, mut types, mut actors) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut resources, mut outcomes, mut hashes, mut lines) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for mut event in std::mem::take(&mut self.drafts) {
            seq += 1;
            event.time = timefmt::format_us(time_us);
            let sealed = autonomy_audit::seal(event, seq as u64, &hash);
            let ev = sealed.event;
            hash = ev.hash.clone();
            seqs.push(seq);
            ids.push(ev.id);
            types.push(ev.event_type);
            actors.push(ev.actor);
            resources.push(ev.resource);
            outcomes.push(ev.outcome.as_str().to_string());
            hashes.push(ev.hash);
            lines.push(sealed.line);
        }
        let times = vec![time_us; n];
        self.exec(
            "INSERT INTO audit_events (seq, id, time_us, event_type, actor, resource, outcome, \
             hash, line) SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], \
             $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[])",
            &[
                &seqs, &ids, &times, &types, &actors, &resources, &outcomes, &hashes, &lines,
            ],
        )
        .await?;
        self.exec(
            "UPDATE audit_head SET seq = $1, hash = $2, time_us = $3 WHERE id = 1",
            &[&seq, &hash, &time_us],
        )
        .await?;
        Ok(())
    }

    /// Runs one job in its own savepoint, once more if it failed in a way that may pass.
    async fn run_job(&mut self, job: &Job) -> Result<Reply> {
        let mut tries = 0;
        loop {
            tries += 1;
            let (drafts_before, woken_before, revoked_before) =
                (self.drafts.len(), self.woken.len(), self.revoked.len());
            if let Err(e) = self.c.batch_execute("SAVEPOINT job").await {
                return Err(db_error(e));
            }
            match self.apply_idempotent(job).await {
                Ok(reply) => {
                    return match self.c.batch_execute("RELEASE SAVEPOINT job").await {
                        Ok(()) => Ok(reply),
                        Err(e) => Err(db_error(e)),
                    }
                }
                Err(failure) => {
                    if let Err(e) = self
                        .c
                        .batch_execute("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job")
                        .await
                    {
                        return Err(db_error(e));
                    }
                    self.drafts.truncate(drafts_before);
                    self.woken.truncate(woken_before);
                    self.revoked.truncate(revoked_before);
                    if failure.retryable && tries < 2 {
                        continue;
                    }
                    // The rejection itself is audited, outside the rolled-back savepoint.
                    if let Some(event) = failure.audit {
                        if let Err(e) = self.record(&job.ctx, *event).await {
                            return Err(e.error);
                        }
                    }
                    return Err(failure.error);
                }
            }
        }
    }

    /// Runs the job once per (actor, Idempotency-Key) within [`IDEMPOTENCY_TTL_US`].
    async fn apply_idempotent(&mut self, job: &Job) -> Fallible<Reply> {
        let Some((key, fingerprint)) = &job.ctx.idempotency else {
            return self.apply(&job.ctx, &job.command).await;
        };
        let actor = &job.ctx.actor;
        let fresh_after = now_us().max(self.last_time_us) - IDEMPOTENCY_TTL_US;
        let seen = self
            .query_opt(
                "SELECT fingerprint, reply FROM idempotency \
                 WHERE key = $1 AND actor IN ($2, '') AND created_us > $3 \
                 ORDER BY actor DESC LIMIT 1",
                &[key, actor, &fresh_after],
            )
            .await?;
        if let Some(row) = seen {
            let first: String = row.get(0);
            if &first != fingerprint {
                return Err(StoreError::Unprocessable(format!(
                    "Idempotency-Key '{key}' was already used for a different request; use a \
                     new key for a new request"
                ))
                .into());
            }
            let reply: Reply = serde_json::from_str(row.get::<_, &str>(1))
                .map_err(|e| StoreError::Internal(format!("stored idempotent reply: {e}")))?;
            return match reply {
                Reply::PlanRef { id, created } => {
                    let plan = Box::new(self.load_existing(&id).await?);
                    Ok(if created {
                        Reply::Created(plan)
                    } else {
                        Reply::Transitioned(plan)
                    })
                }
                other => Ok(other),
            };
        }
        let reply = self.apply(&job.ctx, &job.command).await?;
        let text = serde_json::to_string(&reply.kept())
            .map_err(|e| StoreError::Internal(format!("encode reply: {e}")))?;
        self.exec(
            "INSERT INTO idempotency (actor, key, fingerprint, reply, created_us) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (actor, key) DO UPDATE SET \
             fingerprint = excluded.fingerprint, reply = excluded.reply, \
             created_us = excluded.created_us",
            &[actor, key, fingerprint, &text, &self.last_time_us],
        )
        .await?;
        Ok(reply)
    }

    async fn apply(&mut self, ctx: &Ctx, command: &Command) -> Fallible<Reply> {
        let now = now_us().max(self.last_time_us);
        self.last_time_us = now;
        match command {
            Command::Create(plan) => self.create(ctx, plan, now).await,
            Command::Transition {
                id,
                verb,
                reason,
                stage,
            } => self.transition(ctx, id, *verb, reason, *stage, now).await,
            Command::Execute(req) => self.execute(ctx, req, now).await,
            Command::TokenCreate {
                operator,
                role,
                secret,
            } => {
                self.token_create(ctx, operator, *role, secret.clone(), now)
                    .await
            }
            Command::TokenRevoke { id } => self.token_revoke(ctx, id, now).await,
            Command::AuditOnly(event) => {
                self.record(ctx, event.as_ref().clone()).await?;
                Ok(Reply::Audited)
            }
            Command::RegisterDevice(req) => self.register_device(ctx, req, now).await,
            Command::CreateEnrollKey(req) => self.create_enroll_key(ctx, req, now).await,
            Command::Enroll { key, req } => self.enroll(ctx, key, req, now).await,
            Command::DeviceLabels { id, labels } => self.set_device_labels(ctx, id, labels).await,
            Command::RevokeDevice { id } => self.revoke_device(ctx, id, now).await,
            Command::Report { device_id, req } => self.report(device_id, req, now).await,
            Command::Drift {
                device_id,
                plan_id,
                digest,
            } => self.drift(ctx, device_id, plan_id, digest, now).await,
            Command::Promote {
                plan_id,
                generation,
                epoch,
                max_dispatch,
            } => {
                self.promote(ctx, plan_id, *generation, *epoch, *max_dispatch, now)
                    .await
            }
            Command::LeaderAcquired { replica } => self.leader_acquired(ctx, replica, now).await,
        }
    }

    /// Stamps `event` (id, the caller) and keeps it for the batch's sealing (`finish`): its
    /// seq, time and hash are given under the chain-head lock just before COMMIT. Returns its
    /// id.
    pub(crate) async fn record(&mut self, ctx: &Ctx, mut event: AuditEvent) -> Fallible<String> {
        event.id = new_id("evt");
        event.actor = ctx.actor.clone();
        event.request_id = ctx.request_id.clone();
        let id = event.id.clone();
        self.drafts.push(event);
        Ok(id)
    }

    /// The plan, its row locked until the transaction ends (read-then-write under lock).
    pub(crate) async fn load(&self, id: &str) -> Fallible<Option<Rollout>> {
        let row = self
            .query_opt("SELECT doc FROM plans WHERE id = $1 FOR UPDATE", &[&id])
            .await?;
        row.map(|r| {
            serde_json::from_str(r.get::<_, &str>(0)).map_err(|e| {
                StoreError::Internal(format!("stored plan {id} is unreadable: {e}")).into()
            })
        })
        .transpose()
    }

    pub(crate) async fn load_existing(&self, id: &str) -> Fallible<Rollout> {
        self.load(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no rollout plan with id '{id}'")).into())
    }

    /// Stores the plan document (`status.rollout` is never stored).
    pub(crate) async fn save(&self, r: &Rollout, insert: bool) -> Fallible<()> {
        let doc = if r.status.rollout.is_some() {
            let mut bare = r.clone();
            bare.status.rollout = None;
            serde_json::to_string(&bare)
        } else {
            serde_json::to_string(r)
        }
        .map_err(|e| StoreError::Internal(e.to_string()))?;
        let s = &r.status;
        let changed = timefmt::parse_rfc3339_us(&s.phase_changed_at).unwrap_or(0);
        let progress = timefmt::parse_rfc3339_us(&s.last_progress_at).unwrap_or(0);
        let generation = r.plan.metadata.generation as i64;
        let sql = if insert {
            "INSERT INTO plans (id, phase, generation, phase_changed_us, last_progress_us, doc) \
             VALUES ($1, $2, $3, $4, $5, $6)"
        } else {
            "UPDATE plans SET phase = $2, generation = $3, phase_changed_us = $4, \
             last_progress_us = $5, doc = $6 WHERE id = $1"
        };
        self.exec(
            sql,
            &[
                &r.plan.metadata.id,
                &s.phase.as_str(),
                &generation,
                &changed,
                &progress,
                &doc,
            ],
        )
        .await?;
        Ok(())
    }

    async fn create(&mut self, ctx: &Ctx, new: &NewPlan, now: i64) -> Fallible<Reply> {
        if self.load(&new.id).await?.is_some() {
            let refusal = plan::duplicate(&new.id);
            return Err(Failure {
                error: StoreError::Conflict(refusal.why),
                audit: Some(refusal.event),
                retryable: false,
            });
        }
        let (mut rollout, event) = plan::create(new, &ctx.actor, now);
        self.save(&rollout, true).await?;
        self.engine_create(&rollout, now).await?;
        self.record(ctx, event).await?;
        crate::engine::fill_rollout(self.c, &mut rollout)
            .await
            .map_err(Failure::from)?;
        Ok(Reply::Created(Box::new(rollout)))
    }

    async fn transition(
        &mut self,
        ctx: &Ctx,
        id: &str,
        verb: Verb,
        reason: &str,
        stage: Option<u32>,
        now: i64,
    ) -> Fallible<Reply> {
        let mut rollout = self.load_existing(id).await?;
        let before = rollout.clone();
        match plan::transition(&mut rollout, verb, &ctx.actor, reason, now) {
            Ok(event) => {
                self.engine_verb(&before, &rollout, verb, stage, reason, now)
                    .await?;
                self.save(&rollout, false).await?;
                self.record(ctx, event).await?;
                crate::engine::fill_rollout(self.c, &mut rollout)
                    .await
                    .map_err(Failure::from)?;
                Ok(Reply::Transitioned(Box::new(rollout)))
            }
            Err(refusal) => Err(Failure {
                error: StoreError::Conflict(refusal.why),
                audit: Some(refusal.event),
                retryable: false,
            }),
        }
    }

    async fn execute(&mut self, ctx: &Ctx, req: &ExecuteRequest, now: i64) -> Fallible<Reply> {
        let mut rollout = self.load_existing(&req.resource).await?;
        let generation = rollout.plan.metadata.generation;
        let (mut response, event) =
            plan::recover(&mut rollout, req, &ctx.actor, new_id("exe"), now);
        if rollout.plan.metadata.generation != generation {
            self.engine_recover(&rollout, req, now).await?;
            self.save(&rollout, false).await?;
        }
        response.audit_event_id = Some(self.record(ctx, event).await?);
        Ok(Reply::Executed(Box::new(response)))
    }

    async fn token_create(
        &mut self,
        ctx: &Ctx,
        operator: &str,
        role: Role,
        secret: Option<String>,
        now: i64,
    ) -> Fallible<Reply> {
        let secret = secret.unwrap_or_else(new_secret);
        let id = new_id("tok");
        self.exec(
            "INSERT INTO tokens (id, hash, operator, role, created_us) VALUES ($1, $2, $3, $4, $5)",
            &[&id, &hash_secret(&secret), &operator, &role.as_str(), &now],
        )
        .await?;
        self.record(
            ctx,
            AuditEvent::draft(
                EventType::TokenCreated,
                Target::Token,
                &id,
                Outcome::Success,
                "",
                serde_json::json!({"operator": operator, "role": role}),
            ),
        )
        .await?;
        Ok(Reply::TokenCreated(TokenCreated {
            id,
            operator: operator.to_string(),
            role,
            token: secret,
            created_at: timefmt::format_us(now),
        }))
    }

    async fn token_revoke(&mut self, ctx: &Ctx, id: &str, now: i64) -> Fallible<Reply> {
        let row = self
            .query_opt(
                "SELECT operator, role, created_us, revoked_us FROM tokens WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await?;
        let Some(row) = row else {
            return Err(StoreError::NotFound(format!("no token with id '{id}'")).into());
        };
        let (operator, role, created, revoked): (String, String, i64, Option<i64>) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let role: Role = role.parse().map_err(StoreError::Internal)?;
        let revoked = match revoked {
            Some(at) => at, // already revoked: same answer, no second event
            None => {
                if role == Role::Admin {
                    // Every active admin token is locked, so two revocations on two replicas
                    // cannot each leave the other's last admin.
                    let admins = self
                        .query(
                            "SELECT id FROM tokens WHERE role = 'admin' AND revoked_us IS NULL \
                             FOR UPDATE",
                            &[],
                        )
                        .await?
                        .len();
                    if admins <= 1 {
                        let why = format!(
                            "token '{id}' is the last active admin token: revoking it would leave \
                             nobody able to manage tokens; create another admin token first"
                        );
                        return Err(Failure {
                            audit: Some(Box::new(AuditEvent::draft(
                                EventType::TokenRevoked,
                                Target::Token,
                                id,
                                Outcome::Rejected,
                                "",
                                serde_json::json!({"operator": operator, "role": role, "why": why}),
                            ))),
                            error: StoreError::Conflict(why),
                            retryable: false,
                        });
                    }
                }
                self.exec(
                    "UPDATE tokens SET revoked_us = $2 WHERE id = $1",
                    &[&id, &now],
                )
                .await?;
                self.record(
                    ctx,
                    AuditEvent::draft(
                        EventType::TokenRevoked,
                        Target::Token,
                        id,
                        Outcome::Success,
                        "",
                        serde_json::json!({"operator": operator, "role": role}),
                    ),
                )
                .await?;
                now
            }
        };
        Ok(Reply::TokenRevoked(TokenInfo {
            id: id.to_string(),
            operator,
            role,
            created_at: timefmt::format_us(created),
            revoked_at: Some(timefmt::format_us(revoked)),
        }))
    }

    /// Raises the leader epoch for `replica` (which holds the advisory lock) and audits it.
    async fn leader_acquired(&mut self, ctx: &Ctx, replica: &str, now: i64) -> Fallible<Reply> {
        let row = self
            .query_opt(
                "INSERT INTO leader (id, epoch, replica, since_us) VALUES (1, 1, $1, $2) \
                 ON CONFLICT (id) DO UPDATE SET epoch = leader.epoch + 1, \
                 replica = excluded.replica, since_us = excluded.since_us RETURNING epoch",
                &[&replica, &now],
            )
            .await?
            .ok_or_else(|| StoreError::Internal("the leader row was not written".into()))?;
        let epoch = row.get::<_, i64>(0) as u64;
        self.record(
            ctx,
            AuditEvent::draft(
                EventType::LeaderAcquired,
                Target::Leader,
                replica,
                Outcome::Success,
                "",
                serde_json::json!({"replica": replica, "epoch": epoch}),
            ),
        )
        .await?;
        Ok(Reply::LeaderAcquired { epoch })
    }
}

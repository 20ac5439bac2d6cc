//! Reads, on a pool of their own: each read is one statement or a few, in PostgreSQL's
//! READ COMMITTED (a read never waits for a writer and never blocks one).

use autonomy_api::{
    timefmt, AuditEvent, AuditFilter, ExecuteRequest, LeaderInfo, Phase, Rollout, StuckCode,
    StuckReport, TokenInfo,
};
use autonomy_store::ids::{hash_secret, new_id};
use autonomy_store::{now_us, Identity, Reply, Result, StoreError};
use tokio_postgres::types::ToSql;

use crate::pg::db_error;

#[path = "read_engine.rs"]
mod engine_reads;

/// A pooled read connection, lent to one read.
pub(crate) struct R {
    pub c: deadpool_postgres::Object,
}

fn parse_doc(id: &str, doc: &str) -> Result<Rollout> {
    serde_json::from_str(doc)
        .map_err(|e| StoreError::Internal(format!("stored plan {id} is unreadable: {e}")))
}

impl R {
    pub(crate) async fn rows(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        let stmt = self.c.prepare_cached(sql).await.map_err(db_error)?;
        self.c.query(&stmt, params).await.map_err(db_error)
    }

    pub(crate) async fn row(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>> {
        let stmt = self.c.prepare_cached(sql).await.map_err(db_error)?;
        self.c.query_opt(&stmt, params).await.map_err(db_error)
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        self.c.simple_query("SELECT 1").await.map_err(db_error)?;
        Ok(())
    }

    pub(crate) async fn get(&self, id: &str) -> Result<Rollout> {
        match self
            .row("SELECT doc FROM plans WHERE id = $1", &[&id])
            .await?
        {
            Some(row) => {
                let mut r = parse_doc(id, row.get(0))?;
                crate::engine::fill_rollout(&self.c, &mut r).await?;
                Ok(r)
            }
            None => Err(StoreError::NotFound(format!(
                "no rollout plan with id '{id}'"
            ))),
        }
    }

    /// One page in creation order after `after` (a `pk`); the next cursor when there is more.
    pub(crate) async fn list(
        &self,
        phase: Option<Phase>,
        limit: usize,
        after: i64,
    ) -> Result<(Vec<Rollout>, Option<i64>)> {
        let fetch = (limit + 1) as i64;
        let rows = match phase {
            Some(p) => {
                self.rows(
                    "SELECT pk, id, doc FROM plans WHERE phase = $3 AND pk > $1 ORDER BY pk \
                     LIMIT $2",
                    &[&after, &fetch, &p.as_str()],
                )
                .await?
            }
            None => {
                self.rows(
                    "SELECT pk, id, doc FROM plans WHERE pk > $1 ORDER BY pk LIMIT $2",
                    &[&after, &fetch],
                )
                .await?
            }
        };
        let mut more = rows.len() > limit;
        let mut items = Vec::with_capacity(limit.min(rows.len()));
        let (mut last, mut bytes) = (None, 0usize);
        for row in rows.iter().take(limit) {
            let (pk, id, doc): (i64, &str, &str) = (row.get(0), row.get(1), row.get(2));
            // A page is bounded in bytes too (SPEC §5.11), as on SQLite.
            if !items.is_empty() && bytes + doc.len() > autonomy_store::MAX_PAGE_BYTES {
                more = true;
                break;
            }
            bytes += doc.len();
            let mut r = parse_doc(id, doc)?;
            crate::engine::fill_rollout(&self.c, &mut r).await?;
            items.push(r);
            last = Some(pk);
        }
        Ok((items, if more { last } else { None }))
    }

    /// The stuck scan (SPEC §8.6): record-only plans by staleness, engine-driven plans by
    /// their reasons; oldest progress first. The same rules as SQLite's (autonomy_core).
    pub(crate) async fn stuck(
        &self,
        threshold_seconds: f64,
        limit: usize,
        code: Option<StuckCode>,
        promoter_running: bool,
        live: &autonomy_store::Live,
    ) -> Result<StuckReport> {
        // Never behind the newest time the chain recorded (a clock stepped back cannot make a
        // stale plan look fresh).
        let high_water: i64 = self
            .row("SELECT time_us FROM audit_head WHERE id = 1", &[])
            .await?
            .map_or(0, |r| r.get(0));
        let now = now_us().max(high_water);
        let cutoff = now - (threshold_seconds * 1e6) as i64;
        let phases = autonomy_core::STUCK_PHASES.map(|p| p.as_str());
        let rows = self
            .rows(
                "SELECT id, phase, phase_changed_us, last_progress_us FROM plans p \
                 WHERE phase IN ($1, $2) AND last_progress_us <= $3 \
                 AND NOT EXISTS (SELECT 1 FROM engine_plans e WHERE e.plan_id = p.id) \
                 ORDER BY last_progress_us LIMIT $4",
                &[&phases[0], &phases[1], &cutoff, &(limit as i64)],
            )
            .await?;
        let count = if rows.len() < limit {
            rows.len() as u64
        } else {
            self.row(
                "SELECT count(*) FROM plans p WHERE phase IN ($1, $2) AND last_progress_us <= $3 \
                 AND NOT EXISTS (SELECT 1 FROM engine_plans e WHERE e.plan_id = p.id)",
                &[&phases[0], &phases[1], &cutoff],
            )
            .await?
            .map_or(0, |r| r.get::<_, i64>(0)) as u64
        };
        let mut record_only = Vec::with_capacity(rows.len());
        for row in rows {
            let (id, phase, changed, progress): (String, String, i64, i64) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            let phase: Phase = phase.parse().map_err(StoreError::Internal)?;
            let item = autonomy_core::engine::record_only_item(id, phase, changed, progress, now);
            record_only.push((progress, item));
        }
        let threshold_us = (threshold_seconds * 1e6) as i64;
        let found = self
            .engine_stuck(now, threshold_us, promoter_running, live)
            .await?;
        Ok(autonomy_core::engine::stuck_report(
            threshold_seconds,
            now,
            limit,
            code,
            record_only,
            count,
            found,
        ))
    }

    pub(crate) async fn dry_run(&self, req: &ExecuteRequest) -> Result<Reply> {
        let rollout = self.get(&req.resource).await?;
        let from = rollout.status.phase;
        let decision = autonomy_core::recovery(from, req.strategy);
        let mut response = autonomy_core::plan::evaluate(req, from, &decision, new_id("dry"));
        response.generation = Some(rollout.plan.metadata.generation);
        Ok(Reply::Executed(Box::new(response)))
    }

    pub(crate) async fn audit_events(&self, f: &AuditFilter) -> Result<Vec<AuditEvent>> {
        let mut sql = String::from("SELECT line FROM audit_events WHERE true");
        let mut texts: Vec<String> = Vec::new();
        let mut ints: Vec<i64> = Vec::new();
        // Parameters are numbered in the order they are added; texts and integers are kept
        // apart only to hold them while the query runs.
        let mut order: Vec<(bool, usize)> = Vec::new();
        let mut add_text = |clause: &str, v: String, sql: &mut String| {
            texts.push(v);
            order.push((true, texts.len() - 1));
            sql.push_str(&format!(" AND {clause} ${}", order.len()));
        };
        if let Some(t) = &f.event_type {
            add_text("event_type =", t.clone(), &mut sql);
        }
        if let Some(a) = &f.actor {
            add_text("actor =", a.clone(), &mut sql);
        }
        if let Some(r) = &f.resource {
            add_text("resource =", r.clone(), &mut sql);
        }
        if let Some(o) = f.outcome {
            add_text("outcome =", o.as_str().to_string(), &mut sql);
        }
        let mut add_int = |clause: &str, v: i64, sql: &mut String| {
            ints.push(v);
            order.push((false, ints.len() - 1));
            sql.push_str(&format!(" AND {clause} ${}", order.len()));
        };
        if let Some(s) = f.start_us {
            add_int("time_us >=", s, &mut sql);
        }
        if let Some(e) = f.end_us {
            add_int("time_us <", e, &mut sql);
        }
        if let Some(c) = f.after_seq {
            add_int("seq >", i64::try_from(c).unwrap_or(i64::MAX), &mut sql);
        }
        ints.push(f.limit as i64);
        order.push((false, ints.len() - 1));
        sql.push_str(&format!(" ORDER BY time_us, seq LIMIT ${}", order.len()));
        let params: Vec<&(dyn ToSql + Sync)> = order
            .iter()
            .map(|&(text, i)| -> &(dyn ToSql + Sync) {
                if text {
                    &texts[i]
                } else {
                    &ints[i]
                }
            })
            .collect();
        let rows = self.rows(&sql, &params).await?;
        rows.iter()
            .map(|r| {
                autonomy_audit::parse_line(r.get(0))
                    .map_err(|e| StoreError::Internal(format!("stored audit event: {e}")))
            })
            .collect()
    }

    pub(crate) async fn identify(&self, secret: &str) -> Result<Option<Identity>> {
        let row = self
            .row(
                "SELECT id, operator, role FROM tokens WHERE hash = $1 AND revoked_us IS NULL",
                &[&hash_secret(secret)],
            )
            .await?;
        row.map(|r| {
            Ok(Identity {
                token_id: r.get(0),
                operator: r.get(1),
                role: r.get::<_, &str>(2).parse().map_err(StoreError::Internal)?,
            })
        })
        .transpose()
    }

    pub(crate) async fn tokens(&self) -> Result<Vec<TokenInfo>> {
        let rows = self
            .rows(
                "SELECT id, operator, role, created_us, revoked_us FROM tokens \
                 ORDER BY created_us, id",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(TokenInfo {
                    id: r.get(0),
                    operator: r.get(1),
                    role: r.get::<_, &str>(2).parse().map_err(StoreError::Internal)?,
                    created_at: timefmt::format_us(r.get(3)),
                    revoked_at: r.get::<_, Option<i64>>(4).map(timefmt::format_us),
                })
            })
            .collect()
    }

    pub(crate) async fn phase_counts(&self) -> Result<Vec<(String, u64)>> {
        let rows = self
            .rows(
                "SELECT phase, count(*) FROM plans GROUP BY phase ORDER BY phase",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    /// The leader as recorded (`is_self` is the caller's to fill).
    pub(crate) async fn leader(&self) -> Result<LeaderInfo> {
        let row = self
            .row(
                "SELECT replica, epoch, since_us FROM leader WHERE id = 1",
                &[],
            )
            .await?;
        Ok(match row {
            Some(r) => LeaderInfo {
                replica: r.get(0),
                epoch: r.get::<_, i64>(1) as u64,
                since: timefmt::format_us(r.get(2)),
                is_self: false,
            },
            None => LeaderInfo {
                replica: String::new(),
                epoch: 0,
                since: String::new(),
                is_self: false,
            },
        })
    }
}

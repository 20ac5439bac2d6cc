//! Health, readiness and `/metrics`.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use autonomy_api::{AuditCheck, Health};
use autonomy_store::Store;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::{ApiError, AppState};

pub async fn health<S: Store>(State(state): State<AppState<S>>) -> Json<Health> {
    let (audit, audit_damage) = match &state.audit {
        Some(m) => {
            let (check, damage) = m.get();
            (Some(check), damage)
        }
        None => (None, None),
    };
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        store: state.store.backend().into(),
        audit,
        audit_damage,
    })
}

pub async fn ready<S: Store>(
    State(state): State<AppState<S>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.store.ready().await?;
    Ok(Json(serde_json::json!({"status": "ready"})))
}

pub async fn metrics<S: Store>(State(state): State<AppState<S>>) -> Result<Response, ApiError> {
    let m = state.store.metrics();
    let mut out = String::new();
    let counters = [
        (
            "autonomy_store_commits_total",
            "Write transactions committed (each one fsync).",
            m.commits,
        ),
        (
            "autonomy_store_committed_requests_total",
            "Write requests carried by committed transactions.",
            m.committed_requests,
        ),
        (
            "autonomy_store_failed_commits_total",
            "Write transactions that failed to commit (answered 503).",
            m.failed_commits,
        ),
        (
            "autonomy_store_commit_microseconds_total",
            "Time spent committing, including the audit fsync.",
            m.commit_micros,
        ),
        (
            "autonomy_audit_events_total",
            "Audit events committed.",
            m.audit_events,
        ),
        (
            "autonomy_audit_export_failures_total",
            "Failed appends to the retained audit store.",
            m.audit_export_failures,
        ),
    ];
    let e = &state.engine;
    let engine_counters = [
        (
            "autonomy_promoter_ticks_total",
            "Promoter ticks finished (SPEC §8.3).",
            e.ticks.load(std::sync::atomic::Ordering::Relaxed),
        ),
        (
            "autonomy_promoter_actions_total",
            "Promoter actions applied (each audited once as system:promoter).",
            e.actions.load(std::sync::atomic::Ordering::Relaxed),
        ),
        (
            "autonomy_device_polls_total",
            "Device polls answered (SPEC §9.2).",
            e.polls.load(std::sync::atomic::Ordering::Relaxed),
        ),
        (
            "autonomy_device_reports_total",
            "Device reports answered (applied or duplicate).",
            e.reports.load(std::sync::atomic::Ordering::Relaxed),
        ),
    ];
    for (name, help, v) in counters.into_iter().chain(engine_counters) {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP autonomy_store_max_batch Largest group commit so far.\n# TYPE autonomy_store_max_batch gauge\nautonomy_store_max_batch {}",
        m.max_batch
    );
    let _ = writeln!(
        out,
        "# HELP autonomy_device_long_polls_waiting Devices with a long poll waiting now.\n# TYPE autonomy_device_long_polls_waiting gauge\nautonomy_device_long_polls_waiting {}",
        state.store.live().waiting()
    );
    if let Some(monitor) = &state.audit {
        let (check, _) = monitor.get();
        let _ = writeln!(
            out,
            "# HELP autonomy_audit_damaged 1 when the background check found the audit store damaged (see /v1/health).\n# TYPE autonomy_audit_damaged gauge\nautonomy_audit_damaged {}",
            u8::from(check == AuditCheck::Damaged)
        );
        let _ = writeln!(
            out,
            "# HELP autonomy_audit_verifying 1 while the background check of the audit store runs.\n# TYPE autonomy_audit_verifying gauge\nautonomy_audit_verifying {}",
            u8::from(check == AuditCheck::Verifying)
        );
    }
    let _ = writeln!(out, "# HELP autonomy_http_responses_total Responses by status class.\n# TYPE autonomy_http_responses_total counter");
    for (i, c) in state.http.by_class.iter().enumerate().skip(1) {
        let _ = writeln!(
            out,
            "autonomy_http_responses_total{{class=\"{i}xx\"}} {}",
            c.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP autonomy_auth_denied_total Requests refused for want of a valid bearer token.\n# TYPE autonomy_auth_denied_total counter\nautonomy_auth_denied_total {}",
        state.denials.total()
    );
    let _ = writeln!(
        out,
        "# HELP autonomy_auth_tarpitted_total Refusals answered after the tarpit delay (source over its budget).\n# TYPE autonomy_auth_tarpitted_total counter\nautonomy_auth_tarpitted_total {}",
        state.denials.tarpitted()
    );
    let _ = writeln!(
        out,
        "# HELP autonomy_plans Plans by phase.\n# TYPE autonomy_plans gauge"
    );
    for (phase, n) in state.store.phase_counts().await? {
        let _ = writeln!(out, "autonomy_plans{{phase=\"{phase}\"}} {n}");
    }
    let _ = writeln!(out, "# HELP autonomy_time_seconds Server clock.\n# TYPE autonomy_time_seconds gauge\nautonomy_time_seconds {}", autonomy_store::now_us() as f64 / 1e6);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

//! Health, readiness, `/metrics`, this API's document and who the caller is.

use std::sync::atomic::Ordering;

use autonomy_api::{AuditCheck, Health, Role, WhoAmI};
use autonomy_store::Store;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::auth::{Caller, ReadIdentity};
use crate::metrics::Snapshot;
use crate::{ApiError, AppState};

#[utoipa::path(
    get,
    operation_id = "system_health",
    path = "/v1/health",
    tag = "system",
    summary = "Is the CP up",
    responses((status = 200, description = "Up", body = autonomy_api::Health), crate::openapi::ReadErrors)
)]
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

#[utoipa::path(
    get,
    operation_id = "system_ready",
    path = "/v1/ready",
    tag = "system",
    summary = "Can the store take writes now",
    responses((status = 200, description = "Ready", body = autonomy_api::Ready), crate::openapi::ReadErrors)
)]
pub async fn ready<S: Store>(
    State(state): State<AppState<S>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.store.ready().await?;
    Ok(Json(serde_json::json!({"status": "ready"})))
}

/// Which replica runs the promoter (SPEC §7). Public like health: a load balancer or an
/// operator's script asks it without a token; it names a replica and an epoch, nothing more.
#[utoipa::path(
    get,
    operation_id = "system_leader",
    path = "/v1/leader",
    tag = "system",
    summary = "Which replica is the leader (runs the promoter), and under which epoch",
    responses((status = 200, description = "The leader as the store records it", body = autonomy_api::LeaderInfo), crate::openapi::ReadErrors)
)]
pub async fn leader<S: Store>(
    State(state): State<AppState<S>>,
) -> Result<Json<autonomy_api::LeaderInfo>, ApiError> {
    Ok(Json(state.store.leader().await?))
}

/// `/metrics`: OpenMetrics text (see [`crate::metrics`]).
#[utoipa::path(
    get,
    operation_id = "system_metrics",
    path = "/metrics",
    tag = "system",
    summary = "Prometheus metrics (OpenMetrics text)",
    responses((status = 200, description = "The metrics", body = String, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"), crate::openapi::ReadErrors)
)]
pub async fn metrics<S: Store>(State(state): State<AppState<S>>) -> Result<Response, ApiError> {
    let e = &state.engine;
    let snapshot = Snapshot {
        store: state.store.metrics(),
        promoter_ticks: e.ticks.load(Ordering::Relaxed),
        promoter_actions: e.actions.load(Ordering::Relaxed),
        auth_denied: state.denials.total(),
        auth_tarpitted: state.denials.tarpitted(),
        long_polls_waiting: state.store.live().waiting() as u64,
        audit_check: state.audit.as_ref().map(|m| {
            let (check, _) = m.get();
            (check == AuditCheck::Damaged, check == AuditCheck::Verifying)
        }),
        plans_by_phase: state.store.phase_counts().await?,
        time_seconds: autonomy_store::now_us() as f64 / 1e6,
    };
    let text = crate::metrics::render(&state.http, snapshot)
        .map_err(|_| ApiError::internal("encoding the metrics failed"))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

#[utoipa::path(
    get,
    operation_id = "system_openapi",
    path = "/v1/openapi.json",
    tag = "system",
    summary = "This document (OpenAPI 3.1)",
    responses(
        (status = 200, description = "The document", body = Object),
        crate::openapi::ReadErrors
    )
)]
pub async fn openapi() -> Response {
    crate::openapi::response()
}

/// Who the bearer token is: any valid token may ask (the web console hides the actions its
/// role does not allow). With RBAC off: an admin named by `X-Autonomy-Operator`, else
/// `anonymous`, and no token id.
#[utoipa::path(
    get,
    operation_id = "system_whoami",
    path = "/v1/whoami",
    tag = "system",
    summary = "Who the caller's token is (operator, role, token id)",
    responses((status = 200, description = "The caller", body = autonomy_api::WhoAmI), crate::openapi::ReadErrors)
)]
pub async fn whoami<S: Store>(
    State(state): State<AppState<S>>,
    Caller { ctx, identity, .. }: Caller<ReadIdentity>,
) -> Json<WhoAmI> {
    Json(match identity {
        Some(who) => WhoAmI {
            operator: who.operator,
            role: who.role,
            token_id: Some(who.token_id),
            rbac: state.config.rbac,
        },
        None => WhoAmI {
            operator: ctx.actor,
            role: Role::Admin,
            token_id: None,
            rbac: state.config.rbac,
        },
    })
}

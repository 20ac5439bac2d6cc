//! `GET /v1/audit/events` and `GET /v1/audit/public-key`.

use autonomy_api::{AuditEventList, AuditPublicKey, AuditQuery};
use autonomy_store::Store;
use axum::extract::{RawQuery, State};
use axum::Json;

use crate::auth::{Caller, QueryAudit, ReadAuditKey};
use crate::{input, ApiError, AppState};

#[utoipa::path(
    get,
    operation_id = "audit_events",
    path = "/v1/audit/events",
    tag = "audit",
    summary = "Audit events, oldest first, by pages",
    params(("event_type" = Option<String>, Query, description = "Only events of this type"), ("actor" = Option<String>, Query, description = "Only events by this actor"), ("resource" = Option<String>, Query, description = "Only events about this resource"), ("outcome" = Option<autonomy_api::Outcome>, Query, description = "Only events with this outcome"), ("start_time" = Option<String>, Query, description = "Only events at or after this time (RFC 3339)"), ("end_time" = Option<String>, Query, description = "Only events before this time (RFC 3339)"), ("limit" = Option<u32>, Query, description = "Page size, 1 to 10000 (default 100)", minimum = 1, maximum = 10000), ("cursor" = Option<String>, Query, description = "The next_cursor of the previous page")),
    responses((status = 200, description = "A page; next_cursor is set when it is full", body = autonomy_api::AuditEventList), crate::openapi::ReadErrors)
)]
pub async fn events<S: Store>(
    State(state): State<AppState<S>>,
    _: Caller<QueryAudit>,
    RawQuery(q): RawQuery,
) -> Result<Json<AuditEventList>, ApiError> {
    let q: AuditQuery = input::query(q.as_deref())?;
    let filter = q.parse().map_err(ApiError::field)?;
    let limit = filter.limit;
    let items = state.store.audit_events(filter).await?;
    Ok(Json(AuditEventList::page(items, limit)))
}

/// The public key of the audit checkpoints (SPEC §5.9), for `audit verify --public-key`.
#[utoipa::path(
    get,
    operation_id = "audit_public_key",
    path = "/v1/audit/public-key",
    tag = "audit",
    summary = "The key that signs the audit checkpoints",
    responses((status = 200, description = "The key", body = autonomy_api::AuditPublicKey), crate::openapi::ReadErrors)
)]
pub async fn public_key<S: Store>(
    State(state): State<AppState<S>>,
    _: Caller<ReadAuditKey>,
) -> Result<Json<AuditPublicKey>, ApiError> {
    let key = state
        .audit
        .as_ref()
        .and_then(|m| m.public_key.clone())
        .ok_or_else(|| ApiError::not_found("this control plane does not sign audit checkpoints"))?;
    Ok(Json(AuditPublicKey {
        algorithm: "ed25519".into(),
        public_key: key,
    }))
}

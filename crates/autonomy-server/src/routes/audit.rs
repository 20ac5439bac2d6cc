//! `GET /v1/audit/events` and `GET /v1/audit/public-key`.

use autonomy_api::{AuditEventList, AuditPublicKey, AuditQuery};
use autonomy_store::Store;
use axum::extract::{RawQuery, State};
use axum::Json;

use crate::auth::{Caller, QueryAudit, ReadAuditKey};
use crate::{input, ApiError, AppState};

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

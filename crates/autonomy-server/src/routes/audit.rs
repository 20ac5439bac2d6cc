//! `GET /v1/audit/events`.

use autonomy_api::{AuditEventList, AuditQuery};
use autonomy_store::Store;
use axum::extract::{RawQuery, State};
use axum::Json;

use crate::auth::{Caller, QueryAudit};
use crate::{input, ApiError, AppState};

pub async fn events<S: Store>(
    State(state): State<AppState<S>>,
    _: Caller<QueryAudit>,
    RawQuery(q): RawQuery,
) -> Result<Json<AuditEventList>, ApiError> {
    let q: AuditQuery = input::query(q.as_deref())?;
    let filter = q.parse().map_err(ApiError::field)?;
    Ok(Json(AuditEventList {
        items: state.store.audit_events(filter).await?,
    }))
}

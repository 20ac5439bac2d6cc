//! `POST /v1/rollback/execute`: retry, rollback, abort (and their dry runs).

use autonomy_api::ExecuteRequest;
use autonomy_store::Store;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use crate::auth::{Caller, ExecuteRecovery};
use crate::respond::{idempotency, reply};
use crate::{input, ApiError, AppState};

pub async fn execute<S: Store>(
    State(state): State<AppState<S>>,
    Caller { mut ctx, .. }: Caller<ExecuteRecovery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (body, req): (Bytes, ExecuteRequest) = input::required_json(&headers, body)?;
    if req.target != "rollout_plan" {
        return Err(ApiError::invalid(format!(
            "invalid target: '{}' is not a recoverable target (expected rollout_plan)",
            req.target
        )));
    }
    autonomy_core::validate_id(&req.resource)
        .map_err(|m| ApiError::invalid(format!("invalid resource: {m}")))?;
    autonomy_core::validate_reason(&req.reason, true).map_err(ApiError::field)?;
    idempotency(&mut ctx, &headers, "POST", "/v1/rollback/execute", &body)?;
    Ok(reply(state.store.execute(&ctx, req).await?))
}

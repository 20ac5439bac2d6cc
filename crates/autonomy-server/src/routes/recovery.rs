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

#[utoipa::path(
    post,
    operation_id = "rollback_execute",
    path = "/v1/rollback/execute",
    tag = "recovery",
    summary = "Retry, roll back or abort a plan",
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request return the first answer (1 to 255 visible ASCII characters)")),
    request_body(content = autonomy_api::ExecuteRequest, content_type = "application/json"),
    responses((status = 200, description = "Done (success or noop), or what would be done (dry run)", body = autonomy_api::ExecuteResponse), crate::openapi::WriteErrors)
)]
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

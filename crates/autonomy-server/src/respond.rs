//! Turning a store's [`Reply`] into an answer, and the Idempotency-Key fingerprint.

use autonomy_api::{ErrorCode, ErrorDetail, Outcome, IDEMPOTENCY_HEADER};
use autonomy_store::{Ctx, Reply};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::{status_of, ApiError};

/// The answer to a successful write (a rejected recovery is 409 with the outcome and the error
/// object together).
pub fn reply(r: Reply) -> Response {
    match r {
        Reply::Created(p) => (StatusCode::CREATED, Json(p)).into_response(),
        Reply::Transitioned(p) => (StatusCode::OK, Json(p)).into_response(),
        Reply::Executed(mut e) => {
            if e.outcome == Outcome::Rejected {
                e.error = Some(ErrorDetail {
                    code: ErrorCode::Conflict,
                    message: e.message.clone(),
                });
                (status_of(ErrorCode::Conflict), Json(e)).into_response()
            } else {
                (StatusCode::OK, Json(e)).into_response()
            }
        }
        Reply::TokenCreated(t) => (StatusCode::CREATED, Json(t)).into_response(),
        Reply::TokenRevoked(t) => (StatusCode::OK, Json(t)).into_response(),
        Reply::Audited => StatusCode::NO_CONTENT.into_response(),
        Reply::DeviceRegistered(d) => (StatusCode::CREATED, Json(d)).into_response(),
        Reply::Device(d) => (StatusCode::OK, Json(d)).into_response(),
        Reply::EnrollKeyCreated(k) => (StatusCode::CREATED, Json(k)).into_response(),
        Reply::Enrolled(e) => (StatusCode::CREATED, Json(e)).into_response(),
        Reply::Report(r) => (StatusCode::OK, Json(r)).into_response(),
        Reply::Promoted { actions } => (
            StatusCode::OK,
            Json(serde_json::json!({"actions": actions})),
        )
            .into_response(),
        Reply::LeaderAcquired { epoch } => {
            (StatusCode::OK, Json(serde_json::json!({"epoch": epoch}))).into_response()
        }
        Reply::PlanRef { id, .. } => {
            ApiError::internal(format!("a store answered with a plan reference ({id})"))
                .into_response()
        }
    }
}

/// Attaches the Idempotency-Key (if any) with a fingerprint of what is being asked.
pub fn idempotency(
    ctx: &mut Ctx,
    headers: &HeaderMap,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(), ApiError> {
    let Some(v) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(());
    };
    let key = v
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.chars().all(|c| c.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::invalid(
                "invalid header Idempotency-Key: must be 1 to 255 visible ASCII characters",
            )
        })?;
    let mut h = blake3::Hasher::new();
    for part in [
        method.as_bytes(),
        path.as_bytes(),
        ctx.actor.as_bytes(),
        body,
    ] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    ctx.idempotency = Some((key.to_string(), h.finalize().to_hex().to_string()));
    Ok(())
}

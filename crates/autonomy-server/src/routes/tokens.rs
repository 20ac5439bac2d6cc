//! `/v1/tokens`: RBAC tokens (admin only).

use autonomy_api::{CreateTokenRequest, TokenList};
use autonomy_store::Store;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;

use crate::auth::{operator_name, Caller, CreateToken, ListTokens, RevokeToken};
use crate::respond::{idempotency, reply};
use crate::{input, ApiError, AppState};

pub async fn create<S: Store>(
    State(state): State<AppState<S>>,
    Caller { mut ctx, .. }: Caller<CreateToken>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (body, req): (Bytes, CreateTokenRequest) = input::required_json(&headers, body)?;
    let operator = operator_name(Some(&req.operator))
        .map_err(|m| ApiError::invalid(format!("invalid operator: {m}")))?;
    idempotency(&mut ctx, &headers, "POST", "/v1/tokens", &body)?;
    Ok(reply(
        state.store.create_token(&ctx, operator, req.role).await?,
    ))
}

pub async fn list<S: Store>(
    State(state): State<AppState<S>>,
    _: Caller<ListTokens>,
) -> Result<Json<TokenList>, ApiError> {
    Ok(Json(TokenList {
        items: state.store.tokens().await?,
    }))
}

pub async fn revoke<S: Store>(
    State(state): State<AppState<S>>,
    Caller { ctx, .. }: Caller<RevokeToken>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    // The Caller extractor has validated the id.
    let Path(id) = id.map_err(|e| ApiError::invalid(format!("invalid id in path: {e}")))?;
    Ok(reply(state.store.revoke_token(&ctx, &id).await?))
}

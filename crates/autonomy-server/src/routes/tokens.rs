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

#[utoipa::path(
    post,
    operation_id = "tokens_create",
    path = "/v1/tokens",
    tag = "tokens",
    summary = "Create a token (its secret is shown once)",
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request return the first answer (1 to 255 visible ASCII characters)")),
    request_body(content = autonomy_api::CreateTokenRequest, content_type = "application/json"),
    responses((status = 201, description = "Created", body = autonomy_api::TokenCreated), crate::openapi::WriteErrors)
)]
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

#[utoipa::path(
    get,
    operation_id = "tokens_list",
    path = "/v1/tokens",
    tag = "tokens",
    summary = "List tokens (never their secrets)",
    responses((status = 200, description = "The tokens", body = autonomy_api::TokenList), crate::openapi::ReadErrors)
)]
pub async fn list<S: Store>(
    State(state): State<AppState<S>>,
    _: Caller<ListTokens>,
) -> Result<Json<TokenList>, ApiError> {
    Ok(Json(TokenList {
        items: state.store.tokens().await?,
    }))
}

#[utoipa::path(
    post,
    operation_id = "tokens_revoke",
    path = "/v1/tokens/{id}/revoke",
    tag = "tokens",
    summary = "Revoke a token",
    params(("id" = String, Path, description = "The token id")),
    responses((status = 200, description = "Revoked", body = autonomy_api::TokenInfo), crate::openapi::WriteErrors)
)]
pub async fn revoke<S: Store>(
    State(state): State<AppState<S>>,
    Caller { ctx, .. }: Caller<RevokeToken>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    // The Caller extractor has validated the id.
    let Path(id) = id.map_err(|e| ApiError::invalid(format!("invalid id in path: {e}")))?;
    Ok(reply(state.store.revoke_token(&ctx, &id).await?))
}

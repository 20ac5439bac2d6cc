//! `/v1/rollouts`: create, list, get, the operator verbs, the stuck scan.

use autonomy_api::{
    CreateRolloutRequest, ErrorCode, ListQuery, Phase, RolloutList, StuckCode, StuckQuery,
    TransitionRequest, Verb,
};
use autonomy_store::{NewPlan, Store};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::plan_id;
use crate::auth::{Caller, ChangePhase, CreatePlan, ListPlans, ReadPlan, ScanStuck};
use crate::respond::{idempotency, reply};
use crate::{input, rand_u64, ApiError, AppState, ArtifactPolicy};

#[utoipa::path(
    post,
    operation_id = "rollouts_create",
    path = "/v1/rollouts",
    tag = "rollouts",
    summary = "Create a rollout plan",
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request return the first answer (1 to 255 visible ASCII characters)")),
    request_body(content = autonomy_api::CreateRolloutRequest, content_type = "application/json"),
    responses((status = 201, description = "Created", body = autonomy_api::Rollout), crate::openapi::WriteErrors)
)]
pub async fn create<S: Store>(
    State(state): State<AppState<S>>,
    Caller { mut ctx, .. }: Caller<CreatePlan>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (body, req): (Bytes, CreateRolloutRequest) = input::required_json(&headers, body)?;
    let id = match &req.metadata.id {
        Some(id) => {
            autonomy_core::validate_id(id)
                .map_err(|m| ApiError::invalid(format!("invalid metadata.id: {m}")))?;
            id.clone()
        }
        None => format!("plan-{:012x}", rand_u64() >> 16),
    };
    autonomy_core::validate_labels(req.metadata.labels.iter()).map_err(ApiError::field)?;
    autonomy_core::validate_spec(&req.spec).map_err(ApiError::field)?;
    let s = &req.spec;
    let engine = autonomy_core::engine::parse_engine_spec(
        &s.targets,
        &s.stages,
        s.policy.as_ref(),
        &s.artifact_ref,
        s.target_lock_fingerprint.as_deref(),
    )
    .map_err(|e| match e {
        autonomy_core::engine::SpecError::Invalid(f) => ApiError::field(f),
        e @ autonomy_core::engine::SpecError::NoTargetDigest => {
            ApiError::new(ErrorCode::Unprocessable, e.to_string())
        }
    })?;
    let _ = engine;
    let warnings = autonomy_core::artifact_warnings(
        &req.spec.artifact_ref,
        req.spec.target_lock_fingerprint.as_deref(),
    );
    if state.config.artifact_policy == ArtifactPolicy::Strict && !warnings.is_empty() {
        return Err(ApiError::new(
            ErrorCode::Unprocessable,
            format!("artifact policy is strict: {}", warnings.join("; ")),
        ));
    }
    idempotency(&mut ctx, &headers, "POST", "/v1/rollouts", &body)?;
    let plan = NewPlan {
        id,
        request: req,
        warnings,
    };
    Ok(reply(state.store.create_plan(&ctx, plan).await?))
}

#[utoipa::path(
    get,
    operation_id = "rollouts_list",
    path = "/v1/rollouts",
    tag = "rollouts",
    summary = "List plans, oldest first, by pages",
    params(("phase" = Option<autonomy_api::Phase>, Query, description = "Only plans in this phase"), ("limit" = Option<u32>, Query, description = "Page size, 1 to 1000 (default 100)", minimum = 1, maximum = 1000), ("cursor" = Option<String>, Query, description = "The next_cursor of the previous page")),
    responses((status = 200, description = "A page", body = autonomy_api::RolloutList), crate::openapi::ReadErrors)
)]
pub async fn list<S: Store>(
    State(state): State<AppState<S>>,
    _: Caller<ListPlans>,
    RawQuery(q): RawQuery,
) -> Result<Json<RolloutList>, ApiError> {
    let q: ListQuery = input::query(q.as_deref())?;
    let phase = q
        .phase
        .as_deref()
        .map(|p| {
            p.parse::<Phase>()
                .map_err(|m| ApiError::invalid(format!("invalid phase: {m}")))
        })
        .transpose()?;
    let limit =
        autonomy_api::parse_limit(q.limit.as_deref(), 100, 1000).map_err(ApiError::field)?;
    let after = match q.cursor.as_deref() {
        None => 0,
        Some(c) => c.parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| {
            ApiError::invalid(format!(
                "invalid cursor: '{c}' is not a cursor from next_cursor"
            ))
        })?,
    };
    let (items, next) = state.store.list(phase, limit, after).await?;
    Ok(Json(RolloutList {
        items,
        next_cursor: next.map(|n| n.to_string()),
    }))
}

#[utoipa::path(
    get,
    operation_id = "rollouts_get",
    path = "/v1/rollouts/{id}",
    tag = "rollouts",
    summary = "One plan",
    params(("id" = String, Path, description = "The plan id", pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")),
    responses((status = 200, description = "The plan", body = autonomy_api::Rollout), crate::openapi::ReadErrors)
)]
pub async fn get<S: Store>(
    State(state): State<AppState<S>>,
    _: Caller<ReadPlan>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = plan_id(id)?;
    Ok(Json(state.store.get(&id).await?).into_response())
}

macro_rules! verb_handlers {
    ($($name:ident => $verb:ident, $path:literal, $summary:literal);+ $(;)?) => {$(
        #[utoipa::path(
            post,
            path = $path,
            operation_id = concat!("rollouts_", stringify!($name)),
            tag = "rollouts",
            summary = $summary,
            params(
                ("id" = String, Path, description = "The plan id", pattern = "^[a-z0-9][a-z0-9._-]{0,62}$"),
                ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request return the first answer (1 to 255 visible ASCII characters)")
            ),
            request_body(content = Option<TransitionRequest>, content_type = "application/json", description = "Optional: a reason, and (start) the stage whose gate is approved"),
            responses(
                (status = 200, description = "The plan after the transition", body = autonomy_api::Rollout),
                crate::openapi::WriteErrors
            )
        )]
        pub async fn $name<S: Store>(
            state: State<AppState<S>>,
            caller: Caller<ChangePhase>,
            headers: HeaderMap,
            id: Result<Path<String>, PathRejection>,
            body: Result<Bytes, BytesRejection>,
        ) -> Result<Response, ApiError> {
            transition(state, caller, headers, id, body, Verb::$verb).await
        }
    )+};
}

verb_handlers!(
    publish => Publish, "/v1/rollouts/{id}/publish", "Publish a draft plan";
    start => Start, "/v1/rollouts/{id}/start", "Start a published plan, or approve the gate before a stage";
    pause => Pause, "/v1/rollouts/{id}/pause", "Pause an active plan";
    resume => Resume, "/v1/rollouts/{id}/resume", "Resume a paused plan";
);

async fn transition<S: Store>(
    State(state): State<AppState<S>>,
    Caller { mut ctx, .. }: Caller<ChangePhase>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
    verb: Verb,
) -> Result<Response, ApiError> {
    let id = plan_id(id)?;
    let body = input::body_bytes(body)?;
    let req: TransitionRequest = input::json(&headers, &body, true)?.unwrap_or_default();
    autonomy_core::validate_reason(&req.reason, false).map_err(ApiError::field)?;
    if req.stage.is_some() && verb != Verb::Start {
        return Err(ApiError::invalid(format!(
            "invalid stage: only start takes a stage, not {verb}"
        )));
    }
    let path = format!("/v1/rollouts/{id}/{}", verb.as_str());
    idempotency(&mut ctx, &headers, "POST", &path, &body)?;
    Ok(reply(
        state
            .store
            .transition(&ctx, &id, verb, req.reason, req.stage)
            .await?,
    ))
}

/// `/v1/rollouts/{id}/{verb}` for a word that is not a verb.
pub async fn unknown_verb(Path((_, verb)): Path<(String, String)>) -> ApiError {
    ApiError::not_found(format!(
        "no such endpoint: /v1/rollouts/{{id}}/{verb} (verbs: publish, start, pause, resume)"
    ))
}

#[utoipa::path(
    get,
    operation_id = "rollouts_stuck",
    path = "/v1/rollouts/stuck",
    tag = "rollouts",
    summary = "The stuck scan",
    params(("threshold_seconds" = Option<f64>, Query, description = "Stale for at least this many seconds (default 300)", minimum = 0), ("limit" = Option<u32>, Query, description = "At most this many items, 1 to 10000 (default 1000)", minimum = 1, maximum = 10000), ("code" = Option<autonomy_api::StuckCode>, Query, description = "Only plans whose main reason is this")),
    responses((status = 200, description = "The stuck plans", body = autonomy_api::StuckReport), crate::openapi::ReadErrors)
)]
pub async fn stuck<S: Store>(
    State(state): State<AppState<S>>,
    _: Caller<ScanStuck>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q: StuckQuery = input::query(q.as_deref())?;
    let threshold = match q.threshold_seconds.as_deref() {
        Some(s) => autonomy_core::parse_threshold(s).map_err(ApiError::field)?,
        None => 300.0,
    };
    let limit =
        autonomy_api::parse_limit(q.limit.as_deref(), 1000, 10_000).map_err(ApiError::field)?;
    let code = q
        .code
        .as_deref()
        .map(|c| {
            c.parse::<StuckCode>()
                .map_err(|m| ApiError::invalid(format!("invalid code: {m}")))
        })
        .transpose()?;
    let running = state.engine.promoter_running(autonomy_store::now_us());
    Ok(Json(state.store.stuck(threshold, limit, code, running).await?).into_response())
}

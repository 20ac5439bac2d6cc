//! The control plane's HTTP API v1 (SPEC §3) as a library: [`router`] builds the axum app
//! over a [`autonomy_store::Store`], and [`run`] serves it on an already-bound listener until
//! the shutdown future resolves, then finishes in-flight requests.
//!
//! Only this crate knows HTTP status codes. Handlers authorise the caller (RBAC, SPEC §4),
//! validate input into the JSON error body, and hand the change to the store, which answers
//! only once the change and its audit event are durable.

mod error;
mod input;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use autonomy_api::{
    timefmt, AuditEventList, AuditQuery, CreateRolloutRequest, CreateTokenRequest, ErrorCode,
    ErrorDetail, ExecuteRequest, Health, ListQuery, Outcome, Phase, Role, RolloutList, StuckQuery,
    TokenList, TransitionRequest, Verb, IDEMPOTENCY_HEADER, OPERATOR_HEADER,
};
use autonomy_store::{AuditOnly, Ctx, NewPlan, Reply, Store};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;

pub use error::ApiError;
use input::MAX_BODY;

/// What `serve --artifact-policy` chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactPolicy {
    /// Unknown schemes and malformed digests become `status.warnings`.
    Warn,
    /// They are rejected with 422.
    Strict,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `AUTONOMY_RBAC_ENFORCEMENT`: bearer tokens required when true.
    pub rbac: bool,
    pub artifact_policy: ArtifactPolicy,
}

#[derive(Default)]
struct HttpMetrics {
    by_class: [AtomicU64; 6],
}

#[derive(Clone)]
pub struct AppState {
    store: Arc<Store>,
    config: Arc<ServerConfig>,
    http: Arc<HttpMetrics>,
}

impl AppState {
    pub fn new(store: Arc<Store>, config: ServerConfig) -> Self {
        AppState {
            store,
            config: Arc::new(config),
            http: Arc::default(),
        }
    }
}

/// The request id, made by the middleware and echoed as `X-Request-Id`.
#[derive(Clone)]
struct RequestId(String);

/// Builds the API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/ready", get(ready))
        .route("/v1/rollouts", get(list_rollouts).post(create_rollout))
        .route("/v1/rollouts/stuck", get(stuck))
        .route("/v1/rollouts/{id}", get(get_rollout))
        .route("/v1/rollouts/{id}/{verb}", post(transition))
        .route("/v1/rollback/execute", post(execute))
        .route("/v1/audit/events", get(audit_events))
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{id}/revoke", post(revoke_token))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(state)
}

/// Serves `router(state)` on `listener` until `shutdown` resolves, then drains in-flight
/// requests and returns.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = format!("req_{:016x}", rand_u64());
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).await;
    let class = (resp.status().as_u16() / 100) as usize;
    state.http.by_class[class.min(5)].fetch_add(1, Ordering::Relaxed);
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Internal,
        "internal error; see the control plane log",
    )
    .into_response()
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

// ---------------------------------------------------------------------------------------------
// Who is asking
// ---------------------------------------------------------------------------------------------

/// The audit event a denied request is recorded as.
struct Action<'a> {
    event_type: &'a str,
    target: &'a str,
    resource: &'a str,
}

impl<'a> Action<'a> {
    fn new(event_type: &'a str, target: &'a str, resource: &'a str) -> Self {
        Action {
            event_type,
            target,
            resource,
        }
    }
}

/// Resolves the caller and checks their role. With RBAC on, the actor is the token's
/// operator whatever headers say; denials are audited with `outcome=denied`.
async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    request_id: &RequestId,
    need: Role,
    action: Action<'_>,
) -> Result<Ctx, ApiError> {
    let mut ctx = Ctx {
        actor: String::new(),
        request_id: request_id.0.clone(),
        idempotency: None,
    };
    if !state.config.rbac {
        ctx.actor = match headers.get(OPERATOR_HEADER) {
            None => "anonymous".to_string(),
            Some(v) => operator_name(v.to_str().ok()).map_err(|m| {
                ApiError::invalid(format!("invalid header X-Autonomy-Operator: {m}"))
            })?,
        };
        return Ok(ctx);
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 256);
    let identity = match bearer {
        Some(secret) => state.store.identify(secret.to_string()).await?,
        None => None,
    };
    let (denial, actor) = match &identity {
        None => (
            ApiError::unauthorized(if bearer.is_some() {
                "the bearer token is unknown or revoked"
            } else {
                "authentication required: send Authorization: Bearer <token> (autonomy --token / AUTONOMY_TOKEN)"
            }),
            "unauthenticated".to_string(),
        ),
        Some(who) if who.role < need => (
            ApiError::forbidden(format!(
                "operator '{}' has role {}; this needs role {need}",
                who.operator, who.role
            )),
            who.operator.clone(),
        ),
        Some(who) => {
            ctx.actor = who.operator.clone();
            return Ok(ctx);
        }
    };
    ctx.actor = actor;
    state
        .store
        .audit_only(
            &ctx,
            AuditOnly {
                event_type: action.event_type.to_string(),
                target: action.target.to_string(),
                resource: action.resource.to_string(),
                outcome: Outcome::Denied,
                reason: denial.message.clone(),
                details: serde_json::json!({"status": denial.status.as_u16(), "needed_role": need}),
            },
        )
        .await?;
    Err(denial)
}

fn operator_name(v: Option<&str>) -> Result<String, String> {
    match v {
        Some(s) if !s.trim().is_empty() && s.len() <= 128 && !s.chars().any(char::is_control) => {
            Ok(s.trim().to_string())
        }
        _ => Err("must be 1 to 128 printable characters".to_string()),
    }
}

/// Attaches the Idempotency-Key (if any) with a fingerprint of what is being asked.
fn idempotency(
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

fn reply(r: Reply) -> Response {
    match r {
        Reply::Created(p) => (StatusCode::CREATED, Json(p)).into_response(),
        Reply::Transitioned(p) => (StatusCode::OK, Json(p)).into_response(),
        Reply::Executed(mut e) => {
            if e.outcome == Outcome::Rejected {
                e.error = Some(ErrorDetail {
                    code: ErrorCode::Conflict,
                    message: e.message.clone(),
                });
                (StatusCode::CONFLICT, Json(e)).into_response()
            } else {
                (StatusCode::OK, Json(e)).into_response()
            }
        }
        Reply::TokenCreated(t) => (StatusCode::CREATED, Json(t)).into_response(),
        Reply::TokenRevoked(t) => (StatusCode::OK, Json(t)).into_response(),
        Reply::Audited => StatusCode::NO_CONTENT.into_response(),
    }
}

fn plan_id(
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<String, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::invalid(format!("invalid id in path: {e}")))?;
    autonomy_core::validate_id(&id).map_err(|m| ApiError::invalid(format!("invalid id: {m}")))?;
    Ok(id)
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        store: "sqlite".into(),
    })
}

async fn ready(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.store.ready().await?;
    Ok(Json(serde_json::json!({"status": "ready"})))
}

async fn create_rollout(
    State(state): State<AppState>,
    axum::Extension(rid): axum::Extension<RequestId>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let action = Action::new("plan.created", "rollout_plan", "");
    let mut ctx = authorize(&state, &headers, &rid, Role::Operator, action).await?;
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
    let warnings = autonomy_core::artifact_warnings(
        &req.spec.artifact_ref,
        req.spec.target_lock_fingerprint.as_deref(),
    );
    if state.config.artifact_policy == ArtifactPolicy::Strict && !warnings.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::Unprocessable,
            format!("artifact policy is strict: {}", warnings.join("; ")),
        ));
    }
    idempotency(&mut ctx, &headers, "POST", "/v1/rollouts", &body)?;
    let r = state
        .store
        .create_plan(
            &ctx,
            NewPlan {
                id,
                request: req,
                warnings,
            },
        )
        .await?;
    Ok(reply(r))
}

async fn list_rollouts(
    State(state): State<AppState>,
    axum::Extension(rid): axum::Extension<RequestId>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Json<RolloutList>, ApiError> {
    let action = Action::new("plan.listed", "rollout_plan", "");
    authorize(&state, &headers, &rid, Role::Viewer, action).await?;
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

async fn get_rollout(
    State(state): State<AppState>,
    axum::Extension(rid): axum::Extension<RequestId>,
    headers: HeaderMap,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let action = Action::new("plan.read", "rollout_plan", "");
    authorize(&state, &headers, &rid, Role::Viewer, action).await?;
    let id = plan_id(id)?;
    Ok(Json(state.store.get(&id).await?).into_response())
}

async fn transition(
    State(state): State<AppState>,
    axum::Extension(rid): axum::Extension<RequestId>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((id, verb)) = path.map_err(|e| ApiError::invalid(format!("invalid path: {e}")))?;
    let verb: Verb = verb.parse().map_err(|_| {
        ApiError::not_found(format!(
            "no such endpoint: /v1/rollouts/{{id}}/{verb} (verbs: publish, start, pause, resume)"
        ))
    })?;
    let action = Action::new("rollout.phase_changed", "rollout_plan", &id);
    let mut ctx = authorize(&state, &headers, &rid, Role::Operator, action).await?;
    autonomy_core::validate_id(&id).map_err(|m| ApiError::invalid(format!("invalid id: {m}")))?;
    let body = input::body_bytes(body)?;
    let req: TransitionRequest = input::json(&headers, &body, true)?.unwrap_or_default();
    if req.reason.len() > 1024 {
        return Err(ApiError::invalid("invalid reason: at most 1024 characters"));
    }
    idempotency(
        &mut ctx,
        &headers,
        "POST",
        &format!("/v1/rollouts/{id}/{}", verb.as_str()),
        &body,
    )?;
    Ok(reply(
        state.store.transition(&ctx, &id, verb, req.reason).await?,
    ))
}

async fn stuck(
    State(state): State<AppState>,
    axum::Extension(rid): axum::Extension<RequestId>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let action = Action::new("plan.stuck_scanned", "rollout_plan", "");
    authorize(&state, &headers, &rid, Role::Viewer, action).await?;
    let q: StuckQuery = input::query(q.as_deref())?;
    let threshold = match q.threshold_seconds.as_deref() {
        Some(s) => autonomy_core::parse_threshold(s).map_err(ApiError::field)?,
        None => 300.0,
    };
    let limit =
        autonomy_api::parse_limit(q.limit.as_deref(), 1000, 10_000).map_err(ApiError::field)?;
    Ok(Json(state.store.stuck(threshold, limit).await?).into_response())
}

async fn execute(
    State(state): State<AppState>,
    axum::Extension(rid): axum::Extension<RequestId>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let action = Action::new("rollback.executed", "rollout_plan", "");
    let mut ctx = authorize(&state, &headers, &rid, Role::Operator, action).await?;
    let (body, req): (Bytes, ExecuteRequest) = input::required_json(&headers, body)?;
    if req.target != "rollout_plan" {
        return Err(ApiError::invalid(format!(
            "invalid target: '{}' is not a recoverable target (expected rollout_plan)",
            req.target
        )));
    }
    autonomy_core::validate_id(&req.resource)
        .map_err(|m| ApiError::invalid(format!("invalid resource: {m}")))?;
    if req.reason.trim().is_empty() || req.reason.len() > 1024 {
        return Err(ApiError::invalid(
            "invalid reason: say why, in 1 to 1024 characters (it goes to the audit store)",
        ));
    }
    idempotency(&mut ctx, &headers, "POST", "/v1/rollback/execute", &body)?;
    Ok(reply(state.store.execute(&ctx, req).await?))
}

async fn audit_events(
    State(state): State<AppState>,
    axum::Extension(rid): axum::Extension<RequestId>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Json<AuditEventList>, ApiError> {
    let action = Action::new("audit.queried", "audit", "");
    authorize(&state, &headers, &rid, Role::Viewer, action).await?;
    let q: AuditQuery = input::query(q.as_deref())?;
    let filter = q.parse().map_err(ApiError::field)?;
    Ok(Json(AuditEventList {
        items: state.store.audit_events(filter).await?,
    }))
}

async fn create_token(
    State(state): State<AppState>,
    axum::Extension(rid): axum::Extension<RequestId>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let action = Action::new("token.created", "token", "");
    let mut ctx = authorize(&state, &headers, &rid, Role::Admin, action).await?;
    let (body, req): (Bytes, CreateTokenRequest) = input::required_json(&headers, body)?;
    let operator = operator_name(Some(&req.operator))
        .map_err(|m| ApiError::invalid(format!("invalid operator: {m}")))?;
    idempotency(&mut ctx, &headers, "POST", "/v1/tokens", &body)?;
    Ok(reply(
        state.store.create_token(&ctx, operator, req.role).await?,
    ))
}

async fn list_tokens(
    State(state): State<AppState>,
    axum::Extension(rid): axum::Extension<RequestId>,
    headers: HeaderMap,
) -> Result<Json<TokenList>, ApiError> {
    let action = Action::new("token.listed", "token", "");
    authorize(&state, &headers, &rid, Role::Admin, action).await?;
    Ok(Json(TokenList {
        items: state.store.tokens().await?,
    }))
}

async fn revoke_token(
    State(state): State<AppState>,
    axum::Extension(rid): axum::Extension<RequestId>,
    headers: HeaderMap,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::invalid(format!("invalid id in path: {e}")))?;
    let action = Action::new("token.revoked", "token", &id);
    let ctx = authorize(&state, &headers, &rid, Role::Admin, action).await?;
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(ApiError::invalid(format!("invalid token id '{id}'")));
    }
    Ok(reply(state.store.revoke_token(&ctx, &id).await?))
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    use std::fmt::Write;
    let m = state.store.metrics();
    let mut out = String::new();
    let counters = [
        (
            "autonomy_store_commits_total",
            "Write transactions committed (each one fsync).",
            &m.commits,
        ),
        (
            "autonomy_store_committed_requests_total",
            "Write requests carried by committed transactions.",
            &m.committed_requests,
        ),
        (
            "autonomy_store_failed_commits_total",
            "Write transactions that failed to commit (answered 503).",
            &m.failed_commits,
        ),
        (
            "autonomy_store_commit_microseconds_total",
            "Time spent committing, including the audit fsync.",
            &m.commit_micros,
        ),
        (
            "autonomy_audit_events_total",
            "Audit events committed.",
            &m.audit_events,
        ),
        (
            "autonomy_audit_export_failures_total",
            "Failed appends to the retained audit store.",
            &m.audit_export_failures,
        ),
    ];
    for (name, help, value) in counters {
        let v = value.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP autonomy_store_max_batch Largest group commit so far.\n# TYPE autonomy_store_max_batch gauge\nautonomy_store_max_batch {}",
        m.max_batch.load(Ordering::Relaxed)
    );
    let _ = writeln!(out, "# HELP autonomy_http_responses_total Responses by status class.\n# TYPE autonomy_http_responses_total counter");
    for (i, c) in state.http.by_class.iter().enumerate().skip(1) {
        let _ = writeln!(
            out,
            "autonomy_http_responses_total{{class=\"{i}xx\"}} {}",
            c.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP autonomy_plans Plans by phase.\n# TYPE autonomy_plans gauge"
    );
    for (phase, n) in state.store.phase_counts().await? {
        let _ = writeln!(out, "autonomy_plans{{phase=\"{phase}\"}} {n}");
    }
    let _ = writeln!(out, "# HELP autonomy_time_seconds Server clock.\n# TYPE autonomy_time_seconds gauge\nautonomy_time_seconds {}", timefmt::now_us() as f64 / 1e6);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

//! The control plane's HTTP API v1 (SPEC §3) as a library, generic over the store:
//! [`router`] builds the axum app over any [`autonomy_store::Store`], and [`run`] serves it on
//! an already-bound listener until the shutdown future resolves, then finishes in-flight
//! requests.
//!
//! Only this crate knows HTTP status codes, and only [`error::status_of`] pairs an error code
//! with one. Handlers take an authorised [`auth::Caller`] (RBAC, SPEC §4), validate input into
//! the JSON error body ([`input`]), and hand the change to the store, which answers only once
//! the change and its audit event are durable.
//!
//! Modules: `auth` (the caller extractor), `conn` (the accept loop and connection bounds),
//! `error`, `host` (the `Host` check with RBAC off), `input` (bodies and queries parsed by
//! hand), `metrics` (`/metrics` through prometheus-client), `openapi` (`/v1/openapi.json`
//! through utoipa), `respond` (replies and idempotency), `routes::*` (one module per resource,
//! each handler with its `#[utoipa::path]`), `ui` (the operator console at `/ui/`).

mod auth;
mod conn;
mod denials;
mod error;
mod host;
mod input;
mod metrics;
pub mod openapi;
pub mod promoter;
mod respond;
mod routes;
mod ui;

use std::future::Future;
use std::sync::{Arc, Mutex};

use autonomy_api::{AuditCheck, AuditDamage, ErrorCode};
use autonomy_store::Store;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use tokio::net::TcpListener;

pub use conn::Limits;
pub use error::{status_of, ApiError};
use input::MAX_BODY;
pub use promoter::{EngineState, PromoterConfig};

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
    /// How often refusals for want of a token are written, as one `auth.denied` event per
    /// source address (SPEC §4: a minute).
    pub denied_window: std::time::Duration,
    /// Refusals before authentication (401, or a bad path without a plausible token) one source
    /// may cause per second; past it, each is answered after `refusal_tarpit`.
    pub refusal_budget: u32,
    pub refusal_tarpit: std::time::Duration,
    /// `--allowed-host`: names served besides loopback ones while RBAC is off (SPEC §4);
    /// compared without port, case-insensitively.
    pub allowed_hosts: Vec<String>,
    /// Connection bounds for [`run`] (SPEC §5.11).
    pub limits: Limits,
    /// The promoter [`run`] starts (`None`: `serve --promoter off`).
    pub promoter: Option<PromoterConfig>,
}

impl ServerConfig {
    /// A configuration with no extra allowed host and the contract's connection limits.
    pub fn new(rbac: bool, artifact_policy: ArtifactPolicy) -> Self {
        ServerConfig {
            rbac,
            artifact_policy,
            denied_window: std::time::Duration::from_secs(60),
            refusal_budget: 50,
            refusal_tarpit: std::time::Duration::from_secs(1),
            allowed_hosts: Vec::new(),
            limits: Limits::default(),
            promoter: Some(PromoterConfig::default()),
        }
    }
}

/// What the server reports about the retained audit store: the public half of the checkpoint
/// signing key (SPEC §5.9) and the state of the background chain check after start-up (SPEC
/// §5.8), which whoever runs the check updates with [`AuditMonitor::set`].
#[derive(Debug)]
pub struct AuditMonitor {
    public_key: Option<String>,
    state: Mutex<(AuditCheck, Option<AuditDamage>)>,
}

impl AuditMonitor {
    /// A monitor in state `verifying`; `public_key` is served at `GET /v1/audit/public-key`.
    pub fn new(public_key: Option<String>) -> AuditMonitor {
        AuditMonitor {
            public_key,
            state: Mutex::new((AuditCheck::Verifying, None)),
        }
    }

    /// Records the check's result: `None` means sound, `Some` the first bad record.
    pub fn set(&self, damage: Option<AuditDamage>) {
        let check = if damage.is_some() {
            AuditCheck::Damaged
        } else {
            AuditCheck::Ok
        };
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = (check, damage);
    }

    /// The current state and, when damaged, where.
    pub fn get(&self) -> (AuditCheck, Option<AuditDamage>) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What every handler shares: the store, the configuration, the HTTP metrics.
pub struct AppState<S> {
    store: Arc<S>,
    config: Arc<ServerConfig>,
    http: metrics::HttpMetrics,
    denials: Arc<denials::Denials>,
    refusal_lines: Arc<RefusalLines>,
    audit: Option<Arc<AuditMonitor>>,
    engine: Arc<EngineState>,
}

impl<S> Clone for AppState<S> {
    fn clone(&self) -> Self {
        AppState {
            store: self.store.clone(),
            config: self.config.clone(),
            http: self.http.clone(),
            denials: self.denials.clone(),
            refusal_lines: self.refusal_lines.clone(),
            audit: self.audit.clone(),
            engine: self.engine.clone(),
        }
    }
}

impl<S: Store> AppState<S> {
    pub fn new(store: Arc<S>, mut config: ServerConfig) -> Self {
        config.allowed_hosts = config
            .allowed_hosts
            .iter()
            .map(|h| host::normalize(h))
            .filter(|h| !h.is_empty())
            .collect();
        let denials = Arc::new(denials::Denials::new(
            config.denied_window,
            config.refusal_budget,
            config.refusal_tarpit,
        ));
        AppState {
            store,
            config: Arc::new(config),
            http: metrics::HttpMetrics::default(),
            denials,
            refusal_lines: Arc::default(),
            audit: None,
            engine: promoter::new_state(),
        }
    }

    /// The promoter's state (its counters, whether it runs).
    pub fn engine(&self) -> &Arc<EngineState> {
        &self.engine
    }

    /// Writes the refusals counted so far (one `auth.denied` event per source address). [`run`]
    /// calls it every window and once more when it stops; call it after serving by other means.
    pub async fn flush_denied(&self) {
        self.denials.flush(self.store.as_ref()).await;
    }

    /// Reports the audit store's key and background check from `monitor` (health, metrics,
    /// `GET /v1/audit/public-key`). Without one, health has no `audit` field and the key
    /// route answers 404.
    pub fn with_audit_monitor(mut self, monitor: Arc<AuditMonitor>) -> Self {
        self.audit = Some(monitor);
        self
    }
}

/// The request id, made by the middleware and echoed as `X-Request-Id`.
#[derive(Clone)]
struct RequestId(String);

/// Builds the API.
pub fn router<S: Store>(state: AppState<S>) -> Router {
    use routes::{audit, devices, plans, recovery, system, tokens};
    Router::new()
        .route("/v1/health", get(system::health::<S>))
        .route("/v1/ready", get(system::ready::<S>))
        .route("/v1/leader", get(system::leader::<S>))
        .route(
            "/v1/rollouts",
            get(plans::list::<S>).post(plans::create::<S>),
        )
        .route("/v1/rollouts/stuck", get(plans::stuck::<S>))
        .route("/v1/rollouts/{id}", get(plans::get::<S>))
        .route("/v1/rollouts/{id}/devices", get(devices::of_rollout::<S>))
        .route(
            "/v1/devices",
            get(devices::list::<S>).post(devices::register::<S>),
        )
        .route("/v1/devices/{id}", get(devices::get::<S>))
        .route("/v1/devices/{id}/labels", post(devices::labels::<S>))
        .route("/v1/devices/{id}/revoke", post(devices::revoke::<S>))
        .route("/v1/enroll-keys", post(devices::create_enroll_key::<S>))
        .route("/v1/device/enroll", post(devices::enroll::<S>))
        .route("/v1/device/poll", post(devices::poll::<S>))
        .route("/v1/device/reports", post(devices::report::<S>))
        .route("/v1/rollouts/{id}/publish", post(plans::publish::<S>))
        .route("/v1/rollouts/{id}/start", post(plans::start::<S>))
        .route("/v1/rollouts/{id}/pause", post(plans::pause::<S>))
        .route("/v1/rollouts/{id}/resume", post(plans::resume::<S>))
        .route("/v1/rollouts/{id}/{verb}", any(plans::unknown_verb))
        .route("/v1/rollback/execute", post(recovery::execute::<S>))
        .route("/v1/audit/events", get(audit::events::<S>))
        .route("/v1/audit/public-key", get(audit::public_key::<S>))
        .route("/v1/whoami", get(system::whoami::<S>))
        .route(
            "/v1/tokens",
            get(tokens::list::<S>).post(tokens::create::<S>),
        )
        .route("/v1/tokens/{id}/revoke", post(tokens::revoke::<S>))
        .route("/metrics", get(system::metrics::<S>))
        .route("/v1/openapi.json", get(system::openapi))
        // The web console (SPEC §11): static pages, not JSON API routes (not in the OpenAPI
        // document, whose test reads the route calls above).
        .merge(ui::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            host::check::<S>,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), observe::<S>))
        .with_state(state)
}

/// Serves `router(state)` on `listener` within the configuration's [`Limits`] (header, body
/// and idle timeouts, a connection cap) until `shutdown` resolves; then stops accepting,
/// lets in-flight requests finish and returns.
pub async fn run<S: Store>(
    listener: TcpListener,
    state: AppState<S>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let flusher = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(state.denials.every);
            tick.tick().await;
            loop {
                tick.tick().await;
                state.flush_denied().await;
            }
        })
    };
    let promoter = state
        .config
        .promoter
        .clone()
        .map(|p| tokio::spawn(promoter::run(state.clone(), p)));
    let limits = state.config.limits.clone();
    let engine = state.engine.clone();
    let shutdown = async move {
        shutdown.await;
        engine.close();
    };
    let served = conn::serve(listener, router(state.clone()), limits, shutdown).await;
    flusher.abort();
    if let Some(p) = promoter {
        p.abort();
    }
    state.flush_denied().await;
    served
}

/// Outermost layer: gives the request its id (the client's `X-Request-Id` when well-formed,
/// else a fresh one), which handlers put in the audit event (`auth::request_facts`), returns
/// it as `X-Request-Id` on every answer (panics included), counts the answer, and logs the
/// request once: id, method, route template (never the raw path or query), status, latency.
async fn observe<S: Store>(
    State(state): State<AppState<S>>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = std::time::Instant::now();
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_request_id(v))
        .map(str::to_string)
        .unwrap_or_else(|| format!("req_{:016x}", rand_u64()));
    let anonymous = !auth::has_plausible_token(req.headers());
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).await;
    let status = resp.status().as_u16();
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    let route = route.as_deref().unwrap_or(metrics::UNMATCHED_ROUTE);
    let seconds = started.elapsed().as_secs_f64();
    state.http.observe(method.as_str(), route, status, seconds);
    let latency_ms = seconds * 1000.0;
    // A refusal for want of a valid token is logged at most once a second (SPEC §4): a flood
    // without a token must not grow the log at its own pace. The line that is written says
    // how many were left out since the last one.
    let refusal = status == 401 || (state.config.rbac && (400..500).contains(&status) && anonymous);
    if !refusal {
        tracing::info!(
            target: "autonomy::http",
            request_id = %id,
            method = %method,
            route = %route,
            status,
            latency_ms,
            "request"
        );
    } else if let Some(left_out) = state.refusal_lines.admit() {
        tracing::info!(
            target: "autonomy::http",
            request_id = %id,
            method = %method,
            route = %route,
            status,
            latency_ms,
            refusals_not_logged = left_out,
            "request"
        );
    }
    resp
}

/// Request lines of refusals without a valid token: at most one a second.
#[derive(Default)]
struct RefusalLines(Mutex<(Option<std::time::Instant>, u64)>);

impl RefusalLines {
    /// `Some(refusals left out since the last line)` when this one may be logged.
    fn admit(&self) -> Option<u64> {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match g.0 {
            Some(at) if at.elapsed() < std::time::Duration::from_secs(1) => {
                g.1 += 1;
                None
            }
            _ => {
                let left_out = g.1;
                *g = (Some(std::time::Instant::now()), 0);
                Some(left_out)
            }
        }
    }
}

/// The request id header, read from the client and returned on every answer.
const REQUEST_ID_HEADER: &str = "x-request-id";

/// A client's request id is kept when it is 1 to 64 of `[A-Za-z0-9._-]`.
fn is_request_id(v: &str) -> bool {
    (1..=64).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::internal("a request handler panicked").into_response()
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

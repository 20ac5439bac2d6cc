//! Who is asking (RBAC, SPEC §4), as an extractor: a handler that takes [`Caller<P>`] runs
//! only for a caller allowed to do `P`, and gets the [`Ctx`] its writes are made under. With
//! RBAC on, the actor is the token's operator whatever the headers say; denials are audited
//! with `outcome=denied` and the event type of the action that was attempted — one by one for
//! a known operator without the role, in aggregate (`denials.rs`) for requests without a valid
//! token. A path id is validated before anything is recorded.

use std::marker::PhantomData;
use std::net::SocketAddr;

use autonomy_api::{AuditEvent, EventType, Outcome, Role, Target, OPERATOR_HEADER};
use autonomy_store::{Ctx, Identity, Store};
use axum::extract::{ConnectInfo, FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};

use crate::{ApiError, AppState, RequestId};

/// What an action needs: the role, and what a denial is audited as.
pub trait Permission: Send + Sync + 'static {
    const ROLE: Role;
    const EVENT: EventType;
    const TARGET: Target;

    /// Checks the `{id}` of the route before anything is recorded about the request.
    fn check_id(id: &str) -> Result<(), String> {
        match Self::TARGET {
            Target::Token => token_id(id),
            _ => autonomy_core::validate_id(id),
        }
    }
}

/// Token ids: `tok_` and hex, in general 1 to 64 characters of `[A-Za-z0-9_]`.
fn token_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(format!(
            "'{}' is not a token id (1 to 64 characters of A-Z, a-z, 0-9, '_')",
            autonomy_api::cut_bytes(&id.escape_debug().to_string(), 80)
        ));
    }
    Ok(())
}

macro_rules! permissions {
    ($($(#[$m:meta])* $name:ident = $role:ident, $event:ident, $target:ident;)+) => {
        $(
            $(#[$m])*
            pub struct $name;
            impl Permission for $name {
                const ROLE: Role = Role::$role;
                const EVENT: EventType = EventType::$event;
                const TARGET: Target = Target::$target;
            }
        )+
    };
}

permissions! {
    CreatePlan = Operator, PlanCreated, RolloutPlan;
    ReadPlan = Viewer, PlanRead, RolloutPlan;
    ListPlans = Viewer, PlanListed, RolloutPlan;
    ScanStuck = Viewer, PlanStuckScanned, RolloutPlan;
    ChangePhase = Operator, RolloutPhaseChanged, RolloutPlan;
    ExecuteRecovery = Operator, RollbackExecuted, RolloutPlan;
    QueryAudit = Viewer, AuditQueried, Audit;
    ReadAuditKey = Viewer, AuditPublicKeyRead, Audit;
    CreateToken = Admin, TokenCreated, Token;
    ListTokens = Admin, TokenListed, Token;
    RevokeToken = Admin, TokenRevoked, Token;
    RegisterDevice = Operator, DeviceRegistered, Device;
    ReadDevice = Viewer, DeviceRead, Device;
    ListDevices = Viewer, DeviceListed, Device;
    LabelDevice = Operator, DeviceLabelsChanged, Device;
    RevokeDevice = Operator, DeviceRevoked, Device;
    CreateEnrollKey = Admin, EnrollKeyCreated, EnrollKey;
    ReadIdentity = Viewer, IdentityRead, Auth;
}

/// The header that names the device while RBAC is off (SPEC §9.1).
pub const DEVICE_HEADER: &str = "x-autonomy-device";

/// A device calling a device endpoint: with RBAC on, its device token (an operator token is
/// refused, 401); with RBAC off, the registered device the `X-Autonomy-Device` header names.
/// Refusals count against the source's budget like operator 401s.
pub struct DeviceCaller {
    pub device_id: String,
    pub ctx: Ctx,
}

impl<S: Store> FromRequestParts<AppState<S>> for DeviceCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState<S>,
    ) -> Result<Self, Self::Rejection> {
        let (request_id, source) = request_facts(parts);
        let found = if state.config.rbac {
            match bearer(&parts.headers) {
                Bearer::Token(secret) if autonomy_store::ids::is_secret_shaped(&secret) => {
                    state.store.identify_device(secret).await?
                }
                _ => None,
            }
        } else {
            let named = parts
                .headers
                .get(DEVICE_HEADER)
                .map(|v| v.to_str().unwrap_or("\u{fffd}").to_string());
            match named {
                None => {
                    return Err(ApiError::unauthorized(
                        "a device endpoint needs the device: send X-Autonomy-Device: <id> (RBAC                          is off)",
                    ))
                }
                Some(id) => {
                    autonomy_core::device::validate_device_id(&id).map_err(|m| {
                        ApiError::invalid(format!("invalid header X-Autonomy-Device: {m}"))
                    })?;
                    state.store.known_device(id).await?
                }
            }
        };
        match found {
            Some(who) => Ok(DeviceCaller {
                ctx: Ctx {
                    actor: format!("device:{}", who.device_id),
                    request_id,
                    idempotency: None,
                },
                device_id: who.device_id,
            }),
            None => {
                let (method, path) = (&parts.method, parts.uri.path());
                state
                    .denials
                    .record(&source, || format!("{method} {path} device"));
                if let Some(wait) = state.denials.throttle(&source) {
                    tokio::time::sleep(wait).await;
                }
                Err(ApiError::unauthorized(if state.config.rbac {
                    "a device endpoint needs a device token (Authorization: Bearer <device \
                     token>); the token is unknown or revoked, or is not a device's"
                } else {
                    "the device named by X-Autonomy-Device is not registered or is revoked"
                }))
            }
        }
    }
}

/// The enroll key a device enrolls with (`POST /v1/device/enroll`): the bearer, checked by
/// the store (a spent, expired or unknown key is 401).
pub struct EnrollKey {
    pub key: String,
    pub ctx: Ctx,
}

impl<S: Store> FromRequestParts<AppState<S>> for EnrollKey {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState<S>,
    ) -> Result<Self, Self::Rejection> {
        let (request_id, source) = request_facts(parts);
        match bearer(&parts.headers) {
            Bearer::Token(key) if autonomy_store::ids::is_secret_shaped(&key) => Ok(EnrollKey {
                key,
                ctx: Ctx {
                    actor: "enroll".into(),
                    request_id,
                    idempotency: None,
                },
            }),
            _ => {
                if let Some(wait) = state.denials.throttle(&source) {
                    tokio::time::sleep(wait).await;
                }
                Err(ApiError::unauthorized(
                    "enrolling needs an enroll key: Authorization: Bearer <key>",
                ))
            }
        }
    }
}

/// An authorised caller of an action `P`.
pub struct Caller<P> {
    pub ctx: Ctx,
    /// The token's identity with RBAC on; `None` with RBAC off (everyone may do everything).
    pub identity: Option<Identity>,
    _permission: PhantomData<P>,
}

impl<S: Store, P: Permission> FromRequestParts<AppState<S>> for Caller<P> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState<S>,
    ) -> Result<Self, Self::Rejection> {
        let (request_id, source) = request_facts(parts);
        // The resource a denial is recorded against: the path's id, when the route has one,
        // validated first — a bad id is a 400 and nothing about the request is recorded.
        let resource = match RawPathParams::from_request_parts(parts, state).await {
            Ok(params) => match params.iter().find(|(k, _)| *k == "id") {
                Some((_, id)) => match P::check_id(id) {
                    Ok(()) => id.to_string(),
                    Err(m) => {
                        unauthenticated_refusal(state, &parts.headers, &source).await;
                        return Err(ApiError::invalid(format!("invalid id: {m}")));
                    }
                },
                None => String::new(),
            },
            Err(e) => {
                unauthenticated_refusal(state, &parts.headers, &source).await;
                return Err(ApiError::invalid(format!("invalid path: {e}")));
            }
        };
        let asking = Asking {
            headers: &parts.headers,
            request_id,
            resource,
            source,
            method: &parts.method,
            path: parts.uri.path(),
        };
        let (ctx, identity) = authorize::<S, P>(state, asking).await?;
        Ok(Caller {
            ctx,
            identity,
            _permission: PhantomData,
        })
    }
}

/// The request's id (made by the middleware) and its peer's address (`unknown` in-process).
fn request_facts(parts: &Parts) -> (String, String) {
    let request_id = parts
        .extensions
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let source = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    (request_id, source)
}

/// A request refused before authentication (bad path) that carries no plausible token, with
/// RBAC on: it counts against its source's budget like a 401, so a flood of garbage paths is
/// tarpitted too (`denials::Denials::throttle`).
async fn unauthenticated_refusal<S: Store>(state: &AppState<S>, headers: &HeaderMap, source: &str) {
    if !state.config.rbac {
        return;
    }
    if let Bearer::Token(t) = bearer(headers) {
        if autonomy_store::ids::is_secret_shaped(&t) {
            return;
        }
    }
    if let Some(wait) = state.denials.throttle(source) {
        tokio::time::sleep(wait).await;
    }
}

/// What is known of a request before it is authorised.
struct Asking<'a> {
    headers: &'a HeaderMap,
    request_id: String,
    resource: String,
    /// The peer's address (`unknown` in-process).
    source: String,
    /// Method and path, for the aggregated denial's samples (formatted only when one is kept).
    method: &'a axum::http::Method,
    path: &'a str,
}

async fn authorize<S: Store, P: Permission>(
    state: &AppState<S>,
    asking: Asking<'_>,
) -> Result<(Ctx, Option<Identity>), ApiError> {
    let headers = asking.headers;
    let mut ctx = Ctx {
        actor: String::new(),
        request_id: asking.request_id,
        idempotency: None,
    };
    if !state.config.rbac {
        ctx.actor = match headers.get(OPERATOR_HEADER) {
            None => "anonymous".to_string(),
            Some(v) => operator_name(v.to_str().ok()).map_err(|m| {
                ApiError::invalid(format!("invalid header X-Autonomy-Operator: {m}"))
            })?,
        };
        return Ok((ctx, None));
    }
    let need = P::ROLE;
    let identity = match bearer(headers) {
        Bearer::Missing => Err("authentication required: send Authorization: Bearer <token> (autonomy --token / AUTONOMY_TOKEN)"),
        Bearer::Malformed => Err("the Authorization header is not of the form 'Bearer <token>'"),
        Bearer::TooLong => Err("the bearer token is longer than any token this control plane issues (256 characters)"),
        Bearer::Token(secret) if !autonomy_store::ids::is_secret_shaped(&secret) => {
            Err("the bearer token is unknown or revoked")
        }
        Bearer::Token(secret) => match state.store.identify(secret).await? {
            Some(who) => Ok(who),
            None => Err("the bearer token is unknown or revoked"),
        },
    };
    let who = match identity {
        Ok(who) => who,
        Err(why) => {
            // Counted and audited in aggregate (denials.rs), never one write per request; a
            // source over its budget waits before it hears back.
            let (method, path) = (asking.method, asking.path);
            state
                .denials
                .record(&asking.source, || format!("{method} {path} {}", P::EVENT));
            if let Some(wait) = state.denials.throttle(&asking.source) {
                tokio::time::sleep(wait).await;
            }
            return Err(ApiError::unauthorized(why));
        }
    };
    if who.role >= need {
        ctx.actor = who.operator.clone();
        return Ok((ctx, Some(who)));
    }
    // A known operator without the role: audited individually (the actor is known).
    let denial = ApiError::forbidden(format!(
        "operator '{}' has role {}; this needs role {need}",
        who.operator, who.role
    ));
    ctx.actor = who.operator;
    let event = AuditEvent::draft(
        P::EVENT,
        P::TARGET,
        asking.resource,
        Outcome::Denied,
        denial.message.clone(),
        serde_json::json!({"status": denial.status().as_u16(), "needed_role": need}),
    );
    state.store.audit_only(&ctx, event).await?;
    Err(denial)
}

/// Whether the request carries a bearer token of the shape of a secret (whether or not it is
/// known): what tells an operator's request from an anonymous one before authorising it.
pub(crate) fn has_plausible_token(headers: &HeaderMap) -> bool {
    matches!(bearer(headers), Bearer::Token(t) if autonomy_store::ids::is_secret_shaped(&t))
}

enum Bearer {
    Missing,
    Malformed,
    TooLong,
    Token(String),
}

fn bearer(headers: &HeaderMap) -> Bearer {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Bearer::Missing;
    };
    let token = v.to_str().ok().and_then(|v| {
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .map(str::trim)
    });
    match token {
        None | Some("") => Bearer::Malformed,
        Some(t) if t.len() > 256 => Bearer::TooLong,
        Some(t) => Bearer::Token(t.to_string()),
    }
}

/// An operator name: 1 to 128 printable characters.
pub fn operator_name(v: Option<&str>) -> Result<String, String> {
    match v {
        Some(s) if !s.trim().is_empty() && s.len() <= 128 && !s.chars().any(char::is_control) => {
            Ok(s.trim().to_string())
        }
        _ => Err("must be 1 to 128 printable characters".to_string()),
    }
}

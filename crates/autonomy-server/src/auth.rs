//! Who is asking (RBAC, SPEC §4), as an extractor: a handler that takes [`Caller<P>`] runs
//! only for a caller allowed to do `P`, and gets the [`Ctx`] its writes are made under. With
//! RBAC on, the actor is the token's operator whatever the headers say; denials are audited
//! with `outcome=denied` and the event type of the action that was attempted.

use std::marker::PhantomData;

use autonomy_api::{AuditEvent, EventType, Outcome, Role, Target, OPERATOR_HEADER};
use autonomy_store::{Ctx, Store};
use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};

use crate::{ApiError, AppState, RequestId};

/// What an action needs: the role, and what a denial is audited as.
pub trait Permission: Send + Sync + 'static {
    const ROLE: Role;
    const EVENT: EventType;
    const TARGET: Target;
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
}

/// An authorised caller of an action `P`.
pub struct Caller<P> {
    pub ctx: Ctx,
    _permission: PhantomData<P>,
}

impl<S: Store, P: Permission> FromRequestParts<AppState<S>> for Caller<P> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState<S>,
    ) -> Result<Self, Self::Rejection> {
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        // The resource a denial is recorded against: the path's id, when the route has one.
        let resource = RawPathParams::from_request_parts(parts, state)
            .await
            .ok()
            .and_then(|p| {
                p.iter()
                    .find(|(k, _)| *k == "id")
                    .map(|(_, v)| v.to_string())
            })
            .unwrap_or_default();
        let ctx = authorize::<S, P>(state, &parts.headers, request_id, resource).await?;
        Ok(Caller {
            ctx,
            _permission: PhantomData,
        })
    }
}

async fn authorize<S: Store, P: Permission>(
    state: &AppState<S>,
    headers: &HeaderMap,
    request_id: String,
    resource: String,
) -> Result<Ctx, ApiError> {
    let mut ctx = Ctx {
        actor: String::new(),
        request_id,
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
    let need = P::ROLE;
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
    let event = AuditEvent::draft(
        P::EVENT,
        P::TARGET,
        resource,
        Outcome::Denied,
        denial.message.clone(),
        serde_json::json!({"status": denial.status().as_u16(), "needed_role": need}),
    );
    state.store.audit_only(&ctx, event).await?;
    Err(denial)
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

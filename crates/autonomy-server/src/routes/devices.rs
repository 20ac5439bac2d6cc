//! Devices (SPEC §9.1–§9.2): the registry for operators (`/v1/devices`, `/v1/enroll-keys`) and
//! the protocol for devices (`/v1/device/enroll|poll|reports`), plus a plan's devices
//! (`GET /v1/rollouts/{id}/devices`).
//!
//! A poll never writes: its heartbeat goes to the store's in-memory [`autonomy_store::Live`]
//! (flushed in batches), and a long poll waits on the device's revision, woken by the commit
//! that raises it. A report is answered once durable; a report that settles a device wakes the
//! promoter.

use std::collections::BTreeMap;
use std::time::Duration;

use autonomy_api::device::{
    DeviceLabelsRequest, EnrollKeyRequest, EnrollRequest, PollRequest, PollResponse,
    RegisterDeviceRequest, ReportRequest,
};
use autonomy_api::{DeviceState, FieldError};
use autonomy_core::device as dev;
use autonomy_store::{Beat, Reply, Store};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::plan_id;
use crate::auth::{
    Caller, CreateEnrollKey, DeviceCaller, EnrollKey, LabelDevice, ListDevices, ReadDevice,
    ReadPlan, RegisterDevice, RevokeDevice,
};
use crate::respond::{idempotency, reply};
use crate::{input, ApiError, AppState};

/// How long a device waits before its next poll when nothing is assigned.
const IDLE_POLL_AFTER_SECONDS: u32 = 5;

fn device_id(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    // The Caller extractor has validated the id.
    let Path(id) = id.map_err(|e| ApiError::invalid(format!("invalid id in path: {e}")))?;
    Ok(id)
}

#[utoipa::path(
    post,
    operation_id = "devices_register",
    path = "/v1/devices",
    tag = "devices",
    summary = "Register a device (its token is shown once)",
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request return the first answer (1 to 255 visible ASCII characters)")),
    request_body(content = autonomy_api::device::RegisterDeviceRequest, content_type = "application/json"),
    responses((status = 201, description = "Registered", body = autonomy_api::device::DeviceRegistered), crate::openapi::WriteErrors)
)]
pub async fn register<S: Store>(
    State(state): State<AppState<S>>,
    Caller { mut ctx, .. }: Caller<RegisterDevice>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (body, req): (Bytes, RegisterDeviceRequest) = input::required_json(&headers, body)?;
    dev::validate_register(&req).map_err(ApiError::field)?;
    idempotency(&mut ctx, &headers, "POST", "/v1/devices", &body)?;
    Ok(reply(state.store.register_device(&ctx, req).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceListQuery {
    selector: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// `k=v,k2=v2` into labels, each checked like a label.
fn parse_selector(s: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            ApiError::invalid(format!(
                "invalid selector: '{}' is not key=value (selector=k=v,k2=v2)",
                part.escape_debug()
            ))
        })?;
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(ApiError::invalid(format!(
                "invalid selector: key '{}' is repeated",
                k.escape_debug()
            )));
        }
    }
    autonomy_core::validate_labels_at("selector", out.iter()).map_err(ApiError::field)?;
    Ok(out)
}

#[utoipa::path(
    get,
    operation_id = "devices_list",
    path = "/v1/devices",
    tag = "devices",
    summary = "List devices by pages",
    params(("selector" = Option<String>, Query, description = "Only devices with every label: k=v,k2=v2"), ("limit" = Option<u32>, Query, description = "Page size, 1 to 1000 (default 100)", minimum = 1, maximum = 1000), ("cursor" = Option<String>, Query, description = "The next_cursor of the previous page")),
    responses((status = 200, description = "A page", body = autonomy_api::device::DeviceList), crate::openapi::ReadErrors)
)]
pub async fn list<S: Store>(
    State(state): State<AppState<S>>,
    _: Caller<ListDevices>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q: DeviceListQuery = input::query(q.as_deref())?;
    let selector = match q.selector.as_deref() {
        Some(s) => parse_selector(s)?,
        None => BTreeMap::new(),
    };
    let limit =
        autonomy_api::parse_limit(q.limit.as_deref(), 100, 1000).map_err(ApiError::field)?;
    if let Some(c) = &q.cursor {
        autonomy_core::device::validate_device_id(c)
            .map_err(|_| ApiError::invalid("invalid cursor: not a cursor from next_cursor"))?;
    }
    Ok(Json(state.store.devices(selector, limit, q.cursor).await?).into_response())
}

#[utoipa::path(
    get,
    operation_id = "devices_get",
    path = "/v1/devices/{id}",
    tag = "devices",
    summary = "One device",
    params(("id" = String, Path, description = "The device id", pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")),
    responses((status = 200, description = "The device", body = autonomy_api::device::Device), crate::openapi::ReadErrors)
)]
pub async fn get<S: Store>(
    State(state): State<AppState<S>>,
    _: Caller<ReadDevice>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = device_id(id)?;
    Ok(Json(state.store.device(&id).await?).into_response())
}

#[utoipa::path(
    post,
    operation_id = "devices_labels",
    path = "/v1/devices/{id}/labels",
    tag = "devices",
    summary = "Replace a device's labels",
    params(("id" = String, Path, description = "The device id", pattern = "^[a-z0-9][a-z0-9._-]{0,62}$"), ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request return the first answer (1 to 255 visible ASCII characters)")),
    request_body(content = autonomy_api::device::DeviceLabelsRequest, content_type = "application/json"),
    responses((status = 200, description = "The device", body = autonomy_api::device::Device), crate::openapi::WriteErrors)
)]
pub async fn labels<S: Store>(
    State(state): State<AppState<S>>,
    Caller { mut ctx, .. }: Caller<LabelDevice>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = device_id(id)?;
    let (body, req): (Bytes, DeviceLabelsRequest) = input::required_json(&headers, body)?;
    dev::validate_device_labels(&req.labels).map_err(ApiError::field)?;
    idempotency(
        &mut ctx,
        &headers,
        "POST",
        &format!("/v1/devices/{id}/labels"),
        &body,
    )?;
    Ok(reply(
        state.store.set_device_labels(&ctx, &id, req.labels).await?,
    ))
}

#[utoipa::path(
    post,
    operation_id = "devices_revoke",
    path = "/v1/devices/{id}/revoke",
    tag = "devices",
    summary = "Revoke a device",
    params(("id" = String, Path, description = "The device id", pattern = "^[a-z0-9][a-z0-9._-]{0,62}$"), ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request return the first answer (1 to 255 visible ASCII characters)")),
    responses((status = 200, description = "The device", body = autonomy_api::device::Device), crate::openapi::WriteErrors)
)]
pub async fn revoke<S: Store>(
    State(state): State<AppState<S>>,
    Caller { ctx, .. }: Caller<RevokeDevice>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = device_id(id)?;
    Ok(reply(state.store.revoke_device(&ctx, &id).await?))
}

#[utoipa::path(
    post,
    operation_id = "devices_create_enroll_key",
    path = "/v1/enroll-keys",
    tag = "devices",
    summary = "Create an enroll key (shown once)",
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request return the first answer (1 to 255 visible ASCII characters)")),
    request_body(content = autonomy_api::device::EnrollKeyRequest, content_type = "application/json"),
    responses((status = 201, description = "Created", body = autonomy_api::device::EnrollKeyCreated), crate::openapi::WriteErrors)
)]
pub async fn create_enroll_key<S: Store>(
    State(state): State<AppState<S>>,
    Caller { mut ctx, .. }: Caller<CreateEnrollKey>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (body, req): (Bytes, EnrollKeyRequest) = input::required_json(&headers, body)?;
    dev::validate_enroll_key(&req).map_err(ApiError::field)?;
    idempotency(&mut ctx, &headers, "POST", "/v1/enroll-keys", &body)?;
    Ok(reply(state.store.create_enroll_key(&ctx, req).await?))
}

#[utoipa::path(
    post,
    operation_id = "devices_enroll",
    path = "/v1/device/enroll",
    tag = "device",
    summary = "A device enrolls itself with an enroll key (Authorization: Bearer <key>)",
    request_body(content = autonomy_api::device::EnrollRequest, content_type = "application/json"),
    responses((status = 201, description = "Enrolled; the device token is shown once", body = autonomy_api::device::Enrolled), crate::openapi::WriteErrors)
)]
pub async fn enroll<S: Store>(
    State(state): State<AppState<S>>,
    EnrollKey { key, mut ctx }: EnrollKey,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (_, req): (Bytes, EnrollRequest) = input::required_json(&headers, body)?;
    dev::validate_enroll(&req).map_err(ApiError::field)?;
    ctx.actor = format!("device:{}", req.id);
    Ok(reply(state.store.enroll(&ctx, key, req).await?))
}

/// `POST /v1/device/poll`: a long poll (SPEC §9.2).
#[utoipa::path(
    post,
    operation_id = "devices_poll",
    path = "/v1/device/poll",
    tag = "device",
    summary = "A device asks what to run (long poll with wait_seconds)",
    params(("X-Autonomy-Device" = Option<String>, Header, description = "With RBAC off: the registered device calling (with RBAC on, its device token instead)")),
    request_body(content = Option<autonomy_api::device::PollRequest>, content_type = "application/json", description = "Optional"),
    responses((status = 200, description = "What to run", body = autonomy_api::device::PollResponse), crate::openapi::WriteErrors)
)]
pub async fn poll<S: Store>(
    State(state): State<AppState<S>>,
    DeviceCaller { device_id, ctx }: DeviceCaller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = input::body_bytes(body)?;
    let req: PollRequest = input::json(&headers, &body, true)?.unwrap_or_default();
    dev::validate_poll(&req).map_err(ApiError::field)?;
    // A long poll is held for up to a minute by every device of the fleet at once: keep only
    // what the answer needs across the wait (issue 13, F2: the CP's memory per held poll).
    drop(headers);
    drop(body);
    let store = state.store.clone();
    store.live().beat(
        &device_id,
        Beat {
            at_us: autonomy_store::now_us(),
            installed_digest: req.installed_digest.clone(),
            boot_id: req.boot_id.clone(),
            conditions: req.conditions.clone(),
        },
    );
    // Subscribe before reading the revision, so a change in between is not missed; a poll
    // that does not wait needs no subscription.
    let mut watch = (req.wait_seconds > 0).then(|| store.live().watch(&device_id));
    let answer = async {
        let mut seen = store.poll(&device_id).await?;
        if seen.waiting_ready {
            // The device waits to meet `policy.require` (SPEC §8.7) and just said how it is:
            // a tick now dispatches it if it does, and the dispatch answers this long poll.
            state.engine.wake_promoter();
        }
        if let Some(d) = &seen.drift {
            let drifts = match d.state {
                DeviceState::Verified => {
                    !req.installed_digest.is_empty() && req.installed_digest != d.target_digest
                }
                DeviceState::Drifted => req.installed_digest == d.target_digest,
                _ => false,
            };
            if drifts {
                store
                    .drift(&ctx, &device_id, &d.plan_id, req.installed_digest.clone())
                    .await?;
                seen = store.poll(&device_id).await?;
            }
        }
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(u64::from(req.wait_seconds));
        if let Some(watch) = watch.as_mut() {
            let mut closing = state.engine.closing();
            while seen.revision <= req.known_revision && !*closing.borrow_and_update() {
                tokio::select! {
                    changed = tokio::time::timeout_at(deadline, watch.changed()) => match changed {
                        Ok(Ok(())) => {
                            watch.mark_unchanged();
                            seen = store.poll(&device_id).await?;
                        }
                        Ok(Err(_)) | Err(_) => break,
                    },
                    // The server stops: answer with what is known now.
                    _ = closing.changed() => break,
                }
            }
        }
        Ok::<_, ApiError>(seen)
    }
    .await;
    if watch.take().is_some() {
        store.live().unwatch(&device_id);
    }
    let seen = answer?;
    let poll_after_seconds = if seen.assignment.is_some() {
        1
    } else {
        IDLE_POLL_AFTER_SECONDS
    };
    Ok(Json(PollResponse {
        revision: seen.revision,
        poll_after_seconds,
        assignment: seen.assignment,
    })
    .into_response())
}

/// `POST /v1/device/reports`: answered once durable (SPEC §9.2).
#[utoipa::path(
    post,
    operation_id = "devices_report",
    path = "/v1/device/reports",
    tag = "device",
    summary = "A device reports progress or its result",
    params(("X-Autonomy-Device" = Option<String>, Header, description = "With RBAC off: the registered device calling (with RBAC on, its device token instead)")),
    request_body(content = autonomy_api::device::ReportRequest, content_type = "application/json"),
    responses((status = 200, description = "Recorded (durable)", body = autonomy_api::device::ReportResponse), crate::openapi::WriteErrors)
)]
pub async fn report<S: Store>(
    State(state): State<AppState<S>>,
    DeviceCaller { device_id, ctx }: DeviceCaller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (_, req): (Bytes, ReportRequest) = input::required_json(&headers, body)?;
    let req = dev::validate_report(&req).map_err(ApiError::field)?;
    let answer = state.store.report(&ctx, &device_id, req).await?;
    if let Reply::Report(r) = &answer {
        if r.assignment_state.is_settled() {
            state.engine.wake_promoter();
        }
        return Ok(Json(r.clone()).into_response());
    }
    Ok(reply(answer))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RolloutDevicesQuery {
    state: Option<String>,
    stage: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /v1/rollouts/{id}/devices` (SPEC §8.2).
#[utoipa::path(
    get,
    operation_id = "devices_of_rollout",
    path = "/v1/rollouts/{id}/devices",
    tag = "rollouts",
    summary = "A plan's devices and their states, by pages",
    params(("id" = String, Path, description = "The plan id", pattern = "^[a-z0-9][a-z0-9._-]{0,62}$"), ("state" = Option<autonomy_api::DeviceState>, Query, description = "Only devices in this state"), ("stage" = Option<String>, Query, description = "Only devices of this stage"), ("limit" = Option<u32>, Query, description = "Page size, 1 to 1000 (default 100)", minimum = 1, maximum = 1000), ("cursor" = Option<String>, Query, description = "The next_cursor of the previous page")),
    responses((status = 200, description = "A page", body = autonomy_api::device::DeviceAssignmentList), crate::openapi::ReadErrors)
)]
pub async fn of_rollout<S: Store>(
    State(state): State<AppState<S>>,
    _: Caller<ReadPlan>,
    id: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let id = plan_id(id)?;
    let q: RolloutDevicesQuery = input::query(q.as_deref())?;
    let device_state = q
        .state
        .as_deref()
        .map(|s| {
            s.parse::<DeviceState>()
                .map_err(|m| ApiError::field(FieldError::new("state", m)))
        })
        .transpose()?;
    let limit =
        autonomy_api::parse_limit(q.limit.as_deref(), 100, 1000).map_err(ApiError::field)?;
    let after = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(c.parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| {
            ApiError::invalid(format!(
                "invalid cursor: '{}' is not a cursor from next_cursor",
                c.escape_debug()
            ))
        })?),
    };
    if let Some(s) = &q.stage {
        if s.is_empty() || s.len() > 128 || autonomy_core::hidden_char(s).is_some() {
            return Err(ApiError::invalid("invalid stage: not a stage name"));
        }
    }
    Ok(Json(
        state
            .store
            .rollout_devices(&id, device_state, q.stage, limit, after)
            .await?,
    )
    .into_response())
}

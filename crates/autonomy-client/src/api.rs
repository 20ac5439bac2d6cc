//! The endpoints of API v1 as [`Call`]s: a request to send and the type its answer decodes to.

use std::marker::PhantomData;

use autonomy_api::device::{
    Device, DeviceAssignmentList, DeviceLabelsRequest, DeviceList, DeviceRegistered,
    EnrollKeyCreated, EnrollKeyRequest, EnrollRequest, Enrolled, PollRequest, PollResponse,
    RegisterDeviceRequest, ReportRequest, ReportResponse,
};
use autonomy_api::{
    AuditEventList, AuditQuery, CreateRolloutRequest, CreateTokenRequest, DeviceState,
    ExecuteRequest, ExecuteResponse, Health, ListQuery, Ready, Rollout, RolloutList, StuckQuery,
    StuckReport, TokenCreated, TokenInfo, TokenList, TransitionRequest, Verb, IDEMPOTENCY_HEADER,
    OPERATOR_HEADER,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::response::Answer;
use crate::{segment, ClientError, Method, Reply, Request, Response, Token};

/// The header that names the device on the device endpoints when the CP runs without RBAC
/// (SPEC §9.1); with RBAC the device token decides.
pub const DEVICE_HEADER: &str = "x-autonomy-device";

/// Who is asking, and how: the headers every request carries. Builds the [`Call`] of each
/// endpoint; sends nothing. Cheap to clone (one per agent in a fleet simulator).
///
/// An operator's `Api` carries an operator token (and, without RBAC, `X-Autonomy-Operator`);
/// a device's carries its device token and, without RBAC, `X-Autonomy-Device`
/// ([`Api::with_device`]). The CP refuses each kind of token on the other's endpoints.
#[derive(Debug, Clone)]
pub struct Api {
    token: Option<Token>,
    operator: Option<String>,
    device: Option<String>,
    user_agent: String,
}

impl Default for Api {
    fn default() -> Self {
        Api::new()
    }
}

/// A request and the type a 2xx answer to it decodes to.
#[derive(Debug, Clone)]
pub struct Call<T> {
    request: Request,
    /// `POST /v1/rollback/execute`: a 409 carrying the execution is [`ClientError::Rejected`].
    rejectable: bool,
    _value: PhantomData<fn() -> T>,
}

impl<T> Call<T> {
    /// A call of `request`, whose answer decodes to `T`.
    pub fn new(request: Request) -> Call<T> {
        Call {
            request,
            rejectable: false,
            _value: PhantomData,
        }
    }

    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The answer to this call: a [`Reply`] for a 2xx response, else the error it stands for.
    /// The body of a 2xx answer is not decoded yet.
    pub fn check(&self, response: Response) -> Result<Reply<T>, ClientError> {
        let answer = Answer {
            method: self.request.method,
            path: self.request.shown_path(),
            response,
        };
        answer.check(self.rejectable).map(Reply::new)
    }
}

impl<T: DeserializeOwned> Call<T> {
    /// [`Call::check`], then the body decoded as `T`.
    pub fn decode(&self, response: Response) -> Result<T, ClientError> {
        self.check(response)?.value()
    }
}

impl Api {
    /// No token, no operator, user agent `autonomy-client/<version>`.
    pub fn new() -> Api {
        Api {
            token: None,
            operator: None,
            device: None,
            user_agent: concat!("autonomy-client/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }

    /// Sends `Authorization: Bearer <token>` with every request (none when `None`).
    pub fn with_token(mut self, token: Option<Token>) -> Api {
        self.token = token;
        self
    }

    /// Sends `X-Autonomy-Operator` with every request (none when `None`).
    pub fn with_operator(mut self, operator: Option<String>) -> Api {
        self.operator = operator;
        self
    }

    /// Sends `X-Autonomy-Device: <id>` with every request (none when `None`): how a device
    /// names itself to a CP that runs without RBAC.
    pub fn with_device(mut self, device: Option<String>) -> Api {
        self.device = device;
        self
    }

    pub fn with_user_agent(mut self, user_agent: impl Into<String>) -> Api {
        self.user_agent = user_agent.into();
        self
    }

    /// A request with this caller's headers: `accept`, `user-agent`, `authorization`,
    /// `x-autonomy-operator`, `x-autonomy-device`, `idempotency-key` and, with a body, `content-type:
    /// application/json`. `path` must already be encoded (see [`segment`]).
    pub fn request(
        &self,
        method: Method,
        path: &str,
        query: Vec<(String, String)>,
        body: Option<Vec<u8>>,
        idempotency_key: Option<&str>,
    ) -> Request {
        let mut headers = vec![
            ("accept", "application/json".to_string()),
            ("user-agent", self.user_agent.clone()),
        ];
        if let Some(token) = &self.token {
            headers.push(("authorization", format!("Bearer {}", token.expose())));
        }
        if let Some(operator) = &self.operator {
            headers.push((OPERATOR_HEADER, operator.clone()));
        }
        if let Some(device) = &self.device {
            headers.push((DEVICE_HEADER, device.clone()));
        }
        if let Some(key) = idempotency_key {
            headers.push((IDEMPOTENCY_HEADER, key.to_string()));
        }
        if body.is_some() {
            headers.push(("content-type", "application/json".to_string()));
        }
        Request {
            method,
            path: path.to_string(),
            query,
            headers,
            body: body.unwrap_or_default(),
        }
    }

    /// `GET path?query` (pairs with a `None` value are left out).
    pub fn get<T>(&self, path: &str, query: &[(&str, Option<&str>)]) -> Call<T> {
        let query = query
            .iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v.to_string())))
            .collect();
        Call::new(self.request(Method::Get, path, query, None, None))
    }

    /// `POST path` with an optional JSON body (sent as given) and `Idempotency-Key`.
    pub fn post<T>(
        &self,
        path: &str,
        body: Option<Vec<u8>>,
        idempotency_key: Option<&str>,
    ) -> Call<T> {
        Call::new(self.request(Method::Post, path, Vec::new(), body, idempotency_key))
    }

    /// `POST path` with `value` serialised as the JSON body.
    pub fn post_json<T, B: Serialize>(
        &self,
        path: &str,
        value: &B,
        idempotency_key: Option<&str>,
    ) -> Call<T> {
        self.post(path, Some(to_json(value)), idempotency_key)
    }

    /// `GET /v1/health`.
    pub fn health(&self) -> Call<Health> {
        self.get("/v1/health", &[])
    }

    /// `GET /v1/ready`.
    pub fn ready(&self) -> Call<Ready> {
        self.get("/v1/ready", &[])
    }

    /// `GET /v1/leader`.
    pub fn leader(&self) -> Call<autonomy_api::LeaderInfo> {
        self.get("/v1/leader", &[])
    }

    /// `POST /v1/rollouts`.
    pub fn create_rollout(
        &self,
        request: &CreateRolloutRequest,
        idempotency_key: Option<&str>,
    ) -> Call<Rollout> {
        self.post_json("/v1/rollouts", request, idempotency_key)
    }

    /// `POST /v1/rollouts` with a create request already serialised (sent unchanged).
    pub fn create_rollout_json(
        &self,
        body: Vec<u8>,
        idempotency_key: Option<&str>,
    ) -> Call<Rollout> {
        self.post("/v1/rollouts", Some(body), idempotency_key)
    }

    /// `GET /v1/rollouts/{id}`.
    pub fn get_rollout(&self, id: &str) -> Call<Rollout> {
        self.get(&format!("/v1/rollouts/{}", segment(id)), &[])
    }

    /// `GET /v1/rollouts?phase&limit&cursor`.
    pub fn list_rollouts(&self, query: &ListQuery) -> Call<RolloutList> {
        self.get(
            "/v1/rollouts",
            &[
                ("phase", query.phase.as_deref()),
                ("limit", query.limit.as_deref()),
                ("cursor", query.cursor.as_deref()),
            ],
        )
    }

    /// `GET /v1/rollouts/stuck?threshold_seconds&limit&code`.
    pub fn stuck_rollouts(&self, query: &StuckQuery) -> Call<StuckReport> {
        self.get(
            "/v1/rollouts/stuck",
            &[
                ("threshold_seconds", query.threshold_seconds.as_deref()),
                ("limit", query.limit.as_deref()),
                ("code", query.code.as_deref()),
            ],
        )
    }

    /// `POST /v1/rollouts/{id}/{verb}` (`request.stage` is for `start` only: the gate the
    /// approval is for).
    pub fn transition(&self, id: &str, verb: Verb, request: &TransitionRequest) -> Call<Rollout> {
        let path = format!("/v1/rollouts/{}/{}", segment(id), verb.as_str());
        self.post_json(&path, request, None)
    }

    /// `GET /v1/rollouts/{id}/devices?state&stage&limit&cursor`: the plan's device
    /// assignments, optionally only those in `state` or in the stage named `stage`.
    pub fn rollout_devices(
        &self,
        id: &str,
        state: Option<DeviceState>,
        stage: Option<&str>,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Call<DeviceAssignmentList> {
        let limit = limit.map(|l| l.to_string());
        self.get(
            &format!("/v1/rollouts/{}/devices", segment(id)),
            &[
                ("state", state.map(DeviceState::as_str)),
                ("stage", stage),
                ("limit", limit.as_deref()),
                ("cursor", cursor),
            ],
        )
    }

    /// `POST /v1/rollback/execute`. A rejected execution (409 with the execution in the
    /// body) is [`ClientError::Rejected`].
    pub fn execute_rollback(
        &self,
        request: &ExecuteRequest,
        idempotency_key: Option<&str>,
    ) -> Call<ExecuteResponse> {
        let mut call = self.post_json("/v1/rollback/execute", request, idempotency_key);
        call.rejectable = true;
        call
    }

    /// `GET /v1/audit/events` with the filters that are set (in alphabetical order).
    pub fn audit_events(&self, query: &AuditQuery) -> Call<AuditEventList> {
        self.get(
            "/v1/audit/events",
            &[
                ("actor", query.actor.as_deref()),
                ("cursor", query.cursor.as_deref()),
                ("end_time", query.end_time.as_deref()),
                ("event_type", query.event_type.as_deref()),
                ("limit", query.limit.as_deref()),
                ("outcome", query.outcome.as_deref()),
                ("resource", query.resource.as_deref()),
                ("start_time", query.start_time.as_deref()),
            ],
        )
    }

    /// `POST /v1/tokens` (admin).
    pub fn create_token(&self, request: &CreateTokenRequest) -> Call<TokenCreated> {
        self.post_json("/v1/tokens", request, None)
    }

    /// `GET /v1/tokens` (admin).
    pub fn list_tokens(&self) -> Call<TokenList> {
        self.get("/v1/tokens", &[])
    }

    /// `POST /v1/tokens/{id}/revoke` (admin).
    pub fn revoke_token(&self, id: &str) -> Call<TokenInfo> {
        self.post(&format!("/v1/tokens/{}/revoke", segment(id)), None, None)
    }

    // -----------------------------------------------------------------------------------------
    // The device registry (operator endpoints, SPEC §9.1)
    // -----------------------------------------------------------------------------------------

    /// `POST /v1/devices` (operator). The answer holds the device token, shown only this once.
    pub fn register_device(&self, request: &RegisterDeviceRequest) -> Call<DeviceRegistered> {
        self.post_json("/v1/devices", request, None)
    }

    /// `GET /v1/devices?selector&limit&cursor`. `selector` is `k=v,k2=v2` (devices matching
    /// every label), sent as given.
    pub fn list_devices(
        &self,
        selector: Option<&str>,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Call<DeviceList> {
        let limit = limit.map(|l| l.to_string());
        self.get(
            "/v1/devices",
            &[
                ("selector", selector),
                ("limit", limit.as_deref()),
                ("cursor", cursor),
            ],
        )
    }

    /// `GET /v1/devices/{id}`.
    pub fn get_device(&self, id: &str) -> Call<Device> {
        self.get(&format!("/v1/devices/{}", segment(id)), &[])
    }

    /// `POST /v1/devices/{id}/labels`: `request.labels` replace the device's labels.
    pub fn set_device_labels(&self, id: &str, request: &DeviceLabelsRequest) -> Call<Device> {
        self.post_json(
            &format!("/v1/devices/{}/labels", segment(id)),
            request,
            None,
        )
    }

    /// `POST /v1/devices/{id}/revoke`: the device's token stops working on its next request.
    pub fn revoke_device(&self, id: &str) -> Call<Device> {
        self.post(&format!("/v1/devices/{}/revoke", segment(id)), None, None)
    }

    /// `POST /v1/enroll-keys` (admin). The answer holds the key, shown only this once.
    pub fn create_enroll_key(&self, request: &EnrollKeyRequest) -> Call<EnrollKeyCreated> {
        self.post_json("/v1/enroll-keys", request, None)
    }

    // -----------------------------------------------------------------------------------------
    // The device protocol (device endpoints, SPEC §9.1–§9.2)
    // -----------------------------------------------------------------------------------------

    /// `POST /v1/device/enroll` with the enroll `key` as bearer (in place of this `Api`'s
    /// token). The answer holds the device's own token.
    pub fn enroll(&self, key: &Token, request: &EnrollRequest) -> Call<Enrolled> {
        let api = Api {
            token: Some(key.clone()),
            ..self.clone()
        };
        api.post_json("/v1/device/enroll", request, None)
    }

    /// `POST /v1/device/poll`: the heartbeat and long poll. It may wait up to
    /// `request.wait_seconds` before answering, so the transport's deadline must be longer.
    pub fn device_poll(&self, request: &PollRequest) -> Call<PollResponse> {
        self.post_json("/v1/device/poll", request, None)
    }

    /// `POST /v1/device/reports`: one step of one attempt, answered once durable.
    pub fn device_report(&self, request: &ReportRequest) -> Call<ReportResponse> {
        self.post_json("/v1/device/reports", request, None)
    }
}

/// The API's request types are plain structs with string keys: serialising them cannot fail.
fn to_json<B: Serialize>(value: &B) -> Vec<u8> {
    serde_json::to_vec(value).expect("API request types always serialise")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use autonomy_api::device::{AssignmentAction, ReportResult, ReportState};
    use autonomy_api::{ErrorCode, Outcome, Phase, Strategy};

    use super::*;
    use crate::Exit;

    fn api() -> Api {
        Api::new()
            .with_token(Some("s3cret".parse().unwrap()))
            .with_operator(Some("ann".into()))
            .with_user_agent("test/1")
    }

    fn response(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    fn error_body(code: &str, message: &str) -> String {
        serde_json::json!({"error": {"code": code, "message": message}}).to_string()
    }

    #[test]
    fn requests_carry_the_callers_headers() {
        let req = api()
            .create_rollout_json(b"{\"spec\":{}}".to_vec(), Some("k-1"))
            .request
            .clone();
        assert_eq!(req.method, Method::Post);
        assert_eq!(req.target(), "/v1/rollouts");
        assert_eq!(req.header("authorization"), Some("Bearer s3cret"));
        assert_eq!(req.header("x-autonomy-operator"), Some("ann"));
        assert_eq!(req.header("idempotency-key"), Some("k-1"));
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert_eq!(req.header("accept"), Some("application/json"));
        assert_eq!(req.header("user-agent"), Some("test/1"));
        assert_eq!(req.body, b"{\"spec\":{}}");

        // Nothing set: no credentials, no key; no body: no content-type.
        let req = Api::new().revoke_token("tok/1").request;
        assert_eq!(req.method, Method::Post);
        assert_eq!(req.path, "/v1/tokens/tok%2F1/revoke");
        assert!(req.body.is_empty());
        for h in [
            "authorization",
            "x-autonomy-operator",
            "idempotency-key",
            "content-type",
        ] {
            assert_eq!(req.header(h), None, "{h}");
        }
        assert!(req
            .header("user-agent")
            .unwrap()
            .starts_with("autonomy-client/"));
    }

    #[test]
    fn every_endpoint_has_its_method_and_target() {
        let a = Api::new();
        let exec = ExecuteRequest {
            target: "rollout_plan".into(),
            resource: "web-1".into(),
            strategy: Strategy::Retry,
            reason: "r".into(),
            dry_run: false,
        };
        let list = ListQuery {
            phase: Some("active".into()),
            limit: Some("5".into()),
            cursor: None,
        };
        let stuck = StuckQuery {
            threshold_seconds: Some("0.5".into()),
            limit: None,
            code: None,
        };
        let audit = AuditQuery {
            event_type: Some("plan.created".into()),
            actor: Some("a b".into()),
            limit: Some("10".into()),
            ..AuditQuery::default()
        };
        let token = CreateTokenRequest {
            operator: "ci".into(),
            role: autonomy_api::Role::Viewer,
        };
        let register = RegisterDeviceRequest {
            id: "amr-0007".into(),
            labels: [("site".to_string(), "berlin".to_string())].into(),
        };
        let labels = DeviceLabelsRequest {
            labels: BTreeMap::new(),
        };
        let enroll_key = EnrollKeyRequest {
            labels: BTreeMap::new(),
            max_uses: 10,
            ttl_seconds: 3600,
        };
        let enroll = EnrollRequest {
            id: "amr-0008".into(),
            labels: BTreeMap::new(),
        };
        let report = report(3);
        let cases: Vec<(Request, Method, &str)> = vec![
            (a.health().request, Method::Get, "/v1/health"),
            (a.leader().request, Method::Get, "/v1/leader"),
            (a.ready().request, Method::Get, "/v1/ready"),
            (
                a.get_rollout("..").request,
                Method::Get,
                "/v1/rollouts/%2E%2E",
            ),
            (
                a.list_rollouts(&list).request,
                Method::Get,
                "/v1/rollouts?phase=active&limit=5",
            ),
            (
                a.list_rollouts(&ListQuery::default()).request,
                Method::Get,
                "/v1/rollouts",
            ),
            (
                a.stuck_rollouts(&stuck).request,
                Method::Get,
                "/v1/rollouts/stuck?threshold_seconds=0.5",
            ),
            (
                a.transition("web-1", Verb::Pause, &no_reason()).request,
                Method::Post,
                "/v1/rollouts/web-1/pause",
            ),
            (
                a.execute_rollback(&exec, None).request,
                Method::Post,
                "/v1/rollback/execute",
            ),
            (
                a.audit_events(&audit).request,
                Method::Get,
                "/v1/audit/events?actor=a%20b&event_type=plan.created&limit=10",
            ),
            (a.create_token(&token).request, Method::Post, "/v1/tokens"),
            (a.list_tokens().request, Method::Get, "/v1/tokens"),
            (
                a.revoke_token("tok-1").request,
                Method::Post,
                "/v1/tokens/tok-1/revoke",
            ),
            (
                a.stuck_rollouts(&StuckQuery {
                    code: Some("failing_devices".into()),
                    ..StuckQuery::default()
                })
                .request,
                Method::Get,
                "/v1/rollouts/stuck?code=failing_devices",
            ),
            (
                a.rollout_devices("web-1", None, None, None, None).request,
                Method::Get,
                "/v1/rollouts/web-1/devices",
            ),
            (
                a.rollout_devices(
                    "web/1",
                    Some(DeviceState::TimedOut),
                    Some("wave 2"),
                    Some(50),
                    Some("c+1"),
                )
                .request,
                Method::Get,
                "/v1/rollouts/web%2F1/devices?state=timed_out&stage=wave%202&limit=50&cursor=c%2B1",
            ),
            (
                a.register_device(&register).request,
                Method::Post,
                "/v1/devices",
            ),
            (
                a.list_devices(None, None, None).request,
                Method::Get,
                "/v1/devices",
            ),
            (
                a.list_devices(Some("site=berlin,tier=a"), Some(10), Some("d-9"))
                    .request,
                Method::Get,
                "/v1/devices?selector=site%3Dberlin%2Ctier%3Da&limit=10&cursor=d-9",
            ),
            (
                a.get_device("amr-0007").request,
                Method::Get,
                "/v1/devices/amr-0007",
            ),
            (
                a.get_device("..").request,
                Method::Get,
                "/v1/devices/%2E%2E",
            ),
            (
                a.set_device_labels("amr-0007", &labels).request,
                Method::Post,
                "/v1/devices/amr-0007/labels",
            ),
            (
                a.revoke_device("amr-0007").request,
                Method::Post,
                "/v1/devices/amr-0007/revoke",
            ),
            (
                a.create_enroll_key(&enroll_key).request,
                Method::Post,
                "/v1/enroll-keys",
            ),
            (
                a.enroll(&"k".parse().unwrap(), &enroll).request,
                Method::Post,
                "/v1/device/enroll",
            ),
            (
                a.device_poll(&PollRequest::default()).request,
                Method::Post,
                "/v1/device/poll",
            ),
            (
                a.device_report(&report).request,
                Method::Post,
                "/v1/device/reports",
            ),
        ];
        for (req, method, target) in cases {
            assert_eq!((req.method, req.target().as_str()), (method, target));
        }
        let body: serde_json::Value =
            serde_json::from_slice(&a.execute_rollback(&exec, Some("k")).request.body).unwrap();
        assert_eq!(body["strategy"], "retry");
        assert_eq!(body["resource"], "web-1");
    }

    fn report(seq: u64) -> ReportRequest {
        ReportRequest {
            plan_id: "web-1".into(),
            attempt: 2,
            seq,
            state: ReportState::Installing,
            installed_digest: "sha256:aa".into(),
            boot_id: "b-1".into(),
            message: String::new(),
        }
    }

    fn body_of(req: &Request) -> serde_json::Value {
        serde_json::from_slice(&req.body).unwrap()
    }

    #[test]
    fn device_calls_carry_the_device_token_and_name() {
        let device = Api::new()
            .with_token(Some("dev-tok".parse().unwrap()))
            .with_device(Some("amr-0007".into()))
            .with_user_agent("agent/1");
        let poll = PollRequest {
            installed_digest: "sha256:aa".into(),
            boot_id: "b-1".into(),
            known_revision: 4,
            wait_seconds: 30,
            conditions: BTreeMap::new(),
        };
        for req in [
            device.device_poll(&poll).request,
            device.device_report(&report(1)).request,
        ] {
            assert_eq!(req.method, Method::Post);
            assert_eq!(req.header("authorization"), Some("Bearer dev-tok"));
            assert_eq!(req.header("x-autonomy-device"), Some("amr-0007"));
            assert_eq!(req.header("x-autonomy-operator"), None);
            assert_eq!(req.header("content-type"), Some("application/json"));
            assert_eq!(req.header("user-agent"), Some("agent/1"));
        }
        assert_eq!(
            body_of(&device.device_poll(&poll).request),
            serde_json::json!({"installed_digest": "sha256:aa", "boot_id": "b-1",
                               "known_revision": 4, "wait_seconds": 30})
        );
        assert_eq!(
            body_of(&device.device_report(&report(7)).request),
            serde_json::json!({"plan_id": "web-1", "attempt": 2, "seq": 7,
                               "state": "installing", "installed_digest": "sha256:aa",
                               "boot_id": "b-1", "message": ""})
        );

        // Enrolling sends the key as bearer instead of the Api's token, and keeps the rest.
        let req = device
            .enroll(
                &"enr-key".parse().unwrap(),
                &EnrollRequest {
                    id: "amr-0007".into(),
                    labels: [("tier".to_string(), "a".to_string())].into(),
                },
            )
            .request;
        assert_eq!(req.header("authorization"), Some("Bearer enr-key"));
        assert_eq!(req.header("x-autonomy-device"), Some("amr-0007"));
        assert_eq!(
            body_of(&req),
            serde_json::json!({"id": "amr-0007", "labels": {"tier": "a"}})
        );
        // ...without changing the Api it was built from.
        let req = device.device_poll(&poll).request;
        assert_eq!(req.header("authorization"), Some("Bearer dev-tok"));

        // No device set: no device header; an operator Api never sends one.
        let req = api().device_poll(&poll).request;
        assert_eq!(req.header("x-autonomy-device"), None);
        let req = Api::new()
            .with_device(Some("a\nb".into()))
            .device_poll(&poll)
            .request;
        let e = req.validate().unwrap_err();
        assert!(e.to_string().contains("x-autonomy-device"), "{e}");
    }

    #[test]
    fn registry_calls_send_their_bodies() {
        let a = api();
        let req = a
            .register_device(&RegisterDeviceRequest {
                id: "amr-0007".into(),
                labels: [("site".to_string(), "berlin".to_string())].into(),
            })
            .request;
        assert_eq!(
            body_of(&req),
            serde_json::json!({"id": "amr-0007", "labels": {"site": "berlin"}})
        );
        assert_eq!(req.header("authorization"), Some("Bearer s3cret"));
        assert_eq!(req.header("x-autonomy-operator"), Some("ann"));
        let req = a
            .set_device_labels(
                "amr-0007",
                &DeviceLabelsRequest {
                    labels: BTreeMap::new(),
                },
            )
            .request;
        assert_eq!(body_of(&req), serde_json::json!({"labels": {}}));
        let req = a
            .create_enroll_key(&EnrollKeyRequest {
                labels: [("site".to_string(), "berlin".to_string())].into(),
                max_uses: 5,
                ttl_seconds: 600,
            })
            .request;
        assert_eq!(
            body_of(&req),
            serde_json::json!({"labels": {"site": "berlin"}, "max_uses": 5, "ttl_seconds": 600})
        );
        let req = a.revoke_device("amr-0007").request;
        assert!(req.body.is_empty());
        assert_eq!(req.header("content-type"), None);
        let req = a
            .transition(
                "web-1",
                Verb::Start,
                &TransitionRequest {
                    reason: String::new(),
                    stage: Some(2),
                },
            )
            .request;
        assert_eq!(body_of(&req), serde_json::json!({"reason": "", "stage": 2}));
    }

    #[test]
    fn engine_answers_decode_to_their_types() {
        let device = serde_json::json!({
            "id": "amr-0007", "labels": {"site": "berlin"}, "installed_digest": null,
            "last_seen_at": null, "created_at": "2026-12-01T00:00:00Z", "revoked_at": null,
            "assignment": {"plan_id": "web-1", "attempt": 1, "state": "installing"}
        });
        let a = Api::new();
        let registered = a
            .register_device(&RegisterDeviceRequest {
                id: "amr-0007".into(),
                labels: BTreeMap::new(),
            })
            .decode(response(
                201,
                &serde_json::json!({"device": device, "token": "dt-1"}).to_string(),
            ))
            .unwrap();
        assert_eq!(registered.token, "dt-1");
        assert_eq!(
            registered.device.assignment.unwrap().state,
            DeviceState::Installing
        );
        let list = a
            .list_devices(None, None, None)
            .decode(response(
                200,
                &serde_json::json!({"items": [device], "next_cursor": "c2"}).to_string(),
            ))
            .unwrap();
        assert_eq!(list.items[0].labels["site"], "berlin");
        assert_eq!(list.next_cursor.as_deref(), Some("c2"));
        let revoked = a
            .revoke_device("amr-0007")
            .decode(response(200, &device.to_string()))
            .unwrap();
        assert_eq!(revoked.id, "amr-0007");

        let key = a
            .create_enroll_key(&EnrollKeyRequest {
                labels: BTreeMap::new(),
                max_uses: 1,
                ttl_seconds: 60,
            })
            .decode(response(
                201,
                r#"{"id":"ek-1","key":"secret","labels":{},"max_uses":1,
                    "created_at":"t0","expires_at":"t1"}"#,
            ))
            .unwrap();
        assert_eq!((key.id.as_str(), key.key.as_str()), ("ek-1", "secret"));
        let enrolled = a
            .enroll(
                &"k".parse().unwrap(),
                &EnrollRequest {
                    id: "d".into(),
                    labels: BTreeMap::new(),
                },
            )
            .decode(response(201, r#"{"id":"d","token":"dt-2"}"#))
            .unwrap();
        assert_eq!(enrolled.token, "dt-2");

        let poll = a
            .device_poll(&PollRequest::default())
            .decode(response(
                200,
                r#"{"revision":8,"poll_after_seconds":5,"assignment":{"plan_id":"web-1",
                    "attempt":1,"action":"install","artifact_ref":"oci://r/a@sha256:bb",
                    "target_digest":"sha256:bb","previous_digest":"sha256:aa",
                    "reboot_required":true,"deadline_at":null}}"#,
            ))
            .unwrap();
        assert_eq!(poll.assignment.unwrap().action, AssignmentAction::Install);
        let answer = a
            .device_report(&report(1))
            .decode(response(
                200,
                r#"{"result":"duplicate","assignment_state":"installing"}"#,
            ))
            .unwrap();
        assert_eq!(answer.result, ReportResult::Duplicate);

        let assignments = a
            .rollout_devices("web-1", None, None, None, None)
            .decode(response(
                200,
                r#"{"items":[{"device_id":"amr-0007","stage":"canary","state":"verified",
                    "attempt":1,"installed_digest":"sha256:bb","last_seen_at":"t2",
                    "updated_at":"t1","message":""}],"next_cursor":null}"#,
            ))
            .unwrap();
        assert_eq!(assignments.items[0].state, DeviceState::Verified);
        assert_eq!(assignments.next_cursor, None);

        // A report for an old attempt: 409, exit 5, the CP's message kept.
        let e = a
            .device_report(&report(1))
            .check(response(
                409,
                &error_body("conflict", "superseded: attempt 2 is current"),
            ))
            .unwrap_err();
        assert_eq!(e.exit(), Exit::Conflict);
        assert!(
            e.to_string()
                .contains("POST /v1/device/reports: superseded"),
            "{e}"
        );

        // An answer of another shape is a bad answer, not a silent success.
        let e = a
            .get_device("amr-0007")
            .decode(response(200, r#"{"id":"amr-0007"}"#))
            .unwrap_err();
        assert_eq!(e.exit(), Exit::Other);
    }

    fn no_reason() -> TransitionRequest {
        TransitionRequest {
            reason: String::new(),
            stage: None,
        }
    }

    #[test]
    fn a_2xx_answer_decodes_to_its_type() {
        let call = Api::new().health();
        let reply = call
            .check(response(
                200,
                r#"{"status":"ok","version":"0.1.0","store":"sqlite"}"#,
            ))
            .unwrap();
        assert_eq!(reply.status(), 200);
        let health = reply.value().unwrap();
        assert_eq!(health.store, "sqlite");
        let ready = Api::new()
            .ready()
            .decode(response(200, r#"{"status":"ready"}"#))
            .unwrap();
        assert_eq!(ready.status, "ready");
    }

    #[test]
    fn a_2xx_answer_that_is_not_the_expected_json_is_a_bad_answer() {
        let call = Api::new().get_rollout("x");
        let reply = call
            .check(response(200, "<html>proxy login</html>"))
            .unwrap();
        let e = reply.value().unwrap_err();
        assert_eq!(e.exit(), Exit::Other);
        let text = e.to_string();
        assert!(
            text.starts_with(
                "the control plane answered 200 to GET /v1/rollouts/x with an unexpected body ("
            ),
            "{text}"
        );
        assert!(text.contains("\"<html>proxy login</html>\""), "{text}");
        let e = call.decode(response(200, "")).unwrap_err();
        assert!(e.to_string().ends_with(": (empty body)"), "{e}");
    }

    /// Every class of error answer: its message and its exit code.
    #[test]
    fn error_answers_decode_to_their_error_and_exit_code() {
        let call = Api::new().transition("nope", Verb::Start, &no_reason());
        let cases = [
            (400, "invalid_request", Exit::Other),
            (401, "unauthorized", Exit::Denied),
            (403, "forbidden", Exit::Denied),
            (404, "not_found", Exit::NotFound),
            (405, "method_not_allowed", Exit::Other),
            (409, "conflict", Exit::Conflict),
            (413, "payload_too_large", Exit::Other),
            (415, "unsupported_media_type", Exit::Other),
            (422, "unprocessable", Exit::Other),
            (500, "internal", Exit::Server),
            (503, "unavailable", Exit::Server),
        ];
        for (status, code, exit) in cases {
            let e = call
                .check(response(status, &error_body(code, "the reason")))
                .unwrap_err();
            assert_eq!(e.exit(), exit, "{status}");
            assert_eq!(
                e.to_string(),
                format!(
                    "the control plane answered {status} {code} to POST /v1/rollouts/nope/start: the reason"
                )
            );
            let api = e.api().unwrap();
            assert_eq!(api.status, status);
            assert!(api.code.is_some());
            assert_eq!(e.is_unavailable(), status == 503);
        }
    }

    #[test]
    fn retry_after_and_unexpected_error_bodies() {
        let call: Call<Health> = Api::new().get("/v1/rollouts", &[("limit", Some("5"))]);
        let mut busy = response(503, &error_body("unavailable", "storage unavailable"));
        busy.headers.push(("Retry-After".into(), " 3 ".into()));
        let e = call.check(busy).unwrap_err();
        assert!(e.is_unavailable());
        assert_eq!(e.retry_after_secs(), Some(3));
        assert_eq!(e.api().unwrap().code, Some(ErrorCode::Unavailable));
        assert!(
            e.to_string()
                .ends_with("to GET /v1/rollouts?limit=5: storage unavailable (retry after 3s)"),
            "{e}"
        );

        let mut dated = response(503, &error_body("unavailable", "x"));
        dated
            .headers
            .push(("retry-after".into(), "Wed, 21 Oct 2026 07:28:00 GMT".into()));
        let e = call.check(dated).unwrap_err();
        assert_eq!(e.retry_after_secs(), None);
        assert!(e
            .to_string()
            .ends_with("(retry after Wed, 21 Oct 2026 07:28:00 GMT)"));

        // Not the API's error body: the status and the first bytes, exit by status.
        let e = call.check(response(502, "Bad Gateway")).unwrap_err();
        assert_eq!(e.exit(), Exit::Server);
        assert_eq!(
            e.to_string(),
            "the control plane answered 502 error to GET /v1/rollouts?limit=5: unexpected answer: \"Bad Gateway\""
        );
        let long = "x".repeat(500);
        let e = call.check(response(404, &long)).unwrap_err();
        assert_eq!(e.exit(), Exit::NotFound);
        assert!(
            e.to_string().ends_with(&format!("{}…\"", "x".repeat(200))),
            "{e}"
        );
    }

    fn execution(outcome: Outcome) -> serde_json::Value {
        serde_json::json!({
            "outcome": outcome, "execution_id": "ex-1", "target": "rollout_plan",
            "resource": "web-1", "strategy": "abort", "from_phase": "completed",
            "to_phase": "completed", "dry_run": false, "audit_event_id": "ev-1",
            "message": "cannot abort a completed plan",
            "error": {"code": "conflict", "message": "cannot abort a completed plan"}
        })
    }

    #[test]
    fn a_rejected_execution_keeps_the_execution_and_exits_5() {
        let call = Api::new().execute_rollback(
            &ExecuteRequest {
                target: "rollout_plan".into(),
                resource: "web-1".into(),
                strategy: Strategy::Abort,
                reason: "r".into(),
                dry_run: false,
            },
            None,
        );
        let body = execution(Outcome::Rejected).to_string();
        let e = call.check(response(409, &body)).unwrap_err();
        assert_eq!(e.exit(), Exit::Conflict);
        let ClientError::Rejected(r) = &e else {
            panic!("not rejected: {e:?}")
        };
        assert_eq!(r.execution.outcome, Outcome::Rejected);
        assert_eq!(r.execution.to_phase, Phase::Completed);
        assert_eq!(r.error.body, body.as_bytes());
        assert_eq!(
            e.to_string(),
            "the control plane answered 409 conflict to POST /v1/rollback/execute: cannot abort a completed plan"
        );

        // A 409 without the execution, or a 409 to another call, is a plain error answer.
        let e = call
            .check(response(409, &error_body("conflict", "busy")))
            .unwrap_err();
        assert!(matches!(e, ClientError::Api(_)), "{e:?}");
        let other: Call<ExecuteResponse> = Api::new().post("/v1/rollback/execute", None, None);
        let e = other.check(response(409, &body)).unwrap_err();
        assert!(matches!(e, ClientError::Api(_)), "{e:?}");
    }
}

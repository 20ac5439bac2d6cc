//! Both transports against the test kit's scripted CP on 127.0.0.1: what goes out on the
//! wire, how an answer decodes, and how each fails when nothing listens or nothing answers.
//! Integration tests, so the kit (which depends on this crate) links the one copy of it.

use std::time::{Duration, Instant};

use autonomy_api::{CreateTokenRequest, Role, TransitionRequest, Verb};
use autonomy_client::{blocking, nonblocking, Api, ClientError, Exit};
use autonomy_testkit::http::{free_port, silent_listener, Canned, FakeCp, Seen};

/// The caller the tests send as: token `s3cret`, operator `ann`.
fn api() -> Api {
    Api::new()
        .with_token(Some("s3cret".parse().unwrap()))
        .with_operator(Some("ann".into()))
}

/// A scripted CP answering every request with `status`, `headers` and `body`.
fn fake_cp(status: u16, headers: &[(&str, &str)], body: &str) -> FakeCp {
    FakeCp::start(Canned {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.to_string(),
    })
    .unwrap()
}

/// The one request `cp` saw (recorded before it answered, so it is there once the client
/// has its answer).
fn only_request(cp: &FakeCp) -> Seen {
    let mut seen = cp.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    seen.remove(0)
}

/// A URL on 127.0.0.1 where nothing listens.
fn closed_port_url() -> String {
    format!("http://127.0.0.1:{}", free_port().unwrap())
}

/// `e` is what a transport reports when nothing listens at `url`: unreachable, naming the
/// address and the OS error.
fn assert_unreachable(e: &ClientError, url: &str) {
    assert_eq!(e.exit(), Exit::Unreachable);
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("cannot reach the control plane at {url}: ")),
        "{text}"
    );
    assert!(text.contains("connection refused"), "{text}");
}

/// `e` is what a transport with a 0.3 s timeout reports when the CP at `url` never answers.
fn assert_timed_out(e: &ClientError, url: &str) {
    assert!(matches!(e, ClientError::Timeout { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("no answer from the control plane at {url} within 0.3s (--timeout): timed out")
    );
}

// ---------------------------------------------------------------------------------------------
// blocking
// ---------------------------------------------------------------------------------------------

#[test]
fn blocking_a_get_goes_out_and_its_answer_decodes() {
    let cp = fake_cp(
        200,
        &[("content-type", "application/json")],
        r#"{"status":"ok","version":"9","store":"sqlite"}"#,
    );
    let t = blocking::Transport::new(&cp.url, Duration::from_secs(10));
    let health = t.fetch(&api().health()).unwrap();
    assert_eq!(health.version, "9");
    let req = only_request(&cp);
    assert_eq!(
        (req.method.as_str(), req.target.as_str()),
        ("GET", "/v1/health")
    );
    assert_eq!(req.header("authorization"), Some("Bearer s3cret"));
    assert_eq!(req.header("x-autonomy-operator"), Some("ann"));
    assert!(req
        .header("user-agent")
        .unwrap()
        .starts_with("autonomy-client/"));
    assert!(req.body.is_empty());
}

#[test]
fn blocking_a_post_carries_its_body_and_an_error_answer_is_typed() {
    let cp = fake_cp(
        409,
        &[],
        r#"{"error":{"code":"conflict","message":"cannot start a draft"}}"#,
    );
    let t = blocking::Transport::new(&cp.url, Duration::from_secs(10));
    let call = api().transition(
        "web 1",
        Verb::Start,
        &TransitionRequest {
            reason: "go".into(),
            stage: None,
        },
    );
    let e = t.call(&call).unwrap_err();
    assert_eq!(e.exit(), Exit::Conflict);
    assert!(e
        .to_string()
        .ends_with("409 conflict to POST /v1/rollouts/web%201/start: cannot start a draft"));
    let req = only_request(&cp);
    assert_eq!(
        (req.method.as_str(), req.target.as_str()),
        ("POST", "/v1/rollouts/web%201/start")
    );
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.body, r#"{"reason":"go"}"#);
}

#[test]
fn blocking_nothing_listening_is_unreachable_naming_the_address() {
    let url = closed_port_url();
    let t = blocking::Transport::new(&url, Duration::from_secs(10));
    let e = t.send(api().health().request()).unwrap_err();
    assert_unreachable(&e, &url);
}

#[test]
fn blocking_a_cp_that_never_answers_times_out() {
    let (_listener, url) = silent_listener().unwrap();
    let t = blocking::Transport::new(&url, Duration::from_millis(300));
    let started = Instant::now();
    let e = t.send(api().list_tokens().request()).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_timed_out(&e, &url);
}

#[test]
fn blocking_a_header_with_a_newline_is_refused_before_sending() {
    let (_listener, url) = silent_listener().unwrap();
    let t = blocking::Transport::new(&url, Duration::from_secs(10));
    let e = t
        .send(
            Api::new()
                .with_operator(Some("a\nb".into()))
                .health()
                .request(),
        )
        .unwrap_err();
    assert_eq!(e.exit(), Exit::Usage);
}

// ---------------------------------------------------------------------------------------------
// nonblocking
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn nonblocking_a_post_goes_out_and_its_answer_decodes() {
    let cp = fake_cp(
        201,
        &[("content-type", "application/json")],
        r#"{"id":"tok-1","operator":"ci","role":"viewer","token":"t","created_at":"x"}"#,
    );
    let t = nonblocking::Transport::new(&cp.url, Duration::from_secs(10));
    let created = t
        .fetch(&api().create_token(&CreateTokenRequest {
            operator: "ci".into(),
            role: Role::Viewer,
        }))
        .await
        .unwrap();
    assert_eq!(created.id, "tok-1");
    let req = only_request(&cp);
    assert_eq!(
        (req.method.as_str(), req.target.as_str()),
        ("POST", "/v1/tokens")
    );
    assert_eq!(req.header("authorization"), Some("Bearer s3cret"));
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.body, r#"{"operator":"ci","role":"viewer"}"#);
}

#[tokio::test]
async fn nonblocking_an_error_answer_is_typed_with_its_retry_after() {
    let cp = fake_cp(
        503,
        &[("retry-after", "2")],
        r#"{"error":{"code":"unavailable","message":"storage unavailable"}}"#,
    );
    let t = nonblocking::Transport::new(&cp.url, Duration::from_secs(10));
    let e = t.call(&api().list_tokens()).await.unwrap_err();
    assert_eq!(e.exit(), Exit::Server);
    assert!(e.is_unavailable());
    assert_eq!(e.retry_after_secs(), Some(2));
    let req = only_request(&cp);
    assert_eq!(
        (req.method.as_str(), req.target.as_str()),
        ("GET", "/v1/tokens")
    );
}

/// Many callers, each with its own identity, share one transport (and its pool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonblocking_concurrent_callers_share_one_transport() {
    const CALLERS: usize = 64;
    let cp = fake_cp(200, &[], r#"{"status":"ready"}"#);
    let t = nonblocking::Transport::new(&cp.url, Duration::from_secs(10));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CALLERS {
        let t = t.clone();
        let api = Api::new().with_operator(Some(format!("agent-{i:03}")));
        tasks.spawn(async move { t.fetch(&api.ready()).await });
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.unwrap().unwrap().status, "ready");
    }
    let mut operators: Vec<String> = cp
        .seen()
        .iter()
        .map(|req| req.header("x-autonomy-operator").unwrap().to_string())
        .collect();
    assert_eq!(operators.len(), CALLERS);
    operators.sort();
    operators.dedup();
    assert_eq!(operators.len(), CALLERS);
}

#[tokio::test]
async fn nonblocking_nothing_listening_is_unreachable_naming_the_address() {
    let url = closed_port_url();
    let t = nonblocking::Transport::new(&url, Duration::from_secs(10));
    let e = t.send(api().health().request()).await.unwrap_err();
    assert_unreachable(&e, &url);
}

#[tokio::test]
async fn nonblocking_a_cp_that_never_answers_times_out() {
    let (_listener, url) = silent_listener().unwrap();
    let t = nonblocking::Transport::new(&url, Duration::from_millis(300));
    let started = Instant::now();
    let e = t.send(api().health().request()).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_timed_out(&e, &url);
}

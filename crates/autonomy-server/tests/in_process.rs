//! The fast tier: the router over a real SQLite store in a temp dir, driven in-process with
//! tower's `oneshot` (no socket, no child process). The black-box tier in
//! `crates/autonomy/tests/` spawns the real binary; this one checks the API's contract —
//! statuses, error codes, RBAC, audit of denials — in milliseconds.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use autonomy_server::{router, AppState, ArtifactPolicy, ServerConfig};
use autonomy_store::Store;
use autonomy_store_sqlite::{SqliteStore, StoreConfig};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

struct App {
    router: Router,
    state: AppState<SqliteStore>,
    store: Arc<SqliteStore>,
    dir: PathBuf,
    admin: String,
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.store.close();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static N: AtomicU32 = AtomicU32::new(0);

async fn app(rbac: bool, policy: ArtifactPolicy) -> App {
    app_with(ServerConfig::new(rbac, policy)).await
}

async fn app_with(config: ServerConfig) -> App {
    let dir = std::env::temp_dir().join(format!(
        "autonomy-inproc-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.clone();
    // Opening blocks on the writer thread (the first admin token), so not on the runtime.
    let store = tokio::task::spawn_blocking(move || {
        let config = StoreConfig::new(d.clone(), d.join("audit"));
        let lock = SqliteStore::lock(&d).unwrap();
        SqliteStore::open(&config, lock).unwrap().0
    })
    .await
    .unwrap();
    let store = Arc::new(store);
    let admin = std::fs::read_to_string(dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let state = AppState::new(store.clone(), config);
    App {
        router: router(state.clone()),
        state,
        store,
        dir,
        admin,
    }
}

impl App {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let resp = self
            .router
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, v)
    }

    async fn events(&self, query: &str) -> Vec<Value> {
        let (s, v) = self
            .call(
                "GET",
                &format!("/v1/audit/events?{query}"),
                Some(&self.admin),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["items"].as_array().unwrap().clone()
    }
}

fn plan(id: &str) -> Value {
    json!({"metadata": {"id": id}, "spec": {"artifact_ref": format!("oci://r/a@sha256:{}", "a".repeat(64))}})
}

#[tokio::test]
async fn health_names_the_backend_and_ready_answers() {
    let app = app(true, ArtifactPolicy::Warn).await;
    let (s, v) = app.call("GET", "/v1/health", None, None).await;
    assert_eq!((s, v["store"].as_str()), (StatusCode::OK, Some("sqlite")));
    let (s, _) = app.call("GET", "/v1/ready", None, None).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn plan_lifecycle_and_error_codes() {
    let app = app(true, ArtifactPolicy::Warn).await;
    let t = Some(app.admin.as_str());
    let (s, v) = app.call("POST", "/v1/rollouts", t, Some(plan("p1"))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["status"]["phase"], "published");
    let (s, v) = app.call("POST", "/v1/rollouts", t, Some(plan("p1"))).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );
    let (s, v) = app.call("POST", "/v1/rollouts/p1/start", t, None).await;
    assert_eq!(
        (s, v["status"]["phase"].as_str()),
        (StatusCode::OK, Some("active"))
    );
    let (s, v) = app.call("POST", "/v1/rollouts/p1/publish", t, None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );
    let (s, v) = app.call("POST", "/v1/rollouts/p1/bogus", t, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("verbs: publish"),
        "{v}"
    );
    let (s, _) = app.call("GET", "/v1/rollouts/nope", t, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = app.call("GET", "/v1/rollouts/Bad%20Id", t, None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    let (s, v) = app.call("DELETE", "/v1/rollouts", t, None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
    let exec =
        json!({"target": "rollout_plan", "resource": "p1", "strategy": "retry", "reason": "r"});
    let (s, v) = app
        .call("POST", "/v1/rollback/execute", t, Some(exec))
        .await;
    assert_eq!(
        (s, v["outcome"].as_str()),
        (StatusCode::OK, Some("success"))
    );
    let abort =
        json!({"target": "rollout_plan", "resource": "p1", "strategy": "abort", "reason": "r"});
    app.call("POST", "/v1/rollback/execute", t, Some(abort))
        .await;
    let retry =
        json!({"target": "rollout_plan", "resource": "p1", "strategy": "retry", "reason": "r"});
    let (s, v) = app
        .call("POST", "/v1/rollback/execute", t, Some(retry))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(
        (v["outcome"].as_str(), v["error"]["code"].as_str()),
        (Some("rejected"), Some("conflict"))
    );
    // One event per change, each made by the core's rules.
    let created = app.events("event_type=plan.created&resource=p1").await;
    assert_eq!(created.len(), 2, "success and the duplicate's rejection");
    let executed = app.events("event_type=rollback.executed").await;
    assert_eq!(executed.len(), 3);
}

#[tokio::test]
async fn strict_policy_is_422_and_bad_bodies_are_4xx() {
    let app = app(false, ArtifactPolicy::Strict).await;
    let bad_ref = json!({"spec": {"artifact_ref": "corrupt://x"}});
    let (s, v) = app.call("POST", "/v1/rollouts", None, Some(bad_ref)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("unprocessable"))
    );
    let unknown = json!({"spec": {"artifact_ref": "oci://x", "nope": 1}});
    let (s, v) = app.call("POST", "/v1/rollouts", None, Some(unknown)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("spec"),
        "{v}"
    );
    let req = Request::builder()
        .method("POST")
        .uri("/v1/rollouts")
        .header("content-type", "text/plain")
        .body(Body::from("{}"))
        .unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let req = Request::builder()
        .method("POST")
        .uri("/v1/rollouts")
        .header("content-type", "application/json")
        .body(Body::from(vec![b' '; 1024 * 1024 + 1]))
        .unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn rbac_denials_are_401_403_and_audited_individually_or_in_aggregate() {
    let app = app(true, ArtifactPolicy::Warn).await;
    let (s, v) = app.call("GET", "/v1/rollouts/p9", None, None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    let body = json!({"operator": "vera", "role": "viewer"});
    let (s, v) = app
        .call("POST", "/v1/tokens", Some(&app.admin), Some(body))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let viewer = v["token"].as_str().unwrap().to_string();
    let (s, v) = app
        .call("POST", "/v1/rollouts/p9/start", Some(&viewer), None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let (s, _) = app.call("GET", "/v1/rollouts", Some(&viewer), None).await;
    assert_eq!(s, StatusCode::OK);
    let denied = app.events("outcome=denied").await;
    let seen: Vec<(&str, &str, &str)> = denied
        .iter()
        .map(|e| {
            (
                e["event_type"].as_str().unwrap(),
                e["actor"].as_str().unwrap(),
                e["resource"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, vec![("rollout.phase_changed", "vera", "p9")]);
    // The unauthenticated read is counted, then written as one aggregated event.
    app.state.flush_denied().await;
    let agg = app.events("event_type=auth.denied").await;
    assert_eq!(agg.len(), 1);
    assert_eq!(agg[0]["details"]["count"], 1);
    assert_eq!(
        agg[0]["resource"], "unknown",
        "in-process there is no peer address"
    );
    // A bad path id is refused before anything is recorded.
    let (s, _) = app
        .call(
            "GET",
            &format!("/v1/rollouts/{}", "x".repeat(5000)),
            None,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    app.state.flush_denied().await;
    assert_eq!(app.events("event_type=auth.denied").await.len(), 1);
}

#[tokio::test]
async fn idempotency_key_replays_the_first_answer() {
    let app = app(false, ArtifactPolicy::Warn).await;
    let send = || {
        let req = Request::builder()
            .method("POST")
            .uri("/v1/rollouts")
            .header("content-type", "application/json")
            .header("idempotency-key", "k1")
            .body(Body::from(plan("idem").to_string()))
            .unwrap();
        app.router.clone().oneshot(req)
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let a = first.into_body().collect().await.unwrap().to_bytes();
    let again = send().await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    let b = again.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(a, b, "the replay is the first answer, byte for byte");
    assert_eq!(app.events("event_type=plan.created").await.len(), 1);
}

/// Every file under `dir`, recursively.
fn files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn a_replayed_token_creation_never_shows_or_stores_the_secret() {
    let app = app(true, ArtifactPolicy::Warn).await;
    let send = || {
        let req = Request::builder()
            .method("POST")
            .uri("/v1/tokens")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {}", app.admin))
            .header("idempotency-key", "tok-1")
            .body(Body::from(r#"{"operator":"ci","role":"viewer"}"#))
            .unwrap();
        app.router.clone().oneshot(req)
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value =
        serde_json::from_slice(&first.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let secret = first["token"].as_str().unwrap().to_string();
    assert!(secret.starts_with("aut_"));
    let again = send().await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    let again: Value =
        serde_json::from_slice(&again.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(again["id"], first["id"], "the replay names the same token");
    assert!(
        again.get("token").is_none(),
        "a replay never shows the secret: {again}"
    );
    // The secret works, and is in no file of the data dir (database, WAL, audit).
    let (s, _) = app.call("GET", "/v1/rollouts", Some(&secret), None).await;
    assert_eq!(s, StatusCode::OK);
    for f in files(&app.dir) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the secret is stored in {}",
            f.display()
        );
    }
    // The database files are the operator's alone.
    use std::os::unix::fs::PermissionsExt;
    for f in files(&app.dir) {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("autonomy.db") {
            let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name} has mode {mode:o}");
        }
    }
}

#[tokio::test]
async fn idempotency_keys_are_scoped_per_actor() {
    let app = app(false, ArtifactPolicy::Warn).await;
    let send = |who: &'static str, id: &'static str| {
        let req = Request::builder()
            .method("POST")
            .uri("/v1/rollouts")
            .header("content-type", "application/json")
            .header("x-autonomy-operator", who)
            .header("idempotency-key", "shared-key")
            .body(Body::from(plan(id).to_string()))
            .unwrap();
        app.router.clone().oneshot(req)
    };
    assert_eq!(
        send("alice", "pa").await.unwrap().status(),
        StatusCode::CREATED
    );
    // Bob's use of the same key is his own: no 422, no replay of Alice's answer.
    assert_eq!(
        send("bob", "pb").await.unwrap().status(),
        StatusCode::CREATED
    );
    let (s, _) = app.call("GET", "/v1/rollouts/pb", None, None).await;
    assert_eq!(s, StatusCode::OK);
    // Alice reusing her key for another request is refused.
    assert_eq!(
        send("alice", "pc").await.unwrap().status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
}

#[tokio::test]
async fn the_last_active_admin_token_cannot_be_revoked() {
    let app = app(true, ArtifactPolicy::Warn).await;
    let t = Some(app.admin.as_str());
    let (_, v) = app.call("GET", "/v1/tokens", t, None).await;
    let first = v["items"][0]["id"].as_str().unwrap().to_string();
    let (s, v) = app
        .call("POST", &format!("/v1/tokens/{first}/revoke"), t, None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("last active admin"),
        "{v}"
    );
    // With a second admin, the first can go.
    let body = json!({"operator": "root2", "role": "admin"});
    let (s, v) = app.call("POST", "/v1/tokens", t, Some(body)).await;
    assert_eq!(s, StatusCode::CREATED);
    let second = v["token"].as_str().unwrap().to_string();
    let (s, _) = app
        .call(
            "POST",
            &format!("/v1/tokens/{first}/revoke"),
            Some(&second),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app.call("GET", "/v1/tokens", t, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_list_page_is_bounded_in_bytes_and_the_cursor_carries_on() {
    let app = app(false, ArtifactPolicy::Warn).await;
    // Six plans of ~900 KiB each: a page of limit 1000 must stop before 4 MiB.
    let big = "x".repeat(900 * 1024);
    for i in 0..6 {
        let body = json!({"metadata": {"id": format!("big-{i}")}, "spec": {"artifact_ref": "oci://r/a", "targets": {"blob": big}}});
        let (s, v) = app.call("POST", "/v1/rollouts", None, Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/rollouts?limit=1000&cursor={c}"),
            None => "/v1/rollouts?limit=1000".to_string(),
        };
        let req = Request::builder().uri(path).body(Body::empty()).unwrap();
        let resp = app.router.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(
            bytes.len() <= 4 * 1024 * 1024 + 64 * 1024,
            "page of {} bytes",
            bytes.len()
        );
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        for item in v["items"].as_array().unwrap() {
            seen.push(item["plan"]["metadata"]["id"].as_str().unwrap().to_string());
        }
        pages += 1;
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(pages < 10, "the cursor must end");
    }
    assert!(pages >= 2, "six 900 KiB plans cannot fit one 4 MiB page");
    assert_eq!(seen, (0..6).map(|i| format!("big-{i}")).collect::<Vec<_>>());
}

async fn send(app: &App, req: Request<Body>) -> (StatusCode, Value) {
    let resp = app.router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn with_rbac_off_a_foreign_host_is_403_before_any_handler() {
    let app = app(false, ArtifactPolicy::Warn).await;
    let get = |host: Option<&str>| {
        let mut req = Request::builder().uri("/v1/rollouts");
        if let Some(h) = host {
            req = req.header("host", h);
        }
        req.body(Body::empty()).unwrap()
    };
    for host in [
        "evil.example",
        "evil.example:8080",
        "localhost.evil.example",
    ] {
        let (s, v) = send(&app, get(Some(host))).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden")),
            "{host}: {v}"
        );
    }
    for host in [
        Some("localhost:8080"),
        Some("127.0.0.1"),
        Some("[::1]:1"),
        None,
    ] {
        let (s, v) = send(&app, get(host)).await;
        assert_eq!(s, StatusCode::OK, "{host:?}: {v}");
    }
    // A write never reaches its handler.
    let req = Request::builder()
        .method("POST")
        .uri("/v1/rollouts")
        .header("host", "evil.example")
        .header("content-type", "application/json")
        .body(Body::from(plan("rebound").to_string()))
        .unwrap();
    assert_eq!(send(&app, req).await.0, StatusCode::FORBIDDEN);
    let (s, _) = app.call("GET", "/v1/rollouts/rebound", None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // An absolute-form target's authority counts as Host.
    let req = Request::builder()
        .uri("http://evil.example/v1/rollouts")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, req).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn allowed_hosts_are_admitted_and_rbac_on_checks_no_host() {
    let mut config = ServerConfig::new(false, ArtifactPolicy::Warn);
    config.allowed_hosts = vec!["CP.Lab.Example.".to_string()];
    let lab = app_with(config).await;
    for (host, want) in [
        ("cp.lab.example:9000", StatusCode::OK),
        ("CP.LAB.EXAMPLE", StatusCode::OK),
        ("lab.example", StatusCode::FORBIDDEN),
    ] {
        let req = Request::builder()
            .uri("/v1/health")
            .header("host", host)
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(&lab, req).await.0, want, "{host}");
    }

    let rbac = app(true, ArtifactPolicy::Warn).await;
    let req = Request::builder()
        .uri("/v1/rollouts")
        .header("host", "evil.example")
        .header("authorization", format!("Bearer {}", rbac.admin))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&rbac, req).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_content_encoding_other_than_identity_is_415_naming_it() {
    let app = app(false, ArtifactPolicy::Warn).await;
    let post = |encoding: &str, id: &str| {
        Request::builder()
            .method("POST")
            .uri("/v1/rollouts")
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(Body::from(plan(id).to_string()))
            .unwrap()
    };
    for encoding in ["gzip", "br", "identity, gzip"] {
        let (s, v) = send(&app, post(encoding, "z")).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Some("unsupported_media_type")
            ),
            "{encoding}: {v}"
        );
        let named = encoding.rsplit(", ").next().unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().contains(named),
            "{v}"
        );
    }
    // Transitions too (their body is optional).
    let (s, _) = app
        .call("POST", "/v1/rollouts", None, Some(plan("t")))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let req = Request::builder()
        .method("POST")
        .uri("/v1/rollouts/t/start")
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(send(&app, req).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (s, v) = send(&app, post("identity", "plain")).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

/// `run` on a real socket: a silent connection is cut at the header timeout, an idle
/// keep-alive one does not hold up the shutdown, and `run` returns after it.
#[tokio::test]
async fn run_cuts_silent_connections_and_stops_on_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::{timeout, Duration};

    let app = app(false, ArtifactPolicy::Warn).await;
    let mut config = ServerConfig::new(false, ArtifactPolicy::Warn);
    config.limits.header_timeout = Duration::from_millis(300);
    config.limits.idle_timeout = Duration::from_secs(60);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(autonomy_server::run(
        listener,
        AppState::new(app.store.clone(), config),
        async move {
            let _ = stop_rx.await;
        },
    ));

    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("a silent connection was not cut off")
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing is sent to a silent connection");

    let mut keep = tokio::net::TcpStream::connect(addr).await.unwrap();
    keep.write_all(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    while !(String::from_utf8_lossy(&got).contains("\"status\"") && got.ends_with(b"}")) {
        let n = timeout(Duration::from_secs(10), keep.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    // The keep-alive connection is idle (idle timeout 60 s): shutdown closes it at once.
    stop_tx.send(()).unwrap();
    timeout(Duration::from_secs(10), server)
        .await
        .expect("run returned after shutdown")
        .unwrap()
        .unwrap();
    let n = timeout(Duration::from_secs(10), keep.read(&mut buf))
        .await
        .expect("the idle connection was closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

//! The HTTP API against the real binary: the SPEC §3 bad-input list (each a JSON 4xx naming
//! the field, and no state change), the plan lifecycle, the stuck scan, recovery strategies,
//! idempotency and the artifact policy.

mod common;

use autonomy_api::{ErrorBody, ExecuteResponse, Rollout, StuckReport};
use common::{http, Cp};

const JSON: (&str, &str) = ("content-type", "application/json");

fn plan_body(id: &str) -> String {
    format!(r#"{{"metadata":{{"id":"{id}"}},"spec":{{"artifact_ref":"oci://reg/app"}}}}"#)
}

fn exec_body(id: &str, strategy: &str) -> String {
    format!(
        r#"{{"target":"rollout_plan","resource":"{id}","strategy":"{strategy}","reason":"test"}}"#
    )
}

/// Counts of plans and audit events, to prove a bad request changed nothing.
fn state(cp: &Cp) -> (usize, usize) {
    let (_, plans) = cp.get("/v1/rollouts?limit=1000", &[]);
    let (_, events) = cp.get("/v1/audit/events?limit=10000", &[]);
    let n = |body: &str| {
        serde_json::from_str::<serde_json::Value>(body).unwrap()["items"]
            .as_array()
            .unwrap()
            .len()
    };
    (n(&plans), n(&events))
}

fn expect_error(status: u16, body: &str, want_status: u16, code: &str, mentions: &str) {
    assert_eq!(status, want_status, "{body}");
    let e: ErrorBody = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(serde_json::to_value(e.error.code).unwrap(), code, "{body}");
    assert!(
        e.error.message.contains(mentions),
        "message should mention {mentions:?}: {}",
        e.error.message
    );
}

/// method, path, headers, body, expected status, error code, a word the message must contain.
type Case<'a> = (
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    Vec<u8>,
    u16,
    &'a str,
    &'a str,
);

#[test]
fn bad_input_is_a_json_4xx_naming_the_field_and_changes_nothing() {
    let cp = Cp::start(&[], &[]);
    assert_eq!(
        cp.post("/v1/rollouts", &[JSON], &plan_body("exists")).0,
        201
    );
    let before = state(&cp);
    let big = format!(
        r#"{{"metadata":{{"id":"big"}},"spec":{{"artifact_ref":"oci://a","targets":{{"x":"{}"}}}}}}"#,
        "a".repeat(1024 * 1024 + 10)
    );
    let cases: Vec<Case> = vec![
        ("POST", "/v1/rollouts", vec![JSON], b"{not json".to_vec(), 400, "invalid_request", "JSON"),
        ("POST", "/v1/rollouts", vec![JSON], b"".to_vec(), 400, "invalid_request", "empty"),
        ("POST", "/v1/rollouts", vec![JSON], br#"{"spec":{"artifact_ref":"oci://a"},"colour":1}"#.to_vec(), 400, "invalid_request", "colour"),
        ("POST", "/v1/rollouts", vec![JSON], br#"{"metadata":{"id":"a","id":"b"},"spec":{"artifact_ref":"oci://a"}}"#.to_vec(), 400, "invalid_request", "duplicate field `id`"),
        ("POST", "/v1/rollouts", vec![JSON], br#"{"metadata":{"id":7},"spec":{"artifact_ref":"oci://a"}}"#.to_vec(), 400, "invalid_request", "metadata.id"),
        ("POST", "/v1/rollouts", vec![JSON], br#"{"spec":{"artifact_ref":"oci://a"},"draft":"yes"}"#.to_vec(), 400, "invalid_request", "draft"),
        ("POST", "/v1/rollouts", vec![JSON], br#"{"metadata":{"id":"x"}}"#.to_vec(), 400, "invalid_request", "spec"),
        ("POST", "/v1/rollouts", vec![JSON], br#"{"spec":{"artifact_ref":""}}"#.to_vec(), 400, "invalid_request", "spec.artifact_ref"),
        ("POST", "/v1/rollouts", vec![JSON], br#"{"metadata":{"id":"Bad Id"},"spec":{"artifact_ref":"oci://a"}}"#.to_vec(), 400, "invalid_request", "metadata.id"),
        ("POST", "/v1/rollouts", vec![JSON], br#"{"metadata":{"labels":{"bad key":"v"}},"spec":{"artifact_ref":"oci://a"}}"#.to_vec(), 400, "invalid_request", "metadata.labels"),
        ("POST", "/v1/rollouts", vec![JSON], b"{\"spec\":{\"artifact_ref\":\"oci://\xff\xfe\"}}".to_vec(), 400, "invalid_request", "UTF-8"),
        ("POST", "/v1/rollouts", vec![("content-type", "text/plain")], plan_body("t").into_bytes(), 415, "unsupported_media_type", "text/plain"),
        ("POST", "/v1/rollouts", vec![], plan_body("t").into_bytes(), 415, "unsupported_media_type", "Content-Type"),
        ("POST", "/v1/rollouts", vec![JSON], big.into_bytes(), 413, "payload_too_large", "larger than"),
        ("POST", "/v1/rollouts", vec![JSON], plan_body("exists").into_bytes(), 409, "conflict", "exists"),
        ("GET", "/v1/rollouts?limit=0", vec![], vec![], 400, "invalid_request", "limit"),
        ("GET", "/v1/rollouts?limit=abc", vec![], vec![], 400, "invalid_request", "limit"),
        ("GET", "/v1/rollouts?phase=sideways", vec![], vec![], 400, "invalid_request", "phase"),
        ("GET", "/v1/rollouts?cursor=-5", vec![], vec![], 400, "invalid_request", "cursor"),
        ("GET", "/v1/rollouts?colour=red", vec![], vec![], 400, "invalid_request", "colour"),
        ("GET", "/v1/rollouts/stuck?threshold_seconds=-1", vec![], vec![], 400, "invalid_request", "threshold_seconds"),
        ("GET", "/v1/rollouts/stuck?threshold_seconds=soon", vec![], vec![], 400, "invalid_request", "threshold_seconds"),
        ("GET", "/v1/rollouts/stuck?threshold_seconds=NaN", vec![], vec![], 400, "invalid_request", "threshold_seconds"),
        ("GET", "/v1/rollouts/Not_An_Id", vec![], vec![], 400, "invalid_request", "id"),
        ("GET", "/v1/rollouts/missing-1", vec![], vec![], 404, "not_found", "missing-1"),
        ("POST", "/v1/rollouts/exists/explode", vec![], vec![], 404, "not_found", "explode"),
        ("POST", "/v1/rollouts/missing-1/start", vec![], vec![], 404, "not_found", "missing-1"),
        ("POST", "/v1/rollouts/exists/start", vec![JSON], br#"{"why":"x"}"#.to_vec(), 400, "invalid_request", "why"),
        ("POST", "/v1/rollback/execute", vec![JSON], br#"{"target":"rollout_plan","resource":"exists","strategy":"explode","reason":"x"}"#.to_vec(), 400, "invalid_request", "strategy"),
        ("POST", "/v1/rollback/execute", vec![JSON], br#"{"target":"fleet","resource":"exists","strategy":"retry","reason":"x"}"#.to_vec(), 400, "invalid_request", "target"),
        ("POST", "/v1/rollback/execute", vec![JSON], br#"{"target":"rollout_plan","resource":"exists","strategy":"retry","reason":""}"#.to_vec(), 400, "invalid_request", "reason"),
        ("POST", "/v1/rollback/execute", vec![JSON], br#"{"target":"rollout_plan","resource":"exists","strategy":"retry"}"#.to_vec(), 400, "invalid_request", "reason"),
        ("POST", "/v1/rollback/execute", vec![JSON], br#"{"target":"rollout_plan","resource":"exists","strategy":"retry","reason":"x","dry_run":1}"#.to_vec(), 400, "invalid_request", "dry_run"),
        ("POST", "/v1/rollback/execute", vec![JSON], exec_body("missing-1", "retry").into_bytes(), 404, "not_found", "missing-1"),
        ("GET", "/v1/audit/events?start_time=yesterday", vec![], vec![], 400, "invalid_request", "start_time"),
        ("GET", "/v1/audit/events?outcome=meh", vec![], vec![], 400, "invalid_request", "outcome"),
        ("GET", "/v1/audit/events?limit=99999999", vec![], vec![], 400, "invalid_request", "limit"),
        ("POST", "/v1/rollouts", vec![JSON, ("x-autonomy-operator", "")], plan_body("t").into_bytes(), 400, "invalid_request", "X-Autonomy-Operator"),
        ("POST", "/v1/rollouts", vec![JSON, ("idempotency-key", "has space")], plan_body("t").into_bytes(), 400, "invalid_request", "Idempotency-Key"),
        ("DELETE", "/v1/rollouts/exists", vec![], vec![], 405, "method_not_allowed", "DELETE"),
        ("GET", "/v2/anything", vec![], vec![], 404, "not_found", "/v2/anything"),
    ];
    for (method, path, headers, body, status, code, mentions) in cases {
        let url = format!("{}{path}", cp.url);
        let body = if body.is_empty() && method == "GET" {
            None
        } else {
            Some(body.as_slice())
        };
        let (got, text) = http(method, &url, &headers, body);
        eprintln!("{method} {path} -> {got}");
        expect_error(got, &text, status, code, mentions);
    }
    // Only the rejected duplicate create was audited; no plan changed.
    let after = state(&cp);
    assert_eq!(after.0, before.0, "a bad request created a plan");
    assert_eq!(
        after.1,
        before.1 + 1,
        "expected exactly one audit event (the 409 duplicate)"
    );
}

#[test]
fn lifecycle_stuck_and_recovery() {
    let cp = Cp::start(&[], &[]);
    let op = ("x-autonomy-operator", "lifecycle-op");
    let (s, body) = cp.post("/v1/rollouts", &[JSON, op], &plan_body("life-1"));
    assert_eq!(s, 201, "{body}");
    let r: Rollout = serde_json::from_str(&body).unwrap();
    assert_eq!(r.status.phase.as_str(), "published");
    assert_eq!(r.plan.metadata.created_by, "lifecycle-op");
    assert_eq!(r.plan.metadata.generation, 1);
    assert!(r.status.warnings.is_empty(), "{:?}", r.status.warnings);

    // Generated id, draft, labels.
    let (s, body) = cp.post(
        "/v1/rollouts",
        &[JSON],
        r#"{"metadata":{"labels":{"fleet":"w7"}},"spec":{"artifact_ref":"oci://a"},"draft":true}"#,
    );
    assert_eq!(s, 201, "{body}");
    let d: Rollout = serde_json::from_str(&body).unwrap();
    assert_eq!(d.status.phase.as_str(), "draft");
    assert!(d.plan.metadata.id.starts_with("plan-"));
    assert_eq!(d.plan.metadata.labels["fleet"], "w7");
    let did = d.plan.metadata.id.clone();
    assert_eq!(
        cp.post(&format!("/v1/rollouts/{did}/start"), &[], "").0,
        409
    );
    assert_eq!(
        cp.post(&format!("/v1/rollouts/{did}/publish"), &[], "").0,
        200
    );

    // Stuck: threshold 0 reports both published plans with a diagnosis and actions.
    let (s, body) = cp.get("/v1/rollouts/stuck?threshold_seconds=0", &[]);
    assert_eq!(s, 200);
    let stuck: StuckReport = serde_json::from_str(&body).unwrap();
    assert_eq!(stuck.stuck_count, 2, "{body}");
    for item in &stuck.items {
        assert!(item.diagnosis.contains("start gate"), "{}", item.diagnosis);
        assert!(item
            .suggested_actions
            .iter()
            .any(|a| a == &format!("autonomy rollout start {}", item.id)));
    }
    // A long threshold reports nothing fresh.
    let (_, body) = cp.get("/v1/rollouts/stuck?threshold_seconds=3600", &[]);
    assert_eq!(
        serde_json::from_str::<StuckReport>(&body)
            .unwrap()
            .stuck_count,
        0
    );

    // start → pause → resume, each bumping generation and history.
    for (verb, phase) in [
        ("start", "active"),
        ("pause", "paused"),
        ("resume", "active"),
    ] {
        let (s, body) = cp.post(&format!("/v1/rollouts/life-1/{verb}"), &[], "");
        assert_eq!(s, 200, "{verb}: {body}");
        let r: Rollout = serde_json::from_str(&body).unwrap();
        assert_eq!(r.status.phase.as_str(), phase);
    }
    let (_, body) = cp.get("/v1/rollouts/life-1", &[]);
    let r: Rollout = serde_json::from_str(&body).unwrap();
    assert_eq!(r.plan.metadata.generation, 4);
    assert_eq!(r.status.history.len(), 4);

    // Dry run changes nothing and is not audited.
    let dry = r#"{"target":"rollout_plan","resource":"life-1","strategy":"abort","reason":"t","dry_run":true}"#;
    let (s, body) = cp.post("/v1/rollback/execute", &[JSON], dry);
    assert_eq!(s, 200, "{body}");
    let e: ExecuteResponse = serde_json::from_str(&body).unwrap();
    assert!(e.dry_run && e.audit_event_id.is_none());
    assert_eq!(
        (e.from_phase.as_str(), e.to_phase.as_str()),
        ("active", "aborted")
    );
    let (_, body) = cp.get("/v1/rollouts/life-1", &[]);
    assert_eq!(
        serde_json::from_str::<Rollout>(&body)
            .unwrap()
            .status
            .phase
            .as_str(),
        "active"
    );

    // rollback → rolled_back; again → noop; abort → rejected (409 with the outcome).
    let (s, body) = cp.post(
        "/v1/rollback/execute",
        &[JSON, op],
        &exec_body("life-1", "rollback"),
    );
    assert_eq!(s, 200, "{body}");
    let e: ExecuteResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(e.outcome.as_str(), "success");
    assert_eq!(e.to_phase.as_str(), "rolled_back");
    let event_id = e.audit_event_id.expect("audit event id");
    let (s, body) = cp.post(
        "/v1/rollback/execute",
        &[JSON],
        &exec_body("life-1", "rollback"),
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<ExecuteResponse>(&body)
            .unwrap()
            .outcome
            .as_str(),
        "noop"
    );
    let (s, body) = cp.post(
        "/v1/rollback/execute",
        &[JSON],
        &exec_body("life-1", "abort"),
    );
    assert_eq!(s, 409, "{body}");
    let e: ExecuteResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(e.outcome.as_str(), "rejected");
    assert!(e.error.is_some());

    // The audit event of the rollback is there, by id, with the actor.
    let (_, body) = cp.get(
        "/v1/audit/events?resource=life-1&event_type=rollback.executed",
        &[],
    );
    let events: serde_json::Value = serde_json::from_str(&body).unwrap();
    let items = events["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{body}");
    assert_eq!(items[0]["id"], event_id.as_str());
    assert_eq!(items[0]["actor"], "lifecycle-op");
    let outcomes: Vec<_> = items
        .iter()
        .map(|i| i["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["success", "noop", "rejected"]);

    // Terminal plans are never stuck.
    let (_, body) = cp.get("/v1/rollouts/stuck?threshold_seconds=0", &[]);
    let stuck: StuckReport = serde_json::from_str(&body).unwrap();
    assert!(stuck.items.iter().all(|i| i.id != "life-1"), "{body}");
}

#[test]
fn pagination_walks_every_plan_once() {
    let cp = Cp::start(&[], &[]);
    for n in 0..25 {
        let id = format!("page-{n:02}");
        let draft = n % 5 == 0;
        let body = format!(
            r#"{{"metadata":{{"id":"{id}"}},"spec":{{"artifact_ref":"oci://a"}},"draft":{draft}}}"#
        );
        assert_eq!(cp.post("/v1/rollouts", &[JSON], &body).0, 201);
    }
    let mut seen = Vec::new();
    let mut path = "/v1/rollouts?limit=7".to_string();
    for _ in 0..10 {
        let (_, body) = cp.get(&path, &[]);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for item in v["items"].as_array().unwrap() {
            seen.push(item["plan"]["metadata"]["id"].as_str().unwrap().to_string());
        }
        match v["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/rollouts?limit=7&cursor={c}"),
            None => break,
        }
    }
    let want: Vec<_> = (0..25).map(|n| format!("page-{n:02}")).collect();
    assert_eq!(seen, want);
    let (_, body) = cp.get("/v1/rollouts?phase=draft", &[]);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 5);
    assert!(v["next_cursor"].is_null());
}

#[test]
fn idempotency_key_replays_the_first_answer() {
    let cp = Cp::start(&[], &[]);
    assert_eq!(
        cp.post("/v1/rollouts", &[JSON], &plan_body("idem-1")).0,
        201
    );
    let key = ("idempotency-key", "retry-123");
    let (s1, b1) = cp.post(
        "/v1/rollback/execute",
        &[JSON, key],
        &exec_body("idem-1", "retry"),
    );
    let (s2, b2) = cp.post(
        "/v1/rollback/execute",
        &[JSON, key],
        &exec_body("idem-1", "retry"),
    );
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(b1, b2, "a retried request must get the first answer");
    let (_, body) = cp.get("/v1/rollouts/idem-1", &[]);
    assert_eq!(
        serde_json::from_str::<Rollout>(&body)
            .unwrap()
            .plan
            .metadata
            .generation,
        2
    );
    let (_, body) = cp.get("/v1/audit/events?event_type=rollback.executed", &[]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Same key, different request: 422, nothing happens.
    let (s, body) = cp.post(
        "/v1/rollback/execute",
        &[JSON, key],
        &exec_body("idem-1", "abort"),
    );
    expect_error(s, &body, 422, "unprocessable", "retry-123");
    // Creates too: a generated id is not generated twice.
    let gen = r#"{"spec":{"artifact_ref":"oci://a"}}"#;
    let k2 = ("idempotency-key", "create-1");
    let (a, ba) = cp.post("/v1/rollouts", &[JSON, k2], gen);
    let (b, bb) = cp.post("/v1/rollouts", &[JSON, k2], gen);
    assert_eq!((a, b), (201, 201));
    assert_eq!(ba, bb);
}

#[test]
fn artifact_warnings_and_the_strict_policy() {
    let corrupt = r#"{"metadata":{"id":"val11-corrupt-1"},"spec":{"artifact_ref":"corrupt://chaos/artifact@sha256:deadbeefcorrupt","target_lock_fingerprint":"blake3:0000000000000000corruption"}}"#;
    let cp = Cp::start(&[], &[]);
    let (s, body) = cp.post("/v1/rollouts", &[JSON], corrupt);
    assert_eq!(s, 201, "{body}");
    let r: Rollout = serde_json::from_str(&body).unwrap();
    assert_eq!(
        r.plan.spec.artifact_ref,
        "corrupt://chaos/artifact@sha256:deadbeefcorrupt"
    );
    assert_eq!(r.status.warnings.len(), 3, "{:?}", r.status.warnings);
    assert!(r.status.warnings[0].contains("scheme 'corrupt' is not a known scheme"));
    drop(cp);

    let strict = Cp::start(&["--artifact-policy", "strict"], &[]);
    let (s, body) = strict.post("/v1/rollouts", &[JSON], corrupt);
    expect_error(s, &body, 422, "unprocessable", "scheme 'corrupt'");
    assert_eq!(strict.get("/v1/rollouts/val11-corrupt-1", &[]).0, 404);
}

#[test]
fn health_ready_and_metrics() {
    let cp = Cp::start(&[], &[]);
    let (s, body) = cp.get("/v1/health", &[]);
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["status"],
        "ok"
    );
    assert_eq!(cp.get("/v1/ready", &[]).0, 200);
    assert_eq!(cp.post("/v1/rollouts", &[JSON], &plan_body("m-1")).0, 201);
    let (s, text) = cp.get("/metrics", &[]);
    assert_eq!(s, 200);
    assert!(
        text.contains("autonomy_plans{phase=\"published\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("autonomy_http_responses_total{class=\"2xx\"}"),
        "{text}"
    );
}

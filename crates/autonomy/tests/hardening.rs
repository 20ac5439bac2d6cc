//! Black-box tests of the probe's findings (issue 14) that live in the server and the store:
//! a flood of unauthenticated requests cannot write the audit store at will, the ground
//! vanishing under a running CP is a storage fault, and bad input the probe found is a 4xx.

mod common;

use common::*;
use serde_json::Value;

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    total
}

fn events(cp: &Cp, token: &str, query: &str) -> Vec<Value> {
    let (s, body) = cp.get(
        &format!("/v1/audit/events?{query}&limit=10000"),
        &[("Authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(s, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["items"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn unauthenticated_floods_are_counted_and_audited_in_aggregate() {
    let mut cp = Cp::start(&[], &[("AUTONOMY_RBAC_ENFORCEMENT", "1")]);
    let admin = cp.admin_token();
    let before = dir_bytes(cp.data_dir());
    let huge = "a".repeat(60_000);
    for i in 0..100 {
        // A huge path id is a 400 before anything is recorded; a valid one without a token is
        // a 401 that is only counted.
        let (s, _) = cp.post(&format!("/v1/rollouts/{huge}/start"), &[], "");
        assert_eq!(s, 400);
        let (s, _) = cp.post(
            &format!("/v1/rollouts/plan-{i}/start"),
            &[("Authorization", "Bearer aut_forged")],
            "",
        );
        assert_eq!(s, 401);
    }
    let grown = dir_bytes(cp.data_dir()).saturating_sub(before);
    assert!(
        grown < 2 * 1024 * 1024,
        "200 refused requests grew the data dir by {grown} bytes"
    );
    let (_, metrics) = cp.get("/metrics", &[]);
    assert!(
        metrics.contains("autonomy_auth_denied_total 100"),
        "the refusals are counted:\n{metrics}"
    );
    assert!(
        events(&cp, &admin, "outcome=denied").is_empty(),
        "nothing is audited per request"
    );
    // A clean stop writes the window: one event for the source, with the count.
    cp.restart();
    let denied = events(&cp, &admin, "event_type=auth.denied");
    assert_eq!(denied.len(), 1, "{denied:#?}");
    assert_eq!(denied[0]["resource"], "127.0.0.1");
    assert_eq!(denied[0]["details"]["count"], 100);
    assert!(denied[0]["details"]["samples"].as_array().unwrap().len() <= 5);
}

#[test]
fn an_operator_without_the_role_is_audited_one_by_one_with_a_bounded_resource() {
    let cp = Cp::start(&[], &[("AUTONOMY_RBAC_ENFORCEMENT", "1")]);
    let admin = cp.admin_token();
    let out = cp.cli(&[
        "--token",
        &admin,
        "token",
        "create",
        "--operator",
        "vera",
        "--role",
        "viewer",
        "-o",
        "json",
    ]);
    out.assert_code(0);
    let viewer = out.json()["token"].as_str().unwrap().to_string();
    let auth = format!("Bearer {viewer}");
    let id = "p".repeat(63);
    let (s, _) = cp.post(
        &format!("/v1/rollouts/{id}/start"),
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!(s, 403);
    let denied = events(&cp, &admin, "outcome=denied");
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["actor"], "vera");
    assert_eq!(denied[0]["resource"], id.as_str());
}

/// SQLite-only: the data dir is where SQLite keeps the store (over PostgreSQL it holds only
/// the replica's token file, key and mirror).
#[test]
fn sqlite_only_a_deleted_data_dir_is_a_storage_fault_not_a_silent_success() {
    let mut cp = Cp::start(&[], &[]);
    let create = |cp: &Cp, id: &str| {
        cp.post(
            "/v1/rollouts",
            &[("Content-Type", "application/json")],
            &format!(r#"{{"metadata":{{"id":"{id}"}},"spec":{{"artifact_ref":"oci://r/a"}}}}"#),
        )
    };
    assert_eq!(create(&cp, "before").0, 201);
    std::fs::remove_dir_all(cp.data_dir()).unwrap();
    let (s, body) = create(&cp, "after");
    assert_eq!(
        s, 503,
        "a write into a deleted data dir must not be acknowledged: {body}"
    );
    assert!(body.contains("deleted") || body.contains("gone"), "{body}");
    let (s, _) = cp.get("/v1/ready", &[]);
    assert_eq!(s, 503);
    // And the stop says so: no "stopped cleanly", no exit 0.
    let status = cp.sigterm();
    assert!(!status.success(), "exit {status} after losing the data dir");
    assert!(cp.stderr().contains("not cleanly"), "{}", cp.stderr());
}

/// SQLite-only: SQLite's retained store is on the write path (a PostgreSQL replica's mirror
/// follows the database; a mirror that cannot follow makes `/v1/ready` 503).
#[test]
fn sqlite_only_a_deleted_audit_dir_is_a_storage_fault() {
    let mut cp = Cp::start(&[], &[]);
    let body = r#"{"spec":{"artifact_ref":"oci://r/a"}}"#;
    let json = [("Content-Type", "application/json")];
    assert_eq!(cp.post("/v1/rollouts", &json, body).0, 201);
    std::fs::remove_dir_all(cp.audit_dir()).unwrap();
    let (s, body) = cp.post("/v1/rollouts", &json, body);
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("audit"), "{body}");
    assert_eq!(cp.get("/v1/ready", &[]).0, 503);
    let (_, metrics) = cp.get("/metrics", &[]);
    assert!(!metrics.is_empty());
    cp.sigkill();
}

#[test]
fn bad_input_the_probe_found_is_a_4xx_naming_the_field() {
    let cp = Cp::start(&[], &[]);
    let json = [("Content-Type", "application/json")];
    let post = |body: &str| cp.post("/v1/rollouts", &json, body);
    // A route word cannot be an id: `stuck` could be created but never read back.
    let (s, body) = post(r#"{"metadata":{"id":"stuck"},"spec":{"artifact_ref":"oci://r/a"}}"#);
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("reserved"), "{body}");
    // Duplicate keys at any depth, labels included.
    let (s, body) = post(
        r#"{"metadata":{"labels":{"site":"a","site":"b"}},"spec":{"artifact_ref":"oci://r/a"}}"#,
    );
    assert_eq!(s, 400, "{body}");
    assert!(
        body.contains("duplicate field `site`") && body.contains("metadata.labels"),
        "{body}"
    );
    let (s, body) = post(r#"{"spec":{"artifact_ref":"oci://r/a","targets":{"x":1,"x":2}}}"#);
    assert_eq!(s, 400, "{body}");
    // Zero-width and bidi characters in refs and labels.
    for bad in ["\\u200b", "\\u202e", "\\ufeff"] {
        let (s, body) = post(&format!(
            r#"{{"spec":{{"artifact_ref":"oci://r/a@sha256:{bad}aa"}}}}"#
        ));
        assert_eq!(s, 400, "{bad}: {body}");
        assert!(body.contains("spec.artifact_ref"), "{body}");
        let (s, _) = post(&format!(
            r#"{{"metadata":{{"labels":{{"k":"v{bad}"}}}},"spec":{{"artifact_ref":"oci://r/a"}}}}"#
        ));
        assert_eq!(s, 400, "{bad}");
    }
    // Reasons are limited in characters, as the message says.
    assert_eq!(
        post(r#"{"metadata":{"id":"r1"},"spec":{"artifact_ref":"oci://r/a"}}"#).0,
        201
    );
    let exec = |reason: &str| {
        cp.post(
            "/v1/rollback/execute",
            &json,
            &serde_json::json!({"target":"rollout_plan","resource":"r1","strategy":"abort","reason":reason,"dry_run":true})
                .to_string(),
        )
    };
    assert_eq!(exec(&"é".repeat(1024)).0, 200);
    let (s, body) = exec(&"é".repeat(1025));
    assert_eq!(s, 400);
    assert!(body.contains("1024 characters"), "{body}");
}

#[test]
fn a_long_bearer_token_is_named_as_such_not_as_missing() {
    let cp = Cp::start(&[], &[("AUTONOMY_RBAC_ENFORCEMENT", "1")]);
    let long = format!("Bearer {}", "x".repeat(300));
    let (s, body) = cp.get("/v1/rollouts", &[("Authorization", &long)]);
    assert_eq!(s, 401);
    assert!(!body.contains("authentication required"), "{body}");
    assert!(body.contains("longer"), "{body}");
}

#[test]
fn a_refused_start_leaves_no_file_behind() {
    let root = TestDir::new("refused");
    // A taken port: a fresh data dir is not even created, an existing empty one stays empty.
    let (taken, url) = silent_listener();
    let addr = url.trim_start_matches("http://").to_string();
    let fresh = root.path().join("fresh");
    let out = run(
        &[
            "serve",
            "--listen",
            &addr,
            "--data-dir",
            fresh.to_str().unwrap(),
        ],
        &[],
        None,
    );
    assert_ne!(out.code(), 0);
    assert!(
        out.stderr_str().contains("cannot listen"),
        "{}",
        out.stderr_str()
    );
    assert!(
        !fresh.exists(),
        "the refused start created {}",
        fresh.display()
    );
    let empty = root.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = run(
        &[
            "serve",
            "--listen",
            &addr,
            "--data-dir",
            empty.to_str().unwrap(),
        ],
        &[],
        None,
    );
    assert_ne!(out.code(), 0);
    let left: Vec<_> = std::fs::read_dir(&empty)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "the refused start left {left:?}");
    drop(taken);
    // An audit dir held by another CP: no database is made on the way to the refusal.
    let a = Cp::start(&[], &[]);
    let audit = a.audit_dir();
    let other = root.path().join("other");
    let out = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            other.to_str().unwrap(),
            "--audit-dir",
            audit.to_str().unwrap(),
        ],
        &[],
        None,
    );
    assert_ne!(out.code(), 0, "{}", out.stderr_str());
    assert!(out.stderr_str().contains("audit"), "{}", out.stderr_str());
    assert!(
        !other.exists(),
        "the refused start left {}",
        other.display()
    );
}

#[test]
fn a_source_over_its_refusal_budget_is_tarpitted_and_an_operator_is_not() {
    let cp = Cp::start(
        &["--refusal-budget", "5", "--refusal-tarpit-ms", "200"],
        &[("AUTONOMY_RBAC_ENFORCEMENT", "1")],
    );
    let admin = cp.admin_token();
    let tarpitted = |cp: &Cp| -> u64 {
        let (_, m) = cp.get("/metrics", &[]);
        m.lines()
            .find_map(|l| l.strip_prefix("autonomy_auth_tarpitted_total "))
            .and_then(|v| v.trim().parse().ok())
            .expect("autonomy_auth_tarpitted_total")
    };
    assert_eq!(tarpitted(&cp), 0);
    // Eight connections refused as fast as they can go: past five a second, each waits.
    std::thread::scope(|s| {
        for t in 0..8 {
            let cp = &cp;
            s.spawn(move || {
                for i in 0..10 {
                    let (status, _) = if i % 2 == 0 {
                        cp.post(&format!("/v1/rollouts/{}/start", "A".repeat(200)), &[], "")
                    } else {
                        cp.post(
                            &format!("/v1/rollouts/p-{t}-{i}/start"),
                            &[("Authorization", "Bearer aut_forged")],
                            "",
                        )
                    };
                    assert!(status == 400 || status == 401, "{status}");
                }
            });
        }
    });
    let after_flood = tarpitted(&cp);
    assert!(
        after_flood > 0,
        "80 refusals from one source in a burst must hit a budget of 5/s"
    );
    // An authenticated operator is never counted against the budget.
    let auth = format!("Bearer {admin}");
    for _ in 0..20 {
        assert_eq!(cp.get("/v1/rollouts", &[("Authorization", &auth)]).0, 200);
    }
    assert_eq!(tarpitted(&cp), after_flood);
}

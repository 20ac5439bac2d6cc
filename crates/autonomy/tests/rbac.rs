//! RBAC (SPEC §4) against the real binary: the first admin token, roles, revocation, the
//! audit actor taken from the token (never from a header), and denied requests audited.

mod common;

use std::os::unix::fs::PermissionsExt;

use autonomy_api::TokenCreated;
use common::Cp;

const JSON: (&str, &str) = ("content-type", "application/json");

fn rbac_cp() -> Cp {
    Cp::start(&[], &[("AUTONOMY_RBAC_ENFORCEMENT", "1")])
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn make_token(cp: &Cp, admin: &str, operator: &str, role: &str) -> TokenCreated {
    let auth = bearer(admin);
    let (s, body) = cp.post(
        "/v1/tokens",
        &[JSON, ("authorization", &auth)],
        &format!(r#"{{"operator":"{operator}","role":"{role}"}}"#),
    );
    assert_eq!(s, 201, "{body}");
    serde_json::from_str(&body).unwrap()
}

const PLAN: &str = r#"{"metadata":{"id":"rbac-1"},"spec":{"artifact_ref":"oci://a"}}"#;

#[test]
fn admin_token_file_is_private_and_works() {
    let cp = rbac_cp();
    let path = cp.data_dir().join("admin.token");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin.token mode {mode:o}");
    let auth = bearer(&cp.admin_token());
    assert_eq!(cp.get("/v1/tokens", &[("authorization", &auth)]).0, 200);
    // Health stays open for probes.
    assert_eq!(cp.get("/v1/health", &[]).0, 200);
}

#[test]
fn roles_are_enforced_and_denials_audited() {
    let mut cp = rbac_cp();
    let admin = cp.admin_token();
    let viewer = make_token(&cp, &admin, "vera", "viewer");
    let operator = make_token(&cp, &admin, "otto", "operator");
    let (va, oa) = (bearer(&viewer.token), bearer(&operator.token));

    // No token, or a wrong one: 401.
    let (s, body) = cp.get("/v1/rollouts", &[]);
    assert_eq!(s, 401, "{body}");
    assert!(body.contains("unauthorized"));
    assert_eq!(
        cp.get("/v1/rollouts", &[("authorization", "Bearer aut_nope")])
            .0,
        401
    );
    // A viewer reads but cannot write.
    assert_eq!(cp.get("/v1/rollouts", &[("authorization", &va)]).0, 200);
    let (s, body) = cp.post("/v1/rollouts", &[JSON, ("authorization", &va)], PLAN);
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("forbidden"));
    // An operator writes but cannot manage tokens.
    assert_eq!(
        cp.post("/v1/rollouts", &[JSON, ("authorization", &oa)], PLAN)
            .0,
        201
    );
    assert_eq!(cp.get("/v1/tokens", &[("authorization", &oa)]).0, 403);

    // The actor is the token's operator, whatever the header claims.
    let exec = r#"{"target":"rollout_plan","resource":"rbac-1","strategy":"retry","reason":"r"}"#;
    let (s, body) = cp.post(
        "/v1/rollback/execute",
        &[
            JSON,
            ("authorization", &oa),
            ("x-autonomy-operator", "mallory"),
        ],
        exec,
    );
    assert_eq!(s, 200, "{body}");
    let (_, body) = cp.get("/v1/audit/events?limit=1000", &[("authorization", &va)]);
    let events: serde_json::Value = serde_json::from_str(&body).unwrap();
    let items = events["items"].as_array().unwrap();
    let find = |event_type: &str, outcome: &str| {
        items
            .iter()
            .filter(|e| e["event_type"] == event_type && e["outcome"] == outcome)
            .collect::<Vec<_>>()
    };
    let executed = find("rollback.executed", "success");
    assert_eq!(executed.len(), 1);
    assert_eq!(executed[0]["actor"], "otto");
    assert!(items.iter().all(|e| e["actor"] != "mallory"));
    // Denials are audited with who was denied.
    let denied = find("plan.created", "denied");
    assert_eq!(denied.len(), 1, "{body}");
    assert_eq!(denied[0]["actor"], "vera");
    // Requests without a valid token are counted, not written one by one (SPEC §4): they are
    // audited as one `auth.denied` event per source and window, written at the latest on a
    // clean stop.
    assert!(
        find("plan.listed", "denied").is_empty(),
        "unauthenticated requests are not audited one by one"
    );
    assert!(find("token.listed", "denied")
        .iter()
        .any(|e| e["actor"] == "otto"));
    cp.restart();
    let (_, body) = cp.get(
        "/v1/audit/events?event_type=auth.denied",
        &[("authorization", &va)],
    );
    let events: serde_json::Value = serde_json::from_str(&body).unwrap();
    let denied = events["items"].as_array().unwrap();
    assert_eq!(denied.len(), 1, "{body}");
    assert_eq!(denied[0]["details"]["count"], 2, "{body}");
}

#[test]
fn revoke_takes_effect_on_the_next_request_and_secrets_are_never_listed() {
    let cp = rbac_cp();
    let admin = cp.admin_token();
    let aa = bearer(&admin);
    let t = make_token(&cp, &admin, "temp", "operator");
    let ta = bearer(&t.token);
    assert_eq!(cp.get("/v1/rollouts", &[("authorization", &ta)]).0, 200);
    let (s, body) = cp.get("/v1/tokens", &[("authorization", &aa)]);
    assert_eq!(s, 200);
    assert!(
        !body.contains(&t.token) && !body.contains(&admin),
        "a secret was listed: {body}"
    );
    let (s, body) = cp.post(
        &format!("/v1/tokens/{}/revoke", t.id),
        &[("authorization", &aa)],
        "",
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(cp.get("/v1/rollouts", &[("authorization", &ta)]).0, 401);
    assert_eq!(
        cp.post(
            "/v1/tokens/tok_missing/revoke",
            &[("authorization", &aa)],
            ""
        )
        .0,
        404
    );
    // Secrets are stored hashed: the database never contains one (SQLite: its files; PostgreSQL:
    // a dump of the whole database).
    let stored: Vec<Vec<u8>> = match cp.database_url() {
        None => vec![
            std::fs::read(cp.data_dir().join("autonomy.db")).unwrap(),
            std::fs::read(cp.data_dir().join("autonomy.db-wal")).unwrap_or_default(),
        ],
        Some(url) => {
            let mut dump = std::process::Command::new("pg_dump");
            dump.arg(url);
            let out = common::run_bounded(dump, None, std::time::Duration::from_secs(60));
            assert!(
                out.status.success(),
                "pg_dump: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains("COPY public.tokens"));
            vec![out.stdout]
        }
    };
    for bytes in &stored {
        assert!(!bytes
            .windows(t.token.len())
            .any(|w| w == t.token.as_bytes()));
    }
}

#[test]
fn enforcement_off_takes_the_actor_from_the_header() {
    let cp = Cp::start(&[], &[]);
    assert_eq!(
        cp.post(
            "/v1/rollouts",
            &[JSON, ("x-autonomy-operator", "val11-chaos-op")],
            PLAN
        )
        .0,
        201
    );
    let (_, body) = cp.get("/v1/rollouts/rbac-1", &[]);
    assert!(body.contains(r#""created_by":"val11-chaos-op""#), "{body}");
    let exec = r#"{"target":"rollout_plan","resource":"rbac-1","strategy":"retry","reason":"r"}"#;
    assert_eq!(cp.post("/v1/rollback/execute", &[JSON], exec).0, 200);
    let (_, body) = cp.get("/v1/audit/events?event_type=rollback.executed", &[]);
    assert!(body.contains(r#""actor":"anonymous""#), "{body}");
}

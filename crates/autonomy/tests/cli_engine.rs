//! The engine's CLI against a scripted fake CP: `device …`, `rollout devices`, `rollout start
//! --stage`, the engine flags of `rollout create`, the engine state and stage table of
//! `rollout get`, and the codes, reasons and stages of `rollout stuck` — the request each
//! sends, the text and JSON each prints, and the bad input each refuses before sending.

mod common;

use autonomy_testkit::http::Seen;
use common::{run, silent_listener, Canned, FakeCp, OutputExt, TestDir};
use serde_json::{json, Value};

const TS: &str = "2026-12-01T00:00:00Z";

fn device_json(id: &str) -> Value {
    json!({
        "id": id, "labels": {"site": "berlin", "tier": "a"}, "installed_digest": null,
        "last_seen_at": null, "created_at": TS, "revoked_at": null, "assignment": null
    })
}

fn body_of(seen: &Seen) -> Value {
    serde_json::from_str(&seen.body).unwrap_or_else(|e| panic!("{e}: {}", seen.body))
}

/// Runs `args` against `cp` (token and operator set) and returns the output.
fn cli(cp: &common::KitFakeCp, args: &[&str]) -> std::process::Output {
    run(
        args,
        &[
            ("AUTONOMY_SERVER", &cp.url),
            ("AUTONOMY_TOKEN", "op-secret"),
            ("AUTONOMY_OPERATOR", "alice"),
        ],
        None,
    )
}

// ---------------------------------------------------------------------------------------------
// device …
// ---------------------------------------------------------------------------------------------

#[test]
fn device_register_sends_the_id_and_labels_and_shows_the_token_once() {
    let answer = json!({"device": device_json("amr-0007"), "token": "dt-s3cret"});
    let cp = FakeCp::start(Canned::json(201, &answer.to_string()));
    let out = cli(
        &cp,
        &[
            "device",
            "register",
            "amr-0007",
            "--label",
            "site=berlin",
            "--label",
            "tier=a",
        ],
    );
    out.assert_code(0);
    assert_eq!(
        out.stdout_str(),
        format!("id=amr-0007 labels=\"site=berlin,tier=a\" created_at={TS} token=dt-s3cret\n")
    );
    assert!(
        out.stderr_str().contains("shown only this once"),
        "{}",
        out.stderr_str()
    );
    let seen = cp.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].target.as_str()),
        ("POST", "/v1/devices")
    );
    assert_eq!(seen[0].header("authorization"), Some("Bearer op-secret"));
    assert_eq!(seen[0].header("x-autonomy-operator"), Some("alice"));
    assert_eq!(seen[0].header("x-autonomy-device"), None);
    assert_eq!(
        body_of(&seen[0]),
        json!({"id": "amr-0007", "labels": {"site": "berlin", "tier": "a"}})
    );

    // -o json: the answer unchanged, and no note (stdout is for the program reading it).
    let out = cli(&cp, &["device", "register", "amr-0007", "-o", "json"]);
    out.assert_code(0);
    assert_eq!(out.json(), answer);
    assert_eq!(out.stderr_str(), "");
    assert_eq!(
        body_of(&cp.seen()[1]),
        json!({"id": "amr-0007", "labels": {}})
    );
}

#[test]
fn device_get_list_label_and_revoke_print_the_device() {
    let mut busy = device_json("amr-0007");
    busy["installed_digest"] = json!("sha256:aa");
    busy["last_seen_at"] = json!("2026-12-01T00:01:00Z");
    busy["assignment"] = json!({"plan_id": "fw-7", "attempt": 2, "state": "installing"});
    let line = format!(
        "id=amr-0007 labels=\"site=berlin,tier=a\" created_at={TS} installed_digest=sha256:aa \
         last_seen_at=2026-12-01T00:01:00Z plan=fw-7 attempt=2 state=installing\n"
    );

    let cp = FakeCp::start(Canned::json(200, &busy.to_string()));
    let out = cli(&cp, &["device", "get", "amr-0007"]);
    out.assert_code(0);
    assert_eq!(out.stdout_str(), line);

    let out = cli(
        &cp,
        &[
            "device",
            "label",
            "amr-0007",
            "--label",
            "site=hamburg",
            "--label",
            "empty=",
        ],
    );
    out.assert_code(0);
    assert_eq!(out.stdout_str(), line);
    let out = cli(&cp, &["device", "label", "amr-0007", "--clear"]);
    out.assert_code(0);

    let mut revoked = device_json("amr/0007");
    revoked["revoked_at"] = json!("2026-12-01T00:02:00Z");
    let cp2 = FakeCp::start(Canned::json(200, &revoked.to_string()));
    let out = cli(&cp2, &["device", "revoke", "amr/0007"]);
    out.assert_code(0);
    assert_eq!(
        out.stdout_str(),
        format!(
            "id=amr/0007 labels=\"site=berlin,tier=a\" created_at={TS} \
             revoked_at=2026-12-01T00:02:00Z\n"
        )
    );

    let seen = cp.seen();
    let requests: Vec<(&str, &str)> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.target.as_str()))
        .collect();
    assert_eq!(
        requests,
        [
            ("GET", "/v1/devices/amr-0007"),
            ("POST", "/v1/devices/amr-0007/labels"),
            ("POST", "/v1/devices/amr-0007/labels"),
        ]
    );
    assert_eq!(
        body_of(&seen[1]),
        json!({"labels": {"site": "hamburg", "empty": ""}})
    );
    assert_eq!(body_of(&seen[2]), json!({"labels": {}}));
    let seen = cp2.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].target.as_str()),
        ("POST", "/v1/devices/amr%2F0007/revoke")
    );
    assert_eq!(seen[0].body, "");

    // The list: a table, hidden characters escaped, the next cursor last.
    let mut hostile = device_json("amr-0009");
    hostile["labels"] = json!({"note": "\u{1b}[2Jx"});
    let list = json!({"items": [busy, hostile], "next_cursor": "c-2"});
    let cp3 = FakeCp::start(Canned::json(200, &list.to_string()));
    let out = cli(
        &cp3,
        &[
            "device",
            "list",
            "--selector",
            "site=berlin, tier=a",
            "--limit",
            "2",
            "--cursor",
            "c-1",
        ],
    );
    out.assert_code(0);
    assert_eq!(
        out.stdout_str(),
        "ID        LABELS              DIGEST     LAST_SEEN             PLAN  STATE       REVOKED\n\
         amr-0007  site=berlin,tier=a  sha256:aa  2026-12-01T00:01:00Z  fw-7  installing  -\n\
         amr-0009  note=\\u{1b}[2Jx     -          -                     -     -           -\n\
         next_cursor=c-2\n"
    );
    assert_eq!(
        cp3.seen()[0].target,
        "/v1/devices?selector=site%3Dberlin%2Ctier%3Da&limit=2&cursor=c-1"
    );
    let out = cli(&cp3, &["device", "list", "-o", "json"]);
    out.assert_code(0);
    assert_eq!(out.json(), list);
    assert_eq!(cp3.seen()[1].target, "/v1/devices");
}

#[test]
fn enroll_key_create_sends_the_limits_and_shows_the_key_once() {
    let answer = json!({"id": "ek-1", "key": "ek-s3cret", "labels": {"site": "berlin"},
                        "max_uses": 50, "created_at": TS, "expires_at": "2026-12-02T00:00:00Z"});
    let cp = FakeCp::start(Canned::json(201, &answer.to_string()));
    let out = cli(
        &cp,
        &[
            "device",
            "enroll-key",
            "create",
            "--label",
            "site=berlin",
            "--max-uses",
            "50",
            "--ttl",
            "86400",
        ],
    );
    out.assert_code(0);
    assert_eq!(
        out.stdout_str(),
        format!(
            "id=ek-1 labels=\"site=berlin\" max_uses=50 created_at={TS} \
             expires_at=2026-12-02T00:00:00Z key=ek-s3cret\n"
        )
    );
    assert!(out.stderr_str().contains("shown only this once"));
    let seen = &cp.seen()[0];
    assert_eq!(
        (seen.method.as_str(), seen.target.as_str()),
        ("POST", "/v1/enroll-keys")
    );
    assert_eq!(
        body_of(seen),
        json!({"labels": {"site": "berlin"}, "max_uses": 50, "ttl_seconds": 86400})
    );
    let out = cli(
        &cp,
        &[
            "device",
            "enroll-key",
            "create",
            "--max-uses",
            "1",
            "--ttl",
            "60",
            "-o",
            "json",
        ],
    );
    out.assert_code(0);
    assert_eq!(out.json(), answer);
}

// ---------------------------------------------------------------------------------------------
// rollout devices, start --stage, create with engine flags
// ---------------------------------------------------------------------------------------------

#[test]
fn rollout_devices_sends_its_filters_and_prints_a_table() {
    let list = json!({"items": [
        {"device_id": "amr-0001", "stage": "canary", "state": "verified", "attempt": 1,
         "installed_digest": "sha256:bb", "last_seen_at": "2026-12-01T00:03:00Z",
         "updated_at": TS, "message": ""},
        {"device_id": "amr-0002", "stage": "canary", "state": "failed", "attempt": 2,
         "installed_digest": null, "last_seen_at": null, "updated_at": TS,
         "message": "disk full\n\u{1b}[31mred\u{202e}"}
    ], "next_cursor": "c-9"});
    let cp = FakeCp::start(Canned::json(200, &list.to_string()));
    let out = cli(
        &cp,
        &[
            "rollout", "devices", "fw-7", "--state", "failed", "--stage", "canary 1", "--limit",
            "2", "--cursor", "c-8",
        ],
    );
    out.assert_code(0);
    assert_eq!(
        out.stdout_str(),
        "DEVICE    STAGE   STATE     ATTEMPT  DIGEST     LAST_SEEN             MESSAGE\n\
         amr-0001  canary  verified  1        sha256:bb  2026-12-01T00:03:00Z  -\n\
         amr-0002  canary  failed    2        -          -                     disk full \\u{1b}[31mred\\u{202e}\n\
         next_cursor=c-9\n"
    );
    assert_eq!(
        cp.seen()[0].target,
        "/v1/rollouts/fw-7/devices?state=failed&stage=canary%201&limit=2&cursor=c-8"
    );
    assert_eq!(cp.seen()[0].method, "GET");

    let out = cli(&cp, &["rollout", "devices", "fw-7", "-o", "json"]);
    out.assert_code(0);
    assert_eq!(out.json(), list);
    assert_eq!(cp.seen()[1].target, "/v1/rollouts/fw-7/devices");
}

fn rollout_json(id: &str, phase: &str, engine: Option<Value>) -> Value {
    let mut status = json!({
        "phase": phase, "phase_changed_at": TS, "last_progress_at": TS,
        "warnings": [], "history": []
    });
    if let Some(engine) = engine {
        status["rollout"] = engine;
    }
    json!({
        "plan": {
            "metadata": {"id": id, "labels": {}, "created_at": TS, "updated_at": TS,
                         "created_by": "alice", "generation": 4},
            "spec": {"artifact_ref": "oci://r/fw@sha256:bb", "targets": {"selector": {"site": "berlin"}},
                     "stages": []}
        },
        "status": status
    })
}

#[test]
fn rollout_start_sends_the_stage_only_when_given() {
    let cp = FakeCp::start(Canned::json(
        200,
        &rollout_json("fw-7", "active", None).to_string(),
    ));
    let out = cli(
        &cp,
        &[
            "rollout",
            "start",
            "fw-7",
            "--stage",
            "2",
            "--reason",
            "canary ok",
        ],
    );
    out.assert_code(0);
    assert_eq!(
        out.stdout_str(),
        format!(
            "id=fw-7 phase=active generation=4 artifact_ref=oci://r/fw@sha256:bb \
             created_by=alice updated_at={TS}\n"
        )
    );
    cli(&cp, &["rollout", "start", "fw-7"]).assert_code(0);
    cli(&cp, &["rollout", "pause", "fw-7"]).assert_code(0);
    let seen = cp.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].target.as_str()),
        ("POST", "/v1/rollouts/fw-7/start")
    );
    assert_eq!(
        body_of(&seen[0]),
        json!({"reason": "canary ok", "stage": 2})
    );
    assert_eq!(body_of(&seen[1]), json!({"reason": ""}));
    assert_eq!(seen[2].target, "/v1/rollouts/fw-7/pause");
    assert_eq!(body_of(&seen[2]), json!({"reason": ""}));

    // A stale approval: the CP's 409 is exit 5 with its message.
    let cp = FakeCp::start(Canned::error(
        409,
        "conflict",
        "the plan waits at gate 1, not 2",
    ));
    let out = cli(&cp, &["rollout", "start", "fw-7", "--stage", "2"]);
    out.assert_code(5);
    assert!(out.error_line().contains("waits at gate 1, not 2"));
}

#[test]
fn rollout_create_engine_flags_fill_the_spec() {
    let dir = TestDir::new("cli-engine");
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"on_failure": "abort", "max_device_retries": 1}"#,
    )
    .unwrap();
    let cp = FakeCp::start(Canned::json(
        201,
        &rollout_json("fw-7", "published", None).to_string(),
    ));
    let policy_arg = format!("@{}", policy.display());
    let out = cli(
        &cp,
        &[
            "rollout",
            "create",
            "--id",
            "fw-7",
            "--artifact-ref",
            "oci://r/fw@sha256:bb",
            "--selector",
            "site=berlin,tier=a",
            "--device",
            "amr-0007",
            "--device",
            "amr-0008",
            "--stages",
            r#"[{"name":"canary","size":{"count":2}},{"name":"rest","approval":"manual"}]"#,
            "--policy",
            &policy_arg,
        ],
    );
    out.assert_code(0);
    assert_eq!(
        body_of(&cp.seen()[0]),
        json!({
            "metadata": {"id": "fw-7", "labels": {}},
            "spec": {
                "artifact_ref": "oci://r/fw@sha256:bb",
                "targets": {"selector": {"site": "berlin", "tier": "a"},
                            "devices": ["amr-0007", "amr-0008"]},
                "stages": [{"name": "canary", "size": {"count": 2}},
                           {"name": "rest", "approval": "manual"}],
                "policy": {"on_failure": "abort", "max_device_retries": 1}
            },
            "draft": false
        })
    );

    // `@-` reads stdin.
    let out = run(
        &[
            "rollout",
            "create",
            "--artifact-ref",
            "oci://r/fw@sha256:bb",
            "--device",
            "amr-0007",
            "--stages",
            "@-",
            "--server",
            &cp.url,
        ],
        &[],
        Some(br#"[{"name":"all"}]"#),
    );
    out.assert_code(0);
    let body = body_of(&cp.seen()[1]);
    assert_eq!(body["spec"]["stages"], json!([{"name": "all"}]));
    assert_eq!(body["spec"]["targets"], json!({"devices": ["amr-0007"]}));

    // Without the engine flags, the spec is what it always was (no policy key at all).
    cli(&cp, &["rollout", "create", "--artifact-ref", "oci://r/a"]).assert_code(0);
    let body = body_of(&cp.seen()[2]);
    assert_eq!(
        body["spec"],
        json!({"artifact_ref": "oci://r/a", "targets": {}, "stages": []})
    );
}

// ---------------------------------------------------------------------------------------------
// rollout get: the engine state and the stage table
// ---------------------------------------------------------------------------------------------

#[test]
fn rollout_get_prints_the_engine_state_and_a_stage_table() {
    let engine = json!({
        "current_stage": 1, "gate": null, "paused_by": "engine", "reason": "failure_threshold",
        "accepted_failures": 0, "drifted": 0, "epoch": 3,
        "stages": [
            {"name": "canary", "size": 2, "required": 2, "state": "passed",
             "counts": {"verified": 2}},
            {"name": "wave", "size": 5, "required": 5, "state": "active",
             "counts": {"failed": 1, "installing": 1, "verified": 3}},
            {"name": "rest\u{1b}[2J", "size": 13, "required": 13, "state": "pending",
             "counts": {}}
        ]
    });
    let answer = rollout_json("fw-7", "paused", Some(engine));
    let cp = FakeCp::start(Canned::json(200, &answer.to_string()));
    let out = cli(&cp, &["rollout", "get", "fw-7"]);
    out.assert_code(0);
    assert_eq!(
        out.stdout_str(),
        format!(
            "id=fw-7 phase=paused generation=4 artifact_ref=oci://r/fw@sha256:bb \
             created_by=alice updated_at={TS}\n\
             current_stage=1 paused_by=engine reason=failure_threshold drifted=0\n\
             INDEX  NAME           SIZE  REQUIRED  STATE    COUNTS\n\
             0      canary         2     2         passed   verified=2\n\
             1      wave           5     5         active   installing=1 verified=3 failed=1\n\
             2      rest\\u{{1b}}[2J  13    13        pending  -\n"
        )
    );
    let out = cli(&cp, &["rollout", "get", "fw-7", "-o", "json"]);
    out.assert_code(0);
    assert_eq!(out.json(), answer);

    // Waiting at a gate, after a resume that accepted failures, with drift counted.
    let engine = json!({
        "current_stage": 2, "gate": {"stage": 2, "since": "2026-12-01T01:00:00Z"},
        "accepted_failures": 1, "drifted": 2,
        "stages": [{"name": "all", "size": 1, "required": 1, "state": "passed",
                    "counts": {"drifted": 1}}]
    });
    let cp = FakeCp::start(Canned::json(
        200,
        &rollout_json("fw-8", "published", Some(engine)).to_string(),
    ));
    let out = cli(&cp, &["rollout", "get", "fw-8"]);
    out.assert_code(0);
    let text = out.stdout_str();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[1..],
        [
            "current_stage=2 gate=2 gate_since=2026-12-01T01:00:00Z accepted_failures=1 drifted=2",
            "INDEX  NAME  SIZE  REQUIRED  STATE   COUNTS",
            "0      all   1     1         passed  drifted=1",
        ]
    );

    // A record-only plan: the one line, as before.
    let cp = FakeCp::start(Canned::json(
        200,
        &rollout_json("web-1", "published", None).to_string(),
    ));
    let out = cli(&cp, &["rollout", "get", "web-1"]);
    out.assert_code(0);
    assert_eq!(out.stdout_str().lines().count(), 1);
}

// ---------------------------------------------------------------------------------------------
// rollout stuck: codes, reasons, stages, by_code
// ---------------------------------------------------------------------------------------------

#[test]
fn rollout_stuck_shows_codes_reasons_and_stages() {
    let report = json!({
        "threshold_seconds": 300.0, "scanned_at": TS, "stuck_count": 2,
        "by_code": {"no_progress": 1, "failure_threshold_reached": 1},
        "items": [
            {"id": "fw-7", "phase": "paused", "stale_seconds": 12.25,
             "last_progress_at": TS, "phase_changed_at": TS,
             "diagnosis": "paused by the engine: 2 devices failed in stage 1 (wave)",
             "suggested_actions": ["autonomy rollback execute --resource fw-7 --strategy retry --reason 'fixed'"],
             "code": "failure_threshold_reached",
             "reasons": [
                 {"code": "failure_threshold_reached", "count": 2, "devices": ["amr-0002", "amr-0005"]},
                 {"code": "silent_devices", "count": 12,
                  "devices": ["d-01", "d-02", "d-03", "d-04", "d-05", "d-06", "d-07", "d-08", "d-09", "d\u{1b}10"]}
             ],
             "stage": {"index": 1, "name": "wave", "required": 5, "verified": 3,
                       "in_flight": 12, "failed": 2}},
            {"id": "web-1", "phase": "published", "stale_seconds": 400.0,
             "last_progress_at": TS, "phase_changed_at": TS,
             "diagnosis": "published and not started for 400 s",
             "suggested_actions": ["autonomy rollout start web-1"],
             "code": "no_progress"}
        ]
    });
    let cp = FakeCp::start(Canned::json(200, &report.to_string()));
    let out = cli(&cp, &["rollout", "stuck", "--threshold-seconds", "300"]);
    out.assert_code(0);
    assert_eq!(
        out.stdout_str(),
        "stuck_count=2 threshold_seconds=300 by_code=failure_threshold_reached:1,no_progress:1\n\
         ID     PHASE      STALE_S  DIAGNOSIS\n\
         fw-7   paused     12.2     paused by the engine: 2 devices failed in stage 1 (wave)\n\
         web-1  published  400.0    published and not started for 400 s\n\
         plan=fw-7 code=failure_threshold_reached\n\
         stage=fw-7 index=1 name=wave required=5 verified=3 in_flight=12 failed=2\n\
         reason=fw-7 code=failure_threshold_reached count=2 devices=amr-0002,amr-0005\n\
         reason=fw-7 code=silent_devices count=12 \
         devices=\"d-01,d-02,d-03,d-04,d-05,d-06,d-07,d-08,d-09,d\\u{1b}10\"\n\
         suggest=fw-7 action=\"autonomy rollback execute --resource fw-7 --strategy retry --reason 'fixed'\"\n\
         plan=web-1 code=no_progress\n\
         suggest=web-1 action=\"autonomy rollout start web-1\"\n"
    );
    assert_eq!(
        cp.seen()[0].target,
        "/v1/rollouts/stuck?threshold_seconds=300"
    );

    let out = cli(
        &cp,
        &[
            "rollout",
            "stuck",
            "--code",
            "failure_threshold_reached",
            "--limit",
            "5",
            "-o",
            "json",
        ],
    );
    out.assert_code(0);
    assert_eq!(out.json(), report);
    assert_eq!(
        cp.seen()[1].target,
        "/v1/rollouts/stuck?limit=5&code=failure_threshold_reached"
    );

    // Nothing stuck: one line, no by_code.
    let none = json!({"threshold_seconds": 300.0, "scanned_at": TS, "stuck_count": 0,
                      "items": [], "by_code": {}});
    let cp = FakeCp::start(Canned::json(200, &none.to_string()));
    let out = cli(&cp, &["rollout", "stuck"]);
    out.assert_code(0);
    assert_eq!(out.stdout_str(), "stuck_count=0 threshold_seconds=300\n");
}

// ---------------------------------------------------------------------------------------------
// Bad input, wrong answers, help
// ---------------------------------------------------------------------------------------------

/// Bad input exits 2 with one `error:` line naming the flag, and sends nothing.
#[test]
fn bad_input_is_a_usage_error_and_nothing_is_sent() {
    let (listener, url) = silent_listener();
    listener.set_nonblocking(true).unwrap();
    let dir = TestDir::new("cli-engine-bad");
    let not_json = dir.path().join("stages.txt");
    std::fs::write(&not_json, "canary, then the rest").unwrap();
    let not_json = format!("@{}", not_json.display());
    let cases: &[(&[&str], &str)] = &[
        (&["device", "register", "d1", "--label", "site"], "--label"),
        (&["device", "register", "d1", "--label", "=x"], "--label"),
        (
            &[
                "device", "register", "d1", "--label", "a=1", "--label", "a=2",
            ],
            "--label",
        ),
        (&["device", "label", "d1"], "--label"),
        (
            &["device", "label", "d1", "--label", "a=1", "--clear"],
            "--clear",
        ),
        (&["device", "list", "--selector", "site"], "--selector"),
        (&["device", "list", "--selector", "a=1,,b=2"], "--selector"),
        (&["device", "list", "--limit", "0"], "--limit"),
        (
            &[
                "device",
                "enroll-key",
                "create",
                "--max-uses",
                "0",
                "--ttl",
                "60",
            ],
            "--max-uses",
        ),
        (
            &[
                "device",
                "enroll-key",
                "create",
                "--max-uses",
                "-1",
                "--ttl",
                "60",
            ],
            "--max-uses",
        ),
        (
            &[
                "device",
                "enroll-key",
                "create",
                "--max-uses",
                "1",
                "--ttl",
                "0",
            ],
            "--ttl",
        ),
        (
            &["device", "enroll-key", "create", "--ttl", "60"],
            "--max-uses",
        ),
        (&["rollout", "pause", "fw-7", "--stage", "2"], "--stage"),
        (&["rollout", "resume", "fw-7", "--stage", "2"], "--stage"),
        (&["rollout", "start", "fw-7", "--stage", "-1"], "--stage"),
        (&["rollout", "start", "fw-7", "--stage", "two"], "--stage"),
        (
            &["rollout", "devices", "fw-7", "--state", "done"],
            "--state",
        ),
        (&["rollout", "devices", "fw-7", "--limit", "0"], "--limit"),
        (&["rollout", "stuck", "--code", "slow"], "--code"),
        (
            &[
                "rollout",
                "create",
                "--artifact-ref",
                "oci://r/a",
                "--selector",
                "site",
            ],
            "--selector",
        ),
        (
            &[
                "rollout",
                "create",
                "--artifact-ref",
                "oci://r/a",
                "--stages",
                "{\"name\":\"a\"}",
            ],
            "--stages",
        ),
        (
            &[
                "rollout",
                "create",
                "--artifact-ref",
                "oci://r/a",
                "--stages",
                "[1]",
            ],
            "--stages",
        ),
        (
            &[
                "rollout",
                "create",
                "--artifact-ref",
                "oci://r/a",
                "--stages",
                &not_json,
            ],
            "--stages",
        ),
        (
            &[
                "rollout",
                "create",
                "--artifact-ref",
                "oci://r/a",
                "--policy",
                "[]",
            ],
            "--policy",
        ),
        (
            &[
                "rollout",
                "create",
                "--artifact-ref",
                "oci://r/a",
                "--policy",
                "{",
            ],
            "--policy",
        ),
        (
            &[
                "rollout",
                "create",
                "--artifact-ref",
                "oci://r/a",
                "--policy",
                "@/nonexistent/p.json",
            ],
            "--policy",
        ),
        (
            &["rollout", "create", "-f", "plan.json", "--device", "d1"],
            "--device",
        ),
    ];
    for (args, flag) in cases {
        let mut all = args.to_vec();
        all.extend(["--server", &url]);
        let out = run(&all, &[], None);
        assert_eq!(out.code(), 2, "{args:?}: {}", out.stderr_str());
        let line = out.error_line();
        assert!(
            line.contains(flag),
            "{args:?}: the error should name {flag}: {line}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => {
            panic!("a usage error must not contact the CP, but something connected: {other:?}")
        }
    }
}

#[test]
fn an_answer_of_the_wrong_shape_fails_with_exit_1() {
    let verbs: &[&[&str]] = &[
        &["device", "register", "d1"],
        &["device", "list"],
        &["device", "get", "d1"],
        &["device", "label", "d1", "--clear"],
        &["device", "revoke", "d1"],
        &[
            "device",
            "enroll-key",
            "create",
            "--max-uses",
            "1",
            "--ttl",
            "60",
        ],
        &["rollout", "devices", "fw-7"],
    ];
    let cp = FakeCp::start(Canned::json(200, r#"{"unexpected":true}"#));
    for verb in verbs {
        for format in ["text", "json"] {
            let mut args = verb.to_vec();
            args.extend(["-o", format]);
            let out = cli(&cp, &args);
            assert_eq!(out.code(), 1, "{args:?}: {}", out.stderr_str());
            assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout_str());
            assert!(out.error_line().contains("unexpected body"), "{args:?}");
        }
    }
}

#[test]
fn every_engine_command_has_help_with_examples() {
    let verbs: &[&[&str]] = &[
        &["device", "register"],
        &["device", "list"],
        &["device", "get"],
        &["device", "label"],
        &["device", "revoke"],
        &["device", "enroll-key", "create"],
        &["rollout", "devices"],
        &["rollout", "start"],
        &["rollout", "create"],
        &["rollout", "stuck"],
    ];
    for verb in verbs {
        let mut args = verb.to_vec();
        args.push("--help");
        let out = run(&args, &[], None);
        out.assert_code(0);
        let help = out.stdout_str();
        assert!(help.contains("Examples:"), "{verb:?}:\n{help}");
        assert!(
            help.contains(&format!("autonomy {}", verb.join(" "))),
            "{verb:?}: {help}"
        );
    }
    let help = run(&["rollout", "start", "--help"], &[], None).stdout_str();
    assert!(help.contains("--stage <K>"), "{help}");
    let help = run(&["rollout", "pause", "--help"], &[], None).stdout_str();
    assert!(!help.contains("--stage"), "{help}");
}

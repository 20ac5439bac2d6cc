//! The CLI against a real control plane (`autonomy serve` on 127.0.0.1:0): every verb in both
//! output modes, the exit codes the CP can be made to produce, RBAC, and the offline audit
//! commands on the store the CP wrote.

mod common;

use common::{Cp, OutputExt};
use serde_json::Value;

const ART: &str =
    "oci://reg.example/web@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// `key=value` from a logfmt line (unquoted values only).
fn field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace().find_map(|kv| {
        kv.strip_prefix(&format!("{key}="))
            .map(|v| v.trim_matches('"').to_string())
    })
}

fn phase_of(cp: &Cp, id: &str) -> String {
    let out = cp.cli(&["rollout", "get", id, "-o", "json"]);
    out.assert_code(0);
    out.json()["status"]["phase"].as_str().unwrap().to_string()
}

#[test]
fn create_get_list_in_text_and_json() {
    let cp = Cp::start(&[], &[]);

    // Text: one logfmt line.
    let out = cp.cli(&[
        "--operator",
        "alice",
        "rollout",
        "create",
        "--id",
        "web-1",
        "--artifact-ref",
        ART,
        "--fingerprint",
        "blake3:abc",
        "--label",
        "team=web",
        "--label",
        "tier=edge",
    ]);
    out.assert_code(0);
    let line = out.stdout_str();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.starts_with("id=web-1 phase=published generation=1 artifact_ref="),
        "{line}"
    );
    assert_eq!(field(&line, "created_by").as_deref(), Some("alice"));
    assert!(field(&line, "updated_at").is_some(), "{line}");

    // Json: the API's resource.
    let out = cp.cli(&["rollout", "get", "web-1", "-o", "json"]);
    out.assert_code(0);
    let r = out.json();
    assert_eq!(
        r["plan"]["metadata"]["labels"],
        serde_json::json!({"team": "web", "tier": "edge"})
    );
    assert_eq!(r["plan"]["spec"]["artifact_ref"], ART);
    assert_eq!(r["plan"]["spec"]["target_lock_fingerprint"], "blake3:abc");
    assert_eq!(r["status"]["phase"], "published");

    // A draft with an unknown scheme: accepted, and the warning is shown in text.
    let out = cp.cli(&[
        "rollout",
        "create",
        "--id",
        "bad-1",
        "--artifact-ref",
        "corrupt://x",
        "--draft",
    ]);
    out.assert_code(0);
    let line = out.stdout_str();
    assert!(
        line.contains("phase=draft") && line.contains("warnings=\""),
        "{line}"
    );

    // Duplicate id → 5; unknown id → 4.
    let out = cp.cli(&["rollout", "create", "--id", "web-1", "--artifact-ref", ART]);
    out.assert_code(5);
    assert!(out.error_line().contains("409"));
    let out = cp.cli(&["rollout", "get", "nope"]);
    out.assert_code(4);
    assert!(out.error_line().contains("nope"));

    // A bad id the CP rejects is "other error" (1) with the CP's message.
    let out = cp.cli(&[
        "rollout",
        "create",
        "--id",
        "Not_Lower",
        "--artifact-ref",
        ART,
    ]);
    out.assert_code(1);
    assert!(out.error_line().contains("400"));

    // List: a table, then the same in json; the phase filter.
    let out = cp.cli(&["rollout", "list"]);
    out.assert_code(0);
    let text = out.stdout_str();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["ID", "PHASE", "GENERATION", "ARTIFACT", "UPDATED"]
    );
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("web-1 ") && l.contains("published")),
        "{text}"
    );
    let out = cp.cli(&["rollout", "list", "-o", "json", "--phase", "draft"]);
    out.assert_code(0);
    let items = out.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["plan"]["metadata"]["id"], "bad-1");

    // Paging: --limit 1 gives a cursor that leads to the other plan.
    let out = cp.cli(&["rollout", "list", "--limit", "1"]);
    out.assert_code(0);
    let text = out.stdout_str();
    let cursor = text
        .lines()
        .find_map(|l| l.strip_prefix("next_cursor="))
        .expect("a next_cursor line");
    let first = text
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let out = cp.cli(&[
        "rollout", "list", "--limit", "1", "--cursor", cursor, "-o", "json",
    ]);
    out.assert_code(0);
    let second = out.json()["items"][0]["plan"]["metadata"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(first, second);
}

#[test]
fn create_from_stdin_and_file() {
    let cp = Cp::start(&[], &[]);
    let plan = serde_json::json!({
        "metadata": {"id": "from-stdin", "labels": {"src": "stdin"}},
        "spec": {"artifact_ref": ART, "targets": {"fleet": "warehouse-7"},
                 "stages": [{"name": "canary", "percent": 5}]},
        "draft": true
    });
    let out = cp.cli_with(
        &["rollout", "create", "-f", "-", "-o", "json"],
        &[],
        Some(plan.to_string().as_bytes()),
    );
    out.assert_code(0);
    let r = out.json();
    assert_eq!(r["plan"]["metadata"]["id"], "from-stdin");
    assert_eq!(r["plan"]["spec"]["targets"]["fleet"], "warehouse-7");
    assert_eq!(r["plan"]["spec"]["stages"][0]["name"], "canary");
    assert_eq!(r["status"]["phase"], "draft");

    let path = cp.data_dir().parent().unwrap().join("plan.json");
    std::fs::write(&path, r#"{"spec":{"artifact_ref":"oci://reg/x:1"}}"#).unwrap();
    let out = cp.cli(&["rollout", "create", "--file", path.to_str().unwrap()]);
    out.assert_code(0);
    let line = out.stdout_str();
    let id = field(&line, "id").expect("a generated id");
    assert!(!id.is_empty());
    assert_eq!(phase_of(&cp, &id), "published");
}

#[test]
fn operator_transitions_and_invalid_ones() {
    let cp = Cp::start(&[], &[("AUTONOMY_OPERATOR", "ignored-by-the-cp")]);
    cp.cli(&[
        "rollout",
        "create",
        "--id",
        "t-1",
        "--artifact-ref",
        ART,
        "--draft",
    ])
    .assert_code(0);

    let steps = [
        ("publish", "published"),
        ("start", "active"),
        ("pause", "paused"),
        ("resume", "active"),
    ];
    for (generation, (verb, phase)) in steps.iter().enumerate() {
        let out = cp.cli(&[
            "--operator",
            "bob",
            "rollout",
            verb,
            "t-1",
            "--reason",
            &format!("step {verb}"),
        ]);
        out.assert_code(0);
        let line = out.stdout_str();
        assert_eq!(
            field(&line, "phase").as_deref(),
            Some(*phase),
            "{verb}: {line}"
        );
        assert_eq!(
            field(&line, "generation"),
            Some((generation + 2).to_string()),
            "{verb}: {line}"
        );
    }
    let out = cp.cli(&["rollout", "get", "t-1", "-o", "json"]);
    let history = out.json()["status"]["history"].as_array().unwrap().clone();
    let last = history.last().unwrap();
    assert_eq!(
        (last["action"].as_str(), last["reason"].as_str()),
        (Some("resume"), Some("step resume"))
    );
    assert_eq!(last["actor"], "bob");

    // Invalid transitions: 5, the phase unchanged. Unknown plan: 4.
    let out = cp.cli(&["rollout", "publish", "t-1"]);
    out.assert_code(5);
    assert!(
        out.error_line().contains("409 conflict"),
        "{}",
        out.stderr_str()
    );
    assert!(out.stdout.is_empty());
    cp.cli(&["rollout", "resume", "t-1"]).assert_code(5);
    assert_eq!(phase_of(&cp, "t-1"), "active");
    cp.cli(&["rollout", "start", "missing-plan"]).assert_code(4);

    // Json mode prints the resource.
    let out = cp.cli(&["rollout", "pause", "t-1", "-o", "json"]);
    out.assert_code(0);
    assert_eq!(out.json()["status"]["phase"], "paused");
}

#[test]
fn stuck_then_retry_rollback_abort() {
    let cp = Cp::start(&[], &[]);
    for id in ["s-1", "s-2", "s-3"] {
        cp.cli(&["rollout", "create", "--id", id, "--artifact-ref", ART])
            .assert_code(0);
    }
    cp.cli(&[
        "rollout",
        "create",
        "--id",
        "s-draft",
        "--artifact-ref",
        ART,
        "--draft",
    ])
    .assert_code(0);

    // Threshold 0: every published plan is stuck; drafts never are.
    let out = cp.cli(&["rollout", "stuck", "--threshold-seconds", "0"]);
    out.assert_code(0);
    let text = out.stdout_str();
    let mut lines = text.lines();
    let head = lines.next().unwrap();
    assert_eq!(field(head, "stuck_count").as_deref(), Some("3"), "{text}");
    assert_eq!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        ["ID", "PHASE", "STALE_S", "DIAGNOSIS"]
    );
    for id in ["s-1", "s-2", "s-3"] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{id} "))),
            "{id} missing: {text}"
        );
        assert!(text.contains(&format!("suggest={id} action=")), "{text}");
    }
    assert!(!text.contains("s-draft"));
    let out = cp.cli(&["rollout", "stuck", "--threshold-seconds", "0", "-o", "json"]);
    out.assert_code(0);
    let report = out.json();
    assert_eq!(report["stuck_count"], 3);
    assert!(report["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| !i["diagnosis"].as_str().unwrap().is_empty()));

    // retry: published → active, resets the stuck clock.
    let out = cp.cli(&[
        "--operator",
        "val11-chaos-op",
        "rollback",
        "execute",
        "--target",
        "rollout_plan",
        "--resource",
        "s-1",
        "--strategy",
        "retry",
        "--reason",
        "chaos-cascade-recovery",
    ]);
    out.assert_code(0);
    let line = out.stdout_str();
    assert!(line.starts_with("outcome=success execution_id="), "{line}");
    for (k, v) in [
        ("resource", "s-1"),
        ("strategy", "retry"),
        ("from_phase", "published"),
        ("to_phase", "active"),
        ("dry_run", "false"),
    ] {
        assert_eq!(field(&line, k).as_deref(), Some(v), "{k}: {line}");
    }
    assert!(field(&line, "audit_event_id").is_some(), "{line}");
    assert_eq!(phase_of(&cp, "s-1"), "active");
    let out = cp.cli(&[
        "rollout",
        "stuck",
        "--threshold-seconds",
        "3600",
        "-o",
        "json",
    ]);
    assert_eq!(out.json()["stuck_count"], 0);

    // Dry run: reports, changes nothing, no audit event.
    let out = cp.cli(&[
        "rollback",
        "execute",
        "--resource",
        "s-2",
        "--strategy",
        "rollback",
        "--reason",
        "r",
        "--dry-run",
        "-o",
        "json",
    ]);
    out.assert_code(0);
    let r = out.json();
    assert_eq!(
        (
            r["outcome"].as_str(),
            r["to_phase"].as_str(),
            r["dry_run"].as_bool()
        ),
        (Some("success"), Some("rolled_back"), Some(true))
    );
    assert_eq!(phase_of(&cp, "s-2"), "published");

    // rollback, then rollback again (noop, exit 0), then abort (rejected: exit 5, answer shown).
    let out = cp.cli(&[
        "rollback",
        "execute",
        "--resource",
        "s-2",
        "--strategy",
        "rollback",
        "--reason",
        "bad artifact",
        "-o",
        "json",
    ]);
    out.assert_code(0);
    assert_eq!(out.json()["to_phase"], "rolled_back");
    let out = cp.cli(&[
        "rollback",
        "execute",
        "--resource",
        "s-2",
        "--strategy",
        "rollback",
        "--reason",
        "again",
    ]);
    out.assert_code(0);
    assert_eq!(field(&out.stdout_str(), "outcome").as_deref(), Some("noop"));
    let out = cp.cli(&[
        "rollback",
        "execute",
        "--resource",
        "s-2",
        "--strategy",
        "abort",
        "--reason",
        "too late",
    ]);
    out.assert_code(5);
    assert!(
        out.stdout_str().starts_with("outcome=rejected "),
        "{}",
        out.stdout_str()
    );
    assert!(out.error_line().contains("409"));
    let out = cp.cli(&[
        "rollback",
        "execute",
        "--resource",
        "s-2",
        "--strategy",
        "retry",
        "--reason",
        "r",
        "-o",
        "json",
    ]);
    out.assert_code(5);
    let r = out.json();
    assert_eq!(r["outcome"], "rejected");
    assert_eq!(r["error"]["code"], "conflict");

    // abort, and an unknown plan (4).
    let out = cp.cli(&[
        "rollback",
        "execute",
        "--resource",
        "s-3",
        "--strategy",
        "abort",
        "--reason",
        "cancel",
    ]);
    out.assert_code(0);
    assert_eq!(
        field(&out.stdout_str(), "to_phase").as_deref(),
        Some("aborted")
    );
    cp.cli(&[
        "rollback",
        "execute",
        "--resource",
        "ghost",
        "--strategy",
        "abort",
        "--reason",
        "r",
    ])
    .assert_code(4);
}

#[test]
fn idempotency_key_returns_the_first_answer() {
    let cp = Cp::start(&[], &[]);
    cp.cli(&["rollout", "create", "--id", "i-1", "--artifact-ref", ART])
        .assert_code(0);
    let args = [
        "rollback",
        "execute",
        "--resource",
        "i-1",
        "--strategy",
        "retry",
        "--reason",
        "r",
        "--idempotency-key",
        "key-1",
        "-o",
        "json",
    ];
    let first = cp.cli(&args);
    first.assert_code(0);
    let second = cp.cli(&args);
    second.assert_code(0);
    assert_eq!(first.json()["execution_id"], second.json()["execution_id"]);
    let out = cp.cli(&["rollout", "get", "i-1", "-o", "json"]);
    assert_eq!(
        out.json()["status"]["history"].as_array().unwrap().len(),
        2,
        "acted twice"
    );
}

#[test]
fn audit_query_online_and_offline_agree_and_verify_detects_tampering() {
    let mut cp = Cp::start(&[], &[]);
    let start = "2000-01-01T00:00:00Z";
    cp.cli(&["rollout", "create", "--id", "a-1", "--artifact-ref", ART])
        .assert_code(0);
    let op = [("AUTONOMY_OPERATOR", "val11-chaos-op")];
    cp.cli_with(
        &[
            "rollback",
            "execute",
            "--resource",
            "a-1",
            "--strategy",
            "retry",
            "--reason",
            "chaos",
        ],
        &op,
        None,
    )
    .assert_code(0);
    cp.cli_with(
        &[
            "rollback",
            "execute",
            "--resource",
            "a-1",
            "--strategy",
            "rollback",
            "--reason",
            "chaos",
        ],
        &op,
        None,
    )
    .assert_code(0);

    let filter = [
        "audit",
        "query",
        "--event-type",
        "rollback.executed",
        "--actor",
        "val11-chaos-op",
        "--start-time",
        start,
        "-o",
        "json",
    ];
    let online = cp.cli(&filter);
    online.assert_code(0);
    common::settle_mirror(&cp);
    let audit_dir = cp.audit_dir();
    let mut offline_args = filter.to_vec();
    offline_args.extend(["--audit-dir", audit_dir.to_str().unwrap()]);
    let offline = cp.cli(&offline_args);
    offline.assert_code(0);
    let items = online.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 2, "{}", online.stdout_str());
    assert!(items
        .iter()
        .all(|e| e["outcome"] == "success" && e["actor"] == "val11-chaos-op"));
    assert_eq!(online.json(), offline.json());

    // Text: a table. Limit and outcome filters.
    let out = cp.cli(&["audit", "query", "--resource", "a-1", "--limit", "1"]);
    out.assert_code(0);
    let text = out.stdout_str();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert_eq!(
        text.lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["SEQ", "TIME", "EVENT_TYPE", "ACTOR", "RESOURCE", "OUTCOME"]
    );
    let out = cp.cli(&["audit", "query", "--outcome", "denied", "-o", "json"]);
    assert_eq!(out.json()["items"].as_array().unwrap().len(), 0);

    // With the CP down, the store is still readable and verifiable.
    let status = cp.sigterm();
    assert!(status.success());
    let dir = audit_dir.to_str().unwrap();
    let again = common::run(&offline_args, &[], None);
    again.assert_code(0);
    assert_eq!(again.json(), offline.json());
    let out = common::run(&["audit", "verify", "--audit-dir", dir], &[], None);
    out.assert_code(0);
    let line = out.stdout_str();
    assert!(line.starts_with("ok segments="), "{line}");
    let events: u64 = field(&line, "events").unwrap().parse().unwrap();
    assert!(events >= 4, "{line}");
    assert_eq!(field(&line, "last_seq"), Some(events.to_string()));
    let data_dir = cp.data_dir().to_str().unwrap().to_string();
    let out = common::run(
        &["audit", "verify", "-o", "json"],
        &[("AUTONOMY_DATA_DIR", &data_dir)],
        None,
    );
    out.assert_code(0);
    assert_eq!(out.json()["events"], events);

    // Tamper: change the reason of one event in place.
    let segment = std::fs::read_dir(&audit_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            std::fs::read_to_string(p)
                .map(|t| t.contains("\"reason\":\"chaos\""))
                .unwrap_or(false)
        })
        .expect("a segment holding the events");
    let text = std::fs::read_to_string(&segment).unwrap();
    std::fs::write(
        &segment,
        text.replacen("\"reason\":\"chaos\"", "\"reason\":\"CHAOS\"", 1),
    )
    .unwrap();
    let out = common::run(&["audit", "verify", "--audit-dir", dir], &[], None);
    out.assert_code(1);
    let line = out.error_line();
    assert!(
        line.starts_with("error: audit store is corrupt: "),
        "{line}"
    );
    assert!(line.contains(" line ") && line.contains("(seq "), "{line}");
    assert!(out.stdout.is_empty());
}

#[test]
fn rbac_tokens_and_exit_6() {
    let cp = Cp::start(&[], &[("AUTONOMY_RBAC_ENFORCEMENT", "1")]);
    let admin = cp.admin_token();

    // No token, a bad token: 6.
    let out = cp.cli(&["rollout", "list"]);
    out.assert_code(6);
    assert!(out.error_line().contains("401"));
    let out = cp.cli_with(
        &["rollout", "list"],
        &[("AUTONOMY_TOKEN", "not-a-token")],
        None,
    );
    out.assert_code(6);

    // Admin creates an operator and a viewer token; the secret is shown once.
    let out = cp.cli(&[
        "--token",
        &admin,
        "token",
        "create",
        "--operator",
        "carol",
        "--role",
        "operator",
    ]);
    out.assert_code(0);
    let line = out.stdout_str();
    let operator_token = field(&line, "token").expect("the secret in text output");
    assert_eq!(field(&line, "operator").as_deref(), Some("carol"));
    assert!(
        out.stderr_str().contains("only this once"),
        "{}",
        out.stderr_str()
    );
    let out = cp.cli(&[
        "--token",
        &admin,
        "token",
        "create",
        "--operator",
        "vic",
        "--role",
        "viewer",
        "-o",
        "json",
    ]);
    out.assert_code(0);
    let created = out.json();
    for key in ["id", "operator", "role", "token", "created_at"] {
        assert!(
            created.get(key).is_some(),
            "token create -o json lacks {key}: {created}"
        );
    }
    let viewer_token = created["token"].as_str().unwrap().to_string();
    let viewer_id = created["id"].as_str().unwrap().to_string();

    // The token decides the actor; the operator header cannot override it.
    let out = cp.cli_with(
        &[
            "--operator",
            "mallory",
            "rollout",
            "create",
            "--id",
            "r-1",
            "--artifact-ref",
            ART,
        ],
        &[("AUTONOMY_TOKEN", &operator_token)],
        None,
    );
    out.assert_code(0);
    assert_eq!(
        field(&out.stdout_str(), "created_by").as_deref(),
        Some("carol")
    );

    // A viewer reads but cannot create or manage tokens: 6.
    let viewer = [("AUTONOMY_TOKEN", viewer_token.as_str())];
    cp.cli_with(&["rollout", "get", "r-1"], &viewer, None)
        .assert_code(0);
    let out = cp.cli_with(
        &["rollout", "create", "--id", "r-2", "--artifact-ref", ART],
        &viewer,
        None,
    );
    out.assert_code(6);
    assert!(out.error_line().contains("403"));
    cp.cli_with(&["token", "list"], &viewer, None)
        .assert_code(6);

    // token list never shows secrets.
    let out = cp.cli(&["--token", &admin, "token", "list", "-o", "json"]);
    out.assert_code(0);
    let listing = out.stdout_str();
    assert!(listing.contains(&viewer_id));
    assert!(
        !listing.contains(&viewer_token)
            && !listing.contains(&operator_token)
            && !listing.contains(&admin)
    );
    let out = cp.cli(&["--token", &admin, "token", "list"]);
    out.assert_code(0);
    assert!(out.stdout_str().lines().next().unwrap().starts_with("ID "));

    // Revoke takes effect on the next request; revoking an unknown id is 4.
    let out = cp.cli(&["--token", &admin, "token", "revoke", &viewer_id]);
    out.assert_code(0);
    assert!(
        field(&out.stdout_str(), "revoked_at").is_some(),
        "{}",
        out.stdout_str()
    );
    cp.cli_with(&["rollout", "get", "r-1"], &viewer, None)
        .assert_code(6);
    cp.cli(&["--token", &admin, "token", "revoke", "tok_does_not_exist"])
        .assert_code(4);

    // Denied requests are audited.
    let out = cp.cli(&[
        "--token",
        &admin,
        "audit",
        "query",
        "--outcome",
        "denied",
        "-o",
        "json",
    ]);
    out.assert_code(0);
    assert!(!out.json()["items"].as_array().unwrap().is_empty());
}

#[test]
fn operator_name_from_flag_env_or_anonymous() {
    let cp = Cp::start(&[], &[]);
    let created_by = |args: &[&str], env: &[(&str, &str)]| -> String {
        let out = cp.cli_with(args, env, None);
        out.assert_code(0);
        let v: Value = out.json();
        v["plan"]["metadata"]["created_by"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        created_by(
            &[
                "--operator",
                "dana",
                "rollout",
                "create",
                "--artifact-ref",
                ART,
                "-o",
                "json"
            ],
            &[]
        ),
        "dana"
    );
    assert_eq!(
        created_by(
            &["rollout", "create", "--artifact-ref", ART, "-o", "json"],
            &[("AUTONOMY_OPERATOR", "erin")]
        ),
        "erin"
    );
    assert_eq!(
        created_by(
            &["rollout", "create", "--artifact-ref", ART, "-o", "json"],
            &[]
        ),
        "anonymous"
    );
}

#[test]
fn health_and_a_killed_cp() {
    let mut cp = Cp::start(&[], &[]);
    let out = cp.cli(&["health"]);
    out.assert_code(0);
    let line = out.stdout_str();
    assert_eq!(field(&line, "status").as_deref(), Some("ok"));
    assert_eq!(field(&line, "server").as_deref(), Some(cp.url.as_str()));
    let out = cp.cli(&["health", "-o", "json"]);
    assert_eq!(out.json()["status"], "ok");

    cp.cli(&["rollout", "create", "--id", "k-1", "--artifact-ref", ART])
        .assert_code(0);

    // VAL11-02: the CP is killed; the client exits 3 naming the address.
    cp.sigkill();
    let out = cp.cli(&[
        "rollback",
        "execute",
        "--target",
        "rollout_plan",
        "--resource",
        "k-1",
        "--strategy",
        "retry",
        "--reason",
        "chaos-test",
    ]);
    out.assert_code(3);
    let line = out.error_line();
    assert!(
        line.contains("connection refused") && line.contains(&cp.url),
        "{line}"
    );

    // Restarted on the same data dir, the plan is still there.
    cp.start_again();
    assert_eq!(phase_of(&cp, "k-1"), "published");
    cp.restart();
    assert_eq!(phase_of(&cp, "k-1"), "published");
}

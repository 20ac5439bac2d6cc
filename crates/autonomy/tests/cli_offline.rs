//! The CLI without a real control plane: unreachable and hanging CPs, usage errors, the
//! status → exit code mapping and the request headers (against a scripted fake CP), help
//! text, and the offline audit commands on missing directories.

mod common;

use common::{free_port, run, silent_listener, Canned, FakeCp, OutputExt};

#[test]
fn connection_refused_exits_3_naming_the_address() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = run(&["health"], &[("AUTONOMY_SERVER", &url)], None);
    out.assert_code(3);
    let line = out.error_line();
    let prefix = format!("error: cannot reach the control plane at {url}: ");
    assert!(line.starts_with(&prefix), "{line}");
    assert!(line.contains("connection refused"), "{line}");

    // The VAL11-02 call: a recovery attempt against a dead CP.
    let out = run(
        &[
            "rollback",
            "execute",
            "--target",
            "rollout_plan",
            "--resource",
            "val11-dur-1",
            "--strategy",
            "retry",
            "--reason",
            "chaos-test",
            "--server",
            &url,
        ],
        &[("AUTONOMY_OPERATOR", "val11-chaos-op")],
        None,
    );
    out.assert_code(3);
    assert!(out.error_line().contains("connection refused"));
    assert!(out.stdout.is_empty());
}

#[test]
fn a_cp_that_never_answers_times_out_with_exit_3() {
    let (_listener, url) = silent_listener();
    let out = run(
        &["rollout", "list", "--server", &url, "--timeout", "1"],
        &[],
        None,
    );
    out.assert_code(3);
    let line = out.error_line();
    assert_eq!(
        line,
        format!(
            "error: no answer from the control plane at {url} within 1s (--timeout): timed out"
        )
    );

    // Fractions, from the environment, on a POST.
    let out = run(
        &["rollout", "start", "x"],
        &[("AUTONOMY_SERVER", &url), ("AUTONOMY_TIMEOUT", "0.5")],
        None,
    );
    out.assert_code(3);
    assert!(out.error_line().contains("within 0.5s"));
}

/// Usage errors exit 2 with one `error:` line naming the problem, and send nothing.
#[test]
fn usage_errors_exit_2_before_anything_is_sent() {
    let (listener, url) = silent_listener();
    listener.set_nonblocking(true).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "rollback",
                "execute",
                "--resource",
                "p",
                "--strategy",
                "undo",
                "--reason",
                "r",
            ],
            "--strategy",
        ),
        (
            &[
                "rollback",
                "execute",
                "--resource",
                "p",
                "--strategy",
                "retry",
                "--reason",
                " ",
            ],
            "--reason",
        ),
        (
            &[
                "rollback",
                "execute",
                "--resource",
                "p",
                "--strategy",
                "retry",
            ],
            "--reason",
        ),
        (
            &[
                "rollback",
                "execute",
                "--target",
                "device",
                "--resource",
                "p",
                "--strategy",
                "retry",
                "--reason",
                "r",
            ],
            "--target",
        ),
        (
            &[
                "rollout",
                "create",
                "--artifact-ref",
                "oci://r/a",
                "--label",
                "nokey",
            ],
            "--label",
        ),
        (
            &[
                "rollout",
                "create",
                "--artifact-ref",
                "oci://r/a",
                "--label",
                "=v",
            ],
            "--label",
        ),
        (
            &[
                "rollout",
                "create",
                "--artifact-ref",
                "oci://r/a",
                "--label",
                "a=1",
                "--label",
                "a=2",
            ],
            "--label",
        ),
        (&["rollout", "create", "--id", "x"], "--artifact-ref"),
        (
            &["rollout", "create", "-f", "plan.json", "--id", "x"],
            "--file",
        ),
        (&["rollout", "list", "--phase", "running"], "--phase"),
        (&["rollout", "list", "--limit", "0"], "--limit"),
        (&["rollout", "list", "--limit", "-3"], "--limit"),
        (
            &["rollout", "stuck", "--threshold-seconds", "-1"],
            "--threshold-seconds",
        ),
        (
            &["audit", "query", "--start-time", "yesterday"],
            "--start-time",
        ),
        (
            &["audit", "query", "--end-time", "2026-13-01T00:00:00Z"],
            "--end-time",
        ),
        (&["audit", "query", "--outcome", "great"], "--outcome"),
        (&["audit", "query", "--limit", "lots"], "--limit"),
        (
            &[
                "audit",
                "query",
                "--start-time",
                "2026-02-01T00:00:00Z",
                "--end-time",
                "2026-01-01T00:00:00Z",
            ],
            "--end-time",
        ),
        (
            &["token", "create", "--operator", "al", "--role", "root"],
            "--role",
        ),
        (&["health", "--output", "yaml"], "--output"),
        (&["health", "--timeout", "0"], "--timeout"),
        (&["health", "--timeout", "-5"], "--timeout"),
        (&["health", "--timeout", "soon"], "--timeout"),
        (
            &["health", "--server", "https://cp.example:8443"],
            "--server",
        ),
        (&["frobnicate"], "frobnicate"),
    ];
    for (args, flag) in cases {
        let mut all = args.to_vec();
        if !all.contains(&"--server") {
            all.extend(["--server", &url]);
        }
        let out = run(&all, &[], None);
        assert_eq!(out.code(), 2, "{args:?}: {}", out.stderr_str());
        let line = out.error_line();
        assert!(
            line.contains(flag),
            "{args:?}: the error should name {flag}: {line}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // `--operator` is a root flag; misplaced, the error says where it goes.
    let out = run(
        &["rollout", "list", "--operator", "x", "--server", &url],
        &[],
        None,
    );
    out.assert_code(2);
    assert!(out.error_line().contains("before the command"));

    // A bad value from the environment is a usage error too.
    let out = run(
        &["health"],
        &[("AUTONOMY_OUTPUT", "xml"), ("AUTONOMY_SERVER", &url)],
        None,
    );
    out.assert_code(2);
    assert!(out.error_line().contains("xml"));

    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => {
            panic!("a usage error must not contact the CP, but something connected: {other:?}")
        }
    }
}

#[test]
fn an_invalid_or_missing_plan_file_is_a_usage_error() {
    let (_listener, url) = silent_listener();
    let out = run(
        &["rollout", "create", "-f", "-", "--server", &url],
        &[],
        Some(br#"{"spec":{"artifact_ref":"oci://r/a"},"colour":"blue"}"#),
    );
    out.assert_code(2);
    let line = out.error_line();
    assert!(line.contains("stdin") && line.contains("colour"), "{line}");

    let out = run(
        &[
            "rollout",
            "create",
            "-f",
            "/nonexistent/plan.json",
            "--server",
            &url,
        ],
        &[],
        None,
    );
    out.assert_code(2);
    assert!(out.error_line().contains("/nonexistent/plan.json"));
}

#[test]
fn audit_commands_on_a_missing_directory_fail_naming_it() {
    let missing = std::env::temp_dir().join(format!("autonomy-no-such-dir-{}", std::process::id()));
    let missing = missing.to_str().unwrap();

    let out = run(&["audit", "verify", "--audit-dir", missing], &[], None);
    out.assert_code(1);
    let line = out.error_line();
    assert!(
        line.contains(missing) && line.contains("no such file"),
        "{line}"
    );

    // <data-dir>/audit, with the data dir from the environment.
    let out = run(
        &["audit", "verify"],
        &[("AUTONOMY_DATA_DIR", missing)],
        None,
    );
    out.assert_code(1);
    assert!(out.error_line().contains(&format!("{missing}/audit")));

    // audit query --audit-dir reads the store, never the CP (nothing listens here).
    let out = run(
        &[
            "audit",
            "query",
            "--audit-dir",
            missing,
            "--server",
            &format!("http://127.0.0.1:{}", free_port()),
        ],
        &[],
        None,
    );
    out.assert_code(1);
    let line = out.error_line();
    assert!(
        line.contains(missing) && !line.contains("control plane"),
        "{line}"
    );

    let out = run(
        &["audit", "query", "-o", "json"],
        &[("AUTONOMY_AUDIT_DIR", missing)],
        None,
    );
    out.assert_code(1);
    assert!(out.error_line().contains(missing));
}

#[test]
fn every_error_status_maps_to_its_exit_code() {
    let cases = [
        (
            Canned::error(400, "invalid_request", "limit: must be a whole number"),
            1,
            "limit: must be a whole number",
        ),
        (
            Canned::error(413, "payload_too_large", "body over 1 MiB"),
            1,
            "body over 1 MiB",
        ),
        (
            Canned::error(415, "unsupported_media_type", "want application/json"),
            1,
            "want application/json",
        ),
        (
            Canned::error(422, "unprocessable", "strict artifact policy"),
            1,
            "strict artifact policy",
        ),
        (
            Canned::error(401, "unauthorized", "missing bearer token"),
            6,
            "missing bearer token",
        ),
        (
            Canned::error(403, "forbidden", "viewer cannot do that"),
            6,
            "viewer cannot do that",
        ),
        (
            Canned::error(404, "not_found", "rollout 'nope' not found"),
            4,
            "rollout 'nope' not found",
        ),
        (
            Canned::error(409, "conflict", "cannot start a draft"),
            5,
            "cannot start a draft",
        ),
        (
            Canned::error(500, "internal", "internal error"),
            7,
            "internal error",
        ),
        (
            Canned::error(503, "unavailable", "storage unavailable").header("retry-after", "3"),
            7,
            "retry after 3s",
        ),
    ];
    for (canned, code, text) in cases {
        let status = canned.status;
        let cp = FakeCp::start(canned);
        let out = run(
            &["rollout", "start", "nope", "--server", &cp.url],
            &[],
            None,
        );
        assert_eq!(out.code(), code, "status {status}: {}", out.stderr_str());
        let line = out.error_line();
        assert!(line.contains(text), "status {status}: {line}");
        assert!(
            line.contains(&status.to_string()),
            "status {status}: {line}"
        );
        assert!(out.stdout.is_empty(), "status {status}");
    }
}

#[test]
fn a_non_json_answer_is_an_error_quoting_the_status_and_body() {
    let cp = FakeCp::start(Canned {
        status: 200,
        headers: vec![("content-type".into(), "text/html".into())],
        body: "<html>proxy login</html>".into(),
    });
    let out = run(&["rollout", "get", "x", "--server", &cp.url], &[], None);
    out.assert_code(1);
    let line = out.error_line();
    assert!(
        line.contains("200") && line.contains("<html>proxy login"),
        "{line}"
    );

    // The same in json mode: the output must be JSON, so this is no pass-through.
    let out = run(
        &["rollout", "get", "x", "--server", &cp.url, "-o", "json"],
        &[],
        None,
    );
    out.assert_code(1);
    assert!(out.stdout.is_empty());

    // An error status with a non-JSON body still maps by status and quotes the body.
    let cp = FakeCp::start(Canned {
        status: 502,
        headers: vec![],
        body: "Bad Gateway".into(),
    });
    let out = run(&["health", "--server", &cp.url], &[], None);
    out.assert_code(7);
    assert!(out.error_line().contains("Bad Gateway"));
}

#[test]
fn requests_carry_token_operator_idempotency_key_and_json_body() {
    let answer = serde_json::json!({
        "outcome": "success", "execution_id": "ex-1", "target": "rollout_plan",
        "resource": "web-1", "strategy": "retry", "from_phase": "active", "to_phase": "active",
        "dry_run": false, "audit_event_id": "ev-9", "message": "re-dispatched"
    });
    let cp = FakeCp::start(Canned::json(200, &answer.to_string()));
    let out = run(
        &[
            "--operator",
            "val11-chaos-op",
            "rollback",
            "execute",
            "--target",
            "rollout_plan",
            "--resource",
            "web-1",
            "--strategy",
            "retry",
            "--reason",
            "chaos test",
            "--idempotency-key",
            "k-1",
        ],
        &[("AUTONOMY_SERVER", &cp.url), ("AUTONOMY_TOKEN", "s3cret")],
        None,
    );
    out.assert_code(0);
    assert_eq!(
        out.stdout_str(),
        "outcome=success execution_id=ex-1 resource=web-1 strategy=retry from_phase=active \
         to_phase=active dry_run=false audit_event_id=ev-9 message=re-dispatched\n"
    );
    let seen = cp.seen();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(
        (req.method.as_str(), req.target.as_str()),
        ("POST", "/v1/rollback/execute")
    );
    assert_eq!(req.header("authorization"), Some("Bearer s3cret"));
    assert_eq!(req.header("x-autonomy-operator"), Some("val11-chaos-op"));
    assert_eq!(req.header("idempotency-key"), Some("k-1"));
    assert_eq!(req.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(&req.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"target": "rollout_plan", "resource": "web-1", "strategy": "retry",
                           "reason": "chaos test", "dry_run": false})
    );

    // Without a token or operator, neither header is sent; -o json prints the body unchanged.
    let cp2 = FakeCp::start(Canned::json(200, &answer.to_string()));
    let out = run(
        &[
            "rollback",
            "execute",
            "--resource",
            "web-1",
            "--strategy",
            "retry",
            "--reason",
            "r",
            "-o",
            "json",
        ],
        &[("AUTONOMY_SERVER", &cp2.url)],
        None,
    );
    out.assert_code(0);
    assert_eq!(out.json(), answer);
    let req = &cp2.seen()[0];
    assert_eq!(req.header("authorization"), None);
    assert_eq!(req.header("x-autonomy-operator"), None);
}

#[test]
fn query_flags_are_sent_percent_encoded() {
    let cp = FakeCp::start(Canned::json(200, r#"{"items":[]}"#));
    let out = run(
        &[
            "audit",
            "query",
            "--event-type",
            "rollback.executed",
            "--actor",
            "val11 op",
            "--start-time",
            "2026-01-01T00:00:00+01:00",
            "--limit",
            "5",
            "--server",
            &cp.url,
        ],
        &[],
        None,
    );
    out.assert_code(0);
    assert_eq!(
        out.stdout_str().trim(),
        "SEQ  TIME  EVENT_TYPE  ACTOR  RESOURCE  OUTCOME"
    );
    let target = &cp.seen()[0].target;
    assert!(target.starts_with("/v1/audit/events?"), "{target}");
    for part in [
        "event_type=rollback.executed",
        "actor=val11%20op",
        "start_time=2026-01-01T00%3A00%3A00%2B01%3A00",
        "limit=5",
    ] {
        assert!(target.contains(part), "{part} missing from {target}");
    }
}

#[test]
fn ids_cannot_escape_their_path_segment() {
    let cp = FakeCp::start(Canned::error(404, "not_found", "no such rollout"));
    for (id, path) in [
        ("a/../b", "/v1/rollouts/a%2F..%2Fb"),
        ("..", "/v1/rollouts/%2E%2E"),
        ("a b", "/v1/rollouts/a%20b"),
    ] {
        run(&["rollout", "get", id, "--server", &cp.url], &[], None).assert_code(4);
        assert_eq!(cp.seen().last().unwrap().target, path);
    }
}

#[test]
fn help_documents_exit_codes_and_every_command_has_examples() {
    let out = run(&["--help"], &[], None);
    out.assert_code(0);
    let help = out.stdout_str();
    assert!(help.contains("Exit codes:"), "{help}");
    for code in [
        "0  success",
        "1  other error",
        "2  usage error",
        "3  the control plane could not be reached",
        "4  not found",
        "5  conflict",
        "6  unauthenticated",
        "7  the control plane answered 5xx",
    ] {
        assert!(help.contains(code), "root --help lacks '{code}'");
    }
    let verbs: &[&[&str]] = &[
        &["health"],
        &["rollout", "create"],
        &["rollout", "get"],
        &["rollout", "list"],
        &["rollout", "stuck"],
        &["rollout", "publish"],
        &["rollout", "start"],
        &["rollout", "pause"],
        &["rollout", "resume"],
        &["rollback", "execute"],
        &["audit", "query"],
        &["audit", "verify"],
        &["token", "create"],
        &["token", "list"],
        &["token", "revoke"],
    ];
    for verb in verbs {
        let mut args = verb.to_vec();
        args.push("--help");
        let out = run(&args, &[], None);
        out.assert_code(0);
        let help = out.stdout_str();
        assert!(
            help.contains("Examples:"),
            "{verb:?} --help has no examples:\n{help}"
        );
        assert!(
            help.contains(&format!("autonomy {}", verb.join(" "))),
            "{verb:?}: {help}"
        );
    }
}

#[test]
fn the_token_never_shows_in_help() {
    let out = run(&["--help"], &[("AUTONOMY_TOKEN", "s3cret-value")], None);
    out.assert_code(0);
    assert!(!out.stdout_str().contains("s3cret-value"));
    assert!(out.stdout_str().contains("AUTONOMY_TOKEN"));
    let out = run(
        &["rollout", "list", "--help"],
        &[("AUTONOMY_TOKEN", "s3cret-value")],
        None,
    );
    assert!(!out.stdout_str().contains("s3cret-value"));
}

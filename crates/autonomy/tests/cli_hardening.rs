//! The CLI findings of the black-box probe (issue 14, SPEC §3 and §10), each against the real
//! binary: answers of the wrong shape, `--server` URLs with a path, bounded `-f` reads,
//! `serve --rbac-enforcement 0|1` and empty environment variables, `serve --help` without
//! the client flags, and escaped control characters in text output.

mod common;

use common::{run, silent_listener, Canned, Cp, FakeCp, OutputExt, TestDir};

/// A plan resource as the CP answers it, with `id` and `artifact_ref` as given.
fn rollout_json(id: &str, artifact_ref: &str) -> serde_json::Value {
    serde_json::json!({
        "plan": {
            "metadata": {
                "id": id, "labels": {}, "created_at": "2026-01-01T00:00:00Z",
                "updated_at": "2026-01-01T00:00:00Z", "created_by": "alice", "generation": 1
            },
            "spec": {"artifact_ref": artifact_ref, "targets": {}, "stages": []}
        },
        "status": {
            "phase": "published", "phase_changed_at": "2026-01-01T00:00:00Z",
            "last_progress_at": "2026-01-01T00:00:00Z", "warnings": [], "history": []
        }
    })
}

/// Every client verb that prints an answer of the CP, with the arguments it needs.
const PRINTING_VERBS: &[&[&str]] = &[
    &["health"],
    &["rollout", "create", "--artifact-ref", "oci://r/a"],
    &["rollout", "get", "web-1"],
    &["rollout", "list"],
    &["rollout", "stuck"],
    &["rollout", "publish", "web-1"],
    &["rollout", "start", "web-1"],
    &["rollout", "pause", "web-1"],
    &["rollout", "resume", "web-1"],
    &[
        "rollback",
        "execute",
        "--resource",
        "web-1",
        "--strategy",
        "retry",
        "--reason",
        "r",
    ],
    &["audit", "query"],
    &["token", "create", "--operator", "bob", "--role", "viewer"],
    &["token", "list"],
    &["token", "revoke", "tok-1"],
];

// ---------------------------------------------------------------------------------------------
// 1. Answers of the wrong shape
// ---------------------------------------------------------------------------------------------

#[test]
fn a_2xx_answer_of_the_wrong_shape_fails_with_exit_1_in_text_and_json_modes() {
    for body in [r#"{"unexpected":true}"#, "[1,2,3]", "null"] {
        let cp = FakeCp::start(Canned::json(200, body));
        for verb in PRINTING_VERBS {
            for format in ["text", "json"] {
                let mut args = verb.to_vec();
                args.extend(["--server", &cp.url, "-o", format]);
                let out = run(&args, &[], None);
                assert_eq!(
                    out.code(),
                    1,
                    "{args:?} on {body}: exit {}\n--- stdout:\n{}\n--- stderr:\n{}",
                    out.code(),
                    out.stdout_str(),
                    out.stderr_str()
                );
                assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout_str());
                let line = out.error_line();
                assert!(
                    line.contains("answered 200") && line.contains("unexpected body"),
                    "{args:?}: {line}"
                );
            }
        }
    }
}

#[test]
fn the_exit_code_of_an_unexpected_answer_is_documented() {
    let out = run(&["--help"], &[], None);
    out.assert_code(0);
    assert!(
        out.stdout_str()
            .contains("an answer of the control plane that is not the expected JSON"),
        "{}",
        out.stdout_str()
    );
    assert_no_raw_dangerous("--help", &out.stdout_str());
}

// ---------------------------------------------------------------------------------------------
// 2. --server with a path, a query or a fragment
// ---------------------------------------------------------------------------------------------

#[test]
fn a_server_url_with_a_path_query_or_fragment_is_a_usage_error() {
    let cp = FakeCp::start(Canned::json(
        200,
        r#"{"status":"ok","version":"0.1.0","store":"sqlite"}"#,
    ));
    let cases = [
        (format!("{}/v1", cp.url), "path '/v1'"),
        (format!("{}/v1/", cp.url), "path '/v1/'"),
        (format!("{}//", cp.url), "path '//'"),
        (format!("{}?x=1", cp.url), "query"),
        (format!("{}/?", cp.url), "query"),
        (format!("{}#top", cp.url), "fragment"),
    ];
    for (url, problem) in &cases {
        for from_env in [false, true] {
            let out = if from_env {
                run(&["health"], &[("AUTONOMY_SERVER", url)], None)
            } else {
                run(&["health", "--server", url], &[], None)
            };
            out.assert_code(2);
            let line = out.error_line();
            assert!(
                line.contains("--server") && line.contains(problem),
                "{url} (env: {from_env}): {line}"
            );
        }
    }
    assert!(cp.seen().is_empty(), "a usage error must send nothing");

    // A bare host, with or without the root path, still works.
    for url in [cp.url.clone(), format!("{}/", cp.url)] {
        run(&["health", "--server", &url], &[], None).assert_code(0);
    }
    assert_eq!(cp.seen().len(), 2);
    assert!(cp.seen().iter().all(|s| s.target == "/v1/health"));
}

// ---------------------------------------------------------------------------------------------
// 3. -f FILE is read up to 1 MiB
// ---------------------------------------------------------------------------------------------

/// A valid create request of exactly `size` bytes.
fn plan_of_size(size: usize) -> String {
    let head = r#"{"spec":{"artifact_ref":"oci://r/a"},"metadata":{"labels":{"pad":""#;
    let tail = r#""}}}"#;
    let pad = size - head.len() - tail.len();
    let plan = format!("{head}{}{tail}", "x".repeat(pad));
    assert_eq!(plan.len(), size);
    serde_json::from_str::<serde_json::Value>(&plan).unwrap();
    plan
}

#[test]
fn plan_files_and_stdin_are_read_up_to_1_mib() {
    const MIB: usize = 1024 * 1024;
    let dir = TestDir::new("plan-size");
    let cp = FakeCp::start(Canned::json(
        201,
        &rollout_json("web-1", "oci://r/a").to_string(),
    ));

    // Exactly 1 MiB is read and sent as is.
    let fits = dir.path().join("fits.json");
    std::fs::write(&fits, plan_of_size(MIB)).unwrap();
    let out = run(
        &[
            "rollout",
            "create",
            "-f",
            fits.to_str().unwrap(),
            "--server",
            &cp.url,
        ],
        &[],
        None,
    );
    out.assert_code(0);
    assert_eq!(cp.seen().len(), 1);
    assert_eq!(cp.seen()[0].body.len(), MIB);

    // One byte more is refused before anything is sent, from a file and from stdin.
    let big = plan_of_size(MIB + 1);
    let too_big = dir.path().join("too-big.json");
    std::fs::write(&too_big, &big).unwrap();
    let out = run(
        &[
            "rollout",
            "create",
            "-f",
            too_big.to_str().unwrap(),
            "--server",
            &cp.url,
        ],
        &[],
        None,
    );
    out.assert_code(2);
    let line = out.error_line();
    assert!(
        line.contains(too_big.to_str().unwrap()) && line.contains("larger than 1 MiB"),
        "{line}"
    );
    let out = run(
        &["rollout", "create", "-f", "-", "--server", &cp.url],
        &[],
        Some(big.as_bytes()),
    );
    out.assert_code(2);
    let line = out.error_line();
    assert!(
        line.contains("stdin") && line.contains("larger than 1 MiB"),
        "{line}"
    );

    // An endless file ends at the bound instead of exhausting memory.
    let out = run(
        &["rollout", "create", "-f", "/dev/zero", "--server", &cp.url],
        &[],
        None,
    );
    out.assert_code(2);
    assert!(out.error_line().contains("larger than 1 MiB"));
    assert_eq!(cp.seen().len(), 1, "nothing more may have been sent");
}

#[test]
fn a_missing_or_unreadable_plan_file_is_a_usage_error_naming_it() {
    let (_listener, url) = silent_listener();
    let dir = TestDir::new("plan-missing");
    let missing = dir.path().join("no-such-plan.json");
    let not_utf8 = dir.path().join("latin1.json");
    std::fs::write(&not_utf8, b"{\"spec\":{\"artifact_ref\":\"caf\xe9\"}}").unwrap();
    for (path, why) in [
        (missing.as_path(), "no such file"),
        (dir.path(), "directory"),
        (not_utf8.as_path(), "UTF-8"),
    ] {
        let path = path.to_str().unwrap();
        let out = run(
            &["rollout", "create", "-f", path, "--server", &url],
            &[],
            None,
        );
        out.assert_code(2);
        let line = out.error_line();
        assert!(
            line.contains(path) && line.to_lowercase().contains(&why.to_lowercase()),
            "{path}: {line}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4. serve --rbac-enforcement 0|1 and empty environment variables
// ---------------------------------------------------------------------------------------------

#[test]
fn serve_rbac_enforcement_takes_0_and_1_on_the_command_line() {
    // The flag wins over the environment, both ways.
    let cp = Cp::start(
        &["--rbac-enforcement", "0"],
        &[("AUTONOMY_RBAC_ENFORCEMENT", "1")],
    );
    assert_eq!(cp.get("/v1/rollouts", &[]).0, 200);
    drop(cp);
    let cp = Cp::start(
        &["--rbac-enforcement=1"],
        &[("AUTONOMY_RBAC_ENFORCEMENT", "0")],
    );
    assert_eq!(cp.get("/v1/rollouts", &[]).0, 401);
    drop(cp);

    let out = run(&["serve", "--rbac-enforcement", "maybe"], &[], None);
    out.assert_code(2);
    assert!(out.error_line().contains("--rbac-enforcement"));
    let out = run(&["serve", "--help"], &[], None);
    assert!(out.stdout_str().contains("--rbac-enforcement [<0|1>]"));
}

#[test]
fn empty_environment_variables_count_as_unset_for_serve() {
    // Empty: RBAC on (the default), the audit dir under the data dir, no PostgreSQL URL, the
    // default artifact policy and shutdown timeout.
    let cp = Cp::start(
        &[],
        &[
            ("AUTONOMY_RBAC_ENFORCEMENT", ""),
            ("AUTONOMY_AUDIT_DIR", ""),
            ("AUTONOMY_DATABASE_URL", ""),
            ("AUTONOMY_ARTIFACT_POLICY", ""),
            ("AUTONOMY_SHUTDOWN_TIMEOUT", ""),
            ("AUTONOMY_AUDIT_SEGMENT_BYTES", ""),
        ],
    );
    assert_eq!(cp.get("/v1/rollouts", &[]).0, 401);
    assert!(cp.data_dir().join("audit").is_dir());
}

#[test]
fn empty_environment_variables_count_as_unset_for_client_verbs() {
    let empty = [
        ("AUTONOMY_TOKEN", ""),
        ("AUTONOMY_OPERATOR", ""),
        ("AUTONOMY_OUTPUT", ""),
        ("AUTONOMY_TIMEOUT", ""),
        ("AUTONOMY_AUDIT_DIR", ""),
        ("AUTONOMY_DATA_DIR", ""),
    ];
    let cp = FakeCp::start(Canned::json(200, r#"{"items":[]}"#));
    // AUTONOMY_AUDIT_DIR= asks the CP instead of reading a directory named "".
    let out = run(&["audit", "query", "--server", &cp.url], &empty, None);
    out.assert_code(0);
    assert_eq!(
        out.stdout_str(),
        "SEQ  TIME  EVENT_TYPE  ACTOR  RESOURCE  OUTCOME\n"
    );
    let seen = cp.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/v1/audit/events");
    assert_eq!(seen[0].header("authorization"), None);
    assert_eq!(seen[0].header("x-autonomy-operator"), None);

    // AUTONOMY_SERVER= is the default address, not an error (the offline query never uses it).
    let dir = TestDir::new("empty-env");
    let out = run(
        &[
            "audit",
            "query",
            "--audit-dir",
            dir.path().to_str().unwrap(),
        ],
        &[("AUTONOMY_SERVER", "")],
        None,
    );
    out.assert_code(0);
}

// ---------------------------------------------------------------------------------------------
// 5. serve --help shows only serve's flags; client flags keep their positions
// ---------------------------------------------------------------------------------------------

const CLIENT_FLAGS: &[&str] = &["--server", "--token", "--operator", "--output", "--timeout"];

#[test]
fn serve_help_shows_only_serve_flags() {
    let out = run(&["serve", "--help"], &[], None);
    out.assert_code(0);
    let help = out.stdout_str();
    for flag in [
        "--listen",
        "--data-dir",
        "--audit-dir",
        "--rbac-enforcement",
    ] {
        assert!(help.contains(flag), "serve --help lacks {flag}:\n{help}");
    }
    for flag in CLIENT_FLAGS {
        assert!(!help.contains(flag), "serve --help lists {flag}:\n{help}");
    }
    assert!(!help.contains("-o,"), "{help}");

    // The root help still documents them, and every client verb still takes them.
    let root = run(&["--help"], &[], None).stdout_str();
    for flag in CLIENT_FLAGS {
        assert!(root.contains(flag), "--help lacks {flag}");
    }
    let get = run(&["rollout", "get", "--help"], &[], None).stdout_str();
    for flag in ["--server", "--token", "--output", "--timeout"] {
        assert!(
            get.contains(flag),
            "rollout get --help lacks {flag}:\n{get}"
        );
    }
}

#[test]
fn serve_refuses_client_flags_in_any_position() {
    // `--database-url` makes a serve that got this far stop at once (exit 1), without
    // touching anything: refusing the client flag must come first (exit 2).
    for args in [
        &[
            "serve",
            "--server",
            "http://127.0.0.1:9",
            "--database-url",
            "postgres://x",
        ][..],
        &["serve", "--token", "t", "--database-url", "postgres://x"],
        &["serve", "-o", "json", "--database-url", "postgres://x"],
        &["--token", "t", "serve", "--database-url", "postgres://x"],
        &["--timeout", "3", "serve", "--database-url", "postgres://x"],
        &[
            "--operator",
            "alice",
            "serve",
            "--database-url",
            "postgres://x",
        ],
    ] {
        let out = run(args, &[], None);
        out.assert_code(2);
        let flag = args
            .iter()
            .find(|a| a.starts_with('-') && **a != "--database-url")
            .unwrap();
        let line = out.error_line();
        assert!(line.contains(flag), "{args:?}: {line}");
    }

    // The same variables in the environment are for client verbs: serve ignores them.
    let cp = Cp::start(
        &[],
        &[
            ("AUTONOMY_SERVER", "http://127.0.0.1:9"),
            ("AUTONOMY_TOKEN", "t"),
            ("AUTONOMY_OUTPUT", "json"),
            ("AUTONOMY_TIMEOUT", "3"),
            ("AUTONOMY_OPERATOR", "alice"),
        ],
    );
    assert_eq!(cp.get("/v1/health", &[]).0, 200);
}

/// Arguments, environment, and the token the request must carry.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn client_flags_work_before_and_after_the_verb() {
    let body = rollout_json("web-1", "oci://r/a");
    let cp = FakeCp::start(Canned::json(200, &body.to_string()));
    let url = cp.url.as_str();
    let cases: &[Case] = &[
        (
            &["--token", "t1", "--server", url, "rollout", "get", "web-1"],
            &[],
            "t1",
        ),
        (
            &["rollout", "get", "web-1", "--token", "t2", "--server", url],
            &[],
            "t2",
        ),
        (
            &["rollout", "--token", "t3", "get", "web-1", "--server", url],
            &[],
            "t3",
        ),
        // A flag anywhere beats the environment; after the verb beats before it.
        (
            &["--token", "t4", "rollout", "get", "web-1"],
            &[("AUTONOMY_TOKEN", "env"), ("AUTONOMY_SERVER", url)],
            "t4",
        ),
        (
            &["--token", "t5", "rollout", "get", "web-1", "--token", "t6"],
            &[("AUTONOMY_SERVER", url)],
            "t6",
        ),
        (
            &["rollout", "get", "web-1"],
            &[("AUTONOMY_TOKEN", "t7"), ("AUTONOMY_SERVER", url)],
            "t7",
        ),
    ];
    for (i, (args, env, token)) in cases.iter().enumerate() {
        let out = run(args, env, None);
        out.assert_code(0);
        assert!(out.stdout_str().starts_with("id=web-1 "), "{args:?}");
        let seen = cp.seen();
        assert_eq!(seen.len(), i + 1);
        assert_eq!(
            seen[i].header("authorization"),
            Some(format!("Bearer {token}").as_str()),
            "{args:?} {env:?}"
        );
    }

    // -o and --timeout at the root, --operator before the verb.
    let out = run(
        &[
            "-o",
            "json",
            "--timeout",
            "5",
            "--operator",
            "alice",
            "rollout",
            "get",
            "web-1",
            "--server",
            url,
        ],
        &[],
        None,
    );
    out.assert_code(0);
    assert_eq!(out.json(), body);
    assert_eq!(
        cp.seen().last().unwrap().header("x-autonomy-operator"),
        Some("alice")
    );
    // A bad --server at the root is still a usage error.
    let out = run(&["--server", "ftp://x", "health"], &[], None);
    out.assert_code(2);
    assert!(out.error_line().contains("--server"));
}

// ---------------------------------------------------------------------------------------------
// 6. Text output escapes control, bidi-override and zero-width characters
// ---------------------------------------------------------------------------------------------

/// Characters that must never reach a terminal raw.
const DANGEROUS: &[char] = &[
    '\u{1b}', '\u{7}', '\u{0}', '\u{7f}', '\u{9b}', '\u{202a}', '\u{202e}', '\u{2066}', '\u{2069}',
    '\u{200b}', '\u{200d}', '\u{2060}', '\u{feff}',
];

fn assert_no_raw_dangerous(what: &str, text: &str) {
    for c in DANGEROUS {
        assert!(
            !text.contains(*c),
            "{what} holds a raw U+{:04X}: {text:?}",
            *c as u32
        );
    }
}

#[test]
fn text_output_escapes_control_bidi_and_zero_width_characters() {
    // The probe's case: an audit event whose resource clears the screen.
    let event = serde_json::json!({
        "seq": 1, "id": "ev-1", "time": "2026-01-01T00:00:00Z",
        "event_type": "auth.denied\u{200b}", "actor": "ali\u{202e}ecila",
        "target": "rollout_plan", "resource": "\u{1b}[2J\u{9b}31m\u{7}",
        "outcome": "denied", "reason": "", "request_id": "r-1", "details": {},
        "prev_hash": "", "hash": "h"
    });
    let body = serde_json::json!({ "items": [event] }).to_string();
    let cp = FakeCp::start(Canned::json(200, &body));
    let out = run(&["audit", "query", "--server", &cp.url], &[], None);
    out.assert_code(0);
    let text = out.stdout_str();
    assert_no_raw_dangerous("audit query", &text);
    for escaped in [
        r"\u{1b}[2J\u{9b}31m\u{7}",
        r"ali\u{202e}ecila",
        r"auth.denied\u{200b}",
    ] {
        assert!(text.contains(escaped), "lacks {escaped}: {text}");
    }
    // -o json is the API's JSON unchanged.
    let out = run(
        &["audit", "query", "--server", &cp.url, "-o", "json"],
        &[],
        None,
    );
    out.assert_code(0);
    assert_eq!(out.stdout_str(), format!("{body}\n"));

    // A logfmt line: every dangerous character in a plan's id and artifact.
    let id: String = DANGEROUS.iter().collect();
    let artifact = "oci://r/a\u{2066}@sha256:\u{feff}abc";
    let cp = FakeCp::start(Canned::json(200, &rollout_json(&id, artifact).to_string()));
    let out = run(&["rollout", "get", "x", "--server", &cp.url], &[], None);
    out.assert_code(0);
    let text = out.stdout_str();
    assert_no_raw_dangerous("rollout get", &text);
    assert!(
        text.starts_with(
            r#"id="\u{1b}\u{7}\u{0}\u{7f}\u{9b}\u{202a}\u{202e}\u{2066}\u{2069}\u{200b}\u{200d}\u{2060}\u{feff}" "#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"artifact_ref="oci://r/a\u{2066}@sha256:\u{feff}abc""#),
        "{text}"
    );

    // A table: the same in a plan list.
    let list = serde_json::json!({"items": [rollout_json(&id, artifact)], "next_cursor": null});
    let cp = FakeCp::start(Canned::json(200, &list.to_string()));
    let out = run(&["rollout", "list", "--server", &cp.url], &[], None);
    out.assert_code(0);
    assert_no_raw_dangerous("rollout list", &out.stdout_str());

    // The error line: a message of the CP echoing a hostile id.
    let cp = FakeCp::start(Canned::error(
        404,
        "not_found",
        "no rollout plan '\u{1b}[2J\u{202e}'",
    ));
    let out = run(&["rollout", "get", "x", "--server", &cp.url], &[], None);
    out.assert_code(4);
    let line = out.error_line();
    assert_no_raw_dangerous("the error line", &line);
    assert!(line.contains(r"'\u{1b}[2J\u{202e}'"), "{line}");
}

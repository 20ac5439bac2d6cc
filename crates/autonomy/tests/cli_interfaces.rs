//! The interfaces an operator's tooling expects from the binary (issue 15, SPEC §10): shell
//! completions and man pages generated from the clap definitions, `serve --log-format` and
//! `X-Request-Id`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{run, run_bounded, Cp, OutputExt, TestDir, CLI_LIMIT};

/// Runs `bash -c SCRIPT` with `autonomy` (the binary under test) sourced from its completions.
fn bash_with_completions(dir: &TestDir, script: &str) -> std::process::Output {
    let out = run(&["completions", "bash"], &[], None);
    out.assert_code(0);
    let file = dir.path().join("autonomy.bash");
    std::fs::write(&file, &out.stdout).unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg("--norc")
        .arg("-c")
        .arg(format!("source {} && {script}", file.display()));
    run_bounded(cmd, None, CLI_LIMIT)
}

#[test]
fn bash_completion_loads_and_completes_commands_and_flags() {
    let dir = TestDir::new("completions");
    let out = bash_with_completions(&dir, "complete -p autonomy");
    out.assert_code(0);
    assert!(
        out.stdout_str().contains("-F _autonomy autonomy"),
        "{}",
        out.stdout_str()
    );

    // What TAB offers after `autonomy rollout ` and after `autonomy audit query --`.
    let complete = |words: &str| {
        let script = format!(
            "COMP_WORDS=({words}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); \
             COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; \
             _autonomy autonomy \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\""
        );
        let out = bash_with_completions(&dir, &script);
        out.assert_code(0);
        out.stdout_str()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let verbs = complete("autonomy rollout ''");
    for verb in ["create", "list", "stuck", "devices"] {
        assert!(verbs.iter().any(|v| v == verb), "{verb} not in {verbs:?}");
    }
    let flags = complete("autonomy audit query --");
    for flag in ["--event-type", "--audit-dir", "--server", "--output"] {
        assert!(flags.iter().any(|f| f == flag), "{flag} not in {flags:?}");
    }
}

#[test]
fn zsh_and_fish_completions_name_the_commands() {
    for shell in ["zsh", "fish"] {
        let out = run(&["completions", shell], &[], None);
        out.assert_code(0);
        let script = out.stdout_str();
        for word in ["rollout", "audit", "server", "audit-dir", "event-type"] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
    }
    let out = run(&["completions", "tcsh"], &[], None);
    out.assert_code(2);
    // A local verb takes no client flag after it.
    run(&["completions", "bash", "--server", "x:1"], &[], None).assert_code(2);
}

#[test]
fn man_page_renders_with_name_synopsis_and_every_command() {
    let out = run(&["man"], &[], None);
    out.assert_code(0);
    let page = out.stdout_str();
    assert!(
        page.starts_with(".ie") || page.contains(".TH autonomy 1"),
        "{page}"
    );
    for section in [
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH DESCRIPTION",
        ".SH SUBCOMMANDS",
    ] {
        assert!(page.contains(section), "no {section}:\n{page}");
    }
    for verb in ["serve", "rollout", "audit", "completions"] {
        assert!(page.contains(&format!("autonomy\\-{verb}(1)")), "no {verb}");
    }

    // `man -l` renders it, when man is installed (it is on CI's machine).
    if Command::new("man").arg("--version").output().is_ok() {
        let dir = TestDir::new("man-render");
        let file = dir.path().join("autonomy.1");
        std::fs::write(&file, page.as_bytes()).unwrap();
        let mut cmd = Command::new("man");
        cmd.arg("-l")
            .arg(&file)
            .env("MANPAGER", "cat")
            .env("COLUMNS", "100");
        let shown = run_bounded(cmd, None, CLI_LIMIT);
        shown.assert_code(0);
        let text = shown.stdout_str();
        assert!(text.contains("NAME") && text.contains("SYNOPSIS"), "{text}");
    }

    // --out-dir: one page per command, each with its own synopsis.
    let dir = TestDir::new("man-pages");
    let out_dir = dir.path().join("man1");
    let out = run(&["man", "--out-dir", out_dir.to_str().unwrap()], &[], None);
    out.assert_code(0);
    assert_eq!(out.stdout_str(), "");
    for name in [
        "autonomy.1",
        "autonomy-serve.1",
        "autonomy-rollout-create.1",
        "autonomy-audit-query.1",
    ] {
        let page =
            std::fs::read_to_string(out_dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(page.contains(".SH SYNOPSIS"), "{name}");
    }
    let page = std::fs::read_to_string(out_dir.join("autonomy-audit-query.1")).unwrap();
    assert!(page.contains("\\-\\-audit\\-dir"), "{page}");
}

// ---------------------------------------------------------------------------------------------
// serve --log-format, X-Request-Id
// ---------------------------------------------------------------------------------------------

/// One raw exchange with the CP: `(status, X-Request-Id of the answer, body)`.
fn exchange(
    cp: &Cp,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String, String) {
    let r = autonomy_testkit::http::call(
        method,
        &format!("{}{path}", cp.url),
        headers,
        body.map(str::as_bytes),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let id = r.header("x-request-id").unwrap_or("").to_string();
    (r.status, id, r.text().into_owned())
}

/// The CP's log lines, each parsed as JSON (fails the test on a line that is not).
fn json_log(cp: &Cp) -> Vec<serde_json::Value> {
    cp.stderr()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn json_logs_carry_each_request_once_and_a_client_request_id_reaches_the_audit_event() {
    let cp = Cp::start(&["--log-format", "json"], &[]);
    let given = "ops-trace.42_A-b";
    let body = r#"{"metadata":{"id":"traced-1"},"spec":{"artifact_ref":"oci://a"}}"#;
    let json = ("content-type", "application/json");
    let (status, id, text) = exchange(
        &cp,
        "POST",
        "/v1/rollouts",
        &[json, ("x-request-id", given)],
        Some(body),
    );
    assert_eq!(status, 201, "{text}");
    assert_eq!(id, given);

    // Ill-formed ids are replaced by a fresh one, never echoed.
    let long = "a".repeat(65);
    for bad in ["has space", "semi;colon", "ünï", long.as_str(), ""] {
        let (status, id, _) = exchange(&cp, "GET", "/v1/health", &[("x-request-id", bad)], None);
        assert_eq!(status, 200);
        assert!(id.starts_with("req_") && id != bad, "{bad:?} -> {id:?}");
    }
    let (_, id64, _) = exchange(
        &cp,
        "GET",
        "/v1/health",
        &[("x-request-id", &long[..64])],
        None,
    );
    assert_eq!(id64, &long[..64]);
    // Every answer has one: a 404 of no route, a 405, a 4xx of a handler.
    let (s404, id404, _) = exchange(&cp, "GET", "/v1/nope", &[], None);
    let (s405, id405, _) = exchange(&cp, "DELETE", "/v1/health", &[], None);
    let (s400, id400, _) = exchange(&cp, "POST", "/v1/rollouts", &[json], Some("{"));
    assert_eq!((s404, s405, s400), (404, 405, 400));
    for id in [&id404, &id405, &id400] {
        assert!(id.starts_with("req_"), "{id}");
    }

    // The audit event of the create carries the client's id.
    let (status, _, events) = exchange(&cp, "GET", "/v1/audit/events?resource=traced-1", &[], None);
    assert_eq!(status, 200, "{events}");
    let events: serde_json::Value = serde_json::from_str(&events).unwrap();
    let items = events["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{events}");
    assert_eq!(items[0]["request_id"], given);

    let (_, id_get, _) = exchange(&cp, "GET", "/v1/rollouts/traced-1?x=secret", &[], None);

    // Every log line is JSON; each request is one line with its fields.
    let log = json_log(&cp);
    let requests: Vec<&serde_json::Value> =
        log.iter().filter(|l| l["message"] == "request").collect();
    let of = |id: &str| -> Vec<&serde_json::Value> {
        requests
            .iter()
            .copied()
            .filter(|l| l["request_id"] == id)
            .collect()
    };
    let create = of(given);
    assert_eq!(create.len(), 1, "{requests:?}");
    assert_eq!(create[0]["method"], "POST");
    assert_eq!(create[0]["route"], "/v1/rollouts");
    assert_eq!(create[0]["status"], 201);
    assert_eq!(create[0]["level"], "INFO");
    assert!(
        create[0]["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{:?}",
        create[0]
    );
    assert!(create[0]["timestamp"].is_string());
    let one = |id: &str, route: &str, status: u16| {
        let lines = of(id);
        assert_eq!(lines.len(), 1, "{id}: {requests:?}");
        assert_eq!(lines[0]["route"], route, "{id}");
        assert_eq!(lines[0]["status"], status, "{id}");
    };
    one(&id404, "unmatched", 404);
    one(&id405, "/v1/health", 405);
    one(&id400, "/v1/rollouts", 400);
    one(&id_get, "/v1/rollouts/{id}", 200);
    // The route template, never the raw path or query.
    assert!(!cp.stderr().contains("secret"));
}

#[test]
fn text_logs_carry_each_request_and_the_format_is_checked() {
    let cp = Cp::start(&[], &[("AUTONOMY_LOG_FORMAT", "")]);
    let (status, id, _) = exchange(&cp, "GET", "/v1/rollouts", &[("x-request-id", "t-1")], None);
    assert_eq!((status, id.as_str()), (200, "t-1"));
    let log = cp.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("request_id=t-1"))
        .unwrap_or_else(|| panic!("no request line:\n{log}"));
    for field in [
        "method=GET",
        "route=/v1/rollouts",
        "status=200",
        "latency_ms=",
    ] {
        assert!(line.contains(field), "{field} not in {line}");
    }
    drop(cp);
    let out = run(&["serve", "--log-format", "xml"], &[], None);
    out.assert_code(2);
    assert!(out.error_line().contains("--log-format"));
}

// ---------------------------------------------------------------------------------------------
// /metrics
// ---------------------------------------------------------------------------------------------

/// `/metrics` as `(content type, samples name{labels} → value)`, every sample line checked
/// to be `name[{labels}] number` and the text to end with `# EOF`.
fn scrape(cp: &Cp) -> (String, Vec<(String, f64)>) {
    let r = autonomy_testkit::http::call(
        "GET",
        &format!("{}/metrics", cp.url),
        &[],
        None,
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let text = r.text().into_owned();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("not a number: {line}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(
            name.starts_with("autonomy_")
                && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{line}"
        );
        samples.push((series.to_string(), value));
    }
    (r.header("content-type").unwrap_or("").to_string(), samples)
}

fn value(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(s, _)| s == series)
        .unwrap_or_else(|| panic!("no {series} in {samples:?}"))
        .1
}

#[test]
fn metrics_count_requests_by_route_and_class_commits_and_device_polls() {
    let cp = Cp::start(&[], &[]);
    let json = ("content-type", "application/json");
    let body = r#"{"metadata":{"id":"m-1"},"spec":{"artifact_ref":"oci://a"}}"#;
    assert_eq!(cp.post("/v1/rollouts", &[json], body).0, 201);
    assert_eq!(cp.post("/v1/rollouts", &[json], body).0, 409);
    assert_eq!(cp.get("/v1/rollouts/m-1", &[]).0, 200);
    assert_eq!(cp.get("/v1/rollouts/nope", &[]).0, 404);
    assert_eq!(cp.get("/v1/no/such/route", &[]).0, 404);
    assert_eq!(cp.post("/v1/devices", &[json], r#"{"id":"amr-1"}"#).0, 201);
    let dev = ("x-autonomy-device", "amr-1");
    for _ in 0..3 {
        assert_eq!(cp.post("/v1/device/poll", &[json, dev], "{}").0, 200);
    }

    let (content_type, m) = scrape(&cp);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let req = |method: &str, route: &str, class: &str| {
        value(
            &m,
            &format!(
                "autonomy_http_requests_total{{method=\"{method}\",route=\"{route}\",class=\"{class}\"}}"
            ),
        )
    };
    assert_eq!(req("POST", "/v1/rollouts", "2xx"), 1.0);
    assert_eq!(req("POST", "/v1/rollouts", "4xx"), 1.0);
    assert_eq!(req("GET", "/v1/rollouts/{id}", "2xx"), 1.0);
    assert_eq!(req("GET", "/v1/rollouts/{id}", "4xx"), 1.0);
    assert_eq!(req("GET", "unmatched", "4xx"), 1.0);
    assert_eq!(req("POST", "/v1/device/poll", "2xx"), 3.0);
    let latency = |suffix: &str| {
        value(
            &m,
            &format!(
                "autonomy_http_request_duration_seconds_{suffix}{{method=\"GET\",route=\"/v1/rollouts/{{id}}\"}}"
            ),
        )
    };
    assert_eq!(latency("count"), 2.0);
    assert!(latency("sum") > 0.0);
    let inf = value(
        &m,
        "autonomy_http_request_duration_seconds_bucket{le=\"+Inf\",method=\"GET\",route=\"/v1/rollouts/{id}\"}",
    );
    assert_eq!(inf, 2.0);
    assert_eq!(value(&m, "autonomy_device_polls_total"), 3.0);
    assert_eq!(value(&m, "autonomy_device_reports_total"), 0.0);

    // The writer's batches and commit times: every commit in a bucket, counts cumulative.
    let commits = value(&m, "autonomy_store_commits_total");
    assert!(commits >= 2.0, "{commits}");
    assert_eq!(value(&m, "autonomy_store_batch_size_count"), commits);
    assert_eq!(
        value(&m, "autonomy_store_batch_size_bucket{le=\"+Inf\"}"),
        commits
    );
    assert_eq!(
        value(&m, "autonomy_store_batch_size_sum"),
        value(&m, "autonomy_store_committed_requests_total")
    );
    assert_eq!(
        value(&m, "autonomy_store_commit_duration_seconds_count"),
        commits
    );
    let buckets: Vec<f64> = m
        .iter()
        .filter(|(s, _)| s.starts_with("autonomy_store_commit_duration_seconds_bucket"))
        .map(|(_, v)| *v)
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(value(&m, "autonomy_store_queue_depth"), 0.0);
    assert_eq!(value(&m, "autonomy_audit_export_lag_events"), 0.0);
    // The names of before are still there.
    for series in [
        "autonomy_store_commit_microseconds_total",
        "autonomy_store_max_batch",
        "autonomy_audit_events_total",
        "autonomy_promoter_ticks_total",
        "autonomy_auth_denied_total",
        "autonomy_device_long_polls_waiting",
        "autonomy_plans{phase=\"published\"}",
        "autonomy_http_responses_total{class=\"2xx\"}",
        "autonomy_time_seconds",
    ] {
        value(&m, series);
    }
}

#[test]
fn the_openapi_document_is_served_and_names_every_device_route() {
    let cp = Cp::start(&[], &[("AUTONOMY_RBAC_ENFORCEMENT", "1")]);
    let (status, body) = cp.get("/v1/openapi.json", &[]);
    assert_eq!(status, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/v1/rollouts/{id}",
        "/v1/devices/{id}/labels",
        "/v1/device/reports",
        "/v1/enroll-keys",
        "/v1/audit/events",
    ] {
        assert!(doc["paths"][path].is_object(), "{path}");
    }
    let audit = &doc["paths"]["/v1/audit/events"]["get"]["parameters"];
    assert!(audit
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "cursor"));
}

#[test]
fn refusals_without_a_token_are_logged_at_most_once_a_second() {
    let cp = Cp::start(
        &["--log-format", "json", "--refusal-budget", "100000"],
        &[("AUTONOMY_RBAC_ENFORCEMENT", "1")],
    );
    let admin = format!("Bearer {}", cp.admin_token());
    let started = std::time::Instant::now();
    for _ in 0..200 {
        assert_eq!(cp.get("/v1/rollouts", &[]).0, 401);
        assert_eq!(cp.get("/v1/rollouts/BAD!", &[]).0, 400);
    }
    let (status, id, _) = exchange(
        &cp,
        "GET",
        "/v1/rollouts",
        &[("authorization", &admin)],
        None,
    );
    assert_eq!(status, 200);
    let seconds = started.elapsed().as_secs();

    let lines = || -> Vec<serde_json::Value> {
        json_log(&cp)
            .into_iter()
            .filter(|l| l["message"] == "request")
            .collect()
    };
    let refused = |lines: &[serde_json::Value]| -> Vec<serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["status"] == 401 || l["status"] == 400)
            .cloned()
            .collect()
    };
    let log = lines();
    let refusals = refused(&log);
    assert!(
        !refusals.is_empty() && refusals.len() as u64 <= seconds + 1,
        "{} refusal lines in {seconds} s",
        refusals.len()
    );
    // The operator's request is logged as always.
    assert_eq!(
        log.iter()
            .filter(|l| l["request_id"] == id.as_str())
            .count(),
        1
    );

    // The next refusal line, a second later, counts those left out.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(cp.get("/v1/rollouts", &[]).0, 401);
    let refusals = refused(&lines());
    let left_out: u64 = refusals
        .iter()
        .map(|l| l["refusals_not_logged"].as_u64().unwrap())
        .sum();
    assert_eq!(left_out + refusals.len() as u64, 401, "{refusals:?}");
}

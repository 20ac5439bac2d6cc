//! `autonomy fleet simulate` against a real CP (SPEC §9.5): the manifest and summary agree with
//! the CP's own device states, and the same seed gives the same fleet and the same outcome on
//! a second run.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{http, run_bounded, Cp, OutputExt, TestDir};
use serde_json::{json, Value};

const DEVICES: usize = 60;
const SEED: &str = "4242";

fn get(cp: &Cp, path: &str) -> Value {
    let (status, body) = http("GET", &format!("{}{path}", cp.url), &[], None);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn post(cp: &Cp, path: &str, body: Value) -> Value {
    let (status, text) = http(
        "POST",
        &format!("{}{path}", cp.url),
        &[("Content-Type", "application/json")],
        Some(body.to_string().as_bytes()),
    );
    assert!(status / 100 == 2, "POST {path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// The CP state a behaviour ends in once the plan settles (the timeout is 4 s).
fn expected(behaviour: &str) -> &'static str {
    match behaviour {
        // Undocked devices wait as `waiting_ready` until they dock (a few seconds), then verify.
        "healthy" | "undocked" => "verified",
        "failing" => "failed",
        "reverting" => "rolled_back",
        // Silent devices never report; false-success ones stay `verifying` (no reboot):
        // both time out.
        "silent" | "false_success" => "timed_out",
        _ => "?",
    }
}

/// One run on a fresh CP: the manifest, the summary and the CP's states by device.
fn one_run() -> (BTreeMap<String, String>, Value, BTreeMap<String, String>) {
    let dir = TestDir::new("fleet");
    let cp = Cp::start(&["--promoter-interval", "0.1"], &[]);
    let key = post(
        &cp,
        "/v1/enroll-keys",
        json!({"labels": {"fleet": "t"}, "max_uses": DEVICES, "ttl_seconds": 600}),
    )["key"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest = dir.path().join("manifest.json");
    let summary = dir.path().join("summary.json");
    let mut sim = common::autonomy();
    sim.args([
        "--server",
        &cp.url,
        "fleet",
        "simulate",
        "--devices",
        &DEVICES.to_string(),
        "--seed",
        SEED,
        "--failing",
        "0.1",
        "--silent",
        "0.1",
        "--false-success",
        "0.1",
        "--reverting",
        "0.1",
        "--undocked",
        "0.1",
        "--undocked-for",
        "2",
        "--step-seconds",
        "0.02",
        "--poll-wait",
        "1",
        "--duration",
        "50",
        "--progress-every",
        "2",
    ])
    .arg("--manifest")
    .arg(&manifest)
    .arg("--summary")
    .arg(&summary)
    .env("AUTONOMY_ENROLL_KEY", &key)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let mut child = sim.spawn().unwrap();

    // Every device enrolled, then a one-stage plan over them that never pauses.
    let t0 = Instant::now();
    while get(&cp, "/v1/devices?selector=fleet=t&limit=1000")["items"]
        .as_array()
        .unwrap()
        .len()
        < DEVICES
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "devices did not enroll"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let digest = format!("sha256:{}", "c".repeat(64));
    post(
        &cp,
        "/v1/rollouts",
        json!({"metadata": {"id": "fleet-1"},
               "spec": {"artifact_ref": format!("oci://r/app@{digest}"),
                        "targets": {"selector": {"fleet": "t"}},
                        "policy": {"failure_threshold": {"count": 1000},
                                   "success_threshold_pct": 50,
                                   "device_timeout_seconds": 8,
                                   "require": {"docked": true}}}}),
    );
    post(&cp, "/v1/rollouts/fleet-1/start", json!({}));
    let t0 = Instant::now();
    let plan = loop {
        let p = get(&cp, "/v1/rollouts/fleet-1");
        if p["status"]["phase"] == "completed" {
            break p;
        }
        // Silent devices time out after 8 s (room for a loaded CI box: a healthy device must
        // never be timed out by a slow machine).
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the plan did not complete: {}",
            p["status"]
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // SIGTERM ends the simulation: it writes its summary and exits 0.
    autonomy_testkit::process::signal(child.id(), autonomy_testkit::process::Signal::Term).unwrap();
    let status = autonomy_testkit::process::wait_bounded(&mut child, Duration::from_secs(20))
        .expect("the simulator did not exit within 20 s of SIGTERM");
    assert!(status.success(), "the simulator exited with {status}");
    let states: BTreeMap<String, String> = get(&cp, "/v1/rollouts/fleet-1/devices?limit=1000")
        ["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["device_id"].as_str().unwrap().to_string(),
                d["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(plan["status"]["rollout"]["stages"][0]["size"], DEVICES);
    let manifest: BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let summary: Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    (manifest, summary, states)
}

#[test]
fn the_simulators_manifest_and_summary_agree_with_the_cp_for_the_same_seed_twice() {
    let (manifest, summary, states) = one_run();
    assert_eq!(manifest.len(), DEVICES);
    // Every behaviour is there (the fractions make each ~10% of 60).
    let mut by: BTreeMap<&str, u64> = BTreeMap::new();
    for b in manifest.values() {
        *by.entry(b.as_str()).or_default() += 1;
    }
    for b in [
        "healthy",
        "failing",
        "silent",
        "false_success",
        "reverting",
        "undocked",
    ] {
        assert!(by.get(b).copied().unwrap_or(0) > 0, "no {b} device: {by:?}");
    }
    // The summary counts the same fleet.
    let counted: BTreeMap<String, u64> = summary["by_behaviour"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect();
    let want: BTreeMap<String, u64> = by.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(counted, want);
    assert_eq!(summary["enrolled"], DEVICES);
    assert_eq!(summary["cp_reached"], true);
    // And the CP's states follow the behaviours.
    for (id, b) in &manifest {
        assert_eq!(
            states.get(id).map(String::as_str),
            Some(expected(b)),
            "{id} ({b})"
        );
    }
    // The simulator's own view: silent devices went silent, the others reported their end.
    let local = &summary["by_local_state"];
    assert_eq!(local["silent"]["silent"], by["silent"]);
    assert_eq!(local["healthy"]["succeeded"], by["healthy"]);
    assert_eq!(local["undocked"]["succeeded"], by["undocked"]);
    assert_eq!(local["failing"]["failed"], by["failing"]);

    // The same seed again, on a fresh CP: the same fleet, the same outcome.
    let (manifest2, _, states2) = one_run();
    assert_eq!(manifest2, manifest);
    assert_eq!(states2, states);
}

#[test]
fn a_spent_enroll_key_exits_6_and_an_unreachable_cp_exits_3() {
    let cp = Cp::start(&[], &[]);
    let key = post(
        &cp,
        "/v1/enroll-keys",
        json!({"max_uses": 1, "ttl_seconds": 600}),
    )["key"]
        .as_str()
        .unwrap()
        .to_string();
    let mut sim = common::autonomy();
    sim.args([
        "--server",
        &cp.url,
        "fleet",
        "simulate",
        "--devices",
        "3",
        "--duration",
        "10",
    ])
    .env("AUTONOMY_ENROLL_KEY", &key);
    let out = run_bounded(sim, None, Duration::from_secs(30));
    out.assert_code(6);

    let port = common::free_port();
    let mut sim = common::autonomy();
    sim.args([
        "--server",
        &format!("http://127.0.0.1:{port}"),
        "fleet",
        "simulate",
        "--devices",
        "2",
        "--duration",
        "2",
        "--enroll-key",
        "aut_0123456789abcdef0123456789abcdef",
    ]);
    let out = run_bounded(sim, None, Duration::from_secs(30));
    out.assert_code(3);
    assert_eq!(out.json()["cp_reached"], false);
}

//! The rollout engine (SPEC §8, §9.1–§9.3) against the real `autonomy serve`, with the test
//! speaking HTTP as the devices (the test kit's scripted [`Device`]): stages, gates, verified
//! success, failures and thresholds, timeouts, recovery on devices, drift, every stuck code,
//! the registry and its identities, bad input, and SIGKILLs during a rollout.
//!
//! Every wait polls a condition against a deadline; the promoter ticks every 0.1 s.

mod common;

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use autonomy_testkit::device::{Assignment, Device};
use common::Cp;
use serde_json::{json, Value};

/// The promoter interval every CP here runs with.
const TICK: &str = "0.1";
/// How long any engine step may take to show.
const LIMIT: Duration = Duration::from_secs(15);

fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

/// The digest every plan here rolls out.
fn target() -> String {
    digest('a')
}

/// What the devices run before.
fn old() -> String {
    digest('0')
}

fn artifact() -> String {
    format!("oci://reg/app@{}", target())
}

// ---------------------------------------------------------------------------------------------
// The CP and its operator API
// ---------------------------------------------------------------------------------------------

/// A CP with RBAC off and a fast promoter, plus `extra` flags.
fn serve(extra: &[&str]) -> Cp {
    let mut args = vec!["--promoter-interval", TICK];
    args.extend_from_slice(extra);
    Cp::start(&args, &[])
}

fn parse(status: u16, body: &str) -> (u16, Value) {
    let v = serde_json::from_str(body).unwrap_or_else(|e| panic!("HTTP {status}: {e}: {body}"));
    (status, v)
}

fn get(cp: &Cp, path: &str) -> (u16, Value) {
    let (s, b) = cp.get(path, &[]);
    parse(s, &b)
}

fn post(cp: &Cp, path: &str, body: &Value) -> (u16, Value) {
    let (s, b) = cp.post(
        path,
        &[("content-type", "application/json")],
        &body.to_string(),
    );
    parse(s, &b)
}

/// `GET path`, which must answer 200.
fn get_ok(cp: &Cp, path: &str) -> Value {
    let (s, v) = get(cp, path);
    assert_eq!(s, 200, "GET {path}: {v}");
    v
}

/// `POST path`, which must answer `want`.
fn post_want(cp: &Cp, path: &str, body: &Value, want: u16) -> Value {
    let (s, v) = post(cp, path, body);
    assert_eq!(s, want, "POST {path} {body}: {v}");
    v
}

/// Registers `n` devices `{prefix}-{i}` with `labels`, running [`old`].
fn devices(cp: &Cp, prefix: &str, n: usize, labels: &Value) -> Vec<Device> {
    (0..n)
        .map(|i| {
            Device::register(&cp.url, &[], &format!("{prefix}-{i}"), labels, &old())
                .unwrap_or_else(|e| panic!("register: {e}"))
        })
        .collect()
}

/// Creates an engine-driven plan over the devices labelled `group=<group>`.
fn create(cp: &Cp, id: &str, group: &str, stages: Value, policy: Value) -> Value {
    let stages = if stages.is_null() {
        json!([{"name": "all"}])
    } else {
        stages
    };
    let mut spec = json!({
        "artifact_ref": artifact(),
        "targets": {"selector": {"group": group}},
        "stages": stages,
    });
    if !policy.is_null() {
        spec["policy"] = policy;
    }
    post_want(
        cp,
        "/v1/rollouts",
        &json!({"metadata": {"id": id}, "spec": spec}),
        201,
    )
}

fn start(cp: &Cp, id: &str, body: &Value) -> (u16, Value) {
    post(cp, &format!("/v1/rollouts/{id}/start"), body)
}

fn execute(cp: &Cp, id: &str, strategy: &str) -> Value {
    post_want(
        cp,
        "/v1/rollback/execute",
        &json!({"target": "rollout_plan", "resource": id, "strategy": strategy,
                "reason": "engine test"}),
        200,
    )
}

fn plan(cp: &Cp, id: &str) -> Value {
    get_ok(cp, &format!("/v1/rollouts/{id}"))
}

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or_default()
}

fn rollout(p: &Value) -> &Value {
    &p["status"]["rollout"]
}

/// Polls `f` every 20 ms until it gives `Some`, failing after `limit` with `what`.
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the plan's phase is `want`; returns the plan.
fn wait_phase(cp: &Cp, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + LIMIT;
    loop {
        let last = plan(cp, id);
        if phase(&last) == want {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never reached {want}; last: {last}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the plan waits (published) at gate `stage`.
fn wait_gate(cp: &Cp, id: &str, stage: u64) -> Value {
    wait_for(&format!("{id} at gate {stage}"), LIMIT, || {
        let p = plan(cp, id);
        (phase(&p) == "published" && rollout(&p)["gate"]["stage"] == stage).then_some(p)
    })
}

/// device id → assignment item of `GET /v1/rollouts/{id}/devices`.
fn assignments(cp: &Cp, id: &str) -> BTreeMap<String, Value> {
    let v = get_ok(cp, &format!("/v1/rollouts/{id}/devices?limit=1000"));
    assert!(v["next_cursor"].is_null(), "{v}");
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| (i["device_id"].as_str().unwrap().to_string(), i.clone()))
        .collect()
}

/// The state of `device` in plan `id`.
fn state_of(cp: &Cp, id: &str, device: &str) -> String {
    assignments(cp, id)[device]["state"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits until `device` is in `want` in plan `id`.
fn wait_state(cp: &Cp, id: &str, device: &str, want: &str) {
    wait_for(&format!("{device} {want} in {id}"), LIMIT, || {
        (state_of(cp, id, device) == want).then_some(())
    });
}

/// How many devices of plan `id` are in each state.
fn state_counts(cp: &Cp, id: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for a in assignments(cp, id).values() {
        *out.entry(a["state"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    out
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// The audit events of `event_type` on `resource` (one page is plenty here).
fn events(cp: &Cp, event_type: &str, resource: &str) -> Vec<Value> {
    let v = get_ok(
        cp,
        &format!("/v1/audit/events?event_type={event_type}&resource={resource}&limit=1000"),
    );
    assert!(v["next_cursor"].is_null(), "{v}");
    v["items"].as_array().expect("items").clone()
}

/// The stage indexes of the plan's `rollout.stage_started` events, in order.
fn stages_started(cp: &Cp, id: &str) -> Vec<u64> {
    let mut s: Vec<u64> = events(cp, "rollout.stage_started", id)
        .iter()
        .map(|e| e["details"]["stage"].as_u64().expect("details.stage"))
        .collect();
    s.sort_unstable();
    s
}

fn stuck(cp: &Cp, query: &str) -> Value {
    get_ok(cp, &format!("/v1/rollouts/stuck?{query}"))
}

/// The stuck item of plan `id`, if listed.
fn stuck_item(v: &Value, id: &str) -> Option<Value> {
    v["items"]
        .as_array()?
        .iter()
        .find(|i| i["id"] == id)
        .cloned()
}

/// code → (count, devices) of a stuck item's reasons.
fn reasons(item: &Value) -> BTreeMap<String, (u64, Vec<String>)> {
    item["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .map(|r| {
            let mut devs: Vec<String> = r["devices"]
                .as_array()
                .expect("devices")
                .iter()
                .map(|d| d.as_str().unwrap().to_string())
                .collect();
            devs.sort();
            (
                r["code"].as_str().unwrap().to_string(),
                (r["count"].as_u64().expect("count"), devs),
            )
        })
        .collect()
}

/// Polls until the device holds an assignment of `plan` with `action`.
fn wait_assignment(d: &mut Device, plan: &str, action: &str) -> Assignment {
    wait_for(
        &format!("{} to get {action} of {plan}", d.id),
        LIMIT,
        || {
            let a = d.poll_assignment(1).unwrap_or_else(|e| panic!("poll: {e}"));
            a.filter(|a| a.plan_id == plan && a.action == action)
        },
    )
}

/// The devices (by index) that currently hold an `install` of `plan` (one poll each).
fn dispatched(devs: &mut [Device], plan: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, d) in devs.iter_mut().enumerate() {
        let a = d.poll_assignment(0).unwrap_or_else(|e| panic!("poll: {e}"));
        if a.is_some_and(|a| a.plan_id == plan && a.action == "install") {
            out.push(i);
        }
    }
    out
}

/// Drives every device that holds an install of `plan` through the happy path until `done`
/// says so (checked between rounds). Each device installs each attempt once. Returns how many
/// installs ran.
fn drive(
    cp: &Cp,
    devs: &mut [Device],
    plan: &str,
    installed: &mut Vec<(String, u32)>,
    done: impl Fn(&Cp) -> bool,
) -> usize {
    let before = installed.len();
    let deadline = Instant::now() + LIMIT;
    while !done(cp) {
        assert!(Instant::now() < deadline, "{plan}: devices did not finish");
        for d in devs.iter_mut() {
            let a = d.poll_assignment(0).unwrap_or_else(|e| panic!("poll: {e}"));
            let Some(a) = a.filter(|a| a.plan_id == plan && a.action == "install") else {
                continue;
            };
            let key = (d.id.clone(), a.attempt);
            if installed.contains(&key) {
                continue;
            }
            let end = d.install(&a).unwrap_or_else(|e| panic!("install: {e}"));
            assert_eq!(end, "verified", "{} after a rebooted success", d.id);
            installed.push(key);
        }
        thread::sleep(Duration::from_millis(20));
    }
    installed.len() - before
}

fn stage_table(p: &Value) -> Vec<(String, u64, String)> {
    rollout(p)["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["size"].as_u64().unwrap(),
                s["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn three_stages() -> Value {
    json!([{"name": "canary", "size": {"count": 1}},
           {"name": "wave", "size": {"percent": 50}, "approval": "manual"},
           {"name": "rest"}])
}

// ---------------------------------------------------------------------------------------------
// 1–2. Stages, a manual gate, a wrong-stage approval, SIGKILL at the gate
// ---------------------------------------------------------------------------------------------

/// Runs the 3-stage plan `id` over `devs` to its gate before stage 1 and checks the wait.
fn to_gate_one(cp: &Cp, devs: &mut [Device], id: &str, installed: &mut Vec<(String, u32)>) {
    let (s, v) = start(cp, id, &json!({}));
    assert_eq!(s, 200, "{v}");
    let n = drive(cp, devs, id, installed, |cp| {
        let p = plan(cp, id);
        phase(&p) == "published" && rollout(&p)["gate"]["stage"] == 1
    });
    assert_eq!(n, 1, "the canary is one device");
    let p = wait_gate(cp, id, 1);
    assert_eq!(
        stage_table(&p),
        [
            ("canary".to_string(), 1, "passed".to_string()),
            ("wave".to_string(), 3, "pending".to_string()),
            ("rest".to_string(), 2, "pending".to_string()),
        ]
    );
    assert_eq!(
        state_counts(cp, id),
        counts(&[("verified", 1), ("pending", 5)])
    );
    assert_eq!(events(cp, "rollout.gate_reached", id).len(), 1);
}

/// After gate 1: a wrong stage is refused, stage 1 passes, every device verifies.
fn through_gate_one(cp: &Cp, devs: &mut [Device], id: &str, installed: &mut Vec<(String, u32)>) {
    // The gate holds: several promoter ticks later nothing more is dispatched.
    thread::sleep(Duration::from_millis(500));
    let p = wait_gate(cp, id, 1);
    assert!(dispatched(devs, id).is_empty(), "dispatched behind a gate");

    let (s, v) = start(cp, id, &json!({"stage": 2}));
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["code"], "conflict", "{v}");
    let after = plan(cp, id);
    assert_eq!(after, p, "a refused approval changed the plan");

    let (s, v) = start(cp, id, &json!({"stage": 1}));
    assert_eq!(s, 200, "{v}");
    let n = drive(cp, devs, id, installed, |cp| {
        phase(&plan(cp, id)) == "completed"
    });
    assert_eq!(n, 5, "wave and rest: five devices");
    let p = plan(cp, id);
    assert_eq!(
        stage_table(&p),
        [
            ("canary".to_string(), 1, "passed".to_string()),
            ("wave".to_string(), 3, "passed".to_string()),
            ("rest".to_string(), 2, "passed".to_string()),
        ]
    );
    assert_eq!(state_counts(cp, id), counts(&[("verified", 6)]));
    let stages: BTreeMap<String, Vec<String>> =
        assignments(cp, id)
            .values()
            .fold(BTreeMap::new(), |mut m, a| {
                m.entry(a["stage"].as_str().unwrap().to_string())
                    .or_default()
                    .push(a["device_id"].as_str().unwrap().to_string());
                m
            });
    assert_eq!(
        stages.values().map(Vec::len).collect::<Vec<_>>(),
        [1, 2, 3],
        "canary, rest, wave: {stages:?}"
    );
    assert_eq!(stages_started(cp, id), [0, 1, 2], "each stage started once");
    for d in devs.iter() {
        let v = get_ok(cp, &format!("/v1/devices/{}", d.id));
        assert_eq!(v["installed_digest"], target(), "{v}");
    }
}

#[test]
fn a_three_stage_plan_with_a_manual_gate_completes() {
    let cp = serve(&[]);
    let mut devs = devices(&cp, "g", 6, &json!({"group": "g1"}));
    create(&cp, "three", "g1", three_stages(), Value::Null);
    let mut installed = Vec::new();
    to_gate_one(&cp, &mut devs, "three", &mut installed);
    through_gate_one(&cp, &mut devs, "three", &mut installed);
    assert_eq!(installed.len(), 6);
}

#[test]
fn the_gate_survives_a_sigkill_of_the_cp() {
    let mut cp = serve(&[]);
    let mut devs = devices(&cp, "k", 6, &json!({"group": "g1"}));
    create(&cp, "gk", "g1", three_stages(), Value::Null);
    let mut installed = Vec::new();
    to_gate_one(&cp, &mut devs, "gk", &mut installed);
    let before = plan(&cp, "gk");

    cp.sigkill();
    cp.start_again();
    for d in devs.iter_mut() {
        d.url = cp.url.clone();
    }
    let after = wait_gate(&cp, "gk", 1);
    assert_eq!(
        after["status"]["rollout"]["gate"], before["status"]["rollout"]["gate"],
        "the gate moved"
    );
    assert_eq!(
        state_counts(&cp, "gk"),
        counts(&[("verified", 1), ("pending", 5)])
    );
    through_gate_one(&cp, &mut devs, "gk", &mut installed);
    assert_eq!(events(&cp, "rollout.gate_reached", "gk").len(), 1);
}

// ---------------------------------------------------------------------------------------------
// 3–4. Verified success: no reboot, the previous digest
// ---------------------------------------------------------------------------------------------

/// A single-stage plan over `n` devices of group `id`, started; the devices are registered.
fn one_stage(cp: &Cp, id: &str, n: usize, policy: Value) -> Vec<Device> {
    let devs = devices(cp, id, n, &json!({"group": id}));
    create(cp, id, id, json!([{"name": "all"}]), policy);
    let (s, v) = start(cp, id, &json!({}));
    assert_eq!(s, 200, "{v}");
    devs
}

/// Reports `steps` in order, each answered 200 with the state it names.
fn steps(d: &mut Device, a: &Assignment, steps: &[(&str, &str)]) {
    for (step, want) in steps {
        let v = d
            .report(&a.plan_id, a.attempt, step)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            v["assignment_state"], *want,
            "{} reported {step}: {v}",
            d.id
        );
    }
}

const TO_REBOOT: [(&str, &str); 3] = [
    ("downloading", "downloading"),
    ("installing", "installing"),
    ("rebooting", "rebooting"),
];

#[test]
fn a_success_without_a_reboot_is_never_counted() {
    let cp = serve(&[]);
    let mut devs = one_stage(&cp, "noboot", 1, Value::Null);
    let d = &mut devs[0];
    let a = wait_assignment(d, "noboot", "install");
    assert!(a.reboot_required);
    steps(d, &a, &TO_REBOOT);
    // The target digest, but the same boot as at `installing`.
    d.installed_digest = target();
    steps(d, &a, &[("succeeded", "verifying")]);
    thread::sleep(Duration::from_millis(500));
    let p = plan(&cp, "noboot");
    assert_eq!(phase(&p), "active", "{p}");
    assert_eq!(rollout(&p)["stages"][0]["state"], "active", "{p}");
    assert_eq!(rollout(&p)["stages"][0]["counts"], json!({"verifying": 1}));
    assert_eq!(state_of(&cp, "noboot", &d.id), "verifying");

    d.reboot();
    steps(d, &a, &[("succeeded", "verified")]);
    wait_phase(&cp, "noboot", "completed");
}

#[test]
fn a_device_back_on_its_previous_digest_is_rolled_back_and_a_failure() {
    let cp = serve(&[]);
    let mut devs = one_stage(
        &cp,
        "fallback",
        2,
        json!({"failure_threshold": {"count": 1}, "on_failure": "fail"}),
    );
    let d = &mut devs[0];
    let a = wait_assignment(d, "fallback", "install");
    steps(d, &a, &TO_REBOOT);
    d.reboot();
    // Still the previous digest after the reboot: it fell back by itself.
    steps(d, &a, &[("succeeded", "rolled_back")]);
    let p = wait_phase(&cp, "fallback", "failed");
    assert_eq!(rollout(&p)["stages"][0]["counts"]["rolled_back"], 1, "{p}");
    assert_eq!(assignments(&cp, "fallback")[&d.id]["state"], "rolled_back");
}

// ---------------------------------------------------------------------------------------------
// 5–6. The failure threshold, retry, device timeouts
// ---------------------------------------------------------------------------------------------

#[test]
fn the_failure_threshold_pauses_and_retry_gives_attempt_two() {
    let cp = serve(&[]);
    let id = "thresh";
    let mut devs = one_stage(
        &cp,
        id,
        3,
        json!({"failure_threshold": {"count": 1}, "on_failure": "pause"}),
    );
    let a = wait_assignment(&mut devs[0], id, "install");
    steps(
        &mut devs[0],
        &a,
        &[("downloading", "downloading"), ("failed", "failed")],
    );
    let p = wait_phase(&cp, id, "paused");
    assert_eq!(rollout(&p)["paused_by"], "engine", "{p}");
    assert_eq!(rollout(&p)["reason"], "failure_threshold", "{p}");

    let s = stuck(&cp, "threshold_seconds=0");
    let item = stuck_item(&s, id).unwrap_or_else(|| panic!("not stuck: {s}"));
    assert_eq!(item["code"], "failure_threshold_reached", "{item}");
    assert_eq!(s["by_code"]["failure_threshold_reached"], 1, "{s}");

    let v = execute(&cp, id, "retry");
    assert_eq!(v["outcome"], "success", "{v}");
    let first = devs[0].id.clone();
    wait_for("attempt 2", LIMIT, || {
        (assignments(&cp, id)[&first]["attempt"] == 2).then_some(())
    });
    // A report for the old attempt is refused.
    let r = devs[0]
        .report_raw(id, 1, "downloading")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 409, "{}", r.text());
    let v: Value = r.json().expect("json");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("superseded"),
        "{v}"
    );

    let mut installed = Vec::new();
    drive(&cp, &mut devs, id, &mut installed, |cp| {
        phase(&plan(cp, id)) == "completed"
    });
    assert_eq!(installed.len(), 3);
    assert!(installed.contains(&(first, 2)), "{installed:?}");
    assert_eq!(state_counts(&cp, id), counts(&[("verified", 3)]));
}

#[test]
fn a_device_that_never_reports_times_out() {
    let cp = serve(&[]);
    let id = "slow";
    let mut devs = one_stage(&cp, id, 2, json!({"device_timeout_seconds": 1}));
    let a = wait_assignment(&mut devs[0], id, "install");
    assert!(a.raw["deadline_at"].is_string(), "{:?}", a.raw);
    // The other device installs; this one never reports.
    let b = wait_assignment(&mut devs[1], id, "install");
    devs[1].install(&b).unwrap_or_else(|e| panic!("{e}"));
    wait_state(&cp, id, &devs[0].id, "timed_out");
    // Default policy: failure_threshold count 1, on_failure pause.
    let p = wait_phase(&cp, id, "paused");
    assert_eq!(rollout(&p)["reason"], "failure_threshold", "{p}");
    assert_eq!(
        rollout(&p)["stages"][0]["counts"],
        json!({"timed_out": 1, "verified": 1})
    );
    assert_eq!(events(&cp, "device.timed_out", id).len(), 1);
    let s = stuck(&cp, "threshold_seconds=0");
    let item = stuck_item(&s, id).unwrap_or_else(|| panic!("not stuck: {s}"));
    assert_eq!(item["code"], "failure_threshold_reached", "{item}");
}

// ---------------------------------------------------------------------------------------------
// 7–8. Abort stops, rollback undoes
// ---------------------------------------------------------------------------------------------

/// Two stages over four devices: the canary's two are dispatched; returns (started, idle)
/// indexes of the canary, the started one having reported `installing`.
fn two_in_flight(cp: &Cp, id: &str, devs: &mut [Device]) -> (usize, usize) {
    create(
        cp,
        id,
        id,
        json!([{"name": "canary", "size": {"count": 2}}, {"name": "rest"}]),
        Value::Null,
    );
    let (s, v) = start(cp, id, &json!({}));
    assert_eq!(s, 200, "{v}");
    let canary = wait_for("two dispatched", LIMIT, || {
        let d = dispatched(devs, id);
        (d.len() == 2).then_some(d)
    });
    let (busy, idle) = (canary[0], canary[1]);
    let a = wait_assignment(&mut devs[busy], id, "install");
    steps(
        &mut devs[busy],
        &a,
        &[("downloading", "downloading"), ("installing", "installing")],
    );
    (busy, idle)
}

#[test]
fn abort_cancels_unstarted_devices_and_lets_in_flight_ones_finish() {
    let cp = serve(&[]);
    let id = "abort";
    let mut devs = devices(&cp, id, 4, &json!({"group": id}));
    let (busy, idle) = two_in_flight(&cp, id, &mut devs);
    let v = execute(&cp, id, "abort");
    assert_eq!(v["to_phase"], "aborted", "{v}");

    let c = wait_assignment(&mut devs[idle], id, "cancel");
    assert_eq!(c.attempt, 1);
    let all = assignments(&cp, id);
    assert_eq!(all[&devs[idle].id]["state"], "cancelled");
    assert_eq!(all[&devs[busy].id]["state"], "installing");
    assert_eq!(
        state_counts(&cp, id),
        counts(&[("cancelled", 3), ("installing", 1)])
    );

    // The one in flight finishes and is recorded.
    let a = Assignment {
        plan_id: id.into(),
        attempt: 1,
        action: "install".into(),
        target_digest: target(),
        previous_digest: None,
        reboot_required: true,
        raw: Value::Null,
    };
    steps(&mut devs[busy], &a, &[("rebooting", "rebooting")]);
    devs[busy].reboot();
    devs[busy].installed_digest = target();
    steps(&mut devs[busy], &a, &[("succeeded", "verified")]);
    assert_eq!(
        state_counts(&cp, id),
        counts(&[("cancelled", 3), ("verified", 1)])
    );
    assert_eq!(phase(&plan(&cp, id)), "aborted");
}

#[test]
fn rollback_reverts_started_devices_and_cancels_the_rest() {
    let cp = serve(&[]);
    let id = "undo";
    let mut devs = devices(&cp, id, 4, &json!({"group": id}));
    let (busy, idle) = two_in_flight(&cp, id, &mut devs);
    let v = execute(&cp, id, "rollback");
    assert_eq!(v["to_phase"], "rolled_back", "{v}");

    let r = wait_assignment(&mut devs[busy], id, "revert");
    assert_eq!(
        r.target_digest,
        old(),
        "revert to the digest it had: {:?}",
        r.raw
    );
    assert_eq!(state_of(&cp, id, &devs[busy].id), "reverting");
    wait_assignment(&mut devs[idle], id, "cancel");
    assert_eq!(
        state_counts(&cp, id),
        counts(&[("cancelled", 3), ("reverting", 1)])
    );

    let d = &mut devs[busy];
    d.reboot();
    d.installed_digest = old();
    steps(d, &r, &[("reverted", "reverted")]);
    assert_eq!(
        state_counts(&cp, id),
        counts(&[("cancelled", 3), ("reverted", 1)])
    );
    assert_eq!(phase(&plan(&cp, id)), "rolled_back");
}

// ---------------------------------------------------------------------------------------------
// 9. Drift after completion
// ---------------------------------------------------------------------------------------------

#[test]
fn drift_after_completion_is_counted_and_resolved() {
    let cp = serve(&[]);
    let id = "drift";
    let mut devs = one_stage(&cp, id, 2, Value::Null);
    let mut installed = Vec::new();
    drive(&cp, &mut devs, id, &mut installed, |cp| {
        phase(&plan(cp, id)) == "completed"
    });
    let d = &mut devs[0];
    d.installed_digest = digest('b');
    d.poll(0).unwrap_or_else(|e| panic!("{e}"));
    d.poll(0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(state_of(&cp, id, &d.id), "drifted");
    let p = plan(&cp, id);
    assert_eq!(phase(&p), "completed");
    assert_eq!(rollout(&p)["drifted"], 1, "{p}");
    let detected = events(&cp, "device.drift_detected", id);
    assert_eq!(detected.len(), 1, "{detected:?}");

    d.installed_digest = target();
    d.poll(0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(state_of(&cp, id, &d.id), "verified");
    let p = plan(&cp, id);
    assert_eq!(phase(&p), "completed");
    assert_eq!(rollout(&p)["drifted"], 0, "{p}");
    assert_eq!(events(&cp, "device.drift_resolved", id).len(), 1);
    assert_eq!(events(&cp, "device.drift_detected", id).len(), 1);
}

// ---------------------------------------------------------------------------------------------
// 10. Stuck, with reasons: every code primary in a scenario of its own
// ---------------------------------------------------------------------------------------------

/// The scan over `query` lists exactly plan `id`, stuck with `code`, with exactly `want`
/// reasons (code, count, devices); `by_code` counts it; `?code=` finds it under its code
/// and nothing under another. Returns the item.
fn assert_stuck(
    cp: &Cp,
    query: &str,
    id: &str,
    code: &str,
    want: &[(&str, u64, &[&str])],
) -> Value {
    let s = stuck(cp, query);
    assert_eq!(s["stuck_count"], 1, "{s}");
    let item = stuck_item(&s, id).unwrap_or_else(|| panic!("{id} not stuck: {s}"));
    assert_eq!(item["code"], code, "{item}");
    let want: BTreeMap<String, (u64, Vec<String>)> = want
        .iter()
        .map(|(c, n, ids)| {
            let mut ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
            ids.sort();
            (c.to_string(), (*n, ids))
        })
        .collect();
    assert_eq!(reasons(&item), want, "{item}");
    assert_eq!(
        item["reasons"][0]["code"], code,
        "the main code is first: {item}"
    );
    assert_eq!(s["by_code"], json!({code: 1}), "{s}");
    let diagnosis = item["diagnosis"].as_str().unwrap_or_default();
    assert!(!diagnosis.is_empty(), "{item}");
    assert!(
        item["suggested_actions"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "{item}"
    );
    let only = stuck(cp, &format!("{query}&code={code}"));
    assert_eq!(only["stuck_count"], 1, "{only}");
    assert_eq!(only["items"][0]["id"], id, "{only}");
    let other = if code == "no_progress" {
        "awaiting_start"
    } else {
        "no_progress"
    };
    let none = stuck(cp, &format!("{query}&code={other}"));
    assert_eq!(none["stuck_count"], 0, "{none}");
    item
}

/// Waits until the scan over `query` names `id` with main code `code`.
fn wait_stuck_code(cp: &Cp, query: &str, id: &str, code: &str) {
    wait_for(&format!("{id} stuck with {code}"), LIMIT, || {
        let s = stuck(cp, query);
        stuck_item(&s, id).filter(|i| i["code"] == code).map(|_| ())
    });
}

#[test]
fn stuck_awaiting_start() {
    let cp = serve(&[]);
    devices(&cp, "as", 2, &json!({"group": "as"}));
    create(&cp, "as", "as", json!([{"name": "all"}]), Value::Null);
    assert_stuck(
        &cp,
        "threshold_seconds=0",
        "as",
        "awaiting_start",
        &[("awaiting_start", 0, &[])],
    );
    // Below the threshold the gate is doing its job.
    assert_eq!(stuck(&cp, "threshold_seconds=3600")["stuck_count"], 0);
}

#[test]
fn stuck_awaiting_approval() {
    let cp = serve(&[]);
    let id = "aa";
    let mut devs = devices(&cp, id, 3, &json!({"group": id}));
    create(
        &cp,
        id,
        id,
        json!([{"name": "canary", "size": {"count": 1}},
               {"name": "rest", "approval": "manual"}]),
        Value::Null,
    );
    start(&cp, id, &json!({}));
    let mut installed = Vec::new();
    drive(&cp, &mut devs, id, &mut installed, |cp| {
        phase(&plan(cp, id)) == "published"
    });
    wait_gate(&cp, id, 1);
    let item = assert_stuck(
        &cp,
        "threshold_seconds=0",
        id,
        "awaiting_approval",
        &[("awaiting_approval", 0, &[])],
    );
    assert_eq!(item["stage"]["index"], 1, "{item}");
    assert_eq!(item["stage"]["name"], "rest", "{item}");
    assert_eq!(item["stage"]["required"], 2, "{item}");
    assert_eq!(item["stage"]["verified"], 0, "{item}");
    assert!(
        item["suggested_actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().contains("--stage 1")),
        "{item}"
    );
    assert_eq!(stuck(&cp, "threshold_seconds=3600")["stuck_count"], 0);
}

#[test]
fn stuck_failure_threshold_reached() {
    let cp = serve(&[]);
    let id = "ftr";
    let mut devs = one_stage(
        &cp,
        id,
        3,
        json!({"failure_threshold": {"count": 2}, "on_failure": "pause"}),
    );
    for d in devs.iter_mut().take(2) {
        let a = wait_assignment(d, id, "install");
        steps(d, &a, &[("failed", "failed")]);
    }
    wait_phase(&cp, id, "paused");
    let (a, b) = (devs[0].id.as_str(), devs[1].id.as_str());
    let item = assert_stuck(
        &cp,
        "threshold_seconds=60",
        id,
        "failure_threshold_reached",
        &[
            ("failure_threshold_reached", 2, &[a, b]),
            ("failing_devices", 2, &[a, b]),
        ],
    );
    assert_eq!(item["phase"], "paused", "{item}");
    assert_eq!(item["stage"]["failed"], 2, "{item}");
}

#[test]
fn stuck_stage_threshold_unreachable() {
    let cp = serve(&[]);
    let id = "stu";
    let mut devs = one_stage(
        &cp,
        id,
        2,
        json!({"success_threshold_pct": 100, "failure_threshold": {"count": 5},
               "on_failure": "pause"}),
    );
    let a = wait_assignment(&mut devs[0], id, "install");
    steps(
        &mut devs[0],
        &a,
        &[("downloading", "downloading"), ("failed", "failed")],
    );
    let p = wait_phase(&cp, id, "paused");
    assert_eq!(rollout(&p)["paused_by"], "engine", "{p}");
    assert_eq!(rollout(&p)["reason"], "threshold_unreachable", "{p}");
    let d = devs[0].id.as_str();
    assert_stuck(
        &cp,
        "threshold_seconds=60",
        id,
        "stage_threshold_unreachable",
        &[
            ("stage_threshold_unreachable", 1, &[d]),
            ("failing_devices", 1, &[d]),
        ],
    );
}

#[test]
fn stuck_failing_devices() {
    let cp = serve(&[]);
    let id = "fd";
    let mut devs = one_stage(
        &cp,
        id,
        2,
        json!({"success_threshold_pct": 50, "failure_threshold": {"count": 5}}),
    );
    let a = wait_assignment(&mut devs[0], id, "install");
    steps(&mut devs[0], &a, &[("failed", "failed")]);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(phase(&plan(&cp, id)), "active");
    let d = devs[0].id.as_str();
    let item = assert_stuck(
        &cp,
        "threshold_seconds=60",
        id,
        "failing_devices",
        &[("failing_devices", 1, &[d])],
    );
    assert_eq!(item["stage"]["failed"], 1, "{item}");
    assert_eq!(item["stage"]["required"], 1, "{item}");
}

#[test]
fn stuck_silent_devices() {
    let cp = serve(&[]);
    let id = "sil";
    let mut devs = one_stage(&cp, id, 1, json!({"silent_after_seconds": 1}));
    let a = wait_assignment(&mut devs[0], id, "install");
    steps(&mut devs[0], &a, &[("downloading", "downloading")]);
    // It stops polling.
    wait_stuck_code(&cp, "threshold_seconds=60", id, "silent_devices");
    let d = devs[0].id.as_str();
    let item = assert_stuck(
        &cp,
        "threshold_seconds=60",
        id,
        "silent_devices",
        &[("silent_devices", 1, &[d])],
    );
    assert_eq!(item["stage"]["in_flight"], 1, "{item}");
}

#[test]
fn stuck_non_converging_devices() {
    let cp = serve(&[]);
    let id = "nc";
    let mut devs = one_stage(&cp, id, 1, Value::Null);
    let a = wait_assignment(&mut devs[0], id, "install");
    steps(&mut devs[0], &a, &[("downloading", "downloading")]);
    // It keeps polling, but never gets further.
    let q = "threshold_seconds=0.5";
    wait_for("non_converging_devices", LIMIT, || {
        devs[0].poll(0).unwrap_or_else(|e| panic!("{e}"));
        stuck_item(&stuck(&cp, q), id).filter(|i| i["code"] == "non_converging_devices")
    });
    devs[0].poll(0).unwrap_or_else(|e| panic!("{e}"));
    let d = devs[0].id.as_str();
    assert_stuck(
        &cp,
        q,
        id,
        "non_converging_devices",
        &[("non_converging_devices", 1, &[d])],
    );
}

#[test]
fn stuck_drifted_devices() {
    let cp = serve(&[]);
    let id = "dr";
    let mut devs = devices(&cp, id, 2, &json!({"group": id}));
    create(
        &cp,
        id,
        id,
        json!([{"name": "canary", "size": {"count": 1}}, {"name": "rest"}]),
        json!({"failure_threshold": {"count": 5}}),
    );
    start(&cp, id, &json!({}));
    let canary = wait_for("the canary", LIMIT, || {
        let d = dispatched(&mut devs, id);
        (d.len() == 1).then(|| d[0])
    });
    let a = wait_assignment(&mut devs[canary], id, "install");
    devs[canary].install(&a).unwrap_or_else(|e| panic!("{e}"));
    // Stage 1 is dispatched: the plan is still active.
    wait_for("stage 1 started", LIMIT, || {
        (stages_started(&cp, id) == [0, 1]).then_some(())
    });
    devs[canary].installed_digest = digest('c');
    devs[canary].poll(0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(state_of(&cp, id, &devs[canary].id), "drifted");
    assert_eq!(phase(&plan(&cp, id)), "active");
    let d = devs[canary].id.as_str();
    assert_stuck(
        &cp,
        "threshold_seconds=60",
        id,
        "drifted_devices",
        &[("drifted_devices", 1, &[d])],
    );
}

#[test]
fn stuck_revert_not_converging() {
    let cp = serve(&[]);
    let id = "rnc";
    let mut devs = devices(&cp, id, 4, &json!({"group": id}));
    let (busy, _) = two_in_flight(&cp, id, &mut devs);
    execute(&cp, id, "rollback");
    wait_assignment(&mut devs[busy], id, "revert");
    let q = "threshold_seconds=0.5";
    wait_stuck_code(&cp, q, id, "revert_not_converging");
    let d = devs[busy].id.as_str();
    let item = assert_stuck(
        &cp,
        q,
        id,
        "revert_not_converging",
        &[("revert_not_converging", 1, &[d])],
    );
    assert_eq!(item["phase"], "rolled_back", "{item}");
    // Once reverted, it is not stuck any more.
    let r = wait_assignment(&mut devs[busy], id, "revert");
    devs[busy].installed_digest = old();
    devs[busy].reboot();
    steps(&mut devs[busy], &r, &[("reverted", "reverted")]);
    assert_eq!(stuck(&cp, q)["stuck_count"], 0);
}

#[test]
fn stuck_promoter_not_running() {
    let cp = serve(&["--promoter", "off"]);
    let id = "pnr";
    let mut devs = one_stage(&cp, id, 1, Value::Null);
    assert_eq!(phase(&plan(&cp, id)), "active");
    let item = assert_stuck(
        &cp,
        "threshold_seconds=60",
        id,
        "promoter_not_running",
        &[("promoter_not_running", 0, &[])],
    );
    assert_eq!(item["phase"], "active", "{item}");
    // Nothing is dispatched without a promoter.
    assert_eq!(
        devs[0].poll_assignment(0).unwrap_or_else(|e| panic!("{e}")),
        None
    );
}

#[test]
fn stuck_no_progress_for_a_record_only_plan() {
    let cp = serve(&[]);
    post_want(
        &cp,
        "/v1/rollouts",
        &json!({"metadata": {"id": "rec"}, "spec": {"artifact_ref": artifact()}}),
        201,
    );
    let s = stuck(&cp, "threshold_seconds=0");
    assert_eq!(s["stuck_count"], 1, "{s}");
    let item = stuck_item(&s, "rec").unwrap();
    assert_eq!(item["code"], "no_progress", "{item}");
    assert_eq!(s["by_code"], json!({"no_progress": 1}), "{s}");
    let only = stuck(&cp, "threshold_seconds=0&code=no_progress");
    assert_eq!(only["stuck_count"], 1, "{only}");
    assert_eq!(
        stuck(&cp, "threshold_seconds=0&code=awaiting_start")["stuck_count"],
        0
    );
    assert_eq!(stuck(&cp, "threshold_seconds=3600")["stuck_count"], 0);
}

#[test]
fn stuck_by_code_counts_plans_and_code_filters() {
    let cp = serve(&[]);
    devices(&cp, "f1", 1, &json!({"group": "f1"}));
    devices(&cp, "f2", 1, &json!({"group": "f2"}));
    create(&cp, "f1", "f1", Value::Null, Value::Null);
    create(&cp, "f2", "f2", Value::Null, Value::Null);
    post_want(
        &cp,
        "/v1/rollouts",
        &json!({"metadata": {"id": "f3"}, "spec": {"artifact_ref": artifact()}}),
        201,
    );
    let s = stuck(&cp, "threshold_seconds=0");
    assert_eq!(s["stuck_count"], 3, "{s}");
    assert_eq!(
        s["by_code"],
        json!({"awaiting_start": 2, "no_progress": 1}),
        "{s}"
    );
    let only = stuck(&cp, "threshold_seconds=0&code=awaiting_start");
    let ids: Vec<&str> = only["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{only}");
    assert!(ids.contains(&"f1") && ids.contains(&"f2"), "{only}");
    assert_eq!(
        stuck(&cp, "threshold_seconds=0&code=silent_devices")["stuck_count"],
        0
    );
    let (status, v) = get(&cp, "/v1/rollouts/stuck?threshold_seconds=0&code=bogus");
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("code"),
        "{v}"
    );
}

//! Robot-aware gates (SPEC §8.7) against the real `autonomy serve`, with the test speaking
//! HTTP as the devices (the test kit's scripted [`Device`]): the disruption budget checked on
//! every report, devices that wait for their conditions and are dispatched by the poll that
//! meets them, a plan outside its maintenance window, and the 400s of bad gate fields.
//!
//! Every wait polls a condition against a deadline; the promoter ticks every 0.1 s.

mod common;

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use autonomy_api::timefmt;
use autonomy_testkit::device::{Assignment, Device};
use common::Cp;
use serde_json::{json, Value};

const TICK: &str = "0.1";
const LIMIT: Duration = Duration::from_secs(30);

fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

fn artifact() -> String {
    format!("oci://reg/app@{}", digest('a'))
}

fn serve() -> Cp {
    Cp::start(&["--promoter-interval", TICK], &[])
}

fn parse(status: u16, body: &str) -> (u16, Value) {
    let v = serde_json::from_str(body).unwrap_or_else(|e| panic!("HTTP {status}: {e}: {body}"));
    (status, v)
}

fn get_ok(cp: &Cp, path: &str) -> Value {
    let (s, b) = cp.get(path, &[]);
    let (s, v) = parse(s, &b);
    assert_eq!(s, 200, "GET {path}: {v}");
    v
}

fn post(cp: &Cp, path: &str, body: &Value) -> (u16, Value) {
    let (s, b) = cp.post(
        path,
        &[("content-type", "application/json")],
        &body.to_string(),
    );
    parse(s, &b)
}

fn devices(cp: &Cp, prefix: &str, n: usize, labels: impl Fn(usize) -> Value) -> Vec<Device> {
    (0..n)
        .map(|i| {
            Device::register(
                &cp.url,
                &[],
                &format!("{prefix}-{i:02}"),
                &labels(i),
                &digest('0'),
            )
            .unwrap_or_else(|e| panic!("register: {e}"))
        })
        .collect()
}

fn plan_body(id: &str, group: &str, stages: Value, policy: Value) -> Value {
    json!({"metadata": {"id": id}, "spec": {
        "artifact_ref": artifact(),
        "targets": {"selector": {"group": group}},
        "stages": stages,
        "policy": policy,
    }})
}

fn create_and_start(cp: &Cp, id: &str, group: &str, stages: Value, policy: Value) {
    let (s, v) = post(cp, "/v1/rollouts", &plan_body(id, group, stages, policy));
    assert_eq!(s, 201, "create {id}: {v}");
    let (s, v) = post(cp, &format!("/v1/rollouts/{id}/start"), &json!({}));
    assert_eq!(s, 200, "start {id}: {v}");
}

fn phase(cp: &Cp, id: &str) -> String {
    get_ok(cp, &format!("/v1/rollouts/{id}"))["status"]["phase"]
        .as_str()
        .unwrap_or_default()
        .to_string()
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

fn state_of(cp: &Cp, id: &str, device: &str) -> String {
    assignments(cp, id)[device]["state"]
        .as_str()
        .unwrap()
        .to_string()
}

const IN_FLIGHT: [&str; 5] = [
    "dispatched",
    "downloading",
    "installing",
    "rebooting",
    "verifying",
];

/// site → devices in flight now, as the CP records them.
fn in_flight_by_site(
    cp: &Cp,
    id: &str,
    site_of: &BTreeMap<String, String>,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (device, a) in assignments(cp, id) {
        if IN_FLIGHT.contains(&a["state"].as_str().unwrap_or_default()) {
            *out.entry(site_of[&device].clone()).or_default() += 1;
        }
    }
    out
}

fn stuck_item(cp: &Cp, id: &str) -> Option<Value> {
    let v = get_ok(cp, "/v1/rollouts/stuck?threshold_seconds=0");
    v["items"]
        .as_array()?
        .iter()
        .find(|i| i["id"] == id)
        .cloned()
}

fn reason(item: &Value, code: &str) -> Option<Value> {
    item["reasons"]
        .as_array()?
        .iter()
        .find(|r| r["code"] == code)
        .cloned()
}

/// 60 devices on 6 sites, at most 2 in flight per site: after every report (and every poll
/// that brings an assignment) no site has more than 2 devices in flight; the devices advance
/// one step per round, so every site is kept full while it has work.
#[test]
fn no_site_ever_exceeds_its_disruption_budget() {
    let cp = serve();
    let site = |i: usize| format!("site-{}", i % 6);
    let mut devs = devices(
        &cp,
        "amr",
        60,
        |i| json!({"group": "fleet", "site": site(i)}),
    );
    let site_of: BTreeMap<String, String> =
        (0..60).map(|i| (format!("amr-{i:02}"), site(i))).collect();
    let id = "budget-60";
    create_and_start(
        &cp,
        id,
        "fleet",
        json!([{"name": "canary", "size": {"count": 6}}, {"name": "rest"}]),
        json!({"disruption_budget": {"group_by": ["site"], "max_unavailable": 2}}),
    );
    let check = |when: &str| {
        let load = in_flight_by_site(&cp, id, &site_of);
        for (s, n) in &load {
            assert!(*n <= 2, "{when}: {s} has {n} devices in flight: {load:?}");
        }
        load.values().sum::<u64>()
    };
    // Each device's next step: 0 = not dispatched, then downloading, installing, rebooting,
    // succeeded.
    let mut step: Vec<usize> = vec![0; 60];
    let mut jobs: Vec<Option<Assignment>> = vec![None; 60];
    let mut reports = 0;
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while phase(&cp, id) != "completed" {
        assert!(
            Instant::now() < deadline,
            "the plan did not complete: step {step:?}"
        );
        for (i, d) in devs.iter_mut().enumerate() {
            if step[i] == 0 {
                let a = d.poll_assignment(0).unwrap_or_else(|e| panic!("poll: {e}"));
                if let Some(a) = a.filter(|a| a.plan_id == id && a.action == "install") {
                    jobs[i] = Some(a);
                    step[i] = 1;
                    peak = peak.max(check("after a dispatch"));
                }
                continue;
            }
            let Some(a) = jobs[i].clone() else { continue };
            let state = match step[i] {
                1 => "downloading",
                2 => "installing",
                3 => "rebooting",
                4 => {
                    d.reboot();
                    d.installed_digest = a.target_digest.clone();
                    "succeeded"
                }
                _ => continue,
            };
            let answer = d
                .report(&a.plan_id, a.attempt, state)
                .unwrap_or_else(|e| panic!("report: {e}"));
            if state == "succeeded" {
                assert_eq!(answer["assignment_state"], "verified", "{}", d.id);
            }
            step[i] += 1;
            reports += 1;
            peak = peak.max(check(&format!("after {} reported {state}", d.id)));
        }
    }
    assert_eq!(reports, 60 * 4, "every device ran its install once");
    assert_eq!(
        peak, 12,
        "every site was kept at its budget while it had work"
    );
    let states = assignments(&cp, id);
    assert!(
        states.values().all(|a| a["state"] == "verified"),
        "{states:?}"
    );
    // The canary stage kept its size under the budget.
    let p = get_ok(&cp, &format!("/v1/rollouts/{id}"));
    assert_eq!(p["status"]["rollout"]["stages"][0]["size"], 6, "{p}");
    assert_eq!(p["status"]["rollout"]["stages"][1]["size"], 54, "{p}");
}

/// An undocked device never gets an assignment; it waits as `waiting_ready` (a stuck reason
/// names its unmet condition) and the poll that says it is docked gets the assignment.
#[test]
fn an_undocked_device_waits_and_the_poll_that_meets_require_is_dispatched() {
    let cp = serve();
    let mut devs = devices(&cp, "dock", 2, |_| json!({"group": "dock"}));
    devs[0].conditions = Some(json!({"docked": false, "idle": true, "battery_pct": 80}));
    devs[1].conditions = Some(json!({"docked": true, "idle": true, "battery_pct": 80}));
    for d in devs.iter_mut() {
        d.poll(0).unwrap_or_else(|e| panic!("poll: {e}"));
    }
    let id = "docked-only";
    create_and_start(
        &cp,
        id,
        "dock",
        json!([{"name": "all"}]),
        json!({"require": {"docked": true, "idle": true, "battery_pct_min": 40}}),
    );
    // The docked device is dispatched; the undocked one waits.
    wait_for("dock-01 dispatched", LIMIT, || {
        devs[1]
            .poll_assignment(1)
            .unwrap_or_else(|e| panic!("poll: {e}"))
            .filter(|a| a.plan_id == id)
    });
    wait_for("dock-00 waiting_ready", LIMIT, || {
        (state_of(&cp, id, "dock-00") == "waiting_ready").then_some(())
    });
    // It keeps polling undocked (and then docked but with a low battery): never an
    // assignment, and the stuck reason names what it lacks.
    for _ in 0..5 {
        let a = devs[0]
            .poll_assignment(0)
            .unwrap_or_else(|e| panic!("poll: {e}"));
        assert!(a.is_none(), "an undocked device got {a:?}");
        thread::sleep(Duration::from_millis(100));
    }
    let item = wait_for("devices_not_ready", LIMIT, || {
        stuck_item(&cp, id).filter(|i| reason(i, "devices_not_ready").is_some())
    });
    let r = reason(&item, "devices_not_ready").unwrap();
    assert_eq!(r["count"], 1, "{item}");
    assert_eq!(r["devices"], json!(["dock-00"]), "{item}");
    assert_eq!(
        r["unmet"]["dock-00"], "docked is false (needs true)",
        "{item}"
    );
    assert_eq!(r["by_condition"], json!({"docked": 1}), "{item}");
    assert!(
        item["diagnosis"]
            .as_str()
            .unwrap()
            .contains("docked is false"),
        "{item}"
    );
    devs[0].conditions = Some(json!({"docked": true, "idle": true, "battery_pct": 12}));
    for _ in 0..3 {
        let a = devs[0]
            .poll_assignment(0)
            .unwrap_or_else(|e| panic!("poll: {e}"));
        assert!(a.is_none(), "a device with 12 % battery got {a:?}");
        thread::sleep(Duration::from_millis(100));
    }
    // The device shows its last conditions (flushed with its heartbeat).
    wait_for("conditions on the device", LIMIT, || {
        let d = get_ok(&cp, "/v1/devices/dock-00");
        (d["conditions"] == json!({"docked": true, "idle": true, "battery_pct": 12})).then_some(())
    });
    // Docked, idle and charged: this very poll (at most a 1 s long poll) brings the job.
    devs[0].conditions = Some(json!({"docked": true, "idle": true, "battery_pct": 90}));
    let a = devs[0]
        .poll_assignment(1)
        .unwrap_or_else(|e| panic!("poll: {e}"));
    let a = a.unwrap_or_else(|| panic!("the poll that met require got no assignment"));
    assert_eq!((a.plan_id.as_str(), a.action.as_str()), (id, "install"));
    assert_eq!(state_of(&cp, id, "dock-00"), "dispatched");
    let waiting = get_ok(
        &cp,
        "/v1/audit/events?event_type=rollout.devices_waiting&limit=100",
    );
    assert!(
        waiting["items"].as_array().is_some_and(|i| !i.is_empty()),
        "{waiting}"
    );
}

/// A plan whose only window opens two hours from now dispatches nothing, and its stuck
/// reason names when the window opens.
#[test]
fn a_plan_outside_its_window_dispatches_nothing_and_names_the_next_window() {
    let cp = serve();
    let mut devs = devices(&cp, "win", 3, |_| json!({"group": "win"}));
    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let opens_s = now_s - now_s % 3600 + 2 * 3600;
    let hour = (opens_s / 3600) % 24;
    let window = json!([{"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                         "start": format!("{hour:02}:00"),
                         "end": format!("{:02}:00", (hour + 1) % 24), "tz": "UTC"}]);
    let id = "later";
    create_and_start(
        &cp,
        id,
        "win",
        json!([{"name": "all"}]),
        json!({"windows": window}),
    );
    let item = wait_for("outside_window", LIMIT, || {
        stuck_item(&cp, id).filter(|i| i["code"] == "outside_window")
    });
    let r = reason(&item, "outside_window").unwrap();
    assert_eq!(r["count"], 3, "{item}");
    let next = r["next_window_at"].as_str().expect("next_window_at");
    assert_eq!(
        timefmt::parse_rfc3339_us(next).unwrap(),
        (opens_s * 1_000_000) as i64,
        "{item}"
    );
    assert!(item["diagnosis"].as_str().unwrap().contains(next), "{item}");
    // Several ticks later nothing was dispatched.
    for d in devs.iter_mut() {
        let a = d.poll_assignment(1).unwrap_or_else(|e| panic!("poll: {e}"));
        assert!(a.is_none(), "dispatched outside the window: {a:?}");
    }
    assert!(assignments(&cp, id)
        .values()
        .all(|a| a["state"] == "pending"));
    let dispatched = get_ok(
        &cp,
        &format!("/v1/audit/events?event_type=rollout.devices_dispatched&resource={id}"),
    );
    assert_eq!(dispatched["items"], json!([]), "{dispatched}");
}

/// Bad gate fields are 400 naming the field, at create and in polls; nothing is created.
#[test]
fn bad_gate_fields_are_400_naming_the_field() {
    let cp = serve();
    let mut devs = devices(&cp, "val", 1, |_| json!({"group": "val"}));
    let w = |days: Value, start: &str, end: &str, tz: &str| json!({"windows": [{"days": days, "start": start, "end": end, "tz": tz}]});
    let cases = [
        (
            json!({"require": {"docked": true, "charging": true}}),
            "spec.policy.require.charging",
        ),
        (
            json!({"require": {"docked": "yes"}}),
            "spec.policy.require.docked",
        ),
        (
            json!({"require": {"battery_pct_min": 140}}),
            "spec.policy.require.battery_pct_min",
        ),
        (
            json!({"disruption_budget": {"group_by": ["site"], "max_unavailable": 0}}),
            "spec.policy.disruption_budget.max_unavailable",
        ),
        (
            json!({"disruption_budget": {"group_by": ["site"]}}),
            "spec.policy.disruption_budget",
        ),
        (
            json!({"disruption_budget": {"max_unavailable": 1, "min_available_pct": 50}}),
            "spec.policy.disruption_budget",
        ),
        (
            json!({"disruption_budget": {"min_available_pct": 100}}),
            "spec.policy.disruption_budget.min_available_pct",
        ),
        (
            json!({"disruption_budget": {"max_unavailable": 1, "by": ["site"]}}),
            "spec.policy.disruption_budget.by",
        ),
        (
            w(json!(["mon", "someday"]), "22:00", "05:00", "UTC"),
            "spec.policy.windows[0].days[1]",
        ),
        (
            w(json!(["mon"]), "25:00", "05:00", "UTC"),
            "spec.policy.windows[0].start",
        ),
        (
            w(json!(["mon"]), "22:00", "5:00", "UTC"),
            "spec.policy.windows[0].end",
        ),
        (
            w(json!(["mon"]), "22:00", "22:00", "UTC"),
            "spec.policy.windows[0].end",
        ),
        (
            w(json!(["mon"]), "22:00", "05:00", "Europe/Atlantis"),
            "spec.policy.windows[0].tz",
        ),
    ];
    for (i, (policy, field)) in cases.iter().enumerate() {
        let (s, v) = post(
            &cp,
            "/v1/rollouts",
            &plan_body(
                &format!("bad-{i}"),
                "val",
                json!([{"name": "all"}]),
                policy.clone(),
            ),
        );
        assert_eq!(s, 400, "{policy}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(field), "{policy}: {field} not in {msg}");
    }
    let listed = get_ok(&cp, "/v1/rollouts?limit=100");
    assert_eq!(listed["items"], json!([]), "a refused plan was created");
    for (conditions, field) in [
        (json!({"docked": "yes"}), "conditions.docked"),
        (json!({"idle": 0}), "conditions.idle"),
        (json!({"battery_pct": 101}), "conditions.battery_pct"),
        (json!({"battery_pct": "full"}), "conditions.battery_pct"),
        (json!({"mood": {"x": 1}}), "conditions.mood"),
    ] {
        devs[0].conditions = Some(conditions.clone());
        let r = devs[0].poll_raw(0).unwrap_or_else(|e| panic!("poll: {e}"));
        assert_eq!(r.status, 400, "{conditions}: {}", r.text());
        assert!(r.text().contains(field), "{conditions}: {}", r.text());
    }
    // Conditions the engine does not know are kept and shown.
    devs[0].conditions = Some(json!({"docked": true, "temperature_c": 41.5}));
    devs[0].poll(0).unwrap_or_else(|e| panic!("poll: {e}"));
    wait_for("conditions on the device", LIMIT, || {
        let d = get_ok(&cp, "/v1/devices/val-00");
        (d["conditions"] == json!({"docked": true, "temperature_c": 41.5})).then_some(())
    });
}

/// A device whose idle poll the CP answers from memory (it was in no plan) is forgotten there
/// when a plan takes it, so the poll that meets `require` still wakes the promoter (SPEC §8.7)
/// instead of waiting for its next periodic tick. The promoter ticks every 4 s here: the
/// assignment must come on a 2 s long poll that starts right after a tick, which only the
/// wake can do.
#[test]
fn the_poll_that_meets_require_wakes_the_promoter_even_after_idle_polls_were_answered_from_memory()
{
    let cp = Cp::start(&["--promoter-interval", "4"], &[]);
    let mut devs = devices(&cp, "mem", 1, |_| json!({"group": "mem"}));
    let dev = &mut devs[0];
    dev.conditions = Some(json!({"docked": false, "idle": true, "battery_pct": 80}));
    // In no plan: the second poll is answered from memory.
    for _ in 0..2 {
        assert!(dev.poll_assignment(0).expect("poll").is_none());
    }
    let id = "mem-docked";
    create_and_start(
        &cp,
        id,
        "mem",
        json!([{"name": "all"}]),
        json!({"require": {"docked": true}}),
    );
    // A periodic tick finds it undocked.
    wait_for("mem-00 waiting_ready", Duration::from_secs(15), || {
        (state_of(&cp, id, "mem-00") == "waiting_ready").then_some(())
    });
    dev.conditions = Some(json!({"docked": true, "idle": true, "battery_pct": 80}));
    let a = dev
        .poll_assignment(2)
        .expect("poll")
        .unwrap_or_else(|| panic!("the docked poll did not wake the promoter: no assignment"));
    assert_eq!((a.plan_id.as_str(), a.action.as_str()), (id, "install"));
}

//! VAL13 — a fleet rollout under chaos (issues 11 and 16): a CP, 1,000 simulated devices on
//! 10 sites (`autonomy fleet simulate`: 5% failing on their first attempt, 2% silent, 2%
//! false-success, 1% reverting, 10% busy for a while), a 4-stage plan with a manual gate
//! before stage 3 (index 2), a disruption budget of 25 devices in flight per site and
//! `require: {idle: true}`, driven to `completed` the way an operator would: resolving each
//! engine pause with `retry` when devices failed (else `resume`), approving the gate after
//! three SIGKILLs of the CP.
//!
//! Checks (evidence under `$EVIDENCE_DIR/val13/`): every stage has its exact size and every
//! device of it was dispatched; the gate waits and survives three SIGKILLs; the failure
//! threshold pauses the plan; the stuck scan's codes and counts equal the manifest (silent,
//! failing, non-converging); `retry` completes the failing devices; at the end verified =
//! healthy + failing + busy, false-success devices never verified, reverting ones
//! `rolled_back`; no stage started twice; `audit verify` is clean; the simulator's summary
//! agrees with its manifest; no site ever had more than its budget in flight (sampled all
//! through the drive), and busy devices waited as `waiting_ready` and then verified.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use autonomy_testkit::process::{self, Signal};
use serde_json::{json, Value};

use crate::kvs;
use crate::lab::{Lab, Started};
use crate::report::CheckFile;

pub const PORT: u16 = 18999;
pub const DEVICES: u32 = 1000;
const PLAN: &str = "val13-fleet";
/// Stage sizes of the plan over 1,000 devices: 50, 20% = 200, 30% = 300, the rest.
const SIZES: [u64; 4] = [50, 200, 300, 450];
const GATE_STAGE: u64 = 2;
const KILLS: usize = 3;
/// The whole drive, at most.
const DRIVE_LIMIT: Duration = Duration::from_secs(420);
/// The scan threshold of the first pause (non-converging devices).
const SCAN_THRESHOLD_S: u64 = 3;
const SILENT_AFTER_S: u64 = 8;
/// Sites the devices are spread over, and the budget of devices in flight per site.
const SITES: u32 = 10;
const SITE_BUDGET: usize = 25;
/// Seconds a busy device stays busy from its start (0.5× to 1.5×).
const BUSY_FOR_S: u64 = 40;

fn write(p: &Path, s: &str) {
    let _ = std::fs::write(p, s);
}

fn append(p: &Path, s: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::File::options().create(true).append(true).open(p) {
        let _ = f.write_all(s.as_bytes());
    }
}

fn digest() -> String {
    format!(
        "sha256:{}",
        blake3::hash(b"autonomy-val13-release-2").to_hex()
    )
}

/// The plan's devices, by id: (stage name, state, attempt).
type Devices = BTreeMap<String, (String, String, u64)>;

fn devices(lab: &mut Lab, out: &Path) -> Option<Devices> {
    let mut all = Devices::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!(
                "{}/v1/rollouts/{PLAN}/devices?limit=1000&cursor={c}",
                lab.base
            ),
            None => format!("{}/v1/rollouts/{PLAN}/devices?limit=1000", lab.base),
        };
        let a = lab.http("GET", &url, out, None);
        if a.code != "200" {
            return None;
        }
        for d in a.json["items"].as_array()? {
            all.insert(
                d["device_id"].as_str()?.to_string(),
                (
                    d["stage"].as_str()?.to_string(),
                    d["state"].as_str()?.to_string(),
                    d["attempt"].as_u64()?,
                ),
            );
        }
        match a.json["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return Some(all),
        }
    }
}

fn of(manifest: &BTreeMap<String, String>, behaviour: &str) -> BTreeSet<String> {
    manifest
        .iter()
        .filter(|(_, b)| b.as_str() == behaviour)
        .map(|(d, _)| d.clone())
        .collect()
}

fn count_in(devs: &Devices, set: &BTreeSet<String>, pred: impl Fn(&str) -> bool) -> usize {
    devs.iter()
        .filter(|(id, (_, s, _))| set.contains(*id) && pred(s))
        .count()
}

fn in_flight(s: &str) -> bool {
    matches!(
        s,
        "dispatched" | "downloading" | "installing" | "rebooting" | "verifying"
    )
}

fn reason_count(scan: &Value, code: &str) -> Option<u64> {
    scan["items"].as_array()?.iter().find(|i| i["id"] == PLAN)?["reasons"]
        .as_array()?
        .iter()
        .find(|r| r["code"] == code)
        .map(|r| r["count"].as_u64().unwrap_or(0))
        .or(Some(0))
}

struct Sim {
    child: Child,
}

impl Sim {
    /// SIGTERM (the simulator writes its summary and exits), bounded, then SIGKILL.
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = process::signal(self.child.id(), Signal::Term);
        if process::wait_bounded(&mut self.child, Duration::from_secs(20)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn run(lab: &mut Lab, seed: u64) -> anyhow::Result<bool> {
    let d = lab.dir.clone();
    let log = d.join("val13-cp.log");
    lab.cp_args = vec!["--promoter-interval".into(), "0.2".into()];
    if !lab.start_check(
        "VAL13-01",
        "CP starts and answers health",
        &log,
        &d.join("val13-health.json"),
        "val13-health.json val13-cp.log",
    ) {
        let why = format!("the CP did not start: {}", lab.start_error);
        for (id, name) in CHECKS {
            lab.not_run(id, name, &why);
        }
        return finish(lab, seed);
    }
    // The fleet.
    let key = lab.http(
        "POST",
        &format!("{}/v1/enroll-keys", lab.base),
        &d.join("val13-enroll-key.json"),
        Some(
            &json!({"labels": {"fleet": "val13"}, "max_uses": DEVICES, "ttl_seconds": 3600})
                .to_string(),
        ),
    );
    let key = key.json["key"].as_str().unwrap_or_default().to_string();
    // The key is a secret: the evidence keeps its id only.
    write(
        &d.join("val13-enroll-key.json"),
        &format!(
            "{{\"key\":\"(not kept)\",\"created\":{}}}\n",
            !key.is_empty()
        ),
    );
    let manifest_path = d.join("val13-manifest.json");
    let summary_path = d.join("val13-sim-summary.json");
    let sim_log = d.join("val13-sim.log");
    let sim = Command::new(&lab.bin)
        .args([
            "--server",
            &lab.base,
            "fleet",
            "simulate",
            "--devices",
            &DEVICES.to_string(),
            "--seed",
            &seed.to_string(),
            "--failing",
            "0.05",
            "--fail-attempts",
            "1",
            "--silent",
            "0.02",
            "--false-success",
            "0.02",
            "--reverting",
            "0.01",
            "--busy",
            "0.10",
            "--busy-for",
            &BUSY_FOR_S.to_string(),
            "--sites",
            &SITES.to_string(),
            "--step-seconds",
            "0.05",
            "--poll-wait",
            "3",
            "--progress-every",
            "5",
            "--duration",
            "900",
            "--manifest",
        ])
        .arg(&manifest_path)
        .arg("--summary")
        .arg(&summary_path)
        .env("AUTONOMY_ENROLL_KEY", &key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(&sim_log)
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        )
        .spawn();
    let mut sim = match sim {
        Ok(c) => Sim { child: c },
        Err(e) => {
            let why = format!("the simulator did not start: {e}");
            for (id, name) in CHECKS {
                lab.not_run(id, name, &why);
            }
            return finish(lab, seed);
        }
    };
    drive(lab, &manifest_path);
    sim.stop();
    summary_check(lab, &manifest_path, &summary_path);
    finish(lab, seed)
}

const CHECKS: [(&str, &str); 11] = [
    ("VAL13-02", "1,000 simulated devices enrolled, behaviours as the manifest says"),
    ("VAL13-03", "every stage has its exact size and every device of it was dispatched"),
    ("VAL13-04", "the manual gate before stage 3 waits and survives three CP SIGKILLs"),
    ("VAL13-05", "the failure threshold pauses the plan"),
    ("VAL13-06", "stuck scan codes and counts equal the manifest"),
    ("VAL13-07", "retry completes the failing devices"),
    ("VAL13-08", "final states: verified = healthy + failing + busy; false-success never verified; reverting rolled back"),
    ("VAL13-09", "no stage started twice"),
    ("VAL13-10", "audit verify is clean"),
    ("VAL13-11", "the simulator's summary agrees with its manifest"),
    ("VAL13-12", "no site ever exceeds its disruption budget; busy devices wait as waiting_ready, then verify"),
];

fn finish(lab: &mut Lab, seed: u64) -> anyhow::Result<bool> {
    lab.report.notes.push(format!(
        "behaviours are chosen by hash(seed, index) (seed {seed}; VAL13_SEED replays the same fleet)"
    ));
    let (_, _, result) = lab.finish(
        "VAL13 — a fleet rollout under chaos: 1,000 simulated devices, gates, pauses, SIGKILLs",
        kvs!["val13_seed" => seed, "devices" => DEVICES, "stage_sizes" => "50 200 300 450",
             "sites" => SITES, "site_budget" => SITE_BUDGET],
    )?;
    Ok(result == "PASS")
}

fn summary_check(lab: &mut Lab, manifest: &Path, summary: &Path) {
    let m: BTreeMap<String, String> = std::fs::read(manifest)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let s: Value = std::fs::read(summary)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for b in m.values() {
        *want.entry(b.clone()).or_default() += 1;
    }
    let got: BTreeMap<String, u64> = s["by_behaviour"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let enrolled = s["enrolled"].as_u64().unwrap_or(0);
    let pass = !want.is_empty() && want == got && enrolled == u64::from(DEVICES);
    let dir = lab.dir.clone();
    lab.report.check(
        "VAL13-11",
        "the simulator's summary agrees with its manifest",
        CheckFile::Write(dir.join("val13-summary-check.txt")),
        "val13-sim-summary.json val13-manifest.json val13-summary-check.txt",
        kvs![
            "manifest" => format!("{want:?}"), "summary" => format!("{got:?}"),
            "enrolled" => enrolled, "pass" => pass,
        ],
    );
}

/// Everything between the fleet's enrollment and the plan's completion (checks 02–10).
fn drive(lab: &mut Lab, manifest_path: &Path) {
    let d = lab.dir.clone();
    let scratch = lab.work.join("answer.json");
    let tl = d.join("val13-timeline.txt");
    write(&tl, "# VAL13 timeline\n");
    let t0 = Instant::now();
    let note = |s: &str| append(&tl, &format!("{:>7.1}s {s}\n", t0.elapsed().as_secs_f64()));

    // VAL13-02: the fleet enrolled.
    let mut enrolled = 0u64;
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        let a = lab.http(
            "GET",
            &format!("{}/v1/devices?selector=fleet=val13&limit=1000", lab.base),
            &d.join("val13-devices.json"),
            None,
        );
        enrolled = a.json["items"].as_array().map_or(0, |v| v.len() as u64);
        if enrolled == u64::from(DEVICES) && manifest_path.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let manifest: BTreeMap<String, String> = std::fs::read(manifest_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let (healthy, failing, silent, falses, reverting, busy) = (
        of(&manifest, "healthy"),
        of(&manifest, "failing"),
        of(&manifest, "silent"),
        of(&manifest, "false_success"),
        of(&manifest, "reverting"),
        of(&manifest, "busy"),
    );
    let ok02 = enrolled == u64::from(DEVICES) && manifest.len() == DEVICES as usize;
    note(&format!(
        "enrolled={enrolled} healthy={} failing={} silent={} false_success={} reverting={} busy={}",
        healthy.len(),
        failing.len(),
        silent.len(),
        falses.len(),
        reverting.len(),
        busy.len()
    ));
    lab.report.check(
        CHECKS[0].0,
        CHECKS[0].1,
        CheckFile::Write(d.join("val13-fleet-check.txt")),
        "val13-devices.json val13-manifest.json val13-sim.log val13-fleet-check.txt",
        kvs![
            "enrolled" => enrolled, "manifest_devices" => manifest.len(),
            "healthy" => healthy.len(), "failing" => failing.len(), "silent" => silent.len(),
            "false_success" => falses.len(), "reverting" => reverting.len(),
            "busy" => busy.len(), "pass" => ok02,
        ],
    );

    // The plan.
    let plan = json!({
        "metadata": {"id": PLAN, "labels": {"lab": "val13"}},
        "spec": {
            "artifact_ref": format!("oci://registry.example/val13/app@{}", digest()),
            "targets": {"selector": {"fleet": "val13"}},
            "stages": [
                {"name": "canary", "size": {"count": 50}},
                {"name": "wave-1", "size": {"percent": 20}},
                {"name": "wave-2", "size": {"percent": 30}, "approval": "manual"},
                {"name": "rest"}
            ],
            "policy": {"success_threshold_pct": 90, "failure_threshold": {"count": 1},
                       "on_failure": "pause", "device_timeout_seconds": 30,
                       "max_device_retries": 0, "reboot_required": true,
                       "silent_after_seconds": SILENT_AFTER_S,
                       "disruption_budget": {"group_by": ["site"], "max_unavailable": SITE_BUDGET},
                       "require": {"idle": true}}
        }
    });
    let created = lab.http(
        "POST",
        &format!("{}/v1/rollouts", lab.base),
        &d.join("val13-plan-create.json"),
        Some(&plan.to_string()),
    );
    let started = lab.http(
        "POST",
        &format!("{}/v1/rollouts/{PLAN}/start", lab.base),
        &d.join("val13-plan-start.json"),
        Some("{\"reason\":\"val13\"}"),
    );
    note(&format!(
        "plan create={} start={}",
        created.code, started.code
    ));

    // The drive.
    let mut first_pause: Option<(String, String)> = None;
    let mut scan_check: Option<Vec<(String, String)>> = None;
    let mut gate: Option<Vec<(String, String)>> = None;
    let (mut retries, mut resumes) = (0u32, 0u32);
    let deadline = Instant::now() + DRIVE_LIMIT;
    let mut phase = String::new();
    let mut budget = Budget::default();
    while Instant::now() < deadline {
        if let Some(devs) = devices(lab, &scratch) {
            budget.sample(&devs, &busy);
        }
        let a = lab.http(
            "GET",
            &format!("{}/v1/rollouts/{PLAN}", lab.base),
            &scratch,
            None,
        );
        if a.code != "200" {
            std::thread::sleep(Duration::from_millis(300));
            continue;
        }
        phase = a.at("/status/phase");
        let r = &a.json["status"]["rollout"];
        if phase == "completed" {
            note("plan completed");
            break;
        }
        if phase == "published" && r["gate"]["stage"].as_u64() == Some(GATE_STAGE) && gate.is_none()
        {
            note("waiting at the gate before stage 2");
            gate = Some(gate_chaos(lab, &note));
            let approve = lab.http(
                "POST",
                &format!("{}/v1/rollouts/{PLAN}/start", lab.base),
                &d.join("val13-gate-approve.json"),
                Some(&json!({"stage": GATE_STAGE, "reason": "val13 approval"}).to_string()),
            );
            note(&format!("gate approved: HTTP {}", approve.code));
            continue;
        }
        if phase == "paused" && r["paused_by"] == "engine" {
            let reason = r["reason"].as_str().unwrap_or_default().to_string();
            if first_pause.is_none() {
                note(&format!("first engine pause: reason={reason}"));
                first_pause = Some(("engine".into(), reason.clone()));
                write(&d.join("val13-first-pause.json"), &a.json.to_string());
                scan_check = Some(first_pause_scan(lab, &manifest, &note));
            }
            let devs = devices(lab, &scratch).unwrap_or_default();
            let failed = devs.values().filter(|(_, s, _)| s == "failed").count();
            let (strategy, body) = if failed > 0 {
                retries += 1;
                ("retry", "val13: failed devices get another attempt")
            } else {
                resumes += 1;
                ("resume", "")
            };
            let url = if strategy == "retry" {
                format!("{}/v1/rollback/execute", lab.base)
            } else {
                format!("{}/v1/rollouts/{PLAN}/resume", lab.base)
            };
            let payload = if strategy == "retry" {
                json!({"target": "rollout_plan", "resource": PLAN, "strategy": "retry", "reason": body})
            } else {
                json!({"reason": "val13: accept timed-out and rolled-back devices"})
            };
            let res = lab.http("POST", &url, &scratch, Some(&payload.to_string()));
            note(&format!(
                "engine pause ({reason}, failed={failed}): {strategy} → HTTP {}",
                res.code
            ));
            continue;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    note(&format!(
        "drive ended: phase={phase} retries={retries} resumes={resumes}"
    ));
    let fin = lab.http(
        "GET",
        &format!("{}/v1/rollouts/{PLAN}", lab.base),
        &d.join("val13-plan-final.json"),
        None,
    );
    let devs = devices(lab, &d.join("val13-devices-final.json")).unwrap_or_default();
    write(
        &d.join("val13-devices-final.json"),
        &serde_json::to_string_pretty(&devs).unwrap_or_default(),
    );

    // VAL13-03: stage sizes and dispatch.
    let sizes: Vec<u64> = fin.json["status"]["rollout"]["stages"]
        .as_array()
        .map(|s| s.iter().map(|x| x["size"].as_u64().unwrap_or(0)).collect())
        .unwrap_or_default();
    let never = devs.values().filter(|(_, s, _)| s == "pending").count();
    let ok03 = sizes == SIZES && devs.len() == DEVICES as usize && never == 0;
    lab.report.check(
        CHECKS[1].0,
        CHECKS[1].1,
        CheckFile::Write(d.join("val13-stages-check.txt")),
        "val13-plan-final.json val13-devices-final.json val13-stages-check.txt",
        kvs![
            "stage_sizes" => format!("{sizes:?}"), "want" => format!("{SIZES:?}"),
            "assignments" => devs.len(), "never_dispatched" => never, "pass" => ok03,
        ],
    );

    // VAL13-04: the gate.
    match gate {
        Some(kv) => {
            lab.report.check(
                CHECKS[2].0,
                CHECKS[2].1,
                CheckFile::Write(d.join("val13-gate-check.txt")),
                "val13-gate-check.txt val13-timeline.txt val13-cp.log",
                kv,
            );
        }
        None => lab.not_run(CHECKS[2].0, CHECKS[2].1, "the plan never reached the gate"),
    }

    // VAL13-05: the first pause.
    let ok05 = first_pause
        .as_ref()
        .is_some_and(|(by, reason)| by == "engine" && reason == "failure_threshold");
    lab.report.check(
        CHECKS[3].0,
        CHECKS[3].1,
        CheckFile::Write(d.join("val13-pause-check.txt")),
        "val13-first-pause.json val13-pause-check.txt",
        kvs![
            "paused_by" => first_pause.as_ref().map(|p| p.0.clone()).unwrap_or_default(),
            "reason" => first_pause.as_ref().map(|p| p.1.clone()).unwrap_or_default(),
            "pass" => ok05,
        ],
    );

    // VAL13-06: the scan at the first pause.
    match scan_check {
        Some(kv) => {
            lab.report.check(
                CHECKS[4].0,
                CHECKS[4].1,
                CheckFile::Write(d.join("val13-stuck-check.txt")),
                "val13-stuck-scan.json val13-stuck-check.txt",
                kv,
            );
        }
        None => lab.not_run(CHECKS[4].0, CHECKS[4].1, "the plan never paused"),
    }

    // VAL13-07 / 08: final states.
    let failing_verified = count_in(&devs, &failing, |s| s == "verified");
    let failing_retried = devs
        .iter()
        .filter(|(id, (_, s, a))| failing.contains(*id) && s == "verified" && *a >= 2)
        .count();
    let ok07 = retries > 0 && failing_verified == failing.len() && failing_retried == failing.len();
    lab.report.check(
        CHECKS[5].0,
        CHECKS[5].1,
        CheckFile::Write(d.join("val13-retry-check.txt")),
        "val13-devices-final.json val13-timeline.txt val13-retry-check.txt",
        kvs![
            "retries" => retries, "resumes" => resumes, "failing" => failing.len(),
            "failing_verified" => failing_verified, "failing_verified_on_attempt_2_or_later" => failing_retried,
            "pass" => ok07,
        ],
    );
    let verified = devs.values().filter(|(_, s, _)| s == "verified").count();
    let want_verified = healthy.len() + failing.len() + busy.len();
    let false_verified = count_in(&devs, &falses, |s| s == "verified");
    let reverting_rolled = count_in(&devs, &reverting, |s| s == "rolled_back");
    let silent_verified = count_in(&devs, &silent, |s| s == "verified");
    let ok08 = phase == "completed"
        && verified == want_verified
        && false_verified == 0
        && silent_verified == 0
        && reverting_rolled == reverting.len();
    lab.report.check(
        CHECKS[6].0,
        CHECKS[6].1,
        CheckFile::Write(d.join("val13-final-check.txt")),
        "val13-plan-final.json val13-devices-final.json val13-final-check.txt",
        kvs![
            "phase" => phase, "verified" => verified, "want_verified" => want_verified,
            "false_success_verified" => false_verified, "silent_verified" => silent_verified,
            "reverting" => reverting.len(), "reverting_rolled_back" => reverting_rolled,
            "pass" => ok08,
        ],
    );

    // VAL13-12: the budget and the busy devices.
    let waiting_events = lab.http(
        "GET",
        &format!(
            "{}/v1/audit/events?event_type=rollout.devices_waiting&resource={PLAN}&limit=1000",
            lab.base
        ),
        &d.join("val13-devices-waiting.json"),
        None,
    );
    let waiting_events = waiting_events.json["items"]
        .as_array()
        .map_or(0, |v| v.len());
    let busy_verified = count_in(&devs, &busy, |s| s == "verified");
    let ok12 = budget.samples > 0
        && budget.peak <= SITE_BUDGET
        && !busy.is_empty()
        && !budget.busy_waited.is_empty()
        && waiting_events > 0
        && busy_verified == busy.len();
    lab.report.check(
        CHECKS[10].0,
        CHECKS[10].1,
        CheckFile::Write(d.join("val13-gates-check.txt")),
        "val13-gates-check.txt val13-devices-waiting.json val13-devices-final.json",
        kvs![
            "samples" => budget.samples, "peak_in_flight_per_site" => budget.peak,
            "site_budget" => SITE_BUDGET, "peak_in_flight_total" => budget.peak_total,
            "busy" => busy.len(), "busy_seen_waiting_ready" => budget.busy_waited.len(),
            "waiting_ready_seen" => budget.waiting_seen.len(),
            "devices_waiting_events" => waiting_events, "busy_verified" => busy_verified,
            "pass" => ok12,
        ],
    );

    // VAL13-09: no stage started twice.
    let ev = lab.http(
        "GET",
        &format!(
            "{}/v1/audit/events?event_type=rollout.stage_started&resource={PLAN}&limit=1000",
            lab.base
        ),
        &d.join("val13-stage-started.json"),
        None,
    );
    let stages: Vec<u64> = ev.json["items"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|e| e["details"]["stage"].as_u64().unwrap_or(99))
                .collect()
        })
        .unwrap_or_default();
    let distinct: BTreeSet<u64> = stages.iter().copied().collect();
    let ok09 = stages.len() == SIZES.len() && distinct.len() == SIZES.len();
    lab.report.check(
        CHECKS[7].0,
        CHECKS[7].1,
        CheckFile::Write(d.join("val13-stage-started-check.txt")),
        "val13-stage-started.json val13-stage-started-check.txt",
        kvs!["stage_started_events" => stages.len(), "stages" => format!("{stages:?}"), "pass" => ok09],
    );

    // VAL13-10: audit verify, with the CP stopped.
    lab.stop_cp();
    let out = d.join("val13-audit-verify.txt");
    let args: Vec<String> = vec![
        "audit".into(),
        "verify".into(),
        "--audit-dir".into(),
        lab.audit_dir.display().to_string(),
    ];
    let run = lab.cli(&out, None, &args, Duration::from_secs(120));
    let ok10 = run.rc == 0;
    lab.report.check(
        CHECKS[8].0,
        CHECKS[8].1,
        CheckFile::Write(d.join("val13-audit-check.txt")),
        "val13-audit-verify.txt val13-audit-check.txt",
        kvs!["exit_code" => run.rc, "pass" => ok10],
    );
}

/// What the drive saw of the gates: the most devices in flight on one site (and in all), and
/// which devices it saw `waiting_ready`.
#[derive(Default)]
struct Budget {
    samples: u64,
    peak: usize,
    peak_total: usize,
    waiting_seen: BTreeSet<String>,
    busy_waited: BTreeSet<String>,
}

impl Budget {
    fn sample(&mut self, devs: &Devices, busy: &BTreeSet<String>) {
        let mut per_site: BTreeMap<u32, usize> = BTreeMap::new();
        for (id, (_, state, _)) in devs {
            if in_flight(state) {
                // The simulator puts device i on site i mod SITES (ids end in the index).
                let index: u32 = id
                    .rsplit('-')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                *per_site.entry(index % SITES).or_default() += 1;
            }
            if state == "waiting_ready" {
                self.waiting_seen.insert(id.clone());
                if busy.contains(id) {
                    self.busy_waited.insert(id.clone());
                }
            }
        }
        self.samples += 1;
        self.peak = self.peak.max(per_site.values().copied().max().unwrap_or(0));
        self.peak_total = self.peak_total.max(per_site.values().sum());
    }
}

/// At the first engine pause: waits (bounded) until only silent and false-success devices are
/// in flight, silent ones have been quiet past `silent_after_seconds` and false-success ones
/// stuck past the scan threshold, then scans and compares with the manifest.
fn first_pause_scan(
    lab: &mut Lab,
    manifest: &BTreeMap<String, String>,
    note: &dyn Fn(&str),
) -> Vec<(String, String)> {
    let d = lab.dir.clone();
    let scratch = lab.work.join("scan-devices.json");
    let (failing, silent, falses, reverting) = (
        of(manifest, "failing"),
        of(manifest, "silent"),
        of(manifest, "false_success"),
        of(manifest, "reverting"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut devs = Devices::new();
    let mut settled_at: Option<Instant> = None;
    while Instant::now() < deadline {
        devs = devices(lab, &scratch).unwrap_or_default();
        let others_in_flight = devs
            .iter()
            .filter(|(id, (_, s, _))| {
                in_flight(s) && !silent.contains(*id) && !falses.contains(*id)
            })
            .count();
        if others_in_flight == 0 {
            let at = *settled_at.get_or_insert_with(Instant::now);
            // Silent: no poll for silent_after; false-success: no change for the threshold.
            if at.elapsed() >= Duration::from_secs(SILENT_AFTER_S + 2) {
                break;
            }
        } else {
            settled_at = None;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let dispatched =
        |set: &BTreeSet<String>| count_in(&devs, set, |s| s != "pending" && s != "cancelled");
    let want_failing = count_in(&devs, &failing, |s| s == "failed")
        + count_in(&devs, &reverting, |s| s == "rolled_back");
    let want_silent = count_in(&devs, &silent, in_flight);
    let want_nonconv = count_in(&devs, &falses, in_flight);
    let scan = lab.http(
        "GET",
        &format!(
            "{}/v1/rollouts/stuck?threshold_seconds={SCAN_THRESHOLD_S}",
            lab.base
        ),
        &d.join("val13-stuck-scan.json"),
        None,
    );
    let item_code = scan.json["items"]
        .as_array()
        .and_then(|v| v.iter().find(|i| i["id"] == PLAN))
        .map(|i| i["code"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    let got_failing = reason_count(&scan.json, "failing_devices").unwrap_or(0);
    let got_silent = reason_count(&scan.json, "silent_devices").unwrap_or(0);
    let got_nonconv = reason_count(&scan.json, "non_converging_devices").unwrap_or(0);
    note(&format!(
        "first-pause scan: code={item_code} failing={got_failing}/{want_failing} silent={got_silent}/{want_silent} non_converging={got_nonconv}/{want_nonconv}"
    ));
    let pass = item_code == "failure_threshold_reached"
        && got_failing == want_failing as u64
        && got_silent == want_silent as u64
        && got_nonconv == want_nonconv as u64
        && want_failing > 0;
    kvs![
        "code" => item_code,
        "failing_devices" => got_failing, "want_failing" => want_failing,
        "silent_devices" => got_silent, "want_silent" => want_silent,
        "non_converging_devices" => got_nonconv, "want_non_converging" => want_nonconv,
        "silent_dispatched" => dispatched(&silent), "false_success_dispatched" => dispatched(&falses),
        "pass" => pass,
    ]
}

/// At the gate: it waits (nothing of stage 2 dispatched for 3 s), then three SIGKILL and
/// restart cycles, each time still waiting at the gate with stage 2 untouched.
fn gate_chaos(lab: &mut Lab, note: &dyn Fn(&str)) -> Vec<(String, String)> {
    let d = lab.dir.clone();
    let scratch = lab.work.join("gate.json");
    let log = d.join("val13-cp.log");
    let stage2_started = |devs: &Devices| {
        devs.values()
            .filter(|(st, s, _)| st == "wave-2" && s != "pending")
            .count()
    };
    std::thread::sleep(Duration::from_secs(3));
    let before = devices(lab, &scratch).unwrap_or_default();
    let waited = stage2_started(&before) == 0;
    let (mut kills_ok, mut still_at_gate) = (0usize, 0usize);
    for k in 1..=KILLS {
        let killed = lab.kill9().is_some();
        let up = lab.lab_cp_start(&log) == Started::Ready;
        let a = lab.http(
            "GET",
            &format!("{}/v1/rollouts/{PLAN}", lab.base),
            &d.join(format!("val13-gate-after-kill-{k}.json")),
            None,
        );
        let at_gate = a.at("/status/phase") == "published"
            && a.json["status"]["rollout"]["gate"]["stage"].as_u64() == Some(GATE_STAGE);
        let devs = devices(lab, &scratch).unwrap_or_default();
        let untouched = stage2_started(&devs) == 0;
        note(&format!(
            "gate SIGKILL {k}: killed={killed} restarted={up} at_gate={at_gate} stage2_untouched={untouched}"
        ));
        if killed && up {
            kills_ok += 1;
        }
        if at_gate && untouched {
            still_at_gate += 1;
        }
    }
    let pass = waited && kills_ok == KILLS && still_at_gate == KILLS;
    kvs![
        "waited_3s_without_dispatch" => waited, "sigkills" => kills_ok,
        "at_gate_after_each" => still_at_gate, "pass" => pass,
    ]
}

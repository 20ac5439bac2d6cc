//! F1 (issue 11): a simulated fleet through a 4-stage rollout. `autonomy fleet simulate` (the
//! agent's state machine per device, one process) enrolls N devices with an enroll key; one
//! engine-driven plan (100 devices, 20%, 30%, the rest) rolls out to all of them. Measured: the
//! wall time from start to `completed`, the CP's peak RSS and its CPU per device report, and
//! the simulator's memory per device. The simulator's own CPU is reported beside the CP's: it
//! shares the two cores.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use autonomy_api::device::EnrollKeyRequest;
use autonomy_api::{TransitionRequest, Verb};
use serde::Serialize;

use crate::cp;
use crate::http::{metric, Http};
use crate::load::REQUEST_TIMEOUT;
use crate::stats::round3;
use crate::suite::Env;

const TARGET_HEX: &str = "f1ee700000000000000000000000000000000000000000000000000000000001";

#[derive(Debug, Clone, Serialize)]
pub struct F1Report {
    pub devices: u64,
    pub stage_sizes: Vec<u64>,
    /// Enroll of every device (the simulator's start) to all enrolled.
    pub enroll_seconds: f64,
    /// `start` to `completed`.
    pub rollout_seconds: f64,
    pub completed: bool,
    pub verified: u64,
    pub reports: u64,
    pub polls: u64,
    pub cp_peak_rss_kib: Option<u64>,
    /// CP CPU over the rollout, per device report.
    pub cp_cpu_us_per_report: Option<f64>,
    pub cp_cpu_seconds: Option<f64>,
    pub simulator_cpu_seconds: Option<f64>,
    pub simulator_peak_rss_kib: Option<u64>,
    pub simulator_kib_per_device: Option<f64>,
    pub method: &'static str,
}

struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cpu_of(pid: u32) -> Option<f64> {
    cp::cpu_seconds(Path::new(&format!("/proc/{pid}/stat")))
}

/// The body of an engine-driven plan over `selector` in four stages — `canary` devices, 20%,
/// 30%, the rest — failing at the first failed device (F1 and F2).
pub fn four_stage_plan(
    id: &str,
    artifact_ref: &str,
    selector: serde_json::Value,
    canary: u64,
) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"id": id, "labels": {"bench": "autonomy-bench"}},
        "spec": {
            "artifact_ref": artifact_ref,
            "targets": {"selector": selector},
            "stages": [
                {"name": "canary", "size": {"count": canary}},
                {"name": "wave-1", "size": {"percent": 20}},
                {"name": "wave-2", "size": {"percent": 30}},
                {"name": "rest"}
            ],
            "policy": {"failure_threshold": {"count": 1}, "device_timeout_seconds": 1800}
        }
    })
}

/// A measured value, or `?`.
pub fn show(v: Option<f64>) -> String {
    v.map_or("?".into(), |v| format!("{v:.1}"))
}

pub fn run_f1(env: &Env) -> anyhow::Result<F1Report> {
    let n = env.cfg.f1_devices.max(10);
    eprintln!("F1: {n} simulated devices (autonomy fleet simulate) through a 4-stage rollout");
    let cp = env.start_args(
        &env.work.join("fleet-f1"),
        "f1",
        &["--promoter-interval", "0.5", "--max-connections", "30000"],
    )?;
    let http = Http::new(&cp.url, REQUEST_TIMEOUT)?;
    let key = http
        .call(&http.api().create_enroll_key(&EnrollKeyRequest {
            labels: [("fleet".to_string(), "f1".to_string())].into(),
            max_uses: n as u32,
            ttl_seconds: 3600,
        }))?
        .value()?
        .key;
    let summary = env.work.join("fleet-f1-summary.json");
    let log = env.logs.join("fleet-f1-simulator.log");
    let t0 = Instant::now();
    let mut cmd = Command::new(&env.bin);
    cp::clean_env(&mut cmd);
    cmd.args(["--server", &cp.url, "fleet", "simulate", "--devices"])
        .arg(n.to_string())
        .args([
            "--step-seconds",
            "0.05",
            "--poll-wait",
            "20",
            "--progress-every",
            "10",
            "--duration",
            "3600",
            "--summary",
        ])
        .arg(&summary)
        .env("AUTONOMY_ENROLL_KEY", &key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).map(Stdio::from)?);
    let sim = Sim(cmd.spawn().context("starting autonomy fleet simulate")?);
    let sim_pid = sim.0.id();

    // All enrolled: the registry pages hold every device.
    let limit = Duration::from_secs(600);
    let enrolled_at = loop {
        let mut count = 0u64;
        let mut cursor: Option<String> = None;
        loop {
            let page = http
                .call(
                    &http
                        .api()
                        .list_devices(Some("fleet=f1"), Some(1000), cursor.as_deref()),
                )?
                .value()?;
            count += page.items.len() as u64;
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        if count >= n {
            break t0.elapsed();
        }
        if t0.elapsed() > limit {
            bail!("only {count} of {n} devices enrolled within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("  {n} enrolled in {:.1} s", enrolled_at.as_secs_f64());

    let metrics = |http: &Http| -> anyhow::Result<(f64, f64)> {
        let t = http
            .call(&http.api().get::<()>("/metrics", &[]))?
            .text()
            .into_owned();
        Ok((
            metric(&t, "autonomy_device_reports_total").unwrap_or(0.0),
            metric(&t, "autonomy_device_polls_total").unwrap_or(0.0),
        ))
    };
    let (reports0, polls0) = metrics(&http)?;
    let cp_pid = cp.pid().ok_or_else(|| anyhow!("the CP is not running"))?;
    let (cp_cpu0, sim_cpu0) = (cpu_of(cp_pid), cpu_of(sim_pid));
    let body = four_stage_plan(
        "f1-fleet",
        &format!("oci://registry.example.com/fleet/f1@sha256:{TARGET_HEX}"),
        serde_json::json!({"fleet": "f1"}),
        100,
    );
    http.call(
        &http
            .api()
            .create_rollout_json(body.to_string().into_bytes(), None),
    )?;
    let started = Instant::now();
    http.call(
        &http
            .api()
            .transition("f1-fleet", Verb::Start, &TransitionRequest::default()),
    )?;
    let mut completed = false;
    let mut stage_sizes = Vec::new();
    let mut verified = 0;
    while started.elapsed() < limit {
        let r = http.call(&http.api().get_rollout("f1-fleet"))?.value()?;
        if let Some(ro) = &r.status.rollout {
            stage_sizes = ro.stages.iter().map(|s| s.size).collect();
            verified = ro
                .stages
                .iter()
                .map(|s| {
                    s.counts
                        .get(&autonomy_api::DeviceState::Verified)
                        .copied()
                        .unwrap_or(0)
                })
                .sum();
        }
        if r.status.phase == autonomy_api::Phase::Completed {
            completed = true;
            break;
        }
        if !matches!(
            r.status.phase,
            autonomy_api::Phase::Active | autonomy_api::Phase::Published
        ) {
            bail!(
                "the F1 plan went {} (see {})",
                r.status.phase,
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let rollout = started.elapsed();
    let (cp_cpu1, sim_cpu1) = (cpu_of(cp_pid), cpu_of(sim_pid));
    let (reports1, polls1) = metrics(&http)?;
    let sim_peak = autonomy_testkit::process::peak_rss_kib(sim_pid);
    let cp_peak = cp.peak_rss_kib();
    drop(sim);
    env.stop(cp)?;
    let reports = (reports1 - reports0).max(0.0) as u64;
    let cp_cpu = cp_cpu0.zip(cp_cpu1).map(|(a, b)| round3(b - a));
    let report = F1Report {
        devices: n,
        stage_sizes,
        enroll_seconds: round3(enrolled_at.as_secs_f64()),
        rollout_seconds: round3(rollout.as_secs_f64()),
        completed,
        verified,
        reports,
        polls: (polls1 - polls0).max(0.0) as u64,
        cp_peak_rss_kib: cp_peak,
        cp_cpu_us_per_report: cp_cpu
            .filter(|_| reports > 0)
            .map(|c| round3(c * 1e6 / reports as f64)),
        cp_cpu_seconds: cp_cpu,
        simulator_cpu_seconds: sim_cpu0.zip(sim_cpu1).map(|(a, b)| round3(b - a)),
        simulator_peak_rss_kib: sim_peak,
        simulator_kib_per_device: sim_peak.map(|k| round3(k as f64 / n as f64)),
        method: "autonomy fleet simulate (--step-seconds 0.05, --poll-wait 20) enrolls N devices, \
                 then one 4-stage plan over them (100 / 20% / 30% / rest, all healthy); wall time \
                 from start to completed; CP and simulator CPU from /proc/PID/stat over the \
                 rollout; reports and polls are /metrics deltas; peak RSS is VmHWM",
    };
    eprintln!(
        "  completed={} in {:.1} s; CP peak RSS {} KiB, {} µs CPU per report; simulator {} KiB per device",
        report.completed,
        report.rollout_seconds,
        report.cp_peak_rss_kib.unwrap_or(0),
        show(report.cp_cpu_us_per_report),
        show(report.simulator_kib_per_device)
    );
    Ok(report)
}

//! The rollout engine's phases (issue 10): E1 idle long polls, E2 durable device reports at
//! concurrency 256, E3 the promoter tick over 100k devices in 100 plans, E4 the stuck scan over
//! that fleet, E5 the last report of a stage to the next stage's dispatch.
//!
//! The CP runs with RBAC off: devices name themselves with `X-Autonomy-Device` (no token
//! lookup), which keeps the device-side generators (E1, E2, and E3's state mixing) cheap; they
//! speak raw HTTP/1.1 over kept-alive connections ([`crate::raw`]) and each generator thread
//! reads its own CPU time. Registration, plan creation and E5 go through `autonomy-client`.
//! E3 times `autonomy_server::promoter::tick` in this process, over a `SqliteStore` opened on
//! the fleet's data dir once its CP has stopped (the data dir lock allows one holder).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use autonomy_api::device::{PollRequest, RegisterDeviceRequest, ReportRequest, ReportState};
use autonomy_api::{DeviceState, Phase, Rollout, StuckCode, StuckQuery, TransitionRequest, Verb};
use serde::Serialize;

use crate::cp::{self, Cp};
use crate::http::Http;
use crate::limit::LimitReport;
use crate::load::REQUEST_TIMEOUT;
use crate::raw::{self, Conn};
use crate::stats::{round1, round3, Latency};
use crate::suite::{store_delta, store_snap, Env, StoreDelta};

/// The digest every engine plan of the bench rolls out (`sha256:…` of its artifact).
const TARGET_HEX: &str = "7e570000000000000000000000000000000000000000000000000000b3c4da7a";
/// The digest the devices run before.
const OLD_DIGEST: &str = "sha256:01d0000000000000000000000000000000000000000000000000000000000000";
/// Longest wait for a fleet to be dispatched or a plan to reach a phase.
const SETTLE_LIMIT: Duration = Duration::from_secs(600);
/// Errors a seeding may meet before it stops.
const SEED_ERROR_BUDGET: u64 = 20;

fn target_digest() -> String {
    format!("sha256:{TARGET_HEX}")
}

fn artifact_ref() -> String {
    format!("oci://registry.example.com/fleet/agent@sha256:{TARGET_HEX}")
}

/// This process's CPU (user + system), seconds. The generators' threads are the only busy
/// ones while they run (the main thread sleeps), and per-thread times would lose a clock tick
/// (10 ms) per short-lived thread, so the generators' CPU is this process's delta.
fn bench_cpu() -> Option<f64> {
    cp::cpu_seconds(Path::new("/proc/self/stat"))
}

fn delta(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    a.zip(b).map(|(a, b)| round3((b - a).max(0.0)))
}

fn per_wall(v: Option<f64>, wall: f64) -> Option<f64> {
    v.map(|v| round3(v / wall.max(1e-9)))
}

/// First few error texts, shared by worker threads.
#[derive(Default)]
pub(crate) struct Errors {
    count: AtomicU64,
    first: Mutex<Vec<String>>,
}

impl Errors {
    pub(crate) fn note(&self, what: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() < 5 {
            f.push(what);
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub(crate) fn first(&self) -> Vec<String> {
        self.first.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Seeding: devices and engine plans
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct DeviceSeed {
    pub devices: u64,
    pub concurrency: usize,
    pub seconds: f64,
    pub registrations_per_sec: f64,
    pub errors: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub first_errors: Vec<String>,
}

/// Registers `ids` (`POST /v1/devices`, each answered once durable) at `concurrency`, with the
/// labels `labels(i)`.
pub(crate) fn register(
    base: &str,
    ids: &[String],
    labels: &(dyn Fn(usize) -> BTreeMap<String, String> + Sync),
    concurrency: usize,
) -> anyhow::Result<DeviceSeed> {
    let next = AtomicUsize::new(0);
    let errors = Errors::default();
    let started = Instant::now();
    let done = AtomicU64::new(0);
    let workers = concurrency.clamp(1, 1024).min(ids.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                let http = match Http::new(base, REQUEST_TIMEOUT) {
                    Ok(h) => h,
                    Err(e) => return errors.note(e.to_string()),
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= ids.len() || errors.count() > SEED_ERROR_BUDGET {
                        break;
                    }
                    let call = http.api().register_device(&RegisterDeviceRequest {
                        id: ids[i].clone(),
                        labels: labels(i),
                    });
                    match http.call(&call) {
                        Ok(_) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors.note(format!("register {}: {e}", ids[i])),
                    }
                }
            });
        }
        let mut last = Instant::now();
        while next.load(Ordering::Relaxed) < ids.len() && errors.count() <= SEED_ERROR_BUDGET {
            std::thread::sleep(Duration::from_millis(100));
            if last.elapsed() >= Duration::from_secs(10) {
                last = Instant::now();
                eprintln!(
                    "  registered {}/{} devices ({:.0} s)",
                    done.load(Ordering::Relaxed),
                    ids.len(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let seed = DeviceSeed {
        devices: done.load(Ordering::Relaxed),
        concurrency: workers,
        seconds: round3(secs),
        registrations_per_sec: round1(done.load(Ordering::Relaxed) as f64 / secs.max(1e-9)),
        errors: errors.count(),
        first_errors: errors.first(),
    };
    if seed.devices != ids.len() as u64 {
        bail!(
            "registered {} of {} devices; first errors: {:?}",
            seed.devices,
            ids.len(),
            seed.first_errors
        );
    }
    eprintln!(
        "  registered {} devices in {} s ({:.0}/s)",
        seed.devices, seed.seconds, seed.registrations_per_sec
    );
    Ok(seed)
}

fn labels(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// Creates engine plan `id` over the devices matching `selector`, with `stages` and `policy`
/// (JSON), and starts it.
fn create_and_start(
    http: &Http,
    id: &str,
    selector: &BTreeMap<String, String>,
    stages: serde_json::Value,
    policy: serde_json::Value,
) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "metadata": {"id": id, "labels": {"bench": "autonomy-bench"}},
        "spec": {
            "artifact_ref": artifact_ref(),
            "targets": {"selector": selector},
            "stages": stages,
            "policy": policy,
        },
    });
    http.call(
        &http
            .api()
            .create_rollout_json(body.to_string().into_bytes(), None),
    )
    .with_context(|| format!("creating engine plan {id}"))?;
    http.call(
        &http
            .api()
            .transition(id, Verb::Start, &TransitionRequest::default()),
    )
    .with_context(|| format!("starting engine plan {id}"))?;
    Ok(())
}

fn get_plan(http: &Http, id: &str) -> anyhow::Result<Rollout> {
    Ok(http
        .call(&http.api().get_rollout(id))
        .with_context(|| format!("reading plan {id}"))?
        .value()?)
}

/// Devices of `r` no longer `pending` (dispatched or further).
fn dispatched(r: &Rollout) -> u64 {
    r.status.rollout.as_ref().map_or(0, |s| {
        s.stages
            .iter()
            .flat_map(|st| st.counts.iter())
            .filter(|(state, _)| **state != DeviceState::Pending)
            .map(|(_, n)| *n)
            .sum()
    })
}

/// Waits until the plans `ids` have `expected` devices past `pending` between them: the time
/// it took from the call.
fn wait_dispatched(http: &Http, ids: &[String], expected: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut done = vec![false; ids.len()];
    let mut total = 0;
    loop {
        for (i, id) in ids.iter().enumerate() {
            if done[i] {
                continue;
            }
            let r = get_plan(http, id)?;
            let n = dispatched(&r);
            let size: u64 = r
                .status
                .rollout
                .as_ref()
                .map_or(0, |s| s.stages.iter().map(|st| st.size).sum());
            if size > 0 && n >= size {
                done[i] = true;
                total += n;
            }
        }
        if done.iter().all(|d| *d) {
            if total < expected {
                bail!("the plans hold {total} devices, expected {expected}");
            }
            return Ok(round3(started.elapsed().as_secs_f64()));
        }
        if started.elapsed() > SETTLE_LIMIT {
            bail!(
                "the plans were not dispatched within {} s ({} of {} plans done)",
                SETTLE_LIMIT.as_secs(),
                done.iter().filter(|d| **d).count(),
                ids.len()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// Device reports (E2, and E3's state mixing)
// ---------------------------------------------------------------------------------------------

/// How far a device goes in its plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    /// downloading, installing, rebooting, verifying (new boot), succeeded: `verified`.
    Verified,
    /// downloading, installing.
    Installing,
    /// downloading.
    Downloading,
    /// downloading, failed.
    Failed,
}

/// (state, installed digest, boot id) of each report of a script.
fn steps(script: Script) -> Vec<(ReportState, String, &'static str)> {
    let old = || OLD_DIGEST.to_string();
    let new = target_digest;
    let mut s = vec![(ReportState::Downloading, old(), "boot-a")];
    match script {
        Script::Downloading => {}
        Script::Failed => s.push((ReportState::Failed, old(), "boot-a")),
        Script::Installing => s.push((ReportState::Installing, old(), "boot-a")),
        Script::Verified => {
            s.push((ReportState::Installing, old(), "boot-a"));
            s.push((ReportState::Rebooting, old(), "boot-a"));
            s.push((ReportState::Verifying, new(), "boot-b"));
            s.push((ReportState::Succeeded, new(), "boot-b"));
        }
    }
    s
}

fn report_body(plan: &str, seq: u64, state: ReportState, digest: &str, boot: &str) -> String {
    format!(
        "{{\"plan_id\":\"{plan}\",\"attempt\":1,\"seq\":{seq},\"state\":\"{}\",\
         \"installed_digest\":\"{digest}\",\"boot_id\":\"{boot}\",\"message\":\"\"}}",
        state.as_str()
    )
}

/// One device's reports: (device, plan, script).
struct Job {
    device: String,
    plan: String,
    script: Script,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportRun {
    pub concurrency: usize,
    pub devices_started: u64,
    pub devices_finished: u64,
    /// Reports answered 200 `applied`.
    pub reports: u64,
    /// From the first report sent to the last answer.
    pub seconds: f64,
    pub reports_per_sec: f64,
    pub latency: Latency,
    /// Answers other than 200 `applied`, and transport errors.
    pub errors: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub first_errors: Vec<String>,
    /// CPU of the bench process while the reporters ran (threads started and joined
    /// included), seconds, and ÷ the reports' wall time.
    pub generator_cpu_seconds: Option<f64>,
    pub generator_cpus_used: Option<f64>,
    /// What ended it: `devices` (every job done) or `time`.
    pub ended_by: &'static str,
}

/// `concurrency` reporters, each taking the next device of `jobs` and sending its script in
/// order (raw HTTP, one kept-alive connection each), until the jobs or `limit` run out.
fn run_reports(addr: SocketAddr, jobs: &[Job], concurrency: usize, limit: Duration) -> ReportRun {
    let next = AtomicUsize::new(0);
    let finished = AtomicU64::new(0);
    let errors = Errors::default();
    let cpu0 = bench_cpu();
    let started = Instant::now();
    let end = started + limit;
    let timed_out = AtomicBool::new(false);
    let workers = concurrency.clamp(1, 1024);
    let per_worker: Vec<(Vec<Duration>, Option<Instant>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let (next, finished, errors, timed_out) = (&next, &finished, &errors, &timed_out);
                s.spawn(move || {
                    let mut conn = Conn::new(addr);
                    let mut lat = Vec::new();
                    let mut last = None;
                    'jobs: loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(job) = jobs.get(i) else { break };
                        for (seq, (state, digest, boot)) in
                            steps(job.script).into_iter().enumerate()
                        {
                            if Instant::now() >= end {
                                timed_out.store(true, Ordering::Relaxed);
                                break 'jobs;
                            }
                            let body = report_body(&job.plan, seq as u64 + 1, state, &digest, boot);
                            let req =
                                raw::device_post(addr, "/v1/device/reports", &job.device, &body);
                            let sent = Instant::now();
                            match conn.exchange(&req) {
                                Ok(200) if memmem(&conn.body, b"\"applied\"") => {
                                    let done = Instant::now();
                                    lat.push(done - sent);
                                    last = Some(done);
                                }
                                Ok(status) => {
                                    errors.note(format!(
                                        "report {} {} of {}: {status} {}",
                                        state.as_str(),
                                        job.device,
                                        job.plan,
                                        conn.body_text()
                                    ));
                                    continue 'jobs;
                                }
                                Err(e) => {
                                    errors.note(format!("report of {}: {e}", job.device));
                                    std::thread::sleep(Duration::from_millis(10));
                                    continue 'jobs;
                                }
                            }
                        }
                        finished.fetch_add(1, Ordering::Relaxed);
                    }
                    (lat, last)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let last = per_worker.iter().filter_map(|(_, l)| *l).max();
    let secs = last.map_or(0.0, |l| (l - started).as_secs_f64()).max(1e-9);
    let all: Vec<Duration> = per_worker.into_iter().flat_map(|(l, _)| l).collect();
    let generator = delta(cpu0, bench_cpu());
    ReportRun {
        concurrency: workers,
        devices_started: next.load(Ordering::Relaxed).min(jobs.len()) as u64,
        devices_finished: finished.load(Ordering::Relaxed),
        reports: all.len() as u64,
        seconds: round3(secs),
        reports_per_sec: round1(all.len() as f64 / secs),
        latency: Latency::of(&all),
        errors: errors.count(),
        first_errors: errors.first(),
        generator_cpu_seconds: generator.map(round3),
        generator_cpus_used: per_wall(generator, secs),
        ended_by: if timed_out.load(Ordering::Relaxed) {
            "time"
        } else {
            "devices"
        },
    }
}

fn memmem(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// E1 + E2: one CP, one registered fleet
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct E1Report {
    pub devices: u64,
    pub connections: usize,
    pub warmup_seconds: f64,
    pub seconds: f64,
    /// Polls answered 200 within the window.
    pub polls: u64,
    pub polls_per_sec: f64,
    pub latency: Latency,
    pub errors: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub first_errors: Vec<String>,
    /// Polls answered with an assignment (0 expected: nothing is assigned).
    pub assignments_seen: u64,
    pub connects: u64,
    /// The bench process's CPU over the window (the pollers are its only busy threads), and
    /// ÷ the window, and per poll.
    pub generator_cpu_seconds: Option<f64>,
    pub generator_cpus_used: Option<f64>,
    pub generator_cpu_us_per_poll: Option<f64>,
    /// The CP's CPU over the window, and ÷ the window.
    pub cp_cpu_seconds: Option<f64>,
    pub cp_cpus_used: Option<f64>,
    pub cp_cpu_us_per_poll: Option<f64>,
    /// Commits the store made during the window (polls must not write per request).
    pub store: StoreDelta,
    pub cpus: usize,
    pub peak_rss_kib: Option<u64>,
    pub method: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct E2Report {
    pub devices: u64,
    pub plan: String,
    /// Start to every device dispatched (the promoter at --promoter-interval 0.2 s, at most
    /// 1000 dispatches per plan per tick).
    pub start_to_dispatched_seconds: f64,
    pub reports_per_device: usize,
    #[serde(flatten)]
    pub run: ReportRun,
    pub single_row_commits_per_sec: Option<f64>,
    /// reports/s ÷ raw single-row commits/s.
    pub ratio_to_single_row_commits: Option<f64>,
    /// reports/s ÷ raw rows/s in 64-row transactions.
    pub ratio_to_batched_rows: Option<f64>,
    pub store: StoreDelta,
    pub cp_cpu_seconds: Option<f64>,
    pub cp_cpus_used: Option<f64>,
    pub cp_cpu_ms_per_report: Option<f64>,
    /// CP CPU per report by thread (writer vs HTTP workers), ms.
    pub cp_cpu_ms_per_report_by_thread: BTreeMap<String, f64>,
    pub cp_write_bytes_per_report: Option<f64>,
    pub cp_write_syscalls_per_report: Option<f64>,
    pub peak_rss_kib: Option<u64>,
    pub method: &'static str,
}

/// E1 and E2 share a CP and a registered fleet (registration timed once).
pub struct IoResults {
    pub seeding: DeviceSeed,
    pub e1: Option<E1Report>,
    pub e2: Option<E2Report>,
}

pub fn run_e1_e2(env: &Env, limit: Option<&LimitReport>) -> anyhow::Result<IoResults> {
    let cfg = &env.cfg;
    let want1 = cfg.wants("e1");
    let want2 = cfg.wants("e2");
    let count = if want2 {
        cfg.e2_devices.max(if want1 { cfg.e1_devices } else { 0 })
    } else {
        cfg.e1_devices
    };
    eprintln!("E1/E2: one CP (RBAC off, --promoter-interval 0.2), {count} registered devices");
    let cp = env.start_args(
        &env.work.join("engine-io"),
        "e1-e2",
        &["--promoter-interval", "0.2"],
    )?;
    let http = Http::new(&cp.url, REQUEST_TIMEOUT)?;
    let ids: Vec<String> = (0..count).map(|i| format!("io-{i:07}")).collect();
    let seeding = register(
        &cp.url,
        &ids,
        &|_| labels(&[("bench", "io".into())]),
        cfg.seed_concurrency,
    )?;
    let e1 = if want1 {
        Some(run_e1(
            env,
            &cp,
            &http,
            &ids[..cfg.e1_devices.min(count) as usize],
        )?)
    } else {
        None
    };
    let e2 = if want2 {
        Some(run_e2(env, &cp, &http, &ids, limit)?)
    } else {
        None
    };
    let peak = cp.peak_rss_kib();
    env.stop(cp)?;
    Ok(IoResults {
        seeding,
        e1: e1.map(|r| E1Report {
            peak_rss_kib: peak,
            ..r
        }),
        e2: e2.map(|r| E2Report {
            peak_rss_kib: peak,
            ..r
        }),
    })
}

fn run_e1(env: &Env, cp: &Cp, http: &Http, ids: &[String]) -> anyhow::Result<E1Report> {
    let cfg = &env.cfg;
    let conns = cfg.e1_connections.clamp(1, 1024).min(ids.len().max(1));
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    eprintln!(
        "E1: idle long polls (wait_seconds 0, nothing assigned) from {} devices over {conns} \
         connections for {} s (+{} s warm-up); {cpus} CPUs shared",
        ids.len(),
        cfg.e1_seconds,
        cfg.e1_warmup_seconds
    );
    let addr = raw::loopback(&cp.url)?;
    let body = format!(
        "{{\"installed_digest\":\"{OLD_DIGEST}\",\"boot_id\":\"boot-a\",\"known_revision\":0,\
         \"wait_seconds\":0}}"
    );
    let requests: Vec<Vec<u8>> = ids
        .iter()
        .map(|d| raw::device_post(addr, "/v1/device/poll", d, &body))
        .collect();
    let errors = Errors::default();
    let assignments = AtomicU64::new(0);
    let connects = AtomicU64::new(0);
    let begin = Instant::now();
    let window_start = begin + Duration::from_secs_f64(cfg.e1_warmup_seconds);
    let end = window_start + Duration::from_secs_f64(cfg.e1_seconds);
    let mut before = None;
    let mut after = None;
    let per_conn: Vec<Vec<Duration>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..conns)
            .map(|t| {
                let (requests, errors, assignments, connects) =
                    (&requests, &errors, &assignments, &connects);
                s.spawn(move || {
                    let mut conn = Conn::new(addr);
                    let mut lat = Vec::new();
                    let mut i = t;
                    while Instant::now() < end {
                        let sent = Instant::now();
                        match conn.exchange(&requests[i]) {
                            Ok(200) => {
                                let done = Instant::now();
                                if done >= window_start && done <= end {
                                    lat.push(done - sent);
                                }
                                if !memmem(&conn.body, b"\"assignment\":null") {
                                    assignments.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Ok(status) => {
                                errors.note(format!("poll: {status} {}", conn.body_text()));
                                std::thread::sleep(Duration::from_millis(10));
                            }
                            Err(e) => {
                                errors.note(format!("poll: {e}"));
                                std::thread::sleep(Duration::from_millis(10));
                            }
                        }
                        i += conns;
                        if i >= requests.len() {
                            i = t;
                        }
                    }
                    connects.fetch_add(conn.connects, Ordering::Relaxed);
                    lat
                })
            })
            .collect();
        // The CP's CPU and the store's commits over the window only.
        std::thread::sleep(window_start.saturating_duration_since(Instant::now()));
        before = Some((cp.cpu_seconds(), bench_cpu(), store_snap(http)));
        std::thread::sleep(end.saturating_duration_since(Instant::now()));
        after = Some((cp.cpu_seconds(), bench_cpu(), store_snap(http)));
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let (cpu0, gen0, snap0) = before.ok_or_else(|| anyhow!("E1 window never started"))?;
    let (cpu1, gen1, snap1) = after.ok_or_else(|| anyhow!("E1 window never ended"))?;
    let store = store_delta(&snap0?, &snap1?);
    let all: Vec<Duration> = per_conn.into_iter().flatten().collect();
    let cp_cpu = delta(cpu0, cpu1);
    let generator = delta(gen0, gen1);
    let polls = all.len() as u64;
    if polls == 0 {
        bail!(
            "E1: no poll answered ({} errors: {:?})",
            errors.count(),
            errors.first()
        );
    }
    let r = E1Report {
        devices: ids.len() as u64,
        connections: conns,
        warmup_seconds: cfg.e1_warmup_seconds,
        seconds: cfg.e1_seconds,
        polls,
        polls_per_sec: round1(polls as f64 / cfg.e1_seconds),
        latency: Latency::of(&all),
        errors: errors.count(),
        first_errors: errors.first(),
        assignments_seen: assignments.load(Ordering::Relaxed),
        connects: connects.load(Ordering::Relaxed),
        generator_cpu_seconds: generator.map(round3),
        generator_cpus_used: per_wall(generator, cfg.e1_seconds),
        generator_cpu_us_per_poll: generator.map(|c| round1(c * 1e6 / polls as f64)),
        cp_cpus_used: per_wall(cp_cpu, cfg.e1_seconds),
        cp_cpu_us_per_poll: cp_cpu.map(|c| round1(c * 1e6 / polls as f64)),
        cp_cpu_seconds: cp_cpu,
        store,
        cpus,
        peak_rss_kib: None,
        method: "RBAC off: each device names itself with X-Autonomy-Device (no token hashing); \
                 one thread per kept-alive raw HTTP/1.1 connection sends pre-built \
                 POST /v1/device/poll {installed_digest, boot_id, known_revision 0, \
                 wait_seconds 0} for its share of the devices in turn, closed loop; polls/s and \
                 latency over the window after the warm-up",
    };
    eprintln!(
        "  {:.0} polls/s, {}, {} errors; generator {} CPUs, CP {} CPUs ({} µs per poll)",
        r.polls_per_sec,
        r.latency.short(),
        r.errors,
        opt(r.generator_cpus_used),
        opt(r.cp_cpus_used),
        opt(r.cp_cpu_us_per_poll)
    );
    Ok(r)
}

fn opt(v: Option<f64>) -> String {
    v.map_or("?".into(), |v| v.to_string())
}

fn run_e2(
    env: &Env,
    cp: &Cp,
    http: &Http,
    ids: &[String],
    limit: Option<&LimitReport>,
) -> anyhow::Result<E2Report> {
    let cfg = &env.cfg;
    let plan = "e2-reports".to_string();
    eprintln!(
        "E2: durable device reports at concurrency {} over a plan of {} devices (one stage)",
        cfg.e2_concurrency,
        ids.len()
    );
    let selector = labels(&[("bench", "io".into())]);
    let started = Instant::now();
    create_and_start(
        http,
        &plan,
        &selector,
        serde_json::json!([{"name": "all"}]),
        serde_json::json!({}),
    )?;
    let dispatched_after = wait_dispatched(http, std::slice::from_ref(&plan), ids.len() as u64)?;
    eprintln!(
        "  all {} devices dispatched {:.1} s after the start",
        ids.len(),
        started.elapsed().as_secs_f64()
    );
    let jobs: Vec<Job> = ids
        .iter()
        .map(|d| Job {
            device: d.clone(),
            plan: plan.clone(),
            script: Script::Verified,
        })
        .collect();
    let addr = raw::loopback(&cp.url)?;
    let snap0 = store_snap(http)?;
    let cpu0 = cp.cpu_seconds();
    let threads0 = cp.cpu_by_thread();
    let io0 = cp.io();
    let run = run_reports(
        addr,
        &jobs,
        cfg.e2_concurrency,
        Duration::from_secs_f64(cfg.e2_seconds),
    );
    let snap1 = store_snap(http)?;
    let cpu1 = cp.cpu_seconds();
    let threads1 = cp.cpu_by_thread();
    let io1 = cp.io();
    if run.reports == 0 {
        bail!(
            "E2: no report applied ({} errors: {:?})",
            run.errors,
            run.first_errors
        );
    }
    let store = store_delta(&snap0, &snap1);
    let n = run.reports.max(1) as f64;
    let cp_cpu = delta(cpu0, cpu1);
    let by_thread = threads1
        .iter()
        .map(|(name, b)| {
            let a = threads0.get(name).copied().unwrap_or(0.0);
            (name.clone(), round3((b - a) * 1e3 / n))
        })
        .filter(|(_, v)| *v > 0.0)
        .collect();
    let io_delta = |key: &str| {
        let (a, b) = (io0.as_ref()?.get(key)?, io1.as_ref()?.get(key)?);
        Some(round1(b.saturating_sub(*a) as f64 / n))
    };
    let single = limit.map(|l| l.single_row.commits_per_sec);
    let r = E2Report {
        devices: ids.len() as u64,
        plan,
        start_to_dispatched_seconds: dispatched_after,
        reports_per_device: steps(Script::Verified).len(),
        single_row_commits_per_sec: single,
        ratio_to_single_row_commits: single.map(|s| round3(run.reports_per_sec / s.max(1e-9))),
        ratio_to_batched_rows: limit
            .map(|l| round3(run.reports_per_sec / l.batched.rows_per_sec.max(1e-9))),
        store,
        cp_cpus_used: per_wall(cp_cpu, run.seconds),
        cp_cpu_ms_per_report: cp_cpu.map(|c| round3(c * 1e3 / n)),
        cp_cpu_seconds: cp_cpu,
        cp_cpu_ms_per_report_by_thread: by_thread,
        cp_write_bytes_per_report: io_delta("wchar"),
        cp_write_syscalls_per_report: io_delta("syscw"),
        peak_rss_kib: None,
        run,
        method: "one engine plan (selector over every registered device, one stage), started \
                 and left to the promoter until every device is dispatched; then each reporter \
                 (one thread, one kept-alive raw HTTP/1.1 connection, X-Autonomy-Device) takes \
                 the next device and sends its five reports in order (downloading, installing, \
                 rebooting, verifying and succeeded on a new boot with the target digest), each \
                 answered 200 applied once durable; reports/s from the first report sent to \
                 the last answer; store figures are /metrics deltas over the run",
    };
    eprintln!(
        "  {:.0} reports/s = {}x the single-row commit limit, {}, {} errors, avg batch {}; \
         CP {} ms CPU per report, reporters {} CPUs",
        r.run.reports_per_sec,
        opt(r.ratio_to_single_row_commits),
        r.run.latency.short(),
        r.run.errors,
        r.store.avg_batch,
        opt(r.cp_cpu_ms_per_report),
        opt(r.run.generator_cpus_used)
    );
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// E3 + E4: 100k devices in 100 plans
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct FleetSeed {
    pub devices: DeviceSeed,
    pub plans: u64,
    pub devices_per_plan: u64,
    pub create_and_start_seconds: f64,
    /// From the last start to every device of every plan dispatched.
    pub start_to_dispatched_seconds: f64,
    /// The reports that put devices in mixed states.
    pub mixing: ReportRun,
    /// Plans whose state mixing included a failed device (engine-paused, failure threshold).
    pub plans_with_a_failure: u64,
    /// Plans with `silent_after_seconds: 1` (their untouched dispatched devices go silent).
    pub plans_silent_after_1s: u64,
    pub peak_rss_kib: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct E3Report {
    pub devices: u64,
    pub plans: u64,
    pub ticks: usize,
    pub latency: Latency,
    /// Actions the ticks applied (0 in the steady state this measures: every device is
    /// dispatched, none is overdue).
    pub actions_applied: u64,
    pub first_tick_ms: f64,
    pub method: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct E4Report {
    pub devices: u64,
    pub plans: u64,
    pub scans: usize,
    pub latency: Latency,
    pub stuck_count_seen: Vec<u64>,
    pub by_code: BTreeMap<StuckCode, u64>,
    pub answer_bytes: usize,
    pub peak_rss_kib: Option<u64>,
    pub method: &'static str,
}

pub struct FleetResults {
    pub seed: FleetSeed,
    pub e3: Option<E3Report>,
    pub e4: Option<E4Report>,
}

pub fn run_e3_e4(env: &Env) -> anyhow::Result<FleetResults> {
    let cfg = &env.cfg;
    let plans = cfg.e3_plans.max(1);
    let per_plan = (cfg.e3_devices / plans).max(1);
    let total = per_plan * plans;
    let dir = env.work.join("engine-fleet");
    eprintln!(
        "E3/E4: {total} devices in {plans} engine plans of {per_plan} (registration at \
         concurrency {})",
        cfg.seed_concurrency
    );
    let cp = env.start_args(&dir, "e3-seed", &["--promoter-interval", "0.5"])?;
    let http = Http::new(&cp.url, REQUEST_TIMEOUT)?;
    let ids: Vec<String> = (0..total)
        .map(|i| format!("fl-g{:04}-{:06}", i / per_plan, i % per_plan))
        .collect();
    let group = |i: usize| format!("g{:04}", i as u64 / per_plan);
    let devices = register(
        &cp.url,
        &ids,
        &|i| labels(&[("fleet", "e3".into()), ("group", group(i))]),
        cfg.seed_concurrency,
    )?;
    // Plan p: a failed device in every fifth plan (p % 5 == 0: engine-paused at the failure
    // threshold), silent_after_seconds 1 in p % 5 == 1.
    let plan_ids: Vec<String> = (0..plans).map(|p| format!("e3-plan-{p:04}")).collect();
    let t0 = Instant::now();
    for (p, id) in plan_ids.iter().enumerate() {
        let policy = if p % 5 == 1 {
            serde_json::json!({"silent_after_seconds": 1})
        } else {
            serde_json::json!({})
        };
        create_and_start(
            &http,
            id,
            &labels(&[("group", format!("g{p:04}"))]),
            serde_json::json!([{"name": "all"}]),
            policy,
        )?;
    }
    let create_and_start_seconds = round3(t0.elapsed().as_secs_f64());
    let start_to_dispatched_seconds = wait_dispatched(&http, &plan_ids, total)?;
    let dispatched_at = Instant::now();
    eprintln!(
        "  {plans} plans created and started in {create_and_start_seconds} s, every device \
         dispatched {start_to_dispatched_seconds} s later"
    );
    // Mixed states: of every 20 devices of a plan one verified, one installing, one
    // downloading; the fourth device of every fifth plan failed.
    let mut jobs = Vec::new();
    for (i, d) in ids.iter().enumerate() {
        let (p, j) = (i as u64 / per_plan, i as u64 % per_plan);
        let script = match j % 20 {
            0 => Some(Script::Verified),
            1 => Some(Script::Installing),
            2 => Some(Script::Downloading),
            3 if p % 5 == 0 && j == 3 => Some(Script::Failed),
            _ => None,
        };
        if let Some(script) = script {
            jobs.push(Job {
                device: d.clone(),
                plan: plan_ids[p as usize].clone(),
                script,
            });
        }
    }
    eprintln!(
        "  mixing states: reports for {} devices at concurrency 64",
        jobs.len()
    );
    let mixing = run_reports(raw::loopback(&cp.url)?, &jobs, 64, SETTLE_LIMIT);
    if mixing.errors > 0 {
        bail!(
            "E3: {} of the state-mixing reports failed: {:?}",
            mixing.errors,
            mixing.first_errors
        );
    }
    eprintln!(
        "  {} reports in {} s ({:.0}/s)",
        mixing.reports, mixing.seconds, mixing.reports_per_sec
    );
    let seed_peak = cp.peak_rss_kib();
    env.stop(cp)?;
    let seed = FleetSeed {
        devices,
        plans,
        devices_per_plan: per_plan,
        create_and_start_seconds,
        start_to_dispatched_seconds,
        mixing,
        plans_with_a_failure: (0..plans).filter(|p| p % 5 == 0).count() as u64,
        plans_silent_after_1s: (0..plans).filter(|p| p % 5 == 1).count() as u64,
        peak_rss_kib: seed_peak,
    };
    let e3 = if cfg.wants("e3") {
        Some(run_e3(env, &dir, total, plans)?)
    } else {
        None
    };
    let e4 = if cfg.wants("e4") {
        Some(run_e4(env, &dir, total, plans, dispatched_at)?)
    } else {
        None
    };
    Ok(FleetResults { seed, e3, e4 })
}

fn run_e3(env: &Env, dir: &Path, devices: u64, plans: u64) -> anyhow::Result<E3Report> {
    let ticks = env.cfg.e3_ticks.max(1);
    eprintln!(
        "E3: {ticks} promoter ticks in this process over the stopped CP's store ({devices} \
         devices, {plans} plans)"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting a tokio runtime")?;
    let (samples, actions) = rt.block_on(async {
        let lock = autonomy_store_sqlite::SqliteStore::lock(dir).map_err(|e| anyhow!("{e}"))?;
        let mut config =
            autonomy_store_sqlite::StoreConfig::new(dir.to_path_buf(), dir.join("audit"));
        let (signer, _) =
            autonomy_audit::Signer::load_or_create(dir).map_err(|e| anyhow!("{e}"))?;
        config.audit_signer = Some(signer);
        let (store, _) = autonomy_store_sqlite::SqliteStore::open(&config, lock)
            .map_err(|e| anyhow!("opening the store in {}: {e}", dir.display()))?;
        let store = Arc::new(store);
        let pc = autonomy_server::PromoterConfig::default();
        let mut samples = Vec::with_capacity(ticks);
        let mut actions = 0;
        for _ in 0..ticks {
            let t = Instant::now();
            actions += autonomy_server::promoter::tick(&store, &pc)
                .await
                .map_err(|e| anyhow!("promoter tick: {e}"))?;
            samples.push(t.elapsed());
            // Ticks are spaced like a loaded promoter's wake-ups, not back to back.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        autonomy_store::Store::close(&*store).map_err(|e| anyhow!("closing the store: {e}"))?;
        Ok::<_, anyhow::Error>((samples, actions))
    })?;
    let latency = Latency::of(&samples);
    eprintln!("  tick {}; {actions} actions applied", latency.short());
    Ok(E3Report {
        devices,
        plans,
        ticks,
        first_tick_ms: round3(samples[0].as_secs_f64() * 1e3),
        latency,
        actions_applied: actions,
        method: "the fleet's CP stopped; this process opens a SqliteStore on its data dir and \
                 times autonomy_server::promoter::tick (promoter_due over every engine plan — \
                 per-stage counters, retryable and overdue devices, decide() — then one \
                 conditional promote write per plan that has something to do), 5 ms apart, \
                 with the default config (max 1000 dispatches per plan)",
    })
}

fn run_e4(
    env: &Env,
    dir: &Path,
    devices: u64,
    plans: u64,
    dispatched_at: Instant,
) -> anyhow::Result<E4Report> {
    let scans = env.cfg.e4_scans.max(1);
    // The plans with silent_after_seconds 1: their untouched devices must have gone silent.
    std::thread::sleep(
        (dispatched_at + Duration::from_secs(2)).saturating_duration_since(Instant::now()),
    );
    eprintln!(
        "E4: {scans} stuck scans (threshold_seconds 0) over {devices} devices in {plans} plans"
    );
    let cp = env.start_args(dir, "e4", &[])?;
    let http = Http::new(&cp.url, REQUEST_TIMEOUT)?;
    let query = StuckQuery {
        threshold_seconds: Some("0".into()),
        ..StuckQuery::default()
    };
    // Let the promoter tick once (else every active plan is `promoter_not_running`).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http.call(&http.api().stuck_rollouts(&query))?.value()?;
        if !r.by_code.contains_key(&StuckCode::PromoterNotRunning) {
            break;
        }
        if Instant::now() > deadline {
            bail!("E4: the promoter did not tick within 30 s of the start");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut samples = Vec::with_capacity(scans);
    let mut seen = Vec::new();
    let mut by_code = BTreeMap::new();
    let mut bytes = 0;
    for _ in 0..scans {
        let (reply, took) = http.timed(&http.api().stuck_rollouts(&query))?;
        bytes = reply.body().len();
        let r = reply.value()?;
        if !seen.contains(&r.stuck_count) {
            seen.push(r.stuck_count);
        }
        by_code = r.by_code;
        samples.push(took);
    }
    let peak = cp.peak_rss_kib();
    env.stop(cp)?;
    let latency = Latency::of(&samples);
    eprintln!(
        "  {}; stuck_count {seen:?}, by_code {by_code:?}",
        latency.short()
    );
    Ok(E4Report {
        devices,
        plans,
        scans,
        latency,
        stuck_count_seen: seen,
        by_code,
        answer_bytes: bytes,
        peak_rss_kib: peak,
        method: "a CP (promoter on) over the E3 fleet: GET /v1/rollouts/stuck?threshold_seconds=0 \
                 in a closed loop at concurrency 1 (autonomy-client), after the first promoter \
                 tick; every plan is engine-driven and stuck for one reason or another",
    })
}

// ---------------------------------------------------------------------------------------------
// E5: the last report of a stage → the next stage dispatched
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct E5Report {
    pub plans: usize,
    pub stages_per_plan: usize,
    pub samples: usize,
    /// From sending the stage's last `succeeded` to the next stage's device getting its
    /// assignment from a long poll already waiting (or sent right after).
    pub latency: Latency,
    /// The `succeeded` report's own answer time.
    pub final_report_latency: Latency,
    pub promoter_interval_seconds: f64,
    pub plans_completed: usize,
    pub peak_rss_kib: Option<u64>,
    pub method: &'static str,
}

/// The device poll call for `device` (RBAC off: `X-Autonomy-Device`).
fn poll(
    http: &Http,
    device: &str,
    known: u64,
    wait: u32,
) -> anyhow::Result<autonomy_api::device::PollResponse> {
    let api = http.api().clone().with_device(Some(device.to_string()));
    let call = api.device_poll(&PollRequest {
        installed_digest: OLD_DIGEST.into(),
        boot_id: "boot-a".into(),
        known_revision: known,
        wait_seconds: wait,
        conditions: BTreeMap::new(),
    });
    Ok(http
        .call(&call)
        .with_context(|| format!("poll of {device}"))?
        .value()?)
}

fn report(
    http: &Http,
    device: &str,
    plan: &str,
    seq: u64,
    (state, digest, boot): &(ReportState, String, &'static str),
) -> anyhow::Result<()> {
    let api = http.api().clone().with_device(Some(device.to_string()));
    let call = api.device_report(&ReportRequest {
        plan_id: plan.into(),
        attempt: 1,
        seq,
        state: *state,
        installed_digest: digest.clone(),
        boot_id: boot.to_string(),
        message: String::new(),
    });
    http.call(&call)
        .with_context(|| format!("report {} of {device}", state.as_str()))?;
    Ok(())
}

/// Long-polls `device` (from revision `known`) until an assignment arrives (at most `limit`):
/// when it did.
fn wait_assignment(
    http: &Http,
    device: &str,
    mut known: u64,
    limit: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        let r = poll(http, device, known, 30)?;
        if r.assignment.is_some() {
            return Ok(Instant::now());
        }
        known = r.revision;
        if Instant::now() > deadline {
            bail!("{device} got no assignment within {} s", limit.as_secs());
        }
    }
}

pub fn run_e5(env: &Env) -> anyhow::Result<E5Report> {
    let cfg = &env.cfg;
    let (plans, stages) = (cfg.e5_plans.max(1), cfg.e5_stages.max(2));
    let interval = 1.0;
    eprintln!(
        "E5: {plans} plan(s) of {stages} one-device stages, promoter every {interval} s (and \
         woken by settling reports): last report of a stage → next stage's device assigned"
    );
    let cp = env.start_args(
        &env.work.join("engine-e5"),
        "e5",
        &["--promoter-interval", "1"],
    )?;
    let http = Http::new(&cp.url, REQUEST_TIMEOUT)?;
    let ids: Vec<String> = (0..plans * stages)
        .map(|i| format!("e5-p{:03}-{:04}", i / stages, i % stages))
        .collect();
    register(
        &cp.url,
        &ids,
        &|i| labels(&[("e5", format!("p{:03}", i / stages))]),
        16,
    )?;
    let verified = steps(Script::Verified);
    let (last, before_last) = verified
        .split_last()
        .ok_or_else(|| anyhow!("empty script"))?;
    let mut samples = Vec::new();
    let mut report_lat = Vec::new();
    let mut completed = 0;
    for p in 0..plans {
        let plan = format!("e5-plan-{p:03}");
        let stage_list: Vec<serde_json::Value> = (0..stages)
            .map(|k| serde_json::json!({"name": format!("s{k:02}"), "size": {"count": 1}}))
            .collect();
        create_and_start(
            &http,
            &plan,
            &labels(&[("e5", format!("p{p:03}"))]),
            serde_json::Value::Array(stage_list),
            serde_json::json!({}),
        )?;
        // Which device each stage took (membership is fixed at the start).
        let mut members = Vec::with_capacity(stages);
        for k in 0..stages {
            let list = http
                .call(&http.api().rollout_devices(
                    &plan,
                    None,
                    Some(&format!("s{k:02}")),
                    Some(10),
                    None,
                ))?
                .value()?;
            let item = list
                .items
                .first()
                .ok_or_else(|| anyhow!("stage s{k:02} of {plan} has no device"))?;
            members.push(item.device_id.clone());
        }
        wait_assignment(&http, &members[0], 0, Duration::from_secs(60))?;
        for k in 0..stages {
            let d = &members[k];
            for (seq, step) in before_last.iter().enumerate() {
                report(&http, d, &plan, seq as u64 + 1, step)?;
            }
            let seq = verified.len() as u64;
            let Some(next) = members.get(k + 1) else {
                report(&http, d, &plan, seq, last)?;
                break;
            };
            // The next stage's device is idle: it knows its revision and long-polls on it.
            let before = poll(&http, next, 0, 0)?;
            if before.assignment.is_some() {
                bail!(
                    "{next} (stage {}) was assigned before stage {k} passed",
                    k + 1
                );
            }
            let (sent, arrived, answered) = std::thread::scope(|s| {
                let waiter = s.spawn(|| {
                    wait_assignment(&http, next, before.revision, Duration::from_secs(60))
                });
                let sent = Instant::now();
                let r = report(&http, d, &plan, seq, last);
                let answered = Instant::now();
                let arrived = waiter
                    .join()
                    .map_err(|_| anyhow!("the long poll panicked"))
                    .and_then(|r| r);
                (sent, r.and(arrived), answered)
            });
            let arrived = arrived?;
            samples.push(arrived.saturating_duration_since(sent));
            report_lat.push(answered - sent);
        }
        // The plan completes once its last stage passed.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if get_plan(&http, &plan)?.status.phase == Phase::Completed {
                completed += 1;
                break;
            }
            if Instant::now() > deadline {
                eprintln!("  warning: {plan} did not complete within 30 s");
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let peak = cp.peak_rss_kib();
    env.stop(cp)?;
    let latency = Latency::of(&samples);
    eprintln!(
        "  {} samples: {}; {completed}/{plans} plans completed",
        samples.len(),
        latency.short()
    );
    Ok(E5Report {
        plans,
        stages_per_plan: stages,
        samples: samples.len(),
        latency,
        final_report_latency: Latency::of(&report_lat),
        promoter_interval_seconds: interval,
        plans_completed: completed,
        peak_rss_kib: peak,
        method: "per plan, stages of one device each (count 1); the bench plays the devices \
                 through autonomy-client (X-Autonomy-Device): the stage's device reports \
                 downloading … verifying, the next stage's device polls once (wait 0) for its \
                 revision and then long-polls (wait 30) on it in another thread, and the clock \
                 runs from sending the stage's final succeeded (new boot, target digest) to the \
                 long poll's answer carrying the assignment; the promoter runs at its 1 s \
                 interval and is woken by reports that settle a device",
    })
}

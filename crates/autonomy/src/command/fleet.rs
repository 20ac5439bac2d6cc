//! `autonomy fleet simulate` (SPEC §9.5): N devices in one process, each the real agent state
//! machine (`autonomy_agent::Machine`) over a simulated hook and boot id, on the async client
//! transport. What each device does is chosen by hash(seed, index), so the same seed gives
//! the same fleet; `--manifest` writes it down, and the run ends with a JSON summary.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use autonomy_agent::{HookOutcome, HookStep, JobAction, Machine, Next, Refusal, REBOOT_EXIT_CODE};
use autonomy_api::device::{EnrollRequest, PollResponse, ReportRequest};
use autonomy_client::nonblocking::Transport;
use autonomy_client::{Api, ClientError, Exit, Token};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::command::labels::parse_label;
use crate::command::Ctx;

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    Simulate(SimulateArgs),
}

impl FleetCommand {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        match self {
            FleetCommand::Simulate(args) => args.run(ctx),
        }
    }
}

/// Simulate a fleet of devices against the CP (SPEC §9.5)
///
/// Enrolls N devices with an enroll key (ids `<prefix><index>`, zero-padded), then runs each
/// as the real agent state machine over a simulated hook: download, install (a reboot gives a
/// new boot id), verify. Behaviours are chosen per device by hash(seed, index), in this order
/// of precedence: silent (stops polling at its first assignment), failing (install fails on
/// the first A attempts, or always with --fail-attempts 0), slow (each step takes F× as long),
/// reverting (comes back from its reboot on the previous digest), drifting (verifies, then
/// falls back after S seconds), false-success (reports success without rebooting), busy
/// (reports `idle: false` for a while: --busy-for seconds, 0.5× to 1.5× by hash, from its
/// start), undocked (reports `docked: false` for --undocked-for seconds likewise); the rest
/// are healthy. Probabilities are fractions (0.05 = 5%). Every device sends its conditions
/// (`docked`, `idle`, `battery_pct`) with each poll, for a plan's `policy.require`.
///
/// A progress line goes to stderr every few seconds (devices per local state); at the end
/// (after --duration, or on SIGINT/SIGTERM) a JSON summary goes to stdout. Exit 0; 3 if the
/// CP was never reached; 6 if the enroll key (or a device token) was refused.
///
/// Examples:
///   autonomy fleet simulate --devices 1000 --enroll-key "$KEY" --label site=lab --duration 600
///   autonomy fleet simulate --devices 200 --enroll-key "$KEY" --seed 7 --failing 0.05 \
///       --fail-attempts 1 --silent 0.02 --manifest fleet.json
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct SimulateArgs {
    /// How many devices.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=200_000))]
    pub devices: u32,

    /// The enroll key the devices enroll with (`autonomy device enroll-key create`).
    #[arg(
        long,
        env = "AUTONOMY_ENROLL_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub enroll_key: Token,

    /// Seed of the behaviours (the same seed gives the same fleet).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Device ids are PREFIX followed by the zero-padded index.
    #[arg(long, default_value = "sim-", value_name = "PREFIX")]
    pub id_prefix: String,

    /// A label every device enrolls with (the enroll key's labels win); repeat for more.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,

    /// Spread the devices over N sites: device i enrolls with `site=site-<i mod N>` (two
    /// digits at least), for a plan's `disruption_budget` grouped by site. 0: no site label.
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub sites: u32,

    /// Fraction of devices that stop polling at their first assignment.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub silent: f64,
    /// Fraction of devices whose install fails.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub failing: f64,
    /// Failing devices fail their first A attempts (0: always).
    #[arg(long, default_value_t = 0, value_name = "A")]
    pub fail_attempts: u32,
    /// Fraction of devices that take --slow-factor times as long per step.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub slow: f64,
    #[arg(long, default_value_t = 5.0, value_name = "F")]
    pub slow_factor: f64,
    /// Fraction of devices that come back from their reboot on the previous digest.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub reverting: f64,
    /// Fraction of devices that verify, then fall back after --drift-after seconds.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub drifting: f64,
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub drift_after: f64,
    /// Fraction of devices that report success without rebooting.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub false_success: f64,
    /// Fraction of devices that report `idle: false` for a while (--busy-for).
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub busy: f64,
    /// Seconds a busy device stays busy from its start (0.5× to 1.5×, by hash(seed, index)).
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub busy_for: f64,
    /// Fraction of devices that report `docked: false` for a while (--undocked-for).
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub undocked: f64,
    /// Seconds an undocked device stays off its dock from its start (0.5× to 1.5×, by hash).
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub undocked_for: f64,

    /// Write {device id: behaviour} here (JSON) once the devices are enrolled.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,

    /// Stop after this many seconds (default: run until SIGINT or SIGTERM).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,

    /// Seconds one simulated hook step takes.
    #[arg(long, default_value_t = 0.2, value_name = "SECONDS")]
    pub step_seconds: f64,

    /// Seconds each long poll may wait at the CP (≤ 60).
    #[arg(long, default_value_t = 20, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(0..=60))]
    pub poll_wait: u32,

    /// Seconds between progress lines on stderr.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub progress_every: f64,

    /// Write the summary here too (JSON), besides stdout.
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not a fraction from 0 to 1 (0.05 = 5%)")),
    }
}

/// What a simulated device does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Behaviour {
    Healthy,
    Silent,
    Failing,
    Slow,
    Reverting,
    Drifting,
    FalseSuccess,
    Busy,
    Undocked,
}

impl Behaviour {
    fn as_str(self) -> &'static str {
        match self {
            Behaviour::Healthy => "healthy",
            Behaviour::Silent => "silent",
            Behaviour::Failing => "failing",
            Behaviour::Slow => "slow",
            Behaviour::Reverting => "reverting",
            Behaviour::Drifting => "drifting",
            Behaviour::FalseSuccess => "false_success",
            Behaviour::Busy => "busy",
            Behaviour::Undocked => "undocked",
        }
    }
}

/// The behaviour of device `index`: a uniform draw from hash(seed, index) against the
/// cumulative fractions, in the order of the help text.
fn behaviour(seed: u64, index: u32, a: &SimulateArgs) -> Behaviour {
    let u = uniform(seed, index, b"");
    let mut edge = 0.0;
    for (p, b) in [
        (a.silent, Behaviour::Silent),
        (a.failing, Behaviour::Failing),
        (a.slow, Behaviour::Slow),
        (a.reverting, Behaviour::Reverting),
        (a.drifting, Behaviour::Drifting),
        (a.false_success, Behaviour::FalseSuccess),
        (a.busy, Behaviour::Busy),
        (a.undocked, Behaviour::Undocked),
    ] {
        edge += p;
        if u < edge {
            return b;
        }
    }
    Behaviour::Healthy
}

/// The site label of device `index` over `sites` sites (`None` without sites).
fn site_of(index: u32, sites: u32) -> Option<String> {
    (sites > 0).then(|| format!("site-{:02}", index % sites))
}

/// A uniform draw in [0, 1) from hash(seed, index, what).
fn uniform(seed: u64, index: u32, what: &[u8]) -> f64 {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(&index.to_le_bytes());
    h.update(what);
    let bytes = h.finalize();
    let mut x = [0u8; 8];
    x.copy_from_slice(&bytes.as_bytes()[..8]);
    (u64::from_le_bytes(x) >> 11) as f64 / (1u64 << 53) as f64
}

/// How long after its start a busy or undocked device becomes ready (idle, docked): its
/// --busy-for / --undocked-for times 0.5 to 1.5, by hash(seed, index); `None` for the others.
fn not_ready_for(seed: u64, index: u32, b: Behaviour, a: &SimulateArgs) -> Option<Duration> {
    let base = match b {
        Behaviour::Busy => a.busy_for,
        Behaviour::Undocked => a.undocked_for,
        _ => return None,
    };
    let f = 0.5 + uniform(seed, index, b"ready");
    Some(Duration::from_secs_f64((base * f).clamp(0.0, 86_400.0)))
}

/// The conditions a simulated device reports while it is (not yet) ready.
fn conditions(b: Behaviour, ready: bool) -> BTreeMap<String, serde_json::Value> {
    BTreeMap::from([
        (
            "docked".to_string(),
            (ready || b != Behaviour::Undocked).into(),
        ),
        ("idle".to_string(), (ready || b != Behaviour::Busy).into()),
        ("battery_pct".to_string(), 100.into()),
    ])
}

/// Where a simulated device is, for the progress line and the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum Local {
    Enrolling = 0,
    Idle,
    Downloading,
    Installing,
    Rebooting,
    Verifying,
    Reporting,
    Succeeded,
    Failed,
    Silent,
    Stopped,
}

const LOCALS: [(Local, &str); 11] = [
    (Local::Enrolling, "enrolling"),
    (Local::Idle, "idle"),
    (Local::Downloading, "downloading"),
    (Local::Installing, "installing"),
    (Local::Rebooting, "rebooting"),
    (Local::Verifying, "verifying"),
    (Local::Reporting, "reporting"),
    (Local::Succeeded, "succeeded"),
    (Local::Failed, "failed"),
    (Local::Silent, "silent"),
    (Local::Stopped, "stopped"),
];

/// What every device task shares.
struct Fleet {
    transport: Transport,
    args: SimulateArgs,
    stop: AtomicBool,
    /// Any answer from the CP at all.
    reached: AtomicBool,
    /// A credential was refused (401/403).
    auth_failed: AtomicBool,
    local: Vec<AtomicU8>,
    reports: AtomicU64,
    polls: AtomicU64,
    step: Duration,
}

/// The digest every simulated device runs before any plan.
fn base_digest(seed: u64) -> String {
    format!(
        "sha256:{}",
        blake3::hash(format!("autonomy-sim-base-{seed}").as_bytes()).to_hex()
    )
}

/// A digest that is neither the base nor any plan's: what a drifting device falls back to.
fn drift_digest(seed: u64) -> String {
    format!(
        "sha256:{}",
        blake3::hash(format!("autonomy-sim-drift-{seed}").as_bytes()).to_hex()
    )
}

#[derive(Debug, Serialize)]
struct Summary {
    devices: u32,
    seed: u64,
    enrolled: u64,
    cp_reached: bool,
    auth_failed: bool,
    seconds: f64,
    polls: u64,
    reports: u64,
    by_behaviour: BTreeMap<&'static str, u64>,
    /// Where each device's simulation stands, per behaviour: its last local state.
    by_local_state: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
}

impl SimulateArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let server = ctx.transport.server().to_string();
        runtime.block_on(self.simulate(server))
    }

    async fn simulate(self, server: String) -> anyhow::Result<ExitCode> {
        let started = Instant::now();
        let n = self.devices;
        let width = n.saturating_sub(1).to_string().len().max(4);
        let behaviours: Vec<Behaviour> = (0..n).map(|i| behaviour(self.seed, i, &self)).collect();
        let ids: Vec<String> = (0..n)
            .map(|i| format!("{}{:0width$}", self.id_prefix, i))
            .collect();
        for id in ids.iter().take(1) {
            autonomy_core::device::validate_device_id(id)
                .map_err(|m| anyhow::anyhow!("--id-prefix gives invalid device ids ({id}): {m}"))?;
        }
        if let Some(path) = &self.manifest {
            let manifest: BTreeMap<&str, &str> = ids
                .iter()
                .zip(&behaviours)
                .map(|(id, b)| (id.as_str(), b.as_str()))
                .collect();
            std::fs::write(path, serde_json::to_vec_pretty(&manifest)?)
                .with_context(|| format!("cannot write the manifest {}", path.display()))?;
        }
        let timeout = Duration::from_secs(u64::from(self.poll_wait) + 15);
        let fleet = Arc::new(Fleet {
            transport: Transport::new(server, timeout),
            step: Duration::from_secs_f64(self.step_seconds.max(0.0)),
            args: self,
            stop: AtomicBool::new(false),
            reached: AtomicBool::new(false),
            auth_failed: AtomicBool::new(false),
            local: (0..n)
                .map(|_| AtomicU8::new(Local::Enrolling as u8))
                .collect(),
            reports: AtomicU64::new(0),
            polls: AtomicU64::new(0),
        });
        let enrolled = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, (id, b)) in ids.iter().zip(&behaviours).enumerate() {
            let (fleet, id, b, enrolled) = (fleet.clone(), id.clone(), *b, enrolled.clone());
            tasks.spawn(async move { device(fleet, i, id, b, enrolled).await });
        }
        let deadline = fleet
            .args
            .duration
            .map(|d| tokio::time::Instant::now() + Duration::from_secs_f64(d.max(0.0)));
        let every = Duration::from_secs_f64(fleet.args.progress_every.max(0.5));
        let mut progress = tokio::time::interval(every);
        progress.tick().await;
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot watch SIGTERM")?;
        loop {
            let until = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = progress.tick() => eprintln!("{}", progress_line(&fleet, &enrolled, started)),
                _ = until => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = sigterm.recv() => break,
                done = tasks.join_next() => if done.is_none() { break },
            }
            if fleet.auth_failed.load(Ordering::Relaxed) {
                break;
            }
        }
        fleet.stop.store(true, Ordering::Relaxed);
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        eprintln!("{}", progress_line(&fleet, &enrolled, started));
        let summary = summarize(
            &fleet,
            &behaviours,
            enrolled.load(Ordering::Relaxed),
            started,
        );
        let text = serde_json::to_string_pretty(&summary)?;
        println!("{text}");
        if let Some(path) = &fleet.args.summary {
            std::fs::write(path, format!("{text}\n"))
                .with_context(|| format!("cannot write the summary {}", path.display()))?;
        }
        Ok(if summary.auth_failed {
            ExitCode::from(6)
        } else if !summary.cp_reached {
            ExitCode::from(3)
        } else {
            ExitCode::SUCCESS
        })
    }
}

fn progress_line(fleet: &Fleet, enrolled: &AtomicU64, started: Instant) -> String {
    let mut counts = [0u64; LOCALS.len()];
    for l in &fleet.local {
        counts[usize::from(l.load(Ordering::Relaxed)).min(LOCALS.len() - 1)] += 1;
    }
    let states: Vec<String> = LOCALS
        .iter()
        .zip(counts)
        .filter(|(_, n)| *n > 0)
        .map(|((_, name), n)| format!("{name}={n}"))
        .collect();
    format!(
        "fleet: t={:.0}s enrolled={} polls={} reports={} {}",
        started.elapsed().as_secs_f64(),
        enrolled.load(Ordering::Relaxed),
        fleet.polls.load(Ordering::Relaxed),
        fleet.reports.load(Ordering::Relaxed),
        states.join(" ")
    )
}

fn summarize(fleet: &Fleet, behaviours: &[Behaviour], enrolled: u64, started: Instant) -> Summary {
    let mut by_behaviour = BTreeMap::new();
    let mut by_local_state: BTreeMap<&'static str, BTreeMap<&'static str, u64>> = BTreeMap::new();
    for (b, l) in behaviours.iter().zip(&fleet.local) {
        *by_behaviour.entry(b.as_str()).or_default() += 1;
        let l = usize::from(l.load(Ordering::Relaxed)).min(LOCALS.len() - 1);
        *by_local_state
            .entry(b.as_str())
            .or_default()
            .entry(LOCALS[l].1)
            .or_default() += 1;
    }
    Summary {
        devices: fleet.args.devices,
        seed: fleet.args.seed,
        enrolled,
        cp_reached: fleet.reached.load(Ordering::Relaxed),
        auth_failed: fleet.auth_failed.load(Ordering::Relaxed),
        seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        polls: fleet.polls.load(Ordering::Relaxed),
        reports: fleet.reports.load(Ordering::Relaxed),
        by_behaviour,
        by_local_state,
    }
}

/// Jittered backoff for attempt `k`: 1, 2, 4 … 60 s ±50%, kept within 1–60 s (SPEC §9.4).
fn backoff(k: u32, salt: u64) -> Duration {
    let base = (1u64 << k.min(6)).min(60) as f64;
    let jitter = f64::from(
        blake3::hash(&[salt.to_le_bytes(), u64::from(k).to_le_bytes()].concat()).as_bytes()[0],
    ) / 255.0;
    Duration::from_secs_f64((base * (0.5 + jitter)).clamp(1.0, 60.0))
}

/// Whether a transport error is worth retrying (the CP down, hung or overloaded), or final.
enum Failed {
    Retry,
    /// 401/403: the credential is refused.
    Auth,
    /// A 409 of a report.
    Refused(Refusal),
    /// Any other 4xx: a bug in the simulator or the CP; the device stops.
    Fatal(String),
}

fn classify(fleet: &Fleet, e: &ClientError) -> Failed {
    if let Some(api) = e.api() {
        fleet.reached.store(true, Ordering::Relaxed);
        return match e.exit() {
            Exit::Denied => Failed::Auth,
            Exit::Conflict => Failed::Refused(Refusal::from_message(&api.message)),
            Exit::Server => Failed::Retry,
            _ => Failed::Fatal(e.to_string()),
        };
    }
    Failed::Retry
}

fn set(fleet: &Fleet, i: usize, l: Local) {
    fleet.local[i].store(l as u8, Ordering::Relaxed);
}

/// One device: enroll, then drive the agent machine until the fleet stops.
async fn device(fleet: Arc<Fleet>, i: usize, id: String, b: Behaviour, enrolled: Arc<AtomicU64>) {
    let salt = i as u64 ^ fleet.args.seed.rotate_left(17);
    let mut attempt = 0u32;
    let mut labels: BTreeMap<String, String> = fleet.args.labels.iter().cloned().collect();
    if let Some(site) = site_of(i as u32, fleet.args.sites) {
        labels.insert("site".to_string(), site);
    }
    let token = loop {
        if fleet.stop.load(Ordering::Relaxed) {
            return;
        }
        let call = Api::new().enroll(
            &fleet.args.enroll_key,
            &EnrollRequest {
                id: id.clone(),
                labels: labels.clone(),
            },
        );
        match fleet.transport.fetch(&call).await {
            Ok(e) => {
                fleet.reached.store(true, Ordering::Relaxed);
                break e.token;
            }
            Err(e) => match classify(&fleet, &e) {
                Failed::Retry => {
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt, salt)).await;
                }
                Failed::Auth => {
                    fleet.auth_failed.store(true, Ordering::Relaxed);
                    set(&fleet, i, Local::Stopped);
                    return;
                }
                Failed::Refused(_) | Failed::Fatal(_) => {
                    eprintln!("fleet: {id}: enrollment refused: {e}");
                    set(&fleet, i, Local::Stopped);
                    return;
                }
            },
        }
    };
    enrolled.fetch_add(1, Ordering::Relaxed);
    let Ok(token) = token.parse::<Token>() else {
        set(&fleet, i, Local::Stopped);
        return;
    };
    let api = Api::new()
        .with_token(Some(token))
        .with_device(Some(id.clone()));
    let mut boots = 0u32;
    let boot_id = |n: u32| format!("{id}-boot-{n}");
    let mut state = autonomy_agent::AgentState::new(id.clone(), boot_id(0));
    state.installed_digest = base_digest(fleet.args.seed);
    let (mut m, _) = Machine::resume(state, &boot_id(0));
    let slow = if b == Behaviour::Slow {
        fleet.args.slow_factor.max(1.0)
    } else {
        1.0
    };
    let step = fleet.step.mul_f64(slow);
    let ready_at = not_ready_for(fleet.args.seed, i as u32, b, &fleet.args)
        .map(|d| tokio::time::Instant::now() + d);
    let mut installs: BTreeMap<(String, u32), ()> = BTreeMap::new();
    let mut drift_at: Option<tokio::time::Instant> = None;
    let mut retries = 0u32;
    set(&fleet, i, Local::Idle);
    while !fleet.stop.load(Ordering::Relaxed) {
        if let Some(at) = drift_at {
            if tokio::time::Instant::now() >= at {
                let mut s = m.into_state();
                s.installed_digest = drift_digest(fleet.args.seed);
                m = Machine::resume(s, &boot_id(boots)).0;
                drift_at = None;
            }
        }
        match m.next() {
            Next::Poll { after_seconds, .. } => {
                if after_seconds > 0 {
                    let mut wait = Duration::from_secs(u64::from(after_seconds));
                    if let Some(at) = drift_at {
                        wait = wait.min(at.saturating_duration_since(tokio::time::Instant::now()));
                    }
                    tokio::time::sleep(wait).await;
                }
                let mut wait = fleet.args.poll_wait;
                if drift_at.is_some() {
                    wait = wait.min(1);
                }
                let now = tokio::time::Instant::now();
                let ready = ready_at.is_none_or(|at| now >= at);
                if let Some(at) = ready_at.filter(|_| !ready) {
                    // Poll again when it becomes ready, so its next poll says so.
                    let left = at.saturating_duration_since(now).as_secs_f64().ceil() as u32;
                    wait = wait.min(left.max(1));
                }
                let mut request = m.poll_request(wait);
                request.conditions = conditions(b, ready);
                let call = api.device_poll(&request);
                match fleet.transport.fetch::<PollResponse>(&call).await {
                    Ok(answer) => {
                        fleet.reached.store(true, Ordering::Relaxed);
                        fleet.polls.fetch_add(1, Ordering::Relaxed);
                        retries = 0;
                        if b == Behaviour::Silent && answer.assignment.is_some() {
                            set(&fleet, i, Local::Silent);
                            // Silent from here on: never poll or report again.
                            while !fleet.stop.load(Ordering::Relaxed) {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                            }
                            return;
                        }
                        let _ = m.on_poll(&answer);
                        if m.state().job.is_some() {
                            set(&fleet, i, Local::Reporting);
                        }
                    }
                    Err(e) => {
                        if !handle_error(&fleet, i, &e, &mut retries, salt).await {
                            return;
                        }
                    }
                }
            }
            Next::Report(r) => {
                let call = api.device_report(&r);
                match fleet.transport.fetch(&call).await {
                    Ok(answer) => {
                        fleet.reports.fetch_add(1, Ordering::Relaxed);
                        retries = 0;
                        let _ = m.on_report(Ok(answer));
                        after_report(&fleet, i, b, &r, &mut drift_at);
                    }
                    Err(e) => match classify(&fleet, &e) {
                        Failed::Refused(refusal) => {
                            let _ = m.on_report(Err(refusal));
                            set(&fleet, i, Local::Idle);
                        }
                        _ => {
                            if !handle_error(&fleet, i, &e, &mut retries, salt).await {
                                return;
                            }
                        }
                    },
                }
            }
            Next::RunHook(run) => {
                set(
                    &fleet,
                    i,
                    match run.step {
                        HookStep::Download => Local::Downloading,
                        HookStep::Install => Local::Installing,
                        HookStep::Verify => Local::Verifying,
                    },
                );
                tokio::time::sleep(step).await;
                let outcome = simulated_hook(&fleet, b, &run, &mut installs, m.state());
                let _ = m.on_hook(run.step, &outcome);
            }
            Next::ExitForReboot => {
                set(&fleet, i, Local::Rebooting);
                tokio::time::sleep(step).await;
                boots += 1;
                let _ = m.on_boot(&boot_id(boots));
            }
        }
    }
}

/// After a delivered report: the local state, and when a drifting device falls back.
fn after_report(
    fleet: &Fleet,
    i: usize,
    b: Behaviour,
    r: &ReportRequest,
    drift_at: &mut Option<tokio::time::Instant>,
) {
    use autonomy_api::device::ReportState as R;
    match r.state {
        R::Succeeded | R::Reverted => {
            set(fleet, i, Local::Succeeded);
            if b == Behaviour::Drifting && r.state == R::Succeeded {
                *drift_at = Some(
                    tokio::time::Instant::now()
                        + Duration::from_secs_f64(fleet.args.drift_after.max(0.0)),
                );
            }
        }
        R::Failed | R::RevertFailed | R::RolledBack => set(fleet, i, Local::Failed),
        _ => {}
    }
}

/// A transport failure: retry after a backoff (true), or stop the device (false).
async fn handle_error(
    fleet: &Fleet,
    i: usize,
    e: &ClientError,
    retries: &mut u32,
    salt: u64,
) -> bool {
    match classify(fleet, e) {
        Failed::Retry | Failed::Refused(_) => {
            *retries += 1;
            tokio::time::sleep(backoff(*retries, salt)).await;
            true
        }
        Failed::Auth => {
            fleet.auth_failed.store(true, Ordering::Relaxed);
            set(fleet, i, Local::Stopped);
            false
        }
        Failed::Fatal(m) => {
            eprintln!("fleet: device {i}: giving up: {m}");
            set(fleet, i, Local::Stopped);
            false
        }
    }
}

/// What the simulated hook does for this behaviour.
fn simulated_hook(
    fleet: &Fleet,
    b: Behaviour,
    run: &autonomy_agent::HookRun,
    installs: &mut BTreeMap<(String, u32), ()>,
    state: &autonomy_agent::AgentState,
) -> HookOutcome {
    let reboot_required = state.job.as_ref().is_some_and(|j| j.reboot_required);
    match run.step {
        HookStep::Download => HookOutcome::ok(""),
        HookStep::Install => {
            installs.insert((run.plan_id.clone(), run.attempt), ());
            let fails = b == Behaviour::Failing
                && run.action == JobAction::Install
                && (fleet.args.fail_attempts == 0 || run.attempt <= fleet.args.fail_attempts);
            if fails {
                HookOutcome::code(
                    1,
                    format!("simulated install failure (attempt {})", run.attempt),
                )
            } else if reboot_required && b != Behaviour::FalseSuccess {
                HookOutcome::code(REBOOT_EXIT_CODE, "")
            } else {
                HookOutcome::ok("")
            }
        }
        HookStep::Verify => {
            let prints = match (b, run.action) {
                (Behaviour::Reverting, JobAction::Install) => state
                    .job
                    .as_ref()
                    .and_then(|j| j.previous_digest.clone())
                    .unwrap_or_else(|| base_digest(fleet.args.seed)),
                _ => run.target_digest.clone(),
            };
            HookOutcome::ok(prints)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: SimulateArgs,
    }

    fn args(extra: &[&str]) -> SimulateArgs {
        let mut v = vec![
            "t",
            "--devices",
            "10000",
            "--enroll-key",
            "aut_0123456789abcdef0123456789abcdef",
        ];
        v.extend_from_slice(extra);
        T::parse_from(v).a
    }

    #[test]
    fn behaviours_follow_the_fractions_and_the_seed() {
        let a = args(&[
            "--silent",
            "0.02",
            "--failing",
            "0.05",
            "--false-success",
            "0.02",
            "--reverting",
            "0.01",
        ]);
        let mut counts: BTreeMap<Behaviour, u32> = BTreeMap::new();
        for i in 0..10_000 {
            *counts.entry(behaviour(1, i, &a)).or_default() += 1;
        }
        let near = |b: Behaviour, want: f64| {
            let got = f64::from(counts.get(&b).copied().unwrap_or(0)) / 10_000.0;
            assert!((got - want).abs() < 0.01, "{b:?}: {got} vs {want}");
        };
        near(Behaviour::Silent, 0.02);
        near(Behaviour::Failing, 0.05);
        near(Behaviour::FalseSuccess, 0.02);
        near(Behaviour::Reverting, 0.01);
        near(Behaviour::Healthy, 0.90);
        let a = args(&["--busy", "0.1", "--undocked", "0.05", "--busy-for", "10"]);
        let mut counts: BTreeMap<Behaviour, u32> = BTreeMap::new();
        for i in 0..10_000 {
            let b = behaviour(1, i, &a);
            *counts.entry(b).or_default() += 1;
            let wait = not_ready_for(1, i, b, &a);
            match b {
                Behaviour::Busy => {
                    let w = wait.unwrap().as_secs_f64();
                    assert!((5.0..15.0).contains(&w), "{w}");
                    assert_eq!(wait, not_ready_for(1, i, b, &a), "deterministic");
                }
                Behaviour::Undocked => assert!(wait.is_some()),
                _ => assert_eq!(wait, None),
            }
        }
        let got = |b| f64::from(counts.get(&b).copied().unwrap_or(0)) / 10_000.0;
        assert!((got(Behaviour::Busy) - 0.1).abs() < 0.01);
        assert!((got(Behaviour::Undocked) - 0.05).abs() < 0.01);
        assert_eq!(
            conditions(Behaviour::Busy, false),
            BTreeMap::from([
                ("docked".to_string(), serde_json::json!(true)),
                ("idle".to_string(), serde_json::json!(false)),
                ("battery_pct".to_string(), serde_json::json!(100)),
            ])
        );
        assert_eq!(conditions(Behaviour::Undocked, false)["docked"], false);
        assert_eq!(conditions(Behaviour::Undocked, true)["docked"], true);
        assert_eq!(conditions(Behaviour::Healthy, false)["idle"], true);
        assert_eq!(site_of(13, 10).as_deref(), Some("site-03"));
        assert_eq!(site_of(13, 0), None);
        let a = args(&[
            "--silent",
            "0.02",
            "--failing",
            "0.05",
            "--false-success",
            "0.02",
            "--reverting",
            "0.01",
        ]);
        let again: Vec<_> = (0..100).map(|i| behaviour(1, i, &a)).collect();
        let same: Vec<_> = (0..100).map(|i| behaviour(1, i, &a)).collect();
        let other: Vec<_> = (0..100).map(|i| behaviour(2, i, &a)).collect();
        assert_eq!(again, same);
        assert_ne!(again, other);
    }

    #[test]
    fn backoff_stays_between_one_and_sixty_seconds() {
        for k in 0..20 {
            let d = backoff(k, 7).as_secs_f64();
            assert!((1.0..=60.0).contains(&d), "{k}: {d}");
        }
        assert!(backoff(10, 1) > backoff(0, 1));
    }
}

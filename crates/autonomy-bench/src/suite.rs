//! The phases: L (raw SQLite), B1 (durable creates), B2 (stuck scan), B3 (list pages), B4
//! (restart to ready), B5 (audit query), B6 (CLI round trip), B7 (operator latency under an
//! unauthenticated flood).
//!
//! Every phase that measures the CP starts its own CP instance and reads that instance's peak
//! RSS (`VmHWM`) just before stopping it, so each phase's peak is its own (start-up included).
//! Seeding runs in separate CP instances, whose peaks are reported with the seeding.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use autonomy_api::{
    timefmt, AuditEventList, AuditQuery, CreateTokenRequest, ListQuery, Role, StuckQuery,
};
use autonomy_client::Token;
use serde::Serialize;

use crate::cp::{self, Cp, Stopped};
use crate::flood::{self, FloodReport, Spec as FloodSpec};
use crate::http::{metric, Http};
use crate::limit::{self, LimitReport};
use crate::load::{self, LoopReport, SeedReport};
use crate::stats::{round1, round3, Latency};

/// Sizes and durations of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub mode: &'static str,
    pub limit_seconds: f64,
    pub b1_levels: Vec<usize>,
    pub b1_warmup_seconds: f64,
    pub b1_seconds: f64,
    pub b2_plans: u64,
    pub b2_stale_percent: f64,
    pub b2_gap_seconds: f64,
    pub b2_scans: usize,
    pub plans: u64,
    pub b3_fetches: usize,
    pub b4_restarts: usize,
    pub b5_queries: usize,
    pub b5_offline_runs: usize,
    pub b6_runs: usize,
    pub b7_warmup_seconds: f64,
    pub b7_seconds: f64,
    pub b7_concurrency: usize,
    pub b7_flood_connections: usize,
    pub b7_flood_max_requests: u64,
    pub b7_probe_requests: u64,
    pub b7_rounds: usize,
    pub e1_devices: u64,
    pub e1_connections: usize,
    pub e1_warmup_seconds: f64,
    pub e1_seconds: f64,
    pub e2_devices: u64,
    pub e2_concurrency: usize,
    pub e2_seconds: f64,
    pub e3_devices: u64,
    pub e3_plans: u64,
    pub e3_ticks: usize,
    pub e4_scans: usize,
    pub e5_plans: usize,
    pub e5_stages: usize,
    pub f1_devices: u64,
    pub f2_devices: u64,
    pub f2_rollout_devices: u64,
    pub f2_held: Option<u64>,
    pub f2_wait_seconds: u32,
    pub f2_probe_rate: f64,
    pub p1_levels: Vec<usize>,
    pub p2_kills: usize,
    pub p2_rate: f64,
    pub p2_promoter_interval: f64,
    pub postgres_script: PathBuf,
    pub seed_concurrency: usize,
    pub operators: usize,
    pub start_timeout_seconds: f64,
    pub stop_timeout_seconds: f64,
    pub phases: Vec<String>,
}

impl Config {
    pub fn wants(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p == phase)
    }
}

/// Where things are and what to run.
pub struct Env {
    pub bin: PathBuf,
    pub work: PathBuf,
    pub logs: PathBuf,
    pub cfg: Config,
}

impl Env {
    pub(crate) fn start_limit(&self) -> Duration {
        Duration::from_secs_f64(self.cfg.start_timeout_seconds)
    }

    fn stop_limit(&self) -> Duration {
        Duration::from_secs_f64(self.cfg.stop_timeout_seconds)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.logs.join(format!("cp-{name}.log"))
    }

    pub(crate) fn start(&self, data_dir: &Path, name: &str) -> anyhow::Result<Cp> {
        cp::start(&self.bin, data_dir, &self.log(name), self.start_limit())
            .with_context(|| format!("starting the CP for {name}"))
    }

    fn start_rbac(&self, data_dir: &Path, name: &str) -> anyhow::Result<Cp> {
        cp::start_rbac(&self.bin, data_dir, &self.log(name), self.start_limit())
            .with_context(|| format!("starting the CP for {name}"))
    }

    /// [`Env::start`] with more `serve` arguments (the engine phases: `--promoter-interval`).
    pub(crate) fn start_args(
        &self,
        data_dir: &Path,
        name: &str,
        args: &[&str],
    ) -> anyhow::Result<Cp> {
        cp::start_args(
            &self.bin,
            data_dir,
            &self.log(name),
            self.start_limit(),
            args,
        )
        .with_context(|| format!("starting the CP for {name}"))
    }

    pub(crate) fn stop(&self, cp: Cp) -> anyhow::Result<Stopped> {
        let stopped = cp::stop(cp, self.stop_limit())?;
        if stopped.killed || stopped.exit_code != Some(0) {
            eprintln!(
                "  warning: the CP did not stop cleanly ({stopped:?}); see {}",
                self.logs.display()
            );
        }
        Ok(stopped)
    }
}

// ---------------------------------------------------------------------------------------------
// L
// ---------------------------------------------------------------------------------------------

pub fn run_limit(env: &Env) -> anyhow::Result<LimitReport> {
    eprintln!(
        "L: raw SQLite (WAL, synchronous=FULL) in {}",
        env.work.display()
    );
    let r = limit::measure(&env.work.join("limit"), env.cfg.limit_seconds)?;
    eprintln!(
        "  {:.0} single-row commits/s, {:.0} rows/s in {}-row transactions",
        r.single_row.commits_per_sec, r.batched.rows_per_sec, r.batched.rows_per_txn
    );
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// B1
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct B1Level {
    #[serde(flatten)]
    pub run: LoopReport,
    /// creates/s ÷ raw single-row commits/s.
    pub ratio_to_single_row_commits: Option<f64>,
    /// creates/s ÷ raw rows/s in 64-row transactions.
    pub ratio_to_batched_rows: Option<f64>,
    pub store: StoreDelta,
    pub cp_cpu_seconds: Option<f64>,
    pub cp_cpu_ms_per_create: Option<f64>,
    pub bench_cpu_seconds: Option<f64>,
    /// The load generator's (this process's) CPU per committed create (warm-up included, like
    /// the CP's), ms.
    pub bench_cpu_ms_per_create: Option<f64>,
    /// The store's writer thread (`store-writer`) alone: CPU per committed create, ms (issue
    /// 13's target: at most 0.040).
    pub writer_cpu_ms_per_create: Option<f64>,
    /// CP CPU per committed create by thread (the writer thread vs the HTTP workers), ms.
    pub cp_cpu_ms_per_create_by_thread: std::collections::BTreeMap<String, f64>,
    /// CP bytes handed to write(2)/pwrite(2) per committed create (`/proc/<pid>/io` wchar:
    /// WAL frames, checkpoints, SQLite temp files, audit segment).
    pub cp_write_bytes_per_create: Option<f64>,
    /// CP write syscalls per committed create (`syscw`).
    pub cp_write_syscalls_per_create: Option<f64>,
    /// CP bytes sent to the block device per committed create (`write_bytes`).
    pub cp_disk_bytes_per_create: Option<f64>,
    /// VmHWM of the CP instance that served only this level.
    pub peak_rss_kib: Option<u64>,
}

/// What `/metrics` says the writer did during a level (warm-up included).
#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreDelta {
    pub commits: u64,
    pub committed_requests: u64,
    pub avg_batch: f64,
    pub max_batch: u64,
    /// Mean time per group commit (SQLite COMMIT + audit append + fsyncs), ms.
    pub avg_commit_ms: f64,
    /// Share of wall time the writer spent inside commits.
    pub writer_busy_fraction: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct B1Report {
    pub levels: Vec<B1Level>,
    pub note: &'static str,
}

pub(crate) struct StoreSnap {
    commits: f64,
    requests: f64,
    micros: f64,
    max_batch: f64,
    at: Instant,
}

pub(crate) fn store_snap(http: &Http) -> anyhow::Result<StoreSnap> {
    let t = http
        .call(&http.api().get::<()>("/metrics", &[]))?
        .text()
        .into_owned();
    let m = |name: &str| metric(&t, name).unwrap_or(0.0);
    Ok(StoreSnap {
        commits: m("autonomy_store_commits_total"),
        requests: m("autonomy_store_committed_requests_total"),
        micros: m("autonomy_store_commit_microseconds_total"),
        max_batch: m("autonomy_store_max_batch"),
        at: Instant::now(),
    })
}

impl StoreDelta {
    /// Several CPs' deltas over the same window as one: counts and busy shares summed (a busy
    /// share above 1 means writers of several replicas were busy at once), the largest batch.
    pub(crate) fn sum(parts: Vec<StoreDelta>) -> StoreDelta {
        if parts.len() == 1 {
            return parts.into_iter().next().unwrap_or_default();
        }
        let commits: u64 = parts.iter().map(|p| p.commits).sum();
        let requests: u64 = parts.iter().map(|p| p.committed_requests).sum();
        let commit_ms: f64 = parts
            .iter()
            .map(|p| p.avg_commit_ms * p.commits as f64)
            .sum();
        StoreDelta {
            commits,
            committed_requests: requests,
            avg_batch: round1(requests as f64 / commits.max(1) as f64),
            max_batch: parts.iter().map(|p| p.max_batch).max().unwrap_or(0),
            avg_commit_ms: round3(commit_ms / commits.max(1) as f64),
            writer_busy_fraction: round3(parts.iter().map(|p| p.writer_busy_fraction).sum()),
        }
    }
}

pub(crate) fn store_delta(a: &StoreSnap, b: &StoreSnap) -> StoreDelta {
    let commits = (b.commits - a.commits).max(0.0);
    let requests = (b.requests - a.requests).max(0.0);
    let micros = (b.micros - a.micros).max(0.0);
    let wall = (b.at - a.at).as_secs_f64().max(1e-9);
    StoreDelta {
        commits: commits as u64,
        committed_requests: requests as u64,
        avg_batch: round1(requests / commits.max(1.0)),
        max_batch: b.max_batch as u64,
        avg_commit_ms: round3(micros / commits.max(1.0) / 1e3),
        writer_busy_fraction: round3(micros / 1e6 / wall),
    }
}

pub fn run_b1(env: &Env, limit: Option<&LimitReport>) -> anyhow::Result<B1Report> {
    let dir = env.work.join("b1");
    let mut levels = Vec::new();
    for &c in &env.cfg.b1_levels {
        eprintln!(
            "B1: durable creates, closed loop at concurrency {c} for {} s (+{} s warm-up)",
            env.cfg.b1_seconds, env.cfg.b1_warmup_seconds
        );
        let cp = env.start(&dir, &format!("b1-c{c}"))?;
        let level = measure_creates(
            env,
            &[&cp],
            &format!("b1-c{c}"),
            c,
            limit.map(|l| l.single_row.commits_per_sec),
            limit.map(|l| l.batched.rows_per_sec),
        );
        env.stop(cp)?;
        levels.push(level?);
    }
    Ok(B1Report {
        levels,
        note: "each level runs on a fresh CP instance over the same data dir (the plans of the \
               earlier levels stay); store figures come from /metrics deltas over the level",
    })
}

/// One closed-loop level of durable creates at concurrency `c` over `cps` (the workers spread
/// round robin over them: one CP for B1, several replicas for P1), with every figure B1
/// reports: the loop, the `/metrics` store deltas, CPU, I/O and peak RSS summed (peak: the
/// largest) over the CPs, and the ratios to the given limits (single-row commits/s, rows/s in
/// batched transactions). The CPs keep running.
pub(crate) fn measure_creates(
    env: &Env,
    cps: &[&Cp],
    label: &str,
    c: usize,
    single_row_limit: Option<f64>,
    batched_limit: Option<f64>,
) -> anyhow::Result<B1Level> {
    let https = cps
        .iter()
        .map(|cp| Http::new(&cp.url, load::REQUEST_TIMEOUT))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let snaps = |https: &[Http]| -> anyhow::Result<Vec<StoreSnap>> {
        https.iter().map(store_snap).collect()
    };
    let sum_cpu = || -> Option<f64> { cps.iter().map(|cp| cp.cpu_seconds()).sum() };
    let sum_threads = || {
        let mut all = std::collections::BTreeMap::<String, f64>::new();
        for cp in cps {
            for (name, v) in cp.cpu_by_thread() {
                *all.entry(name).or_default() += v;
            }
        }
        all
    };
    let sum_io = || -> Option<std::collections::BTreeMap<String, u64>> {
        let mut all = std::collections::BTreeMap::<String, u64>::new();
        for cp in cps {
            for (k, v) in cp.io()? {
                *all.entry(k).or_default() += v;
            }
        }
        Some(all)
    };
    let before = snaps(&https)?;
    let cpu0 = sum_cpu();
    let threads0 = sum_threads();
    let io0 = sum_io();
    let self0 = cp::cpu_seconds(Path::new("/proc/self/stat"));
    let bases: Vec<&str> = cps.iter().map(|cp| cp.url.as_str()).collect();
    let run = load::raw_closed_loop(
        &bases,
        label,
        c,
        Duration::from_secs_f64(env.cfg.b1_warmup_seconds),
        Duration::from_secs_f64(env.cfg.b1_seconds),
        env.cfg.operators,
    )?;
    let after = snaps(&https)?;
    let cpu1 = sum_cpu();
    let threads1 = sum_threads();
    let io1 = sum_io();
    let self1 = cp::cpu_seconds(Path::new("/proc/self/stat"));
    let peak = cps.iter().filter_map(|cp| cp.peak_rss_kib()).max();
    if run.creates == 0 {
        bail!(
            "{label}: no create succeeded ({} errors: {:?})",
            run.errors,
            run.first_errors
        );
    }
    let store = StoreDelta::sum(
        before
            .iter()
            .zip(&after)
            .map(|(a, b)| store_delta(a, b))
            .collect(),
    );
    let cp_cpu = cpu0.zip(cpu1).map(|(a, b)| round3(b - a));
    let creates = store.committed_requests.max(1) as f64;
    let by_thread: std::collections::BTreeMap<String, f64> = threads1
        .iter()
        .map(|(name, b)| {
            let a = threads0.get(name).copied().unwrap_or(0.0);
            (name.clone(), round3((b - a) * 1e3 / creates))
        })
        .filter(|(_, v)| *v > 0.0)
        .collect();
    let io_delta = |key: &str| {
        let (a, b) = (io0.as_ref()?.get(key)?, io1.as_ref()?.get(key)?);
        Some(round1(b.saturating_sub(*a) as f64 / creates))
    };
    let level = B1Level {
        writer_cpu_ms_per_create: by_thread.get("store-writer").copied(),
        cp_cpu_ms_per_create_by_thread: by_thread,
        cp_write_bytes_per_create: io_delta("wchar"),
        cp_write_syscalls_per_create: io_delta("syscw"),
        cp_disk_bytes_per_create: io_delta("write_bytes"),
        ratio_to_single_row_commits: single_row_limit
            .map(|l| round3(run.creates_per_sec / l.max(1e-9))),
        ratio_to_batched_rows: batched_limit.map(|l| round3(run.creates_per_sec / l.max(1e-9))),
        cp_cpu_ms_per_create: cp_cpu
            .filter(|_| store.committed_requests > 0)
            .map(|s| round3(s * 1e3 / store.committed_requests as f64)),
        cp_cpu_seconds: cp_cpu,
        bench_cpu_seconds: self0.zip(self1).map(|(a, b)| round3(b - a)),
        // Over the same span as the CP's: the warm-up included.
        bench_cpu_ms_per_create: self0
            .zip(self1)
            .filter(|_| store.committed_requests > 0)
            .map(|(a, b)| round3((b - a) * 1e3 / store.committed_requests as f64)),
        peak_rss_kib: peak,
        store,
        run,
    };
    eprintln!(
        "  {:.0} creates/s, {}, avg batch {}, {} errors; CP {} ms CPU (writer thread {} ms) and {} B written per create; bench {} ms CPU per create",
        level.run.creates_per_sec,
        level.run.latency.short(),
        level.store.avg_batch,
        level.run.errors,
        level.cp_cpu_ms_per_create.map_or("?".into(), |v| v.to_string()),
        level.writer_cpu_ms_per_create.map_or("?".into(), |v| v.to_string()),
        level.cp_write_bytes_per_create.map_or("?".into(), |v| format!("{v:.0}")),
        level.bench_cpu_ms_per_create.map_or("?".into(), |v| v.to_string()),
    );
    Ok(level)
}

// ---------------------------------------------------------------------------------------------
// The shared data set (B2 builds its first part; B3–B6 use all of it)
// ---------------------------------------------------------------------------------------------

pub struct Dataset {
    pub dir: PathBuf,
    pub plans: u64,
    pub seeds: Vec<SeedReport>,
    /// Wall-clock interval (µs) of each seeding, for B5's time filter.
    pub windows: Vec<(i64, i64, u64)>,
    /// A plan id that exists (for B6).
    pub sample_id: Option<String>,
    /// Peak RSS of each seeding CP instance.
    pub seed_peak_rss_kib: Vec<Option<u64>>,
}

impl Dataset {
    pub fn new(dir: PathBuf) -> Dataset {
        Dataset {
            dir,
            plans: 0,
            seeds: Vec::new(),
            windows: Vec::new(),
            sample_id: None,
            seed_peak_rss_kib: Vec::new(),
        }
    }

    fn seed(
        &mut self,
        env: &Env,
        base: &str,
        label: &str,
        prefix: &str,
        count: u64,
    ) -> anyhow::Result<()> {
        if count == 0 {
            return Ok(());
        }
        eprintln!(
            "  seeding {count} plans ({label}) at concurrency {}",
            env.cfg.seed_concurrency
        );
        let t0 = wall_us();
        let r = load::seed(
            base,
            label,
            prefix,
            0,
            count,
            env.cfg.seed_concurrency,
            env.cfg.operators,
        )?;
        let t1 = wall_us();
        eprintln!(
            "  seeded {} plans in {} s ({:.0}/s)",
            r.created, r.seconds, r.creates_per_sec
        );
        self.plans += r.created;
        self.windows.push((t0, t1, r.created));
        self.sample_id = Some(format!("{prefix}-{:07}", count - 1));
        self.seeds.push(r);
        Ok(())
    }

    /// Grows the data set to `total` plans.
    pub fn extend_to(&mut self, env: &Env, total: u64) -> anyhow::Result<()> {
        if self.plans >= total {
            return Ok(());
        }
        eprintln!("data set: growing to {total} plans");
        let cp = env.start(&self.dir, &format!("seed-{}", self.seeds.len()))?;
        let label = format!("bulk-{}", self.seeds.len());
        let base = cp.url.clone();
        self.seed(env, &base, &label, &label, total - self.plans)?;
        self.seed_peak_rss_kib.push(cp.peak_rss_kib());
        env.stop(cp)?;
        Ok(())
    }

    /// B5's time range: the middle of the largest seeding, a quarter of its duration wide.
    pub fn audit_window(&self) -> Option<(String, String)> {
        let (t0, t1, _) = self.windows.iter().max_by_key(|w| w.2)?;
        let span = (t1 - t0).max(4);
        let start = t0 + span / 2;
        let end = start + span / 4;
        Some((timefmt::format_us(start), timefmt::format_us(end)))
    }
}

// ---------------------------------------------------------------------------------------------
// B2
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct B2Report {
    pub plans: u64,
    pub stale_plans: u64,
    pub threshold_seconds: f64,
    /// At the first scan: the youngest stale plan was at least this old…
    pub min_stale_age_seconds: f64,
    /// …and the oldest fresh plan at most this old.
    pub max_fresh_age_seconds: f64,
    pub scans: usize,
    pub latency: Latency,
    /// Scans whose stuck_count was not exactly the stale plans.
    pub wrong_counts: usize,
    pub stuck_count_seen: Vec<u64>,
    pub items_per_answer: usize,
    pub answer_bytes: usize,
    pub peak_rss_kib: Option<u64>,
    pub method: &'static str,
}

pub fn run_b2(env: &Env, ds: &mut Dataset) -> anyhow::Result<B2Report> {
    let cfg = &env.cfg;
    if ds.plans != 0 {
        bail!("B2 must build the start of the data set");
    }
    let stale = ((cfg.b2_plans as f64 * cfg.b2_stale_percent / 100.0).round() as u64)
        .clamp(1, cfg.b2_plans);
    let gap = cfg.b2_gap_seconds.max(0.5);
    eprintln!(
        "B2: stuck scan over {} plans, {stale} of them stale",
        cfg.b2_plans
    );
    let cp = env.start(&ds.dir, "seed-b2")?;
    let base = cp.url.clone();
    ds.seed(env, &base, "b2-stale", "stale", stale)?;
    // Every stale plan was created before this instant (its 201 has arrived).
    let stale_done = Instant::now();
    eprintln!("  waiting {gap} s so the stale plans age past the threshold");
    std::thread::sleep(Duration::from_secs_f64(gap));
    // Every fresh plan is created after this instant (no request has been sent yet).
    let fresh_start = Instant::now();
    ds.seed(env, &base, "b2-fresh", "fleet", cfg.b2_plans - stale)?;
    ds.seed_peak_rss_kib.push(cp.peak_rss_kib());
    env.stop(cp)?;

    let cp = env.start(&ds.dir, "b2")?;
    let http = Http::new(&cp.url, load::REQUEST_TIMEOUT)?;
    let scan_start = Instant::now();
    // Fresh plans are at most `scan_start - fresh_start` old now, stale ones at least
    // `gap` older than that. Put the threshold half way, and scan only while both stay true.
    let threshold = (scan_start - fresh_start).as_secs_f64() + gap / 2.0;
    let threshold = (threshold * 1000.0).ceil() / 1000.0;
    let budget = Duration::from_secs_f64(gap / 2.0 * 0.8);
    let t = format!("{threshold:.3}");
    let mut lat = Vec::new();
    let mut seen = Vec::new();
    let mut wrong = 0;
    let mut items = 0;
    let mut bytes = 0;
    while lat.len() < cfg.b2_scans && scan_start.elapsed() < budget {
        let (a, elapsed) = http.timed(&http.api().stuck_rollouts(&StuckQuery {
            threshold_seconds: Some(t.clone()),
            limit: None,
            code: None,
        }))?;
        let r = a.value()?;
        lat.push(elapsed);
        if r.stuck_count != stale {
            wrong += 1;
        }
        if !seen.contains(&r.stuck_count) {
            seen.push(r.stuck_count);
        }
        items = r.items.len();
        bytes = a.body().len();
    }
    let peak = cp.peak_rss_kib();
    env.stop(cp)?;
    if lat.len() < cfg.b2_scans {
        eprintln!(
            "  note: {} of {} scans fit in the {:.1} s the threshold stays honest (raise --b2-gap-seconds for more)",
            lat.len(),
            cfg.b2_scans,
            budget.as_secs_f64()
        );
    }
    let report = B2Report {
        plans: ds.plans,
        stale_plans: stale,
        threshold_seconds: threshold,
        min_stale_age_seconds: round3((scan_start - stale_done).as_secs_f64()),
        max_fresh_age_seconds: round3((scan_start - fresh_start).as_secs_f64()),
        scans: lat.len(),
        latency: Latency::of(&lat),
        wrong_counts: wrong,
        stuck_count_seen: seen,
        items_per_answer: items,
        answer_bytes: bytes,
        peak_rss_kib: peak,
        method: "the stale plans are created first; after a gap the rest are created; the \
                 threshold sits half a gap between the youngest stale and the oldest fresh plan \
                 (bracketed by client-side clocks), and scans run only while that stays true",
    };
    eprintln!(
        "  {} scans: {}, stuck_count {:?}",
        report.scans,
        report.latency.short(),
        report.stuck_count_seen
    );
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// B3
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct B3Report {
    pub plans: u64,
    pub page_items: usize,
    /// Plans before the deep page.
    pub deep_offset: u64,
    pub walk_pages: u64,
    pub walk_seconds: f64,
    pub walk_plans_per_sec: f64,
    pub first_page: Latency,
    pub deep_page: Latency,
    pub first_page_bytes: usize,
    pub deep_page_bytes: usize,
    /// deep p50 ÷ first p50.
    pub deep_to_first_p50: f64,
    pub peak_rss_kib: Option<u64>,
}

pub fn run_b3(env: &Env, ds: &Dataset) -> anyhow::Result<B3Report> {
    eprintln!(
        "B3: list, first page vs a deep cursor page, over {} plans",
        ds.plans
    );
    let cp = env.start(&ds.dir, "b3")?;
    let http = Http::new(&cp.url, load::REQUEST_TIMEOUT)?;
    let target = ds.plans - (ds.plans / 2).min(1000);
    let started = Instant::now();
    let mut fetched = 0u64;
    let mut pages = 0u64;
    let mut cursor: Option<String> = None;
    let mut last_print = Instant::now();
    while fetched < target && pages < ds.plans + 10 {
        let q = ListQuery {
            phase: None,
            limit: Some((target - fetched).clamp(1, 1000).to_string()),
            cursor: cursor.take(),
        };
        let page = http.call(&http.api().list_rollouts(&q))?.value()?;
        pages += 1;
        fetched += page.items.len() as u64;
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            eprintln!("  walking the cursor: {fetched}/{target} plans");
        }
    }
    let walk_seconds = started.elapsed().as_secs_f64();
    let deep = cursor.ok_or_else(|| anyhow!("the list ended before plan {target}"))?;
    let mut first = Vec::new();
    let mut deep_lat = Vec::new();
    let (mut first_bytes, mut deep_bytes, mut items) = (0, 0, 0);
    let first_page = http.api().list_rollouts(&ListQuery::default());
    let deep_page = http.api().list_rollouts(&ListQuery {
        cursor: Some(deep),
        ..ListQuery::default()
    });
    for _ in 0..env.cfg.b3_fetches {
        let (a, a_elapsed) = http.timed(&first_page)?;
        let (b, b_elapsed) = http.timed(&deep_page)?;
        first.push(a_elapsed);
        deep_lat.push(b_elapsed);
        first_bytes = a.body().len();
        deep_bytes = b.body().len();
        items = b.value()?.items.len();
    }
    let peak = cp.peak_rss_kib();
    env.stop(cp)?;
    let first = Latency::of(&first);
    let deep_l = Latency::of(&deep_lat);
    let report = B3Report {
        plans: ds.plans,
        page_items: items,
        deep_offset: fetched,
        walk_pages: pages,
        walk_seconds: round1(walk_seconds),
        walk_plans_per_sec: round1(fetched as f64 / walk_seconds.max(1e-9)),
        deep_to_first_p50: round3(deep_l.p50_ms / first.p50_ms.max(1e-9)),
        first_page: first,
        deep_page: deep_l,
        first_page_bytes: first_bytes,
        deep_page_bytes: deep_bytes,
        peak_rss_kib: peak,
    };
    eprintln!(
        "  first page {}; deep page (after {} plans) {}",
        report.first_page.short(),
        report.deep_offset,
        report.deep_page.short()
    );
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// B4
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    /// SIGTERM of the previous instance to its exit.
    pub shutdown_ms: f64,
    /// Spawn to the `listening on` line.
    pub listening_ms: f64,
    /// Spawn to the first 200 from /v1/ready.
    pub ready_ms: f64,
    pub peak_rss_kib: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct B4Report {
    pub plans: Option<u64>,
    pub audit_events: Option<u64>,
    pub restarts: Vec<Restart>,
    pub ready_ms_median: f64,
    pub ready_ms_max: f64,
    pub note: &'static str,
}

pub fn run_b4(env: &Env, ds: &Dataset) -> anyhow::Result<B4Report> {
    eprintln!("B4: restart to ready over {} plans", ds.plans);
    let mut cp = env.start(&ds.dir, "b4-0")?;
    let mut restarts = Vec::new();
    for r in 1..=env.cfg.b4_restarts.max(1) {
        let stopped = env.stop(cp)?;
        let log = env.log(&format!("b4-{r}"));
        let mut next = cp::spawn(&env.bin, &ds.dir, &log, env.start_limit())?;
        let ready = next
            .wait_ready("/v1/ready", env.start_limit())
            .context("waiting for /v1/ready")?;
        restarts.push(Restart {
            shutdown_ms: round3(stopped.shutdown_ms),
            listening_ms: round3(next.listening_after().as_secs_f64() * 1e3),
            ready_ms: round3(ready.as_secs_f64() * 1e3),
            peak_rss_kib: next.peak_rss_kib(),
        });
        eprintln!(
            "  restart {r}: shutdown {:.0} ms, ready {:.1} ms after spawn",
            stopped.shutdown_ms,
            ready.as_secs_f64() * 1e3
        );
        cp = next;
    }
    let log = cp.log().to_path_buf();
    env.stop(cp)?;
    let mut ready: Vec<f64> = restarts.iter().map(|r| r.ready_ms).collect();
    ready.sort_by(f64::total_cmp);
    Ok(B4Report {
        plans: cp::log_value(&log, "plans"),
        audit_events: cp::log_value(&log, "audit_last_seq"),
        ready_ms_median: ready[(ready.len() - 1) / 2],
        ready_ms_max: ready[ready.len() - 1],
        restarts,
        note: "warm page cache (the data set was just written or read); ready = spawn of \
               `autonomy serve` to the first 200 from /v1/ready, polled every 2 ms",
    })
}

// ---------------------------------------------------------------------------------------------
// B5
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct B5Report {
    pub audit_events: Option<u64>,
    pub event_type: &'static str,
    pub start_time: String,
    pub end_time: String,
    pub limit: usize,
    pub api: Latency,
    pub api_items_min: usize,
    pub api_items_max: usize,
    pub offline: Latency,
    pub offline_items: usize,
    /// The offline answer equals the API answer for the same query.
    pub offline_matches_api: bool,
    pub peak_rss_kib: Option<u64>,
    /// Peak RSS of the offline `autonomy audit query` process.
    pub offline_peak_rss_kib: Option<u64>,
}

pub fn run_b5(env: &Env, ds: &Dataset) -> anyhow::Result<B5Report> {
    let (start, end) = ds
        .audit_window()
        .ok_or_else(|| anyhow!("no seeding window for B5"))?;
    eprintln!(
        "B5: audit query (actor + event_type + time) over {} plans",
        ds.plans
    );
    let cp = env.start(&ds.dir, "b5")?;
    let http = Http::new(&cp.url, load::REQUEST_TIMEOUT)?;
    let event_type = "plan.created";
    let limit = "100";
    let query = |actor: &str| {
        http.timed(&http.api().audit_events(&AuditQuery {
            actor: Some(actor.to_string()),
            event_type: Some(event_type.to_string()),
            start_time: Some(start.clone()),
            end_time: Some(end.clone()),
            limit: Some(limit.to_string()),
            ..AuditQuery::default()
        }))
    };
    let reference_actor = load::operator(0, env.cfg.operators);
    let reference = query(&reference_actor)?.0.value()?;
    for e in &reference.items {
        if e.actor != reference_actor || e.event_type != event_type {
            bail!("the audit API answered an event that does not match the filter: {e:?}");
        }
    }
    let mut lat = Vec::new();
    let (mut min_items, mut max_items) = (usize::MAX, 0);
    for q in 0..env.cfg.b5_queries {
        let actor = load::operator(
            (q as u64 * 37) % env.cfg.operators as u64,
            env.cfg.operators,
        );
        let (a, elapsed) = query(&actor)?;
        lat.push(elapsed);
        let n = a.value()?.items.len();
        min_items = min_items.min(n);
        max_items = max_items.max(n);
    }
    let peak = cp.peak_rss_kib();
    env.stop(cp)?;

    // Offline, with the CP down.
    let audit_dir = ds.dir.join("audit");
    let mut offline = Vec::new();
    let mut offline_items = 0;
    let mut matches = true;
    let mut offline_peak = None;
    for _ in 0..env.cfg.b5_offline_runs.max(1) {
        let mut cmd = Command::new(&env.bin);
        cp::clean_env(&mut cmd);
        cmd.args(["audit", "query", "--audit-dir"])
            .arg(&audit_dir)
            .args(["--actor", &reference_actor, "--event-type", event_type])
            .args([
                "--start-time",
                &start,
                "--end-time",
                &end,
                "--limit",
                limit,
                "-o",
                "json",
            ]);
        let (elapsed, output, peak) = run_bounded(cmd, Duration::from_secs(600))?;
        if !output.status.success() {
            bail!(
                "autonomy audit query failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        offline.push(elapsed);
        offline_peak = peak.or(offline_peak);
        let list: AuditEventList = serde_json::from_slice(&output.stdout)
            .context("autonomy audit query -o json printed something else")?;
        offline_items = list.items.len();
        matches &= list.items == reference.items;
    }
    let report = B5Report {
        audit_events: cp::log_value(&env.log("b5"), "audit_last_seq"),
        event_type,
        start_time: start,
        end_time: end,
        limit: 100,
        api: Latency::of(&lat),
        api_items_min: if lat.is_empty() { 0 } else { min_items },
        api_items_max: max_items,
        offline: Latency::of(&offline),
        offline_items,
        offline_matches_api: matches,
        peak_rss_kib: peak,
        offline_peak_rss_kib: offline_peak,
    };
    eprintln!(
        "  API {} ({}..{} items); offline {} ({} items)",
        report.api.short(),
        report.api_items_min,
        report.api_items_max,
        report.offline.short(),
        report.offline_items
    );
    Ok(report)
}

/// Runs `cmd` to completion within `limit` (killed after it, an error); returns wall time,
/// its output and the child's peak RSS (its last `VmHWM` sample, polled every 5 ms).
fn run_bounded(
    cmd: Command,
    limit: Duration,
) -> anyhow::Result<(Duration, std::process::Output, Option<u64>)> {
    let shown = format!("{cmd:?}");
    let mut peak = None;
    let finished = autonomy_testkit::process::run_bounded_sampling(
        cmd,
        None,
        limit,
        Duration::from_millis(5),
        |pid| {
            if let Some(v) = cp::proc_status_kib(pid, "VmHWM:") {
                peak = Some(v);
            }
        },
    )
    .context("cannot run the autonomy CLI")?;
    if finished.timed_out {
        bail!("{shown} did not finish within {limit:?}");
    }
    Ok((finished.elapsed, finished.output, peak))
}

// ---------------------------------------------------------------------------------------------
// B6
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct B6Report {
    pub id: String,
    pub runs: usize,
    pub cli: Latency,
    pub curl: Option<Latency>,
    /// cli p50 ÷ curl p50.
    pub cli_to_curl_p50: Option<f64>,
    pub cli_command: String,
    pub curl_command: String,
    pub peak_rss_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

pub fn run_b6(env: &Env, ds: &Dataset) -> anyhow::Result<B6Report> {
    let id = ds
        .sample_id
        .clone()
        .ok_or_else(|| anyhow!("no plan to get for B6"))?;
    eprintln!(
        "B6: `autonomy rollout get` vs curl, {} runs each",
        env.cfg.b6_runs
    );
    let cp = env.start(&ds.dir, "b6")?;
    let url = format!("{}/v1/rollouts/{id}", cp.url);
    let cli = || {
        let mut cmd = Command::new(&env.bin);
        cp::clean_env(&mut cmd);
        cmd.args(["--server", &cp.url, "rollout", "get", &id]);
        cmd
    };
    let curl = || {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "30",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ]);
        cmd
    };
    let curl_ok = Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let time = |mut cmd: Command, want_stdout: Option<&str>| -> anyhow::Result<Duration> {
        cmd.stdin(Stdio::null());
        let t = Instant::now();
        let out = cmd
            .output()
            .with_context(|| format!("cannot run {cmd:?}"))?;
        let elapsed = t.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || want_stdout.is_some_and(|w| stdout.trim() != w) {
            bail!(
                "{cmd:?} failed ({}): {}{}",
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(elapsed)
    };
    // Warm up both (page cache, the CP's connection handling).
    for _ in 0..2 {
        time(cli(), None)?;
        if curl_ok {
            time(curl(), Some("200"))?;
        }
    }
    let mut cli_lat = Vec::new();
    let mut curl_lat = Vec::new();
    for _ in 0..env.cfg.b6_runs.max(1) {
        cli_lat.push(time(cli(), None)?);
        if curl_ok {
            curl_lat.push(time(curl(), Some("200"))?);
        }
    }
    let peak = cp.peak_rss_kib();
    env.stop(cp)?;
    let cli_l = Latency::of(&cli_lat);
    let curl_l = curl_ok.then(|| Latency::of(&curl_lat));
    let report = B6Report {
        id: id.clone(),
        runs: cli_lat.len(),
        cli_to_curl_p50: curl_l
            .as_ref()
            .map(|c| round3(cli_l.p50_ms / c.p50_ms.max(1e-9))),
        cli: cli_l,
        curl: curl_l,
        cli_command: format!("autonomy --server URL rollout get {id}"),
        curl_command: format!("curl -sS -o /dev/null -w '%{{http_code}}' URL/v1/rollouts/{id}"),
        peak_rss_kib: peak,
        note: (!curl_ok).then(|| "curl is not installed: no comparison".to_string()),
    };
    eprintln!(
        "  CLI {}; curl {}",
        report.cli.short(),
        report
            .curl
            .as_ref()
            .map(|c| c.short())
            .unwrap_or_else(|| "n/a".into())
    );
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// B7
// ---------------------------------------------------------------------------------------------

/// The operator B7 creates as (role operator, token made with the admin token).
const B7_OPERATOR: &str = "bench-operator";
/// Longest B7's store probe (a count-bounded flood) may run.
const B7_PROBE_LIMIT: Duration = Duration::from_secs(120);
/// The store-growth target of issue 14: 200 refused requests grow the data dir by less than
/// this.
pub const B7_STORE_LIMIT_PER_200: f64 = 2.0 * 1024.0 * 1024.0;

/// B7's quiet or flooded windows (every round's, summed): the operator's closed loop, and the
/// flood beside it if any.
#[derive(Debug, Clone, Serialize)]
pub struct B7Window {
    /// The operator's durable creates (`POST /v1/rollouts` with an operator token).
    #[serde(flatten)]
    pub run: LoopReport,
    /// First snapshot to last (warm-up and the flood's start and end included).
    pub wall_seconds: f64,
    /// Apparent bytes of every file under the data dir (database, WAL, audit segments), last
    /// snapshot minus first: the operator's creates and whatever the flood wrote.
    pub data_dir_growth_bytes: i64,
    /// Growth of the CP's log file.
    pub cp_log_growth_bytes: i64,
    /// `autonomy_auth_denied_total` delta (`/metrics`).
    pub auth_denied_counted: Option<u64>,
    pub cp_cpu_seconds: Option<f64>,
    /// `cp_cpu_seconds` ÷ `wall_seconds`.
    pub cp_cpus_used: Option<f64>,
    /// The whole bench process: the operator's client and, when flooded, the flood generator.
    pub bench_cpu_seconds: Option<f64>,
    pub bench_cpus_used: Option<f64>,
    /// Share of the window in which some task on the machine waited for the disk
    /// (`/proc/pressure/io`): other work on the machine shows up here.
    pub io_pressure_some: Option<f64>,
    /// The same for the CPUs (`/proc/pressure/cpu`).
    pub cpu_pressure_some: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flood: Option<FloodReport>,
}

/// B7's store probe: the flood alone, bounded by a count, nothing else writing.
#[derive(Debug, Clone, Serialize)]
pub struct B7Probe {
    pub flood: FloodReport,
    /// The data dir's size stayed the same for 300 ms before the probe (at most 5 s of
    /// waiting): the operator's earlier creates were no longer being checkpointed.
    pub settled_before: bool,
    pub data_dir_growth_bytes: i64,
    pub cp_log_growth_bytes: i64,
    pub auth_denied_counted: Option<u64>,
    /// `data_dir_growth_bytes` ÷ refused requests (400 + 401).
    pub bytes_per_refused_request: f64,
    /// The same for 200 refused requests (issue 14's target: < 2 MiB).
    pub bytes_per_200_refused: f64,
    pub cp_cpu_seconds: Option<f64>,
    /// CP CPU per refused request, ms (CPU time is read in 10 ms ticks: rough for a short
    /// probe).
    pub cp_cpu_ms_per_refused_request: Option<f64>,
}

/// One round of B7 on its own, to show how steady the pooled numbers are.
#[derive(Debug, Clone, Serialize)]
pub struct B7Round {
    pub quiet_p50_ms: f64,
    pub quiet_p99_ms: f64,
    pub flooded_p50_ms: f64,
    pub flooded_p99_ms: f64,
    pub flood_refused_per_sec: f64,
    pub quiet_io_pressure_some: Option<f64>,
    pub flooded_io_pressure_some: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct B7Report {
    /// CPUs of the machine, shared by the CP, the operator's client and the flood generator.
    pub cpus: usize,
    pub operator: &'static str,
    pub operator_concurrency: usize,
    pub flood_connections: usize,
    /// Quiet and flooded windows alternate this many times; each condition's samples are
    /// pooled.
    pub rounds: usize,
    pub per_round: Vec<B7Round>,
    pub quiet: B7Window,
    pub store_probe: B7Probe,
    pub flooded: B7Window,
    /// flooded p50 ÷ quiet p50.
    pub p50_ratio: Option<f64>,
    /// flooded p99 ÷ quiet p99 (issue 14's target: ≤ 2).
    pub p99_ratio: Option<f64>,
    pub peak_rss_kib: Option<u64>,
    pub note: String,
    pub method: &'static str,
}

/// What B7 reads before and after each window.
struct B7Snap {
    at: Instant,
    dir: u64,
    log: u64,
    denied: Option<f64>,
    cp_cpu: Option<f64>,
    self_cpu: Option<f64>,
    io_stall_us: Option<u64>,
    cpu_stall_us: Option<u64>,
}

/// `total=` of the `some` line of `/proc/pressure/<what>` (µs some task stalled), if the
/// kernel has PSI.
fn pressure_some_us(what: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/pressure/{what}")).ok()?;
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

impl B7Snap {
    fn take(cp: &Cp, http: &Http) -> anyhow::Result<B7Snap> {
        let metrics = http
            .call(&http.api().get::<()>("/metrics", &[]))?
            .text()
            .into_owned();
        Ok(B7Snap {
            at: Instant::now(),
            dir: dir_bytes(cp.data_dir()),
            log: std::fs::metadata(cp.log()).map(|m| m.len()).unwrap_or(0),
            denied: metric(&metrics, "autonomy_auth_denied_total"),
            cp_cpu: cp.cpu_seconds(),
            self_cpu: cp::cpu_seconds(Path::new("/proc/self/stat")),
            io_stall_us: pressure_some_us("io"),
            cpu_stall_us: pressure_some_us("cpu"),
        })
    }
}

/// What changed between two snapshots (or over several windows, summed).
#[derive(Default)]
struct B7Delta {
    wall: f64,
    dir: i64,
    log: i64,
    denied: Option<u64>,
    cp_cpu: Option<f64>,
    self_cpu: Option<f64>,
    io_stall: Option<f64>,
    cpu_stall: Option<f64>,
}

impl B7Delta {
    fn of(a: &B7Snap, b: &B7Snap) -> B7Delta {
        let cpu = |x: Option<f64>, y: Option<f64>| x.zip(y).map(|(x, y)| (y - x).max(0.0));
        let stall = |x: Option<u64>, y: Option<u64>| {
            x.zip(y).map(|(x, y)| y.saturating_sub(x) as f64 / 1e6)
        };
        B7Delta {
            wall: (b.at - a.at).as_secs_f64(),
            dir: b.dir as i64 - a.dir as i64,
            log: b.log as i64 - a.log as i64,
            denied: a.denied.zip(b.denied).map(|(x, y)| (y - x).max(0.0) as u64),
            cp_cpu: cpu(a.cp_cpu, b.cp_cpu),
            self_cpu: cpu(a.self_cpu, b.self_cpu),
            io_stall: stall(a.io_stall_us, b.io_stall_us),
            cpu_stall: stall(a.cpu_stall_us, b.cpu_stall_us),
        }
    }

    /// Share of the wall time some task waited for the disk.
    fn io_pressure(&self) -> Option<f64> {
        self.io_stall.map(|s| round3(s / self.wall.max(1e-9)))
    }

    fn sum(parts: Vec<B7Delta>) -> B7Delta {
        let add_f = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a + b);
        let mut out = B7Delta {
            denied: Some(0),
            cp_cpu: Some(0.0),
            self_cpu: Some(0.0),
            io_stall: Some(0.0),
            cpu_stall: Some(0.0),
            ..B7Delta::default()
        };
        for p in parts {
            out.wall += p.wall;
            out.dir += p.dir;
            out.log += p.log;
            out.denied = out.denied.zip(p.denied).map(|(a, b)| a + b);
            out.cp_cpu = add_f(out.cp_cpu, p.cp_cpu);
            out.self_cpu = add_f(out.self_cpu, p.self_cpu);
            out.io_stall = add_f(out.io_stall, p.io_stall);
            out.cpu_stall = add_f(out.cpu_stall, p.cpu_stall);
        }
        out
    }

    fn window(self, run: LoopReport, flood: Option<FloodReport>) -> B7Window {
        let wall = self.wall.max(1e-9);
        let per_wall = |v: Option<f64>| v.map(|v| round3(v / wall));
        B7Window {
            run,
            wall_seconds: round3(self.wall),
            data_dir_growth_bytes: self.dir,
            cp_log_growth_bytes: self.log,
            auth_denied_counted: self.denied,
            cp_cpus_used: per_wall(self.cp_cpu),
            cp_cpu_seconds: self.cp_cpu.map(round3),
            bench_cpus_used: per_wall(self.self_cpu),
            bench_cpu_seconds: self.self_cpu.map(round3),
            io_pressure_some: per_wall(self.io_stall),
            cpu_pressure_some: per_wall(self.cpu_stall),
            flood,
        }
    }
}

/// Apparent bytes of every file under `dir` (files that vanish while it walks count 0).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Waits (at most 5 s) until the size of `dir` stays the same for 300 ms; says whether it did.
fn settle(dir: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = dir_bytes(dir);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        let now = dir_bytes(dir);
        if now == last {
            return true;
        }
        last = now;
    }
    false
}

fn ratio(flooded: &Latency, quiet: &Latency, pick: fn(&Latency) -> f64) -> Option<f64> {
    (flooded.samples > 0 && quiet.samples > 0 && pick(quiet) > 0.0)
        .then(|| round3(pick(flooded) / pick(quiet)))
}

pub fn run_b7(env: &Env) -> anyhow::Result<B7Report> {
    let cfg = &env.cfg;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (c, f, rounds) = (
        cfg.b7_concurrency,
        cfg.b7_flood_connections,
        cfg.b7_rounds.max(1),
    );
    let warmup = Duration::from_secs_f64(cfg.b7_warmup_seconds);
    let window = Duration::from_secs_f64(cfg.b7_seconds / rounds as f64);
    eprintln!(
        "B7: operator creates at concurrency {c} (RBAC on), {} s quiet and {} s under a flood \
         of {f} unauthenticated connections, alternating over {rounds} round(s) (+{} s warm-up per \
         window); {cpus} CPUs shared",
        cfg.b7_seconds, cfg.b7_seconds, cfg.b7_warmup_seconds
    );
    let cp = env.start_rbac(&env.work.join("b7"), "b7")?;
    let admin: Token = cp
        .admin_token()
        .context("reading the admin token")?
        .parse()
        .map_err(|e: String| anyhow!("the admin token: {e}"))?;
    let admin = Http::new(&cp.url, load::REQUEST_TIMEOUT)?.with_token(Some(admin));
    let created = admin
        .call(&admin.api().create_token(&CreateTokenRequest {
            operator: B7_OPERATOR.into(),
            role: Role::Operator,
        }))?
        .value()?;
    let token: Token = created
        .token
        .parse()
        .map_err(|e: String| anyhow!("the operator token: {e}"))?;

    let mut quiet_runs = Vec::new();
    let mut quiet_deltas = Vec::new();
    let mut flooded_runs = Vec::new();
    let mut flooded_deltas = Vec::new();
    let mut floods = Vec::new();
    let mut store_probe = None;
    let mut per_round = Vec::new();
    for round in 1..=rounds {
        // Quiet: the operator alone.
        let s0 = B7Snap::take(&cp, &admin)?;
        let quiet = load::closed_loop(
            &[&cp.url],
            &format!("b7-quiet-{round}"),
            c,
            warmup,
            window,
            cfg.operators,
            Some(&token),
        )?;
        let s1 = B7Snap::take(&cp, &admin)?;
        if quiet.creates == 0 {
            bail!(
                "B7: no create succeeded in quiet window {round} ({} errors: {:?})",
                quiet.errors,
                quiet.first_errors
            );
        }
        eprintln!(
            "  round {round} quiet: {:.0} creates/s, {}",
            quiet.creates_per_sec,
            quiet.latency.short()
        );
        quiet_runs.push(quiet);
        quiet_deltas.push(B7Delta::of(&s0, &s1));

        if store_probe.is_none() {
            // The store probe: the flood alone, a fixed count of requests, once the CP's
            // background checkpoints of the operator's creates have settled.
            let settled = settle(cp.data_dir());
            let s1 = B7Snap::take(&cp, &admin)?;
            let spec = FloodSpec::new(&cp.url, f, cfg.b7_probe_requests, B7_PROBE_LIMIT)?;
            let probe = flood::run(&spec, &AtomicBool::new(false));
            let s2 = B7Snap::take(&cp, &admin)?;
            if probe.refused() == 0 {
                bail!(
                    "B7: the flood got no 400 or 401 ({} answers, statuses {:?}, errors {:?})",
                    probe.answered,
                    probe.other_statuses,
                    probe.first_errors
                );
            }
            let d = B7Delta::of(&s1, &s2);
            let per_request = d.dir as f64 / probe.refused() as f64;
            eprintln!(
                "  store probe: {} refused requests grew the data dir by {} B",
                probe.refused(),
                d.dir
            );
            store_probe = Some(B7Probe {
                settled_before: settled,
                data_dir_growth_bytes: d.dir,
                cp_log_growth_bytes: d.log,
                auth_denied_counted: d.denied,
                bytes_per_refused_request: round1(per_request),
                bytes_per_200_refused: round1(per_request * 200.0),
                cp_cpu_seconds: d.cp_cpu.map(round3),
                cp_cpu_ms_per_refused_request: d
                    .cp_cpu
                    .map(|s| round3(s * 1e3 / probe.refused() as f64)),
                flood: probe,
            });
        }

        // Flooded: the operator again while the flood runs (it starts first, stops after).
        let stop = AtomicBool::new(false);
        let spec = FloodSpec::new(
            &cp.url,
            f,
            cfg.b7_flood_max_requests,
            warmup + window + Duration::from_secs(30),
        )?;
        let s3 = B7Snap::take(&cp, &admin)?;
        let (flooded, flood) = std::thread::scope(|s| {
            let flood = s.spawn(|| flood::run(&spec, &stop));
            let flooded = load::closed_loop(
                &[&cp.url],
                &format!("b7-flooded-{round}"),
                c,
                warmup,
                window,
                cfg.operators,
                Some(&token),
            );
            stop.store(true, Ordering::Relaxed);
            (flooded, flood.join())
        });
        let flood = flood.map_err(|_| anyhow!("B7: the flood generator panicked"))?;
        let flooded = flooded?;
        let s4 = B7Snap::take(&cp, &admin)?;
        if flood.refused() == 0 {
            bail!(
                "B7: the flood beside the operator got no 400 or 401 ({} answers, statuses \
                 {:?}, errors {:?})",
                flood.answered,
                flood.other_statuses,
                flood.first_errors
            );
        }
        if flood.ended_by != "stop" {
            eprintln!(
                "  warning: the flood ended by {} after {} s, before the operator's window did \
                 (raise --b7-flood-max-requests)",
                flood.ended_by, flood.seconds
            );
        }
        eprintln!(
            "  round {round} flooded: {:.0} creates/s, {} ({} errors); flood {:.0} refused/s",
            flooded.creates_per_sec,
            flooded.latency.short(),
            flooded.errors,
            flood.refused_per_sec
        );
        let delta = B7Delta::of(&s3, &s4);
        if let Some(quiet) = quiet_runs.last() {
            per_round.push(B7Round {
                quiet_p50_ms: quiet.latency.p50_ms,
                quiet_p99_ms: quiet.latency.p99_ms,
                flooded_p50_ms: flooded.latency.p50_ms,
                flooded_p99_ms: flooded.latency.p99_ms,
                flood_refused_per_sec: flood.refused_per_sec,
                quiet_io_pressure_some: quiet_deltas.last().and_then(B7Delta::io_pressure),
                flooded_io_pressure_some: delta.io_pressure(),
            });
        }
        flooded_runs.push(flooded);
        flooded_deltas.push(delta);
        floods.push(flood);
    }
    let peak = cp.peak_rss_kib();
    env.stop(cp)?;
    let store_probe = store_probe.ok_or_else(|| anyhow!("B7 ran no round"))?;
    let quiet = B7Delta::sum(quiet_deltas).window(LoopReport::merge(quiet_runs), None);
    let flooded = B7Delta::sum(flooded_deltas).window(
        LoopReport::merge(flooded_runs),
        Some(FloodReport::merge(floods)),
    );
    let report = B7Report {
        cpus,
        operator: B7_OPERATOR,
        operator_concurrency: c,
        flood_connections: f,
        rounds,
        per_round,
        p50_ratio: ratio(&flooded.run.latency, &quiet.run.latency, |l| l.p50_ms),
        p99_ratio: ratio(&flooded.run.latency, &quiet.run.latency, |l| l.p99_ms),
        quiet,
        store_probe,
        flooded,
        peak_rss_kib: peak,
        note: format!(
            "{cpus} CPUs shared by the CP, the operator's client and the flood generator: the \
             generator's CPU (flood.generator_cpu_seconds) is taken from the CP; the disk and \
             CPUs may be shared with other work too (io_pressure_some, cpu_pressure_some: share \
             of each window in which some task on the machine stalled, from /proc/pressure)"
        ),
        method: "one CP with RBAC on; an operator-role token made with the admin token; the \
                 operator's durable creates in a closed loop, alone and then while raw \
                 keep-alive connections send pre-built requests without a valid token \
                 (alternately POST /v1/rollouts/<60,000 x a>/start with no token and \
                 POST /v1/rollouts/plan-N/start with a forged one), the two windows alternating \
                 over the rounds so that other load on the machine falls on both; samples are \
                 pooled per condition; after the first quiet window, once the data dir has settled, the same flood alone for a \
                 fixed count measures the data dir's growth with nothing else writing",
    };
    let fl = report.flooded.flood.as_ref();
    eprintln!(
        "  quiet {}; flooded {}; p99 {}x quiet; flood {} refused/s, generator {} CPUs, CP {} CPUs",
        report.quiet.run.latency.short(),
        report.flooded.run.latency.short(),
        opt_f(report.p99_ratio),
        fl.map_or(0.0, |f| f.refused_per_sec),
        opt_f(fl.and_then(|f| f.generator_cpus_used)),
        opt_f(report.flooded.cp_cpus_used),
    );
    Ok(report)
}

fn opt_f(v: Option<f64>) -> String {
    v.map_or("?".into(), |v| v.to_string())
}

/// The phases a run can select.
pub const PHASES: [&str; 17] = [
    "limit", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "e1", "e2", "e3", "e4", "e5", "f1", "f2",
    "p1", "p2",
];

/// The wall clock in microseconds since the Unix epoch (to pick audit time windows).
fn wall_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

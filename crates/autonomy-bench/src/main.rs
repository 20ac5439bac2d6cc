//! `autonomy-bench`: the benchmark suite of the AutonomyOps control plane (issue 6).
//!
//! It measures, in one run on one machine, what durability costs and how scans scale:
//!
//! - **L** the physical limit: raw SQLite (WAL, `synchronous=FULL`) on the same disk, single-row
//!   commits/s and rows/s in 64-row transactions;
//! - **B1** durable creates through the whole stack (`POST /v1/rollouts`: HTTP, JSON, store,
//!   audit) in a closed loop at concurrency 1, 8 and 64, with the ratio to both limits;
//! - **B2** the stuck scan over 100k plans of which 1% are stale;
//! - **B3** the first page of `GET /v1/rollouts` against a deep cursor page over 1M plans;
//! - **B4** restart to ready (SIGTERM, start, first 200 from `/v1/ready`) with 1M plans and 1M
//!   audit events;
//! - **B5** an audit query with actor, event type and time filters over those 1M events, through
//!   the API and offline (`autonomy audit query --audit-dir`);
//! - **B6** the CLI round trip (`autonomy rollout get`, process start to exit) beside curl;
//! - **B7** an operator's durable create latency (RBAC on, operator token) quiet and then
//!   while raw keep-alive connections flood the CP with requests without a valid token
//!   (issue 14): p50/p99 side by side, the flood's rate, the data dir's growth per refused
//!   request (the flood alone, a fixed count), and the flood generator's CPU next to the CP's;
//! - **E1–E5** the rollout engine (issue 10, `engine.rs`): idle device long polls per second
//!   (E1); durable device reports per second at concurrency 256 next to the single-row commit
//!   limit (E2); the promoter tick (E3) and the stuck scan (E4) over 100k devices in 100 engine
//!   plans; the last report of a stage to the next stage's dispatch (E5);
//! - **F1–F2** fleets (`fleet.rs`, `f2.rs`): simulated devices through a 4-stage rollout
//!   (F1, issue 11); 100,000 registered devices long-polling on their own connections while a
//!   4-stage rollout runs over 10,000 of them: probe poll latency, long-poll overshoot, report
//!   latency, CP CPU and RSS per held connection, the generator's beside them (F2, issue 13);
//! - **P1–P2** PostgreSQL (issue 12, `postgres.rs`, on a throwaway cluster the bench starts
//!   with `scripts/ci/postgres.sh` and removes): durable creates at concurrency 64 (and 32)
//!   against one and three replicas beside the SQLite CP and PostgreSQL's own single-row
//!   commit limit (P1); SIGKILL of the leader of three replicas → the new leader's first
//!   promoter write, over 20 kills (P2);
//! - the CP's peak RSS in each.
//!
//! It runs the real `autonomy serve` (`--autonomy-bin`) on 127.0.0.1 port 0 with
//! `AUTONOMY_RBAC_ENFORCEMENT=0` (`=1` in B7), talks plain HTTP to it, and stops every CP it
//! started. Every
//! loop is bounded by a count or a duration. It writes a JSON report with the machine facts,
//! every number and each of the issue's targets with `met`, plus `summary.txt`, and prints the
//! summary. It asserts nothing about timings: it fails only when the bench itself cannot run.
//! `--smoke` runs everything at tiny sizes in about a minute (CI).

mod cp;
mod engine;
mod f2;
mod fleet;
mod flood;
mod http;
mod limit;
mod load;
mod machine;
mod postgres;
mod raw;
mod report;
mod stats;
mod suite;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::builder::PossibleValuesParser;
use clap::Parser;

use crate::report::{Report, Results};
use crate::suite::{Config, Dataset, Env, PHASES};

/// Benchmark the AutonomyOps control plane: durable throughput and scan cost against the
/// physical limit (issue 6).
///
/// Full run (minutes; seeds 1M plans over HTTP):   autonomy-bench
/// Smoke run (tiny sizes, about a minute):         autonomy-bench --smoke
/// One phase at other sizes:                       autonomy-bench --phases b1 --b1-seconds 30
/// Operator latency under a flood (issue 14):      autonomy-bench --phases b7
/// The rollout engine (issue 10):                  autonomy-bench --phases limit,e1,e2,e3,e4,e5
/// PostgreSQL and replicas (issue 12, as root):    autonomy-bench --phases limit,p1,p2
/// 100k long-polling devices (issue 13, as root):   autonomy-bench --phases limit,f2
///
/// Writes <out> (JSON: machine, every number, each target with met) and summary.txt next to
/// it, and prints the summary. Exit 0 when the bench ran, whatever the numbers; 1 when it could
/// not run (the report then says where it stopped).
#[derive(Debug, Parser)]
#[command(
    name = "autonomy-bench",
    version,
    verbatim_doc_comment,
    args_override_self = true
)]
struct Args {
    /// The `autonomy` binary under test (build it with `cargo build --release -p autonomy`).
    #[arg(long, default_value = "target/release/autonomy", value_name = "PATH")]
    autonomy_bin: PathBuf,

    /// The JSON report [default: bench-results/<UTC timestamp>/report.json].
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,

    /// Where the data sets go; its disk is the disk under test (L runs there too). A fresh
    /// subdirectory is made inside and removed after a successful run [default: next to the
    /// report].
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,

    /// Keep the data sets after the run.
    #[arg(long)]
    keep_data: bool,

    /// Tiny sizes (2000 plans, 2 s per B1 level, …): checks the bench works, in about a
    /// minute. Explicit size flags still win.
    #[arg(long)]
    smoke: bool,

    /// Phases to run, comma-separated [default: all]. B3–B6 share one data set (built by B2's
    /// seeding when b2 runs); B7 has its own CP, with RBAC on.
    #[arg(long, value_delimiter = ',', value_parser = PossibleValuesParser::new(PHASES))]
    phases: Vec<String>,

    /// L: seconds for each raw SQLite measurement [full 5, smoke 1].
    #[arg(long, value_name = "S")]
    limit_seconds: Option<f64>,

    /// B1: concurrency levels, comma-separated [default: 1,8,32,64].
    #[arg(long, value_delimiter = ',', value_name = "N,…")]
    b1_concurrency: Vec<usize>,

    /// B1: measured seconds per level [full 10, smoke 2].
    #[arg(long, value_name = "S")]
    b1_seconds: Option<f64>,

    /// B1: warm-up seconds per level, not counted [full 2, smoke 0.5].
    #[arg(long, value_name = "S")]
    b1_warmup_seconds: Option<f64>,

    /// B2: plans in the stuck-scan data set [full 100000, smoke 2000].
    #[arg(long, value_name = "N")]
    b2_plans: Option<u64>,

    /// B2: percent of them that are stale [default 1].
    #[arg(long, value_name = "PCT")]
    b2_stale_percent: Option<f64>,

    /// B2: seconds between creating the stale and the fresh plans; scans run for at most 40% of
    /// it (so the threshold stays between the two) [full 20, smoke 2].
    #[arg(long, value_name = "S")]
    b2_gap_seconds: Option<f64>,

    /// B2: scans to time [full 200, smoke 20].
    #[arg(long, value_name = "N")]
    b2_scans: Option<usize>,

    /// B3–B6: plans (and so audit events) in the data set [full 1000000, smoke 2000].
    #[arg(long, value_name = "N")]
    plans: Option<u64>,

    /// B3: fetches of each page to time [full 200, smoke 20].
    #[arg(long, value_name = "N")]
    b3_fetches: Option<usize>,

    /// B4: restarts to time [full 3, smoke 2].
    #[arg(long, value_name = "N")]
    b4_restarts: Option<usize>,

    /// B5: API queries to time [full 200, smoke 20].
    #[arg(long, value_name = "N")]
    b5_queries: Option<usize>,

    /// B5: offline `autonomy audit query` runs to time [full 5, smoke 2].
    #[arg(long, value_name = "N")]
    b5_offline_runs: Option<usize>,

    /// B6: runs of each command to time [full 50, smoke 5].
    #[arg(long, value_name = "N")]
    b6_runs: Option<usize>,

    /// B7: measured seconds of the operator alone, and again under the flood, over all rounds
    /// [full 20, smoke 2].
    #[arg(long, value_name = "S")]
    b7_seconds: Option<f64>,

    /// B7: rounds of a quiet then a flooded window, so other load on the machine falls on
    /// both [full 4, smoke 2].
    #[arg(long, value_name = "N")]
    b7_rounds: Option<usize>,

    /// B7: warm-up seconds before each window, not counted (the flood starts with it)
    /// [full 1, smoke 0.5].
    #[arg(long, value_name = "S")]
    b7_warmup_seconds: Option<f64>,

    /// B7: the operator's concurrency (closed loop) [default 1].
    #[arg(long, value_name = "N")]
    b7_concurrency: Option<usize>,

    /// B7: flood connections, one thread each [full 16, smoke 4].
    #[arg(long, value_name = "N")]
    b7_flood_connections: Option<usize>,

    /// B7: requests the flood beside the operator sends at most (it also stops when the
    /// operator's window ends) [full 20000000, smoke 2000000].
    #[arg(long, value_name = "N")]
    b7_flood_max_requests: Option<u64>,

    /// B7: requests of the store probe (the flood alone, for the data dir's growth)
    /// [full 2000, smoke 200].
    #[arg(long, value_name = "N")]
    b7_probe_requests: Option<u64>,

    /// E1: devices polling (registered once for E1 and E2) [full 10000, smoke 500].
    #[arg(long, value_name = "N")]
    e1_devices: Option<u64>,

    /// E1: poll connections, one thread each [full 128, smoke 64].
    #[arg(long, value_name = "N")]
    e1_connections: Option<usize>,

    /// E1: measured seconds [full 10, smoke 2].
    #[arg(long, value_name = "S")]
    e1_seconds: Option<f64>,

    /// E1: warm-up seconds, not counted [full 2, smoke 0.5].
    #[arg(long, value_name = "S")]
    e1_warmup_seconds: Option<f64>,

    /// E2: devices in the plan, five reports each [full 20000, smoke 1000].
    #[arg(long, value_name = "N")]
    e2_devices: Option<u64>,

    /// E2: concurrent reporters [default 256].
    #[arg(long, value_name = "N")]
    e2_concurrency: Option<usize>,

    /// E2: longest the reports run (they also end when every device is verified)
    /// [full 15, smoke 2].
    #[arg(long, value_name = "S")]
    e2_seconds: Option<f64>,

    /// E3/E4: devices in the fleet [full 100000, smoke 2000].
    #[arg(long, value_name = "N")]
    e3_devices: Option<u64>,

    /// E3/E4: engine plans the fleet is split over [full 100, smoke 10].
    #[arg(long, value_name = "N")]
    e3_plans: Option<u64>,

    /// E3: promoter ticks to time [full 200, smoke 20].
    #[arg(long, value_name = "N")]
    e3_ticks: Option<usize>,

    /// E4: stuck scans to time [full 200, smoke 20].
    #[arg(long, value_name = "N")]
    e4_scans: Option<usize>,

    /// E5: plans, run one after the other [full 3, smoke 1].
    #[arg(long, value_name = "N")]
    e5_plans: Option<usize>,

    /// E5: one-device stages per plan (each plan gives stages - 1 samples) [full 21, smoke 6].
    #[arg(long, value_name = "N")]
    e5_stages: Option<usize>,

    /// F1: simulated devices through a 4-stage rollout (issue 11) [full 10000, smoke 200].
    #[arg(long, value_name = "N")]
    f1_devices: Option<u64>,

    /// F2: registered devices, each long-polling on its own connection (issue 13)
    /// [full 100000, smoke 2000].
    #[arg(long, value_name = "N")]
    f2_devices: Option<u64>,

    /// F2: devices of the 4-stage plan, among --f2-devices [full 10000, smoke 200].
    #[arg(long, value_name = "N")]
    f2_rollout_devices: Option<u64>,

    /// F2: devices holding a long poll on their own connection, the others polling with
    /// wait_seconds 0 once per wait [default all, or as many as the open-file limit allows].
    #[arg(long, value_name = "N")]
    f2_held: Option<u64>,

    /// F2: the long polls' wait_seconds, also the ramp over which the devices connect
    /// [full 30, smoke 5].
    #[arg(long, value_name = "S")]
    f2_wait_seconds: Option<u32>,

    /// F2: probe polls (wait_seconds 0) per second [default 50].
    #[arg(long, value_name = "N")]
    f2_probe_rate: Option<f64>,

    /// P1: concurrency levels of PostgreSQL's limit and of the creates against the SQLite CP,
    /// one replica and three replicas, comma-separated [full 32,64, smoke 64]. Each run lasts
    /// --b1-seconds (+ --b1-warmup-seconds), the limit --limit-seconds.
    #[arg(long, value_delimiter = ',', value_name = "N,…")]
    p1_concurrency: Vec<usize>,

    /// P2: SIGKILLs of the leader of three replicas [full 20, smoke 2].
    #[arg(long, value_name = "N")]
    p2_kills: Option<usize>,

    /// P2: engine plans per second the driver creates and starts, to keep the promoter
    /// writing [default 10].
    #[arg(long, value_name = "N")]
    p2_rate: Option<f64>,

    /// P2: the replicas' --promoter-interval, seconds [default 0.1].
    #[arg(long, value_name = "S")]
    p2_promoter_interval: Option<f64>,

    /// P1/P2: the script that starts and removes the throwaway PostgreSQL cluster (it needs
    /// root: it runs the cluster as the postgres user).
    #[arg(long, value_name = "PATH", default_value = "scripts/ci/postgres.sh")]
    postgres_script: PathBuf,

    /// Concurrency of the seeding that builds the data sets [default 64].
    #[arg(long, value_name = "N")]
    seed_concurrency: Option<usize>,

    /// Distinct operators (X-Autonomy-Operator) the creates are spread over [default 100].
    #[arg(long, value_name = "N")]
    operators: Option<usize>,

    /// Longest a CP may take to start (print its address, answer health or ready) [600].
    #[arg(long, value_name = "S", default_value_t = 600.0)]
    start_timeout_seconds: f64,

    /// Longest a CP may take to exit after SIGTERM before it is killed [120].
    #[arg(long, value_name = "S", default_value_t = 120.0)]
    stop_timeout_seconds: f64,
}

impl Args {
    fn config(&self) -> anyhow::Result<Config> {
        let smoke = self.smoke;
        let pick =
            |v: Option<f64>, full: f64, small: f64| v.unwrap_or(if smoke { small } else { full });
        let pick_u =
            |v: Option<u64>, full: u64, small: u64| v.unwrap_or(if smoke { small } else { full });
        let pick_n = |v: Option<usize>, full: usize, small: usize| {
            v.unwrap_or(if smoke { small } else { full })
        };
        let cfg = Config {
            mode: if smoke { "smoke" } else { "full" },
            limit_seconds: pick(self.limit_seconds, 5.0, 1.0),
            b1_levels: if self.b1_concurrency.is_empty() {
                vec![1, 8, 32, 64]
            } else {
                self.b1_concurrency.clone()
            },
            b1_warmup_seconds: pick(self.b1_warmup_seconds, 2.0, 0.5),
            b1_seconds: pick(self.b1_seconds, 10.0, 2.0),
            b2_plans: pick_u(self.b2_plans, 100_000, 2_000),
            b2_stale_percent: self.b2_stale_percent.unwrap_or(1.0),
            b2_gap_seconds: pick(self.b2_gap_seconds, 20.0, 2.0),
            b2_scans: pick_n(self.b2_scans, 200, 20),
            plans: pick_u(self.plans, 1_000_000, 2_000),
            b3_fetches: pick_n(self.b3_fetches, 200, 20),
            b4_restarts: pick_n(self.b4_restarts, 3, 2),
            b5_queries: pick_n(self.b5_queries, 200, 20),
            b5_offline_runs: pick_n(self.b5_offline_runs, 5, 2),
            b6_runs: pick_n(self.b6_runs, 50, 5),
            b7_warmup_seconds: pick(self.b7_warmup_seconds, 1.0, 0.5),
            b7_rounds: pick_n(self.b7_rounds, 4, 2),
            b7_seconds: pick(self.b7_seconds, 20.0, 2.0),
            b7_concurrency: self.b7_concurrency.unwrap_or(1),
            b7_flood_connections: pick_n(self.b7_flood_connections, 16, 4),
            b7_flood_max_requests: pick_u(self.b7_flood_max_requests, 20_000_000, 2_000_000),
            b7_probe_requests: pick_u(self.b7_probe_requests, 2_000, 200),
            e1_devices: pick_u(self.e1_devices, 10_000, 500),
            e1_connections: pick_n(self.e1_connections, 128, 64),
            e1_warmup_seconds: pick(self.e1_warmup_seconds, 2.0, 0.5),
            e1_seconds: pick(self.e1_seconds, 10.0, 2.0),
            e2_devices: pick_u(self.e2_devices, 20_000, 1_000),
            e2_concurrency: self.e2_concurrency.unwrap_or(256),
            e2_seconds: pick(self.e2_seconds, 15.0, 2.0),
            e3_devices: pick_u(self.e3_devices, 100_000, 2_000),
            e3_plans: pick_u(self.e3_plans, 100, 10),
            e3_ticks: pick_n(self.e3_ticks, 200, 20),
            e4_scans: pick_n(self.e4_scans, 200, 20),
            e5_plans: pick_n(self.e5_plans, 3, 1),
            e5_stages: pick_n(self.e5_stages, 21, 6),
            f1_devices: self
                .f1_devices
                .unwrap_or(if self.smoke { 200 } else { 10_000 }),
            f2_devices: pick_u(self.f2_devices, 100_000, 2_000),
            f2_rollout_devices: pick_u(self.f2_rollout_devices, 10_000, 200),
            f2_held: self.f2_held,
            f2_wait_seconds: self.f2_wait_seconds.unwrap_or(if smoke { 5 } else { 30 }),
            f2_probe_rate: self.f2_probe_rate.unwrap_or(50.0),
            p1_levels: if !self.p1_concurrency.is_empty() {
                self.p1_concurrency.clone()
            } else if smoke {
                vec![64]
            } else {
                vec![32, 64]
            },
            p2_kills: pick_n(self.p2_kills, 20, 2),
            p2_rate: self.p2_rate.unwrap_or(10.0),
            p2_promoter_interval: self.p2_promoter_interval.unwrap_or(0.1),
            postgres_script: absolute(&self.postgres_script)?,
            seed_concurrency: self.seed_concurrency.unwrap_or(64),
            operators: self.operators.unwrap_or(100),
            start_timeout_seconds: self.start_timeout_seconds,
            stop_timeout_seconds: self.stop_timeout_seconds,
            phases: if self.phases.is_empty() {
                PHASES.iter().map(|p| p.to_string()).collect()
            } else {
                self.phases.clone()
            },
        };
        let positive = [
            ("--limit-seconds", cfg.limit_seconds),
            ("--b1-seconds", cfg.b1_seconds),
            ("--b2-gap-seconds", cfg.b2_gap_seconds),
            ("--b7-seconds", cfg.b7_seconds),
            ("--e1-seconds", cfg.e1_seconds),
            ("--e2-seconds", cfg.e2_seconds),
            ("--start-timeout-seconds", cfg.start_timeout_seconds),
            ("--stop-timeout-seconds", cfg.stop_timeout_seconds),
        ];
        for (flag, v) in positive {
            if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
                bail!("{flag} must be more than 0 and at most 86400 seconds, got {v}");
            }
        }
        if !(cfg.b1_warmup_seconds.is_finite() && (0.0..=3600.0).contains(&cfg.b1_warmup_seconds)) {
            bail!("--b1-warmup-seconds must be 0 to 3600");
        }
        if !(cfg.b7_warmup_seconds.is_finite() && (0.0..=3600.0).contains(&cfg.b7_warmup_seconds)) {
            bail!("--b7-warmup-seconds must be 0 to 3600");
        }
        if !(cfg.e1_warmup_seconds.is_finite() && (0.0..=3600.0).contains(&cfg.e1_warmup_seconds)) {
            bail!("--e1-warmup-seconds must be 0 to 3600");
        }
        if !(1..=10_000_000).contains(&cfg.e1_devices)
            || !(1..=10_000_000).contains(&cfg.e2_devices)
        {
            bail!("--e1-devices and --e2-devices must be 1 to 10000000");
        }
        if cfg.e1_connections == 0 || cfg.e1_connections > 1024 {
            bail!("--e1-connections must be 1 to 1024");
        }
        if cfg.e2_concurrency == 0 || cfg.e2_concurrency > 1024 {
            bail!("--e2-concurrency must be 1 to 1024");
        }
        if cfg.e3_plans == 0 || cfg.e3_plans > 10_000 || cfg.e3_devices < cfg.e3_plans {
            bail!("--e3-plans must be 1 to 10000 and --e3-devices at least --e3-plans");
        }
        if cfg.e3_devices > 10_000_000 {
            bail!("--e3-devices must be at most 10000000");
        }
        if cfg.e3_ticks == 0 || cfg.e4_scans == 0 || cfg.e5_plans == 0 {
            bail!("--e3-ticks, --e4-scans and --e5-plans must be at least 1");
        }
        if !(2..=1000).contains(&cfg.e5_stages) {
            bail!("--e5-stages must be 2 to 1000");
        }
        if !(1..=1_000_000).contains(&cfg.f2_devices)
            || cfg.f2_rollout_devices == 0
            || cfg.f2_rollout_devices > cfg.f2_devices
        {
            bail!("--f2-devices must be 1 to 1000000 and --f2-rollout-devices 1 to --f2-devices");
        }
        if !(1..=60).contains(&cfg.f2_wait_seconds) {
            bail!("--f2-wait-seconds must be 1 to 60 (the SPEC's longest wait)");
        }
        if !(cfg.f2_probe_rate.is_finite() && (1.0..=1000.0).contains(&cfg.f2_probe_rate)) {
            bail!("--f2-probe-rate must be 1 to 1000");
        }
        if cfg.b7_rounds == 0 || cfg.b7_rounds > 100 {
            bail!("--b7-rounds must be 1 to 100");
        }
        if cfg.b7_concurrency == 0 || cfg.b7_concurrency > 64 {
            bail!("--b7-concurrency must be 1 to 64");
        }
        if cfg.b7_flood_connections == 0 || cfg.b7_flood_connections > 1024 {
            bail!("--b7-flood-connections must be 1 to 1024");
        }
        if cfg.b7_flood_max_requests == 0 || cfg.b7_probe_requests == 0 {
            bail!("--b7-flood-max-requests and --b7-probe-requests must be at least 1");
        }
        if !(cfg.b2_stale_percent > 0.0 && cfg.b2_stale_percent <= 100.0) {
            bail!("--b2-stale-percent must be more than 0 and at most 100");
        }
        if cfg.p1_levels.iter().any(|&c| c == 0 || c > 256) {
            bail!("--p1-concurrency levels must be 1 to 256 (the cluster allows 400 connections)");
        }
        if cfg.p2_kills == 0 || cfg.p2_kills > 1000 {
            bail!("--p2-kills must be 1 to 1000");
        }
        if !(cfg.p2_rate.is_finite() && (0.1..=1000.0).contains(&cfg.p2_rate)) {
            bail!("--p2-rate must be 0.1 to 1000");
        }
        if !(cfg.p2_promoter_interval.is_finite()
            && (0.01..=60.0).contains(&cfg.p2_promoter_interval))
        {
            bail!("--p2-promoter-interval must be 0.01 to 60 seconds");
        }
        if cfg.b1_levels.iter().any(|&c| c == 0 || c > 1024) {
            bail!("--b1-concurrency levels must be 1 to 1024");
        }
        if cfg.b2_plans < 2 || cfg.plans < 2 {
            bail!("--b2-plans and --plans must be at least 2");
        }
        if cfg.seed_concurrency == 0 || cfg.seed_concurrency > 1024 || cfg.operators == 0 {
            bail!("--seed-concurrency must be 1 to 1024 and --operators at least 1");
        }
        Ok(cfg)
    }
}

fn main() -> ExitCode {
    // The bench picks each CP's store itself. The test kit turns every CP it starts into a
    // PostgreSQL replica when AUTONOMY_TEST_DATABASE_URL is set (`.ci/run` sets it for the
    // conformance run, before the smoke bench): without this, B1–F1's SQLite CPs and P1's
    // SQLite column would run over that cluster. Removed before any thread starts.
    std::env::remove_var(autonomy_testkit::cp::TEST_DATABASE_ENV);
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn utc_stamp(compact: bool) -> String {
    use time::macros::format_description;
    let now = time::OffsetDateTime::now_utc();
    let fmt = if compact {
        now.format(format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
    } else {
        now.format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
        ))
    };
    fmt.unwrap_or_else(|_| "unknown-time".into())
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cfg = args.config()?;
    let bin = absolute(&args.autonomy_bin)?;
    if !bin.is_file() {
        bail!(
            "the autonomy binary {} does not exist: build it with `cargo build --release -p \
             autonomy` or pass --autonomy-bin (scripts/bench.sh does both)",
            bin.display()
        );
    }
    let stamp = utc_stamp(true);
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("bench-results")
            .join(&stamp)
            .join("report.json")
    });
    let out_dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let work_parent = args.work_dir.clone().unwrap_or_else(|| out_dir.clone());
    let work = work_parent.join(format!(
        "autonomy-bench-work-{stamp}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let logs = out_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;

    let machine = machine::Machine::probe(&work, &bin);
    eprintln!(
        "autonomy-bench ({}): report {}, data in {}, CP logs in {}\nmachine: {}",
        cfg.mode,
        out.display(),
        work.display(),
        logs.display(),
        machine.line()
    );
    let started_at = utc_stamp(false);
    let clock = Instant::now();
    let env = Env {
        bin,
        work: work.clone(),
        logs,
        cfg: cfg.clone(),
    };
    let mut results = Results::default();
    let outcome = run_phases(&env, &mut results);
    let error = outcome.err().map(|e| format!("{e:#}"));
    let targets = report::targets(&results);
    let ran: Vec<bool> = targets.iter().filter_map(|t| t.met).collect();
    let report = Report {
        schema: "autonomy-bench/1",
        issue: 6,
        mode: cfg.mode,
        started_at,
        finished_at: utc_stamp(false),
        wall_seconds: stats::round1(clock.elapsed().as_secs_f64()),
        machine: &machine,
        config: &cfg,
        results: &results,
        all_targets_met: (!ran.is_empty()).then(|| ran.iter().all(|m| *m)),
        targets,
        error: error.clone(),
        notes: report::NOTES.to_vec(),
    };
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&out, format!("{json}\n"))
        .with_context(|| format!("cannot write {}", out.display()))?;
    let summary = report::summary(&report);
    let summary_path = out_dir.join("summary.txt");
    std::fs::write(&summary_path, &summary)
        .with_context(|| format!("cannot write {}", summary_path.display()))?;
    println!("{summary}");
    println!(
        "report: {}\nsummary: {}",
        out.display(),
        summary_path.display()
    );
    match error {
        None => {
            if args.keep_data {
                eprintln!("data kept in {}", work.display());
            } else {
                std::fs::remove_dir_all(&work)
                    .with_context(|| format!("cannot remove {}", work.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(e) => {
            eprintln!(
                "error: {e}\n(data left in {} for diagnosis)",
                work.display()
            );
            Ok(ExitCode::from(1))
        }
    }
}

fn run_phases(env: &Env, results: &mut Results) -> anyhow::Result<()> {
    let cfg = &env.cfg;
    let loadavg = || {
        std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    let mut load = vec![("start".to_string(), loadavg())];
    let mut mark = |phase: &str| load.push((phase.to_string(), loadavg()));
    let outcome = (|| -> anyhow::Result<()> {
        if cfg.wants("limit") {
            results.limit = Some(suite::run_limit(env)?);
        }
        if cfg.wants("b1") {
            mark("b1");
            results.b1 = Some(suite::run_b1(env, results.limit.as_ref())?);
        }
        let later = ["b3", "b4", "b5", "b6"].iter().any(|p| cfg.wants(p));
        if cfg.wants("b2") || later {
            let mut ds = Dataset::new(env.work.join("fleet"));
            let built = (|| -> anyhow::Result<()> {
                if cfg.wants("b2") {
                    mark("b2");
                    results.b2 = Some(suite::run_b2(env, &mut ds)?);
                }
                if later {
                    mark("seed");
                    ds.extend_to(env, cfg.plans)?;
                }
                if cfg.wants("b3") {
                    mark("b3");
                    results.b3 = Some(suite::run_b3(env, &ds)?);
                }
                if cfg.wants("b4") {
                    mark("b4");
                    results.b4 = Some(suite::run_b4(env, &ds)?);
                }
                if cfg.wants("b5") {
                    mark("b5");
                    results.b5 = Some(suite::run_b5(env, &ds)?);
                }
                if cfg.wants("b6") {
                    mark("b6");
                    results.b6 = Some(suite::run_b6(env, &ds)?);
                }
                Ok(())
            })();
            results.seeding = ds.seeds.clone();
            results.seeding_peak_rss_kib = ds.seed_peak_rss_kib.clone();
            built?;
        }
        if cfg.wants("b7") {
            mark("b7");
            results.b7 = Some(suite::run_b7(env)?);
        }
        if cfg.wants("e1") || cfg.wants("e2") {
            mark("e1-e2");
            let io = engine::run_e1_e2(env, results.limit.as_ref())?;
            results.engine_io_seeding = Some(io.seeding);
            results.e1 = io.e1;
            results.e2 = io.e2;
        }
        if cfg.wants("e3") || cfg.wants("e4") {
            mark("e3-e4");
            let fleet = engine::run_e3_e4(env)?;
            results.engine_fleet_seeding = Some(fleet.seed);
            results.e3 = fleet.e3;
            results.e4 = fleet.e4;
        }
        if cfg.wants("e5") {
            mark("e5");
            results.e5 = Some(engine::run_e5(env)?);
        }
        if cfg.wants("f1") {
            mark("f1");
            results.f1 = Some(fleet::run_f1(env)?);
        }
        if cfg.wants("f2") {
            mark("f2");
            results.f2 = Some(f2::run_f2(env)?);
        }
        if cfg.wants("p1") || cfg.wants("p2") {
            if let Some(why) = postgres::cannot_run_cluster() {
                eprintln!("P1/P2 skipped: {why}");
                results.postgres_skipped = Some(why);
                return Ok(());
            }
            mark("postgres");
            // Dropped (stopped and removed) when the phases end, failed or not.
            let cluster = postgres::Cluster::start(&cfg.postgres_script, &env.work.join("pg"))?;
            if cfg.wants("p1") {
                mark("p1");
                results.p1 = Some(postgres::run_p1(env, &cluster, results.limit.as_ref())?);
            }
            if cfg.wants("p2") {
                mark("p2");
                results.p2 = Some(postgres::run_p2(env, &cluster)?);
            }
        }
        Ok(())
    })();
    mark("end");
    results.load_average = load;
    outcome
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(p))
    }
}

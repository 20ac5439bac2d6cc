//! The PostgreSQL phases (issue 12, SPEC §7):
//!
//! - **P1** durable creates over PostgreSQL: the physical limit first (single-row durable
//!   commits/s of this PostgreSQL on this disk, `synchronous_commit=on`, the same load shape as
//!   the creates: N connections, each an INSERT of a ~1 KB row committed alone), then the same
//!   closed loop of creates as B1 ([`crate::suite::measure_creates`]) at each concurrency against
//!   the SQLite CP, one replica and three replicas (the workers round robin over them), each on
//!   a fresh database;
//! - **P2** failover: three replicas over one database, a driver keeping the promoter busy
//!   (small engine plans created and started, each a stage start and a dispatch), then SIGKILL of the
//!   leader again and again: kill → the first promoter audit event under the new epoch (and,
//!   as a lower bound, the new leader's `leader.acquired`), the killed replica started again.
//!
//! The bench starts its own throwaway cluster with `scripts/ci/postgres.sh` (a free port, its
//! data under the work dir, so on the disk under test) and removes it when the phases end,
//! failed or not ([`Cluster`]'s `Drop`). The limit's client is `tokio-postgres` in this
//! process.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use autonomy_api::device::RegisterDeviceRequest;
use autonomy_api::{
    timefmt, AuditEvent, AuditQuery, ExecuteRequest, Strategy, TransitionRequest, Verb,
};
use serde::Serialize;

use crate::cp::{self, Cp};
use crate::engine::Errors;
use crate::http::Http;
use crate::limit::DOC_BYTES;
use crate::stats::{round1, round3, Latency};
use crate::suite::{measure_creates, B1Level, Env};

/// Longest wait for one failover (kill → first promoter write of the new leader).
const FAILOVER_LIMIT: Duration = Duration::from_secs(60);
/// Longest wait for the leader to write as promoter before a kill.
const STEADY_LIMIT: Duration = Duration::from_secs(60);
/// How often the audit log is polled while a failover runs.
const POLL: Duration = Duration::from_millis(10);
/// Engine plans the P2 driver keeps active (older ones are aborted).
const ACTIVE_PLANS: u64 = 20;

// ---------------------------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------------------------

/// A throwaway PostgreSQL cluster (`postgres.sh start DIR PORT`), stopped and removed on drop.
pub struct Cluster {
    script: PathBuf,
    dir: PathBuf,
    /// The superuser URL of the `postgres` database.
    pub url: String,
    pub port: u16,
}

impl Cluster {
    pub fn start(script: &Path, dir: &Path) -> anyhow::Result<Cluster> {
        if !script.is_file() {
            bail!(
                "{} not found: P1/P2 start PostgreSQL with it (run from the repository root or \
                 pass --postgres-script)",
                script.display()
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        eprintln!(
            "PostgreSQL: a throwaway cluster in {} on 127.0.0.1:{port}",
            dir.display()
        );
        let out = Command::new("bash")
            .arg(script)
            .arg("start")
            .arg(dir)
            .arg(port.to_string())
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        // From here on the directory is ours to remove, whatever happened.
        let mut cluster = Cluster {
            script: script.to_path_buf(),
            dir: dir.to_path_buf(),
            url: String::new(),
            port,
        };
        if !out.status.success() {
            // The cluster's own logs go with the directory when `cluster` drops: keep their
            // ends (e.g. initdb cannot enter a directory the postgres user may not traverse:
            // put the data under one it may, with --work-dir).
            let tail = |name: &str| {
                let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(5)..].join(" | ")
            };
            bail!(
                "{} start failed ({}): {}; initdb.log: {}; server.log: {}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                tail("initdb.log"),
                tail("server.log")
            );
        }
        let url = String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .find(|l| l.starts_with("postgres://"))
            .map(str::to_string)
            .ok_or_else(|| anyhow!("{} start printed no URL", script.display()))?;
        cluster.url = url;
        Ok(cluster)
    }

    /// The URL of database `name` of this cluster.
    pub fn db_url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// CPU (user + system) of the postmaster and every process it started, seconds; exited
    /// backends count through the postmaster's reaped-children time.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let pid_file = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).ok()?;
        let pm: u32 = pid_file.lines().next()?.trim().parse().ok()?;
        let (own, reaped, _) = stat_times(pm)?;
        let mut total = own + reaped;
        for e in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((t, _, ppid)) = stat_times(pid) {
                if ppid == pm {
                    total += t;
                }
            }
        }
        Some(total / cp::clock_ticks())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let out = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .output();
        match out {
            Ok(o) if o.status.success() => {
                eprintln!("PostgreSQL: cluster stopped and removed")
            }
            Ok(o) => eprintln!(
                "  warning: {} stop {} failed: {}",
                self.script.display(),
                self.dir.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("  warning: cannot run {}: {e}", self.script.display()),
        }
    }
}

/// (utime + stime, cutime + cstime, ppid) of `pid` in clock ticks.
fn stat_times(pid: u32) -> Option<(f64, f64, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the command name: state (3), ppid (4), utime (14), stime (15), cutime, cstime.
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    let ppid = f.get(1)?.parse().ok()?;
    Some((num(11)? + num(12)?, num(13)? + num(14)?, ppid))
}

/// Whether this process may run `postgres.sh` (it runs the cluster as the `postgres` user, so
/// it must be root or that user); `None` when it may, else why not.
pub fn cannot_run_cluster() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .to_string();
    let postgres = std::fs::read_to_string("/etc/passwd").ok().and_then(|p| {
        p.lines()
            .find(|l| l.starts_with("postgres:"))
            .and_then(|l| l.split(':').nth(2).map(str::to_string))
    });
    (uid != "0" && Some(&uid) != postgres.as_ref()).then(|| {
        format!("P1/P2 start a PostgreSQL cluster as the postgres user: run as root (uid {uid})")
    })
}

/// A multi-thread runtime for the bench's own PostgreSQL client.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Creates database `name` in the cluster.
fn create_database(
    rt: &tokio::runtime::Runtime,
    cluster: &Cluster,
    name: &str,
) -> anyhow::Result<String> {
    rt.block_on(async {
        let c = connect(&cluster.url).await?;
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        Ok(cluster.db_url(name))
    })
}

// ---------------------------------------------------------------------------------------------
// P1: the limit
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct PgSettings {
    pub server_version: String,
    pub fsync: String,
    pub synchronous_commit: String,
    pub wal_sync_method: String,
    pub commit_delay: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PgLimitLevel {
    pub concurrency: usize,
    pub warmup_seconds: f64,
    pub seconds: f64,
    pub commits: u64,
    pub commits_per_sec: f64,
    pub commit_latency: Latency,
    pub errors: u64,
    /// The client's (this process's) CPU per commit, ms.
    pub bench_cpu_ms_per_commit: Option<f64>,
    /// PostgreSQL's CPU (postmaster and backends) per commit, ms.
    pub pg_cpu_ms_per_commit: Option<f64>,
}

fn settings(rt: &tokio::runtime::Runtime, url: &str) -> anyhow::Result<PgSettings> {
    rt.block_on(async {
        let c = connect(url).await?;
        let show = |name: &'static str| {
            let c = &c;
            async move {
                c.query_one(&format!("SHOW {name}"), &[])
                    .await
                    .map(|r| r.get::<_, String>(0))
                    .with_context(|| format!("SHOW {name}"))
            }
        };
        Ok(PgSettings {
            server_version: show("server_version").await?,
            fsync: show("fsync").await?,
            synchronous_commit: show("synchronous_commit").await?,
            wal_sync_method: show("wal_sync_method").await?,
            commit_delay: show("commit_delay").await?,
        })
    })
}

/// `c` connections, each inserting one [`DOC_BYTES`] row per transaction (autocommit: every
/// INSERT is committed, and with `synchronous_commit=on` flushed, before it returns), for
/// `warmup + seconds`; commits that end in the window count.
fn measure_limit(
    rt: &tokio::runtime::Runtime,
    cluster: &Cluster,
    url: &str,
    c: usize,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<PgLimitLevel> {
    let doc: String = "x".repeat(DOC_BYTES);
    rt.block_on(async {
        let admin = connect(url).await?;
        admin
            .batch_execute(include_str!("../sql/limit_table.sql"))
            .await?;
        Ok::<_, anyhow::Error>(())
    })?;
    let errors = Arc::new(AtomicU64::new(0));
    // Every commit, warm-up included: the CPU figures span the warm-up too.
    let all_commits = Arc::new(AtomicU64::new(0));
    let self0 = cp::cpu_seconds(Path::new("/proc/self/stat"));
    let pg0 = cluster.cpu_seconds();
    // The CPU is read before the connections close: a backend that is exiting counts in
    // neither the live children nor the postmaster's reaped time.
    let (samples, self1, pg1): (Vec<Duration>, _, _) = rt.block_on(async {
        let start = Instant::now();
        let (from, end) = (start + warmup, start + warmup + window);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..c {
            let (url, doc, errors) = (url.to_string(), doc.clone(), errors.clone());
            let all_commits = all_commits.clone();
            tasks.spawn(async move {
                let mut lat = Vec::new();
                let Ok(client) = connect(&url).await else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return (lat, None);
                };
                let Ok(stmt) = client
                    .prepare(include_str!("../sql/limit_insert.sql"))
                    .await
                else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return (lat, Some(client));
                };
                while Instant::now() < end {
                    let sent = Instant::now();
                    match client.execute(&stmt, &[&doc]).await {
                        Ok(_) => {
                            all_commits.fetch_add(1, Ordering::Relaxed);
                            let done = Instant::now();
                            if done >= from && done <= end {
                                lat.push(done - sent);
                            }
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                (lat, Some(client))
            });
        }
        let mut all = Vec::new();
        let mut clients = Vec::new();
        while let Some(r) = tasks.join_next().await {
            if let Ok((lat, client)) = r {
                all.extend(lat);
                clients.extend(client);
            }
        }
        let cpu = (
            cp::cpu_seconds(Path::new("/proc/self/stat")),
            cluster.cpu_seconds(),
        );
        drop(clients);
        (all, cpu.0, cpu.1)
    });
    let commits = samples.len() as u64;
    let every_commit = all_commits.load(Ordering::Relaxed);
    let per = |a: Option<f64>, b: Option<f64>| {
        a.zip(b)
            .filter(|_| every_commit > 0)
            .map(|(a, b)| round3((b - a) * 1e3 / every_commit as f64))
    };
    if commits == 0 {
        bail!(
            "the PostgreSQL limit at concurrency {c}: no commit ({} errors)",
            errors.load(Ordering::Relaxed)
        );
    }
    Ok(PgLimitLevel {
        concurrency: c,
        warmup_seconds: warmup.as_secs_f64(),
        seconds: window.as_secs_f64(),
        commits,
        commits_per_sec: round1(commits as f64 / window.as_secs_f64()),
        commit_latency: Latency::of(&samples),
        errors: errors.load(Ordering::Relaxed),
        bench_cpu_ms_per_commit: per(self0, self1),
        pg_cpu_ms_per_commit: per(pg0, pg1),
    })
}

// ---------------------------------------------------------------------------------------------
// P1: creates
// ---------------------------------------------------------------------------------------------

/// Creates through `replicas` replicas over PostgreSQL at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct PgRun {
    pub replicas: usize,
    /// The B1 figures (CPU, I/O, store deltas summed over the replicas; the ratio is to the
    /// PostgreSQL limit at the same concurrency; no batched ratio).
    #[serde(flatten)]
    pub level: B1Level,
    /// PostgreSQL's CPU (postmaster and backends) over the level, and per committed create.
    pub pg_cpu_seconds: Option<f64>,
    pub pg_cpu_ms_per_create: Option<f64>,
    /// What the database's non-idle sessions were doing, sampled every 20 ms over the level
    /// (`pg_stat_activity`): share of samples per `state/wait_event_type:wait_event`
    /// (`active/CPU` = running, no wait), largest first.
    pub pg_sessions: Vec<(String, f64)>,
    pub pg_session_samples: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct P1Level {
    pub concurrency: usize,
    pub limit: PgLimitLevel,
    /// The SQLite CP (B1's measurement), ratio to the SQLite limit when L ran.
    pub sqlite: B1Level,
    pub postgres: Vec<PgRun>,
}

#[derive(Debug, Clone, Serialize)]
pub struct P1Report {
    pub settings: PgSettings,
    pub levels: Vec<P1Level>,
    pub method: &'static str,
}

/// Samples `pg_stat_activity` for database `db` every 20 ms until `stop`: the share of each
/// `state/wait` among the non-idle sessions' samples, largest first, and the sample count.
async fn sample_sessions(
    admin: String,
    db: String,
    stop: Arc<AtomicBool>,
) -> (Vec<(String, f64)>, u64) {
    let Ok(c) = connect(&admin).await else {
        return (Vec::new(), 0);
    };
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    let mut total = 0u64;
    // Bounded by the level's length; the cap is a guard.
    for _ in 0..1_000_000 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let rows = c
            .query(include_str!("../sql/sessions.sql"), &[&db])
            .await
            .unwrap_or_default();
        for r in rows {
            let (state, kind, event): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            let key = if kind.is_empty() {
                format!("{state}/CPU")
            } else {
                format!("{state}/{kind}:{event}")
            };
            *counts.entry(key).or_default() += 1;
            total += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut shares: Vec<(String, f64)> = counts
        .into_iter()
        .map(|(k, n)| (k, round3(n as f64 / total.max(1) as f64)))
        .collect();
    shares.sort_by(|a, b| b.1.total_cmp(&a.1));
    (shares, total)
}

pub fn run_p1(
    env: &Env,
    cluster: &Cluster,
    sqlite_limit: Option<&crate::limit::LimitReport>,
) -> anyhow::Result<P1Report> {
    let cfg = &env.cfg;
    let rt = runtime()?;
    let settings = settings(&rt, &cluster.url)?;
    eprintln!(
        "P1: PostgreSQL {} (fsync={}, synchronous_commit={}, wal_sync_method={})",
        settings.server_version,
        settings.fsync,
        settings.synchronous_commit,
        settings.wal_sync_method
    );
    if settings.fsync != "on" || settings.synchronous_commit != "on" {
        bail!("P1 needs fsync=on and synchronous_commit=on, the cluster has {settings:?}");
    }
    let warmup = Duration::from_secs_f64(cfg.b1_warmup_seconds);
    let limit_window = Duration::from_secs_f64(cfg.limit_seconds);
    let mut levels = Vec::new();
    for &c in &cfg.p1_levels {
        let url = create_database(&rt, cluster, &format!("p1_limit_c{c}"))?;
        eprintln!(
            "P1: PostgreSQL limit, {c} connections each committing one {DOC_BYTES} B row per \
             transaction, {} s",
            cfg.limit_seconds
        );
        let limit = measure_limit(
            &rt,
            cluster,
            &url,
            c,
            warmup.min(limit_window),
            limit_window,
        )?;
        eprintln!(
            "  {:.0} commits/s, {}; PostgreSQL {} ms CPU per commit",
            limit.commits_per_sec,
            limit.commit_latency.short(),
            limit
                .pg_cpu_ms_per_commit
                .map_or("?".into(), |v| v.to_string())
        );

        eprintln!("P1: the SQLite CP, creates at concurrency {c} (as B1)");
        let cp = env.start(
            &env.work.join(format!("p1-sqlite-c{c}")),
            &format!("p1-sqlite-c{c}"),
        )?;
        let sqlite = measure_creates(
            env,
            &[&cp],
            &format!("p1-sqlite-c{c}"),
            c,
            sqlite_limit.map(|l| l.single_row.commits_per_sec),
            sqlite_limit.map(|l| l.batched.rows_per_sec),
        );
        env.stop(cp)?;
        let sqlite = sqlite?;

        let mut postgres = Vec::new();
        for &n in &[1usize, 3] {
            eprintln!("P1: {n} replica(s) over PostgreSQL, creates at concurrency {c}");
            let db = format!("p1_c{c}_r{n}");
            let url = create_database(&rt, cluster, &db)?;
            let mut cps = Vec::new();
            for i in 0..n {
                let name = format!("{db}-{i}");
                let cp = cp::start_pg(
                    &env.bin,
                    &env.work.join(&name),
                    &env.logs.join(format!("cp-{name}.log")),
                    env.start_limit(),
                    (&url, &name),
                    false,
                    &[],
                )?;
                cps.push(cp);
            }
            let refs: Vec<&Cp> = cps.iter().collect();
            let pg0 = cluster.cpu_seconds();
            let stop = Arc::new(AtomicBool::new(false));
            let sampler = rt.spawn(sample_sessions(
                cluster.url.clone(),
                db.clone(),
                stop.clone(),
            ));
            let level = measure_creates(
                env,
                &refs,
                &format!("p1-c{c}-r{n}"),
                c,
                Some(limit.commits_per_sec),
                None,
            );
            let pg1 = cluster.cpu_seconds();
            stop.store(true, Ordering::Relaxed);
            let (pg_sessions, pg_session_samples) = rt.block_on(sampler).unwrap_or_default();
            for cp in cps {
                env.stop(cp)?;
            }
            let level = level?;
            let pg_cpu = pg0.zip(pg1).map(|(a, b)| round3(b - a));
            let committed = level.store.committed_requests;
            postgres.push(PgRun {
                replicas: n,
                pg_sessions,
                pg_session_samples,
                pg_cpu_ms_per_create: pg_cpu
                    .filter(|_| committed > 0)
                    .map(|s| round3(s * 1e3 / committed as f64)),
                pg_cpu_seconds: pg_cpu,
                level,
            });
        }
        levels.push(P1Level {
            concurrency: c,
            limit,
            sqlite,
            postgres,
        });
    }
    Ok(P1Report {
        settings,
        levels,
        method: "one throwaway cluster (scripts/ci/postgres.sh: fsync=on, synchronous_commit=on, \
                 shared_buffers=128MB) with its data on the disk under test; per concurrency: the \
                 limit (tokio-postgres in the bench process, N connections each running a \
                 prepared INSERT of a 900 B row in autocommit: one durable commit per row), \
                 then B1's closed loop of POST /v1/rollouts against a fresh SQLite CP, one \
                 replica and three replicas (workers round robin over the replicas), each \
                 PostgreSQL run on a fresh database; --b1-seconds and --b1-warmup-seconds size \
                 each run, --limit-seconds the limit",
    })
}

// ---------------------------------------------------------------------------------------------
// P2: failover
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct P2Kill {
    pub kill: usize,
    pub killed_replica: String,
    pub old_epoch: u64,
    pub new_leader: Option<String>,
    pub new_epoch: Option<u64>,
    /// Kill → the new leader's `leader.acquired` (its audit time), ms: a lower bound.
    pub to_leader_acquired_ms: Option<f64>,
    /// Kill → the first promoter audit event under the new epoch (its audit time), ms.
    pub to_first_promoter_write_ms: Option<f64>,
    /// Kill → the bench saw that event (polling every 10 ms), ms.
    pub observed_ms: Option<f64>,
    /// Spawn of the killed replica to its /v1/health 200, ms.
    pub restart_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct P2Report {
    pub replicas: usize,
    pub kills: usize,
    pub promoter_interval_seconds: f64,
    pub driver_plans_per_sec: f64,
    /// Kills after which no promoter write under a new epoch came within the limit.
    pub missed: usize,
    pub to_first_promoter_write: Latency,
    pub to_leader_acquired: Latency,
    pub per_kill: Vec<P2Kill>,
    pub driver_plans_started: u64,
    pub driver_errors: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub driver_first_errors: Vec<String>,
    pub method: &'static str,
}

fn wall_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn epoch_of(e: &AuditEvent) -> Option<u64> {
    let v = e.details.get("epoch")?;
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

/// The replicas' current URLs (a killed one is skipped until it is back).
type Urls = Arc<Mutex<Vec<Option<String>>>>;

fn urls_now(urls: &Urls) -> Vec<String> {
    urls.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .flatten()
        .cloned()
        .collect()
}

/// One request of the driver, sent to some replica.
type Step<'a> = dyn Fn(&Http) -> Result<(), autonomy_client::ClientError> + 'a;

/// What the driver did.
#[derive(Default)]
struct Driver {
    started: AtomicU64,
    errors: Errors,
}

impl Driver {
    /// Until `stop`: every 1/`rate` s, a device registered, an engine plan over it created and
    /// started (the promoter then starts its stage and dispatches the device: promoter
    /// writes), and the plan [`ACTIVE_PLANS`] back aborted (so the promoter's scan stays
    /// small). Each step goes to the next replica that answers.
    fn run(&self, urls: &Urls, rate: f64, stop: &AtomicBool) {
        let every = Duration::from_secs_f64(1.0 / rate.max(0.1));
        let mut next = Instant::now();
        let mut turn = 0usize;
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now < next {
                std::thread::sleep((next - now).min(Duration::from_millis(50)));
                continue;
            }
            next += every;
            if next < now {
                next = now;
            }
            let device = format!("p2-dev-{n:06}");
            let plan = format!("p2-plan-{n:06}");
            let steps: [&Step<'_>; 3] = [
                &|h: &Http| {
                    h.call(&h.api().register_device(&RegisterDeviceRequest {
                        id: device.clone(),
                        labels: Default::default(),
                    }))
                    .map(|_| ())
                },
                &|h: &Http| {
                    let body = serde_json::json!({
                        "metadata": {"id": plan, "labels": {"bench": "p2"}},
                        "spec": {
                            "artifact_ref": format!("oci://registry.example.com/fleet/agent@sha256:{:064x}", n + 1),
                            "targets": {"devices": [device]},
                            "stages": [{"name": "all"}],
                        },
                    });
                    h.call(
                        &h.api()
                            .create_rollout_json(body.to_string().into_bytes(), None),
                    )
                    .map(|_| ())
                },
                &|h: &Http| {
                    h.call(
                        &h.api()
                            .transition(&plan, Verb::Start, &TransitionRequest::default()),
                    )
                    .map(|_| ())
                },
            ];
            let mut ok = true;
            for step in steps {
                if !self.on_some_replica(urls, &mut turn, step) {
                    ok = false;
                    break;
                }
            }
            if ok {
                self.started.fetch_add(1, Ordering::Relaxed);
            }
            if n >= ACTIVE_PLANS {
                let old = format!("p2-plan-{:06}", n - ACTIVE_PLANS);
                let abort = |h: &Http| {
                    h.call(&h.api().execute_rollback(
                        &ExecuteRequest {
                            target: "rollout_plan".into(),
                            resource: old.clone(),
                            strategy: Strategy::Abort,
                            reason: "p2 driver: keep the active set small".into(),
                            dry_run: false,
                        },
                        None,
                    ))
                    .map(|_| ())
                };
                self.on_some_replica(urls, &mut turn, &abort);
            }
            n += 1;
        }
    }

    /// `step` on the replicas in turn until one answers (a 409 of a replayed step counts);
    /// whether one did.
    fn on_some_replica(&self, urls: &Urls, turn: &mut usize, step: &Step) -> bool {
        let list = urls_now(urls);
        for _ in 0..list.len().max(1) * 2 {
            let Some(url) = list.get(*turn % list.len().max(1)) else {
                return false;
            };
            *turn += 1;
            let Ok(http) = Http::new(url, Duration::from_secs(10)) else {
                return false;
            };
            match step(&http) {
                Ok(()) => return true,
                Err(e) if e.api().is_some_and(|a| a.status == 409) => return true,
                Err(e) => self.errors.note(e.to_string()),
            }
        }
        false
    }
}

/// The leader as some replica answers it: (replica, epoch).
fn leader(urls: &Urls) -> Option<(String, u64)> {
    for url in urls_now(urls) {
        let Ok(http) = Http::new(&url, Duration::from_secs(2)) else {
            continue;
        };
        if let Ok(r) = http.call(&http.api().leader()) {
            if let Ok(l) = r.value() {
                if l.epoch > 0 && !l.replica.is_empty() {
                    return Some((l.replica, l.epoch));
                }
            }
        }
    }
    None
}

/// Audit events of `actor` or `event_type` after `cursor`, from the first replica that
/// answers (all pages).
fn events_after(
    urls: &Urls,
    cursor: u64,
    actor: Option<&str>,
    event_type: Option<&str>,
) -> Option<Vec<AuditEvent>> {
    for url in urls_now(urls) {
        let Ok(http) = Http::new(&url, Duration::from_secs(5)) else {
            continue;
        };
        let mut out = Vec::new();
        let mut after = cursor;
        let mut ok = true;
        for _ in 0..100 {
            let q = AuditQuery {
                actor: actor.map(str::to_string),
                event_type: event_type.map(str::to_string),
                cursor: (after > 0).then(|| after.to_string()),
                limit: Some("1000".into()),
                ..AuditQuery::default()
            };
            match http
                .call(&http.api().audit_events(&q))
                .and_then(|r| r.value())
            {
                Ok(page) => {
                    let full = page.next_cursor.is_some();
                    if let Some(last) = page.items.last() {
                        after = last.seq;
                    }
                    out.extend(page.items);
                    if !full {
                        break;
                    }
                }
                Err(_) => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            return Some(out);
        }
    }
    None
}

pub fn run_p2(env: &Env, cluster: &Cluster) -> anyhow::Result<P2Report> {
    let cfg = &env.cfg;
    let rt = runtime()?;
    let url = create_database(&rt, cluster, "p2_failover")?;
    drop(rt);
    let interval = cfg.p2_promoter_interval;
    let interval_arg = interval.to_string();
    let args = ["--promoter-interval", interval_arg.as_str()];
    eprintln!(
        "P2: 3 replicas over one database, promoter every {interval} s, a driver starting {} \
         engine plans/s; {} SIGKILLs of the leader",
        cfg.p2_rate, cfg.p2_kills
    );
    let names: Vec<String> = (0..3).map(|i| format!("p2-r{i}")).collect();
    let mut cps: Vec<Cp> = Vec::new();
    for name in &names {
        cps.push(cp::start_pg(
            &env.bin,
            &env.work.join(name),
            &env.logs.join(format!("cp-{name}.log")),
            env.start_limit(),
            (&url, name),
            false,
            &args,
        )?);
    }
    let urls: Urls = Arc::new(Mutex::new(
        cps.iter().map(|c| Some(c.url.clone())).collect(),
    ));
    let driver = Driver::default();
    let stop = AtomicBool::new(false);
    let result = std::thread::scope(|s| {
        let drive = s.spawn(|| driver.run(&urls, cfg.p2_rate, &stop));
        let r = kills(env, &mut cps, &names, &urls);
        stop.store(true, Ordering::Relaxed);
        let _ = drive.join();
        r
    });
    for cp in cps {
        if cp.pid().is_some() {
            env.stop(cp)?;
        }
    }
    let per_kill = result?;
    let ms = |pick: fn(&P2Kill) -> Option<f64>| -> Vec<Duration> {
        per_kill
            .iter()
            .filter_map(pick)
            .map(|v| Duration::from_secs_f64(v.max(0.0) / 1e3))
            .collect()
    };
    let report = P2Report {
        replicas: 3,
        kills: per_kill.len(),
        promoter_interval_seconds: interval,
        driver_plans_per_sec: cfg.p2_rate,
        missed: per_kill
            .iter()
            .filter(|k| k.to_first_promoter_write_ms.is_none())
            .count(),
        to_first_promoter_write: Latency::of(&ms(|k| k.to_first_promoter_write_ms)),
        to_leader_acquired: Latency::of(&ms(|k| k.to_leader_acquired_ms)),
        driver_plans_started: driver.started.load(Ordering::Relaxed),
        driver_errors: driver.errors.count(),
        driver_first_errors: driver.errors.first(),
        per_kill,
        method: "three replicas (serve --database-url --replica, --promoter-interval as given) \
                 over one database; a driver thread registers a device, creates a one-stage \
                 engine plan over it and starts it at a steady rate (the leader's promoter \
                 starts its stage and dispatches the device: rollout.stage_started and \
                 rollout.devices_dispatched by system:promoter), aborting the plan 20 back; \
                 per kill: GET /v1/leader, wait until the leader has written as promoter \
                 under its epoch, SIGKILL it (the wall clock just before), poll a survivor's \
                 /v1/audit/events?actor=system:promoter every 10 ms for the first event whose \
                 details.epoch is above the old one; the interval is that event's audit time \
                 minus the kill time (same host clock); leader.acquired of the new epoch gives \
                 the lower bound; then the killed replica is started again (same data dir and \
                 name) and waited for",
    };
    eprintln!(
        "  kill -> first promoter write: {} ({} missed); kill -> leader.acquired: {}",
        report.to_first_promoter_write.short(),
        report.missed,
        report.to_leader_acquired.short()
    );
    Ok(report)
}

fn kills(env: &Env, cps: &mut [Cp], names: &[String], urls: &Urls) -> anyhow::Result<Vec<P2Kill>> {
    let mut out = Vec::new();
    // The seq of the last promoter event read: every poll asks only for newer ones.
    let mut cursor = 0;
    for k in 1..=env.cfg.p2_kills {
        // The leader, writing as promoter under its epoch (the replicas start as followers; the
        // first to take the lock leads).
        let deadline = Instant::now() + STEADY_LIMIT;
        let (name, epoch) = loop {
            if Instant::now() > deadline {
                bail!(
                    "P2 kill {k}: no leader writing as promoter within {} s",
                    STEADY_LIMIT.as_secs()
                );
            }
            if let Some((name, epoch)) = leader(urls) {
                if let Some(events) = events_after(urls, cursor, Some("system:promoter"), None) {
                    if let Some(last) = events.last() {
                        cursor = last.seq;
                    }
                    if events.iter().any(|e| epoch_of(e) == Some(epoch)) {
                        break (name, epoch);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let Some(i) = names.iter().position(|n| *n == name) else {
            bail!("P2: the leader {name} is none of the bench's replicas {names:?}");
        };
        urls.lock().unwrap_or_else(|e| e.into_inner())[i] = None;
        let killed_at_us = wall_us();
        let killed_at = Instant::now();
        cps[i]
            .kill()
            .with_context(|| format!("SIGKILL of {name}"))?;
        // The first promoter write under a newer epoch.
        let mut seen: Option<(AuditEvent, f64)> = None;
        let mut after = cursor;
        while killed_at.elapsed() < FAILOVER_LIMIT {
            if let Some(events) = events_after(urls, after, Some("system:promoter"), None) {
                if let Some(e) = events
                    .iter()
                    .find(|e| epoch_of(e).is_some_and(|x| x > epoch))
                {
                    seen = Some((e.clone(), killed_at.elapsed().as_secs_f64() * 1e3));
                    break;
                }
                if let Some(last) = events.last() {
                    after = last.seq;
                }
            }
            std::thread::sleep(POLL);
        }
        let acquired_from = cursor;
        cursor = seen.as_ref().map_or(after, |(e, _)| e.seq);
        let since_kill = |e: &AuditEvent| {
            timefmt::parse_rfc3339_us(&e.time)
                .ok()
                .map(|t| round3((t - killed_at_us) as f64 / 1e3))
        };
        let acquired = events_after(urls, acquired_from, None, Some("leader.acquired"))
            .unwrap_or_default()
            .into_iter()
            .find(|e| epoch_of(e).is_some_and(|x| x > epoch));
        let kill = P2Kill {
            kill: k,
            killed_replica: name.clone(),
            old_epoch: epoch,
            new_leader: acquired
                .as_ref()
                .map(|e| e.actor.trim_start_matches("system:").to_string()),
            new_epoch: seen.as_ref().and_then(|(e, _)| epoch_of(e)),
            to_leader_acquired_ms: acquired.as_ref().and_then(since_kill),
            to_first_promoter_write_ms: seen.as_ref().and_then(|(e, _)| since_kill(e)),
            observed_ms: seen.as_ref().map(|(_, ms)| round3(*ms)),
            restart_ms: 0.0,
        };
        // The killed replica back (same data dir, same name; a new port).
        let spawned = Instant::now();
        cps[i]
            .start_again()
            .map_err(|e| anyhow!("P2: starting {name} again: {e}"))?;
        urls.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(cps[i].url.clone());
        let kill = P2Kill {
            restart_ms: round1(spawned.elapsed().as_secs_f64() * 1e3),
            ..kill
        };
        eprintln!(
            "  kill {k}: {name} (epoch {epoch}) -> {} epoch {}: leader.acquired +{} ms, first \
             promoter write +{} ms (seen +{} ms)",
            kill.new_leader.as_deref().unwrap_or("?"),
            kill.new_epoch.map_or("?".into(), |v| v.to_string()),
            kill.to_leader_acquired_ms
                .map_or("?".into(), |v| format!("{v:.0}")),
            kill.to_first_promoter_write_ms
                .map_or("MISSED".into(), |v| format!("{v:.0}")),
            kill.observed_ms.map_or("?".into(), |v| format!("{v:.0}")),
        );
        out.push(kill);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::StoreDelta;

    #[test]
    fn reads_this_process_times_and_parent() {
        let (own, _, ppid) = stat_times(std::process::id()).unwrap();
        assert!(own >= 0.0);
        assert_eq!(ppid, std::os::unix::process::parent_id());
        assert!(stat_times(u32::MAX).is_none());
    }

    #[test]
    fn reads_the_epoch_of_an_event_as_number_or_text() {
        let event = |details: serde_json::Value| AuditEvent {
            seq: 1,
            id: "evt-1".into(),
            time: "2026-12-02T00:00:00.000000Z".into(),
            event_type: "rollout.stage_started".into(),
            actor: "system:promoter".into(),
            target: "rollout_plan".into(),
            resource: "p".into(),
            outcome: autonomy_api::Outcome::Success,
            reason: String::new(),
            request_id: String::new(),
            details,
            prev_hash: String::new(),
            hash: String::new(),
        };
        assert_eq!(epoch_of(&event(serde_json::json!({"epoch": 7}))), Some(7));
        assert_eq!(epoch_of(&event(serde_json::json!({"epoch": "8"}))), Some(8));
        assert_eq!(epoch_of(&event(serde_json::json!({"stage": 0}))), None);
        assert_eq!(epoch_of(&event(serde_json::json!({"epoch": -1}))), None);
    }

    #[test]
    fn replicas_store_deltas_add_up() {
        let d = |commits, requests, avg_commit_ms, max_batch, busy| StoreDelta {
            commits,
            committed_requests: requests,
            avg_batch: 0.0,
            max_batch,
            avg_commit_ms,
            writer_busy_fraction: busy,
        };
        let sum = StoreDelta::sum(vec![d(10, 100, 2.0, 20, 0.5), d(30, 60, 6.0, 9, 0.75)]);
        assert_eq!(sum.commits, 40);
        assert_eq!(sum.committed_requests, 160);
        assert_eq!(sum.avg_batch, 4.0);
        assert_eq!(sum.max_batch, 20);
        assert_eq!(sum.avg_commit_ms, 5.0);
        assert_eq!(sum.writer_busy_fraction, 1.25);
        let one = StoreDelta::sum(vec![d(3, 9, 1.5, 4, 0.1)]);
        assert_eq!(
            (one.commits, one.avg_batch, one.avg_commit_ms),
            (3, 0.0, 1.5)
        );
        assert_eq!(StoreDelta::sum(Vec::new()).commits, 0);
    }
}

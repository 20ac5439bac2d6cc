//! The report: every number (JSON), the issue's targets with `met`, and a readable summary.

use serde::Serialize;

use crate::engine::{DeviceSeed, E1Report, E2Report, E3Report, E4Report, E5Report, FleetSeed};
use crate::limit::LimitReport;
use crate::load::SeedReport;
use crate::machine::Machine;
use crate::stats::{fmt_ms, round3, Latency};
use crate::suite::{
    B1Level, B1Report, B2Report, B3Report, B4Report, B5Report, B6Report, B7Report, Config,
    B7_STORE_LIMIT_PER_200,
};

#[derive(Debug, Default, Serialize)]
pub struct Results {
    pub limit: Option<LimitReport>,
    pub b1: Option<B1Report>,
    pub b2: Option<B2Report>,
    pub b3: Option<B3Report>,
    pub b4: Option<B4Report>,
    pub b5: Option<B5Report>,
    pub b6: Option<B6Report>,
    pub b7: Option<B7Report>,
    pub e1: Option<E1Report>,
    pub e2: Option<E2Report>,
    pub e3: Option<E3Report>,
    pub e4: Option<E4Report>,
    pub e5: Option<E5Report>,
    pub f1: Option<crate::fleet::F1Report>,
    pub f2: Option<crate::f2::F2Report>,
    pub p1: Option<crate::postgres::P1Report>,
    pub p2: Option<crate::postgres::P2Report>,
    /// Why P1/P2 did not run (not root).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres_skipped: Option<String>,
    /// Registration of E1/E2's devices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_io_seeding: Option<DeviceSeed>,
    /// E3/E4's fleet: registration, plans, dispatch, state mixing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_fleet_seeding: Option<FleetSeed>,
    pub seeding: Vec<SeedReport>,
    pub seeding_peak_rss_kib: Vec<Option<u64>>,
    /// `/proc/loadavg` (1, 5, 15 min) as each phase started and at the end: other work on the
    /// machine shows up here.
    pub load_average: Vec<(String, String)>,
}

/// One target of issue 6 (B1–B6), issue 14 (B7) or issue 10 (E1–E5).
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub id: &'static str,
    pub target: &'static str,
    /// What was compared, in words.
    pub basis: String,
    pub value: Option<f64>,
    pub threshold: f64,
    pub unit: &'static str,
    /// `None` when the phase did not run.
    pub met: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub schema: &'static str,
    pub issue: u32,
    pub mode: &'static str,
    pub started_at: String,
    pub finished_at: String,
    pub wall_seconds: f64,
    pub machine: &'a Machine,
    pub config: &'a Config,
    #[serde(flatten)]
    pub results: &'a Results,
    pub targets: Vec<Target>,
    /// True when every target that ran was met; `None` when none ran.
    pub all_targets_met: Option<bool>,
    pub error: Option<String>,
    pub notes: Vec<&'static str>,
}

pub const NOTES: [&str; 8] = [
    "latencies are client-side (request sent to whole body read) over kept-alive HTTP/1.1 to 127.0.0.1, nearest-rank percentiles over every sample",
    "PostgreSQL (issue 12): P1 measures the cluster's own single-row durable commits/s (tokio-postgres, N connections, one 900 B row per autocommitted INSERT, synchronous_commit=on) and then B1's closed loop against the SQLite CP, one replica and three replicas at the same concurrency, with the CPU per create of the CPs, of PostgreSQL (postmaster and backends) and of the load generator; P2 target: SIGKILL of the leader -> the first promoter audit event under the new epoch, p99 over the kills < 5 s (leader.acquired is the lower bound), no kill without one",
    "the bench and the CP share the machine's CPUs; bench_cpu_seconds in B1 shows what the load generator itself used (since issue 13 a raw HTTP/1.1 client with pre-rendered requests, as in E1/E2)",
    "B7 runs the CP with RBAC on; its flood generator shares the CPUs with the CP and the operator's client: flood.generator_cpu_seconds (the flood threads alone) stands next to the CP's cp_cpu_seconds",
    "peak_rss_kib is VmHWM of the CP instance that served only that phase (each phase starts its own CP; seeding runs in separate instances, see seeding_peak_rss_kib)",
    "smoke runs use tiny sizes: their numbers prove the bench works, not the targets",
    "targets: B1 c=32 and c=64 creates/s >= 5x raw single-row commits/s, the store-writer thread <= 40 us CPU per create (issue 13); B2 p99 < 20 ms; B3 deep-page p50 <= 2x first-page p50; B4 median restart-to-ready < 1000 ms; B5 API p99 < 50 ms; B6 CLI p50 <= 2x curl p50; B7 operator create p99 under the flood <= 2x quiet, and 200 refused requests grow the data dir by < 2 MiB",
    "engine targets (issue 10): E1 idle polls >= 10000/s with the generator on the same box; E2 device reports/s at concurrency 256 >= 5x raw single-row commits/s; E3 promoter tick p99 < 50 ms (100k devices, 100 plans); E4 stuck scan p99 < 50 ms (same fleet); E5 last report of a stage to the next stage's dispatch p99 < 1 s. E1/E2 run RBAC off (X-Autonomy-Device) with a raw-HTTP generator whose CPU is reported",
];

pub fn targets(r: &Results) -> Vec<Target> {
    let mut t = Vec::new();
    // B1 (issues 6 and 13): creates/s at c=32 and at c=64 (or the level closest to 64), each
    // against the single-row limit of the same run; the writer thread's CPU per create at both.
    let levels = r.b1.as_ref().map_or(&[][..], |b| b.levels.as_slice());
    let closest = levels
        .iter()
        .min_by_key(|l| (l.run.concurrency as i64 - 64).abs());
    let at32 = levels.iter().find(|l| l.run.concurrency == 32);
    let single_row = r
        .limit
        .as_ref()
        .map_or(f64::NAN, |x| x.single_row.commits_per_sec);
    let b1_levels: Vec<(&'static str, &'static str, Option<&B1Level>)> = vec![
        (
            "B1",
            "durable creates at concurrency 64 >= 5x the single-row-commit limit",
            closest,
        ),
        (
            "B1 c=32",
            "durable creates at concurrency 32 >= 5x the single-row-commit limit (issue 13)",
            at32,
        ),
    ];
    for (id, target, level) in b1_levels {
        if id != "B1" && level.is_none() {
            continue;
        }
        t.push(Target {
            id,
            target,
            basis: match level {
                Some(l) => format!(
                    "{:.0} creates/s at c={} / {:.0} raw single-row commits/s",
                    l.run.creates_per_sec, l.run.concurrency, single_row
                ),
                None => "not run".into(),
            },
            value: level.and_then(|l| l.ratio_to_single_row_commits),
            threshold: 5.0,
            unit: "x",
            met: level
                .and_then(|l| l.ratio_to_single_row_commits)
                .map(|v| v >= 5.0),
        });
    }
    let writer_levels: Vec<(&'static str, Option<&B1Level>)> =
        vec![("B1 writer c=64", closest), ("B1 writer c=32", at32)];
    for (id, level) in writer_levels {
        let Some(l) = level else { continue };
        let writer = l.writer_cpu_ms_per_create;
        t.push(Target {
            id,
            target: "the store writer thread's CPU per durable create <= 40 us (issue 13)",
            basis: format!(
                "store-writer thread CPU over {} committed creates at c={}",
                l.store.committed_requests, l.run.concurrency
            ),
            value: writer.map(|v| round3(v * 1e3)),
            threshold: 40.0,
            unit: "us",
            met: writer.map(|v| v * 1e3 <= 40.0),
        });
    }
    let b2 = r.b2.as_ref().map(|b| b.latency.p99_ms);
    t.push(Target {
        id: "B2",
        target: "stuck scan over 100k plans (1% stuck): p99 < 20 ms",
        basis: r.b2.as_ref().map_or("not run".into(), |b| {
            format!("p99 of {} scans over {} plans", b.scans, b.plans)
        }),
        value: b2,
        threshold: 20.0,
        unit: "ms",
        met: b2.map(|v| v < 20.0),
    });
    let b3 = r.b3.as_ref().map(|b| b.deep_to_first_p50);
    t.push(Target {
        id: "B3",
        target: "list: deep cursor page within 2x the first page (1M plans)",
        basis: r.b3.as_ref().map_or("not run".into(), |b| {
            format!(
                "deep p50 {} / first p50 {} over {} plans",
                fmt_ms(b.deep_page.p50_ms),
                fmt_ms(b.first_page.p50_ms),
                b.plans
            )
        }),
        value: b3,
        threshold: 2.0,
        unit: "x",
        met: b3.map(|v| v <= 2.0),
    });
    let b4 = r.b4.as_ref().map(|b| b.ready_ms_median);
    t.push(Target {
        id: "B4",
        target: "restart to ready under 1 s (1M plans, 1M audit events)",
        basis: r.b4.as_ref().map_or("not run".into(), |b| {
            format!(
                "median of {} restarts, {} plans, {} audit events",
                b.restarts.len(),
                opt(b.plans),
                opt(b.audit_events)
            )
        }),
        value: b4,
        threshold: 1000.0,
        unit: "ms",
        met: b4.map(|v| v < 1000.0),
    });
    let b5 = r.b5.as_ref().map(|b| b.api.p99_ms);
    t.push(Target {
        id: "B5",
        target: "audit query (actor + event type + time) through the API under 50 ms (1M events)",
        basis: r.b5.as_ref().map_or("not run".into(), |b| {
            format!(
                "p99 of {} API queries over {} audit events",
                b.api.samples,
                opt(b.audit_events)
            )
        }),
        value: b5,
        threshold: 50.0,
        unit: "ms",
        met: b5.map(|v| v < 50.0),
    });
    let b6 = r.b6.as_ref().and_then(|b| b.cli_to_curl_p50);
    t.push(Target {
        id: "B6",
        target: "CLI round trip (`autonomy rollout get`) within 2x curl",
        basis: r.b6.as_ref().map_or("not run".into(), |b| {
            format!(
                "CLI p50 {} / curl p50 {} over {} runs",
                fmt_ms(b.cli.p50_ms),
                b.curl.as_ref().map_or("n/a".into(), |c| fmt_ms(c.p50_ms)),
                b.runs
            )
        }),
        value: b6,
        threshold: 2.0,
        unit: "x",
        met: b6.map(|v| v <= 2.0),
    });
    let b7 = r.b7.as_ref();
    t.push(Target {
        id: "B7",
        target: "operator create p99 under an unauthenticated flood within 2x the quiet p99",
        basis: b7.map_or("not run".into(), |b| {
            format!(
                "flooded p99 {} / quiet p99 {}, flood {:.0} refused/s over {} connections",
                fmt_ms(b.flooded.run.latency.p99_ms),
                fmt_ms(b.quiet.run.latency.p99_ms),
                b.flooded.flood.as_ref().map_or(0.0, |f| f.refused_per_sec),
                b.flood_connections
            )
        }),
        value: b7.and_then(|b| b.p99_ratio),
        threshold: 2.0,
        unit: "x",
        // No create answered under the flood is a miss, not a missing value.
        met: b7.map(|b| b.p99_ratio.is_some_and(|v| v <= 2.0)),
    });
    let mib_per_200 = b7.map(|b| round3(b.store_probe.bytes_per_200_refused / 1048576.0));
    t.push(Target {
        id: "B7",
        target: "200 refused unauthenticated requests grow the data dir by < 2 MiB",
        basis: b7.map_or("not run".into(), |b| {
            format!(
                "{} B over {} refused requests (the flood alone), x200",
                b.store_probe.data_dir_growth_bytes,
                b.store_probe.flood.refused()
            )
        }),
        value: mib_per_200,
        threshold: B7_STORE_LIMIT_PER_200 / 1048576.0,
        unit: "MiB",
        met: b7.map(|b| b.store_probe.bytes_per_200_refused < B7_STORE_LIMIT_PER_200),
    });
    let e1 = r.e1.as_ref();
    t.push(Target {
        id: "E1",
        target: "idle long polls (wait 0, nothing assigned) >= 10,000/s, generator on the same box",
        basis: e1.map_or("not run".into(), |e| {
            format!(
                "{} devices over {} connections, generator {} CPUs, CP {} CPUs",
                e.devices,
                e.connections,
                e.generator_cpus_used.map_or("?".into(), |v| v.to_string()),
                e.cp_cpus_used.map_or("?".into(), |v| v.to_string())
            )
        }),
        value: e1.map(|e| e.polls_per_sec),
        threshold: 10_000.0,
        unit: "/s",
        met: e1.map(|e| e.polls_per_sec >= 10_000.0),
    });
    let e2 = r.e2.as_ref();
    t.push(Target {
        id: "E2",
        target: "durable device reports at concurrency 256 >= 5x the single-row-commit limit",
        basis: e2.map_or("not run".into(), |e| {
            format!(
                "{:.0} reports/s at c={} / {:.0} raw single-row commits/s",
                e.run.reports_per_sec,
                e.run.concurrency,
                e.single_row_commits_per_sec.unwrap_or(f64::NAN)
            )
        }),
        value: e2.and_then(|e| e.ratio_to_single_row_commits),
        threshold: 5.0,
        unit: "x",
        met: e2
            .and_then(|e| e.ratio_to_single_row_commits)
            .map(|v| v >= 5.0),
    });
    let e3 = r.e3.as_ref();
    t.push(Target {
        id: "E3",
        target: "promoter tick with 100k devices in 100 plans: p99 < 50 ms",
        basis: e3.map_or("not run".into(), |e| {
            format!(
                "p99 of {} ticks over {} devices in {} plans",
                e.ticks, e.devices, e.plans
            )
        }),
        value: e3.map(|e| e.latency.p99_ms),
        threshold: 50.0,
        unit: "ms",
        met: e3.map(|e| e.latency.p99_ms < 50.0),
    });
    let e4 = r.e4.as_ref();
    t.push(Target {
        id: "E4",
        target: "stuck scan over 100k devices: p99 < 50 ms",
        basis: e4.map_or("not run".into(), |e| {
            format!(
                "p99 of {} scans over {} devices in {} plans",
                e.scans, e.devices, e.plans
            )
        }),
        value: e4.map(|e| e.latency.p99_ms),
        threshold: 50.0,
        unit: "ms",
        met: e4.map(|e| e.latency.p99_ms < 50.0),
    });
    let e5 = r.e5.as_ref();
    t.push(Target {
        id: "E5",
        target: "last report of a stage -> next stage dispatched: p99 < 1 s",
        basis: e5.map_or("not run".into(), |e| {
            format!(
                "p99 of {} stage transitions ({} plans of {} stages)",
                e.samples, e.plans, e.stages_per_plan
            )
        }),
        value: e5.map(|e| e.latency.p99_ms),
        threshold: 1000.0,
        unit: "ms",
        met: e5.map(|e| e.samples > 0 && e.latency.p99_ms < 1000.0),
    });
    let f1 = r.f1.as_ref();
    t.push(Target {
        id: "F1",
        target: "10,000 simulated devices through 4 stages: CP peak RSS < 1 GiB",
        basis: f1.map_or("not run".into(), |f| {
            format!(
                "{} devices, completed={} in {:.1} s, {} reports, CP {} us CPU/report, simulator {} KiB/device",
                f.devices,
                f.completed,
                f.rollout_seconds,
                f.reports,
                crate::fleet::show(f.cp_cpu_us_per_report),
                crate::fleet::show(f.simulator_kib_per_device)
            )
        }),
        value: f1.and_then(|f| f.cp_peak_rss_kib).map(|k| k as f64 / 1024.0),
        threshold: 1024.0,
        unit: "MiB",
        met: f1.map(|f| {
            f.completed && f.cp_peak_rss_kib.is_some_and(|k| k < 1024 * 1024)
        }),
    });
    let f2 = r.f2.as_ref();
    let f2_basis = |f: &crate::f2::F2Report| {
        format!(
            "{} devices polling (wait {} s; {} long polls on their own connections, {} held at \
             peak), 4-stage plan over {}: completed={}, {} errors",
            f.devices,
            f.wait_seconds,
            f.held,
            f.connections_peak,
            f.rollout_devices,
            f.completed,
            f.errors
        )
    };
    t.push(Target {
        id: "F2",
        target: "100k long-polling devices + a 4-stage rollout: probe poll p99 < 50 ms",
        basis: f2.map_or("not run".into(), |f| {
            format!(
                "p99 of {} wait_seconds=0 probe polls at {}/s; {}",
                f.probe.samples,
                f.probe_rate,
                f2_basis(f)
            )
        }),
        value: f2.map(|f| f.probe.p99_ms),
        threshold: 50.0,
        unit: "ms",
        met: f2.map(|f| f.probe.samples > 0 && f.probe.p99_ms < 50.0),
    });
    t.push(Target {
        id: "F2",
        target: "100k long-polling devices + a 4-stage rollout: CP RSS < 2 GiB",
        basis: f2.map_or("not run".into(), |f| {
            let what = match f.cp_rss_projected_all_held_kib {
                Some(_) => format!(
                    "PROJECTED to {} held long polls from {} held (open-file limit {}): held \
                     VmRSS + the rest x KiB per added connection (slope over the ramp); \
                     measured VmHWM {} MiB",
                    f.devices,
                    f.connections_peak,
                    f.open_file_limit,
                    f.cp_peak_rss_kib.map_or(0, |k| k / 1024)
                ),
                None => "CP VmHWM".to_string(),
            };
            format!(
                "{what}; {} KiB per held connection on average, {} per added one; {}",
                crate::fleet::show(f.cp_kib_per_connection),
                crate::fleet::show(f.cp_kib_per_connection_marginal),
                f2_basis(f)
            )
        }),
        value: f2
            .and_then(|f| f.cp_rss_projected_all_held_kib.or(f.cp_peak_rss_kib))
            .map(|k| k as f64 / 1024.0),
        threshold: 2048.0,
        unit: "MiB",
        met: f2.map(|f| {
            f.cp_rss_projected_all_held_kib
                .or(f.cp_peak_rss_kib)
                .is_some_and(|k| k < 2 * 1024 * 1024)
        }),
    });
    let p2 = r.p2.as_ref();
    t.push(Target {
        id: "P2",
        target: "SIGKILL of the leader -> first promoter write of the new leader: p99 < 5 s",
        basis: p2.map_or("not run".into(), |p| {
            format!(
                "p99 of {} kills of the leader of {} replicas ({} without a new promoter write); \
                 leader.acquired p99 {}",
                p.kills,
                p.replicas,
                p.missed,
                fmt_ms(p.to_leader_acquired.p99_ms)
            )
        }),
        value: p2.map(|p| p.to_first_promoter_write.p99_ms),
        threshold: 5000.0,
        unit: "ms",
        met: p2.map(|p| {
            p.missed == 0
                && p.to_first_promoter_write.samples > 0
                && p.to_first_promoter_write.p99_ms < 5000.0
        }),
    });
    t
}

fn opt(v: Option<u64>) -> String {
    v.map_or("?".into(), |v| v.to_string())
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("-".into(), |k| format!("{:.0} MiB", k as f64 / 1024.0))
}

fn lat(l: &Latency) -> String {
    format!(
        "{} / {} / {}",
        fmt_ms(l.p50_ms),
        fmt_ms(l.p99_ms),
        fmt_ms(l.max_ms)
    )
}

/// The readable summary (also written to summary.txt).
pub fn summary(rep: &Report) -> String {
    let r = rep.results;
    let mut rows: Vec<[String; 5]> = vec![[
        "".into(),
        "measurement".into(),
        "result".into(),
        "p50 / p99 / max".into(),
        "CP peak RSS".into(),
    ]];
    let mut row = |a: &str, b: String, c: String, d: String, e: String| {
        rows.push([a.to_string(), b, c, d, e]);
    };
    if let Some(l) = &r.limit {
        row(
            "L",
            format!("raw SQLite single-row commits ({} B rows)", l.doc_bytes),
            format!("{:.0} commits/s", l.single_row.commits_per_sec),
            lat(&l.single_row.commit_latency),
            "".into(),
        );
        row(
            "L",
            format!("raw SQLite {}-row transactions", l.batched.rows_per_txn),
            format!("{:.0} rows/s", l.batched.rows_per_sec),
            lat(&l.batched.txn_latency),
            "".into(),
        );
    }
    if let Some(b) = &r.b1 {
        for l in &b.levels {
            row(
                "B1",
                format!(
                    "durable creates, c={} (avg batch {})",
                    l.run.concurrency, l.store.avg_batch
                ),
                format!(
                    "{:.0} creates/s = {}x L1, {}x L64; CPU per create: writer {} us, CP {} us, generator {} us",
                    l.run.creates_per_sec,
                    l.ratio_to_single_row_commits
                        .map_or("?".into(), |v| format!("{:.2}", v)),
                    l.ratio_to_batched_rows
                        .map_or("?".into(), |v| format!("{:.2}", v)),
                    l.writer_cpu_ms_per_create
                        .map_or("?".into(), |v| format!("{:.0}", v * 1e3)),
                    l.cp_cpu_ms_per_create
                        .map_or("?".into(), |v| format!("{:.0}", v * 1e3)),
                    l.bench_cpu_ms_per_create
                        .map_or("?".into(), |v| format!("{:.0}", v * 1e3)),
                ),
                lat(&l.run.latency),
                mib(l.peak_rss_kib),
            );
        }
    }
    if let Some(b) = &r.b2 {
        row(
            "B2",
            format!(
                "stuck scan, {} plans, {} stale ({} scans)",
                b.plans, b.stale_plans, b.scans
            ),
            format!("stuck_count {:?}", b.stuck_count_seen),
            lat(&b.latency),
            mib(b.peak_rss_kib),
        );
    }
    if let Some(b) = &r.b3 {
        row(
            "B3",
            format!(
                "list first page ({} items), {} plans",
                b.page_items, b.plans
            ),
            format!("{} B", b.first_page_bytes),
            lat(&b.first_page),
            mib(b.peak_rss_kib),
        );
        row(
            "B3",
            format!("list deep page (after {} plans)", b.deep_offset),
            format!("{}x first page p50", b.deep_to_first_p50),
            lat(&b.deep_page),
            "".into(),
        );
    }
    if let Some(b) = &r.b4 {
        row(
            "B4",
            format!(
                "restart to ready, {} plans, {} audit events",
                opt(b.plans),
                opt(b.audit_events)
            ),
            format!(
                "median {} (max {})",
                fmt_ms(b.ready_ms_median),
                fmt_ms(b.ready_ms_max)
            ),
            format!(
                "shutdown {}",
                b.restarts
                    .first()
                    .map_or("-".into(), |x| fmt_ms(x.shutdown_ms))
            ),
            mib(b.restarts.iter().filter_map(|x| x.peak_rss_kib).max()),
        );
    }
    if let Some(b) = &r.b5 {
        row(
            "B5",
            format!("audit query via API, {} events", opt(b.audit_events)),
            format!("{}..{} items", b.api_items_min, b.api_items_max),
            lat(&b.api),
            mib(b.peak_rss_kib),
        );
        row(
            "B5",
            "audit query offline (autonomy audit query --audit-dir)".into(),
            format!(
                "{} items, same as API: {}",
                b.offline_items, b.offline_matches_api
            ),
            lat(&b.offline),
            format!("(CLI {})", mib(b.offline_peak_rss_kib)),
        );
    }
    if let Some(b) = &r.b6 {
        row(
            "B6",
            "`autonomy rollout get` process start to exit".into(),
            b.cli_to_curl_p50
                .map_or("".into(), |v| format!("{}x curl p50", round3(v))),
            lat(&b.cli),
            mib(b.peak_rss_kib),
        );
        if let Some(c) = &b.curl {
            row("B6", "curl, same GET".into(), "".into(), lat(c), "".into());
        }
    }
    if let Some(b) = &r.b7 {
        let cpus = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.2}"));
        row(
            "B7",
            format!(
                "operator creates c={}, RBAC on, quiet ({} round{})",
                b.operator_concurrency,
                b.rounds,
                if b.rounds == 1 { "" } else { "s" }
            ),
            format!(
                "{:.0} creates/s, CP {} CPUs",
                b.quiet.run.creates_per_sec,
                cpus(b.quiet.cp_cpus_used)
            ),
            lat(&b.quiet.run.latency),
            mib(b.peak_rss_kib),
        );
        let flood = b.flooded.flood.as_ref();
        row(
            "B7",
            format!(
                "… under a flood: {} conns, {:.0} refused/s",
                b.flood_connections,
                flood.map_or(0.0, |f| f.refused_per_sec)
            ),
            format!(
                "{:.0} creates/s ({} errors), p99 {}x quiet",
                b.flooded.run.creates_per_sec,
                b.flooded.run.errors,
                b.p99_ratio.map_or("?".into(), |v| v.to_string())
            ),
            lat(&b.flooded.run.latency),
            "".into(),
        );
        row(
            "B7",
            format!("CPU under the flood ({} CPUs shared)", b.cpus),
            format!(
                "CP {}, flood generator {}, whole bench {}",
                cpus(b.flooded.cp_cpus_used),
                cpus(flood.and_then(|f| f.generator_cpus_used)),
                cpus(b.flooded.bench_cpus_used)
            ),
            format!(
                "disk stall share quiet {} flooded {}",
                cpus(b.quiet.io_pressure_some),
                cpus(b.flooded.io_pressure_some)
            ),
            "".into(),
        );
        row(
            "B7",
            format!(
                "store probe: the flood alone, {} refused",
                b.store_probe.flood.refused()
            ),
            format!(
                "data dir +{} B = {} B per refused request",
                b.store_probe.data_dir_growth_bytes, b.store_probe.bytes_per_refused_request
            ),
            format!(
                "CP CPU {} ms per refused request",
                b.store_probe
                    .cp_cpu_ms_per_refused_request
                    .map_or("?".into(), |v| v.to_string())
            ),
            "".into(),
        );
    }
    let cpus = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.2}"));
    if let Some(s) = &r.engine_io_seeding {
        row(
            "E",
            format!("register {} devices (c={})", s.devices, s.concurrency),
            format!("{:.0}/s, {:.1} s", s.registrations_per_sec, s.seconds),
            "".into(),
            "".into(),
        );
    }
    if let Some(e) = &r.e1 {
        row(
            "E1",
            format!(
                "idle polls, {} devices, {} conns ({} errors)",
                e.devices, e.connections, e.errors
            ),
            format!(
                "{:.0} polls/s; CP {} CPUs, generator {}",
                e.polls_per_sec,
                cpus(e.cp_cpus_used),
                cpus(e.generator_cpus_used)
            ),
            lat(&e.latency),
            mib(e.peak_rss_kib),
        );
    }
    if let Some(e) = &r.e2 {
        row(
            "E2",
            format!(
                "device reports, c={}, {} devices (avg batch {})",
                e.run.concurrency, e.devices, e.store.avg_batch
            ),
            format!(
                "{:.0} reports/s = {}x L1; CP {} CPUs, reporters {}",
                e.run.reports_per_sec,
                e.ratio_to_single_row_commits
                    .map_or("?".into(), |v| format!("{v:.2}")),
                cpus(e.cp_cpus_used),
                cpus(e.run.generator_cpus_used)
            ),
            lat(&e.run.latency),
            "".into(),
        );
    }
    if let Some(f) = &r.engine_fleet_seeding {
        row(
            "E",
            format!(
                "fleet: {} devices, {} plans of {}",
                f.devices.devices, f.plans, f.devices_per_plan
            ),
            format!(
                "registered in {:.1} s ({:.0}/s), dispatched {:.1} s after start",
                f.devices.seconds, f.devices.registrations_per_sec, f.start_to_dispatched_seconds
            ),
            format!(
                "{} mixing reports, {:.0}/s",
                f.mixing.reports, f.mixing.reports_per_sec
            ),
            mib(f.peak_rss_kib),
        );
    }
    if let Some(e) = &r.e3 {
        row(
            "E3",
            format!(
                "promoter tick, {} devices in {} plans ({} ticks)",
                e.devices, e.plans, e.ticks
            ),
            format!("{} actions", e.actions_applied),
            lat(&e.latency),
            "(in-process)".into(),
        );
    }
    if let Some(e) = &r.e4 {
        row(
            "E4",
            format!(
                "stuck scan, {} devices in {} plans ({} scans)",
                e.devices, e.plans, e.scans
            ),
            format!("stuck_count {:?}", e.stuck_count_seen),
            lat(&e.latency),
            mib(e.peak_rss_kib),
        );
    }
    if let Some(e) = &r.e5 {
        row(
            "E5",
            format!("last report -> next stage assigned ({} samples)", e.samples),
            format!("{}/{} plans completed", e.plans_completed, e.plans),
            lat(&e.latency),
            mib(e.peak_rss_kib),
        );
    }
    if let Some(f) = &r.f1 {
        row(
            "F1",
            format!("simulated fleet, {} devices, 4 stages", f.devices),
            format!(
                "completed={} in {:.1} s ({} reports, CP {} us/report)",
                f.completed,
                f.rollout_seconds,
                f.reports,
                crate::fleet::show(f.cp_cpu_us_per_report)
            ),
            format!(
                "sim {} KiB/device",
                crate::fleet::show(f.simulator_kib_per_device)
            ),
            mib(f.cp_peak_rss_kib),
        );
    }
    if let Some(f) = &r.f2 {
        row(
            "F2",
            format!(
                "{} devices ({} long-polling {} s), probe polls wait 0",
                f.devices, f.held, f.wait_seconds
            ),
            format!(
                "{} conns held, CP {} CPUs ({} us/request), generator {} CPUs",
                f.connections_peak,
                crate::fleet::show(f.cp_cpus_used),
                crate::fleet::show(f.cp_cpu_us_per_request),
                crate::fleet::show(f.generator_cpus_used)
            ),
            lat(&f.probe),
            mib(f.cp_peak_rss_kib),
        );
        row(
            "F2",
            format!("… 4-stage plan over {}: reports", f.rollout_devices),
            format!(
                "completed={} in {} s, {} reports, {} errors",
                f.completed,
                f.rollout_seconds.map_or("?".into(), |s| format!("{s:.1}")),
                f.reports,
                f.errors
            ),
            lat(&f.report_latency),
            format!("{} KiB/conn", crate::fleet::show(f.cp_kib_per_connection)),
        );
        row(
            "F2",
            "… long polls answered by time-out: overshoot".into(),
            format!("{} timed out", f.polls_timed_out),
            lat(&f.long_poll_overshoot),
            format!("gen {}", mib(f.generator_peak_rss_kib)),
        );
    }
    let ms_per = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.3}"));
    if let Some(p) = &r.p1 {
        for l in &p.levels {
            row(
                "P1",
                format!("raw PostgreSQL single-row commits, {} conns", l.concurrency),
                format!(
                    "{:.0} commits/s; PG {} ms CPU/commit",
                    l.limit.commits_per_sec,
                    ms_per(l.limit.pg_cpu_ms_per_commit)
                ),
                lat(&l.limit.commit_latency),
                "".into(),
            );
            row(
                "P1",
                format!(
                    "SQLite CP creates, c={} (avg batch {})",
                    l.concurrency, l.sqlite.store.avg_batch
                ),
                format!(
                    "{:.0} creates/s; CP {} ms, bench {} ms CPU/create",
                    l.sqlite.run.creates_per_sec,
                    ms_per(l.sqlite.cp_cpu_ms_per_create),
                    ms_per(l.sqlite.bench_cpu_ms_per_create)
                ),
                lat(&l.sqlite.run.latency),
                mib(l.sqlite.peak_rss_kib),
            );
            for pg in &l.postgres {
                row(
                    "P1",
                    format!(
                        "PostgreSQL, {} replica{}, c={} (avg batch {})",
                        pg.replicas,
                        if pg.replicas == 1 { "" } else { "s" },
                        l.concurrency,
                        pg.level.store.avg_batch
                    ),
                    format!(
                        "{:.0} creates/s = {}x PG limit; CPs {} ms, PG {} ms, bench {} ms CPU/create",
                        pg.level.run.creates_per_sec,
                        pg.level
                            .ratio_to_single_row_commits
                            .map_or("?".into(), |v| format!("{v:.2}")),
                        ms_per(pg.level.cp_cpu_ms_per_create),
                        ms_per(pg.pg_cpu_ms_per_create),
                        ms_per(pg.level.bench_cpu_ms_per_create)
                    ),
                    lat(&pg.level.run.latency),
                    mib(pg.level.peak_rss_kib),
                );
                let top: Vec<String> = pg
                    .pg_sessions
                    .iter()
                    .take(3)
                    .map(|(what, share)| format!("{what} {:.0}%", share * 100.0))
                    .collect();
                row(
                    "P1",
                    format!(
                        "… its PostgreSQL sessions ({} samples)",
                        pg.pg_session_samples
                    ),
                    top.join(", "),
                    "".into(),
                    "".into(),
                );
            }
        }
    }
    if let Some(p) = &r.p2 {
        row(
            "P2",
            format!(
                "SIGKILL leader -> first promoter write ({} kills, {} replicas)",
                p.kills, p.replicas
            ),
            format!(
                "{} missed; driver {} plans",
                p.missed, p.driver_plans_started
            ),
            lat(&p.to_first_promoter_write),
            "".into(),
        );
        row(
            "P2",
            "SIGKILL leader -> leader.acquired (lower bound)".into(),
            "".into(),
            lat(&p.to_leader_acquired),
            "".into(),
        );
    }
    if let Some(why) = &r.postgres_skipped {
        row(
            "P",
            "PostgreSQL phases".into(),
            format!("skipped: {why}"),
            "".into(),
            "".into(),
        );
    }
    let mut widths = [0usize; 5];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    out.push_str(&format!(
        "autonomy-bench ({}) {} .. {} ({:.0} s)\nmachine: {}\n\n",
        rep.mode,
        rep.started_at,
        rep.finished_at,
        rep.wall_seconds,
        rep.machine.line()
    ));
    for r in &rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            line.push_str(c);
            if i + 1 < r.len() {
                line.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str("\ntargets (issue 6; B7 issue 14; E1-E5 issue 10; P2 issue 12; F2 issue 13):\n");
    for t in &rep.targets {
        let verdict = match t.met {
            Some(true) => "met ",
            Some(false) => "MISS",
            None => "  - ",
        };
        let value = t
            .value
            .map_or("-".into(), |v| format!("{}{}", round3(v), t.unit));
        out.push_str(&format!(
            "  {verdict}  {}  {:<84} {value:>12}   ({})\n",
            t.id, t.target, t.basis
        ));
    }
    if rep.mode == "smoke" {
        out.push_str("\n(smoke sizes: these numbers show the bench works; they are not the targets' sizes)\n");
    }
    if let Some(e) = &rep.error {
        out.push_str(&format!("\nthe bench FAILED: {e}\n"));
    }
    out
}

//! `autonomy-lab`: lab drivers on the test kit, called by `scripts/labs/run_cli_audit_lab.sh`.
//!
//! `autonomy-lab val12 --bin PATH --evidence-dir DIR --work-dir DIR`: VAL12 — SIGKILL under
//! write load, a hung CP, a full disk (a tmpfs: needs root), corrupt stores at start-up. The
//! evidence and `val12-report.txt`/`val12-report.json` go straight into `--evidence-dir`; the
//! data dirs and scratch files under `--work-dir`. Exit 0 only if every check passes.
//!
//! `autonomy-lab val13 …`: VAL13 — a simulated fleet of 1,000 through a gated 4-stage plan.
//! `autonomy-lab val14 … [--devices N]`: VAL14 — Gate D: its own PostgreSQL cluster, three
//! replicas (one in a network namespace), the fenced leader under SIGKILL, SIGSTOP,
//! `pg_terminate_backend`, a PostgreSQL restart, a fleet rollout and a partition (needs root).

mod lab;
mod report;
mod val12;
mod val13;
mod val14;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "autonomy-lab",
    about = "AutonomyOps lab drivers (on autonomy-testkit)"
)]
struct Cli {
    #[command(subcommand)]
    lab: LabCmd,
}

#[derive(Subcommand)]
enum LabCmd {
    /// VAL12 — chaos beyond the plan (ports 18997 and 18998).
    Val12 {
        /// The `autonomy` binary.
        #[arg(long, env = "AUTONOMY_BIN")]
        bin: PathBuf,
        /// Where the evidence and val12-report.{txt,json} go (made empty first).
        #[arg(long)]
        evidence_dir: PathBuf,
        /// Scratch: data dirs, copies, the tmpfs mount point (made empty first).
        #[arg(long)]
        work_dir: PathBuf,
        /// Seed of the SIGKILL moments and the writers' choices (1 to 9 digits; default: from
        /// the clock).
        #[arg(long, env = "VAL12_SEED")]
        seed: Option<String>,
    },
    /// VAL13 — a fleet rollout under chaos (port 18999): 1,000 simulated devices.
    Val13 {
        /// The `autonomy` binary.
        #[arg(long, env = "AUTONOMY_BIN")]
        bin: PathBuf,
        /// Where the evidence and val13-report.{txt,json} go (made empty first).
        #[arg(long)]
        evidence_dir: PathBuf,
        /// Scratch: the data dir and audit dir (made empty first).
        #[arg(long)]
        work_dir: PathBuf,
        /// Seed of the fleet's behaviours (1 to 9 digits; default 13).
        #[arg(long, env = "VAL13_SEED")]
        seed: Option<String>,
    },
    /// VAL14 — Gate D (ports 18981–18983, PostgreSQL on 18984): three replicas over one
    /// PostgreSQL, leader kills, freezes, a terminated session, a PostgreSQL restart, a fleet
    /// rollout under leader chaos, a network partition (a network namespace). Needs root.
    Val14 {
        /// The `autonomy` binary.
        #[arg(long, env = "AUTONOMY_BIN")]
        bin: PathBuf,
        /// Where the evidence and val14-report.{txt,json} go (made empty first).
        #[arg(long)]
        evidence_dir: PathBuf,
        /// Scratch: the replicas' data and audit dirs (made empty first).
        #[arg(long)]
        work_dir: PathBuf,
        /// Devices of the simulated fleet rollout (VAL14-06).
        #[arg(long, env = "VAL14_DEVICES", default_value_t = val14::DEVICES,
              value_parser = clap::value_parser!(u32).range(20..=200_000))]
        devices: u32,
        /// The script that makes the throwaway PostgreSQL cluster.
        #[arg(long, env = "VAL14_PG_SCRIPT", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/ci/postgres.sh"))]
        pg_script: PathBuf,
        /// The cluster's directory (owned by the postgres user, so not under a private work
        /// dir; removed at the end) [default: $TMPDIR/autonomy-val14-pg-<pid>].
        #[arg(long, env = "VAL14_PG_DIR")]
        pg_dir: Option<PathBuf>,
    },
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

fn fresh_dir(p: &Path) -> anyhow::Result<()> {
    if p.exists() {
        std::fs::remove_dir_all(p).with_context(|| format!("cannot empty {}", p.display()))?;
    }
    std::fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))
}

/// A lab on `port` with fresh evidence and work dirs (data, audit and scratch dirs inside the
/// work dir).
fn new_lab(
    name: &'static str,
    port: u16,
    operator: &str,
    bin: &Path,
    evidence_dir: &Path,
    work_dir: &Path,
) -> anyhow::Result<lab::Lab> {
    let bin = absolute(bin)?;
    anyhow::ensure!(bin.is_file(), "{} is not an executable file", bin.display());
    let (dir, work_root) = (absolute(evidence_dir)?, absolute(work_dir)?);
    fresh_dir(&dir)?;
    fresh_dir(&work_root)?;
    let (data_dir, audit_dir, work) = (
        work_root.join("data"),
        work_root.join("audit"),
        work_root.join("work"),
    );
    for d in [&data_dir, &audit_dir, &work] {
        std::fs::create_dir_all(d)?;
    }
    Ok(lab::Lab {
        name,
        bin,
        dir,
        work,
        port,
        base: format!("http://127.0.0.1:{port}"),
        data_dir,
        audit_dir,
        operator: operator.into(),
        report: report::Report {
            lab: name,
            ..report::Report::default()
        },
        cp: None,
        start_error: String::new(),
        ready_ms: String::new(),
        started_at: lab::utc_now(),
        t0: Instant::now(),
        cp_args: Vec::new(),
    })
}

/// A `--seed` of 1 to 9 digits, else `None`.
fn seed_of(seed: Option<String>) -> anyhow::Result<Option<u64>> {
    Ok(
        match seed.filter(|s| (1..=9).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())) {
            Some(s) => Some(s.parse()?),
            None => None,
        },
    )
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    // The lab (and its CP, stopped when dropped) lives until the exit code is known.
    let (_lab, pass) = match cli.lab {
        LabCmd::Val12 {
            bin,
            evidence_dir,
            work_dir,
            seed,
        } => {
            let seed = seed_of(seed)?.unwrap_or_else(|| {
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .subsec_nanos();
                u64::from(nanos) % (1 << 30)
            });
            let mut lab = new_lab(
                "val12",
                val12::PORT,
                "val12-chaos-op",
                &bin,
                &evidence_dir,
                &work_dir,
            )?;
            lab.say(&format!("starting (evidence: {})", lab.dir.display()));
            let pass = val12::run(&mut lab, seed)?;
            (lab, pass)
        }
        LabCmd::Val13 {
            bin,
            evidence_dir,
            work_dir,
            seed,
        } => {
            let seed = seed_of(seed)?.unwrap_or(13);
            let mut lab = new_lab(
                "val13",
                val13::PORT,
                "val13-fleet-op",
                &bin,
                &evidence_dir,
                &work_dir,
            )?;
            lab.say(&format!("starting (evidence: {})", lab.dir.display()));
            let pass = val13::run(&mut lab, seed)?;
            (lab, pass)
        }
        LabCmd::Val14 {
            bin,
            evidence_dir,
            work_dir,
            devices,
            pg_script,
            pg_dir,
        } => {
            let mut lab = new_lab(
                "val14",
                val14::PORTS[0],
                "val14-gate-d-op",
                &bin,
                &evidence_dir,
                &work_dir,
            )?;
            lab.say(&format!("starting (evidence: {})", lab.dir.display()));
            let opts = val14::Options {
                devices,
                pg_script: absolute(&pg_script)?,
                pg_dir: match pg_dir {
                    Some(p) => absolute(&p)?,
                    None => std::env::temp_dir()
                        .join(format!("autonomy-val14-pg-{}", std::process::id())),
                },
            };
            let pass = val14::run(&mut lab, &opts)?;
            (lab, pass)
        }
    };
    Ok(if pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

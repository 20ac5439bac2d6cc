//! The control plane under test: the test kit's [`Cp`] (the real `autonomy serve` on
//! 127.0.0.1 port 0 with `AUTONOMY_RBAC_ENFORCEMENT=0`, `=1` for B7, its stderr appended to a
//! log file, stopped with SIGTERM and, if it does not exit in time, SIGKILL; dropping a [`Cp`]
//! that was not stopped stops it the same way), polled for readiness every 2 ms so start-up
//! times are measured to that resolution.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use autonomy_testkit::CpOptions;

pub use autonomy_testkit::process::{clean_env, clock_ticks, cpu_seconds, proc_status_kib};
pub use autonomy_testkit::Cp;

/// How often readiness is polled while a CP starts.
const POLL: Duration = Duration::from_millis(2);
/// How long a CP dropped without [`stop`] may take to exit after SIGTERM.
const DROP_STOP_LIMIT: Duration = Duration::from_secs(10);

/// How a CP stopped.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stopped {
    /// SIGTERM to exit, milliseconds.
    pub shutdown_ms: f64,
    pub exit_code: Option<i32>,
    /// It did not exit within the limit and was killed.
    pub killed: bool,
}

fn options(bin: &Path, data_dir: &Path, log: &Path, limit: Duration) -> CpOptions {
    let mut options = CpOptions::new(bin, data_dir, log);
    options.start_limit = limit;
    options.stop_limit = DROP_STOP_LIMIT;
    options.poll = POLL;
    options
}

/// Spawns `bin serve` on `data_dir` and waits (at most `limit`) for its `listening on` line.
pub fn spawn(bin: &Path, data_dir: &Path, log: &Path, limit: Duration) -> anyhow::Result<Cp> {
    Cp::spawn(options(bin, data_dir, log, limit))
        .with_context(|| format!("starting {} serve (log {})", bin.display(), log.display()))
}

/// Spawns and waits for /v1/health.
pub fn start(bin: &Path, data_dir: &Path, log: &Path, limit: Duration) -> anyhow::Result<Cp> {
    Cp::start(options(bin, data_dir, log, limit))
        .with_context(|| format!("starting {} serve (log {})", bin.display(), log.display()))
}

/// [`start`] with more `serve` arguments after the defaults (e.g. `--promoter-interval 0.2`).
pub fn start_args(
    bin: &Path,
    data_dir: &Path,
    log: &Path,
    limit: Duration,
    args: &[&str],
) -> anyhow::Result<Cp> {
    let mut options = options(bin, data_dir, log, limit);
    options.args.extend(args.iter().map(|a| a.to_string()));
    Cp::start(options)
        .with_context(|| format!("starting {} serve (log {})", bin.display(), log.display()))
}

/// One replica over PostgreSQL (P1, P2): `serve --database-url URL --replica NAME` plus `args`,
/// its own `data_dir`. With `lead` it also waits until this replica is the leader.
pub fn start_pg(
    bin: &Path,
    data_dir: &Path,
    log: &Path,
    limit: Duration,
    pg: (&str, &str),
    lead: bool,
    args: &[&str],
) -> anyhow::Result<Cp> {
    let (url, replica) = pg;
    let mut options = options(bin, data_dir, log, limit);
    options.database_url = Some(url.to_string());
    options.wait_leader = lead;
    options
        .args
        .extend(["--replica".to_string(), replica.to_string()]);
    options.args.extend(args.iter().map(|a| a.to_string()));
    Cp::start(options)
        .with_context(|| format!("starting replica {replica} (log {})", log.display()))
}

/// [`start`] with RBAC enforced (`AUTONOMY_RBAC_ENFORCEMENT=1`, B7): the admin token is in
/// `<data_dir>/admin.token` ([`Cp::admin_token`]).
pub fn start_rbac(bin: &Path, data_dir: &Path, log: &Path, limit: Duration) -> anyhow::Result<Cp> {
    let mut options = options(bin, data_dir, log, limit);
    options
        .env
        .push(("AUTONOMY_RBAC_ENFORCEMENT".into(), "1".into()));
    Cp::start(options)
        .with_context(|| format!("starting {} serve (log {})", bin.display(), log.display()))
}

/// SIGTERM, wait up to `limit`, then kill.
pub fn stop(mut cp: Cp, limit: Duration) -> anyhow::Result<Stopped> {
    let stopped = cp.terminate(limit)?;
    Ok(Stopped {
        shutdown_ms: stopped.elapsed.as_secs_f64() * 1e3,
        exit_code: stopped.status.code(),
        killed: stopped.killed,
    })
}

/// The last value of `key=N` in a CP log (e.g. `plans`, `audit_last_seq` of "store open").
pub fn log_value(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let needle = format!("{key}=");
    text.lines().rev().find_map(|l| {
        let at = l.find(&needle)?;
        if at > 0 && !l[..at].ends_with(' ') {
            return None;
        }
        l[at + needle.len()..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_key_values_from_the_log() {
        let dir = autonomy_testkit::TestDir::create("bench-log").unwrap();
        let path = dir.path().join("cp.log");
        std::fs::write(
            &path,
            "x INFO store open db=/a plans=10 audit_last_seq=11\n\
             x INFO store open db=/a plans=20 audit_last_seq=21 audit_replayed=0\n",
        )
        .unwrap();
        assert_eq!(log_value(&path, "plans"), Some(20));
        assert_eq!(log_value(&path, "audit_last_seq"), Some(21));
        assert_eq!(log_value(&path, "missing"), None);
    }
}

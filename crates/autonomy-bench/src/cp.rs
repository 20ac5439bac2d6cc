//! The control plane under test: the real `autonomy serve` binary, spawned on 127.0.0.1 port 0
//! with `AUTONOMY_RBAC_ENFORCEMENT=0`, its stderr logged to a file, stopped with SIGTERM (via
//! `kill`) and, if it does not exit in time, `Child::kill`. Dropping a [`Cp`] that was not
//! stopped stops it the same way, so an error anywhere in the bench never leaves one behind.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use crate::http::Http;

/// How often readiness is polled while a CP starts.
const POLL: Duration = Duration::from_millis(2);

pub struct Cp {
    child: Child,
    pub pid: u32,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub spawned_at: Instant,
    /// Spawn to the `listening on` line.
    pub listening_after: Duration,
    pub log: PathBuf,
    stopped: bool,
}

/// How a CP stopped.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stopped {
    /// SIGTERM to exit, milliseconds.
    pub shutdown_ms: f64,
    pub exit_code: Option<i32>,
    /// It did not exit within the limit and was killed.
    pub killed: bool,
}

/// Removes every `AUTONOMY_*` variable so the caller's environment cannot change what is run.
pub fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AUTONOMY_") {
            cmd.env_remove(k);
        }
    }
}

impl Cp {
    /// Spawns `bin serve` on `data_dir` and waits (at most `limit`) for its `listening on` line.
    pub fn spawn(bin: &Path, data_dir: &Path, log: &Path, limit: Duration) -> anyhow::Result<Cp> {
        let log_file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let mut cmd = Command::new(bin);
        clean_env(&mut cmd);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .env("AUTONOMY_RBAC_ENFORCEMENT", "0")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        let spawned_at = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run {} serve", bin.display()))?;
        let pid = child.id();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout pipe"))?;
        let (tx, rx) = mpsc::channel();
        // Reads the first line, then drains stdout until the CP exits (so it never blocks on a
        // full pipe); the thread ends with the process.
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = tx.send(reader.read_line(&mut line).map(|_| line));
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let mut cp = Cp {
            child,
            pid,
            base: String::new(),
            spawned_at,
            listening_after: Duration::ZERO,
            log: log.to_path_buf(),
            stopped: false,
        };
        let line = match rx.recv_timeout(limit) {
            Ok(Ok(line)) if !line.is_empty() => line,
            Ok(_) => bail!(
                "the CP exited before it printed its address; log {}:\n{}",
                log.display(),
                tail(log)
            ),
            Err(_) => bail!(
                "the CP printed no address within {limit:?}; log {}:\n{}",
                log.display(),
                tail(log)
            ),
        };
        cp.listening_after = spawned_at.elapsed();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .ok_or_else(|| anyhow!("unexpected first line from the CP: {line:?}"))?;
        cp.base = format!("http://{addr}");
        Ok(cp)
    }

    /// Polls `path` until it answers 2xx or `limit` passes; returns the time since spawn.
    pub fn wait_for(&mut self, path: &str, limit: Duration) -> anyhow::Result<Duration> {
        let http = Http::new(&self.base, Duration::from_secs(5))?;
        let deadline = Instant::now() + limit;
        loop {
            if http.call(&http.api().get::<()>(path, &[])).is_ok() {
                return Ok(self.spawned_at.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the CP exited ({status}) while waiting for {path}; log {}:\n{}",
                    self.log.display(),
                    tail(&self.log)
                );
            }
            if Instant::now() >= deadline {
                bail!("{path} did not answer 2xx within {limit:?}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// Spawns and waits for /v1/health.
    pub fn start(bin: &Path, data_dir: &Path, log: &Path, limit: Duration) -> anyhow::Result<Cp> {
        let mut cp = Cp::spawn(bin, data_dir, log, limit)?;
        cp.wait_for("/v1/health", limit)?;
        Ok(cp)
    }

    /// Peak resident set size so far (`VmHWM`), KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid, "VmHWM:")
    }

    /// User + system CPU time so far, seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(&format!("/proc/{}/stat", self.pid))
    }

    /// `/proc/<pid>/io` counters (`wchar`, `syscw`, `write_bytes`, …).
    pub fn io(&self) -> Option<std::collections::BTreeMap<String, u64>> {
        let text = std::fs::read_to_string(format!("/proc/{}/io", self.pid)).ok()?;
        Some(
            text.lines()
                .filter_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    Some((k.trim().to_string(), v.trim().parse().ok()?))
                })
                .collect(),
        )
    }

    /// CPU seconds so far per thread name (`store-writer`, `tokio-rt-worker`, …).
    pub fn cpu_by_thread(&self) -> std::collections::BTreeMap<String, f64> {
        let mut out = std::collections::BTreeMap::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return out;
        };
        for task in tasks.flatten() {
            let dir = task.path();
            let name = std::fs::read_to_string(dir.join("comm"))
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            if let Some(secs) = cpu_seconds(&dir.join("stat").to_string_lossy()) {
                *out.entry(name).or_insert(0.0) += secs;
            }
        }
        out
    }

    /// SIGTERM, wait up to `limit`, then kill.
    pub fn stop(mut self, limit: Duration) -> anyhow::Result<Stopped> {
        self.stopped = true;
        terminate(&mut self.child, self.pid, limit)
    }
}

impl Drop for Cp {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = terminate(&mut self.child, self.pid, Duration::from_secs(10));
        }
    }
}

fn terminate(child: &mut Child, pid: u32, limit: Duration) -> anyhow::Result<Stopped> {
    let started = Instant::now();
    if let Some(status) = child.try_wait()? {
        return Ok(Stopped {
            shutdown_ms: 0.0,
            exit_code: status.code(),
            killed: false,
        });
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = started + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Stopped {
                shutdown_ms: started.elapsed().as_secs_f64() * 1e3,
                exit_code: status.code(),
                killed: false,
            });
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let status = child.wait()?;
            return Ok(Stopped {
                shutdown_ms: started.elapsed().as_secs_f64() * 1e3,
                exit_code: status.code(),
                killed: true,
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A `kB` field of `/proc/<pid>/status`.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime of a `/proc/.../stat` file, seconds.
pub fn cpu_seconds(stat_path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(stat_path).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command name: state is field 3 of the file, utime 14, stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|v: &f64| *v > 0.0)
            .unwrap_or(100.0)
    })
}

/// The last lines of a log, for error messages.
pub fn tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
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
    fn parses_proc_stat_cpu_times() {
        let dir = std::env::temp_dir().join(format!("autonomy-bench-stat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stat");
        // pid (comm with ) and spaces) state ppid ... utime=250 stime=50
        std::fs::write(
            &path,
            "123 (a b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0\n",
        )
        .unwrap();
        let secs = cpu_seconds(path.to_str().unwrap()).unwrap();
        assert!((secs - 300.0 / clock_ticks()).abs() < 1e-9);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_key_values_from_the_log() {
        let dir = std::env::temp_dir().join(format!("autonomy-bench-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cp.log");
        std::fs::write(
            &path,
            "x INFO store open db=/a plans=10 audit_last_seq=11\n\
             x INFO store open db=/a plans=20 audit_last_seq=21 audit_replayed=0\n",
        )
        .unwrap();
        assert_eq!(log_value(&path, "plans"), Some(20));
        assert_eq!(log_value(&path, "audit_last_seq"), Some(21));
        assert_eq!(log_value(&path, "missing"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn own_process_has_status_fields() {
        assert!(proc_status_kib(std::process::id(), "VmHWM:").is_some_and(|v| v > 0));
    }
}

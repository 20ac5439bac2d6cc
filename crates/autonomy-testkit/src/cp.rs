//! The control plane under test: the real `autonomy serve`, spawned with a clean environment
//! (every inherited `AUTONOMY_*` removed, `AUTONOMY_RBAC_ENFORCEMENT=0` unless the options say
//! otherwise), on 127.0.0.1 only, its stderr appended to a log file. [`Cp::start`] returns once
//! it printed `listening on http://…` and answered its ready path with 200; dropping a [`Cp`]
//! that still runs stops it with SIGTERM (SIGKILL after [`CpOptions::stop_limit`]).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::http;
use crate::process::{self, Signal};

/// How long a SIGKILLed CP may take to be reaped.
const KILL_LIMIT: Duration = Duration::from_secs(5);

/// How to start a CP. [`CpOptions::new`] gives the defaults; the fields are public to change.
#[derive(Debug, Clone)]
pub struct CpOptions {
    /// The `autonomy` binary.
    pub bin: PathBuf,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// `--listen` (default `127.0.0.1:0`); not passed when `args` has its own `--listen`.
    pub listen: String,
    /// `--audit-dir`, if any.
    pub audit_dir: Option<PathBuf>,
    /// More arguments after `serve … --data-dir D [--audit-dir A]`.
    pub args: Vec<String>,
    /// More environment, set after `AUTONOMY_RBAC_ENFORCEMENT=0` and `RUST_LOG=info`.
    pub env: Vec<(String, String)>,
    /// The CP's stderr is appended here.
    pub log: PathBuf,
    /// Also append its stdout (the `listening on` line included) to `log`.
    pub stdout_to_log: bool,
    /// Spawn to ready, at most.
    pub start_limit: Duration,
    /// SIGTERM to exit, at most (then SIGKILL), when dropped.
    pub stop_limit: Duration,
    /// Polled after the `listening on` line until it answers 200 (default `/v1/health`).
    pub ready_path: String,
    /// How often `ready_path` is polled.
    pub poll: Duration,
    /// `--database-url`: the CP runs over PostgreSQL instead of SQLite. [`CpOptions::new`]
    /// sets it when the tests run against PostgreSQL (see [`test_database_url`]).
    pub database_url: Option<String>,
    /// After ready, also wait until this CP says it is the leader (`GET /v1/leader`): on
    /// PostgreSQL a lone replica takes the lock within a second or two, and audits
    /// `leader.acquired` when it does, so tests that count events start after it. Default:
    /// set when `database_url` is; a test's second replica clears it.
    pub wait_leader: bool,
}

pub use crate::pg::{on_postgres, test_database_url, TEST_DATABASE_ENV};

impl CpOptions {
    pub fn new(bin: &Path, data_dir: &Path, log: &Path) -> CpOptions {
        CpOptions {
            bin: bin.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            listen: "127.0.0.1:0".into(),
            audit_dir: None,
            args: Vec::new(),
            env: Vec::new(),
            log: log.to_path_buf(),
            stdout_to_log: false,
            start_limit: Duration::from_secs(10),
            stop_limit: Duration::from_secs(15),
            ready_path: "/v1/health".into(),
            poll: Duration::from_millis(50),
            database_url: test_database_url(data_dir),
            wait_leader: on_postgres(),
        }
    }

    fn has_listen_arg(&self) -> bool {
        self.args
            .iter()
            .any(|a| a == "--listen" || a.starts_with("--listen="))
    }
}

/// Why a CP did not come up. It is not running any more (killed and reaped if it was).
#[derive(Debug, thiserror::Error)]
#[error(
    "{why} (exit status {status:?}; first stdout line {stdout_first_line:?}); its log:\n{stderr}"
)]
pub struct StartError {
    /// The exit status, if it exited (or was killed).
    pub status: Option<ExitStatus>,
    pub stdout_first_line: Option<String>,
    /// What it wrote to its log during this start.
    pub stderr: String,
    pub why: String,
}

/// How a CP stopped.
#[derive(Debug, Clone, Copy)]
pub struct Stopped {
    pub status: ExitStatus,
    /// The signal to the exit.
    pub elapsed: Duration,
    /// SIGTERM did not end it within the limit; it was SIGKILLed.
    pub killed: bool,
}

impl Stopped {
    /// As a shell reports it (143 = SIGTERM, 137 = SIGKILL).
    pub fn shell_code(&self) -> i32 {
        process::shell_code(self.status)
    }
}

/// A running (or stopped, restartable) `autonomy serve`.
pub struct Cp {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT` of the last start.
    pub url: String,
    options: CpOptions,
    log_offset: u64,
    spawned_at: Instant,
    listening_after: Duration,
    ready_after: Option<Duration>,
    stdout_rest: Arc<Mutex<String>>,
}

impl Cp {
    /// Spawns the CP and waits for its `listening on` line and a 200 from the ready path.
    pub fn start(options: CpOptions) -> Result<Cp, StartError> {
        let mut cp = Cp::spawn(options)?;
        let path = cp.options.ready_path.clone();
        let left = cp
            .options
            .start_limit
            .saturating_sub(cp.spawned_at.elapsed());
        cp.wait_ready(&path, left)?;
        cp.wait_leader()?;
        Ok(cp)
    }

    /// With [`CpOptions::wait_leader`], polls `GET /v1/leader` until this CP leads (bounded
    /// by `start_limit` from the spawn).
    fn wait_leader(&mut self) -> Result<(), StartError> {
        if !self.options.wait_leader {
            return Ok(());
        }
        let deadline = self.spawned_at + self.options.start_limit;
        let url = format!("{}/v1/leader", self.url);
        loop {
            if let Ok(r) = http::call("GET", &url, &[], None, Duration::from_secs(1)) {
                if r.status == 200 && String::from_utf8_lossy(&r.body).contains("\"self\":true") {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(self.fail_in_place(
                    "the CP did not become the leader (GET /v1/leader) in time".into(),
                ));
            }
            thread::sleep(self.options.poll);
        }
    }

    /// Spawns the CP and waits (at most `start_limit`) only for its `listening on` line.
    pub fn spawn(options: CpOptions) -> Result<Cp, StartError> {
        let early = |why: String| StartError {
            status: None,
            stdout_first_line: None,
            stderr: String::new(),
            why,
        };
        let log = File::options()
            .create(true)
            .append(true)
            .open(&options.log)
            .map_err(|e| early(format!("cannot open {}: {e}", options.log.display())))?;
        let log_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let mut cmd = process::command(&options.bin);
        cmd.arg("serve");
        if !options.has_listen_arg() {
            cmd.args(["--listen", &options.listen]);
        }
        cmd.arg("--data-dir").arg(&options.data_dir);
        if let Some(dir) = &options.audit_dir {
            cmd.arg("--audit-dir").arg(dir);
        }
        if let Some(url) = &options.database_url {
            cmd.arg("--database-url").arg(url);
        }
        cmd.args(&options.args);
        cmd.env("AUTONOMY_RBAC_ENFORCEMENT", "0");
        cmd.env("RUST_LOG", "info");
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let spawned_at = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| early(format!("cannot run {} serve: {e}", options.bin.display())))?;

        // Reads the first line, then the rest until the CP exits (so it never blocks on a full
        // pipe); the thread ends with the process.
        let (tx, rx) = mpsc::channel();
        let stdout_rest = Arc::new(Mutex::new(String::new()));
        let rest = stdout_rest.clone();
        let stdout = child.stdout.take();
        let mut echo = if options.stdout_to_log {
            File::options().append(true).open(&options.log).ok()
        } else {
            None
        };
        thread::spawn(move || {
            let Some(stdout) = stdout else { return };
            let mut first = true;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(f) = echo.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                if first {
                    first = false;
                    let _ = tx.send(line);
                } else {
                    let mut rest = rest.lock().unwrap_or_else(|e| e.into_inner());
                    rest.push_str(&line);
                    rest.push('\n');
                }
            }
        });

        let mut cp = Cp {
            child: Some(child),
            url: String::new(),
            options,
            log_offset,
            spawned_at,
            listening_after: Duration::ZERO,
            ready_after: None,
            stdout_rest,
        };
        let first = match rx.recv_timeout(cp.options.start_limit) {
            Ok(line) => line,
            Err(_) => {
                // Either it exited without a line, or it is silent: both are failures.
                if let Some(c) = cp.child.as_mut() {
                    process::wait_bounded(c, Duration::from_secs(2));
                }
                return Err(cp.fail(None, "no `listening on` line on stdout".into()));
            }
        };
        cp.listening_after = spawned_at.elapsed();
        let Some(url) = first.strip_prefix("listening on ") else {
            return Err(cp.fail(Some(first.clone()), "unexpected first stdout line".into()));
        };
        let url = url.trim().to_string();
        let fixed = !cp.options.has_listen_arg() && !cp.options.listen.ends_with(":0");
        // Loopback, or exactly the fixed address asked for (a lab's replica inside a network
        // namespace of its own listens on the namespace's address).
        let asked = fixed && url == format!("http://{}", cp.options.listen);
        if !(url.starts_with("http://127.0.0.1:") || asked)
            || (fixed && url != format!("http://{}", cp.options.listen))
        {
            return Err(cp.fail(Some(first.clone()), "the CP bound something else".into()));
        }
        cp.url = url;
        Ok(cp)
    }

    /// Polls `path` every `poll` until it answers 200 (returns spawn to ready) or `limit`
    /// passes or the CP exits (then it is killed and reaped: an `Err`).
    pub fn wait_ready(&mut self, path: &str, limit: Duration) -> Result<Duration, StartError> {
        let deadline = Instant::now() + limit;
        let url = format!("{}{path}", self.url);
        loop {
            if let Ok(r) = http::call("GET", &url, &[], None, Duration::from_secs(1)) {
                if r.status == 200 {
                    let ready = self.spawned_at.elapsed();
                    self.ready_after = Some(ready);
                    return Ok(ready);
                }
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(self.fail_in_place(format!("the CP exited before {path} answered 200")));
            }
            if Instant::now() >= deadline {
                return Err(
                    self.fail_in_place(format!("GET {path} never answered 200 within {limit:?}"))
                );
            }
            thread::sleep(self.options.poll);
        }
    }

    fn fail_in_place(&mut self, why: String) -> StartError {
        let first = Some(format!("listening on {}", self.url));
        let status = self.reap_or_kill();
        StartError {
            status,
            stdout_first_line: first,
            stderr: self.stderr(),
            why,
        }
    }

    fn fail(mut self, first: Option<String>, why: String) -> StartError {
        StartError {
            stdout_first_line: first,
            ..self.fail_in_place(why)
        }
    }

    /// The exit status if it exited, else SIGKILL and reap. Never signals it again after.
    fn reap_or_kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let _ = child.kill();
        process::wait_bounded(&mut child, KILL_LIMIT)
    }

    /// Starts a CP again with the same options (same data dir; with port 0 the port, and
    /// `url`, change). It must not be running.
    pub fn start_again(&mut self) -> Result<(), StartError> {
        if self.is_running() {
            return Err(StartError {
                status: None,
                stdout_first_line: None,
                stderr: String::new(),
                why: "start_again: the CP is still running".into(),
            });
        }
        *self = Cp::start(self.options.clone())?;
        Ok(())
    }

    /// Its pid, while it is not reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// It runs (not exited; a stopped process counts as running).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGTERM (and SIGCONT, so a SIGSTOPped CP acts on it), then waits up to `limit`, then
    /// SIGKILL. An `Err` only if it was not running or could not be reaped.
    pub fn terminate(&mut self, limit: Duration) -> std::io::Result<Stopped> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| std::io::Error::other("the CP is not running"))?;
        let started = Instant::now();
        if let Some(status) = child.try_wait()? {
            // Already gone (and now reaped): do not signal a stale pid.
            return Ok(Stopped {
                status,
                elapsed: Duration::ZERO,
                killed: false,
            });
        }
        let _ = process::signal(child.id(), Signal::Term);
        let _ = process::signal(child.id(), Signal::Cont);
        if let Some(status) =
            process::wait_polling(&mut child, limit, Duration::from_millis(5), || {})
        {
            return Ok(Stopped {
                status,
                elapsed: started.elapsed(),
                killed: false,
            });
        }
        let _ = child.kill();
        let status = process::wait_bounded(&mut child, KILL_LIMIT)
            .ok_or_else(|| std::io::Error::other("the CP survived SIGKILL"))?;
        Ok(Stopped {
            status,
            elapsed: started.elapsed(),
            killed: true,
        })
    }

    /// SIGKILL and reap (bounded). `Ok(None)` if it was not running.
    pub fn kill(&mut self) -> std::io::Result<Option<Stopped>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let started = Instant::now();
        if let Some(status) = child.try_wait()? {
            return Ok(Some(Stopped {
                status,
                elapsed: Duration::ZERO,
                killed: false,
            }));
        }
        let _ = child.kill();
        match process::wait_polling(&mut child, KILL_LIMIT, Duration::from_millis(5), || {}) {
            Some(status) => Ok(Some(Stopped {
                status,
                elapsed: started.elapsed(),
                killed: true,
            })),
            None => {
                self.child = Some(child);
                Err(std::io::Error::other("the CP survived SIGKILL"))
            }
        }
    }

    /// Sends `sig` (e.g. SIGSTOP, SIGCONT) to the CP, which must not be reaped yet.
    pub fn signal(&self, sig: Signal) -> std::io::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| std::io::Error::other("the CP is not running"))?;
        process::signal(pid, sig)
    }

    pub fn options(&self) -> &CpOptions {
        &self.options
    }

    pub fn data_dir(&self) -> &Path {
        &self.options.data_dir
    }

    /// The audit dir it uses: the option, `--audit-dir` in the args, `AUTONOMY_AUDIT_DIR` in
    /// the env, else `<data-dir>/audit`.
    pub fn audit_dir(&self) -> PathBuf {
        if let Some(dir) = &self.options.audit_dir {
            return dir.clone();
        }
        if let Some(i) = self.options.args.iter().position(|a| a == "--audit-dir") {
            if let Some(dir) = self.options.args.get(i + 1) {
                return PathBuf::from(dir);
            }
        }
        if let Some((_, dir)) = self
            .options
            .env
            .iter()
            .find(|(k, _)| k == "AUTONOMY_AUDIT_DIR")
        {
            return PathBuf::from(dir);
        }
        self.options.data_dir.join("audit")
    }

    /// The admin token the CP writes on first start (RBAC on).
    pub fn admin_token(&self) -> std::io::Result<String> {
        let path = self.options.data_dir.join("admin.token");
        Ok(std::fs::read_to_string(path)?.trim().to_string())
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.options.log
    }

    /// What this start of the CP wrote to its log so far (its stderr).
    pub fn stderr(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.options.log) {
            if f.seek(SeekFrom::Start(self.log_offset)).is_ok() {
                let mut buf = Vec::new();
                let _ = f.read_to_end(&mut buf);
                text = String::from_utf8_lossy(&buf).into_owned();
            }
        }
        text
    }

    /// What it wrote to stdout after its `listening on` line.
    pub fn stdout_rest(&self) -> String {
        self.stdout_rest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// When it was spawned.
    pub fn spawned_at(&self) -> Instant {
        self.spawned_at
    }

    /// Spawn to the `listening on` line.
    pub fn listening_after(&self) -> Duration {
        self.listening_after
    }

    /// Spawn to the first 200 from the ready path (`None` before [`Cp::wait_ready`]).
    pub fn ready_after(&self) -> Option<Duration> {
        self.ready_after
    }

    /// Peak resident set size so far (`VmHWM`), KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        process::peak_rss_kib(self.pid()?)
    }

    /// User + system CPU time so far, seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        process::cpu_seconds(Path::new(&format!("/proc/{}/stat", self.pid()?)))
    }

    /// `/proc/<pid>/io` counters.
    pub fn io(&self) -> Option<std::collections::BTreeMap<String, u64>> {
        process::proc_io(self.pid()?)
    }

    /// CPU seconds so far per thread name.
    pub fn cpu_by_thread(&self) -> std::collections::BTreeMap<String, f64> {
        self.pid().map(process::cpu_by_thread).unwrap_or_default()
    }
}

impl Drop for Cp {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.terminate(self.options.stop_limit);
        }
    }
}

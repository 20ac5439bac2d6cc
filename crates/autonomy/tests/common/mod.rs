//! Black-box test harness: the real `autonomy` binary, driven through `autonomy-testkit`.
//!
//! - [`Cp`]: a control plane (`autonomy serve --listen 127.0.0.1:0`) on a fresh data dir,
//!   started and health-polled, stopped with SIGTERM (then SIGKILL) on drop; restartable on the
//!   same data dir. Failures panic (this is a test), with the CP's log.
//! - [`autonomy`] / [`run`]: run the CLI with a clean environment and a bounded wait.
//! - [`http`]: a raw HTTP call returning `(status, body)`, for what the CLI cannot send.
//! - [`FakeCp`], [`free_port`], [`silent_listener`]: from the test kit.
//!
//! Only 127.0.0.1 is ever bound. Set `AUTONOMY_TEST_KEEP=1` to keep test directories.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::sync::Arc;
use std::time::Duration;

use autonomy_testkit::cp::{CpOptions, StartError};
use autonomy_testkit::http::HttpError;
pub use autonomy_testkit::http::{Canned, FakeCp as KitFakeCp};
pub use autonomy_testkit::TestDir;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_autonomy");

/// How long a CLI run may take before the test fails (the CLI's own --timeout is shorter).
pub const CLI_LIMIT: Duration = Duration::from_secs(60);
/// How long a CP may take to print its address and answer /v1/health.
pub const START_LIMIT: Duration = Duration::from_secs(10);
/// How long a CP may take to exit after SIGTERM.
pub const STOP_LIMIT: Duration = Duration::from_secs(15);
/// How long one raw HTTP exchange may take.
const HTTP_LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Running the CLI
// ---------------------------------------------------------------------------------------------

/// A `Command` for the binary with every inherited `AUTONOMY_*` variable removed, so the
/// developer's shell cannot change what a test sees.
pub fn autonomy() -> Command {
    let mut cmd = autonomy_testkit::process::command(Path::new(BIN));
    cmd.env("NO_COLOR", "1");
    cmd
}

/// Runs `autonomy ARGS` with extra env and optional stdin; fails the test if it takes longer
/// than [`CLI_LIMIT`].
pub fn run(args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Output {
    let mut cmd = autonomy();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_bounded(cmd, stdin, CLI_LIMIT)
}

/// Runs a command to completion with piped output, killing it (and failing) after `limit`.
pub fn run_bounded(cmd: Command, stdin: Option<&[u8]>, limit: Duration) -> Output {
    let shown = format!("{cmd:?}");
    let finished = autonomy_testkit::process::run_bounded(cmd, stdin, limit)
        .unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
    if finished.timed_out {
        panic!("{shown} did not finish within {limit:?}");
    }
    finished.output
}

/// Convenience accessors for a finished CLI run.
pub trait OutputExt {
    fn code(&self) -> i32;
    fn stdout_str(&self) -> String;
    fn stderr_str(&self) -> String;
    /// The stdout parsed as one JSON document (fails the test if it is not).
    fn json(&self) -> serde_json::Value;
    /// Asserts the exit code, showing stdout and stderr when it is wrong.
    fn assert_code(&self, code: i32) -> &Self;
    /// Asserts stderr is exactly one `error: …` line and returns it.
    fn error_line(&self) -> String;
}

impl OutputExt for Output {
    fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }
    fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}): {}",
                self.stdout_str()
            )
        })
    }
    fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            code,
            "unexpected exit code\n--- stdout:\n{}\n--- stderr:\n{}",
            self.stdout_str(),
            self.stderr_str()
        );
        self
    }
    fn error_line(&self) -> String {
        let stderr = self.stderr_str();
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "stderr should be exactly one line, got: {stderr:?}"
        );
        assert!(
            lines[0].starts_with("error: "),
            "stderr should start with 'error: ': {stderr:?}"
        );
        lines[0].to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP and fake CPs
// ---------------------------------------------------------------------------------------------

/// One HTTP exchange with arbitrary method, headers and body; returns `(status, body)`.
/// Panics only on transport errors (10 s timeout).
pub fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (u16, String) {
    try_http(method, url, headers, body).unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// Like [`http`], but a transport error is returned.
pub fn try_http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<(u16, String), HttpError> {
    let r = autonomy_testkit::http::call(method, url, headers, body, HTTP_LIMIT)?;
    Ok((r.status, r.text().into_owned()))
}

/// A 127.0.0.1 port where nothing listens (bound, then released).
pub fn free_port() -> u16 {
    autonomy_testkit::http::free_port().expect("bind 127.0.0.1:0")
}

/// A listener that accepts connections but never answers: a CP that hangs.
pub fn silent_listener() -> (std::net::TcpListener, String) {
    autonomy_testkit::http::silent_listener().expect("bind 127.0.0.1:0")
}

/// The test kit's scripted server, started or the test fails.
pub struct FakeCp;

impl FakeCp {
    pub fn start(answer: Canned) -> KitFakeCp {
        KitFakeCp::start(answer).expect("bind 127.0.0.1:0")
    }
}

// ---------------------------------------------------------------------------------------------
// The real CP
// ---------------------------------------------------------------------------------------------

/// A running `autonomy serve` on 127.0.0.1 and a kept data dir.
pub struct Cp {
    inner: autonomy_testkit::Cp,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// Holds the logs (and, for [`Cp::start`], the data dir) until the CP is gone.
    _root: Arc<TestDir>,
}

impl Cp {
    /// Starts a CP on a fresh data dir. RBAC is off (`AUTONOMY_RBAC_ENFORCEMENT=0`) unless
    /// `extra_env` sets it.
    pub fn start(extra_args: &[&str], extra_env: &[(&str, &str)]) -> Cp {
        let root = TestDir::new("cp");
        let data_dir = root.path().join("data");
        Cp::launch(root, &data_dir, extra_args, extra_env)
            .unwrap_or_else(|e| panic!("the CP did not start: {e:#?}"))
    }

    /// Starts a CP on `data_dir` (kept after the CP ends: the caller owns it).
    pub fn start_in(data_dir: &Path, extra_args: &[&str], extra_env: &[(&str, &str)]) -> Cp {
        Cp::try_start_in(data_dir, extra_args, extra_env)
            .unwrap_or_else(|e| panic!("the CP did not start: {e:#?}"))
    }

    /// Like [`Cp::start_in`], but a CP that does not come up is an `Err` (e.g. to test that
    /// a second CP on the same data dir refuses to start).
    pub fn try_start_in(
        data_dir: &Path,
        extra_args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> Result<Cp, StartError> {
        Cp::launch(TestDir::new("cp-logs"), data_dir, extra_args, extra_env)
    }

    /// Starts another replica over this CP's PostgreSQL database, on a data dir of its own
    /// (SPEC §7). Only for `postgres_only_*` tests.
    pub fn replica(&self, extra_args: &[&str], extra_env: &[(&str, &str)]) -> Cp {
        let url = self
            .database_url()
            .expect("replicas share a PostgreSQL database: run with AUTONOMY_TEST_DATABASE_URL")
            .to_string();
        let root = TestDir::new("replica");
        let data_dir = root.path().join("data");
        Cp::launch_on(root, &data_dir, extra_args, extra_env, Some(url))
            .unwrap_or_else(|e| panic!("the replica did not start: {e:#?}"))
    }

    /// Starts a CP on a fresh data dir over the PostgreSQL database at `url`.
    pub fn start_on_database(url: String, extra_args: &[&str], extra_env: &[(&str, &str)]) -> Cp {
        let root = TestDir::new("cp-db");
        let data_dir = root.path().join("data");
        Cp::launch_on(root, &data_dir, extra_args, extra_env, Some(url))
            .unwrap_or_else(|e| panic!("the CP did not start: {e:#?}"))
    }

    /// The PostgreSQL URL this CP runs over (`None`: SQLite).
    pub fn database_url(&self) -> Option<&str> {
        self.inner.options().database_url.as_deref()
    }

    fn launch(
        root: Arc<TestDir>,
        data_dir: &Path,
        extra_args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> Result<Cp, StartError> {
        Cp::launch_on(root, data_dir, extra_args, extra_env, None)
    }

    /// `database_url`: `None` keeps what the test run says (a fresh database per data dir on
    /// PostgreSQL, else SQLite).
    fn launch_on(
        root: Arc<TestDir>,
        data_dir: &Path,
        extra_args: &[&str],
        extra_env: &[(&str, &str)],
        database_url: Option<String>,
    ) -> Result<Cp, StartError> {
        let mut options =
            CpOptions::new(Path::new(BIN), data_dir, &root.path().join("cp.stderr.log"));
        if database_url.is_some() {
            // A second replica of a running one: it waits, it does not lead.
            options.database_url = database_url;
            options.wait_leader = false;
        }
        options.args = extra_args.iter().map(|s| s.to_string()).collect();
        options.env = extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        options.start_limit = START_LIMIT;
        options.stop_limit = STOP_LIMIT;
        let inner = autonomy_testkit::Cp::start(options)?;
        Ok(Cp {
            url: inner.url.clone(),
            inner,
            _root: root,
        })
    }

    /// Stops this CP with SIGTERM (it must exit 0) and starts a new one on the same data dir
    /// with the same flags. The port changes; `url` follows.
    pub fn restart(&mut self) {
        let status = self.sigterm();
        assert!(
            status.success(),
            "the CP exited with {status} on SIGTERM:\n{}",
            self.stderr()
        );
        self.start_again();
    }

    /// Starts a CP again on the same data dir and flags (after `sigterm`/`sigkill`).
    pub fn start_again(&mut self) {
        assert!(
            !self.inner.is_running(),
            "start_again: the CP is still running"
        );
        self.inner
            .start_again()
            .unwrap_or_else(|e| panic!("the CP did not restart: {e:#?}"));
        self.url = self.inner.url.clone();
    }

    pub fn pid(&self) -> u32 {
        self.inner.pid().expect("the CP is not running")
    }

    pub fn is_running(&mut self) -> bool {
        self.inner.is_running()
    }

    /// SIGTERM, then waits (bounded) for the exit. Panics if it does not exit.
    pub fn sigterm(&mut self) -> ExitStatus {
        let stopped = self
            .inner
            .terminate(STOP_LIMIT)
            .unwrap_or_else(|e| panic!("SIGTERM: {e}"));
        assert!(
            !stopped.killed,
            "the CP did not exit within {STOP_LIMIT:?} of SIGTERM:\n{}",
            self.stderr()
        );
        stopped.status
    }

    /// SIGKILL, and reap.
    pub fn sigkill(&mut self) {
        self.inner.kill().unwrap_or_else(|e| panic!("SIGKILL: {e}"));
    }

    pub fn data_dir(&self) -> &Path {
        self.inner.data_dir()
    }

    /// The audit dir this CP uses: `--audit-dir`/`AUTONOMY_AUDIT_DIR` if given, else
    /// `<data-dir>/audit`.
    pub fn audit_dir(&self) -> PathBuf {
        self.inner.audit_dir()
    }

    /// The admin token the CP writes on first start (RBAC on).
    pub fn admin_token(&self) -> String {
        self.inner
            .admin_token()
            .unwrap_or_else(|e| panic!("read the admin token: {e}"))
    }

    /// What the CP wrote to stderr so far (its log, since this start).
    pub fn stderr(&self) -> String {
        self.inner.stderr()
    }

    /// What the CP wrote to stdout after its `listening on` line.
    pub fn stdout_rest(&self) -> String {
        self.inner.stdout_rest()
    }

    /// Runs `autonomy ARGS` against this CP (`AUTONOMY_SERVER` set).
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with(args, &[], None)
    }

    /// Runs `autonomy ARGS` against this CP with extra env and optional stdin.
    pub fn cli_with(&self, args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Output {
        let mut all = vec![
            ("AUTONOMY_SERVER", self.url.as_str()),
            ("AUTONOMY_TIMEOUT", "20"),
        ];
        all.extend_from_slice(env);
        run(args, &all, stdin)
    }

    /// `GET path` with headers: `(status, body)`.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        http("GET", &format!("{}{path}", self.url), headers, None)
    }

    /// `POST path` with headers and a body: `(status, body)`.
    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
        http(
            "POST",
            &format!("{}{path}", self.url),
            headers,
            Some(body.as_bytes()),
        )
    }
}

/// The audit events a fresh CP writes before a test's first request: the first admin token,
/// and on PostgreSQL `leader.acquired` (SPEC §7; the test kit waits for it). Each later
/// start adds [`restart_events`].
pub fn first_start_events() -> usize {
    1 + restart_events()
}

/// The audit events one more start of a CP on the same store writes: `leader.acquired` on
/// PostgreSQL, none on SQLite (one process always leads).
pub fn restart_events() -> usize {
    usize::from(autonomy_testkit::cp::on_postgres())
}

/// Waits (bounded) until the CP's audit dir holds every event its API shows. SQLite appends
/// before it answers, so this returns at once; a PostgreSQL replica's mirror follows the
/// database a moment later (SPEC §7).
pub fn settle_mirror(cp: &Cp) {
    let (status, body) = cp.get("/v1/audit/events?limit=10000", &[]);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let last = v["items"]
        .as_array()
        .and_then(|a| a.last())
        .and_then(|e| e["seq"].as_u64())
        .unwrap_or(0);
    let dir = cp.audit_dir();
    let start = std::time::Instant::now();
    loop {
        let seen = autonomy_audit::verify(&dir).map_or(0, |r| r.last_seq);
        if seen >= last {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the audit dir {} stayed at seq {seen}, the API shows {last}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Creates `n` draft plans `{prefix}-0` … as operator `auditor`: one audit event each.
pub fn create_some(cp: &Cp, prefix: &str, n: usize) {
    for i in 0..n {
        let body = format!(
            r#"{{"metadata":{{"id":"{prefix}-{i}"}},"spec":{{"artifact_ref":"oci://a"}}}}"#
        );
        let (s, b) = cp.post(
            "/v1/rollouts",
            &[
                ("content-type", "application/json"),
                ("x-autonomy-operator", "auditor"),
            ],
            &body,
        );
        assert_eq!(s, 201, "{b}");
    }
}

//! Black-box test harness: spawns the real `autonomy` binary.
//!
//! - [`Cp`]: a control plane (`autonomy serve --listen 127.0.0.1:0`) on a fresh data dir,
//!   started and health-polled, stopped with SIGTERM (then SIGKILL) on drop; restartable on the
//!   same data dir.
//! - [`autonomy`] / [`run`]: run the CLI with a clean environment and a bounded wait.
//! - [`http`]: a raw HTTP call returning `(status, body)`, for what the CLI cannot send.
//! - [`FakeCp`]: a scripted HTTP server that answers canned responses and records requests,
//!   for client behaviour the real CP cannot be made to show on demand (5xx, non-JSON).
//! - [`free_port`] / [`silent_listener`]: an address where nothing listens, and one that
//!   accepts connections but never answers.
//!
//! Only 127.0.0.1 is ever bound. Set `AUTONOMY_TEST_KEEP=1` to keep test directories.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_autonomy");

/// How long a CLI run may take before the test fails (the CLI's own --timeout is shorter).
pub const CLI_LIMIT: Duration = Duration::from_secs(60);
/// How long a CP may take to print its address and answer /v1/health.
pub const START_LIMIT: Duration = Duration::from_secs(10);
/// How long a CP may take to exit after SIGTERM.
pub const STOP_LIMIT: Duration = Duration::from_secs(15);

static COUNTER: AtomicU32 = AtomicU32::new(0);

// ---------------------------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------------------------

/// A fresh, unique directory under the system temp dir, removed on drop (unless
/// `AUTONOMY_TEST_KEEP` is set).
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(tag: &str) -> Arc<TestDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!(
            "autonomy-test-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("create test dir");
        Arc::new(TestDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("AUTONOMY_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running the CLI
// ---------------------------------------------------------------------------------------------

/// A `Command` for the binary with every inherited `AUTONOMY_*` variable removed, so the
/// developer's shell cannot change what a test sees.
pub fn autonomy() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AUTONOMY_") {
            cmd.env_remove(&key);
        }
    }
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
pub fn run_bounded(mut cmd: Command, stdin: Option<&[u8]>, limit: Duration) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn the autonomy binary");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let input = input.to_vec();
        thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let stdout = drain(child.stdout.take().expect("stdout pipe"));
    let stderr = drain(child.stderr.take().expect("stderr pipe"));
    let status = match wait_bounded(&mut child, limit) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn drain<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Polls `try_wait` every 20 ms for at most `limit`.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
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
// Raw HTTP
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
) -> Result<(u16, String), ureq::Error> {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .allow_non_standard_methods(true)
            .max_redirects(0)
            .build(),
    );
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let mut response = match body {
        Some(body) => agent.run(builder.body(body.to_vec()).expect("request"))?,
        None => agent.run(builder.body(()).expect("request"))?,
    };
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    Ok((status, body))
}

// ---------------------------------------------------------------------------------------------
// Addresses with nothing, or something silent, behind them
// ---------------------------------------------------------------------------------------------

/// A 127.0.0.1 port where nothing listens (bound, then released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

/// A listener that completes TCP handshakes (the kernel does, into the backlog) but never
/// reads or answers: a CP that hangs. Keep it alive for as long as it should hang.
pub fn silent_listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

// ---------------------------------------------------------------------------------------------
// A scripted fake CP
// ---------------------------------------------------------------------------------------------

/// A canned HTTP answer.
#[derive(Debug, Clone)]
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Canned {
    pub fn json(status: u16, body: &str) -> Canned {
        Canned {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
        }
    }
    pub fn error(status: u16, code: &str, message: &str) -> Canned {
        let body = serde_json::json!({"error": {"code": code, "message": message}});
        Canned::json(status, &body.to_string())
    }
    pub fn header(mut self, name: &str, value: &str) -> Canned {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// One request as the fake CP saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Answers every request with the same canned response and records what it saw.
pub struct FakeCp {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    addr: std::net::SocketAddr,
}

impl FakeCp {
    pub fn start(answer: Canned) -> FakeCp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                if let Some(req) = serve_one(stream, &answer) {
                    seen2.lock().unwrap().push(req);
                }
            }
        });
        FakeCp {
            url: format!("http://{addr}"),
            seen,
            stop,
            addr,
        }
    }

    /// The requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeCp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so the thread ends.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn serve_one(stream: TcpStream, answer: &Canned) -> Option<Seen> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    let mut out = stream;
    let mut response = format!("HTTP/1.1 {} Canned\r\n", answer.status);
    for (k, v) in &answer.headers {
        response.push_str(&format!("{k}: {v}\r\n"));
    }
    response.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n{}",
        answer.body.len(),
        answer.body
    ));
    let _ = out.write_all(response.as_bytes());
    let _ = out.flush();
    Some(Seen {
        method,
        target,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

// ---------------------------------------------------------------------------------------------
// The real CP
// ---------------------------------------------------------------------------------------------

/// Why a CP did not come up.
#[derive(Debug)]
pub struct StartError {
    /// The exit status, if it exited.
    pub status: Option<ExitStatus>,
    pub stdout_first_line: Option<String>,
    pub stderr: String,
    pub why: String,
}

/// A running `autonomy serve` on 127.0.0.1 and a kept data dir.
pub struct Cp {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    root: Arc<TestDir>,
    data_dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    stderr_log: PathBuf,
    stdout_rest: Arc<Mutex<String>>,
}

impl Cp {
    /// Starts a CP on a fresh data dir. RBAC is off (`AUTONOMY_RBAC_ENFORCEMENT=0`) unless
    /// `extra_env` sets it.
    pub fn start(extra_args: &[&str], extra_env: &[(&str, &str)]) -> Cp {
        let root = TestDir::new("cp");
        let data_dir = root.path().join("data");
        Cp::launch(root, data_dir, owned(extra_args), owned_env(extra_env))
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
        let root = TestDir::new("cp-logs");
        Cp::launch(
            root,
            data_dir.to_path_buf(),
            owned(extra_args),
            owned_env(extra_env),
        )
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
        assert!(self.child.is_none(), "start_again: the CP is still running");
        let next = Cp::launch(
            self.root.clone(),
            self.data_dir.clone(),
            self.args.clone(),
            self.env.clone(),
        )
        .unwrap_or_else(|e| panic!("the CP did not restart: {e:#?}"));
        *self = next;
    }

    fn launch(
        root: Arc<TestDir>,
        data_dir: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Result<Cp, StartError> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let stderr_log = root.path().join(format!("cp-{n}.stderr.log"));
        let log = std::fs::File::create(&stderr_log).expect("create the CP's stderr log");
        let mut cmd = autonomy();
        cmd.arg("serve");
        if !args
            .iter()
            .any(|a| a == "--listen" || a.starts_with("--listen="))
        {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.arg("--data-dir").arg(&data_dir);
        cmd.args(&args);
        cmd.env("AUTONOMY_RBAC_ENFORCEMENT", "0");
        cmd.env("RUST_LOG", "info");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = cmd.spawn().expect("spawn autonomy serve");

        let (tx, rx) = mpsc::channel();
        let stdout_rest = Arc::new(Mutex::new(String::new()));
        let rest = stdout_rest.clone();
        let stdout = child.stdout.take().expect("stdout pipe");
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            drop(tx);
            for line in lines.map_while(Result::ok) {
                let mut rest = rest.lock().unwrap();
                rest.push_str(&line);
                rest.push('\n');
            }
        });

        let mut cp = Cp {
            child: Some(child),
            url: String::new(),
            root,
            data_dir,
            args,
            env,
            stderr_log,
            stdout_rest,
        };
        let deadline = Instant::now() + START_LIMIT;
        let first = match rx.recv_timeout(START_LIMIT) {
            Ok(line) => line,
            Err(_) => {
                // Either it exited without a line, or it is silent: both are failures.
                let _ = cp
                    .child
                    .as_mut()
                    .map(|c| wait_bounded(c, Duration::from_secs(2)));
                return cp.fail(None, "no `listening on` line on stdout".into());
            }
        };
        let Some(url) = first.strip_prefix("listening on ") else {
            return cp.fail(Some(first.clone()), "unexpected first stdout line".into());
        };
        if !url.starts_with("http://127.0.0.1:") {
            return cp.fail(Some(first.clone()), "the CP bound something else".into());
        }
        cp.url = url.trim().to_string();
        loop {
            if let Ok((200, _)) = try_http("GET", &format!("{}/v1/health", cp.url), &[], None) {
                return Ok(cp);
            }
            if let Some(Ok(Some(_))) = cp.child.as_mut().map(|c| c.try_wait()) {
                return cp.fail(Some(first), "the CP exited before it was healthy".into());
            }
            if Instant::now() >= deadline {
                return cp.fail(Some(first), "GET /v1/health never answered 200".into());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn fail(mut self, first: Option<String>, why: String) -> Result<Cp, StartError> {
        let status = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if status.is_none() {
            self.sigkill();
        }
        // Reaped either way: never signal its pid again (it may be reused).
        self.child = None;
        Err(StartError {
            status,
            stdout_first_line: first,
            stderr: self.stderr(),
            why,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the CP is not running").id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// `kill -TERM <pid>`, then waits (bounded) for the exit. Panics if it does not exit.
    pub fn sigterm(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the CP is not running");
        if let Ok(Some(status)) = child.try_wait() {
            return status; // already gone (and now reaped): do not signal a stale pid
        }
        send_sigterm(&child);
        match wait_bounded(&mut child, STOP_LIMIT) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the CP did not exit within {STOP_LIMIT:?} of SIGTERM:\n{}",
                    self.stderr()
                );
            }
        }
    }

    /// SIGKILL, and reap.
    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The audit dir this CP uses: `--audit-dir`/`AUTONOMY_AUDIT_DIR` if given, else
    /// `<data-dir>/audit`.
    pub fn audit_dir(&self) -> PathBuf {
        if let Some(i) = self.args.iter().position(|a| a == "--audit-dir") {
            if let Some(dir) = self.args.get(i + 1) {
                return PathBuf::from(dir);
            }
        }
        if let Some((_, dir)) = self.env.iter().find(|(k, _)| k == "AUTONOMY_AUDIT_DIR") {
            return PathBuf::from(dir);
        }
        self.data_dir.join("audit")
    }

    /// The admin token the CP writes on first start (RBAC on).
    pub fn admin_token(&self) -> String {
        let path = self.data_dir.join("admin.token");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
            .trim()
            .to_string()
    }

    /// What the CP wrote to stderr so far (its log).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// What the CP wrote to stdout after its `listening on` line.
    pub fn stdout_rest(&self) -> String {
        self.stdout_rest.lock().unwrap().clone()
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

impl Drop for Cp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            send_sigterm(&child);
            if wait_bounded(&mut child, STOP_LIMIT).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// `kill -TERM <pid>` for a child not yet reaped (so the pid is still its own).
fn send_sigterm(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn owned_env(env: &[(&str, &str)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

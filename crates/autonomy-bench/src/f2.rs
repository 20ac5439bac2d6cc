//! F2 (issue 13): device traffic at fleet scale. N registered devices (100,000 in the full
//! run) each hold one kept-alive connection and long-poll `POST /v1/device/poll`
//! (`wait_seconds` 30, their `known_revision`), re-polling as soon as an answer comes, while
//! one engine-driven plan of 4 stages rolls out to R of them (10,000). A device whose poll
//! brings an assignment sends its five reports (downloading … succeeded on a new boot with the
//! target digest) on the same connection and goes back to long-polling.
//!
//! The generator is lean: one tokio task and one TCP connection per device on a single
//! runtime thread, raw HTTP/1.1 bytes, answers read by `content-length`, and only `revision`,
//! `attempt` and whether `assignment` is null picked out of the answer by byte search. Its
//! connections come from several loopback source addresses (127.0.0.2, 127.0.0.3, …; at most
//! 10,000 each) because one source address has only ~28k ephemeral ports toward the CP's one
//! port (and fewer than that were seen to hold). The bench raises its own RLIMIT_NOFILE (soft
//! and hard, with `prlimit`; as root) before starting the CP, which inherits it. Where the hard
//! limit cannot be raised (this box: 20,000, EPERM even as root), as many devices as fit
//! (limit − 1000, or `--f2-held`) hold a long poll on their own connection and the others poll
//! with `wait_seconds` 0 once per wait over a pool of shared connections, so the CP still sees
//! the whole fleet's poll rate; the report says so and projects the CP's RSS with every device
//! held from the RSS per held connection.
//!
//! Measured: a probe of a few devices polling with `wait_seconds` 0 at a fixed rate, open loop
//! over 32 connections of its own (the poll latency of the target, from each poll's scheduled
//! time, so a stall is not hidden by the probe waiting on it; poll k goes out on connection
//! k mod 32, so one slow answer does not make the polls scheduled behind it late, as it did
//! when the probe had one connection); how much later than the wait
//! the long polls answered by time-out came back; each report's latency; the CP's CPU, RSS
//! and RSS per held connection; the generator's own CPU and RSS beside them.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use autonomy_api::{DeviceState, Phase, TransitionRequest, Verb};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::cp::{self, Cp};
use crate::engine::{self, DeviceSeed, Errors};
use crate::http::{metric, Http};
use crate::load::REQUEST_TIMEOUT;
use crate::raw::{self, Conn};
use crate::stats::{round1, round3, Latency};
use crate::suite::Env;

/// The digest the F2 plan rolls out.
const TARGET_HEX: &str = "f2f2000000000000000000000000000000000000000000000000000000000002";
/// The digest every device runs before.
const OLD_DIGEST: &str = "sha256:01d0000000000000000000000000000000000000000000000000000000000000";
const PLAN: &str = "f2-rollout";
/// Connections per loopback source address (its ephemeral range is 32768–60999 here).
const PER_SOURCE: u64 = 10_000;
/// Devices of the probe (polling with `wait_seconds` 0).
const PROBE_DEVICES: usize = 4;
/// The probe's connections, each on its own thread: at 50 polls/s, a connection's next poll
/// is due 640 ms after its last, so only an answer slower than that delays the next one.
const PROBE_CONNECTIONS: usize = 32;
/// A device's own connection (not one of the short polls' pool).
const HELD: bool = true;
/// Connections the devices that do not hold a long poll share.
const SHORT_POLL_CONNECTIONS: usize = 128;
/// Largest answer head + body the generator reads.
const ANSWER_LIMIT: usize = 64 * 1024;
/// Longest a connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest a report (or a non-waiting exchange) may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// A device pauses this long after an error before it tries again.
const ERROR_PAUSE: Duration = Duration::from_secs(1);
/// Longest the plan may take from start to `completed`.
const ROLLOUT_LIMIT: Duration = Duration::from_secs(900);

fn target_digest() -> String {
    format!("sha256:{TARGET_HEX}")
}

#[derive(Debug, Clone, Serialize)]
pub struct F2Report {
    pub devices: u64,
    pub rollout_devices: u64,
    pub probe_devices: usize,
    pub wait_seconds: u32,
    /// The devices' first polls are spread over this.
    pub ramp_seconds: f64,
    pub source_addresses: usize,
    /// RLIMIT_NOFILE in force for the bench and the CP (raised when allowed).
    pub open_file_limit: u64,
    /// Why fewer than `devices` long polls were held (the open-file limit could not be
    /// raised), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_file_limit_note: Option<String>,
    /// TCP sockets in TIME_WAIT when F2 started (it waits for more than 1,000 to clear).
    pub time_wait_at_start: Option<u64>,
    /// Devices holding a long poll on their own connection; the other `devices - held` poll
    /// with `wait_seconds` 0 once per `wait_seconds` each, over a shared pool of
    /// `short_poll_connections` (so the CP still sees the whole fleet's poll rate).
    pub held: u64,
    pub short_poll_devices: u64,
    pub short_poll_connections: usize,
    pub short_polls: u64,
    /// The short polls' latency over the window, from each one's scheduled time (on the
    /// generator's busy runtime thread: an upper bound).
    pub short_poll_latency: Latency,
    pub registration: DeviceSeed,
    /// Connections the generator held at once (peak), and what the CP's
    /// `autonomy_device_long_polls_waiting` showed at most (sampled every 2 s).
    pub connections_peak: u64,
    pub cp_long_polls_waiting_peak: Option<f64>,
    /// From the end of the ramp (all connected) to the end of the measurement.
    pub window_seconds: f64,
    pub stage_sizes: Vec<u64>,
    /// `start` to `completed`.
    pub rollout_seconds: Option<f64>,
    pub completed: bool,
    pub verified: u64,
    /// Devices that sent all five reports.
    pub devices_succeeded: u64,
    /// Long polls answered 200 over the whole run, of them by time-out (no assignment, after
    /// the wait), early (no assignment, before the wait: a revision moved), with an
    /// assignment.
    pub polls: u64,
    pub polls_timed_out: u64,
    pub polls_early: u64,
    pub polls_with_assignment: u64,
    pub reports: u64,
    /// Over the window: the CP's device polls + reports (`/metrics` deltas, the probe's
    /// included), its CPU, cores used, and CPU per request.
    pub cp_requests: Option<u64>,
    pub cp_cpu_seconds: Option<f64>,
    pub cp_cpus_used: Option<f64>,
    pub cp_cpu_us_per_request: Option<f64>,
    /// The CP's CPU over the window by thread name (the store's writer vs the HTTP workers
    /// and the blocking pool), seconds.
    pub cp_cpu_seconds_by_thread: BTreeMap<String, f64>,
    /// The CP's VmRSS after registration (no device connected), its largest sampled VmRSS
    /// (and RssAnon) while the devices were connected, its VmHWM at the end, and
    /// (held − before) ÷ peak connections.
    pub cp_rss_before_kib: Option<u64>,
    pub cp_rss_held_kib: Option<u64>,
    pub cp_rss_anon_held_kib: Option<u64>,
    pub cp_peak_rss_kib: Option<u64>,
    pub cp_kib_per_connection: Option<f64>,
    /// What one more held connection adds: the least-squares slope of the CP's VmRSS over the
    /// open connections, sampled every 0.5 s while they open during the ramp (fixed costs such
    /// as the read connections' caches and the threads do not count in it, unlike in
    /// `cp_kib_per_connection`).
    pub cp_kib_per_connection_marginal: Option<f64>,
    /// The (connections, VmRSS KiB) samples of the ramp the slope is fitted to.
    pub cp_rss_ramp_samples: Vec<(u64, u64)>,
    /// When fewer than `devices` long polls were held: the held VmRSS + (devices − held) ×
    /// the marginal KiB per connection (the average one if the ramp gave no slope), the
    /// CP's RSS with every device holding one (linear).
    pub cp_rss_projected_all_held_kib: Option<u64>,
    pub cp_threads: Option<u64>,
    /// The bench process over the window (the generator's runtime thread, the probe thread
    /// and the sampling main thread), and its RSS.
    pub generator_cpu_seconds: Option<f64>,
    pub generator_cpus_used: Option<f64>,
    pub generator_rss_before_kib: Option<u64>,
    pub generator_peak_rss_kib: Option<u64>,
    pub generator_kib_per_connection: Option<f64>,
    /// `wait_seconds` 0 polls at `probe_rate` per second over the window, latency from each
    /// one's scheduled time; the same during the ramp (connections opening).
    pub probe_rate: f64,
    /// The probe's connections (open loop: poll k on connection k mod this).
    pub probe_connections: usize,
    /// Probe polls sent more than 5 ms after their scheduled time because their connection
    /// still waited on an earlier answer (0: the probe never queued on itself).
    pub probe_sent_late: u64,
    pub probe: Latency,
    pub probe_during_ramp: Latency,
    pub probe_during_rollout: Latency,
    /// Long polls answered by time-out: answer time − `wait_seconds`.
    pub long_poll_overshoot: Latency,
    /// Each report, sent to answered (200 `applied`).
    pub report_latency: Latency,
    /// The plan's start to each assignment's arrival (the stages one after the other).
    pub assignment_after_start: Latency,
    pub connects: u64,
    pub errors: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub first_errors: Vec<String>,
    /// The generator's errors by kind (the probe's are in `first_errors` only).
    pub errors_by_kind: BTreeMap<String, u64>,
    pub method: &'static str,
}

/// What the device tasks share.
struct Shared {
    addr: SocketAddr,
    host: String,
    wait: u32,
    open: AtomicU64,
    open_peak: AtomicU64,
    connects: AtomicU64,
    polls: AtomicU64,
    timed_out: AtomicU64,
    early: AtomicU64,
    with_assignment: AtomicU64,
    reports: AtomicU64,
    succeeded: AtomicU64,
    short_polls: AtomicU64,
    short_samples: Mutex<Samples>,
    errors: Errors,
    /// Errors by kind (without the device's name).
    kinds: Mutex<BTreeMap<String, u64>>,
    overshoot: Mutex<Vec<Duration>>,
    report_latency: Mutex<Vec<Duration>>,
    assigned_at: Mutex<Vec<Instant>>,
}

impl Shared {
    /// A connection opened: a device's own (`held`) or one of the short polls' pool.
    fn opened(&self, held: bool) {
        self.connects.fetch_add(1, Ordering::Relaxed);
        if held {
            let now = self.open.fetch_add(1, Ordering::Relaxed) + 1;
            self.open_peak.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// An error: counted by `kind`, the first few kept with `detail`.
    fn fail(&self, kind: String, detail: String) {
        *self
            .kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind)
            .or_insert(0) += 1;
        self.errors.note(detail);
    }

    fn closed(&self, held: bool) {
        if held {
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn push<T>(m: &Mutex<Vec<T>>, v: T) {
    m.lock().unwrap_or_else(|e| e.into_inner()).push(v);
}

fn take<T>(m: &Mutex<Vec<T>>) -> Vec<T> {
    std::mem::take(&mut *m.lock().unwrap_or_else(|e| e.into_inner()))
}

/// RLIMIT_NOFILE of this process: (soft, hard), from /proc/self/limits.
fn open_file_limits() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut v = line["Max open files".len()..].split_whitespace();
    let mut num = || -> Option<u64> {
        match v.next()? {
            "unlimited" => Some(u64::MAX),
            n => n.parse().ok(),
        }
    };
    Some((num()?, num()?))
}

/// Sets RLIMIT_NOFILE (soft and hard) of this process to at least `need` with `prlimit`
/// (util-linux; the workspace forbids `unsafe`, so no setrlimit call here): the CP started
/// after inherits it. The soft limit now in force.
fn raise_open_files(need: u64) -> anyhow::Result<u64> {
    let (soft, hard) =
        open_file_limits().ok_or_else(|| anyhow!("cannot read RLIMIT_NOFILE from /proc"))?;
    if soft >= need {
        return Ok(soft);
    }
    let hard_wanted = hard.max(need);
    let fail = |why: String| {
        anyhow!(
            "F2 needs an open-file limit of at least {need} for the generator and for the CP \
             (RLIMIT_NOFILE is {soft} soft / {hard} hard, and raising it failed: {why}); run as \
             root, raise `ulimit -Hn`, or lower --f2-devices"
        )
    };
    let out = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={need}:{hard_wanted}"))
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| fail(format!("running prlimit: {e}")))?;
    if !out.status.success() {
        return Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    match open_file_limits() {
        Some((s, _)) if s >= need => Ok(s),
        other => Err(fail(format!("the limit is {other:?} after prlimit"))),
    }
}

/// `POST path` as `device` with `body`, into `out`.
fn request(out: &mut Vec<u8>, host: &str, path: &str, device: &str, body: &str) {
    out.clear();
    let _ = write!(
        out,
        "POST {path} HTTP/1.1\r\nhost: {host}\r\nx-autonomy-device: {device}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
}

fn poll_body(digest: &str, boot: &str, known: u64, wait: u32) -> String {
    format!(
        "{{\"installed_digest\":\"{digest}\",\"boot_id\":\"{boot}\",\"known_revision\":{known},\
         \"wait_seconds\":{wait}}}"
    )
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The unsigned number after `key` (e.g. `"revision":`) in `body`.
fn number_after(body: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(body, key)? + key.len();
    let digits: Vec<u8> = body[at..]
        .iter()
        .skip_while(|b| **b == b' ')
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// What a poll answer says: (revision, the assignment's attempt if there is one).
fn parse_poll(body: &[u8]) -> Option<(u64, Option<u64>)> {
    let revision = number_after(body, b"\"revision\":")?;
    if find(body, b"\"assignment\":null").is_some() {
        return Some((revision, None));
    }
    let at = find(body, b"\"assignment\":{")?;
    let attempt = number_after(&body[at..], b"\"attempt\":")?;
    Some((revision, Some(attempt)))
}

fn bad(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.into())
}

/// The head of an answer: (status, content-length, connection: close).
fn parse_head(head: &[u8]) -> std::io::Result<(u16, usize, bool)> {
    let text = std::str::from_utf8(head).map_err(|_| bad("answer head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    if !status_line.starts_with("HTTP/1.1 ") {
        return Err(bad(format!("not an HTTP/1.1 status line: {status_line:?}")));
    }
    let status: u16 = status_line
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status"))?;
    let (mut length, mut close) = (None, false);
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.trim().parse().map_err(|_| bad("bad content-length"))?);
        } else if k.eq_ignore_ascii_case("connection") {
            close = v.trim().eq_ignore_ascii_case("close");
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad("the generator reads only content-length answers"));
        }
    }
    Ok((
        status,
        length.ok_or_else(|| bad("an answer without content-length"))?,
        close,
    ))
}

/// Writes `req` and reads one answer into `buf`: (status, where the body starts, close).
async fn exchange(
    s: &mut TcpStream,
    req: &[u8],
    buf: &mut Vec<u8>,
) -> std::io::Result<(u16, usize, bool)> {
    s.write_all(req).await?;
    buf.clear();
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let (status, length, close) = parse_head(&buf[..end])?;
            let total = end + 4 + length;
            if total > ANSWER_LIMIT {
                return Err(bad("answer too large"));
            }
            while buf.len() < total {
                buf.reserve(total - buf.len());
                if s.read_buf(buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            if buf.len() > total {
                return Err(bad("bytes after the answer"));
            }
            return Ok((status, end + 4, close));
        }
        if buf.len() > ANSWER_LIMIT {
            return Err(bad("answer head too large"));
        }
        buf.reserve(512);
        if s.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

async fn connect(addr: SocketAddr, source: Ipv4Addr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source.into(), 0))?;
    let s = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    s.set_nodelay(true)?;
    Ok(s)
}

/// One exchange bounded by `limit`; the connection is dropped after an error or a close.
async fn bounded(
    sh: &Shared,
    held: bool,
    conn: &mut Option<TcpStream>,
    req: &[u8],
    buf: &mut Vec<u8>,
    limit: Duration,
) -> std::io::Result<(u16, usize)> {
    let Some(s) = conn.as_mut() else {
        return Err(std::io::Error::other("not connected"));
    };
    let r = match tokio::time::timeout(limit, exchange(s, req, buf)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {} s", limit.as_secs()),
        )),
    };
    match r {
        Ok((status, start, close)) => {
            if close {
                *conn = None;
                sh.closed(held);
            }
            Ok((status, start))
        }
        Err(e) => {
            *conn = None;
            sh.closed(held);
            Err(e)
        }
    }
}

/// Sends the five reports of a device whose poll brought attempt `attempt`: whether all were
/// applied.
async fn report_all(
    sh: &Shared,
    id: &str,
    source: Ipv4Addr,
    attempt: u64,
    conn: &mut Option<TcpStream>,
    req: &mut Vec<u8>,
    buf: &mut Vec<u8>,
) -> bool {
    let (old, new) = (OLD_DIGEST.to_string(), target_digest());
    let steps = [
        ("downloading", &old, "boot-a"),
        ("installing", &old, "boot-a"),
        ("rebooting", &old, "boot-a"),
        ("verifying", &new, "boot-b"),
        ("succeeded", &new, "boot-b"),
    ];
    for (i, (state, digest, boot)) in steps.iter().enumerate() {
        let body = format!(
            "{{\"plan_id\":\"{PLAN}\",\"attempt\":{attempt},\"seq\":{},\"state\":\"{state}\",\
             \"installed_digest\":\"{digest}\",\"boot_id\":\"{boot}\",\"message\":\"\"}}",
            i + 1
        );
        request(req, &sh.host, "/v1/device/reports", id, &body);
        if conn.is_none() {
            match connect(sh.addr, source).await {
                Ok(s) => {
                    sh.opened(HELD);
                    *conn = Some(s);
                }
                Err(e) => {
                    sh.fail(
                        format!("report connect: {e}"),
                        format!("report connect of {id}: {e}"),
                    );
                    return false;
                }
            }
        }
        let sent = Instant::now();
        match bounded(sh, HELD, conn, req, buf, EXCHANGE_TIMEOUT).await {
            Ok((200, start)) if find(&buf[start..], b"\"applied\"").is_some() => {
                push(&sh.report_latency, sent.elapsed());
                sh.reports.fetch_add(1, Ordering::Relaxed);
            }
            Ok((status, start)) => {
                sh.fail(
                    format!("report: status {status}"),
                    format!(
                        "report {state} of {id}: {status} {}",
                        String::from_utf8_lossy(&buf[start..])
                    ),
                );
                return false;
            }
            Err(e) => {
                sh.fail(
                    format!("report: {e}"),
                    format!("report {state} of {id}: {e}"),
                );
                return false;
            }
        }
    }
    true
}

/// One device: connect at `start_at`, long-poll until the runtime is shut down, and report
/// an assignment once.
async fn device(sh: Arc<Shared>, id: String, source: Ipv4Addr, start_at: tokio::time::Instant) {
    tokio::time::sleep_until(start_at).await;
    let mut conn: Option<TcpStream> = None;
    let (mut req, mut buf) = (Vec::new(), Vec::new());
    let mut known = 0u64;
    let mut done = false;
    let wait = Duration::from_secs(u64::from(sh.wait));
    loop {
        if conn.is_none() {
            match connect(sh.addr, source).await {
                Ok(s) => {
                    sh.opened(HELD);
                    conn = Some(s);
                }
                Err(e) => {
                    sh.fail(
                        format!("connect: {e}"),
                        format!("connect of {id} from {source}: {e}"),
                    );
                    tokio::time::sleep(ERROR_PAUSE).await;
                    continue;
                }
            }
        }
        let (digest, boot) = if done {
            (target_digest(), "boot-b")
        } else {
            (OLD_DIGEST.to_string(), "boot-a")
        };
        request(
            &mut req,
            &sh.host,
            "/v1/device/poll",
            &id,
            &poll_body(&digest, boot, known, sh.wait),
        );
        let sent = Instant::now();
        let answer = bounded(
            &sh,
            HELD,
            &mut conn,
            &req,
            &mut buf,
            wait + EXCHANGE_TIMEOUT,
        )
        .await;
        let took = sent.elapsed();
        let parsed = match answer {
            Ok((200, start)) => parse_poll(&buf[start..]),
            Ok((status, start)) => {
                sh.fail(
                    format!("poll: status {status}"),
                    format!(
                        "poll of {id}: {status} {}",
                        String::from_utf8_lossy(&buf[start..])
                    ),
                );
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
            Err(e) => {
                sh.fail(
                    format!("poll: {e} (after {} s)", took.as_secs().min(99)),
                    format!("poll of {id}: {e}"),
                );
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        let Some((revision, assignment)) = parsed else {
            sh.fail(
                "poll: an answer without revision".into(),
                format!("poll of {id}: an answer without revision"),
            );
            tokio::time::sleep(ERROR_PAUSE).await;
            continue;
        };
        sh.polls.fetch_add(1, Ordering::Relaxed);
        known = revision;
        match assignment {
            Some(attempt) if !done => {
                sh.with_assignment.fetch_add(1, Ordering::Relaxed);
                push(&sh.assigned_at, Instant::now());
                if report_all(&sh, &id, source, attempt, &mut conn, &mut req, &mut buf).await {
                    sh.succeeded.fetch_add(1, Ordering::Relaxed);
                    done = true;
                } else {
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
            }
            _ if took >= wait => {
                sh.timed_out.fetch_add(1, Ordering::Relaxed);
                push(&sh.overshoot, took - wait);
            }
            _ => {
                sh.early.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Devices `ids` polling with `wait_seconds` 0 on one shared connection, each once per
/// `period`, spread evenly over it, from `first`, until the runtime is shut down.
async fn short_poller(
    sh: Arc<Shared>,
    ids: Vec<String>,
    first: tokio::time::Instant,
    period: Duration,
) {
    let mut conn: Option<TcpStream> = None;
    let (mut req, mut buf) = (Vec::new(), Vec::new());
    let body = poll_body(OLD_DIGEST, "boot-a", 0, 0);
    let n = ids.len().max(1) as f64;
    for cycle in 0u32.. {
        for (j, id) in ids.iter().enumerate() {
            let at = first + period * cycle + period.mul_f64(j as f64 / n);
            tokio::time::sleep_until(at).await;
            if conn.is_none() {
                match connect(sh.addr, Ipv4Addr::LOCALHOST).await {
                    Ok(s) => {
                        sh.opened(!HELD);
                        conn = Some(s);
                    }
                    Err(e) => {
                        sh.fail(
                            format!("short-poll connect: {e}"),
                            format!("short-poll connect: {e}"),
                        );
                        continue;
                    }
                }
            }
            request(&mut req, &sh.host, "/v1/device/poll", id, &body);
            match bounded(&sh, !HELD, &mut conn, &req, &mut buf, EXCHANGE_TIMEOUT).await {
                Ok((200, _)) => {
                    sh.short_polls.fetch_add(1, Ordering::Relaxed);
                    let at = at.into_std();
                    push(&sh.short_samples, (Instant::now(), at.elapsed()));
                }
                Ok((status, start)) => sh.fail(
                    format!("short poll: status {status}"),
                    format!(
                        "short poll of {id}: {status} {}",
                        String::from_utf8_lossy(&buf[start..])
                    ),
                ),
                Err(e) => sh.fail(
                    format!("short poll: {e}"),
                    format!("short poll of {id}: {e}"),
                ),
            }
        }
    }
}

/// Latency samples: (answered at, latency from the scheduled time to the answer). Windows
/// select by the answer's time: a poll scheduled before a window but answered in it (the
/// generator or the CP fell behind) counts in the window, with its whole delay.
type Samples = Vec<(Instant, Duration)>;

/// The probe's polls, each from a scheduled time, and how many were sent late.
#[derive(Default)]
struct Probed {
    samples: Samples,
    /// Polls sent more than [`PROBE_LATE`] after their scheduled time (their connection was
    /// still waiting on its previous answer): the probe was queueing on itself.
    sent_late: u64,
}

/// A probe poll sent later than this after its scheduled time counts as sent late.
const PROBE_LATE: Duration = Duration::from_millis(5);

/// `wait_seconds` 0 polls of `ids` in turn at `rate` per second until `stop`, open loop: poll
/// k is due at `k / rate` and goes out on connection `k mod PROBE_CONNECTIONS`, each its own
/// thread, so a slow answer delays only the polls of its own connection (one in
/// [`PROBE_CONNECTIONS`]), and only when it takes longer than that connection's period. Each
/// latency is from the poll's scheduled time, so such a wait is never hidden.
fn probe(
    addr: SocketAddr,
    ids: &[String],
    rate: f64,
    stop: &AtomicBool,
    errors: &Errors,
) -> Probed {
    let body = poll_body(OLD_DIGEST, "boot-a", 0, 0);
    // `x-request-id: <probe device id>` (`f2-probe-N`): the CP logs its handler time under that id, so the probe's
    // own polls can be told apart from the fleet's in the CP's log.
    let requests: Vec<Vec<u8>> = ids
        .iter()
        .map(|d| {
            let bytes = raw::device_post(addr, "/v1/device/poll", d, &body);
            let text = String::from_utf8_lossy(&bytes).replacen(
                "x-autonomy-device:",
                &format!("x-request-id: {d}\r\nx-autonomy-device:"),
                1,
            );
            text.into_bytes()
        })
        .collect();
    let period = Duration::from_secs_f64(1.0 / rate);
    let begin = Instant::now();
    let lanes = PROBE_CONNECTIONS as u32;
    let lane = |first: u32| {
        let mut conn = Conn::new(addr);
        let mut out = Probed::default();
        let mut k = first;
        while !stop.load(Ordering::Relaxed) {
            let at = begin + period * k;
            match at.checked_duration_since(Instant::now()) {
                Some(d) => std::thread::sleep(d),
                None if at.elapsed() > PROBE_LATE => out.sent_late += 1,
                None => {}
            }
            match conn.exchange(&requests[k as usize % requests.len()]) {
                Ok(200) => out.samples.push((Instant::now(), at.elapsed())),
                Ok(status) => errors.note(format!("probe poll: {status} {}", conn.body_text())),
                Err(e) => errors.note(format!("probe poll: {e}")),
            }
            k = k.saturating_add(lanes);
        }
        out
    };
    std::thread::scope(|s| {
        let lanes: Vec<_> = (0..lanes).map(|i| s.spawn(move || lane(i))).collect();
        let mut all = Probed::default();
        for l in lanes {
            let got = l.join().unwrap_or_default();
            all.samples.extend(got.samples);
            all.sent_late += got.sent_late;
        }
        all.samples.sort_by_key(|(done, _)| *done);
        all
    })
}

fn of_window(samples: &Samples, from: Instant, to: Option<Instant>) -> Latency {
    let picked: Vec<Duration> = samples
        .iter()
        .filter(|(done, _)| *done >= from && to.is_none_or(|t| *done < t))
        .map(|(_, d)| *d)
        .collect();
    Latency::of(&picked)
}

fn self_kib(field: &str) -> Option<u64> {
    cp::proc_status_kib(std::process::id(), field)
}

fn bench_cpu() -> Option<f64> {
    cp::cpu_seconds(std::path::Path::new("/proc/self/stat"))
}

fn cp_metrics(http: &Http) -> Option<String> {
    http.call(&http.api().get::<()>("/metrics", &[]))
        .ok()
        .map(|r| r.text().into_owned())
}

fn requests_of(text: &str) -> Option<f64> {
    Some(
        metric(text, "autonomy_device_polls_total")?
            + metric(text, "autonomy_device_reports_total").unwrap_or(0.0),
    )
}

/// (stage sizes, verified, phase) of the plan.
fn plan_state(http: &Http) -> anyhow::Result<(Vec<u64>, u64, Phase)> {
    let r = http
        .call(&http.api().get_rollout(PLAN))
        .context("reading the F2 plan")?
        .value()?;
    let (mut sizes, mut verified) = (Vec::new(), 0);
    if let Some(ro) = &r.status.rollout {
        sizes = ro.stages.iter().map(|s| s.size).collect();
        verified = ro
            .stages
            .iter()
            .map(|s| s.counts.get(&DeviceState::Verified).copied().unwrap_or(0))
            .sum();
    }
    Ok((sizes, verified, r.status.phase))
}

/// More TCP sockets in TIME_WAIT than this at the start (an earlier F2 run's 19,000 closed
/// connections stay there 60 s) and F2 waits for them to clear first: a run started on top
/// of them had 1,900–2,700 of its fresh connections closed at once ("unexpected end of
/// file") and long polls answered 10–17 s late, so it measured the leftovers, not the CP.
const TIME_WAIT_QUIET: u64 = 1_000;
/// How long F2 waits for TIME_WAIT to clear before it runs anyway (and says so).
const TIME_WAIT_LIMIT: Duration = Duration::from_secs(90);

/// TCP sockets in TIME_WAIT on this machine (`/proc/net/sockstat`, `tw`).
fn time_wait_sockets() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let tcp = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = tcp.split_whitespace();
    while let Some(w) = words.next() {
        if w == "tw" {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// Waits (at most [`TIME_WAIT_LIMIT`], polling each second) until at most
/// [`TIME_WAIT_QUIET`] sockets are in TIME_WAIT; returns the count at the start.
fn wait_for_time_wait_to_clear() -> Option<u64> {
    let first = time_wait_sockets()?;
    if first <= TIME_WAIT_QUIET {
        return Some(first);
    }
    eprintln!(
        "F2: {first} TCP sockets in TIME_WAIT (an earlier run's connections); waiting up to \
         {} s for them to clear so this run's connections do not collide with them",
        TIME_WAIT_LIMIT.as_secs()
    );
    let started = Instant::now();
    let mut said = Instant::now();
    loop {
        let now = time_wait_sockets().unwrap_or(0);
        if now <= TIME_WAIT_QUIET {
            eprintln!("  cleared after {:.0} s", started.elapsed().as_secs_f64());
            return Some(first);
        }
        if started.elapsed() >= TIME_WAIT_LIMIT {
            eprintln!("  warning: still {now} in TIME_WAIT; running anyway (expect early closes)");
            return Some(first);
        }
        if said.elapsed() >= Duration::from_secs(10) {
            eprintln!("  {now} still in TIME_WAIT");
            said = Instant::now();
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

pub fn run_f2(env: &Env) -> anyhow::Result<F2Report> {
    let cfg = &env.cfg;
    let time_wait_at_start = wait_for_time_wait_to_clear();
    let n = cfg.f2_devices;
    let r = cfg.f2_rollout_devices.min(n);
    let wait = cfg.f2_wait_seconds;
    let ramp = Duration::from_secs(u64::from(wait));
    // Every device on its own connection needs that many descriptors in the generator and in
    // the CP. Where the hard limit cannot be raised, as many as fit hold a long poll and the
    // others poll briefly once per wait (the fleet's poll rate), and the CP's RSS with all of
    // them held is projected from the RSS per held connection.
    let (limit, note) = match raise_open_files(n + 10_000) {
        Ok(limit) => (limit, None),
        Err(e) => {
            let soft = open_file_limits().map_or(0, |(s, _)| s);
            if soft < 2_000 + r {
                return Err(e);
            }
            eprintln!(
                "  warning: {e:#}\n  holding at most {} long polls",
                soft - 1_000
            );
            (soft, Some(format!("{e:#}")))
        }
    };
    let held = cfg
        .f2_held
        .unwrap_or(n)
        .min(n)
        .min(limit.saturating_sub(1_000));
    if r > held {
        bail!("F2: the {r} rollout devices must be among the {held} devices holding a long poll");
    }
    let sources = held.div_ceil(PER_SOURCE) as usize;
    let stride = (held / r).max(1);
    let in_rollout = |i: u64| i.is_multiple_of(stride) && i / stride < r;
    eprintln!(
        "F2: {n} devices, {held} long-polling (wait {wait} s) on their own connections over \
         {sources} source address(es), {} polling briefly every {wait} s; a 4-stage plan over \
         {r} of them; probe {} polls/s",
        n - held,
        cfg.f2_probe_rate
    );
    let max_conns = (held + 500).to_string();
    let cp = env.start_args(
        &env.work.join("fleet-f2"),
        "f2",
        &[
            "--promoter-interval",
            "0.5",
            "--max-connections",
            &max_conns,
        ],
    )?;
    let result = drive(
        env,
        &cp,
        (n, held, r),
        wait,
        ramp,
        sources,
        &in_rollout,
        (limit, note),
    );
    let peak = cp.peak_rss_kib();
    env.stop(cp)?;
    let mut report = result?;
    report.cp_peak_rss_kib = peak;
    report.time_wait_at_start = time_wait_at_start;
    eprintln!(
        "  completed={} in {} s; probe {} ({} sent late); overshoot p99 {:.0} ms; reports {}; CP peak RSS \
         {} MiB ({} KiB/conn on average, {} KiB per added connection), {} CPUs; generator {} \
         CPUs, {} MiB; {} errors",
        report.completed,
        report
            .rollout_seconds
            .map_or("?".into(), |s| format!("{s:.1}")),
        report.probe.short(),
        report.probe_sent_late,
        report.long_poll_overshoot.p99_ms,
        report.report_latency.short(),
        report.cp_peak_rss_kib.map_or(0, |k| k / 1024),
        crate::fleet::show(report.cp_kib_per_connection),
        crate::fleet::show(report.cp_kib_per_connection_marginal),
        crate::fleet::show(report.cp_cpus_used),
        crate::fleet::show(report.generator_cpus_used),
        report.generator_peak_rss_kib.map_or(0, |k| k / 1024),
        report.errors
    );
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn drive(
    env: &Env,
    cp: &Cp,
    (n, held, r): (u64, u64, u64),
    wait: u32,
    ramp: Duration,
    sources: usize,
    in_rollout: &(dyn Fn(u64) -> bool + Sync),
    (open_file_limit, open_file_limit_note): (u64, Option<String>),
) -> anyhow::Result<F2Report> {
    let cfg = &env.cfg;
    let http = Http::new(&cp.url, REQUEST_TIMEOUT)?;
    let addr = raw::loopback(&cp.url)?;
    let cp_pid = cp.pid().ok_or_else(|| anyhow!("the CP is not running"))?;
    let mut ids: Vec<String> = (0..n).map(|i| format!("f2-{i:06}")).collect();
    let probe_ids: Vec<String> = (0..PROBE_DEVICES)
        .map(|i| format!("f2-probe-{i}"))
        .collect();
    ids.extend(probe_ids.iter().cloned());
    let registration = engine::register(
        &cp.url,
        &ids,
        &|i| {
            let role = if i as u64 >= n {
                "probe"
            } else if (i as u64) < held && in_rollout(i as u64) {
                "rollout"
            } else {
                "idle"
            };
            BTreeMap::from([
                ("fleet".to_string(), "f2".to_string()),
                ("f2".to_string(), role.to_string()),
            ])
        },
        cfg.seed_concurrency,
    )?;
    ids.truncate(n as usize);

    let cp_rss_before = cp::proc_status_kib(cp_pid, "VmRSS:");
    let gen_rss_before = self_kib("VmRSS:");
    let sh = Arc::new(Shared {
        addr,
        host: addr.to_string(),
        wait,
        open: AtomicU64::new(0),
        open_peak: AtomicU64::new(0),
        connects: AtomicU64::new(0),
        polls: AtomicU64::new(0),
        timed_out: AtomicU64::new(0),
        early: AtomicU64::new(0),
        with_assignment: AtomicU64::new(0),
        reports: AtomicU64::new(0),
        succeeded: AtomicU64::new(0),
        short_polls: AtomicU64::new(0),
        short_samples: Mutex::new(Vec::new()),
        errors: Errors::default(),
        kinds: Mutex::new(BTreeMap::new()),
        overshoot: Mutex::new(Vec::new()),
        report_latency: Mutex::new(Vec::new()),
        assigned_at: Mutex::new(Vec::new()),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("f2-devices")
        .enable_all()
        .build()
        .context("starting the generator's runtime")?;
    let begin = Instant::now();
    let tokio_begin = tokio::time::Instant::from_std(begin);
    let short_ids = ids.split_off(held as usize);
    for (i, id) in ids.into_iter().enumerate() {
        let source = Ipv4Addr::new(127, 0, 0, 2 + (i % sources) as u8);
        let start_at = tokio_begin + ramp.mul_f64(i as f64 / held as f64);
        rt.spawn(device(sh.clone(), id, source, start_at));
    }
    let short_devices = short_ids.len() as u64;
    let pool = if short_ids.is_empty() {
        0
    } else {
        SHORT_POLL_CONNECTIONS.min(short_ids.len())
    };
    let mut slices: Vec<Vec<String>> = vec![Vec::new(); pool];
    for (j, id) in short_ids.into_iter().enumerate() {
        slices[j % pool].push(id);
    }
    for ids in slices {
        rt.spawn(short_poller(sh.clone(), ids, tokio_begin, ramp));
    }
    let stop = AtomicBool::new(false);
    let probe_errors = Errors::default();
    let outcome = std::thread::scope(|s| {
        let prober = s.spawn(|| probe(addr, &probe_ids, cfg.f2_probe_rate, &stop, &probe_errors));
        let measured = measure(&http, cp, &sh, (held, r), wait, ramp, begin);
        stop.store(true, Ordering::Relaxed);
        let probed = prober.join().unwrap_or_default();
        (measured, probed)
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    let (measured, Probed { samples, sent_late }) = outcome;
    let m = measured?;

    let ramp_end = begin + ramp;
    let errors = sh.errors.count() + probe_errors.count();
    let mut first_errors = sh.errors.first();
    first_errors.extend(probe_errors.first());
    let gen_cpu = m.gen_cpu.map(round3);
    let connections = sh.open_peak.load(Ordering::Relaxed);
    let per_conn = |after: Option<u64>, before: Option<u64>| {
        after
            .zip(before)
            .filter(|_| connections > 0)
            .map(|(a, b)| round3(a.saturating_sub(b) as f64 / connections as f64))
    };
    let assigned: Vec<Duration> = take(&sh.assigned_at)
        .into_iter()
        .filter_map(|at| m.started_at.and_then(|s| at.checked_duration_since(s)))
        .collect();
    let window = m.window_seconds;
    let short_samples = take(&sh.short_samples);
    let errors_by_kind = std::mem::take(&mut *sh.kinds.lock().unwrap_or_else(|e| e.into_inner()));
    let kib_per_conn = per_conn(m.cp_rss_held, cp_rss_before);
    let marginal = slope(&m.ramp_rss).map(round3);
    let projected = marginal
        .or(kib_per_conn)
        .zip(m.cp_rss_held)
        .filter(|_| connections < n)
        .map(|(k, held)| held + (k * (n - connections) as f64) as u64);
    Ok(F2Report {
        devices: n,
        rollout_devices: r,
        probe_devices: PROBE_DEVICES,
        wait_seconds: wait,
        ramp_seconds: ramp.as_secs_f64(),
        source_addresses: sources,
        open_file_limit,
        open_file_limit_note,
        time_wait_at_start: None,
        held,
        short_poll_devices: short_devices,
        short_poll_connections: pool,
        short_polls: sh.short_polls.load(Ordering::Relaxed),
        short_poll_latency: of_window(&short_samples, m.window_start, Some(m.window_end)),
        registration,
        connections_peak: connections,
        cp_long_polls_waiting_peak: m.waiting_peak,
        window_seconds: round3(window),
        stage_sizes: m.stage_sizes,
        rollout_seconds: m.rollout_seconds.map(round3),
        completed: m.completed,
        verified: m.verified,
        devices_succeeded: sh.succeeded.load(Ordering::Relaxed),
        polls: sh.polls.load(Ordering::Relaxed),
        polls_timed_out: sh.timed_out.load(Ordering::Relaxed),
        polls_early: sh.early.load(Ordering::Relaxed),
        polls_with_assignment: sh.with_assignment.load(Ordering::Relaxed),
        reports: sh.reports.load(Ordering::Relaxed),
        cp_requests: m.cp_requests.map(|v| v as u64),
        cp_cpu_seconds: m.cp_cpu.map(round3),
        cp_cpus_used: m.cp_cpu.map(|c| round3(c / window.max(1e-9))),
        cp_cpu_us_per_request: m
            .cp_cpu
            .zip(m.cp_requests)
            .filter(|(_, n)| *n > 0.0)
            .map(|(c, n)| round1(c * 1e6 / n)),
        cp_cpu_seconds_by_thread: m.cp_threads.clone(),
        cp_rss_before_kib: cp_rss_before,
        cp_rss_held_kib: m.cp_rss_held,
        cp_rss_anon_held_kib: m.cp_rss_anon_held,
        cp_peak_rss_kib: None,
        cp_kib_per_connection: kib_per_conn,
        cp_kib_per_connection_marginal: marginal,
        cp_rss_ramp_samples: m.ramp_rss.clone(),
        cp_rss_projected_all_held_kib: projected,
        cp_threads: cp::proc_status_kib(cp_pid, "Threads:"),
        generator_cpu_seconds: gen_cpu,
        generator_cpus_used: gen_cpu.map(|c| round3(c / window.max(1e-9))),
        generator_rss_before_kib: gen_rss_before,
        generator_peak_rss_kib: self_kib("VmHWM:"),
        generator_kib_per_connection: per_conn(m.gen_rss_held, gen_rss_before),
        probe_rate: cfg.f2_probe_rate,
        probe_connections: PROBE_CONNECTIONS,
        probe_sent_late: sent_late,
        probe: of_window(&samples, m.window_start, Some(m.window_end)),
        probe_during_ramp: of_window(&samples, begin, Some(ramp_end)),
        probe_during_rollout: m
            .started_at
            .map(|s| of_window(&samples, s, m.completed_at))
            .unwrap_or_default(),
        long_poll_overshoot: Latency::of(&take(&sh.overshoot)),
        report_latency: Latency::of(&take(&sh.report_latency)),
        assignment_after_start: Latency::of(&assigned),
        connects: sh.connects.load(Ordering::Relaxed),
        errors,
        first_errors,
        errors_by_kind,
        method: "RBAC off (X-Autonomy-Device). N devices registered over HTTP (POST /v1/devices \
                 at --seed-concurrency); then one tokio task and one kept-alive raw HTTP/1.1 \
                 connection per device on one runtime thread, bound to 127.0.0.2, 127.0.0.3, … \
                 (10,000 per source address), first polls spread over the ramp (= wait), each \
                 device long-polling POST /v1/device/poll {known_revision, wait_seconds} again as \
                 soon as an answer comes. After the ramp one engine plan (canary = 1% of R up to \
                 100 devices, 20%, 30%, the rest) over the R rollout devices is created and \
                 started; a device whose poll carries an assignment sends downloading, \
                 installing, rebooting, verifying and succeeded (new boot, target digest) and \
                 long-polls again with the new digest. The window runs from the end of the ramp \
                 to completed (at least 1.2 × wait + 2 s). Probe: 4 other devices, \
                 wait_seconds 0, at a fixed rate on one connection of its own thread, latency \
                 from each poll's scheduled time. CP CPU from /proc/PID/stat and requests \
                 (device polls + reports) from /metrics over the window; RSS sampled every \
                 second (VmRSS, RssAnon), peak is VmHWM; the generator's CPU is this process's \
                 over the window",
    })
}

struct Measured {
    window_start: Instant,
    window_end: Instant,
    window_seconds: f64,
    started_at: Option<Instant>,
    completed_at: Option<Instant>,
    rollout_seconds: Option<f64>,
    completed: bool,
    stage_sizes: Vec<u64>,
    verified: u64,
    cp_cpu: Option<f64>,
    gen_cpu: Option<f64>,
    cp_requests: Option<f64>,
    cp_threads: BTreeMap<String, f64>,
    cp_rss_held: Option<u64>,
    cp_rss_anon_held: Option<u64>,
    gen_rss_held: Option<u64>,
    waiting_peak: Option<f64>,
    ramp_rss: Vec<(u64, u64)>,
}

/// The least-squares slope of y over x (`None` with fewer than 3 points or no spread in x).
fn slope(points: &[(u64, u64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0 as f64).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1 as f64).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 as f64 - mx).powi(2)).sum();
    let sxy: f64 = points
        .iter()
        .map(|p| (p.0 as f64 - mx) * (p.1 as f64 - my))
        .sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// The main thread while the devices run: ramp, window, the plan from start to completed,
/// and the samples.
fn measure(
    http: &Http,
    cp: &Cp,
    sh: &Shared,
    (n, r): (u64, u64),
    wait: u32,
    ramp: Duration,
    begin: Instant,
) -> anyhow::Result<Measured> {
    let cp_pid = cp.pid().ok_or_else(|| anyhow!("the CP is not running"))?;
    let mut cp_rss_held: Option<u64> = None;
    let mut cp_rss_anon_held: Option<u64> = None;
    let mut gen_rss_held: Option<u64> = None;
    let mut waiting_peak: Option<f64> = None;
    let mut last_metrics = Instant::now() - Duration::from_secs(10);
    let mut last_print = Instant::now();
    let mut sample = |sh: &Shared| {
        let max = |a: Option<u64>, b: Option<u64>| a.max(b);
        cp_rss_held = max(cp_rss_held, cp::proc_status_kib(cp_pid, "VmRSS:"));
        cp_rss_anon_held = max(cp_rss_anon_held, cp::proc_status_kib(cp_pid, "RssAnon:"));
        gen_rss_held = max(gen_rss_held, self_kib("VmRSS:"));
        if last_metrics.elapsed() >= Duration::from_secs(2) {
            last_metrics = Instant::now();
            if let Some(w) = cp_metrics(http)
                .as_deref()
                .and_then(|t| metric(t, "autonomy_device_long_polls_waiting"))
            {
                waiting_peak = Some(waiting_peak.map_or(w, |p: f64| p.max(w)));
            }
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            eprintln!(
                "  {:.0} s: {} connections, {} polls answered, {} reports, {} devices \
                 succeeded, {} errors",
                begin.elapsed().as_secs_f64(),
                sh.open.load(Ordering::Relaxed),
                sh.polls.load(Ordering::Relaxed),
                sh.reports.load(Ordering::Relaxed),
                sh.succeeded.load(Ordering::Relaxed),
                sh.errors.count()
            );
        }
    };
    // The ramp, then until every device is connected (bounded).
    let settle = begin + ramp + Duration::from_secs(2);
    let connect_limit = begin + ramp + Duration::from_secs(120);
    let mut ramp_rss = Vec::new();
    while Instant::now() < settle
        || (sh.open.load(Ordering::Relaxed) < n && Instant::now() < connect_limit)
    {
        sample(sh);
        if let Some(rss) = cp::proc_status_kib(cp_pid, "VmRSS:") {
            ramp_rss.push((sh.open.load(Ordering::Relaxed), rss));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let open = sh.open.load(Ordering::Relaxed);
    if open < n {
        eprintln!(
            "  warning: {open} of {n} devices connected {} s after the ramp",
            (connect_limit - begin - ramp).as_secs()
        );
    }
    let window_start = Instant::now();
    let cpu0 = (cp.cpu_seconds(), bench_cpu());
    let threads0 = cp.cpu_by_thread();
    let req0 = cp_metrics(http).as_deref().and_then(requests_of);
    eprintln!(
        "  {open} devices connected after {:.1} s; starting the plan",
        begin.elapsed().as_secs_f64()
    );
    let selector = BTreeMap::from([("f2".to_string(), "rollout".to_string())]);
    let canary = r.div_ceil(100).clamp(1, 100);
    let body = crate::fleet::four_stage_plan(
        PLAN,
        &format!("oci://registry.example.com/fleet/f2@sha256:{TARGET_HEX}"),
        serde_json::json!(selector),
        canary,
    );
    http.call(
        &http
            .api()
            .create_rollout_json(body.to_string().into_bytes(), None),
    )
    .context("creating the F2 plan")?;
    let started_at = Instant::now();
    http.call(
        &http
            .api()
            .transition(PLAN, Verb::Start, &TransitionRequest::default()),
    )
    .context("starting the F2 plan")?;
    let (mut stage_sizes, mut verified, mut completed_at) = (Vec::new(), 0, None);
    let mut last_check = Instant::now() - Duration::from_secs(1);
    let min_end = window_start + Duration::from_secs_f64(f64::from(wait) * 1.2 + 2.0);
    loop {
        sample(sh);
        if completed_at.is_none() && last_check.elapsed() >= Duration::from_millis(500) {
            last_check = Instant::now();
            let (sizes, v, phase) = plan_state(http)?;
            (stage_sizes, verified) = (sizes, v);
            match phase {
                Phase::Completed => {
                    completed_at = Some(Instant::now());
                    eprintln!(
                        "  the plan completed {:.1} s after its start",
                        started_at.elapsed().as_secs_f64()
                    );
                }
                Phase::Active | Phase::Published => {}
                other => bail!("the F2 plan went {other} ({} errors)", sh.errors.count()),
            }
        }
        let now = Instant::now();
        if completed_at.is_some() && now >= min_end {
            break;
        }
        if now - started_at > ROLLOUT_LIMIT {
            eprintln!(
                "  warning: the plan did not complete within {} s",
                ROLLOUT_LIMIT.as_secs()
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let window_end = Instant::now();
    let cpu1 = (cp.cpu_seconds(), bench_cpu());
    let threads1 = cp.cpu_by_thread();
    let req1 = cp_metrics(http).as_deref().and_then(requests_of);
    sample(sh);
    let diff = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| (b - a).max(0.0));
    Ok(Measured {
        window_start,
        window_end,
        window_seconds: (window_end - window_start).as_secs_f64(),
        started_at: Some(started_at),
        completed_at,
        rollout_seconds: completed_at.map(|c| (c - started_at).as_secs_f64()),
        completed: completed_at.is_some(),
        stage_sizes,
        verified,
        cp_cpu: diff(cpu0.0, cpu1.0),
        gen_cpu: diff(cpu0.1, cpu1.1),
        cp_requests: diff(req0, req1),
        cp_threads: threads1
            .iter()
            .map(|(name, b)| {
                let a = threads0.get(name).copied().unwrap_or(0.0);
                (name.clone(), round3(b - a))
            })
            .filter(|(_, v)| *v > 0.0)
            .collect(),
        cp_rss_held,
        cp_rss_anon_held,
        gen_rss_held,
        waiting_peak,
        ramp_rss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_fits_a_line() {
        assert_eq!(slope(&[(0, 10), (10, 30), (20, 50)]), Some(2.0));
        assert_eq!(slope(&[(5, 10), (5, 30), (5, 50)]), None);
        assert_eq!(slope(&[(0, 10), (10, 30)]), None);
    }

    #[test]
    fn parses_poll_answers() {
        assert_eq!(
            parse_poll(b"{\"revision\":7,\"poll_after_seconds\":30,\"assignment\":null}"),
            Some((7, None))
        );
        let with = b"{\"revision\":12,\"poll_after_seconds\":1,\"assignment\":{\"plan_id\":\"p\",\
\"attempt\":2,\"action\":\"install\"}}";
        assert_eq!(parse_poll(with), Some((12, Some(2))));
        assert_eq!(parse_poll(b"{\"error\":\"x\"}"), None);
    }

    #[test]
    fn parses_answer_heads() {
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\ncontent-type: x").unwrap(),
            (200, 12, false)
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 503 Busy\r\nconnection: close\r\ncontent-length: 0").unwrap(),
            (503, 0, true)
        );
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nx: y").is_err());
        assert!(parse_head(b"SSH-2.0").is_err());
    }
}

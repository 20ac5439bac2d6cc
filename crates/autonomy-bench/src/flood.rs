//! B7's flood generator: requests without a valid token, as cheap as the bench can make them
//! so that what it measures is the CP, not itself.
//!
//! Each of `connections` threads (named `b7-flood`) keeps one raw HTTP/1.1 connection to
//! 127.0.0.1 alive and sends, in a closed loop, pre-built request bytes alternating between
//! `POST /v1/rollouts/<60,000×a>/start` without a token (a bad path id: 400) and
//! `POST /v1/rollouts/plan-N/start` with `Authorization: Bearer aut_forged` (401). No JSON, no
//! per-request allocation: the status line and headers are read into one reused buffer and the
//! body is discarded through a stack buffer. The flood is bounded by a request count, a time
//! limit and a stop flag, whichever comes first. Each thread reads its own CPU time
//! (`/proc/thread-self/stat`) at its start and end, so the report can say what the generator
//! itself cost.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use serde::Serialize;

use crate::cp;
use crate::stats::{round1, round3};

/// Bytes of the bad path id (`a` repeated), as in issue 14's probe.
pub const HUGE_ID_BYTES: usize = 60_000;
/// Forged-token requests pre-built per connection (`plan-N` with different N, cycled).
const FORGED_VARIANTS: usize = 16;
/// Connect, read and write timeout of one flood connection.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest status or header line read.
const MAX_LINE: u64 = 16 * 1024;
/// Largest answer body read (the CP's refusals are a few hundred bytes).
const MAX_BODY: u64 = 1024 * 1024;

/// What to send, where, and for how long at most.
#[derive(Debug, Clone)]
pub struct Spec {
    pub addr: SocketAddr,
    pub connections: usize,
    /// Requests sent at most (over every connection).
    pub max_requests: u64,
    /// Longest the flood runs.
    pub limit: Duration,
}

impl Spec {
    /// `base` is `http://127.0.0.1:PORT`: the flood only goes to loopback.
    pub fn new(
        base: &str,
        connections: usize,
        max_requests: u64,
        limit: Duration,
    ) -> anyhow::Result<Spec> {
        let authority = base
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("the flood needs a plain http:// URL, not {base}"))?;
        let addr: SocketAddr = authority
            .trim_end_matches('/')
            .parse()
            .map_err(|_| anyhow!("the flood needs an IP:PORT address, not {base}"))?;
        if !addr.ip().is_loopback() {
            bail!("the flood only goes to loopback, not {addr}");
        }
        if connections == 0 || connections > 1024 {
            bail!("flood connections must be 1 to 1024, got {connections}");
        }
        Ok(Spec {
            addr,
            connections,
            max_requests,
            limit,
        })
    }
}

/// What a flood did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FloodReport {
    pub connections: usize,
    /// From the first thread's start to the last thread's end.
    pub seconds: f64,
    /// Requests answered (any status).
    pub answered: u64,
    /// Answers 400 (the bad path id, refused before anything is recorded).
    pub bad_id_400: u64,
    /// Answers 401 (the forged token).
    pub unauthenticated_401: u64,
    /// Answers with any other status (a few of them in `other_statuses`).
    pub other_status: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_statuses: Vec<u16>,
    /// Exchanges that failed (connect, write, read, malformed answer); the connection is
    /// reopened after a 10 ms pause.
    pub transport_errors: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub first_errors: Vec<String>,
    /// TCP connections opened (one per thread unless the CP closed them or an exchange failed).
    pub connects: u64,
    pub answered_per_sec: f64,
    /// 400 + 401 answers per second.
    pub refused_per_sec: f64,
    /// CPU (user + system) of the flood threads alone, seconds.
    pub generator_cpu_seconds: Option<f64>,
    /// `generator_cpu_seconds` ÷ `seconds`: CPUs the generator kept busy.
    pub generator_cpus_used: Option<f64>,
    pub huge_id_request_bytes: usize,
    pub forged_request_bytes: usize,
    /// What ended it: `count`, `time` or `stop`.
    pub ended_by: &'static str,
}

impl FloodReport {
    /// Requests refused for want of a valid token or id (400 + 401).
    pub fn refused(&self) -> u64 {
        self.bad_id_400 + self.unauthenticated_401
    }

    /// Several floods of the same spec as one: counts, seconds and CPU summed, rates
    /// recomputed; it ended by `stop` only if every part did.
    pub fn merge(parts: Vec<FloodReport>) -> FloodReport {
        let mut out = FloodReport {
            ended_by: "stop",
            ..FloodReport::default()
        };
        let mut cpu = Some(0.0);
        for p in parts {
            out.connections = p.connections;
            out.huge_id_request_bytes = p.huge_id_request_bytes;
            out.forged_request_bytes = p.forged_request_bytes;
            out.seconds += p.seconds;
            out.answered += p.answered;
            out.bad_id_400 += p.bad_id_400;
            out.unauthenticated_401 += p.unauthenticated_401;
            out.other_status += p.other_status;
            keep_first(&mut out.other_statuses, p.other_statuses, true);
            out.transport_errors += p.transport_errors;
            keep_first(&mut out.first_errors, p.first_errors, false);
            out.connects += p.connects;
            cpu = cpu.zip(p.generator_cpu_seconds).map(|(a, b)| a + b);
            if p.ended_by != "stop" {
                out.ended_by = p.ended_by;
            }
        }
        let seconds = out.seconds.max(1e-9);
        out.seconds = round3(out.seconds);
        out.answered_per_sec = round1(out.answered as f64 / seconds);
        out.refused_per_sec = round1(out.refused() as f64 / seconds);
        out.generator_cpu_seconds = cpu.map(round3);
        out.generator_cpus_used = cpu.map(|c| round3(c / seconds));
        out
    }
}

/// `POST /v1/rollouts/<60,000×a>/start` without a token.
fn huge_id_request(host: &str) -> Vec<u8> {
    format!(
        "POST /v1/rollouts/{}/start HTTP/1.1\r\nhost: {host}\r\nuser-agent: autonomy-bench-flood\r\ncontent-length: 0\r\n\r\n",
        "a".repeat(HUGE_ID_BYTES)
    )
    .into_bytes()
}

/// `POST /v1/rollouts/plan-N/start` with a forged bearer token.
fn forged_request(host: &str, n: usize) -> Vec<u8> {
    format!(
        "POST /v1/rollouts/plan-{n}/start HTTP/1.1\r\nhost: {host}\r\nuser-agent: autonomy-bench-flood\r\nauthorization: Bearer aut_forged\r\ncontent-length: 0\r\n\r\n"
    )
    .into_bytes()
}

#[derive(Default)]
struct Tally {
    answered: u64,
    s400: u64,
    s401: u64,
    other: u64,
    other_statuses: Vec<u16>,
    errors: u64,
    first_errors: Vec<String>,
    connects: u64,
    cpu: Option<f64>,
}

/// Runs the flood until `spec.max_requests` are sent, `spec.limit` passes or `stop` is set.
pub fn run(spec: &Spec, stop: &AtomicBool) -> FloodReport {
    let host = spec.addr.to_string();
    let huge = huge_id_request(&host);
    let claimed = AtomicU64::new(0);
    let started = Instant::now();
    let deadline = started + spec.limit;
    let total = Mutex::new(Tally::default());
    std::thread::scope(|s| {
        for t in 0..spec.connections {
            let forged: Vec<Vec<u8>> = (0..FORGED_VARIANTS)
                .map(|j| forged_request(&host, t * FORGED_VARIANTS + j))
                .collect();
            let (huge, claimed, total) = (&huge, &claimed, &total);
            let worker = move || {
                let tally = flood_connection(spec, huge, &forged, claimed, stop, deadline);
                merge(&mut total.lock().unwrap_or_else(|e| e.into_inner()), tally);
            };
            if let Err(e) = std::thread::Builder::new()
                .name("b7-flood".into())
                .spawn_scoped(s, worker)
            {
                let mut t = total.lock().unwrap_or_else(|e| e.into_inner());
                t.errors += 1;
                if t.first_errors.len() < 5 {
                    t.first_errors
                        .push(format!("cannot start a flood thread: {e}"));
                }
            }
        }
    });
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    let t = total.into_inner().unwrap_or_else(|e| e.into_inner());
    let ended_by = if claimed.load(Ordering::Relaxed) >= spec.max_requests {
        "count"
    } else if stop.load(Ordering::Relaxed) {
        "stop"
    } else {
        "time"
    };
    FloodReport {
        connections: spec.connections,
        seconds: round3(seconds),
        answered: t.answered,
        bad_id_400: t.s400,
        unauthenticated_401: t.s401,
        other_status: t.other,
        other_statuses: t.other_statuses,
        transport_errors: t.errors,
        first_errors: t.first_errors,
        connects: t.connects,
        answered_per_sec: round1(t.answered as f64 / seconds),
        refused_per_sec: round1((t.s400 + t.s401) as f64 / seconds),
        generator_cpu_seconds: t.cpu.map(round3),
        generator_cpus_used: t.cpu.map(|c| round3(c / seconds)),
        huge_id_request_bytes: huge.len(),
        forged_request_bytes: forged_request(&host, 0).len(),
        ended_by,
    }
}

/// Appends `from` to `into` up to five entries (skipping ones already there when `distinct`).
fn keep_first<T: PartialEq>(into: &mut Vec<T>, from: Vec<T>, distinct: bool) {
    for x in from {
        if into.len() < 5 && !(distinct && into.contains(&x)) {
            into.push(x);
        }
    }
}

fn merge(into: &mut Tally, t: Tally) {
    into.answered += t.answered;
    into.s400 += t.s400;
    into.s401 += t.s401;
    into.other += t.other;
    keep_first(&mut into.other_statuses, t.other_statuses, true);
    into.errors += t.errors;
    keep_first(&mut into.first_errors, t.first_errors, false);
    into.connects += t.connects;
    into.cpu = match (into.cpu, t.cpu) {
        (Some(a), Some(b)) => Some(a + b),
        (None, b) => b,
        (a, None) => a,
    };
}

/// One flood connection's closed loop.
fn flood_connection(
    spec: &Spec,
    huge: &[u8],
    forged: &[Vec<u8>],
    claimed: &AtomicU64,
    stop: &AtomicBool,
    deadline: Instant,
) -> Tally {
    let self_stat = Path::new("/proc/thread-self/stat");
    let cpu0 = cp::cpu_seconds(self_stat);
    let mut tally = Tally::default();
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut line = Vec::with_capacity(MAX_LINE as usize);
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed)
        && Instant::now() < deadline
        && claimed.fetch_add(1, Ordering::Relaxed) < spec.max_requests
    {
        let request = if n.is_multiple_of(2) {
            huge
        } else {
            &forged[(n / 2) % forged.len()]
        };
        n += 1;
        let result = match conn.as_mut() {
            Some(c) => exchange(c, request, &mut line),
            None => match connect(spec.addr) {
                Ok(c) => {
                    tally.connects += 1;
                    exchange(conn.insert(c), request, &mut line)
                }
                Err(e) => Err(e),
            },
        };
        match result {
            Ok((status, keep)) => {
                tally.answered += 1;
                match status {
                    400 => tally.s400 += 1,
                    401 => tally.s401 += 1,
                    s => {
                        tally.other += 1;
                        if tally.other_statuses.len() < 5 && !tally.other_statuses.contains(&s) {
                            tally.other_statuses.push(s);
                        }
                    }
                }
                if !keep {
                    conn = None;
                }
            }
            Err(e) => {
                tally.errors += 1;
                if tally.first_errors.len() < 5 {
                    tally.first_errors.push(e.to_string());
                }
                conn = None;
                // Do not spin on a CP that refuses connections.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    let cpu1 = cp::cpu_seconds(self_stat);
    tally.cpu = cpu0.zip(cpu1).map(|(a, b)| (b - a).max(0.0));
    tally
}

fn connect(addr: SocketAddr) -> io::Result<BufReader<TcpStream>> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(BufReader::with_capacity(16 * 1024, stream))
}

/// Sends `request` and reads its whole answer: the status and whether the connection may
/// carry another exchange.
fn exchange<S: Read + Write>(
    conn: &mut BufReader<S>,
    request: &[u8],
    line: &mut Vec<u8>,
) -> io::Result<(u16, bool)> {
    conn.get_mut().write_all(request)?;
    conn.get_mut().flush()?;
    read_answer(conn, line)
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Reads one line (without CR LF) into `line`.
fn read_line<R: BufRead>(r: &mut R, line: &mut Vec<u8>) -> io::Result<()> {
    line.clear();
    let n = r.by_ref().take(MAX_LINE).read_until(b'\n', line)?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    if line.last() != Some(&b'\n') {
        return Err(bad("answer line too long or cut"));
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(())
}

/// `name: value` → the value if the header is `name` (any case).
fn header_value<'a>(line: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    if !line[..colon].eq_ignore_ascii_case(name.as_bytes()) {
        return None;
    }
    Some(line[colon + 1..].trim_ascii())
}

fn parse_number(v: &[u8], radix: u32) -> io::Result<u64> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim(), radix).ok())
        .ok_or_else(|| bad("bad number in the answer"))
}

/// Discards exactly `n` body bytes.
fn skip<R: BufRead>(r: &mut R, n: u64) -> io::Result<()> {
    if n > MAX_BODY {
        return Err(bad("answer body too large"));
    }
    let copied = io::copy(&mut r.by_ref().take(n), &mut io::sink())?;
    if copied != n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn read_answer<R: BufRead>(r: &mut R, line: &mut Vec<u8>) -> io::Result<(u16, bool)> {
    read_line(r, line)?;
    if !line.starts_with(b"HTTP/1.") || line.len() < 12 {
        return Err(bad("not an HTTP/1.x status line"));
    }
    let http11 = line.starts_with(b"HTTP/1.1");
    let status = parse_number(&line[9..12], 10)? as u16;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = !http11;
    loop {
        read_line(r, line)?;
        if line.is_empty() {
            break;
        }
        if let Some(v) = header_value(line, "content-length") {
            length = Some(parse_number(v, 10)?);
        } else if let Some(v) = header_value(line, "transfer-encoding") {
            chunked = v.eq_ignore_ascii_case(b"chunked");
        } else if let Some(v) = header_value(line, "connection") {
            close = v.eq_ignore_ascii_case(b"close");
        }
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok((status, !close));
    }
    if chunked {
        let mut body = 0u64;
        loop {
            read_line(r, line)?;
            let size_end = line.iter().position(|&b| b == b';').unwrap_or(line.len());
            let size = parse_number(&line[..size_end], 16)?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    read_line(r, line)?;
                    if line.is_empty() {
                        break;
                    }
                }
                break;
            }
            body += size;
            if body > MAX_BODY {
                return Err(bad("answer body too large"));
            }
            skip(r, size)?;
            read_line(r, line)?;
        }
    } else if let Some(n) = length {
        skip(r, n)?;
    } else {
        // Delimited by the end of the connection.
        let read = io::copy(&mut r.by_ref().take(MAX_BODY), &mut io::sink())?;
        if read >= MAX_BODY {
            return Err(bad("answer body too large"));
        }
        close = true;
    }
    Ok((status, !close))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn answers(text: &str) -> Vec<(u16, bool)> {
        let mut r = BufReader::new(Cursor::new(text.as_bytes().to_vec()));
        let mut line = Vec::new();
        let mut out = Vec::new();
        while let Ok(a) = read_answer(&mut r, &mut line) {
            out.push(a);
        }
        out
    }

    #[test]
    fn reads_kept_alive_answers_of_every_framing() {
        let text = "HTTP/1.1 400 Bad Request\r\nContent-Length: 5\r\n\r\nhello\
                    HTTP/1.1 401 Unauthorized\r\ntransfer-encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n0\r\n\r\n\
                    HTTP/1.1 204 No Content\r\n\r\n\
                    HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\nConnection: close\r\n\r\nno\
                    HTTP/1.0 200 OK\r\n\r\nuntil the end";
        assert_eq!(
            answers(text),
            vec![
                (400, true),
                (401, true),
                (204, true),
                (503, false),
                (200, false)
            ]
        );
    }

    #[test]
    fn refuses_malformed_answers() {
        assert!(answers("SSH-2.0-x\r\n\r\n").is_empty());
        assert!(answers("HTTP/1.1 4x0 Bad\r\n\r\n").is_empty());
        assert!(answers("HTTP/1.1 200 OK\r\ncontent-length: nine\r\n\r\n").is_empty());
        assert!(answers("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort").is_empty());
        let huge = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert!(answers(&huge).is_empty());
    }

    #[test]
    fn the_requests_are_what_the_issue_describes() {
        let huge = String::from_utf8(huge_id_request("127.0.0.1:9")).unwrap();
        assert!(huge.starts_with(&format!(
            "POST /v1/rollouts/{}/start HTTP/1.1\r\n",
            "a".repeat(HUGE_ID_BYTES)
        )));
        assert!(!huge.to_ascii_lowercase().contains("authorization"));
        assert!(huge.ends_with("content-length: 0\r\n\r\n"));
        let forged = String::from_utf8(forged_request("127.0.0.1:9", 7)).unwrap();
        assert!(forged.starts_with("POST /v1/rollouts/plan-7/start HTTP/1.1\r\n"));
        assert!(forged.contains("\r\nauthorization: Bearer aut_forged\r\n"));
    }

    #[test]
    fn merged_floods_sum_and_say_how_they_ended() {
        let part = |answered: u64, cpu: Option<f64>, ended_by: &'static str| FloodReport {
            connections: 4,
            seconds: 2.0,
            answered,
            bad_id_400: answered / 2,
            unauthenticated_401: answered - answered / 2,
            connects: 4,
            generator_cpu_seconds: cpu,
            ended_by,
            ..FloodReport::default()
        };
        let m = FloodReport::merge(vec![
            part(100, Some(0.5), "stop"),
            part(300, Some(1.5), "stop"),
        ]);
        assert_eq!((m.answered, m.refused(), m.connects), (400, 400, 8));
        assert_eq!(m.seconds, 4.0);
        assert_eq!(m.refused_per_sec, 100.0);
        assert_eq!(m.generator_cpu_seconds, Some(2.0));
        assert_eq!(m.generator_cpus_used, Some(0.5));
        assert_eq!(m.ended_by, "stop");
        let m = FloodReport::merge(vec![part(1, None, "stop"), part(1, Some(1.0), "count")]);
        assert_eq!(m.generator_cpu_seconds, None);
        assert_eq!(m.ended_by, "count");
    }

    #[test]
    fn floods_only_loopback() {
        let limit = Duration::from_secs(1);
        assert!(Spec::new("http://10.0.0.1:80", 1, 1, limit).is_err());
        assert!(Spec::new("https://127.0.0.1:80", 1, 1, limit).is_err());
        assert!(Spec::new("http://localhost:80", 1, 1, limit).is_err());
        assert!(Spec::new("http://127.0.0.1:80", 0, 1, limit).is_err());
        assert!(Spec::new("http://127.0.0.1:80", 2, 1, limit).is_ok());
    }

    #[test]
    fn a_flood_is_bounded_by_its_count_and_counts_statuses() {
        // A scripted server answering 400 then 401 alternately on each kept-alive connection.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let mut r = BufReader::new(stream);
            let mut line = Vec::new();
            let mut i = 0u32;
            loop {
                // Read one request head (no body: content-length 0; the request line of the
                // huge id is longer than an answer line may be).
                loop {
                    line.clear();
                    match r.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => return i,
                        Ok(_) if line == b"\r\n" => break,
                        Ok(_) => {}
                    }
                }
                let status = if i.is_multiple_of(2) {
                    "400 Bad Request"
                } else {
                    "401 Unauthorized"
                };
                let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\n\r\n{{}}");
                i += 1;
                if r.get_mut().write_all(answer.as_bytes()).is_err() {
                    return i;
                }
            }
        });
        let spec = Spec::new(&format!("http://{addr}"), 1, 7, Duration::from_secs(30)).unwrap();
        let report = run(&spec, &AtomicBool::new(false));
        assert_eq!(report.answered, 7);
        assert_eq!(report.bad_id_400, 4);
        assert_eq!(report.unauthenticated_401, 3);
        assert_eq!(report.refused(), 7);
        assert_eq!(report.transport_errors, 0);
        assert_eq!(report.connects, 1);
        assert_eq!(report.ended_by, "count");
        assert!(report.generator_cpu_seconds.is_some());
        assert_eq!(server.join().unwrap(), 7);
    }
}

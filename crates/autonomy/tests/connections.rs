//! Connection bounds (SPEC §5.11) and the `Host` check (SPEC §4), black-box: the real binary
//! driven by raw `TcpStream` clients, which can be slow, silent or lie about `Host` in ways
//! an HTTP library will not. Timeouts are shortened with the hidden `--header-timeout`,
//! `--body-timeout` and `--idle-timeout` flags; every wait is bounded, and the only timing
//! asserted is "cut off within the configured timeout plus a generous bound".

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::Cp;

/// How much later than its configured timeout a cut may come (a loaded CI machine).
const SLACK: Duration = Duration::from_secs(10);

/// `127.0.0.1:PORT` of a running CP.
fn addr(cp: &Cp) -> String {
    cp.url
        .strip_prefix("http://")
        .expect("the CP's url is http://ADDR")
        .to_string()
}

fn connect(cp: &Cp) -> TcpStream {
    let stream = TcpStream::connect(addr(cp)).expect("connect to the CP");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// Reads one HTTP/1.1 response (its body delimited by Content-Length): `(status, body)`.
/// Panics if it does not come within the stream's read timeout.
fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"));
            let len: usize = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = stream.read(&mut chunk).expect("read the response body");
                assert!(n > 0, "the connection closed inside a response body");
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
            return (status, body);
        }
        let n = stream
            .read(&mut chunk)
            .unwrap_or_else(|e| panic!("no response ({e}); got {:?}", lossy(&buf)));
        assert!(
            n > 0,
            "the connection closed before a response: {:?}",
            lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// Reads until the CP closes the connection; returns what it sent meanwhile, or `None` if the
/// connection was still open after `limit`.
fn wait_closed(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Some(got), // reset: closed too
        }
    }
}

/// Writes `bytes` one at a time, `every` apart, on a thread, until done, a write fails (the
/// CP closed the connection), or `stop` is set.
fn trickle(
    stream: &TcpStream,
    bytes: Vec<u8>,
    every: Duration,
) -> (Arc<AtomicBool>, thread::JoinHandle<()>) {
    let mut stream = stream.try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let handle = thread::spawn(move || {
        for b in bytes {
            if stopped.load(Ordering::SeqCst) || stream.write_all(&[b]).is_err() {
                return;
            }
            thread::sleep(every);
        }
    });
    (stop, handle)
}

fn get_with_host(host: &str) -> String {
    format!("GET /v1/rollouts HTTP/1.1\r\nHost: {host}\r\n\r\n")
}

#[test]
fn a_client_sending_one_header_byte_a_second_is_cut_off_within_the_header_timeout() {
    let cp = Cp::start(&["--header-timeout", "2"], &[]);
    let mut stream = connect(&cp);
    let head = format!(
        "GET /v1/health HTTP/1.1\r\nHost: localhost\r\nX-Slow: {}\r\n\r\n",
        "a".repeat(60)
    );
    let started = Instant::now();
    let (stop, writer) = trickle(&stream, head.into_bytes(), Duration::from_secs(1));
    let closed = wait_closed(&mut stream, Duration::from_secs(2) + SLACK);
    stop.store(true, Ordering::SeqCst);
    let got = closed.expect("the slow client was not cut off within the header timeout");
    assert!(
        !lossy(&got).contains("200 OK"),
        "a head that never completed was answered: {:?}",
        lossy(&got)
    );
    assert!(started.elapsed() < Duration::from_secs(2) + SLACK);
    writer.join().unwrap();
    // Everyone else is still served.
    assert_eq!(cp.get("/v1/health", &[]).0, 200);
}

#[test]
fn a_silent_connection_is_closed_within_the_header_timeout() {
    // What exhausted the fd limit in the probe: connections that never send a byte.
    let cp = Cp::start(&["--header-timeout", "2"], &[]);
    let mut stream = connect(&cp);
    let got = wait_closed(&mut stream, Duration::from_secs(2) + SLACK)
        .expect("a connection that sent nothing was kept open");
    assert!(got.is_empty(), "{:?}", lossy(&got));
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let cp = Cp::start(&["--idle-timeout", "2", "--header-timeout", "30"], &[]);
    let mut stream = connect(&cp);
    stream
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut stream).0, 200);
    let got = wait_closed(&mut stream, Duration::from_secs(2) + SLACK)
        .expect("the idle keep-alive connection was not closed within the idle timeout");
    assert!(got.is_empty(), "{:?}", lossy(&got));
}

#[test]
fn a_keep_alive_connection_outlives_the_header_timeout_while_idle() {
    // The header timeout is for a request's head, not for the wait between requests.
    let cp = Cp::start(&["--header-timeout", "1", "--idle-timeout", "60"], &[]);
    let mut stream = connect(&cp);
    let request = b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n";
    stream.write_all(request).unwrap();
    assert_eq!(read_response(&mut stream).0, 200);
    thread::sleep(Duration::from_millis(2500));
    stream.write_all(request).unwrap();
    assert_eq!(read_response(&mut stream).0, 200);
}

#[test]
fn a_body_trickled_slower_than_the_body_timeout_is_cut_off() {
    let cp = Cp::start(&["--body-timeout", "2"], &[]);
    let mut stream = connect(&cp);
    stream
        .write_all(
            b"POST /v1/rollouts HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Content-Length: 200\r\n\r\n{",
        )
        .unwrap();
    let started = Instant::now();
    let (stop, writer) = trickle(&stream, vec![b' '; 199], Duration::from_secs(1));
    let got = wait_closed(&mut stream, Duration::from_secs(2) + SLACK);
    stop.store(true, Ordering::SeqCst);
    let got = lossy(&got.expect("the trickled body was not cut off within the body timeout"));
    assert!(started.elapsed() < Duration::from_secs(2) + SLACK);
    assert!(got.starts_with("HTTP/1.1 400 "), "{got:?}");
    assert!(got.contains("did not arrive within 2 s"), "{got:?}");
    writer.join().unwrap();
    // Nothing was created, and the CP serves on.
    let (status, body) = cp.get("/v1/rollouts", &[]);
    assert_eq!(status, 200);
    assert!(body.contains(r#""items":[]"#), "{body}");
}

#[test]
fn an_unauthenticated_post_is_answered_401_without_waiting_for_its_body() {
    let cp = Cp::start(&[], &[("AUTONOMY_RBAC_ENFORCEMENT", "1")]);
    let mut stream = connect(&cp);
    // A 1 MiB body is announced, and none of it is sent: the answer cannot depend on it.
    stream
        .write_all(
            b"POST /v1/rollouts HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Content-Length: 1048576\r\n\r\n",
        )
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (status, body) = read_response(&mut stream);
    assert_eq!(status, 401, "{body}");
    // The unread body is not waited for either: the CP closes the connection.
    assert!(
        wait_closed(&mut stream, SLACK).is_some(),
        "the CP kept a connection open for an unauthenticated body"
    );
}

#[test]
fn connections_beyond_the_cap_wait_without_starving_the_allowed_ones_and_the_cp_recovers() {
    let cp = Cp::start(&["--max-connections", "4", "--header-timeout", "60"], &[]);
    let request = b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n";
    // One client with a keep-alive connection, served before the flood.
    let mut allowed = connect(&cp);
    allowed.write_all(request).unwrap();
    assert_eq!(read_response(&mut allowed).0, 200);
    // Twelve silent connections: three fill the cap, the rest wait in the accept queue.
    let holders: Vec<TcpStream> = (0..12).map(|_| connect(&cp)).collect();
    let logged = Instant::now() + Duration::from_secs(10);
    while !cp.stderr().contains("connection limit reached") {
        assert!(
            Instant::now() < logged,
            "reaching the cap was not logged:\n{}",
            cp.stderr()
        );
        thread::sleep(Duration::from_millis(50));
    }
    // The allowed connection is not starved.
    for _ in 0..3 {
        allowed.write_all(request).unwrap();
        assert_eq!(read_response(&mut allowed).0, 200);
    }
    // A new connection waits while the cap is full...
    let mut waiting = connect(&cp);
    waiting.write_all(request).unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut byte = [0u8; 1];
    match waiting.read(&mut byte) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("a connection beyond the cap was served: {other:?}"),
    }
    // ...and is served once the flood goes.
    drop(holders);
    waiting
        .set_read_timeout(Some(Duration::from_secs(1) + SLACK))
        .unwrap();
    let mut rest = [0u8; 4096];
    let n = waiting
        .read(&mut rest)
        .expect("the waiting connection is served");
    let got = rest[..n].to_vec();
    assert!(
        lossy(&got).starts_with("HTTP/1.1 200 "),
        "{:?}",
        lossy(&got)
    );
    assert_eq!(cp.get("/v1/health", &[]).0, 200);
    // Logged at most once a second, not once per refused connection.
    let lines = cp.stderr().matches("connection limit reached").count();
    assert!(lines <= 20, "{lines} log lines for one flood");
}

#[test]
fn a_dns_rebinding_host_is_403_with_rbac_off_and_loopback_names_work() {
    let cp = Cp::start(&[], &[]);
    let port = addr(&cp).rsplit_once(':').unwrap().1.to_string();
    for host in ["evil.example", &format!("evil.example:{port}"), "10.0.0.1"] {
        let mut stream = connect(&cp);
        stream.write_all(get_with_host(host).as_bytes()).unwrap();
        let (status, body) = read_response(&mut stream);
        assert_eq!(status, 403, "Host {host}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "forbidden", "{body}");
    }
    // A write from a rebinding page does not happen.
    let mut stream = connect(&cp);
    let plan = r#"{"metadata":{"id":"rebound"},"spec":{"artifact_ref":"oci://r/a"}}"#;
    write!(
        stream,
        "POST /v1/rollouts HTTP/1.1\r\nHost: evil.example\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{plan}",
        plan.len()
    )
    .unwrap();
    assert_eq!(read_response(&mut stream).0, 403);
    assert_eq!(cp.get("/v1/rollouts/rebound", &[]).0, 404);
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "app.localhost".to_string(),
    ] {
        let mut stream = connect(&cp);
        stream.write_all(get_with_host(&host).as_bytes()).unwrap();
        let (status, body) = read_response(&mut stream);
        assert_eq!(status, 200, "Host {host}: {body}");
    }
    // HTTP/1.0 without Host cannot come from a browser: served.
    let mut stream = connect(&cp);
    stream
        .write_all(b"GET /v1/health HTTP/1.0\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut stream).0, 200);
}

#[test]
fn with_rbac_on_the_host_is_not_checked() {
    let cp = Cp::start(&[], &[("AUTONOMY_RBAC_ENFORCEMENT", "1")]);
    let token = cp.admin_token();
    let mut stream = connect(&cp);
    write!(
        stream,
        "GET /v1/rollouts HTTP/1.1\r\nHost: cp.example.com\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let (status, body) = read_response(&mut stream);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn allowed_host_admits_a_name_by_flag_and_by_env() {
    let by_flag = Cp::start(&["--allowed-host", "CP.Lab.Example"], &[]);
    let by_env = Cp::start(
        &[],
        &[("AUTONOMY_ALLOWED_HOSTS", "cp.lab.example,other.example")],
    );
    for cp in [&by_flag, &by_env] {
        for (host, want) in [
            ("cp.lab.example", 200),
            ("cp.lab.example:8080", 200),
            ("evil.example", 403),
        ] {
            let mut stream = connect(cp);
            stream.write_all(get_with_host(host).as_bytes()).unwrap();
            let (status, body) = read_response(&mut stream);
            assert_eq!(status, want, "Host {host}: {body}");
        }
    }
    let mut stream = connect(&by_env);
    stream
        .write_all(get_with_host("other.example").as_bytes())
        .unwrap();
    assert_eq!(read_response(&mut stream).0, 200);
}

#[test]
fn a_gzip_content_encoding_is_415_naming_it() {
    let cp = Cp::start(&[], &[]);
    let plan = r#"{"metadata":{"id":"zipped"},"spec":{"artifact_ref":"oci://r/a"}}"#;
    let (status, body) = cp.post(
        "/v1/rollouts",
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        plan,
    );
    assert_eq!(status, 415, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "unsupported_media_type", "{body}");
    assert!(body.contains("gzip"), "{body}");
    assert_eq!(cp.get("/v1/rollouts/zipped", &[]).0, 404);
    // identity is what a body without the header is.
    let (status, body) = cp.post(
        "/v1/rollouts",
        &[
            ("content-type", "application/json"),
            ("content-encoding", "identity"),
        ],
        plan,
    );
    assert_eq!(status, 201, "{body}");
}

#[test]
fn bad_connection_flags_refuse_to_start() {
    for arg in [
        "--header-timeout=0",
        "--body-timeout=-1",
        "--idle-timeout=nan",
        "--max-connections=0",
        "--allowed-host=http://x/",
    ] {
        let dir = common::TestDir::new("badflag");
        let data = dir.path().join("data");
        let data_s = data.to_string_lossy().to_string();
        let all = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data_s,
            arg,
        ];
        let out = common::run(&all, &[("AUTONOMY_RBAC_ENFORCEMENT", "0")], None);
        assert_ne!(out.status.code(), Some(0), "{arg} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let flag = arg.split('=').next().unwrap();
        assert!(
            stderr.contains("invalid") && stderr.contains(flag),
            "{arg}: the refusal does not say what is wrong: {stderr}"
        );
        assert!(!data.exists(), "{arg}: a refused start left a data dir");
    }
}

//! A tiny raw HTTP/1.1 client for plain `http://` URLs (what the CLI cannot send: arbitrary
//! methods, headers and bodies), a kept-alive [`Conn`] for load, and [`FakeCp`], a scripted
//! server for client behaviour the real CP cannot be made to show on demand.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Largest answer the client reads (a page of 1000 plans is about 1 MB).
const MAX_BODY: usize = 256 * 1024 * 1024;

/// Why an exchange got no (whole) answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("not a plain http:// URL: {0}")]
    Url(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("malformed answer: {0}")]
    Malformed(String),
}

/// One answer: the client's own [`Response`](autonomy_client::Response) (status, headers
/// with names lowercased in the order received, body), so what the raw client reads and what
/// the typed client reads are one type.
pub use autonomy_client::Response;

/// Splits `http://host:port/path?query` into (`host:port`, `/path?query`).
pub fn split_url(url: &str) -> Result<(&str, &str), HttpError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HttpError::Url(url.to_string()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(HttpError::Url(url.to_string()));
    }
    Ok((authority, path))
}

/// One exchange on a fresh connection (`connection: close`), every step bounded by
/// `timeout`.
pub fn call(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let (authority, path) = split_url(url)?;
    let mut conn = Conn::new(authority, timeout)?;
    conn.close_after = true;
    conn.send(method, path, headers, body)
}

/// A connection to one `host:port` that is kept alive between exchanges and reopened when
/// the server closed it (or an exchange failed).
pub struct Conn {
    addr: SocketAddr,
    authority: String,
    timeout: Duration,
    stream: Option<BufReader<TcpStream>>,
    close_after: bool,
}

impl Conn {
    /// `authority` is `host:port` (or a `http://host:port` base URL).
    pub fn new(authority: &str, timeout: Duration) -> Result<Conn, HttpError> {
        let authority = match authority.strip_prefix("http://") {
            Some(rest) => rest.trim_end_matches('/'),
            None => authority,
        };
        let addr = authority
            .to_socket_addrs()
            .map_err(|_| HttpError::Url(authority.to_string()))?
            .next()
            .ok_or_else(|| HttpError::Url(authority.to_string()))?;
        Ok(Conn {
            addr,
            authority: authority.to_string(),
            timeout,
            stream: None,
            close_after: false,
        })
    }

    /// One exchange; `path` starts with `/`. On any error the connection is dropped (the
    /// next exchange opens a new one).
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response, HttpError> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {}\r\n", self.authority);
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        if self.close_after {
            head.push_str("connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body.unwrap_or_default());
        let result = self.exchange(&request, method == "HEAD");
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn exchange(&mut self, request: &[u8], head_only: bool) -> Result<Response, HttpError> {
        if self.stream.is_none() {
            let stream = TcpStream::connect_timeout(&self.addr, self.timeout)?;
            stream.set_read_timeout(Some(self.timeout))?;
            stream.set_write_timeout(Some(self.timeout))?;
            let _ = stream.set_nodelay(true);
            self.stream = Some(BufReader::new(stream));
        }
        let Some(reader) = self.stream.as_mut() else {
            return Err(HttpError::Malformed("no connection".into()));
        };
        reader.get_mut().write_all(request)?;
        reader.get_mut().flush()?;
        let (response, reusable) = read_response(reader, head_only)?;
        if !reusable || self.close_after {
            self.stream = None;
        }
        Ok(response)
    }
}

/// Reads one response; also says whether the connection may carry another exchange.
fn read_response<R: BufRead>(r: &mut R, head_only: bool) -> Result<(Response, bool), HttpError> {
    let line = read_line(r)?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed(format!("status line {line:?}")));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HttpError::Malformed(format!("status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let h = read_line(r)?;
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let mut reusable = version == "HTTP/1.1"
        && !response
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok((response, reusable));
    }
    if response
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        loop {
            let size_line = read_line(r)?;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| HttpError::Malformed(format!("chunk size {size_line:?}")))?;
            if response.body.len() + size > MAX_BODY {
                return Err(HttpError::Malformed("body too large".into()));
            }
            if size == 0 {
                while !read_line(r)?.is_empty() {}
                break;
            }
            let start = response.body.len();
            response.body.resize(start + size, 0);
            r.read_exact(&mut response.body[start..])?;
            read_line(r)?;
        }
    } else if let Some(len) = response.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| HttpError::Malformed(format!("content-length {len:?}")))?;
        if len > MAX_BODY {
            return Err(HttpError::Malformed("body too large".into()));
        }
        response.body.resize(len, 0);
        r.read_exact(&mut response.body)?;
    } else {
        r.take(MAX_BODY as u64).read_to_end(&mut response.body)?;
        reusable = false;
    }
    Ok((response, reusable))
}

fn read_line<R: BufRead>(r: &mut R) -> Result<String, HttpError> {
    let mut buf = Vec::new();
    let n = r.take(64 * 1024).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Err(HttpError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    if buf.last() != Some(&b'\n') {
        return Err(HttpError::Malformed("line too long or cut".into()));
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

// ---------------------------------------------------------------------------------------------
// Addresses with nothing, or something silent, behind them
// ---------------------------------------------------------------------------------------------

/// A 127.0.0.1 port where nothing listens (bound, then released).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A listener that completes TCP handshakes (the kernel does, into the backlog) but never
/// reads or answers: a CP that hangs. Keep it alive for as long as it should hang.
pub fn silent_listener() -> std::io::Result<(TcpListener, String)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    Ok((listener, url))
}

/// Something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_in_use(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
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

    /// The CP's JSON error body.
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
    /// The first header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// The first of `headers` (names lowercased) called `name` (any case).
fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Answers every request on 127.0.0.1 with the same canned response (then closes the
/// connection) and records what it saw. Stops on drop.
pub struct FakeCp {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
}

impl FakeCp {
    pub fn start(answer: Canned) -> std::io::Result<FakeCp> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                serve_one(stream, &answer, &seen2);
            }
        });
        Ok(FakeCp {
            url: format!("http://{addr}"),
            seen,
            stop,
            addr,
        })
    }

    /// The requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for FakeCp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so the thread ends.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Reads one request, records it (before answering, so a client that has its answer finds
/// it recorded), answers.
fn serve_one(stream: TcpStream, answer: &Canned, seen: &Mutex<Vec<Seen>>) -> Option<()> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let line = read_line(&mut reader).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    while let Ok(h) = read_line(&mut reader) {
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
    let mut body = vec![0; len.min(MAX_BODY)];
    reader.read_exact(&mut body).ok()?;
    seen.lock().unwrap_or_else(|e| e.into_inner()).push(Seen {
        method,
        target,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
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
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:8/v1/x?a=b").unwrap(),
            ("127.0.0.1:8", "/v1/x?a=b")
        );
        assert_eq!(
            split_url("http://127.0.0.1:8").unwrap(),
            ("127.0.0.1:8", "/")
        );
        assert!(split_url("https://x/").is_err());
        assert!(split_url("http:///x").is_err());
    }

    #[test]
    fn a_call_to_the_fake_cp_round_trips() {
        let fake =
            FakeCp::start(Canned::error(503, "unavailable", "full").header("retry-after", "1"))
                .unwrap();
        let r = call(
            "POST",
            &format!("{}/v1/rollouts", fake.url),
            &[("content-type", "application/json"), ("x-a", "b")],
            Some(b"{}"),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.header("Retry-After"), Some("1"));
        assert_eq!(
            r.json::<serde_json::Value>().unwrap()["error"]["code"],
            "unavailable"
        );
        let seen = fake.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].method, "POST");
        assert_eq!(seen[0].target, "/v1/rollouts");
        assert_eq!(seen[0].header("X-A"), Some("b"));
        assert_eq!(seen[0].body, "{}");
    }

    #[test]
    fn chunked_and_close_delimited_bodies_are_read() {
        let raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let (r, reusable) = read_response(&mut &raw[..], false).unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), reusable),
            (200, &b"abcde"[..], true)
        );
        let raw = b"HTTP/1.1 500 X\r\n\r\nuntil eof";
        let (r, reusable) = read_response(&mut &raw[..], false).unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), reusable),
            (500, &b"until eof"[..], false)
        );
        assert!(read_response(&mut &b"garbage\r\n\r\n"[..], false).is_err());
        assert!(read_response(
            &mut &b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nab"[..],
            false
        )
        .is_err());
    }

    #[test]
    fn nothing_listening_is_an_io_error() {
        let port = free_port().unwrap();
        let e = call(
            "GET",
            &format!("http://127.0.0.1:{port}/"),
            &[],
            None,
            Duration::from_secs(2),
        );
        assert!(matches!(e, Err(HttpError::Io(_))), "{e:?}");
        assert!(!port_in_use(port));
    }
}

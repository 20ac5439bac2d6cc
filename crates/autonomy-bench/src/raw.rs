//! The engine phases' cheap device client: one raw HTTP/1.1 keep-alive connection to
//! 127.0.0.1, requests written as pre-built bytes (or one `format!`), answers read into one
//! reused buffer. No JSON encoder, no HTTP library on the hot path, so the load generator
//! costs little next to the CP (E1 measures its CPU). Answers must carry `content-length`
//! (the CP's JSON answers do); anything else is an error.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{anyhow, bail};

/// Connect, read and write timeout of one connection (a long poll waits at most 60 s).
pub const IO_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest status or header line read.
const MAX_LINE: u64 = 16 * 1024;
/// Largest answer body read.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// `http://127.0.0.1:PORT` → the loopback address (anything else is refused).
pub fn loopback(base: &str) -> anyhow::Result<SocketAddr> {
    let authority = base
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("the bench needs a plain http:// URL, not {base}"))?;
    let addr: SocketAddr = authority
        .trim_end_matches('/')
        .parse()
        .map_err(|_| anyhow!("the bench needs an IP:PORT address, not {base}"))?;
    if !addr.ip().is_loopback() {
        bail!("the bench only talks to loopback, not {addr}");
    }
    Ok(addr)
}

/// `POST path` as device `device` (`X-Autonomy-Device`, RBAC off) with a JSON `body`.
pub fn device_post(addr: SocketAddr, path: &str, device: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nuser-agent: autonomy-bench\r\n\
         x-autonomy-device: {device}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One kept-alive connection; reconnects after an error or a `connection: close`.
pub struct Conn {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
    line: Vec<u8>,
    /// The body of the last answer.
    pub body: Vec<u8>,
    /// TCP connections opened.
    pub connects: u64,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            stream: None,
            line: Vec::with_capacity(1024),
            body: Vec::with_capacity(1024),
            connects: 0,
        }
    }

    fn open(&mut self) -> io::Result<&mut BufReader<TcpStream>> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT)?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            s.set_nodelay(true)?;
            self.connects += 1;
            self.stream = Some(BufReader::with_capacity(16 * 1024, s));
        }
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::other("no connection"))
    }

    /// Sends `request` and reads the whole answer: its status (the body is in `self.body`).
    /// After an error the connection is dropped (the next exchange reconnects).
    pub fn exchange(&mut self, request: &[u8]) -> io::Result<u16> {
        let result = self.exchange_inner(request);
        match result {
            Ok((status, keep)) => {
                if !keep {
                    self.stream = None;
                }
                Ok(status)
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    fn exchange_inner(&mut self, request: &[u8]) -> io::Result<(u16, bool)> {
        let mut line = std::mem::take(&mut self.line);
        let mut body = std::mem::take(&mut self.body);
        let r = (|| {
            let s = self.open()?;
            s.get_mut().write_all(request)?;
            read_answer(s, &mut line, &mut body)
        })();
        self.line = line;
        self.body = body;
        r
    }

    /// The body of the last answer as text (lossy).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

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

fn header_value<'a>(line: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    if !line[..colon].eq_ignore_ascii_case(name.as_bytes()) {
        return None;
    }
    Some(line[colon + 1..].trim_ascii())
}

fn number(v: &[u8]) -> io::Result<usize> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| bad("bad number in the answer"))
}

/// Reads one answer: (status, whether the connection may carry another exchange).
fn read_answer<R: BufRead>(
    r: &mut R,
    line: &mut Vec<u8>,
    body: &mut Vec<u8>,
) -> io::Result<(u16, bool)> {
    read_line(r, line)?;
    if !line.starts_with(b"HTTP/1.") || line.len() < 12 {
        return Err(bad("not an HTTP/1.x status line"));
    }
    let http11 = line.starts_with(b"HTTP/1.1");
    let status = number(&line[9..12])? as u16;
    let mut length = None;
    let mut close = !http11;
    loop {
        read_line(r, line)?;
        if line.is_empty() {
            break;
        }
        if let Some(v) = header_value(line, "content-length") {
            length = Some(number(v)?);
        } else if let Some(v) = header_value(line, "transfer-encoding") {
            if !v.eq_ignore_ascii_case(b"identity") {
                return Err(bad("the bench reads only content-length answers"));
            }
        } else if let Some(v) = header_value(line, "connection") {
            close = v.eq_ignore_ascii_case(b"close");
        }
    }
    body.clear();
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok((status, !close));
    }
    let n = length.ok_or_else(|| bad("an answer without content-length"))?;
    if n > MAX_BODY {
        return Err(bad("answer body too large"));
    }
    body.resize(n, 0);
    r.read_exact(body)?;
    Ok((status, !close))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_answers_with_bodies_and_keep_alive() {
        let text = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5\r\n\r\n{\"a\"}\
HTTP/1.1 409 Conflict\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}";
        let mut r = BufReader::new(&text[..]);
        let (mut line, mut body) = (Vec::new(), Vec::new());
        assert_eq!(
            read_answer(&mut r, &mut line, &mut body).unwrap(),
            (200, true)
        );
        assert_eq!(body, b"{\"a\"}");
        assert_eq!(
            read_answer(&mut r, &mut line, &mut body).unwrap(),
            (409, false)
        );
        assert_eq!(body, b"{}");
        assert!(read_answer(&mut r, &mut line, &mut body).is_err());
    }

    #[test]
    fn refuses_chunked_and_unbounded_answers() {
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
        let (mut line, mut body) = (Vec::new(), Vec::new());
        assert!(read_answer(&mut BufReader::new(&chunked[..]), &mut line, &mut body).is_err());
        let none = b"HTTP/1.1 200 OK\r\n\r\nxyz";
        assert!(read_answer(&mut BufReader::new(&none[..]), &mut line, &mut body).is_err());
    }

    #[test]
    fn only_loopback() {
        assert!(loopback("http://127.0.0.1:8080").is_ok());
        assert!(loopback("http://10.0.0.1:8080").is_err());
        assert!(loopback("https://127.0.0.1:8080").is_err());
    }
}

//! A scripted CP on 127.0.0.1 for the transport tests: it answers one request with a canned
//! answer and hands back what it received. Also what the two transports' tests share: the
//! caller they send as and the checks of how a transport fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use crate::{Api, ClientError, Exit};

/// The caller the transport tests send as: token `s3cret`, operator `ann`.
pub fn api() -> Api {
    Api::new()
        .with_token(Some("s3cret".parse().unwrap()))
        .with_operator(Some("ann".into()))
}

/// `e` is what a transport reports when nothing listens at `url`: unreachable, naming the
/// address and the OS error.
pub fn assert_unreachable(e: &ClientError, url: &str) {
    assert_eq!(e.exit(), Exit::Unreachable);
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("cannot reach the control plane at {url}: ")),
        "{text}"
    );
    assert!(text.contains("connection refused"), "{text}");
}

/// `e` is what a transport with a 0.3 s timeout reports when the CP at `url` never answers.
pub fn assert_timed_out(e: &ClientError, url: &str) {
    assert!(matches!(e, ClientError::Timeout { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("no answer from the control plane at {url} within 0.3s (--timeout): timed out")
    );
}

/// What the fake CP read: the request line, the headers (names lower case) and the body.
#[derive(Debug)]
pub struct Received {
    pub line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct FakeCp {
    pub url: String,
    received: mpsc::Receiver<Received>,
}

impl FakeCp {
    /// Answers the first request with `status`, `headers` and `body`, then closes.
    pub fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> FakeCp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mut answer = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", body.len());
        for (k, v) in headers {
            answer.push_str(&format!("{k}: {v}\r\n"));
        }
        answer.push_str("connection: close\r\n\r\n");
        answer.push_str(body);
        let (tx, received) = mpsc::channel();
        thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            if let Some(req) = read_request(&stream) {
                let _ = (&stream).write_all(answer.as_bytes());
                let _ = tx.send(req);
            }
        });
        FakeCp { url, received }
    }

    /// Answers up to `total` requests with 200 and `body`, over as many kept-alive
    /// connections as clients open; each connection is served by its own thread.
    pub fn answer_many(total: usize, body: &'static str) -> FakeCp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, received) = mpsc::channel();
        let left = Arc::new(AtomicUsize::new(total));
        listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        thread::spawn(move || {
            // Accepts until every answer is given or the deadline passes.
            while left.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
                let stream = match listener.accept() {
                    Ok((stream, _)) => stream,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    Err(_) => return,
                };
                stream.set_nonblocking(false).unwrap();
                let (tx, left) = (tx.clone(), left.clone());
                thread::spawn(move || {
                    stream
                        .set_read_timeout(Some(Duration::from_secs(10)))
                        .unwrap();
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let mut reader = BufReader::new(&stream);
                    while left.load(Ordering::SeqCst) > 0 {
                        let Some(req) = read_from(&mut reader) else {
                            return;
                        };
                        left.fetch_sub(1, Ordering::SeqCst);
                        if (&stream).write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                        let _ = tx.send(req);
                    }
                });
            }
        });
        FakeCp { url, received }
    }

    /// The request it answered.
    pub fn received(&self) -> Received {
        self.received
            .recv_timeout(Duration::from_secs(10))
            .expect("the fake CP received no request")
    }
}

fn read_request(stream: &TcpStream) -> Option<Received> {
    read_from(&mut BufReader::new(stream))
}

fn read_from(reader: &mut BufReader<&TcpStream>) -> Option<Received> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Received {
        line: line.trim_end().to_string(),
        headers,
        body,
    })
}

/// A port on which nothing listens (bound, then closed).
pub fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

/// A listener that accepts connections and never answers; keep it alive while testing.
pub fn silent_listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

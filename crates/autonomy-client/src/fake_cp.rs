//! A scripted CP on 127.0.0.1 for the transport tests: it answers one request with a canned
//! answer and hands back what it received.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

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

    /// The request it answered.
    pub fn received(&self) -> Received {
        self.received
            .recv_timeout(Duration::from_secs(10))
            .expect("the fake CP received no request")
    }
}

fn read_request(stream: &TcpStream) -> Option<Received> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
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

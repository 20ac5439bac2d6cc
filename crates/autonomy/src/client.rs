//! A small blocking HTTP client for the CP's API v1, over `ureq` (plain HTTP, no TLS).
//!
//! Every request carries `Authorization: Bearer <token>` when a token is set and
//! `X-Autonomy-Operator` when an operator name is set; bodies are JSON. The whole exchange,
//! connect included, must finish within `--timeout`, so a CP that accepts a connection and
//! never answers cannot hang the CLI. Transport failures and error answers become a
//! [`ClientError`], which knows its exit code.

use std::fmt;
use std::io;
use std::time::Duration;

use autonomy_api::{ErrorBody, IDEMPOTENCY_HEADER, OPERATOR_HEADER};
use serde::de::DeserializeOwned;

use crate::cli::Token;
use crate::exit::Exit;

/// Largest answer body the CLI reads (an audit query of 10 000 events fits easily).
const MAX_BODY: u64 = 256 * 1024 * 1024;
/// How much of an unexpected body an error message quotes.
const SNIPPET: usize = 200;

pub struct Client {
    agent: ureq::Agent,
    server: String,
    token: Option<Token>,
    operator: Option<String>,
    timeout_secs: f64,
}

/// One answer of the CP, whatever its status.
#[derive(Debug)]
pub struct Answer {
    pub method: &'static str,
    pub path: String,
    pub status: u16,
    pub body: String,
    pub retry_after: Option<String>,
}

/// Why a request failed. `Display` is the text of the `error:` line.
#[derive(Debug)]
pub enum ClientError {
    /// Nothing answered at the address (refused, reset, unreachable, unknown host, …).
    Unreachable { server: String, cause: String },
    /// The CP did not answer within `--timeout`.
    Timeout { server: String, secs: f64 },
    /// The CP answered with an error status.
    Status {
        method: &'static str,
        path: String,
        status: u16,
        code: Option<String>,
        message: String,
        retry_after: Option<String>,
    },
    /// The CP answered something that is not the expected JSON.
    BadAnswer {
        method: &'static str,
        path: String,
        status: u16,
        what: String,
    },
    /// The request could not be built from the flags (bad `--server`, bad header value).
    Usage(String),
    /// Anything else on the wire (protocol error, oversized answer, …).
    Other { server: String, cause: String },
}

impl ClientError {
    pub fn exit(&self) -> Exit {
        match self {
            ClientError::Unreachable { .. } | ClientError::Timeout { .. } => Exit::Unreachable,
            ClientError::Status { status, .. } => match status {
                401 | 403 => Exit::Denied,
                404 => Exit::NotFound,
                409 => Exit::Conflict,
                500..=599 => Exit::Server,
                _ => Exit::Other,
            },
            ClientError::Usage(_) => Exit::Usage,
            ClientError::BadAnswer { .. } | ClientError::Other { .. } => Exit::Other,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Unreachable { server, cause } => {
                write!(f, "cannot reach the control plane at {server}: {cause}")
            }
            ClientError::Timeout { server, secs } => write!(
                f,
                "no answer from the control plane at {server} within {secs}s (--timeout): timed out"
            ),
            ClientError::Status {
                method,
                path,
                status,
                code,
                message,
                retry_after,
            } => {
                let code = code.as_deref().unwrap_or("error");
                write!(
                    f,
                    "the control plane answered {status} {code} to {method} {path}: {message}"
                )?;
                match retry_after {
                    Some(after) if after.parse::<u64>().is_ok() => {
                        write!(f, " (retry after {after}s)")?
                    }
                    Some(after) => write!(f, " (retry after {after})")?,
                    None => {}
                }
                Ok(())
            }
            ClientError::BadAnswer {
                method,
                path,
                status,
                what,
            } => {
                write!(
                    f,
                    "the control plane answered {status} to {method} {path} with {what}"
                )
            }
            ClientError::Usage(message) => f.write_str(message),
            ClientError::Other { server, cause } => {
                write!(
                    f,
                    "request to the control plane at {server} failed: {cause}"
                )
            }
        }
    }
}

impl std::error::Error for ClientError {}

impl Client {
    /// `server` is already normalised by the `--server` parser (`http://host:port`, no
    /// trailing slash).
    pub fn new(
        server: String,
        token: Option<Token>,
        operator: Option<String>,
        timeout: Duration,
    ) -> Client {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .max_redirects(0)
            .user_agent(concat!("autonomy-cli/", env!("CARGO_PKG_VERSION")))
            .build();
        Client {
            agent: ureq::Agent::new_with_config(config),
            server,
            token,
            operator,
            timeout_secs: timeout.as_secs_f64(),
        }
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    /// `GET path?query`; `query` values are percent-encoded here.
    pub fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Answer, ClientError> {
        let url = format!("{}{}", self.server, path);
        let mut request = self.agent.get(&url);
        for (k, v) in query {
            request = request.query(k, v);
        }
        let request = self.decorate(request, None);
        self.finish("GET", path, query, request.call())
    }

    /// `POST path` with an optional JSON body and `Idempotency-Key`.
    pub fn post(
        &self,
        path: &str,
        body: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> Result<Answer, ClientError> {
        let url = format!("{}{}", self.server, path);
        let request = self.decorate(self.agent.post(&url), idempotency_key);
        let result = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .send(body),
            None => request.send_empty(),
        };
        self.finish("POST", path, &[], result)
    }

    /// `POST path` with `value` serialised as the JSON body.
    pub fn post_json<T: serde::Serialize>(
        &self,
        path: &str,
        value: &T,
        idempotency_key: Option<&str>,
    ) -> Result<Answer, ClientError> {
        let body = serde_json::to_string(value)
            .map_err(|e| ClientError::Usage(format!("cannot encode the request body: {e}")))?;
        self.post(path, Some(&body), idempotency_key)
    }

    fn decorate<B>(
        &self,
        mut request: ureq::RequestBuilder<B>,
        idempotency_key: Option<&str>,
    ) -> ureq::RequestBuilder<B> {
        request = request.header("accept", "application/json");
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {}", token.expose()));
        }
        if let Some(operator) = &self.operator {
            request = request.header(OPERATOR_HEADER, operator.as_str());
        }
        if let Some(key) = idempotency_key {
            request = request.header(IDEMPOTENCY_HEADER, key);
        }
        request
    }

    fn finish(
        &self,
        method: &'static str,
        path: &str,
        query: &[(&str, String)],
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Answer, ClientError> {
        let mut response = result.map_err(|e| self.transport_error(e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string());
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(|e| self.transport_error(e))?;
        let body = String::from_utf8_lossy(&bytes).into_owned();
        let shown_path = if query.is_empty() {
            path.to_string()
        } else {
            let q: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{path}?{}", q.join("&"))
        };
        Ok(Answer {
            method,
            path: shown_path,
            status,
            body,
            retry_after,
        })
    }

    fn transport_error(&self, e: ureq::Error) -> ClientError {
        let server = self.server.clone();
        match e {
            ureq::Error::Timeout(_) => ClientError::Timeout { server, secs: self.timeout_secs },
            ureq::Error::Io(io) if io.kind() == io::ErrorKind::TimedOut => {
                ClientError::Timeout { server, secs: self.timeout_secs }
            }
            ureq::Error::Io(io) => {
                let cause = match io.kind() {
                    io::ErrorKind::UnexpectedEof => {
                        "the connection closed before a complete answer arrived".to_string()
                    }
                    _ => io.to_string().to_lowercase(),
                };
                ClientError::Unreachable { server, cause }
            }
            ureq::Error::HostNotFound => {
                ClientError::Unreachable { server, cause: "host not found".into() }
            }
            ureq::Error::ConnectionFailed => {
                ClientError::Unreachable { server, cause: "connection failed".into() }
            }
            ureq::Error::BadUri(uri) => {
                ClientError::Usage(format!("invalid control plane address (--server): {uri}"))
            }
            ureq::Error::Http(e) => ClientError::Usage(format!(
                "cannot build the request (check --token and --operator for invalid characters): {e}"
            )),
            ureq::Error::Tls(_) | ureq::Error::TlsRequired | ureq::Error::RequireHttpsOnly(_) => {
                ClientError::Usage(format!(
                    "cannot talk to {server}: this build speaks plain HTTP only (--server)"
                ))
            }
            other => ClientError::Other { server, cause: other.to_string().to_lowercase() },
        }
    }
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// `Ok(self)` for a 2xx answer, else the error it carries.
    pub fn success(self) -> Result<Answer, ClientError> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(self.into_error())
        }
    }

    /// The error an error answer stands for: the `ErrorBody` message when the body is one,
    /// else the status and the first bytes of the body.
    pub fn into_error(self) -> ClientError {
        let (code, message) = match serde_json::from_str::<ErrorBody>(&self.body) {
            Ok(body) => {
                let code = serde_json::to_value(body.error.code)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string));
                (code, body.error.message)
            }
            Err(_) => (None, format!("unexpected answer: {}", snippet(&self.body))),
        };
        ClientError::Status {
            method: self.method,
            path: self.path,
            status: self.status,
            code,
            message,
            retry_after: self.retry_after,
        }
    }

    /// The body parsed as `T`; a body that is not the expected JSON is an error naming the
    /// status and quoting the first bytes.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_str(&self.body).map_err(|e| ClientError::BadAnswer {
            method: self.method,
            path: self.path.clone(),
            status: self.status,
            what: format!("an unexpected body ({e}): {}", snippet(&self.body)),
        })
    }
}

/// The first bytes of a body, on one line, for error messages.
fn snippet(body: &str) -> String {
    if body.trim().is_empty() {
        return "(empty body)".to_string();
    }
    let mut s: String = body.chars().take(SNIPPET).collect();
    if s.len() < body.len() {
        s.push('…');
    }
    format!("{:?}", s)
}

/// Percent-encodes one path segment (ids are restricted by the CP, but a typo must not turn
/// into another path).
pub fn segment(s: &str) -> String {
    let dots_only = s.bytes().all(|b| b == b'.');
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') || (b == b'.' && !dots_only)
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

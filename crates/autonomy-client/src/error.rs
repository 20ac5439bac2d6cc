//! Why a call failed, and the one place a failure becomes a CLI exit code.

use std::fmt;
use std::io;

use autonomy_api::{ErrorCode, ExecuteResponse};

use crate::Method;

/// The documented exit codes of every `autonomy` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: success.
    Success = 0,
    /// 1: any other error (including a bad request the CP rejected with 400/413/415/422).
    Other = 1,
    /// 2: usage error caught before anything was sent (bad flag, bad value, bad file).
    Usage = 2,
    /// 3: the CP could not be reached or did not answer within the timeout.
    Unreachable = 3,
    /// 4: not found.
    NotFound = 4,
    /// 5: conflict or invalid transition (including a rejected rollback).
    Conflict = 5,
    /// 6: unauthenticated or forbidden.
    Denied = 6,
    /// 7: the CP answered 5xx.
    Server = 7,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}

/// The exit code an answer with this HTTP status stands for. The only status → exit code
/// table; [`ClientError::exit`] uses it for every error answer.
pub fn exit_for_status(status: u16) -> Exit {
    match status {
        200..=299 => Exit::Success,
        401 | 403 => Exit::Denied,
        404 => Exit::NotFound,
        409 => Exit::Conflict,
        500..=599 => Exit::Server,
        _ => Exit::Other,
    }
}

/// Why a call failed. `Display` is the text of the CLI's `error:` line.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered at the address (refused, reset, unreachable, unknown host, …).
    #[error("cannot reach the control plane at {server}: {cause}")]
    Unreachable { server: String, cause: String },
    /// The CP did not answer within the timeout.
    #[error("no answer from the control plane at {server} within {secs}s (--timeout): timed out")]
    Timeout { server: String, secs: f64 },
    /// The CP answered with an error status.
    #[error("{0}")]
    Api(Box<ApiError>),
    /// `POST /v1/rollback/execute` answered 409 with the full execution (outcome
    /// `rejected`): the answer is worth showing, and it is still a conflict.
    #[error("{}", .0.error)]
    Rejected(Box<Rejected>),
    /// The CP answered something that is not the expected JSON.
    #[error("the control plane answered {status} to {method} {path} with {what}")]
    BadAnswer {
        method: Method,
        path: String,
        status: u16,
        what: String,
    },
    /// The request could not be built (bad address, bad header value).
    #[error("{0}")]
    Usage(String),
    /// Anything else on the wire (protocol error, oversized answer, …).
    #[error("request to the control plane at {server} failed: {cause}")]
    Other { server: String, cause: String },
}

/// An error answer of the CP: its status and, when the body is the API's error body, its
/// code and message.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub method: Method,
    /// The path as shown in messages (query not encoded).
    pub path: String,
    pub status: u16,
    /// `None` when the body is not the API's error body.
    pub code: Option<ErrorCode>,
    /// The body's message, else `unexpected answer: <first bytes of the body>`.
    pub message: String,
    /// The `Retry-After` header, trimmed.
    pub retry_after: Option<String>,
    /// The whole answer body.
    pub body: Vec<u8>,
}

/// A rejected rollback execution: the error answer and the execution it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub error: ApiError,
    pub execution: ExecuteResponse,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.code.map(code_str);
        let code = code.as_deref().unwrap_or("error");
        write!(
            f,
            "the control plane answered {} {code} to {} {}: {}",
            self.status, self.method, self.path, self.message
        )?;
        match &self.retry_after {
            Some(after) if after.parse::<u64>().is_ok() => write!(f, " (retry after {after}s)"),
            Some(after) => write!(f, " (retry after {after})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for ApiError {}

/// The wire name of an error code (`not_found`, …).
fn code_str(code: ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{code:?}"))
}

impl ClientError {
    /// The exit code of the CLI for this error.
    pub fn exit(&self) -> Exit {
        match self {
            ClientError::Unreachable { .. } | ClientError::Timeout { .. } => Exit::Unreachable,
            ClientError::Api(e) => exit_for_status(e.status),
            ClientError::Rejected(r) => exit_for_status(r.error.status),
            ClientError::Usage(_) => Exit::Usage,
            ClientError::BadAnswer { .. } | ClientError::Other { .. } => Exit::Other,
        }
    }

    /// The error answer, if the CP answered with one.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            ClientError::Api(e) => Some(e),
            ClientError::Rejected(r) => Some(&r.error),
            _ => None,
        }
    }

    /// True when the CP said it is temporarily unavailable (503 `unavailable`, e.g. the
    /// store is full or its queue is): the same request may succeed later.
    pub fn is_unavailable(&self) -> bool {
        self.api()
            .is_some_and(|e| e.code == Some(ErrorCode::Unavailable) || e.status == 503)
    }

    /// The `Retry-After` of an error answer, in whole seconds.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.api()?.retry_after.as_deref()?.parse().ok()
    }

    /// A transport's IO error, classified: timeouts, "unreachable" naming the address and the
    /// OS error (`connection refused (os error 111)`), and an answer cut short.
    pub fn from_io(server: &str, secs: f64, e: &io::Error) -> ClientError {
        let server = server.to_string();
        match e.kind() {
            io::ErrorKind::TimedOut => ClientError::Timeout { server, secs },
            io::ErrorKind::UnexpectedEof => ClientError::Unreachable {
                server,
                cause: "the connection closed before a complete answer arrived".into(),
            },
            _ => ClientError::Unreachable {
                server,
                cause: e.to_string().to_lowercase(),
            },
        }
    }

    /// The address of the CP could not be turned into a request.
    pub fn bad_address(address: impl fmt::Display) -> ClientError {
        ClientError::Usage(format!(
            "invalid control plane address (--server): {address}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_code_table() {
        let table = [
            (200, Exit::Success),
            (201, Exit::Success),
            (204, Exit::Success),
            (301, Exit::Other),
            (400, Exit::Other),
            (401, Exit::Denied),
            (403, Exit::Denied),
            (404, Exit::NotFound),
            (405, Exit::Other),
            (409, Exit::Conflict),
            (413, Exit::Other),
            (415, Exit::Other),
            (422, Exit::Other),
            (429, Exit::Other),
            (500, Exit::Server),
            (503, Exit::Server),
            (599, Exit::Server),
            (600, Exit::Other),
        ];
        for (status, exit) in table {
            assert_eq!(exit_for_status(status), exit, "status {status}");
        }
        let codes: Vec<u8> = [
            Exit::Success,
            Exit::Other,
            Exit::Usage,
            Exit::Unreachable,
            Exit::NotFound,
            Exit::Conflict,
            Exit::Denied,
            Exit::Server,
        ]
        .iter()
        .map(|e| *e as u8)
        .collect();
        assert_eq!(codes, [0, 1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn every_error_class_has_its_exit_code() {
        let server = "http://127.0.0.1:9".to_string();
        let api = |status| ApiError {
            method: Method::Get,
            path: "/v1/x".into(),
            status,
            code: None,
            message: "m".into(),
            retry_after: None,
            body: Vec::new(),
        };
        let cases = [
            (
                ClientError::Unreachable {
                    server: server.clone(),
                    cause: "x".into(),
                },
                Exit::Unreachable,
            ),
            (
                ClientError::Timeout {
                    server: server.clone(),
                    secs: 1.0,
                },
                Exit::Unreachable,
            ),
            (ClientError::Api(Box::new(api(404))), Exit::NotFound),
            (ClientError::Api(Box::new(api(403))), Exit::Denied),
            (ClientError::Api(Box::new(api(502))), Exit::Server),
            (ClientError::Api(Box::new(api(422))), Exit::Other),
            (
                ClientError::BadAnswer {
                    method: Method::Get,
                    path: "/v1/x".into(),
                    status: 200,
                    what: "w".into(),
                },
                Exit::Other,
            ),
            (ClientError::Usage("u".into()), Exit::Usage),
            (
                ClientError::Other {
                    server,
                    cause: "c".into(),
                },
                Exit::Other,
            ),
        ];
        for (e, exit) in cases {
            assert_eq!(e.exit(), exit, "{e:?}");
        }
    }

    #[test]
    fn io_errors_name_the_address_and_the_os_error() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        let e = ClientError::from_io("http://127.0.0.1:9", 2.0, &refused);
        assert_eq!(e.exit(), Exit::Unreachable);
        assert_eq!(
            e.to_string(),
            "cannot reach the control plane at http://127.0.0.1:9: connection refused"
        );
        let e = ClientError::from_io("http://h:1", 0.5, &io::ErrorKind::TimedOut.into());
        assert_eq!(
            e.to_string(),
            "no answer from the control plane at http://h:1 within 0.5s (--timeout): timed out"
        );
        let e = ClientError::from_io("http://h:1", 1.0, &io::ErrorKind::UnexpectedEof.into());
        assert!(e
            .to_string()
            .ends_with("closed before a complete answer arrived"));
    }
}

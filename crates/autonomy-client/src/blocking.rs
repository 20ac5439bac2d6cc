//! The blocking transport: ureq 3, plain HTTP, no TLS, no async runtime. What the CLI uses
//! (one call per process, so start-up cost matters more than anything) and the bench.
//!
//! It only moves bytes: a [`Request`] goes out, a [`Response`] comes back. Connect plus
//! answer must finish within the timeout.

use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::{Call, ClientError, Method, Reply, Request, Response, MAX_BODY};

/// A connection (kept alive between calls) to one CP.
#[derive(Debug)]
pub struct Transport {
    agent: ureq::Agent,
    server: String,
    timeout: Duration,
}

impl Transport {
    /// `server` is `http://host[:port]` without a trailing slash; `timeout` bounds each
    /// exchange, connect included.
    pub fn new(server: impl Into<String>, timeout: Duration) -> Transport {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .max_redirects(0)
            .user_agent(ureq::config::AutoHeaderValue::None)
            .build();
        Transport {
            agent: ureq::Agent::new_with_config(config),
            server: server.into(),
            timeout,
        }
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    /// Sends `request` and reads the whole answer, whatever its status.
    pub fn send(&self, request: &Request) -> Result<Response, ClientError> {
        request.validate()?;
        let mut builder = ureq::http::Request::builder()
            .method(request.method.as_str())
            .uri(format!("{}{}", self.server, request.target()));
        for (name, value) in &request.headers {
            builder = builder.header(*name, value.as_str());
        }
        let result = match (request.method, request.body.is_empty()) {
            // No body at all on a GET; an empty POST says `content-length: 0`.
            (Method::Get, true) => builder.body(()).map(|r| self.agent.run(r)),
            _ => builder
                .body(request.body.as_slice())
                .map(|r| self.agent.run(r)),
        };
        let mut response = result
            .map_err(|e| ClientError::bad_address(format!("{}: {e}", self.server)))?
            .map_err(|e| self.error(e))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(|e| self.error(e))?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// Sends the call's request and checks the answer: a [`Reply`] for 2xx, else the error.
    pub fn call<T>(&self, call: &Call<T>) -> Result<Reply<T>, ClientError> {
        call.check(self.send(call.request())?)
    }

    /// [`Transport::call`], then the body decoded as `T`.
    pub fn fetch<T: DeserializeOwned>(&self, call: &Call<T>) -> Result<T, ClientError> {
        self.call(call)?.value()
    }

    fn error(&self, e: ureq::Error) -> ClientError {
        let server = self.server.clone();
        let secs = self.timeout.as_secs_f64();
        match e {
            ureq::Error::Timeout(_) => ClientError::Timeout { server, secs },
            ureq::Error::Io(io) => ClientError::from_io(&server, secs, &io),
            ureq::Error::HostNotFound => ClientError::Unreachable {
                server,
                cause: "host not found".into(),
            },
            ureq::Error::ConnectionFailed => ClientError::Unreachable {
                server,
                cause: "connection failed".into(),
            },
            ureq::Error::BadUri(uri) => ClientError::bad_address(uri),
            ureq::Error::Http(e) => ClientError::Usage(format!(
                "cannot build the request (check --token and --operator for invalid characters): {e}"
            )),
            ureq::Error::Tls(_) | ureq::Error::TlsRequired | ureq::Error::RequireHttpsOnly(_) => {
                ClientError::Usage(format!(
                    "cannot talk to {server}: this build speaks plain HTTP only (--server)"
                ))
            }
            other => ClientError::Other {
                server,
                cause: other.to_string().to_lowercase(),
            },
        }
    }
}

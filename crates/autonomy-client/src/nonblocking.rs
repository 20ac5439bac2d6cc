//! The async transport: hyper 1 through hyper-util's pooled client on tokio, HTTP/1 only.
//! For many concurrent callers in one process (the agent, the fleet simulator).
//!
//! It only moves bytes: a [`Request`] goes out, a [`Response`] comes back. Connect plus
//! answer must finish within the timeout. Clones share one connection pool, so thousands of
//! agents can each hold a clone (and their own [`Api`](crate::Api)).

use std::io;
use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::de::DeserializeOwned;

use crate::{Call, ClientError, Method, Reply, Request, Response, MAX_BODY};

/// A pool of connections to one CP. Cheap to clone; clones share the pool.
#[derive(Debug, Clone)]
pub struct Transport {
    client: Client<HttpConnector, Full<Bytes>>,
    server: String,
    timeout: Duration,
}

impl Transport {
    /// `server` is `http://host[:port]` without a trailing slash; `timeout` bounds each
    /// exchange, connect included. Building needs no runtime; sending runs on tokio.
    pub fn new(server: impl Into<String>, timeout: Duration) -> Transport {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Transport {
            client,
            server: server.into(),
            timeout,
        }
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    /// Sends `request` and reads the whole answer, whatever its status.
    pub async fn send(&self, request: &Request) -> Result<Response, ClientError> {
        request.validate()?;
        let method = match request.method {
            Method::Get => hyper::Method::GET,
            Method::Post => hyper::Method::POST,
        };
        let uri: hyper::Uri = format!("{}{}", self.server, request.target())
            .parse()
            .map_err(|e| ClientError::bad_address(format!("{}: {e}", self.server)))?;
        let mut builder = hyper::Request::builder().method(method).uri(uri);
        for (name, value) in &request.headers {
            builder = builder.header(*name, value.as_str());
        }
        let body = Full::new(Bytes::copy_from_slice(&request.body));
        let request = builder
            .body(body)
            .map_err(|e| ClientError::bad_address(format!("{}: {e}", self.server)))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| self.error(&e))?;
            let (parts, body) = response.into_parts();
            let limit = usize::try_from(MAX_BODY).unwrap_or(usize::MAX);
            let body = Limited::new(body, limit)
                .collect()
                .await
                .map_err(|e| self.error(e.as_ref()))?
                .to_bytes();
            let headers = parts
                .headers
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
                .collect();
            Ok(Response {
                status: parts.status.as_u16(),
                headers,
                body: body.to_vec(),
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                server: self.server.clone(),
                secs: self.timeout.as_secs_f64(),
            }),
        }
    }

    /// Sends the call's request and checks the answer: a [`Reply`] for 2xx, else the error.
    pub async fn call<T>(&self, call: &Call<T>) -> Result<Reply<T>, ClientError> {
        call.check(self.send(call.request()).await?)
    }

    /// [`Transport::call`], then the body decoded as `T`.
    pub async fn fetch<T: DeserializeOwned>(&self, call: &Call<T>) -> Result<T, ClientError> {
        self.call(call).await?.value()
    }

    /// A hyper or body error, classified by the IO error underneath when there is one.
    fn error(&self, e: &(dyn std::error::Error + 'static)) -> ClientError {
        let secs = self.timeout.as_secs_f64();
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(c) = cause {
            if let Some(io) = c.downcast_ref::<io::Error>() {
                return ClientError::from_io(&self.server, secs, io);
            }
            if let Some(h) = c.downcast_ref::<hyper::Error>() {
                if h.is_incomplete_message() {
                    let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
                    return ClientError::from_io(&self.server, secs, &eof);
                }
                if h.is_timeout() {
                    let timeout = io::Error::from(io::ErrorKind::TimedOut);
                    return ClientError::from_io(&self.server, secs, &timeout);
                }
            }
            if c.is::<LengthLimitError>() {
                return ClientError::Other {
                    server: self.server.clone(),
                    cause: format!("the answer is larger than {MAX_BODY} bytes"),
                };
            }
            cause = c.source();
        }
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        if e.downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(|e| e.is_connect())
        {
            return ClientError::Unreachable {
                server: self.server.clone(),
                cause: text.to_lowercase(),
            };
        }
        ClientError::Other {
            server: self.server.clone(),
            cause: text.to_lowercase(),
        }
    }
}

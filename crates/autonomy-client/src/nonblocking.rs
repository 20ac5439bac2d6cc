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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use autonomy_api::{CreateTokenRequest, Role};

    use super::*;
    use crate::fake_cp::{
        api, assert_timed_out, assert_unreachable, closed_port_url, silent_listener, FakeCp,
    };
    use crate::{Api, Exit};

    #[tokio::test]
    async fn a_post_goes_out_and_its_answer_decodes() {
        let cp = FakeCp::answer(
            201,
            &[("content-type", "application/json")],
            r#"{"id":"tok-1","operator":"ci","role":"viewer","token":"t","created_at":"x"}"#,
        );
        let t = Transport::new(&cp.url, Duration::from_secs(10));
        let created = t
            .fetch(&api().create_token(&CreateTokenRequest {
                operator: "ci".into(),
                role: Role::Viewer,
            }))
            .await
            .unwrap();
        assert_eq!(created.id, "tok-1");
        let req = cp.received();
        assert_eq!(req.line, "POST /v1/tokens HTTP/1.1");
        assert_eq!(req.header("authorization"), Some("Bearer s3cret"));
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert_eq!(req.body, br#"{"operator":"ci","role":"viewer"}"#);
    }

    #[tokio::test]
    async fn an_error_answer_is_typed_with_its_retry_after() {
        let cp = FakeCp::answer(
            503,
            &[("retry-after", "2")],
            r#"{"error":{"code":"unavailable","message":"storage unavailable"}}"#,
        );
        let t = Transport::new(&cp.url, Duration::from_secs(10));
        let e = t.call(&api().list_tokens()).await.unwrap_err();
        assert_eq!(e.exit(), Exit::Server);
        assert!(e.is_unavailable());
        assert_eq!(e.retry_after_secs(), Some(2));
        assert_eq!(cp.received().line, "GET /v1/tokens HTTP/1.1");
    }

    /// Many callers, each with its own identity, share one transport (and its pool).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_transport() {
        const CALLERS: usize = 64;
        let cp = FakeCp::answer_many(CALLERS, r#"{"status":"ready"}"#);
        let t = Transport::new(&cp.url, Duration::from_secs(10));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..CALLERS {
            let t = t.clone();
            let api = Api::new().with_operator(Some(format!("agent-{i:03}")));
            tasks.spawn(async move { t.fetch(&api.ready()).await });
        }
        while let Some(result) = tasks.join_next().await {
            assert_eq!(result.unwrap().unwrap().status, "ready");
        }
        let mut operators: Vec<String> = (0..CALLERS)
            .map(|_| {
                cp.received()
                    .header("x-autonomy-operator")
                    .unwrap()
                    .to_string()
            })
            .collect();
        operators.sort();
        operators.dedup();
        assert_eq!(operators.len(), CALLERS);
    }

    #[tokio::test]
    async fn nothing_listening_is_unreachable_naming_the_address() {
        let url = closed_port_url();
        let t = Transport::new(&url, Duration::from_secs(10));
        let e = t.send(api().health().request()).await.unwrap_err();
        assert_unreachable(&e, &url);
    }

    #[tokio::test]
    async fn a_cp_that_never_answers_times_out() {
        let (_listener, url) = silent_listener();
        let t = Transport::new(&url, Duration::from_millis(300));
        let started = Instant::now();
        let e = t.send(api().health().request()).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_timed_out(&e, &url);
    }
}

//! The bench's client of the CP under test: `autonomy-client`'s blocking transport (one
//! `ureq` agent, so one kept-alive connection, per [`Http`]), plain HTTP to 127.0.0.1 only,
//! every exchange bounded by a timeout. Building requests, decoding answers and classifying
//! errors are the client crate's; this adds the loopback check and the timing.

use std::time::{Duration, Instant};

use anyhow::bail;
use autonomy_client::blocking::Transport;
use autonomy_client::{Api, Call, ClientError, Reply, Token};

pub struct Http {
    transport: Transport,
    api: Api,
}

impl Http {
    /// `base` is `http://127.0.0.1:PORT`.
    pub fn new(base: &str, timeout: Duration) -> anyhow::Result<Http> {
        if !base.starts_with("http://127.0.0.1:") {
            bail!("the bench only talks to 127.0.0.1 over plain HTTP, not {base}");
        }
        Ok(Http {
            transport: Transport::new(base, timeout),
            api: Api::new().with_user_agent("autonomy-bench"),
        })
    }

    /// Sends `Authorization: Bearer <token>` with every request (RBAC on, B7).
    pub fn with_token(mut self, token: Option<Token>) -> Http {
        self.api = self.api.with_token(token);
        self
    }

    /// Builds the bench's requests (no operator; no token unless [`Http::with_token`]).
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// Sends `call`: its 2xx reply, else the typed error.
    pub fn call<T>(&self, call: &Call<T>) -> Result<Reply<T>, ClientError> {
        self.transport.call(call)
    }

    /// [`Http::call`] and how long it took, from sending the request to having read the
    /// whole body.
    pub fn timed<T>(&self, call: &Call<T>) -> Result<(Reply<T>, Duration), ClientError> {
        let started = Instant::now();
        let reply = self.transport.call(call)?;
        Ok((reply, started.elapsed()))
    }
}

/// Prometheus text → the value of `name` (an unlabelled sample).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_unlabelled_metrics() {
        let text = "# HELP a_total x\n# TYPE a_total counter\na_total 42\nb{x=\"1\"} 3\nab 7\n";
        assert_eq!(metric(text, "a_total"), Some(42.0));
        assert_eq!(metric(text, "ab"), Some(7.0));
        assert_eq!(metric(text, "b"), None);
        assert_eq!(metric(text, "missing"), None);
    }

    #[test]
    fn refuses_anything_but_loopback() {
        assert!(Http::new("http://10.0.0.1:80", Duration::from_secs(1)).is_err());
        assert!(Http::new("https://127.0.0.1:80", Duration::from_secs(1)).is_err());
        assert!(Http::new("http://127.0.0.1:8080", Duration::from_secs(1)).is_ok());
    }
}

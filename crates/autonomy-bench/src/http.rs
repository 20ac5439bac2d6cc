//! A blocking HTTP client for the CP under test: plain HTTP to 127.0.0.1 only, one `ureq`
//! agent (so one kept-alive connection) per [`Http`], every exchange bounded by a timeout.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Largest answer body the bench reads (a page of 1000 plans is about 1 MB).
const MAX_BODY: u64 = 256 * 1024 * 1024;

pub const OPERATOR_HEADER: &str = autonomy_api::OPERATOR_HEADER;

/// One answer and how long it took, from sending the request to having read the whole body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub elapsed: Duration,
    pub retry_after: Option<u64>,
}

impl Answer {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_slice(&self.body).with_context(|| {
            let text = self.text();
            let cut: String = text.chars().take(200).collect();
            format!("unexpected answer (HTTP {}): {cut}", self.status)
        })
    }
}

pub struct Http {
    agent: ureq::Agent,
    base: String,
}

impl Http {
    /// `base` is `http://127.0.0.1:PORT`.
    pub fn new(base: &str, timeout: Duration) -> anyhow::Result<Http> {
        if !base.starts_with("http://127.0.0.1:") {
            bail!("the bench only talks to 127.0.0.1 over plain HTTP, not {base}");
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .max_redirects(0)
            .user_agent("autonomy-bench")
            .build();
        Ok(Http {
            agent: ureq::Agent::new_with_config(config),
            base: base.to_string(),
        })
    }

    /// `GET path` with `query` pairs (percent-encoded here).
    pub fn get(&self, path: &str, query: &[(&str, &str)]) -> anyhow::Result<Answer> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.get(&url).header("accept", "application/json");
        for (k, v) in query {
            req = req.query(*k, *v);
        }
        let started = Instant::now();
        let resp = req.call();
        finish(started, resp).with_context(|| format!("GET {path}"))
    }

    /// `POST path` with a JSON body, as `operator` (X-Autonomy-Operator).
    pub fn post_json(&self, path: &str, body: &str, operator: &str) -> anyhow::Result<Answer> {
        let url = format!("{}{path}", self.base);
        let started = Instant::now();
        let resp = self
            .agent
            .post(&url)
            .header("accept", "application/json")
            .header("content-type", "application/json")
            .header(OPERATOR_HEADER, operator)
            .send(body);
        finish(started, resp).with_context(|| format!("POST {path}"))
    }
}

fn finish(
    started: Instant,
    resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> anyhow::Result<Answer> {
    let mut resp = resp?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_vec()?;
    Ok(Answer {
        status,
        body,
        elapsed: started.elapsed(),
        retry_after,
    })
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

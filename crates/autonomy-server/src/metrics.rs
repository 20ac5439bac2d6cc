//! `/metrics` through `prometheus-client` (OpenMetrics text).
//!
//! Two kinds of metric. What the server observes as it goes lives in [`HttpMetrics`] (HTTP
//! requests by method, route template and status class with a latency histogram, device polls
//! and reports): instruments updated by the request layer. What other parts already count
//! (the store's [`StoreMetrics`], the promoter's [`EngineState`](crate::EngineState), the
//! refusals, the audit check, plans by phase) is read at scrape time into a registry made for
//! that scrape ([`snapshot`]). Both are encoded into one answer with one `# EOF`.
//!
//! Names are those the hand-written text had (counters keep their `_total`), plus the new ones.

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use autonomy_store::{StoreMetrics, BATCH_SIZE_BUCKETS, COMMIT_MICROS_BUCKETS};

/// Upper bounds (seconds) of the HTTP latency histogram: 0.5 ms to 30 s (long polls wait).
const HTTP_SECONDS_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The route label of a request no route matched (a 404 or 405 from the fallbacks).
pub(crate) const UNMATCHED_ROUTE: &str = "unmatched";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
}

/// The instruments the request layer updates. Cheap to clone (handles on shared values).
#[derive(Clone, Debug)]
pub(crate) struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    responses: Family<ClassLabels, Counter>,
    device_polls: Counter,
    device_reports: Counter,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(HTTP_SECONDS_BUCKETS.iter().copied())
            }),
            responses: Family::default(),
            device_polls: Counter::default(),
            device_reports: Counter::default(),
        }
    }
}

impl HttpMetrics {
    /// One answered request. `route` is the matched route template ([`UNMATCHED_ROUTE`] when
    /// none), so the label values are bounded; so are methods (others are `other`).
    pub(crate) fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let method = bounded_method(method);
        let class = status_class(status);
        self.requests
            .get_or_create(&RequestLabels {
                method,
                route: route.to_string(),
                class,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                method,
                route: route.to_string(),
            })
            .observe(seconds);
        self.responses.get_or_create(&ClassLabels { class }).inc();
        if (200..300).contains(&status) {
            match route {
                "/v1/device/poll" => {
                    self.device_polls.inc();
                }
                "/v1/device/reports" => {
                    self.device_reports.inc();
                }
                _ => {}
            }
        }
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "autonomy_http_requests",
            "HTTP requests answered, by method, route template and status class",
            self.requests.clone(),
        );
        r.register(
            "autonomy_http_request_duration_seconds",
            "Time from the request's headers to its answer, by method and route template",
            self.latency.clone(),
        );
        r.register(
            "autonomy_http_responses",
            "Responses by status class",
            self.responses.clone(),
        );
        r.register(
            "autonomy_device_polls",
            "Device polls answered 2xx (POST /v1/device/poll)",
            self.device_polls.clone(),
        );
        r.register(
            "autonomy_device_reports",
            "Device reports accepted (POST /v1/device/reports answered 2xx)",
            self.device_reports.clone(),
        );
    }
}

fn bounded_method(m: &str) -> &'static str {
    match m {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// What is read at scrape time.
pub(crate) struct Snapshot {
    pub store: StoreMetrics,
    pub promoter_ticks: u64,
    pub promoter_actions: u64,
    pub auth_denied: u64,
    pub auth_tarpitted: u64,
    pub long_polls_waiting: u64,
    /// `(damaged, verifying)` of the audit check, when the server has one.
    pub audit_check: Option<(bool, bool)>,
    pub plans_by_phase: Vec<(String, u64)>,
    pub time_seconds: f64,
}

/// The whole `/metrics` text: the live instruments and the scrape's snapshot.
pub(crate) fn render(http: &HttpMetrics, snap: Snapshot) -> Result<String, std::fmt::Error> {
    let mut live = Registry::default();
    http.register(&mut live);
    let snapshot = snapshot(snap);
    let mut out = String::new();
    encode_registry(&mut out, &snapshot)?;
    encode_registry(&mut out, &live)?;
    encode_eof(&mut out)?;
    Ok(out)
}

fn snapshot(s: Snapshot) -> Registry {
    let mut r = Registry::default();
    let m = &s.store;
    let counters = [
        (
            "autonomy_store_commits",
            "Write transactions committed (each one fsync)",
            m.commits,
        ),
        (
            "autonomy_store_committed_requests",
            "Write requests carried by committed transactions",
            m.committed_requests,
        ),
        (
            "autonomy_store_failed_commits",
            "Write transactions that failed to commit (answered 503)",
            m.failed_commits,
        ),
        (
            "autonomy_store_commit_microseconds",
            "Time spent committing, including the audit fsync",
            m.commit_micros,
        ),
        (
            "autonomy_audit_events",
            "Audit events committed",
            m.audit_events,
        ),
        (
            "autonomy_audit_export_failures",
            "Failed appends to the retained audit store",
            m.audit_export_failures,
        ),
        (
            "autonomy_promoter_ticks",
            "Promoter ticks finished (SPEC §8.3)",
            s.promoter_ticks,
        ),
        (
            "autonomy_promoter_actions",
            "Promoter actions applied (each audited once as system:promoter)",
            s.promoter_actions,
        ),
        (
            "autonomy_auth_denied",
            "Requests refused for want of a valid bearer token",
            s.auth_denied,
        ),
        (
            "autonomy_auth_tarpitted",
            "Refusals answered after the tarpit delay (source over its budget)",
            s.auth_tarpitted,
        ),
    ];
    for (name, help, v) in counters {
        r.register(name, help, ConstCounter::new(v));
    }
    let gauges = [
        (
            "autonomy_store_max_batch",
            "Largest group commit so far",
            m.max_batch,
        ),
        (
            "autonomy_store_queue_depth",
            "Write requests queued for the store's writer now",
            m.queue_depth,
        ),
        (
            "autonomy_store_queue_capacity",
            "Write requests the writer's queue holds (beyond it: 503 overloaded)",
            m.queue_capacity,
        ),
        (
            "autonomy_audit_export_lag_events",
            "Committed audit events not yet appended to the retained audit store",
            m.audit_export_lag,
        ),
        (
            "autonomy_device_long_polls_waiting",
            "Devices with a long poll waiting now",
            s.long_polls_waiting,
        ),
    ];
    for (name, help, v) in gauges {
        r.register(name, help, ConstGauge::new(clamp_i64(v)));
    }
    r.register(
        "autonomy_store_batch_size",
        "Write requests per committed transaction (group commit)",
        ConstHistogram::new(
            &BATCH_SIZE_BUCKETS.map(|b| b as f64),
            &m.batch_sizes,
            m.committed_requests as f64,
        ),
    );
    r.register(
        "autonomy_store_commit_duration_seconds",
        "Time to commit a write transaction, including the audit fsync",
        ConstHistogram::new(
            &COMMIT_MICROS_BUCKETS.map(|b| b as f64 / 1e6),
            &m.commit_latencies,
            m.commit_micros as f64 / 1e6,
        ),
    );
    if let Some((damaged, verifying)) = s.audit_check {
        r.register(
            "autonomy_audit_damaged",
            "1 when the background check found the audit store damaged (see /v1/health)",
            ConstGauge::new(i64::from(damaged)),
        );
        r.register(
            "autonomy_audit_verifying",
            "1 while the background check of the audit store runs",
            ConstGauge::new(i64::from(verifying)),
        );
    }
    let plans = Family::<PhaseLabels, prometheus_client::metrics::gauge::Gauge>::default();
    for (phase, n) in s.plans_by_phase {
        plans
            .get_or_create(&PhaseLabels { phase })
            .set(clamp_i64(n));
    }
    r.register("autonomy_plans", "Plans by phase", plans);
    r.register(
        "autonomy_time_seconds",
        "Server clock (Unix seconds)",
        ConstGauge::new(s.time_seconds),
    );
    r
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A histogram whose buckets were counted elsewhere (the store's writer): per-bucket counts
/// over `bounds`, the last slot above them all.
#[derive(Debug)]
struct ConstHistogram {
    buckets: Vec<(f64, u64)>,
    count: u64,
    sum: f64,
}

impl ConstHistogram {
    fn new(bounds: &[f64], counts: &[u64], sum: f64) -> ConstHistogram {
        let buckets: Vec<(f64, u64)> = bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(counts.iter().copied())
            .collect();
        ConstHistogram {
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
            sum,
        }
    }
}

impl TypedMetric for ConstHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ConstHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, name: &str) -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(str::to_string))
    }

    #[test]
    fn renders_openmetrics_with_the_old_names_and_the_histograms() {
        let http = HttpMetrics::default();
        http.observe("GET", "/v1/rollouts/{id}", 200, 0.003);
        http.observe("POST", "/v1/device/poll", 200, 0.2);
        http.observe("POST", "/v1/device/reports", 409, 0.01);
        http.observe("BREW", UNMATCHED_ROUTE, 405, 0.0001);
        let mut store = StoreMetrics {
            commits: 3,
            committed_requests: 7,
            commit_micros: 3_000,
            queue_depth: 2,
            queue_capacity: 4096,
            ..StoreMetrics::default()
        };
        store.batch_sizes[0] = 1; // one batch of 1
        store.batch_sizes[2] = 2; // two of 3..=4
        store.commit_latencies[2] = 3; // 500 µs < t <= 1 ms
        let text = render(
            &http,
            Snapshot {
                store,
                promoter_ticks: 5,
                promoter_actions: 1,
                auth_denied: 100,
                auth_tarpitted: 0,
                long_polls_waiting: 1,
                audit_check: Some((false, true)),
                plans_by_phase: vec![("published".into(), 1)],
                time_seconds: 1.5,
            },
        )
        .unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        for (name, value) in [
            ("autonomy_store_commits_total", "3"),
            ("autonomy_store_commit_microseconds_total", "3000"),
            ("autonomy_auth_denied_total", "100"),
            ("autonomy_auth_tarpitted_total", "0"),
            ("autonomy_promoter_ticks_total", "5"),
            ("autonomy_store_max_batch", "0"),
            ("autonomy_store_queue_depth", "2"),
            ("autonomy_audit_verifying", "1"),
            ("autonomy_plans{phase=\"published\"}", "1"),
            ("autonomy_http_responses_total{class=\"2xx\"}", "2"),
            ("autonomy_device_polls_total", "1"),
            ("autonomy_device_reports_total", "0"),
            ("autonomy_store_batch_size_count", "3"),
            ("autonomy_store_batch_size_sum", "7.0"),
            ("autonomy_store_batch_size_bucket{le=\"1.0\"}", "1"),
            ("autonomy_store_batch_size_bucket{le=\"2.0\"}", "1"),
            ("autonomy_store_batch_size_bucket{le=\"4.0\"}", "3"),
            ("autonomy_store_batch_size_bucket{le=\"+Inf\"}", "3"),
            ("autonomy_store_commit_duration_seconds_bucket{le=\"0.0005\"}", "0"),
            ("autonomy_store_commit_duration_seconds_bucket{le=\"0.001\"}", "3"),
            ("autonomy_store_commit_duration_seconds_sum", "0.003"),
            (
                "autonomy_http_requests_total{method=\"GET\",route=\"/v1/rollouts/{id}\",class=\"2xx\"}",
                "1",
            ),
            (
                "autonomy_http_requests_total{method=\"other\",route=\"unmatched\",class=\"4xx\"}",
                "1",
            ),
            (
                "autonomy_http_request_duration_seconds_bucket{le=\"0.0025\",method=\"GET\",route=\"/v1/rollouts/{id}\"}",
                "0",
            ),
            (
                "autonomy_http_request_duration_seconds_bucket{le=\"0.005\",method=\"GET\",route=\"/v1/rollouts/{id}\"}",
                "1",
            ),
        ] {
            assert_eq!(sample(&text, name).as_deref(), Some(value), "{name} in\n{text}");
        }
        assert_eq!(text.matches("# EOF").count(), 1);
    }
}

//! Requests refused for want of a valid token are counted, not written one by one: an attacker
//! without a token must not be able to write to the permanent audit store at will (SPEC §4).
//! Each source address gets one `auth.denied` event per window (default a minute) carrying the
//! count and a few samples; the count is also in `/metrics`, and the log says so at most once a
//! second.
//!
//! Counting does not bound the CPU a flood costs (parsing, routing, answering: ~0.2 ms per
//! request on the bench box). So each source also has a budget of refusals per second; past
//! it, every further refusal is answered only after a tarpit delay. The delay costs the CP a
//! timer, not CPU, and an HTTP/1.1 connection waits for its answer before its next request, so
//! a source is held to about one refusal per connection per delay (and connections are capped
//! by `--max-connections`). Legitimate clients never come near it: a 401 is final.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use autonomy_api::{timefmt, AuditEvent, EventType, Outcome, Target};
use autonomy_store::{now_us, Ctx, Store};

/// Sources tracked in one window at most; the rest are counted under `other`.
const MAX_SOURCES: usize = 10_000;
/// Samples kept per source and window.
const MAX_SAMPLES: usize = 5;
/// Bytes of one sample (method, path, event type) kept.
const SAMPLE_BYTES: usize = 160;

#[derive(Default)]
struct Window {
    count: u64,
    first_us: i64,
    last_us: i64,
    samples: Vec<String>,
}

/// A source's refusals in the current second.
struct Rate {
    second: u64,
    count: u32,
}

/// The refusals of the current window, by source address.
pub struct Denials {
    window: Mutex<HashMap<String, Window>>,
    total: AtomicU64,
    tarpitted: AtomicU64,
    log: Mutex<(Instant, u64)>,
    rates: Mutex<HashMap<String, Rate>>,
    started: Instant,
    pub(crate) every: Duration,
    budget: u32,
    tarpit: Duration,
}

impl Denials {
    /// `every`: the audit window; `budget`: refusals a source may cause per second before
    /// each further one waits `tarpit`.
    pub fn new(every: Duration, budget: u32, tarpit: Duration) -> Self {
        Denials {
            window: Mutex::default(),
            total: AtomicU64::new(0),
            tarpitted: AtomicU64::new(0),
            log: Mutex::new((Instant::now() - Duration::from_secs(2), 0)),
            rates: Mutex::default(),
            started: Instant::now(),
            every,
            budget,
            tarpit,
        }
    }

    /// Refusals answered late because their source was over its budget.
    pub fn tarpitted(&self) -> u64 {
        self.tarpitted.load(Ordering::Relaxed)
    }

    /// Counts one refusal against `source`'s budget for this second; past the budget, how long
    /// to wait before answering.
    pub fn throttle(&self, source: &str) -> Option<Duration> {
        let second = self.started.elapsed().as_secs();
        let mut rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        if rates.len() >= MAX_SOURCES && !rates.contains_key(source) {
            // A new second forgets old sources; within one, the table stays bounded.
            rates.retain(|_, r| r.second == second);
        }
        let rate = rates
            .entry(source.to_string())
            .or_insert(Rate { second, count: 0 });
        if rate.second != second {
            *rate = Rate { second, count: 0 };
        }
        rate.count = rate.count.saturating_add(1);
        if rate.count > self.budget {
            self.tarpitted.fetch_add(1, Ordering::Relaxed);
            Some(self.tarpit)
        } else {
            None
        }
    }

    /// Every unauthenticated refusal since start.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Counts one refusal from `source` (`what`: method, path and the attempted action, made
    /// only when the window keeps it as a sample).
    pub fn record(&self, source: &str, what: impl FnOnce() -> String) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let now = now_us();
        {
            let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
            let key = if w.len() >= MAX_SOURCES && !w.contains_key(source) {
                "other"
            } else {
                source
            };
            let entry = w.entry(key.to_string()).or_default();
            if entry.count == 0 {
                entry.first_us = now;
            }
            entry.count += 1;
            entry.last_us = now;
            if entry.samples.len() < MAX_SAMPLES {
                entry
                    .samples
                    .push(autonomy_api::cut_bytes(&escape(&what()), SAMPLE_BYTES));
            }
        }
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.1 += 1;
        if log.0.elapsed() >= Duration::from_secs(1) {
            tracing::warn!(
                refused = log.1,
                last_source = %source,
                "refused requests without a valid bearer token (counted; audited as auth.denied once per source and window)"
            );
            *log = (Instant::now(), 0);
        }
    }

    /// Writes one `auth.denied` event per source of the window that ends now. A failed write
    /// puts the counts back for the next flush.
    pub async fn flush<S: Store>(&self, store: &S) {
        let taken: Vec<(String, Window)> = {
            let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
            w.drain().collect()
        };
        let ctx = Ctx {
            actor: "unauthenticated".into(),
            request_id: "auth-denied".into(),
            idempotency: None,
        };
        for (source, win) in taken {
            let event = AuditEvent::draft(
                EventType::AuthDenied,
                Target::Auth,
                &source,
                Outcome::Denied,
                format!("{} requests without a valid bearer token", win.count),
                serde_json::json!({
                    "count": win.count,
                    "source": source,
                    "first_at": timefmt::format_us(win.first_us),
                    "last_at": timefmt::format_us(win.last_us),
                    "samples": win.samples,
                }),
            );
            if let Err(e) = store.audit_only(&ctx, event).await {
                tracing::warn!(error = %e, %source, "cannot audit refused requests yet; will retry");
                let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
                let entry = w.entry(source).or_default();
                if entry.count == 0 {
                    entry.first_us = win.first_us;
                    entry.samples = win.samples;
                }
                entry.count += win.count;
                entry.last_us = entry.last_us.max(win.last_us);
            }
        }
    }
}

/// Control and other hidden characters shown as `\u{…}`, so a sample can be printed safely.
fn escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if autonomy_core::is_hidden_char(c) {
                format!("\\u{{{:x}}}", c as u32).chars().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

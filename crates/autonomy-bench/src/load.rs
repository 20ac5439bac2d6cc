//! Load generators over HTTP: a count-bounded seeder (to build the data sets) and a
//! duration-bounded closed loop (B1, B7, P1). Every worker thread has its own blocking transport
//! (`autonomy-client`, one `ureq` agent), so its own kept-alive connection; every create is a
//! real `POST /v1/rollouts` answered only once durable. Only the 2xx check is made on a
//! success: its body is never decoded, which keeps the generator cheap.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::bail;
use autonomy_api::Rollout;
use autonomy_client::{Call, Token};
use serde::Serialize;

use crate::http::Http;
use crate::stats::{round1, Latency};

/// One request may take at most this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Retries of one create answered `unavailable` (503: overload, storage fault) before it
/// counts as an error.
const MAX_RETRIES: u32 = 50;
/// Requests one closed-loop worker makes at most, whatever the duration.
const MAX_PER_WORKER: u64 = 5_000_000;

/// The operator (`X-Autonomy-Operator`) of the `i`-th plan: `bench-op-000` … round robin.
pub fn operator(i: u64, operators: usize) -> String {
    format!("bench-op-{:03}", i % operators.max(1) as u64)
}

/// `POST /v1/rollouts` with `body` as `operator` (`X-Autonomy-Operator`).
fn create(http: &Http, body: String, operator: String) -> Call<Rollout> {
    http.api()
        .clone()
        .with_operator(Some(operator))
        .create_rollout_json(body.into_bytes(), None)
}

/// The body of `POST /v1/rollouts` for plan `id`: a realistic plan (digest-pinned artifact,
/// lock fingerprint, targets, three stages). Its targets name neither `selector` nor
/// `devices`, so it is a record-only plan (SPEC §8): B1–B7 measure what they measured before the
/// rollout engine existed (E1–E5 measure the engine).
pub fn plan_body(id: &str, i: u64) -> String {
    serde_json::json!({
        "metadata": {
            "id": id,
            "labels": {"app": "fleet-agent", "bench": "autonomy-bench", "shard": format!("{}", i % 16)},
        },
        "spec": {
            "artifact_ref": format!("oci://registry.example.com/fleet/agent@sha256:{:064x}", i),
            "target_lock_fingerprint": format!("blake3:{:064x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            "targets": {"fleet": format!("warehouse-{}", i % 50), "hw": "rev-c"},
            "stages": [
                {"name": "canary", "percent": 5, "soak_seconds": 600},
                {"name": "wave-1", "percent": 25, "soak_seconds": 1800},
                {"name": "all", "percent": 100},
            ],
        },
    })
    .to_string()
}

#[derive(Debug, Clone, Serialize)]
pub struct SeedReport {
    pub label: String,
    pub requested: u64,
    pub created: u64,
    pub errors: u64,
    pub retried_503: u64,
    pub concurrency: usize,
    pub seconds: f64,
    pub creates_per_sec: f64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub first_errors: Vec<String>,
}

/// Creates plans `prefix-<start+i>` for `i` in `0..count` at `concurrency`.
#[allow(clippy::too_many_arguments)]
pub fn seed(
    base: &str,
    label: &str,
    prefix: &str,
    start: u64,
    count: u64,
    concurrency: usize,
    operators: usize,
) -> anyhow::Result<SeedReport> {
    let concurrency = concurrency.clamp(1, 1024);
    let next = AtomicU64::new(0);
    let created = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let retried = AtomicU64::new(0);
    let finished = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let first_errors = Mutex::new(Vec::<String>::new());
    let budget = (count / 100).max(10);
    let started = Instant::now();
    let note = |what: String| {
        errors.fetch_add(1, Ordering::Relaxed);
        let mut f = first_errors.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() < 5 {
            f.push(what);
        }
        if errors.load(Ordering::Relaxed) > budget {
            stop.store(true, Ordering::Relaxed);
        }
    };
    std::thread::scope(|s| -> anyhow::Result<()> {
        for _ in 0..concurrency {
            s.spawn(|| {
                let http = match Http::new(base, REQUEST_TIMEOUT) {
                    Ok(h) => h,
                    Err(e) => {
                        note(e.to_string());
                        finished.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let n = start + i;
                    let id = format!("{prefix}-{n:07}");
                    let body = plan_body(&id, n);
                    let who = operator(n, operators);
                    let call = create(&http, body, who);
                    let mut attempt = 0;
                    loop {
                        attempt += 1;
                        match http.call(&call) {
                            Ok(_) => {
                                created.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Err(e) if e.is_unavailable() && attempt < MAX_RETRIES => {
                                retried.fetch_add(1, Ordering::Relaxed);
                                let wait = e.retry_after_secs().unwrap_or(0).min(2);
                                std::thread::sleep(Duration::from_millis(20 + wait * 1000));
                            }
                            Err(e) => {
                                note(format!("create {id}: {e}"));
                                break;
                            }
                        }
                    }
                }
                finished.fetch_add(1, Ordering::SeqCst);
            });
        }
        // Progress to stderr while the (count-bounded) workers run.
        let mut last_print = Instant::now();
        while finished.load(Ordering::SeqCst) < concurrency {
            std::thread::sleep(Duration::from_millis(100));
            if last_print.elapsed() >= Duration::from_secs(5) {
                last_print = Instant::now();
                let done = created.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "  seed {label}: {done}/{count} plans ({:.0}/s, {:.0} s, {} errors)",
                    done as f64 / secs,
                    secs,
                    errors.load(Ordering::Relaxed)
                );
            }
        }
        Ok(())
    })?;
    let secs = started.elapsed().as_secs_f64();
    let report = SeedReport {
        label: label.to_string(),
        requested: count,
        created: created.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        retried_503: retried.load(Ordering::Relaxed),
        concurrency,
        seconds: round1(secs),
        creates_per_sec: round1(created.load(Ordering::Relaxed) as f64 / secs.max(1e-9)),
        first_errors: first_errors.into_inner().unwrap_or_else(|e| e.into_inner()),
    };
    if stop.load(Ordering::Relaxed) {
        bail!(
            "seeding {label} stopped after {} errors (budget {budget}); first: {:?}",
            report.errors,
            report.first_errors
        );
    }
    Ok(report)
}

#[derive(Debug, Clone, Serialize)]
pub struct LoopReport {
    pub concurrency: usize,
    pub warmup_seconds: f64,
    /// The measured window (after the warm-up).
    pub seconds: f64,
    /// Creates answered 201 within the window.
    pub creates: u64,
    /// Answers other than 201 (any time) and transport errors.
    pub errors: u64,
    pub creates_per_sec: f64,
    pub latency: Latency,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub first_errors: Vec<String>,
    /// Every latency sample of the window (not in the report; [`LoopReport::merge`] uses it).
    #[serde(skip)]
    pub samples: Vec<Duration>,
}

impl LoopReport {
    /// Several windows of the same loop as one: samples pooled, counts and seconds summed.
    pub fn merge(parts: Vec<LoopReport>) -> LoopReport {
        let mut out = LoopReport {
            concurrency: parts.first().map_or(0, |p| p.concurrency),
            warmup_seconds: 0.0,
            seconds: 0.0,
            creates: 0,
            errors: 0,
            creates_per_sec: 0.0,
            latency: Latency::default(),
            first_errors: Vec::new(),
            samples: Vec::new(),
        };
        for p in parts {
            out.warmup_seconds += p.warmup_seconds;
            out.seconds += p.seconds;
            out.creates += p.creates;
            out.errors += p.errors;
            for e in p.first_errors {
                if out.first_errors.len() < 5 {
                    out.first_errors.push(e);
                }
            }
            out.samples.extend(p.samples);
        }
        out.creates_per_sec = round1(out.creates as f64 / out.seconds.max(1e-9));
        out.latency = Latency::of(&out.samples);
        out
    }
}

/// Closed loop: `concurrency` workers, each sending its next create as soon as the previous
/// one is answered, for `warmup + duration`; only answers completed in the window after the
/// warm-up count. With a `token` (RBAC on) every create carries it. Worker `w` talks to
/// `bases[w % bases.len()]`: several replicas of one store get the load round robin.
pub fn closed_loop(
    bases: &[&str],
    prefix: &str,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    operators: usize,
    token: Option<&Token>,
) -> anyhow::Result<LoopReport> {
    if bases.is_empty() {
        bail!("closed loop over no CP");
    }
    let concurrency = concurrency.clamp(1, 1024);
    let errors = AtomicU64::new(0);
    let first_errors = Mutex::new(Vec::<String>::new());
    let begin = Instant::now();
    let window_start = begin + warmup;
    let end = window_start + duration;
    let per_worker: Vec<Vec<Duration>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..concurrency)
            .map(|w| {
                let errors = &errors;
                let first_errors = &first_errors;
                s.spawn(move || {
                    let mut lat = Vec::new();
                    let Ok(http) = Http::new(bases[w % bases.len()], REQUEST_TIMEOUT) else {
                        return lat;
                    };
                    let http = http.with_token(token.cloned());
                    let mut n = 0u64;
                    while Instant::now() < end && n < MAX_PER_WORKER {
                        n += 1;
                        let id = format!("{prefix}-w{w:03}-{n:07}");
                        let seq = (w as u64) << 32 | n;
                        let body = plan_body(&id, seq);
                        let who = operator(n + w as u64, operators);
                        let call = create(&http, body, who);
                        let sent = Instant::now();
                        let result = http.call(&call);
                        let done = Instant::now();
                        match result {
                            Ok(_) => {
                                if done >= window_start && done <= end {
                                    lat.push(done - sent);
                                }
                            }
                            Err(e) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                let mut f = first_errors.lock().unwrap_or_else(|e| e.into_inner());
                                if f.len() < 5 {
                                    f.push(e.to_string());
                                }
                                // Do not spin on a broken CP.
                                std::thread::sleep(Duration::from_millis(10));
                            }
                        }
                    }
                    lat
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let all: Vec<Duration> = per_worker.into_iter().flatten().collect();
    let secs = duration.as_secs_f64();
    Ok(LoopReport {
        concurrency,
        warmup_seconds: warmup.as_secs_f64(),
        seconds: secs,
        creates: all.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        creates_per_sec: round1(all.len() as f64 / secs),
        latency: Latency::of(&all),
        first_errors: first_errors.into_inner().unwrap_or_else(|e| e.into_inner()),
        samples: all,
    })
}

/// Width of the per-worker counter in the ids of [`raw_closed_loop`]'s plans.
const COUNTER_DIGITS: usize = 7;
/// Distinct request bodies each [`raw_closed_loop`] worker cycles through.
const TEMPLATES_PER_WORKER: u64 = 16;

/// One pre-rendered `POST /v1/rollouts`: the whole request as bytes, and where the counter
/// digits of its plan id sit in them (rewritten in place for every create, so the id is new
/// and the length, hence `content-length`, never changes).
#[derive(Debug, Clone)]
pub struct CreateTemplate {
    bytes: Vec<u8>,
    digits: std::ops::Range<usize>,
}

impl CreateTemplate {
    /// The request for plan `prefix-w<worker>-<counter>` (`seq` varies the rest of the body,
    /// `who` is the `X-Autonomy-Operator`), with counter digits to be filled by [`Self::fill`].
    pub fn new(
        addr: std::net::SocketAddr,
        prefix: &str,
        worker: usize,
        seq: u64,
        who: &str,
    ) -> Self {
        let stem = format!("{prefix}-w{worker:03}-");
        let id = format!("{stem}{}", "0".repeat(COUNTER_DIGITS));
        let body = plan_body(&id, seq);
        let head = format!(
            "POST /v1/rollouts HTTP/1.1\r\nhost: {addr}\r\nuser-agent: autonomy-bench\r\n\
             x-autonomy-operator: {who}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            body.len()
        );
        // The id appears once in the body, as the value of `metadata.id`.
        let quoted = format!("\"{id}\"");
        let at = body.find(&quoted).map_or(0, |i| i + 1 + stem.len());
        let start = head.len() + at;
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        CreateTemplate {
            bytes,
            digits: start..start + COUNTER_DIGITS,
        }
    }

    /// Writes `counter` (below 10^7) into the id and returns the request.
    pub fn fill(&mut self, mut counter: u64) -> &[u8] {
        for b in self.bytes[self.digits.clone()].iter_mut().rev() {
            *b = b'0' + (counter % 10) as u8;
            counter /= 10;
        }
        &self.bytes
    }
}

/// [`closed_loop`] with the cheap client of the engine phases ([`crate::raw::Conn`]): one raw
/// HTTP/1.1 kept-alive connection per worker, every request pre-rendered before the window
/// (each worker cycles through [`TEMPLATES_PER_WORKER`] bodies and rewrites only the counter
/// digits of the plan id), answers read by `content-length` and checked for 201 only. So the
/// generator's CPU per create is a write and a read syscall, not an HTTP library and a JSON
/// encoder: what is measured is the CP. RBAC off (operators by `X-Autonomy-Operator`).
pub fn raw_closed_loop(
    bases: &[&str],
    prefix: &str,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    operators: usize,
) -> anyhow::Result<LoopReport> {
    if bases.is_empty() {
        bail!("closed loop over no CP");
    }
    let addrs = bases
        .iter()
        .map(|b| crate::raw::loopback(b))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let concurrency = concurrency.clamp(1, 1024);
    // Every body rendered before any worker starts: the window measures the exchange only.
    let templates: Vec<Vec<CreateTemplate>> = (0..concurrency)
        .map(|w| {
            (0..TEMPLATES_PER_WORKER)
                .map(|k| {
                    let seq = (w as u64) << 32 | k;
                    let who = operator(k + w as u64, operators);
                    CreateTemplate::new(addrs[w % addrs.len()], prefix, w, seq, &who)
                })
                .collect()
        })
        .collect();
    let errors = AtomicU64::new(0);
    let first_errors = Mutex::new(Vec::<String>::new());
    let begin = Instant::now();
    let window_start = begin + warmup;
    let end = window_start + duration;
    let per_worker: Vec<Vec<Duration>> = std::thread::scope(|s| {
        let handles: Vec<_> = templates
            .into_iter()
            .enumerate()
            .map(|(w, mut ring)| {
                let errors = &errors;
                let first_errors = &first_errors;
                let addr = addrs[w % addrs.len()];
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(64 * 1024);
                    let mut conn = crate::raw::Conn::new(addr);
                    let mut n = 0u64;
                    while Instant::now() < end && n < MAX_PER_WORKER {
                        n += 1;
                        let request = ring[(n % TEMPLATES_PER_WORKER) as usize].fill(n);
                        let sent = Instant::now();
                        let result = conn.exchange(request);
                        let done = Instant::now();
                        let why = match result {
                            Ok(201) => {
                                if done >= window_start && done <= end {
                                    lat.push(done - sent);
                                }
                                continue;
                            }
                            Ok(status) => format!("create answered {status}: {}", conn.body_text()),
                            Err(e) => format!("create: {e}"),
                        };
                        errors.fetch_add(1, Ordering::Relaxed);
                        let mut f = first_errors.lock().unwrap_or_else(|e| e.into_inner());
                        if f.len() < 5 {
                            f.push(why);
                        }
                        drop(f);
                        // Do not spin on a broken CP.
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    lat
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let all: Vec<Duration> = per_worker.into_iter().flatten().collect();
    let secs = duration.as_secs_f64();
    Ok(LoopReport {
        concurrency,
        warmup_seconds: warmup.as_secs_f64(),
        seconds: secs,
        creates: all.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        creates_per_sec: round1(all.len() as f64 / secs),
        latency: Latency::of(&all),
        first_errors: first_errors.into_inner().unwrap_or_else(|e| e.into_inner()),
        samples: all,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(ms: &[u64], errors: u64) -> LoopReport {
        let samples: Vec<Duration> = ms.iter().map(|&m| Duration::from_millis(m)).collect();
        LoopReport {
            concurrency: 1,
            warmup_seconds: 1.0,
            seconds: 2.0,
            creates: samples.len() as u64,
            errors,
            creates_per_sec: samples.len() as f64 / 2.0,
            latency: Latency::of(&samples),
            first_errors: (0..errors).map(|e| format!("e{e}")).collect(),
            samples,
        }
    }

    #[test]
    fn templates_fill_the_id_in_place() {
        let addr: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let mut t = CreateTemplate::new(addr, "b1-c64", 7, 3, "bench-op-010");
        let text = String::from_utf8(t.fill(42).to_vec()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("POST /v1/rollouts HTTP/1.1\r\n"));
        assert!(head.contains("x-autonomy-operator: bench-op-010"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["metadata"]["id"], "b1-c64-w007-0000042");
        let again = String::from_utf8(t.fill(1_234_567).to_vec()).unwrap();
        assert_eq!(again.len(), text.len());
        assert!(again.contains("\"b1-c64-w007-1234567\""));
    }

    #[test]
    fn merged_windows_pool_their_samples() {
        let m = LoopReport::merge(vec![window(&[1, 2, 3], 4), window(&[100], 3)]);
        assert_eq!(m.creates, 4);
        assert_eq!(m.errors, 7);
        assert_eq!(m.seconds, 4.0);
        assert_eq!(m.warmup_seconds, 2.0);
        assert_eq!(m.creates_per_sec, 1.0);
        assert_eq!(m.latency.samples, 4);
        assert_eq!(m.latency.p99_ms, 100.0);
        assert_eq!(m.latency.p50_ms, 2.0);
        assert_eq!(m.first_errors.len(), 5);
    }
}

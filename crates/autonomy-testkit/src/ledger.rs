//! Ledgered concurrent writers. [`Load::start`] runs N writer threads against a CP: each
//! creates plans with unique ids (`<prefix>-w<NN>-<NNNNN>`) and, at a given share, executes
//! `retry` on one of its own acknowledged plans. Before every request a writer records an
//! `attempt`, after it one of: `ack` (acknowledged: 201 for a create, 200 `success` for a
//! retry, with the generation the CP answered), `answer` (any other HTTP answer: refused) or
//! `noanswer` (no whole answer: the CP may or may not have applied it). While the CP is down a
//! writer backs off (bounded) and tries again, until it is stopped.
//!
//! After a SIGKILL and a restart, [`Ledger::verify`] checks the plans the CP lists
//! ([`list_plans`]): every acknowledged create present, every acknowledged retry reflected,
//! nothing present that was never attempted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::http::{self, Conn, HttpError, Response};

/// What a request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `POST /v1/rollouts` with a fresh id.
    Create,
    /// `POST /v1/rollback/execute` `retry` on an acknowledged plan.
    Retry,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Create => "create",
            Kind::Retry => "retry",
        }
    }
}

/// One ledger event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// About to send.
    Attempt,
    /// Acknowledged (2xx success), with the plan generation the CP answered.
    Ack { code: u16, generation: Option<u64> },
    /// Any other HTTP answer, with the error code (or outcome) it carried.
    Answer { code: u16, error: String },
    /// No whole answer (transport error): unknown whether it was applied.
    NoAnswer { error: String },
}

/// One ledger line: `EPOCH EVENT KIND ID [CODE] [GENERATION|ERROR]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Seconds since the Unix epoch.
    pub epoch: f64,
    pub event: Event,
    pub kind: Kind,
    pub id: String,
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind.as_str();
        let id = &self.id;
        write!(f, "{:.6} ", self.epoch)?;
        match &self.event {
            Event::Attempt => write!(f, "attempt {kind} {id}"),
            Event::Ack { code, generation } => match generation {
                Some(g) => write!(f, "ack {kind} {id} {code} {g}"),
                None => write!(f, "ack {kind} {id} {code} -"),
            },
            Event::Answer { code, error } => write!(f, "answer {kind} {id} {code} {error}"),
            Event::NoAnswer { error } => write!(f, "noanswer {kind} {id} {error}"),
        }
    }
}

/// A ledger line that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("malformed ledger line: {0:?}")]
pub struct Malformed(pub String);

impl FromStr for Line {
    type Err = Malformed;
    fn from_str(s: &str) -> Result<Line, Malformed> {
        let bad = || Malformed(s.to_string());
        let f: Vec<&str> = s.split_whitespace().collect();
        if f.len() < 4 {
            return Err(bad());
        }
        let epoch: f64 = f[0].parse().map_err(|_| bad())?;
        let kind = match f[2] {
            "create" => Kind::Create,
            "retry" => Kind::Retry,
            _ => return Err(bad()),
        };
        let code =
            || -> Result<u16, Malformed> { f.get(4).and_then(|c| c.parse().ok()).ok_or_else(bad) };
        let rest = || f.get(5..).map(|r| r.join(" ")).unwrap_or_default();
        let event = match f[1] {
            "attempt" if f.len() == 4 => Event::Attempt,
            "ack" => Event::Ack {
                code: code()?,
                generation: f.get(5).and_then(|g| g.parse().ok()),
            },
            "answer" => Event::Answer {
                code: code()?,
                error: rest(),
            },
            "noanswer" => Event::NoAnswer {
                error: f[4..].join(" "),
            },
            _ => return Err(bad()),
        };
        Ok(Line {
            epoch,
            event,
            kind,
            id: f[3].to_string(),
        })
    }
}

/// Builds the body of a create: `(id, writer number)` to JSON.
pub type BodyFn = Arc<dyn Fn(&str, usize) -> String + Send + Sync>;

/// What the writers do.
#[derive(Clone)]
pub struct Writers {
    /// `http://127.0.0.1:PORT` (fixed for the whole load: a restarted CP must keep its port).
    pub base: String,
    /// How many writer threads (numbered 1..=writers).
    pub writers: usize,
    /// Plan ids are `<prefix>-w<NN>-<NNNNN>`, n from 1.
    pub id_prefix: String,
    /// `X-Autonomy-Operator`.
    pub operator: String,
    /// The body of a create.
    pub create_body: BodyFn,
    /// The `reason` of a retry.
    pub retry_reason: String,
    /// Share of requests that are retries (once a writer has an acknowledged plan), 0..=1.
    pub retry_share: f64,
    /// Seeds each writer's choices (writer w uses `seed * 1000 + w`).
    pub seed: u64,
    /// Each writer also appends its lines to `<dir>/ledger-wNN.txt`.
    pub ledger_dir: Option<PathBuf>,
    /// The writers stop by themselves after this long.
    pub max_duration: Duration,
    /// One exchange, at most.
    pub request_timeout: Duration,
}

impl Writers {
    /// Defaults: 0.5 retries, seed 0, no ledger files, 300 s, 5 s per request; creates carry a
    /// digest-pinned `oci://` artifact.
    pub fn new(base: &str, writers: usize, id_prefix: &str) -> Writers {
        Writers {
            base: base.to_string(),
            writers,
            id_prefix: id_prefix.to_string(),
            operator: "ledger-writer".into(),
            create_body: Arc::new(|id, _| {
                format!(
                    r#"{{"metadata":{{"id":"{id}"}},"spec":{{"artifact_ref":"oci://reg/app@sha256:{}"}}}}"#,
                    "a".repeat(64)
                )
            }),
            retry_reason: "ledger retry".into(),
            retry_share: 0.5,
            seed: 0,
            ledger_dir: None,
            max_duration: Duration::from_secs(300),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Per-writer counts of events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub attempt: u64,
    pub ack: u64,
    pub answer: u64,
    pub noanswer: u64,
}

/// How the writers ended.
#[derive(Debug, Clone)]
pub struct Summary {
    pub writers: usize,
    /// Threads that did not end within the stop limit.
    pub threads_still_running: usize,
    /// By writer name (`w01`, …).
    pub per_writer: BTreeMap<String, Counts>,
    /// A ledger file could not be written.
    pub ledger_file_errors: Vec<String>,
    /// Every line of every writer.
    pub ledger: Ledger,
}

struct Shared {
    stop: AtomicBool,
    acks: AtomicUsize,
    lines: Mutex<Vec<Line>>,
    counts: Mutex<BTreeMap<String, Counts>>,
    file_errors: Mutex<Vec<String>>,
}

/// Running writers.
pub struct Load {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    writers: usize,
}

impl Load {
    /// Starts the writer threads.
    pub fn start(spec: Writers) -> Result<Load, HttpError> {
        http::split_url(&spec.base)?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            acks: AtomicUsize::new(0),
            lines: Mutex::new(Vec::new()),
            counts: Mutex::new(BTreeMap::new()),
            file_errors: Mutex::new(Vec::new()),
        });
        let deadline = Instant::now() + spec.max_duration;
        let spec = Arc::new(spec);
        let handles = (1..=spec.writers)
            .map(|w| {
                let (spec, shared) = (spec.clone(), shared.clone());
                thread::spawn(move || writer(&spec, w, deadline, &shared))
            })
            .collect();
        Ok(Load {
            shared,
            handles,
            writers: spec.writers,
        })
    }

    /// Acknowledged requests so far.
    pub fn acks(&self) -> usize {
        self.shared.acks.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests were acknowledged; `false` after `limit`.
    pub fn wait_for_acks(&self, n: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.acks() < n {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// A copy of the ledger so far.
    pub fn ledger(&self) -> Ledger {
        Ledger {
            lines: locked(&self.shared.lines),
        }
    }

    /// Tells the writers to stop and waits (at most `limit`) for them.
    pub fn stop(self, limit: Duration) -> Summary {
        self.shared.stop.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + limit;
        let mut still = 0;
        for h in self.handles {
            while !h.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                let _ = h.join();
            } else {
                still += 1;
            }
        }
        Summary {
            writers: self.writers,
            threads_still_running: still,
            per_writer: locked(&self.shared.counts),
            ledger_file_errors: locked(&self.shared.file_errors),
            ledger: Ledger {
                lines: locked(&self.shared.lines),
            },
        }
    }
}

/// A copy of what a mutex holds (a writer that panicked holding it does not matter: its
/// data is only ever pushed to).
fn locked<T: Clone>(m: &Mutex<T>) -> T {
    m.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// splitmix64: a small seeded generator (the writers' choices, a lab's kill moments).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn writer(spec: &Writers, w: usize, deadline: Instant, shared: &Shared) {
    let name = format!("w{w:02}");
    let mut rng = Rng::new(spec.seed.wrapping_mul(1000).wrapping_add(w as u64));
    let mut file = spec.ledger_dir.as_ref().and_then(|dir| {
        let path = dir.join(format!("ledger-{name}.txt"));
        match File::options().create(true).append(true).open(&path) {
            Ok(f) => Some(f),
            Err(e) => {
                note_file_error(shared, format!("{}: {e}", path.display()));
                None
            }
        }
    });
    let mut log = |line: Line| {
        if let Some(f) = file.as_mut() {
            if let Err(e) = writeln!(f, "{line}") {
                note_file_error(shared, e.to_string());
            }
        }
        shared
            .lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line);
    };
    let headers = [
        ("content-type", "application/json"),
        (autonomy_operator_header(), spec.operator.as_str()),
    ];
    let mut conn = match Conn::new(&spec.base, spec.request_timeout) {
        Ok(c) => c,
        Err(e) => {
            note_file_error(shared, format!("{name}: {e}"));
            return;
        }
    };
    let mut counts = Counts::default();
    let (mut acked, mut n, mut fails) = (Vec::<String>::new(), 0u64, 0u32);
    while Instant::now() < deadline && !shared.stop.load(Ordering::SeqCst) {
        let (kind, id, path, body) = if !acked.is_empty() && rng.unit() < spec.retry_share {
            let id = acked[(rng.next_u64() % acked.len() as u64) as usize].clone();
            let body = serde_json::json!({"target": "rollout_plan", "resource": id,
                "strategy": "retry", "reason": spec.retry_reason})
            .to_string();
            (Kind::Retry, id, "/v1/rollback/execute", body)
        } else {
            n += 1;
            let id = format!("{}-{name}-{n:05}", spec.id_prefix);
            let body = (spec.create_body)(&id, w);
            (Kind::Create, id, "/v1/rollouts", body)
        };
        log(Line {
            epoch: epoch_now(),
            event: Event::Attempt,
            kind,
            id: id.clone(),
        });
        counts.attempt += 1;
        let event = match conn.send("POST", path, &headers, Some(body.as_bytes())) {
            Err(e) => {
                fails += 1;
                Event::NoAnswer {
                    error: error_name(&e),
                }
            }
            Ok(r) => {
                fails = 0;
                classify(kind, &r)
            }
        };
        let backoff = match &event {
            Event::Ack { .. } => {
                counts.ack += 1;
                if kind == Kind::Create {
                    acked.push(id.clone());
                }
                None
            }
            Event::Answer { code, .. } => {
                counts.answer += 1;
                (*code == 503).then_some(Duration::from_millis(50))
            }
            Event::NoAnswer { .. } => {
                counts.noanswer += 1;
                let ms = (5u64 << fails.min(6)).min(200);
                Some(Duration::from_millis(ms))
            }
            Event::Attempt => None,
        };
        let acked_now = matches!(event, Event::Ack { .. });
        log(Line {
            epoch: epoch_now(),
            event,
            kind,
            id,
        });
        if acked_now {
            shared.acks.fetch_add(1, Ordering::SeqCst);
        }
        if let Some(d) = backoff {
            thread::sleep(d);
        }
    }
    shared
        .counts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name, counts);
}

fn autonomy_operator_header() -> &'static str {
    "x-autonomy-operator"
}

fn note_file_error(shared: &Shared, what: String) {
    shared
        .file_errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(what);
}

/// A one-word name of a transport error (`ConnectionRefused`, `TimedOut`, `Malformed`, …).
fn error_name(e: &HttpError) -> String {
    match e {
        HttpError::Io(io) => format!("{:?}", io.kind()),
        HttpError::Url(_) => "Url".into(),
        HttpError::Malformed(_) => "Malformed".into(),
    }
}

/// Ack, or refused with the error code.
fn classify(kind: Kind, r: &Response) -> Event {
    let v = r
        .json::<serde_json::Value>()
        .ok()
        .filter(|v| v.is_object())
        .unwrap_or_default();
    match kind {
        Kind::Create if r.status == 201 => Event::Ack {
            code: r.status,
            generation: v["plan"]["metadata"]["generation"].as_u64(),
        },
        Kind::Retry if r.status == 200 && v["outcome"] == "success" => Event::Ack {
            code: r.status,
            generation: v["generation"].as_u64(),
        },
        _ => {
            let error = v["error"]["code"]
                .as_str()
                .or(v["outcome"].as_str())
                .filter(|s| !s.is_empty() && !s.contains(char::is_whitespace))
                .unwrap_or("-");
            Event::Answer {
                code: r.status,
                error: error.to_string(),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The plans a CP holds, and the check of a ledger against them
// ---------------------------------------------------------------------------------------------

/// What the check needs of one plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanState {
    pub generation: u64,
    pub phase: String,
    /// Entries in `status.history`.
    pub history: usize,
}

/// Every plan `GET /v1/rollouts?limit=1000` pages through.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub plans: BTreeMap<String, PlanState>,
    /// Ids listed more than once.
    pub duplicates: Vec<String>,
    /// Items over all pages.
    pub listed: usize,
    /// Pages fetched.
    pub pages: usize,
    /// The last page had no `next_cursor`.
    pub complete: bool,
    /// HTTP status of the last page (0: no answer).
    pub last_code: u16,
}

/// Pages through `GET {base}/v1/rollouts?limit=1000` (at most `max_pages`), handing every
/// answer to `on_page(page_number_from_1, answer)` (e.g. to keep it as evidence). Stops at
/// the first page that is not a 200 with a readable list.
pub fn list_plans(
    base: &str,
    max_pages: usize,
    timeout: Duration,
    mut on_page: impl FnMut(usize, &Response),
) -> Listing {
    let mut out = Listing::default();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut cursor: Option<String> = None;
    for page in 1..=max_pages {
        let url = match &cursor {
            Some(c) => format!("{base}/v1/rollouts?limit=1000&cursor={}", url_encode(c)),
            None => format!("{base}/v1/rollouts?limit=1000"),
        };
        out.pages = page;
        let r = match http::call("GET", &url, &[], None, timeout) {
            Ok(r) => r,
            Err(_) => {
                out.last_code = 0;
                break;
            }
        };
        out.last_code = r.status;
        on_page(page, &r);
        let Some(v) = r
            .json::<serde_json::Value>()
            .ok()
            .filter(|_| r.status == 200)
        else {
            break;
        };
        let Some(items) = v["items"].as_array() else {
            break;
        };
        for item in items {
            let Some(id) = item["plan"]["metadata"]["id"].as_str() else {
                continue;
            };
            out.listed += 1;
            *seen.entry(id.to_string()).or_default() += 1;
            out.plans.insert(
                id.to_string(),
                PlanState {
                    generation: item["plan"]["metadata"]["generation"].as_u64().unwrap_or(0),
                    phase: item["status"]["phase"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    history: item["status"]["history"].as_array().map_or(0, Vec::len),
                },
            );
        }
        match v["next_cursor"].as_str() {
            Some(c) if !c.is_empty() => cursor = Some(c.to_string()),
            _ => {
                out.complete = true;
                break;
            }
        }
    }
    out.duplicates = seen
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(id, _)| id)
        .collect();
    out
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every line of a set of writers.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    pub lines: Vec<Line>,
}

/// The ledger against the plans present.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// Acknowledged creates absent.
    pub lost_creates: Vec<String>,
    /// Acknowledged retries (`id@generation`) not reflected: plan absent, lower generation,
    /// not active, or no generation in the acknowledgement.
    pub lost_retries: Vec<String>,
    /// Plans present that no writer attempted.
    pub unattempted: Vec<String>,
    /// Plans whose generation - 1 exceeds the retries attempted on them.
    pub over_applied: Vec<String>,
    /// Plans whose history length differs from their generation.
    pub history_mismatch: Vec<String>,
    /// Plans not `published` (generation 1) or `active` (retried).
    pub phase_unexpected: Vec<String>,
    /// Creates that got no acknowledgement but are present (allowed: unknown outcome).
    pub unacknowledged_creates_present: Vec<String>,
    /// Answers other than acknowledgements and 503s (ledger lines).
    pub unexpected_answers: Vec<String>,
}

impl Verdict {
    /// Nothing acknowledged was lost and nothing unattempted or over-applied appeared.
    pub fn durable(&self) -> bool {
        self.lost_creates.is_empty()
            && self.lost_retries.is_empty()
            && self.unattempted.is_empty()
            && self.over_applied.is_empty()
            && self.history_mismatch.is_empty()
            && self.phase_unexpected.is_empty()
    }
}

impl Ledger {
    /// Reads every `ledger-w*.txt` in `dir` (sorted); returns the ledger, the files read and
    /// the malformed lines.
    pub fn read_dir(dir: &Path) -> std::io::Result<(Ledger, usize, usize)> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("ledger-w") && n.ends_with(".txt"))
            })
            .collect();
        files.sort();
        let (mut lines, mut malformed) = (Vec::new(), 0);
        for f in &files {
            for l in std::fs::read_to_string(f)?.lines() {
                match l.parse::<Line>() {
                    Ok(line) => lines.push(line),
                    Err(_) => malformed += 1,
                }
            }
        }
        Ok((Ledger { lines }, files.len(), malformed))
    }

    /// Ids a create was attempted for.
    pub fn attempted_creates(&self) -> BTreeSet<String> {
        self.ids(|l| l.kind == Kind::Create && l.event == Event::Attempt)
    }

    /// Retries attempted, per id.
    pub fn attempted_retries(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for l in &self.lines {
            if l.kind == Kind::Retry && l.event == Event::Attempt {
                *out.entry(l.id.clone()).or_default() += 1;
            }
        }
        out
    }

    /// Ids whose create was acknowledged.
    pub fn acked_creates(&self) -> BTreeSet<String> {
        self.ids(|l| l.kind == Kind::Create && matches!(l.event, Event::Ack { .. }))
    }

    /// Every acknowledged retry: (id, generation answered).
    pub fn acked_retries(&self) -> Vec<(String, Option<u64>)> {
        self.lines
            .iter()
            .filter_map(|l| match l.event {
                Event::Ack { generation, .. } if l.kind == Kind::Retry => {
                    Some((l.id.clone(), generation))
                }
                _ => None,
            })
            .collect()
    }

    /// Epochs of every acknowledgement.
    pub fn ack_times(&self) -> Vec<f64> {
        self.lines
            .iter()
            .filter(|l| matches!(l.event, Event::Ack { .. }))
            .map(|l| l.epoch)
            .collect()
    }

    /// Lines that are HTTP answers other than acknowledgements (refusals).
    pub fn refused(&self) -> Vec<&Line> {
        self.lines
            .iter()
            .filter(|l| matches!(l.event, Event::Answer { .. }))
            .collect()
    }

    fn ids(&self, keep: impl Fn(&Line) -> bool) -> BTreeSet<String> {
        self.lines
            .iter()
            .filter(|l| keep(l))
            .map(|l| l.id.clone())
            .collect()
    }

    /// The ledger against `plans` (only plans whose id starts with `prefix` count as this
    /// load's).
    pub fn verify(&self, plans: &BTreeMap<String, PlanState>, prefix: &str) -> Verdict {
        let plans: BTreeMap<&String, &PlanState> = plans
            .iter()
            .filter(|(id, _)| id.starts_with(prefix))
            .collect();
        let attempted = self.attempted_creates();
        let acked = self.acked_creates();
        let retries = self.attempted_retries();
        let mut v = Verdict {
            lost_creates: acked
                .iter()
                .filter(|id| !plans.contains_key(id))
                .cloned()
                .collect(),
            ..Verdict::default()
        };
        for (id, g) in self.acked_retries() {
            let ok = match (g, plans.get(&id)) {
                (Some(g), Some(p)) => p.generation >= g && p.phase == "active",
                _ => false,
            };
            if !ok {
                let g = g.map_or("None".to_string(), |g| g.to_string());
                v.lost_retries.push(format!("{id}@{g}"));
            }
        }
        v.lost_retries.sort();
        for (id, p) in &plans {
            if !attempted.contains(*id) {
                v.unattempted.push(id.to_string());
            }
            if p.generation.saturating_sub(1) > retries.get(*id).copied().unwrap_or(0) {
                v.over_applied.push(id.to_string());
            }
            if p.history as u64 != p.generation {
                v.history_mismatch.push(id.to_string());
            }
            let want = if p.generation == 1 {
                "published"
            } else {
                "active"
            };
            if p.phase != want {
                v.phase_unexpected.push(id.to_string());
            }
        }
        v.unacknowledged_creates_present = attempted
            .difference(&acked)
            .filter(|id| plans.contains_key(id))
            .cloned()
            .collect();
        v.unexpected_answers = self
            .lines
            .iter()
            .filter(|l| matches!(l.event, Event::Answer { code, .. } if code != 503))
            .map(|l| l.to_string())
            .collect();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &str) -> Line {
        s.parse().unwrap()
    }

    #[test]
    fn lines_round_trip() {
        for s in [
            "1.500000 attempt create a-w01-00001",
            "1.500000 ack create a-w01-00001 201 1",
            "1.500000 ack retry a-w01-00001 200 -",
            "1.500000 answer retry a-w01-00001 503 unavailable",
            "1.500000 noanswer create a-w01-00002 ConnectionRefused",
        ] {
            assert_eq!(line(s).to_string(), s);
        }
        for bad in [
            "",
            "1.0 attempt create",
            "x attempt create a",
            "1.0 ack create a",
            "1.0 nope create a",
            "1.0 attempt upsert a",
        ] {
            assert!(bad.parse::<Line>().is_err(), "{bad}");
        }
    }

    fn plan(generation: u64, phase: &str, history: usize) -> PlanState {
        PlanState {
            generation,
            phase: phase.into(),
            history,
        }
    }

    #[test]
    fn verify_finds_every_class() {
        let ledger = Ledger {
            lines: [
                "1 attempt create p-a",
                "1 ack create p-a 201 1",
                "1 attempt create p-b",
                "1 ack create p-b 201 1",
                "1 attempt retry p-b",
                "1 ack retry p-b 200 2",
                "1 attempt create p-c",
                "1 noanswer create p-c ConnectionReset",
                "1 attempt create p-lost",
                "1 ack create p-lost 201 1",
                "1 attempt retry p-a",
                "1 answer retry p-a 500 internal",
                "1 attempt retry p-a",
                "1 answer retry p-a 503 unavailable",
            ]
            .iter()
            .map(|s| line(s))
            .collect(),
        };
        let mut plans = BTreeMap::new();
        plans.insert("p-a".to_string(), plan(1, "published", 1));
        plans.insert("p-b".to_string(), plan(2, "published", 1));
        plans.insert("p-c".to_string(), plan(1, "published", 1));
        plans.insert("p-ghost".to_string(), plan(3, "active", 3));
        plans.insert("other".to_string(), plan(1, "draft", 0));
        let v = ledger.verify(&plans, "p-");
        assert_eq!(v.lost_creates, ["p-lost"]);
        assert_eq!(v.lost_retries, ["p-b@2"]);
        assert_eq!(v.unattempted, ["p-ghost"]);
        assert_eq!(v.over_applied, ["p-ghost"]);
        assert_eq!(v.history_mismatch, ["p-b"]);
        assert_eq!(v.phase_unexpected, ["p-b"]);
        assert_eq!(v.unacknowledged_creates_present, ["p-c"]);
        assert_eq!(
            v.unexpected_answers,
            ["1.000000 answer retry p-a 500 internal"]
        );
        assert!(!v.durable());
        assert_eq!(ledger.refused().len(), 2);
    }

    #[test]
    fn the_generator_is_seeded() {
        let (mut a, mut b, mut c) = (Rng(7), Rng(7), Rng(8));
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        assert_eq!(xs, (0..4).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert_ne!(xs, (0..4).map(|_| c.next_u64()).collect::<Vec<_>>());
        assert!((0..1000).all(|_| (0.0..1.0).contains(&a.unit())));
    }
}

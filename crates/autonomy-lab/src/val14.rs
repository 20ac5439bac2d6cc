//! VAL14 — the seed's "Gate D" (issue 12, SPEC §7): PostgreSQL and three CP replicas, one
//! fenced leader, failover by killing, freezing and cutting off real processes.
//!
//! The lab starts its own PostgreSQL cluster (`scripts/ci/postgres.sh start`, port 18984, also
//! listening on the host end of a veth pair), three replicas `r1` and `r2` on 127.0.0.1:18981
//! and :18982 and `r3` inside a network namespace of its own on 10.214.0.2:18983 (reached
//! from the host through the veth, and through `ip netns exec` while the link is cut). Checks
//! (evidence under `$EVIDENCE_DIR/val14/`):
//!
//! 1. creates spread round-robin over the replicas all 201; the chain read from every replica
//!    has gap-free seq and the same head;
//! 2. SIGKILL of the leader: another replica leads under a higher epoch within 10 s;
//! 3. SIGSTOP of the new leader for 15 s: another takes over; after SIGCONT the frozen one says
//!    `self=false`; over the whole lab the promoter's audit events carry epochs that never
//!    decrease in seq order;
//! 4. `pg_terminate_backend` of the leader's lock session: a leader again, higher epoch;
//! 5. PostgreSQL stopped with `-m immediate`: writes answer 503 + Retry-After (never 500, never
//!    a hang), and after it starts again every replica is ready and creates, with no restart;
//! 6. a simulated fleet (1,000 devices by default) through a 4-stage plan while the leader is
//!    disturbed every 10 s and at each new stage (SIGKILL + restart, SIGSTOP 5 s + SIGCONT) completes, with one
//!    `rollout.stage_started` per stage;
//! 7. a network partition: `r3`, made the leader, is cut off from PostgreSQL mid-rollout; it
//!    stops leading, answers 503 to writes, another replica takes over, and after the link
//!    returns it rejoins as a ready follower; the rollout completes;
//! 8. `audit verify` is clean on every replica's mirror, each at the database's last seq.
//!
//! Needs root (network namespace, veth, `runuser` for PostgreSQL).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use autonomy_testkit::cp::{Cp, CpOptions};
use autonomy_testkit::http;
use autonomy_testkit::process::{self, Signal};
use serde_json::{json, Value};

use crate::kvs;
use crate::lab::{utc_now, Lab};
use crate::report::CheckFile;

/// The replicas' ports (r1, r2 on 127.0.0.1; r3 on the namespace's address).
pub const PORTS: [u16; 3] = [18981, 18982, 18983];
/// The lab's own PostgreSQL cluster.
pub const PG_PORT: u16 = 18984;
pub const DEVICES: u32 = 1000;
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const NS: &str = "val14ns";
const VETH_HOST: &str = "val14h";
const VETH_NS: &str = "val14n";
const HOST_ADDR: &str = "10.214.0.1";
const NS_ADDR: &str = "10.214.0.2";
const NET: &str = "10.214.0.0/24";
const DB: &str = "val14";
const OPERATOR: &str = "val14-gate-d-op";
/// The operator's queries the lab runs with psql (kept out of Rust: SQL lives in the stores).
const LEADER_SESSION_SQL: &str = include_str!("../sql/val14-leader-session.sql");
const TERMINATE_SQL: &str = include_str!("../sql/val14-terminate.sql");
/// SPEC §7: a new leader within 10 s of a death, a freeze or a lost connection.
const FAILOVER_LIMIT: Duration = Duration::from_secs(10);
/// Looked for a little longer than the limit, so a slow failover is measured, not cut off.
const WATCH_LIMIT: Duration = Duration::from_secs(20);
/// Client timeout of every request.
const HTTP_LIMIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);
const FREEZE: Duration = Duration::from_secs(15);
const DISTURB_EVERY: Duration = Duration::from_secs(10);
const DISTURB_FREEZE: Duration = Duration::from_secs(5);
const PARTITION_DEVICES: u32 = 100;

const CHECKS: [(&str, &str); 8] = [
    ("VAL14-01", "three replicas over one database: creates spread over them all 201; one gap-free chain"),
    ("VAL14-02", "SIGKILL of the leader: another replica leads under a higher epoch within 10 s"),
    ("VAL14-03", "SIGSTOP of the leader for 15 s: another takes over; the frozen one wakes as a follower; promoter epochs never decrease in seq order"),
    ("VAL14-04", "pg_terminate_backend of the leader's lock session: a leader again under a higher epoch"),
    ("VAL14-05", "PostgreSQL stopped (-m immediate): writes 503 + Retry-After, no hang; every replica recovers without a restart"),
    ("VAL14-06", "a simulated fleet rollout over 4 stages completes with the leader disturbed every 10 s; no stage started twice"),
    ("VAL14-07", "a network partition: the cut-off leader stops leading and answers 503, another takes over, it rejoins as a follower"),
    ("VAL14-08", "audit verify is clean on every replica's mirror, all at the chain's last seq"),
];

fn write(p: &Path, s: &str) {
    let _ = std::fs::write(p, s);
}

fn append(p: &Path, s: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::File::options().create(true).append(true).open(p) {
        let _ = f.write_all(s.as_bytes());
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` → µs since the epoch.
fn parse_time_us(t: &str) -> Option<i64> {
    let t = t.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut h = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (h.next()??, h.next()??, h.next()??);
    let frac: String = frac.chars().chain(std::iter::repeat('0')).take(6).collect();
    let micros: i64 = frac.parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000) + micros)
}

/// A command run to its end (bounded); (exit code, stdout, stderr).
fn run_cmd(program: &str, args: &[&str], limit: Duration) -> (i32, String, String) {
    let mut cmd = Command::new(program);
    cmd.args(args);
    match process::run_bounded(cmd, None, limit) {
        Ok(f) => (
            if f.timed_out {
                124
            } else {
                process::shell_code(f.output.status)
            },
            String::from_utf8_lossy(&f.output.stdout).into_owned(),
            String::from_utf8_lossy(&f.output.stderr).into_owned(),
        ),
        Err(e) => (127, String::new(), format!("cannot run {program}: {e}")),
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// The lab's network namespace and veth pair; removed when dropped.
struct Netns {
    up: bool,
}

impl Netns {
    fn remove() {
        let limit = Duration::from_secs(10);
        let _ = run_cmd("ip", &["link", "del", VETH_HOST], limit);
        let _ = run_cmd("ip", &["netns", "del", NS], limit);
    }

    /// Makes the namespace with `NS_ADDR`, and the host end with `HOST_ADDR`.
    fn create(log: &Path) -> Result<Netns, String> {
        Netns::remove();
        let steps: [&[&str]; 8] = [
            &["netns", "add", NS],
            &[
                "link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_NS,
            ],
            &["link", "set", VETH_NS, "netns", NS],
            &["addr", "add", &format!("{HOST_ADDR}/24"), "dev", VETH_HOST],
            &["link", "set", VETH_HOST, "up"],
            &[
                "netns",
                "exec",
                NS,
                "ip",
                "addr",
                "add",
                &format!("{NS_ADDR}/24"),
                "dev",
                VETH_NS,
            ],
            &["netns", "exec", NS, "ip", "link", "set", VETH_NS, "up"],
            &["netns", "exec", NS, "ip", "link", "set", "lo", "up"],
        ];
        let ns = Netns { up: true };
        for s in steps {
            let (rc, _, err) = run_cmd("ip", s, Duration::from_secs(10));
            append(log, &format!("ip {} -> {rc} {}\n", s.join(" "), err.trim()));
            if rc != 0 {
                return Err(format!("ip {} failed ({rc}): {}", s.join(" "), err.trim()));
            }
        }
        Ok(ns)
    }

    /// The host end down (the partition) or up again.
    fn set_link(&mut self, up: bool, log: &Path) -> bool {
        let state = if up { "up" } else { "down" };
        let (rc, _, err) = run_cmd(
            "ip",
            &["link", "set", VETH_HOST, state],
            Duration::from_secs(10),
        );
        append(
            log,
            &format!(
                "{} ip link set {VETH_HOST} {state} -> {rc} {}\n",
                utc_now(),
                err.trim()
            ),
        );
        if rc == 0 {
            self.up = up;
        }
        rc == 0
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        Netns::remove();
    }
}

/// The lab's PostgreSQL cluster; stopped and removed when dropped.
struct Pg {
    script: PathBuf,
    dir: PathBuf,
    evidence_log: PathBuf,
}

impl Pg {
    fn as_postgres(args: &[&str], limit: Duration) -> (i32, String, String) {
        let mut all = vec!["-u", "postgres", "--"];
        all.extend_from_slice(args);
        run_cmd("runuser", &all, limit)
    }

    fn start(script: &Path, dir: &Path, evidence_log: &Path) -> Result<Pg, String> {
        let pg = Pg {
            script: script.to_path_buf(),
            dir: dir.to_path_buf(),
            evidence_log: evidence_log.to_path_buf(),
        };
        // A cluster an interrupted run left in the dir is stopped and removed first.
        let _ = run_cmd(
            "bash",
            &[
                &script.display().to_string(),
                "stop",
                &dir.display().to_string(),
            ],
            Duration::from_secs(60),
        );
        let port = PG_PORT.to_string();
        let (rc, out, err) = run_cmd(
            "bash",
            &[
                &script.display().to_string(),
                "start",
                &dir.display().to_string(),
                &port,
            ],
            Duration::from_secs(300),
        );
        append(
            evidence_log,
            &format!("postgres.sh start -> {rc}: {}{}\n", out.trim(), err.trim()),
        );
        if rc != 0 {
            return Err(format!(
                "scripts/ci/postgres.sh start failed ({rc}): {}",
                err.trim()
            ));
        }
        // Also on the host end of the veth, for the namespaced replica.
        let conf = dir.join("data/postgresql.conf");
        append(
            &conf,
            &format!("listen_addresses = '127.0.0.1,{HOST_ADDR}'\n"),
        );
        append(
            &dir.join("data/pg_hba.conf"),
            &format!("host all all {NET} trust\n"),
        );
        let data = dir.join("data").display().to_string();
        let log = dir.join("server.log").display().to_string();
        let (rc, _, err) = Pg::as_postgres(
            &[
                &format!("{PG_BIN}/pg_ctl"),
                "-D",
                &data,
                "-l",
                &log,
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "restart",
            ],
            Duration::from_secs(90),
        );
        append(
            evidence_log,
            &format!(
                "pg_ctl restart (listen on {HOST_ADDR} too) -> {rc} {}\n",
                err.trim()
            ),
        );
        if rc != 0 {
            return Err(format!("pg_ctl restart failed ({rc}): {}", err.trim()));
        }
        let (rc, _, err) = pg.psql("postgres", &format!("CREATE DATABASE {DB}"));
        if rc != 0 {
            return Err(format!("CREATE DATABASE {DB} failed: {}", err.trim()));
        }
        Ok(pg)
    }

    fn url(host: &str, db: &str) -> String {
        format!("postgres://postgres@{host}:{PG_PORT}/{db}")
    }

    /// `psql -qtA -F '|' -c SQL` as the superuser; (code, stdout, stderr).
    fn psql(&self, db: &str, sql: &str) -> (i32, String, String) {
        let psql = if Path::new(&format!("{PG_BIN}/psql")).exists() {
            format!("{PG_BIN}/psql")
        } else {
            "psql".into()
        };
        run_cmd(
            &psql,
            &[
                &Pg::url("127.0.0.1", db),
                "-X",
                "-qtA",
                "-F",
                "|",
                "-c",
                sql,
            ],
            Duration::from_secs(30),
        )
    }

    fn pg_ctl(&self, args: &[&str]) -> (i32, String) {
        let data = self.dir.join("data").display().to_string();
        let log = self.dir.join("server.log").display().to_string();
        let mut all = vec![
            format!("{PG_BIN}/pg_ctl"),
            "-D".into(),
            data,
            "-l".into(),
            log,
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let (rc, out, err) = Pg::as_postgres(&refs, Duration::from_secs(90));
        (rc, format!("{}{}", out.trim(), err.trim()))
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = std::fs::copy(
            self.dir.join("server.log"),
            self.evidence_log
                .with_file_name("val14-postgres-server.log"),
        );
        let _ = run_cmd(
            "bash",
            &[
                &self.script.display().to_string(),
                "stop",
                &self.dir.display().to_string(),
            ],
            Duration::from_secs(60),
        );
        // An immediate stop that failed to start again leaves a pid file behind: remove all.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One HTTP answer.
#[derive(Debug, Default, Clone)]
struct Ans {
    code: u16,
    json: Value,
    retry_after: Option<String>,
    ms: u128,
    /// Why there was no answer.
    error: String,
}

impl Ans {
    fn line(&self) -> String {
        if self.code == 0 {
            format!("no answer after {} ms: {}", self.ms, self.error)
        } else {
            format!(
                "{} after {} ms retry_after={}",
                self.code,
                self.ms,
                self.retry_after.as_deref().unwrap_or("-")
            )
        }
    }
}

/// One replica: its own data and audit dirs, port and log; `r3` runs in the namespace.
struct Replica {
    name: String,
    host: String,
    port: u16,
    netns: bool,
    options: CpOptions,
    cp: Option<Cp>,
    stopped: bool,
    starts: u32,
}

impl Replica {
    fn new(lab: &Lab, i: usize, db_url: &str, bin: &Path) -> Replica {
        let name = format!("r{}", i + 1);
        let netns = i == 2;
        let host = if netns { NS_ADDR } else { "127.0.0.1" }.to_string();
        let data = lab.work.join(format!("{name}-data"));
        let audit = lab.work.join(format!("{name}-audit"));
        let mut args = vec![
            "--replica".to_string(),
            name.clone(),
            "--promoter-interval".into(),
            "0.2".into(),
        ];
        if netns {
            args.extend(["--allowed-host".into(), NS_ADDR.into()]);
        }
        let options = CpOptions {
            bin: bin.to_path_buf(),
            data_dir: data,
            listen: format!("{host}:{}", PORTS[i]),
            audit_dir: Some(audit),
            args,
            env: vec![("AUTONOMY_OPERATOR".into(), OPERATOR.into())],
            log: lab.dir.join(format!("val14-{name}.log")),
            stdout_to_log: true,
            start_limit: Duration::from_secs(30),
            stop_limit: Duration::from_secs(10),
            ready_path: "/v1/health".into(),
            poll: Duration::from_millis(100),
            database_url: Some(db_url.to_string()),
            wait_leader: false,
        };
        Replica {
            name,
            host,
            port: PORTS[i],
            netns,
            options,
            cp: None,
            stopped: false,
            starts: 0,
        }
    }

    fn base(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    fn start(&mut self) -> Result<u128, String> {
        self.cp = None;
        self.stopped = false;
        if !self.netns && http::port_in_use(self.port) {
            return Err(format!(
                "port 127.0.0.1:{} is already in use by another process; no CP was started",
                self.port
            ));
        }
        match Cp::start(self.options.clone()) {
            Ok(cp) => {
                self.starts += 1;
                let ms = cp.ready_after().map_or(0, |d| d.as_millis());
                self.cp = Some(cp);
                Ok(ms)
            }
            Err(e) => Err(format!("{} did not start: {}", self.name, e.why)),
        }
    }

    fn pid(&self) -> Option<u32> {
        self.cp.as_ref().and_then(Cp::pid)
    }

    fn running(&mut self) -> bool {
        self.cp.as_mut().is_some_and(Cp::is_running)
    }

    /// Running and not frozen.
    fn serving(&mut self) -> bool {
        !self.stopped && self.running()
    }

    fn kill9(&mut self) -> bool {
        match self.cp.as_mut().map(Cp::kill) {
            Some(Ok(Some(_))) => {
                self.cp = None;
                true
            }
            _ => false,
        }
    }

    fn terminate(&mut self) -> bool {
        match self.cp.take() {
            Some(mut cp) => cp.terminate(Duration::from_secs(15)).is_ok(),
            None => false,
        }
    }

    fn signal(&mut self, sig: Signal) -> bool {
        let ok = self.cp.as_ref().is_some_and(|cp| cp.signal(sig).is_ok());
        if ok {
            self.stopped = matches!(sig, Signal::Stop);
        }
        ok
    }

    /// One request with the lab's operator; the namespaced replica is asked from inside its
    /// namespace (so it is reachable while its link is cut).
    fn call(&self, method: &str, path: &str, body: Option<&str>, limit: Duration) -> Ans {
        let url = format!("{}{path}", self.base());
        let t0 = Instant::now();
        if self.netns {
            return ns_curl(method, &url, body, limit, t0);
        }
        let mut headers = vec![("X-Autonomy-Operator", OPERATOR)];
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        match http::call(method, &url, &headers, body.map(str::as_bytes), limit) {
            Ok(r) => Ans {
                code: r.status,
                json: r.json().unwrap_or_default(),
                retry_after: r.header("retry-after").map(str::to_string),
                ms: t0.elapsed().as_millis(),
                error: String::new(),
            },
            Err(e) => Ans {
                ms: t0.elapsed().as_millis(),
                error: e.to_string(),
                ..Ans::default()
            },
        }
    }

    fn leader(&self) -> Option<Value> {
        let a = self.call("GET", "/v1/leader", None, Duration::from_secs(3));
        (a.code == 200).then_some(a.json)
    }
}

/// `curl` run inside the namespace.
fn ns_curl(method: &str, url: &str, body: Option<&str>, limit: Duration, t0: Instant) -> Ans {
    let secs = format!("{:.1}", limit.as_secs_f64());
    let op = format!("X-Autonomy-Operator: {OPERATOR}");
    let mut args = vec![
        "netns",
        "exec",
        NS,
        "curl",
        "-sS",
        "-m",
        &secs,
        "-X",
        method,
        "-H",
        &op,
        "-D",
        "-",
        "-o",
        "/dev/stdout",
    ];
    if let Some(b) = body {
        args.extend(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    args.push(url);
    let (rc, out, err) = run_cmd("ip", &args, limit + Duration::from_secs(5));
    let ms = t0.elapsed().as_millis();
    if rc != 0 {
        return Ans {
            ms,
            error: format!("curl exit {rc}: {}", err.trim()),
            ..Ans::default()
        };
    }
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let code = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let retry_after = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("retry-after")
            .then(|| v.trim().to_string())
    });
    Ans {
        code,
        json: serde_json::from_str(body).unwrap_or_default(),
        retry_after,
        ms,
        error: String::new(),
    }
}

/// The replicas, the timeline, the evidence dir.
struct Gate {
    rs: Vec<Replica>,
    dir: PathBuf,
    timeline: PathBuf,
    t0: Instant,
    n: u64,
}

impl Gate {
    fn note(&self, s: &str) {
        append(
            &self.timeline,
            &format!(
                "{:>7.1}s {} {s}\n",
                self.t0.elapsed().as_secs_f64(),
                &utc_now()[11..23]
            ),
        );
    }

    fn plan(&mut self, prefix: &str) -> String {
        self.n += 1;
        let id = format!("{prefix}-{}", self.n);
        json!({
            "metadata": {"id": id, "labels": {"lab": "val14"}},
            "spec": {"artifact_ref": format!("oci://registry.example/val14/app@sha256:{}", "b".repeat(64)),
                     "targets": {}}
        })
        .to_string()
    }

    /// Who leads, asked of every serving replica: (index, epoch), if one says `self=true`.
    fn find_leader(&mut self) -> Option<(usize, u64)> {
        for i in 0..self.rs.len() {
            if !self.rs[i].serving() {
                continue;
            }
            if let Some(l) = self.rs[i].leader() {
                if l["self"] == true {
                    return Some((i, l["epoch"].as_u64().unwrap_or(0)));
                }
            }
        }
        None
    }

    /// Polls the serving replicas but `skip` until one leads under an epoch above `above`;
    /// (index, epoch, time taken).
    fn wait_leader(
        &mut self,
        skip: Option<usize>,
        above: u64,
        limit: Duration,
    ) -> Option<(usize, u64, Duration)> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            for i in 0..self.rs.len() {
                if Some(i) == skip || !self.rs[i].serving() {
                    continue;
                }
                if let Some(l) = self.rs[i].leader() {
                    let epoch = l["epoch"].as_u64().unwrap_or(0);
                    if l["self"] == true && epoch > above {
                        return Some((i, epoch, t0.elapsed()));
                    }
                }
            }
            std::thread::sleep(POLL);
        }
        None
    }

    /// A GET answered by the first serving replica that answers 200.
    fn get_any(&mut self, path: &str) -> Option<Value> {
        for i in 0..self.rs.len() {
            if !self.rs[i].serving() {
                continue;
            }
            let a = self.rs[i].call("GET", path, None, HTTP_LIMIT);
            if a.code == 200 {
                return Some(a.json);
            }
        }
        None
    }

    fn restart(&mut self, i: usize) -> bool {
        let r = self.rs[i].start();
        let name = self.rs[i].name.clone();
        match &r {
            Ok(ms) => self.note(&format!(
                "{name} restarted (pid {:?}, ready after {ms} ms)",
                self.rs[i].pid()
            )),
            Err(e) => self.note(&format!("{name} restart FAILED: {e}")),
        }
        r.is_ok()
    }

    /// The whole chain in seq order, page by page, from any serving replica.
    fn all_events(&mut self) -> Option<Vec<Value>> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/audit/events?limit=10000&cursor={c}"),
                None => "/v1/audit/events?limit=10000".to_string(),
            };
            let v = self.get_any(&path)?;
            all.extend(v["items"].as_array()?.iter().cloned());
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return Some(all),
            }
        }
    }

    /// `leader.acquired` with this epoch: its time (µs) and replica.
    fn acquired_event(&mut self, epoch: u64) -> Option<(i64, String)> {
        let v = self.get_any("/v1/audit/events?event_type=leader.acquired&limit=1000")?;
        v["items"].as_array()?.iter().find_map(|e| {
            (e["details"]["epoch"].as_u64() == Some(epoch)).then(|| {
                (
                    parse_time_us(e["time"].as_str().unwrap_or_default()).unwrap_or(0),
                    e["details"]["replica"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
        })
    }
}

pub struct Options {
    pub devices: u32,
    pub pg_script: PathBuf,
    pub pg_dir: PathBuf,
}

pub fn run(lab: &mut Lab, opts: &Options) -> anyhow::Result<bool> {
    let d = lab.dir.clone();
    let setup_log = d.join("val14-setup.txt");
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root (a network namespace and veth pair, runuser for PostgreSQL): run the lab as root, as CI does".to_string());
    }
    for tool in [format!("{PG_BIN}/pg_ctl"), "/usr/bin/curl".into()] {
        if !Path::new(&tool).exists()
            && run_cmd(
                "sh",
                &[
                    "-c",
                    &format!("command -v {}", tool.rsplit('/').next().unwrap_or(&tool)),
                ],
                Duration::from_secs(5),
            )
            .0 != 0
        {
            missing.push(format!("{tool} (PostgreSQL 15 server binaries and curl)"));
        }
    }
    if !opts.pg_script.is_file() {
        missing.push(format!(
            "{} (scripts/ci/postgres.sh)",
            opts.pg_script.display()
        ));
    }
    if !missing.is_empty() {
        let why = format!("VAL14 needs {}", missing.join("; "));
        lab.say(&why);
        write(&setup_log, &format!("{why}\n"));
        for (id, name) in CHECKS {
            lab.not_run(id, name, &why);
        }
        return finish(lab, opts, "none", "not run");
    }

    // The namespace first (PostgreSQL listens on its host end), then the cluster.
    let mut netns = match Netns::create(&setup_log) {
        Ok(n) => n,
        Err(e) => {
            return abort(
                lab,
                opts,
                &format!("cannot make the network namespace: {e}"),
            )
        }
    };
    let pg = match Pg::start(&opts.pg_script, &opts.pg_dir, &setup_log) {
        Ok(p) => p,
        Err(e) => return abort(lab, opts, &format!("cannot start PostgreSQL: {e}")),
    };
    let (_, version, _) = pg.psql(DB, "SHOW server_version");
    let version = version.trim().to_string();
    // The namespaced replica runs through a wrapper: `ip netns exec` execs, so the pid is the
    // CP's own (signals reach it).
    let wrapper = lab.work.join("autonomy-in-netns.sh");
    write(
        &wrapper,
        &format!(
            "#!/bin/sh\nexec ip netns exec {NS} {} \"$@\"\n",
            lab.bin.display()
        ),
    );
    let _ = run_cmd(
        "chmod",
        &["755", &wrapper.display().to_string()],
        Duration::from_secs(5),
    );
    let mut rs = Vec::new();
    for i in 0..3 {
        let (url, bin) = if i == 2 {
            (Pg::url(HOST_ADDR, DB), wrapper.clone())
        } else {
            (Pg::url("127.0.0.1", DB), lab.bin.clone())
        };
        rs.push(Replica::new(lab, i, &url, &bin));
    }
    let timeline = d.join("val14-timeline.txt");
    write(
        &timeline,
        "# VAL14 timeline (seconds since the replicas started, UTC time)\n",
    );
    let mut g = Gate {
        rs,
        dir: d.clone(),
        timeline,
        t0: Instant::now(),
        n: 0,
    };
    let mut started = Vec::new();
    for i in 0..3 {
        match g.rs[i].start() {
            Ok(ms) => {
                g.note(&format!(
                    "{} started on {} (pid {:?}, ready after {ms} ms)",
                    g.rs[i].name,
                    g.rs[i].base(),
                    g.rs[i].pid()
                ));
                started.push(format!("{}:ok", g.rs[i].name));
            }
            Err(e) => {
                g.note(&e);
                started.push(format!("{}:{e}", g.rs[i].name));
            }
        }
    }
    if !g.rs.iter_mut().all(Replica::running) {
        drop(g);
        return abort(
            lab,
            opts,
            &format!("the replicas did not all start: {}", started.join("; ")),
        );
    }

    let mut epochs_ok = true; // filled in by check 3's end-of-lab part
    let mut frozen: Vec<(String, String)> = Vec::new();
    check01(lab, &mut g);
    check02(lab, &mut g);
    frozen.extend(check03_freeze(&mut g));
    check04(lab, &mut g, &pg);
    check05(lab, &mut g, &pg);
    let devices_done = check06(lab, &mut g, opts.devices);
    check07(lab, &mut g, &mut netns);
    // VAL14-03's second half: every promoter write of the whole lab, in seq order.
    let (promoter_kv, ok) = promoter_epochs(&mut g);
    epochs_ok &= ok;
    frozen.extend(promoter_kv);
    let freeze_ok = frozen
        .iter()
        .any(|(k, v)| k == "freeze_pass" && v == "true");
    frozen.push(("pass".into(), (freeze_ok && epochs_ok).to_string()));
    lab.report.check(
        CHECKS[2].0,
        CHECKS[2].1,
        CheckFile::Write(d.join("val14-freeze-check.txt")),
        "val14-freeze-check.txt val14-promoter-events.txt val14-timeline.txt",
        frozen,
    );
    check08(lab, &mut g);
    drop(g);
    drop(pg);
    drop(netns);
    finish(lab, opts, &version, &devices_done)
}

fn abort(lab: &mut Lab, opts: &Options, why: &str) -> anyhow::Result<bool> {
    lab.say(why);
    append(&lab.dir.join("val14-setup.txt"), &format!("{why}\n"));
    for (id, name) in CHECKS {
        lab.not_run(id, name, why);
    }
    finish(lab, opts, "none", "not run")
}

fn finish(lab: &mut Lab, opts: &Options, store: &str, fleet: &str) -> anyhow::Result<bool> {
    lab.report.notes.push(
        "each replica has its own --data-dir and --audit-dir; r3 runs in the network namespace \
         val14ns (10.214.0.2, PostgreSQL reached on 10.214.0.1 over the veth val14h/val14n)"
            .into(),
    );
    let finished = utc_now();
    let env = kvs![
        "environment" => "local-PostgreSQL-3-replicas",
        "ports" => "18981 18982 18983",
        "postgres_port" => PG_PORT,
        "postgres" => store,
        "operator" => OPERATOR,
        "rbac_enforcement" => 0,
        "devices" => opts.devices,
        "fleet_rollout" => fleet,
        "autonomy_bin" => lab.bin.display(),
        "evidence_dir" => lab.dir.display(),
    ];
    let (p, t, result) = lab.report.write(
        lab.name,
        "VAL14 — Gate D: PostgreSQL, three replicas, a fenced leader under kills, freezes and a partition",
        &lab.dir,
        &lab.started_at,
        &finished,
        &env,
    )?;
    lab.say(&format!(
        "{result} ({p}/{t} checks, {:.1}s)",
        lab.t0.elapsed().as_secs_f64()
    ));
    Ok(result == "PASS")
}

/// VAL14-01.
fn check01(lab: &mut Lab, g: &mut Gate) {
    let d = g.dir.clone();
    let leader = g.wait_leader(None, 0, WATCH_LIMIT);
    let views: Vec<Value> =
        g.rs.iter()
            .map(|r| r.leader().unwrap_or_default())
            .collect();
    write(
        &d.join("val14-leader-views.json"),
        &serde_json::to_string_pretty(&views).unwrap_or_default(),
    );
    let selfs = views.iter().filter(|v| v["self"] == true).count();
    let agree = views
        .iter()
        .all(|v| v["epoch"] == views[0]["epoch"] && v["replica"] == views[0]["replica"]);
    g.note(&format!("first leader: {leader:?}; views agree={agree}"));
    // 30 creates, round-robin over the replicas, three at a time.
    let bodies: Vec<String> = (0..30).map(|_| g.plan("val14-create")).collect();
    let mut codes: Vec<(String, u16)> = Vec::new();
    let rs = &g.rs;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|k| {
                let bodies = &bodies;
                s.spawn(move || {
                    (0..bodies.len())
                        .filter(|n| n % 3 == k)
                        .map(|n| {
                            let a =
                                rs[k].call("POST", "/v1/rollouts", Some(&bodies[n]), HTTP_LIMIT);
                            (rs[k].name.clone(), a.code)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            codes.extend(h.join().unwrap_or_default());
        }
    });
    let created = codes.iter().filter(|(_, c)| *c == 201).count();
    let per: Vec<String> =
        g.rs.iter()
            .map(|r| {
                format!(
                    "{}={}",
                    r.name,
                    codes
                        .iter()
                        .filter(|(n, c)| *n == r.name && *c == 201)
                        .count()
                )
            })
            .collect();
    write(
        &d.join("val14-creates.txt"),
        &codes
            .iter()
            .map(|(n, c)| format!("{n} {c}\n"))
            .collect::<String>(),
    );
    // The chain as each replica reads it.
    let mut heads = Vec::new();
    let mut gap_free = true;
    let mut n_events = 0;
    for r in &g.rs {
        let a = r.call("GET", "/v1/audit/events?limit=10000", None, HTTP_LIMIT);
        write(
            &d.join(format!("val14-chain-{}.json", r.name)),
            &a.json.to_string(),
        );
        let seqs: Vec<u64> = a.json["items"]
            .as_array()
            .map(|v| v.iter().filter_map(|e| e["seq"].as_u64()).collect())
            .unwrap_or_default();
        let ok = !seqs.is_empty() && seqs == (1..=seqs.len() as u64).collect::<Vec<_>>();
        gap_free &= ok && a.code == 200;
        n_events = seqs.len();
        let last_hash = a.json["items"]
            .as_array()
            .and_then(|v| v.last())
            .map(|e| e["hash"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default();
        heads.push(format!(
            "{}:{}:{}",
            r.name,
            seqs.last().copied().unwrap_or(0),
            &last_hash.get(..12).unwrap_or("")
        ));
    }
    let same_head = heads
        .iter()
        .map(|h| h.split_once(':').map(|x| x.1).unwrap_or(""))
        .collect::<BTreeSet<_>>()
        .len()
        == 1;
    let pass = leader.is_some() && selfs == 1 && agree && created == 30 && gap_free && same_head;
    lab.report.check(
        CHECKS[0].0,
        CHECKS[0].1,
        CheckFile::Write(d.join("val14-replicas-check.txt")),
        "val14-leader-views.json val14-creates.txt val14-chain-r1.json val14-chain-r2.json val14-chain-r3.json val14-replicas-check.txt",
        kvs![
            "replicas" => "r1=127.0.0.1:18981 r2=127.0.0.1:18982 r3=10.214.0.2:18983(netns)",
            "leader" => leader.map(|(i, e, _)| format!("r{} epoch {e}", i + 1)).unwrap_or_default(),
            "self_true_count" => selfs, "views_agree" => agree,
            "creates" => codes.len(), "created_201" => created, "per_replica" => per.join(" "),
            "events" => n_events, "gap_free_on_every_replica" => gap_free,
            "heads" => heads.join(" "), "same_head" => same_head, "pass" => pass,
        ],
    );
}

/// VAL14-02: SIGKILL of the leader.
fn check02(lab: &mut Lab, g: &mut Gate) {
    let d = g.dir.clone();
    let Some((old, epoch)) = g.find_leader() else {
        lab.not_run(CHECKS[1].0, CHECKS[1].1, "no replica said it leads");
        return;
    };
    let old_name = g.rs[old].name.clone();
    let killed_us = now_us();
    let killed = g.rs[old].kill9();
    g.note(&format!(
        "SIGKILL {old_name} (leader, epoch {epoch}): killed={killed}"
    ));
    let new = g.wait_leader(Some(old), epoch, WATCH_LIMIT);
    let (new_name, new_epoch, failover_ms) = match new {
        Some((i, e, t)) => (g.rs[i].name.clone(), e, t.as_millis()),
        None => (String::new(), 0, 0),
    };
    g.note(&format!(
        "new leader after SIGKILL: {new_name} epoch {new_epoch} after {failover_ms} ms"
    ));
    let acquired = g.acquired_event(new_epoch);
    let acquired_ms = acquired.as_ref().map(|(t, _)| (t - killed_us) / 1000);
    let restarted = g.restart(old);
    let pass = killed
        && new.is_some()
        && new_name != old_name
        && new_epoch > epoch
        && failover_ms <= FAILOVER_LIMIT.as_millis()
        && acquired.as_ref().is_some_and(|(_, r)| *r == new_name)
        && restarted;
    lab.report.check(
        CHECKS[1].0,
        CHECKS[1].1,
        CheckFile::Write(d.join("val14-sigkill-check.txt")),
        "val14-sigkill-check.txt val14-timeline.txt",
        kvs![
            "killed" => old_name, "old_epoch" => epoch, "new_leader" => new_name,
            "new_epoch" => new_epoch, "kill_to_self_true_ms" => failover_ms,
            "kill_to_leader_acquired_ms" => acquired_ms.map(|m| m.to_string()).unwrap_or_default(),
            "limit_ms" => FAILOVER_LIMIT.as_millis(), "killed_replica_restarted" => restarted,
            "pass" => pass,
        ],
    );
}

/// VAL14-03, first half: SIGSTOP of the leader for 15 s (recorded with the end-of-lab epochs).
fn check03_freeze(g: &mut Gate) -> Vec<(String, String)> {
    let Some((old, epoch)) = g.find_leader() else {
        return kvs!["freeze_not_run" => "no replica said it leads", "freeze_pass" => false];
    };
    let old_name = g.rs[old].name.clone();
    let t0 = Instant::now();
    let stopped = g.rs[old].signal(Signal::Stop);
    g.note(&format!(
        "SIGSTOP {old_name} (leader, epoch {epoch}) for {FREEZE:?}: {stopped}"
    ));
    let new = g.wait_leader(Some(old), epoch, WATCH_LIMIT.min(FREEZE));
    let (new_name, new_epoch, takeover_ms) = match new {
        Some((i, e, t)) => (g.rs[i].name.clone(), e, t.as_millis()),
        None => (String::new(), 0, 0),
    };
    g.note(&format!(
        "leader while {old_name} is frozen: {new_name} epoch {new_epoch} after {takeover_ms} ms"
    ));
    // The freeze lasts its full length.
    std::thread::sleep(FREEZE.saturating_sub(t0.elapsed()));
    let resumed = g.rs[old].signal(Signal::Cont);
    let cont = Instant::now();
    let mut view = Value::Null;
    let mut follower_ms = None;
    while cont.elapsed() < FAILOVER_LIMIT {
        if let Some(l) = g.rs[old].leader() {
            view = l.clone();
            if l["self"] == false && l["epoch"].as_u64().unwrap_or(0) >= new_epoch {
                follower_ms = Some(cont.elapsed().as_millis());
                break;
            }
        }
        std::thread::sleep(POLL);
    }
    g.note(&format!(
        "SIGCONT {old_name}: its view {view} (follower after {follower_ms:?} ms)"
    ));
    write(&g.dir.join("val14-frozen-view.json"), &view.to_string());
    let pass = stopped
        && resumed
        && new.is_some()
        && new_epoch > epoch
        && takeover_ms <= FAILOVER_LIMIT.as_millis()
        && follower_ms.is_some();
    kvs![
        "frozen" => old_name, "old_epoch" => epoch, "freeze_s" => FREEZE.as_secs(),
        "new_leader" => new_name, "new_epoch" => new_epoch, "stop_to_self_true_ms" => takeover_ms,
        "cont_to_self_false_ms" => follower_ms.map(|m| m.to_string()).unwrap_or_default(),
        "frozen_view_after_cont" => view.to_string(), "freeze_pass" => pass,
    ]
}

/// VAL14-03, second half: the promoter's events of the whole lab in seq order; their epochs
/// never decrease (and every one has one), and `leader.acquired` epochs only rise.
fn promoter_epochs(g: &mut Gate) -> (Vec<(String, String)>, bool) {
    let events = g.all_events();
    let read = events.is_some();
    let mut listing = String::new();
    let (mut last, mut decreases, mut without, mut promoter) = (0u64, 0u64, 0u64, 0u64);
    let (mut last_acq, mut acq_not_rising, mut acquired) = (0u64, 0u64, 0u64);
    for e in events.unwrap_or_default() {
        if e["actor"] != "system:promoter" && e["event_type"] != "leader.acquired" {
            continue;
        }
        let seq = e["seq"].as_u64().unwrap_or(0);
        let epoch = e["details"]["epoch"].as_u64();
        listing.push_str(&format!(
            "{seq} {} {} {} epoch={}\n",
            e["event_type"].as_str().unwrap_or_default(),
            e["actor"].as_str().unwrap_or_default(),
            e["resource"].as_str().unwrap_or_default(),
            epoch
                .map(|x| x.to_string())
                .unwrap_or_else(|| "none".into())
        ));
        if e["event_type"] == "leader.acquired" {
            acquired += 1;
            let ep = epoch.unwrap_or(0);
            if ep <= last_acq {
                acq_not_rising += 1;
            }
            last_acq = ep;
            continue;
        }
        promoter += 1;
        match epoch {
            None => without += 1,
            Some(ep) => {
                if ep < last {
                    decreases += 1;
                }
                last = ep;
            }
        }
    }
    write(&g.dir.join("val14-promoter-events.txt"), &listing);
    let ok = read && promoter > 0 && decreases == 0 && without == 0 && acq_not_rising == 0;
    (
        kvs![
            "promoter_events" => promoter, "promoter_epoch_decreases" => decreases,
            "promoter_events_without_epoch" => without, "leader_acquired_events" => acquired,
            "leader_acquired_not_rising" => acq_not_rising,
            "chain_read" => read,
        ],
        ok,
    )
}

/// VAL14-04: the leader's lock session ended by the server.
fn check04(lab: &mut Lab, g: &mut Gate, pg: &Pg) {
    let d = g.dir.clone();
    let Some((old, epoch)) = g.wait_leader(None, 0, WATCH_LIMIT).map(|(i, e, _)| (i, e)) else {
        lab.not_run(CHECKS[3].0, CHECKS[3].1, "no replica said it leads");
        return;
    };
    let sql = LEADER_SESSION_SQL;
    let (rc, out, err) = pg.psql(DB, sql);
    write(
        &d.join("val14-lock-session.txt"),
        &format!("-- {sql}\n{out}{err}"),
    );
    let rows: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    let pid = rows
        .first()
        .and_then(|r| r.split('|').next())
        .unwrap_or("")
        .to_string();
    let mut terminated = false;
    let t0 = Instant::now();
    if rc == 0 && rows.len() == 1 && pid.bytes().all(|b| b.is_ascii_digit()) && !pid.is_empty() {
        let (rc, out, _) = pg.psql(DB, &TERMINATE_SQL.replace("$1", &pid));
        terminated = rc == 0 && out.trim() == "t";
    }
    g.note(&format!(
        "pg_terminate_backend({pid}) of {}'s lock session (epoch {epoch}): {terminated}",
        g.rs[old].name
    ));
    let new = g.wait_leader(None, epoch, WATCH_LIMIT);
    let (new_name, new_epoch, ms) = match new {
        Some((i, e, _)) => (g.rs[i].name.clone(), e, t0.elapsed().as_millis()),
        None => (String::new(), 0, 0),
    };
    g.note(&format!(
        "leader after the terminate: {new_name} epoch {new_epoch} after {ms} ms"
    ));
    let pass = rows.len() == 1
        && terminated
        && new.is_some()
        && new_epoch > epoch
        && ms <= FAILOVER_LIMIT.as_millis();
    lab.report.check(
        CHECKS[3].0,
        CHECKS[3].1,
        CheckFile::Write(d.join("val14-terminate-check.txt")),
        "val14-lock-session.txt val14-terminate-check.txt val14-timeline.txt",
        kvs![
            "leader" => g.rs[old].name, "old_epoch" => epoch, "lock_sessions" => rows.len(),
            "backend_pid" => pid, "terminated" => terminated, "new_leader" => new_name,
            "new_epoch" => new_epoch, "terminate_to_self_true_ms" => ms, "pass" => pass,
        ],
    );
}

/// VAL14-05: PostgreSQL stopped with `-m immediate`, then started again.
fn check05(lab: &mut Lab, g: &mut Gate, pg: &Pg) {
    let d = g.dir.clone();
    let out = d.join("val14-pg-down.txt");
    let pids: Vec<Option<u32>> = g.rs.iter().map(Replica::pid).collect();
    let (rc, msg) = pg.pg_ctl(&["-m", "immediate", "-w", "-t", "30", "stop"]);
    g.note(&format!("PostgreSQL stopped -m immediate: {rc} {msg}"));
    append(&out, &format!("pg_ctl stop -m immediate -> {rc} {msg}\n"));
    let (mut writes, mut ok503, mut with_retry, mut bad) = (0, 0, 0, Vec::new());
    let mut max_ms = 0;
    let mut ready503 = 0;
    for round in 0..3 {
        for i in 0..3 {
            let body = g.plan("val14-down");
            let a = g.rs[i].call("POST", "/v1/rollouts", Some(&body), HTTP_LIMIT);
            writes += 1;
            max_ms = max_ms.max(a.ms);
            append(
                &out,
                &format!(
                    "round {round} {} POST /v1/rollouts: {}\n",
                    g.rs[i].name,
                    a.line()
                ),
            );
            if a.code == 503 {
                ok503 += 1;
                if a.retry_after.as_deref().is_some_and(|v| !v.is_empty()) {
                    with_retry += 1;
                }
            } else {
                bad.push(format!("{}:{}", g.rs[i].name, a.code));
            }
            let r = g.rs[i].call("GET", "/v1/ready", None, HTTP_LIMIT);
            append(
                &out,
                &format!(
                    "round {round} {} GET /v1/ready: {}\n",
                    g.rs[i].name,
                    r.line()
                ),
            );
            if r.code == 503 {
                ready503 += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (rc, msg) = pg.pg_ctl(&["-w", "-t", "60", "start"]);
    let up = Instant::now();
    g.note(&format!("PostgreSQL started again: {rc} {msg}"));
    append(&out, &format!("pg_ctl start -> {rc} {msg}\n"));
    let mut recovered = Vec::new();
    let mut all_ok = true;
    for (i, pid) in pids.iter().enumerate() {
        let t = Instant::now();
        let mut ready = None;
        while t.elapsed() < Duration::from_secs(30) {
            if g.rs[i].call("GET", "/v1/ready", None, HTTP_LIMIT).code == 200 {
                ready = Some(up.elapsed().as_millis());
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut attempts = 0;
        let mut created = None;
        let mut codes = Vec::new();
        while t.elapsed() < Duration::from_secs(45) && ready.is_some() {
            attempts += 1;
            let body = g.plan("val14-after");
            let a = g.rs[i].call("POST", "/v1/rollouts", Some(&body), HTTP_LIMIT);
            codes.push(a.code.to_string());
            if a.code == 201 {
                created = Some(up.elapsed().as_millis());
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let same_pid = g.rs[i].pid() == *pid && g.rs[i].running();
        let line = format!(
            "{}: ready_after_ms={} created_after_ms={} create_attempts={attempts} codes={} same_process={same_pid}",
            g.rs[i].name,
            ready.map(|m| m.to_string()).unwrap_or_else(|| "never".into()),
            created.map(|m| m.to_string()).unwrap_or_else(|| "never".into()),
            codes.join(","),
        );
        append(&out, &format!("{line}\n"));
        g.note(&line);
        all_ok &= ready.is_some() && created.is_some() && same_pid;
        recovered.push(format!(
            "{}:{}/{}",
            g.rs[i].name,
            ready
                .map(|m| m.to_string())
                .unwrap_or_else(|| "never".into()),
            created
                .map(|m| m.to_string())
                .unwrap_or_else(|| "never".into())
        ));
    }
    let leader = g.wait_leader(None, 0, WATCH_LIMIT);
    g.note(&format!("leader after PostgreSQL returned: {leader:?}"));
    let pass = rc == 0
        && ok503 == writes
        && with_retry == writes
        && bad.is_empty()
        && max_ms < HTTP_LIMIT.as_millis()
        && all_ok
        && leader.is_some();
    lab.report.check(
        CHECKS[4].0,
        CHECKS[4].1,
        CheckFile::Write(d.join("val14-pg-restart-check.txt")),
        "val14-pg-down.txt val14-pg-restart-check.txt val14-postgres-server.log",
        kvs![
            "writes_while_down" => writes, "answered_503" => ok503, "with_retry_after" => with_retry,
            "other_answers" => crate::lab::csv(&bad), "slowest_write_ms" => max_ms,
            "client_timeout_ms" => HTTP_LIMIT.as_millis(), "ready_503_while_down" => ready503,
            "recovered_ready_ms_created_ms" => recovered.join(" "),
            "no_replica_restarted" => all_ok,
            "leader_after" => leader.map(|(i, e, _)| format!("r{} epoch {e}", i + 1)).unwrap_or_default(),
            "pass" => pass,
        ],
    );
}

struct Sim {
    child: Child,
}

impl Sim {
    #[allow(clippy::too_many_arguments)]
    fn start(
        bin: &Path,
        server: &str,
        key: &str,
        devices: u32,
        prefix: &str,
        step: &str,
        manifest: &Path,
        log: &Path,
    ) -> std::io::Result<Sim> {
        let child = process::command(bin)
            .args([
                "--server",
                server,
                "fleet",
                "simulate",
                "--devices",
                &devices.to_string(),
                "--seed",
                "14",
                "--id-prefix",
                prefix,
                "--step-seconds",
                step,
                "--poll-wait",
                "3",
                "--progress-every",
                "5",
                "--duration",
                "900",
                "--manifest",
            ])
            .arg(manifest)
            .env("AUTONOMY_ENROLL_KEY", key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(log)
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()?;
        Ok(Sim { child })
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = process::signal(self.child.id(), Signal::Term);
        if process::wait_bounded(&mut self.child, Duration::from_secs(20)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An enroll key for `devices` devices labelled `fleet=<fleet>` (made on `r1`).
fn enroll_key(g: &mut Gate, fleet: &str, devices: u32, out: &Path) -> String {
    let body =
        json!({"labels": {"fleet": fleet}, "max_uses": devices, "ttl_seconds": 3600}).to_string();
    let a = g.rs[0].call("POST", "/v1/enroll-keys", Some(&body), HTTP_LIMIT);
    write(
        out,
        &format!("{{\"key\":\"(not kept)\",\"http_code\":{}}}\n", a.code),
    );
    a.json["key"].as_str().unwrap_or_default().to_string()
}

/// Devices labelled `fleet=<fleet>` (every page), as seen by any serving replica.
fn enrolled(g: &mut Gate, fleet: &str) -> usize {
    let mut n = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/devices?selector=fleet={fleet}&limit=1000&cursor={c}"),
            None => format!("/v1/devices?selector=fleet={fleet}&limit=1000"),
        };
        let Some(v) = g.get_any(&path) else { return n };
        n += v["items"].as_array().map_or(0, Vec::len);
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return n,
        }
    }
}

fn wait_enrolled(g: &mut Gate, fleet: &str, devices: u32, limit: Duration) -> (usize, u128) {
    let t0 = Instant::now();
    let mut n = 0;
    while t0.elapsed() < limit {
        n = enrolled(g, fleet);
        if n == devices as usize {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    (n, t0.elapsed().as_millis())
}

fn engine_plan(id: &str, fleet: &str, devices: u32, stages: Value) -> String {
    json!({
        "metadata": {"id": id, "labels": {"lab": "val14"}},
        "spec": {
            "artifact_ref": format!("oci://registry.example/val14/{fleet}@sha256:{}", blake3::hash(id.as_bytes()).to_hex()),
            "targets": {"selector": {"fleet": fleet}},
            "stages": stages,
            "policy": {"success_threshold_pct": 100, "failure_threshold": {"count": devices},
                       "on_failure": "pause", "device_timeout_seconds": 120,
                       "max_device_retries": 2, "reboot_required": true,
                       "silent_after_seconds": 120}
        }
    })
    .to_string()
}

/// Creates and starts the plan on any serving replica; the codes.
fn create_and_start(g: &mut Gate, id: &str, body: &str, out: &Path) -> (u16, u16) {
    let mut codes = (0, 0);
    for i in 0..3 {
        if !g.rs[i].serving() {
            continue;
        }
        let a = g.rs[i].call("POST", "/v1/rollouts", Some(body), HTTP_LIMIT);
        write(out, &a.json.to_string());
        codes.0 = a.code;
        let s = g.rs[i].call(
            "POST",
            &format!("/v1/rollouts/{id}/start"),
            Some("{\"reason\":\"val14\"}"),
            HTTP_LIMIT,
        );
        codes.1 = s.code;
        break;
    }
    codes
}

/// The plan's `rollout.stage_started` events: the stage of each.
fn stages_started(g: &mut Gate, id: &str, out: &Path) -> Vec<u64> {
    let v = g
        .get_any(&format!(
            "/v1/audit/events?event_type=rollout.stage_started&resource={id}&limit=1000"
        ))
        .unwrap_or_default();
    write(out, &v.to_string());
    v["items"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|e| e["details"]["stage"].as_u64().unwrap_or(99))
                .collect()
        })
        .unwrap_or_default()
}

fn phase(g: &mut Gate, id: &str) -> (String, Value) {
    match g.get_any(&format!("/v1/rollouts/{id}")) {
        Some(v) => (py(&v["status"]["phase"]), v),
        None => (String::new(), Value::Null),
    }
}

fn py(v: &Value) -> String {
    crate::lab::py_out(Some(v))
}

/// VAL14-06: a fleet rollout with the leader disturbed every 10 s.
fn check06(lab: &mut Lab, g: &mut Gate, devices: u32) -> String {
    let d = g.dir.clone();
    const PLAN: &str = "val14-fleet";
    let key = enroll_key(g, "val14", devices, &d.join("val14-enroll-key.json"));
    let sim = Sim::start(
        &lab.bin,
        &g.rs[0].base(),
        &key,
        devices,
        "sim-",
        "0.05",
        &d.join("val14-manifest.json"),
        &d.join("val14-sim.log"),
    );
    let Ok(mut sim) = sim else {
        lab.not_run(CHECKS[5].0, CHECKS[5].1, "the simulator did not start");
        return format!("{devices} devices: not run");
    };
    let (n, enroll_ms) = wait_enrolled(g, "val14", devices, Duration::from_secs(120));
    g.note(&format!(
        "fleet: {n}/{devices} enrolled after {enroll_ms} ms"
    ));
    let stages = json!([
        {"name": "canary", "size": {"percent": 5}},
        {"name": "wave-1", "size": {"percent": 20}},
        {"name": "wave-2", "size": {"percent": 30}},
        {"name": "rest"}
    ]);
    let body = engine_plan(PLAN, "val14", devices, stages);
    let (created, started) =
        create_and_start(g, PLAN, &body, &d.join("val14-fleet-plan-create.json"));
    g.note(&format!("fleet plan: create {created} start {started}"));
    let t0 = Instant::now();
    let mut next = t0 + DISTURB_EVERY;
    let mut disturbances: Vec<String> = Vec::new();
    let mut kind = 0u32;
    let mut ph = String::new();
    let limit = Duration::from_secs(240);
    // The leader is disturbed every DISTURB_EVERY, and also as soon as the plan moves to a stage
    // it was not yet disturbed in: a fast rollout (the whole run takes ~20 s here) still sees
    // a kill and a freeze while its stages run, whatever the machine's speed.
    let mut disturbed_stage: i64 = 0;
    while t0.elapsed() < limit {
        let (p, plan) = phase(g, PLAN);
        ph = p;
        if ph == "completed" || ph == "failed" || ph == "aborted" {
            break;
        }
        let stage = plan["status"]["rollout"]["current_stage"]
            .as_i64()
            .unwrap_or(0);
        if Instant::now() >= next || stage > disturbed_stage {
            disturbed_stage = disturbed_stage.max(stage);
            match g.find_leader() {
                Some((i, epoch)) => {
                    let name = g.rs[i].name.clone();
                    if kind.is_multiple_of(2) {
                        let killed = g.rs[i].kill9();
                        g.note(&format!(
                            "disturbance {}: SIGKILL leader {name} (epoch {epoch}): {killed}",
                            kind + 1
                        ));
                        let up = g.restart(i);
                        disturbances.push(format!("kill:{name}:{}", killed && up));
                    } else {
                        let stopped = g.rs[i].signal(Signal::Stop);
                        g.note(&format!("disturbance {}: SIGSTOP leader {name} (epoch {epoch}) for {DISTURB_FREEZE:?}: {stopped}", kind + 1));
                        std::thread::sleep(DISTURB_FREEZE);
                        let cont = g.rs[i].signal(Signal::Cont);
                        g.note(&format!("SIGCONT {name}: {cont}"));
                        disturbances.push(format!("stop5s:{name}:{}", stopped && cont));
                    }
                    kind += 1;
                }
                None => {
                    g.note("disturbance skipped: no replica says it leads right now");
                    disturbances.push("skipped:no-leader".into());
                }
            }
            next = Instant::now() + DISTURB_EVERY;
            continue;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let rollout_ms = t0.elapsed().as_millis();
    g.note(&format!(
        "fleet plan: phase {ph} after {rollout_ms} ms, disturbances {}",
        disturbances.join(" ")
    ));
    let (_, fin) = phase(g, PLAN);
    write(
        &d.join("val14-fleet-plan-final.json"),
        &serde_json::to_string_pretty(&fin).unwrap_or_default(),
    );
    let stages = stages_started(g, PLAN, &d.join("val14-fleet-stage-started.json"));
    let distinct: BTreeSet<u64> = stages.iter().copied().collect();
    let verified = fin["status"]["rollout"]["stages"].as_array().map(|s| {
        s.iter()
            .map(|x| x["counts"]["verified"].as_u64().unwrap_or(0))
            .sum::<u64>()
    });
    sim.stop();
    let applied = disturbances.iter().filter(|x| x.ends_with(":true")).count();
    let pass = n == devices as usize
        && created == 201
        && started == 200
        && ph == "completed"
        && stages.len() == 4
        && distinct.len() == 4
        && applied >= 2;
    lab.report.check(
        CHECKS[5].0,
        CHECKS[5].1,
        CheckFile::Write(d.join("val14-fleet-check.txt")),
        "val14-fleet-plan-create.json val14-fleet-plan-final.json val14-fleet-stage-started.json val14-manifest.json val14-sim.log val14-timeline.txt val14-fleet-check.txt",
        kvs![
            "devices" => devices, "enrolled" => n, "enroll_ms" => enroll_ms,
            "create_code" => created, "start_code" => started, "phase" => ph,
            "rollout_ms" => rollout_ms,
            "verified" => verified.map(|v| v.to_string()).unwrap_or_default(),
            "disturbances" => disturbances.join(" "), "disturbances_applied" => applied,
            "stage_started_events" => stages.len(), "stages" => format!("{stages:?}"),
            "pass" => pass,
        ],
    );
    format!("{devices} devices, {ph} after {rollout_ms} ms")
}

/// VAL14-07: `r3` cut off from PostgreSQL while it leads a rollout.
fn check07(lab: &mut Lab, g: &mut Gate, netns: &mut Netns) {
    let d = g.dir.clone();
    let out = d.join("val14-partition.txt");
    const PLAN: &str = "val14-partition";
    const R3: usize = 2;
    // r3 leads: the others stop (cleanly: the lock goes at once) until it does, then return.
    let mut made_leader = g.find_leader().map(|(i, _)| i) == Some(R3);
    if !made_leader {
        for i in 0..2 {
            let ok = g.rs[i].terminate();
            g.note(&format!(
                "{} stopped (SIGTERM) to hand the lead to r3: {ok}",
                g.rs[i].name
            ));
        }
        made_leader = g.wait_leader(None, 0, WATCH_LIMIT).map(|(i, _, _)| i) == Some(R3);
        for i in 0..2 {
            g.restart(i);
        }
    }
    let Some((_, r3_epoch)) = g.find_leader().filter(|(i, _)| *i == R3) else {
        lab.not_run(
            CHECKS[6].0,
            CHECKS[6].1,
            &format!("r3 could not be made the leader (made_leader={made_leader})"),
        );
        return;
    };
    g.note(&format!("r3 leads under epoch {r3_epoch}"));
    let key = enroll_key(
        g,
        "val14-part",
        PARTITION_DEVICES,
        &d.join("val14-part-enroll-key.json"),
    );
    let Ok(mut sim) = Sim::start(
        &lab.bin,
        &g.rs[0].base(),
        &key,
        PARTITION_DEVICES,
        "part-",
        "0.5",
        &d.join("val14-part-manifest.json"),
        &d.join("val14-part-sim.log"),
    ) else {
        lab.not_run(CHECKS[6].0, CHECKS[6].1, "the simulator did not start");
        return;
    };
    let (n, _) = wait_enrolled(g, "val14-part", PARTITION_DEVICES, Duration::from_secs(60));
    let stages = json!([
        {"name": "first", "size": {"percent": 20}},
        {"name": "second", "size": {"percent": 30}},
        {"name": "rest"}
    ]);
    let body = engine_plan(PLAN, "val14-part", PARTITION_DEVICES, stages);
    let (created, started) =
        create_and_start(g, PLAN, &body, &d.join("val14-part-plan-create.json"));
    // Mid-rollout: r3 has started the first stage.
    let t = Instant::now();
    let mut first_stage = false;
    while t.elapsed() < Duration::from_secs(30) {
        if !stages_started(g, PLAN, &d.join("val14-part-stage-started.json")).is_empty() {
            first_stage = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let still = g.rs[R3].leader().is_some_and(|l| l["self"] == true);
    g.note(&format!("partition fleet {n}/{PARTITION_DEVICES}, plan create {created} start {started}, first stage started={first_stage}, r3 still leads={still}"));
    // The cut.
    let cut_us = now_us();
    let cut = netns.set_link(false, &out);
    let t_cut = Instant::now();
    g.note(&format!("link {VETH_HOST} down: {cut}"));
    // r3 is asked from inside its namespace (each request with the full client timeout) while
    // the others are watched for a new leader.
    let mut takeover: Option<(String, u64, u128)> = None;
    let (r3_not_leader_ms, r3_view) = std::thread::scope(|s| {
        let r3 = &g.rs[R3];
        let out = &out;
        let probe = s.spawn(move || {
            while t_cut.elapsed() < WATCH_LIMIT {
                let a = r3.call("GET", "/v1/leader", None, HTTP_LIMIT);
                if a.code != 200 || a.json["self"] != true {
                    append(
                        out,
                        &format!(
                            "r3 GET /v1/leader (inside the namespace): {} {}\n",
                            a.line(),
                            a.json
                        ),
                    );
                    let view = if a.code == 200 {
                        a.json.to_string()
                    } else {
                        a.line()
                    };
                    return (Some(t_cut.elapsed().as_millis()), view);
                }
                std::thread::sleep(POLL);
            }
            (None, String::new())
        });
        while t_cut.elapsed() < WATCH_LIMIT && takeover.is_none() {
            for r in &g.rs[..2] {
                if let Some(l) = r.leader() {
                    let e = l["epoch"].as_u64().unwrap_or(0);
                    if l["self"] == true && e > r3_epoch {
                        takeover = Some((r.name.clone(), e, t_cut.elapsed().as_millis()));
                    }
                }
            }
            std::thread::sleep(POLL);
        }
        probe.join().unwrap_or((None, String::new()))
    });
    g.note(&format!(
        "cut: r3 not leading after {r3_not_leader_ms:?} ms ({r3_view}); takeover {takeover:?}"
    ));
    // A write to the cut-off replica.
    let body = g.plan("val14-cut");
    let w = g.rs[R3].call("POST", "/v1/rollouts", Some(&body), HTTP_LIMIT);
    append(
        &out,
        &format!(
            "r3 POST /v1/rollouts while cut off: {} {}\n",
            w.line(),
            w.json
        ),
    );
    g.note(&format!("write to r3 while cut off: {}", w.line()));
    // When r3 stopped promoting, by its own log (the first step-down after the cut).
    let stepped_down_ms = std::fs::read_to_string(&g.rs[R3].options.log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("stepped down as leader"))
        .filter_map(|l| parse_time_us(l.split_whitespace().next()?))
        .find(|t| *t >= cut_us)
        .map(|t| (t - cut_us) / 1000);
    // The link returns.
    let back = netns.set_link(true, &out);
    let t_up = Instant::now();
    let mut rejoin = None;
    let mut view = Value::Null;
    while t_up.elapsed() < Duration::from_secs(30) {
        if g.rs[R3]
            .call("GET", "/v1/ready", None, Duration::from_secs(3))
            .code
            == 200
        {
            if let Some(l) = g.rs[R3].leader() {
                view = l.clone();
                if l["self"] == false && l["epoch"].as_u64().unwrap_or(0) > r3_epoch {
                    rejoin = Some(t_up.elapsed().as_millis());
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    append(
        &out,
        &format!("r3 after the link returned: ready+follower after {rejoin:?} ms, view {view}\n"),
    );
    g.note(&format!(
        "link up: {back}; r3 ready follower after {rejoin:?} ms ({view})"
    ));
    // The rollout completes under the new leader.
    let t = Instant::now();
    let mut ph = String::new();
    while t.elapsed() < Duration::from_secs(90) {
        ph = phase(g, PLAN).0;
        if ph == "completed" || ph == "failed" || ph == "aborted" {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let stages = stages_started(g, PLAN, &d.join("val14-part-stage-started.json"));
    let distinct: BTreeSet<u64> = stages.iter().copied().collect();
    write(
        &d.join("val14-part-plan-final.json"),
        &phase(g, PLAN).1.to_string(),
    );
    sim.stop();
    g.note(&format!("partition plan: {ph}; stages started {stages:?}"));
    let takeover_ms = takeover.as_ref().map_or(0, |t| t.2);
    let pass = cut
        && first_stage
        && still
        && r3_not_leader_ms.is_some_and(|m| m <= FAILOVER_LIMIT.as_millis())
        && stepped_down_ms.is_some_and(|m| m <= FAILOVER_LIMIT.as_millis() as i64)
        && takeover.is_some()
        && takeover_ms <= FAILOVER_LIMIT.as_millis()
        && w.code == 503
        && w.retry_after.is_some()
        && back
        && rejoin.is_some()
        && ph == "completed"
        && stages.len() == 3
        && distinct.len() == 3;
    lab.report.check(
        CHECKS[6].0,
        CHECKS[6].1,
        CheckFile::Write(d.join("val14-partition-check.txt")),
        "val14-partition.txt val14-partition-check.txt val14-part-plan-final.json val14-part-stage-started.json val14-r3.log val14-timeline.txt",
        kvs![
            "r3_epoch" => r3_epoch, "devices" => n, "first_stage_started_before_cut" => first_stage,
            "r3_led_at_cut" => still, "link_cut" => cut,
            "cut_to_r3_not_leading_ms" => r3_not_leader_ms.map(|m| m.to_string()).unwrap_or_default(),
            "r3_leader_answer" => r3_view,
            "cut_to_r3_stepped_down_ms" => stepped_down_ms.map(|m| m.to_string()).unwrap_or_default(),
            "new_leader" => takeover.as_ref().map(|t| format!("{} epoch {}", t.0, t.1)).unwrap_or_default(),
            "cut_to_takeover_ms" => takeover_ms,
            "r3_write_while_cut" => w.code, "r3_write_retry_after" => w.retry_after.clone().unwrap_or_default(),
            "r3_write_ms" => w.ms, "link_restored" => back,
            "link_up_to_r3_ready_follower_ms" => rejoin.map(|m| m.to_string()).unwrap_or_default(),
            "plan_phase" => ph, "stage_started_events" => stages.len(), "stages" => format!("{stages:?}"),
            "pass" => pass,
        ],
    );
}

/// `audit verify --audit-dir DIR -o json`: (exit code, last seq).
fn verify_mirror(lab: &Lab, dir: &Path, out: &Path) -> (i32, u64) {
    let args: Vec<String> = vec![
        "audit".into(),
        "verify".into(),
        "--audit-dir".into(),
        dir.display().to_string(),
        "-o".into(),
        "json".into(),
    ];
    let run = lab.cli(out, None, &args, Duration::from_secs(120));
    let v: Value = std::fs::read(out)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    (run.rc, v["last_seq"].as_u64().unwrap_or(0))
}

/// VAL14-08: every mirror verifies and reaches the database's last seq (while the idle
/// replicas run: stopping one hands the lead to another, which audits `leader.acquired`
/// that the stopped one never sees); after the stop each verifies again.
fn check08(lab: &mut Lab, g: &mut Gate) {
    let d = g.dir.clone();
    for r in g.rs.iter_mut() {
        if r.stopped {
            r.signal(Signal::Cont);
        }
    }
    let t0 = Instant::now();
    let (mut head, mut lasts) = (0u64, Vec::new());
    let mut level = false;
    while t0.elapsed() < Duration::from_secs(30) {
        let chain = g.all_events().unwrap_or_default();
        head = chain.last().and_then(|e| e["seq"].as_u64()).unwrap_or(0);
        let gap_free = chain
            .iter()
            .enumerate()
            .all(|(i, e)| e["seq"].as_u64() == Some(i as u64 + 1));
        lasts.clear();
        level = head > 0 && gap_free;
        for r in &g.rs {
            let dir = r.options.audit_dir.clone().unwrap_or_default();
            let out = d.join(format!("val14-audit-verify-{}.json", r.name));
            let (rc, last) = verify_mirror(lab, &dir, &out);
            level &= rc == 0 && last == head;
            lasts.push(format!("{}:exit={rc}:last_seq={last}", r.name));
        }
        if level {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let level_ms = t0.elapsed().as_millis();
    g.note(&format!(
        "mirrors level with the database (seq {head}): {level} after {level_ms} ms"
    ));
    let mut after = Vec::new();
    let mut after_ok = true;
    for r in g.rs.iter_mut() {
        r.terminate();
    }
    for r in &g.rs {
        let dir = r.options.audit_dir.clone().unwrap_or_default();
        let out = d.join(format!("val14-audit-verify-{}-stopped.json", r.name));
        let (rc, last) = verify_mirror(lab, &dir, &out);
        after_ok &= rc == 0 && last >= head;
        after.push(format!("{}:exit={rc}:last_seq={last}", r.name));
    }
    let pass = level && after_ok;
    lab.report.check(
        CHECKS[7].0,
        CHECKS[7].1,
        CheckFile::Write(d.join("val14-audit-check.txt")),
        "val14-audit-verify-r1.json val14-audit-verify-r2.json val14-audit-verify-r3.json val14-audit-verify-r1-stopped.json val14-audit-verify-r2-stopped.json val14-audit-verify-r3-stopped.json val14-audit-check.txt",
        kvs![
            "chain_last_seq" => head, "mirrors_running" => lasts.join(" "),
            "level_after_ms" => level_ms, "mirrors_after_stop" => after.join(" "),
            "pass" => pass,
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The leader lock of the PostgreSQL store (`autonomy-store-postgres`: "autono" in ASCII,
    /// then 2): pg_locks shows a bigint key as classid (high half) and objid (low half).
    const LEADER_LOCK: u64 = 0x6175_746f_6e6f_0002;

    #[test]
    fn audit_times_parse_to_microseconds() {
        assert_eq!(parse_time_us("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_time_us("1970-01-02T00:00:01.5Z"),
            Some(86_401_500_000)
        );
        assert_eq!(
            parse_time_us("2026-12-02T02:49:11.000001Z"),
            Some(1_796_179_751_000_001)
        );
        assert_eq!(parse_time_us("not a time"), None);
    }

    #[test]
    fn the_leader_lock_splits_as_pg_locks_shows_it() {
        let (classid, objid) = (LEADER_LOCK >> 32, LEADER_LOCK & 0xffff_ffff);
        assert!(LEADER_SESSION_SQL.contains(&format!("l.classid = {classid}")));
        assert!(LEADER_SESSION_SQL.contains(&format!("l.objid = {objid}")));
    }
}

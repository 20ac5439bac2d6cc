//! What every lab step needs: the lab's CP (started, killed, stopped, as the lab script did),
//! HTTP requests and CLI runs whose answers become evidence files, checks, and the report.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use autonomy_testkit::cp::{Cp, CpOptions};
use autonomy_testkit::http;
use autonomy_testkit::process;
use serde_json::Value;

use crate::report::{CheckFile, Report};

/// Seconds per HTTP request.
const HTTP_MAX_TIME: Duration = Duration::from_secs(15);
/// Seconds per CLI run (killed after that).
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// A CP must be ready within this (100 polls of 0.1 s).
const CP_READY_LIMIT: Duration = Duration::from_secs(10);
const CP_POLL: Duration = Duration::from_millis(100);
/// SIGTERM to exit, at most (then SIGKILL).
const CP_STOP_LIMIT: Duration = Duration::from_secs(10);

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, now.
pub fn utc_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Seconds since the epoch with nanoseconds (`date +%s.%N`).
pub fn epoch_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

pub fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// A JSON value as the script's `pyj` printed it: booleans `true`/`false`, null empty,
/// lists space-joined, objects as JSON, else the value.
pub fn py_out(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| py_out(Some(x)))
            .collect::<Vec<_>>()
            .join(" "),
        Some(o @ Value::Object(_)) => o.to_string(),
    }
}

/// The file's text on one line (at most 400 characters), for a report value.
pub fn one_line(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&text)
        .replace(['\n', '\t', '\r'], " ")
        .chars()
        .take(400)
        .collect()
}

/// The ids joined by commas (`none` when there are none).
pub fn csv(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(",")
    }
}

/// `key=value` pairs from string-ish values.
#[macro_export]
macro_rules! kvs {
    ($($k:expr => $v:expr),* $(,)?) => {
        vec![$(($k.to_string(), $v.to_string())),*]
    };
}

/// One HTTP answer (code `000`: none).
#[derive(Debug, Default)]
pub struct Answer {
    pub code: String,
    pub json: Value,
    pub retry_after: Option<String>,
}

impl Answer {
    /// `pyj`-style value at a JSON pointer ("" when absent).
    pub fn at(&self, pointer: &str) -> String {
        py_out(self.json.pointer(pointer))
    }
}

/// How a CLI run ended: the exit status as a shell reports it (124: killed at the limit;
/// 125: not run) and its wall time.
#[derive(Debug, Clone, Copy)]
pub struct CliRun {
    pub rc: i32,
    pub ms: u128,
}

/// How the last start went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    Ready,
    Failed,
    PortTaken,
}

/// How the last stop or kill went.
#[derive(Debug, Clone, Default)]
pub struct StopInfo {
    /// Exit status as a shell reports it (`alive` if it could not be reaped).
    pub rc: String,
    pub ms: u128,
    pub forced: bool,
}

pub struct Lab {
    pub name: &'static str,
    pub bin: PathBuf,
    /// Evidence dir of this lab.
    pub dir: PathBuf,
    /// Scratch dir of this lab.
    pub work: PathBuf,
    pub port: u16,
    pub base: String,
    pub data_dir: PathBuf,
    pub audit_dir: PathBuf,
    pub operator: String,
    pub report: Report,
    /// The lab's running CP (requests are only sent while it runs).
    pub cp: Option<Cp>,
    /// Why the last start failed ("" when it did not).
    pub start_error: String,
    /// Spawn to ready of the last start, ms ("" when it failed).
    pub ready_ms: String,
    pub started_at: String,
    pub t0: Instant,
    /// More `serve` arguments for every start (e.g. `--promoter-interval 0.2`).
    pub cp_args: Vec<String>,
}

impl Lab {
    pub fn say(&self, msg: &str) {
        crate::report::say(self.name, msg);
    }

    /// The environment of every CLI run of the lab.
    pub fn cli_env(&self) -> Vec<(String, String)> {
        vec![
            ("AUTONOMY_RBAC_ENFORCEMENT".into(), "0".into()),
            ("AUTONOMY_OPERATOR".into(), self.operator.clone()),
            (
                "AUTONOMY_AUDIT_DIR".into(),
                self.audit_dir.display().to_string(),
            ),
            ("AUTONOMY_SERVER".into(), self.base.clone()),
        ]
    }

    /// The lab's CP runs.
    pub fn alive(&mut self) -> bool {
        self.cp.as_mut().is_some_and(Cp::is_running)
    }

    pub fn pid(&self) -> String {
        self.cp
            .as_ref()
            .and_then(Cp::pid)
            .map(|p| p.to_string())
            .unwrap_or_default()
    }

    /// Starts `autonomy serve` on 127.0.0.1:`port` (stdout and stderr appended to `log`) and
    /// waits, bounded, for its `listening on` line and a 200 from /v1/health. Nothing is
    /// started when the port is taken.
    pub fn start_cp(&mut self, port: u16, data: &Path, audit: &Path, log: &Path) -> Started {
        self.cp = None;
        self.start_error.clear();
        self.ready_ms.clear();
        let note = |line: String| {
            if let Ok(mut f) = std::fs::File::options().create(true).append(true).open(log) {
                let _ = writeln!(f, "# lab {}: {line}", utc_now());
            }
        };
        if http::port_in_use(port) {
            self.start_error = format!(
                "port 127.0.0.1:{port} is already in use by another process; no CP was started"
            );
            note(format!("NOT starting a CP: {}", self.start_error));
            return Started::PortTaken;
        }
        note(format!(
            "starting: {} serve --listen 127.0.0.1:{port} --data-dir {} --audit-dir {}",
            self.bin.display(),
            data.display(),
            audit.display()
        ));
        let mut options = CpOptions::new(&self.bin, data, log);
        options.listen = format!("127.0.0.1:{port}");
        options.audit_dir = Some(audit.to_path_buf());
        options.args = self.cp_args.clone();
        options.stdout_to_log = true;
        options.start_limit = CP_READY_LIMIT;
        options.stop_limit = CP_STOP_LIMIT;
        options.poll = CP_POLL;
        match Cp::start(options) {
            Ok(cp) => {
                let ready = cp.ready_after().map(ms).unwrap_or_default();
                self.ready_ms = ready.to_string();
                note(format!(
                    "CP pid {} ready after {ready} ms",
                    cp.pid().unwrap_or_default()
                ));
                self.cp = Some(cp);
                Started::Ready
            }
            Err(e) => {
                let code = e.status.map(process::shell_code);
                let tail: Vec<&str> = e
                    .stderr
                    .lines()
                    .filter(|l| !l.starts_with("# lab"))
                    .collect();
                let tail = tail[tail.len().saturating_sub(3)..].join(" ");
                self.start_error = match code {
                    Some(c) => format!("the CP exited during startup with code {c}: {tail}"),
                    None => format!(
                        "the CP was not healthy within {CP_READY_LIMIT:?}: {}",
                        e.why
                    ),
                };
                note(format!("start failed: {}", self.start_error));
                Started::Failed
            }
        }
    }

    /// Starts the lab's CP on its own port and dirs; says how it went.
    pub fn lab_cp_start(&mut self, log: &Path) -> Started {
        let (port, data, audit) = (self.port, self.data_dir.clone(), self.audit_dir.clone());
        let started = self.start_cp(port, &data, &audit, log);
        if started == Started::Ready {
            self.say(&format!(
                "CP pid {} ready on 127.0.0.1:{port} after {} ms",
                self.pid(),
                self.ready_ms
            ));
        } else {
            self.say(&format!("CP start failed: {}", self.start_error));
        }
        started
    }

    /// SIGTERM (and SIGCONT), bounded wait, SIGKILL; `None` when no CP runs.
    pub fn stop_cp(&mut self) -> Option<StopInfo> {
        let mut cp = self.cp.take()?;
        let pid = cp.pid().unwrap_or_default();
        let info = match cp.terminate(CP_STOP_LIMIT) {
            Ok(s) => StopInfo {
                rc: s.shell_code().to_string(),
                ms: ms(s.elapsed),
                forced: s.killed,
            },
            Err(_) => StopInfo {
                rc: "alive".into(),
                ms: 0,
                forced: true,
            },
        };
        self.say(&format!(
            "CP pid {pid} stopped (exit {}, {} ms, forced={})",
            info.rc, info.ms, info.forced
        ));
        Some(info)
    }

    /// SIGKILL and reap (bounded); `None` when no CP runs or it could not be confirmed dead.
    pub fn kill9(&mut self) -> Option<StopInfo> {
        let mut cp = self.cp.take()?;
        match cp.kill() {
            Ok(Some(s)) => Some(StopInfo {
                rc: s.shell_code().to_string(),
                ms: ms(s.elapsed),
                forced: true,
            }),
            _ => {
                self.cp = Some(cp);
                None
            }
        }
    }

    /// One request, only while the lab's CP runs; the body (or why there is none) goes to
    /// `out`.
    pub fn http(&mut self, method: &str, url: &str, out: &Path, body: Option<&str>) -> Answer {
        if !self.alive() {
            let _ = std::fs::write(
                out,
                "{\"lab_error\":\"request not sent: the lab control plane is not running\"}\n",
            );
            return Answer {
                code: "000".into(),
                ..Answer::default()
            };
        }
        let mut headers = vec![("X-Autonomy-Operator", self.operator.as_str())];
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        match http::call(
            method,
            url,
            &headers,
            body.map(str::as_bytes),
            HTTP_MAX_TIME,
        ) {
            Ok(r) => {
                let _ = std::fs::write(out, &r.body);
                Answer {
                    code: r.status.to_string(),
                    json: r.json().unwrap_or_default(),
                    retry_after: r
                        .header("retry-after")
                        .map(|v| v.replace(' ', ""))
                        .filter(|v| !v.is_empty()),
                }
            }
            Err(e) => {
                let why = e.to_string().replace(['\\', '"'], "");
                let _ = std::fs::write(
                    out,
                    format!("{{\"lab_error\":\"no HTTP answer: {why}\"}}\n"),
                );
                Answer {
                    code: "000".into(),
                    ..Answer::default()
                }
            }
        }
    }

    /// `autonomy ARGS` with the lab's environment, bounded by `limit`; stdout to `out`,
    /// stderr to `err` (or into `out` after stdout).
    pub fn cli(&self, out: &Path, err: Option<&Path>, args: &[String], limit: Duration) -> CliRun {
        let mut cmd = process::command(&self.bin);
        cmd.args(args);
        for (k, v) in self.cli_env() {
            cmd.env(k, v);
        }
        match process::run_bounded(cmd, None, limit) {
            Ok(f) => {
                let mut stdout = f.output.stdout;
                match err {
                    Some(e) => {
                        let _ = std::fs::write(e, &f.output.stderr);
                    }
                    None => stdout.extend_from_slice(&f.output.stderr),
                }
                let _ = std::fs::write(out, stdout);
                CliRun {
                    rc: if f.timed_out {
                        124
                    } else {
                        process::shell_code(f.output.status)
                    },
                    ms: ms(f.elapsed),
                }
            }
            Err(e) => {
                let _ = std::fs::write(
                    out,
                    format!("lab_error: cannot run {}: {e}\n", self.bin.display()),
                );
                CliRun { rc: 127, ms: 0 }
            }
        }
    }

    /// Like [`Lab::cli`], only while the lab's CP runs (else rc 125 and a note in `out`).
    pub fn cp_cli(&mut self, out: &Path, err: Option<&Path>, args: &[String]) -> CliRun {
        if !self.alive() {
            let _ = std::fs::write(
                out,
                format!(
                    "lab_error: command not run (autonomy {}): the lab control plane is not running\n",
                    args.join(" ")
                ),
            );
            return CliRun { rc: 125, ms: 0 };
        }
        self.cli(out, err, args, CLI_TIMEOUT)
    }

    /// GETs `url` (into `out`) every 0.1 s, at most 100 times, until it answers 200; the last
    /// code and the time it took.
    pub fn poll_200(&mut self, url: &str, out: &Path) -> (String, u128) {
        let t0 = Instant::now();
        let mut code = "000".to_string();
        for _ in 0..100 {
            code = self.http("GET", url, out, None).code;
            if code == "200" {
                break;
            }
            std::thread::sleep(CP_POLL);
        }
        (code, ms(t0.elapsed()))
    }

    /// A check that could not run (a failure, with why).
    pub fn not_run(&mut self, id: &str, name: &str, why: &str) {
        self.report.check(
            id,
            name,
            CheckFile::None,
            "",
            kvs!["not_run" => why, "pass" => "false"],
        );
    }

    /// Starts the lab's CP (logging to `log`), GETs /v1/health into `health` and records
    /// check `id`. `false` when the CP did not start.
    pub fn start_check(
        &mut self,
        id: &str,
        name: &str,
        log: &Path,
        health: &Path,
        evidence: &str,
    ) -> bool {
        let started = self.lab_cp_start(log) == Started::Ready;
        let url = format!("{}/v1/health", self.base);
        let a = self.http("GET", &url, health, None);
        let status = a.at("/status");
        let pass = started && a.code == "200" && status == "ok";
        let (ready, err) = (self.ready_ms.clone(), self.start_error.clone());
        self.report.check(
            id,
            name,
            CheckFile::None,
            evidence,
            kvs![
                "cp_started" => started, "cp_ready_ms" => ready, "cp_start_error" => err,
                "http_code" => a.code, "status" => status, "pass" => pass,
            ],
        );
        started
    }

    /// Stops the CP if one runs and writes the report; returns (pass_count, total, result).
    pub fn finish(
        &mut self,
        title: &str,
        extra: Vec<(String, String)>,
    ) -> std::io::Result<(usize, usize, &'static str)> {
        if self.cp.is_some() {
            self.stop_cp();
        }
        let finished = utc_now();
        let mut env = kvs![
            "environment" => "local-SQLite",
            "port" => self.port,
            "operator" => self.operator,
            "rbac_enforcement" => 0,
            "data_dir" => self.data_dir.display(),
            "audit_dir" => self.audit_dir.display(),
            "autonomy_bin" => self.bin.display(),
            "evidence_dir" => self.dir.display(),
        ];
        env.extend(extra);
        let res = self.report.write(
            self.name,
            title,
            &self.dir,
            &self.started_at,
            &finished,
            &env,
        )?;
        self.say(&format!(
            "{} ({}/{} checks, {:.1}s)",
            res.2,
            res.0,
            res.1,
            self.t0.elapsed().as_secs_f64()
        ));
        Ok(res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_now_has_the_script_format() {
        let t = utc_now();
        assert_eq!(t.len(), 27, "{t}");
        assert!(
            t.ends_with('Z') && &t[10..11] == "T" && t.starts_with("20"),
            "{t}"
        );
    }

    #[test]
    fn values_print_like_pyj() {
        let v = serde_json::json!({"a": true, "b": null, "c": [1, "x"], "d": {"k": 1}, "e": 2});
        assert_eq!(py_out(v.pointer("/a")), "true");
        assert_eq!(py_out(v.pointer("/b")), "");
        assert_eq!(py_out(v.pointer("/c")), "1 x");
        assert_eq!(py_out(v.pointer("/d")), "{\"k\":1}");
        assert_eq!(py_out(v.pointer("/e")), "2");
        assert_eq!(py_out(v.pointer("/missing")), "");
        assert_eq!(csv(&[]), "none");
    }
}

//! `autonomy agent`: the edge agent (SPEC §9.4). The rules live in `autonomy_agent::Machine`;
//! this module only does the IO: the blocking HTTP transport, the hook (`sh -c CMD` in its own
//! process group, killed whole on timeout), the state dir (`state.json` and the token, written
//! with temp + fsync + rename + fsync of the dir), the boot id, the backoff and the log.
//!
//! A CP that is down, refusing or hung never ends the agent: every request has a deadline
//! and a failure waits a jittered backoff (1 s doubling to 60 s, reset on success) before the
//! same request again. It ends only with 75 (a reboot is needed), 6 (its token is refused) or a
//! local error (state dir, boot id, usage).

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use autonomy_agent::{
    AgentState, HookExit, HookOutcome, HookRun, HookStep, JobAction, Machine, Next, Refusal,
    REBOOT_EXIT_CODE,
};
use autonomy_api::device::{EnrollRequest, MAX_POLL_WAIT_SECONDS};
use autonomy_client::blocking::Transport;
use autonomy_client::{Api, ClientError, Token};
use clap::Args;

use crate::exit::{failure, usage, Exit};

/// The state file in the state dir.
const STATE_FILE: &str = "state.json";
/// The token an enrollment got, in the state dir.
const TOKEN_FILE: &str = "token";
/// Held (flock) while an agent runs on the state dir.
const LOCK_FILE: &str = "agent.lock";
/// Added to the poll's wait for its deadline.
const POLL_MARGIN: Duration = Duration::from_secs(15);
/// The deadline of a report or an enrollment.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The first and the longest pause after a failed request.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Bytes of the hook's stdout and stderr kept (the end of each).
const STDOUT_KEPT: usize = 64 * 1024;
const STDERR_KEPT: usize = 4 * 1024;
/// How long the hook's output pipes may stay open after it exited (a background child holding
/// them) before the agent stops reading.
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// Run the edge agent: poll the CP for an assignment, run the hook's steps, report each once.
///
/// The hook runs as `sh -c CMD` in its own process group with AUTONOMY_STEP
/// (download|install|verify), AUTONOMY_ACTION (install|revert), AUTONOMY_ARTIFACT_REF,
/// AUTONOMY_TARGET_DIGEST and AUTONOMY_PLAN_ID. Exit 0 is success; `install` exiting 75 asks for
/// a reboot: the agent saves its state, reports `rebooting` and exits 75 for its supervisor,
/// which reboots (see deploy/systemd/autonomy-agent.service); after the reboot (a new boot id)
/// it reports `verifying` and runs `verify`, whose last stdout line is the installed digest.
/// Any other exit, or a run past --hook-timeout (the whole process group is killed), is
/// `failed` with the tail of stderr.
///
/// The state dir holds state.json (the job, its step, the report in flight and its seq, the
/// boot id at install) and, after an enrollment, the device token (mode 0600), each written
/// with temp file + fsync + rename: after a SIGKILL or a power loss the agent resumes at the
/// step it was at, re-sends an unanswered report with the same seq, and reports each step once.
///
/// Examples:
///   autonomy agent --server http://cp:8080 --state-dir /var/lib/autonomy-agent \
///     --enroll-key "$KEY" --device-id amr-0007 --label site=berlin --hook /usr/libexec/ota-hook
///   autonomy agent --server http://cp:8080 --state-dir ./agent --token-file ./device.token \
///     --hook './hook.sh' --hook-timeout 900 --poll-wait 30
///
/// Exit codes: 75 a reboot is needed; 6 the token (or enroll key) was refused (401/403, e.g.
/// the device was revoked); 2 usage; 1 a local error (state dir, boot id file). A CP that is
/// down or hung is retried forever (jittered backoff 1–60 s).
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("identity").required(true).args(["token_file", "enroll_key"])))]
pub struct AgentArgs {
    /// Address of the control plane: `http://host[:port]`.
    #[arg(long, env = "AUTONOMY_SERVER", value_name = "URL", value_parser = crate::cli::parse_server)]
    server: String,

    /// Directory of the agent's state (state.json, the enrolled token); created if missing.
    #[arg(long, env = "AUTONOMY_AGENT_STATE_DIR", value_name = "DIR")]
    state_dir: PathBuf,

    /// File holding the device token (from `autonomy device register`).
    #[arg(
        long,
        env = "AUTONOMY_AGENT_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "enroll_key"
    )]
    token_file: Option<PathBuf>,

    /// Enroll key (from `autonomy device enroll-key create`): enroll as --device-id on first
    /// start, keep the token in the state dir (0600) and use it from then on.
    #[arg(
        long,
        env = "AUTONOMY_AGENT_ENROLL_KEY",
        hide_env_values = true,
        value_name = "KEY",
        requires = "device_id"
    )]
    enroll_key: Option<Token>,

    /// The device's id: the id to enroll as; with --token-file, sent as X-Autonomy-Device
    /// (what a CP without RBAC goes by).
    #[arg(long, env = "AUTONOMY_AGENT_DEVICE_ID", value_name = "ID")]
    device_id: Option<String>,

    /// A label to enroll with (`k=v`, repeatable; the enroll key's labels win).
    #[arg(long = "label", value_name = "K=V", requires = "enroll_key", value_parser = crate::command::labels::parse_label)]
    labels: Vec<(String, String)>,

    /// The hook, run as `sh -c CMD` for each step.
    #[arg(long, env = "AUTONOMY_AGENT_HOOK", value_name = "CMD")]
    hook: String,

    /// Seconds one hook step may run before its process group is killed (the step fails).
    #[arg(long, env = "AUTONOMY_AGENT_HOOK_TIMEOUT", value_name = "SECONDS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..=7 * 24 * 3600))]
    hook_timeout: u64,

    /// The file that names the current boot (a reboot changes it).
    #[arg(
        long,
        env = "AUTONOMY_AGENT_BOOT_ID_FILE",
        value_name = "FILE",
        default_value = "/proc/sys/kernel/random/boot_id"
    )]
    boot_id_file: PathBuf,

    /// Seconds a long poll waits for news (at most 60).
    #[arg(long, env = "AUTONOMY_AGENT_POLL_WAIT", value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_POLL_WAIT_SECONDS)))]
    poll_wait: u32,

    /// Run as `sh -c CMD` before each poll: its stdout is a JSON object of the device's
    /// conditions (e.g. {"docked": true, "idle": false, "battery_pct": 73}), sent with the
    /// poll for the plan's `policy.require`. A failure, a timeout (--conditions-timeout, the
    /// process group is killed) or bad output is a warning and the poll goes without them.
    #[arg(long, env = "AUTONOMY_AGENT_CONDITIONS_CMD", value_name = "CMD")]
    conditions_cmd: Option<String>,

    /// Seconds --conditions-cmd may run.
    #[arg(long, env = "AUTONOMY_AGENT_CONDITIONS_TIMEOUT", value_name = "SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    conditions_timeout: u64,
}

impl AgentArgs {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        crate::command::serve::init_logging(crate::command::serve::LogFormat::Text);
        fs::create_dir_all(&self.state_dir)
            .with_context(|| format!("cannot create the state dir {}", self.state_dir.display()))?;
        let lock = File::create(self.state_dir.join(LOCK_FILE))
            .with_context(|| format!("cannot open {}", self.state_dir.join(LOCK_FILE).display()))?;
        if lock.try_lock().is_err() {
            return Err(usage(format!(
                "another agent runs on the state dir {}",
                self.state_dir.display()
            )));
        }
        let boot_id = read_boot_id(&self.boot_id_file)?;
        let mut backoff = Backoff::new();
        let (token, device_id) = self.identity(&mut backoff)?;
        let api = Api::new()
            .with_token(Some(token))
            .with_device(device_id.clone())
            .with_user_agent(concat!("autonomy-agent/", env!("CARGO_PKG_VERSION")));
        let state_path = self.state_dir.join(STATE_FILE);
        let state = match fs::read(&state_path) {
            Ok(bytes) => AgentState::from_json(&bytes)
                .with_context(|| format!("cannot use {}", state_path.display()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                AgentState::new(device_id.clone().unwrap_or_default(), boot_id.clone())
            }
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("cannot read {}", state_path.display()))
                )
            }
        };
        if let Some(id) = &device_id {
            if !state.device_id.is_empty() && state.device_id != *id {
                return Err(usage(format!(
                    "the state dir {} belongs to device '{}', not '{id}'",
                    self.state_dir.display(),
                    state.device_id
                )));
            }
        }
        let (mut machine, persist) = Machine::resume(state, &boot_id);
        if persist.needed() || !state_path.exists() {
            self.save(&machine)?;
        }
        // What the device runs, while the agent does not know it (its first start): `verify`
        // prints the installed digest (SPEC §9.4), so ask it, outside any plan. The CP records
        // it at the first dispatch as the digest a rollback reverts to.
        let idle = machine.state().job.is_none() && machine.state().outbox.is_none();
        if idle && machine.state().installed_digest.is_empty() {
            if let Some(digest) = self.discover_digest() {
                let mut s = machine.into_state();
                s.installed_digest = digest;
                machine = Machine::resume(s, &boot_id).0;
                self.save(&machine)?;
            }
        }
        tracing::info!(
            server = %self.server,
            device = %machine.state().device_id,
            boot_id = %boot_id,
            installed_digest = %machine.state().installed_digest,
            "agent started"
        );
        let polls = Transport::new(
            self.server.clone(),
            Duration::from_secs(u64::from(self.poll_wait)) + POLL_MARGIN,
        );
        let calls = Transport::new(self.server.clone(), REQUEST_TIMEOUT);
        loop {
            let persist = match machine.next() {
                Next::Poll {
                    known_revision,
                    after_seconds,
                } => {
                    if after_seconds > 0 {
                        thread::sleep(Duration::from_secs(u64::from(after_seconds)));
                    }
                    let mut request = machine.poll_request(self.poll_wait);
                    if let Some(cmd) = &self.conditions_cmd {
                        match conditions_of(cmd, self.conditions_timeout) {
                            Ok(c) => request.conditions = c,
                            Err(why) => tracing::warn!(
                                "--conditions-cmd: {why}; polling without conditions"
                            ),
                        }
                    }
                    let answer = match polls.fetch(&api.device_poll(&request)) {
                        Ok(answer) => answer,
                        Err(e) => {
                            retry_or_end(&e, "poll", &mut backoff)?;
                            continue;
                        }
                    };
                    backoff.reset();
                    match &answer.assignment {
                        Some(a) => tracing::info!(
                            revision = answer.revision,
                            known_revision,
                            plan = %a.plan_id,
                            attempt = a.attempt,
                            action = %a.action,
                            target_digest = %a.target_digest,
                            "poll: assignment"
                        ),
                        None => tracing::debug!(revision = answer.revision, "poll: nothing to do"),
                    }
                    machine.on_poll(&answer)
                }
                Next::Report(report) => {
                    let result = match calls.fetch(&api.device_report(&report)) {
                        Ok(answer) => {
                            tracing::info!(
                                plan = %report.plan_id,
                                attempt = report.attempt,
                                seq = report.seq,
                                state = %report.state,
                                result = %answer.result,
                                assignment_state = %answer.assignment_state,
                                "report delivered"
                            );
                            Ok(answer)
                        }
                        Err(e) if e.api().is_some() && e.exit() == Exit::Conflict => {
                            let refusal = Refusal::from_message(
                                &e.api().map(|a| a.message.clone()).unwrap_or_default(),
                            );
                            tracing::warn!(
                                plan = %report.plan_id,
                                attempt = report.attempt,
                                seq = report.seq,
                                state = %report.state,
                                code = refusal.code(),
                                "report refused: the job is dropped: {refusal}"
                            );
                            Err(refusal)
                        }
                        Err(e) => {
                            retry_or_end(&e, "report", &mut backoff)?;
                            continue;
                        }
                    };
                    backoff.reset();
                    machine.on_report(result)
                }
                Next::RunHook(run) => {
                    tracing::info!(
                        step = %run.step,
                        action = %run.action,
                        plan = %run.plan_id,
                        attempt = run.attempt,
                        target_digest = %run.target_digest,
                        "hook: running"
                    );
                    let started = Instant::now();
                    let outcome = run_hook(&self.hook, &run, self.hook_timeout);
                    tracing::info!(
                        step = %run.step,
                        exit = ?outcome.exit,
                        secs = started.elapsed().as_secs_f64(),
                        stdout_last_line = %outcome.stdout_last_line,
                        "hook: finished"
                    );
                    machine.on_hook(run.step, &outcome)
                }
                Next::ExitForReboot => {
                    tracing::info!(
                        boot_id = %machine.state().boot_id,
                        "reboot requested: exiting {REBOOT_EXIT_CODE} for the supervisor"
                    );
                    return Ok(ExitCode::from(REBOOT_EXIT_CODE as u8));
                }
            };
            if persist.needed() {
                self.save(&machine)?;
            }
        }
    }

    /// The device token and id: from --token-file, or from the state dir after an earlier
    /// enrollment, or by enrolling now with --enroll-key.
    fn identity(&self, backoff: &mut Backoff) -> anyhow::Result<(Token, Option<String>)> {
        if let Some(file) = &self.token_file {
            let token = read_token(file)?;
            return Ok((token, self.device_id.clone()));
        }
        let Some(key) = &self.enroll_key else {
            return Err(usage("give --token-file or --enroll-key"));
        };
        let device_id = self.device_id.clone();
        let path = self.state_dir.join(TOKEN_FILE);
        if path.exists() {
            return Ok((read_token(&path)?, device_id));
        }
        let id = device_id.clone().unwrap_or_default();
        let request = EnrollRequest {
            id: id.clone(),
            labels: self.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
        };
        let transport = Transport::new(self.server.clone(), REQUEST_TIMEOUT);
        let api = Api::new().with_user_agent(concat!("autonomy-agent/", env!("CARGO_PKG_VERSION")));
        loop {
            match transport.fetch(&api.enroll(key, &request)) {
                Ok(enrolled) => {
                    write_atomic(&path, format!("{}\n", enrolled.token).as_bytes(), 0o600)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    tracing::info!(device = %enrolled.id, token_file = %path.display(), "enrolled");
                    let token = enrolled
                        .token
                        .parse()
                        .map_err(|e: String| anyhow::anyhow!("the enrollment's token: {e}"))?;
                    backoff.reset();
                    return Ok((token, Some(enrolled.id)));
                }
                Err(e) => match e.exit() {
                    Exit::Conflict => {
                        return Err(anyhow::Error::new(e).context(format!(
                            "cannot enroll as '{id}' (enrolled before? then its token is lost: \
                             register the device again, or give --token-file)"
                        )))
                    }
                    // Down, hung or 5xx: wait. A refused key: exit 6.
                    Exit::Unreachable | Exit::Server | Exit::Denied => {
                        retry_or_end(&e, "enroll", backoff)?
                    }
                    // A request the CP calls invalid would stay invalid.
                    _ => return Err(anyhow::Error::new(e).context("cannot enroll")),
                },
            }
        }
    }

    /// Runs `verify` with no plan (`AUTONOMY_PLAN_ID` empty) and takes its last stdout line as
    /// the installed digest; `None` (logged) when it fails or prints nothing.
    fn discover_digest(&self) -> Option<String> {
        let run = HookRun {
            step: HookStep::Verify,
            action: JobAction::Install,
            plan_id: String::new(),
            attempt: 0,
            artifact_ref: String::new(),
            target_digest: String::new(),
        };
        let outcome = run_hook(&self.hook, &run, self.hook_timeout);
        let digest = outcome.stdout_last_line.trim().to_string();
        if outcome.exit == HookExit::Code(0) && !digest.is_empty() {
            tracing::info!(installed_digest = %digest, "verify says what the device runs");
            Some(digest)
        } else {
            tracing::warn!(
                exit = ?outcome.exit,
                stderr = %outcome.stderr_tail,
                "verify (no plan) did not say what the device runs; the digest stays unknown \
                 until the first verify of a job (a rollback before then has nothing to revert to)"
            );
            None
        }
    }

    fn save(&self, machine: &Machine) -> anyhow::Result<()> {
        let path = self.state_dir.join(STATE_FILE);
        write_atomic(&path, &machine.state().to_json(), 0o600)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// 401 or 403: the token (or enroll key) is refused.
fn is_denied(e: &ClientError) -> bool {
    e.exit() == Exit::Denied
}

/// A refused token ends the agent (exit 6); anything else (unreachable, timed out, 5xx, an
/// unexpected answer) is logged and waited out.
fn retry_or_end(e: &ClientError, what: &str, backoff: &mut Backoff) -> anyhow::Result<()> {
    if is_denied(e) {
        return Err(failure(
            Exit::Denied,
            format!("the control plane refused the device's credentials ({what}): {e}"),
        ));
    }
    let pause = backoff.next_pause();
    tracing::warn!(
        "{what} failed; retrying in {:.1}s: {e}",
        pause.as_secs_f64()
    );
    thread::sleep(pause);
    Ok(())
}

/// Jittered exponential backoff: the n-th pause is uniform in [d/2, d] with d = 2ⁿ⁻¹ s,
/// capped at 60 s and never under 1 s.
struct Backoff {
    ceiling: Duration,
    seed: RandomState,
    n: u64,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            ceiling: BACKOFF_MIN,
            seed: RandomState::new(),
            n: 0,
        }
    }

    fn reset(&mut self) {
        self.ceiling = BACKOFF_MIN;
    }

    fn next_pause(&mut self) -> Duration {
        let d = self.ceiling;
        self.ceiling = (self.ceiling * 2).min(BACKOFF_MAX);
        let mut h = self.seed.build_hasher();
        h.write_u64(self.n);
        self.n += 1;
        let frac = (h.finish() % 1000) as f64 / 1000.0;
        (d / 2 + d.mul_f64(frac / 2.0)).max(BACKOFF_MIN)
    }
}

fn read_boot_id(path: &Path) -> anyhow::Result<String> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read the boot id file {}", path.display()))?;
    let id = text.trim();
    if id.is_empty() {
        return Err(failure(
            Exit::Other,
            format!("the boot id file {} is empty", path.display()),
        ));
    }
    Ok(id.to_string())
}

fn read_token(path: &Path) -> anyhow::Result<Token> {
    let text = fs::read_to_string(path).map_err(|e| {
        usage(format!(
            "cannot read the token file {}: {e}",
            path.display()
        ))
    })?;
    text.parse()
        .map_err(|e: String| usage(format!("the token file {}: {e}", path.display())))
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new file: a temp file
/// in the same dir (mode `mode`), fsync, rename over `path`, fsync of the dir.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// The last `cap` bytes written to a pipe.
#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
}

fn drain_tail(
    pipe: Option<impl Read + Send + 'static>,
    cap: usize,
) -> (Arc<Mutex<Tail>>, thread::JoinHandle<()>) {
    let tail = Arc::new(Mutex::new(Tail::default()));
    let out = tail.clone();
    let handle = thread::spawn(move || {
        let Some(mut pipe) = pipe else { return };
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let mut t = out.lock().unwrap_or_else(|e| e.into_inner());
                    t.bytes.extend_from_slice(&buf[..n]);
                    if t.bytes.len() > cap {
                        let cut = t.bytes.len() - cap;
                        t.bytes.drain(..cut);
                    }
                }
            }
        }
    });
    (tail, handle)
}

fn text_of(tail: &Arc<Mutex<Tail>>) -> String {
    let t = tail.lock().unwrap_or_else(|e| e.into_inner());
    String::from_utf8_lossy(&t.bytes).into_owned()
}

/// Runs one hook step: `sh -c CMD` with the step's environment, in its own process group,
/// stdin from /dev/null, stdout and stderr captured (their ends kept). Past `timeout_secs` the
/// whole group is killed with SIGKILL.
fn run_hook(cmd: &str, run: &HookRun, timeout_secs: u64) -> HookOutcome {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        .envs(run.env())
        // The enroll key is a secret the hook has no use for.
        .env_remove("AUTONOMY_AGENT_ENROLL_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return HookOutcome {
                exit: HookExit::NotStarted(e.to_string()),
                stdout_last_line: String::new(),
                stderr_tail: String::new(),
            }
        }
    };
    let (stdout, out_reader) = drain_tail(child.stdout.take(), STDOUT_KEPT);
    let (stderr, err_reader) = drain_tail(child.stderr.take(), STDERR_KEPT);
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                kill_group(child.id());
                let _ = child.kill();
                let _ = child.wait();
                break Err(HookExit::TimedOut {
                    seconds: timeout_secs,
                });
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                kill_group(child.id());
                let _ = child.kill();
                let _ = child.wait();
                break Err(HookExit::NotStarted(format!("cannot wait for it: {e}")));
            }
        }
    };
    // The pipes close when the last process holding them exits; a background child of the
    // hook may hold them longer: read what came within a grace period.
    let grace = Instant::now() + PIPE_GRACE;
    while !(out_reader.is_finished() && err_reader.is_finished()) && Instant::now() < grace {
        thread::sleep(Duration::from_millis(10));
    }
    let exit = match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => HookExit::Code(code),
            (None, Some(signal)) => HookExit::Signal(signal),
            (None, None) => HookExit::Code(-1),
        },
        Err(exit) => exit,
    };
    let out = text_of(&stdout);
    HookOutcome {
        exit,
        stdout_last_line: out
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or_default()
            .to_string(),
        stderr_tail: text_of(&stderr).trim().to_string(),
    }
}

/// Runs `--conditions-cmd` (`sh -c CMD`, own process group, killed whole after
/// `timeout_secs`) and reads its stdout as the poll's conditions, checked as the CP checks
/// them (`autonomy_core::device::validate_poll`), so a bad one costs a warning, not the poll.
fn conditions_of(
    cmd: &str,
    timeout_secs: u64,
) -> Result<BTreeMap<String, serde_json::Value>, String> {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        .env_remove("AUTONOMY_AGENT_ENROLL_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start it: {e}"))?;
    let (stdout, out_reader) = drain_tail(child.stdout.take(), STDOUT_KEPT);
    let (stderr, err_reader) = drain_tail(child.stderr.take(), STDERR_KEPT);
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) | Err(_) => {
                kill_group(child.id());
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {timeout_secs}s (killed)"));
            }
        }
    };
    let grace = Instant::now() + PIPE_GRACE;
    while !(out_reader.is_finished() && err_reader.is_finished()) && Instant::now() < grace {
        thread::sleep(Duration::from_millis(10));
    }
    if !status.success() {
        return Err(format!("exited with {status}: {}", text_of(&stderr).trim()));
    }
    let out = text_of(&stdout);
    let conditions: BTreeMap<String, serde_json::Value> = serde_json::from_str(out.trim())
        .map_err(|e| format!("its output is not a JSON object of conditions: {e}"))?;
    let probe = autonomy_api::device::PollRequest {
        conditions,
        ..Default::default()
    };
    autonomy_core::device::validate_poll(&probe)
        .map_err(|e| format!("bad {}: {}", e.field, e.message))?;
    Ok(probe.conditions)
}

/// SIGKILL to the process group `pgid` (through `kill(1)`: the workspace forbids `unsafe`).
fn kill_group(pgid: u32) {
    let result = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(e) = result {
        tracing::error!("cannot run kill(1) to end the hook's process group {pgid}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use autonomy_agent::{HookStep, JobAction};

    fn run_of(step: HookStep) -> HookRun {
        HookRun {
            step,
            action: JobAction::Install,
            plan_id: "p1".into(),
            attempt: 1,
            artifact_ref: "oci://r/a@sha256:aa".into(),
            target_digest: "sha256:aa".into(),
        }
    }

    #[test]
    fn the_hook_gets_its_env_and_its_output_is_kept() {
        let o = run_hook(
            "echo first; echo \"$AUTONOMY_STEP $AUTONOMY_ACTION $AUTONOMY_TARGET_DIGEST $AUTONOMY_PLAN_ID\"; echo; echo oops >&2; exit 3",
            &run_of(HookStep::Verify),
            10,
        );
        assert_eq!(o.exit, HookExit::Code(3));
        assert_eq!(o.stdout_last_line, "verify install sha256:aa p1");
        assert_eq!(o.stderr_tail, "oops");
    }

    #[test]
    fn a_hook_past_its_timeout_is_killed_with_its_group() {
        let dir = std::env::temp_dir().join(format!("agent-hook-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("child.pid");
        // A background child in the hook's group, and the hook waiting for it.
        let cmd = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let o = run_hook(&cmd, &run_of(HookStep::Install), 1);
        assert_eq!(o.exit, HookExit::TimedOut { seconds: 1 });
        let pid = fs::read_to_string(&pid_file).unwrap().trim().to_string();
        // The child was killed too: gone (or a zombie until init reaps it), within a bound.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .chars()
                .next();
            if matches!(state, None | Some('Z') | Some('X')) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the hook's child {pid} outlived the kill"
            );
            thread::sleep(Duration::from_millis(20));
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn stderr_keeps_only_its_end() {
        let o = run_hook(
            "i=0; while [ $i -lt 2000 ]; do echo \"line $i\" >&2; i=$((i+1)); done; exit 1",
            &run_of(HookStep::Download),
            10,
        );
        assert_eq!(o.exit, HookExit::Code(1));
        assert!(o.stderr_tail.len() <= STDERR_KEPT);
        assert!(o.stderr_tail.ends_with("line 1999"), "{}", o.stderr_tail);
    }

    #[test]
    fn state_files_are_replaced_whole_with_their_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("agent-write-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!dir.join(".token.tmp").exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn backoff_doubles_to_a_minute_with_jitter_and_resets() {
        let mut b = Backoff::new();
        let pauses: Vec<Duration> = (0..10).map(|_| b.next_pause()).collect();
        for (i, p) in pauses.iter().enumerate() {
            let ceiling = Duration::from_secs(1 << i.min(6)).min(BACKOFF_MAX);
            assert!(*p >= BACKOFF_MIN && *p <= ceiling, "{i}: {p:?}");
            assert!(*p >= ceiling / 2, "{i}: {p:?}");
        }
        b.reset();
        assert!(b.next_pause() <= BACKOFF_MIN);
    }

    #[test]
    fn conditions_cmd_output_is_checked_like_the_cp_checks_it() {
        let c = conditions_of(
            r#"echo '{"docked": true, "idle": false, "battery_pct": 73}'"#,
            5,
        )
        .unwrap();
        assert_eq!(c["docked"], serde_json::json!(true));
        assert_eq!(c["battery_pct"], serde_json::json!(73));
        for (cmd, want) in [
            ("echo not-json", "not a JSON object"),
            ("echo '[1]'", "not a JSON object"),
            (
                r#"echo '{"battery_pct": 120}'"#,
                "bad conditions.battery_pct",
            ),
            (r#"echo '{"docked": "yes"}'"#, "bad conditions.docked"),
            ("echo oops >&2; exit 3", "oops"),
            ("sleep 30", "no answer within 1s"),
        ] {
            let e = conditions_of(cmd, 1).unwrap_err();
            assert!(e.contains(want), "{cmd}: {e}");
        }
    }
}

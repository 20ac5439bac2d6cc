//! `autonomy agent` against a real CP (RBAC on, `--promoter-interval 0.1`) with a shell hook
//! the test writes: install exits 75 the first time (a reboot), the test changes the boot id
//! file (the reboot) and the agent, run again, verifies; the device becomes `verified` and the
//! plan `completed`. The agent SIGKILLed in each step in turn (the hook blocks at a chosen
//! step, so the kill lands there) still ends with one `verified` and each step applied once —
//! checked by the CP's answers (`applied`/`duplicate`, as the agent logs them: no endpoint
//! lists a device's reports) and the assignment's state after each kill. Also: a CP that is down at the agent's start, enrollment with an enroll
//! key (token 0600), and a revoked device (exit 6).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use autonomy_testkit::process::{self, shell_code, Signal};
use common::{free_port, silent_listener, Cp, TestDir, BIN};
use serde_json::{json, Value};

/// The target digest of every plan here.
fn digest() -> String {
    format!("sha256:{}", "ab".repeat(32))
}

/// What every test device runs before any plan (the hook's `verify` without a plan prints it).
fn base_digest() -> String {
    format!("sha256:{}", "0b".repeat(32))
}

/// How long the test waits for anything (each wait polls; this only bounds a broken run).
const LIMIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);

/// Polls `f` until it is true, failing the test after [`LIMIT`].
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(POLL);
    }
}

fn start_cp(args: &[&str]) -> (Cp, String) {
    let mut all = vec!["--promoter-interval", "0.1"];
    all.extend_from_slice(args);
    let cp = Cp::start(&all, &[("AUTONOMY_RBAC_ENFORCEMENT", "1")]);
    let admin = cp.admin_token();
    (cp, admin)
}

/// An operator call (admin token); the answer must have `status`.
fn op(cp: &Cp, admin: &str, method: &str, path: &str, body: Option<Value>, status: u16) -> Value {
    let auth = format!("Bearer {admin}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let url = format!("{}{path}", cp.url);
    let body = body.map(|b| b.to_string());
    let (s, text) = common::http(method, &url, &headers, body.as_deref().map(str::as_bytes));
    assert_eq!(s, status, "{method} {path}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Registers `id` and returns its token.
fn register(cp: &Cp, admin: &str, id: &str) -> String {
    let v = op(
        cp,
        admin,
        "POST",
        "/v1/devices",
        Some(json!({"id": id, "labels": {"site": "lab"}})),
        201,
    );
    v["token"].as_str().unwrap().to_string()
}

/// An engine plan over `device`, started (the promoter dispatches it).
fn start_plan(cp: &Cp, admin: &str, plan: &str, device: &str, reboot_required: bool) {
    let body = json!({
        "metadata": {"id": plan},
        "spec": {
            "artifact_ref": format!("oci://r/app@{}", digest()),
            "targets": {"devices": [device]},
            "policy": {"reboot_required": reboot_required},
        }
    });
    op(cp, admin, "POST", "/v1/rollouts", Some(body), 201);
    op(
        cp,
        admin,
        "POST",
        &format!("/v1/rollouts/{plan}/start"),
        None,
        200,
    );
}

/// The device's item in the plan's device list.
fn assignment(cp: &Cp, admin: &str, plan: &str, device: &str) -> Value {
    let v = op(
        cp,
        admin,
        "GET",
        &format!("/v1/rollouts/{plan}/devices"),
        None,
        200,
    );
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["device_id"] == device)
        .cloned()
        .unwrap_or_else(|| panic!("{device} is not in {plan}: {v}"))
}

fn state_of(cp: &Cp, admin: &str, plan: &str, device: &str) -> String {
    assignment(cp, admin, plan, device)["state"]
        .as_str()
        .unwrap()
        .to_string()
}

fn phase_of(cp: &Cp, admin: &str, plan: &str) -> String {
    let v = op(cp, admin, "GET", &format!("/v1/rollouts/{plan}"), None, 200);
    v["status"]["phase"].as_str().unwrap().to_string()
}

/// One report as the agent's log shows it delivered: (plan, attempt, seq, state, result).
type Delivered = (String, u64, u64, String, String);

/// The reports the agent's log shows delivered (`report delivered … result=applied|duplicate`),
/// in order, over every run of the agent.
fn delivered(log: &str) -> Vec<Delivered> {
    log.lines()
        .filter(|l| l.contains("report delivered"))
        .map(|l| {
            let field = |name: &str| -> String {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{name}=")))
                    .unwrap_or_else(|| panic!("no {name}= in {l}"))
                    .to_string()
            };
            (
                field("plan"),
                field("attempt").parse().unwrap(),
                field("seq").parse().unwrap(),
                field("state"),
                field("result"),
            )
        })
        .collect()
}

/// The reports the CP applied for `plan`, by seq, as its answers to the agent show them:
/// (attempt, seq, state). The CP stores reports but no endpoint lists them (and only the
/// SQLite backend may read its tables); its answer to each report is what the agent logs:
/// `applied`, or `duplicate` — a seq it had applied before (e.g. while the agent was killed
/// before the answer). Checks that no seq was applied twice, that a seq always names the same
/// step, and that nothing was refused.
fn applied_reports(log: &str, plan: &str) -> Vec<(u64, u64, String)> {
    let mut by_seq: std::collections::BTreeMap<(u64, u64), (String, usize)> = Default::default();
    for d in delivered(log).into_iter().filter(|d| d.0 == plan) {
        assert!(d.4 == "applied" || d.4 == "duplicate", "{d:?}");
        let entry = by_seq.entry((d.1, d.2)).or_insert((d.3.clone(), 0));
        assert_eq!(entry.0, d.3, "seq {} named two steps", d.2);
        if d.4 == "applied" {
            entry.1 += 1;
            assert_eq!(entry.1, 1, "seq {} was applied twice:\n{log}", d.2);
        }
    }
    assert!(!log.contains("report refused"), "{log}");
    by_seq
        .into_iter()
        .map(|((attempt, seq), (state, _))| (attempt, seq, state))
        .collect()
}

/// The hook: logs each run, blocks at the step named in `block` (writing
/// `blocked-<step>` with its pid) until `release` exists, then: download checks its env;
/// install writes the target digest to `digest` and exits 75 the first time; verify prints
/// `digest` (without a plan — the agent asking what the device runs — `running`).
const HOOK: &str = r#"#!/bin/sh
d=$1
echo "$AUTONOMY_STEP $AUTONOMY_ACTION $AUTONOMY_PLAN_ID" >> "$d/hook.log"
if [ -n "$AUTONOMY_PLAN_ID" ] && [ -e "$d/block" ] && [ "$(cat "$d/block")" = "$AUTONOMY_STEP" ]; then
  echo $$ > "$d/blocked-$AUTONOMY_STEP.tmp"
  mv "$d/blocked-$AUTONOMY_STEP.tmp" "$d/blocked-$AUTONOMY_STEP"
  i=0
  while [ ! -e "$d/release" ]; do
    i=$((i + 1))
    if [ "$i" -gt 1200 ]; then echo "never released" >&2; exit 1; fi
    sleep 0.05
  done
fi
case "$AUTONOMY_STEP" in
  download)
    [ -n "$AUTONOMY_ARTIFACT_REF" ] && [ "$AUTONOMY_ACTION" = install ] || { echo "bad env" >&2; exit 1; } ;;
  install)
    echo "$AUTONOMY_TARGET_DIGEST" > "$d/digest"
    if [ ! -e "$d/installed-once" ]; then : > "$d/installed-once"; exit 75; fi ;;
  verify)
    if [ -z "$AUTONOMY_PLAN_ID" ]; then cat "$d/running"; else cat "$d/digest"; fi ;;
esac
"#;

/// One simulated device: its dir (hook files, boot id, token), its state dir, its log.
struct Device {
    id: String,
    dir: PathBuf,
    _root: std::sync::Arc<TestDir>,
}

impl Device {
    fn new(id: &str) -> Device {
        let root = TestDir::new("agent");
        let dir = root.path().to_path_buf();
        fs::write(dir.join("hook.sh"), HOOK).unwrap();
        fs::write(dir.join("boot_id"), "boot-1\n").unwrap();
        fs::write(dir.join("running"), format!("{}\n", base_digest())).unwrap();
        Device {
            id: id.to_string(),
            dir,
            _root: root,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn set_token(&self, token: &str) {
        fs::write(self.path("device.token"), format!("{token}\n")).unwrap();
    }

    fn reboot(&self, n: u32) {
        fs::write(self.path("boot_id"), format!("boot-{n}\n")).unwrap();
    }

    fn block_at(&self, step: Option<&str>) {
        for s in ["download", "install", "verify"] {
            let _ = fs::remove_file(self.path(&format!("blocked-{s}")));
        }
        match step {
            Some(step) => fs::write(self.path("block"), step).unwrap(),
            None => {
                let _ = fs::remove_file(self.path("block"));
            }
        }
    }

    /// The agent's command line; its log is appended to `agent.log`.
    fn agent(&self, server: &str, identity: &[&str]) -> Command {
        let mut cmd = process::command(Path::new(BIN));
        cmd.arg("agent")
            .args(["--server", server])
            .arg("--state-dir")
            .arg(self.path("state"))
            .args(identity)
            .arg("--hook")
            .arg(format!(
                "sh {} {}",
                self.path("hook.sh").display(),
                self.dir.display()
            ))
            .args(["--hook-timeout", "120", "--poll-wait", "1"])
            .arg("--boot-id-file")
            .arg(self.path("boot_id"))
            .env("RUST_LOG", "info,autonomy::command::agent=debug");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("agent.log"))
            .unwrap();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        cmd
    }

    fn token_identity(&self) -> Vec<String> {
        vec![
            "--token-file".into(),
            self.path("device.token").display().to_string(),
        ]
    }

    fn spawn(&self, server: &str) -> Child {
        let identity = self.token_identity();
        let ids: Vec<&str> = identity.iter().map(String::as_str).collect();
        self.agent(server, &ids).spawn().unwrap()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }

    /// The hook's runs for a plan (the first start's `verify` without a plan left out).
    fn hook_runs(&self) -> Vec<String> {
        fs::read_to_string(self.path("hook.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.split(' ').nth(2).is_some_and(|p| !p.is_empty()))
            .map(|l| l.split(' ').next().unwrap_or("").to_string())
            .collect()
    }

    /// Waits for the hook to block at `step` (the agent must not exit meanwhile); returns the
    /// hook's pid.
    fn wait_blocked(&self, agent: &mut Child, step: &str) -> u32 {
        let marker = self.path(&format!("blocked-{step}"));
        wait_until(&format!("the hook to block at {step}"), || {
            if let Ok(Some(status)) = agent.try_wait() {
                panic!("the agent exited ({status}) before {step}:\n{}", self.log());
            }
            marker.exists()
        });
        fs::read_to_string(&marker).unwrap().trim().parse().unwrap()
    }

    /// Waits (bounded) for the agent to exit; its shell code.
    fn wait_exit(&self, agent: &mut Child) -> i32 {
        let status = process::wait_bounded(agent, LIMIT).unwrap_or_else(|| {
            let _ = agent.kill();
            panic!("the agent did not exit:\n{}", self.log())
        });
        shell_code(status)
    }
}

/// Bytes received and not yet read on the established connections of the CP at `url`
/// (`/proc/net/tcp`): a request waiting for a stopped CP.
fn unread_bytes_at(url: &str) -> u64 {
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let table = fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            let established = *f.get(3)? == "01";
            let rx = u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok()?;
            (local_port == port && established).then_some(rx)
        })
        .sum()
}

/// SIGKILLs the agent, then the hook's whole process group (what systemd's KillMode=
/// control-group does to a killed unit), and waits until the hook is gone.
fn kill_agent_and_hook(agent: &mut Child, hook_pid: u32) {
    agent.kill().unwrap();
    agent.wait().unwrap();
    let stat = fs::read_to_string(format!("/proc/{hook_pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 1..];
    let pgrp: u32 = after.split_whitespace().nth(2).unwrap().parse().unwrap();
    let status = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgrp}")])
        .status()
        .unwrap();
    assert!(status.success());
    wait_until("the hook to be gone", || {
        matches!(process::state(hook_pid), None | Some('Z') | Some('X'))
    });
}

fn kill(agent: &mut Child) {
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn install_reboot_verify_makes_the_device_verified_and_the_plan_completed() {
    let (cp, admin) = start_cp(&[]);
    let dev = Device::new("amr-0001");
    dev.set_token(&register(&cp, &admin, &dev.id));
    start_plan(&cp, &admin, "fw-1", &dev.id, true);

    let mut agent = dev.spawn(&cp.url);
    assert_eq!(dev.wait_exit(&mut agent), 75, "{}", dev.log());
    assert_eq!(state_of(&cp, &admin, "fw-1", &dev.id), "rebooting");
    assert!(dev.log().contains("reboot requested"), "{}", dev.log());
    // At its first start the agent asked `verify` (no plan) what the device runs, and its
    // reports carried it: the CP knows the digest a rollback would revert to.
    let asked = fs::read_to_string(dev.path("hook.log")).unwrap();
    assert_eq!(asked.lines().next(), Some("verify install "), "{asked}");
    assert_eq!(asked.matches("verify install \n").count(), 1, "{asked}");
    let device = op(
        &cp,
        &admin,
        "GET",
        &format!("/v1/devices/{}", dev.id),
        None,
        200,
    );
    assert_eq!(device["installed_digest"], json!(base_digest()), "{device}");

    // Started again in the same boot: the reboot is still owed; nothing is reported.
    let mut agent = dev.spawn(&cp.url);
    assert_eq!(dev.wait_exit(&mut agent), 75, "{}", dev.log());
    assert_eq!(applied_reports(&dev.log(), "fw-1").len(), 3);

    dev.reboot(2);
    let mut agent = dev.spawn(&cp.url);
    wait_until("verified", || {
        state_of(&cp, &admin, "fw-1", &dev.id) == "verified"
    });
    wait_until("completed", || phase_of(&cp, &admin, "fw-1") == "completed");
    kill(&mut agent);

    let item = assignment(&cp, &admin, "fw-1", &dev.id);
    assert_eq!(item["installed_digest"], json!(digest()));
    let reports = applied_reports(&dev.log(), "fw-1");
    let want = [
        "downloading",
        "installing",
        "rebooting",
        "verifying",
        "succeeded",
    ];
    assert_eq!(
        reports,
        want.iter()
            .enumerate()
            .map(|(i, s)| (1, i as u64 + 1, s.to_string()))
            .collect::<Vec<_>>()
    );
    assert_eq!(dev.hook_runs(), ["download", "install", "verify"]);
    // The state dir: state.json, no temp file left, the installed digest remembered.
    let state: Value =
        serde_json::from_slice(&fs::read(dev.path("state/state.json")).unwrap()).unwrap();
    assert_eq!(state["installed_digest"], json!(digest()));
    assert_eq!(state["job"], Value::Null);
    assert!(!dev.path("state/.state.json.tmp").exists());
}

#[test]
fn an_agent_killed_at_each_step_still_verifies_once() {
    let (cp, admin) = start_cp(&[]);
    let dev = Device::new("amr-0002");
    dev.set_token(&register(&cp, &admin, &dev.id));
    start_plan(&cp, &admin, "fw-2", &dev.id, true);
    let state = || state_of(&cp, &admin, "fw-2", &dev.id);

    // Killed while downloading, then while installing.
    for (step, cp_state) in [("download", "downloading"), ("install", "installing")] {
        dev.block_at(Some(step));
        let mut agent = dev.spawn(&cp.url);
        let hook = dev.wait_blocked(&mut agent, step);
        kill_agent_and_hook(&mut agent, hook);
        assert_eq!(state(), cp_state, "{}", dev.log());
    }
    // The install runs again and asks for the reboot.
    dev.block_at(Some("verify"));
    let mut agent = dev.spawn(&cp.url);
    assert_eq!(dev.wait_exit(&mut agent), 75, "{}", dev.log());
    assert_eq!(state(), "rebooting");
    // Killed while verifying, after the reboot.
    dev.reboot(2);
    let mut agent = dev.spawn(&cp.url);
    let hook = dev.wait_blocked(&mut agent, "verify");
    kill_agent_and_hook(&mut agent, hook);
    assert_eq!(state(), "verifying");
    // Killed after the CP applied `succeeded`, before the agent read the answer: the CP is
    // stopped (SIGSTOP) when the verify hook is let go, so the report waits in the CP's
    // socket; then the agent is stopped and the CP continued: it applies the report and
    // answers into the stopped agent's socket; then the agent is killed.
    let mut agent = dev.spawn(&cp.url);
    dev.wait_blocked(&mut agent, "verify");
    process::signal(cp.pid(), Signal::Stop).unwrap();
    fs::write(dev.path("release"), "").unwrap();
    wait_until("the report in the CP's socket", || {
        unread_bytes_at(&cp.url) > 0
    });
    process::signal(agent.id(), Signal::Stop).unwrap();
    process::signal(cp.pid(), Signal::Cont).unwrap();
    wait_until("the report applied", || state() == "verified");
    kill(&mut agent);
    assert!(!dev.log().contains("state=succeeded"), "{}", dev.log());
    // Started again, it sends the same report, same seq, and ends.
    dev.block_at(None);
    let mut agent = dev.spawn(&cp.url);
    wait_until("the re-sent report's answer", || {
        delivered(&dev.log()).iter().any(|d| d.3 == "succeeded")
    });
    wait_until("completed", || phase_of(&cp, &admin, "fw-2") == "completed");
    kill(&mut agent);
    assert_eq!(state(), "verified");

    // Each step applied once, in order, numbered 1..5 — none twice, none renumbered.
    let reports = applied_reports(&dev.log(), "fw-2");
    let states: Vec<&str> = reports.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(
        states,
        [
            "downloading",
            "installing",
            "rebooting",
            "verifying",
            "succeeded"
        ],
        "{}",
        dev.log()
    );
    let seqs: Vec<u64> = reports.iter().map(|r| r.1).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert!(reports.iter().all(|r| r.0 == 1));
    // Each step killed in its hook ran again, and only it; the report killed unanswered was
    // sent again, its step not run again.
    assert_eq!(
        dev.hook_runs(),
        ["download", "download", "install", "install", "verify", "verify"]
    );
    // The CP had applied `succeeded` while the agent was killed: the re-sent report (seq 5
    // again) was answered `duplicate`, and counted as delivered.
    let log = dev.log();
    let last = delivered(&log).pop().unwrap();
    assert_eq!(
        (last.2, last.3.as_str(), last.4.as_str()),
        (5, "succeeded", "duplicate"),
        "{log}"
    );
    assert_eq!(
        assignment(&cp, &admin, "fw-2", &dev.id)["installed_digest"],
        json!(digest())
    );
}

#[test]
fn a_cp_that_is_down_at_start_is_waited_for() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (mut cp, admin) = start_cp(&["--listen", &listen]);
    let dev = Device::new("amr-0003");
    dev.set_token(&register(&cp, &admin, &dev.id));
    start_plan(&cp, &admin, "fw-3", &dev.id, false);
    // No reboot in this plan: the install hook succeeds at once.
    fs::write(dev.path("installed-once"), "").unwrap();
    cp.sigterm();

    let mut agent = dev.spawn(&format!("http://{listen}"));
    wait_until("two failed polls", || {
        dev.log().matches("poll failed; retrying").count() >= 2
    });
    assert!(agent.try_wait().unwrap().is_none(), "{}", dev.log());
    cp.start_again();
    wait_until("verified", || {
        state_of(&cp, &admin, "fw-3", &dev.id) == "verified"
    });
    kill(&mut agent);
    assert!(
        dev.log().contains("cannot reach the control plane"),
        "{}",
        dev.log()
    );
    let states: Vec<String> = applied_reports(&dev.log(), "fw-3")
        .into_iter()
        .map(|r| r.2)
        .collect();
    assert_eq!(
        states,
        ["downloading", "installing", "verifying", "succeeded"]
    );
}

#[test]
fn a_cp_that_never_answers_is_timed_out_and_retried() {
    // Accepts connections, never answers: each poll ends at its deadline (wait + margin).
    let (_listener, url) = silent_listener();
    let dev = Device::new("amr-0005");
    dev.set_token("aut_0123456789abcdef0123456789abcdef");
    let mut agent = dev.spawn(&url);
    wait_until("a timed-out poll", || {
        dev.log().contains("poll failed; retrying")
    });
    assert!(dev.log().contains("timed out"), "{}", dev.log());
    assert!(agent.try_wait().unwrap().is_none(), "{}", dev.log());
    kill(&mut agent);
}

#[test]
fn an_enrolled_agent_keeps_its_token_and_exits_6_when_revoked() {
    let (cp, admin) = start_cp(&[]);
    let key = op(
        &cp,
        &admin,
        "POST",
        "/v1/enroll-keys",
        Some(json!({"labels": {"site": "lab"}, "max_uses": 1, "ttl_seconds": 600})),
        201,
    )["key"]
        .as_str()
        .unwrap()
        .to_string();
    let dev = Device::new("amr-0004");
    let identity = [
        "--enroll-key",
        &key,
        "--device-id",
        &dev.id,
        "--label",
        "k=v",
    ];
    let mut agent = dev.agent(&cp.url, &identity).spawn().unwrap();
    let token = dev.path("state/token");
    wait_until("the enrolled token", || token.exists());
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&token).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let device = op(
        &cp,
        &admin,
        "GET",
        &format!("/v1/devices/{}", dev.id),
        None,
        200,
    );
    assert_eq!(device["labels"]["site"], "lab");
    wait_until("a poll answered", || {
        dev.log().contains("poll: nothing to do")
    });
    kill(&mut agent);

    // Started again with the same (now spent) key: it uses the token it kept.
    let mut agent = dev.agent(&cp.url, &identity).spawn().unwrap();
    op(
        &cp,
        &admin,
        "POST",
        &format!("/v1/devices/{}/revoke", dev.id),
        None,
        200,
    );
    assert_eq!(dev.wait_exit(&mut agent), 6, "{}", dev.log());
    assert!(
        dev.log().contains("refused the device's credentials"),
        "{}",
        dev.log()
    );
    // A token file for a revoked device: exit 6 at once.
    dev.set_token(&fs::read_to_string(&token).unwrap());
    let mut agent = dev.spawn(&cp.url);
    assert_eq!(dev.wait_exit(&mut agent), 6, "{}", dev.log());
}

/// `--conditions-cmd`: its JSON is each poll's conditions (SPEC §8.7). Bad output is a
/// warning and the poll goes without conditions; an undocked device waits as `waiting_ready`
/// (its hook never runs) until the command says it is docked.
#[test]
fn the_conditions_cmd_holds_the_device_until_it_is_docked() {
    let (cp, admin) = start_cp(&[]);
    let dev = Device::new("amr-0009");
    dev.set_token(&register(&cp, &admin, &dev.id));
    let conditions = dev.path("conditions.json");
    fs::write(&conditions, "not json\n").unwrap();
    let body = json!({
        "metadata": {"id": "fw-dock"},
        "spec": {
            "artifact_ref": format!("oci://r/app@{}", digest()),
            "targets": {"devices": [dev.id]},
            "policy": {"require": {"docked": true}},
        }
    });
    op(&cp, &admin, "POST", "/v1/rollouts", Some(body), 201);
    op(&cp, &admin, "POST", "/v1/rollouts/fw-dock/start", None, 200);
    let identity = dev.token_identity();
    let ids: Vec<&str> = identity.iter().map(String::as_str).collect();
    let mut agent = dev
        .agent(&cp.url, &ids)
        .arg("--conditions-cmd")
        .arg(format!("cat {}", conditions.display()))
        .args(["--conditions-timeout", "5"])
        .spawn()
        .unwrap();
    wait_until("waiting_ready", || {
        state_of(&cp, &admin, "fw-dock", &dev.id) == "waiting_ready"
    });
    wait_until("the warning", || {
        dev.log().contains("polling without conditions")
    });
    fs::write(&conditions, r#"{"docked": false, "battery_pct": 55}"#).unwrap();
    wait_until("the conditions at the CP", || {
        let d = op(&cp, &admin, "GET", "/v1/devices/amr-0009", None, 200);
        d["conditions"] == json!({"docked": false, "battery_pct": 55})
    });
    assert_eq!(state_of(&cp, &admin, "fw-dock", &dev.id), "waiting_ready");
    assert!(dev.hook_runs().is_empty(), "{:?}", dev.hook_runs());
    let item = assignment(&cp, &admin, "fw-dock", &dev.id);
    assert!(
        item["message"]
            .as_str()
            .is_some_and(|m| m.contains("docked")),
        "{item}"
    );
    fs::write(&conditions, r#"{"docked": true, "battery_pct": 55}"#).unwrap();
    // Docked: the next poll gets the job; install asks for a reboot (exit 75).
    assert_eq!(dev.wait_exit(&mut agent), 75, "{}", dev.log());
    assert_eq!(state_of(&cp, &admin, "fw-dock", &dev.id), "rebooting");
    assert_eq!(dev.hook_runs(), ["download", "install"]);
}

//! Processes: a command with a clean environment, bounded runs and waits, signals to a pid
//! (through `kill(1)`: the workspace forbids `unsafe`), and `/proc` readings.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// How often [`wait_bounded`] polls.
pub const WAIT_POLL: Duration = Duration::from_millis(10);

/// Removes every inherited `AUTONOMY_*` variable, so the caller's shell cannot change what a
/// command sees.
pub fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AUTONOMY_") {
            cmd.env_remove(&key);
        }
    }
}

/// A `Command` for `bin` with a clean environment ([`clean_env`]).
pub fn command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    clean_env(&mut cmd);
    cmd
}

/// A command that ran to its end or to its limit.
#[derive(Debug)]
pub struct Finished {
    /// Its exit status (after the kill, when it timed out) and what it wrote.
    pub output: Output,
    /// Spawn to exit.
    pub elapsed: Duration,
    /// It did not end within the limit and was killed.
    pub timed_out: bool,
}

/// Runs `cmd` with stdin fed from `stdin` (else null) and stdout/stderr captured, killing it
/// after `limit`.
pub fn run_bounded(
    cmd: Command,
    stdin: Option<&[u8]>,
    limit: Duration,
) -> std::io::Result<Finished> {
    run_bounded_sampling(cmd, stdin, limit, WAIT_POLL, |_| {})
}

/// Like [`run_bounded`], calling `sample(pid)` every `poll` while the command runs (e.g. to
/// read its peak RSS).
pub fn run_bounded_sampling(
    mut cmd: Command,
    stdin: Option<&[u8]>,
    limit: Duration,
    poll: Duration,
    mut sample: impl FnMut(u32),
) -> std::io::Result<Finished> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn()?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let input = input.to_vec();
        thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let pid = child.id();
    let mut timed_out = false;
    let status = match wait_polling(&mut child, limit, poll, || sample(pid)) {
        Some(status) => status,
        None => {
            timed_out = true;
            let _ = child.kill();
            child.wait()?
        }
    };
    let elapsed = started.elapsed();
    Ok(Finished {
        output: Output {
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        },
        elapsed,
        timed_out,
    })
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        buf
    })
}

/// Polls `try_wait` every [`WAIT_POLL`] for at most `limit`; `None` if it is still running.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    wait_polling(child, limit, WAIT_POLL, || {})
}

/// Polls `try_wait` every `poll` for at most `limit`, calling `each` between polls.
pub fn wait_polling(
    child: &mut Child,
    limit: Duration,
    poll: Duration,
    mut each: impl FnMut(),
) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        each();
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(poll);
    }
}

/// The exit status as a shell reports it: the code, or 128 + the signal that ended it
/// (137 = SIGKILL, 143 = SIGTERM).
pub fn shell_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// The signals the kit sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
    Stop,
    Cont,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
            Signal::Stop => "STOP",
            Signal::Cont => "CONT",
        }
    }
}

/// `kill -<SIG> <pid>`. Only signal a child that is not yet reaped (else the pid may be
/// another process's).
pub fn signal(pid: u32, sig: Signal) -> std::io::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{}", sig.name()))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "kill -{} {pid} failed ({status})",
            sig.name()
        )))
    }
}

/// The state letter of a process (`R`, `S`, `T` = stopped, `Z`, …); `None` when it is gone.
pub fn state(pid: u32) -> Option<char> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    text[text.rfind(')')? + 1..].trim_start().chars().next()
}

/// A `kB` field of `/proc/<pid>/status` (e.g. `VmHWM:`, the peak RSS).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Peak resident set size so far (`VmHWM`), KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmHWM:")
}

/// utime + stime of a `/proc/.../stat` file, seconds.
pub fn cpu_seconds(stat_path: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(stat_path).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command name: state is field 3 of the file, utime 14, stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// `/proc/<pid>/io` counters (`wchar`, `syscw`, `write_bytes`, …).
pub fn proc_io(pid: u32) -> Option<BTreeMap<String, u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    Some(
        text.lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.trim().to_string(), v.trim().parse().ok()?))
            })
            .collect(),
    )
}

/// CPU seconds so far per thread name (`store-writer`, `tokio-rt-worker`, …).
pub fn cpu_by_thread(pid: u32) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let name = std::fs::read_to_string(dir.join("comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        if let Some(secs) = cpu_seconds(&dir.join("stat")) {
            *out.entry(name).or_insert(0.0) += secs;
        }
    }
    out
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 if unknown).
pub fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|v: &f64| *v > 0.0)
            .unwrap_or(100.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_cpu_times() {
        let dir = crate::TestDir::create("stat").unwrap();
        let path = dir.path().join("stat");
        // pid (comm with ) and spaces) state ppid ... utime=250 stime=50
        std::fs::write(
            &path,
            "123 (a b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0\n",
        )
        .unwrap();
        let secs = cpu_seconds(&path).unwrap();
        assert!((secs - 300.0 / clock_ticks()).abs() < 1e-9);
    }

    #[test]
    fn own_process_has_status_fields_and_a_state() {
        assert!(peak_rss_kib(std::process::id()).is_some_and(|v| v > 0));
        assert!(state(std::process::id()).is_some());
    }

    #[test]
    fn a_command_past_its_limit_is_killed() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let f = run_bounded(cmd, None, Duration::from_millis(200)).unwrap();
        assert!(f.timed_out);
        assert_eq!(shell_code(f.output.status), 137);
    }

    #[test]
    fn stdin_and_output_are_passed_through() {
        let f = run_bounded(Command::new("cat"), Some(b"hello"), Duration::from_secs(10)).unwrap();
        assert!(!f.timed_out);
        assert_eq!(f.output.stdout, b"hello");
        assert_eq!(shell_code(f.output.status), 0);
    }

    #[test]
    fn stop_and_continue_show_in_the_state() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        signal(pid, Signal::Stop).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while state(pid) != Some('T') {
            assert!(Instant::now() < deadline, "never stopped");
            thread::sleep(Duration::from_millis(10));
        }
        signal(pid, Signal::Cont).unwrap();
        signal(pid, Signal::Term).unwrap();
        let status = wait_bounded(&mut child, Duration::from_secs(5)).unwrap();
        assert_eq!(shell_code(status), 143);
    }
}

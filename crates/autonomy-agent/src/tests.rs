//! The machine against the CP's own report rules (`autonomy_core::device`, pure) and a
//! simulated device (hook and boot id): every step, every outcome, and a crash between any two
//! events — the state reloaded from its last persisted JSON — giving the same applied reports,
//! none twice.

use autonomy_api::device::{AssignmentAction, DeviceState, ReportResult};
use autonomy_api::Strategy;
use autonomy_core::device::{self as dev, Assignment};

use super::*;

const TARGET: &str = "sha256:aaaa";
const PREV: &str = "sha256:0000";
const ARTIFACT: &str = "oci://r/app@sha256:aaaa";
const T0: i64 = 1_800_000_000_000_000;

/// How the simulated device behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Behaviour {
    fail: Option<HookStep>,
    timeout: Option<HookStep>,
    /// `install` needs a reboot (exit 75) and the new digest is active only after it.
    reboot: bool,
    /// Comes back from the reboot on the previous digest.
    falls_back: bool,
    /// `verify` prints nothing.
    verify_silent: bool,
}

/// The simulated device: what it runs, what `install` staged, its boot.
#[derive(Debug, Clone)]
struct Device {
    active: String,
    staged: Option<String>,
    boot: u32,
    hook_runs: Vec<(HookStep, JobAction)>,
}

impl Device {
    fn boot_id(&self) -> String {
        format!("boot-{}", self.boot)
    }
}

/// The CP side: one assignment, moved by the core's pure rules.
#[derive(Debug, Clone)]
struct World {
    a: Assignment,
    reboot_required: bool,
    revision: u64,
    applied: Vec<ReportRequest>,
    duplicates: usize,
    refusals: Vec<String>,
    device: Device,
    behaviour: Behaviour,
}

impl World {
    fn new(behaviour: Behaviour) -> World {
        let a = Assignment::new("amr-1", "p1", T0);
        let a = dev::dispatch(&a, Some(PREV), T0).unwrap();
        World {
            a,
            reboot_required: behaviour.reboot,
            revision: 1,
            applied: Vec::new(),
            duplicates: 0,
            refusals: Vec::new(),
            device: Device {
                active: PREV.into(),
                staged: None,
                boot: 1,
                hook_runs: Vec::new(),
            },
            behaviour,
        }
    }

    fn poll(&self) -> PollResponse {
        PollResponse {
            revision: self.revision,
            poll_after_seconds: 1,
            assignment: dev::poll_view(&self.a, ARTIFACT, TARGET, self.reboot_required, 3600),
        }
    }

    fn report(&mut self, r: &ReportRequest) -> Result<ReportResponse, Refusal> {
        match dev::apply_report(&self.a, r, TARGET, self.reboot_required, T0 + 1) {
            Ok(out) => {
                if out.result == ReportResult::Applied {
                    self.applied.push(r.clone());
                    if out.assignment.state != self.a.state {
                        self.revision += 1;
                    }
                    self.a = out.assignment.clone();
                } else {
                    self.duplicates += 1;
                }
                Ok(out.response())
            }
            Err(refusal) => {
                self.refusals.push(refusal.code().to_string());
                Err(Refusal::from_message(&format!(
                    "{}: {refusal}",
                    refusal.code()
                )))
            }
        }
    }

    fn hook(&mut self, run: &HookRun) -> HookOutcome {
        self.device.hook_runs.push((run.step, run.action));
        let b = self.behaviour;
        if b.fail == Some(run.step) {
            return HookOutcome::code(3, format!("{} went wrong\n", run.step));
        }
        if b.timeout == Some(run.step) {
            return HookOutcome {
                exit: HookExit::TimedOut { seconds: 5 },
                stdout_last_line: String::new(),
                stderr_tail: String::new(),
            };
        }
        match run.step {
            HookStep::Download => HookOutcome::ok(""),
            HookStep::Install if self.reboot_required => {
                self.device.staged = Some(run.target_digest.clone());
                HookOutcome::code(REBOOT_EXIT_CODE, "")
            }
            HookStep::Install => {
                self.device.active = run.target_digest.clone();
                HookOutcome::ok("")
            }
            HookStep::Verify if b.verify_silent => HookOutcome::ok(""),
            HookStep::Verify => HookOutcome::ok(self.device.active.clone()),
        }
    }

    fn reboot(&mut self) {
        self.device.boot += 1;
        if let Some(staged) = self.device.staged.take() {
            if !self.behaviour.falls_back {
                self.device.active = staged;
            }
        }
    }

    fn states(&self) -> Vec<ReportState> {
        self.applied.iter().map(|r| r.state).collect()
    }
}

/// Where a crash happens, counted in actions (poll, report, hook run) of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crash {
    /// Before action k is done (after the state of the previous event was persisted).
    Before(usize),
    /// After action k was done (a report applied, a hook run) but before its event was
    /// handled and persisted.
    After(usize),
}

/// What one run produced.
#[derive(Debug)]
struct Run {
    world: World,
    state: AgentState,
    actions: usize,
    reboots: usize,
}

/// Drives the machine until it is idle and the CP has nothing new for it, reloading the state
/// from its last persisted JSON at `crash` and at each reboot.
fn drive(mut world: World, crash: Option<Crash>) -> Run {
    let fresh = Machine::new("amr-1", world.device.boot_id());
    let mut disk = fresh.state().to_json();
    let mut m = fresh;
    let mut actions = 0;
    let mut reboots = 0;
    let restart = |disk: &[u8], world: &World| {
        let state = AgentState::from_json(disk).unwrap();
        let (m, persist) = Machine::resume(state, &world.device.boot_id());
        let disk = if persist.needed() {
            m.state().to_json()
        } else {
            disk.to_vec()
        };
        (m, disk)
    };
    for _ in 0..200 {
        let next = m.next();
        if let Next::Poll { .. } = next {
            let offered = world.poll().assignment;
            let idle = m.state().job.is_none()
                && offered.as_ref().is_none_or(|a| {
                    m.state().last_job.as_ref()
                        == Some(&JobKey {
                            plan_id: a.plan_id.clone(),
                            attempt: a.attempt,
                        })
                        || a.action == AssignmentAction::Cancel
                });
            if idle && actions > 0 {
                return Run {
                    world,
                    state: m.into_state(),
                    actions,
                    reboots,
                };
            }
        }
        if next == Next::ExitForReboot {
            world.reboot();
            reboots += 1;
            (m, disk) = restart(&disk, &world);
            continue;
        }
        let k = actions;
        actions += 1;
        if crash == Some(Crash::Before(k)) {
            (m, disk) = restart(&disk, &world);
            continue;
        }
        let event: Box<dyn FnOnce(&mut Machine) -> Persist> = match next {
            Next::Poll { .. } => {
                let answer = world.poll();
                Box::new(move |m| m.on_poll(&answer))
            }
            Next::Report(r) => {
                let answer = world.report(&r);
                Box::new(move |m| m.on_report(answer))
            }
            Next::RunHook(run) => {
                let outcome = world.hook(&run);
                Box::new(move |m| m.on_hook(run.step, &outcome))
            }
            Next::ExitForReboot => unreachable!(),
        };
        if crash == Some(Crash::After(k)) {
            (m, disk) = restart(&disk, &world);
            continue;
        }
        if event(&mut m).needed() {
            disk = m.state().to_json();
        }
    }
    panic!(
        "the machine did not settle within 200 steps: {:?}",
        m.state()
    );
}

use ReportState as R;

/// Every class of run: the reports the CP applies, in order, and where the CP ends.
fn table() -> Vec<(&'static str, Behaviour, Vec<ReportState>, DeviceState)> {
    let b = Behaviour::default;
    vec![
        (
            "install, no reboot",
            b(),
            vec![R::Downloading, R::Installing, R::Verifying, R::Succeeded],
            DeviceState::Verified,
        ),
        (
            "install with a reboot",
            Behaviour {
                reboot: true,
                ..b()
            },
            vec![
                R::Downloading,
                R::Installing,
                R::Rebooting,
                R::Verifying,
                R::Succeeded,
            ],
            DeviceState::Verified,
        ),
        (
            "download fails",
            Behaviour {
                fail: Some(HookStep::Download),
                reboot: true,
                ..b()
            },
            vec![R::Downloading, R::Failed],
            DeviceState::Failed,
        ),
        (
            "install fails",
            Behaviour {
                fail: Some(HookStep::Install),
                reboot: true,
                ..b()
            },
            vec![R::Downloading, R::Installing, R::Failed],
            DeviceState::Failed,
        ),
        (
            "install times out",
            Behaviour {
                timeout: Some(HookStep::Install),
                ..b()
            },
            vec![R::Downloading, R::Installing, R::Failed],
            DeviceState::Failed,
        ),
        (
            "verify fails after the reboot",
            Behaviour {
                fail: Some(HookStep::Verify),
                reboot: true,
                ..b()
            },
            vec![
                R::Downloading,
                R::Installing,
                R::Rebooting,
                R::Verifying,
                R::Failed,
            ],
            DeviceState::Failed,
        ),
        (
            "verify prints no digest",
            Behaviour {
                verify_silent: true,
                ..b()
            },
            vec![R::Downloading, R::Installing, R::Verifying, R::Failed],
            DeviceState::Failed,
        ),
        (
            "the device falls back at its reboot",
            Behaviour {
                reboot: true,
                falls_back: true,
                ..b()
            },
            vec![
                R::Downloading,
                R::Installing,
                R::Rebooting,
                R::Verifying,
                R::Succeeded,
            ],
            DeviceState::RolledBack,
        ),
    ]
}

fn check_reports(name: &str, crash: Option<Crash>, run: &Run) {
    let seqs: Vec<u64> = run.world.applied.iter().map(|r| r.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "{name} {crash:?}: seqs {seqs:?}"
    );
    let states = run.world.states();
    let mut seen = std::collections::HashSet::new();
    assert!(
        states.iter().all(|s| seen.insert(*s)),
        "{name} {crash:?}: a step was applied twice: {states:?}"
    );
    assert!(
        run.world.refusals.is_empty(),
        "{name} {crash:?}: {:?}",
        run.world.refusals
    );
    assert!(run.state.job.is_none() && run.state.outbox.is_none());
}

#[test]
fn every_step_reports_once_in_order() {
    for (name, behaviour, expected, end) in table() {
        let run = drive(World::new(behaviour), None);
        assert_eq!(run.world.states(), expected, "{name}");
        assert_eq!(run.world.a.state, end, "{name}");
        assert_eq!(run.world.duplicates, 0, "{name}");
        check_reports(name, None, &run);
        assert_eq!(
            run.reboots,
            usize::from(expected.contains(&R::Rebooting)),
            "{name}"
        );
        // The device polls with the digest its last verify printed (none after a failure).
        let digest = match end {
            DeviceState::Verified => TARGET,
            DeviceState::RolledBack => PREV,
            _ => "",
        };
        assert_eq!(run.state.installed_digest, digest, "{name}");
        assert_eq!(
            run.state.last_job,
            Some(JobKey {
                plan_id: "p1".into(),
                attempt: 1
            })
        );
    }
}

#[test]
fn a_crash_between_any_two_events_changes_no_report() {
    for (name, behaviour, expected, end) in table() {
        let clean = drive(World::new(behaviour), None);
        let mut duplicates = 0;
        for k in 0..clean.actions + 2 {
            for crash in [Crash::Before(k), Crash::After(k)] {
                let run = drive(World::new(behaviour), Some(crash));
                assert_eq!(run.world.states(), expected, "{name} {crash:?}");
                assert_eq!(run.world.a.state, end, "{name} {crash:?}");
                check_reports(name, Some(crash), &run);
                // The same reports, with the same numbers.
                let numbered = |w: &World| -> Vec<(u64, ReportState)> {
                    w.applied.iter().map(|r| (r.seq, r.state)).collect()
                };
                assert_eq!(
                    numbered(&run.world),
                    numbered(&clean.world),
                    "{name} {crash:?}"
                );
                assert_eq!(run.state.installed_digest, clean.state.installed_digest);
                duplicates += run.world.duplicates;
                // A crash after a hook ran makes it run again; nothing else repeats a hook.
                let extra = run.world.device.hook_runs.len() - clean.world.device.hook_runs.len();
                assert!(extra <= 1, "{name} {crash:?}: {extra} extra hook runs");
            }
        }
        // Crashing after a report was applied but before its answer was persisted re-sends
        // it with the same seq: the CP says duplicate, which counts as delivered.
        assert!(duplicates > 0, "{name}: no crash ever re-sent a report");
    }
}

#[test]
fn a_hook_running_at_the_crash_runs_again() {
    let behaviour = Behaviour {
        reboot: true,
        ..Behaviour::default()
    };
    let clean = drive(World::new(behaviour), None);
    let steps = |w: &World| -> Vec<HookStep> { w.device.hook_runs.iter().map(|r| r.0).collect() };
    assert_eq!(
        steps(&clean.world),
        [HookStep::Download, HookStep::Install, HookStep::Verify]
    );
    // Actions: poll, downloading, download, installing, install, rebooting, verifying, ...
    let run = drive(World::new(behaviour), Some(Crash::After(4)));
    assert_eq!(
        steps(&run.world),
        [
            HookStep::Download,
            HookStep::Install,
            HookStep::Install,
            HookStep::Verify
        ]
    );
    assert_eq!(run.world.a.state, DeviceState::Verified);
}

fn view(action: AssignmentAction, attempt: u32) -> AssignmentView {
    AssignmentView {
        plan_id: "p1".into(),
        attempt,
        action,
        artifact_ref: ARTIFACT.into(),
        target_digest: if action == AssignmentAction::Revert {
            PREV.into()
        } else {
            TARGET.into()
        },
        previous_digest: Some(PREV.into()),
        reboot_required: true,
        deadline_at: None,
    }
}

fn poll(revision: u64, a: Option<AssignmentView>) -> PollResponse {
    PollResponse {
        revision,
        poll_after_seconds: 5,
        assignment: a,
    }
}

fn report_of(m: &Machine) -> ReportRequest {
    match m.next() {
        Next::Report(r) => r,
        other => panic!("expected a report, got {other:?}"),
    }
}

fn applied() -> Result<ReportResponse, Refusal> {
    Ok(ReportResponse {
        result: ReportResult::Applied,
        assignment_state: DeviceState::Downloading,
    })
}

#[test]
fn each_step_sends_what_the_spec_says() {
    let mut m = Machine::new("amr-1", "b1");
    assert_eq!(
        m.next(),
        Next::Poll {
            known_revision: 0,
            after_seconds: 0
        }
    );
    let p = m.poll_request(90);
    assert_eq!((p.wait_seconds, p.boot_id.as_str()), (60, "b1"));
    assert_eq!(p.installed_digest, "");

    // Nothing to do: wait what the CP asked, with the revision it gave.
    assert_eq!(m.on_poll(&poll(3, None)), Persist::Write);
    assert_eq!(
        m.next(),
        Next::Poll {
            known_revision: 3,
            after_seconds: 5
        }
    );
    assert_eq!(m.on_poll(&poll(3, None)), Persist::Nothing);

    assert!(m
        .on_poll(&poll(4, Some(view(AssignmentAction::Install, 1))))
        .needed());
    let r = report_of(&m);
    assert_eq!(
        (r.seq, r.state, r.boot_id.as_str()),
        (1, R::Downloading, "b1")
    );
    assert!(m.on_report(applied()).needed());
    let Next::RunHook(run) = m.next() else {
        panic!("{:?}", m.next())
    };
    assert_eq!(run.step, HookStep::Download);
    assert_eq!(
        run.env().map(|(k, v)| format!("{k}={v}")),
        [
            "AUTONOMY_STEP=download".to_string(),
            "AUTONOMY_ACTION=install".into(),
            format!("AUTONOMY_ARTIFACT_REF={ARTIFACT}"),
            format!("AUTONOMY_TARGET_DIGEST={TARGET}"),
            "AUTONOMY_PLAN_ID=p1".into(),
        ]
    );
    // An outcome of another step is stale: ignored.
    assert_eq!(
        m.on_hook(HookStep::Verify, &HookOutcome::ok(TARGET)),
        Persist::Nothing
    );
    assert!(m.on_hook(HookStep::Download, &HookOutcome::ok("")).needed());
    let r = report_of(&m);
    assert_eq!((r.seq, r.state), (2, R::Installing));
    assert_eq!(
        m.state()
            .job
            .as_ref()
            .unwrap()
            .boot_id_at_install
            .as_deref(),
        Some("b1")
    );
    assert!(m.on_report(applied()).needed());
    assert!(m
        .on_hook(HookStep::Install, &HookOutcome::code(75, ""))
        .needed());
    let r = report_of(&m);
    assert_eq!((r.seq, r.state), (3, R::Rebooting));
    assert!(m.on_report(applied()).needed());
    assert_eq!(m.next(), Next::ExitForReboot);
    // The same boot again (restarted without a reboot): still waiting for it.
    let (same, persist) = Machine::resume(m.state().clone(), "b1");
    assert_eq!(
        (same.next(), persist),
        (Next::ExitForReboot, Persist::Nothing)
    );
    // A new boot: verifying, then verify.
    let (mut m, persist) = Machine::resume(m.into_state(), "b2");
    assert_eq!(persist, Persist::Write);
    let r = report_of(&m);
    assert_eq!(
        (r.seq, r.state, r.boot_id.as_str()),
        (4, R::Verifying, "b2")
    );
    assert!(m.on_report(applied()).needed());
    assert!(matches!(
        m.next(),
        Next::RunHook(HookRun {
            step: HookStep::Verify,
            ..
        })
    ));
    assert!(m
        .on_hook(HookStep::Verify, &HookOutcome::ok(format!("{TARGET}  ")))
        .needed());
    let r = report_of(&m);
    assert_eq!(
        (
            r.seq,
            r.state,
            r.installed_digest.as_str(),
            r.boot_id.as_str()
        ),
        (5, R::Succeeded, TARGET, "b2")
    );
    // A duplicate counts as delivered.
    assert!(m
        .on_report(Ok(ReportResponse {
            result: ReportResult::Duplicate,
            assignment_state: DeviceState::Verified,
        }))
        .needed());
    assert_eq!(m.state().job, None);
    assert_eq!(m.state().installed_digest, TARGET);
    assert_eq!(m.poll_request(30).installed_digest, TARGET);
    // The same assignment offered again (the CP still says verifying): ignored.
    assert_eq!(
        m.on_poll(&poll(4, Some(view(AssignmentAction::Install, 1)))),
        Persist::Nothing
    );
    assert!(matches!(m.next(), Next::Poll { .. }));
}

#[test]
fn install_exit_zero_goes_straight_to_verify() {
    let mut m = Machine::new("amr-1", "b1");
    let _ = m.on_poll(&poll(1, Some(view(AssignmentAction::Install, 1))));
    let _ = m.on_report(applied());
    let _ = m.on_hook(HookStep::Download, &HookOutcome::ok(""));
    let _ = m.on_report(applied());
    let _ = m.on_hook(HookStep::Install, &HookOutcome::ok(""));
    assert_eq!(report_of(&m).state, R::Verifying);
}

#[test]
fn failures_carry_the_stderr_tail_within_the_limit() {
    for (step, outcome, starts) in [
        (
            HookStep::Download,
            HookOutcome::code(1, "disk full\n"),
            "download hook exited with code 1: disk full",
        ),
        (
            HookStep::Install,
            HookOutcome {
                exit: HookExit::TimedOut { seconds: 7 },
                stdout_last_line: String::new(),
                stderr_tail: String::new(),
            },
            "install hook timed out after 7s (its process group was killed)",
        ),
        (
            HookStep::Install,
            HookOutcome {
                exit: HookExit::Signal(9),
                stdout_last_line: String::new(),
                stderr_tail: "x".into(),
            },
            "install hook was killed by signal 9: x",
        ),
        (
            HookStep::Download,
            HookOutcome {
                exit: HookExit::NotStarted("no sh".into()),
                stdout_last_line: String::new(),
                stderr_tail: String::new(),
            },
            "download hook could not be started: no sh",
        ),
        // Exit 75 means a reboot only from install.
        (
            HookStep::Download,
            HookOutcome::code(75, ""),
            "download hook exited with code 75",
        ),
    ] {
        let mut m = Machine::new("amr-1", "b1");
        let _ = m.on_poll(&poll(1, Some(view(AssignmentAction::Install, 1))));
        let _ = m.on_report(applied());
        if step == HookStep::Install {
            let _ = m.on_hook(HookStep::Download, &HookOutcome::ok(""));
            let _ = m.on_report(applied());
        }
        assert!(m.on_hook(step, &outcome).needed());
        let r = report_of(&m);
        assert_eq!((r.state, r.message.as_str()), (R::Failed, starts));
        assert!(m.on_report(applied()).needed());
        assert_eq!(m.state().job, None);
        assert!(matches!(
            m.next(),
            Next::Poll {
                after_seconds: 0,
                ..
            }
        ));
    }
    let long = format!("start{}END", "é".repeat(5000));
    let msg = failure_message(HookStep::Verify, &HookOutcome::code(2, long));
    assert_eq!(msg.chars().count(), MAX_REPORT_MESSAGE_CHARS);
    assert!(
        msg.starts_with("verify hook exited with code 2: …"),
        "{msg}"
    );
    assert!(msg.ends_with("éEND"));
}

#[test]
fn a_revert_runs_the_same_steps_and_ends_reverted() {
    // The CP's rules: verified on attempt 1, then a rollback makes attempt 2 a revert.
    let mut world = World::new(Behaviour {
        reboot: true,
        ..Behaviour::default()
    });
    world = drive(world, None).world;
    assert_eq!(world.a.state, DeviceState::Verified);
    world.a = dev::recover(&world.a, Strategy::Rollback, T0 + 2).unwrap();
    world.revision += 1;
    let mut m = Machine::new("amr-1", world.device.boot_id());
    // The installed digest is the target (what the last verify printed).
    m.state.installed_digest = TARGET.into();
    m.state.last_job = Some(JobKey {
        plan_id: "p1".into(),
        attempt: 1,
    });
    let before = world.applied.len();
    let mut actions = Vec::new();
    for _ in 0..50 {
        let persist = match m.next() {
            Next::Poll { .. } if m.state().last_job.as_ref().is_some_and(|k| k.attempt == 2) => {
                break
            }
            Next::Poll { .. } => {
                let a = world.poll();
                m.on_poll(&a)
            }
            Next::Report(r) => {
                let a = world.report(&r);
                m.on_report(a)
            }
            Next::RunHook(run) => {
                actions.push((run.step, run.action, run.target_digest.clone()));
                let o = world.hook(&run);
                m.on_hook(run.step, &o)
            }
            Next::ExitForReboot => {
                world.reboot();
                m.on_boot(&world.device.boot_id())
            }
        };
        let _ = persist;
    }
    let states: Vec<ReportState> = world.applied[before..].iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        [
            R::Downloading,
            R::Installing,
            R::Rebooting,
            R::Verifying,
            R::Reverted
        ]
    );
    assert!(world.applied[before..].iter().all(|r| r.attempt == 2));
    assert_eq!(world.a.state, DeviceState::Reverted);
    assert!(actions
        .iter()
        .all(|(_, action, digest)| *action == JobAction::Revert && digest == PREV));
    assert_eq!(m.state().installed_digest, PREV);

    // A failing revert ends revert_failed.
    let mut m = Machine::new("amr-1", "b1");
    let _ = m.on_poll(&poll(1, Some(view(AssignmentAction::Revert, 2))));
    let _ = m.on_report(applied());
    let _ = m.on_hook(HookStep::Download, &HookOutcome::code(1, "gone"));
    assert_eq!(report_of(&m).state, R::RevertFailed);
}

#[test]
fn cancel_drops_the_job() {
    let mut m = Machine::new("amr-1", "b1");
    let _ = m.on_poll(&poll(1, Some(view(AssignmentAction::Install, 1))));
    let _ = m.on_report(applied());
    assert!(matches!(m.next(), Next::RunHook(_)));
    // A cancel of another plan changes nothing.
    let mut other = view(AssignmentAction::Cancel, 1);
    other.plan_id = "p2".into();
    assert_eq!(m.on_poll(&poll(1, Some(other))), Persist::Nothing);
    assert!(m.state().job.is_some());
    assert!(m
        .on_poll(&poll(2, Some(view(AssignmentAction::Cancel, 1))))
        .needed());
    assert_eq!(
        (m.state().job.as_ref(), m.state().outbox.as_ref()),
        (None, None)
    );
    assert!(matches!(m.next(), Next::Poll { .. }));
    // Offered again, the cancelled attempt is not started.
    assert_eq!(
        m.on_poll(&poll(2, Some(view(AssignmentAction::Install, 1)))),
        Persist::Nothing
    );
    assert!(matches!(m.next(), Next::Poll { .. }));
    // A new attempt is.
    assert!(m
        .on_poll(&poll(3, Some(view(AssignmentAction::Install, 2))))
        .needed());
    assert_eq!(report_of(&m).attempt, 2);
}

#[test]
fn every_refusal_drops_the_job_and_polls_again() {
    for message in [
        "superseded: attempt 1 is superseded: the current attempt is 2",
        "unknown_attempt: attempt 3 was never made: the current attempt is 2",
        "illegal_transition: illegal transition: timed_out → installing",
        "not_assigned: the device has no assignment in plan 'p1'",
        "something else entirely",
    ] {
        let refusal = Refusal::from_message(message);
        let code = message.split(':').next().unwrap();
        if message.contains(':') {
            assert_eq!(refusal.code(), code);
        } else {
            assert_eq!(refusal, Refusal::Conflict(message.into()));
        }
        let mut m = Machine::new("amr-1", "b1");
        let _ = m.on_poll(&poll(1, Some(view(AssignmentAction::Install, 1))));
        let _ = m.on_report(applied());
        let _ = m.on_hook(HookStep::Download, &HookOutcome::ok(""));
        assert!(m.on_report(Err(refusal)).needed(), "{message}");
        assert_eq!(m.state().job, None, "{message}");
        assert_eq!(m.state().outbox, None, "{message}");
        assert_eq!(
            m.next(),
            Next::Poll {
                known_revision: 1,
                after_seconds: 0
            }
        );
    }
    // A stale answer (nothing in flight) changes nothing.
    let mut m = Machine::new("amr-1", "b1");
    assert_eq!(m.on_report(applied()), Persist::Nothing);
}

#[test]
fn the_cp_s_timeout_then_retry_is_followed() {
    // Through the CP's rules: the device is timed out while installing; its next report is an
    // illegal transition; a retry gives attempt 2, which runs from the start.
    let behaviour = Behaviour::default();
    let mut world = World::new(behaviour);
    let mut m = Machine::new("amr-1", world.device.boot_id());
    let step = |m: &mut Machine, world: &mut World| match m.next() {
        Next::Poll { .. } => {
            let a = world.poll();
            m.on_poll(&a)
        }
        Next::Report(r) => {
            let a = world.report(&r);
            m.on_report(a)
        }
        Next::RunHook(run) => {
            let o = world.hook(&run);
            m.on_hook(run.step, &o)
        }
        Next::ExitForReboot => unreachable!(),
    };
    // poll, downloading, download, installing → install is next.
    for _ in 0..4 {
        let _ = step(&mut m, &mut world);
    }
    world.a = dev::timed_out(&world.a, T0, T0 + 5).unwrap();
    let _ = step(&mut m, &mut world); // install runs; verifying is queued
    let _ = step(&mut m, &mut world); // refused: illegal transition
    assert_eq!(world.refusals, ["illegal_transition"]);
    assert_eq!(m.state().job, None);
    world.a = dev::recover(&world.a, Strategy::Retry, T0 + 6).unwrap();
    world.a = dev::dispatch(&world.a, Some(TARGET), T0 + 7).unwrap();
    world.revision += 1;
    for _ in 0..20 {
        let _ = step(&mut m, &mut world);
    }
    assert_eq!(world.a.state, DeviceState::Verified);
    assert_eq!(world.a.attempt, 2);
}

#[test]
fn the_state_round_trips_and_bad_states_are_refused() {
    let mut m = Machine::new("amr-1", "b1");
    let _ = m.on_poll(&poll(9, Some(view(AssignmentAction::Install, 1))));
    let json = m.state().to_json();
    assert_eq!(AgentState::from_json(&json).unwrap(), *m.state());
    let text = String::from_utf8(json.clone()).unwrap();
    assert!(text.contains("\"phase\": \"download\""), "{text}");
    assert!(matches!(
        AgentState::from_json(b"{"),
        Err(StateError::Invalid(_))
    ));
    let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    v["version"] = 2.into();
    assert_eq!(
        AgentState::from_json(&serde_json::to_vec(&v).unwrap()),
        Err(StateError::Version(2))
    );
    let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    v["outbox"]["seq"] = 7.into();
    assert!(matches!(
        AgentState::from_json(&serde_json::to_vec(&v).unwrap()),
        Err(StateError::Invalid(_))
    ));
}

//! VAL12 — chaos beyond the plan: SIGKILL under write load (VAL12-01..05), a hung CP
//! (06..07), a full disk (08..12), a corrupt store at start-up (13..17). The same checks,
//! evidence files and report the lab script's `run_val12_lab` has always produced.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread::sleep;
use std::time::Duration;

use autonomy_testkit::ledger::{self, Event, Ledger, Listing, Load, PlanState, Rng, Writers};
use autonomy_testkit::process::{self, Signal};
use serde_json::{json, Value};

use crate::kvs;
use crate::lab::{csv, epoch_now, one_line, CliRun, Lab, Started, StopInfo};
use crate::report::CheckFile;

pub const PORT: u16 = 18997;
pub const PORT2: u16 = 18998;
/// Concurrent writers during the kill cycles.
pub const WRITERS: usize = 16;
/// SIGKILL + restart cycles under load.
pub const KILL_CYCLES: usize = 20;
/// Each kill comes a random 0.3 ...
const KILL_MIN_MS: u64 = 300;
/// ... to 1.5 s after the CP got ready.
const KILL_SPAN_MS: u64 = 1200;
/// Load after the last restart, before the writers stop.
const TAIL_MS: u64 = 1000;
/// Hard deadline of the writers (they are stopped earlier).
const WRITER_MAX_S: u64 = 300;
/// The CLI's --timeout against the SIGSTOPped CP ...
const HUNG_TIMEOUT: u64 = 2;
/// ... and the safety net around that CLI call.
const HUNG_NET: u64 = 10;
/// The tmpfs the full-disk CP runs on.
pub const FS_SIZE: &str = "4m";
/// Padded creates at most, while the disk fills.
const DISK_MAX: usize = 100;
/// spec.targets padding per padded create.
const PAD_BYTES: usize = 4096;
/// A CP on a corrupt store must refuse within this.
const START_FAIL_MS: u128 = 5000;
/// How long a probe `serve` on a corrupt store may run before it is killed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// sha256("autonomyops-lab-artifact"): the lab's well-formed digest (the script's LAB_DIGEST).
const LAB_DIGEST: &str = "7de99d52a406c1475a388f05f2378d34e6004694a46e962257b6f4f9cbed6b55";

fn good_artifact() -> String {
    format!("oci://registry.lab.local/val12/app@sha256:{LAB_DIGEST}")
}

fn good_fingerprint() -> String {
    format!("blake3:{LAB_DIGEST}")
}

/// The script's `plan_body ID false ARTIFACT FINGERPRINT val12 PURPOSE`.
fn plan_body(id: &str, purpose: &str) -> String {
    format!(
        r#"{{"metadata":{{"id":"{id}","labels":{{"lab":"val12","purpose":"{purpose}"}}}},"spec":{{"artifact_ref":"{}","target_lock_fingerprint":"{}"}},"draft":false}}"#,
        good_artifact(),
        good_fingerprint()
    )
}

fn padded_body(id: &str) -> String {
    format!(
        r#"{{"metadata":{{"id":"{id}","labels":{{"lab":"val12","purpose":"full-disk"}}}},"spec":{{"artifact_ref":"{}","target_lock_fingerprint":"{}","targets":{{"padding":"{}"}}}},"draft":false}}"#,
        good_artifact(),
        good_fingerprint(),
        "p".repeat(PAD_BYTES)
    )
}

fn retry_body(id: &str, reason: &str) -> String {
    format!(
        r#"{{"target":"rollout_plan","resource":"{id}","strategy":"retry","reason":"{reason}"}}"#
    )
}

/// `key=value` lines to pairs.
fn kv_lines(lines: &[String]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

fn kv_get(kv: &[(String, String)], key: &str) -> String {
    kv.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// Up to ten, then `,…(+N)`; `none` when empty.
fn few(xs: &[String]) -> String {
    if xs.is_empty() {
        return "none".into();
    }
    let mut s = xs[..xs.len().min(10)].join(",");
    if xs.len() > 10 {
        s.push_str(&format!(",…(+{})", xs.len() - 10));
    }
    s
}

fn count_lines(path: &Path, needle: &str, ignore_case: bool) -> usize {
    let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
    text.lines()
        .filter(|l| {
            if ignore_case {
                l.to_lowercase().contains(&needle.to_lowercase())
            } else {
                l.contains(needle)
            }
        })
        .count()
}

fn write(path: &Path, text: &str) {
    let _ = std::fs::write(path, text);
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::File::options()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(text.as_bytes());
    }
}

/// Runs a helper command (`dd`, `df`, `mount`, …); stdout+stderr and the shell exit code.
fn sh(program: &str, args: &[&str]) -> (i32, String) {
    match Command::new(program).args(args).output() {
        Ok(o) => {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&o.stderr));
            (process::shell_code(o.status), text)
        }
        Err(e) => (127, format!("{program}: {e}\n")),
    }
}

/// `dd if=/dev/zero of=FILE bs=BS`: fills the filesystem of `file` (until ENOSPC).
fn fill(file: &Path, bs: &str) -> (i32, String) {
    let of = format!("of={}", file.display());
    sh("dd", &["if=/dev/zero", &of, &format!("bs={bs}")])
}

fn df(path: &Path) -> String {
    sh("df", &["-k", &path.display().to_string()]).1
}

fn pretty1(v: &Value) -> String {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b" ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    let _ = serde::Serialize::serialize(v, &mut ser);
    String::from_utf8_lossy(&buf).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Plans and audit, read back
// ---------------------------------------------------------------------------------------------

/// Every plan (pages into `dir/page-NNN.json`) as `{plans, duplicates}` JSON in `out`; the
/// `key=value` lines the script printed (listed/unique/duplicates, pages, pagination_complete,
/// list_code).
fn plans_json(lab: &mut Lab, base: &str, dir: &Path, out: &Path) -> (Listing, Vec<String>) {
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::create_dir_all(dir);
    let listing = if lab.alive() {
        ledger::list_plans(base, 100, Duration::from_secs(15), |n, page| {
            if page.status == 200 {
                let _ = std::fs::write(dir.join(format!("page-{n:03}.json")), &page.body);
            }
        })
    } else {
        Listing {
            pages: 1,
            ..Listing::default()
        }
    };
    let mut lines = Vec::new();
    if listing.complete {
        let plans: serde_json::Map<String, Value> = listing
            .plans
            .iter()
            .map(|(id, p)| {
                (
                    id.clone(),
                    json!({"generation": p.generation, "phase": p.phase, "history": p.history}),
                )
            })
            .collect();
        write(
            out,
            &pretty1(&json!({"plans": plans, "duplicates": listing.duplicates})),
        );
        lines.push(format!("listed={}", listing.listed));
        lines.push(format!("unique={}", listing.plans.len()));
        let d: Vec<String> = listing.duplicates.iter().take(20).cloned().collect();
        lines.push(format!(
            "duplicates={}",
            if d.is_empty() {
                "none".into()
            } else {
                d.join(",")
            }
        ));
    } else {
        write(out, "{\"plans\":{},\"duplicates\":[]}\n");
        lines.push("listed=unreadable".into());
    }
    lines.push(format!("pages={}", listing.pages));
    lines.push(format!("pagination_complete={}", listing.complete));
    let code = if listing.last_code == 0 {
        "000".to_string()
    } else {
        listing.last_code.to_string()
    };
    lines.push(format!("list_code={code}"));
    let listing = if listing.complete {
        listing
    } else {
        Listing::default()
    };
    (listing, lines)
}

/// The retained audit store (read directly) against the committed plans whose id starts with
/// `prefix`: one plan.created success event each, rollback.executed success events ==
/// generation - 1 carrying generations 2..generation, no other success events, none for an
/// absent plan, and over the whole store no duplicate event id or seq and seqs 1..N.
fn audit_lines(audit_dir: &Path, plans: &BTreeMap<String, PlanState>, prefix: &str) -> Vec<String> {
    let plans: BTreeMap<&String, &PlanState> = plans
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .collect();
    let segments = segments(audit_dir);
    let (mut events, mut bad) = (Vec::<Value>::new(), 0usize);
    for seg in &segments {
        let raw = std::fs::read(seg).unwrap_or_default();
        for line in raw.split_inclusive(|b| *b == b'\n') {
            match serde_json::from_slice::<Value>(line) {
                Ok(v) => events.push(v),
                Err(_) => bad += 1,
            }
        }
    }
    let key = |v: &Value| py_key(v);
    let seqs: Vec<String> = events.iter().map(|e| key(&e["seq"])).collect();
    let ids: Vec<String> = events.iter().map(|e| key(&e["id"])).collect();
    let dups = |xs: &[String]| -> Vec<String> {
        let mut c: BTreeMap<&String, usize> = BTreeMap::new();
        for x in xs {
            *c.entry(x).or_default() += 1;
        }
        c.into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(k, _)| k.clone())
            .collect()
    };
    let (dup_seq, dup_id) = (dups(&seqs), dups(&ids));
    let contiguous = events
        .iter()
        .enumerate()
        .all(|(i, e)| e["seq"].as_u64() == Some(i as u64 + 1) && e["seq"].is_u64());
    let mut created: BTreeMap<String, usize> = BTreeMap::new();
    let mut rb: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut other: BTreeMap<String, usize> = BTreeMap::new();
    for e in &events {
        let r = e["resource"].as_str().unwrap_or_default();
        if !r.starts_with(prefix) || e["outcome"] != "success" {
            continue;
        }
        match e["event_type"].as_str() {
            Some("plan.created") => *created.entry(r.into()).or_default() += 1,
            Some("rollback.executed") => rb
                .entry(r.into())
                .or_default()
                .push(e["details"]["generation"].clone()),
            t => {
                *other
                    .entry(t.map_or("None".into(), String::from))
                    .or_default() += 1
            }
        }
    }
    let mut mismatch = Vec::new();
    for (pid, p) in &plans {
        let g = p.generation;
        let n = created.get(*pid).copied().unwrap_or(0);
        if n != 1 {
            mismatch.push(format!("{pid}:created={n}"));
        }
        let gens = rb.get(*pid).cloned().unwrap_or_default();
        let mut ints: Vec<u64> = gens.iter().filter_map(Value::as_u64).collect();
        ints.sort_unstable();
        if ints != (2..=g).collect::<Vec<u64>>() || gens.len() as u64 != g.saturating_sub(1) {
            mismatch.push(format!("{pid}:rollback_success={}/gen={g}", gens.len()));
        }
    }
    let orphans: Vec<String> = created
        .keys()
        .chain(rb.keys())
        .filter(|k| !plans.contains_key(k))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let ok = bad == 0
        && contiguous
        && dup_seq.is_empty()
        && dup_id.is_empty()
        && mismatch.is_empty()
        && orphans.is_empty()
        && other.is_empty();
    let counted = |m: &BTreeMap<String, usize>| {
        let v: Vec<String> = m.iter().map(|(k, n)| format!("{k}:{n}")).collect();
        csv(&v)
    };
    vec![
        format!("segments={}", segments.len()),
        format!("events={}", events.len()),
        format!("unparsable_lines={bad}"),
        format!("seq_contiguous_from_1={contiguous}"),
        format!("duplicate_seqs={}", few(&dup_seq)),
        format!("duplicate_event_ids={}", few(&dup_id)),
        format!("plans_checked={}", plans.len()),
        format!(
            "plan_created_success_events={}",
            created.values().sum::<usize>()
        ),
        format!(
            "rollback_executed_success_events={}",
            rb.values().map(Vec::len).sum::<usize>()
        ),
        format!(
            "expected_rollback_executed={}",
            plans
                .values()
                .map(|p| p.generation.saturating_sub(1))
                .sum::<u64>()
        ),
        format!("other_success_events={}", counted(&other)),
        format!("plans_not_one_to_one={}", few(&mismatch)),
        format!("events_for_absent_plans={}", few(&orphans)),
        format!("pass_audit={ok}"),
    ]
}

/// The audit store against the `val12-<name>-` plans (`val12-<name>-audit.txt`) and
/// `autonomy audit verify ARGS` (`val12-<name>-audit-verify.txt`), both in `ev`: the audit
/// check's pairs, the verify run and its output file.
fn audit_and_verify(
    lab: &Lab,
    ev: &Path,
    name: &str,
    audit: &Path,
    plans: &BTreeMap<String, PlanState>,
    args: &[String],
) -> (Vec<(String, String)>, CliRun, PathBuf) {
    let lines = audit_lines(audit, plans, &format!("val12-{name}-"));
    write(
        &ev.join(format!("val12-{name}-audit.txt")),
        &(lines.join("\n") + "\n"),
    );
    let out = ev.join(format!("val12-{name}-audit-verify.txt"));
    let mut all = vec!["audit".to_string(), "verify".to_string()];
    all.extend_from_slice(args);
    let run = lab.cli(&out, None, &all, crate::lab::CLI_TIMEOUT);
    (kv_lines(&lines), run, out)
}

/// A JSON scalar as a counting key (Python's `None` for null/absent).
fn py_key(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `audit-*.jsonl` directly in `dir`, sorted.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("audit-") && n.ends_with(".jsonl"))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// `audit-*.jsonl` anywhere below `dir` (as `find` lists them), sorted.
fn segments_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = segments(dir);
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(segments_below(&e.path()));
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

/// Runs every VAL12 scenario and writes the report; `true` when every check passed.
pub fn run(lab: &mut Lab, seed: u64) -> anyhow::Result<bool> {
    let mut rng = Rng::new(seed);
    kill_under_load(lab, seed, &mut rng);
    hung_cp(lab);
    // The store the first two scenarios wrote, stopped cleanly: the source of the corrupt copies.
    let source = lab.stop_cp().unwrap_or(StopInfo {
        rc: "not-running".into(),
        ms: 0,
        forced: false,
    });
    full_disk(lab);
    corrupt_store(lab, &source);

    lab.report.notes.push("a write that got no HTTP answer (the CP was SIGKILLed mid-request or down) is unacknowledged: it may or may not have been applied, and the checks allow both; every acknowledged one must be there".into());
    lab.report.notes.push("kill moments come from autonomy-lab's generator seeded with val12_seed (set VAL12_SEED to replay the same pauses; the CP's timing still varies)".into());
    let (_, _, result) = lab.finish(
        "VAL12 — chaos beyond the plan: SIGKILL under load, hung CP, full disk, corrupt store",
        kvs![
            "val12_seed" => seed, "writers" => WRITERS, "kill_cycles" => KILL_CYCLES,
            "second_port" => PORT2, "fs_size" => FS_SIZE,
        ],
    )?;
    Ok(result == "PASS")
}

// ---- VAL12-01..05: SIGKILL under write load ------------------------------------------------

fn kill_under_load(lab: &mut Lab, seed: u64, rng: &mut Rng) {
    let ev = lab.dir.join("kill");
    let log = lab.dir.join("val12-cp.log");
    let _ = std::fs::create_dir_all(ev.join("ledgers"));
    if !lab.start_check(
        "VAL12-01",
        "CP starts on a fresh data dir and answers health",
        &log,
        &ev.join("val12-health.json"),
        "kill/val12-health.json val12-cp.log",
    ) {
        let why = format!("the CP did not start: {}", lab.start_error);
        lab.not_run("VAL12-02", "SIGKILL under load", &why);
        lab.not_run("VAL12-03", "no acknowledged write lost", &why);
        lab.not_run("VAL12-04", "answers under load", &why);
        lab.not_run("VAL12-05", "audit after SIGKILLs", &why);
        return;
    }

    // The load, then KILL_CYCLES x (random pause, SIGKILL, restart on the same data dir).
    let windows = ev.join("val12-kill-windows.txt");
    let tl = ev.join("val12-kill-timeline.txt");
    write(&windows, "");
    write(
        &tl,
        &format!(
            "# VAL12 SIGKILL under load: {WRITERS} writers; {KILL_CYCLES} cycles of (pause {KILL_MIN_MS}-{} ms, SIGKILL, restart on the same data dir); seed {seed}\n",
            KILL_MIN_MS + KILL_SPAN_MS
        ),
    );
    let mut spec = Writers::new(&lab.base, WRITERS, "val12-kill");
    spec.operator = lab.operator.clone();
    spec.retry_reason = "val12-kill-load".into();
    spec.retry_share = 0.5;
    spec.seed = seed;
    spec.ledger_dir = Some(ev.join("ledgers"));
    spec.max_duration = Duration::from_secs(WRITER_MAX_S);
    spec.create_body = Arc::new(|id, w| {
        json!({"metadata": {"id": id, "labels": {"lab": "val12", "writer": format!("w{w:02}")}},
               "spec": {"artifact_ref": good_artifact(), "target_lock_fingerprint": good_fingerprint()},
               "draft": false})
        .to_string()
    });
    let load = match Load::start(spec) {
        Ok(l) => l,
        Err(e) => {
            let why = format!("the writers did not start: {e}");
            for (id, name) in [
                ("VAL12-02", "SIGKILL under load"),
                ("VAL12-03", "no acknowledged write lost"),
                ("VAL12-04", "answers under load"),
                ("VAL12-05", "audit after SIGKILLs"),
            ] {
                lab.not_run(id, name, &why);
            }
            return;
        }
    };
    lab.say(&format!(
        "{WRITERS} writers running; {KILL_CYCLES} SIGKILL cycles"
    ));
    let (mut cycles_ok, mut restart_max, mut restart_sum) = (0usize, 0u128, 0u128);
    let mut delays = Vec::new();
    let mut win_start = epoch_now();
    let (port, data, audit) = (lab.port, lab.data_dir.clone(), lab.audit_dir.clone());
    for cyc in 1..=KILL_CYCLES {
        let delay = KILL_MIN_MS + rng.next_u64() % (KILL_SPAN_MS + 1);
        delays.push(delay.to_string());
        sleep(Duration::from_millis(delay));
        let kpid = lab.pid();
        let t_kill = epoch_now();
        let killed = lab.kill9();
        let dead = killed.is_some();
        let (k_rc, k_ms) = killed.map_or(("alive".to_string(), String::new()), |k| {
            (k.rc, k.ms.to_string())
        });
        append(&windows, &format!("c{cyc:02} {win_start} {t_kill}\n"));
        let up = dead && lab.start_cp(port, &data, &audit, &log) == Started::Ready;
        win_start = epoch_now();
        let err = if lab.start_error.is_empty() {
            "none".to_string()
        } else {
            lab.start_error.clone()
        };
        append(
            &tl,
            &format!(
                "cycle={cyc} pause_ms={delay} killed_pid={kpid} kill_epoch={t_kill} confirmed_dead={dead} exit_code={k_rc} kill_ms={k_ms} restarted={up} ready_ms={} new_pid={} error={err}\n",
                lab.ready_ms,
                lab.pid()
            ),
        );
        if dead && up && k_rc == "137" {
            cycles_ok += 1;
        }
        if up {
            let r: u128 = lab.ready_ms.parse().unwrap_or(0);
            restart_sum += r;
            restart_max = restart_max.max(r);
        } else {
            let why = if lab.start_error.is_empty() {
                "SIGKILL not confirmed".into()
            } else {
                lab.start_error.clone()
            };
            lab.say(&format!("cycle {cyc}: the CP did not come back: {why}"));
            break;
        }
    }
    lab.say(&format!(
        "{cycles_ok}/{KILL_CYCLES} SIGKILL cycles clean (restart max {restart_max} ms)"
    ));

    // Load after the last restart, then stop the writers (bounded: 15 s).
    sleep(Duration::from_millis(TAIL_MS));
    append(&windows, &format!("final {win_start} {}\n", epoch_now()));
    let summary = load.stop(Duration::from_secs(15));
    let w_forced = summary.threads_still_running > 0;
    let w_rc = i32::from(w_forced);
    let per_writer: serde_json::Map<String, Value> = summary
        .per_writer
        .iter()
        .map(|(w, c)| (w.clone(), json!({"attempt": c.attempt, "ack": c.ack, "answer": c.answer, "noanswer": c.noanswer})))
        .collect();
    write(
        &ev.join("val12-writers-summary.json"),
        &(json!({"per_writer": per_writer, "threads_still_running": summary.threads_still_running, "writers": WRITERS}).to_string() + "\n"),
    );
    write(
        &ev.join("val12-writers.err"),
        &summary
            .ledger_file_errors
            .iter()
            .map(|e| format!("{e}\n"))
            .collect::<String>(),
    );

    // What the CP holds now, against the ledgers (read back from their files).
    let base = lab.base.clone();
    let (listing, p_kv) = plans_json(
        lab,
        &base,
        &ev.join("list-pages"),
        &ev.join("val12-kill-plans.json"),
    );
    let v_kv = kill_verify(
        &ev.join("ledgers"),
        &listing,
        &windows,
        &ev.join("val12-kill-detail.json"),
    );
    write(
        &ev.join("val12-kill-verify.txt"),
        &(p_kv
            .iter()
            .chain(&v_kv)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"),
    );
    let (p_kv, v_kv) = (kv_lines(&p_kv), kv_lines(&v_kv));
    let n_windows = kv_get(&v_kv, "windows");
    let min_acks: i64 = kv_get(&v_kv, "min_acks_per_window").parse().unwrap_or(0);
    let avg_ready = if cycles_ok > 0 {
        restart_sum / KILL_CYCLES as u128
    } else {
        0
    };
    let repairs = count_lines(&log, "tail repaired", false);
    let pass = cycles_ok == KILL_CYCLES
        && w_rc == 0
        && !w_forced
        && n_windows == (KILL_CYCLES + 1).to_string()
        && min_acks > 0;
    let check_file = ev.join("val12-kill-check.txt");
    lab.report.check(
        "VAL12-02",
        &format!("{WRITERS} writers, {KILL_CYCLES} x SIGKILL at a random moment + restart; load acknowledged between every two kills"),
        CheckFile::Write(check_file.clone()),
        "kill/val12-kill-timeline.txt kill/val12-kill-windows.txt kill/ledgers/ kill/val12-writers-summary.json val12-cp.log",
        kvs![
            "writers" => WRITERS, "cycles" => KILL_CYCLES, "cycles_ok" => cycles_ok,
            "pause_ms" => csv(&delays), "restart_ready_ms_max" => restart_max,
            "restart_ready_ms_avg" => avg_ready, "writers_exit" => w_rc, "writers_forced_stop" => w_forced,
            "acks_per_window" => kv_get(&v_kv, "acks_per_window"), "min_acks_per_window" => min_acks,
            "no_answer" => kv_get(&v_kv, "no_answer"), "audit_tail_repairs_at_start" => repairs, "pass" => pass,
        ],
    );

    let pass = kv_get(&v_kv, "pass_durable") == "true"
        && kv_get(&p_kv, "pagination_complete") == "true"
        && kv_get(&v_kv, "lost") == "0";
    let mut m = kvs![
        "acknowledged_writes_checked" => kv_get(&v_kv, "acknowledged_writes_checked"),
        "lost" => kv_get(&v_kv, "lost"),
    ];
    let picked = |k: &str| {
        [
            "pages",
            "pagination_complete",
            "list_code",
            "acknowledged_creates",
            "acknowledged_retries",
            "duplicates_listed",
        ]
        .contains(&k)
            || [
                "attempted_",
                "lost_",
                "plans_",
                "history_",
                "phase_",
                "unacknowledged_",
                "malformed_",
            ]
            .iter()
            .any(|p| k.starts_with(p))
    };
    m.extend(p_kv.iter().chain(&v_kv).filter(|(k, _)| picked(k)).cloned());
    m.push(("pass".into(), pass.to_string()));
    lab.report.check(
        "VAL12-03",
        "after the last restart: every acknowledged create present, every acknowledged retry reflected, nothing never attempted",
        CheckFile::Append(check_file.clone()),
        "kill/val12-kill-verify.txt kill/val12-kill-detail.json kill/val12-kill-plans.json kill/list-pages/ kill/ledgers/",
        m,
    );

    let panics = count_lines(&log, "panic", true);
    let pass = kv_get(&v_kv, "pass_answers") == "true" && panics == 0;
    lab.report.check(
        "VAL12-04",
        "every answer under load is a 2xx or a 503 (never a 500 or an unexpected 4xx); no panic",
        CheckFile::Append(check_file.clone()),
        "kill/val12-kill-detail.json kill/ledgers/ val12-cp.log",
        kvs![
            "answers" => kv_get(&v_kv, "answers"), "unexpected_answers" => kv_get(&v_kv, "unexpected_answers"),
            "no_answer_kinds" => kv_get(&v_kv, "no_answer_kinds"), "panic_lines" => panics, "pass" => pass,
        ],
    );

    let audit_dir = lab.audit_dir.clone();
    let (a_kv, v, verify_out) = audit_and_verify(lab, &ev, "kill", &audit_dir, &listing.plans, &[]);
    let pass = kv_get(&a_kv, "pass_audit") == "true" && v.rc == 0;
    let mut m: Vec<(String, String)> = a_kv
        .iter()
        .filter(|(k, _)| {
            !k.starts_with("pass_") && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        })
        .cloned()
        .collect();
    m.extend(kvs!["verify_exit" => v.rc, "verify_output" => one_line(&verify_out), "pass" => pass]);
    lab.report.check(
        "VAL12-05",
        "audit verify passes; success audit events match committed changes one to one",
        CheckFile::Append(check_file),
        "kill/val12-kill-audit.txt kill/val12-kill-audit-verify.txt",
        m,
    );
}

/// The writers' ledgers (read back from their files) against the plans listed after the last
/// restart; writes the detail JSON and returns the script's `key=value` lines.
fn kill_verify(
    ledger_dir: &Path,
    listing: &Listing,
    windows_path: &Path,
    detail: &Path,
) -> Vec<String> {
    let (ledger, files, malformed) = Ledger::read_dir(ledger_dir).unwrap_or_default();
    let verdict = ledger.verify(&listing.plans, "");
    let acked_creates = ledger.acked_creates();
    let acked_retries = ledger.acked_retries();
    let ack_times = ledger.ack_times();
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    let mut noanswer: BTreeMap<String, usize> = BTreeMap::new();
    for l in &ledger.lines {
        match &l.event {
            Event::Ack { code, .. } => {
                *answers
                    .entry(format!("{}:{code}", l.kind.as_str()))
                    .or_default() += 1
            }
            Event::Answer { code, error } => {
                *answers
                    .entry(format!("{}:{code}:{error}", l.kind.as_str()))
                    .or_default() += 1
            }
            Event::NoAnswer { error } => *noanswer.entry(error.clone()).or_default() += 1,
            Event::Attempt => {}
        }
    }
    let windows: Vec<(String, usize)> = std::fs::read_to_string(windows_path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() != 3 {
                return None;
            }
            let (lo, hi): (f64, f64) = (f[1].parse().ok()?, f[2].parse().ok()?);
            Some((
                f[0].to_string(),
                ack_times.iter().filter(|t| lo <= **t && **t <= hi).count(),
            ))
        })
        .collect();
    let checked = acked_creates.len() + acked_retries.len();
    let lost = verdict.lost_creates.len() + verdict.lost_retries.len();
    let win_map: serde_json::Map<String, Value> =
        windows.iter().map(|(k, n)| (k.clone(), json!(n))).collect();
    write(
        detail,
        &pretty1(&json!({
            "lost_creates": verdict.lost_creates, "lost_retries": verdict.lost_retries,
            "unattempted_plans": verdict.unattempted, "over_applied": verdict.over_applied,
            "history_mismatch": verdict.history_mismatch, "phase_unexpected": verdict.phase_unexpected,
            "unexpected_answers": verdict.unexpected_answers.iter().take(200).collect::<Vec<_>>(),
            "acks_per_window": win_map,
            "unacknowledged_creates_present": verdict.unacknowledged_creates_present,
        })),
    );
    let counted = |m: &BTreeMap<String, usize>| {
        csv(&m
            .iter()
            .map(|(k, n)| format!("{k}:{n}"))
            .collect::<Vec<_>>())
    };
    let durable = checked > 0
        && lost == 0
        && listing.duplicates.is_empty()
        && verdict.durable()
        && malformed == 0;
    vec![
        format!("ledgers={files}"),
        format!("attempted_creates={}", ledger.attempted_creates().len()),
        format!(
            "attempted_retries={}",
            ledger.attempted_retries().values().sum::<u64>()
        ),
        format!("acknowledged_creates={}", acked_creates.len()),
        format!("acknowledged_retries={}", acked_retries.len()),
        format!("acknowledged_writes_checked={checked}"),
        format!("lost={lost}"),
        format!("lost_creates={}", few(&verdict.lost_creates)),
        format!("lost_retries={}", few(&verdict.lost_retries)),
        format!("plans_listed={}", listing.plans.len()),
        format!("duplicates_listed={}", few(&listing.duplicates)),
        format!("plans_never_attempted={}", few(&verdict.unattempted)),
        format!("plans_over_applied={}", few(&verdict.over_applied)),
        format!(
            "history_len_ne_generation={}",
            few(&verdict.history_mismatch)
        ),
        format!("phase_unexpected={}", few(&verdict.phase_unexpected)),
        format!(
            "unacknowledged_creates_present={}",
            verdict.unacknowledged_creates_present.len()
        ),
        format!("no_answer={}", noanswer.values().sum::<usize>()),
        format!("no_answer_kinds={}", counted(&noanswer)),
        format!("answers={}", counted(&answers)),
        format!("unexpected_answers={}", verdict.unexpected_answers.len()),
        format!("malformed_ledger_lines={malformed}"),
        format!(
            "acks_per_window={}",
            windows
                .iter()
                .map(|(_, n)| n.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
        format!("windows={}", windows.len()),
        format!(
            "min_acks_per_window={}",
            windows.iter().map(|(_, n)| *n).min().unwrap_or(0)
        ),
        format!("pass_durable={durable}"),
        format!(
            "pass_answers={}",
            verdict.unexpected_answers.is_empty() && malformed == 0
        ),
    ]
}

// ---- VAL12-06..07: a hung CP (SIGSTOP) ------------------------------------------------------

fn hung_cp(lab: &mut Lab) {
    let ev = lab.dir.join("hung");
    let (id, key) = ("val12-hung-1", "val12-hung-key-1");
    let _ = std::fs::create_dir_all(&ev);
    if !lab.alive() {
        lab.not_run(
            "VAL12-06",
            "hung CP: CLI exits 3 within --timeout",
            "no lab CP is running",
        );
        lab.not_run(
            "VAL12-07",
            "hung CP: after SIGCONT the Idempotency-Key retry applies once",
            "no lab CP is running",
        );
        return;
    }
    let base = lab.base.clone();
    let created = lab.http(
        "POST",
        &format!("{base}/v1/rollouts"),
        &ev.join("create.json"),
        Some(&plan_body(id, "hung-cp")),
    );
    let gen0 = created.at("/plan/metadata/generation");
    let pid = lab.pid();
    let mut state = String::new();
    if let Some(cp) = lab.cp.as_ref() {
        let _ = cp.signal(Signal::Stop);
        let p = cp.pid().unwrap_or_default();
        for _ in 0..50 {
            state = process::state(p).map_or("gone".into(), String::from);
            if state == "T" || state == "t" {
                break;
            }
            sleep(Duration::from_millis(20));
        }
    }
    lab.say(&format!("CP pid {pid} SIGSTOPped (state {state})"));

    let limit_ms = u128::from((HUNG_TIMEOUT + 2) * 1000);
    let mut all_ok = true;
    let mut res = Vec::new();
    let execute = |k: &str| -> Vec<String> {
        [
            "rollback",
            "execute",
            "--target",
            "rollout_plan",
            "--resource",
            id,
            "--strategy",
            "retry",
            "--reason",
            "val12-hung-cp",
            "--idempotency-key",
            k,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    for what in ["get", "execute", "health"] {
        let args: Vec<String> = match what {
            "get" => vec!["rollout".into(), "get".into(), id.into()],
            "execute" => execute(key),
            _ => vec!["health".into()],
        };
        write(
            &ev.join(format!("cli-{what}-hung.cmd")),
            &format!(
                "$ timeout -k 2 {HUNG_NET} autonomy --timeout {HUNG_TIMEOUT} {}\n",
                args.join(" ")
            ),
        );
        let out = ev.join(format!("cli-{what}-hung.txt"));
        let mut full = vec!["--timeout".to_string(), HUNG_TIMEOUT.to_string()];
        full.extend(args);
        let CliRun { rc, ms: took } = lab.cli(&out, None, &full, Duration::from_secs(HUNG_NET));
        let net = rc == 124 || rc == 137;
        let text = String::from_utf8_lossy(&std::fs::read(&out).unwrap_or_default()).to_lowercase();
        let names_to = text.contains("timed out") || text.contains("timeout");
        let names_addr = text.contains(&format!("127.0.0.1:{}", lab.port));
        let within = took < limit_ms;
        let ok = rc == 3 && !net && names_to && names_addr && within;
        all_ok &= ok;
        res.push(format!("{what}:exit={rc}:ms={took}:safety_net_fired={net}:names_timeout={names_to}:names_address={names_addr}"));
    }
    let pass = created.code == "201" && state == "T" && all_ok;
    let check_file = ev.join("val12-hung-check.txt");
    lab.report.check(
        "VAL12-06",
        &format!("SIGSTOPped CP: CLI get/execute/health exit 3 within --timeout {HUNG_TIMEOUT} (+2 s), naming the timeout and the address"),
        CheckFile::Write(check_file.clone()),
        "hung/cli-get-hung.txt hung/cli-execute-hung.txt hung/cli-health-hung.txt hung/create.json",
        kvs![
            "plan_create_code" => created.code, "cp_pid" => pid, "cp_state" => state,
            "cli_timeout_s" => HUNG_TIMEOUT, "limit_ms" => limit_ms, "safety_net_s" => HUNG_NET,
            "results" => csv(&res), "get_error" => one_line(&ev.join("cli-get-hung.txt")), "pass" => pass,
        ],
    );

    // SIGCONT: health comes back, the same rollback execute (same Idempotency-Key) is applied once.
    if let Some(cp) = lab.cp.as_ref() {
        let _ = cp.signal(Signal::Cont);
    }
    let (h_code, h_ms) = lab.poll_200(
        &format!("{base}/v1/health"),
        &ev.join("health-after-cont.json"),
    );
    let mut args: Vec<String> = ["-o", "json", "--timeout", "10"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(execute(key));
    let retry_out = ev.join("retry-same-key.json");
    let r = lab.cp_cli(&retry_out, Some(&ev.join("retry-same-key.err")), &args);
    let rj: Value =
        serde_json::from_slice(&std::fs::read(&retry_out).unwrap_or_default()).unwrap_or_default();
    let at = |v: &Value, p: &str| crate::lab::py_out(v.pointer(p));
    let (r_out, r_ex, r_gen) = (
        at(&rj, "/outcome"),
        at(&rj, "/execution_id"),
        at(&rj, "/generation"),
    );
    let replay_out = ev.join("replay-same-key.json");
    let p = lab.cp_cli(&replay_out, Some(&ev.join("replay-same-key.err")), &args);
    let pj: Value =
        serde_json::from_slice(&std::fs::read(&replay_out).unwrap_or_default()).unwrap_or_default();
    let p_ex = at(&pj, "/execution_id");
    let after = lab.http(
        "GET",
        &format!("{base}/v1/rollouts/{id}"),
        &ev.join("plan-after.json"),
        None,
    );
    let (g_after, ph_after) = (
        after.at("/plan/metadata/generation"),
        after.at("/status/phase"),
    );
    let (ev_n, ev_ids) = exec_events(&lab.audit_dir, id);
    let want_gen = gen0.parse::<u64>().unwrap_or(0) + 1;
    let pass = h_code == "200"
        && r.rc == 0
        && r_out == "success"
        && !r_ex.is_empty()
        && p.rc == 0
        && p_ex == r_ex
        && after.code == "200"
        && g_after == want_gen.to_string()
        && ph_after == "active"
        && ev_n == "1"
        && ev_ids == r_ex;
    lab.report.check(
        "VAL12-07",
        "after SIGCONT: health 200; the same execute with the same Idempotency-Key succeeds and was applied exactly once",
        CheckFile::Append(check_file),
        "hung/health-after-cont.json hung/retry-same-key.json hung/replay-same-key.json hung/plan-after.json",
        kvs![
            "health_after_cont" => h_code, "health_after_cont_ms" => h_ms, "retry_exit" => r.rc,
            "retry_outcome" => r_out, "retry_execution_id" => r_ex, "retry_generation" => r_gen,
            "replay_exit" => p.rc, "replay_execution_id" => p_ex, "generation_before" => gen0,
            "generation_after" => g_after, "phase_after" => ph_after,
            "rollback_executed_success_events" => ev_n, "event_execution_ids" => ev_ids, "pass" => pass,
        ],
    );
}

/// Success `rollback.executed` events of `resource`: (count, their execution ids or `none`);
/// (`-1`, `unreadable`) when a segment does not parse.
fn exec_events(audit_dir: &Path, resource: &str) -> (String, String) {
    let mut ex = Vec::new();
    for seg in segments(audit_dir) {
        let raw = std::fs::read(&seg).unwrap_or_default();
        for line in raw.split_inclusive(|b| *b == b'\n') {
            let Ok(e) = serde_json::from_slice::<Value>(line) else {
                return ("-1".into(), "unreadable".into());
            };
            if e["resource"] == resource
                && e["event_type"] == "rollback.executed"
                && e["outcome"] == "success"
            {
                ex.push(
                    e["details"]["execution_id"]
                        .as_str()
                        .unwrap_or("?")
                        .to_string(),
                );
            }
        }
    }
    (ex.len().to_string(), csv(&ex))
}

// ---- VAL12-08..12: a full disk ----------------------------------------------------------------

/// A tmpfs this lab mounted; unmounted on drop (lazily if it is busy).
struct Mount(PathBuf);

impl Mount {
    fn unmount(self) -> bool {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            std::mem::forget(self);
        }
        ok
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// The writes while the disk fills, and what they said.
#[derive(Default)]
struct DiskWrites {
    log: PathBuf,
    ok_ids: Vec<String>,
    refused_ids: Vec<String>,
    other: Vec<String>,
    bad_503: usize,
}

/// One write's answer: code, error code, Retry-After.
struct Written {
    code: String,
    err: String,
    retry_after: String,
}

fn disk_write(lab: &mut Lab, w: &mut DiskWrites, base: &str, kind: &str, id: &str) -> Written {
    let (url, body) = match kind {
        "create" => (format!("{base}/v1/rollouts"), plan_body(id, "full-disk")),
        "padded" => (format!("{base}/v1/rollouts"), padded_body(id)),
        _ => (
            format!("{base}/v1/rollback/execute"),
            retry_body(id, "val12-full-disk"),
        ),
    };
    let a = lab.http("POST", &url, &lab.work.join("w.json"), Some(&body));
    let err = a.at("/error/code");
    let ra = a.retry_after.clone().unwrap_or_default();
    let none = |s: &str| {
        if s.is_empty() {
            "none".to_string()
        } else {
            s.to_string()
        }
    };
    append(
        &w.log,
        &format!(
            "kind={kind} id={id} http_code={} error_code={} retry_after={}\n",
            a.code,
            none(&err),
            none(&ra)
        ),
    );
    match a.code.as_str() {
        "200" | "201" => {
            if kind != "execute" {
                w.ok_ids.push(id.into());
            }
        }
        "503" => {
            if kind != "execute" {
                w.refused_ids.push(id.into());
            }
            if err != "unavailable" || ra.is_empty() {
                w.bad_503 += 1;
            }
        }
        code => w.other.push(format!("{kind}:{id}:{code}")),
    }
    Written {
        code: a.code,
        err,
        retry_after: ra,
    }
}

/// N x GET /v1/ready, 0.2 s apart; the codes comma-separated.
fn ready_codes(lab: &mut Lab, w: &DiskWrites, base: &str, n: usize) -> String {
    let mut codes = Vec::new();
    let out = lab.work.join("ready.json");
    for j in 1..=n {
        let a = lab.http("GET", &format!("{base}/v1/ready"), &out, None);
        append(
            &w.log,
            &format!("GET /v1/ready -> {} {}\n", a.code, one_line(&out)),
        );
        codes.push(a.code);
        if j < n {
            sleep(Duration::from_millis(200));
        }
    }
    csv(&codes)
}

fn full_disk(lab: &mut Lab) {
    let ev = lab.dir.join("disk");
    let mnt = lab.work.join("val12-fullfs");
    let base = format!("http://127.0.0.1:{PORT2}");
    let log = ev.join("val12-fulldisk-cp.log");
    let _ = std::fs::create_dir_all(&ev);
    let _ = std::fs::create_dir_all(&mnt);
    let (data, audit) = (mnt.join("data"), mnt.join("audit"));
    let mnt_s = mnt.display().to_string();

    // VAL12-08: a size-limited tmpfs (mounted as root), a CP on it, the disk filling up.
    let (m_rc, m_out) = sh(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={FS_SIZE}"),
            "tmpfs",
            &mnt_s,
        ],
    );
    write(&ev.join("mount.err"), &m_out);
    let mounted = m_rc == 0;
    let mount = mounted.then(|| Mount(mnt.clone()));
    let mut why = String::new();
    if !mounted {
        let uid = sh("id", &["-u"]).1.trim().to_string();
        why = format!(
            "cannot mount the test filesystem: mount -t tmpfs -o size={FS_SIZE} tmpfs {mnt_s} failed as uid {uid} (mounting needs root): {}",
            one_line(&ev.join("mount.err"))
        );
    }
    let fs_txt = ev.join("val12-fs.txt");
    write(
        &fs_txt,
        &format!(
            "# mount -t tmpfs -o size={FS_SIZE} tmpfs {mnt_s}: mounted={mounted}\n{}",
            df(&mnt)
        ),
    );
    let mut started = false;
    if mounted {
        if lab.start_cp(PORT2, &data, &audit, &log) == Started::Ready {
            started = true;
            lab.say(&format!(
                "full-disk CP pid {} ready on 127.0.0.1:{PORT2} (data and audit on a {FS_SIZE} tmpfs)",
                lab.pid()
            ));
        } else {
            why = format!("the CP on the tmpfs did not start: {}", lab.start_error);
        }
    }
    let check_file = ev.join("val12-disk-check.txt");
    if !started {
        lab.report.check(
            "VAL12-08",
            &format!("full disk: a CP on a {FS_SIZE} tmpfs; writes go from 201 to 503 as it fills"),
            CheckFile::Write(check_file),
            "disk/val12-fs.txt disk/mount.err",
            kvs!["mounted" => mounted, "cp_started" => started, "reason" => why, "pass" => "false"],
        );
        lab.not_run("VAL12-09", "full disk: writes 503, reads work", &why);
        lab.not_run("VAL12-10", "full disk: /v1/ready 503", &why);
        lab.not_run("VAL12-11", "full disk: no half-written plan", &why);
        lab.not_run("VAL12-12", "full disk: recovery without a restart", &why);
        if let Some(m) = mount {
            let um = m.unmount();
            lab.report.notes.push(format!(
                "full-disk CP: SIGTERM exit not-running; tmpfs unmounted: {um}"
            ));
        }
        return;
    }
    let cp_pid = lab.pid();
    let mut base_ok = 0;
    for i in 1..=3 {
        let a = lab.http(
            "POST",
            &format!("{base}/v1/rollouts"),
            &lab.work.join("disk-base.json"),
            Some(&plan_body(&format!("val12-disk-base-{i}"), "full-disk")),
        );
        if a.code == "201" {
            base_ok += 1;
        }
    }
    let mut w = DiskWrites {
        log: ev.join("val12-disk-writes.txt"),
        ..DiskWrites::default()
    };
    write(&w.log, "");

    // 1. Fill the filesystem completely; the next write is refused.
    let filler = mnt.join("filler");
    let (dd_rc, dd_out) = fill(&filler, "64k");
    write(&ev.join("fill-dd.txt"), &dd_out);
    let enospc = dd_out.to_lowercase().contains("no space left");
    append(&fs_txt, &df(&mnt));
    append(
        &w.log,
        &format!(
            "# 1. filesystem filled by {} (dd exit {dd_rc})\n",
            filler.display()
        ),
    );
    let ready_pre = ready_codes(lab, &w, &base, 1);
    let first_code = disk_write(lab, &mut w, &base, "create", "val12-disk-first-1").code;
    let ready_first = ready_codes(lab, &w, &base, 3);
    // 2. Give back a 128 KiB margin and create padded plans until three in a row are refused:
    //    the disk fills up under real writes.
    append(
        &w.log,
        "# 2. 128 KiB given back; padded creates until three in a row are refused\n",
    );
    let (_, tr_out) = sh(
        "truncate",
        &["-s", "-131072", &filler.display().to_string()],
    );
    append(&ev.join("fill-dd.txt"), &tr_out);
    append(&fs_txt, &df(&mnt));
    let (mut consec, mut pad_ok, mut pad_refused) = (0, 0, 0);
    for i in 1..=DISK_MAX {
        let code = disk_write(
            lab,
            &mut w,
            &base,
            "padded",
            &format!("val12-disk-pad-{i:03}"),
        )
        .code;
        match code.as_str() {
            "201" => {
                pad_ok += 1;
                consec = 0;
            }
            "503" => {
                pad_refused += 1;
                consec += 1;
            }
            _ => consec = 0,
        }
        if consec >= 3 {
            break;
        }
    }
    // 3. Take the rest of the space: the disk is completely full again.
    let filler2 = mnt.join("filler2");
    let (_, dd2_out) = fill(&filler2, "4k");
    write(&ev.join("fill2-dd.txt"), &dd2_out);
    append(&fs_txt, &df(&mnt));
    append(
        &w.log,
        &format!(
            "# 3. the rest of the space taken by {}\n",
            filler2.display()
        ),
    );
    let pass = base_ok == 3
        && dd_rc != 0
        && enospc
        && first_code == "503"
        && consec == 3
        && w.other.is_empty();
    lab.report.check(
        "VAL12-08",
        &format!("full disk: a CP on a {FS_SIZE} tmpfs; the filled disk refuses a write; padded creates go from 201 to 503 as it fills"),
        CheckFile::Write(check_file.clone()),
        "disk/val12-fs.txt disk/fill-dd.txt disk/val12-disk-writes.txt disk/val12-fulldisk-cp.log",
        kvs![
            "mounted" => mounted, "fs_size" => FS_SIZE, "cp_pid" => cp_pid, "baseline_creates_201" => base_ok,
            "filler_dd_exit" => dd_rc, "filler_hit_enospc" => enospc, "first_write_code" => first_code,
            "padding_bytes" => PAD_BYTES, "padded_creates_201" => pad_ok, "padded_creates_503" => pad_refused,
            "consecutive_503_at_end" => consec, "other_codes" => csv(&w.other), "pass" => pass,
        ],
    );

    // VAL12-09: while full, writes are 503 unavailable with Retry-After; reads and health work.
    let w1 = disk_write(lab, &mut w, &base, "create", "val12-disk-full-1");
    let w2 = disk_write(lab, &mut w, &base, "execute", "val12-disk-base-1");
    let ready_full = ready_codes(lab, &w, &base, 3);
    let get = lab.http(
        "GET",
        &format!("{base}/v1/rollouts/val12-disk-base-1"),
        &ev.join("full-get.json"),
        None,
    );
    let get_gen = get.at("/plan/metadata/generation");
    let list = lab.http(
        "GET",
        &format!("{base}/v1/rollouts?limit=1000"),
        &ev.join("full-list.json"),
        None,
    );
    let list_n = list.json["items"]
        .as_array()
        .map(|a| a.len().to_string())
        .unwrap_or_default();
    let h = lab.http(
        "GET",
        &format!("{base}/v1/health"),
        &ev.join("full-health.json"),
        None,
    );
    let alive = lab.alive() && lab.pid() == cp_pid;
    let none = |s: &str| {
        if s.is_empty() {
            "none".to_string()
        } else {
            s.to_string()
        }
    };
    let pass = w1.code == "503"
        && w1.err == "unavailable"
        && !w1.retry_after.is_empty()
        && w2.code == "503"
        && w2.err == "unavailable"
        && !w2.retry_after.is_empty()
        && w.bad_503 == 0
        && get.code == "200"
        && get_gen == "1"
        && list.code == "200"
        && h.code == "200"
        && alive;
    lab.report.check(
        "VAL12-09",
        "disk full: writes 503 unavailable + Retry-After; GET plan, list, health 200; the CP stays up",
        CheckFile::Append(check_file.clone()),
        "disk/val12-disk-writes.txt disk/full-get.json disk/full-list.json disk/full-health.json",
        kvs![
            "create_code" => w1.code, "create_error_code" => w1.err, "create_retry_after" => none(&w1.retry_after),
            "execute_code" => w2.code, "execute_error_code" => w2.err, "execute_retry_after" => none(&w2.retry_after),
            "refused_writes" => w.refused_ids.len() + 1, "refusals_without_unavailable_or_retry_after" => w.bad_503,
            "get_code" => get.code, "base_generation" => get_gen, "list_code" => list.code, "list_items" => list_n,
            "health_code" => h.code, "cp_same_pid_alive" => alive, "pass" => pass,
        ],
    );

    // VAL12-10: /v1/ready answers 503 while the disk is full, both right after the first refused
    // write and after the disk filled up under writes (while every write is being refused).
    let pass = ready_first == "503,503,503" && ready_full == "503,503,503";
    lab.report.check(
        "VAL12-10",
        "disk full: /v1/ready answers 503 while writes are refused",
        CheckFile::Append(check_file.clone()),
        "disk/val12-disk-writes.txt disk/val12-fulldisk-cp.log",
        kvs![
            "ready_before_any_refused_write" => ready_pre, "ready_after_first_refused_write" => ready_first,
            "ready_after_filling_under_writes" => ready_full,
            "writes_refused_at_that_time" => format!("create:{},execute:{}", w1.code, w2.code), "pass" => pass,
        ],
    );

    // VAL12-12: space freed, no restart: ready goes back to 200 and writes succeed again.
    let _ = std::fs::remove_file(&filler);
    let _ = std::fs::remove_file(&filler2);
    append(&fs_txt, &df(&mnt));
    let (rd, rd_ms) = lab.poll_200(
        &format!("{base}/v1/ready"),
        &ev.join("recovered-ready.json"),
    );
    let a1 = lab.http(
        "POST",
        &format!("{base}/v1/rollouts"),
        &ev.join("recovered-create.json"),
        Some(&padded_body("val12-disk-after-1")),
    );
    let a2 = lab.http(
        "POST",
        &format!("{base}/v1/rollback/execute"),
        &ev.join("recovered-execute.json"),
        Some(&retry_body("val12-disk-base-1", "val12-after-full-disk")),
    );
    let a2_out = a2.at("/outcome");
    let listens = count_lines(&log, "listening on", false);
    let alive = lab.alive() && lab.pid() == cp_pid;
    let pass = rd == "200"
        && a1.code == "201"
        && a2.code == "200"
        && a2_out == "success"
        && alive
        && listens == 1;
    lab.report.check(
        "VAL12-12",
        "space freed: /v1/ready 200 again and writes succeed (201, retry 200) without a restart",
        CheckFile::Append(check_file.clone()),
        "disk/recovered-ready.json disk/recovered-create.json disk/recovered-execute.json disk/val12-fulldisk-cp.log",
        kvs![
            "ready_code" => rd, "ready_after_ms" => rd_ms, "create_code" => a1.code, "execute_code" => a2.code,
            "execute_outcome" => a2_out, "cp_same_pid_alive" => alive, "cp_starts_in_log" => listens, "pass" => pass,
        ],
    );

    // VAL12-11: no half-written plan; the audit chain is valid and matches one to one.
    let (listing, p_kv) = plans_json(
        lab,
        &base,
        &ev.join("list-pages"),
        &ev.join("val12-disk-plans.json"),
    );
    let p_kv = kv_lines(&p_kv);
    let mut expected: BTreeSet<String> = (1..=3).map(|i| format!("val12-disk-base-{i}")).collect();
    expected.extend(w.ok_ids.iter().cloned());
    if a1.code == "201" {
        expected.insert("val12-disk-after-1".into());
    }
    let expected = expected.into_iter().collect::<Vec<_>>().join(",");
    let present = listing
        .plans
        .keys()
        .filter(|k| k.starts_with("val12-disk-"))
        .cloned()
        .collect::<Vec<_>>()
        .join(",");
    let mut absent_bad = Vec::new();
    for rid in w.refused_ids.clone() {
        let code = lab
            .http(
                "GET",
                &format!("{base}/v1/rollouts/{rid}"),
                &lab.work.join("absent.json"),
                None,
            )
            .code;
        if code != "404" {
            absent_bad.push(format!("{rid}:{code}"));
        }
    }
    let base_gen = listing
        .plans
        .get("val12-disk-base-1")
        .map(|p| p.generation.to_string())
        .unwrap_or_default();
    let (a_kv, v, verify_out) = audit_and_verify(
        lab,
        &ev,
        "disk",
        &audit,
        &listing.plans,
        &["--audit-dir".into(), audit.display().to_string()],
    );
    let pass = present == expected
        && absent_bad.is_empty()
        && base_gen == "2"
        && kv_get(&a_kv, "pass_audit") == "true"
        && v.rc == 0;
    let mut m = kvs![
        "plans_present" => kv_get(&p_kv, "unique"),
        "plans_expected" => expected.split(',').filter(|s| !s.is_empty()).count(),
        "present_equals_201s" => (present == expected),
        "refused_ids_checked" => w.refused_ids.len(), "refused_but_present" => csv(&absent_bad),
        "base_1_generation" => base_gen, "base_1_expected_generation" => 2,
    ];
    let picked = |k: &str| {
        k == "events"
            || [
                "plans_",
                "plan_created_",
                "rollback_executed_",
                "expected_",
                "events_for_",
                "duplicate_",
                "seq_",
            ]
            .iter()
            .any(|p| k.starts_with(p))
    };
    m.extend(a_kv.iter().filter(|(k, _)| picked(k)).cloned());
    m.extend(kvs!["verify_exit" => v.rc, "verify_output" => one_line(&verify_out), "pass" => pass]);
    lab.report.check(
        "VAL12-11",
        "no half-written plan: every plan present got a 201, every 503'd id is absent; audit verify passes, events 1:1",
        CheckFile::Append(check_file),
        "disk/val12-disk-plans.json disk/val12-disk-writes.txt disk/val12-disk-audit.txt disk/val12-disk-audit-verify.txt",
        m,
    );

    // Stop the CP and unmount.
    let s_rc = lab.stop_cp().map_or("not-running".into(), |s| s.rc);
    let um = mount.is_some_and(Mount::unmount);
    lab.report.notes.push(format!(
        "full-disk CP: SIGTERM exit {s_rc}; tmpfs unmounted: {um}"
    ));
}

// ---- VAL12-13..17: a corrupt store at start-up ------------------------------------------------

fn file_size(p: &Path) -> String {
    std::fs::metadata(p).map_or("none".into(), |m| m.len().to_string())
}

/// Bytes from a seeded generator, never `exclude`.
fn noise(seed: u64, n: usize, exclude: Option<u8>) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let b = (rng.next_u64() & 0xff) as u8;
        if Some(b) != exclude {
            out.push(b);
        }
    }
    out
}

/// Damages the copy `dir/data` + `dir/audit` one way; returns the damage report, the names
/// the refusal must mention (one of) and whether the damage was applied.
fn damage(mode: &str, dir: &Path) -> (String, Vec<String>, bool) {
    let db = dir.join("data/autonomy.db");
    let wal = dir.join("data/autonomy.db-wal");
    let shm = dir.join("data/autonomy.db-shm");
    let size = std::fs::metadata(&db).map_or(0, |m| m.len());
    let mut ok = true;
    let mut text = format!(
        "mode={mode}\nbefore: autonomy.db={} bytes, -wal={} bytes\n",
        file_size(&db),
        file_size(&wal)
    );
    let drop_wal = || {
        let _ = std::fs::remove_file(&wal);
        let _ = std::fs::remove_file(&shm);
    };
    let names: Vec<String> = match mode {
        "truncated-db" => {
            // Only a cut if the database (checkpointed on the clean stop) is larger than that.
            if size <= 8192 {
                ok = false;
            }
            ok &= std::fs::File::options()
                .write(true)
                .open(&db)
                .and_then(|f| f.set_len(8192))
                .is_ok();
            drop_wal();
            vec!["autonomy.db".into()]
        }
        "garbage-db" => {
            ok &= std::fs::write(&db, noise(12, 65_536, None)).is_ok();
            drop_wal();
            vec!["autonomy.db".into()]
        }
        "garbage-audit-segment" => {
            let seg = match segments_below(&dir.join("audit")).pop() {
                Some(s) => s,
                None => {
                    ok = false;
                    dir.join("audit/audit-00000001.jsonl")
                }
            };
            // 64 lines of 120 random non-newline bytes, each ending in a newline.
            let bytes: Vec<u8> = noise(13, 64 * 120, Some(b'\n'))
                .chunks(120)
                .flat_map(|c| c.iter().copied().chain(std::iter::once(b'\n')))
                .collect();
            ok &= std::fs::write(&seg, bytes).is_ok();
            let name = seg
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            text.push_str(&format!("segment={name}\n"));
            vec![name]
        }
        _ => {
            ok &= std::fs::write(&db, b"").is_ok();
            drop_wal();
            vec![
                "autonomy.db".into(),
                dir.join("audit").display().to_string(),
            ]
        }
    };
    text.push_str(&format!(
        "after: autonomy.db={} bytes, -wal={} bytes, audit segments={}\n",
        file_size(&db),
        file_size(&wal),
        segments_below(&dir.join("audit")).len()
    ));
    text.push_str(&format!(
        "the refusal must name one of: {}\ndamage_applied={ok}\n",
        names.join("|")
    ));
    (text, names, ok)
}

fn corrupt_store(lab: &mut Lab, source: &StopInfo) {
    let ev = lab.dir.join("corrupt");
    let work = lab.work.join("corrupt");
    let base = format!("http://127.0.0.1:{PORT2}");
    let _ = std::fs::create_dir_all(&ev);
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::create_dir_all(&work);
    let copy = |from: &Path, to: &Path| {
        sh(
            "cp",
            &["-a", &from.display().to_string(), &to.display().to_string()],
        );
    };

    // VAL12-13 (control): an undamaged copy of the stopped store starts and serves its plans.
    let (cd, ca) = (work.join("control-data"), work.join("control-audit"));
    copy(&lab.data_dir, &cd);
    copy(&lab.audit_dir, &ca);
    let (mut c_up, mut c_get, mut c_stop) = (false, "000".to_string(), "not-running".to_string());
    if lab.start_cp(PORT2, &cd, &ca, &ev.join("control-serve.log")) == Started::Ready {
        c_up = true;
        c_get = lab
            .http(
                "GET",
                &format!("{base}/v1/rollouts/val12-hung-1"),
                &ev.join("control-get.json"),
                None,
            )
            .code;
        if let Some(s) = lab.stop_cp() {
            c_stop = s.rc;
        }
    }
    let pass = source.rc == "0" && !source.forced && c_up && c_get == "200" && c_stop == "0";
    let check_file = ev.join("val12-corrupt-check.txt");
    let err = if lab.start_error.is_empty() {
        "none".to_string()
    } else {
        lab.start_error.clone()
    };
    lab.report.check(
        "VAL12-13",
        "control: the store SIGTERM-stopped (exit 0); an undamaged copy starts and serves its plans",
        CheckFile::Write(check_file.clone()),
        "corrupt/control-serve.log corrupt/control-get.json",
        kvs![
            "source_sigterm_exit" => source.rc, "source_forced_kill" => source.forced, "control_started" => c_up,
            "control_ready_ms" => lab.ready_ms, "control_start_error" => err, "control_get_code" => c_get,
            "control_sigterm_exit" => c_stop, "pass" => pass,
        ],
    );

    for (n, mode) in [
        "truncated-db",
        "garbage-db",
        "garbage-audit-segment",
        "empty-db",
    ]
    .into_iter()
    .enumerate()
    {
        let dir = work.join(mode);
        let _ = std::fs::create_dir_all(&dir);
        copy(&lab.data_dir, &dir.join("data"));
        copy(&lab.audit_dir, &dir.join("audit"));
        let (text, names, applied) = damage(mode, &dir);
        let damage_file = ev.join(format!("{mode}-damage.txt"));
        write(&damage_file, &text);
        let mut all_ok = applied;
        let mut res = Vec::new();
        for attempt in 1..=2 {
            let out = ev.join(format!("{mode}-serve-{attempt}.txt"));
            let (data, audit) = (dir.join("data"), dir.join("audit"));
            append(
                &damage_file,
                &format!(
                    "$ timeout -k 2 {} autonomy serve --listen 127.0.0.1:{PORT2} --data-dir {} --audit-dir {}\n",
                    PROBE_TIMEOUT.as_secs(),
                    data.display(),
                    audit.display()
                ),
            );
            let free = !autonomy_testkit::http::port_in_use(PORT2);
            let (rc, took) = if free {
                let args = [
                    "serve".to_string(),
                    "--listen".into(),
                    format!("127.0.0.1:{PORT2}"),
                    "--data-dir".into(),
                    data.display().to_string(),
                    "--audit-dir".into(),
                    audit.display().to_string(),
                ];
                let r = lab.cli(&out, None, &args, PROBE_TIMEOUT);
                (r.rc, r.ms)
            } else {
                write(&out, &format!("lab_error: not run: port {PORT2} is in use, so a refusal would prove nothing\n"));
                (125, 0)
            };
            let text =
                String::from_utf8_lossy(&std::fs::read(&out).unwrap_or_default()).into_owned();
            let listened = text.contains("listening on");
            let named = names.iter().any(|nm| text.contains(nm.as_str()));
            let errline = text.lines().any(|l| l.starts_with("error: "));
            let ok = free
                && rc != 0
                && rc != 124
                && rc != 137
                && !listened
                && named
                && errline
                && took < START_FAIL_MS;
            all_ok &= ok;
            res.push(format!(
                "attempt{attempt}:exit={rc}:ms={took}:listening={listened}:names_file={named}"
            ));
        }
        let head: String = text.lines().take(3).map(|l| format!("{l} ")).collect();
        lab.report.check(
            &format!("VAL12-{}", 14 + n),
            &format!("corrupt store ({mode}): serve refuses fast, twice, naming the file; never listens"),
            CheckFile::Append(check_file.clone()),
            &format!("corrupt/{mode}-damage.txt corrupt/{mode}-serve-1.txt corrupt/{mode}-serve-2.txt"),
            kvs![
                "mode" => mode, "damage_applied" => applied, "damage" => head, "must_name" => names.join("|"),
                "limit_ms" => START_FAIL_MS, "results" => csv(&res),
                "message" => one_line(&ev.join(format!("{mode}-serve-1.txt"))), "pass" => all_ok,
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_cuts_after_ten() {
        let xs: Vec<String> = (0..12).map(|i| i.to_string()).collect();
        assert_eq!(few(&xs), "0,1,2,3,4,5,6,7,8,9,…(+2)");
        assert_eq!(few(&[]), "none");
    }

    #[test]
    fn the_audit_check_finds_gaps_and_orphans() {
        let dir = autonomy_testkit::TestDir::create("val12-audit").unwrap();
        let ev = |seq: u64, t: &str, r: &str, g: Option<u64>| {
            json!({"seq": seq, "id": format!("e{seq}"), "event_type": t, "resource": r, "outcome": "success",
                   "details": {"generation": g}})
            .to_string()
        };
        let lines = [
            ev(1, "plan.created", "p-a", None),
            ev(2, "rollback.executed", "p-a", Some(2)),
            ev(3, "plan.created", "p-gone", None),
        ];
        std::fs::write(
            dir.path().join("audit-00000001.jsonl"),
            lines.join("\n") + "\n",
        )
        .unwrap();
        let mut plans = BTreeMap::new();
        plans.insert(
            "p-a".to_string(),
            PlanState {
                generation: 2,
                phase: "active".into(),
                history: 2,
            },
        );
        let out = audit_lines(dir.path(), &plans, "p-");
        assert!(
            out.contains(&"seq_contiguous_from_1=true".to_string()),
            "{out:?}"
        );
        assert!(
            out.contains(&"plans_not_one_to_one=none".to_string()),
            "{out:?}"
        );
        assert!(
            out.contains(&"events_for_absent_plans=p-gone".to_string()),
            "{out:?}"
        );
        assert!(out.contains(&"pass_audit=false".to_string()), "{out:?}");
        plans.insert(
            "p-gone".to_string(),
            PlanState {
                generation: 1,
                phase: "published".into(),
                history: 1,
            },
        );
        let out = audit_lines(dir.path(), &plans, "p-");
        assert!(out.contains(&"pass_audit=true".to_string()), "{out:?}");
    }

    #[test]
    fn damage_names_what_it_broke() {
        let dir = autonomy_testkit::TestDir::create("val12-damage").unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        std::fs::create_dir_all(dir.path().join("audit")).unwrap();
        std::fs::write(dir.path().join("data/autonomy.db"), vec![1u8; 100]).unwrap();
        let (text, names, ok) = damage("truncated-db", dir.path());
        assert!(!ok, "a 100-byte database cannot be cut to 8192: {text}");
        assert_eq!(names, ["autonomy.db"]);
        let (_, names, ok) = damage("garbage-audit-segment", dir.path());
        assert!(!ok, "there was no segment to damage");
        assert_eq!(names, ["audit-00000001.jsonl"]);
        assert!(noise(13, 1000, Some(b'\n')).iter().all(|b| *b != b'\n'));
    }
}

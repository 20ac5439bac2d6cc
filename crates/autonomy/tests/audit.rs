//! The retained audit store across crashes (SPEC §5.2, §5.4): outbox replay, torn-tail repair,
//! tamper detection through `autonomy audit verify`, refusal of a foreign audit dir, and the
//! offline and API queries answering the same.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use common::Cp;

const JSON: (&str, &str) = ("content-type", "application/json");

fn segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        // Segments only: the audit dir also holds checkpoints.jsonl (SPEC §5.9).
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("audit-") && name.ends_with(".jsonl")
        })
        .collect();
    segs.sort();
    segs.pop().expect("a segment")
}

fn verify(cp: &Cp) -> std::process::Output {
    let dir = cp.audit_dir();
    cp.cli_with(
        &["audit", "verify", "--audit-dir", dir.to_str().unwrap()],
        &[],
        None,
    )
}

/// SQLite-only: the outbox → retained-store crash window is SQLite's (over PostgreSQL the
/// database is the record and the mirror follows it: tests/replicas.rs).
#[test]
fn sqlite_only_events_lost_between_commit_and_append_are_replayed_exactly() {
    let mut cp = Cp::start(&[], &[]);
    common::create_some(&cp, "outbox", 6);
    cp.sigkill();
    // Simulate a crash after COMMIT but before the JSONL append: drop the last 3 lines.
    let seg = segment(&cp.audit_dir());
    let full = fs::read_to_string(&seg).unwrap();
    let lines: Vec<&str> = full.lines().collect();
    let keep = lines[..lines.len() - 3].join("\n") + "\n";
    fs::write(&seg, keep).unwrap();
    cp.start_again();
    assert!(cp.stderr().contains("audit_replayed=3"), "{}", cp.stderr());
    assert_eq!(
        fs::read_to_string(&seg).unwrap(),
        full,
        "replay must restore the exact lines"
    );
    assert!(verify(&cp).status.success());
}

#[test]
fn a_torn_last_line_is_repaired_at_startup_not_reported_as_tampering() {
    let mut cp = Cp::start(&[], &[]);
    common::create_some(&cp, "torn", 3);
    cp.sigkill();
    let seg = segment(&cp.audit_dir());
    let mut f = fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(br#"{"seq":99,"id":"evt_half","ti"#).unwrap();
    drop(f);
    cp.start_again();
    assert!(cp.stderr().contains("repaired"), "{}", cp.stderr());
    common::create_some(&cp, "after", 1);
    let out = verify(&cp);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn verify_names_the_first_tampered_record_and_a_tampered_tail_stops_the_cp() {
    let mut cp = Cp::start(&[], &[]);
    common::create_some(&cp, "tamper", 4);
    assert!(verify(&cp).status.success());
    cp.sigterm();
    let seg = segment(&cp.audit_dir());
    let text = fs::read_to_string(&seg).unwrap();
    // Rewrite who did it in the 3rd event: the classic cover-up.
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[2] = lines[2].replacen("\"actor\":\"auditor\"", "\"actor\":\"someone\"", 1);
    fs::write(&seg, lines.join("\n") + "\n").unwrap();
    let out = verify(&cp);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let name = seg.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(name) && err.contains("seq 3"), "{err}");

    // A deleted line is caught too.
    lines.remove(2);
    fs::write(&seg, lines.join("\n") + "\n").unwrap();
    let out = verify(&cp);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An edited last line is tampering, not a torn write: the CP refuses to start on it.
    let last = lines.len() - 1;
    lines[last] = lines[last].replacen("\"actor\":\"auditor\"", "\"actor\":\"someone\"", 1);
    fs::write(&seg, lines.join("\n") + "\n").unwrap();
    let Err(e) = Cp::try_start_in(cp.data_dir(), &[], &[]) else {
        panic!("the CP started on a tampered audit store");
    };
    assert!(
        e.stderr.contains("cannot open the audit store") && e.stderr.contains(name),
        "{}",
        e.stderr
    );
}

#[test]
fn a_foreign_audit_dir_is_refused() {
    let keep = common::TestDir::new("shared-audit");
    let shared = keep.path().join("audit");
    let a = Cp::start(&["--audit-dir", shared.to_str().unwrap()], &[]);
    common::create_some(&a, "a", 3);
    drop(a);
    // A fresh database with an audit dir that already holds another database's chain.
    let dir = common::TestDir::new("foreign");
    let Err(e) = Cp::try_start_in(
        &dir.path().join("data"),
        &["--audit-dir", shared.to_str().unwrap()],
        &[],
    ) else {
        panic!("a CP started with another database's audit dir");
    };
    assert!(
        e.stderr.contains("belongs to another database"),
        "{}",
        e.stderr
    );
}

#[test]
fn offline_and_api_queries_agree() {
    let cp = Cp::start(&[], &[]);
    common::create_some(&cp, "q", 5);
    let exec = r#"{"target":"rollout_plan","resource":"q-1","strategy":"retry","reason":"r"}"#;
    assert_eq!(
        cp.post(
            "/v1/rollback/execute",
            &[JSON, ("x-autonomy-operator", "auditor")],
            exec
        )
        .0,
        200
    );
    common::settle_mirror(&cp);
    let dir = cp.audit_dir();
    let filters: [&[&str]; 4] = [
        &["--actor", "auditor"],
        &["--event-type", "rollback.executed", "--outcome", "success"],
        &["--resource", "q-3"],
        &[
            "--event-type",
            "plan.created",
            "--start-time",
            "2020-01-01T00:00:00Z",
            "--limit",
            "2",
        ],
    ];
    for f in filters {
        let mut args = vec!["-o", "json", "audit", "query"];
        args.extend_from_slice(f);
        let api = cp.cli_with(&args, &[], None);
        assert!(
            api.status.success(),
            "{}",
            String::from_utf8_lossy(&api.stderr)
        );
        let offline = cp.cli_with(
            &args,
            &[("AUTONOMY_AUDIT_DIR", dir.to_str().unwrap())],
            None,
        );
        assert!(
            offline.status.success(),
            "{}",
            String::from_utf8_lossy(&offline.stderr)
        );
        let a: serde_json::Value = serde_json::from_slice(&api.stdout).unwrap();
        let o: serde_json::Value = serde_json::from_slice(&offline.stdout).unwrap();
        assert!(
            !a["items"].as_array().unwrap().is_empty(),
            "{f:?} matched nothing"
        );
        assert_eq!(a, o, "offline and API answers differ for {f:?}");
    }
}

#[test]
fn segments_rotate_by_size_and_the_chain_spans_them_across_restarts() {
    let mut cp = Cp::start(&[], &[("AUTONOMY_AUDIT_SEGMENT_BYTES", "4096")]);
    common::create_some(&cp, "rot", 30);
    cp.sigkill();
    cp.start_again();
    common::create_some(&cp, "rot2", 10);
    common::settle_mirror(&cp);
    let segments = fs::read_dir(cp.audit_dir())
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.starts_with("audit-") && name.ends_with(".jsonl")
        })
        .count();
    assert!(
        segments >= 3,
        "expected rotation, found {segments} segment(s)"
    );
    let out = verify(&cp);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("segments={segments}")), "{stdout}");
    // The two starts' events + 40 plans.
    let n = common::first_start_events() + common::restart_events() + 40;
    assert!(stdout.contains(&format!("events={n}")), "{stdout}");
}

/// SQLite-only: `--data-dir` cross-checks the chain head in `autonomy.db`.
#[test]
fn sqlite_only_verify_with_the_data_dir_catches_events_cut_off_the_end() {
    let mut cp = Cp::start(&[], &[]);
    common::create_some(&cp, "cut", 5);
    assert!(cp.sigterm().success());
    let data = cp.data_dir().to_str().unwrap().to_string();
    let ok = cp.cli_with(&["audit", "verify", "--data-dir", &data], &[], None);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("database=checked"));

    // Cut the last two events: the chain that is left is still valid on its own...
    let seg = segment(&cp.audit_dir());
    let text = fs::read_to_string(&seg).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    fs::write(&seg, lines[..lines.len() - 2].join("\n") + "\n").unwrap();
    let dir = cp.audit_dir();
    let alone = cp.cli_with(
        &["audit", "verify", "--audit-dir", dir.to_str().unwrap()],
        &[],
        None,
    );
    assert!(alone.status.success());
    assert!(String::from_utf8_lossy(&alone.stdout).contains("database=not_checked"));
    // ...but not against the database's copy of the chain head.
    let out = cp.cli_with(&["audit", "verify", "--data-dir", &data], &[], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("incomplete") && err.contains("seq 6"), "{err}");
}

#[test]
fn a_lost_audit_dir_is_rebuilt_from_the_outbox_in_pages() {
    let mut cp = Cp::start(&[], &[]);
    // More events than one replay page (1024), from a few concurrent writers.
    let url = cp.url.clone();
    let handles: Vec<_> = (0..4)
        .map(|w| {
            let url = url.clone();
            std::thread::spawn(move || {
                for i in 0..300 {
                    let body = format!(
                        r#"{{"metadata":{{"id":"page-{w}-{i}"}},"spec":{{"artifact_ref":"oci://a"}}}}"#
                    );
                    let (s, b) = common::http(
                        "POST",
                        &format!("{url}/v1/rollouts"),
                        &[JSON],
                        Some(body.as_bytes()),
                    );
                    assert_eq!(s, 201, "{b}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(cp.sigterm().success());
    fs::remove_dir_all(cp.audit_dir()).unwrap();
    cp.start_again();
    // The first start's events + 1200 plans.
    let n = common::first_start_events() + 1200;
    assert!(
        cp.stderr().contains(&format!("audit_replayed={n}")),
        "{}",
        cp.stderr()
    );
    common::settle_mirror(&cp);
    let data = cp.data_dir().to_str().unwrap().to_string();
    let out = cp.cli_with(&["audit", "verify", "--data-dir", &data], &[], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let n = common::first_start_events() + common::restart_events() + 1200;
    // SQLite cross-checks the chain head in its database file; PostgreSQL keeps none there.
    let database = if cp.database_url().is_some() {
        "database=not_checked"
    } else {
        "database=checked"
    };
    assert!(
        stdout.contains(&format!("events={n}")) && stdout.contains(database),
        "{stdout}"
    );
}

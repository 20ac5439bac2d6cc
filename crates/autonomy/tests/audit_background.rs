//! The audit chain checked in the background after every start (SPEC §5.8): damage in the
//! middle of the retained store (an edited byte, a deleted line, a segment truncated to zero)
//! does not stop the CP from starting and serving, but shows in `GET /v1/health` with its
//! place and in `/metrics`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Cp;

/// Small segments, so the store has a middle.
const SMALL_SEGMENTS: (&str, &str) = ("AUTONOMY_AUDIT_SEGMENT_BYTES", "4096");

fn segment(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("audit-{n:08}.jsonl"))
}

/// Polls health (bounded) until the audit check has an answer; returns the health body.
fn settled_health(cp: &Cp) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = cp.get("/v1/health", &[]);
        assert_eq!(status, 200, "{body}");
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        match health["audit"].as_str() {
            Some("verifying") => {}
            Some(_) => return health,
            None => panic!("health has no audit field: {body}"),
        }
        assert!(
            Instant::now() < deadline,
            "the audit check never finished: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn metric(cp: &Cp, name: &str) -> String {
    let (status, body) = cp.get("/metrics", &[]);
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
        .to_string()
}

/// The seq a line carries.
fn seq_of(line: &str) -> u64 {
    autonomy_audit::parse_line(line).unwrap().seq
}

/// A stopped CP whose store has at least four segments.
fn stopped_cp_with_segments() -> Cp {
    let mut cp = Cp::start(&[], &[SMALL_SEGMENTS]);
    common::create_some(&cp, "bg", 30);
    assert!(cp.sigterm().success());
    assert!(
        segment(&cp.audit_dir(), 4).exists(),
        "expected at least four segments"
    );
    cp
}

/// Starts a CP on `damaged`'s data dir and checks that it serves and reports the damage at
/// `segment`, `line`, `seq`.
fn assert_damage_reported(damaged: &Cp, segment: &str, line: u64, seq: u64) {
    let mut cp = Cp::start_in(damaged.data_dir(), &[], &[]);
    // The CP started: the check runs in the background, and finds the damage.
    let health = settled_health(&cp);
    assert_eq!(health["audit"], "damaged", "{health}");
    let damage = &health["audit_damage"];
    assert_eq!(damage["segment"], segment, "{health}");
    assert_eq!(damage["line"], line, "{health}");
    assert_eq!(damage["seq"], seq, "{health}");
    assert!(damage["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(metric(&cp, "autonomy_audit_damaged"), "1");
    // `autonomy health` says it too, and where.
    let out = cp.cli(&["health"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("audit=damaged"), "{text}");
    assert!(text.contains(&format!("audit_segment={segment}")), "{text}");
    assert!(text.contains(&format!("audit_seq={seq}")), "{text}");
    // The CP still starts and serves.
    common::create_some(&cp, "still-serving", 1);
    assert_eq!(cp.get("/v1/ready", &[]).0, 200);
    assert!(cp.sigterm().success());
}

#[test]
fn a_sound_store_reports_ok() {
    let cp = stopped_cp_with_segments();
    let again = Cp::start_in(cp.data_dir(), &[], &[]);
    let health = settled_health(&again);
    assert_eq!(health["audit"], "ok", "{health}");
    assert!(health.get("audit_damage").is_none(), "{health}");
    assert_eq!(metric(&again, "autonomy_audit_damaged"), "0");
}

#[test]
fn an_edited_byte_in_a_middle_segment_is_reported_in_health() {
    let cp = stopped_cp_with_segments();
    let seg = segment(&cp.audit_dir(), 2);
    let text = fs::read_to_string(&seg).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let seq = seq_of(&lines[1]);
    lines[1] = lines[1].replacen("\"actor\":\"auditor\"", "\"actor\":\"auditer\"", 1);
    fs::write(&seg, lines.join("\n") + "\n").unwrap();
    assert_damage_reported(&cp, "audit-00000002.jsonl", 2, seq);
}

#[test]
fn a_deleted_line_in_a_middle_segment_is_reported_in_health() {
    let cp = stopped_cp_with_segments();
    let seg = segment(&cp.audit_dir(), 2);
    let text = fs::read_to_string(&seg).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(1);
    // The line after the gap is where the chain breaks; it carries its own seq.
    let seq = seq_of(lines[1]);
    fs::write(&seg, lines.join("\n") + "\n").unwrap();
    assert_damage_reported(&cp, "audit-00000002.jsonl", 2, seq);
}

#[test]
fn a_middle_segment_truncated_to_zero_is_reported_in_health() {
    let cp = stopped_cp_with_segments();
    let dir = cp.audit_dir();
    let next = fs::read_to_string(segment(&dir, 3)).unwrap();
    let seq = seq_of(next.lines().next().unwrap());
    fs::File::create(segment(&dir, 2)).unwrap();
    assert_damage_reported(&cp, "audit-00000003.jsonl", 1, seq);
}

//! End-to-end tests of the audit store through its public API, on real directories.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use autonomy_api::timefmt::{format_us, parse_rfc3339_us};
use autonomy_api::{AuditEvent, AuditFilter, Outcome};
use autonomy_audit::{parse_line, query, seal, verify, AuditError, AuditLog, Sealed, GENESIS_HASH};

/// A unique directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "autonomy-audit-test-{name}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    /// The audit dir inside (not created).
    fn audit(&self) -> PathBuf {
        self.0.join("audit")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const EVENT_TYPES: [&str; 3] = ["rollout.create", "rollout.transition", "rollback.execute"];
const ACTORS: [&str; 2] = ["alice", "bob"];

fn base_us() -> i64 {
    parse_rfc3339_us("2026-11-28T09:00:00Z").unwrap()
}

/// Event `n` (from 1): fields cycle so that filters have something to select.
fn new_event(n: u64) -> AuditEvent {
    AuditEvent {
        seq: 0,
        id: format!("evt-{n:04}"),
        time: format_us(base_us() + n as i64 * 60_000_000),
        event_type: EVENT_TYPES[n as usize % 3].to_string(),
        actor: ACTORS[n as usize % 2].to_string(),
        target: "rollout_plan".to_string(),
        resource: format!("plan-{}", n % 4),
        outcome: Outcome::ALL[n as usize % 5],
        reason: if n.is_multiple_of(2) {
            String::new()
        } else {
            format!("reason {n}")
        },
        request_id: format!("req-{n}"),
        details: serde_json::json!({"n": n, "from": "active", "to": "paused"}),
        prev_hash: String::new(),
        hash: String::new(),
    }
}

/// Seals events `first..=last` onto `prev_hash`.
fn seal_range(first: u64, last: u64, mut prev_hash: String) -> Vec<Sealed> {
    let mut out = Vec::new();
    for n in first..=last {
        let sealed = seal(new_event(n), n, &prev_hash);
        prev_hash = sealed.event.hash.clone();
        out.push(sealed);
    }
    out
}

fn pairs(sealed: &[Sealed]) -> Vec<(u64, String)> {
    sealed
        .iter()
        .map(|s| (s.event.seq, s.line.clone()))
        .collect()
}

/// Writes `count` events to a new log at `dir`, in batches of varying size.
fn write_log(dir: &Path, count: u64, segment_max_bytes: u64) -> Vec<Sealed> {
    let sealed = seal_range(1, count, GENESIS_HASH.to_string());
    let mut log = AuditLog::open(dir, segment_max_bytes).unwrap();
    let all = pairs(&sealed);
    let mut i = 0;
    let mut batch = 1;
    while i < all.len() {
        let end = (i + batch).min(all.len());
        log.append(&all[i..end]).unwrap();
        i = end;
        batch = batch % 4 + 1;
    }
    assert_eq!(log.last_seq(), count);
    sealed
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("audit-"))
        .collect();
    names.sort();
    names
}

fn seg(n: u64) -> String {
    format!("audit-{n:08}.jsonl")
}

fn read_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    if !lines.is_empty() {
        text.push('\n');
    }
    fs::write(path, text).unwrap();
}

fn seq_of(line: &str) -> u64 {
    serde_json::from_str::<serde_json::Value>(line).unwrap()["seq"]
        .as_u64()
        .unwrap()
}

/// Segment name and 1-based line number of the line carrying `seq`.
fn locate(dir: &Path, seq: u64) -> (String, u64) {
    for name in segment_files(dir) {
        for (i, line) in read_lines(&dir.join(&name)).iter().enumerate() {
            if seq_of(line) == seq {
                return (name, i as u64 + 1);
            }
        }
    }
    panic!("seq {seq} not found");
}

/// The first segment holding at least three lines, with its first seq.
fn segment_with_three_lines(dir: &Path) -> (String, u64) {
    for name in segment_files(dir) {
        let lines = read_lines(&dir.join(&name));
        if lines.len() >= 3 && name != seg(1) {
            return (name, seq_of(&lines[0]));
        }
    }
    panic!("no segment with three lines");
}

fn expect_corrupt(err: AuditError) -> (String, u64, Option<u64>, String) {
    let text = err.to_string();
    match err {
        AuditError::Corrupt {
            segment,
            line,
            seq,
            what,
        } => {
            assert!(text.contains(&segment) && text.contains(&what), "{text}");
            (segment, line, seq, what)
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn empty_and_missing_dirs() {
    let tmp = TempDir::new("empty");
    let dir = tmp.audit();
    match verify(&dir) {
        Err(AuditError::Io { path, .. }) => assert_eq!(path, dir),
        other => panic!("expected Io, got {other:?}"),
    }
    let err = query(&dir, &filter()).unwrap_err();
    assert!(
        err.to_string().contains(&dir.display().to_string()),
        "{err}"
    );

    let log = AuditLog::open(&dir, 300).unwrap();
    assert_eq!(log.dir(), dir.as_path());
    assert_eq!(log.last_seq(), 0);
    assert_eq!(log.last_hash(), GENESIS_HASH);
    assert!(log.repaired().is_none());
    let report = verify(&dir).unwrap();
    assert_eq!((report.events, report.last_seq), (0, 0));
    assert_eq!(report.last_hash, GENESIS_HASH);
    assert!(!report.unterminated_tail);
    assert!(query(&dir, &filter()).unwrap().is_empty());
    drop(log);

    let bare = tmp.0.join("bare");
    fs::create_dir(&bare).unwrap();
    let report = verify(&bare).unwrap();
    assert_eq!((report.segments, report.events), (0, 0));
}

#[test]
fn verify_passes_a_multi_segment_log() {
    let tmp = TempDir::new("multi");
    let dir = tmp.audit();
    let max = 1000;
    let sealed = write_log(&dir, 40, max);
    let files = segment_files(&dir);
    assert!(files.len() >= 5, "{files:?}");
    for (i, name) in files.iter().enumerate() {
        assert_eq!(name, &seg(i as u64 + 1));
        let len = fs::metadata(dir.join(name)).unwrap().len();
        let lines = read_lines(&dir.join(name));
        assert!(!lines.is_empty(), "{name} is empty");
        assert!(len <= max || lines.len() == 1, "{name} has {len} bytes");
    }
    let report = verify(&dir).unwrap();
    assert_eq!(report.segments, files.len() as u64);
    assert_eq!(report.events, 40);
    assert_eq!(report.last_seq, 40);
    assert_eq!(report.last_hash, sealed[39].event.hash);
    assert!(!report.unterminated_tail);

    // Lines bigger than the limit get a segment each; the chain is still sound.
    let tmp2 = TempDir::new("tiny");
    let dir2 = tmp2.audit();
    write_log(&dir2, 6, 300);
    assert_eq!(segment_files(&dir2).len(), 6);
    assert_eq!(verify(&dir2).unwrap().events, 6);

    // Reopening continues the chain in the last segment.
    let mut log = AuditLog::open(&dir, max).unwrap();
    assert_eq!(log.last_seq(), 40);
    assert_eq!(log.last_hash(), sealed[39].event.hash);
    log.append(&pairs(&seal_range(41, 45, sealed[39].event.hash.clone())))
        .unwrap();
    drop(log);
    assert_eq!(verify(&dir).unwrap().last_seq, 45);
}

#[test]
fn verify_catches_an_edited_byte() {
    let tmp = TempDir::new("edit");
    let dir = tmp.audit();
    write_log(&dir, 30, 1500);
    let (name, first) = segment_with_three_lines(&dir);
    let target = first + 1;
    let path = dir.join(&name);
    let mut lines = read_lines(&path);
    lines[1] = lines[1].replacen("\"actor\":\"", "\"actor\":\"x", 1);
    write_lines(&path, &lines);

    let (segment, line, seq, what) = expect_corrupt(verify(&dir).unwrap_err());
    assert_eq!(
        (segment.as_str(), line, seq),
        (name.as_str(), 2, Some(target))
    );
    assert!(what.contains("hash mismatch"), "{what}");
    // Readers refuse it too, naming the place.
    let (segment, line, _, _) = expect_corrupt(query(&dir, &filter()).unwrap_err());
    assert_eq!((segment.as_str(), line), (name.as_str(), 2));
}

#[test]
fn verify_catches_a_resealed_edit_through_the_chain() {
    let tmp = TempDir::new("reseal");
    let dir = tmp.audit();
    let sealed = write_log(&dir, 30, 1500);
    let (name, first) = segment_with_three_lines(&dir);
    let path = dir.join(&name);
    let mut lines = read_lines(&path);
    // Rewrite the event and recompute its hash: the line is self-consistent, the next is not.
    let mut forged = new_event(first);
    forged.actor = "mallory".to_string();
    lines[0] = seal(forged, first, &sealed[first as usize - 2].event.hash).line;
    write_lines(&path, &lines);

    let (segment, line, seq, what) = expect_corrupt(verify(&dir).unwrap_err());
    assert_eq!(
        (segment.as_str(), line, seq),
        (name.as_str(), 2, Some(first + 1))
    );
    assert!(what.contains("prev_hash"), "{what}");
}

#[test]
fn verify_catches_a_deleted_line() {
    let tmp = TempDir::new("delete");
    let dir = tmp.audit();
    write_log(&dir, 30, 1500);
    let (name, first) = segment_with_three_lines(&dir);
    let path = dir.join(&name);
    let mut lines = read_lines(&path);
    lines.remove(1);
    write_lines(&path, &lines);

    let (segment, line, seq, what) = expect_corrupt(verify(&dir).unwrap_err());
    assert_eq!(
        (segment.as_str(), line, seq),
        (name.as_str(), 2, Some(first + 2))
    );
    assert!(
        what.contains(&format!("seq {} was expected", first + 1)),
        "{what}"
    );

    // Deleting a segment's last line is caught at the next segment's first line.
    let tmp = TempDir::new("delete-last");
    let dir = tmp.audit();
    write_log(&dir, 30, 1500);
    let path = dir.join(seg(2));
    let mut lines = read_lines(&path);
    let gone = seq_of(&lines.pop().unwrap());
    write_lines(&path, &lines);
    let (segment, line, seq, _) = expect_corrupt(verify(&dir).unwrap_err());
    assert_eq!((segment, line, seq), (seg(3), 1, Some(gone + 1)));
}

#[test]
fn verify_catches_swapped_lines() {
    let tmp = TempDir::new("swap");
    let dir = tmp.audit();
    write_log(&dir, 30, 1500);
    let (name, first) = segment_with_three_lines(&dir);
    let path = dir.join(&name);
    let mut lines = read_lines(&path);
    lines.swap(0, 1);
    write_lines(&path, &lines);

    let (segment, line, seq, what) = expect_corrupt(verify(&dir).unwrap_err());
    assert_eq!(
        (segment.as_str(), line, seq),
        (name.as_str(), 1, Some(first + 1))
    );
    assert!(
        what.contains(&format!("seq {first} was expected")),
        "{what}"
    );
    assert_eq!(locate(&dir, first + 1), (name, 1));
}

#[test]
fn verify_catches_removed_segments() {
    let tmp = TempDir::new("rm-middle");
    let dir = tmp.audit();
    write_log(&dir, 30, 1500);
    let first_of_2 = seq_of(&read_lines(&dir.join(seg(2)))[0]);
    fs::remove_file(dir.join(seg(2))).unwrap();
    let (segment, line, seq, what) = expect_corrupt(verify(&dir).unwrap_err());
    assert_eq!((segment, line, seq), (seg(2), 0, Some(first_of_2)));
    assert!(what.contains("missing") && what.contains(&seg(3)), "{what}");
    // The writer refuses to open it, readers to read it.
    expect_corrupt(AuditLog::open(&dir, 1000).unwrap_err());
    expect_corrupt(query(&dir, &filter()).unwrap_err());

    let tmp = TempDir::new("rm-first");
    let dir = tmp.audit();
    write_log(&dir, 30, 1500);
    fs::remove_file(dir.join(seg(1))).unwrap();
    let (segment, line, seq, what) = expect_corrupt(verify(&dir).unwrap_err());
    assert_eq!((segment, line, seq), (seg(1), 0, Some(1)));
    assert!(what.contains("missing") && what.contains(&seg(2)), "{what}");

    // Renumbering the rest to hide the hole breaks the chain instead.
    fs::rename(dir.join(seg(2)), dir.join(seg(1))).unwrap();
    let files = segment_files(&dir);
    for (i, name) in files.iter().enumerate().skip(1) {
        fs::rename(dir.join(name), dir.join(seg(i as u64 + 1))).unwrap();
    }
    let (segment, line, seq, _) = expect_corrupt(verify(&dir).unwrap_err());
    assert_eq!((segment.as_str(), line), (seg(1).as_str(), 1));
    assert!(seq.unwrap() > 1);
}

#[test]
fn open_repairs_a_torn_tail() {
    let tmp = TempDir::new("torn");
    let dir = tmp.audit();
    let sealed = write_log(&dir, 10, 1000);
    let last = segment_files(&dir).pop().unwrap();
    let next = seal_range(11, 12, sealed[9].event.hash.clone());
    let half = &next[0].line[..next[0].line.len() / 2];
    fs::OpenOptions::new()
        .append(true)
        .open(dir.join(&last))
        .unwrap()
        .write_all(half.as_bytes())
        .unwrap();

    // Readers see the complete events and skip the torn one.
    let report = verify(&dir).unwrap();
    assert!(report.unterminated_tail);
    assert_eq!(report.last_seq, 10);
    assert_eq!(query(&dir, &filter()).unwrap().len(), 10);

    let mut log = AuditLog::open(&dir, 1000).unwrap();
    let repaired = log.repaired().unwrap().to_string();
    assert!(
        repaired.contains(&last) && repaired.contains("truncated"),
        "{repaired}"
    );
    assert_eq!(log.last_seq(), 10);
    assert_eq!(log.last_hash(), sealed[9].event.hash);
    log.append(&pairs(&next)).unwrap();
    drop(log);
    let report = verify(&dir).unwrap();
    assert!(!report.unterminated_tail);
    assert_eq!(report.last_seq, 12);
    assert!(AuditLog::open(&dir, 1000).unwrap().repaired().is_none());
}

#[test]
fn open_repairs_a_torn_line_alone_in_a_new_segment() {
    let tmp = TempDir::new("torn-new");
    let dir = tmp.audit();
    let sealed = write_log(&dir, 10, 1000);
    let count = segment_files(&dir).len() as u64;
    let next = seal_range(11, 11, sealed[9].event.hash.clone());
    fs::write(dir.join(seg(count + 1)), &next[0].line[..40]).unwrap();

    let mut log = AuditLog::open(&dir, 1000).unwrap();
    assert!(log.repaired().unwrap().contains(&seg(count + 1)));
    assert_eq!(log.last_seq(), 10);
    assert_eq!(log.last_hash(), sealed[9].event.hash);
    log.append(&pairs(&next)).unwrap();
    drop(log);
    assert_eq!(
        read_lines(&dir.join(seg(count + 1))),
        vec![next[0].line.clone()]
    );
    assert_eq!(verify(&dir).unwrap().last_seq, 11);
}

#[test]
fn open_refuses_a_tampered_last_line() {
    let tmp = TempDir::new("tamper-last");
    let dir = tmp.audit();
    write_log(&dir, 10, 1000);
    let last = segment_files(&dir).pop().unwrap();
    let path = dir.join(&last);
    let mut lines = read_lines(&path);
    let n = lines.len();
    lines[n - 1] = lines[n - 1].replacen("\"outcome\":\"", "\"outcome\":\"s", 1);
    write_lines(&path, &lines);

    let (segment, line, seq, what) = expect_corrupt(AuditLog::open(&dir, 1000).unwrap_err());
    assert_eq!((segment, line, seq), (last, n as u64, Some(10)));
    assert!(
        what.contains("hash mismatch") && what.contains("refusing"),
        "{what}"
    );
    // Nothing was truncated.
    assert_eq!(read_lines(&path), lines);
}

#[test]
fn append_is_idempotent_and_rejects_gaps() {
    let tmp = TempDir::new("idem");
    let dir = tmp.audit();
    let sealed = seal_range(1, 8, GENESIS_HASH.to_string());
    let all = pairs(&sealed);
    let mut log = AuditLog::open(&dir, 1000).unwrap();
    log.append::<String>(&[]).unwrap();
    log.append(&all[..5]).unwrap();
    let bytes = |dir: &Path| -> Vec<u8> {
        segment_files(dir)
            .iter()
            .flat_map(|n| fs::read(dir.join(n)).unwrap())
            .collect()
    };
    let before = bytes(&dir);

    // Replaying what is there changes nothing.
    log.append(&all[..5]).unwrap();
    log.append(&all[2..3]).unwrap();
    assert_eq!(log.last_seq(), 5);
    assert_eq!(bytes(&dir), before);

    // A replay that overlaps the end appends only the new part.
    log.append(&all[3..7]).unwrap();
    assert_eq!(log.last_seq(), 7);
    assert_eq!(log.last_hash(), sealed[6].event.hash);

    // Gaps.
    match log
        .append(&all[7..8])
        .and_then(|_| log.append(&[(10, &all[0].1)]))
    {
        Err(AuditError::Gap {
            expected: 9,
            got: 10,
        }) => {}
        other => panic!("expected Gap, got {other:?}"),
    }
    let more = seal_range(9, 11, sealed[7].event.hash.clone());
    let err = log
        .append(&[(9, &more[0].line), (11, &more[2].line)])
        .unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::Gap {
                expected: 10,
                got: 11
            }
        ),
        "{err}"
    );
    assert_eq!(log.last_seq(), 8, "a rejected batch writes nothing");

    // A line that does not chain, carries another seq, or is damaged.
    let stray = seal(new_event(9), 9, GENESIS_HASH);
    let err = log.append(&[(9, &stray.line)]).unwrap_err();
    assert!(
        matches!(err, AuditError::Invalid { seq: Some(9), .. }),
        "{err}"
    );
    assert!(err.to_string().contains("prev_hash"), "{err}");
    let err = log.append(&[(9, &more[1].line)]).unwrap_err();
    assert!(err.to_string().contains("carries seq 10"), "{err}");
    let err = log
        .append(&[(9, more[0].line.replace("req-9", "req-8"))])
        .unwrap_err();
    assert!(err.to_string().contains("hash mismatch"), "{err}");
    let err = log
        .append(&[(9, format!("{}\n{}", more[0].line, more[1].line))])
        .unwrap_err();
    assert!(matches!(err, AuditError::Invalid { .. }), "{err}");
    // A replayed last event that differs from the log's.
    let err = log.append(&[(8, &stray.line)]).unwrap_err();
    assert!(err.to_string().contains("diverged"), "{err}");
    assert_eq!(log.last_seq(), 8);

    log.append(&pairs(&more)).unwrap();
    drop(log);
    let log = AuditLog::open(&dir, 1000).unwrap();
    assert_eq!(
        (log.last_seq(), log.last_hash()),
        (11, more[2].event.hash.as_str())
    );
    assert_eq!(verify(&dir).unwrap().events, 11);
}

#[test]
fn a_second_writer_is_locked_out() {
    let tmp = TempDir::new("lock");
    let dir = tmp.audit();
    let mut first = AuditLog::open(&dir, 1000).unwrap();
    match AuditLog::open(&dir, 1000) {
        Err(err @ AuditError::Locked { .. }) => {
            let text = err.to_string();
            assert!(text.contains("in use by another process"), "{text}");
            assert!(
                text.contains(&format!("pid {}", std::process::id())),
                "{text}"
            );
            let AuditError::Locked { path, pid } = err else {
                unreachable!()
            };
            assert_eq!((path, pid), (dir.clone(), Some(std::process::id())));
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    // Readers take no lock.
    first
        .append(&pairs(&seal_range(1, 3, GENESIS_HASH.to_string())))
        .unwrap();
    assert_eq!(verify(&dir).unwrap().events, 3);
    assert_eq!(query(&dir, &filter()).unwrap().len(), 3);
    drop(first);
    assert_eq!(AuditLog::open(&dir, 1000).unwrap().last_seq(), 3);
}

fn filter() -> AuditFilter {
    AuditFilter::everything(10_000)
}

#[test]
fn query_filters_and_limits() {
    let tmp = TempDir::new("query");
    let dir = tmp.audit();
    let sealed = write_log(&dir, 60, 2000);
    let events: Vec<_> = sealed.iter().map(|s| s.event.clone()).collect();
    let seqs = |f: &AuditFilter| -> Vec<u64> {
        query(&dir, f).unwrap().into_iter().map(|e| e.seq).collect()
    };
    let expect = |pred: &dyn Fn(&autonomy_api::AuditEvent) -> bool| -> Vec<u64> {
        events.iter().filter(|e| pred(e)).map(|e| e.seq).collect()
    };

    let all = query(&dir, &filter()).unwrap();
    assert_eq!(all, events);

    let f = AuditFilter {
        event_type: Some("rollback.execute".into()),
        ..filter()
    };
    let want = expect(&|e| e.event_type == "rollback.execute");
    assert_eq!((seqs(&f), want.len()), (want, 20));

    let f = AuditFilter {
        actor: Some("bob".into()),
        ..filter()
    };
    assert_eq!(seqs(&f), expect(&|e| e.actor == "bob"));

    let f = AuditFilter {
        resource: Some("plan-3".into()),
        ..filter()
    };
    assert_eq!(seqs(&f), expect(&|e| e.resource == "plan-3"));

    let f = AuditFilter {
        outcome: Some(Outcome::Denied),
        ..filter()
    };
    assert_eq!(seqs(&f), expect(&|e| e.outcome == Outcome::Denied));

    // start <= time < end: events 10 to 19.
    let at = |n: i64| base_us() + n * 60_000_000;
    let f = AuditFilter {
        start_us: Some(at(10)),
        end_us: Some(at(20)),
        ..filter()
    };
    assert_eq!(seqs(&f), (10..20).collect::<Vec<_>>());
    let f = AuditFilter {
        start_us: Some(at(55)),
        ..filter()
    };
    assert_eq!(seqs(&f), (55..=60).collect::<Vec<_>>());
    let f = AuditFilter {
        end_us: Some(at(3)),
        ..filter()
    };
    assert_eq!(seqs(&f), vec![1, 2]);

    // Combined, and limited: the oldest ones first.
    let f = AuditFilter {
        actor: Some("alice".into()),
        event_type: Some("rollout.create".into()),
        ..filter()
    };
    let want = expect(&|e| e.actor == "alice" && e.event_type == "rollout.create");
    assert_eq!(seqs(&f), want);
    let f = AuditFilter { limit: 3, ..f };
    assert_eq!(seqs(&f), want[..3].to_vec());
    let f = AuditFilter {
        limit: 1,
        ..filter()
    };
    assert_eq!(seqs(&f), vec![1]);
    let f = AuditFilter {
        actor: Some("nobody".into()),
        ..filter()
    };
    assert!(seqs(&f).is_empty());
    let f = AuditFilter {
        limit: 0,
        ..filter()
    };
    assert!(seqs(&f).is_empty());

    // Every returned event passes parse_line when re-serialised.
    for e in query(
        &dir,
        &AuditFilter {
            limit: 5,
            ..filter()
        },
    )
    .unwrap()
    {
        assert_eq!(parse_line(&serde_json::to_string(&e).unwrap()).unwrap(), e);
    }
}

#[test]
fn query_names_a_damaged_line() {
    let tmp = TempDir::new("query-bad");
    let dir = tmp.audit();
    write_log(&dir, 10, 100_000);
    let path = dir.join(seg(1));
    let mut lines = read_lines(&path);
    lines[6] = "{\"seq\":7,\"oops\":true}".to_string();
    write_lines(&path, &lines);
    let err = query(&dir, &filter()).unwrap_err();
    assert_eq!(
        err.to_string().split(':').next().unwrap(),
        format!("segment {} line 7 (seq 7)", seg(1))
    );
    // The limit is reached before the bad line: no error.
    assert_eq!(
        query(
            &dir,
            &AuditFilter {
                limit: 6,
                ..filter()
            }
        )
        .unwrap()
        .len(),
        6
    );
    // An unexpected segment-like name is refused rather than skipped.
    let tmp = TempDir::new("query-name");
    let dir = tmp.audit();
    write_log(&dir, 2, 100_000);
    fs::write(dir.join("audit-2.jsonl"), "").unwrap();
    let (segment, _, _, _) = expect_corrupt(query(&dir, &filter()).unwrap_err());
    assert_eq!(segment, "audit-2.jsonl");
}

#[test]
fn a_failed_rotation_rolls_the_whole_batch_back() {
    let tmp = TempDir::new("rotate-fail");
    let dir = tmp.audit();
    let sealed = write_log(&dir, 3, 1000);
    let files = segment_files(&dir);
    let last = dir.join(files.last().unwrap());
    let len = fs::metadata(&last).unwrap().len();
    let mut log = AuditLog::open(&dir, 1000).unwrap();
    // Something in the way of the next segment.
    let blocker = dir.join(seg(files.len() as u64 + 1));
    fs::create_dir(&blocker).unwrap();

    let more = seal_range(4, 12, sealed[2].event.hash.clone());
    let err = log.append(&pairs(&more)).unwrap_err();
    match &err {
        AuditError::Io { path, .. } => assert_eq!(path, &blocker),
        other => panic!("expected Io, got {other:?}"),
    }
    assert_eq!(log.last_seq(), 3);
    assert_eq!(
        fs::metadata(&last).unwrap().len(),
        len,
        "lines written before the failure are rolled back"
    );

    fs::remove_dir(&blocker).unwrap();
    log.append(&pairs(&more)).unwrap();
    drop(log);
    let report = verify(&dir).unwrap();
    assert_eq!(
        (report.events, report.last_hash.as_str()),
        (12, more[8].event.hash.as_str())
    );
}

#[test]
fn a_time_window_query_skips_segments_that_end_before_it() {
    let tmp = TempDir::new("skip");
    let dir = tmp.audit();
    let sealed = write_log(&dir, 40, 1500);
    let segments = segment_files(&dir);
    assert!(segments.len() >= 4, "{segments:?}");
    // Damage the first line of the first segment: only a reader of that segment can notice.
    let first = dir.join(&segments[0]);
    let mut lines = read_lines(&first);
    lines[0] = lines[0]
        .replacen("alice", "mallo", 1)
        .replacen("bob", "eve", 1);
    write_lines(&first, &lines);

    // A window that starts after the first segment ends never reads it...
    let from = sealed[30].event.time.clone();
    let mut f = filter();
    f.start_us = Some(parse_rfc3339_us(&from).unwrap());
    let got = query(&dir, &f).unwrap();
    let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (31..=40).collect::<Vec<u64>>());
    // ...while a query over all history does, and reports the damage.
    let (segment, line, _, _) = expect_corrupt(query(&dir, &filter()).unwrap_err());
    assert_eq!((segment.as_str(), line), (segments[0].as_str(), 1));
}

#[test]
fn query_pages_after_a_cursor_and_skips_the_segments_before_it() {
    let tmp = TempDir::new("cursor");
    let dir = tmp.audit();
    write_log(&dir, 40, 1000);
    assert!(segment_files(&dir).len() >= 5);
    let page = |after_seq: Option<u64>, limit: usize| -> Vec<u64> {
        let f = AuditFilter {
            after_seq,
            limit,
            ..filter()
        };
        query(&dir, &f).unwrap().iter().map(|e| e.seq).collect()
    };
    // Pages of 7 follow each other without gap or repeat.
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let seqs = page(cursor, 7);
        all.extend_from_slice(&seqs);
        if seqs.len() < 7 {
            break;
        }
        cursor = seqs.last().copied();
    }
    assert_eq!(all, (1..=40).collect::<Vec<_>>());
    assert_eq!(page(Some(40), 7), Vec::<u64>::new());
    assert_eq!(page(Some(1_000), 7), Vec::<u64>::new());

    // Segment 1 is damaged: a page after its last seq never reads it; one before does.
    let first = dir.join(seg(1));
    let mut lines = read_lines(&first);
    let last_of_first = seq_of(lines.last().unwrap());
    lines[0] = lines[0].replacen("\"actor\":\"", "\"actor\":\"x", 1);
    write_lines(&first, &lines);
    assert_eq!(
        page(Some(last_of_first), 100),
        (last_of_first + 1..=40).collect::<Vec<_>>()
    );
    let f = AuditFilter {
        after_seq: Some(last_of_first - 1),
        ..filter()
    };
    expect_corrupt(query(&dir, &f).unwrap_err());
}

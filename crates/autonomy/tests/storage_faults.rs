//! Storage faults (SPEC §5.5) on a real, small filesystem: the audit dir on its own tmpfs,
//! filled up while the database still has room. That is the one fault that strikes *after*
//! SQLite has committed: the answer stands (the change and its event are durable in the
//! database's outbox), readiness drops, further writes are refused until the retained store
//! has caught up, and nothing is lost or duplicated once space returns.
//!
//! Mounting needs root (CI runs as root). Without it the test says so and does nothing.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Cp, TestDir};

const JSON: (&str, &str) = ("content-type", "application/json");

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }

    /// Fills the filesystem with `filler`; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut f = fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 4096];
        for _ in 0..100_000 {
            if f.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = f.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn plan(id: &str) -> String {
    format!(r#"{{"metadata":{{"id":"{id}"}},"spec":{{"artifact_ref":"oci://a"}}}}"#)
}

/// SQLite-only: SQLite's retained audit store is on the write path (a PostgreSQL replica's
/// mirror follows the committed chain instead).
#[test]
fn sqlite_only_a_full_audit_disk_refuses_new_writes_until_the_audit_store_catches_up() {
    let root = TestDir::new("auditfull");
    let mnt = root.path().join("audit-fs");
    let Some(fs_guard) = Tmpfs::mount(&mnt, "256k") else {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here (needs root); the storage-fault test did not run"
        );
        return;
    };
    let audit = mnt.join("audit");
    let mut cp = Cp::start(&["--audit-dir", audit.to_str().unwrap()], &[]);
    assert_eq!(cp.post("/v1/rollouts", &[JSON], &plan("before")).0, 201);

    let filler = fs_guard.fill();
    // The database has room, so creates commit; once an append to the full audit dir fails
    // (the last page of the segment may still have had room for a few lines) the answer is
    // still the truth, 201: the change and its event are durable in the database.
    let mut committed = vec!["before".to_string()];
    for i in 0..200 {
        let id = format!("during-{i}");
        let (s, body) = cp.post("/v1/rollouts", &[JSON], &plan(&id));
        assert_eq!(s, 201, "{body}");
        committed.push(id);
        if cp.get("/v1/ready", &[]).0 == 503 {
            break;
        }
    }
    let (s, body) = cp.get("/v1/ready", &[]);
    assert_eq!(s, 503, "ready while the audit store is behind: {body}");
    assert!(
        body.contains("waiting to be written to the audit store"),
        "{body}"
    );
    // No further change is accepted while the retained store is behind.
    let (s, body) = cp.post("/v1/rollouts", &[JSON], &plan("refused"));
    assert_eq!(s, 503, "{body}");
    assert_eq!(cp.get("/v1/rollouts/refused", &[]).0, 404);
    // Reads keep working.
    assert_eq!(
        cp.get(
            &format!("/v1/rollouts/{}", committed[committed.len() - 1]),
            &[]
        )
        .0,
        200
    );

    // Space returns: readiness alone (no write from anyone) brings the audit store level.
    fs::remove_file(filler).unwrap();
    let (s, body) = cp.get("/v1/ready", &[]);
    assert_eq!(s, 200, "{body}");
    assert_eq!(cp.post("/v1/rollouts", &[JSON], &plan("after")).0, 201);
    committed.push("after".to_string());

    // Every committed change has exactly one event in the retained store, and the chain holds
    // against the database's copy.
    assert!(cp.sigterm().success());
    let data = cp.data_dir().to_str().unwrap().to_string();
    let out = cp.cli_with(
        &[
            "audit",
            "verify",
            "--audit-dir",
            audit.to_str().unwrap(),
            "--data-dir",
            &data,
        ],
        &[],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = fs::read_to_string(audit.join("audit-00000001.jsonl")).unwrap();
    for id in &committed {
        let n = text
            .lines()
            .filter(|l| l.contains(&format!(r#""resource":"{id}""#)))
            .count();
        assert_eq!(n, 1, "plan {id}: {n} events");
    }
    assert!(!text.contains(r#""resource":"refused""#));
    drop(fs_guard);
}

/// SQLite-only: the database's own disk fills up, so a batch's `COMMIT` itself fails. Its
/// creates are answered 503 and none of them is kept; every create answered 201 is there,
/// before and after a SIGKILL and a restart. A writer that answered before `COMMIT` fails this
/// on the first refused batch, every run (`scripts/ci/mutation.sh` checks that it does).
#[test]
fn sqlite_only_a_full_database_disk_refuses_the_batch_and_keeps_every_acknowledged_create() {
    let root = TestDir::new("dbfull");
    let mnt = root.path().join("data-fs");
    let Some(fs_guard) = Tmpfs::mount(&mnt, "4m") else {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here (needs root); the storage-fault test did not run"
        );
        return;
    };
    let data = mnt.join("data");
    let audit = root.path().join("audit");
    let mut cp = Cp::start_in(&data, &["--audit-dir", audit.to_str().unwrap()], &[]);
    assert_eq!(cp.post("/v1/rollouts", &[JSON], &plan("before")).0, 201);

    let filler = fs_guard.fill();
    let mut acknowledged = vec!["before".to_string()];
    let mut refused = None;
    // Bounded: the database file and its WAL cannot grow into a full disk, so a COMMIT fails
    // within a few creates (the first one, here).
    for i in 0..300 {
        let id = format!("during-{i}");
        let (s, body) = cp.post("/v1/rollouts", &[JSON], &plan(&id));
        match s {
            201 => acknowledged.push(id),
            503 => {
                refused = Some(id);
                break;
            }
            other => panic!("create {id} on a full database disk: {other} {body}"),
        }
    }
    for id in &acknowledged {
        let (s, body) = cp.get(&format!("/v1/rollouts/{id}"), &[]);
        assert_eq!(s, 200, "acknowledged create {id} is missing: {body}");
    }
    let refused = refused.expect("no create was refused while the database's disk was full");
    assert_eq!(cp.get(&format!("/v1/rollouts/{refused}"), &[]).0, 404);

    // Space returns; a SIGKILL and a restart keep every acknowledged create.
    fs::remove_file(filler).unwrap();
    cp.sigkill();
    cp.start_again();
    for id in &acknowledged {
        let (s, body) = cp.get(&format!("/v1/rollouts/{id}"), &[]);
        assert_eq!(
            s, 200,
            "acknowledged create {id} is missing after a restart: {body}"
        );
    }
    assert_eq!(cp.get(&format!("/v1/rollouts/{refused}"), &[]).0, 404);
    eprintln!(
        "{} creates acknowledged before the full database disk refused {refused}; all kept",
        acknowledged.len()
    );
}

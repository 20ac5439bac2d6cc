//! Signed audit checkpoints (SPEC §5.9): the key in the data dir, the public half at
//! `GET /v1/audit/public-key`, a checkpoint at a clean stop, and `audit verify --public-key`
//! catching what the unkeyed chain cannot: a history rewritten (or cut) before the last
//! checkpoint, or a checkpoint not signed by the key.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::Cp;

const JSON: (&str, &str) = ("content-type", "application/json");

fn public_key_file(cp: &Cp) -> PathBuf {
    cp.data_dir().join("audit-signing.pub")
}

/// `autonomy audit verify --audit-dir D [--public-key F]` (offline).
fn verify(cp: &Cp, key: Option<&Path>) -> Output {
    let dir = cp.audit_dir();
    let mut args = vec!["audit", "verify", "--audit-dir", dir.to_str().unwrap()];
    if let Some(key) = key {
        args.extend(["--public-key", key.to_str().unwrap()]);
    }
    cp.cli(&args)
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// The only segment (these tests stay well below the 64 MiB segment size).
fn segment(cp: &Cp) -> PathBuf {
    cp.audit_dir().join("audit-00000001.jsonl")
}

/// A CP that ran `n` creates and stopped cleanly.
fn stopped_cp(n: usize) -> Cp {
    let mut cp = Cp::start(&[], &[]);
    common::create_some(&cp, "signed", n);
    let status = cp.sigterm();
    assert!(status.success(), "SIGTERM exit: {status}");
    cp
}

#[test]
fn verify_with_the_public_key_reports_no_unsigned_tail_after_a_clean_stop() {
    let cp = stopped_cp(5);
    let key = public_key_file(&cp);
    let out = verify(&cp, Some(&key));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    // The start's events + 5 plans, all covered by the checkpoint written at the stop.
    let n = common::first_start_events() + 5;
    assert!(stdout.starts_with("ok "), "{stdout}");
    for want in [
        format!("events={n}"),
        format!("last_seq={n}"),
        format!("last_checkpoint_seq={n}"),
        "unsigned_tail=0".to_string(),
    ] {
        assert!(stdout.contains(&want), "{want} missing: {stdout}");
    }
    let checkpoints = fs::read_to_string(cp.audit_dir().join("checkpoints.jsonl")).unwrap();
    let last: serde_json::Value =
        serde_json::from_str(checkpoints.lines().last().unwrap()).unwrap();
    assert_eq!(last["seq"], n);
    assert_eq!(last["signature"].as_str().unwrap().len(), 128);

    // Without --public-key, verify answers as it always did.
    let out = verify(&cp, None);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(!stdout.contains("unsigned_tail"), "{stdout}");

    // Events after the last checkpoint are reported, not hidden: a crash leaves them unsigned.
    let mut cp2 = Cp::start_in(cp.data_dir(), &[], &[]);
    common::create_some(&cp2, "after", 2);
    common::settle_mirror(&cp2);
    cp2.sigkill();
    let out = verify(&cp, Some(&key));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let tail = common::restart_events() + 2;
    assert!(
        stdout.contains(&format!("last_checkpoint_seq={n}"))
            && stdout.contains(&format!("unsigned_tail={tail}")),
        "{stdout}"
    );
}

#[test]
fn verify_with_the_public_key_catches_a_forged_line_before_the_last_checkpoint() {
    let cp = stopped_cp(5);
    let key = public_key_file(&cp);
    let seg = segment(&cp);
    let original = fs::read_to_string(&seg).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    let n = common::first_start_events() + 5;
    assert_eq!(lines.len(), n);

    // Insert a forged, correctly hashed event after seq 2 and re-seal everything after it: a
    // chain that is sound on its own, one event longer.
    let mut forged_lines: Vec<String> = lines[..2].iter().map(|l| l.to_string()).collect();
    let mut prev = autonomy_audit::parse_line(lines[1]).unwrap().hash;
    let mut forged = autonomy_audit::parse_line(lines[2]).unwrap();
    forged.actor = "mallory".into();
    forged.resource = "plan-that-never-was".into();
    let originals = lines[2..]
        .iter()
        .map(|l| autonomy_audit::parse_line(l).unwrap());
    for (i, event) in std::iter::once(forged).chain(originals).enumerate() {
        let sealed = autonomy_audit::seal(event, 3 + i as u64, &prev);
        prev = sealed.event.hash.clone();
        forged_lines.push(sealed.line);
    }
    fs::write(&seg, forged_lines.join("\n") + "\n").unwrap();

    let out = verify(&cp, None);
    assert!(
        out.status.success(),
        "the unkeyed chain alone cannot tell: {}",
        text(&out.stderr)
    );
    let out = verify(&cp, Some(&key));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("seq {n}")) && err.contains("signed checkpoint"),
        "must name the checkpoint's seq: {err}"
    );

    // Cutting the history short of the checkpoint fails too.
    fs::write(&seg, lines[..4].join("\n") + "\n").unwrap();
    assert!(verify(&cp, None).status.success());
    let out = verify(&cp, Some(&key));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("checkpoints.jsonl line 1") && err.contains(&format!("seq {n}")),
        "{err}"
    );
}

#[test]
fn a_checkpoint_not_signed_by_the_key_fails() {
    let cp = stopped_cp(3);
    let key = public_key_file(&cp);
    let seg = segment(&cp);
    let original = fs::read_to_string(&seg).unwrap();
    let head = autonomy_audit::parse_line(original.lines().last().unwrap()).unwrap();

    // A forged event after the last checkpoint is only an unsigned tail…
    let mut event = head.clone();
    event.actor = "mallory".into();
    let sealed = autonomy_audit::seal(event, head.seq + 1, &head.hash);
    fs::write(&seg, format!("{original}{}\n", sealed.line)).unwrap();
    let out = verify(&cp, Some(&key));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("unsigned_tail=1"), "{stdout}");

    // …and a checkpoint for it, signed with another key, is a forgery.
    let attacker = autonomy_audit::Signer::from_seed(&[42; 32]);
    let checkpoint = attacker.sign(
        sealed.event.seq,
        &sealed.event.hash,
        "2026-12-01T00:00:00.000000Z",
    );
    let path = cp.audit_dir().join("checkpoints.jsonl");
    let mut checkpoints = fs::read_to_string(&path).unwrap();
    checkpoints.push_str(&serde_json::to_string(&checkpoint).unwrap());
    checkpoints.push('\n');
    fs::write(&path, checkpoints).unwrap();
    let out = verify(&cp, Some(&key));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("checkpoints.jsonl line 2")
            && err.contains(&format!("seq {}", sealed.event.seq))
            && err.contains("bad signature"),
        "{err}"
    );

    // A key file that is not a key is a usage error.
    let bad = cp.data_dir().join("not-a-key.pub");
    fs::write(&bad, "hello\n").unwrap();
    let out = verify(&cp, Some(&bad));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn the_key_is_private_and_its_public_half_is_a_viewer_read() {
    let cp = Cp::start(&[], &[("AUTONOMY_RBAC_ENFORCEMENT", "1")]);
    let key_file = cp.data_dir().join("audit-signing.key");
    let mode = fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", key_file.display());
    let public = fs::read_to_string(public_key_file(&cp)).unwrap();
    let public = public.trim();
    assert_eq!(public.len(), 64, "{public}");

    let (status, body) = cp.get("/v1/audit/public-key", &[]);
    assert_eq!(status, 401, "{body}");

    let admin = format!("Bearer {}", cp.admin_token());
    let (status, body) = cp.post(
        "/v1/tokens",
        &[JSON, ("authorization", &admin)],
        r#"{"operator":"val","role":"viewer"}"#,
    );
    assert_eq!(status, 201, "{body}");
    let viewer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let viewer = format!("Bearer {}", viewer["token"].as_str().unwrap());
    let (status, body) = cp.get("/v1/audit/public-key", &[("authorization", &viewer)]);
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["algorithm"], "ed25519");
    assert_eq!(answer["public_key"], public);

    // The key survives restarts unchanged.
    let data_dir = cp.data_dir().to_path_buf();
    let mut cp = cp;
    assert!(cp.sigterm().success());
    let again = Cp::start_in(&data_dir, &[], &[]);
    let (status, body) = again.get("/v1/audit/public-key", &[]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(public), "{body}");
}

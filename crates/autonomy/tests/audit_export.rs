//! Audit export past 10,000 events (issue 15, SPEC §3): `GET /v1/audit/events` pages with
//! `next_cursor`, and `autonomy audit query --all` follows it online and offline
//! (`--audit-dir`), every event once, in order, in `-o jsonl`, `-o json` and text.

mod common;

use std::time::Duration;

use autonomy_testkit::http::Conn;
use common::{Cp, OutputExt};

/// Events made for the export: more than two pages of the largest page (10,000).
const EVENTS: usize = 25_000;
const WRITERS: usize = 16;

/// Creates `n` draft plans over `WRITERS` kept-alive connections: one audit event each.
fn create_many(cp: &Cp, n: usize) {
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let url = cp.url.clone();
            s.spawn(move || {
                let mut conn = Conn::new(&url, Duration::from_secs(30)).unwrap();
                for i in (w..n).step_by(WRITERS) {
                    let body = format!(
                        r#"{{"metadata":{{"id":"exp-{i}"}},"spec":{{"artifact_ref":"oci://a"}},"draft":true}}"#
                    );
                    let r = conn
                        .send(
                            "POST",
                            "/v1/rollouts",
                            &[("content-type", "application/json")],
                            Some(body.as_bytes()),
                        )
                        .unwrap_or_else(|e| panic!("create exp-{i}: {e}"));
                    assert_eq!(r.status, 201, "exp-{i}: {}", r.text());
                }
            });
        }
    });
}

/// The seqs of a JSON-lines export, checked to be 1..=N without gap; returns N.
fn check_jsonl(stdout: &str) -> usize {
    let mut n = 0;
    for (i, line) in stdout.lines().enumerate() {
        let e: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|err| panic!("line {}: {err}", i + 1));
        assert_eq!(e["seq"], (i + 1) as u64, "line {}", i + 1);
        n += 1;
    }
    n
}

#[test]
fn a_25000_event_history_exports_whole_and_in_order_online_and_offline() {
    let cp = Cp::start(&[], &[]);
    create_many(&cp, EVENTS);

    // The API pages: a full page has next_cursor (its last seq), the cursor continues it, and
    // the last page has none.
    let (status, body) = cp.get("/v1/audit/events?limit=10000", &[]);
    assert_eq!(status, 200);
    let first: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(first["items"].as_array().unwrap().len(), 10_000);
    assert_eq!(first["next_cursor"], "10000");
    let (_, body) = cp.get("/v1/audit/events?limit=10000&cursor=20000", &[]);
    let last: serde_json::Value = serde_json::from_str(&body).unwrap();
    let items = last["items"].as_array().unwrap();
    assert!(items.len() >= EVENTS - 20_000, "{}", items.len());
    assert_eq!(items[0]["seq"], 20_001);
    assert!(last["next_cursor"].is_null());
    let (status, body) = cp.get("/v1/audit/events?cursor=-1", &[]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("cursor"), "{body}");

    // Online, --all -o jsonl.
    let online = cp.cli(&["audit", "query", "--all", "-o", "jsonl"]);
    online.assert_code(0);
    let online = online.stdout_str();
    let n = check_jsonl(&online);
    assert!(n > EVENTS, "{n}");

    // Offline, --all -o jsonl: the same events, byte for byte.
    common::settle_mirror(&cp);
    let dir = cp.audit_dir();
    let dir = dir.to_str().unwrap();
    let offline = cp.cli(&["audit", "query", "--all", "-o", "jsonl", "--audit-dir", dir]);
    offline.assert_code(0);
    assert!(
        offline.stdout_str() == online,
        "offline and online exports differ"
    );

    // Smaller pages, -o json, online and offline: one document with every event.
    for extra in [&[][..], &["--audit-dir", dir][..]] {
        let mut args = vec!["audit", "query", "--all", "--limit", "7000", "-o", "json"];
        args.extend_from_slice(extra);
        let out = cp.cli(&args);
        out.assert_code(0);
        let doc = out.json();
        assert!(doc["next_cursor"].is_null());
        let seqs: Vec<u64> = doc["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=n as u64).collect::<Vec<_>>(), "{extra:?}");
    }

    // Text, offline, filtered, from a cursor: every plan created after seq 24000 is listed.
    let out = cp.cli(&[
        "audit",
        "query",
        "--all",
        "--cursor",
        "24000",
        "--event-type",
        "plan.created",
        "--audit-dir",
        dir,
    ]);
    out.assert_code(0);
    let text = out.stdout_str();
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(rows.len(), n - 24_000, "{text}");
    assert!(rows[0].starts_with("24001 "), "{}", rows[0]);

    // Without --all, one page as before (the default 100), with its cursor in -o json.
    let out = cp.cli(&["audit", "query", "-o", "json"]);
    out.assert_code(0);
    let doc = out.json();
    assert_eq!(doc["items"].as_array().unwrap().len(), 100);
    assert_eq!(doc["next_cursor"], "100");
    let out = cp.cli(&[
        "audit",
        "query",
        "--audit-dir",
        dir,
        "--cursor",
        "100",
        "--limit",
        "5",
        "-o",
        "jsonl",
    ]);
    out.assert_code(0);
    let seqs: Vec<u64> = out
        .stdout_str()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, vec![101, 102, 103, 104, 105]);
}

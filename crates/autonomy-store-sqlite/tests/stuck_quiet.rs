//! Migration 0008: `assignments.seen_us` mirrors `devices.last_seen_us` on the device's current
//! assignment (the one `devices.plan_id` names), kept by a trigger in the same statement, for
//! every way the device row changes: a heartbeat flush, a later poll, a new plan.

use autonomy_store::Store;
use autonomy_store_sqlite::{SqliteStore, StoreConfig};
use rusqlite::{params, Connection};

/// A store migrated to the latest schema in `dir`, closed again.
fn migrated(dir: &std::path::Path) -> Connection {
    let lock = SqliteStore::lock(dir).unwrap();
    let (store, _) = SqliteStore::open(
        &StoreConfig::new(dir.to_path_buf(), dir.join("audit")),
        lock,
    )
    .unwrap();
    store.close().unwrap();
    Connection::open(dir.join("autonomy.db")).unwrap()
}

fn seen(conn: &Connection, plan: &str, device: &str) -> Option<i64> {
    conn.query_row(
        "SELECT seen_us FROM assignments WHERE plan_id = ?1 AND device_id = ?2",
        [plan, device],
        |r| r.get(0),
    )
    .unwrap()
}

fn assign(conn: &Connection, plan: &str, device: &str, ord: i64) {
    conn.execute(
        "INSERT INTO assignments (plan_id, device_id, stage, ord, state, attempt, last_seq, \
         dispatched_at_us, updated_at_us, state_since_us, message) \
         VALUES (?1, ?2, 0, ?3, 'dispatched', 1, 0, 10, 10, 10, '')",
        params![plan, device, ord],
    )
    .unwrap();
    // As the writer's activation does: the assignment, then the device's current plan.
    conn.execute(
        "UPDATE devices SET plan_id = ?2 WHERE id = ?1",
        [device, plan],
    )
    .unwrap();
}

#[test]
fn the_assignment_copy_of_last_seen_follows_the_device_row() {
    let dir = std::env::temp_dir().join(format!("autonomy-quiet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let conn = migrated(&dir);
    for id in ["d1", "d2"] {
        conn.execute(
            "INSERT INTO devices (id, labels, created_us) VALUES (?1, '{}', 1)",
            [id],
        )
        .unwrap();
    }
    // d1 polled before it was assigned: the new assignment takes its last poll.
    conn.execute("UPDATE devices SET last_seen_us = 100 WHERE id = 'd1'", [])
        .unwrap();
    assign(&conn, "p1", "d1", 0);
    assign(&conn, "p1", "d2", 1);
    assert_eq!(seen(&conn, "p1", "d1"), Some(100));
    assert_eq!(seen(&conn, "p1", "d2"), None, "never polled");
    // A heartbeat flush (the writer's statement) moves the copy with it.
    conn.execute(
        "UPDATE devices SET last_seen_us = max(coalesce(last_seen_us, 0), ?2) WHERE id = ?1",
        params!["d2", 250],
    )
    .unwrap();
    assert_eq!(seen(&conn, "p1", "d2"), Some(250));
    // A later plan: the new assignment follows, the old one keeps its last value.
    assign(&conn, "p2", "d1", 0);
    conn.execute("UPDATE devices SET last_seen_us = 300 WHERE id = 'd1'", [])
        .unwrap();
    assert_eq!(seen(&conn, "p2", "d1"), Some(300));
    assert_eq!(seen(&conn, "p1", "d1"), Some(100));
    // Every current assignment agrees with its device.
    let disagree: i64 = conn
        .query_row(
            "SELECT count(*) FROM devices d JOIN assignments a \
             ON a.plan_id = d.plan_id AND a.device_id = d.id \
             WHERE a.seen_us IS NOT d.last_seen_us",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(disagree, 0);
    drop(conn);
    let _ = std::fs::remove_dir_all(&dir);
}

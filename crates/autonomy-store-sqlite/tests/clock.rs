//! The stuck scan's clock: wall-clock timestamps survive restarts, but a clock stepped backwards
//! must never hide a stale plan. Simulated by making the store's records newer than the wall
//! clock (what a store written before a backward step of two hours looks like).

use std::sync::Arc;

use autonomy_api::{CreateMetadata, CreateRolloutRequest, PlanSpec};
use autonomy_store::{now_us, Ctx, NewPlan, Store};
use autonomy_store_sqlite::{SqliteStore, StoreConfig};

const HOUR_US: i64 = 3_600_000_000;

/// Opens the store in `dir` (off the runtime: opening blocks on the writer thread).
async fn open(dir: &std::path::Path) -> SqliteStore {
    let d = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let lock = SqliteStore::lock(&d).unwrap();
        SqliteStore::open(&StoreConfig::new(d.clone(), d.join("audit")), lock)
            .unwrap()
            .0
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_backward_clock_step_never_hides_a_stale_plan() {
    let dir = std::env::temp_dir().join(format!("autonomy-clock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = open(&dir).await;
    let store = Arc::new(store);
    let ctx = Ctx::system("test");
    let plan = NewPlan {
        id: "p1".into(),
        request: CreateRolloutRequest {
            metadata: CreateMetadata::default(),
            spec: PlanSpec {
                artifact_ref: "oci://r/a".into(),
                target_lock_fingerprint: None,
                targets: Default::default(),
                stages: vec![],
                policy: None,
            },
            draft: false,
        },
        warnings: vec![],
    };
    store.create_plan(&ctx, plan).await.unwrap();
    store.close().unwrap();
    drop(store);
    // Rewrite history as a clock two hours ahead would have written it: the plan's last
    // progress 60 s before the newest event, both two hours in the wall clock's future.
    let future = now_us() + 2 * HOUR_US;
    let conn = rusqlite::Connection::open(dir.join("autonomy.db")).unwrap();
    conn.execute("UPDATE audit_events SET time_us = ?1", [future])
        .unwrap();
    conn.execute(
        "UPDATE plans SET last_progress_us = ?1, phase_changed_us = ?1",
        [future - 60_000_000],
    )
    .unwrap();
    drop(conn);
    let store = open(&dir).await;
    // On the wall clock the plan looks two hours fresh; it was 60 s stale when the clock went
    // back, and stays at least that stale.
    let report = store.stuck(30.0, 100, None, true).await.unwrap();
    assert_eq!(report.stuck_count, 1, "{report:#?}");
    assert!(report.items[0].stale_seconds >= 60.0, "{report:#?}");
    store.close().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

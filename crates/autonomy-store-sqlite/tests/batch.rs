//! Batches of plain creates run without per-job savepoints and, when one of their jobs fails,
//! are rolled back and run again with a savepoint per job (issue 13). Whatever the batching,
//! every create gets the answer it would get alone, and the audit chain holds exactly one
//! event per answer.

use std::collections::BTreeMap;
use std::sync::Arc;

use autonomy_api::{AuditFilter, CreateMetadata, CreateRolloutRequest, Outcome, PlanSpec};
use autonomy_store::{Ctx, NewPlan, Reply, Store, StoreError};
use autonomy_store_sqlite::{SqliteStore, StoreConfig};

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

fn plan(id: &str) -> NewPlan {
    NewPlan {
        id: id.into(),
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
    }
}

#[tokio::test]
async fn creates_queued_together_with_duplicates_get_their_own_answers() {
    let dir = std::env::temp_dir().join(format!("autonomy-batch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(open(&dir).await);
    // 200 distinct ids, every tenth one asked for twice in a row: all are queued before the
    // first answer, so the writer takes them in a few large batches, most of which hold a
    // duplicate (a failing job) among plain creates.
    let mut ids = Vec::new();
    for i in 0..200 {
        ids.push(format!("p{i:03}"));
        if i % 10 == 0 {
            ids.push(format!("p{i:03}"));
        }
    }
    let ctx = Ctx::system("batch-test");
    let answers = futures_join(&store, &ctx, &ids).await;
    let (mut created, mut conflicts) = (BTreeMap::new(), BTreeMap::new());
    for (id, answer) in ids.iter().zip(answers) {
        match answer {
            Ok(Reply::Created(r)) => {
                assert_eq!(r.plan.metadata.id, *id);
                *created.entry(id.clone()).or_insert(0) += 1;
            }
            Err(StoreError::Conflict(why)) => {
                assert!(why.contains(id.as_str()), "{why}");
                *conflicts.entry(id.clone()).or_insert(0) += 1;
            }
            other => panic!("{id}: unexpected answer {other:?}"),
        }
    }
    assert_eq!(created.len(), 200, "every id created once");
    assert!(created.values().all(|&n| n == 1));
    assert_eq!(conflicts.len(), 20, "every repeated id refused once");
    assert!(conflicts.values().all(|&n| n == 1));

    // One event per answer: 200 successful creations and 20 rejected duplicates, chained after
    // the first admin token's creation (made at the first open).
    let events = store
        .audit_events(AuditFilter {
            event_type: None,
            actor: None,
            resource: None,
            outcome: None,
            start_us: None,
            end_us: None,
            limit: 1000,
            after_seq: None,
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 221);
    assert_eq!(events[0].event_type, "token.created");
    let ok = events
        .iter()
        .filter(|e| e.event_type == "plan.created" && e.outcome == Outcome::Success)
        .count();
    let rejected = events
        .iter()
        .filter(|e| e.event_type == "plan.created" && e.outcome == Outcome::Rejected)
        .count();
    assert_eq!((ok, rejected), (200, 20));
    for (n, e) in events.iter().enumerate() {
        assert_eq!(e.seq, n as u64 + 1, "seqs without a gap");
    }
    store.close().unwrap();
    let report = autonomy_audit::verify(&dir.join("audit")).unwrap();
    assert_eq!(
        report.events, 221,
        "the retained store holds every event once"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends every create at once and collects the answers in order. On the test's
/// current-thread runtime the spawned tasks run back to back at the first `await`, each
/// queueing its job before any answer can arrive, so the writer finds most of them waiting
/// together.
async fn futures_join(
    store: &Arc<SqliteStore>,
    ctx: &Ctx,
    ids: &[String],
) -> Vec<autonomy_store::Result<Reply>> {
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let (store, ctx, p) = (store.clone(), ctx.clone(), plan(id));
            tokio::spawn(async move { store.create_plan(&ctx, p).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

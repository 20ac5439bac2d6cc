//! The fenced leader (SPEC §7). One dedicated, unpooled session per replica tries
//! `pg_try_advisory_lock` every second (a pooled connection would be recycled and silently
//! drop the lock). The replica that gets it raises the epoch in the `leader` row — in a writer
//! transaction that also audits `leader.acquired` — and promotes under that epoch; every
//! promoter write checks the stored epoch first, so a leader that was frozen or cut off and
//! comes back writes nothing. The session is checked every second: any error (or a check that
//! takes more than two seconds) and this replica stops promoting at once. The session runs
//! with `idle_session_timeout`, so PostgreSQL itself ends the session of a leader that is
//! frozen (SIGSTOP) or partitioned, which releases the lock for the next one.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autonomy_store::{Ctx, Reply};
use tokio::sync::mpsc;

use crate::writer::{Command, Job};
use crate::{Shared, LEADER_LOCK};

const CHECK_EVERY: Duration = Duration::from_secs(1);
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) async fn run(
    config: tokio_postgres::Config,
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Job>,
    idle_timeout: Duration,
) {
    // The leader's own queue handle: `close` drops the store's, this one ends with the task.
    let jobs = Mutex::new(Some(jobs));
    let mut warned = false;
    while !shared.closing.load(Ordering::SeqCst) {
        match session(&config, &shared, &jobs, idle_timeout).await {
            Ok(()) => {}
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "the leader session failed; retrying every second");
                    warned = true;
                }
            }
        }
        step_down(&shared);
        pause(&shared).await;
    }
}

/// Waits a check interval, or less when the store closes.
async fn pause(shared: &Shared) {
    tokio::select! {
        () = tokio::time::sleep(CHECK_EVERY) => {}
        () = shared.stop.notified() => {}
    }
}

fn step_down(shared: &Shared) {
    let was = shared.epoch.swap(0, Ordering::SeqCst);
    if was != 0 {
        tracing::warn!(
            epoch = was,
            "stepped down as leader: no promoter writes from here"
        );
    }
}

/// One session: connect, then every second either try to take the lock or check that the
/// session still holds it. Returns on any error (the caller steps down and reconnects).
async fn session(
    config: &tokio_postgres::Config,
    shared: &Shared,
    jobs: &Mutex<Option<mpsc::Sender<Job>>>,
    idle_timeout: Duration,
) -> Result<(), String> {
    let client = tokio::time::timeout(CHECK_TIMEOUT * 2, crate::pg::connect(config))
        .await
        .map_err(|_| "connecting timed out".to_string())?
        .map_err(|e| e.to_string())?;
    client
        .batch_execute(&format!(
            "SET idle_session_timeout = {}",
            idle_timeout.as_millis().max(1000)
        ))
        .await
        .map_err(|e| e.to_string())?;
    let mut holding = false;
    while !shared.closing.load(Ordering::SeqCst) {
        if holding {
            let check = tokio::time::timeout(CHECK_TIMEOUT, client.simple_query("SELECT 1")).await;
            match check {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("the leader session failed: {e}")),
                Err(_) => return Err("the leader session check timed out".into()),
            }
        } else {
            let got = tokio::time::timeout(
                CHECK_TIMEOUT,
                client.query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK]),
            )
            .await
            .map_err(|_| "trying the leader lock timed out".to_string())?
            .map_err(|e| e.to_string())?
            .get::<_, bool>(0);
            if got {
                match acquired(shared, jobs).await {
                    Ok(epoch) => {
                        shared.epoch.store(epoch, Ordering::SeqCst);
                        shared.leadership.send_replace(epoch);
                        holding = true;
                        tracing::info!(epoch, replica = %shared.replica, "became the leader");
                    }
                    Err(e) => {
                        // Give the lock back: another replica may manage where we could not.
                        let _ = client
                            .query_one("SELECT pg_advisory_unlock($1)", &[&LEADER_LOCK])
                            .await;
                        return Err(format!("could not raise the leader epoch: {e}"));
                    }
                }
            }
        }
        pause(shared).await;
    }
    // A clean stop gives the lock back at once (closing the session would too).
    if holding {
        step_down(shared);
        let _ = client
            .query_one("SELECT pg_advisory_unlock($1)", &[&LEADER_LOCK])
            .await;
    }
    Ok(())
}

/// Raises the epoch and audits `leader.acquired` through the writers.
async fn acquired(shared: &Shared, jobs: &Mutex<Option<mpsc::Sender<Job>>>) -> Result<u64, String> {
    let ctx = Ctx {
        actor: format!("system:{}", shared.replica),
        request_id: format!("leader-{}", autonomy_store::now_us()),
        idempotency: None,
    };
    let command = Command::LeaderAcquired {
        replica: shared.replica.clone(),
    };
    match crate::submit(jobs, 1, &ctx, command).await {
        Ok(Reply::LeaderAcquired { epoch }) => Ok(epoch),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

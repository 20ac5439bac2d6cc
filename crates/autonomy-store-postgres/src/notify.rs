//! Long polls woken across replicas. A device long-polls one replica while the leader — maybe
//! another replica — dispatches to it; the writer that raised a device's revision sends its id
//! with `pg_notify` in the same transaction (delivered only if it commits), and every replica
//! listens on one unpooled session and wakes its own waiters for those devices. A notification
//! missed while the listener reconnects costs only latency: the long poll still answers at its
//! timeout with what the database holds.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::Shared;

/// The channel the writers notify on.
pub(crate) const CHANNEL: &str = "autonomy_wake";

/// The most bytes of device ids one notification carries (PostgreSQL's limit is 8000).
pub(crate) const PAYLOAD_BYTES: usize = 7000;

/// The device ids of `woken`, as notification payloads (comma-separated, each under
/// [`PAYLOAD_BYTES`]; ids never contain a comma: they are validated like labels).
pub(crate) fn payloads(woken: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for id in woken {
        if !cur.is_empty() && cur.len() + 1 + id.len() > PAYLOAD_BYTES {
            out.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(',');
        }
        cur.push_str(id);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Listens until the store closes, reconnecting every second after a failure.
pub(crate) async fn run(config: tokio_postgres::Config, shared: Arc<Shared>) {
    let mut warned = false;
    while !shared.closing.load(Ordering::SeqCst) {
        if let Err(e) = session(&config, &shared).await {
            if !warned {
                tracing::warn!(error = %e, "the long-poll listener lost its session; reconnecting every second");
                warned = true;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = shared.stop.notified() => {}
        }
    }
}

async fn session(config: &tokio_postgres::Config, shared: &Shared) -> Result<(), String> {
    let (client, mut connection) = config.connect(NoTls).await.map_err(|e| e.to_string())?;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    // The connection is driven here, so its notifications can be read.
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Ok(()),
            }
        }
    });
    let listening = client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(|e| e.to_string());
    let result = match listening {
        Err(e) => Err(e),
        Ok(()) => loop {
            if shared.closing.load(Ordering::SeqCst) {
                break Ok(());
            }
            tokio::select! {
                got = rx.recv() => match got {
                    Some(payload) => shared.live.wake(payload.split(',')),
                    None => break Err("the listener's connection ended".to_string()),
                },
                () = shared.stop.notified() => break Ok(()),
            }
        },
    };
    drop(client);
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_stay_under_the_limit_and_keep_every_id() {
        let ids: Vec<String> = (0..3000).map(|i| format!("device-{i:05}")).collect();
        let p = payloads(&ids);
        assert!(p.len() > 1);
        assert!(p.iter().all(|s| s.len() <= PAYLOAD_BYTES));
        let back: Vec<&str> = p.iter().flat_map(|s| s.split(',')).collect();
        assert_eq!(back, ids.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(payloads(&[]).is_empty());
    }
}

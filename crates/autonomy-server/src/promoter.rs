//! The promoter (SPEC §8.3): one loop that ticks every `interval`, and within a few ms of a
//! report that settles a device. A tick reads, in one snapshot, which engine-driven plans
//! `decide` has something for, then asks the store to promote each — one conditional write per
//! plan that decides again on what is stored and applies only if the plan's generation and the
//! leader epoch are still those read. A replay, a concurrent operator verb or a SIGKILL at any
//! instant leaves nothing half-done.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use autonomy_store::{Ctx, Reply, Store};
use tokio::sync::Notify;

use crate::AppState;

/// The actor of every promoter action.
pub const PROMOTER_ACTOR: &str = "system:promoter";

/// How the promoter runs (`serve --promoter`, `--promoter-interval`).
#[derive(Debug, Clone)]
pub struct PromoterConfig {
    pub interval: Duration,
    /// The most devices one tick dispatches per plan.
    pub max_dispatch: u64,
}

impl Default for PromoterConfig {
    fn default() -> Self {
        PromoterConfig {
            interval: Duration::from_secs(1),
            max_dispatch: 1000,
        }
    }
}

/// What the server knows of the promoter: its wake-up, when it last finished a tick, counters.
#[derive(Debug)]
pub struct EngineState {
    wake: Notify,
    /// When the last tick finished (µs; 0: never).
    pub last_tick_us: AtomicI64,
    pub ticks: AtomicU64,
    pub actions: AtomicU64,
    /// Whether a promoter loop runs in this process.
    pub enabled: std::sync::atomic::AtomicBool,
    interval_us: AtomicI64,
    /// Set when the server stops: waiting long polls answer at once.
    closing: tokio::sync::watch::Sender<bool>,
}

impl Default for EngineState {
    fn default() -> Self {
        EngineState {
            wake: Notify::new(),
            last_tick_us: AtomicI64::new(0),
            ticks: AtomicU64::new(0),
            actions: AtomicU64::new(0),
            enabled: std::sync::atomic::AtomicBool::new(false),
            interval_us: AtomicI64::new(0),
            closing: tokio::sync::watch::channel(false).0,
        }
    }
}

impl EngineState {
    /// The server is stopping: every waiting long poll answers now (SPEC §5.2: in-flight
    /// requests finish; a long poll is one).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Changes (to `true`) when the server stops.
    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Asks for a tick now (a report settled a device).
    pub fn wake_promoter(&self) {
        self.wake.notify_one();
    }

    /// Whether a promoter drives the engine-driven plans: one runs here and it ticked lately.
    pub fn promoter_running(&self, now_us: i64) -> bool {
        if !self.enabled.load(Ordering::Relaxed) {
            return false;
        }
        let last = self.last_tick_us.load(Ordering::Relaxed);
        let slack = self.interval_us.load(Ordering::Relaxed).saturating_mul(5) + 10_000_000;
        last > 0 && now_us - last <= slack
    }
}

/// Runs the promoter until the task is aborted.
pub async fn run<S: Store>(state: AppState<S>, config: PromoterConfig) {
    let engine = state.engine.clone();
    engine.enabled.store(true, Ordering::Relaxed);
    engine
        .interval_us
        .store(config.interval.as_micros() as i64, Ordering::Relaxed);
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A replica that just became the leader ticks at once, not an interval later (failover).
    let mut leadership = state.store.leadership();
    loop {
        let became_leader = async {
            match leadership.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ticker.tick() => {}
            _ = engine.wake.notified() => {
                // Let the reports of the same moment land first: one tick serves them all.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            changed = became_leader => {
                if !changed {
                    leadership = None; // the store stopped: back to the ticker alone
                }
            }
        }
        match tick(&state.store, &config).await {
            Ok(n) => {
                engine.actions.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "promoter tick failed; will retry"),
        }
        engine.ticks.fetch_add(1, Ordering::Relaxed);
        engine
            .last_tick_us
            .store(autonomy_store::now_us(), Ordering::Relaxed);
    }
}

/// One tick over every plan; the number of actions applied.
pub async fn tick<S: Store>(
    store: &Arc<S>,
    config: &PromoterConfig,
) -> autonomy_store::Result<u64> {
    // Only the leader promotes (SPEC §7); a follower reads nothing either.
    let epoch = store.epoch();
    if epoch == 0 {
        return Ok(0);
    }
    let now = autonomy_store::now_us();
    let due = store.promoter_due(now, config.max_dispatch).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let ctx = Ctx {
        actor: PROMOTER_ACTOR.into(),
        request_id: format!("promoter-{now}"),
        idempotency: None,
    };
    // Every plan's write goes to the store at once, so they share group commits.
    let mut writes = tokio::task::JoinSet::new();
    for d in due {
        let (store, ctx, max) = (store.clone(), ctx.clone(), config.max_dispatch);
        writes.spawn(async move {
            store
                .promote(&ctx, &d.plan_id, d.generation, epoch, max)
                .await
        });
    }
    let mut applied = 0;
    while let Some(r) = writes.join_next().await {
        match r {
            Ok(Ok(Reply::Promoted { actions })) => applied += actions,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "a promoter write failed; the next tick retries")
            }
            Err(e) => tracing::warn!(error = %e, "a promoter write task failed"),
        }
    }
    Ok(applied)
}

/// Shared state for [`AppState`].
pub(crate) fn new_state() -> Arc<EngineState> {
    Arc::new(EngineState::default())
}

//! What a store keeps of devices in memory only (SPEC §9.2): the heartbeats of polls, flushed
//! to the store in batches (a poll never writes), and the waiters of long polls, woken when a
//! committed change raises a device's revision.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use tokio::sync::watch;

/// What one poll says about its device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beat {
    pub at_us: i64,
    pub installed_digest: String,
    pub boot_id: String,
    /// The conditions the poll carried (SPEC §8.7); empty: none. The latest poll's replace
    /// the stored ones when flushed.
    pub conditions: BTreeMap<String, serde_json::Value>,
}

/// The most device tokens [`Live`] remembers (past it, the cache starts over).
const MAX_CACHED_TOKENS: usize = 500_000;

/// The most idle devices whose poll [`Live`] answers from memory (past it, it starts over).
const MAX_IDLE_POLLS: usize = 500_000;

/// Heartbeats not yet flushed, long-poll waiters, and the device tokens recently seen, by
/// device id.
#[derive(Debug, Default)]
pub struct Live {
    beats: Mutex<HashMap<String, Beat>>,
    waiters: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Token hash → device id of tokens the store confirmed: a device's next request skips
    /// the lookup. The store's writer forgets a device here when it revokes it, in the
    /// transaction's thread before answering, so a revoked token is refused from the next
    /// request on. (One process only: a store with several writers must not use it.)
    tokens: Mutex<Tokens>,
    /// The revision of devices in no plan, as the store last read it: such a device's poll
    /// shows only its revision, so the store answers it from here without a read. The
    /// store's writer forgets a device here, after commit and before answering, whenever a
    /// change could alter what its poll shows (its revision rose, it joined a plan). (One
    /// process only, like `tokens`: a store with several writers must not use it.)
    idle_polls: Mutex<IdlePolls>,
}

/// Idle devices' revisions and how many times any was forgotten (a read that started before
/// a change must not put its answer back in).
#[derive(Debug, Default)]
struct IdlePolls {
    revision_by_device: HashMap<String, u64>,
    forgets: u64,
}

/// The token cache and how many revocations it has seen (a lookup that started before a
/// revocation must not put its answer back in).
#[derive(Debug, Default)]
struct Tokens {
    by_hash: HashMap<String, String>,
    revocations: u64,
}

impl Live {
    /// Records a poll's heartbeat (the latest per device wins).
    pub fn beat(&self, device_id: &str, beat: Beat) {
        let mut beats = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        match beats.get_mut(device_id) {
            Some(b) => *b = beat,
            None => {
                beats.insert(device_id.to_string(), beat);
            }
        }
    }

    /// The unflushed heartbeat of a device.
    pub fn pending_beat(&self, device_id: &str) -> Option<Beat> {
        self.beats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(device_id)
            .cloned()
    }

    /// The conditions of a device's unflushed poll (`None`: no unflushed poll; the stored
    /// ones are current).
    pub fn pending_conditions(
        &self,
        device_id: &str,
    ) -> Option<BTreeMap<String, serde_json::Value>> {
        self.beats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(device_id)
            .map(|b| b.conditions.clone())
    }

    /// A report (or a drift) stored a newer digest than the device's unflushed heartbeat
    /// carries: the heartbeat takes it, so its flush cannot put the older one back.
    pub fn supersede_digest(&self, device_id: &str, installed_digest: &str) {
        let mut beats = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = beats.get_mut(device_id) {
            b.installed_digest = installed_digest.to_string();
        }
    }

    /// Whether any heartbeat waits to be flushed.
    pub fn has_beats(&self) -> bool {
        !self
            .beats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Takes every unflushed heartbeat (the store writes them in one transaction).
    pub fn take_beats(&self) -> Vec<(String, Beat)> {
        let mut beats = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        beats.drain().collect()
    }

    /// Puts heartbeats back whose flush failed (newer ones win).
    pub fn restore_beats(&self, taken: Vec<(String, Beat)>) {
        let mut beats = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        for (id, b) in taken {
            beats.entry(id).or_insert(b);
        }
    }

    /// A receiver that changes when the device's revision is raised. Subscribe before reading
    /// the revision, so a change in between is not missed.
    pub fn watch(&self, device_id: &str) -> watch::Receiver<u64> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        waiters
            .entry(device_id.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Drops the device's waiter entry once nobody waits on it.
    pub fn unwatch(&self, device_id: &str) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if waiters
            .get(device_id)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            waiters.remove(device_id);
        }
    }

    /// Wakes the long polls of these devices (after their change committed), and forgets
    /// their idle polls.
    pub fn wake<'a>(&self, devices: impl IntoIterator<Item = &'a str> + Clone) {
        self.forget_polls(devices.clone());
        let waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        for id in devices {
            if let Some(tx) = waiters.get(id) {
                tx.send_modify(|v| *v = v.wrapping_add(1));
            }
        }
    }

    /// The revision of an idle device (in no plan) when its poll can be answered from
    /// memory.
    pub fn idle_poll(&self, device_id: &str) -> Option<u64> {
        self.idle_polls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .revision_by_device
            .get(device_id)
            .copied()
    }

    /// To read before a poll's read, and hand to [`Live::remember_idle_poll`] after it.
    pub fn idle_poll_generation(&self) -> u64 {
        self.idle_polls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forgets
    }

    /// Remembers that a device in no plan is at `revision`, as read — unless a device's poll
    /// was forgotten since `generation` was taken (that change may postdate the read).
    pub fn remember_idle_poll(&self, device_id: &str, revision: u64, generation: u64) {
        let mut p = self.idle_polls.lock().unwrap_or_else(|e| e.into_inner());
        if p.forgets != generation {
            return;
        }
        if p.revision_by_device.len() >= MAX_IDLE_POLLS {
            p.revision_by_device.clear();
        }
        p.revision_by_device.insert(device_id.to_string(), revision);
    }

    /// Forgets these devices' idle polls (a committed change may alter what they show), and
    /// makes reads that started before unable to remember theirs.
    pub fn forget_polls<'a>(&self, devices: impl IntoIterator<Item = &'a str>) {
        let mut p = self.idle_polls.lock().unwrap_or_else(|e| e.into_inner());
        p.forgets = p.forgets.wrapping_add(1);
        for id in devices {
            p.revision_by_device.remove(id);
        }
    }

    /// The device a confirmed token hash belongs to, or the revocation count to hand to
    /// [`Live::remember_token`] after looking it up in the store.
    pub fn token_device(&self, token_hash: &str) -> Result<String, u64> {
        let t = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        t.by_hash.get(token_hash).cloned().ok_or(t.revocations)
    }

    /// Remembers a token hash the store confirmed for `device_id` — unless a revocation
    /// happened since `revocations` was read (the lookup may predate it).
    pub fn remember_token(&self, token_hash: String, device_id: String, revocations: u64) {
        let mut t = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if t.revocations != revocations {
            return;
        }
        if t.by_hash.len() >= MAX_CACHED_TOKENS {
            t.by_hash.clear();
        }
        t.by_hash.insert(token_hash, device_id);
    }

    /// Forgets every token of `device_id` (its revocation), and makes lookups that started
    /// before it unable to remember their answer.
    pub fn forget_device(&self, device_id: &str) {
        let mut t = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        t.revocations += 1;
        t.by_hash.retain(|_, d| d != device_id);
    }

    /// Devices with a long poll waiting now.
    pub fn waiting(&self) -> usize {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(at: i64) -> Beat {
        Beat {
            at_us: at,
            installed_digest: "d".into(),
            boot_id: "b".into(),
            conditions: BTreeMap::new(),
        }
    }

    #[test]
    fn beats_keep_the_latest_and_restore_keeps_newer() {
        let live = Live::default();
        live.beat("a", beat(1));
        live.beat("a", beat(2));
        let taken = live.take_beats();
        assert_eq!(taken, vec![("a".to_string(), beat(2))]);
        live.beat("a", beat(3));
        live.restore_beats(taken);
        assert_eq!(live.pending_beat("a"), Some(beat(3)));
    }

    #[test]
    fn a_lookup_that_predates_a_revocation_is_not_remembered() {
        let live = Live::default();
        let seen = live.token_device("h").unwrap_err();
        live.forget_device("d1");
        live.remember_token("h".into(), "d1".into(), seen);
        assert!(
            live.token_device("h").is_err(),
            "a stale answer came back in"
        );
        let seen = live.token_device("h").unwrap_err();
        live.remember_token("h".into(), "d1".into(), seen);
        assert_eq!(live.token_device("h"), Ok("d1".to_string()));
        live.forget_device("d1");
        assert!(live.token_device("h").is_err());
    }

    #[test]
    fn an_idle_poll_is_forgotten_on_a_change_and_a_read_older_than_one_is_not_remembered() {
        let live = Live::default();
        assert_eq!(live.idle_poll("a"), None);
        let before = live.idle_poll_generation();
        live.remember_idle_poll("a", 3, before);
        assert_eq!(live.idle_poll("a"), Some(3));
        // A read that started before a forget (of any device) does not put its answer in.
        let read_started = live.idle_poll_generation();
        live.forget_polls(["b"]);
        live.remember_idle_poll("c", 1, read_started);
        assert_eq!(live.idle_poll("c"), None, "a stale read came back in");
        // A wake (a raised revision) forgets the device's idle poll.
        live.wake(["a"]);
        assert_eq!(live.idle_poll("a"), None);
        let now = live.idle_poll_generation();
        live.remember_idle_poll("a", 4, now);
        assert_eq!(live.idle_poll("a"), Some(4));
        live.forget_polls(["a"]);
        assert_eq!(live.idle_poll("a"), None);
    }

    #[test]
    fn a_wake_reaches_a_watcher_and_unwatch_drops_idle_entries() {
        let live = Live::default();
        let mut rx = live.watch("a");
        live.wake(["b"]);
        assert!(!rx.has_changed().unwrap());
        live.wake(["a"]);
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        live.unwatch("a");
        assert_eq!(live.waiting(), 1, "a receiver still exists");
        drop(rx);
        live.unwatch("a");
        assert_eq!(live.waiting(), 0);
    }
}

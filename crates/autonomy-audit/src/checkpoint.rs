//! Signed checkpoints (SPEC §5.9): the chain keyed with an Ed25519 key the audit dir does not
//! hold.
//!
//! # Format
//!
//! `<audit-dir>/checkpoints.jsonl` holds one checkpoint per line, oldest first, each
//! `{"seq":N,"hash":"<64 hex>","time":"<RFC 3339>","signature":"<128 hex>"}`: the chain head
//! (`seq` and `hash` of an event of the log) when the checkpoint was written. `signature` is the
//! lowercase hex Ed25519 signature of the UTF-8 bytes of [`checkpoint_message`]:
//! `autonomy-audit-checkpoint:v1:{seq}:{hash}:{time}`, with `time` exactly as stored.
//!
//! The key lives in the control plane's data dir, not the audit dir: `audit-signing.key` (mode
//! 0600) holds the 32-byte Ed25519 secret seed as 64 lowercase hex digits and a newline, and
//! `audit-signing.pub` the 32-byte public key the same way. [`Signer::load_or_create`] makes
//! both at the first start (temp file, fsync, rename, dir fsync), so a crash leaves either no
//! key or a whole one.
//!
//! # When
//!
//! An [`AuditLog`] with a signer ([`AuditLog::set_signer`]) writes a checkpoint for every
//! 1,000th event since the last one, inside [`AuditLog::append`] (so at most
//! [`CHECKPOINT_EVERY_EVENTS`] events are ever between two checkpoints), and for the head
//! whenever [`AuditLog::checkpoint`] is called with unsigned events: the writer calls it when
//! [`AuditLog::checkpoint_due`] passes (at most [`CHECKPOINT_INTERVAL`] after the first
//! unsigned event) and at a clean stop. Each write is fsync'd.
//!
//! # What it proves
//!
//! [`verify_signed`] checks every signature with the public key and that the chain's hash at
//! each checkpointed seq equals the checkpoint's. Someone who can write the audit dir but not
//! read the key can then neither rewrite nor cut the history up to the last checkpoint; the
//! events after it (the *unsigned tail*, [`SignedReport::unsigned_tail`]) are only as good as
//! the unkeyed chain.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::{io_err, is_hash_hex, sync_dir, AuditError, AuditLog, Flow, VerifyReport, Visitor};

/// The checkpoints file in the audit dir.
pub const CHECKPOINTS_FILE: &str = "checkpoints.jsonl";
/// The secret key file in the data dir (mode 0600).
pub const SIGNING_KEY_FILE: &str = "audit-signing.key";
/// The public key file in the data dir.
pub const PUBLIC_KEY_FILE: &str = "audit-signing.pub";
/// At most this many events lie between two checkpoints.
pub const CHECKPOINT_EVERY_EVENTS: u64 = 1000;
/// At most this long passes between an event and the checkpoint covering it (while the
/// writer runs).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);

/// One line of `checkpoints.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: String,
    pub time: String,
    /// Lowercase hex Ed25519 signature of [`checkpoint_message`].
    pub signature: String,
}

/// The bytes a checkpoint's signature covers: `autonomy-audit-checkpoint:v1:{seq}:{hash}:{time}`.
pub fn checkpoint_message(seq: u64, hash: &str, time: &str) -> String {
    format!("autonomy-audit-checkpoint:v1:{seq}:{hash}:{time}")
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Decodes exactly `N` bytes of lowercase or uppercase hex.
fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = text.as_bytes();
    if bytes.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// The public half of the signing key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses 64 hex digits (surrounding whitespace allowed), as in `audit-signing.pub`.
    pub fn from_hex(text: &str) -> Result<PublicKey, String> {
        let bytes = from_hex::<32>(text.trim())
            .ok_or("an Ed25519 public key is 64 hex digits (32 bytes)")?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| "not a valid Ed25519 public key".to_string())
    }

    /// Reads a public key file (`audit-signing.pub`).
    pub fn read(path: &Path) -> Result<PublicKey, AuditError> {
        let text = read_small(path)?;
        PublicKey::from_hex(&text).map_err(|what| AuditError::Key {
            path: path.to_path_buf(),
            what,
        })
    }

    /// The 64 lowercase hex digits of the key.
    pub fn to_hex(&self) -> String {
        to_hex(self.0.as_bytes())
    }

    /// Checks `checkpoint`'s signature (and the form of its fields).
    pub fn check(&self, checkpoint: &Checkpoint) -> Result<(), String> {
        if !is_hash_hex(&checkpoint.hash) {
            return Err(format!("hash {:?} is not a hash", checkpoint.hash));
        }
        let bytes = from_hex::<64>(&checkpoint.signature)
            .ok_or("signature is not 128 hex digits (64 bytes)")?;
        let message = checkpoint_message(checkpoint.seq, &checkpoint.hash, &checkpoint.time);
        self.0
            .verify_strict(message.as_bytes(), &Signature::from_bytes(&bytes))
            .map_err(|_| {
                "bad signature: this checkpoint was not signed by the given key (forged or \
                 edited)"
                    .to_string()
            })
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

/// The secret signing key. Its `Debug` shows only the public half.
#[derive(Clone)]
pub struct Signer(SigningKey);

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer(public {})", self.public_key())
    }
}

impl Signer {
    /// The key with this 32-byte secret seed.
    pub fn from_seed(seed: &[u8; 32]) -> Signer {
        Signer(SigningKey::from_bytes(seed))
    }

    /// A new random key (from the operating system's generator).
    pub fn generate() -> Result<Signer, io::Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| io::Error::other(e.to_string()))?;
        let signer = Signer::from_seed(&seed);
        seed.fill(0);
        Ok(signer)
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs the chain head `seq`/`hash` at `time`.
    pub fn sign(&self, seq: u64, hash: &str, time: &str) -> Checkpoint {
        let message = checkpoint_message(seq, hash, time);
        let signature = self.0.sign(message.as_bytes());
        Checkpoint {
            seq,
            hash: hash.to_string(),
            time: time.to_string(),
            signature: to_hex(&signature.to_bytes()),
        }
    }

    /// Loads `<data_dir>/audit-signing.key`, or makes it (and `audit-signing.pub`) if there is
    /// none; the `bool` says whether it was made now. The key file is written 0600 to a temp
    /// file, fsync'd, renamed into place and the dir fsync'd, so it is whole or absent. A
    /// missing or stale public key file is rewritten from the key.
    pub fn load_or_create(data_dir: &Path) -> Result<(Signer, bool), AuditError> {
        let key_path = data_dir.join(SIGNING_KEY_FILE);
        let (signer, created) = match fs::symlink_metadata(&key_path) {
            Ok(_) => {
                let text = read_small(&key_path)?;
                let seed = from_hex::<32>(text.trim()).ok_or_else(|| AuditError::Key {
                    path: key_path.clone(),
                    what: "an Ed25519 signing key file holds 64 hex digits (32 bytes)".into(),
                })?;
                (Signer::from_seed(&seed), false)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let signer = Signer::generate().map_err(io_err(&key_path))?;
                let text = format!("{}\n", to_hex(signer.0.as_bytes()));
                write_atomically(data_dir, SIGNING_KEY_FILE, text.as_bytes(), 0o600)?;
                (signer, true)
            }
            Err(e) => return Err(io_err(&key_path)(e)),
        };
        let pub_text = format!("{}\n", signer.public_key());
        let pub_path = data_dir.join(PUBLIC_KEY_FILE);
        if fs::read_to_string(&pub_path).ok().as_deref() != Some(pub_text.as_str()) {
            write_atomically(data_dir, PUBLIC_KEY_FILE, pub_text.as_bytes(), 0o644)?;
        }
        Ok((signer, created))
    }
}

/// Reads a key file, refusing anything larger than a key file can be.
fn read_small(path: &Path) -> Result<String, AuditError> {
    let mut text = String::new();
    File::open(path)
        .map_err(io_err(path))?
        .take(4096)
        .read_to_string(&mut text)
        .map_err(io_err(path))?;
    Ok(text)
}

/// Writes `dir/name` whole or not at all: temp file (with `mode`), fsync, rename, dir fsync.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(), AuditError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    let path = dir.join(name);
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir)
}

fn now_rfc3339() -> String {
    let us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    autonomy_api::timefmt::format_us(us)
}

/// The checkpoint state of an [`AuditLog`].
#[derive(Debug)]
pub(crate) struct Checkpointing {
    signer: Signer,
    /// Seq of the newest checkpoint written (0: none).
    seq: u64,
    /// When the oldest event not covered by a checkpoint was appended (None: all covered).
    unsigned_since: Option<Instant>,
}

/// A line of `checkpoints.jsonl` (counting from 1) and what it parsed to.
type CheckpointLine = (u64, Result<Checkpoint, String>);

/// Reads the checkpoints of `dir` (none if the file is missing). An incomplete last line (a
/// crash mid-write) is ignored; lines are parsed but not verified.
fn read_checkpoints(dir: &Path) -> Result<Vec<CheckpointLine>, AuditError> {
    let path = dir.join(CHECKPOINTS_FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let mut reader = BufReader::new(file);
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut line = 0;
    loop {
        buf.clear();
        // A checkpoint line is ~300 bytes; a longer one is damage, not something to buffer.
        let n = (&mut reader)
            .take(64 * 1024)
            .read_until(b'\n', &mut buf)
            .map_err(io_err(&path))?;
        if n == 0 {
            return Ok(out);
        }
        line += 1;
        if buf.pop() != Some(b'\n') {
            if n < 64 * 1024 {
                // The torn tail of a crash mid-write, never acknowledged.
                return Ok(out);
            }
            out.push((line, Err("line is too long to be a checkpoint".to_string())));
            return Ok(out);
        }
        let parsed = std::str::from_utf8(&buf)
            .map_err(|_| "line is not valid UTF-8".to_string())
            .and_then(|text| {
                serde_json::from_str::<Checkpoint>(text)
                    .map_err(|e| format!("not a checkpoint: {e}"))
            });
        out.push((line, parsed));
    }
}

impl AuditLog {
    /// Makes the log sign checkpoints with `signer` from now on (see the module docs). Reads
    /// `checkpoints.jsonl` to learn the newest checkpoint (cutting off an incomplete last line
    /// left by a crash); events already after it count as unsigned from now.
    pub fn set_signer(&mut self, signer: Signer) -> Result<(), AuditError> {
        let path = self.dir.join(CHECKPOINTS_FILE);
        if let Ok(meta) = fs::metadata(&path) {
            // Repair a torn final line so the next checkpoint starts on a line of its own.
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            let len = meta.len();
            if len > 0 && crate::read_range(&file, len - 1, len, &path)? != b"\n" {
                let keep = crate::rfind_newline(&file, len, &path)?.map_or(0, |p| p + 1);
                file.set_len(keep).map_err(io_err(&path))?;
                file.sync_all().map_err(io_err(&path))?;
            }
        }
        let seq = read_checkpoints(&self.dir)?
            .into_iter()
            .rev()
            .find_map(|(_, c)| c.ok())
            .map_or(0, |c| c.seq);
        self.checkpointing = Some(Checkpointing {
            signer,
            seq,
            unsigned_since: (self.last_seq > seq).then(Instant::now),
        });
        Ok(())
    }

    /// When [`AuditLog::checkpoint`] is next due: [`CHECKPOINT_INTERVAL`] after the oldest
    /// event not yet covered by a checkpoint; `None` without a signer or unsigned events.
    pub fn checkpoint_due(&self) -> Option<Instant> {
        let c = self.checkpointing.as_ref()?;
        c.unsigned_since.map(|t| t + CHECKPOINT_INTERVAL)
    }

    /// Writes a signed checkpoint for the chain head if a signer is set and events were
    /// appended since the last checkpoint; returns whether it wrote one. Call it when
    /// [`AuditLog::checkpoint_due`] passes and at a clean stop.
    pub fn checkpoint(&mut self) -> Result<bool, AuditError> {
        match &self.checkpointing {
            Some(c) if self.last_seq > c.seq => {
                let head = [(self.last_seq, self.last_hash.clone())];
                self.write_checkpoints(&head)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Called by `append` after `accepted` (seq, hash) pairs are durable: writes a checkpoint at
    /// every 1,000th event since the last one. A failure leaves them due (the next append or
    /// [`AuditLog::checkpoint`] covers them); the append itself stands.
    pub(crate) fn after_append(&mut self, accepted: &[(u64, String)]) {
        let Some(c) = &mut self.checkpointing else {
            return;
        };
        if c.unsigned_since.is_none() && !accepted.is_empty() {
            c.unsigned_since = Some(Instant::now());
        }
        let mut due = Vec::new();
        let mut next = c.seq + CHECKPOINT_EVERY_EVENTS;
        for (seq, hash) in accepted {
            if *seq >= next {
                due.push((*seq, hash.clone()));
                next = seq + CHECKPOINT_EVERY_EVENTS;
            }
        }
        if !due.is_empty() {
            let _ = self.write_checkpoints(&due);
        }
    }

    fn write_checkpoints(&mut self, heads: &[(u64, String)]) -> Result<(), AuditError> {
        let Some(c) = &mut self.checkpointing else {
            return Ok(());
        };
        let time = now_rfc3339();
        let mut buf = String::new();
        for (seq, hash) in heads {
            let checkpoint = c.signer.sign(*seq, hash, &time);
            // Strings and integers: serialisation cannot fail.
            buf.push_str(&serde_json::to_string(&checkpoint).unwrap_or_default());
            buf.push('\n');
        }
        let path = self.dir.join(CHECKPOINTS_FILE);
        let is_new = !path.exists();
        let len_before = fs::metadata(&path).map_or(0, |m| m.len());
        let written = (|| {
            let mut file = OpenOptions::new().append(true).create(true).open(&path)?;
            let result = file
                .write_all(buf.as_bytes())
                .and_then(|()| file.sync_data());
            if result.is_err() {
                // Leave no torn line behind for the next one to follow.
                let _ = file.set_len(len_before);
            }
            result
        })();
        written.map_err(io_err(&path))?;
        if is_new {
            sync_dir(&self.dir)?;
        }
        if let Some((seq, _)) = heads.last() {
            c.seq = *seq;
            c.unsigned_since = (self.last_seq > *seq).then(Instant::now);
        }
        Ok(())
    }
}

/// What [`verify_signed`] found in a sound, signed log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedReport {
    /// The chain check ([`crate::verify`]).
    pub chain: VerifyReport,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// Seq of the newest checkpoint; 0 when there is none.
    pub last_checkpoint_seq: u64,
    /// Events after the newest checkpoint: only the unkeyed chain vouches for them.
    pub unsigned_tail: u64,
}

struct SignedVisitor {
    chain: crate::VerifyVisitor,
    /// `(checkpoints.jsonl line, checkpoint)`, in seq order; `next` is the first not yet met.
    checkpoints: Vec<(u64, Checkpoint)>,
    next: usize,
}

impl Visitor for SignedVisitor {
    fn line(&mut self, segment: &str, line: u64, text: &str) -> Result<Flow, AuditError> {
        self.chain.line(segment, line, text)?;
        let seq = self.chain.next_seq - 1;
        if let Some((cp_line, cp)) = self.checkpoints.get(self.next) {
            if cp.seq == seq {
                if cp.hash != self.chain.prev_hash {
                    return Err(AuditError::Corrupt {
                        segment: segment.to_string(),
                        line,
                        seq: Some(seq),
                        what: format!(
                            "hash {} differs from the signed checkpoint for seq {seq} \
                             ({CHECKPOINTS_FILE} line {cp_line}, hash {}): the history up to \
                             seq {seq} was rewritten",
                            self.chain.prev_hash, cp.hash
                        ),
                    });
                }
                self.next += 1;
            }
        }
        Ok(Flow::Continue)
    }

    fn next_seq(&self) -> Option<u64> {
        Some(self.chain.next_seq)
    }
}

/// [`crate::verify`], plus the signed checkpoints of `dir` checked with `key`: every
/// checkpoint must parse, carry a valid signature by `key`, and have a higher seq than the one
/// before ([`AuditError::Checkpoint`] naming its line otherwise); the chain's hash at each
/// checkpointed seq must equal the checkpoint's, and no checkpoint may lie beyond the end of the
/// log ([`AuditError::Corrupt`] naming the event, or the cut). A missing `checkpoints.jsonl`
/// means no checkpoints: every event is then in [`SignedReport::unsigned_tail`].
///
/// The checkpoints are read before the segments, so this works while a writer appends (a
/// checkpoint is only written after the events it covers are durable).
pub fn verify_signed(dir: &Path, key: &PublicKey) -> Result<SignedReport, AuditError> {
    let mut checkpoints: Vec<(u64, Checkpoint)> = Vec::new();
    if !dir.is_dir() {
        crate::list_segments(dir)?;
    }
    for (line, parsed) in read_checkpoints(dir)? {
        let bad = |seq: Option<u64>, what: String| AuditError::Checkpoint { line, seq, what };
        let cp = parsed.map_err(|what| bad(None, what))?;
        if cp.seq == 0 {
            return Err(bad(Some(0), "seq 0 names no event".to_string()));
        }
        key.check(&cp).map_err(|what| bad(Some(cp.seq), what))?;
        if let Some((_, prev)) = checkpoints.last() {
            if cp.seq <= prev.seq {
                return Err(bad(
                    Some(cp.seq),
                    format!(
                        "seq {} does not follow the previous checkpoint's seq {}",
                        cp.seq, prev.seq
                    ),
                ));
            }
        }
        checkpoints.push((line, cp));
    }
    let mut visitor = SignedVisitor {
        chain: crate::VerifyVisitor {
            next_seq: 1,
            prev_hash: crate::GENESIS_HASH.to_string(),
        },
        checkpoints,
        next: 0,
    };
    let summary = crate::scan(dir, &mut visitor, crate::SegmentSkip::default())?;
    let last_seq = visitor.chain.next_seq - 1;
    if let Some((cp_line, cp)) = visitor.checkpoints.get(visitor.next) {
        return Err(AuditError::Checkpoint {
            line: *cp_line,
            seq: Some(cp.seq),
            what: format!(
                "the log ends at seq {last_seq}, before this signed checkpoint: events up to \
                 seq {} were cut off",
                cp.seq
            ),
        });
    }
    let last_checkpoint_seq = visitor.checkpoints.last().map_or(0, |(_, c)| c.seq);
    Ok(SignedReport {
        chain: VerifyReport {
            segments: summary.segments,
            events: last_seq,
            last_seq,
            last_hash: visitor.chain.prev_hash,
            unterminated_tail: summary.unterminated_tail,
        },
        checkpoints: visitor.checkpoints.len() as u64,
        last_checkpoint_seq,
        unsigned_tail: last_seq - last_checkpoint_seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{seal, verify, GENESIS_HASH};
    use autonomy_api::{AuditEvent, EventType, Outcome, Target};
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    /// `err` is a checkpoint error at this line of `checkpoints.jsonl` about this seq.
    fn assert_checkpoint_error(err: &AuditError, line: u64, seq: Option<u64>) {
        match err {
            AuditError::Checkpoint {
                line: l, seq: s, ..
            } => assert_eq!((*l, *s), (line, seq), "{err}"),
            other => panic!("not a checkpoint error: {other}"),
        }
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let path = std::env::temp_dir().join(format!(
                "autonomy-audit-ckpt-{name}-{}-{nanos}",
                std::process::id()
            ));
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn event(n: u64, actor: &str) -> AuditEvent {
        let mut e = AuditEvent::draft(
            EventType::PlanCreated,
            Target::RolloutPlan,
            format!("plan-{n}"),
            Outcome::Success,
            "",
            serde_json::json!({}),
        );
        e.id = format!("evt-{n}");
        e.time = "2026-11-28T09:30:00.000000Z".to_string();
        e.actor = actor.to_string();
        e
    }

    /// Lines `first..=last` chained onto `prev`.
    fn chain(first: u64, last: u64, mut prev: String) -> Vec<(u64, String)> {
        (first..=last)
            .map(|n| {
                let sealed = seal(event(n, "alice"), n, &prev);
                prev = sealed.event.hash;
                (n, sealed.line)
            })
            .collect()
    }

    fn signer(byte: u8) -> Signer {
        Signer::from_seed(&[byte; 32])
    }

    fn checkpoints(dir: &Path) -> Vec<Checkpoint> {
        read_checkpoints(dir)
            .unwrap()
            .into_iter()
            .map(|(_, c)| c.unwrap())
            .collect()
    }

    /// A signed log of `n` events, appended in batches of 300, closed with a checkpoint.
    fn signed_log(tmp: &TempDir, n: u64) -> PathBuf {
        let dir = tmp.0.join("audit");
        let mut log = AuditLog::open(&dir, 1 << 20).unwrap();
        log.set_signer(signer(7)).unwrap();
        let lines = chain(1, n, GENESIS_HASH.to_string());
        for batch in lines.chunks(300) {
            log.append(batch).unwrap();
        }
        log.checkpoint().unwrap();
        dir
    }

    #[test]
    fn signatures_cover_seq_hash_and_time() {
        let s = signer(1);
        let key = s.public_key();
        let hash = "ab".repeat(32);
        let cp = s.sign(42, &hash, "2026-11-28T09:30:00.000000Z");
        assert_eq!(
            checkpoint_message(42, &hash, "t"),
            format!("autonomy-audit-checkpoint:v1:42:{hash}:t")
        );
        assert_eq!(cp.signature.len(), 128);
        key.check(&cp).unwrap();
        assert_eq!(PublicKey::from_hex(&key.to_hex()).unwrap(), key);

        let mut other = cp.clone();
        other.seq = 43;
        assert!(key.check(&other).unwrap_err().contains("bad signature"));
        let mut other = cp.clone();
        other.hash = "cd".repeat(32);
        assert!(key.check(&other).is_err());
        let mut other = cp.clone();
        other.time = "2026-11-28T09:30:00.000001Z".into();
        assert!(key.check(&other).is_err());
        let mut other = cp.clone();
        other.signature = "00".repeat(64);
        assert!(key.check(&other).is_err());
        other.signature = "zz".into();
        assert!(key.check(&other).unwrap_err().contains("128 hex"));
        assert!(signer(2).public_key().check(&cp).is_err());
        for bad in ["", "00", &"g".repeat(64), &"0".repeat(66)] {
            assert!(PublicKey::from_hex(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn checkpoints_every_thousand_events_and_on_demand() {
        let tmp = TempDir::new("every");
        let dir = tmp.0.join("audit");
        let mut log = AuditLog::open(&dir, 1 << 20).unwrap();
        assert_eq!(log.checkpoint_due(), None);
        assert!(!log.checkpoint().unwrap(), "no signer, no checkpoint");
        log.set_signer(signer(7)).unwrap();
        assert_eq!(log.checkpoint_due(), None, "nothing unsigned yet");

        let lines = chain(1, 2500, GENESIS_HASH.to_string());
        let before = Instant::now();
        for batch in lines.chunks(300) {
            log.append(batch).unwrap();
        }
        let seqs: Vec<u64> = checkpoints(&dir).iter().map(|c| c.seq).collect();
        assert_eq!(seqs, [1000, 2000], "exactly at every 1,000th event");
        let due = log.checkpoint_due().expect("500 events are unsigned");
        assert!(due >= before + CHECKPOINT_INTERVAL && due <= Instant::now() + CHECKPOINT_INTERVAL);

        assert!(log.checkpoint().unwrap());
        assert!(!log.checkpoint().unwrap(), "nothing new since");
        assert_eq!(log.checkpoint_due(), None);
        let all = checkpoints(&dir);
        assert_eq!(all.len(), 3);
        assert_eq!(all[2].seq, 2500);
        assert_eq!(all[2].hash, log.last_hash());

        let report = verify_signed(&dir, &signer(7).public_key()).unwrap();
        assert_eq!(report.checkpoints, 3);
        assert_eq!(report.last_checkpoint_seq, 2500);
        assert_eq!(report.unsigned_tail, 0);
        assert_eq!(report.chain, verify(&dir).unwrap());
    }

    #[test]
    fn reopening_continues_from_the_last_checkpoint_and_repairs_a_torn_line() {
        let tmp = TempDir::new("reopen");
        let dir = signed_log(&tmp, 10);
        let path = dir.join(CHECKPOINTS_FILE);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"seq\":11,\"ha").unwrap();
        drop(file);

        let mut log = AuditLog::open(&dir, 1 << 20).unwrap();
        log.set_signer(signer(7)).unwrap();
        assert_eq!(log.checkpoint_due(), None, "seq 10 is signed");
        assert!(!log.checkpoint().unwrap());
        log.append(&chain(11, 12, log.last_hash().to_string()))
            .unwrap();
        assert!(log.checkpoint_due().is_some());
        assert!(log.checkpoint().unwrap());
        let seqs: Vec<u64> = checkpoints(&dir).iter().map(|c| c.seq).collect();
        assert_eq!(seqs, [10, 12]);
        let report = verify_signed(&dir, &signer(7).public_key()).unwrap();
        assert_eq!(report.unsigned_tail, 0);
    }

    #[test]
    fn a_rewritten_history_is_caught_though_its_chain_is_sound() {
        let tmp = TempDir::new("rewrite");
        let dir = signed_log(&tmp, 20);
        let key = signer(7).public_key();
        // Forge seq 5 and re-seal everything after it: a consistent chain.
        let mut prev = String::new();
        let mut lines = Vec::new();
        for (seq, line) in chain(1, 20, GENESIS_HASH.to_string()) {
            let line = if seq < 5 {
                line
            } else {
                let actor = if seq == 5 { "mallory" } else { "alice" };
                seal(event(seq, actor), seq, &prev).line
            };
            prev = crate::parse_line(&line).unwrap().hash;
            lines.push(line);
        }
        fs::write(dir.join(crate::segment_name(1)), lines.join("\n") + "\n").unwrap();
        assert_eq!(verify(&dir).unwrap().last_seq, 20, "the chain alone passes");
        let err = verify_signed(&dir, &key).unwrap_err();
        assert!(
            matches!(
                err,
                AuditError::Corrupt {
                    seq: Some(20),
                    line: 20,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("signed checkpoint"), "{err}");
        assert!(
            err.to_string().contains("checkpoints.jsonl line 1"),
            "{err}"
        );
    }

    #[test]
    fn a_cut_history_is_caught_and_a_tail_is_unsigned() {
        let tmp = TempDir::new("cut");
        let dir = signed_log(&tmp, 20);
        let key = signer(7).public_key();
        let seg = dir.join(crate::segment_name(1));
        let text = fs::read_to_string(&seg).unwrap();
        let lines: Vec<&str> = text.lines().collect();

        // Forged events after the last checkpoint are the unsigned tail.
        let hash_20 = crate::parse_line(lines[19]).unwrap().hash;
        let extra = seal(event(21, "mallory"), 21, &hash_20).line;
        fs::write(&seg, format!("{text}{extra}\n")).unwrap();
        let report = verify_signed(&dir, &key).unwrap();
        assert_eq!((report.unsigned_tail, report.last_checkpoint_seq), (1, 20));

        // Cutting before the checkpoint is not.
        fs::write(&seg, lines[..15].join("\n") + "\n").unwrap();
        assert_eq!(verify(&dir).unwrap().last_seq, 15);
        let err = verify_signed(&dir, &key).unwrap_err();
        assert_checkpoint_error(&err, 1, Some(20));
        assert!(err.to_string().contains("cut off"), "{err}");
    }

    #[test]
    fn a_forged_or_edited_checkpoint_fails_naming_its_line() {
        let tmp = TempDir::new("forged");
        let dir = signed_log(&tmp, 1500);
        let key = signer(7).public_key();
        let path = dir.join(CHECKPOINTS_FILE);
        let good = fs::read_to_string(&path).unwrap();
        assert_eq!(good.lines().count(), 2);

        // Signed with another key.
        let head = checkpoints(&dir)[1].clone();
        let forged = signer(9).sign(head.seq, &head.hash, &head.time);
        let forged = serde_json::to_string(&forged).unwrap();
        fs::write(&path, format!("{good}{forged}\n")).unwrap();
        let err = verify_signed(&dir, &key).unwrap_err();
        assert_checkpoint_error(&err, 3, Some(1500));
        // An edited time.
        let edited = good.replacen("\"time\":\"2", "\"time\":\"3", 1);
        fs::write(&path, edited).unwrap();
        let err = verify_signed(&dir, &key).unwrap_err().to_string();
        assert!(
            err.contains("checkpoints.jsonl line 1") && err.contains("bad signature"),
            "{err}"
        );
        // Garbage, and out of order.
        fs::write(&path, format!("{good}not json\n")).unwrap();
        let err = verify_signed(&dir, &key).unwrap_err();
        assert_checkpoint_error(&err, 3, None);
        let mut lines: Vec<&str> = good.lines().collect();
        lines.reverse();
        fs::write(&path, lines.join("\n") + "\n").unwrap();
        let err = verify_signed(&dir, &key).unwrap_err().to_string();
        assert!(err.contains("does not follow"), "{err}");
        // No checkpoints at all: everything is unsigned.
        fs::remove_file(&path).unwrap();
        assert_eq!(verify_signed(&dir, &key).unwrap().unsigned_tail, 1500);
    }

    #[test]
    fn the_key_is_made_once_private_and_whole() {
        let tmp = TempDir::new("key");
        let (s1, created) = Signer::load_or_create(&tmp.0).unwrap();
        assert!(created);
        let key_path = tmp.0.join(SIGNING_KEY_FILE);
        let mode = fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let pub_path = tmp.0.join(PUBLIC_KEY_FILE);
        assert_eq!(PublicKey::read(&pub_path).unwrap(), s1.public_key());
        assert!(!format!("{s1:?}").contains(&to_hex(s1.0.as_bytes())));

        fs::remove_file(&pub_path).unwrap();
        let (s2, created) = Signer::load_or_create(&tmp.0).unwrap();
        assert!(!created);
        assert_eq!(s2.public_key(), s1.public_key());
        assert_eq!(PublicKey::read(&pub_path).unwrap(), s1.public_key());
        let leftovers: Vec<_> = fs::read_dir(&tmp.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");

        fs::write(&key_path, "not a key\n").unwrap();
        let err = Signer::load_or_create(&tmp.0).unwrap_err();
        assert!(matches!(err, AuditError::Key { .. }), "{err}");
    }
}

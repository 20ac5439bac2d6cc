//! The retained, append-only, tamper-evident audit store of the control plane (SPEC §5.4).
//!
//! # Format
//!
//! The store is a directory of JSON Lines segments named `audit-00000001.jsonl`,
//! `audit-00000002.jsonl`, … (eight digits, numbered contiguously from 1; a new segment is
//! started before a line that would push the current one past its size limit). Every line is one
//! [`AuditEvent`] terminated by `\n`, with the fields in the order `seq, id, time, event_type,
//! actor, target, resource, outcome, reason, request_id, details, prev_hash, hash`, so each line
//! reads with `jq`. `seq` counts from 1 across all segments without gaps, and each event carries
//! the hash of the one before it in `prev_hash` ([`GENESIS_HASH`], 64 zeros, for seq 1).
//!
//! # Hash
//!
//! The *body* of an event is its compact `serde_json` serialisation without the `hash` field:
//! `{"seq":…,"id":…,…,"details":…,"prev_hash":"…"}`. `hash` is the lowercase hex BLAKE3 digest of
//! the body's bytes, and the line is the body with its final `}` replaced by
//! `,"hash":"<64 hex digits>"}`. Conversely, to check a line by hand: strip the
//! `,"hash":"<hex>"}` suffix, append `}`, and BLAKE3 the bytes. The check works on the stored
//! bytes themselves (nothing is re-serialised), so any edited byte of a line is detected, and
//! the `prev_hash` chain detects deleted, inserted and reordered lines and segments.
//!
//! # Guarantees
//!
//! * One writer: [`AuditLog::open`] holds an exclusive lock on `<dir>/LOCK` (which names the
//!   holder's pid) for the life of the [`AuditLog`], so two control planes never write the same
//!   directory. Readers ([`query`], [`verify`]) take no lock and work while a writer appends.
//! * Durability: [`AuditLog::append`] returns only after the lines are written and fsynced (one
//!   fsync per call, so callers can group-commit). Rotation fsyncs the finished segment, the new
//!   one and the directory. A failed write is rolled back, so a retry of the same lines is safe;
//!   appends are idempotent by `seq`.
//! * Crash safety: a crash mid-write can only leave an incomplete final line, which
//!   [`AuditLog::open`] truncates away (it was never acknowledged) and readers ignore. Any other
//!   damage — a final complete line that fails its hash, a missing segment — makes `open` refuse
//!   to start rather than write on top of a tampered log.
//! * Tamper evidence: [`verify`] checks every line's hash, the seq sequence and the `prev_hash`
//!   chain and reports the first bad record by segment, line and seq. The chain itself is not
//!   keyed: whoever can rewrite the files can rewrite the whole tail consistently, and cutting
//!   off the newest events leaves a valid (shorter) chain. Compare [`VerifyReport::last_seq`]
//!   and [`VerifyReport::last_hash`] with an independent record (the control plane's own store,
//!   or a copy kept elsewhere) to detect that.
//! * Signed checkpoints: with a [`Signer`] ([`AuditLog::set_signer`]) the log also writes
//!   Ed25519-signed checkpoints of its head to `checkpoints.jsonl`, and [`verify_signed`]
//!   checks them, so history up to the last checkpoint cannot be rewritten or cut without the
//!   key. The format and the rules are in [`checkpoint`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use autonomy_api::{AuditEvent, AuditFilter};

pub mod checkpoint;

pub use checkpoint::{
    checkpoint_message, verify_signed, Checkpoint, PublicKey, SignedReport, Signer,
    CHECKPOINTS_FILE, CHECKPOINT_EVERY_EVENTS, CHECKPOINT_INTERVAL, PUBLIC_KEY_FILE,
    SIGNING_KEY_FILE,
};

/// `prev_hash` of the event with seq 1.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Default size limit of one segment.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

const LOCK_FILE: &str = "LOCK";
const SEGMENT_PREFIX: &str = "audit-";
const SEGMENT_SUFFIX: &str = ".jsonl";
/// `,"hash":"` — what precedes the hex digest at the end of every line.
const HASH_KEY: &str = ",\"hash\":\"";
/// Length of `,"hash":"<64 hex>"}`.
const HASH_SUFFIX_LEN: usize = HASH_KEY.len() + 64 + 2;
/// Chunk size of the backwards scans of [`AuditLog::open`].
const TAIL_CHUNK: u64 = 64 * 1024;

/// A chained event and its line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sealed {
    pub event: AuditEvent,
    /// The JSON line, no trailing newline.
    pub line: String,
}

/// Errors of the audit store. Every message names the file, segment, line or seq concerned.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// An operating-system error on `path`.
    #[error("audit store I/O error on {}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
    /// Another process holds the writer lock of the audit dir `path`.
    #[error("audit dir {} is in use by another process ({}); only one control plane may write it",
        .path.display(), describe_holder(.pid))]
    Locked {
        path: PathBuf,
        /// The pid recorded in `<dir>/LOCK` by the holder, when readable.
        pid: Option<u32>,
    },
    /// A bad record in the store. `line` counts from 1 within `segment`; 0 means the segment as
    /// a whole (e.g. a missing segment). `seq` is the seq the record carries, or else the seq
    /// expected at that position, when known.
    #[error("{}", describe_corrupt(.segment, *.line, *.seq, .what))]
    Corrupt {
        segment: String,
        line: u64,
        seq: Option<u64>,
        what: String,
    },
    /// [`AuditLog::append`] was given a seq that does not follow the log's last one.
    #[error("audit append out of sequence: expected seq {expected}, got seq {got}")]
    Gap { expected: u64, got: u64 },
    /// A line that fails [`parse_line`], or that [`AuditLog::append`] refuses because it does not
    /// chain onto the log.
    #[error("{}", describe_invalid(*.seq, .what))]
    Invalid { seq: Option<u64>, what: String },
    /// A bad line of `checkpoints.jsonl` (see [`verify_signed`]): `line` counts from 1, `seq`
    /// is the seq the checkpoint names, when it could be read.
    #[error("{}", describe_checkpoint(*.line, *.seq, .what))]
    Checkpoint {
        line: u64,
        seq: Option<u64>,
        what: String,
    },
    /// A key file that does not hold a key.
    #[error("bad key file {}: {what}", .path.display())]
    Key { path: PathBuf, what: String },
}

fn describe_checkpoint(line: u64, seq: Option<u64>, what: &str) -> String {
    match seq {
        Some(seq) => format!("{CHECKPOINTS_FILE} line {line} (checkpoint for seq {seq}): {what}"),
        None => format!("{CHECKPOINTS_FILE} line {line}: {what}"),
    }
}

fn describe_holder(pid: &Option<u32>) -> String {
    match pid {
        Some(pid) => format!("pid {pid}"),
        None => "holder pid unknown".to_string(),
    }
}

fn describe_corrupt(segment: &str, line: u64, seq: Option<u64>, what: &str) -> String {
    let mut s = format!("segment {segment}");
    if line > 0 {
        s.push_str(&format!(" line {line}"));
    }
    if let Some(seq) = seq {
        s.push_str(&format!(" (seq {seq})"));
    }
    s.push_str(": ");
    s.push_str(what);
    s
}

fn describe_invalid(seq: Option<u64>, what: &str) -> String {
    match seq {
        Some(seq) => format!("invalid audit line (seq {seq}): {what}"),
        None => format!("invalid audit line: {what}"),
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// Sealing and checking one line
// ---------------------------------------------------------------------------------------------

/// Chains `event` after `prev_hash` as number `seq` (its `seq`, `prev_hash` and `hash` are
/// set here; the rest is kept as given). Pure function.
///
/// The line is exactly the compact `serde_json` serialisation of the returned event.
pub fn seal(mut event: AuditEvent, seq: u64, prev_hash: &str) -> Sealed {
    event.seq = seq;
    event.prev_hash = prev_hash.to_string();
    // With an empty hash the event serialises without it: that is the hashed body. Strings, a
    // unit enum and a `serde_json::Value` (whose map keys are always strings and whose numbers
    // are always finite) have no way to fail serialisation.
    event.hash.clear();
    let mut line = serde_json::to_string(&event).expect("an audit event body always serialises");
    let hash = blake3::hash(line.as_bytes()).to_hex();
    // The body of a struct always ends with `}`: replace it with the hash field.
    line.pop();
    line.reserve(HASH_SUFFIX_LEN);
    line.push_str(HASH_KEY);
    line.push_str(hash.as_str());
    line.push_str("\"}");
    event.hash = hash.to_string();
    Sealed { event, line }
}

/// Parses and hash-checks one line (without its newline).
///
/// The line must end with `,"hash":"<64 lowercase hex>"}`, the BLAKE3 digest of everything
/// before that suffix followed by `}` must equal those hex digits, and the line must parse as an
/// [`AuditEvent`] (no unknown or duplicate fields) whose `hash` is those digits. Does not check
/// the chain; see [`verify`].
pub fn parse_line(line: &str) -> Result<AuditEvent, AuditError> {
    check_line(line).map_err(|what| AuditError::Invalid {
        seq: guess_seq(line),
        what,
    })
}

/// [`parse_line`] with the bare reason as error, for callers that add their own context.
fn check_line(line: &str) -> Result<AuditEvent, String> {
    let bytes = line.as_bytes();
    if bytes.contains(&b'\n') || bytes.contains(&b'\r') {
        return Err("line contains a line break".to_string());
    }
    let hex = hash_suffix(line).ok_or_else(|| {
        "line does not end with a well-formed `,\"hash\":\"<64 lowercase hex digits>\"}`"
            .to_string()
    })?;
    let prefix = &bytes[..bytes.len() - HASH_SUFFIX_LEN];
    let mut hasher = blake3::Hasher::new();
    hasher.update(prefix);
    hasher.update(b"}");
    let actual = hasher.finalize().to_hex();
    if actual.as_str() != hex {
        return Err(format!(
            "hash mismatch: the line's content hashes to {}, not to its recorded hash {} \
             (the line was modified)",
            actual.as_str(),
            hex
        ));
    }
    let event: AuditEvent = serde_json::from_str(line).map_err(|e| {
        format!("not a valid audit event (its hash matches, so it was written that way): {e}")
    })?;
    if event.hash != hex {
        return Err(format!(
            "the parsed hash field {} differs from the line's hash suffix {hex}",
            event.hash
        ));
    }
    Ok(event)
}

/// The 64 hex digits of a line's `,"hash":"<hex>"}` suffix, if it has a well-formed one.
fn hash_suffix(line: &str) -> Option<&str> {
    let bytes = line.as_bytes();
    // At least `{` before the suffix.
    if bytes.len() < HASH_SUFFIX_LEN + 1 {
        return None;
    }
    let start = bytes.len() - HASH_SUFFIX_LEN;
    let suffix = &bytes[start..];
    let (key, rest) = suffix.split_at(HASH_KEY.len());
    let (hex, close) = rest.split_at(64);
    let hex_ok = hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if key != HASH_KEY.as_bytes() || close != b"\"}" || !hex_ok {
        return None;
    }
    // All bytes checked above are ASCII, so these are char boundaries.
    line.get(start + HASH_KEY.len()..start + HASH_KEY.len() + 64)
}

/// The seq a (possibly damaged) line claims, read from its `{"seq":N,` prefix.
fn guess_seq(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("{\"seq\":")?;
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .map_or(rest, |end| &rest[..end]);
    digits.parse().ok()
}

fn is_hash_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

// ---------------------------------------------------------------------------------------------
// Segments
// ---------------------------------------------------------------------------------------------

fn segment_name(number: u64) -> String {
    format!("{SEGMENT_PREFIX}{number:08}{SEGMENT_SUFFIX}")
}

#[derive(Debug)]
struct Segment {
    number: u64,
    name: String,
    path: PathBuf,
}

/// The segments of `dir`, sorted by number. Rejects files that look like segments but are not
/// named canonically (`audit-1.jsonl`), since readers would otherwise silently skip them.
fn list_segments(dir: &Path) -> Result<Vec<Segment>, AuditError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            continue;
        };
        let Some(middle) = name
            .strip_prefix(SEGMENT_PREFIX)
            .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
        else {
            continue;
        };
        let number = middle
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| middle.parse::<u64>().ok())
            .flatten()
            .filter(|&n| n > 0 && segment_name(n) == name);
        let Some(number) = number else {
            return Err(AuditError::Corrupt {
                segment: name.to_string(),
                line: 0,
                seq: None,
                what: "unexpected file in the audit dir: segments are named audit-NNNNNNNN.jsonl \
                       (eight digits, from 00000001)"
                    .to_string(),
            });
        };
        segments.push(Segment {
            number,
            name: name.to_string(),
            path: entry.path(),
        });
    }
    segments.sort_by_key(|s| s.number);
    Ok(segments)
}

/// The error for segment `expected` missing from the list, `found` being the next one present.
fn missing_segment(expected: u64, found: &Segment, seq: Option<u64>) -> AuditError {
    let what = if expected == 1 {
        format!(
            "segment is missing (the first segment present is {})",
            found.name
        )
    } else {
        format!(
            "segment is missing (the numbering jumps from {} to {})",
            segment_name(expected - 1),
            found.name
        )
    };
    AuditError::Corrupt {
        segment: segment_name(expected),
        line: 0,
        seq,
        what,
    }
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Position of the last `\n` in `file[..end]`, scanning backwards.
fn rfind_newline(mut file: &File, end: u64, path: &Path) -> Result<Option<u64>, AuditError> {
    let mut buf = vec![0u8; TAIL_CHUNK as usize];
    let mut hi = end;
    while hi > 0 {
        let lo = hi.saturating_sub(TAIL_CHUNK);
        let chunk = &mut buf[..(hi - lo) as usize];
        file.seek(SeekFrom::Start(lo)).map_err(io_err(path))?;
        file.read_exact(chunk).map_err(io_err(path))?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(lo + i as u64));
        }
        hi = lo;
    }
    Ok(None)
}

fn read_range(mut file: &File, start: u64, end: u64, path: &Path) -> Result<Vec<u8>, AuditError> {
    let mut buf = vec![0u8; (end - start) as usize];
    file.seek(SeekFrom::Start(start)).map_err(io_err(path))?;
    file.read_exact(&mut buf).map_err(io_err(path))?;
    Ok(buf)
}

/// The time of a segment's last complete event, when it can be read cheaply (the tail only).
/// `None` means "don't know": the caller then reads the segment.
fn last_event(file: &File, path: &Path) -> Option<serde_json::Value> {
    let len = file.metadata().ok()?.len();
    let end = rfind_newline(file, len, path).ok()??;
    let start = rfind_newline(file, end, path).ok()?.map_or(0, |p| p + 1);
    let line = read_range(file, start, end, path).ok()?;
    serde_json::from_slice(&line).ok()
}

/// Which segments a scan may skip whole, judged by their last event (never the last segment,
/// which may be growing).
#[derive(Debug, Clone, Copy, Default)]
struct SegmentSkip {
    /// Segments whose last event is older than this time (UTC microseconds).
    before_us: Option<i64>,
    /// Segments whose last event's seq is at most this (a page cursor).
    through_seq: Option<u64>,
}

impl SegmentSkip {
    fn any(&self) -> bool {
        self.before_us.is_some() || self.through_seq.is_some()
    }

    fn skips(&self, last: &serde_json::Value) -> bool {
        let time = || {
            let t = last.get("time")?.as_str()?;
            autonomy_api::timefmt::parse_rfc3339_us(t).ok()
        };
        let seq = || last.get("seq")?.as_u64();
        self.before_us
            .is_some_and(|start| time().is_some_and(|t| t < start))
            || self
                .through_seq
                .is_some_and(|cursor| seq().is_some_and(|s| s <= cursor))
    }
}

/// Number of `\n` in `file[..end]`.
fn count_newlines(file: &File, end: u64, path: &Path) -> Result<u64, AuditError> {
    let mut reader = BufReader::new(file);
    reader.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    let mut reader = reader.take(end);
    let mut buf = vec![0u8; TAIL_CHUNK as usize];
    let mut count = 0;
    loop {
        let n = reader.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            return Ok(count);
        }
        count += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

// ---------------------------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------------------------

/// The single writer of an audit dir. Holds the dir's lock until dropped.
#[derive(Debug)]
pub struct AuditLog {
    dir: PathBuf,
    segment_max_bytes: u64,
    /// Holds the exclusive lock on `<dir>/LOCK`; released when dropped.
    _lock: File,
    /// The current (highest-numbered) segment, opened for appending.
    seg_number: u64,
    seg_path: PathBuf,
    seg_file: File,
    /// Length of the current segment after the last successful append.
    seg_len: u64,
    last_seq: u64,
    last_hash: String,
    repaired: Option<String>,
    /// `(segment, length)` to truncate back to before the next append: set when a failed append
    /// could not be rolled back at once.
    pending_rollback: Option<Vec<(u64, u64)>>,
    /// Signed checkpoints, once [`AuditLog::set_signer`] was called.
    checkpointing: Option<checkpoint::Checkpointing>,
}

impl AuditLog {
    /// Opens (creating if missing) the audit dir `dir` for writing.
    ///
    /// Takes an exclusive lock on `<dir>/LOCK` (and writes our pid into it) so two control planes
    /// never write the same dir; finds the segments (their numbering must be contiguous from 1);
    /// repairs a torn tail — an incomplete final line left by a crash mid-write, which was never
    /// acknowledged — by truncating it away (reported by [`AuditLog::repaired`]); and reads the
    /// last complete line to learn [`AuditLog::last_seq`] and [`AuditLog::last_hash`] (0 and
    /// [`GENESIS_HASH`] when empty). A last complete line that fails to parse or hash-check is
    /// not repaired: that is tampering, and `open` returns [`AuditError::Corrupt`].
    ///
    /// A line longer than `segment_max_bytes` still goes into a segment of its own.
    pub fn open(dir: &Path, segment_max_bytes: u64) -> Result<AuditLog, AuditError> {
        create_dir(dir)?;
        let lock = lock_dir(dir, LOCK_FILE)?;
        let segments = list_segments(dir)?;
        for (i, segment) in segments.iter().enumerate() {
            let expected = i as u64 + 1;
            if segment.number != expected {
                return Err(missing_segment(expected, segment, None));
            }
        }

        let mut last_seq = 0;
        let mut last_hash = GENESIS_HASH.to_string();
        let mut repaired = None;
        // Walk back from the newest segment to the last complete line, skipping empty segments
        // and cutting off an incomplete final line.
        for segment in segments.iter().rev() {
            let path = &segment.path;
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(io_err(path))?;
            let mut end = file.metadata().map_err(io_err(path))?.len();
            if end == 0 {
                continue;
            }
            let last_byte = read_range(&file, end - 1, end, path)?;
            if last_byte != b"\n" {
                if repaired.is_some() {
                    return Err(AuditError::Corrupt {
                        segment: segment.name.clone(),
                        line: count_newlines(&file, end, path)? + 1,
                        seq: None,
                        what: "segment ends with an incomplete line, and so did a later one: \
                               refusing to open (run `autonomy audit verify`)"
                            .to_string(),
                    });
                }
                let keep = rfind_newline(&file, end, path)?.map_or(0, |p| p + 1);
                file.set_len(keep).map_err(io_err(path))?;
                file.sync_all().map_err(io_err(path))?;
                repaired = Some(format!(
                    "truncated an incomplete final line ({} bytes at offset {keep}) from {}, \
                     left by an interrupted write",
                    end - keep,
                    segment.name
                ));
                end = keep;
                if end == 0 {
                    continue;
                }
            }
            // The segment now ends with `\n` at `end - 1`.
            let start = rfind_newline(&file, end - 1, path)?.map_or(0, |p| p + 1);
            let bytes = read_range(&file, start, end - 1, path)?;
            let checked = std::str::from_utf8(&bytes)
                .map_err(|_| "line is not valid UTF-8".to_string())
                .and_then(check_line);
            match checked {
                Ok(event) => {
                    last_seq = event.seq;
                    last_hash = event.hash;
                }
                Err(what) => {
                    return Err(AuditError::Corrupt {
                        segment: segment.name.clone(),
                        line: count_newlines(&file, start, path)? + 1,
                        seq: guess_seq(&String::from_utf8_lossy(&bytes)),
                        what: format!(
                            "{what}; the last event of the log is damaged, refusing to open \
                             (run `autonomy audit verify`)"
                        ),
                    });
                }
            }
            break;
        }

        let (seg_number, seg_path) = match segments.last() {
            Some(segment) => (segment.number, segment.path.clone()),
            None => {
                let path = dir.join(segment_name(1));
                let file = OpenOptions::new()
                    .append(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                file.sync_all().map_err(io_err(&path))?;
                sync_dir(dir)?;
                (1, path)
            }
        };
        let seg_file = OpenOptions::new()
            .append(true)
            .open(&seg_path)
            .map_err(io_err(&seg_path))?;
        let seg_len = seg_file.metadata().map_err(io_err(&seg_path))?.len();
        Ok(AuditLog {
            dir: dir.to_path_buf(),
            segment_max_bytes,
            _lock: lock,
            seg_number,
            seg_path,
            seg_file,
            seg_len,
            last_seq,
            last_hash,
            repaired,
            pending_rollback: None,
            checkpointing: None,
        })
    }

    /// The audit dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Seq of the newest event in the log; 0 when empty.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Hash of the newest event in the log; [`GENESIS_HASH`] when empty.
    pub fn last_hash(&self) -> &str {
        &self.last_hash
    }

    /// What [`AuditLog::open`] repaired (a torn tail it truncated), if anything.
    pub fn repaired(&self) -> Option<&str> {
        self.repaired.as_deref()
    }

    /// Appends `(seq, line)` pairs in order, each line as made by [`seal`] (no newline).
    ///
    /// Leading pairs with `seq <= last_seq` are skipped (idempotent replay; the one at
    /// `last_seq` must carry the log's last hash). After them, seqs must run `last_seq + 1`,
    /// `last_seq + 2`, … ([`AuditError::Gap`] otherwise), and every line must pass
    /// [`parse_line`], carry its seq and chain onto the line before it
    /// ([`AuditError::Invalid`] otherwise); nothing is written unless all of them do.
    ///
    /// Writes all lines, then fsyncs once before returning. Starts a new segment before a line
    /// that would push the current non-empty segment past `segment_max_bytes` (fsyncing the
    /// finished segment, the new one and the dir). On a write or fsync error, truncates the
    /// segments back to their lengths before the call (retrying that before the next append if
    /// it fails too), leaves `last_seq` unchanged and returns the error: retry the same lines.
    pub fn append<S: AsRef<str>>(&mut self, lines: &[(u64, S)]) -> Result<(), AuditError> {
        if let Some(plan) = self.pending_rollback.take() {
            if let Err(e) = self.roll_back(&plan) {
                self.pending_rollback = Some(plan);
                return Err(e);
            }
        }

        let mut accepted: Vec<&str> = Vec::new();
        // (seq, hash) of the accepted lines, for the checkpoints.
        let mut heads: Vec<(u64, String)> = Vec::new();
        let mut expected = self.last_seq + 1;
        let mut prev_hash = self.last_hash.clone();
        for (seq, line) in lines {
            let (seq, line) = (*seq, line.as_ref());
            if accepted.is_empty() && seq >= 1 && seq <= self.last_seq {
                if seq == self.last_seq && hash_suffix(line) != Some(self.last_hash.as_str()) {
                    return Err(AuditError::Invalid {
                        seq: Some(seq),
                        what: format!(
                            "differs from the event with that seq already in the log (whose \
                             hash is {}): the log and its source have diverged",
                            self.last_hash
                        ),
                    });
                }
                continue;
            }
            if seq != expected {
                return Err(AuditError::Gap { expected, got: seq });
            }
            let event = check_line(line).map_err(|what| AuditError::Invalid {
                seq: Some(seq),
                what,
            })?;
            if event.seq != seq {
                return Err(AuditError::Invalid {
                    seq: Some(seq),
                    what: format!("the line carries seq {}", event.seq),
                });
            }
            if event.prev_hash != prev_hash {
                return Err(AuditError::Invalid {
                    seq: Some(seq),
                    what: format!(
                        "prev_hash {} does not chain onto seq {} (hash {prev_hash})",
                        event.prev_hash,
                        seq - 1
                    ),
                });
            }
            if self.checkpointing.is_some() {
                heads.push((seq, event.hash.clone()));
            }
            prev_hash = event.hash;
            expected += 1;
            accepted.push(line);
        }
        if accepted.is_empty() {
            return Ok(());
        }

        let mut plan = vec![(self.seg_number, self.seg_len)];
        match self.write_lines(&accepted, &mut plan) {
            Ok(()) => {
                self.last_seq = expected - 1;
                self.last_hash = prev_hash;
                self.after_append(&heads);
                Ok(())
            }
            Err(e) => {
                if self.roll_back(&plan).is_err() {
                    self.pending_rollback = Some(plan);
                }
                Err(e)
            }
        }
    }

    /// Writes `lines` (already checked), rotating as needed, and fsyncs. Records in `plan` every
    /// segment it creates, with length 0.
    fn write_lines(
        &mut self,
        lines: &[&str],
        plan: &mut Vec<(u64, u64)>,
    ) -> Result<(), AuditError> {
        let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        let mut len = self.seg_len;
        for line in lines {
            let n = line.len() as u64 + 1;
            if len > 0 && len.saturating_add(n) > self.segment_max_bytes {
                self.flush(&buf)?;
                buf.clear();
                self.rotate(plan)?;
                len = 0;
            }
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            len += n;
        }
        self.flush(&buf)?;
        self.seg_len = len;
        Ok(())
    }

    /// Writes `buf` to the current segment and fsyncs it.
    fn flush(&mut self, buf: &[u8]) -> Result<(), AuditError> {
        if buf.is_empty() {
            return Ok(());
        }
        let path = &self.seg_path;
        (&self.seg_file).write_all(buf).map_err(io_err(path))?;
        self.seg_file.sync_data().map_err(io_err(path))
    }

    /// Starts the next segment and makes it durable.
    fn rotate(&mut self, plan: &mut Vec<(u64, u64)>) -> Result<(), AuditError> {
        let number = self.seg_number + 1;
        let path = self.dir.join(segment_name(number));
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        plan.push((number, 0));
        self.seg_number = number;
        self.seg_path = path;
        self.seg_file = file;
        self.seg_len = 0;
        self.seg_file.sync_all().map_err(io_err(&self.seg_path))?;
        sync_dir(&self.dir)
    }

    /// Checks that the ground is still under the log: the current segment's path still names
    /// the file this log appends to (not deleted, not replaced). An append to a deleted file
    /// would "succeed" into nothing, so the writer asks before every batch (SPEC §5.7).
    pub fn check_ground(&self) -> Result<(), AuditError> {
        use std::os::unix::fs::MetadataExt;
        let open = self.seg_file.metadata().map_err(io_err(&self.seg_path))?;
        match fs::metadata(&self.seg_path) {
            Ok(named) if named.dev() == open.dev() && named.ino() == open.ino() => Ok(()),
            Ok(_) => Err(AuditError::Io {
                path: self.seg_path.clone(),
                source: io::Error::other(
                    "the audit segment was replaced by another file while the control plane ran",
                ),
            }),
            Err(e) => Err(AuditError::Io {
                path: self.seg_path.clone(),
                source: io::Error::new(
                    e.kind(),
                    format!(
                        "the audit segment is gone (deleted while the control plane ran?): {e}"
                    ),
                ),
            }),
        }
    }

    /// Truncates each `(segment, length)` of `plan` and fsyncs it and the dir.
    fn roll_back(&mut self, plan: &[(u64, u64)]) -> Result<(), AuditError> {
        for &(number, len) in plan {
            let path = self.dir.join(segment_name(number));
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            file.set_len(len).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
            if number == self.seg_number {
                self.seg_len = len;
            }
        }
        sync_dir(&self.dir)
    }
}

/// Creates `dir` if missing, making its entry durable in the parent.
fn create_dir(dir: &Path) -> Result<(), AuditError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => sync_dir(Path::new(".")),
    }
}

/// Takes an exclusive lock on `dir/<file_name>` and records our pid in it; the lock lasts as
/// long as the returned file is open. The OS drops it when the process dies, however it dies,
/// so there is never a stale lock. The control plane uses it for its data dir too.
pub fn lock_dir(dir: &Path, file_name: &str) -> Result<File, AuditError> {
    let path = dir.join(file_name);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            // Best effort: the pid only improves the message.
            let pid = file
                .read_to_string(&mut holder)
                .ok()
                .and_then(|_| holder.trim().parse().ok());
            return Err(AuditError::Locked {
                path: dir.to_path_buf(),
                pid,
            });
        }
        Err(fs::TryLockError::Error(source)) => return Err(AuditError::Io { path, source }),
    }
    file.set_len(0).map_err(io_err(&path))?;
    file.seek(SeekFrom::Start(0)).map_err(io_err(&path))?;
    writeln!(file, "{}", std::process::id()).map_err(io_err(&path))?;
    Ok(file)
}

// ---------------------------------------------------------------------------------------------
// Readers
// ---------------------------------------------------------------------------------------------

enum Flow {
    Continue,
    Stop,
}

trait Visitor {
    /// One complete line (without its newline) of `segment`, `line` counting from 1.
    fn line(&mut self, segment: &str, line: u64, text: &str) -> Result<Flow, AuditError>;
    /// The seq expected next, for error messages.
    fn next_seq(&self) -> Option<u64>;
}

#[derive(Default)]
struct ScanSummary {
    segments: u64,
    unterminated_tail: bool,
}

/// Feeds every complete line of every segment of `dir`, in order, to `visitor`. Checks the
/// segment numbering as it goes. An incomplete final line of the log (a writer mid-append, or a
/// crash) is skipped and reported in the summary; one anywhere else is an error.
/// Visits every complete line of every segment in order. With `skip_before_us`, a segment
/// (other than the last) whose last event is older than that is not read at all: event times
/// only grow with seq, so nothing in it can match a query starting later.
fn scan(
    dir: &Path,
    visitor: &mut impl Visitor,
    skip: SegmentSkip,
) -> Result<ScanSummary, AuditError> {
    let segments = list_segments(dir)?;
    let mut summary = ScanSummary {
        segments: segments.len() as u64,
        unterminated_tail: false,
    };
    let mut buf = Vec::new();
    for (i, segment) in segments.iter().enumerate() {
        let expected = i as u64 + 1;
        if segment.number != expected {
            return Err(missing_segment(expected, segment, visitor.next_seq()));
        }
        let path = &segment.path;
        let mut file = File::open(path).map_err(io_err(path))?;
        if skip.any() {
            let is_last = i + 1 == segments.len();
            if !is_last && last_event(&file, path).is_some_and(|last| skip.skips(&last)) {
                continue;
            }
            // The tail read moved the cursor.
            file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
        }
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        let mut line = 0u64;
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf).map_err(io_err(path))? == 0 {
                break;
            }
            line += 1;
            if buf.pop() != Some(b'\n') {
                // An incomplete line, necessarily the segment's last.
                if later_segments_empty(&segments[i + 1..])? {
                    summary.unterminated_tail = true;
                    return Ok(summary);
                }
                return Err(AuditError::Corrupt {
                    segment: segment.name.clone(),
                    line,
                    seq: guess_seq(&String::from_utf8_lossy(&buf)).or(visitor.next_seq()),
                    what: "incomplete line (no newline) in the middle of the log".to_string(),
                });
            }
            let Ok(text) = std::str::from_utf8(&buf) else {
                return Err(AuditError::Corrupt {
                    segment: segment.name.clone(),
                    line,
                    seq: guess_seq(&String::from_utf8_lossy(&buf)).or(visitor.next_seq()),
                    what: "line is not valid UTF-8".to_string(),
                });
            };
            if let Flow::Stop = visitor.line(&segment.name, line, text)? {
                return Ok(summary);
            }
        }
    }
    Ok(summary)
}

fn later_segments_empty(segments: &[Segment]) -> Result<bool, AuditError> {
    for segment in segments {
        let len = fs::metadata(&segment.path)
            .map_err(io_err(&segment.path))?
            .len();
        if len > 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

struct QueryVisitor<'a> {
    filter: &'a AuditFilter,
    events: Vec<AuditEvent>,
}

impl Visitor for QueryVisitor<'_> {
    fn line(&mut self, segment: &str, line: u64, text: &str) -> Result<Flow, AuditError> {
        let event = check_line(text).map_err(|what| AuditError::Corrupt {
            segment: segment.to_string(),
            line,
            seq: guess_seq(text),
            what,
        })?;
        let time_us = if self.filter.start_us.is_some() || self.filter.end_us.is_some() {
            match autonomy_api::timefmt::parse_rfc3339_us(&event.time) {
                Ok(us) => us,
                // An event without a valid time lies in no time range.
                Err(_) => return Ok(Flow::Continue),
            }
        } else {
            0
        };
        if self.filter.matches(&event, time_us) {
            self.events.push(event);
            if self.events.len() >= self.filter.limit {
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Continue)
    }

    fn next_seq(&self) -> Option<u64> {
        None
    }
}

/// Reads the events of the audit dir `dir` that pass `filter`, oldest first, at most
/// `filter.limit` of them.
///
/// Reads the segments in order and hash-checks every line it reads (it stops reading once it has
/// `filter.limit` events); it does not check the chain, see [`verify`]. An incomplete final line
/// (a writer mid-append) is ignored; a line that fails [`parse_line`] is
/// [`AuditError::Corrupt`] naming its segment and line. Takes no lock, so it works while a
/// control plane writes the dir. Events whose `time` is not RFC 3339 match no time range.
pub fn query(dir: &Path, filter: &AuditFilter) -> Result<Vec<AuditEvent>, AuditError> {
    if filter.limit == 0 {
        list_segments(dir)?;
        return Ok(Vec::new());
    }
    let mut visitor = QueryVisitor {
        filter,
        events: Vec::new(),
    };
    let skip = SegmentSkip {
        before_us: filter.start_us,
        through_seq: filter.after_seq,
    };
    scan(dir, &mut visitor, skip)?;
    Ok(visitor.events)
}

/// What [`verify`] found in a sound log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Segment files.
    pub segments: u64,
    /// Complete events.
    pub events: u64,
    /// Seq of the newest event; 0 when empty.
    pub last_seq: u64,
    /// Hash of the newest event; [`GENESIS_HASH`] when empty.
    pub last_hash: String,
    /// The log ends with an incomplete line (a writer mid-append, or a crash not yet repaired by
    /// [`AuditLog::open`]); it was not counted.
    pub unterminated_tail: bool,
}

struct VerifyVisitor {
    next_seq: u64,
    prev_hash: String,
}

impl Visitor for VerifyVisitor {
    fn line(&mut self, segment: &str, line: u64, text: &str) -> Result<Flow, AuditError> {
        let corrupt = |seq: u64, what: String| AuditError::Corrupt {
            segment: segment.to_string(),
            line,
            seq: Some(seq),
            what,
        };
        let event = check_line(text)
            .map_err(|what| corrupt(guess_seq(text).unwrap_or(self.next_seq), what))?;
        if event.seq != self.next_seq {
            let what = if event.seq > self.next_seq {
                format!(
                    "seq {} where seq {} was expected: seq {} is missing or out of order",
                    event.seq, self.next_seq, self.next_seq
                )
            } else {
                format!(
                    "seq {} where seq {} was expected: seq {} is duplicated or out of order",
                    event.seq, self.next_seq, event.seq
                )
            };
            return Err(corrupt(event.seq, what));
        }
        if event.prev_hash != self.prev_hash {
            let what = if event.seq == 1 {
                format!(
                    "prev_hash {} is not the genesis hash (64 zeros): the chain's start was \
                     replaced",
                    event.prev_hash
                )
            } else if !is_hash_hex(&event.prev_hash) {
                format!("prev_hash {:?} is not a hash", event.prev_hash)
            } else {
                format!(
                    "prev_hash {} does not match the hash {} of seq {}: an earlier event was \
                     rewritten",
                    event.prev_hash,
                    self.prev_hash,
                    event.seq - 1
                )
            };
            return Err(corrupt(event.seq, what));
        }
        self.next_seq += 1;
        self.prev_hash = event.hash;
        Ok(Flow::Continue)
    }

    fn next_seq(&self) -> Option<u64> {
        Some(self.next_seq)
    }
}

/// Verifies the whole chain of the audit dir `dir`.
///
/// Checks that the segment numbering is contiguous from 1 (so a removed first or middle segment
/// is caught), that every line parses and matches its hash, that seq runs from 1 without gaps
/// across segments, and that each `prev_hash` equals the previous event's hash ([`GENESIS_HASH`]
/// for seq 1). Returns [`AuditError::Corrupt`] naming segment, line and seq of the first bad
/// record. An incomplete final line is not an error (see
/// [`VerifyReport::unterminated_tail`]). A missing dir is [`AuditError::Io`]; an empty one is
/// sound with 0 events. Takes no lock.
///
/// Removing the newest events leaves a valid, shorter chain: compare `last_seq`/`last_hash`
/// with an independent record to catch that.
pub fn verify(dir: &Path) -> Result<VerifyReport, AuditError> {
    let mut visitor = VerifyVisitor {
        next_seq: 1,
        prev_hash: GENESIS_HASH.to_string(),
    };
    let summary = scan(dir, &mut visitor, SegmentSkip::default())?;
    Ok(VerifyReport {
        segments: summary.segments,
        events: visitor.next_seq - 1,
        last_seq: visitor.next_seq - 1,
        last_hash: visitor.prev_hash,
        unterminated_tail: summary.unterminated_tail,
    })
}

/// Writes `bytes` to `path` atomically with mode 0600 (temp file, fsync, rename, fsync dir):
/// the first admin token of either store.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use autonomy_api::Outcome;

    fn new_event(n: u64) -> AuditEvent {
        let mut e = AuditEvent::draft(
            autonomy_api::EventType::PlanCreated,
            autonomy_api::Target::RolloutPlan,
            format!("plan-{n}"),
            Outcome::Success,
            "ship it \"now\" \u{e9}\n",
            serde_json::json!({"z": 1, "a": [true, null, 1.5], "s": "x"}),
        );
        e.id = format!("evt-{n}");
        e.time = "2026-11-28T09:30:00.000000Z".to_string();
        e.actor = "alice".to_string();
        e.request_id = format!("req-{n}");
        e
    }

    #[test]
    fn seal_then_parse_round_trips() {
        let sealed = seal(new_event(1), 1, GENESIS_HASH);
        assert!(!sealed.line.contains('\n'));
        assert_eq!(sealed.line, serde_json::to_string(&sealed.event).unwrap());
        assert!(is_hash_hex(&sealed.event.hash));
        assert_eq!(parse_line(&sealed.line).unwrap(), sealed.event);

        let next = seal(new_event(2), 2, &sealed.event.hash);
        assert_eq!(next.event.prev_hash, sealed.event.hash);
        assert_ne!(next.event.hash, sealed.event.hash);
        assert_eq!(parse_line(&next.line).unwrap(), next.event);
    }

    #[test]
    fn hash_is_blake3_of_the_body() {
        let sealed = seal(new_event(7), 7, GENESIS_HASH);
        let mut body = serde_json::to_value(&sealed.event).unwrap();
        body.as_object_mut().unwrap().remove("hash");
        // Without preserve_order the map is sorted, so rebuild the body by hand from the line.
        let cut = sealed.line.len() - HASH_SUFFIX_LEN;
        let text = format!("{}}}", &sealed.line[..cut]);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            body
        );
        assert_eq!(
            blake3::hash(text.as_bytes()).to_hex().as_str(),
            sealed.event.hash
        );
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let sealed = seal(new_event(3), 3, GENESIS_HASH);
        let bytes = sealed.line.as_bytes();
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x20] {
                let mut edited = bytes.to_vec();
                edited[i] ^= flip;
                if let Ok(text) = String::from_utf8(edited) {
                    assert!(
                        parse_line(&text).is_err(),
                        "byte {i} ^ {flip:#x} went unnoticed"
                    );
                }
            }
        }
        // Added or removed bytes too.
        assert!(parse_line(&format!(" {}", sealed.line)).is_err());
        assert!(parse_line(&format!("{} ", sealed.line)).is_err());
        assert!(parse_line(&sealed.line[1..]).is_err());
        assert!(parse_line(&sealed.line[..sealed.line.len() - 1]).is_err());
    }

    #[test]
    fn parse_line_rejects_garbage_without_panicking() {
        for bad in ["", "{}", "}", "not json", "{\"seq\":1}", &"é".repeat(80)] {
            let err = parse_line(bad).unwrap_err();
            assert!(matches!(err, AuditError::Invalid { .. }), "{err}");
        }
        let forged = format!("{{\"seq\":5{HASH_KEY}{}\"}}", "0".repeat(64));
        let err = parse_line(&forged).unwrap_err().to_string();
        assert!(
            err.contains("(seq 5)") && err.contains("hash mismatch"),
            "{err}"
        );
    }

    #[test]
    fn guess_seq_reads_the_prefix() {
        assert_eq!(guess_seq("{\"seq\":42,\"id\""), Some(42));
        assert_eq!(guess_seq("{\"seq\":x"), None);
        assert_eq!(guess_seq("garbage"), None);
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let path = std::env::temp_dir().join(format!(
                "autonomy-audit-unit-{name}-{}-{:?}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
            ));
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn chain(first: u64, last: u64, mut prev: String) -> Vec<(u64, String)> {
        (first..=last)
            .map(|n| {
                let sealed = seal(new_event(n), n, &prev);
                prev = sealed.event.hash;
                (n, sealed.line)
            })
            .collect()
    }

    #[test]
    fn a_failed_write_is_rolled_back_and_can_be_retried() {
        let tmp = TempDir::new("rollback");
        let mut log = AuditLog::open(&tmp.0, 100_000).unwrap();
        let lines = chain(1, 6, GENESIS_HASH.to_string());
        log.append(&lines[..2]).unwrap();
        let len = fs::metadata(&log.seg_path).unwrap().len();

        // Swap in a read-only handle: the write fails.
        let good = std::mem::replace(&mut log.seg_file, File::open(&log.seg_path).unwrap());
        let err = log.append(&lines[2..]).unwrap_err();
        assert!(matches!(err, AuditError::Io { .. }), "{err}");
        assert!(err.to_string().contains("audit-00000001.jsonl"), "{err}");
        assert_eq!(log.last_seq(), 2);
        assert!(log.pending_rollback.is_none());
        assert_eq!(fs::metadata(&log.seg_path).unwrap().len(), len);

        // A rollback that cannot be done yet blocks appends until it can.
        log.pending_rollback = Some(vec![(9, 0)]);
        assert!(log.append(&lines[2..]).is_err());
        assert!(log.pending_rollback.is_some());
        fs::write(tmp.0.join(segment_name(9)), "junk").unwrap();
        log.seg_file = good;
        log.append(&lines[2..]).unwrap();
        assert_eq!(fs::metadata(tmp.0.join(segment_name(9))).unwrap().len(), 0);
        fs::remove_file(tmp.0.join(segment_name(9))).unwrap();
        assert_eq!(log.last_seq(), 6);
        drop(log);
        assert_eq!(verify(&tmp.0).unwrap().last_seq, 6);
    }

    #[test]
    fn error_messages_name_their_place() {
        let e = AuditError::Corrupt {
            segment: "audit-00000002.jsonl".into(),
            line: 7,
            seq: Some(42),
            what: "hash mismatch".into(),
        };
        assert_eq!(
            e.to_string(),
            "segment audit-00000002.jsonl line 7 (seq 42): hash mismatch"
        );
        let e = AuditError::Corrupt {
            segment: "audit-00000001.jsonl".into(),
            line: 0,
            seq: None,
            what: "segment is missing".into(),
        };
        assert_eq!(
            e.to_string(),
            "segment audit-00000001.jsonl: segment is missing"
        );
        let e = AuditError::Locked {
            path: PathBuf::from("/x/audit"),
            pid: Some(12),
        };
        assert!(e
            .to_string()
            .starts_with("audit dir /x/audit is in use by another process (pid 12)"));
    }
}

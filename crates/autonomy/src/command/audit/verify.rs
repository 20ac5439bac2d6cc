//! `autonomy audit verify`: checks the audit store's hash chain, offline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use autonomy_audit::AuditError;
use clap::Args;

use super::require_dir;
use crate::command::Ctx;
use crate::exit::{self, Exit};
use crate::output::logfmt;

/// Check the audit store's hash chain end to end (reads the files; no control plane needed)
///
/// Every event must hash to its `hash`, link to the previous event's hash, and carry the next
/// `seq`; any edit, deletion or reordering is found. Prints
/// `ok segments=N events=N last_seq=N last_hash=…` and exits 0, or prints the first bad
/// record (`error: audit store is corrupt: <segment> line <n> (seq <s>): <what>`) and exits 1.
/// The store is --audit-dir (AUTONOMY_AUDIT_DIR), else `<data-dir>/audit`.
///
/// With --public-key FILE (the CP's `<data-dir>/audit-signing.pub`), every signed checkpoint in
/// `checkpoints.jsonl` must carry a valid signature by that key and match the chain's hash at
/// its seq, so history up to the last checkpoint cannot be rewritten or cut by someone without
/// the key; the events after it are reported as `unsigned_tail=N` (with `checkpoints=N
/// last_checkpoint_seq=N`). A bad checkpoint fails naming its line and seq.
///
/// The chain alone cannot show that its newest events were cut off the end, so when the CP's
/// data dir is known (--data-dir / AUTONOMY_DATA_DIR, or the default when no --audit-dir is
/// given) the result is also checked against the database's own copy of the chain head
/// (`database=checked`): a retained store that ends before the database's last event, or whose
/// last hash differs from the database's, fails. Otherwise it prints `database=not_checked`.
///
/// Examples:
///   autonomy audit verify
///   autonomy audit verify --data-dir /var/lib/autonomy
///   autonomy audit verify --audit-dir /mnt/retained/audit -o json
///   autonomy audit verify --audit-dir /mnt/retained/audit --public-key audit-signing.pub
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct VerifyArgs {
    /// The audit store to check.
    #[arg(long, env = "AUTONOMY_AUDIT_DIR", value_name = "DIR")]
    pub audit_dir: Option<PathBuf>,

    /// The CP's data directory [default: ./autonomy-data]: the audit store is
    /// `<data-dir>/audit` unless --audit-dir, and its database is checked against the store.
    #[arg(long, env = "AUTONOMY_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// The CP's checkpoint public key file (`<data-dir>/audit-signing.pub`: 64 hex digits, as
    /// served by GET /v1/audit/public-key): also check every signed checkpoint.
    #[arg(long, value_name = "FILE")]
    pub public_key: Option<PathBuf>,
}

impl VerifyArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        // The database is cross-checked only when it is known to be this store's.
        let (dir, flag, data_dir) = match (self.audit_dir, self.data_dir) {
            (Some(dir), data_dir) => (dir, "--audit-dir", data_dir),
            (None, data_dir) => {
                let data_dir = data_dir.unwrap_or_else(|| PathBuf::from("./autonomy-data"));
                (data_dir.join("audit"), "--data-dir", Some(data_dir))
            }
        };
        require_dir(&dir, flag)?;
        let key =
            match &self.public_key {
                Some(path) => Some(autonomy_audit::PublicKey::read(path).map_err(|e| {
                    exit::failure(Exit::Usage, format!("invalid --public-key: {e}"))
                })?),
                None => None,
            };
        let verified = match &key {
            Some(key) => autonomy_audit::verify_signed(&dir, key).map(|r| {
                let chain = r.chain.clone();
                (chain, Some(r))
            }),
            None => autonomy_audit::verify(&dir).map(|r| (r, None)),
        };
        let (report, signed) = match verified {
            Ok(report) => report,
            Err(AuditError::Checkpoint { line, seq, what }) => {
                let seq = seq.map_or(String::new(), |s| format!(" (checkpoint for seq {s})"));
                return Err(exit::failure(
                    Exit::Other,
                    format!(
                        "audit store is corrupt: {} line {line}{seq}: {what}",
                        autonomy_audit::CHECKPOINTS_FILE
                    ),
                ));
            }
            Err(AuditError::Corrupt {
                segment,
                line,
                seq,
                what,
            }) => {
                return Err(exit::failure(
                    Exit::Other,
                    match seq {
                        Some(seq) => format!(
                            "audit store is corrupt: {segment} line {line} (seq {seq}): {what}"
                        ),
                        None => format!("audit store is corrupt: {segment} line {line}: {what}"),
                    },
                ))
            }
            Err(e) => {
                return Err(exit::failure(
                    Exit::Other,
                    format!("cannot verify the audit store at {}: {e}", dir.display()),
                ))
            }
        };
        let database = match &data_dir {
            Some(d) if d.join("autonomy.db").exists() => {
                check_against_database(d, report.last_seq, &report.last_hash)?;
                "checked"
            }
            _ => "not_checked",
        };
        if ctx.out.is_json() {
            let mut value = serde_json::json!({
                "ok": true,
                "audit_dir": dir.display().to_string(),
                "segments": report.segments,
                "events": report.events,
                "last_seq": report.last_seq,
                "last_hash": report.last_hash,
                "unterminated_tail": report.unterminated_tail,
                "database": database,
            });
            if let Some(signed) = &signed {
                value["checkpoints"] = signed.checkpoints.into();
                value["last_checkpoint_seq"] = signed.last_checkpoint_seq.into();
                value["unsigned_tail"] = signed.unsigned_tail.into();
            }
            ctx.out.print(&serde_json::to_string(&value)?)?;
        } else {
            let mut pairs = vec![
                ("segments", report.segments.to_string()),
                ("events", report.events.to_string()),
                ("last_seq", report.last_seq.to_string()),
                ("last_hash", report.last_hash.to_string()),
            ];
            if report.unterminated_tail {
                pairs.push(("unterminated_tail", "true".to_string()));
            }
            pairs.push(("database", database.to_string()));
            if let Some(signed) = &signed {
                pairs.push(("checkpoints", signed.checkpoints.to_string()));
                pairs.push((
                    "last_checkpoint_seq",
                    signed.last_checkpoint_seq.to_string(),
                ));
                pairs.push(("unsigned_tail", signed.unsigned_tail.to_string()));
            }
            ctx.out.print(&format!("ok {}", logfmt(&pairs)))?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Fails when the retained store lacks the database's newest events or disagrees with it.
fn check_against_database(data_dir: &Path, last_seq: u64, last_hash: &str) -> anyhow::Result<()> {
    let db = autonomy_store_sqlite::audit_chain_in_db(data_dir, last_seq).map_err(|e| {
        exit::failure(
            Exit::Other,
            format!("cannot check the audit store against the database: {e}"),
        )
    })?;
    let db_file = data_dir.join("autonomy.db");
    if db.last_seq > last_seq {
        return Err(exit::failure(
            Exit::Other,
            format!(
                "audit store is incomplete: it ends at seq {last_seq} but {} holds events up to \
                 seq {}: the newest events are missing (cut off, or a running CP is mid-append: \
                 run again)",
                db_file.display(),
                db.last_seq
            ),
        ));
    }
    if last_seq > 0 && db.hash_at.as_deref() != Some(last_hash) {
        return Err(exit::failure(
            Exit::Other,
            format!(
                "audit store does not match {}: seq {last_seq} has hash {last_hash} in the store \
                 but {} in the database (another database's audit store?)",
                db_file.display(),
                db.hash_at.as_deref().unwrap_or("nothing")
            ),
        ));
    }
    Ok(())
}

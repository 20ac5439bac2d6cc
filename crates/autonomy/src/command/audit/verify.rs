//! `autonomy audit verify`: checks the audit store's hash chain, offline.

use std::path::PathBuf;
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
/// Examples:
///   autonomy audit verify
///   autonomy audit verify --data-dir /var/lib/autonomy
///   autonomy audit verify --audit-dir /mnt/retained/audit -o json
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct VerifyArgs {
    /// The audit store to check.
    #[arg(long, env = "AUTONOMY_AUDIT_DIR", value_name = "DIR")]
    pub audit_dir: Option<PathBuf>,

    /// The CP's data directory; the audit store is `<data-dir>/audit` unless --audit-dir.
    #[arg(
        long,
        env = "AUTONOMY_DATA_DIR",
        value_name = "DIR",
        default_value = "./autonomy-data"
    )]
    pub data_dir: PathBuf,
}

impl VerifyArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let (dir, flag) = match self.audit_dir {
            Some(dir) => (dir, "--audit-dir"),
            None => (self.data_dir.join("audit"), "--data-dir"),
        };
        require_dir(&dir, flag)?;
        let report = match autonomy_audit::verify(&dir) {
            Ok(report) => report,
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
        if ctx.out.is_json() {
            let value = serde_json::json!({
                "ok": true,
                "audit_dir": dir.display().to_string(),
                "segments": report.segments,
                "events": report.events,
                "last_seq": report.last_seq,
                "last_hash": report.last_hash,
                "unterminated_tail": report.unterminated_tail,
            });
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
            ctx.out.print(&format!("ok {}", logfmt(&pairs)))?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

//! `autonomy audit query`: the audit store directly (`--audit-dir`), else GET /v1/audit/events.
//! `--all` follows `next_cursor` page by page, the same way online and offline.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use autonomy_api::{AuditEvent, AuditEventList, AuditQuery, AUDIT_MAX_LIMIT};
use clap::Args;

use super::require_dir;
use crate::command::Ctx;
use crate::exit;
use crate::output::{Format, Table};

/// Query the audit trail, oldest event first
///
/// With --audit-dir (or AUTONOMY_AUDIT_DIR) the retained audit store is read directly, which
/// works while the control plane is down; otherwise the CP answers (GET /v1/audit/events).
/// Both answer the same: `-o json` prints `{"items":[…],"next_cursor":…}`, `-o jsonl` one
/// event per line, text a table (SEQ TIME EVENT_TYPE ACTOR RESOURCE OUTCOME). Times are RFC
/// 3339; the range is start-time <= time < end-time.
///
/// A page holds at most --limit events; a full page has a `next_cursor`, which --cursor takes
/// to get the events after it. --all follows the cursors to the end (pages of --limit events,
/// default 10000) and prints every matching event: with `-o jsonl` each page is written as it
/// arrives, so any history can be shipped to a log pipeline.
///
/// Examples:
///   autonomy audit query --event-type rollback.executed --actor val11-chaos-op -o json
///   autonomy audit query --resource web-1 --outcome denied --limit 50
///   autonomy audit query --audit-dir ./autonomy-data/audit --start-time 2026-01-01T00:00:00Z
///   autonomy audit query --all -o jsonl | gzip > audit-export.jsonl.gz
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct QueryArgs {
    /// Only events of this type, e.g. `rollback.executed`.
    #[arg(long, value_name = "TYPE")]
    pub event_type: Option<String>,

    /// Only events by this operator.
    #[arg(long, value_name = "NAME")]
    pub actor: Option<String>,

    /// Only events about this resource (e.g. a plan id).
    #[arg(long, value_name = "ID")]
    pub resource: Option<String>,

    /// Only events with this outcome: success, noop, rejected, denied or error.
    #[arg(long, value_name = "OUTCOME")]
    pub outcome: Option<String>,

    /// Only events at or after this time (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    pub start_time: Option<String>,

    /// Only events before this time (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    pub end_time: Option<String>,

    /// At most N events (default 100, at most 10000); with --all, the size of each page
    /// (default 10000).
    #[arg(long, value_name = "N")]
    pub limit: Option<String>,

    /// Only events after this cursor (the `next_cursor` of a previous page).
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,

    /// Every matching event: follow `next_cursor` until the last page.
    #[arg(long)]
    pub all: bool,

    /// Read this audit store directly instead of asking the control plane.
    #[arg(long, env = "AUTONOMY_AUDIT_DIR", value_name = "DIR")]
    pub audit_dir: Option<PathBuf>,
}

impl QueryArgs {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let limit = match (&self.limit, self.all) {
            (None, true) => Some(AUDIT_MAX_LIMIT.to_string()),
            (limit, _) => limit.clone(),
        };
        let query = AuditQuery {
            event_type: self.event_type,
            actor: self.actor,
            resource: self.resource,
            outcome: self.outcome,
            start_time: self.start_time,
            end_time: self.end_time,
            limit,
            cursor: self.cursor,
        };
        let filter = query.parse().map_err(|e| {
            exit::usage(format!(
                "invalid value for --{}: {}",
                e.field.replace('_', "-"),
                e.message
            ))
        })?;
        if let Some(dir) = &self.audit_dir {
            require_dir(dir, "--audit-dir")?;
        }
        // One page after `cursor`, from the store or the CP, with the CP's answer as sent.
        let page = |cursor: Option<String>| -> anyhow::Result<(AuditEventList, Option<Vec<u8>>)> {
            match &self.audit_dir {
                Some(dir) => {
                    let mut filter = filter.clone();
                    filter.after_seq = match cursor {
                        Some(c) => Some(c.parse().context("bad cursor")?),
                        None => filter.after_seq,
                    };
                    let items = autonomy_audit::query(dir, &filter).with_context(|| {
                        format!("cannot read the audit store at {}", dir.display())
                    })?;
                    Ok((AuditEventList::page(items, filter.limit), None))
                }
                None => {
                    let mut query = query.clone();
                    query.cursor = cursor.or(query.cursor);
                    let reply = ctx.call(ctx.api.audit_events(&query))?;
                    let list = reply.value()?;
                    Ok((list, Some(reply.body().to_vec())))
                }
            }
        };
        if !self.all {
            let (list, body) = page(None)?;
            match (ctx.out.format(), body) {
                (Format::Jsonl, _) => Export::new(Format::Jsonl).page(&list)?.finish()?,
                (Format::Json, Some(body)) => ctx.out.decoded(&body, &list, table)?,
                (Format::Json, None) => ctx.out.print(&serde_json::to_string(&list)?)?,
                (Format::Text, _) => ctx.out.print(&table(&list))?,
            }
            return Ok(ExitCode::SUCCESS);
        }
        let mut export = Export::new(ctx.out.format());
        let mut cursor = None;
        let mut last_seq = filter.after_seq;
        loop {
            let (list, _) = page(cursor.take())?;
            for e in &list.items {
                if last_seq.is_some_and(|s| e.seq <= s) {
                    anyhow::bail!(
                        "the audit events are out of order: seq {} after seq {}",
                        e.seq,
                        last_seq.unwrap_or(0)
                    );
                }
                last_seq = Some(e.seq);
            }
            export = export.page(&list)?;
            match list.next_cursor {
                Some(next) if !list.items.is_empty() => cursor = Some(next),
                _ => break,
            }
        }
        if export.format == Format::Text {
            ctx.out.print(&table(&AuditEventList {
                items: export.kept,
                next_cursor: None,
            }))?;
        } else {
            export.finish()?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// The pages of `--all` (and of one page in `-o jsonl`) as they arrive: `jsonl` writes each
/// event on its own line, `json` one `{"items":[…],"next_cursor":null}` document written
/// event by event, `text` keeps the events for one aligned table at the end.
struct Export {
    format: Format,
    out: std::io::StdoutLock<'static>,
    written: u64,
    kept: Vec<AuditEvent>,
}

impl Export {
    fn new(format: Format) -> Export {
        Export {
            format,
            out: std::io::stdout().lock(),
            written: 0,
            kept: Vec::new(),
        }
    }

    fn page(mut self, list: &AuditEventList) -> anyhow::Result<Export> {
        match self.format {
            Format::Text => self.kept.extend(list.items.iter().cloned()),
            Format::Jsonl => {
                for e in &list.items {
                    serde_json::to_writer(&mut self.out, e)?;
                    self.out.write_all(b"\n")?;
                }
            }
            Format::Json => {
                for e in &list.items {
                    self.out.write_all(if self.written == 0 {
                        b"{\"items\":["
                    } else {
                        b","
                    })?;
                    serde_json::to_writer(&mut self.out, e)?;
                    self.written += 1;
                }
            }
        }
        self.out.flush()?;
        Ok(self)
    }

    fn finish(mut self) -> anyhow::Result<()> {
        if self.format == Format::Json {
            if self.written == 0 {
                self.out.write_all(b"{\"items\":[")?;
            }
            self.out.write_all(b"],\"next_cursor\":null}\n")?;
        }
        self.out.flush()?;
        Ok(())
    }
}

fn table(list: &AuditEventList) -> String {
    let mut table = Table::new(&["SEQ", "TIME", "EVENT_TYPE", "ACTOR", "RESOURCE", "OUTCOME"]);
    for e in &list.items {
        table.row(row(e));
    }
    table.render()
}

fn row(e: &AuditEvent) -> Vec<String> {
    vec![
        e.seq.to_string(),
        e.time.clone(),
        e.event_type.clone(),
        e.actor.clone(),
        e.resource.clone(),
        e.outcome.to_string(),
    ]
}

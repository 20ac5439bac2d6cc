//! The documented exit codes and the one place errors become an exit code and a message.

use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;

use autonomy_client::ClientError;

use crate::output::escape;

/// Exit codes of every `autonomy` command (also printed by `autonomy --help`). Defined, and
/// mapped from HTTP answers, in one place: the client crate.
pub use autonomy_client::Exit;

/// The exit-code table for `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  other error (including a request the control plane rejected as invalid: 400/413/415/422,
     and an answer of the control plane that is not the expected JSON)
  2  usage error (bad flag or value, or a plan file that is missing, unreadable or over 1 MiB,
     caught before anything was sent)
  3  the control plane could not be reached, or gave no answer within --timeout
  4  not found
  5  conflict or invalid transition (including a rejected rollback)
  6  unauthenticated or forbidden (missing, bad or revoked token, or too weak a role)
  7  the control plane answered 5xx (503: retry after the time it names)

Errors go to stderr as one line: `error: <what happened>: <why>`.";

/// The flags of the client verbs (`serve` takes none of them), as typed.
pub const CLIENT_FLAGS: &[&str] = &[
    "--server",
    "--token",
    "-o",
    "--output",
    "--timeout",
    "--operator",
];

/// Why `serve` refuses a client flag.
pub const SERVE_TAKES_NO_CLIENT_FLAGS: &str =
    "it is a flag of the client commands, which `autonomy serve` does not take";

/// An error that knows its exit code. Commands return it (wrapped in `anyhow::Error`) for
/// failures that are not HTTP answers, e.g. usage errors found after parsing.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// A usage error (exit 2).
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    Failure {
        exit: Exit::Usage,
        message: message.into(),
    }
    .into()
}

/// Any error with an explicit exit code.
pub fn failure(exit: Exit, message: impl Into<String>) -> anyhow::Error {
    Failure {
        exit,
        message: message.into(),
    }
    .into()
}

/// Maps an error to its exit code and the message for the `error:` line (`None`: print
/// nothing, e.g. stdout was closed by `| head`). The message is one line with unsafe
/// characters escaped: it may quote what the CP answered.
pub fn classify(e: &anyhow::Error) -> (ExitCode, Option<String>) {
    let mut exit = Exit::Other;
    for cause in e.chain() {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::BrokenPipe {
                return (ExitCode::SUCCESS, None);
            }
        }
        if let Some(f) = cause.downcast_ref::<Failure>() {
            exit = f.exit;
            break;
        }
        if let Some(c) = cause.downcast_ref::<ClientError>() {
            exit = c.exit();
            break;
        }
    }
    (
        exit.into(),
        Some(escape(&one_line(&format!("{e:#}"))).into_owned()),
    )
}

/// Errors print as exactly one line.
pub fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prints a clap error as one `error: …` line (exit 2); help and version print as clap does.
pub fn clap_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(e.exit_code().clamp(0, 255) as u8)
        }
        _ => {
            let rendered = e.render().to_string();
            let mut parts = Vec::new();
            for line in rendered.lines().map(str::trim) {
                if line.starts_with("Usage:") || line.starts_with("For more information") {
                    break;
                }
                if !line.is_empty() {
                    parts.push(line);
                }
            }
            let mut message = parts.join(" ");
            let in_serve = rendered
                .lines()
                .any(|l| l.trim_start().starts_with("Usage: autonomy serve"));
            let client_flag = CLIENT_FLAGS
                .iter()
                .any(|f| message.contains(&format!("'{f}'")));
            if e.kind() == ErrorKind::UnknownArgument && in_serve && client_flag {
                message.push_str(&format!("; {SERVE_TAKES_NO_CLIENT_FLAGS}"));
            } else if e.kind() == ErrorKind::UnknownArgument && message.contains("'--operator'") {
                message.push_str(
                    "; --operator goes before the command (`autonomy --operator NAME rollout …`) \
                     or set AUTONOMY_OPERATOR",
                );
            }
            if !message.starts_with("error:") {
                message = format!("error: {message}");
            }
            let _ = writeln!(io::stderr(), "{} (see --help)", escape(&message));
            Exit::Usage.into()
        }
    }
}

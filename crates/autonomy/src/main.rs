//! `autonomy`: the AutonomyOps binary. `autonomy serve` runs the control plane (CP); every
//! other verb is the operator CLI, a thin blocking HTTP client of the CP's API v1 (plus the
//! offline `audit query --audit-dir` and `audit verify`, which read the audit store directly).
//!
//! This file only parses the command line, dispatches, and maps errors to the documented exit
//! codes (see [`exit::Exit`]) and the one-line `error: …` message, once.

mod cli;
mod command;
mod exit;
mod output;

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err(e) => return exit::clap_error(e),
    };
    match cli.run() {
        Ok(code) => code,
        Err(e) => {
            let (code, message) = exit::classify(&e);
            if let Some(message) = message {
                let mut stderr = std::io::stderr().lock();
                let _ = writeln!(stderr, "error: {message}");
            }
            code
        }
    }
}

//! The clap root: global flags (each with an `AUTONOMY_*` env var) and the command tree.

use std::process::ExitCode;
use std::time::Duration;

use autonomy_client::blocking::Transport;
use autonomy_client::{Api, Token};
use clap::{Args, Parser};

use crate::command::{Command, Ctx};
use crate::exit::EXIT_CODES_HELP;
use crate::output::{Format, Output};

const ROOT_ABOUT: &str =
    "AutonomyOps: the fleet rollout control plane (`serve`) and its operator CLI";

const ROOT_LONG_ABOUT: &str = "\
AutonomyOps: the fleet rollout control plane (`autonomy serve`) and its operator CLI.

Every other command talks to a running control plane (CP) over HTTP at --server, except
`audit verify` and `audit query --audit-dir`, which read the audit store directly (and so work
while the CP is down).

Output: `-o text` (default) prints one logfmt `key=value` line per object and an aligned table
for lists; `-o json` prints the API's JSON unchanged, one document.

Examples:
  autonomy serve --listen 127.0.0.1:8080 --data-dir ./autonomy-data
  export AUTONOMY_SERVER=http://127.0.0.1:8080 AUTONOMY_TOKEN=$(cat ./autonomy-data/admin.token)
  autonomy health
  autonomy --operator alice rollout create --id web-1 --artifact-ref oci://reg/web@sha256:…
  autonomy rollout stuck --threshold-seconds 300
  autonomy rollback execute --target rollout_plan --resource web-1 --strategy retry --reason 'stuck'
  autonomy audit query --actor alice -o json";

#[derive(Debug, Parser)]
#[command(
    name = "autonomy",
    version,
    about = ROOT_ABOUT,
    long_about = ROOT_LONG_ABOUT,
    after_help = EXIT_CODES_HELP,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    /// Who you are, for the audit trail when the CP runs without RBAC (sent as
    /// `X-Autonomy-Operator`; with RBAC the token decides). Give it before the command:
    /// `autonomy --operator alice rollout …`.
    #[arg(long, env = "AUTONOMY_OPERATOR", value_name = "NAME")]
    pub operator: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

/// Flags every client command accepts, before or after the command name.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Address of the control plane (plain HTTP).
    #[arg(
        long,
        global = true,
        env = "AUTONOMY_SERVER",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL",
        value_parser = parse_server
    )]
    pub server: String,

    /// API token (`Authorization: Bearer …`); needed when the CP enforces RBAC.
    #[arg(
        long,
        global = true,
        env = "AUTONOMY_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<Token>,

    /// Output format: `text` (logfmt lines and tables) or `json` (the API's JSON unchanged).
    #[arg(
        short = 'o',
        long,
        global = true,
        env = "AUTONOMY_OUTPUT",
        value_enum,
        default_value = "text",
        value_name = "FORMAT"
    )]
    pub output: Format,

    /// Give up on a request after this many seconds (fractions allowed), connect included.
    #[arg(
        long,
        global = true,
        env = "AUTONOMY_TIMEOUT",
        default_value = "30",
        value_name = "SECONDS",
        value_parser = parse_timeout,
        allow_negative_numbers = true
    )]
    pub timeout: Duration,
}

impl Cli {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let Cli {
            global,
            operator,
            command,
        } = self;
        let ctx = Ctx {
            api: Api::new()
                .with_token(global.token)
                .with_operator(operator)
                .with_user_agent(concat!("autonomy-cli/", env!("CARGO_PKG_VERSION"))),
            transport: Transport::new(global.server, global.timeout),
            out: Output::new(global.output),
        };
        command.run(&ctx)
    }
}

/// `--server`: `http://host[:port]` (a bare `host:port` gets `http://`), no trailing slash.
fn parse_server(s: &str) -> Result<String, String> {
    let s = s.trim();
    let rest = match s.split_once("://") {
        None => s,
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
            return Err(
                "https is not supported by this build (plain HTTP only); use http://".into(),
            )
        }
        Some((scheme, _)) => return Err(format!("unsupported scheme '{scheme}' (use http://)")),
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.starts_with(['/', ':']) {
        return Err(format!("'{s}' names no host"));
    }
    if rest.contains(['?', '#', ' ', '@']) {
        return Err(format!("'{s}' is not a plain http://host[:port] address"));
    }
    Ok(format!("http://{rest}"))
}

/// `--timeout`: a positive number of seconds, fractions allowed.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if secs.is_nan() || secs <= 0.0 {
        return Err(format!("must be more than 0 seconds, got '{s}'"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("'{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn server_is_normalised() {
        assert_eq!(
            parse_server("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            parse_server("cp.local:9000").unwrap(),
            "http://cp.local:9000"
        );
        assert!(parse_server("https://cp").is_err());
        assert!(parse_server("ftp://cp").is_err());
        assert!(parse_server("http://").is_err());
    }

    #[test]
    fn timeout_accepts_fractions_only_positive() {
        assert_eq!(parse_timeout("0.5").unwrap(), Duration::from_millis(500));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("-1").is_err());
        assert!(parse_timeout("NaN").is_err());
        assert!(parse_timeout("inf").is_err());
    }

    #[test]
    fn token_debug_hides_the_secret() {
        let t: Token = "s3cret".parse().unwrap();
        assert!(!format!("{t:?}").contains("s3cret"));
    }
}

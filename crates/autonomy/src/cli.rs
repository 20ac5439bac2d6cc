//! The clap root: the client flags (each with an `AUTONOMY_*` env var) and the command tree.
//!
//! The client flags (`--server`, `--token`, `-o`, `--timeout`) are defined once, in
//! [`ClientArgs`], and [`command`] puts them in two places: on the root, so that they can come
//! before the verb (`autonomy --token T rollout get X`), and as global flags of every client
//! verb, so that they can come anywhere after it (`autonomy rollout get X --token T`). `serve`
//! gets none of them: its `--help` shows only its own flags, and a client flag given to it
//! is a usage error. `--operator` is a root flag only (`token create` has its own).
//!
//! An `AUTONOMY_*` variable set to the empty string counts as unset (SPEC §10).

use std::process::ExitCode;
use std::time::Duration;

use autonomy_client::blocking::Transport;
use autonomy_client::{Api, Token};
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser};

use crate::command::{Command, Ctx};
use crate::exit::{EXIT_CODES_HELP, SERVE_TAKES_NO_CLIENT_FLAGS};
use crate::output::{Format, Output};

const ROOT_ABOUT: &str =
    "AutonomyOps: the fleet rollout control plane (`serve`) and its operator CLI";

const ROOT_LONG_ABOUT: &str = "\
AutonomyOps: the fleet rollout control plane (`autonomy serve`) and its operator CLI.

Every other command talks to a running control plane (CP) over HTTP at --server, except
`audit verify` and `audit query --audit-dir`, which read the audit store directly (and so work
while the CP is down).

Output: `-o text` (default) prints one logfmt `key=value` line per object and an aligned table
for lists, with control, bidi and zero-width characters escaped (ESC shows as `\\u{1b}`);
`-o json` prints the API's JSON unchanged, one document. Either way the answer is first checked
to be what the command expects (anything else is exit 1).

The client flags (--server, --token, -o, --timeout) go before or after the command; `serve`
takes none of them. An AUTONOMY_* variable set to the empty string counts as unset.

Examples:
  autonomy serve --listen 127.0.0.1:8080 --data-dir ./autonomy-data
  export AUTONOMY_SERVER=http://127.0.0.1:8080 AUTONOMY_TOKEN=$(cat ./autonomy-data/admin.token)
  autonomy health
  autonomy --operator alice rollout create --id web-1 --artifact-ref oci://reg/web@sha256:…
  autonomy device register amr-0007 --label site=berlin
  autonomy rollout devices fw-7 --state failed
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
    pub global: ClientArgs,

    /// Who you are, for the audit trail when the CP runs without RBAC (sent as
    /// `X-Autonomy-Operator`; with RBAC the token decides). Give it before the command:
    /// `autonomy --operator alice rollout …`.
    #[arg(long, env = "AUTONOMY_OPERATOR", value_name = "NAME")]
    pub operator: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

/// Flags every client command accepts, before or after the command name (see [`command`]).
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Address of the control plane: `http://host[:port]` (plain HTTP), no path, query or
    /// fragment (the CLI adds `/v1/…`).
    #[arg(
        long,
        env = "AUTONOMY_SERVER",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL",
        value_parser = parse_server
    )]
    pub server: String,

    /// API token (`Authorization: Bearer …`); needed when the CP enforces RBAC.
    #[arg(
        long,
        env = "AUTONOMY_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<Token>,

    /// Output format: `text` (logfmt lines and tables), `json` (the API's JSON unchanged) or
    /// `jsonl` (like json; `audit query` prints one event per line as it pages).
    #[arg(
        short = 'o',
        long,
        env = "AUTONOMY_OUTPUT",
        value_enum,
        default_value = "text",
        value_name = "FORMAT"
    )]
    pub output: Format,

    /// Give up on a request after this many seconds (fractions allowed), connect included.
    #[arg(
        long,
        env = "AUTONOMY_TIMEOUT",
        default_value = "30",
        value_name = "SECONDS",
        value_parser = parse_timeout,
        allow_negative_numbers = true
    )]
    pub timeout: Duration,
}

/// The ids of the [`ClientArgs`] and of `--operator`, with the flag that sets each.
const CLIENT_ARG_IDS: &[(&str, &str)] = &[
    ("server", "--server"),
    ("token", "--token"),
    ("output", "-o/--output"),
    ("timeout", "--timeout"),
    ("operator", "--operator"),
];

/// The verbs that take none of the client flags after them: `serve`, `completions` and `man`
/// (they never talk to a CP), and `agent` (a device, with its own `--server` and a device
/// token, not an operator's).
const STANDALONE_VERBS: &[&str] = &["serve", "agent", "completions", "man"];

/// The whole command tree: the derived one, with the [`ClientArgs`] also on every client verb
/// (global from there down) and every `AUTONOMY_*` variable that is set but empty treated as
/// unset.
pub fn command() -> clap::Command {
    let client_args: Vec<clap::Arg> = ClientArgs::augment_args(clap::Command::new("client"))
        .get_arguments()
        .map(|a| a.clone().global(true))
        .collect();
    let cmd = Cli::command().mut_subcommands(|verb| {
        if STANDALONE_VERBS.contains(&verb.get_name()) {
            verb
        } else {
            verb.args(client_args.iter().cloned())
        }
    });
    empty_env_is_unset(cmd)
}

/// Parses the command line (`std::env::args_os`). Errors are clap's, for
/// [`crate::exit::clap_error`].
pub fn parse() -> Result<Cli, clap::Error> {
    let mut cmd = command();
    let matches = cmd.try_get_matches_from_mut(std::env::args_os())?;
    refuse_client_flags_for_serve(&mut cmd, &matches)?;
    Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
}

/// `autonomy --token T serve`: the root accepts the client flags before any verb, so a client
/// flag given there to `serve` is refused here (after `serve`, clap refuses it: `serve` does
/// not have it). The `AUTONOMY_*` variables of the client flags are not refused: they are
/// for the client verbs, and `serve` ignores them.
fn refuse_client_flags_for_serve(
    cmd: &mut clap::Command,
    matches: &ArgMatches,
) -> Result<(), clap::Error> {
    let verb = matches.subcommand_name().unwrap_or_default();
    if !STANDALONE_VERBS.contains(&verb) {
        return Ok(());
    }
    for (id, flag) in CLIENT_ARG_IDS {
        if matches.value_source(id) == Some(ValueSource::CommandLine) {
            let why = if verb == "serve" {
                SERVE_TAKES_NO_CLIENT_FLAGS.to_string()
            } else {
                format!("it is a flag of the client commands, which `autonomy {verb}` does not take (give `autonomy {verb}` its own flags after the verb)")
            };
            return Err(cmd.error(
                ErrorKind::ArgumentConflict,
                format!("{flag} given to {verb}: {why}"),
            ));
        }
    }
    Ok(())
}

/// SPEC §10: an empty environment variable counts as unset. clap reads a variable when the
/// argument is defined and would parse an empty value (`AUTONOMY_SERVER=` would be "names no
/// host", `AUTONOMY_DATABASE_URL=` a PostgreSQL URL); an argument whose variable is empty
/// forgets the variable instead, so its default applies.
fn empty_env_is_unset(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|arg| {
        let empty = arg
            .get_env()
            .and_then(std::env::var_os)
            .is_some_and(|v| v.is_empty());
        if empty {
            arg.env(clap::builder::Resettable::Reset)
        } else {
            arg
        }
    })
    .mut_subcommands(empty_env_is_unset)
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

/// `--server`: `http://host[:port]` (a bare `host:port` gets `http://`), normalised without a
/// trailing slash. The CLI adds `/v1/…` itself, so a path other than `/`, a query or a
/// fragment is refused: `http://cp/v1` would send every call to `/v1/v1/…` and read the 404s
/// as "not found".
pub(crate) fn parse_server(s: &str) -> Result<String, String> {
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
    let (authority, after) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let (before_fragment, fragment) = match after.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (after, None),
    };
    let (path, query) = match before_fragment.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (before_fragment, None),
    };
    if authority.is_empty() || authority.starts_with(':') {
        return Err(format!("'{s}' names no host"));
    }
    if authority.contains([' ', '@']) {
        return Err(format!("'{s}' is not a plain http://host[:port] address"));
    }
    let only = "give only http://host[:port]; the CLI adds /v1/… itself";
    if !path.is_empty() && path != "/" {
        return Err(format!("'{s}' has a path '{path}': {only}"));
    }
    if let Some(query) = query {
        return Err(format!("'{s}' has a query '?{query}': {only}"));
    }
    if let Some(fragment) = fragment {
        return Err(format!("'{s}' has a fragment '#{fragment}': {only}"));
    }
    Ok(format!("http://{authority}"))
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

    #[test]
    fn command_tree_is_consistent() {
        command().debug_assert();
    }

    fn parse_from(args: &[&str]) -> Result<Cli, clap::Error> {
        let mut cmd = command();
        let matches = cmd.try_get_matches_from_mut(args)?;
        refuse_client_flags_for_serve(&mut cmd, &matches)?;
        Cli::from_arg_matches(&matches)
    }

    #[test]
    fn client_flags_come_before_or_after_the_verb_and_the_later_wins() {
        let server = |args: &[&str]| parse_from(args).unwrap().global.server;
        assert_eq!(
            server(&["autonomy", "--server", "a:1", "health"]),
            "http://a:1"
        );
        assert_eq!(
            server(&["autonomy", "health", "--server", "b:1"]),
            "http://b:1"
        );
        assert_eq!(
            server(&["autonomy", "--server", "a:1", "rollout", "get", "x", "--server", "b:1"]),
            "http://b:1"
        );
        assert_eq!(
            server(&["autonomy", "rollout", "--server", "c:1", "get", "x"]),
            "http://c:1"
        );
        assert_eq!(server(&["autonomy", "health"]), "http://127.0.0.1:8080");
        let cli =
            parse_from(&["autonomy", "audit", "query", "-o", "json", "--timeout", "2"]).unwrap();
        assert_eq!(cli.global.output, Format::Json);
        assert_eq!(cli.global.timeout, Duration::from_secs(2));
    }

    #[test]
    fn serve_takes_no_client_flag_anywhere() {
        for args in [
            &["autonomy", "serve", "--server", "a:1"][..],
            &["autonomy", "serve", "-o", "json"],
            &["autonomy", "--token", "t", "serve"],
            &["autonomy", "--operator", "o", "serve"],
            &["autonomy", "--timeout", "1", "serve"],
        ] {
            assert!(parse_from(args).is_err(), "{args:?}");
        }
        assert!(parse_from(&["autonomy", "serve", "--rbac-enforcement", "0"]).is_ok());
        let mut cmd = command();
        cmd.build();
        let serve = cmd.find_subcommand("serve").unwrap();
        for id in ["server", "token", "output", "timeout", "operator"] {
            assert!(serve.get_arguments().all(|a| a.get_id() != id), "{id}");
        }
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
        assert_eq!(parse_server(" HTTP://cp:1 ").unwrap(), "http://cp:1");
        assert!(parse_server("https://cp").is_err());
        assert!(parse_server("ftp://cp").is_err());
        assert!(parse_server("http://").is_err());
        assert!(parse_server("http:///v1").is_err());
        assert!(parse_server("http://:8080").is_err());
        assert!(parse_server("http://user@cp").is_err());
    }

    #[test]
    fn server_with_a_path_query_or_fragment_is_refused_naming_it() {
        for (url, problem) in [
            ("http://cp/v1", "path '/v1'"),
            ("http://cp:8080/v1/", "path '/v1/'"),
            ("cp:8080/api", "path '/api'"),
            ("http://cp//", "path '//'"),
            ("http://cp/v1?x=1#f", "path '/v1'"),
            ("http://cp?x=1", "query '?x=1'"),
            ("http://cp/?", "query '?'"),
            ("http://cp/?a#b", "query '?a'"),
            ("http://cp#top", "fragment '#top'"),
            ("http://cp/#", "fragment '#'"),
        ] {
            let e = parse_server(url).unwrap_err();
            assert!(e.contains(problem), "{url}: {e}");
            assert!(e.contains("http://host[:port]"), "{url}: {e}");
        }
        assert_eq!(parse_server("http://cp/").unwrap(), "http://cp");
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

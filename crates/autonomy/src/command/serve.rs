//! `autonomy serve`: runs the control plane.
//!
//! Order of start-up: lock the data dir, bind the port, load (or make) the audit signing key,
//! open the store (SQLite checks, migrations, audit replay) — a refused start removes what it
//! created — start the background audit check, print `listening on http://ADDR`, serve until
//! SIGTERM/SIGINT, drain in-flight requests, stop the writer after its last commit (and its last
//! signed audit checkpoint), exit 0.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use autonomy_api::AuditDamage;
use autonomy_server::{AppState, ArtifactPolicy, AuditMonitor, Limits, ServerConfig};
use autonomy_store::Store;
use autonomy_store_postgres::{PgConfig, PgStore};
use autonomy_store_sqlite::{SqliteStore, StoreConfig};
use clap::{Args, ValueEnum};

/// Run the control plane (CP): on its embedded SQLite store, or as one replica over PostgreSQL.
///
/// Examples:
///   autonomy serve                                   # 127.0.0.1:8080, ./autonomy-data
///   autonomy serve --listen 127.0.0.1:0              # any free port; prints the one bound
///   AUTONOMY_RBAC_ENFORCEMENT=0 autonomy serve       # no tokens (lab use only)
///   AUTONOMY_DATABASE_URL=postgres://cp@db/autonomy autonomy serve --listen 0.0.0.0:8080
///                                                    # one replica of several (SPEC §7)
///
/// On first start the CP writes an admin token to <data-dir>/admin.token (mode 0600).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (the bound address is printed).
    #[arg(long, env = "AUTONOMY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,

    /// Directory for the database and the lock; created if missing.
    #[arg(long, env = "AUTONOMY_DATA_DIR", default_value = "./autonomy-data")]
    data_dir: PathBuf,

    /// Directory of the retained audit store [default: <data-dir>/audit].
    #[arg(long, env = "AUTONOMY_AUDIT_DIR")]
    audit_dir: Option<PathBuf>,

    /// PostgreSQL URL (postgres://USER[:PASSWORD]@HOST[:PORT]/DB) for the scale-out store:
    /// several replicas share one database, one of them runs the promoter (SPEC §7). Unset:
    /// the embedded SQLite store in --data-dir. The password never appears in logs or errors;
    /// prefer the env var (or ~/.pgpass) to a flag other users can read in `ps`.
    #[arg(
        long,
        env = "AUTONOMY_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    database_url: Option<String>,

    /// This replica's name, as `autonomy leader` and the `leader.acquired` audit event show it
    /// [default: <hostname>:<port>].
    #[arg(long, env = "AUTONOMY_REPLICA", value_name = "NAME")]
    replica: Option<String>,

    /// What to do with unknown artifact schemes and malformed digests: record a warning on
    /// the plan (warn) or reject the plan with 422 (strict).
    #[arg(
        long,
        env = "AUTONOMY_ARTIFACT_POLICY",
        value_enum,
        default_value = "warn"
    )]
    artifact_policy: Policy,

    /// RBAC enforcement: 1 (default) requires bearer tokens; 0 allows every request and takes
    /// the actor from the X-Autonomy-Operator header.
    #[arg(
        long,
        env = "AUTONOMY_RBAC_ENFORCEMENT",
        value_name = "0|1",
        default_value = "1",
        num_args = 0..=1,
        default_missing_value = "1",
        action = clap::ArgAction::Set,
        value_parser = parse_flag
    )]
    rbac_enforcement: bool,

    /// After SIGTERM/SIGINT, how long in-flight requests get to finish before the CP stops
    /// anyway (a client that never completes its request cannot hold the shutdown hostage).
    #[arg(
        long,
        env = "AUTONOMY_SHUTDOWN_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 10.0
    )]
    shutdown_timeout: f64,

    /// With RBAC off, a name the CP is served under besides loopback ones (localhost,
    /// *.localhost, 127.0.0.0/8, [::1]); requests with any other Host are 403 (DNS rebinding
    /// protection). Any port; repeatable, or comma-separated in the env var.
    #[arg(
        long = "allowed-host",
        value_name = "NAME",
        env = "AUTONOMY_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    allowed_hosts: Vec<String>,

    /// Connections served at once; beyond it, new connections wait in the accept queue until
    /// one ends (logged at most once a second).
    #[arg(
        long,
        env = "AUTONOMY_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 4096,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    max_connections: u32,

    /// Seconds a request's headers may take to arrive (from the connection's opening, or from
    /// the first byte of a later request on it).
    #[arg(
        long,
        env = "AUTONOMY_HEADER_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 10.0,
        hide = true
    )]
    header_timeout: f64,

    /// Seconds a request's body may take to arrive after its headers.
    #[arg(
        long,
        env = "AUTONOMY_BODY_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 30.0,
        hide = true
    )]
    body_timeout: f64,

    /// Seconds an idle keep-alive connection is kept open.
    #[arg(
        long,
        env = "AUTONOMY_IDLE_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 60.0,
        hide = true
    )]
    idle_timeout: f64,

    /// Refusals before authentication (401, or a bad path without a plausible token) one source
    /// address may cause per second; past it each is answered only after --refusal-tarpit-ms.
    #[arg(
        long,
        env = "AUTONOMY_REFUSAL_BUDGET",
        value_name = "N",
        default_value_t = 50,
        hide = true
    )]
    refusal_budget: u32,

    /// How long a refusal over its source's budget waits before it is answered.
    #[arg(
        long,
        env = "AUTONOMY_REFUSAL_TARPIT_MS",
        value_name = "MS",
        default_value_t = 1000,
        hide = true
    )]
    refusal_tarpit_ms: u64,

    /// Whether this control plane runs the promoter that rolls engine-driven plans out (SPEC
    /// §8.3). `off` is for tests: nothing is dispatched, and the stuck scan says
    /// `promoter_not_running` for active engine-driven plans.
    #[arg(long, env = "AUTONOMY_PROMOTER", value_enum, default_value_t = Switch::On)]
    promoter: Switch,

    /// Seconds between promoter ticks (it also ticks within ~20 ms of a report that settles a
    /// device).
    #[arg(
        long,
        env = "AUTONOMY_PROMOTER_INTERVAL",
        value_name = "SECONDS",
        default_value_t = 1.0,
        value_parser = parse_interval
    )]
    promoter_interval: f64,

    /// Log format on stderr: `text` (one human line per event) or `json` (one JSON object per
    /// line, for log shippers: `timestamp`, `level`, `target`, `message` and the event's fields;
    /// each request is one line with `request_id`, `method`, `route`, `status`, `latency_ms`).
    /// `RUST_LOG` sets the level (default `info`).
    #[arg(
        long,
        env = "AUTONOMY_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        value_name = "FORMAT"
    )]
    log_format: LogFormat,

    /// Size at which the audit store starts a new segment.
    #[arg(long, env = "AUTONOMY_AUDIT_SEGMENT_BYTES", default_value_t = autonomy_audit::DEFAULT_SEGMENT_BYTES, hide = true)]
    audit_segment_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Switch {
    On,
    Off,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.01..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "'{s}' is not a number of seconds from 0.01 to 3600"
        )),
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Policy {
    Warn,
    Strict,
}

/// A timeout flag: a positive number of seconds, at most a day.
fn seconds(flag: &str, value: f64) -> anyhow::Result<std::time::Duration> {
    if !(value.is_finite() && value > 0.0 && value <= 86_400.0) {
        bail!("invalid {flag}: must be a number of seconds above 0 and at most 86400");
    }
    Ok(std::time::Duration::from_secs_f64(value))
}

fn parse_flag(s: &str) -> Result<bool, String> {
    match s.trim() {
        "1" | "true" | "on" | "yes" => Ok(true),
        "0" | "false" | "off" | "no" => Ok(false),
        other => Err(format!("'{other}' is not 0 or 1")),
    }
}

impl ServeArgs {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        init_logging(self.log_format);
        if !(self.shutdown_timeout.is_finite() && self.shutdown_timeout >= 0.0) {
            bail!("invalid --shutdown-timeout: must be a non-negative number of seconds");
        }
        let grace = std::time::Duration::from_secs_f64(self.shutdown_timeout.min(3600.0));
        let limits = Limits {
            header_timeout: seconds("--header-timeout", self.header_timeout)?,
            body_timeout: seconds("--body-timeout", self.body_timeout)?,
            idle_timeout: seconds("--idle-timeout", self.idle_timeout)?,
            max_connections: self.max_connections as usize,
        };
        let mut allowed_hosts = Vec::new();
        for name in &self.allowed_hosts {
            let name = name.trim();
            if name.is_empty() || name.contains(['/', '@', ' ']) {
                bail!("invalid --allowed-host {name:?}: give a host name without scheme or path");
            }
            allowed_hosts.push(name.to_string());
        }
        let audit_dir = self
            .audit_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit"));

        // Lock the data dir, then take the port, then open the store. A refused start leaves
        // no file behind (SPEC §5.10): the guard removes what this start created.
        let mut guard = StartGuard::new(&self.data_dir, &audit_dir);
        let lock =
            SqliteStore::lock(&self.data_dir).map_err(|e| anyhow::anyhow!("cannot start: {e}"))?;
        guard.locked = true;
        let listener = bind_listener(&self.listen)
            .with_context(|| format!("cannot start: cannot listen on {}", self.listen))?;
        listener
            .set_nonblocking(true)
            .context("cannot start: listener setup")?;
        let addr = listener
            .local_addr()
            .context("cannot start: listener address")?;
        // The checkpoint signing key (SPEC §5.9): made at the first start, kept in the data dir
        // (a refused start removes it again with everything else it made: StartGuard).
        let (signer, _created) = autonomy_audit::Signer::load_or_create(&self.data_dir)
            .map_err(|e| anyhow::anyhow!("cannot start: audit signing key: {e}"))?;
        let public_key = signer.public_key();
        let replica = self
            .replica
            .clone()
            .unwrap_or_else(|| format!("{}:{}", host_name(), addr.port()));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let started = Started {
            listener,
            addr,
            audit_dir: audit_dir.clone(),
            public_key,
            grace,
            limits,
            allowed_hosts,
        };
        match &self.database_url {
            None => {
                let mut config = StoreConfig::new(self.data_dir.clone(), audit_dir.clone());
                config.audit_segment_bytes = self.audit_segment_bytes.max(4096);
                config.audit_signer = Some(signer);
                config.replica = replica;
                let (store, report) = SqliteStore::open(&config, lock)
                    .map_err(|e| anyhow::anyhow!("cannot start: {e}"))?;
                guard.disarm();
                tracing::info!(
                    db = %report.db_path.display(),
                    audit_dir = %audit_dir.display(),
                    plans = report.plans,
                    audit_last_seq = report.audit_last_seq,
                    audit_replayed = report.audit_replayed,
                    "store open"
                );
                if let Some(repair) = &report.audit_repair {
                    tracing::warn!(repair = %repair, "audit store tail repaired at start-up");
                }
                if let Some(path) = &report.admin_token_path {
                    tracing::info!(path = %path.display(), "wrote the first admin token");
                }
                self.serve(Arc::new(store), started, runtime)
            }
            Some(url) => {
                let mut config = PgConfig::new(url.clone(), replica.clone(), self.data_dir.clone());
                config.audit_dir = Some(audit_dir.clone());
                config.audit_segment_bytes = self.audit_segment_bytes.max(4096);
                config.audit_signer = Some(signer);
                let (store, report) = runtime
                    .block_on(PgStore::open(&config))
                    .map_err(|e| anyhow::anyhow!("cannot start: {e}"))?;
                guard.disarm();
                tracing::info!(
                    database = %report.database,
                    server_version = %report.server_version,
                    replica = %replica,
                    audit_dir = %audit_dir.display(),
                    plans = report.plans,
                    audit_last_seq = report.audit_last_seq,
                    audit_replayed = report.audit_replayed,
                    "store open (PostgreSQL)"
                );
                if let Some(repair) = &report.audit_repair {
                    tracing::warn!(repair = %repair, "audit mirror tail repaired at start-up");
                }
                if let Some(path) = &report.admin_token_path {
                    tracing::info!(path = %path.display(), "wrote the first admin token");
                }
                // The data dir's lock stays held while this replica runs.
                let _lock = lock;
                self.serve(Arc::new(store), started, runtime)
            }
        }
    }

    /// Serves until SIGTERM/SIGINT on either store, then stops it.
    fn serve<S: Store>(
        &self,
        store: Arc<S>,
        started: Started,
        runtime: tokio::runtime::Runtime,
    ) -> anyhow::Result<ExitCode> {
        let Started {
            listener,
            addr,
            audit_dir,
            public_key,
            grace,
            limits,
            allowed_hosts,
        } = started;
        if !self.rbac_enforcement {
            tracing::warn!(
                allowed_hosts = ?self.allowed_hosts,
                "RBAC enforcement is OFF (AUTONOMY_RBAC_ENFORCEMENT=0): every request is allowed \
                 whose Host is a loopback name or an --allowed-host"
            );
        }

        if let Some(fds) = open_file_limit() {
            // The database, the audit segments, the listener and the log need a few too.
            if fds < self.max_connections as u64 + 64 {
                tracing::warn!(
                    open_file_limit = fds,
                    max_connections = self.max_connections,
                    "the open-file limit is below --max-connections + 64: under a flood, \
                     accepting fails before the cap is reached; raise `ulimit -n` or lower \
                     --max-connections"
                );
            }
        }

        let monitor = Arc::new(AuditMonitor::new(Some(public_key.to_hex())));
        spawn_audit_check(audit_dir, public_key, monitor.clone())
            .context("cannot start: the background audit check")?;
        let mut config = ServerConfig::new(
            self.rbac_enforcement,
            match self.artifact_policy {
                Policy::Warn => ArtifactPolicy::Warn,
                Policy::Strict => ArtifactPolicy::Strict,
            },
        );
        config.allowed_hosts = allowed_hosts;
        config.limits = limits;
        config.refusal_budget = self.refusal_budget;
        config.refusal_tarpit =
            std::time::Duration::from_millis(self.refusal_tarpit_ms.min(60_000));
        config.promoter = (self.promoter == Switch::On).then(|| autonomy_server::PromoterConfig {
            interval: std::time::Duration::from_secs_f64(self.promoter_interval),
            ..Default::default()
        });
        let state = AppState::new(store.clone(), config).with_audit_monitor(monitor);
        let served = runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            println!("listening on http://{addr}");
            use std::io::Write;
            let _ = std::io::stdout().flush();
            tracing::info!(%addr, "control plane ready");
            let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
            let signalled = async move {
                shutdown_signal().await;
                let _ = stop_tx.send(true);
            };
            let server = autonomy_server::run(listener, state, signalled);
            let deadline = async move {
                let _ = stop_rx.wait_for(|stopping| *stopping).await;
                tokio::time::sleep(grace).await;
            };
            tokio::select! {
                served = server => served,
                () = deadline => {
                    tracing::warn!(
                        grace_seconds = grace.as_secs_f64(),
                        "in-flight requests did not finish in time; stopping anyway"
                    );
                    Ok(())
                }
            }
        });
        // In-flight requests are done; let the writer finish its queue and stop.
        let closed = store.close();
        runtime.shutdown_timeout(std::time::Duration::from_secs(5));
        served.context("the server failed")?;
        if let Err(e) = closed {
            tracing::error!(error = %e, "control plane stopped, but not cleanly");
            bail!("stopped, but not cleanly: {e}");
        }
        tracing::info!("control plane stopped cleanly");
        Ok(ExitCode::SUCCESS)
    }
}

/// What start-up prepared before the store opened.
struct Started {
    listener: std::net::TcpListener,
    addr: std::net::SocketAddr,
    audit_dir: PathBuf,
    public_key: autonomy_audit::PublicKey,
    grace: std::time::Duration,
    limits: Limits,
    allowed_hosts: Vec<String>,
}

/// This machine's name (for the default replica name), or `localhost`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Removes what a refused start created: the data dir and audit dir if they did not exist,
/// else the entries of the data dir that are new — but only once this start holds the data
/// dir's lock (before that, another CP may be creating them).
struct StartGuard {
    data_dir: PathBuf,
    audit_dir: PathBuf,
    data_existed: bool,
    audit_existed: bool,
    data_before: std::collections::HashSet<std::ffi::OsString>,
    locked: bool,
    armed: bool,
}

impl StartGuard {
    fn new(data_dir: &std::path::Path, audit_dir: &std::path::Path) -> Self {
        let entries = |d: &std::path::Path| {
            std::fs::read_dir(d)
                .map(|it| it.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default()
        };
        StartGuard {
            data_dir: data_dir.to_path_buf(),
            audit_dir: audit_dir.to_path_buf(),
            data_existed: data_dir.exists(),
            audit_existed: audit_dir.exists(),
            data_before: entries(data_dir),
            locked: false,
            armed: true,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if !self.audit_existed && self.locked {
            let _ = std::fs::remove_dir_all(&self.audit_dir);
        }
        if !self.data_existed {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        } else if self.locked {
            for e in std::fs::read_dir(&self.data_dir)
                .into_iter()
                .flatten()
                .flatten()
            {
                if !self.data_before.contains(&e.file_name()) {
                    let p = e.path();
                    let _ = if p.is_dir() {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                }
            }
        }
    }
}

/// Verifies the whole retained audit store once, on a thread of its own so start-up does not
/// wait (SPEC §5.8): the hash chain, and the signed checkpoints with our own key. The result
/// goes to `monitor` (health, metrics); damage is also logged at ERROR now and every
/// [`DAMAGE_LOG_EVERY`] until the CP stops, since only an operator can repair it.
fn spawn_audit_check(
    audit_dir: PathBuf,
    key: autonomy_audit::PublicKey,
    monitor: Arc<AuditMonitor>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("audit-check".into())
        .spawn(move || {
            let started = std::time::Instant::now();
            let damage = match autonomy_audit::verify_signed(&audit_dir, &key) {
                Ok(report) => {
                    tracing::info!(
                        events = report.chain.events,
                        checkpoints = report.checkpoints,
                        unsigned_tail = report.unsigned_tail,
                        seconds = started.elapsed().as_secs_f64(),
                        "audit store verified"
                    );
                    None
                }
                Err(e) => Some(damage_of(e)),
            };
            monitor.set(damage.clone());
            let Some(damage) = damage else {
                return;
            };
            loop {
                tracing::error!(
                    audit_dir = %audit_dir.display(),
                    segment = %damage.segment,
                    line = damage.line,
                    seq = %damage.seq.map_or_else(|| "unknown".to_string(), |s| s.to_string()),
                    problem = %damage.message,
                    "the audit store is damaged: run `autonomy audit verify` and restore it"
                );
                std::thread::sleep(DAMAGE_LOG_EVERY);
            }
        })
        .map(drop)
}

const DAMAGE_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Where an audit check failed, for health.
fn damage_of(e: autonomy_audit::AuditError) -> AuditDamage {
    use autonomy_audit::AuditError;
    match e {
        AuditError::Corrupt {
            segment,
            line,
            seq,
            what,
        } => AuditDamage {
            segment,
            line,
            seq,
            message: what,
        },
        AuditError::Checkpoint { line, seq, what } => AuditDamage {
            segment: autonomy_audit::CHECKPOINTS_FILE.to_string(),
            line,
            seq,
            message: what,
        },
        other => AuditDamage {
            segment: String::new(),
            line: 0,
            seq: None,
            message: other.to_string(),
        },
    }
}

/// The soft open-file limit (Linux `/proc/self/limits`); `None` where it cannot be read or
/// is unlimited.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: draining"),
                _ = int.recv() => tracing::info!("SIGINT: draining"),
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await
        }
    }
}

/// Logs go to stderr (stdout carries only the `listening on` line), as text or JSON lines;
/// `RUST_LOG` overrides the default level `info`.
pub(crate) fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}

/// The kernel's queue of connections not yet accepted. A fleet reconnecting at once (after a
/// restart) arrives faster than one accept loop takes it; `std`'s `bind` asks for 128, and
/// SYNs beyond the queue are dropped and retried by the devices 1, 3, 7 s later. The kernel
/// caps it at `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: i32 = 4096;

/// Binds `listen` (`host:port`, each resolved address tried in turn, as `std` does) with
/// `SO_REUSEADDR` and a backlog of [`LISTEN_BACKLOG`].
fn bind_listener(listen: &str) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::net::ToSocketAddrs;
    let mut last = None;
    for addr in listen.to_socket_addrs()? {
        let attempt = (|| {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            socket.set_reuse_address(true)?;
            socket.bind(&addr.into())?;
            socket.listen(LISTEN_BACKLOG)?;
            Ok::<_, std::io::Error>(std::net::TcpListener::from(socket))
        })();
        match attempt {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolved to nothing",
        )
    }))
}

//! PostgreSQL plumbing shared by the writers, the readers, the leader and the mirror: how a
//! database error becomes a [`StoreError`], the URL without its password, pools and
//! connections.

use std::time::Duration;

use autonomy_store::{StartupError, StoreError};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

/// How long a request waits for a pooled connection, and a new connection for PostgreSQL,
/// before it is answered 503.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The URL as it may be shown: any password replaced by `***` (SPEC §7: the password never
/// appears in logs, errors or `--help`).
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    // postgres://user:secret@host/db
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                let start = rest_start + colon + 1;
                out.replace_range(start..rest_start + at, "***");
            }
        }
    }
    // ?password=secret or key=value form: password=secret
    let lower = out.to_ascii_lowercase();
    if let Some(i) = lower.find("password=") {
        let start = i + "password=".len();
        let end = out[start..]
            .find(['&', ' '])
            .map_or(out.len(), |j| start + j);
        out.replace_range(start..end, "***");
    }
    out
}

/// The parsed connection settings of `url`, or why not (never echoing the password).
pub(crate) fn parse_url(url: &str) -> Result<tokio_postgres::Config, StartupError> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
        StartupError(format!(
            "--database-url {} is not a PostgreSQL URL: {e}",
            redact_url(url)
        ))
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    // A dead peer (a cut link) is noticed by the kernel within ~10 s, not hours.
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(5));
    config.keepalives_interval(Duration::from_secs(1));
    config.keepalives_retries(5);
    // Keepalives stop while a request waits unacknowledged (a query sent into a cut link):
    // without a user timeout that request hangs for the kernel's ~15 min of retransmissions.
    // With it the connection fails after 5 s and the request is answered 503.
    config.tcp_user_timeout(Duration::from_secs(5));
    // A replica frozen (SIGSTOP) or cut off inside a transaction would keep its row locks (the
    // chain head, the leader row: a new leader could not raise the epoch) until the server
    // noticed: end such a transaction after 5 s idle, and notice a dead client within ~10 s.
    let ours = "-c idle_in_transaction_session_timeout=5000 -c tcp_keepalives_idle=5 \
                -c tcp_keepalives_interval=1 -c tcp_keepalives_count=5";
    let options = match config.get_options() {
        Some(theirs) if !theirs.trim().is_empty() => format!("{theirs} {ours}"),
        _ => ours.to_string(),
    };
    config.options(options);
    config.application_name("autonomy");
    Ok(config)
}

pub(crate) fn pool(
    config: &tokio_postgres::Config,
    size: usize,
    name: &str,
) -> Result<Pool, StartupError> {
    let mgr = Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig {
            // A connection that broke is found out by its next query (then dropped); a
            // `Verified` recycle would cost a round trip on every checkout.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| StartupError(format!("cannot make the {name} pool: {e}")))
}

/// One unpooled connection, its driver spawned on the current runtime.
pub(crate) async fn connect(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "a PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// True for the errors a transaction is retried once for: serialization failures, deadlocks,
/// and a unique key another transaction took first (the retry sees it and answers 409).
pub(crate) fn is_retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::UNIQUE_VIOLATION
    )
}

/// Connection and availability faults are 503s (retry later); anything else is internal.
pub(crate) fn db_error(e: tokio_postgres::Error) -> StoreError {
    let unavailable = e.is_closed()
        || match e.code() {
            None => true, // I/O: the connection broke
            Some(c) => {
                let class = &c.code()[..2];
                // 08 connection, 53 resources, 57 operator intervention (shutdown, cancel),
                // 58 system error, 40 transaction rollback (after the retry), 25 a transaction
                // the server aborted.
                matches!(class, "08" | "53" | "57" | "58" | "40" | "25")
                    || *c == SqlState::READ_ONLY_SQL_TRANSACTION
            }
        };
    // "db error" alone says nothing: name the server's code and message.
    let what = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    };
    if unavailable {
        StoreError::Unavailable(format!("the database is unavailable: {what}"))
    } else {
        StoreError::Internal(format!("database error: {what}"))
    }
}

pub(crate) fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db_error(e),
        other => StoreError::Unavailable(format!("no database connection: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn a_password_never_survives_redaction() {
        assert_eq!(
            redact_url("postgres://app:s3cr3t@db:5432/autonomy"),
            "postgres://app:***@db:5432/autonomy"
        );
        assert_eq!(
            redact_url("postgres://app@db/autonomy?password=s3cr3t&sslmode=disable"),
            "postgres://app@db/autonomy?password=***&sslmode=disable"
        );
        assert_eq!(
            redact_url("host=db user=app password=s3cr3t dbname=x"),
            "host=db user=app password=*** dbname=x"
        );
        assert_eq!(
            redact_url("postgres://db/autonomy"),
            "postgres://db/autonomy"
        );
        assert!(!redact_url("postgres://a:p%40ss@h/d").contains("p%40ss"));
    }
}

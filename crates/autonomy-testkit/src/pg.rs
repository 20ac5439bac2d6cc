//! The PostgreSQL side of the test kit (SPEC §7's conformance run): one fresh database per
//! data dir in the throwaway cluster `AUTONOMY_TEST_DATABASE_URL` names. The only SQL outside
//! the store crates (invariants.sh #2 names this file): administering test databases with
//! `psql`, never the product's tables.

use std::path::Path;

use crate::process;

/// The env var that makes the black-box suite the PostgreSQL conformance run (SPEC §7): a
/// superuser URL of a throwaway cluster (`scripts/ci/postgres.sh start` prints one).
pub const TEST_DATABASE_ENV: &str = "AUTONOMY_TEST_DATABASE_URL";

/// Whether this test run is against PostgreSQL.
pub fn on_postgres() -> bool {
    std::env::var(TEST_DATABASE_ENV).is_ok_and(|v| !v.is_empty())
}

/// The database of `data_dir` in the test cluster, created on first use: one per data dir, so
/// a test that restarts a CP on the same dir finds its data again, and every test starts on
/// an empty database. `None` when the tests run on SQLite.
pub fn test_database_url(data_dir: &Path) -> Option<String> {
    let admin = std::env::var(TEST_DATABASE_ENV)
        .ok()
        .filter(|v| !v.is_empty())?;
    // The dir may not exist yet: its parent's canonical path and its own name.
    let key = match (data_dir.parent(), data_dir.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .unwrap_or_else(|_| parent.to_path_buf())
            .join(name),
        _ => data_dir.to_path_buf(),
    }
    .display()
    .to_string();
    let name = format!(
        "t_{}",
        &blake3::hash(key.as_bytes()).to_hex().as_str()[..20]
    );
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base);
    let created = process::command(Path::new("psql"))
        .args([admin.as_str(), "-qtAc"])
        .arg(format!(
            "SELECT 1 FROM pg_database WHERE datname = '{name}'"
        ))
        .output();
    let exists = created
        .as_ref()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "1");
    if !exists {
        let out = process::command(Path::new("psql"))
            .args([admin.as_str(), "-qtAc"])
            .arg(format!("CREATE DATABASE {name}"))
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "cannot create test database {name}: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("cannot run psql to create test database {name}: {e}"),
        }
    }
    Some(format!("{base}/{name}"))
}

//! Temporary directories: unique per process and call, removed on drop unless the
//! `AUTONOMY_TEST_KEEP` environment variable is set.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh, unique directory under the system temp dir
/// (`autonomy-test-<tag>-<pid>-<n>-<nanos>`), removed on drop unless `AUTONOMY_TEST_KEEP`
/// is set.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// Creates the directory.
    pub fn create(tag: &str) -> std::io::Result<TestDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!(
            "autonomy-test-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(TestDir { path })
    }

    /// Like [`TestDir::create`], shared; panics if the temp dir cannot be written (a test
    /// cannot run then).
    pub fn new(tag: &str) -> Arc<TestDir> {
        match TestDir::create(tag) {
            Ok(dir) => Arc::new(dir),
            Err(e) => panic!(
                "cannot create a test dir under {:?}: {e}",
                std::env::temp_dir()
            ),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("AUTONOMY_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirs_are_unique_and_removed_on_drop() {
        let a = TestDir::create("kit").unwrap();
        let b = TestDir::create("kit").unwrap();
        assert_ne!(a.path(), b.path());
        assert!(a.path().is_dir());
        let path = a.path().to_path_buf();
        std::fs::write(path.join("f"), "x").unwrap();
        drop(a);
        if std::env::var_os("AUTONOMY_TEST_KEEP").is_none() {
            assert!(!path.exists());
        }
    }
}

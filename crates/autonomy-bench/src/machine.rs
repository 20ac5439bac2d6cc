//! Facts about the machine the numbers came from: CPUs, memory, kernel, the filesystem of the
//! data dir, and the git commit of the code under test.

use std::path::Path;
use std::process::Command;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: Option<String>,
    pub mem_total_kib: Option<u64>,
    pub kernel: Option<String>,
    pub hostname: Option<String>,
    pub data_dir: String,
    pub filesystem: Option<Filesystem>,
    pub git_commit: Option<String>,
    pub git_dirty: Option<bool>,
    pub autonomy_bin: String,
    pub autonomy_version: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Filesystem {
    pub mount_point: String,
    pub fs_type: String,
    pub device: String,
    pub options: String,
}

impl Machine {
    pub fn probe(data_dir: &Path, autonomy_bin: &Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        });
        let nproc = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let mem_total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        });
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_string())
        };
        let git = |args: &[&str]| {
            Command::new("git")
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let canonical = data_dir
            .canonicalize()
            .unwrap_or_else(|_| data_dir.to_path_buf());
        let autonomy_version = Command::new(autonomy_bin)
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        Machine {
            nproc,
            cpu_model,
            mem_total_kib,
            kernel: read("/proc/sys/kernel/osrelease"),
            hostname: read("/proc/sys/kernel/hostname"),
            data_dir: canonical.display().to_string(),
            filesystem: filesystem_of(&canonical),
            git_commit: git(&["rev-parse", "HEAD"]),
            git_dirty: git(&["status", "--porcelain", "--untracked-files=no"])
                .map(|s| !s.is_empty()),
            autonomy_bin: autonomy_bin.display().to_string(),
            autonomy_version,
        }
    }

    /// One line: `AMD EPYC, 2 CPUs, 23.5 GiB, ext4 on /dev/vda, Linux 6.1, commit 8815b75`.
    pub fn line(&self) -> String {
        let mut parts = vec![
            self.cpu_model
                .clone()
                .unwrap_or_else(|| "unknown CPU".into()),
            format!("{} CPUs", self.nproc),
        ];
        if let Some(kib) = self.mem_total_kib {
            parts.push(format!("{:.1} GiB RAM", kib as f64 / 1024.0 / 1024.0));
        }
        if let Some(fs) = &self.filesystem {
            parts.push(format!("data on {} ({})", fs.fs_type, fs.device));
        }
        if let Some(k) = &self.kernel {
            parts.push(format!("Linux {k}"));
        }
        if let Some(c) = &self.git_commit {
            let short: String = c.chars().take(10).collect();
            let dirty = if self.git_dirty == Some(true) {
                " + local changes"
            } else {
                ""
            };
            parts.push(format!("commit {short}{dirty}"));
        }
        parts.join(", ")
    }
}

/// The mount holding `path`: the longest mount point that is a prefix of it.
fn filesystem_of(path: &Path) -> Option<Filesystem> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4).then(|| Filesystem {
                device: f[0].to_string(),
                mount_point: unescape(f[1]),
                fs_type: f[2].to_string(),
                options: f[3].to_string(),
            })
        })
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.len())
}

/// `/proc/mounts` escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_root_filesystem_at_least() {
        let fs = filesystem_of(Path::new("/proc/self")).unwrap();
        assert_eq!(fs.fs_type, "proc");
        assert!(filesystem_of(Path::new("/")).is_some());
    }
}

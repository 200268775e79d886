//! A child cgroup under the detected cgroup v2 root, for attaching eBPF
//! programs to a test's own processes only (never the root cgroup).

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use super::{privileged::require_cgroup2, unique_name};

/// A cgroup the test created; removed (with any sub-cgroups, after killing
/// leftover members) on drop.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
    children: Vec<PathBuf>,
}

impl TestCgroup {
    /// Creates `<cgroup2 root>/yurthub-test-<pid>-<n>`.
    pub fn new() -> Self {
        let root = require_cgroup2();
        let path = root.join(unique_name("yurthub-test"));
        fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("cannot create test cgroup {}: {e}", path.display()));
        Self {
            path,
            children: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates a sub-cgroup `name` and returns its path.
    pub fn child(&mut self, name: &str) -> PathBuf {
        let path = self.path.join(name);
        fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", path.display()));
        self.children.push(path.clone());
        path
    }
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
    }
}

/// Kills what is left in `path` and removes it, retrying while the kernel
/// finishes tearing down exited members (rmdir answers EBUSY until then).
fn remove(path: &Path) -> Result<(), String> {
    // cgroup.kill exists since Linux 5.14; on older kernels the helpers
    // already waited for their children.
    let _ = fs::write(path.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("cannot remove test cgroup {}: {e}", path.display()));
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Removes `path` after any sub-cgroups someone else made in it (the hub's
/// probe cgroup, a recreated kubepods), deepest first.
fn remove_tree(path: &Path) -> Result<(), String> {
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path())?;
            }
        }
    }
    remove(path)
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let mut errors = Vec::new();
        for child in self.children.iter().rev() {
            if let Err(e) = remove_tree(child) {
                errors.push(e);
            }
        }
        if let Err(e) = remove_tree(&self.path) {
            errors.push(e);
        }
        if !errors.is_empty() && !thread::panicking() {
            panic!("{}", errors.join("; "));
        }
    }
}

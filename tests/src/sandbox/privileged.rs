//! Preconditions of the privileged tests. Each one panics with the exact
//! missing prerequisite: a privileged test that cannot run must fail
//! loudly, never skip.

use std::{fs, path::PathBuf};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC, statfs},
    unistd::Uid,
};

/// Where the tests expect the bpf filesystem.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Panics unless the test runs as root (uid 0).
pub fn require_root() {
    assert!(
        Uid::effective().is_root(),
        "privileged test: must run as root (effective uid is {}); run `sudo -E cargo xtask test`",
        Uid::effective()
    );
}

/// Returns the cgroup v2 mount point (from /proc/self/mountinfo, never
/// assumed); panics if there is none.
pub fn require_cgroup2() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .expect("privileged test: cannot read /proc/self/mountinfo (is /proc mounted?)");
    let root = mountinfo.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let separator = fields.iter().position(|f| *f == "-")?;
        (fields.get(separator + 1) == Some(&"cgroup2")).then(|| PathBuf::from(fields[4]))
    });
    let root = root.expect(
        "privileged test: no cgroup v2 hierarchy is mounted (no cgroup2 line in /proc/self/mountinfo); \
         mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`",
    );
    let on_cgroup2 = statfs(&root).is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC);
    assert!(
        on_cgroup2,
        "privileged test: {} is listed as cgroup2 but is not",
        root.display()
    );
    root
}

/// Returns the bpffs mount point, mounting it if absent (as yurthub itself
/// would); panics if that is impossible.
pub fn require_bpffs() -> PathBuf {
    let path = PathBuf::from(BPFFS);
    let is_bpffs = |p: &PathBuf| statfs(p).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC);
    if !is_bpffs(&path) {
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("privileged test: cannot create {BPFFS}: {e}"));
        if let Err(e) = mount(
            Some("bpf"),
            &path,
            Some("bpf"),
            MsFlags::empty(),
            Some("mode=0700"),
        ) {
            // Another test may have mounted it meanwhile.
            assert!(
                is_bpffs(&path),
                "privileged test: no bpf filesystem at {BPFFS} and mounting one failed ({e}); \
                 mount it with `mount -t bpf bpf {BPFFS}`"
            );
        }
    }
    path
}

//! The two filesystems the redirect depends on: the cgroup v2 hierarchy the
//! programs attach to (found in `/proc/self/mountinfo`, never assumed: it is
//! `/sys/fs/cgroup` on unified hosts and `/sys/fs/cgroup/unified` on hybrid
//! ones) and the bpf filesystem that holds the pins (mounted if absent).
//!
//! Also answers "which cgroup is this process in, and is it alone there?",
//! which decides whether the daemon's cgroup can be exempted wholesale.

use std::{
    fs,
    io::{self, ErrorKind},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC, FsType, statfs},
};

use super::Error;

const MOUNTINFO: &str = "/proc/self/mountinfo";
const SELF_CGROUP: &str = "/proc/self/cgroup";

/// One line of `/proc/<pid>/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mount {
    /// Path inside the filesystem that is mounted (field 4).
    pub root: String,
    /// Where it is mounted (field 5), unescaped.
    pub mount_point: PathBuf,
    /// Filesystem type (first field after the ` - ` separator).
    pub fs_type: String,
}

/// Parses mountinfo text (see proc(5)); malformed lines are skipped.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let separator = fields.iter().position(|f| *f == "-")?;
            if separator < 6 {
                return None;
            }
            Some(Mount {
                root: unescape(fields[3]),
                mount_point: PathBuf::from(unescape(fields[4])),
                fs_type: (*fields.get(separator + 1)?).to_owned(),
            })
        })
        .collect()
}

/// Undoes the octal escapes (`\040` for a space, ...) mountinfo uses.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..=i + 3]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..=i + 3]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first cgroup2 mount in the given mounts.
pub(crate) fn find_cgroup2(mounts: &[Mount]) -> Option<&Mount> {
    mounts.iter().find(|m| m.fs_type == "cgroup2")
}

fn read(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

fn cgroup2_mount() -> Result<Mount, Error> {
    let mounts = parse_mountinfo(&read(Path::new(MOUNTINFO))?);
    find_cgroup2(&mounts).cloned().ok_or(Error::NoCgroup2)
}

/// Where the cgroup v2 hierarchy is mounted, from `/proc/self/mountinfo`.
pub fn detect_cgroup2_root() -> Result<PathBuf, Error> {
    cgroup2_mount().map(|m| m.mount_point)
}

fn fs_type(path: &Path) -> io::Result<FsType> {
    statfs(path)
        .map(|s| s.filesystem_type())
        .map_err(io::Error::from)
}

/// A directory of the cgroup v2 hierarchy and its id (the kernfs inode
/// number, which is what `bpf_get_current_cgroup_id()` returns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CgroupDir {
    pub path: PathBuf,
    pub id: u64,
}

/// Checks that `path` is a directory on cgroup2 and returns its id.
pub(crate) fn cgroup_dir(path: &Path) -> Result<CgroupDir, Error> {
    let metadata = fs::metadata(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    let on_cgroup2 = fs_type(path).is_ok_and(|t| t == CGROUP2_SUPER_MAGIC);
    if !metadata.is_dir() || !on_cgroup2 {
        return Err(Error::NotCgroup2 {
            path: path.to_owned(),
        });
    }
    Ok(CgroupDir {
        path: path.to_owned(),
        id: metadata.ino(),
    })
}

/// Whether a cgroup directory name is one the kubelet gives the parent of
/// all pod cgroups: `kubepods` (cgroupfs driver), `kubepods.slice` (systemd
/// driver) or `<root>-kubepods.slice` (systemd driver with a
/// `--cgroup-root`, e.g. `kubelet-kubepods.slice`).
pub(crate) fn is_pods_parent_name(name: &str) -> bool {
    name == "kubepods" || name == "kubepods.slice" || name.ends_with("-kubepods.slice")
}

/// The pods' parent cgroups directly under `search`, sorted by path.
pub(crate) fn pods_parents(search: &Path) -> Vec<CgroupDir> {
    let Ok(entries) = fs::read_dir(search) else {
        return Vec::new();
    };
    let mut found: Vec<CgroupDir> = entries
        .flatten()
        .filter(|e| is_pods_parent_name(&e.file_name().to_string_lossy()))
        .filter_map(|e| cgroup_dir(&e.path()).ok())
        .collect();
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

/// Where the programs attach: the pods' parent cgroups under `search` when
/// there are any (so they run before programs attached higher up, such as a
/// CNI's socket load balancer at the root), else `search` itself.
pub(crate) fn attach_points(search: &CgroupDir) -> Vec<CgroupDir> {
    let found = pods_parents(&search.path);
    if found.is_empty() {
        vec![search.clone()]
    } else {
        found
    }
}

/// `dir` and its ancestors up to the cgroup v2 mount point, nearest first.
pub(crate) fn with_ancestors(dir: &Path) -> Vec<PathBuf> {
    let mount = cgroup2_mount().map(|m| m.mount_point).ok();
    let mut out = Vec::new();
    let mut current = Some(dir);
    while let Some(path) = current {
        out.push(path.to_owned());
        if mount.as_deref() == Some(path) || out.len() > 64 {
            break;
        }
        current = path.parent();
        if current.is_some_and(|p| fs_type(p).map_or(true, |t| t != CGROUP2_SUPER_MAGIC)) {
            break;
        }
    }
    out
}

/// The cgroup this process belongs to in the v2 hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OwnCgroup {
    pub dir: CgroupDir,
    /// Other processes are members of the same cgroup. Exempting it would
    /// exempt them too (e.g. on hybrid hosts where the runtime leaves every
    /// container in one v2 cgroup), so the daemon then relies on marking its
    /// own sockets only.
    pub shared: bool,
}

/// Parses the v2 line (`0::<path>`) of `/proc/<pid>/cgroup`.
pub(crate) fn parse_v2_membership(text: &str) -> Option<&str> {
    text.lines().find_map(|line| line.strip_prefix("0::"))
}

/// Finds this process's v2 cgroup directory and whether it is shared.
pub(crate) fn own_cgroup() -> Result<OwnCgroup, Error> {
    let mount = cgroup2_mount()?;
    let membership = read(Path::new(SELF_CGROUP))?;
    let relative = parse_v2_membership(&membership).ok_or(Error::NoCgroup2)?;
    // The mount may expose a subtree (mount root != "/"): strip that prefix.
    let relative = relative
        .strip_prefix(mount.root.trim_end_matches('/'))
        .unwrap_or(relative);
    let path = mount.mount_point.join(relative.trim_start_matches('/'));
    let dir = cgroup_dir(&path)?;
    let procs = read(&path.join("cgroup.procs"))?;
    let me = std::process::id().to_string();
    let shared = procs.lines().any(|pid| !pid.is_empty() && pid != me);
    Ok(OwnCgroup { dir, shared })
}

/// Makes sure `path` is a mounted bpf filesystem, mounting one if needed.
/// Returns whether this call mounted it. An existing directory on another
/// filesystem is mounted over only if it is empty, so a mistyped path can
/// never hide someone's files.
pub(crate) fn ensure_bpffs(path: &Path) -> Result<bool, Error> {
    if let Ok(kind) = fs_type(path) {
        if kind == BPF_FS_MAGIC {
            return Ok(false);
        }
        let mut entries = fs::read_dir(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        if entries.next().is_some() {
            return Err(Error::NotBpffs {
                path: path.to_owned(),
            });
        }
    } else {
        fs::create_dir_all(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
    }
    mount(
        Some("bpf"),
        path,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .map_err(|errno| Error::MountBpffs {
        path: path.to_owned(),
        source: io::Error::from(errno),
    })?;
    Ok(true)
}

/// Whether `path` is on a bpf filesystem (false when it does not exist).
pub(crate) fn is_bpffs(path: &Path) -> bool {
    fs_type(path).is_ok_and(|t| t == BPF_FS_MAGIC)
}

/// Removes `path` if it is an empty directory; absent is fine.
pub(crate) fn remove_empty_dir(path: &Path) -> Result<(), Error> {
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::DirectoryNotEmpty => {
            Ok(())
        }
        Err(source) => Err(Error::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
24 29 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 24 0:40 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:9 - bpf bpf rw,mode=700
";

    #[test]
    fn finds_cgroup2_on_hybrid_host() {
        let mounts = parse_mountinfo(HYBRID);
        assert_eq!(mounts.len(), 5);
        let cgroup2 = find_cgroup2(&mounts).expect("cgroup2 mount");
        assert_eq!(cgroup2.mount_point, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(cgroup2.root, "/");
    }

    #[test]
    fn finds_cgroup2_with_optional_fields_and_escapes() {
        let text = "30 23 0:26 /kubepods /sys/fs/my\\040cgroup rw,nosuid shared:4 master:1 - cgroup2 cgroup2 rw,nsdelegate\n";
        let mounts = parse_mountinfo(text);
        let cgroup2 = find_cgroup2(&mounts).expect("cgroup2 mount");
        assert_eq!(cgroup2.mount_point, Path::new("/sys/fs/my cgroup"));
        assert_eq!(cgroup2.root, "/kubepods");
    }

    #[test]
    fn no_cgroup2_and_malformed_lines() {
        let text = "garbage\n1 2 3\n32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 1);
        assert!(find_cgroup2(&mounts).is_none());
    }

    #[test]
    fn v2_membership_line() {
        let text = "9:name=systemd:/\n4:memory:/x\n0::/kubepods/pod1/abc\n";
        assert_eq!(parse_v2_membership(text), Some("/kubepods/pod1/abc"));
        assert_eq!(parse_v2_membership("4:memory:/x\n"), None);
    }

    #[test]
    fn pods_parent_names_of_both_drivers() {
        for name in ["kubepods", "kubepods.slice", "kubelet-kubepods.slice"] {
            assert!(is_pods_parent_name(name), "{name}");
        }
        for name in [
            "kubepods-besteffort.slice",
            "system.slice",
            "kubepods2",
            "yurthub-probe",
        ] {
            assert!(!is_pods_parent_name(name), "{name}");
        }
    }

    #[test]
    fn unescape_octal() {
        assert_eq!(unescape("a\\040b\\011c"), "a b\tc");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
        assert_eq!(unescape("back\\\\slash"), "back\\\\slash");
    }
}

//! The `bpf(2)` commands on cgroup links and programs that aya 0.14 keeps
//! private: open a pinned object (`BPF_OBJ_GET`), read a link's info
//! (`BPF_OBJ_GET_INFO_BY_FD`), swap the program behind a link atomically
//! (`BPF_LINK_UPDATE`), create a cgroup link at a chosen place in the chain
//! (`BPF_LINK_CREATE` with `BPF_F_BEFORE`), pin it (`BPF_OBJ_PIN`), and read
//! which programs run for a cgroup (`BPF_PROG_QUERY`, `BPF_PROG_GET_FD_BY_ID`).
//! aya only offers link update and ordering for XDP and TC links and exposes
//! neither the fd nor the cgroup of an `FdLink`.
//!
//! This is the only `unsafe` the daemon side needs; it lives here, next to the
//! other kernel ABI definitions, so that the daemon crate can
//! `#![forbid(unsafe_code)]`. Each attr struct below is the prefix of
//! `union bpf_attr` used by its command: the kernel accepts a shorter attr as
//! long as it is at least as long as the fields the command reads.

use core::ffi::{c_long, c_uint, c_void};
use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

const BPF_OBJ_GET: c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: c_long = 15;
const BPF_LINK_UPDATE: c_long = 29;

/// `BPF_LINK_TYPE_CGROUP` from `enum bpf_link_type`.
pub const BPF_LINK_TYPE_CGROUP: u32 = 3;

/// The `enum bpf_attach_type` values of the four hooks yurthub uses.
pub mod attach_type {
    pub const CGROUP_INET4_CONNECT: u32 = 10;
    pub const CGROUP_INET6_CONNECT: u32 = 11;
    pub const CGROUP_INET4_GETPEERNAME: u32 = 29;
    pub const CGROUP_INET6_GETPEERNAME: u32 = 30;
}

#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

#[repr(C)]
struct InfoByFdAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// Prefix of `struct bpf_link_info` up to the cgroup member of its union
/// (the union is 8-byte aligned, hence `_pad`).
#[repr(C)]
#[derive(Default)]
struct RawLinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    cgroup_id: u64,
    attach_type: u32,
    _pad2: u32,
}

const _: () = {
    assert!(core::mem::size_of::<ObjGetAttr>() == 16);
    assert!(core::mem::size_of::<InfoByFdAttr>() == 16);
    assert!(core::mem::size_of::<LinkUpdateAttr>() == 16);
    assert!(core::mem::size_of::<RawLinkInfo>() == 32);
};

/// What the kernel says about a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    /// Valid when `link_type == BPF_LINK_TYPE_CGROUP`.
    pub cgroup_id: u64,
    /// Valid when `link_type == BPF_LINK_TYPE_CGROUP`.
    pub attach_type: u32,
}

fn sys_bpf<T>(cmd: c_long, attr: &mut T) -> io::Result<i64> {
    let size = c_uint::try_from(core::mem::size_of::<T>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `attr` is a live, initialised #[repr(C)] struct of `size` bytes
    // laid out as the prefix of `union bpf_attr` for `cmd`; the kernel reads
    // at most `size` bytes from it and writes only through pointers it holds,
    // which the callers keep alive for the duration of the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            core::ptr::from_mut(attr).cast::<c_void>(),
            size,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    // File descriptors are never negative.
    fd.as_raw_fd().unsigned_abs()
}

/// Opens the object pinned at `path` (`BPF_OBJ_GET`).
pub fn open_pinned(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr)?;
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: on success BPF_OBJ_GET returns a new file descriptor that
    // nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads the kernel's view of a link (`BPF_OBJ_GET_INFO_BY_FD`).
pub fn link_info(link: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    let mut info = RawLinkInfo::default();
    let mut attr = InfoByFdAttr {
        bpf_fd: fd_u32(link),
        info_len: core::mem::size_of::<RawLinkInfo>() as u32,
        info: core::ptr::from_mut(&mut info) as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(LinkInfo {
        link_type: info.link_type,
        id: info.id,
        prog_id: info.prog_id,
        cgroup_id: info.cgroup_id,
        attach_type: info.attach_type,
    })
}

/// Atomically replaces the program behind `link` with `new_program`
/// (`BPF_LINK_UPDATE`): no instant without a program, no second attachment.
pub fn update_program(link: BorrowedFd<'_>, new_program: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: fd_u32(link),
        new_prog_fd: fd_u32(new_program),
        flags: 0,
        old_prog_fd: 0,
    };
    sys_bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

const BPF_LINK_DETACH: c_long = 34;

/// `union bpf_attr`'s `link_detach` member.
#[repr(C)]
struct LinkDetachAttr {
    link_fd: u32,
}

/// Detaches `link` from its hook now (`BPF_LINK_DETACH`, Linux 5.9+),
/// whoever else still references it. Closing the last fd is not enough to
/// know it is gone: a pin's reference is dropped when bpffs frees its
/// inode, after an RCU grace period.
pub fn detach_link(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkDetachAttr {
        link_fd: fd_u32(link),
    };
    sys_bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

// === attaching in order, pinning, and reading the chain ===

use std::{vec, vec::Vec};

const BPF_PROG_QUERY: c_long = 16;
const BPF_PROG_GET_FD_BY_ID: c_long = 13;
const BPF_OBJ_PIN: c_long = 6;
const BPF_LINK_CREATE: c_long = 28;

/// `BPF_F_QUERY_EFFECTIVE`: the programs that run for the cgroup (its own
/// and its ancestors'), in the order they run.
const BPF_F_QUERY_EFFECTIVE: u32 = 1 << 0;
/// `BPF_F_BEFORE` of the kernel's multi-program API; with no relative
/// program it means "before every program attached there".
const BPF_F_BEFORE: u32 = 1 << 3;

/// Prefix of `link_create`: the cgroup member of its union holds the
/// multi-program relative reference and revision (8-byte aligned).
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    _pad: u32,
    expected_revision: u64,
}

/// Prefix of the `query` attr up to `prog_cnt`.
#[repr(C)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

#[repr(C)]
struct GetFdByIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// Prefix of `struct bpf_prog_info` up to `name`.
#[repr(C)]
#[derive(Default)]
struct RawProgInfo {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
}

const _: () = {
    assert!(core::mem::size_of::<LinkCreateAttr>() == 32);
    assert!(core::mem::size_of::<QueryAttr>() == 32);
    assert!(core::mem::size_of::<RawProgInfo>() == 80);
};

/// Where a new cgroup link goes among the programs already attached to the
/// same cgroup for the same hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Before all of them (`BPF_F_BEFORE`, Linux 6.16+ multi-program API).
    First,
    /// After all of them (plain `BPF_LINK_CREATE`, any kernel with links).
    Last,
}

/// Attaches `program` to `cgroup` for `attach_type` through a new cgroup
/// `bpf_link` (`BPF_LINK_CREATE`), at `order`. Kernels without the
/// multi-program API for cgroups reject [`Order::First`] with `EINVAL`.
pub fn create_cgroup_link(
    program: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
    order: Order,
) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: fd_u32(program),
        target_fd: fd_u32(cgroup),
        attach_type,
        flags: match order {
            Order::First => BPF_F_BEFORE,
            Order::Last => 0,
        },
        relative_fd: 0,
        _pad: 0,
        expected_revision: 0,
    };
    let fd = sys_bpf(BPF_LINK_CREATE, &mut attr)?;
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: on success BPF_LINK_CREATE returns a new fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Pins a bpf object (`BPF_OBJ_PIN`) at `path` on a bpf filesystem.
pub fn pin(object: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd_u32(object),
        file_flags: 0,
    };
    sys_bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// The ids of the programs for `attach_type` on `cgroup`, in the order they
/// run: with `effective`, every program that runs for a socket of this
/// cgroup (its own first, then its ancestors'); without, only the programs
/// attached to this cgroup itself.
pub fn query_cgroup(
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
    effective: bool,
) -> io::Result<Vec<u32>> {
    // The kernel caps a cgroup's effective array at BPF_CGROUP_MAX_PROGS (64)
    // per hook and level; ask again with the count it reports if needed.
    let mut ids = vec![0u32; 64];
    for _ in 0..4 {
        let capacity =
            u32::try_from(ids.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut attr = QueryAttr {
            target_fd: fd_u32(cgroup),
            attach_type,
            query_flags: if effective { BPF_F_QUERY_EFFECTIVE } else { 0 },
            attach_flags: 0,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: capacity,
            _pad: 0,
        };
        match sys_bpf(BPF_PROG_QUERY, &mut attr) {
            Ok(_) => {
                ids.truncate(attr.prog_cnt as usize);
                return Ok(ids);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                ids = vec![0u32; (attr.prog_cnt as usize).max(ids.len() * 2)];
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from_raw_os_error(libc::ENOSPC))
}

/// What the kernel says about a loaded program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgInfo {
    pub id: u32,
    pub prog_type: u32,
    /// The name given at load time (at most 15 bytes).
    pub name: std::string::String,
}

/// Looks a program up by id (`BPF_PROG_GET_FD_BY_ID` + info).
pub fn prog_info(id: u32) -> io::Result<ProgInfo> {
    let mut attr = GetFdByIdAttr {
        id,
        next_id: 0,
        open_flags: 0,
    };
    let fd = sys_bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?;
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: on success the command returns a new fd nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut info = RawProgInfo::default();
    let mut attr = InfoByFdAttr {
        bpf_fd: fd_u32(std::os::fd::AsFd::as_fd(&fd)),
        info_len: core::mem::size_of::<RawProgInfo>() as u32,
        info: core::ptr::from_mut(&mut info) as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let len = info.name.iter().position(|b| *b == 0).unwrap_or(16);
    Ok(ProgInfo {
        id: info.id,
        prog_type: info.prog_type,
        name: std::string::String::from_utf8_lossy(&info.name[..len]).into_owned(),
    })
}

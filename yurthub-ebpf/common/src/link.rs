//! The three `bpf(2)` commands on pinned cgroup links that aya 0.14 keeps
//! private: open a pinned object (`BPF_OBJ_GET`), read a link's info
//! (`BPF_OBJ_GET_INFO_BY_FD`) and swap the program behind a link atomically
//! (`BPF_LINK_UPDATE`). aya only offers link update for XDP and TC links and
//! exposes neither the fd nor the cgroup of an `FdLink`.
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

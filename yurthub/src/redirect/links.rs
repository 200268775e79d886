//! Cgroup attachments as pinned `bpf_link`s, one per program under
//! `<pin dir>/links/<program>`.
//!
//! - First install: attach through a `bpf_link` (always multi-attach: it
//!   never overrides or detaches another agent's program, e.g. a CNI's
//!   socket LB) and pin the link.
//! - A later daemon (upgrade, restart, crash recovery) opens the pinned link
//!   and swaps its program in place with `BPF_LINK_UPDATE`: no window without
//!   redirect and never a second attachment.
//! - A pinned link attached to another cgroup (the configured cgroup changed)
//!   is replaced: the new link is pinned under a temporary name and renamed
//!   over the old pin, and the old link detaches when its last fd closes.
//! - Detaching is unpinning plus closing the fd; the kernel detaches a link
//!   when nothing references it any more.

use std::{
    fs,
    io::ErrorKind,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink},
    util::KernelVersion,
};
use yurthub_ebpf_common::link::{self as sys, BPF_LINK_TYPE_CGROUP, LinkInfo};

use super::{Error, cgroup::CgroupDir};

/// A program attached to the cgroup through a pinned link we hold open.
#[derive(Debug)]
pub(crate) struct Attachment {
    pub program: &'static str,
    pub pin: PathBuf,
    pub adopted: bool,
    pub info: LinkInfo,
    fd: OwnedFd,
}

impl Attachment {
    /// Unpins the link and closes our fd: the kernel detaches it unless some
    /// other process still holds it open.
    pub(crate) fn detach(self) -> Result<(), Error> {
        remove_pin(&self.pin)?;
        drop(self.fd);
        Ok(())
    }
}

fn link_error(pin: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::from_io(format!("cgroup link {}", pin.display()), source)
}

/// Attaches `program` (already loaded) to `cgroup` for `attach_type`, or
/// adopts the link pinned at `pin` by swapping its program.
pub(crate) fn attach_or_adopt(
    program: &mut CgroupSockAddr,
    name: &'static str,
    attach_type: u32,
    cgroup: &CgroupDir,
    pin: &Path,
) -> Result<Attachment, Error> {
    // Two attempts: if another daemon pins the same path between our check
    // and our pin, we drop our link and adopt theirs.
    for _ in 0..2 {
        match sys::open_pinned(pin) {
            Ok(fd) => {
                let info = sys::link_info(fd.as_fd()).map_err(link_error(pin))?;
                if info.link_type == BPF_LINK_TYPE_CGROUP
                    && info.attach_type == attach_type
                    && info.cgroup_id == cgroup.id
                {
                    let new_program = program.fd().map_err(|source| Error::Program {
                        name,
                        source: Box::new(source),
                    })?;
                    sys::update_program(fd.as_fd(), new_program.as_fd())
                        .map_err(link_error(pin))?;
                    let info = sys::link_info(fd.as_fd()).map_err(link_error(pin))?;
                    return Ok(Attachment {
                        program: name,
                        pin: pin.to_owned(),
                        adopted: true,
                        info,
                        fd,
                    });
                }
                // Stale pin (other cgroup, or not our kind of link): attach
                // anew and atomically take over the pin path.
                // bpffs refuses names containing '.', hence no extension.
                let tmp = pin.with_file_name(format!("{name}_new"));
                remove_pin(&tmp)?;
                let fresh = attach(program, name, cgroup)?;
                fresh.pin(&tmp).map_err(|e| pin_error(&tmp, e))?;
                fs::rename(&tmp, pin).map_err(link_error(pin))?;
                drop(fd);
                return open_attachment(name, pin, false);
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let fresh = attach(program, name, cgroup)?;
                match fresh.pin(pin) {
                    Ok(pinned) => {
                        drop(pinned);
                        return open_attachment(name, pin, false);
                    }
                    Err(aya::pin::PinError::SyscallError(e))
                        if e.io_error.kind() == ErrorKind::AlreadyExists =>
                    {
                        // Lost a race with another daemon; our unpinned link
                        // was dropped (detached) by `pin`'s error path.
                        continue;
                    }
                    Err(e) => return Err(pin_error(pin, e)),
                }
            }
            Err(e) => return Err(link_error(pin)(e)),
        }
    }
    Err(Error::from_io(
        format!("cgroup link {}", pin.display()),
        std::io::Error::from(ErrorKind::AlreadyExists),
    ))
}

fn attach(
    program: &mut CgroupSockAddr,
    name: &'static str,
    cgroup: &CgroupDir,
) -> Result<FdLink, Error> {
    let dir = fs::File::open(&cgroup.path).map_err(|source| Error::Io {
        path: cgroup.path.clone(),
        source,
    })?;
    // Before Linux 5.7 aya would fall back to BPF_PROG_ATTACH, which cannot
    // be pinned, adopted or replaced atomically (and `Single` would then be
    // exclusive): refuse before attaching anything.
    let has_cgroup_links =
        KernelVersion::current().is_ok_and(|current| current >= KernelVersion::new(5, 7, 0));
    if !has_cgroup_links {
        return Err(Error::KernelTooOld {
            missing: "cgroup bpf_link (Linux 5.7), needed to pin, adopt and atomically replace the programs",
        });
    }
    let program_error = |source| Error::Program {
        name,
        source: Box::new(source),
    };
    // A cgroup bpf_link is always attached in multi mode, next to other
    // agents' programs; BPF_LINK_CREATE rejects any attach flag, so the
    // mode must be `Single` (flags 0), not `AllowMultiple`.
    let id = program
        .attach(&dir, CgroupAttachMode::Single)
        .map_err(program_error)?;
    let link = program.take_link(id).map_err(program_error)?;
    FdLink::try_from(link).map_err(|_| Error::KernelTooOld {
        missing: "cgroup bpf_link (Linux 5.7), needed to pin, adopt and atomically replace the programs",
    })
}

fn open_attachment(name: &'static str, pin: &Path, adopted: bool) -> Result<Attachment, Error> {
    let fd = sys::open_pinned(pin).map_err(link_error(pin))?;
    let info = sys::link_info(fd.as_fd()).map_err(link_error(pin))?;
    Ok(Attachment {
        program: name,
        pin: pin.to_owned(),
        adopted,
        info,
        fd,
    })
}

fn pin_error(pin: &Path, error: aya::pin::PinError) -> Error {
    let operation = format!("pinning {}", pin.display());
    match error {
        aya::pin::PinError::SyscallError(e) => Error::from_io(operation, e.io_error),
        other => Error::Kernel {
            operation,
            source: std::io::Error::other(other.to_string()),
        },
    }
}

/// Removes a pin file; absent is fine.
pub(crate) fn remove_pin(pin: &Path) -> Result<(), Error> {
    match fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::from_io(
            format!("removing pin {}", pin.display()),
            source,
        )),
    }
}

//! Cgroup attachments as pinned `bpf_link`s: one per program and attach
//! point, pinned as `<pin dir>/links/<program>_<cgroup id>`.
//!
//! [`reconcile`] makes the pins match the wanted attach points:
//! - a pinned link on a wanted cgroup and hook is adopted: its program is
//!   swapped in place with `BPF_LINK_UPDATE` (upgrade, restart, crash
//!   recovery): no window without redirect and never a second attachment;
//! - a missing one is created, first in that cgroup's chain where the kernel
//!   offers it (`BPF_F_BEFORE`, Linux 6.16+), else last. Links are always
//!   multi-attach: they never override or detach another agent's program;
//! - pins on cgroups no longer wanted (the pods' cgroup was recreated, the
//!   configuration changed) are removed after the new links exist, so moving
//!   never leaves a gap. The kernel detaches a link when nothing references
//!   it any more; a clean shutdown detaches its links at once
//!   (`BPF_LINK_DETACH`), so none is left attached when it returns.

use std::{
    fs,
    io::ErrorKind,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::util::KernelVersion;
use yurthub_ebpf_common::link::{self as sys, BPF_LINK_TYPE_CGROUP, LinkInfo, Order};

use super::{Error, cgroup::CgroupDir};

/// A loaded program, ready to attach.
#[derive(Debug)]
pub(crate) struct Program {
    pub name: &'static str,
    pub attach_type: u32,
    pub id: u32,
    pub fd: OwnedFd,
}

/// A program attached to a cgroup through a pinned link we hold open.
#[derive(Debug)]
pub(crate) struct Attachment {
    pub program: &'static str,
    pub cgroup: PathBuf,
    pub pin: PathBuf,
    /// Took over a link pinned by an earlier daemon.
    pub adopted: bool,
    /// Where a link created by this daemon went in the cgroup's own chain
    /// (`None` for adopted links: wherever the earlier daemon put it).
    pub order: Option<Order>,
    pub info: LinkInfo,
    fd: OwnedFd,
}

impl Attachment {
    /// Detaches the link now, then unpins it and closes our fd. Without the
    /// explicit detach (a kernel before 5.9) the kernel detaches it once
    /// nothing references it, which for a pin is after an RCU grace period.
    pub(crate) fn detach(self) -> Result<(), Error> {
        if let Err(e) = sys::detach_link(self.fd.as_fd()) {
            tracing::debug!(pin = %self.pin.display(), error = %e, "BPF_LINK_DETACH failed; the link goes when its last reference does");
        }
        remove_pin(&self.pin)?;
        drop(self.fd);
        Ok(())
    }
}

fn link_error(pin: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::from_io(format!("cgroup link {}", pin.display()), source)
}

const NO_LINKS: &str =
    "cgroup bpf_link (Linux 5.7), needed to pin, adopt and atomically replace the programs";

struct Pinned {
    pin: PathBuf,
    fd: OwnedFd,
    info: Option<LinkInfo>,
}

fn pinned_links(links_dir: &Path) -> Result<Vec<Pinned>, Error> {
    let entries = match fs::read_dir(links_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Io {
                path: links_dir.to_owned(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let pin = entry.path();
        // Not a link (or unreadable): left to cleanup.
        if let Ok(fd) = sys::open_pinned(&pin) {
            // A link whose cgroup is gone reports no usable info: stale.
            let info = sys::link_info(fd.as_fd())
                .ok()
                .filter(|i| i.link_type == BPF_LINK_TYPE_CGROUP);
            out.push(Pinned { pin, fd, info });
        }
    }
    Ok(out)
}

/// Makes the pinned links be exactly one per program and attach point, and
/// returns them (see the module docs). `current` are the attachments this
/// daemon holds (their `adopted` flags carry over).
pub(crate) fn reconcile(
    links_dir: &Path,
    programs: &[Program],
    targets: &[CgroupDir],
    current: Vec<Attachment>,
) -> Result<Vec<Attachment>, Error> {
    if !KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 7, 0)) {
        return Err(Error::KernelTooOld { missing: NO_LINKS });
    }
    let mut pinned = pinned_links(links_dir)?;
    let mut wanted = Vec::new();
    for target in targets {
        for program in programs {
            let found = pinned.iter().position(|p| {
                p.info.is_some_and(|i| {
                    i.attach_type == program.attach_type && i.cgroup_id == target.id
                })
            });
            let attachment = match found {
                Some(index) => {
                    let Pinned { pin, fd, info } = pinned.swap_remove(index);
                    let before = info.map(|i| i.prog_id);
                    if before != Some(program.id) {
                        sys::update_program(fd.as_fd(), program.fd.as_fd())
                            .map_err(link_error(&pin))?;
                    }
                    let info = sys::link_info(fd.as_fd()).map_err(link_error(&pin))?;
                    let held = current.iter().find(|a| a.pin == pin);
                    Attachment {
                        program: program.name,
                        cgroup: target.path.clone(),
                        adopted: held.is_none_or(|a| a.adopted),
                        order: held.and_then(|a| a.order),
                        pin,
                        info,
                        fd,
                    }
                }
                None => attach(links_dir, program, target)?,
            };
            wanted.push(attachment);
        }
    }
    // Only now that every wanted link exists: drop the others.
    for stale in pinned {
        remove_pin(&stale.pin)?;
    }
    drop(current);
    Ok(wanted)
}

fn attach(links_dir: &Path, program: &Program, target: &CgroupDir) -> Result<Attachment, Error> {
    let dir = fs::File::open(&target.path).map_err(|source| Error::Io {
        path: target.path.clone(),
        source,
    })?;
    let operation = || format!("attaching {} to {}", program.name, target.path.display());
    let create = |order| {
        sys::create_cgroup_link(program.fd.as_fd(), dir.as_fd(), program.attach_type, order)
    };
    // First in the cgroup's own chain where the kernel has the multi-program
    // API for cgroups; older kernels refuse the flag with EINVAL.
    let (fd, order) = match create(Order::First) {
        Ok(fd) => (fd, Order::First),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (
            create(Order::Last).map_err(|e| Error::from_io(operation(), e))?,
            Order::Last,
        ),
        Err(e) => return Err(Error::from_io(operation(), e)),
    };
    let pin = links_dir.join(format!("{}_{}", program.name, target.id));
    // A pin of that name that did not match (a dead link): replace it.
    remove_pin(&pin)?;
    sys::pin(fd.as_fd(), &pin).map_err(link_error(&pin))?;
    let info = sys::link_info(fd.as_fd()).map_err(link_error(&pin))?;
    Ok(Attachment {
        program: program.name,
        cgroup: target.path.clone(),
        pin,
        adopted: false,
        order: Some(order),
        info,
        fd,
    })
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

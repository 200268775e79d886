//! Errors of the redirect: each names what is missing and what to do; the
//! `source` chain carries the kernel's answer.

use std::{io, net::IpAddr, path::PathBuf};

use aya::programs::ProgramError;

/// Everything that can go wrong. Messages name what is missing and what to
/// do; the `source` chain carries the kernel's answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid redirect configuration: {0}")]
    InvalidConfig(String),
    #[error(
        "no cgroup v2 hierarchy is mounted (no cgroup2 entry in /proc/self/mountinfo); \
         mount one (e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`) or run with --redirect-mode=none"
    )]
    NoCgroup2,
    #[error(
        "{path} is not a directory of the cgroup v2 hierarchy; \
         pass a cgroup2 directory or leave the cgroup unset to use the detected root"
    )]
    NotCgroup2 { path: PathBuf },
    #[error(
        "{path} is not a bpf filesystem and is not empty, so a bpffs cannot be mounted there; \
         mount one (`mount -t bpf bpf {path}`) or choose another bpffs path"
    )]
    NotBpffs { path: PathBuf },
    #[error(
        "no bpf filesystem at {path} and mounting one failed; \
         mount it (`mount -t bpf bpf {path}`) or, in a container, mount the host's /sys/fs/bpf"
    )]
    MountBpffs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "permission denied while {operation}: yurthub needs root or CAP_BPF, CAP_NET_ADMIN, \
         CAP_SYS_ADMIN (and CAP_PERFMON for logs); run it privileged or with --redirect-mode=none"
    )]
    PermissionDenied {
        operation: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "the running kernel is too old: it lacks {missing}; upgrade it or run with --redirect-mode=none"
    )]
    KernelTooOld { missing: &'static str },
    #[error("loading the redirect eBPF object into the kernel failed")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("eBPF program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("eBPF object has no {name} (build mismatch between yurthub and yurthub-ebpf)")]
    MissingObject { name: &'static str },
    #[error("eBPF map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("too many VIPs: at most {max} are supported")]
    TooManyVips { max: u32 },
    #[error("{operation}")]
    Kernel {
        operation: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "network link {link} not found (the hub address goes on an existing link; none is created)"
    )]
    LinkNotFound { link: String },
    #[error("{operation} hub address {address} on {link}")]
    Address {
        operation: &'static str,
        address: IpAddr,
        link: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("opening a netlink route socket")]
    Netlink(#[source] io::Error),
}

impl Error {
    /// Wraps a kernel error, turning EPERM into [`Error::PermissionDenied`].
    pub(super) fn from_io(operation: String, source: io::Error) -> Self {
        if source.raw_os_error() == Some(libc::EPERM) {
            Self::PermissionDenied { operation, source }
        } else {
            Self::Kernel { operation, source }
        }
    }

    /// EPERM anywhere in an aya error chain means a missing capability.
    pub(super) fn permission_in(
        operation: &str,
        error: &(dyn std::error::Error + 'static),
    ) -> Option<Self> {
        let mut current = Some(error);
        while let Some(e) = current {
            if let Some(io) = e.downcast_ref::<io::Error>()
                && io.raw_os_error() == Some(libc::EPERM)
            {
                return Some(Self::PermissionDenied {
                    operation: operation.to_owned(),
                    source: io::Error::from_raw_os_error(libc::EPERM),
                });
            }
            current = e.source();
        }
        None
    }
}

//! A CNI socket load balancer stand-in (what Cilium's kube-proxy
//! replacement or Calico's eBPF dataplane attach): the `lb_connect4` and
//! `lb_getpeername4` programs of yurthub's own eBPF object, loaded here with
//! one Service address and one backend patched in, and attached to a test
//! cgroup through cgroup links, first or last in that cgroup's chain.
//! Dropping it detaches it.

use std::{
    fs::File,
    net::SocketAddrV4,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{Ebpf, EbpfLoader, programs::CgroupSockAddr};
use yurthub_ebpf_common::{
    link::{self as sys, Order, attach_type},
    program, standin,
};

/// The stand-in, attached.
pub struct SocketLb {
    pub cgroup: PathBuf,
    pub service: SocketAddrV4,
    pub backend: SocketAddrV4,
    links: Vec<OwnedFd>,
    ebpf: Ebpf,
}

fn load(service: SocketAddrV4, backend: SocketAddrV4) -> Ebpf {
    let be = |a: SocketAddrV4| {
        (
            u32::from_ne_bytes(a.ip().octets()),
            u32::from(a.port().to_be()),
        )
    };
    let (service_addr, service_port) = be(service);
    let (backend_addr, backend_port) = be(backend);
    let mut loader = EbpfLoader::new();
    loader
        .override_global(standin::SERVICE_ADDR, &service_addr, true)
        .override_global(standin::SERVICE_PORT, &service_port, true)
        .override_global(standin::BACKEND_ADDR, &backend_addr, true)
        .override_global(standin::BACKEND_PORT, &backend_port, true);
    let mut ebpf = loader
        .load(yurthub::redirect::object())
        .expect("load the eBPF object for the socket-LB stand-in");
    for name in [
        program::STANDIN_LB_CONNECT4,
        program::STANDIN_LB_GETPEERNAME4,
    ] {
        let prog: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .unwrap_or_else(|| panic!("{name} missing from the object"))
            .try_into()
            .expect("a cgroup sock_addr program");
        prog.load().unwrap_or_else(|e| panic!("load {name}: {e}"));
    }
    ebpf
}

fn prog_fd<'a>(ebpf: &'a Ebpf, name: &str) -> &'a aya::programs::ProgramFd {
    let prog: &CgroupSockAddr = ebpf
        .program(name)
        .expect("stand-in program")
        .try_into()
        .expect("a cgroup sock_addr program");
    prog.fd().expect("loaded")
}

const HOOKS: [(&str, u32); 2] = [
    (
        program::STANDIN_LB_CONNECT4,
        attach_type::CGROUP_INET4_CONNECT,
    ),
    (
        program::STANDIN_LB_GETPEERNAME4,
        attach_type::CGROUP_INET4_GETPEERNAME,
    ),
];

impl SocketLb {
    /// Loads the stand-in for `service` -> `backend` and attaches it to
    /// `cgroup` at `order`. Panics if the kernel refuses (e.g. `First`
    /// without the multi-program API for cgroups).
    pub fn attach(
        cgroup: &Path,
        service: SocketAddrV4,
        backend: SocketAddrV4,
        order: Order,
    ) -> Self {
        let ebpf = load(service, backend);
        let dir = File::open(cgroup).unwrap_or_else(|e| panic!("open {}: {e}", cgroup.display()));
        let links = HOOKS
            .iter()
            .map(|(name, attach_type)| {
                sys::create_cgroup_link(
                    prog_fd(&ebpf, name).as_fd(),
                    dir.as_fd(),
                    *attach_type,
                    order,
                )
                .unwrap_or_else(|e| {
                    panic!("attach {name} to {} ({order:?}): {e}", cgroup.display())
                })
            })
            .collect();
        Self {
            cgroup: cgroup.to_owned(),
            service,
            backend,
            links,
            ebpf,
        }
    }

    /// Swaps in freshly loaded programs behind the same links (as an agent
    /// upgrade does), pointing at `backend`.
    pub fn replace(&mut self, backend: SocketAddrV4) {
        let ebpf = load(self.service, backend);
        for ((name, _), link) in HOOKS.iter().zip(&self.links) {
            sys::update_program(link.as_fd(), prog_fd(&ebpf, name).as_fd())
                .unwrap_or_else(|e| panic!("replace {name}: {e}"));
        }
        self.ebpf = ebpf;
        self.backend = backend;
    }

    /// Program ids of the attached stand-in (connect4, getpeername4).
    pub fn program_ids(&self) -> Vec<u32> {
        self.links
            .iter()
            .map(|l| sys::link_info(l.as_fd()).expect("link info").prog_id)
            .collect()
    }
}

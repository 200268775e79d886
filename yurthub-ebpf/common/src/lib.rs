//! The ABI between the kernel programs in `yurthub-ebpf` and the daemon's
//! `redirect` module: map and program names, pin layout and the `#[repr(C)]`
//! key/value types, defined once so that a field change breaks both builds
//! instead of silently misreading a map.
//!
//! Conventions:
//! - every field holding network-order bytes ends in `_be`;
//! - padding is explicit (`_pad*` fields, always zero) so that map keys hash
//!   the same on both sides and the verifier never sees uninitialised stack;
//! - every type has a `const` size assertion;
//! - IPv4 addresses inside IPv6-shaped fields use the IPv4-mapped form
//!   `::ffff:a.b.c.d`.
//!
//! With feature `user` the types implement `aya::Pod`, [`link`] offers the
//! few `bpf(2)` commands on cgroup links that aya 0.14 does not expose, and
//! [`probe`] starts a process born into a cgroup (the redirect self-check).
#![cfg_attr(not(test), no_std)]

#[cfg(feature = "user")]
extern crate std;

#[cfg(feature = "user")]
pub mod link;

#[cfg(feature = "user")]
pub mod probe;

/// Version of the map layout below. It is part of the pin path of the maps
/// (`<bpffs>/<pin dir>/maps-v<LAYOUT_VERSION>/`), so an upgrade that changes a
/// struct creates fresh maps instead of reading old ones with a new layout.
/// Bump it whenever a map's key/value type, type or size changes.
pub const LAYOUT_VERSION: u32 = 1;

/// Prefix of the versioned map pin directory (`maps-v1`, `maps-v2`, ...).
pub const MAPS_DIR_PREFIX: &str = "maps-v";

/// Directory (inside the pin directory) that holds one pinned cgroup link per
/// program. Links are not versioned: a new daemon replaces the program behind
/// the link in place, whatever layout the old program used.
pub const LINKS_DIR: &str = "links";

/// Maximum number of VIPs per address family, and number of counter slots.
pub const MAX_VIPS: u32 = 64;

/// Maximum number of cgroups whose sockets are never redirected.
pub const MAX_EXEMPT_CGROUPS: u32 = 16;

/// Capacity of the socket-cookie -> original destination LRU map. Entries of
/// closed sockets are evicted by the LRU, so this bounds memory, not sockets.
pub const MAX_ORIGINAL_DESTINATIONS: u32 = 65_536;

/// Default grace period: a heartbeat older than this disables the redirect.
pub const DEFAULT_GRACE_NS: u64 = 2_000_000_000;

/// Upper bound for the grace period the daemon may configure.
pub const MAX_GRACE_NS: u64 = 2_000_000_000;

/// Names of the programs (the eBPF function names; at most 15 bytes so the
/// kernel, `bpftool` and the ELF agree on them).
pub mod program {
    pub const CONNECT4: &str = "yh_connect4";
    pub const CONNECT6: &str = "yh_connect6";
    pub const GETPEERNAME4: &str = "yh_getpeername4";
    pub const GETPEERNAME6: &str = "yh_getpeername6";
    /// A stand-in for a CNI's socket load balancer (Cilium, Calico eBPF):
    /// rewrites one Service address to one backend at `connect()`. Only the
    /// tests load it, to prove the redirect coexists with such programs;
    /// the daemon never does. Configured through the load-time globals in
    /// [`super::standin`].
    pub const STANDIN_LB_CONNECT4: &str = "lb_connect4";
    /// The stand-in's reverse translation (backend -> Service address).
    pub const STANDIN_LB_GETPEERNAME4: &str = "lb_getpeername4";
}

/// Load-time globals of the socket-LB stand-in programs (network-order
/// IPv4 address, network-order port in the low 16 bits). Zero: inactive.
pub mod standin {
    pub const SERVICE_ADDR: &str = "LB_SERVICE_ADDR";
    pub const SERVICE_PORT: &str = "LB_SERVICE_PORT";
    pub const BACKEND_ADDR: &str = "LB_BACKEND_ADDR";
    pub const BACKEND_PORT: &str = "LB_BACKEND_PORT";
}

/// Names of the maps (the eBPF static names, also their pin file names).
pub mod map {
    /// `Array<RedirectConfig>`, one entry: hub endpoint and grace period.
    pub const CONFIG: &str = "YH_CONFIG";
    /// `Array<u64>`, one entry: CLOCK_MONOTONIC ns of the last heartbeat.
    pub const HEARTBEAT: &str = "YH_HEARTBEAT";
    /// `HashMap<Ipv4Endpoint, VipSlot>`: IPv4 VIPs (also matched when dialled
    /// as `::ffff:a.b.c.d` from an AF_INET6 socket).
    pub const VIPS_V4: &str = "YH_VIPS_V4";
    /// `HashMap<Ipv6Endpoint, VipSlot>`: IPv6 VIPs.
    pub const VIPS_V6: &str = "YH_VIPS_V6";
    /// `HashMap<u64, u32>`: cgroup ids whose sockets are never redirected.
    pub const EXEMPT_CGROUPS: &str = "YH_EXEMPT_CGRP";
    /// `SkStorage<u32>`: sockets the daemon marked as its own (non-zero value).
    pub const EXEMPT_SOCKETS: &str = "YH_EXEMPT_SOCK";
    /// `LruHashMap<u64, OrigDst>`: socket cookie -> original destination.
    pub const ORIGINAL_DESTINATIONS: &str = "YH_ORIG_DST";
    /// `PerCpuArray<VipCounters>`, `MAX_VIPS` slots.
    pub const COUNTERS: &str = "YH_COUNTERS";

    /// Maps pinned under the versioned map directory. `EXEMPT_SOCKETS` is not
    /// pinned: its entries live and die with the daemon's own sockets.
    pub const PINNED: [&str; 7] = [
        CONFIG,
        HEARTBEAT,
        VIPS_V4,
        VIPS_V6,
        EXEMPT_CGROUPS,
        ORIGINAL_DESTINATIONS,
        COUNTERS,
    ];
}

/// Name of aya-log's load-time global holding the maximum enabled level.
pub const LOG_LEVEL_GLOBAL: &str = "AYA_LOG_LEVEL";

/// An IPv4 address and TCP port, both in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ipv4Endpoint {
    pub addr_be: u32,
    pub port_be: u16,
    pub _pad: u16,
}

/// An IPv6 address (four network-order words, as `bpf_sock_addr.user_ip6`)
/// and TCP port in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ipv6Endpoint {
    pub addr_be: [u32; 4],
    pub port_be: u16,
    pub _pad: u16,
}

/// Value of the VIP maps: which counter slot the VIP owns.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipSlot {
    pub slot: u32,
}

/// The single entry of [`map::CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedirectConfig {
    /// Redirect only while the last heartbeat is at most this old.
    pub grace_ns: u64,
    /// Hub IPv6 address; all zero when the hub address is IPv4.
    pub hub_v6_be: [u32; 4],
    /// Hub IPv4 address; zero when the hub address is IPv6.
    pub hub_v4_be: u32,
    /// Hub secure port.
    pub hub_port_be: u16,
    pub _pad: u16,
}

/// What `connect()` asked for and where it was sent, per socket cookie, so
/// that `getpeername()` can report the original destination. IPv4 endpoints
/// are stored in their IPv4-mapped form.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    pub original: Ipv6Endpoint,
    pub redirected_to: Ipv6Endpoint,
}

/// Per-CPU, per-VIP counters, summed by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipCounters {
    /// Connections rewritten to the hub.
    pub redirected: u64,
    /// VIP connections left alone because the heartbeat was stale.
    pub skipped_stale: u64,
    /// VIP connections left alone because they are the hub's own.
    pub skipped_own: u64,
}

/// Network-order word 2 of an IPv4-mapped IPv6 address (`::ffff:0:0/96`),
/// as read from `user_ip6[2]` on either endianness.
pub const V4_MAPPED_WORD2_BE: u32 = 0x0000_ffff_u32.to_be();

impl Ipv6Endpoint {
    /// The IPv4-mapped form of an IPv4 endpoint.
    pub const fn mapped(v4: Ipv4Endpoint) -> Self {
        Self {
            addr_be: [0, 0, V4_MAPPED_WORD2_BE, v4.addr_be],
            port_be: v4.port_be,
            _pad: 0,
        }
    }

    /// The IPv4 endpoint if this is an IPv4-mapped address.
    pub const fn as_v4(&self) -> Option<Ipv4Endpoint> {
        if self.addr_be[0] == 0 && self.addr_be[1] == 0 && self.addr_be[2] == V4_MAPPED_WORD2_BE {
            Some(Ipv4Endpoint {
                addr_be: self.addr_be[3],
                port_be: self.port_be,
                _pad: 0,
            })
        } else {
            None
        }
    }
}

const _: () = {
    assert!(core::mem::size_of::<Ipv4Endpoint>() == 8);
    assert!(core::mem::size_of::<Ipv6Endpoint>() == 20);
    assert!(core::mem::size_of::<VipSlot>() == 4);
    assert!(core::mem::size_of::<RedirectConfig>() == 32);
    assert!(core::mem::align_of::<RedirectConfig>() == 8);
    assert!(core::mem::size_of::<OrigDst>() == 40);
    assert!(core::mem::size_of::<VipCounters>() == 24);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is #[repr(C)], Copy, made only of integers, and has
    // no implicit padding (explicit `_pad` fields; sizes asserted above), so
    // any byte pattern is a valid value and no uninitialised byte is read.
    unsafe impl aya::Pod for super::Ipv4Endpoint {}
    unsafe impl aya::Pod for super::Ipv6Endpoint {}
    unsafe impl aya::Pod for super::VipSlot {}
    unsafe impl aya::Pod for super::RedirectConfig {}
    unsafe impl aya::Pod for super::OrigDst {}
    unsafe impl aya::Pod for super::VipCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_round_trip() {
        let v4 = Ipv4Endpoint {
            addr_be: u32::from_be_bytes([10, 96, 0, 1]).to_be(),
            port_be: 443u16.to_be(),
            _pad: 0,
        };
        let v6 = Ipv6Endpoint::mapped(v4);
        assert_eq!(v6.as_v4(), Some(v4));
        let not_mapped = Ipv6Endpoint {
            addr_be: [1, 0, V4_MAPPED_WORD2_BE, 5],
            ..v6
        };
        assert_eq!(not_mapped.as_v4(), None);
    }

    #[test]
    fn mapped_word_is_network_order() {
        assert_eq!(V4_MAPPED_WORD2_BE.to_ne_bytes(), [0, 0, 0xff, 0xff]);
    }
}

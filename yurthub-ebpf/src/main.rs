//! cgroup sock_addr programs that send TCP connections bound for the
//! kube-apiserver Service VIP to yurthub, and hide that from `getpeername()`.
//!
//! - `connect4` / `connect6` rewrite a TCP `connect()` to a configured VIP
//!   (IPv4, IPv6, or IPv4-mapped `::ffff:a.b.c.d` dialled from a dual-stack
//!   AF_INET6 socket, which only runs the IPv6 hook) to the hub address and
//!   secure port, once per connection: no per-packet NAT, no conntrack entry.
//! - `getpeername4` / `getpeername6` report the original VIP for sockets they
//!   redirected, using the socket cookie recorded at connect time.
//!
//! Every program returns 1 ("proceed"): returning 0 would fail the syscall
//! with EPERM, and a redirect must never break a connection. Anything the
//! programs do not recognise (UDP, other destinations, a missing map entry,
//! a stale heartbeat, the hub's own sockets) passes through untouched.
//!
//! Maps and their types come from `yurthub-ebpf-common`; the daemon fills
//! them (see `yurthub::redirect`).
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _, Global,
    bindings::bpf_sock_addr,
    btf_maps::SkStorage,
    helpers::generated::{bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::{btf_map, cgroup_sock_addr, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use yurthub_ebpf_common::{
    Ipv4Endpoint, Ipv6Endpoint, MAX_EXEMPT_CGROUPS, MAX_ORIGINAL_DESTINATIONS, MAX_VIPS, OrigDst,
    RedirectConfig, VipCounters, VipSlot,
};

/// `SOCK_STREAM` from `<linux/net.h>`.
const SOCK_STREAM: u32 = 1;
/// `IPPROTO_TCP` from `<linux/in.h>`.
const IPPROTO_TCP: u32 = 6;

/// Let the syscall proceed (with whatever address we left in the context).
const PROCEED: i32 = 1;

// The static names are the map names in the ELF and in the daemon (see
// `yurthub_ebpf_common::map`); the daemon pins all but YH_EXEMPT_SOCK.

#[map]
static YH_CONFIG: Array<RedirectConfig> = Array::with_max_entries(1, 0);

#[map]
static YH_HEARTBEAT: Array<u64> = Array::with_max_entries(1, 0);

#[map]
static YH_VIPS_V4: HashMap<Ipv4Endpoint, VipSlot> = HashMap::with_max_entries(MAX_VIPS, 0);

#[map]
static YH_VIPS_V6: HashMap<Ipv6Endpoint, VipSlot> = HashMap::with_max_entries(MAX_VIPS, 0);

#[map]
static YH_EXEMPT_CGRP: HashMap<u64, u32> = HashMap::with_max_entries(MAX_EXEMPT_CGROUPS, 0);

#[btf_map]
static YH_EXEMPT_SOCK: SkStorage<u32> = SkStorage::new();

#[map]
static YH_ORIG_DST: LruHashMap<u64, OrigDst> =
    LruHashMap::with_max_entries(MAX_ORIGINAL_DESTINATIONS, 0);

#[map]
static YH_COUNTERS: PerCpuArray<VipCounters> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

// === entry points ===

#[cgroup_sock_addr(connect4)]
pub fn yh_connect4(ctx: SockAddrContext) -> i32 {
    let _ = try_connect4(&ctx);
    PROCEED
}

#[cgroup_sock_addr(connect6)]
pub fn yh_connect6(ctx: SockAddrContext) -> i32 {
    let _ = try_connect6(&ctx);
    PROCEED
}

#[cgroup_sock_addr(getpeername4)]
pub fn yh_getpeername4(ctx: SockAddrContext) -> i32 {
    let _ = try_getpeername4(&ctx);
    PROCEED
}

#[cgroup_sock_addr(getpeername6)]
pub fn yh_getpeername6(ctx: SockAddrContext) -> i32 {
    let _ = try_getpeername6(&ctx);
    PROCEED
}

// === connect ===

/// Why a VIP connection was left alone (`Err` of the try functions).
enum Skip {
    NotOurs,
    Stale,
    OwnSocket,
}

fn try_connect4(ctx: &SockAddrContext) -> Result<(), Skip> {
    let sa = sock_addr(ctx);
    if !is_tcp(sa) {
        return Err(Skip::NotOurs);
    }
    let dst = Ipv4Endpoint {
        addr_be: sa.user_ip4,
        port_be: port_be(sa),
        _pad: 0,
    };
    let slot = vip4_slot(&dst)?;
    let config = config()?;
    if config.hub_v4_be == 0 {
        return Err(Skip::NotOurs);
    }
    admit(ctx, slot)?;
    let hub = Ipv4Endpoint {
        addr_be: config.hub_v4_be,
        port_be: config.hub_port_be,
        _pad: 0,
    };
    let sa = sock_addr_mut(ctx);
    sa.user_ip4 = hub.addr_be;
    sa.user_port = u32::from(hub.port_be);
    remember(ctx, Ipv6Endpoint::mapped(dst), Ipv6Endpoint::mapped(hub));
    debug!(
        ctx,
        "yurthub: redirected {:i}:{} to {:i}:{}",
        u32::from_be(dst.addr_be),
        u16::from_be(dst.port_be),
        u32::from_be(hub.addr_be),
        u16::from_be(hub.port_be)
    );
    Ok(())
}

fn try_connect6(ctx: &SockAddrContext) -> Result<(), Skip> {
    let sa = sock_addr(ctx);
    if !is_tcp(sa) {
        return Err(Skip::NotOurs);
    }
    let dst = Ipv6Endpoint {
        addr_be: read_ip6(sa),
        port_be: port_be(sa),
        _pad: 0,
    };
    // An AF_INET6 socket dialling ::ffff:a.b.c.d never runs the IPv4 hook
    // (tcp_v6_connect hands it to tcp_v4_connect internally), so IPv4 VIPs
    // are matched here in their mapped form and sent to the mapped hub
    // address; the socket evidently accepts mapped addresses.
    let (slot, hub) = if let Some(dst4) = dst.as_v4() {
        let slot = vip4_slot(&dst4)?;
        let config = config()?;
        if config.hub_v4_be == 0 {
            return Err(Skip::NotOurs);
        }
        let hub = Ipv4Endpoint {
            addr_be: config.hub_v4_be,
            port_be: config.hub_port_be,
            _pad: 0,
        };
        (slot, Ipv6Endpoint::mapped(hub))
    } else {
        let slot = vip6_slot(&dst)?;
        let config = config()?;
        if config.hub_v6_be == [0; 4] {
            return Err(Skip::NotOurs);
        }
        let hub = Ipv6Endpoint {
            addr_be: config.hub_v6_be,
            port_be: config.hub_port_be,
            _pad: 0,
        };
        (slot, hub)
    };
    admit(ctx, slot)?;
    let sa = sock_addr_mut(ctx);
    write_ip6(sa, hub.addr_be);
    sa.user_port = u32::from(hub.port_be);
    remember(ctx, dst, hub);
    debug!(
        ctx,
        "yurthub: redirected [{:i}]:{} to [{:i}]:{}",
        words_to_bytes(dst.addr_be),
        u16::from_be(dst.port_be),
        words_to_bytes(hub.addr_be),
        u16::from_be(hub.port_be)
    );
    Ok(())
}

fn vip4_slot(dst: &Ipv4Endpoint) -> Result<u32, Skip> {
    // SAFETY: the value is copied out at once; VIP entries are small and
    // only replaced whole by the daemon.
    unsafe { YH_VIPS_V4.get(dst) }
        .map(|v| v.slot)
        .ok_or(Skip::NotOurs)
}

fn vip6_slot(dst: &Ipv6Endpoint) -> Result<u32, Skip> {
    // SAFETY: as in `vip4_slot`.
    unsafe { YH_VIPS_V6.get(dst) }
        .map(|v| v.slot)
        .ok_or(Skip::NotOurs)
}

fn config() -> Result<RedirectConfig, Skip> {
    YH_CONFIG.get(0).copied().ok_or(Skip::NotOurs)
}

/// Decides whether a connection to a VIP (counter `slot`) is redirected,
/// and counts the decision.
fn admit(ctx: &SockAddrContext, slot: u32) -> Result<(), Skip> {
    let verdict = verdict(ctx);
    if let Some(counters) = YH_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run
        // (programs run with migration disabled).
        let counters = unsafe { &mut *counters };
        match verdict {
            Ok(()) => counters.redirected += 1,
            Err(Skip::Stale) => counters.skipped_stale += 1,
            Err(Skip::OwnSocket) => counters.skipped_own += 1,
            Err(Skip::NotOurs) => {}
        }
    }
    verdict
}

fn verdict(ctx: &SockAddrContext) -> Result<(), Skip> {
    // The hub's own sockets are never redirected (no loop when one of its
    // upstream servers is the VIP). Two independent exemptions, see
    // `yurthub::redirect` for why both:
    // 1. sockets the daemon marked in socket-local storage before connect();
    // 2. any socket of a task in a cgroup the daemon listed (its own, when
    //    that cgroup is not shared with other processes).
    // SAFETY: the helper returns NULL or a pointer to this socket's u32.
    let marked = unsafe { YH_EXEMPT_SOCK.get_ptr_mut(ctx) };
    if !marked.is_null() && unsafe { *marked } != 0 {
        return Err(Skip::OwnSocket);
    }
    // SAFETY: plain helper call without arguments.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the value is only tested for presence.
    if unsafe { YH_EXEMPT_CGRP.get(cgroup) }.is_some() {
        return Err(Skip::OwnSocket);
    }
    // Fail open: redirect only while the daemon heartbeats. The heartbeat is
    // CLOCK_MONOTONIC, the clock bpf_ktime_get_ns reads. A zero heartbeat
    // (never written) or one from the future (torn read) counts as stale.
    let grace = YH_CONFIG.get(0).map_or(0, |c| c.grace_ns);
    let beat = YH_HEARTBEAT.get(0).copied().unwrap_or(0);
    // SAFETY: plain helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if beat == 0 || now.wrapping_sub(beat) > grace {
        return Err(Skip::Stale);
    }
    Ok(())
}

/// Records where a redirected socket really wanted to go.
fn remember(ctx: &SockAddrContext, original: Ipv6Endpoint, redirected_to: Ipv6Endpoint) {
    // SAFETY: valid for sock_addr programs; the cookie is stable for the
    // socket's lifetime.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let entry = OrigDst {
        original,
        redirected_to,
    };
    // A full LRU evicts the oldest entry; failure only costs getpeername
    // accuracy, never the connection.
    let _ = YH_ORIG_DST.insert(cookie, entry, 0);
}

// === getpeername ===

fn original_destination(ctx: &SockAddrContext) -> Option<OrigDst> {
    // SAFETY: as in `remember`.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied out at once.
    unsafe { YH_ORIG_DST.get(cookie) }.copied()
}

fn try_getpeername4(ctx: &SockAddrContext) -> Option<()> {
    let entry = original_destination(ctx)?;
    let sa = sock_addr(ctx);
    let peer = Ipv4Endpoint {
        addr_be: sa.user_ip4,
        port_be: port_be(sa),
        _pad: 0,
    };
    // Only rewrite while the peer is still where we sent it: a socket whose
    // connect failed may be reconnected elsewhere.
    if Ipv6Endpoint::mapped(peer) != entry.redirected_to {
        return None;
    }
    let original = entry.original.as_v4()?;
    let sa = sock_addr_mut(ctx);
    sa.user_ip4 = original.addr_be;
    sa.user_port = u32::from(original.port_be);
    Some(())
}

fn try_getpeername6(ctx: &SockAddrContext) -> Option<()> {
    let entry = original_destination(ctx)?;
    let sa = sock_addr(ctx);
    let peer = Ipv6Endpoint {
        addr_be: read_ip6(sa),
        port_be: port_be(sa),
        _pad: 0,
    };
    if peer != entry.redirected_to {
        return None;
    }
    let sa = sock_addr_mut(ctx);
    write_ip6(sa, entry.original.addr_be);
    sa.user_port = u32::from(entry.original.port_be);
    Some(())
}

// === socket-LB stand-in (tests only) ===
//
// What Cilium's or Calico's socket load balancer does, reduced to one
// Service and one backend: rewrite the Service address at connect() and
// restore it at getpeername(). The daemon never loads these two programs;
// the coexistence tests do, with the addresses patched in as load-time
// globals, to put a competing program before or after the redirect.

#[unsafe(no_mangle)]
static LB_SERVICE_ADDR: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static LB_SERVICE_PORT: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static LB_BACKEND_ADDR: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static LB_BACKEND_PORT: Global<u32> = Global::new(0);

fn global(value: &Global<u32>) -> u32 {
    value.load()
}

#[cgroup_sock_addr(connect4)]
pub fn lb_connect4(ctx: SockAddrContext) -> i32 {
    let (service, service_port) = (global(&LB_SERVICE_ADDR), global(&LB_SERVICE_PORT));
    let sa = sock_addr(&ctx);
    if service != 0 && is_tcp(sa) && sa.user_ip4 == service && sa.user_port == service_port {
        let sa = sock_addr_mut(&ctx);
        sa.user_ip4 = global(&LB_BACKEND_ADDR);
        sa.user_port = global(&LB_BACKEND_PORT);
    }
    PROCEED
}

#[cgroup_sock_addr(getpeername4)]
pub fn lb_getpeername4(ctx: SockAddrContext) -> i32 {
    let (backend, backend_port) = (global(&LB_BACKEND_ADDR), global(&LB_BACKEND_PORT));
    let sa = sock_addr(&ctx);
    if backend != 0 && sa.user_ip4 == backend && sa.user_port == backend_port {
        let sa = sock_addr_mut(&ctx);
        sa.user_ip4 = global(&LB_SERVICE_ADDR);
        sa.user_port = global(&LB_SERVICE_PORT);
    }
    PROCEED
}

// === context access ===

fn sock_addr(ctx: &SockAddrContext) -> &bpf_sock_addr {
    // SAFETY: the kernel hands every sock_addr program a valid context.
    unsafe { &*ctx.sock_addr }
}

#[expect(
    clippy::mut_from_ref,
    reason = "the context is kernel memory the program may write"
)]
fn sock_addr_mut(ctx: &SockAddrContext) -> &mut bpf_sock_addr {
    // SAFETY: as above; writes go through the verifier's ctx rewriting.
    unsafe { &mut *ctx.sock_addr }
}

fn is_tcp(sa: &bpf_sock_addr) -> bool {
    sa.type_ == SOCK_STREAM && sa.protocol == IPPROTO_TCP
}

/// `user_port` holds the port in network order in its low 16 bits.
fn port_be(sa: &bpf_sock_addr) -> u16 {
    sa.user_port as u16
}

/// `user_ip6` must be accessed as four 4-byte words: volatile accesses keep
/// the compiler from merging them into wider loads the verifier may reject.
fn read_ip6(sa: &bpf_sock_addr) -> [u32; 4] {
    let p = sa.user_ip6.as_ptr();
    // SAFETY: four in-bounds, aligned u32 reads of the context.
    unsafe {
        [
            p.read_volatile(),
            p.add(1).read_volatile(),
            p.add(2).read_volatile(),
            p.add(3).read_volatile(),
        ]
    }
}

fn write_ip6(sa: &mut bpf_sock_addr, words: [u32; 4]) {
    let p = sa.user_ip6.as_mut_ptr();
    // SAFETY: four in-bounds, aligned u32 writes of the context.
    unsafe {
        p.write_volatile(words[0]);
        p.add(1).write_volatile(words[1]);
        p.add(2).write_volatile(words[2]);
        p.add(3).write_volatile(words[3]);
    }
}

fn words_to_bytes(words: [u32; 4]) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let w = words[i].to_ne_bytes();
        bytes[4 * i] = w[0];
        bytes[4 * i + 1] = w[1];
        bytes[4 * i + 2] = w[2];
        bytes[4 * i + 3] = w[3];
        i += 1;
    }
    bytes
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

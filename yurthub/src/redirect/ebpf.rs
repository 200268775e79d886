//! The embedded eBPF object and its maps: loading (with the maps pinned
//! under the versioned map directory, so a restarted daemon reuses them),
//! and every read/write of map contents. This is the only module that sees
//! the ABI types of `yurthub-ebpf-common`; conversions between them and
//! `std::net` types live here, in pure unit-tested functions.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    path::Path,
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues, SkStorage},
};
use yurthub_ebpf_common::{
    Ipv4Endpoint, Ipv6Endpoint, LOG_LEVEL_GLOBAL, MAX_VIPS, RedirectConfig, VipCounters, VipSlot,
    map,
};

use super::Error;

/// The programs, built by `build.rs` from the `yurthub-ebpf` crate.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/yurthub-ebpf"));

/// aya-log level the programs log at when diagnostics are on (`Debug`).
const LOG_LEVEL_DEBUG: u8 = 4;
/// aya-log level that disables every log statement. The level is a load-time
/// constant, so the verifier prunes the logging code: zero cost when off.
const LOG_LEVEL_OFF: u8 = 0;

/// Loads the object, reusing (or creating and pinning) the maps in
/// `maps_dir`.
pub(crate) fn load(maps_dir: &Path, log: bool) -> Result<Ebpf, aya::EbpfError> {
    let level = if log { LOG_LEVEL_DEBUG } else { LOG_LEVEL_OFF };
    let mut loader = EbpfLoader::new();
    for name in map::PINNED {
        loader.map_pin_path(name, maps_dir.join(name));
    }
    loader.override_global(LOG_LEVEL_GLOBAL, &level, true);
    loader.load(OBJECT)
}

// === conversions ===

/// `std` IPv4 address -> the network-order word the kernel keeps.
pub(crate) fn ip4_be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// `std` IPv6 address -> four network-order words.
pub(crate) fn ip6_be(ip: Ipv6Addr) -> [u32; 4] {
    let o = ip.octets();
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

pub(crate) fn ip6_from_be(words: [u32; 4]) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    Ipv6Addr::from(octets)
}

pub(crate) fn v4_endpoint(addr: SocketAddrV4) -> Ipv4Endpoint {
    Ipv4Endpoint {
        addr_be: ip4_be(*addr.ip()),
        port_be: addr.port().to_be(),
        _pad: 0,
    }
}

pub(crate) fn v4_socket_addr(endpoint: Ipv4Endpoint) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(endpoint.addr_be.to_ne_bytes()),
        u16::from_be(endpoint.port_be),
    )
}

pub(crate) fn v6_endpoint(addr: SocketAddrV6) -> Ipv6Endpoint {
    Ipv6Endpoint {
        addr_be: ip6_be(*addr.ip()),
        port_be: addr.port().to_be(),
        _pad: 0,
    }
}

pub(crate) fn v6_socket_addr(endpoint: Ipv6Endpoint) -> SocketAddrV6 {
    SocketAddrV6::new(
        ip6_from_be(endpoint.addr_be),
        u16::from_be(endpoint.port_be),
        0,
        0,
    )
}

/// A VIP as the maps key it: IPv4-mapped IPv6 VIPs become IPv4 VIPs (the
/// connect6 program matches IPv4 VIPs in mapped form by itself).
pub(crate) fn canonical_vip(vip: SocketAddr) -> SocketAddr {
    match vip {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => SocketAddr::V6(SocketAddrV6::new(*v6.ip(), v6.port(), 0, 0)),
        },
        v4 @ SocketAddr::V4(_) => v4,
    }
}

pub(crate) fn redirect_config(hub: IpAddr, port: u16, grace: Duration) -> RedirectConfig {
    let (hub_v4_be, hub_v6_be) = match hub {
        IpAddr::V4(v4) => (ip4_be(v4), [0; 4]),
        IpAddr::V6(v6) => (0, ip6_be(v6)),
    };
    RedirectConfig {
        grace_ns: u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX),
        hub_v6_be,
        hub_v4_be,
        hub_port_be: port.to_be(),
        _pad: 0,
    }
}

// === maps ===

fn map_error(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> Error {
    move |source| Error::Map {
        name,
        source: Box::new(source),
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(Error::MissingObject { name })?;
    T::try_from(map).map_err(map_error(name))
}

/// Typed handles on the maps the daemon writes or reads.
pub(crate) struct Maps {
    config: Array<MapData, RedirectConfig>,
    heartbeat: Array<MapData, u64>,
    vips_v4: HashMap<MapData, Ipv4Endpoint, VipSlot>,
    vips_v6: HashMap<MapData, Ipv6Endpoint, VipSlot>,
    exempt_cgroups: HashMap<MapData, u64, u32>,
    counters: PerCpuArray<MapData, VipCounters>,
}

/// Sum of the per-CPU counters of one VIP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub redirected: u64,
    pub skipped_stale: u64,
    pub skipped_own: u64,
}

impl Maps {
    /// Takes the maps out of a loaded object; also returns the (unpinned)
    /// socket-exemption map, which the socket registry owns.
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<(Self, SkStorage<MapData, u32>), Error> {
        let maps = Self {
            config: take(ebpf, map::CONFIG)?,
            heartbeat: take(ebpf, map::HEARTBEAT)?,
            vips_v4: take(ebpf, map::VIPS_V4)?,
            vips_v6: take(ebpf, map::VIPS_V6)?,
            exempt_cgroups: take(ebpf, map::EXEMPT_CGROUPS)?,
            counters: take(ebpf, map::COUNTERS)?,
        };
        let exempt_sockets = take(ebpf, map::EXEMPT_SOCKETS)?;
        Ok((maps, exempt_sockets))
    }

    pub(crate) fn set_config(&mut self, config: RedirectConfig) -> Result<(), Error> {
        self.config
            .set(0, config, 0)
            .map_err(map_error(map::CONFIG))
    }

    pub(crate) fn set_heartbeat(&mut self, monotonic_ns: u64) -> Result<(), Error> {
        self.heartbeat
            .set(0, monotonic_ns, 0)
            .map_err(map_error(map::HEARTBEAT))
    }

    pub(crate) fn heartbeat(&self) -> Result<u64, Error> {
        self.heartbeat.get(&0, 0).map_err(map_error(map::HEARTBEAT))
    }

    /// Makes the exempt-cgroup map hold exactly `ids` (a previous daemon
    /// may have left its own, now meaningless, cgroup id behind).
    pub(crate) fn set_exempt_cgroups(&mut self, ids: &[u64]) -> Result<(), Error> {
        let name = map::EXEMPT_CGROUPS;
        let stale: Vec<u64> = self
            .exempt_cgroups
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_error(name))?
            .into_iter()
            .filter(|id| !ids.contains(id))
            .collect();
        for id in stale {
            self.exempt_cgroups.remove(&id).map_err(map_error(name))?;
        }
        for id in ids {
            self.exempt_cgroups
                .insert(id, 1, 0)
                .map_err(map_error(name))?;
        }
        Ok(())
    }

    /// The VIPs in the maps with their counter slots.
    pub(crate) fn vips(&self) -> Result<BTreeMap<SocketAddr, u32>, Error> {
        let mut out = BTreeMap::new();
        for entry in self.vips_v4.iter() {
            let (key, value) = entry.map_err(map_error(map::VIPS_V4))?;
            out.insert(SocketAddr::V4(v4_socket_addr(key)), value.slot);
        }
        for entry in self.vips_v6.iter() {
            let (key, value) = entry.map_err(map_error(map::VIPS_V6))?;
            out.insert(SocketAddr::V6(v6_socket_addr(key)), value.slot);
        }
        Ok(out)
    }

    /// Makes the VIP maps hold exactly `vips` (canonical form). VIPs that
    /// stay keep their counter slot; a new VIP gets the lowest free slot,
    /// zeroed before the VIP becomes visible to the programs.
    pub(crate) fn set_vips(&mut self, vips: &BTreeSet<SocketAddr>) -> Result<(), Error> {
        let current = self.vips()?;
        for vip in current.keys().filter(|vip| !vips.contains(vip)) {
            match vip {
                SocketAddr::V4(v4) => self
                    .vips_v4
                    .remove(&v4_endpoint(*v4))
                    .map_err(map_error(map::VIPS_V4))?,
                SocketAddr::V6(v6) => self
                    .vips_v6
                    .remove(&v6_endpoint(*v6))
                    .map_err(map_error(map::VIPS_V6))?,
            }
        }
        let mut used: BTreeSet<u32> = current
            .iter()
            .filter(|(vip, _)| vips.contains(vip))
            .map(|(_, slot)| *slot)
            .collect();
        for vip in vips.iter().filter(|vip| !current.contains_key(vip)) {
            let slot = (0..MAX_VIPS)
                .find(|slot| !used.contains(slot))
                .ok_or(Error::TooManyVips { max: MAX_VIPS })?;
            used.insert(slot);
            self.zero_counters(slot)?;
            let value = VipSlot { slot };
            match vip {
                SocketAddr::V4(v4) => self
                    .vips_v4
                    .insert(v4_endpoint(*v4), value, 0)
                    .map_err(map_error(map::VIPS_V4))?,
                SocketAddr::V6(v6) => self
                    .vips_v6
                    .insert(v6_endpoint(*v6), value, 0)
                    .map_err(map_error(map::VIPS_V6))?,
            }
        }
        Ok(())
    }

    fn zero_counters(&mut self, slot: u32) -> Result<(), Error> {
        let cpus = aya::util::nr_cpus().map_err(|(path, source)| Error::Io {
            path: path.into(),
            source,
        })?;
        let zeros =
            PerCpuValues::try_from(vec![VipCounters::default(); cpus]).map_err(|source| {
                Error::Io {
                    path: map::COUNTERS.into(),
                    source,
                }
            })?;
        self.counters
            .set(slot, zeros, 0)
            .map_err(map_error(map::COUNTERS))
    }

    pub(crate) fn counters(&self, slot: u32) -> Result<Counters, Error> {
        let per_cpu = self
            .counters
            .get(&slot, 0)
            .map_err(map_error(map::COUNTERS))?;
        Ok(per_cpu.iter().fold(Counters::default(), |sum, c| Counters {
            redirected: sum.redirected.wrapping_add(c.redirected),
            skipped_stale: sum.skipped_stale.wrapping_add(c.skipped_stale),
            skipped_own: sum.skipped_own.wrapping_add(c.skipped_own),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_endpoint_is_network_order_in_memory() {
        let vip: SocketAddrV4 = "10.96.0.1:443".parse().expect("addr");
        let endpoint = v4_endpoint(vip);
        assert_eq!(endpoint.addr_be.to_ne_bytes(), [10, 96, 0, 1]);
        assert_eq!(endpoint.port_be.to_ne_bytes(), [0x01, 0xbb]);
        assert_eq!(endpoint._pad, 0);
        assert_eq!(v4_socket_addr(endpoint), vip);
    }

    #[test]
    fn ipv6_endpoint_round_trip() {
        let vip: SocketAddrV6 = "[fd00:96::1]:6443".parse().expect("addr");
        let endpoint = v6_endpoint(vip);
        assert_eq!(endpoint.addr_be[0].to_ne_bytes(), [0xfd, 0x00, 0x00, 0x96]);
        assert_eq!(endpoint.addr_be[3].to_ne_bytes(), [0, 0, 0, 1]);
        assert_eq!(endpoint.port_be.to_ne_bytes(), 6443u16.to_be_bytes());
        assert_eq!(v6_socket_addr(endpoint), vip);
    }

    #[test]
    fn mapped_vip_matches_the_programs_mapped_form() {
        let mapped: SocketAddrV6 = "[::ffff:10.96.0.1]:443".parse().expect("addr");
        let v4: SocketAddrV4 = "10.96.0.1:443".parse().expect("addr");
        assert_eq!(
            v6_endpoint(mapped),
            Ipv6Endpoint::mapped(v4_endpoint(v4)),
            "the kernel's user_ip6 words of ::ffff:a.b.c.d equal the common crate's mapped form"
        );
        assert_eq!(canonical_vip(SocketAddr::V6(mapped)), SocketAddr::V4(v4));
    }

    #[test]
    fn canonical_vip_drops_flow_info_and_scope() {
        let vip = SocketAddr::V6(SocketAddrV6::new("fd00::1".parse().expect("ip"), 443, 7, 9));
        assert_eq!(
            canonical_vip(vip),
            "[fd00::1]:443".parse::<SocketAddr>().expect("addr")
        );
    }

    #[test]
    fn config_encodes_the_hub() {
        let config = redirect_config(
            "169.254.2.1".parse().expect("ip"),
            10268,
            Duration::from_secs(2),
        );
        assert_eq!(config.hub_v4_be.to_ne_bytes(), [169, 254, 2, 1]);
        assert_eq!(config.hub_v6_be, [0; 4]);
        assert_eq!(config.hub_port_be, 10268u16.to_be());
        assert_eq!(config.grace_ns, 2_000_000_000);

        let config = redirect_config(
            "fd00::2:1".parse().expect("ip"),
            10268,
            Duration::from_millis(500),
        );
        assert_eq!(config.hub_v4_be, 0);
        assert_eq!(
            ip6_from_be(config.hub_v6_be),
            "fd00::2:1".parse::<Ipv6Addr>().expect("ip")
        );
        assert_eq!(config.grace_ns, 500_000_000);
    }
}

//! The redirect's configuration and its validation: the hub address rules
//! OpenYurt applies to `--dummy-if-ip`, and which VIPs a hub address can
//! serve (a `connect()` cannot be redirected across address families).

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use yurthub_ebpf_common::{MAX_GRACE_NS, MAX_VIPS};

use super::{Error, ebpf};

/// Default IPv4 hub address (OpenYurt's `--dummy-if-ip` default).
pub const DEFAULT_HUB_ADDRESS_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 2, 1);
/// Default IPv6 hub address.
pub const DEFAULT_HUB_ADDRESS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 2, 1);
/// Default grace period after the last heartbeat.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// Where and how to redirect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The node-local address the hub listens on (see [`validate_hub_address`]).
    pub hub_address: IpAddr,
    /// The hub's secure (HTTPS) port, e.g. 10268.
    pub hub_port: u16,
    /// Existing link that carries the hub address (default `lo`).
    pub link: String,
    /// cgroup v2 directory under which the pods' parent cgroups
    /// (`kubepods`, `kubepods.slice`, `*-kubepods.slice`) are attached to,
    /// or which is attached to itself when it has none; `None` = the
    /// detected v2 root.
    pub cgroup: Option<PathBuf>,
    /// Destinations to redirect. IPv4 VIPs need an IPv4 hub address (they
    /// are also matched when dialled as `::ffff:a.b.c.d`), IPv6 VIPs an IPv6
    /// one.
    pub vips: Vec<SocketAddr>,
    /// Mount point of the bpf filesystem (default `/sys/fs/bpf`); mounted
    /// if absent.
    pub bpffs: PathBuf,
    /// Directory under `bpffs` for the pins (default `yurthub`).
    pub pin_dir_name: String,
    /// On shutdown keep programs, pins and address, for the next hub to
    /// adopt (they fail open while no hub heartbeats).
    pub keep_on_exit: bool,
    /// How often to re-ensure the hub address (it is also re-added at once
    /// when the kernel reports its deletion).
    pub address_resync: Duration,
    /// Redirect only while the last heartbeat is younger than this (> 0, ≤ 2 s).
    pub grace: Duration,
    /// Let the programs log each redirect through aya-log (diagnostics;
    /// off by default, and then free on the fast path).
    pub ebpf_log: bool,
    /// How often to prove, with a probe process in the pods' cgroup, that a
    /// VIP connection lands on the hub (also at start and after every change
    /// of the programs around ours). `None`: never (the probe's connections
    /// would show in the counters).
    pub self_check: Option<Duration>,
}

impl Config {
    /// A configuration with the documented defaults.
    pub fn new(hub_address: IpAddr, hub_port: u16, vips: Vec<SocketAddr>) -> Self {
        Self {
            hub_address,
            hub_port,
            link: "lo".to_owned(),
            cgroup: None,
            vips,
            bpffs: PathBuf::from("/sys/fs/bpf"),
            pin_dir_name: "yurthub".to_owned(),
            keep_on_exit: false,
            address_resync: Duration::from_secs(60),
            grace: DEFAULT_GRACE,
            ebpf_log: false,
            self_check: None,
        }
    }

    pub(super) fn pin_dir(&self) -> PathBuf {
        self.bpffs.join(&self.pin_dir_name)
    }
}

/// Checks a hub address the way OpenYurt validates `--dummy-if-ip`: an IPv4
/// address must be link-local (169.254.0.0/16), outside 169.254.31.0/24
/// (reserved) and not 169.254.1.1 (Calico's gateway). An IPv6 address (the
/// default is `fd00::2:1`) must be a unicast, non-loopback, non-link-local
/// address: pods reach it from their own network namespace.
pub fn validate_hub_address(ip: IpAddr) -> Result<(), String> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            if (a, b) != (169, 254) {
                return Err(format!("hub address {v4} is not inside 169.254.0.0/16"));
            }
            if c == 31 {
                return Err(format!(
                    "hub address {v4} is inside the reserved 169.254.31.0/24"
                ));
            }
            if (c, d) == (1, 1) {
                return Err(format!(
                    "hub address {v4} is reserved (169.254.1.1 is Calico's gateway)"
                ));
            }
            if d == 0 || d == 255 {
                return Err(format!("hub address {v4} is not a host address"));
            }
            Ok(())
        }
        IpAddr::V6(v6) => {
            if v6.to_ipv4_mapped().is_some() {
                return Err(format!(
                    "hub address {v6} is IPv4-mapped; use the IPv4 address"
                ));
            }
            if v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || v6.is_unicast_link_local()
            {
                return Err(format!(
                    "hub address {v6} must be a unicast address reachable from pods (not ::, ::1, multicast or fe80::/10)"
                ));
            }
            Ok(())
        }
    }
}

/// Checks the configuration and returns the VIPs in canonical form.
pub(super) fn validate(cfg: &Config) -> Result<BTreeSet<SocketAddr>, Error> {
    let invalid = |msg: String| Err(Error::InvalidConfig(msg));
    validate_hub_address(cfg.hub_address).map_err(Error::InvalidConfig)?;
    if cfg.hub_port == 0 {
        return invalid("hub port must not be 0".to_owned());
    }
    if cfg.grace.is_zero() || cfg.grace.as_nanos() > u128::from(MAX_GRACE_NS) {
        return invalid(format!(
            "grace period {:?} must be > 0 and at most 2s",
            cfg.grace
        ));
    }
    if cfg
        .self_check
        .is_some_and(|i| i < Duration::from_millis(100))
    {
        return invalid("self-check interval must be at least 100ms".to_owned());
    }
    if cfg.address_resync.is_zero() {
        return invalid("address resync interval must be > 0".to_owned());
    }
    if cfg.link.is_empty() {
        return invalid("link name must not be empty".to_owned());
    }
    let name = Path::new(&cfg.pin_dir_name);
    if cfg.pin_dir_name.is_empty()
        || name.components().count() != 1
        || cfg.pin_dir_name.contains('/')
        || cfg.pin_dir_name == ".."
        || cfg.pin_dir_name == "."
    {
        return invalid(format!(
            "pin directory name {:?} must be a single path component",
            cfg.pin_dir_name
        ));
    }
    vip_set(cfg.hub_address, &cfg.vips)
}

pub(super) fn vip_set(hub: IpAddr, vips: &[SocketAddr]) -> Result<BTreeSet<SocketAddr>, Error> {
    let mut set = BTreeSet::new();
    for vip in vips.iter().copied().map(ebpf::canonical_vip) {
        if vip.port() == 0 || vip.ip().is_unspecified() {
            return Err(Error::InvalidConfig(format!(
                "VIP {vip} needs an address and a port"
            )));
        }
        if vip.is_ipv4() != hub.is_ipv4() {
            return Err(Error::InvalidConfig(format!(
                "VIP {vip} and hub address {hub} are of different address families; \
                 a connect() cannot be redirected across families"
            )));
        }
        set.insert(vip);
    }
    if set.len() > MAX_VIPS as usize {
        return Err(Error::TooManyVips { max: MAX_VIPS });
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn hub_address_rules_match_openyurt() {
        assert_eq!(
            validate_hub_address(IpAddr::V4(DEFAULT_HUB_ADDRESS_V4)),
            Ok(())
        );
        assert_eq!(
            validate_hub_address(IpAddr::V6(DEFAULT_HUB_ADDRESS_V6)),
            Ok(())
        );
        assert_eq!(validate_hub_address(ip("169.254.30.7")), Ok(()));
        for bad in [
            "10.0.0.1",
            "127.0.0.1",
            "169.253.2.1",
            "169.254.31.1",
            "169.254.31.254",
            "169.254.1.1",
        ] {
            assert!(
                validate_hub_address(ip(bad)).is_err(),
                "{bad} must be rejected"
            );
        }
        for bad in ["::", "::1", "fe80::1", "ff02::1", "::ffff:169.254.2.1"] {
            assert!(
                validate_hub_address(ip(bad)).is_err(),
                "{bad} must be rejected"
            );
        }
        let message = validate_hub_address(ip("169.254.1.1")).expect_err("reserved");
        assert!(message.contains("169.254.1.1"), "{message}");
    }

    #[test]
    fn vip_families_must_match_the_hub() {
        let v4_hub = IpAddr::V4(DEFAULT_HUB_ADDRESS_V4);
        let mapped: SocketAddr = "[::ffff:10.96.0.1]:443".parse().expect("addr");
        let v4: SocketAddr = "10.96.0.1:443".parse().expect("addr");
        let set = vip_set(v4_hub, &[mapped, v4]).expect("mapped VIP is an IPv4 VIP");
        assert_eq!(set.into_iter().collect::<Vec<_>>(), vec![v4]);
        let v6: SocketAddr = "[fd00:96::1]:443".parse().expect("addr");
        let err = vip_set(v4_hub, &[v6]).expect_err("family mismatch");
        assert!(
            err.to_string().contains("different address families"),
            "{err}"
        );
        assert!(vip_set(IpAddr::V6(DEFAULT_HUB_ADDRESS_V6), &[v6]).is_ok());
        assert!(vip_set(v4_hub, &["10.96.0.1:0".parse().expect("addr")]).is_err());
    }

    #[test]
    fn config_validation() {
        let good = Config::new(
            IpAddr::V4(DEFAULT_HUB_ADDRESS_V4),
            10268,
            vec!["10.96.0.1:443".parse().expect("addr")],
        );
        assert!(validate(&good).is_ok());
        type Mutation = fn(&mut Config);
        let cases: [(&str, Mutation); 5] = [
            ("port", |c| c.hub_port = 0),
            ("grace", |c| c.grace = Duration::from_secs(3)),
            ("grace", |c| c.grace = Duration::ZERO),
            ("pin", |c| c.pin_dir_name = "../etc".to_owned()),
            ("pin", |c| c.pin_dir_name = String::new()),
        ];
        for (what, mutate) in cases {
            let mut cfg = good.clone();
            mutate(&mut cfg);
            assert!(
                matches!(validate(&cfg), Err(Error::InvalidConfig(_))),
                "{what} must be rejected"
            );
        }
    }

    #[test]
    fn too_many_vips() {
        let vips: Vec<SocketAddr> = (0..=MAX_VIPS)
            .map(|i| {
                SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(10, 96, 1, u8::try_from(i % 250).expect("u8"))),
                    443 + u16::try_from(i).expect("u16"),
                )
            })
            .collect();
        assert!(matches!(
            vip_set(IpAddr::V4(DEFAULT_HUB_ADDRESS_V4), &vips),
            Err(Error::TooManyVips { .. })
        ));
    }
}

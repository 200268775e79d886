//! The self-check: proves that a connection to each VIP from the pods'
//! cgroup lands on the hub, whatever other programs share the chain.
//!
//! A short-lived probe process is born into `<attach point>/yurthub-probe`
//! (a leaf next to the pods' cgroups, so the same chain runs for it) and into
//! the hub's network namespace, and connects to the VIP. Where the kernel
//! really connected it is read from `/proc/<pid>/net/tcp{,6}` by the socket's
//! inode: unlike `getpeername()`, that table is not rewritten by any
//! program. Landed on the hub address and port: effective. Anywhere else, or
//! no connection: not, with the reason.
//!
//! Only run while the redirect is active (fresh heartbeat), so the probe
//! dials the VIP only when the redirect is expected to catch it. When it does
//! not, the probe reached what pods reach, the real apiserver behind the VIP:
//! one TCP handshake, closed with a reset, nothing sent.

use std::{
    fs::{self, File},
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use serde::Serialize;
use yurthub_ebpf_common::probe::{self, Outcome, Step};

/// Name of the probe's cgroup under an attach point.
pub(crate) const PROBE_CGROUP: &str = "yurthub-probe";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const REPORT_TIMEOUT: Duration = Duration::from_secs(3);
/// At most this many VIPs are probed per run (the cost stays bounded).
const MAX_PROBED: usize = 4;

/// What one probe connection found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProbeResult {
    pub vip: SocketAddr,
    /// Where the kernel connected the probe's socket (None: no connection).
    pub reached: Option<SocketAddr>,
    pub landed_on_hub: bool,
    pub error: Option<String>,
}

/// Probes each VIP (up to a bound) from a process in a leaf cgroup of
/// `attach_point`, in the network namespace `netns`.
pub(crate) fn run(
    attach_point: &Path,
    netns: &File,
    vips: &[SocketAddr],
    hub: SocketAddr,
) -> Result<Vec<ProbeResult>, String> {
    let dir = attach_point.join(PROBE_CGROUP);
    match fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create probe cgroup {}: {e}", dir.display())),
    }
    let results = File::open(&dir)
        .map_err(|e| format!("cannot open probe cgroup {}: {e}", dir.display()))
        .map(|cgroup| {
            vips.iter()
                .take(MAX_PROBED)
                .map(|vip| probe_one(&cgroup, netns, *vip, hub))
                .collect()
        });
    remove_probe_cgroup(&dir);
    results
}

fn probe_one(cgroup: &File, netns: &File, vip: SocketAddr, hub: SocketAddr) -> ProbeResult {
    let failed = |error: String| ProbeResult {
        vip,
        reached: None,
        landed_on_hub: false,
        error: Some(error),
    };
    let child = match probe::spawn_connect(cgroup.as_fd(), netns.as_fd(), vip, CONNECT_TIMEOUT) {
        Ok(child) => child,
        Err(e) => return failed(format!("cannot start the probe process: {e}")),
    };
    let result = match child.outcome(REPORT_TIMEOUT) {
        Ok(Outcome::Connected { fd }) => match peer_of(child.pid(), fd) {
            Ok(reached) => ProbeResult {
                vip,
                reached: Some(reached),
                landed_on_hub: same_endpoint(reached, hub),
                error: None,
            },
            Err(e) => failed(format!("cannot read where the probe connected: {e}")),
        },
        Ok(Outcome::Failed { step, errno }) => {
            let what = match step {
                Step::EnterNetns => "entering the hub's network namespace",
                Step::Socket => "socket()",
                Step::Connect if errno == libc::EINPROGRESS => "connect() (timed out)",
                Step::Connect => "connect()",
            };
            failed(format!(
                "{what} failed: {}",
                std::io::Error::from_raw_os_error(errno)
            ))
        }
        Err(e) => failed(format!("no report from the probe process: {e}")),
    };
    child.finish();
    result
}

/// Compares two endpoints, treating IPv4-mapped IPv6 as IPv4.
fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    a.port() == b.port() && canon(a.ip()) == canon(b.ip())
}

/// The kernel's remote endpoint of socket `fd` of process `pid`.
fn peer_of(pid: i32, fd: i32) -> Result<SocketAddr, String> {
    let link = fs::read_link(format!("/proc/{pid}/fd/{fd}")).map_err(|e| e.to_string())?;
    let link = link.to_string_lossy();
    let inode: u64 = link
        .strip_prefix("socket:[")
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("fd {fd} is not a socket ({link})"))?;
    for table in ["tcp", "tcp6"] {
        let path = PathBuf::from(format!("/proc/{pid}/net/{table}"));
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some(peer) = find_peer(&text, inode) {
            return Ok(peer);
        }
    }
    Err(format!(
        "socket {inode} not found in /proc/{pid}/net/tcp{{,6}}"
    ))
}

/// Finds the `rem_address` of the socket with `inode` in a
/// `/proc/net/tcp{,6}` table.
pub(crate) fn find_peer(table: &str, inode: u64) -> Option<SocketAddr> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(9)?.parse::<u64>().ok()? != inode {
            return None;
        }
        parse_endpoint(fields.get(2)?)
    })
}

/// `0102FEA9:2824` (IPv4) or 32 hex digits and a port (IPv6): each 32-bit
/// word of the network-order address printed as a native integer, the port
/// in host order.
fn parse_endpoint(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut octets = [0u8; 16];
            for i in 0..4 {
                octets[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Removes the probe cgroup; the reaped child may take a moment to leave it.
fn remove_probe_cgroup(dir: &Path) {
    for _ in 0..50 {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == ErrorKind::NotFound => return,
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
    tracing::debug!(dir = %dir.display(), "probe cgroup still busy; reused next time");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_peer_by_inode() {
        let native = |octets: [u8; 4]| format!("{:08X}", u32::from_ne_bytes(octets));
        let table = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
             0: {}:A1B2 {}:2824 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 20 4 30 10 -1\n   \
             1: {}:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0 20 4 30 10 -1\n",
            native([169, 254, 2, 1]),
            native([169, 254, 2, 1]),
            native([127, 0, 0, 1]),
        );
        assert_eq!(
            find_peer(&table, 4242),
            Some("169.254.2.1:10276".parse().expect("addr"))
        );
        assert_eq!(
            find_peer(&table, 77),
            Some("0.0.0.0:0".parse().expect("addr"))
        );
        assert_eq!(find_peer(&table, 5), None);
    }

    #[test]
    fn parses_ipv6_endpoints() {
        let ip: Ipv6Addr = "fd00::2:1".parse().expect("ip");
        let o = ip.octets();
        let text: String = (0..4)
            .map(|i| {
                format!(
                    "{:08X}",
                    u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]])
                )
            })
            .collect();
        assert_eq!(
            parse_endpoint(&format!("{text}:281C")),
            Some(SocketAddr::new(IpAddr::V6(ip), 10268))
        );
    }

    #[test]
    fn mapped_hub_counts_as_the_hub() {
        let hub: SocketAddr = "169.254.2.1:10268".parse().expect("addr");
        assert!(same_endpoint(
            "[::ffff:169.254.2.1]:10268".parse().expect("addr"),
            hub
        ));
        assert!(!same_endpoint(
            "169.254.2.1:443".parse().expect("addr"),
            hub
        ));
    }
}

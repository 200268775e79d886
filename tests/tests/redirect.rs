//! The kernel redirect, end to end and privileged (root, cgroup v2, bpffs):
//! each test builds its own node/pod network namespaces and test cgroup,
//! attaches yurthub's programs to that cgroup only, and proves what a pod
//! process sees when it dials the VIP. Nothing leaves the namespaces.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    os::fd::OwnedFd,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, connect, socket};
use yurthub::redirect::{self, Config, Redirect};
use yurthub_e2e::sandbox::{
    self, BPFFS, Listener, NetSandbox, PinDir, Probe, Side, TestCgroup, probe, read_probe,
    require_bpffs, require_cgroup2, require_root, run_in_child, unique_name, wait_until,
};

const HUB_V4: IpAddr = IpAddr::V4(redirect::DEFAULT_HUB_ADDRESS_V4);
const HUB_V6: IpAddr = IpAddr::V6(redirect::DEFAULT_HUB_ADDRESS_V6);
const HUB_PORT: u16 = 10268;
const VIP_V4: &str = "10.96.0.1:443";
const VIP_V6: &str = "[fd00:96::1]:443";
const CHILD_TIMEOUT: Duration = Duration::from_secs(20);

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// One test's world: namespaces, cgroup, a runtime for the redirect's tasks,
/// and a pin directory that is removed even if the test fails.
struct Env {
    // Fields drop in order: pins first (detaching anything left attached),
    // then listeners, cgroup, namespaces, runtime.
    pins: PinDir,
    listeners: Vec<Listener>,
    cgroup: TestCgroup,
    net: NetSandbox,
    runtime: tokio::runtime::Runtime,
}

impl Env {
    fn new(node_addresses: &[IpAddr]) -> Self {
        require_root();
        require_cgroup2();
        require_bpffs();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        Self {
            pins: PinDir(unique_name("yurthub-test")),
            listeners: Vec::new(),
            cgroup: TestCgroup::new(),
            net: NetSandbox::new(node_addresses),
            runtime,
        }
    }

    /// A configuration attaching to this test's cgroup and pinning under
    /// this test's pin directory.
    fn config(&self, hub: IpAddr, vips: &[&str]) -> Config {
        let mut cfg = Config::new(hub, HUB_PORT, vips.iter().map(|v| addr(v)).collect());
        cfg.cgroup = Some(self.cgroup.path().to_owned());
        cfg.bpffs = PathBuf::from(BPFFS);
        cfg.pin_dir_name = self.pins.0.clone();
        cfg
    }

    fn listen(&mut self, side: Side, at: SocketAddr, banner: &str) {
        self.listeners
            .push(Listener::start(&self.net, side, at, banner));
    }

    /// `Redirect::install` from a thread inside the node namespace (where
    /// the hub address belongs).
    fn try_install(&self, cfg: Config) -> Result<Redirect, redirect::Error> {
        let handle = self.runtime.handle().clone();
        self.net.in_thread(Side::Node, move || {
            handle.block_on(async {
                tokio::time::timeout(Duration::from_secs(30), Redirect::install(cfg))
                    .await
                    .expect("install finishes within 30s")
            })
        })
    }

    fn install(&self, cfg: Config) -> Arc<Redirect> {
        Arc::new(
            self.try_install(cfg)
                .unwrap_or_else(|e| panic!("install failed: {}", chain(&e))),
        )
    }

    fn shutdown(&self, redirect: Arc<Redirect>) {
        let redirect =
            Arc::try_unwrap(redirect).unwrap_or_else(|_| panic!("redirect still shared"));
        self.runtime
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(10), redirect.shutdown()).await
            })
            .expect("shutdown finishes within 10s")
            .unwrap_or_else(|e| panic!("shutdown failed: {}", chain(&e)));
    }

    fn cleanup(&self, cfg: Config) -> redirect::CleanupReport {
        let handle = self.runtime.handle().clone();
        self.net
            .in_thread(Side::Node, move || {
                handle.block_on(async {
                    tokio::time::timeout(Duration::from_secs(10), redirect::cleanup(&cfg))
                        .await
                        .expect("cleanup finishes within 10s")
                })
            })
            .unwrap_or_else(|e| panic!("cleanup failed: {}", chain(&e)))
    }

    /// Connects from a process in the test cgroup and the pod namespace.
    fn pod_probe(&self, to: SocketAddr) -> Result<Probe, String> {
        decode(run_in_child(
            Some(self.cgroup.path()),
            Some(&self.net.path(Side::Pod)),
            CHILD_TIMEOUT,
            move || encode(probe(to)),
        ))
    }

    /// Connects from a thread of the test process (outside the test cgroup)
    /// in the pod namespace.
    fn outside_probe(&self, to: SocketAddr) -> Result<Probe, String> {
        self.net.in_thread(Side::Pod, move || probe(to))
    }

    /// Programs of ours attached to the test cgroup, per `bpftool`.
    fn attached(&self) -> Vec<(String, String)> {
        sandbox::attached_programs(self.cgroup.path())
    }
}

fn encode(result: Result<Probe, String>) -> String {
    match result {
        Ok(p) => format!("OK {}", p.encode()),
        Err(e) => format!("ERR {e}"),
    }
}

fn decode(text: String) -> Result<Probe, String> {
    match text.split_once(' ') {
        Some(("OK", rest)) => Ok(Probe::decode(rest)),
        Some(("ERR", rest)) => Err(rest.to_owned()),
        _ => panic!("malformed child output {text:?}"),
    }
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Calls `heartbeat()` every 100 ms until dropped, like the daemon's
/// serving path.
struct Heartbeat {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Heartbeat {
    fn start(redirect: &Arc<Redirect>) -> Self {
        redirect.heartbeat().expect("first heartbeat");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            let redirect = Arc::clone(redirect);
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    redirect.heartbeat().expect("heartbeat");
                    thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn expect_reached(result: Result<Probe, String>, banner: &str, peer: SocketAddr, what: &str) {
    let probe = result.unwrap_or_else(|e| panic!("{what}: connection failed: {e}"));
    assert_eq!(probe.banner, banner, "{what}: reached the wrong server");
    assert_eq!(
        probe.peer, peer,
        "{what}: getpeername() reported the wrong peer"
    );
}

fn vip_counters(redirect: &Redirect, vip: &str) -> redirect::VipStatus {
    let vip = addr(vip);
    redirect
        .status()
        .vips
        .into_iter()
        .find(|v| v.vip == vip)
        .unwrap_or_else(|| panic!("{vip} missing from status"))
}

// === tests ===

#[test]
fn pod_connection_to_vip_reaches_hub_and_getpeername_shows_vip() {
    let mut env = Env::new(&[addr(VIP_V4).ip()]);
    let redirect = env.install(env.config(HUB_V4, &[VIP_V4]));
    env.listen(Side::Node, SocketAddr::new(HUB_V4, HUB_PORT), "hub");
    env.listen(Side::Node, addr(VIP_V4), "vip");
    let _heartbeat = Heartbeat::start(&redirect);

    expect_reached(
        env.pod_probe(addr(VIP_V4)),
        "hub",
        addr(VIP_V4),
        "pod in cgroup dialling the VIP",
    );
    // Other destinations and ports pass untouched.
    expect_reached(
        env.pod_probe(SocketAddr::new(HUB_V4, HUB_PORT)),
        "hub",
        SocketAddr::new(HUB_V4, HUB_PORT),
        "pod dialling the hub directly",
    );
    let other_port = addr("10.96.0.1:80");
    env.listen(Side::Node, other_port, "vip80");
    expect_reached(
        env.pod_probe(other_port),
        "vip80",
        other_port,
        "pod dialling another VIP port",
    );

    // UDP is never touched: a datagram to VIP:443 arrives at the VIP.
    let received = {
        let (tx, rx) = std::sync::mpsc::channel();
        let server = env.net.in_thread(Side::Node, move || {
            let socket = UdpSocket::bind(addr(VIP_V4)).expect("bind UDP on the VIP");
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            socket
        });
        let sent = run_in_child(
            Some(env.cgroup.path()),
            Some(&env.net.path(Side::Pod)),
            CHILD_TIMEOUT,
            || {
                let socket = UdpSocket::bind("0.0.0.0:0").expect("bind UDP");
                socket.connect(addr(VIP_V4)).expect("connect UDP");
                let peer = socket.peer_addr().expect("UDP peer");
                socket.send(b"ping").expect("send UDP");
                peer.to_string()
            },
        );
        assert_eq!(sent, VIP_V4, "UDP connect() was rewritten");
        thread::spawn(move || {
            let mut buf = [0u8; 16];
            let _ = tx.send(server.recv(&mut buf).map(|n| buf[..n].to_vec()));
        });
        rx.recv_timeout(Duration::from_secs(6))
            .expect("UDP receiver thread")
    };
    assert_eq!(received.expect("UDP datagram reached the VIP"), b"ping");

    let counters = vip_counters(&redirect, VIP_V4);
    assert!(
        counters.redirected >= 1,
        "redirect counter not incremented: {counters:?}"
    );
    let status = redirect.status();
    assert!(
        status.active && status.address_present && status.getpeername,
        "{status:?}"
    );
    assert_eq!(
        status.programs.iter().filter(|p| p.attached).count(),
        4,
        "{status:?}"
    );

    // VIPs are replaced in place.
    redirect
        .set_vips(&[addr("10.96.0.10:443")])
        .expect("set_vips");
    expect_reached(
        env.pod_probe(addr(VIP_V4)),
        "vip",
        addr(VIP_V4),
        "old VIP after set_vips",
    );
    expect_reached(
        env.pod_probe(addr("10.96.0.10:443")),
        "hub",
        addr("10.96.0.10:443"),
        "new VIP after set_vips",
    );

    // Shutdown removes programs, pins and the address.
    drop(_heartbeat);
    env.shutdown(redirect);
    assert!(
        env.attached().is_empty(),
        "programs left attached: {:?}",
        env.attached()
    );
    assert!(
        !env.pins.path().exists(),
        "pins left behind in {}",
        env.pins.path().display()
    );
    assert!(
        !env.net.has_address(Side::Node, HUB_V4),
        "hub address left on lo"
    );
}

#[test]
fn client_outside_the_cgroup_is_not_redirected() {
    let mut env = Env::new(&[addr(VIP_V4).ip()]);
    let redirect = env.install(env.config(HUB_V4, &[VIP_V4]));
    env.listen(Side::Node, SocketAddr::new(HUB_V4, HUB_PORT), "hub");
    env.listen(Side::Node, addr(VIP_V4), "vip");
    let _heartbeat = Heartbeat::start(&redirect);

    expect_reached(
        env.outside_probe(addr(VIP_V4)),
        "vip",
        addr(VIP_V4),
        "client outside the test cgroup",
    );
    // The same destination from inside the cgroup is redirected (control).
    expect_reached(
        env.pod_probe(addr(VIP_V4)),
        "hub",
        addr(VIP_V4),
        "client inside the test cgroup",
    );
}

#[test]
fn ipv6_vip_is_redirected() {
    let mut env = Env::new(&[addr(VIP_V6).ip()]);
    let mut cfg = env.config(HUB_V6, &[VIP_V6]);
    // Also proves the verifier accepts the programs with aya-log enabled.
    cfg.ebpf_log = true;
    let redirect = env.install(cfg);
    env.listen(Side::Node, SocketAddr::new(HUB_V6, HUB_PORT), "hub6");
    env.listen(Side::Node, addr(VIP_V6), "vip6");
    let _heartbeat = Heartbeat::start(&redirect);

    expect_reached(
        env.pod_probe(addr(VIP_V6)),
        "hub6",
        addr(VIP_V6),
        "pod dialling the IPv6 VIP",
    );
    assert!(vip_counters(&redirect, VIP_V6).redirected >= 1);
}

#[test]
fn ipv4_mapped_vip_from_dual_stack_socket_is_redirected() {
    let mut env = Env::new(&[addr(VIP_V4).ip()]);
    let redirect = env.install(env.config(HUB_V4, &[VIP_V4]));
    env.listen(Side::Node, SocketAddr::new(HUB_V4, HUB_PORT), "hub");
    env.listen(Side::Node, addr(VIP_V4), "vip");
    let _heartbeat = Heartbeat::start(&redirect);

    // An AF_INET6 socket dialling ::ffff:10.96.0.1 only runs the IPv6 hook.
    let mapped = addr("[::ffff:10.96.0.1]:443");
    expect_reached(
        env.pod_probe(mapped),
        "hub",
        mapped,
        "dual-stack socket dialling the mapped VIP",
    );
    assert!(vip_counters(&redirect, VIP_V4).redirected >= 1);
}

/// Connects to `to` after marking the socket with
/// `prepare_upstream_socket`, as the daemon's upstream connector does.
fn marked_probe(to: SocketAddr) -> Result<Probe, String> {
    let SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    redirect::prepare_upstream_socket(&fd).map_err(|e| format!("prepare_upstream_socket: {e}"))?;
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(to))
        .map_err(|e| format!("connect {to}: {e}"))?;
    read_probe(TcpStream::from(fd))
}

#[test]
fn hub_marked_sockets_are_not_redirected() {
    let mut env = Env::new(&[addr(VIP_V4).ip()]);
    let redirect = env.install(env.config(HUB_V4, &[VIP_V4]));
    env.listen(Side::Node, SocketAddr::new(HUB_V4, HUB_PORT), "hub");
    env.listen(Side::Node, addr(VIP_V4), "vip");
    let _heartbeat = Heartbeat::start(&redirect);

    // In one process of the test cgroup: a marked socket reaches the real
    // VIP (cloud mode, VIP as upstream: no loop), an unmarked one the hub.
    let out = run_in_child(
        Some(env.cgroup.path()),
        Some(&env.net.path(Side::Pod)),
        CHILD_TIMEOUT,
        || {
            format!(
                "{}\n{}",
                encode(marked_probe(addr(VIP_V4))),
                encode(probe(addr(VIP_V4)))
            )
        },
    );
    let (marked, unmarked) = out.split_once('\n').expect("two results");
    expect_reached(
        decode(marked.to_owned()),
        "vip",
        addr(VIP_V4),
        "socket marked as the hub's own",
    );
    expect_reached(
        decode(unmarked.to_owned()),
        "hub",
        addr(VIP_V4),
        "unmarked socket, same process",
    );
    let counters = vip_counters(&redirect, VIP_V4);
    assert!(
        counters.skipped_own >= 1 && counters.redirected >= 1,
        "{counters:?}"
    );
}

#[test]
fn hub_in_its_own_cgroup_is_never_redirected() {
    let mut env = Env::new(&[addr(VIP_V4).ip()]);
    let hub_cgroup = env.cgroup.child("hub");
    let pods_cgroup = env.cgroup.child("pods");
    // The hub process below adds the address too; the listener needs it now.
    env.net.add_address(Side::Node, HUB_V4);
    env.listen(Side::Node, SocketAddr::new(HUB_V4, HUB_PORT), "hub");
    env.listen(Side::Node, addr(VIP_V4), "vip");
    let cfg = env.config(HUB_V4, &[VIP_V4]);
    let pod_ns = env.net.path(Side::Pod);

    // A real hub process: alone in its cgroup (under the attach point), in
    // the node namespace. Its own unmarked connection to the VIP must reach
    // the VIP, while a pod's is redirected to it.
    let out = run_in_child(
        Some(&hub_cgroup),
        Some(&env.net.path(Side::Node)),
        CHILD_TIMEOUT,
        move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            let redirect = runtime
                .block_on(Redirect::install(cfg))
                .unwrap_or_else(|e| panic!("install in hub process: {}", chain(&e)));
            redirect.heartbeat().expect("heartbeat");
            let exempt = redirect.status().own_sockets.exempt_cgroup;
            let own = encode(probe(addr(VIP_V4)));
            let pod = run_in_child(Some(&pods_cgroup), Some(&pod_ns), CHILD_TIMEOUT, || {
                encode(probe(addr(VIP_V4)))
            });
            runtime.block_on(redirect.shutdown()).expect("shutdown");
            format!(
                "{}\n{own}\n{pod}",
                exempt.map(|p| p.display().to_string()).unwrap_or_default()
            )
        },
    );
    let mut lines = out.lines();
    let exempt = lines.next().expect("exempt cgroup line");
    assert_eq!(
        PathBuf::from(exempt),
        hub_cgroup,
        "the hub's private cgroup must be exempt"
    );
    expect_reached(
        decode(lines.next().expect("own").to_owned()),
        "vip",
        addr(VIP_V4),
        "hub's own socket",
    );
    expect_reached(
        decode(lines.next().expect("pod").to_owned()),
        "hub",
        addr(VIP_V4),
        "pod socket",
    );
}

#[test]
fn fails_open_without_heartbeat_and_resumes() {
    let mut env = Env::new(&[addr(VIP_V4).ip()]);
    let redirect = env.install(env.config(HUB_V4, &[VIP_V4]));
    env.listen(Side::Node, SocketAddr::new(HUB_V4, HUB_PORT), "hub");
    env.listen(Side::Node, addr(VIP_V4), "vip");

    // Installed but not yet heartbeating: nothing is redirected.
    expect_reached(
        env.pod_probe(addr(VIP_V4)),
        "vip",
        addr(VIP_V4),
        "before the first heartbeat",
    );

    let heartbeat = Heartbeat::start(&redirect);
    expect_reached(
        env.pod_probe(addr(VIP_V4)),
        "hub",
        addr(VIP_V4),
        "while heartbeating",
    );

    // Stop heartbeating: within the 2 s grace period (plus the probe's own
    // time) connections go to the original destination again.
    drop(heartbeat);
    let stopped = Instant::now();
    let cgroup = env.cgroup.path().to_owned();
    let pod = env.net.path(Side::Pod);
    let out = run_in_child(Some(&cgroup), Some(&pod), CHILD_TIMEOUT, || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(4) {
            if let Ok(p) = probe(addr(VIP_V4))
                && p.banner == "vip"
            {
                return format!("{}", start.elapsed().as_millis());
            }
            thread::sleep(Duration::from_millis(50));
        }
        "never".to_owned()
    });
    let failed_open_after = stopped.elapsed();
    assert_ne!(
        out, "never",
        "VIP connections still redirected 4s after the last heartbeat"
    );
    assert!(
        failed_open_after <= Duration::from_millis(2_600),
        "fail-open took {failed_open_after:?}, more than the 2s grace period"
    );
    assert!(!redirect.status().active);
    assert!(vip_counters(&redirect, VIP_V4).skipped_stale >= 1);

    // Heartbeats resume: redirected again at once.
    let _heartbeat = Heartbeat::start(&redirect);
    expect_reached(
        env.pod_probe(addr(VIP_V4)),
        "hub",
        addr(VIP_V4),
        "after heartbeats resume",
    );
}

#[test]
fn reinstall_adopts_pinned_links_without_attaching_twice() {
    let mut env = Env::new(&[addr(VIP_V4).ip()]);
    let cfg = env.config(HUB_V4, &[VIP_V4]);
    let first = env.install(cfg.clone());
    let first_links: Vec<Option<u32>> = first.status().programs.iter().map(|p| p.link_id).collect();
    assert!(
        first
            .status()
            .programs
            .iter()
            .all(|p| p.attached && !p.adopted)
    );
    env.listen(Side::Node, SocketAddr::new(HUB_V4, HUB_PORT), "hub");
    env.listen(Side::Node, addr(VIP_V4), "vip");

    // A crashed hub: dropped without shutdown, pins stay, programs stay
    // attached (and fail open, no heartbeat).
    drop(first);
    let links_dir = env.pins.path().join("links");
    assert_eq!(fs::read_dir(&links_dir).expect("pinned links").count(), 4);
    assert_eq!(env.attached().len(), 4, "{:?}", env.attached());
    expect_reached(
        env.pod_probe(addr(VIP_V4)),
        "vip",
        addr(VIP_V4),
        "crashed hub fails open",
    );

    // The next hub adopts the links and swaps its programs in.
    let second = env.install(cfg.clone());
    let status = second.status();
    assert!(
        status.programs.iter().all(|p| p.attached && p.adopted),
        "{status:?}"
    );
    let second_links: Vec<Option<u32>> = status.programs.iter().map(|p| p.link_id).collect();
    assert_eq!(first_links, second_links, "the same links must be reused");
    let attached = env.attached();
    let expected: Vec<(String, String)> = [
        ("yh_connect4", "cgroup_inet4_connect"),
        ("yh_connect6", "cgroup_inet6_connect"),
        ("yh_getpeername4", "cgroup_inet4_getpeername"),
        ("yh_getpeername6", "cgroup_inet6_getpeername"),
    ]
    .iter()
    .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
    .collect();
    assert_eq!(attached, expected, "exactly one attachment per program");
    let program_ids: Vec<Option<u32>> = status.programs.iter().map(|p| p.program_id).collect();
    assert!(program_ids.iter().all(Option::is_some));

    let heartbeat = Heartbeat::start(&second);
    expect_reached(
        env.pod_probe(addr(VIP_V4)),
        "hub",
        addr(VIP_V4),
        "after adoption",
    );
    drop(heartbeat);

    // keep_on_exit leaves everything for the next hub, which adopts again.
    let mut keep = cfg.clone();
    keep.keep_on_exit = true;
    drop(second);
    let third = env.install(keep);
    env.shutdown(third);
    assert_eq!(
        env.attached().len(),
        4,
        "keep_on_exit must leave the programs attached"
    );
    assert!(
        env.net.has_address(Side::Node, HUB_V4),
        "keep_on_exit must leave the address"
    );
    let fourth = env.install(cfg);
    assert!(fourth.status().programs.iter().all(|p| p.adopted));
    assert_eq!(env.attached(), expected);
    env.shutdown(fourth);
    assert!(env.attached().is_empty());
}

#[test]
fn changing_the_cgroup_moves_the_links() {
    let mut env = Env::new(&[addr(VIP_V4).ip()]);
    let first_cgroup = env.cgroup.child("first");
    let second_cgroup = env.cgroup.child("second");
    let mut cfg = env.config(HUB_V4, &[VIP_V4]);
    cfg.cgroup = Some(first_cgroup.clone());
    drop(env.install(cfg.clone()));
    assert_eq!(sandbox::attached_programs(&first_cgroup).len(), 4);

    // The pins now point at links on another cgroup: they are replaced, and
    // the old links detach.
    cfg.cgroup = Some(second_cgroup.clone());
    let redirect = env.install(cfg);
    assert!(
        redirect
            .status()
            .programs
            .iter()
            .all(|p| p.attached && !p.adopted)
    );
    assert!(
        sandbox::attached_programs(&first_cgroup).is_empty(),
        "{:?}",
        sandbox::attached_programs(&first_cgroup)
    );
    assert_eq!(sandbox::attached_programs(&second_cgroup).len(), 4);
    assert_eq!(
        fs::read_dir(env.pins.path().join("links"))
            .expect("links")
            .count(),
        4
    );
    env.shutdown(redirect);
    assert!(sandbox::attached_programs(&second_cgroup).is_empty());
}

#[test]
fn cleanup_removes_everything_and_is_idempotent() {
    let mut env = Env::new(&[addr(VIP_V4).ip()]);
    let cfg = env.config(HUB_V4, &[VIP_V4]);
    let redirect = env.install(cfg.clone());
    env.listen(Side::Node, SocketAddr::new(HUB_V4, HUB_PORT), "hub");
    env.listen(Side::Node, addr(VIP_V4), "vip");
    let heartbeat = Heartbeat::start(&redirect);
    expect_reached(
        env.pod_probe(addr(VIP_V4)),
        "hub",
        addr(VIP_V4),
        "before cleanup",
    );
    drop(heartbeat);
    drop(redirect); // as if the hub had crashed

    let report = env.cleanup(cfg.clone());
    assert_eq!(report.links.len(), 4, "{report:?}");
    assert_eq!(report.maps.len(), 7, "{report:?}");
    assert!(report.address_removed, "{report:?}");
    assert!(
        env.attached().is_empty(),
        "programs left attached: {:?}",
        env.attached()
    );
    assert!(!env.pins.path().exists(), "pin directory left behind");
    assert!(
        !env.net.has_address(Side::Node, HUB_V4),
        "hub address left behind"
    );

    let again = env.cleanup(cfg);
    assert_eq!(
        again,
        redirect::CleanupReport::default(),
        "second cleanup must find nothing"
    );
    expect_reached(
        env.pod_probe(addr(VIP_V4)),
        "vip",
        addr(VIP_V4),
        "after cleanup",
    );
}

#[test]
fn hub_address_is_readded_after_external_delete() {
    let env = Env::new(&[]);
    let mut cfg = env.config(HUB_V4, &[VIP_V4]);
    // Long resync: only the RTM_DELADDR subscription can explain a fast fix.
    cfg.address_resync = Duration::from_secs(300);
    let redirect = env.install(cfg);
    assert!(env.net.has_address(Side::Node, HUB_V4));

    env.net
        .ip(Side::Node, &["addr", "del", "169.254.2.1/32", "dev", "lo"]);
    let took = wait_until(Duration::from_secs(3), || {
        env.net.has_address(Side::Node, HUB_V4)
    })
    .expect("hub address not re-added within 3s of `ip addr del`");
    assert!(redirect.status().address_present, "re-added after {took:?}");
    env.shutdown(redirect);
    assert!(!env.net.has_address(Side::Node, HUB_V4));
}

#[test]
fn missing_prerequisites_give_clear_errors() {
    let env = Env::new(&[]);

    let mut cfg = env.config(HUB_V4, &[VIP_V4]);
    let not_cgroup = std::env::temp_dir();
    cfg.cgroup = Some(not_cgroup.clone());
    let err = env
        .try_install(cfg)
        .err()
        .expect("a non-cgroup directory must be refused");
    assert!(matches!(err, redirect::Error::NotCgroup2 { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&not_cgroup.display().to_string()),
        "{err}"
    );

    let mut cfg = env.config(HUB_V4, &[VIP_V4]);
    let not_bpffs = tempfile::tempdir().expect("tempdir");
    fs::write(not_bpffs.path().join("keep"), "user data").expect("write");
    cfg.bpffs = not_bpffs.path().to_owned();
    let err = env
        .try_install(cfg)
        .err()
        .expect("a non-bpffs, non-empty directory must be refused");
    assert!(matches!(err, redirect::Error::NotBpffs { .. }), "{err:?}");
    assert!(err.to_string().contains("mount -t bpf bpf"), "{err}");
    assert!(
        not_bpffs.path().join("keep").exists(),
        "must not mount over user files"
    );

    let mut cfg = env.config(HUB_V4, &[VIP_V4]);
    cfg.link = "yh-missing0".to_owned();
    let err = env
        .try_install(cfg)
        .err()
        .expect("a missing link must be refused");
    assert!(
        matches!(err, redirect::Error::LinkNotFound { .. }),
        "{err:?}"
    );
    assert!(
        env.attached().is_empty(),
        "nothing may stay attached after a failed install"
    );

    let cfg = env.config(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), &[VIP_V4]);
    let err = env
        .try_install(cfg)
        .err()
        .expect("an invalid hub address must be refused");
    assert!(err.to_string().contains("169.254.0.0/16"), "{err}");

    // Without capabilities (root uid, empty capability sets): EPERM from
    // bpf(2) becomes an actionable PermissionDenied.
    let cfg = env.config(HUB_V4, &[VIP_V4]);
    let out = run_in_child(
        None,
        Some(&env.net.path(Side::Node)),
        CHILD_TIMEOUT,
        move || {
            drop_all_capabilities();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            match runtime.block_on(Redirect::install(cfg)) {
                Ok(_) => "installed without capabilities".to_owned(),
                Err(e) => format!("{e:?}\n{e}"),
            }
        },
    );
    assert!(out.starts_with("PermissionDenied"), "{out}");
    assert!(out.contains("CAP_BPF"), "{out}");
}

/// Clears the effective, permitted and inheritable capability sets of the
/// calling (forked, single-threaded) process.
fn drop_all_capabilities() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset(2) reads a valid header and two data structs.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) };
    assert_eq!(rc, 0, "capset: {}", std::io::Error::last_os_error());
}

//! The redirect next to a CNI's socket load balancer (Cilium's kube-proxy
//! replacement, Calico's eBPF dataplane), with the real daemon, in a
//! sandbox laid out like a node: a test cgroup stands for the cgroup v2 root
//! (`--redirect-cgroup`), pods live in `kubepods.slice/<pod>` under it, and a
//! stand-in socket LB (VIP -> a backend listener in the node namespace) is
//! attached to the root stand-in, before or after the hub, or in the pods'
//! cgroup ahead of it; it is swapped or detached and attached anew while the
//! hub runs; and the hub crashes under it (fail-open to the LB's choice).
//! Privileged; nothing leaves the namespaces: the VIP exists nowhere, the
//! backend only in the node namespace.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use yurthub_e2e::sandbox::node::{
    NodeSide, POD_TOKEN, VIP, hub_get, kubectl_in_pod, redirect_status, wait_for,
};
use yurthub_e2e::sandbox::standin::SocketLb;
use yurthub_e2e::sandbox::{
    self, Listener, NetSandbox, PinDir, Probe, Side, TestCgroup, probe, run_in_child,
};
use yurthub_ebpf_common::link::Order;

const BACKEND: &str = "192.0.2.1:6443";
const BACKEND_AFTER_UPGRADE: &str = "192.0.2.1:6444";
const SELF_CHECK: &str = "--redirect-self-check-interval=2s";

fn v4(s: &str) -> SocketAddrV4 {
    s.parse().expect("IPv4 socket address")
}

/// The sandboxed node: namespaces, the root stand-in cgroup, the pods'
/// cgroups, the LB's backends, and the hub's pins (removed at the end).
struct World {
    // Drop order: pins (detaching the hub's links), listeners, cgroup, net.
    pins: PinDir,
    _backends: Vec<Listener>,
    root: TestCgroup,
    net: NetSandbox,
}

impl World {
    fn new() -> Self {
        sandbox::require_root();
        sandbox::require_cgroup2();
        sandbox::require_bpffs();
        let net = NetSandbox::new(&[]);
        let backends = vec![
            Listener::start(&net, Side::Node, BACKEND.parse().expect("addr"), "backend"),
            Listener::start(
                &net,
                Side::Node,
                BACKEND_AFTER_UPGRADE.parse().expect("addr"),
                "backend-upgraded",
            ),
        ];
        Self {
            pins: PinDir::new("yurthub-coexist"),
            _backends: backends,
            root: TestCgroup::new(),
            net,
        }
    }

    /// Creates `kubepods.slice/<pod>` and returns the pod's cgroup.
    fn pods(&mut self, pod: &str) -> PathBuf {
        if !self.kubepods().exists() {
            self.root.child("kubepods.slice");
        }
        self.root.child(&format!("kubepods.slice/{pod}"))
    }

    fn kubepods(&self) -> PathBuf {
        self.root.path().join("kubepods.slice")
    }

    /// The hub's flags: the VIP, the short self-check interval unless
    /// `extra` sets its own, and `extra`.
    fn hub_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["--apiserver-vip=10.96.0.1:443"];
        if !extra
            .iter()
            .any(|a| a.starts_with("--redirect-self-check-interval"))
        {
            args.push(SELF_CHECK);
        }
        args.extend_from_slice(extra);
        args
    }

    fn start_hub(&self, extra: &[&str]) -> NodeSide {
        let args = Self::hub_args(extra);
        NodeSide::start(&self.net, self.root.path(), &self.pins.0, &args)
    }

    /// The hub as the real binary, a process the test can kill.
    fn start_hub_process(&self, extra: &[&str]) -> NodeSide {
        let args = Self::hub_args(extra);
        NodeSide::start_process(&self.net, self.root.path(), &self.pins.0, &args)
    }

    fn status(&self, node: &NodeSide) -> Value {
        redirect_status(&self.net, node.hub_server)
    }

    /// Waits until the self-check says `effective` (and, when given, has
    /// run more than `after` times); returns the status.
    fn wait_effective(
        &self,
        node: &NodeSide,
        effective: bool,
        after: Option<u64>,
        within: Duration,
    ) -> Value {
        let mut last = Value::Null;
        let start = Instant::now();
        while start.elapsed() < within {
            last = self.status(node);
            let check = &last["self_check"];
            let runs = check["runs"].as_u64().unwrap_or(0);
            if check["effective"] == effective && after.is_none_or(|a| runs > a) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the self-check did not report effective={effective} within {within:?}: {last:#}");
    }

    /// A plain TCP client in `pod`'s cgroup and the pod namespace.
    fn pod_probe(&self, pod: &Path, to: &str) -> Result<Probe, String> {
        let to: SocketAddr = to.parse().expect("addr");
        let out = run_in_child(
            Some(pod),
            Some(&self.net.path(Side::Pod)),
            Duration::from_secs(20),
            move || match probe(to) {
                Ok(p) => format!("OK {}", p.encode()),
                Err(e) => format!("ERR {e}"),
            },
        );
        match out.split_once(' ') {
            Some(("OK", rest)) => Ok(Probe::decode(rest)),
            Some(("ERR", rest)) => Err(rest.to_owned()),
            _ => panic!("malformed probe output {out:?}"),
        }
    }

    /// The pod's in-cluster kubectl: lands on the hub (TLS verified against
    /// the service account's ca.crt) and reaches the double with its token.
    fn kubectl_through_hub(&self, node: &NodeSide, pod: &Path, what: &str) {
        let before = node.api.requests().len();
        let out = kubectl_in_pod(
            &self.net,
            pod,
            node.pki.ca_pem(),
            &["get", "pods", "-o", "name"],
        );
        assert!(
            out.starts_with("exit=0") && out.contains("pod/seen-through-the-vip"),
            "{what}: {out}"
        );
        let seen = node.api.requests();
        assert!(
            seen[before..]
                .iter()
                .any(|r| r.path == "/api/v1/namespaces/default/pods"
                    && r.auth == yurthub_e2e::apiserver::Auth::Bearer(POD_TOKEN.into())),
            "{what}: the double saw the pod's list with its token"
        );
    }
}

fn chain_entries<'a>(status: &'a Value, name: &str) -> Vec<&'a Value> {
    status["chain"]
        .as_array()
        .map(|c| c.iter().filter(|p| p["name"] == name).collect())
        .unwrap_or_default()
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn socket_lb_attached_before_the_hub_at_the_root_loses_to_the_pods_cgroup() {
    let mut world = World::new();
    let pod = world.pods("pod-a");
    // The CNI agent came first: its socket LB at the root rewrites the VIP.
    let mut lb = SocketLb::attach(world.root.path(), v4(VIP), v4(BACKEND), Order::Last);
    assert_eq!(
        world
            .pod_probe(&pod, VIP)
            .expect("the LB's backend answers")
            .banner,
        "backend",
        "without the hub, pods reach what the socket LB chose"
    );

    let mut node = world.start_hub(&["--keep-redirect-on-exit"]);
    let status = world.wait_effective(&node, true, None, Duration::from_secs(30));
    assert_eq!(
        status["attach_points"],
        serde_json::json!([path_str(&world.kubepods())]),
        "the programs go on the pods' parent cgroup: {status:#}"
    );
    let lb_chain = chain_entries(&status, "lb_connect4");
    assert!(
        lb_chain
            .iter()
            .any(|p| p["attached_to"] == path_str(world.root.path())
                && p["order"] == "after"
                && p["hook"] == "connect4"),
        "the LB is listed, attached at the root, after ours: {status:#}"
    );
    assert_eq!(status["connect_programs_before_ours"], 0, "{status:#}");
    assert!(
        status["self_check"]["probes"].as_array().is_some_and(|p| p
            .iter()
            .all(|p| p["landed_on_hub"] == true && p["reached"] == "169.254.2.1:10268")),
        "{status:#}"
    );
    world.kubectl_through_hub(&node, &pod, "LB attached before the hub");
    let metrics = hub_get(&world.net, node.hub_server, "/metrics");
    assert!(
        metrics.contains("node_yurthub_redirect_effective 1"),
        "{metrics}"
    );

    // The agent upgrades and swaps its program while the hub runs: the
    // change is noticed and checked again, and the hub still wins.
    let runs = status["self_check"]["runs"].as_u64().unwrap_or(0);
    lb.replace(v4(BACKEND_AFTER_UPGRADE));
    let status = world.wait_effective(&node, true, Some(runs), Duration::from_secs(5));
    let new_id = lb.program_ids()[0];
    assert!(
        chain_entries(&status, "lb_connect4")
            .iter()
            .any(|p| p["id"] == new_id),
        "the replaced program is listed: {status:#}"
    );
    world.kubectl_through_hub(&node, &pod, "LB replaced while the hub runs");

    // Fail-open: the hub stops (leaving its programs, as a crash would); the
    // pod reaches whatever the socket LB chose within the 2 s grace period.
    node.stop();
    let stopped = Instant::now();
    let mut reached = None;
    while stopped.elapsed() < Duration::from_secs(4) {
        if let Ok(p) = world.pod_probe(&pod, VIP)
            && p.banner == "backend-upgraded"
        {
            reached = Some(stopped.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = reached.expect("the pod never reached the LB's backend after the hub stopped");
    assert!(
        took <= Duration::from_millis(2_600),
        "fail-open took {took:?}, more than the 2 s grace period"
    );
    drop(lb);
}

#[test]
fn socket_lb_attached_after_the_hub_still_loses() {
    let mut world = World::new();
    let pod = world.pods("pod-b");
    let node = world.start_hub(&[]);
    let status = world.wait_effective(&node, true, None, Duration::from_secs(30));
    let runs = status["self_check"]["runs"].as_u64().unwrap_or(0);

    // A CNI agent (re)starting later attaches at the root, even first there.
    let lb = SocketLb::attach(world.root.path(), v4(VIP), v4(BACKEND), Order::First);
    let status = world.wait_effective(&node, true, Some(runs), Duration::from_secs(5));
    assert!(
        chain_entries(&status, "lb_connect4")
            .iter()
            .any(|p| p["order"] == "after" && p["attached_to"] == path_str(world.root.path())),
        "{status:#}"
    );
    world.kubectl_through_hub(&node, &pod, "LB attached after the hub");
    drop(lb);
}

#[test]
fn a_socket_lb_ahead_of_the_hub_in_the_pods_cgroup_is_detected_and_reported() {
    let mut world = World::new();
    let pod = world.pods("pod-c");
    let node = world.start_hub(&[]);
    world.wait_effective(&node, true, None, Duration::from_secs(30));

    // Something attaches first on the pods' cgroup itself: it sees the VIP
    // before the hub can. The hub cannot win that; it must say so, within
    // the self-check interval.
    let attached = Instant::now();
    let lb = SocketLb::attach(&world.kubepods(), v4(VIP), v4(BACKEND), Order::First);
    let status = world.wait_effective(&node, false, None, Duration::from_secs(3));
    assert!(attached.elapsed() <= Duration::from_secs(3));
    let reason = status["self_check"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(BACKEND) && reason.contains("lb_connect4"),
        "the reason names where the probe went and the program before ours: {reason}"
    );
    assert!(
        chain_entries(&status, "lb_connect4")
            .iter()
            .any(|p| p["order"] == "before" && p["attached_to"] == path_str(&world.kubepods())),
        "{status:#}"
    );
    assert!(status["connect_programs_before_ours"].as_u64().unwrap_or(0) >= 1);
    let metrics = hub_get(&world.net, node.hub_server, "/metrics");
    assert!(
        metrics.contains("node_yurthub_redirect_effective 0"),
        "{metrics}"
    );
    assert_eq!(
        world.pod_probe(&pod, VIP).expect("backend").banner,
        "backend",
        "the report is true: pods really bypass the hub"
    );

    // The program goes away: effective again.
    drop(lb);
    world.wait_effective(&node, true, None, Duration::from_secs(5));
    world.kubectl_through_hub(&node, &pod, "after the competing program left");
}

#[test]
fn pods_cgroups_created_after_the_hub_are_followed_across_a_kubelet_restart() {
    let mut world = World::new();
    // A root-level socket LB first, and no kubepods yet: the hub attaches at
    // the root, ahead of the LB there.
    let lb = SocketLb::attach(world.root.path(), v4(VIP), v4(BACKEND), Order::Last);
    let node = world.start_hub(&[]);
    let status = world.wait_effective(&node, true, None, Duration::from_secs(30));
    assert_eq!(
        status["attach_points"],
        serde_json::json!([path_str(world.root.path())]),
        "{status:#}"
    );
    assert!(
        chain_entries(&status, "lb_connect4")
            .iter()
            .any(|p| p["order"] == "after"),
        "first on the shared cgroup: {status:#}"
    );

    // The kubelet creates its pods' cgroup: the links move there.
    let pod = world.pods("pod-d");
    wait_for(
        "the redirect to move to kubepods.slice",
        Duration::from_secs(3),
        || world.status(&node)["attach_points"] == serde_json::json!([path_str(&world.kubepods())]),
    );
    world.kubectl_through_hub(&node, &pod, "pod under a kubepods created after the hub");

    // A kubelet restart that recreates kubepods.slice: followed again.
    std::fs::remove_dir(&pod).expect("remove the pod cgroup");
    std::fs::remove_dir(world.kubepods()).expect("remove kubepods.slice");
    std::fs::create_dir(world.kubepods()).expect("recreate kubepods.slice");
    std::fs::create_dir(&pod).expect("recreate the pod cgroup");
    let kubepods_id =
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(world.kubepods()).expect("stat"));
    wait_for(
        "the redirect to follow the new kubepods.slice",
        Duration::from_secs(3),
        || {
            world.status(&node)["programs"].as_array().is_some_and(|p| {
                p.iter()
                    .filter(|p| p["cgroup"] == path_str(&world.kubepods()))
                    .count()
                    == 4
            }) && std::fs::read_dir(world.pins.path().join("links")).is_ok_and(|d| {
                d.flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .ends_with(&format!("_{kubepods_id}"))
                    })
                    .count()
                    == 4
            })
        },
    );
    world.kubectl_through_hub(&node, &pod, "pod under a recreated kubepods");
    let links = std::fs::read_dir(world.pins.path().join("links"))
        .expect("links")
        .count();
    assert_eq!(links, 4, "the old links were removed");
    drop(lb);
}

#[test]
fn socket_lb_detached_and_attached_anew_while_the_hub_runs_still_loses() {
    let mut world = World::new();
    let pod = world.pods("pod-e");
    // A cgroup under the root that is not the pods': only the LB runs
    // there, so a probe from it shows which LB program is live.
    let system = world.root.child("system.slice");
    let lb = SocketLb::attach(world.root.path(), v4(VIP), v4(BACKEND), Order::Last);
    // The periodic self-check is far away: a check within seconds of a
    // change can only come from the hub noticing that change.
    let node = world.start_hub(&["--redirect-self-check-interval=600s"]);
    let status = world.wait_effective(&node, true, None, Duration::from_secs(30));
    let old_ids = lb.program_ids();
    assert!(
        chain_entries(&status, "lb_connect4")
            .iter()
            .any(|p| p["id"] == old_ids[0] && p["order"] == "after"),
        "the first LB is listed after ours: {status:#}"
    );
    world.kubectl_through_hub(&node, &pod, "before the LB was replaced");

    // The CNI agent stops: its links close and its programs leave the root.
    let runs = status["self_check"]["runs"].as_u64().unwrap_or(0);
    drop(lb);
    let status = world.wait_effective(&node, true, Some(runs), Duration::from_secs(5));
    assert!(
        chain_entries(&status, "lb_connect4").is_empty()
            && chain_entries(&status, "lb_getpeername4").is_empty(),
        "the detached LB is no longer listed: {status:#}"
    );

    // It comes back with freshly loaded programs, attached anew at the root
    // and first there (as a restarted agent may), with another backend.
    let runs = status["self_check"]["runs"].as_u64().unwrap_or(0);
    let lb = SocketLb::attach(
        world.root.path(),
        v4(VIP),
        v4(BACKEND_AFTER_UPGRADE),
        Order::First,
    );
    let new_ids = lb.program_ids();
    assert!(
        new_ids.iter().all(|id| !old_ids.contains(id)),
        "new programs: {old_ids:?} -> {new_ids:?}"
    );
    assert_eq!(
        world
            .pod_probe(&system, VIP)
            .expect("the new LB's backend answers")
            .banner,
        "backend-upgraded",
        "the new LB is live at the root"
    );
    let status = world.wait_effective(&node, true, Some(runs), Duration::from_secs(5));
    let root = path_str(world.root.path());
    for (name, hook, id) in [
        ("lb_connect4", "connect4", new_ids[0]),
        ("lb_getpeername4", "getpeername4", new_ids[1]),
    ] {
        let entries = chain_entries(&status, name);
        assert!(
            entries.iter().any(|p| p["id"] == id
                && p["hook"] == hook
                && p["attached_to"] == root
                && p["order"] == "after"),
            "the new {name} (id {id}) is listed at the root, after ours: {status:#}"
        );
        assert!(
            entries.iter().all(|p| p["id"]
                .as_u64()
                .is_some_and(|i| !old_ids.contains(&(i as u32)))),
            "the old {name} is gone from the listing: {status:#}"
        );
    }
    assert_eq!(status["connect_programs_before_ours"], 0, "{status:#}");
    assert!(
        status["self_check"]["probes"]
            .as_array()
            .is_some_and(|p| !p.is_empty()
                && p.iter()
                    .all(|p| p["landed_on_hub"] == true && p["reached"] == "169.254.2.1:10268")),
        "{status:#}"
    );
    let metrics = hub_get(&world.net, node.hub_server, "/metrics");
    assert!(
        metrics.contains("node_yurthub_redirect_effective 1"),
        "{metrics}"
    );
    world.kubectl_through_hub(&node, &pod, "after the LB was attached anew");
    drop(lb);
}

/// The redirect's grace period: programs redirect while the last heartbeat
/// is at most this old.
const GRACE: Duration = Duration::from_secs(2);
/// What measuring adds to it: one probe interval and the probe's own time.
const MEASURING: Duration = Duration::from_millis(300);

#[test]
fn fail_open_holds_next_to_a_socket_lb_when_the_hub_crashes() {
    let mut world = World::new();
    let pod = world.pods("pod-f");
    let lb = SocketLb::attach(world.root.path(), v4(VIP), v4(BACKEND), Order::Last);
    // The real binary, without --keep-redirect-on-exit: a crash runs no
    // cleanup either way, and leaves the pinned links attached.
    let mut node = world.start_hub_process(&[]);
    world.wait_effective(&node, true, None, Duration::from_secs(45));
    world.kubectl_through_hub(&node, &pod, "before the crash");

    let killed = Instant::now();
    let exit = node.kill();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&exit),
        Some(libc::SIGKILL),
        "the hub died of SIGKILL: {exit:?}"
    );
    // One process in the pod probes the VIP every 20 ms until the LB's
    // backend answers (no fork per attempt, so the timing is the kernel's).
    let offset = killed.elapsed();
    let out = run_in_child(
        Some(&pod),
        Some(&world.net.path(Side::Pod)),
        Duration::from_secs(20),
        || {
            let start = Instant::now();
            let vip: SocketAddr = VIP.parse().expect("addr");
            let mut misses = Vec::new();
            while start.elapsed() < Duration::from_secs(5) {
                match probe(vip) {
                    Ok(p) if p.banner == "backend" => {
                        return format!(
                            "OK {} {} {:?}",
                            start.elapsed().as_millis(),
                            p.encode(),
                            misses
                        );
                    }
                    Ok(p) => misses.push(p.banner),
                    Err(e) => misses.push(e),
                }
                misses.dedup();
                std::thread::sleep(Duration::from_millis(20));
            }
            format!("NEVER {misses:?}")
        },
    );
    let mut fields = out.splitn(5, ' ');
    assert_eq!(
        fields.next(),
        Some("OK"),
        "the pod never reached the LB's backend after the crash: {out}\n{}",
        node.log()
    );
    let ms: u64 = fields
        .next()
        .and_then(|m| m.parse().ok())
        .expect("elapsed ms");
    let reached = Probe::decode(&format!(
        "{} {}",
        fields.next().unwrap_or_default(),
        fields.next().unwrap_or_default()
    ));
    let misses = fields.next().unwrap_or_default();
    let took = offset + Duration::from_millis(ms);
    assert!(
        took <= GRACE + MEASURING,
        "fail-open took {took:?} after the kill, more than the {GRACE:?} grace period \
         (before: {misses})"
    );
    assert_eq!(
        reached.peer,
        VIP.parse::<SocketAddr>().expect("addr"),
        "getpeername() shows what the pod dialed, as the LB reports it"
    );

    // It failed open because the heartbeat went stale, not because the
    // programs went away: they and their pins are still there.
    let ours = sandbox::attached_programs(&world.kubepods());
    assert_eq!(
        ours.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        [
            "yh_connect4",
            "yh_connect6",
            "yh_getpeername4",
            "yh_getpeername6"
        ],
        "the crashed hub's programs stay attached to the pods' cgroup"
    );
    assert_eq!(
        std::fs::read_dir(world.pins.path().join("links"))
            .expect("the crashed hub's pinned links")
            .count(),
        4
    );
    eprintln!("fail-open after the kill: {took:?} (before it: {misses})");
    drop(lb);
}

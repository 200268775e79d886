//! A two-namespace network sandbox: a "node" namespace (where the hub
//! address and the VIP stand-ins live, on its `lo`) and a "pod" namespace
//! linked to it by a veth pair, with its default routes via the node. The
//! node namespace has no other interface and no default route, so nothing
//! can leave the machine. Addresses are from documentation/private ranges
//! and exist only inside the namespaces.
//!
//! Namespaces are created with `ip netns add` (bind mounts under
//! /var/run/netns). They are entered with `setns(2)` per thread, never with
//! `ip netns exec`, which remounts /sys and hides the cgroup2 mount.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::Command,
    thread,
};

use nix::sched::{CloneFlags, setns};

use super::unique_name;

/// Node side of the veth.
pub const NODE_VETH_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Pod side of the veth.
pub const POD_VETH_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const NODE_VETH_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x192, 0, 0, 0, 0, 0, 1);
pub const POD_VETH_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x192, 0, 0, 0, 0, 0, 2);

/// Which side of the sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Node,
    Pod,
}

/// The node/pod namespace pair; deleted on drop (which removes the veth).
#[derive(Debug)]
pub struct NetSandbox {
    node: String,
    pod: String,
}

fn run(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` (install iproute2: `cargo xtask setup`): {e}"));
    assert!(
        output.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

impl NetSandbox {
    /// Builds the sandbox. `node_addresses` go on the node's `lo` (the VIP
    /// stand-ins; the hub address is yurthub's to add).
    pub fn new(node_addresses: &[IpAddr]) -> Self {
        let base = unique_name("yh");
        let sandbox = Self {
            node: format!("{base}-node"),
            pod: format!("{base}-pod"),
        };
        let (node, pod) = (sandbox.node.as_str(), sandbox.pod.as_str());
        run(&["netns", "add", node]);
        run(&["netns", "add", pod]);
        run(&[
            "-n", node, "link", "add", "vn", "type", "veth", "peer", "name", "vp", "netns", pod,
        ]);
        for (ns, dev) in [(node, "lo"), (node, "vn"), (pod, "lo"), (pod, "vp")] {
            run(&["-n", ns, "link", "set", dev, "up"]);
        }
        run(&[
            "-n",
            node,
            "addr",
            "add",
            &format!("{NODE_VETH_V4}/30"),
            "dev",
            "vn",
        ]);
        run(&[
            "-n",
            pod,
            "addr",
            "add",
            &format!("{POD_VETH_V4}/30"),
            "dev",
            "vp",
        ]);
        run(&[
            "-n",
            node,
            "addr",
            "add",
            &format!("{NODE_VETH_V6}/64"),
            "dev",
            "vn",
            "nodad",
        ]);
        run(&[
            "-n",
            pod,
            "addr",
            "add",
            &format!("{POD_VETH_V6}/64"),
            "dev",
            "vp",
            "nodad",
        ]);
        run(&[
            "-n",
            pod,
            "route",
            "add",
            "default",
            "via",
            &NODE_VETH_V4.to_string(),
        ]);
        run(&[
            "-n",
            pod,
            "-6",
            "route",
            "add",
            "default",
            "via",
            &NODE_VETH_V6.to_string(),
        ]);
        for address in node_addresses {
            sandbox.add_address(Side::Node, *address);
        }
        sandbox
    }

    pub fn name(&self, side: Side) -> &str {
        match side {
            Side::Node => &self.node,
            Side::Pod => &self.pod,
        }
    }

    /// The namespace's bind mount, for `setns(2)` or `nsenter --net=`.
    pub fn path(&self, side: Side) -> PathBuf {
        PathBuf::from("/var/run/netns").join(self.name(side))
    }

    /// Runs `ip -n <side> <args>` and returns stdout; panics on failure.
    pub fn ip(&self, side: Side, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name(side)];
        full.extend_from_slice(args);
        let output = Command::new("ip").args(&full).output().expect("run ip");
        assert!(
            output.status.success(),
            "`ip {}` failed: {}",
            full.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Adds a host address (/32 or /128) on the side's `lo`.
    pub fn add_address(&self, side: Side, address: IpAddr) {
        let prefix = if address.is_ipv4() { 32 } else { 128 };
        self.ip(
            side,
            &["addr", "add", &format!("{address}/{prefix}"), "dev", "lo"],
        );
    }

    /// Whether `address` is on the side's `lo`.
    pub fn has_address(&self, side: Side, address: IpAddr) -> bool {
        let out = self.ip(side, &["-o", "addr", "show", "dev", "lo"]);
        out.split_whitespace()
            .any(|word| word.split('/').next() == Some(address.to_string().as_str()))
    }

    /// Moves the calling thread into the side's network namespace.
    pub fn enter(&self, side: Side) {
        let path = self.path(side);
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        setns(&file, CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns into {}: {e}", path.display()));
    }

    /// Runs `f` on a new thread inside the side's namespace and returns its
    /// result (the test process's cgroup is unchanged: threads cannot move
    /// alone between non-threaded cgroups).
    pub fn in_thread<T, F>(&self, side: Side, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let path = self.path(side);
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns into {}: {e}", path.display()));
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for NetSandbox {
    fn drop(&mut self) {
        let mut errors = Vec::new();
        for ns in [&self.pod, &self.node] {
            match Command::new("ip").args(["netns", "del", ns]).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => errors.push(format!(
                    "ip netns del {ns}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => errors.push(format!("ip netns del {ns}: {e}")),
            }
        }
        if !errors.is_empty() && !thread::panicking() {
            panic!("{}", errors.join("; "));
        }
    }
}

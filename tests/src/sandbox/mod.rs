//! Sandboxes for privileged tests: a test cgroup ([`TestCgroup`]), a
//! node/pod network namespace pair ([`NetSandbox`]), the preconditions
//! ([`require_root`], [`require_cgroup2`], [`require_bpffs`]), and ways to
//! run code inside them:
//! - [`NetSandbox::in_thread`]: a thread in a namespace (same cgroup as the
//!   test process);
//! - [`run_in_child`]: a forked process that joins a cgroup first, then the
//!   namespace — cgroup membership is per process, so this is the only way to
//!   put a client (and only it) into a test cgroup;
//! - [`Listener`] and [`probe`]: banner servers and clients that report
//!   which server they reached and what `getpeername()` said.
//!
//! Every guard cleans up on drop, also while unwinding from a failed test.

mod cgroup;
mod netns;
pub mod node;
mod privileged;
pub mod standin;

use std::{
    fs::{File, OpenOptions},
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::OwnedFd,
    panic::AssertUnwindSafe,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use nix::{
    sched::{CloneFlags, setns},
    sys::{
        signal::{Signal, kill},
        wait::{WaitStatus, waitpid},
    },
    unistd::{ForkResult, fork, pipe},
};

pub use cgroup::TestCgroup;
pub use netns::{NODE_VETH_V4, NODE_VETH_V6, NetSandbox, POD_VETH_V4, POD_VETH_V6, Side};
pub use privileged::{BPFFS, require_bpffs, require_cgroup2, require_root};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// `<prefix>-<pid>-<n>`: unique per process and call.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Runs `f` in a forked child that first joins `cgroup` (if any), then
/// enters `netns` (if any), and returns what `f` returned. Panics (with the
/// child's panic message) if `f` panics, and kills the child if it takes
/// longer than `timeout`.
///
/// The child is a fork of a multi-threaded test process: only the calling
/// thread exists in it, so `f` should do plain work (sockets, files, a fresh
/// tokio runtime) and not rely on locks other threads may have held.
pub fn run_in_child<F>(
    cgroup: Option<&Path>,
    netns: Option<&Path>,
    timeout: Duration,
    f: F,
) -> String
where
    F: FnOnce() -> String,
{
    // Everything that can fail is opened before forking.
    let procs = cgroup.map(|c| {
        OpenOptions::new()
            .write(true)
            .open(c.join("cgroup.procs"))
            .unwrap_or_else(|e| panic!("open {}/cgroup.procs: {e}", c.display()))
    });
    let ns = netns.map(|n| File::open(n).unwrap_or_else(|e| panic!("open {}: {e}", n.display())));
    let (read_end, write_end) = pipe().expect("pipe");

    // SAFETY: the child only runs `child_main`, which ends in `_exit`; see
    // the caveat on multi-threaded forking in the doc comment.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            drop(read_end);
            child_main(procs, ns, write_end, f)
        }
        ForkResult::Parent { child } => {
            drop(write_end);
            let (tx, rx) = mpsc::channel();
            let reader = thread::spawn(move || {
                let mut out = Vec::new();
                let _ = File::from(read_end).read_to_end(&mut out);
                let _ = tx.send(out);
            });
            let output = match rx.recv_timeout(timeout) {
                Ok(out) => out,
                Err(_) => {
                    let _ = kill(child, Signal::SIGKILL);
                    let _ = waitpid(child, None);
                    let _ = reader.join();
                    panic!("child process did not finish within {timeout:?} (killed)");
                }
            };
            let _ = reader.join();
            let status = waitpid(child, None).expect("waitpid");
            let output = String::from_utf8_lossy(&output).into_owned();
            match status {
                WaitStatus::Exited(_, 0) => output,
                other => panic!("child process failed ({other:?}): {output}"),
            }
        }
    }
}

fn child_main<F>(procs: Option<File>, ns: Option<File>, out: OwnedFd, f: F) -> !
where
    F: FnOnce() -> String,
{
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        if let Some(mut procs) = procs {
            // "0" moves the writing process (and only it).
            procs.write_all(b"0").expect("join test cgroup");
        }
        if let Some(ns) = ns {
            setns(&ns, CloneFlags::CLONE_NEWNET).expect("enter network namespace");
        }
        f()
    }));
    let (code, message) = match result {
        Ok(message) => (0, message),
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "child panicked".to_owned());
            (101, text)
        }
    };
    let _ = File::from(out).write_all(message.as_bytes());
    // SAFETY: terminates the forked child without running the parent's
    // exit handlers or destructors.
    unsafe { libc::_exit(code) }
}

// === listeners and clients ===

/// A TCP server on its own thread (inside a namespace) that answers every
/// connection with `<banner>\n` and closes it. Stops on drop.
pub struct Listener {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Listener {
    pub fn start(sandbox: &NetSandbox, side: Side, addr: SocketAddr, banner: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let path = sandbox.path(side);
        let ns = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let banner = format!("{banner}\n");
        let thread = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                setns(&ns, CloneFlags::CLONE_NEWNET).expect("enter network namespace");
                let listener = match TcpListener::bind(addr) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("bind {addr}: {e}")));
                        return;
                    }
                };
                listener
                    .set_nonblocking(true)
                    .expect("nonblocking listener");
                let _ = ready_tx.send(Ok(()));
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.write_all(banner.as_bytes());
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("listener: {e}"),
            Err(_) => panic!("listener on {addr} did not start"),
        }
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a client saw: the banner of the server it reached, and the peer
/// address `getpeername()` reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub banner: String,
    pub peer: SocketAddr,
}

impl Probe {
    /// `"<banner> <peer>"`, to pass through a child process.
    pub fn encode(&self) -> String {
        format!("{} {}", self.banner, self.peer)
    }

    pub fn decode(text: &str) -> Self {
        let (banner, peer) = text
            .trim()
            .split_once(' ')
            .unwrap_or_else(|| panic!("malformed probe result {text:?}"));
        Self {
            banner: banner.to_owned(),
            peer: peer
                .parse()
                .unwrap_or_else(|e| panic!("malformed peer in {text:?}: {e}")),
        }
    }
}

/// Reads the banner from a connected stream.
pub fn read_probe(mut stream: TcpStream) -> Result<Probe, String> {
    let peer = stream
        .peer_addr()
        .map_err(|e| format!("getpeername: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut banner = String::new();
    stream
        .read_to_string(&mut banner)
        .map_err(|e| format!("read banner from {peer}: {e}"))?;
    Ok(Probe {
        banner: banner.trim().to_owned(),
        peer,
    })
}

/// Connects to `addr` (2 s timeout) and reports what it reached.
pub fn probe(addr: SocketAddr) -> Result<Probe, String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    read_probe(stream)
}

/// A pin directory `<bpffs>/<name>`, removed on drop (unpinning detaches
/// whatever a failed test left attached).
pub struct PinDir(pub String);

impl PinDir {
    /// A fresh, unique name under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self(unique_name(prefix))
    }

    pub fn path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(BPFFS).join(&self.0)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.path());
    }
}

/// Polls `condition` every 50 ms until it holds or `limit` passes; returns
/// the time it took, or `None`.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if condition() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= limit {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `(name, attach_type)` of the `yh_*` programs attached to `cgroup`.
pub fn attached_programs(cgroup: &std::path::Path) -> Vec<(String, String)> {
    let output = std::process::Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("run bpftool (install it: `cargo xtask setup`)");
    assert!(
        output.status.success(),
        "bpftool failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    if text.trim().is_empty() {
        return Vec::new();
    }
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text).expect("bpftool JSON");
    let mut ours: Vec<(String, String)> = entries
        .iter()
        .filter_map(|e| {
            let name = e["name"].as_str()?;
            name.starts_with("yh_").then(|| {
                (
                    name.to_owned(),
                    e["attach_type"].as_str().unwrap_or("?").to_owned(),
                )
            })
        })
        .collect();
    ours.sort();
    ours
}

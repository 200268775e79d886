//! A short-lived child process, born into a given cgroup and network
//! namespace, that opens one TCP connection and holds it until told to exit.
//!
//! Which cgroup/connect programs run for a socket depends on the cgroup of
//! the task that created it, and cgroup v2 moves whole processes only (a
//! thread cannot leave its process's cgroup). So proving that "a connection
//! from the pods' cgroup lands on the hub" needs a process in that cgroup:
//! `clone3(CLONE_INTO_CGROUP)` creates it there directly, with no window
//! where it runs elsewhere. Its signal handlers are reset
//! (`CLONE_CLEAR_SIGHAND`, so a signal never runs the parent's handlers) and
//! it dies with the parent (`PR_SET_PDEATHSIG`).
//!
//! The child is a copy of a multi-threaded process: between `clone3` and
//! `_exit` it only makes plain system calls, no allocation and no locks.
//! The parent inspects the held socket through `/proc/<pid>/` while the
//! child waits, then closes the "go" pipe and reaps it.

use core::ffi::{c_int, c_void};
use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    time::Duration,
};

const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const _: () = assert!(core::mem::size_of::<CloneArgs>() == 88);

/// Which step of the child failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    EnterNetns,
    Socket,
    Connect,
}

/// What the child reports once its `connect()` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Connected; the socket is file descriptor `fd` of the child.
    Connected { fd: i32 },
    /// `step` failed with `errno` (`EINPROGRESS` from `connect` means the
    /// timeout passed).
    Failed { step: Step, errno: i32 },
}

/// The running child. Dropping it kills and reaps the child.
#[derive(Debug)]
pub struct ProbeChild {
    pid: libc::pid_t,
    report: OwnedFd,
    go: Option<OwnedFd>,
    reaped: bool,
}

struct Encoded {
    family: c_int,
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

fn encode(addr: SocketAddr) -> Encoded {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
    match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { core::ptr::write(core::ptr::from_mut(&mut storage).cast(), sin) };
            Encoded {
                family: libc::AF_INET,
                storage,
                len: core::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            }
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { core::ptr::write(core::ptr::from_mut(&mut storage).cast(), sin6) };
            Encoded {
                family: libc::AF_INET6,
                storage,
                len: core::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            }
        }
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two new descriptors nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// What the child needs, prepared before `clone3`.
struct ChildPlan<'a> {
    parent: libc::pid_t,
    report_r: &'a OwnedFd,
    report_w: &'a OwnedFd,
    go_r: &'a OwnedFd,
    go_w: &'a OwnedFd,
    netns: BorrowedFd<'a>,
    target: &'a Encoded,
    timeout: &'a libc::timeval,
}

/// Starts a child in `cgroup` (an open cgroup v2 directory) that enters
/// `netns` (an open network namespace) and connects a TCP socket to `addr`,
/// giving up after `timeout`.
pub fn spawn_connect(
    cgroup: BorrowedFd<'_>,
    netns: BorrowedFd<'_>,
    addr: SocketAddr,
    timeout: Duration,
) -> io::Result<ProbeChild> {
    let target = encode(addr);
    let timeout = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    let (report_r, report_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    // SAFETY: plain system call.
    let parent = unsafe { libc::getpid() };
    let plan = ChildPlan {
        parent,
        report_r: &report_r,
        report_w: &report_w,
        go_r: &go_r,
        go_w: &go_w,
        netns,
        target: &target,
        timeout: &timeout,
    };
    let mut args = CloneArgs {
        flags: CLONE_INTO_CGROUP | CLONE_CLEAR_SIGHAND,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd().unsigned_abs().into(),
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM duplicates the calling thread into a
    // new process, like fork. The child branch only makes system calls on
    // values prepared before the call and ends in `_exit`.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            core::ptr::from_mut(&mut args),
            core::mem::size_of::<CloneArgs>(),
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        child(&plan);
    }
    drop(report_w);
    drop(go_r);
    Ok(ProbeChild {
        pid: libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?,
        report: report_r,
        go: Some(go_w),
        reaped: false,
    })
}

fn child(plan: &ChildPlan<'_>) -> ! {
    // SAFETY (whole function): only system calls on descriptors and memory
    // that were valid in the parent and are copies in this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != plan.parent {
            libc::_exit(1);
        }
        libc::close(plan.report_r.as_raw_fd());
        libc::close(plan.go_w.as_raw_fd());
        let failed = |step: i32| [step, *libc::__errno_location(), -1];
        let message: [i32; 3] = if libc::setns(plan.netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
            failed(1)
        } else {
            let fd = libc::socket(
                plan.target.family,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                libc::IPPROTO_TCP,
            );
            if fd < 0 {
                failed(2)
            } else {
                // RST on close: nothing lingers at whatever was reached.
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    core::ptr::from_ref(&linger).cast::<c_void>(),
                    core::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
                // A blocking connect honours the send timeout (EINPROGRESS).
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_SNDTIMEO,
                    core::ptr::from_ref(plan.timeout).cast::<c_void>(),
                    core::mem::size_of::<libc::timeval>() as libc::socklen_t,
                );
                if libc::connect(
                    fd,
                    core::ptr::from_ref(&plan.target.storage).cast::<libc::sockaddr>(),
                    plan.target.len,
                ) != 0
                {
                    failed(3)
                } else {
                    [0, 0, fd]
                }
            }
        };
        libc::write(
            plan.report_w.as_raw_fd(),
            message.as_ptr().cast::<c_void>(),
            core::mem::size_of_val(&message),
        );
        // Hold the socket until the parent closes its end (or dies).
        let mut byte = 0u8;
        libc::read(
            plan.go_r.as_raw_fd(),
            core::ptr::from_mut(&mut byte).cast(),
            1,
        );
        libc::_exit(0)
    }
}

impl ProbeChild {
    /// The child's pid (for `/proc/<pid>/...`).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits up to `within` for the child's report.
    pub fn outcome(&self, within: Duration) -> io::Result<Outcome> {
        let mut poll = libc::pollfd {
            fd: self.report.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = c_int::try_from(within.as_millis()).unwrap_or(c_int::MAX);
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, ms) };
        if ready < 0 {
            return Err(io::Error::last_os_error());
        }
        if ready == 0 {
            return Err(io::Error::from(io::ErrorKind::TimedOut));
        }
        let mut message = [0i32; 3];
        // SAFETY: reads at most the size of `message` into it.
        let n = unsafe {
            libc::read(
                self.report.as_raw_fd(),
                message.as_mut_ptr().cast::<c_void>(),
                core::mem::size_of_val(&message),
            )
        };
        if usize::try_from(n).ok() != Some(core::mem::size_of_val(&message)) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the probe process exited without a report",
            ));
        }
        let step = match message[0] {
            0 => return Ok(Outcome::Connected { fd: message[2] }),
            1 => Step::EnterNetns,
            2 => Step::Socket,
            _ => Step::Connect,
        };
        Ok(Outcome::Failed {
            step,
            errno: message[1],
        })
    }

    /// Lets the child exit and reaps it.
    pub fn finish(mut self) {
        self.go = None;
        self.reap();
    }

    fn reap(&mut self) {
        if self.reaped {
            return;
        }
        self.reaped = true;
        let mut status = 0;
        for _ in 0..8 {
            // SAFETY: waits for our own child.
            let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if r >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
    }
}

impl Drop for ProbeChild {
    fn drop(&mut self) {
        if !self.reaped {
            self.go = None;
            // SAFETY: signals our own, not yet reaped, child.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            self.reap();
        }
    }
}

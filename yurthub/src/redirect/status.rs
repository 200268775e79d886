//! What [`super::Redirect::status`] and [`super::cleanup`] report
//! (serialisable for the hub server and metrics).

use std::{net::SocketAddr, path::PathBuf};

use serde::Serialize;

pub use super::chain::ChainProgram;
pub use super::selfcheck::ProbeResult;

/// What the redirect is doing, for `/v1/status`-like endpoints and metrics.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// The configured cgroup (`--redirect-cgroup`, default the v2 root),
    /// under which the pods' parent cgroups are looked for.
    pub cgroup: PathBuf,
    /// Where the programs are attached: the pods' parent cgroups
    /// (`kubepods`, `kubepods.slice`, ...) directly under `cgroup`, or
    /// `cgroup` itself when there are none. Followed as they come and go.
    pub attach_points: Vec<PathBuf>,
    /// Every cgroup/connect4/6 and getpeername4/6 program in the effective
    /// chain of each attach point, in run order, ours included.
    pub chain: Vec<ChainProgram>,
    /// Other programs on a connect hook that run before ours: they see the
    /// VIP first (a socket load balancer there wins).
    pub connect_programs_before_ours: usize,
    pub self_check: SelfCheck,
    /// Where redirected connections go.
    pub hub: SocketAddr,
    pub link: String,
    /// Whether the hub address was on the link at the last check.
    pub address_present: bool,
    pub pin_dir: PathBuf,
    pub programs: Vec<ProgramStatus>,
    /// `getpeername()` reports the VIP (false on kernels before 5.8).
    pub getpeername: bool,
    pub own_sockets: OwnSockets,
    pub vips: Vec<VipStatus>,
    /// Age of the last heartbeat; `None` before the first one.
    pub heartbeat_age_ms: Option<u64>,
    pub grace_ms: u64,
    /// Currently redirecting (a fresh heartbeat).
    pub active: bool,
}

/// The last self-check: does a connection from the pods' cgroup to the VIP
/// land on the hub?
#[derive(Clone, Debug, Default, Serialize)]
pub struct SelfCheck {
    /// Checks are configured (an interval is set).
    pub enabled: bool,
    pub interval_ms: Option<u64>,
    /// Runs so far (at start, after every change of the chains or attach
    /// points, and every interval).
    pub runs: u64,
    pub last_run_ms_ago: Option<u64>,
    /// `Some(true)`: the last check proved every probed VIP lands on the
    /// hub. `Some(false)`: it did not (see `reason`). `None`: not checked.
    pub effective: Option<bool>,
    pub reason: Option<String>,
    pub probes: Vec<ProbeResult>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProgramStatus {
    pub name: &'static str,
    /// The cgroup this attachment is on.
    pub cgroup: Option<PathBuf>,
    /// `first` (attached before the programs already on that cgroup, Linux
    /// 6.16+) or `last`; `None` when adopted or not attached.
    pub order: Option<&'static str>,
    pub attached: bool,
    /// Took over a link pinned by an earlier daemon.
    pub adopted: bool,
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
    pub note: Option<String>,
}

/// How the hub's own sockets are kept out of the redirect.
#[derive(Clone, Debug, Serialize)]
pub struct OwnSockets {
    /// [`super::prepare_upstream_socket`] marks are honoured (always true).
    pub socket_marks: bool,
    /// The hub's cgroup, when it is exempt as a whole.
    pub exempt_cgroup: Option<PathBuf>,
    pub note: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct VipStatus {
    pub vip: SocketAddr,
    /// Connections sent to the hub.
    pub redirected: u64,
    /// Connections left alone because the hub was not heartbeating.
    pub skipped_stale: u64,
    /// Connections left alone because they were the hub's own.
    pub skipped_own: u64,
}

/// What [`super::cleanup`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CleanupReport {
    /// Pinned links removed (each detaches its program unless a running
    /// daemon still holds it open).
    pub links: Vec<PathBuf>,
    /// Pinned maps removed.
    pub maps: Vec<PathBuf>,
    /// The hub address was on the link and was removed.
    pub address_removed: bool,
}

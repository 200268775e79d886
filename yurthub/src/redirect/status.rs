//! What [`super::Redirect::status`] and [`super::cleanup`] report
//! (serialisable for the hub server and metrics).

use std::{net::SocketAddr, path::PathBuf};

use serde::Serialize;

/// What the redirect is doing, for `/v1/status`-like endpoints and metrics.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// cgroup the programs are attached to.
    pub cgroup: PathBuf,
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

#[derive(Clone, Debug, Serialize)]
pub struct ProgramStatus {
    pub name: &'static str,
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

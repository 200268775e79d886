//! Transparent redirection of pod connections bound for the kube-apiserver
//! Service VIP (e.g. `10.96.0.1:443`) to the hub's HTTPS port on a node-local
//! hub address (default `169.254.2.1:10268`), in the kernel.
//!
//! What this module owns:
//! - the cgroup `connect4/6` and `getpeername4/6` programs (crate
//!   `yurthub-ebpf`), attached through pinned `bpf_link`s to the pods'
//!   parent cgroups (`kubepods`, `kubepods.slice`) under the cgroup v2 root
//!   or a configured cgroup (to that cgroup itself when it has none),
//!   first in each cgroup's chain where the kernel allows, adopted and
//!   atomically replaced by the next daemon (see `links`);
//! - the watch over them (see `monitor`): attach points followed as the
//!   kubelet creates and recreates its cgroups, the programs around ours
//!   (`chain`) and a self-check that proves a pod's VIP connection lands on
//!   the hub (`selfcheck`), because a program that runs before ours (a CNI
//!   socket load balancer) would silently take the VIP;
//! - their maps (VIPs, hub endpoint, heartbeat, exemptions, counters), pinned
//!   under `<bpffs>/<pin dir>/maps-v<layout>/` (see `ebpf`);
//! - the hub address on its link, through rtnetlink (see `address`).
//!
//! What it does not own: the listener on the hub address (the proxy), and
//! when to heartbeat — the daemon calls [`Redirect::heartbeat`] from its TLS
//! serving path, and the programs redirect only while the last heartbeat is
//! younger than the grace period (≤ 2 s). A stopped, crashed or wedged hub
//! therefore fails open: VIP connections go to their original destination
//! again within the grace period, and are redirected again as soon as a hub
//! heartbeats.
//!
//! The hub's own sockets are never redirected (no loop when an upstream
//! server is the VIP, as in cloud mode). Two mechanisms, because neither is
//! enough alone:
//! - per socket: [`prepare_upstream_socket`] marks a socket in socket-local
//!   storage before `connect()`. Precise whatever the cgroup layout, with no
//!   side effect on packets (unlike `SO_MARK`, which CNIs, kube-proxy and
//!   policy routing read), but it relies on every upstream connector calling
//!   it;
//! - per cgroup: the daemon's own cgroup id is exempt, which covers every
//!   socket the hub makes (a safety net against a forgotten connector) — but
//!   only when the hub has that cgroup to itself. On hybrid hosts runtimes
//!   often leave every container in one v2 cgroup; exempting it would exempt
//!   the pods too, so then only the per-socket mark applies (reported in
//!   [`Status`]). A pid check is not used: `bpf_get_current_pid_tgid()`
//!   returns init-namespace pids, which a containerised hub does not know.
//!
//! Dropping a [`Redirect`] without [`Redirect::shutdown`] behaves like a
//! crash: the pins stay (the programs keep running and fail open once the
//! heartbeat is stale) and the next [`Redirect::install`] adopts them;
//! [`cleanup`] removes everything.

mod address;
mod cgroup;
mod chain;
mod config;
mod ebpf;
mod error;
mod links;
mod monitor;
mod selfcheck;
mod socket;
mod status;

use std::{
    collections::BTreeSet,
    fs, io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use std::os::fd::AsFd as _;

use aya::{Ebpf, programs::CgroupSockAddr};
use tracing::{debug, info, warn};
use yurthub_ebpf_common::{
    LAYOUT_VERSION, LINKS_DIR, MAPS_DIR_PREFIX,
    link::{Order, attach_type},
    program,
};

pub use cgroup::detect_cgroup2_root;
pub use config::{
    Config, DEFAULT_GRACE, DEFAULT_HUB_ADDRESS_V4, DEFAULT_HUB_ADDRESS_V6, validate_hub_address,
};
pub use error::Error;
pub use socket::prepare_upstream_socket;

/// The eBPF object the daemon loads: the redirect programs, plus the
/// socket-LB stand-in (`lb_*`) that only the coexistence tests load.
pub fn object() -> &'static [u8] {
    ebpf::OBJECT
}
pub use status::{
    ChainProgram, CleanupReport, OwnSockets, ProbeResult, ProgramStatus, SelfCheck, Status,
    VipStatus,
};

use config::{validate, vip_set};

/// Kernel time as `bpf_ktime_get_ns()` sees it (CLOCK_MONOTONIC).
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|ts| {
            let secs = u64::try_from(ts.tv_sec()).unwrap_or(0);
            let nanos = u64::try_from(ts.tv_nsec()).unwrap_or(0);
            secs.saturating_mul(1_000_000_000).saturating_add(nanos)
        })
        .unwrap_or(0)
}

// === Redirect ===

struct State {
    maps: ebpf::Maps,
    vips: BTreeSet<SocketAddr>,
}

/// The loaded programs and where they are attached.
struct LinkSet {
    programs: Vec<links::Program>,
    attachments: Vec<links::Attachment>,
}

/// What the redirect and its monitor task share.
struct Shared {
    config: Config,
    /// The configured cgroup, under which the pods' parents are looked for.
    search: cgroup::CgroupDir,
    links_dir: PathBuf,
    /// The network namespace of the installing thread (the hub's): the
    /// self-check's probe connects from there, never from wherever a task
    /// happens to run.
    netns: fs::File,
    state: Mutex<State>,
    links: Mutex<LinkSet>,
    check: Mutex<monitor::CheckState>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Map handles and fds stay valid even if a holder panicked.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn active(&self) -> bool {
        let beat = self.state().maps.heartbeat().unwrap_or(0);
        let grace = u64::try_from(self.config.grace.as_nanos()).unwrap_or(u64::MAX);
        beat != 0 && monotonic_ns().saturating_sub(beat) <= grace
    }

    fn attach_points(&self) -> Vec<PathBuf> {
        let mut points: Vec<PathBuf> = lock(&self.links)
            .attachments
            .iter()
            .map(|a| a.cgroup.clone())
            .collect();
        points.dedup();
        points
    }

    fn our_program_ids(&self) -> Vec<u32> {
        lock(&self.links).programs.iter().map(|p| p.id).collect()
    }

    /// Re-detects the attach points and moves the links if they changed.
    /// Returns whether they did.
    fn follow_attach_points(&self) -> Result<bool, Error> {
        let targets = cgroup::attach_points(&self.search);
        let mut set = lock(&self.links);
        let mut current: Vec<PathBuf> = set.attachments.iter().map(|a| a.cgroup.clone()).collect();
        current.dedup();
        let wanted: Vec<PathBuf> = targets.iter().map(|t| t.path.clone()).collect();
        // Same paths can still be new cgroups (removed and created again).
        let same_ids = set.attachments.iter().all(|a| {
            targets
                .iter()
                .any(|t| t.path == a.cgroup && t.id == a.info.cgroup_id)
        });
        if current == wanted && same_ids {
            return Ok(false);
        }
        let held = std::mem::take(&mut set.attachments);
        set.attachments = links::reconcile(&self.links_dir, &set.programs, &targets, held)?;
        info!(from = ?current, to = ?wanted, "redirect attach points changed");
        Ok(true)
    }
}

/// The installed redirect. See the module docs for its lifecycle.
pub struct Redirect {
    shared: Arc<Shared>,
    pin_dir: PathBuf,
    notes: Vec<(&'static str, String)>,
    own_sockets: OwnSockets,
    address: address::Manager,
    _monitor: AbortOnDrop,
    _logger: Option<AbortOnDrop>,
    _socket_marks: socket::Registration,
    // Keeps the loaded programs (and aya-log's buffer) alive.
    _ebpf: Ebpf,
}

/// The four programs: (name, attach type, required).
const PROGRAMS: [(&str, u32, bool); 4] = [
    (program::CONNECT4, attach_type::CGROUP_INET4_CONNECT, true),
    (program::CONNECT6, attach_type::CGROUP_INET6_CONNECT, true),
    (
        program::GETPEERNAME4,
        attach_type::CGROUP_INET4_GETPEERNAME,
        false,
    ),
    (
        program::GETPEERNAME6,
        attach_type::CGROUP_INET6_GETPEERNAME,
        false,
    ),
];

impl Redirect {
    /// Installs (or adopts) the redirect: mounts bpffs if needed, loads the
    /// programs with their pinned maps, fills the maps, ensures the hub
    /// address, then attaches each program to each attach point (the pods'
    /// parent cgroups under the configured cgroup, else the configured
    /// cgroup) or swaps it into the pinned link; then starts the monitor
    /// that follows the attach points and runs the self-check.
    ///
    /// Redirecting starts with the first [`Redirect::heartbeat`]: call it
    /// once the listener on the hub address serves, and keep calling it
    /// (every few hundred ms) while it does.
    ///
    /// The hub address is managed, and the self-check connects, in the
    /// network namespace of the calling thread.
    pub async fn install(config: Config) -> Result<Redirect, Error> {
        let vips = validate(&config)?;
        let cgroup_path = match &config.cgroup {
            Some(path) => path.clone(),
            None => detect_cgroup2_root()?,
        };
        let search = cgroup::cgroup_dir(&cgroup_path)?;
        let netns_path = Path::new("/proc/thread-self/ns/net");
        let netns = fs::File::open(netns_path).map_err(|source| Error::Io {
            path: netns_path.to_owned(),
            source,
        })?;
        if cgroup::ensure_bpffs(&config.bpffs)? {
            info!(path = %config.bpffs.display(), "mounted bpf filesystem");
        }
        let pin_dir = config.pin_dir();
        let maps_dir = pin_dir.join(format!("{MAPS_DIR_PREFIX}{LAYOUT_VERSION}"));
        let links_dir = pin_dir.join(LINKS_DIR);
        for dir in [&pin_dir, &maps_dir, &links_dir] {
            fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.clone(),
                source,
            })?;
        }

        let mut ebpf = ebpf::load(&maps_dir, config.ebpf_log).map_err(|e| {
            Error::permission_in("loading eBPF programs and maps", &e)
                .unwrap_or_else(|| Error::Load(Box::new(e)))
        })?;
        let (mut maps, exempt_sockets) = ebpf::Maps::take(&mut ebpf)?;

        // Maps first, so that a program that starts running finds them
        // complete; the heartbeat is reset so that nothing is redirected
        // before this daemon proves it serves.
        maps.set_config(ebpf::redirect_config(
            config.hub_address,
            config.hub_port,
            config.grace,
        ))?;
        maps.set_heartbeat(0)?;
        let own_sockets = exempt_own_cgroup(&mut maps, &search.path)?;
        maps.set_vips(&vips)?;

        let address =
            address::Manager::start(config.hub_address, &config.link, config.address_resync)
                .await?;

        let mut programs = Vec::new();
        let mut notes = Vec::new();
        for (name, attach_type, required) in PROGRAMS {
            let program_error = |source| Error::Program {
                name,
                source: Box::new(source),
            };
            let program: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(Error::MissingObject { name })?
                .try_into()
                .map_err(program_error)?;
            if let Err(source) = program.load() {
                if let Some(denied) =
                    Error::permission_in(&format!("loading program {name}"), &source)
                {
                    return Err(denied);
                }
                if required {
                    return Err(program_error(source));
                }
                // getpeername hooks arrived in Linux 5.8: without them the
                // redirect works, but getpeername() shows the hub address.
                warn!(program = name, error = %source, "cannot load program; getpeername() will show the hub address");
                notes.push((name, format!("not loaded (needs Linux 5.8): {source}")));
                continue;
            }
            let id = program.info().map_err(program_error)?.id();
            let fd = program
                .fd()
                .map_err(program_error)?
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| Error::from_io(format!("duplicating {name}"), source))?;
            programs.push(links::Program {
                name,
                attach_type,
                id,
                fd,
            });
        }
        let targets = cgroup::attach_points(&search);
        let attachments = links::reconcile(&links_dir, &programs, &targets, Vec::new())?;
        for a in &attachments {
            debug!(
                program = a.program,
                cgroup = %a.cgroup.display(),
                adopted = a.adopted,
                order = ?a.order,
                link_id = a.info.id,
                "program attached"
            );
        }
        remove_other_layouts(&pin_dir, &maps_dir);

        let logger = if config.ebpf_log {
            start_logger(&mut ebpf)
        } else {
            None
        };
        info!(
            cgroup = %search.path.display(),
            attach_points = ?targets.iter().map(|t| &t.path).collect::<Vec<_>>(),
            hub = %SocketAddr::new(config.hub_address, config.hub_port),
            vips = ?vips,
            adopted = attachments.iter().any(|a| a.adopted),
            self_check = ?config.self_check,
            "eBPF redirect installed"
        );
        let shared = Arc::new(Shared {
            config,
            search,
            links_dir,
            netns,
            state: Mutex::new(State { maps, vips }),
            links: Mutex::new(LinkSet {
                programs,
                attachments,
            }),
            check: Mutex::new(monitor::CheckState::default()),
        });
        let monitor = AbortOnDrop(tokio::spawn(monitor::run(Arc::clone(&shared))));
        Ok(Redirect {
            shared,
            pin_dir,
            notes,
            own_sockets,
            address,
            _monitor: monitor,
            _logger: logger,
            _socket_marks: socket::register(exempt_sockets),
            _ebpf: ebpf,
        })
    }

    /// Replaces the set of VIPs, in place (no reload).
    pub fn set_vips(&self, vips: &[SocketAddr]) -> Result<(), Error> {
        let vips = vip_set(self.shared.config.hub_address, vips)?;
        let mut state = self.shared.state();
        state.maps.set_vips(&vips)?;
        info!(vips = ?vips, "redirect VIPs updated");
        state.vips = vips;
        drop(state);
        // New VIPs are proved again.
        lock(&self.shared.check).pending = true;
        Ok(())
    }

    /// Declares the hub alive: connections are redirected for the grace
    /// period after the last call. Call it from the serving path.
    pub fn heartbeat(&self) -> Result<(), Error> {
        self.shared.state().maps.set_heartbeat(monotonic_ns())
    }

    /// A snapshot of the redirect's state and counters.
    pub fn status(&self) -> Status {
        let shared = &self.shared;
        let config = &shared.config;
        let state = shared.state();
        let slots = state.maps.vips().unwrap_or_else(|err| {
            debug!(error = %err, "cannot read VIP map");
            Default::default()
        });
        let vips = state
            .vips
            .iter()
            .map(|vip| {
                let counters = slots
                    .get(vip)
                    .and_then(|slot| state.maps.counters(*slot).ok())
                    .unwrap_or_default();
                VipStatus {
                    vip: *vip,
                    redirected: counters.redirected,
                    skipped_stale: counters.skipped_stale,
                    skipped_own: counters.skipped_own,
                }
            })
            .collect();
        let beat = state.maps.heartbeat().unwrap_or(0);
        drop(state);
        let heartbeat_age_ms = (beat != 0).then(|| monotonic_ns().saturating_sub(beat) / 1_000_000);
        let grace_ms = u64::try_from(config.grace.as_millis()).unwrap_or(u64::MAX);
        let mut programs: Vec<ProgramStatus> = lock(&shared.links)
            .attachments
            .iter()
            .map(|a| ProgramStatus {
                name: a.program,
                cgroup: Some(a.cgroup.clone()),
                order: a.order.map(|o| match o {
                    Order::First => "first",
                    Order::Last => "last",
                }),
                attached: true,
                adopted: a.adopted,
                link_id: Some(a.info.id),
                program_id: Some(a.info.prog_id),
                note: None,
            })
            .collect();
        programs.extend(self.notes.iter().map(|(name, note)| ProgramStatus {
            name,
            cgroup: None,
            order: None,
            attached: false,
            adopted: false,
            link_id: None,
            program_id: None,
            note: Some(note.clone()),
        }));
        let attach_points = shared.attach_points();
        let chain = chain::describe(&chain::signature(&attach_points), &shared.our_program_ids());
        let connect_programs_before_ours = chain
            .iter()
            .filter(|p| p.hook.starts_with("connect") && p.order == "before")
            .count();
        Status {
            cgroup: shared.search.path.clone(),
            attach_points,
            chain,
            connect_programs_before_ours,
            self_check: monitor::snapshot(shared),
            hub: SocketAddr::new(config.hub_address, config.hub_port),
            link: config.link.clone(),
            address_present: self.address.present(),
            pin_dir: self.pin_dir.clone(),
            getpeername: self.notes.is_empty(),
            programs,
            own_sockets: self.own_sockets.clone(),
            vips,
            heartbeat_age_ms,
            grace_ms,
            active: heartbeat_age_ms.is_some_and(|age| age <= grace_ms),
        }
    }

    /// Stops the redirect. Unless `keep_on_exit`, detaches the programs,
    /// removes every pin and the hub address; with it, leaves them for the
    /// next hub to adopt (they fail open meanwhile).
    pub async fn shutdown(self) -> Result<(), Error> {
        let Redirect {
            shared,
            pin_dir,
            address,
            _monitor,
            ..
        } = self;
        drop(_monitor);
        let keep = shared.config.keep_on_exit;
        let removed = address.stop(keep).await?;
        if keep {
            info!(pin_dir = %pin_dir.display(), "eBPF redirect left in place for the next hub");
            return Ok(());
        }
        let attachments = std::mem::take(&mut lock(&shared.links).attachments);
        for attachment in attachments {
            attachment.detach()?;
        }
        let report = remove_pins(&pin_dir)?;
        info!(
            links = report.links.len(),
            maps = report.maps.len(),
            address_removed = removed,
            "eBPF redirect removed"
        );
        Ok(())
    }
}

/// Exempts the daemon's own cgroup when it has it to itself.
fn exempt_own_cgroup(maps: &mut ebpf::Maps, attach_point: &Path) -> Result<OwnSockets, Error> {
    let (ids, exempt_cgroup, note) = match cgroup::own_cgroup() {
        Ok(own) if !own.shared => (vec![own.dir.id], Some(own.dir.path), None),
        Ok(own) => {
            let note = format!(
                "cgroup {} is shared with other processes, so it is not exempt; \
                 only sockets marked with prepare_upstream_socket() bypass the redirect",
                own.dir.path.display()
            );
            if own.dir.path.starts_with(attach_point) {
                warn!("{note}");
            } else {
                debug!("{note}");
            }
            (Vec::new(), None, Some(note))
        }
        Err(err) => {
            let note = format!(
                "cannot determine own cgroup ({err}); only marked sockets bypass the redirect"
            );
            warn!("{note}");
            (Vec::new(), None, Some(note))
        }
    };
    maps.set_exempt_cgroups(&ids)?;
    Ok(OwnSockets {
        socket_marks: true,
        exempt_cgroup,
        note,
    })
}

/// Removes map pins of other layout versions (left by an older daemon whose
/// programs we just replaced). Best effort.
fn remove_other_layouts(pin_dir: &Path, current: &Path) {
    let Ok(entries) = fs::read_dir(pin_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_maps_dir = entry
            .file_name()
            .to_string_lossy()
            .starts_with(MAPS_DIR_PREFIX);
        if is_maps_dir && path != current {
            match remove_dir_files(&path) {
                Ok(removed) => {
                    info!(dir = %path.display(), maps = removed.len(), "removed maps of an older layout")
                }
                Err(err) => {
                    warn!(dir = %path.display(), error = %err, "cannot remove maps of an older layout")
                }
            }
        }
    }
}

/// Removes the files of `dir`, then `dir`; returns the files removed.
fn remove_dir_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut removed = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(source) => {
            return Err(Error::Io {
                path: dir.to_owned(),
                source,
            });
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        links::remove_pin(&path)?;
        removed.push(path);
    }
    cgroup::remove_empty_dir(dir)?;
    Ok(removed)
}

/// Removes the pin directory: links first (which detaches the programs),
/// then the maps of every layout.
fn remove_pins(pin_dir: &Path) -> Result<CleanupReport, Error> {
    let mut report = CleanupReport {
        links: remove_dir_files(&pin_dir.join(LINKS_DIR))?,
        ..CleanupReport::default()
    };
    if let Ok(entries) = fs::read_dir(pin_dir) {
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(MAPS_DIR_PREFIX)
            {
                report.maps.extend(remove_dir_files(&entry.path())?);
            }
        }
    }
    cgroup::remove_empty_dir(pin_dir)?;
    Ok(report)
}

/// `yurthub cleanup`: removes the programs (by unpinning their links), every
/// pin and the hub address. Idempotent; needs no running daemon. A daemon
/// that is still running keeps its programs attached until it exits.
///
/// The hub address is removed in the network namespace of the calling
/// thread.
pub async fn cleanup(cfg: &Config) -> Result<CleanupReport, Error> {
    let mut report = if cgroup::is_bpffs(&cfg.bpffs) {
        remove_pins(&cfg.pin_dir())?
    } else {
        // Nothing can be pinned where no bpffs is mounted; never mount one
        // just to clean it.
        CleanupReport::default()
    };
    report.address_removed = address::remove(cfg.hub_address, &cfg.link).await?;
    info!(
        links = report.links.len(),
        maps = report.maps.len(),
        address_removed = report.address_removed,
        "redirect cleanup done"
    );
    Ok(report)
}

/// Forwards the programs' aya-log records to the `log` facade (which the
/// daemon's telemetry bridges into tracing). Diagnostics only, so a short
/// poll interval is fine and avoids registering the ring buffer's fd with
/// the reactor (which tokio only allows through `unsafe`).
fn start_logger(ebpf: &mut Ebpf) -> Option<AbortOnDrop> {
    const POLL: Duration = Duration::from_millis(200);
    let mut logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(err) => {
            warn!(error = %err, "cannot read eBPF logs");
            return None;
        }
    };
    Some(AbortOnDrop(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(POLL);
        loop {
            ticker.tick().await;
            logger.flush();
        }
    })))
}

/// A background task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Redirect>();
    }
}

//! Transparent redirection of pod connections bound for the kube-apiserver
//! Service VIP (e.g. `10.96.0.1:443`) to the hub's HTTPS port on a node-local
//! hub address (default `169.254.2.1:10268`), in the kernel.
//!
//! What this module owns:
//! - the cgroup `connect4/6` and `getpeername4/6` programs (crate
//!   `yurthub-ebpf`), attached through pinned `bpf_link`s to the cgroup v2
//!   root (or a configured cgroup), adopted and atomically replaced by the
//!   next daemon (see `links`);
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
mod config;
mod ebpf;
mod error;
mod links;
mod socket;
mod status;

use std::{
    collections::BTreeSet,
    fs, io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use aya::{Ebpf, programs::CgroupSockAddr};
use tracing::{debug, info, warn};
use yurthub_ebpf_common::{LAYOUT_VERSION, LINKS_DIR, MAPS_DIR_PREFIX, link::attach_type, program};

pub use cgroup::detect_cgroup2_root;
pub use config::{
    Config, DEFAULT_GRACE, DEFAULT_HUB_ADDRESS_V4, DEFAULT_HUB_ADDRESS_V6, validate_hub_address,
};
pub use error::Error;
pub use socket::prepare_upstream_socket;
pub use status::{CleanupReport, OwnSockets, ProgramStatus, Status, VipStatus};

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

/// The installed redirect. See the module docs for its lifecycle.
pub struct Redirect {
    config: Config,
    cgroup: PathBuf,
    pin_dir: PathBuf,
    state: Mutex<State>,
    attachments: Vec<links::Attachment>,
    notes: Vec<(&'static str, String)>,
    own_sockets: OwnSockets,
    address: address::Manager,
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
    /// address, then attaches each program or swaps it into the pinned link.
    ///
    /// Redirecting starts with the first [`Redirect::heartbeat`]: call it
    /// once the listener on the hub address serves, and keep calling it
    /// (every few hundred ms) while it does.
    ///
    /// The hub address is managed in the network namespace of the calling
    /// thread.
    pub async fn install(config: Config) -> Result<Redirect, Error> {
        let vips = validate(&config)?;
        let cgroup_path = match &config.cgroup {
            Some(path) => path.clone(),
            None => detect_cgroup2_root()?,
        };
        let cgroup = cgroup::cgroup_dir(&cgroup_path)?;
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
        let own_sockets = exempt_own_cgroup(&mut maps, &cgroup.path)?;
        maps.set_vips(&vips)?;

        let address =
            address::Manager::start(config.hub_address, &config.link, config.address_resync)
                .await?;

        let mut attachments = Vec::new();
        let mut notes = Vec::new();
        for (name, attach_type, required) in PROGRAMS {
            let program: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(Error::MissingObject { name })?
                .try_into()
                .map_err(|source| Error::Program {
                    name,
                    source: Box::new(source),
                })?;
            if let Err(source) = program.load() {
                if let Some(denied) =
                    Error::permission_in(&format!("loading program {name}"), &source)
                {
                    return Err(denied);
                }
                if required {
                    return Err(Error::Program {
                        name,
                        source: Box::new(source),
                    });
                }
                // getpeername hooks arrived in Linux 5.8: without them the
                // redirect works, but getpeername() shows the hub address.
                warn!(program = name, error = %source, "cannot load program; getpeername() will show the hub address");
                notes.push((name, format!("not loaded (needs Linux 5.8): {source}")));
                continue;
            }
            let pin = links_dir.join(name);
            let attachment = links::attach_or_adopt(program, name, attach_type, &cgroup, &pin)?;
            debug!(
                program = name,
                adopted = attachment.adopted,
                link_id = attachment.info.id,
                "program attached"
            );
            attachments.push(attachment);
        }
        remove_other_layouts(&pin_dir, &maps_dir);

        let logger = if config.ebpf_log {
            start_logger(&mut ebpf)
        } else {
            None
        };
        info!(
            cgroup = %cgroup.path.display(),
            hub = %SocketAddr::new(config.hub_address, config.hub_port),
            vips = ?vips,
            adopted = attachments.iter().any(|a| a.adopted),
            "eBPF redirect installed"
        );
        Ok(Redirect {
            cgroup: cgroup.path,
            pin_dir,
            state: Mutex::new(State { maps, vips }),
            attachments,
            notes,
            own_sockets,
            address,
            _logger: logger,
            _socket_marks: socket::register(exempt_sockets),
            _ebpf: ebpf,
            config,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Map handles stay valid even if a holder panicked.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the set of VIPs, in place (no reload).
    pub fn set_vips(&self, vips: &[SocketAddr]) -> Result<(), Error> {
        let vips = vip_set(self.config.hub_address, vips)?;
        let mut state = self.state();
        state.maps.set_vips(&vips)?;
        info!(vips = ?vips, "redirect VIPs updated");
        state.vips = vips;
        Ok(())
    }

    /// Declares the hub alive: connections are redirected for the grace
    /// period after the last call. Call it from the serving path.
    pub fn heartbeat(&self) -> Result<(), Error> {
        self.state().maps.set_heartbeat(monotonic_ns())
    }

    /// A snapshot of the redirect's state and counters.
    pub fn status(&self) -> Status {
        let state = self.state();
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
        let heartbeat_age_ms = (beat != 0).then(|| monotonic_ns().saturating_sub(beat) / 1_000_000);
        let grace_ms = u64::try_from(self.config.grace.as_millis()).unwrap_or(u64::MAX);
        let mut programs: Vec<ProgramStatus> = self
            .attachments
            .iter()
            .map(|a| ProgramStatus {
                name: a.program,
                attached: true,
                adopted: a.adopted,
                link_id: Some(a.info.id),
                program_id: Some(a.info.prog_id),
                note: None,
            })
            .collect();
        programs.extend(self.notes.iter().map(|(name, note)| ProgramStatus {
            name,
            attached: false,
            adopted: false,
            link_id: None,
            program_id: None,
            note: Some(note.clone()),
        }));
        Status {
            cgroup: self.cgroup.clone(),
            hub: SocketAddr::new(self.config.hub_address, self.config.hub_port),
            link: self.config.link.clone(),
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
            config,
            pin_dir,
            attachments,
            address,
            ..
        } = self;
        let removed = address.stop(config.keep_on_exit).await?;
        if config.keep_on_exit {
            info!(pin_dir = %pin_dir.display(), "eBPF redirect left in place for the next hub");
            return Ok(());
        }
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

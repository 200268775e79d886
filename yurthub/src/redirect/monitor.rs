//! The redirect's watchman, one task per installed redirect:
//! - follows the attach points: an inotify watch on the configured cgroup
//!   reports pods' parent cgroups appearing or going (a kubelet restart that
//!   recreates `kubepods.slice`, a node that gets its first pod), and the
//!   links move at once;
//! - notices changes of the programs around ours: the effective chains are
//!   read every second (a few local `BPF_PROG_QUERY` calls; the kernel has
//!   no notification for cgroup attachments);
//! - runs the self-check (see `selfcheck`) at start, after any such change,
//!   when the VIPs change, and every interval, but only while the redirect
//!   is active. A failure is logged with its reason once, and recovery too.
//!
//! Nothing here talks to the apiserver.

use std::{
    os::fd::AsFd as _,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{
    Shared,
    cgroup::is_pods_parent_name,
    chain, lock,
    selfcheck::{self, ProbeResult},
    status::SelfCheck,
};

const TICK: Duration = Duration::from_secs(1);

/// The self-check's state, shared with `status()`.
#[derive(Debug, Default)]
pub(crate) struct CheckState {
    /// A check is owed (start, a change, new VIPs).
    pub pending: bool,
    pub runs: u64,
    pub last_run: Option<Instant>,
    pub effective: Option<bool>,
    pub reason: Option<String>,
    pub probes: Vec<ProbeResult>,
    signature: Option<chain::Signature>,
}

pub(crate) fn snapshot(shared: &Shared) -> SelfCheck {
    let check = lock(&shared.check);
    let interval = shared.config.self_check;
    SelfCheck {
        enabled: interval.is_some(),
        interval_ms: interval.map(|i| u64::try_from(i.as_millis()).unwrap_or(u64::MAX)),
        runs: check.runs,
        last_run_ms_ago: check
            .last_run
            .map(|at| u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX)),
        effective: check.effective,
        reason: check.reason.clone(),
        probes: check.probes.clone(),
    }
}

/// Watches `dir` for pods' parent cgroups appearing or going, on a thread
/// of its own (a blocking `poll` with a short timeout, so it ends soon after
/// the receiver is dropped). Each relevant batch of events is one message.
fn watch(dir: &std::path::Path) -> Option<mpsc::UnboundedReceiver<()>> {
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .map_err(|e| warn!(error = %e, "no inotify: new pods' cgroups are noticed at the next self-check"))
        .ok()?;
    let flags = AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_ONLYDIR;
    if let Err(e) = inotify.add_watch(dir, flags) {
        warn!(dir = %dir.display(), error = %e, "cannot watch the cgroup for pods' cgroups");
        return None;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let spawned = std::thread::Builder::new()
        .name("yurthub-cgroups".into())
        .spawn(move || {
            while !tx.is_closed() {
                let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::from(500u16)) {
                    Ok(0) => continue,
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        warn!(error = %e, "cgroup watch failed");
                        return;
                    }
                }
                let mut relevant = false;
                while let Ok(events) = inotify.read_events() {
                    if events.is_empty() {
                        break;
                    }
                    relevant |= events.iter().any(|e| {
                        e.name
                            .as_ref()
                            .is_some_and(|n| is_pods_parent_name(&n.to_string_lossy()))
                    });
                }
                if relevant && tx.send(()).is_err() {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the cgroup watch");
        return None;
    }
    Some(rx)
}

fn follow(shared: &Shared) {
    match shared.follow_attach_points() {
        Ok(true) => lock(&shared.check).pending = true,
        Ok(false) => {}
        Err(e) => warn!(error = %e, "cannot move the redirect to the new attach points"),
    }
}

pub(crate) async fn run(shared: Arc<Shared>) {
    lock(&shared.check).pending = true;
    let mut watch = watch(&shared.search.path);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            event = async { watch.as_mut()?.recv().await }, if watch.is_some() => {
                match event {
                    Some(()) => follow(&shared),
                    None => watch = None,
                }
                continue;
            }
        }
        let points = shared.attach_points();
        let signature = chain::signature(&points);
        {
            let mut check = lock(&shared.check);
            if check.signature.as_ref() != Some(&signature) {
                if check.signature.is_some() {
                    info!(chains = ?signature, "the programs around the redirect changed; checking it again");
                }
                check.signature = Some(signature);
                check.pending = true;
            }
        }
        let Some(interval) = shared.config.self_check else {
            continue;
        };
        let due = {
            let check = lock(&shared.check);
            check.pending || check.last_run.is_none_or(|at| at.elapsed() >= interval)
        };
        if !due {
            continue;
        }
        if !shared.active() {
            // Never dial the VIP when the redirect is not expected to catch
            // it; check as soon as it is.
            let mut check = lock(&shared.check);
            check.pending = true;
            if check.effective != Some(false) || check.reason.is_none() {
                check.effective = Some(false);
                check.reason =
                    Some("not redirecting: no fresh heartbeat from the hub (fails open)".into());
            }
            continue;
        }
        // A periodic check also re-detects the attach points, in case an
        // inotify event was missed.
        follow(&shared);
        let shared2 = Arc::clone(&shared);
        let outcome = tokio::task::spawn_blocking(move || check_once(&shared2)).await;
        let (effective, reason, probes) = match outcome {
            Ok(result) => result,
            Err(e) => (
                false,
                Some(format!("self-check task failed: {e}")),
                Vec::new(),
            ),
        };
        let mut check = lock(&shared.check);
        if check.effective != Some(effective) || check.reason != reason {
            match (&reason, effective) {
                (Some(reason), false) => {
                    warn!(%reason, "redirect self-check FAILED: pods do not reach the hub")
                }
                _ => {
                    info!(probes = ?probes, "redirect self-check passed: pods' VIP connections land on the hub")
                }
            }
        }
        check.runs += 1;
        check.last_run = Some(Instant::now());
        check.pending = false;
        check.effective = Some(effective);
        check.reason = reason;
        check.probes = probes;
    }
}

/// One self-check over every attach point.
fn check_once(shared: &Shared) -> (bool, Option<String>, Vec<ProbeResult>) {
    let vips: Vec<_> = shared.state().vips.iter().copied().collect();
    if vips.is_empty() {
        return (false, Some("no VIPs to redirect yet".into()), Vec::new());
    }
    let hub = std::net::SocketAddr::new(shared.config.hub_address, shared.config.hub_port);
    let points: Vec<PathBuf> = shared.attach_points();
    if points.is_empty() {
        return (
            false,
            Some("the programs are attached nowhere".into()),
            Vec::new(),
        );
    }
    let mut probes = Vec::new();
    let mut failures = Vec::new();
    for point in &points {
        match selfcheck::run(point, &shared.netns, &vips, hub) {
            Ok(results) => {
                for r in &results {
                    if !r.landed_on_hub {
                        let what = match (&r.reached, &r.error) {
                            (Some(reached), _) => format!("reached {reached}, not the hub {hub}"),
                            (None, Some(e)) => e.clone(),
                            (None, None) => "no connection".into(),
                        };
                        failures.push(format!(
                            "a connection to {} from {} {what}",
                            r.vip,
                            point.join(selfcheck::PROBE_CGROUP).display()
                        ));
                    }
                }
                probes.extend(results);
            }
            Err(e) => failures.push(e),
        }
    }
    if failures.is_empty() {
        debug!(?probes, "redirect self-check passed");
        return (true, None, probes);
    }
    let chain = chain::describe(&chain::signature(&points), &shared.our_program_ids());
    let before: Vec<String> = chain
        .iter()
        .filter(|p| p.hook.starts_with("connect") && p.order == "before")
        .map(|p| {
            format!(
                "{} (id {}, {} on {})",
                p.name,
                p.id,
                p.hook,
                p.attached_to
                    .as_ref()
                    .map_or_else(|| "?".into(), |d| d.display().to_string())
            )
        })
        .collect();
    let mut reason = failures.join("; ");
    if !before.is_empty() {
        reason.push_str(&format!(
            "; programs running before ours: {}",
            before.join(", ")
        ));
    }
    (false, Some(reason), probes)
}

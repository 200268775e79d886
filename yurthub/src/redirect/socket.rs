//! Marking the daemon's own upstream sockets so the redirect never loops
//! back to the hub (cloud mode, where an upstream server may be the VIP).
//!
//! A marked socket has a non-zero value in the programs' socket-local
//! storage map (`BPF_MAP_TYPE_SK_STORAGE`, keyed by the socket's fd from user
//! space). Unlike `SO_MARK`, this has no effect on the packets: CNIs
//! (Calico's 0xffff0000 mask, Cilium's 0x0f00 magic marks), kube-proxy
//! (0x4000 masquerade, 0x8000 drop) and fwmark policy routing all read the
//! packet mark, and any value we picked could collide with one of them. It
//! needs no capability beyond holding the map, and the entry dies with the
//! socket.
//!
//! Each live [`super::Redirect`] registers its map here; marking writes to
//! every registered map. With no redirect installed, marking is a no-op.

use std::{
    io,
    os::fd::{AsFd, AsRawFd as _},
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::maps::{MapData, SkStorage};

type Entry = (u64, SkStorage<MapData, u32>);

static REGISTRY: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn registry() -> MutexGuard<'static, Vec<Entry>> {
    // The guarded Vec stays consistent even if a holder panicked.
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Registration of one redirect's map; unregisters on drop.
#[derive(Debug)]
pub(crate) struct Registration(u64);

pub(crate) fn register(map: SkStorage<MapData, u32>) -> Registration {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    registry().push((id, map));
    Registration(id)
}

impl Drop for Registration {
    fn drop(&mut self) {
        registry().retain(|(id, _)| *id != self.0);
    }
}

/// Marks `socket` as one of the hub's own, so that no yurthub redirect
/// program rewrites its `connect()`. Call it on every upstream socket
/// (apiserver connections, health probes, certificate requests) after
/// creating it and before connecting. A no-op when no redirect is installed.
///
/// Besides this per-socket mark, the daemon's whole cgroup is exempt when it
/// has that cgroup to itself (see [`super::Status::own_sockets`]); the mark
/// is what keeps the hub safe when its cgroup is shared.
pub fn prepare_upstream_socket(socket: &impl AsFd) -> io::Result<()> {
    let fd = socket.as_fd();
    let mut maps = registry();
    for (_, map) in maps.iter_mut() {
        map.insert(&fd.as_raw_fd(), 1, 0)
            .map_err(|e| io::Error::other(format!("marking socket as the hub's own: {e}")))?;
    }
    Ok(())
}

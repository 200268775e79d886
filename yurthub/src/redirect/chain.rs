//! The effective chain around our programs: for each attach point and hook,
//! every program the kernel runs for a socket of that cgroup, in run order
//! (the cgroup's own programs first, then each ancestor's, each level in
//! its own order), with where each is attached and whether it runs before
//! ours. A program before ours sees the VIP first: a socket load balancer
//! there rewrites it to a backend and the redirect never sees it.

use std::{
    collections::BTreeMap,
    fs::File,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use serde::Serialize;
use yurthub_ebpf_common::link::{self as sys, attach_type};

use super::cgroup;

/// The hooks whose chains matter: the two that rewrite and the two that
/// report the peer.
pub(crate) const HOOKS: [(&str, u32); 4] = [
    ("connect4", attach_type::CGROUP_INET4_CONNECT),
    ("connect6", attach_type::CGROUP_INET6_CONNECT),
    ("getpeername4", attach_type::CGROUP_INET4_GETPEERNAME),
    ("getpeername6", attach_type::CGROUP_INET6_GETPEERNAME),
];

/// One program in an effective chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChainProgram {
    /// The attach point whose chain this is.
    pub attach_point: PathBuf,
    pub hook: &'static str,
    /// 0 runs first.
    pub position: usize,
    pub id: u32,
    pub name: String,
    /// The cgroup it is attached to (the attach point or an ancestor).
    pub attached_to: Option<PathBuf>,
    pub ours: bool,
    /// `before`, `ours` or `after` ours in this chain.
    pub order: &'static str,
}

/// The ids of each chain, to notice a change cheaply.
pub(crate) type Signature = Vec<(PathBuf, u32, Vec<u32>)>;

fn query(dir: &Path, attach_type: u32, effective: bool) -> Vec<u32> {
    File::open(dir)
        .and_then(|f| sys::query_cgroup(f.as_fd(), attach_type, effective))
        .unwrap_or_default()
}

/// Program ids of each effective chain of `attach_points`.
pub(crate) fn signature(attach_points: &[PathBuf]) -> Signature {
    let mut out = Vec::new();
    for point in attach_points {
        for (_, attach_type) in HOOKS {
            out.push((point.clone(), attach_type, query(point, attach_type, true)));
        }
    }
    out
}

/// The chains in detail. `ours` are our program ids.
pub(crate) fn describe(signature: &Signature, ours: &[u32]) -> Vec<ChainProgram> {
    let mut names: BTreeMap<u32, String> = BTreeMap::new();
    let mut out = Vec::new();
    for (point, attach_type, ids) in signature {
        let hook = HOOKS
            .iter()
            .find(|(_, t)| t == attach_type)
            .map_or("?", |(h, _)| *h);
        let levels: Vec<(PathBuf, Vec<u32>)> = cgroup::with_ancestors(point)
            .into_iter()
            .map(|dir| {
                let attached = query(&dir, *attach_type, false);
                (dir, attached)
            })
            .collect();
        let our_position = ids.iter().position(|id| ours.contains(id));
        for (position, id) in ids.iter().enumerate() {
            let name = names
                .entry(*id)
                .or_insert_with(|| sys::prog_info(*id).map(|i| i.name).unwrap_or_default())
                .clone();
            let is_ours = ours.contains(id);
            let order = match our_position {
                _ if is_ours => "ours",
                Some(p) if position < p => "before",
                Some(_) => "after",
                // Ours is not in the chain at all: everything wins over it.
                None => "before",
            };
            out.push(ChainProgram {
                attach_point: point.clone(),
                hook,
                position,
                id: *id,
                name,
                attached_to: levels
                    .iter()
                    .find(|(_, attached)| attached.contains(id))
                    .map(|(dir, _)| dir.clone()),
                ours: is_ours,
                order,
            });
        }
    }
    out
}

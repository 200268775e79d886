//! The leader-hub ConfigMap that yurt-manager writes per node pool,
//! `kube-system/leader-hub-<pool>`:
//!
//! - `leaders`: comma-separated `<node>/<address>` of the pool's leader hubs;
//! - `pool-scoped-metadata`: comma-separated `group/version/resource`
//!   (`/v1/services`, `core/v1/services` or `v1/services` for the core group);
//! - `enable-leader-election`: `true` when followers are to use the leaders.

use std::net::IpAddr;

use serde_json::Value;

use crate::storage::Gvr;

pub const NAMESPACE: &str = "kube-system";
pub const PREFIX: &str = "leader-hub-";

/// The ConfigMap's name for a pool.
pub fn configmap_name(pool: &str) -> String {
    format!("{PREFIX}{pool}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub node: String,
    pub address: IpAddr,
}

impl std::fmt::Display for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.node, self.address)
    }
}

/// What the ConfigMap says; `Default` is "no ConfigMap".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderConfig {
    pub leaders: Vec<Leader>,
    /// None: the key is absent or empty, `--pool-scope-resources` applies.
    pub pool_scoped: Option<Vec<Gvr>>,
    pub election: bool,
}

impl LeaderConfig {
    /// Reads a ConfigMap object; entries that do not parse are skipped with
    /// a warning (one bad leader must not take the others away).
    pub fn from_configmap(cm: &Value) -> LeaderConfig {
        let data = &cm["data"];
        let get = |k: &str| data[k].as_str().unwrap_or_default();
        let leaders = get("leaders")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .filter_map(|s| match parse_leader(s) {
                Some(l) => Some(l),
                None => {
                    tracing::warn!(entry = s, "leader-hub ConfigMap: not <node>/<ip>; skipped");
                    None
                }
            })
            .collect();
        let pool_scoped = parse_metadata(get("pool-scoped-metadata"));
        LeaderConfig {
            leaders,
            pool_scoped,
            election: get("enable-leader-election")
                .trim()
                .eq_ignore_ascii_case("true"),
        }
    }

    pub fn is_leader(&self, node: &str) -> bool {
        self.leaders.iter().any(|l| l.node == node)
    }
}

fn parse_leader(s: &str) -> Option<Leader> {
    let (node, addr) = s.split_once('/')?;
    let node = node.trim();
    if node.is_empty() {
        return None;
    }
    Some(Leader {
        node: node.to_owned(),
        address: addr.trim().parse().ok()?,
    })
}

fn parse_metadata(s: &str) -> Option<Vec<Gvr>> {
    let gvrs: Vec<Gvr> = s
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .filter_map(|e| {
            let parts: Vec<&str> = e.split('/').collect();
            let gvr = match parts.as_slice() {
                [g, v, r] if !v.is_empty() && !r.is_empty() => {
                    let g = if *g == "core" { "" } else { g };
                    Some(Gvr::new(g, *v, *r))
                }
                [v, r] if !v.is_empty() && !r.is_empty() => Some(Gvr::new("", *v, *r)),
                _ => None,
            };
            if gvr.is_none() {
                tracing::warn!(
                    entry = e,
                    "pool-scoped-metadata: not group/version/resource; skipped"
                );
            }
            gvr
        })
        .collect();
    (!gvrs.is_empty()).then_some(gvrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_openyurt_leader_hub_configmaps() {
        let c = LeaderConfig::from_configmap(&json!({"data": {
            "leaders": "node1/10.0.0.1, node2/fd00::2,bad,/10.0.0.3",
            "pool-scoped-metadata": "core/v1/services,discovery.k8s.io/v1/endpointslices",
            "interconnectivity": "true",
            "enable-leader-election": "true",
        }}));
        assert_eq!(
            c.leaders,
            vec![
                Leader {
                    node: "node1".into(),
                    address: "10.0.0.1".parse().unwrap()
                },
                Leader {
                    node: "node2".into(),
                    address: "fd00::2".parse().unwrap()
                },
            ]
        );
        assert_eq!(
            c.pool_scoped,
            Some(vec![
                Gvr::new("", "v1", "services"),
                Gvr::new("discovery.k8s.io", "v1", "endpointslices")
            ])
        );
        assert!(c.election && c.is_leader("node2") && !c.is_leader("node3"));

        let c = LeaderConfig::from_configmap(
            &json!({"data": {"pool-scoped-metadata": "/v1/services"}}),
        );
        assert!(!c.election && c.leaders.is_empty());
        assert_eq!(c.pool_scoped, Some(vec![Gvr::new("", "v1", "services")]));
        assert_eq!(
            LeaderConfig::from_configmap(&json!({})),
            LeaderConfig::default()
        );
    }
}

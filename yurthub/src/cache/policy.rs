//! What may be cached: the cache agents (components whose responses are kept
//! for offline use) and the request shapes worth keeping (§5.1–5.2 of the
//! reference). Pure decisions; durability lives in `storage`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use crate::request::{Principal, RequestInfo, Verb};

/// Components cached by default, as upstream.
pub const DEFAULT_AGENTS: [&str; 7] = [
    "kubelet",
    "kube-proxy",
    "flanneld",
    "coredns",
    "raven-agent-ds",
    "yurttunnel-agent",
    "yurthub",
];

/// Review-style APIs: create-only questions, never stored objects.
const NEVER_CACHED: [&str; 7] = [
    "certificatesigningrequests",
    "subjectaccessreviews",
    "selfsubjectaccessreviews",
    "localsubjectaccessreviews",
    "selfsubjectrulesreviews",
    "selfsubjectreviews",
    "tokenreviews",
];

/// The live set of cache agents: defaults plus `cache_agents` from the
/// `yurt-hub-cfg` ConfigMap. Entries are compared lower-cased (upstream
/// compares them as written, so an upper-case entry never matches).
#[derive(Debug, Clone)]
pub struct CacheAgents {
    inner: Arc<RwLock<Agents>>,
    node: String,
}

#[derive(Debug, Default)]
struct Agents {
    extra: BTreeSet<String>,
    all: bool,
}

impl CacheAgents {
    pub fn new(node: &str) -> CacheAgents {
        CacheAgents {
            inner: Arc::default(),
            node: node.to_string(),
        }
    }

    /// Replaces the configured additions with a comma list (`*` = everyone).
    pub fn set_configured(&self, list: &str) {
        let mut a = self.inner.write().unwrap_or_else(|p| p.into_inner());
        a.extra = list
            .split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        a.all = a.extra.contains("*");
    }

    pub fn is_agent(&self, component: &str) -> bool {
        if component.is_empty() {
            return false;
        }
        if DEFAULT_AGENTS.contains(&component)
            || component.strip_prefix("multiplexer-proxy-") == Some(self.node.as_str())
        {
            return true;
        }
        let a = self.inner.read().unwrap_or_else(|p| p.into_inner());
        a.all || a.extra.contains(component)
    }

    /// Current agents, sorted, for status output.
    pub fn list(&self) -> Vec<String> {
        let a = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let mut v: BTreeSet<String> = DEFAULT_AGENTS.iter().map(|s| s.to_string()).collect();
        v.insert(format!("multiplexer-proxy-{}", self.node));
        v.extend(a.extra.iter().cloned());
        v.into_iter().collect()
    }
}

/// Components one identity other than the node's may keep cache scopes
/// for. A scope is keyed by identity and the User-Agent's component, which a
/// pod picks: without a bound, one token cycling User-Agents would have the
/// store write every list and watch event it reads once per User-Agent. A
/// pod's own clients use one or two.
pub const COMPONENTS_PER_IDENTITY: usize = 8;

/// Identities whose components are counted; past it the count starts over
/// (tokens are bounded by the token book already, so this is a backstop).
const IDENTITIES_MAX: usize = 20_000;

/// Which components each identity other than the node's caches for: the
/// first [`COMPONENTS_PER_IDENTITY`] it came with, counting the scopes the
/// store kept from before a restart.
#[derive(Debug, Default)]
pub struct IdentityComponents {
    by_owner: Mutex<HashMap<String, Vec<String>>>,
}

impl IdentityComponents {
    /// Counts the store's scope owners (`component@owner`; the node's own
    /// components have no owner part and are not counted).
    pub fn seeded<'a>(owners: impl IntoIterator<Item = &'a str>) -> IdentityComponents {
        let me = IdentityComponents::default();
        for o in owners {
            if let Some((component, owner)) = o.rsplit_once('@') {
                me.admit(owner, component);
            }
        }
        me
    }

    /// Whether `owner` may cache for `component`.
    pub fn admit(&self, owner: &str, component: &str) -> bool {
        let mut by_owner = self.by_owner.lock().unwrap_or_else(|p| p.into_inner());
        // Every cacheable request of a token asks: a known identity and
        // component cost a lookup, no allocation.
        if let Some(components) = by_owner.get_mut(owner) {
            if components.iter().any(|c| c == component) {
                return true;
            }
            if components.len() >= COMPONENTS_PER_IDENTITY {
                return false;
            }
            components.push(component.to_owned());
            return true;
        }
        if by_owner.len() >= IDENTITIES_MAX {
            by_owner.clear();
        }
        by_owner.insert(owner.to_owned(), vec![component.to_owned()]);
        true
    }
}

/// Why a request's response is not cached: what [`not_cacheable`] found,
/// borrowed from the request (it is asked on every request; only a caller
/// that reports it formats it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotCached<'a> {
    NotAResource { path: &'a str },
    Anonymous,
    NotAnAgent { component: &'a str },
    Verb(Verb),
    Subresource(&'a str),
    Resource(&'a str),
}

impl std::fmt::Display for NotCached<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotCached::NotAResource { path } => write!(f, "{path} is not a resource request"),
            NotCached::Anonymous => f.write_str("anonymous requests are never cached"),
            NotCached::NotAnAgent { component } => {
                write!(f, "component {component:?} is not a cache agent")
            }
            NotCached::Verb(v) => write!(f, "verb {v} is never cached"),
            NotCached::Subresource(s) => write!(f, "subresource {s} is never cached"),
            NotCached::Resource(r) => write!(f, "{r} are never cached"),
        }
    }
}

/// Why a request's response is not cached (None = cacheable).
pub fn not_cacheable<'a>(agents: &CacheAgents, info: &'a RequestInfo) -> Option<NotCached<'a>> {
    if !info.is_resource {
        return Some(NotCached::NotAResource { path: &info.path });
    }
    if matches!(info.caller, Principal::Anonymous) {
        return Some(NotCached::Anonymous);
    }
    // The node's components are cached when they are cache agents; any
    // other identity's reads are kept in scopes of its own (see README).
    if info.caller.is_node() && !agents.is_agent(&info.component) {
        return Some(NotCached::NotAnAgent {
            component: &info.component,
        });
    }
    if matches!(
        info.verb,
        Verb::Delete | Verb::DeleteCollection | Verb::Proxy
    ) {
        return Some(NotCached::Verb(info.verb));
    }
    if !(info.subresource.is_empty() || info.subresource == "status") {
        return Some(NotCached::Subresource(&info.subresource));
    }
    if NEVER_CACHED.contains(&info.resource.as_str()) {
        return Some(NotCached::Resource(&info.resource));
    }
    None
}

/// A review-style create (SubjectAccessReview, TokenReview, ...).
pub fn is_review(info: &RequestInfo) -> bool {
    NEVER_CACHED[1..].contains(&info.resource.as_str())
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, Method};

    use super::*;

    fn info(method: Method, path: &str, ua: &str) -> RequestInfo {
        let mut h = HeaderMap::new();
        h.insert(http::header::USER_AGENT, ua.parse().unwrap());
        let mut i = RequestInfo::resolve(&method, &path.parse().unwrap(), &h).unwrap();
        i.caller = Principal::Node;
        i
    }

    #[test]
    fn an_identity_caches_for_a_bounded_number_of_components() {
        let seen = IdentityComponents::seeded(["kubelet", "app-0@sub:a", "app-1@sub:a"]);
        for i in 0..COMPONENTS_PER_IDENTITY {
            assert!(seen.admit("sub:a", &format!("app-{i}")), "component {i}");
        }
        assert!(
            !seen.admit("sub:a", "app-8"),
            "eight are counted, the store's two among them: the 9th is refused"
        );
        assert!(seen.admit("sub:a", "app-0"), "a known component stays");
        assert!(
            seen.admit("sub:b", "app-8"),
            "another identity counts apart"
        );
        // The node's own components carry no owner and are never counted.
        assert!(!seen.by_owner.lock().unwrap().contains_key("kubelet"));
    }

    #[test]
    fn agents_defaults_config_and_star() {
        let a = CacheAgents::new("n1");
        assert!(a.is_agent("kubelet") && a.is_agent("multiplexer-proxy-n1"));
        assert!(!a.is_agent("kubevirt") && !a.is_agent(""));
        a.set_configured("KubeVirt, foo");
        assert!(
            a.is_agent("kubevirt"),
            "configured entries match case-insensitively"
        );
        a.set_configured("*");
        assert!(a.is_agent("anything"));
        a.set_configured("");
        assert!(
            !a.is_agent("anything"),
            "deleting the ConfigMap reverts to defaults"
        );
    }

    #[test]
    fn cacheable_shapes() {
        let a = CacheAgents::new("n1");
        let k = "kubelet/v1.34";
        assert_eq!(
            not_cacheable(&a, &info(Method::GET, "/api/v1/namespaces/d/pods/p", k)),
            None
        );
        assert_eq!(
            not_cacheable(
                &a,
                &info(Method::PUT, "/api/v1/namespaces/d/pods/p/status", k)
            ),
            None
        );
        assert_eq!(
            not_cacheable(&a, &info(Method::GET, "/api/v1/pods?watch=1", k)),
            None
        );
        for (m, p) in [
            (Method::DELETE, "/api/v1/namespaces/d/pods/p"),
            (Method::GET, "/api/v1/namespaces/d/pods/p/log"),
            (Method::POST, "/api/v1/namespaces/d/pods/p/eviction"),
            (
                Method::POST,
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            ),
            (
                Method::GET,
                "/apis/certificates.k8s.io/v1/certificatesigningrequests",
            ),
            (Method::GET, "/version"),
        ] {
            assert!(
                not_cacheable(&a, &info(m.clone(), p, k)).is_some(),
                "{m} {p}"
            );
        }
        assert!(not_cacheable(&a, &info(Method::GET, "/api/v1/pods", "kubevirt/1")).is_some());
        // Another identity's reads are kept in scopes of its own, whatever it
        // claims to be; anonymous ones never.
        let mut pod = info(Method::GET, "/api/v1/namespaces/a/configmaps", "kubevirt/1");
        pod.caller = Principal::Token(crate::request::TokenId {
            hash: "ab".repeat(32),
            subject: None,
        });
        assert_eq!(not_cacheable(&a, &pod), None);
        pod.caller = Principal::Anonymous;
        assert!(not_cacheable(&a, &pod).is_some());
    }
}

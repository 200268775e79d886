//! Who is asking: decided once per request from the listener it arrived on
//! and the credentials it carries, never from a claim such as the
//! User-Agent. Everything that grants something (the node's shortcuts,
//! offline answers, cache scopes) asks this, not the component.

/// Which listener a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Plain HTTP on loopback: kubelet and host-network node components.
    Loopback,
    /// HTTPS on the hub address: pods, via the kernel redirect.
    PodFacing,
}

/// A bearer token, known only by its keyed hash.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenId {
    /// HMAC-SHA256 of the token under the node's secret key (hex).
    pub hash: String,
    /// `iss|sub` of a JWT-shaped token (unverified: it scopes caches only
    /// once the cloud, or the issuer's keys, vouched for the token).
    pub subject: Option<String>,
}

impl TokenId {
    /// The owner of this token's cache scopes: its subject when the token
    /// names one (so a rotated token of the same service account keeps what
    /// the account was authorized for), else the token itself.
    pub fn owner(&self) -> String {
        let mut owner = String::new();
        self.push_owner(&mut owner);
        owner
    }

    fn push_owner(&self, out: &mut String) {
        match &self.subject {
            Some(s) => {
                out.push_str("sub:");
                out.push_str(s);
            }
            None => {
                out.push_str("token:");
                out.push_str(&self.hash[..self.hash.len().min(32)]);
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Principal {
    /// No credentials on the loopback listener: the node's own components.
    Node,
    /// A bearer token on either listener: that token's identity.
    Token(TokenId),
    /// No credentials on the pod-facing listener (and anything resolved
    /// outside a listener): grants nothing.
    #[default]
    Anonymous,
}

impl Principal {
    pub fn is_node(&self) -> bool {
        matches!(self, Principal::Node)
    }

    /// The store's scope owner for a request from `component`: the node's
    /// components keep their per-component caches; any other identity gets
    /// scopes of its own, keyed by who it is as well as by component.
    pub fn cache_owner(&self, component: &str) -> String {
        match self {
            Principal::Node => component.to_owned(),
            // One allocation: this runs on every cached request.
            Principal::Token(t) => {
                let mut owner = String::with_capacity(component.len() + 80);
                owner.push_str(component);
                owner.push('@');
                t.push_owner(&mut owner);
                owner
            }
            Principal::Anonymous => format!("{component}@anonymous"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_separate_identities_and_keep_the_node_as_it_was() {
        let sa = |h: &str| {
            Principal::Token(TokenId {
                hash: h.into(),
                subject: Some("https://k|system:serviceaccount:kube-system:coredns".into()),
            })
        };
        assert_eq!(Principal::Node.cache_owner("kubelet"), "kubelet");
        assert_eq!(
            sa("aa").cache_owner("coredns"),
            sa("bb").cache_owner("coredns")
        );
        let opaque = Principal::Token(TokenId {
            hash: "ab".repeat(32),
            subject: None,
        });
        assert_ne!(
            opaque.cache_owner("coredns"),
            sa("aa").cache_owner("coredns")
        );
        assert_ne!(opaque.cache_owner("kubelet"), "kubelet");
    }
}

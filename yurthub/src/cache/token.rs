//! Offline ServiceAccount token requests (§5.7): kubelet rotating a pod's
//! projected token while the cloud is away gets a short-lived token signed
//! with the node's own secret (`crate::identity`). Upstream signs these with
//! a well-known key, so anyone could forge one; ours are accepted offline by
//! this hub only, as the service account kubelet asked for, and the
//! apiserver rejects them, so kubelet replaces them once the cloud is back.

use serde_json::{Value, json};

/// Lifetime of a minted token.
pub const LIFETIME_SECS: i64 = 60;

/// The TokenRequest answer carrying `token` (expiring at `exp`), built on
/// the request (its spec is kept).
pub fn token_request(request: &Value, namespace: &str, name: &str, token: &str, exp: i64) -> Value {
    let mut out = if request.is_object() {
        request.clone()
    } else {
        json!({})
    };
    out["apiVersion"] = json!("authentication.k8s.io/v1");
    out["kind"] = json!("TokenRequest");
    if !out["metadata"].is_object() {
        out["metadata"] = json!({});
    }
    out["metadata"]["name"] = json!(name);
    out["metadata"]["namespace"] = json!(namespace);
    if !out["spec"].is_object() {
        out["spec"] = json!({});
    }
    out["status"] = json!({
        "token": token,
        "expirationTimestamp": rfc3339(exp),
    });
    out
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_request_keeps_the_spec() {
        let out = token_request(
            &json!({"spec": {"audiences": ["a"]}}),
            "ns",
            "sa",
            "t",
            1_060,
        );
        assert_eq!(out["kind"], "TokenRequest");
        assert_eq!(out["spec"]["audiences"][0], "a");
        assert_eq!(out["status"]["expirationTimestamp"], "1970-01-01T00:17:40Z");
        assert_eq!(out["status"]["token"], "t");
        assert_eq!(out["metadata"]["namespace"], "ns");
    }
}

//! Offline ServiceAccount token requests (§5.7): a short-lived HS256 JWT
//! signed with upstream's well-known key, so in-cluster clients that rotate
//! their projected token keep a syntactically valid one while the cloud is
//! away. Nothing trusts these tokens: the apiserver rejects them, which is
//! the point — they only keep the client from failing hard offline.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Upstream's signing key and issuer.
const KEY: &[u8] = b"openyurt";
const ISSUER: &str = "openyurt";
/// Lifetime of a minted token.
pub const LIFETIME_SECS: i64 = 60;

/// The TokenRequest answer for `system:serviceaccount:<ns>:<name>`, built on
/// the request (its spec is kept).
pub fn token_request(request: &Value, namespace: &str, name: &str, now_unix: i64) -> Value {
    let exp = now_unix + LIFETIME_SECS;
    let token = mint(
        &json!({
            "iss": ISSUER,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "iat": now_unix,
            "nbf": now_unix,
            "exp": exp,
        }),
        KEY,
    );
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

/// A compact HS256 JWS of `claims`.
pub fn mint(claims: &Value, key: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let sig = hmac_sha256(key, signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// HMAC (RFC 2104) over SHA-256.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn token_request_carries_a_signed_jwt() {
        let out = token_request(&json!({"spec": {"audiences": ["a"]}}), "ns", "sa", 1_000);
        assert_eq!(out["kind"], "TokenRequest");
        assert_eq!(out["spec"]["audiences"][0], "a");
        assert_eq!(out["status"]["expirationTimestamp"], "1970-01-01T00:17:40Z");
        let token = out["status"]["token"].as_str().unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["sub"], "system:serviceaccount:ns:sa");
        assert_eq!(claims["iss"], "openyurt");
        assert_eq!(claims["exp"], 1_060);
        let sig = hmac_sha256(KEY, format!("{}.{}", parts[0], parts[1]).as_bytes());
        assert_eq!(URL_SAFE_NO_PAD.encode(sig), parts[2]);
    }
}

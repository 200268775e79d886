//! The parts of a control plane around the apiserver that node agents rely
//! on, run inline after the writes that trigger them: the CSR approver and
//! signer (yurt-manager's csrapprover + kube-controller-manager's signer),
//! bootstrap-token authentication and the bootstrap signer that keeps
//! `kube-public/cluster-info` signed, and the review APIs
//! (SubjectAccessReview, TokenReview, ...) that are answered, never stored.

use base64::Engine as _;
use serde_json::{Value, json};

use super::objects::{self, meta_str, now_rfc3339};
use super::registry::ResourceType;
use super::status::ApiError;
use super::store::{ObjectKey, Write};
use super::{Shared, User, lock, rbac, satoken};

/// Signers kube-controller-manager signs for.
const KNOWN_SIGNERS: &[&str] = &[
    "kubernetes.io/kube-apiserver-client",
    "kubernetes.io/kube-apiserver-client-kubelet",
    "kubernetes.io/kubelet-serving",
];

/// KCM's default --cluster-signing-duration.
const DEFAULT_CERT_SECONDS: i64 = 365 * 24 * 3600;

/// Signer settings (`ApiServerBuilder::cluster_signing_duration`,
/// `signing_backdate`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Signing {
    pub max_duration: Option<std::time::Duration>,
    pub backdate: Option<std::time::Duration>,
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn csr_key(name: &str) -> ObjectKey {
    ObjectKey::new("certificatesigningrequests.certificates.k8s.io", "", name)
}

fn has_condition(csr: &Value, kind: &str) -> bool {
    csr.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == kind && c["status"] == "True")
        })
}

/// Approves (when auto-approval is on) and signs a CSR, like the
/// approver and signer controllers reacting to it.
pub fn reconcile_csr(shared: &Shared, name: &str) {
    if shared.csr_auto_approve {
        let _ = approve_csr(shared, name);
    }
    sign_csr(shared, name);
}

/// Adds the Approved condition (no-op if already approved or denied).
pub fn approve_csr(shared: &Shared, name: &str) -> Result<(), ApiError> {
    shared.store.write(&csr_key(name), |cur, _| {
        let Some(cur) = cur else {
            return Err(ApiError::not_found(
                &super::status::GroupResource::new(
                    "certificates.k8s.io",
                    "certificatesigningrequests",
                ),
                name,
            ));
        };
        if has_condition(cur, "Approved") || has_condition(cur, "Denied") {
            return Ok(Write::Keep);
        }
        let mut next = (**cur).clone();
        let now = now_rfc3339();
        let condition = json!({
            "type": "Approved", "status": "True", "reason": "AutoApproved",
            "message": "approved by the apiserver double's CSR approver",
            "lastUpdateTime": now, "lastTransitionTime": now,
        });
        let status = next
            .as_object_mut()
            .map(|m| m.entry("status").or_insert_with(|| json!({})));
        if let Some(Value::Object(status)) = status {
            let conditions = status.entry("conditions").or_insert_with(|| json!([]));
            if let Some(list) = conditions.as_array_mut() {
                list.push(condition);
            }
        }
        Ok(Write::Put(next))
    })?;
    Ok(())
}

/// Issues the certificate of an approved CSR for a known signer.
fn sign_csr(shared: &Shared, name: &str) {
    let result = shared.store.write::<ApiError>(&csr_key(name), |cur, _| {
        let Some(cur) = cur else { return Ok(Write::Keep) };
        let signer = cur.pointer("/spec/signerName").and_then(Value::as_str).unwrap_or("");
        let signed = cur.pointer("/status/certificate").and_then(Value::as_str).is_some_and(|c| !c.is_empty());
        if signed
            || !KNOWN_SIGNERS.contains(&signer)
            || !has_condition(cur, "Approved")
            || has_condition(cur, "Denied")
            || has_condition(cur, "Failed")
        {
            return Ok(Write::Keep);
        }
        let request = cur.pointer("/spec/request").and_then(Value::as_str).unwrap_or("");
        let pem = base64::engine::general_purpose::STANDARD
            .decode(request)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        let usages: Vec<&str> = cur
            .pointer("/spec/usages")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let mut seconds = cur
            .pointer("/spec/expirationSeconds")
            .and_then(Value::as_i64)
            .map_or(DEFAULT_CERT_SECONDS, |s| s.clamp(600, DEFAULT_CERT_SECONDS));
        if let Some(max) = shared.signing.max_duration {
            seconds = seconds.min(max.as_secs() as i64);
        }
        let mut next = (**cur).clone();
        let lifetime = time::Duration::seconds(seconds);
        let signed = match shared.signing.backdate {
            Some(b) => shared.pki.sign_csr_backdated(
                &pem,
                &usages,
                lifetime,
                time::Duration::try_from(b).unwrap_or(time::Duration::ZERO),
            ),
            None => shared.pki.sign_csr(&pem, &usages, lifetime),
        };
        match signed {
            Ok(cert) => next["status"]["certificate"] = json!(b64(&cert)),
            Err(e) => {
                let now = now_rfc3339();
                let failed = json!({"type": "Failed", "status": "True", "reason": "SignerValidationFailure",
                    "message": e.to_string(), "lastUpdateTime": now, "lastTransitionTime": now});
                if let Some(list) = next["status"]["conditions"].as_array_mut() {
                    list.push(failed);
                }
            }
        }
        Ok(Write::Put(next))
    });
    if let Err(e) = result {
        tracing::warn!(csr = name, error = %e, "signing failed");
    }
}

/// Answers a create of a review resource (never stored).
pub fn review(
    shared: &Shared,
    rt: &ResourceType,
    body: Value,
    user: Option<&User>,
) -> Result<Value, ApiError> {
    let mut out = body;
    if let Some(m) = out.as_object_mut() {
        m.insert("apiVersion".into(), json!(rt.api_version()));
        m.insert("kind".into(), json!(rt.kind));
        let meta = m.entry("metadata").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert("creationTimestamp".into(), Value::Null);
        }
    }
    let anonymous_allowed = shared.allow_anonymous;
    let status = match rt.resource.as_str() {
        "subjectaccessreviews" | "localsubjectaccessreviews" => {
            let user = out
                .pointer("/spec/user")
                .and_then(Value::as_str)
                .unwrap_or("");
            let groups = out
                .pointer("/spec/groups")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            if user.is_empty() && groups == 0 {
                return Err(ApiError::invalid(
                    &rt.kind,
                    &rt.group,
                    "",
                    "spec.user",
                    "FieldValueInvalid",
                    "at least one of user or group must be specified",
                ));
            }
            let groups: Vec<String> = out
                .pointer("/spec/groups")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let subject = User {
                name: user.to_owned(),
                groups,
            };
            let mut spec = out.get("spec").cloned().unwrap_or(Value::Null);
            if rt.resource == "localsubjectaccessreviews"
                && let Some(ra) = spec
                    .get_mut("resourceAttributes")
                    .and_then(Value::as_object_mut)
            {
                let ns = out
                    .pointer("/metadata/namespace")
                    .cloned()
                    .unwrap_or(Value::Null);
                ra.insert("namespace".into(), ns);
            }
            let allowed = if user == "system:anonymous" {
                anonymous_allowed
            } else {
                rbac::Attributes::from_review(&spec)
                    .is_some_and(|a| lock(&shared.policy).allows(&subject, &a))
            };
            json!({"allowed": allowed, "reason": if allowed { "allowed by the apiserver double" } else { "" }})
        }
        "selfsubjectaccessreviews" => {
            let spec = out.get("spec").cloned().unwrap_or(Value::Null);
            let allowed = match user {
                Some(u) => rbac::Attributes::from_review(&spec)
                    .is_some_and(|a| lock(&shared.policy).allows(u, &a)),
                None => anonymous_allowed,
            };
            json!({"allowed": allowed})
        }
        "tokenreviews" => {
            let token = out
                .pointer("/spec/token")
                .and_then(Value::as_str)
                .unwrap_or("");
            let wanted: Vec<String> = out
                .pointer("/spec/audiences")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let static_user = lock(&shared.tokens)
                .get(token)
                .cloned()
                .or_else(|| bootstrap_token_user(shared, token));
            let found = match static_user {
                // Non-JWT authenticators answer for the API audiences.
                Some(u) => {
                    let auds = if wanted.is_empty() {
                        shared.issuer.api_audiences.clone()
                    } else {
                        wanted.clone()
                    };
                    Some((u, auds))
                }
                None => satoken::authenticate(shared, token, Some(&wanted)).ok(),
            };
            match found {
                Some((u, auds)) => {
                    json!({"authenticated": true, "user": {"username": u.name, "groups": u.groups},
                    "audiences": auds})
                }
                None => json!({"user": {}, "error": "invalid bearer token"}),
            }
        }
        "selfsubjectreviews" => {
            let (name, groups) = match user {
                Some(u) => (u.name.clone(), u.groups.clone()),
                None => (
                    "system:anonymous".to_owned(),
                    vec!["system:unauthenticated".to_owned()],
                ),
            };
            json!({"userInfo": {"username": name, "groups": groups}})
        }
        _ => json!({}),
    };
    if let Some(m) = out.as_object_mut() {
        m.insert("status".into(), status);
    }
    Ok(out)
}

/// Authenticates a bootstrap token `<id>.<secret>` against its
/// `kube-system/bootstrap-token-<id>` Secret, like the bootstrap authenticator.
pub fn bootstrap_token_user(shared: &Shared, token: &str) -> Option<User> {
    let (id, secret) = token.split_once('.')?;
    let valid = |s: &str, n: usize| {
        s.len() == n
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    };
    if !valid(id, 6) || !valid(secret, 16) {
        return None;
    }
    let obj = shared.store.get(&ObjectKey::new(
        "secrets",
        "kube-system",
        &format!("bootstrap-token-{id}"),
    ))?;
    if obj.get("type").and_then(Value::as_str) != Some("bootstrap.kubernetes.io/token") {
        return None;
    }
    let field = |k: &str| secret_field(&obj, k);
    if field("token-secret").as_deref() != Some(secret)
        || field("usage-bootstrap-authentication").as_deref() != Some("true")
    {
        return None;
    }
    if let Some(exp) = field("expiration")
        && let Ok(t) =
            time::OffsetDateTime::parse(&exp, &time::format_description::well_known::Rfc3339)
        && t < time::OffsetDateTime::now_utc()
    {
        return None;
    }
    let mut groups = vec!["system:bootstrappers".to_owned()];
    if let Some(extra) = field("auth-extra-groups") {
        groups.extend(
            extra
                .split(',')
                .map(|g| g.trim().to_owned())
                .filter(|g| !g.is_empty()),
        );
    }
    groups.push("system:authenticated".to_owned());
    Some(User {
        name: format!("system:bootstrap:{id}"),
        groups,
    })
}

fn secret_field(secret: &Value, key: &str) -> Option<String> {
    if let Some(s) = secret
        .pointer(&format!("/stringData/{key}"))
        .and_then(Value::as_str)
    {
        return Some(s.to_owned());
    }
    let raw = secret
        .pointer(&format!("/data/{key}"))
        .and_then(Value::as_str)?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(raw).ok()?;
    String::from_utf8(bytes).ok()
}

/// The `kube-public/cluster-info` kubeconfig a kubeadm cluster publishes.
pub fn cluster_info_kubeconfig(shared: &Shared) -> String {
    let port = shared.port.load(std::sync::atomic::Ordering::SeqCst);
    format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://127.0.0.1:{port}\n  name: \"\"\ncontexts: null\ncurrent-context: \"\"\nkind: Config\npreferences: {{}}\nusers: null\n",
        b64(shared.pki.ca_pem())
    )
}

/// The bootstrap signer: `jws-kubeconfig-<id>` in cluster-info for every
/// signing bootstrap token, a detached HS256 JWS of the kubeconfig keyed by
/// the token secret (what kubeadm join verifies).
pub fn sync_cluster_info(shared: &Shared) {
    let rv = shared.store.current_rv();
    let tokens: Vec<(String, String)> = shared
        .store
        .list_at("secrets", Some("kube-system"), rv, None)
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, s)| {
            s.get("type").and_then(Value::as_str) == Some("bootstrap.kubernetes.io/token")
        })
        .filter(|(_, s)| secret_field(s, "usage-bootstrap-signing").as_deref() == Some("true"))
        .filter_map(|(_, s)| {
            Some((
                secret_field(&s, "token-id")?,
                secret_field(&s, "token-secret")?,
            ))
        })
        .collect();
    let key = ObjectKey::new("configmaps", "kube-public", "cluster-info");
    let _ = shared.store.write::<ApiError>(&key, |cur, _| {
        let Some(cur) = cur else {
            return Ok(Write::Keep);
        };
        let mut next = (**cur).clone();
        let kubeconfig = next
            .pointer("/data/kubeconfig")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let Some(data) = next.get_mut("data").and_then(Value::as_object_mut) else {
            return Ok(Write::Keep);
        };
        data.retain(|k, _| !k.starts_with("jws-kubeconfig-"));
        for (id, secret) in &tokens {
            data.insert(
                format!("jws-kubeconfig-{id}"),
                json!(detached_jws(&kubeconfig, id, secret)),
            );
        }
        if next == **cur {
            Ok(Write::Keep)
        } else {
            Ok(Write::Put(next))
        }
    });
}

/// `header..signature` of an HS256 JWS over `content` (payload detached).
pub fn detached_jws(content: &str, token_id: &str, token_secret: &str) -> String {
    let enc = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let header = enc(json!({"alg": "HS256", "kid": token_id})
        .to_string()
        .as_bytes());
    let signing_input = format!("{header}.{}", enc(content.as_bytes()));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token_secret.as_bytes());
    let sig = ring::hmac::sign(&key, signing_input.as_bytes());
    format!("{header}..{}", enc(sig.as_ref()))
}

/// Creates cluster-info at bootstrap.
pub fn create_cluster_info(shared: &Shared) -> Result<(), ApiError> {
    let cm = shared
        .registry
        .lookup("", "v1", "configmaps")
        .ok_or_else(|| ApiError::internal("configmaps missing"))?;
    objects::create(
        shared,
        &cm,
        Some("kube-public"),
        json!({"metadata": {"name": "cluster-info"}, "data": {"kubeconfig": cluster_info_kubeconfig(shared)}}),
        false,
    )?;
    Ok(())
}

/// Runs the controllers interested in a write to `rt`/`obj`.
pub fn after_write(shared: &Shared, rt: &ResourceType, obj: &Value) {
    match (rt.group.as_str(), rt.resource.as_str()) {
        ("certificates.k8s.io", "certificatesigningrequests") => {
            reconcile_csr(shared, meta_str(obj, "name"))
        }
        ("", "secrets") if meta_str(obj, "namespace") == "kube-system" => sync_cluster_info(shared),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detached_jws_has_no_payload() {
        let jws = detached_jws("content", "abcdef", "0123456789abcdef");
        let parts: Vec<&str> = jws.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert!(parts[1].is_empty());
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[0])
            .expect("b64");
        assert_eq!(header, br#"{"alg":"HS256","kid":"abcdef"}"#);
        assert_ne!(jws, detached_jws("other", "abcdef", "0123456789abcdef"));
    }
}

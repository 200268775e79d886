//! One certificate issuance: create a CertificateSigningRequest, wait until
//! the signer put a certificate in its status (or someone denied it), and
//! return the certificate with the key it belongs to.

use std::time::{Duration, Instant};

use base64::Engine as _;
use http::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::api::{self, ApiClient};
use super::csr::{self, CertInfo, Subject};

const CSR_PATH: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Csr(#[from] csr::Error),
    #[error("creating the CSR: {0}")]
    Create(api::Error),
    #[error("CSR {name} was denied: {reason}: {message}")]
    Denied {
        name: String,
        reason: String,
        message: String,
    },
    #[error("CSR {name} failed: {reason}: {message}")]
    Failed {
        name: String,
        reason: String,
        message: String,
    },
    #[error("CSR {name} was not issued within {after:?} (is a CSR approver running?)")]
    NotIssued { name: String, after: Duration },
    #[error("CSR {name} disappeared before it was issued")]
    Gone { name: String },
    #[error("shutting down")]
    Cancelled,
}

impl Error {
    /// The apiserver refused the credentials the CSR was sent with.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, Error::Create(api::Error::Status { code, .. })
            if code.as_u16() == 401 || code.as_u16() == 403)
    }
}

/// A certificate and its key, as issued.
#[derive(Clone)]
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
    pub info: CertInfo,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// What to ask for.
#[derive(Debug, Clone)]
pub struct Order {
    /// A short prefix of the CSR name (`yurthub-client`, `yurthub-serving`).
    pub prefix: &'static str,
    pub signer: &'static str,
    pub usages: [&'static str; 3],
    pub subject: Subject,
    pub wait: Duration,
}

/// Submits a CSR for a fresh key and waits for its certificate.
pub async fn issue(
    client: &ApiClient,
    order: &Order,
    shutdown: &CancellationToken,
) -> Result<Issued, Error> {
    let request = csr::new_request(&order.subject)?;
    let suffix: String = (0..8)
        .map(|_| char::from(b"0123456789abcdef"[rand::random_range(0..16)]))
        .collect();
    let node = order.subject.common_name.trim_start_matches("system:node:");
    let mut name = format!("{}-{node}-{suffix}", order.prefix);
    name.truncate(253);
    let body = json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(request.pem.as_bytes()),
            "signerName": order.signer,
            "usages": order.usages,
        },
    });
    client
        .json(Method::POST, CSR_PATH, Some(&body))
        .await
        .map_err(Error::Create)?;
    tracing::info!(csr = %name, signer = order.signer, "certificate signing request created");

    let started = Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Err(Error::Cancelled),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
        match client
            .json(Method::GET, &format!("{CSR_PATH}/{name}"), None)
            .await
        {
            Ok(obj) => {
                if let Some(done) = outcome(&name, &obj) {
                    let chain_pem = done?;
                    let key_pem = request.key.serialize_pem();
                    csr::certified_key(&chain_pem, &key_pem)?;
                    let info = CertInfo::from_pem(&chain_pem)?;
                    tracing::info!(csr = %name, not_after = ?info.not_after, "certificate issued");
                    return Ok(Issued {
                        chain_pem,
                        key_pem,
                        info,
                    });
                }
            }
            Err(api::Error::Status { code, .. }) if code.as_u16() == 404 => {
                return Err(Error::Gone { name });
            }
            Err(e) => tracing::debug!(csr = %name, error = %e, "polling the CSR failed; retrying"),
        }
        if started.elapsed() > order.wait {
            return Err(Error::NotIssued {
                name,
                after: order.wait,
            });
        }
    }
}

/// None while pending; the certificate PEM once issued; an error once denied
/// or failed.
fn outcome(name: &str, obj: &Value) -> Option<Result<String, Error>> {
    let conditions = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for c in &conditions {
        if c["status"] != "True" {
            continue;
        }
        let reason = c["reason"].as_str().unwrap_or("").to_owned();
        let message = c["message"].as_str().unwrap_or("").to_owned();
        match c["type"].as_str() {
            Some("Denied") => {
                return Some(Err(Error::Denied {
                    name: name.into(),
                    reason,
                    message,
                }));
            }
            Some("Failed") => {
                return Some(Err(Error::Failed {
                    name: name.into(),
                    reason,
                    message,
                }));
            }
            _ => {}
        }
    }
    let cert = obj.pointer("/status/certificate").and_then(Value::as_str)?;
    if cert.is_empty() {
        return None;
    }
    Some(
        base64::engine::general_purpose::STANDARD
            .decode(cert)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                Error::Csr(csr::Error::BadCertificate(
                    "status.certificate is not base64 PEM".into(),
                ))
            }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denied_wins_over_a_certificate() {
        let obj = json!({"status": {"certificate": "QQ==", "conditions": [
            {"type": "Denied", "status": "True", "reason": "R", "message": "M"}]}});
        let e = outcome("c", &obj).unwrap().unwrap_err();
        assert_eq!(e.to_string(), "CSR c was denied: R: M");
        assert!(outcome("c", &json!({"status": {}})).is_none());
        assert!(outcome("c", &json!({"status": {"certificate": ""}})).is_none());
    }
}

//! Bootstrap credentials: what the hub uses to ask for its first client
//! certificate (and again when its certificate expired).
//!
//! Either a bootstrap kubeconfig (`--bootstrap-file`, a bearer token and the
//! cluster CA), or a join token, from which the kubeconfig is built the way
//! `kubeadm join` does token discovery:
//!
//! 1. fetch `kube-public/cluster-info` anonymously over TLS *without*
//!    trusting the server yet (the token secret is never sent to it);
//! 2. verify the detached JWS `jws-kubeconfig-<token-id>` over the embedded
//!    kubeconfig with the token secret (HS256): only someone who knows the
//!    token could have signed it;
//! 3. pin the CA in it against `--discovery-token-ca-cert-hash`
//!    (`sha256:<hex of the SubjectPublicKeyInfo>`), unless
//!    `--discovery-token-unsafe-skip-ca-verification`;
//! 4. fetch cluster-info again, now trusting that CA, and require the same
//!    kubeconfig (the server really holds the CA's key).

use std::sync::Arc;

use base64::Engine as _;
use http::{Method, Uri};
use serde::Deserialize;
use serde_json::Value;
use sha2::Digest as _;

use super::api::{self, ApiClient};
use crate::remote::transport::SocketHook;

const CLUSTER_INFO: &str = "/api/v1/namespaces/kube-public/configmaps/cluster-info";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the bootstrap kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error("invalid join token: {0} (expected [a-z0-9]{{6}}.[a-z0-9]{{16}})")]
    BadToken(String),
    #[error("invalid --discovery-token-ca-cert-hash {0:?}: expected sha256:<64 hex digits>")]
    BadPin(String),
    #[error("fetching cluster-info from {server}: {source}")]
    Fetch { server: String, source: api::Error },
    #[error("cluster-info from {server} is malformed: {reason}")]
    Malformed { server: String, reason: String },
    #[error(
        "cluster-info from {server} has no JWS signature for token id {token_id:?}; the token is unknown or expired, or the bootstrap signer has not signed it"
    )]
    NoSignature { server: String, token_id: String },
    #[error(
        "cluster-info from {server}: the JWS signature does not verify with the join token; refusing the cluster CA it carries"
    )]
    BadSignature { server: String },
    #[error(
        "cluster-info from {server}: the cluster CA's public key hash {actual} matches no --discovery-token-ca-cert-hash ({expected}); refusing it"
    )]
    PinMismatch {
        server: String,
        actual: String,
        expected: String,
    },
    #[error(
        "cluster-info from {server} changed between the unverified and the CA-verified fetch; refusing it"
    )]
    Changed { server: String },
    #[error("no server could be bootstrapped from: {0}")]
    AllFailed(String),
}

/// What a CSR is submitted with before the hub has a certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub ca_pem: String,
    pub token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// A bootstrap kubeconfig for `server`, as upstream writes `bootstrap-hub.conf`.
    pub fn kubeconfig(&self, server: &str) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes());
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: cluster\n  cluster:\n    server: {server}\n    certificate-authority-data: {b64}\ncontexts:\n- name: bootstrap\n  context:\n    cluster: cluster\n    user: tls-bootstrap-token-user\ncurrent-context: bootstrap\nusers:\n- name: tls-bootstrap-token-user\n  user:\n    token: {}\n",
            self.token
        )
    }
}

/// A join token `<id>.<secret>`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub id: String,
    secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JoinToken({}.<redacted>)", self.id)
    }
}

impl JoinToken {
    pub fn parse(s: &str) -> Result<JoinToken, Error> {
        let s = s.trim();
        let ok = |p: &str, n: usize| {
            p.len() == n
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        match s.split_once('.') {
            Some((id, secret)) if ok(id, 6) && ok(secret, 16) => Ok(JoinToken {
                id: id.to_owned(),
                secret: secret.to_owned(),
            }),
            _ => Err(Error::BadToken(
                s.split_once('.')
                    .map(|(id, _)| format!("{id}.<redacted>"))
                    .unwrap_or_else(|| "<redacted>".into()),
            )),
        }
    }

    pub fn as_bearer(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }
}

/// Validated CA pins.
#[derive(Debug, Clone, Default)]
pub struct Pins(Vec<[u8; 32]>);

impl Pins {
    pub fn parse(flags: &[String]) -> Result<Pins, Error> {
        let mut out = Vec::new();
        for f in flags.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            let hex_part = f
                .strip_prefix("sha256:")
                .ok_or_else(|| Error::BadPin(f.to_owned()))?;
            let bytes = hex::decode(hex_part).map_err(|_| Error::BadPin(f.to_owned()))?;
            out.push(
                <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| Error::BadPin(f.to_owned()))?,
            );
        }
        Ok(Pins(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn describe(&self) -> String {
        self.0
            .iter()
            .map(|p| format!("sha256:{}", hex::encode(p)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `sha256:<hex>` of the SubjectPublicKeyInfo of the first certificate in
/// `ca_pem` (what `kubeadm token create --print-join-command` prints).
pub fn ca_cert_hash(ca_pem: &str) -> Option<String> {
    spki_hashes(ca_pem)
        .first()
        .map(|h| format!("sha256:{}", hex::encode(h)))
}

fn spki_hashes(ca_pem: &str) -> Vec<[u8; 32]> {
    rustls_pemfile::certs(&mut ca_pem.as_bytes())
        .filter_map(Result::ok)
        .filter_map(|der| {
            let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
            Some(sha2::Sha256::digest(cert.tbs_certificate.subject_pki.raw).into())
        })
        .collect()
}

/// Verifies a detached JWS (`header..signature`, HS256) over `content`.
pub fn verify_detached_jws(jws: &str, content: &str, token: &JoinToken) -> bool {
    let b64 = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = jws.split('.');
    let (Some(header), Some(""), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Ok(header_json) = b64.decode(header) else {
        return false;
    };
    let Ok(h) = serde_json::from_slice::<Value>(&header_json) else {
        return false;
    };
    // Only HS256, and a kid (when present) naming this token.
    if h["alg"] != "HS256" || (!h["kid"].is_null() && h["kid"] != token.id.as_str()) {
        return false;
    }
    let Ok(sig) = b64.decode(sig) else {
        return false;
    };
    let signing_input = format!("{header}.{}", b64.encode(content.as_bytes()));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.secret.as_bytes());
    ring::hmac::verify(&key, signing_input.as_bytes(), &sig).is_ok()
}

#[derive(Debug, Deserialize, Default)]
struct Kubeconfig {
    #[serde(default, deserialize_with = "nullable")]
    clusters: Vec<Named<ClusterEntry>>,
    #[serde(default, deserialize_with = "nullable")]
    users: Vec<Named<UserEntry>>,
    #[serde(default, deserialize_with = "nullable")]
    contexts: Vec<Named<ContextEntry>>,
    #[serde(rename = "current-context", default, deserialize_with = "nullable")]
    current_context: String,
}

#[derive(Debug, Deserialize)]
struct Named<T> {
    #[serde(default, deserialize_with = "nullable")]
    name: String,
    #[serde(flatten)]
    item: T,
}

#[derive(Debug, Deserialize, Default)]
struct ClusterEntry {
    #[serde(default, deserialize_with = "nullable")]
    cluster: ClusterFields,
}

#[derive(Debug, Deserialize, Default)]
struct ClusterFields {
    #[serde(default, deserialize_with = "nullable")]
    server: String,
    #[serde(
        rename = "certificate-authority-data",
        default,
        deserialize_with = "nullable"
    )]
    ca_data: String,
    #[serde(
        rename = "certificate-authority",
        default,
        deserialize_with = "nullable"
    )]
    ca_file: String,
}

#[derive(Debug, Deserialize, Default)]
struct UserEntry {
    #[serde(default, deserialize_with = "nullable")]
    user: UserFields,
}

#[derive(Debug, Deserialize, Default)]
struct UserFields {
    #[serde(default, deserialize_with = "nullable")]
    token: String,
    #[serde(rename = "tokenFile", default, deserialize_with = "nullable")]
    token_file: String,
    #[serde(
        rename = "client-certificate-data",
        default,
        deserialize_with = "nullable"
    )]
    cert_data: String,
    #[serde(rename = "client-key-data", default, deserialize_with = "nullable")]
    key_data: String,
    #[serde(rename = "client-certificate", default, deserialize_with = "nullable")]
    cert_file: String,
    #[serde(rename = "client-key", default, deserialize_with = "nullable")]
    key_file: String,
}

#[derive(Debug, Deserialize, Default)]
struct ContextEntry {
    #[serde(default, deserialize_with = "nullable")]
    context: ContextFields,
}

#[derive(Debug, Deserialize, Default)]
struct ContextFields {
    #[serde(default, deserialize_with = "nullable")]
    cluster: String,
    #[serde(default, deserialize_with = "nullable")]
    user: String,
}

/// kubeadm writes `contexts: null` and `users: null` in cluster-info.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The parts of a kubeconfig the hub uses: server, CA PEM, bearer token.
#[derive(Clone, PartialEq, Eq)]
pub struct ParsedKubeconfig {
    pub server: String,
    pub ca_pem: String,
    pub token: String,
    /// Client certificate chain and key PEM, when the user has them.
    pub client_pem: Option<(String, String)>,
}

impl std::fmt::Debug for ParsedKubeconfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedKubeconfig")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// Parses a kubeconfig's current context (or its first cluster and user).
pub fn parse_kubeconfig(
    text: &str,
    base_dir: &std::path::Path,
) -> Result<ParsedKubeconfig, String> {
    let kc: Kubeconfig = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == kc.current_context)
        .map(|c| &c.item.context);
    let cluster = match ctx {
        Some(c) => kc.clusters.iter().find(|x| x.name == c.cluster),
        None => kc.clusters.first(),
    }
    .map(|c| &c.item.cluster)
    .ok_or("no cluster")?;
    let user = match ctx {
        Some(c) => kc.users.iter().find(|x| x.name == c.user),
        None => kc.users.first(),
    }
    .map(|u| &u.item.user);
    let ca_pem = if !cluster.ca_data.is_empty() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(cluster.ca_data.trim())
            .map_err(|e| format!("certificate-authority-data: {e}"))?;
        String::from_utf8(bytes).map_err(|e| format!("certificate-authority-data: {e}"))?
    } else if !cluster.ca_file.is_empty() {
        let p = base_dir.join(&cluster.ca_file);
        std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?
    } else {
        String::new()
    };
    let token = match user {
        Some(u) if !u.token.is_empty() => u.token.clone(),
        Some(u) if !u.token_file.is_empty() => {
            let p = base_dir.join(&u.token_file);
            std::fs::read_to_string(&p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .trim()
                .to_owned()
        }
        _ => String::new(),
    };
    let data_or_file = |data: &str, file: &str| -> Result<String, String> {
        if !data.is_empty() {
            let b = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|e| e.to_string())?;
            String::from_utf8(b).map_err(|e| e.to_string())
        } else if !file.is_empty() {
            let p = base_dir.join(file);
            std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))
        } else {
            Ok(String::new())
        }
    };
    let client_pem = match user {
        Some(u) => {
            let cert = data_or_file(&u.cert_data, &u.cert_file)?;
            let key = data_or_file(&u.key_data, &u.key_file)?;
            (!cert.is_empty() && !key.is_empty()).then_some((cert, key))
        }
        None => None,
    };
    Ok(ParsedKubeconfig {
        server: cluster.server.clone(),
        ca_pem,
        token,
        client_pem,
    })
}

/// Reads a bootstrap kubeconfig: it must carry a CA and a bearer token.
pub fn from_file(path: &std::path::Path) -> Result<Credentials, Error> {
    let err = |reason: String| Error::Kubeconfig {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let kc =
        parse_kubeconfig(&text, path.parent().unwrap_or(std::path::Path::new("."))).map_err(err)?;
    if kc.ca_pem.is_empty() {
        return Err(err("no certificate-authority(-data)".into()));
    }
    api::roots_from_pem(&kc.ca_pem).map_err(err)?;
    if kc.token.is_empty() {
        return Err(err("no bearer token for the current user".into()));
    }
    Ok(Credentials {
        ca_pem: kc.ca_pem,
        token: kc.token,
    })
}

/// Token discovery against each server in turn; the first that works wins.
pub async fn discover(
    servers: &[Uri],
    token: &JoinToken,
    pins: &Pins,
    hook: Option<SocketHook>,
) -> Result<Credentials, Error> {
    let mut failures = Vec::new();
    for server in servers {
        match discover_one(server, token, pins, hook.clone()).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::warn!(server = %server, error = %e, "token discovery failed");
                // A forged, unsigned or mismatching answer is a verdict on
                // the token or the cluster, not on this server: report it.
                if matches!(
                    e,
                    Error::BadSignature { .. }
                        | Error::NoSignature { .. }
                        | Error::PinMismatch { .. }
                        | Error::Changed { .. }
                ) {
                    return Err(e);
                }
                failures.push(e.to_string());
            }
        }
    }
    Err(Error::AllFailed(failures.join("; ")))
}

async fn discover_one(
    server: &Uri,
    token: &JoinToken,
    pins: &Pins,
    hook: Option<SocketHook>,
) -> Result<Credentials, Error> {
    let name = server.to_string();
    let insecure = api::tls_with_verifier(Arc::new(AcceptAnyServer::new()), None);
    let first = fetch(
        ApiClient::new(server.clone(), insecure).with_hook(hook.clone()),
        &name,
    )
    .await?;
    let data = &first["data"];
    let kubeconfig = data["kubeconfig"]
        .as_str()
        .ok_or_else(|| Error::Malformed {
            server: name.clone(),
            reason: "no data.kubeconfig".into(),
        })?;
    let jws = data[format!("jws-kubeconfig-{}", token.id).as_str()]
        .as_str()
        .ok_or_else(|| Error::NoSignature {
            server: name.clone(),
            token_id: token.id.clone(),
        })?;
    if !verify_detached_jws(jws, kubeconfig, token) {
        return Err(Error::BadSignature { server: name });
    }
    let parsed = parse_kubeconfig(kubeconfig, std::path::Path::new("/")).map_err(|reason| {
        Error::Malformed {
            server: name.clone(),
            reason,
        }
    })?;
    let roots = api::roots_from_pem(&parsed.ca_pem).map_err(|reason| Error::Malformed {
        server: name.clone(),
        reason,
    })?;
    if pins.is_empty() {
        tracing::warn!(
            server = %name,
            "--discovery-token-unsafe-skip-ca-verification: trusting the cluster CA from cluster-info without a pin"
        );
    } else {
        let hashes = spki_hashes(&parsed.ca_pem);
        if !hashes.iter().any(|h| pins.0.contains(h)) {
            return Err(Error::PinMismatch {
                server: name,
                actual: hashes
                    .iter()
                    .map(|h| format!("sha256:{}", hex::encode(h)))
                    .collect::<Vec<_>>()
                    .join(", "),
                expected: pins.describe(),
            });
        }
    }
    let secure = api::tls_with_roots(roots, None);
    let second = fetch(
        ApiClient::new(server.clone(), secure).with_hook(hook),
        &name,
    )
    .await?;
    if second["data"]["kubeconfig"].as_str() != Some(kubeconfig) {
        return Err(Error::Changed { server: name });
    }
    Ok(Credentials {
        ca_pem: parsed.ca_pem,
        token: token.as_bearer(),
    })
}

async fn fetch(client: ApiClient, server: &str) -> Result<Value, Error> {
    client
        .json(Method::GET, CLUSTER_INFO, None)
        .await
        .map_err(|source| Error::Fetch {
            server: server.to_owned(),
            source,
        })
}

/// Accepts any server certificate (signatures in the handshake are still
/// checked). Used only for the anonymous cluster-info fetch, whose content
/// is authenticated by the JWS and the CA pin, never for anything secret.
#[derive(Debug)]
struct AcceptAnyServer {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl AcceptAnyServer {
    fn new() -> AcceptAnyServer {
        AcceptAnyServer {
            provider: super::provider(),
        }
    }
}

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> JoinToken {
        JoinToken::parse("abcdef.0123456789abcdef").unwrap()
    }

    fn sign(content: &str, id: &str, secret: &str) -> String {
        let b64 = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(format!(r#"{{"alg":"HS256","kid":"{id}"}}"#));
        let input = format!("{header}.{}", b64.encode(content));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        format!(
            "{header}..{}",
            b64.encode(ring::hmac::sign(&key, input.as_bytes()).as_ref())
        )
    }

    #[test]
    fn jws_verifies_only_with_the_right_secret_and_content() {
        let t = token();
        let good = sign("kc", "abcdef", "0123456789abcdef");
        assert!(verify_detached_jws(&good, "kc", &t));
        assert!(!verify_detached_jws(&good, "kc2", &t));
        assert!(!verify_detached_jws(
            &sign("kc", "abcdef", "fedcba9876543210"),
            "kc",
            &t
        ));
        assert!(!verify_detached_jws(
            &sign("kc", "zzzzzz", "0123456789abcdef"),
            "kc",
            &t
        ));
        assert!(!verify_detached_jws("garbage", "kc", &t));
    }

    #[test]
    fn tokens_and_pins_are_validated_without_leaking_secrets() {
        let e = JoinToken::parse("abcdef.SECRETSECRETSECR").unwrap_err();
        assert!(!e.to_string().contains("SECRET"), "{e}");
        assert!(JoinToken::parse("abc.0123456789abcdef").is_err());
        assert!(format!("{:?}", token()).contains("redacted"));
        assert!(Pins::parse(&["sha256:00".into()]).is_err());
        assert!(Pins::parse(&["md5:00".into()]).is_err());
        let p = Pins::parse(&[format!("sha256:{}", "ab".repeat(32))]).unwrap();
        assert!(!p.is_empty());
    }

    #[test]
    fn kubeconfig_current_context_is_used() {
        let ca = base64::engine::general_purpose::STANDARD.encode("PEM");
        let text = format!(
            "apiVersion: v1\nclusters:\n- name: a\n  cluster:\n    server: https://a\n- name: b\n  cluster:\n    server: https://b\n    certificate-authority-data: {ca}\nusers:\n- name: u\n  user:\n    token: tok\ncontexts:\n- name: c\n  context:\n    cluster: b\n    user: u\ncurrent-context: c\n"
        );
        let kc = parse_kubeconfig(&text, std::path::Path::new("/")).unwrap();
        assert_eq!(kc.server, "https://b");
        assert_eq!(kc.ca_pem, "PEM");
        assert_eq!(kc.token, "tok");
        // cluster-info as kubeadm publishes it.
        let ci = format!(
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: https://x\n  name: \"\"\ncontexts: null\ncurrent-context: \"\"\nkind: Config\npreferences: {{}}\nusers: null\n"
        );
        let kc = parse_kubeconfig(&ci, std::path::Path::new("/")).unwrap();
        assert_eq!(
            (kc.server.as_str(), kc.ca_pem.as_str()),
            ("https://x", "PEM")
        );
    }
}

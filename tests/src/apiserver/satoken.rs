//! Service-account tokens as kube-apiserver issues and checks them: ES256
//! JWTs signed by the cluster's service-account key (`kid` = base64url of
//! the SHA-256 of the public key's PKIX DER, like the apiserver computes
//! it), the TokenRequest claims, the bound-token authenticator (signature,
//! iss, aud against the API audiences, exp/nbf/iat with go-jose's one-minute
//! leeway, the service account and bound pod still existing with the same
//! uid) and the OIDC discovery documents of ServiceAccountIssuerDiscovery.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::store::ObjectKey;
use super::{Shared, User};

/// The default `--service-account-issuer` of kubeadm clusters.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
pub const OPENID_CONFIG_PATH: &str = "/.well-known/openid-configuration";
pub const JWKS_PATH: &str = "/openid/v1/jwks";
/// go-jose's `jwt.DefaultLeeway`, used by the service-account validator.
const LEEWAY_SECS: i64 = 60;
/// The kubelet's default projected-token lifetime, which the apiserver
/// extends (`--service-account-extend-token-expiration`, default on).
const WARN_ONLY_SECS: i64 = 3607;
const EXTENDED_SECS: i64 = 365 * 24 * 3600;
/// PKIX SubjectPublicKeyInfo prefix of an uncompressed P-256 point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Errors creating a signing key.
#[derive(Debug, thiserror::Error)]
pub enum SaTokenError {
    #[error("cannot generate the service-account key: {0}")]
    KeyGen(String),
}

/// One ES256 key pair with its key id and public JWK.
struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwk: Value,
}

impl SigningKey {
    fn generate() -> Result<Self, SaTokenError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|e| SaTokenError::KeyGen(e.to_string()))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| SaTokenError::KeyGen(e.to_string()))?;
        let point = pair.public_key().as_ref();
        if point.len() != 65 {
            return Err(SaTokenError::KeyGen("unexpected P-256 point".into()));
        }
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(point);
        let kid = b64(ring::digest::digest(&ring::digest::SHA256, &spki).as_ref());
        let (x, y) = (b64(&point[1..33]), b64(&point[33..]));
        let decoding = DecodingKey::from_ec_components(&x, &y)
            .map_err(|e| SaTokenError::KeyGen(e.to_string()))?;
        Ok(Self {
            jwk: json!({"use": "sig", "kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256", "x": x, "y": y}),
            kid,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            decoding,
        })
    }
}

/// A `{name, uid}` reference inside the `kubernetes.io` claim.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjRef {
    pub name: String,
    pub uid: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct KubeClaims {
    namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<ObjRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pod: Option<ObjRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret: Option<ObjRef>,
    serviceaccount: ObjRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    warnafter: Option<i64>,
}

/// The claims of a bound token, in the (alphabetical) order go-jose writes.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Claims {
    aud: Vec<String>,
    exp: i64,
    iat: i64,
    iss: String,
    jti: String,
    #[serde(rename = "kubernetes.io")]
    kube: KubeClaims,
    nbf: i64,
    sub: String,
}

/// What to put in a token.
#[derive(Clone, Debug)]
pub struct Mint {
    pub namespace: String,
    pub name: String,
    pub sa_uid: String,
    pub audiences: Vec<String>,
    pub issued_at: SystemTime,
    pub lifetime: Duration,
    pub pod: Option<ObjRef>,
    pub node: Option<ObjRef>,
    pub secret: Option<ObjRef>,
    /// `kubernetes.io.warnafter` of an extended token.
    pub warn_after: Option<i64>,
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn now_unix() -> i64 {
    unix(SystemTime::now())
}

/// The cluster's token issuer: its key, a second key for forgeries, the
/// issuer URL, the API audiences and the discovery settings.
pub struct Issuer {
    pub url: String,
    /// `--api-audiences` (default: the issuer).
    pub api_audiences: Vec<String>,
    /// `--service-account-jwks-uri` (default: the apiserver's own address).
    pub jwks_uri: Option<String>,
    key: SigningKey,
    forger: SigningKey,
}

impl Issuer {
    pub fn new(
        url: String,
        api_audiences: Option<Vec<String>>,
        jwks_uri: Option<String>,
    ) -> Result<Self, SaTokenError> {
        Ok(Self {
            api_audiences: api_audiences.unwrap_or_else(|| vec![url.clone()]),
            url,
            jwks_uri,
            key: SigningKey::generate()?,
            forger: SigningKey::generate()?,
        })
    }

    pub fn kid(&self) -> &str {
        &self.key.kid
    }

    /// Signs `m` with the cluster key, or (`forged`) with another key under
    /// the cluster key's `kid`, as an attacker would.
    pub fn sign(&self, m: &Mint, forged: bool) -> String {
        let key = if forged { &self.forger } else { &self.key };
        let iat = unix(m.issued_at);
        let lifetime = i64::try_from(m.lifetime.as_secs()).unwrap_or(i64::MAX);
        let claims = Claims {
            aud: if m.audiences.is_empty() {
                self.api_audiences.clone()
            } else {
                m.audiences.clone()
            },
            exp: iat.saturating_add(lifetime),
            iat,
            iss: self.url.clone(),
            jti: super::objects::new_uid(),
            kube: KubeClaims {
                namespace: m.namespace.clone(),
                node: m.node.clone(),
                pod: m.pod.clone(),
                secret: m.secret.clone(),
                serviceaccount: ObjRef {
                    name: m.name.clone(),
                    uid: m.sa_uid.clone(),
                },
                warnafter: m.warn_after,
            },
            nbf: iat,
            sub: format!("system:serviceaccount:{}:{}", m.namespace, m.name),
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key.kid.clone());
        // Claims and the key are ours and well-formed: encoding cannot fail.
        jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap_or_default()
    }

    /// The `/.well-known/openid-configuration` document.
    pub fn openid_configuration(&self, apiserver_url: &str) -> Value {
        let jwks_uri = self
            .jwks_uri
            .clone()
            .unwrap_or_else(|| format!("{apiserver_url}{JWKS_PATH}"));
        json!({
            "issuer": self.url,
            "jwks_uri": jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }

    /// The `/openid/v1/jwks` key set.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.key.jwk]})
    }
}

/// Why a JWT was not accepted (logged like the apiserver's
/// "invalid bearer token" messages; the client only ever sees 401).
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("not a token of this issuer")]
    NotOurs,
    #[error("service account token has expired")]
    Expired,
    #[error("service account token is not valid yet")]
    NotYetValid,
    #[error("service account token is issued in the future")]
    IssuedInFuture,
    #[error("invalid signature or claims: {0}")]
    Invalid(String),
    #[error("token audiences {token:?} is invalid for the target audiences {target:?}")]
    Audience {
        token: Vec<String>,
        target: Vec<String>,
    },
    #[error("service account {0} has been deleted")]
    ServiceAccountGone(String),
    #[error("service account UID ({actual}) does not match claim ({claimed})")]
    ServiceAccountUid { actual: String, claimed: String },
    #[error("pod {0} has been deleted or does not match the token")]
    PodGone(String),
    #[error("secret {0} has been deleted or does not match the token")]
    SecretGone(String),
    #[error("node {0} has been deleted or does not match the token")]
    NodeGone(String),
}

/// Authenticates a bound service-account JWT. `target` are the audiences
/// the caller accepts (a TokenReview's spec.audiences; None: the API
/// audiences). Returns the user and the matched audiences.
pub fn authenticate(
    shared: &Shared,
    token: &str,
    target: Option<&[String]>,
) -> Result<(User, Vec<String>), Rejected> {
    let issuer = &shared.issuer;
    let header = jsonwebtoken::decode_header(token).map_err(|_| Rejected::NotOurs)?;
    if header.alg != Algorithm::ES256 {
        return Err(Rejected::NotOurs);
    }
    let mut v = Validation::new(Algorithm::ES256);
    v.leeway = LEEWAY_SECS.unsigned_abs();
    v.validate_nbf = true;
    v.validate_aud = false; // intersected below, like the apiserver
    v.set_issuer(&[issuer.url.as_str()]);
    v.set_required_spec_claims(&["exp", "iss", "sub"]);
    let data = jsonwebtoken::decode::<Claims>(token, &issuer.key.decoding, &v).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::InvalidIssuer => Rejected::NotOurs,
            ErrorKind::ExpiredSignature => Rejected::Expired,
            ErrorKind::ImmatureSignature => Rejected::NotYetValid,
            _ => Rejected::Invalid(e.to_string()),
        }
    })?;
    let c = data.claims;
    if c.iat > now_unix() + LEEWAY_SECS {
        return Err(Rejected::IssuedInFuture);
    }
    let target: Vec<String> = target
        .filter(|t| !t.is_empty())
        .map_or_else(|| issuer.api_audiences.clone(), <[String]>::to_vec);
    let matched: Vec<String> = c
        .aud
        .iter()
        .filter(|a| target.contains(a))
        .cloned()
        .collect();
    if matched.is_empty() && !issuer.api_audiences.is_empty() {
        return Err(Rejected::Audience {
            token: c.aud,
            target,
        });
    }
    let ns = &c.kube.namespace;
    let name = &c.kube.serviceaccount.name;
    if c.sub != format!("system:serviceaccount:{ns}:{name}") {
        return Err(Rejected::Invalid("sub does not match kubernetes.io".into()));
    }
    let live = |resource: &str, ns: &str, r: &ObjRef| {
        shared
            .store
            .get(&ObjectKey::new(resource, ns, &r.name))
            .filter(|o| o.pointer("/metadata/deletionTimestamp").is_none())
            .filter(|o| super::objects::meta_str(o, "uid") == r.uid)
            .is_some()
    };
    let sa = shared
        .store
        .get(&ObjectKey::new("serviceaccounts", ns, name))
        .filter(|o| o.pointer("/metadata/deletionTimestamp").is_none())
        .ok_or_else(|| Rejected::ServiceAccountGone(format!("{ns}/{name}")))?;
    let uid = super::objects::meta_str(&sa, "uid");
    if uid != c.kube.serviceaccount.uid {
        return Err(Rejected::ServiceAccountUid {
            actual: uid.to_owned(),
            claimed: c.kube.serviceaccount.uid,
        });
    }
    if let Some(pod) = &c.kube.pod {
        if !live("pods", ns, pod) {
            return Err(Rejected::PodGone(format!("{ns}/{}", pod.name)));
        }
    } else if let Some(secret) = &c.kube.secret {
        if !live("secrets", ns, secret) {
            return Err(Rejected::SecretGone(format!("{ns}/{}", secret.name)));
        }
    } else if let Some(node) = &c.kube.node
        && !live("nodes", "", node)
    {
        return Err(Rejected::NodeGone(node.name.clone()));
    }
    Ok((sa_user(ns, name), matched))
}

/// The user a service account authenticates as.
pub fn sa_user(namespace: &str, name: &str) -> User {
    User {
        name: format!("system:serviceaccount:{namespace}:{name}"),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{namespace}"),
            "system:authenticated".into(),
        ],
    }
}

/// The lifetime a pod-bound token really gets for a requested one: the
/// kubelet's 3607 s is extended to a year (with `warnafter`), as
/// `--service-account-extend-token-expiration` does by default.
pub fn extended_lifetime(requested_secs: i64, pod_bound: bool, iat: i64) -> (i64, Option<i64>) {
    if pod_bound && requested_secs == WARN_ONLY_SECS {
        (EXTENDED_SECS, Some(iat + WARN_ONLY_SECS))
    } else {
        (requested_secs, None)
    }
}

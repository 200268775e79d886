//! PKCS#10 certificate requests for the hub's two identities, and reading
//! what a signer issued.
//!
//! The request is DER-encoded here rather than by rcgen because rcgen keeps
//! one value per attribute type, and the hub's client subject carries several
//! organizations (`openyurt:yurthub`, `system:nodes` and any
//! `--hub-cert-organizations`), each of which the apiserver maps to a group.
//! Keys are ECDSA P-256, generated in memory by rcgen (ring) and never sent.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData, SigningKey};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

/// Signer of the hub's client certificate.
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";
/// Signer of the hub's serving certificate.
pub const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// `spec.usages` of a client CSR (kube-controller-manager and the approver
/// compare these as a set).
pub const CLIENT_USAGES: [&str; 3] = ["key encipherment", "digital signature", "client auth"];
/// `spec.usages` of a serving CSR.
pub const SERVING_USAGES: [&str; 3] = ["key encipherment", "digital signature", "server auth"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("generating a key: {0}")]
    Key(rcgen::Error),
    #[error("signing the certificate request: {0}")]
    Sign(rcgen::Error),
    #[error("the issued certificate is not valid PEM/DER: {0}")]
    BadCertificate(String),
    #[error("the issued certificate does not match the requested key")]
    KeyMismatch,
}

/// What the hub asks a signer for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
}

/// A freshly generated key and the PEM request signed with it.
pub struct Request {
    pub key: KeyPair,
    pub pem: String,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").finish_non_exhaustive()
    }
}

/// Generates a new P-256 key and a request for `subject` signed with it.
pub fn new_request(subject: &Subject) -> Result<Request, Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(Error::Key)?;
    let der = request_der(&key, subject)?;
    Ok(Request {
        pem: pem("CERTIFICATE REQUEST", &der),
        key,
    })
}

fn request_der(key: &KeyPair, subject: &Subject) -> Result<Vec<u8>, Error> {
    let mut rdns = Vec::new();
    for o in &subject.organizations {
        rdns.extend(set(&seq(&[oid(OID_O), utf8(o)].concat())));
    }
    rdns.extend(set(&seq(
        &[oid(OID_CN), utf8(&subject.common_name)].concat()
    )));
    let name = seq(&rdns);

    let mut attributes = Vec::new();
    if !subject.dns_names.is_empty() || !subject.ip_addresses.is_empty() {
        let mut names = Vec::new();
        for d in &subject.dns_names {
            names.extend(tlv(0x82, d.as_bytes()));
        }
        for ip in &subject.ip_addresses {
            match ip {
                IpAddr::V4(v4) => names.extend(tlv(0x87, &v4.octets())),
                IpAddr::V6(v6) => names.extend(tlv(0x87, &v6.octets())),
            }
        }
        let san = seq(&[oid(OID_SAN), tlv(0x04, &seq(&names))].concat());
        let extensions = seq(&san);
        attributes = seq(&[oid(OID_EXTENSION_REQUEST), set(&extensions)].concat());
    }
    let info = seq(&[
        tlv(0x02, &[0]),
        name,
        key.subject_public_key_info(),
        tlv(0xA0, &attributes),
    ]
    .concat());
    let signature = key.sign(&info).map_err(Error::Sign)?;
    let mut bits = vec![0u8];
    bits.extend(signature);
    Ok(seq(
        &[info, seq(&oid(OID_ECDSA_SHA256)), tlv(0x03, &bits)].concat()
    ))
}

// Encoded OID bodies.
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_O: &[u8] = &[0x55, 0x04, 0x0A];
const OID_SAN: &[u8] = &[0x55, 0x1D, 0x11];
const OID_EXTENSION_REQUEST: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x0E];
const OID_ECDSA_SHA256: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02];

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn seq(content: &[u8]) -> Vec<u8> {
    tlv(0x30, content)
}

fn set(content: &[u8]) -> Vec<u8> {
    tlv(0x31, content)
}

fn oid(body: &[u8]) -> Vec<u8> {
    tlv(0x06, body)
}

fn utf8(s: &str) -> Vec<u8> {
    tlv(0x0C, s.as_bytes())
}

/// PEM armour around DER.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The facts the hub needs from an issued leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub issuer: String,
}

impl CertInfo {
    /// Reads the first certificate of a PEM chain.
    pub fn from_pem(chain_pem: &str) -> Result<CertInfo, Error> {
        let der = rustls_pemfile::certs(&mut chain_pem.as_bytes())
            .next()
            .ok_or_else(|| Error::BadCertificate("no CERTIFICATE block".into()))?
            .map_err(|e| Error::BadCertificate(e.to_string()))?;
        CertInfo::from_der(&der)
    }

    pub fn from_der(der: &[u8]) -> Result<CertInfo, Error> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| Error::BadCertificate(e.to_string()))?;
        let to_time = |t: x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 {
                SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
            } else {
                SystemTime::UNIX_EPOCH
            }
        };
        let subject = cert.subject();
        let mut info = CertInfo {
            not_before: to_time(cert.validity().not_before),
            not_after: to_time(cert.validity().not_after),
            common_name: subject
                .iter_common_name()
                .filter_map(|a| a.as_str().ok())
                .next()
                .unwrap_or("")
                .to_owned(),
            organizations: subject
                .iter_organization()
                .filter_map(|a| a.as_str().ok().map(str::to_owned))
                .collect(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            issuer: cert.issuer().to_string(),
        };
        for ext in cert.extensions() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(d) => info.dns_names.push((*d).to_owned()),
                        GeneralName::IPAddress(b) => info.ip_addresses.extend(ip_from_bytes(b)),
                        _ => {}
                    }
                }
            }
        }
        Ok(info)
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }

    /// A random point at 70–90 % of the lifetime, as client-go's certificate
    /// manager picks it: late enough not to churn, early enough that a
    /// signer outage of a fifth of the lifetime is survived.
    pub fn rotation_deadline(&self) -> SystemTime {
        let total = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        let fraction = 0.7 + 0.2 * rand::random::<f64>();
        self.not_before + total.mul_f64(fraction)
    }
}

/// An IP address from the bytes of a SAN or CSR.
pub fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
        _ => None,
    }
}

/// Joins an issued chain with the key it was issued for, checking that they
/// belong together (a signer bug or a mixed-up CSR must not be installed).
pub fn certified_key(
    chain_pem: &str,
    key_pem: &str,
) -> Result<std::sync::Arc<rustls::sign::CertifiedKey>, Error> {
    let chain = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::BadCertificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(Error::BadCertificate("no CERTIFICATE block".into()));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| Error::BadCertificate(e.to_string()))?
        .ok_or_else(|| Error::BadCertificate("no private key".into()))?;
    let signing = super::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| Error::BadCertificate(e.to_string()))?;
    let ck = rustls::sign::CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|_| Error::KeyMismatch)?;
    Ok(std::sync::Arc::new(ck))
}

#[cfg(test)]
mod tests {
    use x509_parser::certification_request::X509CertificationRequest;

    use super::*;

    fn subject() -> Subject {
        Subject {
            common_name: "system:node:n1".into(),
            organizations: vec![
                "openyurt:yurthub".into(),
                "system:nodes".into(),
                "extra".into(),
            ],
            dns_names: vec!["kubernetes.default.svc".into()],
            ip_addresses: vec!["10.96.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
        }
    }

    #[test]
    fn request_carries_every_organization_and_san_and_verifies() {
        let req = new_request(&subject()).unwrap();
        let der = rustls_pemfile::read_one(&mut req.pem.as_bytes())
            .unwrap()
            .unwrap();
        let rustls_pemfile::Item::Csr(der) = der else {
            panic!("not a CSR PEM: {}", req.pem)
        };
        let (_, csr) = X509CertificationRequest::from_der(&der).unwrap();
        csr.verify_signature().expect("self-signature verifies");
        let s = &csr.certification_request_info.subject;
        let orgs: Vec<_> = s.iter_organization().map(|a| a.as_str().unwrap()).collect();
        assert_eq!(orgs, ["openyurt:yurthub", "system:nodes", "extra"]);
        assert_eq!(
            s.iter_common_name().next().unwrap().as_str().unwrap(),
            "system:node:n1"
        );
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for ext in csr.requested_extensions().unwrap() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for n in &san.general_names {
                    match n {
                        GeneralName::DNSName(d) => dns.push(d.to_string()),
                        GeneralName::IPAddress(b) => ips.push(ip_from_bytes(b).unwrap()),
                        _ => {}
                    }
                }
            }
        }
        assert_eq!(dns, ["kubernetes.default.svc"]);
        assert_eq!(ips, subject().ip_addresses);
    }

    #[test]
    fn client_request_without_sans_has_no_extension_request() {
        let mut s = subject();
        s.dns_names.clear();
        s.ip_addresses.clear();
        let req = new_request(&s).unwrap();
        let Some(rustls_pemfile::Item::Csr(der)) =
            rustls_pemfile::read_one(&mut req.pem.as_bytes()).unwrap()
        else {
            panic!("not a CSR")
        };
        let (_, csr) = X509CertificationRequest::from_der(&der).unwrap();
        csr.verify_signature().unwrap();
        assert!(csr.requested_extensions().is_none());
    }

    #[test]
    fn long_lengths_use_the_long_form() {
        let long = tlv(0x04, &[0u8; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2C]);
        assert_eq!(long.len(), 304);
    }

    #[test]
    fn rotation_deadline_is_within_70_to_90_percent() {
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let info = CertInfo {
            not_before: nb,
            not_after: nb + Duration::from_secs(100),
            common_name: String::new(),
            organizations: vec![],
            dns_names: vec![],
            ip_addresses: vec![],
            issuer: String::new(),
        };
        for _ in 0..200 {
            let d = info.rotation_deadline().duration_since(nb).unwrap();
            assert!(
                d >= Duration::from_secs(70) && d <= Duration::from_secs(90),
                "{d:?}"
            );
        }
    }
}

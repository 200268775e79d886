//! Throw-away cluster PKI for tests: one ECDSA P-256 cluster CA that signs
//! serving certificates (for the apiserver double and yurthub) and client
//! certificates (user = CN, groups = O, exactly as kube-apiserver reads them).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use time::{Duration, OffsetDateTime};

/// Errors from generating or writing test certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid subject alternative name {name:?}: {source}")]
    San { name: String, source: rcgen::Error },
    #[error("at most two organizations per client certificate are supported, got {0}")]
    TooManyOrgs(usize),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A cluster CA able to issue serving and client certificates.
pub struct TestPki {
    ca_pem: String,
    ca_key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki").finish_non_exhaustive()
    }
}

/// File names written by [`TestPki::write_ca`] and friends.
pub const CA_CERT_FILE: &str = "ca.crt";

impl TestPki {
    /// Creates a fresh cluster CA named like kubeadm's (`CN=kubernetes`).
    pub fn new() -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kubernetes");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        set_validity(&mut params, Duration::days(3650));
        let cert = params.self_signed(&key)?;
        let ca_key_pem = key.serialize_pem();
        Ok(Self {
            ca_pem: cert.pem(),
            ca_key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// PEM of the CA certificate (what goes into `ca.crt` / kubeconfig CA data).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// PEM (PKCS#8) of the CA private key, for tests that sign CSRs themselves.
    pub fn ca_key_pem(&self) -> &str {
        &self.ca_key_pem
    }

    /// Issues a serving certificate for the given DNS names and IP addresses.
    /// Returns `(cert_pem, key_pem)`.
    pub fn issue_server_cert(
        &self,
        dns: &[&str],
        ips: &[IpAddr],
    ) -> Result<(String, String), PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            dns.first().copied().unwrap_or("kube-apiserver"),
        );
        params.distinguished_name = dn;
        for name in dns {
            let san = (*name)
                .to_owned()
                .try_into()
                .map_err(|source| PkiError::San {
                    name: (*name).to_owned(),
                    source,
                })?;
            params.subject_alt_names.push(SanType::DnsName(san));
        }
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// Issues a client certificate: the apiserver maps CN to the user name and
    /// each O to a group. Returns `(cert_pem, key_pem)`.
    ///
    /// At most two organizations (see [`subject`]).
    pub fn issue_client_cert(&self, cn: &str, orgs: &[&str]) -> Result<(String, String), PkiError> {
        let mut params = CertificateParams::default();
        let dn = subject(cn, orgs)?;
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// Signs a PKCS#10 request (PEM) the way kube-controller-manager's
    /// signer does: subject and SANs from the request, key usages from the
    /// CSR's `spec.usages`, valid for `lifetime`. Returns the certificate PEM.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        usages: &[&str],
        lifetime: Duration,
    ) -> Result<String, PkiError> {
        self.sign_csr_backdated(csr_pem, usages, lifetime, Duration::hours(1))
    }

    /// [`TestPki::sign_csr`] with `notBefore` = now − `backdate` and
    /// `notAfter` = now + `lifetime`.
    pub fn sign_csr_backdated(
        &self,
        csr_pem: &str,
        usages: &[&str],
        lifetime: Duration,
        backdate: Duration,
    ) -> Result<String, PkiError> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        // rcgen's parser keeps one value per attribute type; read CN and
        // every O from the request ourselves.
        let der = pem_body(csr_pem).ok_or(PkiError::Generate(
            rcgen::Error::CouldNotParseCertificationRequest,
        ))?;
        let (_, req) = <x509_parser::certification_request::X509CertificationRequest as x509_parser::prelude::FromDer<_>>::from_der(&der)
            .map_err(|_| PkiError::Generate(rcgen::Error::CouldNotParseCertificationRequest))?;
        let name = &req.certification_request_info.subject;
        let cn = name
            .iter_common_name()
            .filter_map(|a| a.as_str().ok())
            .next()
            .unwrap_or("")
            .to_owned();
        let orgs: Vec<String> = name
            .iter_organization()
            .filter_map(|a| a.as_str().ok().map(str::to_owned))
            .collect();
        let org_refs: Vec<&str> = orgs.iter().map(String::as_str).collect();
        let params = &mut csr.params;
        params.distinguished_name = subject(&cn, &org_refs)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = Vec::new();
        params.extended_key_usages = Vec::new();
        for usage in usages {
            match *usage {
                "digital signature" => params.key_usages.push(KeyUsagePurpose::DigitalSignature),
                "key encipherment" => params.key_usages.push(KeyUsagePurpose::KeyEncipherment),
                "client auth" => params
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ClientAuth),
                "server auth" => params
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ServerAuth),
                _ => {}
            }
        }
        let now = OffsetDateTime::now_utc();
        params.not_before = now - backdate;
        params.not_after = now + lifetime;
        Ok(csr.signed_by(&self.issuer)?.pem())
    }

    /// Writes `ca.crt` into `dir` (created if missing) and returns its path.
    pub fn write_ca(&self, dir: &Path) -> Result<PathBuf, PkiError> {
        write_file(dir, CA_CERT_FILE, &self.ca_pem)
    }

    /// Writes a certificate and key pair as `<stem>.crt` and `<stem>.key`
    /// into `dir`; returns both paths.
    pub fn write_pair(
        dir: &Path,
        stem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<(PathBuf, PathBuf), PkiError> {
        let cert = write_file(dir, &format!("{stem}.crt"), cert_pem)?;
        let key = write_file(dir, &format!("{stem}.key"), key_pem)?;
        Ok((cert, key))
    }

    fn sign(&self, mut params: CertificateParams) -> Result<(String, String), PkiError> {
        set_validity(&mut params, Duration::days(365));
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// A subject with CN and up to two O attributes. rcgen keys
/// distinguished-name attributes by type, so a second O is written through
/// a custom attribute type carrying O's OID (2.5.4.10); more cannot be
/// expressed.
fn subject(cn: &str, orgs: &[&str]) -> Result<DistinguishedName, PkiError> {
    const ORGANIZATION_OID: &[u64] = &[2, 5, 4, 10];
    let mut dn = DistinguishedName::new();
    match orgs {
        [] => {}
        [one] => dn.push(DnType::OrganizationName, *one),
        [first, second] => {
            dn.push(DnType::OrganizationName, *first);
            dn.push(DnType::CustomDnType(ORGANIZATION_OID.to_vec()), *second);
        }
        more => return Err(PkiError::TooManyOrgs(more.len())),
    }
    dn.push(DnType::CommonName, cn);
    Ok(dn)
}

fn pem_body(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .ok()
}

/// Backdates `not_before` a little so clocks that disagree by seconds still
/// accept freshly issued certificates.
fn set_validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + lifetime;
}

fn write_file(dir: &Path, name: &str, contents: &str) -> Result<PathBuf, PkiError> {
    let path = dir.join(name);
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&path, contents))
        .map_err(|source| PkiError::Write {
            path: path.clone(),
            source,
        })?;
    Ok(path)
}

/// The cipher-suite preference of Go's crypto/tls on AES hardware, which
/// both ends of the real traffic run: client-go offers, and the apiserver
/// picks (by its own order, whatever the client prefers), AES-128-GCM
/// first. rustls's default puts AES-256-GCM first.
pub fn go_tls_provider() -> rustls::crypto::CryptoProvider {
    use rustls::CipherSuite as S;
    let rank = |s: S| match s {
        S::TLS13_AES_128_GCM_SHA256 => 0,
        S::TLS13_AES_256_GCM_SHA384 => 1,
        S::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => 3,
        S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 4,
        S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => 5,
        S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 6,
        _ => 7,
    };
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|s| rank(s.suite()));
    provider
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_cert_carries_cn_and_orgs() {
        let pki = TestPki::new().expect("pki");
        let (cert, _key) = pki
            .issue_client_cert("system:node:n1", &["system:nodes", "openyurt:yurthub"])
            .expect("client cert");
        let der = rustls_pemfile::certs(&mut cert.as_bytes())
            .next()
            .expect("one cert")
            .expect("valid pem");
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let subject = parsed.subject();
        let cn: Vec<_> = subject
            .iter_common_name()
            .map(|a| a.as_str().expect("utf8").to_owned())
            .collect();
        let orgs: Vec<_> = subject
            .iter_organization()
            .map(|a| a.as_str().expect("utf8").to_owned())
            .collect();
        assert_eq!(cn, ["system:node:n1"]);
        assert_eq!(orgs, ["system:nodes", "openyurt:yurthub"]);
    }

    #[test]
    fn signs_csrs_keeping_both_organizations() {
        let pki = TestPki::new().expect("pki");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name =
            subject("system:node:n1", &["openyurt:yurthub", "system:nodes"]).expect("dn");
        let csr = params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let cert = pki
            .sign_csr(
                &csr,
                &["digital signature", "key encipherment", "client auth"],
                Duration::days(1),
            )
            .expect("signed");
        let der = rustls_pemfile::certs(&mut cert.as_bytes())
            .next()
            .expect("one cert")
            .expect("valid pem");
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let orgs: Vec<_> = parsed
            .subject()
            .iter_organization()
            .map(|a| a.as_str().expect("utf8").to_owned())
            .collect();
        assert_eq!(orgs, ["openyurt:yurthub", "system:nodes"]);
        assert!(!parsed.is_ca(), "leaf certificates are not CAs");
    }
}

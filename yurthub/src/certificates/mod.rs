//! The hub's identities: the cluster CA it trusts upstream, the client
//! certificate it presents to the cloud (never to pod traffic), and the
//! serving certificate of the pod-facing HTTPS proxy.
//!
//! Both identities sit behind rustls resolvers that read a swappable slot, so
//! a rotated or re-read certificate takes effect for new handshakes without
//! rebuilding clients or listeners.
//!
//! Where they come from:
//! - `--bootstrap-mode=kubeletcertificate`: files, re-read when they change
//!   ([`Certificates::from_files`]);
//! - `--bootstrap-mode=token`: CSRs ([`client`] for the client identity and
//!   its bootstrap, [`serving`] for the serving identity), stored by
//!   [`store`]; [`approver`] is the cluster side that approves them.
//!
//! Readiness ("certificates are not ready") means an identity is missing,
//! not that one expired: an expired certificate is logged loudly and kept,
//! so an offline hub goes on serving its cache (upstream stops).

pub mod api;
pub mod approver;
pub mod bootstrap;
pub mod client;
pub mod csr;
pub mod issue;
pub mod serving;
pub mod store;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key")]
    NoKey { path: PathBuf },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// The process-wide crypto provider (ring), passed explicitly so that a
/// dependency enabling another provider can never make rustls ambiguous.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate in a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let data = fs::read(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })?;
    let certs = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Invalid {
            path: path.into(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::NoCertificate { path: path.into() });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let data = fs::read(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|e| Error::Invalid {
            path: path.into(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| Error::NoKey { path: path.into() })
}

/// Loads a certificate chain and its key (which may live in the same file, as
/// in kubelet-client-current.pem) into a rustls CertifiedKey.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, Error> {
    let chain = read_certs(cert)?;
    let key_der = read_key(key)?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| Error::Invalid {
            path: key.into(),
            reason: e.to_string(),
        })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| Error::Invalid {
        path: key.into(),
        reason: format!("key does not match {}: {e}", cert.display()),
    })?;
    Ok(Arc::new(ck))
}

/// Loads a CA bundle into a root store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| Error::Invalid {
            path: path.into(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// A swappable certificate slot shared by a resolver and its loader. Its
/// generation counts the swaps, so users of pooled connections can tell
/// that they were made with a certificate that has since been replaced.
#[derive(Debug, Default, Clone)]
pub struct Slot(Arc<SlotInner>);

#[derive(Debug, Default)]
struct SlotInner {
    value: RwLock<Option<Arc<CertifiedKey>>>,
    generation: std::sync::atomic::AtomicU64,
    /// The generation, for waiters (the health checker probes at once when
    /// the credentials change).
    changed: tokio::sync::watch::Sender<u64>,
}

impl Slot {
    pub fn set(&self, ck: Arc<CertifiedKey>) {
        *self.0.value.write().unwrap_or_else(|p| p.into_inner()) = Some(ck);
        let g = self
            .0
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.0.changed.send_replace(g + 1);
    }
    /// Wakes on every [`Slot::set`].
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.changed.subscribe()
    }
    pub fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.0
            .value
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    /// Whether a certificate was ever installed (slots are never emptied).
    /// Lock-free: readiness asks on every proxied request.
    pub fn is_set(&self) -> bool {
        self.generation() > 0
    }
    /// Incremented by every [`Slot::set`].
    pub fn generation(&self) -> u64 {
        self.0.generation.load(std::sync::atomic::Ordering::Acquire)
    }
    /// The leaf certificate's facts, if a certificate is installed.
    pub fn info(&self) -> Option<csr::CertInfo> {
        let ck = self.get()?;
        csr::CertInfo::from_der(ck.cert.first()?.as_ref()).ok()
    }
}

/// Presents the hub's current client certificate, whatever the server asks.
#[derive(Debug)]
pub struct ClientCertResolver(pub Slot);

impl ResolvesClientCert for ClientCertResolver {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.get()
    }
    fn has_certs(&self) -> bool {
        self.0.get().is_some()
    }
}

/// Serves the hub's current serving certificate for every SNI name.
#[derive(Debug)]
pub struct ServerCertResolver(pub Slot);

impl ResolvesServerCert for ServerCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.get()
    }
}

/// Where a certificate comes from and how to notice it changed.
#[derive(Debug, Clone)]
struct FileSource {
    cert: PathBuf,
    key: PathBuf,
    loaded_mtime: Option<SystemTime>,
}

impl FileSource {
    fn mtime(&self) -> Option<SystemTime> {
        let c = fs::metadata(&self.cert).and_then(|m| m.modified()).ok();
        let k = fs::metadata(&self.key).and_then(|m| m.modified()).ok();
        c.max(k)
    }
}

/// The hub's certificates and their readiness.
#[derive(Clone)]
pub struct Certificates {
    inner: Arc<Inner>,
}

struct Inner {
    ca_file: PathBuf,
    roots: RwLock<Option<Arc<RootCertStore>>>,
    client: Slot,
    serving: Slot,
    sources: std::sync::Mutex<Vec<(FileSource, Slot)>>,
}

impl Certificates {
    /// Certificates read from files: the CA bundle, the client identity
    /// (cert and key, possibly one file) and optionally the serving identity.
    /// Missing files are not fatal: the hub starts, reports
    /// "certificates are not ready", and picks them up when they appear.
    pub fn from_files(
        ca_file: PathBuf,
        client: (PathBuf, PathBuf),
        serving: Option<(PathBuf, PathBuf)>,
    ) -> Certificates {
        let client_slot = Slot::default();
        let serving_slot = Slot::default();
        let mut sources = vec![(
            FileSource {
                cert: client.0,
                key: client.1,
                loaded_mtime: None,
            },
            client_slot.clone(),
        )];
        if let Some((c, k)) = serving {
            sources.push((
                FileSource {
                    cert: c,
                    key: k,
                    loaded_mtime: None,
                },
                serving_slot.clone(),
            ));
        }
        let certs = Certificates {
            inner: Arc::new(Inner {
                ca_file,
                roots: RwLock::new(None),
                client: client_slot,
                serving: serving_slot,
                sources: std::sync::Mutex::new(sources),
            }),
        };
        certs.reload();
        certs
    }

    /// Re-reads any file that changed since it was last loaded.
    pub fn reload(&self) {
        if self.roots().is_none() {
            match load_roots(&self.inner.ca_file) {
                Ok(r) => {
                    *self.inner.roots.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(r))
                }
                // Before a token-mode bootstrap there is no CA file yet.
                Err(Error::Read { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    tracing::debug!(path = %self.inner.ca_file.display(), "cluster CA not present yet")
                }
                Err(e) => tracing::warn!(error = %e, "cluster CA not loaded"),
            }
        }
        let mut sources = self.inner.sources.lock().unwrap_or_else(|p| p.into_inner());
        for (src, slot) in sources.iter_mut() {
            let mtime = src.mtime();
            if mtime.is_some() && mtime == src.loaded_mtime {
                continue;
            }
            match load_certified_key(&src.cert, &src.key) {
                Ok(ck) => {
                    tracing::info!(cert = %src.cert.display(), "loaded certificate");
                    slot.set(ck);
                    src.loaded_mtime = mtime;
                }
                Err(e) => tracing::warn!(error = %e, "certificate not loaded"),
            }
        }
    }

    /// Polls the files every `period` so rotated certificates are picked up.
    pub fn spawn_reloader(&self, period: Duration, shutdown: tokio_util::sync::CancellationToken) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => me.reload(),
                }
            }
        });
    }

    /// Certificates whose client and serving identities are installed by
    /// the token-mode managers; `serving` files (`--tls-cert-file`) override
    /// the serving identity. The CA is read from `ca_file` once it exists.
    pub fn managed(ca_file: PathBuf, serving: Option<(PathBuf, PathBuf)>) -> Certificates {
        let serving_slot = Slot::default();
        let sources = serving
            .map(|(c, k)| {
                vec![(
                    FileSource {
                        cert: c,
                        key: k,
                        loaded_mtime: None,
                    },
                    serving_slot.clone(),
                )]
            })
            .unwrap_or_default();
        let certs = Certificates {
            inner: Arc::new(Inner {
                ca_file,
                roots: RwLock::new(None),
                client: Slot::default(),
                serving: serving_slot,
                sources: std::sync::Mutex::new(sources),
            }),
        };
        certs.reload();
        certs
    }

    /// Trusts `roots` from now on (bootstrap learned or replaced the CA).
    pub fn set_roots(&self, roots: RootCertStore) {
        *self.inner.roots.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(roots));
    }

    /// `/v1/certificates`: each identity's subject, SANs and validity.
    pub fn status_json(&self) -> serde_json::Value {
        let describe = |slot: &Slot| match slot.info() {
            None => serde_json::json!({"present": false}),
            Some(i) => {
                let ts = |t: SystemTime| {
                    t.duration_since(SystemTime::UNIX_EPOCH)
                        .ok()
                        .and_then(|d| {
                            time::OffsetDateTime::from_unix_timestamp(d.as_secs() as i64).ok()
                        })
                        .and_then(|t| {
                            t.format(&time::format_description::well_known::Rfc3339)
                                .ok()
                        })
                };
                serde_json::json!({
                    "present": true,
                    "commonName": i.common_name,
                    "organizations": i.organizations,
                    "dnsNames": i.dns_names,
                    "ipAddresses": i.ip_addresses,
                    "notBefore": ts(i.not_before),
                    "notAfter": ts(i.not_after),
                    "expired": i.is_expired(SystemTime::now()),
                })
            }
        };
        serde_json::json!({
            "caLoaded": self.roots().is_some(),
            "client": describe(&self.inner.client),
            "serving": describe(&self.inner.serving),
        })
    }

    pub fn roots(&self) -> Option<Arc<RootCertStore>> {
        self.inner
            .roots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn client_slot(&self) -> Slot {
        self.inner.client.clone()
    }

    pub fn serving_slot(&self) -> Slot {
        self.inner.serving.clone()
    }

    /// None when ready; otherwise upstream's readiness reason.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        let ready = self.inner.client.is_set()
            && self.inner.serving.is_set()
            && self
                .inner
                .roots
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .is_some();
        (!ready).then_some("certificates are not ready")
    }
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("ca_file", &self.inner.ca_file)
            .finish_non_exhaustive()
    }
}

/// Verifies apiservers against the cluster CA as it is *now*, so a CA that
/// appears after start (bootstrap) or rotates needs no client rebuild.
#[derive(Debug)]
pub struct ClusterCaVerifier {
    certs: Certificates,
    provider: Arc<CryptoProvider>,
    cached: RwLock<
        Option<(
            Arc<RootCertStore>,
            Arc<rustls::client::WebPkiServerVerifier>,
        )>,
    >,
}

impl ClusterCaVerifier {
    pub fn new(certs: Certificates) -> Arc<ClusterCaVerifier> {
        Arc::new(ClusterCaVerifier {
            certs,
            provider: provider(),
            cached: RwLock::new(None),
        })
    }

    fn current(&self) -> Result<Arc<rustls::client::WebPkiServerVerifier>, rustls::Error> {
        let roots = self
            .certs
            .roots()
            .ok_or_else(|| rustls::Error::General("cluster CA is not loaded yet".into()))?;
        if let Some((r, v)) = &*self.cached.read().unwrap_or_else(|p| p.into_inner())
            && Arc::ptr_eq(r, &roots)
        {
            return Ok(v.clone());
        }
        let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots.clone(),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        *self.cached.write().unwrap_or_else(|p| p.into_inner()) = Some((roots, v.clone()));
        Ok(v)
    }
}

impl rustls::client::danger::ServerCertVerifier for ClusterCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.current()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
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
        cert: &CertificateDer<'_>,
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

//! `--bootstrap-mode=token`: the hub's client identity (for upstream calls),
//! issued through a CSR with signer `kubernetes.io/kube-apiserver-client`,
//! CN `system:node:<node>`, O `openyurt:yurthub`, `system:nodes` and any
//! `--hub-cert-organizations`.
//!
//! Life cycle: the stored identity (if any) is installed at once, so an
//! offline restart serves with what it has. A background task then keeps a
//! valid certificate: with no (or an expired) certificate it bootstraps
//! (bootstrap kubeconfig or join token, see [`super::bootstrap`]) and submits
//! the CSR with the bootstrap token; with a valid one it rotates at a random
//! point in 70–90 % of the lifetime with a new key, authenticating with the
//! current certificate. Failures back off (1 s doubling to 1 min) and are
//! retried; `/v1/token` wakes the task at once.
//!
//! Before anything is loaded, the stored identity is checked against the
//! cluster being joined (upstream #367): if the bootstrap material names a
//! different cluster CA, the old identity and cache are moved aside (never
//! deleted) and a fresh identity is requested.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::Uri;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::api::{self, ApiClient};
use super::bootstrap::{self, Credentials, JoinToken, Pins};
use super::csr::{self, CLIENT_SIGNER, CLIENT_USAGES, CertInfo, Subject};
use super::issue::{self, Issued, Order};
use super::store::{Kind, Store};
use super::{Certificates, ClientCertResolver, ClusterCaVerifier};
use crate::remote::transport::SocketHook;

/// How long one CSR may stay pending before a new one is made.
const ISSUE_WAIT: Duration = Duration::from_secs(15 * 60);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Bootstrap(#[from] bootstrap::Error),
    #[error(transparent)]
    Store(#[from] super::store::Error),
    #[error(transparent)]
    Issue(#[from] issue::Error),
    #[error("the cluster CA from the bootstrap material is unusable: {0}")]
    BadCa(String),
    #[error("no --server-addr server answered: {0}")]
    NoServer(String),
}

/// Where bootstrap credentials come from.
#[derive(Debug, Clone)]
pub enum BootstrapSource {
    /// A bootstrap kubeconfig (`--bootstrap-file`).
    File(PathBuf),
    /// Token discovery (`--join-token`); an empty pin list means
    /// `--discovery-token-unsafe-skip-ca-verification`.
    JoinToken { token: String, pins: Vec<String> },
}

/// Everything token mode needs from the configuration.
#[derive(Clone)]
pub struct Settings {
    pub node: String,
    pub extra_organizations: Vec<String>,
    pub servers: Vec<Uri>,
    pub store: Store,
    pub bootstrap: BootstrapSource,
    pub hook: Option<SocketHook>,
    /// Moved aside with the identity when it belongs to another cluster.
    pub cache_dirs: Vec<PathBuf>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("node", &self.node)
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}

/// The bootstrap material as it is now (`/v1/token` replaces the token).
#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Token { token: JoinToken, pins: Pins },
}

pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) certs: Certificates,
    source: Mutex<Source>,
    wake: Notify,
    /// Notified whenever a client certificate is installed.
    pub(crate) client_changed: Notify,
    pub(crate) shutdown: CancellationToken,
}

impl Shared {
    /// A client for `server` authenticating with the hub's current
    /// certificate, verifying against the cluster CA.
    pub(crate) fn hub_client(&self, server: &Uri) -> ApiClient {
        let tls = api::tls_with_verifier(
            ClusterCaVerifier::new(self.certs.clone()),
            Some(Arc::new(ClientCertResolver(self.certs.client_slot()))),
        );
        ApiClient::new(server.clone(), tls).with_hook(self.settings.hook.clone())
    }

    /// Issues through the first server that answers; API refusals are final.
    pub(crate) async fn issue_anywhere(
        &self,
        order: &Order,
        client_for: impl Fn(&Uri) -> ApiClient,
    ) -> Result<Issued, Error> {
        let mut failures = Vec::new();
        for server in &self.settings.servers {
            match issue::issue(&client_for(server), order, &self.shutdown).await {
                Ok(i) => return Ok(i),
                Err(issue::Error::Create(
                    e @ (api::Error::Transport { .. } | api::Error::Timeout { .. }),
                )) => failures.push(e.to_string()),
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::NoServer(failures.join("; ")))
    }
}

/// The running client identity; `update_token` backs `/v1/token`.
#[derive(Clone)]
pub struct ClientIdentity {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientIdentity")
    }
}

/// Why `/v1/token` refused a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token is malformed or does not authenticate cluster-info (400).
    #[error("{0}")]
    Invalid(String),
    /// The cluster could not be asked (500).
    #[error("{0}")]
    Failed(String),
}

impl ClientIdentity {
    /// Checks the stored identity against the cluster, installs what is
    /// stored, and starts the issuing/rotating task.
    pub async fn start(
        settings: Settings,
        certs: Certificates,
        shutdown: CancellationToken,
    ) -> Result<ClientIdentity, Error> {
        let source = match &settings.bootstrap {
            BootstrapSource::File(p) => Source::File(p.clone()),
            BootstrapSource::JoinToken { token, pins } => Source::Token {
                token: JoinToken::parse(token)?,
                pins: Pins::parse(pins)?,
            },
        };
        let shared = Arc::new(Shared {
            settings,
            certs,
            source: Mutex::new(source),
            wake: Notify::new(),
            client_changed: Notify::new(),
            shutdown,
        });
        let me = ClientIdentity { shared };
        me.check_cluster().await;
        me.load_stored();
        let task = me.clone();
        tokio::spawn(async move { task.run().await });
        Ok(me)
    }

    /// Upstream #367: an identity from another cluster is moved aside.
    async fn check_cluster(&self) {
        let s = &self.shared.settings;
        let Some(stored_ca) = s.store.read_ca() else {
            return;
        };
        let creds = match self.credentials_within(Duration::from_secs(5)).await {
            Some(c) => c,
            None => {
                tracing::warn!(
                    "could not reach the cluster to confirm the stored identity belongs to it; using it as it is"
                );
                return;
            }
        };
        if same_ca(&stored_ca, &creds.ca_pem) {
            return;
        }
        let stored = bootstrap::ca_cert_hash(&stored_ca).unwrap_or_default();
        let joining = bootstrap::ca_cert_hash(&creds.ca_pem).unwrap_or_default();
        tracing::error!(
            stored_ca = %stored, cluster_ca = %joining,
            "the stored hub identity belongs to a different cluster than --server-addr; moving it and the cache aside and starting a fresh identity"
        );
        match s.store.move_aside(&s.cache_dirs) {
            Ok(dest) => tracing::warn!(to = %dest.display(), "old identity and cache moved aside"),
            Err(e) => tracing::error!(error = %e, "moving the old identity aside failed"),
        }
    }

    async fn credentials_within(&self, limit: Duration) -> Option<Credentials> {
        match tokio::time::timeout(limit, self.credentials()).await {
            Ok(Ok(c)) => Some(c),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "bootstrap credentials unavailable");
                None
            }
            Err(_) => None,
        }
    }

    fn load_stored(&self) {
        let s = &self.shared;
        if let Some(ca) = s.settings.store.read_ca() {
            match api::roots_from_pem(&ca) {
                Ok(r) => s.certs.set_roots(r),
                Err(e) => {
                    tracing::warn!(error = %e, path = %s.settings.store.ca_file().display(), "stored cluster CA unusable")
                }
            }
        }
        if let Some(installed) = load_identity(&s.settings.store, Kind::Client) {
            s.certs.client_slot().set(installed);
        }
    }

    /// Current bootstrap credentials (reads the file or runs token discovery).
    async fn credentials(&self) -> Result<Credentials, Error> {
        let source = self
            .shared
            .source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let s = &self.shared.settings;
        match source {
            Source::File(p) => Ok(bootstrap::from_file(&p)?),
            Source::Token { token, pins } => {
                let creds = bootstrap::discover(&s.servers, &token, &pins, s.hook.clone()).await?;
                if let Some(server) = s.servers.first()
                    && let Err(e) = super::store::write_atomic(
                        &s.store.bootstrap_kubeconfig(),
                        creds.kubeconfig(&server.to_string()).as_bytes(),
                    )
                {
                    tracing::warn!(error = %e, "writing the bootstrap kubeconfig failed");
                }
                Ok(creds)
            }
        }
    }

    async fn run(self) {
        let s = self.shared.clone();
        let mut backoff = Duration::from_secs(1);
        // Drawn once per installed certificate: once it has passed, a failed
        // rotation is retried with backoff instead of waiting for a new draw.
        let mut deadline: Option<(u64, SystemTime)> = None;
        loop {
            let slot = s.certs.client_slot();
            let generation = slot.generation();
            let current = slot.info();
            let now = SystemTime::now();
            if let Some(info) = &current
                && !info.is_expired(now)
            {
                let due = match deadline {
                    Some((g, d)) if g == generation => d,
                    _ => {
                        let d = info.rotation_deadline();
                        deadline = Some((generation, d));
                        d
                    }
                };
                let wait = due.duration_since(now).unwrap_or_default();
                if !wait.is_zero() {
                    tracing::info!(not_after = ?info.not_after, rotate_in = ?wait, "client certificate valid");
                }
                tokio::select! {
                    _ = s.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            } else if current.is_some() {
                tracing::error!(
                    "the hub's client certificate has EXPIRED; re-bootstrapping (POST /v1/token if the bootstrap token expired too)"
                );
            }
            let result = match &current {
                Some(info) if !info.is_expired(SystemTime::now()) => match self.rotate().await {
                    Err(Error::Issue(e)) if e.is_unauthorized() => {
                        tracing::warn!(error = %e, "the current certificate was refused; bootstrapping");
                        self.bootstrap().await
                    }
                    other => other,
                },
                _ => self.bootstrap().await,
            };
            match result {
                Ok(()) => backoff = Duration::from_secs(1),
                Err(e) => {
                    tracing::error!(error = %e, retry_in = ?backoff, "client certificate not issued");
                    let jitter = backoff.mul_f64(rand::random::<f64>() * 0.2);
                    tokio::select! {
                        _ = s.shutdown.cancelled() => return,
                        _ = s.wake.notified() => {}
                        _ = tokio::time::sleep(backoff + jitter) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn order(&self) -> Order {
        let s = &self.shared.settings;
        let mut orgs = vec!["openyurt:yurthub".to_owned(), "system:nodes".to_owned()];
        for o in &s.extra_organizations {
            if !orgs.contains(o) {
                orgs.push(o.clone());
            }
        }
        Order {
            prefix: "yurthub-client",
            signer: CLIENT_SIGNER,
            usages: CLIENT_USAGES,
            subject: Subject {
                common_name: format!("system:node:{}", s.node),
                organizations: orgs,
                dns_names: Vec::new(),
                ip_addresses: Vec::new(),
            },
            wait: ISSUE_WAIT,
        }
    }

    async fn bootstrap(&self) -> Result<(), Error> {
        let creds = self.credentials().await?;
        let roots = api::roots_from_pem(&creds.ca_pem).map_err(Error::BadCa)?;
        let s = &self.shared;
        let issued = s
            .issue_anywhere(&self.order(), |server| {
                ApiClient::new(server.clone(), api::tls_with_roots(roots.clone(), None))
                    .with_bearer(Some(creds.token.clone()))
                    .with_hook(s.settings.hook.clone())
            })
            .await?;
        s.settings.store.write_ca(&creds.ca_pem)?;
        s.certs.set_roots(roots);
        self.install(issued)
    }

    async fn rotate(&self) -> Result<(), Error> {
        let s = &self.shared;
        let issued = s
            .issue_anywhere(&self.order(), |server| s.hub_client(server))
            .await?;
        self.install(issued)
    }

    fn install(&self, issued: Issued) -> Result<(), Error> {
        let s = &self.shared;
        let ck =
            csr::certified_key(&issued.chain_pem, &issued.key_pem).map_err(issue::Error::from)?;
        s.settings
            .store
            .write_identity(Kind::Client, &issued.chain_pem, &issued.key_pem)?;
        if let Some(server) = s.settings.servers.first() {
            s.settings.store.write_hub_kubeconfig(&server.to_string())?;
        }
        s.certs.client_slot().set(ck);
        s.client_changed.notify_waiters();
        tracing::info!(not_after = ?issued.info.not_after, "client certificate installed");
        Ok(())
    }

    /// `/v1/token`: authenticates cluster-info with the new token (pinning
    /// the CA as configured, or to the CA already trusted), then makes it
    /// the bootstrap token and retries at once if the hub is waiting.
    pub async fn update_token(&self, token: &str) -> Result<(), TokenError> {
        let token = JoinToken::parse(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let s = &self.shared;
        let current = s.source.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let pins = match &current {
            Source::Token { pins, .. } => pins.clone(),
            Source::File(p) => {
                let ca = bootstrap::from_file(p)
                    .ok()
                    .map(|c| c.ca_pem)
                    .or_else(|| s.settings.store.read_ca())
                    .unwrap_or_default();
                let pin = bootstrap::ca_cert_hash(&ca).ok_or_else(|| {
                    TokenError::Failed(
                        "no cluster CA is known to pin the new token's cluster-info to".into(),
                    )
                })?;
                Pins::parse(&[pin]).map_err(|e| TokenError::Failed(e.to_string()))?
            }
        };
        let creds =
            bootstrap::discover(&s.settings.servers, &token, &pins, s.settings.hook.clone())
                .await
                .map_err(|e| match e {
                    bootstrap::Error::NoSignature { .. }
                    | bootstrap::Error::BadSignature { .. }
                    | bootstrap::Error::PinMismatch { .. } => TokenError::Invalid(e.to_string()),
                    other => TokenError::Failed(other.to_string()),
                })?;
        let server = s
            .settings
            .servers
            .first()
            .map(|u| u.to_string())
            .unwrap_or_default();
        let path = match &current {
            Source::File(p) => p.clone(),
            Source::Token { .. } => s.settings.store.bootstrap_kubeconfig(),
        };
        super::store::write_atomic(&path, creds.kubeconfig(&server).as_bytes())
            .map_err(|e| TokenError::Failed(e.to_string()))?;
        *s.source.lock().unwrap_or_else(|p| p.into_inner()) = match current {
            Source::File(p) => Source::File(p),
            Source::Token { pins, .. } => Source::Token { token, pins },
        };
        s.wake.notify_one();
        tracing::info!(path = %path.display(), "bootstrap token updated");
        Ok(())
    }
}

/// Reads a stored identity; an expired one is still returned (offline, it
/// is better than nothing) after an error is logged.
pub(crate) fn load_identity(store: &Store, kind: Kind) -> Option<Arc<rustls::sign::CertifiedKey>> {
    let (chain, key) = store.read_identity(kind)?;
    match csr::certified_key(&chain, &key).and_then(|ck| Ok((ck, CertInfo::from_pem(&chain)?))) {
        Ok((certified, info)) => {
            if info.is_expired(SystemTime::now()) {
                tracing::error!(?kind, not_after = ?info.not_after,
                    "the stored certificate has EXPIRED; using it until a new one is issued");
            }
            Some(certified)
        }
        Err(e) => {
            tracing::warn!(path = %store.pem_file(kind).display(), error = %e, "stored certificate unusable; requesting a new one");
            None
        }
    }
}

fn same_ca(a: &str, b: &str) -> bool {
    let ders = |p: &str| -> Vec<Vec<u8>> {
        rustls_pemfile::certs(&mut p.as_bytes())
            .filter_map(Result::ok)
            .map(|c| c.as_ref().to_vec())
            .collect()
    };
    ders(a) == ders(b)
}

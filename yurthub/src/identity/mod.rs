//! Offline authentication of bearer tokens.
//!
//! Online the cloud authenticates every request; the hub only remembers
//! what it vouched for. Offline a token is accepted when either holds:
//! * the cloud answered that same token 2xx (only an HMAC-SHA256 of the
//!   token under the node's secret key is kept, never the token), within
//!   the token's `exp` when it has one, else for [`OPAQUE_TTL`] after it was
//!   last vouched for;
//! * it is a JWT that verifies against the cluster issuer's keys
//!   (`/.well-known/openid-configuration`, `/openid/v1/jwks`, fetched while
//!   online), for the cluster's issuer and an audience the cloud accepted,
//!   within `exp` (no grace);
//! * it is a service-account token this hub minted offline for kubelet
//!   (signed with the node's secret key), within its `exp`.
//!
//! All of it lives in the crash-safe store, so an offline restart keeps it.

pub mod jwt;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use ring::hmac;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::remote::LoadBalancer;
use crate::remote::transport::Transports;
use crate::request::TokenId;
use crate::storage::Store;

/// How long an opaque token (no `exp` to go by) the cloud accepted is
/// accepted offline after it was last accepted online.
pub const OPAQUE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Remembered tokens at most; the least recently vouched are dropped first.
const MAX_TOKENS: usize = 20_000;
/// Issuer keys are re-fetched this often while online (and when a token
/// the cloud accepted names a key id we do not have).
const KEYS_REFRESH: Duration = Duration::from_secs(12 * 3600);
/// At most one key fetch for an unknown key id this often.
const KEYS_RETRY: Duration = Duration::from_secs(300);
/// A token the cloud accepted is written again at most this often.
const REVOUCH: i64 = 3600;

const DOC_KEY: &str = "yurthub:authn/key";
const DOC_TOKENS: &str = "yurthub:authn/tokens";
const DOC_ISSUER: &str = "yurthub:authn/issuer";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the cloud never accepted this token and it is not a verifiable service-account token: {0}"
    )]
    Unknown(jwt::Error),
    #[error("the token expired")]
    Expired,
    #[error("the store: {0}")]
    Store(#[from] crate::storage::Error),
}

/// Why fetching the issuer keys failed.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("{0}")]
    Call(#[from] crate::remote::CallError),
    #[error(
        "{path} answered {code} (the hub's identity needs the \
         system:service-account-issuer-discovery ClusterRole; deploy/ binds it)"
    )]
    Status {
        path: &'static str,
        code: http::StatusCode,
    },
    #[error("{path}: {reason}")]
    Decode { path: &'static str, reason: String },
    #[error("storing the keys: {0}")]
    Store(#[from] crate::storage::Error),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    subject: Option<String>,
    /// The token's own expiry (unix seconds), when it has one.
    exp: Option<i64>,
    /// When the cloud last accepted it (unix seconds).
    seen: i64,
}

impl Record {
    fn live(&self, now: i64) -> bool {
        match self.exp {
            Some(exp) => now < exp,
            None => now - self.seen < OPAQUE_TTL.as_secs() as i64,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Book {
    tokens: BTreeMap<String, Record>,
    /// Audiences of the cluster issuer's tokens that the cloud accepted.
    audiences: BTreeSet<String>,
    /// The cluster issuer, as the service-account tokens the cloud
    /// accepted name it (used until the discovery document is fetched).
    issuer: Option<String>,
    /// Questions the cloud answered 403 (who asked what), so offline the
    /// answer stays 403 even where an older cached copy exists.
    #[serde(default)]
    denied: BTreeSet<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct IssuerDoc {
    issuer: String,
    jwks: jsonwebtoken::jwk::JwkSet,
}

#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    key: hmac::Key,
    secret: Vec<u8>,
    node: String,
    book: Mutex<Book>,
    issuer: RwLock<Option<jwt::IssuerKeys>>,
    dirty: AtomicBool,
    changed: Notify,
    want_keys: AtomicBool,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Authenticator {
    /// Loads (or, on first start, creates) the node's secret, the tokens
    /// the cloud vouched for and the issuer keys from the store.
    pub async fn open(store: Store, node: &str) -> Result<Authenticator, Error> {
        let secret = match store.document(DOC_KEY)? {
            Some(d) if d.body.len() == 32 => d.body.to_vec(),
            _ => {
                let s: [u8; 32] = rand::random();
                store
                    .put_document(
                        DOC_KEY,
                        "application/octet-stream",
                        Bytes::copy_from_slice(&s),
                    )
                    .await?;
                s.to_vec()
            }
        };
        let mut book: Book = store
            .document(DOC_TOKENS)?
            .and_then(|d| serde_json::from_slice(&d.body).ok())
            .unwrap_or_default();
        prune(&mut book, now());
        let issuer = store
            .document(DOC_ISSUER)?
            .and_then(|d| serde_json::from_slice::<IssuerDoc>(&d.body).ok())
            .map(|d| jwt::IssuerKeys {
                issuer: d.issuer,
                keys: d.jwks,
            });
        Ok(Authenticator {
            inner: Arc::new(Inner {
                store,
                key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
                secret,
                node: node.to_owned(),
                book: Mutex::new(book),
                issuer: RwLock::new(issuer),
                dirty: AtomicBool::new(false),
                changed: Notify::new(),
                want_keys: AtomicBool::new(true),
            }),
        })
    }

    /// The token's keyed hash and, for a JWT, its unverified `iss|sub`.
    pub fn token_id(&self, token: &str) -> TokenId {
        let tag = hmac::sign(&self.inner.key, token.as_bytes());
        let hash = hex::encode(tag.as_ref());
        // The subject follows from the token, so a remembered token's is
        // the same: no JWT decode per request.
        let known = lock(&self.inner.book)
            .tokens
            .get(&hash)
            .map(|r| r.subject.clone());
        let subject = known.unwrap_or_else(|| {
            jwt::unverified_claims(token)
                .filter(|c| !c.sub.is_empty())
                .map(|c| subject(&c.iss, &c.sub))
        });
        TokenId { hash, subject }
    }

    /// The cloud answered `token` 2xx: remember it (by hash) for offline use.
    pub fn vouched(&self, id: &TokenId, token: &str) {
        let now = now();
        if lock(&self.inner.book)
            .tokens
            .get(&id.hash)
            .is_some_and(|r| now - r.seen < REVOUCH)
        {
            return; // fresh enough: no write per request
        }
        let claims = jwt::unverified_claims(token);
        let service_account = claims
            .as_ref()
            .is_some_and(|c| c.sub.starts_with("system:serviceaccount:"));
        {
            let mut book = lock(&self.inner.book);
            book.tokens.insert(
                id.hash.clone(),
                Record {
                    subject: id.subject.clone(),
                    exp: claims.as_ref().and_then(|c| c.exp),
                    seen: now,
                },
            );
            if let Some(c) = claims.as_ref().filter(|_| service_account) {
                book.issuer.get_or_insert_with(|| c.iss.clone());
                if book.issuer.as_deref() == Some(c.iss.as_str()) {
                    book.audiences.extend(c.aud.iter().cloned());
                }
            }
            if book.tokens.len() > MAX_TOKENS {
                prune(&mut book, now);
            }
        }
        if service_account
            && let Some(kid) = jwt::key_id(token)
            && !self.issuer_keys().is_some_and(|k| k.has_key(&kid))
        {
            self.inner.want_keys.store(true, Ordering::Release);
        }
        self.inner.dirty.store(true, Ordering::Release);
        self.inner.changed.notify_one();
    }

    /// Offline: who `token` is, or why it is refused.
    pub fn authenticate(&self, token: &str) -> Result<TokenId, Error> {
        let mut id = self.token_id(token);
        let now = now();
        if let Some(r) = lock(&self.inner.book).tokens.get(&id.hash) {
            if !r.live(now) {
                return Err(Error::Expired);
            }
            id.subject = r.subject.clone();
            return Ok(id);
        }
        if let Ok(v) = jwt::verify_own(token, &self.inner.secret, &self.own_issuer()) {
            // Minted for kubelet while offline, for a service account of the
            // cluster: the same owner as the account's real tokens.
            let cluster = self.cluster_issuer().unwrap_or_default();
            id.subject = Some(subject(&cluster, &v.subject));
            return Ok(id);
        }
        let Some(keys) = self.issuer_keys() else {
            return Err(Error::Unknown(jwt::Error::NoKeys));
        };
        let audiences: Vec<String> = lock(&self.inner.book).audiences.iter().cloned().collect();
        match keys.verify(token, &audiences) {
            Ok(v) => {
                id.subject = Some(subject(&v.issuer, &v.subject));
                Ok(id)
            }
            Err(jwt::Error::Expired) => Err(Error::Expired),
            Err(e) => Err(Error::Unknown(e)),
        }
    }

    /// A short-lived service-account token for kubelet's offline
    /// TokenRequest, which this hub (and only this hub) accepts offline as
    /// that account; the cloud rejects it, and kubelet replaces it online.
    pub fn mint_offline(
        &self,
        namespace: &str,
        name: &str,
        now_unix: i64,
        lifetime: i64,
    ) -> String {
        jwt::mint_own(
            &serde_json::json!({
                "iss": self.own_issuer(),
                "sub": format!("system:serviceaccount:{namespace}:{name}"),
                "iat": now_unix,
                "nbf": now_unix,
                "exp": now_unix + lifetime,
            }),
            &self.inner.secret,
        )
    }

    fn own_issuer(&self) -> String {
        format!("yurthub-offline:{}", self.inner.node)
    }

    fn issuer_keys(&self) -> Option<jwt::IssuerKeys> {
        self.inner
            .issuer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn cluster_issuer(&self) -> Option<String> {
        self.issuer_keys()
            .map(|k| k.issuer)
            .or_else(|| lock(&self.inner.book).issuer.clone())
    }

    /// Whether the issuer keys are cached (for the status document).
    pub fn has_issuer_keys(&self) -> bool {
        self.issuer_keys().is_some()
    }

    /// Records the cloud's verdict on a question: `denied` after a 403,
    /// cleared after a 2xx.
    pub fn set_denied(&self, key: String, denied: bool) {
        let mut book = lock(&self.inner.book);
        let changed = if denied {
            if book.denied.len() >= MAX_TOKENS {
                book.denied.pop_first();
            }
            book.denied.insert(key)
        } else {
            book.denied.remove(&key)
        };
        drop(book);
        if changed {
            self.inner.dirty.store(true, Ordering::Release);
            self.inner.changed.notify_one();
        }
    }

    /// Whether any 403 is remembered at all.
    pub fn has_denials(&self) -> bool {
        !lock(&self.inner.book).denied.is_empty()
    }

    pub fn is_denied(&self, key: &str) -> bool {
        lock(&self.inner.book).denied.contains(key)
    }

    pub fn remembered_tokens(&self) -> usize {
        lock(&self.inner.book).tokens.len()
    }

    /// Persists the token book (coalesced: at most once a second) and keeps
    /// the issuer keys fresh while the cloud is reachable: once after start,
    /// every [`KEYS_REFRESH`], and when an unknown key id shows up. The
    /// health checks are local (the load balancer's view), never a request.
    pub fn spawn(
        &self,
        lb: Arc<LoadBalancer>,
        transports: Transports,
        shutdown: CancellationToken,
    ) {
        let me = self.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = me.inner.changed.notified() => {}
                    _ = stop.cancelled() => { me.flush().await; return; }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                me.flush().await;
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            let mut last: Option<tokio::time::Instant> = None;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => return,
                }
                let due = last.is_none_or(|t| {
                    t.elapsed() >= KEYS_REFRESH
                        || (me.inner.want_keys.load(Ordering::Acquire) && t.elapsed() >= KEYS_RETRY)
                });
                if !due {
                    continue;
                }
                let Some(backend) = lb.pick() else { continue };
                last = Some(tokio::time::Instant::now());
                me.inner.want_keys.store(false, Ordering::Release);
                if let Err(e) = me.fetch_keys(&transports, &backend).await {
                    tracing::warn!(error = %e, "fetching the service-account issuer keys failed; offline, only tokens the cloud accepted are recognized");
                }
            }
        });
    }

    async fn flush(&self) {
        if !self.inner.dirty.swap(false, Ordering::AcqRel) {
            return;
        }
        let body = serde_json::to_vec(&*lock(&self.inner.book)).unwrap_or_default();
        if let Err(e) = self
            .inner
            .store
            .put_document(DOC_TOKENS, "application/json", Bytes::from(body))
            .await
        {
            tracing::warn!(error = %e, "persisting the tokens the cloud accepted failed");
            self.inner.dirty.store(true, Ordering::Release);
        }
    }

    async fn fetch_keys(
        &self,
        transports: &Transports,
        backend: &crate::remote::Backend,
    ) -> Result<(), KeysError> {
        const CONFIG: &str = "/.well-known/openid-configuration";
        const JWKS: &str = "/openid/v1/jwks";
        let get = |path: &'static str| async move {
            let (code, body) = crate::remote::call_json(
                transports,
                backend,
                http::Method::GET,
                path,
                None,
                Duration::from_secs(10),
            )
            .await?;
            if !code.is_success() {
                return Err(KeysError::Status { path, code });
            }
            Ok(body)
        };
        let cfg = get(CONFIG).await?;
        let issuer = cfg["issuer"].as_str().unwrap_or_default().to_owned();
        let jwks: jsonwebtoken::jwk::JwkSet =
            serde_json::from_value(get(JWKS).await?).map_err(|e| KeysError::Decode {
                path: JWKS,
                reason: e.to_string(),
            })?;
        let doc = IssuerDoc { issuer, jwks };
        let body = serde_json::to_vec(&doc).map_err(|e| KeysError::Decode {
            path: JWKS,
            reason: e.to_string(),
        })?;
        self.inner
            .store
            .put_document(DOC_ISSUER, "application/json", Bytes::from(body))
            .await?;
        tracing::info!(issuer = %doc.issuer, keys = doc.jwks.keys.len(), "service-account issuer keys cached");
        *self
            .inner
            .issuer
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(jwt::IssuerKeys {
            issuer: doc.issuer,
            keys: doc.jwks,
        });
        Ok(())
    }
}

fn subject(iss: &str, sub: &str) -> String {
    format!("{iss}|{sub}")
}

/// Drops expired records and, past [`MAX_TOKENS`], the least recently seen.
fn prune(book: &mut Book, now: i64) {
    book.tokens.retain(|_, r| r.live(now));
    if book.tokens.len() > MAX_TOKENS {
        let mut seen: Vec<i64> = book.tokens.values().map(|r| r.seen).collect();
        seen.sort_unstable();
        let cut = seen[book.tokens.len() - MAX_TOKENS];
        book.tokens.retain(|_, r| r.seen > cut);
    }
}

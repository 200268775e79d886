//! A small kube-apiserver client for the certificate machinery: the
//! bootstrap, the CSR flow and the approver. Each call opens its own
//! HTTP/1.1 TLS connection (they are rare: a CSR, a poll every second while
//! waiting, an approval), so a rotated client certificate or CA is used by
//! the very next call and nothing is pooled across identities.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::remote::transport::SocketHook;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("{url}: timed out after {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("{url}: HTTP {code}: {message}")]
    Status {
        url: String,
        code: StatusCode,
        message: String,
    },
    #[error("{url}: response is not JSON: {reason}")]
    Decode { url: String, reason: String },
}

/// Where and as whom to call.
#[derive(Clone)]
pub struct ApiClient {
    base: Uri,
    tls: Arc<rustls::ClientConfig>,
    bearer: Option<String>,
    hook: Option<SocketHook>,
    timeout: Duration,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .field("bearer", &self.bearer.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    pub fn new(base: Uri, tls: Arc<rustls::ClientConfig>) -> ApiClient {
        ApiClient {
            base,
            tls,
            bearer: None,
            hook: None,
            timeout: Duration::from_secs(10),
        }
    }

    pub fn with_bearer(mut self, token: Option<String>) -> ApiClient {
        self.bearer = token.filter(|t| !t.is_empty());
        self
    }

    /// Runs `hook` on every socket (the hub exempts its own from the redirect).
    pub fn with_hook(mut self, hook: Option<SocketHook>) -> ApiClient {
        self.hook = hook;
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> ApiClient {
        self.timeout = timeout;
        self
    }

    pub fn base(&self) -> &Uri {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        let base = self.base.to_string();
        format!("{}{path}", base.trim_end_matches('/'))
    }

    /// One request; the whole body within the timeout.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Bytes), Error> {
        let url = self.url(path);
        let fut = async {
            let resp = self.send(method, path, body).await?;
            let code = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| Error::Transport {
                    url: url.clone(),
                    reason: e.to_string(),
                })?
                .to_bytes();
            Ok((code, bytes))
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| Error::Timeout {
                url: url.clone(),
                after: self.timeout,
            })?
    }

    /// A JSON call that must succeed (2xx); the apiserver's Status message
    /// becomes the error otherwise.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Error> {
        let url = self.url(path);
        let (code, bytes) = self.call(method, path, body).await?;
        let value: Result<Value, _> = serde_json::from_slice(&bytes);
        if !code.is_success() {
            let message = value
                .as_ref()
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(Error::Status { url, code, message });
        }
        value.map_err(|e| Error::Decode {
            url,
            reason: e.to_string(),
        })
    }

    /// Sends a request and returns the response with its body unread (for
    /// watches). Connecting and the response head are bounded by the timeout.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<http::Response<hyper::body::Incoming>, Error> {
        let url = self.url(path);
        let terr = |reason: String| Error::Transport {
            url: url.clone(),
            reason,
        };
        let host = self
            .base
            .host()
            .ok_or_else(|| terr("no host".into()))?
            .trim_matches(['[', ']'])
            .to_owned();
        let port = self.base.port_u16().unwrap_or(443);
        let head = async {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| terr(e.to_string()))?
                .collect();
            let addr = addrs
                .first()
                .copied()
                .ok_or_else(|| terr("resolved to no address".into()))?;
            let tcp = self.dial(addr).await.map_err(|e| terr(e.to_string()))?;
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|e| terr(e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| terr(format!("TLS: {e}")))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| terr(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header(
                    header::HOST,
                    self.base.authority().map(|a| a.as_str()).unwrap_or(""),
                )
                .header(header::USER_AGENT, crate::user_agent())
                .header(header::ACCEPT, "application/json");
            if let Some(t) = &self.bearer {
                req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
            }
            let payload = match body {
                Some(v) => {
                    req = req.header(header::CONTENT_TYPE, "application/json");
                    Bytes::from(v.to_string())
                }
                None => Bytes::new(),
            };
            let req = req
                .body(Full::new(payload))
                .map_err(|e| terr(e.to_string()))?;
            sender
                .send_request(req)
                .await
                .map_err(|e| terr(e.to_string()))
        };
        tokio::time::timeout(self.timeout, head)
            .await
            .map_err(|_| Error::Timeout {
                url: url.clone(),
                after: self.timeout,
            })?
    }

    async fn dial(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        if let Some(hook) = &self.hook {
            hook(&socket)?;
        }
        let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
        socket.connect(addr).await
    }
}

/// TLS that trusts exactly `roots`, presenting `client` if given.
pub fn tls_with_roots(
    roots: rustls::RootCertStore,
    client: Option<Arc<dyn rustls::client::ResolvesClientCert>>,
) -> Arc<rustls::ClientConfig> {
    let b = rustls::ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots);
    Arc::new(match client {
        Some(c) => b.with_client_cert_resolver(c),
        None => b.with_no_client_auth(),
    })
}

/// TLS that verifies against the cluster CA as the hub knows it now.
pub fn tls_with_verifier(
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    client: Option<Arc<dyn rustls::client::ResolvesClientCert>>,
) -> Arc<rustls::ClientConfig> {
    let b = rustls::ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    Arc::new(match client {
        Some(c) => b.with_client_cert_resolver(c),
        None => b.with_no_client_auth(),
    })
}

/// Roots from PEM text.
pub fn roots_from_pem(pem: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_bytes()) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("no CA certificate in the PEM data".into());
    }
    Ok(roots)
}

//! The listener and its connections: rustls with ALPN h2/http1.1 and an
//! optional, CA-verified client certificate; hyper's auto (h1/h2) server
//! with upgrades; and tracking of every connection so `shutdown` can reset
//! them all at once (SO_LINGER 0 → RST), the way a vanished peer looks.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::{ApiServerError, Shared, lock};

/// Builds the serving TLS configuration.
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, String> {
    // The apiserver's Go TLS stack picks the cipher suite by its own order.
    let provider = Arc::new(crate::pki::go_tls_provider());
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("serving certificate: {e}"))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| format!("serving key: {e}"))?
        .ok_or("serving key: no key in PEM")?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        let ca = ca.map_err(|e| format!("ca: {e}"))?;
        roots.add(ca).map_err(|e| format!("ca: {e}"))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("protocol versions: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| format!("serving certificate: {e}"))?;
    config.ignore_client_order = true;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Per-connection facts the request handler needs.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// CN and O of a verified client certificate.
    pub client_cert: Option<(String, Vec<String>)>,
    /// Serial number (hex) of that certificate, to tell rotated ones apart.
    pub client_cert_serial: Option<String>,
    /// Lets a fault replace the response with garbage bytes.
    pub poison: Poison,
    /// The address the client connected to (the apiserver's URL for it).
    pub local: Option<SocketAddr>,
}

struct Tracked {
    task: JoinHandle<()>,
    fd: Option<OwnedFd>,
}

/// A listening server; dropping it without `abort` leaves tasks running.
pub struct Running {
    pub addr: SocketAddr,
    accept: JoinHandle<()>,
    conns: Arc<Mutex<HashMap<u64, Tracked>>>,
}

impl Running {
    pub async fn start(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        shared: Arc<Shared>,
    ) -> Result<Self, ApiServerError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ApiServerError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ApiServerError::Bind { addr, source })?;
        let conns: Arc<Mutex<HashMap<u64, Tracked>>> = Arc::default();
        let accept = tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(tls),
            shared,
            conns.clone(),
        ));
        tracing::debug!(%addr, "apiserver double listening");
        Ok(Self {
            addr,
            accept,
            conns,
        })
    }

    /// Closes the listener and resets every connection.
    pub fn abort(self) {
        self.accept.abort();
        let conns: Vec<Tracked> = lock(&self.conns).drain().map(|(_, c)| c).collect();
        for conn in conns {
            if let Some(fd) = conn.fd {
                let sock = socket2::SockRef::from(&fd);
                // Linger 0 turns the close into a RST; shutting the socket down
                // also wakes any task blocked on it before it is aborted.
                let _ = sock.set_linger(Some(std::time::Duration::ZERO));
                let _ = sock.shutdown(std::net::Shutdown::Both);
            }
            conn.task.abort();
        }
        tracing::debug!(addr = %self.addr, "apiserver double shut down");
    }
}

static CONN_IDS: AtomicU64 = AtomicU64::new(0);

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    conns: Arc<Mutex<HashMap<u64, Tracked>>>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let id = CONN_IDS.fetch_add(1, Ordering::Relaxed);
        let fd = tcp.as_fd().try_clone_to_owned().ok();
        let task = tokio::spawn(serve_connection(
            tcp,
            peer,
            acceptor.clone(),
            shared.clone(),
            conns.clone(),
            id,
        ));
        let mut guard = lock(&conns);
        // The connection may already be finished (and have tried to remove itself).
        if !task.is_finished() {
            guard.insert(id, Tracked { task, fd });
        }
    }
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    conns: Arc<Mutex<HashMap<u64, Tracked>>>,
    id: u64,
) {
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().ok();
    match acceptor.accept(tcp).await {
        Ok(tls) => {
            let leaf = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first());
            let client_cert = leaf.and_then(|der| subject_of(der));
            let client_cert_serial = leaf.and_then(|der| {
                let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
                Some(cert.raw_serial_as_string())
            });
            let poison = Poison::default();
            let info = ConnInfo {
                client_cert,
                client_cert_serial,
                poison: poison.clone(),
                local,
            };
            let io = FaultIo {
                inner: tls,
                poison,
                garbage_sent: 0,
            };
            let max_streams = shared.http2_max_streams;
            let service = service_fn(move |req| {
                let shared = shared.clone();
                let info = info.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(super::route::handle(shared, info, req).await)
                }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http2().max_concurrent_streams(max_streams);
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with error");
            }
        }
        Err(e) => tracing::debug!(%peer, error = %e, "tls handshake failed"),
    }
    lock(&conns).remove(&id);
}

fn subject_of(der: &CertificateDer<'_>) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .filter_map(|a| a.as_str().ok())
        .next()?
        .to_owned();
    let orgs = subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok().map(str::to_owned))
        .collect();
    Some((cn, orgs))
}

/// Set by a Garbage fault: the next write on the connection sends these
/// bytes instead of the response, then the connection fails.
#[derive(Clone, Debug, Default)]
pub struct Poison(Arc<Mutex<Option<Vec<u8>>>>);

impl Poison {
    pub fn set(&self, garbage: Vec<u8>) {
        *lock(&self.0) = Some(garbage);
    }

    fn get(&self) -> Option<Vec<u8>> {
        lock(&self.0).clone()
    }
}

/// The TLS stream with fault hooks.
struct FaultIo<S> {
    inner: S,
    poison: Poison,
    garbage_sent: usize,
}

impl<S: AsyncRead + Unpin> AsyncRead for FaultIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FaultIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let Some(garbage) = self.poison.get() else {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        };
        while self.garbage_sent < garbage.len() {
            let start = self.garbage_sent;
            match Pin::new(&mut self.inner).poll_write(cx, &garbage[start..]) {
                Poll::Ready(Ok(n)) => self.garbage_sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "injected garbage fault",
            ))),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

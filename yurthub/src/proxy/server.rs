//! Listeners: accept loops for plain HTTP and TLS with hyper-util's auto
//! (HTTP/1.1 + HTTP/2) connection builder, protocol upgrades, header-read
//! timeouts against slow clients, and graceful drain on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Body;
use crate::certificates::{self, ServerCertResolver, Slot};
use crate::conns::{self, Bounds};

/// Binds a listening socket. `freebind` lets the pod-facing listener bind the
/// hub address before (or while) rtnetlink (re-)adds it.
pub fn bind(addr: SocketAddr, freebind: bool) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if freebind {
        if addr.is_ipv4() {
            socket.set_freebind_v4(true)?;
        } else {
            socket.set_freebind_v6(true)?;
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// A TLS acceptor serving whatever certificate the slot holds now.
pub fn tls_acceptor(serving: Slot) -> tokio_rustls::TlsAcceptor {
    let mut cfg = rustls::ServerConfig::builder_with_provider(certificates::provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(ServerCertResolver(serving)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// Serves connections until `shutdown`; then asks each connection to finish
/// its in-flight requests. The tracker lets the caller wait for the drain.
/// With `bounds`, a connection past them is refused as it is accepted.
pub fn serve<F, Fut>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    bounds: Option<Bounds>,
    handler: F,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) where
    F: Fn(Request<Incoming>, Via) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let local = listener.local_addr().ok();
    let t = tracker.clone();
    tracker.spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(listener = ?local, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let permit = match bounds.as_ref().map(|b| b.admit(peer.ip())) {
                Some(Err(_)) => {
                    conns::refuse(stream);
                    continue;
                }
                Some(Ok(p)) => Some(p),
                None => None,
            };
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            let tls = tls.clone();
            let shutdown = shutdown.clone();
            t.spawn(async move {
                // Held while the connection lives.
                let _permit = permit;
                let socket = stream.as_raw_fd();
                let close = CloseConnection(Arc::new(CancellationToken::new()));
                let service = {
                    let close = close.clone();
                    hyper::service::service_fn(move |req: Request<Incoming>| {
                        // One request at a time: ending the connection ends
                        // only this request (over HTTP/2 it would end all).
                        let via = Via {
                            peer,
                            close: (req.version() <= http::Version::HTTP_11).then(|| close.clone()),
                        };
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler(req, via).await) }
                    })
                };
                let ends = Ends {
                    shutdown,
                    close,
                    socket,
                };
                match tls {
                    None => serve_connection(TokioIo::new(stream), service, ends).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => serve_connection(TokioIo::new(s), service, ends).await,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            });
        }
    });
}

/// What a handler knows of the connection its request came on.
pub struct Via {
    pub peer: SocketAddr,
    /// HTTP/1.x only.
    pub close: Option<CloseConnection>,
}

/// Ends one HTTP/1.x connection from inside the request it serves: a
/// response cut half-way (its client stopped reading, `stall`) would
/// otherwise leave the connection, and hyper's write buffer for it, open
/// until the client goes.
///
/// One per connection, shared: a clone for each request is an atomic
/// increment, where cloning the token itself would take its lock.
#[derive(Clone)]
pub struct CloseConnection(Arc<CancellationToken>);

impl CloseConnection {
    /// Resets the connection at once.
    pub fn close(&self) {
        self.0.cancel();
    }
}

/// How a served connection may end early.
struct Ends {
    /// The hub stops: in-flight requests finish first.
    shutdown: CancellationToken,
    /// At once, with a reset.
    close: CloseConnection,
    /// The connection's socket, for the reset.
    socket: RawFd,
}

async fn serve_connection<I, S>(io: I, service: S, ends: Ends)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .max_concurrent_streams(1000);
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = ends.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
        _ = ends.close.0.cancelled() => {}
    }
    // Closed because its response was cut (hyper may also have ended the
    // connection on the cut body's error meanwhile): a reset, not a FIN
    // queued behind data the client will not read, so the kernel frees the
    // socket's buffers too.
    if ends.close.0.is_cancelled() {
        // SAFETY: `conn`, which owns the socket, lives until the end of
        // this function, so the descriptor is open and still this
        // connection's.
        let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(ends.socket) };
        let _ = socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO));
        tracing::debug!("connection reset: its response was cut");
    }
}

//! Upstream connections: TCP with a per-socket hook (the redirect module
//! exempts the hub's own sockets from the kernel redirect), TLS that trusts
//! only the cluster CA, ALPN h2 where the apiserver offers it, and a
//! connection gauge per server (`node_yurthub_closable_conns_collector`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::certificates::{self, Certificates, ClientCertResolver, ClusterCaVerifier};
use crate::metrics::ServerLabels;
use crate::{Body, BoxError};

/// Called on every upstream socket before it connects.
pub type SocketHook = Arc<dyn Fn(&socket2::Socket) -> io::Result<()> + Send + Sync>;

/// Which credentials an upstream request travels with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// The hub's client certificate (system:node:<node>).
    Hub,
    /// No client certificate: the request carries its own bearer token, or
    /// is anonymous.
    None,
}

pub type HttpClient = Client<Connector, Body>;

/// The largest HTTP/2 frame the hub accepts from an apiserver (16 KiB by
/// default); a frame is buffered whole before it is read.
const H2_MAX_FRAME: u32 = 256 << 10;

/// What one stream may have in flight from the apiserver before its client
/// reads it: 1 MiB per round trip is 20 MB/s over a 50 ms edge link.
const H2_STREAM_WINDOW: u32 = 1 << 20;

/// What all streams of one connection may have in flight together. Sixteen
/// streams' worth, so that a few clients that stop reading large responses
/// cannot take the whole connection's credit and stall every other stream
/// on it (hyper's default, 5 MiB, is two and a half streams' worth). It is
/// also what a connection's unread data can cost in memory.
const H2_CONN_WINDOW: u32 = 16 * H2_STREAM_WINDOW;

/// The streams the hub opens on one upstream HTTP/2 connection at most:
/// RFC 9113's floor for what a server should allow
/// (SETTINGS_MAX_CONCURRENT_STREAMS), so that no compliant server makes a
/// new stream wait. hyper's client queues a stream past the server's limit,
/// and every later request of the connection behind it: the watches of one
/// pod would hold up every other request of the node's pods.
pub const STREAMS_PER_CONNECTION: usize = 100;

/// HTTP/2 connections per identity and backend at most: 1,600 streams in
/// all, past which a proxied request is refused (429). Lanes past the first
/// are dialed only when the ones before them are full, and close after the
/// pool's idle timeout, so a node that holds fewer than 100 streams keeps
/// one connection, as before.
pub const LANES: usize = 16;

/// The upstream clients: {hub identity, none} × {HTTP/2-capable, in lanes
/// ([`Lanes`]); HTTP/1.1 only for upgrades (exec/attach/port-forward cannot
/// ride HTTP/2)}, and the hub's own control client
/// ([`Transports::control`]).
///
/// When the hub's client certificate is replaced (rotation, re-bootstrap,
/// a re-read kubelet file), the hub-identity clients are rebuilt on the next
/// request: their pools, holding connections authenticated with the old
/// certificate, are dropped (idle connections close, in-flight streams
/// finish on theirs), so new requests use the new certificate at once.
#[derive(Clone)]
pub struct Transports {
    anonymous: Lanes,
    anonymous_upgrade: HttpClient,
    hub: Arc<std::sync::RwLock<HubClients>>,
    rebuild: Arc<dyn Fn() -> (Lanes, HttpClient, HttpClient) + Send + Sync>,
    slot: certificates::Slot,
}

struct HubClients {
    generation: u64,
    pooled: Lanes,
    upgrade: HttpClient,
    control: HttpClient,
}

/// HTTP/2 clients with a pool each, hence connections of their own, and
/// the streams each has open: a stream goes to the first that has room
/// ([`STREAMS_PER_CONNECTION`]), so the first connection fills before a
/// second is dialed.
#[derive(Clone)]
pub struct Lanes {
    lanes: Arc<[Lane]>,
}

struct Lane {
    client: HttpClient,
    open: AtomicUsize,
}

/// One stream's place in a lane, held while its response lives.
pub struct StreamSlot {
    lanes: Arc<[Lane]>,
    index: usize,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.lanes[self.index].open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Lanes {
    fn new(make: impl Fn() -> HttpClient) -> Lanes {
        Lanes {
            lanes: (0..LANES)
                .map(|_| Lane {
                    client: make(),
                    open: AtomicUsize::new(0),
                })
                .collect(),
        }
    }

    /// The client of the first lane with room, and the place taken in it;
    /// None when every lane is full.
    pub fn take(&self) -> Option<(HttpClient, StreamSlot)> {
        for (index, lane) in self.lanes.iter().enumerate() {
            let taken = lane
                .open
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < STREAMS_PER_CONNECTION).then_some(n + 1)
                });
            if taken.is_ok() {
                let slot = StreamSlot {
                    lanes: self.lanes.clone(),
                    index,
                };
                return Some((lane.client.clone(), slot));
            }
        }
        None
    }

    /// The first lane's client, for calls that are not counted.
    fn first(&self) -> &HttpClient {
        &self.lanes[0].client
    }
}

impl Transports {
    pub fn new(
        certs: &Certificates,
        conns: Family<ServerLabels, Gauge>,
        hook: Option<SocketHook>,
    ) -> Transports {
        let certs_owned = certs.clone();
        let connector = Arc::new(move |identity: Identity, h2: bool| {
            let tls = tls_config(&certs_owned, identity, h2);
            Connector {
                tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
                connect_timeout: Duration::from_secs(10),
                handshake_timeout: Duration::from_secs(10),
                hook: hook.clone(),
                conns: conns.clone(),
            }
        });
        let make = {
            let connector = connector.clone();
            move |identity: Identity, h2: bool| pooled(connector(identity, h2))
        };
        // The lanes share one connector, hence one TLS configuration.
        let lanes = move |identity: Identity| {
            let c = connector(identity, true);
            Lanes::new(|| pooled(c.clone()))
        };
        let slot = certs.client_slot();
        let generation = slot.generation();
        let rebuild = {
            let make = make.clone();
            let lanes = lanes.clone();
            // Each client has its own pool, hence its own connections.
            Arc::new(move || {
                (
                    lanes(Identity::Hub),
                    make(Identity::Hub, false),
                    make(Identity::Hub, true),
                )
            })
        };
        let hub = HubClients::new(generation, rebuild());
        Transports {
            anonymous: lanes(Identity::None),
            anonymous_upgrade: make(Identity::None, false),
            hub: Arc::new(std::sync::RwLock::new(hub)),
            rebuild,
            slot,
        }
    }

    /// A client whose streams are not counted in lanes: upgrades (one
    /// HTTP/1.1 connection each), and the hub's own few calls, which ride
    /// the first lane's connection.
    pub fn client(&self, identity: Identity, upgrade: bool) -> HttpClient {
        match (identity, upgrade) {
            (Identity::None, false) => self.anonymous.first().clone(),
            (Identity::None, true) => self.anonymous_upgrade.clone(),
            (Identity::Hub, false) => self.hub(|h| h.pooled.first()),
            (Identity::Hub, true) => self.hub(|h| &h.upgrade),
        }
    }

    /// The HTTP/2 client of a proxied stream, in the first lane with room,
    /// and the place it holds there; None when every lane is full.
    pub fn stream(&self, identity: Identity) -> Option<(HttpClient, StreamSlot)> {
        match identity {
            Identity::None => self.anonymous.take(),
            Identity::Hub => self.hub(|h| &h.pooled).take(),
        }
    }

    /// The hub's own calls (the heartbeat's lease renewals, lookups) with
    /// its identity, on connections of their own as OpenYurt's probes have:
    /// never queued behind the proxied streams, which a client that stops
    /// reading can hold up, so a busy node is not judged cut off.
    pub fn control(&self) -> HttpClient {
        self.hub(|h| &h.control)
    }

    /// One of the hub-identity clients for the current client certificate.
    fn hub<T: Clone>(&self, pick: impl Fn(&HubClients) -> &T) -> T {
        let current = self.slot.generation();
        {
            let hub = self.hub.read().unwrap_or_else(|p| p.into_inner());
            if hub.generation == current {
                return pick(&hub).clone();
            }
        }
        let mut hub = self.hub.write().unwrap_or_else(|p| p.into_inner());
        if hub.generation != current {
            *hub = HubClients::new(current, (self.rebuild)());
            tracing::info!("client certificate changed; new upstream connections use it");
        }
        pick(&hub).clone()
    }
}

impl HubClients {
    fn new(generation: u64, (pooled, upgrade, control): (Lanes, HttpClient, HttpClient)) -> Self {
        HubClients {
            generation,
            pooled,
            upgrade,
            control,
        }
    }
}

/// A client with its own pool over `connector`.
fn pooled(connector: Connector) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(25)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .http2_keep_alive_timeout(Duration::from_secs(15))
        // A 1 MB list is 4 DATA frames instead of 55: each frame is a trip
        // through the body chain and a write to the client.
        .http2_max_frame_size(H2_MAX_FRAME)
        .http2_initial_stream_window_size(H2_STREAM_WINDOW)
        .http2_initial_connection_window_size(H2_CONN_WINDOW)
        .timer(hyper_util::rt::TokioTimer::new())
        .build(connector)
}

fn tls_config(certs: &Certificates, identity: Identity, h2: bool) -> rustls::ClientConfig {
    let builder = rustls::ClientConfig::builder_with_provider(certificates::provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(ClusterCaVerifier::new(certs.clone()));
    let mut cfg = match identity {
        Identity::Hub => {
            builder.with_client_cert_resolver(Arc::new(ClientCertResolver(certs.client_slot())))
        }
        Identity::None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = if h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    cfg
}

/// Dials an apiserver and completes the TLS handshake.
#[derive(Clone)]
pub struct Connector {
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    hook: Option<SocketHook>,
    conns: Family<ServerLabels, Gauge>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Conn>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let me = self.clone();
        Box::pin(async move { me.connect(uri).await })
    }
}

impl Connector {
    async fn connect(self, uri: Uri) -> Result<TokioIo<Conn>, BoxError> {
        let host = uri
            .host()
            .ok_or("upstream URI has no host")?
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await?
            .collect();
        let mut last_err: Option<BoxError> = None;
        for addr in addrs {
            match tokio::time::timeout(self.connect_timeout, self.dial(addr)).await {
                Ok(Ok(tcp)) => {
                    let name = rustls_pki_types::ServerName::try_from(host.clone())?;
                    let tls =
                        tokio::time::timeout(self.handshake_timeout, self.tls.connect(name, tcp))
                            .await
                            .map_err(|_| format!("TLS handshake with {addr} timed out"))??;
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    let label = ServerLabels {
                        server: uri.authority().map(|a| a.to_string()).unwrap_or_default(),
                    };
                    let gauge = self.conns.get_or_create(&label).clone();
                    gauge.inc();
                    return Ok(TokioIo::new(Conn { tls, h2, gauge }));
                }
                Ok(Err(e)) => last_err = Some(format!("connecting to {addr}: {e}").into()),
                Err(_) => last_err = Some(format!("connecting to {addr} timed out").into()),
            }
        }
        Err(last_err.unwrap_or_else(|| format!("{host} resolved to no address").into()))
    }

    async fn dial(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        socket
            .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(Duration::from_secs(30)))?;
        if let Some(hook) = &self.hook {
            hook(&socket)?;
        }
        let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
        socket.connect(addr).await
    }
}

/// One upstream TLS connection; the gauge counts it while it lives.
pub struct Conn {
    tls: TlsStream<TcpStream>,
    h2: bool,
    gauge: Gauge,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        let c = Connected::new();
        if self.h2 { c.negotiated_h2() } else { c }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lanes() -> Lanes {
        let tls = rustls::ClientConfig::builder_with_provider(certificates::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let connector = Connector {
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            connect_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(1),
            hook: None,
            conns: Family::default(),
        };
        Lanes::new(|| pooled(connector.clone()))
    }

    #[test]
    fn streams_fill_the_first_lane_with_room_and_none_past_the_last() {
        let lanes = lanes();
        let mut held = Vec::new();
        for n in 0..LANES * STREAMS_PER_CONNECTION {
            let (_, slot) = lanes.take().expect("a lane with room");
            assert_eq!(slot.index, n / STREAMS_PER_CONNECTION, "stream {n}");
            held.push(slot);
        }
        assert!(lanes.take().is_none(), "every lane is full");
        // A place given back in the third lane is the next one taken.
        held.remove(2 * STREAMS_PER_CONNECTION);
        let (_, slot) = lanes.take().expect("the freed place");
        assert_eq!(slot.index, 2);
        held.clear();
        assert_eq!(lanes.take().expect("room again").1.index, 0);
    }
}

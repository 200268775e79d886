//! The stack floor for the proxy bench: a reverse proxy built from the
//! hub's own crates and settings (hyper's HTTP/1.1 + HTTP/2 server behind
//! rustls, hyper-util's pooled HTTP/2 client over rustls with a client
//! certificate, one tokio worker) and nothing else: no identity, no
//! routing, no cache, no metrics. What it costs per request is what the
//! stack costs; what the hub costs above it is the hub's own work.
//!
//! It is the `stack-floor` binary, which `cargo xtask bench proxy` builds
//! with the hub's profile (`dist`) and the bench finds next to the hub.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use http::{Request, Response, Uri, Version, header};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

type Body = UnsyncBoxBody<bytes::Bytes, hyper::Error>;

/// The floor from its arguments: `h2|h1 LISTEN UPSTREAM SERVING_CERT
/// SERVING_KEY CA CLIENT_PEM`.
pub fn main_with(args: &[String]) -> Result<()> {
    let [protocol, listen, upstream, cert, key, ca, client_pem] = args else {
        anyhow::bail!(
            "usage: stack-floor h2|h1 LISTEN UPSTREAM SERVING_CERT SERVING_KEY CA CLIENT_PEM"
        );
    };
    StackFloor {
        upstream_h2: match protocol.as_str() {
            "h2" => true,
            "h1" => false,
            other => anyhow::bail!("upstream protocol {other:?}: h2 or h1"),
        },
        listen: listen.parse().context("LISTEN")?,
        upstream: upstream.parse().context("UPSTREAM")?,
        serving_cert: cert.as_ref(),
        serving_key: key.as_ref(),
        ca: ca.as_ref(),
        client_pem: client_pem.as_ref(),
    }
    .run()
}

/// Where the floor listens and what it forwards to, with its TLS material.
pub struct StackFloor<'a> {
    pub listen: SocketAddr,
    /// The apiserver: `https://localhost:PORT`.
    pub upstream: SocketAddr,
    pub serving_cert: &'a Path,
    pub serving_key: &'a Path,
    pub ca: &'a Path,
    /// The upstream client certificate and key, in one PEM.
    pub client_pem: &'a Path,
    /// HTTP/2 to the upstream (ALPN h2 first), as the hub; else HTTP/1.1
    /// keep-alive, as nginx.
    pub upstream_h2: bool,
}

impl StackFloor<'_> {
    /// Serves until the process is killed, on one worker, as the hub does
    /// by default (`--worker-threads 1`).
    pub fn run(self) -> Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("tokio runtime")?;
        rt.block_on(self.serve())
    }

    async fn serve(self) -> Result<()> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = {
            let chain = certs(self.serving_cert)?;
            let key = key(self.serving_key)?;
            let mut cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(chain, key)?;
            cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
        };
        let client = {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(self.ca)? {
                roots.add(c)?;
            }
            let cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_client_auth_cert(certs(self.client_pem)?, key(self.client_pem)?)?;
            // ALPN (h2 first, as the hub offers) is set by the connector.
            let b = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(cfg)
                .https_only();
            let connector = if self.upstream_h2 {
                b.enable_all_versions().build()
            } else {
                b.enable_http1().build()
            };
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .timer(TokioTimer::new())
                .build::<_, Incoming>(connector)
        };
        let upstream: Uri = format!("https://localhost:{}", self.upstream.port()).parse()?;
        let listener = tokio::net::TcpListener::bind(self.listen).await?;
        loop {
            let (tcp, _) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            let (server, client, upstream) = (server.clone(), client.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(tls) = server.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    forward(client.clone(), upstream.clone(), req)
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .keep_alive(true);
                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
            });
        }
    }
}

/// The least a reverse proxy does: the request to the upstream URI,
/// without hop-by-hop headers, and the response back.
async fn forward<C>(
    client: Client<C, Incoming>,
    upstream: Uri,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let (mut parts, body) = req.into_parts();
    let mut uri = upstream.into_parts();
    uri.path_and_query = parts.uri.path_and_query().cloned();
    parts.uri = Uri::from_parts(uri).expect("an https URI with a path");
    parts.version = Version::HTTP_11;
    for h in [header::HOST, header::CONNECTION, header::TRANSFER_ENCODING] {
        parts.headers.remove(h);
    }
    let resp = match client.request(Request::from_parts(parts, body)).await {
        Ok(r) => r.map(|b| b.boxed_unsync()),
        Err(_) => Response::builder()
            .status(502)
            .body(
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .expect("a static response"),
    };
    Ok(resp)
}

fn certs(path: &Path) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(rustls_pemfile::certs(&mut pem.as_slice()).collect::<Result<_, _>>()?)
}

fn key(path: &Path) -> Result<rustls_pki_types::PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())?
        .with_context(|| format!("no private key in {}", path.display()))
}

//! yurthub: the edge-node reverse proxy and cache for the kube-apiserver.
//!
//! The crate is a library with a thin binary (`main.rs`) so that tests can run
//! the whole hub in-process on ephemeral ports. [`app::App`] is the composition
//! root; each module owns one concern:
//! - [`proxy`]: listeners, request resolution, routing, streaming, upgrades;
//! - [`remote`]: upstream backends, load balancing and lease-based health;
//! - [`certificates`]: the hub's client and serving identities;
//! - [`hub`]: the hub server (healthz, readyz, metrics);
//! - [`redirect`]: the kernel redirect of the apiserver VIP to the hub;
//! - [`metrics`], [`telemetry`]: observability.

pub mod alloc;
pub mod app;
pub mod cache;
pub mod certificates;
pub mod cli;
pub mod cloudsync;
pub mod codec;
pub mod config;
pub mod conns;
pub mod dump;
pub mod entry;
pub mod filters;
pub mod hub;
pub mod identity;
pub mod informer;
pub mod install;
pub mod metrics;
pub mod multiplexer;
pub mod pool;
pub mod proxy;
pub mod redirect;
pub mod redirector;
pub mod remote;
pub mod request;
pub mod runtime;
pub mod storage;
pub mod telemetry;

pub use app::App;

/// The hub's version, reported by `--version`, metrics and its User-Agent.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The User-Agent of the hub's own upstream requests. Requests with a
/// `yurthub` User-Agent bypass the readiness gate, as upstream.
pub fn user_agent() -> String {
    format!("yurthub/{VERSION}")
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type every handler returns: streamed, type-erased.
pub type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;

/// A body with the given bytes.
pub fn full_body(bytes: impl Into<bytes::Bytes>) -> Body {
    use http_body_util::BodyExt;
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty_body() -> Body {
    full_body(bytes::Bytes::new())
}

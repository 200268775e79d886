//! Bounds on what pods hold at once through the listeners they reach: the
//! pod-facing one, and the multiplexer's on the node IP.
//!
//! - **Connections** (one instance for both listeners, so its total bounds
//!   them together). Without a bound one pod could open connections until
//!   the hub runs out of file descriptors, and then nothing on the node
//!   (kubelet on the loopback listener, the hub's own upstream connections,
//!   its store) could open another. Connections past a bound are refused
//!   right after accept: closed with a reset (no TLS handshake is spent on
//!   them, and no TIME_WAIT is left on the hub's side).
//! - **Requests in flight** per source address on the pod-facing listener:
//!   HTTP/2 lets each connection carry a thousand streams, and the streams
//!   of all pods share the hub's upstream connections, so one pod's watches
//!   must not take the upstream streams every other pod needs. A request
//!   past the bound is answered 429 with `Retry-After`, as the apiserver
//!   answers past its in-flight limits.
//!
//! Refusals are counted, and logged at most every 10 s.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::RefusedLabels;

/// How often a refusal is logged at most: a pod that keeps connecting must
/// not flood the node's log.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its source address holds `per_address` connections already.
    Address,
    /// The listener holds `total` connections already.
    Total,
}

impl Refused {
    fn label(self) -> &'static str {
        match self {
            Refused::Address => "address",
            Refused::Total => "total",
        }
    }
}

/// Counts what is open (connections, or requests in flight), in all and
/// per source address.
#[derive(Clone)]
pub struct Bounds {
    inner: Arc<Inner>,
}

struct Inner {
    /// What is counted, for the log: "connections" or "requests".
    counted: &'static str,
    per_address: usize,
    total: usize,
    state: Mutex<State>,
    refused: Family<RefusedLabels, Counter>,
}

#[derive(Default)]
struct State {
    open: usize,
    by_address: HashMap<IpAddr, usize>,
    last_log: Option<Instant>,
}

/// One admitted connection or request; dropping it (it ended) frees its
/// place.
pub struct Permit {
    inner: Arc<Inner>,
    address: IpAddr,
}

impl Bounds {
    /// Bounds on connections; `refused` counts refusals by reason
    /// (`node_yurthub_proxy_refused_connections_total`).
    pub fn connections(
        per_address: usize,
        total: usize,
        refused: Family<RefusedLabels, Counter>,
    ) -> Bounds {
        Bounds::new("connections", per_address, total, refused)
    }

    /// Bounds on the requests in flight of each source address
    /// (`node_yurthub_proxy_refused_requests_total`).
    pub fn requests(per_address: usize, refused: Family<RefusedLabels, Counter>) -> Bounds {
        Bounds::new("requests", per_address, usize::MAX, refused)
    }

    fn new(
        counted: &'static str,
        per_address: usize,
        total: usize,
        refused: Family<RefusedLabels, Counter>,
    ) -> Bounds {
        Bounds {
            inner: Arc::new(Inner {
                counted,
                per_address: per_address.max(1),
                total: total.max(1),
                state: Mutex::default(),
                refused,
            }),
        }
    }

    /// A place for a connection or request from `address`, or why there is
    /// none.
    pub fn admit(&self, address: IpAddr) -> Result<Permit, Refused> {
        // An IPv4 client of a dual-stack socket is the same client as over
        // IPv4.
        let address = address.to_canonical();
        let mut s = self.inner.lock();
        let from_address = s.by_address.get(&address).copied().unwrap_or(0);
        let refused = if from_address >= self.inner.per_address {
            Some(Refused::Address)
        } else if s.open >= self.inner.total {
            Some(Refused::Total)
        } else {
            None
        };
        if let Some(why) = refused {
            let now = Instant::now();
            if s.last_log
                .is_none_or(|t| now.duration_since(t) >= LOG_EVERY)
            {
                s.last_log = Some(now);
                tracing::warn!(
                    %address, counted = self.inner.counted, reason = why.label(), open = s.open,
                    from_address, per_address = self.inner.per_address, total = self.inner.total,
                    "refusing past a bound on the listeners pods reach (logged every 10s at most)"
                );
            }
            drop(s);
            self.inner
                .refused
                .get_or_create(&RefusedLabels {
                    reason: why.label().into(),
                })
                .inc();
            return Err(why);
        }
        s.open += 1;
        *s.by_address.entry(address).or_insert(0) += 1;
        Ok(Permit {
            inner: self.inner.clone(),
            address,
        })
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.inner.lock();
        s.open = s.open.saturating_sub(1);
        if let Some(n) = s.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                s.by_address.remove(&self.address);
            }
        }
    }
}

/// Closes a refused connection with a reset: the client learns at once,
/// and the hub keeps no TIME_WAIT state for it.
pub fn refuse(stream: tokio::net::TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
}

/// The default bound on all pod-facing connections: half the soft limit
/// on open files, leaving the other half to kubelet's listener, the
/// upstream connections and the cache. (The process raises its soft limit
/// to the hard one at start, as Go programs do.)
pub fn half_the_open_file_limit() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    usize::try_from(soft / 2).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_bound_refuses_and_a_closed_connection_frees_its_place() {
        let refused = Family::<RefusedLabels, Counter>::default();
        let b = Bounds::connections(2, 3, refused.clone());
        let a1 = b.admit(ip("10.0.0.1")).unwrap();
        let _a2 = b.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(b.admit(ip("10.0.0.1")).err(), Some(Refused::Address));
        // The same client over a dual-stack socket counts as the same.
        assert_eq!(b.admit(ip("::ffff:10.0.0.1")).err(), Some(Refused::Address));
        let _b1 = b.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(b.admit(ip("10.0.0.3")).err(), Some(Refused::Total));
        drop(a1);
        let _a3 = b.admit(ip("10.0.0.1")).unwrap();
        let count = |reason: &str| {
            refused
                .get_or_create(&RefusedLabels {
                    reason: reason.into(),
                })
                .get()
        };
        assert_eq!((count("address"), count("total")), (2, 1));
        assert!(b.inner.lock().by_address.len() == 2);
    }
}

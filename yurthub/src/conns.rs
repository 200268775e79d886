//! Bounds on what pods hold at once through the listeners they reach: the
//! pod-facing one, and the multiplexer's on the node IP.
//!
//! - **Connections** (one instance for both listeners, so its total bounds
//!   them together). Without a bound one pod could open connections until
//!   the hub runs out of file descriptors, and then nothing on the node
//!   (kubelet on the loopback listener, the hub's own upstream connections,
//!   its store) could open another. Connections past a bound are refused
//!   right after accept: closed with a reset (no TLS handshake is spent on
//!   them, and no TIME_WAIT is left on the hub's side). New connections
//!   from one address are also bounded in rate (a token bucket of
//!   `per_second`, as many in a burst): each costs a TLS handshake on the
//!   hub's event loop, which kubelet's requests share, so one pod
//!   reconnecting in a loop must not take the loop.
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

/// Past this many addresses in the table, those with nothing open and a
/// full bucket are dropped (and the mark doubles), so a table of many
/// short-lived pods stays small at an amortized cost.
const PRUNE_AT: usize = 1024;

/// Why a connection or request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its source address holds `per_address` already.
    Address,
    /// The listeners hold `total` already.
    Total,
    /// Its source address opened `per_second` new ones within the last
    /// second.
    Rate,
}

impl Refused {
    fn label(self) -> &'static str {
        match self {
            Refused::Address => "address",
            Refused::Total => "total",
            Refused::Rate => "rate",
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
    /// New ones per second from one address (and as many in a burst).
    per_second: Option<f64>,
    state: Mutex<State>,
    refused: Family<RefusedLabels, Counter>,
}

#[derive(Default)]
struct State {
    open: usize,
    by_address: HashMap<IpAddr, Entry>,
    prune_at: usize,
    last_log: Option<Instant>,
}

/// One source address: what it holds open, and its bucket of new ones
/// (kept after it closes everything, until the bucket is full again, so
/// closing each connection before the next does not refill it).
struct Entry {
    open: usize,
    tokens: f64,
    at: Instant,
}

impl Entry {
    /// Refills the bucket up to `per_second` for the time since it was
    /// last looked at.
    fn refill(&mut self, per_second: f64, now: Instant) {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * per_second;
        self.tokens = (self.tokens + earned).min(per_second);
        self.at = now;
    }

    /// Nothing open and nothing owed: the entry says nothing a fresh one
    /// would not.
    fn idle(&mut self, per_second: Option<f64>, now: Instant) -> bool {
        if self.open > 0 {
            return false;
        }
        match per_second {
            None => true,
            Some(rate) => {
                self.refill(rate, now);
                self.tokens >= rate
            }
        }
    }
}

/// One admitted connection or request; dropping it (it ended) frees its
/// place.
pub struct Permit {
    inner: Arc<Inner>,
    address: IpAddr,
}

impl Bounds {
    /// Bounds on connections (`per_second`: new ones per address, None
    /// for no bound); `refused` counts refusals by reason
    /// (`node_yurthub_proxy_refused_connections_total`).
    pub fn connections(
        per_address: usize,
        total: usize,
        per_second: Option<u32>,
        refused: Family<RefusedLabels, Counter>,
    ) -> Bounds {
        Bounds::new("connections", per_address, total, per_second, refused)
    }

    /// Bounds on the requests in flight of each source address
    /// (`node_yurthub_proxy_refused_requests_total`).
    pub fn requests(per_address: usize, refused: Family<RefusedLabels, Counter>) -> Bounds {
        Bounds::new("requests", per_address, usize::MAX, None, refused)
    }

    fn new(
        counted: &'static str,
        per_address: usize,
        total: usize,
        per_second: Option<u32>,
        refused: Family<RefusedLabels, Counter>,
    ) -> Bounds {
        Bounds {
            inner: Arc::new(Inner {
                counted,
                per_address: per_address.max(1),
                total: total.max(1),
                per_second: per_second.map(|n| f64::from(n.max(1))),
                state: Mutex::new(State {
                    prune_at: PRUNE_AT,
                    ..State::default()
                }),
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
        let per_second = self.inner.per_second;
        // Only a rate needs the clock.
        let now = per_second.map(|_| Instant::now());
        let mut guard = self.inner.lock();
        let s = &mut *guard;
        if s.by_address.len() >= s.prune_at {
            let at = now.unwrap_or_else(Instant::now);
            s.by_address.retain(|_, e| !e.idle(per_second, at));
            s.prune_at = (s.by_address.len() * 2).max(PRUNE_AT);
        }
        let open = s.open;
        let entry = s.by_address.entry(address).or_insert_with(|| Entry {
            open: 0,
            tokens: per_second.unwrap_or(0.0),
            at: now.unwrap_or_else(Instant::now),
        });
        if let (Some(rate), Some(now)) = (per_second, now) {
            entry.refill(rate, now);
        }
        let from_address = entry.open;
        let refused = if from_address >= self.inner.per_address {
            Some(Refused::Address)
        } else if open >= self.inner.total {
            Some(Refused::Total)
        } else if per_second.is_some() && entry.tokens < 1.0 {
            Some(Refused::Rate)
        } else {
            None
        };
        if refused.is_none() {
            entry.open += 1;
            if per_second.is_some() {
                entry.tokens -= 1.0;
            }
            s.open += 1;
        }
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
            drop(guard);
            self.inner
                .refused
                .get_or_create(&RefusedLabels {
                    reason: why.label().into(),
                })
                .inc();
            return Err(why);
        }
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
        let per_second = self.inner.per_second;
        let mut s = self.inner.lock();
        s.open = s.open.saturating_sub(1);
        if let Some(e) = s.by_address.get_mut(&self.address) {
            e.open -= 1;
            // With a rate, the entry stays until its bucket is full again
            // (or the next prune finds it so).
            if e.open == 0 && per_second.is_none() {
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
        let b = Bounds::connections(2, 3, None, refused.clone());
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
        // 10.0.0.3 was refused and holds nothing: pruned, or dropped here.
        let mut s = b.inner.lock();
        s.by_address.retain(|_, e| e.open > 0);
        assert_eq!(s.by_address.len(), 2);
    }

    #[test]
    fn new_connections_of_an_address_are_bounded_in_rate() {
        let refused = Family::<RefusedLabels, Counter>::default();
        let b = Bounds::connections(100, 100, Some(3), refused.clone());
        // Closing each before the next does not refill the bucket.
        for _ in 0..3 {
            drop(b.admit(ip("10.0.0.1")).expect("within the burst"));
        }
        assert_eq!(b.admit(ip("10.0.0.1")).err(), Some(Refused::Rate));
        let _other = b
            .admit(ip("10.0.0.2"))
            .expect("another address has its own bucket");
        assert_eq!(
            refused
                .get_or_create(&RefusedLabels {
                    reason: "rate".into()
                })
                .get(),
            1
        );
        // The bucket refills at the rate, up to the burst.
        let t0 = Instant::now();
        let mut e = Entry {
            open: 0,
            tokens: 0.0,
            at: t0,
        };
        e.refill(3.0, t0 + Duration::from_millis(500));
        assert!((e.tokens - 1.5).abs() < 1e-9, "{}", e.tokens);
        assert!(!e.idle(Some(3.0), t0 + Duration::from_millis(900)));
        assert!(e.idle(Some(3.0), t0 + Duration::from_secs(10)));
        assert_eq!(e.tokens, 3.0, "never more than the burst");
    }

    #[test]
    fn the_table_forgets_addresses_with_nothing_open_and_a_full_bucket() {
        let b = Bounds::connections(100, usize::MAX, Some(50), Family::default());
        let held = b.admit(ip("10.1.0.0")).unwrap();
        for i in 0..(PRUNE_AT as u32 - 1) {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a02_0000 + i));
            drop(b.admit(a).unwrap());
        }
        // Each bucket is one short until a second has passed.
        assert_eq!(b.inner.lock().by_address.len(), PRUNE_AT);
        for e in b.inner.lock().by_address.values_mut() {
            e.at -= Duration::from_secs(1);
        }
        // The table is at its mark: this admission prunes it first.
        drop(b.admit(ip("10.3.0.0")).unwrap());
        let s = b.inner.lock();
        assert!(
            s.by_address.len() <= 2,
            "left: {} (the held one and the newest)",
            s.by_address.len()
        );
        assert!(s.by_address.contains_key(&ip("10.1.0.0")));
        drop(s);
        drop(held);
    }
}

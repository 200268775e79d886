//! Clients that stop reading: a proxied response whose client has taken
//! nothing for [`STALL_LIMIT`] while the hub held data for it is cut at the
//! upstream side.
//!
//! Why: the streams of one upstream HTTP/2 connection share its
//! flow-control credit (16 MiB, 1 MiB per stream: `remote::transport`).
//! Data received for a stream that its client has not taken holds that
//! credit, so sixteen silent clients of large lists stall every other
//! stream of the connection, and pods share one anonymous-identity
//! connection: one pod could stall the others. Dropping the upstream body
//! resets its stream (RST_STREAM) and gives the credit back.
//!
//! The two halves of one response share a [`Slot`]:
//! - [`Watched`] is the outermost body, the one hyper polls. hyper polls it
//!   only when it can write (its buffer has room, or the client's HTTP/2
//!   stream has window), so "handed data, not polled since" means the
//!   client is not reading. A last poll that was `Pending` waits on the
//!   upstream, which is `body::IdleBounds`' concern, never cut here;
//! - [`Upstream`] is the innermost body, over hyper's `Incoming`; the cut
//!   takes the `Incoming` out of the slot, and a later poll is an error, so
//!   the client never takes the truncated body for a whole one. An
//!   HTTP/1.x client's connection is reset with it (`server::CloseConnection`):
//!   hyper, waiting to write to it, would keep it and its buffer open.
//!
//! One sweeper task wakes at the earliest deadline (at most once per
//! [`SWEEP`], once per limit when every guarded body waits on its upstream)
//! while guarded bodies exist; it exits when none is left and the next
//! guarded body starts it again.
//! Only bodies that can hold much credit are guarded (no Content-Length, or
//! one of [`GUARDED_FROM`] bytes or more): an object GET costs nothing.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;

use super::server::CloseConnection;
use crate::BoxError;

/// How long a client may leave handed data untaken. The apiserver closes a
/// watcher that cannot keep up within seconds; a node-local client that
/// reads nothing for this long is stuck or hostile.
pub const STALL_LIMIT: Duration = Duration::from_secs(10);
/// The sweeper looks at most this often.
const SWEEP: Duration = Duration::from_secs(1);
/// Bodies smaller than this leave the upstream connection at once (they fit
/// hyper's write buffer), so they cannot hold its credit.
pub const GUARDED_FROM: u64 = 64 << 10;

/// `handed` value: the last poll waited on the upstream, or the body ended.
const NOT_HANDED: u64 = u64::MAX;

/// Whether a response with these headers is worth guarding.
pub fn worth_guarding(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_none_or(|len| len >= GUARDED_FROM)
}

/// The guarded bodies of one proxy, and the sweeper's state.
pub struct Stalls {
    state: Mutex<State>,
    limit: Duration,
    cut: Counter,
}

#[derive(Default)]
struct State {
    slots: Vec<Weak<Slot>>,
    sweeping: bool,
}

/// What the two halves of one response share.
struct Slot {
    body: Mutex<Option<Incoming>>,
    born: Instant,
    /// Milliseconds after `born` when the client was last handed data, or
    /// [`NOT_HANDED`].
    handed: AtomicU64,
    path: String,
    /// The client's connection, closed with the cut (HTTP/1.x).
    close: Option<CloseConnection>,
}

impl Slot {
    /// When the slot counts as stalled if its client takes nothing more;
    /// None while it waits on the upstream (or has ended).
    fn deadline(&self, limit: Duration) -> Option<Instant> {
        let handed = self.handed.load(Ordering::Acquire);
        (handed != NOT_HANDED).then(|| self.born + Duration::from_millis(handed) + limit)
    }

    #[cfg(test)]
    fn stalled(&self, now: Instant, limit: Duration) -> bool {
        self.deadline(limit).is_some_and(|d| now > d)
    }

    fn mark(&self, handed: u64) {
        self.handed.store(handed, Ordering::Release);
    }
}

impl Stalls {
    /// `cut` counts the streams cut (`node_yurthub_proxy_stalled_clients_cut_total`).
    pub fn new(limit: Duration, cut: Counter) -> Arc<Stalls> {
        Arc::new(Stalls {
            state: Mutex::default(),
            limit,
            cut,
        })
    }

    /// Splits `body` into its upstream half (to wrap first) and a handle
    /// that wraps the outermost body; a cut also closes `close`'s
    /// connection. Must run inside the runtime.
    pub fn guard(
        self: &Arc<Self>,
        body: Incoming,
        path: &str,
        close: Option<CloseConnection>,
    ) -> (Upstream, Guard) {
        let slot = Arc::new(Slot {
            body: Mutex::new(Some(body)),
            born: Instant::now(),
            handed: AtomicU64::new(0),
            path: path.to_owned(),
            close,
        });
        let start = {
            let mut st = lock(&self.state);
            st.slots.push(Arc::downgrade(&slot));
            !std::mem::replace(&mut st.sweeping, true)
        };
        if start {
            tokio::spawn(self.clone().sweep());
        }
        (Upstream(slot.clone()), Guard(slot))
    }

    /// Wakes at the earliest deadline, at most once per [`SWEEP`]: a slot
    /// not handed data now cannot stall before `now + limit`, so a node
    /// whose guarded bodies are all quiet watches wakes once per limit.
    async fn sweep(self: Arc<Self>) {
        let mut wake = Instant::now() + self.limit;
        loop {
            tokio::time::sleep_until(wake.into()).await;
            let now = Instant::now();
            let mut next = now + self.limit;
            let mut stalled = Vec::new();
            {
                let mut st = lock(&self.state);
                st.slots.retain(|w| {
                    let Some(s) = w.upgrade() else {
                        return false;
                    };
                    match s.deadline(self.limit) {
                        Some(d) if now > d => {
                            stalled.push(s);
                            false
                        }
                        Some(d) => {
                            next = next.min(d);
                            true
                        }
                        None => true,
                    }
                });
                if st.slots.is_empty() && stalled.is_empty() {
                    st.sweeping = false;
                    return;
                }
            }
            wake = next.max(now + SWEEP);
            for slot in stalled {
                // A body that already ended holds no credit: left alone.
                // Dropped outside the slot's lock: dropping resets the stream.
                let body = {
                    let mut b = lock(&slot.body);
                    if b.as_ref().is_some_and(|b| !b.is_end_stream()) {
                        // The client's connection goes too: hyper would
                        // never write to it again. Closed before the body
                        // is taken, so that the connection, seeing the cut
                        // body's error, knows it was cut.
                        if let Some(close) = &slot.close {
                            close.close();
                        }
                        b.take()
                    } else {
                        None
                    }
                };
                if body.is_some() {
                    self.cut.inc();
                    tracing::warn!(
                        path = %slot.path,
                        limit = ?self.limit,
                        "the client took nothing of its response for too long; cutting its upstream stream"
                    );
                }
                drop(body);
            }
        }
    }
}

/// The upstream half: hyper's body until it is cut.
pub struct Upstream(Arc<Slot>);

impl HttpBody for Upstream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut body = lock(&self.0.body);
        match body.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            None => Poll::Ready(Some(Err(
                "the client stopped reading; its upstream stream was cut".into(),
            ))),
        }
    }

    fn is_end_stream(&self) -> bool {
        lock(&self.0.body)
            .as_ref()
            .is_some_and(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        lock(&self.0.body)
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_default()
    }
}

/// Wraps the outermost body of a guarded response.
pub struct Guard(Arc<Slot>);

impl Guard {
    pub fn watch(self, body: crate::Body) -> Watched {
        Watched {
            inner: body,
            slot: self.0,
        }
    }
}

/// The client's half: records when the client was handed data.
pub struct Watched {
    inner: crate::Body,
    slot: Arc<Slot>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let handed = match &polled {
            Poll::Ready(Some(Ok(_))) => self.slot.born.elapsed().as_millis() as u64,
            _ => NOT_HANDED,
        };
        self.slot.mark(handed);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(len: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(len) = len {
            h.insert(http::header::CONTENT_LENGTH, len.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_bodies_that_can_hold_credit_are_guarded() {
        assert!(worth_guarding(&headers(None)), "chunked: a list or a watch");
        assert!(worth_guarding(&headers(Some("65536"))));
        assert!(!worth_guarding(&headers(Some("1812"))), "an object GET");
        assert!(
            worth_guarding(&headers(Some("many"))),
            "unreadable: guarded"
        );
    }

    #[test]
    fn a_body_is_stalled_only_when_handed_data_and_left_past_the_limit() {
        let limit = Duration::from_secs(10);
        let slot = Slot {
            body: Mutex::new(None),
            born: Instant::now(),
            handed: AtomicU64::new(0),
            path: String::new(),
            close: None,
        };
        let at = |s: u64| slot.born + Duration::from_secs(s);
        assert!(!slot.stalled(at(9), limit));
        assert!(slot.stalled(at(11), limit), "never polled since its birth");
        slot.mark(5_000);
        assert!(!slot.stalled(at(11), limit), "handed data 6 s ago");
        assert!(slot.stalled(at(16), limit));
        slot.mark(NOT_HANDED);
        assert!(
            !slot.stalled(at(3600), limit),
            "waiting on the upstream (a quiet watch), or ended"
        );
    }
}

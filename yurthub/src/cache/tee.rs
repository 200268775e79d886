//! The response tees: the client's body passes through untouched and at
//! proxy speed while the cache gets a copy. The client stream is never
//! blocked or broken by caching (upstream #2792).
//!
//! - [`Tee`], for streams (watches, whole lists): a copy of each chunk is
//!   offered through a bounded channel to a consuming task. The offer never
//!   waits: when the cache falls behind (or its consumer is gone) the tee
//!   stops copying and the consumer, seeing the channel end without
//!   [`Chunk::End`], gives up on that response.
//! - [`Gathered`], for a response kept whole (an object, a page, a
//!   document): the copy is gathered in the client's own poll and handed
//!   over when the body ends complete; no task, no channel.
//!
//! What the copies hold in memory at once, across all responses, is bounded
//! by a [`CopyBudget`]: a copy that would cross it is dropped (the response
//! is not cached, the skip is counted) instead of growing the heap by a
//! burst of large lists.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::mpsc;

use crate::BoxError;

/// What the consumer receives.
#[derive(Debug)]
pub enum Chunk {
    Data(Bytes),
    /// The upstream body ended normally: the copy is complete.
    End,
}

/// Chunks that may wait for the consumer before the tee gives up.
pub const CHANNEL_CHUNKS: usize = 1024;

/// A byte budget shared by every teed copy held in memory (collected bodies
/// and what is derived from them until the store has them). Reservations
/// never wait: a copy that does not fit is skipped and counted.
#[derive(Clone, Debug)]
pub struct CopyBudget {
    inner: Arc<BudgetInner>,
}

#[derive(Debug)]
struct BudgetInner {
    limit: usize,
    in_use: AtomicUsize,
    skipped: AtomicU64,
}

/// Bytes held against a [`CopyBudget`]; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: CopyBudget,
    bytes: usize,
}

impl CopyBudget {
    pub fn new(limit: usize) -> CopyBudget {
        CopyBudget {
            inner: Arc::new(BudgetInner {
                limit,
                in_use: AtomicUsize::new(0),
                skipped: AtomicU64::new(0),
            }),
        }
    }

    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    /// Bytes reserved right now.
    pub fn in_use(&self) -> usize {
        self.inner.in_use.load(Ordering::Relaxed)
    }

    /// Copies skipped because they did not fit, since start.
    pub fn skipped(&self) -> u64 {
        self.inner.skipped.load(Ordering::Relaxed)
    }

    pub fn count_skip(&self) {
        self.inner.skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// An empty reservation to grow.
    pub fn reservation(&self) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes: 0,
        }
    }

    /// Takes `bytes` more if they fit. One copy alone may exceed the limit
    /// when it holds the only reservation (a single large list is still
    /// cached while nothing else is held); `held` is what the caller
    /// already holds.
    fn take(&self, held: usize, bytes: usize) -> bool {
        let limit = self.inner.limit;
        self.inner
            .in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let new = used.checked_add(bytes)?;
                (new <= limit || used == held).then_some(new)
            })
            .is_ok()
    }
}

impl Reservation {
    /// Grows the reservation by `bytes`; false (and unchanged) when that
    /// would cross the budget.
    pub fn grow(&mut self, bytes: usize) -> bool {
        if !self.budget.take(self.bytes, bytes) {
            return false;
        }
        self.bytes += bytes;
        true
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget
            .inner
            .in_use
            .fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Why a whole copy was given up.
#[derive(Debug, PartialEq, Eq)]
pub enum GatherError {
    /// Past the largest body the cache keeps.
    TooLarge,
    /// It would cross the copy budget (counted as a skip).
    OverBudget,
}

/// A response copy gathered whole, held against the budget as it grows.
/// One chunk (the usual small object) is kept without a copy; a body of a
/// known size in several chunks takes one allocation.
#[derive(Debug)]
pub struct Gather {
    held: Reservation,
    max: usize,
    exact: Option<usize>,
    buf: Option<BytesMut>,
    chunks: Vec<Bytes>,
    total: usize,
}

impl Gather {
    /// Starts a copy of a body of `size_hint` bytes, if known, reserving it
    /// at once.
    pub fn new(
        budget: &CopyBudget,
        size_hint: Option<u64>,
        max: usize,
    ) -> Result<Gather, GatherError> {
        let exact = size_hint
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| *n > 0 && *n <= max);
        let mut held = budget.reservation();
        if let Some(n) = exact
            && !held.grow(n)
        {
            return Err(over_budget(budget, n));
        }
        Ok(Gather {
            held,
            max,
            exact,
            buf: None,
            chunks: Vec::new(),
            total: 0,
        })
    }

    pub fn push(&mut self, d: Bytes) -> Result<(), GatherError> {
        self.total += d.len();
        if self.total > self.max {
            return Err(GatherError::TooLarge);
        }
        let more = self.total.saturating_sub(self.held.bytes());
        if more > 0 && !self.held.grow(more) {
            return Err(over_budget(&self.held.budget, self.total));
        }
        match (self.buf.as_mut(), self.exact) {
            (Some(b), _) => b.extend_from_slice(&d),
            (None, Some(n)) if self.chunks.is_empty() && d.len() < n => {
                let mut b = BytesMut::with_capacity(n);
                b.extend_from_slice(&d);
                self.buf = Some(b);
            }
            _ => self.chunks.push(d),
        }
        Ok(())
    }

    /// The whole body and what it holds of the budget.
    pub fn finish(mut self) -> (Bytes, Reservation) {
        let body = match (self.buf.take(), self.chunks.len()) {
            (Some(b), _) => b.freeze(),
            (None, 1) => self.chunks.pop().unwrap_or_default(),
            (None, _) => {
                let mut b = BytesMut::with_capacity(self.total);
                for c in self.chunks.drain(..) {
                    b.extend_from_slice(&c);
                }
                b.freeze()
            }
        };
        (body, self.held)
    }
}

fn over_budget(budget: &CopyBudget, bytes: usize) -> GatherError {
    budget.count_skip();
    tracing::debug!(bytes, "response copy over the memory budget; not cached");
    GatherError::OverBudget
}

pin_project_lite::pin_project! {
    /// The tee for a response kept whole (an object, a page, a document):
    /// the copy is gathered in the client's own poll, and `done` gets it
    /// when the body ends complete. No task and no channel per response;
    /// `done` decides whether anything needs the store.
    pub struct Gathered<B, F> {
        #[pin]
        inner: B,
        copy: Option<(Gather, F)>,
    }
}

impl<B, F> Gathered<B, F> {
    pub fn new(inner: B, copy: Gather, done: F) -> Gathered<B, F> {
        Gathered {
            inner,
            copy: Some((copy, done)),
        }
    }
}

/// The body ended complete: `done` gets the whole copy (once).
fn hand_over<F: FnOnce(Bytes, Reservation)>(copy: &mut Option<(Gather, F)>) {
    if let Some((copy, done)) = copy.take() {
        let (body, held) = copy.finish();
        done(body, held);
    }
}

impl<B, F> HttpBody for Gathered<B, F>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
    F: FnOnce(Bytes, Reservation),
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some((copy, _))) = (frame.data_ref(), this.copy.as_mut())
                    && copy.push(data.clone()).is_err()
                {
                    *this.copy = None;
                }
                // A sized body is not polled again once it reports its end.
                if this.inner.is_end_stream() {
                    hand_over(this.copy);
                }
            }
            Poll::Ready(Some(Err(_))) => *this.copy = None,
            Poll::Ready(None) => hand_over(this.copy),
            Poll::Pending => {}
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    pub struct Tee<B> {
        #[pin]
        inner: B,
        tx: Option<mpsc::Sender<Chunk>>,
    }
}

impl<B> Tee<B> {
    pub fn new(inner: B) -> (Tee<B>, mpsc::Receiver<Chunk>) {
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        (
            Tee {
                inner,
                tx: Some(tx),
            },
            rx,
        )
    }
}

impl<B> HttpBody for Tee<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(tx)) = (frame.data_ref(), this.tx.as_ref())
                    && tx.try_send(Chunk::Data(data.clone())).is_err()
                {
                    // Behind or gone: stop copying; the consumer sees no End.
                    *this.tx = None;
                }
                // A sized body is not polled again once it reports its end.
                if this.inner.is_end_stream()
                    && let Some(tx) = this.tx.take()
                {
                    let _ = tx.try_send(Chunk::End);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                *this.tx = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                if let Some(tx) = this.tx.take() {
                    let _ = tx.try_send(Chunk::End);
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    fn chunks(n: usize) -> impl HttpBody<Data = Bytes, Error = BoxError> {
        StreamBody::new(futures_util::stream::iter(
            (0..n).map(|i| Ok::<_, BoxError>(Frame::data(Bytes::from(format!("{i};"))))),
        ))
    }

    #[test]
    fn the_budget_bounds_what_copies_hold_at_once() {
        let budget = CopyBudget::new(100);
        let mut a = budget.reservation();
        assert!(a.grow(60));
        let mut b = budget.reservation();
        assert!(b.grow(40));
        assert!(!b.grow(1), "over the budget");
        assert_eq!(b.bytes(), 40, "a refused growth takes nothing");
        drop(a);
        assert_eq!(budget.in_use(), 40);
        assert!(b.grow(60));
        drop(b);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn one_copy_alone_may_exceed_the_budget() {
        let budget = CopyBudget::new(100);
        let mut big = budget.reservation();
        assert!(big.grow(80));
        assert!(big.grow(80), "the only holder may go past the limit");
        let mut other = budget.reservation();
        assert!(!other.grow(1), "nothing else fits while it is held");
        drop(big);
        assert!(other.grow(100));
    }

    #[tokio::test]
    async fn complete_copy_ends_with_end() {
        let (tee, mut rx) = Tee::new(chunks(3));
        let out = tee.collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], b"0;1;2;");
        let mut got = Vec::new();
        while let Some(c) = rx.recv().await {
            got.push(c);
        }
        assert!(matches!(got.last(), Some(Chunk::End)), "{got:?}");
        assert_eq!(got.len(), 4);
    }

    #[tokio::test]
    async fn a_sized_body_ends_the_copy_without_a_final_poll() {
        let (mut tee, mut rx) = Tee::new(http_body_util::Full::new(Bytes::from_static(b"abc")));
        let frame = tee.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "abc");
        assert!(tee.is_end_stream());
        drop(tee);
        assert!(matches!(rx.recv().await, Some(Chunk::Data(_))));
        assert!(matches!(rx.recv().await, Some(Chunk::End)));
    }

    #[tokio::test]
    async fn a_stalled_consumer_never_blocks_the_client() {
        // Nobody reads rx: the client still gets every byte.
        let n = CHANNEL_CHUNKS * 3;
        let (tee, mut rx) = Tee::new(chunks(n));
        let out = tokio::time::timeout(std::time::Duration::from_secs(5), tee.collect())
            .await
            .expect("client stream is not stalled")
            .unwrap()
            .to_bytes();
        assert_eq!(out.iter().filter(|b| **b == b';').count(), n);
        let mut count = 0;
        let mut ended = false;
        while let Some(c) = rx.recv().await {
            count += 1;
            ended |= matches!(c, Chunk::End);
        }
        assert_eq!(count, CHANNEL_CHUNKS);
        assert!(!ended, "an incomplete copy must not look complete");
    }

    fn gathered<B>(
        body: B,
        budget: &CopyBudget,
        hint: Option<u64>,
    ) -> (
        impl HttpBody<Data = Bytes, Error = BoxError> + use<B>,
        std::sync::mpsc::Receiver<Bytes>,
    )
    where
        B: HttpBody<Data = Bytes, Error = BoxError>,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        let copy = Gather::new(budget, hint, 1 << 20).expect("fits");
        let body = Gathered::new(body, copy, move |b: Bytes, _held: Reservation| {
            tx.send(b).unwrap()
        });
        (body, rx)
    }

    #[tokio::test]
    async fn a_gathered_copy_is_the_whole_body_once_it_ends() {
        let budget = CopyBudget::new(100);
        let (body, rx) = gathered(chunks(3), &budget, None);
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], b"0;1;2;");
        assert_eq!(&rx.try_recv().expect("copy handed over")[..], b"0;1;2;");
        assert_eq!(budget.in_use(), 0, "released with the reservation");
    }

    #[tokio::test]
    async fn a_sized_body_hands_its_copy_over_without_a_final_poll() {
        let budget = CopyBudget::new(100);
        let (mut body, rx) = gathered(
            http_body_util::Full::new(Bytes::from_static(b"abc")).map_err(|e| match e {}),
            &budget,
            Some(3),
        );
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "abc");
        assert_eq!(&rx.try_recv().expect("copy handed over")[..], b"abc");
    }

    #[tokio::test]
    async fn a_body_cut_short_or_over_the_budget_hands_over_nothing() {
        let budget = CopyBudget::new(4);
        let mut other = budget.reservation();
        assert!(other.grow(1), "another copy is held");
        let broken = StreamBody::new(futures_util::stream::iter([
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Err::<Frame<Bytes>, BoxError>("reset".into()),
        ]));
        let (body, rx) = gathered(broken, &budget, None);
        assert!(body.collect().await.is_err());
        assert!(rx.try_recv().is_err(), "an incomplete copy is dropped");
        let (body, rx) = gathered(chunks(5), &budget, None);
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(out.len(), 10, "the client still gets every byte");
        assert!(rx.try_recv().is_err(), "over the budget: not cached");
        assert_eq!(budget.skipped(), 1);
        assert_eq!(budget.in_use(), 1, "the skipped copy holds nothing");
        assert_eq!(
            Gather::new(&budget, Some(5), 1 << 20).err(),
            Some(GatherError::OverBudget),
            "a known size is refused up front"
        );
        let mut big = Gather::new(&budget, None, 3).unwrap();
        assert_eq!(
            big.push(Bytes::from_static(b"abcd")),
            Err(GatherError::TooLarge)
        );
    }

    #[test]
    fn a_copy_of_a_known_size_is_reserved_once_and_held_until_dropped() {
        let budget = CopyBudget::new(100);
        let mut copy = Gather::new(&budget, Some(60), 1 << 20).unwrap();
        assert_eq!(budget.in_use(), 60, "reserved up front");
        copy.push(Bytes::from(vec![1u8; 30])).unwrap();
        copy.push(Bytes::from(vec![2u8; 30])).unwrap();
        let (body, held) = copy.finish();
        assert_eq!(body.len(), 60);
        assert_eq!((body[0], body[59]), (1, 2));
        assert_eq!(budget.in_use(), 60, "held while the store takes it");
        drop(held);
        assert_eq!(budget.in_use(), 0);
        assert_eq!(budget.skipped(), 0);
    }
}

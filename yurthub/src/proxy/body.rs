//! The response body wrapper for proxied streams: counts bytes for
//! `node_yurthub_proxy_traffic_collector`, keeps the in-flight gauges up while
//! the stream lives (a watch is in flight for its whole life), and ends the
//! stream when its backend turns unhealthy or the hub shuts down, so clients
//! re-list elsewhere instead of waiting on a dead stream (upstream #2792).
//! A stop between watch events is a clean end; a stop inside a frame (half
//! an event, or any part of a list or object) is an error, so a client never
//! takes a truncated body for a whole one.
//!
//! Every upstream wait is bounded ([`IdleBounds`], [`header_bound`]):
//! - response headers: the client's `timeout=` for non-long-running
//!   requests, else the apiserver's default [`REQUEST_TIMEOUT`] (60 s);
//!   long-running ones (watch, exec, logs…) get 60 s too;
//! - a watch that asked for bookmarks and receives no bytes for
//!   `--watch-idle-timeout` is ended cleanly (no bytes means no events and
//!   no bookmarks: the apiserver sends one about every 60 s, so the default
//!   130 s is two missed bookmarks and slack); a watch without bookmarks is
//!   bounded by its `timeoutSeconds` plus 30 s;
//! - once a frame started (a watch event half sent, or any non-watch body),
//!   no bytes for a quarter of that bound (1–30 s) cuts the stream with an
//!   error: half a frame is never delivered as a clean end;
//! - a stream ended this way asks for a re-probe of its backend.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::BoxError;
use crate::metrics::UntypedCounter;
use crate::remote::transport::StreamSlot;

/// Decrements the in-flight gauges when dropped.
pub struct InFlight {
    per_request: Gauge,
    total: Gauge,
    /// The upstream stream's place on its connection, given back when the
    /// response ends or its client goes.
    _lane: Option<StreamSlot>,
}

impl InFlight {
    pub fn new(per_request: Gauge, total: Gauge, lane: Option<StreamSlot>) -> InFlight {
        per_request.inc();
        total.inc();
        InFlight {
            per_request,
            total,
            _lane: lane,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.per_request.dec();
        self.total.dec();
    }
}

pin_project_lite::pin_project! {
    /// A body that holds something (a place in a bound) while it lives.
    pub struct Holding<B, T> {
        #[pin]
        inner: B,
        held: T,
    }
}

impl<B, T> Holding<B, T> {
    pub fn new(inner: B, held: T) -> Self {
        Holding { inner, held }
    }
}

impl<B: HttpBody, T> HttpBody for Holding<B, T> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    pub struct Proxied<B, S> {
        #[pin]
        inner: B,
        // Taken when the stream first waits for data: a response that
        // arrives whole never touches the tokens (cloning one takes locks
        // that every request in flight would otherwise contend on).
        stop_source: Option<S>,
        stops: Vec<Pin<Box<WaitForCancellationFutureOwned>>>,
        traffic: UntypedCounter,
        _in_flight: InFlight,
        idle: Option<Idle>,
    }
}

/// How long a request waits for the cloud's health at start before a 503.
pub const UNKNOWN_HEALTH_WAIT: Duration = Duration::from_secs(1);

/// 503 with Retry-After while no probe has answered yet: never an answer
/// from a cache that may be empty while the cloud is up.
pub fn health_unknown() -> http::Response<crate::Body> {
    let mut r = super::status::service_unavailable(
        "yurthub has not yet heard from the apiserver; retry shortly",
    );
    r.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    r
}

/// The apiserver's Status for a request that timed out.
pub fn gateway_timeout(after: Duration) -> http::Response<crate::Body> {
    super::status::status_with_details(
        http::StatusCode::GATEWAY_TIMEOUT,
        "Timeout",
        format!(
            "the server was unable to return a response in the time allotted ({after:?}), but may still be processing the request"
        ),
        None,
    )
}

/// The apiserver's default request timeout (`--request-timeout`).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long response headers may take: the client's `timeout=` (at most
/// 60 s) for a non-long-running request, 60 s otherwise.
pub fn header_bound(info: &super::RequestInfo) -> Duration {
    if is_long_running(info) {
        return REQUEST_TIMEOUT;
    }
    info.query
        .timeout
        .filter(|d| !d.is_zero())
        .map_or(REQUEST_TIMEOUT, |d| d.min(REQUEST_TIMEOUT))
}

/// The apiserver's long-running request check (verbs and subresources).
pub fn is_long_running(info: &super::RequestInfo) -> bool {
    matches!(info.verb.as_str(), "watch" | "proxy")
        || matches!(
            info.subresource.as_str(),
            "attach" | "exec" | "proxy" | "log" | "portforward"
        )
}

/// How a body divides into frames, to tell a pause between events from a
/// stall inside one.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// JSON watch: one event per line.
    Lines { mid: bool },
    /// Protobuf watch: 4-byte big-endian length, then the frame.
    LengthPrefixed {
        header: [u8; 4],
        have: usize,
        remaining: usize,
    },
    /// Not a watch: the whole body is one frame.
    Whole,
    /// Compressed: frames cannot be seen; only the idle bound applies.
    Unknown,
}

impl Framing {
    fn mid(&self) -> bool {
        match self {
            Framing::Lines { mid } => *mid,
            Framing::LengthPrefixed {
                have, remaining, ..
            } => *have > 0 || *remaining > 0,
            Framing::Whole => true,
            Framing::Unknown => false,
        }
    }

    fn push(&mut self, data: &[u8]) {
        match self {
            Framing::Lines { mid } => {
                if let Some(last) = data.last() {
                    *mid = *last != b'\n';
                }
            }
            Framing::LengthPrefixed {
                header,
                have,
                remaining,
            } => {
                let mut d = data;
                while !d.is_empty() {
                    if *remaining > 0 {
                        let n = (*remaining).min(d.len());
                        *remaining -= n;
                        d = &d[n..];
                        continue;
                    }
                    header[*have] = d[0];
                    *have += 1;
                    d = &d[1..];
                    if *have == 4 {
                        *remaining = u32::from_be_bytes(*header) as usize;
                        *have = 0;
                    }
                }
            }
            Framing::Whole | Framing::Unknown => {}
        }
    }
}

/// The bounds of one proxied response.
#[derive(Debug, Clone, Copy)]
pub struct IdleBounds {
    between_frames: Option<Duration>,
    mid_frame: Option<Duration>,
    framing: Framing,
}

impl IdleBounds {
    /// For a response to `info` with the response `headers`; see the module
    /// docs for the rules.
    pub fn for_response(
        info: &super::RequestInfo,
        headers: &http::HeaderMap,
        watch_idle: Duration,
    ) -> Option<IdleBounds> {
        let mid = (watch_idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
        if info.verb != "watch" {
            if is_long_running(info) {
                // Logs and proxied streams may pause legitimately.
                return None;
            }
            return Some(IdleBounds {
                between_frames: None,
                mid_frame: Some(mid),
                framing: Framing::Whole,
            });
        }
        let q = &info.query;
        let between = if q.allow_watch_bookmarks {
            Some(watch_idle)
        } else {
            q.timeout_seconds
                .map(|s| Duration::from_secs(s) + Duration::from_secs(30))
        };
        let encoded = headers.contains_key(http::header::CONTENT_ENCODING);
        let protobuf = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("protobuf"));
        let framing = if encoded {
            Framing::Unknown
        } else if protobuf {
            Framing::LengthPrefixed {
                header: [0; 4],
                have: 0,
                remaining: 0,
            }
        } else {
            Framing::Lines { mid: false }
        };
        Some(IdleBounds {
            between_frames: between,
            mid_frame: Some(mid),
            framing,
        })
    }

    fn current(&self) -> Option<Duration> {
        if self.framing.mid() {
            self.mid_frame
        } else {
            self.between_frames
        }
    }
}

struct Idle {
    bounds: IdleBounds,
    last: Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    on_stall: Option<Box<dyn FnOnce() + Send>>,
}

impl<B, S> Proxied<B, S> {
    /// Ends the stream when the upstream stalls past `bounds`; `on_stall`
    /// runs once when it does (a re-probe of the backend).
    pub fn with_idle(
        mut self,
        bounds: Option<IdleBounds>,
        on_stall: impl FnOnce() + Send + 'static,
    ) -> Self {
        self.idle = bounds.map(|bounds| Idle {
            bounds,
            last: Instant::now(),
            timer: None,
            on_stall: Some(Box::new(on_stall)),
        });
        self
    }
}

impl<B, S> Proxied<B, S>
where
    S: FnOnce() -> Vec<CancellationToken>,
{
    /// `stop_source`: the tokens whose cancellation ends the stream cleanly.
    pub fn new(
        inner: B,
        stop_source: S,
        traffic: UntypedCounter,
        in_flight: InFlight,
    ) -> Proxied<B, S> {
        Proxied {
            inner,
            stop_source: Some(stop_source),
            stops: Vec::new(),
            traffic,
            _in_flight: in_flight,
            idle: None,
        }
    }
}

impl<B, S> HttpBody for Proxied<B, S>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
    S: FnOnce() -> Vec<CancellationToken>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let stopped = |stops: &mut Vec<Pin<Box<WaitForCancellationFutureOwned>>>,
                       cx: &mut Context<'_>| {
            stops.iter_mut().any(|s| s.as_mut().poll(cx).is_ready())
        };
        if stopped(this.stops, cx) {
            return stop(this.idle);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.traffic.inc_by(data.len() as u64);
                    if let Some(idle) = this.idle.as_mut() {
                        idle.bounds.framing.push(data);
                        idle.last = Instant::now();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if let Some(idle) = this.idle.as_mut()
                    && let Some(bound) = idle.bounds.current()
                {
                    let deadline = tokio::time::Instant::from_std(idle.last + bound);
                    let timer = idle
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if timer.deadline() != deadline {
                        timer.as_mut().reset(deadline);
                    }
                    if timer.as_mut().poll(cx).is_ready() {
                        let mid = idle.bounds.framing.mid();
                        tracing::warn!(
                            ?bound,
                            mid_frame = mid,
                            "upstream stream stalled; ending it"
                        );
                        if let Some(f) = idle.on_stall.take() {
                            f();
                        }
                        *this.idle = None;
                        return Poll::Ready(if mid {
                            Some(Err("the upstream stalled in the middle of a frame".into()))
                        } else {
                            None
                        });
                    }
                }
                if let Some(source) = this.stop_source.take() {
                    *this.stops = source()
                        .into_iter()
                        .map(|t| Box::pin(t.cancelled_owned()))
                        .collect();
                    // Registers the waker; a stop that already happened ends
                    // the stream now.
                    if stopped(this.stops, cx) {
                        return stop(this.idle);
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How a stopped stream ends: cleanly between frames, with an error inside
/// one (a body without frame bounds counts as between frames).
fn stop(idle: &Option<Idle>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    if idle.as_ref().is_some_and(|i| i.bounds.framing.mid()) {
        tracing::warn!("proxied stream stopped in the middle of a frame; ending it with an error");
        Poll::Ready(Some(Err(
            "the stream was stopped in the middle of a frame".into()
        )))
    } else {
        Poll::Ready(None)
    }
}

pin_project_lite::pin_project! {
    /// A request body capped at `limit` bytes. Going over sets `exceeded`, so
    /// the proxy can answer 413 whatever error the upstream client reports
    /// (HTTP/2 does not carry the body's error as a source).
    pub struct Capped<B> {
        #[pin]
        inner: B,
        remaining: u64,
        exceeded: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }
}

impl<B> Capped<B> {
    pub fn new(inner: B, limit: u64) -> (Capped<B>, std::sync::Arc<std::sync::atomic::AtomicBool>) {
        let exceeded = std::sync::Arc::default();
        (
            Capped {
                inner,
                remaining: limit,
                exceeded: std::sync::Arc::clone(&exceeded),
            },
            exceeded,
        )
    }
}

impl<B> HttpBody for Capped<B>
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
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > *this.remaining {
                        this.exceeded
                            .store(true, std::sync::atomic::Ordering::Release);
                        return Poll::Ready(Some(Err("request body over the limit".into())));
                    }
                    *this.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other.map(|o| o.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Decompresses a gzip-encoded body as it streams. The hub asks the cloud
/// for gzip (edge links are where bytes cost) but must see plain bytes to
/// filter and cache; the node-local hop to the client is uncompressed.
pub fn gunzip(body: crate::Body) -> crate::Body {
    use futures_util::TryStreamExt;
    use http_body_util::BodyExt;
    let bytes = http_body_util::BodyDataStream::new(body).map_err(std::io::Error::other);
    let reader = tokio_util::io::StreamReader::new(bytes);
    let decoder = async_compression::tokio::bufread::GzipDecoder::new(reader);
    let stream = tokio_util::io::ReaderStream::new(decoder)
        .map_ok(Frame::data)
        .map_err(|e| -> BoxError { Box::new(e) });
    http_body_util::StreamBody::new(stream).boxed_unsync()
}

/// Bodies from this size on are mapped as a heavy step.
const HEAVY_BODY: usize = 256 << 10;

/// A body produced by running `f` over the whole of `body` once it has
/// arrived (get/list filtering needs the complete object or list).
pub fn map_whole<F>(body: crate::Body, f: F) -> crate::Body
where
    F: FnOnce(Bytes) -> Bytes + Send + 'static,
{
    use http_body_util::BodyExt;
    let fut = async move {
        body.collect().await.map(|c| {
            let whole = c.to_bytes();
            // A large list's filter computes for milliseconds: off the
            // event loop's other clients (`runtime::heavy`).
            let mapped = if whole.len() >= HEAVY_BODY {
                crate::runtime::heavy(|| f(whole))
            } else {
                f(whole)
            };
            Frame::data(mapped)
        })
    };
    http_body_util::StreamBody::new(futures_util::stream::once(fut)).boxed_unsync()
}

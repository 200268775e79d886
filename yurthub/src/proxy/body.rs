//! The response body wrapper for proxied streams: counts bytes for
//! `node_yurthub_proxy_traffic_collector`, keeps the in-flight gauges up while
//! the stream lives (a watch is in flight for its whole life), and ends the
//! stream when its backend turns unhealthy or the hub shuts down, so clients
//! re-list elsewhere instead of waiting on a dead stream (upstream #2792).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::BoxError;
use crate::metrics::UntypedCounter;

/// Decrements the in-flight gauges when dropped.
pub struct InFlight {
    per_request: Gauge,
    total: Gauge,
}

impl InFlight {
    pub fn new(per_request: Gauge, total: Gauge) -> InFlight {
        per_request.inc();
        total.inc();
        InFlight { per_request, total }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.per_request.dec();
        self.total.dec();
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
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.traffic.inc_by(data.len() as u64);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if let Some(source) = this.stop_source.take() {
                    *this.stops = source()
                        .into_iter()
                        .map(|t| Box::pin(t.cancelled_owned()))
                        .collect();
                    // Registers the waker; a stop that already happened ends
                    // the stream now.
                    if stopped(this.stops, cx) {
                        return Poll::Ready(None);
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

/// A body produced by running `f` over the whole of `body` once it has
/// arrived (get/list filtering needs the complete object or list).
pub fn map_whole<F>(body: crate::Body, f: F) -> crate::Body
where
    F: FnOnce(Bytes) -> Bytes + Send + 'static,
{
    use http_body_util::BodyExt;
    let fut = async move { body.collect().await.map(|c| Frame::data(f(c.to_bytes()))) };
    http_body_util::StreamBody::new(futures_util::stream::once(fut)).boxed_unsync()
}

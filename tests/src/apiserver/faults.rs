//! Fault injection for proxy tests: matching requests get garbage bytes, a
//! response cut mid-body, a delay, an error Status, or no answer at all.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};

use super::lock;
use super::response::{Body, BoxError};

/// What happens to a matching request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Non-HTTP bytes are written instead of the response, then the
    /// connection is closed.
    Garbage,
    /// The response starts normally but the connection (h1) or stream (h2)
    /// is aborted after this many body bytes.
    CloseMidStream { after_bytes: usize },
    /// The response starts normally, sends this many body bytes (half a
    /// watch frame, say) and then nothing more, the connection kept open:
    /// an upstream that stalls.
    StallMidStream { after_bytes: usize },
    /// The whole response is sent, but `chunk` body bytes per `every`: a
    /// slow link, where a large list takes seconds while bytes keep flowing.
    Trickle { chunk: usize, every: Duration },
    /// The request is handled normally after this delay.
    Delay(Duration),
    /// The request is answered with a Status of this HTTP code.
    Status(u16),
    /// The request is never answered.
    Hang,
}

/// A fault rule. `method` None matches any method; `times` None means forever.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub method: Option<String>,
    pub path_prefix: String,
    pub kind: FaultKind,
    pub times: Option<usize>,
}

impl Fault {
    /// A fault for every request whose path starts with `path_prefix`.
    pub fn new(path_prefix: &str, kind: FaultKind) -> Self {
        Self {
            method: None,
            path_prefix: path_prefix.to_owned(),
            kind,
            times: None,
        }
    }

    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    pub fn times(mut self, times: usize) -> Self {
        self.times = Some(times);
        self
    }
}

/// Active fault rules.
#[derive(Debug, Default)]
pub struct FaultSet {
    rules: Mutex<Vec<Fault>>,
}

impl FaultSet {
    pub fn add(&self, fault: Fault) {
        lock(&self.rules).push(fault);
    }

    pub fn clear(&self) {
        lock(&self.rules).clear();
    }

    /// The first matching rule's kind, consuming one of its uses.
    pub fn take(&self, method: &str, path: &str) -> Option<FaultKind> {
        let mut rules = lock(&self.rules);
        let idx = rules.iter().position(|f| {
            f.method.as_deref().is_none_or(|m| m == method) && path.starts_with(&f.path_prefix)
        })?;
        let kind = rules[idx].kind.clone();
        if let Some(times) = rules[idx].times.as_mut() {
            *times = times.saturating_sub(1);
            if *times == 0 {
                rules.remove(idx);
            }
        }
        Some(kind)
    }
}

/// Bytes no HTTP client can parse as a response.
pub fn garbage() -> Vec<u8> {
    b"\x00\xffNOT-HTTP\x16\x03garbage\r\n\x07".to_vec()
}

/// A body that passes through `limit` bytes and then fails, which makes
/// hyper abort the connection (h1) or reset the stream (h2). Before failing
/// it pauses briefly so hyper flushes the headers and the bytes already
/// produced: the client must see a response that starts and then breaks.
pub struct Truncated {
    inner: Body,
    remaining: usize,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    stall: bool,
}

/// How long the cut body waits before failing.
const FLUSH_PAUSE: Duration = Duration::from_millis(100);

impl Truncated {
    pub fn new(inner: Body, limit: usize) -> Self {
        Self {
            inner,
            remaining: limit,
            pause: None,
            stall: false,
        }
    }

    /// Sends `limit` bytes, then stalls forever instead of failing.
    pub fn stalling(inner: Body, limit: usize) -> Self {
        Self {
            stall: true,
            ..Self::new(inner, limit)
        }
    }

    fn cut(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.stall {
            // Never wakes: the stream stays open with nothing more to send.
            return Poll::Pending;
        }
        let pause = self
            .pause
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(FLUSH_PAUSE)));
        match pause.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err("injected mid-stream close".into()))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl HttpBody for Truncated {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining == 0 {
            return self.cut(cx);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) => {
                    if data.len() > self.remaining {
                        data.truncate(self.remaining);
                    }
                    self.remaining -= data.len();
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            Poll::Ready(None) => self.cut(cx),
            other => other,
        }
    }
}

/// A body re-cut into `chunk`-byte frames, one per `every` (see
/// [`FaultKind::Trickle`]).
pub struct Trickle {
    inner: Body,
    pending: Bytes,
    chunk: usize,
    every: Duration,
    tick: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Trickle {
    pub fn new(inner: Body, chunk: usize, every: Duration) -> Self {
        Self {
            inner,
            pending: Bytes::new(),
            chunk: chunk.max(1),
            every,
            tick: None,
        }
    }
}

impl HttpBody for Trickle {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        while this.pending.is_empty() {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.pending = data,
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                other => return other,
            }
        }
        let every = this.every;
        let tick = this
            .tick
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
        if tick.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.tick = None;
        let n = this.chunk.min(this.pending.len());
        Poll::Ready(Some(Ok(Frame::data(this.pending.split_to(n)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_by_method_and_prefix_and_expire() {
        let set = FaultSet::default();
        set.add(
            Fault::new("/api/v1/pods", FaultKind::Status(500))
                .method("get")
                .times(2),
        );
        assert_eq!(set.take("POST", "/api/v1/pods"), None);
        assert_eq!(
            set.take("GET", "/api/v1/pods"),
            Some(FaultKind::Status(500))
        );
        assert_eq!(
            set.take("GET", "/api/v1/pods?x"),
            Some(FaultKind::Status(500))
        );
        assert_eq!(set.take("GET", "/api/v1/pods"), None, "used up");
    }
}

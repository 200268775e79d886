//! Applying a chain of filters to response bodies, in JSON and protobuf:
//! single objects (get, patch, update responses), lists (each item; dropped
//! items removed) and watch streams (per event, incrementally; an event whose
//! object is dropped becomes DELETED carrying the original object so client
//! caches forget it; BOOKMARK and ERROR pass through).
//!
//! Bytes of objects no filter changed are kept exactly; a body or event that
//! cannot be decoded is passed through unchanged and logged.

use std::borrow::Cow;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame};

use super::{FilterInputs, FilterName, Object, ObjectKind, Verdict};
use crate::codec::{self, CodecError, EventType, Format, WatchDecoder, WatchEvent};

/// The outcome of filtering one object body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filtered {
    /// No filter changed it (or none is interested in its kind).
    Unchanged,
    /// The re-encoded object, in the body's format.
    Mutated(Vec<u8>),
    /// A filter removed it.
    Dropped,
}

/// The enabled filters for one request, in registration order, with the
/// inputs they read. Cheap to clone.
#[derive(Clone)]
pub struct FilterChain {
    filters: Vec<FilterName>,
    inputs: Arc<dyn FilterInputs>,
}

impl fmt::Debug for FilterChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FilterChain")
            .field("filters", &self.filters)
            .finish_non_exhaustive()
    }
}

impl FilterChain {
    pub fn new(filters: Vec<FilterName>, inputs: Arc<dyn FilterInputs>) -> FilterChain {
        FilterChain { filters, inputs }
    }

    pub fn filters(&self) -> &[FilterName] {
        &self.filters
    }

    /// Whether some filter of the chain looks at this kind.
    pub fn handles(&self, kind: ObjectKind) -> bool {
        self.filters.iter().any(|f| f.handles(kind))
    }

    /// Whether some filter of the chain could change this object of `kind`,
    /// judged from its encoded bytes without decoding them.
    fn may_change(&self, kind: ObjectKind, raw: &[u8]) -> bool {
        self.filters
            .iter()
            .any(|f| f.handles(kind) && f.may_change(raw))
    }

    /// Runs the chain on one object: filters in order, stopping at the first
    /// that drops it.
    pub fn run(&self, object: &mut Object) -> Verdict {
        let mut verdict = Verdict::Unchanged;
        for filter in &self.filters {
            if !filter.handles(object.kind()) {
                continue;
            }
            match filter.apply(object, self.inputs.as_ref()) {
                Verdict::Drop => return Verdict::Drop,
                Verdict::Mutated => verdict = Verdict::Mutated,
                Verdict::Unchanged => {}
            }
        }
        verdict
    }

    /// Filters a self-describing object body (a JSON object or an enveloped
    /// protobuf object). Objects of kinds no filter handles are not decoded.
    pub fn filter_object(&self, format: Format, body: &[u8]) -> Result<Filtered, CodecError> {
        let info = codec::object_info(format, body)?;
        let Some(kind) = ObjectKind::of(&info.api_version, &info.kind)
            .filter(|k| self.handles(*k) && self.may_change(*k, body))
        else {
            return Ok(Filtered::Unchanged);
        };
        let mut object = Object::decode(kind, format, body)?;
        Ok(match self.run(&mut object) {
            Verdict::Unchanged => Filtered::Unchanged,
            Verdict::Drop => Filtered::Dropped,
            Verdict::Mutated => {
                Filtered::Mutated(object.encode(format, &info.api_version, &info.kind)?)
            }
        })
    }

    /// The body to send for a get (or patch/update) response. As upstream, an
    /// object a filter drops is sent as it was: a single object has no
    /// "absent" form.
    pub fn filter_object_body(&self, format: Format, body: Bytes) -> Bytes {
        match self.filter_object(format, &body) {
            Ok(Filtered::Mutated(new)) => Bytes::from(new),
            Ok(Filtered::Unchanged | Filtered::Dropped) => body,
            Err(error) => {
                self.log_undecodable(&error, "object");
                body
            }
        }
    }

    /// Filters a list body item by item. `Ok(None)`: nothing changed (or no
    /// filter handles the item kind), keep the body. Items that fail to decode
    /// are kept unchanged.
    pub fn filter_list(&self, format: Format, body: &[u8]) -> Result<Option<Vec<u8>>, CodecError> {
        let parts = codec::split_list(format, body)?;
        let item_kind = parts.item_kind();
        let Some(kind) = ObjectKind::of(&parts.api_version, item_kind).filter(|k| self.handles(*k))
        else {
            return Ok(None);
        };
        let mut items: Vec<Cow<'_, [u8]>> = Vec::with_capacity(parts.items.len());
        let mut changed = false;
        for range in &parts.items {
            let raw = &body[range.clone()];
            match self.filter_item(kind, format, &parts.api_version, item_kind, raw) {
                Ok(Filtered::Unchanged) => items.push(Cow::Borrowed(raw)),
                Ok(Filtered::Dropped) => changed = true,
                Ok(Filtered::Mutated(new)) => {
                    items.push(Cow::Owned(new));
                    changed = true;
                }
                Err(error) => {
                    self.log_undecodable(&error, "list item");
                    items.push(Cow::Borrowed(raw));
                }
            }
        }
        if !changed {
            return Ok(None);
        }
        let items: Vec<&[u8]> = items.iter().map(AsRef::as_ref).collect();
        codec::build_list(format, &parts.api_version, &parts.kind, &parts.meta, &items).map(Some)
    }

    /// Filters one list item (as [`codec::split_list`] returns it).
    fn filter_item(
        &self,
        kind: ObjectKind,
        format: Format,
        api_version: &str,
        item_kind: &str,
        raw: &[u8],
    ) -> Result<Filtered, CodecError> {
        if !self.may_change(kind, raw) {
            return Ok(Filtered::Unchanged);
        }
        let mut object = Object::decode_item(kind, format, api_version, item_kind, raw)?;
        Ok(match self.run(&mut object) {
            Verdict::Unchanged => Filtered::Unchanged,
            Verdict::Drop => Filtered::Dropped,
            Verdict::Mutated => {
                Filtered::Mutated(object.encode_item(format, api_version, item_kind)?)
            }
        })
    }

    /// The body to send for a list response.
    pub fn filter_list_body(&self, format: Format, body: Bytes) -> Bytes {
        match self.filter_list(format, &body) {
            Ok(Some(new)) => Bytes::from(new),
            Ok(None) => body,
            // A Status (an error answer) or a Table is no list of objects.
            Err(CodecError::NotAList { .. }) => body,
            Err(error) => {
                self.log_undecodable(&error, "list");
                body
            }
        }
    }

    /// The body to send for a complete response of `verb`: a list, a
    /// watch body read whole (prefer [`FilterChain::watch_body`] for live
    /// watches), or a single object for every other verb.
    pub fn filter_body(&self, verb: &str, format: Format, body: Bytes) -> Bytes {
        match verb {
            "list" => self.filter_list_body(format, body),
            "watch" => {
                let mut filter = self.watch(format);
                let mut out = BytesMut::from(filter.push(&body).as_ref());
                out.extend_from_slice(&filter.finish());
                out.freeze()
            }
            _ => self.filter_object_body(format, body),
        }
    }

    /// An incremental filter for a JSON list body: items are filtered as
    /// they complete, so a list of any size holds one item at a time.
    pub fn json_list(&self) -> ListFilter {
        ListFilter {
            chain: self.clone(),
            stream: codec::ListStream::new(Format::Json, LIST_ITEM_MAX),
            head: Some(BytesMut::new()),
            mode: ListMode::Items,
            kind: None,
            kept: 0,
        }
    }

    /// Wraps a JSON list response body so its items come out filtered as
    /// they stream (the same output as [`FilterChain::filter_list_body`]).
    pub fn json_list_body<B>(&self, body: B) -> FilteredListBody<B> {
        FilteredBody {
            inner: body,
            filter: self.json_list(),
            done: false,
        }
    }

    /// An incremental filter for a watch response body of `format`.
    pub fn watch(&self, format: Format) -> WatchFilter {
        WatchFilter {
            chain: self.clone(),
            format,
            decoder: WatchDecoder::new(format),
            pending: BytesMut::new(),
            passthrough: false,
        }
    }

    /// Wraps a watch response body so its events come out filtered.
    pub fn watch_body<B>(&self, format: Format, body: B) -> FilteredWatchBody<B> {
        FilteredBody {
            inner: body,
            filter: self.watch(format),
            done: false,
        }
    }

    fn log_undecodable(&self, error: &CodecError, what: &str) {
        tracing::warn!(
            %error,
            filters = ?self.filters,
            "response {what} passed through unfiltered: it does not decode"
        );
    }
}

/// Filters a watch body as it streams: bytes in, filtered bytes out.
///
/// Events are re-framed one by one; a frame split over chunks is held back
/// until complete. If the stream stops decoding, the rest of it (from the
/// first undecodable frame) is passed through unchanged.
pub struct WatchFilter {
    chain: FilterChain,
    format: Format,
    decoder: WatchDecoder,
    /// The bytes the decoder holds (always a suffix of the input), kept so
    /// they can be passed through if the stream stops decoding.
    pending: BytesMut,
    passthrough: bool,
}

impl fmt::Debug for WatchFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchFilter")
            .field("format", &self.format)
            .field("pending", &self.pending.len())
            .field("passthrough", &self.passthrough)
            .finish_non_exhaustive()
    }
}

impl WatchFilter {
    /// Feeds received bytes; returns the filtered bytes of every event they
    /// completed (possibly empty).
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        if self.passthrough {
            return Bytes::copy_from_slice(chunk);
        }
        self.decoder.push(chunk);
        self.pending.extend_from_slice(chunk);
        let mut out = BytesMut::new();
        loop {
            match self.decoder.next_event() {
                Ok(Some(event)) => {
                    self.emit(&event, &mut out);
                    self.sync_pending();
                }
                Ok(None) => {
                    self.sync_pending();
                    break;
                }
                Err(error) => {
                    tracing::warn!(
                        %error,
                        filters = ?self.chain.filters,
                        "watch stream stopped decoding; passing the rest through unfiltered"
                    );
                    out.extend_from_slice(&self.pending);
                    self.pending.clear();
                    self.passthrough = true;
                    break;
                }
            }
        }
        out.freeze()
    }

    /// Ends the stream: returns whatever incomplete frame was held back,
    /// unchanged (the client sees the same truncation it would have).
    pub fn finish(&mut self) -> Bytes {
        let rest = std::mem::take(&mut self.pending);
        let significant = match self.format {
            Format::Json => !rest.iter().all(u8::is_ascii_whitespace),
            Format::Protobuf => !rest.is_empty(),
        };
        if significant && !self.passthrough {
            tracing::debug!(bytes = rest.len(), "watch stream ended inside a frame");
        }
        rest.freeze()
    }

    fn sync_pending(&mut self) {
        let consumed = self.pending.len().saturating_sub(self.decoder.buffered());
        self.pending.advance(consumed);
    }

    fn emit(&self, event: &WatchEvent, out: &mut BytesMut) {
        match self.filter_event(event) {
            Ok(Some(frame)) => out.extend_from_slice(&frame),
            Ok(None) => self.emit_verbatim(event, out),
            Err(error) => {
                tracing::warn!(%error, filters = ?self.chain.filters, "watch event passed through unfiltered");
                self.emit_verbatim(event, out);
            }
        }
    }

    fn emit_verbatim(&self, event: &WatchEvent, out: &mut BytesMut) {
        match self.format {
            // Normalise JSON framing to one event per line, as the apiserver writes.
            Format::Json => {
                out.extend_from_slice(event.frame().trim_ascii());
                out.extend_from_slice(b"\n");
            }
            Format::Protobuf => out.extend_from_slice(event.frame()),
        }
    }

    /// The new frame for an event, or `None` to send it as received.
    fn filter_event(&self, event: &WatchEvent) -> Result<Option<Vec<u8>>, CodecError> {
        if matches!(event.event_type, EventType::Bookmark | EventType::Error) {
            return Ok(None);
        }
        match self.chain.filter_object(self.format, event.object())? {
            Filtered::Unchanged => Ok(None),
            Filtered::Mutated(object) => {
                codec::encode_watch_event(self.format, event.event_type, &object).map(Some)
            }
            // Already a deletion: the original event says what it must.
            Filtered::Dropped if event.event_type == EventType::Deleted => Ok(None),
            Filtered::Dropped => {
                codec::encode_watch_event(self.format, EventType::Deleted, event.object()).map(Some)
            }
        }
    }
}

/// The largest list item held while it arrives; past it the rest of the
/// list passes through unfiltered (as an undecodable list does).
const LIST_ITEM_MAX: usize = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListMode {
    /// Items are filtered one by one.
    Items,
    /// The item kind came after the first item: the body is filtered whole
    /// at its end (`head` holds all of it).
    Whole,
    /// No filter handles the item kind, or the list stopped decoding: bytes
    /// pass through as they come.
    Passthrough,
}

/// Filters a JSON list as it streams: bytes in, filtered bytes out.
pub struct ListFilter {
    chain: FilterChain,
    stream: codec::ListStream,
    /// Everything received until the list's type is known, so the body can
    /// still be passed through or filtered whole.
    head: Option<BytesMut>,
    mode: ListMode,
    /// The item kind, once the first item showed the chain handles it.
    kind: Option<ObjectKind>,
    /// Items written so far (a `,` goes before every one but the first).
    kept: usize,
}

impl fmt::Debug for ListFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListFilter")
            .field("mode", &self.mode)
            .field("buffered", &self.stream.buffered())
            .finish_non_exhaustive()
    }
}

impl ListFilter {
    /// Feeds received bytes; returns the filtered bytes they completed.
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        match self.mode {
            ListMode::Passthrough => return Bytes::copy_from_slice(chunk),
            ListMode::Whole => {
                if let Some(head) = self.head.as_mut() {
                    head.extend_from_slice(chunk);
                }
                return Bytes::new();
            }
            ListMode::Items => {}
        }
        if let Some(head) = self.head.as_mut() {
            head.extend_from_slice(chunk);
        }
        self.stream.push(chunk);
        let mut out = BytesMut::new();
        loop {
            match self.stream.next_piece() {
                Ok(Some(codec::ListPiece::Verbatim(b))) => out.extend_from_slice(&b),
                Ok(Some(codec::ListPiece::Item(item))) => {
                    if !self.first_item_decides(&mut out) {
                        break;
                    }
                    self.emit_item(&item, &mut out);
                }
                Ok(None) => break,
                Err(error) => {
                    self.chain.log_undecodable(&error, "list");
                    self.pass_rest(&mut out);
                    break;
                }
            }
        }
        out.freeze()
    }

    /// Ends the body: whatever is held comes out (unchanged if the list was
    /// incomplete, as the client would have seen it).
    pub fn finish(&mut self) -> Bytes {
        match self.mode {
            ListMode::Passthrough => Bytes::new(),
            ListMode::Whole => {
                let whole = self.head.take().unwrap_or_default().freeze();
                self.chain.filter_list_body(Format::Json, whole)
            }
            ListMode::Items => match self.stream.finish() {
                Ok(rest) => rest.unwrap_or_default(),
                Err(error) => {
                    tracing::debug!(%error, "list body ended early");
                    let mut out = BytesMut::new();
                    self.pass_rest(&mut out);
                    out.freeze()
                }
            },
        }
    }

    /// At the first item: whether items are filtered one by one. Otherwise
    /// the mode changes (and `out` may get what was held).
    fn first_item_decides(&mut self, out: &mut BytesMut) -> bool {
        let Some(head) = self.head.take() else {
            return true;
        };
        if !self.stream.type_known() {
            self.head = Some(head);
            out.clear();
            self.mode = ListMode::Whole;
            return false;
        }
        self.kind = ObjectKind::of(self.stream.api_version(), self.stream.item_kind())
            .filter(|k| self.chain.handles(*k));
        if self.kind.is_none() {
            // Nothing to filter: send what arrived as it was.
            out.clear();
            out.extend_from_slice(&head);
            self.mode = ListMode::Passthrough;
            return false;
        }
        true
    }

    fn emit_item(&mut self, item: &[u8], out: &mut BytesMut) {
        let filtered = self.kind.map_or(Ok(Filtered::Unchanged), |kind| {
            self.chain.filter_item(
                kind,
                Format::Json,
                self.stream.api_version(),
                self.stream.item_kind(),
                item,
            )
        });
        let bytes: Cow<'_, [u8]> = match filtered {
            Ok(Filtered::Unchanged) => Cow::Borrowed(item),
            Ok(Filtered::Mutated(new)) => Cow::Owned(new),
            Ok(Filtered::Dropped) => return,
            Err(error) => {
                self.chain.log_undecodable(&error, "list item");
                Cow::Borrowed(item)
            }
        };
        if self.kept > 0 {
            out.extend_from_slice(b",");
        }
        out.extend_from_slice(&bytes);
        self.kept += 1;
    }

    /// The list stopped decoding: what is held, and the rest, pass through.
    fn pass_rest(&mut self, out: &mut BytesMut) {
        match self.head.take() {
            // Nothing was sent yet: send it all as it came.
            Some(head) => {
                out.clear();
                out.extend_from_slice(&head);
            }
            None => out.extend_from_slice(&self.stream.take_unconsumed()),
        }
        self.mode = ListMode::Passthrough;
    }
}

/// An incremental filter of a body: bytes in, filtered bytes out.
pub trait StreamFilter {
    /// Feeds received bytes; returns the filtered bytes they completed.
    fn push(&mut self, chunk: &[u8]) -> Bytes;
    /// Ends the body; returns whatever was held back.
    fn finish(&mut self) -> Bytes;
}

impl StreamFilter for WatchFilter {
    fn push(&mut self, chunk: &[u8]) -> Bytes {
        WatchFilter::push(self, chunk)
    }
    fn finish(&mut self) -> Bytes {
        WatchFilter::finish(self)
    }
}

impl StreamFilter for ListFilter {
    fn push(&mut self, chunk: &[u8]) -> Bytes {
        ListFilter::push(self, chunk)
    }
    fn finish(&mut self) -> Bytes {
        ListFilter::finish(self)
    }
}

/// A watch response body whose events are filtered as they stream.
pub type FilteredWatchBody<B> = FilteredBody<B, WatchFilter>;
/// A JSON list response body whose items are filtered as they stream.
pub type FilteredListBody<B> = FilteredBody<B, ListFilter>;

pin_project_lite::pin_project! {
    /// A response body passed through a [`StreamFilter`] as it streams.
    pub struct FilteredBody<B, F> {
        #[pin]
        inner: B,
        filter: F,
        done: bool,
    }
}

impl<B, F> Body for FilteredBody<B, F>
where
    B: Body,
    B::Data: Buf,
    F: StreamFilter,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        loop {
            if *this.done {
                return Poll::Ready(None);
            }
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) => {
                        let chunk = data.copy_to_bytes(data.remaining());
                        let out = this.filter.push(&chunk);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                    }
                },
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => {
                    *this.done = true;
                    let rest = this.filter.finish();
                    if !rest.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

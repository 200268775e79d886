//! Building list bodies from object bodies: whole ([`build_list`]), or frame
//! by frame ([`ListFrames`]), so an offline list of thousands of objects is
//! sent as it is encoded instead of being joined into one buffer first.
//! Both write the same bytes from one [`Layout`].

use std::ops::Range;

use bytes::Bytes;

use super::info::{ListMeta, tags};
use super::wire::{
    self, begin_len, end_len, len_field_size, put_envelope_head, put_envelope_tail, put_len_field,
    put_varint_field,
};
use super::{CodecError, Format};

/// Builds a list body. Items are object bodies in `format`: JSON objects (copied
/// verbatim), or protobuf messages with or without envelope (the envelope is dropped,
/// as list items carry none).
pub fn build_list(
    format: Format,
    api_version: &str,
    list_kind: &str,
    meta: &ListMeta<'_>,
    items: &[&[u8]],
) -> Result<Vec<u8>, CodecError> {
    let layout = Layout::new(format, api_version, list_kind, meta, items.iter().copied())?;
    let mut out = Vec::with_capacity(layout.encoded_len());
    out.extend_from_slice(&layout.head);
    for (i, item) in items.iter().enumerate() {
        layout.put_item(&mut out, i, item);
    }
    out.extend_from_slice(&layout.tail);
    Ok(out)
}

/// The same body as [`build_list`], handed out in frames of about `frame`
/// bytes (an item larger than that is a frame of its own). Each item is
/// dropped once it is copied into a frame, so what was sent is freed while
/// the rest of the list goes out. Every item is checked before the first
/// frame: a bad one is an error here, never a body cut short.
pub fn list_frames<T: AsRef<[u8]>>(
    format: Format,
    api_version: &str,
    list_kind: &str,
    meta: &ListMeta<'_>,
    items: Vec<T>,
    frame: usize,
) -> Result<ListFrames<T>, CodecError> {
    let layout = Layout::new(
        format,
        api_version,
        list_kind,
        meta,
        items.iter().map(AsRef::as_ref),
    )?;
    let remaining = layout.encoded_len();
    Ok(ListFrames {
        layout,
        items: items.into_iter().enumerate(),
        pending: None,
        head_sent: false,
        done: false,
        frame: frame.max(1),
        remaining,
        len: remaining,
    })
}

/// A list body as frames; see [`list_frames`].
pub struct ListFrames<T> {
    layout: Layout,
    items: std::iter::Enumerate<std::vec::IntoIter<T>>,
    /// An item that did not fit the previous frame.
    pending: Option<(usize, T)>,
    head_sent: bool,
    done: bool,
    frame: usize,
    remaining: usize,
    len: usize,
}

impl<T> ListFrames<T> {
    /// The whole body's length (its Content-Length).
    pub fn encoded_len(&self) -> usize {
        self.len
    }
}

impl<T: AsRef<[u8]>> Iterator for ListFrames<T> {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut out = Vec::with_capacity(self.frame.min(self.remaining));
        if !self.head_sent {
            out.extend_from_slice(&self.layout.head);
            self.head_sent = true;
        }
        loop {
            let Some((i, item)) = self.pending.take().or_else(|| self.items.next()) else {
                out.extend_from_slice(&self.layout.tail);
                self.done = true;
                break;
            };
            if !out.is_empty() && out.len() + self.layout.item_len(i) > self.frame {
                self.pending = Some((i, item));
                break;
            }
            self.layout.put_item(&mut out, i, item.as_ref());
        }
        self.remaining -= out.len();
        Some(Bytes::from(out))
    }
}

/// Where a list body's bytes come from: its head (everything before the
/// first item), each item's own part of its body, and its tail.
struct Layout {
    format: Format,
    head: Vec<u8>,
    /// Each item's bytes within its body: the JSON object without the
    /// whitespace around it, or the protobuf message without its envelope.
    spans: Vec<Range<usize>>,
    tail: Vec<u8>,
}

impl Layout {
    fn new<'i>(
        format: Format,
        api_version: &str,
        list_kind: &str,
        meta: &ListMeta<'_>,
        items: impl Iterator<Item = &'i [u8]>,
    ) -> Result<Self, CodecError> {
        let spans = items
            .map(|item| item_span(format, item))
            .collect::<Result<Vec<_>, _>>()?;
        let mut layout = Layout {
            format,
            head: Vec::new(),
            spans,
            tail: Vec::new(),
        };
        match format {
            Format::Json => {
                layout.head = json_head(api_version, list_kind, meta)?;
                layout.tail.extend_from_slice(b"]}");
            }
            Format::Protobuf => {
                let meta_field = pb_list_meta(meta);
                let items_len: usize = (0..layout.spans.len()).map(|i| layout.item_len(i)).sum();
                let mut head = Vec::with_capacity(meta_field.len() + 64);
                put_envelope_head(
                    &mut head,
                    api_version,
                    list_kind,
                    meta_field.len() + items_len,
                );
                head.extend_from_slice(&meta_field);
                layout.head = head;
                put_envelope_tail(&mut layout.tail);
            }
        }
        Ok(layout)
    }

    fn encoded_len(&self) -> usize {
        let items: usize = (0..self.spans.len()).map(|i| self.item_len(i)).sum();
        self.head.len() + items + self.tail.len()
    }

    /// Bytes item `i` takes in the list, with its separator or field key.
    fn item_len(&self, i: usize) -> usize {
        let n = self.spans[i].len();
        match self.format {
            Format::Json => n + usize::from(i > 0),
            Format::Protobuf => len_field_size(tags::LIST_ITEMS, n),
        }
    }

    /// Writes item `i`, whose body is `body` (the one its span was taken from).
    fn put_item(&self, out: &mut Vec<u8>, i: usize, body: &[u8]) {
        let own = &body[self.spans[i].clone()];
        match self.format {
            Format::Json => {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(own);
            }
            Format::Protobuf => put_len_field(out, tags::LIST_ITEMS, own),
        }
    }
}

fn item_span(format: Format, item: &[u8]) -> Result<Range<usize>, CodecError> {
    match format {
        Format::Json => {
            let trimmed = item.trim_ascii();
            if !trimmed.starts_with(b"{") {
                return Err(CodecError::json(0, "list item is not a json object"));
            }
            let start = item.len() - item.trim_ascii_start().len();
            Ok(start..start + trimmed.len())
        }
        Format::Protobuf if wire::is_enveloped(item) => {
            let env = wire::parse_envelope(item)?;
            Ok(env.raw_offset..env.raw_offset + env.raw.len())
        }
        Format::Protobuf => Ok(0..item.len()),
    }
}

/// `{"kind":..,"apiVersion":..,"metadata":{..},"items":[`
fn json_head(
    api_version: &str,
    list_kind: &str,
    meta: &ListMeta<'_>,
) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"{\"kind\":");
    serde_json::to_writer(&mut out, list_kind)?;
    out.extend_from_slice(b",\"apiVersion\":");
    serde_json::to_writer(&mut out, api_version)?;
    out.extend_from_slice(b",\"metadata\":{");
    let mut first = true;
    let mut key = |out: &mut Vec<u8>, k: &str| {
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(k.as_bytes());
    };
    if !meta.resource_version.is_empty() {
        key(&mut out, "\"resourceVersion\":");
        serde_json::to_writer(&mut out, meta.resource_version.as_ref())?;
    }
    if !meta.continue_token.is_empty() {
        key(&mut out, "\"continue\":");
        serde_json::to_writer(&mut out, meta.continue_token.as_ref())?;
    }
    if let Some(n) = meta.remaining_item_count {
        key(&mut out, "\"remainingItemCount\":");
        out.extend_from_slice(n.to_string().as_bytes());
    }
    out.extend_from_slice(b"},\"items\":[");
    Ok(out)
}

/// The list's `metadata` field, key and length included.
fn pb_list_meta(meta: &ListMeta<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    let start = begin_len(&mut out, tags::LIST_META);
    if !meta.resource_version.is_empty() {
        put_len_field(
            &mut out,
            tags::LIST_RESOURCE_VERSION,
            meta.resource_version.as_bytes(),
        );
    }
    if !meta.continue_token.is_empty() {
        put_len_field(
            &mut out,
            tags::LIST_CONTINUE,
            meta.continue_token.as_bytes(),
        );
    }
    if let Some(n) = meta.remaining_item_count {
        put_varint_field(&mut out, tags::LIST_REMAINING, n as u64);
    }
    end_len(&mut out, start);
    out
}

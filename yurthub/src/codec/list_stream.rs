//! Splits a list body into its items while it arrives, so a large list can be
//! filtered and cached holding one item at a time instead of the whole body
//! (a 10,000-pod list is 10–20 MB; sixteen of them at once must not be
//! sixteen copies).
//!
//! JSON: the top-level object is walked key by key; `apiVersion`, `kind` and
//! `metadata` are read as they complete, each element of `items` is handed
//! out as soon as its closing brace arrives, and everything that is not an
//! item or a separator between items comes out verbatim, so a caller can
//! rebuild the list with some items changed or dropped. Protobuf: the
//! envelope and the list message are walked field by field; items come out
//! as bare messages (no envelope), like [`super::split_list`] ranges.
//!
//! Like [`super::json_scan`], structure is checked only as far as the walk
//! needs: item bodies are validated by whoever reads them.

use bytes::{Bytes, BytesMut};

use super::info::tags;
use super::json_scan::Scanner;
use super::wire::{self, Fields};
use super::{CodecError, Format, ListMeta};

/// What [`ListStream::next_piece`] hands out, in body order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListPiece {
    /// Bytes of the list outside its items (JSON only): the head up to and
    /// including `[`, and from `]` on. Separators between items are not
    /// included: a writer puts `,` between the items it keeps.
    Verbatim(Bytes),
    /// One item: a JSON object, or a bare protobuf message.
    Item(Bytes),
}

/// An incremental list splitter: [`push`](ListStream::push) bytes as they
/// come, take [`next_piece`](ListStream::next_piece) until it yields None,
/// and call [`finish`](ListStream::finish) at the end of the body.
#[derive(Debug)]
pub struct ListStream {
    format: Format,
    buf: BytesMut,
    /// Bytes consumed before `buf[0]` (for error offsets).
    consumed: usize,
    verbatim: BytesMut,
    state: State,
    scan: Option<Extent>,
    /// An item complete behind the verbatim piece handed out first.
    ready: Option<Bytes>,
    max_item: usize,
    api_version: String,
    kind: String,
    meta: ListMeta<'static>,
    items: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    ApiVersion,
    Kind,
    Metadata,
    Items,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    // JSON
    Open,
    Key,
    Colon(Key),
    Value(Key),
    Next,
    ItemsFirst,
    ItemsAfter,
    ItemsNeed,
    // Protobuf
    Magic,
    /// At a field of `runtime.Unknown`.
    Outer,
    /// Inside `Unknown.raw` (the list message), with this many bytes left.
    Raw(usize),
    /// Skipping an unread field's bytes; then back to `Raw(rest)` or `Outer`.
    Skip {
        left: usize,
        then: Option<usize>,
    },
    Done,
}

impl ListStream {
    /// `max_item`: the largest item (or head field) held while it arrives.
    pub fn new(format: Format, max_item: usize) -> ListStream {
        ListStream {
            format,
            buf: BytesMut::new(),
            consumed: 0,
            verbatim: BytesMut::new(),
            state: match format {
                Format::Json => State::Open,
                Format::Protobuf => State::Magic,
            },
            scan: None,
            ready: None,
            max_item,
            api_version: String::new(),
            kind: String::new(),
            meta: ListMeta::default(),
            items: 0,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The list's apiVersion, once read (empty before).
    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    /// The list's kind, once read (empty before).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The kind of the items: the list kind without its `List` suffix.
    pub fn item_kind(&self) -> &str {
        self.kind.strip_suffix("List").unwrap_or(&self.kind)
    }

    /// Whether apiVersion and kind were read (the apiserver writes them
    /// before the items; a body that does not cannot be handled item by
    /// item by callers that need the item kind).
    pub fn type_known(&self) -> bool {
        !self.api_version.is_empty() && !self.kind.is_empty()
    }

    /// The list metadata read so far (complete after [`ListStream::finish`]).
    pub fn meta(&self) -> &ListMeta<'static> {
        &self.meta
    }

    /// Items handed out so far.
    pub fn items(&self) -> usize {
        self.items
    }

    /// Bytes held while waiting for the rest of an item.
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.verbatim.len()
    }

    /// What was received and not handed out (held verbatim bytes and the
    /// unread rest), for a caller that stops splitting and passes the rest
    /// of the body through.
    pub fn take_unconsumed(&mut self) -> Bytes {
        let mut out = self.verbatim.split();
        if let Some(item) = self.ready.take() {
            out.extend_from_slice(&item);
        }
        out.extend_from_slice(&self.buf);
        self.buf.clear();
        self.scan = None;
        out.freeze()
    }

    /// The next complete piece, or None when more bytes are needed.
    pub fn next_piece(&mut self) -> Result<Option<ListPiece>, CodecError> {
        let piece = match self.format {
            Format::Json => self.next_json()?,
            Format::Protobuf => self.next_pb()?,
        };
        // A JSON value still arriving (protobuf fields are bounded by their
        // declared length before they are buffered).
        if piece.is_none() && self.scan.is_some() && self.buf.len() > self.max_item {
            return Err(CodecError::FrameTooLarge {
                len: self.buf.len(),
                max: self.max_item,
            });
        }
        Ok(piece)
    }

    /// Ends the body: an error unless the list was complete; otherwise the
    /// last verbatim bytes (JSON), if any.
    pub fn finish(&mut self) -> Result<Option<Bytes>, CodecError> {
        if let Some(p) = self.next_piece()? {
            // Callers drain pieces before finishing; one left is a misuse.
            debug_assert!(false, "finish with a piece left: {p:?}");
        }
        let complete = match self.state {
            State::Done => self.buf.iter().all(u8::is_ascii_whitespace),
            State::Outer => self.buf.is_empty(),
            _ => false,
        };
        if !complete {
            return Err(match self.format {
                Format::Json => CodecError::json(self.consumed, "list body ended early"),
                Format::Protobuf => CodecError::protobuf(self.consumed, "list body ended early"),
            });
        }
        let rest = std::mem::take(&mut self.buf);
        self.verbatim.extend_from_slice(&rest);
        Ok((!self.verbatim.is_empty()).then(|| self.verbatim.split().freeze()))
    }

    fn err(&self, reason: &'static str) -> CodecError {
        match self.format {
            Format::Json => CodecError::json(self.consumed, reason),
            Format::Protobuf => CodecError::protobuf(self.consumed, reason),
        }
    }

    /// Drops `n` bytes from the front; `keep` copies them to the verbatim output.
    fn take(&mut self, n: usize, keep: bool) -> BytesMut {
        let out = self.buf.split_to(n);
        self.consumed += n;
        if keep {
            self.verbatim.extend_from_slice(&out);
        }
        out
    }

    /// Leading whitespace, kept verbatim or dropped; then the next byte.
    fn skip_ws(&mut self, keep: bool) -> Option<u8> {
        let n = self
            .buf
            .iter()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
        self.take(n, keep);
        self.buf.first().copied()
    }

    /// The end of the JSON value at the front of `buf`, once it is complete.
    fn value_end(&mut self) -> Result<Option<usize>, CodecError> {
        let Some(&first) = self.buf.first() else {
            return Ok(None);
        };
        let mut scan = self.scan.take().unwrap_or_else(|| Extent::start(first));
        let end = scan.advance(&self.buf);
        if end.is_none() {
            self.scan = Some(scan);
        }
        Ok(end)
    }

    fn next_json(&mut self) -> Result<Option<ListPiece>, CodecError> {
        if let Some(item) = self.ready.take() {
            return Ok(Some(ListPiece::Item(item)));
        }
        loop {
            let in_items = matches!(
                self.state,
                State::ItemsFirst | State::ItemsAfter | State::ItemsNeed
            );
            let Some(b) = self.skip_ws(!in_items) else {
                return Ok(None);
            };
            match self.state {
                State::Open if b == b'{' => {
                    self.take(1, true);
                    self.state = State::Key;
                }
                State::Open => return Err(self.err("a list is a json object")),
                State::Key if b == b'}' => {
                    self.take(1, true);
                    self.state = State::Done;
                }
                State::Key if b == b'"' => {
                    let Some(end) = self.value_end()? else {
                        return Ok(None);
                    };
                    let key: String = serde_json::from_slice(&self.buf[..end])?;
                    self.take(end, true);
                    self.state = State::Colon(match key.as_str() {
                        "apiVersion" => Key::ApiVersion,
                        "kind" => Key::Kind,
                        "metadata" => Key::Metadata,
                        "items" => Key::Items,
                        _ => Key::Other,
                    });
                }
                State::Key => return Err(self.err("expected a key")),
                State::Colon(key) if b == b':' => {
                    self.take(1, true);
                    self.state = State::Value(key);
                }
                State::Colon(_) => return Err(self.err("expected ':'")),
                State::Value(Key::Items) if b == b'[' => {
                    self.take(1, true);
                    self.state = State::ItemsFirst;
                }
                State::Value(key) => {
                    let Some(end) = self.value_end()? else {
                        return Ok(None);
                    };
                    let value = self.take(end, true);
                    self.read_head_value(key, &value)?;
                    self.state = State::Next;
                }
                State::Next if b == b',' => {
                    self.take(1, true);
                    self.state = State::Key;
                }
                State::Next if b == b'}' => {
                    self.take(1, true);
                    self.state = State::Done;
                }
                State::Next => return Err(self.err("expected ',' or '}'")),
                State::ItemsFirst | State::ItemsAfter if b == b']' => {
                    // `]` starts the tail (the head went out before the first item).
                    self.take(1, true);
                    self.state = State::Next;
                }
                State::ItemsAfter if b == b',' => {
                    self.take(1, false);
                    self.state = State::ItemsNeed;
                }
                State::ItemsAfter => return Err(self.err("expected ',' or ']' after an item")),
                State::ItemsFirst | State::ItemsNeed if b == b'{' => {
                    let Some(end) = self.value_end()? else {
                        return Ok(None);
                    };
                    let item = self.take(end, false).freeze();
                    self.items += 1;
                    self.state = State::ItemsAfter;
                    // The head goes out only with the first item complete,
                    // so a caller sees both in the same round of pieces.
                    if !self.verbatim.is_empty() {
                        self.ready = Some(item);
                        return Ok(Some(ListPiece::Verbatim(self.verbatim.split().freeze())));
                    }
                    return Ok(Some(ListPiece::Item(item)));
                }
                State::ItemsFirst | State::ItemsNeed => {
                    return Err(self.err("list item is not an object"));
                }
                State::Done => return Err(self.err("trailing data after the list")),
                State::Magic | State::Outer | State::Raw(_) | State::Skip { .. } => {
                    unreachable!("protobuf state in a json list")
                }
            }
        }
    }

    fn read_head_value(&mut self, key: Key, value: &[u8]) -> Result<(), CodecError> {
        match key {
            Key::ApiVersion => {
                self.api_version =
                    serde_json::from_slice::<Option<String>>(value)?.unwrap_or_default()
            }
            Key::Kind => {
                self.kind = serde_json::from_slice::<Option<String>>(value)?.unwrap_or_default()
            }
            Key::Metadata => {
                let mut s = Scanner::new(value);
                if s.peek() == Some(b'n') {
                    return Ok(()); // null
                }
                let meta = &mut self.meta;
                s.object(|s, key| {
                    match key.as_ref() {
                        "resourceVersion" => {
                            meta.resource_version =
                                s.opt_string()?.unwrap_or_default().into_owned().into()
                        }
                        "continue" => {
                            meta.continue_token =
                                s.opt_string()?.unwrap_or_default().into_owned().into()
                        }
                        "remainingItemCount" => meta.remaining_item_count = s.opt_i64()?,
                        _ => {
                            s.value()?;
                        }
                    }
                    Ok(())
                })?;
            }
            Key::Items => {
                // `"items": null` is an empty list.
                if value != b"null" {
                    return Err(self.err("items is not an array"));
                }
            }
            Key::Other => {}
        }
        Ok(())
    }

    fn next_pb(&mut self) -> Result<Option<ListPiece>, CodecError> {
        loop {
            match self.state {
                State::Magic => {
                    if self.buf.len() < wire::MAGIC.len() {
                        return Ok(None);
                    }
                    if self.buf[..wire::MAGIC.len()] != wire::MAGIC {
                        return Err(CodecError::MissingMagic);
                    }
                    self.take(wire::MAGIC.len(), false);
                    self.state = State::Outer;
                }
                State::Outer => {
                    let Some(field) = self.pb_field(None)? else {
                        return Ok(None);
                    };
                    match field {
                        PbField::Whole { tag: 1, body } => {
                            for f in Fields::new(&body) {
                                let f = f?;
                                match f.tag {
                                    1 => f.str()?.clone_into(&mut self.api_version),
                                    2 => f.str()?.clone_into(&mut self.kind),
                                    _ => {}
                                }
                            }
                        }
                        PbField::Whole { .. } | PbField::Scalar => {}
                        PbField::Header { tag: 2, len } => self.state = State::Raw(len),
                        PbField::Header { len, .. } => {
                            self.state = State::Skip {
                                left: len,
                                then: None,
                            }
                        }
                    }
                }
                State::Raw(0) => self.state = State::Outer,
                State::Raw(left) => {
                    let before = self.consumed;
                    let Some(field) = self.pb_field(Some(left))? else {
                        return Ok(None);
                    };
                    let rest = left
                        .checked_sub(self.consumed - before)
                        .ok_or_else(|| self.err("a list field overruns the list"))?;
                    self.state = State::Raw(rest);
                    match field {
                        PbField::Whole {
                            tag: tags::LIST_META,
                            body,
                        } => self.read_pb_list_meta(&body)?,
                        PbField::Whole {
                            tag: tags::LIST_ITEMS,
                            body,
                        } => {
                            self.items += 1;
                            return Ok(Some(ListPiece::Item(body.freeze())));
                        }
                        PbField::Whole { .. } | PbField::Scalar => {}
                        PbField::Header { len, .. } => {
                            self.state = State::Skip {
                                left: len,
                                then: Some(rest - len),
                            }
                        }
                    }
                }
                State::Skip { left, then } => {
                    let n = left.min(self.buf.len());
                    self.take(n, false);
                    if n < left {
                        self.state = State::Skip {
                            left: left - n,
                            then,
                        };
                        return Ok(None);
                    }
                    self.state = then.map_or(State::Outer, State::Raw);
                }
                State::Done => return Ok(None),
                _ => unreachable!("json state in a protobuf list"),
            }
        }
    }

    /// One field at the front of `buf`: a length-delimited field whole
    /// (items, metadata) or, for `Unknown.raw` and fields not read, only its
    /// header. None until enough bytes are there. `within`: the bytes left
    /// in the enclosing message.
    fn pb_field(&mut self, within: Option<usize>) -> Result<Option<PbField>, CodecError> {
        let mut pos = 0;
        let Some(key) = wire::read_varint(&self.buf, &mut pos) else {
            return self.pb_incomplete(10);
        };
        let tag = u32::try_from(key >> 3).map_err(|_| self.err("field tag out of range"))?;
        let wire_type = (key & 7) as u8;
        let fixed = match wire_type {
            wire::WT_VARINT => {
                if wire::read_varint(&self.buf, &mut pos).is_none() {
                    return self.pb_incomplete(20);
                }
                Some(0)
            }
            wire::WT_FIXED64 => Some(8),
            wire::WT_FIXED32 => Some(4),
            wire::WT_LEN => None,
            _ => return Err(self.err("unsupported wire type")),
        };
        if let Some(n) = fixed {
            if self.buf.len() < pos + n {
                return Ok(None);
            }
            self.take(pos + n, false);
            return Ok(Some(PbField::Scalar));
        }
        let Some(len) = wire::read_varint(&self.buf, &mut pos) else {
            return self.pb_incomplete(20);
        };
        let len = usize::try_from(len).map_err(|_| self.err("field length out of range"))?;
        if within.is_some_and(|w| pos.saturating_add(len) > w) {
            return Err(self.err("a list field overruns the list"));
        }
        let whole = match within {
            None => tag == 1,
            Some(_) => tag == tags::LIST_META || tag == tags::LIST_ITEMS,
        };
        if !whole {
            self.take(pos, false);
            return Ok(Some(PbField::Header { tag, len }));
        }
        if len > self.max_item {
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max_item,
            });
        }
        // The bound was checked on the declared length above.
        if self.buf.len() < pos + len {
            return Ok(None);
        }
        self.take(pos, false);
        let body = self.take(len, false);
        Ok(Some(PbField::Whole { tag, body }))
    }

    /// Not enough bytes for a varint yet: wait, unless `max` bytes are
    /// there already (then it is malformed).
    fn pb_incomplete(&self, max: usize) -> Result<Option<PbField>, CodecError> {
        if self.buf.len() >= max {
            return Err(self.err("malformed varint"));
        }
        Ok(None)
    }

    fn read_pb_list_meta(&mut self, body: &[u8]) -> Result<(), CodecError> {
        for f in Fields::new(body) {
            let f = f?;
            match f.tag {
                tags::LIST_RESOURCE_VERSION => {
                    self.meta.resource_version = f.str()?.to_owned().into()
                }
                tags::LIST_CONTINUE => self.meta.continue_token = f.str()?.to_owned().into(),
                tags::LIST_REMAINING => self.meta.remaining_item_count = Some(f.varint()? as i64),
                _ => {}
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
enum PbField {
    Whole { tag: u32, body: BytesMut },
    Header { tag: u32, len: usize },
    Scalar,
}

/// A resumable scan for the end of one JSON value: bytes already walked are
/// not walked again when more arrive.
#[derive(Debug, Clone, Copy)]
struct Extent {
    at: usize,
    depth: u32,
    in_str: bool,
    escaped: bool,
    scalar: bool,
}

impl Extent {
    fn start(first: u8) -> Extent {
        Extent {
            at: 1,
            depth: u32::from(matches!(first, b'{' | b'[')),
            in_str: first == b'"',
            escaped: false,
            scalar: !matches!(first, b'{' | b'[' | b'"'),
        }
    }

    fn advance(&mut self, buf: &[u8]) -> Option<usize> {
        while let Some(&b) = buf.get(self.at) {
            if self.scalar {
                if matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace() {
                    return Some(self.at);
                }
            } else if self.in_str {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_str = false;
                    if self.depth == 0 {
                        return Some(self.at + 1);
                    }
                }
            } else {
                match b {
                    b'"' => self.in_str = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth -= 1;
                        if self.depth == 0 {
                            return Some(self.at + 1);
                        }
                    }
                    _ => {}
                }
            }
            self.at += 1;
        }
        None
    }
}

//! Watch streams: incremental decoding into events and encoding of event frames.
//!
//! * JSON: a sequence of `{"type":"ADDED","object":{...}}` objects, each followed by a
//!   newline as Go's encoder writes them; readers accept any whitespace between them.
//! * Protobuf (`application/vnd.kubernetes.protobuf;stream=watch`): frames of a 4-byte
//!   big-endian length followed by a `metav1.WatchEvent` message {type = 1,
//!   object = 2 (RawExtension {raw = 1})}. The frame itself has **no** envelope (the
//!   apiserver encodes events with the raw protobuf serializer); the embedded object
//!   **is** enveloped (`k8s\0` + Unknown), because it is encoded with the normal
//!   serializer (apiserver `handlers/watch.go`, `response.go: watchEncoder`).

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use super::json_scan::{JsonFramer, Scanner};
use super::wire::{self, Fields, begin_len, end_len, put_len_field};
use super::{CodecError, Format};

/// Frames larger than this are refused unless [`WatchDecoder::with_max_frame`] says
/// otherwise. etcd caps objects at 1.5 MiB by default; this leaves room for custom
/// limits while bounding memory per stream.
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
    Bookmark,
    Error,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
            EventType::Bookmark => "BOOKMARK",
            EventType::Error => "ERROR",
        }
    }

    pub fn parse(s: &str) -> Result<Self, CodecError> {
        Ok(match s {
            "ADDED" => EventType::Added,
            "MODIFIED" => EventType::Modified,
            "DELETED" => EventType::Deleted,
            "BOOKMARK" => EventType::Bookmark,
            "ERROR" => EventType::Error,
            other => return Err(CodecError::UnknownEventType(other.to_owned())),
        })
    }
}

/// One decoded event. The object is a JSON object or an enveloped protobuf object,
/// sharing memory with the received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub event_type: EventType,
    frame: Bytes,
    object: Range<usize>,
}

impl WatchEvent {
    /// The embedded object (JSON object, or enveloped protobuf object).
    pub fn object(&self) -> &[u8] {
        &self.frame[self.object.clone()]
    }

    /// The embedded object without copying.
    pub fn object_bytes(&self) -> Bytes {
        self.frame.slice(self.object.clone())
    }

    /// The frame exactly as received (protobuf: with its length prefix).
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }
}

/// Splits a watch response body into events as chunks arrive.
#[derive(Debug)]
pub struct WatchDecoder {
    format: Format,
    buf: BytesMut,
    max_frame: usize,
    framer: JsonFramer,
}

impl WatchDecoder {
    pub fn new(format: Format) -> Self {
        Self::with_max_frame(format, DEFAULT_MAX_FRAME)
    }

    pub fn with_max_frame(format: Format, max_frame: usize) -> Self {
        WatchDecoder {
            format,
            buf: BytesMut::new(),
            max_frame,
            framer: JsonFramer::default(),
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete event, `None` when more bytes are needed. After an error the
    /// stream cannot be resynchronised and should be dropped.
    pub fn next_event(&mut self) -> Result<Option<WatchEvent>, CodecError> {
        match self.format {
            Format::Json => self.next_json(),
            Format::Protobuf => self.next_protobuf(),
        }
    }

    /// Bytes of an incomplete frame held back.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Checks the stream ended on a frame boundary (call at end of body).
    pub fn finish(&self) -> Result<(), CodecError> {
        let pending = match self.format {
            Format::Json => !self.buf.iter().all(u8::is_ascii_whitespace),
            Format::Protobuf => !self.buf.is_empty(),
        };
        if pending {
            return Err(CodecError::TruncatedStream {
                buffered: self.buf.len(),
            });
        }
        Ok(())
    }

    fn next_json(&mut self) -> Result<Option<WatchEvent>, CodecError> {
        let Some(end) = self.framer.scan(&self.buf)? else {
            if self.framer.idle() {
                // Only whitespace so far: drop it so it does not accumulate.
                self.buf.clear();
                self.framer = JsonFramer::default();
            } else if self.buf.len() > self.max_frame {
                return Err(CodecError::FrameTooLarge {
                    len: self.buf.len(),
                    max: self.max_frame,
                });
            }
            return Ok(None);
        };
        if end > self.max_frame {
            return Err(CodecError::FrameTooLarge {
                len: end,
                max: self.max_frame,
            });
        }
        let frame = self.buf.split_to(end).freeze();
        let (event_type, object) = parse_json_event(&frame)?;
        Ok(Some(WatchEvent {
            event_type,
            frame,
            object,
        }))
    }

    fn next_protobuf(&mut self) -> Result<Option<WatchEvent>, CodecError> {
        let Some(header) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len > self.max_frame {
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let frame = self.buf.split_to(4 + len).freeze();
        let (event_type, object) = parse_pb_event(&frame[4..], 4)?;
        Ok(Some(WatchEvent {
            event_type,
            frame,
            object,
        }))
    }
}

fn parse_json_event(frame: &[u8]) -> Result<(EventType, Range<usize>), CodecError> {
    let mut event_type = None;
    let mut object = None;
    let mut s = Scanner::new(frame);
    s.object(|s, key| {
        match key.as_ref() {
            "type" => event_type = Some(EventType::parse(&s.string()?)?),
            "object" => object = Some(s.value()?),
            _ => {
                s.value()?;
            }
        }
        Ok(())
    })?;
    let event_type = event_type.ok_or_else(|| CodecError::json(0, "watch event has no type"))?;
    let object = object.ok_or_else(|| CodecError::json(0, "watch event has no object"))?;
    Ok((event_type, object))
}

fn parse_pb_event(msg: &[u8], base: usize) -> Result<(EventType, Range<usize>), CodecError> {
    let mut event_type = None;
    let mut object = None;
    for f in Fields::at(msg, base) {
        let f = f?;
        match f.tag {
            1 => event_type = Some(EventType::parse(f.str()?)?),
            2 => {
                for raw in f.message()? {
                    let raw = raw?;
                    if raw.tag == 1 {
                        let bytes = raw.bytes()?;
                        object = Some(raw.offset..raw.offset + bytes.len());
                    }
                }
            }
            _ => {}
        }
    }
    let event_type =
        event_type.ok_or_else(|| CodecError::protobuf(base, "watch event has no type"))?;
    let object = object.ok_or_else(|| CodecError::protobuf(base, "watch event has no object"))?;
    Ok((event_type, object))
}

/// Encodes one watch event frame. `object` must be in `format`: a JSON object, or an
/// enveloped protobuf object (what [`super::Format::encode_object`] produces).
pub fn encode_watch_event(
    format: Format,
    event_type: EventType,
    object: &[u8],
) -> Result<Vec<u8>, CodecError> {
    match format {
        Format::Json => {
            let object = object.trim_ascii();
            if !object.starts_with(b"{") {
                return Err(CodecError::json(
                    0,
                    "watch event object is not a json object",
                ));
            }
            let mut out = Vec::with_capacity(object.len() + 32);
            out.extend_from_slice(b"{\"type\":\"");
            out.extend_from_slice(event_type.as_str().as_bytes());
            out.extend_from_slice(b"\",\"object\":");
            out.extend_from_slice(object);
            out.extend_from_slice(b"}\n");
            Ok(out)
        }
        Format::Protobuf => {
            if !wire::is_enveloped(object) {
                return Err(CodecError::MissingMagic);
            }
            let mut out = Vec::with_capacity(object.len() + 32);
            out.extend_from_slice(&[0; 4]);
            put_len_field(&mut out, 1, event_type.as_str().as_bytes());
            let start = begin_len(&mut out, 2);
            put_len_field(&mut out, 1, object);
            end_len(&mut out, start);
            let len = u32::try_from(out.len() - 4).map_err(|_| CodecError::FrameTooLarge {
                len: out.len(),
                max: u32::MAX as usize,
            })?;
            out[..4].copy_from_slice(&len.to_be_bytes());
            Ok(out)
        }
    }
}

/// Reads all events of a complete watch body (convenience for tests and replays).
pub fn decode_watch_body(format: Format, body: &[u8]) -> Result<Vec<WatchEvent>, CodecError> {
    let mut decoder = WatchDecoder::new(format);
    decoder.push(body);
    let mut events = Vec::new();
    while let Some(e) = decoder.next_event()? {
        events.push(e);
    }
    decoder.finish()?;
    Ok(events)
}

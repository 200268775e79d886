//! Protobuf wire primitives and the Kubernetes envelope.
//!
//! Kubernetes frames every protobuf body as the 4-byte magic `k8s\0` followed by a
//! `runtime.Unknown` message: `typeMeta`(1){`apiVersion`(1), `kind`(2)}, `raw`(2) = the
//! object's own message, `contentEncoding`(3), `contentType`(4)
//! (apimachinery `pkg/runtime/serializer/protobuf/protobuf.go`). This module reads and
//! writes that envelope and walks messages field by field without decoding them, so the
//! hot paths (metadata extraction, list and watch splitting) borrow from the input.

use super::CodecError;

/// The prefix of every Kubernetes protobuf body.
pub const MAGIC: [u8; 4] = *b"k8s\0";

pub(crate) const WT_VARINT: u8 = 0;
pub(crate) const WT_FIXED64: u8 = 1;
pub(crate) const WT_LEN: u8 = 2;
pub(crate) const WT_FIXED32: u8 = 5;

/// One field value as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum WireValue<'a> {
    Varint(u64),
    Fixed64(u64),
    Len(&'a [u8]),
    Fixed32(u32),
}

/// A field read from a message: its tag, value, and the absolute offset of the value
/// (relative to the outermost buffer the walk started from).
#[derive(Debug, Clone, Copy)]
pub(crate) struct WireField<'a> {
    pub tag: u32,
    pub value: WireValue<'a>,
    pub offset: usize,
}

impl<'a> WireField<'a> {
    /// The payload of a length-delimited field, or an error naming the field.
    pub(crate) fn bytes(&self) -> Result<&'a [u8], CodecError> {
        match self.value {
            WireValue::Len(b) => Ok(b),
            _ => Err(CodecError::protobuf(
                self.offset,
                "expected a length-delimited field",
            )),
        }
    }

    pub(crate) fn str(&self) -> Result<&'a str, CodecError> {
        std::str::from_utf8(self.bytes()?)
            .map_err(|_| CodecError::protobuf(self.offset, "string field is not UTF-8"))
    }

    pub(crate) fn varint(&self) -> Result<u64, CodecError> {
        match self.value {
            WireValue::Varint(v) => Ok(v),
            _ => Err(CodecError::protobuf(self.offset, "expected a varint field")),
        }
    }

    /// A nested message: iterate its fields keeping absolute offsets.
    pub(crate) fn message(&self) -> Result<Fields<'a>, CodecError> {
        Ok(Fields::at(self.bytes()?, self.offset))
    }
}

/// Iterates the fields of one message. Groups (wire types 3/4) are rejected: no
/// Kubernetes message uses them.
#[derive(Debug, Clone)]
pub(crate) struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Fields {
            buf,
            pos: 0,
            base: 0,
        }
    }

    /// `base` is the offset of `buf` inside the outermost buffer, for error messages
    /// and for callers that return ranges into it.
    pub(crate) fn at(buf: &'a [u8], base: usize) -> Self {
        Fields { buf, pos: 0, base }
    }

    fn read_field(&mut self) -> Result<WireField<'a>, CodecError> {
        let key_at = self.base + self.pos;
        let key = read_varint(self.buf, &mut self.pos)
            .ok_or_else(|| CodecError::protobuf(key_at, "truncated field key"))?;
        let tag = u32::try_from(key >> 3)
            .ok()
            .filter(|t| *t != 0)
            .ok_or_else(|| CodecError::protobuf(key_at, "invalid field number"))?;
        let value_at = self.base + self.pos;
        let value = match (key & 7) as u8 {
            WT_VARINT => WireValue::Varint(
                read_varint(self.buf, &mut self.pos)
                    .ok_or_else(|| CodecError::protobuf(value_at, "truncated varint"))?,
            ),
            WT_FIXED64 => {
                let b = self.take(8, value_at)?;
                WireValue::Fixed64(u64::from_le_bytes([
                    b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
                ]))
            }
            WT_LEN => {
                let len = read_varint(self.buf, &mut self.pos)
                    .ok_or_else(|| CodecError::protobuf(value_at, "truncated length"))?;
                let len = usize::try_from(len)
                    .map_err(|_| CodecError::protobuf(value_at, "length overflows"))?;
                let start = self.base + self.pos;
                let b = self.take(len, value_at)?;
                return Ok(WireField {
                    tag,
                    value: WireValue::Len(b),
                    offset: start,
                });
            }
            WT_FIXED32 => {
                let b = self.take(4, value_at)?;
                WireValue::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            _ => return Err(CodecError::protobuf(key_at, "unsupported wire type")),
        };
        Ok(WireField {
            tag,
            value,
            offset: value_at,
        })
    }

    fn take(&mut self, len: usize, at: usize) -> Result<&'a [u8], CodecError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| CodecError::protobuf(at, "field runs past the end of its message"))?;
        let b = &self.buf[self.pos..end];
        self.pos = end;
        Ok(b)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<WireField<'a>, CodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let r = self.read_field();
        if r.is_err() {
            self.pos = self.buf.len(); // stop after the first error
        }
        Some(r)
    }
}

pub(crate) fn read_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in 0..10 {
        let b = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << (7 * shift);
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

pub(crate) fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn put_key(out: &mut Vec<u8>, tag: u32, wire_type: u8) {
    put_varint(out, (u64::from(tag) << 3) | u64::from(wire_type));
}

pub(crate) fn put_len_field(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    put_key(out, tag, WT_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

pub(crate) fn put_varint_field(out: &mut Vec<u8>, tag: u32, v: u64) {
    put_key(out, tag, WT_VARINT);
    put_varint(out, v);
}

/// Starts a length-delimited field whose length is not known yet; pair with
/// [`end_len`]. One byte is reserved for the length and the body is shifted only when
/// the final length needs more.
pub(crate) fn begin_len(out: &mut Vec<u8>, tag: u32) -> usize {
    put_key(out, tag, WT_LEN);
    out.push(0);
    out.len()
}

pub(crate) fn end_len(out: &mut Vec<u8>, body_start: usize) {
    let len = (out.len() - body_start) as u64;
    let n = varint_len(len);
    if n > 1 {
        out.splice(body_start..body_start, std::iter::repeat_n(0, n - 1));
    }
    let mut pos = body_start - 1;
    let mut v = len;
    while v >= 0x80 {
        out[pos] = (v as u8) | 0x80;
        v >>= 7;
        pos += 1;
    }
    out[pos] = v as u8;
}

/// Bytes a length-delimited field with `len` payload bytes takes, key included.
pub(crate) fn len_field_size(tag: u32, len: usize) -> usize {
    varint_len(u64::from(tag) << 3) + varint_len(len as u64) + len
}

/// A parsed envelope. `raw` borrows the object's own message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub api_version: &'a str,
    pub kind: &'a str,
    pub raw: &'a [u8],
    /// Offset of `raw` in the enveloped body.
    pub raw_offset: usize,
    /// `contentEncoding`, empty in everything the apiserver writes.
    pub content_encoding: &'a str,
    /// `contentType`, empty in everything the apiserver writes.
    pub content_type: &'a str,
}

/// Whether `body` starts with the protobuf envelope magic.
pub fn is_enveloped(body: &[u8]) -> bool {
    body.starts_with(&MAGIC)
}

/// Parses the magic and `runtime.Unknown` wrapper of a protobuf body.
pub fn parse_envelope(body: &[u8]) -> Result<Envelope<'_>, CodecError> {
    if !is_enveloped(body) {
        return Err(CodecError::MissingMagic);
    }
    if body.len() == MAGIC.len() {
        return Err(CodecError::protobuf(
            MAGIC.len(),
            "empty body after the envelope magic",
        ));
    }
    let mut env = Envelope {
        api_version: "",
        kind: "",
        raw: &[],
        raw_offset: body.len(),
        content_encoding: "",
        content_type: "",
    };
    for field in Fields::at(&body[MAGIC.len()..], MAGIC.len()) {
        let field = field?;
        match field.tag {
            1 => {
                for tm in field.message()? {
                    let tm = tm?;
                    match tm.tag {
                        1 => env.api_version = tm.str()?,
                        2 => env.kind = tm.str()?,
                        _ => {}
                    }
                }
            }
            2 => {
                env.raw = field.bytes()?;
                env.raw_offset = field.offset;
            }
            3 => env.content_encoding = field.str()?,
            4 => env.content_type = field.str()?,
            _ => {}
        }
    }
    Ok(env)
}

/// Writes `magic + Unknown{typeMeta, raw}` with the raw message produced by `write_raw`,
/// in the byte layout the Go encoder produces (empty `contentEncoding`/`contentType`
/// included).
pub(crate) fn write_envelope(
    out: &mut Vec<u8>,
    api_version: &str,
    kind: &str,
    write_raw: impl FnOnce(&mut Vec<u8>) -> Result<(), CodecError>,
) -> Result<(), CodecError> {
    put_envelope_type(out, api_version, kind);
    let start = begin_len(out, 2);
    write_raw(out)?;
    end_len(out, start);
    put_envelope_tail(out);
    Ok(())
}

/// The envelope up to its raw message, whose length must be known: what
/// precedes `raw_len` bytes of message that the caller writes itself.
pub(crate) fn put_envelope_head(out: &mut Vec<u8>, api_version: &str, kind: &str, raw_len: usize) {
    put_envelope_type(out, api_version, kind);
    put_key(out, 2, WT_LEN);
    put_varint(out, raw_len as u64);
}

/// What follows the raw message: the empty `contentEncoding` and `contentType`.
pub(crate) fn put_envelope_tail(out: &mut Vec<u8>) {
    put_len_field(out, 3, b"");
    put_len_field(out, 4, b"");
}

fn put_envelope_type(out: &mut Vec<u8>, api_version: &str, kind: &str) {
    out.extend_from_slice(&MAGIC);
    let type_meta_len = len_field_size(1, api_version.len()) + len_field_size(2, kind.len());
    put_key(out, 1, WT_LEN);
    put_varint(out, type_meta_len as u64);
    put_len_field(out, 1, api_version.as_bytes());
    put_len_field(out, 2, kind.as_bytes());
}

/// Wraps an object's own protobuf message in the envelope.
pub fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + api_version.len() + kind.len() + 16);
    put_envelope_head(&mut out, api_version, kind, raw.len());
    out.extend_from_slice(raw);
    put_envelope_tail(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_length() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "length of {v}");
            let mut pos = 0;
            assert_eq!(read_varint(&out, &mut pos), Some(v));
            assert_eq!(pos, out.len());
        }
        assert_eq!(
            read_varint(&[0x80, 0x80], &mut 0),
            None,
            "truncated varint must fail"
        );
    }

    #[test]
    fn backpatched_lengths_shift_long_bodies() {
        for body_len in [0usize, 1, 127, 128, 20_000] {
            let mut out = vec![0xAA];
            let start = begin_len(&mut out, 7);
            out.extend(std::iter::repeat_n(0x55, body_len));
            end_len(&mut out, start);
            let fields: Vec<_> = Fields::new(&out[1..])
                .collect::<Result<_, _>>()
                .expect("parses");
            assert_eq!(fields.len(), 1);
            assert_eq!(fields[0].tag, 7);
            assert_eq!(fields[0].bytes().expect("len").len(), body_len);
        }
    }

    #[test]
    fn envelope_matches_the_go_layout_and_parses_back() {
        let body = envelope("v1", "Pod", &[0x0a, 0x00]);
        let expected: Vec<u8> = [
            &MAGIC[..],
            &[
                0x0a, 0x09, 0x0a, 0x02, b'v', b'1', 0x12, 0x03, b'P', b'o', b'd',
            ],
            &[0x12, 0x02, 0x0a, 0x00],
            &[0x1a, 0x00, 0x22, 0x00],
        ]
        .concat();
        assert_eq!(body, expected);
        let env = parse_envelope(&body).expect("parses");
        assert_eq!(
            (env.api_version, env.kind, env.raw),
            ("v1", "Pod", &[0x0a, 0x00][..])
        );
        assert_eq!(&body[env.raw_offset..env.raw_offset + 2], env.raw);

        let mut streamed = Vec::new();
        write_envelope(&mut streamed, "v1", "Pod", |out| {
            out.extend_from_slice(&[0x0a, 0x00]);
            Ok(())
        })
        .expect("writes");
        assert_eq!(streamed, body);
    }

    #[test]
    fn malformed_input_is_rejected_with_offsets() {
        assert!(matches!(
            parse_envelope(b"{}"),
            Err(CodecError::MissingMagic)
        ));
        assert!(parse_envelope(&MAGIC).is_err());
        // length says 5 bytes but only 1 follows
        let bad = [&MAGIC[..], &[0x12, 0x05, 0x00]].concat();
        let err = parse_envelope(&bad).expect_err("truncated");
        assert!(err.to_string().contains("byte 5"), "{err}");
    }
}

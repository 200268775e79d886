//! A small borrowing JSON scanner for the hot paths: it walks objects key by key,
//! decodes only the strings asked for, and skips every other value by bracket
//! matching, so metadata extraction and list splitting never build a value tree.
//! It checks structure only as far as it walks; full validation is left to the
//! consumer of the bytes (serde_json on the conversion paths).

use std::borrow::Cow;
use std::ops::Range;

use super::CodecError;

pub(crate) struct Scanner<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Scanner { buf, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    fn err(&self, reason: &'static str) -> CodecError {
        CodecError::json(self.pos, reason)
    }

    pub(crate) fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.buf.get(self.pos) {
            self.pos += 1;
        }
    }

    pub(crate) fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.buf.get(self.pos).copied()
    }

    fn expect(&mut self, b: u8, reason: &'static str) -> Result<(), CodecError> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(reason))
        }
    }

    /// Requires that only whitespace remains.
    pub(crate) fn end(&mut self) -> Result<(), CodecError> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.err("trailing data after the json value")),
        }
    }

    /// Reads a string, borrowing it when it has no escapes.
    pub(crate) fn string(&mut self) -> Result<Cow<'a, str>, CodecError> {
        self.expect(b'"', "expected a string")?;
        let start = self.pos;
        let mut escaped = false;
        loop {
            match self.next_quote_or_escape() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => break,
                Some(_) => {
                    escaped = true;
                    self.pos += 2;
                }
            }
        }
        let raw = self
            .buf
            .get(start..self.pos)
            .ok_or_else(|| self.err("unterminated string"))?;
        self.pos += 1;
        if !escaped {
            return std::str::from_utf8(raw)
                .map(Cow::Borrowed)
                .map_err(|_| CodecError::json(start, "string is not UTF-8"));
        }
        unescape(raw)
            .map(Cow::Owned)
            .ok_or_else(|| CodecError::json(start, "invalid string escape"))
    }

    /// Reads a string, or `null` as `None`.
    pub(crate) fn opt_string(&mut self) -> Result<Option<Cow<'a, str>>, CodecError> {
        if self.peek() == Some(b'n') {
            self.literal(b"null")?;
            return Ok(None);
        }
        self.string().map(Some)
    }

    fn literal(&mut self, lit: &'static [u8]) -> Result<(), CodecError> {
        if self.buf[self.pos..].starts_with(lit) {
            self.pos += lit.len();
            Ok(())
        } else {
            Err(self.err("invalid literal"))
        }
    }

    /// Reads an integer number (or `null` as `None`).
    pub(crate) fn opt_i64(&mut self) -> Result<Option<i64>, CodecError> {
        if self.peek() == Some(b'n') {
            self.literal(b"null")?;
            return Ok(None);
        }
        let r = self.value()?;
        let text = std::str::from_utf8(&self.buf[r.clone()])
            .map_err(|_| CodecError::json(r.start, "bad number"))?;
        text.parse::<i64>()
            .map(Some)
            .map_err(|_| CodecError::json(r.start, "expected an integer"))
    }

    /// Skips one value and returns its byte range.
    pub(crate) fn value(&mut self) -> Result<Range<usize>, CodecError> {
        self.skip_ws();
        let start = self.pos;
        match self.buf.get(self.pos) {
            None => return Err(self.err("expected a value")),
            Some(b'"') => {
                self.string_raw()?;
            }
            Some(b'{' | b'[') => {
                let mut depth = 0usize;
                loop {
                    match self.buf.get(self.pos) {
                        None => return Err(self.err("unterminated object or array")),
                        Some(b'"') => self.string_raw()?,
                        Some(b'{' | b'[') => {
                            depth += 1;
                            self.pos += 1;
                        }
                        Some(b'}' | b']') => {
                            depth -= 1;
                            self.pos += 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        Some(_) => self.pos += 1,
                    }
                }
            }
            Some(b't' | b'f' | b'n' | b'-' | b'0'..=b'9') => {
                while let Some(b) = self.buf.get(self.pos) {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.pos += 1;
                }
            }
            Some(_) => return Err(self.err("unexpected character")),
        }
        Ok(start..self.pos)
    }

    fn string_raw(&mut self) -> Result<(), CodecError> {
        self.pos += 1; // opening quote
        loop {
            match self.next_quote_or_escape() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(_) => self.pos += 2,
            }
        }
    }

    /// Moves to the next `"` or `\\` inside a string and returns it (most
    /// of a Kubernetes object's bytes are string contents: a SIMD search
    /// instead of a byte loop).
    fn next_quote_or_escape(&mut self) -> Option<u8> {
        let rest = self.buf.get(self.pos..)?;
        let i = memchr::memchr2(b'"', b'\\', rest)?;
        self.pos += i;
        Some(rest[i])
    }

    /// Walks an object, calling `on_key` for each key; `on_key` must consume the value
    /// (by reading it or calling [`Scanner::value`]). `null` is accepted as an empty
    /// object.
    pub(crate) fn object(
        &mut self,
        mut on_key: impl FnMut(&mut Self, Cow<'a, str>) -> Result<(), CodecError>,
    ) -> Result<(), CodecError> {
        if self.peek() == Some(b'n') {
            return self.literal(b"null");
        }
        self.object_until(|s, key| on_key(s, key).map(|()| true))
    }

    /// Like [`Scanner::object`], but `on_key` may end the walk early by
    /// returning `Ok(false)`; the scanner is then left inside the object.
    pub(crate) fn object_until(
        &mut self,
        mut on_key: impl FnMut(&mut Self, Cow<'a, str>) -> Result<bool, CodecError>,
    ) -> Result<(), CodecError> {
        self.expect(b'{', "expected an object")?;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            let key = self.string()?;
            self.expect(b':', "expected ':' after an object key")?;
            if !on_key(self, key)? {
                return Ok(());
            }
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or '}' in an object")),
            }
        }
    }

    /// Walks an array, calling `on_item` for each element (which it must consume).
    /// `null` is accepted as an empty array.
    pub(crate) fn array(
        &mut self,
        mut on_item: impl FnMut(&mut Self) -> Result<(), CodecError>,
    ) -> Result<(), CodecError> {
        if self.peek() == Some(b'n') {
            return self.literal(b"null");
        }
        self.expect(b'[', "expected an array")?;
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            on_item(self)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or ']' in an array")),
            }
        }
    }
}

fn unescape(raw: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let e = *raw.get(i + 1)?;
        i += 2;
        let c = match e {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = hex4(raw.get(i..i + 4)?)?;
                i += 4;
                if (0xD800..0xDC00).contains(&hi) && raw.get(i..i + 2) == Some(b"\\u") {
                    let lo = hex4(raw.get(i + 2..i + 6)?)?;
                    if (0xDC00..0xE000).contains(&lo) {
                        i += 6;
                        char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))?
                    } else {
                        '\u{fffd}'
                    }
                } else {
                    char::from_u32(hi).unwrap_or('\u{fffd}')
                }
            }
            _ => return None,
        };
        let mut tmp = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
    }
    String::from_utf8(out).ok()
}

fn hex4(b: &[u8]) -> Option<u32> {
    u32::from_str_radix(std::str::from_utf8(b).ok()?, 16).ok()
}

/// Finds where one top-level JSON value ends in a growing buffer, resuming where the
/// previous call stopped, so a value split across many chunks is scanned once.
#[derive(Debug, Default, Clone)]
pub(crate) struct JsonFramer {
    scanned: usize,
    depth: usize,
    in_string: bool,
    escape: bool,
    started: bool,
}

impl JsonFramer {
    /// Returns `Some(end)` when `buf[..end]` holds a complete object (after optional
    /// leading whitespace). Errors when the stream does not start an object.
    pub(crate) fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, CodecError> {
        while self.scanned < buf.len() {
            let b = buf[self.scanned];
            self.scanned += 1;
            if !self.started {
                match b {
                    b' ' | b'\t' | b'\n' | b'\r' => continue,
                    b'{' => {
                        self.started = true;
                        self.depth = 1;
                        continue;
                    }
                    _ => {
                        return Err(CodecError::json(
                            self.scanned - 1,
                            "watch event is not a json object",
                        ));
                    }
                }
            }
            if self.in_string {
                if self.escape {
                    self.escape = false;
                } else if b == b'\\' {
                    self.escape = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        let end = self.scanned;
                        *self = JsonFramer::default();
                        return Ok(Some(end));
                    }
                }
                _ => {}
            }
        }
        Ok(None)
    }

    /// Bytes at the start of the buffer that are only whitespace (nothing started).
    pub(crate) fn idle(&self) -> bool {
        !self.started
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_borrow_unless_escaped() {
        let mut s = Scanner::new(br#""plain" "a\"b\u00e9\ud83d\ude00\n""#);
        assert!(matches!(s.string().expect("plain"), Cow::Borrowed("plain")));
        let esc = s.string().expect("escaped");
        assert!(matches!(esc, Cow::Owned(_)));
        assert_eq!(esc, "a\"bé😀\n");
    }

    #[test]
    fn values_are_skipped_with_ranges() {
        let text = br#"{"a": [1, {"b": "}]"}], "c": null, "d": -1.5e3, "e": "x"}"#;
        let mut s = Scanner::new(text);
        let mut seen = Vec::new();
        s.object(|s, key| {
            let r = s.value()?;
            seen.push((
                key.into_owned(),
                String::from_utf8_lossy(&text[r]).into_owned(),
            ));
            Ok(())
        })
        .expect("walks");
        s.end().expect("nothing trails");
        assert_eq!(
            seen,
            [
                ("a".to_owned(), r#"[1, {"b": "}]"}]"#.to_owned()),
                ("c".to_owned(), "null".to_owned()),
                ("d".to_owned(), "-1.5e3".to_owned()),
                ("e".to_owned(), r#""x""#.to_owned()),
            ]
        );
    }

    #[test]
    fn malformed_json_reports_offsets() {
        let err = Scanner::new(br#"{"a" 1}"#)
            .object(|s, _| s.value().map(|_| ()))
            .expect_err("no colon");
        assert!(err.to_string().contains("byte 5"), "{err}");
        assert!(
            Scanner::new(br#"{"a": [1, 2"#)
                .object(|s, _| s.value().map(|_| ()))
                .is_err()
        );
    }

    #[test]
    fn framer_finds_objects_across_chunks() {
        let stream = b" {\"type\":\"ADDED\",\"object\":{\"s\":\"}{\\\"\"}}\n{\"x\":[]}";
        // feed byte by byte into a growing buffer
        let mut framer = JsonFramer::default();
        let mut buf = Vec::new();
        let mut frames = Vec::new();
        for &b in stream.iter() {
            buf.push(b);
            if let Some(end) = framer.scan(&buf).expect("scans") {
                frames.push(String::from_utf8(buf.drain(..end).collect()).expect("utf8"));
            }
        }
        assert_eq!(
            frames,
            [
                " {\"type\":\"ADDED\",\"object\":{\"s\":\"}{\\\"\"}}",
                "\n{\"x\":[]}"
            ]
        );
        assert!(framer.idle());
        assert!(JsonFramer::default().scan(b"[1]").is_err());
    }
}

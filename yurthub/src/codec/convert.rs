//! Schema-driven conversion between Kubernetes JSON and protobuf.
//!
//! Kubernetes JSON is not the proto3 JSON mapping: int64 values are JSON numbers,
//! byte fields are base64 strings, Go embedded structs are inlined, and a handful of
//! types have their own text form (see [`Special`]). The rules followed here:
//!
//! * JSON → protobuf writes exactly the fields present (and non-null) in the JSON, in
//!   tag order, map entries sorted by key. An explicit zero stays explicit, so pointer
//!   fields keep their meaning (`automountServiceAccountToken: false`); absent fields
//!   decode as zero values in Go, as they do from Go's own encoder. JSON keys the schema
//!   does not know are dropped, as Go's decoder does.
//! * protobuf → JSON writes every field present on the wire, including the zero values
//!   Go's encoder always emits for non-pointer fields (`"workingDir": ""`). Without
//!   knowing which Go fields are pointers this is the only lossless choice; Go clients
//!   decode the result to the same object. Unknown field numbers are skipped.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Number, Value};

use super::CodecError;
use super::gotime;
use super::schema::{Card, Message, MsgId, Schema, Special, Ty};
use super::wire::{
    self, Fields, WT_FIXED32, WT_FIXED64, WireField, WireValue, begin_len, end_len, put_key,
    put_len_field, put_varint_field,
};

/// Guards against hostile nesting (RawExtension can embed objects recursively).
const MAX_DEPTH: usize = 100;

// ---------------------------------------------------------------------------------------------
// JSON → protobuf

pub(crate) struct Encoder<'s> {
    schema: &'s Schema,
}

impl<'s> Encoder<'s> {
    pub(crate) fn new(schema: &'s Schema) -> Self {
        Encoder { schema }
    }

    /// Appends the fields of message `id` taken from JSON object `obj`.
    pub(crate) fn message(
        &self,
        id: MsgId,
        obj: &Map<String, Value>,
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Result<(), CodecError> {
        if depth > MAX_DEPTH {
            return Err(CodecError::InvalidValue {
                path: String::new(),
                reason: "nesting too deep".to_owned(),
            });
        }
        let msg = self.schema.message(id);
        for field in &msg.fields {
            if field.is_inline() {
                let Ty::Message(child) = field.ty else {
                    continue;
                };
                let start = begin_len(out, field.tag);
                self.message(child, obj, out, depth + 1)?;
                if out.len() == start {
                    out.truncate(start - 1 - wire::varint_len(u64::from(field.tag) << 3));
                } else {
                    end_len(out, start);
                }
                continue;
            }
            let Some(value) = obj.get(field.json) else {
                continue;
            };
            if value.is_null() {
                continue;
            }
            self.field(field.tag, field.card, field.ty, value, out, depth)
                .map_err(|e| e.within(&format_args!(".{}", field.json)))?;
        }
        Ok(())
    }

    fn field(
        &self,
        tag: u32,
        card: Card,
        ty: Ty,
        value: &Value,
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Result<(), CodecError> {
        match card {
            Card::Single => self.value(tag, ty, value, out, depth),
            Card::Repeated => {
                let items = value.as_array().ok_or_else(|| shape("an array"))?;
                for (i, item) in items.iter().enumerate() {
                    if item.is_null() && !matches!(ty, Ty::Message(_)) {
                        return Err(
                            shape("a non-null array element").within(&format_args!("[{i}]"))
                        );
                    }
                    self.value(tag, ty, item, out, depth)
                        .map_err(|e| e.within(&format_args!("[{i}]")))?;
                }
                Ok(())
            }
            Card::Map => {
                let entries = value.as_object().ok_or_else(|| shape("an object"))?;
                let mut keys: Vec<&String> = entries.keys().collect();
                keys.sort_unstable();
                for key in keys {
                    let v = &entries[key];
                    let start = begin_len(out, tag);
                    put_len_field(out, 1, key.as_bytes());
                    if v.is_null() {
                        // Go writes the zero value (an empty message for a zero time).
                        zero_value(2, ty, out);
                    } else {
                        self.value(2, ty, v, out, depth)
                            .map_err(|e| e.within(&format_args!("[{key:?}]")))?;
                    }
                    end_len(out, start);
                }
                Ok(())
            }
        }
    }

    fn value(
        &self,
        tag: u32,
        ty: Ty,
        value: &Value,
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Result<(), CodecError> {
        match ty {
            Ty::String => put_len_field(
                out,
                tag,
                value.as_str().ok_or_else(|| shape("a string"))?.as_bytes(),
            ),
            Ty::Bool => put_varint_field(
                out,
                tag,
                u64::from(value.as_bool().ok_or_else(|| shape("a boolean"))?),
            ),
            Ty::I32 => {
                let v = integer(value)?;
                let v = i32::try_from(v).map_err(|_| invalid(format!("{v} overflows int32")))?;
                put_varint_field(out, tag, i64::from(v) as u64);
            }
            Ty::I64 => put_varint_field(out, tag, integer(value)? as u64),
            Ty::U32 => {
                let v = unsigned(value)?;
                let v = u32::try_from(v).map_err(|_| invalid(format!("{v} overflows uint32")))?;
                put_varint_field(out, tag, u64::from(v));
            }
            Ty::U64 => put_varint_field(out, tag, unsigned(value)?),
            Ty::F64 => {
                put_key(out, tag, WT_FIXED64);
                out.extend_from_slice(
                    &value
                        .as_f64()
                        .ok_or_else(|| shape("a number"))?
                        .to_le_bytes(),
                );
            }
            Ty::F32 => {
                put_key(out, tag, WT_FIXED32);
                out.extend_from_slice(
                    &(value.as_f64().ok_or_else(|| shape("a number"))? as f32).to_le_bytes(),
                );
            }
            Ty::Bytes => {
                let text = value.as_str().ok_or_else(|| shape("a base64 string"))?;
                put_len_field(out, tag, &decode_base64(text)?);
            }
            Ty::Message(id) => {
                let start = begin_len(out, tag);
                self.message_value(id, value, out, depth + 1)?;
                end_len(out, start);
            }
        }
        Ok(())
    }

    /// The body of a message-typed value, honouring the special JSON forms.
    fn message_value(
        &self,
        id: MsgId,
        value: &Value,
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Result<(), CodecError> {
        let msg = self.schema.message(id);
        match msg.special {
            Special::None => {
                let obj = value.as_object().ok_or_else(|| shape("an object"))?;
                self.message(id, obj, out, depth)
            }
            Special::Time | Special::MicroTime => {
                let text = value
                    .as_str()
                    .ok_or_else(|| shape("an RFC 3339 timestamp string"))?;
                let (seconds, nanos) = gotime::parse_rfc3339(text)
                    .ok_or_else(|| invalid(format!("{text:?} is not an RFC 3339 timestamp")))?;
                // Time keeps whole seconds, MicroTime microseconds (as Go's encoders do).
                let nanos = if msg.special == Special::Time {
                    0
                } else {
                    nanos - nanos % 1000
                };
                put_varint_field(out, 1, seconds as u64);
                put_varint_field(out, 2, i64::from(nanos) as u64);
                Ok(())
            }
            Special::Duration => {
                let text = value.as_str().ok_or_else(|| shape("a duration string"))?;
                let nanos = gotime::parse_duration(text)
                    .ok_or_else(|| invalid(format!("{text:?} is not a Go duration")))?;
                put_varint_field(out, 1, nanos as u64);
                Ok(())
            }
            Special::RawJson | Special::RawExtension => {
                put_len_field(out, 1, &serde_json::to_vec(value)?);
                Ok(())
            }
            Special::IntOrString => {
                match value {
                    Value::Number(_) => {
                        let v = integer(value)?;
                        let v = i32::try_from(v)
                            .map_err(|_| invalid(format!("{v} overflows int32")))?;
                        put_varint_field(out, 1, 0);
                        put_varint_field(out, 2, i64::from(v) as u64);
                        put_len_field(out, 3, b"");
                    }
                    Value::String(s) => {
                        put_varint_field(out, 1, 1);
                        put_varint_field(out, 2, 0);
                        put_len_field(out, 3, s.as_bytes());
                    }
                    _ => return Err(shape("an integer or a string")),
                }
                Ok(())
            }
            Special::Quantity => {
                let text = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return Err(shape("a quantity string")),
                };
                put_len_field(out, 1, text.as_bytes());
                Ok(())
            }
            Special::StringList => {
                let items = value
                    .as_array()
                    .ok_or_else(|| shape("an array of strings"))?;
                for item in items {
                    put_len_field(
                        out,
                        1,
                        item.as_str()
                            .ok_or_else(|| shape("an array of strings"))?
                            .as_bytes(),
                    );
                }
                Ok(())
            }
            Special::SchemaOrBool => {
                let schema_id = self.nested_type(msg, 2)?;
                match value {
                    Value::Bool(b) => put_varint_field(out, 1, u64::from(*b)),
                    Value::Object(_) => {
                        put_varint_field(out, 1, 1);
                        self.value(2, Ty::Message(schema_id), value, out, depth)?;
                    }
                    _ => return Err(shape("a boolean or a schema object")),
                }
                Ok(())
            }
            Special::SchemaOrArray => {
                let schema_id = self.nested_type(msg, 1)?;
                match value {
                    Value::Object(_) => self.value(1, Ty::Message(schema_id), value, out, depth),
                    Value::Array(items) => {
                        for (i, item) in items.iter().enumerate() {
                            self.value(2, Ty::Message(schema_id), item, out, depth)
                                .map_err(|e| e.within(&format_args!("[{i}]")))?;
                        }
                        Ok(())
                    }
                    _ => Err(shape("a schema object or an array of schemas")),
                }
            }
            Special::SchemaOrStringArray => {
                let schema_id = self.nested_type(msg, 1)?;
                match value {
                    Value::Object(_) => self.value(1, Ty::Message(schema_id), value, out, depth),
                    Value::Array(items) => {
                        for item in items {
                            put_len_field(
                                out,
                                2,
                                item.as_str()
                                    .ok_or_else(|| shape("an array of strings"))?
                                    .as_bytes(),
                            );
                        }
                        Ok(())
                    }
                    _ => Err(shape("a schema object or an array of strings")),
                }
            }
        }
    }

    fn nested_type(&self, msg: &Message, tag: u32) -> Result<MsgId, CodecError> {
        match msg.field(tag).map(|f| f.ty) {
            Some(Ty::Message(id)) => Ok(id),
            _ => Err(CodecError::Schema {
                line: 0,
                reason: format!("{} lacks message field {tag}", msg.name),
            }),
        }
    }
}

/// The protobuf zero value of a field, as Go's encoder writes it.
fn zero_value(tag: u32, ty: Ty, out: &mut Vec<u8>) {
    match ty {
        Ty::String | Ty::Bytes | Ty::Message(_) => put_len_field(out, tag, b""),
        Ty::Bool | Ty::I32 | Ty::I64 | Ty::U32 | Ty::U64 => put_varint_field(out, tag, 0),
        Ty::F64 => {
            put_key(out, tag, WT_FIXED64);
            out.extend_from_slice(&0f64.to_le_bytes());
        }
        Ty::F32 => {
            put_key(out, tag, WT_FIXED32);
            out.extend_from_slice(&0f32.to_le_bytes());
        }
    }
}

fn shape(expected: &'static str) -> CodecError {
    CodecError::JsonShape {
        path: String::new(),
        expected,
    }
}

fn invalid(reason: String) -> CodecError {
    CodecError::InvalidValue {
        path: String::new(),
        reason,
    }
}

fn integer(value: &Value) -> Result<i64, CodecError> {
    if let Some(v) = value.as_i64() {
        return Ok(v);
    }
    match value.as_f64() {
        Some(f) if f.fract() == 0.0 && f >= i64::MIN as f64 && f <= i64::MAX as f64 => Ok(f as i64),
        _ => Err(shape("an integer")),
    }
}

fn unsigned(value: &Value) -> Result<u64, CodecError> {
    value
        .as_u64()
        .ok_or_else(|| shape("a non-negative integer"))
}

fn decode_base64(text: &str) -> Result<Vec<u8>, CodecError> {
    // Go's decoder skips line breaks inside base64 text.
    let cleaned: std::borrow::Cow<'_, str> = if text.contains(['\r', '\n']) {
        text.replace(['\r', '\n'], "").into()
    } else {
        text.into()
    };
    BASE64
        .decode(cleaned.as_bytes())
        .map_err(|e| invalid(format!("invalid base64: {e}")))
}

// ---------------------------------------------------------------------------------------------
// protobuf → JSON

pub(crate) struct Decoder<'s> {
    schema: &'s Schema,
}

impl<'s> Decoder<'s> {
    pub(crate) fn new(schema: &'s Schema) -> Self {
        Decoder { schema }
    }

    /// Decodes message `id` into a JSON object.
    pub(crate) fn message(
        &self,
        id: MsgId,
        bytes: &[u8],
        base: usize,
        depth: usize,
    ) -> Result<Map<String, Value>, CodecError> {
        let mut obj = Map::new();
        self.message_into(id, bytes, base, depth, &mut obj)?;
        Ok(obj)
    }

    fn message_into(
        &self,
        id: MsgId,
        bytes: &[u8],
        base: usize,
        depth: usize,
        obj: &mut Map<String, Value>,
    ) -> Result<(), CodecError> {
        if depth > MAX_DEPTH {
            return Err(CodecError::protobuf(base, "nesting too deep"));
        }
        let msg = self.schema.message(id);
        for wf in Fields::at(bytes, base) {
            let wf = wf?;
            let Some(field) = msg.field(wf.tag) else {
                tracing::trace!(
                    message = msg.name,
                    tag = wf.tag,
                    "skipping unknown protobuf field"
                );
                continue;
            };
            if field.is_inline() {
                let Ty::Message(child) = field.ty else {
                    continue;
                };
                self.message_into(child, wf.bytes()?, wf.offset, depth + 1, obj)?;
                continue;
            }
            match field.card {
                Card::Single => {
                    let v = self.value(field.ty, &wf, depth)?;
                    obj.insert(field.json.to_owned(), v);
                }
                Card::Repeated => {
                    let slot = obj
                        .entry(field.json.to_owned())
                        .or_insert_with(|| Value::Array(Vec::new()));
                    let Value::Array(items) = slot else { continue };
                    if let (WireValue::Len(packed), true) = (wf.value, is_packable(field.ty)) {
                        unpack(field.ty, packed, wf.offset, items)?;
                    } else {
                        items.push(self.value(field.ty, &wf, depth)?);
                    }
                }
                Card::Map => {
                    let mut key = String::new();
                    let mut value = None;
                    for entry in wf.message()? {
                        let entry = entry?;
                        match entry.tag {
                            1 => key = String::from_utf8_lossy(entry.bytes()?).into_owned(),
                            2 => value = Some(self.value(field.ty, &entry, depth)?),
                            _ => {}
                        }
                    }
                    let value = match value {
                        Some(v) => v,
                        None => self.zero(field.ty),
                    };
                    let slot = obj
                        .entry(field.json.to_owned())
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Value::Object(m) = slot {
                        m.insert(key, value);
                    }
                }
            }
        }
        Ok(())
    }

    /// The JSON of an absent map value: Go decodes it as the zero value.
    fn zero(&self, ty: Ty) -> Value {
        match ty {
            Ty::String => Value::String(String::new()),
            Ty::Bytes => Value::String(String::new()),
            Ty::Bool => Value::Bool(false),
            Ty::I32 | Ty::I64 | Ty::U32 | Ty::U64 | Ty::F32 | Ty::F64 => Value::Number(0.into()),
            Ty::Message(id) => self.message_value(id, &[], 0, 0).unwrap_or(Value::Null),
        }
    }

    fn value(&self, ty: Ty, wf: &WireField<'_>, depth: usize) -> Result<Value, CodecError> {
        let wrong = || CodecError::protobuf(wf.offset, "wire type does not match the schema");
        Ok(match (ty, wf.value) {
            (Ty::String, WireValue::Len(b)) => {
                Value::String(String::from_utf8_lossy(b).into_owned())
            }
            (Ty::Bytes, WireValue::Len(b)) => Value::String(BASE64.encode(b)),
            (Ty::Bool, WireValue::Varint(v)) => Value::Bool(v != 0),
            (Ty::I32, WireValue::Varint(v)) => Value::Number((v as i64 as i32).into()),
            (Ty::I64, WireValue::Varint(v)) => Value::Number((v as i64).into()),
            (Ty::U32, WireValue::Varint(v)) => Value::Number((v as u32).into()),
            (Ty::U64, WireValue::Varint(v)) => Value::Number(v.into()),
            (Ty::F64, WireValue::Fixed64(v)) => float(f64::from_bits(v), wf.offset)?,
            (Ty::F32, WireValue::Fixed32(v)) => float(f64::from(f32::from_bits(v)), wf.offset)?,
            (Ty::Message(id), WireValue::Len(b)) => {
                self.message_value(id, b, wf.offset, depth + 1)?
            }
            _ => return Err(wrong()),
        })
    }

    fn message_value(
        &self,
        id: MsgId,
        bytes: &[u8],
        base: usize,
        depth: usize,
    ) -> Result<Value, CodecError> {
        let msg = self.schema.message(id);
        if msg.special == Special::None {
            return Ok(Value::Object(self.message(id, bytes, base, depth)?));
        }
        let fields: Vec<WireField<'_>> = Fields::at(bytes, base).collect::<Result<_, _>>()?;
        let varint = |tag: u32| -> Result<Option<u64>, CodecError> {
            fields
                .iter()
                .rev()
                .find(|f| f.tag == tag)
                .map(|f| f.varint())
                .transpose()
        };
        let len = |tag: u32| -> Result<Option<&[u8]>, CodecError> {
            fields
                .iter()
                .rev()
                .find(|f| f.tag == tag)
                .map(|f| f.bytes())
                .transpose()
        };
        Ok(match msg.special {
            Special::None => Value::Null,
            Special::Time | Special::MicroTime => {
                if bytes.is_empty() {
                    return Ok(Value::Null); // Go's zero time marshals as null
                }
                let seconds = varint(1)?.unwrap_or(0) as i64;
                let nanos = varint(2)?.unwrap_or(0) as i64 as i32;
                if seconds == gotime::GO_ZERO_SECONDS && nanos == 0 {
                    return Ok(Value::Null);
                }
                let text = if msg.special == Special::Time {
                    gotime::format_time(seconds)
                } else {
                    gotime::format_micro_time(seconds, nanos)
                };
                Value::String(
                    text.ok_or_else(|| CodecError::protobuf(base, "timestamp out of range"))?,
                )
            }
            Special::Duration => {
                Value::String(gotime::format_duration(varint(1)?.unwrap_or(0) as i64))
            }
            Special::RawJson | Special::RawExtension => match len(1)? {
                None | Some([]) => Value::Null,
                Some(raw) if wire::is_enveloped(raw) && msg.special == Special::RawExtension => {
                    enveloped_to_json(self.schema, raw, depth + 1)?
                }
                Some(raw) => serde_json::from_slice(raw)
                    .map_err(|_| CodecError::protobuf(base, "raw field does not hold json"))?,
            },
            Special::IntOrString => {
                if varint(1)?.unwrap_or(0) == 1 {
                    Value::String(String::from_utf8_lossy(len(3)?.unwrap_or_default()).into_owned())
                } else {
                    Value::Number((varint(2)?.unwrap_or(0) as i64 as i32).into())
                }
            }
            Special::Quantity => match len(1)? {
                Some(s) if !s.is_empty() => Value::String(String::from_utf8_lossy(s).into_owned()),
                _ => Value::String("0".to_owned()),
            },
            Special::StringList => Value::Array(
                fields
                    .iter()
                    .filter(|f| f.tag == 1)
                    .map(|f| {
                        f.bytes()
                            .map(|b| Value::String(String::from_utf8_lossy(b).into_owned()))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Special::SchemaOrBool => match fields.iter().rev().find(|f| f.tag == 2) {
                Some(f) => self.value(Ty::Message(self.nested_type(msg, 2)?), f, depth)?,
                None => Value::Bool(varint(1)?.unwrap_or(0) != 0),
            },
            Special::SchemaOrArray => {
                let schema_id = self.nested_type(msg, 1)?;
                let many: Vec<&WireField<'_>> = fields.iter().filter(|f| f.tag == 2).collect();
                if !many.is_empty() {
                    Value::Array(
                        many.iter()
                            .map(|f| self.value(Ty::Message(schema_id), f, depth))
                            .collect::<Result<_, _>>()?,
                    )
                } else if let Some(f) = fields.iter().rev().find(|f| f.tag == 1) {
                    self.value(Ty::Message(schema_id), f, depth)?
                } else {
                    Value::Null
                }
            }
            Special::SchemaOrStringArray => {
                let strings: Vec<&WireField<'_>> = fields.iter().filter(|f| f.tag == 2).collect();
                if !strings.is_empty() {
                    Value::Array(
                        strings
                            .iter()
                            .map(|f| {
                                f.bytes()
                                    .map(|b| Value::String(String::from_utf8_lossy(b).into_owned()))
                            })
                            .collect::<Result<_, _>>()?,
                    )
                } else if let Some(f) = fields.iter().rev().find(|f| f.tag == 1) {
                    self.value(Ty::Message(self.nested_type(msg, 1)?), f, depth)?
                } else {
                    Value::Null
                }
            }
        })
    }

    fn nested_type(&self, msg: &Message, tag: u32) -> Result<MsgId, CodecError> {
        match msg.field(tag).map(|f| f.ty) {
            Some(Ty::Message(id)) => Ok(id),
            _ => Err(CodecError::Schema {
                line: 0,
                reason: format!("{} lacks message field {tag}", msg.name),
            }),
        }
    }
}

fn is_packable(ty: Ty) -> bool {
    matches!(
        ty,
        Ty::Bool | Ty::I32 | Ty::I64 | Ty::U32 | Ty::U64 | Ty::F32 | Ty::F64
    )
}

fn unpack(ty: Ty, packed: &[u8], base: usize, items: &mut Vec<Value>) -> Result<(), CodecError> {
    let mut pos = 0;
    while pos < packed.len() {
        let at = base + pos;
        let value = match ty {
            Ty::F64 => {
                let b: [u8; 8] = packed
                    .get(pos..pos + 8)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(|| CodecError::protobuf(at, "truncated packed double"))?;
                pos += 8;
                WireValue::Fixed64(u64::from_le_bytes(b))
            }
            Ty::F32 => {
                let b: [u8; 4] = packed
                    .get(pos..pos + 4)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(|| CodecError::protobuf(at, "truncated packed float"))?;
                pos += 4;
                WireValue::Fixed32(u32::from_le_bytes(b))
            }
            _ => WireValue::Varint(
                wire::read_varint(packed, &mut pos)
                    .ok_or_else(|| CodecError::protobuf(at, "truncated packed varint"))?,
            ),
        };
        let wf = WireField {
            tag: 0,
            value,
            offset: at,
        };
        items.push(match (ty, wf.value) {
            (Ty::Bool, WireValue::Varint(v)) => Value::Bool(v != 0),
            (Ty::I32, WireValue::Varint(v)) => Value::Number((v as i64 as i32).into()),
            (Ty::I64, WireValue::Varint(v)) => Value::Number((v as i64).into()),
            (Ty::U32, WireValue::Varint(v)) => Value::Number((v as u32).into()),
            (Ty::U64, WireValue::Varint(v)) => Value::Number(v.into()),
            (Ty::F64, WireValue::Fixed64(v)) => float(f64::from_bits(v), at)?,
            (Ty::F32, WireValue::Fixed32(v)) => float(f64::from(f32::from_bits(v)), at)?,
            _ => return Err(CodecError::protobuf(at, "unexpected packed type")),
        });
    }
    Ok(())
}

/// A float as Go's encoding/json writes it: integral values without a fraction.
fn float(f: f64, offset: usize) -> Result<Value, CodecError> {
    if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
        return Ok(Value::Number((f as i64).into()));
    }
    Number::from_f64(f)
        .map(Value::Number)
        .ok_or_else(|| CodecError::protobuf(offset, "NaN or infinite float"))
}

// ---------------------------------------------------------------------------------------------
// Whole objects

/// Decodes an enveloped protobuf object into JSON with `apiVersion` and `kind` set.
pub(crate) fn enveloped_to_json(
    schema: &Schema,
    body: &[u8],
    depth: usize,
) -> Result<Value, CodecError> {
    let env = wire::parse_envelope(body)?;
    let id = schema.message_for(env.api_version, env.kind)?;
    let mut obj = Decoder::new(schema).message(id, env.raw, env.raw_offset, depth)?;
    obj.insert(
        "apiVersion".to_owned(),
        Value::String(env.api_version.to_owned()),
    );
    obj.insert("kind".to_owned(), Value::String(env.kind.to_owned()));
    Ok(Value::Object(obj))
}

/// Encodes a JSON object as the message of `api_version`/`kind`, without envelope.
pub(crate) fn json_to_raw(
    schema: &Schema,
    api_version: &str,
    kind: &str,
    obj: &Value,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let id = schema.message_for(api_version, kind)?;
    let map = obj.as_object().ok_or_else(|| shape("an object"))?;
    Encoder::new(schema).message(id, map, out, 0)
}

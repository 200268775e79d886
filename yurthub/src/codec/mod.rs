//! The Kubernetes wire formats: JSON and protobuf bodies, lists, watch streams and
//! content negotiation.
//!
//! This module owns everything that depends on how objects look on the wire:
//! * [`object_info`], [`split_list`], [`WatchDecoder`]: cheap metadata extraction and
//!   splitting for the cache, borrowing from the body, in both formats;
//! * [`Format::encode_object`] / [`Format::decode_object`], [`to_json`],
//!   [`to_protobuf`]: full conversion through a schema table generated from the k8s-pb
//!   and k8s-openapi crates (`cargo xtask gen-proto-schema`), for answering offline in
//!   the format a client accepts;
//! * [`build_list`] / [`list_frames`], [`encode_watch_event`], [`partial_object_metadata`]:
//!   building responses from cached objects;
//! * [`negotiate`]: the apiserver's Accept-header rules;
//! * [`decode_as`] / [`encode_as`] / [`decode_prost`]: typed access for response filters.
//!
//! Protobuf bodies are `k8s\0` + `runtime.Unknown` envelopes (see [`wire`]); list items
//! and watch frames follow apimachinery exactly (see [`split_list`] and [`watch`]).
//! YAML and CBOR are not handled: [`format_for_content_type`] returns `None` for them.

mod convert;
mod error;
mod gotime;
mod info;
mod json_scan;
mod list_encode;
mod list_stream;
mod media;
mod schema;
pub mod watch;
pub mod wire;

#[cfg(test)]
mod tests;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use error::CodecError;
pub use info::{
    ListMeta, ListParts, ObjectInfo, item_info, json_with_type_meta, object_head, object_info,
    partial_object_metadata, split_list,
};
pub use list_encode::{ListFrames, build_list, list_frames};
pub use list_stream::{ListPiece, ListStream};
pub use media::{
    AcceptClause, ApiserverRestrictions, DefaultRestrictions, EndpointRestrictions,
    GroupVersionKind, HubRestrictions, MediaTypeOptions, Negotiated, format_for_content_type,
    negotiate, negotiate_stream, parse_accept,
};
pub use schema::{KindInfo, Scope, builtin_kind, builtin_kinds, kind_for_resource, schema_source};
pub use watch::{EventType, WatchDecoder, WatchEvent, decode_watch_body, encode_watch_event};
pub use wire::{Envelope, envelope, is_enveloped, parse_envelope};

use schema::Schema;

/// A wire format the hub reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    Protobuf,
}

impl Format {
    /// The formats the apiserver offers for built-in kinds, in its preference order.
    pub const BUILTIN: &'static [Format] = &[Format::Json, Format::Protobuf];
    /// Custom resources have no protobuf encoding.
    pub const JSON_ONLY: &'static [Format] = &[Format::Json];

    /// The formats on offer for a kind: both for built-in kinds, JSON otherwise.
    pub fn offered_for(api_version: &str, kind: &str) -> &'static [Format] {
        if builtin_kind(api_version, kind).is_some() {
            Format::BUILTIN
        } else {
            Format::JSON_ONLY
        }
    }

    /// The Content-Type of an object or list body.
    pub const fn media_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Protobuf => "application/vnd.kubernetes.protobuf",
        }
    }

    /// The Content-Type of a watch response (the apiserver adds `;stream=watch` to
    /// every format but JSON).
    pub const fn watch_media_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Protobuf => "application/vnd.kubernetes.protobuf;stream=watch",
        }
    }

    pub(crate) const fn type_subtype(self) -> (&'static str, &'static str) {
        match self {
            Format::Json => ("application", "json"),
            Format::Protobuf => ("application", "vnd.kubernetes.protobuf"),
        }
    }

    /// The format of a body by its first bytes: the protobuf magic, or JSON.
    pub fn sniff(body: &[u8]) -> Format {
        if is_enveloped(body) {
            Format::Protobuf
        } else {
            Format::Json
        }
    }

    /// Encodes a JSON object as a body of this format. JSON output has `apiVersion` and
    /// `kind` set to the given values; protobuf output is enveloped.
    pub fn encode_object(
        self,
        api_version: &str,
        kind: &str,
        object: &Value,
    ) -> Result<Vec<u8>, CodecError> {
        match self {
            Format::Protobuf => to_protobuf(api_version, kind, object),
            Format::Json => {
                let Value::Object(map) = object else {
                    return Err(CodecError::JsonShape {
                        path: String::new(),
                        expected: "an object",
                    });
                };
                let mut map = map.clone();
                map.insert(
                    "apiVersion".to_owned(),
                    Value::String(api_version.to_owned()),
                );
                map.insert("kind".to_owned(), Value::String(kind.to_owned()));
                Ok(serde_json::to_vec(&map)?)
            }
        }
    }

    /// Decodes an object (or list) body of this format into JSON.
    pub fn decode_object(self, body: &[u8]) -> Result<Value, CodecError> {
        match self {
            Format::Protobuf => to_json(body),
            Format::Json => Ok(serde_json::from_slice(body)?),
        }
    }
}

/// Object encoding behind a trait, for components that take the format as a value
/// (the apiserver test double serves both through it).
pub trait ObjectCodec: Send + Sync {
    fn format(&self) -> Format;
    fn encode_object(
        &self,
        api_version: &str,
        kind: &str,
        object: &Value,
    ) -> Result<Vec<u8>, CodecError>;
    fn decode_object(&self, body: &[u8]) -> Result<Value, CodecError>;
}

impl ObjectCodec for Format {
    fn format(&self) -> Format {
        *self
    }

    fn encode_object(
        &self,
        api_version: &str,
        kind: &str,
        object: &Value,
    ) -> Result<Vec<u8>, CodecError> {
        Format::encode_object(*self, api_version, kind, object)
    }

    fn decode_object(&self, body: &[u8]) -> Result<Value, CodecError> {
        Format::decode_object(*self, body)
    }
}

/// Converts an enveloped protobuf object or list into its Kubernetes JSON form, with
/// `apiVersion` and `kind` from the envelope.
pub fn to_json(body: &[u8]) -> Result<Value, CodecError> {
    convert::enveloped_to_json(Schema::get()?, body, 0)
}

/// Converts a bare protobuf message (a list item, no envelope) of the given kind into
/// JSON, without `apiVersion`/`kind`.
pub fn message_to_json(api_version: &str, kind: &str, message: &[u8]) -> Result<Value, CodecError> {
    let schema = Schema::get()?;
    let id = schema.message_for(api_version, kind)?;
    Ok(Value::Object(
        convert::Decoder::new(schema).message(id, message, 0, 0)?,
    ))
}

/// Converts a Kubernetes JSON object into an enveloped protobuf body of the given kind.
pub fn to_protobuf(api_version: &str, kind: &str, object: &Value) -> Result<Vec<u8>, CodecError> {
    let schema = Schema::get()?;
    let mut out = Vec::with_capacity(256);
    wire::write_envelope(&mut out, api_version, kind, |out| {
        convert::json_to_raw(schema, api_version, kind, object, out)
    })?;
    Ok(out)
}

/// Converts a Kubernetes JSON object into the bare protobuf message of the given kind
/// (no envelope), e.g. to build a protobuf list from JSON items.
pub fn json_to_message(
    api_version: &str,
    kind: &str,
    object: &Value,
) -> Result<Vec<u8>, CodecError> {
    let schema = Schema::get()?;
    let mut out = Vec::with_capacity(256);
    convert::json_to_raw(schema, api_version, kind, object, &mut out)?;
    Ok(out)
}

/// Re-encodes an object or list body from one format into the other (`apiVersion` and
/// `kind` are taken from the body).
pub fn convert_body(from: Format, to: Format, body: &[u8]) -> Result<Vec<u8>, CodecError> {
    if from == to {
        return Ok(body.to_vec());
    }
    let value = from.decode_object(body)?;
    let (api_version, kind) = type_meta(&value)?;
    to.encode_object(&api_version, &kind, &value)
}

fn type_meta(value: &Value) -> Result<(String, String), CodecError> {
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if api_version.is_empty() || kind.is_empty() {
        return Err(CodecError::MissingTypeMeta);
    }
    Ok((api_version.to_owned(), kind.to_owned()))
}

/// Decodes a body of either format into a serde type (k8s-openapi types for filters).
/// Protobuf goes through the JSON form, so unknown fields are dropped either way.
pub fn decode_as<T: DeserializeOwned>(format: Format, body: &[u8]) -> Result<T, CodecError> {
    match format {
        Format::Json => Ok(serde_json::from_slice(body)?),
        Format::Protobuf => Ok(serde_json::from_value(to_json(body)?)?),
    }
}

/// Encodes a serde value (a k8s-openapi object) as a body of the given format.
pub fn encode_as<T: Serialize>(
    format: Format,
    api_version: &str,
    kind: &str,
    value: &T,
) -> Result<Vec<u8>, CodecError> {
    format.encode_object(api_version, kind, &serde_json::to_value(value)?)
}

/// [`encode_as`] for a k8s-openapi resource, taking apiVersion and kind from its type.
pub fn encode_resource<T: k8s_openapi::Resource + Serialize>(
    format: Format,
    value: &T,
) -> Result<Vec<u8>, CodecError> {
    encode_as(format, T::API_VERSION, T::KIND, value)
}

/// Decodes an enveloped protobuf body into a k8s-pb (prost) type.
pub fn decode_prost<M: prost::Message + Default>(body: &[u8]) -> Result<M, CodecError> {
    let env = parse_envelope(body)?;
    M::decode(env.raw).map_err(|_| {
        CodecError::protobuf(
            env.raw_offset,
            "message does not decode as the requested type",
        )
    })
}

/// Encodes a k8s-pb (prost) value as an enveloped protobuf body.
pub fn encode_prost<M: prost::Message>(api_version: &str, kind: &str, message: &M) -> Vec<u8> {
    envelope(api_version, kind, &message.encode_to_vec())
}

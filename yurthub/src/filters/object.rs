//! The objects filters work on: the kinds any filter touches, decoded into
//! k8s-openapi types (or JSON for `discovery.k8s.io/v1beta1`, which
//! k8s-openapi no longer models), from and back into both wire formats.

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::codec::{self, CodecError, Format};

/// A kind some filter looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Service,
    EndpointSlice,
    EndpointSliceV1beta1,
    ConfigMap,
    Pod,
}

impl ObjectKind {
    /// The kind of an object by its apiVersion and kind; `None` for kinds no
    /// filter touches (they are passed through undecoded).
    pub fn of(api_version: &str, kind: &str) -> Option<ObjectKind> {
        Some(match (api_version, kind) {
            ("v1", "Service") => ObjectKind::Service,
            ("v1", "ConfigMap") => ObjectKind::ConfigMap,
            ("v1", "Pod") => ObjectKind::Pod,
            ("discovery.k8s.io/v1", "EndpointSlice") => ObjectKind::EndpointSlice,
            ("discovery.k8s.io/v1beta1", "EndpointSlice") => ObjectKind::EndpointSliceV1beta1,
            _ => return None,
        })
    }
}

/// What a filter decided about an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Left as it was (its bytes are kept).
    Unchanged,
    /// Changed in place (it is re-encoded).
    Mutated,
    /// Removed: dropped from lists, turned into DELETED in watches.
    Drop,
}

/// One decoded object of a kind some filter touches.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    /// `discovery.k8s.io/v1beta1` EndpointSlice in its JSON form.
    EndpointSliceV1beta1(Value),
    ConfigMap(Box<ConfigMap>),
    Pod(Box<Pod>),
}

impl Object {
    pub fn kind(&self) -> ObjectKind {
        match self {
            Object::Service(_) => ObjectKind::Service,
            Object::EndpointSlice(_) => ObjectKind::EndpointSlice,
            Object::EndpointSliceV1beta1(_) => ObjectKind::EndpointSliceV1beta1,
            Object::ConfigMap(_) => ObjectKind::ConfigMap,
            Object::Pod(_) => ObjectKind::Pod,
        }
    }

    /// Decodes an object from its JSON form.
    pub fn from_json(kind: ObjectKind, value: Value) -> Result<Object, CodecError> {
        fn typed<T: DeserializeOwned>(value: Value) -> Result<Box<T>, CodecError> {
            Ok(Box::new(serde_json::from_value(value)?))
        }
        Ok(match kind {
            ObjectKind::Service => Object::Service(typed(value)?),
            ObjectKind::EndpointSlice => Object::EndpointSlice(typed(value)?),
            ObjectKind::EndpointSliceV1beta1 => Object::EndpointSliceV1beta1(value),
            ObjectKind::ConfigMap => Object::ConfigMap(typed(value)?),
            ObjectKind::Pod => Object::Pod(typed(value)?),
        })
    }

    /// The JSON form (k8s-openapi types add `apiVersion` and `kind`).
    pub fn to_json(&self) -> Result<Value, CodecError> {
        fn json<T: Serialize>(value: &T) -> Result<Value, CodecError> {
            Ok(serde_json::to_value(value)?)
        }
        match self {
            Object::Service(o) => json(o),
            Object::EndpointSlice(o) => json(o),
            Object::EndpointSliceV1beta1(v) => Ok(v.clone()),
            Object::ConfigMap(o) => json(o),
            Object::Pod(o) => json(o),
        }
    }

    /// Decodes a self-describing object body: a JSON object, or an enveloped
    /// protobuf object (a get response or a watch event's object).
    pub fn decode(kind: ObjectKind, format: Format, body: &[u8]) -> Result<Object, CodecError> {
        Object::from_json(kind, format.decode_object(body)?)
    }

    /// Encodes as a self-describing object body of `format`.
    pub fn encode(
        &self,
        format: Format,
        api_version: &str,
        kind: &str,
    ) -> Result<Vec<u8>, CodecError> {
        format.encode_object(api_version, kind, &self.to_json()?)
    }

    /// Decodes a list item as [`codec::split_list`] returns it: a JSON object,
    /// or a bare protobuf message of the item kind.
    pub fn decode_item(
        kind: ObjectKind,
        format: Format,
        api_version: &str,
        item_kind: &str,
        item: &[u8],
    ) -> Result<Object, CodecError> {
        let value = match format {
            Format::Json => serde_json::from_slice(item)?,
            Format::Protobuf if codec::is_enveloped(item) => codec::to_json(item)?,
            Format::Protobuf => codec::message_to_json(api_version, item_kind, item)?,
        };
        Object::from_json(kind, value)
    }

    /// Encodes as a list item for [`codec::build_list`].
    pub fn encode_item(
        &self,
        format: Format,
        api_version: &str,
        item_kind: &str,
    ) -> Result<Vec<u8>, CodecError> {
        let value = self.to_json()?;
        match format {
            Format::Json => Ok(serde_json::to_vec(&value)?),
            Format::Protobuf => codec::json_to_message(api_version, item_kind, &value),
        }
    }
}

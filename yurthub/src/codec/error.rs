//! Errors of the wire codec.

/// Why a body could not be read, converted or built.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("protobuf body does not start with the k8s\\0 envelope magic")]
    MissingMagic,
    #[error("malformed protobuf at byte {offset}: {reason}")]
    Protobuf { offset: usize, reason: &'static str },
    #[error("malformed json at byte {offset}: {reason}")]
    Json { offset: usize, reason: &'static str },
    #[error("no protobuf schema for kind {kind:?} of apiVersion {api_version:?}")]
    UnknownKind { api_version: String, kind: String },
    #[error("object has no apiVersion and kind")]
    MissingTypeMeta,
    #[error("{kind:?} is not a list kind")]
    NotAList { kind: String },
    #[error("json value at {path} cannot be encoded as {expected}")]
    JsonShape {
        path: String,
        expected: &'static str,
    },
    #[error("value at {path} is invalid: {reason}")]
    InvalidValue { path: String, reason: String },
    #[error("watch event type {0:?} is not one of ADDED, MODIFIED, DELETED, BOOKMARK, ERROR")]
    UnknownEventType(String),
    #[error("watch frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    #[error("watch stream ended inside a frame ({buffered} bytes buffered)")]
    TruncatedStream { buffered: usize },
    #[error("embedded protobuf schema table is corrupt at line {line}: {reason}")]
    Schema { line: usize, reason: String },
    #[error("json (de)serialization failed: {0}")]
    Serde(#[from] serde_json::Error),
}

impl CodecError {
    pub(crate) fn protobuf(offset: usize, reason: &'static str) -> Self {
        CodecError::Protobuf { offset, reason }
    }

    pub(crate) fn json(offset: usize, reason: &'static str) -> Self {
        CodecError::Json { offset, reason }
    }

    /// Prefixes the JSON path of a conversion error with the field or index it came
    /// through, so the message names the full path (`.spec.containers[0].ports[1]`).
    pub(crate) fn within(mut self, segment: &dyn std::fmt::Display) -> Self {
        match &mut self {
            CodecError::JsonShape { path, .. } | CodecError::InvalidValue { path, .. } => {
                *path = format!("{segment}{path}");
            }
            _ => {}
        }
        self
    }
}

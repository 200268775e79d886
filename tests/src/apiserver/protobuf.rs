//! The seam for Kubernetes protobuf. The double never encodes protobuf
//! itself: a codec (the yurthub crate's JSON⇄protobuf codec) is plugged in
//! with `ApiServerBuilder::protobuf`. Without one, protobuf is simply not
//! offered in content negotiation.

use prost::Message;

/// JSON⇄protobuf for whole objects in the `k8s\0` envelope (runtime.Unknown),
/// exactly what `application/vnd.kubernetes.protobuf` bodies carry. Lists
/// (`PodList`, ...) and meta.k8s.io kinds (`Status`, `PartialObjectMetadata`,
/// `PartialObjectMetadataList`) are objects too.
pub trait ProtobufCodec: Send + Sync {
    fn encode_object(
        &self,
        api_version: &str,
        kind: &str,
        obj: &serde_json::Value,
    ) -> Result<Vec<u8>, String>;

    fn decode_object(&self, bytes: &[u8]) -> Result<serde_json::Value, String>;

    /// One watch stream frame: a big-endian u32 length followed by a raw
    /// (un-enveloped) meta.k8s.io/v1 WatchEvent whose `object.raw` is the
    /// enveloped object, as the apiserver's protobuf stream serializer writes.
    fn encode_watch_frame(
        &self,
        event_type: &str,
        api_version: &str,
        kind: &str,
        obj: &serde_json::Value,
    ) -> Result<Vec<u8>, String> {
        use k8s_pb::apimachinery::pkg::apis::meta::v1::WatchEvent;
        use k8s_pb::apimachinery::pkg::runtime::RawExtension;
        let object = self.encode_object(api_version, kind, obj)?;
        let event = WatchEvent {
            r#type: Some(event_type.to_owned()),
            object: Some(RawExtension { raw: Some(object) }),
        };
        let body = event.encode_to_vec();
        let len = u32::try_from(body.len()).map_err(|_| "watch event too large".to_owned())?;
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&body);
        Ok(frame)
    }
}

/// The protobuf codec tests plug into the double: yurthub's schema-driven
/// converter, which is checked byte for byte against Go's encoders on the
/// kubernetes/api fixtures and field by field against the independent k8s-pb
/// prost types, so the double speaks the real wire format.
#[derive(Debug, Clone, Copy, Default)]
pub struct KubeProtobuf;

impl ProtobufCodec for KubeProtobuf {
    fn encode_object(
        &self,
        api_version: &str,
        kind: &str,
        obj: &serde_json::Value,
    ) -> Result<Vec<u8>, String> {
        yurthub::codec::to_protobuf(api_version, kind, obj).map_err(|e| e.to_string())
    }

    fn decode_object(&self, bytes: &[u8]) -> Result<serde_json::Value, String> {
        yurthub::codec::to_json(bytes).map_err(|e| e.to_string())
    }
}

//! Building HTTP responses: bodies, object encoding in the negotiated
//! format (JSON, YAML, or protobuf through the plugged codec), Status error
//! responses, and gzip for large bodies like the apiserver's
//! compressing writer (only above 128 KiB, only if the client asked).

use std::io::Write as _;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use serde_json::Value;

use super::negotiate::{Format, Negotiated};
use super::protobuf::ProtobufCodec;
use super::status::ApiError;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// The apiserver only compresses responses larger than this.
pub const GZIP_THRESHOLD: usize = 128 * 1024;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// A plain response with a content type.
pub fn plain(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

/// JSON with the top-level fields in the order Go's encoder writes them for
/// API objects: the inlined TypeMeta (`kind`, `apiVersion`), then
/// `metadata`, then the rest (a list's `items` come last). serde_json's map
/// is sorted, which would put `items` before `kind`.
fn go_field_order(obj: &Value) -> serde_json::Result<Vec<u8>> {
    let Some(map) = obj.as_object() else {
        return serde_json::to_vec(obj);
    };
    const FIRST: [&str; 3] = ["kind", "apiVersion", "metadata"];
    let mut out = vec![b'{'];
    let fields = FIRST
        .iter()
        .filter_map(|k| map.get_key_value(*k))
        .chain(map.iter().filter(|(k, _)| !FIRST.contains(&k.as_str())));
    for (i, (k, v)) in fields.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, k)?;
        out.push(b':');
        serde_json::to_writer(&mut out, v)?;
    }
    out.push(b'}');
    Ok(out)
}

/// Serializes an object for the negotiated format.
pub fn encode(
    format: Format,
    codec: Option<&dyn ProtobufCodec>,
    obj: &Value,
    pretty: bool,
) -> Result<Vec<u8>, ApiError> {
    match format {
        Format::Json if pretty => serde_json::to_vec_pretty(obj).map_err(ApiError::internal),
        Format::Json => {
            let mut v = go_field_order(obj).map_err(ApiError::internal)?;
            // encoding/json's Encoder terminates every document with a newline.
            v.push(b'\n');
            Ok(v)
        }
        Format::Yaml => serde_yaml::to_string(obj)
            .map(String::into_bytes)
            .map_err(ApiError::internal),
        Format::Protobuf => {
            let codec = codec.ok_or_else(|| ApiError::internal("no protobuf codec configured"))?;
            let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
            let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
            codec
                .encode_object(api_version, kind, obj)
                .map_err(|e| ApiError::internal(format!("protobuf encoding of {kind}: {e}")))
        }
    }
}

/// An object response in the negotiated format.
pub fn object(
    status: StatusCode,
    neg: &Negotiated,
    codec: Option<&dyn ProtobufCodec>,
    obj: &Value,
    request_headers: &HeaderMap,
) -> Response<Body> {
    match encode(neg.format, codec, obj, neg.pretty) {
        Ok(bytes) => with_gzip(status, &neg.content_type(), bytes, request_headers),
        Err(e) => error(&e, None, None),
    }
}

/// A Status error response. Errors are encoded as JSON unless the client
/// negotiated protobuf and a codec can encode the Status.
pub fn error(
    err: &ApiError,
    neg: Option<&Negotiated>,
    codec: Option<&dyn ProtobufCodec>,
) -> Response<Body> {
    let status = StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = err.to_status();
    let mut resp = match (neg.map(|n| n.format), codec) {
        (Some(Format::Protobuf), Some(codec)) => match codec.encode_object("v1", "Status", &body) {
            Ok(bytes) => plain(status, super::negotiate::PROTOBUF, bytes),
            Err(_) => json_response(status, &body),
        },
        (Some(Format::Yaml), _) => match serde_yaml::to_string(&body) {
            Ok(s) => plain(status, super::negotiate::YAML, s),
            Err(_) => json_response(status, &body),
        },
        _ => json_response(status, &body),
    };
    if let Some(secs) = err.retry_after
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

pub fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes.push(b'\n');
    plain(status, "application/json", bytes)
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|enc| {
            enc.split(';')
                .next()
                .is_some_and(|e| e.trim().eq_ignore_ascii_case("gzip"))
        })
}

fn with_gzip(
    status: StatusCode,
    content_type: &str,
    bytes: Vec<u8>,
    request_headers: &HeaderMap,
) -> Response<Body> {
    if bytes.len() > GZIP_THRESHOLD && accepts_gzip(request_headers) {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        if enc.write_all(&bytes).is_ok()
            && let Ok(compressed) = enc.finish()
        {
            let mut resp = plain(status, content_type, compressed);
            resp.headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            resp.headers_mut()
                .append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
            return resp;
        }
    }
    plain(status, content_type, bytes)
}

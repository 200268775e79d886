//! `metav1.Status` error responses, shaped as the kube-apiserver writes them,
//! so client-go turns them into typed errors (IsNotFound, IsServiceUnavailable…).

use http::{Response, StatusCode, header};
use serde_json::json;

use crate::{Body, full_body};

/// Builds a Status response. `reason` is the apiserver's StatusReason
/// ("NotFound", "ServiceUnavailable", ...).
pub fn status(code: StatusCode, reason: &str, message: impl Into<String>) -> Response<Body> {
    status_with_details(code, reason, message, None)
}

pub fn status_with_details(
    code: StatusCode,
    reason: &str,
    message: impl Into<String>,
    details: Option<serde_json::Value>,
) -> Response<Body> {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message.into(),
        "reason": reason,
        "code": code.as_u16(),
    });
    if let Some(d) = details {
        body["details"] = d;
    }
    let mut resp = Response::new(full_body(body.to_string()));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

pub fn bad_request(message: impl Into<String>) -> Response<Body> {
    status(StatusCode::BAD_REQUEST, "BadRequest", message)
}

pub fn bad_gateway(message: impl Into<String>) -> Response<Body> {
    status(StatusCode::BAD_GATEWAY, "InternalError", message)
}

pub fn service_unavailable(message: impl Into<String>) -> Response<Body> {
    status(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        message,
    )
}

pub fn too_large(limit: u64) -> Response<Body> {
    status(
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
        format!("the request body is larger than the limit of {limit} bytes"),
    )
}

/// 429 with `Retry-After`, as the apiserver answers past its in-flight
/// limits; client-go waits that long and retries.
pub fn too_many_requests(message: impl Into<String>) -> Response<Body> {
    let mut resp = status_with_details(
        StatusCode::TOO_MANY_REQUESTS,
        "TooManyRequests",
        message,
        Some(json!({ "retryAfterSeconds": 1 })),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    resp
}

/// 401, as the apiserver answers a request it cannot authenticate.
pub fn unauthorized(message: impl Into<String>) -> Response<Body> {
    status(StatusCode::UNAUTHORIZED, "Unauthorized", message)
}

/// 403 for an offline request the cloud never authorized for this identity.
pub fn forbidden_offline(info: &super::RequestInfo) -> Response<Body> {
    let resource = if info.group.is_empty() {
        info.resource.to_string()
    } else {
        format!("{}.{}", info.resource, info.group)
    };
    let scope = if info.namespace.is_empty() {
        "at the cluster scope".to_owned()
    } else {
        format!("in the namespace {:?}", info.namespace)
    };
    status_with_details(
        StatusCode::FORBIDDEN,
        "Forbidden",
        format!(
            "the cloud is unreachable and never authorized this identity to {} {resource:?} {scope}; \
             offline, the hub answers only what the cloud authorized for the same identity",
            info.verb
        ),
        Some(json!({"name": info.name, "group": info.group, "kind": info.resource})),
    )
}

//! metav1.Status error bodies, built with the same messages, reasons and
//! details as k8s.io/apimachinery/pkg/api/errors.

use serde_json::{Map, Value, json};

/// A group-qualified resource ("pods", "leases.coordination.k8s.io").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupResource {
    pub group: String,
    pub resource: String,
}

impl GroupResource {
    pub fn new(group: &str, resource: &str) -> Self {
        Self {
            group: group.to_owned(),
            resource: resource.to_owned(),
        }
    }
}

impl std::fmt::Display for GroupResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

/// An API error that renders as a metav1.Status.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// Boxed to keep `Result<_, ApiError>` small.
    pub details: Option<Box<Value>>,
    /// `metadata.continue` of the Status (set on an expired continue token).
    pub continue_token: Option<String>,
    pub retry_after: Option<u64>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

fn resource_details(gr: &GroupResource, name: &str) -> Value {
    let mut d = Map::new();
    if !name.is_empty() {
        d.insert("name".into(), json!(name));
    }
    if !gr.group.is_empty() {
        d.insert("group".into(), json!(gr.group));
    }
    if !gr.resource.is_empty() {
        d.insert("kind".into(), json!(gr.resource));
    }
    Value::Object(d)
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
            continue_token: None,
            retry_after: None,
        }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    pub fn not_found(gr: &GroupResource, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{gr} {name:?} not found"))
            .with_details(resource_details(gr, name))
    }

    /// 404 for a path that names no resource.
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    pub fn already_exists(gr: &GroupResource, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{gr} {name:?} already exists"),
        )
        .with_details(resource_details(gr, name))
    }

    pub fn conflict(gr: &GroupResource, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {gr} {name:?}: {why}"),
        )
        .with_details(resource_details(gr, name))
    }

    /// The optimistic-concurrency conflict of an update with a stale resourceVersion.
    pub fn stale(gr: &GroupResource, name: &str) -> Self {
        Self::conflict(
            gr,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 422 Invalid: `kind` is the object's Kind (qualified with its group).
    pub fn invalid(
        kind: &str,
        group: &str,
        name: &str,
        field: &str,
        reason: &str,
        detail: &str,
    ) -> Self {
        let qualified = if group.is_empty() {
            kind.to_owned()
        } else {
            format!("{kind}.{group}")
        };
        let cause_message = format!("{}: {detail}", cause_prefix(reason));
        let mut details = resource_details(&GroupResource::new(group, kind), name);
        if let Some(d) = details.as_object_mut() {
            d.insert(
                "causes".into(),
                json!([{"reason": reason, "message": cause_message, "field": field}]),
            );
        }
        Self::new(
            422,
            "Invalid",
            format!("{qualified} {name:?} is invalid: {field}: {cause_message}"),
        )
        .with_details(details)
    }

    pub fn forbidden(gr: &GroupResource, name: &str, why: &str) -> Self {
        let message = if gr.resource.is_empty() {
            format!("forbidden: {why}")
        } else if name.is_empty() {
            format!("{gr} is forbidden: {why}")
        } else {
            format!("{gr} {name:?} is forbidden: {why}")
        };
        Self::new(403, "Forbidden", message).with_details(resource_details(gr, name))
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn method_not_supported(gr: &GroupResource, action: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!(
                "{action} is not supported on resources of kind {:?}",
                gr.to_string()
            ),
        )
        .with_details(resource_details(gr, ""))
    }

    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(406, "NotAcceptable", message)
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }

    /// 410 Gone, reason Expired.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn timeout(message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(504, "Timeout", message)
            .with_details(json!({"retryAfterSeconds": retry_after}));
        e.retry_after = Some(retry_after);
        e
    }

    /// The storage layer's "Too large resource version" error.
    pub fn too_large_resource_version(requested: u64, current: u64) -> Self {
        let mut e = Self::timeout(
            format!("Too large resource version: {requested}, current: {current}"),
            1,
        );
        if let Some(d) = e.details.as_deref_mut().and_then(Value::as_object_mut) {
            d.insert(
                "causes".into(),
                json!([{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}]),
            );
        }
        e
    }

    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
        )
        .with_details(json!({"causes": [{"message": message.to_string()}]}))
    }

    /// A Status for an arbitrary HTTP code (fault injection), with the
    /// reason apimachinery would pick for that code.
    pub fn for_code(code: u16) -> Self {
        let (reason, message) = match code {
            400 => (
                "BadRequest",
                "the server rejected our request for an unknown reason",
            ),
            401 => (
                "Unauthorized",
                "the server has asked for the client to provide credentials",
            ),
            403 => (
                "Forbidden",
                "the server does not allow access to the requested resource",
            ),
            404 => (
                "NotFound",
                "the server could not find the requested resource",
            ),
            409 => ("Conflict", "the server reported a conflict"),
            405 => (
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            ),
            // What a real server sends with 410: an expired resourceVersion.
            410 => ("Expired", "too old resource version"),
            429 => (
                "TooManyRequests",
                "the server has received too many requests and has asked us to try again later",
            ),
            500 => ("InternalError", "Internal error occurred: injected fault"),
            503 => (
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            ),
            504 => (
                "Timeout",
                "the server was unable to return a response in the time allotted, but may still be processing the request",
            ),
            _ => ("", "unknown"),
        };
        let mut e = Self::new(code, reason, message);
        if matches!(code, 429 | 503) {
            e.retry_after = Some(1);
            e.details = Some(Box::new(json!({"retryAfterSeconds": 1})));
        }
        e
    }

    /// The metav1.Status body.
    pub fn to_status(&self) -> Value {
        let mut metadata = Map::new();
        if let Some(c) = &self.continue_token {
            metadata.insert("continue".into(), json!(c));
        }
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": metadata,
            "status": "Failure",
            "message": self.message,
            "code": self.code,
        });
        if let Some(obj) = status.as_object_mut() {
            if !self.reason.is_empty() {
                obj.insert("reason".into(), json!(self.reason));
            }
            if let Some(d) = &self.details {
                obj.insert("details".into(), (**d).clone());
            }
        }
        status
    }
}

fn cause_prefix(reason: &str) -> &'static str {
    match reason {
        "FieldValueRequired" => "Required value",
        "FieldValueInvalid" => "Invalid value",
        "FieldValueNotSupported" => "Unsupported value",
        "FieldValueForbidden" => "Forbidden",
        "FieldValueDuplicate" => "Duplicate value",
        _ => "Invalid value",
    }
}

/// The Status a successful delete returns for resources that do not return
/// the deleted object.
pub fn success_status(gr: &GroupResource, name: &str, uid: &str) -> Value {
    let mut details = resource_details(gr, name);
    if let Some(d) = details.as_object_mut()
        && !uid.is_empty()
    {
        d.insert("uid".into(), json!(uid));
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_matches_apimachinery() {
        let e = ApiError::not_found(&GroupResource::new("coordination.k8s.io", "leases"), "n1");
        assert_eq!(
            e.to_status(),
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "leases.coordination.k8s.io \"n1\" not found",
                "reason": "NotFound",
                "details": {"name": "n1", "group": "coordination.k8s.io", "kind": "leases"},
                "code": 404
            })
        );
    }

    #[test]
    fn conflict_message() {
        let e = ApiError::stale(&GroupResource::new("", "configmaps"), "c");
        assert_eq!(
            e.message,
            "Operation cannot be fulfilled on configmaps \"c\": the object has been modified; please apply your changes to the latest version and try again"
        );
        assert_eq!(e.code, 409);
    }
}

//! The hub server (default 127.0.0.1:10267): liveness, readiness with real
//! reasons, Prometheus metrics, and JSON status documents other modules
//! contribute (e.g. `/v1/redirect`). A plain path match: there are few
//! endpoints and no router is needed.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use prometheus_client::registry::Registry;
use serde_json::Value;

use crate::{Body, full_body};

type Check = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Readiness: the conjunction of named checks, each returning the reason it
/// is not ready (or None). The first failing reason is reported.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<Check>,
}

impl Readiness {
    pub fn add(&mut self, check: impl Fn() -> Option<String> + Send + Sync + 'static) {
        self.checks.push(Arc::new(check));
    }

    pub fn not_ready_reason(&self) -> Option<String> {
        self.checks.iter().find_map(|c| c())
    }
}

/// A JSON document served at a path (e.g. `/v1/redirect`).
pub type StatusDoc = Arc<dyn Fn() -> Value + Send + Sync>;

#[derive(Clone)]
pub struct HubServer {
    readiness: Readiness,
    registry: Arc<Registry>,
    docs: Arc<BTreeMap<String, StatusDoc>>,
}

impl HubServer {
    pub fn new(
        readiness: Readiness,
        registry: Arc<Registry>,
        docs: BTreeMap<String, StatusDoc>,
    ) -> HubServer {
        HubServer {
            readiness,
            registry,
            docs: Arc::new(docs),
        }
    }

    pub async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Body> {
        let path = req.uri().path();
        let known = matches!(path, "/v1/healthz" | "/v1/readyz" | "/metrics")
            || self.docs.contains_key(path);
        if !known {
            return text(StatusCode::NOT_FOUND, "404 page not found\n");
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        match path {
            "/v1/healthz" => text(StatusCode::OK, "OK"),
            "/v1/readyz" => match self.readiness.not_ready_reason() {
                None => text(StatusCode::OK, "OK"),
                Some(reason) => text(StatusCode::INTERNAL_SERVER_ERROR, &reason),
            },
            "/metrics" => {
                let mut r = Response::new(full_body(crate::metrics::encode(&self.registry)));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
                );
                r
            }
            doc => {
                let value = (self.docs[doc])();
                let mut r = Response::new(full_body(
                    serde_json::to_vec_pretty(&value).unwrap_or_default(),
                ));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                r
            }
        }
    }
}

fn text(code: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(full_body(body.to_string()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

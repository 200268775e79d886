//! The hub server (default 127.0.0.1:10267): liveness, readiness with real
//! reasons, Prometheus metrics, and JSON status documents other modules
//! contribute (e.g. `/v1/redirect`), the node's pods (`/pods`, see [`pods`])
//! and, with `--profiling`, CPU profiles (`/debug/pprof/`, see [`profiling`]). A
//! plain path match: there are few endpoints and no router is needed.

pub mod pods;
pub mod profiling;

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use prometheus_client::registry::Registry;
use serde_json::Value;

use crate::request::Readiness;
use crate::{Body, full_body};

/// A JSON document served at a path (e.g. `/v1/redirect`).
pub type StatusDoc = Arc<dyn Fn() -> Value + Send + Sync>;

/// Why `/v1/token` did not take a token.
#[derive(Debug)]
pub enum TokenRejection {
    /// 400: missing, malformed, or not accepted by the cluster.
    Invalid(String),
    /// 500: the cluster could not be asked.
    Failed(String),
}

/// `/v1/token`: replaces the bootstrap token (token mode only).
pub type TokenHandler = Arc<
    dyn Fn(String) -> futures_util::future::BoxFuture<'static, Result<(), TokenRejection>>
        + Send
        + Sync,
>;

#[derive(Clone)]
pub struct HubServer {
    readiness: Readiness,
    registry: Arc<Registry>,
    docs: Arc<BTreeMap<String, StatusDoc>>,
    token: Option<TokenHandler>,
    pods: Option<pods::PodSource>,
    profiling: bool,
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
            token: None,
            pods: None,
            profiling: false,
        }
    }

    /// Serves `POST`/`PUT /v1/token` with `handler`; without one (kubelet
    /// certificate mode) the endpoint says it has no token to update (409;
    /// upstream answers 200 and does nothing).
    pub fn with_token_handler(mut self, handler: Option<TokenHandler>) -> HubServer {
        self.token = handler;
        self
    }

    /// Serves `GET /pods` from `source` (without one, `/pods` is 404).
    pub fn with_pods(mut self, source: Option<pods::PodSource>) -> HubServer {
        self.pods = source;
        self
    }

    /// Serves `/debug/pprof/` (`--profiling`); otherwise those paths are 404.
    pub fn with_profiling(mut self, on: bool) -> HubServer {
        self.profiling = on;
        self
    }

    pub async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Body> {
        let path = req.uri().path();
        if path == "/v1/token" {
            return self.update_token(req).await;
        }
        if self.profiling && (path == "/debug/pprof" || path.starts_with("/debug/pprof/")) {
            if req.method() != Method::GET {
                return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            }
            return profiling::handle(path, req.uri().query()).await;
        }
        let known = matches!(path, "/v1/healthz" | "/v1/readyz" | "/metrics")
            || (path == "/pods" && self.pods.is_some())
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
            "/pods" => self.pods().await,
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

impl HubServer {
    async fn pods(&self) -> Response<Body> {
        let Some(source) = &self.pods else {
            return text(StatusCode::NOT_FOUND, "404 page not found\n");
        };
        match source.pod_list().await {
            Ok(list) => {
                let mut r = Response::new(full_body(list.to_string()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                r
            }
            Err(e) => {
                tracing::warn!(error = %e, "GET /pods failed");
                text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
            }
        }
    }

    async fn update_token(&self, req: Request<hyper::body::Incoming>) -> Response<Body> {
        use http_body_util::{BodyExt, Limited};
        if req.method() != Method::POST && req.method() != Method::PUT {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")),
        };
        let token = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("jointoken")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        if token.trim().is_empty() {
            return text(
                StatusCode::BAD_REQUEST,
                "the body must be JSON {\"jointoken\": \"<token>\"} with a non-empty token",
            );
        }
        let Some(handler) = &self.token else {
            // kubeletcertificate mode: no bootstrap token is used, so taking
            // one would be a lie.
            return text(
                StatusCode::CONFLICT,
                "yurthub runs with --bootstrap-mode=kubeletcertificate and uses kubelet's client \
                 certificate: it has no bootstrap token to update",
            );
        };
        match handler(token).await {
            Ok(()) => text(StatusCode::OK, "update bootstrap token successfully"),
            Err(TokenRejection::Invalid(why)) => text(StatusCode::BAD_REQUEST, &why),
            Err(TokenRejection::Failed(why)) => text(StatusCode::INTERNAL_SERVER_ERROR, &why),
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

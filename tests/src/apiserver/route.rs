//! Request entry: logging, fault injection, authentication (x509 first,
//! then bearer token, like the union authenticator), a default-RBAC-like
//! authorizer for anonymous users, and the RequestInfo-style path parsing
//! that sends each request to health, discovery or a resource handler.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::json;

use super::conn::ConnInfo;
use super::faults::{FaultKind, Truncated, garbage};
use super::rbac;
use super::response::{self, Body};
use super::status::ApiError;
use super::{Auth, RecordedRequest, Shared, User, lock};

/// A parsed request to a resource path.
#[derive(Clone, Debug)]
pub struct ResourcePath {
    pub group: String,
    pub version: String,
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// The legacy `/watch/` path prefix was used.
    pub legacy_watch: bool,
}

/// What a path addresses.
#[derive(Clone, Debug)]
pub enum Target {
    Resource(ResourcePath),
    /// `/api`, `/api/v1`, `/apis`, `/apis/g`, `/apis/g/v`.
    Discovery {
        group: Option<String>,
        version: Option<String>,
        legacy: bool,
    },
    Health(&'static str),
    /// `/.well-known/openid-configuration`.
    OpenIdConfiguration,
    /// `/openid/v1/jwks`.
    Jwks,
    Version,
    Root,
    NotFound,
}

/// Parses a URL path the way k8s.io/apiserver's RequestInfoFactory does.
pub fn parse_path(path: &str) -> Target {
    let parts: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    match parts.as_slice() {
        [] => return Target::Root,
        ["version"] => return Target::Version,
        [".well-known", "openid-configuration"] => return Target::OpenIdConfiguration,
        ["openid", "v1", "jwks"] => return Target::Jwks,
        ["healthz", ..] => return Target::Health("healthz"),
        ["livez", ..] => return Target::Health("livez"),
        ["readyz", ..] => return Target::Health("readyz"),
        ["api"] => {
            return Target::Discovery {
                group: None,
                version: None,
                legacy: true,
            };
        }
        ["api", v] => {
            return Target::Discovery {
                group: Some(String::new()),
                version: Some((*v).to_owned()),
                legacy: true,
            };
        }
        ["apis"] => {
            return Target::Discovery {
                group: None,
                version: None,
                legacy: false,
            };
        }
        ["apis", g] => {
            return Target::Discovery {
                group: Some((*g).to_owned()),
                version: None,
                legacy: false,
            };
        }
        ["apis", g, v] => {
            return Target::Discovery {
                group: Some((*g).to_owned()),
                version: Some((*v).to_owned()),
                legacy: false,
            };
        }
        _ => {}
    }
    let (group, version, mut rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => (String::new(), (*v).to_owned(), rest.to_vec()),
        ["apis", g, v, rest @ ..] => ((*g).to_owned(), (*v).to_owned(), rest.to_vec()),
        _ => return Target::NotFound,
    };
    let mut legacy_watch = false;
    if rest.first() == Some(&"watch") {
        legacy_watch = true;
        rest.remove(0);
    }
    let mut namespace = None;
    if rest.first() == Some(&"namespaces") && rest.len() > 1 {
        namespace = Some(rest[1].to_owned());
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest.drain(..2);
        } else {
            // /namespaces/{name}[/status]: the namespace object itself.
            namespace = None;
        }
    }
    let Some(resource) = rest.first() else {
        return Target::NotFound;
    };
    if rest.len() > 3 {
        return Target::NotFound;
    }
    Target::Resource(ResourcePath {
        group,
        version,
        resource: (*resource).to_owned(),
        namespace,
        name: rest.get(1).map(|s| (*s).to_owned()),
        subresource: rest.get(2).map(|s| (*s).to_owned()),
        legacy_watch,
    })
}

/// The authenticated request handed to handlers.
pub struct ApiRequest {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub user: Option<User>,
    /// Taken by handlers that read a body.
    pub body: Option<Incoming>,
    /// Present when the client asked for a protocol upgrade (exec, attach).
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// The address the client connected to.
    pub local_addr: Option<std::net::SocketAddr>,
}

impl ApiRequest {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn params(&self, key: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Reads the whole request body.
    pub async fn read_body(&mut self) -> Result<bytes::Bytes, ApiError> {
        use http_body_util::BodyExt as _;
        let Some(body) = self.body.take() else {
            return Ok(bytes::Bytes::new());
        };
        body.collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| ApiError::bad_request(format!("unable to read request body: {e}")))
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

pub async fn handle(shared: Arc<Shared>, info: ConnInfo, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let raw_query = req.uri().query().unwrap_or("").to_owned();
    let headers = req.headers().clone();
    let bearer = header_str(&headers, header::AUTHORIZATION)
        .and_then(|h| h.strip_prefix("Bearer ").map(|t| t.trim().to_owned()));
    let auth = match (&bearer, &info.client_cert) {
        (Some(t), _) => Auth::Bearer(t.clone()),
        (None, Some((cn, orgs))) => Auth::ClientCert {
            cn: cn.clone(),
            orgs: orgs.clone(),
        },
        (None, None) => Auth::Anonymous,
    };
    let is_h2 = req.version() == http::Version::HTTP_2;
    lock(&shared.log).push(RecordedRequest {
        method: method.to_string(),
        path: path.clone(),
        query: raw_query.clone(),
        user_agent: header_str(&headers, header::USER_AGENT),
        auth,
        client_cert: info.client_cert.clone(),
        client_cert_serial: info.client_cert_serial.clone(),
        http_version: if is_h2 { "HTTP/2.0" } else { "HTTP/1.1" }.to_owned(),
        accept: header_str(&headers, header::ACCEPT),
        content_type: header_str(&headers, header::CONTENT_TYPE),
    });
    tracing::debug!(%method, %path, query = %raw_query, "request");

    let mut truncate = None;
    let mut stall = false;
    let mut trickle = None;
    match shared.faults.take(method.as_str(), &path) {
        Some(FaultKind::Garbage) => {
            info.poison.set(garbage());
            return response::plain(StatusCode::OK, "text/plain", "poisoned");
        }
        Some(FaultKind::Hang) => std::future::pending::<()>().await,
        Some(FaultKind::Delay(d)) => tokio::time::sleep(d).await,
        Some(FaultKind::Trickle { chunk, every }) => trickle = Some((chunk, every)),
        Some(FaultKind::Status(code)) => {
            return response::error(&ApiError::for_code(code), None, None);
        }
        Some(FaultKind::CloseMidStream { after_bytes }) => truncate = Some(after_bytes),
        Some(FaultKind::StallMidStream { after_bytes }) => {
            truncate = Some(after_bytes);
            stall = true;
        }
        None => {}
    }

    // Authentication: a verified client certificate wins, then the token.
    let user = if let Some((cn, orgs)) = &info.client_cert {
        Some(User {
            name: cn.clone(),
            groups: orgs.clone(),
        })
    } else if let Some(token) = &bearer {
        match shared.lookup_token(token) {
            Some(u) => Some(u),
            None => return response::error(&ApiError::unauthorized(), None, None),
        }
    } else {
        None
    };

    let query: Vec<(String, String)> = form_urlencoded::parse(raw_query.as_bytes())
        .into_owned()
        .collect();
    let mut req = req;
    let wants_upgrade = headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"));
    let upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut req));
    let target = parse_path(&path);
    let req = ApiRequest {
        method,
        path,
        query,
        headers,
        user,
        body: Some(req.into_body()),
        upgrade,
        local_addr: info.local,
    };

    let mut resp = match authorize(&shared, &req, &target) {
        Err(e) => response::error(&e, None, None),
        Ok(()) => dispatch(&shared, req, target).await,
    };
    // Every apiserver response carries these (WithCacheControl, WithAuditInit).
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let h = resp.headers_mut();
        // WithCacheControl sets it before the handler, which may override it.
        if !h.contains_key(header::CACHE_CONTROL) {
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache, private"),
            );
        }
        if let Ok(v) = HeaderValue::from_str(&super::objects::new_uid()) {
            h.insert("audit-id", v);
        }
    }
    if let Some((chunk, every)) = trickle {
        let (parts, body) = resp.into_parts();
        resp = Response::from_parts(
            parts,
            http_body_util::BodyExt::boxed_unsync(super::faults::Trickle::new(body, chunk, every)),
        );
    }
    match truncate {
        Some(limit) => {
            let (parts, body) = resp.into_parts();
            let mut resp = Response::from_parts(
                parts,
                http_body_util::BodyExt::boxed_unsync(if stall {
                    Truncated::stalling(body, limit)
                } else {
                    Truncated::new(body, limit)
                }),
            );
            resp.headers_mut().remove(header::CONTENT_LENGTH);
            resp
        }
        None => resp,
    }
}

/// Authenticated users go through the RBAC policy (allow-all unless
/// restricted); default RBAC lets unauthenticated users see only version
/// and health (and the issuer documents if granted to them).
fn authorize(shared: &Shared, req: &ApiRequest, target: &Target) -> Result<(), ApiError> {
    let attrs = rbac::Attributes::of(req, target);
    if let Some(user) = &req.user {
        return if lock(&shared.policy).allows(user, &attrs) {
            Ok(())
        } else {
            Err(rbac::forbidden(&user.name, &attrs))
        };
    }
    if shared.allow_anonymous {
        return Ok(());
    }
    match target {
        Target::Version | Target::Health(_) => Ok(()),
        Target::OpenIdConfiguration | Target::Jwks
            if attrs.verb == "get"
                && ["system:anonymous", "system:unauthenticated"]
                    .iter()
                    .any(|s| lock(&shared.policy).issuer_discovery.contains(*s)) =>
        {
            Ok(())
        }
        // kubeadm's kubeadm:bootstrap-signer-clusterinfo Role: token
        // discovery reads cluster-info anonymously.
        Target::Resource(rp)
            if attrs.verb == "get"
                && rp.group.is_empty()
                && rp.resource == "configmaps"
                && rp.subresource.is_none()
                && rp.namespace.as_deref() == Some("kube-public")
                && rp.name.as_deref() == Some("cluster-info") =>
        {
            Ok(())
        }
        _ => Err(rbac::forbidden("system:anonymous", &attrs)),
    }
}

/// The authorization verb of a request.
pub fn verb_of(req: &ApiRequest, target: &Target) -> &'static str {
    let named = matches!(target, Target::Resource(rp) if rp.name.is_some());
    let watch = req.param("watch").is_some_and(|v| v == "true" || v == "1")
        || matches!(target, Target::Resource(rp) if rp.legacy_watch);
    match req.method {
        Method::GET | Method::HEAD if watch => "watch",
        Method::GET | Method::HEAD if named || !matches!(target, Target::Resource(_)) => "get",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "",
    }
}

async fn dispatch(shared: &Arc<Shared>, req: ApiRequest, target: Target) -> Response<Body> {
    match target {
        Target::Version => response::json_response(StatusCode::OK, &version_info()),
        Target::OpenIdConfiguration | Target::Jwks if req.method != Method::GET => {
            response::error(&ApiError::for_code(405), None, None)
        }
        Target::OpenIdConfiguration => issuer_document(
            "application/json",
            &shared.issuer.openid_configuration(&format!(
                "https://{}",
                req.local_addr.map_or_else(
                    || format!("127.0.0.1:{}", shared.port.load(Ordering::SeqCst)),
                    |a| a.to_string()
                )
            )),
        ),
        Target::Jwks => issuer_document("application/jwk-set+json", &shared.issuer.jwks()),
        Target::Health(which) => health(shared, which, &req),
        Target::Root => response::json_response(
            StatusCode::OK,
            &super::discovery::root_paths(&shared.registry),
        ),
        Target::Discovery {
            group,
            version,
            legacy,
        } => super::discovery::serve(shared, &req, group.as_deref(), version.as_deref(), legacy),
        Target::NotFound => response::error(&ApiError::no_route(), None, None),
        Target::Resource(rp) => {
            let verb = verb_of(&req, &Target::Resource(rp.clone()));
            super::rest::serve(shared, req, rp, verb).await
        }
    }
}

/// The issuer documents are public and cacheable (routes/openidmetadata.go).
fn issuer_document(content_type: &str, body: &serde_json::Value) -> Response<Body> {
    let mut resp = response::plain(StatusCode::OK, content_type, body.to_string());
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    resp
}

fn health(shared: &Shared, which: &str, req: &ApiRequest) -> Response<Body> {
    let ready = shared.ready.load(Ordering::SeqCst);
    if which == "readyz" && !ready {
        let body = "[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\nreadyz check failed\n";
        return response::plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            body,
        );
    }
    if req.param("verbose").is_some() {
        let body = format!("[+]ping ok\n[+]log ok\n[+]etcd ok\n{which} check passed\n");
        return response::plain(StatusCode::OK, "text/plain; charset=utf-8", body);
    }
    response::plain(StatusCode::OK, "text/plain; charset=utf-8", "ok")
}

fn version_info() -> serde_json::Value {
    json!({
        "major": "1",
        "minor": "34",
        "emulationMajor": "1",
        "emulationMinor": "34",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "33",
        "gitVersion": "v1.34.0",
        "gitCommit": "f28b4c9efbca5c5c0af716d9f2d5702667ee8a45",
        "gitTreeState": "clean",
        "buildDate": "2025-08-27T10:09:56Z",
        "goVersion": "go1.24.6",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(path: &str) -> ResourcePath {
        match parse_path(path) {
            Target::Resource(rp) => rp,
            other => panic!("{path} parsed as {other:?}"),
        }
    }

    #[test]
    fn request_info_paths() {
        let rp = resource("/api/v1/namespaces/default/pods/p1/status");
        assert_eq!(
            (
                rp.namespace.as_deref(),
                rp.resource.as_str(),
                rp.name.as_deref(),
                rp.subresource.as_deref()
            ),
            (Some("default"), "pods", Some("p1"), Some("status"))
        );
        let rp = resource("/api/v1/namespaces/kube-system");
        assert_eq!(
            (rp.resource.as_str(), rp.name.as_deref(), rp.namespace),
            ("namespaces", Some("kube-system"), None)
        );
        let rp = resource("/api/v1/namespaces/ns1/status");
        assert_eq!(
            (
                rp.resource.as_str(),
                rp.name.as_deref(),
                rp.subresource.as_deref()
            ),
            ("namespaces", Some("ns1"), Some("status"))
        );
        let rp = resource("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1");
        assert_eq!(
            (rp.group.as_str(), rp.resource.as_str()),
            ("coordination.k8s.io", "leases")
        );
        let rp = resource("/api/v1/watch/namespaces/default/pods");
        assert!(rp.legacy_watch);
        assert_eq!(rp.namespace.as_deref(), Some("default"));
        let rp = resource("/api/v1/pods");
        assert_eq!((rp.namespace, rp.name), (None, None));
        assert!(matches!(parse_path("/apis/apps"), Target::Discovery { .. }));
        assert!(matches!(parse_path("/openapi/v2"), Target::NotFound));
    }
}

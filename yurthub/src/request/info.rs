//! Resolves a request the way the kube-apiserver's `RequestInfoFactory` does:
//! verb (list vs watch vs get, deletecollection), API group/version,
//! resource, subresource, namespace and name — plus the client component from
//! the User-Agent and the list options, parsed once. Pure: no I/O, so it is
//! tested exhaustively by table.

use std::fmt;

use http::{HeaderMap, Method, Uri};

/// The apiserver's authorization verbs; non-resource requests carry their
/// lower-cased method (`get`, `post`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Verb {
    #[default]
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
    Proxy,
    /// Non-resource POST, PUT, HEAD, OPTIONS and anything else.
    Post,
    Put,
    Head,
    Options,
    Other,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
            Verb::Proxy => "proxy",
            Verb::Post => "post",
            Verb::Put => "put",
            Verb::Head => "head",
            Verb::Options => "options",
            Verb::Other => "",
        }
    }

    /// A read that the cache can answer (get or list).
    pub fn is_read(self) -> bool {
        matches!(self, Verb::Get | Verb::List)
    }

    /// A write the apiserver would persist (create, update, patch).
    pub fn is_write(self) -> bool {
        matches!(self, Verb::Create | Verb::Update | Verb::Patch)
    }

    fn non_resource(method: &Method) -> Verb {
        match *method {
            Method::GET => Verb::Get,
            Method::POST => Verb::Post,
            Method::PUT => Verb::Put,
            Method::PATCH => Verb::Patch,
            Method::DELETE => Verb::Delete,
            Method::HEAD => Verb::Head,
            Method::OPTIONS => Verb::Options,
            _ => Verb::Other,
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Verb {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A path segment or a component name: held inline up to 24 bytes, which
/// nearly all are, so resolving a request allocates for its path alone.
pub type Segment = compact_str::CompactString;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestInfo {
    /// False for non-resource paths such as /version, /api, /healthz.
    pub is_resource: bool,
    pub verb: Verb,
    pub api_prefix: Segment,
    pub group: Segment,
    pub version: Segment,
    pub resource: Segment,
    pub subresource: Segment,
    pub namespace: Segment,
    pub name: Segment,
    /// Lower-cased User-Agent text before the first '/' ("kubelet", "kube-proxy").
    /// A claim the client makes: it scopes caches, it never grants anything.
    pub component: Segment,
    /// The request path (for non-resource requests and logs).
    pub path: String,
    /// The list options, parsed once.
    pub query: Query,
    /// Who is asking: set by the listener's admit phase (anonymous until then).
    pub caller: super::Principal,
}

/// Errors that the apiserver answers with 400.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("invalid request: {verb} requires a resource in {path}")]
    MissingResource { verb: String, path: String },
    #[error("invalid URL escape in the request {part}: {text:?}")]
    InvalidEscape { part: &'static str, text: String },
}

const SPECIAL_VERBS: [&str; 2] = ["proxy", "watch"];
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

impl RequestInfo {
    pub fn resolve(method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<RequestInfo, Error> {
        let path = uri.path();
        // Go's net/http and url.ParseQuery refuse what does not decode.
        check_escapes("path", path)?;
        if let Some(q) = uri.query() {
            check_escapes("query", q)?;
        }
        let query = Query::parse(uri.query());
        let mut info = RequestInfo {
            component: component_from_headers(headers),
            path: path.to_string(),
            verb: Verb::non_resource(method),
            ..RequestInfo::default()
        };
        // The first segments are all that decides: at most 9 are read (the
        // deepest shape is apis/GROUP/VERSION/watch/namespaces/NS/RESOURCE/
        // NAME/SUBRESOURCE), and a longer path's extra segments only make
        // `len()` larger, which no condition below tells apart from 10.
        let mut segments = [""; 10];
        let mut n = 0;
        for p in path
            .split('/')
            .filter(|p| !p.is_empty())
            .take(segments.len())
        {
            segments[n] = p;
            n += 1;
        }
        let parts = &segments[..n];
        if parts.len() < 3 || !(parts[0] == "api" || parts[0] == "apis") {
            info.query = query;
            return Ok(info);
        }
        info.api_prefix = Segment::from(parts[0]);
        let mut cur = &parts[1..];
        if parts[0] == "apis" {
            if cur.len() < 3 {
                info.query = query;
                return Ok(info);
            }
            info.group = Segment::from(cur[0]);
            cur = &cur[1..];
        }
        info.is_resource = true;
        info.version = Segment::from(cur[0]);
        cur = &cur[1..];

        if SPECIAL_VERBS.contains(&cur[0]) {
            if cur.len() < 2 {
                return Err(Error::MissingResource {
                    verb: cur[0].to_string(),
                    path: path.to_string(),
                });
            }
            info.verb = if cur[0] == "proxy" {
                Verb::Proxy
            } else {
                Verb::Watch
            };
            cur = &cur[1..];
        } else {
            info.verb = match *method {
                Method::POST => Verb::Create,
                Method::GET | Method::HEAD => Verb::Get,
                Method::PUT => Verb::Update,
                Method::PATCH => Verb::Patch,
                Method::DELETE => Verb::Delete,
                _ => Verb::Other,
            };
        }

        if cur[0] == "namespaces" && cur.len() > 1 {
            info.namespace = Segment::from(cur[1]);
            if cur.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&cur[2]) {
                cur = &cur[2..];
            }
        }

        if cur.len() >= 3 && info.verb != Verb::Proxy {
            info.subresource = Segment::from(cur[2]);
        }
        if cur.len() >= 2 {
            info.name = Segment::from(cur[1]);
        }
        info.resource = Segment::from(cur[0]);

        if cur.len() == 1 && info.verb == Verb::Get {
            info.verb = if query.watch { Verb::Watch } else { Verb::List };
        }
        if cur.len() == 1 && info.verb == Verb::Delete {
            info.verb = Verb::DeleteCollection;
        }
        if info.is_list_or_watch()
            && info.name.is_empty()
            && let Some(name) = query.field_selector.as_deref().and_then(exact_name_match)
        {
            info.name = name.into();
        }
        info.query = query;
        Ok(info)
    }

    /// The store's scope owner for this request (see [`super::Principal::cache_owner`]).
    pub fn cache_owner(&self) -> String {
        self.caller.cache_owner(&self.component)
    }

    pub fn is_list_or_watch(&self) -> bool {
        matches!(self.verb, Verb::List | Verb::Watch)
    }
}

/// Every `%` starts two hex digits.
fn check_escapes(part: &'static str, text: &str) -> Result<(), Error> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let ok =
                i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit();
            if !ok {
                return Err(Error::InvalidEscape {
                    part,
                    text: text.to_owned(),
                });
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// The list options that routing and caching decide on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Query {
    /// The client's `timeout=` (non-long-running requests), in seconds.
    pub timeout: Option<std::time::Duration>,
    pub dry_run: bool,
    /// `sendInitialEvents=true` (watch-list).
    pub send_initial_events: bool,
    pub allow_watch_bookmarks: bool,
    pub watch: bool,
    pub field_selector: Option<String>,
    pub label_selector: Option<String>,
    pub resource_version: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub limit: Option<u64>,
    pub continue_token: Option<String>,
}

impl Query {
    pub fn parse(query: Option<&str>) -> Query {
        let mut q = Query::default();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "watch" => q.watch = parse_go_bool(&v),
                "fieldSelector" => q.field_selector = Some(v.into_owned()),
                "labelSelector" => q.label_selector = Some(v.into_owned()),
                "resourceVersion" => q.resource_version = Some(v.into_owned()),
                "timeoutSeconds" => q.timeout_seconds = v.parse().ok(),
                "limit" => q.limit = v.parse().ok(),
                "continue" => q.continue_token = Some(v.into_owned()),
                "timeout" => q.timeout = parse_go_duration(&v),
                "dryRun" => q.dry_run = true,
                "sendInitialEvents" => q.send_initial_events = parse_go_bool(&v),
                "allowWatchBookmarks" => q.allow_watch_bookmarks = parse_go_bool(&v),
                _ => {}
            }
        }
        q
    }
}

/// Go's time.ParseDuration for the forms clients send ("30s", "1m30s",
/// "500ms"); None for anything else.
pub fn parse_go_duration(s: &str) -> Option<std::time::Duration> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * scale;
    }
    std::time::Duration::try_from_secs_f64(total).ok()
}

/// Go's strconv.ParseBool, which the apiserver uses for `watch`.
fn parse_go_bool(s: &str) -> bool {
    matches!(s, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

/// `metadata.name=x` / `metadata.name==x` among the selector's terms.
fn exact_name_match(selector: &str) -> Option<String> {
    selector.split(',').find_map(|term| {
        let term = term.trim();
        let value = term
            .strip_prefix("metadata.name==")
            .or_else(|| term.strip_prefix("metadata.name="))?;
        (!value.starts_with('=')).then(|| value.to_string())
    })
}

/// The component a request comes from: the lower-cased User-Agent up to the
/// first '/', e.g. "kubelet/v1.34.0 (linux/amd64)" → "kubelet".
pub fn component_from_headers(headers: &HeaderMap) -> Segment {
    headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(component_from_user_agent)
        .unwrap_or_default()
}

pub fn component_from_user_agent(ua: &str) -> Segment {
    let mut component = Segment::from(ua.split('/').next().unwrap_or("").trim());
    component.make_ascii_lowercase();
    component
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(method: &str, uri: &str) -> RequestInfo {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::USER_AGENT,
            "Kubelet/v1.34.0 (linux/amd64) kubernetes/abc"
                .parse()
                .unwrap(),
        );
        RequestInfo::resolve(&method.parse().unwrap(), &uri.parse().unwrap(), &h).expect("resolves")
    }

    #[test]
    fn table() {
        // (method, uri, verb, group, version, resource, subresource, namespace, name)
        type Case = (
            &'static str,
            &'static str,
            &'static str,
            &'static str,
            &'static str,
            &'static str,
            &'static str,
            &'static str,
            &'static str,
        );
        let cases: &[Case] = &[
            (
                "GET",
                "/api/v1/namespaces/default/pods/p1",
                "get",
                "",
                "v1",
                "pods",
                "",
                "default",
                "p1",
            ),
            (
                "GET",
                "/api/v1/namespaces/default/pods",
                "list",
                "",
                "v1",
                "pods",
                "",
                "default",
                "",
            ),
            (
                "GET",
                "/api/v1/pods?watch=true",
                "watch",
                "",
                "v1",
                "pods",
                "",
                "",
                "",
            ),
            (
                "GET",
                "/api/v1/pods?watch=1&fieldSelector=spec.nodeName%3Dn1",
                "watch",
                "",
                "v1",
                "pods",
                "",
                "",
                "",
            ),
            (
                "GET",
                "/api/v1/watch/namespaces/default/pods",
                "watch",
                "",
                "v1",
                "pods",
                "",
                "default",
                "",
            ),
            (
                "GET",
                "/api/v1/watch/namespaces/default/pods/p1",
                "watch",
                "",
                "v1",
                "pods",
                "",
                "default",
                "p1",
            ),
            (
                "GET",
                "/api/v1/nodes?fieldSelector=metadata.name%3Dn1",
                "list",
                "",
                "v1",
                "nodes",
                "",
                "",
                "n1",
            ),
            (
                "GET",
                "/api/v1/nodes?fieldSelector=metadata.name%3D%3Dn1&watch=true",
                "watch",
                "",
                "v1",
                "nodes",
                "",
                "",
                "n1",
            ),
            (
                "PUT",
                "/api/v1/namespaces/default/pods/p1/status",
                "update",
                "",
                "v1",
                "pods",
                "status",
                "default",
                "p1",
            ),
            (
                "PATCH",
                "/api/v1/nodes/n1/status",
                "patch",
                "",
                "v1",
                "nodes",
                "status",
                "",
                "n1",
            ),
            (
                "POST",
                "/api/v1/namespaces/default/pods/p1/exec",
                "create",
                "",
                "v1",
                "pods",
                "exec",
                "default",
                "p1",
            ),
            (
                "GET",
                "/api/v1/namespaces/default/pods/p1/log",
                "get",
                "",
                "v1",
                "pods",
                "log",
                "default",
                "p1",
            ),
            (
                "DELETE",
                "/api/v1/namespaces/default/pods",
                "deletecollection",
                "",
                "v1",
                "pods",
                "",
                "default",
                "",
            ),
            (
                "DELETE",
                "/api/v1/namespaces/default/pods/p1",
                "delete",
                "",
                "v1",
                "pods",
                "",
                "default",
                "p1",
            ),
            (
                "POST",
                "/api/v1/namespaces/default/events",
                "create",
                "",
                "v1",
                "events",
                "",
                "default",
                "",
            ),
            (
                "GET",
                "/api/v1/namespaces/kube-system",
                "get",
                "",
                "v1",
                "namespaces",
                "",
                "kube-system",
                "kube-system",
            ),
            (
                "PUT",
                "/api/v1/namespaces/ns1/finalize",
                "update",
                "",
                "v1",
                "namespaces",
                "finalize",
                "ns1",
                "ns1",
            ),
            (
                "GET",
                "/api/v1/namespaces",
                "list",
                "",
                "v1",
                "namespaces",
                "",
                "",
                "",
            ),
            (
                "GET",
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1",
                "get",
                "coordination.k8s.io",
                "v1",
                "leases",
                "",
                "kube-node-lease",
                "n1",
            ),
            (
                "GET",
                "/apis/discovery.k8s.io/v1/endpointslices?watch=true",
                "watch",
                "discovery.k8s.io",
                "v1",
                "endpointslices",
                "",
                "",
                "",
            ),
            (
                "GET",
                "/api/v1/proxy/namespaces/default/pods/p1/a/b",
                "proxy",
                "",
                "v1",
                "pods",
                "",
                "default",
                "p1",
            ),
            (
                "GET",
                "/api/v1/namespaces/default/pods/p1/proxy/x",
                "get",
                "",
                "v1",
                "pods",
                "proxy",
                "default",
                "p1",
            ),
            // The deepest shape read (nine segments), and paths longer than
            // the ten segments resolve reads: the extra ones change nothing.
            (
                "GET",
                "/apis/apps/v1/watch/namespaces/kube-system/deployments/coredns/status",
                "watch",
                "apps",
                "v1",
                "deployments",
                "status",
                "kube-system",
                "coredns",
            ),
            (
                "GET",
                "/apis/apps/v1/proxy/namespaces/a/services/s:80/x/y/z/w",
                "proxy",
                "apps",
                "v1",
                "services",
                "",
                "a",
                "s:80",
            ),
            (
                "GET",
                "/api/v1/namespaces/default/pods/p1/proxy/a/b/c/d/e/f/g",
                "get",
                "",
                "v1",
                "pods",
                "proxy",
                "default",
                "p1",
            ),
            (
                "POST",
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                "create",
                "authorization.k8s.io",
                "v1",
                "subjectaccessreviews",
                "",
                "",
                "",
            ),
        ];
        for &(m, u, verb, group, version, resource, sub, ns, name) in cases {
            let i = resolve(m, u);
            assert!(i.is_resource, "{m} {u}");
            assert_eq!(
                (
                    i.verb.as_str(),
                    i.group.as_str(),
                    i.version.as_str(),
                    i.resource.as_str(),
                    i.subresource.as_str(),
                    i.namespace.as_str(),
                    i.name.as_str()
                ),
                (verb, group, version, resource, sub, ns, name),
                "{m} {u}"
            );
            assert_eq!(i.component, "kubelet");
        }
    }

    #[test]
    fn non_resource_paths() {
        for p in [
            "/version",
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps",
            "/apis/apps/v1",
            "/healthz",
            "/openapi/v2",
            "/",
        ] {
            let i = resolve("GET", p);
            assert!(!i.is_resource, "{p}");
            assert_eq!(i.verb, "get");
            assert_eq!(i.path, p);
        }
    }

    #[test]
    fn watch_without_resource_is_an_error() {
        let e = RequestInfo::resolve(
            &Method::GET,
            &"/api/v1/watch".parse().unwrap(),
            &HeaderMap::new(),
        );
        // "/api/v1/watch" has only 3 parts: the apiserver treats `watch` as the special verb and fails.
        assert!(matches!(e, Err(Error::MissingResource { .. })), "{e:?}");
    }

    #[test]
    fn invalid_escapes_are_bad_requests() {
        for u in [
            "/api/v1/namespaces/a/secrets/%zz",
            "/api/v1/pods?labelSelector=%zz",
            "/api/v1/pods?x=%4",
        ] {
            let e = RequestInfo::resolve(&Method::GET, &u.parse().unwrap(), &HeaderMap::new());
            assert!(matches!(e, Err(Error::InvalidEscape { .. })), "{u}: {e:?}");
        }
        assert!(
            RequestInfo::resolve(
                &Method::GET,
                &"/api/v1/pods?labelSelector=a%3Db".parse().unwrap(),
                &HeaderMap::new()
            )
            .is_ok()
        );
    }

    #[test]
    fn go_durations() {
        use std::time::Duration;
        assert_eq!(parse_go_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("30"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn components() {
        assert_eq!(
            component_from_user_agent("kube-proxy/v1.34.1 (linux/amd64) kubernetes/x"),
            "kube-proxy"
        );
        assert_eq!(component_from_user_agent("CoreDNS/1.11"), "coredns");
        assert_eq!(
            component_from_user_agent("Go-http-client/2.0"),
            "go-http-client"
        );
        assert_eq!(component_from_user_agent(""), "");
    }

    #[test]
    fn exact_name_selector_forms() {
        assert_eq!(exact_name_match("metadata.name=a"), Some("a".into()));
        assert_eq!(
            exact_name_match("spec.nodeName=n,metadata.name==b"),
            Some("b".into())
        );
        assert_eq!(exact_name_match("metadata.name!=a"), None);
        assert_eq!(exact_name_match("metadata.namespace=a"), None);
    }
}

//! Proves the apiserver double's semantics over the wire: with a plain
//! hyper+rustls client (HTTP/1.1 and HTTP/2), with kubectl (a real
//! client-go client) and with kube-rs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use yurthub_e2e::apiserver::{
    ApiServer, Auth, Fault, FaultKind, ProtobufCodec, ResourceType, Rule, User,
};

const TOKEN: &str = "test-admin-token";
const STEP: Duration = Duration::from_secs(10);

async fn server() -> ApiServer {
    server_with(ApiServer::builder()).await
}

async fn server_with(b: yurthub_e2e::apiserver::ApiServerBuilder) -> ApiServer {
    tokio::time::timeout(
        STEP,
        b.token(TOKEN, User::new("admin", &["system:masters"]))
            .bookmark_interval(Duration::from_millis(500))
            .start(),
    )
    .await
    .expect("start timed out")
    .expect("double starts")
}

/// A minimal HTTPS client trusting the double's CA.
struct Http {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: String,
    token: Option<String>,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

fn tls_config(api: &ApiServer, client_cert: Option<(String, String)>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut api.ca_pem().as_bytes()) {
        roots.add(c.expect("ca pem")).expect("ca added");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    match client_cert {
        Some((cert, key)) => {
            let certs = rustls_pemfile::certs(&mut cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("client cert");
            let key = rustls_pemfile::private_key(&mut key.as_bytes())
                .expect("key pem")
                .expect("a key");
            builder
                .with_client_auth_cert(certs, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    }
}

impl Http {
    fn new(
        api: &ApiServer,
        token: Option<&str>,
        client_cert: Option<(String, String)>,
        h2: bool,
    ) -> Self {
        let b = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(api, client_cert))
            .https_only();
        let connector = if h2 {
            b.enable_http2().build()
        } else {
            b.enable_http1().build()
        };
        let mut builder = Client::builder(TokioExecutor::new());
        if h2 {
            builder.http2_only(true);
        }
        Self {
            client: builder.build(connector),
            base: api.url(),
            token: token.map(str::to_owned),
        }
    }

    fn admin(api: &ApiServer) -> Self {
        Self::new(api, Some(TOKEN), None, false)
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Request<Full<Bytes>> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("request")
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        let req = self.request(method.clone(), path, headers, body);
        let resp = tokio::time::timeout(STEP, self.client.request(req))
            .await
            .unwrap_or_else(|_| panic!("{method} {path} timed out"))
            .unwrap_or_else(|e| panic!("{method} {path} failed: {e:?}"));
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(STEP, body.collect())
            .await
            .expect("body timed out")
            .expect("body")
            .to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, &[], None).await
    }

    async fn get_accept(&self, path: &str, accept: &str) -> Reply {
        self.send(Method::GET, path, &[("accept", accept)], None)
            .await
    }

    async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(
            Method::POST,
            path,
            &[("content-type", "application/json")],
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    async fn put(&self, path: &str, body: &Value) -> Reply {
        self.send(
            Method::PUT,
            path,
            &[("content-type", "application/json")],
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    async fn patch(&self, path: &str, content_type: &str, body: &Value) -> Reply {
        self.send(
            Method::PATCH,
            path,
            &[("content-type", content_type)],
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    /// Opens a watch and returns a line reader over its events.
    async fn watch(&self, path: &str) -> Watch {
        let req = self.request(Method::GET, path, &[("accept", "application/json")], None);
        let resp = tokio::time::timeout(STEP, self.client.request(req))
            .await
            .expect("watch timed out")
            .expect("watch request");
        assert_eq!(resp.status(), StatusCode::OK, "watch {path}");
        Watch {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }
}

struct Watch {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

impl Watch {
    /// The next event, or None when the stream ends.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(serde_json::from_slice(&line).expect("event is JSON"));
            }
            let frame = tokio::time::timeout(STEP, self.body.frame())
                .await
                .expect("no watch event within the step timeout");
            match frame {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(_)) | None => return None,
            }
        }
    }

    async fn expect(&mut self, what: &str) -> Value {
        self.next()
            .await
            .unwrap_or_else(|| panic!("watch ended before {what}"))
    }

    /// Next event that is not a BOOKMARK.
    async fn next_change(&mut self) -> Value {
        loop {
            let e = self.expect("a change").await;
            if e["type"] != "BOOKMARK" {
                return e;
            }
        }
    }
}

fn cm(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
}

fn pod(name: &str, node: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "pause"}]}
    })
}

fn rv(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .expect("resourceVersion")
        .parse()
        .expect("numeric resourceVersion")
}

const CMS: &str = "/api/v1/namespaces/default/configmaps";
const PODS: &str = "/api/v1/namespaces/default/pods";

#[tokio::test]
async fn anonymous_and_unknown_tokens_get_rbac_like_status() {
    let api = server().await;
    let anon = Http::new(&api, None, None, false);
    let v = anon.get("/version").await;
    assert_eq!(v.status, StatusCode::OK);
    assert_eq!(v.json()["major"], "1");
    assert_eq!(anon.get("/readyz").await.status, StatusCode::OK);
    let forbidden = anon.get(PODS).await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    assert_eq!(
        forbidden.json(),
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "pods is forbidden: User \"system:anonymous\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\"",
            "reason": "Forbidden", "details": {"kind": "pods"}, "code": 403
        })
    );
    let root = anon.get("/api").await;
    assert_eq!(root.status, StatusCode::FORBIDDEN);
    assert_eq!(
        root.json()["message"],
        "forbidden: User \"system:anonymous\" cannot get path \"/api\""
    );
    let bad = Http::new(&api, Some("nope"), None, false).get(PODS).await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        bad.json(),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
    );
    api.set_ready(false);
    assert_eq!(
        anon.get("/readyz").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

#[tokio::test]
async fn client_certificates_authenticate_over_http2_and_are_recorded() {
    let api = server().await;
    let cert = api
        .pki()
        .issue_client_cert("system:node:n1", &["system:nodes", "openyurt:yurthub"])
        .expect("client cert");
    let http = Http::new(&api, None, Some(cert), true);
    let r = http.get(PODS).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let rec = api
        .requests()
        .into_iter()
        .find(|r| r.path == PODS)
        .expect("recorded");
    assert_eq!(rec.http_version, "HTTP/2.0");
    assert_eq!(
        rec.auth,
        Auth::ClientCert {
            cn: "system:node:n1".into(),
            orgs: vec!["system:nodes".into(), "openyurt:yurthub".into()]
        }
    );
    let h1 = Http::admin(&api);
    h1.get(PODS).await;
    let last = api.requests().pop().expect("recorded");
    assert_eq!(last.auth, Auth::Bearer(TOKEN.into()));
    assert_eq!(last.http_version, "HTTP/1.1");
    assert_eq!(last.client_cert, None);
}

#[tokio::test]
async fn crud_conflicts_and_status_bodies() {
    let api = server().await;
    let http = Http::admin(&api);
    let created = http.post(CMS, &cm("a", json!({}))).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let a = created.json();
    assert!(a["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));
    assert!(
        a["metadata"]["creationTimestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert!(rv(&a) > 0);

    let dup = http.post(CMS, &cm("a", json!({}))).await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    assert_eq!(
        dup.json(),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "configmaps \"a\" already exists", "reason": "AlreadyExists",
               "details": {"name": "a", "kind": "configmaps"}, "code": 409})
    );

    let mut updated = a.clone();
    updated["data"]["k"] = json!("v2");
    let ok = http.put(&format!("{CMS}/a"), &updated).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert!(rv(&ok.json()) > rv(&a));
    // The same PUT again carries a stale resourceVersion now.
    let stale = http.put(&format!("{CMS}/a"), &updated).await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    assert_eq!(stale.json()["reason"], "Conflict");
    assert_eq!(
        stale.json()["message"],
        "Operation cannot be fulfilled on configmaps \"a\": the object has been modified; please apply your changes to the latest version and try again"
    );
    // A no-op update does not create a revision.
    let current = ok.json();
    let noop = http.put(&format!("{CMS}/a"), &current).await.json();
    assert_eq!(rv(&noop), rv(&current));

    let missing = http.get(&format!("{CMS}/zzz")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing.json()["details"],
        json!({"name": "zzz", "kind": "configmaps"})
    );
    let lease = http
        .get("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1")
        .await;
    assert_eq!(
        lease.json()["message"],
        "leases.coordination.k8s.io \"n1\" not found"
    );
    assert_eq!(lease.json()["details"]["group"], "coordination.k8s.io");

    let unknown_ns = http
        .post("/api/v1/namespaces/nope/configmaps", &cm("x", json!({})))
        .await;
    assert_eq!(unknown_ns.status, StatusCode::NOT_FOUND);
    assert_eq!(
        unknown_ns.json()["message"],
        "namespaces \"nope\" not found"
    );

    let no_name = http.post(CMS, &json!({"metadata": {}})).await;
    assert_eq!(no_name.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(no_name.json()["reason"], "Invalid");

    let patched = http
        .patch(
            &format!("{CMS}/a"),
            "application/merge-patch+json",
            &json!({"metadata": {"labels": {"p": "1"}}}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK);
    assert_eq!(patched.json()["metadata"]["labels"]["p"], "1");
    let jp = http
        .patch(
            &format!("{CMS}/a"),
            "application/json-patch+json",
            &json!([{"op": "replace", "path": "/data/k", "value": "v3"}]),
        )
        .await;
    assert_eq!(jp.json()["data"]["k"], "v3");

    // ConfigMaps answer a delete with a Success Status, pods with the object.
    let del = http
        .send(Method::DELETE, &format!("{CMS}/a"), &[], None)
        .await;
    assert_eq!(del.status, StatusCode::OK);
    assert_eq!(del.json()["kind"], "Status");
    assert_eq!(del.json()["status"], "Success");
    assert_eq!(del.json()["details"]["name"], "a");
}

#[tokio::test]
async fn status_subresource_splits_spec_and_status() {
    let api = server().await;
    let http = Http::admin(&api);
    let p = http.post(PODS, &pod("p", "", json!({}))).await.json();
    assert_eq!(p["status"]["phase"], "Pending", "create resets status");
    assert_eq!(p["metadata"]["generation"], 1);
    let mut main = p.clone();
    main["status"]["phase"] = json!("Running");
    main["metadata"]["labels"] = json!({"x": "y"});
    let after = http.put(&format!("{PODS}/p"), &main).await.json();
    assert_eq!(
        after["status"]["phase"], "Pending",
        "main resource ignores status"
    );
    assert_eq!(after["metadata"]["labels"]["x"], "y");
    let status = http
        .patch(
            &format!("{PODS}/p/status"),
            "application/strategic-merge-patch+json",
            &json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}),
        )
        .await;
    assert_eq!(
        status.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&status.body)
    );
    assert_eq!(status.json()["status"]["phase"], "Running");
}

#[tokio::test]
async fn pods_on_a_node_are_deleted_gracefully() {
    let api = server().await;
    let http = Http::admin(&api);
    http.post(PODS, &pod("g", "n1", json!({}))).await;
    let first = http
        .send(Method::DELETE, &format!("{PODS}/g"), &[], None)
        .await
        .json();
    assert_eq!(first["kind"], "Pod");
    assert!(first["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(first["metadata"]["deletionGracePeriodSeconds"], 30);
    assert_eq!(
        http.get(&format!("{PODS}/g")).await.status,
        StatusCode::OK,
        "still there"
    );
    let gone = http
        .send(
            Method::DELETE,
            &format!("{PODS}/g?gracePeriodSeconds=0"),
            &[],
            None,
        )
        .await;
    assert_eq!(gone.status, StatusCode::OK);
    assert_eq!(
        http.get(&format!("{PODS}/g")).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn pagination_is_a_consistent_snapshot_across_three_pages() {
    let api = server().await;
    let http = Http::admin(&api);
    http.post(
        "/api/v1/namespaces",
        &json!({"metadata": {"name": "paged"}}),
    )
    .await;
    let base = "/api/v1/namespaces/paged/configmaps";
    for i in 0..7 {
        assert_eq!(
            http.post(base, &cm(&format!("c{i}"), json!({})))
                .await
                .status,
            StatusCode::CREATED
        );
    }
    // kube-root-ca.crt is there too, like in a real cluster: 8 items.
    let p1 = http.get(&format!("{base}?limit=3")).await.json();
    let list_rv = p1["metadata"]["resourceVersion"].clone();
    assert_eq!(p1["items"].as_array().map(Vec::len), Some(3));
    assert_eq!(p1["metadata"]["remainingItemCount"], 5);
    assert!(
        p1["items"][0].get("kind").is_none(),
        "typed list items carry no kind"
    );
    // Changes after the first page must not show up in later pages.
    http.post(base, &cm("c9", json!({}))).await;
    http.send(Method::DELETE, &format!("{base}/c6"), &[], None)
        .await;
    let token = p1["metadata"]["continue"]
        .as_str()
        .expect("continue")
        .to_owned();
    let p2 = http
        .get(&format!("{base}?limit=3&continue={token}"))
        .await
        .json();
    assert_eq!(p2["metadata"]["resourceVersion"], list_rv);
    assert_eq!(p2["metadata"]["remainingItemCount"], 2);
    let token = p2["metadata"]["continue"]
        .as_str()
        .expect("continue")
        .to_owned();
    let p3 = http
        .get(&format!("{base}?limit=3&continue={token}"))
        .await
        .json();
    assert!(p3["metadata"].get("continue").is_none());
    let names: Vec<String> = [&p1, &p2, &p3]
        .iter()
        .flat_map(|p| p["items"].as_array().expect("items").clone())
        .map(|i| i["metadata"]["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(
        names,
        ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "kube-root-ca.crt"]
    );

    // A continue token older than the compacted revision is 410 Expired and
    // offers an inconsistent continuation.
    let p1 = http.get(&format!("{base}?limit=2")).await.json();
    let token = p1["metadata"]["continue"]
        .as_str()
        .expect("continue")
        .to_owned();
    http.post(base, &cm("c10", json!({}))).await;
    api.compact();
    let expired = http.get(&format!("{base}?limit=2&continue={token}")).await;
    assert_eq!(expired.status, StatusCode::GONE);
    let status = expired.json();
    assert_eq!(status["reason"], "Expired");
    assert!(
        status["message"]
            .as_str()
            .expect("message")
            .starts_with("The provided continue parameter is too old")
    );
    let next = status["metadata"]["continue"]
        .as_str()
        .expect("inconsistent continue")
        .to_owned();
    let rest = http.get(&format!("{base}?limit=100&continue={next}")).await;
    assert_eq!(rest.status, StatusCode::OK);
    let list_old = http
        .get(&format!(
            "{base}?resourceVersion={list_rv}&resourceVersionMatch=Exact",
            list_rv = list_rv.as_str().expect("rv")
        ))
        .await;
    assert_eq!(list_old.status, StatusCode::GONE);
    let rv_with_continue = http
        .get(&format!("{base}?continue={next}&resourceVersion=5"))
        .await;
    assert_eq!(rv_with_continue.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn label_and_field_selectors() {
    let api = server().await;
    let http = Http::admin(&api);
    http.post(PODS, &pod("a", "n1", json!({"app": "web", "tier": "fe"})))
        .await;
    http.post(PODS, &pod("b", "n2", json!({"app": "db"}))).await;
    http.post(PODS, &pod("c", "n1", json!({"app": "cache"})))
        .await;
    let names = |v: Value| -> Vec<String> {
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["metadata"]["name"].as_str().expect("name").to_owned())
            .collect()
    };
    let q = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    assert_eq!(
        names(
            http.get(&format!("{PODS}?labelSelector={}", q("app in (web,db)")))
                .await
                .json()
        ),
        ["a", "b"]
    );
    assert_eq!(
        names(
            http.get(&format!(
                "{PODS}?labelSelector={}",
                q("app notin (web),!tier")
            ))
            .await
            .json()
        ),
        ["b", "c"]
    );
    assert_eq!(
        names(
            http.get(&format!("{PODS}?labelSelector={}", q("app!=web")))
                .await
                .json()
        ),
        ["b", "c"]
    );
    assert_eq!(
        names(http.get(&format!("{PODS}?labelSelector=tier")).await.json()),
        ["a"]
    );
    assert_eq!(
        names(
            http.get(&format!(
                "/api/v1/pods?fieldSelector={}",
                q("spec.nodeName=n1")
            ))
            .await
            .json()
        ),
        ["a", "c"]
    );
    assert_eq!(
        names(
            http.get(&format!(
                "/api/v1/pods?fieldSelector={}",
                q("spec.nodeName==n1,metadata.name!=a")
            ))
            .await
            .json()
        ),
        ["c"]
    );
    let bad = http
        .get(&format!("{PODS}?fieldSelector={}", q("spec.bogus=x")))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        bad.json()["message"],
        "field label not supported: spec.bogus"
    );
}

#[tokio::test]
async fn watch_sees_changes_and_selector_transitions() {
    let api = server().await;
    let http = Http::admin(&api);
    let start = http.get(CMS).await.json();
    let from = start["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_owned();
    let mut all = http
        .watch(&format!("{CMS}?watch=true&resourceVersion={from}"))
        .await;
    let mut selected = http
        .watch(&format!(
            "{CMS}?watch=1&resourceVersion={from}&labelSelector=sel%3Dyes"
        ))
        .await;
    assert_eq!(api.open_watches("configmaps"), 2);

    let a = http.post(CMS, &cm("w", json!({"sel": "yes"}))).await.json();
    let mut relabeled = a.clone();
    relabeled["metadata"]["labels"]["sel"] = json!("no");
    let relabeled = http.put(&format!("{CMS}/w"), &relabeled).await.json();
    http.send(Method::DELETE, &format!("{CMS}/w"), &[], None)
        .await;

    let e1 = all.next_change().await;
    assert_eq!(
        (
            e1["type"].as_str(),
            e1["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("w"))
    );
    assert_eq!(e1["object"]["kind"], "ConfigMap");
    assert_eq!(all.next_change().await["type"], "MODIFIED");
    let del = all.next_change().await;
    assert_eq!(del["type"], "DELETED");
    assert_eq!(
        del["object"]["metadata"]["labels"]["sel"], "no",
        "DELETED carries the last state"
    );
    assert!(
        rv(&del["object"]) > rv(&relabeled),
        "with the deletion revision"
    );

    assert_eq!(selected.next_change().await["type"], "ADDED");
    let left = selected.next_change().await;
    assert_eq!(
        left["type"], "DELETED",
        "no longer matching reads as a delete"
    );
    assert_eq!(
        left["object"]["metadata"]["labels"]["sel"], "yes",
        "with the previous state"
    );
    assert_eq!(rv(&left["object"]), rv(&relabeled));
    assert!(api.watch_requests() >= 2);
}

#[tokio::test]
async fn watch_from_unset_rv_sends_current_state_first() {
    let api = server().await;
    let http = Http::admin(&api);
    http.post(CMS, &cm("x", json!({}))).await;
    let mut w = http.watch(&format!("{CMS}?watch=true")).await;
    let mut names = vec![
        w.next_change().await["object"]["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_owned(),
        w.next_change().await["object"]["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_owned(),
    ];
    names.sort();
    assert_eq!(names, ["kube-root-ca.crt", "x"]);
}

#[tokio::test]
async fn compacted_watch_gets_410_error_event_in_a_200_stream() {
    let api = server().await;
    let http = Http::admin(&api);
    let old = rv(&http.post(CMS, &cm("c", json!({}))).await.json());
    http.post(CMS, &cm("d", json!({}))).await;
    api.compact();
    let mut w = http
        .watch(&format!("{CMS}?watch=true&resourceVersion={old}"))
        .await;
    let e = w.expect("error event").await;
    assert_eq!(e["type"], "ERROR");
    assert_eq!(e["object"]["code"], 410);
    assert_eq!(e["object"]["reason"], "Expired");
    assert!(
        e["object"]["message"]
            .as_str()
            .expect("message")
            .starts_with("too old resource version:")
    );
    assert!(w.next().await.is_none(), "stream closes after the error");
}

#[tokio::test]
async fn bookmarks_and_initial_events_end() {
    let api = server().await;
    let http = Http::admin(&api);
    http.post(CMS, &cm("b", json!({}))).await;
    let mut w = http
        .watch(&format!("{CMS}?watch=true&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"))
        .await;
    let mut added = 0;
    let end = loop {
        let e = w.expect("initial events").await;
        match e["type"].as_str() {
            Some("ADDED") => added += 1,
            Some("BOOKMARK") => break e,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(added, 2);
    assert_eq!(
        end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    let periodic = w.expect("periodic bookmark").await;
    assert_eq!(periodic["type"], "BOOKMARK");
    let obj = periodic["object"].as_object().expect("object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["apiVersion", "kind", "metadata"]);
    assert_eq!(
        periodic["object"]["metadata"].as_object().map(|m| m.len()),
        Some(1)
    );
    assert_eq!(periodic["object"]["kind"], "ConfigMap");

    let invalid = http
        .get(&format!("{CMS}?watch=true&sendInitialEvents=true"))
        .await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn watch_timeout_seconds_ends_the_stream() {
    let api = server().await;
    let http = Http::admin(&api);
    let started = std::time::Instant::now();
    let mut w = http
        .watch(&format!(
            "{CMS}?watch=true&timeoutSeconds=1&resourceVersion=0"
        ))
        .await;
    while w.next().await.is_some() {}
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(api.open_watches("configmaps"), 0);
}

#[tokio::test]
async fn table_and_partial_metadata_negotiation() {
    let api = server().await;
    let http = Http::admin(&api);
    http.post(PODS, &pod("t", "n1", json!({}))).await;
    let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
    let t = http.get_accept(PODS, accept).await;
    assert_eq!(
        t.content_type(),
        "application/json;g=meta.k8s.io;v=v1;as=Table"
    );
    let t = t.json();
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["columnDefinitions"][0]["name"], "Name");
    assert_eq!(t["rows"][0]["cells"][0], "t");
    assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    let none = http
        .get_accept(&format!("{PODS}?includeObject=None"), accept)
        .await
        .json();
    assert!(none["rows"][0]["object"].is_null());

    let pom = http
        .get_accept(
            PODS,
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
        )
        .await
        .json();
    assert_eq!(pom["kind"], "PartialObjectMetadataList");
    assert_eq!(pom["items"][0]["kind"], "PartialObjectMetadata");

    let yaml = http
        .get_accept(&format!("{PODS}/t"), "application/yaml")
        .await;
    assert_eq!(yaml.content_type(), "application/yaml");
    assert!(String::from_utf8_lossy(&yaml.body).contains("kind: Pod"));

    // Without a codec protobuf is not offered at all.
    let pb = http
        .get_accept(PODS, "application/vnd.kubernetes.protobuf")
        .await;
    assert_eq!(pb.status, StatusCode::NOT_ACCEPTABLE);
    assert_eq!(pb.json()["reason"], "NotAcceptable");
    let fallback = http
        .get_accept(
            PODS,
            "application/vnd.kubernetes.protobuf, application/json",
        )
        .await;
    assert_eq!(fallback.content_type(), "application/json");

    let ct = http
        .send(
            Method::POST,
            CMS,
            &[("content-type", "text/plain")],
            Some(b"x".to_vec()),
        )
        .await;
    assert_eq!(ct.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

/// A stand-in codec that only proves the plumbing (it is not protobuf):
/// the `k8s\0` magic followed by the JSON of the object.
struct TaggedJson;

impl ProtobufCodec for TaggedJson {
    fn encode_object(
        &self,
        _api_version: &str,
        _kind: &str,
        obj: &Value,
    ) -> Result<Vec<u8>, String> {
        let mut out = b"k8s\0".to_vec();
        out.extend(serde_json::to_vec(obj).map_err(|e| e.to_string())?);
        Ok(out)
    }

    fn decode_object(&self, bytes: &[u8]) -> Result<Value, String> {
        let body = bytes.strip_prefix(b"k8s\0").ok_or("no magic")?;
        serde_json::from_slice(body).map_err(|e| e.to_string())
    }
}

#[tokio::test]
async fn protobuf_only_for_builtins_when_a_codec_is_plugged_in() {
    let crd = ResourceType::custom(
        "apps.openyurt.io",
        "v1beta1",
        "nodepools",
        "NodePool",
        false,
    );
    let api = server_with(ApiServer::builder().protobuf(Arc::new(TaggedJson)).crd(crd)).await;
    let http = Http::admin(&api);
    let pods = http
        .get_accept(PODS, "application/vnd.kubernetes.protobuf")
        .await;
    assert_eq!(pods.status, StatusCode::OK);
    assert_eq!(pods.content_type(), "application/vnd.kubernetes.protobuf");
    assert!(pods.body.starts_with(b"k8s\0"));
    let path = "/apis/apps.openyurt.io/v1beta1/nodepools";
    let crd_pb = http
        .get_accept(path, "application/vnd.kubernetes.protobuf")
        .await;
    assert_eq!(
        crd_pb.status,
        StatusCode::NOT_ACCEPTABLE,
        "CRDs are JSON only"
    );
    let crd_fallback = http
        .get_accept(path, "application/vnd.kubernetes.protobuf,application/json")
        .await;
    assert_eq!(crd_fallback.status, StatusCode::OK);
    assert_eq!(crd_fallback.json()["kind"], "NodePoolList");
    let meta_pb = http
        .get_accept(
            path,
            "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
        )
        .await;
    assert_eq!(
        meta_pb.status,
        StatusCode::OK,
        "metadata-only protobuf works for CRDs"
    );
    let created = http.post(path, &json!({"apiVersion": "apps.openyurt.io/v1beta1", "kind": "NodePool", "metadata": {"name": "hz"}, "spec": {"type": "Edge"}})).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.json()["metadata"]["generation"], 1);
    let smp = http
        .patch(
            &format!("{path}/hz"),
            "application/strategic-merge-patch+json",
            &json!({"spec": {"type": "Cloud"}}),
        )
        .await;
    assert_eq!(
        smp.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "no strategic merge patch for CRDs"
    );
}

#[tokio::test]
async fn discovery_documents() {
    let api = server().await;
    let http = Http::admin(&api);
    let agg = http
        .get_accept(
            "/apis",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
        )
        .await;
    assert_eq!(
        agg.content_type(),
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    );
    assert_eq!(agg.json()["kind"], "APIGroupDiscoveryList");
    let legacy = http.get("/api").await.json();
    assert_eq!(legacy["kind"], "APIVersions");
    let core = http.get("/api/v1").await.json();
    let pods = core["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["name"] == "pods")
        .expect("pods")
        .clone();
    assert_eq!(pods["shortNames"], json!(["po"]));
    assert_eq!(pods["namespaced"], true);
    let leases = http.get("/apis/coordination.k8s.io/v1").await.json();
    assert_eq!(leases["resources"][0]["kind"], "Lease");
    assert_eq!(
        http.get("/apis/nope.example.com/v1").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(http.get("/openapi/v2").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn service_account_tokens_authenticate() {
    let api = server().await;
    let http = Http::admin(&api);
    let tr = http
        .post(
            "/api/v1/namespaces/kube-system/serviceaccounts/default/token",
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"audiences": ["x", "https://kubernetes.default.svc.cluster.local"], "expirationSeconds": 3600}}),
        )
        .await;
    assert_eq!(tr.status, StatusCode::CREATED);
    let token = tr.json()["status"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let as_sa = Http::new(&api, Some(&token), None, false);
    assert_eq!(as_sa.get(PODS).await.status, StatusCode::OK);
    let missing = http
        .post(
            "/api/v1/namespaces/default/serviceaccounts/nobody/token",
            &json!({}),
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn large_lists_are_gzipped_when_asked() {
    let api = server().await;
    let http = Http::admin(&api);
    let big = "x".repeat(40 * 1024);
    for i in 0..5 {
        let mut c = cm(&format!("big{i}"), json!({}));
        c["data"]["k"] = json!(big);
        http.post(CMS, &c).await;
    }
    let r = http
        .send(Method::GET, CMS, &[("accept-encoding", "gzip")], None)
        .await;
    assert_eq!(
        r.headers
            .get(header::CONTENT_ENCODING)
            .map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );
    let small = http
        .send(
            Method::GET,
            "/api/v1/namespaces",
            &[("accept-encoding", "gzip")],
            None,
        )
        .await;
    assert!(
        small.headers.get(header::CONTENT_ENCODING).is_none(),
        "small bodies are not compressed"
    );
}

#[tokio::test]
async fn injected_faults() {
    let api = server().await;
    let http = Http::admin(&api);
    api.inject(Fault::new(PODS, FaultKind::Status(503)).times(1));
    let r = http.get(PODS).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["reason"], "ServiceUnavailable");
    assert_eq!(http.get(PODS).await.status, StatusCode::OK, "fault used up");

    api.inject(Fault::new(PODS, FaultKind::Garbage).times(1));
    let req = http.request(Method::GET, PODS, &[], None);
    let garbage = tokio::time::timeout(STEP, http.client.request(req))
        .await
        .expect("answers");
    assert!(garbage.is_err(), "garbage is not an HTTP response");

    api.inject(Fault::new(CMS, FaultKind::CloseMidStream { after_bytes: 10 }).times(1));
    let req = http.request(Method::GET, CMS, &[], None);
    let resp = tokio::time::timeout(STEP, http.client.request(req))
        .await
        .expect("answers")
        .expect("headers arrive");
    let body = tokio::time::timeout(STEP, resp.into_body().collect())
        .await
        .expect("ends");
    assert!(body.is_err(), "the body is cut");

    api.inject(
        Fault::new(CMS, FaultKind::Delay(Duration::from_millis(300)))
            .method("GET")
            .times(1),
    );
    let started = std::time::Instant::now();
    assert_eq!(http.get(CMS).await.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));

    api.inject(Fault::new(CMS, FaultKind::Hang).times(1));
    let req = http.request(Method::GET, CMS, &[], None);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), http.client.request(req))
            .await
            .is_err(),
        "a hung request never answers"
    );
}

#[tokio::test]
async fn shutdown_resets_connections_and_restart_keeps_state() {
    let api = server().await;
    let http = Http::admin(&api);
    http.post(CMS, &cm("keep", json!({}))).await;
    let mut w = http
        .watch(&format!("{CMS}?watch=true&resourceVersion=0"))
        .await;
    w.next_change().await;
    api.shutdown().await;
    while w.next().await.is_some() {}
    let req = http.request(Method::GET, CMS, &[], None);
    let refused = tokio::time::timeout(STEP, http.client.request(req))
        .await
        .expect("fails fast");
    assert!(refused.is_err(), "nothing listens after shutdown");
    tokio::time::timeout(STEP, async {
        while api.open_watches("configmaps") != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("watch counted as closed");
    api.restart().await.expect("restarts on the same port");
    let fresh = Http::admin(&api);
    assert_eq!(
        fresh.get(&format!("{CMS}/keep")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn direct_object_api() {
    let api = server().await;
    let created = api.create(pod("d", "n1", json!({}))).expect("create");
    assert_eq!(created["metadata"]["namespace"], "default");
    let mut stale = created.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    assert_eq!(api.update(stale).expect_err("stale").code, 409);
    let typed: k8s_openapi::api::core::v1::Pod = api.get_typed("default", "d").expect("typed get");
    assert_eq!(typed.spec.and_then(|s| s.node_name).as_deref(), Some("n1"));
    let cm = k8s_openapi::api::core::v1::ConfigMap {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("typed".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let stored = api.create_typed(&cm).expect("typed create");
    assert!(stored.metadata.uid.is_some());
    api.delete_now("v1", "Pod", "default", "d").expect("delete");
    assert!(api.get("v1", "Pod", "default", "d").is_none());
}

#[tokio::test]
async fn legacy_watch_path_deletecollection_and_namespace_cascade() {
    let api = server().await;
    let http = Http::admin(&api);
    http.post("/api/v1/namespaces", &json!({"metadata": {"name": "gone"}}))
        .await;
    let base = "/api/v1/namespaces/gone/configmaps";
    let created = http.post(base, &cm("one", json!({"del": "yes"}))).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(
        created
            .headers
            .get(header::CACHE_CONTROL)
            .map(|v| v.as_bytes()),
        Some(&b"no-cache, private"[..])
    );
    assert!(created.headers.contains_key("audit-id"));
    http.post(base, &cm("two", json!({}))).await;
    let from = rv(&created.json());
    let mut w = http
        .watch(&format!(
            "/api/v1/watch/namespaces/gone/configmaps?resourceVersion={from}"
        ))
        .await;
    let dc = http
        .send(
            Method::DELETE,
            &format!("{base}?labelSelector=del%3Dyes"),
            &[],
            None,
        )
        .await;
    assert_eq!(dc.status, StatusCode::OK);
    assert_eq!(dc.json()["kind"], "ConfigMapList");
    assert_eq!(dc.json()["items"][0]["metadata"]["name"], "one");
    assert_eq!(w.next_change().await["type"], "ADDED", "two");
    let deleted = w.next_change().await;
    assert_eq!(
        (
            deleted["type"].as_str(),
            deleted["object"]["metadata"]["name"].as_str()
        ),
        (Some("DELETED"), Some("one"))
    );

    let ns = http
        .send(Method::DELETE, "/api/v1/namespaces/gone", &[], None)
        .await
        .json();
    assert_eq!(ns["kind"], "Namespace");
    assert_eq!(ns["status"]["phase"], "Terminating");
    assert_eq!(
        http.get(base).await.json()["items"],
        json!([]),
        "contents removed"
    );
    assert_eq!(
        http.get("/api/v1/namespaces/gone").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn bootstrap_token_csr_is_approved_and_signed() {
    let api = server().await;
    let token = api
        .create_bootstrap_token(
            "abcdef",
            "0123456789abcdef",
            &["system:bootstrappers:openyurt:yurthub"],
        )
        .expect("bootstrap token");
    let boot = Http::new(&api, Some(&token), None, false);
    // kube-public/cluster-info carries the token's detached JWS.
    let info = Http::admin(&api)
        .get("/api/v1/namespaces/kube-public/configmaps/cluster-info")
        .await
        .json();
    assert!(
        info["data"]["kubeconfig"]
            .as_str()
            .expect("kubeconfig")
            .contains("certificate-authority-data")
    );
    let jws = info["data"]["jws-kubeconfig-abcdef"].as_str().expect("jws");
    assert!(jws.contains(".."), "detached JWS: {jws}");

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "openyurt:yurthub");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "system:node:n1");
    let csr_pem = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    use base64::Engine as _;
    let request = base64::engine::general_purpose::STANDARD.encode(csr_pem);
    let created = boot
        .post(
            "/apis/certificates.k8s.io/v1/certificatesigningrequests",
            &json!({
                "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
                "metadata": {"generateName": "csr-"},
                "spec": {"request": request, "signerName": "kubernetes.io/kube-apiserver-client",
                         "usages": ["digital signature", "key encipherment", "client auth"],
                         "username": "forged"}
            }),
        )
        .await;
    assert_eq!(
        created.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let csr = created.json();
    assert_eq!(
        csr["spec"]["username"], "system:bootstrap:abcdef",
        "the server records the requester"
    );
    assert!(
        csr["spec"]["groups"]
            .as_array()
            .expect("groups")
            .contains(&json!("system:bootstrappers"))
    );
    assert!(
        csr.get("status").is_none(),
        "the create response is not yet signed"
    );
    let name = csr["metadata"]["name"].as_str().expect("name").to_owned();
    let signed = boot
        .get(&format!(
            "/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}"
        ))
        .await
        .json();
    assert_eq!(signed["status"]["conditions"][0]["type"], "Approved");
    let cert_pem = base64::engine::general_purpose::STANDARD
        .decode(
            signed["status"]["certificate"]
                .as_str()
                .expect("certificate"),
        )
        .expect("base64");
    let cert = String::from_utf8(cert_pem).expect("pem");
    // The issued certificate authenticates as the node.
    let node = Http::new(&api, None, Some((cert, key.serialize_pem())), false);
    assert_eq!(node.get(PODS).await.status, StatusCode::OK);
    let rec = api.requests().pop().expect("recorded");
    assert_eq!(
        rec.auth,
        Auth::ClientCert {
            cn: "system:node:n1".into(),
            orgs: vec!["openyurt:yurthub".into()]
        }
    );

    let sar = Http::admin(&api)
        .post(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            &json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                    "spec": {"user": "system:node:n1", "resourceAttributes": {"verb": "get", "resource": "pods"}}}),
        )
        .await;
    assert_eq!(sar.status, StatusCode::CREATED);
    assert_eq!(sar.json()["status"]["allowed"], true);
    assert_eq!(
        Http::admin(&api)
            .get("/apis/authorization.k8s.io/v1/subjectaccessreviews")
            .await
            .status,
        StatusCode::METHOD_NOT_ALLOWED,
        "reviews are create-only"
    );
}

#[tokio::test]
async fn pending_csrs_wait_for_manual_approval() {
    let api = server_with(ApiServer::builder().csr_auto_approve(false)).await;
    let http = Http::admin(&api);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "someone");
    let csr_pem = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    use base64::Engine as _;
    let path = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
    http.post(
        path,
        &json!({"metadata": {"name": "manual"}, "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(csr_pem),
            "signerName": "kubernetes.io/kube-apiserver-client", "usages": ["client auth"]}}),
    )
    .await;
    assert!(
        http.get(&format!("{path}/manual"))
            .await
            .json()
            .get("status")
            .is_none()
    );
    api.approve_csr("manual").expect("approve");
    let csr = http.get(&format!("{path}/manual")).await.json();
    assert!(
        csr["status"]["certificate"].is_string(),
        "signed after approval"
    );
}

#[tokio::test]
async fn replicas_share_one_store_and_resource_version_sequence() {
    let a = server().await;
    let b = a
        .replica("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("replica starts");
    assert_ne!(a.addr(), b.addr());
    let (ha, hb) = (Http::admin(&a), Http::admin(&b));
    let from = rv(&ha.post(CMS, &cm("one", json!({}))).await.json());
    let mut w = hb
        .watch(&format!("{CMS}?watch=true&resourceVersion={from}"))
        .await;
    let two = ha.post(CMS, &cm("two", json!({}))).await.json();
    let seen = w.next_change().await;
    assert_eq!(
        seen["object"]["metadata"]["name"], "two",
        "a write on A is seen by a watch on B"
    );
    assert_eq!(rv(&seen["object"]), rv(&two));
    assert!(hb.get(PODS).await.status.is_success());
    assert!(
        a.requests().iter().all(|r| r.path != PODS),
        "separate request logs"
    );
    a.shutdown().await;
    assert_eq!(
        hb.get(&format!("{CMS}/two")).await.status,
        StatusCode::OK,
        "B survives A"
    );
}

#[tokio::test]
async fn websocket_port_forward_echoes() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let api = server().await;
    api.create(pod("pf", "n1", json!({}))).expect("pod");
    let tls = Arc::new(tls_config(&api, None));
    let tcp = tokio::net::TcpStream::connect(api.addr())
        .await
        .expect("connect");
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").expect("name"),
            tcp,
        )
        .await
        .expect("tls");
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "wss://localhost:{}/api/v1/namespaces/default/pods/pf/portforward?ports=8080",
            api.addr().port()
        ))
        .expect("request");
    let h = request.headers_mut();
    h.insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("header"),
    );
    h.insert(
        "sec-websocket-protocol",
        "v4.channel.k8s.io".parse().expect("header"),
    );
    let (mut ws, resp) =
        tokio::time::timeout(STEP, tokio_tungstenite::client_async(request, stream))
            .await
            .expect("handshake in time")
            .expect("handshake");
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "v4.channel.k8s.io"
    );
    let mut next = async || match tokio::time::timeout(STEP, ws.next())
        .await
        .expect("frame in time")
    {
        Some(Ok(Message::Binary(b))) => b.to_vec(),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(
        next().await,
        [0, 0x90, 0x1f],
        "data channel announces port 8080"
    );
    assert_eq!(
        next().await,
        [1, 0x90, 0x1f],
        "error channel announces port 8080"
    );
    ws.send(Message::Binary(vec![0, b'h', b'i'].into()))
        .await
        .expect("send");
    let echoed = tokio::time::timeout(STEP, ws.next())
        .await
        .expect("echo in time");
    assert!(matches!(echoed, Some(Ok(Message::Binary(b))) if b.as_ref() == [0, b'h', b'i']));
}

// ---- real clients -------------------------------------------------------

use yurthub_e2e::hub::{kubectl, kubectl_ok as stdout, kubectl_watch};

#[tokio::test]
async fn kubectl_get_watch_json_and_exec() {
    let api = server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        api.kubeconfig_for("admin").expect("kubeconfig"),
    )
    .expect("write kubeconfig");
    api.create(pod("k1", "n1", json!({"app": "k"})))
        .expect("seed pod");

    let table = stdout(&kubectl(&kubeconfig, &["get", "pods"]).await);
    assert!(
        table.starts_with("NAME") && table.contains("READY") && table.contains("k1"),
        "{table}"
    );
    let as_json: Value = serde_json::from_str(&stdout(
        &kubectl(&kubeconfig, &["get", "pods", "-o", "json"]).await,
    ))
    .expect("json");
    assert_eq!(as_json["items"][0]["metadata"]["name"], "k1");
    let by_label =
        stdout(&kubectl(&kubeconfig, &["get", "pods", "-l", "app=k", "-o", "name"]).await);
    assert_eq!(by_label.trim(), "pod/k1");

    // get -w: start it, create a pod, see it appear, stop kubectl.
    let trigger = || {
        api.create(pod("k2", "n1", json!({})))
            .expect("create during watch");
    };
    kubectl_watch(
        &kubeconfig,
        &["get", "pods"],
        "k1",
        trigger,
        "k2",
        Duration::from_secs(20),
    )
    .await
    .expect("kubectl -w");

    let echoed = stdout(
        &kubectl(
            &kubeconfig,
            &["exec", "k1", "--", "echo", "hello", "double"],
        )
        .await,
    );
    assert_eq!(echoed, "hello double\n");
    let failed = kubectl(&kubeconfig, &["exec", "k1", "--", "false-command"]).await;
    assert_eq!(failed.status.code(), Some(127));
}

#[tokio::test]
async fn kube_rs_watcher_sees_create_update_delete() {
    use futures_util::StreamExt as _;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::watcher;

    let api = server().await;
    let kubeconfig =
        kube::config::Kubeconfig::from_yaml(&api.kubeconfig_for("admin").expect("kubeconfig"))
            .expect("parse");
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("config");
    let client = kube::Client::try_from(config).expect("client");
    let cms: kube::Api<ConfigMap> = kube::Api::namespaced(client, "default");
    let mut stream = watcher(cms, watcher::Config::default()).boxed();
    let mut next = async || {
        tokio::time::timeout(STEP, stream.next())
            .await
            .expect("watcher event in time")
            .expect("stream goes on")
            .expect("no watcher error")
    };
    loop {
        if matches!(next().await, watcher::Event::InitDone) {
            break;
        }
    }
    let created = api.create(cm("rs", json!({}))).expect("create");
    let mut updated = created.clone();
    updated["data"]["k"] = json!("changed");
    api.update(updated).expect("update");
    api.delete("v1", "ConfigMap", "default", "rs")
        .expect("delete");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match next().await {
            watcher::Event::Apply(c) => {
                seen.push(("apply", c.data.and_then(|d| d.get("k").cloned())))
            }
            watcher::Event::Delete(c) => {
                seen.push(("delete", c.data.and_then(|d| d.get("k").cloned())))
            }
            _ => {}
        }
    }
    assert_eq!(
        seen,
        [
            ("apply", Some("v".to_owned())),
            ("apply", Some("changed".to_owned())),
            ("delete", Some("changed".to_owned()))
        ]
    );
}

/// The header and claims of a JWT, decoded without verification.
fn jwt_parts(token: &str) -> (Value, Value) {
    use base64::Engine as _;
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    let dec = |p: &str| -> Value {
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .expect("base64url"),
        )
        .expect("json")
    };
    (dec(parts[0]), dec(parts[1]))
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

fn unauthorized_status() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
}

#[tokio::test]
async fn service_account_jwts_verify_against_the_published_keys() {
    let api = server().await;
    let token = api.service_account_token("team", "robot", Duration::from_secs(3600));
    let (header, claims) = jwt_parts(&token);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], api.service_account_key_id());
    let sa = api
        .get("v1", "ServiceAccount", "team", "robot")
        .expect("the ServiceAccount was created for the token");
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["sub"], "system:serviceaccount:team:robot");
    assert_eq!(claims["aud"], json!([ISSUER]));
    assert_eq!(
        claims["kubernetes.io"],
        json!({"namespace": "team", "serviceaccount": {"name": "robot", "uid": sa["metadata"]["uid"]}})
    );
    let iat = claims["iat"].as_i64().expect("iat");
    assert_eq!(claims["nbf"], iat);
    assert_eq!(claims["exp"].as_i64().expect("exp") - iat, 3600);
    assert!((iat - now_unix()).abs() < 60);

    // The token authenticates as the service account.
    let as_sa = Http::new(&api, Some(&token), None, false);
    let me = as_sa
        .post(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
        )
        .await;
    assert_eq!(me.status, StatusCode::CREATED);
    assert_eq!(
        me.json()["status"]["userInfo"],
        json!({"username": "system:serviceaccount:team:robot",
               "groups": ["system:serviceaccounts", "system:serviceaccounts:team", "system:authenticated"]})
    );

    // A relying party verifies it with the key set from /openid/v1/jwks.
    let jwks = as_sa.get("/openid/v1/jwks").await;
    assert_eq!(jwks.status, StatusCode::OK);
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&jwks.body).expect("a JWK set");
    let jwk = set
        .find(api.service_account_key_id())
        .expect("kid published");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("usable key");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_issuer(&[ISSUER]);
    v.set_audience(&[ISSUER]);
    jsonwebtoken::decode::<Value>(&token, &key, &v).expect("signature verifies");
    let forged = api.forged_service_account_token("team", "robot", Duration::from_secs(3600));
    assert_eq!(jwt_parts(&forged).0["kid"], api.service_account_key_id());
    assert!(jsonwebtoken::decode::<Value>(&forged, &key, &v).is_err());

    // Forged, expired, not yet valid, or of a deleted account: 401.
    let hour = Duration::from_secs(3600);
    let expired = api.service_account_token_at(
        "team",
        "robot",
        std::time::SystemTime::now() - 2 * hour,
        hour,
    );
    let future =
        api.service_account_token_at("team", "robot", std::time::SystemTime::now() + hour, hour);
    let within_skew = api.service_account_token_at(
        "team",
        "robot",
        std::time::SystemTime::now() - hour - Duration::from_secs(30),
        hour,
    );
    assert_eq!(
        Http::new(&api, Some(&within_skew), None, false)
            .get(PODS)
            .await
            .status,
        StatusCode::OK,
        "one minute of clock skew is tolerated"
    );
    for bad in [&forged, &expired, &future] {
        let r = Http::new(&api, Some(bad), None, false).get(PODS).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.json(), unauthorized_status());
    }
    assert_eq!(as_sa.get(PODS).await.status, StatusCode::OK);
    api.delete("v1", "ServiceAccount", "team", "robot")
        .expect("delete sa");
    assert_eq!(as_sa.get(PODS).await.status, StatusCode::UNAUTHORIZED);
    // A new account of the same name has another uid: old tokens stay dead.
    api.create(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "robot", "namespace": "team"}}))
        .expect("recreate sa");
    assert_eq!(as_sa.get(PODS).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn token_request_issues_bound_jwts() {
    let api = server().await;
    let http = Http::admin(&api);
    let path = "/api/v1/namespaces/default/serviceaccounts/default/token";
    let tr = |spec: Value| json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});

    let r = http.post(path, &tr(json!({}))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let body = r.json();
    assert_eq!(body["spec"]["audiences"], json!([ISSUER]));
    assert_eq!(body["spec"]["expirationSeconds"], 3600);
    let token = body["status"]["token"].as_str().expect("token").to_owned();
    let (_, claims) = jwt_parts(&token);
    assert_eq!(claims["sub"], "system:serviceaccount:default:default");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
    assert_eq!(
        Http::new(&api, Some(&token), None, false)
            .get(PODS)
            .await
            .status,
        StatusCode::OK
    );

    // Below ten minutes is invalid, as ValidateTokenRequest says.
    let short = http
        .post(path, &tr(json!({"expirationSeconds": 599})))
        .await;
    assert_eq!(short.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        short.json()["message"],
        "TokenRequest.authentication.k8s.io \"default\" is invalid: spec.expirationSeconds: Invalid value: 599: may not specify a duration less than 10 minutes"
    );
    let ten = http
        .post(path, &tr(json!({"expirationSeconds": 600})))
        .await;
    assert_eq!(ten.status, StatusCode::CREATED);
    let (_, c) = jwt_parts(ten.json()["status"]["token"].as_str().unwrap());
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 600);

    // A token for another audience does not authenticate to the apiserver,
    // but a TokenReview for that audience accepts it.
    let other = http.post(path, &tr(json!({"audiences": ["vault"]}))).await;
    let other = other.json()["status"]["token"].as_str().unwrap().to_owned();
    assert_eq!(jwt_parts(&other).1["aud"], json!(["vault"]));
    let r = Http::new(&api, Some(&other), None, false).get(PODS).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let review = |t: &str, auds: Value| json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": t, "audiences": auds}});
    let tr_ok = http
        .post(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            &review(&other, json!(["vault"])),
        )
        .await;
    assert_eq!(tr_ok.json()["status"]["authenticated"], true);
    assert_eq!(tr_ok.json()["status"]["audiences"], json!(["vault"]));
    assert_eq!(
        tr_ok.json()["status"]["user"]["username"],
        "system:serviceaccount:default:default"
    );
    let tr_no = http
        .post(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            &review(&other, json!([])),
        )
        .await;
    assert_eq!(tr_no.json()["status"]["error"], "invalid bearer token");

    // Pod-bound: pod and node claims; the kubelet's 3607 s becomes a year
    // with warnafter; the token dies with the pod.
    api.create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}))
        .expect("node");
    let p = api.create(pod("bound", "n1", json!({}))).expect("pod");
    let node = api.get("v1", "Node", "", "n1").expect("node");
    let r = http
        .post(path, &tr(json!({"expirationSeconds": 3607, "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "bound", "uid": p["metadata"]["uid"]}})))
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.json()["spec"]["expirationSeconds"], 3607);
    let bound = r.json()["status"]["token"].as_str().unwrap().to_owned();
    let (_, c) = jwt_parts(&bound);
    let iat = c["iat"].as_i64().unwrap();
    assert_eq!(c["exp"].as_i64().unwrap() - iat, 365 * 24 * 3600);
    assert_eq!(c["kubernetes.io"]["warnafter"], iat + 3607);
    assert_eq!(
        c["kubernetes.io"]["pod"],
        json!({"name": "bound", "uid": p["metadata"]["uid"]})
    );
    assert_eq!(
        c["kubernetes.io"]["node"],
        json!({"name": "n1", "uid": node["metadata"]["uid"]})
    );
    let as_pod = Http::new(&api, Some(&bound), None, false);
    assert_eq!(as_pod.get(PODS).await.status, StatusCode::OK);
    let wrong_uid = http
        .post(
            path,
            &tr(json!({"boundObjectRef": {"kind": "Pod", "name": "bound", "uid": "nope"}})),
        )
        .await;
    assert_eq!(wrong_uid.status, StatusCode::CONFLICT);
    api.delete_now("v1", "Pod", "default", "bound")
        .expect("delete pod");
    assert_eq!(as_pod.get(PODS).await.status, StatusCode::UNAUTHORIZED);
    let gone = http
        .post(
            path,
            &tr(json!({"boundObjectRef": {"kind": "Pod", "name": "bound"}})),
        )
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn issuer_discovery_is_for_service_accounts_unless_granted() {
    let api =
        server_with(ApiServer::builder().service_account_issuer("https://issuer.example")).await;
    assert_eq!(api.service_account_issuer(), "https://issuer.example");
    let sa = api.service_account_token("kube-system", "reader", Duration::from_secs(600));
    assert_eq!(jwt_parts(&sa).1["iss"], "https://issuer.example");
    assert_eq!(jwt_parts(&sa).1["aud"], json!(["https://issuer.example"]));
    let as_sa = Http::new(&api, Some(&sa), None, false);
    let cfg = as_sa.get("/.well-known/openid-configuration").await;
    assert_eq!(cfg.status, StatusCode::OK);
    assert_eq!(cfg.content_type(), "application/json");
    assert_eq!(cfg.headers[header::CACHE_CONTROL], "public, max-age=3600");
    assert_eq!(
        cfg.json(),
        json!({
            "issuer": "https://issuer.example",
            "jwks_uri": format!("{}/openid/v1/jwks", api.url()),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    );
    let jwks = as_sa.get("/openid/v1/jwks").await;
    assert_eq!(jwks.status, StatusCode::OK);
    assert_eq!(jwks.content_type(), "application/jwk-set+json");
    let keys = jwks.json();
    assert_eq!(keys, api.service_account_jwks());
    assert_eq!(keys["keys"][0]["kid"], api.service_account_key_id());
    assert_eq!(keys["keys"][0]["use"], "sig");
    assert_eq!(keys["keys"][0]["alg"], "ES256");
    assert_eq!(keys["keys"][0]["kty"], "EC");

    // A node has no such binding by default; the operator adds one.
    let cert = api
        .pki()
        .issue_client_cert("system:node:n1", &["system:nodes"])
        .expect("node cert");
    let node = Http::new(&api, None, Some(cert), false);
    for path in ["/.well-known/openid-configuration", "/openid/v1/jwks"] {
        let r = node.get(path).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(
            r.json(),
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": format!("forbidden: User \"system:node:n1\" cannot get path \"{path}\""),
                   "reason": "Forbidden", "details": {}, "code": 403})
        );
    }
    assert_eq!(
        node.get(PODS).await.status,
        StatusCode::OK,
        "otherwise unrestricted"
    );
    assert_eq!(
        Http::new(&api, None, None, false)
            .get("/openid/v1/jwks")
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        Http::admin(&api).get("/openid/v1/jwks").await.status,
        StatusCode::OK,
        "system:masters"
    );
    api.grant_issuer_discovery("system:nodes");
    assert_eq!(node.get("/openid/v1/jwks").await.json(), keys);
    assert_eq!(
        node.get("/.well-known/openid-configuration").await.status,
        StatusCode::OK
    );
    api.revoke_issuer_discovery("system:nodes");
    assert_eq!(
        node.get("/openid/v1/jwks").await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn restricted_identities_get_rbac_forbidden() {
    let api = server_with(ApiServer::builder().restrict(
        "system:serviceaccount:team:app",
        vec![
                Rule::new(&["get", "list", "watch"], &[""], &["configmaps"])
                    .in_namespaces(&["team"]),
                Rule::new(&["get"], &[""], &["secrets"])
                    .in_namespaces(&["team"])
                    .names(&["app-secret"]),
                Rule::new(&["get"], &["coordination.k8s.io"], &["leases"]),
            ],
    ))
    .await;
    let token = api.service_account_token("team", "app", Duration::from_secs(3600));
    let sa = Http::new(&api, Some(&token), None, false);
    assert_eq!(
        sa.get("/api/v1/namespaces/team/configmaps").await.status,
        StatusCode::OK
    );
    assert_eq!(
        sa.get("/api").await.status,
        StatusCode::OK,
        "system:discovery"
    );
    assert_eq!(
        sa.get("/openid/v1/jwks").await.status,
        StatusCode::OK,
        "issuer discovery"
    );
    let r = sa.get("/api/v1/namespaces/x/secrets").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        r.json(),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "secrets is forbidden: User \"system:serviceaccount:team:app\" cannot list resource \"secrets\" in API group \"\" in the namespace \"x\"",
               "reason": "Forbidden", "details": {"kind": "secrets"}, "code": 403})
    );
    let r = sa.get("/api/v1/namespaces/team/secrets/other").await;
    assert_eq!(
        r.json()["message"],
        "secrets \"other\" is forbidden: User \"system:serviceaccount:team:app\" cannot get resource \"secrets\" in API group \"\" in the namespace \"team\""
    );
    assert_eq!(
        r.json()["details"],
        json!({"kind": "secrets", "name": "other"})
    );
    assert_eq!(
        sa.get("/api/v1/namespaces/team/secrets/app-secret")
            .await
            .status,
        StatusCode::NOT_FOUND,
        "allowed, absent"
    );
    let r = sa.get("/apis/coordination.k8s.io/v1/leases").await;
    assert_eq!(
        r.json()["message"],
        "leases.coordination.k8s.io is forbidden: User \"system:serviceaccount:team:app\" cannot list resource \"leases\" in API group \"coordination.k8s.io\" at the cluster scope"
    );
    assert_eq!(
        r.json()["details"],
        json!({"group": "coordination.k8s.io", "kind": "leases"})
    );
    let r = sa
        .post(
            "/api/v1/namespaces/team/serviceaccounts/app/token",
            &json!({}),
        )
        .await;
    assert_eq!(
        r.json()["message"],
        "serviceaccounts \"app\" is forbidden: User \"system:serviceaccount:team:app\" cannot create resource \"serviceaccounts/token\" in API group \"\" in the namespace \"team\""
    );
    assert_eq!(
        sa.get("/api/v1/namespaces/other/configmaps").await.status,
        StatusCode::FORBIDDEN
    );

    // A SubjectAccessReview answers from the same rules.
    let sar = |verb: &str, ns: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "system:serviceaccount:team:app", "groups": ["system:serviceaccounts"],
                 "resourceAttributes": {"verb": verb, "resource": "configmaps", "namespace": ns}}})
    };
    let admin = Http::admin(&api);
    let path = "/apis/authorization.k8s.io/v1/subjectaccessreviews";
    assert_eq!(
        admin.post(path, &sar("list", "team")).await.json()["status"]["allowed"],
        true
    );
    assert_eq!(
        admin.post(path, &sar("delete", "team")).await.json()["status"]["allowed"],
        false
    );

    // kubectl shows the apiserver's error.
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        api.kubeconfig(&yurthub_e2e::apiserver::Credential::Token(token.clone()))
            .expect("kubeconfig"),
    )
    .expect("write kubeconfig");
    let out = kubectl(&kubeconfig, &["get", "secrets", "-n", "x"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Error from server (Forbidden): secrets is forbidden: User \"system:serviceaccount:team:app\" cannot list resource \"secrets\" in API group \"\" in the namespace \"x\""),
        "{stderr}"
    );
    stdout(&kubectl(&kubeconfig, &["get", "configmaps", "-n", "team"]).await);

    // Restrictions change at runtime; others stay unrestricted.
    api.unrestrict("system:serviceaccount:team:app");
    assert_eq!(
        sa.get("/api/v1/namespaces/x/secrets").await.status,
        StatusCode::OK
    );
    api.restrict("system:serviceaccounts:team", vec![]);
    assert_eq!(
        sa.get("/api/v1/namespaces/team/configmaps").await.status,
        StatusCode::FORBIDDEN,
        "restricted by group"
    );
    let other = api.service_account_token("default", "free", Duration::from_secs(3600));
    assert_eq!(
        Http::new(&api, Some(&other), None, false)
            .get("/api/v1/namespaces/x/secrets")
            .await
            .status,
        StatusCode::OK
    );
}

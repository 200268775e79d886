//! Offline answers are bound to the identity the cloud authorized: on the
//! pod-facing listener a User-Agent grants nothing, a token is accepted
//! offline only when the cloud accepted it (or the cluster issuer's keys
//! verify it), and it gets only what the cloud authorized for it.

mod cache_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cache_support::*;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::json;
use yurthub_e2e::apiserver::{ApiServer, Rule, User};
use yurthub_e2e::hub::{
    self, Hub, HubFiles, PlainClient, Reply, eventually, get, plain_client, send,
};
use yurthub_e2e::pki::TestPki;

/// The secret's value, base64 as the apiserver serves it.
const SECRET_B64: &str = "czNjcjN0LXZhbHVl";
const CORE_DNS_TOKEN: &str = "coredns-token-0123456789";
const OTHER_TOKEN: &str = "other-token-0123456789";

struct Env {
    pki: Arc<TestPki>,
    api: ApiServer,
    files: HubFiles,
    c: PlainClient,
}

async fn env() -> Env {
    let pki = Arc::new(TestPki::new().expect("pki"));
    let api = double(&pki).await;
    api.add_token(
        CORE_DNS_TOKEN,
        User::new(
            "system:serviceaccount:kube-system:coredns",
            &[
                "system:serviceaccounts",
                "system:serviceaccounts:kube-system",
            ],
        ),
    );
    api.add_token(
        OTHER_TOKEN,
        User::new(
            "system:serviceaccount:app:other",
            &["system:serviceaccounts", "system:serviceaccounts:app"],
        ),
    );
    for ns in ["app", "kube-system"] {
        let _ =
            api.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    api.create(
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "db-pass", "namespace": "app"},
        "data": {"password": SECRET_B64}}),
    )
    .expect("secret");
    api.create(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": "app"}, "data": {"k": "v"}}))
        .expect("configmap");
    api.create(service("kube-system", "kube-dns")).expect("svc");
    let files = HubFiles::new(&pki);
    Env {
        pki,
        api,
        files,
        c: plain_client(),
    }
}

/// One request to the pod-facing listener, as a pod behind the redirect.
async fn pod_request(
    pki: &TestPki,
    secure: SocketAddr,
    method: Method,
    path: &str,
    user_agent: &str,
    token: Option<&str>,
    body: &str,
) -> Reply {
    let url = format!("https://kubernetes.default.svc:{}{path}", secure.port());
    let mut b = Request::builder()
        .method(method)
        .uri(url)
        .header("user-agent", user_agent)
        .header("accept", "application/json")
        .header("content-type", "application/json");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let req = b.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    hub::tls_send(secure, "kubernetes.default.svc", pki.ca_pem(), None, req)
        .await
        .expect("TLS to the pod-facing listener")
}

async fn pod_get(
    pki: &TestPki,
    secure: SocketAddr,
    path: &str,
    ua: &str,
    token: Option<&str>,
) -> Reply {
    pod_request(pki, secure, Method::GET, path, ua, token, "").await
}

/// What a Status answer says, for assertion messages.
fn reason(r: &Reply) -> String {
    r.json()["reason"].as_str().unwrap_or_default().to_owned()
}

const SECRET: &str = "/api/v1/namespaces/app/secrets/db-pass";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_the_pod_facing_listener_answers_only_what_the_cloud_authorized_for_the_caller() {
    let e = env().await;
    let args = e.files.args(&[e.api.url()], &["--pool-scope-resources="]);
    let h = Hub::start(&args).await;
    let proxy = h.proxy_url();

    // Online: kubelet (loopback, no credentials) reads the secret; coredns's
    // token lists services through the pod-facing listener; another service
    // account reads its own ConfigMap, not being a configured cache agent.
    let r = get(&e.c, &format!("{proxy}{SECRET}"), KUBELET).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = pod_get(
        &e.pki,
        h.secure,
        "/api/v1/services",
        COREDNS,
        Some(CORE_DNS_TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = pod_get(
        &e.pki,
        h.secure,
        "/api/v1/namespaces/app/configmaps/settings",
        "my-app/1.0",
        Some(OTHER_TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // Online, a User-Agent buys nothing either: kubelet's lease shortcut is
    // the node's, so an anonymous pod claiming to be kubelet is forwarded
    // anonymously (and refused by the cloud).
    let lease = format!(
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{}",
        hub::NODE
    );
    let r = pod_get(&e.pki, h.secure, &lease, KUBELET, None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert!(
        e.api
            .requests()
            .iter()
            .any(|q| q.path == lease && q.auth == yurthub_e2e::apiserver::Auth::Anonymous),
        "the anonymous lease read went to the cloud"
    );
    // Let the copies and the token book reach the store.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    e.api.shutdown().await;
    wait_offline(&e.c, &h.hub_url(), &e.api.url()).await;

    // Offline, pod-facing listener, claiming to be kubelet.
    for (what, token) in [
        ("no credentials", None),
        ("a garbage token", Some("garbage")),
        ("another service account's token", Some(OTHER_TOKEN)),
    ] {
        let r = pod_get(&e.pki, h.secure, SECRET, KUBELET, token).await;
        assert!(
            r.status == StatusCode::UNAUTHORIZED || r.status == StatusCode::FORBIDDEN,
            "{what}: {} {}",
            r.status,
            r.text()
        );
        if token != Some(OTHER_TOKEN) {
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.text());
        }
        assert!(
            !r.text().contains(SECRET_B64),
            "{what}: the secret leaked: {}",
            r.text()
        );
    }
    // The node's shortcuts belong to the node: no local lease, no local
    // writes for a pod claiming to be kubelet.
    let r = pod_get(&e.pki, h.secure, &lease, KUBELET, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let ev = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e1", "namespace": "app"}});
    let r = pod_request(
        &e.pki,
        h.secure,
        Method::POST,
        "/api/v1/namespaces/app/events",
        KUBELET,
        Some(OTHER_TOKEN),
        &ev.to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());

    // What must keep working: kubelet on loopback reads the secret.
    let r = get(&e.c, &format!("{proxy}{SECRET}"), KUBELET).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.text().contains(SECRET_B64));
    // coredns's token lists its services, and nothing else.
    let r = pod_get(
        &e.pki,
        h.secure,
        "/api/v1/services",
        COREDNS,
        Some(CORE_DNS_TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(
        names(&r.json()).contains(&"kube-dns".to_string()),
        "{}",
        r.text()
    );
    let r = pod_get(&e.pki, h.secure, SECRET, COREDNS, Some(CORE_DNS_TOKEN)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(reason(&r), "Forbidden");
    // The other service account reads the ConfigMap it read online, though
    // it is no cache agent, and under any User-Agent it likes.
    let r = pod_get(
        &e.pki,
        h.secure,
        "/api/v1/namespaces/app/configmaps/settings",
        "my-app/1.0",
        Some(OTHER_TOKEN),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["data"]["k"], "v");

    // Reviews are questions only the cloud can answer.
    let sar = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "x", "resourceAttributes": {"verb": "get", "resource": "pods"}}});
    let r = send(
        &e.c,
        Method::POST,
        &format!("{proxy}/apis/authorization.k8s.io/v1/subjectaccessreviews"),
        &[
            ("user-agent", KUBELET),
            ("content-type", "application/json"),
        ],
        Bytes::from(sar.to_string()),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_ne!(r.json()["kind"], "SubjectAccessReview", "never an echo");

    // An offline restart keeps all of it: the token book is in the store.
    h.stop().await;
    let h = Hub::start(&args).await;
    eventually(
        Duration::from_secs(15),
        "restarted hub answers offline",
        || async {
            let r = pod_get(
                &e.pki,
                h.secure,
                "/api/v1/services",
                COREDNS,
                Some(CORE_DNS_TOKEN),
            )
            .await;
            r.status == StatusCode::OK
        },
    )
    .await;
    let r = pod_get(&e.pki, h.secure, SECRET, KUBELET, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let r = pod_get(&e.pki, h.secure, SECRET, KUBELET, Some(OTHER_TOKEN)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert!(!r.text().contains(SECRET_B64));
    let r = get(&e.c, &format!("{}{SECRET}", h.proxy_url()), KUBELET).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_escapes_are_refused_and_token_updates_are_honest() {
    let e = env().await;
    let args = e.files.args(&[e.api.url()], &["--pool-scope-resources="]);
    let h = Hub::start(&args).await;
    for path in [
        "/api/v1/namespaces/app/secrets/%zz",
        "/api/v1/namespaces/app/configmaps?labelSelector=%zz",
    ] {
        let r = get(&e.c, &format!("{}{path}", h.proxy_url()), KUBELET).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.text());
        assert_eq!(r.json()["reason"], "BadRequest");
        assert!(
            !e.api.requests().iter().any(|q| q.path.contains("%zz")),
            "{path} was forwarded"
        );
    }
    // kubeletcertificate mode (these hubs) has no bootstrap token to update.
    let r = send(
        &e.c,
        Method::POST,
        &format!("{}/v1/token", h.hub_url()),
        &[("content-type", "application/json")],
        Bytes::from(r#"{"jointoken":"abcdef.0123456789abcdef"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert!(r.text().contains("kubeletcertificate"), "{}", r.text());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_service_account_jwt_is_authenticated_offline_and_gets_only_what_its_account_was_authorized_for()
 {
    let e = env().await;
    // deploy/ binds the issuer-discovery role to the hub's groups.
    e.api.grant_issuer_discovery("system:nodes");
    let reader = "system:serviceaccount:app:reader";
    e.api.restrict(
        reader,
        vec![Rule::new(&["get", "list", "watch"], &[""], &["configmaps"]).in_namespaces(&["app"])],
    );
    let args = e.files.args(&[e.api.url()], &["--pool-scope-resources="]);
    let h = Hub::start(&args).await;
    let online_token = e
        .api
        .service_account_token("app", "reader", Duration::from_secs(3600));
    let cms = "/api/v1/namespaces/app/configmaps";
    let r = pod_get(&e.pki, h.secure, cms, "reader/1", Some(&online_token)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = pod_get(&e.pki, h.secure, SECRET, "reader/1", Some(&online_token)).await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "the cloud refuses: {}",
        r.text()
    );
    eventually(
        Duration::from_secs(15),
        "the hub fetched the issuer keys",
        || async { e.api.requests().iter().any(|q| q.path == "/openid/v1/jwks") },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    e.api.shutdown().await;
    wait_offline(&e.c, &h.hub_url(), &e.api.url()).await;

    // A token of the same account, never seen online, verifies against the
    // cached keys and gets what the account was authorized for.
    let fresh = e
        .api
        .service_account_token("app", "reader", Duration::from_secs(3600));
    assert_ne!(fresh, online_token);
    let r = pod_get(&e.pki, h.secure, cms, "reader/1", Some(&fresh)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(
        names(&r.json()).contains(&"settings".to_string()),
        "{}",
        r.text()
    );
    for path in [SECRET, "/api/v1/namespaces/kube-system/configmaps"] {
        let r = pod_get(&e.pki, h.secure, path, "reader/1", Some(&fresh)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.text());
        assert!(!r.text().contains(SECRET_B64));
    }
    // Another account's valid JWT authenticates but was authorized for nothing.
    let stranger = e
        .api
        .service_account_token("app", "stranger", Duration::from_secs(3600));
    let r = pod_get(&e.pki, h.secure, cms, "reader/1", Some(&stranger)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    // Forged and expired tokens are not anyone.
    let forged = e
        .api
        .forged_service_account_token("app", "reader", Duration::from_secs(3600));
    let expired = e.api.service_account_token_at(
        "app",
        "reader",
        std::time::SystemTime::now() - Duration::from_secs(7200),
        Duration::from_secs(3600),
    );
    for (what, t) in [("forged", &forged), ("expired", &expired)] {
        let r = pod_get(&e.pki, h.secure, cms, "reader/1", Some(t)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.text());
    }

    // The keys survive an offline restart.
    h.stop().await;
    let h = Hub::start(&args).await;
    let another = e
        .api
        .service_account_token("app", "reader", Duration::from_secs(1800));
    eventually(
        Duration::from_secs(15),
        "a fresh JWT after an offline restart",
        || async {
            pod_get(&e.pki, h.secure, cms, "reader/1", Some(&another))
                .await
                .status
                == StatusCode::OK
        },
    )
    .await;
    let r = pod_get(&e.pki, h.secure, cms, "reader/1", Some(&forged)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_from_the_cloud_is_remembered_as_a_403() {
    let e = env().await;
    let args = e.files.args(&[e.api.url()], &["--pool-scope-resources="]);
    let h = Hub::start(&args).await;
    let cm = "/api/v1/namespaces/app/configmaps/settings";
    let r = pod_get(&e.pki, h.secure, cm, "my-app/1.0", Some(OTHER_TOKEN)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // The cloud takes the permission away; the next read is refused.
    e.api.restrict("system:serviceaccount:app:other", vec![]);
    let r = pod_get(&e.pki, h.secure, cm, "my-app/1.0", Some(OTHER_TOKEN)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    e.api.shutdown().await;
    wait_offline(&e.c, &h.hub_url(), &e.api.url()).await;
    // An older copy is cached, but the answer is the cloud's last word.
    let r = pod_get(&e.pki, h.secure, cm, "my-app/1.0", Some(OTHER_TOKEN)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert!(!r.text().contains("\"k\""), "{}", r.text());
    h.stop().await;
}

/// A scope is keyed by identity and User-Agent component, and a pod picks
/// its User-Agent: one token cycling User-Agents gets its first 8
/// components cached, no more, so the store does not write what it reads
/// once per claim. Offline the first components are answered; the later
/// ones never were cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_caches_for_a_bounded_number_of_user_agents() {
    // The hub's bound (cache::policy::COMPONENTS_PER_IDENTITY).
    const COMPONENTS: usize = 8;
    let e = env().await;
    let args = e.files.args(&[e.api.url()], &["--pool-scope-resources="]);
    let h = Hub::start(&args).await;
    let cm = "/api/v1/namespaces/app/configmaps/settings";
    let read = |i: usize| {
        let (pki, secure, ua) = (e.pki.clone(), h.secure, format!("app-{i}/1.0"));
        async move { pod_get(&pki, secure, cm, &ua, Some(OTHER_TOKEN)).await }
    };
    for i in 0..COMPONENTS + 2 {
        let r = read(i).await;
        assert_eq!(r.status, StatusCode::OK, "online, app-{i}: {}", r.text());
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    e.api.shutdown().await;
    wait_offline(&e.c, &h.hub_url(), &e.api.url()).await;
    for i in 0..COMPONENTS + 2 {
        let r = read(i).await;
        if i < COMPONENTS {
            assert_eq!(r.status, StatusCode::OK, "offline, app-{i}: {}", r.text());
            assert_eq!(r.json()["data"]["k"], "v");
        } else {
            assert_ne!(
                r.status,
                StatusCode::OK,
                "offline, app-{i} was never cached"
            );
            assert!(!r.text().contains("\"k\""), "{}", r.text());
        }
    }
    h.stop().await;
}

/// A list as kubectl asks for it (a Table first), on the pod-facing listener.
async fn kubectl_table(pki: &TestPki, secure: SocketAddr, path: &str, token: &str) -> Reply {
    const TABLE_FIRST: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,\
        application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
    let req = Request::get(format!(
        "https://kubernetes.default.svc:{}{path}",
        secure.port()
    ))
    .header(
        "user-agent",
        "kubectl/v1.34.0 (linux/amd64) kubernetes/abcdef",
    )
    .header("accept", TABLE_FIRST)
    .header("authorization", format!("Bearer {token}"))
    .body(Full::new(Bytes::new()))
    .unwrap();
    hub::tls_send(secure, "kubernetes.default.svc", pki.ca_pem(), None, req)
        .await
        .expect("TLS to the pod-facing listener")
}

/// kubectl's default output is a Table, which holds rows, not objects: the
/// cloud's Table for an identity's list is kept whole, and offline that
/// identity's same request is answered with it while anyone else is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_tables_are_answered_offline_only_to_the_identity_that_listed_them() {
    let e = env().await;
    let args = e.files.args(&[e.api.url()], &["--pool-scope-resources="]);
    let h = Hub::start(&args).await;
    let cms = "/api/v1/namespaces/app/configmaps?limit=500";
    let online = kubectl_table(&e.pki, h.secure, cms, CORE_DNS_TOKEN).await;
    assert_eq!(online.status, StatusCode::OK, "{}", online.text());
    assert_eq!(online.json()["kind"], "Table", "{}", online.text());
    assert!(online.text().contains("settings"), "{}", online.text());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    e.api.shutdown().await;
    wait_offline(&e.c, &h.hub_url(), &e.api.url()).await;

    let offline = kubectl_table(&e.pki, h.secure, cms, CORE_DNS_TOKEN).await;
    assert_eq!(offline.status, StatusCode::OK, "{}", offline.text());
    assert_eq!(offline.json()["kind"], "Table");
    assert_eq!(
        offline.json()["rows"],
        online.json()["rows"],
        "the cloud's rows, as they were"
    );
    // A scope this identity never listed as a Table or as objects.
    let wider = kubectl_table(
        &e.pki,
        h.secure,
        "/api/v1/configmaps?limit=500",
        CORE_DNS_TOKEN,
    )
    .await;
    assert_eq!(wider.status, StatusCode::FORBIDDEN, "{}", wider.text());
    assert!(!wider.text().contains("settings"));
    // A token the cloud never accepted gets nothing.
    let stranger = kubectl_table(&e.pki, h.secure, cms, "never-seen-token-0123456789").await;
    assert_eq!(
        stranger.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        stranger.text()
    );
    assert!(!stranger.text().contains("settings"));
    h.stop().await;
}

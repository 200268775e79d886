//! The online proxy path through the public surface: the hub's listeners,
//! the hub server, and what the apiserver double receives.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use yurthub_e2e::apiserver::{ApiServer, Auth, Fault, FaultKind, User};
use yurthub_e2e::hub::{
    self, Hub, HubFiles, NODE, eventually, get, metric_value, plain_client, send,
};
use yurthub_e2e::pki::TestPki;

const KUBELET: &str = "kubelet/v1.34.0 (linux/amd64) kubernetes/abcdef";

fn pod(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "demo"}},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}]}
    })
}

async fn double(pki: &Arc<TestPki>) -> ApiServer {
    let s = ApiServer::builder()
        .pki(pki.clone())
        .bookmark_interval(Duration::from_secs(1))
        .start()
        .await
        .expect("double starts");
    s.create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}))
        .expect("node");
    s
}

async fn setup(extra: &[&str]) -> (Arc<TestPki>, ApiServer, HubFiles, Hub) {
    let pki = Arc::new(TestPki::new().expect("pki"));
    let api = double(&pki).await;
    let files = HubFiles::new(&pki);
    let hub = Hub::start(&files.args(&[api.url()], extra)).await;
    (pki, api, files, hub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_server_reports_health_readiness_and_metrics() {
    let (_pki, api, _files, hub) = setup(&[]).await;
    let c = plain_client();
    let r = get(&c, &format!("{}/v1/healthz", hub.hub_url()), "curl").await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "OK"));
    let r = get(&c, &format!("{}/v1/readyz", hub.hub_url()), "curl").await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "OK"));
    let r = get(&c, &format!("{}/nope", hub.hub_url()), "curl").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = send(
        &c,
        Method::POST,
        &format!("{}/v1/healthz", hub.hub_url()),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    // One proxied request so the per-request series exist.
    let r = get(
        &c,
        &format!("{}/api/v1/namespaces/default/pods", hub.proxy_url()),
        KUBELET,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let m = get(&c, &format!("{}/metrics", hub.hub_url()), "prometheus")
        .await
        .text();
    let server = format!(
        "node_yurthub_server_healthy_status{{server=\"{}/\"}}",
        api.url()
    );
    assert_eq!(metric_value(&m, &server), Some(1.0), "{m}");
    for series in [
        "node_yurthub_in_flight_requests_total",
        "node_yurthub_proxy_traffic_collector{",
        "node_yurthub_closable_conns_collector{",
        "node_yurthub_proxy_request_duration_seconds_bucket{",
        "openyurt_version_info{component_name=\"yurthub\"",
    ] {
        assert!(m.contains(series), "{series} missing from:\n{m}");
    }
    let traffic = metric_value(
        &m,
        "node_yurthub_proxy_traffic_collector{verb=\"list\",resource=\"pods\",subresources=\"\",client=\"kubelet\"}",
    );
    assert!(traffic.unwrap_or(0.0) > 0.0, "traffic counted: {m}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_requests_use_the_hub_identity_and_come_back_byte_identical() {
    let (pki, api, _files, hub) = setup(&[]).await;
    api.create(pod("default", "p1")).expect("pod");
    let c = plain_client();
    let via_hub = get(
        &c,
        &format!("{}/api/v1/namespaces/default/pods/p1", hub.proxy_url()),
        KUBELET,
    )
    .await;
    assert_eq!(via_hub.status, StatusCode::OK, "{}", via_hub.text());

    let (cert, key) = pki
        .issue_client_cert("system:node:node1", &["system:nodes"])
        .unwrap();
    let direct = hub::tls_send(
        api.addr(),
        "localhost",
        pki.ca_pem(),
        Some((&cert, &key)),
        hub::get_request(
            &format!("{}/api/v1/namespaces/default/pods/p1", api.url()),
            KUBELET,
            &[],
        ),
    )
    .await
    .expect("direct request");
    assert_eq!(via_hub.body, direct.body, "the hub must not alter the body");

    let seen = api
        .requests()
        .into_iter()
        .find(|r| {
            r.path == "/api/v1/namespaces/default/pods/p1"
                && r.user_agent.as_deref() == Some(KUBELET)
        })
        .expect("the double saw the request");
    match &seen.auth {
        Auth::ClientCert { cn, orgs } => {
            assert_eq!(cn, "system:node:node1");
            let mut orgs = orgs.clone();
            orgs.sort();
            assert_eq!(orgs, ["openyurt:yurthub", "system:nodes"]);
        }
        other => panic!("expected the hub's client certificate, got {other:?}"),
    }
    assert_eq!(
        seen.http_version, "HTTP/2.0",
        "HTTP/2 is used where the apiserver offers it"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_forwarded_without_a_client_certificate() {
    let (_pki, api, _files, hub) = setup(&[]).await;
    api.add_token("sa-token", service_account("app"));
    let c = plain_client();
    let r = send(
        &c,
        Method::GET,
        &format!("{}/api/v1/namespaces/default/pods", hub.proxy_url()),
        &[
            ("authorization", "Bearer sa-token"),
            ("user-agent", "app/1.0"),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let seen = api
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.user_agent.as_deref() == Some("app/1.0"))
        .expect("seen");
    assert_eq!(seen.auth, Auth::Bearer("sa-token".into()));
    assert_eq!(
        seen.client_cert, None,
        "no client certificate with a bearer token"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_facing_listener_never_lends_the_node_identity() {
    let (pki, api, _files, hub) = setup(&[]).await;
    api.add_token("pod-token", service_account("app"));
    let url = format!(
        "https://kubernetes.default.svc:{}/api/v1/namespaces/default/pods",
        hub.secure.port()
    );

    // TLS to the hub verifies against the cluster CA for the in-cluster name.
    let anon = hub::tls_send(
        hub.secure,
        "kubernetes.default.svc",
        pki.ca_pem(),
        None,
        hub::get_request(&url, "pod-anon/1", &[]),
    )
    .await
    .expect("TLS to the hub");
    assert_eq!(
        anon.status,
        StatusCode::FORBIDDEN,
        "anonymous stays anonymous: {}",
        anon.text()
    );
    let seen = api
        .requests()
        .into_iter()
        .find(|r| r.user_agent.as_deref() == Some("pod-anon/1"))
        .expect("seen");
    assert_eq!(seen.auth, Auth::Anonymous);

    let ok = hub::tls_send(
        hub.secure,
        "10.96.0.1",
        pki.ca_pem(),
        None,
        hub::get_request(&url, "pod-app/1", &[("authorization", "Bearer pod-token")]),
    )
    .await
    .expect("TLS to the hub by VIP");
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    let seen = api
        .requests()
        .into_iter()
        .find(|r| r.user_agent.as_deref() == Some("pod-app/1"))
        .expect("seen");
    assert_eq!(seen.auth, Auth::Bearer("pod-token".into()));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_gates_clients_but_not_the_hub_itself() {
    let pki = Arc::new(TestPki::new().unwrap());
    let api = double(&pki).await;
    let files = HubFiles::new(&pki);
    // No serving certificate: certificates are not ready.
    let args: Vec<String> = files
        .args(&[api.url()], &[])
        .into_iter()
        .filter(|a| !a.starts_with("--tls-"))
        .collect();
    let hub = Hub::start(&args).await;
    let c = plain_client();
    assert_eq!(
        get(&c, &format!("{}/v1/healthz", hub.hub_url()), "x")
            .await
            .status,
        StatusCode::OK
    );
    let r = get(&c, &format!("{}/v1/readyz", hub.hub_url()), "x").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "certificates are not ready"
        )
    );
    let r = get(
        &c,
        &format!("{}/api/v1/namespaces/default/pods", hub.proxy_url()),
        KUBELET,
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["reason"], "ServiceUnavailable");
    let r = get(
        &c,
        &format!("{}/api/v1/namespaces/default/pods", hub.proxy_url()),
        "yurthub/x",
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the hub's own clients bypass readiness: {}",
        r.text()
    );
    hub.stop().await;
}

/// Opens a watch through the hub and returns a channel of raw chunks.
async fn open_watch(
    url: &str,
    ua: &str,
) -> (StatusCode, tokio::sync::mpsc::Receiver<Option<Bytes>>) {
    let c = plain_client();
    let req = hub::get_request(url, ua, &[]);
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .expect("watch answered")
        .expect("watch");
    let status = resp.status();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut body = resp.into_body();
    tokio::spawn(async move {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Ok(d) = f.into_data()
                        && tx.send(Some(d)).await.is_err()
                    {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(None).await;
    });
    (status, rx)
}

/// Reads chunks until one contains `needle`; None means the stream ended.
async fn wait_for(
    rx: &mut tokio::sync::mpsc::Receiver<Option<Bytes>>,
    needle: &str,
    within: Duration,
) -> Result<(), &'static str> {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = String::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => return Err("timed out"),
            Ok(None) | Ok(Some(None)) => return Err("stream ended"),
            Ok(Some(Some(chunk))) => {
                seen.push_str(&String::from_utf8_lossy(&chunk));
                if seen.contains(needle) {
                    return Ok(());
                }
            }
        }
    }
}

/// The hub's `node_yurthub_server_healthy_status` for `server`.
async fn server_health(hub: &Hub, server: &ApiServer) -> Option<f64> {
    let m = get(&plain_client(), &format!("{}/metrics", hub.hub_url()), "p")
        .await
        .text();
    let series = format!(
        "node_yurthub_server_healthy_status{{server=\"{}/\"}}",
        server.url()
    );
    metric_value(&m, &series)
}

async fn wait_for_end(
    rx: &mut tokio::sync::mpsc::Receiver<Option<Bytes>>,
    within: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => return false,
            Ok(None) | Ok(Some(None)) => return true,
            Ok(Some(Some(_))) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_stream_events_as_they_happen() {
    let (_pki, api, _files, hub) = setup(&[]).await;
    let rv = api.resource_version();
    let (status, mut rx) = open_watch(
        &format!(
            "{}/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}",
            hub.proxy_url()
        ),
        KUBELET,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    api.create(pod("default", "streamed")).unwrap();
    wait_for(&mut rx, "\"streamed\"", Duration::from_secs(3))
        .await
        .expect("ADDED event delivered without buffering");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_mode_fails_over_mid_watch_and_returns_to_the_first_server() {
    let pki = Arc::new(TestPki::new().unwrap());
    let a = double(&pki).await;
    let b = double(&pki).await;
    let files = HubFiles::new(&pki);
    let hub = Hub::start(&files.args(&[a.url(), b.url()], &["--lb-mode=priority"])).await;
    let c = plain_client();
    let list = format!("{}/api/v1/namespaces/default/pods", hub.proxy_url());

    assert_eq!(get(&c, &list, "client-a/1").await.status, StatusCode::OK);
    assert!(
        a.requests()
            .iter()
            .any(|r| r.user_agent.as_deref() == Some("client-a/1")),
        "priority: the first server serves"
    );

    let (status, mut rx) = open_watch(&format!("{list}?watch=true"), KUBELET).await;
    assert_eq!(status, StatusCode::OK);
    a.shutdown().await;
    assert!(
        wait_for_end(&mut rx, Duration::from_secs(5)).await,
        "the watch through the dead server ends promptly"
    );

    eventually(
        Duration::from_secs(5),
        "requests reach the second server",
        || async {
            let r = get(&c, &list, "client-b/1").await;
            r.status == StatusCode::OK
                && b.requests()
                    .iter()
                    .any(|r| r.user_agent.as_deref() == Some("client-b/1"))
        },
    )
    .await;
    assert_eq!(server_health(&hub, &a).await, Some(0.0));

    a.restart().await.expect("first server back");
    a.create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}))
        .ok();
    eventually(
        Duration::from_secs(10),
        "requests return to the first server after it recovers",
        || async {
            let _ = get(&c, &list, "client-c/1").await;
            a.requests()
                .iter()
                .any(|r| r.user_agent.as_deref() == Some("client-c/1"))
        },
    )
    .await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests_over_healthy_servers() {
    let pki = Arc::new(TestPki::new().unwrap());
    let a = double(&pki).await;
    let b = double(&pki).await;
    let files = HubFiles::new(&pki);
    let hub = Hub::start(&files.args(&[a.url(), b.url()], &["--lb-mode=rr"])).await;
    let c = plain_client();
    // The hub's own upstream requests (cloudsync, the multiplexer) take turns
    // from the same round-robin counter, so the test's requests alone need
    // not alternate strictly: enough of them must land on both.
    for _ in 0..20 {
        assert_eq!(
            get(
                &c,
                &format!("{}/api/v1/namespaces/default/pods", hub.proxy_url()),
                "rr/1"
            )
            .await
            .status,
            StatusCode::OK
        );
    }
    let count = |s: &ApiServer| {
        s.requests()
            .iter()
            .filter(|r| r.user_agent.as_deref() == Some("rr/1"))
            .count()
    };
    assert!(
        count(&a) >= 5 && count(&b) >= 5,
        "a={} b={}",
        count(&a),
        count(&b)
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_backend_answers_502_with_a_status() {
    // Without the multiplexer: its upstream watches retrying against the
    // dead server report transport errors, which mark the server unhealthy
    // sooner, and edge mode then answers from the cache instead of 502.
    let (_pki, api, _files, hub) = setup(&["--pool-scope-resources="]).await;
    api.shutdown().await;
    let c = plain_client();
    eventually(
        Duration::from_secs(5),
        "a 502 Status once the only server is gone",
        || async {
            let r = get(
                &c,
                &format!("{}/api/v1/namespaces/default/pods", hub.proxy_url()),
                "x/1",
            )
            .await;
            r.status == StatusCode::BAD_GATEWAY && r.json()["kind"] == "Status"
        },
    )
    .await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_lease_is_answered_locally_while_the_hub_renews_it_in_the_cloud() {
    let (_pki, api, _files, hub) = setup(&[]).await;
    let c = plain_client();
    let url = format!(
        "{}/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{NODE}",
        hub.proxy_url()
    );
    let r = get(&c, &url, KUBELET).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["spec"]["holderIdentity"], NODE);
    assert!(
        !api.requests()
            .iter()
            .any(|r| r.path.contains("/leases/") && r.user_agent.as_deref() == Some(KUBELET)),
        "kubelet's lease requests never reach the cloud in edge mode"
    );
    let first = api
        .get("coordination.k8s.io/v1", "Lease", "kube-node-lease", NODE)
        .expect("cloud lease exists")["spec"]["renewTime"]
        .clone();
    eventually(
        Duration::from_secs(5),
        "the hub renews the cloud lease",
        || async {
            api.get("coordination.k8s.io/v1", "Lease", "kube-node-lease", NODE)
                .unwrap()["spec"]["renewTime"]
                != first
        },
    )
    .await;
    let lease = api
        .get("coordination.k8s.io/v1", "Lease", "kube-node-lease", NODE)
        .unwrap();
    assert_eq!(
        lease["metadata"]["ownerReferences"][0]["kind"], "Node",
        "{lease}"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_kubelet_stops_the_heartbeat_after_the_grace_period() {
    let (_pki, api, _files, hub) = setup(&["--kubelet-health-grace-period=2s"]).await;
    let c = plain_client();
    let url = format!(
        "{}/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{NODE}",
        hub.proxy_url()
    );
    assert_eq!(get(&c, &url, KUBELET).await.status, StatusCode::OK);
    // Kubelet goes quiet: after the grace period the hub stops renewing and
    // reports the servers unhealthy.
    let server = format!(
        "node_yurthub_server_healthy_status{{server=\"{}/\"}}",
        api.url()
    );
    eventually(
        Duration::from_secs(8),
        "servers unhealthy once kubelet is silent",
        || async {
            let m = get(&c, &format!("{}/metrics", hub.hub_url()), "p")
                .await
                .text();
            metric_value(&m, &server) == Some(0.0)
        },
    )
    .await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_mode_forwards_the_kubelet_lease() {
    let (_pki, api, _files, hub) = setup(&["--working-mode=cloud"]).await;
    let c = plain_client();
    let url = format!(
        "{}/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{NODE}",
        hub.proxy_url()
    );
    let r = get(&c, &url, KUBELET).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "no hub heartbeat in cloud mode, the cloud answers: {}",
        r.text()
    );
    assert!(
        api.requests()
            .iter()
            .any(|r| r.path.contains("/leases/") && r.user_agent.as_deref() == Some(KUBELET))
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_the_hub_keeps_serving() {
    let (_pki, api, _files, hub) = setup(&["--max-request-body-bytes=1024"]).await;
    let c = plain_client();
    let base = hub.proxy_url();

    // A malformed resource path, as the apiserver would judge it.
    let r = get(&c, &format!("{base}/api/v1/watch"), "x/1").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());

    // Bodies over the limit: declared and chunked.
    let big = vec![b'x'; 4096];
    let r = send(
        &c,
        Method::POST,
        &format!("{base}/api/v1/namespaces/default/configmaps"),
        &[("content-type", "application/json")],
        big.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let chunked =
        http_body_util::StreamBody::new(futures_util::stream::iter((0..8).map(|_| {
            Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from(vec![b'x'; 512])))
        })));
    let req = http::Request::post(format!("{base}/api/v1/namespaces/default/configmaps"))
        .header("content-type", "application/json")
        .body(chunked)
        .unwrap();
    let chunked_client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let resp = tokio::time::timeout(Duration::from_secs(10), chunked_client.request(req))
        .await
        .expect("answered")
        .expect("response");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // An upstream that answers garbage.
    api.inject(Fault::new("/api/v1/namespaces/garbage", FaultKind::Garbage));
    let r = get(&c, &format!("{base}/api/v1/namespaces/garbage/pods"), "x/1").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert_eq!(r.json()["kind"], "Status");

    // An upstream that closes mid-stream: the client sees a truncated body.
    api.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cut"}}))
        .unwrap();
    for i in 0..20 {
        api.create(pod("cut", &format!("pod-{i}"))).unwrap();
    }
    api.inject(Fault::new(
        "/api/v1/namespaces/cut",
        FaultKind::CloseMidStream { after_bytes: 200 },
    ));
    let req = hub::get_request(&format!("{base}/api/v1/namespaces/cut/pods"), "x/1", &[]);
    let resp = c.request(req).await.expect("headers arrive");
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("ends");
    assert!(
        body.is_err() || serde_json::from_slice::<Value>(&body.unwrap().to_bytes()).is_err(),
        "a cut stream is never presented as complete"
    );

    // A slow client that never reads a watch does not stall anyone else.
    let mut slow = tokio::net::TcpStream::connect(hub.proxy).await.unwrap();
    use tokio::io::AsyncWriteExt;
    slow.write_all(
        "GET /api/v1/pods?watch=true HTTP/1.1\r\nHost: x\r\nUser-Agent: slow/1\r\n\r\n"
            .to_string()
            .as_bytes(),
    )
    .await
    .unwrap();
    for i in 0..50 {
        api.create(pod("default", &format!("burst-{i}"))).unwrap();
    }

    api.clear_faults();
    let r = get(&c, &format!("{base}/api/v1/namespaces/default/pods"), "x/1").await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the hub still serves: {}",
        r.text()
    );
    drop(slow);
    hub.stop().await;
}

#[test]
fn the_binary_rejects_invalid_flags_naming_the_flag() {
    let out = std::process::Command::new(hub::hub_binary())
        .args([
            "--node-name=n",
            "--server-addr=https://127.0.0.1:1",
            "--bootstrap-mode=kubeletcertificate",
            "--lb-mode=random",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--lb-mode"), "{err}");
    let out = std::process::Command::new(hub::hub_binary())
        .arg("--version")
        .output()
        .expect("run");
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("yurthub "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let pki = Arc::new(TestPki::new().unwrap());
    let api = double(&pki).await;
    let files = HubFiles::new(&pki);
    let port = hub::free_port();
    let mut args = files.args(&[api.url()], &[]);
    args.retain(|a| !a.starts_with("--proxy-port"));
    args.push(format!("--proxy-port={port}"));
    let mut p = hub::HubProcess::spawn(&args);
    let c = plain_client();
    let url = format!("http://127.0.0.1:{port}/api/v1/namespaces/default/pods");
    eventually(Duration::from_secs(15), "the hub process serves", || async {
        let req = hub::get_request(&url, "x/1", &[]);
        matches!(tokio::time::timeout(Duration::from_secs(2), c.request(req)).await, Ok(Ok(r)) if r.status() == StatusCode::OK)
    })
    .await;
    // A watch is in flight when SIGTERM arrives: it is ended, the process exits 0.
    let (_, mut rx) = open_watch(&format!("{url}?watch=true"), "w/1").await;
    let status = tokio::task::spawn_blocking(move || {
        p.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10))
    })
    .await
    .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        wait_for_end(&mut rx, Duration::from_secs(2)).await,
        "open streams end at shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_responses_and_watch_frames_pass_through_unchanged() {
    let pki = Arc::new(TestPki::new().unwrap());
    let api = ApiServer::builder()
        .pki(pki.clone())
        .protobuf(Arc::new(yurthub_e2e::apiserver::KubeProtobuf))
        .start()
        .await
        .expect("double");
    api.create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}))
        .unwrap();
    api.create(pod("default", "pb")).unwrap();
    let files = HubFiles::new(&pki);
    let hub = Hub::start(&files.args(&[api.url()], &[])).await;
    let c = plain_client();
    let accept = "application/vnd.kubernetes.protobuf,application/json";
    let path = "/api/v1/namespaces/default/pods/pb";
    let via_hub = send(
        &c,
        Method::GET,
        &format!("{}{path}", hub.proxy_url()),
        &[("user-agent", KUBELET), ("accept", accept)],
        Bytes::new(),
    )
    .await;
    assert_eq!(via_hub.status, StatusCode::OK);
    assert_eq!(
        via_hub.headers["content-type"],
        "application/vnd.kubernetes.protobuf"
    );
    assert!(via_hub.body.starts_with(b"k8s\0"), "a protobuf envelope");
    let (cert, key) = pki
        .issue_client_cert("system:node:node1", &["system:nodes"])
        .unwrap();
    let direct = hub::tls_send(
        api.addr(),
        "localhost",
        pki.ca_pem(),
        Some((&cert, &key)),
        hub::get_request(
            &format!("{}{path}", api.url()),
            KUBELET,
            &[("accept", accept)],
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        via_hub.body, direct.body,
        "protobuf bytes are forwarded untouched"
    );
    let decoded = yurthub::codec::to_json(&via_hub.body).expect("decodes");
    assert_eq!(decoded["metadata"]["name"], "pb");

    // A protobuf watch: length-prefixed frames stream through as they come.
    let rv = api.resource_version();
    let req = http::Request::get(format!(
        "{}/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}",
        hub.proxy_url()
    ))
    .header("user-agent", KUBELET)
    .header("accept", "application/vnd.kubernetes.protobuf;stream=watch")
    .body(http_body_util::Full::new(Bytes::new()))
    .unwrap();
    let resp = c.request(req).await.expect("watch");
    assert_eq!(
        resp.headers()["content-type"],
        "application/vnd.kubernetes.protobuf;stream=watch"
    );
    let mut body = resp.into_body();
    api.create(pod("default", "pb-watched")).unwrap();
    let mut decoder = yurthub::codec::WatchDecoder::new(yurthub::codec::Format::Protobuf);
    let event = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let frame = body.frame().await.expect("stream open").expect("frame");
            if let Ok(data) = frame.into_data() {
                decoder.push(&data);
                if let Some(ev) = decoder.next_event().expect("valid frame") {
                    return ev;
                }
            }
        }
    })
    .await
    .expect("a watch event within 5 s");
    let obj = yurthub::codec::to_json(&event.object_bytes()).expect("object decodes");
    assert_eq!(obj["metadata"]["name"], "pb-watched");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_writes_a_diagnostic_dump_under_the_root_dir() {
    let pki = Arc::new(TestPki::new().unwrap());
    let api = double(&pki).await;
    let files = HubFiles::new(&pki);
    let args = files.args(&[api.url()], &[]);
    let hub_port: u16 = args
        .iter()
        .find_map(|a| a.strip_prefix("--serve-port=")?.parse().ok())
        .unwrap();
    let mut p = hub::HubProcess::spawn(&args);
    let c = plain_client();
    eventually(Duration::from_secs(15), "the hub process serves", || async {
        let req = hub::get_request(&format!("http://127.0.0.1:{hub_port}/v1/healthz"), "x/1", &[]);
        matches!(tokio::time::timeout(Duration::from_secs(2), c.request(req)).await, Ok(Ok(r)) if r.status() == StatusCode::OK)
    })
    .await;
    let pid = p.child.id();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    let dump = files
        .dir
        .path()
        .join("root")
        .join(format!("yurthub.{pid}.stacks.log"));
    eventually(Duration::from_secs(5), "the dump file", || async {
        dump.exists()
    })
    .await;
    let text = std::fs::read_to_string(&dump).unwrap();
    assert!(
        text.contains("threads (tid name state wchan):") && text.contains("runtime:"),
        "{text}"
    );
    let status = tokio::task::spawn_blocking(move || {
        p.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10))
    })
    .await
    .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_still_flowing_is_not_cut_when_its_backend_turns_unhealthy() {
    // A lease renewal that fails marks the backend unhealthy, which ends its
    // watches; a list still arriving over a slow link must finish whole (a
    // dead backend is caught by the stall bound instead), never end short.
    let (_pki, api, _files, hub) = setup(&[]).await;
    for i in 0..200 {
        api.create(pod("default", &format!("slow-{i:03}"))).unwrap();
    }
    let path = "/api/v1/namespaces/default/pods";
    api.inject(
        Fault::new(
            path,
            FaultKind::Trickle {
                chunk: 8192,
                every: Duration::from_millis(100),
            },
        )
        .method("GET")
        .times(1),
    );
    let lease = format!("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{NODE}");
    let failing = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        api.inject(Fault::new(&lease, FaultKind::Status(500)));
    };
    let c = plain_client();
    // The kubelet's list is filtered whole, so it carries no Content-Length:
    // only the body's own end tells the client it is complete.
    let url = format!("{}{path}", hub.proxy_url());
    let (r, ()) = tokio::join!(get(&c, &url, KUBELET), failing);
    assert_eq!(r.status, StatusCode::OK);
    let list: Value = serde_json::from_slice(&r.body).expect("a whole JSON list");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(200));
    assert_eq!(
        server_health(&hub, &api).await,
        Some(0.0),
        "the backend turned unhealthy while the list was in flight"
    );
    api.clear_faults();
    hub.stop().await;
}

/// Clients that ask for large lists and then stop reading hold what the
/// apiserver already sent them (up to a stream's flow-control window each).
/// A few of them must neither stall the other streams of the shared
/// connection nor fail the heartbeat. Past the connection's window (16
/// streams' worth) the proxied streams stall, but the heartbeat runs on the
/// hub's control connection and the backend stays healthy; and once the
/// silent clients have taken nothing for the stall limit (10 s) their
/// upstream streams are cut, so the others are answered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_of_large_lists_neither_fail_the_heartbeat_nor_stall_others() {
    let (_pki, api, _files, hub) = setup(&[]).await;
    let note = "n".repeat(4096);
    let mut rv = String::new();
    for i in 0..1500 {
        let mut p = pod("default", &format!("big-{i:04}"));
        p["metadata"]["annotations"] = json!({ "note": note });
        rv = api.create(p).unwrap()["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    // A watch that stays quiet through all of it waits on the upstream,
    // not on its client: it is never cut.
    let (status, mut quiet) = open_watch(
        &format!(
            "{}/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}",
            hub.proxy_url()
        ),
        "quiet/1.0",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let addr: std::net::SocketAddr = hub.proxy_url()["http://".len()..].parse().unwrap();
    let mut silent = Vec::new();
    for _ in 0..6 {
        silent.push(silent_list(addr).await);
    }
    let c = plain_client();
    let started = std::time::Instant::now();
    let mut worst = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(8) {
        assert_healthy(&hub, &api, started, "6 clients went silent").await;
        let t = std::time::Instant::now();
        let r = node_as_other(&c, &hub.proxy_url()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        worst < Duration::from_secs(2),
        "another client waited {worst:?}"
    );
    // Enough silent streams to take the whole connection's credit.
    for _ in 0..18 {
        silent.push(silent_list(addr).await);
    }
    let started = std::time::Instant::now();
    let other = tokio::spawn({
        let proxy = hub.proxy_url();
        async move { node_as_other(&plain_client(), &proxy).await }
    });
    while !other.is_finished() {
        assert_healthy(&hub, &api, started, "24 clients went silent").await;
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "another client still waits {:?} after 24 clients went silent",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let r = other.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // Every silent stream is cut in its turn (the last went silent last).
    let mut cut = 0.0;
    while cut < 24.0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{cut} of the 24 silent streams were cut after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let m = get(&c, &format!("{}/metrics", hub.hub_url()), "p")
            .await
            .text();
        cut = metric_value(&m, "node_yurthub_proxy_stalled_clients_cut_total").unwrap_or(0.0);
    }
    assert_eq!(cut, 24.0, "only the silent streams are cut");
    // Their HTTP/1.1 connections are reset with the cut: none is left
    // established, holding its buffers in the hub.
    let locals: Vec<_> = silent.iter().map(|s| s.local_addr().unwrap()).collect();
    eventually(
        Duration::from_secs(2),
        "no silent connection established after the cut",
        || {
            let held = locals.iter().filter(|l| established(**l, addr)).count();
            async move { held == 0 }
        },
    )
    .await;
    // With their streams cut, the others are prompt again.
    let t = std::time::Instant::now();
    let r = node_as_other(&c, &hub.proxy_url()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    api.create(pod("default", "after-the-quiet")).unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), quiet.recv())
        .await
        .expect("the quiet watch delivers the next event")
        .flatten()
        .expect("the quiet watch is still open");
    assert!(
        String::from_utf8_lossy(&event).contains("after-the-quiet"),
        "{}",
        String::from_utf8_lossy(&event)
    );
    drop(silent);
    hub.stop().await;
}

/// The same bound over HTTP/2, as client-go speaks it: a stream whose
/// client stops taking data (its window is full) is cut upstream once the
/// limit passes, while the client's other streams on the same connection
/// go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_http2_stream_is_cut_and_its_connection_goes_on() {
    let (_pki, api, _files, hub) = setup(&[]).await;
    let note = "n".repeat(4096);
    for i in 0..1500 {
        let mut p = pod("default", &format!("big-{i:04}"));
        p["metadata"]["annotations"] = json!({ "note": note });
        api.create(p).unwrap();
    }
    let addr: std::net::SocketAddr = hub.proxy_url()["http://".len()..].parse().unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("an HTTP/2 connection (prior knowledge)");
    tokio::spawn(conn);
    let request = |path: &str| {
        http::Request::get(format!("http://hub{path}"))
            .header(http::header::USER_AGENT, "silent-h2/1.0")
            .header(http::header::ACCEPT, "application/json")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap()
    };
    let silent = send
        .send_request(request("/api/v1/namespaces/default/pods"))
        .await
        .expect("the list's headers");
    assert_eq!(silent.status(), StatusCode::OK);
    // Its body is never read: the stream's window fills, the hub stops.
    let started = std::time::Instant::now();
    let c = plain_client();
    loop {
        let m = get(&c, &format!("{}/metrics", hub.hub_url()), "p")
            .await
            .text();
        if metric_value(&m, "node_yurthub_proxy_stalled_clients_cut_total") == Some(1.0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the silent HTTP/2 stream was not cut within {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "cut after {:?}, before the limit",
        started.elapsed()
    );
    let other = tokio::time::timeout(
        Duration::from_secs(5),
        send.send_request(request(&format!("/api/v1/nodes/{NODE}"))),
    )
    .await
    .expect("the connection's other stream is answered")
    .expect("the node");
    assert_eq!(other.status(), StatusCode::OK);
    let node = other.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&node).contains(NODE));
    drop(silent);
    hub.stop().await;
}

/// The node, asked through the hub by a client that is neither silent nor
/// a cache agent.
async fn node_as_other(c: &hub::PlainClient, proxy_url: &str) -> hub::Reply {
    get(c, &format!("{proxy_url}/api/v1/nodes/{NODE}"), "other/1.0").await
}

async fn assert_healthy(hub: &Hub, api: &ApiServer, since: std::time::Instant, what: &str) {
    assert_eq!(
        server_health(hub, api).await,
        Some(1.0),
        "the backend turned unhealthy {:?} after {what}",
        since.elapsed()
    );
}

/// A connection that asks for the big list and never reads the answer.
/// Whether the kernel lists the IPv4 connection `local` → `peer` as
/// established (`/proc/net/tcp`: a reset one is gone from it).
fn established(local: std::net::SocketAddr, peer: std::net::SocketAddr) -> bool {
    let hex = |a: std::net::SocketAddr| match a {
        std::net::SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ),
        std::net::SocketAddr::V6(_) => unreachable!("the test connects over IPv4"),
    };
    let (local, peer) = (hex(local), hex(peer));
    std::fs::read_to_string("/proc/net/tcp")
        .expect("/proc/net/tcp")
        .lines()
        .skip(1)
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == local && f[2] == peer && f[3] == "01"
        })
}

async fn silent_list(hub: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt as _;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(hub).await.expect("connects");
    s.write_all(
        b"GET /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: hub\r\n\
          User-Agent: silent/1.0\r\nAccept: application/json\r\n\r\n",
    )
    .await
    .unwrap();
    s
}

/// A pod's TLS connection to the pod-facing listener from `ip` (a loopback
/// address), with the name InClusterConfig verifies.
async fn pod_connect(
    pki: &TestPki,
    secure: std::net::SocketAddr,
    ip: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    hub::tls_connect(
        Some(ip.parse().unwrap()),
        secure,
        "kubernetes.default.svc",
        pki.ca_pem(),
        None,
    )
    .await
}

/// A pod's HTTP/2 connection (prior knowledge) over [`pod_connect`].
async fn pod_over_h2(
    pki: &TestPki,
    secure: std::net::SocketAddr,
    ip: &str,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>> {
    let tls = pod_connect(pki, secure, ip).await.expect("a pod connects");
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .expect("HTTP/2 (prior knowledge)");
    tokio::spawn(conn);
    send
}

/// kubelet's GET of its node on the loopback listener is answered.
async fn kubelet_reads_its_node(c: &hub::PlainClient, hub: &Hub) {
    let r = get(
        c,
        &format!("{}/api/v1/nodes/{NODE}", hub.proxy_url()),
        KUBELET,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

/// A service account of the default namespace, as the double knows it.
fn service_account(name: &str) -> User {
    User::new(
        &format!("system:serviceaccount:default:{name}"),
        &["system:serviceaccounts"],
    )
}

/// A GET over a connection made with [`hub::tls_connect`]: its status, and
/// the sender that keeps the connection open.
async fn status_over(
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    path: &str,
) -> (
    StatusCode,
    hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>,
) {
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .expect("HTTP/1.1 over the admitted connection");
    tokio::spawn(conn);
    let req = hub::get_request(
        &format!("https://kubernetes.default.svc{path}"),
        "other-pod/1.0",
        &[],
    );
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("answered within 10 s")
        .expect("an answer");
    (resp.status(), sender)
}

/// One pod that opens connections without end gets only its share of the
/// pod-facing listener, and the listener only its bound in all: past them a
/// connection is reset as it is accepted. Other pods, and kubelet on the
/// loopback listener, are still served, and a closed connection frees its
/// place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_facing_connections_are_bounded_per_address_and_in_all() {
    let (pki, _api, _files, hub) =
        setup(&["--pod-connections-per-address=4", "--max-pod-connections=6"]).await;
    let from = |ip: &'static str| pod_connect(&pki, hub.secure, ip);
    let mut greedy = Vec::new();
    for i in 0..4 {
        greedy.push(
            from("127.0.0.2")
                .await
                .unwrap_or_else(|e| panic!("connection {i} within its share: {e}")),
        );
    }
    let past_share = from("127.0.0.2").await;
    assert!(
        past_share.is_err(),
        "a fifth connection from one address is refused"
    );

    // Another pod is served while the greedy one holds its share.
    let other = from("127.0.0.3").await.expect("another pod connects");
    let (status, _open) = status_over(other, "/version").await;
    assert!(
        !status.is_server_error(),
        "another pod is answered: {status}"
    );
    let _other = from("127.0.0.3").await.expect("another pod connects");
    // 4 + 2 held: the listener's bound, whoever asks next.
    let past_total = from("127.0.0.4").await;
    assert!(
        past_total.is_err(),
        "a seventh connection in all is refused"
    );

    // kubelet's listener is not counted.
    let c = plain_client();
    kubelet_reads_its_node(&c, &hub).await;
    let m = get(&c, &format!("{}/metrics", hub.hub_url()), "p")
        .await
        .text();
    for reason in ["address", "total"] {
        let series = format!("node_yurthub_proxy_refused_connections_total{{reason=\"{reason}\"}}");
        assert_eq!(metric_value(&m, &series), Some(1.0), "{series} in\n{m}");
    }

    // A closed connection gives its place back.
    drop(greedy.pop());
    eventually(
        Duration::from_secs(5),
        "a freed place is taken again",
        || {
            let f = from("127.0.0.2");
            async move { f.await.is_ok() }
        },
    )
    .await;
    hub.stop().await;
}

/// Started with a low soft limit on open files (a service manager's 1024,
/// scaled down), the hub raises it to the hard limit as Go programs do, and
/// by default keeps half of it from the pods: past that the pod-facing
/// listener refuses, and kubelet's listener still has descriptors to serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_raises_its_open_file_limit_and_keeps_half_of_it_from_the_pods() {
    let pki = Arc::new(TestPki::new().unwrap());
    let api = double(&pki).await;
    let files = HubFiles::new(&pki);
    let (port, secure_port) = (hub::free_port(), hub::free_port());
    let mut args = files.args(&[api.url()], &[]);
    args.retain(|a| !a.starts_with("--proxy-port") && !a.starts_with("--proxy-secure-port"));
    args.push(format!("--proxy-port={port}"));
    args.push(format!("--proxy-secure-port={secure_port}"));
    const SOFT: u64 = 64;
    const HARD: u64 = 96;
    let p = hub::HubProcess::spawn_with_open_files(&args, SOFT, HARD);
    let c = plain_client();
    let node = format!("http://127.0.0.1:{port}/api/v1/nodes/{NODE}");
    eventually(Duration::from_secs(15), "the hub process serves", || async {
        let req = hub::get_request(&node, KUBELET, &[]);
        matches!(tokio::time::timeout(Duration::from_secs(2), c.request(req)).await, Ok(Ok(r)) if r.status() == StatusCode::OK)
    })
    .await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", p.child.id())).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a limit on open files")
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect();
    assert_eq!(open_files, [HARD.to_string(), HARD.to_string()], "{limits}");

    // Half of 96 for the pods, all from one address (its own share, 128,
    // is not what binds here).
    let secure: std::net::SocketAddr = format!("127.0.0.1:{secure_port}").parse().unwrap();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..60 {
        match pod_connect(&pki, secure, "127.0.0.2").await {
            Ok(s) => held.push(s),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(
        (held.len(), refused),
        ((HARD / 2) as usize, 60 - (HARD / 2) as usize)
    );
    let r = get(&c, &node, KUBELET).await;
    assert_eq!(r.status, StatusCode::OK, "kubelet is served: {}", r.text());
    drop(held);
    drop(p);
}

/// hyper's HTTP/2 client queues a stream past the server's
/// SETTINGS_MAX_CONCURRENT_STREAMS, and every later request of the
/// connection behind it. The streams of the node's pods share the hub's
/// upstream connection, so one pod's watches must not fill it: past 100
/// streams (RFC 9113's floor for that setting, here the double's own
/// limit) new streams go over another connection, which is dialed only
/// then, and a stream's place is given back when its response ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_upstream_connection_sends_new_streams_over_another() {
    let pki = Arc::new(TestPki::new().expect("pki"));
    let api = ApiServer::builder()
        .pki(pki.clone())
        .bookmark_interval(Duration::from_secs(1))
        .http2_max_streams_per_connection(100)
        .start()
        .await
        .expect("double starts");
    api.create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}))
        .expect("node");
    api.add_token("watcher-token", service_account("watcher"));
    api.add_token("other-token", service_account("other"));
    let files = HubFiles::new(&pki);
    let hub = Hub::start(&files.args(&[api.url()], &[])).await;
    let c = plain_client();
    let as_other = || async {
        send(
            &c,
            Method::GET,
            &format!("{}/api/v1/namespaces/default/pods", hub.proxy_url()),
            &[
                ("authorization", "Bearer other-token"),
                ("user-agent", "other/1.0"),
            ],
            Bytes::new(),
        )
        .await
    };
    let r = as_other().await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let conns_series = format!(
        "node_yurthub_closable_conns_collector{{server=\"{}\"}}",
        api.addr()
    );
    let upstream_conns = || async {
        let m = get(&c, &format!("{}/metrics", hub.hub_url()), "p")
            .await
            .text();
        metric_value(&m, &conns_series).unwrap_or_else(|| panic!("{conns_series} in {m}"))
    };
    let before = upstream_conns().await;

    // One client connection (HTTP/2, prior knowledge) carries the watches.
    let addr: std::net::SocketAddr = hub.proxy_url()["http://".len()..].parse().unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send_req, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("an HTTP/2 connection");
    tokio::spawn(conn);
    let rv = api.resource_version();
    let open = |n: usize| {
        let send_req = send_req.clone();
        async move {
            let mut watches = Vec::new();
            for i in 0..n {
                let req = http::Request::get(format!(
                    "http://hub/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}"
                ))
                .header(http::header::AUTHORIZATION, "Bearer watcher-token")
                .header(http::header::USER_AGENT, "watcher/1.0")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
                let resp = tokio::time::timeout(
                    Duration::from_secs(10),
                    send_req.clone().send_request(req),
                )
                .await
                .unwrap_or_else(|_| panic!("watch {} waited behind the full connection", i + 1))
                .expect("watch");
                assert_eq!(resp.status(), StatusCode::OK, "watch {}", i + 1);
                watches.push(resp);
            }
            watches
        }
    };
    let watches = open(110).await;
    assert!(
        api.wait_for_open_watches("pods", 110, Duration::from_secs(10))
            .await,
        "110 watches open in the double: {}",
        api.open_watches("pods")
    );
    let other = tokio::time::timeout(Duration::from_secs(5), as_other())
        .await
        .expect("another pod's request does not wait behind the watches");
    assert_eq!(other.status, StatusCode::OK, "{}", other.text());
    assert_eq!(
        upstream_conns().await,
        before + 1.0,
        "110 streams take one more upstream connection, not one each"
    );

    // Ended watches give their places back: 100 new ones fit beside the
    // 10 left, on the two connections there are.
    drop(watches);
    assert!(
        api.wait_for_open_watches("pods", 0, Duration::from_secs(10))
            .await,
        "the watches end in the double: {}",
        api.open_watches("pods")
    );
    let again = open(100).await;
    assert!(
        api.wait_for_open_watches("pods", 100, Duration::from_secs(10))
            .await
    );
    assert_eq!(
        upstream_conns().await,
        before + 1.0,
        "ended streams left their places taken"
    );
    drop(again);
    hub.stop().await;
}

/// Over HTTP/2 one connection carries a thousand streams, and the streams
/// of all pods share the hub's upstream connections: a source address
/// keeps only its share of requests in flight on the pod-facing listener,
/// over all its connections. Past it a request is answered 429 with
/// Retry-After, as the apiserver answers past its in-flight limits; other
/// pods are served, and an ended watch gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_keeps_only_its_share_of_requests_in_flight() {
    let (pki, api, _files, hub) = setup(&["--pod-requests-per-address=4"]).await;
    api.add_token("watcher-token", service_account("watcher"));
    let over_h2 = |ip: &'static str| pod_over_h2(&pki, hub.secure, ip);
    let ask = |send: &hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
               path: String| {
        let mut send = send.clone();
        async move {
            let req = http::Request::get(format!("https://hub{path}"))
                .header(http::header::AUTHORIZATION, "Bearer watcher-token")
                .header(http::header::USER_AGENT, "watcher/1.0")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
                .await
                .expect("answered")
                .expect("a response")
        }
    };
    let rv = api.resource_version();
    let watch = format!("/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}");
    // The pod's share, over two connections.
    let (first, second) = (over_h2("127.0.0.2").await, over_h2("127.0.0.2").await);
    let mut watches = Vec::new();
    for i in 0..4 {
        let conn = if i % 2 == 0 { &first } else { &second };
        let w = ask(conn, watch.clone()).await;
        assert_eq!(w.status(), StatusCode::OK, "watch {i} within the share");
        watches.push(w);
    }
    let past = ask(&second, format!("/api/v1/nodes/{NODE}")).await;
    assert_eq!(past.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        past.headers()
            .get(http::header::RETRY_AFTER)
            .map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let body = past.into_body().collect().await.unwrap().to_bytes();
    let status: Value = serde_json::from_slice(&body).expect("a Status");
    assert_eq!(status["reason"], "TooManyRequests", "{status}");
    assert_eq!(status["details"]["retryAfterSeconds"], 1, "{status}");

    // Another pod is served meanwhile.
    let other = ask(&over_h2("127.0.0.3").await, format!("/api/v1/nodes/{NODE}")).await;
    assert_eq!(other.status(), StatusCode::OK);
    let m = get(&plain_client(), &format!("{}/metrics", hub.hub_url()), "p")
        .await
        .text();
    let series = "node_yurthub_proxy_refused_requests_total{reason=\"address\"}";
    assert_eq!(metric_value(&m, series), Some(1.0), "{series} in\n{m}");

    // An ended watch gives its place back.
    drop(watches.pop());
    eventually(
        Duration::from_secs(5),
        "a freed place is taken again",
        || {
            let r = ask(&first, format!("/api/v1/nodes/{NODE}"));
            async move { r.await.status() == StatusCode::OK }
        },
    )
    .await;
    drop(watches);
    hub.stop().await;
}

/// The per-request series take their labels from what clients claim (the
/// User-Agent's component, the URL path's resource). A pod cycling either
/// must not grow the hub's memory and every scrape without bound: past the
/// budget of its class of caller, new label sets read "other", counted,
/// while the node's components keep their own budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_cycling_user_agents_and_paths_cannot_grow_the_metrics() {
    // The hub's budget of label sets per class of caller (metrics::LABEL_SETS).
    const BUDGET: usize = 256;
    const CLAIMS: usize = 300;
    let (pki, api, _files, hub) = setup(&[]).await;
    api.add_token("cycler-token", service_account("cycler"));
    let c = plain_client();
    kubelet_reads_its_node(&c, &hub).await;

    let send = pod_over_h2(&pki, hub.secure, "127.0.0.2").await;
    // Half the claims new User-Agents, half new resources; 32 at a time,
    // inside the address's share of requests in flight.
    let claim = |i: usize| {
        let mut send = send.clone();
        async move {
            let (ua, path) = if i.is_multiple_of(2) {
                (
                    format!("cycler-{i}/1.0"),
                    "/api/v1/namespaces/default/pods".to_owned(),
                )
            } else {
                (
                    "cycler/1.0".to_owned(),
                    format!("/api/v1/namespaces/default/things{i}"),
                )
            };
            let req = http::Request::get(format!("https://hub{path}"))
                .header(http::header::AUTHORIZATION, "Bearer cycler-token")
                .header(http::header::USER_AGENT, ua)
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
                .await
                .expect("answered")
                .expect("a response");
            let status = resp.status();
            resp.into_body().collect().await.expect("a whole body");
            status
        }
    };
    let mut answered = 0;
    for batch in (0..CLAIMS).collect::<Vec<_>>().chunks(32) {
        for status in futures_util::future::join_all(batch.iter().map(|&i| claim(i))).await {
            assert_ne!(status, StatusCode::TOO_MANY_REQUESTS);
            answered += 1;
        }
    }
    assert_eq!(answered, CLAIMS);

    let m = get(&c, &format!("{}/metrics", hub.hub_url()), "p")
        .await
        .text();
    let series = |family: &str| -> Vec<&str> {
        m.lines()
            .filter(|l| l.starts_with(&format!("{family}{{")))
            .collect()
    };
    // One label set per claim was asked for; the pods' class got its
    // budget and the folded set (by response class: 2xx and 4xx).
    let claimed = |family: &str| -> Vec<&str> {
        series(family)
            .into_iter()
            .filter(|l| l.contains("client=\"cycler") || l.contains("client=\"other\""))
            .collect()
    };
    let durations = claimed("node_yurthub_proxy_request_duration_seconds_count");
    assert!(
        (BUDGET..=BUDGET + 2).contains(&durations.len()),
        "{} duration series for {CLAIMS} claims:\n{}",
        durations.len(),
        durations.join("\n")
    );
    assert!(claimed("node_yurthub_proxy_traffic_collector").len() <= BUDGET + 1);
    let traffic = series("node_yurthub_proxy_traffic_collector");
    assert!(
        traffic.iter().any(|l| l.contains("client=\"kubelet\"")),
        "the node's components keep their labels: {traffic:?}"
    );
    assert!(
        traffic
            .iter()
            .any(|l| l.contains("client=\"other\"") && l.contains("resource=\"other\"")),
        "claims past the budget are counted as other"
    );
    assert_eq!(
        metric_value(&m, "node_yurthub_metric_label_sets_folded_total"),
        Some((CLAIMS - BUDGET) as f64),
        "every claim past the budget is counted"
    );
    hub.stop().await;
}

/// Each new connection costs a TLS handshake on the event loop kubelet's
/// requests share, so a source address may open only so many per second
/// (as many in a burst): past that, connections are reset as they are
/// accepted, before any TLS work. Time refills the bucket, and other pods
/// have their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_reconnecting_in_a_loop_is_bounded_in_rate() {
    let (pki, _api, _files, hub) = setup(&["--pod-connections-per-second=5"]).await;
    let from = |ip: &'static str| pod_connect(&pki, hub.secure, ip);
    // Eight at once: admission is at accept, so the handshakes' time does
    // not refill the bucket meanwhile.
    let burst = futures_util::future::join_all((0..8).map(|_| from("127.0.0.2"))).await;
    let admitted = burst.iter().filter(|c| c.is_ok()).count();
    assert_eq!(admitted, 5, "the burst is the rate");
    drop(burst);
    let other = from("127.0.0.3")
        .await
        .expect("another pod has its own bucket");
    let (status, _open) = status_over(other, "/version").await;
    assert!(
        !status.is_server_error(),
        "another pod is answered: {status}"
    );
    // kubelet's listener is not bounded.
    let c = plain_client();
    kubelet_reads_its_node(&c, &hub).await;
    let m = get(&c, &format!("{}/metrics", hub.hub_url()), "p")
        .await
        .text();
    let series = "node_yurthub_proxy_refused_connections_total{reason=\"rate\"}";
    assert_eq!(metric_value(&m, series), Some(3.0), "{series} in\n{m}");
    // The bucket refills at 5 a second.
    eventually(
        Duration::from_secs(5),
        "the address may connect again",
        || {
            let f = from("127.0.0.2");
            async move { f.await.is_ok() }
        },
    )
    .await;
    hub.stop().await;
}

//! Pool-scoped sharing through leader hubs (OpenYurt's leader-hub model):
//! followers get pool-scoped resources from a leader's multiplexer
//! listener, which authenticates node certificates of its own pool, and
//! fall back to the cloud when the leader dies. Offline, single pool-scoped
//! objects are answered from the multiplexer's state.
//!
//! Every hub has its own node IP on 127.0.<test>.x and its own root dir;
//! the hubs of one test share a free multiplexer port, as a pool shares
//! `--multiplexer-port`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use yurthub_e2e::apiserver::ApiServer;
use yurthub_e2e::hub::{
    self, Hub, HubProcess, eventually, free_port, get, metric_value, plain_client, tls_send,
};
use yurthub_e2e::pki::TestPki;
use yurthub_e2e::pool::{NodeFiles, create_node, leader_configmap};

const KUBE_PROXY: &str = "kube-proxy/v1.34.0 (linux/amd64) kubernetes/abcdef";
const COREDNS: &str = "coredns/1.12.0 (linux/amd64)";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn double() -> (Arc<TestPki>, ApiServer) {
    let pki = Arc::new(TestPki::new().expect("pki"));
    let api = ApiServer::builder()
        .pki(pki.clone())
        .bookmark_interval(Duration::from_secs(1))
        .start()
        .await
        .expect("double starts");
    (pki, api)
}

fn slice(name: &str, addr: &str) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [addr]}],
        "ports": [{"port": 80, "protocol": "TCP"}]})
}

fn service(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"port": 80}]}})
}

type Chunks = tokio::sync::mpsc::Receiver<Option<Bytes>>;

/// Opens a watch through a hub's loopback proxy, retrying 429/503.
async fn open_watch(url: &str, ua: &str) -> Chunks {
    let c = plain_client();
    for _ in 0..100 {
        let resp = tokio::time::timeout(
            Duration::from_secs(10),
            c.request(hub::get_request(url, ua, &[])),
        )
        .await
        .expect("watch answered within 10 s")
        .expect("watch");
        if matches!(
            resp.status(),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        assert_eq!(resp.status(), StatusCode::OK, "watch {url} as {ua}");
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let mut body = resp.into_body();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(d) = frame.into_data()
                    && tx.send(Some(d)).await.is_err()
                {
                    return;
                }
            }
            let _ = tx.send(None).await;
        });
        return rx;
    }
    panic!("watch {url} was never served");
}

async fn wait_for(rx: &mut Chunks, needle: &str, within: Duration) -> String {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = String::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => panic!("timed out waiting for {needle:?}; saw: {seen}"),
            Ok(None) | Ok(Some(None)) => panic!("stream ended before {needle:?}; saw: {seen}"),
            Ok(Some(Some(chunk))) => {
                seen.push_str(&String::from_utf8_lossy(&chunk));
                if seen.contains(needle) {
                    return seen;
                }
            }
        }
    }
}

/// A list through a hub, retrying while it is not served yet.
async fn list(hub: &Hub, path: &str, ua: &str) -> Value {
    for _ in 0..100 {
        let r = get(&plain_client(), &format!("{}{path}", hub.proxy_url()), ua).await;
        if matches!(
            r.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        assert_eq!(r.status, StatusCode::OK, "{path} as {ua}: {}", r.text());
        return r.json();
    }
    panic!("{path} was never served");
}

fn names(list: &Value) -> Vec<String> {
    let mut n: Vec<String> = list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("a list: {list}"))
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str().map(String::from))
        // The double's own default/kubernetes Service and its slice.
        .filter(|n| n != "kubernetes")
        .collect();
    n.sort();
    n
}

async fn pool_status(hub_url: &str) -> Value {
    get(&plain_client(), &format!("{hub_url}/v1/pool"), "test")
        .await
        .json()
}

fn slice_watches_by(api: &ApiServer) -> Vec<Option<String>> {
    api.requests()
        .into_iter()
        .filter(|r| r.path == SLICES && r.query.contains("watch=true"))
        .map(|r| r.user_agent)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_list_and_watch_endpointslices_through_the_leader() {
    let (pki, api) = double().await;
    let port = free_port();
    let lead = NodeFiles::new(&pki, "lead", ip("127.0.1.1"));
    let f1 = NodeFiles::new(&pki, "follow1", ip("127.0.1.2"));
    let f2 = NodeFiles::new(&pki, "follow2", ip("127.0.1.3"));
    for n in [&lead, &f1, &f2] {
        create_node(&api, &n.name, n.ip, "hangzhou");
    }
    api.create(leader_configmap("hangzhou", &[("lead", lead.ip)], true))
        .expect("leader-hub configmap");
    api.create(slice("web-1", "10.1.0.1")).expect("slice");

    let servers = [api.url()];
    let leader = Hub::start(&lead.args(&servers, port, &[])).await;
    // One follower names its pool by flag, the other learns it from its label.
    let follower1 = Hub::start(&f1.args(&servers, port, &["--nodepool-name=hangzhou"])).await;
    let follower2 = Hub::start(&f2.args(&servers, port, &[])).await;

    for f in [&follower1, &follower2] {
        assert_eq!(names(&list(f, SLICES, KUBE_PROXY).await), ["web-1"]);
    }
    let url = |h: &Hub| format!("{}{SLICES}?watch=true&resourceVersion=0", h.proxy_url());
    let mut w1 = open_watch(&url(&follower1), KUBE_PROXY).await;
    let mut w2 = open_watch(&url(&follower2), KUBE_PROXY).await;
    wait_for(&mut w1, "web-1", Duration::from_secs(10)).await;
    wait_for(&mut w2, "web-1", Duration::from_secs(10)).await;
    api.create(slice("web-2", "10.1.0.2")).expect("slice");
    for w in [&mut w1, &mut w2] {
        let seen = wait_for(w, "\"name\":\"web-2\"", Duration::from_secs(10)).await;
        assert!(seen.contains("\"type\":\"ADDED\""), "{seen}");
    }

    // The double sees one watch of endpointslices, the leader's.
    assert_eq!(
        api.open_watches("endpointslices.discovery.k8s.io"),
        1,
        "watches at the apiserver: {:?}",
        slice_watches_by(&api)
    );
    let by = slice_watches_by(&api);
    assert!(
        !by.is_empty()
            && by
                .iter()
                .all(|ua| ua.as_deref() == Some("multiplexer-proxy-lead")),
        "every upstream watch of endpointslices is the leader's: {by:?}"
    );

    for (f, node) in [(&follower1, "follow1"), (&follower2, "follow2")] {
        let s = pool_status(&f.hub_url()).await;
        assert_eq!(s["role"], "follower", "{node}: {s}");
        assert_eq!(s["pool"], "hangzhou", "{node}: {s}");
        assert_eq!(s["serving"], "lead/127.0.1.1", "{node}: {s}");
        assert!(
            s["bytes"]["leader"].as_u64().unwrap_or(0) > 0,
            "{node}: {s}"
        );
        let m = get(&plain_client(), &format!("{}/metrics", f.hub_url()), "t")
            .await
            .text();
        assert!(
            metric_value(
                &m,
                "node_yurthub_pool_received_bytes_total{source=\"leader\"}"
            )
            .unwrap_or(0.0)
                > 0.0,
            "{node}: {m}"
        );
    }
    assert_eq!(
        pool_status(&follower2.hub_url()).await["poolFrom"],
        "node-label"
    );
    let s = pool_status(&leader.hub_url()).await;
    assert_eq!(s["role"], "leader", "{s}");
    assert_eq!(s["listener"], format!("127.0.1.1:{port}"), "{s}");

    follower1.stop().await;
    follower2.stop().await;
    leader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_multiplexer_listener_refuses_other_pools_and_non_nodes() {
    let (pki, api) = double().await;
    let port = free_port();
    let lead = NodeFiles::new(&pki, "lead", ip("127.0.2.1"));
    let member = NodeFiles::new(&pki, "member", ip("127.0.2.2"));
    let stranger = NodeFiles::new(&pki, "stranger", ip("127.0.2.3"));
    create_node(&api, "lead", lead.ip, "shanghai");
    create_node(&api, "member", member.ip, "shanghai");
    create_node(&api, "stranger", stranger.ip, "beijing");
    api.create(leader_configmap("shanghai", &[("lead", lead.ip)], true))
        .expect("configmap");
    api.create(service("web")).expect("service");
    let leader = Hub::start(&lead.args(&[api.url()], port, &[])).await;
    let addr = std::net::SocketAddr::new(lead.ip, port);
    let path = format!("https://{addr}/api/v1/services");
    let ca = pki.ca_pem().to_owned();
    let send = |id: Option<(String, String)>| {
        let (ca, path) = (ca.clone(), path.clone());
        async move {
            let id = id.as_ref().map(|(c, k)| (c.as_str(), k.as_str()));
            tls_send(
                addr,
                "127.0.2.1",
                &ca,
                id,
                hub::get_request(&path, "multiplexer-proxy-x", &[]),
            )
            .await
        }
    };

    // A hub of the pool is served (once the leader has listed).
    let mine = Some((member.client_cert.clone(), member.client_key.clone()));
    let mut ok = None;
    for _ in 0..50 {
        let r = send(mine.clone())
            .await
            .expect("TLS with the pool member's certificate");
        if r.status == StatusCode::OK {
            ok = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ok = ok.expect("a pool member is served");
    assert_eq!(names(&ok.json()), ["web"]);
    assert_eq!(
        ok.headers
            .get("x-yurthub-pool-leader")
            .map(|v| v.as_bytes()),
        Some(&b"lead"[..])
    );

    let r = send(None).await.expect("TLS without a client certificate");
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let r = send(Some((
        stranger.client_cert.clone(),
        stranger.client_key.clone(),
    )))
    .await
    .expect("TLS with another pool's node certificate");
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert!(r.text().contains("beijing"), "{}", r.text());
    let (cert, key) = pki.issue_client_cert("alice", &["developers"]).unwrap();
    let r = send(Some((cert, key)))
        .await
        .expect("TLS with a user certificate");
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    // Not pool-scoped: never served to other hubs.
    let r = tls_send(
        addr,
        "127.0.2.1",
        &ca,
        Some((&member.client_cert, &member.client_key)),
        hub::get_request(&format!("https://{addr}/api/v1/secrets"), "x", &[]),
    )
    .await
    .expect("TLS");
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    leader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_fails_over_to_the_cloud_when_the_leader_is_killed() {
    let (pki, api) = double().await;
    let port = free_port();
    let lead = NodeFiles::new(&pki, "lead", ip("127.0.3.1"));
    let f = NodeFiles::new(&pki, "follow", ip("127.0.3.2"));
    create_node(&api, "lead", lead.ip, "p3");
    create_node(&api, "follow", f.ip, "p3");
    api.create(leader_configmap("p3", &[("lead", lead.ip)], true))
        .expect("configmap");
    api.create(service("before")).expect("service");
    let servers = [api.url()];
    let lead_args = lead.args(&servers, port, &[]);
    let hub_server = lead_args
        .iter()
        .find_map(|a| a.strip_prefix("--serve-port="))
        .map(|p| format!("http://127.0.0.1:{p}"))
        .unwrap();
    let mut leader = HubProcess::spawn(&lead_args);
    let status_url = format!("{hub_server}/v1/pool");
    let mut up = false;
    for _ in 0..200 {
        let c = plain_client();
        let req = hub::get_request(&status_url, "test", &[]);
        if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(2), c.request(req)).await
            && let Ok(body) = resp.into_body().collect().await
            && serde_json::from_slice::<Value>(&body.to_bytes())
                .is_ok_and(|v| v["role"] == "leader")
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "the leader serves its pool: {}", leader.log());
    let follower = Hub::start(&f.args(&servers, port, &[])).await;
    let mut w = open_watch(
        &format!("{}/api/v1/services?watch=true", follower.proxy_url()),
        COREDNS,
    )
    .await;
    wait_for(&mut w, "\"name\":\"before\"", Duration::from_secs(10)).await;
    let s = pool_status(&follower.hub_url()).await;
    assert_eq!(s["serving"], "lead/127.0.3.1", "{s}");
    let cloud_bytes = s["bytes"]["cloud"].as_u64().unwrap_or(0);

    let killed = Instant::now();
    leader.signal_and_wait(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
    api.create(service("after")).expect("service");
    // The local watch stays open: its multiplexer resumes from the cloud.
    wait_for(&mut w, "\"name\":\"after\"", Duration::from_secs(5)).await;
    let took = killed.elapsed();
    let s = pool_status(&follower.hub_url()).await;
    assert_eq!(s["serving"], "cloud", "{s}");
    assert!(
        s["bytes"]["cloud"].as_u64().unwrap_or(0) > cloud_bytes,
        "{s}"
    );
    let healthy = &s["leaders"][0]["healthy"];
    assert_eq!(healthy, &json!(false), "{s}");
    eprintln!("failover to the cloud took {took:?}");
    follower.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_gets_of_pool_scoped_objects_are_answered_from_the_multiplexer() {
    let (pki, api) = double().await;
    let f = NodeFiles::new(&pki, "solo", ip("127.0.4.1"));
    create_node(&api, "solo", f.ip, "p4");
    api.create(service("web")).expect("service");
    api.create(service("db")).expect("service");
    let hub = Hub::start(&f.args(&[api.url()], free_port(), &["--nodepool-name=p4"])).await;
    assert_eq!(
        names(&list(&hub, "/api/v1/services", COREDNS).await),
        ["db", "web"]
    );
    api.shutdown().await;
    let c = plain_client();
    eventually(
        Duration::from_secs(15),
        "the hub sees the cloud down",
        || async {
            let m = get(&c, &format!("{}/metrics", hub.hub_url()), "t")
                .await
                .text();
            m.lines().any(|l| {
                l.starts_with("node_yurthub_server_healthy_status")
                    && l.contains(&api.url())
                    && l.trim_end().ends_with(" 0")
            })
        },
    )
    .await;

    let base = format!("{}/api/v1/namespaces/default/services", hub.proxy_url());
    let r = get(&c, &format!("{base}/web"), COREDNS).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["kind"].as_str(), v["metadata"]["name"].as_str()),
        (Some("Service"), Some("web")),
        "{v}"
    );
    let r = hub::send(
        &c,
        http::Method::GET,
        &format!("{base}/web"),
        &[
            ("user-agent", COREDNS),
            ("accept", "application/vnd.kubernetes.protobuf"),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        "application/vnd.kubernetes.protobuf"
    );
    assert!(r.body.starts_with(b"k8s\0"), "a protobuf envelope");
    assert!(
        r.body.windows(3).any(|w| w == b"web"),
        "the object's name is in it"
    );
    let r = get(&c, &format!("{base}/nope"), COREDNS).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    assert_eq!(r.json()["reason"], "NotFound");
    let r = get(
        &c,
        &format!("{base}?fieldSelector=metadata.name%3Dweb"),
        COREDNS,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(names(&r.json()), ["web"]);
    hub.stop().await;
}

/// Pods reach the multiplexer's listener on the node IP too: it shares the
/// pod-facing listener's bounds, so one address gets only its share, and
/// the pool's hubs are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_multiplexer_listener_bounds_the_connections_of_one_address() {
    let (pki, api) = double().await;
    let port = free_port();
    let lead = NodeFiles::new(&pki, "lead", ip("127.0.2.1"));
    let member = NodeFiles::new(&pki, "member", ip("127.0.2.2"));
    create_node(&api, "lead", lead.ip, "shanghai");
    create_node(&api, "member", member.ip, "shanghai");
    api.create(leader_configmap("shanghai", &[("lead", lead.ip)], true))
        .expect("configmap");
    api.create(service("web")).expect("service");
    let leader =
        Hub::start(&lead.args(&[api.url()], port, &["--pod-connections-per-address=3"])).await;
    let addr = std::net::SocketAddr::new(lead.ip, port);
    let ca = pki.ca_pem().to_owned();
    let connect = |source: &str| {
        let (ca, source) = (ca.clone(), ip(source));
        async move { hub::tls_connect(Some(source), addr, "127.0.2.1", &ca, None).await }
    };
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(
            connect("127.0.3.9")
                .await
                .unwrap_or_else(|e| panic!("connection {i} within its share: {e}")),
        );
    }
    assert!(
        connect("127.0.3.9").await.is_err(),
        "a fourth connection from one address is refused"
    );
    // The pool's member, from its own address, is served.
    let path = format!("https://{addr}/api/v1/services");
    let mut served = false;
    for _ in 0..50 {
        let r = tls_send(
            addr,
            "127.0.2.1",
            &ca,
            Some((&member.client_cert, &member.client_key)),
            hub::get_request(&path, "multiplexer-proxy-member", &[]),
        )
        .await
        .expect("TLS with the pool member's certificate");
        if r.status == StatusCode::OK {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(served, "the pool member is served");
    drop(held);
    leader.stop().await;
}

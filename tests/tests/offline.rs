//! Offline autonomy through the public surface: fill the cache online with
//! kubelet (protobuf), kube-proxy and coredns traffic, stop the apiserver
//! double, and check every offline answer; restart the hub offline and
//! check again (in-process and as the real binary, with kubectl).

mod cache_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cache_support::*;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use yurthub_e2e::apiserver::ApiServer;
use yurthub_e2e::hub::{
    Hub, HubFiles, HubProcess, NODE, PlainClient, eventually, free_port, get, hub_kubeconfig,
    kubectl, kubectl_ok, plain_client, send,
};
use yurthub_e2e::pki::TestPki;

/// Online traffic of the node components; returns the RV of the newest
/// kubelet pod.
async fn fill(c: &PlainClient, hub: &str, api: &ApiServer) {
    for i in 0..3 {
        api.create(pod(
            "default",
            &format!("web-{i}"),
            NODE,
            if i == 0 { "a" } else { "b" },
        ))
        .expect("pod");
    }
    api.create(pod("default", "elsewhere", "node2", "a"))
        .expect("pod");
    api.create(service("kube-system", "kube-dns")).expect("svc");
    api.create(endpointslice("kube-system", "kube-dns-x", "kube-dns"))
        .expect("eps");
    api.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "empty"}}))
        .expect("ns");

    // kubelet: protobuf list of its pods, node, one pod by name (JSON).
    let r = get_as(
        c,
        &format!("{hub}/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}"),
        KUBELET,
        PROTOBUF_ACCEPT,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with(PROTOBUF),
        "the double answers kubelet in protobuf"
    );
    assert_eq!(names(&decode(&r)), ["web-0", "web-1", "web-2"]);
    let r = get_as(
        c,
        &format!("{hub}/api/v1/nodes/{NODE}"),
        KUBELET,
        PROTOBUF_ACCEPT,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = get(
        c,
        &format!("{hub}/api/v1/namespaces/default/pods/web-0"),
        KUBELET,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // kubelet lists an empty namespace; kube-proxy lists the same one.
    for ua in [KUBELET, KUBE_PROXY] {
        let r = get(c, &format!("{hub}/api/v1/namespaces/empty/pods"), ua).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // kube-proxy: services and endpointslices (JSON, with its selector).
    let r = get(c, &format!("{hub}/api/v1/services"), KUBE_PROXY).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = get(
        c,
        &format!("{hub}/apis/discovery.k8s.io/v1/endpointslices?labelSelector=%21service.kubernetes.io%2Fheadless"),
        KUBE_PROXY,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // coredns: version and discovery.
    for p in ["/version", "/api", "/apis"] {
        let r = get(c, &format!("{hub}{p}"), COREDNS).await;
        assert_eq!(r.status, StatusCode::OK, "{p}");
    }
}

struct Online {
    _pki: Arc<TestPki>,
    api: ApiServer,
    files: HubFiles,
    hub: Hub,
    c: PlainClient,
}

async fn online(extra: &[&str]) -> Online {
    let pki = Arc::new(TestPki::new().expect("pki"));
    let api = double(&pki).await;
    let files = HubFiles::new(&pki);
    let hub = Hub::start(&files.args(&[api.url()], extra)).await;
    let c = plain_client();
    fill(&c, &hub.proxy_url(), &api).await;
    Online {
        _pki: pki,
        api,
        files,
        hub,
        c,
    }
}

/// Every offline answer of §5.7 (as improved by the issue) against `hub`.
async fn check_offline_answers(c: &PlainClient, hub: &str, newest_pod_rv: u64) {
    // GET in the Accept format: protobuf for kubelet, JSON otherwise.
    let r = get_as(
        c,
        &format!("{hub}/api/v1/namespaces/default/pods/web-1"),
        KUBELET,
        PROTOBUF_ACCEPT,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with(PROTOBUF)
    );
    assert_eq!(decode(&r)["metadata"]["name"], "web-1");
    let r = get(
        c,
        &format!("{hub}/api/v1/namespaces/default/pods/web-1"),
        KUBELET,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.json()["kind"], "Pod", "stored protobuf served as JSON");
    assert_eq!(r.json()["spec"]["nodeName"], NODE);

    // Never cached → 404 Status; other nodes' pods were never cached.
    let r = get(
        c,
        &format!("{hub}/api/v1/namespaces/default/pods/elsewhere"),
        KUBELET,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    assert_eq!(r.json()["reason"], "NotFound");

    // List: kubelet's pods, RV = max item RV, selectors applied.
    let r = get_as(
        c,
        &format!("{hub}/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}"),
        KUBELET,
        PROTOBUF_ACCEPT,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let list = decode(&r);
    assert_eq!(list["kind"], "PodList");
    assert_eq!(names(&list), ["web-0", "web-1", "web-2"]);
    let max_rv = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .max()
        .unwrap();
    assert_eq!(list["metadata"]["resourceVersion"], max_rv.to_string());
    assert!(max_rv >= newest_pod_rv);
    let r = get(
        c,
        &format!("{hub}/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}&labelSelector=app%3Da"),
        KUBELET,
    )
    .await;
    assert_eq!(
        names(&r.json()),
        ["web-0"],
        "label selector applied offline"
    );

    // metadata.name miss → empty list.
    let r = get(
        c,
        &format!("{hub}/api/v1/pods?fieldSelector=metadata.name%3Dmissing"),
        KUBELET,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["items"], json!([]));

    // kubelet pod list over an existing empty set → 404; kube-proxy → [].
    let r = get(c, &format!("{hub}/api/v1/namespaces/empty/pods"), KUBELET).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    let r = get(
        c,
        &format!("{hub}/api/v1/namespaces/empty/pods"),
        KUBE_PROXY,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["items"], json!([]));

    // Services are pool-scoped: the multiplexer serves every component the
    // same shared view (its cacher was filled through the cache), so kubelet
    // sees them too although it never listed services itself.
    let r = get(c, &format!("{hub}/api/v1/services"), KUBE_PROXY).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(names(&r.json()).contains(&"kube-dns".to_string()));
    let r = get(c, &format!("{hub}/api/v1/services"), KUBELET).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(names(&r.json()).contains(&"kube-dns".to_string()));
    let r = get(
        c,
        &format!("{hub}/apis/discovery.k8s.io/v1/endpointslices?labelSelector=%21service.kubernetes.io%2Fheadless"),
        KUBE_PROXY,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(names(&r.json()).contains(&"kube-dns-x".to_string()));

    // Kubelet's node, at once.
    let t = Instant::now();
    let r = get_as(
        c,
        &format!("{hub}/api/v1/nodes/{NODE}"),
        KUBELET,
        PROTOBUF_ACCEPT,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(decode(&r)["kind"], "Node");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "node answered in {:?}",
        t.elapsed()
    );

    // Documents for coredns.
    let r = get(c, &format!("{hub}/version"), COREDNS).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.json()["gitVersion"].is_string(), "{}", r.text());
    let r = get(c, &format!("{hub}/apis"), COREDNS).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // Non-resource paths and non-agents → 400.
    let r = get(c, &format!("{hub}/healthz"), KUBELET).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = get(
        c,
        &format!("{hub}/api/v1/namespaces/default/pods/web-1"),
        "kubevirt/1.0",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("can not cache for"), "{}", r.text());

    // Watch: 200, no events, ends at timeoutSeconds.
    let t = Instant::now();
    let r = get(
        c,
        &format!(
            "{hub}/api/v1/pods?watch=true&timeoutSeconds=1&fieldSelector=spec.nodeName%3D{NODE}"
        ),
        KUBELET,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty(), "no stale events: {}", r.text());
    assert!(
        t.elapsed() >= Duration::from_millis(900) && t.elapsed() < Duration::from_secs(5),
        "watch lasted {:?}",
        t.elapsed()
    );

    // Delete → 403.
    let r = send(
        c,
        Method::DELETE,
        &format!("{hub}/api/v1/namespaces/default/pods/web-1"),
        &[("user-agent", KUBELET)],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["reason"], "Forbidden");

    // Create an event → 201 echo and stored; other creates echo only.
    let ev = json!({"apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "web-1.offline", "namespace": "default", "resourceVersion": "1"},
        "involvedObject": {"kind": "Pod", "name": "web-1", "namespace": "default"},
        "reason": "Offline", "message": "m"});
    let r = send(
        c,
        Method::POST,
        &format!("{hub}/api/v1/namespaces/default/events"),
        &[
            ("user-agent", KUBELET),
            ("content-type", "application/json"),
        ],
        Bytes::from(ev.to_string()),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json(), ev);
    eventually(Duration::from_secs(5), "offline event stored", || async {
        get(
            c,
            &format!("{hub}/api/v1/namespaces/default/events/web-1.offline"),
            KUBELET,
        )
        .await
        .status
            == StatusCode::OK
    })
    .await;
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1", "namespace": "default"}});
    let r = send(
        c,
        Method::POST,
        &format!("{hub}/api/v1/namespaces/default/configmaps"),
        &[
            ("user-agent", KUBELET),
            ("content-type", "application/json"),
        ],
        Bytes::from(cm.to_string()),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json(), cm);
    let r = get(
        c,
        &format!("{hub}/api/v1/namespaces/default/configmaps/c1"),
        KUBELET,
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "a created non-event is not stored"
    );

    // Status patch (what kubelet's status manager sends) → applied locally.
    let patch = json!({"status": {"$setElementOrder/conditions": [{"type": "Ready"}],
        "conditions": [{"type": "Ready", "status": "False", "reason": "Offline"}], "phase": "Failed"}});
    let r = send(
        c,
        Method::PATCH,
        &format!("{hub}/api/v1/namespaces/default/pods/web-2/status"),
        &[
            ("user-agent", KUBELET),
            ("content-type", "application/strategic-merge-patch+json"),
            ("accept", "application/json"),
        ],
        Bytes::from(patch.to_string()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(
        r.headers.get("warning").is_some(),
        "the answer says the change is local"
    );
    assert_eq!(r.json()["status"]["phase"], "Failed");
    let r = get_as(
        c,
        &format!("{hub}/api/v1/namespaces/default/pods/web-2"),
        KUBELET,
        PROTOBUF_ACCEPT,
    )
    .await;
    let p = decode(&r);
    assert_eq!(
        p["status"]["phase"], "Failed",
        "the cached copy was updated"
    );
    assert_eq!(p["status"]["conditions"][0]["reason"], "Offline");
    // JSON patch on metadata too.
    let jp = json!([{"op": "add", "path": "/metadata/labels/offline", "value": "yes"}]);
    let r = send(
        c,
        Method::PATCH,
        &format!("{hub}/api/v1/namespaces/default/pods/web-2"),
        &[
            ("user-agent", KUBELET),
            ("content-type", "application/json-patch+json"),
        ],
        Bytes::from(jp.to_string()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["metadata"]["labels"]["offline"], "yes");
    let r = send(
        c,
        Method::PATCH,
        &format!("{hub}/api/v1/namespaces/default/pods/nope"),
        &[
            ("user-agent", KUBELET),
            ("content-type", "application/merge-patch+json"),
        ],
        Bytes::from("{}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // ServiceAccount token → an HS256 JWT signed with the node's own secret
    // (upstream's well-known "openyurt" key would let anyone forge one).
    let tr = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"audiences": ["api"]}});
    let r = send(
        c,
        Method::POST,
        &format!("{hub}/api/v1/namespaces/kube-system/serviceaccounts/coredns/token"),
        &[
            ("user-agent", KUBELET),
            ("content-type", "application/json"),
            ("accept", "application/json"),
        ],
        Bytes::from(tr.to_string()),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let token = r.json()["status"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    use base64::Engine;
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["sub"], "system:serviceaccount:kube-system:coredns");
    assert!(
        claims["iss"]
            .as_str()
            .is_some_and(|i| i.starts_with("yurthub-offline:")),
        "{claims}"
    );
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[0])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "HS256");
}

fn newest_rv(api: &ApiServer) -> u64 {
    api.list("v1", "Pod", None)
        .iter()
        .filter(|p| p["spec"]["nodeName"] == NODE)
        .map(|p| {
            p["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .max()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_answers_from_the_cache_and_after_an_offline_restart() {
    let o = online(&[]).await;
    let (c, hub) = (&o.c, o.hub.proxy_url());
    // 3 kubelet pods + node + web-0 + kube-proxy: services, eps ...
    wait_objects(c, &o.hub.hub_url(), 6).await;
    let newest = newest_rv(&o.api);
    o.api.shutdown().await;
    wait_offline(c, &o.hub.hub_url(), &o.api.url()).await;
    check_offline_answers(c, &hub, newest).await;

    // Restart offline on the same cache: the hub starts and answers.
    let args = o.files.args(&[o.api.url()], &[]);
    o.hub.stop().await;
    let t = Instant::now();
    let hub2 = tokio::time::timeout(Duration::from_secs(20), Hub::start(&args))
        .await
        .expect("hub restarts offline");
    let r = get(
        c,
        &format!("{}/api/v1/namespaces/default/pods/web-0", hub2.proxy_url()),
        KUBELET,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    eprintln!("offline restart to first answer: {:?}", t.elapsed());
    let r = get(c, &format!("{}/v1/readyz", hub2.hub_url()), "test").await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "ready without the cloud: {}",
        r.text()
    );
    // The offline patch survived the restart too.
    let r = get(
        c,
        &format!("{}/api/v1/namespaces/default/pods/web-2", hub2.proxy_url()),
        KUBELET,
    )
    .await;
    assert_eq!(r.json()["status"]["phase"], "Failed");
    let r = get(
        c,
        &format!(
            "{}/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}",
            hub2.proxy_url()
        ),
        KUBELET,
    )
    .await;
    assert_eq!(names(&r.json()), ["web-0", "web-1", "web-2"]);
    hub2.stop().await;
}

/// An offline list larger than the hub's 64 KiB frames is sent frame by
/// frame (never joined whole in memory): it must still arrive whole, in
/// both formats, with a Content-Length that is its length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_offline_list_goes_out_in_frames_and_arrives_whole() {
    const PODS: usize = 400;
    let pki = Arc::new(TestPki::new().expect("pki"));
    let api = double(&pki).await;
    let files = HubFiles::new(&pki);
    let hub = Hub::start(&files.args(&[api.url()], &[])).await;
    let c = plain_client();
    api.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bulk"}}))
        .expect("ns");
    let note = "x".repeat(600);
    for i in 0..PODS {
        let mut p = pod("bulk", &format!("p-{i:03}"), NODE, "a");
        p["metadata"]["annotations"] = json!({ "note": note });
        api.create(p).expect("pod");
    }
    let url = format!(
        "{}/api/v1/namespaces/bulk/pods?fieldSelector=spec.nodeName%3D{NODE}",
        hub.proxy_url()
    );
    let online = get(&c, &url, KUBELET).await;
    assert_eq!(online.status, StatusCode::OK, "{}", online.text());
    let online = online.json();
    wait_objects(&c, &hub.hub_url(), PODS as u64).await;
    api.shutdown().await;
    wait_offline(&c, &hub.hub_url(), &api.url()).await;

    for accept in ["application/json", PROTOBUF_ACCEPT] {
        let r = get_as(&c, &url, KUBELET, accept).await;
        assert_eq!(r.status, StatusCode::OK, "{accept}: {}", r.text());
        assert!(
            r.body.len() > 4 * (64 << 10),
            "{accept}: {} bytes is not several frames",
            r.body.len()
        );
        assert_eq!(
            r.headers["content-length"],
            r.body.len().to_string(),
            "{accept}"
        );
        let list = decode(&r);
        assert_eq!(list["kind"], "PodList", "{accept}");
        assert_eq!(names(&list), names(&online), "{accept}");
        for (offline, online) in list["items"]
            .as_array()
            .unwrap()
            .iter()
            .zip(online["items"].as_array().unwrap())
        {
            assert_eq!(offline["metadata"], online["metadata"], "{accept}");
            assert_eq!(offline["spec"]["nodeName"], NODE, "{accept}");
        }
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_are_cached_and_an_offline_watch_ends_when_the_cloud_returns() {
    let o = online(&["--min-request-timeout=60s"]).await;
    let (c, hub) = (&o.c, o.hub.proxy_url());
    // A kubelet watch (protobuf) sees a new pod, a change and a deletion.
    let list = decode(
        &get_as(
            c,
            &format!("{hub}/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}"),
            KUBELET,
            PROTOBUF_ACCEPT,
        )
        .await,
    );
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = format!(
        "{hub}/api/v1/pods?watch=true&allowWatchBookmarks=true&resourceVersion={rv}&fieldSelector=spec.nodeName%3D{NODE}"
    );
    let req = http::Request::get(&url)
        .header("user-agent", KUBELET)
        .header("accept", PROTOBUF_ACCEPT)
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .expect("watch opens")
        .expect("watch");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let reader = tokio::spawn(async move {
        let mut n = 0usize;
        while let Ok(Some(Ok(f))) =
            tokio::time::timeout(Duration::from_secs(20), body.frame()).await
        {
            n += f.data_ref().map(|d| d.len()).unwrap_or(0);
        }
        n
    });
    o.api
        .create(pod("default", "late", NODE, "a"))
        .expect("pod");
    let mut web0 = o.api.get("v1", "Pod", "default", "web-0").unwrap();
    web0["metadata"]["labels"]["app"] = json!("changed");
    o.api.update(web0).expect("update");
    o.api
        .delete_now("v1", "Pod", "default", "web-1")
        .expect("delete");
    let hub_url = o.hub.hub_url();
    eventually(Duration::from_secs(10), "watch events cached", || async {
        let r = get(
            c,
            &format!("{hub}/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}"),
            KUBELET,
        )
        .await;
        // Online this is the double's answer; check the cache via offline later.
        r.status == StatusCode::OK
            && cache_doc(c, &hub_url).await["writes"].as_u64().unwrap_or(0) >= 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    o.api.shutdown().await;
    wait_offline(c, &hub_url, &o.api.url()).await;
    let _ = reader.await;
    let r = get(
        c,
        &format!("{hub}/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}"),
        KUBELET,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        names(&r.json()),
        ["late", "web-0", "web-2"],
        "ADDED, MODIFIED, DELETED applied"
    );
    let r = get(
        c,
        &format!("{hub}/api/v1/namespaces/default/pods/web-0"),
        KUBELET,
    )
    .await;
    assert_eq!(r.json()["metadata"]["labels"]["app"], "changed");

    // An offline watch without timeoutSeconds stays open, then ends soon
    // after the cloud is back.
    let url = format!("{hub}/api/v1/pods?watch=true&fieldSelector=spec.nodeName%3D{NODE}");
    let req = http::Request::get(&url)
        .header("user-agent", KUBELET)
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .expect("offline watch opens")
        .expect("offline watch");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let early = tokio::time::timeout(Duration::from_secs(2), body.frame()).await;
    assert!(
        early.is_err(),
        "the offline watch stays open with no events"
    );
    o.api.restart().await.expect("double restarts");
    let back = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match body.frame().await {
                None | Some(Err(_)) => return,
                Some(Ok(f)) => assert!(
                    f.data_ref().is_none_or(|d| d.is_empty()),
                    "no events offline"
                ),
            }
        }
    })
    .await;
    assert!(end.is_ok(), "offline watch ended after the cloud returned");
    eprintln!(
        "offline watch ended {:?} after the cloud returned",
        back.elapsed()
    );
    o.hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_works_offline_and_the_binary_restarts_offline() {
    let pki = Arc::new(TestPki::new().expect("pki"));
    let api = double(&pki).await;
    let files = HubFiles::new(&pki);
    let c = plain_client();
    // kubectl is made a cache agent through the labelled yurt-hub-cfg.
    api.create(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}}),
    )
    .ok();
    api.create(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "yurt-hub-cfg", "namespace": "kube-system",
            "labels": {"openyurt.io/configmap-name": "yurt-hub-cfg"}},
        "data": {"cache_agents": "kubectl"}}))
        .expect("cm");
    for i in 0..2 {
        api.create(pod("default", &format!("web-{i}"), NODE, "a"))
            .expect("pod");
    }
    let port = free_port();
    let mut args = files.args(&[api.url()], &["--min-request-timeout=2s"]);
    for a in args.iter_mut() {
        if a == "--proxy-port=0" {
            *a = format!("--proxy-port={port}");
        }
    }
    let hub_url = args
        .iter()
        .find_map(|a| a.strip_prefix("--serve-port="))
        .map(|p| format!("http://127.0.0.1:{p}"))
        .unwrap();
    let proxy = format!("http://127.0.0.1:{port}");
    let home = tempfile::tempdir().unwrap();
    let kubeconfig = home.path().join("kubeconfig");
    std::fs::write(&kubeconfig, hub_kubeconfig(&proxy)).unwrap();

    let mut p = HubProcess::spawn(&args);
    eventually(Duration::from_secs(20), "hub process serving", || async {
        get_opt(&c, &format!("{hub_url}/v1/healthz")).await
    })
    .await;
    eventually(
        Duration::from_secs(15),
        "kubectl became a cache agent",
        || async {
            cache_doc(&c, &hub_url).await["cacheAgents"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "kubectl"))
        },
    )
    .await;
    // Online: plain JSON lists (a Table is never cached), and discovery.
    kubectl_ok(&kubectl(&kubeconfig, &["get", "pods", "-o", "json"]).await);
    kubectl_ok(&kubectl(&kubeconfig, &["get", "nodes", "-o", "json"]).await);
    wait_objects(&c, &hub_url, 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.shutdown().await;
    wait_offline(&c, &hub_url, &api.url()).await;

    let check = |what: &'static str| {
        let kubeconfig = kubeconfig.clone();
        async move {
            let out = kubectl_ok(&kubectl(&kubeconfig, &["get", "pods"]).await);
            assert!(
                out.contains("web-0") && out.contains("web-1"),
                "{what}: {out}"
            );
            let out = kubectl_ok(&kubectl(&kubeconfig, &["get", "nodes"]).await);
            assert!(out.contains(NODE), "{what}: {out}");
            // -w lists, then watches until the offline watch times out.
            let t = Instant::now();
            let o = kubectl(&kubeconfig, &["get", "pods", "-w"]).await;
            let out = String::from_utf8_lossy(&o.stdout);
            assert!(
                out.contains("web-0"),
                "{what}: kubectl -w: {out} {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(t.elapsed() < Duration::from_secs(20));
        }
    };
    check("offline").await;

    // kill -9 and start the binary again while the cloud is still away.
    let pid = nix::unistd::Pid::from_raw(p.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = p.child.wait();
    let t = Instant::now();
    let mut p2 = HubProcess::spawn(&args);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = get_opt_reply(
            &c,
            &format!("{proxy}/api/v1/namespaces/default/pods/web-0"),
            "kubectl/v1.34.0",
        )
        .await;
        if r == Some(StatusCode::OK) {
            break;
        }
        if Instant::now() > deadline || p2.child.try_wait().ok().flatten().is_some() {
            let _ = p2.child.kill();
            let out = p2.child.wait_with_output_ref();
            panic!("restarted hub did not answer from the cache (last {r:?}): {out}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "binary cold start offline to first answer: {:?}",
        t.elapsed()
    );
    check("after an offline restart").await;
    drop(p);
}

trait Output {
    fn wait_with_output_ref(&mut self) -> String;
}

impl Output for std::process::Child {
    fn wait_with_output_ref(&mut self) -> String {
        use std::io::Read;
        let _ = self.wait();
        let mut s = String::new();
        if let Some(e) = self.stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

async fn get_opt(c: &PlainClient, url: &str) -> bool {
    get_opt_reply(c, url, "test")
        .await
        .is_some_and(|s| s.is_success())
}

async fn get_opt_reply(c: &PlainClient, url: &str, ua: &str) -> Option<StatusCode> {
    let req = http::Request::get(url)
        .header("user-agent", ua)
        .body(http_body_util::Full::new(Bytes::new()))
        .ok()?;
    match tokio::time::timeout(Duration::from_secs(2), c.request(req)).await {
        Ok(Ok(r)) => Some(r.status()),
        _ => None,
    }
}

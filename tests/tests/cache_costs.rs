//! What the caching path costs, through the public surface: a kubelet GET
//! whose object has the resourceVersion already cached writes nothing to
//! the store (counted in `node_yurthub_cache_unchanged_writes`), while a
//! GET of a changed object is written; the same watch event on several
//! watches of one scope is written once.

mod cache_support;

use std::sync::Arc;
use std::time::Duration;

use cache_support::*;
use http::StatusCode;
use serde_json::json;
use yurthub_e2e::hub::{
    Hub, HubFiles, NODE, PlainClient, eventually, get, metric_value, plain_client,
};
use yurthub_e2e::pki::TestPki;

async fn metric(c: &PlainClient, hub_url: &str, name: &str) -> f64 {
    let m = get(c, &format!("{hub_url}/metrics"), "test").await.text();
    metric_value(&m, name).unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// Waits (10 s at most) until `node_yurthub_cache_unchanged_writes` reaches `at_least`.
async fn unchanged_reaches(c: &PlainClient, hub_url: &str, at_least: f64, what: &str) {
    eventually(Duration::from_secs(10), what, || async {
        metric(c, hub_url, "node_yurthub_cache_unchanged_writes").await >= at_least
    })
    .await;
}

/// The double with namespace `a`, and a hub without the multiplexer.
struct Env {
    api: yurthub_e2e::apiserver::ApiServer,
    _files: HubFiles,
    hub: Hub,
    c: PlainClient,
    hub_url: String,
}

async fn env() -> Env {
    let pki = Arc::new(TestPki::new().expect("pki"));
    let api = double(&pki).await;
    let files = HubFiles::new(&pki);
    let hub = Hub::start(&files.args(&[api.url()], &["--pool-scope-resources="])).await;
    api.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}))
        .unwrap();
    let hub_url = hub.hub_url();
    Env {
        api,
        _files: files,
        hub,
        c: plain_client(),
        hub_url,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_of_the_cached_resource_version_writes_nothing() {
    let Env {
        api,
        _files,
        hub,
        c,
        hub_url,
    } = env().await;
    api.create(pod("a", "p0", NODE, "x")).unwrap();
    let url = format!("{}/api/v1/namespaces/a/pods/p0", hub.proxy_url());

    let first = get(&c, &url, KUBELET).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    wait_objects(&c, &hub_url, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writes = metric(&c, &hub_url, "node_yurthub_cache_writes").await;
    let unchanged = metric(&c, &hub_url, "node_yurthub_cache_unchanged_writes").await;

    // The same object again and again: the skips are counted, and the
    // store's write count moves only by the hub's own lease copies (one per
    // heartbeat, 1 s here), far below one per GET.
    const GETS: usize = 50;
    for _ in 0..GETS {
        let again = get(&c, &url, KUBELET).await;
        assert_eq!(again.status, StatusCode::OK);
        assert_eq!(again.body, first.body, "the same object is answered");
    }
    unchanged_reaches(
        &c,
        &hub_url,
        unchanged + GETS as f64,
        "every unchanged write counted",
    )
    .await;
    let written = metric(&c, &hub_url, "node_yurthub_cache_writes").await - writes;
    assert!(
        written < 10.0,
        "{written} store writes during {GETS} GETs of the cached resourceVersion"
    );

    // A changed object (new resourceVersion) is written.
    let mut changed = api.get("v1", "Pod", "a", "p0").expect("pod");
    changed["metadata"]["labels"]["app"] = json!("y");
    api.update(changed).unwrap();
    let fresh = get(&c, &url, KUBELET).await;
    assert_eq!(fresh.status, StatusCode::OK);
    assert_eq!(fresh.json()["metadata"]["labels"]["app"], "y");
    eventually(
        Duration::from_secs(5),
        "the changed object is written",
        || {
            let c = c.clone();
            let hub_url = hub_url.clone();
            async move { metric(&c, &hub_url, "node_yurthub_cache_writes").await > writes }
        },
    )
    .await;
    hub.stop().await;
    api.shutdown().await;
}

/// A kubelet watch of this node's pods, drained in the background.
async fn drained_watch(c: &PlainClient, proxy: &str) -> tokio::task::JoinHandle<()> {
    let url = format!("{proxy}/api/v1/pods?watch=true&fieldSelector=spec.nodeName%3D{NODE}");
    let req = http::Request::get(&url)
        .header("user-agent", KUBELET)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .expect("watch opens")
        .expect("watch");
    assert_eq!(resp.status(), StatusCode::OK);
    tokio::spawn(async move {
        use http_body_util::BodyExt;
        let mut b = resp.into_body();
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(20), b.frame()).await {
        }
    })
}

/// Several watches of one scope (the same component and identity) see the
/// same events: each event is written once, the other copies are counted
/// as unchanged writes, and every object is cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_on_several_watches_of_one_scope_is_written_once() {
    let Env {
        api,
        _files,
        hub,
        c,
        hub_url,
    } = env().await;
    const WATCHERS: usize = 4;
    const PODS: usize = 40;
    let mut drains = Vec::new();
    for _ in 0..WATCHERS {
        drains.push(drained_watch(&c, &hub.proxy_url()).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let unchanged = metric(&c, &hub_url, "node_yurthub_cache_unchanged_writes").await;
    for i in 0..PODS {
        api.create(pod("a", &format!("w{i:03}"), NODE, "x"))
            .unwrap();
    }
    wait_objects(&c, &hub_url, PODS as u64).await;
    unchanged_reaches(
        &c,
        &hub_url,
        unchanged + ((WATCHERS - 1) * PODS) as f64,
        "the other watches' copies counted as unchanged",
    )
    .await;
    for d in drains {
        d.abort();
    }
    hub.stop().await;
    api.shutdown().await;
}

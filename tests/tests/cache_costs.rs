//! What the caching path costs, through the public surface: a kubelet GET
//! whose object has the resourceVersion already cached writes nothing to
//! the store (counted in `node_yurthub_cache_unchanged_writes`), while a
//! GET of a changed object is written; the same watch event on several
//! watches of one scope is written once; a list the cache holds at its
//! resourceVersion is not written again, however many copies arrive at once.

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
    let last = std::sync::Mutex::new(0.0);
    let what = format!("{what} (node_yurthub_cache_unchanged_writes >= {at_least})");
    let waited =
        std::panic::AssertUnwindSafe(eventually(Duration::from_secs(10), &what, || async {
            let v = metric(c, hub_url, "node_yurthub_cache_unchanged_writes").await;
            *last.lock().unwrap() = v;
            v >= at_least
        }));
    if futures_util::FutureExt::catch_unwind(waited).await.is_err() {
        let m = get(c, &format!("{hub_url}/metrics"), "test").await.text();
        let cache: Vec<&str> = m.lines().filter(|l| l.contains("cache")).collect();
        panic!(
            "{what}: it is {}\n{}",
            last.lock().unwrap(),
            cache.join("\n")
        );
    }
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

/// Names of the items of a JSON list reply.
fn item_names(r: &yurthub_e2e::hub::Reply) -> Vec<String> {
    names(&r.json())
}

/// A list of more than one store page is cached while it streams and
/// replaces its scope exactly; the same list again (alone, or eight copies
/// at once, as clients sharing an identity re-list when the cloud returns)
/// writes nothing and is counted as unchanged; the changed list is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_at_the_cached_resource_version_writes_nothing() {
    let Env {
        api,
        _files,
        hub,
        c,
        hub_url,
    } = env().await;
    const PODS: usize = 1200; // more than two of the cache's 500-item pages
    for i in 0..PODS {
        api.create(pod("a", &format!("l{i:04}"), NODE, "x"))
            .unwrap();
    }
    api.create(pod("a", "elsewhere", "other-node", "x"))
        .unwrap();
    let url = format!(
        "{}/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}",
        hub.proxy_url()
    );
    let objects = |c: PlainClient, hub_url: String| async move {
        cache_doc(&c, &hub_url).await["objects"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = objects(c.clone(), hub_url.clone()).await;
    let first = get(&c, &url, KUBELET).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    assert_eq!(item_names(&first).len(), PODS);
    wait_objects(&c, &hub_url, before + PODS as u64).await;

    let unchanged = metric(&c, &hub_url, "node_yurthub_cache_unchanged_writes").await;
    let again = get(&c, &url, KUBELET).await;
    assert_eq!(again.body, first.body, "the same list is answered");
    unchanged_reaches(
        &c,
        &hub_url,
        unchanged + 1.0,
        "the relist counted as unchanged",
    )
    .await;
    let burst: Vec<_> = (0..8)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move { get(&c, &url, KUBELET).await })
        })
        .collect();
    // A list's resourceVersion is the double's latest: a write anywhere
    // meanwhile (the hub's own lease renewal) makes a copy new, and the
    // first copy at each new version is written, the others not.
    let cached_rv = again.json()["metadata"]["resourceVersion"].clone();
    let mut new_versions = std::collections::BTreeSet::new();
    for b in burst {
        let r = b.await.expect("list task");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(item_names(&r).len(), PODS);
        let rv = r.json()["metadata"]["resourceVersion"].clone();
        if rv != cached_rv {
            new_versions.insert(rv.to_string());
        }
    }
    assert!(
        new_versions.len() <= 3,
        "the double's version moved during the whole burst: {new_versions:?}"
    );
    unchanged_reaches(
        &c,
        &hub_url,
        unchanged + 9.0 - new_versions.len() as f64,
        "eight concurrent copies of the cached list counted as unchanged (but one per new version)",
    )
    .await;

    // The scope changes: the relist is written and replaces it exactly.
    api.delete_now("v1", "Pod", "a", "l0000").unwrap();
    let mut p = api.get("v1", "Pod", "a", "l0001").expect("pod");
    p["metadata"]["labels"]["app"] = json!("relabelled");
    api.update(p).unwrap();
    let changed = get(&c, &url, KUBELET).await;
    assert_eq!(item_names(&changed).len(), PODS - 1);
    eventually(
        Duration::from_secs(15),
        "the changed list replaces the scope",
        || {
            let (c, hub_url) = (c.clone(), hub_url.clone());
            async move { objects(c, hub_url).await == before + PODS as u64 - 1 }
        },
    )
    .await;

    // Offline, the cache answers the changed list.
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.shutdown().await;
    wait_offline(&c, &hub_url, &api.url()).await;
    let offline = get(&c, &url, KUBELET).await;
    assert_eq!(offline.status, StatusCode::OK, "{}", offline.text());
    let mut want = item_names(&changed);
    want.sort();
    let mut got = item_names(&offline);
    got.sort();
    assert_eq!(got, want);
    let relabelled = offline.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["metadata"]["name"] == "l0001")
        .map(|i| i["metadata"]["labels"]["app"].clone());
    assert_eq!(relabelled, Some(json!("relabelled")));
    hub.stop().await;
}

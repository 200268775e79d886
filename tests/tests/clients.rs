//! Real Kubernetes clients through the hub: kubectl (client-go) and kube-rs,
//! pointed at the hub's plain-HTTP proxy as kubelet would be.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use yurthub_e2e::apiserver::ApiServer;
use yurthub_e2e::hub::{Hub, HubFiles, NODE, hub_kubeconfig, kubectl, kubectl_ok, kubectl_watch};
use yurthub_e2e::pki::TestPki;

fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "k"}},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}]}
    })
}

async fn setup() -> (ApiServer, HubFiles, Hub, std::path::PathBuf) {
    let pki = Arc::new(TestPki::new().expect("pki"));
    let api = ApiServer::builder()
        .pki(pki.clone())
        .bookmark_interval(Duration::from_secs(1))
        .start()
        .await
        .expect("double");
    api.create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}))
        .expect("node");
    let files = HubFiles::new(&pki);
    let hub = Hub::start(&files.args(&[api.url()], &[])).await;
    let kubeconfig = files.dir.path().join("kubelet.conf");
    std::fs::write(&kubeconfig, hub_kubeconfig(&hub.proxy_url())).expect("kubeconfig");
    (api, files, hub, kubeconfig)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_lists_gets_watches_and_execs_through_the_hub() {
    let (api, _files, hub, kc) = setup().await;
    api.create(pod("k1")).expect("pod");

    let table = kubectl_ok(&kubectl(&kc, &["get", "pods"]).await);
    assert!(table.starts_with("NAME") && table.contains("k1"), "{table}");
    let one: Value = serde_json::from_str(&kubectl_ok(
        &kubectl(&kc, &["get", "pod", "k1", "-o", "json"]).await,
    ))
    .expect("json");
    assert_eq!(one["spec"]["nodeName"], NODE);
    let nodes = kubectl_ok(&kubectl(&kc, &["get", "nodes", "-o", "name"]).await);
    assert_eq!(nodes.trim(), format!("node/{NODE}"));

    // get -w sees a pod created while it watches.
    let trigger = || {
        api.create(pod("k2")).expect("create during watch");
    };
    kubectl_watch(
        &kc,
        &["get", "pods"],
        "k1",
        trigger,
        "k2",
        Duration::from_secs(20),
    )
    .await
    .expect("kubectl -w");

    // exec is an upgrade (WebSocket) proxied both ways.
    let echoed =
        kubectl_ok(&kubectl(&kc, &["exec", "k1", "--", "echo", "through", "the", "hub"]).await);
    assert_eq!(echoed, "through the hub\n");
    let mut cat = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["exec", "-i", "k1", "--", "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl exec -i");
    {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = cat.stdin.take().expect("stdin");
        stdin
            .write_all(b"stdin flows upstream\n")
            .await
            .expect("write");
    }
    let out = tokio::time::timeout(Duration::from_secs(20), cat.wait_with_output())
        .await
        .expect("cat ends")
        .expect("output");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "stdin flows upstream\n"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_watcher_works_through_the_hub() {
    use futures_util::StreamExt as _;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::watcher;

    let (api, _files, hub, _kc) = setup().await;
    let config = kube::Config::new(hub.proxy_url().parse().expect("uri"));
    let client = kube::Client::try_from(config).expect("client");
    let cms: kube::Api<ConfigMap> = kube::Api::namespaced(client, "default");
    let mut stream = watcher(cms, watcher::Config::default()).boxed();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), stream.next())
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
    api.create(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm1", "namespace": "default"}, "data": {"k": "v"}}))
        .expect("create");
    loop {
        if let watcher::Event::Apply(cm) = next().await {
            assert_eq!(cm.metadata.name.as_deref(), Some("cm1"));
            break;
        }
    }
    api.delete_now("v1", "ConfigMap", "default", "cm1")
        .expect("delete");
    loop {
        if let watcher::Event::Delete(cm) = next().await {
            assert_eq!(cm.metadata.name.as_deref(), Some("cm1"));
            break;
        }
    }
    hub.stop().await;
}

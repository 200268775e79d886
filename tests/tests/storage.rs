//! The cache store (`yurthub::storage`) through its public API, with real
//! files: semantics, crash safety under SIGKILL, corruption recovery, full
//! disks (privileged: a tmpfs is mounted), the size cap, the OpenYurt
//! import and group-commit throughput.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use rand::Rng;
use yurthub::storage::{
    Applied, ClusterBinding, Error, Format, Gvr, Object, ObjectMeta, Options, ResourceKey,
    ScopeKey, Space, Store, WatchEvent, Write, import_openyurt,
};

// === helpers ===

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn pods(component: &str) -> ResourceKey {
    ResourceKey::new(component, Space::Full, Gvr::new("", "v1", "pods"))
}

fn events(component: &str) -> ResourceKey {
    ResourceKey::new(component, Space::Full, Gvr::new("", "v1", "events"))
}

fn obj(ns: Option<&str>, name: &str, rv: u64) -> Object {
    obj_with(
        ns,
        name,
        rv,
        &[],
        &[],
        format!("{{\"name\":\"{name}\",\"rv\":{rv}}}"),
    )
}

fn obj_with(
    ns: Option<&str>,
    name: &str,
    rv: u64,
    labels: &[(&str, &str)],
    fields: &[(&str, &str)],
    body: String,
) -> Object {
    let map = |kv: &[(&str, &str)]| {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>()
    };
    Object {
        meta: ObjectMeta {
            namespace: ns.map(str::to_owned),
            name: name.to_owned(),
            resource_version: rv.into(),
            kind: "Pod".into(),
            api_version: "v1".into(),
            labels: map(labels),
            fields: map(fields),
        },
        format: Format::Json,
        body: Bytes::from(body),
    }
}

fn open(dir: &Path) -> Store {
    open_with(dir, Options::default())
}

fn open_with(dir: &Path, options: Options) -> Store {
    let opened = Store::open(dir, options).expect("store opens");
    assert!(
        opened.recovery.is_none(),
        "unexpected recovery: {:?}",
        opened.recovery
    );
    opened.store
}

fn names(store: &Store, scope: &ScopeKey) -> Vec<String> {
    let mut v: Vec<String> = store
        .list(scope, |_| true)
        .expect("list")
        .map(|l| l.items.into_iter().map(|o| o.object.meta.name).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn rv_of(store: &Store, resource: &ResourceKey, ns: Option<&str>, name: &str) -> Option<String> {
    store
        .get(&resource.object(ns, name))
        .expect("get")
        .map(|o| o.object.meta.resource_version.as_str().to_owned())
}

// === semantics ===

#[tokio::test]
async fn put_get_list_delete_follow_the_resource_version_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let r = pods("kubelet");

    let applied = within(
        "put",
        store.put_if_not_older(&r, obj(Some("default"), "a", 10)),
    )
    .await;
    assert_eq!(applied.expect("put"), Applied::Stored);
    let got = store
        .get(&r.object(Some("default"), "a"))
        .expect("get")
        .expect("present");
    assert_eq!(got.object.body, Bytes::from("{\"name\":\"a\",\"rv\":10}"));
    assert_eq!(got.object.format, Format::Json);
    assert_eq!(got.object.meta.kind, "Pod");

    // Older is ignored, equal and newer are applied.
    let older = within(
        "older",
        store.put_if_not_older(&r, obj(Some("default"), "a", 9)),
    )
    .await;
    assert_eq!(
        older.expect("older"),
        Applied::IgnoredOlder {
            cached: "10".into()
        }
    );
    assert_eq!(
        rv_of(&store, &r, Some("default"), "a").as_deref(),
        Some("10")
    );
    let mut equal = obj(Some("default"), "a", 10);
    equal.body = Bytes::from_static(b"{\"same-rv\":true}");
    assert_eq!(
        within("equal", store.put_if_not_older(&r, equal))
            .await
            .expect("equal"),
        Applied::Stored
    );
    let got = store
        .get(&r.object(Some("default"), "a"))
        .expect("get")
        .expect("present");
    assert_eq!(got.object.body, Bytes::from_static(b"{\"same-rv\":true}"));
    within(
        "newer",
        store.put_if_not_older(&r, obj(Some("default"), "a", 11)),
    )
    .await
    .expect("newer");
    assert_eq!(
        rv_of(&store, &r, Some("default"), "a").as_deref(),
        Some("11")
    );

    within(
        "b",
        store.put_if_not_older(&r, obj(Some("kube-system"), "b", 5)),
    )
    .await
    .expect("b");
    let nodes = ResourceKey::new("kubelet", Space::Full, Gvr::new("", "v1", "nodes"));
    within("node", store.put_if_not_older(&nodes, obj(None, "n1", 3)))
        .await
        .expect("node");
    assert!(
        store.get(&nodes.object(None, "n1")).expect("get").is_some(),
        "cluster-scoped get"
    );

    let all = store
        .list(&r.scope(None, ""), |_| true)
        .expect("list")
        .expect("some");
    assert_eq!(all.items.len(), 2);
    assert_eq!(all.max_resource_version, Some(11));
    assert!(all.marker.is_none(), "nothing was listed");
    assert_eq!(names(&store, &r.scope(Some("kube-system"), "")), vec!["b"]);

    assert!(
        within("delete", store.delete(&r.object(Some("default"), "a")))
            .await
            .expect("delete")
    );
    assert!(
        !within(
            "delete again",
            store.delete(&r.object(Some("default"), "a"))
        )
        .await
        .expect("delete")
    );
    assert!(
        store
            .get(&r.object(Some("default"), "a"))
            .expect("get")
            .is_none()
    );
    assert_eq!(
        store.keys(&r).expect("keys"),
        vec![r.object(Some("kube-system"), "b")]
    );
    assert_eq!(store.stats().objects, 2);

    // Non-numeric RVs cannot be ordered: arrival order wins.
    within(
        "opaque",
        store.put_if_not_older(&r, obj_with(Some("x"), "o", 0, &[], &[], "1".into())),
    )
    .await
    .expect("put");
    let mut opaque = obj(Some("x"), "o", 0);
    opaque.meta.resource_version = "abc".into();
    assert_eq!(
        within("opaque2", store.put_if_not_older(&r, opaque))
            .await
            .expect("put"),
        Applied::Stored
    );
}

#[tokio::test]
async fn components_and_metadata_spaces_are_isolated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    within(
        "kp",
        store.put_if_not_older(&pods("kube-proxy"), obj(Some("d"), "p", 1)),
    )
    .await
    .expect("put");
    assert!(
        store
            .get(&pods("kubelet").object(Some("d"), "p"))
            .expect("get")
            .is_none()
    );
    assert!(
        store
            .list(&pods("kubelet").scope(None, ""), |_| true)
            .expect("list")
            .is_none()
    );
    // A component whose name extends another's is still another component.
    assert!(
        store
            .get(&pods("kube").object(Some("d"), "p"))
            .expect("get")
            .is_none()
    );

    let meta = ResourceKey::new(
        "kube-proxy",
        Space::PartialObjectMetadata,
        Gvr::new("", "v1", "pods"),
    );
    assert!(
        store
            .get(&meta.object(Some("d"), "p"))
            .expect("get")
            .is_none()
    );
    within(
        "meta",
        store.replace_scope(&meta.scope(None, ""), |_| true, vec![], 5),
    )
    .await
    .expect("replace");
    // Replacing the metadata space never touches the full objects.
    assert!(
        store
            .get(&pods("kube-proxy").object(Some("d"), "p"))
            .expect("get")
            .is_some()
    );
    assert_eq!(
        store.components().expect("components"),
        vec!["kube-proxy".to_string()]
    );

    assert_eq!(
        within("forget", store.delete_component("kube-proxy"))
            .await
            .expect("delete"),
        1
    );
    assert!(store.components().expect("components").is_empty());
    assert!(
        store
            .list(&meta.scope(None, ""), |_| true)
            .expect("list")
            .is_none(),
        "markers go too"
    );
}

#[tokio::test]
async fn list_markers_tell_empty_from_never_listed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let r = pods("kubelet");
    let node_scope = r.scope(None, "fieldSelector=spec.nodeName=a");
    assert!(
        store.list(&node_scope, |_| true).expect("list").is_none(),
        "never listed"
    );

    within(
        "empty list",
        store.replace_scope(&node_scope, |_| true, vec![], 42),
    )
    .await
    .expect("replace");
    let listing = store
        .list(&node_scope, |_| true)
        .expect("list")
        .expect("listed");
    assert!(listing.items.is_empty());
    let marker = listing.marker.expect("marker");
    assert_eq!(marker.resource_version.as_str(), "42");
    assert_eq!(marker.scope, node_scope);
    assert!(!marker.imported);
    // The list RV is also where a watch resumes.
    let progress = store
        .watch_progress(&node_scope)
        .expect("progress")
        .expect("set");
    assert_eq!(progress.resource_version.as_str(), "42");

    // A narrower namespace with the same selector is covered; another
    // selector is not.
    let ns_scope = r.scope(Some("default"), "fieldSelector=spec.nodeName=a");
    assert_eq!(
        store
            .list(&ns_scope, |_| true)
            .expect("list")
            .expect("covered")
            .marker
            .expect("m")
            .scope,
        node_scope
    );
    assert!(
        store
            .list(&r.scope(None, "labelSelector=x"), |_| true)
            .expect("list")
            .is_none()
    );

    // A cluster-wide list without selector covers every selector.
    within(
        "all",
        store.replace_scope(&r.scope(None, ""), |_| true, vec![], 50),
    )
    .await
    .expect("replace");
    let l = store
        .list(&r.scope(Some("x"), "labelSelector=x"), |_| true)
        .expect("list")
        .expect("covered");
    assert_eq!(l.marker.expect("marker").resource_version.as_str(), "50");
    assert!(
        within("mark", store.mark_listed(&r.scope(Some("x"), ""), 7, true))
            .await
            .expect("mark")
    );
    assert!(
        !within(
            "mark again",
            store.mark_listed(&r.scope(Some("x"), ""), 8, true)
        )
        .await
        .expect("mark")
    );
}

#[tokio::test]
async fn label_and_field_selectors_apply_through_the_predicate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let r = pods("kubelet");
    let items = vec![
        obj_with(
            Some("d"),
            "a",
            1,
            &[("app", "web")],
            &[("spec.nodeName", "n1")],
            "{}".into(),
        ),
        obj_with(
            Some("d"),
            "b",
            2,
            &[("app", "db")],
            &[("spec.nodeName", "n1")],
            "{}".into(),
        ),
        obj_with(
            Some("e"),
            "c",
            3,
            &[("app", "web")],
            &[("spec.nodeName", "n2")],
            "{}".into(),
        ),
    ];
    within(
        "replace",
        store.replace_scope(&r.scope(None, ""), |_| true, items, 3),
    )
    .await
    .expect("replace");
    let web = store
        .list(&r.scope(None, "labelSelector=app=web"), |m| {
            m.labels.get("app").map(String::as_str) == Some("web")
        })
        .expect("list")
        .expect("some");
    let mut got: Vec<_> = web
        .items
        .iter()
        .map(|o| o.object.meta.name.clone())
        .collect();
    got.sort();
    assert_eq!(got, vec!["a", "c"]);
    assert_eq!(web.max_resource_version, Some(3));
    let n1 = store
        .list(&r.scope(Some("d"), ""), |m| {
            m.fields.get("spec.nodeName").map(String::as_str) == Some("n1")
        })
        .expect("list")
        .expect("some");
    assert_eq!(n1.items.len(), 2);
}

#[tokio::test]
async fn watch_events_and_progress_persist_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = pods("kubelet");
    let scope = r.scope(None, "fieldSelector=spec.nodeName=n1");
    {
        let store = open(dir.path());
        let ev = |e| within("event", store.apply_watch_event(&scope, e));
        assert_eq!(
            ev(WatchEvent::Added(obj(Some("d"), "a", 10)))
                .await
                .expect("added"),
            Applied::Stored
        );
        assert_eq!(
            ev(WatchEvent::Modified(obj(Some("d"), "a", 12)))
                .await
                .expect("mod"),
            Applied::Stored
        );
        assert_eq!(
            ev(WatchEvent::Modified(obj(Some("d"), "a", 11)))
                .await
                .expect("stale"),
            Applied::IgnoredOlder {
                cached: "12".into()
            }
        );
        // A deletion older than the cached object does not remove it.
        assert_eq!(
            ev(WatchEvent::Deleted(obj(Some("d"), "a", 11)))
                .await
                .expect("stale delete"),
            Applied::IgnoredOlder {
                cached: "12".into()
            }
        );
        assert_eq!(
            ev(WatchEvent::Added(obj(Some("d"), "b", 13)))
                .await
                .expect("b"),
            Applied::Stored
        );
        assert_eq!(
            ev(WatchEvent::Deleted(obj(Some("d"), "b", 14)))
                .await
                .expect("del"),
            Applied::Deleted
        );
        assert_eq!(
            ev(WatchEvent::Deleted(obj(Some("d"), "zz", 15)))
                .await
                .expect("del"),
            Applied::NotFound
        );
        assert_eq!(
            ev(WatchEvent::Bookmark("20".into()))
                .await
                .expect("bookmark"),
            Applied::ProgressOnly
        );
        let ns_scope = r.scope(Some("d"), "");
        let outside = within(
            "outside",
            store.apply_watch_event(&ns_scope, WatchEvent::Added(obj(Some("e"), "x", 21))),
        )
        .await;
        assert!(
            matches!(outside, Err(Error::OutsideScope { .. })),
            "{outside:?}"
        );

        // Fire-and-forget receipts are applied in order.
        let mut receipts = Vec::new();
        for rv in 21..=30 {
            receipts.push(
                within(
                    "submit",
                    store.submit(Write::WatchEvent {
                        scope: scope.clone(),
                        event: WatchEvent::Modified(obj(Some("d"), "c", rv)),
                    }),
                )
                .await
                .expect("submit"),
            );
        }
        let last = receipts.pop().expect("receipts");
        drop(receipts);
        assert_eq!(
            within("durable", last.durable()).await.expect("durable"),
            Applied::Stored
        );
    }
    let store = open(dir.path());
    let p = store
        .watch_progress(&scope)
        .expect("progress")
        .expect("persisted");
    assert_eq!(p.resource_version.as_str(), "30");
    assert_eq!(rv_of(&store, &r, Some("d"), "a").as_deref(), Some("12"));
    assert_eq!(rv_of(&store, &r, Some("d"), "c").as_deref(), Some("30"));
    assert!(rv_of(&store, &r, Some("d"), "b").is_none());
    within("clear", store.clear_watch_progress(&scope))
        .await
        .expect("clear");
    assert!(store.watch_progress(&scope).expect("progress").is_none());
    within("set", store.set_watch_progress(&scope, "99"))
        .await
        .expect("set");
    assert_eq!(
        store
            .watch_progress(&scope)
            .expect("p")
            .expect("set")
            .resource_version
            .as_str(),
        "99"
    );
}

#[tokio::test]
async fn documents_kinds_and_cluster_binding() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crd = Gvr::new("example.com", "v1", "widgets");
    let crd_singular = Gvr::new("example.com", "v1", "widget");
    let other = Gvr::new("example.com", "v1", "gadgets");
    {
        let store = open(dir.path());
        within(
            "doc",
            store.put_document(
                "/version",
                "application/json",
                Bytes::from_static(b"{\"gitVersion\":\"v1.30.0\"}"),
            ),
        )
        .await
        .expect("doc");
        within("kind", store.put_kind(&crd, "Widget"))
            .await
            .expect("kind");
        within("kind", store.put_kind(&crd_singular, "Widget"))
            .await
            .expect("kind");
        within("kind", store.put_kind(&other, "Gadget"))
            .await
            .expect("kind");
        assert_eq!(
            within("bind", store.bind_cluster("ca-sha256:aaa"))
                .await
                .expect("bind"),
            ClusterBinding::Fresh
        );
    }
    let store = open(dir.path());
    let doc = store.document("/version").expect("doc").expect("persisted");
    assert_eq!(doc.content_type, "application/json");
    assert_eq!(
        doc.body,
        Bytes::from_static(b"{\"gitVersion\":\"v1.30.0\"}")
    );
    assert!(store.document("/apis").expect("doc").is_none());
    assert_eq!(
        store.kind_for(&crd).expect("kind").as_deref(),
        Some("Widget")
    );
    assert_eq!(store.kinds().expect("kinds").len(), 3);
    // Forgetting a resource (404) takes its singular/plural sibling along.
    assert_eq!(
        within("forget", store.forget_gvr(&crd))
            .await
            .expect("forget"),
        2
    );
    assert!(store.kind_for(&crd_singular).expect("kind").is_none());
    assert_eq!(
        store.kind_for(&other).expect("kind").as_deref(),
        Some("Gadget")
    );

    within(
        "put",
        store.put_if_not_older(&pods("kubelet"), obj(Some("d"), "a", 1)),
    )
    .await
    .expect("put");
    assert_eq!(
        within("same", store.bind_cluster("ca-sha256:aaa"))
            .await
            .expect("bind"),
        ClusterBinding::Same
    );
    assert!(
        store
            .get(&pods("kubelet").object(Some("d"), "a"))
            .expect("get")
            .is_some()
    );
    // Another cluster's cache is never served: it is wiped atomically.
    assert_eq!(
        within("other", store.bind_cluster("ca-sha256:bbb"))
            .await
            .expect("bind"),
        ClusterBinding::Replaced {
            previous: "ca-sha256:aaa".into()
        }
    );
    assert!(
        store
            .get(&pods("kubelet").object(Some("d"), "a"))
            .expect("get")
            .is_none()
    );
    assert!(store.document("/version").expect("doc").is_none());
    assert_eq!(
        store.cluster_identity().expect("id").as_deref(),
        Some("ca-sha256:bbb")
    );
}

#[tokio::test]
async fn replace_scope_touches_exactly_its_scope() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let r = pods("kubelet");
    let on = |node: &'static str| {
        move |m: &ObjectMeta| m.fields.get("spec.nodeName").map(String::as_str) == Some(node)
    };
    let pod = |ns: &str, name: &str, rv, node: &str| {
        obj_with(
            Some(ns),
            name,
            rv,
            &[],
            &[("spec.nodeName", node)],
            "{}".into(),
        )
    };
    within(
        "seed",
        store.replace_scope(
            &r.scope(None, ""),
            |_| true,
            vec![
                pod("a", "a1", 1, "A"),
                pod("a", "a2", 2, "B"),
                pod("b", "b1", 3, "A"),
                pod("b", "b2", 4, "B"),
            ],
            4,
        ),
    )
    .await
    .expect("seed");
    let other = pods("kube-proxy");
    within(
        "other",
        store.put_if_not_older(&other, pod("a", "a1", 1, "A")),
    )
    .await
    .expect("other");

    // Namespace scope: only namespace a changes.
    within(
        "ns a",
        store.replace_scope(
            &r.scope(Some("a"), ""),
            |_| true,
            vec![pod("a", "a3", 5, "A")],
            5,
        ),
    )
    .await
    .expect("replace");
    assert_eq!(names(&store, &r.scope(None, "")), vec!["a3", "b1", "b2"]);

    // Field-selector scope spec.nodeName=A: B's pods stay.
    within(
        "node A",
        store.replace_scope(
            &r.scope(None, "fieldSelector=spec.nodeName=A"),
            on("A"),
            vec![pod("b", "b9", 6, "A")],
            6,
        ),
    )
    .await
    .expect("replace");
    assert_eq!(names(&store, &r.scope(None, "")), vec!["b2", "b9"]);
    assert!(
        store
            .get(&other.object(Some("a"), "a1"))
            .expect("get")
            .is_some(),
        "other component untouched"
    );

    // Items outside a namespace scope are refused and nothing changes.
    let refused = within(
        "outside",
        store.replace_scope(
            &r.scope(Some("a"), ""),
            |_| true,
            vec![pod("b", "x", 7, "A")],
            7,
        ),
    )
    .await;
    assert!(
        matches!(refused, Err(Error::OutsideScope { .. })),
        "{refused:?}"
    );
    assert_eq!(names(&store, &r.scope(None, "")), vec!["b2", "b9"]);
}

#[tokio::test]
async fn paginated_lists_commit_atomically_or_not_at_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let r = pods("kubelet");
    let scope = r.scope(None, "");
    within(
        "seed",
        store.replace_scope(&scope, |_| true, vec![obj(Some("d"), "old", 1)], 1),
    )
    .await
    .expect("seed");

    let mut staging = store.begin_staged(&scope);
    for page in 0..3u64 {
        let items = (0..4u64)
            .map(|i| obj(Some("d"), &format!("p{page}-{i}"), 10 + page * 4 + i))
            .collect();
        within("page", staging.stage_page(items))
            .await
            .expect("stage");
        assert_eq!(
            names(&store, &scope),
            vec!["old"],
            "pages are invisible until committed"
        );
    }
    within("commit", staging.commit(|_| true, 30))
        .await
        .expect("commit");
    let l = store.list(&scope, |_| true).expect("list").expect("listed");
    assert_eq!(l.items.len(), 12);
    assert_eq!(l.marker.expect("marker").resource_version.as_str(), "30");

    // Abort (explicit or by drop) leaves the old state and drops the pages.
    let payload_before = store.stats().payload_bytes;
    let mut aborted = store.begin_staged(&scope);
    within("page", aborted.stage_page(vec![obj(Some("d"), "new", 40)]))
        .await
        .expect("stage");
    aborted.abort();
    let mut dropped = store.begin_staged(&scope);
    within("page", dropped.stage_page(vec![obj(Some("d"), "new2", 41)]))
        .await
        .expect("stage");
    drop(dropped);
    within("flush", store.flush()).await.expect("flush");
    assert_eq!(
        store
            .list(&scope, |_| true)
            .expect("list")
            .expect("listed")
            .items
            .len(),
        12
    );
    assert_eq!(
        store.stats().payload_bytes,
        payload_before,
        "staged pages were discarded"
    );

    // A page that failed makes the list uncommittable.
    let mut broken = store.begin_staged(&r.scope(Some("d"), ""));
    let bad = within("bad page", broken.stage_page(vec![obj(Some("e"), "x", 50)])).await;
    assert!(matches!(bad, Err(Error::OutsideScope { .. })), "{bad:?}");
    let refused = within("commit", broken.commit(|_| true, 51)).await;
    assert!(
        matches!(refused, Err(Error::StagingIncomplete { .. })),
        "{refused:?}"
    );
    assert_eq!(
        store
            .list(&scope, |_| true)
            .expect("list")
            .expect("listed")
            .items
            .len(),
        12
    );
}

fn on_node(node: &'static str) -> impl Fn(&ObjectMeta) -> bool + Send + 'static {
    move |m: &ObjectMeta| m.fields.get("spec.nodeName").map(String::as_str) == Some(node)
}

fn pod_on(i: u64, node: &str, rv: u64, body: String) -> Object {
    obj_with(
        Some(&format!("ns-{}", i % 3)),
        &format!("pod-{i:05}"),
        rv,
        &[],
        &[("spec.nodeName", node)],
        body,
    )
}

/// name -> (resource version, body, stored at), over all namespaces.
fn contents(store: &Store, scope: &ScopeKey) -> BTreeMap<String, (String, Bytes, SystemTime)> {
    store
        .list(scope, |_| true)
        .expect("list")
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .map(|o| {
            let rv = o.object.meta.resource_version.as_str().to_owned();
            (o.object.meta.name, (rv, o.object.body, o.stored_at))
        })
        .collect()
}

/// A staged list much larger than one merge window of the commit, over a
/// scope (node A's pods) that holds objects the list repeats unchanged,
/// changes, drops, and that other objects (node B's) share the key range
/// with: the result is exactly the list plus node B's, unchanged objects
/// are not rewritten (their stored-at stays), and nothing of the staging
/// is left behind (payload equal to a store built directly).
#[tokio::test]
async fn a_large_staged_list_merges_exactly_with_its_scope() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let r = pods("kubelet");
    let all = r.scope(None, "");
    let scope = r.scope(None, "fieldSelector=spec.nodeName=A");
    // i % 5: 0 unchanged, 1 changed, 2 in scope but not listed, 3 out of
    // scope (node B), 4 new. Interleaved, so every window mixes them.
    const N: u64 = 5000;
    let body = |i: u64, what: &str| format!("{{\"i\":{i},\"v\":\"{what}\"}}");
    let seed: Vec<Object> = (0..N)
        .filter(|i| i % 5 != 4)
        .map(|i| {
            let node = if i % 5 == 3 { "B" } else { "A" };
            pod_on(i, node, i + 1, body(i, "old"))
        })
        .collect();
    within("seed", store.replace_scope(&all, |_| true, seed, 5000))
        .await
        .expect("seed");
    let before = contents(&store, &all);
    assert_eq!(before.len() as u64, N / 5 * 4);
    // Stored-at has millisecond resolution: a rewrite must show.
    tokio::time::sleep(Duration::from_millis(20)).await;

    // Some changed objects are large, so the byte bound of a window is
    // crossed too, not only the entry bound.
    let listed = |i: u64| match i % 5 {
        0 => Some(pod_on(i, "A", i + 1, body(i, "old"))),
        1 if i % 1000 == 1 => Some(pod_on(i, "A", i + 10_000, "x".repeat(400_000))),
        1 => Some(pod_on(i, "A", i + 10_000, body(i, "new"))),
        4 => Some(pod_on(i, "A", i + 10_000, body(i, "new"))),
        _ => None,
    };
    let mut items: Vec<Object> = (0..N).filter_map(listed).collect();
    // Pages in no particular key order: the staging sorts them.
    let mut rng = rand::rng();
    for i in (1..items.len()).rev() {
        items.swap(i, rng.random_range(0..=i));
    }
    let mut staged = store.begin_staged(&scope);
    for page in items.chunks(400) {
        within("page", staged.stage_page(page.to_vec()))
            .await
            .expect("stage");
    }
    within("commit", staged.commit(on_node("A"), 20_000))
        .await
        .expect("commit");

    let after = contents(&store, &all);
    let mut expected: Vec<String> = (0..N)
        .filter(|i| i % 5 != 2)
        .map(|i| format!("pod-{i:05}"))
        .collect();
    expected.sort();
    assert_eq!(after.keys().cloned().collect::<Vec<_>>(), expected);
    assert_eq!(store.stats().objects, N / 5 * 4);
    for i in (0..N).filter(|i| i % 5 != 2) {
        let name = format!("pod-{i:05}");
        let (rv, body_now, at) = &after[&name];
        match i % 5 {
            0 | 3 => assert_eq!(
                &after[&name], &before[&name],
                "{name} was unchanged (or out of scope) and must not be rewritten"
            ),
            _ => {
                let want = listed(i).expect("listed");
                assert_eq!(rv, want.meta.resource_version.as_str(), "{name}");
                assert_eq!(body_now, &want.body, "{name}");
                if let Some((_, _, old_at)) = before.get(&name) {
                    assert!(at > old_at, "{name} was changed and rewritten");
                }
            }
        }
    }
    let marker = store
        .list(&scope, on_node("A"))
        .expect("list")
        .expect("listed")
        .marker
        .expect("marker");
    assert_eq!(marker.scope, scope);
    assert_eq!(marker.resource_version.as_str(), "20000");
    assert_eq!(
        store
            .watch_progress(&scope)
            .expect("progress")
            .expect("set")
            .resource_version
            .as_str(),
        "20000"
    );

    // The same final state written directly: same payload, so the
    // staged rows are gone and the accounting followed every write.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let direct = open(dir2.path());
    let node_b: Vec<Object> = (0..N)
        .filter(|i| i % 5 == 3)
        .map(|i| pod_on(i, "B", i + 1, body(i, "old")))
        .collect();
    within("direct", direct.replace_scope(&all, |_| true, node_b, 5000))
        .await
        .expect("direct");
    let node_a: Vec<Object> = (0..N).filter_map(listed).collect();
    within(
        "direct",
        direct.replace_scope(&scope, on_node("A"), node_a, 20_000),
    )
    .await
    .expect("direct");
    assert_eq!(store.stats().payload_bytes, direct.stats().payload_bytes);
}

/// An empty list (no page, or only an empty one) empties its scope and
/// nothing else.
#[tokio::test]
async fn an_empty_staged_list_empties_only_its_scope() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let r = pods("kubelet");
    let all = r.scope(None, "");
    let scope = r.scope(None, "fieldSelector=spec.nodeName=A");
    let seed: Vec<Object> = (0..600)
        .map(|i| pod_on(i, if i % 2 == 0 { "A" } else { "B" }, i + 1, "{}".into()))
        .collect();
    within("seed", store.replace_scope(&all, |_| true, seed, 600))
        .await
        .expect("seed");

    let staged = store.begin_staged(&scope);
    within("commit", staged.commit(on_node("A"), 700))
        .await
        .expect("commit");
    let left = names(&store, &all);
    assert_eq!(left.len(), 300);
    let expected: Vec<String> = (0..600)
        .filter(|i| i % 2 == 1)
        .map(|i| format!("pod-{i:05}"))
        .collect();
    assert_eq!(left, expected);
    let l = store
        .list(&scope, on_node("A"))
        .expect("list")
        .expect("listed");
    assert!(l.items.is_empty());
    assert_eq!(l.marker.expect("marker").resource_version.as_str(), "700");

    // An empty page, over a scope that is empty already.
    let payload = store.stats().payload_bytes;
    let mut staged = store.begin_staged(&scope);
    within("page", staged.stage_page(Vec::new()))
        .await
        .expect("stage");
    within("commit", staged.commit(on_node("A"), 800))
        .await
        .expect("commit");
    assert_eq!(names(&store, &all), expected);
    let l = store
        .list(&scope, on_node("A"))
        .expect("list")
        .expect("listed");
    assert_eq!(l.marker.expect("marker").resource_version.as_str(), "800");
    assert_eq!(store.stats().payload_bytes, payload);
}

/// Near the size cap, a commit is measured as if its own staged pages were
/// already gone (they are, once it commits): it evicts nothing that the
/// final state does not need to lose.
#[tokio::test]
async fn a_staged_commit_near_the_cap_counts_its_pages_as_freed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_with(
        dir.path(),
        Options {
            max_bytes: Some(1_050_000),
            ..Options::default()
        },
    );
    let ev = events("kubelet");
    for i in 0..20 {
        let e = obj_with(
            Some("d"),
            &format!("event-{i:03}"),
            i + 1,
            &[],
            &[],
            "e".repeat(4000),
        );
        within("event", store.put_if_not_older(&ev, e))
            .await
            .expect("event");
    }
    let r = pods("kubelet");
    let scope = r.scope(None, "");
    let seed: Vec<Object> = (0..100)
        .map(|i| pod_on(i, "A", 1, "o".repeat(4000)))
        .collect();
    within("seed", store.replace_scope(&scope, |_| true, seed, 1))
        .await
        .expect("seed");
    // Old pods, events and the staged pages fit under the cap; adding the
    // list's growth to all three would not.
    let mut staged = store.begin_staged(&scope);
    let items: Vec<Object> = (0..100)
        .map(|i| pod_on(i, "A", 2, "n".repeat(5000)))
        .collect();
    within("page", staged.stage_page(items))
        .await
        .expect("stage");
    within("commit", staged.commit(|_| true, 2))
        .await
        .expect("commit");
    let stats = store.stats();
    assert_eq!(stats.evicted_events, 0, "{stats:?}");
    assert_eq!(names(&store, &ev.scope(None, "")).len(), 20);
    let l = store.list(&scope, |_| true).expect("list").expect("listed");
    assert_eq!(l.items.len(), 100);
    assert!(l.items.iter().all(|o| o.object.body.len() == 5000));
}

/// A staged commit whose predicate panics changes nothing, drops its
/// pages and fails only itself.
#[tokio::test]
async fn a_staged_commit_with_a_panicking_predicate_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let r = pods("kubelet");
    let scope = r.scope(None, "");
    let seed: Vec<Object> = (0..300)
        .map(|i| pod_on(i, "A", i + 1, "{}".into()))
        .collect();
    within("seed", store.replace_scope(&scope, |_| true, seed, 300))
        .await
        .expect("seed");
    let before = contents(&store, &scope);
    let payload = store.stats().payload_bytes;

    let mut staged = store.begin_staged(&scope);
    let items: Vec<Object> = (150..900)
        .map(|i| pod_on(i, "A", i + 1000, "{\"new\":1}".into()))
        .collect();
    within("page", staged.stage_page(items))
        .await
        .expect("stage");
    let bad = within("commit", staged.commit(|_| panic!("caller bug"), 2000)).await;
    assert!(
        matches!(bad, Err(Error::PredicatePanicked { .. })),
        "{bad:?}"
    );
    assert_eq!(contents(&store, &scope), before, "nothing applied");
    assert_eq!(
        store.stats().payload_bytes,
        payload,
        "the pages are dropped"
    );
    assert_eq!(store.stats().reopens, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_do_not_wait_for_a_write_in_progress() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let r = pods("kubelet");
    let scope = r.scope(None, "");
    within(
        "seed",
        store.replace_scope(&scope, |_| true, vec![obj(Some("d"), "old", 1)], 1),
    )
    .await
    .expect("seed");

    // The predicate runs inside the writer's transaction: hold it there.
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let gate = std::sync::Mutex::new(Some((entered_tx, release_rx)));
    let held = move |_: &ObjectMeta| {
        if let Some((entered, release)) = gate.lock().expect("gate").take() {
            entered.send(()).expect("signal entered");
            release
                .recv_timeout(Duration::from_secs(30))
                .expect("released by the test");
        }
        true
    };
    let writer = {
        let store = store.clone();
        let scope = scope.clone();
        tokio::spawn(async move {
            store
                .replace_scope(&scope, held, vec![obj(Some("d"), "new", 2)], 2)
                .await
        })
    };
    entered_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the writer entered its transaction");
    // The write transaction is open and blocked: reads still answer, from
    // the last committed state.
    assert_eq!(names(&store, &scope), vec!["old"]);
    assert!(
        store
            .get(&r.object(Some("d"), "old"))
            .expect("get")
            .is_some()
    );
    assert_eq!(store.stats().objects, 1);
    release_tx.send(()).expect("release");
    within("replace", writer)
        .await
        .expect("task")
        .expect("replace");
    assert_eq!(names(&store, &scope), vec!["new"]);
}

#[tokio::test]
async fn a_panicking_predicate_refuses_only_its_own_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let r = pods("kubelet");
    let scope = r.scope(None, "");
    within(
        "seed",
        store.replace_scope(&scope, |_| true, vec![obj(Some("d"), "a", 1)], 1),
    )
    .await
    .expect("seed");
    let bad = within(
        "bad",
        store.replace_scope(
            &scope,
            |_| panic!("caller bug"),
            vec![obj(Some("d"), "b", 2)],
            2,
        ),
    )
    .await;
    assert!(
        matches!(bad, Err(Error::PredicatePanicked { .. })),
        "{bad:?}"
    );
    assert_eq!(
        names(&store, &scope),
        vec!["a"],
        "nothing of the refused replace applied"
    );
    within("after", store.put_if_not_older(&r, obj(Some("d"), "c", 3)))
        .await
        .expect("store keeps working");
    assert_eq!(
        store.stats().reopens,
        0,
        "a caller bug is not treated as damage"
    );
}

#[tokio::test]
async fn a_second_open_of_the_same_store_is_refused_not_moved_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let second = Store::open(dir.path(), Options::default());
    assert!(
        matches!(second, Err(Error::Locked { .. })),
        "{:?}",
        second.err()
    );
    assert!(store.stats().corrupted_recovered == 0);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "nothing moved aside: {leftovers:?}");
}

// === crash safety ===

struct Writer {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Writer {
    fn spawn(dir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_store-crash-writer"))
            .arg("write")
            .arg(dir)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn store-crash-writer");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    fn wait_ready(&self) -> String {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(30))
            .expect("writer reports ready");
        assert!(line.starts_with("ready "), "unexpected first line {line:?}");
        line
    }

    /// SIGKILL, then every line it printed before dying.
    fn kill(mut self) -> Vec<String> {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
        let mut out = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            out.push(line);
        }
        out
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn last_acked(lines: &[String], prefix: &str) -> u64 {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|v| v.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

fn json_u64(body: &[u8], field: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(body).expect("writer bodies are JSON");
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("field {field} in {v}"))
}

/// Checks one reopened store against the writer's protocol (see the
/// binary's docs) and returns (list generation, staged generation, watch progress).
fn check_crash_invariants(store: &Store, lines: &[String], round: usize) -> (u64, u64, u64) {
    let lists = ResourceKey::new("crash-lists", Space::Full, Gvr::new("", "v1", "configmaps"));
    let staged = ResourceKey::new(
        "crash-staged",
        Space::Full,
        Gvr::new("", "v1", "configmaps"),
    );
    let watch = ResourceKey::new("crash-watch", Space::Full, Gvr::new("", "v1", "pods"));

    // Lists: exactly one generation, complete, matching its marker.
    let g = match store
        .list(&lists.scope(Some("gen"), ""), |_| true)
        .expect("list")
    {
        None => 0,
        Some(l) => {
            let marker = l
                .marker
                .expect("a listed scope has a marker")
                .resource_version
                .parsed()
                .expect("u64");
            let gens: std::collections::BTreeSet<u64> = l
                .items
                .iter()
                .map(|o| json_u64(&o.object.body, "gen"))
                .collect();
            assert_eq!(
                gens.len(),
                1,
                "round {round}: lists scope mixes generations {gens:?}"
            );
            assert_eq!(
                gens.into_iter().next(),
                Some(marker),
                "round {round}: marker differs from items"
            );
            assert_eq!(
                l.items.len() as u64,
                3 + marker % 11,
                "round {round}: generation {marker} is incomplete"
            );
            for o in &l.items {
                assert_eq!(
                    json_u64(&o.object.body, "n"),
                    3 + marker % 11,
                    "round {round}: torn object"
                );
                assert_eq!(o.object.meta.labels.get("gen"), Some(&marker.to_string()));
            }
            marker
        }
    };
    assert!(
        g >= last_acked(lines, "list "),
        "round {round}: acknowledged list generation lost"
    );
    assert!(
        store
            .get(&lists.object(Some("other"), "bystander"))
            .expect("get")
            .is_some(),
        "round {round}: a namespace-scoped replace removed an object of another namespace"
    );

    // Staged lists: all three pages of one generation or the previous state.
    let c = match store
        .list(&staged.scope(Some("pages"), ""), |_| true)
        .expect("list")
    {
        None => 0,
        Some(l) => {
            let marker = l
                .marker
                .expect("marker")
                .resource_version
                .parsed()
                .expect("u64");
            assert_ne!(
                marker % 5,
                0,
                "round {round}: an aborted staging was committed"
            );
            let gens: std::collections::BTreeSet<u64> = l
                .items
                .iter()
                .map(|o| json_u64(&o.object.body, "gen"))
                .collect();
            assert_eq!(
                gens.into_iter().collect::<Vec<_>>(),
                vec![marker],
                "round {round}: staged scope mixes pages"
            );
            assert_eq!(
                l.items.len() as u64,
                3 * (2 + marker % 4),
                "round {round}: staged generation {marker} incomplete"
            );
            marker
        }
    };
    assert!(
        c >= last_acked(lines, "staged "),
        "round {round}: acknowledged staged list lost"
    );

    // Watch: the objects are exactly the replay of events 1..=progress.
    let p = store
        .watch_progress(&watch.scope(None, ""))
        .expect("progress")
        .and_then(|p| p.resource_version.parsed())
        .unwrap_or(0);
    assert!(
        p >= last_acked(lines, "watch "),
        "round {round}: acknowledged watch event lost (progress {p})"
    );
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for s in 1..=p {
        if s % 100 == 0 {
            continue;
        }
        let name = format!("pod-{}", s % 40);
        if s % 7 == 0 {
            expected.remove(&name);
        } else {
            expected.insert(name, s);
        }
    }
    let actual: BTreeMap<String, u64> = store
        .list(&watch.scope(None, ""), |_| true)
        .expect("list")
        .map(|l| {
            l.items
                .into_iter()
                .map(|o| {
                    let seq = json_u64(&o.object.body, "seq");
                    assert_eq!(
                        o.object.meta.resource_version.parsed(),
                        Some(seq),
                        "round {round}: torn watch object"
                    );
                    (o.object.meta.name, seq)
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        actual, expected,
        "round {round}: watch objects disagree with progress {p}"
    );
    assert_eq!(
        store.stats().corrupted_recovered,
        0,
        "round {round}: kill -9 must never corrupt the file"
    );
    (g, c, p)
}

#[test]
fn kill_9_at_random_instants_leaves_a_committed_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = rand::rng();
    let mut last = (0, 0, 0);
    for round in 0..10 {
        let writer = Writer::spawn(dir.path());
        writer.wait_ready();
        std::thread::sleep(Duration::from_millis(rng.random_range(20..500)));
        let lines = writer.kill();
        let opened = Store::open(dir.path(), Options::default()).expect("reopen after SIGKILL");
        assert!(
            opened.recovery.is_none(),
            "round {round}: store moved aside after kill -9: {:?}",
            opened.recovery
        );
        let now = check_crash_invariants(&opened.store, &lines, round);
        assert!(
            now.0 >= last.0 && now.1 >= last.1 && now.2 >= last.2,
            "round {round}: state went backwards: {last:?} -> {now:?}"
        );
        println!(
            "round {round}: lists gen {} staged gen {} watch progress {} ({} acks)",
            now.0,
            now.1,
            now.2,
            lines.len()
        );
        last = now;
    }
    assert!(
        last.0 > 0 && last.1 > 0 && last.2 > 0,
        "the writer made no progress at all: {last:?}"
    );
}

// === corruption ===

async fn seeded(dir: &Path) {
    let store = open(dir);
    let items = (0..50)
        .map(|i| {
            obj_with(
                Some("d"),
                &format!("p{i}"),
                i + 1,
                &[],
                &[],
                "x".repeat(3000),
            )
        })
        .collect();
    within(
        "seed",
        store.replace_scope(&pods("kubelet").scope(None, ""), |_| true, items, 50),
    )
    .await
    .expect("seed");
}

fn store_file(dir: &Path) -> PathBuf {
    dir.join("cache.redb")
}

async fn assert_recovers_from(dir: &Path, what: &str) {
    let opened = Store::open(dir, Options::default())
        .unwrap_or_else(|e| panic!("{what}: open must not fail: {e}"));
    let recovery = opened
        .recovery
        .unwrap_or_else(|| panic!("{what}: recovery not reported"));
    assert!(
        recovery.moved_aside_to.exists(),
        "{what}: moved-aside file missing"
    );
    assert!(
        recovery
            .moved_aside_to
            .file_name()
            .expect("name")
            .to_string_lossy()
            .starts_with("cache.redb.corrupt-"),
        "{what}: {}",
        recovery.moved_aside_to.display()
    );
    println!("{what}: {}", recovery.reason);
    let store = opened.store;
    assert_eq!(store.stats().corrupted_recovered, 1);
    assert_eq!(store.stats().objects, 0, "{what}: starts empty");
    within(
        "write after recovery",
        store.put_if_not_older(&pods("kubelet"), obj(Some("d"), "a", 1)),
    )
    .await
    .expect("writable");
    drop(store);
    let again = Store::open(dir, Options::default()).expect("reopen");
    assert!(
        again.recovery.is_none(),
        "{what}: the fresh file is healthy"
    );
    assert_eq!(again.store.stats().objects, 1);
}

#[tokio::test]
async fn a_garbage_file_is_moved_aside_and_the_store_starts_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    seeded(dir.path()).await;
    let len = std::fs::metadata(store_file(dir.path()))
        .expect("file")
        .len() as usize;
    let mut rng = rand::rng();
    let garbage: Vec<u8> = (0..len).map(|_| rng.random()).collect();
    std::fs::write(store_file(dir.path()), garbage).expect("overwrite");
    assert_recovers_from(dir.path(), "garbage").await;
}

#[tokio::test]
async fn damaged_pages_are_detected_by_checksums() {
    let dir = tempfile::tempdir().expect("tempdir");
    seeded(dir.path()).await;
    let path = store_file(dir.path());
    let len = std::fs::metadata(&path).expect("file").len();
    // Scribble over the data region (past the header) where the objects live.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    use std::io::{Seek, SeekFrom};
    for off in [len / 4, len / 2, 3 * len / 4] {
        f.seek(SeekFrom::Start(off)).expect("seek");
        f.write_all(&[0xA5; 16 * 1024]).expect("scribble");
    }
    drop(f);
    assert_recovers_from(dir.path(), "scribbled").await;
}

#[tokio::test]
async fn a_truncated_file_is_moved_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    seeded(dir.path()).await;
    let path = store_file(dir.path());
    let len = std::fs::metadata(&path).expect("file").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open")
        .set_len(len / 3)
        .expect("truncate");
    assert_recovers_from(dir.path(), "truncated").await;
}

#[tokio::test]
async fn only_the_newest_corrupt_files_are_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    for round in 0..4 {
        std::fs::write(store_file(dir.path()), format!("not a database {round}")).expect("write");
        let opened = Store::open(
            dir.path(),
            Options {
                keep_corrupt_files: 2,
                ..Options::default()
            },
        )
        .expect("open");
        assert!(opened.recovery.is_some());
    }
    let aside = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .count();
    assert_eq!(aside, 2, "older corrupt files are pruned");
}

// === full disk (privileged) ===

/// A tmpfs mounted on a directory of a temp dir, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "the full-disk test mounts a tmpfs and must run as root"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0700").as_str()),
        )
        .expect("mount tmpfs");
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the filesystem until at most `leave` bytes remain available.
    fn fill(&self, name: &str, leave: u64) -> PathBuf {
        let path = self.path().join(name);
        let mut f = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0x5au8; 4096];
        loop {
            let s = nix::sys::statvfs::statvfs(self.path()).expect("statvfs");
            let avail = s.blocks_available() * s.fragment_size();
            if avail <= leave {
                break;
            }
            let n = ((avail - leave) as usize).min(chunk.len());
            if f.write_all(&chunk[..n.max(1)]).is_err() {
                break;
            }
        }
        let _ = f.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH)
            && !std::thread::panicking()
        {
            panic!(
                "cannot unmount test tmpfs {}: {e}",
                self.dir.path().display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_cleanly_and_recovers() {
    let fs = Tmpfs::mount("24m");
    let store_dir = fs.path().join("cache");
    let store = open_with(
        &store_dir,
        Options {
            disk_reserve: Some(1 << 20),
            max_bytes: None,
            ..Options::default()
        },
    );
    let r = pods("kubelet");
    let body = "y".repeat(4000);
    for i in 0..20 {
        within(
            "seed",
            store.put_if_not_older(
                &r,
                obj_with(Some("d"), &format!("p{i}"), 1, &[], &[], body.clone()),
            ),
        )
        .await
        .expect("seed");
    }
    // Leave less than the reserve plus a batch's slack.
    let filler = fs.fill("filler", 1 << 20);
    let refused = within(
        "put on full disk",
        store.put_if_not_older(&r, obj_with(Some("d"), "new", 1, &[], &[], body.clone())),
    )
    .await;
    assert!(
        matches!(refused, Err(Error::DiskFull { .. })),
        "{refused:?}"
    );
    let list = within(
        "replace on full disk",
        store.replace_scope(&r.scope(None, ""), |_| true, vec![], 2),
    )
    .await;
    assert!(
        list.is_ok(),
        "an empty replace only removes and may use the reserve: {list:?}"
    );
    // ...which removed everything; seed again after freeing some space for the next part.
    std::fs::remove_file(&filler).expect("free");
    for i in 0..20 {
        within(
            "reseed",
            store.put_if_not_older(
                &r,
                obj_with(Some("d"), &format!("p{i}"), 3, &[], &[], body.clone()),
            ),
        )
        .await
        .expect("reseed");
    }
    let filler = fs.fill("filler", 1 << 20);
    let refused = within(
        "put on full disk",
        store.put_if_not_older(&r, obj_with(Some("d"), "new", 1, &[], &[], body.clone())),
    )
    .await;
    assert!(
        refused.as_ref().is_err_and(Error::is_disk_full),
        "{refused:?}"
    );
    let stats = store.stats();
    assert!(stats.disk_full, "disk_full reported");
    assert!(
        stats
            .last_write_error
            .as_deref()
            .is_some_and(|e| e.contains("disk full")),
        "{stats:?}"
    );
    assert!(
        store
            .get(&r.object(Some("d"), "new"))
            .expect("get")
            .is_none(),
        "no partial state"
    );
    assert_eq!(
        names(&store, &r.scope(None, "")).len(),
        20,
        "reads are still served"
    );
    assert!(
        within(
            "delete on full disk",
            store.delete(&r.object(Some("d"), "p0"))
        )
        .await
        .expect("removals still work")
    );

    std::fs::remove_file(&filler).expect("free");
    within(
        "put after space returns",
        store.put_if_not_older(&r, obj_with(Some("d"), "new", 1, &[], &[], body.clone())),
    )
    .await
    .expect("recovered");
    assert!(!store.stats().disk_full, "disk_full clears");
    drop(store);
    drop(fs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_inside_the_engine_keeps_the_last_durable_state_and_recovers() {
    let fs = Tmpfs::mount("12m");
    let store_dir = fs.path().join("cache");
    // No free-space preflight: the engine itself runs into ENOSPC.
    let store = open_with(
        &store_dir,
        Options {
            disk_reserve: None,
            max_bytes: None,
            ..Options::default()
        },
    );
    let r = pods("kubelet");
    let big = |i: u64| {
        obj_with(
            Some("d"),
            &format!("p{i}"),
            i,
            &[],
            &[],
            "z".repeat(64 * 1024),
        )
    };
    let mut stored = 0u64;
    let mut failure = None;
    for i in 1..=400u64 {
        match within("fill", store.put_if_not_older(&r, big(i))).await {
            Ok(_) => stored = i,
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let failure = failure.expect("12 MiB cannot hold 400 x 64 KiB objects");
    assert!(
        failure.is_disk_full(),
        "typed disk-full error, got {failure}"
    );
    assert!(
        stored > 10,
        "some objects fit before the disk filled ({stored})"
    );
    assert!(store.stats().disk_full);
    // The store reopened the file and serves what was committed.
    let l = store
        .list(&r.scope(None, ""), |_| true)
        .expect("reads after ENOSPC")
        .expect("some");
    assert_eq!(
        l.items.len() as u64,
        stored,
        "exactly the committed objects"
    );
    assert!(
        store
            .get(&r.object(Some("d"), format!("p{}", stored + 1)))
            .expect("get")
            .is_none(),
        "no partial state"
    );

    // Free space by deleting cached objects (GC), then write again.
    let keys: Vec<_> = store.keys(&r).expect("keys").into_iter().take(20).collect();
    let mut freed = None;
    for _ in 0..20 {
        match within("gc", store.delete_many(keys.clone())).await {
            Ok(n) => {
                freed = Some(n);
                break;
            }
            Err(e) => {
                println!("delete on a full disk: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert_eq!(
        freed,
        Some(20),
        "removals eventually succeed on a full disk"
    );
    within(
        "write after gc",
        store.put_if_not_older(&r, obj(Some("d"), "small", 1)),
    )
    .await
    .expect("writes resume");
    assert!(!store.stats().disk_full);
    println!(
        "enospc: {stored} objects fit, reopens {}",
        store.stats().reopens
    );
    drop(store);
    drop(fs);
}

// === size cap ===

#[tokio::test]
async fn the_size_cap_evicts_oldest_events_first_then_refuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cap = 200_000;
    let store = open_with(
        dir.path(),
        Options {
            max_bytes: Some(cap),
            ..Options::default()
        },
    );
    let ev = events("kubelet");
    let r = pods("kubelet");
    let body = "e".repeat(4000);
    for i in 0..30 {
        within(
            "event",
            store.put_if_not_older(
                &ev,
                obj_with(
                    Some("d"),
                    &format!("event-{i:03}"),
                    i + 1,
                    &[],
                    &[],
                    body.clone(),
                ),
            ),
        )
        .await
        .expect("event");
    }
    for i in 0..15 {
        within(
            "pod",
            store.put_if_not_older(
                &r,
                obj_with(Some("d"), &format!("pod-{i:03}"), 1, &[], &[], body.clone()),
            ),
        )
        .await
        .expect("pod");
    }
    assert_eq!(store.stats().evicted_events, 0);
    for i in 15..25 {
        within(
            "pod",
            store.put_if_not_older(
                &r,
                obj_with(Some("d"), &format!("pod-{i:03}"), 1, &[], &[], body.clone()),
            ),
        )
        .await
        .expect("pod over cap");
    }
    let stats = store.stats();
    assert!(stats.evicted_events > 0, "events were evicted: {stats:?}");
    assert!(
        stats.payload_bytes <= cap,
        "payload {} within cap",
        stats.payload_bytes
    );
    let left = names(&store, &ev.scope(None, ""));
    assert_eq!(left.len() as u64, 30 - stats.evicted_events);
    assert_eq!(
        left.first().map(String::as_str),
        Some(format!("event-{:03}", stats.evicted_events).as_str()),
        "oldest went first: {left:?}"
    );
    assert_eq!(
        names(&store, &r.scope(None, "")).len(),
        25,
        "no pod was evicted"
    );

    // Keep adding pods until the events are gone and the cap refuses.
    let mut refused = None;
    for i in 25..100 {
        if let Err(e) = within(
            "pod",
            store.put_if_not_older(
                &r,
                obj_with(Some("d"), &format!("pod-{i:03}"), 1, &[], &[], body.clone()),
            ),
        )
        .await
        {
            refused = Some((i, e));
            break;
        }
    }
    let (i, e) = refused.expect("the cap refuses eventually");
    assert!(matches!(e, Error::CapacityExceeded { .. }), "{e}");
    assert!(
        store
            .get(&r.object(Some("d"), format!("pod-{i:03}")))
            .expect("get")
            .is_none(),
        "refused write left nothing"
    );
    assert!(
        names(&store, &ev.scope(None, "")).is_empty(),
        "events go before anything is refused"
    );
    let stats = store.stats();
    assert_eq!(stats.capacity_refusals, 1);
    assert!(stats.payload_bytes <= cap);
    // Writes that do not grow the store still go through at the cap.
    within(
        "same size",
        store.put_if_not_older(
            &r,
            obj_with(Some("d"), "pod-000", 2, &[], &[], body.clone()),
        ),
    )
    .await
    .expect("same-size update");
    assert!(
        within("delete", store.delete(&r.object(Some("d"), "pod-001")))
            .await
            .expect("delete")
    );
    within(
        "fits again",
        store.put_if_not_older(
            &r,
            obj_with(Some("d"), &format!("pod-{i:03}"), 1, &[], &[], body.clone()),
        ),
    )
    .await
    .expect("fits after a delete");
}

#[tokio::test]
async fn a_lost_watch_event_withdraws_the_scope_progress_until_a_relist() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_with(
        dir.path(),
        Options {
            max_bytes: Some(64 * 1024),
            ..Options::default()
        },
    );
    let r = pods("kubelet");
    let scope = r.scope(None, "");
    let ev = |name: &str, rv, size| {
        WatchEvent::Modified(obj_with(Some("d"), name, rv, &[], &[], "w".repeat(size)))
    };
    within("e1", store.apply_watch_event(&scope, ev("a", 10, 100)))
        .await
        .expect("small event");
    assert_eq!(
        store
            .watch_progress(&scope)
            .expect("p")
            .expect("set")
            .resource_version
            .as_str(),
        "10"
    );

    // Event 11 cannot be cached (over the cap, no events to evict).
    let lost = within(
        "e2",
        store.apply_watch_event(&scope, ev("b", 11, 100 * 1024)),
    )
    .await;
    assert!(
        matches!(lost, Err(Error::CapacityExceeded { .. })),
        "{lost:?}"
    );
    assert!(
        store.watch_progress(&scope).expect("p").is_none(),
        "progress withdrawn: resuming at 10 or later would skip event 11"
    );
    assert_eq!(store.stats().stale_watch_scopes, 1);

    // Later events are still cached, but cannot move the progress past the hole.
    within("e3", store.apply_watch_event(&scope, ev("a", 12, 100)))
        .await
        .expect("later event");
    assert_eq!(rv_of(&store, &r, Some("d"), "a").as_deref(), Some("12"));
    assert!(store.watch_progress(&scope).expect("p").is_none());
    // Another scope is unaffected.
    let other = r.scope(Some("x"), "");
    within(
        "other",
        store.apply_watch_event(&other, WatchEvent::Bookmark("5".into())),
    )
    .await
    .expect("other scope");
    assert!(store.watch_progress(&other).expect("p").is_some());

    // A relist closes the hole.
    within(
        "relist",
        store.replace_scope(&scope, |_| true, vec![obj(Some("d"), "a", 13)], 13),
    )
    .await
    .expect("relist");
    assert_eq!(store.stats().stale_watch_scopes, 0);
    within("e4", store.apply_watch_event(&scope, ev("a", 14, 100)))
        .await
        .expect("event after relist");
    assert_eq!(
        store
            .watch_progress(&scope)
            .expect("p")
            .expect("set")
            .resource_version
            .as_str(),
        "14"
    );
}

// === OpenYurt import ===

fn write_file(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, content).expect("write");
}

fn pod_json(ns: &str, name: &str, rv: u64, node: &str) -> String {
    serde_json::json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": rv.to_string(), "labels": {"app": "web"}},
        "spec": {"nodeName": node}
    })
    .to_string()
}

#[tokio::test]
async fn an_openyurt_disk_cache_is_imported() {
    let src = tempfile::tempdir().expect("tempdir");
    let base = src.path();
    write_file(
        &base.join("kubelet/pods.v1.core/default/web-0"),
        &pod_json("default", "web-0", 100, "n1"),
    );
    write_file(
        &base.join("kubelet/pods.v1.core/default/web-1"),
        &pod_json("default", "web-1", 101, "n1"),
    );
    // An interrupted update: only tmp_ survives, and it is restored.
    write_file(
        &base.join("kubelet/pods.v1.core/kube-system/tmp_dns"),
        &pod_json("kube-system", "dns", 90, "n1"),
    );
    // An interrupted update where the new file is complete: it wins.
    write_file(
        &base.join("kubelet/pods.v1.core/kube-system/proxy"),
        &pod_json("kube-system", "proxy", 95, "n1"),
    );
    write_file(
        &base.join("kubelet/pods.v1.core/kube-system/tmp_proxy"),
        &pod_json("kube-system", "proxy", 80, "n1"),
    );
    // A truncated write without a tmp_ sibling is skipped.
    write_file(
        &base.join("kubelet/pods.v1.core/default/broken"),
        "{\"kind\":\"Pod\",\"metad",
    );
    write_file(&base.join("kubelet/nodes.v1.core/n1"), &serde_json::json!({"kind": "Node", "apiVersion": "v1", "metadata": {"name": "n1", "resourceVersion": "77"}}).to_string());
    // An empty directory: listed, nothing in it.
    std::fs::create_dir_all(base.join("kubelet/services.v1.core")).expect("mkdir");
    // An interrupted list replace: tmp_ directory replaces the partial one.
    write_file(
        &base.join("kube-proxy/endpointslices.v1.discovery.k8s.io/default/partial"),
        "{}",
    );
    write_file(
        &base.join("kube-proxy/tmp_endpointslices.v1.discovery.k8s.io/default/kubernetes"),
        &serde_json::json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1", "metadata": {"name": "kubernetes", "namespace": "default", "resourceVersion": "5"}}).to_string(),
    );
    write_file(
        &base.join("cilium/partialobjectmetadatas.v1.meta.k8s.io/ciliumnetworkpolicies.v2.cilium.io/default/p"),
        &serde_json::json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": {"name": "p", "namespace": "default", "resourceVersion": "9"}}).to_string(),
    );
    // Legacy layout: group/version from apiVersion.
    write_file(
        &base.join("coredns/configmaps/kube-system/coredns"),
        &serde_json::json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "coredns", "namespace": "kube-system", "resourceVersion": "12"}}).to_string(),
    );
    write_file(
        &base.join("_internal/restmapper/cache-crd-restmapper.conf"),
        "{\"example.com/v1/widgets\":\"Widget\",\"example.com/v1/widget\":\"Widget\"}",
    );
    write_file(&base.join("version"), "{\"gitVersion\":\"v1.30.1\"}");
    write_file(
        &base.join("_apis_discovery.k8s.io_v1"),
        "{\"kind\":\"APIResourceList\"}",
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let report = within("import", import_openyurt(base, &store))
        .await
        .expect("import");
    println!("{report:#?}");
    assert_eq!(
        report.objects, 8,
        "web-0, web-1, dns, proxy, n1, kubernetes, p, coredns"
    );
    assert_eq!(report.documents, 2);
    assert_eq!(report.kinds, 2);
    assert_eq!(report.components.len(), 4);
    assert_eq!(
        report.restored_from_tmp.len(),
        2,
        "{:?}",
        report.restored_from_tmp
    );
    assert!(
        report
            .skipped
            .iter()
            .any(|s| s.path.ends_with("default/broken")),
        "{:?}",
        report.skipped
    );
    assert!(report.skipped.iter().any(|s| s.path.ends_with("tmp_proxy")));

    let kubelet = pods("kubelet");
    assert_eq!(
        rv_of(&store, &kubelet, Some("kube-system"), "dns").as_deref(),
        Some("90")
    );
    assert_eq!(
        rv_of(&store, &kubelet, Some("kube-system"), "proxy").as_deref(),
        Some("95")
    );
    let on_n1 = store
        .list(
            &kubelet.scope(None, "fieldSelector=spec.nodeName=n1"),
            |m| m.fields.get("spec.nodeName").map(String::as_str) == Some("n1"),
        )
        .expect("list")
        .expect("imported lists are listed");
    assert_eq!(on_n1.items.len(), 4);
    let marker = on_n1.marker.expect("marker");
    assert!(marker.imported);
    assert_eq!(marker.resource_version.as_str(), "101");
    let web0 = store
        .get(&kubelet.object(Some("default"), "web-0"))
        .expect("get")
        .expect("present");
    assert_eq!(
        web0.object.body,
        Bytes::from(pod_json("default", "web-0", 100, "n1")),
        "bytes kept as they were"
    );
    assert_eq!(
        web0.object.meta.labels.get("app").map(String::as_str),
        Some("web")
    );

    let services = ResourceKey::new("kubelet", Space::Full, Gvr::new("", "v1", "services"));
    let empty = store
        .list(&services.scope(None, ""), |_| true)
        .expect("list")
        .expect("empty dir = listed");
    assert!(empty.items.is_empty());
    let nodes = ResourceKey::new("kubelet", Space::Full, Gvr::new("", "v1", "nodes"));
    assert!(store.get(&nodes.object(None, "n1")).expect("get").is_some());
    let eps = ResourceKey::new(
        "kube-proxy",
        Space::Full,
        Gvr::new("discovery.k8s.io", "v1", "endpointslices"),
    );
    assert_eq!(
        names(&store, &eps.scope(None, "")),
        vec!["kubernetes"],
        "tmp_ directory replaced the partial one"
    );
    let meta = ResourceKey::new(
        "cilium",
        Space::PartialObjectMetadata,
        Gvr::new("cilium.io", "v2", "ciliumnetworkpolicies"),
    );
    assert!(
        store
            .get(&meta.object(Some("default"), "p"))
            .expect("get")
            .is_some()
    );
    let legacy = ResourceKey::new("coredns", Space::Full, Gvr::new("", "v1", "configmaps"));
    assert!(
        store
            .get(&legacy.object(Some("kube-system"), "coredns"))
            .expect("get")
            .is_some()
    );
    assert_eq!(
        store
            .kind_for(&Gvr::new("example.com", "v1", "widgets"))
            .expect("kind")
            .as_deref(),
        Some("Widget")
    );
    assert_eq!(
        store.document("/version").expect("doc").expect("doc").body,
        Bytes::from_static(b"{\"gitVersion\":\"v1.30.1\"}")
    );
    assert!(
        store
            .document("/apis/discovery.k8s.io/v1")
            .expect("doc")
            .is_some()
    );

    // Importing again changes nothing (same RVs are re-applied, markers kept).
    let again = within("reimport", import_openyurt(base, &store))
        .await
        .expect("import");
    assert_eq!(again.markers, 0);
    assert_eq!(store.stats().objects, 8);
    assert!(
        base.join("kubelet/pods.v1.core/kube-system/tmp_dns")
            .exists(),
        "the source tree is left alone"
    );
}

// === group commit and figures ===

fn pod_body(i: u64, size: usize) -> String {
    format!(
        "{{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"metadata\":{{\"name\":\"pod-{i}\"}},\"pad\":\"{}\"}}",
        "p".repeat(size)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_commits_and_throughput_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_with(
        dir.path(),
        Options {
            max_bytes: None,
            ..Options::default()
        },
    );

    // Many callers each awaiting every write: one fsync serves many of them.
    let writers = 16u64;
    // Each awaits its watch event, so each round waits out the stream
    // writes' commit spacing: 200 rounds are enough to show the sharing.
    let per_writer = 200u64;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let scope = pods(&format!("component-{w}")).scope(None, "");
            for s in 1..=per_writer {
                let o = obj_with(
                    Some("d"),
                    &format!("pod-{}", s % 50),
                    s,
                    &[],
                    &[],
                    pod_body(s, 1000),
                );
                store
                    .apply_watch_event(&scope, WatchEvent::Modified(o))
                    .await
                    .expect("event");
            }
        }));
    }
    for t in tasks {
        within("writer task", t).await.expect("task");
    }
    let elapsed = start.elapsed();
    let stats = store.stats();
    let total = writers * per_writer;
    println!(
        "group commit: {total} awaited events from {writers} tasks in {elapsed:?} = {:.0} events/s, {} commits ({:.1} events/commit)",
        total as f64 / elapsed.as_secs_f64(),
        stats.commits,
        total as f64 / stats.commits as f64
    );
    assert!(
        stats.commits * 4 <= total,
        "expected far fewer commits than writes: {} commits for {total}",
        stats.commits
    );

    // One watch stream bursting events fire-and-forget, in order, with
    // crash safety (every batch fsynced) as in production.
    for (size, n) in [(1000usize, 20_000u64), (4000, 10_000)] {
        let scope = pods(&format!("burst-{size}")).scope(None, "");
        let before = store.stats().commits;
        let start = Instant::now();
        let mut receipts = Vec::with_capacity(n as usize);
        for s in 1..=n {
            let o = obj_with(
                Some("d"),
                &format!("pod-{}", s % 500),
                s,
                &[("app", "x")],
                &[("spec.nodeName", "n1")],
                pod_body(s, size),
            );
            receipts.push(
                store
                    .submit(Write::WatchEvent {
                        scope: scope.clone(),
                        event: WatchEvent::Modified(o),
                    })
                    .await
                    .expect("submit"),
            );
        }
        for r in receipts {
            within("durable", r.durable()).await.expect("durable");
        }
        let elapsed = start.elapsed();
        println!(
            "burst: {n} watch events of ~{size} B persisted in {elapsed:?} = {:.0} events/s over {} commits",
            n as f64 / elapsed.as_secs_f64(),
            store.stats().commits - before
        );
        let p = store.watch_progress(&scope).expect("p").expect("progress");
        assert_eq!(p.resource_version.parsed(), Some(n));
    }
    assert_eq!(store.stats().write_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickle_of_watch_events_shares_commits() {
    // Twenty followers' watches each receiving an event every few ms: one
    // commit (fsync) per event would be the store's whole cost. Stream
    // writes linger for the next ones, so their commits are far fewer.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let scope = pods("trickle").scope(None, "");
    let before = store.stats().commits;
    let n = 100u64;
    let mut receipts = Vec::new();
    for s in 1..=n {
        let o = obj_with(
            Some("d"),
            &format!("pod-{s}"),
            s,
            &[],
            &[],
            pod_body(s, 1000),
        );
        receipts.push(
            store
                .submit(Write::WatchEvent {
                    scope: scope.clone(),
                    event: WatchEvent::Added(o),
                })
                .await
                .expect("submit"),
        );
        // Slower than the batch window: without the linger, every event
        // would be a batch of its own.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    for r in receipts {
        within("durable", r.durable()).await.expect("durable");
    }
    let commits = store.stats().commits - before;
    assert!(
        commits * 4 <= n,
        "{commits} commits for {n} trickling watch events"
    );
    let p = store.watch_progress(&scope).expect("p").expect("progress");
    assert_eq!(p.resource_version.parsed(), Some(n));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_footprint_of_a_thousand_pods_and_process_rss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let r = pods("kubelet");
    let items: Vec<Object> = (0..1000u64)
        .map(|i| {
            obj_with(
                Some("default"),
                &format!("pod-{i}"),
                i + 1,
                &[("app", "web")],
                &[("spec.nodeName", "n1")],
                pod_body(i, 4000),
            )
        })
        .collect();
    let body_bytes: usize = items.iter().map(|o| o.body.len()).sum();
    within(
        "list",
        store.replace_scope(&r.scope(None, ""), |_| true, items.clone(), 1000),
    )
    .await
    .expect("replace");
    let after_list = store.stats();
    // The same objects updated one by one (as watch events do).
    for (i, mut o) in items.into_iter().enumerate() {
        o.meta.resource_version = (2000 + i as u64).into();
        store
            .submit(Write::Put {
                resource: r.clone(),
                object: o,
            })
            .await
            .expect("submit")
            .durable()
            .await
            .expect("durable");
    }
    let after_updates = store.stats();
    println!(
        "1000 pods, {body_bytes} body bytes: after one list {} B on disk (file {} B, payload {} B); after 1000 single updates {} B on disk (file {} B)",
        after_list.bytes_on_disk,
        after_list.file_len,
        after_list.payload_bytes,
        after_updates.bytes_on_disk,
        after_updates.file_len
    );
    assert!(
        after_list.bytes_on_disk < 3 * body_bytes as u64,
        "disk usage stays within 3x the bodies"
    );
    assert!(
        after_updates.bytes_on_disk < 4 * body_bytes as u64,
        "updates reuse freed pages"
    );
    drop(store);

    // Memory: a clean process holding 10,000 ~4 KiB pods.
    let rss_dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_store-crash-writer"))
        .arg("rss")
        .arg(rss_dir.path())
        .output()
        .expect("run rss mode");
    assert!(
        out.status.success(),
        "rss mode failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    println!("rss: {line}");
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {line}"))
    };
    assert_eq!(field("objects"), 10_000);
    assert!(
        field("rss_after_read_kib") < 64 * 1024,
        "the store alone must leave room in the 64 MiB budget: {line}"
    );
}

/// Two lists of one scope may reach the writer out of order (their copies
/// are consumed concurrently): the older one, replaced or staged, does not
/// roll the scope back.
#[tokio::test]
async fn an_older_list_of_a_scope_does_not_replace_a_newer_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let r = pods("kubelet");
    let scope = r.scope(None, "");
    let list = |names: &[&str], rv: u64| -> Vec<Object> {
        names.iter().map(|n| obj(Some("d"), n, rv)).collect()
    };
    within(
        "newer",
        store.replace_scope(&scope, |_| true, list(&["a", "b"], 20), 20),
    )
    .await
    .expect("newer");
    within(
        "older",
        store.replace_scope(&scope, |_| true, list(&["a"], 10), 10),
    )
    .await
    .expect("older");
    let mut staging = store.begin_staged(&scope);
    within("page", staging.stage_page(list(&["old"], 15)))
        .await
        .expect("stage");
    within("commit", staging.commit(|_| true, 15))
        .await
        .expect("commit");
    assert_eq!(names(&store, &scope), vec!["a", "b"]);
    let l = store.list(&scope, |_| true).expect("list").expect("listed");
    assert_eq!(l.marker.expect("marker").resource_version.as_str(), "20");
    // A newer one still replaces it.
    within(
        "newest",
        store.replace_scope(&scope, |_| true, list(&["c"], 30), 30),
    )
    .await
    .expect("newest");
    assert_eq!(names(&store, &scope), vec!["c"]);
}

/// `holds` answers from a memo while the file is unchanged: after every
/// kind of write it must answer what that write left, never what it read
/// before (each step asks first, so the memo holds the old answer).
#[tokio::test]
async fn holds_answers_what_every_write_path_left() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let r = pods("kubelet");
    let holds = |rv: &str| {
        store
            .holds(&r, Some("d"), "a", Format::Json, rv)
            .expect("holds")
    };
    let put = |rv| store.put_if_not_older(&r, obj(Some("d"), "a", rv));
    assert!(!holds("1"), "nothing stored");
    within("put", put(1)).await.expect("put");
    assert!(holds("1") && holds("1"), "a put");
    assert!(!holds("2"));
    within("newer", put(2)).await.expect("newer");
    assert!(holds("2") && !holds("1"), "a newer put");
    assert!(
        !store
            .holds(&r, Some("d"), "a", Format::Protobuf, "2")
            .expect("holds"),
        "another format is not held"
    );

    within("delete", store.delete(&r.object(Some("d"), "a")))
        .await
        .expect("delete");
    assert!(!holds("2"), "a delete");
    within("put", put(3)).await.expect("put");
    assert!(holds("3"));
    within("many", store.delete_many(vec![r.object(Some("d"), "a")]))
        .await
        .expect("delete many");
    assert!(!holds("3"), "a delete of many");

    within("put", put(4)).await.expect("put");
    assert!(holds("4"));
    let scope = r.scope(None, "");
    within(
        "replace",
        store.replace_scope(&scope, |_| true, vec![obj(Some("d"), "b", 5)], 5),
    )
    .await
    .expect("replace");
    assert!(!holds("4"), "a replaced scope");

    let mut staged = store.begin_staged(&scope);
    within("page", staged.stage_page(vec![obj(Some("d"), "a", 6)]))
        .await
        .expect("page");
    assert!(!holds("6"), "staged is not stored yet");
    within("commit", staged.commit(|_| true, 6))
        .await
        .expect("commit");
    assert!(holds("6"), "a staged commit");

    within(
        "event",
        store.apply_watch_event(&scope, WatchEvent::Modified(obj(Some("d"), "a", 7))),
    )
    .await
    .expect("event");
    assert!(holds("7") && !holds("6"), "a watch event");
    within(
        "deleted",
        store.apply_watch_event(&scope, WatchEvent::Deleted(obj(Some("d"), "a", 8))),
    )
    .await
    .expect("deleted");
    assert!(!holds("7"), "a deletion event");

    within("put", put(9)).await.expect("put");
    assert!(holds("9"));
    within("component", store.delete_component("kubelet"))
        .await
        .expect("component");
    assert!(!holds("9"), "a component's objects deleted");
    within("put", put(10)).await.expect("put");
    assert!(holds("10"));
    within("gvr", store.forget_gvr(&Gvr::new("", "v1", "pods")))
        .await
        .expect("forget");
    assert_eq!(
        holds("10"),
        store.get(&r.object(Some("d"), "a")).expect("get").is_some(),
        "what forgetting a resource left"
    );
    drop(store);

    // Reopened: a new store, whatever the old one remembered.
    let store = open(dir.path());
    assert_eq!(
        store
            .holds(&r, Some("d"), "a", Format::Json, "10")
            .expect("holds"),
        store.get(&r.object(Some("d"), "a")).expect("get").is_some()
    );
}

//! Helper process for the storage crash tests (`tests/tests/storage.rs`).
//!
//! `store-crash-writer write <dir>` opens the store in `<dir>` and writes
//! forever, in three concurrent loops whose every committed state is
//! self-describing, so a test that kills this process with SIGKILL at any
//! instant can check the reopened store:
//!
//! * lists: scope `crash-lists` configmaps in namespace `gen` is replaced by
//!   generation `g`: `n(g) = 3 + g % 11` items `item-<i>`, each body naming
//!   `g` and `n(g)`, labels `gen=<g>`, list RV `g`.
//! * staged: scope `crash-staged` configmaps in namespace `pages` is replaced
//!   through 3 staged pages of `2 + g % 4` items each; every 5th generation
//!   is aborted after 2 pages instead of committed.
//! * watch: scope `crash-watch` pods (all namespaces) receives event `s`
//!   (s = 1, 2, ...) for pod `pod-<s % 40>` in namespace `w`: DELETED when
//!   `s % 7 == 0`, else MODIFIED with RV `s` and body `{"seq":s}`; every
//!   100th is a bookmark. The store state is therefore a pure function of
//!   the scope's watch progress.
//!
//! Every 50th and 37th watch event is awaited (irregular batch edges).
//! After a write is durable it prints `list <g>`, `staged <g>` or
//! `watch <s>`, so the test can also check that acknowledged writes survived.
//! On start it continues from what the store holds and prints
//! `ready <g> <staged g> <s>`.
//!
//! `store-crash-writer rss <dir>` writes 10,000 ~4 KiB pods as ten lists of
//! 1,000, lists them back a namespace at a time and prints the process's
//! VmRSS after writing and after reading, VmHWM, the object count and bytes
//! on disk: a clean process for the memory figure.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use yurthub::storage::{
    Format, Gvr, Object, ObjectMeta, Options, ResourceKey, ScopeKey, Space, Store, WatchEvent,
    Write,
};

const PAD: usize = 1500;

pub fn lists_scope() -> ScopeKey {
    ResourceKey::new("crash-lists", Space::Full, Gvr::new("", "v1", "configmaps"))
        .scope(Some("gen"), "")
}

pub fn staged_scope() -> ScopeKey {
    ResourceKey::new(
        "crash-staged",
        Space::Full,
        Gvr::new("", "v1", "configmaps"),
    )
    .scope(Some("pages"), "")
}

pub fn watch_scope() -> ScopeKey {
    ResourceKey::new("crash-watch", Space::Full, Gvr::new("", "v1", "pods")).scope(None, "")
}

fn object(ns: &str, name: &str, rv: u64, labels: &[(&str, String)], body: String) -> Object {
    Object {
        meta: ObjectMeta {
            namespace: Some(ns.to_owned()),
            name: name.to_owned(),
            resource_version: rv.into(),
            kind: "ConfigMap".into(),
            api_version: "v1".into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
            fields: BTreeMap::new(),
        },
        format: Format::Json,
        body: Bytes::from(body),
    }
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(dir)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: store-crash-writer write|rss <dir>");
        std::process::exit(64);
    };
    let dir = PathBuf::from(dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match mode.as_str() {
        "write" => runtime.block_on(write_forever(&dir)),
        "rss" => runtime.block_on(rss(&dir)),
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(64);
        }
    }
}

fn open(dir: &Path) -> Store {
    let opened = Store::open(
        dir,
        Options {
            batch_window: Duration::from_millis(1),
            ..Options::default()
        },
    )
    .expect("open store");
    if let Some(r) = &opened.recovery {
        eprintln!("recovered: {} -> {}", r.reason, r.moved_aside_to.display());
    }
    opened.store
}

async fn write_forever(dir: &Path) {
    let store = open(dir);
    let marker_rv = |scope: &ScopeKey| {
        store
            .list(scope, |_| true)
            .expect("list at start")
            .and_then(|l| l.marker)
            .filter(|m| m.scope == *scope)
            .and_then(|m| m.resource_version.parsed())
            .unwrap_or(0)
    };
    let g0 = marker_rv(&lists_scope());
    let c0 = marker_rv(&staged_scope());
    let s0 = store
        .watch_progress(&watch_scope())
        .expect("progress at start")
        .and_then(|p| p.resource_version.parsed())
        .unwrap_or(0);

    // An object next to the replaced scope that no replace may touch.
    let lists_resource = lists_scope().resource;
    store
        .put_if_not_older(
            &lists_resource,
            object("other", "bystander", 1, &[], "{\"bystander\":true}".into()),
        )
        .await
        .expect("bystander");
    say(format!("ready {g0} {c0} {s0}"));

    let lists = {
        let store = store.clone();
        tokio::spawn(async move {
            let scope = lists_scope();
            for g in g0 + 1.. {
                let n = 3 + g % 11;
                let items = (0..n)
                    .map(|i| {
                        let body = format!(
                            "{{\"gen\":{g},\"idx\":{i},\"n\":{n},\"pad\":\"{}\"}}",
                            "x".repeat(PAD)
                        );
                        object(
                            "gen",
                            &format!("item-{i}"),
                            g * 1000 + i,
                            &[("gen", g.to_string())],
                            body,
                        )
                    })
                    .collect();
                store
                    .replace_scope(&scope, |_| true, items, g)
                    .await
                    .expect("replace");
                say(format!("list {g}"));
            }
        })
    };

    let staged = {
        let store = store.clone();
        tokio::spawn(async move {
            let scope = staged_scope();
            for g in c0 + 1.. {
                let per_page = 2 + g % 4;
                let mut staging = store.begin_staged(&scope);
                let pages = if g % 5 == 0 { 2 } else { 3 };
                for p in 0..pages {
                    let items = (0..per_page)
                        .map(|i| {
                            let idx = p * per_page + i;
                            let body =
                                format!("{{\"gen\":{g},\"idx\":{idx},\"total\":{}}}", 3 * per_page);
                            object(
                                "pages",
                                &format!("obj-{idx}"),
                                g * 1000 + idx,
                                &[("gen", g.to_string())],
                                body,
                            )
                        })
                        .collect();
                    staging.stage_page(items).await.expect("stage page");
                }
                if pages == 3 {
                    staging.commit(|_| true, g).await.expect("commit staged");
                    say(format!("staged {g}"));
                } else {
                    staging.abort();
                }
            }
        })
    };

    let watch = {
        let store = store.clone();
        tokio::spawn(async move {
            let scope = watch_scope();
            for s in s0 + 1.. {
                let event = if s % 100 == 0 {
                    WatchEvent::Bookmark(s.into())
                } else {
                    let o = object(
                        "w",
                        &format!("pod-{}", s % 40),
                        s,
                        &[],
                        format!("{{\"seq\":{s}}}"),
                    );
                    if s % 7 == 0 {
                        WatchEvent::Deleted(o)
                    } else {
                        WatchEvent::Modified(o)
                    }
                };
                let receipt = store
                    .submit(Write::WatchEvent {
                        scope: scope.clone(),
                        event,
                    })
                    .await
                    .expect("submit");
                if s % 50 == 0 || s % 37 == 0 {
                    // Everything queued before is in this or an earlier batch.
                    receipt.durable().await.expect("watch event durable");
                    say(format!("watch {s}"));
                } else {
                    drop(receipt);
                }
            }
        })
    };
    let _ = tokio::join!(lists, staged, watch);
}

async fn rss(dir: &Path) {
    let store = open(dir);
    let resource = ResourceKey::new("kubelet", Space::Full, Gvr::new("", "v1", "pods"));
    for chunk in 0..10u64 {
        let ns = format!("ns-{chunk}");
        let items = (0..1000u64)
            .map(|i| {
                let body = format!(
                    "{{\"kind\":\"Pod\",\"pad\":\"{}\",\"i\":{i}}}",
                    "p".repeat(4000)
                );
                object(
                    &ns,
                    &format!("pod-{i}"),
                    chunk * 1000 + i + 1,
                    &[("app", "x".into())],
                    body,
                )
            })
            .collect();
        store
            .replace_scope(&resource.scope(Some(&ns), ""), |_| true, items, chunk + 1)
            .await
            .expect("replace");
    }
    let after_write = vm_kib("VmRSS:");
    // Read everything back a namespace (1,000 objects, ~4 MiB) at a time,
    // as offline lists would, dropping each answer.
    let mut listed = 0;
    for chunk in 0..10u64 {
        let ns = format!("ns-{chunk}");
        listed += store
            .list(&resource.scope(Some(&ns), ""), |_| true)
            .expect("list")
            .map(|l| l.items.len())
            .unwrap_or(0);
    }
    say(format!(
        "rss_after_write_kib={after_write} rss_after_read_kib={} hwm_kib={} objects={listed} bytes_on_disk={}",
        vm_kib("VmRSS:"),
        vm_kib("VmHWM:"),
        store.stats().bytes_on_disk
    ));
}

fn vm_kib(name: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

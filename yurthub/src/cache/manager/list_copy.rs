//! Caching a complete (unpaginated) list while it streams. Items are split
//! off as they arrive and staged to the store a page at a time, so the copy
//! holds about one page, never the whole list (a 10,000-pod list is 10–20
//! MB; what the copy holds stays under [`STREAM_RESERVE`]). A list the
//! store holds already at the same resourceVersion, or that another copy of
//! the same scope is writing at that version (clients sharing an identity,
//! every component re-listing when the cloud returns), is not written again.

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::{CacheManager, Chunk, Plan, TRIM_AFTER_BYTES, lock};
use crate::cache::keys::Selectors;
use crate::codec::{self, ListPiece, ListStream};
use crate::storage::{self, Object, ResourceKey, ScopeKey, StagedList};

/// A page goes to the store at this many items or bytes, whichever first.
const PAGE_ITEMS: usize = 500;
const PAGE_BYTES: usize = 1 << 20;
/// What one streamed copy reserves against the copy budget: the page being
/// built, the one the store is writing, the item being read, and chunks
/// waiting in the tee's channel meanwhile.
pub(super) const STREAM_RESERVE: usize = 4 << 20;
/// What a list copy reads at a time until it knows it is the one to write.
const HEAD_SLICE: usize = 16 << 10;
/// The largest single item a list copy holds while it arrives.
const ITEM_MAX: usize = 16 << 20;

/// A scope being listed at a resourceVersion by one copy; others of the
/// same version are skipped until it is dropped.
struct ListClaim {
    manager: CacheManager,
    scope: ScopeKey,
    resource_version: String,
}

impl Drop for ListClaim {
    fn drop(&mut self) {
        let mut listing = lock(&self.manager.inner.listing);
        if listing.get(&self.scope) == Some(&self.resource_version) {
            listing.remove(&self.scope);
        }
    }
}

impl CacheManager {
    /// Consumes the teed copy of an unpaginated list.
    pub(super) async fn consume_list(
        &self,
        resource: ResourceKey,
        namespace: Option<String>,
        selectors: Selectors,
        format: codec::Format,
        mut rx: mpsc::Receiver<Chunk>,
    ) {
        // The head is held against the budget as it comes; the stream's
        // reserve is taken once this copy is known to be the one to write
        // (copies of a list already held take none).
        let mut held = self.inner.budget.reservation();
        let scope = selectors.scope(&resource, namespace.as_deref());
        let key = format!("list {scope}");
        let mut split = ListStream::new(format, ITEM_MAX);
        let mut claim: Option<ListClaim> = None;
        let mut page = Page::default();
        let mut staged: Option<StagedList> = None;
        let mut streamed_bytes = 0usize;
        // What arrived before the first item: if the list's kind was not
        // in it, the list is kept whole instead (any key order is valid
        // JSON; the apiserver's puts kind and metadata first).
        let mut head = Some(BytesMut::new());
        let mut whole = false;

        loop {
            let data = match rx.recv().await {
                Some(Chunk::Data(d)) => d,
                Some(Chunk::End) => break,
                None => {
                    tracing::debug!(%scope, "list copy incomplete; not cached");
                    return; // a dropped staging is discarded
                }
            };
            streamed_bytes += data.len();
            // Until this copy is known to be the one to write, a chunk is
            // read a slice at a time: a relist of what the store holds
            // stops after the list's head and first item, instead of
            // copying a whole 256 KiB frame twice first.
            let mut rest = &data[..];
            while !rest.is_empty() {
                let n = if claim.is_none() && !whole {
                    rest.len().min(HEAD_SLICE)
                } else {
                    rest.len()
                };
                let (slice, tail) = rest.split_at(n);
                rest = tail;
                if let Some(h) = head.as_mut() {
                    if h.len() + slice.len() > held.bytes() && !held.grow(slice.len()) {
                        self.inner.budget.count_skip();
                        tracing::debug!(%scope, "list copy over the memory budget; not cached");
                        return;
                    }
                    h.extend_from_slice(slice);
                }
                if whole {
                    continue;
                }
                split.push(slice);
                loop {
                    let raw = match split.next_piece() {
                        Ok(Some(ListPiece::Item(raw))) => raw,
                        Ok(Some(ListPiece::Verbatim(_))) => continue,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(%scope, error = %e, "list unreadable; not cached");
                            return;
                        }
                    };
                    if claim.is_none() {
                        if !split.type_known() {
                            whole = true;
                            break;
                        }
                        head = None;
                        match self.claim_list(&scope, &split) {
                            Some(c) => claim = Some(c),
                            None => return,
                        }
                        if held.bytes() < STREAM_RESERVE
                            && !held.grow(STREAM_RESERVE - held.bytes())
                        {
                            self.inner.budget.count_skip();
                            tracing::debug!(%scope, "list copy over the memory budget; not cached");
                            return;
                        }
                    }
                    let Ok(item) =
                        self.list_item(format, raw, split.api_version(), split.item_kind())
                    else {
                        return;
                    };
                    if let Some(o) = item {
                        page.push(o);
                    }
                    if page.full() {
                        let staging =
                            staged.get_or_insert_with(|| self.inner.store.begin_staged(&scope));
                        if let Err(e) = staging.stage_page(page.take()).await {
                            self.record_write(key, Err(e.to_string()));
                            return;
                        }
                    }
                }
            }
        }
        if whole {
            let bytes = head.take().unwrap_or_default().freeze();
            let plan = Plan::List {
                resource,
                namespace,
                selectors,
                limit: None,
                continue_token: None,
            };
            return self.write_response(plan, format, bytes, held).await;
        }
        if let Err(e) = split.finish() {
            tracing::debug!(%scope, error = %e, "list unreadable; not cached");
            return;
        }
        if claim.is_none() {
            // An empty list (or no list at all: a Status).
            match self.claim_list(&scope, &split) {
                Some(c) => claim = Some(c),
                None => return,
            }
        }
        if !split.meta().continue_token.is_empty() {
            // Only a request with a limit is answered in pages.
            tracing::debug!(%scope, "an unpaginated list came with a continue token; not cached");
            return;
        }
        self.note_kind(&resource, split.item_kind()).await;
        let sel = selectors.clone();
        let in_scope = move |m: &storage::ObjectMeta| sel.matches(m);
        let list_rv = split.meta().resource_version.to_string();
        let r = match staged {
            // It fit in one page: one transaction, no staging.
            None => {
                self.inner
                    .store
                    .replace_scope(&scope, in_scope, page.take(), list_rv)
                    .await
            }
            Some(mut staging) => {
                let last = page.take();
                match if last.is_empty() {
                    Ok(())
                } else {
                    staging.stage_page(last).await
                } {
                    Ok(()) => staging.commit(in_scope, list_rv).await,
                    Err(e) => Err(e),
                }
            }
        };
        self.record_write(key, r.map_err(|e| e.to_string()));
        drop(claim);
        drop(held);
        if streamed_bytes >= TRIM_AFTER_BYTES && self.inner.budget.in_use() == 0 {
            crate::alloc::release_free_memory();
        }
    }

    /// Whether this copy is the one to write the list: it is a list, and
    /// neither the store nor another copy holds this scope at its
    /// resourceVersion (those skips count as unchanged writes).
    fn claim_list(&self, scope: &ScopeKey, split: &ListStream) -> Option<ListClaim> {
        let kind = split.kind();
        if kind.len() <= "List".len() || !kind.ends_with("List") {
            tracing::debug!(%scope, kind, "not a list; not cached");
            return None;
        }
        let rv = split.meta().resource_version.to_string();
        if !rv.is_empty() {
            let unchanged = || {
                self.inner
                    .unchanged
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                None
            };
            // Both checks under the lock: a copy that writes gives its
            // claim up only once its commit is readable, so a copy that
            // misses the claim sees the marker. (Reading the marker first
            // let a copy slip between the commit and the claim's release
            // and write the same list again.)
            let mut listing = lock(&self.inner.listing);
            if listing.get(scope) == Some(&rv) {
                return unchanged();
            }
            if let Ok(Some(marker)) = self.inner.store.list_marker(scope)
                && !marker.imported
                && marker.resource_version.as_str() == rv
            {
                return unchanged();
            }
            listing.insert(scope.clone(), rv.clone());
        }
        Some(ListClaim {
            manager: self.clone(),
            scope: scope.clone(),
            resource_version: rv,
        })
    }

    /// One list item as a store object: JSON items get their type meta,
    /// protobuf items an envelope, so each reads as a GET would return it.
    /// `Ok(None)`: an item never stored (an unscheduled pod); `Err`: the
    /// item is unreadable, and so is the list.
    pub(super) fn list_item(
        &self,
        format: codec::Format,
        raw: Bytes,
        api_version: &str,
        item_kind: &str,
    ) -> Result<Option<Object>, ()> {
        let body = match format {
            codec::Format::Json => match codec::json_with_type_meta(&raw, api_version, item_kind) {
                Ok(b) if b.len() == raw.len() => raw,
                Ok(b) => Bytes::from(b),
                Err(e) => {
                    tracing::debug!(error = %e, "list item unreadable; not cached");
                    return Err(());
                }
            },
            codec::Format::Protobuf => Bytes::from(codec::envelope(api_version, item_kind, &raw)),
        };
        Ok(self.object_from(format, body, api_version, item_kind))
    }
}

/// The items gathered for the next staged page.
#[derive(Default)]
struct Page {
    items: Vec<Object>,
    bytes: usize,
}

impl Page {
    fn push(&mut self, o: Object) {
        self.bytes += o.body.len();
        self.items.push(o);
    }

    fn full(&self) -> bool {
        self.items.len() >= PAGE_ITEMS || self.bytes >= PAGE_BYTES
    }

    fn take(&mut self) -> Vec<Object> {
        self.bytes = 0;
        std::mem::take(&mut self.items)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cache::policy::CacheAgents;
    use crate::storage::{Gvr, Options, Space, Store};

    fn manager(dir: &std::path::Path) -> CacheManager {
        let store = Store::open(dir, Options::default()).expect("store").store;
        CacheManager::new(store, CacheAgents::new("n1"), "n1", None)
    }

    fn pods() -> ResourceKey {
        ResourceKey::new("kubelet", Space::Full, Gvr::new("", "v1", "pods"))
    }

    /// Feeds `body` to the list consumer in `size`-byte chunks, ending
    /// with [`Chunk::End`] when `complete` (else as a tee that gave up).
    async fn feed(m: &CacheManager, body: &[u8], size: usize, complete: bool) {
        let (tx, rx) = mpsc::channel(CHANNEL);
        for c in body.chunks(size) {
            tx.send(Chunk::Data(Bytes::copy_from_slice(c)))
                .await
                .expect("send");
        }
        if complete {
            tx.send(Chunk::End).await.expect("end");
        }
        drop(tx);
        m.consume_list(
            pods(),
            Some("a".into()),
            Selectors::default(),
            codec::Format::Json,
            rx,
        )
        .await;
    }

    async fn consume(m: &CacheManager, body: &[u8], size: usize) {
        feed(m, body, size, true).await;
    }
    const CHANNEL: usize = 1 << 16;

    /// The resourceVersion of the scope's list marker (which must exist).
    fn marker_rv(m: &CacheManager, scope: &ScopeKey) -> String {
        let marker = m.store().list_marker(scope).expect("read").expect("marker");
        marker.resource_version.as_str().to_owned()
    }

    fn pod_items(n: usize) -> Vec<serde_json::Value> {
        (0..n)
            .map(|i| {
                json!({"metadata": {"name": format!("p{i:04}"), "namespace": "a", "resourceVersion": "5"},
                    "spec": {"nodeName": "n1"}})
            })
            .collect()
    }

    fn ordered_list(n: usize, rv: &str) -> Vec<u8> {
        format!(
            r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{"resourceVersion":"{rv}"}},"items":{}}}"#,
            serde_json::to_string(&pod_items(n)).unwrap()
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn a_streamed_list_over_several_pages_replaces_its_scope() {
        let dir = tempfile::tempdir().expect("dir");
        let m = manager(dir.path());
        let scope = Selectors::default().scope(&pods(), Some("a"));
        consume(&m, &ordered_list(PAGE_ITEMS * 2 + 7, "10"), 777).await;
        assert_eq!(
            m.store().keys(&pods()).expect("keys").len(),
            PAGE_ITEMS * 2 + 7
        );
        assert_eq!(marker_rv(&m, &scope), "10");
        // A smaller list at a new version replaces it exactly.
        consume(&m, &ordered_list(3, "11"), 50).await;
        assert_eq!(m.store().keys(&pods()).expect("keys").len(), 3);
        // The same version again is not written.
        let before = m.unchanged_writes();
        consume(&m, &ordered_list(3, "11"), 50).await;
        assert_eq!(m.unchanged_writes(), before + 1);
    }

    #[tokio::test]
    async fn a_list_whose_kind_follows_its_items_is_kept_whole() {
        let dir = tempfile::tempdir().expect("dir");
        let m = manager(dir.path());
        // serde_json sorts keys: items before kind and metadata.
        let body = serde_json::to_vec(&json!({
            "kind": "PodList", "apiVersion": "v1",
            "metadata": {"resourceVersion": "12"}, "items": pod_items(40),
        }))
        .unwrap();
        assert!(body.starts_with(br#"{"apiVersion":"v1","items""#));
        consume(&m, &body, 100).await;
        assert_eq!(m.store().keys(&pods()).expect("keys").len(), 40);
        let scope = Selectors::default().scope(&pods(), Some("a"));
        assert_eq!(marker_rv(&m, &scope), "12");
    }

    #[tokio::test]
    async fn a_cut_or_broken_list_writes_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let m = manager(dir.path());
        let body = ordered_list(PAGE_ITEMS + 50, "10");
        // Cut: the channel ends without End (the tee gave up).
        feed(&m, &body, 4096, false).await;
        // Broken: ends inside an item.
        consume(&m, &body[..body.len() - 100], 4096).await;
        m.store().flush().await.expect("flush");
        assert!(m.store().keys(&pods()).expect("keys").is_empty());
        let scope = Selectors::default().scope(&pods(), Some("a"));
        assert!(m.store().list_marker(&scope).expect("read").is_none());
    }

    #[tokio::test]
    async fn a_list_in_frames_larger_than_the_head_slice_is_cached_whole() {
        let dir = tempfile::tempdir().expect("dir");
        let m = manager(dir.path());
        let scope = Selectors::default().scope(&pods(), Some("a"));
        // One chunk of the whole list, then chunks that each span slices.
        for (rv, size) in [("20", usize::MAX), ("21", HEAD_SLICE * 3 + 5)] {
            let body = ordered_list(PAGE_ITEMS * 2 + 7, rv);
            assert!(body.len() > HEAD_SLICE * 4);
            consume(&m, &body, size.min(body.len())).await;
            assert_eq!(
                m.store().keys(&pods()).expect("keys").len(),
                PAGE_ITEMS * 2 + 7
            );
            assert_eq!(marker_rv(&m, &scope), rv);
        }
        // Kept whole (kind after the items), in one chunk.
        let body = serde_json::to_vec(&json!({
            "kind": "PodList", "apiVersion": "v1",
            "metadata": {"resourceVersion": "22"}, "items": pod_items(600),
        }))
        .unwrap();
        assert!(body.len() > HEAD_SLICE * 2);
        consume(&m, &body, body.len()).await;
        assert_eq!(m.store().keys(&pods()).expect("keys").len(), 600);
        assert_eq!(marker_rv(&m, &scope), "22");
    }
}

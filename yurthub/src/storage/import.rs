//! One-off import of an OpenYurt YurtHub disk cache into the store, so a
//! node switching to this yurthub keeps its offline autonomy.
//!
//! Upstream layout (see the behaviours reference §5.4):
//! `<component>/<resource>.<version>.<group|core>/[<namespace>/]<name>`, the
//! metadata-only tree under `partialobjectmetadatas.<v>.meta.k8s.io/`, the
//! legacy `<component>/<resource>/[<namespace>/]<name>`, the CRD mapping in
//! `_internal/restmapper/cache-crd-restmapper.conf`, and raw documents
//! (`version`, `_apis_discovery.k8s.io_v1`, ...).
//!
//! Upstream's `tmp_` entries are the leftovers of an interrupted update or
//! list replace; its own recovery lets `tmp_X` replace `X`. The import
//! follows that for directories (a half-written `X` cannot be told from a
//! complete one) and, for files, keeps `X` when it parses (files are written
//! whole) and falls back to `tmp_X` otherwise. The source tree is only read.
//!
//! Only the handful of fields the store indexes are pulled out of each JSON
//! file; this is not a hot path.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::error::Error;
use super::model::{Applied, Format, Gvr, Object, ObjectMeta, ResourceKey, ResourceVersion, Space};
use super::writer::Op;
use super::{Receipt, Store, Write};

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Objects written.
    pub objects: u64,
    /// Objects not written because the store already had a newer copy.
    pub ignored_older: u64,
    pub documents: u64,
    pub kinds: u64,
    /// List markers recorded for resource directories (an upstream
    /// directory, even an empty one, answers offline lists).
    pub markers: u64,
    pub components: BTreeSet<String>,
    /// `tmp_` entries used in place of their sibling.
    pub restored_from_tmp: Vec<PathBuf>,
    pub skipped: Vec<SkippedEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedEntry {
    pub path: PathBuf,
    pub reason: String,
}

const RESTMAPPER: &str = "_internal/restmapper/cache-crd-restmapper.conf";
const TMP: &str = "tmp_";

/// Imports with the default selectable fields: those the apiserver offers
/// as field selectors for built-in kinds (e.g. `spec.nodeName` of pods).
pub async fn import_openyurt(dir: &Path, store: &Store) -> Result<ImportReport, Error> {
    import_openyurt_with(dir, store, default_fields).await
}

/// Imports with a caller-chosen field extractor (`metadata.name` and
/// `metadata.namespace` are always added).
pub async fn import_openyurt_with(
    dir: &Path,
    store: &Store,
    fields: impl Fn(&Gvr, &Value) -> BTreeMap<String, String>,
) -> Result<ImportReport, Error> {
    let mut run = Import {
        store,
        fields: &fields,
        report: ImportReport::default(),
        pending: Vec::new(),
    };
    let top = run.entries(dir).map_err(|e| Error::Import {
        path: dir.to_path_buf(),
        source: Arc::new(e),
    })?;
    for entry in top {
        if entry.name == "_internal" {
            run.restmapper(&dir.join(RESTMAPPER)).await?;
        } else if entry.is_dir {
            run.component(&entry.name, &entry.path).await?;
        } else if entry.name == "version" || entry.name.starts_with('_') {
            run.document(&entry.name, &entry.path).await?;
        } else {
            run.skip(&entry.path, "not part of the upstream cache layout");
        }
    }
    run.settle().await;
    Ok(run.report)
}

struct Import<'a, F> {
    store: &'a Store,
    fields: &'a F,
    report: ImportReport,
    pending: Vec<(PathBuf, Receipt)>,
}

/// A directory entry after `tmp_` resolution, under its effective name.
struct Entry {
    name: String,
    path: PathBuf,
    is_dir: bool,
}

/// A resource directory's identity: the dir-derived GVR (None for the
/// legacy layout, where each object's apiVersion says).
struct ResourceDir<'p> {
    component: &'p str,
    space: Space,
    resource: String,
    gv: Option<(String, String)>,
}

impl<F> Import<'_, F>
where
    F: Fn(&Gvr, &Value) -> BTreeMap<String, String>,
{
    fn skip(&mut self, path: &Path, reason: impl Into<String>) {
        self.report.skipped.push(SkippedEntry {
            path: path.to_path_buf(),
            reason: reason.into(),
        });
    }

    /// Lists a directory, resolving `tmp_X` against `X` as upstream's
    /// recovery would (see the module docs). Sorted for stable reports.
    fn entries(&mut self, dir: &Path) -> std::io::Result<Vec<Entry>> {
        let mut plain: BTreeMap<String, (PathBuf, bool)> = BTreeMap::new();
        let mut tmp: BTreeMap<String, (PathBuf, bool)> = BTreeMap::new();
        for e in fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let is_dir = e.file_type()?.is_dir();
            match name.strip_prefix(TMP) {
                Some(base) if !base.is_empty() => {
                    tmp.insert(base.to_owned(), (e.path(), is_dir));
                }
                _ => {
                    plain.insert(name, (e.path(), is_dir));
                }
            }
        }
        for (base, (tmp_path, tmp_is_dir)) in tmp {
            let keep_plain = match plain.get(&base) {
                None => false,
                Some((_, true)) => false,
                Some((p, false)) => !tmp_is_dir && parses_as_json(p),
            };
            if keep_plain {
                self.skip(
                    &tmp_path,
                    "leftover of an interrupted upstream write; the complete sibling is used",
                );
                continue;
            }
            if let Some((p, _)) = plain.get(&base) {
                self.skip(p, "replaced by its tmp_ sibling as upstream recovery would");
            }
            self.report.restored_from_tmp.push(tmp_path.clone());
            plain.insert(base, (tmp_path, tmp_is_dir));
        }
        Ok(plain
            .into_iter()
            .map(|(name, (path, is_dir))| Entry { name, path, is_dir })
            .collect())
    }

    async fn restmapper(&mut self, file: &Path) -> Result<(), Error> {
        let raw = match fs::read(file) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                self.skip(file, format!("unreadable: {e}"));
                return Ok(());
            }
        };
        let map: BTreeMap<String, String> = match serde_json::from_slice(&raw) {
            Ok(m) => m,
            Err(e) => {
                self.skip(file, format!("not a JSON object of strings: {e}"));
                return Ok(());
            }
        };
        for (gvr, kind) in map {
            let parts: Vec<&str> = gvr.split('/').collect();
            let [group, version, resource] = parts[..] else {
                self.skip(
                    file,
                    format!("mapping key {gvr:?} is not group/version/resource"),
                );
                continue;
            };
            let gvr = Gvr::new(group, version, resource);
            match self.store.put_kind(&gvr, &kind).await {
                Ok(()) => self.report.kinds += 1,
                Err(e) => self.skip(file, format!("mapping {gvr} -> {kind}: {e}")),
            }
        }
        Ok(())
    }

    async fn document(&mut self, name: &str, file: &Path) -> Result<(), Error> {
        let body = match fs::read(file) {
            Ok(b) => b,
            Err(e) => {
                self.skip(file, format!("unreadable: {e}"));
                return Ok(());
            }
        };
        // `_apis_discovery.k8s.io_v1` is `/apis/discovery.k8s.io/v1`.
        let path = if name == "version" {
            "/version".to_owned()
        } else {
            name.replace('_', "/")
        };
        match self
            .store
            .put_document(&path, "application/json", Bytes::from(body))
            .await
        {
            Ok(()) => self.report.documents += 1,
            Err(e) => self.skip(file, format!("document {path}: {e}")),
        }
        Ok(())
    }

    async fn component(&mut self, component: &str, dir: &Path) -> Result<(), Error> {
        let entries = match self.entries(dir) {
            Ok(e) => e,
            Err(e) => {
                self.skip(dir, format!("unreadable: {e}"));
                return Ok(());
            }
        };
        self.report.components.insert(component.to_owned());
        for entry in entries {
            if !entry.is_dir {
                self.skip(&entry.path, "a file directly under a component directory");
                continue;
            }
            match parse_resource_dir(&entry.name) {
                Some((resource, version, group))
                    if resource == "partialobjectmetadatas" && group == "meta.k8s.io" =>
                {
                    let _ = version;
                    let inner = match self.entries(&entry.path) {
                        Ok(e) => e,
                        Err(e) => {
                            self.skip(&entry.path, format!("unreadable: {e}"));
                            continue;
                        }
                    };
                    for res in inner {
                        match (res.is_dir, parse_resource_dir(&res.name)) {
                            (true, Some((resource, version, group))) => {
                                let rd = ResourceDir {
                                    component,
                                    space: Space::PartialObjectMetadata,
                                    resource,
                                    gv: Some((group, version)),
                                };
                                self.resource_dir(&rd, &res.path).await?;
                            }
                            _ => {
                                self.skip(&res.path, "not a <resource>.<version>.<group> directory")
                            }
                        }
                    }
                }
                Some((resource, version, group)) => {
                    let rd = ResourceDir {
                        component,
                        space: Space::Full,
                        resource,
                        gv: Some((group, version)),
                    };
                    self.resource_dir(&rd, &entry.path).await?;
                }
                None => {
                    let rd = ResourceDir {
                        component,
                        space: Space::Full,
                        resource: entry.name.clone(),
                        gv: None,
                    };
                    self.resource_dir(&rd, &entry.path).await?;
                }
            }
        }
        Ok(())
    }

    async fn resource_dir(&mut self, rd: &ResourceDir<'_>, dir: &Path) -> Result<(), Error> {
        let entries = match self.entries(dir) {
            Ok(e) => e,
            Err(e) => {
                self.skip(dir, format!("unreadable: {e}"));
                return Ok(());
            }
        };
        // GVR → highest RV seen, for the list markers.
        let mut seen: BTreeMap<Gvr, u64> = BTreeMap::new();
        if let Some((group, version)) = &rd.gv {
            seen.insert(
                Gvr::new(group.clone(), version.clone(), rd.resource.clone()),
                0,
            );
        }
        for entry in entries {
            if entry.is_dir {
                let files = match self.entries(&entry.path) {
                    Ok(f) => f,
                    Err(e) => {
                        self.skip(&entry.path, format!("unreadable: {e}"));
                        continue;
                    }
                };
                for file in files {
                    if file.is_dir {
                        self.skip(
                            &file.path,
                            "unexpected directory below a namespace directory",
                        );
                        continue;
                    }
                    self.object(rd, Some(&entry.name), &file, &mut seen).await?;
                }
            } else {
                self.object(rd, None, &entry, &mut seen).await?;
            }
        }
        for (gvr, max_rv) in seen {
            let scope = ResourceKey::new(rd.component, rd.space, gvr).scope(None, "");
            let written = self
                .store
                .call(Op::MarkListed {
                    scope,
                    rv: ResourceVersion::from(max_rv),
                    imported: true,
                    only_if_absent: true,
                })
                .await;
            match written {
                Ok(super::writer::Outcome::Count(n)) => self.report.markers += n,
                Ok(_) => {}
                Err(e) => self.skip(dir, format!("list marker: {e}")),
            }
        }
        Ok(())
    }

    async fn object(
        &mut self,
        rd: &ResourceDir<'_>,
        dir_namespace: Option<&str>,
        file: &Entry,
        seen: &mut BTreeMap<Gvr, u64>,
    ) -> Result<(), Error> {
        let raw = match fs::read(&file.path) {
            Ok(r) => r,
            Err(e) => {
                self.skip(&file.path, format!("unreadable: {e}"));
                return Ok(());
            }
        };
        let value: Value = match serde_json::from_slice(&raw) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                self.skip(&file.path, "not a JSON object");
                return Ok(());
            }
            Err(e) => {
                self.skip(&file.path, format!("not JSON (truncated write?): {e}"));
                return Ok(());
            }
        };
        let str_at = |ptr: &str| {
            value
                .pointer(ptr)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let api_version = str_at("/apiVersion").unwrap_or_default();
        let kind = str_at("/kind").unwrap_or_default();
        let Some(name) = str_at("/metadata/name").filter(|n| !n.is_empty()) else {
            self.skip(&file.path, "no metadata.name");
            return Ok(());
        };
        let namespace = str_at("/metadata/namespace")
            .filter(|n| !n.is_empty())
            .or_else(|| dir_namespace.map(str::to_owned));
        let rv = ResourceVersion::new(str_at("/metadata/resourceVersion").unwrap_or_default());
        let gvr = match &rd.gv {
            Some((group, version)) => Gvr::new(group.clone(), version.clone(), rd.resource.clone()),
            None => {
                let (group, version) = match api_version.split_once('/') {
                    Some((g, v)) => (g.to_owned(), v.to_owned()),
                    None => (String::new(), api_version.clone()),
                };
                if version.is_empty() {
                    self.skip(&file.path, "legacy layout object without apiVersion");
                    return Ok(());
                }
                Gvr::new(group, version, rd.resource.clone())
            }
        };
        let labels = value
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let mut fields = (self.fields)(&gvr, &value);
        fields.insert("metadata.name".into(), name.clone());
        fields.insert(
            "metadata.namespace".into(),
            namespace.clone().unwrap_or_default(),
        );

        let entry = seen.entry(gvr.clone()).or_insert(0);
        *entry = (*entry).max(rv.parsed().unwrap_or(0));
        let resource = ResourceKey::new(rd.component, rd.space, gvr);
        let object = Object {
            meta: ObjectMeta {
                namespace,
                name,
                resource_version: rv,
                kind,
                api_version,
                labels,
                fields,
            },
            format: Format::Json,
            body: Bytes::from(raw),
        };
        match self.store.submit(Write::Put { resource, object }).await {
            Ok(receipt) => self.pending.push((file.path.clone(), receipt)),
            Err(e) => self.skip(&file.path, e.to_string()),
        }
        Ok(())
    }

    /// Waits for every queued object write and tallies the outcomes.
    async fn settle(&mut self) {
        for (path, receipt) in std::mem::take(&mut self.pending) {
            match receipt.durable().await {
                Ok(Applied::IgnoredOlder { .. }) => self.report.ignored_older += 1,
                Ok(_) => self.report.objects += 1,
                Err(e) => self.skip(&path, e.to_string()),
            }
        }
    }
}

fn parses_as_json(path: &Path) -> bool {
    fs::read(path)
        .ok()
        .is_some_and(|raw| serde_json::from_slice::<Value>(&raw).is_ok())
}

/// `pods.v1.core` → (pods, v1, ""); `endpointslices.v1.discovery.k8s.io` →
/// (endpointslices, v1, discovery.k8s.io). None for the legacy layout.
fn parse_resource_dir(name: &str) -> Option<(String, String, String)> {
    let mut parts = name.splitn(3, '.');
    let resource = parts.next().filter(|s| !s.is_empty())?;
    let version = parts.next().filter(|s| !s.is_empty())?;
    let group = parts.next().filter(|s| !s.is_empty())?;
    let group = if group == "core" { "" } else { group };
    Some((resource.to_owned(), version.to_owned(), group.to_owned()))
}

/// The field selectors the apiserver supports for built-in kinds, with the
/// apiserver's defaults for absent values.
pub(crate) fn default_fields(gvr: &Gvr, v: &Value) -> BTreeMap<String, String> {
    let fields: &[&str] = match (gvr.group.as_str(), gvr.resource.as_str()) {
        ("", "pods") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "events") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("", "nodes") => &["spec.unschedulable"],
        ("", "secrets") => &["type"],
        ("", "namespaces") => &["status.phase"],
        ("", "services") => &["spec.clusterIP", "spec.type"],
        ("", "replicationcontrollers") | ("apps", "replicasets") => &["status.replicas"],
        ("batch", "jobs") => &["status.successful"],
        ("certificates.k8s.io", "certificatesigningrequests") => &["spec.signerName"],
        _ => &[],
    };
    fields
        .iter()
        .map(|f| {
            // `source` of an event selects on source.component.
            let path = if *f == "source" {
                "source.component"
            } else {
                f
            };
            let pointer = format!("/{}", path.replace('.', "/"));
            let value = match v.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ if *f == "spec.hostNetwork" || *f == "spec.unschedulable" => "false".into(),
                _ => String::new(),
            };
            ((*f).to_owned(), value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_directory_names_parse_like_upstream() {
        assert_eq!(
            parse_resource_dir("pods.v1.core"),
            Some(("pods".into(), "v1".into(), String::new()))
        );
        assert_eq!(
            parse_resource_dir("endpointslices.v1.discovery.k8s.io"),
            Some((
                "endpointslices".into(),
                "v1".into(),
                "discovery.k8s.io".into()
            ))
        );
        assert_eq!(parse_resource_dir("pods"), None);
        assert_eq!(parse_resource_dir("pods.v1"), None);
    }

    #[test]
    fn default_fields_follow_the_apiserver_field_selectors() {
        let pod = serde_json::json!({"spec": {"nodeName": "n1", "hostNetwork": true}, "status": {"phase": "Running"}});
        let f = default_fields(&Gvr::new("", "v1", "pods"), &pod);
        assert_eq!(f["spec.nodeName"], "n1");
        assert_eq!(f["spec.hostNetwork"], "true");
        assert_eq!(f["status.phase"], "Running");
        assert_eq!(f["status.podIP"], "");
        let ev = serde_json::json!({"source": {"component": "kubelet"}, "involvedObject": {"name": "p"}});
        let f = default_fields(&Gvr::new("", "v1", "events"), &ev);
        assert_eq!(f["source"], "kubelet");
        assert_eq!(f["involvedObject.name"], "p");
        assert!(default_fields(&Gvr::new("example.com", "v1", "widgets"), &ev).is_empty());
    }
}

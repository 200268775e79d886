//! Resource types the double serves: group/version/resource/kind, scope,
//! verbs, short names, subresources, which field selectors each supports,
//! and per-type storage behaviour (generation tracking, create-on-update,
//! whether delete returns the object). Built-ins mirror kube-apiserver's
//! discovery; `ResourceType::custom` describes a CRD (JSON only).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::status::GroupResource;

/// The verbs of a standard REST resource.
pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// A subresource such as `pods/status` or `serviceaccounts/token`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subresource {
    pub name: String,
    /// Group/version/kind of the body it serves.
    pub group: String,
    pub version: String,
    pub kind: String,
    pub verbs: Vec<String>,
}

/// A registered resource type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub resource: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub verbs: Vec<String>,
    pub subresources: Vec<Subresource>,
    /// Built-in types are served in protobuf too; custom ones only in JSON/YAML.
    pub builtin: bool,
    /// Field selectors accepted besides metadata.name / metadata.namespace.
    pub fields: Vec<String>,
    /// `metadata.generation` is set on create and bumped on spec changes.
    pub tracks_generation: bool,
    /// A PUT to a missing object creates it (endpoints do, most types don't).
    pub allow_create_on_update: bool,
    /// DELETE answers with the deleted object instead of a Success Status
    /// (the generic registry's ReturnDeletedObject).
    pub returns_deleted_object: bool,
    /// Create-only review APIs (SubjectAccessReview, TokenReview, ...):
    /// answered, never stored.
    pub virtual_create: bool,
}

impl ResourceType {
    /// A custom resource (what a CRD defines): JSON/YAML only, generation
    /// tracked, all standard verbs.
    pub fn custom(
        group: &str,
        version: &str,
        resource: &str,
        kind: &str,
        namespaced: bool,
    ) -> Self {
        Self {
            group: group.to_owned(),
            version: version.to_owned(),
            resource: resource.to_owned(),
            singular: kind.to_ascii_lowercase(),
            kind: kind.to_owned(),
            namespaced,
            short_names: Vec::new(),
            categories: Vec::new(),
            verbs: ALL_VERBS.iter().map(|v| (*v).to_owned()).collect(),
            subresources: Vec::new(),
            builtin: false,
            fields: Vec::new(),
            tracks_generation: true,
            allow_create_on_update: false,
            returns_deleted_object: true,
            virtual_create: false,
        }
    }

    pub fn with_short_names(mut self, names: &[&str]) -> Self {
        self.short_names = names.iter().map(|n| (*n).to_owned()).collect();
        self
    }

    pub fn with_categories(mut self, categories: &[&str]) -> Self {
        self.categories = categories.iter().map(|n| (*n).to_owned()).collect();
        self
    }

    pub fn with_verbs(mut self, verbs: &[&str]) -> Self {
        self.verbs = verbs.iter().map(|n| (*n).to_owned()).collect();
        self
    }

    /// Adds the `status` subresource (spec/status split on update).
    pub fn with_status(mut self) -> Self {
        let (group, version, kind) = (self.group.clone(), self.version.clone(), self.kind.clone());
        self.subresources.push(Subresource {
            name: "status".into(),
            group,
            version,
            kind,
            verbs: vec!["get".into(), "patch".into(), "update".into()],
        });
        self
    }

    pub fn with_subresource(mut self, name: &str, gvk: (&str, &str, &str), verbs: &[&str]) -> Self {
        self.subresources.push(Subresource {
            name: name.to_owned(),
            group: gvk.0.to_owned(),
            version: gvk.1.to_owned(),
            kind: gvk.2.to_owned(),
            verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        });
        self
    }

    pub fn with_fields(mut self, fields: &[&str]) -> Self {
        self.fields = fields.iter().map(|f| (*f).to_owned()).collect();
        self
    }

    fn builtin(mut self) -> Self {
        self.builtin = true;
        self.tracks_generation = false;
        self.returns_deleted_object = false;
        self
    }

    /// `apiVersion` of objects of this type.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    pub fn group_resource(&self) -> GroupResource {
        GroupResource::new(&self.group, &self.resource)
    }

    /// The store key prefix (qualified resource).
    pub fn storage_key(&self) -> String {
        self.group_resource().to_string()
    }

    pub fn has_verb(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == verb)
    }

    pub fn subresource(&self, name: &str) -> Option<&Subresource> {
        self.subresources.iter().find(|s| s.name == name)
    }

    pub fn has_status(&self) -> bool {
        self.subresource("status").is_some()
    }
}

/// The set of served types; cheap to clone, shared with the server.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    types: Arc<RwLock<Vec<Arc<ResourceType>>>>,
}

impl Registry {
    /// A registry with kube-apiserver's built-in types used by node agents.
    pub fn with_builtins() -> Self {
        let registry = Self::default();
        for t in builtin_types() {
            registry.register(t);
        }
        registry
    }

    /// Adds (or replaces) a type.
    pub fn register(&self, t: ResourceType) {
        let mut types = self.types.write().unwrap_or_else(|e| e.into_inner());
        types.retain(|x| {
            !(x.group == t.group && x.version == t.version && x.resource == t.resource)
        });
        types.push(Arc::new(t));
    }

    pub fn all(&self) -> Vec<Arc<ResourceType>> {
        self.types.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn lookup(&self, group: &str, version: &str, resource: &str) -> Option<Arc<ResourceType>> {
        self.all()
            .into_iter()
            .find(|t| t.group == group && t.version == version && t.resource == resource)
    }

    /// The type for an object's apiVersion and kind.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceType>> {
        self.all()
            .into_iter()
            .find(|t| t.api_version() == api_version && t.kind == kind)
    }

    /// Groups in registration order (core "" first), each with its versions.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for t in self.all() {
            match out.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, versions)) => {
                    if !versions.contains(&t.version) {
                        versions.push(t.version.clone());
                    }
                }
                None => out.push((t.group.clone(), vec![t.version.clone()])),
            }
        }
        out
    }

    /// Types of one group/version, sorted by resource name like discovery.
    pub fn in_group_version(&self, group: &str, version: &str) -> Vec<Arc<ResourceType>> {
        let mut sorted: BTreeMap<String, Arc<ResourceType>> = BTreeMap::new();
        for t in self.all() {
            if t.group == group && t.version == version {
                sorted.insert(t.resource.clone(), t);
            }
        }
        sorted.into_values().collect()
    }
}

fn core(resource: &str, singular: &str, kind: &str, namespaced: bool) -> ResourceType {
    let mut t = ResourceType::custom("", "v1", resource, kind, namespaced).builtin();
    t.singular = singular.to_owned();
    t
}

fn grouped(group: &str, resource: &str, singular: &str, kind: &str) -> ResourceType {
    let mut t = ResourceType::custom(group, "v1", resource, kind, true).builtin();
    t.singular = singular.to_owned();
    t
}

fn review(group: &str, resource: &str, kind: &str, namespaced: bool) -> ResourceType {
    let mut t = ResourceType::custom(group, "v1", resource, kind, namespaced)
        .builtin()
        .with_verbs(&["create"]);
    t.singular = String::new();
    t.virtual_create = true;
    t
}

fn returning_deleted(mut t: ResourceType) -> ResourceType {
    t.returns_deleted_object = true;
    t
}

const EXEC_VERBS: &[&str] = &["create", "get"];

fn builtin_types() -> Vec<ResourceType> {
    let mut pods = core("pods", "pod", "Pod", true)
        .with_short_names(&["po"])
        .with_categories(&["all"])
        .with_status()
        .with_subresource("attach", ("", "v1", "PodAttachOptions"), EXEC_VERBS)
        .with_subresource("exec", ("", "v1", "PodExecOptions"), EXEC_VERBS)
        .with_subresource("log", ("", "v1", "Pod"), &["get"])
        .with_subresource(
            "portforward",
            ("", "v1", "PodPortForwardOptions"),
            EXEC_VERBS,
        )
        .with_fields(&[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ]);
    // Pods carry metadata.generation since the PodObservedGenerationTracking feature.
    pods.tracks_generation = true;
    pods.returns_deleted_object = true;
    let mut endpoints = core("endpoints", "endpoints", "Endpoints", true).with_short_names(&["ep"]);
    endpoints.allow_create_on_update = true;
    let core_events = core("events", "event", "Event", true)
        .with_short_names(&["ev"])
        .with_fields(&[
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
        ]);
    vec![
        core("configmaps", "configmap", "ConfigMap", true).with_short_names(&["cm"]),
        endpoints,
        core_events,
        returning_deleted(
            core("namespaces", "namespace", "Namespace", false)
                .with_short_names(&["ns"])
                .with_verbs(&[
                    "create", "delete", "get", "list", "patch", "update", "watch",
                ])
                .with_status()
                .with_fields(&["status.phase"]),
        ),
        core("nodes", "node", "Node", false)
            .with_short_names(&["no"])
            .with_status()
            .with_fields(&["spec.unschedulable"]),
        pods,
        core("secrets", "secret", "Secret", true).with_fields(&["type"]),
        returning_deleted(
            core("serviceaccounts", "serviceaccount", "ServiceAccount", true)
                .with_short_names(&["sa"])
                .with_subresource(
                    "token",
                    ("authentication.k8s.io", "v1", "TokenRequest"),
                    &["create"],
                ),
        ),
        returning_deleted(
            core("services", "service", "Service", true)
                .with_short_names(&["svc"])
                .with_categories(&["all"])
                .with_status()
                .with_fields(&["spec.clusterIP", "spec.type"]),
        ),
        grouped("coordination.k8s.io", "leases", "lease", "Lease"),
        grouped(
            "discovery.k8s.io",
            "endpointslices",
            "endpointslice",
            "EndpointSlice",
        ),
        grouped("events.k8s.io", "events", "event", "Event").with_short_names(&["ev"]),
        {
            let mut csr = grouped(
                "certificates.k8s.io",
                "certificatesigningrequests",
                "certificatesigningrequest",
                "CertificateSigningRequest",
            )
            .with_short_names(&["csr"])
            .with_status()
            .with_subresource(
                "approval",
                ("certificates.k8s.io", "v1", "CertificateSigningRequest"),
                &["get", "patch", "update"],
            )
            .with_fields(&["spec.signerName"]);
            csr.namespaced = false;
            csr
        },
        review(
            "authentication.k8s.io",
            "selfsubjectreviews",
            "SelfSubjectReview",
            false,
        ),
        review(
            "authentication.k8s.io",
            "tokenreviews",
            "TokenReview",
            false,
        ),
        review(
            "authorization.k8s.io",
            "localsubjectaccessreviews",
            "LocalSubjectAccessReview",
            true,
        ),
        review(
            "authorization.k8s.io",
            "selfsubjectaccessreviews",
            "SelfSubjectAccessReview",
            false,
        ),
        review(
            "authorization.k8s.io",
            "subjectaccessreviews",
            "SubjectAccessReview",
            false,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_discoverable() {
        let r = Registry::with_builtins();
        let pods = r.lookup("", "v1", "pods").expect("pods");
        assert!(pods.builtin && pods.namespaced && pods.has_status());
        assert_eq!(pods.storage_key(), "pods");
        let leases = r
            .by_kind("coordination.k8s.io/v1", "Lease")
            .expect("leases");
        assert_eq!(leases.storage_key(), "leases.coordination.k8s.io");
        assert_eq!(r.groups()[0], (String::new(), vec!["v1".to_owned()]));
        r.register(ResourceType::custom(
            "apps.openyurt.io",
            "v1beta1",
            "nodepools",
            "NodePool",
            false,
        ));
        assert!(
            !r.lookup("apps.openyurt.io", "v1beta1", "nodepools")
                .expect("crd")
                .builtin
        );
    }
}

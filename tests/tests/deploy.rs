//! The deployment manifests under `deploy/`: every document parses as its
//! k8s-openapi type with no field lost, the base renders with
//! `kubectl kustomize`, and the invariants the hub depends on hold — host
//! networking, priority, tolerations, the capabilities and mounts of the
//! eBPF redirect, probes on the hub's real defaults, flags the real binary
//! accepts, and least-privilege RBAC.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodSpec, Probe, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use yurthub::cli::Cli;
use yurthub::filters::{CACHE_AGENTS_KEY, FilterName};
use yurthub_e2e::hub::hub_binary;

const KUBECTL: &str = "/usr/bin/kubectl";
const NAMESPACE: &str = "kube-system";

// === loading ===

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// The YAML documents of a text, as JSON values (empty documents skipped).
fn documents(text: &str, origin: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize_from(doc, origin))
        .filter(|v| !v.is_null())
        .collect()
}

trait FromYaml {
    fn deserialize_from(doc: serde_yaml::Deserializer<'_>, origin: &str) -> Value;
}

impl FromYaml for Value {
    fn deserialize_from(doc: serde_yaml::Deserializer<'_>, origin: &str) -> Value {
        serde::Deserialize::deserialize(doc)
            .unwrap_or_else(|e| panic!("{origin}: invalid yaml: {e}"))
    }
}

/// Parses a document as `T` and checks that serialising it gives the
/// document back: a misspelt or misplaced field (which serde would silently
/// ignore) fails here.
fn typed<T: DeserializeOwned + Serialize>(doc: &Value, origin: &str) -> T {
    let value: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{origin}: not a valid {}: {e}", std::any::type_name::<T>()));
    let back = serde_json::to_value(&value).expect("serialise");
    assert_eq!(
        &back,
        doc,
        "{origin}: fields were lost or changed parsing as {} (typo or wrong place?)",
        std::any::type_name::<T>()
    );
    value
}

/// The Kubernetes objects of a set of documents, typed.
#[derive(Default)]
struct Objects {
    daemon_sets: BTreeMap<String, DaemonSet>,
    deployments: BTreeMap<String, Deployment>,
    service_accounts: BTreeMap<String, ServiceAccount>,
    cluster_roles: BTreeMap<String, ClusterRole>,
    cluster_role_bindings: BTreeMap<String, ClusterRoleBinding>,
    roles: BTreeMap<String, Role>,
    role_bindings: BTreeMap<String, RoleBinding>,
    config_maps: BTreeMap<String, ConfigMap>,
    pods: BTreeMap<String, Pod>,
}

fn name_of(doc: &Value) -> String {
    doc.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

impl Objects {
    /// Adds a Kubernetes object; panics on a kind the deployment should not have.
    fn add(&mut self, doc: &Value, origin: &str) {
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
        let name = name_of(doc);
        assert!(!name.is_empty(), "{origin}: {kind} without metadata.name");
        match kind {
            "DaemonSet" => drop(self.daemon_sets.insert(name, typed(doc, origin))),
            "Deployment" => drop(self.deployments.insert(name, typed(doc, origin))),
            "ServiceAccount" => drop(self.service_accounts.insert(name, typed(doc, origin))),
            "ClusterRole" => drop(self.cluster_roles.insert(name, typed(doc, origin))),
            "ClusterRoleBinding" => {
                drop(self.cluster_role_bindings.insert(name, typed(doc, origin)))
            }
            "Role" => drop(self.roles.insert(name, typed(doc, origin))),
            "RoleBinding" => drop(self.role_bindings.insert(name, typed(doc, origin))),
            "ConfigMap" => drop(self.config_maps.insert(name, typed(doc, origin))),
            "Pod" => drop(self.pods.insert(name, typed(doc, origin))),
            other => panic!("{origin}: unexpected kind {other:?} in deploy/"),
        }
    }
}

/// Every file under deploy/: Kubernetes objects (typed), kustomizations and
/// the kubelet kubeconfig example (checked as what they are).
struct Tree {
    objects: Objects,
    kustomizations: BTreeMap<PathBuf, Value>,
    kubeconfigs: BTreeMap<PathBuf, Value>,
}

fn load_tree() -> Tree {
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    assert!(
        !files.is_empty(),
        "no manifests under {}",
        deploy_dir().display()
    );
    let mut tree = Tree {
        objects: Objects::default(),
        kustomizations: BTreeMap::new(),
        kubeconfigs: BTreeMap::new(),
    };
    for file in files {
        let origin = file.display().to_string();
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {origin}: {e}"));
        for doc in documents(&text, &origin) {
            match doc.get("kind").and_then(Value::as_str) {
                Some("Kustomization") => drop(tree.kustomizations.insert(file.clone(), doc)),
                Some("Config") => drop(tree.kubeconfigs.insert(file.clone(), doc)),
                _ => tree.objects.add(&doc, &origin),
            }
        }
    }
    tree
}

// === running things, bounded ===

/// Runs a command with a deadline; returns (success, stdout, stderr).
fn run_bounded(mut command: Command, limit: Duration) -> (bool, String, String) {
    let what = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let pipe_reader = |pipe: Option<Box<dyn Read + Send>>| {
        let mut pipe = pipe.expect("piped");
        std::thread::spawn(move || {
            let mut text = String::new();
            pipe.read_to_string(&mut text).map(|_| text)
        })
    };
    let stdout = pipe_reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = pipe_reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout
        .join()
        .expect("stdout reader")
        .expect("stdout is utf-8");
    let stderr = stderr
        .join()
        .expect("stderr reader")
        .expect("stderr is utf-8");
    (status.success(), stdout, stderr)
}

fn kustomize(dir: &Path) -> Objects {
    assert!(
        Path::new(KUBECTL).exists(),
        "{KUBECTL} is missing: the rendering of deploy/ cannot be checked"
    );
    let mut command = Command::new(KUBECTL);
    command.arg("kustomize").arg(dir);
    let (ok, stdout, stderr) = run_bounded(command, Duration::from_secs(60));
    assert!(ok, "kubectl kustomize {} failed:\n{stderr}", dir.display());
    let mut objects = Objects::default();
    let origin = format!("kubectl kustomize {}", dir.display());
    for doc in documents(&stdout, &origin) {
        objects.add(&doc, &origin);
    }
    objects
}

fn hub_help(args: &[&str]) -> String {
    let mut command = Command::new(hub_binary());
    command.args(args).arg("--help");
    let (ok, stdout, stderr) = run_bounded(command, Duration::from_secs(30));
    assert!(ok, "yurthub-under-test {args:?} --help failed:\n{stderr}");
    stdout
}

/// The `--flag` names of an argument list.
fn flags(args: &[String]) -> Vec<String> {
    args.iter()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_owned())
        .collect()
}

fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let prefix = format!("--{flag}=");
    args.iter().find_map(|a| a.strip_prefix(prefix.as_str()))
}

// === accessors ===

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec.template.spec.as_ref().expect("pod spec")
}

fn only_container(spec: &PodSpec) -> &Container {
    assert_eq!(spec.containers.len(), 1, "one container");
    &spec.containers[0]
}

fn args(c: &Container) -> Vec<String> {
    c.args.clone().unwrap_or_default()
}

fn http_probe(probe: Option<&Probe>, what: &str) -> (String, String, i32) {
    let get = probe
        .and_then(|p| p.http_get.as_ref())
        .unwrap_or_else(|| panic!("{what}: an httpGet probe"));
    let port = match &get.port {
        IntOrString::Int(p) => *p,
        IntOrString::String(p) => panic!("{what}: named port {p} (hostNetwork: use the number)"),
    };
    (
        get.host.clone().unwrap_or_default(),
        get.path.clone().unwrap_or_default(),
        port,
    )
}

/// Mount path → (hostPath, read-only, propagation) for a container.
fn host_mounts(spec: &PodSpec, c: &Container) -> BTreeMap<String, (String, bool, String)> {
    let volumes: BTreeMap<&str, &str> = spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| Some((v.name.as_str(), v.host_path.as_ref()?.path.as_str())))
        .collect();
    c.volume_mounts
        .iter()
        .flatten()
        .filter_map(|m| {
            let host = volumes.get(m.name.as_str())?;
            Some((
                m.mount_path.clone(),
                (
                    (*host).to_owned(),
                    m.read_only.unwrap_or(false),
                    m.mount_propagation.clone().unwrap_or_default(),
                ),
            ))
        })
        .collect()
}

/// The container path `path` is under a mount of `host` (checked by prefix).
fn assert_under_mount(
    mounts: &BTreeMap<String, (String, bool, String)>,
    path: &str,
    host: &str,
    read_only: bool,
) {
    let (mount, (host_path, ro, _)) = mounts
        .iter()
        .filter(|(m, _)| Path::new(path).starts_with(m.as_str()))
        .max_by_key(|(m, _)| m.len())
        .unwrap_or_else(|| panic!("{path} is on no host mount: {mounts:?}"));
    assert_eq!(
        host_path, host,
        "{path} (mounted at {mount}) comes from the host's {host}"
    );
    assert_eq!(*ro, read_only, "{path}: read-only should be {read_only}");
}

fn names<T>(m: &BTreeMap<String, T>) -> Vec<String> {
    m.keys().cloned().collect()
}

// === tests ===

#[test]
fn every_manifest_parses_as_its_kubernetes_type() {
    let tree = load_tree();
    let o = &tree.objects;
    assert!(o.daemon_sets.contains_key("yurthub"));
    assert!(o.daemon_sets.contains_key("yurthub-cleanup"));
    assert!(o.deployments.contains_key("yurthub-csr-approver"));
    assert!(o.config_maps.contains_key("yurt-hub-cfg"));
    assert!(o.config_maps.contains_key("yurthub-env"));
    assert!(o.pods.contains_key("yurthub"), "the static pod");
    assert_eq!(tree.kustomizations.len(), 2, "the base and cleanup/");
    assert_eq!(tree.kubeconfigs.len(), 1, "the kubelet kubeconfig");
    // Every kustomization lists files that exist.
    for (path, k) in &tree.kustomizations {
        let dir = path.parent().expect("kustomization dir");
        for r in k
            .get("resources")
            .and_then(Value::as_array)
            .expect("resources")
        {
            let r = r.as_str().expect("resource path");
            assert!(
                dir.join(r).is_file(),
                "{}: resource {r} is missing",
                path.display()
            );
        }
    }
}

#[test]
fn the_base_renders_with_kubectl_kustomize() {
    let rendered = kustomize(&deploy_dir());
    assert_eq!(
        names(&rendered.daemon_sets),
        vec!["yurthub"],
        "cleanup is not part of the base"
    );
    assert_eq!(names(&rendered.deployments), vec!["yurthub-csr-approver"]);
    assert_eq!(
        names(&rendered.service_accounts),
        vec!["yurthub", "yurthub-csr-approver"]
    );
    assert_eq!(
        names(&rendered.config_maps),
        vec!["yurt-hub-cfg", "yurthub-env"]
    );
    let namespaced = rendered
        .daemon_sets
        .values()
        .map(|o| &o.metadata)
        .chain(rendered.deployments.values().map(|o| &o.metadata))
        .chain(rendered.service_accounts.values().map(|o| &o.metadata))
        .chain(rendered.config_maps.values().map(|o| &o.metadata))
        .chain(rendered.roles.values().map(|o| &o.metadata))
        .chain(rendered.role_bindings.values().map(|o| &o.metadata));
    for meta in namespaced {
        assert_eq!(
            meta.namespace.as_deref(),
            Some(NAMESPACE),
            "{:?}",
            meta.name
        );
    }
    // The image transformer reached every container.
    let ds = &rendered.daemon_sets["yurthub"];
    let dep = &rendered.deployments["yurthub-csr-approver"];
    for image in [
        only_container(pod_spec(ds)).image.clone(),
        dep.spec
            .template
            .spec
            .as_ref()
            .map(|s| s.containers[0].image.clone())
            .expect("spec"),
    ] {
        let image = image.unwrap_or_default();
        assert!(
            image.contains('/') && image.contains(':'),
            "image not set by kustomize: {image:?}"
        );
    }
    // Service-account subjects point at the rendered namespace.
    for crb in rendered.cluster_role_bindings.values() {
        for s in crb
            .subjects
            .iter()
            .flatten()
            .filter(|s| s.kind == "ServiceAccount")
        {
            assert_eq!(
                s.namespace.as_deref(),
                Some(NAMESPACE),
                "{:?}",
                crb.metadata.name
            );
        }
    }
    let cleanup = kustomize(&deploy_dir().join("cleanup"));
    assert_eq!(names(&cleanup.daemon_sets), vec!["yurthub-cleanup"]);
}

#[test]
fn the_daemonset_runs_on_every_node_with_host_networking() {
    let tree = load_tree();
    let ds = &tree.objects.daemon_sets["yurthub"];
    let spec = pod_spec(ds);
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(
        spec.dns_policy.as_deref(),
        Some("Default"),
        "the hub must not depend on cluster DNS, which depends on the hub"
    );
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert!(
        spec.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "tolerates every taint: {:?}",
        spec.tolerations
    );
    let strategy = ds.spec.update_strategy.as_ref().expect("update strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let c = only_container(spec);
    // Upgrades keep the redirect: the old pod leaves its programs pinned and
    // no preStop hook unloads them.
    let a = args(c);
    assert_eq!(flag_value(&a, "keep-redirect-on-exit"), Some("true"));
    assert_eq!(flag_value(&a, "redirect-mode"), Some("ebpf"));
    let pre_stop = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref());
    assert!(
        pre_stop.is_none(),
        "a preStop hook would run on every rolling update: {pre_stop:?}"
    );
    // NODE_NAME from the downward API.
    let env = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME");
    let field = env
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");
    // The hub never uses a service-account token.
    assert_eq!(spec.automount_service_account_token, Some(false));
    let sa = spec
        .service_account_name
        .as_deref()
        .expect("service account");
    assert_eq!(
        tree.objects.service_accounts[sa].automount_service_account_token,
        Some(false)
    );
}

#[test]
fn the_daemonset_has_what_the_redirect_needs_and_no_more() {
    let tree = load_tree();
    let spec = pod_spec(&tree.objects.daemon_sets["yurthub"]);
    let c = only_container(spec);
    let sc = c.security_context.as_ref().expect("securityContext");
    let caps = sc.capabilities.as_ref().expect("capabilities");
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    let privileged = sc.privileged == Some(true);
    if !privileged {
        for needed in ["BPF", "NET_ADMIN", "SYS_ADMIN"] {
            assert!(
                added.contains(needed),
                "capability {needed} is needed: {added:?}"
            );
        }
        assert_eq!(
            caps.drop.as_deref(),
            Some(&["ALL".to_owned()][..]),
            "everything else dropped"
        );
    }
    let allowed: BTreeSet<&str> =
        ["BPF", "NET_ADMIN", "SYS_ADMIN", "PERFMON", "SYS_RESOURCE"].into();
    assert!(
        added.is_subset(&allowed),
        "unexplained capabilities: {:?}",
        added.difference(&allowed)
    );

    let a = args(c);
    let mounts = host_mounts(spec, c);
    let bpffs = flag_value(&a, "bpffs").unwrap_or("/sys/fs/bpf");
    let (host, _, propagation) = mounts
        .get(bpffs)
        .unwrap_or_else(|| panic!("bpffs {bpffs} mounted: {mounts:?}"));
    assert_eq!(host, "/sys/fs/bpf");
    assert!(
        propagation == "HostToContainer" || (propagation == "Bidirectional" && privileged),
        "pins must be the host's: propagation {propagation:?}"
    );
    let cgroup =
        flag_value(&a, "redirect-cgroup").expect("--redirect-cgroup names the host's cgroup root");
    assert_under_mount(&mounts, cgroup, "/sys/fs/cgroup", true);
    assert_ne!(
        cgroup, "/sys/fs/cgroup",
        "inside the pod that is its own cgroup namespace"
    );
    assert_under_mount(
        &mounts,
        flag_value(&a, "root-dir").expect("--root-dir"),
        "/var/lib/yurthub",
        false,
    );
    assert_under_mount(
        &mounts,
        flag_value(&a, "disk-cache-path").expect("--disk-cache-path"),
        "/etc/kubernetes/cache",
        false,
    );
    // Token bootstrap: the bootstrap kubeconfig lives in the root dir.
    assert_eq!(flag_value(&a, "bootstrap-mode"), Some("token"));
    assert_under_mount(
        &mounts,
        flag_value(&a, "bootstrap-file").expect("--bootstrap-file"),
        "/var/lib/yurthub",
        false,
    );
}

/// The DaemonSet's arguments with `$(VAR)` references replaced by sample
/// values, as the kubelet would expand them.
fn expanded_args(c: &Container) -> Vec<String> {
    let defined: BTreeSet<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
    args(c)
        .into_iter()
        .map(|a| {
            let mut out = a.clone();
            while let Some(start) = out.find("$(") {
                let end = out[start..]
                    .find(')')
                    .map(|e| start + e)
                    .expect("closing parenthesis");
                let var = &out[start + 2..end];
                assert!(
                    defined.contains(var),
                    "{a}: $({var}) is not in the container's env"
                );
                let sample = match var {
                    "SERVER_ADDR" => "https://10.0.0.1:6443",
                    "WORKING_MODE" => "edge",
                    "POD_NAMESPACE" => NAMESPACE,
                    _ => "sample",
                };
                out.replace_range(start..=end, sample);
            }
            out
        })
        .collect()
}

#[test]
fn probes_and_flags_match_the_real_binary() {
    let tree = load_tree();
    let spec = pod_spec(&tree.objects.daemon_sets["yurthub"]);
    let c = only_container(spec);

    // Every flag is one the binary accepts: its --help, and its parser.
    let help = hub_help(&[]);
    for flag in flags(&args(c)) {
        assert!(
            help.contains(&format!("--{flag} ")),
            "--{flag} is not a flag of yurthub:\n{help}"
        );
    }
    let mut argv = vec!["yurthub".to_owned()];
    argv.extend(expanded_args(c));
    let cli = Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("yurthub rejects the DaemonSet args: {e}"));
    assert!(cli.command.is_none(), "the DaemonSet runs the daemon");
    let run = cli.run;

    // Probes hit the hub server where the hub binds it.
    for (what, probe, path) in [
        ("liveness", c.liveness_probe.as_ref(), "/v1/healthz"),
        ("startup", c.startup_probe.as_ref(), "/v1/healthz"),
        ("readiness", c.readiness_probe.as_ref(), "/v1/readyz"),
    ] {
        if what == "startup" && probe.is_none() {
            continue;
        }
        let (host, got_path, port) = http_probe(probe, what);
        assert_eq!(got_path, path, "{what} path");
        assert_eq!(host, run.bind_address, "{what} host is --bind-address");
        assert_eq!(port, run.serve_port, "{what} port is --serve-port");
    }
    assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some());
    // ... which is where the hub serves by default.
    let defaults = Cli::try_parse_from(["yurthub"])
        .expect("defaults parse")
        .run;
    assert_eq!(
        (run.bind_address.as_str(), run.serve_port),
        (defaults.bind_address.as_str(), defaults.serve_port),
        "the hub server stays on its default 127.0.0.1:10267"
    );

    // The uninstall DaemonSet runs `yurthub cleanup` with flags it accepts,
    // on the same paths as the hub.
    let cleanup = pod_spec(&tree.objects.daemon_sets["yurthub-cleanup"]);
    let init = cleanup
        .init_containers
        .as_ref()
        .and_then(|i| i.first())
        .expect("cleanup init container");
    let cleanup_args = args(init);
    assert_eq!(cleanup_args.first().map(String::as_str), Some("cleanup"));
    let cleanup_help = hub_help(&["cleanup"]);
    for flag in flags(&cleanup_args) {
        assert!(
            cleanup_help.contains(&format!("--{flag} ")),
            "--{flag} is not a flag of yurthub cleanup"
        );
    }
    for flag in [
        "bpffs",
        "redirect-pin-dir",
        "redirect-cgroup",
        "hub-address",
        "hub-address-link",
    ] {
        assert_eq!(
            flag_value(&cleanup_args, flag),
            flag_value(&args(c), flag),
            "cleanup --{flag} matches the hub"
        );
    }
    let mut argv = vec!["yurthub".to_owned()];
    argv.extend(cleanup_args);
    let parsed = Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("yurthub rejects the cleanup args: {e}"));
    assert!(parsed.command.is_some(), "cleanup is a subcommand");
}

/// A rule as (apiGroups, resources, verbs, resourceNames), each sorted.
type RuleShape = (Vec<String>, Vec<String>, Vec<String>, Vec<String>);

fn read_only(rules: &[PolicyRule]) -> bool {
    rules.iter().all(|r| {
        r.verbs
            .iter()
            .all(|v| ["get", "list", "watch"].contains(&v.as_str()))
    })
}

fn no_wildcards(rules: &[PolicyRule], who: &str) {
    for r in rules {
        let all = r
            .verbs
            .iter()
            .chain(r.resources.iter().flatten())
            .chain(r.api_groups.iter().flatten());
        for item in all {
            assert_ne!(item, "*", "{who}: wildcard in {r:?}");
        }
    }
}

#[test]
fn rbac_is_least_privilege() {
    let tree = load_tree();
    let o = &tree.objects;

    // The hub: reads only, no secrets, no wildcards.
    let hub = o.cluster_roles["yurthub"].rules.clone().unwrap_or_default();
    no_wildcards(&hub, "yurthub ClusterRole");
    assert!(read_only(&hub), "the hub's ClusterRole only reads: {hub:?}");
    assert!(
        hub.iter().all(|r| !r
            .resources
            .iter()
            .flatten()
            .any(|res| res == "secrets" || res == "configmaps")),
        "no secrets, and configmaps only through the namespaced Role"
    );
    let config_role = o.roles["yurthub-config"].rules.clone().unwrap_or_default();
    no_wildcards(&config_role, "yurthub-config Role");
    assert!(read_only(&config_role));
    assert!(
        config_role
            .iter()
            .all(|r| r.resources.as_deref() == Some(&["configmaps".to_owned()][..]))
    );
    for binding in [
        &o.cluster_role_bindings["yurthub"].subjects,
        &o.role_bindings["yurthub-config"].subjects,
    ] {
        for s in binding.iter().flatten() {
            assert_eq!(s.kind, "Group", "the hub authenticates as the node: {s:?}");
            assert!(
                ["openyurt:yurthub", "system:nodes"].contains(&s.name.as_str()),
                "{s:?}"
            );
        }
    }

    // Offline authentication: the hub's groups may fetch the issuer keys
    // through the built-in role (bound only to service accounts by default).
    let discovery = &o.cluster_role_bindings["yurthub-issuer-discovery"];
    assert_eq!(discovery.role_ref.kind, "ClusterRole");
    assert_eq!(
        discovery.role_ref.name,
        "system:service-account-issuer-discovery"
    );
    let mut groups: Vec<&str> = discovery
        .subjects
        .iter()
        .flatten()
        .map(|s| {
            assert_eq!(s.kind, "Group", "{s:?}");
            s.name.as_str()
        })
        .collect();
    groups.sort();
    assert_eq!(groups, ["openyurt:yurthub", "system:nodes"]);

    // The CSR approver: exactly the rules approving needs.
    let mut approver: Vec<RuleShape> = o.cluster_roles["yurthub-csr-approver"]
        .rules
        .iter()
        .flatten()
        .map(|r| {
            let sorted = |v: Option<&Vec<String>>| {
                let mut v = v.cloned().unwrap_or_default();
                v.sort();
                v
            };
            (
                sorted(r.api_groups.as_ref()),
                sorted(r.resources.as_ref()),
                sorted(Some(&r.verbs)),
                sorted(r.resource_names.as_ref()),
            )
        })
        .collect();
    approver.sort();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut want = vec![
        (
            s(&["authorization.k8s.io"]),
            s(&["subjectaccessreviews"]),
            s(&["create"]),
            s(&[]),
        ),
        (s(&[""]), s(&["nodes"]), s(&["get"]), s(&[])),
        (s(&[""]), s(&["services"]), s(&["get"]), s(&["kubernetes"])),
        (
            s(&["", "events.k8s.io"]),
            s(&["events"]),
            s(&["create", "patch"]),
            s(&[]),
        ),
        (
            s(&["certificates.k8s.io"]),
            s(&["certificatesigningrequests"]),
            s(&["get", "list", "watch"]),
            s(&[]),
        ),
        (
            s(&["certificates.k8s.io"]),
            s(&["certificatesigningrequests/approval"]),
            s(&["update"]),
            s(&[]),
        ),
        (
            s(&["certificates.k8s.io"]),
            s(&["signers"]),
            s(&["approve"]),
            s(&[
                "kubernetes.io/kube-apiserver-client",
                "kubernetes.io/kubelet-serving",
            ]),
        ),
    ];
    want.sort();
    assert_eq!(approver, want, "the approver's ClusterRole");
    let binding = &o.cluster_role_bindings["yurthub-csr-approver"];
    assert_eq!(binding.role_ref.name, "yurthub-csr-approver");
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (subjects[0].kind.as_str(), subjects[0].name.as_str()),
        ("ServiceAccount", "yurthub-csr-approver")
    );
    let dep = o.deployments["yurthub-csr-approver"]
        .spec
        .template
        .spec
        .as_ref()
        .expect("pod spec");
    assert_eq!(
        dep.service_account_name.as_deref(),
        Some("yurthub-csr-approver")
    );
    assert_ne!(
        dep.host_network,
        Some(true),
        "the approver needs no host access"
    );
    let c = &dep.containers[0];
    assert_eq!(args(c), vec!["approve-csrs".to_owned()]);
    // ...a subcommand the binary really has.
    let help = std::process::Command::new(yurthub_e2e::hub::hub_binary())
        .args(["approve-csrs", "--help"])
        .output()
        .expect("run yurthub approve-csrs --help");
    assert!(
        help.status.success(),
        "{}",
        String::from_utf8_lossy(&help.stderr)
    );
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert!(
        sc.capabilities
            .as_ref()
            .and_then(|c| c.add.as_ref())
            .is_none_or(Vec::is_empty)
    );

    // Every binding refers to a role that exists (or a built-in one).
    for b in o.cluster_role_bindings.values() {
        assert!(
            o.cluster_roles.contains_key(&b.role_ref.name)
                || b.role_ref.name == "system:service-account-issuer-discovery",
            "{:?}",
            b.metadata.name
        );
    }
    for b in o.role_bindings.values() {
        assert!(
            o.roles.contains_key(&b.role_ref.name),
            "{:?}",
            b.metadata.name
        );
    }
}

#[test]
fn yurt_hub_cfg_is_labelled_and_names_real_filters() {
    let tree = load_tree();
    let cm = &tree.objects.config_maps["yurt-hub-cfg"];
    let label = cm
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("openyurt.io/configmap-name"));
    assert_eq!(
        label.map(String::as_str),
        Some("yurt-hub-cfg"),
        "invisible to the hub without the label"
    );
    let data = cm.data.as_ref().expect("data");
    assert!(data.contains_key(CACHE_AGENTS_KEY));
    for key in data.keys().filter(|k| k.as_str() != CACHE_AGENTS_KEY) {
        assert!(
            FilterName::parse(key).is_some(),
            "{key} is neither cache_agents nor a filter"
        );
    }
}

#[test]
fn the_kubelet_kubeconfig_points_at_the_hub_proxy() {
    let tree = load_tree();
    let defaults = Cli::try_parse_from(["yurthub"])
        .expect("defaults parse")
        .run;
    let want = format!(
        "http://{}:{}",
        defaults.bind_proxy_address, defaults.proxy_port
    );
    assert_eq!(want, "http://127.0.0.1:10261");
    let (path, config) = tree.kubeconfigs.iter().next().expect("kubeconfig example");
    let clusters = config
        .get("clusters")
        .and_then(Value::as_array)
        .expect("clusters");
    assert_eq!(clusters.len(), 1, "{}", path.display());
    assert_eq!(
        clusters[0]
            .pointer("/cluster/server")
            .and_then(Value::as_str),
        Some(want.as_str())
    );
    for user in config
        .get("users")
        .and_then(Value::as_array)
        .expect("users")
    {
        let creds = user.get("user").and_then(Value::as_object).expect("user");
        assert!(
            creds.is_empty(),
            "no credentials: the hub authenticates upstream ({creds:?})"
        );
    }
    let current = config
        .get("current-context")
        .and_then(Value::as_str)
        .expect("current-context");
    assert!(
        config
            .get("contexts")
            .and_then(Value::as_array)
            .expect("contexts")
            .iter()
            .any(|c| c.get("name").and_then(Value::as_str) == Some(current)),
        "current-context exists"
    );
}

// === the static pod and the systemd unit (autonomy across an offline reboot) ===

fn static_pod(tree: &Tree) -> &Pod {
    &tree.objects.pods["yurthub"]
}

#[test]
fn the_static_pod_is_the_daemonsets_hub_without_the_apiserver() {
    let tree = load_tree();
    let pod = static_pod(&tree);
    assert_eq!(pod.metadata.namespace.as_deref(), Some(NAMESPACE));
    let spec = pod.spec.as_ref().expect("spec");
    let ds_spec = pod_spec(&tree.objects.daemon_sets["yurthub"]);
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(spec.dns_policy.as_deref(), Some("Default"));
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    // A mirror pod may not use a ServiceAccount, ConfigMaps or Secrets, and
    // nothing may come from the API: kubelet starts it with the cloud away.
    assert!(spec.service_account_name.is_none());
    for v in spec.volumes.iter().flatten() {
        assert!(
            v.host_path.is_some(),
            "{}: only hostPath volumes in a static pod",
            v.name
        );
    }
    let c = only_container(spec);
    let ds = only_container(ds_spec);
    for e in c.env.iter().flatten() {
        let from = e.value_from.as_ref();
        assert!(
            from.is_none_or(|f| f.config_map_key_ref.is_none() && f.secret_key_ref.is_none()),
            "{}: env from the API",
            e.name
        );
    }
    // The DaemonSet's container: capabilities, security context, probes,
    // mounts and the host paths behind them.
    assert_eq!(c.security_context, ds.security_context);
    assert_eq!(c.liveness_probe, ds.liveness_probe);
    assert_eq!(c.readiness_probe, ds.readiness_probe);
    assert_eq!(c.startup_probe, ds.startup_probe);
    assert_eq!(host_mounts(spec, c), host_mounts(ds_spec, ds));
    for (what, probe, path) in [
        ("liveness", c.liveness_probe.as_ref(), "/v1/healthz"),
        ("readiness", c.readiness_probe.as_ref(), "/v1/readyz"),
    ] {
        assert_eq!(http_probe(probe, what).1, path);
    }
    // The same flags; the values the DaemonSet takes from the API are literal.
    let (a, ds_a) = (args(c), args(ds));
    assert_eq!(flags(&a), flags(&ds_a), "same flags, same order");
    for (mine, theirs) in a.iter().zip(&ds_a) {
        if !theirs.contains("$(") {
            assert_eq!(mine, theirs);
        } else {
            assert!(
                !mine.contains("$("),
                "{mine}: no env expansion in a static pod"
            );
        }
    }
    // Upgrades keep the pinned programs: the old hub leaves them in place.
    assert_eq!(flag_value(&a, "keep-redirect-on-exit"), Some("true"));
    let pre_stop = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref());
    assert!(pre_stop.is_none(), "{pre_stop:?}");
    // Not part of the Kustomize base (kubelet reads it from disk).
    let base = &tree.kustomizations[&deploy_dir().join("kustomization.yaml")];
    assert!(
        !base.to_string().contains("static/"),
        "static/ is not applied to the cluster"
    );
}

/// Runs the real binary and returns (exit code, stdout, stderr).
fn hub_run(args: &[String]) -> (Option<i32>, String, String) {
    let mut command = Command::new(hub_binary());
    command.args(args);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run yurthub");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "yurthub {args:?} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The real binary checks `args` as at start (`--dry-run`).
fn assert_binary_accepts(args: &[String], what: &str) -> String {
    let mut a = args.to_vec();
    a.push("--dry-run".into());
    let (code, stdout, stderr) = hub_run(&a);
    assert_eq!(code, Some(0), "yurthub rejects {what}: {stderr}");
    stdout
}

#[test]
fn the_static_manifests_flags_are_accepted_by_the_real_binary() {
    let tree = load_tree();
    let template = args(only_container(
        static_pod(&tree).spec.as_ref().expect("spec"),
    ));
    let out = assert_binary_accepts(&template, "the static pod template's args");
    assert!(out.contains("keep_redirect_on_exit: true"), "{out}");
    // The dry run is a real check: a bad value is refused, naming the flag.
    let mut bad = template.clone();
    bad.push("--server-addr=http://10.0.0.1:6443".into());
    let mut a = bad.clone();
    a.push("--dry-run".into());
    let (code, _, stderr) = hub_run(&a);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("--server-addr"), "{stderr}");

    // install-static writes the template with this node's flags, through the
    // real binary, and what it writes parses as a Pod and is accepted too.
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = dir.path().join("manifests");
    let (code, _, stderr) = hub_run(&[
        "install-static".into(),
        "--node-name=edge-7".into(),
        "--server-addr=https://10.0.0.1:6443,https://10.0.0.2:6443".into(),
        format!("--manifests-dir={}", manifests.display()),
        "--image=registry.example/yurthub:1.2.3".into(),
        "--".into(),
        "--redirect-cgroup=/host/sys/fs/cgroup/unified".into(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let path = manifests.join("yurthub.yaml");
    let text = std::fs::read_to_string(&path).expect("manifest written");
    let docs = documents(&text, "install-static output");
    assert_eq!(docs.len(), 1);
    let pod: Pod = typed(&docs[0], "install-static output");
    let c = only_container(pod.spec.as_ref().expect("spec"));
    assert_eq!(c.image.as_deref(), Some("registry.example/yurthub:1.2.3"));
    let a = args(c);
    assert_eq!(flag_value(&a, "node-name"), Some("edge-7"));
    assert_eq!(
        flag_value(&a, "redirect-cgroup"),
        Some("/host/sys/fs/cgroup/unified")
    );
    assert_eq!(
        flags(&a).len(),
        flags(&template).len(),
        "replaced, not added"
    );
    let out = assert_binary_accepts(&a, "install-static's manifest");
    assert!(out.contains("edge-7"), "{out}");
    // ...and refuses to write a manifest the hub would reject.
    let (code, _, stderr) = hub_run(&[
        "install-static".into(),
        "--node-name=edge-7".into(),
        "--server-addr=http://10.0.0.1:6443".into(),
        format!("--manifests-dir={}", manifests.display()),
    ]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        std::fs::read_to_string(&path).expect("kept") == text,
        "the old manifest stays"
    );
}

/// The systemd unit's ExecStart, continuation lines joined, `${VAR}`
/// expanded from `env` as systemd would.
fn unit_exec_start(unit: &str, env: &BTreeMap<&str, &str>) -> Vec<String> {
    let joined = unit.replace("\\\n", " ");
    let line = joined
        .lines()
        .find_map(|l| l.trim().strip_prefix("ExecStart="))
        .expect("ExecStart");
    line.split_whitespace()
        .map(|w| {
            let mut w = w.to_owned();
            while let Some(start) = w.find("${") {
                let end = w[start..].find('}').expect("closing brace") + start;
                let var = w[start + 2..end].to_owned();
                let value = env
                    .get(var.as_str())
                    .unwrap_or_else(|| panic!("${{{var}}} is not in the unit's environment file"));
                w.replace_range(start..=end, value);
            }
            w
        })
        .collect()
}

#[test]
fn the_systemd_unit_runs_the_same_hub() {
    let path = deploy_dir().join("static/yurthub.service");
    let unit = std::fs::read_to_string(&path).expect("yurthub.service");
    let env = BTreeMap::from([
        ("SERVER_ADDR", "https://10.0.0.1:6443"),
        ("NODE_NAME", "edge-1"),
    ]);
    // The environment file the unit documents defines what ExecStart uses.
    for var in env.keys() {
        assert!(unit.contains(&format!("#   {var}=")), "{var} documented");
    }
    let exec = unit_exec_start(&unit, &env);
    assert_eq!(exec[0], "/usr/local/bin/yurthub");
    let a: Vec<String> = exec[1..].to_vec();
    let out = assert_binary_accepts(&a, "the systemd unit's ExecStart");
    assert!(out.contains("edge-1"), "{out}");
    assert_eq!(flag_value(&a, "keep-redirect-on-exit"), Some("true"));
    // The static pod's flags, minus the container's view of the host cgroup
    // (the service sees the host's own root, the default).
    let tree = load_tree();
    let pod_flags: Vec<String> = flags(&args(only_container(
        static_pod(&tree).spec.as_ref().expect("spec"),
    )))
    .into_iter()
    .filter(|f| f != "redirect-cgroup")
    .collect();
    assert_eq!(flags(&a), pod_flags);
    for line in [
        "Before=kubelet.service",
        "Restart=always",
        "WantedBy=multi-user.target",
    ] {
        assert!(unit.lines().any(|l| l.trim() == line), "{line}");
    }
    assert!(
        unit.lines()
            .any(|l| l.trim() == "RestartPreventExitStatus=64"),
        "bad flags (exit 64) are not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_static_pods_command_serves_from_an_offline_cache() {
    use yurthub_e2e::hub::{
        Hub, HubFiles, HubProcess, NODE, eventually, free_port, get, plain_client,
    };
    let pki = std::sync::Arc::new(yurthub_e2e::pki::TestPki::new().expect("pki"));
    let api = yurthub_e2e::apiserver::ApiServer::builder()
        .pki(pki.clone())
        .start()
        .await
        .expect("double");
    api.create(serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}))
        .expect("node");
    for name in ["web-0", "web-1"] {
        api.create(serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}]}}))
            .expect("pod");
    }
    // Online: kubelet's pods and node go into the cache.
    let files = HubFiles::new(&pki);
    let online = files.args(&[api.url()], &[]);
    let hub = Hub::start(&online).await;
    let c = plain_client();
    let pods_path = format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}");
    let kubelet = "kubelet/v1.34.0 (linux/amd64) kubernetes/abcdef";
    let r = get(&c, &format!("{}{pods_path}", hub.proxy_url()), kubelet).await;
    assert_eq!(r.status, http::StatusCode::OK, "{}", r.text());
    let r = get(
        &c,
        &format!("{}/api/v1/nodes/{NODE}", hub.proxy_url()),
        kubelet,
    )
    .await;
    assert_eq!(r.status, http::StatusCode::OK, "{}", r.text());
    let hub_url = hub.hub_url();
    eventually(Duration::from_secs(15), "pods and node cached", || async {
        get(&c, &format!("{hub_url}/v1/cache"), "test").await.json()["objects"]
            .as_u64()
            .unwrap_or(0)
            >= 3
    })
    .await;
    hub.stop().await;
    api.shutdown().await;

    // The manifest for this node, written by install-static. What differs
    // on a test machine is passed the way an operator would: after `--`
    // (this test's PKI and paths, free ports, no eBPF).
    let keep = |f: &str| {
        online
            .iter()
            .find(|a| a.starts_with(&format!("--{f}=")))
            .cloned()
            .unwrap_or_else(|| panic!("--{f} in the test args"))
    };
    let (serve, proxy) = (free_port(), free_port());
    let manifests = files.dir.path().join("manifests");
    let mut install: Vec<String> = vec![
        "install-static".into(),
        format!("--node-name={NODE}"),
        format!("--server-addr={}", api.url()),
        format!("--manifests-dir={}", manifests.display()),
        "--".into(),
    ];
    for f in [
        "bootstrap-mode",
        "kubelet-client-certificate",
        "kubelet-ca-file",
        "tls-cert-file",
        "tls-private-key-file",
        "root-dir",
        "disk-cache-path",
        "hub-address",
        "redirect-mode",
    ] {
        install.push(keep(f));
    }
    install.extend([
        format!("--serve-port={serve}"),
        format!("--proxy-port={proxy}"),
        format!("--proxy-secure-port={}", free_port()),
        format!("--multiplexer-port={}", free_port()),
    ]);
    let (code, _, stderr) = hub_run(&install);
    assert_eq!(code, Some(0), "{stderr}");
    let text = std::fs::read_to_string(manifests.join("yurthub.yaml")).expect("manifest");
    let docs = documents(&text, "install-static output");
    let pod: Pod = typed(&docs[0], "install-static output");
    let container = only_container(pod.spec.as_ref().expect("spec"));
    // The image's entrypoint is the binary (Containerfile); no command override.
    assert!(container.command.is_none());
    let mut argv = vec!["yurthub".to_owned()];
    argv.extend(args(container));
    assert_eq!(flag_value(&argv, "keep-redirect-on-exit"), Some("true"));

    // Started like kubelet would, with the cloud away: it serves kubelet
    // from the cache, and both probes pass.
    let started = Instant::now();
    let p = HubProcess::spawn(&argv);
    let proxy_url = format!("http://127.0.0.1:{proxy}");
    eventually(
        Duration::from_secs(20),
        "the static pod's hub serves kubelet offline",
        || async {
            let req = http::Request::get(format!("{proxy_url}{pods_path}"))
                .header("user-agent", kubelet)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .expect("request");
            matches!(
                tokio::time::timeout(Duration::from_secs(2), c.request(req)).await,
                Ok(Ok(r)) if r.status() == http::StatusCode::OK
            )
        },
    )
    .await;
    eprintln!(
        "static pod command: first offline answer after {:?}",
        started.elapsed()
    );
    let r = get(&c, &format!("{proxy_url}{pods_path}"), kubelet).await;
    let mut names: Vec<String> = r.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            i["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["web-0", "web-1"], "from the cache: {}", p.log());
    let r = get(&c, &format!("{proxy_url}/api/v1/nodes/{NODE}"), kubelet).await;
    assert_eq!(r.status, http::StatusCode::OK, "{}", r.text());
    // The probes of the manifest, on the port it was given.
    for (what, probe) in [
        ("liveness", container.liveness_probe.as_ref()),
        ("readiness", container.readiness_probe.as_ref()),
    ] {
        let (host, path, _) = http_probe(probe, what);
        let url = format!("http://{host}:{serve}{path}");
        eventually(
            Duration::from_secs(10),
            &format!("{what} probe passes"),
            || async { get(&c, &url, "kube-probe/1.34").await.status == http::StatusCode::OK },
        )
        .await;
    }
    drop(p);
}

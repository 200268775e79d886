//! Realistic objects of the kinds the hub handles, typed through k8s-openapi so every
//! JSON name is checked against the Kubernetes API (a misspelt key would be dropped by
//! the typed round trip and fail [`typed`]).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use k8s_openapi::api::{
    apps, authentication, authorization, certificates, coordination, core, discovery, events,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;

pub(crate) struct Fixture {
    pub api_version: &'static str,
    pub kind: &'static str,
    /// The object as k8s-openapi serialises it, with apiVersion and kind.
    pub json: Value,
}

/// Parses `literal` as `T` and serialises it back; panics if anything was lost, so a
/// key the API does not have cannot hide in a fixture.
fn typed<T: DeserializeOwned + Serialize + k8s_openapi::Resource>(literal: Value) -> Fixture {
    let object: T = serde_json::from_value(literal.clone()).unwrap_or_else(|e| {
        panic!(
            "fixture {} does not parse as {}: {e}",
            literal["metadata"]["name"],
            T::KIND
        )
    });
    let mut json = serde_json::to_value(&object).expect("serialises");
    json["apiVersion"] = Value::String(T::API_VERSION.to_owned());
    json["kind"] = Value::String(T::KIND.to_owned());
    let mut diffs = Vec::new();
    super::golden::json_diff("", &json, &literal, &mut diffs);
    assert!(
        diffs.is_empty(),
        "fixture {} of kind {} changed through k8s-openapi: {diffs:?}",
        literal["metadata"]["name"],
        T::KIND
    );
    Fixture {
        api_version: T::API_VERSION,
        kind: T::KIND,
        json,
    }
}

fn object_meta(name: &str, namespace: Option<&str>) -> Value {
    let mut m = json!({
        "name": name,
        "uid": "5f6c8a1e-3b4d-4c2a-9e7f-0a1b2c3d4e5f",
        "resourceVersion": "184467",
        "generation": 3,
        "creationTimestamp": "2024-05-01T10:00:00Z",
        "labels": {"app.kubernetes.io/name": name, "tier": "edge"},
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"kind\":\"X\"}\n"},
        "managedFields": [{
            "manager": "kubelet",
            "operation": "Update",
            "apiVersion": "v1",
            "time": "2024-05-01T10:00:05Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:tier": {}}}},
            "subresource": "status"
        }]
    });
    if let Some(ns) = namespace {
        m["namespace"] = Value::String(ns.to_owned());
    }
    m
}

fn pod_spec() -> Value {
    json!({
        "nodeName": "edge-node-1",
        "serviceAccountName": "default",
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "hostNetwork": false,
        "terminationGracePeriodSeconds": 30,
        "activeDeadlineSeconds": 0,
        "priority": -10,
        "dnsPolicy": "ClusterFirst",
        "restartPolicy": "Always",
        "schedulerName": "default-scheduler",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "securityContext": {"runAsUser": 0, "runAsNonRoot": false, "fsGroup": 2000, "sysctls": [{"name": "net.ipv4.ip_forward", "value": "1"}]},
        "tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"operator": "Exists"}
        ],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "openyurt.io/is-edge-worker", "operator": "In", "values": ["true"]}]}
        ]}}},
        "initContainers": [{"name": "init", "image": "busybox:1.36", "command": ["sh", "-c", "true"]}],
        "containers": [{
            "name": "app",
            "image": "registry.k8s.io/pause:3.10",
            "imagePullPolicy": "IfNotPresent",
            "args": ["--port=8080", ""],
            "ports": [
                {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                {"containerPort": 53, "hostPort": 53, "protocol": "UDP", "hostIP": "169.254.2.1"}
            ],
            "env": [
                {"name": "PLAIN", "value": "x"},
                {"name": "EMPTY", "value": ""},
                {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k", "optional": true}}},
                {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}}},
                {"name": "LIMIT", "valueFrom": {"resourceFieldRef": {"containerName": "app", "resource": "limits.memory", "divisor": "1Mi"}}}
            ],
            "envFrom": [{"prefix": "CFG_", "configMapRef": {"name": "cfg"}}],
            "resources": {
                "requests": {"cpu": "100m", "memory": "64Mi"},
                "limits": {"cpu": "1", "memory": "128Mi", "ephemeral-storage": "1Gi"}
            },
            "volumeMounts": [
                {"name": "cfg", "mountPath": "/etc/cfg", "readOnly": true},
                {"name": "token", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true, "mountPropagation": "None"}
            ],
            "livenessProbe": {
                "httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP", "httpHeaders": [{"name": "X-Probe", "value": "1"}]},
                "initialDelaySeconds": 10, "periodSeconds": 5, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3
            },
            "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 2},
            "startupProbe": {"exec": {"command": ["cat", "/tmp/ready"]}},
            "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
            "securityContext": {
                "privileged": false,
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"}
            },
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "stdin": false,
            "tty": false
        }],
        "volumes": [
            {"name": "cfg", "configMap": {"name": "cfg", "defaultMode": 420, "items": [{"key": "a", "path": "a.conf", "mode": 256}]}},
            {"name": "sec", "secret": {"secretName": "sec", "optional": false}},
            {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
            {"name": "host", "hostPath": {"path": "/var/lib/yurthub", "type": "DirectoryOrCreate"}},
            {"name": "token", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
            ]}}
        ]
    })
}

fn pod() -> Fixture {
    typed::<core::v1::Pod>(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": merge(object_meta("agent-x7k2p", Some("kube-system")), json!({
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "uid": "0b1c", "controller": true, "blockOwnerDeletion": true}],
            "finalizers": ["example.com/cleanup"],
            "deletionTimestamp": "2024-05-02T00:00:00Z",
            "deletionGracePeriodSeconds": 0
        })),
        "spec": pod_spec(),
        "status": {
            "phase": "Running",
            "hostIP": "10.0.0.5",
            "hostIPs": [{"ip": "10.0.0.5"}],
            "podIP": "10.244.1.7",
            "podIPs": [{"ip": "10.244.1.7"}, {"ip": "fd00::7"}],
            "qosClass": "Burstable",
            "startTime": "2024-05-01T10:00:01Z",
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2024-05-01T10:00:09Z"},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2024-05-01T10:00:00Z"}
            ],
            "containerStatuses": [{
                "name": "app",
                "ready": true,
                "started": true,
                "restartCount": 2,
                "image": "registry.k8s.io/pause:3.10",
                "imageID": "registry.k8s.io/pause@sha256:ee6521f290b2168b6e0935a181d4cff9be1ac3f505666ef0e3c98fae8199917a",
                "containerID": "containerd://4f1e",
                "state": {"running": {"startedAt": "2024-05-01T10:00:08Z"}},
                "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "startedAt": "2024-05-01T10:00:02Z", "finishedAt": "2024-05-01T10:00:07Z", "containerID": "containerd://3e0d"}}
            }]
        }
    }))
}

fn node() -> Fixture {
    typed::<core::v1::Node>(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": merge(object_meta("edge-node-1", None), json!({
            "annotations": {"node.beta.openyurt.io/autonomy": "true", "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
            "labels": {"openyurt.io/is-edge-worker": "true", "kubernetes.io/hostname": "edge-node-1"}
        })),
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:1::/64"], "providerID": "kind://docker/edge", "unschedulable": false,
                 "taints": [{"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule", "timeAdded": "2024-05-01T11:00:00Z"}]},
        "status": {
            "capacity": {"cpu": "4", "memory": "16316716Ki", "pods": "110", "hugepages-2Mi": "0"},
            "allocatable": {"cpu": "3800m", "memory": "15Gi", "pods": "110"},
            "conditions": [
                {"type": "Ready", "status": "True", "lastHeartbeatTime": "2024-05-01T10:05:00Z", "lastTransitionTime": "2024-05-01T10:00:00Z", "reason": "KubeletReady", "message": "kubelet is posting ready status"},
                {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": "2024-05-01T10:05:00Z", "lastTransitionTime": "2024-05-01T10:00:00Z", "reason": "KubeletHasSufficientMemory", "message": ""}
            ],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.5"}, {"type": "Hostname", "address": "edge-node-1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"machineID": "m", "systemUUID": "s", "bootID": "b", "kernelVersion": "6.8.0", "osImage": "Ubuntu", "containerRuntimeVersion": "containerd://1.7.13",
                         "kubeletVersion": "v1.35.0", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
            "images": [{"names": ["registry.k8s.io/pause@sha256:ee65", "registry.k8s.io/pause:3.10"], "sizeBytes": 320368}],
            "volumesInUse": ["kubernetes.io/csi/x"],
            "volumesAttached": [{"name": "kubernetes.io/csi/x", "devicePath": ""}]
        }
    }))
}

/// Overlays `extra`'s keys on `base` (one level deep for objects).
fn merge(mut base: Value, extra: Value) -> Value {
    if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
        for (k, v) in e {
            match (b.get_mut(&k), v) {
                (Some(Value::Object(bo)), Value::Object(eo)) => bo.extend(eo),
                (_, v) => {
                    b.insert(k, v);
                }
            }
        }
    }
    base
}

pub(crate) fn all() -> Vec<Fixture> {
    vec![
        pod(),
        node(),
        typed::<core::v1::Service>(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": object_meta("kubernetes", Some("default")),
            "spec": {
                "type": "ClusterIP",
                "clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"],
                "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "internalTrafficPolicy": "Cluster",
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10800}},
                "selector": {"app": "x"},
                "ports": [
                    {"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443},
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns-udp", "appProtocol": "dns"}
                ]
            },
            "status": {"loadBalancer": {}}
        })),
        typed::<core::v1::Endpoints>(json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": object_meta("kubernetes", Some("default")),
            "subsets": [{"addresses": [{"ip": "172.18.0.2", "nodeName": "control-plane", "targetRef": {"kind": "Pod", "namespace": "kube-system", "name": "apiserver", "uid": "u"}}],
                         "notReadyAddresses": [{"ip": "172.18.0.3"}],
                         "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]}]
        })),
        typed::<core::v1::ConfigMap>(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": object_meta("yurt-hub-cfg", Some("kube-system")),
            "immutable": false,
            "data": {"cache_agents": "coredns,flanneld", "servicetopology": "", "multi\nline": "a\nb\u{1F600}\"q\""},
            "binaryData": {"blob": "AAECA//+/Q=="}
        })),
        typed::<core::v1::Secret>(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": object_meta("sec", Some("kube-system")),
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t", "tls.key": "", "raw": "gICA/w=="}
        })),
        typed::<core::v1::Namespace>(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": object_meta("kube-system", None),
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active", "conditions": [{"type": "NamespaceDeletionDiscoveryFailure", "status": "False", "lastTransitionTime": "2024-05-01T10:00:00Z"}]}
        })),
        typed::<core::v1::Event>(json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": object_meta("agent-x7k2p.17c9", Some("kube-system")),
            "involvedObject": {"kind": "Pod", "namespace": "kube-system", "name": "agent-x7k2p", "uid": "u", "apiVersion": "v1", "resourceVersion": "1", "fieldPath": "spec.containers{app}"},
            "reason": "Pulled", "message": "Container image already present", "type": "Normal", "count": 4,
            "source": {"component": "kubelet", "host": "edge-node-1"},
            "firstTimestamp": "2024-05-01T10:00:02Z", "lastTimestamp": "2024-05-01T10:04:02Z",
            "eventTime": "2024-05-01T10:00:02.123456Z",
            "reportingComponent": "kubelet", "reportingInstance": "edge-node-1",
            "series": {"count": 2, "lastObservedTime": "2024-05-01T10:04:02.000001Z"}
        })),
        typed::<core::v1::ServiceAccount>(json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": object_meta("default", Some("kube-system")),
            "automountServiceAccountToken": true,
            "secrets": [{"name": "default-token"}],
            "imagePullSecrets": [{"name": "regcred"}]
        })),
        typed::<coordination::v1::Lease>(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": object_meta("edge-node-1", Some("kube-node-lease")),
            "spec": {"holderIdentity": "edge-node-1", "leaseDurationSeconds": 40,
                     "acquireTime": "2024-05-01T10:00:00.000000Z", "renewTime": "2024-05-01T10:05:31.417562Z", "leaseTransitions": 0}
        })),
        typed::<discovery::v1::EndpointSlice>(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": object_meta("kubernetes", Some("default")),
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["172.18.0.2"], "conditions": {"ready": true, "serving": true, "terminating": false},
                           "nodeName": "control-plane", "zone": "z1", "hints": {"forZones": [{"name": "z1"}]},
                           "targetRef": {"kind": "Pod", "name": "p"}}],
            "ports": [{"name": "https", "port": 6443, "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"}]
        })),
        typed::<events::v1::Event>(json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": object_meta("node.17c9", Some("default")),
            "eventTime": "2024-05-01T10:00:02.000100Z",
            "series": {"count": 3, "lastObservedTime": "2024-05-01T10:01:02.500000Z"},
            "reportingController": "kubelet", "reportingInstance": "edge-node-1",
            "action": "Starting", "reason": "Starting", "note": "Starting kubelet.", "type": "Normal",
            "regarding": {"kind": "Node", "name": "edge-node-1", "uid": "edge-node-1"},
            "deprecatedCount": 1, "deprecatedFirstTimestamp": "2024-05-01T10:00:02Z"
        })),
        typed::<certificates::v1::CertificateSigningRequest>(json!({
            "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": object_meta("csr-8ab3", None),
            "spec": {"request": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURSBSRVFVRVNULS0tLS0K", "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                     "expirationSeconds": 86400, "usages": ["digital signature", "client auth"],
                     "username": "system:node:edge-node-1", "uid": "u", "groups": ["system:nodes", "system:authenticated"],
                     "extra": {"authentication.kubernetes.io/credential-id": ["X509SHA256=abc"], "empty": []}},
            "status": {"certificate": "AQID", "conditions": [{"type": "Approved", "status": "True", "reason": "AutoApproved", "message": "",
                        "lastUpdateTime": "2024-05-01T10:00:00Z", "lastTransitionTime": "2024-05-01T10:00:00Z"}]}
        })),
        typed::<apps::v1::Deployment>(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": object_meta("coredns", Some("kube-system")),
            "spec": {"replicas": 0, "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600, "paused": false,
                     "selector": {"matchLabels": {"k8s-app": "kube-dns"}, "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["cloud"]}]},
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
                     "template": {"metadata": {"labels": {"k8s-app": "kube-dns"}, "annotations": {"a": "b"}}, "spec": pod_spec()}},
            "status": {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2,
                       "conditions": [{"type": "Available", "status": "True", "lastUpdateTime": "2024-05-01T10:00:00Z", "lastTransitionTime": "2024-05-01T10:00:00Z", "reason": "MinimumReplicasAvailable", "message": "ok"}]}
        })),
        typed::<apps::v1::DaemonSet>(json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": object_meta("kube-proxy", Some("kube-system")),
            "spec": {"selector": {"matchLabels": {"k8s-app": "kube-proxy"}}, "minReadySeconds": 0,
                     "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%", "maxSurge": 0}},
                     "template": {"metadata": {"labels": {"k8s-app": "kube-proxy"}}, "spec": pod_spec()}},
            "status": {"currentNumberScheduled": 3, "numberMisscheduled": 0, "desiredNumberScheduled": 3, "numberReady": 3, "observedGeneration": 1}
        })),
        typed::<apps::v1::StatefulSet>(json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": object_meta("web", Some("default")),
            "spec": {"serviceName": "web", "replicas": 2, "podManagementPolicy": "Parallel",
                     "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod_spec()},
                     "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Delete"},
                     "ordinals": {"start": 0},
                     "volumeClaimTemplates": [{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
                         "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "resources": {"requests": {"storage": "1Gi"}}, "volumeMode": "Filesystem"}}]},
            "status": {"replicas": 2, "availableReplicas": 2, "collisionCount": 0, "currentRevision": "web-5d8", "updateRevision": "web-5d8"}
        })),
        typed::<apps::v1::ReplicaSet>(json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": object_meta("coredns-5d8", Some("kube-system")),
            "spec": {"replicas": 2, "selector": {"matchLabels": {"k8s-app": "kube-dns"}},
                     "template": {"metadata": {"labels": {"k8s-app": "kube-dns"}}, "spec": pod_spec()}},
            "status": {"replicas": 2, "fullyLabeledReplicas": 2, "readyReplicas": 2, "availableReplicas": 2, "observedGeneration": 1}
        })),
        typed::<apps::v1::ControllerRevision>(json!({
            "apiVersion": "apps/v1", "kind": "ControllerRevision",
            "metadata": object_meta("web-5d8", Some("default")),
            "revision": 4,
            "data": {"spec": {"template": {"$patch": "replace", "metadata": {"labels": {"app": "web"}}}}}
        })),
        typed::<authorization::v1::SubjectAccessReview>(json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "metadata": {},
            "spec": {"resourceAttributes": {"namespace": "kube-system", "verb": "get", "group": "", "resource": "pods", "subresource": "log", "name": "x",
                                            "fieldSelector": {"requirements": [{"key": "spec.nodeName", "operator": "In", "values": ["n"]}]}},
                     "user": "system:node:edge-node-1", "groups": ["system:nodes"],
                     "extra": {"scopes": ["a", "b"]}, "uid": "u"},
            "status": {"allowed": false, "denied": false, "reason": "", "evaluationError": ""}
        })),
        typed::<authentication::v1::TokenRequest>(json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "metadata": {"name": "default", "namespace": "kube-system"},
            "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3607,
                     "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "agent-x7k2p", "uid": "u"}},
            "status": {"token": "eyJhbGciOiJSUzI1NiJ9.e30.c2ln", "expirationTimestamp": "2024-05-01T11:00:07Z"}
        })),
        typed::<meta::Status>(json!({
            "apiVersion": "v1", "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "message": "pods \"x\" not found",
            "reason": "NotFound",
            "details": {"name": "x", "kind": "pods", "causes": [{"reason": "FieldValueNotFound", "message": "m", "field": "metadata.name"}], "retryAfterSeconds": 1},
            "code": 404
        })),
        typed::<apiextensions::CustomResourceDefinition>(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": object_meta("gateways.raven.openyurt.io", None),
            "spec": {
                "group": "raven.openyurt.io", "scope": "Cluster",
                "names": {"plural": "gateways", "singular": "gateway", "kind": "Gateway", "listKind": "GatewayList", "shortNames": ["gw"], "categories": ["all"]},
                "conversion": {"strategy": "Webhook", "webhook": {"conversionReviewVersions": ["v1"], "clientConfig": {"caBundle": "Cg==", "service": {"namespace": "kube-system", "name": "w", "path": "/convert", "port": 443}}}},
                "versions": [{
                    "name": "v1beta1", "served": true, "storage": true, "deprecated": false,
                    "additionalPrinterColumns": [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp", "priority": 0}],
                    "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                    "selectableFields": [{"jsonPath": ".spec.nodeName"}],
                    "schema": {"openAPIV3Schema": crd_schema()}
                }]
            },
            "status": {"acceptedNames": {"plural": "gateways", "kind": "Gateway"}, "storedVersions": ["v1beta1"],
                       "conditions": [{"type": "Established", "status": "True", "lastTransitionTime": "2024-05-01T10:00:00Z", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"}]}
        })),
    ]
}

fn crd_schema() -> Value {
    let spec = json!({
        "type": "object",
        "properties": {
            "replicas": {"type": "integer", "format": "int32", "minimum": 0, "maximum": 100.5, "multipleOf": 1, "default": 1},
            "port": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
            "endpoints": {"type": "array", "items": {"type": "object", "x-kubernetes-map-type": "atomic", "properties": {"nodeName": {"type": "string", "enum": ["a", "b"], "pattern": "^[a-z]+$"}}},
                          "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["nodeName"], "maxItems": 10},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "free": {"type": "object", "additionalProperties": true, "x-kubernetes-embedded-resource": true, "x-kubernetes-preserve-unknown-fields": true},
            "tuple": {"type": "array", "items": [{"type": "string"}, {"type": "integer"}]},
            "deps": {"type": "object", "dependencies": {"a": ["b", "c"], "d": {"required": ["e"]}}}
        },
        "x-kubernetes-validations": [{"rule": "self.replicas >= 0", "message": "non-negative", "reason": "FieldValueInvalid", "fieldPath": ".replicas", "optionalOldSelf": false}]
    });
    json!({
        "type": "object",
        "description": "Gateway",
        "required": ["spec"],
        "x-kubernetes-preserve-unknown-fields": false,
        "properties": {
            "spec": spec,
            "status": {"type": "object", "nullable": true, "example": {"ready": true}}
        }
    })
}

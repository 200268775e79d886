//! Pools of hubs for the leader-hub tests and the pool benchmark: per node
//! its own certificates (client `system:node:<n>`, serving for its 127.x
//! node IP), root dir and loopback ports, plus the cluster objects
//! yurt-manager would write (labelled Nodes, `kube-system/leader-hub-<pool>`).

use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::apiserver::ApiServer;
use crate::hub::free_port;
use crate::pki::TestPki;

pub const NODEPOOL_LABEL: &str = "apps.openyurt.io/nodepool";

/// One node's files.
pub struct NodeFiles {
    pub dir: tempfile::TempDir,
    pub name: String,
    pub ip: IpAddr,
    pub ca: PathBuf,
    pub client_pem: PathBuf,
    pub client_cert: String,
    pub client_key: String,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
}

impl NodeFiles {
    pub fn new(pki: &TestPki, name: &str, ip: IpAddr) -> NodeFiles {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = pki.write_ca(dir.path()).expect("write ca");
        let (cert, key) = pki
            .issue_client_cert(&format!("system:node:{name}"), &["system:nodes"])
            .expect("client cert");
        let client_pem = dir.path().join("kubelet-client-current.pem");
        std::fs::write(&client_pem, format!("{cert}{key}")).expect("write client pem");
        let ips = [ip, "127.0.0.1".parse().unwrap()];
        let (scert, skey) = pki
            .issue_server_cert(&["kubernetes", "kubernetes.default.svc"], &ips)
            .expect("serving cert");
        let (serving_cert, serving_key) =
            TestPki::write_pair(dir.path(), "serving", &scert, &skey).expect("write serving pair");
        NodeFiles {
            dir,
            name: name.into(),
            ip,
            ca,
            client_pem,
            client_cert: cert,
            client_key: key,
            serving_cert,
            serving_key,
        }
    }

    /// Flags for this node's hub: the node IP and the pool's shared
    /// multiplexer port; the pool comes from the node's label unless
    /// `extra` says `--nodepool-name`.
    pub fn args(&self, servers: &[String], mux_port: u16, extra: &[&str]) -> Vec<String> {
        let root = self.dir.path().join("root");
        let mut a: Vec<String> = vec![
            "yurthub".into(),
            format!("--node-name={}", self.name),
            format!("--node-ip={}", self.ip),
            format!("--multiplexer-port={mux_port}"),
            format!("--server-addr={}", servers.join(",")),
            "--bootstrap-mode=kubeletcertificate".into(),
            format!("--kubelet-client-certificate={}", self.client_pem.display()),
            format!("--kubelet-ca-file={}", self.ca.display()),
            format!("--tls-cert-file={}", self.serving_cert.display()),
            format!("--tls-private-key-file={}", self.serving_key.display()),
            "--hub-address=127.0.0.1".into(),
            "--redirect-mode=none".into(),
            "--bind-proxy-address=127.0.0.1".into(),
            "--proxy-port=0".into(),
            "--proxy-secure-port=0".into(),
            format!("--serve-port={}", free_port()),
            format!("--root-dir={}", root.display()),
            format!("--disk-cache-path={}", root.join("cache").display()),
            "--heartbeat-interval-seconds=1".into(),
            "--heartbeat-timeout-seconds=1".into(),
            "--shutdown-grace-period=2s".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }
}

/// A Node labelled into `pool`.
pub fn create_node(api: &ApiServer, name: &str, ip: IpAddr, pool: &str) {
    api.create(json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {NODEPOOL_LABEL: pool}},
        "status": {"addresses": [{"type": "InternalIP", "address": ip.to_string()}]}}))
        .expect("node");
}

/// The leader-hub ConfigMap as yurt-manager's hubleader controller writes it.
pub fn leader_configmap(pool: &str, leaders: &[(&str, IpAddr)], election: bool) -> Value {
    let leaders: Vec<String> = leaders.iter().map(|(n, ip)| format!("{n}/{ip}")).collect();
    json!({"apiVersion": "v1", "kind": "ConfigMap",
    "metadata": {"name": format!("leader-hub-{pool}"), "namespace": "kube-system"},
    "data": {
        "leaders": leaders.join(","),
        "pool-scoped-metadata": "/v1/services,discovery.k8s.io/v1/endpointslices",
        "interconnectivity": "true",
        "enable-leader-election": election.to_string(),
    }})
}

//! Standalone kube-apiserver double for demos and benchmarks.
//!
//! Writes `ca.crt`, `token` (admin bearer token), `admin.crt`/`admin.key`
//! (a system:masters client certificate) and `admin.kubeconfig` into
//! `--pki-dir`, optionally seeds pods bound to `--node`, logs every request
//! and runs until SIGTERM or Ctrl-C.
//!
//! `--hub-certs-for NODE` also writes what a yurthub on that node needs in
//! `kubeletcertificate` bootstrap mode: `hub-client.pem` (kubelet's client
//! certificate and key, `system:node:NODE` in `system:nodes`) and
//! `hub-serving.crt`/`hub-serving.key` (the pod-facing listener's serving
//! certificate, for the `kubernetes` Service names, 127.0.0.1, the hub
//! address 169.254.2.1 and the VIP 10.96.0.1).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};
use yurthub_e2e::apiserver::{ApiServer, Credential, User};
use yurthub_e2e::pki::TestPki;

#[derive(Debug, Parser)]
#[command(about = "A kube-apiserver test double")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Directory for ca.crt, token, admin.crt/key and admin.kubeconfig.
    #[arg(long)]
    pki_dir: PathBuf,
    /// Number of pods to create in the default namespace.
    #[arg(long, default_value_t = 0)]
    seed_pods: usize,
    /// Node the seeded pods are bound to (a Node object is created too).
    #[arg(long, default_value = "node-1")]
    node: String,
    /// Seconds between watch bookmarks.
    #[arg(long, default_value_t = 60)]
    bookmark_interval: u64,
    /// Events kept for watches before older resourceVersions expire.
    #[arg(long, default_value_t = 100_000)]
    history_window: usize,
    /// Also write hub-client.pem and hub-serving.crt/key for a hub on NODE.
    #[arg(long, value_name = "NODE")]
    hub_certs_for: Option<String>,
}

const ADMIN_TOKEN_FILE: &str = "token";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,yurthub_e2e::apiserver=debug")
            }),
        )
        .init();
    let args = Args::parse();
    std::fs::create_dir_all(&args.pki_dir)
        .with_context(|| format!("creating {}", args.pki_dir.display()))?;
    let pki = Arc::new(TestPki::new()?);
    let token = format!("admin-{:032x}", rand::random::<u128>());
    let server = ApiServer::builder()
        .listen(args.listen)
        .pki(pki.clone())
        .bookmark_interval(Duration::from_secs(args.bookmark_interval))
        .history_window(args.history_window)
        .token(
            &token,
            User::new("admin", &["system:masters", "system:authenticated"]),
        )
        .start()
        .await?;

    pki.write_ca(&args.pki_dir)?;
    let write = |name: &str, contents: &str| {
        let path = args.pki_dir.join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
    };
    write(ADMIN_TOKEN_FILE, &token)?;
    let (cert, key) = pki.issue_client_cert("kubernetes-admin", &["system:masters"])?;
    TestPki::write_pair(&args.pki_dir, "admin", &cert, &key)?;
    write(
        "admin.kubeconfig",
        &server.kubeconfig(&Credential::Token(token.clone()))?,
    )?;

    if let Some(node) = &args.hub_certs_for {
        write_hub_certs(&pki, &args.pki_dir, node)?;
    }
    seed(&server, &args)?;
    tracing::info!(
        url = %server.url(),
        pki_dir = %args.pki_dir.display(),
        pods = args.seed_pods,
        node = %args.node,
        "apiserver double ready"
    );

    let mut term = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                for r in server.take_requests() {
                    tracing::info!(method = %r.method, path = %r.path, query = %r.query, auth = ?r.auth, version = %r.http_version, user_agent = ?r.user_agent, "request");
                }
            }
        }
    }
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

fn seed(server: &ApiServer, args: &Args) -> anyhow::Result<()> {
    server.create(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": args.node, "labels": {"kubernetes.io/hostname": args.node}},
    }))?;
    for i in 0..args.seed_pods {
        server.create(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": format!("seed-{i}"), "namespace": "default", "labels": {"app": "seed"}},
            "spec": {"nodeName": args.node, "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}]},
        }))?;
    }
    Ok(())
}

fn write_hub_certs(pki: &TestPki, dir: &std::path::Path, node: &str) -> anyhow::Result<()> {
    let (cert, key) = pki.issue_client_cert(
        &format!("system:node:{node}"),
        &["system:nodes", "openyurt:yurthub"],
    )?;
    let pem = dir.join("hub-client.pem");
    std::fs::write(&pem, format!("{cert}{key}"))
        .with_context(|| format!("writing {}", pem.display()))?;
    let ips = [[127, 0, 0, 1], [169, 254, 2, 1], [10, 96, 0, 1]].map(std::net::IpAddr::from);
    let (cert, key) = pki.issue_server_cert(
        &[
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ],
        &ips,
    )?;
    TestPki::write_pair(dir, "hub-serving", &cert, &key)?;
    Ok(())
}

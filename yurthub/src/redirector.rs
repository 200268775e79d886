//! Runs the kernel redirect for the daemon: installs it (or explains why it
//! cannot), heartbeats it only while the pod-facing TLS listener really
//! completes handshakes, keeps its VIP set equal to the `default/kubernetes`
//! Service (persisted, so an offline restart still knows it), and exports
//! its counters. The kernel side and its maps live in [`crate::redirect`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::certificates::{self, Certificates, ClusterCaVerifier};
use crate::config::Config;
use crate::informer::{Informer, Spec, Upstream};
use crate::redirect::{self, Redirect};
use crate::remote::LoadBalancer;

const VIP_FILE: &str = "apiserver-vips.json";
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

/// The running redirect, shared by the heartbeat, the VIP learner, the hub
/// server's `/v1/redirect` and `/metrics`.
#[derive(Clone, Default)]
pub struct Handle(Arc<Mutex<Option<Redirect>>>);

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("redirector::Handle")
    }
}

impl Handle {
    fn with<T>(&self, f: impl FnOnce(&Redirect) -> T) -> Option<T> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(f)
    }

    /// `/v1/redirect`: the redirect's state, or why there is none.
    pub fn status_json(&self, disabled_reason: &str) -> Value {
        self.with(|r| serde_json::to_value(r.status()).unwrap_or(Value::Null))
            .unwrap_or_else(|| serde_json::json!({"installed": false, "reason": disabled_reason}))
    }

    /// Removes (or, with --keep-redirect-on-exit, leaves for the next hub)
    /// what was installed.
    pub async fn shutdown(&self) {
        let taken = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(r) = taken
            && let Err(e) = r.shutdown().await
        {
            tracing::error!(error = %e, "removing the redirect failed; run `yurthub cleanup`");
        }
    }
}

/// The redirect's configuration from the daemon's flags.
pub fn redirect_config(cfg: &Config, vips: Vec<SocketAddr>) -> redirect::Config {
    let mut r = redirect::Config::new(cfg.hub_address, cfg.proxy_secure_addr.port(), vips);
    r.link = cfg.hub_address_link.clone();
    r.cgroup = cfg.redirect_cgroup.clone();
    r.bpffs = cfg.bpffs.clone();
    r.pin_dir_name = cfg.redirect_pin_dir.clone();
    r.keep_on_exit = cfg.keep_redirect_on_exit;
    r.ebpf_log = cfg.redirect_ebpf_log;
    r.self_check = cfg.redirect_self_check;
    r
}

/// Installs the redirect. Failure is logged with what to do and returns an
/// empty handle: the hub keeps serving its listeners either way.
pub async fn install(cfg: &Config) -> (Handle, String) {
    let vips = if cfg.apiserver_vips.is_empty() {
        load_vips(&cfg.root_dir)
    } else {
        cfg.apiserver_vips.clone()
    };
    match Redirect::install(redirect_config(cfg, vips.clone())).await {
        Ok(r) => {
            tracing::info!(hub = %cfg.proxy_secure_addr, vips = ?vips, "eBPF redirect installed");
            (Handle(Arc::new(Mutex::new(Some(r)))), String::new())
        }
        Err(e) => {
            tracing::error!(error = %e, "eBPF redirect not installed; pods reach the apiserver VIP directly (use --redirect-mode=none to silence this)");
            (Handle::default(), e.to_string())
        }
    }
}

/// Heartbeats the redirect while a TLS handshake with our own pod-facing
/// listener succeeds (verified against the cluster CA for the hub address):
/// that proves the accept loop and TLS serving work, which a timer alone
/// would not. No serving certificate yet means pods could not talk TLS to us
/// either, so no heartbeat and the redirect stays open to the real VIP.
pub fn spawn_heartbeat(
    handle: Handle,
    certs: Certificates,
    target: SocketAddr,
    shutdown: CancellationToken,
) {
    let tls = rustls::ClientConfig::builder_with_provider(certificates::provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(ClusterCaVerifier::new(certs))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let name = rustls_pki_types::ServerName::IpAddress(target.ip().into());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut healthy = true;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let probe = async {
                let tcp = tokio::net::TcpStream::connect(target)
                    .await
                    .map_err(|e| e.to_string())?;
                connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| e.to_string())
            };
            match tokio::time::timeout(HEARTBEAT_EVERY, probe).await {
                Ok(Ok(_)) => {
                    if let Some(Err(e)) = handle.with(|r| r.heartbeat()) {
                        tracing::warn!(error = %e, "redirect heartbeat failed");
                    }
                    if !healthy {
                        tracing::info!("pod-facing listener serves again; redirecting");
                        healthy = true;
                    }
                }
                Ok(Err(e)) if healthy => {
                    tracing::warn!(error = %e, "pod-facing listener does not complete TLS; redirect fails open");
                    healthy = false;
                }
                Err(_) if healthy => {
                    tracing::warn!("pod-facing listener timed out; redirect fails open");
                    healthy = false;
                }
                _ => {}
            }
        }
    });
}

/// The VIPs persisted by an earlier run (empty if none).
pub fn stored_vips(root: &std::path::Path) -> Vec<SocketAddr> {
    load_vips(root)
}

/// Whether this run learned the VIPs from the cloud (readiness waits for it
/// while the cloud is reachable).
#[derive(Clone, Debug, Default)]
pub struct VipsLearned(Arc<std::sync::atomic::AtomicBool>);

impl VipsLearned {
    pub fn get(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Readiness while the VIPs are learned: not ready until the cloud's
/// `default/kubernetes` was read and (when the hub issues its own serving
/// certificate) that certificate carries every VIP, so a redirected pod's
/// TLS to the VIP verifies from the first ready moment. Offline, the
/// persisted VIPs stand.
pub fn vips_not_ready_reason(
    lb: &LoadBalancer,
    learned: &VipsLearned,
    vips: &tokio::sync::watch::Receiver<Vec<SocketAddr>>,
    serving: Option<&certificates::Slot>,
) -> Option<String> {
    if !lb.any_healthy() {
        return None;
    }
    if !learned.get() {
        return Some("the apiserver VIPs are not learned from default/kubernetes yet".into());
    }
    let info = serving?.info()?;
    let missing = vips
        .borrow()
        .iter()
        .any(|v| !info.ip_addresses.contains(&v.ip()));
    missing.then(|| "the serving certificate does not carry the apiserver VIPs yet".into())
}

/// Keeps the VIP set equal to the `default/kubernetes` Service's ClusterIPs
/// and `https` port, persisted: read from the multiplexer's shared services
/// state when it has one (no stream of its own), else from a watch of that
/// one Service (an informer: one list, then events). The set is also
/// published on `publish` (the serving certificate follows it).
pub fn spawn_vip_learner(
    handle: Handle,
    up: Upstream,
    mux: Option<crate::multiplexer::Multiplexer>,
    root_dir: PathBuf,
    publish: tokio::sync::watch::Sender<Vec<SocketAddr>>,
    learned: VipsLearned,
    shutdown: CancellationToken,
) {
    let services = crate::storage::Gvr::new("", "v1", "services");
    if let Some(mux) = mux.filter(|m| m.watches(&services)) {
        tokio::spawn(async move {
            let mut current = load_vips(&root_dir);
            let cacher = loop {
                // Started once the proxy listens: a local wait at start.
                if let Some(c) = mux.shared(&services) {
                    break c;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            };
            let key = ("default".to_owned(), "kubernetes".to_owned());
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = cacher.wait_ready(Duration::from_secs(3600)) => {}
                }
                if !cacher.is_ready() {
                    continue;
                }
                let (mut events, svc) = {
                    let state = cacher.read();
                    (cacher.subscribe(), state.objects.get(&key).cloned())
                };
                let mut svc = svc;
                loop {
                    if let Some(o) = &svc
                        && let Ok(v) = serde_json::from_slice::<Value>(&o.json)
                    {
                        let vips = service_vips(&v);
                        if !vips.is_empty() {
                            apply_vips(&handle, &root_dir, &publish, &mut current, vips);
                            learned.0.store(true, std::sync::atomic::Ordering::Release);
                        }
                    }
                    let ev = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        e = events.recv() => e,
                    };
                    match ev {
                        Ok(ev) => match &ev.object {
                            Some(o) if o.namespace == key.0 && o.name == key.1 => {
                                svc = Some(o.clone())
                            }
                            _ => svc = None,
                        },
                        // Lagged: read the state again.
                        Err(_) => break,
                    }
                }
            }
        });
        return;
    }
    let informer = Informer::spawn(
        Spec::new(
            "service/default/kubernetes",
            "/api/v1/namespaces/default/services",
        )
        .named("kubernetes"),
        up,
        shutdown.clone(),
    );
    let mut rx = informer.subscribe();
    tokio::spawn(async move {
        let mut current = load_vips(&root_dir);
        loop {
            let snap = rx.borrow_and_update().clone();
            let vips = snap.single().map(service_vips).unwrap_or_default();
            if !vips.is_empty() {
                apply_vips(&handle, &root_dir, &publish, &mut current, vips);
                learned.0.store(true, std::sync::atomic::Ordering::Release);
            } else if snap.synced {
                tracing::warn!("default/kubernetes has no ClusterIP and port; keeping the VIPs");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
            }
        }
    });
}

fn apply_vips(
    handle: &Handle,
    root_dir: &std::path::Path,
    publish: &tokio::sync::watch::Sender<Vec<SocketAddr>>,
    current: &mut Vec<SocketAddr>,
    vips: Vec<SocketAddr>,
) {
    publish.send_if_modified(|v| {
        let changed = *v != vips;
        if changed {
            v.clone_from(&vips);
        }
        changed
    });
    if vips == *current {
        return;
    }
    match handle.with(|r| r.set_vips(&vips)) {
        Some(Ok(())) | None => {}
        Some(Err(e)) => {
            tracing::error!(error = %e, ?vips, "updating the redirect's VIPs failed");
            return;
        }
    }
    tracing::info!(?vips, "apiserver VIPs learned from default/kubernetes");
    if let Err(e) = store_vips(root_dir, &vips) {
        tracing::warn!(error = %e, "persisting the apiserver VIPs failed");
    }
    *current = vips;
}

/// The ClusterIPs and `https` port (else the first port) of a Service.
pub fn service_vips(svc: &Value) -> Vec<SocketAddr> {
    let spec = &svc["spec"];
    let ports = spec["ports"].as_array().cloned().unwrap_or_default();
    let port = ports
        .iter()
        .find(|p| p["name"] == "https")
        .or_else(|| ports.first())
        .and_then(|p| p["port"].as_u64())
        .and_then(|p| u16::try_from(p).ok());
    let Some(port) = port else { return Vec::new() };
    let mut ips: Vec<IpAddr> = spec["clusterIPs"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()?.parse().ok()).collect())
        .unwrap_or_default();
    if ips.is_empty() {
        ips.extend(
            spec["clusterIP"]
                .as_str()
                .and_then(|s| s.parse::<IpAddr>().ok()),
        );
    }
    ips.into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

fn load_vips(root: &std::path::Path) -> Vec<SocketAddr> {
    std::fs::read(root.join(VIP_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<SocketAddr>>(&b).ok())
        .unwrap_or_default()
}

fn store_vips(root: &std::path::Path, vips: &[SocketAddr]) -> std::io::Result<()> {
    std::fs::create_dir_all(root)?;
    let tmp = root.join(format!("{VIP_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(vips)?)?;
    std::fs::rename(tmp, root.join(VIP_FILE))
}

/// `node_yurthub_redirect_*` series, read from the kernel counters at scrape.
#[derive(Debug)]
pub struct Collector(pub Handle);

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct VipLabel {
    vip: String,
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(status) = self.0.with(|r| r.status()) else {
            return Ok(());
        };
        type Series = (&'static str, &'static str, fn(&redirect::VipStatus) -> u64);
        let series: [Series; 3] = [
            (
                "node_yurthub_redirect_connections",
                "connections to the apiserver VIP redirected to the hub",
                |v| v.redirected,
            ),
            (
                "node_yurthub_redirect_skipped_stale",
                "VIP connections left alone because the hub was not serving",
                |v| v.skipped_stale,
            ),
            (
                "node_yurthub_redirect_skipped_own",
                "VIP connections left alone because they were the hub's own",
                |v| v.skipped_own,
            ),
        ];
        for (name, help, get) in series {
            let family: Family<VipLabel, Gauge> = Family::default();
            for v in &status.vips {
                family
                    .get_or_create(&VipLabel {
                        vip: v.vip.to_string(),
                    })
                    .set(get(v) as i64);
            }
            let m = encoder.encode_descriptor(name, help, None, MetricType::Unknown)?;
            family.encode(m)?;
        }
        let active: Gauge = Gauge::default();
        active.set(i64::from(status.active));
        active.encode(encoder.encode_descriptor(
            "node_yurthub_redirect_active",
            "1 while the kernel redirect is active (fresh heartbeat)",
            None,
            MetricType::Gauge,
        )?)?;
        if status.self_check.enabled {
            let effective: Gauge = Gauge::default();
            effective.set(i64::from(status.self_check.effective == Some(true)));
            effective.encode(encoder.encode_descriptor(
                "node_yurthub_redirect_effective",
                "1 while the last self-check proved that a connection from the pods' cgroup to the VIP lands on the hub",
                None,
                MetricType::Gauge,
            )?)?;
        }
        let before: Gauge = Gauge::default();
        before.set(i64::try_from(status.connect_programs_before_ours).unwrap_or(i64::MAX));
        before.encode(encoder.encode_descriptor(
            "node_yurthub_redirect_programs_before",
            "other cgroup/connect programs that run before the redirect's (they see the VIP first)",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vips_from_the_kubernetes_service() {
        let svc = serde_json::json!({"spec": {"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1", "fd00::1"],
            "ports": [{"name": "metrics", "port": 9090}, {"name": "https", "port": 443}]}});
        assert_eq!(
            service_vips(&svc),
            vec![
                "10.96.0.1:443".parse().unwrap(),
                "[fd00::1]:443".parse().unwrap()
            ]
        );
        let legacy =
            serde_json::json!({"spec": {"clusterIP": "10.0.0.1", "ports": [{"port": 6443}]}});
        assert_eq!(
            service_vips(&legacy),
            vec!["10.0.0.1:6443".parse().unwrap()]
        );
        assert!(service_vips(&serde_json::json!({"spec": {}})).is_empty());
    }

    #[test]
    fn vips_persist_atomically() {
        let d = tempfile::tempdir().unwrap();
        assert!(load_vips(d.path()).is_empty());
        let v = vec!["10.96.0.1:443".parse().unwrap()];
        store_vips(d.path(), &v).unwrap();
        assert_eq!(load_vips(d.path()), v);
    }
}

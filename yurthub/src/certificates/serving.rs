//! The serving identity of the pod-facing HTTPS listener, issued through a
//! CSR with signer `kubernetes.io/kubelet-serving`, CN `system:node:<node>`,
//! O `system:nodes`, and the names pods use for the apiserver:
//!
//! - DNS: `kubernetes`, `kubernetes.default`, `kubernetes.default.svc`,
//!   `kubernetes.default.svc.<cluster-domain>`;
//! - IP: every apiserver VIP the redirect serves, the hub address,
//!   127.0.0.1 and the node IP.
//!
//! Because it is signed by the cluster CA, a pod verifying the apiserver
//! with its service-account `ca.crt` accepts the hub. The CSR is sent with
//! the hub's client certificate (the requester is the node it names). A new
//! certificate is requested when the VIP set changes, at 70–90 % of the
//! lifetime, or when the stored one does not fit; the listener reads the
//! slot per handshake, so established connections are never dropped.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::client::{ClientIdentity, load_identity};
use super::csr::{self, CertInfo, SERVING_SIGNER, SERVING_USAGES, Subject};
use super::issue::Order;
use super::store::Kind;

/// How long to wait for the VIPs before requesting a certificate without
/// them (a new one follows as soon as they are learned).
const VIP_GRACE: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The serving certificate's inputs.
#[derive(Debug, Clone)]
pub struct ServingSettings {
    pub cluster_domain: String,
    pub hub_address: IpAddr,
    pub node_ip: Option<IpAddr>,
    /// The apiserver VIPs (from `--apiserver-vip` or learned from
    /// `default/kubernetes`).
    pub vips: watch::Receiver<Vec<SocketAddr>>,
}

/// DNS names every serving certificate carries.
pub fn dns_names(cluster_domain: &str) -> Vec<String> {
    let mut v: Vec<String> = ["kubernetes", "kubernetes.default", "kubernetes.default.svc"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let domain = cluster_domain.trim_matches('.');
    if !domain.is_empty() {
        v.push(format!("kubernetes.default.svc.{domain}"));
    }
    v
}

/// IP SANs: VIPs, hub address, loopback, node IP; de-duplicated, without
/// unspecified addresses.
pub fn ip_sans(vips: &[SocketAddr], hub: IpAddr, node_ip: Option<IpAddr>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    let candidates = vips
        .iter()
        .map(|v| v.ip())
        .chain([hub, IpAddr::V4(Ipv4Addr::LOCALHOST)])
        .chain(node_ip);
    for ip in candidates {
        if !ip.is_unspecified() && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// Starts keeping the serving certificate (after installing the stored one).
pub fn spawn(client: &ClientIdentity, settings: ServingSettings) {
    let shared = client.shared.clone();
    if let Some(loaded) = load_identity(&shared.settings.store, Kind::Serving) {
        shared.certs.serving_slot().set(loaded);
    }
    tokio::spawn(run(client.clone(), settings));
}

async fn run(client: ClientIdentity, mut settings: ServingSettings) {
    let s = client.shared.clone();
    let slot = s.certs.serving_slot();
    let dns = dns_names(&settings.cluster_domain);
    let mut deadline: Option<(u64, SystemTime)> = None;
    let mut backoff = Duration::from_secs(1);
    let mut client_ready_since: Option<Instant> = None;
    loop {
        let now = SystemTime::now();
        let client_ok = s
            .certs
            .client_slot()
            .get()
            .and_then(|ck| {
                ck.cert
                    .first()
                    .and_then(|c| CertInfo::from_der(c.as_ref()).ok())
            })
            .is_some_and(|i| !i.is_expired(now));
        if !client_ok {
            client_ready_since = None;
            tokio::select! {
                _ = s.shutdown.cancelled() => return,
                _ = s.client_changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let since = *client_ready_since.get_or_insert_with(Instant::now);
        let vips = settings.vips.borrow().clone();
        let ips = ip_sans(&vips, settings.hub_address, settings.node_ip);
        let current = slot.get().and_then(|ck| {
            ck.cert
                .first()
                .and_then(|c| CertInfo::from_der(c.as_ref()).ok())
        });
        let generation = slot.generation();
        let due = match (&current, deadline) {
            (Some(_), Some((g, d))) if g == generation => d,
            (Some(info), _) => {
                let d = info.rotation_deadline();
                deadline = Some((generation, d));
                d
            }
            (None, _) => now,
        };
        let fits = current.as_ref().is_some_and(|i| {
            i.ip_addresses.iter().collect::<BTreeSet<_>>() == ips.iter().collect::<BTreeSet<_>>()
                && i.dns_names.iter().collect::<BTreeSet<_>>()
                    == dns.iter().collect::<BTreeSet<_>>()
        });
        if current.as_ref().is_some_and(|i| i.is_expired(now)) {
            tracing::error!(
                "the serving certificate has EXPIRED; pods will refuse the hub until a new one is issued"
            );
        }
        let needed = !fits || now >= due;
        if !needed {
            let wait = due.duration_since(now).unwrap_or_default();
            tokio::select! {
                _ = s.shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = changed(&mut settings.vips) => {}
            }
            continue;
        }
        if vips.is_empty() && since.elapsed() < VIP_GRACE {
            tokio::select! {
                _ = s.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = changed(&mut settings.vips) => {}
            }
            continue;
        }
        if vips.is_empty() {
            tracing::warn!(
                "the apiserver VIPs are not known yet; requesting a serving certificate without them"
            );
        }
        let order = Order {
            prefix: "yurthub-serving",
            signer: SERVING_SIGNER,
            usages: SERVING_USAGES,
            subject: Subject {
                common_name: format!("system:node:{}", s.settings.node),
                organizations: vec!["system:nodes".into()],
                dns_names: dns.clone(),
                ip_addresses: ips.clone(),
            },
            wait: Duration::from_secs(15 * 60),
        };
        tracing::info!(ips = ?ips, reason = if current.is_none() { "missing" } else if !fits { "names changed" } else { "rotation" },
            "requesting a serving certificate");
        let result = s
            .issue_anywhere(&order, |server| s.hub_client(server))
            .await
            .and_then(|issued| {
                let ck = csr::certified_key(&issued.chain_pem, &issued.key_pem)
                    .map_err(super::issue::Error::from)?;
                s.settings
                    .store
                    .write_identity(Kind::Serving, &issued.chain_pem, &issued.key_pem)?;
                slot.set(ck);
                tracing::info!(not_after = ?issued.info.not_after, ips = ?issued.info.ip_addresses, "serving certificate installed");
                Ok(())
            });
        match result {
            Ok(()) => backoff = Duration::from_secs(1),
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?backoff, "serving certificate not issued");
                tokio::select! {
                    _ = s.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Resolves when the VIP set changes; never, once its sender is gone.
async fn changed(rx: &mut watch::Receiver<Vec<SocketAddr>>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans_cover_vips_hub_loopback_and_node_once() {
        let vips: Vec<SocketAddr> = vec![
            "10.96.0.1:443".parse().unwrap(),
            "10.96.0.1:6443".parse().unwrap(),
        ];
        let ips = ip_sans(
            &vips,
            "169.254.2.1".parse().unwrap(),
            Some("192.168.1.5".parse().unwrap()),
        );
        let want: Vec<IpAddr> = ["10.96.0.1", "169.254.2.1", "127.0.0.1", "192.168.1.5"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(ips, want);
        assert_eq!(
            dns_names("cluster.local."),
            [
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local"
            ]
        );
    }
}

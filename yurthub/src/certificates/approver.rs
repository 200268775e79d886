//! `yurthub approve-csrs`: the cluster-side approver of the hub's two CSR
//! shapes (the role of OpenYurt's yurt-manager csrapprover; without one a
//! vanilla cluster never issues the hub's certificates).
//!
//! It approves exactly:
//!
//! - **client**: signer `kubernetes.io/kube-apiserver-client`, CN
//!   `system:node:<n>`, O ⊇ {`openyurt:yurthub`, `system:nodes`} and
//!   otherwise only `openyurt:tenant:*` or `--allowed-organizations`, no SANs,
//!   usages {client auth, digital signature[, key encipherment]}; requested
//!   either by `system:node:<n>` itself (renewal: kube-controller-manager's
//!   `selfnodeclient` rule) or by a bootstrap token user in
//!   `system:bootstrappers` (first issuance: the `nodeclient` rule). Like
//!   kube-controller-manager, the requester must also pass a
//!   SubjectAccessReview for `certificatesigningrequests/selfnodeclient` or
//!   `/nodeclient`, so RBAC (kubeadm's node-autoapprove bindings) decides
//!   which tokens may bootstrap nodes;
//! - **serving**: signer `kubernetes.io/kubelet-serving`, CN
//!   `system:node:<n>`, O exactly {`system:nodes`}, requested by
//!   `system:node:<n>` itself (group `system:nodes`), usages {server auth,
//!   digital signature[, key encipherment]}, DNS SANs within `kubernetes`,
//!   `kubernetes.default`, `kubernetes.default.svc`,
//!   `kubernetes.default.svc.<cluster-domain>`, IP SANs within the
//!   ClusterIPs of `default/kubernetes`, loopback, `--hub-address` and the
//!   addresses of node `<n>`.
//!
//! Stricter than yurt-manager, which never checks who asked: a node cannot
//! obtain another node's identity, and no requester can add a group such
//! as `system:masters` or a name pods would trust for something else.
//!
//! CSRs of these signers that look like a hub's (client: O has
//! `openyurt:yurthub`; serving: a `kubernetes*` DNS SAN) but break a rule are
//! denied, with the reason in the Denied condition and a Warning Event.
//! Everything else (kubelet's own CSRs, users' certificates, other signers)
//! is left alone for other approvers.
//!
//! Least-privilege RBAC for its service account (ClusterRole):
//!
//! | apiGroups | resources | resourceNames | verbs |
//! |---|---|---|---|
//! | certificates.k8s.io | certificatesigningrequests | | get, list, watch |
//! | certificates.k8s.io | certificatesigningrequests/approval | | update |
//! | certificates.k8s.io | signers | kubernetes.io/kube-apiserver-client, kubernetes.io/kubelet-serving | approve |
//! | authorization.k8s.io | subjectaccessreviews | | create |
//! | "" | nodes | | get |
//! | "" | services | kubernetes | get (namespace default) |
//! | "" | events | | create (namespace default) |
//!
//! (`approve` on the signers is what the apiserver checks for both
//! approving and denying.)

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::{Buf, BytesMut};
use http::{Method, Uri};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension};

use super::api::{self, ApiClient};
use super::bootstrap;
use super::csr::{CLIENT_SIGNER, SERVING_SIGNER, ip_from_bytes};

const CSR_PATH: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
const COMPONENT: &str = "yurthub-csr-approver";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the kubeconfig {path}: {reason}")]
    Kubeconfig { path: PathBuf, reason: String },
    #[error(
        "no --kubeconfig and not in a cluster (KUBERNETES_SERVICE_HOST/PORT and the service account files): {0}"
    )]
    NoConfig(String),
    #[error(transparent)]
    Api(#[from] api::Error),
}

/// The approver's policy inputs from flags.
#[derive(Debug, Clone)]
pub struct Policy {
    pub cluster_domain: String,
    pub hub_addresses: Vec<IpAddr>,
    pub allowed_organizations: Vec<String>,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            cluster_domain: "cluster.local".into(),
            hub_addresses: vec![IpAddr::V4(Ipv4Addr::new(169, 254, 2, 1))],
            allowed_organizations: Vec::new(),
        }
    }
}

/// Facts from the cluster a serving decision needs.
#[derive(Debug, Clone, Default)]
pub struct ClusterFacts {
    pub service_ips: Vec<IpAddr>,
    pub node_ips: Vec<IpAddr>,
}

/// The verdict on one CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A hub CSR that follows every rule.
    Approve { kind: &'static str, node: String },
    /// A hub CSR that breaks a rule.
    Deny(String),
    /// Not a hub CSR; other approvers may handle it.
    Ignore(String),
}

/// What a CSR asks for, parsed from its PKCS#10 request.
#[derive(Debug, Clone, Default)]
struct Asked {
    cn: String,
    orgs: Vec<String>,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    other_sans: usize,
}

fn parse_request(csr: &Value) -> Result<Asked, String> {
    let b64 = csr
        .pointer("/spec/request")
        .and_then(Value::as_str)
        .ok_or("spec.request is missing")?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("spec.request is not base64: {e}"))?;
    let der = match rustls_pemfile::read_one(&mut pem.as_slice()) {
        Ok(Some(rustls_pemfile::Item::Csr(der))) => der,
        _ => return Err("spec.request is not a PEM CERTIFICATE REQUEST".into()),
    };
    let (_, req) = X509CertificationRequest::from_der(&der)
        .map_err(|e| format!("spec.request does not parse: {e}"))?;
    req.verify_signature()
        .map_err(|e| format!("the request's self-signature does not verify: {e}"))?;
    let subject = &req.certification_request_info.subject;
    let mut asked = Asked {
        cn: subject
            .iter_common_name()
            .filter_map(|a| a.as_str().ok())
            .next()
            .unwrap_or("")
            .to_owned(),
        orgs: subject
            .iter_organization()
            .filter_map(|a| a.as_str().ok().map(str::to_owned))
            .collect(),
        ..Asked::default()
    };
    for ext in req.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for n in &san.general_names {
                match n {
                    GeneralName::DNSName(d) => asked.dns.push((*d).to_owned()),
                    GeneralName::IPAddress(b) => match ip_from_bytes(b) {
                        Some(ip) => asked.ips.push(ip),
                        None => asked.other_sans += 1,
                    },
                    _ => asked.other_sans += 1,
                }
            }
        }
    }
    Ok(asked)
}

fn strings(v: &Value, pointer: &str) -> Vec<String> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn usages_ok(usages: &[String], purpose: &str) -> bool {
    let set: BTreeSet<&str> = usages.iter().map(String::as_str).collect();
    let required: BTreeSet<&str> = [purpose, "digital signature"].into();
    let with_ke: BTreeSet<&str> = [purpose, "digital signature", "key encipherment"].into();
    set == required || set == with_ke
}

/// The requester's relation to the CSR, for the SubjectAccessReview.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requester {
    /// The node itself (renewal / serving): `selfnodeclient`.
    SelfNode,
    /// A bootstrap token user: `nodeclient`.
    Bootstrapper,
}

/// Judges a CSR against the policy without side effects. When an approval
/// comes with a [`Requester`] (client CSRs), the caller still runs the
/// SubjectAccessReview for it.
pub fn evaluate(
    csr: &Value,
    policy: &Policy,
    facts: &ClusterFacts,
) -> (Decision, Option<Requester>) {
    let signer = csr
        .pointer("/spec/signerName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if signer != CLIENT_SIGNER && signer != SERVING_SIGNER {
        return (
            Decision::Ignore(format!("signer {signer:?} is not a yurthub signer")),
            None,
        );
    }
    let asked = match parse_request(csr) {
        Ok(a) => a,
        Err(e) => return (Decision::Ignore(e), None),
    };
    let username = csr
        .pointer("/spec/username")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let groups = strings(csr, "/spec/groups");
    let usages = strings(csr, "/spec/usages");
    let node = asked
        .cn
        .strip_prefix("system:node:")
        .unwrap_or("")
        .to_owned();
    let deny = |why: String| (Decision::Deny(why), None);

    if signer == CLIENT_SIGNER {
        if !asked.orgs.iter().any(|o| o == "openyurt:yurthub") {
            return (
                Decision::Ignore(
                    "client CSR without organization openyurt:yurthub is not a yurthub CSR".into(),
                ),
                None,
            );
        }
        if node.is_empty() {
            return deny(format!(
                "common name {:?} is not system:node:<node>",
                asked.cn
            ));
        }
        if !asked.orgs.iter().any(|o| o == "system:nodes") {
            return deny("organizations must include system:nodes".into());
        }
        if let Some(bad) = asked.orgs.iter().find(|o| {
            !matches!(o.as_str(), "openyurt:yurthub" | "system:nodes")
                && !o.starts_with("openyurt:tenant:")
                && !policy.allowed_organizations.contains(o)
        }) {
            return deny(format!(
                "organization {bad:?} is not allowed for a yurthub client certificate"
            ));
        }
        if !asked.dns.is_empty() || !asked.ips.is_empty() || asked.other_sans > 0 {
            return deny(
                "a client certificate request must not carry subject alternative names".into(),
            );
        }
        if !usages_ok(&usages, "client auth") {
            return deny(format!("usages {usages:?} are not the client usages"));
        }
        let requester = if username == asked.cn {
            Requester::SelfNode
        } else if username.starts_with("system:bootstrap:")
            && groups.iter().any(|g| g == "system:bootstrappers")
        {
            Requester::Bootstrapper
        } else {
            return deny(format!(
                "requester {username:?} is neither {:?} nor a bootstrap token user in system:bootstrappers",
                asked.cn
            ));
        };
        return (
            Decision::Approve {
                kind: "client",
                node,
            },
            Some(requester),
        );
    }

    // kubelet-serving: only the hub's shape (it asks for the apiserver's names).
    let allowed_dns: BTreeSet<String> = super::serving::dns_names(&policy.cluster_domain)
        .into_iter()
        .collect();
    if !asked
        .dns
        .iter()
        .any(|d| d == "kubernetes" || d.starts_with("kubernetes.default"))
    {
        return (
            Decision::Ignore(
                "serving CSR without kubernetes.default names is not a yurthub CSR".into(),
            ),
            None,
        );
    }
    if node.is_empty() {
        return deny(format!(
            "common name {:?} is not system:node:<node>",
            asked.cn
        ));
    }
    if asked.orgs != ["system:nodes"] {
        return deny(format!(
            "organizations {:?} are not exactly [system:nodes]",
            asked.orgs
        ));
    }
    if username != asked.cn || !groups.iter().any(|g| g == "system:nodes") {
        return deny(format!(
            "requester {username:?} is not the node {:?} it names",
            asked.cn
        ));
    }
    if !usages_ok(&usages, "server auth") {
        return deny(format!("usages {usages:?} are not the serving usages"));
    }
    if asked.other_sans > 0 {
        return deny("only DNS and IP subject alternative names are allowed".into());
    }
    if let Some(bad) = asked.dns.iter().find(|d| !allowed_dns.contains(*d)) {
        return deny(format!("DNS name {bad:?} is not one of {allowed_dns:?}"));
    }
    let allowed_ips: BTreeSet<IpAddr> = facts
        .service_ips
        .iter()
        .chain(&facts.node_ips)
        .chain(&policy.hub_addresses)
        .copied()
        .chain([
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ])
        .collect();
    if let Some(bad) = asked.ips.iter().find(|ip| !allowed_ips.contains(ip)) {
        return deny(format!(
            "IP address {bad} is not the apiserver service, the hub address, loopback or an address of node {node:?}"
        ));
    }
    // No SubjectAccessReview here: kube-controller-manager has no rule for
    // kubelet-serving; the requester is the node itself (checked above).
    (
        Decision::Approve {
            kind: "serving",
            node,
        },
        None,
    )
}

/// How the approver reaches the apiserver.
pub fn client_from_kubeconfig(path: Option<&Path>) -> Result<ApiClient, Error> {
    let (server, ca_pem, token, client_pem) = match path {
        Some(p) => {
            let err = |reason: String| Error::Kubeconfig {
                path: p.to_owned(),
                reason,
            };
            let text = std::fs::read_to_string(p).map_err(|e| err(e.to_string()))?;
            let kc = bootstrap::parse_kubeconfig(&text, p.parent().unwrap_or(Path::new(".")))
                .map_err(err)?;
            (kc.server, kc.ca_pem, kc.token, kc.client_pem)
        }
        None => {
            let host = std::env::var("KUBERNETES_SERVICE_HOST")
                .map_err(|_| Error::NoConfig("KUBERNETES_SERVICE_HOST is not set".into()))?;
            let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
            let sa = Path::new("/var/run/secrets/kubernetes.io/serviceaccount");
            let read = |f: &str| {
                std::fs::read_to_string(sa.join(f))
                    .map_err(|e| Error::NoConfig(format!("{}: {e}", sa.join(f).display())))
            };
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            (
                format!("https://{host}:{port}"),
                read("ca.crt")?,
                read("token")?.trim().to_owned(),
                None,
            )
        }
    };
    let cfg_err = |reason: String| Error::Kubeconfig {
        path: path.map(Path::to_owned).unwrap_or_default(),
        reason,
    };
    let base: Uri = server
        .parse()
        .map_err(|e| cfg_err(format!("server {server:?}: {e}")))?;
    let roots = api::roots_from_pem(&ca_pem).map_err(cfg_err)?;
    let resolver: Option<Arc<dyn rustls::client::ResolvesClientCert>> = match client_pem {
        Some((cert, key)) => {
            let ck = super::csr::certified_key(&cert, &key).map_err(|e| cfg_err(e.to_string()))?;
            let slot = super::Slot::default();
            slot.set(ck);
            Some(Arc::new(super::ClientCertResolver(slot)))
        }
        None => None,
    };
    Ok(ApiClient::new(base, api::tls_with_roots(roots, resolver))
        .with_bearer(Some(token))
        .with_timeout(Duration::from_secs(30)))
}

/// The running approver.
pub struct Approver {
    api: ApiClient,
    policy: Policy,
}

impl Approver {
    pub fn new(api: ApiClient, policy: Policy) -> Approver {
        Approver { api, policy }
    }

    /// Lists and watches CSRs until `shutdown`, deciding each pending one.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.cycle() => r,
            };
            match result {
                Ok(()) => backoff = Duration::from_secs(1),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "listing/watching CSRs failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// One list (deciding every pending CSR, which also retries those a
    /// transient error left pending) and one bounded watch from there.
    async fn cycle(&self) -> Result<(), Error> {
        let list = self.api.json(Method::GET, CSR_PATH, None).await?;
        for csr in list["items"].as_array().into_iter().flatten() {
            self.consider(csr).await;
        }
        let rv = list
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let path = format!(
            "{CSR_PATH}?watch=1&resourceVersion={rv}&timeoutSeconds=30&allowWatchBookmarks=true"
        );
        let resp = self.api.send(Method::GET, &path, None).await?;
        if !resp.status().is_success() {
            // 410 and friends: the next cycle relists.
            return Ok(());
        }
        let mut body = resp.into_body();
        let mut buf = BytesMut::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
        loop {
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) | Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => {
                    return Err(Error::Api(api::Error::Transport {
                        url: path.clone(),
                        reason: e.to_string(),
                    }));
                }
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line = buf.split_to(pos + 1);
                let Ok(event) = serde_json::from_slice::<Value>(&line[..pos]) else {
                    continue;
                };
                match event["type"].as_str() {
                    Some("ADDED" | "MODIFIED") => self.consider(&event["object"]).await,
                    Some("ERROR") => return Ok(()),
                    _ => {}
                }
            }
            // A JSON watch without newlines (one object per frame).
            if !buf.is_empty()
                && let Ok(event) = serde_json::from_slice::<Value>(&buf)
            {
                buf.advance(buf.len());
                if matches!(event["type"].as_str(), Some("ADDED" | "MODIFIED")) {
                    self.consider(&event["object"]).await;
                }
            }
        }
    }

    async fn consider(&self, csr: &Value) {
        let name = csr
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let decided = csr
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| matches!(c["type"].as_str(), Some("Approved" | "Denied")))
            })
            || csr
                .pointer("/status/certificate")
                .and_then(Value::as_str)
                .is_some_and(|c| !c.is_empty());
        if decided {
            return;
        }
        let facts = match self.facts(csr).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(csr = name, error = %e, "cannot read the cluster facts to judge the CSR; will retry");
                return;
            }
        };
        let (mut decision, requester) = evaluate(csr, &self.policy, &facts);
        if let (Decision::Approve { .. }, Some(r)) = (&decision, requester) {
            match self.access_review(csr, r).await {
                Ok(true) => {}
                Ok(false) => {
                    decision = Decision::Deny(format!(
                        "requester is not authorized to create certificatesigningrequests/{}",
                        subresource(r)
                    ))
                }
                Err(e) => {
                    tracing::warn!(csr = name, error = %e, "SubjectAccessReview failed; will retry");
                    return;
                }
            }
        }
        match decision {
            Decision::Ignore(why) => tracing::debug!(csr = name, why, "not a yurthub CSR; ignored"),
            Decision::Approve { kind, node } => {
                let msg =
                    format!("approved by {COMPONENT}: yurthub {kind} certificate for node {node}");
                match self
                    .set_condition(csr, "Approved", "AutoApproved", &msg)
                    .await
                {
                    Ok(()) => tracing::info!(csr = name, kind, node, "approved"),
                    Err(e) => {
                        tracing::warn!(csr = name, error = %e, "approving failed; will retry")
                    }
                }
            }
            Decision::Deny(why) => {
                let msg = format!("denied by {COMPONENT}: {why}");
                match self
                    .set_condition(csr, "Denied", "YurthubPolicy", &msg)
                    .await
                {
                    Ok(()) => {
                        tracing::warn!(csr = name, why, "denied");
                        self.event(csr, &msg).await;
                    }
                    Err(e) => tracing::warn!(csr = name, error = %e, "denying failed; will retry"),
                }
            }
        }
    }

    async fn facts(&self, csr: &Value) -> Result<ClusterFacts, api::Error> {
        if csr.pointer("/spec/signerName").and_then(Value::as_str) != Some(SERVING_SIGNER) {
            return Ok(ClusterFacts::default());
        }
        let svc = self
            .api
            .json(
                Method::GET,
                "/api/v1/namespaces/default/services/kubernetes",
                None,
            )
            .await?;
        let mut facts = ClusterFacts {
            service_ips: crate::redirector::service_vips(&svc)
                .into_iter()
                .map(|v| v.ip())
                .collect(),
            node_ips: Vec::new(),
        };
        let node = parse_request(csr)
            .ok()
            .and_then(|a| a.cn.strip_prefix("system:node:").map(str::to_owned))
            .unwrap_or_default();
        if !node.is_empty() {
            match self
                .api
                .json(Method::GET, &format!("/api/v1/nodes/{node}"), None)
                .await
            {
                Ok(n) => {
                    facts.node_ips = n
                        .pointer("/status/addresses")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter(|a| matches!(a["type"].as_str(), Some("InternalIP" | "ExternalIP")))
                        .filter_map(|a| a["address"].as_str()?.parse().ok())
                        .collect()
                }
                // No Node object (yet): only the fixed addresses are allowed.
                Err(api::Error::Status { code, .. }) if code.as_u16() == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(facts)
    }

    async fn access_review(&self, csr: &Value, r: Requester) -> Result<bool, api::Error> {
        let spec = &csr["spec"];
        let review = json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": spec["username"],
                "uid": spec["uid"],
                "groups": spec["groups"],
                "extra": spec["extra"],
                "resourceAttributes": {
                    "group": "certificates.k8s.io",
                    "resource": "certificatesigningrequests",
                    "verb": "create",
                    "subresource": subresource(r),
                },
            },
        });
        let out = self
            .api
            .json(
                Method::POST,
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                Some(&review),
            )
            .await?;
        Ok(out.pointer("/status/allowed").and_then(Value::as_bool) == Some(true))
    }

    async fn set_condition(
        &self,
        csr: &Value,
        kind: &str,
        reason: &str,
        message: &str,
    ) -> Result<(), api::Error> {
        let name = csr
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let mut obj = csr.clone();
        let now = now_rfc3339();
        let condition = json!({"type": kind, "status": "True", "reason": reason,
            "message": message, "lastUpdateTime": now, "lastTransitionTime": now});
        if !obj["status"].is_object() {
            obj["status"] = json!({});
        }
        match obj["status"]["conditions"].as_array_mut() {
            Some(list) => list.push(condition),
            None => obj["status"]["conditions"] = json!([condition]),
        }
        self.api
            .json(
                Method::PUT,
                &format!("{CSR_PATH}/{name}/approval"),
                Some(&obj),
            )
            .await
            .map(|_| ())
    }

    async fn event(&self, csr: &Value, message: &str) {
        let name = csr
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let now = now_rfc3339();
        let suffix: String = (0..10)
            .map(|_| char::from(b"0123456789abcdef"[rand::random_range(0..16)]))
            .collect();
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": format!("{name}.{suffix}"), "namespace": "default"},
            "involvedObject": {
                "apiVersion": "certificates.k8s.io/v1",
                "kind": "CertificateSigningRequest",
                "name": name,
                "uid": csr.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
            },
            "reason": "CSRDenied",
            "message": message,
            "type": "Warning",
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        if let Err(e) = self
            .api
            .json(
                Method::POST,
                "/api/v1/namespaces/default/events",
                Some(&event),
            )
            .await
        {
            tracing::warn!(csr = name, error = %e, "recording the denial event failed");
        }
    }
}

fn subresource(r: Requester) -> &'static str {
    match r {
        Requester::SelfNode => "selfnodeclient",
        Requester::Bootstrapper => "nodeclient",
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certificates::csr::{CLIENT_USAGES, SERVING_USAGES, Subject, new_request};

    fn csr(signer: &str, subject: &Subject, user: &str, groups: &[&str], usages: &[&str]) -> Value {
        let req = new_request(subject).unwrap();
        json!({"metadata": {"name": "c"}, "spec": {
            "signerName": signer,
            "request": base64::engine::general_purpose::STANDARD.encode(req.pem),
            "username": user, "groups": groups, "usages": usages}})
    }

    fn client_subject(node: &str, orgs: &[&str]) -> Subject {
        Subject {
            common_name: format!("system:node:{node}"),
            organizations: orgs.iter().map(|s| s.to_string()).collect(),
            dns_names: vec![],
            ip_addresses: vec![],
        }
    }

    fn serving_subject(node: &str, dns: &[&str], ips: &[&str]) -> Subject {
        Subject {
            common_name: format!("system:node:{node}"),
            organizations: vec!["system:nodes".into()],
            dns_names: dns.iter().map(|s| s.to_string()).collect(),
            ip_addresses: ips.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    fn facts() -> ClusterFacts {
        ClusterFacts {
            service_ips: vec!["10.96.0.1".parse().unwrap()],
            node_ips: vec!["192.168.0.5".parse().unwrap()],
        }
    }

    const HUB: &[&str] = &["openyurt:yurthub", "system:nodes"];
    const SVC: &[&str] = &[
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ];

    #[test]
    fn client_csrs_from_the_node_or_a_bootstrapper_are_approved() {
        let p = Policy::default();
        let c = csr(
            CLIENT_SIGNER,
            &client_subject("n1", HUB),
            "system:node:n1",
            &["system:nodes"],
            &CLIENT_USAGES,
        );
        assert_eq!(
            evaluate(&c, &p, &facts()),
            (
                Decision::Approve {
                    kind: "client",
                    node: "n1".into()
                },
                Some(Requester::SelfNode)
            )
        );
        let c = csr(
            CLIENT_SIGNER,
            &client_subject("n1", HUB),
            "system:bootstrap:abcdef",
            &["system:bootstrappers"],
            &CLIENT_USAGES,
        );
        assert_eq!(evaluate(&c, &p, &facts()).1, Some(Requester::Bootstrapper));
    }

    #[test]
    fn client_csrs_for_another_node_or_extra_groups_are_denied() {
        let p = Policy::default();
        let c = csr(
            CLIENT_SIGNER,
            &client_subject("n2", HUB),
            "system:node:n1",
            &["system:nodes"],
            &CLIENT_USAGES,
        );
        let (d, _) = evaluate(&c, &p, &facts());
        assert!(
            matches!(&d, Decision::Deny(w) if w.contains("neither")),
            "{d:?}"
        );
        let c = csr(
            CLIENT_SIGNER,
            &client_subject(
                "n1",
                &["openyurt:yurthub", "system:nodes", "system:masters"],
            ),
            "system:node:n1",
            &[],
            &CLIENT_USAGES,
        );
        let (d, _) = evaluate(&c, &p, &facts());
        assert!(
            matches!(&d, Decision::Deny(w) if w.contains("system:masters")),
            "{d:?}"
        );
        let c = csr(
            CLIENT_SIGNER,
            &client_subject("n1", HUB),
            "system:node:n1",
            &[],
            &["client auth", "digital signature", "server auth"],
        );
        assert!(matches!(evaluate(&c, &p, &facts()).0, Decision::Deny(_)));
        let c = csr(
            CLIENT_SIGNER,
            &client_subject("n1", &["system:nodes"]),
            "x",
            &[],
            &CLIENT_USAGES,
        );
        assert!(matches!(evaluate(&c, &p, &facts()).0, Decision::Ignore(_)));
    }

    #[test]
    fn serving_csrs_are_limited_to_the_documented_names() {
        let p = Policy::default();
        let ok = serving_subject(
            "n1",
            SVC,
            &["10.96.0.1", "169.254.2.1", "127.0.0.1", "192.168.0.5"],
        );
        let c = csr(
            SERVING_SIGNER,
            &ok,
            "system:node:n1",
            &["system:nodes"],
            &SERVING_USAGES,
        );
        assert!(matches!(
            evaluate(&c, &p, &facts()).0,
            Decision::Approve {
                kind: "serving",
                ..
            }
        ));
        let extra_dns = serving_subject("n1", &["kubernetes", "evil.example.com"], &[]);
        let c = csr(
            SERVING_SIGNER,
            &extra_dns,
            "system:node:n1",
            &["system:nodes"],
            &SERVING_USAGES,
        );
        assert!(
            matches!(&evaluate(&c, &p, &facts()).0, Decision::Deny(w) if w.contains("evil.example.com"))
        );
        let extra_ip = serving_subject("n1", SVC, &["8.8.8.8"]);
        let c = csr(
            SERVING_SIGNER,
            &extra_ip,
            "system:node:n1",
            &["system:nodes"],
            &SERVING_USAGES,
        );
        assert!(
            matches!(&evaluate(&c, &p, &facts()).0, Decision::Deny(w) if w.contains("8.8.8.8"))
        );
        let other = serving_subject("n2", SVC, &["127.0.0.1"]);
        let c = csr(
            SERVING_SIGNER,
            &other,
            "system:node:n1",
            &["system:nodes"],
            &SERVING_USAGES,
        );
        assert!(
            matches!(&evaluate(&c, &p, &facts()).0, Decision::Deny(w) if w.contains("not the node"))
        );
        let kubelet = serving_subject("n1", &["n1.example"], &["192.168.0.5"]);
        let c = csr(
            SERVING_SIGNER,
            &kubelet,
            "system:node:n1",
            &["system:nodes"],
            &SERVING_USAGES,
        );
        assert!(matches!(evaluate(&c, &p, &facts()).0, Decision::Ignore(_)));
    }
}

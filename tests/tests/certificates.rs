//! Token-mode certificates through the public surface: bootstrap from a join
//! token (cluster-info JWS and CA pin), the two CSRs and the
//! `approve-csrs` subcommand, readiness, what pods and kubectl see on the
//! pod-facing TLS listener, rotation, refusals, and `/v1/token`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use yurthub::certificates::{approver, bootstrap, csr};
use yurthub_e2e::apiserver::{ApiServer, Credential, User};
use yurthub_e2e::hub::{
    self, Hub, NODE, eventually, free_port, get, get_request, kubectl, kubectl_ok, plain_client,
    send, tls_send,
};

const TOKEN_ID: &str = "abcdef";
const TOKEN_SECRET: &str = "0123456789abcdef";
const POD_TOKEN: &str = "pod-token";
const ADMIN_TOKEN: &str = "admin-token";
const NODE_IP: &str = "192.168.0.10";
const VIP: &str = "10.96.0.1";
const KUBELET: &str = "kubelet/v1.34.0 (linux/amd64) kubernetes/abcdef";

fn builder() -> yurthub_e2e::apiserver::ApiServerBuilder {
    ApiServer::builder()
        .token(
            POD_TOKEN,
            User::new(
                "system:serviceaccount:default:default",
                &["system:serviceaccounts"],
            ),
        )
        .token(ADMIN_TOKEN, User::new("admin", &["system:masters"]))
}

/// The node with the address the hub puts in its serving certificate.
fn create_node(api: &ApiServer) {
    let node = api
        .create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}))
        .expect("node");
    let mut node = node;
    node["status"] = json!({"addresses": [{"type": "InternalIP", "address": NODE_IP}]});
    api.update_status(node).expect("node status");
}

fn pin(api: &ApiServer) -> String {
    bootstrap::ca_cert_hash(api.ca_pem()).expect("CA hash")
}

/// Flags of a token-mode hub rooted in `root`.
fn token_args(api: &ApiServer, root: &Path, token: &str, pin: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "yurthub".into(),
        format!("--node-name={NODE}"),
        "--nodepool-name=pool".into(),
        format!("--server-addr={}", api.url()),
        "--bootstrap-mode=token".into(),
        format!("--join-token={token}"),
        format!("--discovery-token-ca-cert-hash={pin}"),
        format!("--node-ip={NODE_IP}"),
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
        "--shutdown-grace-period=3s".into(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn admin_kubeconfig(api: &ApiServer, dir: &Path) -> PathBuf {
    let path = dir.join("admin.conf");
    std::fs::write(
        &path,
        api.kubeconfig_for("admin").expect("admin kubeconfig"),
    )
    .expect("write");
    path
}

/// `yurthub approve-csrs` as a process, killed on drop.
struct ApproverProcess(Child);

impl ApproverProcess {
    fn spawn(kubeconfig: &Path) -> ApproverProcess {
        // Other builds sharing the target directory may have replaced the
        // binary: say so instead of timing out later.
        let help = Command::new(hub::hub_binary())
            .args(["approve-csrs", "--help"])
            .output()
            .expect("run yurthub-under-test");
        assert!(
            help.status.success(),
            "{} has no approve-csrs subcommand (a stale or foreign build?): {}",
            hub::hub_binary().display(),
            String::from_utf8_lossy(&help.stderr)
        );
        let child = Command::new(hub::hub_binary())
            .args(["approve-csrs", "--kubeconfig"])
            .arg(kubeconfig)
            .args(["--hub-address=127.0.0.1", "--v=2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn approve-csrs");
        ApproverProcess(child)
    }
}

impl Drop for ApproverProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The approver in-process, stopped on drop.
struct InProcessApprover(tokio_util::sync::CancellationToken);

impl InProcessApprover {
    fn start(kubeconfig: &Path) -> InProcessApprover {
        let api = approver::client_from_kubeconfig(Some(kubeconfig)).expect("approver client");
        let policy = approver::Policy {
            hub_addresses: vec!["127.0.0.1".parse().unwrap()],
            ..approver::Policy::default()
        };
        let token = tokio_util::sync::CancellationToken::new();
        let t = token.clone();
        tokio::spawn(async move { approver::Approver::new(api, policy).run(t).await });
        InProcessApprover(token)
    }
}

impl Drop for InProcessApprover {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

async fn readyz(hub: &Hub) -> (StatusCode, String) {
    let r = get(
        &plain_client(),
        &format!("{}/v1/readyz", hub.hub_url()),
        "curl",
    )
    .await;
    (r.status, r.text())
}

async fn wait_ready(hub: &Hub, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (code, text) = readyz(hub).await;
        if code == StatusCode::OK {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "hub not ready within {within:?}: {code} {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn cert_status(hub: &Hub) -> Value {
    get(
        &plain_client(),
        &format!("{}/v1/certificates", hub.hub_url()),
        "curl",
    )
    .await
    .json()
}

fn csrs(api: &ApiServer) -> Vec<Value> {
    api.list("certificates.k8s.io/v1", "CertificateSigningRequest", None)
}

fn condition(csr: &Value, kind: &str) -> Option<String> {
    csr.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .map(|c| c["message"].as_str().unwrap_or("").to_owned())
}

/// A GET a pod would make on the pod-facing listener, verifying the hub as
/// `server_name` with nothing but the cluster CA.
async fn pod_get(hub: &Hub, api: &ApiServer, server_name: &str) -> Result<hub::Reply, String> {
    tls_send(
        hub.secure,
        server_name,
        api.ca_pem(),
        None,
        get_request(
            &format!(
                "https://{}/api/v1/namespaces/default/services/kubernetes",
                if server_name.contains(':') {
                    format!("[{server_name}]")
                } else {
                    server_name.to_owned()
                }
            ),
            "pod/1.0",
            &[("authorization", &format!("Bearer {POD_TOKEN}"))],
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_token_bootstrap_issues_both_certificates_through_the_approver() {
    let api = builder()
        .csr_auto_approve(false)
        .start()
        .await
        .expect("double");
    create_node(&api);
    let token = api
        .create_bootstrap_token(TOKEN_ID, TOKEN_SECRET, &[])
        .expect("token");
    let dir = tempfile::tempdir().expect("dir");
    let root = dir.path().join("root");
    let hub = Hub::start(&token_args(&api, &root, &token, &pin(&api), &[])).await;

    // Listeners are up before any certificate exists.
    let r = get(
        &plain_client(),
        &format!("{}/v1/healthz", hub.hub_url()),
        "curl",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    eventually(
        Duration::from_secs(20),
        "the client CSR is submitted",
        || async { !csrs(&api).is_empty() },
    )
    .await;
    let (code, text) = readyz(&hub).await;
    assert_eq!(
        (code, text.as_str()),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "certificates are not ready"
        ),
        "no approver yet, so nothing can be issued"
    );
    let pending = &csrs(&api)[0];
    assert_eq!(
        pending["spec"]["username"],
        format!("system:bootstrap:{TOKEN_ID}")
    );
    assert_eq!(pending["spec"]["signerName"], csr::CLIENT_SIGNER);

    let _approver = InProcessApprover::start(&admin_kubeconfig(&api, dir.path()));
    wait_ready(&hub, Duration::from_secs(60)).await;

    // Both CSRs, approved by our approver, each requested by whom it should be.
    let all = csrs(&api);
    let approved: Vec<&Value> = all
        .iter()
        .filter(|c| condition(c, "Approved").is_some_and(|m| m.contains("yurthub-csr-approver")))
        .collect();
    let by_signer = |s: &str| {
        approved
            .iter()
            .find(|c| c["spec"]["signerName"] == s)
            .copied()
    };
    let client = by_signer(csr::CLIENT_SIGNER).expect("an approved client CSR");
    let serving = by_signer(csr::SERVING_SIGNER).expect("an approved serving CSR");
    assert_eq!(
        client["spec"]["username"],
        format!("system:bootstrap:{TOKEN_ID}")
    );
    assert_eq!(serving["spec"]["username"], format!("system:node:{NODE}"));

    // What the hub holds, as /v1/certificates reports it.
    let st = cert_status(&hub).await;
    assert_eq!(
        st["client"]["commonName"],
        format!("system:node:{NODE}"),
        "{st}"
    );
    let orgs = st["client"]["organizations"].to_string();
    assert!(
        orgs.contains("openyurt:yurthub") && orgs.contains("system:nodes"),
        "{st}"
    );
    let ips = st["serving"]["ipAddresses"].to_string();
    for ip in [VIP, "127.0.0.1", NODE_IP] {
        assert!(ips.contains(ip), "serving cert lacks {ip}: {st}");
    }

    // Stored files: the cluster CA and a private 0600 identity.
    use std::os::unix::fs::PermissionsExt;
    let ca = std::fs::read_to_string(root.join("pki/ca.crt")).expect("ca.crt");
    assert_eq!(ca.trim(), api.ca_pem().trim());
    for f in [
        "pki/yurthub-current.pem",
        "pki/yurthub-server-current.pem",
        "bootstrap-hub.conf",
    ] {
        let mode = std::fs::metadata(root.join(f))
            .expect(f)
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }

    // A pod verifying with the cluster CA accepts the hub as the apiserver.
    for name in [
        VIP,
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ] {
        let r = pod_get(&hub, &api, name)
            .await
            .unwrap_or_else(|e| panic!("TLS to the hub as {name}: {e}"));
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text());
    }
    assert!(
        pod_get(&hub, &api, "evil.example.com").await.is_err(),
        "a name outside the certificate must not verify"
    );

    // kubectl with an in-cluster style config (CA file + SA token).
    let ca_file = dir.path().join("sa-ca.crt");
    std::fs::write(&ca_file, api.ca_pem()).expect("ca");
    for server_name in ["kubernetes.default.svc", VIP] {
        let kc = dir.path().join(format!("pod-{server_name}.conf"));
        std::fs::write(
            &kc,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://{}\n    certificate-authority: {}\n    tls-server-name: {server_name}\nusers:\n- name: u\n  user:\n    token: {POD_TOKEN}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n",
                hub.secure,
                ca_file.display()
            ),
        )
        .expect("kubeconfig");
        let out = kubectl(
            &kc,
            &[
                "get",
                "--raw",
                "/api/v1/namespaces/default/services/kubernetes",
            ],
        )
        .await;
        assert!(kubectl_ok(&out).contains(VIP), "kubectl via {server_name}");
    }

    // Credential-less loopback traffic goes upstream with the issued client cert.
    api.clear_requests();
    let r = get(
        &plain_client(),
        &format!("{}/api/v1/namespaces/default/configmaps", hub.proxy_url()),
        KUBELET,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let seen = api
        .requests()
        .into_iter()
        .find(|r| r.path == "/api/v1/namespaces/default/configmaps")
        .expect("request reached the double");
    let (cn, orgs) = seen.client_cert.expect("presented a client certificate");
    assert_eq!(cn, format!("system:node:{NODE}"));
    assert!(orgs.contains(&"openyurt:yurthub".to_owned()), "{orgs:?}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificates_rotate_without_a_failed_request() {
    // 20 s certificates backdated 1 s: rotation 15–19 s after issuance.
    let api = builder()
        .cluster_signing_duration(Duration::from_secs(20))
        .signing_backdate(Duration::from_secs(1))
        .start()
        .await
        .expect("double");
    create_node(&api);
    let token = api
        .create_bootstrap_token(TOKEN_ID, TOKEN_SECRET, &[])
        .expect("token");
    let dir = tempfile::tempdir().expect("dir");
    let hub = Hub::start(&token_args(
        &api,
        &dir.path().join("root"),
        &token,
        &pin(&api),
        &[],
    ))
    .await;
    wait_ready(&hub, Duration::from_secs(60)).await;
    let first = cert_status(&hub).await;
    let first_client_expiry = first["client"]["notAfter"]
        .as_str()
        .expect("client")
        .to_owned();
    let first_serving_expiry = first["serving"]["notAfter"]
        .as_str()
        .expect("serving")
        .to_owned();
    let old_expiry = time::OffsetDateTime::parse(
        &first_client_expiry,
        &time::format_description::well_known::Rfc3339,
    )
    .expect("rfc3339");

    let c = plain_client();
    let started = Instant::now();
    let mut requests = 0;
    let mut failures = Vec::new();
    let mut cleared_after_expiry = false;
    loop {
        let r = get(
            &c,
            &format!("{}/api/v1/namespaces/default/configmaps", hub.proxy_url()),
            KUBELET,
        )
        .await;
        if r.status != StatusCode::OK {
            failures.push(format!("hub identity: {} {}", r.status, r.text()));
        }
        match pod_get(&hub, &api, "kubernetes.default.svc").await {
            Ok(r) if r.status == StatusCode::OK => {}
            Ok(r) => failures.push(format!("pod: {} {}", r.status, r.text())),
            Err(e) => failures.push(format!("pod TLS: {e}")),
        }
        requests += 2;
        let now = time::OffsetDateTime::now_utc();
        if !cleared_after_expiry && now > old_expiry + time::Duration::seconds(1) {
            // From here on the first client certificate is expired: anything
            // upstream still accepts was authenticated with a newer one.
            api.clear_requests();
            cleared_after_expiry = true;
        }
        let st = cert_status(&hub).await;
        let rotated = st["client"]["notAfter"] != first_client_expiry.as_str()
            && st["serving"]["notAfter"] != first_serving_expiry.as_str();
        if rotated && cleared_after_expiry && now > old_expiry + time::Duration::seconds(4) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no rotation of both certificates within 60 s: {st}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed: {failures:#?}",
        failures.len()
    );

    // Upstream sees only certificates issued after the first one.
    let serials: std::collections::BTreeSet<String> = api
        .requests()
        .into_iter()
        .filter(|r| {
            r.client_cert
                .as_ref()
                .is_some_and(|(cn, _)| cn == &format!("system:node:{NODE}"))
        })
        .filter_map(|r| r.client_cert_serial)
        .collect();
    assert!(
        !serials.is_empty(),
        "the hub kept talking upstream with its identity"
    );
    let issued: Vec<String> = csrs(&api)
        .iter()
        .filter(|c| c["spec"]["signerName"] == csr::CLIENT_SIGNER)
        .filter_map(|c| {
            c.pointer("/status/certificate")?
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert!(
        issued.len() >= 2,
        "at least one client rotation: {}",
        issued.len()
    );
    // The first certificate is the one whose expiry /v1/certificates
    // reported at the start (CSRs list by name, not by age).
    let first_serial = issued
        .iter()
        .find_map(|b64| {
            let pem = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            let der = rustls_pemfile::certs(&mut pem.as_slice()).next()?.ok()?;
            let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
            (cert.validity().not_after.timestamp() == old_expiry.unix_timestamp())
                .then(|| cert.raw_serial_as_string())
        })
        .expect("the first client certificate is among the issued ones");
    assert!(
        !serials.contains(&first_serial),
        "after the first certificate expired upstream still saw it: {serials:?}"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_pin_and_forged_cluster_info_are_refused() {
    let api = builder().start().await.expect("double");
    let token = api
        .create_bootstrap_token(TOKEN_ID, TOKEN_SECRET, &[])
        .expect("token");
    let servers: Vec<http::Uri> = vec![api.url().parse().unwrap()];
    let good = bootstrap::JoinToken::parse(&token).unwrap();
    let right_pin = bootstrap::Pins::parse(&[pin(&api)]).unwrap();

    // The right token and pin work (the baseline of the refusals below).
    let creds = bootstrap::discover(&servers, &good, &right_pin, None)
        .await
        .expect("discovery");
    assert_eq!(creds.ca_pem.trim(), api.ca_pem().trim());

    // A pin of another CA.
    let other = yurthub_e2e::pki::TestPki::new().unwrap();
    let wrong_pin =
        bootstrap::Pins::parse(&[bootstrap::ca_cert_hash(other.ca_pem()).unwrap()]).unwrap();
    let e = bootstrap::discover(&servers, &good, &wrong_pin, None)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("matches no --discovery-token-ca-cert-hash"),
        "{e}"
    );

    // A token whose secret does not sign cluster-info.
    let wrong_secret =
        bootstrap::JoinToken::parse(&format!("{TOKEN_ID}.ffffffffffffffff")).unwrap();
    let e = bootstrap::discover(&servers, &wrong_secret, &right_pin, None)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("JWS signature does not verify"),
        "{e}"
    );

    // cluster-info whose content was changed after signing.
    let mut ci = api
        .get("v1", "ConfigMap", "kube-public", "cluster-info")
        .expect("cluster-info");
    let kc = ci["data"]["kubeconfig"].as_str().unwrap().to_owned();
    ci["data"]["kubeconfig"] = json!(kc.replace("server: https://", "server: https://evil."));
    api.update(ci).expect("tamper");
    let e = bootstrap::discover(&servers, &good, &right_pin, None)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("JWS signature does not verify"),
        "{e}"
    );

    // A hub with a wrong pin never submits a CSR and stays not ready.
    let dir = tempfile::tempdir().expect("dir");
    let wrong = bootstrap::ca_cert_hash(other.ca_pem()).unwrap();
    let hub = Hub::start(&token_args(
        &api,
        &dir.path().join("root"),
        &token,
        &wrong,
        &[],
    ))
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        csrs(&api).is_empty(),
        "no CSR may be sent to an unauthenticated cluster"
    );
    assert_eq!(readyz(&hub).await.1, "certificates are not ready");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_csr_is_not_installed_and_a_new_one_follows() {
    let api = builder()
        .csr_auto_approve(false)
        .start()
        .await
        .expect("double");
    let token = api
        .create_bootstrap_token(TOKEN_ID, TOKEN_SECRET, &[])
        .expect("token");
    let dir = tempfile::tempdir().expect("dir");
    let hub = Hub::start(&token_args(
        &api,
        &dir.path().join("root"),
        &token,
        &pin(&api),
        &[],
    ))
    .await;
    eventually(Duration::from_secs(20), "a CSR is submitted", || async {
        !csrs(&api).is_empty()
    })
    .await;
    let mut first = csrs(&api).remove(0);
    let name = first["metadata"]["name"].as_str().unwrap().to_owned();
    first["status"] = json!({"conditions": [{"type": "Denied", "status": "True",
        "reason": "TestDenied", "message": "denied by the test"}]});
    api.update_status(first).expect("deny");
    eventually(
        Duration::from_secs(20),
        "the hub tries again with a new CSR",
        || async {
            csrs(&api)
                .iter()
                .any(|c| c["metadata"]["name"] != name.as_str())
        },
    )
    .await;
    let st = cert_status(&hub).await;
    assert_eq!(st["client"]["present"], false, "{st}");
    assert_eq!(readyz(&hub).await.1, "certificates are not ready");
    hub.stop().await;
}

/// Creates a CSR as the user of `kubeconfig`; returns its name.
async fn submit(
    kubeconfig: &Path,
    name: &str,
    signer: &str,
    subject: &csr::Subject,
    usages: &[&str],
) {
    let client = approver::client_from_kubeconfig(Some(kubeconfig)).expect("client");
    let req = csr::new_request(subject).expect("csr");
    client
        .json(
            Method::POST,
            "/apis/certificates.k8s.io/v1/certificatesigningrequests",
            Some(&json!({
                "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
                "metadata": {"name": name},
                "spec": {"signerName": signer, "usages": usages,
                    "request": base64::engine::general_purpose::STANDARD.encode(req.pem)}})),
        )
        .await
        .expect("create CSR");
}

fn serving_subject(node: &str, dns: &[&str], ips: &[&str]) -> csr::Subject {
    csr::Subject {
        common_name: format!("system:node:{node}"),
        organizations: vec!["system:nodes".into()],
        dns_names: dns.iter().map(|s| s.to_string()).collect(),
        ip_addresses: ips.iter().map(|s| s.parse().unwrap()).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approver_denies_extra_names_and_other_nodes_with_an_event() {
    let api = builder()
        .csr_auto_approve(false)
        .start()
        .await
        .expect("double");
    create_node(&api);
    let dir = tempfile::tempdir().expect("dir");
    let node_kc = dir.path().join("node1.conf");
    std::fs::write(
        &node_kc,
        api.kubeconfig(&Credential::ClientCert {
            cn: format!("system:node:{NODE}"),
            orgs: vec!["system:nodes".into()],
        })
        .unwrap(),
    )
    .unwrap();
    let _approver = InProcessApprover::start(&admin_kubeconfig(&api, dir.path()));
    let svc = ["kubernetes", "kubernetes.default", "kubernetes.default.svc"];
    let serving_usages = csr::SERVING_USAGES.to_vec();
    submit(
        &node_kc,
        "good",
        csr::SERVING_SIGNER,
        &serving_subject(NODE, &svc, &[VIP, NODE_IP]),
        &serving_usages,
    )
    .await;
    submit(
        &node_kc,
        "extra-dns",
        csr::SERVING_SIGNER,
        &serving_subject(NODE, &["kubernetes", "evil.example.com"], &[]),
        &serving_usages,
    )
    .await;
    submit(
        &node_kc,
        "extra-ip",
        csr::SERVING_SIGNER,
        &serving_subject(NODE, &svc, &["8.8.8.8"]),
        &serving_usages,
    )
    .await;
    submit(
        &node_kc,
        "other-node",
        csr::SERVING_SIGNER,
        &serving_subject("node2", &svc, &[VIP]),
        &serving_usages,
    )
    .await;
    let other_client = csr::Subject {
        common_name: "system:node:node2".into(),
        organizations: vec!["openyurt:yurthub".into(), "system:nodes".into()],
        dns_names: vec![],
        ip_addresses: vec![],
    };
    submit(
        &node_kc,
        "other-client",
        csr::CLIENT_SIGNER,
        &other_client,
        &csr::CLIENT_USAGES,
    )
    .await;

    let get_csr = |n: &str| api.get("certificates.k8s.io/v1", "CertificateSigningRequest", "", n);
    eventually(Duration::from_secs(20), "every CSR is decided", || async {
        [
            "good",
            "extra-dns",
            "extra-ip",
            "other-node",
            "other-client",
        ]
        .iter()
        .all(|n| {
            get_csr(n).is_some_and(|c| {
                condition(&c, "Approved").is_some() || condition(&c, "Denied").is_some()
            })
        })
    })
    .await;
    let good = get_csr("good").unwrap();
    assert!(condition(&good, "Approved").is_some(), "{good}");
    eventually(
        Duration::from_secs(10),
        "the approved CSR is signed",
        || async { get_csr("good").is_some_and(|c| c.pointer("/status/certificate").is_some()) },
    )
    .await;
    for (name, why) in [
        ("extra-dns", "evil.example.com"),
        ("extra-ip", "8.8.8.8"),
        ("other-node", "is not the node"),
        ("other-client", "neither"),
    ] {
        let c = get_csr(name).unwrap();
        let msg = condition(&c, "Denied").unwrap_or_else(|| panic!("{name} not denied: {c}"));
        assert!(msg.contains(why), "{name}: {msg}");
        assert!(
            c.pointer("/status/certificate").is_none(),
            "{name} must not be signed"
        );
    }
    // The event is posted after the denial itself.
    let denied_event = |events: &[serde_json::Value], name: &str| {
        events.iter().any(|e| {
            e["involvedObject"]["name"] == name
                && e["reason"] == "CSRDenied"
                && e["type"] == "Warning"
        })
    };
    let names = ["extra-dns", "extra-ip", "other-node", "other-client"];
    let all_posted = || {
        let events = api.list("v1", "Event", Some("default"));
        names.iter().all(|n| denied_event(&events, n))
    };
    eventually(
        Duration::from_secs(10),
        "a denial event for every denied CSR",
        || {
            let done = all_posted();
            async move { done }
        },
    )
    .await;
    let events = api.list("v1", "Event", Some("default"));
    for name in names {
        assert!(
            denied_event(&events, name),
            "no denial event for {name}: {events:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_token_rejects_bad_tokens_and_accepts_a_valid_one() {
    let api = builder().start().await.expect("double");
    let token = api
        .create_bootstrap_token(TOKEN_ID, TOKEN_SECRET, &[])
        .expect("token");
    let dir = tempfile::tempdir().expect("dir");
    let root = dir.path().join("root");
    let hub = Hub::start(&token_args(&api, &root, &token, &pin(&api), &[])).await;
    let c = plain_client();
    let url = format!("{}/v1/token", hub.hub_url());
    let post = |body: &'static str| {
        let c = c.clone();
        let url = url.clone();
        async move {
            send(
                &c,
                Method::POST,
                &url,
                &[("content-type", "application/json")],
                Bytes::from(body),
            )
            .await
        }
    };
    for (body, why) in [
        ("{}", "missing"),
        (r#"{"jointoken": ""}"#, "empty"),
        ("not json", "not JSON"),
        (r#"{"jointoken": "garbage"}"#, "malformed"),
        (
            r#"{"jointoken": "zzzzzz.0123456789abcdef"}"#,
            "unknown to the cluster",
        ),
    ] {
        let r = post(body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{why}: {}", r.text());
    }
    let r = get(&c, &url, "curl").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    let new = api
        .create_bootstrap_token("ghijkl", "fedcba9876543210", &[])
        .expect("token");
    let body = format!(r#"{{"jointoken": "{new}"}}"#);
    let r = send(&c, Method::PUT, &url, &[], Bytes::from(body)).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::OK, "update bootstrap token successfully")
    );
    let conf = std::fs::read_to_string(root.join("bootstrap-hub.conf")).expect("bootstrap conf");
    assert!(
        conf.contains(&new),
        "the bootstrap kubeconfig carries the new token"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_of_another_cluster_is_moved_aside() {
    let dir = tempfile::tempdir().expect("dir");
    let root = dir.path().join("root");
    let first = builder().start().await.expect("first cluster");
    let token = first
        .create_bootstrap_token(TOKEN_ID, TOKEN_SECRET, &[])
        .expect("token");
    let hub = Hub::start(&token_args(&first, &root, &token, &pin(&first), &[])).await;
    wait_ready(&hub, Duration::from_secs(60)).await;
    hub.stop().await;
    std::fs::create_dir_all(root.join("cache")).unwrap();
    std::fs::write(root.join("cache/marker"), "first cluster's cache").unwrap();

    // The node re-joins another cluster (new CA) with the same root dir.
    let second = builder().start().await.expect("second cluster");
    let token2 = second
        .create_bootstrap_token(TOKEN_ID, TOKEN_SECRET, &[])
        .expect("token");
    let hub = Hub::start(&token_args(&second, &root, &token2, &pin(&second), &[])).await;
    wait_ready(&hub, Duration::from_secs(60)).await;
    let ca = std::fs::read_to_string(root.join("pki/ca.crt")).unwrap();
    assert_eq!(ca.trim(), second.ca_pem().trim());
    let stale: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("stale-")
        })
        .collect();
    assert_eq!(stale.len(), 1, "{stale:?}");
    let old_ca = std::fs::read_to_string(stale[0].join("pki/ca.crt")).unwrap();
    assert_eq!(old_ca.trim(), first.ca_pem().trim());
    assert_eq!(
        std::fs::read_to_string(stale[0].join("cache/marker")).unwrap(),
        "first cluster's cache"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_kubeconfig_file_works_like_a_join_token() {
    let api = builder().start().await.expect("double");
    create_node(&api);
    let token = api
        .create_bootstrap_token(TOKEN_ID, TOKEN_SECRET, &[])
        .expect("token");
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("bootstrap.conf");
    std::fs::write(&file, api.kubeconfig(&Credential::Token(token)).unwrap()).unwrap();
    let root = dir.path().join("root");
    let mut args = token_args(&api, &root, "", "", &[]);
    args.retain(|a| !a.starts_with("--join-token") && !a.starts_with("--discovery-token"));
    args.push(format!("--bootstrap-file={}", file.display()));
    let hub = Hub::start(&args).await;
    wait_ready(&hub, Duration::from_secs(60)).await;
    let st = cert_status(&hub).await;
    assert_eq!(
        st["client"]["commonName"],
        format!("system:node:{NODE}"),
        "{st}"
    );
    let ca = std::fs::read_to_string(root.join("pki/ca.crt")).unwrap();
    assert_eq!(ca.trim(), api.ca_pem().trim());
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_that_expire_offline_are_kept_then_renewed_by_bootstrap() {
    let api = builder()
        .cluster_signing_duration(Duration::from_secs(20))
        .signing_backdate(Duration::from_secs(1))
        .start()
        .await
        .expect("double");
    create_node(&api);
    let token = api
        .create_bootstrap_token(TOKEN_ID, TOKEN_SECRET, &[])
        .expect("token");
    let dir = tempfile::tempdir().expect("dir");
    let hub = Hub::start(&token_args(
        &api,
        &dir.path().join("root"),
        &token,
        &pin(&api),
        &[],
    ))
    .await;
    wait_ready(&hub, Duration::from_secs(60)).await;

    // The cloud goes away for longer than the certificates live.
    api.shutdown().await;
    eventually(
        Duration::from_secs(40),
        "the client certificate expires offline",
        || async { cert_status(&hub).await["client"]["expired"] == true },
    )
    .await;
    assert_eq!(
        readyz(&hub).await,
        (StatusCode::OK, "OK".to_owned()),
        "an expired identity is kept: the hub goes on serving (loudly), unlike upstream"
    );
    let before: Vec<Value> = csrs(&api)
        .iter()
        .map(|c| c["metadata"]["name"].clone())
        .collect();
    api.restart().await.expect("cloud is back");

    eventually(
        Duration::from_secs(90),
        "both certificates are valid again",
        || async {
            let st = cert_status(&hub).await;
            st["client"]["expired"] == false && st["serving"]["expired"] == false
        },
    )
    .await;
    let renewed: Vec<Value> = csrs(&api)
        .into_iter()
        .filter(|c| !before.contains(&c["metadata"]["name"]))
        .collect();
    assert!(
        renewed
            .iter()
            .any(|c| c["spec"]["signerName"] == csr::CLIENT_SIGNER
                && c["spec"]["username"] == format!("system:bootstrap:{TOKEN_ID}")),
        "the expired client certificate was replaced through the bootstrap token"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_apiserver_vip_gets_a_new_serving_certificate() {
    let api = builder().start().await.expect("double");
    create_node(&api);
    let token = api
        .create_bootstrap_token(TOKEN_ID, TOKEN_SECRET, &[])
        .expect("token");
    let dir = tempfile::tempdir().expect("dir");
    let hub = Hub::start(&token_args(
        &api,
        &dir.path().join("root"),
        &token,
        &pin(&api),
        &[],
    ))
    .await;
    wait_ready(&hub, Duration::from_secs(60)).await;
    const VIP6: &str = "fd00:10:96::1";
    assert!(
        pod_get(&hub, &api, VIP6).await.is_err(),
        "not a name of the first certificate"
    );

    // The cluster turns dual-stack: default/kubernetes gains an IPv6 ClusterIP.
    let mut svc = api
        .get("v1", "Service", "default", "kubernetes")
        .expect("service");
    svc["spec"]["clusterIPs"] = json!([VIP, VIP6]);
    api.update(svc).expect("update service");
    eventually(
        Duration::from_secs(60),
        "the serving certificate covers the new VIP",
        || async {
            cert_status(&hub).await["serving"]["ipAddresses"]
                .to_string()
                .contains(VIP6)
        },
    )
    .await;
    for name in [VIP, VIP6] {
        let r = pod_get(&hub, &api, name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.status, StatusCode::OK);
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_approve_csrs_subcommand_approves_a_hub_csr() {
    let api = builder()
        .csr_auto_approve(false)
        .start()
        .await
        .expect("double");
    create_node(&api);
    let dir = tempfile::tempdir().expect("dir");
    let node_kc = dir.path().join("node1.conf");
    std::fs::write(
        &node_kc,
        api.kubeconfig(&Credential::ClientCert {
            cn: format!("system:node:{NODE}"),
            orgs: vec!["system:nodes".into(), "openyurt:yurthub".into()],
        })
        .unwrap(),
    )
    .unwrap();
    let client = csr::Subject {
        common_name: format!("system:node:{NODE}"),
        organizations: vec!["openyurt:yurthub".into(), "system:nodes".into()],
        dns_names: vec![],
        ip_addresses: vec![],
    };
    submit(
        &node_kc,
        "renewal",
        csr::CLIENT_SIGNER,
        &client,
        &csr::CLIENT_USAGES,
    )
    .await;
    submit(
        &node_kc,
        "sneaky",
        csr::SERVING_SIGNER,
        &serving_subject(NODE, &["kubernetes.default.svc", "evil.example.com"], &[]),
        &csr::SERVING_USAGES,
    )
    .await;
    let _approver = ApproverProcess::spawn(&admin_kubeconfig(&api, dir.path()));
    let get_csr = |n: &str| api.get("certificates.k8s.io/v1", "CertificateSigningRequest", "", n);
    eventually(
        Duration::from_secs(30),
        "the process decides both CSRs",
        || async {
            get_csr("renewal").is_some_and(|c| c.pointer("/status/certificate").is_some())
                && get_csr("sneaky").is_some_and(|c| condition(&c, "Denied").is_some())
        },
    )
    .await;
}

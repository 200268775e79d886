//! Running yurthub for tests: certificates and flags for a hub in front of
//! one or more apiserver doubles, in-process ([`Hub::start`]) or as the real
//! binary ([`HubProcess`]), and a small HTTP client for its listeners.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::pki::TestPki;

pub const NODE: &str = "node1";

/// Files a hub needs: the cluster CA, its client identity (as kubelet's
/// cert+key PEM, for `--bootstrap-mode=kubeletcertificate`) and a serving
/// certificate for the pod-facing listener.
pub struct HubFiles {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub client_pem: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
}

impl HubFiles {
    pub fn new(pki: &TestPki) -> HubFiles {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = pki.write_ca(dir.path()).expect("write ca");
        let (cert, key) = pki
            .issue_client_cert(
                &format!("system:node:{NODE}"),
                &["system:nodes", "openyurt:yurthub"],
            )
            .expect("client cert");
        let client_pem = dir.path().join("kubelet-client-current.pem");
        std::fs::write(&client_pem, format!("{cert}{key}")).expect("write client pem");
        let ips = [
            "127.0.0.1".parse().unwrap(),
            "10.96.0.1".parse().unwrap(),
            "169.254.2.1".parse().unwrap(),
        ];
        let (scert, skey) = pki
            .issue_server_cert(
                &[
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                ],
                &ips,
            )
            .expect("serving cert");
        let (serving_cert, serving_key) =
            TestPki::write_pair(dir.path(), "serving", &scert, &skey).expect("write serving pair");
        HubFiles {
            dir,
            ca,
            client_pem,
            serving_cert,
            serving_key,
        }
    }

    /// Flags for a hub in front of `servers`, on loopback ephemeral ports,
    /// with a 1 s heartbeat so health transitions happen within test time.
    pub fn args(&self, servers: &[String], extra: &[&str]) -> Vec<String> {
        let root = self.dir.path().join("root");
        let mut a: Vec<String> = vec![
            "yurthub".into(),
            format!("--node-name={NODE}"),
            "--nodepool-name=pool".into(),
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
            "--shutdown-grace-period=3s".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }
}

/// Logs go through the test harness's capture, so only failing tests print.
pub fn init_test_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,yurthub=debug,yurthub_e2e=debug")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A port that was free a moment ago (for listeners that cannot take 0).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// An in-process hub.
pub struct Hub {
    app: Option<yurthub::App>,
    pub proxy: SocketAddr,
    pub secure: SocketAddr,
    pub hub_server: SocketAddr,
}

impl Hub {
    pub async fn start(args: &[String]) -> Hub {
        use clap::Parser;
        let cli = yurthub::cli::Cli::try_parse_from(args).expect("hub flags parse");
        let cfg = yurthub::config::Config::from_args(&cli.run).expect("hub config is valid");
        init_test_logging();
        let app = tokio::time::timeout(Duration::from_secs(20), yurthub::App::start(cfg))
            .await
            .expect("hub starts within 20 s")
            .expect("hub starts");
        Hub {
            proxy: app.proxy_addr,
            secure: app.proxy_secure_addr,
            hub_server: app.hub_server_addr.expect("hub server enabled"),
            app: Some(app),
        }
    }

    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy)
    }

    pub fn hub_url(&self) -> String {
        format!("http://{}", self.hub_server)
    }

    pub async fn stop(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
    }
}

/// The yurthub binary, for process-level tests.
pub struct HubProcess {
    pub child: Child,
    log: tempfile::NamedTempFile,
}

/// Names another hub binary to run instead (`cargo xtask bench` sets it to
/// the `dist` build, the profile the Containerfile ships).
pub const HUB_BINARY_ENV: &str = "YURTHUB_UNDER_TEST";

/// The `yurthub-under-test` binary cargo builds in target/<profile>/: next
/// to a bench binary, or in the parent of deps/ for integration tests
/// (or the one [`HUB_BINARY_ENV`] names).
pub fn hub_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(HUB_BINARY_ENV) {
        let path = PathBuf::from(path);
        assert!(
            path.exists(),
            "{HUB_BINARY_ENV}={} does not exist",
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("current exe");
    let here = exe.parent().expect("the executable has a directory");
    let candidates = [Some(here), here.parent()];
    let found = candidates
        .iter()
        .flatten()
        .map(|dir| dir.join("yurthub-under-test"))
        .find(|bin| bin.exists());
    found.unwrap_or_else(|| {
        panic!(
            "yurthub-under-test is missing next to {} or its parent: run the tests with \
             cargo test -p yurthub-e2e, or the benches with cargo xtask bench",
            exe.display()
        )
    })
}

impl HubProcess {
    /// Starts the binary; its output goes to a log file (a pipe nobody
    /// reads would block a busy hub), see [`HubProcess::log`].
    pub fn spawn(args: &[String]) -> HubProcess {
        Self::spawn_with(args, |_| {})
    }

    /// The same, with the open-file limit (`RLIMIT_NOFILE`) set to `soft`
    /// and `hard` between fork and exec, as a service manager would.
    pub fn spawn_with_open_files(args: &[String], soft: u64, hard: u64) -> HubProcess {
        use std::os::unix::process::CommandExt as _;
        Self::spawn_with(args, |cmd| {
            // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sys::resource::setrlimit(
                        nix::sys::resource::Resource::RLIMIT_NOFILE,
                        soft,
                        hard,
                    )
                    .map_err(std::io::Error::from)
                });
            }
        })
    }

    /// The same, in the network namespace at `netns` (entered between fork
    /// and exec), e.g. a sandbox's node namespace.
    pub fn spawn_in_netns(args: &[String], netns: &std::path::Path) -> HubProcess {
        use std::os::unix::process::CommandExt as _;
        let ns =
            std::fs::File::open(netns).unwrap_or_else(|e| panic!("open {}: {e}", netns.display()));
        Self::spawn_with(args, |cmd| {
            // SAFETY: only setns, async-signal-safe, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)
                });
            }
        })
    }

    /// The binary with `args`, its output in the log, after `setup` has
    /// had its say on the command.
    fn spawn_with(args: &[String], setup: impl FnOnce(&mut Command)) -> HubProcess {
        let log = tempfile::NamedTempFile::new().expect("log file");
        let (out, err) = (log.reopen().expect("log"), log.reopen().expect("log"));
        let mut cmd = Command::new(hub_binary());
        cmd.args(&args[1..])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        setup(&mut cmd);
        let child = cmd.spawn().expect("spawn yurthub");
        HubProcess { child, log }
    }

    /// What the process printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Sends a signal; returns the exit status within `within`.
    pub fn signal_and_wait(
        &mut self,
        sig: nix::sys::signal::Signal,
        within: Duration,
    ) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("signal hub");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "hub did not exit within {within:?} of {sig}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub type PlainClient = Client<HttpConnector, Full<Bytes>>;

pub fn plain_client() -> PlainClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// One plain-HTTP request, read whole, within 10 s.
pub async fn send(
    client: &PlainClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).expect("request");
    let fut = async {
        let resp = client.request(req).await.expect("request succeeds");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("{url} answered within 10 s"))
}

pub async fn get(client: &PlainClient, url: &str, user_agent: &str) -> Reply {
    send(
        client,
        Method::GET,
        url,
        &[("user-agent", user_agent), ("accept", "application/json")],
        Bytes::new(),
    )
    .await
}

/// Polls `check` every 100 ms until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One HTTP/1.1 request over TLS to `addr`, verifying the server against
/// `ca_pem` for `server_name`, optionally presenting a client certificate.
pub async fn tls_send(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
    client_identity: Option<(&str, &str)>,
    req: Request<Full<Bytes>>,
) -> Result<Reply, String> {
    let fut = async {
        let resp = open_tls(addr, server_name, ca_pem, client_identity, req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// As [`tls_send`], but only the answer's head is awaited: the body (a watch)
/// is left to the caller, and the connection lives as long as it does.
pub async fn tls_stream(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
    client_identity: Option<(&str, &str)>,
    req: Request<Full<Bytes>>,
) -> Result<Response<hyper::body::Incoming>, String> {
    tokio::time::timeout(
        Duration::from_secs(10),
        open_tls(addr, server_name, ca_pem, client_identity, req),
    )
    .await
    .map_err(|_| "timed out".to_string())?
}

async fn open_tls(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
    client_identity: Option<(&str, &str)>,
    req: Request<Full<Bytes>>,
) -> Result<Response<hyper::body::Incoming>, String> {
    let tls = tls_connect(None, addr, server_name, ca_pem, client_identity).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender.send_request(req).await.map_err(|e| e.to_string())
}

/// A TLS connection to `addr` with its handshake done, verifying the
/// server against `ca_pem` for `server_name`, from the loopback address
/// `source` if given (a pod of its own, as the hub sees source addresses).
pub async fn tls_connect(
    source: Option<std::net::IpAddr>,
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
    client_identity: Option<(&str, &str)>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    let cfg = match client_identity {
        Some((cert, key)) => {
            let chain = rustls_pemfile::certs(&mut cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let key = rustls_pemfile::private_key(&mut key.as_bytes())
                .map_err(|e| e.to_string())?
                .ok_or("no key")?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(|e| e.to_string())?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("binding {ip}: {e}"))?;
    }
    let tcp = socket.connect(addr).await.map_err(|e| e.to_string())?;
    // A watch's small frames must not wait for delayed ACKs (Nagle).
    let _ = tcp.set_nodelay(true);
    let name = rustls_pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| e.to_string())?;
    connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))
}

/// Reads a newline-delimited watch stream until it ends, calling `f` with
/// each complete line and the instant the chunk that completed it arrived.
pub async fn for_each_line(mut body: hyper::body::Incoming, mut f: impl FnMut(&[u8], Instant)) {
    let mut buf = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let at = Instant::now();
        buf.extend_from_slice(&data);
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|b| *b == b'\n') {
            f(&buf[start..start + nl], at);
            start += nl + 1;
        }
        buf.drain(..start);
    }
}

/// A GET request with the given User-Agent and extra headers.
pub fn get_request(url: &str, user_agent: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::builder().uri(url).header("user-agent", user_agent);
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("accept"))
    {
        b = b.header("accept", "application/json");
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).expect("request")
}

/// Reads one metric sample's value from a /metrics text body.
pub fn metric_value(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

/// A kubeconfig pointing at the hub's plain-HTTP proxy with no credentials:
/// what yurtadm writes for kubelet (the hub lends its identity on loopback).
pub fn hub_kubeconfig(proxy_url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: hub\n  cluster:\n    server: {proxy_url}\n\
         users:\n- name: node\n  user: {{}}\ncontexts:\n- name: hub\n  context:\n    cluster: hub\n    user: node\n\
         current-context: hub\n"
    )
}

/// Runs kubectl with a kubeconfig file, bounded to 30 s.
pub async fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> std::process::Output {
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
    .expect("kubectl runs (is /usr/bin/kubectl installed?)")
}

/// kubectl's stdout, panicking with its stderr when it failed.
pub fn kubectl_ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "kubectl failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs `kubectl get … -w --output-watch-events`; once a line contains
/// `trigger_on`, calls `trigger` (once); succeeds when a line contains both
/// `ADDED` and `expect`. Returns everything kubectl printed either way.
pub async fn kubectl_watch(
    kubeconfig: &std::path::Path,
    args: &[&str],
    trigger_on: &str,
    trigger: impl FnOnce(),
    expect: &str,
    within: Duration,
) -> Result<String, String> {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .args(["-w", "--output-watch-events"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("kubectl -w: {e}"))?;
    let mut out = tokio::io::BufReader::new(child.stdout.take().expect("stdout is piped"));
    let mut seen = String::new();
    let mut trigger = Some(trigger);
    let found = tokio::time::timeout(within, async {
        let mut line = String::new();
        loop {
            line.clear();
            if out.read_line(&mut line).await.unwrap_or(0) == 0 {
                return false;
            }
            seen.push_str(&line);
            if line.contains(trigger_on)
                && let Some(t) = trigger.take()
            {
                t();
            }
            if line.contains("ADDED") && line.contains(expect) {
                return true;
            }
        }
    })
    .await;
    let _ = child.kill().await;
    match found {
        Ok(true) => Ok(seen),
        Ok(false) => Err(format!("kubectl -w ended early: {seen}")),
        Err(_) => Err(format!("no ADDED {expect} within {within:?}: {seen}")),
    }
}

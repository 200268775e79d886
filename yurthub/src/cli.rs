//! Command-line surface. Flag names, defaults and meanings follow OpenYurt's
//! YurtHub wherever the meaning is the same, so existing manifests keep
//! working; everything here is plain strings and numbers — `config` turns them
//! into validated types.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

/// yurthub: the edge-node reverse proxy and cache for the kube-apiserver.
/// A repeated flag takes its last value, as with Go's pflag.
#[derive(Debug, Parser)]
#[command(
    name = "yurthub",
    disable_version_flag = true,
    args_conflicts_with_subcommands = true,
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Remove everything the hub installed on this node (eBPF programs, pins,
    /// hub address). Idempotent.
    Cleanup(CleanupArgs),
    /// Import an OpenYurt cache directory (`<component>/<resource>.<version>.<group>/<ns>/<name>`)
    /// into the cache store. Run it before the first start on a node migrating from OpenYurt.
    ImportCache(ImportCacheArgs),
    /// Approve the hub's client and serving CSRs (and deny look-alikes that
    /// break the rules), like yurt-manager's csrapprover. Runs until stopped.
    ApproveCsrs(ApproveCsrsArgs),
    /// Write the static-pod manifest (deploy/static/yurthub.yaml) with this
    /// node's flags into kubelet's staticPodPath, atomically, after checking
    /// the flags as the hub does. Run it again with a new --image to upgrade.
    InstallStatic(InstallStaticArgs),
}

#[derive(Debug, Args)]
pub struct InstallStaticArgs {
    /// This node's name, as kubelet registers it.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Comma-separated kube-apiserver URLs (https only).
    #[arg(long)]
    pub server_addr: String,
    /// kubelet's staticPodPath.
    #[arg(long, default_value = "/etc/kubernetes/manifests")]
    pub manifests_dir: PathBuf,
    /// Container image (default: the template's).
    #[arg(long)]
    pub image: Option<String>,
    /// Print the manifest instead of writing it.
    #[arg(long, num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = ArgAction::Set)]
    pub dry_run: bool,
    /// More hub flags after `--` (e.g. `-- --redirect-cgroup=/host/sys/fs/cgroup/unified`);
    /// each replaces the template's flag of the same name.
    #[arg(last = true)]
    pub hub_args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ImportCacheArgs {
    /// The OpenYurt cache directory (upstream's --disk-cache-path, e.g. /etc/kubernetes/cache).
    pub dir: PathBuf,
    /// This hub's cache store directory.
    #[arg(long, default_value = "/etc/kubernetes/cache/")]
    pub disk_cache_path: PathBuf,
}

#[derive(Debug, Args)]
pub struct ApproveCsrsArgs {
    /// kubeconfig to use; default: the in-cluster service account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Cluster DNS domain allowed in kubernetes.default.svc.<domain>.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Hub addresses allowed as IP SANs of serving certificates.
    #[arg(long, value_delimiter = ',', default_value = "169.254.2.1,fd00::2:1")]
    pub hub_address: Vec<String>,
    /// Extra organizations (groups) allowed in hub client certificates
    /// (the hubs' --hub-cert-organizations); openyurt:tenant:* always is.
    #[arg(long, value_delimiter = ',')]
    pub allowed_organizations: Vec<String>,
    /// Log verbosity like klog's --v.
    #[arg(long = "v", default_value_t = 0)]
    pub verbosity: u8,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Hub address to remove from --hub-address-link.
    #[arg(long, default_value = "169.254.2.1")]
    pub hub_address: String,
    #[arg(long, default_value = "lo")]
    pub hub_address_link: String,
    /// bpffs mount point holding the pinned programs.
    #[arg(long, default_value = "/sys/fs/bpf")]
    pub bpffs: PathBuf,
    /// cgroup v2 directory the programs were attached to (default: detected root).
    #[arg(long)]
    pub redirect_cgroup: Option<PathBuf>,
    /// Directory under --bpffs holding the pins.
    #[arg(long, default_value = "yurthub")]
    pub redirect_pin_dir: String,
}

/// The daemon's flags. Bool flags accept `--flag`, `--flag=true` and
/// `--flag=false` like Go's pflag.
#[derive(Debug, Args, Clone)]
#[command(args_override_self = true)]
pub struct RunArgs {
    /// Print the version and exit.
    #[arg(long, action = ArgAction::SetTrue)]
    pub version: bool,
    /// Check the flags as at start, print the resulting configuration and
    /// exit without starting (0, or 64 naming the rejected flag).
    #[arg(long, num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = ArgAction::Set)]
    pub dry_run: bool,

    // --- identity and upstream ---
    /// Comma-separated kube-apiserver URLs (https only).
    #[arg(long, default_value = "")]
    pub server_addr: String,
    /// Name of this node: lease holder and certificate CN system:node:<name>.
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node_name: String,
    /// Node pool of this node (used by pool-aware filters).
    #[arg(long, default_value = "")]
    pub nodepool_name: String,
    /// IP of this node; put in the serving certificate. Empty = detected.
    #[arg(long, default_value = "")]
    pub node_ip: String,
    /// edge (proxy, cache, offline serving) or cloud (proxy only).
    #[arg(long, default_value = "edge")]
    pub working_mode: String,
    /// Namespace of the yurt-hub-cfg ConfigMap.
    #[arg(long, default_value = "kube-system")]
    pub namespace: String,
    /// rr (round robin) or priority (first healthy in --server-addr order).
    #[arg(long, default_value = "rr")]
    pub lb_mode: String,

    // --- listeners ---
    /// IP of the hub server (healthz, readyz, metrics).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_address: String,
    /// Port of the hub server; <= 0 disables it.
    #[arg(long, default_value_t = 10267, allow_negative_numbers = true)]
    pub serve_port: i32,
    /// IP of the plain-HTTP proxy (the kubelet path).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_proxy_address: String,
    /// Port of the plain-HTTP proxy.
    #[arg(long, default_value_t = 10261)]
    pub proxy_port: u16,
    /// Port of the HTTPS proxy on --hub-address (the pod-facing path).
    #[arg(long, default_value_t = 10268)]
    pub proxy_secure_port: u16,
    /// Port of the pool-scope multiplexer on --node-ip.
    #[arg(long, default_value_t = 10269)]
    pub multiplexer_port: u16,
    /// IP of the multiplexer listener other hubs of the pool use. Empty =
    /// the node IP.
    #[arg(long, default_value = "")]
    pub bind_multiplexer_address: String,
    /// Node-local address pods reach the hub on (redirect target). Default
    /// 169.254.2.1, or fd00::2:1 when --bind-address is IPv6.
    #[arg(long)]
    pub hub_address: Option<String>,
    /// Link that carries --hub-address.
    #[arg(long, default_value = "lo")]
    pub hub_address_link: String,

    // --- redirect ---
    /// ebpf (kernel cgroup/connect redirect of the apiserver VIP) or none.
    #[arg(long)]
    pub redirect_mode: Option<String>,
    /// cgroup v2 directory to attach to (default: the detected cgroup v2 root).
    #[arg(long)]
    pub redirect_cgroup: Option<PathBuf>,
    /// apiserver VIP(s) ip:port to redirect; default: learned from default/kubernetes.
    #[arg(long, value_delimiter = ',')]
    pub apiserver_vip: Vec<String>,
    /// Leave programs and the hub address in place on exit (for upgrades).
    #[arg(long, num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = ArgAction::Set)]
    pub keep_redirect_on_exit: bool,
    /// bpffs mount point for pinned programs and maps.
    #[arg(long, default_value = "/sys/fs/bpf")]
    pub bpffs: PathBuf,
    /// Directory under --bpffs for this hub's pins.
    #[arg(long, default_value = "yurthub")]
    pub redirect_pin_dir: String,
    /// Have the eBPF programs log every redirect through aya-log (diagnostics;
    /// shown at --v=2 or RUST_LOG=debug). Off by default: free on the fast path.
    #[arg(long, num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = ArgAction::Set)]
    pub redirect_ebpf_log: bool,
    /// How often a probe process in the pods' cgroup proves that a VIP
    /// connection lands on the hub (also at start and whenever the programs
    /// around ours change); 0 turns the self-check off.
    #[arg(long, default_value = "30s")]
    pub redirect_self_check_interval: String,

    // --- deprecated network-manager flags (mapped onto the redirect) ---
    /// Deprecated: the hub address is managed by rtnetlink on --hub-address-link.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub enable_dummy_if: Option<bool>,
    /// Deprecated: mapped to --hub-address.
    #[arg(long)]
    pub dummy_if_ip: Option<String>,
    /// Deprecated: no link is created; the address goes on --hub-address-link.
    #[arg(long)]
    pub dummy_if_name: Option<String>,
    /// Deprecated and ignored: yurthub never writes iptables rules.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub enable_iptables: Option<bool>,
    /// Deprecated and ignored (the in-flight limiter was removed upstream too).
    #[arg(long)]
    pub max_requests_in_flight: Option<i64>,
    /// Deprecated and ignored: pool membership always comes from NodePool.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub enable_node_pool: Option<bool>,

    // --- health and heartbeat ---
    #[arg(long, default_value_t = 3)]
    pub heartbeat_failed_retry: u32,
    #[arg(long, default_value_t = 2)]
    pub heartbeat_healthy_threshold: u32,
    #[arg(long, default_value_t = 2)]
    pub heartbeat_timeout_seconds: u64,
    #[arg(long, default_value_t = 10)]
    pub heartbeat_interval_seconds: u64,
    /// If kubelet has not touched its lease for this long, stop renewing it.
    #[arg(long, default_value = "40s")]
    pub kubelet_health_grace_period: String,

    // --- certificates and bootstrap ---
    /// token (CSR-issued certificates) or kubeletcertificate.
    #[arg(long, default_value = "token")]
    pub bootstrap_mode: String,
    #[arg(long, default_value = "")]
    pub bootstrap_file: String,
    #[arg(long, default_value = "")]
    pub join_token: String,
    #[arg(long, value_delimiter = ',')]
    pub discovery_token_ca_cert_hash: Vec<String>,
    #[arg(long, num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = ArgAction::Set)]
    pub discovery_token_unsafe_skip_ca_verification: bool,
    #[arg(long, value_delimiter = ',')]
    pub hub_cert_organizations: Vec<String>,
    /// kubeletcertificate mode: the kubelet client certificate (cert and key PEM).
    #[arg(
        long,
        default_value = "/var/lib/kubelet/pki/kubelet-client-current.pem"
    )]
    pub kubelet_client_certificate: PathBuf,
    /// kubeletcertificate mode: the cluster CA bundle.
    #[arg(long, default_value = "/etc/kubernetes/pki/ca.crt")]
    pub kubelet_ca_file: PathBuf,
    /// Serving certificate of the HTTPS proxy (overrides the CSR-issued one).
    #[arg(long)]
    pub tls_cert_file: Option<PathBuf>,
    /// Key of --tls-cert-file.
    #[arg(long)]
    pub tls_private_key_file: Option<PathBuf>,
    /// Cluster DNS domain for the serving certificate's kubernetes.default.svc.<domain>.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,

    // --- storage, cache, filters ---
    #[arg(long, default_value = "/var/lib/yurthub")]
    pub root_dir: PathBuf,
    #[arg(long, default_value = "/etc/kubernetes/cache/")]
    pub disk_cache_path: PathBuf,
    /// Cap on the cache store's contents in bytes; cached events are evicted
    /// first, then growing writes are refused. 0 disables the cap.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    pub cache_max_bytes: u64,
    /// Minutes between events GC runs (jittered 1x-3x); 0 means 60.
    #[arg(long, default_value_t = 120)]
    pub gc_frequency: u64,
    /// Lower bound of an offline watch without timeoutSeconds.
    #[arg(long, default_value = "1800s")]
    pub min_request_timeout: String,
    /// An upstream watch that requested bookmarks and received no bytes
    /// for this long is ended (the client re-lists). Default: twice the
    /// apiserver's 60 s bookmark interval, plus 10 s.
    #[arg(long, default_value = "130s")]
    pub watch_idle_timeout: String,
    #[arg(long, num_args = 0..=1, default_value_t = true, default_missing_value = "true", action = ArgAction::Set)]
    pub enable_resource_filter: bool,
    #[arg(long, value_delimiter = ',')]
    pub disabled_resource_filters: Vec<String>,
    /// Filters to turn on that are off by default here: the pod-steering
    /// filters (masterservice, forwardkubesvctraffic, serviceenvupdater) are
    /// off with --redirect-mode=ebpf, which makes them unnecessary.
    #[arg(long, value_delimiter = ',')]
    pub enabled_resource_filters: Vec<String>,
    #[arg(long, num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = ArgAction::Set)]
    pub enable_pool_service_topology: bool,
    #[arg(
        long,
        default_value = "/v1/services,discovery.k8s.io/v1/endpointslices"
    )]
    pub pool_scope_resources: String,
    /// Largest accepted request body; larger ones get 413.
    #[arg(long, default_value_t = 3 * 1024 * 1024 + 64 * 1024)]
    pub max_request_body_bytes: u64,
    /// Connections the pod-facing listener (and the multiplexer's, which
    /// pods reach on the node IP) keeps open from one source address; more
    /// are refused (reset at once) and counted in
    /// node_yurthub_proxy_refused_connections_total. hostNetwork pods share
    /// the node's address, so this is the share of all of them together.
    #[arg(long, default_value_t = 128)]
    pub pod_connections_per_address: usize,
    /// Connections the pod-facing and multiplexer listeners keep open
    /// together; 0 means half
    /// the hub's open-file limit, so that pods can never take the
    /// descriptors kubelet's listener, the upstream connections and the
    /// cache need.
    #[arg(long, default_value_t = 0)]
    pub max_pod_connections: usize,
    /// Requests the pod-facing listener keeps in flight for one source
    /// address (watches included, over all its connections); more are
    /// answered 429 with Retry-After, as the apiserver answers past its
    /// in-flight limits, and counted in
    /// node_yurthub_proxy_refused_requests_total. The streams of all pods
    /// share the hub's upstream connections, so one pod cannot take the
    /// streams the others need. hostNetwork pods share one address.
    #[arg(long, default_value_t = 128)]
    pub pod_requests_per_address: usize,
    /// New connections per second the pod-facing and multiplexer listeners
    /// take from one source address (as many in a burst); more are reset as
    /// they are accepted, before any TLS work, and counted as
    /// reason="rate". Each costs a handshake on the event loop kubelet's
    /// requests share. 0: no bound.
    #[arg(long, default_value_t = 50)]
    pub pod_connections_per_second: u32,

    // --- process ---
    /// Threads that run the proxy's event loop. One (the default) serves a
    /// node's clients at the least CPU per request: no wakeups between
    /// workers, as nginx with one worker; the few heavy steps (offline
    /// lists, whole-body filters of large lists) hand their thread over
    /// meanwhile. 0 means one per core.
    #[arg(long, default_value_t = 1)]
    pub worker_threads: usize,
    #[arg(long, num_args = 0..=1, default_value_t = true, default_missing_value = "true", action = ArgAction::Set)]
    pub profiling: bool,
    /// How long in-flight requests may take to finish on SIGTERM.
    #[arg(long, default_value = "15s")]
    pub shutdown_grace_period: String,
    /// Log verbosity like klog's --v (0 info, 2 debug, 4+ trace).
    #[arg(long = "v", default_value_t = 0)]
    pub verbosity: u8,
    /// text or json.
    #[arg(long, default_value = "text")]
    pub log_format: String,
    /// local mode only: the host cluster's control-plane address.
    #[arg(long, default_value = "")]
    pub host_control_plane_address: String,
}

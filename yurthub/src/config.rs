//! The validated, typed configuration. Every flag string becomes a typed value
//! here, in one place, and invalid combinations are rejected with a message
//! that names the flag.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;

use crate::cli::RunArgs;

/// A rejected flag or flag combination.
#[derive(Debug, thiserror::Error)]
#[error("invalid flag {flag}: {reason}")]
pub struct Error {
    pub flag: &'static str,
    pub reason: String,
}

fn err(flag: &'static str, reason: impl Into<String>) -> Error {
    Error {
        flag,
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkingMode {
    /// Proxy, cache and offline serving; lease heartbeat delegated to the hub.
    Edge,
    /// Proxy and filters only; every backend counts as healthy.
    Cloud,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbMode {
    RoundRobin,
    Priority,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectMode {
    Ebpf,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// CSR-issued certificates from a bootstrap kubeconfig or join token.
    Token {
        bootstrap_file: Option<PathBuf>,
        join_token: Option<String>,
        /// `--discovery-token-ca-cert-hash` pins; empty only with
        /// `--discovery-token-unsafe-skip-ca-verification`.
        ca_cert_hashes: Vec<String>,
    },
    /// Reuse the kubelet's client certificate and the cluster CA.
    KubeletCertificate {
        client_certificate: PathBuf,
        ca_file: PathBuf,
    },
}

/// Heartbeat / health-check settings (§7.1 of the reference).
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub failed_retry: u32,
    pub healthy_threshold: u32,
    pub timeout: Duration,
    pub interval: Duration,
    pub kubelet_grace_period: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub nodepool_name: String,
    pub node_ip: Option<IpAddr>,
    pub working_mode: WorkingMode,
    pub namespace: String,
    pub servers: Vec<Uri>,
    pub lb_mode: LbMode,
    pub heartbeat: Heartbeat,
    /// Hub server (healthz/readyz/metrics); None when --serve-port <= 0.
    pub hub_server_addr: Option<SocketAddr>,
    pub proxy_addr: SocketAddr,
    pub hub_address: IpAddr,
    pub hub_address_link: String,
    pub proxy_secure_addr: SocketAddr,
    pub multiplexer_port: u16,
    /// `--bind-multiplexer-address`; None = the node IP.
    pub bind_multiplexer_address: Option<IpAddr>,
    pub redirect_mode: RedirectMode,
    pub redirect_cgroup: Option<PathBuf>,
    pub apiserver_vips: Vec<SocketAddr>,
    pub keep_redirect_on_exit: bool,
    pub bpffs: PathBuf,
    pub redirect_pin_dir: String,
    pub redirect_ebpf_log: bool,
    /// `None`: the redirect self-check is off.
    pub redirect_self_check: Option<Duration>,
    pub bootstrap: Bootstrap,
    pub hub_cert_organizations: Vec<String>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_private_key_file: Option<PathBuf>,
    pub cluster_domain: String,
    pub root_dir: PathBuf,
    pub disk_cache_path: PathBuf,
    /// `--cache-max-bytes`; None = no cap.
    pub cache_max_bytes: Option<u64>,
    pub gc_frequency: Duration,
    pub min_request_timeout: Duration,
    /// `--watch-idle-timeout`: see `proxy::body::IdleBounds`.
    pub watch_idle_timeout: Duration,
    pub enable_resource_filter: bool,
    pub enable_pool_service_topology: bool,
    pub enabled_resource_filters: Vec<String>,
    pub disabled_resource_filters: Vec<String>,
    pub max_request_body_bytes: u64,
    /// `--pod-connections-per-address`: see `conns`.
    pub pod_connections_per_address: usize,
    /// `--max-pod-connections`; None = half the open-file limit.
    pub max_pod_connections: Option<usize>,
    /// `--pod-requests-per-address`: see `conns`.
    pub pod_requests_per_address: usize,
    /// `--pod-connections-per-second`; None = no bound.
    pub pod_connections_per_second: Option<u32>,
    pub profiling: bool,
    /// `--pool-scope-resources`: served by the multiplexer (empty: off).
    pub pool_scope_resources: Vec<crate::storage::Gvr>,
    pub shutdown_grace_period: Duration,
    /// `--worker-threads`: event-loop threads (0 resolved to the core count).
    pub worker_threads: usize,
    /// Deprecation notices to log once telemetry is up.
    pub warnings: Vec<String>,
}

impl Config {
    pub fn from_args(a: &RunArgs) -> Result<Config, Error> {
        let mut warnings = Vec::new();
        if a.node_name.is_empty() {
            return Err(err("--node-name", "must be set (or NODE_NAME)"));
        }
        let working_mode = match a.working_mode.as_str() {
            "edge" => WorkingMode::Edge,
            "cloud" => WorkingMode::Cloud,
            "local" => {
                return Err(err(
                    "--working-mode",
                    "local mode (iptables load balancing toward tenant apiservers) is not supported by this yurthub",
                ));
            }
            other => {
                return Err(err(
                    "--working-mode",
                    format!("{other:?} is not one of edge, cloud"),
                ));
            }
        };
        let servers = parse_servers(&a.server_addr)?;
        let lb_mode = match a.lb_mode.as_str() {
            "rr" => LbMode::RoundRobin,
            "priority" => LbMode::Priority,
            other => {
                return Err(err(
                    "--lb-mode",
                    format!("{other:?} is not one of rr, priority"),
                ));
            }
        };
        if a.heartbeat_interval_seconds == 0 {
            return Err(err("--heartbeat-interval-seconds", "must be positive"));
        }
        if a.heartbeat_healthy_threshold == 0 {
            return Err(err("--heartbeat-healthy-threshold", "must be positive"));
        }
        if a.heartbeat_timeout_seconds == 0 {
            return Err(err("--heartbeat-timeout-seconds", "must be positive"));
        }
        let heartbeat = Heartbeat {
            failed_retry: a.heartbeat_failed_retry.max(1),
            healthy_threshold: a.heartbeat_healthy_threshold,
            timeout: Duration::from_secs(a.heartbeat_timeout_seconds),
            interval: Duration::from_secs(a.heartbeat_interval_seconds),
            kubelet_grace_period: parse_duration(&a.kubelet_health_grace_period)
                .map_err(|e| err("--kubelet-health-grace-period", e))?,
        };

        let bind_address: IpAddr = parse_ip("--bind-address", &a.bind_address)?;
        let bind_proxy_address: IpAddr = parse_ip("--bind-proxy-address", &a.bind_proxy_address)?;
        let hub_server_addr = (a.serve_port > 0)
            .then(|| u16::try_from(a.serve_port).map(|p| SocketAddr::new(bind_address, p)))
            .transpose()
            .map_err(|_| err("--serve-port", "must be at most 65535"))?;

        // --dummy-if-ip is upstream's name for the hub address.
        if let Some(ip) = &a.dummy_if_ip {
            warnings.push(format!(
                "--dummy-if-ip is deprecated; use --hub-address={ip}"
            ));
        }
        if a.dummy_if_name.is_some() {
            warnings.push("--dummy-if-name is deprecated and ignored: no link is created, the hub address goes on --hub-address-link".into());
        }
        if a.enable_iptables.is_some() {
            warnings.push(
                "--enable-iptables is deprecated and ignored: yurthub never writes iptables rules"
                    .into(),
            );
        }
        if a.max_requests_in_flight.is_some() {
            warnings.push("--max-requests-in-flight is deprecated and ignored".into());
        }
        if a.enable_node_pool.is_some() {
            warnings.push("--enable-node-pool is deprecated and ignored".into());
        }
        let hub_address_flag = match (&a.hub_address, &a.dummy_if_ip) {
            (Some(h), Some(d)) if h != d => {
                return Err(err(
                    "--dummy-if-ip",
                    "conflicts with --hub-address; set only --hub-address",
                ));
            }
            (Some(h), _) => Some(("--hub-address", h.as_str())),
            (None, Some(d)) => Some(("--dummy-if-ip", d.as_str())),
            (None, None) => None,
        };
        let hub_address = match hub_address_flag {
            Some((flag, s)) => (flag, parse_ip(flag, s)?),
            None if bind_address.is_ipv6() => (
                "--hub-address",
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 2, 1)),
            ),
            None => ("--hub-address", IpAddr::V4(Ipv4Addr::new(169, 254, 2, 1))),
        };
        if a.hub_address_link.is_empty() || a.hub_address_link.len() > 15 {
            return Err(err(
                "--hub-address-link",
                "must be a link name of 1 to 15 characters",
            ));
        }

        let redirect_mode = match a.redirect_mode.as_deref() {
            Some("ebpf") => RedirectMode::Ebpf,
            Some("none") => RedirectMode::None,
            Some(other) => {
                return Err(err(
                    "--redirect-mode",
                    format!("{other:?} is not one of ebpf, none"),
                ));
            }
            // The kernel redirect is what pods on edge nodes need; in the cloud
            // the VIP reaches a real apiserver anyway.
            None if a.enable_dummy_if == Some(false) => RedirectMode::None,
            None if working_mode == WorkingMode::Edge => RedirectMode::Ebpf,
            None => RedirectMode::None,
        };
        let (hub_flag, hub_address) = hub_address;
        // Loopback is fine for a hub without the redirect (development, tests);
        // pods cannot reach it, so with the redirect the upstream rules apply.
        if !(hub_address.is_loopback() && redirect_mode == RedirectMode::None) {
            crate::redirect::validate_hub_address(hub_address)
                .map_err(|e| err(hub_flag, e.to_string()))?;
        }
        if let Some(v) = a.enable_dummy_if {
            warnings.push(format!(
                "--enable-dummy-if is deprecated; mapped to --redirect-mode={}",
                if redirect_mode == RedirectMode::Ebpf {
                    "ebpf"
                } else {
                    "none"
                }
            ));
            if v && redirect_mode == RedirectMode::None && a.redirect_mode.is_some() {
                warnings
                    .push("--enable-dummy-if=true has no effect with --redirect-mode=none".into());
            }
        }
        let apiserver_vips = a
            .apiserver_vip
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<SocketAddr>()
                    .map_err(|e| err("--apiserver-vip", format!("{s:?} is not ip:port: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let bootstrap = match a.bootstrap_mode.as_str() {
            "token" => {
                if a.bootstrap_file.is_empty() && a.join_token.is_empty() {
                    return Err(err(
                        "--bootstrap-mode",
                        "token mode needs --bootstrap-file or --join-token (or use --bootstrap-mode=kubeletcertificate)",
                    ));
                }
                if a.discovery_token_ca_cert_hash.is_empty()
                    && !a.discovery_token_unsafe_skip_ca_verification
                    && !a.join_token.is_empty()
                {
                    return Err(err(
                        "--discovery-token-ca-cert-hash",
                        "is required with --join-token unless --discovery-token-unsafe-skip-ca-verification",
                    ));
                }
                Bootstrap::Token {
                    bootstrap_file: (!a.bootstrap_file.is_empty())
                        .then(|| PathBuf::from(&a.bootstrap_file)),
                    join_token: (!a.join_token.is_empty()).then(|| a.join_token.clone()),
                    ca_cert_hashes: if a.discovery_token_unsafe_skip_ca_verification {
                        Vec::new()
                    } else {
                        a.discovery_token_ca_cert_hash
                            .iter()
                            .filter(|s| !s.is_empty())
                            .cloned()
                            .collect()
                    },
                }
            }
            "kubeletcertificate" => Bootstrap::KubeletCertificate {
                client_certificate: a.kubelet_client_certificate.clone(),
                ca_file: a.kubelet_ca_file.clone(),
            },
            other => {
                return Err(err(
                    "--bootstrap-mode",
                    format!("{other:?} is not one of token, kubeletcertificate"),
                ));
            }
        };
        if a.tls_cert_file.is_some() != a.tls_private_key_file.is_some() {
            return Err(err(
                "--tls-private-key-file",
                "--tls-cert-file and --tls-private-key-file must be given together",
            ));
        }
        if working_mode == WorkingMode::Edge && a.nodepool_name.is_empty() {
            // Upstream requires it; pool-aware filters fall back to node topology without it.
            warnings.push(
                "--nodepool-name is empty: pool-aware filters fall back to node topology".into(),
            );
        }
        if !a.host_control_plane_address.is_empty() {
            // Only OpenYurt's `local` working mode reads it, which is not supported.
            warnings.push(
                "--host-control-plane-address is ignored: it only applies to the local working mode, which is not supported".into(),
            );
        }
        let bind_multiplexer_address = (!a.bind_multiplexer_address.is_empty())
            .then(|| parse_ip("--bind-multiplexer-address", &a.bind_multiplexer_address))
            .transpose()?;
        let node_ip = (!a.node_ip.is_empty())
            .then(|| parse_ip("--node-ip", &a.node_ip))
            .transpose()?;

        let gc_minutes = if a.gc_frequency == 0 {
            60
        } else {
            a.gc_frequency
        };
        Ok(Config {
            node_name: a.node_name.clone(),
            nodepool_name: a.nodepool_name.clone(),
            node_ip,
            working_mode,
            namespace: a.namespace.clone(),
            servers,
            lb_mode,
            heartbeat,
            hub_server_addr,
            proxy_addr: SocketAddr::new(bind_proxy_address, a.proxy_port),
            hub_address,
            hub_address_link: a.hub_address_link.clone(),
            proxy_secure_addr: SocketAddr::new(hub_address, a.proxy_secure_port),
            multiplexer_port: a.multiplexer_port,
            bind_multiplexer_address,
            redirect_mode,
            redirect_cgroup: a.redirect_cgroup.clone(),
            apiserver_vips,
            keep_redirect_on_exit: a.keep_redirect_on_exit,
            bpffs: a.bpffs.clone(),
            redirect_pin_dir: a.redirect_pin_dir.clone(),
            redirect_ebpf_log: a.redirect_ebpf_log,
            redirect_self_check: match parse_duration(&a.redirect_self_check_interval) {
                Ok(d) if d.is_zero() => None,
                Ok(d) if d >= Duration::from_millis(100) => Some(d),
                _ => {
                    return Err(err(
                        "--redirect-self-check-interval",
                        "must be a duration of at least 100ms, or 0 to turn the self-check off",
                    ));
                }
            },
            bootstrap,
            hub_cert_organizations: a
                .hub_cert_organizations
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            tls_cert_file: a.tls_cert_file.clone(),
            tls_private_key_file: a.tls_private_key_file.clone(),
            cluster_domain: a.cluster_domain.clone(),
            root_dir: a.root_dir.clone(),
            disk_cache_path: a.disk_cache_path.clone(),
            cache_max_bytes: (a.cache_max_bytes > 0).then_some(a.cache_max_bytes),
            gc_frequency: Duration::from_secs(gc_minutes * 60),
            min_request_timeout: parse_duration(&a.min_request_timeout)
                .map_err(|e| err("--min-request-timeout", e))?,
            watch_idle_timeout: parse_duration(&a.watch_idle_timeout)
                .map_err(|e| err("--watch-idle-timeout", e))?,
            enable_resource_filter: a.enable_resource_filter,
            enable_pool_service_topology: a.enable_pool_service_topology,
            enabled_resource_filters: a
                .enabled_resource_filters
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            disabled_resource_filters: a
                .disabled_resource_filters
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            max_request_body_bytes: a.max_request_body_bytes,
            pod_connections_per_address: match a.pod_connections_per_address {
                0 => return Err(err("--pod-connections-per-address", "must be at least 1")),
                n => n,
            },
            max_pod_connections: (a.max_pod_connections > 0).then_some(a.max_pod_connections),
            pod_connections_per_second: (a.pod_connections_per_second > 0)
                .then_some(a.pod_connections_per_second),
            pod_requests_per_address: match a.pod_requests_per_address {
                0 => return Err(err("--pod-requests-per-address", "must be at least 1")),
                n => n,
            },
            profiling: a.profiling,
            pool_scope_resources: crate::multiplexer::parse_resources(&a.pool_scope_resources)
                .map_err(|e| err("--pool-scope-resources", e))?,
            shutdown_grace_period: parse_duration(&a.shutdown_grace_period)
                .map_err(|e| err("--shutdown-grace-period", e))?,
            worker_threads: match a.worker_threads {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            },
            warnings,
        })
    }
}

fn parse_ip(flag: &'static str, s: &str) -> Result<IpAddr, Error> {
    s.parse()
        .map_err(|_| err(flag, format!("{s:?} is not an IP address")))
}

fn parse_servers(s: &str) -> Result<Vec<Uri>, Error> {
    let mut out = Vec::new();
    for raw in s.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let with_scheme = if raw.contains("://") {
            raw.to_string()
        } else {
            format!("https://{raw}")
        };
        let uri: Uri = with_scheme
            .parse()
            .map_err(|e| err("--server-addr", format!("{raw:?} is not a URL: {e}")))?;
        if uri.scheme_str() != Some("https") {
            return Err(err(
                "--server-addr",
                format!("{raw:?}: only https is allowed"),
            ));
        }
        if uri.host().is_none() {
            return Err(err("--server-addr", format!("{raw:?} has no host")));
        }
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(err(
                "--server-addr",
                format!("{raw:?}: a path prefix is not supported"),
            ));
        }
        if out.contains(&uri) {
            return Err(err("--server-addr", format!("{raw:?} is listed twice")));
        }
        out.push(uri);
    }
    if out.is_empty() {
        return Err(err("--server-addr", "must list at least one https URL"));
    }
    Ok(out)
}

/// Parses Go's duration syntax ("40s", "1m30s", "1800s", "250ms", "0").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{s:?}: missing unit (ns, us, ms, s, m, h)"))?;
        let (num, tail) = rest.split_at(num_len);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("{s:?}: bad number {num:?}"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("{s:?}: unknown unit {unit:?}")),
        };
        total += value * scale;
        rest = tail;
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

    fn cfg(args: &[&str]) -> Result<Config, Error> {
        let mut full = vec![
            "yurthub",
            "--node-name=n1",
            "--nodepool-name=pool",
            "--server-addr=https://127.0.0.1:6443",
            "--bootstrap-mode=kubeletcertificate",
        ];
        full.extend_from_slice(args);
        let cli = Cli::try_parse_from(full).expect("flags parse");
        Config::from_args(&cli.run)
    }

    #[test]
    fn defaults_match_upstream() {
        let c = cfg(&[]).expect("valid");
        assert_eq!(c.proxy_addr, "127.0.0.1:10261".parse().unwrap());
        assert_eq!(c.hub_server_addr, Some("127.0.0.1:10267".parse().unwrap()));
        assert_eq!(c.proxy_secure_addr, "169.254.2.1:10268".parse().unwrap());
        assert_eq!(c.working_mode, WorkingMode::Edge);
        assert_eq!(c.redirect_mode, RedirectMode::Ebpf);
        assert_eq!(c.lb_mode, LbMode::RoundRobin);
        assert_eq!(c.heartbeat.interval, Duration::from_secs(10));
        assert_eq!(c.heartbeat.kubelet_grace_period, Duration::from_secs(40));
        assert_eq!(c.min_request_timeout, Duration::from_secs(1800));
        assert_eq!(c.gc_frequency, Duration::from_secs(120 * 60));
    }

    #[test]
    fn ipv6_bind_address_moves_the_hub_address() {
        let c = cfg(&["--bind-address=::1"]).expect("valid");
        assert_eq!(c.hub_address, "fd00::2:1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn invalid_values_name_their_flag() {
        for (args, flag) in [
            (vec!["--lb-mode=random"], "--lb-mode"),
            (vec!["--working-mode=fog"], "--working-mode"),
            (vec!["--hub-address=10.0.0.1"], "--hub-address"),
            (vec!["--hub-address=169.254.31.9"], "--hub-address"),
            (vec!["--hub-address=169.254.1.1"], "--hub-address"),
            (vec!["--dummy-if-ip=169.254.1.1"], "--dummy-if-ip"),
            (vec!["--redirect-mode=iptables"], "--redirect-mode"),
            (
                vec!["--kubelet-health-grace-period=40"],
                "--kubelet-health-grace-period",
            ),
            (vec!["--tls-cert-file=/x"], "--tls-private-key-file"),
            (vec!["--apiserver-vip=10.96.0.1"], "--apiserver-vip"),
        ] {
            let e = cfg(&args).expect_err(&format!("{args:?} must be rejected"));
            assert_eq!(e.flag, flag, "{args:?}: {e}");
        }
        let cli = Cli::try_parse_from([
            "yurthub",
            "--node-name=n",
            "--server-addr=http://a:1",
            "--bootstrap-mode=kubeletcertificate",
        ])
        .unwrap();
        assert_eq!(
            Config::from_args(&cli.run).unwrap_err().flag,
            "--server-addr"
        );
        let cli = Cli::try_parse_from(["yurthub", "--server-addr=https://a:1"]).unwrap();
        // NODE_NAME may be set in a developer's shell; only check when it is not.
        if std::env::var_os("NODE_NAME").is_none() {
            assert_eq!(Config::from_args(&cli.run).unwrap_err().flag, "--node-name");
        }
        let cli =
            Cli::try_parse_from(["yurthub", "--node-name=n", "--server-addr=https://a:1"]).unwrap();
        assert_eq!(
            Config::from_args(&cli.run).unwrap_err().flag,
            "--bootstrap-mode"
        );
    }

    #[test]
    fn deprecated_network_flags_map_with_warnings() {
        let c = cfg(&[
            "--dummy-if-ip=169.254.9.9",
            "--enable-iptables=true",
            "--dummy-if-name=hub0",
        ])
        .expect("valid");
        assert_eq!(c.hub_address, "169.254.9.9".parse::<IpAddr>().unwrap());
        assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
        let c = cfg(&["--enable-dummy-if=false"]).expect("valid");
        assert_eq!(c.redirect_mode, RedirectMode::None);
    }

    #[test]
    fn multiplexer_flags_and_the_ignored_host_control_plane_address() {
        let c = cfg(&[
            "--bind-multiplexer-address=127.0.0.7",
            "--multiplexer-port=12000",
        ])
        .expect("valid");
        assert_eq!(
            c.bind_multiplexer_address,
            Some("127.0.0.7".parse::<IpAddr>().unwrap())
        );
        assert_eq!(c.multiplexer_port, 12000);
        assert!(cfg(&["--bind-multiplexer-address=nope"]).is_err());
        let c = cfg(&["--host-control-plane-address=10.0.0.1:6443"]).expect("valid");
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("--host-control-plane-address is ignored")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10x").is_err());
    }

    #[test]
    fn servers_default_to_https_and_reject_duplicates() {
        let s = parse_servers("127.0.0.1:6443, https://[::1]:6443").unwrap();
        assert_eq!(s[0].scheme_str(), Some("https"));
        assert_eq!(s.len(), 2);
        assert!(parse_servers("https://a:1,https://a:1").is_err());
    }
}

//! The command-line entry point: flags → config → telemetry → App, and exit
//! codes (64 for bad flags, 1 for a startup failure).

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::config::Config;

/// Runs the yurthub command line; `main.rs` is just this call, so test
/// harnesses can build the very same binary.
pub fn main() -> ExitCode {
    crate::alloc::tune();
    let cli = Cli::parse();
    if cli.run.version {
        println!("yurthub {}", crate::VERSION);
        return ExitCode::SUCCESS;
    }
    match &cli.command {
        Some(Command::Cleanup(args)) => return cleanup(args),
        Some(Command::ImportCache(args)) => return import_cache(args),
        Some(Command::ApproveCsrs(args)) => return approve_csrs(args),
        Some(Command::InstallStatic(args)) => return install_static(args),
        None => {}
    }
    let cfg = match Config::from_args(&cli.run) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(64);
        }
    };
    if cli.run.dry_run {
        println!("{cfg:#?}");
        return ExitCode::SUCCESS;
    }
    if let Err(e) = crate::telemetry::init(cli.run.verbosity, &cli.run.log_format) {
        eprintln!("error: {e}");
        return ExitCode::from(64);
    }
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    raise_open_file_limit();
    let runtime = match crate::runtime::build(cfg.worker_threads) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let root_dir = cfg.root_dir.clone();
    runtime.block_on(async move {
        let dumps = tokio_util::sync::CancellationToken::new();
        crate::dump::spawn_on_sigusr1(root_dir, dumps.clone());
        // Registered before the listeners open: a SIGTERM while the hub is
        // still starting (it already serves) must still shut it down cleanly.
        let stop = shutdown_signal();
        let app = match crate::App::start(cfg).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "yurthub failed to start");
                return ExitCode::from(1);
            }
        };
        stop.await;
        dumps.cancel();
        app.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Registers for SIGTERM and SIGINT now and returns the wait for either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (mut term, mut int) = match signals {
            (Ok(t), Ok(i)) => (t, i),
            _ => {
                tracing::error!("cannot install signal handlers; waiting for ctrl-c");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
        }
    }
}

/// `yurthub cleanup`: removes the programs, pins and hub address a hub
/// installed (also those a crashed hub left behind). Idempotent.
fn cleanup(args: &crate::cli::CleanupArgs) -> ExitCode {
    let _ = crate::telemetry::init(0, "text");
    let ip: std::net::IpAddr = match args.hub_address.parse() {
        Ok(ip) => ip,
        Err(_) => {
            eprintln!(
                "error: invalid flag --hub-address: {:?} is not an IP address",
                args.hub_address
            );
            return ExitCode::from(64);
        }
    };
    let mut cfg = crate::redirect::Config::new(ip, 0, Vec::new());
    cfg.link = args.hub_address_link.clone();
    cfg.bpffs = args.bpffs.clone();
    cfg.cgroup = args.redirect_cgroup.clone();
    cfg.pin_dir_name = args.redirect_pin_dir.clone();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(crate::redirect::cleanup(&cfg)) {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `yurthub import-cache DIR`: reads an OpenYurt cache directory into the
/// store and prints what was imported.
fn import_cache(args: &crate::cli::ImportCacheArgs) -> ExitCode {
    let _ = crate::telemetry::init(0, "text");
    if let Err(e) = std::fs::create_dir_all(&args.disk_cache_path) {
        eprintln!("error: creating {}: {e}", args.disk_cache_path.display());
        return ExitCode::from(1);
    }
    let opened = match crate::storage::Store::open(
        &args.disk_cache_path,
        crate::storage::Options::default(),
    ) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let store = opened.store;
    let result = runtime.block_on(async {
        let report = crate::storage::import_openyurt(&args.dir, &store).await?;
        store.flush().await?;
        Ok::<_, crate::storage::Error>(report)
    });
    match result {
        Ok(r) => {
            println!(
                "{}",
                serde_json::json!({
                    "objects": r.objects,
                    "ignoredOlder": r.ignored_older,
                    "documents": r.documents,
                    "kinds": r.kinds,
                    "markers": r.markers,
                    "components": r.components,
                    "restoredFromTmp": r.restored_from_tmp,
                    "skipped": r.skipped.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>(),
                })
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: importing {}: {e}", args.dir.display());
            ExitCode::from(1)
        }
    }
}

/// `yurthub install-static`: writes (or prints) the static-pod manifest.
fn install_static(args: &crate::cli::InstallStaticArgs) -> ExitCode {
    match crate::install::install(args) {
        Ok(Some(path)) => {
            eprintln!(
                "wrote {}; kubelet starts (or restarts) the hub from it",
                path.display()
            );
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `yurthub approve-csrs`: runs the CSR approver until SIGTERM/SIGINT.
fn approve_csrs(args: &crate::cli::ApproveCsrsArgs) -> ExitCode {
    use crate::certificates::approver;
    if let Err(e) = crate::telemetry::init(args.verbosity, "text") {
        eprintln!("error: {e}");
        return ExitCode::from(64);
    }
    let mut hub_addresses = Vec::new();
    for a in args.hub_address.iter().filter(|s| !s.is_empty()) {
        match a.parse() {
            Ok(ip) => hub_addresses.push(ip),
            Err(_) => {
                eprintln!("error: invalid flag --hub-address: {a:?} is not an IP address");
                return ExitCode::from(64);
            }
        }
    }
    let policy = approver::Policy {
        cluster_domain: args.cluster_domain.clone(),
        hub_addresses,
        allowed_organizations: args
            .allowed_organizations
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let api = match approver::client_from_kubeconfig(args.kubeconfig.as_deref()) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(64);
            }
        };
        tracing::info!(server = %api.base(), "approving yurthub CSRs");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let approver = approver::Approver::new(api, policy);
        tokio::select! {
            _ = approver.run(shutdown.clone()) => {}
            _ = shutdown_signal() => shutdown.cancel(),
        }
        ExitCode::SUCCESS
    })
}

/// Raises the soft limit on open files to the hard one, as the Go runtime
/// does for OpenYurt's hub: systemd and container runtimes often leave the
/// soft limit at 1024, which a busy node's connections can reach.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "could not raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not read the open-file limit"),
    }
}

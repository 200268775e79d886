//! The command-line entry point: flags → config → telemetry → App, and exit
//! codes (64 for bad flags, 1 for a startup failure).

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::config::Config;

/// Runs the yurthub command line; `main.rs` is just this call, so test
/// harnesses can build the very same binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.run.version {
        println!("yurthub {}", crate::VERSION);
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Cleanup(_)) = &cli.command {
        eprintln!("error: yurthub cleanup is not available in this build yet");
        return ExitCode::from(1);
    }
    let cfg = match Config::from_args(&cli.run) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(64);
        }
    };
    if let Err(e) = crate::telemetry::init(cli.run.verbosity, &cli.run.log_format) {
        eprintln!("error: {e}");
        return ExitCode::from(64);
    }
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
        let app = match crate::App::start(cfg).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "yurthub failed to start");
                return ExitCode::from(1);
            }
        };
        wait_for_signal().await;
        app.shutdown().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
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

//! Logging: tracing with klog-style verbosity (`--v`) and text or JSON output.
//! `RUST_LOG` overrides `--v` for fine-grained filters.

use tracing_subscriber::EnvFilter;

#[derive(Debug, thiserror::Error)]
#[error("invalid flag --log-format: {0:?} is not one of text, json")]
pub struct FormatError(String);

pub fn init(verbosity: u8, format: &str) -> Result<(), FormatError> {
    let level = match verbosity {
        0 | 1 => "info",
        2 | 3 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // Dependencies stay at info/warn unless asked: their debug is noise.
        EnvFilter::new(format!("warn,yurthub={level}"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        "text" => builder.try_init(),
        "json" => builder.json().flatten_event(true).try_init(),
        other => return Err(FormatError(other.to_string())),
    };
    // Already initialised (tests running several hubs in one process): fine.
    let _ = result;
    Ok(())
}

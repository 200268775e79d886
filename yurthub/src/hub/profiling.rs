//! `/debug/pprof/` on the hub server (with `--profiling`): an index and a
//! sampled CPU profile of the whole process in pprof's protobuf format, the
//! file `go tool pprof` reads. Profiling uses pprof-rs (SIGPROF sampling);
//! only one profile runs at a time, as in Go's net/http/pprof.

use std::time::Duration;

use http::{Response, StatusCode, header};
use pprof::protos::Message;

use crate::{Body, full_body};

/// The longest profile a request may ask for.
pub const MAX_SECONDS: u64 = 60;
/// Go's default when `seconds` is absent.
const DEFAULT_SECONDS: u64 = 30;
/// Samples per second (Go's runtime default).
const FREQUENCY: i32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("seconds must be an integer between 1 and {MAX_SECONDS}, got {0:?}")]
    BadSeconds(String),
    #[error("could not enable CPU profiling: {0}")]
    Start(String),
    #[error("building the CPU profile report: {0}")]
    Report(String),
    #[error("encoding the CPU profile: {0}")]
    Encode(String),
    #[error("the profiling task failed: {0}")]
    Task(String),
}

/// Answers a request under `/debug/pprof`.
pub async fn handle(path: &str, query: Option<&str>) -> Response<Body> {
    match path {
        "/debug/pprof" => {
            let mut r = Response::new(crate::empty_body());
            *r.status_mut() = StatusCode::FOUND;
            r.headers_mut().insert(
                header::LOCATION,
                header::HeaderValue::from_static("/debug/pprof/"),
            );
            r
        }
        "/debug/pprof/" => text(StatusCode::OK, INDEX.to_owned()),
        "/debug/pprof/profile" => match profile_seconds(query) {
            Ok(seconds) => match cpu_profile(Duration::from_secs(seconds)).await {
                Ok(bytes) => {
                    let mut r = Response::new(full_body(bytes));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("application/octet-stream"),
                    );
                    r.headers_mut().insert(
                        header::CONTENT_DISPOSITION,
                        header::HeaderValue::from_static("attachment; filename=\"profile\""),
                    );
                    r
                }
                Err(e) => {
                    tracing::warn!(error = %e, "CPU profile failed");
                    text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                }
            },
            Err(e) => text(StatusCode::BAD_REQUEST, e.to_string()),
        },
        _ => text(StatusCode::NOT_FOUND, "404 page not found\n".to_owned()),
    }
}

const INDEX: &str = "/debug/pprof/\n\n\
profile: CPU profile in pprof protobuf format. Query: seconds=N (1..=60, default 30).\n\
Use: go tool pprof http://<hub-server>/debug/pprof/profile?seconds=10\n";

fn profile_seconds(query: Option<&str>) -> Result<u64, Error> {
    let Some(raw) = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "seconds")
        .map(|(_, v)| v.into_owned())
    else {
        return Ok(DEFAULT_SECONDS);
    };
    match raw.parse::<u64>() {
        Ok(s) if (1..=MAX_SECONDS).contains(&s) => Ok(s),
        _ => Err(Error::BadSeconds(raw)),
    }
}

/// Samples the process for `duration` and encodes the pprof Profile. The
/// sampling runs on a blocking thread: the guard must live for the whole
/// window and report building symbolizes, which is CPU-bound.
pub async fn cpu_profile(duration: Duration) -> Result<Vec<u8>, Error> {
    tokio::task::spawn_blocking(move || {
        let guard = pprof::ProfilerGuardBuilder::default()
            .frequency(FREQUENCY)
            // Unwinding through these while they hold locks can deadlock
            // in the signal handler (pprof-rs' advice).
            .blocklist(&["libc", "libgcc", "pthread", "vdso"])
            .build()
            .map_err(|e| Error::Start(e.to_string()))?;
        std::thread::sleep(duration);
        let report = guard
            .report()
            .build()
            .map_err(|e| Error::Report(e.to_string()))?;
        drop(guard);
        let profile = report.pprof().map_err(|e| Error::Report(e.to_string()))?;
        profile
            .write_to_bytes()
            .map_err(|e| Error::Encode(e.to_string()))
    })
    .await
    .map_err(|e| Error::Task(e.to_string()))?
}

fn text(code: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(full_body(body));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_bounded() {
        assert_eq!(profile_seconds(None).unwrap(), DEFAULT_SECONDS);
        assert_eq!(profile_seconds(Some("seconds=1")).unwrap(), 1);
        assert_eq!(profile_seconds(Some("debug=1&seconds=60")).unwrap(), 60);
        for bad in ["seconds=0", "seconds=61", "seconds=x", "seconds="] {
            assert!(profile_seconds(Some(bad)).is_err(), "{bad} must be refused");
        }
    }
}

//! SIGUSR1 writes a diagnostic dump to `<root-dir>/yurthub.<pid>.stacks.log`
//! (upstream's goroutine dump, in Rust terms): every thread with its kernel
//! state and wait channel, the async runtime's task and queue counts, and the
//! backtrace of the dumping thread. Rust cannot walk other threads' stacks
//! safely in-process; the kernel's view plus the runtime's counters are what
//! tells a wedged hub from a busy one.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

/// Dumps on every SIGUSR1 until shutdown.
pub fn spawn_on_sigusr1(root_dir: PathBuf, shutdown: CancellationToken) {
    let Ok(mut usr1) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
    else {
        tracing::warn!("cannot install the SIGUSR1 handler; no diagnostic dumps");
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = usr1.recv() => if got.is_none() { return },
            }
            match write_dump(&root_dir) {
                Ok(path) => tracing::info!(path = %path.display(), "diagnostic dump written"),
                Err(e) => tracing::error!(error = %e, "writing the diagnostic dump failed"),
            }
        }
    });
}

/// Writes the dump and returns its path.
pub fn write_dump(root_dir: &Path) -> std::io::Result<PathBuf> {
    let mut out = String::new();
    let now = time::OffsetDateTime::now_utc();
    let _ = writeln!(
        out,
        "yurthub {} pid {} at {now}",
        crate::VERSION,
        std::process::id()
    );
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        let m = handle.metrics();
        let _ = writeln!(
            out,
            "\nruntime: {} workers, {} alive tasks, {} queued globally",
            m.num_workers(),
            m.num_alive_tasks(),
            m.global_queue_depth()
        );
    }
    let _ = writeln!(out, "\nthreads (tid name state wchan):");
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        let mut tids: Vec<_> = tasks.flatten().map(|e| e.path()).collect();
        tids.sort();
        for t in tids {
            let read = |f: &str| std::fs::read_to_string(t.join(f)).unwrap_or_default();
            let stat = read("stat");
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, r)| r.split(' ').next())
                .unwrap_or("?");
            let tid = t.file_name().and_then(|n| n.to_str()).unwrap_or("?");
            let _ = writeln!(
                out,
                "  {tid} {} {state} {}",
                read("comm").trim(),
                read("wchan").trim()
            );
        }
    }
    let _ = writeln!(
        out,
        "\ndumping thread backtrace:\n{}",
        std::backtrace::Backtrace::force_capture()
    );
    std::fs::create_dir_all(root_dir)?;
    let path = root_dir.join(format!("yurthub.{}.stacks.log", std::process::id()));
    std::fs::write(&path, out)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn dump_lists_threads_and_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let path = super::write_dump(dir.path()).unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            text.contains("runtime: ") && text.contains("threads (tid name state wchan):"),
            "{text}"
        );
        assert!(text.lines().filter(|l| l.starts_with("  ")).count() >= 1);
    }
}

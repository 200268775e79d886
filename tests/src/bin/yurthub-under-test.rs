//! The yurthub binary for process-level tests (signals, exit codes, flags):
//! the same `yurthub::entry::main` the production binary runs, built by cargo
//! alongside the tests so they never exercise a stale binary.

fn main() -> std::process::ExitCode {
    yurthub::entry::main()
}

//! The yurthub binary for process-level tests (signals, exit codes, flags):
//! the same `yurthub::entry::main` the production binary runs, built by cargo
//! alongside the tests so they never exercise a stale binary.
//!
//! With `--stack-floor` first it runs the proxy bench's stack floor instead
//! (`yurthub_e2e::stack_floor`), so the floor is built with the hub's profile.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(yurthub_e2e::stack_floor::FLAG) {
        return match yurthub_e2e::stack_floor::main_with(&args[1..]) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("stack floor: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    yurthub::entry::main()
}

//! The proxy bench's stack floor (`yurthub_e2e::stack_floor`): a binary of
//! its own, so the hub binary the benches measure (idle RSS included) links
//! none of it, and `cargo xtask bench proxy` builds both with one profile.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match yurthub_e2e::stack_floor::main_with(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stack-floor: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! The yurthub daemon; everything lives in the library (`yurthub::entry`).

fn main() -> std::process::ExitCode {
    yurthub::entry::main()
}

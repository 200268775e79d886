//! Project automation that plain cargo cannot do: installing the eBPF
//! toolchain, root checks, and inspecting the eBPF object. Everything else
//! stays a plain cargo command.
//!
//! One module per subcommand; add a new one (e.g. `demo`, `bench`) by adding
//! a module, a `Command` variant and a match arm.

mod bench;
mod build_ebpf;
mod cmd;
mod demo;
mod lint;
mod proto_schema;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "yurthub project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (idempotent): nightly + rust-src,
    /// bpf-linker 0.10.3, iproute2, bpftool, iptables, nftables.
    Setup,
    /// Build the eBPF programs exactly as `cargo build -p yurthub` does and copy
    /// the object to <target>/ebpf/ for inspection.
    BuildEbpf,
    /// Run the whole test suite (privileged: must run as root).
    Test(test::Args),
    /// rustfmt check, clippy -D warnings on the workspace and on the eBPF crate.
    Lint,
    /// Regenerate (or --check) the JSON/protobuf schema table of the codec
    /// from the k8s-pb and k8s-openapi sources.
    GenProtoSchema(proto_schema::Args),
    /// Build everything and show yurthub working: the apiserver double on
    /// loopback, the hub in front of it, kubectl through it, the eBPF
    /// redirect in a sandbox (as root), then the cloud cut.
    Demo(demo::Args),
    /// Release-build and run a benchmark: proxy, redirect (root), cache, all.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::BuildEbpf => build_ebpf::run(),
        Command::Test(args) => test::run(&args),
        Command::Lint => lint::run(),
        Command::GenProtoSchema(args) => proto_schema::run(args),
        Command::Bench(args) => bench::run(&args),
        Command::Demo(args) => demo::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

//! `cargo xtask test`: setup when something is missing, then the whole
//! suite. The redirect tests load eBPF programs, create network namespaces
//! and cgroups: they need root, so this refuses early and loudly otherwise.

use anyhow::{Result, bail};

use crate::{cmd, proto_schema, setup};

#[derive(clap::Args)]
pub struct Args {
    /// Extra arguments for `cargo test` (e.g. `-- redirect`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cargo_args: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    let uid = cmd::effective_uid()?;
    if uid != 0 {
        bail!(
            "REFUSING TO RUN: the privileged tests (eBPF, network namespaces, cgroups) need root, \
             but the effective uid is {uid}. Run `sudo -E cargo xtask test`."
        );
    }
    setup::ensure()?;
    // The codec's schema table is generated from the locked k8s-pb and
    // k8s-openapi sources: a dependency bump must come with a regeneration.
    proto_schema::run(proto_schema::Args {
        out: None,
        check: true,
        report: false,
        workspace: None,
    })?;
    // Plain `cargo test` in the workspace root tests the default members:
    // the whole workspace except yurthub-ebpf, which only builds for the
    // BPF target (yurthub's build.rs builds it).
    cmd::run(
        cmd::cargo()
            .arg("test")
            .args(&args.cargo_args)
            .env("RUST_BACKTRACE", "1"),
    )
}

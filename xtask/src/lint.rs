//! `cargo xtask lint`: formatting, clippy with warnings denied on the
//! default members (all targets), and clippy on the eBPF crate for its real
//! target (nightly, bpfel-unknown-none, build-std=core), which a host build
//! never sees.

use anyhow::Result;

use crate::{build_ebpf, cmd, setup};

pub fn run() -> Result<()> {
    setup::ensure()?;
    cmd::run(cmd::cargo().args(["fmt", "--all", "--", "--check"]))?;
    cmd::run(cmd::cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;

    // The same flags aya-build uses, in a separate target directory so the
    // nightly artefacts never mix with the stable ones.
    let target_dir = build_ebpf::target_dir()?.join("ebpf-clippy");
    let mut ebpf = std::process::Command::new("rustup");
    ebpf.current_dir(cmd::workspace_root())
        .args(["run", "nightly", "cargo", "clippy", "-p", "yurthub-ebpf"])
        .args([
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .args(["--", "-D", "warnings"])
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        )
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO");
    cmd::run(&mut ebpf)
}

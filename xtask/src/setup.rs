//! `cargo xtask setup`: installs what building and testing need, and only
//! what is missing, saying what it does. Other subcommands call
//! [`ensure`] first, so a fresh machine needs no separate step.
//!
//! - the nightly toolchain with `rust-src` (aya-build compiles the eBPF crate
//!   with `-Z build-std=core` for bpfel-unknown-none);
//! - bpf-linker 0.10.3 (0.11+ needs a system LLVM; 0.10 uses the toolchain's);
//! - iproute2, bpftool, iptables, nftables (test sandboxes, inspection,
//!   benchmark baselines), through apt-get.
//!
//! `cargo xtask bench` also needs [`BENCH_TOOLS`] (nginx-light as the peer
//! proxy, wrk, linux-perf for profiles): [`ensure_bench`] installs those
//! from Debian when missing, so `cargo xtask test` never pulls them.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd::{self, which};

const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.10.3";

/// (binary, Debian package) pairs.
const SYSTEM_TOOLS: [(&str, &str); 4] = [
    ("ip", "iproute2"),
    ("bpftool", "bpftool"),
    ("iptables", "iptables"),
    ("nft", "nftables"),
];

/// (binary, Debian package) pairs only the benchmarks need.
pub const BENCH_TOOLS: [(&str, &str); 3] = [
    ("nginx", "nginx-light"),
    ("wrk", "wrk"),
    ("perf", "linux-perf"),
];

/// Installs the benchmarks' tools that are missing (after [`ensure`]).
pub fn ensure_bench() -> Result<()> {
    ensure()?;
    let missing: Vec<&str> = BENCH_TOOLS
        .iter()
        .filter(|(binary, _)| which(binary).is_none())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    for (binary, package) in BENCH_TOOLS {
        report(
            &format!("{binary} ({package}, for benchmarks)"),
            !missing.contains(&package),
        );
    }
    install_packages(&missing)?;
    let still: Vec<&str> = BENCH_TOOLS
        .iter()
        .filter(|(binary, _)| which(binary).is_none())
        .map(|(binary, _)| *binary)
        .collect();
    if !still.is_empty() {
        bail!("installed benchmark tools but these are still missing: {still:?}");
    }
    Ok(())
}

/// One missing piece, with how to get it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missing {
    Nightly,
    RustSrc,
    BpfLinker,
    Package(&'static str),
}

fn has_nightly() -> bool {
    cmd::output(Command::new("rustup").args(["toolchain", "list"]))
        .is_some_and(|out| out.lines().any(|l| l.starts_with(NIGHTLY)))
}

fn has_rust_src() -> bool {
    cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))
    .is_some_and(|out| out.lines().any(|l| l.trim().starts_with("rust-src")))
}

fn bpf_linker_version() -> Option<String> {
    which("bpf-linker")?;
    let out = cmd::output(Command::new("bpf-linker").arg("--version"))?;
    out.split_whitespace().nth(1).map(str::to_owned)
}

fn missing() -> Vec<Missing> {
    let mut missing = Vec::new();
    if !has_nightly() {
        missing.push(Missing::Nightly);
    }
    if !has_rust_src() {
        missing.push(Missing::RustSrc);
    }
    if bpf_linker_version().as_deref() != Some(BPF_LINKER_VERSION) {
        missing.push(Missing::BpfLinker);
    }
    for (binary, package) in SYSTEM_TOOLS {
        if which(binary).is_none() {
            missing.push(Missing::Package(package));
        }
    }
    missing
}

/// Runs setup if anything is missing; quiet when all is there.
pub fn ensure() -> Result<()> {
    if missing().is_empty() {
        return Ok(());
    }
    run()
}

pub fn run() -> Result<()> {
    if which("rustup").is_none() {
        bail!(
            "rustup is not on PATH; install it from https://rustup.rs and rerun `cargo xtask setup`"
        );
    }
    let missing = missing();
    report("nightly toolchain", !missing.contains(&Missing::Nightly));
    if missing.contains(&Missing::Nightly) {
        cmd::run(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
        ]))?;
    }
    report("rust-src for nightly", !missing.contains(&Missing::RustSrc));
    if missing.contains(&Missing::RustSrc) {
        cmd::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            NIGHTLY,
        ]))?;
    }
    let linker = bpf_linker_version();
    report(
        &format!(
            "bpf-linker {BPF_LINKER_VERSION} (found: {})",
            linker.as_deref().unwrap_or("none")
        ),
        !missing.contains(&Missing::BpfLinker),
    );
    if missing.contains(&Missing::BpfLinker) {
        // --force replaces a wrong version; --locked pins its dependencies.
        cmd::run(cmd::cargo().args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
        ]))?;
    }
    let packages: Vec<&str> = missing
        .iter()
        .filter_map(|m| match m {
            Missing::Package(p) => Some(*p),
            _ => None,
        })
        .collect();
    for (binary, package) in SYSTEM_TOOLS {
        report(
            &format!("{binary} ({package})"),
            !packages.contains(&package),
        );
    }
    if !packages.is_empty() {
        install_packages(&packages)?;
    }
    let still = self::missing();
    if !still.is_empty() {
        bail!("setup finished but these are still missing: {still:?}");
    }
    eprintln!("setup: everything is in place");
    Ok(())
}

fn report(what: &str, present: bool) {
    eprintln!(
        "setup: {what}: {}",
        if present {
            "present"
        } else {
            "missing, installing"
        }
    );
}

fn install_packages(packages: &[&str]) -> Result<()> {
    if which("apt-get").is_none() {
        bail!(
            "apt-get not found; install these packages with your package manager: {}",
            packages.join(" ")
        );
    }
    if cmd::effective_uid()? != 0 {
        bail!(
            "installing {} needs root; rerun as root (sudo -E cargo xtask setup)",
            packages.join(" ")
        );
    }
    let apt = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        c.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(std::process::Stdio::null());
        c
    };
    cmd::run(&mut apt(&["update"])).context("apt-get update")?;
    let mut install = apt(&["install", "-y", "--no-install-recommends"]);
    install.args(packages);
    cmd::run(&mut install).context("apt-get install")
}

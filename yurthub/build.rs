//! Builds the redirect programs (`yurthub-ebpf`) for `bpfel-unknown-none`
//! into `OUT_DIR`, where `redirect::ebpf` embeds them with
//! `aya::include_bytes_aligned!`. There is no stub object: a daemon built
//! without its programs could start with no redirect at all.
//!
//! aya-build runs a nested `rustup run nightly cargo build -Z build-std=core`
//! linked by `bpf-linker`. Both are installed by `cargo xtask setup`; when one
//! is missing we stop with that instruction instead of a linker error.
use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, exit},
};

use aya_build::{Package, Toolchain};

const EBPF_PACKAGE: &str = "yurthub-ebpf";
const SETUP_HINT: &str =
    "run `cargo xtask setup` (installs the nightly toolchain, rust-src and bpf-linker 0.10.3)";

fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    if let Err(missing) = check_toolchain() {
        eprintln!("error: cannot build the eBPF programs: {missing}; {SETUP_HINT}");
        exit(1);
    }

    let manifest_dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root_dir = Path::new(&manifest_dir)
        .join("..")
        .join(EBPF_PACKAGE)
        .canonicalize()
        .expect("the yurthub-ebpf crate sits next to yurthub");
    let root_dir = root_dir.to_str().expect("workspace path is UTF-8");

    let package = Package {
        name: EBPF_PACKAGE,
        root_dir,
        ..Default::default()
    };
    if let Err(err) = aya_build::build_ebpf([package], Toolchain::Nightly) {
        eprintln!("error: building {EBPF_PACKAGE} failed: {err:#}");
        eprintln!("hint: if the toolchain is incomplete, {SETUP_HINT}");
        exit(1);
    }
}

/// Checks the pieces aya-build needs and names the first one missing.
fn check_toolchain() -> Result<(), String> {
    if find_in_path("bpf-linker").is_none() {
        return Err("`bpf-linker` is not on PATH".to_owned());
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .map_err(|e| format!("cannot run `rustup` ({e})"))?;
    if !sysroot.status.success() {
        return Err("the nightly toolchain is not installed".to_owned());
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let core_src = sysroot.join("lib/rustlib/src/rust/library/core");
    if !core_src.is_dir() {
        return Err("the nightly toolchain lacks the `rust-src` component".to_owned());
    }
    Ok(())
}

fn find_in_path(binary: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

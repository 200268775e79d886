//! `cargo xtask build-ebpf`: the same build as `cargo build -p yurthub`
//! (whose build.rs compiles the programs with aya-build), so the object you
//! inspect is the object the daemon embeds; then a copy of that object at
//! `<target>/ebpf/yurthub-ebpf.o` for `llvm-objdump`/`bpftool`.

use std::{fs, io::BufRead as _, path::PathBuf, process::Stdio};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, setup};

const OBJECT: &str = "yurthub-ebpf";

pub fn run() -> Result<()> {
    setup::ensure()?;
    let mut build = cmd::cargo();
    build
        .args([
            "build",
            "-p",
            "yurthub",
            "--message-format=json-render-diagnostics",
        ])
        .stdout(Stdio::piped());
    eprintln!("+ cargo build -p yurthub");
    let mut child = build.spawn().context("cannot run cargo build")?;
    let stdout = child.stdout.take().context("cargo stdout")?;
    let mut out_dir = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.context("read cargo output")?;
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let is_yurthub = message["package_id"]
            .as_str()
            .is_some_and(|id| id.contains("/yurthub#") || id.starts_with("yurthub "));
        if message["reason"] == "build-script-executed" && is_yurthub {
            out_dir = message["out_dir"].as_str().map(PathBuf::from);
        }
    }
    let status = child.wait().context("wait for cargo build")?;
    if !status.success() {
        bail!("cargo build -p yurthub failed ({status})");
    }
    let object = out_dir
        .context("cargo did not report yurthub's build script output")?
        .join(OBJECT);
    let target_dir = target_dir()?;
    let dest_dir = target_dir.join("ebpf");
    fs::create_dir_all(&dest_dir).with_context(|| format!("create {}", dest_dir.display()))?;
    let dest = dest_dir.join(format!("{OBJECT}.o"));
    fs::copy(&object, &dest)
        .with_context(|| format!("copy {} to {}", object.display(), dest.display()))?;
    eprintln!("eBPF object: {}", dest.display());
    Ok(())
}

/// Cargo's target directory (honours CARGO_TARGET_DIR and config).
pub fn target_dir() -> Result<PathBuf> {
    let metadata =
        cmd::output(cmd::cargo().args(["metadata", "--format-version", "1", "--no-deps"]))
            .context("cargo metadata failed")?;
    let metadata: serde_json::Value =
        serde_json::from_str(&metadata).context("parse cargo metadata")?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata has no target_directory")
}

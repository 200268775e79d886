//! Rebuild the programs when bpf-linker changes: cargo does not track the
//! linker binary, and an object linked by a different bpf-linker may differ
//! (BTF, relocations) even when no source changed.
use std::env;

fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    let found = env::var_os("PATH").and_then(|path| {
        env::split_paths(&path)
            .map(|dir| dir.join("bpf-linker"))
            .find(|candidate| candidate.is_file())
    });
    if let Some(linker) = found {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}

//! `cargo xtask bench proxy|redirect|cache|fanout|pool|all`: release builds of the
//! benchmark binaries in `tests/src/bin/`, run with their output shown as
//! is. Setup runs first when a tool is missing.
//!
//! - `proxy`: `bench-proxy` (the apiserver double directly vs through a
//!   `yurthub-under-test` process, on loopback);
//! - `redirect`: `bench-redirect` (eBPF connect redirect vs direct vs
//!   iptables DNAT in a sandbox; needs root);
//! - `cache`: `bench-cache` (the cache; hub processes are `yurthub-under-test`);
//! - `fanout`: `bench-fanout` (50 local watchers of endpointslices through

//! - `fleet`: `bench-fleet` (N hub processes against one double: idle cost,
//!   a burst, an outage and the return; `-- --hubs 50` for fewer; not in
//!   `all`: at 200 hubs it takes minutes).

//! - `pool`: `bench-pool` (1 leader hub and 20 followers sharing pool-scoped
//!   watches; upstream watches and bytes, delivery p99, failover).

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};

use crate::{build_ebpf, cmd, setup};

#[derive(clap::Args)]
pub struct Args {
    /// Which benchmark.
    #[arg(value_enum)]
    pub which: Which,
    /// Arguments for the benchmark binary (after `--`), e.g. `-- --seconds 10`.
    #[arg(last = true)]
    pub bench_args: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    Proxy,
    Redirect,
    Cache,
    Fanout,
    Fleet,
    Pool,
    All,
}

const PACKAGE: &str = "yurthub-e2e";

pub fn run(args: &Args) -> Result<()> {
    setup::ensure_bench()?;
    let all = [
        Which::Proxy,
        Which::Redirect,
        Which::Cache,
        Which::Fanout,
        Which::Pool,
    ];
    let selected: Vec<Which> = if args.which == Which::All {
        all.to_vec()
    } else {
        vec![args.which]
    };
    let mut failed = Vec::new();
    for which in &selected {
        eprintln!("=== bench {which:?} ===");
        let result = match which {
            Which::Proxy => build_and_run("bench-proxy", HUB_AND_FLOOR, &args.bench_args),
            Which::Redirect => redirect(&args.bench_args),
            Which::Cache => cache(&args.bench_args),
            Which::Fanout => build_and_run("bench-fanout", NO_HUB, &args.bench_args),
            Which::Fleet => build_and_run("bench-fleet", HUB, &args.bench_args),
            Which::Pool => build_and_run("bench-pool", HUB, &args.bench_args),
            Which::All => unreachable!("expanded above"),
        };
        if let Err(err) = result {
            if selected.len() == 1 {
                return Err(err);
            }
            eprintln!("bench {which:?} failed: {err:#}");
            failed.push(format!("{which:?}"));
        }
    }
    if !failed.is_empty() {
        bail!("benchmarks failed: {}", failed.join(", "));
    }
    Ok(())
}

fn redirect(bench_args: &[String]) -> Result<()> {
    let uid = cmd::effective_uid()?;
    if uid != 0 {
        bail!(
            "bench redirect loads eBPF programs and creates network namespaces: it needs root, \
             but the effective uid is {uid}. Run `sudo -E cargo xtask bench redirect`."
        );
    }
    build_and_run("bench-redirect", NO_HUB, bench_args)
}

/// The cache benchmark is another helper's binary; say so plainly while it
/// is not in the tree yet.
fn cache(bench_args: &[String]) -> Result<()> {
    let source = cmd::workspace_root().join("tests/src/bin/bench-cache.rs");
    if !source.exists() {
        bail!(
            "the cache benchmark binary does not exist yet ({} is missing); \
             it lands with the cache work",
            source.display()
        );
    }
    // The hub processes it measures are the release hub binary.
    build_and_run("bench-cache", HUB, bench_args)
}

/// What a benchmark runs besides itself, built with the `dist` profile:
/// the hub, and for the proxy bench the stack floor (a proxy of the hub's
/// crates doing nothing else, compared with the hub at the same profile).
const HUB: &[&str] = &["yurthub-under-test"];
const HUB_AND_FLOOR: &[&str] = &["yurthub-under-test", "stack-floor"];
const NO_HUB: &[&str] = &[];

/// `cargo build --release` of `bin`, then runs it from the release
/// directory. The binaries in `dist` (the hub, the stack floor) are built
/// with the `dist` profile (what the Containerfile ships), and the hub is
/// named to the bench by `YURTHUB_UNDER_TEST`: idle RSS and CPU are the
/// shipped binary's. The floor is found next to it.
fn build_and_run(bin: &str, dist: &[&str], bench_args: &[String]) -> Result<()> {
    cmd::run(cmd::cargo().args(["build", "--release", "-p", PACKAGE, "--bin", bin]))?;
    let mut run = std::process::Command::new(built_binary("release", bin)?);
    if let Some(under_test) = dist.first() {
        let mut build = cmd::cargo();
        build.args(["build", "--profile", "dist", "-p", PACKAGE]);
        for b in dist {
            build.args(["--bin", b]);
        }
        cmd::run(&mut build)?;
        for b in &dist[1..] {
            built_binary("dist", b)?;
        }
        let path = built_binary("dist", under_test)?;
        eprintln!("hub binary: {} (profile dist)", path.display());
        run.env("YURTHUB_UNDER_TEST", path);
    }
    cmd::run(run.args(bench_args)).with_context(|| format!("benchmark {bin}"))
}

fn built_binary(profile: &str, bin: &str) -> Result<PathBuf> {
    let path = build_ebpf::target_dir()?.join(profile).join(bin);
    if !path.exists() {
        bail!("{} was not built", path.display());
    }
    Ok(path)
}

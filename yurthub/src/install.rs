//! `yurthub install-static`: writes the static-pod manifest (the template in
//! `deploy/static/yurthub.yaml`) with this node's flags into kubelet's
//! staticPodPath, so kubelet starts the hub at boot without an apiserver.
//!
//! The flags are validated as the daemon validates them before anything is
//! written, and the file is replaced atomically through a hidden temporary
//! file (kubelet ignores dotfiles), so kubelet never reads half a manifest.
//! Running it again with a new `--image` is the upgrade.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::Parser as _;
use k8s_openapi::api::core::v1::Pod;

use crate::cli::{Cli, InstallStaticArgs};

/// The manifest template, as shipped under deploy/static/.
pub const TEMPLATE: &str = include_str!("../../deploy/static/yurthub.yaml");

/// The file written under `--manifests-dir`.
pub const MANIFEST_FILE: &str = "yurthub.yaml";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the built-in manifest template is not a Pod: {0}")]
    Template(#[from] serde_yaml::Error),
    #[error("the built-in manifest template has no container")]
    NoContainer,
    #[error("{0:?} is not a --flag or --flag=value")]
    NotAFlag(String),
    #[error("the hub would reject these flags: {0}")]
    Rejected(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    /// 64 for what the operator asked for, 1 for the rest (as the daemon).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::NotAFlag(_) | Error::Rejected(_) => 64,
            _ => 1,
        }
    }
}

/// The flag name of `--name=value` or `--name`.
fn flag_name(arg: &str) -> Option<&str> {
    let rest = arg.strip_prefix("--")?;
    let name = rest.split('=').next().unwrap_or(rest);
    (!name.is_empty()).then_some(name)
}

/// `args` with `--name` set to `arg` (replacing every earlier occurrence).
fn set_flag(args: &mut Vec<String>, arg: String) -> Result<(), Error> {
    let name = flag_name(&arg)
        .ok_or_else(|| Error::NotAFlag(arg.clone()))?
        .to_owned();
    args.retain(|a| flag_name(a) != Some(name.as_str()));
    args.push(arg);
    Ok(())
}

/// The container arguments the manifest gets: the template's, with this
/// node's values and the extra flags.
fn hub_args(template: &[String], a: &InstallStaticArgs) -> Result<Vec<String>, Error> {
    let mut args = template.to_vec();
    set_flag(&mut args, format!("--server-addr={}", a.server_addr))?;
    set_flag(&mut args, format!("--node-name={}", a.node_name))?;
    for extra in &a.hub_args {
        set_flag(&mut args, extra.clone())?;
    }
    // Exactly what the daemon will check at start, so a bad manifest is
    // refused here instead of crash-looping under kubelet.
    let mut argv = vec!["yurthub".to_owned()];
    argv.extend(args.iter().cloned());
    let cli = Cli::try_parse_from(&argv).map_err(|e| Error::Rejected(e.to_string()))?;
    if cli.command.is_some() {
        return Err(Error::Rejected("a subcommand is not a hub flag".into()));
    }
    crate::config::Config::from_args(&cli.run).map_err(|e| Error::Rejected(e.to_string()))?;
    Ok(args)
}

/// The manifest for this node, as YAML.
pub fn render(a: &InstallStaticArgs) -> Result<String, Error> {
    let mut pod: Pod = serde_yaml::from_str(TEMPLATE)?;
    let spec = pod.spec.as_mut().ok_or(Error::NoContainer)?;
    let c = spec.containers.first_mut().ok_or(Error::NoContainer)?;
    c.args = Some(hub_args(c.args.as_deref().unwrap_or_default(), a)?);
    if let Some(image) = &a.image {
        c.image = Some(image.clone());
    }
    let mut out = format!(
        "# Written by `yurthub install-static` ({}); template: deploy/static/yurthub.yaml.\n",
        crate::VERSION
    );
    out.push_str(&serde_yaml::to_string(&pod)?);
    Ok(out)
}

/// Writes `contents` to `dir/name` atomically: a hidden temporary file in
/// the same directory, synced, then renamed over the old one.
fn write_atomically(dir: &Path, name: &str, contents: &str) -> Result<PathBuf, Error> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let target = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(contents.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &target).map_err(io(&target))?;
    // The rename itself is durable once the directory is synced.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(target)
}

/// Renders and writes (or, with `--dry-run`, prints) the manifest; returns
/// where it went.
pub fn install(a: &InstallStaticArgs) -> Result<Option<PathBuf>, Error> {
    let manifest = render(a)?;
    if a.dry_run {
        print!("{manifest}");
        return Ok(None);
    }
    write_atomically(&a.manifests_dir, MANIFEST_FILE, &manifest).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> InstallStaticArgs {
        InstallStaticArgs {
            node_name: "edge-1".into(),
            server_addr: "https://10.0.0.1:6443".into(),
            manifests_dir: PathBuf::from("/nonexistent"),
            image: Some("registry.example/yurthub:9".into()),
            dry_run: true,
            hub_args: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_manifest_carries_this_nodes_flags() {
        let yaml = render(&args(&[
            "--redirect-cgroup=/host/sys/fs/cgroup/unified",
            "--v=4",
        ]))
        .unwrap();
        let pod: Pod = serde_yaml::from_str(&yaml).unwrap();
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let a = c.args.clone().unwrap();
        let count = |name: &str| a.iter().filter(|x| flag_name(x) == Some(name)).count();
        assert!(a.contains(&"--node-name=edge-1".to_owned()));
        assert!(a.contains(&"--server-addr=https://10.0.0.1:6443".to_owned()));
        assert!(a.contains(&"--redirect-cgroup=/host/sys/fs/cgroup/unified".to_owned()));
        assert!(a.contains(&"--keep-redirect-on-exit=true".to_owned()));
        for f in ["node-name", "server-addr", "redirect-cgroup", "v"] {
            assert_eq!(count(f), 1, "--{f} once: {a:?}");
        }
        assert_eq!(c.image.as_deref(), Some("registry.example/yurthub:9"));
    }

    #[test]
    fn flags_the_hub_rejects_are_refused() {
        let mut a = args(&[]);
        a.server_addr = "http://10.0.0.1:6443".into();
        assert!(matches!(render(&a), Err(Error::Rejected(_))));
        assert!(matches!(
            render(&args(&["--no-such-flag=1"])),
            Err(Error::Rejected(_))
        ));
        assert!(matches!(render(&args(&["v=4"])), Err(Error::NotAFlag(_))));
    }

    #[test]
    fn the_file_is_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(&[]);
        a.dry_run = false;
        a.manifests_dir = dir.path().join("manifests");
        let path = install(&a).unwrap().unwrap();
        assert_eq!(path, a.manifests_dir.join(MANIFEST_FILE));
        a.image = Some("registry.example/yurthub:10".into());
        install(&a).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("yurthub:10"));
        let names: Vec<_> = std::fs::read_dir(&a.manifests_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(MANIFEST_FILE)]);
    }
}

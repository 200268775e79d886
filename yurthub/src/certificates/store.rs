//! The hub's certificate files under `--root-dir` (upstream's layout, so
//! operators find what they know):
//!
//! - `pki/ca.crt`: the cluster CA;
//! - `pki/yurthub-current.pem`: client certificate chain and key;
//! - `pki/yurthub-server-current.pem`: serving certificate chain and key;
//! - `bootstrap-hub.conf`: the bootstrap (token) kubeconfig;
//! - `yurthub.conf`: a kubeconfig for the hub's identity (server, CA, cert),
//!   which also records which cluster the identity belongs to.
//!
//! Every write is atomic (temporary file, fsync, rename, fsync of the
//! directory) with mode 0600, so a crash never leaves a torn key or a
//! certificate paired with the wrong key.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("moving {from} aside to {to}: {source}")]
    MoveAside {
        from: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
}

/// Which identity a PEM file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Client,
    Serving,
}

/// Paths under the root directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn new(root: PathBuf) -> Store {
        Store { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn pki_dir(&self) -> PathBuf {
        self.root.join("pki")
    }

    pub fn ca_file(&self) -> PathBuf {
        self.pki_dir().join("ca.crt")
    }

    pub fn pem_file(&self, kind: Kind) -> PathBuf {
        self.pki_dir().join(match kind {
            Kind::Client => "yurthub-current.pem",
            Kind::Serving => "yurthub-server-current.pem",
        })
    }

    pub fn bootstrap_kubeconfig(&self) -> PathBuf {
        self.root.join("bootstrap-hub.conf")
    }

    pub fn hub_kubeconfig(&self) -> PathBuf {
        self.root.join("yurthub.conf")
    }

    /// The stored CA PEM, if any.
    pub fn read_ca(&self) -> Option<String> {
        fs::read_to_string(self.ca_file())
            .ok()
            .filter(|s| !s.trim().is_empty())
    }

    pub fn write_ca(&self, pem: &str) -> Result<(), Error> {
        write_atomic(&self.ca_file(), pem.as_bytes())
    }

    /// The stored chain and key of an identity (one PEM file, as upstream).
    pub fn read_identity(&self, kind: Kind) -> Option<(String, String)> {
        let text = fs::read_to_string(self.pem_file(kind)).ok()?;
        split_pem(&text)
    }

    pub fn write_identity(&self, kind: Kind, chain_pem: &str, key_pem: &str) -> Result<(), Error> {
        let mut text = chain_pem.trim_end().to_owned();
        text.push('\n');
        text.push_str(key_pem);
        write_atomic(&self.pem_file(kind), text.as_bytes())
    }

    /// Records the identity's cluster: a kubeconfig pointing at the first
    /// server, the CA and the client PEM (usable with kubectl for debugging).
    pub fn write_hub_kubeconfig(&self, server: &str) -> Result<(), Error> {
        let pem = self.pem_file(Kind::Client);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: cluster\n  cluster:\n    server: {server}\n    certificate-authority: {}\ncontexts:\n- name: hub\n  context:\n    cluster: cluster\n    user: hub\ncurrent-context: hub\nusers:\n- name: hub\n  user:\n    client-certificate: {}\n    client-key: {}\n",
            self.ca_file().display(),
            pem.display(),
            pem.display(),
        );
        write_atomic(&self.hub_kubeconfig(), text.as_bytes())
    }

    /// Moves the identity (pki/, yurthub.conf) and `extra` paths (the cache
    /// of the other cluster) into `<root>/stale-<stamp>/`, never deleting.
    /// Returns where they went.
    pub fn move_aside(&self, extra: &[PathBuf]) -> Result<PathBuf, Error> {
        let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let dest = self.root.join(format!("stale-{stamp}"));
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dest)
            .map_err(|source| Error::Write {
                path: dest.clone(),
                source,
            })?;
        let mut paths = vec![self.pki_dir(), self.hub_kubeconfig()];
        paths.extend(extra.iter().cloned());
        for (i, from) in paths.iter().enumerate() {
            if !from.exists() {
                continue;
            }
            let name = from
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("item-{i}"));
            let to = dest.join(name);
            // A cache on another filesystem cannot be renamed into root-dir:
            // rename it next to itself; a mount point cannot be renamed at
            // all: move its contents into a stale-<stamp> directory inside it.
            let res = fs::rename(from, &to)
                .or_else(|_| {
                    let beside = from.with_file_name(format!(
                        "{}.stale-{stamp}",
                        from.file_name().unwrap_or_default().to_string_lossy()
                    ));
                    fs::rename(from, &beside)
                })
                .or_else(|e| {
                    if from.is_dir() {
                        move_contents(from, &format!("stale-{stamp}"))
                    } else {
                        Err(e)
                    }
                });
            res.map_err(|source| Error::MoveAside {
                from: from.clone(),
                to: to.clone(),
                source,
            })?;
        }
        Ok(dest)
    }
}

/// Moves every entry of `dir` into `dir/<sub>/`.
fn move_contents(dir: &Path, sub: &str) -> std::io::Result<()> {
    let inner = dir.join(sub);
    fs::DirBuilder::new().mode(0o700).create(&inner)?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() == sub {
            continue;
        }
        fs::rename(entry.path(), inner.join(entry.file_name()))?;
    }
    Ok(())
}

/// Splits a PEM file into (certificate blocks, private key block).
pub fn split_pem(text: &str) -> Option<(String, String)> {
    let mut certs = String::new();
    let mut key = String::new();
    let mut current: Option<&mut String> = None;
    for line in text.lines() {
        if line.starts_with("-----BEGIN ") {
            current = Some(if line.contains("PRIVATE KEY") {
                &mut key
            } else {
                &mut certs
            });
        }
        if let Some(buf) = current.as_deref_mut() {
            buf.push_str(line);
            buf.push('\n');
        }
        if line.starts_with("-----END ") {
            current = None;
        }
    }
    (!certs.is_empty() && !key.is_empty()).then_some((certs, key))
}

/// Writes `bytes` to `path` atomically with mode 0600 (parent created 0700).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let err = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(err)?;
    drop(f);
    fs::rename(&tmp, path).map_err(err)?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn identity_round_trips_with_0600() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path().join("root"));
        let chain = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n";
        let key = "-----BEGIN PRIVATE KEY-----\nBBB\n-----END PRIVATE KEY-----\n";
        s.write_identity(Kind::Client, chain, key).unwrap();
        assert_eq!(
            s.read_identity(Kind::Client),
            Some((chain.into(), key.into()))
        );
        let mode = fs::metadata(s.pem_file(Kind::Client))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(s.read_identity(Kind::Serving).is_none());
        let leftovers: Vec<_> = fs::read_dir(s.pki_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn move_aside_keeps_everything() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path().join("root"));
        s.write_ca("CA").unwrap();
        s.write_hub_kubeconfig("https://a:6443").unwrap();
        let cache = d.path().join("root").join("cache");
        fs::create_dir_all(&cache).unwrap();
        fs::write(cache.join("x"), "y").unwrap();
        let dest = s.move_aside(std::slice::from_ref(&cache)).unwrap();
        assert!(!s.ca_file().exists() && !cache.exists());
        assert_eq!(fs::read_to_string(dest.join("pki/ca.crt")).unwrap(), "CA");
        assert_eq!(fs::read_to_string(dest.join("cache/x")).unwrap(), "y");
        assert!(dest.join("yurthub.conf").exists());
    }

    #[test]
    fn contents_move_when_the_directory_itself_cannot() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a"), "1").unwrap();
        fs::create_dir(d.path().join("b")).unwrap();
        move_contents(d.path(), "stale-1").unwrap();
        let left: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["stale-1"]);
        assert_eq!(fs::read_to_string(d.path().join("stale-1/a")).unwrap(), "1");
        assert!(d.path().join("stale-1/b").is_dir());
    }
}

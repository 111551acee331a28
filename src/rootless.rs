//! The control plane's non-root components (docs/security.md, "Non-root components"): etcd runs
//! as the account `etcd` and owns its data directory; kube-apiserver runs as `kube-apiserver`.
//! The files they read stay root:root (CIS 1.1.19) and let them in through a POSIX ACL entry,
//! which the host writer sets on every write of those paths (`Access`).

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::node::{Access, HostWriter, Layout};

pub const ETCD_USER: &str = "etcd";
pub const APISERVER_USER: &str = "kube-apiserver";

/// What kube-apiserver's account needs on a file it reads (an encryption configuration).
pub fn apiserver_reads() -> Access {
    reads(APISERVER_USER)
}

/// Private keys, and the service-account public key kubeadm also writes 0600.
const KEY_MODE: u32 = 0o600;
/// Directories a component owns: etcd's data (CIS 1.1.11), the audit log's.
const OWNED_DIR_MODE: u32 = 0o700;

/// What kube-apiserver's account needs on a directory it writes (the audit log's).
pub fn apiserver_owns() -> Access {
    Access {
        mode: OWNED_DIR_MODE,
        owner: Some(APISERVER_USER.into()),
        readers: Vec::new(),
    }
}

/// What etcd's account gets on its data directory: it owns it (CIS 1.1.12).
pub fn etcd_owns() -> Access {
    Access {
        mode: OWNED_DIR_MODE,
        owner: Some(ETCD_USER.into()),
        readers: Vec::new(),
    }
}

fn reads(name: &str) -> Access {
    Access {
        mode: KEY_MODE,
        owner: None,
        readers: vec![name.into()],
    }
}

/// Every path of `layout` a non-root component owns or reads, with what it gets.
pub fn grants(cfg: &Config, layout: &Layout) -> Vec<(PathBuf, Access)> {
    let pki = &layout.pki_dir;
    let mut out = vec![];
    match &cfg.cluster.etcd.external {
        None => {
            out.push((layout.etcd_data_dir.clone(), etcd_owns()));
            for key in ["etcd/server.key", "etcd/peer.key"] {
                out.push((pki.join(key), reads(ETCD_USER)));
            }
            out.push((pki.join("apiserver-etcd-client.key"), apiserver_reads()));
        }
        Some(external) => out.push((PathBuf::from(&external.key_file), apiserver_reads())),
    }
    for key in [
        "apiserver.key",
        "apiserver-kubelet-client.key",
        "front-proxy-client.key",
        "sa.key",
        // Written 0600 like kubeadm's: the API server verifies tokens with it.
        "sa.pub",
    ] {
        out.push((pki.join(key), apiserver_reads()));
    }
    out.push((layout.audit_policy_file(), apiserver_reads()));
    out.push((layout.audit_log_dir.clone(), apiserver_owns()));
    // `encryption rotate` and `certs renew` read no Security document: the file itself tells.
    let encryption_config = crate::encryption::path(pki);
    if cfg.security.encryption_at_rest || encryption_config.exists() {
        out.push((encryption_config, apiserver_reads()));
    }
    out
}

/// Registers `grants` with the run's writer when `hardened` (the Security profile, or what the
/// node's manifests run as for a command without one).
pub fn grant_all(writer: &mut HostWriter, cfg: &Config, layout: &Layout, hardened: bool) {
    if hardened {
        for (path, access) in grants(cfg, layout) {
            writer.grant(&path, access);
        }
    }
}

/// Whether this node's etcd or kube-apiserver manifest runs its pod as non-root: what `certs
/// renew` (which reads no Security document) keeps.
pub fn node_runs_non_root(layout: &Layout) -> bool {
    ["etcd.yaml", "kube-apiserver.yaml"].iter().any(|file| {
        let path: &Path = &layout.manifests_dir.join(file);
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| serde_yaml::from_str::<k8s_openapi::api::core::v1::Pod>(&text).ok())
            .and_then(|pod| pod.spec?.security_context?.run_as_non_root)
            .unwrap_or(false)
    })
}

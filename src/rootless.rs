//! The control plane's non-root components (docs/security.md, "Non-root components"): etcd runs
//! as the account `etcd` and owns its data directory; kube-apiserver runs as `kube-apiserver`;
//! kube-controller-manager and kube-scheduler as theirs, through `kubeforge exec-as`
//! (`launcher`), which hands them their 0600 root:root kubeconfigs. The files they read stay
//! root:root (CIS 1.1.19) and let them in through a POSIX ACL entry, which the host writer sets
//! on every write of those paths (`Access`).

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::node::{Access, HostWriter, Layout};

pub use crate::node::accounts::{
    APISERVER_USER, CONTROLLER_MANAGER_USER, ETCD_USER, SCHEDULER_USER,
};

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
    readers(&[name])
}

fn readers(names: &[&str]) -> Access {
    Access {
        mode: KEY_MODE,
        owner: None,
        readers: names.iter().map(|n| n.to_string()).collect(),
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
        // Written 0600 like kubeadm's: the API server verifies tokens with it.
        "sa.pub",
    ] {
        out.push((pki.join(key), apiserver_reads()));
    }
    // kube-controller-manager signs tokens with sa.key and certificates with ca.key, which it
    // reloads when the file changes: both stay on disk for it, not copied by `exec-as`.
    let signers = [APISERVER_USER, CONTROLLER_MANAGER_USER];
    out.push((pki.join("sa.key"), readers(&signers)));
    out.push((pki.join("ca.key"), reads(CONTROLLER_MANAGER_USER)));
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

/// Whether one of this node's control-plane manifests runs its component as non-root (its pod
/// `runAsNonRoot`, or its command through `kubeforge exec-as`): what `certs renew` (which reads
/// no Security document) keeps.
pub fn node_runs_non_root(layout: &Layout) -> bool {
    [
        "etcd.yaml",
        "kube-apiserver.yaml",
        "kube-controller-manager.yaml",
        "kube-scheduler.yaml",
    ]
    .iter()
    .filter_map(|file| {
        let path: &Path = &layout.manifests_dir.join(file);
        let text = std::fs::read_to_string(path).ok()?;
        serde_yaml::from_str::<k8s_openapi::api::core::v1::Pod>(&text).ok()
    })
    .any(|pod| {
        let Some(spec) = pod.spec else { return false };
        let launched = spec
            .containers
            .first()
            .and_then(|c| c.command.as_ref())
            .is_some_and(|command| {
                command.get(1).map(String::as_str) == Some(crate::launcher::SUBCOMMAND)
            });
        launched || spec.security_context.and_then(|s| s.run_as_non_root) == Some(true)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout_with_scheduler(command: &[&str]) -> (tempfile::TempDir, Layout) {
        let dir = tempfile::tempdir().unwrap();
        let k8s = dir.path().join("etc/kubernetes");
        let layout = Layout::new(
            &k8s,
            &dir.path().join("kubelet"),
            &k8s.join("pki"),
            &dir.path().join("etcd"),
        );
        std::fs::create_dir_all(&layout.manifests_dir).unwrap();
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "kube-scheduler"},
            "spec": {"containers": [{"name": "kube-scheduler", "command": command}]},
        });
        let text = serde_yaml::to_string(&pod).unwrap();
        std::fs::write(layout.manifests_dir.join("kube-scheduler.yaml"), text).unwrap();
        (dir, layout)
    }

    #[test]
    fn a_component_started_through_exec_as_counts_as_non_root() {
        let launched = [
            "/usr/local/bin/kubeforge",
            "exec-as",
            "--uid=997",
            "--",
            "kube-scheduler",
        ];
        let (_dir, layout) = layout_with_scheduler(&launched);
        assert!(node_runs_non_root(&layout));
        let (_dir, layout) = layout_with_scheduler(&["kube-scheduler", "--v=2"]);
        assert!(!node_runs_non_root(&layout));
    }
}

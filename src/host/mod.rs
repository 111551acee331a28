//! The node's paths (one `Layout`) and the one writer every host file goes through.

mod writer;

pub use writer::{journal_entries, HostWriter, Outcome};

use std::path::{Path, PathBuf};

/// Every host path kubeforge touches derives from this struct.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `/etc/kubernetes` (`--kubernetes-dir`): kubeconfigs live here.
    pub kubernetes_dir: PathBuf,
    /// `<kubernetes_dir>/manifests`: the kubelet's staticPodPath.
    pub manifests_dir: PathBuf,
    /// `certificatesDir` from the config (default `<kubernetes_dir>/pki`).
    pub pki_dir: PathBuf,
    /// `/var/lib/kubelet` (`--kubelet-dir`).
    pub kubelet_dir: PathBuf,
    /// `etcd.local.dataDir`.
    pub etcd_data_dir: PathBuf,
    /// `<kubernetes_dir>/tmp`: backups of replaced files.
    pub backup_dir: PathBuf,
}

impl Layout {
    pub fn new(
        kubernetes_dir: &Path,
        kubelet_dir: &Path,
        pki_dir: &Path,
        etcd_data_dir: &Path,
    ) -> Self {
        Layout {
            kubernetes_dir: kubernetes_dir.to_path_buf(),
            manifests_dir: kubernetes_dir.join("manifests"),
            pki_dir: pki_dir.to_path_buf(),
            kubelet_dir: kubelet_dir.to_path_buf(),
            etcd_data_dir: etcd_data_dir.to_path_buf(),
            backup_dir: kubernetes_dir.join("tmp"),
        }
    }

    /// The host writer's journal of every path it created.
    pub fn journal(&self) -> PathBuf {
        self.backup_dir.join("kubeforge-journal")
    }

    pub fn kubeconfig(&self, file: &str) -> PathBuf {
        self.kubernetes_dir.join(file)
    }

    /// `<pki>/<base>.crt` and `<pki>/<base>.key`.
    pub fn cert_and_key(&self, base: &str) -> (PathBuf, PathBuf) {
        (
            self.pki_dir.join(format!("{base}.crt")),
            self.pki_dir.join(format!("{base}.key")),
        )
    }
}

//! The node: its paths (one `Layout`), its hostname, and the one writer every host file goes
//! through (and every removal).

pub mod accounts;
pub mod acl;
mod lock;
mod writer;

pub use writer::{journal_entries, replace_file, Access, HostWriter, Outcome};

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
    /// `<kubernetes_dir>/audit`: the API server's audit policy (hardened profile).
    pub audit_policy_dir: PathBuf,
    /// `/var/log/kubernetes/audit` under the root the kubernetes dir sits in (`<root>/etc/kubernetes`,
    /// else `/`): the API server's audit log (hardened profile).
    pub audit_log_dir: PathBuf,
}

impl Layout {
    /// The API server's audit policy (hardened profile).
    pub fn audit_policy_file(&self) -> PathBuf {
        self.audit_policy_dir.join("policy.yaml")
    }

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
            audit_policy_dir: kubernetes_dir.join("audit"),
            audit_log_dir: host_root(kubernetes_dir).join("var/log/kubernetes/audit"),
        }
    }

    /// The directory the node's `etc/kubernetes` sits in (`/` on a real node): the root of the
    /// host paths kubeforge does not lay out itself (systemd's units).
    pub fn host_root(&self) -> &Path {
        host_root(&self.kubernetes_dir)
    }

    /// The host writer's journal of every path it created.
    pub fn journal(&self) -> PathBuf {
        self.backup_dir.join("kubeforge-journal")
    }

    /// The system accounts kubeforge made on this node, one name a line, for `reset`.
    pub fn accounts_record(&self) -> PathBuf {
        self.backup_dir.join("kubeforge-accounts")
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

/// The directory a node's `etc/kubernetes` sits in: `/` on a real node, the test's root for a node
/// laid out under a temporary directory; `/` for a kubernetes dir named otherwise.
fn host_root(kubernetes_dir: &Path) -> &Path {
    if kubernetes_dir.ends_with("etc/kubernetes") {
        kubernetes_dir.ancestors().nth(2).unwrap_or(Path::new("/"))
    } else {
        Path::new("/")
    }
}

/// The node's hostname as the kernel has it (kubeadm's default node name, lower-cased by the
/// callers that need a node name).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
        })
        .unwrap_or_else(|| "localhost".into())
}

/// A file as kubeforge writes it: where, what, and its mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub path: PathBuf,
    pub contents: Vec<u8>,
    pub mode: u32,
}

impl File {
    pub fn new(path: PathBuf, contents: impl AsRef<[u8]>, mode: u32) -> File {
        File {
            path,
            contents: contents.as_ref().to_vec(),
            mode,
        }
    }
}

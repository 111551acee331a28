//! Starting and restarting the kubelet: through systemd when systemd runs the node (kubeadm's
//! drop-in installed only when absent), otherwise left to whoever supervises it, with a note; and
//! in profile hardened the kubelet's unit files restricted to root (CIS 4.1.1, 4.1.2).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::json;

use crate::node::{HostWriter, Layout, Outcome};
use crate::output::Output;

/// kubeadm's drop-in (it ships with the kubeadm package; installed here only when absent).
pub const DROP_IN: &str = "[Service]
Environment=\"KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf\"
Environment=\"KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml\"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
";
const DROP_IN_PATHS: [&str; 2] = [
    "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf",
    "/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf",
];

/// The kubelet's unit files under the node's root: kube-bench's `kubeletsvc` list (CIS 4.1.1 and
/// 4.1.2 stat the first that exists) and where pkgs.k8s.io's kubelet package puts its unit.
const UNIT_FILES: [&str; 8] = [
    "etc/systemd/system/kubelet.service.d/10-kubeadm.conf",
    "etc/systemd/system/kubelet.service",
    "lib/systemd/system/kubelet.service",
    "etc/systemd/system/snap.kubelet.daemon.service",
    "etc/systemd/system/snap.microk8s.daemon-kubelet.service",
    "etc/systemd/system/atomic-openshift-node.service",
    "etc/systemd/system/origin-node.service",
    "usr/lib/systemd/system/kubelet.service",
];
/// The directories whose `*.conf` files are drop-ins of kubelet.service.
const UNIT_DROP_IN_DIRS: [&str; 3] = [
    "etc/systemd/system/kubelet.service.d",
    "usr/lib/systemd/system/kubelet.service.d",
    "lib/systemd/system/kubelet.service.d",
];

/// The kubelet's unit files and drop-ins on the node under `root` (`/` on a real node), each
/// once by its canonical path (/lib is /usr/lib on a merged-/usr system). Only regular files: a
/// symlink (a masked unit links to /dev/null) is not the kubelet's unit to change.
pub fn unit_files(root: &Path) -> Vec<PathBuf> {
    let mut candidates: Vec<PathBuf> = UNIT_FILES.iter().map(|p| root.join(p)).collect();
    for dir in UNIT_DROP_IN_DIRS {
        let entries = std::fs::read_dir(root.join(dir)).into_iter().flatten();
        let confs = entries.flatten().map(|e| e.path());
        candidates.extend(confs.filter(|p| p.extension().is_some_and(|e| e == "conf")));
    }
    let mut found = BTreeSet::new();
    for path in candidates {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            continue;
        };
        let Ok(dir) = dir.canonicalize() else {
            continue;
        };
        let real = dir.join(name);
        if std::fs::symlink_metadata(&real).is_ok_and(|m| m.file_type().is_file()) {
            found.insert(real);
        }
    }
    found.into_iter().collect()
}

/// The mode CIS 4.1.1 asks of a unit file of `mode`: 0600 or stricter. Bits are only taken away:
/// root (and so systemd) reads it whatever its mode.
pub fn restricted_mode(mode: u32) -> u32 {
    mode & 0o600
}

/// Profile hardened (CIS 4.1.1, 4.1.2): every kubelet unit file and drop-in on the node owned by
/// root:root with no permission beyond 0600, whether or not systemd runs this kubelet; each one
/// changed is named. A file that cannot be changed (a read-only /usr) is a warning: the kubelet
/// runs the same.
pub fn restrict_unit_files(writer: &mut HostWriter, out: &Output, root: &Path) -> Result<()> {
    for path in unit_files(root) {
        let was = std::fs::symlink_metadata(&path)?.permissions().mode() & 0o7777;
        let mode = restricted_mode(was);
        let shown = path.display().to_string();
        let verb = match writer.restrict(&path, mode) {
            Ok(Outcome::Unchanged) => continue,
            Ok(Outcome::WouldWrite) => "Would restrict",
            Ok(_) => "Restricted",
            Err(e) => {
                out.step(
                    "kubelet-start",
                    &format!("WARNING: the kubelet unit file {shown:?} keeps its mode and owner (CIS 4.1.1, 4.1.2 fail): {e:#}"),
                    json!({ "path": path, "warning": format!("{e:#}") }),
                );
                continue;
            }
        };
        out.step(
            "kubelet-start",
            &format!("{verb} the kubelet unit file {shown:?} to root:root, mode {mode:04o} (was {was:04o}; CIS 4.1.1, 4.1.2)"),
            json!({ "path": path, "mode": format!("{mode:04o}"), "previousMode": format!("{was:04o}"), "dryRun": writer.changes_nothing() }),
        );
    }
    Ok(())
}

/// Whether systemd runs this node's kubelet. kubeadm's unit reads /var/lib/kubelet: a node laid
/// out elsewhere (`--kubelet-dir`) is run by its own supervisor, and kubeforge leaves systemd
/// alone.
fn systemd_runs_it(layout: &Layout) -> bool {
    Path::new("/run/systemd/system").is_dir() && layout.kubelet_dir == Path::new("/var/lib/kubelet")
}

fn systemctl(args: &[&str]) -> bool {
    std::process::Command::new("systemctl")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

/// `kubelet-start`'s last step: the kubelet (re)started when its files `changed` or it is not
/// running. A drop-in kubeforge installs gets `mode` (the kubelet's files' mode: CIS 4.1.1).
pub fn start(
    writer: &mut HostWriter,
    out: &Output,
    layout: &Layout,
    changed: bool,
    mode: u32,
) -> Result<()> {
    if !systemd_runs_it(layout) {
        out.step(
            "kubelet-start",
            "The kubelet is not managed by systemd here: start it with your supervisor (kubeforge waits for it)",
            json!({ "systemd": false }),
        );
        return Ok(());
    }
    let mut changed = changed;
    if !DROP_IN_PATHS.iter().any(|p| Path::new(p).exists()) {
        writer.write(Path::new(DROP_IN_PATHS[0]), DROP_IN.as_bytes(), mode)?;
        changed = true;
    }
    if !changed && systemctl(&["is-active", "--quiet", "kubelet"]) {
        out.step(
            "kubelet-start",
            "The kubelet is running with these settings already",
            json!({ "restarted": false }),
        );
        return Ok(());
    }
    out.step(
        "kubelet-start",
        "Starting the kubelet",
        json!({ "systemd": true }),
    );
    for args in [
        &["daemon-reload"][..],
        &["enable", "kubelet"],
        &["restart", "kubelet"],
    ] {
        if !systemctl(args) {
            out.step(
                "kubelet-start",
                &format!(
                    "WARNING: `systemctl {}` failed; start the kubelet yourself",
                    args.join(" ")
                ),
                json!({ "warning": "systemctl failed" }),
            );
            break;
        }
    }
    Ok(())
}

/// Restarts the kubelet so it reads a changed kubelet.conf; a kubelet run by anything else is
/// left to that supervisor, with a note.
pub fn restart(out: &Output, layout: &Layout, phase: &str) {
    if !systemd_runs_it(layout) {
        out.step(
            phase,
            "The kubelet is not managed by systemd here: restart it with your supervisor to read the new kubelet.conf",
            json!({ "systemd": false }),
        );
    } else if !systemctl(&["restart", "kubelet"]) {
        out.step(
            phase,
            "WARNING: `systemctl restart kubelet` failed; restart the kubelet yourself",
            json!({ "warning": "systemctl failed" }),
        );
    }
}

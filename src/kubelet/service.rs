//! Starting and restarting the kubelet: through systemd when systemd runs the node (kubeadm's
//! drop-in installed only when absent), otherwise left to whoever supervises it, with a note.

use std::path::Path;

use anyhow::Result;
use serde_json::json;

use crate::node::{HostWriter, Layout};
use crate::output::Output;

/// kubeadm's drop-in (it ships with the kubeadm package; installed here only when absent).
const DROP_IN: &str = "[Service]
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

//! `kubelet-start`: the kubelet's files, then (re)start it — through systemd when systemd runs
//! the node, otherwise by whoever supervises the kubelet (kubeforge says so and waits for it).

use anyhow::Result;
use serde_json::json;

use super::{Context, Phase, Selection};
use crate::host::Outcome;
use crate::kubelet;

pub const PHASE: Phase = Phase {
    name: "kubelet-start",
    description: "Write kubelet settings and (re)start the kubelet",
    subphases: Vec::new,
    run,
};

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

fn run(ctx: &mut Context, _sel: &Selection) -> Result<()> {
    let dir = ctx.layout.kubelet_dir.clone();
    ctx.writer.ensure_dir(&dir, 0o700)?;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut changed = false;
    let mut files = vec![(
        "kubeadm-flags.env",
        kubelet::flags_env(&ctx.cfg, hostname.trim()),
        "environment file with flags",
    )];
    if let Some(instance) = kubelet::instance_config(&ctx.cfg) {
        files.push(("instance-config.yaml", instance, "configuration"));
    }
    files.push((
        "config.yaml",
        kubelet::config_yaml(&ctx.cfg, &ctx.layout)?,
        "configuration",
    ));
    for (name, content, what) in files {
        let path = dir.join(name);
        ctx.out.step(
            "kubelet-start",
            &format!(
                "Writing kubelet {what} to file {:?}",
                path.display().to_string()
            ),
            json!({ "path": path }),
        );
        changed |= !matches!(
            ctx.write("kubelet-start", &path, content.as_bytes(), 0o644)?,
            Outcome::Unchanged
        );
    }
    if ctx.writer.dry_run_dir().is_some() {
        ctx.out.step(
            "kubelet-start",
            "Would (re)start the kubelet",
            json!({ "dryRun": true }),
        );
        return Ok(());
    }
    // kubeadm's systemd unit reads /var/lib/kubelet: a node laid out elsewhere (--kubelet-dir)
    // is run by its own supervisor, and kubeforge leaves systemd alone.
    let systemd = std::path::Path::new("/run/systemd/system").is_dir();
    if !systemd || dir != std::path::Path::new("/var/lib/kubelet") {
        ctx.out.step(
            "kubelet-start",
            "The kubelet is not managed by systemd here: start it with your supervisor (kubeforge waits for it)",
            json!({ "systemd": false }),
        );
        return Ok(());
    }
    if !DROP_IN_PATHS
        .iter()
        .any(|p| std::path::Path::new(p).exists())
    {
        ctx.write(
            "kubelet-start",
            std::path::Path::new(DROP_IN_PATHS[0]),
            DROP_IN.as_bytes(),
            0o644,
        )?;
        changed = true;
    }
    let active = systemctl(&["is-active", "--quiet", "kubelet"]);
    if changed || !active {
        ctx.out.step(
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
                ctx.out.step(
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
    } else {
        ctx.out.step(
            "kubelet-start",
            "The kubelet is running with these settings already",
            json!({ "restarted": false }),
        );
    }
    Ok(())
}

fn systemctl(args: &[&str]) -> bool {
    std::process::Command::new("systemctl")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

/// Restarts a systemd-run kubelet so it reads a changed kubelet.conf; a kubelet run by anything
/// else is left to that supervisor, with a note.
pub fn restart_kubelet(ctx: &Context, phase: &str) -> Result<()> {
    let systemd = std::path::Path::new("/run/systemd/system").is_dir();
    if systemd && ctx.layout.kubelet_dir == std::path::Path::new("/var/lib/kubelet") {
        if !systemctl(&["restart", "kubelet"]) {
            ctx.out.step(
                phase,
                "WARNING: `systemctl restart kubelet` failed; restart the kubelet yourself",
                json!({ "warning": "systemctl failed" }),
            );
        }
    } else {
        ctx.out.step(
            phase,
            "The kubelet is not managed by systemd here: restart it with your supervisor to read the new kubelet.conf",
            json!({ "systemd": false }),
        );
    }
    Ok(())
}

//! etcd's part of an upgrade: its health and quorum, the snapshot taken through its API before it
//! changes, the API server on this node stopped while etcd is swapped, and — when the old etcd
//! cannot start on its own data again — the data restored from the snapshot by the old image's own
//! tool.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde_json::json;

use super::control_plane::{start_pod, stop_pod, wait_up};
use super::UpgradeData;
use crate::etcd::snapshot::{self, Health};
use crate::manifests::{self, first_container, flag, Component, MANIFEST_MODE};
use crate::node::File;
use crate::upgrade::policy;

/// etcd's health as this node's member sees it.
pub fn etcd_health(d: &UpgradeData) -> Result<Health> {
    let tls = crate::etcd::Tls::healthcheck_client(&d.env.layout.pki_dir.join("etcd"))?;
    let url = local_client_url(d)?;
    crate::block_on(async {
        tokio::time::timeout(Duration::from_secs(15), snapshot::health(&url, &tls))
            .await
            .map_err(|_| anyhow!("etcd at {url} did not answer within 15 s"))?
    })
}

/// This node's etcd client URL on loopback, from its manifest.
fn local_client_url(d: &UpgradeData) -> Result<String> {
    let text = std::fs::read_to_string(Component::Etcd.manifest(&d.env.layout))?;
    let command = first_container(&text)?.command.unwrap_or_default();
    let listen = flag(&command, "listen-client-urls").unwrap_or("https://127.0.0.1:2379");
    Ok(listen.split(',').next().unwrap_or(listen).to_string())
}

/// Whether this run leaves etcd alone: not asked to, external, or a downgrade (kubeadm never
/// moves etcd back).
pub fn etcd_stays(d: &UpgradeData) -> Option<String> {
    if !d.opts.etcd_upgrade {
        return Some("etcd is not upgraded (--etcd-upgrade=false)".into());
    }
    if d.env.cfg.cluster.is_external_etcd() {
        return Some("external etcd detected, won't try to change any etcd state".into());
    }
    let current = crate::upgrade::manifest_version(&d.env.layout, Component::Etcd)?;
    let desired = manifests::etcd_image_tag(&d.env.cfg);
    match policy::etcd_step(&current, &desired) {
        Ok(false) if current != desired => Some(format!(
            "the desired etcd version {desired:?} is older than the currently installed {current:?}. Skipping etcd upgrade"
        )),
        _ => None,
    }
}

/// Runs `f` (an etcd swap) with this node's API server stopped, then starts it again as it was
/// and waits for it. An API server that runs while its etcd is away keeps the kubelet's mirror-pod
/// calls hanging until its own request timeout (34 s each), and the kubelet makes them before it
/// starts the new etcd pod: kubeadm's etcd step takes 75 s mostly for that. Stopped, the API
/// server refuses them at once.
pub fn with_api_server_stopped<T>(
    d: &mut UpgradeData,
    f: impl FnOnce(&mut UpgradeData) -> Result<T>,
) -> Result<T> {
    let path = Component::KubeApiserver.manifest(&d.env.layout);
    let Ok(manifest) = std::fs::read_to_string(&path) else {
        return f(d);
    };
    stop_pod(d, Component::KubeApiserver, false)?;
    d.say(
        "upgrade/etcd",
        "Stopped the kube-apiserver on this node while etcd is replaced",
        json!({ "apiServerStopped": true }),
    );
    let result = f(d);
    let since = std::time::SystemTime::now();
    start_pod(d, Component::KubeApiserver, &manifest)?;
    // Without a healthy etcd the API server cannot come up: the rollback waits for both.
    let result = result?;
    let (took, running) = wait_up(d, Component::KubeApiserver, None, Some(since))?;
    d.fresh.retain(|(c, _)| *c != Component::KubeApiserver);
    d.fresh.push((Component::KubeApiserver, running));
    d.say(
        "upgrade/etcd",
        &format!(
            "The kube-apiserver on this node is back after {:.1} s",
            took.as_secs_f64()
        ),
        json!({ "apiServerBack": took.as_secs_f64() }),
    );
    Ok(result)
}

/// A consistent snapshot of etcd through its API, verified, in this run's backup directory with
/// its revision and hash beside it.
pub fn save_snapshot(d: &mut UpgradeData) -> Result<()> {
    let health = etcd_health(d)?;
    if let Some(problem) = health.problem() {
        bail!("etcd is not healthy, so it is not upgraded: {problem}");
    }
    let dir = d.env.writer.run_backup_dir()?;
    let path = dir.join("etcd-snapshot.db");
    let tls = crate::etcd::Tls::healthcheck_client(&d.env.layout.pki_dir.join("etcd"))?;
    let url = local_client_url(d)?;
    let start = Instant::now();
    let limit = d.env.cfg.init.timeouts.etcd_api_call.0;
    let saved = crate::block_on(snapshot::save(&url, &tls, &path, limit))?;
    let record = serde_json::to_string_pretty(&saved)? + "\n";
    d.env.write(
        "control-plane",
        &File::new(dir.join("etcd-snapshot.json"), record, 0o600),
    )?;
    d.say(
        "upgrade/etcd",
        &format!(
            "Saved a snapshot of etcd {} at revision {} to {:?} ({:.1} MiB, sha256 {}, verified) in {:.1} s",
            saved.etcd_version,
            saved.revision,
            path.display().to_string(),
            saved.size as f64 / 1048576.0,
            &saved.sha256[..16],
            start.elapsed().as_secs_f64()
        ),
        json!({ "snapshot": path, "revision": saved.revision, "sha256": saved.sha256, "size": saved.size }),
    );
    d.snapshot = Some((path, saved));
    Ok(())
}

/// Rebuilds etcd's data dir from the snapshot with the old etcd image's own restore tool, run
/// once as a static pod while etcd is stopped; the data the failed etcd left is kept beside it.
pub fn restore_snapshot(d: &mut UpgradeData, old_manifest: &str) -> Result<()> {
    let (snapshot_path, saved) = d.snapshot.clone().expect("checked by the caller");
    let container = first_container(old_manifest)?;
    let command = container.command.unwrap_or_default();
    let image = container.image.unwrap_or_default();
    let data_dir = PathBuf::from(flag(&command, "data-dir").unwrap_or("/var/lib/etcd"));
    let name = flag(&command, "name").unwrap_or_default().to_string();
    let peer_url = flag(&command, "initial-advertise-peer-urls")
        .unwrap_or_default()
        .to_string();
    if let Some(initial) = flag(&command, "initial-cluster").filter(|c| c.contains(',')) {
        bail!("etcd has other members ({initial}): restoring one member from a snapshot would fork the cluster; remove this member and join it again (kubeforge reset, then kubeforge join --control-plane)");
    }
    let node = d.env.cfg.init.node_registration.name.clone();
    stop_pod(d, Component::Etcd, false)?;
    let restore_dir = data_dir.with_extension("kubeforge-restore");
    d.env.writer.remove_tree(&restore_dir)?;
    let version = image.rsplit(':').next().unwrap_or_default().to_string();
    let target = restore_dir.join("data");
    let snapshot_dir = snapshot_path
        .parent()
        .expect("in the backup dir")
        .to_path_buf();
    let restore_command = snapshot::restore_command(
        &version,
        &snapshot_path.display().to_string(),
        &target.display().to_string(),
        &name,
        &peer_url,
    );
    let pod = manifests::etcd_restore_pod(&image, &restore_command, &snapshot_dir, &restore_dir)?;
    let pod_manifest = d
        .env
        .layout
        .manifests_dir
        .join("kubeforge-etcd-restore.yaml");
    d.env.write(
        "undo",
        &File::new(pod_manifest.clone(), &pod, MANIFEST_MODE),
    )?;
    let start = Instant::now();
    let pod_name = format!("kubeforge-etcd-restore-{node}");
    let ran = crate::block_on(crate::health::wait_exited(
        &d.env.cfg,
        &pod_name,
        "kubeforge-etcd-restore",
        &image,
        d.limit(),
    ));
    d.env.writer.remove(&pod_manifest)?;
    let (code, log) = ran?;
    if code != 0 {
        bail!(
            "restoring the etcd snapshot {} with {image} failed (exit code {code}):\n{}",
            snapshot_path.display(),
            log.join("\n")
        );
    }
    let stamp = d.env.now.unix_timestamp();
    let failed = data_dir.with_extension(format!("kubeforge-failed-{stamp}"));
    d.env.writer.rename(&data_dir, &failed)?;
    d.env.writer.rename(&target, &data_dir)?;
    if d.env.cfg.security.hardened() {
        // The restore ran as root: what it made becomes etcd's again.
        d.env.writer.grant(&data_dir, crate::rootless::etcd_owns());
        d.env.writer.own_tree(&data_dir, 0o700)?;
    }
    d.env.writer.remove_tree(&restore_dir)?;
    d.say("upgrade/rollback", &format!("Restored etcd's data from the snapshot at revision {} in {:.1} s; the data the failed etcd left is in {:?}", saved.revision, start.elapsed().as_secs_f64(), failed.display().to_string()), json!({ "restored": snapshot_path, "revision": saved.revision, "failedData": failed }));
    start_pod(d, Component::Etcd, old_manifest)
}

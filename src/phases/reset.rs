//! `kubeforge reset`: removes exactly what kubeforge wrote on this node, from the host writer's
//! journal — the manifests first, then (once the static pods have stopped) kubeconfigs, PKI,
//! kubelet files and the etcd data dir — and says what it left alone and why.

use anyhow::{bail, Result};
use serde_json::json;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::host::{journal_entries, HostWriter, Layout};
use crate::output::Output;
use crate::render::flag;
use crate::BadInput;

/// What reset never touches, and why.
const LEFT_ALONE: &[(&str, &str)] = &[
    ("/etc/cni/net.d", "CNI configuration belongs to the network plugin, which kubeforge did not install"),
    ("iptables / IPVS rules", "kube-proxy and the CNI plugin wrote them; flushing them is the operator's call (iptables -F, ipvsadm --clear)"),
    ("$HOME/.kube/config", "copied by the operator, not written by kubeforge"),
    ("the kubelet's own files (pods/, pki/, checkpoints)", "the kubelet made them; they are removed with its directory only when nothing else is left"),
];

/// The command of a static pod on this node (empty when its manifest is gone or unreadable).
fn manifest_command(layout: &Layout, component: &str) -> Vec<String> {
    std::fs::read_to_string(layout.manifests_dir.join(format!("{component}.yaml")))
        .ok()
        .and_then(|text| crate::render::first_container(&text).ok()?.command)
        .unwrap_or_default()
}

/// kubeadm's `remove-etcd-member`: this node's etcd member leaves the cluster while it still
/// runs. A failure only warns, as with kubeadm: the operator may be resetting a broken node.
fn remove_etcd_member(etcd_command: &[String], layout: &Layout, out: &Output, dry_run: bool) {
    let (Some(peer_url), Some(client_url)) = (
        flag(etcd_command, "initial-advertise-peer-urls"),
        flag(etcd_command, "advertise-client-urls"),
    ) else {
        return;
    };
    if dry_run {
        out.step(
            "reset",
            &format!("Would remove this node's etcd member ({peer_url}) from the etcd cluster"),
            json!({ "peerURL": peer_url, "dryRun": true }),
        );
        return;
    }
    let left = crate::etcd::Tls::healthcheck_client(&layout.pki_dir.join("etcd"))
        .and_then(|tls| crate::runtime()?.block_on(crate::etcd::leave(client_url, &tls, peer_url)));
    let (text, detail) = match left {
        Ok(crate::etcd::Left::Removed(id)) => (
            format!("Removed this node's etcd member {id:x} ({peer_url}) from the etcd cluster"),
            json!({ "member": format!("{id:x}"), "removed": true }),
        ),
        Ok(crate::etcd::Left::OnlyMember) => (
            "This node runs the etcd cluster's only member: no member to remove".to_string(),
            json!({ "peerURL": peer_url, "removed": false, "onlyMember": true }),
        ),
        Ok(crate::etcd::Left::NotMember) => (
            format!("No etcd member has this node's peer URL {peer_url}: none to remove"),
            json!({ "peerURL": peer_url, "removed": false }),
        ),
        Err(e) => (
            format!("WARNING: could not remove this node's etcd member ({peer_url}): {e:#}; remove it from another control-plane node (etcdctl member list, etcdctl member remove <ID>)"),
            json!({ "peerURL": peer_url, "removed": false, "warning": format!("{e:#}") }),
        ),
    };
    out.step("reset", &text, detail);
}

/// Ports of the static pods, to know when the kubelet has stopped them.
fn control_plane_ports(layout: &Layout) -> Vec<u16> {
    let mut ports = vec![2379, 2380, 10257, 10259];
    let command = manifest_command(layout, "kube-apiserver");
    ports.extend(flag(&command, "secure-port").and_then(|p| p.parse::<u16>().ok()));
    ports
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
        .is_ok()
}

pub fn run(layout: &Layout, out: Output, force: bool, dry_run: bool) -> Result<()> {
    if !layout.journal().exists() {
        out.step(
            "reset",
            &format!(
                "Nothing to reset: no kubeforge journal at {:?}",
                layout.journal().display().to_string()
            ),
            json!({ "journal": layout.journal(), "removed": 0 }),
        );
        return Ok(());
    }
    if !force && !dry_run {
        if !std::io::stdin().is_terminal() {
            bail!(BadInput("reset removes this node's control-plane files; pass --force to do it without a prompt".into()));
        }
        eprint!("[reset] This removes every file kubeforge wrote on this node. Proceed? [y/N] ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            bail!("aborted");
        }
    }
    let _lock = if dry_run {
        None
    } else {
        Some(HostWriter::open(layout, false)?)
    };
    let entries = journal_entries(layout)?;
    let etcd_command = manifest_command(layout, "etcd");
    let etcd_data = flag(&etcd_command, "data-dir").map(PathBuf::from);
    let ports = control_plane_ports(layout);
    let verb = if dry_run { "Would remove" } else { "Removing" };
    let remove_file = |path: &Path| -> Result<()> {
        out.step(
            "reset",
            &format!("{verb} {:?}", path.display().to_string()),
            json!({ "path": path, "dryRun": dry_run }),
        );
        if !dry_run {
            std::fs::remove_file(path).or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
        }
        Ok(())
    };
    let (dirs, files): (Vec<&PathBuf>, Vec<&PathBuf>) = entries
        .iter()
        .filter(|p| **p != layout.journal())
        .partition(|p| p.is_dir());
    let (manifests, rest): (Vec<&PathBuf>, Vec<&PathBuf>) = files
        .into_iter()
        .partition(|p| p.starts_with(&layout.manifests_dir));
    if manifests.contains(&&layout.manifests_dir.join("etcd.yaml")) {
        remove_etcd_member(&etcd_command, layout, &out, dry_run);
    }
    for path in &manifests {
        remove_file(path)?;
    }
    if !dry_run && !manifests.is_empty() {
        out.step(
            "reset",
            "Waiting for the kubelet to stop the static pods",
            json!({ "ports": ports }),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while ports.iter().any(|p| listening(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
        }
        let still: Vec<_> = ports.iter().filter(|p| listening(**p)).collect();
        if !still.is_empty() {
            out.step(
                "reset",
                &format!("WARNING: ports {still:?} still listen after 60 s; continuing"),
                json!({ "warning": "static pods still running" }),
            );
        }
    }
    // kubeconfigs, then the PKI, then the kubelet's files.
    let rank = |p: &Path| match p {
        p if p.parent() == Some(layout.kubernetes_dir.as_path()) => 0,
        p if p.starts_with(&layout.pki_dir) => 1,
        p if p.starts_with(&layout.kubelet_dir) => 2,
        _ => 3,
    };
    let mut rest = rest;
    rest.sort_by_key(|p| rank(p));
    for path in rest {
        remove_file(path)?;
    }
    // The data of the etcd kubeforge ran (its manifest is journaled): the directory itself goes
    // only if kubeforge created it (a distribution package may own /var/lib/etcd).
    let our_etcd = entries.contains(&layout.manifests_dir.join("etcd.yaml"));
    if let Some(data) = etcd_data.filter(|_| our_etcd) {
        out.step(
            "reset",
            &format!("{verb} the etcd data in {:?}", data.display().to_string()),
            json!({ "path": data, "dryRun": dry_run }),
        );
        if !dry_run && data.is_dir() {
            if entries.contains(&data) {
                std::fs::remove_dir_all(&data)?;
            } else {
                for entry in std::fs::read_dir(&data)? {
                    let path = entry?.path();
                    if path.is_dir() {
                        std::fs::remove_dir_all(&path)?;
                    } else {
                        std::fs::remove_file(&path)?;
                    }
                }
            }
        }
    }
    // Backups of replaced files hold the removed cluster's keys: they go too.
    if let Ok(backups) = std::fs::read_dir(&layout.backup_dir) {
        for entry in backups.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with("kubeforge-backup-")
            {
                out.step(
                    "reset",
                    &format!(
                        "{verb} the backups in {:?}",
                        entry.path().display().to_string()
                    ),
                    json!({ "path": entry.path(), "dryRun": dry_run }),
                );
                if !dry_run {
                    std::fs::remove_dir_all(entry.path())?;
                }
            }
        }
    }
    remove_file(&layout.journal())?;
    let mut dirs: Vec<&PathBuf> = dirs;
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for dir in dirs {
        let empty = std::fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if dry_run || empty {
            out.step(
                "reset",
                &format!("{verb} directory {:?}", dir.display().to_string()),
                json!({ "path": dir, "dryRun": dry_run }),
            );
            if !dry_run {
                std::fs::remove_dir(dir)?;
            }
        } else if dir.exists() {
            out.step(
                "reset",
                &format!(
                    "Left {:?}: it holds files kubeforge did not write",
                    dir.display().to_string()
                ),
                json!({ "path": dir, "leftAlone": true }),
            );
        }
    }
    for (what, why) in LEFT_ALONE {
        out.step(
            "reset",
            &format!("Left alone: {what} — {why}"),
            json!({ "leftAlone": what, "why": why }),
        );
    }
    Ok(())
}

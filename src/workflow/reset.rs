//! `kubeforge reset`: removes exactly what kubeforge wrote on this node, from the host writer's
//! journal, in kubeadm's phases — `preflight` (the confirmation), `remove-etcd-member` (this
//! node's member leaves the etcd cluster while it still runs), `cleanup-node` (the manifests
//! first, then, once the static pods have stopped, kubeconfigs, PKI, kubelet files and the etcd
//! data dir) — and says what it left alone and why.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use super::{Data, Phase, Selection, Step};
use crate::manifests::{first_container, flag, Component};
use crate::node::{journal_entries, HostWriter, Layout};
use crate::output::Output;
use crate::BadInput;

/// What reset never touches, and why.
const LEFT_ALONE: &[(&str, &str)] = &[
    ("/etc/cni/net.d", "CNI configuration belongs to the network plugin, which kubeforge did not install"),
    ("iptables / IPVS rules", "kube-proxy and the CNI plugin wrote them; flushing them is the operator's call (iptables -F, ipvsadm --clear)"),
    ("$HOME/.kube/config", "copied by the operator, not written by kubeforge"),
    ("the kubelet's own files (pods/, pki/, checkpoints)", "the kubelet made them; they are removed with its directory only when nothing else is left"),
];

pub struct ResetData {
    layout: Layout,
    /// The host writer (a preview in `--dry-run`: it lists, and removes nothing).
    writer: HostWriter,
    out: Output,
    force: bool,
    dry_run: bool,
    /// Every path kubeforge created on this node.
    journal: Vec<PathBuf>,
    /// etcd's command line from its manifest (empty without one).
    etcd_command: Vec<String>,
    /// The system accounts kubeforge made on this node (never one that was there before).
    accounts: Vec<String>,
}

impl Data for ResetData {
    fn out(&self) -> &Output {
        &self.out
    }
}

impl ResetData {
    fn verb(&self) -> &'static str {
        if self.dry_run {
            "Would remove"
        } else {
            "Removing"
        }
    }

    fn say(&self, text: &str, detail: serde_json::Value) {
        self.out.step("reset", text, detail);
    }

    fn remove_file(&mut self, path: &Path) -> Result<()> {
        self.say(
            &format!("{} {:?}", self.verb(), path.display().to_string()),
            json!({ "path": path, "dryRun": self.dry_run }),
        );
        self.writer.remove(path)
    }

    fn manifests(&self) -> Vec<PathBuf> {
        self.journal
            .iter()
            .filter(|p| p.starts_with(&self.layout.manifests_dir) && !p.is_dir())
            .cloned()
            .collect()
    }

    fn runs_our_etcd(&self) -> bool {
        self.journal
            .contains(&Component::Etcd.manifest(&self.layout))
    }
}

pub fn phases() -> Vec<Phase<ResetData>> {
    vec![
        Phase::new("preflight", "Run reset pre-flight checks").run(confirm),
        Phase::new("remove-etcd-member", "Remove a local etcd member")
            .run_if(ResetData::runs_our_etcd)
            .run(remove_etcd_member),
        Phase::new("cleanup-node", "Run cleanup node.").run(cleanup_node),
    ]
}

/// The command of a static pod on this node (empty when its manifest is gone or unreadable).
fn manifest_command(layout: &Layout, component: Component) -> Vec<String> {
    std::fs::read_to_string(component.manifest(layout))
        .ok()
        .and_then(|text| first_container(&text).ok()?.command)
        .unwrap_or_default()
}

fn confirm(d: &mut ResetData, _: &Step) -> Result<()> {
    if d.force || d.dry_run {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!(BadInput(
            "reset removes this node's control-plane files; pass --force to do it without a prompt"
                .into()
        ));
    }
    eprint!("[reset] This removes every file kubeforge wrote on this node. Proceed? [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        bail!("aborted");
    }
    Ok(())
}

/// kubeadm's `remove-etcd-member`: this node's etcd member leaves the cluster while it still
/// runs. A failure only warns, as with kubeadm: the operator may be resetting a broken node.
fn remove_etcd_member(d: &mut ResetData, _: &Step) -> Result<()> {
    let (Some(peer_url), Some(client_url)) = (
        flag(&d.etcd_command, "initial-advertise-peer-urls"),
        flag(&d.etcd_command, "advertise-client-urls"),
    ) else {
        return Ok(());
    };
    if d.dry_run {
        d.say(
            &format!("Would remove this node's etcd member ({peer_url}) from the etcd cluster"),
            json!({ "peerURL": peer_url, "dryRun": true }),
        );
        return Ok(());
    }
    let left = crate::etcd::Tls::healthcheck_client(&d.layout.pki_dir.join("etcd"))
        .and_then(|tls| crate::block_on(crate::etcd::leave(client_url, &tls, peer_url)));
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
    d.say(&text, detail);
    Ok(())
}

fn cleanup_node(d: &mut ResetData, _: &Step) -> Result<()> {
    remove_manifests(d)?;
    remove_accounts(d)?;
    remove_files(d)?;
    remove_etcd_data(d)?;
    remove_backups(d)?;
    let journal = d.layout.journal();
    d.remove_file(&journal)?;
    remove_directories(d)?;
    for (what, why) in LEFT_ALONE {
        d.say(
            &format!("Left alone: {what} — {why}"),
            json!({ "leftAlone": what, "why": why }),
        );
    }
    Ok(())
}

/// The accounts kubeforge made, once their pods are stopped.
fn remove_accounts(d: &mut ResetData) -> Result<()> {
    for name in d.accounts.clone() {
        d.say(
            &format!(
                "{} the system account {name:?} (kubeforge made it)",
                d.verb()
            ),
            json!({ "account": name, "dryRun": d.dry_run }),
        );
        // Another node's pod on this machine may still run as it (nodes in namespaces of one
        // host share /etc/passwd): said, and the reset goes on.
        if let Err(e) = d.writer.remove_account(&name) {
            d.say(
                &format!("WARNING: the system account {name:?} stays: {e:#}; remove it with `userdel {name}` once nothing runs as it"),
                json!({ "warning": "account left", "account": name, "error": format!("{e:#}") }),
            );
        }
    }
    Ok(())
}

/// Ports of the static pods, to know when the kubelet has stopped them.
fn control_plane_ports(layout: &Layout) -> Vec<u16> {
    let mut ports = vec![2379, 2380, 10257, 10259];
    let command = manifest_command(layout, Component::KubeApiserver);
    ports.extend(flag(&command, "secure-port").and_then(|p| p.parse::<u16>().ok()));
    ports
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
        .is_ok()
}

/// The manifests first, then (for real) a wait until the kubelet has stopped the static pods.
fn remove_manifests(d: &mut ResetData) -> Result<()> {
    let manifests = d.manifests();
    let ports = control_plane_ports(&d.layout);
    for path in &manifests {
        d.remove_file(path)?;
    }
    if d.dry_run || manifests.is_empty() {
        return Ok(());
    }
    d.say(
        "Waiting for the kubelet to stop the static pods",
        json!({ "ports": ports }),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while ports.iter().any(|p| listening(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    let still: Vec<_> = ports.iter().filter(|p| listening(**p)).collect();
    if !still.is_empty() {
        d.say(
            &format!("WARNING: ports {still:?} still listen after 60 s; continuing"),
            json!({ "warning": "static pods still running" }),
        );
    }
    Ok(())
}

/// kubeconfigs, then the PKI, then the kubelet's files, then the rest.
fn remove_files(d: &mut ResetData) -> Result<()> {
    let layout = d.layout.clone();
    let rank = |p: &Path| match p {
        p if p.parent() == Some(layout.kubernetes_dir.as_path()) => 0,
        p if p.starts_with(&layout.pki_dir) => 1,
        p if p.starts_with(&layout.kubelet_dir) => 2,
        _ => 3,
    };
    let mut rest: Vec<PathBuf> = d
        .journal
        .iter()
        .filter(|p| **p != layout.journal() && !p.is_dir() && !p.starts_with(&layout.manifests_dir))
        .cloned()
        .collect();
    rest.sort_by_key(|p| rank(p));
    for path in rest {
        d.remove_file(&path)?;
    }
    Ok(())
}

/// The data of the etcd kubeforge ran (its manifest is journaled): the directory itself goes only
/// if kubeforge created it (a distribution package may own /var/lib/etcd).
fn remove_etcd_data(d: &mut ResetData) -> Result<()> {
    let Some(data) = flag(&d.etcd_command, "data-dir").map(PathBuf::from) else {
        return Ok(());
    };
    if !d.runs_our_etcd() {
        return Ok(());
    }
    d.say(
        &format!(
            "{} the etcd data in {:?}",
            d.verb(),
            data.display().to_string()
        ),
        json!({ "path": data, "dryRun": d.dry_run }),
    );
    if !data.is_dir() {
        return Ok(());
    }
    if d.journal.contains(&data) {
        return d.writer.remove_tree(&data);
    }
    for entry in std::fs::read_dir(&data)? {
        let path = entry?.path();
        if path.is_dir() {
            d.writer.remove_tree(&path)?;
        } else {
            d.writer.remove(&path)?;
        }
    }
    Ok(())
}

/// Backups of replaced files hold the removed cluster's keys: they go too.
fn remove_backups(d: &mut ResetData) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(&d.layout.backup_dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("kubeforge-backup-")
        {
            continue;
        }
        d.say(
            &format!(
                "{} the backups in {:?}",
                d.verb(),
                entry.path().display().to_string()
            ),
            json!({ "path": entry.path(), "dryRun": d.dry_run }),
        );
        d.writer.remove_tree(&entry.path())?;
    }
    Ok(())
}

/// The directories kubeforge created, deepest first, when nothing else is in them.
fn remove_directories(d: &mut ResetData) -> Result<()> {
    let mut dirs: Vec<PathBuf> = d.journal.iter().filter(|p| p.is_dir()).cloned().collect();
    dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for dir in dirs {
        if d.writer.remove_empty_dir(&dir)? || d.dry_run {
            d.say(
                &format!("{} directory {:?}", d.verb(), dir.display().to_string()),
                json!({ "path": dir, "dryRun": d.dry_run }),
            );
        } else if dir.exists() {
            d.say(
                &format!(
                    "Left {:?}: it holds files kubeforge did not write",
                    dir.display().to_string()
                ),
                json!({ "path": dir, "leftAlone": true }),
            );
        }
    }
    Ok(())
}

/// `kubeforge reset [--force] [--dry-run]` on the node laid out as `layout`.
pub fn run(layout: Layout, out: Output, force: bool, dry_run: bool) -> Result<()> {
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
    let writer = if dry_run {
        HostWriter::preview(&layout)
    } else {
        HostWriter::open(&layout, false)?
    };
    let mut data = ResetData {
        journal: journal_entries(&layout)?,
        etcd_command: manifest_command(&layout, Component::Etcd),
        accounts: crate::node::accounts::recorded(&layout.accounts_record())?,
        layout,
        writer,
        out,
        force,
        dry_run,
    };
    super::run(&phases(), &mut data, &Selection::default())
}

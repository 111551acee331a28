//! Non-root components on a real node (docs/security.md, "Non-root components"): etcd,
//! kube-apiserver, kube-controller-manager and kube-scheduler run as their accounts with no
//! effective capability and no_new_privs (the last two started by `kubeforge exec-as`, with no
//! supplementary group), their kubeconfigs stay 0600 root:root (CIS 1.1.15–1.1.18), and etcd's
//! data directory is etcd:etcd 0700 (CIS 1.1.11/1.1.12).
//! Processes are told apart by their network namespace: every static pod is host-network, so
//! node 1's share the host's and node 2's share its own.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::Scenario;
use crate::node2::ExtraNode;

/// `id -u NAME` (`-g` for its group): node 2 shares the host's /etc/passwd.
fn id(flag: &str, name: &str) -> u32 {
    let out = Command::new("id").args([flag, name]).output().unwrap();
    assert!(out.status.success(), "no account {name}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The /proc/<pid>/status of every process named `comm` in the network namespace `net`.
fn statuses(comm: &str, net: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        if p.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let same_net = std::fs::read_link(p.path().join("ns/net")).ok().as_deref() == Some(net);
        let name = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
        if same_net && name.trim() == comm {
            found.extend(std::fs::read_to_string(p.path().join("status")).ok());
        }
    }
    found
}

/// A field of /proc/<pid>/status (`Uid:` → "real effective saved fs").
fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim()
}

/// `stats`: `stat -c '%U:%G %a'` of etcd's data directory and the two kubeconfigs.
fn assert_components(net: &Path, stats: String) {
    for (comm, account) in [
        ("etcd", "etcd"),
        ("kube-apiserver", "kube-apiserver"),
        ("kube-controller", "kube-controller-manager"),
        ("kube-scheduler", "kube-scheduler"),
    ] {
        let statuses = statuses(comm, net);
        assert_eq!(statuses.len(), 1, "{comm} processes in {}", net.display());
        let status = &statuses[0];
        let uids: Vec<u32> = field(status, "Uid:")
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        let gids: Vec<u32> = field(status, "Gid:")
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        let (uid, gid) = (id("-u", account), id("-g", account));
        assert!(
            uids.iter().all(|u| *u == uid),
            "{comm}: Uid {uids:?}, want {uid}"
        );
        assert!(
            gids.iter().all(|g| *g == gid),
            "{comm}: Gid {gids:?}, want {gid}"
        );
        assert_eq!(
            field(status, "CapEff:"),
            "0000000000000000",
            "{comm}: effective capabilities"
        );
        assert_eq!(
            field(status, "NoNewPrivs:"),
            "1",
            "{comm}: allowPrivilegeEscalation false"
        );
        if comm != "etcd" && comm != "kube-apiserver" {
            assert_eq!(
                field(status, "Groups:"),
                "",
                "{comm}: exec-as keeps no group"
            );
        }
    }
    assert_eq!(
        stats.lines().collect::<Vec<_>>(),
        ["etcd:etcd 700", "root:root 600", "root:root 600"],
        "/var/lib/etcd (CIS 1.1.11/1.1.12), controller-manager.conf and scheduler.conf (1.1.15-1.1.18)"
    );
}

fn stat(mut command: Command) -> String {
    let out = command
        .args(["-c", "%U:%G %a", "/var/lib/etcd"])
        .args([
            "/etc/kubernetes/controller-manager.conf",
            "/etc/kubernetes/scheduler.conf",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The control plane of the suite's node (node 1, the host's network namespace).
pub fn assert_runs_rootless(_s: &Scenario) {
    let net: PathBuf = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_components(&net, stat(Command::new("stat")));
}

/// The control plane a `join --control-plane` made on node 2.
pub fn assert_node_runs_rootless(node: &ExtraNode) {
    let net = node.net_namespace().expect("node 2's network namespace");
    assert_components(&net, stat(node.command("stat")));
}

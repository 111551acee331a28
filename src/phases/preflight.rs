//! `preflight`: kubeadm's checks (contract 10.4) under kubeadm's names, so
//! `--ignore-preflight-errors` takes the same words. A port, manifest or data dir held by what
//! kubeforge itself set up on this node (its journal says so) is not a conflict: re-runs converge.

use anyhow::{bail, Result};
use serde_json::json;
use std::path::{Path, PathBuf};

use super::{Context, Phase, Selection};
use crate::host::journal_entries;
use crate::render::kubernetes_minor;

pub const PHASE: Phase = Phase {
    name: "preflight",
    description: "Run pre-flight checks",
    subphases: Vec::new,
    run,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Severity {
    Error,
    Warning,
}

struct Finding {
    check: String,
    severity: Severity,
    message: String,
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
}

fn kubelet_minor() -> Result<u32, String> {
    let out = std::process::Command::new("kubelet")
        .arg("--version")
        .output()
        .map_err(|e| format!("couldn't run \"kubelet --version\": {e}; install the kubelet"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("v1.")?.split('.').next()?.parse().ok())
        .ok_or_else(|| format!("couldn't parse the kubelet version from {:?}", text.trim()))
}

fn checks(ctx: &Context) -> Vec<Finding> {
    let mut found = Vec::new();
    let mut add = |check: &str, severity, message: String| {
        found.push(Finding {
            check: check.into(),
            severity,
            message,
        })
    };
    let ours: Vec<PathBuf> = journal_entries(&ctx.layout).unwrap_or_default();
    let is_ours = |p: &Path| ours.iter().any(|o| o == p);
    let manifest = |c: &str| ctx.layout.manifests_dir.join(format!("{c}.yaml"));
    // A worker join runs no control plane: only the kubelet's checks apply.
    let control_plane = ctx
        .joining
        .as_ref()
        .is_none_or(|j| j.control_plane.is_some());
    let local_etcd = control_plane && !ctx.cfg.cluster.is_external_etcd();

    if std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        < 2
    {
        add(
            "NumCPU",
            Severity::Error,
            "the number of available CPUs 1 is less than the required 2".into(),
        );
    }
    let mem_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0);
    if mem_mb < 1700 {
        add(
            "Mem",
            Severity::Error,
            format!("the system RAM ({mem_mb} MB) is less than the minimum 1700 MB"),
        );
    }
    let mut ports = Vec::new();
    if control_plane {
        ports.extend([
            (ctx.cfg.bind_port(), "kube-apiserver"),
            (10259, "kube-scheduler"),
            (10257, "kube-controller-manager"),
        ]);
    } else {
        // The kubelet writes kubelet.conf from the bootstrap kubeconfig a join wrote: a re-run
        // of that join finds its own node.
        let bootstrapped = is_ours(&ctx.layout.kubeconfig("bootstrap-kubelet.conf"));
        for path in [
            ctx.layout.kubeconfig("kubelet.conf"),
            ctx.layout.pki_dir.join("ca.crt"),
        ] {
            if path.exists() && !is_ours(&path) && !bootstrapped {
                add(
                    &format!(
                        "FileAvailable-{}",
                        path.display().to_string().replace('/', "-")
                    ),
                    Severity::Error,
                    format!(
                        "{} already exists and kubeforge did not write it: this node belongs to a cluster already",
                        path.display()
                    ),
                );
            }
        }
    }
    let manifests: &[&str] = if control_plane {
        &[
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "etcd",
        ]
    } else {
        &[]
    };
    for &c in manifests {
        let path = manifest(c);
        if path.exists() && !is_ours(&path) {
            add(
                &format!(
                    "FileAvailable-{}",
                    path.display().to_string().replace('/', "-")
                ),
                Severity::Error,
                format!(
                    "{} already exists and kubeforge did not write it",
                    path.display()
                ),
            );
        }
    }
    let swap = std::fs::read_to_string("/proc/swaps")
        .map(|s| s.lines().count() > 1)
        .unwrap_or(false);
    if swap {
        add(
            "Swap",
            Severity::Warning,
            "swap is supported for cgroup v2 only; the kubelet must be configured for it".into(),
        );
    }
    let cri = ctx
        .cfg
        .init
        .node_registration
        .cri_socket
        .trim_start_matches("unix://")
        .to_string();
    if std::os::unix::net::UnixStream::connect(&cri).is_err() {
        add(
            "CRI",
            Severity::Error,
            format!("the container runtime is not reachable at {cri}"),
        );
    }
    let node = &ctx.cfg.init.node_registration.name;
    if std::net::ToSocketAddrs::to_socket_addrs(&(node.as_str(), 0)).is_err() {
        add(
            "Hostname",
            Severity::Warning,
            format!("hostname {node:?} could not be reached"),
        );
    }
    match kubelet_minor() {
        Err(why) => add("KubeletVersion", Severity::Error, why),
        Ok(k) => {
            let cp = kubernetes_minor(&ctx.cfg);
            if k > cp || k + 3 < cp {
                add(
                    "KubeletVersion",
                    Severity::Error,
                    format!("the kubelet version v1.{k} is outside the supported skew for a v1.{cp} control plane (v1.{}–v1.{cp})", cp.saturating_sub(3)),
                );
            }
        }
    }
    let kubelet_is_ours = is_ours(&ctx.layout.kubelet_dir.join("config.yaml"));
    if !kubelet_is_ours {
        ports.push((10250, "kubelet"));
    }
    let forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
    if forward.trim() != "1" {
        add(
            "FileContent--proc-sys-net-ipv4-ip_forward",
            Severity::Error,
            "/proc/sys/net/ipv4/ip_forward contents are not set to 1 (sysctl -w net.ipv4.ip_forward=1)".into(),
        );
    }
    if local_etcd {
        ports.extend([(2379, "etcd"), (2380, "etcd")]);
        let data = &ctx.layout.etcd_data_dir;
        let non_empty = std::fs::read_dir(data)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        // Data that kubeforge's own etcd wrote (its manifest is in the journal) is no conflict.
        if non_empty && !is_ours(data) && !is_ours(&manifest("etcd")) {
            add(
                &format!(
                    "DirAvailable-{}",
                    data.display().to_string().replace('/', "-")
                ),
                Severity::Error,
                format!(
                    "{} is not empty and kubeforge did not create it",
                    data.display()
                ),
            );
        }
    }
    for (port, owner) in ports {
        let owned = owner != "kubelet" && is_ours(&manifest(owner));
        if !owned && !port_free(port) {
            add(
                &format!("Port-{port}"),
                Severity::Error,
                format!("port {port} is in use"),
            );
        }
    }
    found
}

fn run(ctx: &mut Context, _sel: &Selection) -> Result<()> {
    let dry_run = ctx.writer.dry_run_dir().is_some();
    if !dry_run && !nix::unistd::geteuid().is_root() {
        bail!(crate::BadInput(
            "[preflight] IsPrivilegedUser: user is not running as root (use --dry-run to see what init would write)".into()
        ));
    }
    ctx.out
        .step("preflight", "Running pre-flight checks", json!({}));
    let ignore: Vec<String> = ctx
        .cfg
        .init
        .node_registration
        .ignore_preflight_errors
        .iter()
        .map(|s| s.to_lowercase())
        .collect();
    let ignored = |check: &str| {
        ignore
            .iter()
            .any(|i| i == "all" || *i == check.to_lowercase())
    };
    let mut fatal = Vec::new();
    for f in checks(ctx) {
        // A dry-run changes nothing, so nothing it finds can be fatal.
        if f.severity == Severity::Error && !ignored(&f.check) && !dry_run {
            fatal.push(format!("\t[ERROR {}]: {}", f.check, f.message));
        } else {
            ctx.out.step(
                "preflight",
                &format!("\t[WARNING {}]: {}", f.check, f.message),
                json!({ "check": f.check, "warning": f.message }),
            );
        }
    }
    if !fatal.is_empty() {
        bail!(
            "[preflight] Some fatal errors occurred:\n{}\n[preflight] If you know what you are doing, you can make a check non-fatal with `--ignore-preflight-errors=...`",
            fatal.join("\n")
        );
    }
    Ok(())
}

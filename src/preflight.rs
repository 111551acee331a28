//! kubeadm's pre-flight checks (contract 10.4) under kubeadm's names, so
//! `--ignore-preflight-errors` takes the same words. A port, manifest or data dir held by what
//! kubeforge itself set up on this node (its journal says so) is not a conflict: re-runs converge.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde_json::json;

use crate::config::Config;
use crate::manifests::Component;
use crate::node::{journal_entries, Layout};
use crate::output::Output;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One check's complaint, under kubeadm's check name.
pub struct Finding {
    pub check: String,
    pub severity: Severity,
    pub message: String,
}

/// What the checks look at: the config, the node, and what kubeforge wrote there before.
struct Node<'a> {
    cfg: &'a Config,
    layout: &'a Layout,
    ours: Vec<PathBuf>,
    /// A control-plane node (init, or a control-plane join); a worker runs only a kubelet.
    control_plane: bool,
    /// A run that changes the node: a missing image is pulled.
    pull: bool,
    found: Vec<Finding>,
}

impl Node<'_> {
    fn add(&mut self, check: &str, severity: Severity, message: String) {
        self.found.push(Finding {
            check: check.into(),
            severity,
            message,
        });
    }

    fn is_ours(&self, path: &Path) -> bool {
        self.ours.iter().any(|o| o == path)
    }

    /// kubeadm's `FileAvailable-<path>` / `DirAvailable-<path>` check names.
    fn available(&mut self, kind: &str, path: &Path, message: String) {
        let name = format!("{kind}-{}", path.display().to_string().replace('/', "-"));
        self.add(&name, Severity::Error, message);
    }
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

fn mem_total_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
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
        .unwrap_or(0)
}

fn check_resources(n: &mut Node) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if cpus < 2 {
        n.add(
            "NumCPU",
            Severity::Error,
            "the number of available CPUs 1 is less than the required 2".into(),
        );
    }
    let mem_mb = mem_total_mb();
    if mem_mb < 1700 {
        n.add(
            "Mem",
            Severity::Error,
            format!("the system RAM ({mem_mb} MB) is less than the minimum 1700 MB"),
        );
    }
}

fn check_swap(n: &mut Node) {
    let swap = std::fs::read_to_string("/proc/swaps")
        .map(|s| s.lines().count() > 1)
        .unwrap_or(false);
    if swap {
        n.add(
            "Swap",
            Severity::Warning,
            "swap is supported for cgroup v2 only; the kubelet must be configured for it".into(),
        );
    }
}

/// A worker's kubelet.conf and CA must not belong to another cluster. The kubelet writes
/// kubelet.conf from the bootstrap kubeconfig a join wrote: a re-run of that join finds its own
/// node.
fn check_worker_files(n: &mut Node) {
    let bootstrapped = n.is_ours(&n.layout.kubeconfig("bootstrap-kubelet.conf"));
    for path in [
        n.layout.kubeconfig("kubelet.conf"),
        n.layout.pki_dir.join("ca.crt"),
    ] {
        if path.exists() && !n.is_ours(&path) && !bootstrapped {
            let message = format!(
                "{} already exists and kubeforge did not write it: this node belongs to a cluster already",
                path.display()
            );
            n.available("FileAvailable", &path, message);
        }
    }
}

fn check_manifests(n: &mut Node) {
    for c in [
        Component::KubeApiserver,
        Component::KubeControllerManager,
        Component::KubeScheduler,
        Component::Etcd,
    ] {
        let path = c.manifest(n.layout);
        if path.exists() && !n.is_ours(&path) {
            let message = format!(
                "{} already exists and kubeforge did not write it",
                path.display()
            );
            n.available("FileAvailable", &path, message);
        }
    }
}

fn check_runtime_and_kubelet(n: &mut Node) {
    let nr = &n.cfg.init.node_registration;
    let cri = nr.cri_socket.trim_start_matches("unix://").to_string();
    if std::os::unix::net::UnixStream::connect(&cri).is_err() {
        n.add(
            "CRI",
            Severity::Error,
            format!("the container runtime is not reachable at {cri}"),
        );
    }
    let node = nr.name.clone();
    if std::net::ToSocketAddrs::to_socket_addrs(&(node.as_str(), 0)).is_err() {
        n.add(
            "Hostname",
            Severity::Warning,
            format!("hostname {node:?} could not be reached"),
        );
    }
    match kubelet_minor() {
        Err(why) => n.add("KubeletVersion", Severity::Error, why),
        Ok(k) => {
            let cp = n.cfg.kubernetes_minor();
            if k > cp || k + 3 < cp {
                n.add(
                    "KubeletVersion",
                    Severity::Error,
                    format!("the kubelet version v1.{k} is outside the supported skew for a v1.{cp} control plane (v1.{}–v1.{cp})", cp.saturating_sub(3)),
                );
            }
        }
    }
    let forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
    if forward.trim() != "1" {
        n.add(
            "FileContent--proc-sys-net-ipv4-ip_forward",
            Severity::Error,
            "/proc/sys/net/ipv4/ip_forward contents are not set to 1 (sysctl -w net.ipv4.ip_forward=1)".into(),
        );
    }
}

/// Data that kubeforge's own etcd wrote (its manifest is in the journal) is no conflict.
fn check_etcd_data(n: &mut Node) {
    let data = n.layout.etcd_data_dir.clone();
    let non_empty = std::fs::read_dir(&data)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if non_empty && !n.is_ours(&data) && !n.is_ours(&Component::Etcd.manifest(n.layout)) {
        let message = format!(
            "{} is not empty and kubeforge did not create it",
            data.display()
        );
        n.available("DirAvailable", &data, message);
    }
}

/// The ports this node's components listen on, unless a component kubeforge set up holds them.
fn check_ports(n: &mut Node, local_etcd: bool) {
    let mut ports: Vec<(u16, Option<Component>)> = Vec::new();
    if n.control_plane {
        ports.extend([
            (n.cfg.bind_port(), Some(Component::KubeApiserver)),
            (10259, Some(Component::KubeScheduler)),
            (10257, Some(Component::KubeControllerManager)),
        ]);
    }
    if !n.is_ours(&n.layout.kubelet_dir.join("config.yaml")) {
        ports.push((10250, None));
    }
    if local_etcd {
        ports.extend([(2379, Some(Component::Etcd)), (2380, Some(Component::Etcd))]);
    }
    for (port, owner) in ports {
        let owned = owner.is_some_and(|c| n.is_ours(&c.manifest(n.layout)));
        if !owned && !port_free(port) {
            n.add(
                &format!("Port-{port}"),
                Severity::Error,
                format!("port {port} is in use"),
            );
        }
    }
}

fn checks(cfg: &Config, layout: &Layout, control_plane: bool, pull: bool) -> Vec<Finding> {
    let mut n = Node {
        cfg,
        layout,
        ours: journal_entries(layout).unwrap_or_default(),
        control_plane,
        pull,
        found: Vec::new(),
    };
    let local_etcd = control_plane && !cfg.cluster.is_external_etcd();
    check_resources(&mut n);
    if control_plane {
        check_manifests(&mut n);
    } else {
        check_worker_files(&mut n);
    }
    check_swap(&mut n);
    check_runtime_and_kubelet(&mut n);
    if local_etcd {
        check_etcd_data(&mut n);
    }
    check_ports(&mut n, local_etcd);
    // Control-plane nodes run both balancers; a worker of a `nodeLocal` cluster its haproxy.
    if cfg
        .endpoint
        .as_ref()
        .is_some_and(|e| control_plane || e.node_local)
    {
        check_endpoint(&mut n, control_plane);
    }
    if control_plane && cfg.security.hardened() {
        // The kubeforge-approver static pod runs this binary in the pause image.
        if let Err(e) = crate::kubelet::approver::static_binary() {
            n.add("KubeforgeStaticBinary", Severity::Error, format!("{e:#}"));
        }
    }
    n.found
}

/// The balancers' manifests, ports and images (ControlPlaneEndpoint); a worker's (`nodeLocal`)
/// needs no keepalived.
fn check_endpoint(n: &mut Node, control_plane: bool) {
    let Some(ep) = n.cfg.endpoint.as_ref() else {
        return;
    };
    let mut ours = false;
    for (name, _) in crate::endpoint::PODS {
        let path = crate::endpoint::manifest_path(n.layout, name);
        ours |= n.is_ours(&path);
        if path.exists() && !n.is_ours(&path) {
            let message = format!(
                "{} already exists and kubeforge did not write it",
                path.display()
            );
            n.available("FileAvailable", &path, message);
        }
    }
    for port in [ep.balancer_port, ep.monitor_port] {
        if !ours && !port_free(port) {
            n.add(
                &format!("Port-{port}"),
                Severity::Error,
                format!("port {port} is in use"),
            );
        }
    }
    let socket = n.cfg.init.node_registration.cri_socket.clone();
    let mut images = vec![ep.images.haproxy.clone()];
    if control_plane {
        images.push(ep.images.keepalived.clone());
    }
    let pull = n.pull;
    let missing = crate::block_on(async {
        let mut runtime = crate::cri::Runtime::connect(&socket).await?;
        let mut missing = Vec::new();
        for image in images {
            if runtime.has_image(&image).await? {
                continue;
            }
            if !pull {
                missing.push(format!("image {image} is not on the node"));
            } else if let Err(e) = runtime.pull(&image).await {
                missing.push(format!(
                    "image {image} is not on the node and pulling it failed: {e:#}"
                ));
            }
        }
        Ok::<_, anyhow::Error>(missing)
    });
    match missing {
        // An unreachable runtime is the CRI check's finding already.
        Err(e) => tracing::info!("ImagePull: the container runtime did not answer: {e:#}"),
        Ok(missing) => {
            for m in missing {
                n.add(
                    "ImagePull",
                    Severity::Error,
                    format!("{m} (ControlPlaneEndpoint.images)"),
                );
            }
        }
    }
}

/// Runs the checks for a control-plane node or a worker. With `enforce` (a run that changes the
/// node), errors not ignored stop it and a non-root user is refused; otherwise (a dry-run, which
/// changes nothing) every finding is only a warning.
pub fn run(
    cfg: &Config,
    layout: &Layout,
    out: &Output,
    control_plane: bool,
    enforce: bool,
) -> Result<()> {
    if enforce && !nix::unistd::geteuid().is_root() {
        bail!(crate::BadInput(
            "[preflight] IsPrivilegedUser: user is not running as root (use --dry-run to see what init would write)".into()
        ));
    }
    out.step("preflight", "Running pre-flight checks", json!({}));
    let findings = checks(cfg, layout, control_plane, enforce);
    report(
        out,
        "preflight",
        findings,
        &cfg.init.node_registration.ignore_preflight_errors,
        enforce,
    )
}

/// Prints the warnings; the errors not ignored (`all` ignores every one) stop the run when
/// `enforce`, listed as kubeadm lists them.
pub fn report(
    out: &Output,
    prefix: &str,
    findings: Vec<Finding>,
    ignore: &[String],
    enforce: bool,
) -> Result<()> {
    let ignore: Vec<String> = ignore.iter().map(|s| s.to_lowercase()).collect();
    let ignored = |check: &str| {
        ignore
            .iter()
            .any(|i| i == "all" || *i == check.to_lowercase())
    };
    let mut fatal = Vec::new();
    for f in findings {
        if f.severity == Severity::Error && !ignored(&f.check) && enforce {
            fatal.push(format!("\t[ERROR {}]: {}", f.check, f.message));
        } else {
            out.step(
                prefix,
                &format!("\t[WARNING {}]: {}", f.check, f.message),
                json!({ "check": f.check, "warning": f.message }),
            );
        }
    }
    if !fatal.is_empty() {
        bail!(
            "[{prefix}] Some fatal errors occurred:\n{}\n[{prefix}] If you know what you are doing, you can make a check non-fatal with `--ignore-preflight-errors=...`",
            fatal.join("\n")
        );
    }
    Ok(())
}

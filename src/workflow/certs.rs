//! `kubeforge certs renew <name>|all`: kubeadm's renewal (a new key, the old certificate's
//! subject, SANs and usages, the CA on disk), every renewal computed before the first file is
//! written; then — unlike kubeadm, which only prints that you must restart them — the static
//! pods that read a renewed file are restarted, one at a time, in the order etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler (then kubeforge-approver, profile hardened), each
//! waited for until it is Ready again before the next, so a stacked HA control plane never loses
//! two members at once. `--no-restart` gives
//! kubeadm's behaviour and message. Also `certs check-expiration`'s and `kubeconfig user`'s
//! configuration: the operator's file, else the cluster's, else the defaults.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::json;
use time::OffsetDateTime;

use super::{Data, Phase, Selection, Step};
use crate::certs::renew::{self, Item, KeyAlgorithm, Renewal};
use crate::config::{self, Config};
use crate::cri::Runtime;
use crate::kubelet::approver;
use crate::manifests::{self, Component};
use crate::node::{File, HostWriter, Layout};
use crate::output::Output;
use crate::BadInput;

/// kubeadm's closing words of `certs renew` (what `--no-restart` leaves to the operator).
pub const RESTART_YOURSELF: &str = "Done renewing certificates. You must restart the kube-apiserver, kube-controller-manager, kube-scheduler and etcd, so that they can use the new certificates.";

/// How long a stopped container has to shut down before it is killed (the pod default).
const GRACE: Duration = Duration::from_secs(30);

/// Where a certs command finds the cluster's configuration.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// `--config`: a kubeadm configuration file.
    pub file: Option<PathBuf>,
    /// `--kubeconfig`: what reads the cluster's `kubeadm-config` without `--config`.
    pub kubeconfig: PathBuf,
    /// `--cert-dir`, over the configuration's certificatesDir.
    pub cert_dir: Option<String>,
}

/// The configuration a certs command works with: the operator's file, else the cluster's
/// ClusterConfiguration, else the defaults (`prefix` names the command in its lines); this node's
/// name and address from its manifests. True when it is the file's or the cluster's.
pub fn load_config(
    source: &ConfigSource,
    kubernetes_dir: &Path,
    out: &Output,
    prefix: &str,
) -> Result<(Config, bool)> {
    let (mut cfg, known) = match &source.file {
        Some(file) => (
            config::load(Some(file), &Default::default(), kubernetes_dir)?,
            true,
        ),
        None => from_cluster(source, kubernetes_dir, out, prefix)?,
    };
    if let Some(dir) = &source.cert_dir {
        cfg.cluster.certificates_dir = dir.clone();
    }
    Ok((cfg, known))
}

fn from_cluster(
    source: &ConfigSource,
    kubernetes_dir: &Path,
    out: &Output,
    prefix: &str,
) -> Result<(Config, bool)> {
    let layout = Layout::new(
        kubernetes_dir,
        Path::new("/var/lib/kubelet"),
        Path::new(""),
        Path::new(""),
    );
    let facts = manifests::node_facts(&layout);
    let stored = crate::block_on(async {
        let client = crate::kube::client(&source.kubeconfig, None).await?;
        let read = crate::cluster::stored::cluster_configuration(&client);
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within 10 s"))?
    });
    let cluster = match stored {
        Ok(text) => {
            out.step(prefix, "Reading configuration from the \"kubeadm-config\" ConfigMap in namespace \"kube-system\"...", json!({ "configMap": "kube-system/kubeadm-config" }));
            out.step(prefix, "Use 'kubeforge init phase upload-config kubeadm --config your-config-file' to re-upload it.", json!({}));
            Some(text)
        }
        Err(e) => {
            tracing::info!("reading kube-system/kubeadm-config: {e:#}");
            out.step(prefix, "Error reading configuration from the Cluster. Falling back to default configuration", json!({ "fallback": "defaults", "error": format!("{e:#}") }));
            None
        }
    };
    let text = format!(
        "{}---\n{}",
        node_document(&facts),
        cluster.as_deref().unwrap_or("")
    );
    let cfg = config::load_str(
        &text,
        "the cluster's kube-system/kubeadm-config",
        &Default::default(),
        kubernetes_dir,
    )?;
    Ok((cfg, cluster.is_some()))
}

/// An InitConfiguration with what this node's manifests say about it.
fn node_document(facts: &manifests::NodeFacts) -> String {
    let mut doc = String::from("apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\n");
    if let Some(name) = &facts.name {
        doc.push_str(&format!("nodeRegistration:\n  name: {name:?}\n"));
    }
    if facts.advertise_address.is_some() || facts.bind_port.is_some() {
        doc.push_str("localAPIEndpoint:\n");
        if let Some(address) = &facts.advertise_address {
            doc.push_str(&format!("  advertiseAddress: {address:?}\n"));
        }
        if let Some(port) = facts.bind_port {
            doc.push_str(&format!("  bindPort: {port}\n"));
        }
    }
    doc
}

/// `certs renew`'s request.
#[derive(Debug, Clone)]
pub struct RenewOptions {
    /// kubeadm's names, or `all`.
    pub name: String,
    pub source: ConfigSource,
    /// Where the kubeconfigs are (`--kubeconfig-dir`, default the kubernetes dir).
    pub kubeconfig_dir: Option<PathBuf>,
    pub restart: bool,
}

pub struct RenewData {
    cfg: Config,
    layout: Layout,
    kubeconfig_dir: PathBuf,
    writer: HostWriter,
    out: Output,
    now: OffsetDateTime,
    algorithm: KeyAlgorithm,
    items: Vec<Item>,
    restart: bool,
    /// The static pods that read a file this run changed.
    changed: BTreeSet<Component>,
    /// kubeforge's own static pods (kubeforge-approver) that read a file this run changed.
    changed_kubeforge: BTreeSet<String>,
    renewed: usize,
}

impl Data for RenewData {
    fn out(&self) -> &Output {
        &self.out
    }
}

fn restart_phase(component: Component, when: fn(&RenewData) -> bool) -> Phase<RenewData> {
    Phase::new(
        component.name(),
        format!("Restart {} and wait until it is Ready", component.name()),
    )
    .run_if(when)
    .run(restart_component)
}

pub fn phases() -> Vec<Phase<RenewData>> {
    vec![
        Phase::new(
            "renew",
            "Renew the certificates, checking every one before writing any",
        )
        .run(renew_all),
        Phase::new(
            "restart",
            "Restart, one at a time, the static pods whose certificates changed",
        )
        .run_if(|d: &RenewData| {
            d.restart && !(d.changed.is_empty() && d.changed_kubeforge.is_empty())
        })
        .children(vec![
            restart_phase(Component::Etcd, |d| d.changed.contains(&Component::Etcd)),
            restart_phase(Component::KubeApiserver, |d| {
                d.changed.contains(&Component::KubeApiserver)
            }),
            restart_phase(Component::KubeControllerManager, |d| {
                d.changed.contains(&Component::KubeControllerManager)
            }),
            restart_phase(Component::KubeScheduler, |d| {
                d.changed.contains(&Component::KubeScheduler)
            }),
            Phase::new(
                approver::POD,
                format!("Restart {} and wait until it runs again", approver::POD),
            )
            .run_if(|d: &RenewData| d.changed_kubeforge.contains(approver::POD))
            .run(restart_approver),
        ]),
    ]
}

/// Every selected item renewed in memory first; nothing is written unless all of them could be.
fn renew_all(d: &mut RenewData, _: &Step) -> Result<()> {
    renew::prefetch(d.algorithm, &d.layout, d.items.len());
    let mut planned: Vec<(&Item, Vec<File>)> = Vec::new();
    for item in &d.items {
        let renewal = renew::renew(
            item,
            &d.cfg,
            &d.layout,
            &d.kubeconfig_dir,
            &d.writer,
            d.algorithm,
            d.now,
        )?;
        match renewal {
            Renewal::Missing => d.out.step(
                "renew",
                &format!("MISSING! {}", item.long_name),
                json!({ "certificate": item.name, "missing": true }),
            ),
            Renewal::ExternalCa => d.out.step(
                "renew",
                &format!(
                    "Detected external {} CA, {} can't be renewed",
                    item.ca, item.long_name
                ),
                json!({ "certificate": item.name, "externalCA": item.ca, "renewed": false }),
            ),
            Renewal::Renewed { files, differences } => {
                for why in differences {
                    d.out.step(
                        "renew",
                        &format!("WARNING: {}: {why} (renewal keeps what the certificate carries, as kubeadm does; to change it, move the old one away and run `kubeforge init phase certs` or `kubeconfig`)", item.name),
                        json!({ "certificate": item.name, "difference": why }),
                    );
                }
                planned.push((item, files));
            }
        }
    }
    for (item, files) in planned {
        let mut changed = false;
        for file in &files {
            changed |= !matches!(
                d.writer.write(&file.path, &file.contents, file.mode)?,
                crate::node::Outcome::Unchanged
            );
        }
        if changed {
            d.changed.extend(item.used_by.iter().copied());
            d.changed_kubeforge
                .extend(item.used_by_kubeforge.iter().cloned());
        }
        d.renewed += 1;
        d.out.step(
            "renew",
            &format!("{} renewed", item.long_name),
            json!({ "certificate": item.name, "renewed": true }),
        );
    }
    Ok(())
}

/// Stops the component's container (the kubelet starts it again) and waits until it is Ready.
fn restart_component(d: &mut RenewData, step: &Step) -> Result<()> {
    let component =
        Component::from_name(step.name).expect("a restart phase is named after its component");
    restart_and_wait(
        &d.cfg,
        &d.layout,
        &d.kubeconfig_dir,
        &d.out,
        component,
        "its certificates changed",
    )
}

/// The approver keeps the client certificate it started with: its container is replaced.
fn restart_approver(d: &mut RenewData, _: &Step) -> Result<()> {
    let pod = StaticPod {
        name: approver::POD,
        manifest: approver::manifest_path(&d.layout),
    };
    let why = "its kubeconfig changed";
    restart_pod_and_wait(&d.cfg, &d.layout, &d.kubeconfig_dir, &d.out, &pod, why)
}

/// A static pod of this node: its name (its container's) and its manifest.
pub(super) struct StaticPod {
    pub name: &'static str,
    pub manifest: PathBuf,
}

/// Restarts `component`'s container on this node (the kubelet starts it again; `why` says for
/// what) and waits until it is Ready; a component without a manifest here is left alone.
pub(super) fn restart_and_wait(
    cfg: &Config,
    layout: &Layout,
    kubeconfig_dir: &Path,
    out: &Output,
    component: Component,
    why: &str,
) -> Result<()> {
    let pod = StaticPod {
        name: component.name(),
        manifest: component.manifest(layout),
    };
    restart_pod_and_wait(cfg, layout, kubeconfig_dir, out, &pod, why)
}

/// `restart_and_wait` for any static pod of this node.
pub(super) fn restart_pod_and_wait(
    cfg: &Config,
    layout: &Layout,
    kubeconfig_dir: &Path,
    out: &Output,
    static_pod: &StaticPod,
    why: &str,
) -> Result<()> {
    let name = static_pod.name;
    if !static_pod.manifest.exists() {
        out.step(
            "restart",
            &format!(
                "{name} does not run here (no manifest in {}): not restarted",
                layout.manifests_dir.display()
            ),
            json!({ "component": name, "restarted": false }),
        );
        return Ok(());
    }
    let pod = format!("{name}-{}", cfg.init.node_registration.name);
    let cri = cfg.init.node_registration.cri_socket.clone();
    let admin = kubeconfig_dir.join("admin.conf");
    let server = crate::health::api_server_url(layout).unwrap_or_else(|_| cfg.local_endpoint_url());
    let (before, took) = crate::block_on(async {
        let mut runtime = Runtime::connect(&cri).await?;
        let before = runtime.restart(&pod, GRACE).await?;
        let shown = if before.id.is_empty() {
            "none running".to_string()
        } else {
            before.id.chars().take(13).collect()
        };
        out.step(
            "restart",
            &format!("Restarted {name} (container {shown}): {why}; waiting until it is Ready"),
            json!({ "component": name, "container": before.id }),
        );
        let client = crate::kube::polling_client(&admin, Some(&server)).await?;
        let took = crate::health::wait_pod_restarted(
            cfg,
            out,
            name,
            &static_pod.manifest,
            &before,
            &client,
            crate::health::Until {
                mirror: true,
                limit: cfg.init.timeouts.control_plane_component_health_check.0,
                since: None,
            },
        )
        .await?
        .0;
        Ok::<_, anyhow::Error>((before, took))
    })?;
    tracing::info!("{pod}: container {} replaced", before.id);
    crate::health::announce_ready(out, name, took);
    Ok(())
}

/// `certs renew` on the node laid out under `kubernetes_dir`.
pub fn run(
    options: RenewOptions,
    kubernetes_dir: &Path,
    kubelet_dir: &Path,
    out: Output,
) -> Result<()> {
    let (cfg, known) = load_config(&options.source, kubernetes_dir, &out, "renew")?;
    let kubeconfig_dir = options
        .kubeconfig_dir
        .clone()
        .unwrap_or_else(|| kubernetes_dir.to_path_buf());
    let items: Vec<Item> = renew::items_on_node(&cfg, &kubeconfig_dir)
        .into_iter()
        .filter(|i| options.name == "all" || i.name == options.name)
        .collect();
    if items.is_empty() {
        bail!(BadInput(format!("{:?} is not a certificate kubeforge renews here (with an external etcd the etcd ones are not)", options.name)));
    }
    let layout = Layout::new(
        kubernetes_dir,
        kubelet_dir,
        Path::new(&cfg.cluster.certificates_dir),
        Path::new("/var/lib/etcd"),
    );
    let mut writer = HostWriter::open(&layout, false)?;
    let non_root = crate::rootless::node_runs_non_root(&layout);
    crate::rootless::grant_all(&mut writer, &cfg, &layout, non_root);
    let algorithm = if known {
        KeyAlgorithm::Config(cfg.cluster.encryption_algorithm)
    } else {
        KeyAlgorithm::AsBefore
    };
    let runs_pods = Component::ALL.iter().any(|c| c.manifest(&layout).exists());
    let mut data = RenewData {
        kubeconfig_dir,
        now: OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .expect("0 is a valid nanosecond"),
        restart: options.restart && runs_pods,
        changed: BTreeSet::new(),
        changed_kubeforge: BTreeSet::new(),
        renewed: 0,
        cfg,
        layout,
        writer,
        out,
        algorithm,
        items,
    };
    super::run(&phases(), &mut data, &Selection::default())?;
    closing(&data, &options);
    Ok(())
}

/// kubeadm's closing words without the restarts; with them, what was renewed and restarted.
fn closing(data: &RenewData, options: &RenewOptions) {
    if !data.restart && !data.out.json() {
        if options.name == "all" {
            println!("\n{RESTART_YOURSELF}");
        }
        for pod in &data.changed_kubeforge {
            println!("The {pod} static pod reads a renewed kubeconfig: restart it too.");
        }
    } else if data.restart {
        let restarted: Vec<&str> = Component::ALL
            .iter()
            .filter(|c| data.changed.contains(c))
            .map(|c| c.name())
            .chain(data.changed_kubeforge.iter().map(String::as_str))
            .collect();
        data.out.step("restart", &format!("Done: {} certificates renewed; {} restarted one at a time, each Ready again before the next", data.renewed, if restarted.is_empty() { "nothing needed to be".to_string() } else { restarted.join(", ") }), json!({ "renewed": data.renewed, "restarted": restarted }));
    }
}

/// `certs generate-csr`: every key, CSR and key-only kubeconfig, none of which may exist yet.
pub fn generate_csr(
    cfg: &Config,
    kubernetes_dir: &Path,
    kubeconfig_dir: &Path,
    out: Output,
) -> Result<()> {
    let layout = Layout::new(
        kubernetes_dir,
        Path::new("/var/lib/kubelet"),
        Path::new(&cfg.cluster.certificates_dir),
        Path::new("/var/lib/etcd"),
    );
    let all = crate::certs::csr::files(cfg, &layout, kubeconfig_dir)?;
    let mut writer = HostWriter::open(&layout, false)?;
    for (name, files) in &all {
        for file in files {
            writer.write(&file.path, &file.contents, file.mode)?;
        }
        out.step("certs", &format!("Generated a key and a CSR for {name}"), json!({ "certificate": name, "files": files.iter().map(|f| &f.path).collect::<Vec<_>>() }));
    }
    Ok(())
}

//! `kubeforge upgrade apply VERSION` and `upgrade node` (contract: kubeadm-upgrade-contract §3,
//! §5), kubeadm's phases and names: `preflight`, `control-plane` (one child per static pod, in
//! kubeadm's order etcd, kube-apiserver, kube-controller-manager, kube-scheduler), `upload-config`,
//! `kubeconfig`, `kubelet-config`, `bootstrap-token`, `addon`, `post-upgrade`.
//!
//! Unlike kubeadm, a component is followed through the container runtime and its own health
//! endpoint (not the mirror pod's phase), so one that crash-loops, is refused its image or never
//! turns Ready is named within seconds; and the runner's undo rolls the node back by itself: the
//! old manifests in reverse order, each old component waited for until Ready, etcd's data restored
//! from the snapshot taken through the etcd API when the old etcd cannot start on its own data.
//! The cluster's `kubeadm-config` is the point of no return: once it says the new version, a
//! failure is completed by running the command again, not rolled back.

mod after;
mod control_plane;
mod etcd;
pub mod plan;
mod preflight;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use serde_json::json;

use super::{Data, Env, Phase, Selection};
use crate::config::{Config, Timeouts};
use crate::etcd::snapshot::Snapshot;
use crate::manifests::Component;
use crate::node::Layout;
use crate::output::Output;
use crate::upgrade::{self, Stored, ThisNode};

/// `apply` moves the cluster to a version; `node` brings another node to the version the
/// cluster's configuration says (what `apply` uploaded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Apply,
    Node,
}

/// The operator's request: flags over `--config`'s UpgradeConfiguration.
#[derive(Debug, Clone)]
pub struct UpgradeOptions {
    pub mode: Mode,
    /// `apply`'s target; `node` takes the cluster's.
    pub version: Option<String>,
    /// `--kubeconfig` (default `<kubernetes-dir>/admin.conf`, on a worker kubelet.conf).
    pub kubeconfig: Option<PathBuf>,
    pub yes: bool,
    pub force: bool,
    pub dry_run: bool,
    pub etcd_upgrade: bool,
    pub certificate_renewal: bool,
    pub allow_experimental: bool,
    pub allow_rc: bool,
    pub print_config: bool,
    pub patches: Option<String>,
    pub ignore_preflight_errors: Vec<String>,
    pub skip_phases: Vec<String>,
    pub image_pull_policy: String,
    pub image_pull_serial: bool,
    pub timeouts: Timeouts,
}

/// A manifest this run replaced: what to put back.
struct Swap {
    component: Component,
    old_manifest: String,
}

/// What an upgrade's phases work with.
pub struct UpgradeData {
    /// The node's Env at the target version (its writer keeps this run's backups).
    pub env: Env,
    /// The same node at the version the cluster's configuration says now.
    pub old: Config,
    pub client: kube::Client,
    pub opts: UpgradeOptions,
    pub node: ThisNode,
    pub stored: Stored,
    /// The API server's version when the run began.
    pub cluster_version: String,
    pub target: String,
    swaps: Vec<Swap>,
    /// Whether this run replaced any manifest (what a failure's message must account for).
    swapped_any: bool,
    /// The containers this run started, for the mirror-pods step.
    fresh: Vec<(Component, crate::cri::Running)>,
    snapshot: Option<(PathBuf, Snapshot)>,
    /// Whether the addons are this node's to upgrade (every API server runs the target).
    addons_due: bool,
    started: Instant,
}

impl Data for UpgradeData {
    fn out(&self) -> &Output {
        &self.env.out
    }
}

impl UpgradeData {
    fn limit(&self) -> Duration {
        self.opts.timeouts.upgrade_manifests.0
    }

    fn dry_run(&self) -> bool {
        self.env.writer.changes_nothing()
    }

    fn control_plane(&self) -> bool {
        self.node.control_plane
    }

    fn say(&self, phase: &str, text: &str, detail: serde_json::Value) {
        self.env.out.step(phase, text, detail);
    }
}

/// The phases of `mode`.
pub fn phases(mode: Mode) -> Vec<Phase<UpgradeData>> {
    let control_plane = Phase::new(
        "control-plane",
        match mode {
            Mode::Apply => "Upgrade the control plane",
            Mode::Node => "Upgrade the control plane instance deployed on this node, if any",
        },
    )
    .run_if_noted(
        UpgradeData::control_plane,
        "[upgrade/control-plane] Skipping phase. Not a control plane node.",
    )
    .run(control_plane::announce)
    .children(
        Component::ALL
            .into_iter()
            .map(|c| {
                Phase::new(c.name(), format!("Upgrade {}", c.name()))
                    .run(control_plane::upgrade_component)
                    .undo(control_plane::undo_component)
            })
            .chain([Phase::new(
                "mirror-pods",
                "Wait until the kubelet reports the new pods Ready in their mirror pods",
            )
            .run(control_plane::mirror_pods)])
            .collect(),
    );
    // On another node, the control plane completing is the point of no return.
    let control_plane = match mode {
        Mode::Apply => control_plane,
        Mode::Node => control_plane.commits(),
    };
    let mut table = vec![
        Phase::new("preflight", "Run preflight checks before upgrade").run(preflight::run),
        control_plane,
    ];
    if mode == Mode::Apply {
        table.push(
            Phase::new(
                "upload-config",
                "Upload the kubeadm and kubelet configurations to ConfigMaps",
            )
            .commits()
            .children(vec![
                Phase::new(
                    "kubeadm",
                    "Upload the kubeadm ClusterConfiguration to a ConfigMap",
                )
                .run(after::upload_kubeadm)
                .undo(after::undo_upload),
                Phase::new("kubelet", "Upload the kubelet configuration to a ConfigMap")
                    .run(after::upload_kubelet)
                    .undo(after::undo_upload),
            ]),
        );
    }
    table.push(
        Phase::new("kubeconfig", "Upgrade kubeconfig files for this node")
            .run_if_noted(
                UpgradeData::control_plane,
                "[upgrade/kubeconfig] Skipping phase. Not a control plane node.",
            )
            .run(after::kubeconfig),
    );
    table.push(
        Phase::new(
            "kubelet-config",
            "Upgrade the kubelet configuration for this node",
        )
        .run(after::kubelet_config),
    );
    if mode == Mode::Apply {
        table.push(
            Phase::new(
                "bootstrap-token",
                "Configures bootstrap token and cluster-info RBAC rules",
            )
            .run(after::bootstrap_token),
        );
    }
    table.push(
        Phase::new("addon", "Upgrade the default kubeadm addons")
            .run_if_noted(
                UpgradeData::control_plane,
                "[upgrade/addon] Skipping the addon phases. Not a control plane node.",
            )
            .run(after::addons_due)
            .children(vec![
                Phase::new("coredns", "Upgrade the CoreDNS addon").run(after::coredns),
                Phase::new("kube-proxy", "Upgrade the kube-proxy addon").run(after::kube_proxy),
            ]),
    );
    table.push(Phase::new("post-upgrade", "Run post upgrade tasks").run(after::post_upgrade));
    table
}

/// The kubeconfig that reads the cluster: `--kubeconfig`, else admin.conf, else (a worker's
/// `upgrade node`) kubelet.conf.
fn kubeconfig(opts: &UpgradeOptions, layout: &Layout) -> PathBuf {
    if let Some(k) = &opts.kubeconfig {
        return k.clone();
    }
    let admin = layout.kubeconfig("admin.conf");
    if opts.mode == Mode::Node && !admin.exists() {
        return layout.kubeconfig("kubelet.conf");
    }
    admin
}

/// The stored configuration and the API server's version. An API server that is (re)starting —
/// a run killed after swapping it — is waited for until ready (the caller bounds the wait).
async fn read_cluster(
    client: &kube::Client,
    out: &Output,
    kubeconfig: &Path,
) -> Result<(upgrade::Stored, String)> {
    let mut waiting = false;
    loop {
        if crate::health::readyz(client).await {
            let attempt = async {
                let stored = upgrade::read_stored(client).await?;
                let version = client.apiserver_version().await?.git_version;
                Ok::<_, anyhow::Error>((stored, version))
            };
            match attempt.await {
                Err(e) if crate::kube::unavailable(&e) => {}
                done => return done,
            }
        }
        if !waiting {
            let text = format!(
                "Waiting for the API server behind {} to be ready",
                kubeconfig.display()
            );
            out.step("upgrade", &text, json!({ "waitingForApiServer": true }));
            waiting = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Reads the cluster and this node, and opens the node at the target version.
fn open(
    opts: UpgradeOptions,
    kubernetes_dir: &Path,
    kubelet_dir: &Path,
    out: Output,
) -> Result<UpgradeData> {
    let started = Instant::now();
    let probe = Layout::new(kubernetes_dir, kubelet_dir, Path::new(""), Path::new(""));
    let kubeconfig = kubeconfig(&opts, &probe);
    let limit = opts.timeouts.kubernetes_api_call.0;
    crate::kube::set_call_timeout(limit);
    let (client, stored, cluster_version) = crate::block_on(async {
        let client = crate::kube::client(&kubeconfig, None).await?;
        let read = read_cluster(&client, &out, &kubeconfig);
        let (stored, version) = tokio::time::timeout(limit, read).await.map_err(|_| {
            anyhow!(
                "the API server behind {} did not answer within {limit:?}",
                kubeconfig.display()
            )
        })??;
        Ok::<_, anyhow::Error>((client, stored, version))
    })
    .with_context(|| {
        format!(
            "reading the cluster's configuration through {}",
            kubeconfig.display()
        )
    })?;
    let prefix = if opts.mode == Mode::Apply {
        "upgrade"
    } else {
        "upgrade/config"
    };
    out.step(prefix, "Reading configuration from the \"kubeadm-config\" ConfigMap in namespace \"kube-system\"...", json!({ "configMap": "kube-system/kubeadm-config" }));
    out.step(prefix, "Use 'kubeforge init phase upload-config kubeadm --config your-config-file' to re-upload it.", json!({}));
    let node = upgrade::this_node(&probe);
    let stored_version = serde_yaml::from_str::<serde_yaml::Value>(&stored.cluster_configuration)
        .ok()
        .and_then(|v| v.get("kubernetesVersion")?.as_str().map(str::to_string))
        .unwrap_or_else(|| cluster_version.clone());
    let target = match (&opts.version, opts.mode) {
        (Some(v), _) => normalize(v),
        (None, Mode::Node) => stored_version.clone(),
        (None, Mode::Apply) => {
            return Err(crate::BadInput("upgrade apply needs the version to upgrade to: kubeforge upgrade apply VERSION (or apply.kubernetesVersion in --config)".into()).into())
        }
    };
    let patches = opts.patches.as_deref();
    let old = upgrade::node_config(
        &stored,
        &node,
        &stored_version,
        patches,
        &opts.timeouts,
        &probe,
    )?;
    let mut new = upgrade::node_config(&stored, &node, &target, patches, &opts.timeouts, &probe)?;
    new.init.dry_run = opts.dry_run;
    new.init.node_registration.image_pull_policy = opts.image_pull_policy.clone();
    new.init.node_registration.image_pull_serial = Some(opts.image_pull_serial);
    let mut env = Env::open(new, kubernetes_dir, kubelet_dir, None, out)?;
    env.name_replaced = false;
    Ok(UpgradeData {
        env,
        old,
        client,
        opts,
        node,
        stored,
        cluster_version,
        target,
        swaps: Vec::new(),
        swapped_any: false,
        fresh: Vec::new(),
        snapshot: None,
        addons_due: false,
        started,
    })
}

/// `1.36.3` → `v1.36.3`.
fn normalize(version: &str) -> String {
    if version.starts_with('v') {
        version.to_string()
    } else {
        format!("v{version}")
    }
}

/// Runs `upgrade apply` or `upgrade node`; on a failure the node is rolled back and the error says
/// where it stands.
pub fn run(
    opts: UpgradeOptions,
    selection: Selection,
    kubernetes_dir: &Path,
    kubelet_dir: &Path,
    out: Output,
) -> Result<()> {
    let selection = Selection {
        skip: opts.skip_phases.clone(),
        ..selection
    };
    let mode = opts.mode;
    let mut d = open(opts, kubernetes_dir, kubelet_dir, out)?;
    let result = super::run(&phases(mode), &mut d, &selection);
    let took = d.started.elapsed().as_secs_f64();
    if let Err(e) = result {
        if !d.swapped_any {
            return Err(e);
        }
        let old = d.old.cluster.kubernetes_version.clone();
        let undone = !format!("{e:#}").contains("undoing failed");
        if undone {
            control_plane::follow_mirror_pods(&mut d);
        }
        return Err(if undone {
            e.context(format!("rolled back after {took:.1} s: this node runs its control plane at {old} again, every component Ready"))
        } else {
            e.context(
                "the rollback did not complete: see the undo lines above for what is not back",
            )
        });
    }
    if d.dry_run() {
        d.env.finish(None);
        d.say(
            "upgrade/successful",
            "Finished dryrunning successfully!",
            json!({ "dryRun": true }),
        );
        return Ok(());
    }
    match mode {
        Mode::Apply => {
            d.say("upgrade", &format!("SUCCESS! A control plane node of your cluster was upgraded to {:?} in {took:.1} s.", d.target), json!({ "success": true, "version": d.target, "seconds": took }));
            d.say("upgrade", "Now please proceed with upgrading the rest of the nodes by following the right order.", json!({}));
        }
        Mode::Node => {
            d.say(
                "upgrade",
                &format!(
                    "The configuration for this node was successfully upgraded in {took:.1} s!"
                ),
                json!({ "success": true, "version": d.target, "seconds": took }),
            );
            d.say("upgrade", "Now you should go ahead and upgrade the kubelet package using your package manager.", json!({}));
        }
    }
    Ok(())
}

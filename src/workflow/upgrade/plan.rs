//! `upgrade plan [VERSION]` and `upgrade diff [VERSION]`: read-only. The plan offers what this
//! kubeforge's version table knows (no network), in kubeadm's text or as its `UpgradePlan`; the
//! diff shows each manifest as the upgrade would rewrite it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Result};
use serde_json::json;

use super::control_plane::render;
use crate::config::{semver, Timeouts};
use crate::manifests::{self, Component};
use crate::node::Layout;
use crate::output::Output;
use crate::upgrade::{self, manifest, plan, policy, Stored};

/// `upgrade plan`'s and `upgrade diff`'s request.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    pub version: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    pub etcd_upgrade: bool,
    pub ignore_preflight_errors: Vec<String>,
    pub print_config: bool,
    pub context_lines: usize,
    pub timeouts: Timeouts,
}

fn read_cluster(
    opts: &ReadOptions,
    layout: &Layout,
    with_state: bool,
) -> Result<(kube::Client, Stored, Option<plan::ClusterState>)> {
    let kubeconfig = opts
        .kubeconfig
        .clone()
        .unwrap_or_else(|| layout.kubeconfig("admin.conf"));
    let limit = opts.timeouts.kubernetes_api_call.0;
    crate::block_on(async {
        let client = crate::kube::client(&kubeconfig, None).await?;
        let read = async {
            let stored = upgrade::read_stored(&client).await?;
            let state = match with_state {
                true => Some(upgrade::cluster_state(&client).await?),
                false => None,
            };
            Ok::<_, anyhow::Error>((stored, state))
        };
        let (stored, state) = tokio::time::timeout(limit.max(Duration::from_secs(5)), read)
            .await
            .map_err(|_| anyhow!("the API server did not answer within {limit:?}"))??;
        Ok((client, stored, state))
    })
}

fn layout(kubernetes_dir: &Path, kubelet_dir: &Path) -> Layout {
    Layout::new(
        kubernetes_dir,
        kubelet_dir,
        &kubernetes_dir.join("pki"),
        Path::new("/var/lib/etcd"),
    )
}

/// `upgrade plan`.
pub fn plan(
    opts: &ReadOptions,
    kubernetes_dir: &Path,
    kubelet_dir: &Path,
    out: Output,
) -> Result<()> {
    let layout = layout(kubernetes_dir, kubelet_dir);
    let say = |phase: &str, text: &str| {
        if !out.json() {
            println!("[{phase}] {text}");
        }
    };
    let (client, stored, state) = read_cluster(opts, &layout, true)?;
    let state = state.expect("asked for");
    say("upgrade/config", "Reading configuration from the \"kubeadm-config\" ConfigMap in namespace \"kube-system\"...");
    let node = upgrade::this_node(&layout);
    let cfg = upgrade::node_config(
        &stored,
        &node,
        &state.version,
        None,
        &opts.timeouts,
        &layout,
    )?;
    say("upgrade", "Running cluster health checks");
    health_checks(opts, &out, &client)?;
    if opts.print_config {
        say(
            "upgrade/config",
            &format!(
                "The cluster's configuration:\n{}",
                stored.cluster_configuration
            ),
        );
    }
    say("upgrade", "Fetching available versions to upgrade to");
    say(
        "upgrade/versions",
        &format!("Cluster version: {}", state.version),
    );
    say(
        "upgrade/versions",
        &format!(
            "kubeforge knows Kubernetes up to {}",
            crate::versions::newest().latest
        ),
    );
    let upgrades = available_upgrades(opts, &cfg, &state, &say);
    if out.json() {
        out.print_json(&plan::json(&upgrades, &state));
        return Ok(());
    }
    if upgrades.is_empty() {
        println!("\nAwesome, you're up-to-date! Enjoy!");
    }
    print!("\n{}", plan::text(&upgrades, &state));
    Ok(())
}

/// The plan's cluster health check (control-plane Nodes Ready); `-o json` prints the plan alone,
/// so its warnings go to stderr then.
fn health_checks(opts: &ReadOptions, out: &Output, client: &kube::Client) -> Result<()> {
    let not_ready = crate::block_on(not_ready_control_planes(client))?;
    let findings: Vec<_> = (!not_ready.is_empty())
        .then(|| crate::preflight::Finding {
            check: "ControlPlaneNodesReady".into(),
            severity: crate::preflight::Severity::Error,
            message: format!("there are NotReady control-planes in the cluster: {not_ready:?}"),
        })
        .into_iter()
        .collect();
    let text = Output {
        format: crate::output::Format::Text,
    };
    let findings = if out.json() {
        let ignored = |check: &str| {
            opts.ignore_preflight_errors
                .iter()
                .any(|i| i == "all" || i.eq_ignore_ascii_case(check))
        };
        let (warned, kept): (Vec<_>, Vec<_>) =
            findings.into_iter().partition(|f| ignored(&f.check));
        warned
            .iter()
            .for_each(|f| eprintln!("[upgrade] [WARNING {}]: {}", f.check, f.message));
        kept
    } else {
        findings
    };
    crate::preflight::report(
        &text,
        "upgrade",
        findings,
        &opts.ignore_preflight_errors,
        true,
    )?;
    Ok(())
}

/// The upgrades on offer, each with its component targets; warns of an etcd step it refuses.
fn available_upgrades(
    opts: &ReadOptions,
    cfg: &crate::config::Config,
    state: &plan::ClusterState,
    say: &dyn Fn(&str, &str),
) -> Vec<plan::AvailableUpgrade> {
    let offers = plan::offers(&state.version, opts.version.as_deref());
    let mut upgrades = Vec::new();
    for offer in &offers {
        say(
            "upgrade/versions",
            &format!("Latest {}: {}", offer.description, offer.version),
        );
        let mut target = cfg.clone();
        target.cluster.kubernetes_version = offer.version.clone();
        let etcd = (opts.etcd_upgrade && state.etcd_is_local())
            .then(|| manifests::etcd_image_tag(&target));
        if let Some(to) = &etcd {
            for current in state
                .components
                .get("etcd")
                .into_iter()
                .flat_map(|m| m.keys())
            {
                if let Err(why) = policy::etcd_step(current, to) {
                    say("upgrade/versions", &format!("WARNING: {why}"));
                }
            }
        }
        let dns = manifests::coredns_image(&target);
        let targets = plan::Targets {
            etcd,
            dns: dns.rsplit(':').next().unwrap_or_default().to_string(),
        };
        upgrades.push(plan::available(state, offer, &targets));
    }
    upgrades
}

async fn not_ready_control_planes(client: &kube::Client) -> Result<Vec<String>> {
    use k8s_openapi::api::core::v1::Node;
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    let list = nodes
        .list(&kube::api::ListParams::default().labels("node-role.kubernetes.io/control-plane"))
        .await?;
    Ok(list
        .items
        .iter()
        .filter(|n| !crate::kube::node_ready(n))
        .filter_map(|n| n.metadata.name.clone())
        .collect())
}

/// `upgrade diff`: every manifest on this node against what the upgrade would write (kubeadm
/// shows the API server, controller-manager and scheduler; kubeforge etcd too).
pub fn diff(
    opts: &ReadOptions,
    kubernetes_dir: &Path,
    kubelet_dir: &Path,
    out: Output,
) -> Result<()> {
    let layout = layout(kubernetes_dir, kubelet_dir);
    let (_, stored, _) = read_cluster(opts, &layout, false)?;
    let node = upgrade::this_node(&layout);
    let version = match &opts.version {
        Some(v) => super::normalize(v),
        None => {
            let value: serde_yaml::Value = serde_yaml::from_str(&stored.cluster_configuration)?;
            value["kubernetesVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }
    };
    if semver(&version).is_none() {
        return Err(crate::BadInput(format!(
            "{version:?} is not a Kubernetes version like v1.36.3"
        ))
        .into());
    }
    let cfg = upgrade::node_config(&stored, &node, &version, None, &opts.timeouts, &layout)?;
    let layout = Layout::new(
        kubernetes_dir,
        kubelet_dir,
        Path::new(&cfg.cluster.certificates_dir),
        &layout.etcd_data_dir,
    );
    for component in Component::ALL {
        let path = component.manifest(&layout);
        let Some(live) = upgrade::read_opt(&path) else {
            continue;
        };
        let new = render(&layout, &cfg, component, &live)?;
        let text = manifest::unified(
            &path.display().to_string(),
            "new manifest",
            &live,
            &new,
            opts.context_lines,
        );
        if out.json() {
            out.print_json(
                &json!({ "component": component.name(), "manifest": path, "diff": text }),
            );
        } else {
            print!("{text}");
        }
    }
    Ok(())
}

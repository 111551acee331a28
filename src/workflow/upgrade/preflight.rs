//! The upgrade's preflight: everything that would make it fail is found before anything changes —
//! kubeadm's version-skew policy, control-plane nodes Ready, the manifests in place; and what
//! kubeadm does not check: an etcd minor skipped, an unhealthy or quorum-less etcd, images missing
//! (pulled first when the pull policy allows), and a manifest edited by hand since it was written
//! (kubeadm would silently drop the edit; refused, with its diff, unless `--force`).

use std::io::IsTerminal;

use anyhow::{bail, Result};
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use serde_json::json;

use super::{control_plane, Mode, UpgradeData};
use crate::manifests::{self, Component};
use crate::preflight::{Finding, Severity};
use crate::upgrade::{manifest, policy};
use crate::workflow::Step;
use crate::BadInput;

fn error(check: &str, message: String) -> Finding {
    Finding {
        check: check.into(),
        severity: Severity::Error,
        message,
    }
}

pub fn run(d: &mut UpgradeData, _: &Step) -> Result<()> {
    let enforce = !d.dry_run();
    if enforce && !nix::unistd::geteuid().is_root() {
        bail!(BadInput(
            "[upgrade/preflight] IsPrivilegedUser: user is not running as root (use --dry-run to see what the upgrade would change)".into()
        ));
    }
    d.say("upgrade/preflight", "Running preflight checks", json!({}));
    if d.opts.mode == Mode::Apply {
        version_policy(d)?;
    }
    let mut findings = Vec::new();
    // A worker's kubelet.conf may read only its own Node: its upgrade is its kubelet config.
    if d.control_plane() {
        control_plane_nodes_ready(d, &mut findings)?;
        manifests_in_place(d, &mut findings);
        etcd_ready(d, &mut findings)?;
        images(d, &mut findings);
        hand_edits(d)?;
    }
    crate::preflight::report(
        &d.env.out,
        "upgrade/preflight",
        findings,
        &d.opts.ignore_preflight_errors,
        enforce,
    )?;
    if d.opts.print_config {
        let text = crate::cluster::objects::cluster_configuration_yaml(&d.env.cfg)?;
        d.say(
            "upgrade/config",
            &format!("The configuration for this upgrade:\n{text}"),
            json!({ "clusterConfiguration": text }),
        );
    }
    confirm(d)
}

fn version_policy(d: &mut UpgradeData) -> Result<()> {
    d.say(
        "upgrade/preflight",
        &format!(
            "You have chosen to upgrade the cluster version to {:?}",
            d.target
        ),
        json!({ "target": d.target }),
    );
    d.say(
        "upgrade/versions",
        &format!("Cluster version: {}", d.cluster_version),
        json!({ "cluster": d.cluster_version }),
    );
    let newest = &crate::versions::newest().latest;
    d.say(
        "upgrade/versions",
        &format!("kubeforge knows Kubernetes up to {newest}"),
        json!({ "newestKnown": newest }),
    );
    let kubelets = crate::block_on(async {
        let nodes: kube::Api<Node> = kube::Api::all(d.client.clone());
        let list = nodes.list(&ListParams::default()).await.ok()?;
        Some(
            list.items
                .into_iter()
                .filter_map(|n| Some(n.status?.node_info?.kubelet_version))
                .collect::<Vec<_>>(),
        )
    });
    let verdict = policy::enforce(&policy::Versions {
        cluster: Some(&d.cluster_version),
        target: &d.target,
        kubelets: kubelets.as_deref(),
        allow_experimental: d.opts.allow_experimental,
        allow_rc: d.opts.allow_rc,
    });
    if let Some(refusal) = policy::refusal(&verdict, d.opts.force) {
        bail!(BadInput(refusal));
    }
    if !verdict.skippable.is_empty() {
        d.say("upgrade/preflight", &format!("Found {} potential version compatibility errors but skipping since the --force flag is set: {}", verdict.skippable.len(), verdict.skippable.join(", ")), json!({ "forced": verdict.skippable }));
    }
    Ok(())
}

fn control_plane_nodes_ready(d: &UpgradeData, findings: &mut Vec<Finding>) -> Result<()> {
    let nodes = crate::block_on(async {
        let api: kube::Api<Node> = kube::Api::all(d.client.clone());
        api.list(&ListParams::default().labels("node-role.kubernetes.io/control-plane"))
            .await
    })?;
    let not_ready: Vec<String> = nodes
        .items
        .iter()
        .filter(|n| !crate::kube::node_ready(n))
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    if !not_ready.is_empty() {
        findings.push(error(
            "ControlPlaneNodesReady",
            format!("there are NotReady control-planes in the cluster: {not_ready:?}"),
        ));
    }
    Ok(())
}

fn manifests_in_place(d: &UpgradeData, findings: &mut Vec<Finding>) {
    let external = d.env.cfg.cluster.is_external_etcd();
    let missing: Vec<String> = Component::ALL
        .into_iter()
        .filter(|c| !(external && *c == Component::Etcd))
        .map(|c| c.manifest(&d.env.layout))
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !missing.is_empty() {
        findings.push(error("StaticPodManifest", format!("The control plane seems to be Static Pod-hosted, but some of the manifests don't seem to exist on disk. Manifest files not found: {missing:?}")));
    }
}

/// The etcd step this upgrade takes: refused when it skips a minor; an etcd that is to change
/// must be healthy with its quorum.
fn etcd_ready(d: &UpgradeData, findings: &mut Vec<Finding>) -> Result<()> {
    if d.env.cfg.cluster.is_external_etcd() || !d.opts.etcd_upgrade {
        return Ok(());
    }
    let Some(current) = crate::upgrade::manifest_version(&d.env.layout, Component::Etcd) else {
        return Ok(());
    };
    let target = manifests::etcd_image_tag(&d.env.cfg);
    if let Err(why) = policy::etcd_step(&current, &target) {
        bail!("[upgrade/preflight] {why}");
    }
    match super::etcd::etcd_health(d) {
        Ok(health) => {
            if let Some(problem) = health.problem() {
                findings.push(error("EtcdClusterHealth", problem));
            }
        }
        Err(e) => findings.push(error("EtcdClusterHealth", format!("{e:#}"))),
    }
    Ok(())
}

/// The images this node runs at the target version (etcd's only when this run upgrades it): on
/// the node, or pulled now as the pull policy allows; kubeadm's `ImagePull` check.
fn images(d: &UpgradeData, findings: &mut Vec<Finding>) {
    let cfg = &d.env.cfg;
    let mut wanted = crate::images::for_node(cfg);
    if cfg.cluster.is_external_etcd() || !d.opts.etcd_upgrade {
        wanted.retain(|i| !i.contains("/etcd:"));
    }
    let effects = d.env.effects();
    findings.extend(effects.pull_images(&d.env, "upgrade/preflight", &wanted));
}

/// Every manifest must be what the cluster's configuration renders (at the current or the target
/// version, with or without this run's `--patches`), up to probe timings and images: anything
/// else was edited by hand, and the upgrade would drop the edit.
fn hand_edits(d: &UpgradeData) -> Result<()> {
    let mut edited = Vec::new();
    for component in Component::ALL {
        let path = component.manifest(&d.env.layout);
        let Some(live) = crate::upgrade::read_opt(&path) else {
            continue;
        };
        // As written for the cluster's version before or after, or for the version the node
        // still runs (`upgrade node` after the cluster moved on), with and without the patches.
        let mut running = d.old.clone();
        if let Some(version) = crate::upgrade::manifest_version(&d.env.layout, component)
            .filter(|v| v.starts_with('v'))
        {
            running.cluster.kubernetes_version = version;
        }
        let mut written = Vec::new();
        for cfg in [&d.old, &d.env.cfg, &running] {
            let mut unpatched = cfg.clone();
            unpatched.init.patches = None;
            for cfg in [cfg, &unpatched] {
                written.push(control_plane::render(&d.env.layout, cfg, component, &live)?);
            }
        }
        if !manifest::as_written(&live, &written) {
            let diff = manifest::unified(
                &path.display().to_string(),
                &format!(
                    "{} as the cluster's configuration writes it",
                    component.name()
                ),
                &live,
                &written[0],
                3,
            );
            edited.push((component, diff));
        }
    }
    if edited.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = edited.iter().map(|(c, _)| c.name()).collect();
    for (component, diff) in &edited {
        d.say("upgrade/preflight", &format!("{} was edited by hand since it was written; the upgrade writes it from the cluster's configuration and drops this:\n{diff}", component.name()), json!({ "component": component.name(), "handEdited": true, "diff": diff }));
    }
    if d.opts.force || d.dry_run() {
        d.say(
            "upgrade/preflight",
            &format!("Going on with the hand-edited {names:?} (--force): their edits will be lost"),
            json!({ "forced": names }),
        );
        return Ok(());
    }
    bail!(BadInput(format!("[upgrade/preflight] the manifests of {names:?} were edited by hand (the diffs are above): the upgrade would drop those edits. Carry them in the kubeadm-config ConfigMap (extraArgs, extraVolumes, extraEnvs) or in --patches, or pass --force to lose them")))
}

/// `apply` asks before it changes anything (kubeadm's prompt); `node` does not, as kubeadm's.
fn confirm(d: &UpgradeData) -> Result<()> {
    if d.opts.mode == Mode::Node || d.opts.yes || d.opts.force || d.dry_run() {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!(BadInput("[upgrade] won't proceed without confirmation: pass --yes (standard input is not a terminal)".into()));
    }
    eprint!("[upgrade] Are you sure you want to proceed? [y/N]: ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y") {
        bail!(BadInput(
            "won't proceed; the user didn't answer (Y|y) in order to continue".into()
        ));
    }
    Ok(())
}

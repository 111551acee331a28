//! The phases of a join, with kubeadm's names: `preflight`, `control-plane-prepare` (a
//! control-plane join: the shared certificates downloaded and decrypted, this node's own
//! certificates, kubeconfigs and manifests), then `kubelet-start`: the cluster CA and the
//! bootstrap kubeconfig, the kubelet's files from the cluster's uploaded configuration, the
//! kubelet started, and its TLS bootstrap followed until the Node is registered.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use k8s_openapi::api::core::v1::Node;
use serde_json::json;

use super::{Context, Phase, Selection};

pub const KUBELET_START: Phase = Phase {
    name: "kubelet-start",
    description: "Write kubelet settings, certificates and (re)start the kubelet",
    subphases: Vec::new,
    run,
};

pub const CONTROL_PLANE_PREPARE: Phase = Phase {
    name: "control-plane-prepare",
    description: "Prepare the machine for serving a control plane",
    subphases: || {
        [
            ("download-certs", "Download certificates shared among control-plane nodes from the kubeadm-certs Secret"),
            ("certs", "Generate the certificates for the new control plane components"),
            ("kubeconfig", "Generate the kubeconfig for the new control plane components"),
            ("control-plane", "Generate the manifests for the new control plane components"),
        ]
        .iter()
        .map(|(n, d)| (n.to_string(), d.to_string()))
        .collect()
    },
    run: run_control_plane_prepare,
};

fn run_control_plane_prepare(ctx: &mut Context, sel: &Selection) -> Result<()> {
    let Some(joining) = ctx.joining.as_ref() else {
        bail!("control-plane-prepare needs the discovered cluster");
    };
    let Some(control_plane) = joining.control_plane.as_ref() else {
        ctx.out.step(
            "control-plane-prepare",
            "Skipping: not a control-plane join",
            json!({ "skipped": true }),
        );
        return Ok(());
    };
    if sel.wants("download-certs") {
        match control_plane.certificate_key.clone() {
            None => ctx.out.step(
                "download-certs",
                "No --certificate-key: using the shared certificates already on this node",
                json!({ "downloaded": false }),
            ),
            Some(key) => {
                ctx.out.step(
                    "download-certs",
                    "Downloading the certificates in Secret \"kubeadm-certs\" in the \"kube-system\" Namespace",
                    json!({ "secret": "kube-system/kubeadm-certs" }),
                );
                let runtime = crate::runtime()?;
                let downloaded = runtime.block_on(crate::join::download_certs(joining, &key))?;
                let files = crate::cluster::certs_secret::files(
                    &ctx.layout.pki_dir,
                    ctx.cfg.cluster.etcd.external.as_ref(),
                );
                for (name, path) in files {
                    let Some((_, content)) = downloaded.iter().find(|(n, _)| *n == name) else {
                        continue;
                    };
                    if content.is_empty() {
                        continue;
                    }
                    if let Some(parent) = path.parent() {
                        ctx.writer.ensure_dir(parent, 0o755)?;
                    }
                    let mode = if name.ends_with(".key") { 0o600 } else { 0o644 };
                    ctx.write("download-certs", &path, content, mode)?;
                }
            }
        }
    }
    let sub = |phase: &'static str, only: &'static str| super::Selection {
        phase,
        only: Some(only),
        skip: sel.skip,
    };
    if sel.wants("certs") {
        (super::certs::PHASE.run)(ctx, &sub("certs", "all"))?;
    }
    if sel.wants("kubeconfig") {
        // kubeadm: a joining control plane gets admin.conf and its components' kubeconfigs;
        // kubelet.conf comes from the TLS bootstrap, super-admin.conf stays on the first node.
        for name in ["admin", "controller-manager", "scheduler"] {
            (super::kubeconfig::PHASE.run)(ctx, &sub("kubeconfig", name))?;
        }
    }
    if sel.wants("control-plane") {
        (super::manifests::CONTROL_PLANE.run)(ctx, &sub("control-plane", "all"))?;
    }
    Ok(())
}

pub const ETCD_JOIN: Phase = Phase {
    name: "etcd-join",
    description: "Add this node's etcd to the cluster as a learner, then promote it",
    subphases: Vec::new,
    run: run_etcd_join,
};

/// The etcd members' client URLs, from the etcd mirror pods' kubeadm annotation. Like kubeadm,
/// it asks again until `limit`: right after `kubeadm init` the etcd mirror pod can be missing for
/// a minute and more (the kubelet's first attempt is refused before the system-node-critical
/// PriorityClass exists, and it retries at its next resync).
async fn etcd_endpoints(
    admin: &std::path::Path,
    limit: std::time::Duration,
) -> Result<Vec<String>> {
    use k8s_openapi::api::core::v1::Pod;
    let client = crate::health::client(admin, None).await?;
    let pods: kube::Api<Pod> = kube::Api::namespaced(client, "kube-system");
    let start = std::time::Instant::now();
    loop {
        let list = pods
            .list(&kube::api::ListParams::default().labels("component=etcd,tier=control-plane"))
            .await?;
        let endpoints: Vec<String> = list
            .items
            .iter()
            .filter_map(|p| {
                p.metadata
                    .annotations
                    .as_ref()?
                    .get("kubeadm.kubernetes.io/etcd.advertise-client-urls")
                    .cloned()
            })
            .collect();
        if !endpoints.is_empty() {
            return Ok(endpoints);
        }
        tracing::info!(
            "none of the {} etcd pods carries the advertise-client-urls annotation yet; asking again",
            list.items.len()
        );
        if start.elapsed() > limit {
            bail!("no etcd pod in kube-system carried the kubeadm.kubernetes.io/etcd.advertise-client-urls annotation within {limit:?}: is etcd stacked on the control-plane nodes?");
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

fn run_etcd_join(ctx: &mut Context, _sel: &Selection) -> Result<()> {
    use crate::etcd;
    let control_plane = ctx
        .joining
        .as_ref()
        .is_some_and(|j| j.control_plane.is_some());
    if !control_plane || ctx.cfg.cluster.is_external_etcd() {
        ctx.out.step(
            "etcd-join",
            "Skipping: no local etcd member to add",
            json!({ "skipped": true }),
        );
        return Ok(());
    }
    let rendered = crate::render::render(
        &ctx.cfg,
        &ctx.layout,
        crate::render::ETCD,
        ctx.templates.as_deref(),
    )?;
    // The URLs from the rendered manifest: one source for them, patches included.
    let command = crate::render::first_container(&rendered)?
        .command
        .unwrap_or_default();
    let flag = |name| crate::render::flag(&command, name).map(str::to_string);
    let (Some(peer_url), Some(client_url)) = (
        flag("initial-advertise-peer-urls"),
        flag("advertise-client-urls"),
    ) else {
        bail!("the etcd manifest has no --initial-advertise-peer-urls or --advertise-client-urls");
    };
    let node = ctx.cfg.init.node_registration.name.clone();
    if ctx.writer.dry_run_dir().is_some() {
        ctx.out.step(
            "etcd-join",
            &format!("Would add {node} ({peer_url}) to etcd as a learner and promote it"),
            json!({ "peerURL": peer_url }),
        );
        return Ok(());
    }
    let tls = etcd::Tls::healthcheck_client(&ctx.layout.pki_dir.join("etcd"))?;
    let limit = ctx.cfg.init.timeouts.etcd_api_call.0;
    let runtime = crate::runtime()?;
    let endpoints =
        runtime.block_on(etcd_endpoints(&ctx.layout.kubeconfig("admin.conf"), limit))?;
    ctx.out.step(
        "etcd-join",
        &format!(
            "Checking etcd quorum through {} and adding {node} ({peer_url}) as a learner",
            endpoints.join(", ")
        ),
        json!({ "endpoints": endpoints, "peerURL": peer_url }),
    );
    let added = runtime.block_on(etcd::add_learner(&endpoints, &tls, &node, &peer_url, limit))?;
    let manifest = ctx.layout.manifests_dir.join("etcd.yaml");
    if added.voting && manifest.exists() {
        // --initial-cluster only counts at the member's first start: the manifest stays.
        ctx.out.step(
            "etcd-join",
            &format!("{node} is a voting etcd member already; its manifest is kept"),
            json!({ "member": format!("{:x}", added.id), "voting": true }),
        );
        return Ok(());
    }
    ctx.cfg.etcd_initial_cluster = Some(added.initial_cluster.clone());
    let sel = Selection {
        phase: "etcd",
        only: None,
        skip: &[],
    };
    (super::manifests::ETCD.run)(ctx, &sel)?;
    if added.voting {
        ctx.out.step(
            "etcd-join",
            &format!("{node} is a voting etcd member already"),
            json!({ "member": format!("{:x}", added.id), "voting": true }),
        );
        return Ok(());
    }
    ctx.out.step(
        "etcd-join",
        &format!(
            "Waiting for the new etcd member {:x} to catch up and be promoted. This can take up to {}",
            added.id,
            crate::config::GoDuration(limit)
        ),
        json!({ "member": format!("{:x}", added.id), "initialCluster": added.initial_cluster }),
    );
    let start = std::time::Instant::now();
    match runtime.block_on(etcd::promote(
        &endpoints,
        &tls,
        added.id,
        &client_url,
        limit,
    )) {
        Ok(()) => {
            ctx.out.step(
                "etcd-join",
                &format!(
                    "The etcd member {node} is promoted to a voting member after {:.1}s",
                    start.elapsed().as_secs_f64()
                ),
                json!({ "member": format!("{:x}", added.id), "voting": true, "seconds": start.elapsed().as_secs_f64() }),
            );
            Ok(())
        }
        Err(why) => {
            // Leave the cluster as it was: the learner out, this node's etcd stopped and its
            // data gone, so that a re-run starts clean.
            let removed = runtime.block_on(etcd::remove(&endpoints, &tls, added.id));
            ctx.writer.remove(&manifest)?;
            let member_dir = ctx.layout.etcd_data_dir.join("member");
            if member_dir.exists() {
                std::fs::remove_dir_all(&member_dir)?;
            }
            match removed {
                Ok(()) => bail!("{why:#}; the learner was removed again and this node's etcd manifest and data deleted: the etcd cluster is as it was"),
                Err(e) => bail!("{why:#}; and {e:#}"),
            }
        }
    }
}

fn run(ctx: &mut Context, sel: &Selection) -> Result<()> {
    let Some(joining) = ctx.joining.as_ref() else {
        bail!("kubelet-start of a join needs the discovered cluster");
    };
    let ca_pem = joining.cluster.ca_pem.clone();
    let bootstrap = joining.bootstrap_kubeconfig(&ctx.cfg.cluster.cluster_name);
    let kubelet_conf = ctx.layout.kubeconfig("kubelet.conf");
    let bootstrap_conf = ctx.layout.kubeconfig("bootstrap-kubelet.conf");
    let dry_run = ctx.writer.dry_run_dir().is_some();
    let joined = !dry_run && kubelet_conf.exists();

    let ca_path = ctx.layout.pki_dir.join("ca.crt");
    ctx.writer.ensure_dir(&ctx.layout.pki_dir.clone(), 0o755)?;
    ctx.out.step(
        "kubelet-start",
        &format!(
            "Writing the cluster CA to {:?}",
            ca_path.display().to_string()
        ),
        json!({ "path": ca_path }),
    );
    ctx.write("kubelet-start", &ca_path, ca_pem.as_bytes(), 0o644)?;
    if joined {
        ctx.out.step(
            "kubelet-start",
            &format!(
                "{:?} exists: the kubelet has bootstrapped already",
                kubelet_conf.display().to_string()
            ),
            json!({ "joined": true }),
        );
    } else {
        ctx.out.step(
            "kubelet-start",
            &format!(
                "Writing the bootstrap kubeconfig to {:?}",
                bootstrap_conf.display().to_string()
            ),
            json!({ "path": bootstrap_conf }),
        );
        ctx.write(
            "kubelet-start",
            &bootstrap_conf,
            bootstrap.as_bytes(),
            0o600,
        )?;
    }
    (super::kubelet::PHASE.run)(ctx, sel)?;
    if dry_run {
        return Ok(());
    }

    let node = ctx.cfg.init.node_registration.name.clone();
    let limit = ctx.cfg.init.timeouts.tls_bootstrap.0;
    ctx.out.step(
        "kubelet-start",
        "Waiting for the kubelet to perform the TLS Bootstrap",
        json!({ "timeoutSeconds": limit.as_secs() }),
    );
    let start = Instant::now();
    while !kubelet_conf.exists() {
        if start.elapsed() > limit {
            bail!("the kubelet did not write {} within {limit:?}: is it running, and can it reach the API server? (its log says why)", kubelet_conf.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let runtime = crate::runtime()?;
    let ready = runtime.block_on(async {
        // kubelet.conf can appear a moment before the client certificate it names.
        let client = loop {
            match crate::health::client(&kubelet_conf, None).await {
                Ok(client) => break client,
                Err(_) if start.elapsed() < limit => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => bail!("the kubelet's {}: {e:#}", kubelet_conf.display()),
            }
        };
        let nodes: kube::Api<Node> = kube::Api::all(client);
        loop {
            match nodes.get_opt(&node).await {
                Ok(Some(n)) => {
                    let ready = n
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True");
                    return Ok::<_, anyhow::Error>(ready);
                }
                Ok(None) | Err(_) if start.elapsed() < limit => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Ok(None) => {
                    bail!("the node {node} did not register within {limit:?}")
                }
                Err(e) => bail!("reading the node {node} with kubelet.conf: {e}"),
            }
        }
    })?;
    // The token in bootstrap-kubelet.conf has done its work; it is not left lying around.
    ctx.writer.remove(&bootstrap_conf)?;
    ctx.out.step(
        "kubelet-start",
        &format!(
            "The node {node} is registered after {:.1}s ({})",
            start.elapsed().as_secs_f64(),
            if ready {
                "Ready"
            } else {
                "not Ready yet: install a pod network"
            }
        ),
        json!({ "node": node, "registered": true, "ready": ready }),
    );
    Ok(())
}

fn control_plane_join(ctx: &Context) -> bool {
    ctx.joining
        .as_ref()
        .is_some_and(|j| j.control_plane.is_some())
}

pub const WAIT_CONTROL_PLANE: Phase = Phase {
    name: "wait-control-plane",
    description:
        "Wait for the new control-plane components to be healthy and their mirror pods Ready",
    subphases: Vec::new,
    run: |ctx, sel| {
        if control_plane_join(ctx) {
            (super::wait::PHASE.run)(ctx, sel)
        } else {
            Ok(())
        }
    },
};

pub const CONTROL_PLANE_JOIN: Phase = Phase {
    name: "control-plane-join",
    description: "Join a machine as a control plane instance",
    subphases: || {
        vec![(
            "mark-control-plane".into(),
            "Mark a node as a control-plane".into(),
        )]
    },
    run: |ctx, sel| {
        if control_plane_join(ctx) && sel.wants("mark-control-plane") {
            (super::cluster::MARK_CONTROL_PLANE.run)(ctx, sel)
        } else {
            Ok(())
        }
    },
};

/// kubeadm's closing words of a join.
pub fn joined(ctx: &Context) {
    if ctx.writer.dry_run_dir().is_some() || ctx.out.json() {
        return;
    }
    if control_plane_join(ctx) {
        println!("\nThis node has joined the cluster and a new control plane instance was created:\n\n* Certificate signing request was sent to apiserver and approval was received.\n* The Kubelet was informed of the new secure connection details.\n* Control plane label and taint were applied to the new node.\n* The Kubernetes control plane instances scaled up.\n* A new etcd member was added to the local/stacked etcd cluster.\n\nRun 'kubectl get nodes' to see this node join the cluster.");
    } else {
        println!("\nThis node has joined the cluster:\n* The kubelet was informed of the new secure connection details.\n\nRun 'kubectl get nodes' on the control-plane to see this node join the cluster.");
    }
}

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
use crate::join::TLS_BOOTSTRAP_TIMEOUT;

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
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
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
    ctx.out.step(
        "kubelet-start",
        "Waiting for the kubelet to perform the TLS Bootstrap",
        json!({ "timeoutSeconds": TLS_BOOTSTRAP_TIMEOUT.as_secs() }),
    );
    let start = Instant::now();
    while !kubelet_conf.exists() {
        if start.elapsed() > TLS_BOOTSTRAP_TIMEOUT {
            bail!("the kubelet did not write {} within {TLS_BOOTSTRAP_TIMEOUT:?}: is it running, and can it reach the API server? (its log says why)", kubelet_conf.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ready = runtime.block_on(async {
        let client = crate::health::client(&kubelet_conf, None).await?;
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
                Ok(None) | Err(_) if start.elapsed() < TLS_BOOTSTRAP_TIMEOUT => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Ok(None) => {
                    bail!("the node {node} did not register within {TLS_BOOTSTRAP_TIMEOUT:?}")
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
    println!("\nThis node has joined the cluster:\n* The kubelet was informed of the new secure connection details.\n\nRun 'kubectl get nodes' on the control-plane to see this node join the cluster.");
    Ok(())
}

//! `kubeconfig`: admin, super-admin, kubelet, controller-manager and scheduler kubeconfigs with
//! client certificates from the cluster CA. Existing files are kept when they still fit.

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::json;

use super::{certs::load_cluster_ca, Context, Phase, Selection};
use crate::kubeconfig::Kubeconfig;
use crate::pki::{self, keys, KubeconfigProfile, ServerKind};

pub const PHASE: Phase = Phase {
    name: "kubeconfig",
    description: "Generate all kubeconfig files necessary to establish the control plane and the admin kubeconfig file",
    subphases,
    run,
};

fn subphases() -> Vec<(String, String)> {
    pki::kubeconfig_profiles()
        .into_iter()
        .map(|p| (p.name, format!("Generate {}", p.description)))
        .collect()
}

const MODE: u32 = 0o600;

pub fn server_url(ctx: &Context, p: &KubeconfigProfile) -> String {
    match p.server {
        ServerKind::ControlPlaneEndpoint => ctx.cfg.control_plane_endpoint_url(),
        ServerKind::Local => ctx.cfg.local_endpoint_url(),
    }
}

fn run(ctx: &mut Context, sel: &Selection) -> Result<()> {
    let dir = ctx.layout.kubernetes_dir.clone();
    ctx.out.step(
        "kubeconfig",
        &format!("Using kubeconfig folder {:?}", dir.display().to_string()),
        json!({ "kubeconfigDir": dir }),
    );
    let ca = load_cluster_ca(ctx)?;
    let cluster_name = ctx.cfg.cluster.cluster_name.clone();
    let profiles: Vec<_> = pki::kubeconfig_profiles()
        .into_iter()
        .filter(|p| sel.wants(&p.name))
        .collect();

    let mut problems = Vec::new();
    let mut missing = Vec::new();
    for p in &profiles {
        let path = ctx.layout.kubeconfig(&p.file);
        let Some(bytes) = ctx.writer.read(&path)? else {
            if ca.key.is_none() {
                problems.push(format!(
                    "{} is missing and cannot be made: the CA is external (ca.key is absent)",
                    path.display()
                ));
            }
            missing.push(p.name.clone());
            continue;
        };
        let existing =
            Kubeconfig::parse(&bytes).map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
        if existing.ca_pem().as_deref() != Some(ca.cert_pem.as_str()) {
            problems.push(format!(
                "a kubeconfig file {} exists already but has got the wrong CA cert",
                path.display()
            ));
            continue;
        }
        let want = server_url(ctx, p);
        if existing.server() != Some(want.as_str()) {
            ctx.out.step(
                "kubeconfig",
                &format!(
                    "WARNING: a kubeconfig file {} exists already but has an unexpected API Server URL: expected: {want}, got: {}",
                    path.display(),
                    existing.server().unwrap_or("")
                ),
                json!({ "path": path, "warning": "unexpected server URL" }),
            );
        }
        if let Some(cert) = existing.client_cert_pem() {
            let key = existing
                .client_key_pem()
                .as_deref()
                .map(keys::load)
                .transpose()
                .with_context(|| format!("the client key in {}", path.display()))?;
            let spec = pki::kubeconfig_spec(p, &ctx.cfg);
            let found = pki::check(&cert, key.as_ref(), &spec, Some(&ca.cert_der), ctx.now)
                .with_context(|| format!("the client certificate in {}", path.display()))?;
            if !found.is_empty() {
                problems.push(format!(
                    "the client certificate in {} does not match what the config requires: {}",
                    path.display(),
                    found.join("; ")
                ));
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "the kubeconfig files in {} cannot be used as they are:\n  - {}\nMove those files away to have them regenerated.",
            dir.display(),
            problems.join("\n  - ")
        );
    }

    let mut new_keys =
        keys::generate_many(ctx.cfg.cluster.encryption_algorithm, missing.len())?.into_iter();
    for p in &profiles {
        let path = ctx.layout.kubeconfig(&p.file);
        if !missing.contains(&p.name) {
            ctx.out.step(
                "kubeconfig",
                &format!(
                    "Using existing kubeconfig file: {:?}",
                    path.display().to_string()
                ),
                json!({ "kubeconfig": p.name, "action": "existing", "path": path }),
            );
            continue;
        }
        let key = new_keys
            .next()
            .ok_or_else(|| anyhow!("key pool exhausted"))?;
        let spec = pki::kubeconfig_spec(p, &ctx.cfg);
        // kubeadm gives kubeconfig client certificates the CA's NotBefore.
        let cert = pki::sign(&spec, &key, Some(&ca), ca.not_before, ctx.now)?;
        let conf = Kubeconfig::with_client_cert(
            &cluster_name,
            &server_url(ctx, p),
            &ca.cert_pem,
            &spec.cn,
            &cert,
            &key.pem,
        );
        ctx.out.step(
            "kubeconfig",
            &format!("Writing {:?} kubeconfig file", p.file),
            json!({ "kubeconfig": p.name, "action": "write", "path": path }),
        );
        ctx.write("kubeconfig", &path, conf.to_yaml().as_bytes(), MODE)?;
    }
    Ok(())
}

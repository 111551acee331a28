//! `etcd` and `control-plane`: the static pod manifests in the kubelet's staticPodPath.

use anyhow::Result;
use serde_json::json;

use super::{Context, Phase, Selection};
use crate::render;

pub const ETCD: Phase = Phase {
    name: "etcd",
    description: "Generate static Pod manifest file for local etcd",
    subphases: etcd_subphases,
    run: run_etcd,
};

pub const CONTROL_PLANE: Phase = Phase {
    name: "control-plane",
    description: "Generate all static Pod manifest files necessary to establish the control plane",
    subphases: control_plane_subphases,
    run: run_control_plane,
};

const MANIFEST_MODE: u32 = 0o600;

fn etcd_subphases() -> Vec<(String, String)> {
    vec![(
        "local".into(),
        "Generate the static Pod manifest file for a local, single-node local etcd instance".into(),
    )]
}

fn control_plane_subphases() -> Vec<(String, String)> {
    [
        ("apiserver", "kube-apiserver"),
        ("controller-manager", "kube-controller-manager"),
        ("scheduler", "kube-scheduler"),
    ]
    .into_iter()
    .map(|(sub, component)| {
        (
            sub.to_string(),
            format!("Generates the {component} static Pod manifest"),
        )
    })
    .collect()
}

fn write_manifest(ctx: &mut Context, phase: &str, component: &str) -> Result<()> {
    let yaml = render::render(&ctx.cfg, &ctx.layout, component, ctx.templates.as_deref())?;
    let path = ctx.layout.manifests_dir.join(format!("{component}.yaml"));
    let outcome = ctx.write(phase, &path, yaml.as_bytes(), MANIFEST_MODE)?;
    ctx.out.step(
        phase,
        &format!("Creating static Pod manifest for {component:?}"),
        json!({ "component": component, "path": path, "outcome": format!("{outcome:?}") }),
    );
    Ok(())
}

fn run_etcd(ctx: &mut Context, sel: &Selection) -> Result<()> {
    if ctx.cfg.cluster.is_external_etcd() || !sel.wants("local") {
        ctx.out.step(
            "etcd",
            "External etcd mode: skipping the local etcd manifest",
            json!({ "skipped": true }),
        );
        return Ok(());
    }
    let data_dir = ctx.layout.etcd_data_dir.clone();
    ctx.writer.ensure_dir(&data_dir, 0o700)?;
    ctx.writer
        .ensure_dir(&ctx.layout.manifests_dir.clone(), 0o700)?;
    ctx.out.step(
        "etcd",
        &format!(
            "Creating static Pod manifest for local etcd in {:?}",
            ctx.layout.manifests_dir.display().to_string()
        ),
        json!({ "dataDir": data_dir }),
    );
    write_manifest(ctx, "etcd", render::ETCD)
}

fn run_control_plane(ctx: &mut Context, sel: &Selection) -> Result<()> {
    let dir = ctx.layout.manifests_dir.clone();
    ctx.writer.ensure_dir(&dir, 0o700)?;
    ctx.out.step(
        "control-plane",
        &format!("Using manifest folder {:?}", dir.display().to_string()),
        json!({ "manifestDir": dir }),
    );
    for (sub, component) in ["apiserver", "controller-manager", "scheduler"]
        .into_iter()
        .zip(render::CONTROL_PLANE)
    {
        if sel.wants(sub) {
            write_manifest(ctx, "control-plane", component)?;
        }
    }
    Ok(())
}

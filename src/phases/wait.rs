//! `wait-control-plane`: the kubelet and the four static pods, until healthy and Ready.

use anyhow::Result;
use serde_json::json;

use super::{Context, Phase, Selection};

pub const PHASE: Phase = Phase {
    name: "wait-control-plane",
    description: "Wait for the control plane to start",
    subphases: Vec::new,
    run,
};

fn run(ctx: &mut Context, _sel: &Selection) -> Result<()> {
    if ctx.writer.dry_run_dir().is_some() {
        ctx.out.step(
            "dryrun",
            "Would wait for the kubelet and the control-plane static Pods to be healthy",
            json!({ "dryRun": true }),
        );
        let binding = crate::cluster::objects::cluster_admins()?;
        return super::cluster::apply_objects(ctx, "wait-control-plane", binding);
    }
    crate::health::wait_control_plane(&ctx.cfg, &ctx.layout, ctx.out)
}

//! kubeforge's kubelet serving CSR approver (profile hardened): `kubeforge approver`, a loop of
//! approval passes (serving.rs) run as the static pod `kubeforge-approver` on every control-plane
//! node. The pod runs the host's own kubeforge binary, mounted read-only into the pause image
//! kubeforge already pulls, so no image has to be published; that binary must therefore be
//! statically linked (docs/security.md says how to build one).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _, Result};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use crate::config::Config;
use crate::manifests::{patched_manifest, strict_handlebars, MANIFEST_MODE};
use crate::node::{File, Layout};

/// The static pod's manifest stem, pod name and patch target.
pub const POD: &str = "kubeforge-approver";
/// Its kubeconfig under the kubernetes dir (the `kubeforge-approver` profile in
/// pki/kubeconfigs.yaml).
pub const KUBECONFIG: &str = "kubeforge-approver.conf";
pub const KUBECONFIG_PROFILE: &str = "kubeforge-approver";
/// The pod's user: not root; it reads its kubeconfig through group 0 (the file is 0640 root:root).
const RUN_AS_USER: u32 = 65532;
/// Where the loop leaves its heartbeat inside the pod (an in-memory emptyDir).
const HEARTBEAT: &str = "/run/kubeforge-approver/heartbeat";
const INTERVAL_SECONDS: u64 = 10;

pub fn manifest_path(layout: &Layout) -> PathBuf {
    layout.manifests_dir.join(format!("{POD}.yaml"))
}

/// The approver's static pod for this node: `binary` (the running kubeforge, statically linked)
/// run in the pause image.
pub fn manifest(cfg: &Config, layout: &Layout, binary: &Path) -> Result<File> {
    let pause = crate::manifests::images(cfg)
        .into_iter()
        .find(|i| i.contains("/pause:"))
        .expect("the images include pause");
    let data = json!({
        "image": pause,
        "binary": binary,
        "kubeconfig": layout.kubeconfig(KUBECONFIG),
        "heartbeat": HEARTBEAT,
        "heartbeatDir": Path::new(HEARTBEAT).parent(),
        "interval": INTERVAL_SECONDS,
        "runAsUser": RUN_AS_USER,
    });
    let text = strict_handlebars()
        .render_template(
            include_str!("../../templates/kubeforge-approver.yaml.hbs"),
            &data,
        )
        .context("rendering templates/kubeforge-approver.yaml.hbs")?;
    let pod: Pod = serde_yaml::from_str(&text)
        .context("the rendered kubeforge-approver manifest is not a valid Pod")?;
    let yaml = patched_manifest(cfg, POD, pod)?;
    Ok(File::new(manifest_path(layout), yaml, MANIFEST_MODE))
}

/// The approver's static pod re-rendered for `cfg` (an upgrade's target: its pause image) and
/// this kubeforge, when this node runs one; None on a node without it (profile kubeadm, a
/// worker, a cluster kubeadm built).
pub fn upgraded(cfg: &Config, layout: &Layout) -> Result<Option<File>> {
    if !manifest_path(layout).exists() {
        return Ok(None);
    }
    manifest(cfg, layout, &static_binary()?).map(Some)
}

/// How much of the binary `static_binary` reads: the headers of any linker's output.
const HEADERS_READ: u64 = 64 * 1024;

/// The kubeforge binary the approver pod runs: this one, which must run in an empty root (the
/// pause image has no libc): an ELF with no program interpreter (PT_INTERP), i.e. static.
pub fn static_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the kubeforge binary")?;
    // The ELF and program headers sit at the start; the whole binary (300 MB in a debug build)
    // is not read for them.
    let mut bytes = Vec::new();
    std::fs::File::open(&exe)
        .and_then(|f| {
            std::io::Read::read_to_end(&mut std::io::Read::take(f, HEADERS_READ), &mut bytes)
        })
        .with_context(|| format!("reading {}", exe.display()))?;
    if has_interpreter(&bytes).with_context(|| format!("{} is not an ELF", exe.display()))? {
        bail!(crate::BadInput(format!(
            "{} is dynamically linked: the kubeforge-approver static pod (profile hardened) runs this binary in the \
             pause image, which has no libc. Install a statically linked kubeforge (docs/security.md: \
             RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu), \
             or choose profile kubeadm",
            exe.display()
        )));
    }
    Ok(exe)
}

/// Whether a 64-bit little-endian ELF has a PT_INTERP program header.
pub fn has_interpreter(elf: &[u8]) -> Result<bool> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        bail!("not a 64-bit little-endian ELF file");
    }
    const PT_INTERP: u32 = 3;
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        bail!("truncated ELF header");
    };
    for i in 0..usize::from(phnum) {
        let at = usize::try_from(phoff)? + i * usize::from(phentsize);
        match u32_at(at) {
            Some(PT_INTERP) => return Ok(true),
            Some(_) => {}
            None => bail!("truncated program headers"),
        }
    }
    Ok(false)
}

/// `kubeforge approver`: approval passes every `interval`, forever. A pass that fails (API
/// server down) is logged and retried; each CSR left pending is logged once with its reason.
pub async fn run(kubeconfig: &Path, interval: Duration, heartbeat: Option<&Path>) -> Result<()> {
    let client = crate::kube::client(kubeconfig, None).await?;
    tracing::info!(
        "approving kubelet serving CSRs that match their Node, every {}s",
        interval.as_secs()
    );
    let mut told = BTreeSet::new();
    loop {
        if let Some(path) = heartbeat {
            if let Err(e) = std::fs::write(path, b"") {
                tracing::warn!("writing the heartbeat {}: {e}", path.display());
            }
        }
        match super::serving::approval_pass(&client, None).await {
            Ok(looked) => {
                for l in looked {
                    if l.approved {
                        tracing::info!("approved {} of node {}", l.csr, l.node.unwrap_or_default());
                    } else if told.insert(l.csr.clone()) {
                        let reason = l.reason.unwrap_or_default();
                        tracing::warn!("left {} pending: {reason}", l.csr);
                    }
                }
            }
            Err(e) => tracing::warn!("approval pass failed: {e:#}"),
        }
        tokio::time::sleep(interval).await;
    }
}

/// The liveness probe: the loop wrote its heartbeat within `max_age`.
pub fn check_heartbeat(path: &Path, max_age: Duration) -> Result<()> {
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .with_context(|| format!("no heartbeat at {}", path.display()))?;
    let age = SystemTime::now()
        .duration_since(modified)
        .unwrap_or_default();
    if age > max_age {
        bail!("the last approval pass started {}s ago", age.as_secs());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_an_elf_and_its_interpreter_is_seen() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // The test binary is linked as the crate's normal build is: dynamically, unless the
        // target feature crt-static is on.
        let dynamic = !cfg!(target_feature = "crt-static");
        assert_eq!(has_interpreter(&exe).unwrap(), dynamic);
        assert!(has_interpreter(b"#!/bin/sh\n").is_err());
        assert!(has_interpreter(b"\x7fELF\x02\x01\x01\x00").is_err());
    }
}

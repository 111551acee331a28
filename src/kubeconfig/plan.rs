//! The kubeconfigs of a node, check-then-write: admin, super-admin, kubelet, controller-manager
//! and scheduler, each with a client certificate from the cluster CA. Existing files are kept when
//! they still fit; anything that makes one unusable stops the run before a file is written.

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::json;
use time::OffsetDateTime;

use super::Kubeconfig;
use crate::config::Config;
use crate::node::{File, HostWriter, Layout};
use crate::output::Output;
use crate::pki::{self, keys, Ca, KubeconfigProfile, ServerKind};

/// The API server a kubeconfig points at: the control-plane endpoint, or this node's own.
pub fn server_url(cfg: &Config, p: &KubeconfigProfile) -> String {
    match p.server {
        ServerKind::ControlPlaneEndpoint => cfg.control_plane_endpoint_url(),
        ServerKind::Local => cfg.local_endpoint_url(),
    }
}

/// What a run does for the kubeconfigs it was asked for.
pub struct Plan {
    ca: Ca,
    /// The kubeconfigs asked for, and whether each is made (else kept).
    kubeconfigs: Vec<(KubeconfigProfile, bool)>,
    keys: std::vec::IntoIter<keys::Key>,
    now: OffsetDateTime,
}

impl Plan {
    /// Checks the existing files of `names` against `ca` and the config, then makes the keys of
    /// the missing ones. Nothing is written.
    pub fn new(
        cfg: &Config,
        layout: &Layout,
        writer: &HostWriter,
        out: &Output,
        ca: Ca,
        names: &[String],
        now: OffsetDateTime,
    ) -> Result<Plan> {
        let mut problems = Vec::new();
        let mut kubeconfigs = Vec::new();
        for p in pki::all_kubeconfig_profiles() {
            if !names.contains(&p.name) {
                continue;
            }
            let missing = check_existing(cfg, layout, writer, out, &ca, &p, now, &mut problems)?;
            kubeconfigs.push((p, missing));
        }
        if !problems.is_empty() {
            bail!(
                "the kubeconfig files in {} cannot be used as they are:\n  - {}\nMove those files away to have them regenerated.",
                layout.kubernetes_dir.display(),
                problems.join("\n  - ")
            );
        }
        let count = kubeconfigs.iter().filter(|(_, make)| *make).count();
        let keys = keys::generate_many(cfg.cluster.encryption_algorithm, count)?.into_iter();
        Ok(Plan {
            ca,
            kubeconfigs,
            keys,
            now,
        })
    }

    /// The file of kubeconfig `name` to write (none when it is kept), its line printed.
    pub fn files(
        &mut self,
        cfg: &Config,
        layout: &Layout,
        out: &Output,
        name: &str,
    ) -> Result<Vec<File>> {
        let Some((p, make)) = self
            .kubeconfigs
            .iter()
            .find(|(p, _)| p.name == name)
            .cloned()
        else {
            return Ok(Vec::new());
        };
        let path = layout.kubeconfig(&p.file);
        if !make {
            out.step(
                "kubeconfig",
                &format!(
                    "Using existing kubeconfig file: {:?}",
                    path.display().to_string()
                ),
                json!({ "kubeconfig": p.name, "action": "existing", "path": path }),
            );
            return Ok(Vec::new());
        }
        let key = self
            .keys
            .next()
            .ok_or_else(|| anyhow!("key pool exhausted"))?;
        let spec = pki::kubeconfig_spec(&p, cfg);
        // kubeadm gives kubeconfig client certificates the CA's NotBefore.
        let cert = pki::sign(&spec, &key, Some(&self.ca), self.ca.not_before, self.now)?;
        let conf = Kubeconfig::with_client_cert(
            &cfg.cluster.cluster_name,
            &server_url(cfg, &p),
            &self.ca.cert_pem,
            &spec.cn,
            &cert,
            &key.pem,
        );
        out.step(
            "kubeconfig",
            &format!("Writing {:?} kubeconfig file", p.file),
            json!({ "kubeconfig": p.name, "action": "write", "path": path }),
        );
        Ok(vec![File::new(path, conf.to_yaml(), p.mode)])
    }
}

/// Checks kubeconfig `p` on disk: true when it is missing (to be made); what makes an existing
/// one unusable goes to `problems`. A server URL other than expected is only a warning, as with
/// kubeadm.
#[allow(clippy::too_many_arguments)]
fn check_existing(
    cfg: &Config,
    layout: &Layout,
    writer: &HostWriter,
    out: &Output,
    ca: &Ca,
    p: &KubeconfigProfile,
    now: OffsetDateTime,
    problems: &mut Vec<String>,
) -> Result<bool> {
    let path = layout.kubeconfig(&p.file);
    let Some(bytes) = writer.read(&path)? else {
        if ca.key.is_none() {
            problems.push(format!(
                "{} is missing and cannot be made: the CA is external (ca.key is absent)",
                path.display()
            ));
        }
        return Ok(true);
    };
    let existing = Kubeconfig::parse(&bytes).map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
    if existing.ca_pem().as_deref() != Some(ca.cert_pem.as_str()) {
        problems.push(format!(
            "a kubeconfig file {} exists already but has got the wrong CA cert",
            path.display()
        ));
        return Ok(false);
    }
    let want = server_url(cfg, p);
    if existing.server() != Some(want.as_str()) {
        out.step(
            "kubeconfig",
            &format!(
                "WARNING: a kubeconfig file {} exists already but has an unexpected API Server URL: expected: {want}, got: {}",
                path.display(),
                existing.server().unwrap_or("")
            ),
            json!({ "path": path, "warning": "unexpected server URL" }),
        );
    }
    let (cert, key) = match existing.client_credentials() {
        Ok(credentials) => credentials,
        Err(e) => {
            problems.push(format!("{}: {e}", path.display()));
            return Ok(false);
        }
    };
    if let Some(cert) = cert {
        let Some(key) = key else {
            problems.push(format!(
                "{} has a client certificate but no client-key-data",
                path.display()
            ));
            return Ok(false);
        };
        let key =
            keys::load(&key).with_context(|| format!("the client key in {}", path.display()))?;
        let spec = pki::kubeconfig_spec(p, cfg);
        let found = pki::check(&cert, Some(&key), &spec, Some(&ca.cert_der), now)
            .with_context(|| format!("the client certificate in {}", path.display()))?;
        if !found.is_empty() {
            problems.push(format!(
                "the client certificate in {} does not match what the config requires: {}",
                path.display(),
                found.join("; ")
            ));
        }
    }
    Ok(false)
}

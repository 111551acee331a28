//! After the control plane: the cluster's stored configuration (the point of no return), the
//! node's kubeconfigs and kubelet config, the bootstrap-token RBAC, the addons (only once every
//! control-plane node's API server runs the target, kubeadm's rule) and the release's cleanup.

use std::time::SystemTime;

use anyhow::{Context as _, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use serde_json::{json, Value};

use super::UpgradeData;
use crate::certs::renew::{self, KeyAlgorithm, Renewal};
use crate::cluster::objects;
use crate::config::Config;
use crate::kube::apply::Object;
use crate::kubeconfig::Kubeconfig;
use crate::kubelet::approver;
use crate::node::{File, Outcome};
use crate::workflow::Step;

impl UpgradeData {
    /// Applies `objects`; a dry-run shows what would change (a server-side dry-run, compared with
    /// what is there).
    fn apply(&mut self, phase: &str, objects: Vec<Object>) -> Result<()> {
        if self.dry_run() {
            return self.preview(phase, objects);
        }
        self.env.effects().apply(&mut self.env, phase, objects)
    }

    fn preview(&self, phase: &str, objects: Vec<Object>) -> Result<()> {
        let limit = self.env.cfg.init.timeouts.kubernetes_api_call.0;
        let changes = crate::block_on(crate::kube::apply::preview_all(
            &self.client,
            &objects,
            limit,
        ))?;
        for (object, change) in objects.iter().zip(changes) {
            let what = object.describe();
            let text = match &change {
                None => format!("{what} would not change"),
                Some(diff) if diff.is_empty() => format!("Would create {what}"),
                Some(diff) => format!("Would change {what}:\n{diff}"),
            };
            self.say(
                "dryrun",
                &text,
                json!({ "phase": phase, "object": what, "diff": change }),
            );
        }
        Ok(())
    }
}

pub fn upload_kubeadm(d: &mut UpgradeData, _: &Step) -> Result<()> {
    d.say("upload-config", "Storing the configuration used in ConfigMap \"kubeadm-config\" in the \"kube-system\" Namespace", json!({ "configMap": "kube-system/kubeadm-config" }));
    let objects = objects::upload_config_kubeadm(&d.env.cfg)?;
    d.apply("upload-config", objects)
}

pub fn upload_kubelet(d: &mut UpgradeData, _: &Step) -> Result<()> {
    d.say("kubelet", "Creating a ConfigMap \"kubelet-config\" in namespace kube-system with the configuration for the kubelets in the cluster", json!({ "configMap": "kube-system/kubelet-config" }));
    let objects = objects::upload_config_kubelet(&d.env.cfg, &d.env.layout)?;
    d.apply("upload-config", objects)
}

/// Puts back the configuration the cluster stored before this run.
pub fn undo_upload(d: &mut UpgradeData, name: &str) -> Result<()> {
    let old = d.old.clone();
    let objects = match name {
        "kubeadm" => objects::upload_config_kubeadm(&old)?,
        _ => objects::upload_config_kubelet(&old, &d.env.layout)?,
    };
    d.apply("undo", objects)
}

/// admin.conf (and super-admin.conf where it exists) renewed when the control plane changed, as
/// kubeadm does at the end of its control-plane step; kubelet.conf pointed at this node's own API
/// server.
pub fn kubeconfig(d: &mut UpgradeData, _: &Step) -> Result<()> {
    if renews_kubeconfigs(d) {
        renew_kubeconfigs(d, &["admin.conf", "super-admin.conf"])?;
    }
    let path = d.env.layout.kubeconfig("kubelet.conf");
    if let Some(text) = d.env.writer.read(&path)? {
        let mut kubeconfig = Kubeconfig::parse(&text)?;
        let server = d.env.cfg.local_endpoint_url();
        for named in &mut kubeconfig.clusters {
            named.cluster.server = server.clone();
        }
        d.env
            .write("kubeconfig", &File::new(path, kubeconfig.to_yaml(), 0o600))?;
    }
    d.say(
        "upgrade/kubeconfig",
        "The kubeconfig files for this node were successfully upgraded!",
        json!({}),
    );
    Ok(())
}

/// kubeadm renews the kubeconfigs when the control plane changed (with `--certificate-renewal`).
fn renews_kubeconfigs(d: &UpgradeData) -> bool {
    d.opts.certificate_renewal && !d.swaps.is_empty() && !d.dry_run()
}

/// The kubeconfigs `names` that this node has, renewed; whether any changed.
fn renew_kubeconfigs(d: &mut UpgradeData, names: &[&str]) -> Result<bool> {
    let algorithm = KeyAlgorithm::Config(d.env.cfg.cluster.encryption_algorithm);
    let dir = d.env.layout.kubernetes_dir.clone();
    let mut changed = false;
    for item in renew::items_on_node(&d.env.cfg, &dir) {
        if !names.contains(&item.name.as_str()) {
            continue;
        }
        let env = &d.env;
        if let Renewal::Renewed { files, .. } = renew::renew(
            &item,
            &env.cfg,
            &env.layout,
            &dir,
            &env.writer,
            algorithm,
            env.now,
        )? {
            changed |= d.env.write_all("kubeconfig", &files)?;
            d.say(
                "upgrade/kubeconfig",
                &format!("Renewed the certificate in {}", item.name),
                json!({ "certificate": item.name }),
            );
        }
    }
    Ok(changed)
}

/// The kubelet's config.yaml (and instance-config.yaml) from the cluster's kubelet-config at the
/// target, the old ones kept in this run's backup; the kubelet is restarted by the operator with
/// its new package, as with kubeadm.
pub fn kubelet_config(d: &mut UpgradeData, _: &Step) -> Result<()> {
    let cfg = &d.env.cfg;
    let mut files = vec![File::new(
        d.env.layout.kubelet_dir.join("config.yaml"),
        crate::kubelet::config_yaml(cfg, &d.env.layout)?,
        crate::kubelet::file_mode(cfg),
    )];
    if let Some(instance) = crate::kubelet::instance_config(cfg) {
        files.push(File::new(
            d.env.layout.kubelet_dir.join("instance-config.yaml"),
            instance,
            crate::kubelet::file_mode(cfg),
        ));
    }
    for file in files {
        match d.env.write("kubelet-config", &file)? {
            Outcome::Replaced { backup } => d.say(
                "upgrade",
                &format!(
                    "Backing up kubelet config file to {:?}",
                    backup.display().to_string()
                ),
                json!({ "backup": backup }),
            ),
            Outcome::Unchanged => continue,
            _ => {}
        }
        d.say(
            "kubelet-start",
            &format!(
                "Writing kubelet configuration to file {:?}",
                file.path.display().to_string()
            ),
            json!({ "path": file.path }),
        );
    }
    d.say(
        "upgrade/kubelet-config",
        "The kubelet configuration for this node was successfully upgraded!",
        json!({}),
    );
    Ok(())
}

pub fn bootstrap_token(d: &mut UpgradeData, _: &Step) -> Result<()> {
    d.say(
        "upgrade/bootstrap-token",
        "Configuring bootstrap token and cluster-info RBAC rules",
        json!({}),
    );
    let ca =
        std::fs::read(d.env.layout.pki_dir.join("ca.crt")).context("reading the cluster CA")?;
    // cluster-info itself stays as it is: its signatures belong to the tokens' signer.
    let objects: Vec<Object> = objects::bootstrap_token(&d.env.cfg, &[], &ca)?
        .into_iter()
        .filter(|o| !matches!(o, Object::ConfigMap(_)))
        .collect();
    d.apply("bootstrap-token", objects)
}

/// kubeadm's rule: the addons move once no control-plane node's API server is behind.
pub fn addons_due(d: &mut UpgradeData, _: &Step) -> Result<()> {
    let behind = crate::block_on(crate::upgrade::unupgraded_api_servers(&d.client, &d.target))?;
    d.addons_due = behind.is_empty() || d.dry_run();
    if !d.addons_due {
        d.say("upgrade/addon", &format!("Skipping upgrade of addons because control plane instances {behind:?} have not been upgraded"), json!({ "behind": behind }));
    }
    Ok(())
}

async fn live_config_map(client: &kube::Client, name: &str) -> Result<Option<ConfigMap>> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    Ok(maps.get_opt(name).await?)
}

/// CoreDNS at the target's image; an operator's own Corefile (one that is not kubeforge's for
/// this cluster) and replica count are kept.
pub fn coredns(d: &mut UpgradeData, _: &Step) -> Result<()> {
    if !d.addons_due || skip_disabled(d, d.env.cfg.cluster.dns.disabled, "coredns") {
        return Ok(());
    }
    let mut objects = objects::coredns(&d.env.cfg)?;
    let client = d.client.clone();
    let (live_map, live_deployment) = crate::block_on(async {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), "kube-system");
        Ok::<_, anyhow::Error>((
            live_config_map(&client, "coredns").await?,
            deployments.get_opt("coredns").await?,
        ))
    })?;
    let ours = corefile(&d.old)?;
    let kept = live_map
        .and_then(|m| m.data?.remove("Corefile"))
        .filter(|live| *live != ours);
    if kept.is_some() {
        objects.retain(|o| !(matches!(o, Object::ConfigMap(_)) && o.name() == "coredns"));
        d.say(
            "addons",
            "Keeping the cluster's own Corefile (it is not the one kubeforge writes)",
            json!({ "corefileKept": true }),
        );
    }
    let replicas = live_deployment.and_then(|dep| dep.spec?.replicas);
    if let Some(replicas) = replicas {
        for o in &mut objects {
            if let Object::Deployment(dep) = o {
                dep.spec.get_or_insert_with(Default::default).replicas = Some(replicas);
            }
        }
    }
    d.apply("addon", objects)?;
    d.say(
        "addons",
        "Applied essential addon: CoreDNS",
        json!({ "addon": "coredns" }),
    );
    Ok(())
}

fn corefile(cfg: &Config) -> Result<String> {
    let objects = objects::coredns(cfg)?;
    let map = objects.iter().find_map(|o| match o {
        Object::ConfigMap(m) if o.name() == "coredns" => m.data.clone(),
        _ => None,
    });
    Ok(map
        .and_then(|mut m| m.remove("Corefile"))
        .unwrap_or_default())
}

pub fn kube_proxy(d: &mut UpgradeData, _: &Step) -> Result<()> {
    if !d.addons_due || skip_disabled(d, d.env.cfg.cluster.proxy.disabled, "kube-proxy") {
        return Ok(());
    }
    let objects = objects::kube_proxy(&d.env.cfg)?;
    d.apply("addon", objects)?;
    d.say(
        "addons",
        "Applied essential addon: kube-proxy",
        json!({ "addon": "kube-proxy" }),
    );
    Ok(())
}

fn skip_disabled(d: &UpgradeData, disabled: bool, addon: &str) -> bool {
    if disabled {
        d.say(
            "upgrade/addon",
            &format!("Skipping the addon/{addon} phase. The addon is disabled."),
            json!({ "addon": addon, "disabled": true }),
        );
    }
    disabled
}

/// kubeadm v1.35's cleanup: `--pod-infra-container-image` leaves the kubelet's flags file (the
/// runtime's sandbox image is what counts since v1.35); the old file is kept in the backup. Then
/// kubeforge-approver's manifest, where this node runs it.
pub fn post_upgrade(d: &mut UpgradeData, _: &Step) -> Result<()> {
    strip_pod_infra_flag(d)?;
    approver_manifest(d)
}

/// kubeforge-approver's static pod (profile hardened) at the target's pause image, running this
/// kubeforge, and its kubeconfig renewed as kubeadm's are: the manifest written only when its
/// bytes differ, then waited for until its new container runs (a failure names its state and
/// log, as for the control plane); with the same manifest and a renewed kubeconfig the pod is
/// restarted as `certs renew` does; with neither it keeps running.
fn approver_manifest(d: &mut UpgradeData) -> Result<()> {
    let file = match approver::upgraded(&d.env.cfg, &d.env.layout) {
        Ok(Some(file)) => file,
        Ok(None) => return Ok(()),
        Err(e) => {
            let text = format!("WARNING: {e:#}: the kubeforge-approver manifest is left as it is");
            d.say("upgrade/staticpods", &text, json!({ "approver": "kept" }));
            return Ok(());
        }
    };
    let renewed = renews_kubeconfigs(d) && renew_kubeconfigs(d, &[approver::KUBECONFIG])?;
    let since = SystemTime::now();
    let outcome = d.env.write("post-upgrade", &file)?;
    if matches!(outcome, Outcome::Created | Outcome::Replaced { .. }) {
        let text = format!("Upgraded the static Pod manifest for {:?}", approver::POD);
        d.say("upgrade/staticpods", &text, json!({ "path": file.path }));
        return wait_approver(d, &file.path, since);
    }
    if !renewed {
        return Ok(());
    }
    let pod = crate::workflow::certs::StaticPod {
        name: approver::POD,
        manifest: file.path,
    };
    let env = &d.env;
    let dir = &env.layout.kubernetes_dir;
    let why = "its kubeconfig was renewed";
    crate::workflow::certs::restart_pod_and_wait(&env.cfg, &env.layout, dir, &env.out, &pod, why)
}

/// Waits until the approver runs in a sandbox made since its manifest was written, then (briefly,
/// as the mirror-pods step does for the control plane) until its mirror pod shows it.
fn wait_approver(d: &UpgradeData, manifest: &std::path::Path, since: SystemTime) -> Result<()> {
    let none = crate::cri::Running {
        id: String::new(),
        attempt: 0,
    };
    let until = crate::health::Until {
        mirror: false,
        limit: d.limit(),
        since: Some(since),
    };
    let env = &d.env;
    let wait = crate::health::wait_pod_restarted(
        &env.cfg,
        &env.out,
        approver::POD,
        manifest,
        &none,
        &d.client,
        until,
    );
    let (took, running) = crate::block_on(wait)?;
    crate::health::announce_ready(&env.out, approver::POD, took);
    let node = &env.cfg.init.node_registration.name;
    let pod = format!("{}-{node}", approver::POD);
    let limit = std::time::Duration::from_secs(60);
    let mirror = crate::health::refresh_mirror(&d.client, &pod, node, &running.id, limit);
    if !crate::block_on(mirror) {
        tracing::info!(
            "{pod}: the kubelet has not reported the new container in its mirror pod yet"
        );
    }
    Ok(())
}

fn strip_pod_infra_flag(d: &mut UpgradeData) -> Result<()> {
    let path = d.env.layout.kubelet_dir.join("kubeadm-flags.env");
    let Some(bytes) = d.env.writer.read(&path)? else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let cleaned = strip_flag(&text, "pod-infra-container-image");
    if cleaned != text && d.env.cfg.kubernetes_minor() >= 35 {
        d.env.write(
            "post-upgrade",
            &File::new(path.clone(), cleaned, crate::kubelet::file_mode(&d.env.cfg)),
        )?;
        d.say(
            "upgrade",
            &format!(
                "Removed the obsolete flag --pod-infra-container-image from {}",
                path.display()
            ),
            json!({ "removedFlag": "pod-infra-container-image" }),
        );
    }
    Ok(())
}

/// `KUBELET_KUBEADM_ARGS="…"` without `--<name>=…`.
fn strip_flag(text: &str, name: &str) -> String {
    let prefix = format!("--{name}=");
    text.lines()
        .map(|line| {
            let Some(args) = line.strip_prefix("KUBELET_KUBEADM_ARGS=") else {
                return line.to_string();
            };
            let inner: String = serde_json::from_str::<Value>(args)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| args.trim_matches('"').to_string());
            let kept: Vec<&str> = inner
                .split(' ')
                .filter(|a| !a.starts_with(&prefix))
                .collect();
            format!(
                "KUBELET_KUBEADM_ARGS={}",
                serde_json::to_string(&kept.join(" ")).expect("a string")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
        + if text.ends_with('\n') { "\n" } else { "" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_obsolete_kubelet_flag_leaves_the_flags_file() {
        let text = "KUBELET_KUBEADM_ARGS=\"--hostname-override=n1 --pod-infra-container-image=registry.k8s.io/pause:3.10\"\n";
        assert_eq!(
            strip_flag(text, "pod-infra-container-image"),
            "KUBELET_KUBEADM_ARGS=\"--hostname-override=n1\"\n"
        );
        assert_eq!(
            strip_flag("KUBELET_KUBEADM_ARGS=\"\"\n", "x"),
            "KUBELET_KUBEADM_ARGS=\"\"\n"
        );
    }
}

//! One static pod at a time: rendered by init's code at the target version, left alone when it
//! is the same Pod, else (etcd: after a verified snapshot) its certificates renewed, the old
//! manifest backed up and the new one swapped in, and the component followed until it is healthy
//! at the new image. A component that fails puts its old manifest back itself and waits for it;
//! the runner then undoes the components before it, newest first.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result};
use serde_json::json;

use super::etcd::{
    etcd_health, etcd_stays, restore_snapshot, save_snapshot, with_api_server_stopped,
};
use super::{Swap, UpgradeData};
use crate::certs::renew::{self, KeyAlgorithm, Renewal};
use crate::config::Config;
use crate::cri::{Running, Runtime};
use crate::manifests::{first_container, flag, Component, Renderer, MANIFEST_MODE};
use crate::node::{File, Layout};
use crate::upgrade::manifest;
use crate::workflow::Step;

/// How long an old container being replaced may take to stop: the pods' grace period is 30 s,
/// and the API server (and this e2e's etcd) use all of it (kubeadm's upgrades lose the API for that
/// long) while the new one cannot start.
const OLD_CONTAINER_GRACE: Duration = Duration::from_secs(3);

/// How long the mirror-pods step waits for the kubelet to report the new pods in their mirror
/// pods. Every component is healthy already; what this waits for is the kubelet's watch of the
/// API server, which backs off while the API server restarts (up to half a minute), then its sync.
const MIRROR_LIMIT: Duration = Duration::from_secs(60);

/// The kubelet's housekeeping period, and a little more.
const KUBELET_HOUSEKEEPING: Duration = Duration::from_millis(2200);

/// How long the kubelet may take to finish an old pod before the new manifest goes in anyway.
const OLD_POD_LIMIT: Duration = Duration::from_secs(60);

pub fn announce(d: &mut UpgradeData, _: &Step) -> Result<()> {
    converge_access(d)?;
    d.say(
        "upgrade/control-plane",
        &format!(
            "Upgrading your static Pod-hosted control plane to version {:?} (timeout: {})...",
            d.target,
            crate::config::GoDuration(d.limit())
        ),
        json!({ "target": d.target }),
    );
    Ok(())
}

/// Before a new manifest runs etcd or kube-apiserver as their accounts: what those accounts
/// read and own put back (a hardened node whose keys lost their ACL, or whose etcd data root made).
fn converge_access(d: &mut UpgradeData) -> Result<()> {
    let cfg = &d.env.cfg;
    let data = d.env.layout.etcd_data_dir.clone();
    if cfg.security.hardened() && !cfg.cluster.is_external_etcd() && data.is_dir() {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(&data)?.uid();
        if owner != d.env.writer.account(crate::rootless::ETCD_USER)?.uid {
            d.env.writer.own_tree(&data, 0o700)?;
        }
    }
    d.env.writer.apply_grants()
}

/// `component`'s manifest as `cfg` renders it for this node; etcd keeps the live manifest's
/// first-boot flags (a joined member's peers), which only mattered when its data dir was made.
pub fn render(layout: &Layout, cfg: &Config, component: Component, live: &str) -> Result<String> {
    let renderer = Renderer {
        cfg,
        layout,
        templates: None,
    };
    if component == Component::Etcd {
        let command = first_container(live)?.command.unwrap_or_default();
        if flag(&command, "initial-cluster-state") == Some("existing") {
            if let Some(initial) = flag(&command, "initial-cluster") {
                return renderer.render_joining_etcd(initial);
            }
        }
    }
    renderer.render(component)
}

pub fn upgrade_component(d: &mut UpgradeData, step: &Step) -> Result<()> {
    let component = Component::from_name(step.name).expect("a component phase");
    if component == Component::Etcd {
        if let Some(why) = etcd_stays(d) {
            d.say("upgrade/etcd", &why, json!({ "skipped": true }));
            return Ok(());
        }
    }
    let path = component.manifest(&d.env.layout);
    recover_aside(d, component)?;
    let live =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    d.env.component_account(component)?;
    let new = render(&d.env.layout, &d.env.cfg, component, &live)?;
    let name = component.name();
    d.say(
        "upgrade/staticpods",
        &format!("Preparing for {name:?} upgrade"),
        json!({ "component": name }),
    );
    if component == Component::KubeApiserver {
        crate::workflow::init::write_audit_files(&mut d.env, "control-plane")?;
    }
    if manifest::same(&live, &new) {
        d.say(
            "upgrade/staticpods",
            &format!("Current and new manifests of {name} are equal, skipping upgrade"),
            json!({ "component": name, "unchanged": true }),
        );
        return ensure_up(d, component);
    }
    if d.dry_run() {
        let diff = manifest::unified(&path.display().to_string(), "new manifest", &live, &new, 3);
        d.say(
            "dryrun",
            &format!("Would replace {}:\n{diff}", path.display()),
            json!({ "component": name, "diff": diff }),
        );
        return Ok(());
    }
    if component == Component::Etcd {
        save_snapshot(d)?;
    }
    renew_certificates(d, component)?;
    let backup = d.env.writer.backup(&path)?;
    d.say(
        "upgrade/staticpods",
        &format!(
            "Moving new manifest to {:?} and backing up old manifest to {:?}",
            path.display().to_string(),
            backup.display().to_string()
        ),
        json!({ "component": name, "manifest": path, "backup": backup }),
    );
    d.swaps.push(Swap {
        component,
        old_manifest: live,
    });
    d.swapped_any = true;
    let version = first_container(&new)
        .ok()
        .and_then(|c| c.image)
        .map(|image| crate::upgrade::tag(&image))
        .unwrap_or_else(|| d.target.clone());
    match replace(d, component, &new) {
        Ok(took) => {
            d.say(
                "upgrade/staticpods",
                &format!(
                    "Component {name:?} upgraded successfully! (healthy at {version} after {:.1} s)",
                    took.as_secs_f64()
                ),
                json!({ "component": name, "upgraded": true, "seconds": took.as_secs_f64() }),
            );
            Ok(())
        }
        Err(e) => {
            d.say(
                "upgrade/rollback",
                &format!("{name} failed at {version}: putting its old manifest back"),
                json!({ "component": name, "failed": format!("{e:#}") }),
            );
            match restore(d, component) {
                Ok(()) => Err(e),
                Err(undo) => {
                    Err(e.context(format!("and putting {name} back failed too: {undo:#}")))
                }
            }
        }
    }
}

pub fn undo_component(d: &mut UpgradeData, name: &str) -> Result<()> {
    restore(d, Component::from_name(name).expect("a component phase"))
}

/// Swaps `manifest` in for `component` and waits for it: how long it took to be healthy.
fn replace(d: &mut UpgradeData, component: Component, manifest: &str) -> Result<Duration> {
    let swap_and_wait = |d: &mut UpgradeData| {
        let orderly = component == Component::Etcd && etcd_health(d).is_ok_and(|h| h.members > 1);
        let before = stop_pod(d, component, orderly)?;
        let since = SystemTime::now();
        start_pod(d, component, manifest)?;
        crate::workflow::fault::after_swap(component.name());
        wait_up(d, component, before, Some(since))
    };
    let (took, running) = match component {
        Component::Etcd => with_api_server_stopped(d, swap_and_wait)?,
        _ => swap_and_wait(d)?,
    };
    d.fresh.retain(|(c, _)| *c != component);
    d.fresh.push((component, running));
    Ok(took)
}

/// Puts `component`'s old manifest back and waits until the old component is healthy; etcd that
/// cannot start on its own data again gets the data from before (the snapshot).
fn restore(d: &mut UpgradeData, component: Component) -> Result<()> {
    let Some(index) = d.swaps.iter().position(|s| s.component == component) else {
        return Ok(());
    };
    let old = d.swaps[index].old_manifest.clone();
    let name = component.name();
    let took = match replace(d, component, &old) {
        Ok(took) => took,
        Err(e) if component == Component::Etcd && d.snapshot.is_some() => {
            d.say("upgrade/rollback", &format!("The old etcd does not come back on its data ({e:#}): restoring the snapshot taken before the upgrade"), json!({ "component": name, "restoreSnapshot": true }));
            let (took, running) = with_api_server_stopped(d, |d| {
                let since = SystemTime::now();
                restore_snapshot(d, &old)?;
                wait_up(d, component, None, Some(since))
            })?;
            d.fresh.retain(|(c, _)| *c != component);
            d.fresh.push((component, running));
            took
        }
        Err(e) => return Err(e),
    };
    d.swaps.remove(index);
    d.say(
        "upgrade/rollback",
        &format!(
            "{name} is healthy again at its old version after {:.1} s",
            took.as_secs_f64()
        ),
        json!({ "component": name, "ready": true, "seconds": took.as_secs_f64() }),
    );
    Ok(())
}

/// Waits until `component` runs in a container other than `before` (and in a sandbox created
/// since its manifest was written, when `since`), healthy and Ready.
pub fn wait_up(
    d: &UpgradeData,
    component: Component,
    before: Option<Running>,
    since: Option<SystemTime>,
) -> Result<(Duration, Running)> {
    let before = before.unwrap_or(Running {
        id: String::new(),
        attempt: 0,
    });
    let env = &d.env;
    // Healthy by its own word (its readiness probe): the mirror pod follows (`mirror_pods`).
    crate::block_on(crate::health::wait_restarted(
        &env.cfg,
        &env.layout,
        &env.out,
        component,
        &before,
        &d.client,
        crate::health::Until {
            mirror: false,
            limit: d.limit(),
            since,
        },
    ))
}

/// The `mirror-pods` step: every component this run started has its mirror pod Ready with its
/// new container, as the kubelet reports it — stale ones nudged; waited for together, briefly
/// (a note names the ones still behind, which the kubelet writes at its next resync).
pub fn mirror_pods(d: &mut UpgradeData, _: &Step) -> Result<()> {
    follow_mirror_pods(d);
    Ok(())
}

/// The mirror-pods step's work; also after a rollback, for the old containers.
pub fn follow_mirror_pods(d: &mut UpgradeData) {
    if d.fresh.is_empty() {
        return;
    }
    let node = d.env.cfg.init.node_registration.name.clone();
    let start = Instant::now();
    let client = d.client.clone();
    let checks = d.fresh.iter().map(|(component, running)| {
        let pod = format!("{}-{node}", component.name());
        let (client, node) = (client.clone(), node.clone());
        async move {
            let current =
                crate::health::refresh_mirror(&client, &pod, &node, &running.id, MIRROR_LIMIT)
                    .await;
            (pod, current)
        }
    });
    let results = crate::block_on(futures::future::join_all(checks));
    let behind: Vec<&String> = results
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(p, _)| p)
        .collect();
    let took = start.elapsed().as_secs_f64();
    if behind.is_empty() {
        d.say(
            "upgrade/staticpods",
            &format!("The kubelet reports every new pod Ready (mirror pods, {took:.1} s)"),
            json!({ "mirrorPods": true, "seconds": took }),
        );
    } else {
        d.say("upgrade/staticpods", &format!("{behind:?} are healthy; the kubelet has not reported them in their mirror pods within {MIRROR_LIMIT:?} (it does at its next resync)"), json!({ "mirrorPods": false, "behind": behind }));
    }
}

/// A manifest already at the target (a re-run after an interruption): its component must be up
/// before the next one changes.
fn ensure_up(d: &UpgradeData, component: Component) -> Result<()> {
    if d.dry_run() {
        return Ok(());
    }
    let (took, _) = wait_up(d, component, None, None)?;
    tracing::info!("{} is up ({:.1} s)", component.name(), took.as_secs_f64());
    Ok(())
}

/// Where a manifest waits while its pod stops: a dotfile in the same directory, which the kubelet
/// does not read.
fn aside(d: &UpgradeData, component: Component) -> PathBuf {
    d.env
        .layout
        .manifests_dir
        .join(format!(".{}.yaml.kubeforge-swap", component.name()))
}

/// A manifest an interrupted run left aside goes back first.
fn recover_aside(d: &mut UpgradeData, component: Component) -> Result<()> {
    let (path, aside) = (component.manifest(&d.env.layout), aside(d, component));
    if !path.exists() && aside.exists() {
        d.env.writer.rename(&aside, &path)?;
        d.say(
            "upgrade/staticpods",
            &format!(
                "Put back the manifest of {} an interrupted run had moved aside",
                component.name()
            ),
            json!({ "component": component.name(), "recovered": path }),
        );
    }
    Ok(())
}

/// Moves `component`'s manifest aside and waits until the kubelet is done with its pod; what ran.
/// The new manifest comes in only then: before, the kubelet would hold the new pod back 10 s or
/// more (it starts a static pod only after it has forgotten the pod of the same name, and looks
/// again after its back-off). The old container gets a few seconds, not its
/// grace period — but an etcd with peers (`orderly`) stops in order, handing leadership over; a
/// lone etcd loses nothing to a kill (it fsyncs its WAL).
pub fn stop_pod(
    d: &mut UpgradeData,
    component: Component,
    orderly: bool,
) -> Result<Option<Running>> {
    let path = component.manifest(&d.env.layout);
    let pod = format!(
        "{}-{}",
        component.name(),
        d.env.cfg.init.node_registration.name
    );
    let socket = d.env.cfg.init.node_registration.cri_socket.clone();
    let pods_dir = d.env.layout.kubelet_dir.join("pods");
    let (before, sandbox) = crate::block_on(async {
        let mut runtime = Runtime::connect(&socket).await?;
        Ok::<_, anyhow::Error>((runtime.running(&pod).await?, runtime.sandbox(&pod).await?))
    })?;
    let aside = aside(d, component);
    d.env.writer.rename(&path, &aside)?;
    let gone = crate::block_on(async {
        let mut runtime = Runtime::connect(&socket).await?;
        if let (Some(old), false) = (&before, orderly) {
            runtime.stop(&old.id, OLD_CONTAINER_GRACE).await?;
        }
        let start = Instant::now();
        while start.elapsed() < OLD_POD_LIMIT {
            let ready = runtime.sandbox(&pod).await?.is_some_and(|(_, ready)| ready);
            let dir = sandbox.as_ref().map(|(uid, _)| pods_dir.join(uid));
            if !ready && !dir.is_some_and(|d| d.exists()) {
                // The kubelet forgets the old pod (and so lets a pod of its name start) at a
                // housekeeping pass, every 2 s, not always the one that removed its directory.
                tokio::time::sleep(KUBELET_HOUSEKEEPING).await;
                return Ok::<_, anyhow::Error>(true);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(false)
    });
    match gone {
        Ok(true) => tracing::info!("{pod}: the kubelet is done with the old pod"),
        Ok(false) => {
            tracing::info!("{pod}: the kubelet did not finish the old pod within {OLD_POD_LIMIT:?}")
        }
        Err(e) => tracing::info!("{pod}: following the old pod: {e:#}"),
    }
    Ok(before)
}

/// Writes `manifest` as `component`'s and drops what waited aside.
pub fn start_pod(d: &mut UpgradeData, component: Component, manifest: &str) -> Result<()> {
    let path = component.manifest(&d.env.layout);
    d.env
        .write("control-plane", &File::new(path, manifest, MANIFEST_MODE))?;
    let aside = aside(d, component);
    d.env.writer.remove(&aside)
}

/// kubeadm's `renewCertsByComponent`: the certificates this component's upgrade renews.
fn renew_certificates(d: &mut UpgradeData, component: Component) -> Result<()> {
    if !d.opts.certificate_renewal {
        return Ok(());
    }
    let algorithm = KeyAlgorithm::Config(d.env.cfg.cluster.encryption_algorithm);
    let items: Vec<renew::Item> = renew::items(&d.env.cfg)
        .into_iter()
        .filter(|i| i.upgraded_with == Some(component))
        .collect();
    for item in items {
        let kubeconfig_dir = d.env.layout.kubernetes_dir.clone();
        let env = &d.env;
        let renewal = renew::renew(
            &item,
            &env.cfg,
            &env.layout,
            &kubeconfig_dir,
            &env.writer,
            algorithm,
            env.now,
        )?;
        match renewal {
            Renewal::Renewed { files, .. } => {
                d.say(
                    "upgrade/staticpods",
                    &format!("Renewing {} certificate", item.name),
                    json!({ "certificate": item.name }),
                );
                d.env.write_all("control-plane", &files)?;
            }
            Renewal::ExternalCa => d.say(
                "upgrade/staticpods",
                &format!(
                    "External CA detected, {} certificate can't be renewed",
                    item.name
                ),
                json!({ "certificate": item.name, "externalCA": true }),
            ),
            Renewal::Missing => {}
        }
    }
    Ok(())
}

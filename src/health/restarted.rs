//! The wait after a static pod's container was stopped for a restart: a new container running,
//! the component answering its own probe (as the kubelet asks it), and — while the API server
//! answers — its mirror pod Ready with that container. A new container that exits for certain is
//! reported at once, with the same diagnosis as init's wait.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use k8s_openapi::api::core::v1::{Container as PodContainer, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

use super::display::seconds;
use super::{diagnose, logs, pod_logs_dir, report_failure, LOG_LINES, TICK};
use crate::config::{Config, GoDuration};
use crate::cri::{Running, Runtime};
use crate::manifests::{first_container, Component};
use crate::node::Layout;
use crate::output::Output;

/// The URL of the component's readiness probe (its startup or liveness probe when it has none).
fn probe_url(container: &PodContainer) -> Option<String> {
    let probe = [
        &container.readiness_probe,
        &container.startup_probe,
        &container.liveness_probe,
    ]
    .into_iter()
    .flatten()
    .find_map(|p| p.http_get.clone())?;
    let port = match &probe.port {
        IntOrString::Int(p) => *p,
        IntOrString::String(name) => {
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))?
                .container_port
        }
    };
    let host = crate::config::net::connect_host(probe.host.as_deref().unwrap_or(""), "127.0.0.1");
    let scheme = probe.scheme.as_deref().unwrap_or("HTTP").to_lowercase();
    Some(format!(
        "{scheme}://{host}:{port}{}",
        probe.path.as_deref().unwrap_or("/")
    ))
}

/// Whether `pod`'s mirror pod is Ready with container `id`: None when the API server did not
/// answer, Some(None) when there is no such mirror pod.
async fn mirror_ready(admin: &kube::Client, pod: &str, id: &str) -> Option<Option<bool>> {
    let pods: kube::Api<Pod> = kube::Api::namespaced(admin.clone(), "kube-system");
    let got = tokio::time::timeout(Duration::from_secs(2), pods.get_opt(pod)).await;
    let Some(pod) = got.ok()?.ok()? else {
        return Some(None);
    };
    let status = pod.status.unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let ours = status.container_statuses.iter().flatten().any(|c| {
        c.container_id
            .as_deref()
            .is_some_and(|cid| cid.ends_with(id))
    });
    Some(Some(ready && ours))
}

/// What `wait_restarted` waits for besides the component's own probe.
#[derive(Debug, Clone)]
pub struct Until {
    /// Its mirror pod Ready with the new container, whenever the API server answers.
    pub mirror: bool,
    /// How long before a component that is not up yet (and has not failed for certain) fails.
    pub limit: Duration,
    /// Only a pod sandbox created since then is the component's (its manifest was replaced).
    pub since: Option<std::time::SystemTime>,
}

/// Waits until `component` runs again in a container other than `old` (the one its manifest on
/// disk names) and answers its probe (and `until` says the rest); how long that took and what
/// runs now. A new container that fails for certain ends the wait at once.
pub async fn wait_restarted(
    cfg: &Config,
    layout: &Layout,
    out: &Output,
    component: Component,
    old: &Running,
    admin: &kube::Client,
    until: Until,
) -> Result<(Duration, Running)> {
    let manifest = component.manifest(layout);
    wait_pod_restarted(cfg, out, component.name(), &manifest, old, admin, until).await
}

/// `wait_restarted` for any static pod of this node, by its name (its container's) and manifest.
pub async fn wait_pod_restarted(
    cfg: &Config,
    out: &Output,
    name: &str,
    manifest: &std::path::Path,
    old: &Running,
    admin: &kube::Client,
    until: Until,
) -> Result<(Duration, Running)> {
    let limit = until.limit;
    let manifest = std::fs::read_to_string(manifest)?;
    let container = first_container(&manifest)?;
    let image = container.image.clone().unwrap_or_default();
    let url = probe_url(&container);
    let pod = format!("{name}-{}", cfg.init.node_registration.name);
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .tls_danger_accept_invalid_certs(true)
        .build()?;
    let mut runtime = Runtime::connect(&cfg.init.node_registration.cri_socket).await?;
    if let Some(since) = until.since {
        runtime.only_sandboxes_since(since);
    }
    let start = Instant::now();
    loop {
        tokio::time::sleep(TICK).await;
        let facts = runtime.container(&pod, &image).await?;
        let new = runtime.running(&pod).await?.filter(|r| r.id != old.id);
        if let Some(new) = &new {
            let answers = match &url {
                Some(u) => http
                    .get(u)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success()),
                None => true,
            };
            if answers
                && (!until.mirror || mirror_ready(admin, &pod, &new.id).await != Some(Some(false)))
            {
                return Ok((start.elapsed(), new.clone()));
            }
        }
        let log_dir = pod_logs_dir(cfg);
        let log = logs::tail(&log_dir, &pod, name, LOG_LINES)
            .map(|t| t.1)
            .unwrap_or_default();
        // Only a container started after the stop can fail for certain: the stopped one's
        // exit and last words are the restart itself.
        let fresh = !facts.id.is_empty() && facts.id != old.id;
        let certain = fresh
            && facts.has_exited()
            && new.is_none()
            && diagnose::diagnose(&facts, &log).is_some_and(|d| d.certain);
        let timed_out = start.elapsed() > limit;
        if certain || timed_out {
            report_failure(out, name, &pod, facts, timed_out.then_some(limit), &log_dir);
            bail!(
                "{} did not come up{}",
                name,
                if timed_out {
                    format!(" within {}", GoDuration(limit))
                } else {
                    String::new()
                }
            );
        }
        tracing::debug!(
            "{}: {} ({})",
            name,
            facts.summary(),
            seconds(start.elapsed())
        );
    }
}

/// Waits (up to `limit`) until `pod`'s mirror pod on `node` is Ready with container `id`.
///
/// A kubelet whose watch of the API server broke while the API server restarted keeps a stale
/// copy of the mirror pods, and after a static pod's manifest is replaced it may wait for its
/// next periodic sync (a minute and more) to write the new mirror pod. Any change of the mirror
/// pod it sees makes it sync the static pod at once, so every few seconds: a stale mirror pod is
/// touched (an annotation), a missing one is stood in for by a placeholder mirror pod (never run:
/// the kubelet replaces it with its own, or removes it as an orphan). Whether it got there.
pub async fn refresh_mirror(
    admin: &kube::Client,
    pod: &str,
    node: &str,
    id: &str,
    limit: Duration,
) -> bool {
    let pods: kube::Api<Pod> = kube::Api::namespaced(admin.clone(), "kube-system");
    let start = Instant::now();
    let mut nudged: Option<Instant> = None;
    while start.elapsed() < limit {
        let state = mirror_ready(admin, pod, id).await;
        let due = nudged.is_none_or(|t| t.elapsed() > Duration::from_secs(3));
        match state {
            Some(Some(true)) => return true,
            Some(Some(false)) if due => {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                let patch = json!({ "metadata": { "annotations": { "kubeforge.io/resync": stamp.to_string() } } });
                let params = kube::api::PatchParams::default();
                let patch = kube::api::Patch::Merge(&patch);
                let call = pods.patch(pod, &params, &patch);
                let done = tokio::time::timeout(Duration::from_secs(2), call).await;
                tracing::info!(
                    "{pod}: touched the stale mirror pod: {:?}",
                    done.map(|r| r.is_ok())
                );
                nudged = Some(Instant::now());
            }
            Some(None) if due => {
                let params = kube::api::PostParams::default();
                let placeholder = placeholder_mirror(pod, node);
                let call = pods.create(&params, &placeholder);
                let done = tokio::time::timeout(Duration::from_secs(2), call).await;
                tracing::info!(
                    "{pod}: a placeholder mirror pod: {:?}",
                    done.map(|r| r.is_ok())
                );
                nudged = Some(Instant::now());
            }
            _ => {}
        }
        tokio::time::sleep(TICK).await;
    }
    false
}

/// A mirror pod for `node`'s static pod `name` that no static pod's hash matches.
fn placeholder_mirror(name: &str, node: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "namespace": "kube-system",
            "annotations": {
                "kubernetes.io/config.mirror": "kubeforge-placeholder",
                "kubernetes.io/config.source": "file",
            },
        },
        "spec": {
            "nodeName": node,
            "containers": [{ "name": "placeholder", "image": "kubeforge.invalid/placeholder" }],
        },
    }))
    .expect("a valid Pod")
}

/// Waits until the container `container` of the run-once static pod `kube-system/<pod>` exits;
/// its exit code and the last lines of its log.
pub async fn wait_exited(
    cfg: &Config,
    pod: &str,
    container: &str,
    image: &str,
    limit: Duration,
) -> Result<(i32, Vec<String>)> {
    let mut runtime = Runtime::connect(&cfg.init.node_registration.cri_socket).await?;
    let start = Instant::now();
    loop {
        let facts = runtime.container(pod, image).await?;
        let log = || {
            logs::tail(&pod_logs_dir(cfg), pod, container, LOG_LINES)
                .map(|t| t.1)
                .unwrap_or_default()
        };
        if let Some(code) = facts.exit_code {
            return Ok((code, log()));
        }
        if facts.image_missing || start.elapsed() > limit {
            bail!(
                "{pod} did not run to its end within {}: {} {}",
                GoDuration(limit),
                facts.summary(),
                log().join("\n")
            );
        }
        tokio::time::sleep(TICK).await;
    }
}

/// `[restart] <component> is Ready again after 4.1s`.
pub fn announce_ready(out: &Output, name: &str, took: Duration) {
    out.step(
        "restart",
        &format!("{name} is Ready again after {}", seconds(took)),
        json!({ "component": name, "ready": true, "seconds": took.as_secs_f64() }),
    );
}

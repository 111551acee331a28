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

/// Whether the mirror pod is Ready with container `id`; None when the API server does not answer.
async fn mirror_ready(admin: &kube::Client, pod: &str, id: &str) -> Option<bool> {
    let pods: kube::Api<Pod> = kube::Api::namespaced(admin.clone(), "kube-system");
    let got = tokio::time::timeout(Duration::from_secs(2), pods.get_opt(pod)).await;
    let pod = got.ok()?.ok()??;
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
    Some(ready && ours)
}

/// Waits until `component` runs again in a container other than `old`, answering its probe and
/// (when the API server answers) Ready; how long that took.
pub async fn wait_restarted(
    cfg: &Config,
    layout: &Layout,
    out: &Output,
    component: Component,
    old: &Running,
    admin: &kube::Client,
) -> Result<Duration> {
    let manifest = std::fs::read_to_string(component.manifest(layout))?;
    let container = first_container(&manifest)?;
    let image = container.image.clone().unwrap_or_default();
    let url = probe_url(&container);
    let pod = format!("{}-{}", component.name(), cfg.init.node_registration.name);
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .tls_danger_accept_invalid_certs(true)
        .build()?;
    let mut runtime = Runtime::connect(&cfg.init.node_registration.cri_socket).await?;
    let limit = cfg.init.timeouts.control_plane_component_health_check.0;
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
            if answers && mirror_ready(admin, &pod, &new.id).await != Some(false) {
                return Ok(start.elapsed());
            }
        }
        let log_dir = pod_logs_dir(cfg);
        let log = logs::tail(&log_dir, &pod, component.name(), LOG_LINES)
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
            report_failure(
                out,
                component,
                &pod,
                facts,
                timed_out.then_some(limit),
                &log_dir,
            );
            bail!(
                "{} did not come back after its restart{}",
                component.name(),
                if timed_out {
                    format!(" within {}", GoDuration(limit))
                } else {
                    String::new()
                }
            );
        }
        tracing::debug!(
            "{}: {} ({})",
            component.name(),
            facts.summary(),
            seconds(start.elapsed())
        );
    }
}

/// `[restart] <component> is Ready again after 4.1s`.
pub fn announce_ready(out: &Output, component: Component, took: Duration) {
    out.step(
        "restart",
        &format!(
            "{} is Ready again after {}",
            component.name(),
            seconds(took)
        ),
        json!({ "component": component.name(), "ready": true, "seconds": took.as_secs_f64() }),
    );
}

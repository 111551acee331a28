//! `wait-control-plane`: the kubelet's /healthz, then each component's health endpoint, then the
//! mirror pods Ready (watched, not polled). While it waits it follows every container — through
//! the mirror pod, or the container runtime while the API server is down — and stops as soon as
//! a failure is certain, saying which component, its container state and exit code, the end of
//! its log and the probable cause. It reads; what the cluster needs created meanwhile is the
//! caller's (`on_api_up`).

mod diagnose;
mod display;
mod logs;
mod mirror;
mod restarted;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use futures::stream::{BoxStream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use serde_json::json;

pub use diagnose::Container;
use display::{seconds, Display};
pub use mirror::readyz;
pub use restarted::{
    announce_ready, refresh_mirror, wait_exited, wait_pod_restarted, wait_restarted, Until,
};

use crate::config::{Config, GoDuration};
use crate::manifests::{self, first_container};
use crate::node::Layout;
use crate::output::Output;

/// How often health endpoints and the runtime are asked; the mirror pods are watched.
const TICK: Duration = Duration::from_millis(200);
const LOG_LINES: usize = 20;

/// One static pod to wait for, as its manifest on disk describes it.
pub struct Component {
    /// The container's name (a control-plane component's, or a balancer's).
    name: &'static str,
    pod: String,
    image: String,
    /// `None` for etcd, which kubeadm checks only through the API server.
    health: Option<Health>,
    healthy: Option<Duration>,
    ready: Option<Duration>,
    container: Option<Container>,
    state: String,
}

impl Component {
    fn new(name: &'static str, pod: String, image: String, health: Option<Health>) -> Component {
        Component {
            name,
            pod,
            image,
            health,
            healthy: None,
            ready: None,
            container: None,
            state: "waiting for the kubelet".into(),
        }
    }

    fn name(&self) -> &'static str {
        self.name
    }
}

enum Health {
    /// `/livez` through the admin client, TLS verified.
    ApiServer { server: String },
    /// A self-signed serving certificate (kcm, scheduler): checked without verification.
    Insecure { url: String },
}

impl Health {
    fn url(&self) -> String {
        match self {
            Health::ApiServer { server } => format!("{server}/livez"),
            Health::Insecure { url } => url.clone(),
        }
    }
}

/// The components whose manifests are in staticPodPath, with their health URLs taken from the
/// flags in those files (as kubeadm does, so patched ports and addresses are honoured).
fn components(layout: &Layout, node: &str) -> Result<Vec<Component>> {
    let mut found = Vec::new();
    for component in manifests::Component::ALL {
        let path = component.manifest(layout);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let container = first_container(&text)
            .with_context(|| format!("reading the manifest {}", path.display()))?;
        let command = container.command.unwrap_or_default();
        let health = component.health_endpoint(&command).map(|(base, path)| {
            if component == manifests::Component::KubeApiserver {
                Health::ApiServer { server: base }
            } else {
                Health::Insecure {
                    url: format!("{base}/{path}"),
                }
            }
        });
        found.push(Component::new(
            component.name(),
            format!("{}-{node}", component.name()),
            container.image.unwrap_or_default(),
            health,
        ));
    }
    // The HA endpoint's balancers: their mirror pods Ready (no health endpoint of their own).
    for (stem, name) in crate::endpoint::PODS {
        let path = crate::endpoint::manifest_path(layout, stem);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let container = first_container(&text)
            .with_context(|| format!("reading the manifest {}", path.display()))?;
        let image = container.image.unwrap_or_default();
        found.push(Component::new(name, format!("{stem}-{node}"), image, None));
    }
    if found.is_empty() {
        bail!(
            "no control-plane manifests in {}: run the etcd and control-plane phases first",
            layout.manifests_dir.display()
        );
    }
    Ok(found)
}

/// This node's API server (`https://<advertise-address>:<secure-port>`), from its manifest.
pub fn api_server_url(layout: &Layout) -> Result<String> {
    let path = manifests::Component::KubeApiserver.manifest(layout);
    let text = std::fs::read_to_string(&path)
        .map_err(|_| anyhow!("no kube-apiserver manifest to wait for"))?;
    let command = first_container(&text)
        .with_context(|| format!("reading the manifest {}", path.display()))?
        .command
        .unwrap_or_default();
    let (server, _) = manifests::Component::KubeApiserver
        .health_endpoint(&command)
        .expect("the API server serves health");
    Ok(server)
}

/// Where the kubelet keeps container logs: its `podLogsDir`, `/var/log/pods` by default.
fn pod_logs_dir(cfg: &Config) -> PathBuf {
    cfg.kubelet
        .as_ref()
        .and_then(|k| k.get("podLogsDir"))
        .and_then(|v| v.as_str())
        .map_or_else(|| PathBuf::from(logs::POD_LOG_ROOT), PathBuf::from)
}

fn kubelet_healthz(cfg: &Config) -> Option<String> {
    let kubelet = cfg.kubelet.as_ref();
    let get = |key: &str| kubelet.and_then(|k| k.get(key)).cloned();
    let port = get("healthzPort").and_then(|v| v.as_u64()).unwrap_or(10248);
    if port == 0 {
        return None;
    }
    let addr = get("healthzBindAddress")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "127.0.0.1".into());
    let host = crate::config::net::connect_host(&addr, "127.0.0.1");
    Some(format!("http://{host}:{port}/healthz"))
}

type PodEvents = BoxStream<'static, Result<watcher::Event<Pod>, watcher::Error>>;

/// The state of one wait.
struct Wait<'a> {
    cfg: &'a Config,
    components: Vec<Component>,
    http: reqwest::Client,
    admin: kube::Client,
    display: Display,
    start: Instant,
    log_dir: PathBuf,
    runtime: Option<crate::cri::Runtime>,
    runtime_asked: Option<Instant>,
    mirrors: BTreeMap<String, mirror::Mirror>,
    pods: Option<PodEvents>,
}

/// Waits until every control-plane component is healthy and its mirror pod Ready. Once the API
/// server is healthy, `on_api_up` is called with the admin client at every tick until it returns
/// true (the caller creates what the admin client needs to read pods); then the mirror pods are
/// watched.
pub async fn wait(
    cfg: &Config,
    layout: &Layout,
    out: Output,
    mut on_api_up: impl AsyncFnMut(&kube::Client) -> Result<bool>,
) -> Result<()> {
    let node = cfg.init.node_registration.name.clone();
    let components = components(layout, &node)?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .tls_danger_accept_invalid_certs(true)
        .build()?;
    out.step(
        "wait-control-plane",
        &format!(
            "Waiting for the kubelet to boot up the control plane as static Pods from directory {:?}",
            layout.manifests_dir.display().to_string()
        ),
        json!({ "manifests": layout.manifests_dir }),
    );
    kubelet_check(cfg, &http, &out).await?;
    announce(cfg, &components, &out);
    let server = api_server_url(layout)?;
    let admin =
        crate::kube::polling_client(&layout.kubeconfig("admin.conf"), Some(&server)).await?;
    let mut wait = Wait {
        cfg,
        components,
        http,
        admin,
        display: Display::new(out),
        start: Instant::now(),
        log_dir: pod_logs_dir(cfg),
        runtime: None,
        runtime_asked: None,
        mirrors: BTreeMap::new(),
        pods: None,
    };
    wait.follow(&node, &mut on_api_up).await
}

async fn kubelet_check(cfg: &Config, http: &reqwest::Client, out: &Output) -> Result<()> {
    let Some(url) = kubelet_healthz(cfg) else {
        out.step(
            "kubelet-check",
            "Skipping the kubelet health check: healthzPort is 0",
            json!({ "skipped": true }),
        );
        return Ok(());
    };
    let start = Instant::now();
    let limit = cfg.init.timeouts.kubelet_health_check.0;
    out.step(
        "kubelet-check",
        &format!(
            "Waiting for a healthy kubelet at {url}. This can take up to {}",
            GoDuration(limit)
        ),
        json!({ "url": url, "timeoutSeconds": limit.as_secs() }),
    );
    while !http.get(&url).send().await.is_ok_and(|r| r.status() == 200) {
        if start.elapsed() > limit {
            bail!(
                "the kubelet did not answer {url} within {}: is it running? (systemd: `systemctl status kubelet`, `journalctl -xeu kubelet`)",
                GoDuration(limit)
            );
        }
        tokio::time::sleep(TICK).await;
    }
    out.step(
        "kubelet-check",
        &format!("The kubelet is healthy after {}", seconds(start.elapsed())),
        json!({ "seconds": start.elapsed().as_secs_f64() }),
    );
    Ok(())
}

fn announce(cfg: &Config, components: &[Component], out: &Output) {
    let limit = cfg.init.timeouts.control_plane_component_health_check.0;
    out.step(
        "control-plane-check",
        &format!(
            "Waiting for healthy control plane components. This can take up to {}",
            GoDuration(limit)
        ),
        json!({ "timeoutSeconds": limit.as_secs() }),
    );
    for c in components {
        if let Some(h) = &c.health {
            out.step(
                "control-plane-check",
                &format!("Checking {} at {}", c.name(), h.url()),
                json!({ "component": c.name(), "url": h.url() }),
            );
        }
    }
}

impl Wait<'_> {
    async fn follow(
        &mut self,
        node: &str,
        on_api_up: &mut impl AsyncFnMut(&kube::Client) -> Result<bool>,
    ) -> Result<()> {
        let mut ticker = tokio::time::interval(TICK);
        loop {
            let next_event = async {
                match self.pods.as_mut() {
                    Some(s) => s.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = next_event => self.on_event(event),
                _ = ticker.tick() => {
                    self.check_health().await;
                    if self.api_up() && self.pods.is_none() && on_api_up(&self.admin).await? {
                        self.watch(node);
                    }
                }
            }
            self.update().await;
            if self.all_ready() {
                return Ok(());
            }
            self.fail_if_certain()?;
        }
    }

    fn on_event(&mut self, event: Option<Result<watcher::Event<Pod>, watcher::Error>>) {
        match event {
            Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => {
                if let Some(name) = pod.metadata.name.clone() {
                    self.mirrors.insert(name, mirror::mirror_facts(&pod));
                }
            }
            Some(Ok(watcher::Event::Delete(pod))) => {
                if let Some(name) = &pod.metadata.name {
                    self.mirrors.remove(name);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => tracing::debug!("watching the mirror pods: {e}"),
            None => self.pods = None,
        }
    }

    fn watch(&mut self, node: &str) {
        let api = kube::Api::<Pod>::namespaced(self.admin.clone(), "kube-system");
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        self.pods = Some(watcher::watcher(api, config).boxed());
    }

    fn api_up(&self) -> bool {
        self.components
            .iter()
            .any(|c| matches!(c.health, Some(Health::ApiServer { .. })) && c.healthy.is_some())
    }

    /// Asks every component not healthy yet at its health endpoint.
    async fn check_health(&mut self) {
        let checks = self.components.iter().map(|c| {
            let (http, admin) = (&self.http, &self.admin);
            async move {
                match (&c.health, c.healthy) {
                    (Some(_), Some(_)) | (None, _) => false,
                    (Some(Health::ApiServer { .. }), None) => mirror::livez(admin).await,
                    (Some(Health::Insecure { url }), None) => {
                        http.get(url).send().await.is_ok_and(|r| r.status() == 200)
                    }
                }
            }
        });
        let results = futures::future::join_all(checks).await;
        let at = self.start.elapsed();
        for (c, ok) in self.components.iter_mut().zip(results) {
            if ok {
                c.healthy = Some(at);
                self.display.end();
                self.display.out.step(
                    "control-plane-check",
                    &format!("{} is healthy after {}", c.name(), seconds(at)),
                    json!({ "component": c.name(), "healthy": true, "seconds": at.as_secs_f64() }),
                );
            }
        }
    }

    /// Each component's facts from its mirror pod, or (at most once a second, only for those not
    /// Ready) from the container runtime; a changed state is shown.
    async fn update(&mut self) {
        let ask_runtime = self
            .runtime_asked
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if ask_runtime {
            self.runtime_asked = Some(Instant::now());
            if self.runtime.is_none() {
                match crate::cri::Runtime::connect(&self.cfg.init.node_registration.cri_socket)
                    .await
                {
                    Ok(r) => self.runtime = Some(r),
                    Err(e) => tracing::debug!("{e:#}"),
                }
            }
        }
        let pull_never = self.cfg.init.node_registration.image_pull_policy == "Never";
        let at = self.start.elapsed();
        for c in self.components.iter_mut() {
            if let Some(m) = self.mirrors.get(&c.pod) {
                c.container = Some(m.container.clone());
                if m.ready
                    && c.ready.is_none()
                    && c.health.as_ref().is_none_or(|_| c.healthy.is_some())
                {
                    c.ready = Some(at);
                }
            } else if ask_runtime && c.ready.is_none() {
                if let Some(r) = self.runtime.as_mut() {
                    match r.container(&c.pod, &c.image).await {
                        Ok(facts) => c.container = Some(pulling_unless_never(facts, pull_never)),
                        Err(e) => tracing::debug!("asking the runtime about {}: {e:#}", c.pod),
                    }
                }
            }
            let state = state_of(c);
            if state != c.state {
                c.state = state;
                self.display.change(c, at);
            }
        }
        self.display.draw(&self.components, self.start);
    }

    fn all_ready(&mut self) -> bool {
        if self.components.iter().any(|c| c.ready.is_none()) {
            return false;
        }
        self.display.end();
        let slowest = self
            .components
            .iter()
            .filter_map(|c| c.ready)
            .max()
            .unwrap_or_default();
        let each: Vec<_> = self
            .components
            .iter()
            .map(|c| json!({"component": c.name(), "healthySeconds": c.healthy.map(|d| d.as_secs_f64()), "readySeconds": c.ready.map(|d| d.as_secs_f64())}))
            .collect();
        self.display.out.step(
            "wait-control-plane",
            &format!(
                "All control plane components are healthy and their mirror pods Ready after {}",
                seconds(slowest)
            ),
            json!({ "ready": true, "seconds": slowest.as_secs_f64(), "components": each }),
        );
        true
    }

    /// Whether `c` cannot come up for certain: only a container that ended or cannot start can
    /// fail for certain, and its log must say why (or it crash-loops).
    fn failed_for_certain(&self, c: &Component) -> bool {
        if c.healthy.is_some() && c.ready.is_some() {
            return false;
        }
        c.container.as_ref().is_some_and(|facts| {
            if facts.exit_code.is_none() && facts.reason.is_none() && !facts.image_missing {
                return false;
            }
            let log = logs::tail(&self.log_dir, &c.pod, c.name(), LOG_LINES)
                .map(|t| t.1)
                .unwrap_or_default();
            diagnose::diagnose(facts, &log).is_some_and(|d| d.certain)
        })
    }

    /// Stops the wait with a report when a component failed for certain or time is up.
    fn fail_if_certain(&mut self) -> Result<()> {
        let certain: Vec<&Component> = self
            .components
            .iter()
            .filter(|c| self.failed_for_certain(c))
            .collect();
        let limit = self
            .cfg
            .init
            .timeouts
            .control_plane_component_health_check
            .0;
        let timed_out = self.start.elapsed() > limit;
        if certain.is_empty() && !timed_out {
            return Ok(());
        }
        let failing: Vec<&Component> = if certain.is_empty() {
            self.components
                .iter()
                .filter(|c| c.ready.is_none())
                .collect()
        } else {
            certain
        };
        self.display.end();
        report(
            &self.display.out,
            &failing,
            timed_out.then_some(limit),
            &self.log_dir,
        );
        let names: Vec<&str> = failing.iter().map(|c| c.name()).collect();
        bail!("the control plane did not come up: {}", names.join(", "));
    }
}

/// A missing image the kubelet may still pull is being pulled, not missing.
fn pulling_unless_never(facts: Container, pull_never: bool) -> Container {
    if facts.image_missing && !pull_never {
        Container {
            state: "pulling".into(),
            image_missing: false,
            ..facts
        }
    } else {
        facts
    }
}

fn state_of(c: &Component) -> String {
    match (c.healthy.is_some() || c.health.is_none(), c.ready.is_some()) {
        (_, true) => "Ready".into(),
        (true, false) if c.health.is_some() => "healthy, mirror pod not Ready yet".into(),
        _ => match &c.container {
            None => "waiting for the kubelet".into(),
            Some(facts) => facts.summary(),
        },
    }
}

/// Per failing component: its container, the end of its log, and the probable cause.
fn report(out: &Output, failing: &[&Component], timed_out: Option<Duration>, log_dir: &Path) {
    for c in failing {
        let facts = c.container.clone().unwrap_or(Container {
            state: "not started".into(),
            ..Default::default()
        });
        report_failure(out, c.name, &c.pod, facts, timed_out, log_dir);
    }
}

/// One component that will not come up: its container, the end of its log, the probable cause.
fn report_failure(
    out: &Output,
    name: &str,
    pod: &str,
    facts: Container,
    timed_out: Option<Duration>,
    log_dir: &Path,
) {
    let tail = logs::tail(log_dir, pod, name, LOG_LINES);
    let log = tail.as_ref().map(|t| t.1.clone()).unwrap_or_default();
    let cause = diagnose::diagnose(&facts, &log).map_or_else(
        || "unknown: see the log above and `crictl ps -a`".to_string(),
        |d| d.cause,
    );
    let verdict = match timed_out {
        Some(limit) => format!("is not healthy after {}", GoDuration(limit)),
        None => "will not come up".to_string(),
    };
    if out.json() {
        out.print_json(&json!({
            "phase": "wait-control-plane",
            "component": name,
            "healthy": false,
            "container": facts,
            "logFile": tail.as_ref().map(|t| &t.0),
            "log": log,
            "cause": cause,
            "message": format!("{name} {verdict}"),
        }));
        return;
    }
    println!("[wait-control-plane] {name} {verdict}");
    println!("  container: {}", facts.summary());
    match &tail {
        Some((file, lines)) => {
            println!("  last {} lines of {}:", lines.len(), file.display());
            for line in lines {
                println!("    {line}");
            }
        }
        None => println!(
            "  no log under {}/kube-system_{pod}_*/{name}/",
            log_dir.display()
        ),
    }
    println!("  probable cause: {cause}");
}

//! `wait-control-plane`: the kubelet's /healthz, then each component's health endpoint, then the
//! mirror pods Ready (watched, not polled). While it waits it follows every container — through
//! the mirror pod, or the container runtime while the API server is down — and stops as soon as
//! a failure is certain, saying which component, its container state and exit code, the end of
//! its log and the probable cause.

mod api;
mod diagnose;
mod logs;
mod runtime;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use futures::stream::{BoxStream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use serde_json::json;

pub use api::{client, local_client};
pub use diagnose::Container;

use crate::config::Config;
use crate::host::Layout;
use crate::output::Output;
use crate::render::flag;

/// How often health endpoints and the runtime are asked; the mirror pods are watched.
const TICK: Duration = Duration::from_millis(200);
const LOG_LINES: usize = 20;

/// One static pod to wait for, as its manifest on disk describes it.
struct Component {
    name: String,
    pod: String,
    image: String,
    /// `None` for etcd, which kubeadm checks only through the API server.
    health: Option<Health>,
    healthy: Option<Duration>,
    ready: Option<Duration>,
    container: Option<Container>,
    state: String,
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

fn host(addr: &str, fallback: &str) -> String {
    let addr = match addr {
        "" => fallback,
        "0.0.0.0" => "127.0.0.1",
        "::" => "::1",
        a => a,
    };
    if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_string()
    }
}

/// The components whose manifests are in staticPodPath, with their health URLs taken from the
/// flags in those files (as kubeadm does, so patched ports and addresses are honoured).
fn components(layout: &Layout, node: &str) -> Result<Vec<Component>> {
    let mut found = Vec::new();
    for name in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        let path = layout.manifests_dir.join(format!("{name}.yaml"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let container = crate::render::first_container(&text)
            .with_context(|| format!("reading the manifest {}", path.display()))?;
        let command = container.command.unwrap_or_default();
        let health = match name {
            "kube-apiserver" => Some(Health::ApiServer {
                server: format!(
                    "https://{}:{}",
                    host(
                        flag(&command, "advertise-address").unwrap_or(""),
                        "127.0.0.1"
                    ),
                    flag(&command, "secure-port").unwrap_or("6443")
                ),
            }),
            "kube-controller-manager" | "kube-scheduler" => {
                let (port, path) = if name == "kube-scheduler" {
                    ("10259", "livez")
                } else {
                    ("10257", "healthz")
                };
                Some(Health::Insecure {
                    url: format!(
                        "https://{}:{}/{path}",
                        host(flag(&command, "bind-address").unwrap_or(""), "127.0.0.1"),
                        flag(&command, "secure-port").unwrap_or(port)
                    ),
                })
            }
            _ => None,
        };
        found.push(Component {
            name: name.to_string(),
            pod: format!("{name}-{node}"),
            image: container.image.unwrap_or_default(),
            health,
            healthy: None,
            ready: None,
            container: None,
            state: "waiting for the kubelet".into(),
        });
    }
    if found.is_empty() {
        bail!(
            "no control-plane manifests in {}: run the etcd and control-plane phases first",
            layout.manifests_dir.display()
        );
    }
    Ok(found)
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
    Some(format!(
        "http://{}:{port}/healthz",
        host(&addr, "127.0.0.1")
    ))
}

fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Shows the components' states: a live block on a terminal, a line per change otherwise, a
/// JSON event per change with `-o json`.
struct Display {
    out: Output,
    live: bool,
    drawn: usize,
}

impl Display {
    fn change(&mut self, c: &Component, at: Duration) {
        if self.out.json() {
            self.out.print_json(&json!({
                "phase": "wait-control-plane",
                "component": c.name,
                "state": c.state,
                "seconds": (at.as_secs_f64() * 10.0).round() / 10.0,
                "container": c.container,
            }));
        } else if !self.live {
            println!(
                "[wait-control-plane] {}: {} ({})",
                c.name,
                c.state,
                seconds(at)
            );
        }
    }

    fn draw(&mut self, components: &[Component], start: Instant) {
        if !self.live {
            return;
        }
        let mut out = std::io::stdout().lock();
        if self.drawn > 0 {
            let _ = write!(out, "\x1b[{}A", self.drawn);
        }
        for c in components {
            let at = c.ready.or(c.healthy).unwrap_or_else(|| start.elapsed());
            let _ = writeln!(
                out,
                "\x1b[2K  {:<24} {:<48} {:>7}",
                c.name,
                c.state,
                seconds(at)
            );
        }
        let _ = out.flush();
        self.drawn = components.len();
    }

    /// Plain lines from here on (a report, or the next phase).
    fn end(&mut self) {
        self.drawn = 0;
    }
}

/// Waits until every control-plane component is healthy and its mirror pod Ready.
pub fn wait_control_plane(cfg: &Config, layout: &Layout, out: Output) -> Result<()> {
    crate::runtime()?.block_on(wait(cfg, layout, out))
}

async fn wait(cfg: &Config, layout: &Layout, out: Output) -> Result<()> {
    let node = cfg.init.node_registration.name.clone();
    let mut components = components(layout, &node)?;
    let timeouts = &cfg.init.timeouts;
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
    let start = Instant::now();
    match kubelet_healthz(cfg) {
        None => out.step(
            "kubelet-check",
            "Skipping the kubelet health check: healthzPort is 0",
            json!({ "skipped": true }),
        ),
        Some(url) => {
            let limit = timeouts.kubelet_health_check.0;
            out.step(
                "kubelet-check",
                &format!(
                    "Waiting for a healthy kubelet at {url}. This can take up to {}",
                    crate::config::GoDuration(limit)
                ),
                json!({ "url": url, "timeoutSeconds": limit.as_secs() }),
            );
            loop {
                if http.get(&url).send().await.is_ok_and(|r| r.status() == 200) {
                    break;
                }
                if start.elapsed() > limit {
                    bail!(
                        "the kubelet did not answer {url} within {}: is it running? (systemd: `systemctl status kubelet`, `journalctl -xeu kubelet`)",
                        crate::config::GoDuration(limit)
                    );
                }
                tokio::time::sleep(TICK).await;
            }
            out.step(
                "kubelet-check",
                &format!("The kubelet is healthy after {}", seconds(start.elapsed())),
                json!({ "seconds": start.elapsed().as_secs_f64() }),
            );
        }
    }

    let limit = timeouts.control_plane_component_health_check.0;
    out.step(
        "control-plane-check",
        &format!(
            "Waiting for healthy control plane components. This can take up to {}",
            crate::config::GoDuration(limit)
        ),
        json!({ "timeoutSeconds": limit.as_secs() }),
    );
    for c in &components {
        if let Some(h) = &c.health {
            out.step(
                "control-plane-check",
                &format!("Checking {} at {}", c.name, h.url()),
                json!({ "component": c.name, "url": h.url() }),
            );
        }
    }

    let mut display = Display {
        out,
        live: out.format == crate::output::Format::Text && std::io::stdout().is_terminal(),
        drawn: 0,
    };
    let cp_start = Instant::now();
    let admin_conf = layout.kubeconfig("admin.conf");
    let super_admin_conf = layout.kubeconfig("super-admin.conf");
    let server = components
        .iter()
        .find_map(|c| match &c.health {
            Some(Health::ApiServer { server }) => Some(server.clone()),
            _ => None,
        })
        .ok_or_else(|| anyhow!("no kube-apiserver manifest to wait for"))?;
    let admin = api::local_client(&admin_conf, &server).await?;
    let classes_as = if super_admin_conf.exists() {
        &super_admin_conf
    } else {
        &admin_conf
    };
    let _early_classes = AbortOnDrop(tokio::spawn(create_priority_classes_early(
        classes_as.clone(),
        server.clone(),
    )));
    let log_dir = pod_logs_dir(cfg);
    let pull_never = cfg.init.node_registration.image_pull_policy == "Never";
    let mut runtime = None;
    let mut runtime_checked: Option<Instant> = None;
    let mut binding = false;
    let mut mirrors: BTreeMap<String, api::Mirror> = BTreeMap::new();
    let mut pods: Option<BoxStream<'static, Result<watcher::Event<Pod>, watcher::Error>>> = None;
    let mut ticker = tokio::time::interval(TICK);

    loop {
        tokio::select! {
            event = async { match pods.as_mut() { Some(s) => s.next().await, None => std::future::pending().await } } => {
                match event {
                    Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => {
                        if let Some(name) = pod.metadata.name.clone() {
                            mirrors.insert(name, api::mirror_facts(&pod));
                        }
                    }
                    Some(Ok(watcher::Event::Delete(pod))) => {
                        if let Some(name) = &pod.metadata.name {
                            mirrors.remove(name);
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => tracing::debug!("watching the mirror pods: {e}"),
                    None => pods = None,
                }
            }
            _ = ticker.tick() => {
                let checks = components.iter().map(|c| {
                    let (http, admin) = (&http, &admin);
                    async move {
                        match (&c.health, c.healthy) {
                            (Some(_), Some(_)) | (None, _) => false,
                            (Some(Health::ApiServer { .. }), None) => api::livez(admin).await,
                            (Some(Health::Insecure { url }), None) => {
                                http.get(url).send().await.is_ok_and(|r| r.status() == 200)
                            }
                        }
                    }
                });
                let results = futures::future::join_all(checks).await;
                for (c, ok) in components.iter_mut().zip(results) {
                    if ok {
                        c.healthy = Some(cp_start.elapsed());
                        display.end();
                        display.out.step(
                            "control-plane-check",
                            &format!("{} is healthy after {}", c.name, seconds(cp_start.elapsed())),
                            json!({ "component": c.name, "healthy": true, "seconds": cp_start.elapsed().as_secs_f64() }),
                        );
                    }
                }
                let api_up = components.iter().any(|c| matches!(c.health, Some(Health::ApiServer { .. })) && c.healthy.is_some());
                if api_up && !binding {
                    binding = ensure_binding(&admin, &super_admin_conf, &server).await?;
                    if binding {
                        let api = kube::Api::<Pod>::namespaced(admin.clone(), "kube-system");
                        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
                        pods = Some(watcher::watcher(api, config).boxed());
                    }
                }
            }
        }

        // The runtime is asked at most once a second, and only about components not yet Ready.
        let ask_runtime = runtime_checked.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if ask_runtime {
            runtime_checked = Some(Instant::now());
            if runtime.is_none() {
                match runtime::Runtime::connect(&cfg.init.node_registration.cri_socket).await {
                    Ok(r) => runtime = Some(r),
                    Err(e) => tracing::debug!("{e:#}"),
                }
            }
        }
        for c in components.iter_mut() {
            if let Some(m) = mirrors.get(&c.pod) {
                c.container = Some(m.container.clone());
                if m.ready
                    && c.ready.is_none()
                    && c.health.as_ref().is_none_or(|_| c.healthy.is_some())
                {
                    c.ready = Some(cp_start.elapsed());
                }
            } else if ask_runtime && c.ready.is_none() {
                if let Some(r) = runtime.as_mut() {
                    match r.container(&c.pod, &c.image).await {
                        Ok(mut facts) => {
                            if facts.image_missing && !pull_never {
                                facts = Container {
                                    state: "pulling".into(),
                                    ..facts
                                };
                                facts.image_missing = false;
                            }
                            c.container = Some(facts);
                        }
                        Err(e) => tracing::debug!("asking the runtime about {}: {e:#}", c.pod),
                    }
                }
            }
            let state = state_of(c);
            if state != c.state {
                c.state = state;
                display.change(c, cp_start.elapsed());
            }
        }
        display.draw(&components, cp_start);

        if components.iter().all(|c| c.ready.is_some()) {
            display.end();
            let slowest = components
                .iter()
                .filter_map(|c| c.ready)
                .max()
                .unwrap_or_default();
            display.out.step(
                "wait-control-plane",
                &format!("All control plane components are healthy and their mirror pods Ready after {}", seconds(slowest)),
                json!({ "ready": true, "seconds": slowest.as_secs_f64(), "components": components.iter().map(|c| json!({"component": c.name, "healthySeconds": c.healthy.map(|d| d.as_secs_f64()), "readySeconds": c.ready.map(|d| d.as_secs_f64())})).collect::<Vec<_>>() }),
            );
            return Ok(());
        }
        let certain: Vec<usize> = components
            .iter()
            .enumerate()
            .filter(|(_, c)| c.healthy.is_none() || c.ready.is_none())
            .filter(|(_, c)| {
                c.container.as_ref().is_some_and(|facts| {
                    // Only a container that ended or cannot start can fail for certain.
                    if facts.exit_code.is_none() && facts.reason.is_none() && !facts.image_missing {
                        return false;
                    }
                    let log = logs::tail(&log_dir, &c.pod, &c.name, LOG_LINES)
                        .map(|t| t.1)
                        .unwrap_or_default();
                    diagnose::diagnose(facts, &log).is_some_and(|d| d.certain)
                })
            })
            .map(|(i, _)| i)
            .collect();
        let timed_out = cp_start.elapsed() > limit;
        if !certain.is_empty() || timed_out {
            display.end();
            let failing: Vec<&Component> = if certain.is_empty() {
                components.iter().filter(|c| c.ready.is_none()).collect()
            } else {
                certain.iter().map(|&i| &components[i]).collect()
            };
            report(&display.out, &failing, timed_out.then_some(limit), &log_dir);
            let names: Vec<&str> = failing.iter().map(|c| c.name.as_str()).collect();
            bail!("the control plane did not come up: {}", names.join(", "));
        }
    }
}

/// Creates the API server's built-in PriorityClasses the moment it takes requests. The kubelet
/// creates its mirror pods within 0.1 s of its Node registering; the API server's own hook makes
/// these classes a second after it starts serving, so without this every mirror pod is refused
/// ("no PriorityClass with name system-node-critical") and asked for again only at that pod's
/// next sync (its startup probe passing, or the kubelet's one-minute resync). Until the API
/// server listens each try is refused at once; then a try waits inside the API server until it
/// serves, and is answered together with the kubelet's registration — usually just before it.
/// Only a speed-up: without it the API server makes the classes itself, so it never fails the wait.
async fn create_priority_classes_early(kubeconfig: PathBuf, server: String) {
    let client = match api::local_client(&kubeconfig, &server).await {
        Ok(client) => client,
        Err(e) => {
            tracing::debug!("creating the system PriorityClasses: {e:#}");
            return;
        }
    };
    loop {
        match tokio::time::timeout(
            Duration::from_secs(10),
            api::create_system_priority_classes(&client),
        )
        .await
        {
            Ok(Ok(())) => {
                tracing::debug!("the system PriorityClasses are in place");
                return;
            }
            Ok(Err(e)) => tracing::debug!("creating the system PriorityClasses: {e:#}"),
            Err(_) => tracing::debug!("creating the system PriorityClasses: no answer in 10 s"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// admin.conf first, super-admin.conf when admin.conf is not allowed yet (contract 2.4). Returns
/// false while the API server does not accept the request yet.
async fn ensure_binding(
    admin: &kube::Client,
    super_admin_conf: &Path,
    server: &str,
) -> Result<bool> {
    match api::create_cluster_admins_binding(admin).await {
        Ok(api::Created::Done) => return Ok(true),
        Ok(api::Created::Forbidden) => {}
        Err(e) => {
            tracing::debug!("creating the kubeadm:cluster-admins binding: {e:#}");
            return Ok(false);
        }
    }
    tracing::info!("creating the ClusterRoleBinding for the kubeadm:cluster-admins Group by using super-admin.conf");
    let super_admin = api::local_client(super_admin_conf, server).await?;
    match api::create_cluster_admins_binding(&super_admin).await {
        Ok(api::Created::Done) => Ok(true),
        Ok(api::Created::Forbidden) => bail!(
            "{} may not create the kubeadm:cluster-admins ClusterRoleBinding",
            super_admin_conf.display()
        ),
        Err(e) => {
            tracing::debug!("creating the kubeadm:cluster-admins binding: {e:#}");
            Ok(false)
        }
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
        let tail = logs::tail(log_dir, &c.pod, &c.name, LOG_LINES);
        let log = tail.as_ref().map(|t| t.1.clone()).unwrap_or_default();
        let diagnosis = diagnose::diagnose(&facts, &log);
        let cause = diagnosis.as_ref().map_or_else(
            || "unknown: see the log above and `crictl ps -a`".to_string(),
            |d| d.cause.clone(),
        );
        let verdict = match timed_out {
            Some(limit) => format!("is not healthy after {}", crate::config::GoDuration(limit)),
            None => "will not come up".to_string(),
        };
        if out.json() {
            out.print_json(&json!({
                "phase": "wait-control-plane",
                "component": c.name,
                "healthy": false,
                "container": facts,
                "logFile": tail.as_ref().map(|t| &t.0),
                "log": log,
                "cause": cause,
                "message": format!("{} {verdict}", c.name),
            }));
            continue;
        }
        println!("[wait-control-plane] {} {verdict}", c.name);
        println!("  container: {}", facts.summary());
        match &tail {
            Some((file, lines)) => {
                println!("  last {} lines of {}:", lines.len(), file.display());
                for line in lines {
                    println!("    {line}");
                }
            }
            None => println!(
                "  no log under {}/kube-system_{}_*/{}/",
                log_dir.display(),
                c.pod,
                c.name
            ),
        }
        println!("  probable cause: {cause}");
    }
}

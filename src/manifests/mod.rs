//! Static pod manifests: handlebars (strict) over `templates/*.yaml.hbs`, parsed into a
//! k8s-openapi `Pod`, completed with the operator's extraArgs / extraVolumes / extraEnvs, and
//! serialized deterministically (keys sorted at every level, as kubeadm's output is).

pub mod hardened;
pub mod patches;

use anyhow::{anyhow, Context, Result};
use handlebars::Handlebars;
use k8s_openapi::api::core::v1::{EnvVar, HostPathVolumeSource, Pod, Volume, VolumeMount};
use serde_json::{json, Value};
use std::path::Path;

use crate::config::net::{connect_host, is_unspecified, url_host};
use crate::config::{semver, Arg, Config, HostPathMount};
use crate::node::Layout;
use crate::versions;

/// A control-plane component that runs as a static pod, in the order kubeadm writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    Etcd,
    KubeApiserver,
    KubeControllerManager,
    KubeScheduler,
}

impl Component {
    pub const ALL: [Component; 4] = [
        Component::Etcd,
        Component::KubeApiserver,
        Component::KubeControllerManager,
        Component::KubeScheduler,
    ];
    pub const CONTROL_PLANE: [Component; 3] = [
        Component::KubeApiserver,
        Component::KubeControllerManager,
        Component::KubeScheduler,
    ];

    /// The container's (and image's) name, and the manifest's file stem.
    pub fn name(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::KubeApiserver => "kube-apiserver",
            Component::KubeControllerManager => "kube-controller-manager",
            Component::KubeScheduler => "kube-scheduler",
        }
    }

    /// The account it runs as in profile hardened (docs/security.md, "Non-root components").
    pub fn account(self) -> &'static str {
        use crate::rootless::{APISERVER_USER, CONTROLLER_MANAGER_USER, ETCD_USER, SCHEDULER_USER};
        match self {
            Component::Etcd => ETCD_USER,
            Component::KubeApiserver => APISERVER_USER,
            Component::KubeControllerManager => CONTROLLER_MANAGER_USER,
            Component::KubeScheduler => SCHEDULER_USER,
        }
    }

    /// Whether profile hardened starts it through `kubeforge exec-as`: its kubeconfig is root's
    /// alone (CIS 1.1.15–1.1.18), so the pod starts as root and the launcher drops to the account.
    fn launched(self) -> bool {
        matches!(
            self,
            Component::KubeControllerManager | Component::KubeScheduler
        )
    }

    pub fn from_name(name: &str) -> Option<Component> {
        Component::ALL.into_iter().find(|c| c.name() == name)
    }

    /// kubeadm's sub-phase name (`etcd local`, `control-plane apiserver`, …).
    pub fn sub_phase(self) -> &'static str {
        match self {
            Component::Etcd => "local",
            Component::KubeApiserver => "apiserver",
            Component::KubeControllerManager => "controller-manager",
            Component::KubeScheduler => "scheduler",
        }
    }

    /// The manifest in the kubelet's staticPodPath.
    pub fn manifest(self, layout: &Layout) -> std::path::PathBuf {
        layout.manifests_dir.join(format!("{}.yaml", self.name()))
    }

    fn builtin_template(self) -> &'static str {
        match self {
            Component::Etcd => include_str!("../../templates/etcd.yaml.hbs"),
            Component::KubeApiserver => include_str!("../../templates/kube-apiserver.yaml.hbs"),
            Component::KubeControllerManager => {
                include_str!("../../templates/kube-controller-manager.yaml.hbs")
            }
            Component::KubeScheduler => include_str!("../../templates/kube-scheduler.yaml.hbs"),
        }
    }

    /// Where it serves its health endpoints, from the flags of its manifest (patched ports and
    /// addresses honoured, as kubeadm does): `(https://host:port, path)`. etcd: none (kubeadm
    /// checks it through the API server).
    pub fn health_endpoint(self, command: &[String]) -> Option<(String, &'static str)> {
        let (address_flag, fallback_port, path) = match self {
            Component::Etcd => return None,
            Component::KubeApiserver => ("advertise-address", "6443", "livez"),
            Component::KubeControllerManager => ("bind-address", "10257", "healthz"),
            Component::KubeScheduler => ("bind-address", "10259", "livez"),
        };
        let host = connect_host(flag(command, address_flag).unwrap_or(""), "127.0.0.1");
        let port = flag(command, "secure-port").unwrap_or(fallback_port);
        Some((format!("https://{host}:{port}"), path))
    }
}

/// Static pod manifests are the kubelet's and root's only, as kubeadm writes them.
pub const MANIFEST_MODE: u32 = 0o600;

/// CA trust directories mounted into the API server and controller-manager when the host has
/// them, as kubeadm does (`ca-certs` always).
const CA_TRUST: &[(&str, &str)] = &[
    ("ca-certs", "/etc/ssl/certs"),
    ("etc-ca-certificates", "/etc/ca-certificates"),
    ("etc-pki-ca-trust", "/etc/pki/ca-trust"),
    ("etc-pki-tls-certs", "/etc/pki/tls/certs"),
    (
        "usr-local-share-ca-certificates",
        "/usr/local/share/ca-certificates",
    ),
    ("usr-share-ca-certificates", "/usr/share/ca-certificates"),
];

/// The etcd image tag for the config's version (`templates/versions.yaml`); `etcd.local.imageTag`
/// wins.
pub fn etcd_image_tag(cfg: &Config) -> String {
    if let Some(tag) = cfg
        .cluster
        .etcd
        .local
        .as_ref()
        .map(|l| &l.image_tag)
        .filter(|t| !t.is_empty())
    {
        return tag.clone();
    }
    versions::for_minor(cfg.kubernetes_minor()).etcd.clone()
}

fn image(cfg: &Config, name: &str, tag: &str, repo_override: Option<&str>) -> String {
    let repo = repo_override
        .filter(|r| !r.is_empty())
        .unwrap_or(&cfg.cluster.image_repository);
    format!("{repo}/{name}:{}", tag.replace('+', "_"))
}

pub fn kube_proxy_image(cfg: &Config) -> String {
    image(cfg, "kube-proxy", &cfg.cluster.kubernetes_version, None)
}

/// CoreDNS lives under `coredns/` in registry.k8s.io only.
pub fn coredns_image(cfg: &Config) -> String {
    let default_repo = cfg.cluster.image_repository == "registry.k8s.io";
    let name = if default_repo {
        "coredns/coredns"
    } else {
        "coredns"
    };
    let tag = Some(cfg.cluster.dns.image_tag.as_str())
        .filter(|t| !t.is_empty())
        .unwrap_or(&versions::for_minor(cfg.kubernetes_minor()).coredns);
    image(cfg, name, tag, Some(&cfg.cluster.dns.image_repository))
}

/// `kubeforge config images list`, in kubeadm's order.
pub fn images(cfg: &Config) -> Vec<String> {
    let v = &cfg.cluster.kubernetes_version;
    let mut list: Vec<String> = Component::CONTROL_PLANE
        .iter()
        .map(|c| image(cfg, c.name(), v, None))
        .collect();
    if !cfg.cluster.proxy.disabled {
        list.push(kube_proxy_image(cfg));
    }
    if !cfg.cluster.dns.disabled {
        list.push(coredns_image(cfg));
    }
    let pause = &versions::for_minor(cfg.kubernetes_minor()).pause;
    list.push(image(cfg, "pause", pause, None));
    if let Some(local) = &cfg.cluster.etcd.local {
        list.push(image(
            cfg,
            "etcd",
            &etcd_image_tag(cfg),
            Some(&local.image_repository),
        ));
    }
    list
}

fn is_ipv6(addr: &str) -> bool {
    addr.parse::<std::net::Ipv6Addr>().is_ok()
}

/// Startup probes. kubeadm waits 10 s and then probes every 10 s (failureThreshold 24: the 4 min
/// controlPlaneComponentHealthCheck budget), so a component is Ready 10–20 s after it starts.
/// kubeforge probes every second (failureThreshold 240: the same budget) after 6 s. Not earlier:
/// wait-control-plane creates the system-node-critical PriorityClass as the API server starts
/// serving, and when the kubelet's first mirror pods beat it they are refused and asked for
/// again at the pod's next sync — the first successful startup probe, which must come after the
/// class exists, or the kubelet's next resync, a minute later. The API server answers about 3–4 s
/// after its container starts on a 2-core VM, and makes the class itself a second later.
const STARTUP_PROBE_DELAY: u64 = 6;
const STARTUP_PROBE_PERIOD: u64 = 1;

/// The run-once static pod that restores an etcd snapshot (`templates/etcd-restore.yaml.hbs`):
/// `image` runs `command` with `snapshot_dir` (read-only) and `restore_dir` mounted at the same
/// paths as on the host.
pub fn etcd_restore_pod(
    image: &str,
    command: &[String],
    snapshot_dir: &Path,
    restore_dir: &Path,
) -> Result<String> {
    let hb = strict_handlebars();
    let quoted: Vec<String> = command
        .iter()
        .map(|a| serde_json::to_string(a).expect("a string"))
        .collect();
    let text = hb.render_template(
        include_str!("../../templates/etcd-restore.yaml.hbs"),
        &json!({
            "command": quoted,
            "etcdctl": command.first().is_some_and(|c| c == "etcdctl"),
            "image": image,
            "snapshotDir": snapshot_dir,
            "restoreDir": restore_dir,
        }),
    )?;
    let pod: Pod = serde_yaml::from_str(&text).context("the etcd restore pod template")?;
    Ok(serialize(&pod))
}

/// Handlebars as every template here runs: strict (a missing value is an error), no escaping.
pub fn strict_handlebars() -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(handlebars::no_escape);
    hb
}

/// A static pod with the config's patches for `name` applied, as the bytes to write.
pub fn patched_manifest(cfg: &Config, name: &str, mut pod: Pod) -> Result<String> {
    let value = serde_json::to_value(&pod).expect("a Pod serializes");
    let patched = patches::for_target(cfg, name, value.clone())?;
    if patched != value {
        pod = serde_json::from_value(patched).map_err(|e| {
            crate::BadInput(format!(
                "after the patches for {name}, the manifest is not a valid Pod: {e}"
            ))
        })?;
    }
    Ok(serialize(&pod))
}

/// What the templates of one node render with: its config, its paths, and `--templates DIR`.
pub struct Renderer<'a> {
    pub cfg: &'a Config,
    pub layout: &'a Layout,
    /// Manifest templates (`<component>.yaml.hbs`) that replace the built-in ones.
    pub templates: Option<&'a Path>,
}

impl Renderer<'_> {
    /// One component's manifest as the bytes to write.
    pub fn render(&self, component: Component) -> Result<String> {
        let data = match component {
            Component::Etcd => self.etcd(None)?,
            Component::KubeApiserver => self.apiserver(),
            Component::KubeControllerManager => self.controller_manager(),
            Component::KubeScheduler => self.scheduler(),
        };
        self.finish(component, &data)
    }

    /// The securityContext of a hardened `component` (docs/security.md, "Non-root components"):
    /// capabilities dropped, no privilege escalation; etcd and kube-apiserver run as their own
    /// accounts (the IDs they exist with, or the ones they will be made with), and the launched
    /// components start as root with SETUID and SETGID alone, for `exec-as` to become theirs.
    fn rootless(&self, component: Component) -> Result<Value> {
        let hardened = self.cfg.security.hardened();
        let ids = || -> Result<Value> {
            let account = crate::node::accounts::existing_or_planned(component.account())?;
            Ok(json!({ "uid": account.uid, "gid": account.gid }))
        };
        let (run_as, launcher) = match (hardened, component.launched()) {
            (false, _) => (json!(false), json!(false)),
            (true, false) => (ids()?, json!(false)),
            (true, true) => {
                let binary = std::env::current_exe().context("locating the kubeforge binary")?;
                let mut launcher = ids()?;
                launcher["binary"] = json!(binary);
                (json!(false), launcher)
            }
        };
        // The kube-apiserver binary carries the file capability cap_net_bind_service: its exec
        // fails unless the bounding set keeps it (kubeadm adds it for the same reason). Without
        // privilege escalation the process never gains it, which a port below 1024 needs.
        let apiserver = component == Component::KubeApiserver;
        Ok(json!({
            "container": hardened,
            "runAs": run_as,
            "launcher": launcher,
            "netBindService": apiserver,
            "noEscalation": !(apiserver && self.cfg.bind_port() < 1024),
        }))
    }

    /// etcd's manifest for a member joining `initial_cluster` (every member, this node a
    /// learner): it starts with `--initial-cluster-state=existing`.
    pub fn render_joining_etcd(&self, initial_cluster: &str) -> Result<String> {
        let data = self.etcd(Some(initial_cluster))?;
        self.finish(Component::Etcd, &data)
    }

    fn template(&self, component: Component) -> Result<String> {
        match self.templates {
            Some(dir) => {
                let path = dir.join(format!("{}.yaml.hbs", component.name()));
                std::fs::read_to_string(&path)
                    .with_context(|| format!("reading the template {}", path.display()))
            }
            None => Ok(component.builtin_template().to_string()),
        }
    }

    /// Template + data → Pod, completed with the operator's extras and patches → YAML.
    fn finish(&self, component: Component, data: &Value) -> Result<String> {
        let name = component.name();
        let mut data = data.clone();
        data["rootless"] = self.rootless(component)?;
        let text = strict_handlebars()
            .render_template(&self.template(component)?, &data)
            .with_context(|| format!("rendering the {name} template"))?;
        let mut pod: Pod = serde_yaml::from_str(&text)
            .with_context(|| format!("the rendered {name} manifest is not a valid Pod"))?;
        complete(self.cfg, component, &mut pod)?;
        launch_through(&mut pod, &data["rootless"]["launcher"]);
        patched_manifest(self.cfg, name, pod)
    }

    /// The probe settings of a component serving on `host:port`.
    fn probe(&self, host: &str, numeric_port: u16) -> Value {
        let named = self.cfg.kubernetes_minor() >= 34;
        let budget = self
            .cfg
            .init
            .timeouts
            .control_plane_component_health_check
            .0
            .as_secs();
        json!({
            "named": named,
            "port": if named { json!("probe-port") } else { json!(numeric_port) },
            "host": host,
            "initialDelaySeconds": 10,
            "startupInitialDelaySeconds": STARTUP_PROBE_DELAY,
            "startupPeriodSeconds": STARTUP_PROBE_PERIOD,
            "startupFailureThreshold": budget.div_ceil(STARTUP_PROBE_PERIOD),
        })
    }

    fn image(&self, component: Component) -> String {
        image(
            self.cfg,
            component.name(),
            &self.cfg.cluster.kubernetes_version,
            None,
        )
    }

    fn controller_manager(&self) -> Value {
        let cfg = self.cfg;
        let pki = self.layout.pki_dir.display().to_string();
        // An external CA (its key absent) signs nothing here: the signing flags stay empty.
        let external_ca = !self.layout.pki_dir.join("ca.key").exists()
            && self.layout.pki_dir.join("ca.crt").exists();
        let (cert, key) = if external_ca {
            (String::new(), String::new())
        } else {
            (format!("{pki}/ca.crt"), format!("{pki}/ca.key"))
        };
        let host = bind_host(&cfg.cluster.controller_manager.extra_args);
        json!({
            "image": self.image(Component::KubeControllerManager),
            "kubeconfig": self.layout.kubeconfig("controller-manager.conf"),
            "pki": pki,
            "podSubnet": cfg.cluster.networking.pod_subnet,
            "serviceSubnet": cfg.cluster.networking.service_subnet,
            "clusterName": cfg.cluster.cluster_name,
            "signingCert": cert,
            "signingKey": key,
            "caTrust": ca_trust(),
            // kubeadm v1.36 no longer mounts the FlexVolume plugin directory.
            "flexVolume": cfg.kubernetes_minor() < 36,
            "probe": self.probe(&host, 10257),
            "cis": hardened::template_data(cfg, self.layout),
        })
    }

    fn scheduler(&self) -> Value {
        let host = bind_host(&self.cfg.cluster.scheduler.extra_args);
        json!({
            "image": self.image(Component::KubeScheduler),
            "kubeconfig": self.layout.kubeconfig("scheduler.conf"),
            "probe": self.probe(&host, 10259),
            "cis": hardened::template_data(self.cfg, self.layout),
        })
    }

    fn apiserver(&self) -> Value {
        let cfg = self.cfg;
        let adv = &cfg.init.local_api_endpoint.advertise_address;
        let port = cfg.bind_port();
        let pki = self.layout.pki_dir.display().to_string();
        let host = if is_unspecified(adv) {
            ""
        } else {
            adv.as_str()
        };
        json!({
            "image": self.image(Component::KubeApiserver),
            "endpoint": format!("{}:{port}", url_host(adv)),
            "advertiseAddress": adv,
            "bindPort": port,
            "dnsDomain": cfg.cluster.networking.dns_domain,
            "serviceSubnet": cfg.cluster.networking.service_subnet,
            "pki": pki,
            "etcd": self.apiserver_etcd(),
            "caTrust": ca_trust(),
            "probe": self.probe(host, port),
            "cis": hardened::template_data(cfg, self.layout),
            // Under the PKI directory, which the API server mounts already: no mount of its own
            // (a single-file mount would keep showing the file replaced by a rotation).
            "encryptionConfig": cfg.security.encryption_at_rest
                .then(|| crate::encryption::path(&self.layout.pki_dir)),
            // Profile hardened: kubelets serve certificates of the cluster CA (kubelet::serving).
            "kubeletCertificateAuthority": cfg.security.hardened().then(|| self.layout.pki_dir.join("ca.crt")),
        })
    }

    /// The API server's etcd: the local member over loopback, or the external endpoints (their
    /// certificate directories outside the PKI mounted).
    fn apiserver_etcd(&self) -> Value {
        let pki = self.layout.pki_dir.display().to_string();
        let Some(ext) = &self.cfg.cluster.etcd.external else {
            let loopback = loopback(&self.cfg.init.local_api_endpoint.advertise_address);
            return json!({
                "caFile": format!("{pki}/etcd/ca.crt"),
                "certFile": format!("{pki}/apiserver-etcd-client.crt"),
                "keyFile": format!("{pki}/apiserver-etcd-client.key"),
                "servers": format!("https://{}:2379", url_host(loopback)),
                "volumes": [],
            });
        };
        let mut dirs: Vec<String> = Vec::new();
        for f in [&ext.ca_file, &ext.cert_file, &ext.key_file] {
            let dir = Path::new(f)
                .parent()
                .map(|d| d.display().to_string())
                .unwrap_or_default();
            if !dir.is_empty()
                && !Path::new(&dir).starts_with(&self.layout.pki_dir)
                && !dirs.contains(&dir)
            {
                dirs.push(dir);
            }
        }
        json!({
            "caFile": ext.ca_file, "certFile": ext.cert_file, "keyFile": ext.key_file,
            "servers": ext.endpoints.join(","),
            "volumes": dirs.iter().enumerate().map(|(i, d)| json!({"name": format!("etcd-certs-{i}"), "path": d})).collect::<Vec<_>>(),
        })
    }

    fn etcd(&self, joining: Option<&str>) -> Result<Value> {
        let cfg = self.cfg;
        let local = cfg
            .cluster
            .etcd
            .local
            .as_ref()
            .ok_or_else(|| anyhow!("etcd is external"))?;
        let adv = &cfg.init.local_api_endpoint.advertise_address;
        let loopback = loopback(adv);
        let tag = etcd_image_tag(cfg);
        let version = semver(&tag);
        // /livez and /readyz exist from etcd 3.5.11 on; older etcd only has /health.
        let probes = if version.is_none_or(|v| v >= (3, 5, 11)) {
            json!({ "liveness": "/livez", "readiness": "/readyz", "startup": "/readyz" })
        } else {
            json!({ "liveness": "/health?exclude=NOSPACE&serializable=true", "readiness": "", "startup": "/health?serializable=false" })
        };
        let node = &cfg.init.node_registration.name;
        let peer = format!("https://{}:2380", url_host(adv));
        Ok(json!({
            "image": image(cfg, "etcd", &tag, Some(&local.image_repository)),
            "clientUrl": format!("https://{}:2379", url_host(adv)),
            "peerUrl": peer,
            "initialCluster": joining.map_or_else(|| format!("{node}={peer}"), str::to_string),
            "joiningExisting": joining.is_some(),
            "listenClientUrls": format!("https://{}:2379,https://{}:2379", url_host(loopback), url_host(adv)),
            "loopback": loopback,
            "loopbackHost": url_host(loopback),
            "metricsPort": 2381,
            "nodeName": node,
            "dataDir": local.data_dir,
            "pki": self.layout.pki_dir.display().to_string(),
            "etcd36": version.is_some_and(|v| v >= (3, 6, 0)),
            "probes": probes,
            "probe": self.probe(loopback, 2381),
            "cis": hardened::template_data(cfg, self.layout),
        }))
    }
}

fn loopback(advertise_address: &str) -> &'static str {
    if is_ipv6(advertise_address) {
        "::1"
    } else {
        "127.0.0.1"
    }
}

/// The probe host of a component bound with `--bind-address` (kubeadm: 127.0.0.1 by default;
/// an unspecified address leaves the host out, so the kubelet probes the pod's IP).
fn bind_host(args: &[Arg]) -> String {
    let host = args
        .iter()
        .rev()
        .find(|a| a.name == "bind-address")
        .map_or("127.0.0.1", |a| a.value.as_str());
    if is_unspecified(host) {
        String::new()
    } else {
        host.to_string()
    }
}

/// The host's CA trust directories the API server and controller-manager mount.
fn ca_trust() -> Vec<Value> {
    CA_TRUST
        .iter()
        .filter(|(name, path)| *name == "ca-certs" || Path::new(path).is_dir())
        .map(|(name, path)| json!({ "name": name, "path": path }))
        .collect()
}

/// The first (only) container of a static pod manifest.
pub fn first_container(manifest: &str) -> Result<k8s_openapi::api::core::v1::Container> {
    let pod: Pod = serde_yaml::from_str(manifest)?;
    pod.spec
        .and_then(|s| s.containers.into_iter().next())
        .ok_or_else(|| anyhow!("no container"))
}

/// The value of `--<name>=` in a manifest's command.
pub fn flag<'a>(command: &'a [String], name: &str) -> Option<&'a str> {
    let prefix = format!("--{name}=");
    command.iter().find_map(|a| a.strip_prefix(&prefix))
}

fn component_extras(
    cfg: &Config,
    component: Component,
) -> (Vec<Arg>, Vec<HostPathMount>, Vec<crate::config::EnvVar>) {
    let c = &cfg.cluster;
    match component {
        Component::KubeApiserver => (
            c.api_server.extra_args.clone(),
            c.api_server.extra_volumes.clone(),
            c.api_server.extra_envs.clone(),
        ),
        Component::KubeControllerManager => (
            c.controller_manager.extra_args.clone(),
            c.controller_manager.extra_volumes.clone(),
            c.controller_manager.extra_envs.clone(),
        ),
        Component::KubeScheduler => (
            c.scheduler.extra_args.clone(),
            c.scheduler.extra_volumes.clone(),
            c.scheduler.extra_envs.clone(),
        ),
        Component::Etcd => {
            let local = c.etcd.local.clone().unwrap_or_default();
            (local.extra_args, vec![], local.extra_envs)
        }
    }
}

/// A launched component's command, extraArgs in, run through `kubeforge exec-as` (`launcher`
/// is the template's `rootless.launcher`: the binary and the account's IDs; `false` leaves the
/// command as it is). The files it is given are the ones its `--*kubeconfig` flags name.
fn launch_through(pod: &mut Pod, launcher: &Value) {
    let (Some(binary), Some(uid), Some(gid)) = (
        launcher["binary"].as_str(),
        launcher["uid"].as_u64(),
        launcher["gid"].as_u64(),
    ) else {
        return;
    };
    let Some(container) = pod.spec.as_mut().and_then(|s| s.containers.first_mut()) else {
        return;
    };
    let command = container.command.take().unwrap_or_default();
    let mut reads: Vec<std::path::PathBuf> = Vec::new();
    for arg in &command {
        let Some((name, value)) = arg.split_once('=') else {
            continue;
        };
        if name.starts_with("--")
            && name.ends_with("kubeconfig")
            && !reads.iter().any(|r| r == Path::new(value))
        {
            reads.push(value.into());
        }
    }
    let launch = crate::launcher::Launch {
        uid: uid as u32,
        gid: gid as u32,
        reads,
        command,
    };
    container.command = Some(launch.container_command(Path::new(binary)));
}

/// extraArgs (a user flag replaces the default of that name, user flags appended in their order),
/// extraVolumes (sorted in by name), proxy environment and extraEnvs (sorted by name).
fn complete(cfg: &Config, component: Component, pod: &mut Pod) -> Result<()> {
    let (args, volumes, envs) = component_extras(cfg, component);
    let spec = pod
        .spec
        .as_mut()
        .ok_or_else(|| anyhow!("{}: the manifest has no spec", component.name()))?;
    let container = spec
        .containers
        .first_mut()
        .ok_or_else(|| anyhow!("{}: the manifest has no container", component.name()))?;
    let command = container.command.get_or_insert_with(Vec::new);
    let flag_name = |f: &str| {
        f.trim_start_matches('-')
            .split('=')
            .next()
            .unwrap_or_default()
            .to_string()
    };
    command.retain(|f| !f.starts_with("--") || !args.iter().any(|a| a.name == flag_name(f)));
    command.extend(args.iter().map(|a| format!("--{}={}", a.name, a.value)));
    let env = environment(component, envs)?;
    if !env.is_empty() {
        container.env = Some(env);
    }
    if component != Component::Etcd {
        let mounts = container.volume_mounts.get_or_insert_with(Vec::new);
        add_volumes(mounts, spec.volumes.get_or_insert_with(Vec::new), volumes);
    }
    Ok(())
}

/// The host's proxy variables (not for etcd), then extraEnvs over them; sorted by name.
fn environment(component: Component, envs: Vec<crate::config::EnvVar>) -> Result<Vec<EnvVar>> {
    let mut env: Vec<EnvVar> = Vec::new();
    if component != Component::Etcd {
        let mut proxies: Vec<(String, String)> = std::env::vars()
            .filter(|(k, v)| k.to_lowercase().ends_with("_proxy") && !v.is_empty())
            .collect();
        proxies.sort();
        env.extend(proxies.into_iter().map(|(name, value)| EnvVar {
            name,
            value: Some(value),
            value_from: None,
        }));
    }
    for e in envs {
        env.retain(|x| x.name != e.name);
        let value_from = e
            .value_from
            .map(serde_yaml::from_value)
            .transpose()
            .context("extraEnvs valueFrom")?;
        env.push(EnvVar {
            name: e.name,
            value: (!e.value.is_empty()).then_some(e.value),
            value_from,
        });
    }
    env.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(env)
}

/// extraVolumes as hostPath volumes and their mounts (one of the same name replaced).
fn add_volumes(mounts: &mut Vec<VolumeMount>, vols: &mut Vec<Volume>, extra: Vec<HostPathMount>) {
    for v in extra {
        mounts.retain(|m| m.name != v.name);
        vols.retain(|x| x.name != v.name);
        mounts.push(VolumeMount {
            name: v.name.clone(),
            mount_path: v.mount_path.clone(),
            read_only: v.read_only.then_some(true),
            ..Default::default()
        });
        vols.push(Volume {
            name: v.name.clone(),
            host_path: Some(HostPathVolumeSource {
                path: v.host_path.clone(),
                type_: (!v.path_type.is_empty()).then_some(v.path_type.clone()),
            }),
            ..Default::default()
        });
    }
    mounts.sort_by(|a, b| a.name.cmp(&b.name));
    vols.sort_by(|a, b| a.name.cmp(&b.name));
}

/// The manifest as kubeadm writes it: sorted keys and `status: {}`.
fn serialize(pod: &Pod) -> String {
    let mut value = serde_json::to_value(pod).expect("a Pod serializes");
    value["status"] = json!({});
    to_yaml(value)
}

/// YAML the way kubeadm's Go marshaller writes it: every mapping's keys sorted, and strings that
/// would read as numbers, booleans or null double-quoted (serde_yaml single-quotes them).
pub fn to_yaml(value: Value) -> String {
    fn sorted(v: Value) -> serde_yaml::Value {
        match v {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_yaml::Value::Mapping(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.into(), sorted(v)))
                        .collect(),
                )
            }
            Value::Array(items) => {
                serde_yaml::Value::Sequence(items.into_iter().map(sorted).collect())
            }
            other => serde_yaml::to_value(other).expect("scalars convert"),
        }
    }
    let text = serde_yaml::to_string(&sorted(value)).expect("YAML serializes");
    text.lines()
        .map(|line| {
            let Some(quoted) = line.strip_suffix('\'').and_then(|l| l.rsplit_once(" '")) else {
                return format!("{line}\n");
            };
            let (head, inner) = quoted;
            let plain_would_change_type = serde_yaml::from_str::<serde_yaml::Value>(inner)
                .map(|v| !v.is_string())
                .unwrap_or(false);
            if plain_would_change_type && !inner.contains(['\'', '"', '\\']) {
                format!("{head} \"{inner}\"\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_quotes_like_go() {
        let v =
            json!({"b": "0", "a": {"d": "true", "c": "[::1]:6443"}, "e": "x", "f": ["10", "y"]});
        assert_eq!(
            to_yaml(v),
            "a:\n  c: '[::1]:6443'\n  d: \"true\"\nb: \"0\"\ne: x\nf:\n- \"10\"\n- y\n"
        );
    }
}

/// What this node's own manifests say about it: its name (etcd's `--name`, as kubeadm sets it)
/// and its API server's advertise address. For the commands that run on a node whose init is
/// long done (`certs renew`, `upgrade`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeFacts {
    pub name: Option<String>,
    pub advertise_address: Option<String>,
    pub bind_port: Option<u16>,
}

pub fn node_facts(layout: &Layout) -> NodeFacts {
    let command = |c: Component| {
        std::fs::read_to_string(c.manifest(layout))
            .ok()
            .and_then(|text| first_container(&text).ok()?.command)
            .unwrap_or_default()
    };
    let etcd = command(Component::Etcd);
    let apiserver = command(Component::KubeApiserver);
    NodeFacts {
        name: flag(&etcd, "name").map(str::to_string),
        advertise_address: flag(&apiserver, "advertise-address").map(str::to_string),
        bind_port: flag(&apiserver, "secure-port").and_then(|p| p.parse().ok()),
    }
}

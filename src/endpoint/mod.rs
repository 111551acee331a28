//! The highly available control-plane endpoint (`ControlPlaneEndpoint` document,
//! docs/ha-endpoint.md): haproxy in front of every control-plane node's API server and keepalived
//! holding a virtual IP, as two static pods beside the four components. This module renders their
//! files (configuration, keepalived's check, manifests) from the config and the list of
//! control-plane members; writing them is the host writer's, like every other file.

pub mod sync;

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _, Result};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::endpoint::ControlPlaneEndpoint;
use crate::config::net::url_host;
use crate::config::Config;
use crate::manifests::{patched_manifest, strict_handlebars, MANIFEST_MODE};
use crate::node::{File, Layout};

/// The two static pods, by manifest stem (also their pod names and patch targets).
pub const HAPROXY: &str = "kubeforge-haproxy";
pub const KEEPALIVED: &str = "kubeforge-keepalived";
/// (manifest stem, container name) of each.
pub const PODS: [(&str, &str); 2] = [(HAPROXY, "haproxy"), (KEEPALIVED, "keepalived")];

/// A control-plane node behind the balancer: its node name and API server `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    pub name: String,
    pub address: String,
}

impl Member {
    /// The API server at `address` (`host:port`), named after it: the name is what haproxy's
    /// stats page shows, and every source of members (this node's config, the mirror pods, the
    /// `default/kubernetes` EndpointSlice the sync reads) knows the address.
    pub fn at(address: &str) -> Member {
        Member {
            name: address.replace(['[', ']'], ""),
            address: address.to_string(),
        }
    }

    /// This node, from its config.
    pub fn local(cfg: &Config) -> Member {
        Member::at(&format!(
            "{}:{}",
            url_host(&cfg.init.local_api_endpoint.advertise_address),
            cfg.bind_port()
        ))
    }
}

/// Where the balancers' configuration lives: one directory, mounted read-only into both pods.
pub fn config_dir(layout: &Layout) -> PathBuf {
    layout.kubernetes_dir.join("endpoint")
}

/// The file beside haproxy.cfg that holds the data it was rendered from, but its servers: what
/// `kubeforge endpoint sync` renders the same template with when the API servers change.
pub const SYNC_SETTINGS: &str = "haproxy-sync.json";

/// Where haproxy's master CLI socket lives: an emptyDir shared by the pod's two containers
/// (nothing on the host; tests running the command directly make the directory).
pub fn run_dir(layout: &Layout) -> PathBuf {
    layout.kubernetes_dir.join("endpoint-run")
}

/// A static pod manifest of the endpoint in staticPodPath.
pub fn manifest_path(layout: &Layout, name: &str) -> PathBuf {
    layout.manifests_dir.join(format!("{name}.yaml"))
}

/// Every file of this node's balancers, configuration first (the manifests name its hash, so a
/// changed configuration restarts the pod; haproxy's servers are left out of the hash, the sync
/// reloads haproxy for those). `members` are sorted and deduplicated here, this node added;
/// `interface` is keepalived's (see `interface_for`).
pub fn files(
    cfg: &Config,
    layout: &Layout,
    members: &[Member],
    interface: &str,
) -> Result<Vec<File>> {
    let ep = document(cfg)?;
    let dir = config_dir(layout);
    let keepalived_conf = dir.join("keepalived.conf");
    let check = dir.join("check-balancer.sh");
    let data = template_data(cfg, layout, ep, interface, &check);
    let local = Member::local(cfg);
    let mut files = haproxy_files(cfg, layout, &data, members, Some(&local))?;
    let keepalived_text = render(
        include_str!("../../templates/endpoint/keepalived.conf.hbs"),
        &data,
    )?;
    let check_text = render(
        include_str!("../../templates/endpoint/check-balancer.sh.hbs"),
        &data,
    )?;
    let keepalived_pod = manifest(
        cfg,
        KEEPALIVED,
        include_str!("../../templates/endpoint/kubeforge-keepalived.yaml.hbs"),
        pod_data(
            &data,
            &ep.images.keepalived,
            &keepalived_conf,
            &[&keepalived_text, &check_text],
        ),
    )?;
    let pod = files.pop().expect("haproxy's manifest");
    files.extend([
        File::new(keepalived_conf, keepalived_text, 0o644),
        File::new(check, check_text, 0o755),
        pod,
        File::new(
            manifest_path(layout, KEEPALIVED),
            keepalived_pod,
            MANIFEST_MODE,
        ),
    ]);
    Ok(files)
}

/// A worker's node-local balancer (`nodeLocal`): haproxy on loopback at the balancer's port,
/// at first in front of the control-plane endpoint itself (nothing to ask the API at join
/// time); its sync puts every live API server in its place within a round.
pub fn worker_files(cfg: &Config, layout: &Layout) -> Result<Vec<File>> {
    let ep = document(cfg)?;
    let check = config_dir(layout).join("check-balancer.sh");
    let mut data = template_data(cfg, layout, ep, "", &check);
    let port = ep.balancer_port;
    data["balancerBind"] = json!(if ep.vip().is_ipv4() {
        format!("127.0.0.1:{port}")
    } else {
        format!("::1:{port}")
    });
    let first = Member::at(&cfg.cluster.control_plane_endpoint);
    haproxy_files(cfg, layout, &data, &[first], None)
}

/// The node-local balancer's URL (`nodeLocal`).
pub fn node_local_url(ep: &ControlPlaneEndpoint) -> String {
    let host = if ep.vip().is_ipv4() {
        "127.0.0.1"
    } else {
        "[::1]"
    };
    format!("https://{host}:{}", ep.balancer_port)
}

/// A kubeconfig (the worker's kubelet.conf) pointed at the node-local balancer, the API
/// server's certificate checked for `kubernetes`, a name every API server certificate holds
/// (kubeadm's SANs): no SAN for 127.0.0.1 is needed.
pub fn node_local_kubeconfig(text: &[u8], ep: &ControlPlaneEndpoint) -> Result<String> {
    let mut conf = crate::kubeconfig::Kubeconfig::parse(text)?;
    conf.set_server(&node_local_url(ep), "kubernetes");
    Ok(conf.to_yaml())
}

fn document(cfg: &Config) -> Result<&ControlPlaneEndpoint> {
    cfg.endpoint
        .as_ref()
        .ok_or_else(|| anyhow!("no ControlPlaneEndpoint document"))
}

/// haproxy.cfg, the sync's settings and haproxy's static pod (last). `local` (this node's own
/// API server) is always a server, and the sync keeps it.
fn haproxy_files(
    cfg: &Config,
    layout: &Layout,
    common: &Value,
    members: &[Member],
    local: Option<&Member>,
) -> Result<Vec<File>> {
    let ep = document(cfg)?;
    let dir = config_dir(layout);
    let haproxy_cfg = dir.join("haproxy.cfg");
    let mut members: Vec<Member> = members.iter().chain(local).cloned().collect();
    members.sort();
    members.dedup();
    let text = render_haproxy(common, &members)?;
    let settings = serde_json::to_string_pretty(common)? + "\n";
    // The hash leaves the servers out: the sync reloads haproxy for those, without a restart.
    let hashed = render_haproxy(common, &[])?;
    let mut data = common.clone();
    data["sync"] = sync_data(cfg, layout, local)?;
    let pod = manifest(
        cfg,
        HAPROXY,
        include_str!("../../templates/endpoint/kubeforge-haproxy.yaml.hbs"),
        pod_data(
            &data,
            &ep.images.haproxy,
            &haproxy_cfg,
            &[&hashed, &settings],
        ),
    )?;
    Ok(vec![
        File::new(haproxy_cfg, text, 0o644),
        File::new(dir.join(SYNC_SETTINGS), settings, 0o644),
        File::new(manifest_path(layout, HAPROXY), pod, MANIFEST_MODE),
    ])
}

/// haproxy.cfg from its settings (`SYNC_SETTINGS`) and the servers.
pub fn render_haproxy(settings: &Value, members: &[Member]) -> Result<String> {
    let mut data = settings.clone();
    data["members"] = members
        .iter()
        .map(|m| json!({"name": m.name, "address": m.address}))
        .collect();
    render(
        include_str!("../../templates/endpoint/haproxy.cfg.hbs"),
        &data,
    )
}

/// The sync container's command and mounts: this very binary (mounted read-only from the
/// host), the kubelet's rotating client certificate, the master socket's directory.
fn sync_data(cfg: &Config, layout: &Layout, local: Option<&Member>) -> Result<Value> {
    let exe = std::env::current_exe().context("finding kubeforge's own binary")?;
    let run = run_dir(layout);
    let pki = layout.kubelet_dir.join("pki");
    Ok(json!({
        "kubeforge": exe,
        "runDir": run,
        "masterSocket": run.join("master.sock"),
        "kubeletPki": pki,
        "clientCert": pki.join("kubelet-client-current.pem"),
        "local": local.map(|m| m.address.clone()),
        "server": cfg.control_plane_endpoint_url(),
    }))
}

fn template_data(
    cfg: &Config,
    layout: &Layout,
    ep: &ControlPlaneEndpoint,
    interface: &str,
    check: &std::path::Path,
) -> Value {
    let vip = ep.vip();
    let prefix = if vip.is_ipv4() { 32 } else { 128 };
    let balancer_bind = if vip.is_ipv4() {
        format!("*:{}", ep.balancer_port)
    } else {
        format!(":::{} v4v6", ep.balancer_port)
    };
    json!({
        "vip": vip.to_string(),
        "vipWithPrefix": format!("{vip}/{prefix}"),
        "interface": interface,
        "routerId": ep.virtual_router_id,
        "advertInterval": format!("{}", f64::from(ep.advert_interval_milliseconds) / 1000.0),
        "nodeName": cfg.init.node_registration.name,
        "balancerBind": balancer_bind,
        "monitorHost": "127.0.0.1",
        "monitorPort": ep.monitor_port,
        "monitorBind": format!("127.0.0.1:{}", ep.monitor_port),
        "caFile": layout.pki_dir.join("ca.crt"),
        "configDir": config_dir(layout),
        "checkScript": check,
    })
}

fn pod_data(common: &Value, image: &str, config: &std::path::Path, hashed: &[&str]) -> Value {
    let mut hasher = Sha256::new();
    for text in hashed {
        hasher.update(text.as_bytes());
    }
    let mut data = common.clone();
    data["image"] = json!(image);
    data["config"] = json!(config);
    data["configHash"] = json!(hex::encode(hasher.finalize()));
    data
}

fn render(template: &str, data: &Value) -> Result<String> {
    strict_handlebars()
        .render_template(template, data)
        .context("rendering a ControlPlaneEndpoint template")
}

fn manifest(cfg: &Config, name: &str, template: &str, data: Value) -> Result<String> {
    let text = render(template, &data)?;
    let pod: Pod = serde_yaml::from_str(&text)
        .with_context(|| format!("the rendered {name} manifest is not a valid Pod"))?;
    patched_manifest(cfg, name, pod)
}

/// keepalived's interface: the configured one, else the one holding `address` on this host.
pub fn interface_for(cfg: &Config) -> Result<String> {
    let ep = document(cfg)?;
    if !ep.interface.is_empty() {
        return Ok(ep.interface.clone());
    }
    let address = &cfg.init.local_api_endpoint.advertise_address;
    let wanted: IpAddr = address
        .parse()
        .with_context(|| format!("advertise address {address:?}"))?;
    for ifa in nix::ifaddrs::getifaddrs().context("listing the host's addresses")? {
        let ip = ifa.address.as_ref().and_then(|a| {
            a.as_sockaddr_in()
                .map(|s| IpAddr::V4(s.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        });
        if ip == Some(wanted) {
            return Ok(ifa.interface_name);
        }
    }
    bail!(crate::BadInput(format!(
        "no interface of this host holds the advertise address {address}; set ControlPlaneEndpoint.interface"
    )))
}

/// The control-plane nodes the cluster runs an API server on, from the kube-apiserver mirror
/// pods' `kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint` annotation (kubeadm's
/// own source of API endpoints). A stopped node's mirror pod stays listed: haproxy's checks,
/// not the list, take it out of the rotation.
pub async fn members_from_pods(
    client: &kube::Client,
    limit: std::time::Duration,
) -> Result<Vec<Member>> {
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), "kube-system");
    let params =
        kube::api::ListParams::default().labels("component=kube-apiserver,tier=control-plane");
    let list = tokio::time::timeout(limit, pods.list(&params))
        .await
        .map_err(|_| anyhow!("listing the kube-apiserver pods took longer than {limit:?}"))??;
    let members = list
        .items
        .iter()
        .filter_map(|p| {
            let address = p
                .metadata
                .annotations
                .as_ref()?
                .get("kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint")?;
            Some(Member::at(address))
        })
        .collect();
    Ok(members)
}

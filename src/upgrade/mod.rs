//! What an upgrade works from: the configuration the cluster stores about itself (kubeadm's
//! `FetchInitConfigurationFromCluster`: `kubeadm-config`, `kubelet-config`, `kube-proxy`), this
//! node as its own files describe it, and the versions running now; with the version policy, the
//! plan and the manifest comparisons in the submodules. The workflow (`workflow::upgrade`) does
//! the changing.

pub mod manifest;
pub mod plan;
pub mod policy;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Context as _, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::ListParams;
use kube::Api;

use crate::config::{self, Config, Timeouts};
use crate::kubeconfig::Kubeconfig;
use crate::manifests::{self, Component};
use crate::node::Layout;

/// The cluster's stored configuration documents.
#[derive(Debug, Clone)]
pub struct Stored {
    pub cluster_configuration: String,
    pub kubelet: Option<String>,
    pub kube_proxy: Option<String>,
    /// kubeforge's Security document; none: the cluster keeps kubeadm's shape.
    pub security: Option<String>,
}

async fn config_map_key(client: &kube::Client, name: &str, key: &str) -> Result<Option<String>> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    let map = maps
        .get_opt(name)
        .await
        .with_context(|| format!("reading kube-system/{name}"))?;
    Ok(map.and_then(|m| m.data?.remove(key)))
}

/// kubeadm-config (required: without it there is nothing to upgrade from), kubelet-config and
/// kube-proxy's config (each optional).
pub async fn read_stored(client: &kube::Client) -> Result<Stored> {
    let cluster_configuration = config_map_key(client, "kubeadm-config", "ClusterConfiguration")
        .await?
        .ok_or_else(|| anyhow!("In order to upgrade, a ConfigMap called \"kubeadm-config\" in the \"kube-system\" namespace must exist (with a ClusterConfiguration key). Use 'kubeforge init phase upload-config kubeadm --config your-config-file' to re-upload it."))?;
    // A worker's kubelet.conf may read kubeadm-config and kubelet-config, not kube-proxy's.
    let kube_proxy = match config_map_key(client, "kube-proxy", "config.conf").await {
        Err(e) if crate::kube::api_status(&e) == Some(403) => None,
        read => read?,
    };
    Ok(Stored {
        cluster_configuration,
        kubelet: config_map_key(client, "kubelet-config", "kubelet").await?,
        kube_proxy,
        security: crate::cluster::stored::security_document(client).await?,
    })
}

/// This node as its own files describe it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ThisNode {
    /// From the kubelet's client certificate (`system:node:<name>`), else the etcd manifest.
    pub name: Option<String>,
    pub cri_socket: Option<String>,
    /// A control-plane node: its kube-apiserver manifest exists (kubeadm's test).
    pub control_plane: bool,
    pub facts: manifests::NodeFacts,
}

fn kubelet_node_name(layout: &Layout) -> Option<String> {
    let text = std::fs::read(layout.kubeconfig("kubelet.conf")).ok()?;
    let kubeconfig = Kubeconfig::parse(&text).ok()?;
    let pem = match kubeconfig.client_cert_pem() {
        Some(pem) => pem,
        None => {
            let file = kubeconfig.users.first()?.user.client_certificate.clone()?;
            std::fs::read_to_string(file).ok()?
        }
    };
    let cn = crate::pki::common_name(&pem).ok()?;
    cn.strip_prefix("system:node:").map(str::to_string)
}

/// The CRI endpoint the kubelet was told: instance-config.yaml (v1.34+), else the flags file.
fn cri_socket(layout: &Layout) -> Option<String> {
    let instance = std::fs::read_to_string(layout.kubelet_dir.join("instance-config.yaml"));
    if let Ok(text) = instance {
        let value: serde_yaml::Value = serde_yaml::from_str(&text).ok()?;
        if let Some(s) = value
            .get("containerRuntimeEndpoint")
            .and_then(|v| v.as_str())
        {
            return Some(s.to_string());
        }
    }
    let flags = std::fs::read_to_string(layout.kubelet_dir.join("kubeadm-flags.env")).ok()?;
    flags
        .split(['"', ' '])
        .find_map(|f| f.strip_prefix("--container-runtime-endpoint="))
        .map(str::to_string)
}

pub fn this_node(layout: &Layout) -> ThisNode {
    let facts = manifests::node_facts(layout);
    ThisNode {
        name: kubelet_node_name(layout).or_else(|| facts.name.clone()),
        cri_socket: cri_socket(layout),
        control_plane: Component::KubeApiserver.manifest(layout).exists(),
        facts,
    }
}

/// The InitConfiguration document for this node.
fn node_document(node: &ThisNode, patches: Option<&str>, timeouts: &Timeouts) -> String {
    let mut doc = serde_yaml::Mapping::new();
    doc.insert("apiVersion".into(), "kubeadm.k8s.io/v1beta4".into());
    doc.insert("kind".into(), "InitConfiguration".into());
    let mut registration = serde_yaml::Mapping::new();
    if let Some(name) = &node.name {
        registration.insert("name".into(), name.as_str().into());
    }
    if let Some(socket) = &node.cri_socket {
        registration.insert("criSocket".into(), socket.as_str().into());
    }
    doc.insert("nodeRegistration".into(), registration.into());
    let mut endpoint = serde_yaml::Mapping::new();
    if let Some(address) = &node.facts.advertise_address {
        endpoint.insert("advertiseAddress".into(), address.as_str().into());
    }
    if let Some(port) = node.facts.bind_port {
        endpoint.insert("bindPort".into(), port.into());
    }
    doc.insert("localAPIEndpoint".into(), endpoint.into());
    if let Some(dir) = patches {
        let mut p = serde_yaml::Mapping::new();
        p.insert("directory".into(), dir.into());
        doc.insert("patches".into(), p.into());
    }
    doc.insert(
        "timeouts".into(),
        serde_yaml::to_value(timeouts).expect("timeouts serialize"),
    );
    serde_yaml::to_string(&doc).expect("a mapping serializes")
}

/// This node's Config at `version`: the cluster's stored documents, this node's registration, and
/// the upgrade's patches and timeouts. A stored KubeletConfiguration or KubeProxyConfiguration
/// that is exactly kubeforge's default for the cluster counts as not customized (so a new
/// version's defaults apply to it, as kubeadm re-defaults an unmodified config).
pub fn node_config(
    stored: &Stored,
    node: &ThisNode,
    version: &str,
    patches: Option<&str>,
    timeouts: &Timeouts,
    layout: &Layout,
) -> Result<Config> {
    let mut cluster: serde_yaml::Value = serde_yaml::from_str(&stored.cluster_configuration)
        .map_err(|e| anyhow!("kube-system/kubeadm-config: {e}"))?;
    cluster["kubernetesVersion"] = version.into();
    let mut text = format!(
        "{}---\n{}",
        node_document(node, patches, timeouts),
        serde_yaml::to_string(&cluster)?
    );
    for doc in [&stored.kubelet, &stored.kube_proxy].into_iter().flatten() {
        text.push_str(&format!("---\n{doc}\n"));
    }
    let security = config::security::stored_or_kubeadm(stored.security.as_deref());
    text.push_str(&format!("---\n{security}\n"));
    let source = "the cluster's kube-system/kubeadm-config, kubelet-config and kube-proxy";
    let mut cfg = config::load_str(&text, source, &Default::default(), &layout.kubernetes_dir)?;
    let mut plain = cfg.clone();
    plain.kubelet = None;
    plain.kube_proxy = None;
    if let Some(stored) = &cfg.kubelet {
        let default = crate::kubelet::cluster_config(&plain, layout)?;
        if serde_json::to_value(stored)? == default {
            cfg.kubelet = None;
        }
    }
    if let Some(stored) = &cfg.kube_proxy {
        let default = crate::cluster::objects::kube_proxy_config(&plain)?;
        if serde_json::to_value(stored)? == default {
            cfg.kube_proxy = None;
        }
    }
    Ok(cfg)
}

/// An image reference's tag, `_` read back as the `+` of a version.
pub fn tag(image: &str) -> String {
    let after_slash = image.rsplit('/').next().unwrap_or(image);
    after_slash
        .split_once(':')
        .map_or("", |(_, t)| t)
        .replace('_', "+")
}

/// Every control-plane component's version (image tag) per node, from the mirror pods.
pub async fn component_versions(
    client: &kube::Client,
    component: &str,
) -> Result<BTreeMap<String, Vec<String>>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let selector = format!("component={component},tier=control-plane");
    let mut versions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pod in pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
    {
        let spec = pod.spec.unwrap_or_default();
        let image = spec.containers.first().and_then(|c| c.image.clone());
        let version = tag(&image.unwrap_or_default());
        versions
            .entry(version)
            .or_default()
            .push(spec.node_name.unwrap_or_default());
    }
    Ok(versions)
}

/// What `upgrade plan` shows as running now.
pub async fn cluster_state(client: &kube::Client) -> Result<plan::ClusterState> {
    let version = client.apiserver_version().await?.git_version;
    let nodes: Api<Node> = Api::all(client.clone());
    let mut kubelets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for node in nodes.list(&ListParams::default()).await?.items {
        let v = node
            .status
            .and_then(|s| s.node_info)
            .map(|i| i.kubelet_version);
        kubelets
            .entry(v.unwrap_or_default())
            .or_default()
            .push(node.metadata.name.unwrap_or_default());
    }
    let mut components = BTreeMap::new();
    for c in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "etcd",
    ] {
        components.insert(c.to_string(), component_versions(client, c).await?);
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "kube-system");
    let dns = deployments.get_opt("coredns").await?.and_then(|d| {
        let image = d.spec?.template.spec?.containers.first()?.image.clone()?;
        Some(tag(&image))
    });
    let api_version = |doc: Option<String>| {
        let value: serde_yaml::Value = serde_yaml::from_str(&doc?).ok()?;
        value.get("apiVersion")?.as_str().map(str::to_string)
    };
    Ok(plan::ClusterState {
        version,
        kubelets,
        components,
        dns,
        kube_proxy_config: api_version(config_map_key(client, "kube-proxy", "config.conf").await?),
        kubelet_config: api_version(config_map_key(client, "kubelet-config", "kubelet").await?),
    })
}

/// The control-plane nodes whose API server does not run `version` yet (kubeadm's rule: the
/// addons wait for the last of them).
pub async fn unupgraded_api_servers(client: &kube::Client, version: &str) -> Result<Vec<String>> {
    let versions = component_versions(client, "kube-apiserver").await?;
    let mut behind: Vec<String> = versions
        .into_iter()
        .filter(|(v, _)| v != version)
        .flat_map(|(_, nodes)| nodes)
        .collect();
    behind.sort();
    Ok(behind)
}

/// The version the manifest on disk runs (its image tag).
pub fn manifest_version(layout: &Layout, component: Component) -> Option<String> {
    let text = std::fs::read_to_string(component.manifest(layout)).ok()?;
    let image = manifests::first_container(&text).ok()?.image?;
    Some(tag(&image))
}

/// Reads a file this run will compare against, if it is there.
pub fn read_opt(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tags_are_versions() {
        assert_eq!(tag("registry.k8s.io/kube-apiserver:v1.35.6"), "v1.35.6");
        assert_eq!(tag("localhost:5000/etcd:3.6.6-0"), "3.6.6-0");
        assert_eq!(tag("r/kube-proxy:v1.36.0_rc.1"), "v1.36.0+rc.1");
    }

    /// upgrade renders from the stored Security document: the API server keeps reading the
    /// EncryptionConfiguration (also with profile kubeadm, whose document init then stores).
    #[test]
    fn upgrade_keeps_the_encryption_flag() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        let layout = Layout::new(dir.path(), dir.path(), &pki, dir.path());
        let cluster = format!("apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nkubernetesVersion: v1.35.6\ncertificatesDir: {}\n", pki.display());
        let node = ThisNode {
            name: Some("cp1".into()),
            ..Default::default()
        };
        let flag = format!(
            "--encryption-provider-config={}",
            pki.join("encryption-config.yaml").display()
        );
        for (security, expected) in [
            (
                Some(config::security::Security {
                    profile: config::security::Profile::Kubeadm,
                    encryption_at_rest: true,
                }),
                true,
            ),
            (Some(config::security::Security::default()), false),
            (None, false),
        ] {
            let stored = Stored {
                cluster_configuration: cluster.clone(),
                kubelet: None,
                kube_proxy: None,
                security: security.as_ref().map(config::security::document),
            };
            let cfg = node_config(
                &stored,
                &node,
                "v1.35.6",
                None,
                &Timeouts::default(),
                &layout,
            )
            .unwrap();
            let manifest = manifests::Renderer {
                cfg: &cfg,
                layout: &layout,
                templates: None,
            }
            .render(Component::KubeApiserver)
            .unwrap();
            assert_eq!(manifest.contains(&flag), expected, "{security:?}");
        }
    }
}

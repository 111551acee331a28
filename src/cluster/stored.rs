//! What kubeadm (or kubeforge) stored in the cluster about itself: the ClusterConfiguration in
//! `kube-system/kubeadm-config` and the KubeletConfiguration in `kube-system/kubelet-config`.

use anyhow::{anyhow, Result};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;

async fn read(client: &kube::Client, name: &str, key: &str) -> Result<String> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    let map = maps
        .get(name)
        .await
        .map_err(|e| anyhow!("reading kube-system/{name}: {e}"))?;
    map.data
        .unwrap_or_default()
        .remove(key)
        .ok_or_else(|| anyhow!("kube-system/{name} has no {key:?} key"))
}

/// The cluster's ClusterConfiguration document.
pub async fn cluster_configuration(client: &kube::Client) -> Result<String> {
    read(client, "kubeadm-config", "ClusterConfiguration").await
}

/// kubeforge's own document `key` in `kube-system/<name>`, when the cluster has one. A cluster
/// without it (built by kubeadm, or without the feature) has neither the map nor the Role letting
/// a bootstrap token read it: 404 and 403 both mean none.
async fn kubeforge_document(
    client: &kube::Client,
    name: &str,
    key: &str,
) -> Result<Option<String>> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    match maps.get(name).await {
        Ok(map) => Ok(map.data.and_then(|mut d| d.remove(key))),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 403 => Ok(None),
        Err(e) => Err(anyhow!("reading kube-system/{name}: {e}")),
    }
}

/// The cluster's ControlPlaneEndpoint document (kubeforge's own), when it has one.
pub async fn endpoint_document(client: &kube::Client) -> Result<Option<String>> {
    kubeforge_document(client, "kubeforge-endpoint", "ControlPlaneEndpoint").await
}

/// The cluster's Security document (kubeforge's own), when it has one.
pub async fn security_document(client: &kube::Client) -> Result<Option<String>> {
    kubeforge_document(client, "kubeforge-security", "Security").await
}

/// The cluster's KubeletConfiguration document.
pub async fn kubelet_configuration(client: &kube::Client) -> Result<String> {
    read(client, "kubelet-config", "kubelet").await
}

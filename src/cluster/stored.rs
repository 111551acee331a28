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

/// The cluster's ControlPlaneEndpoint document (kubeforge's own), when it has one.
pub async fn endpoint_document(client: &kube::Client) -> Result<Option<String>> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    match maps.get("kubeforge-endpoint").await {
        Ok(map) => Ok(map.data.and_then(|mut d| d.remove("ControlPlaneEndpoint"))),
        // Without the document there is no Role letting a bootstrap token read it either.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 403 => Ok(None),
        Err(e) => Err(anyhow!("reading kube-system/kubeforge-endpoint: {e}")),
    }
}

/// The cluster's Security document (kubeforge's own), when it has one.
pub async fn security_document(client: &kube::Client) -> Result<Option<String>> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    match maps.get("kubeforge-security").await {
        Ok(map) => Ok(map.data.and_then(|mut d| d.remove("Security"))),
        // A cluster kubeadm built has neither the map nor the Role letting a token read it.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 403 => Ok(None),
        Err(e) => Err(anyhow!("reading kube-system/kubeforge-security: {e}")),
    }
}

/// The cluster's KubeletConfiguration document.
pub async fn kubelet_configuration(client: &kube::Client) -> Result<String> {
    read(client, "kubelet-config", "kubelet").await
}

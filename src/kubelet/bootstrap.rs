//! A joining node's kubelet TLS bootstrap, followed from the outside: kubelet.conf written (and
//! usable: it can appear a moment before the client certificate it names), then its Node
//! registered.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// Waits until `limit` for the kubelet's kubelet.conf and its Node `node`; whether the Node is
/// Ready (it is not until a pod network runs).
pub async fn wait(kubelet_conf: &Path, node: &str, limit: Duration) -> Result<bool> {
    let start = Instant::now();
    while !kubelet_conf.exists() {
        if start.elapsed() > limit {
            bail!("the kubelet did not write {} within {limit:?}: is it running, and can it reach the API server? (its log says why)", kubelet_conf.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let client = loop {
        match crate::kube::polling_client(kubelet_conf, None).await {
            Ok(client) => break client,
            Err(_) if start.elapsed() < limit => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => bail!("the kubelet's {}: {e:#}", kubelet_conf.display()),
        }
    };
    let left = limit.saturating_sub(start.elapsed());
    let registered = crate::kube::wait_for_node(&client, node, left)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#} (with kubelet.conf)"))?;
    Ok(crate::kube::node_ready(&registered))
}

/// `bootstrap-kubelet.conf`: the kubelet's credentials until its TLS bootstrap.
pub fn kubeconfig(
    cluster_name: &str,
    server: &str,
    ca_pem: &str,
    token: &crate::config::Token,
) -> String {
    crate::kubeconfig::Kubeconfig::new(
        cluster_name,
        server,
        ca_pem,
        "tls-bootstrap-token-user",
        crate::kubeconfig::User {
            token: Some(token.to_string()),
            ..Default::default()
        },
    )
    .to_yaml()
}

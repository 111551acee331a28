//! The Kubernetes API as kubeforge uses it: clients (from a kubeconfig, or with a bootstrap
//! token), server-side apply of rendered objects, and waiting for a Node.

pub mod apply;
mod client;

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use k8s_openapi::api::core::v1::Node;

pub use client::{client, local_client, with_token};

/// The Node `name` once the kubelet has registered it, asking every 250 ms until `limit`.
pub async fn wait_for_node(client: &kube::Client, name: &str, limit: Duration) -> Result<Node> {
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    let start = Instant::now();
    loop {
        match nodes.get_opt(name).await {
            Ok(Some(node)) => return Ok(node),
            Ok(None) | Err(_) if start.elapsed() < limit => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok(None) => bail!("the node {name} did not register within {limit:?}"),
            Err(e) => bail!("reading the node {name}: {e}"),
        }
    }
}

/// Whether a Node's Ready condition is True.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

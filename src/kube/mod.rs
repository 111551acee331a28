//! The Kubernetes API as kubeforge uses it: clients (from a kubeconfig, or with a bootstrap
//! token), server-side apply of rendered objects, and waiting for a Node.

pub mod apply;
mod client;
mod retry;

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use k8s_openapi::api::core::v1::Node;

pub use client::{
    client, local_client, polling_client, set_call_timeout, with_client_pem, with_token,
};

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

/// The kube client error somewhere in `e`'s chain of causes, if any.
fn kube_error(e: &anyhow::Error) -> Option<&kube::Error> {
    e.chain().find_map(|c| c.downcast_ref::<kube::Error>())
}

/// The HTTP status the API server answered with, when `e` is its refusal.
pub fn api_status(e: &anyhow::Error) -> Option<u16> {
    match kube_error(e)? {
        kube::Error::Api(r) => Some(r.code),
        _ => None,
    }
}

/// Whether `e` says the API server is not there (yet): no connection, or it is not serving.
pub fn unavailable(e: &anyhow::Error) -> bool {
    matches!(
        kube_error(e),
        Some(kube::Error::Service(_) | kube::Error::HyperError(_))
    ) || api_status(e).is_some_and(|code| code >= 500)
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    fn refused(code: u16) -> anyhow::Error {
        let status = kube::core::Status {
            code,
            ..Default::default()
        };
        Err::<(), _>(kube::Error::Api(Box::new(status)))
            .context("reading kube-system/kubeadm-config")
            .unwrap_err()
    }

    #[test]
    fn an_api_refusal_is_read_through_the_context_and_only_5xx_is_unavailable() {
        assert_eq!(super::api_status(&refused(403)), Some(403));
        assert!(!super::unavailable(&refused(403)));
        assert!(super::unavailable(&refused(503)));
        assert_eq!(super::api_status(&anyhow::anyhow!("not kube's")), None);
    }
}

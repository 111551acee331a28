//! Kubernetes API clients: from a kubeconfig (on its own server or this node's endpoint), or with
//! a bootstrap token and a CA that discovery trusted.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;

use crate::config::Token;

/// A client from `kubeconfig`'s credentials, pointed at `server` (the local API endpoint, as
/// kubeadm does during init) and verifying it with the kubeconfig's CA.
pub async fn local_client(kubeconfig: &Path, server: &str) -> Result<Client> {
    client(kubeconfig, Some(server)).await
}

/// A client with `kubeconfig`'s credentials, on its own server unless `server` is given.
pub async fn client(kubeconfig: &Path, server: Option<&str>) -> Result<Client> {
    // kube's message names the file and its cause; its source chain would repeat the cause.
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading {}", kubeconfig.display()))?;
    if let Some(server) = server {
        config.cluster_url = server.parse().context("the local API endpoint")?;
        config.proxy_url = None;
    }
    config.connect_timeout = Some(Duration::from_secs(2));
    Ok(Client::try_from(config)?)
}

/// A client that trusts `ca_pem` (the CA discovery pinned) and authenticates with a bootstrap
/// token. Async only because a client is made inside the runtime.
pub async fn with_token(server: &str, ca_pem: &str, token: &Token) -> Result<Client> {
    let mut config = kube::Config::new(server.parse().context("the server URL")?);
    let der = pem::parse(ca_pem)?.into_contents();
    config.root_cert = Some(vec![der]);
    config.auth_info.token = Some(token.to_string().into());
    config.connect_timeout = Some(Duration::from_secs(5));
    Ok(Client::try_from(config)?)
}

//! Kubernetes API clients: from a kubeconfig (on its own server or this node's endpoint), or with
//! a bootstrap token and a CA that discovery trusted.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use kube::client::ClientBuilder;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;

use super::retry::Retry;

use crate::config::Token;

/// A client from `kubeconfig`'s credentials, pointed at `server` (the local API endpoint, as
/// kubeadm does during init) and verifying it with the kubeconfig's CA.
pub async fn local_client(kubeconfig: &Path, server: &str) -> Result<Client> {
    client(kubeconfig, Some(server)).await
}

/// The same, without retries: for a wait that asks again and again itself.
pub async fn polling_client(kubeconfig: &Path, server: Option<&str>) -> Result<Client> {
    client_with(kubeconfig, server, Retries::No).await
}

/// A client with `kubeconfig`'s credentials, on its own server unless `server` is given.
pub async fn client(kubeconfig: &Path, server: Option<&str>) -> Result<Client> {
    client_with(kubeconfig, server, Retries::Yes).await
}

async fn client_with(kubeconfig: &Path, server: Option<&str>, retries: Retries) -> Result<Client> {
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
    build(config, retries)
}

/// A client that trusts `ca_pem` (the CA discovery pinned) and authenticates with a bootstrap
/// token. Async only because a client is made inside the runtime.
pub async fn with_token(server: &str, ca_pem: &str, token: &Token) -> Result<Client> {
    let mut config = kube::Config::new(server.parse().context("the server URL")?);
    let der = pem::parse(ca_pem)?.into_contents();
    config.root_cert = Some(vec![der]);
    config.auth_info.token = Some(token.to_string().into());
    config.connect_timeout = Some(Duration::from_secs(5));
    build(config, Retries::Yes)
}

/// A client that trusts `ca_pem` and authenticates with the certificate and key in one PEM file
/// (the kubelet's rotating `kubelet-client-current.pem`), without retries: its caller polls.
pub fn with_client_pem(server: &str, ca_pem: &[u8], client_pem: &[u8]) -> Result<Client> {
    use base64::Engine as _;
    let mut config = kube::Config::new(server.parse().context("the server URL")?);
    config.root_cert = Some(
        pem::parse_many(ca_pem)?
            .into_iter()
            .map(pem::Pem::into_contents)
            .collect(),
    );
    let blocks = pem::parse_many(client_pem).context("the client certificate file")?;
    let pick = |key: bool| {
        let chosen: Vec<pem::Pem> = blocks
            .iter()
            .filter(|b| b.tag().ends_with("PRIVATE KEY") == key)
            .cloned()
            .collect();
        base64::engine::general_purpose::STANDARD.encode(pem::encode_many(&chosen))
    };
    config.auth_info.client_certificate_data = Some(pick(false));
    config.auth_info.client_key_data = Some(pick(true).into());
    config.connect_timeout = Some(Duration::from_secs(2));
    build(config, Retries::No)
}

/// Whether a client's calls are retried (`super::retry`): yes, unless the caller itself asks
/// again and again (a wait), where a call must answer at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retries {
    Yes,
    No,
}

/// How long one API call may take with its retries: kubeadm's `timeouts.kubernetesAPICall`
/// once the run's configuration set it, else kubeadm's default, one minute.
static CALL_TIMEOUT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

/// Sets how long one API call may take, its retries included (the first setting holds).
pub fn set_call_timeout(limit: Duration) {
    let _ = CALL_TIMEOUT.set(limit);
}

fn build(mut config: kube::Config, retries: Retries) -> Result<Client> {
    // kube's own retry (429/503/504, up to 15 times) gives way to ours, which is bounded.
    config.default_retry = false;
    let builder = ClientBuilder::try_from(config)?;
    if retries == Retries::No {
        return Ok(builder.build());
    }
    let budget = *CALL_TIMEOUT.get().unwrap_or(&Duration::from_secs(60));
    let retry = Retry {
        budget,
        attempt: (budget / 4).min(Duration::from_secs(15)),
    };
    Ok(builder
        .with_layer(&tower::buffer::BufferLayer::new(64))
        .with_layer(&retry)
        .build())
}

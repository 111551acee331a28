//! The API server as the wait sees it: a client on this node's own endpoint, the
//! `kubeadm:cluster-admins` binding that makes admin.conf useful, and the mirror pods' facts.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

use super::diagnose::Container;

/// A client from `kubeconfig`'s credentials, pointed at `server` (the local API endpoint, as
/// kubeadm does during init) and verifying it with the kubeconfig's CA.
pub async fn local_client(kubeconfig: &Path, server: &str) -> Result<Client> {
    client(kubeconfig, Some(server)).await
}

/// A client with `kubeconfig`'s credentials, on its own server unless `server` is given.
pub async fn client(kubeconfig: &Path, server: Option<&str>) -> Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
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

/// `GET /livez` through the client (TLS verified against the cluster CA, client certificate
/// sent): true on 200.
pub async fn livez(client: &Client) -> bool {
    let Ok(request) = http::Request::get("/livez").body(Vec::new()) else {
        return false;
    };
    tokio::time::timeout(Duration::from_secs(2), client.request_text(request))
        .await
        .is_ok_and(|r| r.is_ok())
}

pub enum Created {
    Done,
    /// The credentials may not create it (admin.conf before the binding exists).
    Forbidden,
}

/// kubeadm's `kubeadm:cluster-admins` ClusterRoleBinding (contract 2.4): the group admin.conf's
/// certificate carries gets cluster-admin. Already there counts as done.
pub async fn create_cluster_admins_binding(client: &Client) -> Result<Created> {
    let rendered = crate::cluster::objects::cluster_admins()?.remove(0);
    let binding: ClusterRoleBinding = serde_json::from_value(rendered)?;
    match Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
    {
        Ok(_) => Ok(Created::Done),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Created::Done),
        Err(kube::Error::Api(status)) if status.code == 403 => Ok(Created::Forbidden),
        Err(e) => Err(e.into()),
    }
}

/// The API server's built-in `system-node-critical` and `system-cluster-critical` PriorityClasses.
/// Already there counts as done.
pub async fn create_system_priority_classes(client: &Client) -> Result<()> {
    for object in crate::cluster::objects::system_priority_classes()? {
        let class: PriorityClass = serde_json::from_value(object)?;
        match Api::<PriorityClass>::all(client.clone())
            .create(&PostParams::default(), &class)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// What a mirror pod says about its component.
#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    pub ready: bool,
    pub container: Container,
}

pub fn mirror_facts(pod: &Pod) -> Mirror {
    let status = pod.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let cs = status.container_statuses.unwrap_or_default();
    let container = cs.first().map_or_else(
        || Container {
            state: "waiting".into(),
            ..Default::default()
        },
        |c| {
            let state = c.state.clone().unwrap_or_default();
            let last = c.last_state.clone().unwrap_or_default();
            let terminated = state.terminated.as_ref().or(last.terminated.as_ref());
            let (name, reason) = if let Some(w) = &state.waiting {
                ("waiting", w.reason.clone())
            } else if state.running.is_some() {
                ("running", None)
            } else {
                ("exited", terminated.and_then(|t| t.reason.clone()))
            };
            Container {
                state: name.into(),
                reason,
                exit_code: terminated.map(|t| t.exit_code),
                restarts: c.restart_count.max(0) as u32,
                image_missing: false,
            }
        },
    );
    Mirror { ready, container }
}

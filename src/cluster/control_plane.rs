//! What a new control plane needs in its cluster: the `kubeadm:cluster-admins` binding that makes
//! admin.conf useful, the API server's built-in PriorityClasses made early, and the node marked
//! control-plane (labels and taints).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use k8s_openapi::api::core::v1::{Node, Taint};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

use super::objects::{self, Object};

/// The labels kubeadm gives a control-plane node.
pub const LABELS: [&str; 2] = [
    "node-role.kubernetes.io/control-plane",
    "node.kubernetes.io/exclude-from-external-load-balancers",
];

/// The taints a control-plane node gets: the configured ones, else kubeadm's NoSchedule.
pub fn taints(configured: Option<&[crate::config::Taint]>) -> Vec<Taint> {
    match configured {
        None => vec![Taint {
            key: "node-role.kubernetes.io/control-plane".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        }],
        Some(list) => list
            .iter()
            .map(|t| Taint {
                key: t.key.clone(),
                value: (!t.value.is_empty()).then(|| t.value.clone()),
                effect: t.effect.clone(),
                time_added: t
                    .time_added
                    .as_ref()
                    .and_then(|s| serde_json::from_value(json!(s)).ok()),
            })
            .collect(),
    }
}

/// `key=value:effect`, as kubeadm prints a taint.
pub fn describe_taint(t: &Taint) -> String {
    let value = t
        .value
        .as_ref()
        .map(|v| format!("={v}"))
        .unwrap_or_default();
    format!("{}{value}:{}", t.key, t.effect)
}

/// Adds what is missing of the control-plane labels and `taints` to Node `node`, waiting for the
/// kubelet to register it; true when it changed. The resourceVersion makes a concurrent change
/// (the kubelet's) a conflict to retry.
pub async fn mark(client: &Client, node: &str, taints: &[Taint], limit: Duration) -> Result<bool> {
    let nodes: Api<Node> = Api::all(client.clone());
    let start = Instant::now();
    loop {
        let left = limit.saturating_sub(start.elapsed());
        let current = crate::kube::wait_for_node(client, node, left).await?;
        let Some(patch) = marking_patch(&current, taints) else {
            return Ok(false);
        };
        match nodes
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 && start.elapsed() < limit => continue,
            Err(e) => bail!("marking the node {node}: {e}"),
        }
    }
}

/// The merge patch that adds the missing labels and taints to `current`, or None.
fn marking_patch(current: &Node, taints: &[Taint]) -> Option<serde_json::Value> {
    let labels = current.metadata.labels.clone().unwrap_or_default();
    let missing_labels: serde_json::Map<String, serde_json::Value> = LABELS
        .into_iter()
        .filter(|l| labels.get(*l).is_none_or(|v| !v.is_empty()))
        .map(|l| (l.to_string(), json!("")))
        .collect();
    let mut all: Vec<Taint> = current
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let before = all.len();
    for t in taints {
        if !all.iter().any(|e| e.key == t.key && e.effect == t.effect) {
            all.push(t.clone());
        }
    }
    if missing_labels.is_empty() && all.len() == before {
        return None;
    }
    Some(json!({
        "metadata": { "labels": missing_labels, "resourceVersion": current.metadata.resource_version },
        "spec": { "taints": all },
    }))
}

enum Created {
    Done,
    /// The credentials may not create it (admin.conf before the binding exists).
    Forbidden,
}

/// kubeadm's `kubeadm:cluster-admins` ClusterRoleBinding (contract 2.4): the group admin.conf's
/// certificate carries gets cluster-admin. Already there counts as done.
async fn create_cluster_admins_binding(client: &Client) -> Result<Created> {
    let Some(Object::ClusterRoleBinding(binding)) = objects::cluster_admins()?.pop() else {
        bail!("templates/cluster/cluster-admins renders no ClusterRoleBinding");
    };
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

/// The `kubeadm:cluster-admins` binding with admin.conf, or with super-admin.conf while
/// admin.conf is not allowed yet (contract 2.4). False while the API server does not take the
/// request yet.
pub async fn ensure_cluster_admins(
    admin: &Client,
    super_admin_conf: &Path,
    server: &str,
) -> Result<bool> {
    match create_cluster_admins_binding(admin).await {
        Ok(Created::Done) => return Ok(true),
        Ok(Created::Forbidden) => {}
        Err(e) => {
            tracing::debug!("creating the kubeadm:cluster-admins binding: {e:#}");
            return Ok(false);
        }
    }
    tracing::info!("creating the ClusterRoleBinding for the kubeadm:cluster-admins Group by using super-admin.conf");
    let super_admin = crate::kube::local_client(super_admin_conf, server).await?;
    match create_cluster_admins_binding(&super_admin).await {
        Ok(Created::Done) => Ok(true),
        Ok(Created::Forbidden) => bail!(
            "{} may not create the kubeadm:cluster-admins ClusterRoleBinding",
            super_admin_conf.display()
        ),
        Err(e) => {
            tracing::debug!("creating the kubeadm:cluster-admins binding: {e:#}");
            Ok(false)
        }
    }
}

/// The API server's built-in `system-node-critical` and `system-cluster-critical` PriorityClasses.
/// Already there counts as done.
async fn create_system_priority_classes(client: &Client) -> Result<()> {
    for object in objects::system_priority_classes()? {
        let Object::PriorityClass(class) = object else {
            bail!(
                "templates/cluster/system-priority-classes renders a {}",
                object.describe()
            );
        };
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

/// Creates the API server's built-in PriorityClasses the moment it takes requests. The kubelet
/// creates its mirror pods within 0.1 s of its Node registering; the API server's own hook makes
/// these classes a second after it starts serving, so without this every mirror pod is refused
/// ("no PriorityClass with name system-node-critical") and asked for again only at that pod's
/// next sync (its startup probe passing, or the kubelet's one-minute resync). Until the API
/// server listens each try is refused at once; then a try waits inside the API server until it
/// serves, and is answered together with the kubelet's registration — usually just before it.
/// Only a speed-up: without it the API server makes the classes itself, so it never fails.
pub async fn create_priority_classes_early(kubeconfig: PathBuf, server: String) {
    let client = match crate::kube::polling_client(&kubeconfig, Some(&server)).await {
        Ok(client) => client,
        Err(e) => {
            tracing::debug!("creating the system PriorityClasses: {e:#}");
            return;
        }
    };
    loop {
        match tokio::time::timeout(
            Duration::from_secs(10),
            create_system_priority_classes(&client),
        )
        .await
        {
            Ok(Ok(())) => {
                tracing::debug!("the system PriorityClasses are in place");
                return;
            }
            Ok(Err(e)) => tracing::debug!("creating the system PriorityClasses: {e:#}"),
            Err(_) => tracing::debug!("creating the system PriorityClasses: no answer in 10 s"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

//! Server-side apply of rendered objects: idempotent (an object already as rendered is left
//! untouched, its resourceVersion unchanged), retried while the API server is briefly away.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::Client;
use serde_json::Value;

use super::objects::describe;

const FIELD_MANAGER: &str = "kubeforge";
const RETRY: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Created,
    Configured,
    Unchanged,
}

fn plural(kind: &str) -> Result<&'static str> {
    Ok(match kind {
        "ConfigMap" => "configmaps",
        "Secret" => "secrets",
        "ServiceAccount" => "serviceaccounts",
        "Service" => "services",
        "Role" => "roles",
        "RoleBinding" => "rolebindings",
        "ClusterRole" => "clusterroles",
        "ClusterRoleBinding" => "clusterrolebindings",
        "Deployment" => "deployments",
        "DaemonSet" => "daemonsets",
        other => bail!("kubeforge does not apply objects of kind {other}"),
    })
}

fn api_for(client: &Client, object: &Value) -> Result<(Api<DynamicObject>, String)> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, kind),
        plural(kind)?,
    );
    let name = object["metadata"]["name"]
        .as_str()
        .ok_or_else(|| anyhow!("{} has no name", describe(object)))?
        .to_string();
    let api = match object["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    Ok((api, name))
}

/// Errors worth waiting out: the API server restarting, overloaded or not serving a group yet.
fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500 || s.code == 404,
        _ => true,
    }
}

/// Applies `object` server-side, retrying transient errors until `limit`.
pub async fn apply(client: &Client, object: &Value, limit: Duration) -> Result<Applied> {
    let (api, name) = api_for(client, object)?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let start = Instant::now();
    loop {
        let attempt = async {
            let before = api.get_opt(&name).await?;
            let after = api.patch(&name, &params, &Patch::Apply(object)).await?;
            Ok::<_, kube::Error>(match before {
                None => Applied::Created,
                Some(b) if b.metadata.resource_version == after.metadata.resource_version => {
                    Applied::Unchanged
                }
                Some(_) => Applied::Configured,
            })
        };
        match attempt.await {
            Ok(applied) => return Ok(applied),
            Err(e) if transient(&e) && start.elapsed() < limit => {
                tracing::debug!("applying {}: {e}", describe(object));
                tokio::time::sleep(RETRY).await;
            }
            Err(e) => bail!("applying {}: {e}", describe(object)),
        }
    }
}

/// Applies every object at once (they do not depend on each other: a binding may name a role
/// that does not exist yet); results in the objects' order.
pub async fn apply_all(
    client: &Client,
    objects: &[Value],
    limit: Duration,
) -> Result<Vec<Applied>> {
    futures::future::try_join_all(objects.iter().map(|o| apply(client, o, limit))).await
}

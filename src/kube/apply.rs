//! The objects kubeforge creates in a cluster, typed with k8s-openapi, and their server-side
//! apply: idempotent (an object already as rendered is left untouched, its resourceVersion
//! unchanged), retried while the API server does not serve its group yet.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

const FIELD_MANAGER: &str = "kubeforge";
const RETRY: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Created,
    Configured,
    Unchanged,
}

macro_rules! objects {
    (namespaced: $($ns:ident),+; cluster: $($cl:ident),+) => {
        /// A cluster object of a kind kubeforge creates.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Object {
            $($ns($ns),)+
            $($cl($cl),)+
        }

        impl Object {
            /// A rendered object (`apiVersion`, `kind`, …) as its type.
            pub fn from_value(value: Value) -> Result<Object> {
                let kind = value["kind"].as_str().unwrap_or_default().to_string();
                match kind.as_str() {
                    $(stringify!($ns) => Ok(Object::$ns(typed(value)?)),)+
                    $(stringify!($cl) => Ok(Object::$cl(typed(value)?)),)+
                    other => bail!("kubeforge does not create objects of kind {other:?}"),
                }
            }

            pub fn to_value(&self) -> Value {
                match self {
                    $(Object::$ns(o) => serde_json::to_value(o),)+
                    $(Object::$cl(o) => serde_json::to_value(o),)+
                }
                .expect("a k8s-openapi object serializes")
            }

            pub fn kind(&self) -> &'static str {
                match self {
                    $(Object::$ns(_) => stringify!($ns),)+
                    $(Object::$cl(_) => stringify!($cl),)+
                }
            }

            pub fn meta(&self) -> &ObjectMeta {
                match self {
                    $(Object::$ns(o) => o.meta(),)+
                    $(Object::$cl(o) => o.meta(),)+
                }
            }

            pub fn meta_mut(&mut self) -> &mut ObjectMeta {
                match self {
                    $(Object::$ns(o) => o.meta_mut(),)+
                    $(Object::$cl(o) => o.meta_mut(),)+
                }
            }

            /// Applies it server-side, retrying transient errors until `limit`.
            pub async fn apply(&self, client: &Client, limit: Duration) -> Result<Applied> {
                let what = self.describe();
                let namespace = self.meta().namespace.clone().unwrap_or_default();
                match self {
                    $(Object::$ns(o) => {
                        let api = Api::namespaced(client.clone(), &namespace);
                        apply_with(api, o, &what, limit).await
                    })+
                    $(Object::$cl(o) => apply_with(Api::all(client.clone()), o, &what, limit).await,)+
                }
            }

            /// What applying it would change (a server-side dry-run): None when nothing,
            /// an empty diff when it would be created.
            pub async fn preview(&self, client: &Client) -> Result<Option<String>> {
                let what = self.describe();
                let namespace = self.meta().namespace.clone().unwrap_or_default();
                match self {
                    $(Object::$ns(o) => {
                        let api = Api::namespaced(client.clone(), &namespace);
                        preview_with(api, o, &what).await
                    })+
                    $(Object::$cl(o) => preview_with(Api::all(client.clone()), o, &what).await,)+
                }
            }
        }
    };
}

objects!(
    namespaced: ConfigMap, Secret, ServiceAccount, Service, Role, RoleBinding, Deployment, DaemonSet;
    cluster: ClusterRole, ClusterRoleBinding, PriorityClass
);

fn typed<K: DeserializeOwned>(value: Value) -> Result<K> {
    let what = describe_value(&value);
    serde_json::from_value(value).map_err(|e| anyhow!("{what} is not a valid object: {e}"))
}

fn describe_value(value: &Value) -> String {
    let kind = value["kind"].as_str().unwrap_or("?");
    let name = value["metadata"]["name"].as_str().unwrap_or("?");
    match value["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

impl Object {
    /// `Kind namespace/name`, for messages.
    pub fn describe(&self) -> String {
        let meta = self.meta();
        let name = meta.name.as_deref().unwrap_or("?");
        match &meta.namespace {
            Some(ns) => format!("{} {ns}/{name}", self.kind()),
            None => format!("{} {name}", self.kind()),
        }
    }

    pub fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or("?")
    }
}

/// An answer worth waiting out: the API server not serving the object's group yet. (A lost
/// connection, 429 and 5xx are retried by the client itself, `super::retry`.)
fn transient(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

async fn apply_with<K>(api: Api<K>, object: &K, what: &str, limit: Duration) -> Result<Applied>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = object
        .meta()
        .name
        .clone()
        .ok_or_else(|| anyhow!("{what} has no name"))?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let start = Instant::now();
    loop {
        let attempt = async {
            let before = api.get_opt(&name).await?;
            let after = api.patch(&name, &params, &Patch::Apply(object)).await?;
            Ok::<_, kube::Error>(match before {
                None => Applied::Created,
                Some(b) if b.meta().resource_version == after.meta().resource_version => {
                    Applied::Unchanged
                }
                Some(_) => Applied::Configured,
            })
        };
        match attempt.await {
            Ok(applied) => return Ok(applied),
            Err(e) if transient(&e) && start.elapsed() < limit => {
                tracing::debug!("applying {what}: {e}");
                tokio::time::sleep(RETRY).await;
            }
            Err(e) => bail!("applying {what}: {e}"),
        }
    }
}

/// The object without what the server keeps for itself, as YAML.
fn comparable<K: Serialize>(object: &K) -> String {
    let mut value = serde_json::to_value(object).unwrap_or_default();
    if let Some(meta) = value["metadata"].as_object_mut() {
        for key in [
            "managedFields",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "uid",
        ] {
            meta.remove(key);
        }
    }
    if let Some(map) = value.as_object_mut() {
        map.remove("status");
    }
    crate::manifests::to_yaml(value)
}

async fn preview_with<K>(api: Api<K>, object: &K, what: &str) -> Result<Option<String>>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let params = PatchParams::apply(FIELD_MANAGER).force().dry_run();
    let before = api
        .get_opt(&name)
        .await
        .map_err(|e| anyhow!("reading {what}: {e}"))?;
    let after = api
        .patch(&name, &params, &Patch::Apply(object))
        .await
        .map_err(|e| anyhow!("dry-running {what}: {e}"))?;
    let Some(before) = before else {
        return Ok(Some(String::new()));
    };
    let (old, new) = (comparable(&before), comparable(&after));
    Ok((old != new).then(|| {
        similar::TextDiff::from_lines(&old, &new)
            .unified_diff()
            .context_radius(3)
            .header("live", "after the upgrade")
            .to_string()
    }))
}

/// What applying each object would change, in the objects' order (see `Object::preview`).
pub async fn preview_all(
    client: &Client,
    objects: &[Object],
    limit: Duration,
) -> Result<Vec<Option<String>>> {
    let all = futures::future::try_join_all(objects.iter().map(|o| o.preview(client)));
    tokio::time::timeout(limit, all)
        .await
        .map_err(|_| anyhow!("the API server did not answer the dry-run within {limit:?}"))?
}

/// Applies every object at once (they do not depend on each other: a binding may name a role
/// that does not exist yet); results in the objects' order.
pub async fn apply_all(
    client: &Client,
    objects: &[Object],
    limit: Duration,
) -> Result<Vec<Applied>> {
    futures::future::try_join_all(objects.iter().map(|o| o.apply(client, limit))).await
}

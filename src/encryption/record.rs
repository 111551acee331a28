//! What a key rotation across several control-plane nodes shares, in the Secret
//! `kube-system/kubeforge-encryption-rotation` (itself encrypted at rest, and rewritten with the
//! others): the configuration the rotation's last step produced, which keys each node's API
//! server was restarted with, and which key the Secrets were all rewritten with.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

const NAME: &str = "kubeforge-encryption-rotation";
const NAMESPACE: &str = "kube-system";
const LOADED: &str = "loaded.";
const REWRITTEN: &str = "rewritten";

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Record {
    /// The EncryptionConfiguration of the rotation's latest step (what other nodes copy).
    pub target: Option<String>,
    /// Node name → the key names its API server runs with, in order, comma-separated.
    pub loaded: BTreeMap<String, String>,
    /// The first key when every Secret was last rewritten.
    pub rewritten: Option<String>,
}

impl Record {
    fn from_data(data: BTreeMap<String, ByteString>) -> Record {
        let mut record = Record::default();
        for (key, value) in data {
            let text = String::from_utf8_lossy(&value.0).into_owned();
            if key == super::FILE {
                record.target = Some(text);
            } else if key == REWRITTEN {
                record.rewritten = Some(text);
            } else if let Some(node) = key.strip_prefix(LOADED) {
                record.loaded.insert(node.to_string(), text);
            }
        }
        record
    }
}

/// The data key of what `node`'s API server loaded.
pub fn loaded_key(node: &str) -> String {
    format!("{LOADED}{node}")
}

pub fn rewritten_key() -> &'static str {
    REWRITTEN
}

pub async fn read(client: &kube::Client) -> Result<Record> {
    let api: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let secret = api
        .get_opt(NAME)
        .await
        .with_context(|| format!("reading {NAMESPACE}/{NAME}"))?;
    Ok(secret
        .and_then(|s| s.data)
        .map(Record::from_data)
        .unwrap_or_default())
}

/// Sets `entries` (data key, value; none removes it) in the record, leaving its other entries as
/// they are.
pub async fn write(client: &kube::Client, entries: &[(String, Option<String>)]) -> Result<()> {
    let api: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let data: BTreeMap<String, Option<ByteString>> = entries
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().map(|v| ByteString(v.into_bytes()))))
        .collect();
    let context = || format!("writing {NAMESPACE}/{NAME}");
    if api.get_opt(NAME).await.with_context(context)?.is_none() {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(NAME.into()),
                namespace: Some(NAMESPACE.into()),
                ..Default::default()
            },
            data: Some(
                data.clone()
                    .into_iter()
                    .filter_map(|(k, v)| Some((k, v?)))
                    .collect(),
            ),
            ..Default::default()
        };
        api.create(&PostParams::default(), &secret)
            .await
            .with_context(context)?;
        return Ok(());
    }
    let patch = serde_json::json!({ "data": data });
    api.patch(NAME, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(context)?;
    Ok(())
}

/// The nodes that run an API server: those of the kube-apiserver mirror pods (kubeforge's and
/// kubeadm's manifests carry these labels).
pub async fn api_server_nodes(client: &kube::Client) -> Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let list = pods
        .list(&ListParams::default().labels("component=kube-apiserver,tier=control-plane"))
        .await
        .context("listing the kube-apiserver pods")?;
    let mut nodes: Vec<String> = list
        .items
        .into_iter()
        .filter_map(|p| p.spec.and_then(|s| s.node_name))
        .collect();
    nodes.sort();
    nodes.dedup();
    Ok(nodes)
}

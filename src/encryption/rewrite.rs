//! The rewrite step of a key rotation: every Secret read and replaced unchanged through the API,
//! so that the API server stores it again, encrypted with the key now first
//! (`kubectl get secrets -A -o json | kubectl replace -f -`).

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};

/// How many Secrets one list call returns.
const PAGE: u32 = 250;

/// The number of Secrets rewritten. A Secret changed or deleted meanwhile is left as it is:
/// whoever changed it wrote it with the current key.
pub async fn rewrite_all(client: &kube::Client) -> Result<usize> {
    let all: Api<Secret> = Api::all(client.clone());
    let mut params = ListParams::default().limit(PAGE);
    let mut count = 0;
    loop {
        let page = all.list(&params).await.context("listing the Secrets")?;
        for secret in &page.items {
            let (Some(ns), Some(name)) = (&secret.metadata.namespace, &secret.metadata.name) else {
                continue;
            };
            let api: Api<Secret> = Api::namespaced(client.clone(), ns);
            match api.replace(name, &PostParams::default(), secret).await {
                Ok(_) => count += 1,
                Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
                    tracing::info!("{ns}/{name} changed meanwhile ({}): left alone", e.code);
                }
                Err(e) => return Err(e).with_context(|| format!("rewriting Secret {ns}/{name}")),
            }
        }
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(count),
        }
    }
}

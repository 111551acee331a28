//! What the API server says about the control plane: `/livez`, and the mirror pods' facts.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;

use super::diagnose::Container;

/// `GET /livez` through the client (TLS verified against the cluster CA, client certificate
/// sent): true on 200.
pub async fn livez(client: &Client) -> bool {
    answers(client, "/livez").await
}

/// `GET /readyz` likewise: the API server serves, its RBAC and other post-start hooks done.
pub async fn readyz(client: &Client) -> bool {
    answers(client, "/readyz").await
}

async fn answers(client: &Client, path: &str) -> bool {
    let Ok(request) = http::Request::get(path).body(Vec::new()) else {
        return false;
    };
    tokio::time::timeout(Duration::from_secs(2), client.request_text(request))
        .await
        .is_ok_and(|r| r.is_ok())
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
                id: c
                    .container_id
                    .as_deref()
                    .and_then(|id| id.split_once("://").map(|(_, id)| id.to_string()))
                    .unwrap_or_default(),
            }
        },
    );
    Mirror { ready, container }
}

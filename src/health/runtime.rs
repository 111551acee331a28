//! The container runtime's view (CRI over its unix socket): what happened to a static pod's
//! container while the API server — and so the mirror pod — is not there to say.

use anyhow::{anyhow, Context as _, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerFilter, ContainerState, ContainerStatusRequest, ImageSpec, ImageStatusRequest,
    ListContainersRequest, ListPodSandboxRequest, PodSandboxFilter,
};
use tonic::transport::{Channel, Endpoint, Uri};

use super::diagnose::Container;

pub struct Runtime {
    containers: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl Runtime {
    /// Connects to `unix:///path` (the node's criSocket).
    pub async fn connect(cri_socket: &str) -> Result<Self> {
        let path = cri_socket
            .strip_prefix("unix://")
            .ok_or_else(|| anyhow!("criSocket {cri_socket:?} is not a unix:// socket"))?
            .to_string();
        let channel = Endpoint::try_from("http://[::]")?
            .connect_timeout(std::time::Duration::from_secs(2))
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .with_context(|| format!("connecting to the container runtime at {cri_socket}"))?;
        Ok(Runtime {
            containers: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// The newest container of `kube-system/<pod>`: its state, last exit code and restarts.
    /// `None` while the kubelet has not created the pod's sandbox.
    pub async fn container(&mut self, pod: &str, image: &str) -> Result<Container> {
        let sandboxes = self
            .containers
            .list_pod_sandbox(ListPodSandboxRequest {
                filter: Some(PodSandboxFilter {
                    label_selector: [
                        ("io.kubernetes.pod.name".to_string(), pod.to_string()),
                        ("io.kubernetes.pod.namespace".into(), "kube-system".into()),
                    ]
                    .into(),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .items;
        let Some(sandbox) = sandboxes.iter().max_by_key(|s| s.created_at) else {
            return Ok(Container {
                state: "not started".into(),
                ..Default::default()
            });
        };
        let mut containers = self
            .containers
            .list_containers(ListContainersRequest {
                filter: Some(ContainerFilter {
                    pod_sandbox_id: sandbox.id.clone(),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .containers;
        containers.sort_by_key(|c| (c.metadata.as_ref().map_or(0, |m| m.attempt), c.created_at));
        let Some(newest) = containers.last() else {
            let image_missing = !self.has_image(image).await?;
            return Ok(Container {
                state: "waiting".into(),
                image_missing,
                ..Default::default()
            });
        };
        let restarts = newest.metadata.as_ref().map_or(0, |m| m.attempt);
        let state =
            ContainerState::try_from(newest.state).unwrap_or(ContainerState::ContainerUnknown);
        // The exit code of the newest container that ended (the running one has none yet).
        let ended = containers
            .iter()
            .rev()
            .find(|c| c.state == ContainerState::ContainerExited as i32);
        let (exit_code, reason) = match ended {
            Some(c) => {
                let status = self
                    .containers
                    .container_status(ContainerStatusRequest {
                        container_id: c.id.clone(),
                        verbose: false,
                    })
                    .await?
                    .into_inner()
                    .status;
                status.map_or((None, None), |s| {
                    (
                        Some(s.exit_code),
                        (!s.reason.is_empty()).then_some(s.reason),
                    )
                })
            }
            None => (None, None),
        };
        Ok(Container {
            state: match state {
                ContainerState::ContainerCreated => "created",
                ContainerState::ContainerRunning => "running",
                ContainerState::ContainerExited => "exited",
                ContainerState::ContainerUnknown => "unknown",
            }
            .into(),
            reason,
            exit_code,
            restarts,
            image_missing: false,
        })
    }

    async fn has_image(&mut self, image: &str) -> Result<bool> {
        let response = self
            .images
            .image_status(ImageStatusRequest {
                image: Some(ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await?
            .into_inner();
        Ok(response.image.is_some())
    }
}

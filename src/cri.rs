//! The container runtime, through the CRI on the kubelet's socket: what happened to a static
//! pod's container while the API server — and so the mirror pod — is not there to say, and
//! stopping a container so that the kubelet starts it again.

use anyhow::{anyhow, Context as _, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerFilter, ContainerState, ContainerStatusRequest, ImageSpec, ImageStatusRequest,
    ListContainersRequest, ListPodSandboxRequest, PodSandboxFilter,
};
use serde::Serialize;
use tonic::transport::{Channel, Endpoint, Uri};

/// What is known about a component's container, from its mirror pod or from the runtime.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Container {
    /// `created`, `running`, `exited`, `waiting` (kubelet: not started yet), or `not started` (no sandbox yet).
    pub state: String,
    /// The waiting or terminated reason (`CrashLoopBackOff`, `ErrImageNeverPull`, `Error`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The exit code of the last run that ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub restarts: u32,
    /// The image the kubelet was told to run is not on the node.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub image_missing: bool,
    /// The runtime's container ID (empty when none was created, or from a mirror pod).
    #[serde(skip)]
    pub id: String,
}

impl Container {
    /// What it is doing, in a few words: `exited (Error), last exit code 1, 1 restart`.
    pub fn summary(&self) -> String {
        let mut s = self.state.clone();
        if let Some(r) = &self.reason {
            s.push_str(&format!(" ({r})"));
        }
        if let Some(code) = self.exit_code {
            s.push_str(&format!(", last exit code {code}"));
        }
        match self.restarts {
            0 => {}
            1 => s.push_str(", 1 restart"),
            n => s.push_str(&format!(", {n} restarts")),
        }
        s
    }

    pub fn has_exited(&self) -> bool {
        self.exit_code.is_some() || self.state == "exited"
    }
}

/// A running container of a pod: its runtime ID and its attempt (restart count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub id: String,
    pub attempt: u32,
}

#[derive(Clone)]
pub struct Runtime {
    containers: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    /// Sandboxes created before this (ns since the epoch) are not looked at.
    since: i64,
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
            since: 0,
        })
    }

    /// From now on only sandboxes created at or after `t` count: after a manifest is replaced,
    /// the old pod's containers (a crash-looping one above all) are not the new pod's.
    pub fn only_sandboxes_since(&mut self, t: std::time::SystemTime) {
        let ns = t
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        self.since = i64::try_from(ns).unwrap_or(i64::MAX);
    }

    async fn newest_sandbox(&mut self, pod: &str) -> Result<Option<k8s_cri::v1::PodSandbox>> {
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
        Ok(sandboxes
            .into_iter()
            .filter(|s| s.created_at >= self.since)
            .max_by_key(|s| s.created_at))
    }

    /// The containers of the newest sandbox of `kube-system/<pod>`, oldest first; None while the
    /// kubelet has not created the pod's sandbox.
    async fn containers_of(&mut self, pod: &str) -> Result<Option<Vec<k8s_cri::v1::Container>>> {
        let Some(sandbox) = self.newest_sandbox(pod).await? else {
            return Ok(None);
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
        Ok(Some(containers))
    }

    /// The newest sandbox of `kube-system/<pod>`: its pod UID and whether it is still ready.
    pub async fn sandbox(&mut self, pod: &str) -> Result<Option<(String, bool)>> {
        Ok(self.newest_sandbox(pod).await?.map(|s| {
            let uid = s.metadata.as_ref().map_or(String::new(), |m| m.uid.clone());
            (
                uid,
                s.state == k8s_cri::v1::PodSandboxState::SandboxReady as i32,
            )
        }))
    }

    /// The running container of `kube-system/<pod>`, if one runs.
    pub async fn running(&mut self, pod: &str) -> Result<Option<Running>> {
        let containers = self.containers_of(pod).await?.unwrap_or_default();
        Ok(containers
            .iter()
            .rev()
            .find(|c| c.state == ContainerState::ContainerRunning as i32)
            .map(|c| Running {
                id: c.id.clone(),
                attempt: c.metadata.as_ref().map_or(0, |m| m.attempt),
            }))
    }

    /// Stops container `id`: SIGTERM, then SIGKILL after `grace`. The kubelet starts the pod's
    /// container again (restartPolicy Always); the pod and its manifest stay as they are.
    pub async fn stop(&mut self, id: &str, grace: std::time::Duration) -> Result<()> {
        self.containers
            .stop_container(k8s_cri::v1::StopContainerRequest {
                container_id: id.to_string(),
                timeout: grace.as_secs() as i64,
            })
            .await
            .with_context(|| format!("stopping container {id}"))?;
        Ok(())
    }

    /// Removes the exited containers of `kube-system/<pod>`; how many. The kubelet holds a
    /// container that exited in back-off (up to 5 minutes) only while it can see the exited one.
    pub async fn remove_exited(&mut self, pod: &str) -> Result<usize> {
        let containers = self.containers_of(pod).await?.unwrap_or_default();
        let mut removed = 0;
        for c in containers
            .iter()
            .filter(|c| c.state == ContainerState::ContainerExited as i32)
        {
            self.containers
                .remove_container(k8s_cri::v1::RemoveContainerRequest {
                    container_id: c.id.clone(),
                })
                .await
                .with_context(|| format!("removing the exited container {}", c.id))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Makes the kubelet start `kube-system/<pod>`'s container again, now: the running one is
    /// stopped (SIGTERM, SIGKILL after `grace`); when the kubelet holds the pod in back-off (it
    /// crashed lately, or crash-loops) its exited containers are removed, which ends the
    /// back-off. The pod and its manifest stay as they are. Returns what ran before (an empty
    /// ID when nothing ran).
    pub async fn restart(&mut self, pod: &str, grace: std::time::Duration) -> Result<Running> {
        let attempt = self
            .containers_of(pod)
            .await?
            .unwrap_or_default()
            .iter()
            .filter_map(|c| c.metadata.as_ref().map(|m| m.attempt))
            .max()
            .unwrap_or(0);
        let before = self.running(pod).await?.unwrap_or(Running {
            id: String::new(),
            attempt,
        });
        if !before.id.is_empty() {
            self.stop(&before.id, grace).await?;
        }
        for _ in 0..15 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            if self.running(pod).await?.is_some_and(|r| r.id != before.id) {
                return Ok(before);
            }
        }
        let removed = self.remove_exited(pod).await?;
        tracing::info!(
            "{pod}: the kubelet held it in back-off; removed {removed} exited containers"
        );
        Ok(before)
    }

    /// The newest container of `kube-system/<pod>`: its state, last exit code and restarts.
    pub async fn container(&mut self, pod: &str, image: &str) -> Result<Container> {
        let Some(containers) = self.containers_of(pod).await? else {
            return Ok(Container {
                state: "not started".into(),
                ..Default::default()
            });
        };
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
            id: newest.id.clone(),
        })
    }

    /// Pulls `image` (the runtime's credentials and mirrors apply); the error is the runtime's.
    pub async fn pull(&mut self, image: &str) -> Result<()> {
        self.images
            .pull_image(k8s_cri::v1::PullImageRequest {
                image: Some(ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow!("{}", e.message()))?;
        Ok(())
    }

    /// Whether `image` is on the node.
    pub async fn has_image(&mut self, image: &str) -> Result<bool> {
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

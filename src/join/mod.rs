//! `kubeforge join` (contract 7): discovery, then the cluster's own configuration, downloaded
//! with the bootstrap token, as the Config the join phases work with — so a joining node's
//! kubelet files are the ones its cluster's control plane uploaded.

pub mod discovery;

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;

use crate::cli::JoinFlags;
use crate::cluster::token::Token;
use crate::config::Config;
use crate::kubeconfig::{Kubeconfig, User};
use crate::BadInput;
use discovery::{ClusterInfo, Trust};

/// kubeadm's v1beta4 defaults for `timeouts.discovery` and `timeouts.tlsBootstrap`.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(300);
pub const TLS_BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(300);

/// What a join knows beyond the Config: the cluster it trusts and the token it joins with.
pub struct Joining {
    pub cluster: ClusterInfo,
    pub token: Token,
    /// A control-plane join; with the key that decrypts `kubeadm-certs` when given.
    pub control_plane: Option<ControlPlaneJoin>,
}

pub struct ControlPlaneJoin {
    pub certificate_key: Option<String>,
}

impl Joining {
    /// `bootstrap-kubelet.conf`: the kubelet's credentials until its TLS bootstrap.
    pub fn bootstrap_kubeconfig(&self, cluster_name: &str) -> String {
        Kubeconfig::new(
            cluster_name,
            &self.cluster.server,
            &self.cluster.ca_pem,
            "tls-bootstrap-token-user",
            User {
                token: Some(self.token.to_string()),
                ..User::default()
            },
        )
        .to_yaml()
    }
}

/// The flags checked (bad input before anything else), the cluster discovered and its
/// configuration downloaded.
pub fn prepare(flags: &JoinFlags, kubernetes_dir: &Path) -> Result<(Config, Joining)> {
    let certificate_key = flags
        .certificate_key
        .as_deref()
        .map(|k| {
            crate::cluster::certs_secret::parse_key(k)
                .map(|_| k.to_string())
                .map_err(|e| BadInput(format!("--certificate-key: {e}")))
        })
        .transpose()?;
    if certificate_key.is_some() && !flags.control_plane {
        bail!(BadInput(
            "--certificate-key is for control-plane joins (--control-plane)".into()
        ));
    }
    let token = flags.token.as_deref().ok_or_else(|| {
        BadInput("--token is required (the kubelet's TLS bootstrap needs it)".into())
    })?;
    let token = Token::parse(token).map_err(|e| BadInput(format!("--token: {e}")))?;
    let pins = flags
        .discovery_token_ca_cert_hash
        .iter()
        .map(|p| discovery::parse_pin(p))
        .collect::<Result<Vec<_>>>()?;
    let trust = match (pins.is_empty(), flags.discovery_token_unsafe_skip_ca_verification) {
        (false, _) => Trust::Pins(pins),
        (true, true) => Trust::Unpinned,
        (true, false) if flags.discovery_file.is_some() => Trust::Unpinned,
        (true, false) => bail!(BadInput(
            "token discovery without --discovery-token-ca-cert-hash trusts whoever answers; give the hash (`kubeforge init` and `kubeforge token create --print-join-command` print it) or --discovery-token-unsafe-skip-ca-verification".into()
        )),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cluster = match (&flags.discovery_file, &flags.endpoint) {
        (Some(file), _) => discovery::by_file(file)?,
        (None, Some(endpoint)) => runtime.block_on(discovery::by_token(
            endpoint,
            &token,
            &trust,
            DISCOVERY_TIMEOUT,
        ))?,
        (None, None) => bail!(BadInput(
            "give the API server endpoint (host:port) or --discovery-file".into()
        )),
    };
    tracing::info!("discovered the cluster at {}", cluster.server);
    let joining = Joining {
        cluster,
        token,
        control_plane: flags
            .control_plane
            .then_some(ControlPlaneJoin { certificate_key }),
    };
    let (cluster_configuration, kubelet) = runtime.block_on(download(&joining))?;

    let node = match &flags.node_name {
        Some(n) => n.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_lowercase(),
    };
    let mut text = format!(
        "apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\nnodeRegistration:\n  name: {}\n",
        serde_json::Value::String(node)
    );
    if flags.control_plane {
        text.push_str("localAPIEndpoint:\n");
        if let Some(address) = &flags.apiserver_advertise_address {
            text.push_str(&format!(
                "  advertiseAddress: {}\n",
                serde_json::Value::String(address.clone())
            ));
        }
        text.push_str(&format!(
            "  bindPort: {}\n",
            flags.apiserver_bind_port.unwrap_or(6443)
        ));
    }
    if let Some(socket) = &flags.cri_socket {
        text.push_str(&format!(
            "  criSocket: {}\n",
            serde_json::Value::String(socket.clone())
        ));
    }
    text.push_str("---\n");
    text.push_str(&cluster_configuration);
    text.push_str("\n---\n");
    text.push_str(&kubelet);
    let mut cfg = crate::config::load_str(
        &text,
        "the cluster's kube-system/kubeadm-config and kubelet-config",
        &Default::default(),
        kubernetes_dir,
    )?;
    if flags.control_plane && cfg.cluster.control_plane_endpoint.is_empty() {
        bail!("the cluster has no controlPlaneEndpoint: a second control-plane node needs a stable endpoint for every node to reach the API servers through (set it in the ClusterConfiguration, see kubeadm's docs on high availability)");
    }
    cfg.init.skip_phases = flags.skip_phases.clone();
    cfg.init.node_registration.ignore_preflight_errors = flags.ignore_preflight_errors.clone();
    cfg.init.dry_run = flags.dry_run;
    Ok((cfg, joining))
}

/// The ClusterConfiguration and the KubeletConfiguration the control plane uploaded, read with
/// the bootstrap token (kubeadm's RBAC lets bootstrappers read both).
async fn download(joining: &Joining) -> Result<(String, String)> {
    let client = token_client(joining)?;
    let maps: Api<ConfigMap> = Api::namespaced(client, "kube-system");
    let read = async |name: &str, key: &str| -> Result<String> {
        let map = maps
            .get(name)
            .await
            .with_context(|| format!("reading kube-system/{name} with the bootstrap token"))?;
        map.data
            .unwrap_or_default()
            .remove(key)
            .ok_or_else(|| anyhow!("kube-system/{name} has no {key:?} key"))
    };
    let cluster = read("kubeadm-config", "ClusterConfiguration").await?;
    let kubelet = read("kubelet-config", "kubelet").await?;
    Ok((cluster, kubelet))
}

/// A client that trusts the discovered CA and authenticates with the bootstrap token.
pub fn token_client(joining: &Joining) -> Result<kube::Client> {
    let mut config = kube::Config::new(joining.cluster.server.parse().context("the server URL")?);
    let der = pem::parse(&joining.cluster.ca_pem)?.into_contents();
    config.root_cert = Some(vec![der]);
    config.auth_info.token = Some(joining.token.to_string().into());
    config.connect_timeout = Some(Duration::from_secs(5));
    Ok(kube::Client::try_from(config)?)
}

/// `kube-system/kubeadm-certs`, read with the bootstrap token and decrypted with `key`: every
/// value is decrypted before any is returned, so a wrong key writes nothing.
pub async fn download_certs(joining: &Joining, key: &str) -> Result<Vec<(String, Vec<u8>)>> {
    use k8s_openapi::api::core::v1::Secret;
    let key = crate::cluster::certs_secret::parse_key(key)?;
    let secrets: Api<Secret> = Api::namespaced(token_client(joining)?, "kube-system");
    let secret = match secrets.get_opt("kubeadm-certs").await? {
        Some(s) => s,
        None => bail!("kube-system/kubeadm-certs does not exist: the uploaded certificates have expired (they live 2 hours) or were never uploaded; on a control-plane node run `kubeforge token create --print-join-command --upload-certs` for a fresh line"),
    };
    secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| {
            if value.0.is_empty() {
                return Ok((name, Vec::new()));
            }
            crate::cluster::certs_secret::decrypt(&key, &value.0)
                .map(|plain| (name.clone(), plain))
                .with_context(|| format!("kube-system/kubeadm-certs, {name}"))
        })
        .collect()
}

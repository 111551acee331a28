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

/// kubeadm's v1beta4 default for `timeouts.discovery`.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(300);

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

/// kubeadm's v1beta4 JoinConfiguration (v1beta3 converted): discovery and the control-plane fields are kubeforge's
/// to read; nodeRegistration, timeouts and patches go on to the node's configuration as they
/// are (checked there like an InitConfiguration's).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JoinConfiguration {
    /// Checked on the raw document before this type is read.
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    /// Accepted for kubeadm's files; the CA goes to certificatesDir/ca.crt as with kubeadm's default.
    #[serde(default)]
    #[allow(dead_code)]
    ca_cert_path: String,
    #[serde(default)]
    discovery: DiscoveryConfig,
    #[serde(default)]
    node_registration: Option<serde_yaml::Value>,
    #[serde(default)]
    control_plane: Option<JoinControlPlane>,
    #[serde(default)]
    skip_phases: Vec<String>,
    #[serde(default)]
    patches: Option<serde_yaml::Value>,
    #[serde(default)]
    timeouts: Option<serde_yaml::Value>,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DiscoveryConfig {
    #[serde(default)]
    bootstrap_token: Option<BootstrapTokenDiscovery>,
    #[serde(default)]
    file: Option<FileDiscovery>,
    #[serde(default)]
    tls_bootstrap_token: String,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BootstrapTokenDiscovery {
    #[serde(default)]
    token: String,
    #[serde(default)]
    api_server_endpoint: String,
    #[serde(default)]
    ca_cert_hashes: Vec<String>,
    #[serde(default)]
    unsafe_skip_ca_verification: bool,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileDiscovery {
    kube_config_path: String,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JoinControlPlane {
    #[serde(default, rename = "localAPIEndpoint")]
    local_api_endpoint: crate::config::ApiEndpoint,
    #[serde(default)]
    certificate_key: String,
}

/// The JoinConfiguration in `path`, its values filled into `flags` (kubeadm refuses flags that
/// duplicate the file; so does kubeforge).
fn read_config(path: &Path, flags: &mut JoinFlags) -> Result<JoinConfiguration> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| BadInput(format!("{file}: {e}")))?;
    let yaml_error = |e: serde_yaml::Error| {
        let at = e
            .location()
            .map_or(String::new(), |l| format!(":{}:{}", l.line(), l.column()));
        BadInput(format!("{file}{at}: {e}"))
    };
    let mut map: serde_yaml::Mapping = serde_yaml::from_str(&text).map_err(yaml_error)?;
    let api_version = map
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let kind = map.get("kind").and_then(|v| v.as_str()).unwrap_or_default();
    match (api_version, kind) {
        ("kubeadm.k8s.io/v1beta4", "JoinConfiguration") => {}
        ("kubeadm.k8s.io/v1beta3", "JoinConfiguration") => {
            crate::config::v1beta3::convert_join(&mut map);
            map.insert("apiVersion".into(), "kubeadm.k8s.io/v1beta4".into());
        }
        (v, k) => bail!(BadInput(format!(
            "{file}: expected kind JoinConfiguration, apiVersion kubeadm.k8s.io/v1beta4 or v1beta3 (got {k} {v})"
        ))),
    }
    let cfg: JoinConfiguration =
        serde_yaml::from_value(serde_yaml::Value::Mapping(map)).map_err(yaml_error)?;
    let mixed: Vec<&str> = [
        ("token", flags.token.is_some()),
        (
            "discovery-token-ca-cert-hash",
            !flags.discovery_token_ca_cert_hash.is_empty(),
        ),
        ("discovery-file", flags.discovery_file.is_some()),
        ("certificate-key", flags.certificate_key.is_some()),
        (
            "apiserver-advertise-address",
            flags.apiserver_advertise_address.is_some(),
        ),
        ("apiserver-bind-port", flags.apiserver_bind_port.is_some()),
        ("node-name", flags.node_name.is_some()),
        ("cri-socket", flags.cri_socket.is_some()),
    ]
    .into_iter()
    .filter_map(|(f, set)| set.then_some(f))
    .collect();
    if !mixed.is_empty() || flags.endpoint.is_some() {
        bail!(BadInput(format!(
            "{file}: can not mix --config with the endpoint argument or --{}",
            mixed.join(", --")
        )));
    }
    if let Some(b) = &cfg.discovery.bootstrap_token {
        flags.endpoint = (!b.api_server_endpoint.is_empty()).then(|| b.api_server_endpoint.clone());
        flags.token = (!b.token.is_empty()).then(|| b.token.clone());
        flags.discovery_token_ca_cert_hash = b.ca_cert_hashes.clone();
        flags.discovery_token_unsafe_skip_ca_verification = b.unsafe_skip_ca_verification;
    }
    if let Some(f) = &cfg.discovery.file {
        flags.discovery_file = Some(f.kube_config_path.clone().into());
    }
    if !cfg.discovery.tls_bootstrap_token.is_empty() {
        flags.token = Some(cfg.discovery.tls_bootstrap_token.clone());
    }
    if let Some(cp) = &cfg.control_plane {
        flags.control_plane = true;
        flags.certificate_key =
            (!cp.certificate_key.is_empty()).then(|| cp.certificate_key.clone());
        let a = &cp.local_api_endpoint;
        flags.apiserver_advertise_address =
            (!a.advertise_address.is_empty()).then(|| a.advertise_address.clone());
        flags.apiserver_bind_port = (a.bind_port != 0).then_some(a.bind_port as u16);
    }
    flags.skip_phases.extend(cfg.skip_phases.iter().cloned());
    flags.dry_run |= cfg.dry_run;
    Ok(cfg)
}

/// The flags checked (bad input before anything else), the cluster discovered and its
/// configuration downloaded.
pub fn prepare(given: &JoinFlags, kubernetes_dir: &Path) -> Result<(Config, Joining)> {
    let mut flags = given.clone();
    let join_config = match &given.config {
        Some(path) => Some(read_config(path, &mut flags)?),
        None => None,
    };
    let flags = &flags;
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
    let discovery_timeout = join_config
        .as_ref()
        .and_then(|c| c.timeouts.as_ref()?.get("discovery")?.as_str())
        .map(|t| {
            crate::config::GoDuration::parse(t)
                .map(|d| d.0)
                .map_err(|e| BadInput(format!("timeouts.discovery: {e}")))
        })
        .transpose()?
        .unwrap_or(DISCOVERY_TIMEOUT);
    let runtime = crate::runtime()?;
    let cluster = match (&flags.discovery_file, &flags.endpoint) {
        (Some(file), _) => discovery::by_file(file)?,
        (None, Some(endpoint)) => runtime.block_on(discovery::by_token(
            endpoint,
            &token,
            &trust,
            discovery_timeout,
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

    use serde_yaml::{Mapping, Value as Yaml};
    let mut registration = match join_config
        .as_ref()
        .and_then(|c| c.node_registration.clone())
    {
        Some(Yaml::Mapping(m)) => m,
        _ => Mapping::new(),
    };
    let hostname = || {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_lowercase()
    };
    match &flags.node_name {
        Some(n) => {
            registration.insert("name".into(), n.clone().into());
        }
        None if !registration.contains_key("name") => {
            registration.insert("name".into(), hostname().into());
        }
        None => {}
    }
    if let Some(socket) = &flags.cri_socket {
        registration.insert("criSocket".into(), socket.clone().into());
    }
    let mut init = Mapping::new();
    init.insert("apiVersion".into(), "kubeadm.k8s.io/v1beta4".into());
    init.insert("kind".into(), "InitConfiguration".into());
    init.insert("nodeRegistration".into(), Yaml::Mapping(registration));
    if flags.control_plane {
        let mut endpoint = Mapping::new();
        if let Some(address) = &flags.apiserver_advertise_address {
            endpoint.insert("advertiseAddress".into(), address.clone().into());
        }
        endpoint.insert(
            "bindPort".into(),
            u64::from(flags.apiserver_bind_port.unwrap_or(6443)).into(),
        );
        init.insert("localAPIEndpoint".into(), Yaml::Mapping(endpoint));
    }
    if let Some(c) = &join_config {
        if let Some(t) = &c.timeouts {
            init.insert("timeouts".into(), t.clone());
        }
        if let Some(p) = &c.patches {
            init.insert("patches".into(), p.clone());
        }
    }
    let mut text = serde_yaml::to_string(&Yaml::Mapping(init)).expect("a mapping serializes");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v1beta3_join_configuration_is_converted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("join.yaml");
        std::fs::write(
            &path,
            "apiVersion: kubeadm.k8s.io/v1beta3
kind: JoinConfiguration
discovery:
  bootstrapToken:
    apiServerEndpoint: 10.0.0.5:6443
    token: abcdef.0123456789abcdef
    caCertHashes: [\"sha256:00\"]
  timeout: 1m30s
nodeRegistration:
  name: w1
  kubeletExtraArgs:
    node-ip: 10.0.0.9
    v: \"2\"
",
        )
        .unwrap();
        let mut flags = JoinFlags::default();
        let cfg = read_config(&path, &mut flags).unwrap();
        assert_eq!(flags.endpoint.as_deref(), Some("10.0.0.5:6443"));
        assert_eq!(flags.token.as_deref(), Some("abcdef.0123456789abcdef"));
        assert_eq!(cfg.timeouts.unwrap()["discovery"].as_str(), Some("1m30s"));
        let args = &cfg.node_registration.unwrap()["kubeletExtraArgs"];
        assert_eq!(args[0]["name"].as_str(), Some("node-ip"));
        assert_eq!(args[1]["value"].as_str(), Some("2"));
        std::fs::write(
            &path,
            "apiVersion: kubeadm.k8s.io/v1beta4\nkind: JoinConfiguration\nbogus: 1\n",
        )
        .unwrap();
        let e = read_config(&path, &mut JoinFlags::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
    }
}

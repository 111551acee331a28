//! `kubeforge join`'s input (contract 7): kubeadm's flags or its JoinConfiguration (v1beta4,
//! v1beta3 converted), checked before anything is fetched or written; and the joining node's
//! Config, built from what its cluster's control plane uploaded, so that a joining node's
//! kubelet files are the ones its cluster uses.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml::{Mapping, Value as Yaml};

use super::{CertificateKey, Config, GoDuration, Token};
use crate::BadInput;

/// kubeadm's v1beta4 default for `timeouts.discovery`.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(300);

/// kubeadm join's flags, as given (a JoinConfiguration fills them in; see [`JoinOptions::check`]).
#[derive(Debug, Clone, Default)]
pub struct JoinOptions {
    pub config: Option<PathBuf>,
    pub endpoint: Option<String>,
    pub token: Option<String>,
    pub discovery_token_ca_cert_hash: Vec<String>,
    pub discovery_token_unsafe_skip_ca_verification: bool,
    pub discovery_file: Option<PathBuf>,
    pub node_name: Option<String>,
    pub cri_socket: Option<String>,
    pub control_plane: bool,
    pub certificate_key: Option<String>,
    pub apiserver_advertise_address: Option<String>,
    pub apiserver_bind_port: Option<u16>,
    pub skip_phases: Vec<String>,
    pub ignore_preflight_errors: Vec<String>,
    pub dry_run: bool,
}

/// How the CA of `cluster-info` is trusted.
#[derive(Debug, Clone, PartialEq)]
pub enum Trust {
    /// `--discovery-token-ca-cert-hash`, one or more `sha256:<hex>`.
    Pins(Vec<String>),
    /// `--discovery-token-unsafe-skip-ca-verification`, or file discovery.
    Unpinned,
}

/// Where the joining node learns the cluster's address and CA.
#[derive(Debug, Clone)]
pub enum Discovery {
    /// kubeadm's token discovery against `host:port`.
    Token { endpoint: String, trust: Trust },
    /// A kubeconfig whose cluster is trusted as given.
    File(PathBuf),
}

/// A control-plane join: this node's API endpoint and the key of `kubeadm-certs` (none: the
/// shared certificates are on the node already).
#[derive(Debug, Clone)]
pub struct ControlPlaneJoin {
    pub certificate_key: Option<CertificateKey>,
    pub advertise_address: Option<String>,
    pub bind_port: u16,
}

/// A join's input, checked: nothing in it can be bad input any more.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub discovery: Discovery,
    pub discovery_timeout: Duration,
    pub token: Token,
    pub control_plane: Option<ControlPlaneJoin>,
    pub node_name: Option<String>,
    pub cri_socket: Option<String>,
    pub skip_phases: Vec<String>,
    pub ignore_preflight_errors: Vec<String>,
    pub dry_run: bool,
    /// What the JoinConfiguration carries on to the node's configuration as it is.
    file: FileParts,
}

#[derive(Debug, Clone, Default)]
struct FileParts {
    node_registration: Option<Yaml>,
    timeouts: Option<Yaml>,
    patches: Option<Yaml>,
}

/// kubeadm's v1beta4 JoinConfiguration: discovery and the control-plane fields are kubeforge's to
/// read; nodeRegistration, timeouts and patches go on to the node's configuration as they are
/// (checked there like an InitConfiguration's).
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
    node_registration: Option<Yaml>,
    #[serde(default)]
    control_plane: Option<JoinControlPlane>,
    #[serde(default)]
    skip_phases: Vec<String>,
    #[serde(default)]
    patches: Option<Yaml>,
    #[serde(default)]
    timeouts: Option<Yaml>,
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
    local_api_endpoint: super::ApiEndpoint,
    #[serde(default)]
    certificate_key: String,
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// The JoinConfiguration in `path`, read (v1beta3 converted) and checked for unknown fields.
fn read_file(path: &Path) -> Result<JoinConfiguration, BadInput> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| BadInput(format!("{file}: {e}")))?;
    let yaml_error = |e: serde_yaml::Error| {
        let at = e
            .location()
            .map_or(String::new(), |l| format!(":{}:{}", l.line(), l.column()));
        BadInput(format!("{file}{at}: {e}"))
    };
    let mut map: Mapping = serde_yaml::from_str(&text).map_err(yaml_error)?;
    let field = |k: &str| map.get(k).and_then(|v| v.as_str()).unwrap_or_default();
    match (field("apiVersion"), field("kind")) {
        ("kubeadm.k8s.io/v1beta4", "JoinConfiguration") => {}
        ("kubeadm.k8s.io/v1beta3", "JoinConfiguration") => {
            super::v1beta3::convert_join(&mut map);
            map.insert("apiVersion".into(), "kubeadm.k8s.io/v1beta4".into());
        }
        (v, k) => return Err(BadInput(format!(
            "{file}: expected kind JoinConfiguration, apiVersion kubeadm.k8s.io/v1beta4 or v1beta3 (got {k} {v})"
        ))),
    }
    serde_yaml::from_value(Yaml::Mapping(map)).map_err(yaml_error)
}

impl JoinOptions {
    /// The flags given beside `--config`: kubeadm refuses flags that duplicate the file.
    fn mixed_with_config(&self) -> Vec<&'static str> {
        [
            ("token", self.token.is_some()),
            (
                "discovery-token-ca-cert-hash",
                !self.discovery_token_ca_cert_hash.is_empty(),
            ),
            ("discovery-file", self.discovery_file.is_some()),
            ("certificate-key", self.certificate_key.is_some()),
            (
                "apiserver-advertise-address",
                self.apiserver_advertise_address.is_some(),
            ),
            ("apiserver-bind-port", self.apiserver_bind_port.is_some()),
            ("node-name", self.node_name.is_some()),
            ("cri-socket", self.cri_socket.is_some()),
        ]
        .into_iter()
        .filter_map(|(f, set)| set.then_some(f))
        .collect()
    }

    /// The JoinConfiguration's values as the flags they stand for.
    fn fill_from(&mut self, cfg: &JoinConfiguration) {
        if let Some(b) = &cfg.discovery.bootstrap_token {
            self.endpoint = non_empty(&b.api_server_endpoint);
            self.token = non_empty(&b.token);
            self.discovery_token_ca_cert_hash = b.ca_cert_hashes.clone();
            self.discovery_token_unsafe_skip_ca_verification = b.unsafe_skip_ca_verification;
        }
        if let Some(f) = &cfg.discovery.file {
            self.discovery_file = Some(f.kube_config_path.clone().into());
        }
        if !cfg.discovery.tls_bootstrap_token.is_empty() {
            self.token = Some(cfg.discovery.tls_bootstrap_token.clone());
        }
        if let Some(cp) = &cfg.control_plane {
            self.control_plane = true;
            self.certificate_key = non_empty(&cp.certificate_key);
            let a = &cp.local_api_endpoint;
            self.apiserver_advertise_address = non_empty(&a.advertise_address);
            self.apiserver_bind_port = (a.bind_port != 0).then_some(a.bind_port as u16);
        }
        self.skip_phases.extend(cfg.skip_phases.iter().cloned());
        self.dry_run |= cfg.dry_run;
    }

    /// Everything a join can be told wrong, found before anything is fetched or written.
    pub fn check(mut self) -> Result<JoinRequest, BadInput> {
        let mut parts = FileParts::default();
        let mut discovery_timeout = DISCOVERY_TIMEOUT;
        if let Some(path) = self.config.clone() {
            let file = read_file(&path)?;
            let mixed = self.mixed_with_config();
            if !mixed.is_empty() || self.endpoint.is_some() {
                return Err(BadInput(format!(
                    "{}: can not mix --config with the endpoint argument or --{}",
                    path.display(),
                    mixed.join(", --")
                )));
            }
            self.fill_from(&file);
            discovery_timeout = file_discovery_timeout(&file)?.unwrap_or(DISCOVERY_TIMEOUT);
            parts = FileParts {
                node_registration: file.node_registration,
                timeouts: file.timeouts,
                patches: file.patches,
            };
        }
        let certificate_key = self
            .certificate_key
            .as_deref()
            .map(|k| {
                CertificateKey::parse(k).map_err(|e| BadInput(format!("--certificate-key: {e}")))
            })
            .transpose()?;
        if certificate_key.is_some() && !self.control_plane {
            return Err(BadInput(
                "--certificate-key is for control-plane joins (--control-plane)".into(),
            ));
        }
        let token = self.token.as_deref().ok_or_else(|| {
            BadInput("--token is required (the kubelet's TLS bootstrap needs it)".into())
        })?;
        let token = Token::parse(token).map_err(|e| BadInput(format!("--token: {e}")))?;
        let discovery = self.discovery()?;
        let control_plane = self.control_plane.then(|| ControlPlaneJoin {
            certificate_key,
            advertise_address: self.apiserver_advertise_address.clone(),
            bind_port: self.apiserver_bind_port.unwrap_or(6443),
        });
        Ok(JoinRequest {
            discovery,
            discovery_timeout,
            token,
            control_plane,
            node_name: self.node_name,
            cri_socket: self.cri_socket,
            skip_phases: self.skip_phases,
            ignore_preflight_errors: self.ignore_preflight_errors,
            dry_run: self.dry_run,
            file: parts,
        })
    }

    fn discovery(&self) -> Result<Discovery, BadInput> {
        let pins = self
            .discovery_token_ca_cert_hash
            .iter()
            .map(|p| parse_pin(p))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(file) = &self.discovery_file {
            return Ok(Discovery::File(file.clone()));
        }
        let Some(endpoint) = self.endpoint.clone() else {
            return Err(BadInput(
                "give the API server endpoint (host:port) or --discovery-file".into(),
            ));
        };
        let trust = match (pins.is_empty(), self.discovery_token_unsafe_skip_ca_verification) {
            (false, _) => Trust::Pins(pins),
            (true, true) => Trust::Unpinned,
            (true, false) => return Err(BadInput(
                "token discovery without --discovery-token-ca-cert-hash trusts whoever answers; give the hash (`kubeforge init` and `kubeforge token create --print-join-command` print it) or --discovery-token-unsafe-skip-ca-verification".into()
            )),
        };
        Ok(Discovery::Token { endpoint, trust })
    }
}

fn file_discovery_timeout(file: &JoinConfiguration) -> Result<Option<Duration>, BadInput> {
    file.timeouts
        .as_ref()
        .and_then(|t| t.get("discovery")?.as_str())
        .map(|t| {
            GoDuration::parse(t)
                .map(|d| d.0)
                .map_err(|e| BadInput(format!("timeouts.discovery: {e}")))
        })
        .transpose()
}

/// `sha256:<64 hex>`, the only pin form kubeadm accepts.
pub fn parse_pin(pin: &str) -> Result<String, BadInput> {
    match pin.split_once(':') {
        Some(("sha256", hex)) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
        }
        _ => Err(BadInput(format!(
            "--discovery-token-ca-cert-hash {pin:?}: expected sha256:<64 hex characters>"
        ))),
    }
}

impl JoinRequest {
    /// The joining node's InitConfiguration document: its registration, its API endpoint (a
    /// control-plane join), and the JoinConfiguration's timeouts and patches.
    fn init_document(&self) -> Mapping {
        let mut registration = match &self.file.node_registration {
            Some(Yaml::Mapping(m)) => m.clone(),
            _ => Mapping::new(),
        };
        match &self.node_name {
            Some(n) => {
                registration.insert("name".into(), n.clone().into());
            }
            None if !registration.contains_key("name") => {
                let hostname = crate::node::hostname().to_lowercase();
                registration.insert("name".into(), hostname.into());
            }
            None => {}
        }
        if let Some(socket) = &self.cri_socket {
            registration.insert("criSocket".into(), socket.clone().into());
        }
        let mut init = Mapping::new();
        init.insert("apiVersion".into(), "kubeadm.k8s.io/v1beta4".into());
        init.insert("kind".into(), "InitConfiguration".into());
        init.insert("nodeRegistration".into(), Yaml::Mapping(registration));
        if let Some(cp) = &self.control_plane {
            let mut endpoint = Mapping::new();
            if let Some(address) = &cp.advertise_address {
                endpoint.insert("advertiseAddress".into(), address.clone().into());
            }
            endpoint.insert("bindPort".into(), u64::from(cp.bind_port).into());
            init.insert("localAPIEndpoint".into(), Yaml::Mapping(endpoint));
        }
        for (key, value) in [
            ("timeouts", &self.file.timeouts),
            ("patches", &self.file.patches),
        ] {
            if let Some(v) = value {
                init.insert(key.into(), v.clone());
            }
        }
        init
    }

    /// The joining node's Config: the cluster's ClusterConfiguration and KubeletConfiguration as
    /// its control plane uploaded them, with this node's registration.
    pub fn node_config(
        &self,
        stored: &StoredConfig,
        kubernetes_dir: &Path,
    ) -> anyhow::Result<Config> {
        let init = serde_yaml::to_string(&Yaml::Mapping(self.init_document()))
            .expect("a mapping serializes");
        let mut text = format!("{init}---\n{}\n---\n{}", stored.cluster, stored.kubelet);
        if let Some(endpoint) = stored
            .endpoint
            .as_ref()
            .filter(|_| self.control_plane.is_some())
        {
            text.push_str(&format!("\n---\n{endpoint}"));
        }
        let mut cfg = super::load_str(
            &text,
            "the cluster's kube-system/kubeadm-config, kubelet-config and kubeforge-endpoint",
            &Default::default(),
            kubernetes_dir,
        )?;
        if self.control_plane.is_some() && cfg.cluster.control_plane_endpoint.is_empty() {
            anyhow::bail!("the cluster has no controlPlaneEndpoint: a second control-plane node needs a stable endpoint for every node to reach the API servers through (set it in the ClusterConfiguration, see kubeadm's docs on high availability)");
        }
        cfg.init.skip_phases = self.skip_phases.clone();
        cfg.init.node_registration.ignore_preflight_errors = self.ignore_preflight_errors.clone();
        cfg.init.dry_run = self.dry_run;
        Ok(cfg)
    }
}

/// The configuration documents a cluster keeps for joining nodes.
pub struct StoredConfig {
    pub cluster: String,
    pub kubelet: String,
    /// kubeforge's ControlPlaneEndpoint document, when the cluster has the balancers.
    pub endpoint: Option<String>,
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
        let file = read_file(&path).unwrap();
        let mut options = JoinOptions::default();
        options.fill_from(&file);
        assert_eq!(options.endpoint.as_deref(), Some("10.0.0.5:6443"));
        assert_eq!(options.token.as_deref(), Some("abcdef.0123456789abcdef"));
        assert_eq!(
            file_discovery_timeout(&file).unwrap(),
            Some(Duration::from_secs(90))
        );
        let args = &file.node_registration.unwrap()["kubeletExtraArgs"];
        assert_eq!(args[0]["name"].as_str(), Some("node-ip"));
        assert_eq!(args[1]["value"].as_str(), Some("2"));
        std::fs::write(
            &path,
            "apiVersion: kubeadm.k8s.io/v1beta4\nkind: JoinConfiguration\nbogus: 1\n",
        )
        .unwrap();
        let e = read_file(&path).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn pins_are_checked_for_form() {
        assert!(parse_pin(&format!("sha256:{}", "AB".repeat(32))).is_ok());
        assert!(parse_pin("sha256:abc").is_err());
        assert!(parse_pin(&format!("md5:{}", "ab".repeat(32))).is_err());
    }
}

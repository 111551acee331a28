//! `kubeforge join`'s input (contract 7): kubeadm's flags or its JoinConfiguration (v1beta4,
//! v1beta3 converted), checked before anything is fetched or written; and the joining node's
//! Config, built from what its cluster's control plane uploaded, so that a joining node's
//! kubelet files are the ones its cluster uses.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml::{Mapping, Value as Yaml};

use super::documents::{self, typed, Origin};
use super::{
    CertificateKey, Config, ConfigError, NodeRegistrationOptions, Patches, Timeouts, Token,
};
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
    node_registration: Option<NodeRegistrationOptions>,
    timeouts: Option<Timeouts>,
    patches: Option<Patches>,
}

/// kubeadm's v1beta4 JoinConfiguration: discovery and the control-plane fields are kubeforge's to
/// read; nodeRegistration, timeouts and patches go on to the node's configuration as they are
/// (checked there like an InitConfiguration's).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JoinConfiguration {
    /// Accepted for kubeadm's files; the CA goes to certificatesDir/ca.crt as with kubeadm's default.
    #[serde(default)]
    #[allow(dead_code)]
    ca_cert_path: String,
    #[serde(default)]
    discovery: DiscoveryConfig,
    #[serde(default)]
    node_registration: Option<NodeRegistrationOptions>,
    #[serde(default)]
    control_plane: Option<JoinControlPlane>,
    #[serde(default)]
    skip_phases: Vec<String>,
    #[serde(default)]
    patches: Option<Patches>,
    #[serde(default)]
    timeouts: Option<Timeouts>,
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
    #[serde(default, rename = "unsafeSkipCAVerification")]
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

/// The JoinConfiguration among the documents of `text` (v1beta3 converted), typed; and where
/// its fields are, for the errors found in them later.
fn parse(text: &str, file: &str) -> Result<(Origin, JoinConfiguration), ConfigError> {
    let mut origin = Origin::new(file, text);
    let document = documents::split(&origin, text)?
        .into_iter()
        .find(|d| d.kind == KIND)
        .ok_or_else(|| {
            origin.doc_error(
                None,
                "kind",
                "no JoinConfiguration found in the supplied config",
            )
        })?;
    let doc = document.number;
    let v1beta3 = match document.api_version.as_str() {
        super::V1BETA4 => false,
        super::V1BETA3 => true,
        _ => {
            let message = "JoinConfiguration must be kubeadm.k8s.io/v1beta4 or v1beta3";
            return Err(origin.error_in(doc, "apiVersion", message));
        }
    };
    let mut map = document.fields();
    if v1beta3 {
        super::v1beta3::convert_join(&mut map);
    }
    origin.docs.push((KIND.into(), doc));
    let cfg = typed(&origin, doc, KIND, map)?;
    Ok((origin, cfg))
}

const KIND: &str = "JoinConfiguration";

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
    pub fn check(self) -> Result<JoinRequest, BadInput> {
        match self.config.clone() {
            None => self.checked(FileParts::default(), DISCOVERY_TIMEOUT),
            Some(path) => {
                let (file, text) = super::read_file(&path)?;
                self.check_file(&text, &file)
            }
        }
    }

    /// With `--config`: the JoinConfiguration in `text` (read from `file`), each of its values
    /// checked where it is written.
    pub fn check_file(mut self, text: &str, file: &str) -> Result<JoinRequest, BadInput> {
        let cfg = parse_checked(text, file)?;
        let mixed = self.mixed_with_config();
        if !mixed.is_empty() || self.endpoint.is_some() {
            return Err(BadInput(format!(
                "{file}: can not mix --config with the endpoint argument or --{}",
                mixed.join(", --")
            )));
        }
        self.fill_from(&cfg);
        let timeout = cfg
            .timeouts
            .as_ref()
            .map_or(DISCOVERY_TIMEOUT, |t| t.discovery.0);
        let parts = FileParts {
            node_registration: cfg.node_registration,
            timeouts: cfg.timeouts,
            patches: cfg.patches,
        };
        self.checked(parts, timeout)
    }

    /// The flags (or the file's values standing for them) checked and made a request.
    fn checked(
        self,
        file: FileParts,
        discovery_timeout: Duration,
    ) -> Result<JoinRequest, BadInput> {
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
            file,
        })
    }

    fn discovery(&self) -> Result<Discovery, BadInput> {
        let pins = self
            .discovery_token_ca_cert_hash
            .iter()
            .map(|p| {
                parse_pin(p).map_err(|e| BadInput(format!("--discovery-token-ca-cert-hash {e}")))
            })
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

/// A JoinConfiguration file's text read and its values checked, as `join --config` does first.
pub fn validate(text: &str, file: &str) -> Result<(), ConfigError> {
    parse_checked(text, file).map(drop)
}

fn parse_checked(text: &str, file: &str) -> Result<JoinConfiguration, ConfigError> {
    let (origin, cfg) = parse(text, file)?;
    check_values(&origin, &cfg)?;
    Ok(cfg)
}

/// The JoinConfiguration's own values, each error at its field and line (the ones standing for
/// flags are checked again as flags, which then cannot fail).
fn check_values(origin: &Origin, cfg: &JoinConfiguration) -> Result<(), ConfigError> {
    let at = |field: &str, m: String| origin.error(&format!("{KIND}.{field}"), m);
    let d = &cfg.discovery;
    let token = match (&d.bootstrap_token, &d.file) {
        (None, None) => return Err(at("discovery", "set bootstrapToken or file".into())),
        (Some(_), Some(_)) => {
            return Err(at(
                "discovery",
                "bootstrapToken and file are mutually exclusive".into(),
            ))
        }
        (Some(b), None) => {
            check_token_discovery(origin, b)?;
            &b.token
        }
        (None, Some(f)) if f.kube_config_path.is_empty() => {
            return Err(at("discovery.file.kubeConfigPath", "required".into()))
        }
        (None, Some(_)) => &String::new(),
    };
    if !d.tls_bootstrap_token.is_empty() {
        Token::parse(&d.tls_bootstrap_token).map_err(|e| at("discovery.tlsBootstrapToken", e))?;
    } else if token.is_empty() {
        let message = "the kubelet's TLS bootstrap needs a token: set tlsBootstrapToken or bootstrapToken.token";
        return Err(at("discovery", message.into()));
    }
    if let Some(cp) = &cfg.control_plane {
        if !cp.certificate_key.is_empty() {
            CertificateKey::parse(&cp.certificate_key)
                .map_err(|e| at("controlPlane.certificateKey", e))?;
        }
        let endpoint = &cp.local_api_endpoint;
        let address = &endpoint.advertise_address;
        if !address.is_empty() && address.parse::<std::net::IpAddr>().is_err() {
            let message = format!("{address:?} is not a valid IP address");
            return Err(at(
                "controlPlane.localAPIEndpoint.advertiseAddress",
                message,
            ));
        }
        let port = endpoint.bind_port;
        if !(0..=65535).contains(&port) {
            let message = format!("{port} is not a valid port (1-65535)");
            return Err(at("controlPlane.localAPIEndpoint.bindPort", message));
        }
    }
    if let Some(registration) = &cfg.node_registration {
        super::validate::registration(origin, KIND, registration)?;
    }
    Ok(())
}

fn check_token_discovery(origin: &Origin, b: &BootstrapTokenDiscovery) -> Result<(), ConfigError> {
    let at = |field: &str, m: String| {
        origin.error(&format!("{KIND}.discovery.bootstrapToken.{field}"), m)
    };
    if !b.token.is_empty() {
        Token::parse(&b.token).map_err(|e| at("token", e))?;
    }
    if b.api_server_endpoint.is_empty() {
        return Err(at(
            "apiServerEndpoint",
            "required for token discovery".into(),
        ));
    }
    for (i, pin) in b.ca_cert_hashes.iter().enumerate() {
        parse_pin(pin).map_err(|e| at(&format!("caCertHashes[{i}]"), e))?;
    }
    if b.ca_cert_hashes.is_empty() && !b.unsafe_skip_ca_verification {
        let message = "token discovery without caCertHashes trusts whoever answers; give the hash (`kubeforge init` and `kubeforge token create --print-join-command` print it) or set unsafeSkipCAVerification";
        return Err(at("caCertHashes", message.into()));
    }
    Ok(())
}

/// `sha256:<64 hex>`, the only pin form kubeadm accepts.
pub fn parse_pin(pin: &str) -> Result<String, String> {
    match pin.split_once(':') {
        Some(("sha256", hex)) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
        }
        _ => Err(format!("{pin:?}: expected sha256:<64 hex characters>")),
    }
}

fn to_yaml<T: serde::Serialize>(value: &T) -> Yaml {
    serde_yaml::to_value(value).expect("a config type serializes")
}

impl JoinRequest {
    /// The joining node's InitConfiguration document: its registration, its API endpoint (a
    /// control-plane join), and the JoinConfiguration's timeouts and patches.
    fn init_document(&self) -> Mapping {
        let mut registration = match self.file.node_registration.as_ref().map(to_yaml) {
            Some(Yaml::Mapping(m)) => m,
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
        if let Some(timeouts) = &self.file.timeouts {
            init.insert("timeouts".into(), to_yaml(timeouts));
        }
        if let Some(patches) = &self.file.patches {
            init.insert("patches".into(), to_yaml(patches));
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
        // Workers too: with `nodeLocal` they run a balancer of their own.
        if let Some(endpoint) = stored.endpoint.as_ref() {
            text.push_str(&format!("\n---\n{endpoint}"));
        }
        let security = super::security::stored_or_kubeadm(stored.security.as_deref());
        text.push_str(&format!("\n---\n{security}"));
        let mut cfg = super::load_str(
            &text,
            "the cluster's kube-system/kubeadm-config, kubelet-config, kubeforge-endpoint and kubeforge-security",
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
    /// kubeforge's Security document; none: the cluster keeps kubeadm's shape.
    pub security: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v1beta3_join_configuration_is_converted() {
        let text = "apiVersion: kubeadm.k8s.io/v1beta3
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
";
        let (_, file) = parse(text, "join.yaml").unwrap();
        let mut options = JoinOptions::default();
        options.fill_from(&file);
        assert_eq!(options.endpoint.as_deref(), Some("10.0.0.5:6443"));
        assert_eq!(options.token.as_deref(), Some("abcdef.0123456789abcdef"));
        assert_eq!(file.timeouts.unwrap().discovery.0, Duration::from_secs(90));
        let args = &file.node_registration.unwrap().kubelet_extra_args;
        assert_eq!(
            (args[0].name.as_str(), args[1].value.as_str()),
            ("node-ip", "2")
        );
        let bogus = "apiVersion: kubeadm.k8s.io/v1beta4\nkind: JoinConfiguration\nbogus: 1\n";
        let e = parse(bogus, "join.yaml").err().unwrap().to_string();
        assert!(
            e.starts_with("join.yaml:3:1: JoinConfiguration.bogus: "),
            "{e}"
        );
    }

    /// Every bad value of a JoinConfiguration is named with its file, field and line.
    #[test]
    fn bad_values_are_named_where_they_are_written() {
        let pin = format!("sha256:{}", "ab".repeat(32));
        let good = format!("apiVersion: kubeadm.k8s.io/v1beta4\nkind: JoinConfiguration\ndiscovery:\n  bootstrapToken:\n    apiServerEndpoint: 10.0.0.5:6443\n    token: abcdef.0123456789abcdef\n    caCertHashes: [\"{pin}\"]\n");
        assert!(JoinOptions::default().check_file(&good, "j.yaml").is_ok());
        for (change, expected) in [
            (
                ("token: abcdef.0123456789abcdef", "token: abcdef"),
                "j.yaml:6:5: JoinConfiguration.discovery.bootstrapToken.token: ",
            ),
            (
                (pin.as_str(), "sha256:00"),
                "j.yaml:7:20: JoinConfiguration.discovery.bootstrapToken.caCertHashes[0]: ",
            ),
            (
                ("    apiServerEndpoint: 10.0.0.5:6443\n", ""),
                "j.yaml:4:3: JoinConfiguration.discovery.bootstrapToken.apiServerEndpoint: ",
            ),
            (
                (
                    "discovery:",
                    "controlPlane:\n  localAPIEndpoint:\n    bindPort: 70000\ndiscovery:",
                ),
                "j.yaml:5:5: JoinConfiguration.controlPlane.localAPIEndpoint.bindPort: ",
            ),
            (
                (
                    "discovery:",
                    "nodeRegistration:\n  imagePullPolicy: Sometimes\ndiscovery:",
                ),
                "j.yaml:4:3: JoinConfiguration.nodeRegistration.imagePullPolicy: ",
            ),
            (
                (
                    "discovery:",
                    "timeouts:\n  discovery: 5 minutes\ndiscovery:",
                ),
                "j.yaml:4:3: JoinConfiguration.timeouts.discovery: ",
            ),
            (
                (good.as_str(), ""),
                "j.yaml:1:1: kind: no JoinConfiguration found",
            ),
            (
                ("JoinConfiguration", "ClusterConfiguration"),
                "j.yaml:1:1: kind: no JoinConfiguration found",
            ),
        ] {
            let text = good.replace(change.0, change.1);
            let e = JoinOptions::default()
                .check_file(&text, "j.yaml")
                .err()
                .unwrap()
                .to_string();
            assert!(e.starts_with(expected), "{e}\nfrom\n{text}");
        }
    }

    #[test]
    fn pins_are_checked_for_form() {
        assert!(parse_pin(&format!("sha256:{}", "AB".repeat(32))).is_ok());
        assert!(parse_pin("sha256:abc").is_err());
        assert!(parse_pin(&format!("md5:{}", "ab".repeat(32))).is_err());
    }
}

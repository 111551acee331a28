//! kubeadm's configuration files, unchanged: `kubeadm.k8s.io/v1beta4` (and `v1beta3`, converted)
//! InitConfiguration + ClusterConfiguration, KubeletConfiguration and KubeProxyConfiguration
//! carried through. Everything is parsed, defaulted and validated before anything is written;
//! every error names the file, the field path and the line:column.

mod duration;
mod net;
mod position;
mod types;
pub mod v1beta3;
mod validate;

pub use duration::GoDuration;
pub use net::Cidr;
pub use types::*;

use serde::Deserialize;
use std::net::IpAddr;
use std::path::Path;

/// Used when neither the config nor `--kubernetes-version` names one: the newest supported minor.
pub const DEFAULT_KUBERNETES_VERSION: &str = "v1.37.0";
/// The window of control-plane versions kubeforge deploys (inclusive minors).
pub const SUPPORTED_MINORS: (u32, u32) = (33, 37);
pub const SUPPORTED_VERSIONS: &str = "v1.33–v1.37";

const V1BETA4: &str = "kubeadm.k8s.io/v1beta4";
const V1BETA3: &str = "kubeadm.k8s.io/v1beta3";

/// Everything `init` needs, fully defaulted and validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub init: InitConfiguration,
    pub cluster: ClusterConfiguration,
    /// The KubeletConfiguration document, passed through as written.
    pub kubelet: Option<serde_yaml::Value>,
    /// The KubeProxyConfiguration document, passed through as written.
    pub kube_proxy: Option<serde_yaml::Value>,
    /// `--upload-certs`.
    pub upload_certs: bool,
    /// A control-plane join's `--initial-cluster` (every member, this node a learner); its etcd
    /// then starts with `--initial-cluster-state=existing`.
    pub etcd_initial_cluster: Option<String>,
}

/// `kubeforge init`'s flags (kubeadm's names); None/empty means not given.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub kubernetes_version: Option<String>,
    pub advertise_address: Option<String>,
    pub bind_port: Option<u16>,
    pub control_plane_endpoint: Option<String>,
    pub pod_network_cidr: Option<String>,
    pub service_cidr: Option<String>,
    pub service_dns_domain: Option<String>,
    pub node_name: Option<String>,
    pub cert_dir: Option<String>,
    pub image_repository: Option<String>,
    pub upload_certs: bool,
    pub certificate_key: Option<String>,
    pub token: Option<String>,
    pub token_ttl: Option<String>,
    pub skip_phases: Vec<String>,
    pub ignore_preflight_errors: Vec<String>,
    pub dry_run: bool,
    pub patches: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub field: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// `path`: None = no `--config` (defaults and flags only); `-` = standard input.
pub fn load(
    path: Option<&Path>,
    overrides: &Overrides,
    kubernetes_dir: &Path,
) -> Result<Config, ConfigError> {
    match path {
        None => load_str("", "<defaults>", overrides, kubernetes_dir),
        Some(p) if p == Path::new("-") => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|e| {
                ConfigError {
                    file: "<stdin>".into(),
                    field: String::new(),
                    line: None,
                    column: None,
                    message: format!("reading standard input: {e}"),
                }
            })?;
            load_str(&text, "<stdin>", overrides, kubernetes_dir)
        }
        Some(p) => {
            let file = p.display().to_string();
            let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                file: file.clone(),
                field: String::new(),
                line: None,
                column: None,
                message: format!("cannot read the config file: {e}"),
            })?;
            load_str(&text, &file, overrides, kubernetes_dir)
        }
    }
}

/// Where each part of the config came from, so later errors can point at it.
pub(crate) struct Origin {
    pub file: String,
    pub index: position::Index,
    pub init_doc: Option<usize>,
    pub cluster_doc: Option<usize>,
    /// Fields set by flags: dotted field path (with kind prefix) → flag name.
    pub flags: Vec<(String, &'static str)>,
}

impl Origin {
    pub fn error(&self, field: &str, message: impl Into<String>) -> ConfigError {
        if let Some((_, flag)) = self.flags.iter().find(|(f, _)| f == field) {
            return ConfigError {
                file: format!("flag --{flag}"),
                field: field.into(),
                line: None,
                column: None,
                message: message.into(),
            };
        }
        let (doc, rest) = match field.split_once('.') {
            Some(("InitConfiguration", rest)) => (self.init_doc, rest),
            Some(("ClusterConfiguration", rest)) => (self.cluster_doc, rest),
            _ => (None, field),
        };
        let pos = doc.and_then(|d| self.index.find(d, rest));
        ConfigError {
            file: self.file.clone(),
            field: field.into(),
            line: pos.map(|p| p.0),
            column: pos.map(|p| p.1),
            message: message.into(),
        }
    }
}

pub fn load_str(
    text: &str,
    source: &str,
    overrides: &Overrides,
    kubernetes_dir: &Path,
) -> Result<Config, ConfigError> {
    let mut origin = Origin {
        file: source.to_string(),
        index: position::Index::build(text),
        init_doc: None,
        cluster_doc: None,
        flags: Vec::new(),
    };
    let from_file = !text.trim().is_empty() || source != "<defaults>";
    let mut init: Option<InitConfiguration> = None;
    let mut cluster: Option<ClusterConfiguration> = None;
    let mut kubelet = None;
    let mut kube_proxy = None;
    let mut timeout_for_control_plane = None;

    for (doc, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(de).map_err(|e| yaml_error(&origin, &e))?;
        let mut map = match value {
            serde_yaml::Value::Null => continue,
            serde_yaml::Value::Mapping(m) => m,
            _ => {
                return Err(doc_error(
                    &origin,
                    doc,
                    "a document must be a YAML mapping with apiVersion and kind",
                ))
            }
        };
        let get = |map: &serde_yaml::Mapping, k: &str| {
            map.get(k).and_then(|v| v.as_str()).map(str::to_string)
        };
        let api_version = get(&map, "apiVersion")
            .ok_or_else(|| doc_error(&origin, doc, "the document has no apiVersion"))?;
        let kind =
            get(&map, "kind").ok_or_else(|| doc_error(&origin, doc, "the document has no kind"))?;
        match (api_version.as_str(), kind.as_str()) {
            (V1BETA4 | V1BETA3, "InitConfiguration") => {
                if init.is_some() {
                    return Err(doc_error(&origin, doc, "more than one InitConfiguration"));
                }
                map.remove("apiVersion");
                map.remove("kind");
                if api_version == V1BETA3 {
                    v1beta3::convert_init(&mut map);
                }
                origin.init_doc = Some(doc);
                init = Some(typed(&origin, doc, "InitConfiguration", map)?);
            }
            (V1BETA4 | V1BETA3, "ClusterConfiguration") => {
                if cluster.is_some() {
                    return Err(doc_error(
                        &origin,
                        doc,
                        "more than one ClusterConfiguration",
                    ));
                }
                map.remove("apiVersion");
                map.remove("kind");
                if api_version == V1BETA3 {
                    timeout_for_control_plane = v1beta3::convert_cluster(&mut map);
                }
                origin.cluster_doc = Some(doc);
                cluster = Some(typed(&origin, doc, "ClusterConfiguration", map)?);
            }
            (
                V1BETA4 | V1BETA3,
                "JoinConfiguration" | "ResetConfiguration" | "UpgradeConfiguration",
            ) => {}
            ("kubelet.config.k8s.io/v1beta1", "KubeletConfiguration") => {
                kubelet = Some(serde_yaml::Value::Mapping(map));
            }
            ("kubeproxy.config.k8s.io/v1alpha1", "KubeProxyConfiguration") => {
                kube_proxy = Some(serde_yaml::Value::Mapping(map));
            }
            (av, k) => {
                let known = [
                    V1BETA4,
                    V1BETA3,
                    "kubelet.config.k8s.io/v1beta1",
                    "kubeproxy.config.k8s.io/v1alpha1",
                ];
                let msg = if known.contains(&av) {
                    format!("unknown kind {k:?} for apiVersion {av}")
                } else {
                    format!(
                        "unsupported apiVersion {av:?} (kind {k}); use kubeadm.k8s.io/v1beta4 or v1beta3, kubelet.config.k8s.io/v1beta1, kubeproxy.config.k8s.io/v1alpha1"
                    )
                };
                let pos = origin.index.find(doc, "apiVersion");
                return Err(ConfigError {
                    file: origin.file.clone(),
                    field: "apiVersion".into(),
                    line: pos.map(|p| p.0),
                    column: pos.map(|p| p.1),
                    message: msg,
                });
            }
        }
    }
    let mut init = init.unwrap_or_default();
    // Through serde, so that a missing document gets the same field defaults as an empty one.
    let mut cluster = match cluster {
        Some(c) => c,
        None => serde_yaml::from_value(serde_yaml::Value::Mapping(Default::default()))
            .expect("all fields default"),
    };
    if let Some(t) = timeout_for_control_plane {
        init.timeouts.control_plane_component_health_check = t;
    }

    apply_overrides(&mut origin, &mut init, &mut cluster, overrides, from_file)?;
    validate::defaults(&mut init, &mut cluster, kubernetes_dir);
    validate::validate(&origin, &init, &cluster)?;
    Ok(Config {
        init,
        cluster,
        kubelet,
        kube_proxy,
        upload_certs: overrides.upload_certs,
        etcd_initial_cluster: None,
    })
}

fn typed<T: serde::de::DeserializeOwned>(
    origin: &Origin,
    doc: usize,
    kind: &str,
    map: serde_yaml::Mapping,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(serde_yaml::Value::Mapping(map)).map_err(|e| {
        let mut path = e.path().to_string();
        if path == "." {
            path.clear();
        }
        let inner = e.into_inner().to_string();
        // An unknown field is reported at its parent; point at the field itself.
        if let Some(name) = inner
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next())
        {
            if path.is_empty() {
                path = name.to_string();
            } else if !path.ends_with(name) {
                path = format!("{path}.{name}");
            }
        }
        let pos = origin.index.find(doc, &path);
        ConfigError {
            file: origin.file.clone(),
            field: if path.is_empty() {
                kind.to_string()
            } else {
                format!("{kind}.{path}")
            },
            line: pos.map(|p| p.0),
            column: pos.map(|p| p.1),
            message: inner,
        }
    })
}

fn yaml_error(origin: &Origin, e: &serde_yaml::Error) -> ConfigError {
    ConfigError {
        file: origin.file.clone(),
        field: String::new(),
        line: e.location().map(|l| l.line()),
        column: e.location().map(|l| l.column()),
        message: format!("invalid YAML: {e}"),
    }
}

fn doc_error(origin: &Origin, doc: usize, message: &str) -> ConfigError {
    let pos = origin.index.find(doc, "");
    ConfigError {
        file: origin.file.clone(),
        field: String::new(),
        line: pos.map(|p| p.0),
        column: pos.map(|p| p.1),
        message: message.into(),
    }
}

/// Flags that kubeadm allows next to `--config` (its ValidateMixedArguments); every other flag
/// given together with `--config` is an error.
const ALLOWED_WITH_CONFIG: &[&str] = &[
    "ignore-preflight-errors",
    "dry-run",
    "node-name",
    "upload-certs",
    "skip-phases",
];

fn apply_overrides(
    origin: &mut Origin,
    init: &mut InitConfiguration,
    cluster: &mut ClusterConfiguration,
    o: &Overrides,
    from_file: bool,
) -> Result<(), ConfigError> {
    let given: Vec<&'static str> = [
        ("kubernetes-version", o.kubernetes_version.is_some()),
        ("apiserver-advertise-address", o.advertise_address.is_some()),
        ("apiserver-bind-port", o.bind_port.is_some()),
        ("control-plane-endpoint", o.control_plane_endpoint.is_some()),
        ("pod-network-cidr", o.pod_network_cidr.is_some()),
        ("service-cidr", o.service_cidr.is_some()),
        ("service-dns-domain", o.service_dns_domain.is_some()),
        ("node-name", o.node_name.is_some()),
        ("cert-dir", o.cert_dir.is_some()),
        ("image-repository", o.image_repository.is_some()),
        ("certificate-key", o.certificate_key.is_some()),
        ("token", o.token.is_some()),
        ("token-ttl", o.token_ttl.is_some()),
        ("patches", o.patches.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if from_file {
        let mixed: Vec<_> = given
            .iter()
            .filter(|f| !ALLOWED_WITH_CONFIG.contains(f))
            .copied()
            .collect();
        if !mixed.is_empty() {
            return Err(ConfigError {
                file: origin.file.clone(),
                field: mixed
                    .iter()
                    .map(|f| format!("--{f}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                line: None,
                column: None,
                message: format!(
                    "can not mix '--config' with arguments [{}]",
                    mixed.join(" ")
                ),
            });
        }
    }
    let mut set = |field: &str, flag: &'static str| origin.flags.push((field.to_string(), flag));
    if let Some(v) = &o.kubernetes_version {
        cluster.kubernetes_version = v.clone();
        set(
            "ClusterConfiguration.kubernetesVersion",
            "kubernetes-version",
        );
    }
    if let Some(v) = &o.advertise_address {
        init.local_api_endpoint.advertise_address = v.clone();
        set(
            "InitConfiguration.localAPIEndpoint.advertiseAddress",
            "apiserver-advertise-address",
        );
    }
    if let Some(v) = o.bind_port {
        init.local_api_endpoint.bind_port = i32::from(v);
        set(
            "InitConfiguration.localAPIEndpoint.bindPort",
            "apiserver-bind-port",
        );
    }
    if let Some(v) = &o.control_plane_endpoint {
        cluster.control_plane_endpoint = v.clone();
        set(
            "ClusterConfiguration.controlPlaneEndpoint",
            "control-plane-endpoint",
        );
    }
    if let Some(v) = &o.pod_network_cidr {
        cluster.networking.pod_subnet = v.clone();
        set(
            "ClusterConfiguration.networking.podSubnet",
            "pod-network-cidr",
        );
    }
    if let Some(v) = &o.service_cidr {
        cluster.networking.service_subnet = v.clone();
        set(
            "ClusterConfiguration.networking.serviceSubnet",
            "service-cidr",
        );
    }
    if let Some(v) = &o.service_dns_domain {
        cluster.networking.dns_domain = v.clone();
        set(
            "ClusterConfiguration.networking.dnsDomain",
            "service-dns-domain",
        );
    }
    if let Some(v) = &o.node_name {
        init.node_registration.name = v.clone();
        set("InitConfiguration.nodeRegistration.name", "node-name");
    }
    if let Some(v) = &o.cert_dir {
        cluster.certificates_dir = v.clone();
        set("ClusterConfiguration.certificatesDir", "cert-dir");
    }
    if let Some(v) = &o.image_repository {
        cluster.image_repository = v.clone();
        set("ClusterConfiguration.imageRepository", "image-repository");
    }
    if let Some(v) = &o.certificate_key {
        init.certificate_key = v.clone();
        set("InitConfiguration.certificateKey", "certificate-key");
    }
    if o.token.is_some() || o.token_ttl.is_some() {
        if init.bootstrap_tokens.is_empty() {
            init.bootstrap_tokens.push(BootstrapToken::default());
        }
        if let Some(v) = &o.token {
            init.bootstrap_tokens[0].token = v.clone();
            set("InitConfiguration.bootstrapTokens[0].token", "token");
        }
        if let Some(v) = &o.token_ttl {
            let ttl = GoDuration::parse(v)
                .map_err(|m| origin.error("InitConfiguration.bootstrapTokens[0].ttl", m))?;
            init.bootstrap_tokens[0].ttl = Some(ttl);
        }
    }
    if let Some(v) = &o.patches {
        init.patches = Some(Patches {
            directory: v.clone(),
        });
    }
    for p in &o.skip_phases {
        if !init.skip_phases.contains(p) {
            init.skip_phases.push(p.clone());
        }
    }
    for p in &o.ignore_preflight_errors {
        if !init.node_registration.ignore_preflight_errors.contains(p) {
            init.node_registration
                .ignore_preflight_errors
                .push(p.clone());
        }
    }
    init.dry_run |= o.dry_run;
    Ok(())
}

impl ClusterConfiguration {
    fn first_service_cidr(&self) -> Cidr {
        self.networking
            .service_subnet
            .split(',')
            .next()
            .and_then(Cidr::parse)
            .expect("validated")
    }

    /// The `kubernetes` Service's IP: the first address of the first service CIDR.
    pub fn service_vip(&self) -> IpAddr {
        self.first_service_cidr().nth(1)
    }

    /// The cluster DNS IP: the 10th address of the first service CIDR.
    pub fn dns_ip(&self) -> IpAddr {
        self.first_service_cidr().nth(10)
    }

    pub fn is_external_etcd(&self) -> bool {
        self.etcd.external.is_some()
    }
}

fn url_host(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("[{host}]"),
        _ => host.to_string(),
    }
}

/// Splits `host[:port]`, `[v6]:port` or a bare IPv6 address.
pub fn split_host_port(s: &str) -> (String, Option<String>) {
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((host, after)) = rest.split_once(']') {
            return (
                host.to_string(),
                after.strip_prefix(':').map(str::to_string),
            );
        }
    }
    if s.parse::<IpAddr>().is_ok() {
        return (s.to_string(), None);
    }
    match s.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), Some(p.to_string())),
        None => (s.to_string(), None),
    }
}

impl Config {
    pub fn bind_port(&self) -> u16 {
        u16::try_from(self.init.local_api_endpoint.bind_port).expect("validated")
    }

    /// `https://<advertiseAddress>:<bindPort>`.
    pub fn local_endpoint_url(&self) -> String {
        format!(
            "https://{}:{}",
            url_host(&self.init.local_api_endpoint.advertise_address),
            self.bind_port()
        )
    }

    /// controlPlaneEndpoint as a URL (its port wins over bindPort), else the local endpoint.
    pub fn control_plane_endpoint_url(&self) -> String {
        if self.cluster.control_plane_endpoint.is_empty() {
            return self.local_endpoint_url();
        }
        let (host, port) = split_host_port(&self.cluster.control_plane_endpoint);
        let port = port.unwrap_or_else(|| self.bind_port().to_string());
        format!("https://{}:{port}", url_host(&host))
    }

    pub fn control_plane_endpoint_host(&self) -> Option<String> {
        (!self.cluster.control_plane_endpoint.is_empty())
            .then(|| split_host_port(&self.cluster.control_plane_endpoint).0)
    }
}

/// `kubeforge config print init-defaults`: kubeadm's own defaults document, which kubeadm and
/// kubeforge both accept.
pub fn print_init_defaults() -> String {
    let minor = DEFAULT_KUBERNETES_VERSION
        .trim_start_matches('v')
        .rsplit_once('.')
        .map(|(m, _)| m)
        .expect("DEFAULT_KUBERNETES_VERSION is x.y.z");
    include_str!("init-defaults.yaml").replace("{{version}}", &format!("{minor}.0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        load_str(
            text,
            "t.yaml",
            &Overrides::default(),
            Path::new("/etc/kubernetes"),
        )
        .unwrap()
    }

    #[test]
    fn endpoints() {
        let c = cfg("apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\nlocalAPIEndpoint:\n  advertiseAddress: 192.0.2.2\n");
        assert_eq!(c.local_endpoint_url(), "https://192.0.2.2:6443");
        assert_eq!(c.control_plane_endpoint_url(), "https://192.0.2.2:6443");
        let c = cfg("apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\nlocalAPIEndpoint:\n  advertiseAddress: fd00::2\n  bindPort: 7443\n---\napiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\ncontrolPlaneEndpoint: cp.example.com\n");
        assert_eq!(c.local_endpoint_url(), "https://[fd00::2]:7443");
        assert_eq!(
            c.control_plane_endpoint_url(),
            "https://cp.example.com:7443"
        );
        assert_eq!(
            c.control_plane_endpoint_host().as_deref(),
            Some("cp.example.com")
        );
        let c = cfg("apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\ncontrolPlaneEndpoint: \"[fd00::9]:8443\"\n---\napiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\nlocalAPIEndpoint:\n  advertiseAddress: 192.0.2.2\n");
        assert_eq!(c.control_plane_endpoint_url(), "https://[fd00::9]:8443");
        assert_eq!(c.cluster.service_vip().to_string(), "10.96.0.1");
        assert_eq!(c.cluster.dns_ip().to_string(), "10.96.0.10");
    }

    #[test]
    fn print_init_defaults_round_trips() {
        let c = load_str(
            &print_init_defaults(),
            "-",
            &Overrides::default(),
            Path::new("/etc/kubernetes"),
        )
        .unwrap();
        assert_eq!(c.cluster.kubernetes_version, "v1.37.0");
        assert_eq!(c.init.bootstrap_tokens[0].token, "abcdef.0123456789abcdef");
    }
}

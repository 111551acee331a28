//! kubeadm's configuration files, unchanged: `kubeadm.k8s.io/v1beta4` (and `v1beta3`, converted)
//! InitConfiguration + ClusterConfiguration, KubeletConfiguration and KubeProxyConfiguration
//! carried through. Everything is parsed, defaulted and validated before anything is written;
//! every error names the file, the field path and the line:column.

mod documents;
mod duration;
pub mod endpoint;
pub mod join;
pub mod net;
mod overrides;
pub(crate) mod position;
pub mod security;
mod token;
mod types;
pub mod upgrade;
pub mod v1beta3;
mod validate;

pub use duration::GoDuration;
pub use net::Cidr;
pub use overrides::{Flag, Overrides};
pub use token::{is_token_group, is_token_id, CertificateKey, Token, USAGES};
pub use types::*;

use documents::{typed, Origin};
use std::net::IpAddr;
use std::path::Path;

/// Used when neither the config nor `--kubernetes-version` names one: the newest supported minor.
pub const DEFAULT_KUBERNETES_VERSION: &str = "v1.37.0";
/// The window of control-plane versions kubeforge deploys (inclusive minors).
pub const SUPPORTED_MINORS: (u32, u32) = (33, 37);
pub const SUPPORTED_VERSIONS: &str = "v1.33–v1.37";

pub(crate) const V1BETA4: &str = "kubeadm.k8s.io/v1beta4";
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
    /// kubeforge's own `ControlPlaneEndpoint` document: the balancers to run (docs/ha-endpoint.md).
    pub endpoint: Option<endpoint::ControlPlaneEndpoint>,
    /// kubeforge's own `Security` document: hardened defaults or kubeadm's (docs/security.md).
    pub security: security::Security,
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
        None => load_documents("", "<defaults>", false, overrides, kubernetes_dir),
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
            let (file, text) = read_file(p)?;
            load_str(&text, &file, overrides, kubernetes_dir)
        }
    }
}

/// The documents of a config file, each typed or passed through.
#[derive(Default)]
struct Documents {
    init: Option<InitConfiguration>,
    cluster: Option<ClusterConfiguration>,
    kubelet: Option<serde_yaml::Value>,
    kube_proxy: Option<serde_yaml::Value>,
    endpoint: Option<endpoint::ControlPlaneEndpoint>,
    security: Option<security::Security>,
    /// v1beta3's `timeoutForControlPlane`, which v1beta4 moved into the InitConfiguration.
    timeout_for_control_plane: Option<GoDuration>,
}

/// The config in `text`, read from `source` (a file name for errors): kubeadm's rule, an
/// InitConfiguration or a ClusterConfiguration (or both) must be among its documents.
pub fn load_str(
    text: &str,
    source: &str,
    overrides: &Overrides,
    kubernetes_dir: &Path,
) -> Result<Config, ConfigError> {
    load_documents(text, source, true, overrides, kubernetes_dir)
}

fn load_documents(
    text: &str,
    source: &str,
    from_file: bool,
    overrides: &Overrides,
    kubernetes_dir: &Path,
) -> Result<Config, ConfigError> {
    let mut origin = Origin::new(source, text);
    let mut docs = Documents::default();
    for document in documents::split(&origin, text)? {
        read_document(&mut origin, &mut docs, document)?;
    }
    if from_file && docs.init.is_none() && docs.cluster.is_none() {
        return Err(origin.doc_error(
            None,
            "kind",
            "no InitConfiguration or ClusterConfiguration kind was found in the YAML file",
        ));
    }
    let mut init = docs.init.unwrap_or_default();
    // Through serde, so that a missing document gets the same field defaults as an empty one.
    let mut cluster = match docs.cluster {
        Some(c) => c,
        None => serde_yaml::from_value(serde_yaml::Value::Mapping(Default::default()))
            .expect("all fields default"),
    };
    if let Some(t) = docs.timeout_for_control_plane {
        init.timeouts.control_plane_component_health_check = t;
    }
    overrides.apply(&mut origin, &mut init, &mut cluster, from_file)?;
    validate::paths(&origin, &cluster)?;
    validate::defaults(&mut init, &mut cluster, kubernetes_dir);
    validate::validate(&origin, &init, &cluster)?;
    if let Some(ep) = &docs.endpoint {
        endpoint::validate(&origin, ep, &init, &cluster)?;
    }
    Ok(Config {
        init,
        cluster,
        kubelet: docs.kubelet,
        kube_proxy: docs.kube_proxy,
        upload_certs: overrides.upload_certs,
        endpoint: docs.endpoint,
        security: docs.security.unwrap_or_default(),
    })
}

const KUBELET_V1BETA1: &str = "kubelet.config.k8s.io/v1beta1";
const KUBE_PROXY_V1ALPHA1: &str = "kubeproxy.config.k8s.io/v1alpha1";

/// One document into `docs`, by its apiVersion and kind.
fn read_document(
    origin: &mut Origin,
    docs: &mut Documents,
    document: documents::Document,
) -> Result<(), ConfigError> {
    let (doc, api_version, kind) = (
        document.number,
        document.api_version.clone(),
        document.kind.clone(),
    );
    let v1beta3 = api_version == V1BETA3;
    match (api_version.as_str(), kind.as_str()) {
        (V1BETA4 | V1BETA3, "InitConfiguration") => {
            let mut map = document.fields();
            if v1beta3 {
                v1beta3::convert_init(&mut map);
            }
            origin.docs.push((kind.clone(), doc));
            docs.init = Some(typed(origin, doc, &kind, map)?);
        }
        (V1BETA4 | V1BETA3, "ClusterConfiguration") => {
            let mut map = document.fields();
            origin.docs.push((kind.clone(), doc));
            if v1beta3 {
                docs.timeout_for_control_plane =
                    v1beta3::convert_cluster(&mut map).map_err(|m| {
                        origin.error("ClusterConfiguration.apiServer.timeoutForControlPlane", m)
                    })?;
            }
            docs.cluster = Some(typed(origin, doc, &kind, map)?);
        }
        (
            V1BETA4 | V1BETA3,
            "JoinConfiguration" | "ResetConfiguration" | "UpgradeConfiguration",
        ) => {}
        (KUBELET_V1BETA1, "KubeletConfiguration") => {
            docs.kubelet = Some(serde_yaml::Value::Mapping(document.body));
        }
        (KUBE_PROXY_V1ALPHA1, "KubeProxyConfiguration") => {
            docs.kube_proxy = Some(serde_yaml::Value::Mapping(document.body));
        }
        (endpoint::API_VERSION, endpoint::KIND) => {
            origin.docs.push((kind.clone(), doc));
            docs.endpoint = Some(typed(origin, doc, &kind, document.fields())?);
        }
        (endpoint::API_VERSION, security::KIND) => {
            origin.docs.push((kind.clone(), doc));
            docs.security = Some(typed(origin, doc, &kind, document.fields())?);
        }
        (av, k) => return Err(unknown_kind(origin, doc, av, k)),
    }
    Ok(())
}

fn unknown_kind(origin: &Origin, doc: usize, api_version: &str, kind: &str) -> ConfigError {
    let known = [
        V1BETA4,
        V1BETA3,
        KUBELET_V1BETA1,
        KUBE_PROXY_V1ALPHA1,
        endpoint::API_VERSION,
    ];
    let message = if known.contains(&api_version) {
        format!("unknown kind {kind:?} for apiVersion {api_version}")
    } else {
        format!(
            "unsupported apiVersion {api_version:?} (kind {kind}); use kubeadm.k8s.io/v1beta4 or v1beta3, kubelet.config.k8s.io/v1beta1, kubeproxy.config.k8s.io/v1alpha1, kubeforge.io/v1alpha1"
        )
    };
    origin.error_in(doc, "apiVersion", &message)
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

/// (major, minor, patch) of a `v1.35.6` / `3.6.6-0` style version.
pub fn semver(v: &str) -> Option<(u32, u32, u32)> {
    let core = v.trim_start_matches('v').split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

impl Config {
    /// The minor of `kubernetesVersion` (validated, so always there).
    pub fn kubernetes_minor(&self) -> u32 {
        semver(&self.cluster.kubernetes_version)
            .map(|v| v.1)
            .expect("validated")
    }

    pub fn bind_port(&self) -> u16 {
        u16::try_from(self.init.local_api_endpoint.bind_port).expect("validated")
    }

    /// `https://<advertiseAddress>:<bindPort>`.
    pub fn local_endpoint_url(&self) -> String {
        format!(
            "https://{}:{}",
            net::url_host(&self.init.local_api_endpoint.advertise_address),
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
        format!("https://{}:{port}", net::url_host(&host))
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

/// A config file's name (for errors) and text; an unreadable one is a `ConfigError` naming it.
pub fn read_file(path: &Path) -> Result<(String, String), ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        field: String::new(),
        line: None,
        column: None,
        message: format!("cannot read the config file: {e}"),
    })?;
    Ok((file, text))
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

//! kubeadm init's flags that set config fields, in one table: each flag's name, the field it
//! sets, and whether kubeadm allows it beside `--config`.

use super::{
    BootstrapToken, ClusterConfiguration, ConfigError, GoDuration, InitConfiguration, Origin,
    Patches,
};

/// A flag that sets a field of the InitConfiguration or ClusterConfiguration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    KubernetesVersion,
    ApiserverAdvertiseAddress,
    ApiserverBindPort,
    ControlPlaneEndpoint,
    PodNetworkCidr,
    ServiceCidr,
    ServiceDnsDomain,
    NodeName,
    CertDir,
    ImageRepository,
    CertificateKey,
    Token,
    TokenTtl,
    Patches,
    CriSocket,
}

/// (flag, kubeadm's name, the field it sets), in kubeadm's order.
const FLAGS: &[(Flag, &str, &str)] = &[
    (
        Flag::KubernetesVersion,
        "kubernetes-version",
        "ClusterConfiguration.kubernetesVersion",
    ),
    (
        Flag::ApiserverAdvertiseAddress,
        "apiserver-advertise-address",
        "InitConfiguration.localAPIEndpoint.advertiseAddress",
    ),
    (
        Flag::ApiserverBindPort,
        "apiserver-bind-port",
        "InitConfiguration.localAPIEndpoint.bindPort",
    ),
    (
        Flag::ControlPlaneEndpoint,
        "control-plane-endpoint",
        "ClusterConfiguration.controlPlaneEndpoint",
    ),
    (
        Flag::PodNetworkCidr,
        "pod-network-cidr",
        "ClusterConfiguration.networking.podSubnet",
    ),
    (
        Flag::ServiceCidr,
        "service-cidr",
        "ClusterConfiguration.networking.serviceSubnet",
    ),
    (
        Flag::ServiceDnsDomain,
        "service-dns-domain",
        "ClusterConfiguration.networking.dnsDomain",
    ),
    (
        Flag::NodeName,
        "node-name",
        "InitConfiguration.nodeRegistration.name",
    ),
    (
        Flag::CertDir,
        "cert-dir",
        "ClusterConfiguration.certificatesDir",
    ),
    (
        Flag::ImageRepository,
        "image-repository",
        "ClusterConfiguration.imageRepository",
    ),
    (
        Flag::CertificateKey,
        "certificate-key",
        "InitConfiguration.certificateKey",
    ),
    (
        Flag::Token,
        "token",
        "InitConfiguration.bootstrapTokens[0].token",
    ),
    (
        Flag::TokenTtl,
        "token-ttl",
        "InitConfiguration.bootstrapTokens[0].ttl",
    ),
    (
        Flag::Patches,
        "patches",
        "InitConfiguration.patches.directory",
    ),
    (
        Flag::CriSocket,
        "cri-socket",
        "InitConfiguration.nodeRegistration.criSocket",
    ),
];

/// kubeadm's ValidateMixedArguments: of the flags above, only these may go with `--config`
/// (the others it allows — dry-run, upload-certs, skip-phases, ignore-preflight-errors — set
/// no field).
const ALLOWED_WITH_CONFIG: &[Flag] = &[Flag::NodeName, Flag::CriSocket];

impl Flag {
    fn row(self) -> &'static (Flag, &'static str, &'static str) {
        FLAGS
            .iter()
            .find(|r| r.0 == self)
            .expect("every flag has a row")
    }

    /// kubeadm's name of the flag.
    pub fn name(self) -> &'static str {
        self.row().1
    }

    fn field(self) -> &'static str {
        self.row().2
    }

    fn set(
        self,
        init: &mut InitConfiguration,
        cluster: &mut ClusterConfiguration,
        value: &str,
    ) -> Result<(), String> {
        let v = value.to_string();
        match self {
            Flag::KubernetesVersion => cluster.kubernetes_version = v,
            Flag::ApiserverAdvertiseAddress => init.local_api_endpoint.advertise_address = v,
            Flag::ApiserverBindPort => {
                init.local_api_endpoint.bind_port =
                    v.parse().map_err(|_| format!("{v:?} is not a port"))?
            }
            Flag::ControlPlaneEndpoint => cluster.control_plane_endpoint = v,
            Flag::PodNetworkCidr => cluster.networking.pod_subnet = v,
            Flag::ServiceCidr => cluster.networking.service_subnet = v,
            Flag::ServiceDnsDomain => cluster.networking.dns_domain = v,
            Flag::NodeName => init.node_registration.name = v,
            Flag::CertDir => cluster.certificates_dir = v,
            Flag::ImageRepository => cluster.image_repository = v,
            Flag::CertificateKey => init.certificate_key = v,
            Flag::Token => token(init).token = v,
            Flag::TokenTtl => token(init).ttl = Some(GoDuration::parse(&v)?),
            Flag::Patches => init.patches = Some(Patches { directory: v }),
            Flag::CriSocket => init.node_registration.cri_socket = v,
        }
        Ok(())
    }
}

/// The first bootstrap token, which `--token` and `--token-ttl` set.
fn token(init: &mut InitConfiguration) -> &mut BootstrapToken {
    if init.bootstrap_tokens.is_empty() {
        init.bootstrap_tokens.push(BootstrapToken::default());
    }
    &mut init.bootstrap_tokens[0]
}

/// `kubeforge init`'s flags: the field-setting ones as given, and the ones that set no field.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub set: Vec<(Flag, String)>,
    pub upload_certs: bool,
    pub skip_phases: Vec<String>,
    pub ignore_preflight_errors: Vec<String>,
    pub dry_run: bool,
}

impl Overrides {
    /// The flags over the documents; with a config file, kubeadm's rule on mixing first.
    pub(super) fn apply(
        &self,
        origin: &mut Origin,
        init: &mut InitConfiguration,
        cluster: &mut ClusterConfiguration,
        from_file: bool,
    ) -> Result<(), ConfigError> {
        let given: Vec<Flag> = FLAGS
            .iter()
            .map(|r| r.0)
            .filter(|f| self.set.iter().any(|(g, _)| g == f))
            .collect();
        let mixed: Vec<&str> = given
            .iter()
            .filter(|f| !ALLOWED_WITH_CONFIG.contains(f))
            .map(|f| f.name())
            .collect();
        if from_file && !mixed.is_empty() {
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
        for (flag, value) in &self.set {
            origin.flags.push((flag.field().to_string(), flag.name()));
            flag.set(init, cluster, value)
                .map_err(|m| origin.error(flag.field(), m))?;
        }
        for p in &self.skip_phases {
            if !init.skip_phases.contains(p) {
                init.skip_phases.push(p.clone());
            }
        }
        let ignored = &mut init.node_registration.ignore_preflight_errors;
        for p in &self.ignore_preflight_errors {
            if !ignored.contains(p) {
                ignored.push(p.clone());
            }
        }
        init.dry_run |= self.dry_run;
        Ok(())
    }
}

//! The command line (clap derive), with kubeadm's verbs and flag names, and its mapping onto the
//! workflows' and domain modules' options (`dispatch`).

pub mod dispatch;
pub mod upgrade;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

use crate::config::{join::JoinOptions, Flag, Overrides};
use crate::output::Format;
use crate::workflow;

/// Logs on stderr: `-v` info, `-vv` debug. The client libraries (kube, hyper, tonic) log every
/// refused connection while the control plane starts; the wait reports what matters, so their
/// logs show only from `-vvv`.
pub fn init_logging(verbose: u8) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let level = match verbose {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        _ => LevelFilter::DEBUG,
    };
    let libraries = if verbose >= 3 {
        LevelFilter::DEBUG
    } else {
        LevelFilter::OFF
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(LevelFilter::DEBUG)
        .with_target(false)
        .finish()
        .with(
            Targets::new()
                .with_default(libraries)
                .with_target("kubeforge", level),
        )
        .init();
}

fn init_phase_names() -> Vec<String> {
    workflow::init::phases()
        .into_iter()
        .map(|p| p.name)
        .collect()
}

fn join_phase_names() -> Vec<String> {
    workflow::join::phases()
        .into_iter()
        .map(|p| p.name)
        .collect()
}

#[derive(Debug, Parser)]
#[command(
    name = "kubeforge",
    version,
    about = "Bootstrap a Kubernetes control plane the way kubeadm does",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Where kubeconfigs (DIR), static pod manifests (DIR/manifests), the default certificatesDir
    /// (DIR/pki) and backups (DIR/tmp) live.
    #[arg(
        long,
        global = true,
        default_value = "/etc/kubernetes",
        value_name = "DIR"
    )]
    pub kubernetes_dir: PathBuf,
    /// The kubelet's directory (config.yaml, kubeadm-flags.env, pki/).
    #[arg(
        long,
        global = true,
        default_value = "/var/lib/kubelet",
        value_name = "DIR"
    )]
    pub kubelet_dir: PathBuf,
    /// More logs on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Output format of stdout.
    #[arg(short, long, global = true, value_enum, default_value = "text")]
    pub output: Format,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set up a Kubernetes control-plane node.
    Init(Box<InitArgs>),
    /// Join this node to a cluster, as a worker or (--control-plane) a control-plane node.
    Join(Box<JoinArgs>),
    /// Print or validate kubeadm configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Certificate management.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Manage bootstrap tokens (the join credentials).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Encryption at rest of Secrets (Security document, encryptionAtRest).
    #[command(subcommand)]
    Encryption(EncryptionCommand),
    /// Kubeconfig file utilities.
    #[command(subcommand)]
    Kubeconfig(KubeconfigCommand),
    /// Upgrade the cluster (plan, apply, node, diff), rolling back by itself on failure.
    #[command(subcommand)]
    Upgrade(upgrade::UpgradeCommand),
    /// Remove everything kubeforge wrote on this node (from its journal).
    Reset {
        /// Do not ask for confirmation.
        #[arg(long, short)]
        force: bool,
        /// Only print what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Where certificates are stored, if not <kubernetes-dir>/pki.
        #[arg(long, value_name = "DIR")]
        cert_dir: Option<PathBuf>,
    },
    /// Approve kubelet serving CSRs that match their Node (profile hardened; the static pod
    /// kubeforge-approver runs it).
    Approver(ApproverArgs),
    /// The highly available endpoint's helpers, run inside its pods (docs/ha-endpoint.md).
    #[command(subcommand, hide = true)]
    Endpoint(EndpointCommand),
    /// Run a component as a non-root account, handing it copies of root-only files (profile
    /// hardened: the kube-controller-manager and kube-scheduler static pods; docs/security.md).
    #[command(name = "exec-as", hide = true)]
    ExecAs(ExecAsArgs),
    /// Print the version of kubeforge.
    Version,
    /// Print a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct InitArgs {
    #[command(subcommand)]
    pub phase: Option<InitSubcommand>,
    #[command(flatten)]
    pub flags: InitFlags,
}

#[derive(Debug, Subcommand)]
pub enum InitSubcommand {
    /// Run one phase of the init workflow.
    #[command(after_help = workflow::help_table(&workflow::init::phases()))]
    Phase {
        /// The phase to run.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(init_phase_names()))]
        name: String,
        /// The sub-phase (default: all).
        sub: Option<String>,
        #[command(flatten)]
        flags: InitFlags,
    },
}

/// kubeadm init's flags; with `--config`, only the ones kubeadm allows alongside it may be given.
#[derive(Debug, Args, Default, Clone)]
pub struct InitFlags {
    /// Path to a kubeadm configuration file (v1beta4 or v1beta3); `-` reads stdin.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The Kubernetes version to deploy.
    #[arg(long, value_name = "VERSION")]
    pub kubernetes_version: Option<String>,
    /// The IP address the API server advertises it is listening on.
    #[arg(long, value_name = "IP")]
    pub apiserver_advertise_address: Option<String>,
    /// The port the API server binds to.
    #[arg(long, value_name = "PORT")]
    pub apiserver_bind_port: Option<u16>,
    /// A stable IP address or DNS name (with optional port) for the control plane.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub control_plane_endpoint: Option<String>,
    /// The pod network CIDR(s).
    #[arg(long, value_name = "CIDR")]
    pub pod_network_cidr: Option<String>,
    /// The service VIP CIDR(s).
    #[arg(long, value_name = "CIDR")]
    pub service_cidr: Option<String>,
    /// The cluster DNS domain.
    #[arg(long, value_name = "DOMAIN")]
    pub service_dns_domain: Option<String>,
    /// The node name.
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Where certificates are stored (certificatesDir).
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<String>,
    /// The container registry to pull control-plane images from.
    #[arg(long, value_name = "REPO")]
    pub image_repository: Option<String>,
    /// Upload the control-plane certificates to the kubeadm-certs Secret.
    #[arg(long)]
    pub upload_certs: bool,
    /// The key that encrypts the control-plane certificates in the kubeadm-certs Secret (64 hex).
    #[arg(long, value_name = "KEY")]
    pub certificate_key: Option<String>,
    /// The bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// How long the bootstrap token lives (0 = forever).
    #[arg(long, value_name = "DURATION")]
    pub token_ttl: Option<String>,
    /// Phases to skip (`certs`, `certs/sa`, ...).
    #[arg(long, value_delimiter = ',', value_name = "PHASES")]
    pub skip_phases: Vec<String>,
    /// Preflight checks whose errors become warnings (`all` for every one).
    #[arg(long, value_delimiter = ',', value_name = "CHECKS")]
    pub ignore_preflight_errors: Vec<String>,
    /// Do not change the node: write everything into a temporary directory and print it.
    #[arg(long)]
    pub dry_run: bool,
    /// A directory of kubeadm-style patches for the static pod manifests.
    #[arg(long, value_name = "DIR")]
    pub patches: Option<String>,
    /// Manifest templates (`<component>.yaml.hbs`) that replace the built-in ones.
    #[arg(long, value_name = "DIR")]
    pub templates: Option<std::path::PathBuf>,
}

impl InitFlags {
    /// The flags as the config loader takes them.
    pub fn overrides(&self) -> Overrides {
        let port = self.apiserver_bind_port.map(|p| p.to_string());
        let given = [
            (Flag::KubernetesVersion, &self.kubernetes_version),
            (
                Flag::ApiserverAdvertiseAddress,
                &self.apiserver_advertise_address,
            ),
            (Flag::ApiserverBindPort, &port),
            (Flag::ControlPlaneEndpoint, &self.control_plane_endpoint),
            (Flag::PodNetworkCidr, &self.pod_network_cidr),
            (Flag::ServiceCidr, &self.service_cidr),
            (Flag::ServiceDnsDomain, &self.service_dns_domain),
            (Flag::NodeName, &self.node_name),
            (Flag::CertDir, &self.cert_dir),
            (Flag::ImageRepository, &self.image_repository),
            (Flag::CertificateKey, &self.certificate_key),
            (Flag::Token, &self.token),
            (Flag::TokenTtl, &self.token_ttl),
            (Flag::Patches, &self.patches),
        ];
        Overrides {
            set: given_flags(&given),
            upload_certs: self.upload_certs,
            skip_phases: self.skip_phases.clone(),
            ignore_preflight_errors: self.ignore_preflight_errors.clone(),
            dry_run: self.dry_run,
        }
    }
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct JoinArgs {
    #[command(subcommand)]
    pub phase: Option<JoinSubcommand>,
    #[command(flatten)]
    pub flags: JoinFlags,
}

#[derive(Debug, Subcommand)]
pub enum JoinSubcommand {
    /// Run one phase of the join workflow.
    #[command(after_help = workflow::help_table(&workflow::join::phases()))]
    Phase {
        /// The phase to run.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(join_phase_names()))]
        name: String,
        #[command(flatten)]
        flags: JoinFlags,
    },
}

/// kubeadm join's flags.
#[derive(Debug, Args, Default, Clone)]
pub struct JoinFlags {
    /// A kubeadm JoinConfiguration (kubeadm.k8s.io/v1beta4).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The API server to discover the cluster from (`host:port`).
    #[arg(value_name = "API_SERVER_ENDPOINT")]
    pub endpoint: Option<String>,
    /// The bootstrap token, for discovery and for the kubelet's TLS bootstrap.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// `sha256:<hex>` of the cluster CA's public key; may be given several times.
    #[arg(long, value_name = "HASH")]
    pub discovery_token_ca_cert_hash: Vec<String>,
    /// Trust the cluster's CA without a pin (unsafe: anyone on the path can impersonate it).
    #[arg(long)]
    pub discovery_token_unsafe_skip_ca_verification: bool,
    /// A kubeconfig whose cluster (server and CA) is trusted as given.
    #[arg(long, value_name = "FILE")]
    pub discovery_file: Option<PathBuf>,
    /// The node name (default: the hostname).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// The container runtime's CRI socket.
    #[arg(long, value_name = "SOCKET")]
    pub cri_socket: Option<String>,
    /// Join as a control-plane node.
    #[arg(long)]
    pub control_plane: bool,
    /// The key that decrypts the uploaded control-plane certificates.
    #[arg(long, value_name = "KEY")]
    pub certificate_key: Option<String>,
    /// The address this control-plane node's API server advertises.
    #[arg(long, value_name = "IP")]
    pub apiserver_advertise_address: Option<String>,
    /// The port this control-plane node's API server binds to.
    #[arg(long, value_name = "PORT")]
    pub apiserver_bind_port: Option<u16>,
    /// Phases to skip.
    #[arg(long, value_delimiter = ',', value_name = "PHASES")]
    pub skip_phases: Vec<String>,
    /// Preflight checks whose errors become warnings (`all` for every one).
    #[arg(long, value_delimiter = ',', value_name = "CHECKS")]
    pub ignore_preflight_errors: Vec<String>,
    /// Do not change the node: write everything into a temporary directory.
    #[arg(long)]
    pub dry_run: bool,
}

impl From<JoinFlags> for JoinOptions {
    fn from(f: JoinFlags) -> JoinOptions {
        JoinOptions {
            config: f.config,
            endpoint: f.endpoint,
            token: f.token,
            discovery_token_ca_cert_hash: f.discovery_token_ca_cert_hash,
            discovery_token_unsafe_skip_ca_verification: f
                .discovery_token_unsafe_skip_ca_verification,
            discovery_file: f.discovery_file,
            node_name: f.node_name,
            cri_socket: f.cri_socket,
            control_plane: f.control_plane,
            certificate_key: f.certificate_key,
            apiserver_advertise_address: f.apiserver_advertise_address,
            apiserver_bind_port: f.apiserver_bind_port,
            skip_phases: f.skip_phases,
            ignore_preflight_errors: f.ignore_preflight_errors,
            dry_run: f.dry_run,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print default configuration.
    #[command(subcommand)]
    Print(PrintCommand),
    /// Validate a configuration file: prints `ok`, or the error with file, field and line.
    Validate {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// The container images kubeforge's manifests and addons use.
    #[command(subcommand)]
    Images(ImagesCommand),
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Print the images, one per line.
    List {
        #[command(flatten)]
        flags: Box<InitFlags>,
    },
    /// Pull the images through the container runtime (imagePullSerial: false pulls them all at once).
    Pull {
        #[command(flatten)]
        flags: ImagesPullFlags,
    },
}

/// The field-setting flags that were given, with their values.
fn given_flags(flags: &[(Flag, &Option<String>)]) -> Vec<(Flag, String)> {
    flags
        .iter()
        .filter_map(|(flag, value)| value.as_ref().map(|v| (*flag, v.clone())))
        .collect()
}

/// kubeadm config images pull's flags.
#[derive(Debug, Args)]
pub struct ImagesPullFlags {
    /// Path to a kubeadm configuration file (v1beta4 or v1beta3).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The Kubernetes version whose images to pull.
    #[arg(long, value_name = "VERSION")]
    pub kubernetes_version: Option<String>,
    /// The container registry to pull control-plane images from.
    #[arg(long, value_name = "REPO")]
    pub image_repository: Option<String>,
    /// The container runtime's CRI socket (default: the configuration's criSocket).
    #[arg(long, value_name = "SOCKET")]
    pub cri_socket: Option<String>,
}

impl ImagesPullFlags {
    /// The flags as the config loader takes them.
    pub fn overrides(&self) -> Overrides {
        let given = [
            (Flag::KubernetesVersion, &self.kubernetes_version),
            (Flag::ImageRepository, &self.image_repository),
            (Flag::CriSocket, &self.cri_socket),
        ];
        Overrides {
            set: given_flags(&given),
            ..Overrides::default()
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum PrintCommand {
    /// The default InitConfiguration and ClusterConfiguration (kubeadm.k8s.io/v1beta4).
    InitDefaults,
    /// The default UpgradeConfiguration (kubeadm.k8s.io/v1beta4).
    UpgradeDefaults,
}

/// Where a certs command finds the cluster's configuration and certificates.
#[derive(Debug, Args, Clone)]
pub struct CertsConfig {
    /// A kubeadm configuration file (default: the cluster's kube-system/kubeadm-config, else the
    /// defaults).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the certificates are (default: the configuration's certificatesDir).
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<String>,
    /// The kubeconfig that reads the cluster's configuration (default: <kubernetes-dir>/admin.conf).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

/// kubeadm's names of the certificates `certs renew` renews, and `all`; kubeforge-approver.conf
/// only on a node that has it (profile hardened).
const RENEWABLE: [&str; 13] = [
    "all",
    "admin.conf",
    "apiserver",
    "apiserver-etcd-client",
    "apiserver-kubelet-client",
    "controller-manager.conf",
    "etcd-healthcheck-client",
    "etcd-peer",
    "etcd-server",
    "front-proxy-client",
    "kubeforge-approver.conf",
    "scheduler.conf",
    "super-admin.conf",
];

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Renew certificates (kubeadm's names, or all), then restart, one at a time, the static pods
    /// that read them and wait until each is Ready again.
    Renew {
        /// The certificate to renew, or `all`.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(RENEWABLE))]
        name: String,
        #[command(flatten)]
        source: CertsConfig,
        /// Where the kubeconfigs are (default: the kubernetes dir).
        #[arg(long, value_name = "DIR")]
        kubeconfig_dir: Option<PathBuf>,
        /// Renew only, as kubeadm does: the components keep the old certificates until restarted.
        #[arg(long)]
        no_restart: bool,
    },
    /// Show when each certificate and certificate authority expires.
    CheckExpiration {
        #[command(flatten)]
        source: CertsConfig,
    },
    /// Keys and certificate signing requests for every certificate and kubeconfig, for an external CA.
    GenerateCsr {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Where to write the certificates' keys and CSRs (default: certificatesDir).
        #[arg(long, value_name = "DIR")]
        cert_dir: Option<String>,
        /// Where to write the kubeconfigs and their CSRs (default: the kubernetes dir).
        #[arg(long, value_name = "DIR")]
        kubeconfig_dir: Option<PathBuf>,
    },
    /// Print a new random certificate key for --certificate-key.
    CertificateKey,
}

#[derive(Debug, Subcommand)]
pub enum EncryptionCommand {
    /// Rotate the key that encrypts Secrets: add a new key, make it first, rewrite every Secret,
    /// drop the old key, restarting this node's API server after each change of the file.
    Rotate {
        /// One step, for a cluster with several control-plane nodes (add and promote and prune
        /// on each node, rewrite on one); without it, every remaining step (one control-plane node).
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(crate::workflow::encryption::STEPS))]
        step: Option<String>,
        #[command(flatten)]
        source: CertsConfig,
    },
}

#[derive(Debug, Subcommand)]
pub enum KubeconfigCommand {
    /// Print a kubeconfig for another user, with a client certificate signed by the cluster CA
    /// (or a token).
    User {
        /// The user's name: the certificate's CN.
        #[arg(long, value_name = "NAME")]
        client_name: String,
        /// The user's groups: the certificate's O; may be given several times.
        #[arg(long = "org", value_name = "ORG")]
        organizations: Vec<String>,
        /// How long the certificate is valid.
        #[arg(long, default_value = "8760h0m0s", value_name = "DURATION")]
        validity_period: String,
        /// A token to authenticate with instead of a certificate.
        #[arg(long, value_name = "TOKEN")]
        token: Option<String>,
        #[command(flatten)]
        source: CertsConfig,
    },
}

#[derive(Debug, Args)]
pub struct ClusterAccess {
    /// The kubeconfig to reach the cluster with (default: <kubernetes-dir>/admin.conf).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Keep haproxy's servers equal to the cluster's live API servers (the haproxy pod's second
    /// container): re-render haproxy.cfg and reload haproxy through its master socket.
    Sync {
        /// The balancers' configuration directory (haproxy.cfg, haproxy-sync.json).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The cluster CA.
        #[arg(long, value_name = "FILE")]
        ca: PathBuf,
        /// The client certificate and key, one PEM file (the kubelet's).
        #[arg(long, value_name = "FILE")]
        client_cert: PathBuf,
        /// haproxy's master CLI socket.
        #[arg(long, value_name = "FILE")]
        master_socket: PathBuf,
        /// This node's API server (host:port): always a server.
        #[arg(long, value_name = "HOST:PORT")]
        local: Option<String>,
        /// Another API server or endpoint to ask (repeatable).
        #[arg(long = "server", value_name = "URL")]
        servers: Vec<String>,
        /// Seconds between two rounds.
        #[arg(long, default_value_t = 5)]
        interval_seconds: u64,
        /// One round; its error is the exit status.
        #[arg(long)]
        once: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a bootstrap token on the server and print it (or the join command).
    Create {
        #[command(flatten)]
        token: TokenCreate,
        #[command(flatten)]
        access: ClusterAccess,
    },
    /// List the bootstrap tokens on the server.
    List {
        #[command(flatten)]
        access: ClusterAccess,
    },
    /// Delete bootstrap tokens, by ID or whole token.
    Delete {
        #[arg(required = true, value_name = "TOKEN_ID")]
        ids: Vec<String>,
        #[command(flatten)]
        access: ClusterAccess,
    },
    /// Print a random token (nothing is created on the server).
    Generate,
}

#[derive(Debug, Args)]
pub struct TokenCreate {
    /// The token to create (`[a-z0-9]{6}.[a-z0-9]{16}`); default: a random one.
    pub token: Option<String>,
    /// How long the token lives (0 = forever).
    #[arg(long, default_value = "24h0m0s", value_name = "DURATION")]
    pub ttl: String,
    /// What the token may be used for.
    #[arg(long, value_delimiter = ',', default_value = "signing,authentication")]
    pub usages: Vec<String>,
    /// Extra groups the token authenticates as.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "system:bootstrappers:kubeadm:default-node-token"
    )]
    pub groups: Vec<String>,
    /// A human-friendly description of the token.
    #[arg(long, default_value = "")]
    pub description: String,
    /// Print the whole join command instead of the token alone.
    #[arg(long)]
    pub print_join_command: bool,
    /// With --print-join-command: print the control-plane join command with this key.
    #[arg(long, value_name = "KEY", requires = "print_join_command")]
    pub certificate_key: Option<String>,
    /// Upload the control-plane certificates again under a fresh certificate key (or the one
    /// given), for a control-plane join command.
    #[arg(long)]
    pub upload_certs: bool,
    /// Where the certificates to upload are (default: the cluster's certificatesDir).
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
}

impl From<TokenCreate> for crate::cluster::tokens::CreateRequest {
    fn from(t: TokenCreate) -> Self {
        crate::cluster::tokens::CreateRequest {
            token: t.token,
            ttl: t.ttl,
            usages: t.usages,
            groups: t.groups,
            description: t.description,
            print_join_command: t.print_join_command,
            certificate_key: t.certificate_key,
            upload_certs: t.upload_certs,
            cert_dir: t.cert_dir,
        }
    }
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks over every command (duplicate names, bad defaults), which it
    /// otherwise runs only when a command is parsed.
    #[test]
    fn every_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}

#[derive(clap::Args, Debug)]
pub struct ExecAsArgs {
    /// The user ID to run as (not 0).
    #[arg(long)]
    pub uid: u32,
    /// The group ID to run as (not 0); no supplementary groups are kept.
    #[arg(long)]
    pub gid: u32,
    /// A file read as root and handed over as /proc/self/fd/N wherever the command names it
    /// (repeatable).
    #[arg(long = "read", value_name = "FILE")]
    pub reads: Vec<PathBuf>,
    /// The component and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct ApproverArgs {
    /// The approver's kubeconfig.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/kubernetes/kubeforge-approver.conf"
    )]
    pub kubeconfig: PathBuf,
    /// Seconds between two approval passes.
    #[arg(long, default_value_t = 10)]
    pub interval_seconds: u64,
    /// A file touched at the start of every pass (for the liveness probe).
    #[arg(long, value_name = "FILE")]
    pub heartbeat: Option<PathBuf>,
    /// Only check that the heartbeat FILE is recent (the liveness probe), then exit.
    #[arg(long, value_name = "FILE")]
    pub check_heartbeat: Option<PathBuf>,
}

//! kubeadm's defaults and validation rules for InitConfiguration + ClusterConfiguration.

use std::net::IpAddr;
use std::path::Path;

use super::net::{is_dns1123_subdomain, is_wildcard_dns1123_subdomain, parse_cidrs, Cidr};
use super::token::{self, Token};
use super::{
    split_host_port, BootstrapToken, ClusterConfiguration, ConfigError, GoDuration,
    InitConfiguration, LocalEtcd, NodeRegistrationOptions, Origin, DEFAULT_KUBERNETES_VERSION,
    SUPPORTED_MINORS, SUPPORTED_VERSIONS,
};

pub fn defaults(
    init: &mut InitConfiguration,
    cluster: &mut ClusterConfiguration,
    kubernetes_dir: &Path,
) {
    let nr = &mut init.node_registration;
    if nr.name.is_empty() {
        nr.name = crate::node::hostname().to_lowercase();
    }
    if nr.cri_socket.is_empty() {
        nr.cri_socket = "unix:///var/run/containerd/containerd.sock".into();
    } else if !nr.cri_socket.contains("://") {
        tracing::warn!(
            "nodeRegistration.criSocket {:?} has no URL scheme; using unix://{}",
            nr.cri_socket,
            nr.cri_socket
        );
        nr.cri_socket = format!("unix://{}", nr.cri_socket);
    }
    if nr.image_pull_policy.is_empty() {
        nr.image_pull_policy = "IfNotPresent".into();
    }
    nr.image_pull_serial.get_or_insert(true);
    let ep = &mut init.local_api_endpoint;
    if ep.bind_port == 0 {
        ep.bind_port = 6443;
    }
    if ep.advertise_address.is_empty() {
        ep.advertise_address = default_route_address().unwrap_or_else(|| {
            tracing::warn!("no default route found; advertising 0.0.0.0 (set localAPIEndpoint.advertiseAddress)");
            "0.0.0.0".into()
        });
    }
    if init.bootstrap_tokens.is_empty() {
        init.bootstrap_tokens.push(BootstrapToken::default());
    }
    for t in &mut init.bootstrap_tokens {
        t.ttl.get_or_insert(GoDuration::secs(24 * 3600));
        if t.usages.is_empty() {
            t.usages = vec!["signing".into(), "authentication".into()];
        }
        if t.groups.is_empty() {
            t.groups = vec!["system:bootstrappers:kubeadm:default-node-token".into()];
        }
    }

    if cluster.kubernetes_version.is_empty() {
        cluster.kubernetes_version = DEFAULT_KUBERNETES_VERSION.into();
    } else if !cluster.kubernetes_version.starts_with('v') {
        cluster.kubernetes_version = format!("v{}", cluster.kubernetes_version);
    }
    if cluster.image_repository.is_empty() {
        cluster.image_repository = "registry.k8s.io".into();
    }
    if cluster.certificates_dir.is_empty() {
        cluster.certificates_dir = kubernetes_dir.join("pki").display().to_string();
    }
    if cluster.cluster_name.is_empty() {
        cluster.cluster_name = "kubernetes".into();
    }
    let net = &mut cluster.networking;
    if net.service_subnet.is_empty() {
        net.service_subnet = "10.96.0.0/12".into();
    }
    if net.dns_domain.is_empty() {
        net.dns_domain = "cluster.local".into();
    }
    if cluster.etcd.external.is_none() {
        let local = cluster.etcd.local.get_or_insert_with(LocalEtcd::default);
        if local.data_dir.is_empty() {
            local.data_dir = "/var/lib/etcd".into();
        }
    }
}

/// kubeadm's ValidateAbsolutePath on the paths as given (before defaults, which may be relative
/// to a relative `--kubernetes-dir`): a relative path would land wherever kubeforge is started.
pub fn paths(origin: &Origin, cluster: &ClusterConfiguration) -> Checked {
    let local = cluster.etcd.local.as_ref();
    let external = cluster.etcd.external.as_ref();
    for (field, path) in [
        ("certificatesDir", Some(&cluster.certificates_dir)),
        ("etcd.local.dataDir", local.map(|l| &l.data_dir)),
        ("etcd.external.caFile", external.map(|e| &e.ca_file)),
        ("etcd.external.certFile", external.map(|e| &e.cert_file)),
        ("etcd.external.keyFile", external.map(|e| &e.key_file)),
    ] {
        if let Some(p) = path.filter(|p| !p.is_empty() && !p.starts_with('/')) {
            return Err(origin.error(
                &format!("ClusterConfiguration.{field}"),
                format!("{p:?} is not an absolute path"),
            ));
        }
    }
    Ok(())
}

/// The IPv4 address of the interface that holds the default route (kubeadm's choice).
fn default_route_address() -> Option<String> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let iface = routes.lines().skip(1).find_map(|l| {
        let cols: Vec<_> = l.split_whitespace().collect();
        (cols.len() > 7 && cols[1] == "00000000" && cols[7] == "00000000")
            .then(|| cols[0].to_string())
    })?;
    nix::ifaddrs::getifaddrs().ok()?.find_map(|ifa| {
        if ifa.interface_name != iface {
            return None;
        }
        let ip = ifa.address?.as_sockaddr_in()?.ip();
        (!ip.is_loopback()).then(|| ip.to_string())
    })
}

/// kubeadm's validation, each error pointing at the field (and through `origin` at its line).
pub fn validate(
    origin: &Origin,
    init: &InitConfiguration,
    cluster: &ClusterConfiguration,
) -> Result<(), ConfigError> {
    validate_node(origin, init)?;
    validate_tokens(origin, init)?;
    validate_key_and_timeouts(origin, init)?;
    validate_version(&cluster.kubernetes_version)
        .map_err(|m| origin.error("ClusterConfiguration.kubernetesVersion", m))?;
    validate_networking(origin, cluster)?;
    validate_endpoint_and_sans(origin, cluster)?;
    validate_etcd(origin, cluster)?;
    validate_gates_and_validity(origin, cluster)
}

type Checked = Result<(), ConfigError>;

fn validate_node(origin: &Origin, init: &InitConfiguration) -> Checked {
    let err = |field: &str, msg: String| Err(origin.error(field, msg));
    let adv = &init.local_api_endpoint.advertise_address;
    match adv.parse::<IpAddr>() {
        Err(_) => return err("InitConfiguration.localAPIEndpoint.advertiseAddress", format!("{adv:?} is not a valid IP address")),
        Ok(ip) if ip.is_loopback() => {
            return err(
                "InitConfiguration.localAPIEndpoint.advertiseAddress",
                format!("{adv} is a loopback address; other nodes and the kubelet must reach the API server on a routable address"),
            )
        }
        Ok(_) => {}
    }
    let port = init.local_api_endpoint.bind_port;
    if !(1..=65535).contains(&port) {
        return err(
            "InitConfiguration.localAPIEndpoint.bindPort",
            format!("{port} is not a valid port (1-65535)"),
        );
    }
    registration(origin, "InitConfiguration", &init.node_registration)
}

/// The nodeRegistration of an InitConfiguration or a JoinConfiguration (`kind`); an empty name
/// or pull policy is a default still to come.
pub fn registration(origin: &Origin, kind: &str, nr: &NodeRegistrationOptions) -> Checked {
    let err = |field: &str, msg: String| {
        Err(origin.error(&format!("{kind}.nodeRegistration.{field}"), msg))
    };
    let name = &nr.name;
    if !name.is_empty() && !is_dns1123_subdomain(name) {
        return err(
            "name",
            format!("{name:?} is not a valid node name (lower-case RFC 1123 subdomain)"),
        );
    }
    let policy = &nr.image_pull_policy;
    if !["", "Always", "IfNotPresent", "Never"].contains(&policy.as_str()) {
        return err(
            "imagePullPolicy",
            format!("{policy:?} is not one of Always, IfNotPresent, Never"),
        );
    }
    for (i, t) in nr.taints.iter().flatten().enumerate() {
        if t.key.is_empty() {
            return err(&format!("taints[{i}].key"), "a taint needs a key".into());
        }
        if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&t.effect.as_str()) {
            return err(
                &format!("taints[{i}].effect"),
                format!(
                    "{:?} is not one of NoSchedule, PreferNoSchedule, NoExecute",
                    t.effect
                ),
            );
        }
    }
    Ok(())
}

fn validate_tokens(origin: &Origin, init: &InitConfiguration) -> Checked {
    let err = |field: &str, msg: String| Err(origin.error(field, msg));
    for (i, t) in init.bootstrap_tokens.iter().enumerate() {
        if !t.token.is_empty() && Token::parse(&t.token).is_err() {
            return err(
                &format!("InitConfiguration.bootstrapTokens[{i}].token"),
                "the bootstrap token must match \"[a-z0-9]{6}.[a-z0-9]{16}\"".into(),
            );
        }
        for (j, u) in t.usages.iter().enumerate() {
            if !token::USAGES.contains(&u.as_str()) {
                return err(
                    &format!("InitConfiguration.bootstrapTokens[{i}].usages[{j}]"),
                    format!("{u:?} is not a bootstrap token usage (signing, authentication)"),
                );
            }
        }
        for (j, g) in t.groups.iter().enumerate() {
            if !token::is_token_group(g) {
                return err(
                    &format!("InitConfiguration.bootstrapTokens[{i}].groups[{j}]"),
                    format!("{g:?} must match system:bootstrappers:[a-z0-9:-]{{0,255}}[a-z0-9]"),
                );
            }
        }
    }
    Ok(())
}

fn validate_key_and_timeouts(origin: &Origin, init: &InitConfiguration) -> Checked {
    let err = |field: &str, msg: String| Err(origin.error(field, msg));
    if !init.certificate_key.is_empty() {
        if let Err(why) = token::CertificateKey::parse(&init.certificate_key) {
            return err("InitConfiguration.certificateKey", why);
        }
    }
    let t = &init.timeouts;
    for (field, d) in [
        (
            "controlPlaneComponentHealthCheck",
            t.control_plane_component_health_check,
        ),
        ("discovery", t.discovery),
        ("etcdAPICall", t.etcd_api_call),
        ("kubeletHealthCheck", t.kubelet_health_check),
        ("kubernetesAPICall", t.kubernetes_api_call),
        ("tlsBootstrap", t.tls_bootstrap),
        ("upgradeManifests", t.upgrade_manifests),
    ] {
        if d.0.is_zero() {
            return err(
                &format!("InitConfiguration.timeouts.{field}"),
                "must be greater than zero".into(),
            );
        }
    }

    Ok(())
}

fn validate_networking(origin: &Origin, cluster: &ClusterConfiguration) -> Checked {
    let err = |field: &str, msg: String| Err(origin.error(field, msg));
    let at = |field: &'static str| move |msg: String| origin.error(field, msg);
    let svc = parse_cidrs(&cluster.networking.service_subnet)
        .map_err(at("ClusterConfiguration.networking.serviceSubnet"))?;
    for c in &svc {
        let (min_prefix, label) = if c.addr.is_ipv4() {
            (12, "/12")
        } else {
            (108, "/108")
        };
        if c.prefix < min_prefix {
            return err(
                "ClusterConfiguration.networking.serviceSubnet",
                format!(
                    "{}/{} is too large: the mask must be {label} or longer",
                    c.addr, c.prefix
                ),
            );
        }
        if c.host_bits() < 4 {
            return err(
                "ClusterConfiguration.networking.serviceSubnet",
                format!(
                    "{}/{} is too small: a service subnet needs at least 10 addresses",
                    c.addr, c.prefix
                ),
            );
        }
    }
    if !cluster.networking.pod_subnet.is_empty() {
        let pods = parse_cidrs(&cluster.networking.pod_subnet)
            .map_err(at("ClusterConfiguration.networking.podSubnet"))?;
        for c in &pods {
            let node_mask = if c.addr.is_ipv4() { 24 } else { 64 };
            if c.prefix > node_mask {
                return err(
                    "ClusterConfiguration.networking.podSubnet",
                    format!(
                        "{}/{} is smaller than the per-node mask /{node_mask}",
                        c.addr, c.prefix
                    ),
                );
            }
            if node_mask - c.prefix > 16 {
                return err(
                    "ClusterConfiguration.networking.podSubnet",
                    format!(
                        "{}/{} is too large for the per-node mask /{node_mask}: at most 16 bits between them",
                        c.addr, c.prefix
                    ),
                );
            }
        }
    }
    if !cluster.networking.pod_subnet.is_empty() {
        let pods = parse_cidrs(&cluster.networking.pod_subnet).expect("checked above");
        subnets_apart(origin, &svc, &pods)?;
    }
    let domain = &cluster.networking.dns_domain;
    if !is_dns1123_subdomain(domain) {
        return err(
            "ClusterConfiguration.networking.dnsDomain",
            format!("{domain:?} is not a valid DNS domain"),
        );
    }
    Ok(())
}

/// Pods and Services need address ranges of their own: an overlap breaks the cluster's routing.
fn subnets_apart(origin: &Origin, services: &[Cidr], pods: &[Cidr]) -> Checked {
    const SERVICE: &str = "ClusterConfiguration.networking.serviceSubnet";
    for pod in pods {
        if let Some(service) = services.iter().find(|s| s.overlaps(pod)) {
            let given = origin
                .source_of(SERVICE)
                .map_or_else(|| "(the default)".to_string(), |at| format!("({at})"));
            return Err(origin.error(
                "ClusterConfiguration.networking.podSubnet",
                format!(
                    "{}/{} overlaps {SERVICE} {}/{} {given}: pods and services need separate address ranges",
                    pod.addr, pod.prefix, service.addr, service.prefix
                ),
            ));
        }
    }
    Ok(())
}

fn validate_endpoint_and_sans(origin: &Origin, cluster: &ClusterConfiguration) -> Checked {
    let err = |field: &str, msg: String| Err(origin.error(field, msg));
    if !cluster.control_plane_endpoint.is_empty() {
        let (host, port) = split_host_port(&cluster.control_plane_endpoint);
        let host_ok = host.parse::<IpAddr>().is_ok() || is_dns1123_subdomain(&host);
        let port_ok = port
            .as_deref()
            .is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
        if !host_ok || !port_ok {
            return err(
                "ClusterConfiguration.controlPlaneEndpoint",
                format!(
                    "{:?} is not a valid host[:port]",
                    cluster.control_plane_endpoint
                ),
            );
        }
    }
    for (i, san) in cluster.api_server.cert_sans.iter().enumerate() {
        let lower = san.to_lowercase();
        if san.parse::<IpAddr>().is_err()
            && !is_dns1123_subdomain(&lower)
            && !is_wildcard_dns1123_subdomain(&lower)
        {
            return err(
                &format!("ClusterConfiguration.apiServer.certSANs[{i}]"),
                format!("{san:?} is neither an IP address, a DNS name nor a wildcard DNS name"),
            );
        }
    }
    Ok(())
}

fn validate_etcd(origin: &Origin, cluster: &ClusterConfiguration) -> Checked {
    let err = |field: &str, msg: String| Err(origin.error(field, msg));
    if cluster.etcd.local.is_some() && cluster.etcd.external.is_some() {
        return err(
            "ClusterConfiguration.etcd",
            "etcd.local and etcd.external are mutually exclusive".into(),
        );
    }
    if let Some(local) = &cluster.etcd.local {
        for (field, sans) in [
            ("serverCertSANs", &local.server_cert_sans),
            ("peerCertSANs", &local.peer_cert_sans),
        ] {
            for (i, san) in sans.iter().enumerate() {
                if san.parse::<IpAddr>().is_err()
                    && !is_dns1123_subdomain(san)
                    && !is_wildcard_dns1123_subdomain(san)
                {
                    return err(
                        &format!("ClusterConfiguration.etcd.local.{field}[{i}]"),
                        format!("{san:?} is neither an IP address nor a lower-case DNS name"),
                    );
                }
            }
        }
    }
    if let Some(ext) = &cluster.etcd.external {
        if ext.endpoints.is_empty() {
            return err(
                "ClusterConfiguration.etcd.external.endpoints",
                "at least one endpoint is required".into(),
            );
        }
        for (i, e) in ext.endpoints.iter().enumerate() {
            if !(e.starts_with("https://") || e.starts_with("http://")) {
                return err(
                    &format!("ClusterConfiguration.etcd.external.endpoints[{i}]"),
                    format!("{e:?} is not an http(s) URL"),
                );
            }
        }
        let tls = ext.endpoints.iter().any(|e| e.starts_with("https://"));
        for (field, value) in [
            ("caFile", &ext.ca_file),
            ("certFile", &ext.cert_file),
            ("keyFile", &ext.key_file),
        ] {
            if tls && value.is_empty() {
                return err(
                    &format!("ClusterConfiguration.etcd.external.{field}"),
                    "required for https endpoints".into(),
                );
            }
        }
    }
    Ok(())
}

fn validate_gates_and_validity(origin: &Origin, cluster: &ClusterConfiguration) -> Checked {
    let err = |field: &str, msg: String| Err(origin.error(field, msg));
    const GATES: &[&str] = &[
        "ControlPlaneKubeletLocalMode",
        "NodeLocalCRISocket",
        "PublicKeysECDSA",
        "RootlessControlPlane",
    ];
    for gate in cluster.feature_gates.keys() {
        if !GATES.contains(&gate.as_str()) {
            return err(
                &format!("ClusterConfiguration.featureGates.{gate}"),
                format!("unknown feature gate {gate:?}; known: {}", GATES.join(", ")),
            );
        }
    }
    for (field, d) in [
        (
            "certificateValidityPeriod",
            cluster.certificate_validity_period,
        ),
        (
            "caCertificateValidityPeriod",
            cluster.ca_certificate_validity_period,
        ),
    ] {
        if d.0.is_zero() {
            return err(
                &format!("ClusterConfiguration.{field}"),
                "must be greater than zero".into(),
            );
        }
    }
    if cluster.certificate_validity_period > cluster.ca_certificate_validity_period {
        tracing::warn!(
            "certificateValidityPeriod {} is longer than caCertificateValidityPeriod {}",
            cluster.certificate_validity_period,
            cluster.ca_certificate_validity_period
        );
    }
    Ok(())
}

/// `v1.35.6` (pre-releases like `v1.36.0-rc.1` too) inside the supported window.
fn validate_version(v: &str) -> Result<(), String> {
    let bad = || format!("{v:?} is not a Kubernetes version like v1.35.6");
    let core = v.strip_prefix('v').ok_or_else(bad)?;
    let core = core.split(['-', '+']).next().ok_or_else(bad)?;
    let parts: Vec<u32> = core
        .split('.')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let [major, minor, _patch] = parts[..] else {
        return Err(bad());
    };
    if major != 1 || minor < SUPPORTED_MINORS.0 || minor > SUPPORTED_MINORS.1 {
        return Err(format!(
            "{v} is outside the supported versions {SUPPORTED_VERSIONS}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_tokens() {
        assert!(validate_version("v1.35.6").is_ok());
        assert!(validate_version("v1.36.0-rc.1").is_ok());
        assert!(validate_version("v1.32.9").is_err());
        assert!(validate_version("v1.38.0").is_err());
        assert!(validate_version("latest").is_err());
        assert!(Token::parse("abcdef.0123456789abcdef").is_ok());
        assert!(Token::parse("ABCDEF.0123456789abcdef").is_err());
        assert!(Token::parse("abcdef0123456789abcdef").is_err());
    }
}

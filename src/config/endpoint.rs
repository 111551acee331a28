//! kubeforge's own document, `kubeforge.io/v1alpha1` `ControlPlaneEndpoint`: a highly
//! available endpoint in front of the API servers (docs/ha-endpoint.md). kubeadm's API has no
//! field for it; kubeadm itself skips a document of an unknown group with a warning, so the same
//! file still works with kubeadm.

use std::net::{IpAddr, ToSocketAddrs};

use serde::{Deserialize, Serialize};

use super::{split_host_port, ClusterConfiguration, ConfigError, InitConfiguration, Origin};

pub const API_VERSION: &str = "kubeforge.io/v1alpha1";
pub const KIND: &str = "ControlPlaneEndpoint";

pub const DEFAULT_HAPROXY_IMAGE: &str = "kubeforge.local/haproxy:2.6.12";
pub const DEFAULT_KEEPALIVED_IMAGE: &str = "kubeforge.local/keepalived:2.2.7";

/// Which balancers run where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointMode {
    /// A virtual IP (keepalived, VRRP) over haproxy on every control-plane node.
    Vip,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointImages {
    #[serde(default = "default_haproxy")]
    pub haproxy: String,
    #[serde(default = "default_keepalived")]
    pub keepalived: String,
}

impl Default for EndpointImages {
    fn default() -> Self {
        EndpointImages {
            haproxy: default_haproxy(),
            keepalived: default_keepalived(),
        }
    }
}

fn default_haproxy() -> String {
    DEFAULT_HAPROXY_IMAGE.into()
}
fn default_keepalived() -> String {
    DEFAULT_KEEPALIVED_IMAGE.into()
}
fn default_router_id() -> u16 {
    51
}
fn default_balancer_port() -> u16 {
    8443
}
fn default_monitor_port() -> u16 {
    8404
}
fn default_advert_ms() -> u32 {
    500
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlaneEndpoint {
    pub mode: EndpointMode,
    /// The address the control-plane nodes share (VRRP).
    #[serde(default, rename = "virtualIP")]
    pub virtual_ip: String,
    /// The interface keepalived announces the VIP on; empty: the one holding the node's
    /// advertise address.
    #[serde(default)]
    pub interface: String,
    /// VRRP's virtual_router_id, 1–255: unique among the VRRP groups on the link.
    #[serde(default = "default_router_id", rename = "virtualRouterID")]
    pub virtual_router_id: u16,
    /// VRRP advertisement interval in milliseconds (VRRPv3: a multiple of 10); the VIP moves
    /// after about three missed advertisements.
    #[serde(default = "default_advert_ms")]
    pub advert_interval_milliseconds: u32,
    /// haproxy's port on every control-plane node; controlPlaneEndpoint is `<VIP>:<this>`.
    #[serde(default = "default_balancer_port")]
    pub balancer_port: u16,
    /// haproxy's plain-HTTP health page on 127.0.0.1 (200 while an API server is ready), which
    /// keepalived's check asks.
    #[serde(default = "default_monitor_port")]
    pub monitor_port: u16,
    #[serde(default)]
    pub images: EndpointImages,
    /// Workers run their own haproxy on 127.0.0.1:<balancerPort> in front of every API server,
    /// and their kubelet talks to it instead of the virtual IP.
    #[serde(default)]
    pub node_local: bool,
}

impl ControlPlaneEndpoint {
    pub fn vip(&self) -> IpAddr {
        self.virtual_ip.parse().expect("validated")
    }
}

/// The document as a config file holds it (apiVersion and kind first).
pub fn document(ep: &ControlPlaneEndpoint) -> String {
    let head = format!("apiVersion: {API_VERSION}\nkind: {KIND}\n");
    head + &serde_yaml::to_string(ep).expect("the document serializes")
}

/// The document's own checks, and how it must agree with the kubeadm documents.
pub(super) fn validate(
    origin: &Origin,
    ep: &ControlPlaneEndpoint,
    init: &InitConfiguration,
    cluster: &ClusterConfiguration,
) -> Result<(), ConfigError> {
    let err = |field: &str, msg: String| origin.error(&format!("{KIND}.{field}"), msg);
    let vip: IpAddr = ep.virtual_ip.parse().map_err(|_| {
        err(
            "virtualIP",
            format!("{:?} is not an IP address", ep.virtual_ip),
        )
    })?;
    if vip.to_string() == init.local_api_endpoint.advertise_address {
        return Err(err(
            "virtualIP",
            "must not be a node's own address (localAPIEndpoint.advertiseAddress)".into(),
        ));
    }
    if !(1..=255).contains(&ep.virtual_router_id) {
        return Err(err("virtualRouterID", "must be 1–255".into()));
    }
    if ep.advert_interval_milliseconds < 10
        || ep.advert_interval_milliseconds > 40_950
        || !ep.advert_interval_milliseconds.is_multiple_of(10)
    {
        return Err(err(
            "advertIntervalMilliseconds",
            "must be a multiple of 10 from 10 to 40950 (VRRPv3)".into(),
        ));
    }
    let bind_port = u16::try_from(init.local_api_endpoint.bind_port).unwrap_or(0);
    for (field, port) in [
        ("balancerPort", ep.balancer_port),
        ("monitorPort", ep.monitor_port),
    ] {
        if port == 0 || port == bind_port {
            return Err(err(
                field,
                format!("must be a port other than 0 and the API server's {bind_port}"),
            ));
        }
    }
    if ep.balancer_port == ep.monitor_port {
        return Err(err("monitorPort", "must differ from balancerPort".into()));
    }
    for (field, image) in [
        ("images.haproxy", &ep.images.haproxy),
        ("images.keepalived", &ep.images.keepalived),
    ] {
        if image.is_empty() || image.contains(char::is_whitespace) {
            return Err(err(field, format!("{image:?} is not an image reference")));
        }
    }
    endpoint_is_vip(origin, ep, vip, cluster)
}

/// controlPlaneEndpoint must be `<VIP>:<balancerPort>` (or a name resolving to the VIP), or
/// every client would bypass the balancer.
fn endpoint_is_vip(
    origin: &Origin,
    ep: &ControlPlaneEndpoint,
    vip: IpAddr,
    cluster: &ClusterConfiguration,
) -> Result<(), ConfigError> {
    let want = format!(
        "{}:{}",
        super::net::url_host(&vip.to_string()),
        ep.balancer_port
    );
    let field = "ClusterConfiguration.controlPlaneEndpoint";
    if cluster.control_plane_endpoint.is_empty() {
        return Err(origin.error(
            field,
            format!("must be set to the virtual IP and balancer port ({want}) when a {KIND} document asks for mode vip"),
        ));
    }
    let (host, port) = split_host_port(&cluster.control_plane_endpoint);
    if port.as_deref() != Some(ep.balancer_port.to_string().as_str()) {
        return Err(origin.error(
            field,
            format!(
                "its port must be the balancer's, {} ({want})",
                ep.balancer_port
            ),
        ));
    }
    let resolves = match host.parse::<IpAddr>() {
        Ok(ip) => ip == vip,
        Err(_) => (host.as_str(), ep.balancer_port)
            .to_socket_addrs()
            .map(|mut addrs| addrs.any(|a| a.ip() == vip))
            .unwrap_or(false),
    };
    if !resolves {
        return Err(origin.error(
            field,
            format!("{host:?} is not (and does not resolve to) {KIND}.virtualIP {vip}; use {want}"),
        ));
    }
    Ok(())
}

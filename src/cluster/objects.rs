//! The objects init creates in the cluster once the control plane is up (contract 6), rendered
//! from `templates/cluster/` in kubeadm's order. Rendering needs no API server, so `--dry-run`
//! and the tests see exactly what would be applied.

use anyhow::{Context, Result};
use base64::Engine;
use handlebars::{Handlebars, Helper, HelperResult, Output, RenderContext};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

pub use crate::kube::apply::Object;

use crate::config::Config;
use crate::manifests::{coredns_image, kube_proxy_image, to_yaml};
use crate::node::Layout;

/// One bootstrap token as its Secret stores it (contract 6.5).
pub struct TokenSecret {
    pub id: String,
    pub secret: String,
    pub description: String,
    /// RFC 3339 UTC; None = never expires.
    pub expiration: Option<String>,
    /// `signing`, `authentication`.
    pub usages: Vec<String>,
    pub groups: Vec<String>,
}

impl TokenSecret {
    pub fn token(&self) -> Result<crate::config::Token> {
        crate::config::Token::parse(&format!("{}.{}", self.id, self.secret))
            .map_err(anyhow::Error::msg)
    }
}

fn template(name: &str) -> &'static str {
    match name {
        "upload-config-kubeadm" => {
            include_str!("../../templates/cluster/upload-config-kubeadm.yaml.hbs")
        }
        "upload-config-endpoint" => {
            include_str!("../../templates/cluster/upload-config-endpoint.yaml.hbs")
        }
        "upload-config-security" => {
            include_str!("../../templates/cluster/upload-config-security.yaml.hbs")
        }
        "upload-config-kubelet" => {
            include_str!("../../templates/cluster/upload-config-kubelet.yaml.hbs")
        }
        "bootstrap-token" => include_str!("../../templates/cluster/bootstrap-token.yaml.hbs"),
        "token-secret" => include_str!("../../templates/cluster/token-secret.yaml.hbs"),
        "addon-coredns" => include_str!("../../templates/cluster/addon-coredns.yaml.hbs"),
        "addon-kube-proxy" => include_str!("../../templates/cluster/addon-kube-proxy.yaml.hbs"),
        "cluster-admins" => include_str!("../../templates/cluster/cluster-admins.yaml.hbs"),
        "system-priority-classes" => {
            include_str!("../../templates/cluster/system-priority-classes.yaml.hbs")
        }
        "upload-certs" => include_str!("../../templates/cluster/upload-certs.yaml.hbs"),
        "kubeforge-approver" => {
            include_str!("../../templates/cluster/kubeforge-approver.yaml.hbs")
        }
        "Corefile" => include_str!("../../templates/cluster/Corefile.hbs"),
        "kube-proxy.conf" => include_str!("../../templates/cluster/kube-proxy.conf.hbs"),
        "kube-proxy-kubeconfig.conf" => {
            include_str!("../../templates/cluster/kube-proxy-kubeconfig.conf.hbs")
        }
        other => unreachable!("no cluster template {other}"),
    }
}

/// `{{json x}}`: x as a JSON value, which YAML reads back unchanged (multi-line strings too).
fn json_helper(
    h: &Helper,
    _: &Handlebars,
    _: &handlebars::Context,
    _: &mut RenderContext,
    out: &mut dyn Output,
) -> HelperResult {
    let value = h.param(0).map(|p| p.value().clone()).unwrap_or(Value::Null);
    out.write(&value.to_string())?;
    Ok(())
}

/// `{{b64 x}}`: a Secret data value.
fn b64_helper(
    h: &Helper,
    _: &Handlebars,
    _: &handlebars::Context,
    _: &mut RenderContext,
    out: &mut dyn Output,
) -> HelperResult {
    let text = h.param(0).and_then(|p| p.value().as_str()).unwrap_or("");
    out.write(&base64::engine::general_purpose::STANDARD.encode(text))?;
    Ok(())
}

fn render_text(name: &str, data: &Value) -> Result<String> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(handlebars::no_escape);
    hb.register_helper("json", Box::new(json_helper));
    hb.register_helper("b64", Box::new(b64_helper));
    hb.render_template(template(name), data)
        .with_context(|| format!("rendering templates/cluster/{name}"))
}

/// A multi-document template as the objects it holds, in order.
fn render_objects(name: &str, data: &Value) -> Result<Vec<Object>> {
    let text = render_text(name, data)?;
    let mut objects = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = Value::deserialize(doc)
            .with_context(|| format!("templates/cluster/{name} does not render to YAML"))?;
        if !value.is_null() {
            let object =
                Object::from_value(value).with_context(|| format!("templates/cluster/{name}"))?;
            objects.push(object);
        }
    }
    Ok(objects)
}

/// kubeadm's `kubeadm.kubernetes.io/component-config.hash`: SHA-256 over the data values in key
/// order.
pub fn component_config_hash(data: &BTreeMap<String, String>) -> String {
    let mut hash = Sha256::new();
    for value in data.values() {
        hash.update(value.as_bytes());
    }
    format!("sha256:{}", hex::encode(hash.finalize()))
}

/// The v1beta4 ClusterConfiguration as kubeadm uploads it.
pub fn cluster_configuration_yaml(cfg: &Config) -> Result<String> {
    let mut value = serde_json::to_value(&cfg.cluster).context("the ClusterConfiguration")?;
    value["apiVersion"] = json!("kubeadm.k8s.io/v1beta4");
    value["kind"] = json!("ClusterConfiguration");
    Ok(to_yaml(value))
}

pub fn upload_config_kubeadm(cfg: &Config) -> Result<Vec<Object>> {
    render_objects(
        "upload-config-kubeadm",
        &json!({ "clusterConfiguration": cluster_configuration_yaml(cfg)? }),
    )
}

/// kubeforge's `kube-system/kubeforge-endpoint`: the ControlPlaneEndpoint document joining
/// nodes render their balancers from (none without one).
pub fn upload_config_endpoint(cfg: &Config) -> Result<Vec<Object>> {
    let Some(ep) = &cfg.endpoint else {
        return Ok(Vec::new());
    };
    render_objects(
        "upload-config-endpoint",
        &json!({ "controlPlaneEndpoint": crate::config::endpoint::document(ep) }),
    )
}

/// kubeforge's `kube-system/kubeforge-security`: the Security document joining nodes and
/// upgrades render from (docs/security.md). kubeadm's profile stores none: kubeadm's objects only.
pub fn upload_config_security(cfg: &Config) -> Result<Vec<Object>> {
    if !cfg.security.stored() {
        return Ok(Vec::new());
    }
    render_objects(
        "upload-config-security",
        &json!({ "security": crate::config::security::document(&cfg.security) }),
    )
}

pub fn upload_config_kubelet(cfg: &Config, layout: &Layout) -> Result<Vec<Object>> {
    let mut kubelet = crate::kubelet::cluster_config(cfg, layout)?;
    if kubelet.get("containerRuntimeEndpoint").is_none() {
        kubelet["containerRuntimeEndpoint"] = json!("");
    }
    let text = to_yaml(kubelet);
    // The hash marks a config kubeadm generated; an operator's own document carries none.
    let hash = cfg
        .kubelet
        .is_none()
        .then(|| component_config_hash(&BTreeMap::from([("kubelet".into(), text.clone())])));
    render_objects(
        "upload-config-kubelet",
        &json!({ "kubeletConfiguration": text, "kubeletConfigHash": hash }),
    )
}

/// The kubeconfig published in `kube-public/cluster-info`: one unnamed cluster, the CA and the
/// control-plane endpoint, as kubeadm writes it.
pub fn cluster_info_kubeconfig(cfg: &Config, ca_pem: &[u8]) -> String {
    to_yaml(json!({
        "apiVersion": "v1",
        "clusters": [{
            "cluster": {
                "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(ca_pem),
                "server": cfg.control_plane_endpoint_url(),
            },
            "name": "",
        }],
        "contexts": null,
        "current-context": "",
        "kind": "Config",
        "users": null,
    }))
}

/// The Secret of one bootstrap token.
pub fn token_secret(t: &TokenSecret) -> Result<Object> {
    let mut objects = render_objects(
        "token-secret",
        &json!({
            "id": t.id,
            "secret": t.secret,
            "description": t.description,
            "expiration": t.expiration,
            "usages": t.usages,
            "groups": t.groups.join(","),
        }),
    )?;
    objects
        .pop()
        .context("templates/cluster/token-secret renders no object")
}

/// Every token's Secret, then the RBAC and cluster-info of contract 6.6-6.7.
/// Every token's Secret, then the RBAC and cluster-info of contract 6.6-6.7. cluster-info
/// carries the signature of every token with the signing usage, computed as the
/// controller-manager's bootstrapsigner computes it: the join commands work at once, and the
/// signer, finding the same bytes, leaves the ConfigMap as it is.
pub fn bootstrap_token(cfg: &Config, tokens: &[TokenSecret], ca_pem: &[u8]) -> Result<Vec<Object>> {
    let mut objects = tokens
        .iter()
        .map(token_secret)
        .collect::<Result<Vec<_>>>()?;
    let kubeconfig = cluster_info_kubeconfig(cfg, ca_pem);
    let signatures: Vec<Value> = tokens
        .iter()
        .filter(|t| t.usages.iter().any(|u| u == "signing"))
        .map(|t| {
            let token = t.token()?;
            Ok(json!({ "id": t.id, "jws": super::token::detached_jws(&kubeconfig, &token) }))
        })
        .collect::<Result<_>>()?;
    objects.extend(render_objects(
        "bootstrap-token",
        &json!({ "clusterInfoKubeconfig": kubeconfig, "signatures": signatures }),
    )?);
    Ok(objects)
}

pub fn coredns(cfg: &Config) -> Result<Vec<Object>> {
    let domain = &cfg.cluster.networking.dns_domain;
    let corefile = render_text("Corefile", &json!({ "dnsDomain": domain }))?;
    let objects = render_objects(
        "addon-coredns",
        &json!({
            "corefile": corefile,
            "replicas": 2,
            "image": coredns_image(cfg),
            "dnsIP": cfg.cluster.dns_ip().to_string(),
        }),
    )?;
    objects
        .into_iter()
        .map(|o| match o {
            Object::Deployment(_) => {
                let patched =
                    crate::manifests::patches::for_target(cfg, "corednsdeployment", o.to_value())?;
                Object::from_value(patched)
            }
            other => Ok(other),
        })
        .collect()
}

/// kubeadm's KubeProxyConfiguration text for the cluster.
fn kube_proxy_template(cfg: &Config) -> Result<String> {
    let ipv6 = cfg
        .init
        .local_api_endpoint
        .advertise_address
        .parse::<std::net::Ipv6Addr>()
        .is_ok();
    let pod_subnet = &cfg.cluster.networking.pod_subnet;
    let text = render_text(
        "kube-proxy.conf",
        &json!({
            "bindAddress": if ipv6 { "'::'" } else { "0.0.0.0" },
            "clusterCIDR": if pod_subnet.is_empty() { "\"\"".to_string() } else { pod_subnet.clone() },
        }),
    )?;
    Ok(text.trim_end().to_string())
}

/// kube-proxy's KubeProxyConfiguration: kubeadm's, with the operator's document merged over it.
pub fn kube_proxy_config(cfg: &Config) -> Result<Value> {
    let mut value: Value = serde_yaml::from_str(&kube_proxy_template(cfg)?)
        .context("the kube-proxy config template")?;
    if let Some(user) = &cfg.kube_proxy {
        crate::kubelet::merge(
            &mut value,
            serde_json::to_value(user).context("the KubeProxyConfiguration document")?,
        );
    }
    Ok(value)
}

pub fn kube_proxy(cfg: &Config) -> Result<Vec<Object>> {
    let proxy_kubeconfig = render_text(
        "kube-proxy-kubeconfig.conf",
        &json!({ "server": cfg.control_plane_endpoint_url() }),
    )?;
    let proxy_config = match &cfg.kube_proxy {
        // kubeadm's own text, byte for byte, when the operator changed nothing.
        None => kube_proxy_template(cfg)?,
        Some(_) => to_yaml(kube_proxy_config(cfg)?).trim_end().to_string(),
    };
    let data = BTreeMap::from([
        ("config.conf".to_string(), proxy_config.clone()),
        (
            "kubeconfig.conf".to_string(),
            proxy_kubeconfig.trim_end().to_string(),
        ),
    ]);
    render_objects(
        "addon-kube-proxy",
        &json!({
            "proxyConfig": data["config.conf"],
            "proxyKubeconfig": data["kubeconfig.conf"],
            // As for the kubelet: an operator's own document carries no hash.
            "configHash": cfg.kube_proxy.is_none().then(|| component_config_hash(&data)),
            "image": kube_proxy_image(cfg),
        }),
    )
}

pub fn cluster_admins() -> Result<Vec<Object>> {
    render_objects("cluster-admins", &json!({}))
}

pub fn system_priority_classes() -> Result<Vec<Object>> {
    render_objects("system-priority-classes", &json!({}))
}

/// The TTL token Secret and the RBAC of upload-certs.
pub fn upload_certs(ttl_token: &TokenSecret) -> Result<Vec<Object>> {
    render_objects(
        "upload-certs",
        &json!({ "id": ttl_token.id, "secret": ttl_token.secret, "expiration": ttl_token.expiration }),
    )
}

/// The ClusterRole and binding of kubeforge's kubelet serving CSR approver (profile hardened).
pub fn csr_approver_rbac() -> Result<Vec<Object>> {
    render_objects(
        "kubeforge-approver",
        &json!({ "user": crate::kubelet::serving::APPROVER_USER }),
    )
}

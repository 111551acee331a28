//! The kubelet: its files (contract 4) — `config.yaml` (kubeadm's KubeletConfiguration with the
//! operator's document merged over it), `instance-config.yaml` (v1.34+), `kubeadm-flags.env`
//! (same name as kubeadm's, so kubeadm's systemd drop-in keeps working) — its service, and the
//! wait for its TLS bootstrap.

pub mod approver;
pub mod bootstrap;
pub mod service;
pub mod serving;

use anyhow::{Context, Result};
use handlebars::Handlebars;
use serde_json::{json, Value};

use crate::config::Config;
use crate::manifests::to_yaml;
use crate::node::Layout;

const CONFIG_TEMPLATE: &str = include_str!("../../templates/kubelet-config.yaml.hbs");

/// kubeadm writes the kubelet's files world-readable.
pub const FILE_MODE: u32 = 0o644;

/// The mode of the kubelet's files: root's only in profile hardened (CIS 4.1.9), else kubeadm's.
pub fn file_mode(cfg: &Config) -> u32 {
    if cfg.security.hardened() {
        0o600
    } else {
        FILE_MODE
    }
}

/// The kubelet's files for this node, in kubeadm's order: (name under the kubelet dir, content,
/// what kubeadm calls it in its output).
pub fn files(cfg: &Config, layout: &Layout) -> Result<Vec<(&'static str, String, &'static str)>> {
    let hostname = crate::node::hostname();
    let mut files = vec![(
        "kubeadm-flags.env",
        flags_env(cfg, &hostname),
        "environment file with flags",
    )];
    if let Some(instance) = instance_config(cfg) {
        files.push(("instance-config.yaml", instance, "configuration"));
    }
    files.push(("config.yaml", config_yaml(cfg, layout)?, "configuration"));
    Ok(files)
}

/// Maps merge key by key (the operator wins); anything else is replaced.
pub fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// The cluster-wide KubeletConfiguration, as uploaded to `kube-system/kubelet-config`: no
/// node-local CRI endpoint.
pub fn cluster_config(cfg: &Config, layout: &Layout) -> Result<Value> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(handlebars::no_escape);
    let text = hb.render_template(
        CONFIG_TEMPLATE,
        &json!({
            "clientCAFile": layout.pki_dir.join("ca.crt"),
            "clusterDNS": cfg.cluster.dns_ip().to_string(),
            "clusterDomain": cfg.cluster.networking.dns_domain,
            "staticPodPath": layout.manifests_dir,
        }),
    )?;
    let mut value: Value = serde_yaml::from_str(&text).context("the kubelet config template")?;
    if cfg.security.hardened() {
        merge(&mut value, crate::manifests::hardened::kubelet_settings());
        // A serving certificate from the cluster CA, approved by kubeforge (serving.rs).
        value["serverTLSBootstrap"] = json!(true);
    }
    if let Some(user) = &cfg.kubelet {
        merge(
            &mut value,
            serde_json::to_value(user).context("the KubeletConfiguration document")?,
        );
    }
    if value["rotateCertificates"] != json!(true) {
        tracing::warn!("rotateCertificates is forced to true, as kubeadm does");
        value["rotateCertificates"] = json!(true);
    }
    Ok(value)
}

pub fn config_yaml(cfg: &Config, layout: &Layout) -> Result<String> {
    let mut value = cluster_config(cfg, layout)?;
    if cfg.kubernetes_minor() >= 34 {
        value["containerRuntimeEndpoint"] = json!(cfg.init.node_registration.cri_socket);
    }
    let value = crate::manifests::patches::for_target(cfg, "kubeletconfiguration", value)?;
    Ok(to_yaml(value))
}

/// `containerRuntimeEndpoint: "<criSocket>"` for v1.34+ (NodeLocalCRISocket), else None.
pub fn instance_config(cfg: &Config) -> Option<String> {
    (cfg.kubernetes_minor() >= 34).then(|| {
        format!(
            "containerRuntimeEndpoint: {}\n",
            serde_json::to_string(&cfg.init.node_registration.cri_socket).expect("a string")
        )
    })
}

/// `KUBELET_KUBEADM_ARGS="…"`: kubeadm's default flags sorted by name, then the operator's
/// `kubeletExtraArgs` in their order (replacing a default of the same name).
pub fn flags_env(cfg: &Config, os_hostname: &str) -> String {
    let minor = cfg.kubernetes_minor();
    let nr = &cfg.init.node_registration;
    let mut defaults: Vec<(String, String)> = Vec::new();
    if minor < 34 {
        defaults.push(("container-runtime-endpoint".into(), nr.cri_socket.clone()));
    }
    if nr.name != os_hostname.to_lowercase() {
        defaults.push(("hostname-override".into(), nr.name.clone()));
    }
    if minor < 35 {
        let pause = crate::manifests::images(cfg)
            .into_iter()
            .find(|i| i.contains("/pause:"))
            .expect("pause image");
        defaults.push(("pod-infra-container-image".into(), pause));
    }
    defaults.retain(|(name, _)| !nr.kubelet_extra_args.iter().any(|a| &a.name == name));
    defaults.sort();
    let flags: Vec<String> = defaults
        .into_iter()
        .chain(
            nr.kubelet_extra_args
                .iter()
                .map(|a| (a.name.clone(), a.value.clone())),
        )
        .map(|(n, v)| format!("--{n}={v}"))
        .collect();
    format!(
        "KUBELET_KUBEADM_ARGS={}\n",
        serde_json::to_string(&flags.join(" ")).expect("a string")
    )
}

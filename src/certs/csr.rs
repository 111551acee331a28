//! `certs generate-csr`, for an external CA (kubeadm's external-CA mode): a private key and a
//! certificate signing request for every leaf certificate, from the config (not from existing
//! certificates), and for every kubeconfig a kubeconfig that holds its client key and no
//! certificate, beside `<file>.csr`. The signed certificates are the operator's to put in place.
//! Nothing that exists is overwritten.

use anyhow::{anyhow, bail, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rcgen::{CertificateParams, SanType};
use serde_json::json;

use crate::config::Config;
use crate::kubeconfig::plan::server_url;
use crate::manifests::to_yaml;
use crate::node::{File, Layout};
use crate::pki::{self, keys, Spec};

const KEY_MODE: u32 = 0o600;
const CSR_MODE: u32 = 0o644;

/// The PEM CSR of `spec` for `key`: its subject and SANs, as kubeadm asks.
fn request(spec: &Spec, key: &keys::Key) -> Result<String> {
    let mut params = CertificateParams::default();
    params.distinguished_name = pki::subject(spec)?;
    for name in &spec.dns {
        params
            .subject_alt_names
            .push(SanType::DnsName(name.clone().try_into()?));
    }
    for ip in &spec.ips {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    Ok(params.serialize_request(&key.pair)?.pem()?)
}

/// (what, files) for every leaf certificate under certificatesDir, then every kubeconfig under
/// `kubeconfig_dir`. An error when any of them exists already.
pub fn files(
    cfg: &Config,
    layout: &Layout,
    kubeconfig_dir: &std::path::Path,
) -> Result<Vec<(String, Vec<File>)>> {
    let leaves: Vec<pki::CertProfile> = pki::certificate_profiles()
        .into_iter()
        .filter(|p| !p.ca)
        .collect();
    let kubeconfigs = pki::kubeconfig_profiles();
    let mut keys = keys::generate_many(
        cfg.cluster.encryption_algorithm,
        leaves.len() + kubeconfigs.len(),
    )?
    .into_iter();
    let mut all = Vec::new();
    for p in &leaves {
        let key = keys.next().ok_or_else(|| anyhow!("key pool exhausted"))?;
        let (_, key_path) = layout.cert_and_key(&p.file);
        let csr_path = layout.pki_dir.join(format!("{}.csr", p.file));
        let csr = request(&pki::cert_spec(p, cfg), &key)?;
        all.push((
            p.file.clone(),
            vec![
                File::new(key_path, key.pem, KEY_MODE),
                File::new(csr_path, csr, CSR_MODE),
            ],
        ));
    }
    for k in &kubeconfigs {
        let key = keys.next().ok_or_else(|| anyhow!("key pool exhausted"))?;
        let spec = pki::kubeconfig_spec(k, cfg);
        let csr = request(&spec, &key)?;
        let conf = key_only_kubeconfig(cfg, &server_url(cfg, k), &spec.cn, &key.pem);
        let path = kubeconfig_dir.join(&k.file);
        let csr_path = kubeconfig_dir.join(format!("{}.csr", k.file));
        all.push((
            k.file.clone(),
            vec![
                File::new(path, conf, 0o600),
                File::new(csr_path, csr, CSR_MODE),
            ],
        ));
    }
    for (_, files) in &all {
        if let Some(f) = files.iter().find(|f| f.path.exists()) {
            bail!(crate::BadInput(format!(
                "{} exists already: generate-csr writes only new files",
                f.path.display()
            )));
        }
    }
    Ok(all)
}

/// A kubeconfig with the cluster's server, no CA and the client key alone, as kubeadm writes it
/// for an external CA to complete.
fn key_only_kubeconfig(cfg: &Config, server: &str, user: &str, key_pem: &str) -> String {
    let cluster = &cfg.cluster.cluster_name;
    let context = format!("{user}@{cluster}");
    to_yaml(json!({
        "apiVersion": "v1",
        "clusters": [{ "cluster": { "server": server }, "name": cluster }],
        "contexts": [{ "context": { "cluster": cluster, "user": user }, "name": context }],
        "current-context": context,
        "kind": "Config",
        "users": [{ "name": user, "user": { "client-key-data": STANDARD.encode(key_pem) } }],
    }))
}

//! `certs renew`, kubeadm's way (contract §9.1): a new private key, the existing certificate's
//! subject, SANs and usages, signed by the CA on disk, valid for `certificateValidityPeriod` from
//! now. What the config and the profile ask for is compared with what the certificate carries and
//! every difference is named (renewal keeps the certificate's own, as kubeadm does). CAs, `sa.*`
//! and kubelet.conf are never renewed, kubeforge's own kubeconfigs only where they exist; a
//! certificate whose CA key is absent (an external CA) is named as not renewable. Nothing is
//! written here: the files to write are returned.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::{Config, EncryptionAlgorithm};
use crate::kubeconfig::Kubeconfig;
use crate::manifests::Component;
use crate::node::{File, HostWriter, Layout};
use crate::pki::plan::{load_ca, read_pem};
use crate::pki::{self, keys, Ca, Spec, Usage, BACKDATE};

const CERT_MODE: u32 = 0o644;
const KEY_MODE: u32 = 0o600;

/// Where a renewable certificate lives.
#[derive(Debug, Clone)]
pub enum Source {
    /// `<certificatesDir>/<file>.crt` and `.key`.
    Pki(pki::CertProfile),
    /// The client certificate embedded in `<kubeconfig-dir>/<file>`.
    Kubeconfig(pki::KubeconfigProfile),
}

/// A certificate `certs renew` knows, under kubeadm's name.
#[derive(Debug, Clone)]
pub struct Item {
    /// `apiserver`, `admin.conf`, ….
    pub name: String,
    /// kubeadm's long name: `certificate for serving the Kubernetes API`.
    pub long_name: String,
    /// The profile name of the CA that signs it.
    pub ca: String,
    /// The static pods that read it.
    pub used_by: Vec<Component>,
    /// kubeforge's own static pods that read it (by pod name: kubeforge-approver).
    pub used_by_kubeforge: Vec<String>,
    /// The component whose upgrade renews it (kubeadm's `renewCertsByComponent`).
    pub upgraded_with: Option<Component>,
    pub source: Source,
}

fn components(names: &[String]) -> Vec<Component> {
    names
        .iter()
        .filter_map(|n| Component::from_name(n))
        .collect()
}

fn kubeconfig_item(k: pki::KubeconfigProfile) -> Option<Item> {
    Some(Item {
        name: k.file.clone(),
        long_name: k.renewal.clone()?,
        ca: "ca".into(),
        used_by: components(&k.used_by),
        used_by_kubeforge: k
            .used_by
            .iter()
            .filter(|n| Component::from_name(n).is_none())
            .cloned()
            .collect(),
        upgraded_with: k.used_by.first().and_then(|c| Component::from_name(c)),
        source: Source::Kubeconfig(k),
    })
}

/// kubeadm's renewable certificates for this config, sorted by name (the etcd ones only with a
/// local etcd).
pub fn items(cfg: &Config) -> Vec<Item> {
    let mut items: Vec<Item> = pki::plan::profiles_for(cfg)
        .into_iter()
        .filter_map(|p| {
            Some(Item {
                name: p.name.clone(),
                long_name: p.renewal.clone()?,
                ca: p.signer.clone()?,
                used_by: components(&p.used_by),
                used_by_kubeforge: Vec::new(),
                upgraded_with: p
                    .upgraded_with
                    .as_deref()
                    .or(p.used_by.first().map(String::as_str))
                    .and_then(Component::from_name),
                source: Source::Pki(p),
            })
        })
        .collect();
    items.extend(
        pki::kubeconfig_profiles()
            .into_iter()
            .filter_map(kubeconfig_item),
    );
    items.sort_by(|a, b| a.name.cmp(&b.name));
    items
}

/// `items`, and kubeforge's own kubeconfigs (profile hardened) that are in `kubeconfig_dir`: a
/// node without them (profile kubeadm, a kubeadm-built cluster) gets exactly kubeadm's list.
pub fn items_on_node(cfg: &Config, kubeconfig_dir: &std::path::Path) -> Vec<Item> {
    let mut items = items(cfg);
    items.extend(
        pki::all_kubeconfig_profiles()
            .into_iter()
            .filter(|k| k.hardened && kubeconfig_dir.join(&k.file).exists())
            .filter_map(kubeconfig_item),
    );
    items.sort_by(|a, b| a.name.cmp(&b.name));
    items
}

/// What renewing one item came to.
#[derive(Debug)]
pub enum Renewal {
    /// The files to write, and how the old certificate differed from what the config asks for.
    Renewed {
        files: Vec<File>,
        differences: Vec<String>,
    },
    /// Its CA's key is not on the node: it cannot be renewed here.
    ExternalCa,
    /// There is no such certificate on the node.
    Missing,
}

/// How the new keys are made: the config's `encryptionAlgorithm` when the config is the
/// cluster's (or the operator's file), else the algorithm of each existing key.
#[derive(Debug, Clone, Copy)]
pub enum KeyAlgorithm {
    Config(EncryptionAlgorithm),
    AsBefore,
}

/// Where the item's certificate is, as this run reads it.
fn location(item: &Item, layout: &Layout, kubeconfig_dir: &std::path::Path) -> PathBuf {
    match &item.source {
        Source::Pki(p) => layout.cert_and_key(&p.file).0,
        Source::Kubeconfig(k) => kubeconfig_dir.join(&k.file),
    }
}

/// Renews `item`; the files are not written.
pub fn renew(
    item: &Item,
    cfg: &Config,
    layout: &Layout,
    kubeconfig_dir: &std::path::Path,
    writer: &HostWriter,
    algorithm: KeyAlgorithm,
    now: OffsetDateTime,
) -> Result<Renewal> {
    let path = location(item, layout, kubeconfig_dir);
    let Some(text) = read_pem(writer, &path)? else {
        return Ok(Renewal::Missing);
    };
    let ca_file = pki::certificate_profiles()
        .into_iter()
        .find(|p| p.name == item.ca)
        .map(|p| p.file)
        .ok_or_else(|| anyhow!("no CA profile {}", item.ca))?;
    let ca = load_ca(writer, layout, &ca_file)?
        .ok_or_else(|| anyhow!("{}: its CA {} is not on the node", path.display(), item.ca))?;
    if ca.key.is_none() {
        return Ok(Renewal::ExternalCa);
    }
    let renewed = match &item.source {
        Source::Pki(p) => {
            let old_key = read_pem(writer, &layout.cert_and_key(&p.file).1)?;
            let (crt, key) = layout.cert_and_key(&p.file);
            let new = Fresh {
                cfg,
                ca: &ca,
                algorithm,
                now,
            };
            new.pki(p, &text, old_key.as_deref(), crt, key)
        }
        Source::Kubeconfig(k) => {
            let new = Fresh {
                cfg,
                ca: &ca,
                algorithm,
                now,
            };
            new.kubeconfig(k, &text, &path)
        }
    };
    renewed.with_context(|| format!("renewing {}", path.display()))
}

/// What a renewed certificate is made with.
struct Fresh<'a> {
    cfg: &'a Config,
    ca: &'a Ca,
    algorithm: KeyAlgorithm,
    now: OffsetDateTime,
}

impl Fresh<'_> {
    /// A new key and a certificate for what `cert_pem` carries.
    fn sign(&self, cert_pem: &str, old_key: Option<&str>) -> Result<(Spec, keys::Key, String)> {
        let existing = spec_of(cert_pem, self.cfg)?;
        let key = new_key(self.algorithm, old_key)?;
        let cert = pki::sign(
            &existing,
            &key,
            Some(self.ca),
            self.now - BACKDATE,
            self.now,
        )?;
        Ok((existing, key, cert))
    }

    fn pki(
        &self,
        p: &pki::CertProfile,
        cert_pem: &str,
        old_key: Option<&str>,
        crt: PathBuf,
        key_path: PathBuf,
    ) -> Result<Renewal> {
        let (existing, key, cert) = self.sign(cert_pem, old_key)?;
        Ok(Renewal::Renewed {
            files: vec![
                File::new(key_path, key.pem.as_bytes(), KEY_MODE),
                File::new(crt, cert, CERT_MODE),
            ],
            differences: differences(&existing, &pki::cert_spec(p, self.cfg)),
        })
    }

    fn kubeconfig(
        &self,
        k: &pki::KubeconfigProfile,
        text: &str,
        path: &std::path::Path,
    ) -> Result<Renewal> {
        let conf = Kubeconfig::parse(text.as_bytes())?;
        let (Some(cert_pem), old_key) = (conf.client_cert_pem(), conf.client_key_pem()) else {
            bail!("it has no embedded client certificate to renew");
        };
        let (existing, key, cert) = self.sign(&cert_pem, old_key.as_deref())?;
        let content = replace_embedded(text, &cert_pem, &cert, old_key.as_deref(), &key.pem)?;
        Ok(Renewal::Renewed {
            files: vec![File::new(path.to_path_buf(), content, k.mode)],
            differences: differences(&existing, &pki::kubeconfig_spec(k, self.cfg)),
        })
    }
}

/// The kubeconfig's text with its client certificate and key replaced, every other byte as it
/// was (whoever wrote the file).
fn replace_embedded(
    text: &str,
    old_cert: &str,
    new_cert: &str,
    old_key: Option<&str>,
    new_key: &str,
) -> Result<String> {
    let mut out = text.to_string();
    let mut swap = |old: &str, new: &str, what: &str| -> Result<()> {
        let (old, new) = (STANDARD.encode(old), STANDARD.encode(new));
        if out.matches(&old).count() != 1 {
            bail!("its {what} is not on one line of its own; renew it by hand");
        }
        out = out.replacen(&old, &new, 1);
        Ok(())
    };
    swap(old_cert, new_cert, "client-certificate-data")?;
    match old_key {
        Some(old) => swap(old, new_key, "client-key-data")?,
        None => bail!("it has no embedded client key"),
    }
    Ok(out)
}

/// A new key: the config's algorithm, or the one of `old_key` (RSA-2048 when it cannot tell);
/// from the keys `prefetch` started when they are of that algorithm.
fn new_key(algorithm: KeyAlgorithm, old_key: Option<&str>) -> Result<keys::Key> {
    let alg = match algorithm {
        KeyAlgorithm::Config(alg) => alg,
        KeyAlgorithm::AsBefore => old_key
            .and_then(|pem| keys::load(pem).ok())
            .and_then(|k| keys::algorithm_of(&k))
            .unwrap_or_default(),
    };
    keys::generate_many(alg, 1)?
        .pop()
        .ok_or_else(|| anyhow!("no key was made"))
}

/// Starts making `count` keys on every core for a renewal: of the config's algorithm, or of the
/// cluster CA's key's (the leaves' keys are made like it) when the config is not known.
pub fn prefetch(algorithm: KeyAlgorithm, layout: &Layout, count: usize) {
    let alg = match algorithm {
        KeyAlgorithm::Config(alg) => Some(alg),
        KeyAlgorithm::AsBefore => std::fs::read_to_string(layout.cert_and_key("ca").1)
            .ok()
            .and_then(|pem| keys::load(&pem).ok())
            .and_then(|k| keys::algorithm_of(&k)),
    };
    if let Some(alg) = alg {
        keys::prefetch(alg, count);
    }
}

/// What an existing certificate carries: its CN, O, DNS and IP SANs and extended key usages;
/// the validity is the config's.
fn spec_of(cert_pem: &str, cfg: &Config) -> Result<Spec> {
    let der = pki::pem_to_der(cert_pem, "CERTIFICATE")?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| anyhow!("{e}"))?;
    let text = |v: Vec<&str>| v.into_iter().map(str::to_string).collect::<Vec<_>>();
    let cn = text(
        cert.subject()
            .iter_common_name()
            .filter_map(|a| a.as_str().ok())
            .collect(),
    );
    let organizations = text(
        cert.subject()
            .iter_organization()
            .filter_map(|a| a.as_str().ok())
            .collect(),
    );
    let (dns, ips) = pki::cert_sans(&cert);
    let eku = cert.extended_key_usage().ok().flatten().map(|e| e.value);
    let mut usages = Vec::new();
    if eku.is_some_and(|e| e.server_auth) {
        usages.push(Usage::Server);
    }
    if eku.is_some_and(|e| e.client_auth) {
        usages.push(Usage::Client);
    }
    Ok(Spec {
        cn: cn.first().cloned().unwrap_or_default(),
        organizations,
        dns,
        ips,
        usages,
        is_ca: false,
        validity: cfg.cluster.certificate_validity_period.0,
    })
}

/// Every way the existing certificate differs from what the profile and the config ask for.
pub fn differences(existing: &Spec, wanted: &Spec) -> Vec<String> {
    let mut found = Vec::new();
    if existing.cn != wanted.cn {
        found.push(format!(
            "its common name is {:?}, the config asks for {:?}",
            existing.cn, wanted.cn
        ));
    }
    let set = |v: &[String]| v.iter().cloned().collect::<BTreeSet<_>>();
    if set(&existing.organizations) != set(&wanted.organizations) {
        found.push(format!(
            "its organizations are {:?}, the config asks for {:?}",
            existing.organizations, wanted.organizations
        ));
    }
    let ips = |v: &[IpAddr]| v.iter().map(|i| i.to_string()).collect::<BTreeSet<_>>();
    let (have, want) = (set(&existing.dns), set(&wanted.dns));
    let (have_ip, want_ip) = (ips(&existing.ips), ips(&wanted.ips));
    let lacks: Vec<&String> = want
        .difference(&have)
        .chain(want_ip.difference(&have_ip))
        .collect();
    if !lacks.is_empty() {
        found.push(format!("it lacks the SANs {lacks:?} the config asks for"));
    }
    let extra: Vec<&String> = have
        .difference(&want)
        .chain(have_ip.difference(&want_ip))
        .collect();
    if !extra.is_empty() {
        found.push(format!(
            "it carries the SANs {extra:?}, which the config does not ask for"
        ));
    }
    if existing.usages != wanted.usages {
        found.push(format!(
            "its extended key usages are {:?}, the profile asks for {:?}",
            existing.usages, wanted.usages
        ));
    }
    found
}

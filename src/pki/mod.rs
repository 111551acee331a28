//! The cluster PKI: which certificates exist and what they contain comes from the profiles in
//! `pki/` (compiled in); this module turns a profile plus the config into a certificate, and
//! checks an existing certificate against what its profile requires.

pub mod keys;
pub mod plan;

use anyhow::{anyhow, bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, SubjectPublicKeyInfo, X509Certificate};

use crate::config::Config;
use keys::Key;

const CERTIFICATES: &str = include_str!("../../pki/certificates.yaml");
const KUBECONFIGS: &str = include_str!("../../pki/kubeconfigs.yaml");

/// kubeadm back-dates NotBefore so that slightly skewed clocks accept new certificates.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Usage {
    Server,
    Client,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SanSet {
    #[default]
    None,
    Apiserver,
    EtcdServer,
    EtcdPeer,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertProfile {
    pub name: String,
    pub file: String,
    pub description: String,
    #[serde(default)]
    pub ca: bool,
    pub signer: Option<String>,
    pub cn: String,
    #[serde(default)]
    pub organizations: Vec<String>,
    #[serde(default)]
    pub usages: Vec<Usage>,
    #[serde(default)]
    pub sans: SanSet,
    #[serde(default)]
    pub etcd: bool,
    /// kubeadm's long name in `certs renew`; None: never renewed (a CA).
    #[serde(default)]
    pub renewal: Option<String>,
    /// The static pods that read the file (by component name).
    #[serde(default)]
    pub used_by: Vec<String>,
    /// The component whose upgrade renews it, when not the first of `used_by`.
    #[serde(default)]
    pub upgraded_with: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerKind {
    ControlPlaneEndpoint,
    Local,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeconfigProfile {
    pub name: String,
    pub file: String,
    pub description: String,
    pub cn: String,
    #[serde(default)]
    pub organizations: Vec<String>,
    pub server: ServerKind,
    /// kubeadm's long name in `certs renew`; None: never renewed (kubelet.conf).
    #[serde(default)]
    pub renewal: Option<String>,
    /// The static pods that read the file (by component name).
    #[serde(default)]
    pub used_by: Vec<String>,
    /// kubeforge's own (profile hardened), not one of kubeadm's kubeconfigs.
    #[serde(default)]
    pub hardened: bool,
    #[serde(default = "kubeconfig_mode")]
    pub mode: u32,
}

fn kubeconfig_mode() -> u32 {
    0o600
}

pub fn certificate_profiles() -> Vec<CertProfile> {
    serde_yaml::from_str(CERTIFICATES).expect("pki/certificates.yaml is valid (unit-tested)")
}

/// On a node with no PKI and no kubeconfigs yet, starts making every key a whole `init` needs,
/// so that the RSA prime search runs while preflight does.
pub fn prefetch_keys(cfg: &Config, layout: &crate::node::Layout, skip: &[String]) {
    if skip
        .iter()
        .any(|s| s.starts_with("certs") || s.starts_with("kubeconfig"))
    {
        return;
    }
    let profiles = kubeconfig_profiles();
    let fresh = !layout.pki_dir.join("ca.crt").exists()
        && profiles
            .iter()
            .all(|p| !layout.kubeconfig(&p.file).exists());
    if !fresh {
        return;
    }
    let certificates = certificate_profiles()
        .iter()
        .filter(|p| !(p.etcd && cfg.cluster.is_external_etcd()))
        .count();
    // + sa.key
    keys::prefetch(
        cfg.cluster.encryption_algorithm,
        certificates + 1 + profiles.len(),
    );
}

/// kubeadm's kubeconfigs.
pub fn kubeconfig_profiles() -> Vec<KubeconfigProfile> {
    let mut all = all_kubeconfig_profiles();
    all.retain(|p| !p.hardened);
    all
}

/// kubeadm's kubeconfigs and kubeforge's own (`hardened: true`).
pub fn all_kubeconfig_profiles() -> Vec<KubeconfigProfile> {
    serde_yaml::from_str(KUBECONFIGS).expect("pki/kubeconfigs.yaml is valid (unit-tested)")
}

/// What one certificate must contain, resolved for this node's config.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub cn: String,
    pub organizations: Vec<String>,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub usages: Vec<Usage>,
    pub is_ca: bool,
    pub validity: Duration,
}

fn node_template(s: &str, cfg: &Config) -> String {
    s.replace("{node}", &cfg.init.node_registration.name)
}

pub fn cert_spec(profile: &CertProfile, cfg: &Config) -> Spec {
    let cn = node_template(&profile.cn, cfg);
    let (dns, ips) = if profile.ca {
        (vec![cn.clone()], vec![])
    } else {
        sans(profile.sans, cfg)
    };
    let validity = if profile.ca {
        cfg.cluster.ca_certificate_validity_period.0
    } else {
        cfg.cluster.certificate_validity_period.0
    };
    Spec {
        cn,
        organizations: profile
            .organizations
            .iter()
            .map(|o| node_template(o, cfg))
            .collect(),
        dns,
        ips,
        usages: profile.usages.clone(),
        is_ca: profile.ca,
        validity,
    }
}

pub fn kubeconfig_spec(profile: &KubeconfigProfile, cfg: &Config) -> Spec {
    Spec {
        cn: node_template(&profile.cn, cfg),
        organizations: profile
            .organizations
            .iter()
            .map(|o| node_template(o, cfg))
            .collect(),
        dns: vec![],
        ips: vec![],
        usages: vec![Usage::Client],
        is_ca: false,
        validity: cfg.cluster.certificate_validity_period.0,
    }
}

/// SANs as kubeadm derives them (contract 1.3): DNS names lower-cased, de-duplicated and sorted;
/// IPs de-duplicated in first-seen order.
fn sans(set: SanSet, cfg: &Config) -> (Vec<String>, Vec<IpAddr>) {
    let node = cfg.init.node_registration.name.clone();
    let adv: Option<IpAddr> = cfg.init.local_api_endpoint.advertise_address.parse().ok();
    let mut dns = BTreeSet::new();
    let mut ips: Vec<IpAddr> = Vec::new();
    let add_ip = |ips: &mut Vec<IpAddr>, ip: IpAddr| {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    };
    let add_extra = |dns: &mut BTreeSet<String>, ips: &mut Vec<IpAddr>, entry: &str| match entry
        .parse::<IpAddr>(
    ) {
        Ok(ip) => add_ip(ips, ip),
        Err(_) => {
            dns.insert(entry.to_string());
        }
    };
    match set {
        SanSet::None => {}
        SanSet::Apiserver => {
            let domain = &cfg.cluster.networking.dns_domain;
            dns.extend([
                node,
                "kubernetes".into(),
                "kubernetes.default".into(),
                "kubernetes.default.svc".into(),
                format!("kubernetes.default.svc.{domain}"),
            ]);
            add_ip(&mut ips, cfg.cluster.service_vip());
            if let Some(adv) = adv {
                add_ip(&mut ips, adv);
            }
            if let Some(host) = cfg.control_plane_endpoint_host() {
                add_extra(&mut dns, &mut ips, &host);
            }
            for san in &cfg.cluster.api_server.cert_sans {
                add_extra(&mut dns, &mut ips, &san.to_lowercase());
            }
        }
        SanSet::EtcdServer | SanSet::EtcdPeer => {
            dns.extend([node, "localhost".into()]);
            if let Some(adv) = adv {
                add_ip(&mut ips, adv);
            }
            add_ip(&mut ips, "127.0.0.1".parse().expect("literal"));
            add_ip(&mut ips, "::1".parse().expect("literal"));
            if let Some(local) = &cfg.cluster.etcd.local {
                let extra = if set == SanSet::EtcdServer {
                    &local.server_cert_sans
                } else {
                    &local.peer_cert_sans
                };
                for san in extra {
                    add_extra(&mut dns, &mut ips, san);
                }
            }
        }
    }
    (dns.into_iter().collect(), ips)
}

/// A CA as loaded from disk or just made: its certificate and, unless externally managed, its key.
pub struct Ca {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    pub key: Option<Key>,
    pub not_before: OffsetDateTime,
}

impl Ca {
    pub fn from_pem(cert_pem: &str, key: Option<Key>) -> Result<Ca> {
        let der = pem_to_der(cert_pem, "CERTIFICATE")?;
        let (_, cert) = X509Certificate::from_der(&der).map_err(|e| anyhow!("{e}"))?;
        let not_before = cert.validity().not_before.to_datetime();
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            cert_der: der,
            key,
            not_before,
        })
    }
}

pub fn pem_to_der(text: &str, tag: &str) -> Result<Vec<u8>> {
    let p = pem::parse(text).context("parsing PEM")?;
    if p.tag() != tag {
        bail!("expected a PEM block of type {tag}, found {}", p.tag());
    }
    Ok(p.into_contents())
}

/// The subject CN of the first certificate in `cert_pem`.
pub fn common_name(cert_pem: &str) -> Result<String> {
    let der = pem_to_der(cert_pem, "CERTIFICATE")?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| anyhow!("{e}"))?;
    let cn = cert.subject().iter_common_name().next();
    Ok(cn
        .and_then(|c| c.as_str().ok())
        .unwrap_or_default()
        .to_string())
}

fn random_serial() -> SerialNumber {
    // Go's kubeadm: uniform in [1, 2^63-1).
    let n = rand::random_range(1..(i64::MAX as u64));
    SerialNumber::from(n)
}

/// `O=…, O=…, CN=…`. rcgen keeps one value per attribute type, so a second organization goes in
/// as the same OID under rcgen's custom type; a third cannot be written.
pub fn subject(spec: &Spec) -> Result<DistinguishedName> {
    let mut dn = DistinguishedName::new();
    for (i, o) in spec.organizations.iter().enumerate() {
        let ty = match i {
            0 => DnType::OrganizationName,
            1 => DnType::CustomDnType(vec![2, 5, 4, 10]),
            _ => bail!("at most two organizations (O) fit in a certificate kubeforge makes; {:?} asks for {}", spec.cn, spec.organizations.len()),
        };
        dn.push(ty, o.as_str());
    }
    dn.push(DnType::CommonName, spec.cn.as_str());
    Ok(dn)
}

/// Signs `spec` for `key`: self-signed when `issuer` is None, else by that CA.
/// `not_before` is back-dated by the caller; NotAfter is `now + validity` as in kubeadm.
pub fn sign(
    spec: &Spec,
    key: &Key,
    issuer: Option<&Ca>,
    not_before: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<String> {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(spec)?;
    params.not_before = not_before;
    params.not_after = now + spec.validity;
    params.serial_number = Some(random_serial());
    for name in &spec.dns {
        params
            .subject_alt_names
            .push(SanType::DnsName(name.clone().try_into()?));
    }
    for ip in &spec.ips {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    if spec.is_ca {
        params.key_usages.push(KeyUsagePurpose::KeyCertSign);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    } else {
        // rcgen's ExplicitNoCa would add a SubjectKeyIdentifier, which kubeadm's leaves do not
        // carry: write BasicConstraints (critical, empty SEQUENCE = CA:FALSE) ourselves.
        params.is_ca = IsCa::NoCa;
        let mut bc = CustomExtension::from_oid_content(&[2, 5, 29, 19], vec![0x30, 0x00]);
        bc.set_criticality(true);
        params.custom_extensions.push(bc);
        params.use_authority_key_identifier_extension = true;
    }
    for usage in &spec.usages {
        params.extended_key_usages.push(match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        });
    }
    let cert = match issuer {
        None => params.self_signed(&key.pair)?,
        Some(ca) => {
            let ca_key = ca
                .key
                .as_ref()
                .ok_or_else(|| anyhow!("the CA key is not available (external CA)"))?;
            let issuer = Issuer::from_ca_cert_der(&ca.cert_der.clone().into(), &ca_key.pair)?;
            params.signed_by(&key.pair, &issuer)?
        }
    };
    Ok(cert.pem())
}

/// Everything that makes an existing certificate unusable for `spec`, as sentences.
/// For a CA (`spec.is_ca`) only what kubeadm relies on is required: the CA flag, a matching key
/// and validity — an operator's own CA (another subject, an intermediate) is welcome.
pub fn check(
    cert_pem: &str,
    key: Option<&Key>,
    spec: &Spec,
    issuer_der: Option<&[u8]>,
    now: OffsetDateTime,
) -> Result<Vec<String>> {
    let der = pem_to_der(cert_pem, "CERTIFICATE")?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| anyhow!("{e}"))?;
    let mut problems = Vec::new();

    let not_after = cert.validity().not_after.to_datetime();
    if not_after <= now {
        problems.push(format!("it expired on {}", human_time(not_after)));
    }
    if cert.is_ca() != spec.is_ca {
        problems.push(format!(
            "its CA flag is {}, expected {}",
            cert.is_ca(),
            spec.is_ca
        ));
    }
    if let Some(key) = key {
        if key.pair.subject_public_key_info() != cert.public_key().raw {
            problems.push("its private key does not belong to it".into());
        }
    }
    if spec.is_ca {
        return Ok(problems);
    }
    check_subject(&cert, spec, &mut problems);
    check_sans_and_usages(&cert, spec, &mut problems);
    if let Some(issuer_der) = issuer_der {
        let (_, signer) = X509Certificate::from_der(issuer_der).map_err(|e| anyhow!("{e}"))?;
        if let Err(why) = verify_signature(&cert, signer.public_key()) {
            problems.push(format!(
                "it is not signed by the expected CA \"{}\" ({why})",
                signer.subject()
            ));
        }
    }
    Ok(problems)
}

/// Its common name and organizations are the spec's.
fn check_subject(cert: &X509Certificate, spec: &Spec, problems: &mut Vec<String>) {
    let cn: Vec<_> = cert
        .subject()
        .iter_common_name()
        .filter_map(|a| a.as_str().ok())
        .collect();
    if cn != [spec.cn.as_str()] {
        problems.push(format!(
            "its common name is {cn:?}, expected \"{}\"",
            spec.cn
        ));
    }
    let mut orgs: Vec<_> = cert
        .subject()
        .iter_organization()
        .filter_map(|a| a.as_str().ok().map(str::to_string))
        .collect();
    orgs.sort();
    let mut want_orgs = spec.organizations.clone();
    want_orgs.sort();
    if orgs != want_orgs {
        problems.push(format!(
            "its organizations are {orgs:?}, expected {want_orgs:?}"
        ));
    }
}

/// It carries at least the spec's SANs, and its extended key usages.
fn check_sans_and_usages(cert: &X509Certificate, spec: &Spec, problems: &mut Vec<String>) {
    let (have_dns, have_ips) = cert_sans(cert);
    let missing_dns: Vec<_> = spec.dns.iter().filter(|d| !have_dns.contains(d)).collect();
    let missing_ips: Vec<_> = spec.ips.iter().filter(|i| !have_ips.contains(i)).collect();
    if !missing_dns.is_empty() || !missing_ips.is_empty() {
        problems.push(format!(
            "its SANs lack DNS names {missing_dns:?} and IPs {:?} (it has DNS {have_dns:?}, IPs {:?})",
            missing_ips.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
            have_ips.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
        ));
    }
    let eku = cert.extended_key_usage().ok().flatten().map(|e| e.value);
    for usage in &spec.usages {
        let ok = match usage {
            Usage::Server => eku.is_some_and(|e| e.server_auth),
            Usage::Client => eku.is_some_and(|e| e.client_auth),
        };
        if !ok {
            problems.push(format!("its extended key usage lacks {usage:?}Auth").to_lowercase());
        }
    }
}

pub fn cert_sans(cert: &X509Certificate) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::IPAddress(raw) => match raw.len() {
                    4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*raw).expect("len 4"))),
                    16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*raw).expect("len 16"))),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    (dns, ips)
}

/// Verifies `cert`'s signature with `signer_spki` through aws-lc-rs.
pub fn verify_signature(cert: &X509Certificate, signer_spki: &SubjectPublicKeyInfo) -> Result<()> {
    use aws_lc_rs::signature as sig;
    let alg = cert.signature_algorithm.algorithm.to_id_string();
    let curve = signer_spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    let verifier: &dyn sig::VerificationAlgorithm = match (alg.as_str(), curve.as_deref()) {
        ("1.2.840.113549.1.1.11", _) => &sig::RSA_PKCS1_2048_8192_SHA256,
        ("1.2.840.113549.1.1.12", _) => &sig::RSA_PKCS1_2048_8192_SHA384,
        ("1.2.840.113549.1.1.13", _) => &sig::RSA_PKCS1_2048_8192_SHA512,
        ("1.2.840.10045.4.3.2", Some("1.2.840.10045.3.1.7")) => &sig::ECDSA_P256_SHA256_ASN1,
        ("1.2.840.10045.4.3.2", Some("1.3.132.0.34")) => &sig::ECDSA_P384_SHA256_ASN1,
        ("1.2.840.10045.4.3.3", Some("1.2.840.10045.3.1.7")) => &sig::ECDSA_P256_SHA384_ASN1,
        ("1.2.840.10045.4.3.3", Some("1.3.132.0.34")) => &sig::ECDSA_P384_SHA384_ASN1,
        (other, _) => bail!("unsupported signature algorithm {other}"),
    };
    sig::UnparsedPublicKey::new(verifier, &signer_spki.subject_public_key.data)
        .verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
        .map_err(|_| anyhow!("signature verification failed"))
}

/// `Nov 22, 2027 09:05 UTC`, as kubeadm prints expiry dates.
pub fn human_time(t: OffsetDateTime) -> String {
    t.format(time::macros::format_description!(
        "[month repr:short] [day], [year] [hour]:[minute] UTC"
    ))
    .expect("static format")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_profiles_parse_and_follow_kubeadm_order() {
        let names: Vec<_> = certificate_profiles().into_iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            [
                "ca",
                "apiserver",
                "apiserver-kubelet-client",
                "front-proxy-ca",
                "front-proxy-client",
                "etcd-ca",
                "etcd-server",
                "etcd-peer",
                "etcd-healthcheck-client",
                "apiserver-etcd-client"
            ]
        );
        let profiles = certificate_profiles();
        for p in &profiles {
            assert_eq!(p.ca, p.signer.is_none(), "{}", p.name);
            if let Some(s) = &p.signer {
                assert!(profiles.iter().any(|c| &c.name == s && c.ca), "{}", p.name);
            }
        }
        let confs: Vec<_> = kubeconfig_profiles().into_iter().map(|p| p.name).collect();
        assert_eq!(
            confs,
            [
                "admin",
                "super-admin",
                "kubelet",
                "controller-manager",
                "scheduler"
            ]
        );
        let modes: Vec<_> = all_kubeconfig_profiles()
            .into_iter()
            .map(|p| (p.name, p.mode))
            .filter(|(_, mode)| *mode != 0o600)
            .collect();
        assert_eq!(modes, [("kubeforge-approver".to_string(), 0o640)]);
    }
}

//! The certificates of a node, check-then-write: every existing certificate is checked against its
//! profile before anything is written (a problem stops the run with what differs, nothing
//! written); then the missing keys are made on every core at once, and the missing certificates
//! signed one by one, in kubeadm's order, as the files to write.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::json;
use time::OffsetDateTime;

use super::{cert_spec, certificate_profiles, check, keys, sign, Ca, CertProfile, BACKDATE};
use crate::config::Config;
use crate::node::{File, HostWriter, Layout};
use crate::output::Output;

const CERT_MODE: u32 = 0o644;
const KEY_MODE: u32 = 0o600;

/// The name of the service-account key pair among the certificates' names (kubeadm's `certs sa`).
pub const SA: &str = "sa";

/// What a run does for the certificates it was asked for.
pub struct Plan {
    /// The certificates asked for, in kubeadm's order, and whether each is made (else kept).
    certificates: Vec<(CertProfile, bool)>,
    /// The service-account key, when asked for: None to make, else the existing key's PEM.
    sa: Option<Option<String>>,
    /// Every CA on disk or made by this plan: a leaf is signed by its CA whether or not the CA
    /// itself was asked for.
    cas: HashMap<String, Ca>,
    keys: std::vec::IntoIter<keys::Key>,
    now: OffsetDateTime,
}

/// A file's content as text, as this run sees it (a dry-run sees what it wrote already).
pub fn read_pem(writer: &HostWriter, path: &Path) -> Result<Option<String>> {
    writer
        .read(path)?
        .map(|b| {
            String::from_utf8(b).map_err(|_| anyhow!("{} is not a PEM text file", path.display()))
        })
        .transpose()
}

/// A CA from disk: its certificate and, unless it is externally managed, its key.
pub fn load_ca(writer: &HostWriter, layout: &Layout, file: &str) -> Result<Option<Ca>> {
    let (crt, key) = layout.cert_and_key(file);
    let Some(cert_pem) = read_pem(writer, &crt)? else {
        return Ok(None);
    };
    let key = read_pem(writer, &key)?
        .as_deref()
        .map(keys::load)
        .transpose()
        .with_context(|| key.display().to_string())?;
    Ca::from_pem(&cert_pem, key)
        .map(Some)
        .map_err(|e| anyhow!("loading {}: {e:#}", crt.display()))
}

/// The cluster CA (`ca.crt`, `ca.key`), which signs the kubeconfigs' client certificates.
pub fn load_cluster_ca(writer: &HostWriter, layout: &Layout) -> Result<Ca> {
    load_ca(writer, layout, "ca")?.ok_or_else(|| {
        anyhow!(
            "{} does not exist: run `kubeforge init phase certs ca` first",
            layout.cert_and_key("ca").0.display()
        )
    })
}

/// The certificate profiles a node has: the etcd ones only with a local etcd.
pub fn profiles_for(cfg: &Config) -> Vec<CertProfile> {
    certificate_profiles()
        .into_iter()
        .filter(|p| !(p.etcd && cfg.cluster.is_external_etcd()))
        .collect()
}

impl Plan {
    /// Checks what exists of `names` (certificate profile names and [`SA`]), then makes the keys
    /// of what is missing. Nothing is written.
    pub fn new(
        cfg: &Config,
        layout: &Layout,
        writer: &HostWriter,
        out: &Output,
        names: &[String],
        now: OffsetDateTime,
    ) -> Result<Plan> {
        let mut cas = HashMap::new();
        for p in certificate_profiles().iter().filter(|p| p.ca) {
            if let Some(ca) = load_ca(writer, layout, &p.file)? {
                cas.insert(p.name.clone(), ca);
            }
        }
        for p in certificate_profiles() {
            if p.etcd && cfg.cluster.is_external_etcd() && names.contains(&p.name) {
                let what = if p.ca {
                    "certificate authority"
                } else {
                    "certificate"
                };
                out.step(
                    "certs",
                    &format!("External etcd mode: Skipping {} {what} generation", p.file),
                    json!({ "certificate": p.name, "skipped": true }),
                );
            }
        }
        let selected: Vec<CertProfile> = profiles_for(cfg)
            .into_iter()
            .filter(|p| names.contains(&p.name))
            .collect();
        let mut problems = Vec::new();
        let mut certificates = Vec::new();
        for p in &selected {
            let missing =
                check_existing(cfg, layout, writer, p, &cas, &selected, now, &mut problems)?;
            certificates.push((p.clone(), missing));
        }
        let sa = if names.iter().any(|n| n == SA) {
            Some(read_pem(writer, &layout.pki_dir.join("sa.key"))?)
        } else {
            None
        };
        if !problems.is_empty() {
            bail!(
                "the PKI in {} cannot be used as it is:\n  - {}\nFix the config, or move those files away to have them regenerated.",
                layout.pki_dir.display(),
                problems.join("\n  - ")
            );
        }
        let count = certificates.iter().filter(|(_, make)| *make).count()
            + usize::from(matches!(sa, Some(None)));
        let keys = keys::generate_many(cfg.cluster.encryption_algorithm, count)?.into_iter();
        Ok(Plan {
            certificates,
            sa,
            cas,
            keys,
            now,
        })
    }

    /// The names this plan covers, in order.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .certificates
            .iter()
            .map(|(p, _)| p.name.clone())
            .collect();
        names.extend(self.sa.as_ref().map(|_| SA.to_string()));
        names
    }

    fn next_key(&mut self) -> Result<keys::Key> {
        self.keys
            .next()
            .ok_or_else(|| anyhow!("key pool exhausted"))
    }

    /// The files of `name` to write (none for a certificate that is kept), its lines printed.
    pub fn files(
        &mut self,
        cfg: &Config,
        layout: &Layout,
        out: &Output,
        name: &str,
    ) -> Result<Vec<File>> {
        if name == SA {
            return self.sa_files(layout, out);
        }
        let Some((p, make)) = self
            .certificates
            .iter()
            .find(|(p, _)| p.name == name)
            .cloned()
        else {
            return Ok(Vec::new());
        };
        if !make {
            let line = if p.ca {
                format!("Using existing {} certificate authority", p.file)
            } else {
                format!("Using existing {} certificate and key on disk", p.file)
            };
            out.step(
                "certs",
                &line,
                json!({ "certificate": p.name, "action": "existing" }),
            );
            return Ok(Vec::new());
        }
        let key = self.next_key()?;
        let spec = cert_spec(&p, cfg);
        let issuer = p
            .signer
            .as_ref()
            .map(|s| self.cas.get(s).expect("checked in new"));
        let cert_pem = sign(&spec, &key, issuer, self.now - BACKDATE, self.now)?;
        let (crt, key_path) = layout.cert_and_key(&p.file);
        out.step(
            "certs",
            &format!("Generating {:?} certificate and key", p.file),
            json!({
                "certificate": p.name,
                "action": "generate",
                "path": crt,
                "algorithm": cfg.cluster.encryption_algorithm.as_str(),
            }),
        );
        if !spec.dns.is_empty() && !p.ca {
            let ips: Vec<_> = spec.ips.iter().map(|i| i.to_string()).collect();
            out.step(
                "certs",
                &format!(
                    "{} serving cert is signed for DNS names [{}] and IPs [{}]",
                    p.file,
                    spec.dns.join(" "),
                    ips.join(" ")
                ),
                json!({ "certificate": p.name, "dnsNames": spec.dns, "ips": ips }),
            );
        }
        let files = vec![
            File::new(key_path, key.pem.as_bytes(), KEY_MODE),
            File::new(crt, cert_pem.as_bytes(), CERT_MODE),
        ];
        if p.ca {
            self.cas
                .insert(p.name.clone(), Ca::from_pem(&cert_pem, Some(key))?);
        }
        Ok(files)
    }

    fn sa_files(&mut self, layout: &Layout, out: &Output) -> Result<Vec<File>> {
        let Some(existing) = self.sa.clone() else {
            return Ok(Vec::new());
        };
        let key_path = layout.pki_dir.join("sa.key");
        let mut files = Vec::new();
        let key = match existing {
            None => {
                out.step(
                    "certs",
                    "Generating \"sa\" key and public key",
                    json!({ "certificate": "sa", "action": "generate" }),
                );
                let key = self.next_key()?;
                files.push(File::new(key_path, key.pem.as_bytes(), KEY_MODE));
                key
            }
            Some(pem) => {
                out.step(
                    "certs",
                    "Using the existing \"sa\" key",
                    json!({ "certificate": "sa", "action": "existing" }),
                );
                keys::load(&pem).with_context(|| key_path.display().to_string())?
            }
        };
        files.push(File::new(
            layout.pki_dir.join("sa.pub"),
            keys::public_pem(&key).as_bytes(),
            KEY_MODE,
        ));
        Ok(files)
    }
}

/// Checks profile `p` on disk: true when it is missing (to be made); what makes an existing one
/// unusable goes to `problems`.
#[allow(clippy::too_many_arguments)]
fn check_existing(
    cfg: &Config,
    layout: &Layout,
    writer: &HostWriter,
    p: &CertProfile,
    cas: &HashMap<String, Ca>,
    selected: &[CertProfile],
    now: OffsetDateTime,
    problems: &mut Vec<String>,
) -> Result<bool> {
    let (crt, key) = layout.cert_and_key(&p.file);
    let Some(cert_pem) = read_pem(writer, &crt)? else {
        if let Some(signer) = &p.signer {
            match cas.get(signer) {
                Some(ca) if ca.key.is_none() => problems.push(format!(
                    "{} is missing and cannot be signed: {signer} is an external CA (its key is absent)",
                    crt.display()
                )),
                None if !selected.iter().any(|s| &s.name == signer) => problems.push(format!(
                    "{} cannot be signed: its CA {signer} does not exist yet (run `kubeforge init phase certs {signer}` first)",
                    crt.display()
                )),
                _ => {}
            }
        }
        return Ok(true);
    };
    let key_pem = read_pem(writer, &key)?;
    if key_pem.is_none() && !p.ca {
        problems.push(format!(
            "{} exists but its key {} does not",
            crt.display(),
            key.display()
        ));
        return Ok(false);
    }
    let key = key_pem
        .as_deref()
        .map(keys::load)
        .transpose()
        .with_context(|| key.display().to_string())?;
    let issuer = match &p.signer {
        None => None,
        Some(s) => match cas.get(s) {
            Some(ca) => Some(ca.cert_der.as_slice()),
            None => {
                problems.push(format!(
                    "{} exists but its CA {s} does not; remove it to have both regenerated",
                    crt.display()
                ));
                return Ok(false);
            }
        },
    };
    let found = check(&cert_pem, key.as_ref(), &cert_spec(p, cfg), issuer, now)
        .with_context(|| format!("{} is not a usable certificate", crt.display()))?;
    if !found.is_empty() {
        problems.push(format!(
            "existing certificate {:?} ({}) does not match what the config requires: {}",
            p.name,
            crt.display(),
            found.join("; ")
        ));
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{Format, Output};

    /// A node under a temp dir, its config for node `node`, and an open host writer.
    fn node(root: &Path, node: &str) -> (Config, Layout, HostWriter) {
        let text = format!(
            "apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\nlocalAPIEndpoint:\n  advertiseAddress: 192.0.2.2\nnodeRegistration:\n  name: {node}\n---\napiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nkubernetesVersion: v1.35.6\nencryptionAlgorithm: ECDSA-P256\ncertificatesDir: {}/pki\n",
            root.display()
        );
        let cfg = crate::config::load_str(&text, "t.yaml", &Default::default(), root).unwrap();
        let layout = Layout::new(
            root,
            &root.join("kubelet"),
            &root.join("pki"),
            &root.join("etcd"),
        );
        let writer = HostWriter::open(&layout, false).unwrap();
        (cfg, layout, writer)
    }

    fn all_names() -> Vec<String> {
        let mut names: Vec<String> = certificate_profiles().into_iter().map(|p| p.name).collect();
        names.push(SA.into());
        names
    }

    fn quiet() -> Output {
        Output {
            format: Format::Json,
        }
    }

    /// Makes every file of `plan` and writes it; the number of files written.
    fn write_all(plan: &mut Plan, cfg: &Config, layout: &Layout, writer: &mut HostWriter) -> usize {
        let mut written = 0;
        for name in plan.names() {
            for file in plan.files(cfg, layout, &quiet(), &name).unwrap() {
                writer.write(&file.path, &file.contents, file.mode).unwrap();
                written += 1;
            }
        }
        written
    }

    #[test]
    fn a_fresh_node_gets_every_file_and_a_second_plan_keeps_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, layout, mut writer) = node(dir.path(), "cp1");
        let now = OffsetDateTime::now_utc();
        let mut plan = Plan::new(&cfg, &layout, &writer, &quiet(), &all_names(), now).unwrap();
        assert_eq!(plan.names(), all_names());
        // 10 certificates with their keys, sa.key and sa.pub.
        assert_eq!(write_all(&mut plan, &cfg, &layout, &mut writer), 22);
        let mut again = Plan::new(&cfg, &layout, &writer, &quiet(), &all_names(), now).unwrap();
        assert_eq!(
            write_all(&mut again, &cfg, &layout, &mut writer),
            1,
            "only sa.pub, unchanged"
        );
        let ca = load_cluster_ca(&writer, &layout).unwrap();
        assert!(ca.key.is_some());
    }

    #[test]
    fn a_certificate_for_another_node_is_refused_before_anything_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, layout, mut writer) = node(dir.path(), "cp1");
        let now = OffsetDateTime::now_utc();
        let mut plan = Plan::new(&cfg, &layout, &writer, &quiet(), &all_names(), now).unwrap();
        write_all(&mut plan, &cfg, &layout, &mut writer);
        drop(writer);
        let (other, layout, writer) = node(dir.path(), "cp2");
        let e = Plan::new(&other, &layout, &writer, &quiet(), &all_names(), now)
            .err()
            .expect("cp1's certificates do not fit cp2");
        let text = format!("{e:#}");
        assert!(
            text.contains("existing certificate \"apiserver\""),
            "{text}"
        );
        assert!(text.contains("expected \"cp2\""), "{text}");
    }

    #[test]
    fn an_external_ca_cannot_sign_a_missing_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, layout, mut writer) = node(dir.path(), "cp1");
        let now = OffsetDateTime::now_utc();
        let ca = vec!["ca".to_string()];
        let mut plan = Plan::new(&cfg, &layout, &writer, &quiet(), &ca, now).unwrap();
        write_all(&mut plan, &cfg, &layout, &mut writer);
        std::fs::remove_file(layout.pki_dir.join("ca.key")).unwrap();
        let apiserver = vec!["apiserver".to_string()];
        let e = Plan::new(&cfg, &layout, &writer, &quiet(), &apiserver, now)
            .err()
            .expect("no CA key");
        assert!(format!("{e:#}").contains("ca is an external CA"), "{e:#}");
        assert!(!layout.pki_dir.join("apiserver.crt").exists());
    }
}

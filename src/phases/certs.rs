//! `certs`: the cluster PKI. Existing certificates are checked against their profiles first,
//! before anything is written; then the missing keys are generated on every core and the
//! missing certificates signed in kubeadm's order.

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::json;
use std::collections::HashMap;

use super::{Context, Phase, Selection};
use crate::pki::{self, keys, Ca, CertProfile};

pub const PHASE: Phase = Phase {
    name: "certs",
    description: "Certificate generation",
    subphases,
    run,
};

fn subphases() -> Vec<(String, String)> {
    let mut subs: Vec<_> = pki::certificate_profiles()
        .into_iter()
        .map(|p| (p.name, format!("Generate {}", p.description)))
        .collect();
    subs.push((
        "sa".into(),
        "Generate a private key for signing service account tokens along with its public key"
            .into(),
    ));
    subs
}

const CERT_MODE: u32 = 0o644;
const KEY_MODE: u32 = 0o600;

fn run(ctx: &mut Context, sel: &Selection) -> Result<()> {
    let pki_dir = ctx.layout.pki_dir.clone();
    ctx.out.step(
        "certs",
        &format!(
            "Using certificateDir folder {:?}",
            pki_dir.display().to_string()
        ),
        json!({ "certificatesDir": pki_dir }),
    );
    let external_etcd = ctx.cfg.cluster.is_external_etcd();
    let profiles = pki::certificate_profiles();

    // Every CA on disk, whether selected or not: a single leaf sub-phase signs with it.
    let mut cas: HashMap<String, Ca> = HashMap::new();
    for p in profiles.iter().filter(|p| p.ca) {
        if let Some(ca) = load_ca(ctx, p)? {
            cas.insert(p.name.clone(), ca);
        }
    }

    let mut selected = Vec::new();
    for p in &profiles {
        if !sel.wants(&p.name) {
            continue;
        }
        if p.etcd && external_etcd {
            let what = if p.ca {
                "certificate authority"
            } else {
                "certificate"
            };
            ctx.out.step(
                "certs",
                &format!("External etcd mode: Skipping {} {what} generation", p.file),
                json!({ "certificate": p.name, "skipped": true }),
            );
            continue;
        }
        selected.push(p);
    }

    // Check everything that exists before writing anything.
    let mut problems = Vec::new();
    let mut to_generate = Vec::new();
    for p in &selected {
        let (crt, key) = ctx.layout.cert_and_key(&p.file);
        let Some(cert_pem) = read_string(ctx, &crt)? else {
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
            to_generate.push(p.name.clone());
            continue;
        };
        let key_pem = read_string(ctx, &key)?;
        if key_pem.is_none() && !p.ca {
            problems.push(format!(
                "{} exists but its key {} does not",
                crt.display(),
                key.display()
            ));
            continue;
        }
        let key = key_pem
            .as_deref()
            .map(keys::load)
            .transpose()
            .with_context(|| key.display().to_string())?;
        let spec = pki::cert_spec(p, &ctx.cfg);
        let issuer = match &p.signer {
            None => None,
            Some(s) => match cas.get(s) {
                Some(ca) => Some(ca.cert_der.as_slice()),
                None => {
                    problems.push(format!(
                        "{} exists but its CA {s} does not; remove it to have both regenerated",
                        crt.display()
                    ));
                    continue;
                }
            },
        };
        let found = pki::check(&cert_pem, key.as_ref(), &spec, issuer, ctx.now)
            .with_context(|| format!("{} is not a usable certificate", crt.display()))?;
        if !found.is_empty() {
            problems.push(format!(
                "existing certificate {:?} ({}) does not match what the config requires: {}",
                p.name,
                crt.display(),
                found.join("; ")
            ));
        }
    }
    let sa_wanted = sel.wants("sa");
    let sa_key_path = pki_dir.join("sa.key");
    let sa_existing = if sa_wanted {
        read_string(ctx, &sa_key_path)?
    } else {
        None
    };
    if !problems.is_empty() {
        bail!(
            "the PKI in {} cannot be used as it is:\n  - {}\nFix the config, or move those files away to have them regenerated.",
            pki_dir.display(),
            problems.join("\n  - ")
        );
    }

    ctx.writer.ensure_dir(&pki_dir, 0o755)?;
    let needs_sa_key = sa_wanted && sa_existing.is_none();
    let mut new_keys = keys::generate_many(
        ctx.cfg.cluster.encryption_algorithm,
        to_generate.len() + usize::from(needs_sa_key),
    )?
    .into_iter();

    for p in selected {
        let (crt, key_path) = ctx.layout.cert_and_key(&p.file);
        if !to_generate.contains(&p.name) {
            let line = if p.ca {
                format!("Using existing {} certificate authority", p.file)
            } else {
                format!("Using existing {} certificate and key on disk", p.file)
            };
            ctx.out.step(
                "certs",
                &line,
                json!({ "certificate": p.name, "action": "existing" }),
            );
            continue;
        }
        let key = new_keys
            .next()
            .ok_or_else(|| anyhow!("key pool exhausted"))?;
        let spec = pki::cert_spec(p, &ctx.cfg);
        let not_before = ctx.now - pki::BACKDATE;
        let issuer = p
            .signer
            .as_ref()
            .map(|s| cas.get(s).expect("checked above"));
        let cert_pem = pki::sign(&spec, &key, issuer, not_before, ctx.now)?;
        ctx.out.step(
            "certs",
            &format!("Generating {:?} certificate and key", p.file),
            json!({
                "certificate": p.name,
                "action": "generate",
                "path": crt,
                "algorithm": ctx.cfg.cluster.encryption_algorithm.as_str(),
            }),
        );
        if !spec.dns.is_empty() && !p.ca {
            let ips: Vec<_> = spec.ips.iter().map(|i| i.to_string()).collect();
            ctx.out.step(
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
        ctx.write("certs", &key_path, key.pem.as_bytes(), KEY_MODE)?;
        ctx.write("certs", &crt, cert_pem.as_bytes(), CERT_MODE)?;
        if p.ca {
            cas.insert(p.name.clone(), Ca::from_pem(&cert_pem, Some(key))?);
        }
    }

    if sa_wanted {
        let key = match sa_existing {
            Some(pem) => {
                ctx.out.step(
                    "certs",
                    "Using the existing \"sa\" key",
                    json!({ "certificate": "sa", "action": "existing" }),
                );
                keys::load(&pem).with_context(|| sa_key_path.display().to_string())?
            }
            None => {
                ctx.out.step(
                    "certs",
                    "Generating \"sa\" key and public key",
                    json!({ "certificate": "sa", "action": "generate" }),
                );
                let key = new_keys
                    .next()
                    .ok_or_else(|| anyhow!("key pool exhausted"))?;
                ctx.write("certs", &sa_key_path, key.pem.as_bytes(), KEY_MODE)?;
                key
            }
        };
        ctx.write(
            "certs",
            &pki_dir.join("sa.pub"),
            keys::public_pem(&key).as_bytes(),
            KEY_MODE,
        )?;
    }
    Ok(())
}

fn read_string(ctx: &Context, path: &std::path::Path) -> Result<Option<String>> {
    ctx.writer
        .read(path)?
        .map(|b| {
            String::from_utf8(b).map_err(|_| anyhow!("{} is not a PEM text file", path.display()))
        })
        .transpose()
}

/// A CA from disk: its certificate and, unless it is externally managed, its key.
fn load_ca(ctx: &Context, p: &CertProfile) -> Result<Option<Ca>> {
    let (crt, key) = ctx.layout.cert_and_key(&p.file);
    let Some(cert_pem) = read_string(ctx, &crt)? else {
        return Ok(None);
    };
    let key = read_string(ctx, &key)?
        .as_deref()
        .map(keys::load)
        .transpose()
        .with_context(|| key.display().to_string())?;
    Ca::from_pem(&cert_pem, key)
        .map(Some)
        .map_err(|e| anyhow!("loading {}: {e:#}", crt.display()))
}

/// The CA that signs kubeconfig client certificates, for the kubeconfig phase.
pub fn load_cluster_ca(ctx: &Context) -> Result<Ca> {
    let profile = pki::certificate_profiles()
        .into_iter()
        .find(|p| p.name == "ca")
        .expect("the ca profile exists");
    load_ca(ctx, &profile)?.ok_or_else(|| {
        anyhow!(
            "{} does not exist: run `kubeforge init phase certs ca` first",
            ctx.layout.cert_and_key("ca").0.display()
        )
    })
}

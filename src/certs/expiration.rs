//! `kubeforge certs check-expiration`: kubeadm's two tables, or its CertificateExpirationInfo
//! object with `-o json`.

use anyhow::{anyhow, Result};
use serde_json::json;
use std::path::Path;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::Config;
use crate::kubeconfig::Kubeconfig;
use crate::output::Output;
use crate::pki::{all_kubeconfig_profiles, certificate_profiles, human_time, pem_to_der};

struct Row {
    name: String,
    ca_name: Option<String>,
    expires: Option<OffsetDateTime>,
    externally_managed: bool,
}

fn not_after(pem_text: &str) -> Result<OffsetDateTime> {
    let der = pem_to_der(pem_text, "CERTIFICATE")?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| anyhow!("{e}"))?;
    Ok(cert.validity().not_after.to_datetime())
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// kubeadm's ShortHumanDuration.
fn residual(d: time::Duration) -> String {
    let s = d.whole_seconds();
    match s {
        s if s < -1 => "<invalid>".into(),
        s if s < 0 => "0s".into(),
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s if s < 86400 * 365 => format!("{}d", s / 86400),
        s => format!("{}y", s / 86400 / 365),
    }
}

/// Every certificate and certificate authority of the node, by name.
struct Report {
    certificates: Vec<Row>,
    authorities: Vec<Row>,
}

fn collect(cfg: &Config, kubernetes_dir: &Path) -> Result<Report> {
    let pki = Path::new(&cfg.cluster.certificates_dir);
    let profiles: Vec<_> = certificate_profiles()
        .into_iter()
        .filter(|p| !(p.etcd && cfg.cluster.is_external_etcd()))
        .collect();
    let ca_external = |ca: &str| {
        let file = &profiles
            .iter()
            .find(|p| p.name == ca)
            .expect("signer exists")
            .file;
        !pki.join(format!("{file}.key")).exists()
    };
    let expires = |file: &str| -> Result<Option<OffsetDateTime>> {
        read(&pki.join(format!("{file}.crt")))
            .as_deref()
            .map(not_after)
            .transpose()
    };
    let mut authorities = Vec::new();
    let mut certificates = Vec::new();
    for p in &profiles {
        let signer = p.signer.clone();
        let row = Row {
            name: p.name.clone(),
            externally_managed: ca_external(signer.as_deref().unwrap_or(&p.name)),
            ca_name: signer,
            expires: expires(&p.file)?,
        };
        if p.ca {
            authorities.push(row);
        } else {
            certificates.push(row);
        }
    }
    // kubelet.conf is left out as kubeadm does: the kubelet rotates its own client certificate.
    // kubeforge's own kubeconfigs (profile hardened) are listed where they exist.
    for k in all_kubeconfig_profiles()
        .into_iter()
        .filter(|k| k.name != "kubelet")
        .filter(|k| !k.hardened || kubernetes_dir.join(&k.file).exists())
    {
        let expires = match read(&kubernetes_dir.join(&k.file)) {
            Some(text) => Kubeconfig::parse(text.as_bytes())?
                .client_cert_pem()
                .as_deref()
                .map(not_after)
                .transpose()?,
            None => None,
        };
        certificates.push(Row {
            name: k.file.clone(),
            ca_name: Some("ca".into()),
            expires,
            externally_managed: ca_external("ca"),
        });
    }
    certificates.sort_by(|a, b| a.name.cmp(&b.name));
    authorities.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Report {
        certificates,
        authorities,
    })
}

/// kubeadm's `CertificateExpirationInfo` (output.kubeadm.k8s.io/v1alpha3).
fn print_json(report: &Report, now: OffsetDateTime, out: Output) {
    let item = |r: &Row| {
        let mut v = json!({
            "name": r.name,
            "expirationDate": r.expires.map(|t| t.format(&time::format_description::well_known::Rfc3339).expect("rfc3339")),
            "residualTime": r.expires.map(|t| (t - now).whole_seconds()).unwrap_or(0),
            "externallyManaged": r.externally_managed,
            "missing": r.expires.is_none(),
        });
        if r.expires.is_some_and(|t| t - now < SOON) {
            v["expiringSoon"] = json!(true);
        }
        if let Some(ca) = &r.ca_name {
            v["caName"] = json!(ca);
        }
        v
    };
    out.print_json(&json!({
        "kind": "CertificateExpirationInfo",
        "apiVersion": "output.kubeadm.k8s.io/v1alpha3",
        "certificates": report.certificates.iter().map(item).collect::<Vec<_>>(),
        "certificateAuthorities": report.authorities.iter().map(item).collect::<Vec<_>>(),
    }));
}

/// kubeadm's two tables.
fn print_tables(report: &Report, now: OffsetDateTime) {
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
    let row = |r: &Row, with_ca: bool| -> Vec<String> {
        let mut cols = match r.expires {
            Some(t) => vec![r.name.clone(), human_time(t), residual(t - now)],
            None => vec![
                format!("!MISSING! {}", r.name),
                String::new(),
                String::new(),
            ],
        };
        if with_ca {
            cols.push(r.ca_name.clone().unwrap_or_default());
        }
        cols.push(yes_no(r.externally_managed));
        cols
    };
    let header = |cols: &[&str]| cols.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    let mut table = vec![header(&[
        "CERTIFICATE",
        "EXPIRES",
        "RESIDUAL TIME",
        "CERTIFICATE AUTHORITY",
        "EXTERNALLY MANAGED",
    ])];
    table.extend(report.certificates.iter().map(|r| row(r, true)));
    print!("{}", align(&table));
    println!();
    let mut table = vec![header(&[
        "CERTIFICATE AUTHORITY",
        "EXPIRES",
        "RESIDUAL TIME",
        "EXTERNALLY MANAGED",
    ])];
    table.extend(report.authorities.iter().map(|r| row(r, false)));
    print!("{}", align(&table));
}

/// A certificate closer than this to its end is flagged (kubeadm flags nothing).
const SOON: time::Duration = time::Duration::days(30);

/// The lines under the tables for what has expired or expires within 30 days.
fn print_warnings(report: &Report, now: OffsetDateTime) {
    let rows = report.certificates.iter().chain(&report.authorities);
    let mut first = true;
    let mut line = |text: String| {
        if std::mem::take(&mut first) {
            println!();
        }
        println!("{text}");
    };
    for r in rows {
        let Some(t) = r.expires else { continue };
        let renew = if r.ca_name.is_some() && !r.externally_managed {
            format!("; `kubeforge certs renew {}` renews it", r.name)
        } else {
            String::new()
        };
        if t <= now {
            line(format!(
                "WARNING: {} EXPIRED on {}{renew}",
                r.name,
                human_time(t)
            ));
        } else if t - now < SOON {
            line(format!(
                "WARNING: {} expires within 30 days, on {}{renew}",
                r.name,
                human_time(t)
            ));
        }
    }
}

/// `kubeforge certs check-expiration`.
pub fn report(cfg: &Config, kubernetes_dir: &Path, out: Output) -> Result<()> {
    let report = collect(cfg, kubernetes_dir)?;
    let now = OffsetDateTime::now_utc();
    if out.json() {
        print_json(&report, now, out);
    } else {
        print_tables(&report, now);
        print_warnings(&report, now);
    }
    Ok(())
}

/// Columns padded to the widest cell plus three spaces, like Go's tabwriter in kubeadm.
fn align(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut s = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if i + 1 == r.len() {
                    cell.clone()
                } else {
                    format!("{cell:<width$}", width = widths[i] + 3)
                }
            })
            .collect();
        s.push_str(line.concat().trim_end());
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residual_time_is_kubeadms_short_form() {
        assert_eq!(residual(time::Duration::days(364)), "364d");
        assert_eq!(residual(time::Duration::days(3649)), "9y");
        assert_eq!(residual(time::Duration::minutes(90)), "1h");
        assert_eq!(residual(time::Duration::seconds(-100)), "<invalid>");
    }
}

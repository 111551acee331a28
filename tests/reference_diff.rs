//! Differential test against the reference implementation: with the config real kubeadm v1.35.6
//! was given, every certificate and kubeconfig kubeforge writes must carry the same facts as
//! kubeadm's (../shared/reference/kubeadm-v1.35.6): subject, issuer, SANs in kubeadm's order, key
//! usages, extended key usages, CA flag, key type, validity length, file mode; and every
//! kubeconfig the same cluster/context/user names, server URL and client-certificate subject.
//!
//! Deliberate differences: none in these facts. (Serial numbers, keys, key identifiers and the
//! order of extensions inside a certificate differ by nature.)

mod common;
use common::*;
use std::collections::BTreeMap;

fn reference_config(node: &Node) -> std::path::PathBuf {
    let text = kubeadm_reference_config();
    let text = text.replace(
        "kubernetesVersion: v1.35.6\n",
        &format!(
            "kubernetesVersion: v1.35.6\ncertificatesDir: {}\n",
            node.pki().display()
        ),
    );
    let text = text.replace(
        "    imageTag: 3.6.6-0",
        &format!(
            "    dataDir: {}/var/lib/etcd\n    imageTag: 3.6.6-0",
            node.root().display()
        ),
    );
    std::fs::write(node.config_path(), text).unwrap();
    node.config_path()
}

/// file-layout.txt: path → mode.
fn reference_modes() -> BTreeMap<String, u32> {
    let text = std::fs::read_to_string(reference_dir().join("file-layout.txt")).unwrap();
    text.lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| {
            let cols: Vec<_> = l.split_whitespace().collect();
            let perm = cols[0];
            let mode = perm[1..].chars().enumerate().fold(0u32, |m, (i, c)| {
                if c != '-' {
                    m | (1 << (8 - i))
                } else {
                    m
                }
            });
            Some((cols.last()?.to_string(), mode))
        })
        .collect()
}

#[test]
fn certificates_match_kubeadm_v1_35_6() {
    let node = Node::new();
    let cfg = reference_config(&node);
    let cfg = cfg.to_str().unwrap();
    node.run_ok(&["init", "phase", "certs", "all", "--config", cfg]);
    node.run_ok(&["init", "phase", "kubeconfig", "all", "--config", cfg]);
    let modes = reference_modes();
    let mut compared = 0;
    for entry in std::fs::read_dir(reference_dir().join("pki")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let Some(base) = name.strip_suffix(".crt.txt") else {
            continue;
        };
        if base.starts_with("kubelet-pki_") {
            continue; // the kubelet makes these itself
        }
        let file = base.replace('_', "/");
        let theirs = parse_openssl_text(&std::fs::read_to_string(&path).unwrap());
        let ours = cert_facts(&node.pki().join(format!("{file}.crt")));
        let mut diffs = Vec::new();
        macro_rules! same {
            ($($f:ident),*) => {$(
                if theirs.$f != ours.$f {
                    diffs.push(format!("{}: kubeadm {:?}, kubeforge {:?}", stringify!($f), theirs.$f, ours.$f));
                }
            )*};
        }
        same!(
            subject,
            issuer,
            public_key,
            key_usage,
            key_usage_critical,
            ext_key_usage,
            basic_constraints,
            basic_constraints_critical,
            sans,
            has_ski,
            has_aki,
            validity_secs,
            signature_algorithm
        );
        assert!(
            diffs.is_empty(),
            "{file}.crt differs from kubeadm's:\n  {}",
            diffs.join("\n  ")
        );
        for ext in ["crt", "key"] {
            let want = modes[&format!("/etc/kubernetes/pki/{file}.{ext}")];
            let got = mode(&node.pki().join(format!("{file}.{ext}")));
            assert_eq!(
                got, want,
                "{file}.{ext} mode: kubeadm {want:o}, kubeforge {got:o}"
            );
        }
        compared += 1;
    }
    assert_eq!(compared, 10, "all ten certificates compared");
    for f in ["sa.key", "sa.pub"] {
        assert_eq!(
            mode(&node.pki().join(f)),
            modes[&format!("/etc/kubernetes/pki/{f}")],
            "{f} mode"
        );
    }

    for conf in [
        "admin",
        "super-admin",
        "controller-manager",
        "scheduler",
        "kubelet",
    ] {
        let ours_path = node.kubernetes_dir().join(format!("{conf}.conf"));
        let theirs = kubeconfig_facts(&reference_dir().join(format!("kubeconfigs/{conf}.conf")));
        assert_eq!(kubeconfig_facts(&ours_path), theirs, "{conf}.conf");
        assert_eq!(
            mode(&ours_path),
            modes[&format!("/etc/kubernetes/{conf}.conf")],
            "{conf}.conf mode"
        );
        if conf == "kubelet" {
            continue; // kubeadm's kubelet.conf was already switched to the rotated certificate
        }
        let theirs = parse_openssl_text(
            &std::fs::read_to_string(
                reference_dir().join(format!("kubeconfigs/{conf}.conf.client-cert.txt")),
            )
            .unwrap(),
        );
        let ours = cert_facts(&extract_client_cert(&ours_path));
        assert_eq!(
            ours.subject, theirs.subject,
            "{conf}.conf client certificate subject"
        );
        assert_eq!(ours.issuer, theirs.issuer, "{conf}.conf issuer");
        assert_eq!(ours.key_usage, theirs.key_usage, "{conf}.conf key usage");
        assert_eq!(ours.ext_key_usage, theirs.ext_key_usage, "{conf}.conf EKU");
        assert_eq!(
            ours.basic_constraints, theirs.basic_constraints,
            "{conf}.conf CA flag"
        );
        assert_eq!(ours.public_key, theirs.public_key, "{conf}.conf key");
        assert!(
            (ours.validity_secs - theirs.validity_secs).abs() < 120,
            "{conf}.conf validity"
        );
    }
}

/// The names and server URL of a kubeconfig, as (field, value) pairs.
fn kubeconfig_facts(path: &std::path::Path) -> Vec<(&'static str, String)> {
    let v: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let s = |v: &serde_yaml::Value| v.as_str().unwrap_or_default().to_string();
    vec![
        ("clusters[0].name", s(&v["clusters"][0]["name"])),
        (
            "clusters[0].cluster.server",
            s(&v["clusters"][0]["cluster"]["server"]),
        ),
        ("contexts[0].name", s(&v["contexts"][0]["name"])),
        (
            "contexts[0].context.cluster",
            s(&v["contexts"][0]["context"]["cluster"]),
        ),
        (
            "contexts[0].context.user",
            s(&v["contexts"][0]["context"]["user"]),
        ),
        ("current-context", s(&v["current-context"])),
        ("users[0].name", s(&v["users"][0]["name"])),
    ]
}

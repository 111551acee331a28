//! The certificate lifecycle commands, checked with openssl and kubectl: `certs renew` (kubeadm's
//! renewal: new keys, the old subject and SANs, the CA on disk; kubeconfigs changed only in their
//! embedded credentials; an external CA's certificates left alone; differences from the config
//! named), `certs check-expiration` (kubeadm's tables and object, what expires soon flagged),
//! `certs generate-csr` and `kubeconfig user`. Restarts are the e2e suite's.

mod common;
use common::*;
use std::path::{Path, PathBuf};

const LEAVES: &[&str] = &[
    "apiserver",
    "apiserver-kubelet-client",
    "front-proxy-client",
    "etcd/server",
    "etcd/peer",
    "etcd/healthcheck-client",
    "apiserver-etcd-client",
];
const RENEWED_KUBECONFIGS: &[&str] = &[
    "admin.conf",
    "super-admin.conf",
    "controller-manager.conf",
    "scheduler.conf",
];

fn ca_of(leaf: &str) -> &'static str {
    match leaf {
        "front-proxy-client" => "front-proxy-ca.crt",
        l if l.starts_with("etcd/") || l == "apiserver-etcd-client" => "etcd/ca.crt",
        _ => "ca.crt",
    }
}

fn openssl(args: &[&str]) -> String {
    tool_ok("openssl", args)
}

fn serial(cert: &Path) -> String {
    openssl(&["x509", "-noout", "-serial", "-in", cert.to_str().unwrap()])
}

fn verify(ca: &Path, cert: &Path) {
    let out = openssl(&[
        "verify",
        "-CAfile",
        ca.to_str().unwrap(),
        cert.to_str().unwrap(),
    ]);
    assert!(out.trim().ends_with(": OK"), "{out}");
}

/// The kubeconfig's lines with the embedded credentials left out.
fn without_credentials(text: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(text)
        .lines()
        .filter(|l| !l.contains("client-certificate-data:") && !l.contains("client-key-data:"))
        .map(str::to_string)
        .collect()
}

fn renew(node: &Node, args: &[&str]) -> String {
    let cfg = node.config_path();
    let mut all = vec!["certs", "renew"];
    all.extend_from_slice(args);
    all.extend(["--config", cfg.to_str().unwrap()]);
    node.run_ok(&all)
}

#[test]
fn renew_all_keeps_what_each_certificate_says_with_a_new_key_signed_by_its_ca() {
    let node = Node::new();
    node.generate("RSA-2048");
    let pki = node.pki();
    let kdir = node.kubernetes_dir();
    let before = node.snapshot();
    let facts = |leaf: &str| cert_facts(&pki.join(format!("{leaf}.crt")));
    let old: Vec<_> = LEAVES
        .iter()
        .map(|l| (facts(l), serial(&pki.join(format!("{l}.crt")))))
        .collect();

    let out = renew(&node, &["all", "--no-restart"]);
    assert!(
        out.contains("certificate for serving the Kubernetes API renewed"),
        "{out}"
    );
    assert!(out.ends_with("Done renewing certificates. You must restart the kube-apiserver, kube-controller-manager, kube-scheduler and etcd, so that they can use the new certificates.\n"), "{out}");

    for (leaf, (facts_before, serial_before)) in LEAVES.iter().zip(old) {
        let crt = pki.join(format!("{leaf}.crt"));
        let key = pki.join(format!("{leaf}.key"));
        verify(&pki.join(ca_of(leaf)), &crt);
        let now = cert_facts(&crt);
        assert_eq!(
            (&now.subject, &now.sans, &now.ext_key_usage),
            (
                &facts_before.subject,
                &facts_before.sans,
                &facts_before.ext_key_usage
            ),
            "{leaf}"
        );
        assert_ne!(serial(&crt), serial_before, "{leaf}: a new certificate");
        assert_ne!(
            std::fs::read(&key).unwrap(),
            before[&key].0,
            "{leaf}: a new key"
        );
        assert_eq!((mode(&crt), mode(&key)), (0o644, 0o600), "{leaf}");
        let cert_key = openssl(&["x509", "-noout", "-pubkey", "-in", crt.to_str().unwrap()]);
        let key_pub = openssl(&["pkey", "-pubout", "-in", key.to_str().unwrap()]);
        assert_eq!(
            cert_key, key_pub,
            "{leaf}: the key belongs to the certificate"
        );
    }
    // CAs, the service-account key and kubelet.conf are never renewed.
    for file in [
        "ca.crt",
        "ca.key",
        "front-proxy-ca.key",
        "etcd/ca.key",
        "sa.key",
        "sa.pub",
    ] {
        assert_eq!(
            std::fs::read(pki.join(file)).unwrap(),
            before[&pki.join(file)].0,
            "{file}"
        );
    }
    let kubelet = kdir.join("kubelet.conf");
    assert_eq!(std::fs::read(&kubelet).unwrap(), before[&kubelet].0);
    for conf in RENEWED_KUBECONFIGS {
        let path = kdir.join(conf);
        let now = std::fs::read(&path).unwrap();
        assert_ne!(now, before[&path].0, "{conf}");
        assert_eq!(
            without_credentials(&now),
            without_credentials(&before[&path].0),
            "{conf}: only the credentials change"
        );
        let copy = node.root().join(format!("renewed-{conf}"));
        std::fs::copy(&path, &copy).unwrap();
        verify(&pki.join("ca.crt"), &extract_client_cert(&copy));
    }
    // The old files are in the run's backup directory, which the journal lists.
    let backups = kdir.join("tmp");
    let backup = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("kubeforge-backup-")
        })
        .expect("a backup directory");
    let old_key = backup.join(pki.join("apiserver.key").strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::read(old_key).unwrap(),
        before[&pki.join("apiserver.key")].0
    );
    let journal = std::fs::read_to_string(backups.join("kubeforge-journal")).unwrap();
    assert!(journal.lines().any(|l| Path::new(l) == backup), "{journal}");
}

#[test]
fn an_external_ca_keeps_its_certificates_and_the_others_are_renewed() {
    let node = Node::new();
    node.generate("ECDSA-P256");
    let pki = node.pki();
    std::fs::remove_file(pki.join("ca.key")).unwrap();
    let before = node.snapshot();
    let out = renew(&node, &["all", "--no-restart"]);
    assert!(
        out.contains(
            "Detected external ca CA, certificate for serving the Kubernetes API can't be renewed"
        ),
        "{out}"
    );
    for unchanged in [
        "apiserver.crt",
        "apiserver.key",
        "apiserver-kubelet-client.crt",
    ] {
        assert_eq!(
            std::fs::read(pki.join(unchanged)).unwrap(),
            before[&pki.join(unchanged)].0,
            "{unchanged}"
        );
    }
    let admin = node.kubernetes_dir().join("admin.conf");
    assert_eq!(std::fs::read(&admin).unwrap(), before[&admin].0);
    for renewed in ["etcd/server.crt", "front-proxy-client.crt"] {
        assert_ne!(
            std::fs::read(pki.join(renewed)).unwrap(),
            before[&pki.join(renewed)].0,
            "{renewed}"
        );
    }
}

#[test]
fn what_the_config_asks_for_beyond_the_certificate_is_named() {
    let node = Node::new();
    node.generate("ECDSA-P256");
    node.write_config(
        "ECDSA-P256",
        "apiServer:\n  certSANs:\n  - extra.example.com\n",
    );
    let out = renew(&node, &["apiserver", "--no-restart"]);
    assert!(
        out.contains(
            "WARNING: apiserver: it lacks the SANs [\"extra.example.com\"] the config asks for"
        ),
        "{out}"
    );
    // As kubeadm does, renewal keeps what the certificate carried.
    let sans = cert_facts(&node.pki().join("apiserver.crt")).sans;
    assert!(!sans.contains("extra.example.com"), "{sans}");
}

#[test]
fn a_name_kubeadm_does_not_renew_is_refused_and_a_missing_file_is_named() {
    let node = Node::new();
    node.generate("ECDSA-P256");
    let out = node.run(&[
        "certs",
        "renew",
        "ca",
        "--config",
        node.config_path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    std::fs::remove_file(node.pki().join("front-proxy-client.crt")).unwrap();
    let out = renew(&node, &["front-proxy-client", "--no-restart"]);
    assert!(
        out.contains("MISSING! certificate for the front proxy client"),
        "{out}"
    );
}

#[test]
fn check_expiration_is_kubeadms_and_flags_what_expires_within_30_days() {
    let node = Node::new();
    let cfg = node.write_config("ECDSA-P256", "certificateValidityPeriod: 240h\n");
    let cfg = cfg.to_str().unwrap();
    node.run_ok(&["init", "phase", "certs", "all", "--config", cfg]);
    node.run_ok(&["init", "phase", "kubeconfig", "all", "--config", cfg]);
    let text = node.run_ok(&["certs", "check-expiration", "--config", cfg]);
    assert!(
        text.starts_with("CERTIFICATE                EXPIRES"),
        "{text}"
    );
    assert!(
        text.contains("\nWARNING: apiserver expires within 30 days"),
        "{text}"
    );
    assert!(!text.contains("WARNING: ca expires"), "{text}");
    let json = node.run_ok(&["certs", "check-expiration", "--config", cfg, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["apiVersion"], "output.kubeadm.k8s.io/v1alpha3");
    assert_eq!(v["kind"], "CertificateExpirationInfo");
    let certs = v["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 11);
    assert_eq!(v["certificateAuthorities"].as_array().unwrap().len(), 3);
    let apiserver = certs.iter().find(|c| c["name"] == "apiserver").unwrap();
    assert_eq!(apiserver["expiringSoon"], true);
    assert_eq!(apiserver["caName"], "ca");
    assert!(apiserver["residualTime"].as_i64().unwrap() > 9 * 86400);
}

#[test]
fn generate_csr_writes_keys_and_requests_for_an_external_ca() {
    let node = Node::new();
    let cfg = node.write_config("RSA-2048", "");
    let cfg = cfg.to_str().unwrap();
    node.run_ok(&["certs", "generate-csr", "--config", cfg]);
    let pki = node.pki();
    let csr = pki.join("apiserver.csr");
    let text = openssl(&[
        "req",
        "-verify",
        "-noout",
        "-text",
        "-in",
        csr.to_str().unwrap(),
    ]);
    assert!(
        text.contains("CN = kube-apiserver") || text.contains("CN=kube-apiserver"),
        "{text}"
    );
    assert!(
        text.contains("DNS:kubernetes.default.svc.cluster.local")
            && text.contains("IP Address:192.0.2.2"),
        "{text}"
    );
    assert_eq!(mode(&pki.join("apiserver.key")), 0o600);
    let admin = node.kubernetes_dir().join("admin.conf");
    assert_eq!(
        kubectl_jsonpath(&admin, "{.users[0].name}"),
        "kubernetes-admin"
    );
    assert!(!kubectl_jsonpath(&admin, "{.users[0].user.client-key-data}").is_empty());
    assert!(kubectl_jsonpath(&admin, "{.users[0].user.client-certificate-data}").is_empty());
    let admin_csr = node.kubernetes_dir().join("admin.conf.csr");
    let text = openssl(&[
        "req",
        "-verify",
        "-noout",
        "-subject",
        "-in",
        admin_csr.to_str().unwrap(),
    ]);
    assert!(
        text.contains("kubeadm:cluster-admins") && text.contains("kubernetes-admin"),
        "{text}"
    );
    // Nothing is overwritten.
    let again = node.run(&["certs", "generate-csr", "--config", cfg]);
    assert_eq!(again.status.code(), Some(2));
}

fn user_kubeconfig(node: &Node, extra: &[&str]) -> PathBuf {
    let cfg = node.config_path();
    let mut args = vec![
        "kubeconfig",
        "user",
        "--client-name",
        "jane",
        "--config",
        cfg.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let text = node.run_ok(&args);
    let path = node.root().join("jane.conf");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn kubeconfig_user_signs_a_client_certificate_for_the_cluster() {
    let node = Node::new();
    node.generate("ECDSA-P256");
    let conf = user_kubeconfig(
        &node,
        &["--org", "devs", "--org", "ops", "--validity-period", "48h"],
    );
    assert_eq!(
        kubectl_jsonpath(&conf, "{.clusters[0].cluster.server}"),
        "https://192.0.2.2:6443"
    );
    assert_eq!(
        kubectl_jsonpath(&conf, "{.contexts[0].name}"),
        "jane@kubernetes"
    );
    let cert = extract_client_cert(&conf);
    verify(&node.pki().join("ca.crt"), &cert);
    let facts = cert_facts(&cert);
    assert!(
        facts.subject.contains("O = devs")
            && facts.subject.contains("O = ops")
            && facts.subject.contains("CN = jane"),
        "{}",
        facts.subject
    );
    assert!(
        (48 * 3600..=48 * 3600 + 600).contains(&facts.validity_secs),
        "{}",
        facts.validity_secs
    );
    let token = user_kubeconfig(&node, &["--token", "abcdef.0123456789abcdef"]);
    assert_eq!(
        kubectl_jsonpath(&token, "{.users[0].user.token}"),
        "abcdef.0123456789abcdef"
    );
}

const APPROVER_CONF: &str = "kubeforge-approver.conf";
const APPROVER_RENEWED: &str =
    "certificate embedded in the kubeconfig file for kubeforge's kubelet serving CSR approver renewed";

/// The approver's client certificate, extracted from a copy of its kubeconfig under the root.
fn approver_cert(node: &Node, copy: &str) -> PathBuf {
    let path = node.root().join(copy);
    std::fs::copy(node.kubernetes_dir().join(APPROVER_CONF), &path).unwrap();
    extract_client_cert(&path)
}

#[test]
fn renew_on_a_hardened_node_renews_the_approvers_kubeconfig_and_keeps_its_mode() {
    let node = Node::new();
    node.init_files(&node.write_config("ECDSA-P256", ""));
    let conf = node.kubernetes_dir().join(APPROVER_CONF);
    assert_eq!(mode(&conf), 0o640, "init writes it 0640");
    let before = std::fs::read(&conf).unwrap();
    let old = approver_cert(&node, "old.conf");
    // One second on, so that the new certificate's notAfter is later, not only its serial new.
    std::thread::sleep(std::time::Duration::from_secs(1));

    let out = renew(&node, &["all", "--no-restart"]);
    assert!(out.contains(APPROVER_RENEWED), "{out}");
    assert!(
        out.ends_with(
            "The kubeforge-approver static pod reads a renewed kubeconfig: restart it too.\n"
        ),
        "{out}"
    );
    let new = approver_cert(&node, "new.conf");
    assert_ne!(serial(&new), serial(&old));
    let end = |c: &Path| openssl(&["x509", "-noout", "-enddate", "-in", c.to_str().unwrap()]);
    assert_ne!(end(&new), end(&old));
    assert_eq!(cert_facts(&new).subject, cert_facts(&old).subject);
    let subject = cert_facts(&new).subject;
    assert!(subject.contains("kubeforge:csr-approver"), "{subject}");
    verify(&node.pki().join("ca.crt"), &new);
    assert_eq!(mode(&conf), 0o640, "renewal keeps its mode");
    let now = std::fs::read(&conf).unwrap();
    assert_eq!(without_credentials(&now), without_credentials(&before));

    // By name: only it.
    let admin = node.kubernetes_dir().join("admin.conf");
    let admin_before = std::fs::read(&admin).unwrap();
    let out = renew(&node, &[APPROVER_CONF, "--no-restart"]);
    assert!(out.contains(APPROVER_RENEWED), "{out}");
    assert_ne!(std::fs::read(&conf).unwrap(), now);
    assert_eq!(std::fs::read(&admin).unwrap(), admin_before);
    assert_eq!(mode(&conf), 0o640);
}

#[test]
fn check_expiration_lists_the_approvers_kubeconfig_only_where_it_is() {
    let hardened = Node::new();
    let cfg = hardened.write_config("ECDSA-P256", "");
    hardened.init_files(&cfg);
    let cfg = cfg.to_str().unwrap();
    let text = hardened.run_ok(&["certs", "check-expiration", "--config", cfg]);
    let row = text
        .lines()
        .find(|l| l.starts_with("kubeforge-approver.conf "))
        .unwrap_or_else(|| panic!("no row for the approver: {text}"));
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(columns[columns.len() - 2..], ["ca", "no"], "{row}");
    let json = hardened.run_ok(&["certs", "check-expiration", "--config", cfg, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let certs = v["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 12);
    let approver = certs.iter().find(|c| c["name"] == APPROVER_CONF).unwrap();
    assert_eq!(
        (&approver["caName"], &approver["missing"]),
        (&"ca".into(), &false.into())
    );

    // Profile kubeadm: no such file, kubeadm's rows only, and it is not a name to renew here.
    let kubeadm = Node::new();
    let cfg = kubeadm.write_config(
        "ECDSA-P256",
        "---\napiVersion: kubeforge.io/v1alpha1\nkind: Security\nprofile: kubeadm\n",
    );
    kubeadm.init_files(&cfg);
    assert!(!kubeadm.kubernetes_dir().join(APPROVER_CONF).exists());
    let cfg = cfg.to_str().unwrap();
    let text = kubeadm.run_ok(&["certs", "check-expiration", "--config", cfg]);
    assert!(!text.contains("kubeforge-approver"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.ends_with(" no")).count(),
        11 + 3,
        "{text}"
    );
    let before = kubeadm.snapshot();
    let out = kubeadm.run(&[
        "certs",
        "renew",
        APPROVER_CONF,
        "--no-restart",
        "--config",
        cfg,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(kubeadm.snapshot(), before);
}

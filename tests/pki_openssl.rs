//! Every certificate and kubeconfig client certificate, for each of the five key algorithms,
//! checked by real openssl: chain, subject, SANs, key usages, CA flag, key type, validity, PEM
//! types and file modes.

mod common;
use common::*;

const LEAF_KU: &str = "Digital Signature, Key Encipherment";
const CA_KU: &str = "Digital Signature, Key Encipherment, Certificate Sign";
const SERVER: &str = "TLS Web Server Authentication";
const CLIENT: &str = "TLS Web Client Authentication";
const BOTH: &str = "TLS Web Server Authentication, TLS Web Client Authentication";
const YEAR: i64 = 8760 * 3600;
const BACKDATE: i64 = 300;

struct Expect {
    file: &'static str,
    ca_file: &'static str,
    subject: &'static str,
    issuer: &'static str,
    eku: &'static str,
    sans: &'static str,
}

const LEAVES: &[Expect] = &[
    Expect { file: "apiserver", ca_file: "ca", subject: "CN = kube-apiserver", issuer: "CN = kubernetes", eku: SERVER,
        sans: "DNS:cp1, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local, IP Address:10.96.0.1, IP Address:192.0.2.2" },
    Expect { file: "apiserver-kubelet-client", ca_file: "ca", subject: "CN = kube-apiserver-kubelet-client", issuer: "CN = kubernetes", eku: CLIENT, sans: "" },
    Expect { file: "front-proxy-client", ca_file: "front-proxy-ca", subject: "CN = front-proxy-client", issuer: "CN = front-proxy-ca", eku: CLIENT, sans: "" },
    Expect { file: "etcd/server", ca_file: "etcd/ca", subject: "CN = cp1", issuer: "CN = etcd-ca", eku: BOTH,
        sans: "DNS:cp1, DNS:localhost, IP Address:192.0.2.2, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1" },
    Expect { file: "etcd/peer", ca_file: "etcd/ca", subject: "CN = cp1", issuer: "CN = etcd-ca", eku: BOTH,
        sans: "DNS:cp1, DNS:localhost, IP Address:192.0.2.2, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1" },
    Expect { file: "etcd/healthcheck-client", ca_file: "etcd/ca", subject: "CN = kube-etcd-healthcheck-client", issuer: "CN = etcd-ca", eku: CLIENT, sans: "" },
    Expect { file: "apiserver-etcd-client", ca_file: "etcd/ca", subject: "CN = kube-apiserver-etcd-client", issuer: "CN = etcd-ca", eku: CLIENT, sans: "" },
];

const CAS: &[(&str, &str)] = &[
    ("ca", "kubernetes"),
    ("front-proxy-ca", "front-proxy-ca"),
    ("etcd/ca", "etcd-ca"),
];

const KUBECONFIGS: &[(&str, &str)] = &[
    (
        "admin.conf",
        "O = kubeadm:cluster-admins, CN = kubernetes-admin",
    ),
    (
        "super-admin.conf",
        "O = system:masters, CN = kubernetes-super-admin",
    ),
    ("kubelet.conf", "O = system:nodes, CN = system:node:cp1"),
    (
        "controller-manager.conf",
        "CN = system:kube-controller-manager",
    ),
    ("scheduler.conf", "CN = system:kube-scheduler"),
];

fn key_facts(algorithm: &str) -> (&'static str, &'static str) {
    match algorithm {
        "RSA-2048" => ("rsaEncryption (2048 bit)", "RSA PRIVATE KEY"),
        "RSA-3072" => ("rsaEncryption (3072 bit)", "RSA PRIVATE KEY"),
        "RSA-4096" => ("rsaEncryption (4096 bit)", "RSA PRIVATE KEY"),
        "ECDSA-P256" => ("id-ecPublicKey (256 bit) P-256", "EC PRIVATE KEY"),
        "ECDSA-P384" => ("id-ecPublicKey (384 bit) P-384", "EC PRIVATE KEY"),
        _ => unreachable!(),
    }
}

fn check_algorithm(algorithm: &str) {
    let node = Node::new();
    node.generate(algorithm);
    let pki = node.pki();
    let (public_key, key_pem) = key_facts(algorithm);
    let p = |f: &str| pki.join(f).to_str().unwrap().to_string();

    for (file, cn) in CAS {
        let crt = pki.join(format!("{file}.crt"));
        let f = cert_facts(&crt);
        assert_eq!(f.subject, format!("CN = {cn}"), "{file}");
        assert_eq!(f.issuer, format!("CN = {cn}"), "{file}");
        assert_eq!(f.key_usage, CA_KU, "{file}");
        assert!(f.key_usage_critical, "{file}: key usage must be critical");
        assert_eq!(f.basic_constraints, "CA:TRUE", "{file}");
        assert!(f.basic_constraints_critical, "{file}");
        assert_eq!(f.sans, format!("DNS:{cn}"), "{file}");
        assert_eq!(f.ext_key_usage, "", "{file}");
        assert!(f.has_ski, "{file}: a CA carries a SubjectKeyIdentifier");
        assert_eq!(f.public_key, public_key, "{file}");
        assert_eq!(
            f.validity_secs,
            10 * YEAR + BACKDATE,
            "{file}: validity window"
        );
        tool_ok(
            "openssl",
            &[
                "verify",
                "-CAfile",
                crt.to_str().unwrap(),
                crt.to_str().unwrap(),
            ],
        );
    }
    for e in LEAVES {
        let crt = p(&format!("{}.crt", e.file));
        let out = tool_ok(
            "openssl",
            &["verify", "-CAfile", &p(&format!("{}.crt", e.ca_file)), &crt],
        );
        assert!(out.trim().ends_with("OK"), "{}: {out}", e.file);
        let f = cert_facts(std::path::Path::new(&crt));
        assert_eq!(f.subject, e.subject, "{}", e.file);
        assert_eq!(f.issuer, e.issuer, "{}", e.file);
        assert_eq!(f.key_usage, LEAF_KU, "{}", e.file);
        assert!(f.key_usage_critical, "{}", e.file);
        assert_eq!(f.ext_key_usage, e.eku, "{}", e.file);
        assert_eq!(f.basic_constraints, "CA:FALSE", "{}", e.file);
        assert!(f.basic_constraints_critical, "{}", e.file);
        assert_eq!(f.sans, e.sans, "{}", e.file);
        assert!(
            f.has_aki && !f.has_ski,
            "{}: leaves carry an AKI and no SKI, as kubeadm's",
            e.file
        );
        assert_eq!(f.public_key, public_key, "{}", e.file);
        assert_eq!(
            f.validity_secs,
            YEAR + BACKDATE,
            "{}: validity window",
            e.file
        );
    }

    for base in CAS.iter().map(|c| c.0).chain(LEAVES.iter().map(|e| e.file)) {
        let key = pki.join(format!("{base}.key"));
        let text = std::fs::read_to_string(&key).unwrap();
        assert!(
            text.starts_with(&format!("-----BEGIN {key_pem}-----\n")),
            "{base}.key PEM type"
        );
        assert_eq!(permission_bits(&key), 0o600, "{base}.key mode");
        assert_eq!(
            mode(&pki.join(format!("{base}.crt"))),
            0o644,
            "{base}.crt mode"
        );
        // The key belongs to the certificate.
        let from_key = tool_ok(
            "openssl",
            &["pkey", "-in", key.to_str().unwrap(), "-pubout"],
        );
        let from_crt = tool_ok(
            "openssl",
            &[
                "x509",
                "-in",
                &p(&format!("{base}.crt")),
                "-noout",
                "-pubkey",
            ],
        );
        assert_eq!(from_key, from_crt, "{base}: key does not match certificate");
    }
    let sa_pub = std::fs::read_to_string(pki.join("sa.pub")).unwrap();
    assert!(sa_pub.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    assert_eq!(
        tool_ok("openssl", &["pkey", "-in", &p("sa.key"), "-pubout"]),
        sa_pub
    );
    assert_eq!(permission_bits(&pki.join("sa.key")), 0o600);
    assert_eq!(permission_bits(&pki.join("sa.pub")), 0o600);
    assert_eq!(mode(&pki), 0o755);
    assert_eq!(mode(&pki.join("etcd")), 0o755);

    for (conf, subject) in KUBECONFIGS {
        let path = node.kubernetes_dir().join(conf);
        assert_eq!(mode(&path), 0o600, "{conf}");
        let cert_path = extract_client_cert(&path);
        tool_ok(
            "openssl",
            &[
                "verify",
                "-CAfile",
                &p("ca.crt"),
                cert_path.to_str().unwrap(),
            ],
        );
        let f = cert_facts(&cert_path);
        assert_eq!(f.subject, *subject, "{conf}");
        assert_eq!(f.ext_key_usage, CLIENT, "{conf}");
        assert_eq!(f.key_usage, LEAF_KU, "{conf}");
        assert_eq!(f.basic_constraints, "CA:FALSE", "{conf}");
        assert_eq!(f.public_key, public_key, "{conf}");
        // kubeadm: NotBefore is the CA's, NotAfter is creation time + one year; this phase runs
        // a moment after the certs phase.
        assert_eq!(
            f.not_before,
            cert_facts(&pki.join("ca.crt")).not_before,
            "{conf}: NotBefore is the CA's"
        );
        assert!(
            (YEAR + BACKDATE..YEAR + BACKDATE + 120).contains(&f.validity_secs),
            "{conf}: validity {}",
            f.validity_secs
        );
        let key = b64decode(&kubectl_jsonpath(&path, "{.users[0].user.client-key-data}"));
        assert!(
            String::from_utf8_lossy(&key).starts_with(&format!("-----BEGIN {key_pem}-----")),
            "{conf}"
        );
    }
}

#[test]
fn rsa_2048() {
    check_algorithm("RSA-2048");
}

#[test]
fn rsa_3072() {
    check_algorithm("RSA-3072");
}

#[test]
fn rsa_4096() {
    check_algorithm("RSA-4096");
}

#[test]
fn ecdsa_p256() {
    check_algorithm("ECDSA-P256");
}

#[test]
fn ecdsa_p384() {
    check_algorithm("ECDSA-P384");
}

#[test]
fn cert_sans_and_control_plane_endpoint_reach_the_apiserver_certificate() {
    let node = Node::new();
    let cfg = node.write_config(
        "ECDSA-P256",
        "controlPlaneEndpoint: cp.example.com:8443\napiServer:\n  certSANs: [\"10.0.0.9\", \"*.Apps.example.com\", \"api.example.com\"]\nnetworking:\n  serviceSubnet: 10.100.0.0/16\n  dnsDomain: corp.local\n",
    );
    let cfg = cfg.to_str().unwrap();
    node.run_ok(&["init", "phase", "certs", "ca", "--config", cfg]);
    node.run_ok(&["init", "phase", "certs", "apiserver", "--config", cfg]);
    let f = cert_facts(&node.pki().join("apiserver.crt"));
    assert_eq!(
        f.sans,
        "DNS:*.apps.example.com, DNS:api.example.com, DNS:cp.example.com, DNS:cp1, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.corp.local, IP Address:10.100.0.1, IP Address:192.0.2.2, IP Address:10.0.0.9"
    );
    assert!(
        !node.pki().join("front-proxy-ca.crt").exists(),
        "only the asked sub-phases run"
    );
    node.run_ok(&["init", "phase", "kubeconfig", "all", "--config", cfg]);
    let server = kubectl_jsonpath(
        &node.kubernetes_dir().join("admin.conf"),
        "{.clusters[0].cluster.server}",
    );
    assert_eq!(server, "https://cp.example.com:8443");
    let server = kubectl_jsonpath(
        &node.kubernetes_dir().join("kubelet.conf"),
        "{.clusters[0].cluster.server}",
    );
    assert_eq!(server, "https://192.0.2.2:6443");
}

#[test]
fn external_etcd_gets_no_etcd_pki() {
    let node = Node::new();
    let text = std::fs::read_to_string(node.write_config("ECDSA-P256", "")).unwrap().replace(
        &format!("etcd:\n  local:\n    dataDir: {}/var/lib/etcd\n", node.root().display()),
        "etcd:\n  external:\n    endpoints: [\"https://10.0.0.5:2379\"]\n    caFile: /x/ca.crt\n    certFile: /x/c.crt\n    keyFile: /x/c.key\n",
    );
    std::fs::write(node.config_path(), text).unwrap();
    let out = node.run_ok(&[
        "init",
        "phase",
        "certs",
        "all",
        "--config",
        node.config_path().to_str().unwrap(),
    ]);
    assert!(
        out.contains("External etcd mode: Skipping etcd/ca certificate authority generation"),
        "{out}"
    );
    assert!(!node.pki().join("etcd").exists());
    assert!(!node.pki().join("apiserver-etcd-client.crt").exists());
    assert!(node.pki().join("apiserver.crt").exists());
}

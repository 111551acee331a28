//! Bad input: every malformed config exits with code 2, names the file, the field path and the
//! line:column, and leaves the disk untouched.

mod common;
use common::*;

const INIT: &str = "apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\n";
const CLUSTER: &str = "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\n";

/// (name, config text, expected field, expected "line:col")
fn cases() -> Vec<(&'static str, String, &'static str, &'static str)> {
    let c = |body: &str| format!("{CLUSTER}{body}");
    let i = |body: &str| format!("{INIT}{body}");
    vec![
        ("bad YAML", "apiVersion: kubeadm.k8s.io/v1beta4\nkind: [InitConfiguration\n".into(), "", "3:1"),
        ("bad indentation", c("networking:\n  podSubnet: 10.0.0.0/16\n serviceSubnet: x\n"), "", "5:2"),
        ("unknown top-level field", c("kubernetesVersoin: v1.35.0\n"), "ClusterConfiguration.kubernetesVersoin", "3:1"),
        ("unknown nested field", c("networking:\n  podSubnett: 10.244.0.0/16\n"), "ClusterConfiguration.networking.podSubnett", "4:3"),
        ("unknown field in a list item", i("bootstrapTokens:\n- token: abcdef.0123456789abcdef\n  tll: 1h\n"), "InitConfiguration.bootstrapTokens[0].tll", "5:3"),
        ("wrong type", i("localAPIEndpoint:\n  bindPort: [1]\n"), "InitConfiguration.localAPIEndpoint.bindPort", "4:3"),
        ("port out of range", i("localAPIEndpoint:\n  advertiseAddress: 192.0.2.2\n  bindPort: 70000\n"), "InitConfiguration.localAPIEndpoint.bindPort", "5:3"),
        ("bad IP", i("localAPIEndpoint:\n  advertiseAddress: 192.0.2.300\n"), "InitConfiguration.localAPIEndpoint.advertiseAddress", "4:3"),
        ("loopback advertise address", i("localAPIEndpoint:\n  advertiseAddress: 127.0.0.1\n"), "InitConfiguration.localAPIEndpoint.advertiseAddress", "4:3"),
        ("bad service CIDR", c("networking:\n  serviceSubnet: 10.96.0.0/40\n"), "ClusterConfiguration.networking.serviceSubnet", "4:3"),
        ("service subnet too large", c("networking:\n  serviceSubnet: 10.0.0.0/8\n"), "ClusterConfiguration.networking.serviceSubnet", "4:3"),
        ("service subnet too small", c("networking:\n  serviceSubnet: 10.96.0.0/29\n"), "ClusterConfiguration.networking.serviceSubnet", "4:3"),
        ("two IPv4 service CIDRs", c("networking:\n  serviceSubnet: 10.96.0.0/12,10.112.0.0/12\n"), "ClusterConfiguration.networking.serviceSubnet", "4:3"),
        ("pod subnet smaller than a node's", c("networking:\n  podSubnet: 10.244.0.0/28\n"), "ClusterConfiguration.networking.podSubnet", "4:3"),
        ("bad dns domain", c("networking:\n  dnsDomain: Cluster_Local\n"), "ClusterConfiguration.networking.dnsDomain", "4:3"),
        ("version too old", c("kubernetesVersion: v1.32.4\n"), "ClusterConfiguration.kubernetesVersion", "3:1"),
        ("version too new", c("kubernetesVersion: v1.38.0\n"), "ClusterConfiguration.kubernetesVersion", "3:1"),
        ("garbage version", c("kubernetesVersion: latest\n"), "ClusterConfiguration.kubernetesVersion", "3:1"),
        ("bad duration", c("certificateValidityPeriod: 1 year\n"), "ClusterConfiguration.certificateValidityPeriod", "3:1"),
        ("bad timeout", i("timeouts:\n  discovery: 5 minutes\n"), "InitConfiguration.timeouts.discovery", "4:3"),
        ("bad token", i("bootstrapTokens:\n- token: abcdef.0123456789\n"), "InitConfiguration.bootstrapTokens[0].token", "4:3"),
        ("bad certificate key", i("certificateKey: abc123\n"), "InitConfiguration.certificateKey", "3:1"),
        ("bad encryption algorithm", c("encryptionAlgorithm: RSA-1024\n"), "ClusterConfiguration.encryptionAlgorithm", "3:1"),
        ("bad certSAN", c("apiServer:\n  certSANs:\n  - good.example.com\n  - \"bad name!\"\n"), "ClusterConfiguration.apiServer.certSANs[1]", "6:5"),
        ("upper-case etcd SAN", c("etcd:\n  local:\n    serverCertSANs: [\"Etcd.Example.com\"]\n"), "ClusterConfiguration.etcd.local.serverCertSANs[0]", "5:22"),
        ("local and external etcd", c("etcd:\n  local:\n    dataDir: /x\n  external:\n    endpoints: [\"https://10.0.0.1:2379\"]\n"), "ClusterConfiguration.etcd", "3:1"),
        ("unknown feature gate", c("featureGates:\n  EtcdLearnerMode: true\n"), "ClusterConfiguration.featureGates.EtcdLearnerMode", "4:3"),
        ("bad image pull policy", i("nodeRegistration:\n  imagePullPolicy: Sometimes\n"), "InitConfiguration.nodeRegistration.imagePullPolicy", "4:3"),
        ("bad taint effect", i("nodeRegistration:\n  taints:\n  - key: a\n    effect: Never\n"), "InitConfiguration.nodeRegistration.taints[0].effect", "6:5"),
        ("bad node name", i("nodeRegistration:\n  name: Node_1\n"), "InitConfiguration.nodeRegistration.name", "4:3"),
        ("unknown apiVersion", "apiVersion: kubeadm.k8s.io/v1beta9\nkind: InitConfiguration\n".into(), "apiVersion", "1:1"),
        ("unknown kind", format!("{INIT}---\napiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfig\n"), "apiVersion", "4:1"),
        ("v1beta3 with a typo", "apiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\napiServer:\n  extraArgs:\n    v: \"2\"\n  timeoutForControlPlane: 4m0s\n  certSAN: [a]\n".into(), "ClusterConfiguration.apiServer.certSAN", "7:3"),
        ("empty file", String::new(), "kind", "1:1"),
        ("only comments", "# a config\n# to come\n".into(), "kind", "1:1"),
        ("only a document separator", "---\n".into(), "kind", "1:1"),
        ("only kubelet configuration", "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n".into(), "kind", "1:1"),
        ("kind twice", format!("{CLUSTER}---\n{INIT}---\n{CLUSTER}"), "kind", "8:1"),
        ("kubelet configuration twice", format!("{INIT}---\napiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n---\napiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"), "kind", "8:1"),
        ("document without kind", format!("{INIT}---\napiVersion: kubeadm.k8s.io/v1beta4\nnetworking: {{}}\n"), "kind", "4:1"),
        ("pod subnet overlapping the service subnet", c("networking:\n  serviceSubnet: 10.96.0.0/12\n  podSubnet: 10.100.0.0/16\n"), "ClusterConfiguration.networking.podSubnet", "5:3"),
        ("pod subnet overlapping the default service subnet", c("networking:\n  podSubnet: 10.96.0.0/16\n"), "ClusterConfiguration.networking.podSubnet", "4:3"),
        ("dual-stack pod subnet overlapping", c("networking:\n  serviceSubnet: 10.96.0.0/12,fd00:10:96::/112\n  podSubnet: 10.244.0.0/16,fd00:10:96::/64\n"), "ClusterConfiguration.networking.podSubnet", "5:3"),
        ("duration beyond Go's", c("certificateValidityPeriod: 3000000h\n"), "ClusterConfiguration.certificateValidityPeriod", "3:1"),
        ("bad v1beta3 control-plane timeout", "apiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\napiServer:\n  timeoutForControlPlane: soon\n".into(), "ClusterConfiguration.apiServer.timeoutForControlPlane", "4:3"),
        ("relative certificatesDir", c("certificatesDir: pki\n"), "ClusterConfiguration.certificatesDir", "3:1"),
        ("encryptionAtRest not a boolean", format!("{CLUSTER}---\napiVersion: kubeforge.io/v1alpha1\nkind: Security\nencryptionAtRest: \"yes\"\n"), "Security.encryptionAtRest", "6:1"),
        ("encryptionAtRest misspelt", format!("{CLUSTER}---\napiVersion: kubeforge.io/v1alpha1\nkind: Security\nprofile: kubeadm\nencryptionAtrest: true\n"), "Security.encryptionAtrest", "7:1"),
        ("relative etcd dataDir", c("etcd:\n  local:\n    dataDir: etcd-data\n"), "ClusterConfiguration.etcd.local.dataDir", "5:5"),
        ("second document error", format!("{INIT}localAPIEndpoint:\n  advertiseAddress: 192.0.2.2\n---\n{CLUSTER}networking:\n  podSubnet: nonsense\n"), "ClusterConfiguration.networking.podSubnet", "9:3"),
    ]
}

#[test]
fn malformed_configs_exit_2_with_file_field_and_line() {
    let cases = cases();
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for (name, text, field, pos) in cases {
        let node = Node::new();
        let path = node.root().join("bad.yaml");
        std::fs::write(&path, &text).unwrap();
        for args in [
            vec!["config", "validate", "--config", path.to_str().unwrap()],
            vec![
                "init",
                "phase",
                "certs",
                "all",
                "--config",
                path.to_str().unwrap(),
            ],
        ] {
            let out = node.run(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            let location = format!("{}:{pos}: ", path.display());
            if out.status.code() != Some(2)
                || !err.contains(&location)
                || !err.contains(&format!(": {field}"))
            {
                failures.push(format!(
                    "{name}: expected exit 2, {location}{field}; got {:?}: {err}",
                    out.status.code()
                ));
            }
            assert_eq!(
                snapshot(node.root()).keys().collect::<Vec<_>>(),
                vec![&path],
                "{name}: something was written"
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The overlap names both fields and where each was given.
#[test]
fn an_overlap_names_both_subnets() {
    let node = Node::new();
    let path = node.root().join("net.yaml");
    let text = format!(
        "{CLUSTER}networking:\n  serviceSubnet: 10.96.0.0/12\n  podSubnet: 10.100.0.0/16\n"
    );
    std::fs::write(&path, text).unwrap();
    let out = node.run(&["init", "--dry-run", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "{p}:5:3: ClusterConfiguration.networking.podSubnet: 10.100.0.0/16 overlaps ClusterConfiguration.networking.serviceSubnet 10.96.0.0/12 ({p}:4:3)",
        p = path.display()
    );
    assert!(err.contains(&expected), "{err}");
    let out = node.run(&["init", "--dry-run", "--pod-network-cidr", "10.96.0.0/16"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("flag --pod-network-cidr: ClusterConfiguration.networking.podSubnet: 10.96.0.0/16 overlaps ClusterConfiguration.networking.serviceSubnet 10.96.0.0/12 (the default)"),
        "{err}"
    );
}

#[test]
fn config_mixed_with_flags_is_refused() {
    let node = Node::new();
    let cfg = node.write_config("ECDSA-P256", "");
    let out = node.run(&[
        "init",
        "--dry-run",
        "--config",
        cfg.to_str().unwrap(),
        "--kubernetes-version",
        "v1.35.0",
        "--service-cidr",
        "10.96.0.0/16",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("can not mix '--config' with arguments [kubernetes-version service-cidr]"),
        "{err}"
    );
    // Allowed alongside --config, as in kubeadm.
    node.run_ok(&[
        "init",
        "phase",
        "certs",
        "ca",
        "--config",
        cfg.to_str().unwrap(),
        "--node-name",
        "cp1",
        "--dry-run",
    ]);
}

#[test]
fn bad_flags_name_the_flag() {
    let node = Node::new();
    let out = node.run(&["init", "--dry-run", "--service-cidr", "10.96.0.0/33"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("flag --service-cidr: ClusterConfiguration.networking.serviceSubnet"),
        "{err}"
    );
    let out = node.run(&["init", "phase", "certs", "bogus", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_reference_kubeadm_config_and_the_printed_defaults_validate() {
    let node = Node::new();
    let reference = reference_dir().join("kubeadm-config.yaml");
    assert_eq!(
        node.run_ok(&[
            "config",
            "validate",
            "--config",
            reference.to_str().unwrap()
        ])
        .trim(),
        "ok"
    );
    let defaults = node.run_ok(&["config", "print", "init-defaults"]);
    let mut child = std::process::Command::new(BIN)
        .args(["config", "validate", "--config", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(defaults.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    assert!(
        defaults.contains("kind: InitConfiguration")
            && defaults.contains("kind: ClusterConfiguration")
    );
}

#[test]
fn v1beta3_is_converted() {
    let node = Node::new();
    let path = node.root().join("v1beta3.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: kubeadm.k8s.io/v1beta3\nkind: InitConfiguration\nlocalAPIEndpoint:\n  advertiseAddress: 192.0.2.2\nnodeRegistration:\n  name: cp1\n  kubeletExtraArgs:\n    v: \"4\"\n---\napiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\nkubernetesVersion: v1.34.2\ncertificatesDir: {}\napiServer:\n  timeoutForControlPlane: 3m0s\n  extraArgs:\n    audit-log-maxage: \"7\"\n    anonymous-auth: \"true\"\n",
            node.pki().display()
        ),
    )
    .unwrap();
    assert_eq!(
        node.run_ok(&["config", "validate", "--config", path.to_str().unwrap()])
            .trim(),
        "ok"
    );
    node.run_ok(&[
        "init",
        "phase",
        "certs",
        "ca",
        "--config",
        path.to_str().unwrap(),
    ]);
    assert!(node.pki().join("ca.crt").exists());
}

#[test]
fn an_unknown_phase_to_skip_is_refused() {
    let node = Node::new();
    let out = node.run(&["init", "--dry-run", "--skip-phases", "bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid phase name: bogus"));
    let out = node.run(&["init", "--dry-run", "--skip-phases", "certs/nope"]);
    assert_eq!(out.status.code(), Some(2));
    node.run_ok(&["init", "--dry-run", "--skip-phases", "certs/sa,preflight"]);
}

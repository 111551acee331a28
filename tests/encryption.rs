//! Encryption at rest (Security `encryptionAtRest`): init's `encryption` phase writes the
//! EncryptionConfiguration (mode 0600, the shape the API server reads, a 32-byte key), keeps it
//! on a re-run, refuses to replace a file it cannot read; the API server's manifest points at
//! it; without the opt-in nothing changes; `encryption rotate`'s bad input exits 2. The real
//! API server reading it, and a rotation, are checked on the e2e node (tests/e2e/encryption.rs).

mod common;
use common::*;

const OPT_IN: &str =
    "---\napiVersion: kubeforge.io/v1alpha1\nkind: Security\nencryptionAtRest: true\n";

fn opted_in(node: &Node, profile: &str) -> String {
    node.write_config("RSA-2048", "");
    let mut text = std::fs::read_to_string(node.config_path()).unwrap();
    text.push_str(OPT_IN);
    text.push_str(profile);
    std::fs::write(node.config_path(), text).unwrap();
    node.config_path().to_str().unwrap().to_string()
}

/// The shape of the Kubernetes documentation's EncryptionConfiguration (apiserver.config.k8s.io/v1,
/// "Encrypting Confidential Data at Rest"), field by field: every key known, every value typed.
fn check_documented_shape(v: &serde_yaml::Value) {
    let map = v.as_mapping().unwrap();
    let keys: Vec<&str> = map.keys().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(keys, ["apiVersion", "kind", "resources"]);
    assert_eq!(v["apiVersion"], "apiserver.config.k8s.io/v1");
    assert_eq!(v["kind"], "EncryptionConfiguration");
    let resources = v["resources"].as_sequence().unwrap();
    assert_eq!(resources.len(), 1);
    assert_eq!(
        resources[0]["resources"],
        serde_yaml::from_str::<serde_yaml::Value>("[secrets]").unwrap()
    );
    let providers = resources[0]["providers"].as_sequence().unwrap();
    assert_eq!(providers.len(), 2);
    let keys = providers[0]["secretbox"]["keys"].as_sequence().unwrap();
    assert_eq!(keys.len(), 1);
    let name = keys[0]["name"].as_str().unwrap();
    assert!(name.starts_with("key-") && !name.contains(':'), "{name}");
    assert_eq!(
        b64decode(keys[0]["secret"].as_str().unwrap()).len(),
        32,
        "secretbox needs a 32-byte key"
    );
    assert_eq!(
        providers[1],
        serde_yaml::from_str::<serde_yaml::Value>("identity: {}").unwrap()
    );
}

#[test]
fn init_writes_the_encryption_config_and_the_api_server_reads_it() {
    let node = Node::new();
    let cfg = opted_in(&node, "");
    node.run_ok(&["init", "phase", "certs", "all", "--config", &cfg]);
    let out = node.run_ok(&["init", "phase", "encryption", "--config", &cfg]);
    assert!(out.contains("Generated a key"), "{out}");
    let file = node.pki().join("encryption-config.yaml");
    // Hardened: the API server's account reads it through an ACL entry (stat shows the mask, 0640).
    assert_eq!(permission_bits(&file), 0o600);
    assert!(
        tool_ok("getfacl", &["--absolute-names", file.to_str().unwrap()])
            .contains("user:kube-apiserver:r--")
    );
    let text = std::fs::read_to_string(&file).unwrap();
    check_documented_shape(&serde_yaml::from_str(&text).unwrap());
    // CIS 1.2.28 (kube-bench's audit): the line after `providers:` names an accepted provider.
    let after = text
        .lines()
        .skip_while(|l| !l.contains("providers:"))
        .nth(1)
        .unwrap();
    assert_eq!(after.trim(), "- secretbox:");

    // A re-run keeps the key: a new one would leave the encrypted Secrets unreadable.
    let out = node.run_ok(&["init", "phase", "encryption", "--config", &cfg]);
    assert!(out.contains("Using the existing"), "{out}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);

    node.run_ok(&[
        "init",
        "phase",
        "control-plane",
        "apiserver",
        "--config",
        &cfg,
    ]);
    let command = manifest_command(&node.kubernetes_dir().join("manifests/kube-apiserver.yaml"));
    let flag = format!("--encryption-provider-config={}", file.display());
    assert!(command.contains(&flag), "{command:?}");
    // The file is under the PKI directory the API server mounts already.
    let manifest =
        std::fs::read_to_string(node.kubernetes_dir().join("manifests/kube-apiserver.yaml"))
            .unwrap();
    assert!(
        manifest.contains(&format!("path: {}\n", node.pki().display())),
        "{manifest}"
    );
}

#[test]
fn opt_in_works_with_profile_kubeadm_and_nothing_changes_without_it() {
    let node = Node::new();
    let cfg = opted_in(&node, "profile: kubeadm\n");
    node.run_ok(&["init", "phase", "encryption", "--config", &cfg]);
    assert!(node.pki().join("encryption-config.yaml").exists());

    let plain = Node::new();
    let cfg = plain.write_config("RSA-2048", "");
    let cfg = cfg.to_str().unwrap();
    plain.run_ok(&["init", "phase", "certs", "all", "--config", cfg]);
    let before = plain.snapshot();
    plain.run_ok(&["init", "phase", "encryption", "--config", cfg]);
    assert_eq!(
        plain.snapshot(),
        before,
        "the phase must write nothing without the opt-in"
    );
    plain.run_ok(&[
        "init",
        "phase",
        "control-plane",
        "apiserver",
        "--config",
        cfg,
    ]);
    let command = manifest_command(&plain.kubernetes_dir().join("manifests/kube-apiserver.yaml"));
    assert!(
        !command
            .iter()
            .any(|f| f.starts_with("--encryption-provider-config")),
        "{command:?}"
    );
}

#[test]
fn a_file_it_cannot_read_is_never_replaced() {
    let node = Node::new();
    let cfg = opted_in(&node, "");
    let file = node.pki().join("encryption-config.yaml");
    std::fs::create_dir_all(node.pki()).unwrap();
    std::fs::write(&file, "kind: SomethingElse\n").unwrap();
    let out = node.run(&["init", "phase", "encryption", "--config", &cfg]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to replace it") && err.contains("encryption-config.yaml"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "kind: SomethingElse\n"
    );
}

#[test]
fn rotate_refuses_bad_input_with_exit_2() {
    let node = Node::new();
    let cfg = opted_in(&node, "");
    let out = node.run(&[
        "encryption",
        "rotate",
        "--step",
        "shuffle",
        "--config",
        &cfg,
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let before = node.snapshot();
    let out = node.run(&["encryption", "rotate", "--config", &cfg]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("encryption-config.yaml does not exist"),
        "{err}"
    );
    assert_eq!(node.snapshot(), before);
}

#[test]
fn reset_removes_the_encryption_config() {
    let node = Node::new();
    let cfg = opted_in(&node, "");
    node.run_ok(&["init", "phase", "certs", "all", "--config", &cfg]);
    node.run_ok(&["init", "phase", "encryption", "--config", &cfg]);
    let file = node.pki().join("encryption-config.yaml");
    assert!(file.exists());
    let out = node.run_ok(&["reset", "--force"]);
    assert!(out.contains("encryption-config.yaml"), "{out}");
    assert!(!file.exists());
}

/// `init phase upload-certs` seals the file into kubeadm-certs with the others (the stand-in only
/// stores the Secret) and a control-plane join's download-certs writes the same bytes, 0600.
#[test]
fn a_control_plane_join_downloads_the_same_encryption_config() {
    use common::standin::{control_plane_prepare, join_cluster};
    let cluster_node = Node::new();
    let joiner = Node::new();
    let (_standin, endpoint) = join_cluster(&cluster_node, &joiner.pki());
    let cfg = cluster_node.config_path();
    let text = std::fs::read_to_string(&cfg).unwrap() + OPT_IN;
    std::fs::write(&cfg, text).unwrap();
    cluster_node.run_ok(&[
        "init",
        "phase",
        "encryption",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let key = upload_certs(&cluster_node);
    let pin = openssl_ca_pin(&cluster_node.pki().join("ca.crt"));
    let args = control_plane_prepare(&endpoint, &pin, &key);
    joiner.run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let file = "encryption-config.yaml";
    assert_eq!(
        std::fs::read(joiner.pki().join(file)).unwrap(),
        std::fs::read(cluster_node.pki().join(file)).unwrap()
    );
    assert_eq!(mode(&joiner.pki().join(file)), 0o600);
}

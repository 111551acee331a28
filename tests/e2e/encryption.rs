//! Encryption at rest on the real control plane (Security `encryptionAtRest: true`): a Secret's
//! value as etcd stores it starts with `k8s:enc:secretbox:v1:<first key>:` and does not hold
//! the plaintext; `kubeforge encryption rotate` (one control-plane node: every step in one run)
//! leaves one new key in the file, the Secret stored under it, and still readable via kubectl.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

const OPT_IN: &str =
    "---\napiVersion: kubeforge.io/v1alpha1\nkind: Security\nencryptionAtRest: true\n";
const SECRET: &str = "kubeforge-encryption-probe";
const PLAINTEXT: &str = "plaintext-that-must-not-reach-etcd";

/// The scenario's usual config with the opt-in.
fn opted_in_config(s: &Scenario) -> PathBuf {
    let base = s.host.config(&[]);
    let text = std::fs::read_to_string(&base).unwrap() + OPT_IN;
    let path = base.with_file_name("kubeadm-encryption.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The key names in the node's EncryptionConfiguration, the one that encrypts first.
fn key_names() -> Vec<String> {
    let path = Path::new(KUBERNETES_DIR).join("pki/encryption-config.yaml");
    let v: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["resources"][0]["providers"][0]["secretbox"]["keys"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_string())
        .collect()
}

/// The Secret's value as etcd holds it (etcdctl with the healthcheck client's certificate).
fn stored_in_etcd(name: &str) -> Vec<u8> {
    let pki = format!("{KUBERNETES_DIR}/pki/etcd");
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", "https://127.0.0.1:2379"])
        .args(["--cacert", &format!("{pki}/ca.crt")])
        .args(["--cert", &format!("{pki}/healthcheck-client.crt")])
        .args(["--key", &format!("{pki}/healthcheck-client.key")])
        .args([
            "get",
            &format!("/registry/secrets/default/{name}"),
            "--print-value-only",
        ])
        .output()
        .expect("etcdctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn assert_encrypted_with(key: &str) {
    let raw = stored_in_etcd(SECRET);
    let prefix = format!("k8s:enc:secretbox:v1:{key}:");
    assert!(
        raw.starts_with(prefix.as_bytes()),
        "etcd holds {:?}…, not under {prefix}",
        String::from_utf8_lossy(&raw[..raw.len().min(60)])
    );
    assert!(
        !raw.windows(PLAINTEXT.len())
            .any(|w| w == PLAINTEXT.as_bytes()),
        "the plaintext is in etcd"
    );
}

fn secret_payload(s: &Scenario) -> String {
    let secret = kubectl_json(&s.host, &["get", "secret", "-n", "default", SECRET]);
    let b64 = secret["data"]["payload"].as_str().unwrap();
    String::from_utf8(crate::common::b64decode(b64)).unwrap()
}

/// On a running control plane that opted in: the Secret encrypted, then the key rotated.
pub fn check_encryption_and_rotation(s: &Scenario) {
    crate::common::require_tool("etcdctl");
    harness::run(Command::new(&s.host.kubectl).args([
        &format!("--kubeconfig={KUBERNETES_DIR}/admin.conf"),
        "create",
        "secret",
        "generic",
        "-n",
        "default",
        SECRET,
        &format!("--from-literal=payload={PLAINTEXT}"),
    ]));
    let before = key_names();
    assert_eq!(before.len(), 1, "{before:?}");
    assert_encrypted_with(&before[0]);

    let rotated = kubeforge(&["encryption", "rotate"], &[]);
    println!("{}", rotated.text());
    assert!(rotated.success, "{}\n{}", rotated.text(), rotated.stderr);
    let after = key_names();
    assert_eq!(after.len(), 1, "the old key is dropped: {after:?}");
    assert_ne!(after, before);
    assert_encrypted_with(&after[0]);
    assert_eq!(secret_payload(s), PLAINTEXT);
    println!(
        "FIGURES: encryption rotate (add, promote, rewrite, prune; three API server restarts) took {:.2} s",
        rotated.seconds
    );
}

#[test]
fn secrets_are_encrypted_at_rest_and_a_rotation_moves_them_to_the_new_key() {
    if !asked_for() {
        return;
    }
    let s = Scenario::start();
    let run = init_with(&opted_in_config(&s), &[], &[]);
    assert_ok(&s, &run);
    assert_control_plane_ready(&s);
    check_encryption_and_rotation(&s);
}

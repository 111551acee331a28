//! `--patches DIR` against `kubectl patch --local` (Kubernetes' own strategic merge, JSON merge
//! and JSON patch): the same files applied by kubectl to the unpatched manifests give exactly
//! what kubeforge writes. Bad patch files are bad input: exit 2, the file named, nothing written.

mod common;
use common::*;

use serde_json::Value;
use std::path::Path;

const PATCHES: &[(&str, &str)] = &[
    (
        "kube-apiserver.yaml",
        "spec:
  containers:
  - name: kube-apiserver
    env:
    - name: GODEBUG
      value: x509sha1=1
    resources:
      requests:
        cpu: 500m
    volumeMounts:
    - mountPath: /usr/local/share/ca-certificates
      $patch: delete
    - name: audit
      mountPath: /var/log/audit
  volumes:
  - name: audit
    hostPath:
      path: /var/log/audit
      type: DirectoryOrCreate
  - name: usr-share-ca-certificates
    hostPath:
      path: /opt/ca
  - name: usr-local-share-ca-certificates
    $patch: delete
",
    ),
    (
        "kube-apiserver1+merge.json",
        r#"{"metadata": {"annotations": {"example.com/patched": "yes"}}}"#,
    ),
    (
        "kube-apiserver2+json.yaml",
        "- op: add\n  path: /spec/containers/0/command/-\n  value: --v=4\n",
    ),
    (
        "kube-scheduler+strategic.yaml",
        "spec:
  containers:
  - name: kube-scheduler
    livenessProbe:
      timeoutSeconds: 30
---
metadata:
  labels:
    tier: null
spec:
  containers:
  - name: kube-scheduler
    command:
    - kube-scheduler
    - --kubeconfig=/etc/kubernetes/scheduler.conf
",
    ),
    ("etcd+merge.yaml", "spec:\n  dnsPolicy: Default\n"),
    ("README.md", "not a patch: ignored, as kubeadm ignores it\n"),
];

/// The node's config with InitConfiguration.patches.directory (kubeadm refuses `--patches`
/// beside `--config`, and so does kubeforge).
fn with_patches(node: &Node, dir: &Path) -> String {
    let cfg = node.config_path();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "kind: InitConfiguration\n",
        &format!(
            "kind: InitConfiguration\npatches:\n  directory: {}\n",
            dir.display()
        ),
    );
    let path = node.root().join("kubeadm-patched.yaml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn manifest(node: &Node, component: &str) -> Value {
    let path = node
        .kubernetes_dir()
        .join(format!("manifests/{component}.yaml"));
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// What kubectl writes that kubeforge does not (and kubeadm does not either).
fn normalized(mut v: Value) -> Value {
    v["status"] = Value::Null;
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("creationTimestamp");
    }
    v
}

fn kubectl_patch(manifest: &Path, kind: &str, patch: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("patch");
    std::fs::write(&file, patch).unwrap();
    let out = run_tool(
        &kubectl(),
        &[
            "patch",
            "--local",
            "-f",
            manifest.to_str().unwrap(),
            "--type",
            kind,
            "--patch-file",
            file.to_str().unwrap(),
            "-o",
            "json",
        ],
    );
    assert!(
        out.status.success(),
        "kubectl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn patched_manifests_equal_kubectl_patch_local() {
    let node = Node::new();
    let cfg = node.write_config("ECDSA-P256", "");
    let cfg = cfg.to_str().unwrap();
    let phases = ["etcd", "control-plane"];
    for phase in phases {
        node.run_ok(&["init", "phase", phase, "--config", cfg]);
    }
    let plain = tempfile::tempdir().unwrap();
    for c in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        std::fs::write(
            plain.path().join(format!("{c}.json")),
            manifest(&node, c).to_string(),
        )
        .unwrap();
    }
    let patches = node.root().join("patches");
    std::fs::create_dir(&patches).unwrap();
    for (name, text) in PATCHES {
        std::fs::write(patches.join(name), text).unwrap();
    }
    let patched = with_patches(&node, &patches);
    for phase in phases {
        node.run_ok(&["init", "phase", phase, "--config", &patched]);
    }
    for c in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        // Every document of every file for this target, in file-name order, through kubectl.
        let current = plain.path().join(format!("{c}.json"));
        let mut names: Vec<&(&str, &str)> = PATCHES
            .iter()
            .filter(|(n, _)| n.starts_with(c) && !n.starts_with(&format!("{c}-")))
            .collect();
        names.sort();
        for (name, text) in names {
            let kind = if name.contains("+merge") {
                "merge"
            } else if name.contains("+json") {
                "json"
            } else {
                "strategic"
            };
            for doc in text.split("\n---\n") {
                let patch: Value = serde_yaml::from_str(doc).unwrap();
                let patched = kubectl_patch(&current, kind, &patch.to_string());
                std::fs::write(&current, patched.to_string()).unwrap();
            }
        }
        let expected: Value = serde_json::from_str(&std::fs::read_to_string(&current).unwrap())
            .map(normalized)
            .unwrap();
        let ours = normalized(manifest(&node, c));
        assert_eq!(
            ours, expected,
            "{c}: kubeforge's patched manifest differs from kubectl's"
        );
    }
    // The patches did something (the comparison above is not of two unpatched files).
    let api = manifest(&node, "kube-apiserver");
    assert_eq!(api["metadata"]["annotations"]["example.com/patched"], "yes");
    assert!(api.to_string().contains("--v=4"));
    assert!(manifest(&node, "kube-scheduler")["metadata"]["labels"]["tier"].is_null());
}

#[test]
fn a_bad_patch_file_is_bad_input_and_changes_nothing() {
    for (name, text, expected) in [
        (
            "kube-apiserver+bogus.yaml",
            "spec: {}\n",
            "unknown patch type \"bogus\"",
        ),
        ("etcd.yaml", "spec:\n  containers: [\n", "line "),
        (
            "kube-scheduler+json.yaml",
            "spec: {}\n",
            "must be a list of operations",
        ),
        (
            "kube-controller-manager+json.json",
            r#"[{"op": "remove", "path": "/spec/nope"}]"#,
            "kube-controller-manager+json.json",
        ),
    ] {
        let node = Node::new();
        node.write_config("ECDSA-P256", "");
        let patches = node.root().join("patches");
        std::fs::create_dir(&patches).unwrap();
        std::fs::write(patches.join(name), text).unwrap();
        let cfg = with_patches(&node, &patches);
        let before = node.snapshot();
        let out = node.run(&["init", "--skip-phases", "preflight", "--config", &cfg]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains(name) && stderr.contains(expected),
            "{name}: {stderr}"
        );
        assert_eq!(node.snapshot(), before, "{name}: something was written");
    }
}

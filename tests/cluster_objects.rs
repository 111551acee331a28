//! The executable form of contract 6: every object `init` would create in the cluster (rendered by
//! `init --dry-run` for the config real kubeadm v1.35.6 was given) compared field by field with
//! what kubeadm created (../shared/reference/kubeadm-v1.35.6/objects/).
//!
//! Allowed to differ, and only these: fields the API server or a controller sets (SERVER_SET),
//! random values (the token, its expiry, the CA in cluster-info), and cluster-info's JWS, which
//! the controller-manager adds.

mod common;
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Paths (dot-separated, `[]` for any list element) the server or a controller fills in.
const SERVER_SET: &[&str] = &[
    "metadata.creationTimestamp",
    "metadata.resourceVersion",
    "metadata.uid",
    "metadata.generation",
    "metadata.annotations.deployment.kubernetes.io/revision",
    "metadata.annotations.deprecated.daemonset.template.generation",
    "status",
    // Deployment / DaemonSet defaults
    "spec.progressDeadlineSeconds",
    "spec.revisionHistoryLimit",
    "spec.strategy.rollingUpdate.maxSurge",
    "spec.updateStrategy.rollingUpdate",
    "spec.template.spec.restartPolicy",
    "spec.template.spec.schedulerName",
    "spec.template.spec.securityContext",
    "spec.template.spec.serviceAccount",
    "spec.template.spec.terminationGracePeriodSeconds",
    "spec.template.spec.dnsPolicy",
    "spec.template.spec.containers[].terminationMessagePath",
    "spec.template.spec.containers[].terminationMessagePolicy",
    "spec.template.spec.containers[].resources",
    "spec.template.spec.containers[].env[].valueFrom.fieldRef.apiVersion",
    "spec.template.spec.containers[].readinessProbe.failureThreshold",
    "spec.template.spec.containers[].readinessProbe.periodSeconds",
    "spec.template.spec.containers[].readinessProbe.successThreshold",
    "spec.template.spec.containers[].readinessProbe.timeoutSeconds",
    "spec.template.spec.containers[].livenessProbe.periodSeconds",
    "spec.template.spec.volumes[].configMap.defaultMode",
    "spec.template.spec.volumes[].hostPath.type",
    // Service defaults
    "spec.clusterIPs",
    "spec.internalTrafficPolicy",
    "spec.ipFamilies",
    "spec.ipFamilyPolicy",
    "spec.sessionAffinity",
    "spec.type",
];

fn yaml(path: &Path) -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether kubeadm's `value` at `path` is wholly server-set (every leaf under it listed).
fn server_set(path: &str, value: &Value) -> bool {
    if SERVER_SET.contains(&path) {
        return true;
    }
    match value {
        Value::Object(m) if !m.is_empty() => {
            m.iter().all(|(k, v)| server_set(&format!("{path}.{k}"), v))
        }
        _ => false,
    }
}

/// Every difference between ours and kubeadm's, except what SERVER_SET allows kubeadm's to have
/// in addition.
fn diff(ours: &Value, theirs: &Value, path: &str, out: &mut Vec<String>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (ours, theirs) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                match b.get(k) {
                    Some(w) => diff(v, w, &join(k), out),
                    None => out.push(format!("{}: ours only ({v})", join(k))),
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                if !server_set(&join(k), &b[k]) {
                    out.push(format!("{}: kubeadm's only ({})", join(k), b[k]));
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (v, w) in a.iter().zip(b) {
                diff(v, w, &format!("{path}[]"), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: ours {a}, kubeadm's {b}")),
    }
}

/// (kind, namespace/name) → object, the random token ID replaced by `<id>`.
fn by_key(objects: Vec<Value>) -> BTreeMap<(String, String), Value> {
    objects
        .into_iter()
        .map(|o| {
            let name = o["metadata"]["name"].as_str().unwrap().to_string();
            let name = if name.starts_with("bootstrap-token-") {
                "bootstrap-token-<id>".into()
            } else {
                name
            };
            let ns = o["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string();
            (
                (
                    o["kind"].as_str().unwrap().to_string(),
                    format!("{ns}/{name}"),
                ),
                o,
            )
        })
        .collect()
}

fn dry_run_objects() -> (PathBuf, Vec<Value>) {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), kubeadm_reference_config()).unwrap();
    let out = std::process::Command::new(BIN)
        .args([
            "init",
            "--dry-run",
            "-o",
            "json",
            "--skip-phases",
            "preflight",
            "--config",
        ])
        .arg(config.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let dir = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|e| e["dryRunDir"].as_str().map(PathBuf::from))
        .expect("the dry-run directory in the JSON events");
    let mut files: Vec<PathBuf> = Vec::new();
    for phase in std::fs::read_dir(dir.join("objects")).unwrap() {
        for f in std::fs::read_dir(phase.unwrap().path()).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    files.sort();
    (dir, files.iter().map(|f| yaml(f)).collect())
}

fn reference_objects() -> Vec<Value> {
    let mut objects = Vec::new();
    for entry in std::fs::read_dir(reference_dir().join("objects")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".yaml") || name.starts_with("pod-") || name.starts_with("node-") {
            continue;
        }
        let v = yaml(&path);
        if v["kind"] == "List" {
            objects.extend(v["items"].as_array().unwrap().iter().cloned());
        } else {
            objects.push(v);
        }
    }
    objects
}

#[test]
fn every_object_equals_kubeadms_field_by_field() {
    let (dir, ours) = dry_run_objects();
    let mut ours = by_key(ours);
    let theirs = by_key(reference_objects());

    // Random by nature: the token and its expiry, the CA, the bootstrapsigner's JWS.
    let token = ours
        .get_mut(&("Secret".into(), "kube-system/bootstrap-token-<id>".into()))
        .expect("the token Secret");
    token["metadata"]["name"] = Value::String("bootstrap-token-9yex6m".into());
    for key in ["token-id", "expiration"] {
        assert!(token["data"][key].is_string(), "{key} missing");
        token["data"][key] = theirs[&("Secret".into(), "kube-system/bootstrap-token-<id>".into())]
            ["data"][key]
            .clone();
    }
    let info = ours
        .get_mut(&("ConfigMap".into(), "kube-public/cluster-info".into()))
        .unwrap();
    let reference_info = &theirs[&("ConfigMap".into(), "kube-public/cluster-info".into())];
    let ca = |v: &Value| -> String {
        let kc: Value = serde_yaml::from_str(v["data"]["kubeconfig"].as_str().unwrap()).unwrap();
        kc["clusters"][0]["cluster"]["certificate-authority-data"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (our_ca, their_ca) = (ca(info), ca(reference_info));
    info["data"]["kubeconfig"] = Value::String(
        info["data"]["kubeconfig"]
            .as_str()
            .unwrap()
            .replace(&our_ca, &their_ca),
    );
    let jws: Vec<String> = reference_info["data"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("jws-kubeconfig-"))
        .cloned()
        .collect();
    // kubeforge signs for its own (random) token, as the bootstrapsigner signed for kubeadm's.
    let data = info["data"].as_object_mut().unwrap();
    let ours_signed: Vec<String> = data
        .keys()
        .filter(|k| k.starts_with("jws-kubeconfig-"))
        .cloned()
        .collect();
    assert_eq!(
        (ours_signed.len(), jws.len()),
        (1, 1),
        "one signature each: {ours_signed:?} {jws:?}"
    );
    data.remove(&ours_signed[0]);
    for k in jws {
        info["data"][&k] = reference_info["data"][&k].clone();
    }

    let mut problems = Vec::new();
    for (key, theirs_obj) in &theirs {
        match ours.get(key) {
            None => problems.push(format!("{key:?}: kubeadm creates it, kubeforge does not")),
            Some(o) => {
                let mut found = Vec::new();
                diff(o, theirs_obj, "", &mut found);
                problems.extend(found.into_iter().map(|f| format!("{key:?} {f}")));
            }
        }
    }
    // kubeforge's extra objects must be ones kubeadm created too (listed in its inventory).
    let inventory =
        std::fs::read_to_string(reference_dir().join("objects/inventory-namespaced.txt")).unwrap()
            + &std::fs::read_to_string(reference_dir().join("objects/inventory-cluster.txt"))
                .unwrap();
    for (kind, name) in ours.keys().filter(|k| !theirs.contains_key(*k)) {
        let short = name.rsplit('/').next().unwrap();
        let listed = inventory.lines().any(|l| {
            l.to_lowercase()
                .contains(&format!("{}/{short}", kind.to_lowercase()))
                || l.to_lowercase().contains(&format!(
                    "{}.rbac.authorization.k8s.io/{short}",
                    kind.to_lowercase()
                ))
        });
        if !listed {
            problems.push(format!(
                "({kind}, {name}): kubeforge creates it, kubeadm did not"
            ));
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
    assert!(
        problems.is_empty(),
        "{} differences:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

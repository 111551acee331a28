//! Profile hardened (docs/security.md) on a node under a temp dir: the CIS flags in the
//! manifests, the audit policy and log directory written (and removed by reset), the kubelet's
//! settings and modes, the operator's extraArgs over the hardened flags, profile kubeadm adding
//! none of it. The kube-bench evaluator's own tests run here too (tests/e2e/kube_bench_test.py).

mod common;
use common::*;
use std::path::Path;

fn command(manifest: &Path) -> Vec<String> {
    manifest_command(manifest)
}

fn count(command: &[String], prefix: &str) -> usize {
    command.iter().filter(|a| a.starts_with(prefix)).count()
}

/// init's phases that write the node's files (no cluster to talk to).
fn init_host_phases(node: &Node, cfg: &Path) {
    let cfg = cfg.to_str().unwrap();
    node.run_ok(&["init", "--skip-phases", HOST_PHASES_ONLY, "--config", cfg]);
}

#[test]
fn hardened_init_writes_flags_audit_policy_and_kubelet_settings_and_reset_removes_them() {
    let node = Node::new();
    let cfg = node.write_config("ECDSA-P256", "");
    init_host_phases(&node, &cfg);
    let manifests = node.kubernetes_dir().join("manifests");
    let apiserver = command(&manifests.join("kube-apiserver.yaml"));
    let policy = node.kubernetes_dir().join("audit/policy.yaml");
    let log_dir = node.root().join("var/log/kubernetes/audit");
    for flag in [
        "--profiling=false".to_string(),
        "--service-account-extend-token-expiration=false".into(),
        "--audit-log-maxage=30".into(),
        "--audit-log-maxbackup=10".into(),
        "--audit-log-maxsize=100".into(),
        format!("--audit-policy-file={}", policy.display()),
        format!("--audit-log-path={}/audit.log", log_dir.display()),
    ] {
        assert_eq!(
            apiserver.iter().filter(|a| **a == flag).count(),
            1,
            "{flag} in {apiserver:?}"
        );
    }
    assert_eq!(count(&apiserver, "--tls-cipher-suites=TLS_ECDHE_"), 1);
    let cm = command(&manifests.join("kube-controller-manager.yaml"));
    assert!(cm.contains(&"--profiling=false".into()));
    assert!(cm.contains(&"--terminated-pod-gc-threshold=12500".into()));
    let scheduler = command(&manifests.join("kube-scheduler.yaml"));
    assert!(scheduler.contains(&"--profiling=false".into()));
    assert_eq!(
        count(&command(&manifests.join("etcd.yaml")), "--cipher-suites="),
        1
    );

    // The API server mounts exactly the directories the writer made.
    let text = std::fs::read_to_string(manifests.join("kube-apiserver.yaml")).unwrap();
    for dir in [node.kubernetes_dir().join("audit"), log_dir.clone()] {
        assert!(
            text.contains(&format!("path: {}\n", dir.display()))
                && text.contains(&format!("mountPath: {}\n", dir.display())),
            "{} is not mounted:\n{text}",
            dir.display()
        );
    }
    // The ACL entry for the API server's account shows as 0640 in stat: its base bits are 0600.
    assert_eq!(permission_bits(&policy), 0o600);
    assert!(
        tool_ok("getfacl", &["--absolute-names", policy.to_str().unwrap()])
            .contains("user:kube-apiserver:r--")
    );
    assert_eq!(mode(&log_dir), 0o700);
    assert_eq!(
        tool_ok("stat", &["-c", "%U", log_dir.to_str().unwrap()]).trim(),
        "kube-apiserver",
        "the non-root API server writes its audit log"
    );
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&policy).unwrap()).unwrap();
    assert_eq!(doc["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(doc["kind"], "Policy");

    let kubelet = node.root().join("var/lib/kubelet");
    for f in ["config.yaml", "instance-config.yaml", "kubeadm-flags.env"] {
        assert_eq!(mode(&kubelet.join(f)), 0o600, "{f}");
    }
    let config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(kubelet.join("config.yaml")).unwrap())
            .unwrap();
    assert_eq!(config["seccompDefault"], true);
    assert_eq!(config["podPidsLimit"], 4096);
    assert_eq!(config["tlsCipherSuites"].as_sequence().unwrap().len(), 6);

    node.run_ok(&["reset", "--force"]);
    assert!(!policy.exists() && !node.kubernetes_dir().exists());
    assert!(
        !log_dir.exists(),
        "reset leaves the (empty) audit log dir it made"
    );
}

/// The level of the first rule of `policy` that matches a `verb` on `group`/`resource` by an
/// ordinary user (rules naming users do not match), as the API server picks it.
fn level_for(policy: &serde_yaml::Value, group: &str, resource: &str, verb: &str) -> String {
    let rules = policy["rules"].as_sequence().unwrap();
    let matches = |rule: &serde_yaml::Value| {
        let verbs_ok = rule["verbs"]
            .as_sequence()
            .is_none_or(|v| v.iter().any(|x| x == verb));
        let resources_ok = rule["resources"].as_sequence().is_none_or(|rs| {
            rs.iter().any(|r| {
                r["group"].as_str().unwrap_or("") == group
                    && r["resources"]
                        .as_sequence()
                        .is_none_or(|names| names.iter().any(|n| n == resource))
            })
        });
        rule["users"].is_null() && rule["nonResourceURLs"].is_null() && verbs_ok && resources_ok
    };
    let rule = rules.iter().find(|r| matches(r)).expect("a catch-all rule");
    rule["level"].as_str().unwrap().to_string()
}

#[test]
fn the_audit_policy_records_no_secret_bodies_and_everything_else() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/audit-policy.yaml"),
    )
    .unwrap();
    let policy: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    for verb in ["get", "create", "update", "patch", "delete"] {
        for (group, resource) in [
            ("", "secrets"),
            ("", "configmaps"),
            ("authentication.k8s.io", "tokenreviews"),
        ] {
            assert_eq!(
                level_for(&policy, group, resource, verb),
                "Metadata",
                "{verb} {group}/{resource}"
            );
        }
        assert_eq!(level_for(&policy, "", "pods", verb), "Metadata");
    }
    assert_eq!(
        level_for(
            &policy,
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            "create"
        ),
        "Request"
    );
    let mut levels = policy["rules"].as_sequence().unwrap().iter();
    assert!(levels.all(|r| r["level"] != "RequestResponse"));
}

#[test]
fn the_operators_extra_args_replace_the_hardened_flags() {
    let node = Node::new();
    let extra = "apiServer:\n  extraArgs:\n  - name: audit-log-maxsize\n    value: \"1\"\n  - name: profiling\n    value: \"true\"\ncontrollerManager:\n  extraArgs:\n  - name: terminated-pod-gc-threshold\n    value: \"100\"\n";
    let cfg = node.write_config("ECDSA-P256", extra);
    let out = node.run_ok(&["init", "--dry-run", "--config", cfg.to_str().unwrap()]);
    let dir = dry_run_dir(&out);
    let manifests = Path::new(dir)
        .join(node.kubernetes_dir().strip_prefix("/").unwrap())
        .join("manifests");
    let apiserver = command(&manifests.join("kube-apiserver.yaml"));
    let cm = command(&manifests.join("kube-controller-manager.yaml"));
    std::fs::remove_dir_all(dir).unwrap();
    assert_eq!(count(&apiserver, "--audit-log-maxsize="), 1);
    assert!(apiserver.contains(&"--audit-log-maxsize=1".into()));
    assert_eq!(count(&apiserver, "--profiling="), 1);
    assert!(apiserver.contains(&"--profiling=true".into()));
    assert_eq!(count(&cm, "--terminated-pod-gc-threshold="), 1);
    assert!(cm.contains(&"--terminated-pod-gc-threshold=100".into()));
}

#[test]
fn profile_kubeadm_writes_no_audit_files_and_kubeadms_modes() {
    let node = Node::new();
    let cfg = node.write_config(
        "ECDSA-P256",
        "---\napiVersion: kubeforge.io/v1alpha1\nkind: Security\nprofile: kubeadm\n",
    );
    init_host_phases(&node, &cfg);
    let apiserver = command(&node.kubernetes_dir().join("manifests/kube-apiserver.yaml"));
    assert_eq!(count(&apiserver, "--profiling"), 0);
    assert_eq!(count(&apiserver, "--audit-"), 0);
    assert!(!node.kubernetes_dir().join("audit").exists());
    assert!(!node.root().join("var/log").exists());
    let kubelet = node.root().join("var/lib/kubelet");
    assert_eq!(mode(&kubelet.join("config.yaml")), 0o644);
    let config = std::fs::read_to_string(kubelet.join("config.yaml")).unwrap();
    assert!(!config.contains("seccompDefault") && !config.contains("tlsCipherSuites"));
}

/// The kube-bench evaluator the e2e suite scores real nodes with, on synthetic checks.
#[test]
fn the_kube_bench_evaluator_follows_kube_benchs_rules() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/kube_bench_test.py");
    let out = run_tool("python3", &[script.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn logs_an_earlier_cluster_left_are_handed_to_the_api_servers_account() {
    let node = Node::new();
    let log_dir = node.root().join("var/log/kubernetes/audit");
    std::fs::create_dir_all(&log_dir).unwrap();
    let old = log_dir.join("audit.log");
    std::fs::write(&old, "{}\n").unwrap();
    // As an account a reset removed, whose ID nobody holds now.
    std::os::unix::fs::chown(&old, Some(54321), Some(54321)).unwrap();
    let cfg = node.write_config("ECDSA-P256", "");
    init_host_phases(&node, &cfg);
    for path in [&log_dir, &old] {
        assert_eq!(
            tool_ok("stat", &["-c", "%U", path.to_str().unwrap()]).trim(),
            "kube-apiserver",
            "{}",
            path.display()
        );
    }
}

/// The config of `node` at another Kubernetes version.
fn config_at(node: &Node, version: &str) -> kubeforge::config::Config {
    let text = std::fs::read_to_string(node.config_path()).unwrap();
    let text = text.replace(
        "kubernetesVersion: v1.35.6",
        &format!("kubernetesVersion: {version}"),
    );
    kubeforge::config::load_str(&text, "t.yaml", &Default::default(), &node.kubernetes_dir())
        .unwrap()
}

fn layout(node: &Node) -> kubeforge::node::Layout {
    kubeforge::node::Layout::new(
        &node.kubernetes_dir(),
        &node.root().join("var/lib/kubelet"),
        &node.pki(),
        &node.root().join("var/lib/etcd"),
    )
}

/// What `upgrade` writes for the approver (its post-upgrade step): the manifest re-rendered at
/// the target's pause image, valid for the target; at the same version byte-identical to init's
/// (so the writer leaves it and the pod alone); nothing on a node without the approver.
#[test]
fn upgrade_rerenders_the_approver_manifest_at_the_targets_pause_image() {
    let node = Node::new();
    node.init_files(&node.write_config("ECDSA-P256", ""));
    let path = node
        .kubernetes_dir()
        .join("manifests/kubeforge-approver.yaml");
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(written.contains("image: registry.k8s.io/pause:3.10.1\n"));
    // upgraded() renders this (test) binary, init rendered kubeforge's.
    let exe = std::env::current_exe().unwrap();
    let kubeforge = std::fs::canonicalize(BIN).unwrap();
    let same = kubeforge::kubelet::approver::upgraded(&config_at(&node, "v1.35.6"), &layout(&node))
        .unwrap()
        .expect("the node runs the approver");
    assert_eq!(same.path, path);
    let same = String::from_utf8(same.contents).unwrap();
    assert_eq!(
        same.replace(exe.to_str().unwrap(), kubeforge.to_str().unwrap()),
        written
    );

    let target =
        kubeforge::kubelet::approver::upgraded(&config_at(&node, "v1.36.3"), &layout(&node))
            .unwrap()
            .unwrap();
    let text = String::from_utf8(target.contents).unwrap();
    assert!(
        text.contains("image: registry.k8s.io/pause:3.10.2\n"),
        "{text}"
    );
    assert_eq!(target.mode, 0o600);
    let file = node.root().join("approver-v1.36.yaml");
    std::fs::write(&file, &text).unwrap();
    let out = run_tool(
        "kubernetes-validate",
        &["--strict", "-k", "1.36.0", file.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let kubeadm = Node::new();
    kubeadm.init_files(&kubeadm.write_config(
        "ECDSA-P256",
        "---\napiVersion: kubeforge.io/v1alpha1\nkind: Security\nprofile: kubeadm\n",
    ));
    let none =
        kubeforge::kubelet::approver::upgraded(&config_at(&kubeadm, "v1.36.3"), &layout(&kubeadm));
    assert!(none.unwrap().is_none());
    assert!(!kubeadm
        .kubernetes_dir()
        .join("manifests/kubeforge-approver.yaml")
        .exists());
}

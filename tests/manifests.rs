//! Static pod manifests: byte-for-byte kubeadm v1.35.6's for its own config, accepted by
//! kubernetes-validate --strict for every supported version, and the rendered etcd command line
//! run by Debian's real etcd, answering on the rendered probe URLs.

mod common;
use common::*;
use std::path::{Path, PathBuf};

const COMPONENTS: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

/// Renders the manifests of `config_text` through `init --dry-run` and returns the manifests dir.
fn render(node: &Node, config_text: &str) -> PathBuf {
    std::fs::write(node.config_path(), config_text).unwrap();
    let out = node.run_ok(&[
        "init",
        "--dry-run",
        "--config",
        node.config_path().to_str().unwrap(),
    ]);
    let dir = dry_run_dir(&out);
    // Keep what the dry-run wrote inside the node's temp dir, so it is cleaned up with it.
    let kept = node.root().join(format!(
        "dryrun-{}",
        node.root().read_dir().unwrap().count()
    ));
    std::fs::rename(dir, &kept).unwrap();
    let manifests = kept
        .join(node.kubernetes_dir().strip_prefix("/").unwrap())
        .join("manifests");
    assert_eq!(mode(&manifests), 0o700);
    manifests
}

/// kubeforge's deliberate differences from kubeadm's manifests, all in one place
/// (docs/kubeadm-differences.md): within `startupProbe`, (ours, kubeadm's). The startup probe
/// runs every second after 6 s instead of every 10 s after 10 s, with the same 4 min budget.
const STARTUP_PROBE_DIFFERENCES: &[(&str, &str)] = &[
    ("failureThreshold: 240", "failureThreshold: 24"),
    ("initialDelaySeconds: 6", "initialDelaySeconds: 10"),
    ("periodSeconds: 1", "periodSeconds: 10"),
];

/// Our manifest with the deliberate differences undone; every one of them must be present.
fn as_kubeadm(ours: &str) -> String {
    let mut out = Vec::new();
    let mut in_startup = false;
    let mut undone = 0;
    for line in ours.lines() {
        if line.trim_start().starts_with("startupProbe:") {
            in_startup = true;
        } else if in_startup && !line.starts_with("      ") {
            in_startup = false;
        }
        let mut line = line.to_string();
        if in_startup {
            for (mine, kubeadms) in STARTUP_PROBE_DIFFERENCES {
                if line.trim() == *mine {
                    line = line.replace(mine, kubeadms);
                    undone += 1;
                }
            }
        }
        out.push(line);
    }
    assert_eq!(
        undone,
        STARTUP_PROBE_DIFFERENCES.len(),
        "the startup probe timings are not the documented ones:\n{ours}"
    );
    out.join("\n") + "\n"
}

#[test]
fn manifests_and_kubelet_files_equal_kubeadms_for_its_config() {
    // kubeadm mounts the CA trust directories the host has; the reference host (Debian) had these.
    for dir in [
        "/etc/ssl/certs",
        "/etc/ca-certificates",
        "/usr/share/ca-certificates",
        "/usr/local/share/ca-certificates",
    ] {
        assert!(
            Path::new(dir).is_dir(),
            "this test needs a Debian-like host with {dir}"
        );
    }
    for dir in ["/etc/pki/ca-trust", "/etc/pki/tls/certs"] {
        assert!(
            !Path::new(dir).exists(),
            "this test needs a Debian-like host without {dir}"
        );
    }
    let node = Node::new();
    let reference = kubeadm_reference_config();
    // The reference ran with the default paths; only the kubernetes dir is redirected here.
    let cfg = reference.replace(
        "kubernetesVersion: v1.35.6\n",
        "kubernetesVersion: v1.35.6\ncertificatesDir: /etc/kubernetes/pki\n",
    );
    let node_dir = node.kubernetes_dir();
    let manifests = render(&node, &cfg);
    for c in COMPONENTS {
        let ours = std::fs::read_to_string(manifests.join(format!("{c}.yaml"))).unwrap();
        let ours = as_kubeadm(&ours.replace(node_dir.to_str().unwrap(), "/etc/kubernetes"));
        let theirs =
            std::fs::read_to_string(reference_dir().join(format!("manifests/{c}.yaml"))).unwrap();
        assert_eq!(ours, theirs, "{c}.yaml differs from kubeadm v1.35.6's");
        assert_eq!(mode(&manifests.join(format!("{c}.yaml"))), 0o600);
    }
    // The kubelet's files; kubeadm-flags.env carries --hostname-override because the reference
    // node's name (cp1) is not its OS hostname — nor this machine's.
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(
        hostname.trim(),
        "cp1",
        "this test needs a host not named cp1"
    );
    let dry_run_root = manifests
        .ancestors()
        .nth(node.kubernetes_dir().components().count())
        .unwrap();
    let kubelet_dir = dry_run_root.join(
        node.root()
            .join("var/lib/kubelet")
            .strip_prefix("/")
            .unwrap(),
    );
    for f in ["config.yaml", "instance-config.yaml", "kubeadm-flags.env"] {
        let ours = std::fs::read_to_string(kubelet_dir.join(f)).unwrap();
        let ours = ours.replace(node_dir.to_str().unwrap(), "/etc/kubernetes");
        let theirs = std::fs::read_to_string(reference_dir().join(format!("kubelet/{f}"))).unwrap();
        assert_eq!(ours, theirs, "{f} differs from kubeadm v1.35.6's");
        assert_eq!(mode(&kubelet_dir.join(f)), 0o644, "{f} mode");
    }
}

fn cluster_config(node: &Node, version: &str, extra: &str) -> String {
    format!(
        "apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\nlocalAPIEndpoint:\n  advertiseAddress: 192.0.2.2\nnodeRegistration:\n  name: cp1\n---\napiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nkubernetesVersion: {version}\ncertificatesDir: {pki}\nnetworking:\n  podSubnet: 10.244.0.0/16\n{extra}",
        pki = node.pki().display()
    )
}

#[test]
fn kubernetes_validate_accepts_every_manifest_for_every_version() {
    for version in ["v1.33.4", "v1.34.2", "v1.35.6", "v1.36.3", "v1.37.0"] {
        let node = Node::new();
        let extra = "apiServer:\n  extraArgs:\n  - name: audit-log-maxage\n    value: \"7\"\n  extraVolumes:\n  - name: audit\n    hostPath: /var/log/audit\n    mountPath: /var/log/audit\n    pathType: DirectoryOrCreate\n  extraEnvs:\n  - name: GOMAXPROCS\n    value: \"2\"\n";
        let manifests = render(&node, &cluster_config(&node, version, extra));
        // kubernetes-validate 1.37 carries the schemas of every version here.
        let minor = version.trim_start_matches('v').rsplit_once('.').unwrap().0;
        let schema = format!("{minor}.0");
        // Profile hardened (the default) adds kubeforge's CSR approver (docs/security.md).
        for c in COMPONENTS.into_iter().chain(["kubeforge-approver"]) {
            let file = manifests.join(format!("{c}.yaml"));
            let out = run_tool(
                "kubernetes-validate",
                &["--strict", "-k", &schema, file.to_str().unwrap()],
            );
            assert!(
                out.status.success(),
                "{version} {c}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let apiserver = std::fs::read_to_string(manifests.join("kube-apiserver.yaml")).unwrap();
        assert!(
            apiserver.contains("- --tls-private-key-file=")
                && apiserver.contains("- --audit-log-maxage=7\n")
                && apiserver.contains("- --kubelet-certificate-authority=")
        );
        let approver: serde_yaml::Value = serde_yaml::from_str(
            &std::fs::read_to_string(manifests.join("kubeforge-approver.yaml")).unwrap(),
        )
        .unwrap();
        let container = &approver["spec"]["containers"][0];
        let security = &container["securityContext"];
        assert!(container["image"].as_str().unwrap().contains("/pause:"));
        assert_eq!(container["command"][0].as_str(), Some(BIN));
        assert_eq!(security["runAsNonRoot"].as_bool(), Some(true));
        assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
        assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
        assert_eq!(security["capabilities"]["drop"][0].as_str(), Some("ALL"));
        let named = version != "v1.33.4";
        assert_eq!(
            apiserver.contains("port: probe-port"),
            named,
            "{version}: probe port style"
        );
    }
}

#[test]
fn debian_etcd_runs_the_rendered_etcd_command() {
    require_tool("etcd");
    let node = Node::new();
    // Debian's etcd is 3.4: the manifest must use 3.4's flags and probe paths.
    let text = cluster_config(
        &node,
        "v1.35.6",
        &format!(
            "etcd:\n  local:\n    imageTag: 3.4.23-0\n    dataDir: {}/var/lib/etcd\n",
            node.root().display()
        ),
    )
    .replace("192.0.2.2", "10.213.0.1");
    std::fs::write(node.config_path(), &text).unwrap();
    let cfg = node.config_path();
    let cfg = cfg.to_str().unwrap();
    node.run_ok(&["init", "phase", "certs", "all", "--config", cfg]);
    node.run_ok(&["init", "phase", "etcd", "local", "--config", cfg]);
    let manifest = node.kubernetes_dir().join("manifests/etcd.yaml");
    let pod: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    let container = &pod["spec"]["containers"][0];
    let command: Vec<String> = container["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(
        command.contains(&"--experimental-initial-corrupt-check=true".to_string()),
        "{command:?}"
    );
    assert_eq!(mode(&node.root().join("var/lib/etcd")), 0o700);

    let ns = Netns::new("10.213.0.1");
    let log = std::fs::File::create(node.root().join("etcd.log")).unwrap();
    let mut etcd = ns
        .cmd("etcd")
        .args(&command[1..])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    // The rendered probes, as the kubelet would call them.
    let probe_url = |probe: &str| {
        let get = &container[probe]["httpGet"];
        format!(
            "http://{}:2381{}",
            get["host"].as_str().unwrap(),
            get["path"].as_str().unwrap()
        )
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut healthy = false;
    while std::time::Instant::now() < deadline && !healthy {
        healthy = ["livenessProbe", "startupProbe"].iter().all(|p| {
            ns.cmd("curl")
                .args(["-sf", "--max-time", "2", &probe_url(p)])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let etcd_log = std::fs::read_to_string(node.root().join("etcd.log")).unwrap_or_default();
    assert!(
        healthy,
        "etcd never answered its rendered probes: {}\n{etcd_log}",
        probe_url("livenessProbe")
    );
    // kube-apiserver's --etcd-* files and --etcd-servers reach it.
    let api: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(render(&node, &text).join("kube-apiserver.yaml")).unwrap(),
    )
    .unwrap();
    let flag = |name: &str| {
        api["spec"]["containers"][0]["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .find_map(|f| {
                f.as_str()
                    .unwrap()
                    .strip_prefix(&format!("--{name}="))
                    .map(str::to_string)
            })
            .unwrap()
    };
    let out = ns
        .cmd("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &flag("etcd-servers"),
            "--cacert",
            &flag("etcd-cafile"),
            "--cert",
            &flag("etcd-certfile"),
            "--key",
            &flag("etcd-keyfile"),
            "endpoint",
            "health",
        ])
        .output()
        .unwrap();
    let _ = etcd.kill();
    let _ = etcd.wait();
    assert!(
        out.status.success(),
        "etcdctl with the apiserver's flags: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

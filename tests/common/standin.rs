//! The stand-in of `tests/standin/apiserver.py`: client logic only (see its docstring).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

use super::{free_port, Node};

/// This host's first non-loopback IPv4 address: kubeforge refuses to advertise a loopback one.
pub fn host_ip() -> String {
    let out = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .expect("hostname -I");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|a| {
            a.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| !ip.is_loopback())
        })
        .expect("a non-loopback IPv4 address on this host")
        .to_string()
}

pub struct StandIn {
    child: Child,
    pub log: PathBuf,
}

impl StandIn {
    /// Starts the stand-in with `config` (its `log` is set here) and waits until it listens.
    pub fn start(dir: &Path, config: Value) -> StandIn {
        StandIn::start_in(dir, config, Command::new("python3"))
    }

    /// The same, run by `launcher` (e.g. `ip netns exec …`, to which python3 is appended
    /// unless it is python3 itself).
    pub fn start_in(dir: &Path, mut config: Value, mut launcher: Command) -> StandIn {
        let log = dir.join("standin.log");
        config["log"] = Value::String(log.display().to_string());
        let path = dir.join("standin.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/standin/apiserver.py");
        if launcher.get_program() != "python3" {
            launcher.arg("python3");
        }
        let mut child = launcher
            .arg(script)
            .arg(&path)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the stand-in did not start");
        StandIn { child, log }
    }

    /// Every request so far: method, path, query, user, groups.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn count(&self, method: &str, path_part: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r["method"] == method && r["path"].as_str().unwrap().contains(path_part))
            .count()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A "cluster" for joins: its PKI on `cluster`, its API played by the stand-in; the worker's certificate
/// dir is `worker_pki` (the ClusterConfiguration's certificatesDir, as uploaded).
pub fn join_cluster(cluster: &Node, worker_pki: &Path) -> (StandIn, String) {
    join_cluster_with(cluster, worker_pki, "", json!([]))
}

/// The same, with `extra` added to the ClusterConfiguration it uploaded and the stand-in playing
/// `faults` (see its docstring).
pub fn join_cluster_with(
    cluster: &Node,
    worker_pki: &Path,
    extra: &str,
    faults: Value,
) -> (StandIn, String) {
    let port = free_port();
    let ip = host_ip();
    let cfg = cluster.write_config("ECDSA-P256", "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("192.0.2.2", &ip)
        .replace("bindPort: 6443", &format!("bindPort: {port}"));
    std::fs::write(&cfg, text).unwrap();
    for phase in ["certs", "kubeconfig"] {
        cluster.run_ok(&["init", "phase", phase, "--config", cfg.to_str().unwrap()]);
    }
    let pki = cluster.pki();
    let ca = std::fs::read_to_string(pki.join("ca.crt")).unwrap();
    let endpoint = format!("{ip}:{port}");
    let info = format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://{endpoint}\n  name: \"\"\ncontexts: null\ncurrent-context: \"\"\nkind: Config\nusers: null\n",
        b64(&ca)
    );
    let cluster_configuration = format!(
        "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nkubernetesVersion: v1.35.6\ncontrolPlaneEndpoint: {endpoint}\ncertificatesDir: {}\n{extra}",
        worker_pki.display()
    );
    let kubelet = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nmaxPods: 77\nclusterDNS:\n- 10.96.0.10\n";
    let file = |n: &str| pki.join(n).display().to_string();
    let standin = StandIn::start(
        cluster.root(),
        json!({
            "api": {"host": ip, "port": port, "cert": file("apiserver.crt"), "key": file("apiserver.key"), "ca": file("ca.crt")},
            "nodes": ["w1"],
            "sign": true,
            "faults": faults,
            "objects": [
                {"apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
                 "metadata": {"name": "bootstrap-token-abcdef", "namespace": "kube-system"},
                 "data": {"token-id": b64("abcdef"), "token-secret": b64("0123456789abcdef"),
                          "usage-bootstrap-signing": b64("true"), "usage-bootstrap-authentication": b64("true")}},
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cluster-info", "namespace": "kube-public"},
                 "data": {"kubeconfig": info}},
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
                 "data": {"ClusterConfiguration": cluster_configuration}},
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kubelet-config", "namespace": "kube-system"},
                 "data": {"kubelet": kubelet}},
                // What a kubeforge init stores: joins harden like the first node.
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kubeforge-security", "namespace": "kube-system"},
                 "data": {"Security": "apiVersion: kubeforge.io/v1alpha1\nkind: Security\nprofile: hardened\n"}},
            ],
        }),
    );
    (standin, endpoint)
}

/// `join phase control-plane-prepare` of node cp2 at this host's address against a
/// `join_cluster`, with the stand-in's token, the CA pin `pin` and the certificate key `key`.
pub fn control_plane_prepare(endpoint: &str, pin: &str, key: &str) -> Vec<String> {
    [
        "join",
        "phase",
        "control-plane-prepare",
        endpoint,
        "--token",
        "abcdef.0123456789abcdef",
        "--discovery-token-ca-cert-hash",
        pin,
        "--control-plane",
        "--certificate-key",
        key,
        "--apiserver-advertise-address",
        &host_ip(),
        "--node-name",
        "cp2",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

/// Plays the kubelet's TLS bootstrap: once bootstrap-kubelet.conf appears, writes kubelet.conf
/// (the cluster's admin credentials stand in for the kubelet's certificate).
pub fn kubelet_bootstraps(worker: &Node, cluster: &Node) -> std::thread::JoinHandle<()> {
    let dir = worker.kubernetes_dir();
    let admin = std::fs::read(cluster.kubernetes_dir().join("admin.conf")).unwrap();
    std::thread::spawn(move || {
        for _ in 0..200 {
            if dir.join("bootstrap-kubelet.conf").exists() {
                std::thread::sleep(std::time::Duration::from_millis(300));
                std::fs::write(dir.join("kubelet.conf"), &admin).unwrap();
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    })
}

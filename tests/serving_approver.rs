//! `kubeforge approver`'s client logic against the stand-in API server (tests/standin): it lists
//! the kubelet-serving CSRs, approves through the approval subresource the one that matches its
//! Node, once, and leaves the others pending. The requests are real PEM CSRs made by openssl.
//! Client logic only: that a real API server, controller-manager and kubelet then serve a
//! verified certificate is the e2e suite's (tests/e2e/serving.rs).

mod common;
use common::standin::{host_ip, StandIn};
use common::*;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// A CSR object for signer kubelet-serving, requested by `user`, subject node `cn_node`, IP SAN
/// `ip`, its PEM made by openssl.
fn csr(dir: &std::path::Path, name: &str, user: &str, cn_node: &str, ip: &str) -> Value {
    let pem = node_serving_request(dir, name, cn_node, ip);
    json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": { "name": name },
        "spec": {
            "signerName": "kubernetes.io/kubelet-serving",
            "username": user,
            "groups": ["system:nodes", "system:authenticated"],
            "usages": ["digital signature", "server auth"],
            "request": base64::engine::general_purpose::STANDARD.encode(pem),
        },
    })
}

/// A node with the cluster's certificates and kubeconfigs, its API server on this host's
/// address at `port`.
fn node_with_credentials(port: u16) -> Node {
    let node = Node::new();
    std::fs::write(
        node.config_path(),
        format!(
            "apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\nlocalAPIEndpoint:\n  advertiseAddress: {ip}\n  bindPort: {port}\nnodeRegistration:\n  name: cp1\n---\napiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nkubernetesVersion: v1.35.6\nencryptionAlgorithm: ECDSA-P256\ncertificatesDir: {pki}\n",
            ip = host_ip(),
            pki = node.pki().display()
        ),
    )
    .unwrap();
    let cfg = node.config_path();
    for phase in ["certs", "kubeconfig"] {
        node.run_ok(&["init", "phase", phase, "--config", cfg.to_str().unwrap()]);
    }
    node
}

#[test]
fn the_approver_approves_the_matching_csr_once_and_leaves_the_others_pending() {
    let port = free_port();
    let node = node_with_credentials(port);
    let dir = node.root();
    let worker = json!({
        "apiVersion": "v1", "kind": "Node", "metadata": { "name": "w1" },
        "status": { "addresses": [
            { "type": "InternalIP", "address": "10.9.0.5" },
            { "type": "Hostname", "address": "w1" },
        ] },
    });
    let objects = json!([
        worker,
        csr(dir, "good", "system:node:w1", "w1", "10.9.0.5"),
        csr(dir, "foreign-ip", "system:node:w1", "w1", "10.9.0.6"),
        csr(dir, "ghost", "system:node:ghost", "ghost", "10.9.0.5"),
        csr(dir, "by-admin", "kubernetes-admin", "w1", "10.9.0.5"),
    ]);
    let file = |n: &str| node.pki().join(n).display().to_string();
    let standin = StandIn::start(
        dir,
        json!({
            "api": {"host": host_ip(), "port": port, "cert": file("apiserver.crt"), "key": file("apiserver.key"), "ca": file("ca.crt")},
            "objects": objects,
        }),
    );
    let admin = node.kubernetes_dir().join("admin.conf");
    let mut approver = Command::new(BIN)
        .args(["approver", "-v", "--interval-seconds", "1", "--kubeconfig"])
        .arg(&admin)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    // Three passes after the approval: the approved CSR is not approved again.
    while standin.count("APPROVAL", "good") == 0 && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    let _ = approver.kill();
    let out = approver.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(standin.count("APPROVAL", "good"), 1, "{log}");
    assert!(log.contains("approved good of node w1"), "{log}");
    for other in ["foreign-ip", "ghost", "by-admin"] {
        assert_eq!(standin.count("APPROVAL", other), 0, "{other}: {log}");
        assert!(
            log.contains(&format!("left {other} pending")),
            "{other}: {log}"
        );
    }
    assert!(
        standin.count(
            "GET",
            "/apis/certificates.k8s.io/v1/certificatesigningrequests"
        ) >= 3,
        "{log}"
    );
}

/// In its pod the approver is PID 1, whose signals the kernel drops unless it handles them: it
/// must exit on SIGTERM, or every restart, reset or upgrade of its pod waits out the 30 s grace
/// period. Run as PID 1 of a new PID namespace (`unshare --pid --fork`), against an API server
/// that is not there, it exits within 3 s of a SIGTERM from outside.
#[test]
fn the_approver_as_pid_1_exits_on_sigterm() {
    require_tool("unshare");
    let node = node_with_credentials(free_port());
    let mut unshare = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            BIN,
            "approver",
            "--interval-seconds",
            "1",
        ])
        .arg("--kubeconfig")
        .arg(node.kubernetes_dir().join("admin.conf"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let children = format!("/proc/{0}/task/{0}/children", unshare.id());
    let start = Instant::now();
    let pid1 = loop {
        let text = std::fs::read_to_string(&children).unwrap_or_default();
        if let Some(pid) = text.split_whitespace().next() {
            break pid.parse::<i32>().unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no child of unshare"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // Past start-up, into its loop (the first pass fails: nothing listens).
    std::thread::sleep(Duration::from_millis(1500));
    let signal = |sig: &str| {
        let _ = Command::new("kill").args([sig, &pid1.to_string()]).status();
    };
    signal("-TERM");
    let sent = Instant::now();
    while unshare.try_wait().unwrap().is_none() && sent.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let exited = unshare.try_wait().unwrap().is_some();
    if !exited {
        signal("-KILL");
        let _ = unshare.wait();
    }
    assert!(exited, "the approver as PID 1 ignored SIGTERM");
}

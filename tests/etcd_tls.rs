//! Debian's real etcd serving with the generated etcd/server and etcd/peer certificates and
//! client-certificate auth; etcdctl with apiserver-etcd-client and etcd/healthcheck-client gets in,
//! a client certificate from another CA does not.

mod common;
use common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn etcdctl(endpoint: &str, ca: &str, cert: &str, key: &str, args: &[&str]) -> std::process::Output {
    require_tool("etcdctl");
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            endpoint,
            "--cacert",
            ca,
            "--cert",
            cert,
            "--key",
            key,
            "--command-timeout=5s",
        ])
        .args(args)
        .output()
        .expect("etcdctl")
}

fn check(algorithm: &str) {
    let node = Node::new();
    node.generate(algorithm);
    serve_and_check(&node, algorithm);
}

fn serve_and_check(node: &Node, algorithm: &str) {
    require_tool("etcd");
    let pki = node.pki();
    let p = |f: &str| pki.join(f).to_str().unwrap().to_string();
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("https://127.0.0.1:{client}");
    let peer_url = format!("https://127.0.0.1:{peer}");
    let data = node.root().join("var/lib/etcd");
    let log = std::fs::File::create(node.root().join("etcd.log")).unwrap();
    let _etcd = Etcd(
        Command::new("etcd")
            .args([
                "--name=cp1",
                &format!("--data-dir={}", data.display()),
                &format!("--listen-client-urls={client_url}"),
                &format!("--advertise-client-urls={client_url}"),
                &format!("--listen-peer-urls={peer_url}"),
                &format!("--initial-advertise-peer-urls={peer_url}"),
                &format!("--initial-cluster=cp1={peer_url}"),
                &format!("--cert-file={}", p("etcd/server.crt")),
                &format!("--key-file={}", p("etcd/server.key")),
                "--client-cert-auth=true",
                &format!("--trusted-ca-file={}", p("etcd/ca.crt")),
                &format!("--peer-cert-file={}", p("etcd/peer.crt")),
                &format!("--peer-key-file={}", p("etcd/peer.key")),
                "--peer-client-cert-auth=true",
                &format!("--peer-trusted-ca-file={}", p("etcd/ca.crt")),
                "--snapshot-count=10000",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd"),
    );
    let ca = p("etcd/ca.crt");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = etcdctl(
            &client_url,
            &ca,
            &p("apiserver-etcd-client.crt"),
            &p("apiserver-etcd-client.key"),
            &["endpoint", "health"],
        );
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "etcd never became healthy: {}\netcd log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(node.root().join("etcd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = etcdctl(
        &client_url,
        &ca,
        &p("etcd/healthcheck-client.crt"),
        &p("etcd/healthcheck-client.key"),
        &["endpoint", "health"],
    );
    assert!(
        out.status.success(),
        "healthcheck-client refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = etcdctl(
        &client_url,
        &ca,
        &p("apiserver-etcd-client.crt"),
        &p("apiserver-etcd-client.key"),
        &["put", "/kubeforge", "ok"],
    );
    assert!(
        out.status.success(),
        "put: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = etcdctl(
        &client_url,
        &ca,
        &p("apiserver-etcd-client.crt"),
        &p("apiserver-etcd-client.key"),
        &["get", "/kubeforge", "--print-value-only"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");

    // A client certificate from another cluster's etcd CA is refused.
    let other = Node::new();
    other.generate(algorithm);
    let o = |f: &str| other.pki().join(f).to_str().unwrap().to_string();
    let out = etcdctl(
        &client_url,
        &ca,
        &o("apiserver-etcd-client.crt"),
        &o("apiserver-etcd-client.key"),
        &["endpoint", "health"],
    );
    assert!(
        !out.status.success(),
        "a client certificate from another CA was accepted"
    );
}

#[test]
fn etcd_serves_with_rsa_certificates() {
    check("RSA-2048");
}

#[test]
fn etcd_serves_with_ecdsa_certificates() {
    check("ECDSA-P256");
}

/// After `certs renew all`, etcd serves with the renewed server and peer certificates and takes
/// the renewed client certificates.
#[test]
fn etcd_serves_with_renewed_certificates() {
    let node = Node::new();
    node.generate("RSA-2048");
    let before = std::fs::read(node.pki().join("etcd/server.crt")).unwrap();
    node.renew_all();
    assert_ne!(
        std::fs::read(node.pki().join("etcd/server.crt")).unwrap(),
        before
    );
    serve_and_check(&node, "RSA-2048");
}

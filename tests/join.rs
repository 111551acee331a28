//! A worker join against the stand-in API server (tests/standin/apiserver.py), client logic
//! only: discovery with the pin, the cluster's configuration downloaded with the token, the
//! kubelet's files, the wait for its TLS bootstrap (played here by the test writing kubelet.conf)
//! and the Node, the bootstrap kubeconfig removed afterwards, a re-run that changes nothing, and
//! bad input refused before anything is written. The real kubelet's part is the lab's.

mod common;
use common::standin::{
    control_plane_prepare, host_ip, join_cluster as cluster, kubelet_bootstraps,
};
use common::*;

const TOKEN: &str = "abcdef.0123456789abcdef";

fn pin(cluster: &Node) -> String {
    openssl_ca_pin(&cluster.pki().join("ca.crt"))
}

/// A worker's join of node `w1` (preflight skipped: this host has no kubelet or runtime).
fn worker_join<'a>(endpoint: &'a str, pin: &'a str) -> [&'a str; 10] {
    [
        "join",
        endpoint,
        "--token",
        TOKEN,
        "--discovery-token-ca-cert-hash",
        pin,
        "--node-name",
        "w1",
        "--skip-phases",
        "preflight",
    ]
}

#[test]
fn a_worker_joins_and_a_rerun_changes_nothing() {
    let cluster_node = Node::new();
    let worker = Node::new();
    let (_standin, endpoint) = cluster(&cluster_node, &worker.pki());
    let pin = pin(&cluster_node);
    let args = worker_join(&endpoint, &pin);
    let kubelet = kubelet_bootstraps(&worker, &cluster_node);
    let out = worker.run_ok(&args);
    kubelet.join().unwrap();
    assert!(out.contains("The node w1 is registered"), "{out}");
    assert!(out.contains("This node has joined the cluster"), "{out}");
    assert!(
        !out.contains("0123456789abcdef"),
        "the token was printed:\n{out}"
    );
    assert_eq!(
        std::fs::read(worker.pki().join("ca.crt")).unwrap(),
        std::fs::read(cluster_node.pki().join("ca.crt")).unwrap()
    );
    let kubelet_dir = worker.root().join("var/lib/kubelet");
    let config = std::fs::read_to_string(kubelet_dir.join("config.yaml")).unwrap();
    assert!(config.contains("maxPods: 77"), "{config}");
    assert!(kubelet_dir.join("kubeadm-flags.env").exists());
    assert!(
        !worker
            .kubernetes_dir()
            .join("bootstrap-kubelet.conf")
            .exists(),
        "the bootstrap token is left on disk"
    );

    let before = worker.snapshot();
    let again = worker.run_ok(&args);
    assert!(again.contains("has bootstrapped already"), "{again}");
    assert_eq!(worker.snapshot(), before, "a re-run changed files");

    // Another worker's join killed at each phase boundary (KUBEFORGE_FAULT) is completed by a
    // plain re-run.
    let worker = Node::new();
    let kubelet = kubelet_bootstraps(&worker, &cluster_node);
    for phase in ["preflight", "kubelet-start"] {
        let args: Vec<&str> = args
            .iter()
            .copied()
            .filter(|a| *a != "--skip-phases" && *a != "preflight")
            .collect();
        let killed = worker
            .command(&args)
            .args(["--ignore-preflight-errors", "all"])
            .env("KUBEFORGE_FAULT", format!("after:{phase}"))
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&killed.stderr).contains(&format!("after phase {phase}")),
            "the fault hook did not stop the join after {phase}: {}",
            String::from_utf8_lossy(&killed.stderr)
        );
    }
    kubelet.join().unwrap();
    let out = worker.run_ok(&args);
    assert!(out.contains("This node has joined the cluster"), "{out}");
    assert!(!worker
        .kubernetes_dir()
        .join("bootstrap-kubelet.conf")
        .exists());
}

#[test]
fn bad_input_and_an_untrusted_cluster_write_nothing() {
    let cluster_node = Node::new();
    let worker = Node::new();
    let (_standin, endpoint) = cluster(&cluster_node, &worker.pki());
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let right = pin(&cluster_node);
    let key = "ab".repeat(32);
    for (args, code, expected) in [
        (
            vec!["join", &endpoint, "--token", TOKEN],
            2,
            "--discovery-token-ca-cert-hash",
        ),
        (
            vec![
                "join",
                &endpoint,
                "--token",
                TOKEN,
                "--discovery-token-unsafe-skip-ca-verification",
                "--certificate-key",
                &key,
            ],
            2,
            "--control-plane",
        ),
        (
            vec![
                "join",
                &endpoint,
                "--token",
                "nope",
                "--discovery-token-ca-cert-hash",
                &wrong,
            ],
            2,
            "--token",
        ),
        (
            vec![
                "join",
                &endpoint,
                "--token",
                TOKEN,
                "--discovery-token-ca-cert-hash",
                &wrong,
                "--skip-phases",
                "preflight",
            ],
            1,
            "none of the --discovery-token-ca-cert-hash values",
        ),
        (
            vec![
                "join",
                &endpoint,
                "--token",
                "abcdef.0000000000000000",
                "--discovery-token-ca-cert-hash",
                &right,
                "--skip-phases",
                "preflight",
            ],
            1,
            "does not verify with the token",
        ),
    ] {
        let before = worker.snapshot();
        let out = worker.run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("0123456789abcdef"), "{stderr}");
        assert_eq!(worker.snapshot(), before, "{args:?} wrote files");
    }
}

#[test]
fn a_control_plane_join_downloads_the_shared_keys_and_a_wrong_key_writes_nothing() {
    let cluster_node = Node::new();
    let joiner = Node::new();
    let (_standin, endpoint) = cluster(&cluster_node, &joiner.pki());
    let key = upload_certs(&cluster_node);
    let pin = pin(&cluster_node);
    let join = |key: &str| control_plane_prepare(&endpoint, &pin, key);

    let before = joiner.snapshot();
    let wrong = join(&"00".repeat(32));
    let out = joiner.run(&wrong.iter().map(String::as_str).collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("wrong or expired key"), "{stderr}");
    assert_eq!(joiner.snapshot(), before, "a wrong key wrote files");

    let right = join(&key);
    let out = joiner.run_ok(&right.iter().map(String::as_str).collect::<Vec<_>>());
    for shared in [
        "ca.crt",
        "ca.key",
        "sa.key",
        "sa.pub",
        "front-proxy-ca.crt",
        "front-proxy-ca.key",
        "etcd/ca.crt",
        "etcd/ca.key",
    ] {
        assert_eq!(
            std::fs::read(joiner.pki().join(shared)).unwrap(),
            std::fs::read(cluster_node.pki().join(shared)).unwrap(),
            "{shared} differs from the first node's\n{out}"
        );
    }
    // Its own serving certificate, signed by the shared CA.
    let own = joiner.pki().join("apiserver.crt");
    assert_ne!(
        std::fs::read(&own).unwrap(),
        std::fs::read(cluster_node.pki().join("apiserver.crt")).unwrap()
    );
    tool_ok(
        "openssl",
        &[
            "verify",
            "-CAfile",
            joiner.pki().join("ca.crt").to_str().unwrap(),
            own.to_str().unwrap(),
        ],
    );
    let dir = joiner.kubernetes_dir();
    for file in [
        "admin.conf",
        "controller-manager.conf",
        "scheduler.conf",
        "manifests/kube-apiserver.yaml",
    ] {
        assert!(dir.join(file).exists(), "{file} missing\n{out}");
    }
    assert!(
        !dir.join("super-admin.conf").exists(),
        "super-admin.conf stays on the first node"
    );
}

/// A control-plane join pulls the images its node runs in preflight, from the cluster's
/// imageRepository (a real registry) through the runtime named by `--cri-socket` (a real
/// containerd): the stand-in plays only the discovery.
#[test]
fn a_control_plane_join_pulls_its_images_in_preflight() {
    let lab = common::lab::Lab::start();
    let images = lab.images();
    images.iter().for_each(|i| lab.push(i));
    let cluster_node = Node::new();
    let joiner = Node::new();
    let extra = format!(
        "imageRepository: {}\netcd:\n  local:\n    dataDir: {}\n",
        lab.repo(),
        joiner.root().join("var/lib/etcd").display()
    );
    let (_standin, endpoint) = common::standin::join_cluster_with(
        &cluster_node,
        &joiner.pki(),
        &extra,
        serde_json::json!([]),
    );
    let (pin, ip, port) = (pin(&cluster_node), host_ip(), free_port().to_string());
    let socket = lab.socket();
    let ignore = format!("{},Port-{port}", common::lab::OTHER_CHECKS);
    let out = joiner.run(&[
        "join",
        "phase",
        "preflight",
        &endpoint,
        "--token",
        TOKEN,
        "--discovery-token-ca-cert-hash",
        &pin,
        "--control-plane",
        "--apiserver-advertise-address",
        &ip,
        "--apiserver-bind-port",
        &port,
        "--node-name",
        "cp2",
        "--cri-socket",
        &socket,
        "--ignore-preflight-errors",
        &ignore,
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("[preflight] Pulling images required"),
        "{text}"
    );
    let node_images: Vec<String> = images
        .into_iter()
        .filter(|i| !i.contains("/coredns:"))
        .collect();
    assert_eq!(lab.missing(&node_images), Vec::<String>::new(), "{text}");
}

#[test]
fn a_join_rides_out_dropped_connections_429_and_500() {
    let cluster_node = Node::new();
    let worker = Node::new();
    let fault = |method: &str, path: &str, play: &str, times: i32| serde_json::json!({"method": method, "path": path, "play": play, "times": times});
    let faults = serde_json::json!([
        // Discovery's anonymous fetch, then the calls with the token.
        fault("GET", "/configmaps/cluster-info", "drop", 2),
        fault("GET", "/configmaps/kubeadm-config", "500", 2),
        fault("GET", "/configmaps/kubelet-config", "429", 1),
    ]);
    let (standin, endpoint) =
        common::standin::join_cluster_with(&cluster_node, &worker.pki(), "", faults);
    let pin = pin(&cluster_node);
    let kubelet = kubelet_bootstraps(&worker, &cluster_node);
    let out = worker.run_ok(&worker_join(&endpoint, &pin));
    kubelet.join().unwrap();
    assert!(out.contains("This node has joined the cluster"), "{out}");
    let played = standin
        .requests()
        .iter()
        .filter(|r| r["method"] == "FAULT")
        .count();
    assert_eq!(played, 5, "{:#?}", standin.requests());
}

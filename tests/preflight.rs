//! preflight: kubeadm's check names, errors that stop init before anything is written,
//! --ignore-preflight-errors, and no conflict with what kubeforge itself set up (re-runs).

mod common;
use common::*;
use std::net::TcpListener;

/// A config whose API server port is held by this test (returned, to keep it held), and whose
/// container runtime is a socket nobody serves (no image is pulled from this machine's).
fn config_with_busy_apiserver_port(node: &Node) -> (TcpListener, u16, std::path::PathBuf) {
    let held = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let cfg = node.write_config("ECDSA-P256", "");
    let socket = node.root().join("no-runtime.sock");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("bindPort: 6443", &format!("bindPort: {port}"))
        .replace(
            "  name: cp1\n",
            &format!("  name: cp1\n  criSocket: unix://{}\n", socket.display()),
        );
    std::fs::write(&cfg, text).unwrap();
    (held, port, cfg)
}

#[test]
fn a_busy_port_stops_init_before_anything_is_written() {
    let node = Node::new();
    let (held, port, cfg) = config_with_busy_apiserver_port(&node);
    let out = node.run(&["init", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("[ERROR Port-{port}]: port {port} is in use")),
        "{err}"
    );
    assert!(err.contains("--ignore-preflight-errors"), "{err}");
    assert_eq!(
        node.snapshot().len(),
        1,
        "preflight failed but files were written"
    );

    // Ignored by name (case-insensitive) or with `all`, an error becomes a warning.
    let out = node.preflight(&cfg, "all");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("[WARNING Port-{port}]")),
        "{stdout}"
    );
    // No runtime to pull through: kubeadm's ImagePull check, ignored like the others.
    assert!(
        stdout.contains("[WARNING ImagePull]: connecting to the container runtime"),
        "{stdout}"
    );

    // Once kubeforge's own apiserver manifest is on the node, the port is the apiserver's.
    node.run_ok(&[
        "init",
        "--skip-phases",
        HOST_PHASES_ONLY,
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let out = node.run(&[
        "init",
        "phase",
        "preflight",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains(&format!("Port-{port}")), "{text}");
    drop(held);
}

#[test]
fn a_manifest_kubeforge_did_not_write_is_a_conflict() {
    let node = Node::new();
    let cfg = node.write_config("ECDSA-P256", "");
    let manifests = node.kubernetes_dir().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("etcd.yaml"), "someone else's\n").unwrap();
    let out = node.run(&[
        "init",
        "phase",
        "preflight",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("[ERROR FileAvailable-")
            && err.contains("etcd.yaml already exists and kubeforge did not write it"),
        "{err}"
    );
}

#[test]
fn dry_run_reports_but_never_fails_on_preflight() {
    let node = Node::new();
    let (_held, port, cfg) = config_with_busy_apiserver_port(&node);
    let out = node.run_ok(&["init", "--dry-run", "--config", cfg.to_str().unwrap()]);
    assert!(out.contains(&format!("[WARNING Port-{port}]")), "{out}");
}

//! Crash safety: the process killed right after each phase (KUBEFORGE_FAULT=after:<phase>, an
//! abort as abrupt as an OOM kill) leaves no half-written file, and the next plain run completes
//! with exactly the files an uninterrupted run writes. (preflight is skipped: this host has no
//! kubelet or container runtime, and preflight writes nothing.)

mod common;
use common::*;
use std::collections::BTreeSet;
use std::path::PathBuf;

const PHASES: [&str; 5] = [
    "certs",
    "kubeconfig",
    "etcd",
    "control-plane",
    "kubelet-start",
];

fn names(node: &Node) -> BTreeSet<PathBuf> {
    node.snapshot()
        .into_keys()
        .map(|p| p.strip_prefix(node.root()).unwrap().to_path_buf())
        .collect()
}

#[test]
fn a_crash_after_any_phase_is_completed_by_a_plain_rerun() {
    let clean = Node::new();
    clean.write_config("ECDSA-P256", "");
    clean.run_ok(&[
        "init",
        "--skip-phases",
        HOST_PHASES_ONLY,
        "--config",
        clean.config_path().to_str().unwrap(),
    ]);
    let expected = names(&clean);
    let mut crashes = 0;
    for phase in PHASES {
        let node = Node::new();
        let cfg = node.write_config("ECDSA-P256", "");
        let out = std::process::Command::new(BIN)
            .args([
                "init",
                "--skip-phases",
                HOST_PHASES_ONLY,
                "--config",
                cfg.to_str().unwrap(),
                "--kubernetes-dir",
            ])
            .arg(node.kubernetes_dir())
            .arg("--kubelet-dir")
            .arg(node.root().join("var/lib/kubelet"))
            .env("KUBEFORGE_FAULT", format!("after:{phase}"))
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "the fault hook did not stop init after {phase}"
        );
        crashes += 1;
        let leftovers: Vec<_> = names(&node)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(".kubeforge-"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "after {phase}: temp files left: {leftovers:?}"
        );
        let out = node.run_ok(&[
            "init",
            "--skip-phases",
            HOST_PHASES_ONLY,
            "--config",
            cfg.to_str().unwrap(),
        ]);
        assert!(
            out.contains("Using existing ca certificate authority"),
            "after {phase}: {out}"
        );
        assert_eq!(
            names(&node),
            expected,
            "after a crash after {phase}, the re-run did not converge"
        );
        // And a further run changes nothing.
        let before = node.snapshot();
        node.run_ok(&[
            "init",
            "--skip-phases",
            HOST_PHASES_ONLY,
            "--config",
            cfg.to_str().unwrap(),
        ]);
        assert_eq!(
            node.snapshot(),
            before,
            "after {phase}: a third run changed files"
        );
    }
    println!("crash points tested: {crashes}");
}

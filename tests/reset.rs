//! reset removes exactly what kubeforge wrote (its journal), nothing else.

mod common;
use common::*;

#[test]
fn reset_removes_every_journaled_path_and_nothing_else() {
    let node = Node::new();
    let cfg = node.write_config("ECDSA-P256", "");
    node.run_ok(&[
        "init",
        "--skip-phases",
        HOST_PHASES_ONLY,
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let journal =
        std::fs::read_to_string(node.kubernetes_dir().join("tmp/kubeforge-journal")).unwrap();
    let journal_path = node.kubernetes_dir().join("tmp/kubeforge-journal");
    let written: Vec<_> = node
        .snapshot()
        .into_keys()
        .filter(|p| *p != node.config_path() && *p != journal_path)
        .collect();
    for path in &written {
        assert!(
            journal.lines().any(|l| std::path::Path::new(l) == path),
            "{} is not in the journal",
            path.display()
        );
    }
    // Files somebody else put there (the kubelet, the operator) stay.
    let foreign = node.root().join("var/lib/kubelet/pki/kubelet.crt");
    std::fs::create_dir_all(foreign.parent().unwrap()).unwrap();
    std::fs::write(&foreign, "not ours").unwrap();
    std::fs::write(node.root().join("var/lib/etcd/etcd-made-this"), "data").unwrap();

    let before = node.snapshot();
    let out = node.run_ok(&["reset", "--dry-run"]);
    assert!(out.contains("Would remove"), "{out}");
    assert_eq!(node.snapshot(), before, "reset --dry-run changed the node");

    let refused = node.run(&["reset"]);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "reset without --force and without a terminal must refuse"
    );

    let out = node.run_ok(&["reset", "--force"]);
    let manifests_at = out.find("manifests/etcd.yaml").unwrap();
    assert!(
        manifests_at < out.find("admin.conf").unwrap(),
        "manifests go first:\n{out}"
    );
    assert!(out.contains("Left alone: /etc/cni/net.d"), "{out}");
    let left: Vec<_> = node.snapshot().into_keys().collect();
    assert_eq!(
        left,
        vec![node.config_path(), foreign],
        "reset left or removed the wrong files"
    );
    assert!(
        !node.root().join("var/lib/etcd").exists(),
        "the etcd data dir is removed whole"
    );
    assert!(!node.kubernetes_dir().exists());
    // A second reset finds nothing to do.
    assert!(node
        .run_ok(&["reset", "--force"])
        .contains("Nothing to reset"));
}

#[test]
fn an_etcd_data_dir_kubeforge_did_not_create_is_emptied_not_removed() {
    // Debian's etcd-server package owns /var/lib/etcd: it exists before kubeforge runs.
    let node = Node::new();
    let data = node.root().join("var/lib/etcd");
    std::fs::create_dir_all(&data).unwrap();
    let cfg = node.write_config("ECDSA-P256", "");
    let cfg = cfg.to_str().unwrap();
    node.run_ok(&["init", "--skip-phases", HOST_PHASES_ONLY, "--config", cfg]);
    std::fs::create_dir_all(data.join("member/wal")).unwrap();
    // kubeforge's own etcd wrote that data: a re-run's preflight does not call it a conflict.
    let out = node.run(&["init", "phase", "preflight", "--config", cfg]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("DirAvailable"), "{text}");
    node.run_ok(&["reset", "--force"]);
    assert!(data.is_dir(), "the package's directory stays");
    assert_eq!(
        std::fs::read_dir(&data).unwrap().count(),
        0,
        "its etcd data is gone"
    );
}

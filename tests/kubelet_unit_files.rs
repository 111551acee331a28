//! CIS 4.1.1/4.1.2 on a node under a temp dir: the kubelet's unit files the packages install
//! (0644) are restricted to root:root 0600 by a hardened init's and join's `kubelet-start`, once
//! each (/lib is /usr/lib), a masked unit (a symlink to /dev/null) left alone, a re-run and
//! profile kubeadm changing nothing, a dry-run only naming them, reset keeping them.

mod common;
use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

const SERVICE: &str = "usr/lib/systemd/system/kubelet.service";
const KUBEADM_DROP_IN: &str = "usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf";
const OPERATOR_DROP_IN: &str = "etc/systemd/system/kubelet.service.d/20-extra.conf";
const MASKED: &str = "etc/systemd/system/kubelet.service";
const NOT_A_DROP_IN: &str = "etc/systemd/system/kubelet.service.d/README";

/// What the kubelet and kubeadm packages and an operator left under the node's root: the units
/// at 0644, an operator's drop-in owned by nobody, kubelet.service masked in /etc, /lib a link
/// to usr/lib (merged /usr). The three files to restrict.
fn install_units(root: &Path) -> Vec<PathBuf> {
    let files: Vec<PathBuf> = [SERVICE, KUBEADM_DROP_IN, OPERATOR_DROP_IN, NOT_A_DROP_IN]
        .iter()
        .map(|f| root.join(f))
        .collect();
    for file in &files {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, "[Service]\n").unwrap();
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    std::os::unix::fs::chown(
        &files[2],
        Some(nobody.uid.as_raw()),
        Some(nobody.gid.as_raw()),
    )
    .unwrap();
    std::os::unix::fs::symlink("/dev/null", root.join(MASKED)).unwrap();
    std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
    files[..3].to_vec()
}

fn init(node: &Node, cfg: &Path, extra: &[&str]) -> String {
    let mut args = vec!["init", "--skip-phases", HOST_PHASES_ONLY];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--config", cfg.to_str().unwrap()]);
    node.run_ok(&args)
}

fn lines_naming_units(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| l.contains("the kubelet unit file"))
        .collect()
}

fn owner(path: &Path) -> (u32, u32) {
    let meta = std::fs::metadata(path).unwrap();
    (meta.uid(), meta.gid())
}

/// (mode, owner, ctime) of each file: what a chmod or chown changes.
fn states(files: &[PathBuf]) -> Vec<(u32, (u32, u32), i64, i64)> {
    files
        .iter()
        .map(|f| {
            let meta = std::fs::metadata(f).unwrap();
            (mode(f), owner(f), meta.ctime(), meta.ctime_nsec())
        })
        .collect()
}

#[test]
fn hardened_init_restricts_the_kubelet_units_once_and_a_rerun_changes_nothing() {
    let node = Node::new();
    let units = install_units(node.root());
    let dev_null = mode(Path::new("/dev/null"));
    let cfg = node.write_config("ECDSA-P256", "");
    let out = init(&node, &cfg, &[]);
    let named = lines_naming_units(&out);
    assert_eq!(named.len(), 3, "{out}");
    for unit in &units {
        assert_eq!(mode(unit), 0o600, "{}", unit.display());
        assert_eq!(owner(unit), (0, 0), "{}", unit.display());
        assert_eq!(std::fs::read_to_string(unit).unwrap(), "[Service]\n");
        let shown = format!("{:?}", unit.display().to_string());
        assert_eq!(
            named.iter().filter(|l| l.contains(&shown)).count(),
            1,
            "{shown} in {named:?}"
        );
        assert!(named
            .iter()
            .any(|l| l.starts_with("[kubelet-start] Restricted")
                && l.contains(&shown)
                && l.contains("mode 0600")));
    }
    assert!(node.root().join(MASKED).is_symlink());
    assert_eq!(mode(Path::new("/dev/null")), dev_null);
    assert_eq!(mode(&node.root().join(NOT_A_DROP_IN)), 0o644);

    let before = states(&units);
    let again = init(&node, &cfg, &[]);
    assert!(lines_naming_units(&again).is_empty(), "{again}");
    assert_eq!(states(&units), before, "a re-run touched a unit file");

    // Not kubeforge's files: reset leaves them where they are.
    node.run_ok(&["reset", "--force"]);
    assert_eq!(states(&units), before);
}

#[test]
fn profile_kubeadm_and_a_dry_run_leave_the_kubelet_units_as_they_are() {
    let node = Node::new();
    let units = install_units(node.root());
    let before = states(&units);
    let cfg = node.write_config("ECDSA-P256", "");
    let dry = node.run_ok(&["init", "--dry-run", "--config", cfg.to_str().unwrap()]);
    let named = lines_naming_units(&dry);
    assert_eq!(named.len(), 3, "{dry}");
    assert!(
        named.iter().all(|l| l.contains("Would restrict")),
        "{named:?}"
    );
    assert_eq!(states(&units), before, "a dry-run changed a unit file");
    std::fs::remove_dir_all(dry_run_dir(&dry)).unwrap();

    let kubeadm = node.write_config(
        "ECDSA-P256",
        "---\napiVersion: kubeforge.io/v1alpha1\nkind: Security\nprofile: kubeadm\n",
    );
    let out = init(&node, &kubeadm, &[]);
    assert!(lines_naming_units(&out).is_empty(), "{out}");
    assert_eq!(
        states(&units),
        before,
        "profile kubeadm changed a unit file"
    );
}

#[test]
fn the_restricted_mode_only_takes_bits_away() {
    use kubeforge::kubelet::service::restricted_mode;
    for (mode, want) in [
        (0o644, 0o600),
        (0o755, 0o600),
        (0o600, 0o600),
        (0o400, 0o400),
        (0o4777, 0o600),
        (0o000, 0o000),
    ] {
        assert_eq!(restricted_mode(mode), want, "{mode:04o}");
    }
}

/// A worker's join restricts the worker's units the same way (the stand-in API server serves the
/// cluster's configuration with profile hardened, tests/common/standin.rs; the files are real).
#[test]
fn a_worker_join_restricts_the_kubelet_units() {
    use common::standin::{join_cluster, kubelet_bootstraps};
    let cluster = Node::new();
    let worker = Node::new();
    let units = install_units(worker.root());
    let (_standin, endpoint) = join_cluster(&cluster, &worker.pki());
    let pin = openssl_ca_pin(&cluster.pki().join("ca.crt"));
    let kubelet = kubelet_bootstraps(&worker, &cluster);
    let token = "abcdef.0123456789abcdef";
    let out = worker.run_ok(&[
        "join",
        &endpoint,
        "--token",
        token,
        "--discovery-token-ca-cert-hash",
        &pin,
        "--node-name",
        "w1",
        "--skip-phases",
        "preflight",
    ]);
    kubelet.join().unwrap();
    assert_eq!(lines_naming_units(&out).len(), 3, "{out}");
    for unit in &units {
        assert_eq!(
            (mode(unit), owner(unit)),
            (0o600, (0, 0)),
            "{}",
            unit.display()
        );
    }
}

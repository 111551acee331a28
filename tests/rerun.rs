//! Re-runs converge: a second run changes no byte, mtime or mode; an existing file that no longer
//! fits the config stops the run, says what differs, and changes nothing; --dry-run writes only
//! into its own temp dir; two runs never interleave.

mod common;
use common::*;

#[test]
fn rerunning_certs_and_kubeconfig_changes_nothing() {
    let node = Node::new();
    node.generate("RSA-2048");
    node.run_ok(&[
        "init",
        "--skip-phases",
        HOST_PHASES_ONLY,
        "--config",
        node.config_path().to_str().unwrap(),
    ]);
    let before = node.snapshot();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let cfg = node.config_path();
    let cfg = cfg.to_str().unwrap();
    let out = node.run_ok(&["init", "phase", "certs", "all", "--config", cfg]);
    assert!(
        out.contains("Using existing apiserver certificate and key on disk"),
        "{out}"
    );
    node.run_ok(&["init", "phase", "kubeconfig", "all", "--config", cfg]);
    node.run_ok(&["init", "phase", "certs", "apiserver", "--config", cfg]);
    node.run_ok(&["init", "--skip-phases", HOST_PHASES_ONLY, "--config", cfg]);
    assert_eq!(
        node.snapshot(),
        before,
        "a re-run changed a file, its mtime or its mode"
    );
}

#[test]
fn a_certificate_with_other_sans_is_refused_and_nothing_changes() {
    let node = Node::new();
    node.generate("ECDSA-P256");
    // Same CA, but the config now asks for an extra SAN the existing apiserver.crt lacks.
    let cfg = node.write_config(
        "ECDSA-P256",
        "apiServer:\n  certSANs: [\"api.example.com\", \"10.1.2.3\"]\n",
    );
    let before = node.snapshot();
    let out = node.run(&[
        "init",
        "phase",
        "certs",
        "all",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"apiserver\"")
            && err.contains("api.example.com")
            && err.contains("10.1.2.3"),
        "{err}"
    );
    assert_eq!(node.snapshot(), before);
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let node = Node::new();
    node.generate("ECDSA-P256");
    let other = Node::new();
    other.generate("ECDSA-P256");
    for ext in ["crt", "key"] {
        std::fs::copy(
            other.pki().join(format!("apiserver.{ext}")),
            node.pki().join(format!("apiserver.{ext}")),
        )
        .unwrap();
    }
    let before = node.snapshot();
    let out = node.run(&[
        "init",
        "phase",
        "certs",
        "all",
        "--config",
        node.config_path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not signed by the expected CA"), "{err}");
    assert_eq!(node.snapshot(), before);
}

#[test]
fn an_expired_certificate_is_refused() {
    let node = Node::new();
    let cfg = node.write_config("ECDSA-P256", "certificateValidityPeriod: 1s\n");
    node.run_ok(&[
        "init",
        "phase",
        "certs",
        "all",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let out = node.run(&[
        "init",
        "phase",
        "certs",
        "all",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expired"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn external_ca_signs_nothing_but_accepts_existing_leaves() {
    let node = Node::new();
    node.generate("ECDSA-P256");
    std::fs::remove_file(node.pki().join("ca.key")).unwrap();
    let cfg = node.config_path();
    let cfg = cfg.to_str().unwrap();
    node.run_ok(&["init", "phase", "certs", "all", "--config", cfg]);
    node.run_ok(&["init", "phase", "kubeconfig", "all", "--config", cfg]);
    std::fs::remove_file(node.pki().join("apiserver.crt")).unwrap();
    let out = node.run(&["init", "phase", "certs", "all", "--config", cfg]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("external CA"));
    let check = node.run_ok(&["certs", "check-expiration", "--config", cfg]);
    assert!(
        check
            .lines()
            .any(|l| l.starts_with("ca ") && l.trim_end().ends_with("yes")),
        "{check}"
    );
}

#[test]
fn dry_run_writes_nothing_outside_its_temp_dir() {
    let node = Node::new();
    let cfg = node.write_config("ECDSA-P256", "");
    let out = node.run_ok(&["init", "--dry-run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(
        node.snapshot().keys().collect::<Vec<_>>(),
        vec![&node.config_path()],
        "dry-run wrote into the node"
    );
    let dir = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("[dryrun] Writing files into \"")
                .and_then(|r| r.strip_suffix("\" instead of the node"))
        })
        .expect("dry-run names its directory");
    let written = snapshot(std::path::Path::new(dir));
    assert!(
        written.keys().any(|p| p.ends_with("pki/apiserver.crt")),
        "{out}"
    );
    assert!(out.contains(&format!(
        "Would write file \"{}\" (mode 0600)",
        node.kubernetes_dir().join("admin.conf").display()
    )));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn two_runs_never_interleave() {
    let node = Node::new();
    let cfg = node.write_config("RSA-4096", "");
    let first = std::process::Command::new(BIN)
        .args([
            "init",
            "phase",
            "certs",
            "all",
            "--config",
            cfg.to_str().unwrap(),
            "--kubernetes-dir",
        ])
        .arg(node.kubernetes_dir())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let second = node.run(&[
        "init",
        "phase",
        "certs",
        "all",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success());
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("holds the lock"));
}

#[test]
fn an_operators_own_ca_made_by_openssl_signs_the_leaves() {
    let node = Node::new();
    let cfg = node.write_config("RSA-2048", "");
    std::fs::create_dir_all(node.pki()).unwrap();
    let (crt, key) = (node.pki().join("ca.crt"), node.pki().join("ca.key"));
    tool_ok(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/O=Corp/CN=Corp Kubernetes CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,digitalSignature",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            crt.to_str().unwrap(),
        ],
    );
    let out = node.run_ok(&[
        "init",
        "phase",
        "certs",
        "all",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(
        out.contains("Using existing ca certificate authority"),
        "{out}"
    );
    node.run_ok(&[
        "init",
        "phase",
        "kubeconfig",
        "all",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let leaf = node.pki().join("apiserver.crt");
    tool_ok(
        "openssl",
        &[
            "verify",
            "-CAfile",
            crt.to_str().unwrap(),
            leaf.to_str().unwrap(),
        ],
    );
    let admin = extract_client_cert(&node.kubernetes_dir().join("admin.conf"));
    tool_ok(
        "openssl",
        &[
            "verify",
            "-CAfile",
            crt.to_str().unwrap(),
            admin.to_str().unwrap(),
        ],
    );
}

#[test]
fn a_leaf_without_its_ca_fails_before_writing_anything() {
    let node = Node::new();
    let cfg = node.write_config("ECDSA-P256", "");
    let out = node.run(&[
        "init",
        "phase",
        "certs",
        "apiserver",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("its CA ca does not exist yet"));
    assert_eq!(snapshot(node.root()).len(), 1, "files were written");
    assert!(
        !node.root().join("etc").exists(),
        "directories were left behind"
    );
}

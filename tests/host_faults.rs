//! Faults of the host: a full disk while writing (a small tmpfs mounted as the kubernetes
//! directory; the tests run as root, as scripts/test.sh does), existing files that are corrupted
//! or not files at all, and two runs at once on one node.

mod common;
use common::*;

use std::path::{Path, PathBuf};

/// A tmpfs of `size` mounted on `dir` until dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let options = format!("size={size},mode=755");
        tool_ok(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &options,
                "tmpfs",
                dir.to_str().unwrap(),
            ],
        );
        Tmpfs(dir.to_path_buf())
    }

    /// Fills it up, then frees `free` bytes again: a filler file of all the space but that.
    fn fill_but(&self, free: u64) {
        use std::io::Write;
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let page = [0u8; 4096];
        while f.write_all(&page).is_ok() {}
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(free)).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

fn init_args(cfg: &Path) -> Vec<String> {
    ["init", "--skip-phases", HOST_PHASES_ONLY, "--config"]
        .iter()
        .map(|a| a.to_string())
        .chain([cfg.display().to_string()])
        .collect()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The path a `writing <path>: …No space left on device…` error names.
fn named_file(stderr: &str) -> PathBuf {
    assert!(stderr.contains("No space left on device"), "{stderr}");
    let start = stderr
        .find("writing /")
        .unwrap_or_else(|| panic!("no file named: {stderr}"));
    let rest = &stderr[start + "writing ".len()..];
    PathBuf::from(&rest[..rest.find(':').unwrap()])
}

#[test]
fn a_full_disk_fails_naming_the_file_and_leaves_the_files_as_they_were() {
    let node = Node::new();
    let cfg = node.write_config("ECDSA-P256", "");
    let tmpfs = Tmpfs::mount(&node.kubernetes_dir(), "1m");
    node.run_ok(&strs(&init_args(&cfg)));
    let dirs = [node.kubernetes_dir()];
    let before = snapshot(&node.kubernetes_dir());
    // Room for a few pages: certs renew backs up and rewrites a few files, then runs out.
    tmpfs.fill_but(6 * 4096);
    let renew = [
        "certs",
        "renew",
        "all",
        "--no-restart",
        "--config",
        cfg.to_str().unwrap(),
    ];
    let out = node.run(&renew);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let named = named_file(&stderr);
    println!("full disk: {}", stderr.trim());
    if let Some((content, _, was)) = before.get(&named) {
        let now = std::fs::read(&named).unwrap();
        assert!(
            now == *content && mode(&named) == *was,
            "{} changed",
            named.display()
        );
    }
    assert_eq!(tree::temp_files(&dirs), Vec::<PathBuf>::new());
    let problems = tree::problems(node.root(), &dirs, None);
    assert!(problems.is_empty(), "{problems:#?}");
    // With room again, the same command completes: every certificate with its own key.
    std::fs::remove_file(node.kubernetes_dir().join("filler")).unwrap();
    node.run_ok(&renew);
    assert_eq!(tree::mismatched_pairs(&node.pki()), Vec::<PathBuf>::new());

    // A disk too small for a whole init: the CA put there before stays as it was.
    let small = Node::new();
    let cfg = small.write_config("ECDSA-P256", "");
    let _small_fs = Tmpfs::mount(&small.kubernetes_dir(), "64k");
    std::fs::create_dir_all(small.pki()).unwrap();
    for f in ["ca.crt", "ca.key"] {
        std::fs::copy(node.pki().join(f), small.pki().join(f)).unwrap();
    }
    let ca = snapshot(&small.pki());
    let out = small.run(&strs(&init_args(&cfg)));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    named_file(&stderr);
    for (path, (content, _, was)) in &ca {
        assert_eq!(std::fs::read(path).unwrap(), *content, "{}", path.display());
        assert_eq!(mode(path), *was);
    }
    let dirs = [small.kubernetes_dir()];
    assert_eq!(tree::temp_files(&dirs), Vec::<PathBuf>::new());
    let problems = tree::problems(small.root(), &dirs, None);
    assert!(problems.is_empty(), "{problems:#?}");
}

/// A way to corrupt a file, named.
type Corruption = (&'static str, Box<dyn Fn()>);

/// A file corrupted the ways a disk or a hand does it: garbage, cut short, a directory.
fn corruptions(path: &Path) -> Vec<Corruption> {
    let original = std::fs::read(path).unwrap();
    let (p1, p2, p3) = (path.to_path_buf(), path.to_path_buf(), path.to_path_buf());
    let half = original[..original.len() / 2].to_vec();
    vec![
        (
            "garbage",
            Box::new(move || std::fs::write(&p1, b"garbage\x00\xff").unwrap()),
        ),
        (
            "cut short",
            Box::new(move || std::fs::write(&p2, &half).unwrap()),
        ),
        (
            "a directory",
            Box::new(move || {
                std::fs::remove_file(&p3).unwrap();
                std::fs::create_dir(&p3).unwrap();
            }),
        ),
    ]
}

fn restore(path: &Path, original: &[u8], mode: u32) {
    if path.is_dir() {
        std::fs::remove_dir(path).unwrap();
    }
    std::fs::write(path, original).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_corrupted_certificate_key_or_kubeconfig_is_named_and_left_alone() {
    let node = Node::new();
    let cfg = node.write_config("ECDSA-P256", "");
    let args = init_args(&cfg);
    node.run_ok(&strs(&args));
    let mut faults = 0;
    for file in [
        "pki/ca.crt",
        "pki/apiserver.key",
        "pki/etcd/server.crt",
        "pki/sa.key",
        "admin.conf",
        "scheduler.conf",
    ] {
        let path = node.kubernetes_dir().join(file);
        let (original, mode) = (std::fs::read(&path).unwrap(), mode(&path));
        for (how, corrupt) in corruptions(&path) {
            corrupt();
            let before = node.snapshot();
            let out = node.run(&strs(&args));
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert_eq!(out.status.code(), Some(1), "{file} {how}: {stderr}");
            assert!(
                stderr.contains(&path.display().to_string()),
                "{file} {how}: the file is not named: {stderr}"
            );
            assert_eq!(node.snapshot(), before, "{file} {how}: files changed");
            println!("{file} {how}: {}", stderr.trim());
            restore(&path, &original, mode);
            faults += 1;
        }
    }
    println!("corrupted files refused: {faults}");
}

#[test]
fn a_corrupted_manifest_or_kubelet_config_is_replaced_and_kept_in_the_backup() {
    let node = Node::new();
    let cfg = node.write_config("ECDSA-P256", "");
    let args = init_args(&cfg);
    node.run_ok(&strs(&args));
    for path in [
        node.kubernetes_dir().join("manifests/etcd.yaml"),
        node.root().join("var/lib/kubelet/config.yaml"),
    ] {
        let good = std::fs::read(&path).unwrap();
        std::fs::write(&path, b"garbage\x00\xff").unwrap();
        let out = node.run_ok(&strs(&args));
        let line = out
            .lines()
            .find(|l| l.contains(&format!("Replaced \"{}\"", path.display())))
            .unwrap_or_else(|| panic!("the replacement is not named:\n{out}"));
        let backup = line.rsplit('"').nth(1).unwrap();
        assert_eq!(std::fs::read(backup).unwrap(), b"garbage\x00\xff", "{line}");
        assert_eq!(std::fs::read(&path).unwrap(), good);
    }
    // A directory where a manifest goes is named and left alone.
    let manifest = node.kubernetes_dir().join("manifests/kube-scheduler.yaml");
    std::fs::remove_file(&manifest).unwrap();
    std::fs::create_dir(&manifest).unwrap();
    let out = node.run(&strs(&args));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&manifest.display().to_string()) && stderr.contains("directory"),
        "{stderr}"
    );
    assert!(manifest.is_dir());
}

#[test]
fn a_second_run_names_the_first_runs_pid_and_command() {
    let node = Node::new();
    // RSA-4096 keys take seconds: the first run holds the lock meanwhile.
    let cfg = node.write_config("RSA-4096", "");
    let cfg = cfg.to_str().unwrap();
    let mut first = node
        .command(&["init", "phase", "certs", "all", "--config", cfg])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // util-linux's flock, until it finds the directory locked.
    let dir = node.kubernetes_dir();
    while !dir.exists()
        || run_tool("flock", &["-n", dir.to_str().unwrap(), "true"])
            .status
            .success()
    {
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first run ended before it was met"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let second = node.run(&["init", "phase", "certs", "all", "--config", cfg]);
    let refused = String::from_utf8_lossy(&second.stderr).into_owned();
    assert_eq!(second.status.code(), Some(1), "{refused}");
    assert!(
        refused.contains(&format!("held by PID {} (", first.id()))
            && refused.contains("kubeforge init phase certs all --config"),
        "{refused}"
    );
    println!("{}", refused.trim());
    assert!(first.wait().unwrap().success());
}

//! `kubeforge exec-as` (src/launcher.rs), run for real as root on this machine: the program it
//! starts runs as the target uid/gid with no supplementary group, no capability and
//! no_new_privs; it reads a 0600 root:root file through the `/proc/self/fd/N` its arguments now
//! name (twice), cannot open the file itself, cannot write the copy and cannot become root again.
//! Its errors name the file. Profile hardened's kube-controller-manager and kube-scheduler
//! manifests start through it (kubernetes-validate --strict); profile kubeadm's do not.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const UID: u32 = 61234;
const GID: u32 = 61235;
const SECRET: &str = "apiVersion: v1\nkind: Config\n# root's only\n";

/// What the started program finds out about itself, as JSON on stdout.
const PROBE: &str = r#"
import errno, json, os, sys
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
flag_path = sys.argv[1].split("=", 1)[1]
def attempt(f):
    try:
        f()
        return "done"
    except OSError as e:
        return errno.errorcode[e.errno]
def write_copy():
    with open(flag_path, "r+b") as f:
        f.write(b"x")
result = {
    "uid": os.getresuid(), "gid": os.getresgid(), "groups": os.getgroups(),
    "cap_eff": status["CapEff"].strip(), "cap_prm": status["CapPrm"].strip(),
    "no_new_privs": status["NoNewPrivs"].strip(),
    "args": sys.argv[1:],
    "reads": [open(flag_path).read(), open(flag_path).read(), open(sys.argv[2]).read()],
    "open_original": attempt(lambda: open(os.environ["ORIGINAL"]).read()),
    "write_copy": attempt(write_copy),
    "write_fd": attempt(lambda: os.write(int(flag_path.rsplit("/", 1)[1]), b"x")),
    "setuid_root": attempt(lambda: os.setuid(0)),
    "setgid_root": attempt(lambda: os.setgid(0)),
}
print(json.dumps(result))
"#;

/// A directory anyone may search holding `secret`, 0600 root:root.
fn secret_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("scheduler.conf");
    std::fs::write(&path, SECRET).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        tool_ok("stat", &["-c", "%U:%G %a", path.to_str().unwrap()]).trim(),
        "root:root 600"
    );
    (dir, path)
}

fn exec_as(args: &[&str], program: &[&str], original: &Path) -> Output {
    Command::new(BIN)
        .arg("exec-as")
        .args(args)
        .arg("--")
        .args(program)
        .env("PATH", "/usr/bin:/bin")
        .env("ORIGINAL", original)
        .output()
        .unwrap()
}

#[test]
fn the_program_runs_as_the_account_and_reads_the_root_only_file_through_its_sealed_copy() {
    assert_eq!(nix::unistd::geteuid().as_raw(), 0, "this test runs as root");
    let (_dir, secret) = secret_file();
    let s = secret.to_str().unwrap();
    let out = exec_as(
        &[
            &format!("--uid={UID}"),
            &format!("--gid={GID}"),
            &format!("--read={s}"),
        ],
        &["python3", "-c", PROBE, &format!("--kubeconfig={s}"), s],
        &secret,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["uid"], serde_json::json!([UID, UID, UID]));
    assert_eq!(r["gid"], serde_json::json!([GID, GID, GID]));
    assert_eq!(r["groups"], serde_json::json!([]), "no supplementary group");
    assert_eq!(r["cap_eff"], "0000000000000000");
    assert_eq!(r["cap_prm"], "0000000000000000");
    assert_eq!(r["no_new_privs"], "1");
    let args: Vec<&str> = r["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let fd_path = args[1];
    assert!(fd_path.starts_with("/proc/self/fd/"), "{args:?}");
    assert_eq!(
        args[0],
        format!("--kubeconfig={fd_path}"),
        "the flag's value"
    );
    assert!(!stdout.contains(s), "the original path is named nowhere");
    assert_eq!(r["reads"], serde_json::json!([SECRET, SECRET, SECRET]));
    assert_eq!(r["open_original"], "EACCES", "the file itself stays root's");
    assert_ne!(r["write_copy"], "done", "the copy is sealed");
    assert_eq!(
        r["write_fd"], "EBADF",
        "the inherited descriptor is read-only"
    );
    assert_eq!(r["setuid_root"], "EPERM");
    assert_eq!(r["setgid_root"], "EPERM");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), SECRET);
}

fn assert_fails_naming(out: &Output, code: i32, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    for w in words {
        assert!(stderr.contains(w), "{w:?} not in {stderr}");
    }
}

#[test]
fn a_file_it_cannot_read_or_that_no_argument_names_and_a_root_target_are_refused() {
    let (_dir, secret) = secret_file();
    let s = secret.to_str().unwrap();
    let missing = secret.with_file_name("missing.conf");
    let m = missing.to_str().unwrap();
    let ids = [format!("--uid={UID}"), format!("--gid={GID}")];
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let touch = secret.with_file_name("ran");
    let program = ["touch", touch.to_str().unwrap(), s, m];

    let out = exec_as(&[ids[0], ids[1], &format!("--read={m}")], &program, &secret);
    assert_fails_naming(&out, 1, &[m, "No such file"]);
    let unnamed = secret.with_file_name("other.conf");
    std::fs::write(&unnamed, "x").unwrap();
    let u = unnamed.to_str().unwrap();
    let out = exec_as(&[ids[0], ids[1], &format!("--read={u}")], &program, &secret);
    assert_fails_naming(&out, 2, &[u, "no argument of the command names that file"]);
    let out = exec_as(
        &["--uid=0", "--gid=0", &format!("--read={s}")],
        &program,
        &secret,
    );
    assert_fails_naming(&out, 2, &["must not be root"]);
    // Without root (no CAP_SETUID/CAP_SETGID), reading the file is what fails first.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
        .args(["exec-as", ids[0], ids[1], &format!("--read={s}"), "--"])
        .args(program)
        .output()
        .unwrap();
    assert_fails_naming(&out, 1, &[s, "Permission denied"]);
    assert!(!touch.exists(), "the program never ran");
}

fn container(manifest: &Path) -> serde_json::Value {
    let pod: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
    pod["spec"]["containers"][0].clone()
}

/// init's manifests for `profile` (`--dry-run`: no account is made), in the node's temp dir.
fn manifests(node: &Node, profile: &str) -> PathBuf {
    let cfg = node.write_config("ECDSA-P256", "");
    let doc =
        format!("---\napiVersion: kubeforge.io/v1alpha1\nkind: Security\nprofile: {profile}\n");
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap() + &doc).unwrap();
    let out = node.run_ok(&["init", "--dry-run", "--config", cfg.to_str().unwrap()]);
    let kept = node.root().join("dryrun");
    std::fs::rename(dry_run_dir(&out), &kept).unwrap();
    kept.join(node.kubernetes_dir().strip_prefix("/").unwrap())
        .join("manifests")
}

#[test]
fn hardened_controller_manager_and_scheduler_start_through_the_launcher() {
    let node = Node::new();
    let dir = manifests(&node, "hardened");
    let kubeconfigs = node.kubernetes_dir();
    for (component, conf) in [
        ("kube-controller-manager", "controller-manager.conf"),
        ("kube-scheduler", "scheduler.conf"),
    ] {
        let file = dir.join(format!("{component}.yaml"));
        tool_ok(
            "kubernetes-validate",
            &["--strict", "-k", "1.35.0", file.to_str().unwrap()],
        );
        let c = container(&file);
        let command: Vec<&str> = c["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let conf = kubeconfigs.join(conf).display().to_string();
        let separator = command.iter().position(|a| *a == "--").unwrap();
        assert_eq!(command[..2], [BIN, "exec-as"], "{component}");
        assert_eq!(command[4], format!("--read={conf}"), "{component}");
        assert_eq!(separator, 5, "one file read: {command:?}");
        assert_eq!(command[6], component);
        assert!(command.contains(&format!("--kubeconfig={conf}").as_str()));
        let uid: u32 = command[2].strip_prefix("--uid=").unwrap().parse().unwrap();
        let gid: u32 = command[3].strip_prefix("--gid=").unwrap().parse().unwrap();
        assert!(uid > 0 && gid > 0, "{component}: {uid}:{gid}");
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsUser"], 0);
        assert_eq!(sc["runAsGroup"], 0);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert_eq!(
            sc["capabilities"]["add"],
            serde_json::json!(["SETUID", "SETGID"])
        );
        let mounted =
            c["volumeMounts"].as_array().unwrap().iter().any(|m| {
                m["mountPath"] == BIN && m["readOnly"] == true && m["name"] == "kubeforge"
            });
        assert!(mounted, "{component}: the binary mounted read-only");
    }
}

#[test]
fn profile_kubeadm_starts_them_directly() {
    let node = Node::new();
    let dir = manifests(&node, "kubeadm");
    for component in ["kube-controller-manager", "kube-scheduler"] {
        let c = container(&dir.join(format!("{component}.yaml")));
        assert_eq!(c["command"][0], component);
        assert!(c["securityContext"].is_null());
    }
}

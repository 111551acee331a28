//! Non-root components (docs/security.md, "Non-root components"): a hardened init leaves every
//! file under the PKI root:root, gives etcd's, kube-apiserver's and kube-controller-manager's
//! accounts read on exactly the keys they open through ACL entries (read back with `getfacl`),
//! hands etcd its data directory, and renders the securityContexts (kube-controller-manager and
//! kube-scheduler started through `kubeforge exec-as` as their accounts, tests/launcher.rs); Debian's real etcd, run as the `etcd` user with `setpriv`,
//! serves with those keys while another non-root user cannot read them; a re-run puts a lost
//! ACL or owner back; reset removes the account kubeforge made and never `etcd`.

mod common;
use common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One test at a time: one of them removes the `kube-apiserver` account the others use.
static ACCOUNTS: Mutex<()> = Mutex::new(());

const ETCD_KEYS: [&str; 2] = ["etcd/server.key", "etcd/peer.key"];
const APISERVER_FILES: [&str; 5] = [
    "apiserver.key",
    "apiserver-etcd-client.key",
    "apiserver-kubelet-client.key",
    "front-proxy-client.key",
    "sa.pub",
];

/// The named-user entries a hardened node gives the file `rel` under the PKI, sorted.
fn readers_of(rel: &str) -> Vec<String> {
    let mut want: Vec<String> = match rel {
        _ if ETCD_KEYS.contains(&rel) => vec!["etcd:r--".into()],
        _ if APISERVER_FILES.contains(&rel) => vec!["kube-apiserver:r--".into()],
        "sa.key" => vec![
            "kube-apiserver:r--".into(),
            "kube-controller-manager:r--".into(),
        ],
        "ca.key" => vec!["kube-controller-manager:r--".into()],
        _ => vec![],
    };
    want.sort();
    want
}

fn init(node: &Node, extra_docs: &str) {
    let cfg = node.write_config("ECDSA-P256", "");
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap() + extra_docs).unwrap();
    node.init_host_phases(&cfg);
}

/// A node after a hardened init, and this test's turn with the accounts.
fn hardened_node() -> (std::sync::MutexGuard<'static, ()>, Node) {
    let turn = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
    let node = Node::new();
    init(&node, "");
    (turn, node)
}

/// The named-user entries `getfacl` prints for `path` (`etcd:r--`, …), sorted.
fn named_users(path: &Path) -> Vec<String> {
    let mut users: Vec<String> = tool_ok("getfacl", &["--absolute-names", path.to_str().unwrap()])
        .lines()
        .filter_map(|l| l.strip_prefix("user:"))
        .filter(|l| !l.starts_with(':'))
        .map(|l| l.split('\t').next().unwrap().trim().to_string())
        .collect();
    users.sort();
    users
}

/// `stat`'s owner:group and octal mode of `path`.
fn stat(path: &Path) -> String {
    tool_ok("stat", &["-c", "%U:%G %a", path.to_str().unwrap()])
        .trim()
        .to_string()
}

fn id(args: &[&str]) -> String {
    tool_ok("id", args).trim().to_string()
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    snapshot(dir).into_keys().collect()
}

fn assert_hardened_access(node: &Node) {
    let pki = node.pki();
    for file in files_under(&pki) {
        let rel = file
            .strip_prefix(&pki)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let owner = stat(&file);
        assert!(
            owner.starts_with("root:root "),
            "{rel}: {owner} (CIS 1.1.19)"
        );
        assert_eq!(named_users(&file), readers_of(&rel), "{rel}");
    }
    let data = node.root().join("var/lib/etcd");
    assert_eq!(stat(&data), "etcd:etcd 700", "CIS 1.1.11/1.1.12");
}

fn pod(node: &Node, component: &str) -> serde_json::Value {
    let path = node
        .kubernetes_dir()
        .join(format!("manifests/{component}.yaml"));
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_hardened_init_gives_each_component_exactly_its_files_and_renders_its_security_context() {
    let (_turn, node) = hardened_node();
    assert_hardened_access(&node);
    for (component, user) in [("etcd", "etcd"), ("kube-apiserver", "kube-apiserver")] {
        let pod = pod(&node, component);
        let sc = &pod["spec"]["securityContext"];
        assert_eq!(
            sc["runAsUser"].as_u64().unwrap().to_string(),
            id(&["-u", user])
        );
        assert_eq!(
            sc["runAsGroup"].as_u64().unwrap().to_string(),
            id(&["-g", user])
        );
        assert_eq!(sc["runAsNonRoot"], true, "{component}");
    }
    assert_eq!(id(&["-gn", "etcd"]), "etcd");
    for component in ["kube-controller-manager", "kube-scheduler"] {
        let pod = pod(&node, component);
        let container = &pod["spec"]["containers"][0];
        assert_eq!(container["securityContext"]["runAsUser"], 0, "{component}");
        assert_eq!(container["command"][1], "exec-as", "{component}");
        assert_eq!(
            container["command"][2],
            format!("--uid={}", id(&["-u", component])),
        );
        assert_eq!(
            container["command"][3],
            format!("--gid={}", id(&["-g", component])),
        );
    }
    for component in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        let sc = &pod(&node, component)["spec"]["containers"][0]["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{component}");
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{component}"
        );
        // kube-apiserver's binary has the file capability: exec needs it in the bounding set;
        // `exec-as` needs SETUID and SETGID to become the account.
        let add = match component {
            "kube-apiserver" => serde_json::json!(["NET_BIND_SERVICE"]),
            "etcd" => serde_json::Value::Null,
            _ => serde_json::json!(["SETUID", "SETGID"]),
        };
        assert_eq!(sc["capabilities"]["add"], add, "{component}");
    }
}

#[test]
fn profile_kubeadm_sets_no_acl_no_owner_and_no_security_context() {
    let _one = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
    let node = Node::new();
    init(
        &node,
        "---\napiVersion: kubeforge.io/v1alpha1\nkind: Security\nprofile: kubeadm\n",
    );
    for file in files_under(&node.pki()) {
        assert_eq!(
            named_users(&file),
            Vec::<String>::new(),
            "{}",
            file.display()
        );
    }
    assert_eq!(stat(&node.root().join("var/lib/etcd")), "root:root 700");
    for component in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        let pod = pod(&node, component);
        assert!(pod["spec"]["securityContext"]["runAsUser"].is_null());
        assert!(pod["spec"]["containers"][0]["securityContext"].is_null());
    }
}

#[test]
fn a_rerun_puts_back_a_lost_acl_and_the_data_directory_owner() {
    let (_turn, node) = hardened_node();
    let key = node.pki().join("etcd/server.key");
    let data = node.root().join("var/lib/etcd");
    tool_ok("setfacl", &["--remove-all", key.to_str().unwrap()]);
    tool_ok("chown", &["root:root", data.to_str().unwrap()]);
    tool_ok("chmod", &["0755", data.to_str().unwrap()]);
    assert_eq!(named_users(&key), Vec::<String>::new());
    init(&node, "");
    assert_hardened_access(&node);
}

struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Debian's etcd as `user` (setpriv: that uid and gid, no supplementary groups) with the
/// rendered manifest's key and certificate flags, on free loopback ports.
fn etcd_as(node: &Node, (user, group): (&str, &str), data: &Path) -> (Etcd, String) {
    require_tool("etcd");
    let manifest = node.kubernetes_dir().join("manifests/etcd.yaml");
    let tls: Vec<String> = manifest_command(&manifest)
        .into_iter()
        .filter(|a| a.contains("-file=") || a.contains("-auth="))
        .collect();
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("https://127.0.0.1:{client}");
    let peer_url = format!("https://127.0.0.1:{peer}");
    let log = std::fs::File::create(node.root().join(format!("etcd-{user}.log"))).unwrap();
    let child = Command::new("setpriv")
        .args([
            &format!("--reuid={user}"),
            &format!("--regid={group}"),
            "--clear-groups",
        ])
        .arg("etcd")
        .args([
            "--name=cp1".to_string(),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=cp1={peer_url}"),
        ])
        .args(tls)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start etcd");
    (Etcd(child), client_url)
}

fn healthy(node: &Node, endpoint: &str) -> bool {
    let p = |f: &str| node.pki().join(f).to_str().unwrap().to_string();
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "--cacert", &p("etcd/ca.crt")])
        .args(["--cert", &p("etcd/healthcheck-client.crt")])
        .args(["--key", &p("etcd/healthcheck-client.key")])
        .args(["--command-timeout=3s", "endpoint", "health"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn etcd_as_the_etcd_user_serves_with_its_keys_and_another_user_cannot_read_them() {
    let _one = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
    require_tool("etcdctl");
    let node = Node::new();
    init(&node, "");
    // The temp root stands in for `/`: searchable by everyone, like /etc and /var.
    tool_ok("chmod", &["0755", node.root().to_str().unwrap()]);
    let (mut etcd, endpoint) = etcd_as(&node, ("etcd", "etcd"), &node.root().join("var/lib/etcd"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !healthy(&node, &endpoint) {
        let exited = etcd.0.try_wait().unwrap();
        let log = std::fs::read_to_string(node.root().join("etcd-etcd.log")).unwrap();
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "etcd as etcd: {log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let member = node.root().join("var/lib/etcd/member");
    assert_eq!(
        stat(&member),
        "etcd:etcd 700",
        "etcd made its member dir itself"
    );
    drop(etcd);

    let other = node.root().join("nobody-data");
    std::fs::create_dir(&other).unwrap();
    tool_ok("chown", &["nobody", other.to_str().unwrap()]);
    let (mut etcd, _) = etcd_as(&node, ("nobody", "nogroup"), &other);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = etcd.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "etcd as nobody kept running");
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = std::fs::read_to_string(node.root().join("etcd-nobody.log")).unwrap();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("permission denied") && log.contains(".key"),
        "{log}"
    );
}

fn account_gone(name: &str) -> bool {
    !run_tool("getent", &["passwd", name]).status.success()
}

/// This test's turn, and a node on a machine without the `kube-apiserver` and `kube-scheduler`
/// accounts (the first made with the keys it reads, the second with its manifest).
fn node_without_the_apiserver_account() -> (std::sync::MutexGuard<'static, ()>, Node) {
    let turn = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
    let node = Node::new();
    for name in ["kube-apiserver", "kube-scheduler"] {
        if !account_gone(name) {
            tool_ok("userdel", &[name]);
        }
        if run_tool("getent", &["group", name]).status.success() {
            tool_ok("groupdel", &[name]);
        }
    }
    (turn, node)
}

/// A node after a hardened init that made the `kube-apiserver` account itself.
fn node_that_made_the_apiserver_account() -> (std::sync::MutexGuard<'static, ()>, Node) {
    let (turn, node) = node_without_the_apiserver_account();
    init(&node, "");
    assert!(!account_gone("kube-apiserver"), "init made the account");
    let scheduler = pod(&node, "kube-scheduler")["spec"]["containers"][0]["command"].clone();
    assert_eq!(
        scheduler[2],
        format!("--uid={}", id(&["-u", "kube-scheduler"])),
        "the manifest names the IDs init made the account with"
    );
    (turn, node)
}

/// The IDs kube-apiserver's and kube-scheduler's manifests name (`runAsUser`, `exec-as --uid`).
fn manifest_uids(manifests: &Path) -> (String, String) {
    let read = |c: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(manifests.join(format!("{c}.yaml"))).unwrap();
        serde_yaml::from_str(&text).unwrap()
    };
    let apiserver = read("kube-apiserver")["spec"]["securityContext"]["runAsUser"].to_string();
    let scheduler = read("kube-scheduler")["spec"]["containers"][0]["command"][2].clone();
    let scheduler = scheduler.as_str().unwrap().trim_start_matches("--uid=");
    (apiserver, scheduler.to_string())
}

#[test]
fn a_dry_run_names_the_ids_init_then_makes_the_missing_accounts_with() {
    let (_turn, node) = node_without_the_apiserver_account();
    let cfg = node.write_config("ECDSA-P256", "");
    let out = node.run_ok(&["init", "--dry-run", "--config", cfg.to_str().unwrap()]);
    let dry = Path::new(dry_run_dir(&out)).to_path_buf();
    let planned = manifest_uids(
        &dry.join(node.kubernetes_dir().strip_prefix("/").unwrap())
            .join("manifests"),
    );
    std::fs::remove_dir_all(&dry).unwrap();
    assert!(account_gone("kube-apiserver") && account_gone("kube-scheduler"));
    assert_ne!(planned.0, planned.1, "two missing accounts, two IDs");
    init(&node, "");
    let made = (id(&["-u", "kube-apiserver"]), id(&["-u", "kube-scheduler"]));
    assert_eq!(planned, made);
    assert_eq!(
        manifest_uids(&node.kubernetes_dir().join("manifests")),
        made
    );
    node.run_ok(&["reset", "--force"]);
}

#[test]
fn reset_removes_the_account_kubeforge_made_and_never_a_preexisting_etcd() {
    let etcd_before = id(&["etcd"]);
    let (_turn, node) = node_that_made_the_apiserver_account();
    assert_eq!(
        tool_ok("getent", &["passwd", "kube-apiserver"])
            .split(':')
            .nth(6)
            .unwrap()
            .trim(),
        "/usr/sbin/nologin"
    );
    assert_hardened_access(&node);
    let out = node.run_ok(&["reset", "--force"]);
    assert!(
        out.contains("the system account \"kube-apiserver\""),
        "{out}"
    );
    assert!(
        account_gone("kube-apiserver") && account_gone("kube-scheduler"),
        "reset removed the accounts it made"
    );
    assert!(!run_tool("getent", &["group", "kube-apiserver"])
        .status
        .success());
    assert_eq!(
        id(&["etcd"]),
        etcd_before,
        "etcd was there before: left alone"
    );
    assert!(!node
        .kubernetes_dir()
        .join("tmp/kubeforge-accounts")
        .exists());
}

#[test]
fn certs_renew_gives_the_new_keys_the_same_readers() {
    let (_turn, node) = hardened_node();
    let key = node.pki().join("apiserver.key");
    let before = std::fs::read(&key).unwrap();
    node.renew_all();
    assert_ne!(std::fs::read(&key).unwrap(), before, "a new key");
    assert_hardened_access(&node);
}

#[test]
fn a_control_plane_join_gives_the_downloaded_and_its_own_keys_their_readers() {
    let _turn = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
    let (cluster_node, joiner) = (Node::new(), Node::new());
    let (_standin, endpoint) = standin::join_cluster(&cluster_node, &joiner.pki());
    let key = upload_certs(&cluster_node);
    let pin = openssl_ca_pin(&cluster_node.pki().join("ca.crt"));
    let args = standin::control_plane_prepare(&endpoint, &pin, &key);
    joiner.run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    for file in [
        "sa.key",
        "sa.pub",
        "apiserver.key",
        "front-proxy-client.key",
        "ca.key",
    ] {
        assert_eq!(
            named_users(&joiner.pki().join(file)),
            readers_of(file),
            "{file}"
        );
    }
    for file in ["front-proxy-ca.key", "etcd/ca.key"] {
        assert_eq!(
            named_users(&joiner.pki().join(file)),
            Vec::<String>::new(),
            "{file}"
        );
    }
}

#[test]
fn reset_leaves_an_account_a_process_still_runs_as_and_says_so() {
    let (_turn, node) = node_that_made_the_apiserver_account();
    let mut sleeper = Command::new("setpriv")
        .args([
            "--reuid=kube-apiserver",
            "--regid=kube-apiserver",
            "--clear-groups",
        ])
        .args(["sleep", "120"])
        .spawn()
        .expect("setpriv");
    let out = node.run_ok(&["reset", "--force"]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(
        out.contains("WARNING: the system account \"kube-apiserver\" stays"),
        "{out}"
    );
    assert!(
        !account_gone("kube-apiserver"),
        "userdel refused: the account stays"
    );
    assert!(
        !node.kubernetes_dir().join("tmp/kubeforge-journal").exists(),
        "the reset went on"
    );
}

#[test]
fn an_init_killed_after_it_made_the_account_leaves_it_recorded_for_reset() {
    let (_turn, node) = node_without_the_apiserver_account();
    let cfg = node.write_config("ECDSA-P256", "");
    let out = node
        .command(&["init", "--skip-phases", HOST_PHASES_ONLY])
        .args(["--config", cfg.to_str().unwrap()])
        .env("KUBEFORGE_FAULT", "after:certs")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the fault hook did not stop init");
    assert!(
        !account_gone("kube-apiserver"),
        "the certs phase made the account"
    );
    let record = node.kubernetes_dir().join("tmp/kubeforge-accounts");
    assert_eq!(
        std::fs::read_to_string(&record).unwrap(),
        "kube-apiserver\n",
        "kube-scheduler's account comes with its manifest, after the certs"
    );
    assert!(account_gone("kube-scheduler"));
    node.run_ok(&["reset", "--force"]);
    assert!(account_gone("kube-apiserver"), "reset removed the account");
}

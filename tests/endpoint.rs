//! The highly available endpoint (ControlPlaneEndpoint document): its files checked by the tools
//! that will run them — Debian's haproxy (`-c`) and keepalived (`--config-test`), and
//! kubernetes-validate --strict on the static pods — its config errors (file:line, exit 2,
//! nothing written), and the rendered haproxy and keepalived run in their own network namespace
//! in front of two TLS backends: the one whose /readyz fails leaves the rotation, and keepalived
//! holds the VIP exactly while haproxy has a ready backend.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ENDPOINT_DOC: &str = "---
apiVersion: kubeforge.io/v1alpha1
kind: ControlPlaneEndpoint
mode: vip
virtualIP: 10.213.1.100
interface: eth9
";

/// The usual test config with the endpoint on (controlPlaneEndpoint the VIP and haproxy's port).
fn endpoint_config(node: &Node, endpoint_doc: &str) -> String {
    node.write_config("RSA-2048", "controlPlaneEndpoint: 10.213.1.100:8443\n");
    let mut text = std::fs::read_to_string(node.config_path()).unwrap();
    text.push_str(endpoint_doc);
    std::fs::write(node.config_path(), &text).unwrap();
    node.config_path().to_str().unwrap().to_string()
}

fn endpoint_dir(node: &Node) -> PathBuf {
    node.kubernetes_dir().join("endpoint")
}

#[test]
fn rendered_files_pass_haproxy_keepalived_and_kubernetes_validate() {
    let node = Node::new();
    let cfg = endpoint_config(&node, ENDPOINT_DOC);
    node.run_ok(&["init", "phase", "certs", "all", "--config", &cfg]);
    node.run_ok(&["init", "phase", "control-plane-endpoint", "--config", &cfg]);
    let dir = endpoint_dir(&node);
    tool_ok(
        "haproxy",
        &["-c", "-f", dir.join("haproxy.cfg").to_str().unwrap()],
    );
    // keepalived refuses loopback links and checks the interface exists: give it one.
    let ns = Netns::new("10.213.1.1");
    ns.add_veth("eth9");
    let out = ns
        .cmd("keepalived")
        .args(["--config-test", "-f"])
        .arg(dir.join("keepalived.conf"))
        .output()
        .unwrap();
    assert!(out.status.success(), "keepalived --config-test: {out:?}");
    tool_ok(
        "shellcheck",
        &[dir.join("check-balancer.sh").to_str().unwrap()],
    );
    assert_eq!(mode(&dir.join("check-balancer.sh")), 0o755);
    for pod in ["kubeforge-haproxy", "kubeforge-keepalived"] {
        let manifest = node.kubernetes_dir().join(format!("manifests/{pod}.yaml"));
        assert_eq!(mode(&manifest), 0o600);
        let path = manifest.to_str().unwrap();
        tool_ok("kubernetes-validate", &["--strict", "-k", "1.35.0", path]);
    }
    // A re-run rewrites nothing: same bytes, same mtimes (no static pod restart).
    let before = node.snapshot();
    node.run_ok(&["init", "phase", "control-plane-endpoint", "--config", &cfg]);
    assert_eq!(before, node.snapshot());
    // They are journaled: reset removes them with the rest.
    node.run_ok(&["reset", "--force"]);
    assert!(!dir.exists());
    assert!(!node
        .kubernetes_dir()
        .join("manifests/kubeforge-haproxy.yaml")
        .exists());
}

#[test]
fn keepalived_rejects_what_kubeforge_would_reject() {
    // The validation's range is keepalived's: the tool itself refuses router id 256.
    let node = Node::new();
    let cfg = endpoint_config(&node, ENDPOINT_DOC);
    node.run_ok(&["init", "phase", "certs", "all", "--config", &cfg]);
    node.run_ok(&["init", "phase", "control-plane-endpoint", "--config", &cfg]);
    let conf = endpoint_dir(&node).join("keepalived.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        text.replace("virtual_router_id 51", "virtual_router_id 256"),
    )
    .unwrap();
    let ns = Netns::new("10.213.1.2");
    ns.add_veth("eth9");
    let out = ns
        .cmd("keepalived")
        .args(["--config-test", "-f"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(!out.status.success(), "keepalived accepted router id 256");
    let out = kubeforge_with(
        &node,
        &ENDPOINT_DOC.replace("mode: vip", "mode: vip\nvirtualRouterID: 256"),
    );
    assert_eq!(out.status.code(), Some(2));
}

/// Where a dry-run wrote its files, from its first line.
fn dry_run_dir(stdout: &str) -> PathBuf {
    stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("[dryrun] Writing files into \"")
                .and_then(|r| r.strip_suffix("\" instead of the node"))
        })
        .map(PathBuf::from)
        .expect("dry-run names its directory")
}

/// `init --dry-run` on `endpoint_doc`.
fn kubeforge_with(node: &Node, endpoint_doc: &str) -> std::process::Output {
    let cfg = endpoint_config(node, endpoint_doc);
    node.run(&["init", "--dry-run", "--config", &cfg])
}

#[test]
fn config_errors_name_file_field_and_line() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "virtualIP: 10.213.1.100",
            "virtualIP: 192.0.2.300",
            "ControlPlaneEndpoint.virtualIP",
        ),
        ("mode: vip", "mode: node-local", "ControlPlaneEndpoint.mode"),
        (
            "mode: vip",
            "mode: vip\nnodeLocal: maybe",
            "ControlPlaneEndpoint.nodeLocal",
        ),
        (
            "mode: vip",
            "mode: vip\nbalancerPort: 6443",
            "ControlPlaneEndpoint.balancerPort",
        ),
        (
            "mode: vip",
            "mode: vip\nvirtualRouterID: 0",
            "ControlPlaneEndpoint.virtualRouterID",
        ),
        (
            "mode: vip",
            "mode: vip\nadvertIntervalMilliseconds: 15",
            "ControlPlaneEndpoint.advertIntervalMilliseconds",
        ),
        (
            "mode: vip",
            "mode: vip\nvip: 10.213.1.100",
            "ControlPlaneEndpoint.vip",
        ),
        (
            "virtualIP: 10.213.1.100",
            "virtualIP: 10.213.1.101",
            "ClusterConfiguration.controlPlaneEndpoint",
        ),
    ];
    for (from, to, field) in cases {
        let node = Node::new();
        let out = kubeforge_with(&node, &ENDPOINT_DOC.replace(from, to));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{to}: {stderr}");
        let config = node.config_path();
        let text = std::fs::read_to_string(&config).unwrap();
        // The line the error names holds the field (or, for an unknown variant, its value).
        let prefix = format!("{}:", config.display());
        let line: usize = stderr
            .lines()
            .find_map(|l| l.split(&prefix).nth(1))
            .and_then(|rest| rest.split(':').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{to}: no file:line in {stderr}"));
        let key = field.rsplit('.').next().unwrap();
        assert!(
            text.lines()
                .nth(line - 1)
                .unwrap()
                .trim_start()
                .starts_with(key),
            "{to}: line {line} is not {key}: {stderr}"
        );
        assert!(stderr.contains(field), "{to}: {stderr}");
        assert!(
            !node.kubernetes_dir().exists(),
            "{to}: something was written"
        );
    }
}

#[test]
fn dry_run_init_shows_the_balancers() {
    let node = Node::new();
    let out = kubeforge_with(&node, ENDPOINT_DOC);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in [
        "endpoint/haproxy.cfg",
        "endpoint/keepalived.conf",
        "endpoint/check-balancer.sh",
        "manifests/kubeforge-haproxy.yaml",
        "manifests/kubeforge-keepalived.yaml",
    ] {
        let path = node.kubernetes_dir().join(file);
        assert!(
            stdout.contains(&format!(
                "Would write file {:?}",
                path.display().to_string()
            )),
            "{file} not shown:\n{stdout}"
        );
    }
    assert!(stdout.contains("[control-plane-endpoint] Writing the balancers"));
    assert!(!node.kubernetes_dir().exists());
    // The document joining nodes read back: the ConfigMap upload-config would apply.
    let dir = dry_run_dir(&stdout);
    let map = dir.join("objects/upload-config/04-configmap-kubeforge-endpoint.yaml");
    let map: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&map).unwrap()).unwrap();
    let document = map["data"]["ControlPlaneEndpoint"].as_str().unwrap();
    let kubeadm_docs = std::fs::read_to_string(node.config_path()).unwrap();
    let kubeadm_docs = kubeadm_docs
        .split("---\napiVersion: kubeforge.io")
        .next()
        .unwrap();
    let load = |text: &str| {
        kubeforge::config::load_str(text, "t", &Default::default(), &node.kubernetes_dir())
            .unwrap()
            .endpoint
    };
    let uploaded = load(&format!("{kubeadm_docs}---\n{document}"));
    assert_eq!(
        uploaded,
        load(&std::fs::read_to_string(node.config_path()).unwrap())
    );
    assert!(uploaded.is_some());
    std::fs::remove_dir_all(dir).unwrap();
}

/// A process in the namespace, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(mut cmd: Command) -> Running {
    Running(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start"),
    )
}

/// A TLS backend in `ns` on `address:port` with the node's API server certificate, answering
/// `/readyz` with the status written in `dir/<name>.status` (200 to start with) and every other
/// path with `answer`.
fn readyz_backend(
    ns: &Netns,
    node: &Node,
    dir: &Path,
    (name, answer): (&str, &str),
    (address, port): (&str, &str),
) -> Running {
    let status = dir.join(format!("{name}.status"));
    std::fs::write(&status, "200").unwrap();
    let mut c = ns.cmd("python3");
    c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/readyz_backend.py"))
        .arg(node.pki().join("apiserver.crt"))
        .arg(node.pki().join("apiserver.key"))
        .args([address, port])
        .arg(status)
        .arg(answer);
    spawn(c)
}

/// Two backends behind the rendered haproxy, in a namespace of their own: what /readyz says
/// decides who gets the traffic, and the monitor page (keepalived's check) follows.
struct Balanced {
    ns: Netns,
    dir: PathBuf,
    _processes: Vec<Running>,
}

impl Balanced {
    /// In a namespace of its own with a veth `eth9` for keepalived.
    fn start(node: &Node) -> Balanced {
        let ns = Netns::new("10.213.1.3");
        ns.add_veth("eth9");
        tool_ok(
            "ip",
            &["-n", &ns.0, "addr", "add", "10.213.1.1/24", "dev", "eth9"],
        );
        Balanced::start_in(node, ns)
    }

    /// The certificates and the balancers' files of `node`, backends a and b behind haproxy.
    fn render(node: &Node) -> PathBuf {
        let cfg = endpoint_config(node, ENDPOINT_DOC);
        node.run_ok(&["init", "phase", "certs", "all", "--config", &cfg]);
        let text = std::fs::read_to_string(node.config_path()).unwrap();
        let config = kubeforge::config::load_str(
            &text,
            "t.yaml",
            &kubeforge::config::Overrides::default(),
            &node.kubernetes_dir(),
        )
        .unwrap();
        let layout = kubeforge::node::Layout::new(
            &node.kubernetes_dir(),
            &node.root().join("var/lib/kubelet"),
            &node.pki(),
            &node.root().join("var/lib/etcd"),
        );
        let members: Vec<kubeforge::endpoint::Member> = ["a", "b"]
            .iter()
            .zip(["127.0.0.1:16443", "127.0.0.1:16444"])
            .map(|(n, a)| kubeforge::endpoint::Member {
                name: n.to_string(),
                address: a.into(),
            })
            .collect();
        let dir = endpoint_dir(node);
        std::fs::create_dir_all(&dir).unwrap();
        // The pod's emptyDir for haproxy's master socket.
        std::fs::create_dir_all(node.kubernetes_dir().join("endpoint-run")).unwrap();
        for f in kubeforge::endpoint::files(&config, &layout, &members, "eth9").unwrap() {
            std::fs::create_dir_all(f.path.parent().unwrap()).unwrap();
            std::fs::write(&f.path, &f.contents).unwrap();
            std::fs::set_permissions(&f.path, std::fs::Permissions::from_mode(f.mode)).unwrap();
        }
        dir
    }

    /// `node`'s backends, haproxy and keepalived started in `ns` (which has keepalived's link).
    fn start_in(node: &Node, ns: Netns) -> Balanced {
        let dir = Balanced::render(node);
        let mut processes = Vec::new();
        for (name, port) in [("a", "16443"), ("b", "16444")] {
            processes.push(readyz_backend(
                &ns,
                node,
                &dir,
                (name, name),
                ("127.0.0.1", port),
            ));
        }
        // haproxy and keepalived as their manifests run them (keepalived's pid files kept out of
        // the host's /run).
        let manifests = node.kubernetes_dir().join("manifests");
        let command = manifest_command(&manifests.join("kubeforge-haproxy.yaml"));
        let mut c = ns.cmd(&command[0]);
        c.args(&command[1..]);
        processes.push(spawn(c));
        let command = manifest_command(&manifests.join("kubeforge-keepalived.yaml"));
        let mut c = ns.cmd(&command[0]);
        c.args(&command[1..]);
        for (flag, file) in [
            ("-p", "keepalived.pid"),
            ("-r", "vrrp.pid"),
            ("-c", "checkers.pid"),
        ] {
            c.arg(flag).arg(dir.join(file));
        }
        processes.push(spawn(c));
        Balanced {
            ns,
            dir,
            _processes: processes,
        }
    }

    fn set_ready(&self, backend: &str, status: u16) {
        std::fs::write(
            self.dir.join(format!("{backend}.status")),
            status.to_string(),
        )
        .unwrap();
    }

    fn curl(&self, url: &str) -> String {
        let out = self
            .ns
            .cmd("curl")
            .args(["-sk", "--max-time", "2", "-w", " %{http_code}", url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Who answers 20 requests through the balancer ("a", "b", or failures).
    fn served_by(&self) -> Vec<String> {
        (0..20)
            .map(|_| self.curl("https://127.0.0.1:8443/version"))
            .collect()
    }

    /// Each server's state on haproxy's stats page (`/stats;csv`): (name, UP/DOWN/…).
    fn states(&self) -> Vec<(String, String)> {
        let csv = self.curl("http://127.0.0.1:8404/stats;csv");
        // The node's own API server (192.0.2.2, always a server) has no route in here: left out.
        csv.lines()
            .filter(|l| l.starts_with("kube-apiservers,") && !l.contains(",BACKEND,"))
            .filter(|l| !l.starts_with("kube-apiservers,192.0.2.2:6443,"))
            .map(|l| {
                let fields: Vec<&str> = l.split(',').collect();
                // pxname, svname, … status is the 18th column.
                (
                    fields[1].to_string(),
                    fields[17].split(' ').next().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// The machine stopped hard: its link down first (no VRRP goodbye gets out), then every
    /// process in its namespace SIGKILLed — keepalived's VRRP child too, which a signal to its
    /// parent alone would let leave gracefully.
    fn stop_hard(&mut self) {
        tool_ok("ip", &["-n", &self.ns.0, "link", "set", "eth9", "down"]);
        for pid in tool_ok("ip", &["netns", "pids", &self.ns.0]).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).output();
        }
        self._processes.clear();
    }

    /// Whether keepalived put the VIP on eth9.
    fn holds_vip(&self) -> bool {
        tool_ok(
            "ip",
            &["-n", &self.ns.0, "-o", "-4", "addr", "show", "dev", "eth9"],
        )
        .contains(" 10.213.1.100/32 ")
    }

    fn check_script_passes(&self) -> bool {
        self.ns
            .cmd("bash")
            .arg(self.dir.join("check-balancer.sh"))
            .status()
            .unwrap()
            .success()
    }

    /// Polls until `f` holds (haproxy checks every second, fall 2 / rise 2).
    fn until(&self, what: &str, f: impl Fn(&Balanced) -> bool) -> Duration {
        let start = Instant::now();
        while !f(self) {
            assert!(start.elapsed() < Duration::from_secs(15), "never: {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
        start.elapsed()
    }
}

#[test]
fn haproxy_takes_a_backend_failing_readyz_out_and_keepalived_follows() {
    require_tool("haproxy");
    require_tool("keepalived");
    require_tool("curl");
    let node = Node::new();
    let b = Balanced::start(&node);
    b.until("both backends ready", |b| {
        let served = b.served_by();
        served.contains(&"a 200".to_string()) && served.contains(&"b 200".to_string())
    });
    assert!(b.check_script_passes());
    assert_eq!(
        b.curl("http://127.0.0.1:8404/healthz").rsplit(' ').next(),
        Some("200")
    );
    // keepalived: BACKUP, no master heard for 3 × 0.5 s + skew, MASTER: the VIP is on eth9.
    let took = b.until("keepalived takes the VIP", Balanced::holds_vip);
    eprintln!("keepalived held the VIP {took:?} after both backends were ready");

    assert_eq!(
        b.states(),
        [("a".into(), "UP".into()), ("b".into(), "UP".into())]
    );

    b.set_ready("b", 503);
    let took = b.until("b marked DOWN", |b| b.states()[1].1 == "DOWN");
    eprintln!("a backend failing /readyz was marked DOWN after {took:?}");
    assert!(b.served_by().iter().all(|s| s == "a 200"));
    assert!(b.check_script_passes(), "one ready backend is enough");

    b.set_ready("a", 503);
    b.until("the monitor page says no API server is ready", |b| {
        b.curl("http://127.0.0.1:8404/healthz").ends_with(" 503")
    });
    assert!(
        !b.check_script_passes(),
        "keepalived's check must fail with no ready backend"
    );
    let took = b.until("keepalived gives the VIP up (FAULT)", |b| !b.holds_vip());
    eprintln!("keepalived released the VIP {took:?} after the monitor page said 503");

    b.set_ready("b", 200);
    b.until("b back in", |b| b.served_by().iter().all(|s| s == "b 200"));
    assert!(b.check_script_passes());
    b.until("keepalived takes the VIP again", Balanced::holds_vip);
}

/// Two balancer nodes on one segment (a bridge in a third namespace, the "switch"), each with
/// its own backends: one holds the VIP, the other takes it over when the holder is stopped hard —
/// VRRP between two real keepalived, as kubeforge configured them.
#[test]
fn a_backup_keepalived_takes_the_vip_when_the_holder_dies() {
    require_tool("haproxy");
    require_tool("keepalived");
    let (node_a, node_b) = (Node::new(), Node::new());
    let switch = Netns::new("10.213.2.10");
    let (ns_a, ns_b) = (Netns::new("10.213.2.11"), Netns::new("10.213.2.12"));
    let ip = |args: &[&str]| tool_ok("ip", args);
    ip(&["-n", &switch.0, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &switch.0, "link", "set", "br0", "up"]);
    for (ns, port, address) in [
        (&ns_a, "port-a", "10.213.2.1/24"),
        (&ns_b, "port-b", "10.213.2.2/24"),
    ] {
        ip(&[
            "-n", &switch.0, "link", "add", port, "type", "veth", "peer", "name", "eth9", "netns",
            &ns.0,
        ]);
        ip(&["-n", &switch.0, "link", "set", port, "master", "br0", "up"]);
        ip(&["-n", &ns.0, "addr", "add", address, "dev", "eth9"]);
        ip(&["-n", &ns.0, "link", "set", "eth9", "up"]);
    }
    let mut a = Balanced::start_in(&node_a, ns_a);
    let mut b = Balanced::start_in(&node_b, ns_b);
    let one_holder = |a: &Balanced, b: &Balanced| a.holds_vip() != b.holds_vip();
    let start = Instant::now();
    while !one_holder(&a, &b) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no single VIP holder"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Settled: still exactly one holder a few advertisements later.
    std::thread::sleep(Duration::from_secs(2));
    assert!(one_holder(&a, &b), "both or neither hold the VIP");
    let (holder, backup) = if a.holds_vip() {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    holder.stop_hard();
    let took = backup.until("the backup takes the VIP", Balanced::holds_vip);
    eprintln!("the backup keepalived held the VIP {took:?} after the holder was stopped hard");
}

/// A containerd of the test's own (root, state and socket in a temp dir; the host's untouched).
struct Containerd {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Containerd {
    fn start() -> Containerd {
        require_tool("containerd");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n[grpc]\n  address = \"{d}/containerd.sock\"\n[ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  disable_tcp_service = true\n  stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n"
            ),
        )
        .unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let socket = dir.path().join("containerd.sock");
        let start = Instant::now();
        while !socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "containerd did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Containerd {
            child,
            socket,
            _dir: dir,
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn preflight_names_a_missing_balancer_image() {
    let containerd = Containerd::start();
    let node = Node::new();
    let cfg = endpoint_config(&node, ENDPOINT_DOC);
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        "nodeRegistration:\n",
        &format!(
            "nodeRegistration:\n  criSocket: unix://{}\n",
            containerd.socket.display()
        ),
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    // A dry-run reports every finding as a warning and pulls nothing.
    let out = node.run(&["init", "--dry-run", "--config", &cfg]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for image in [
        "kubeforge.local/haproxy:2.6.12",
        "kubeforge.local/keepalived:2.2.7",
    ] {
        assert!(
            stdout.contains(&format!(
                "[WARNING ImagePull]: image {image} is not on the node"
            )),
            "{stdout}"
        );
    }
    let dir = dry_run_dir(&stdout);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A certificate signed by `node`'s cluster CA with openssl: (cert, key) in `dir`.
fn signed_by_cluster_ca(
    node: &Node,
    dir: &Path,
    name: &str,
    subject: &str,
    ext: &str,
) -> (PathBuf, PathBuf) {
    let (crt, key, csr) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.csr")),
    );
    let extfile = dir.join(format!("{name}.ext"));
    std::fs::write(&extfile, ext).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    tool_ok(
        "openssl",
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &s(&key),
            "-subj",
            subject,
            "-out",
            &s(&csr),
        ],
    );
    let pki = node.pki();
    tool_ok(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &s(&csr),
            "-CA",
            &s(&pki.join("ca.crt")),
            "-CAkey",
            &s(&pki.join("ca.key")),
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            &s(&crt),
            "-extfile",
            &s(&extfile),
        ],
    );
    (crt, key)
}

/// The `default/kubernetes` EndpointSlice with `addresses`, all on port 16443.
fn apiserver_slice(addresses: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default"},
        "addressType": "IPv4",
        "ports": [{"name": "https", "port": 16443, "protocol": "TCP"}],
        "endpoints": addresses.iter().map(|a| serde_json::json!({"addresses": [a], "conditions": {"ready": true}})).collect::<Vec<_>>(),
    })
}

/// One round of the sync against `server`, which must succeed.
fn sync_ok(ns: &Netns, node: &Node, server: &str) {
    let out = sync_command(ns, node, server).output().unwrap();
    assert!(
        out.status.success(),
        "sync: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The sync container's command from the rendered manifest, asked to do one round against
/// `server` too.
fn sync_command(ns: &Netns, node: &Node, server: &str) -> Command {
    let text = std::fs::read_to_string(
        node.kubernetes_dir()
            .join("manifests/kubeforge-haproxy.yaml"),
    )
    .unwrap();
    let pod: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let container = &pod["spec"]["containers"][1];
    assert_eq!(container["name"], "sync");
    let command: Vec<String> = container["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        Path::new(&command[0]),
        Path::new(env!("CARGO_BIN_EXE_kubeforge")),
        "the sync runs the host's binary"
    );
    let mut c = ns.cmd(&command[0]);
    c.args(&command[1..]).args(["--server", server, "--once"]);
    c
}

/// `kubeforge endpoint sync` as the rendered haproxy pod runs it, beside Debian's haproxy started
/// with the manifest's own command (master-worker, master socket), in a network namespace of
/// their own. The API side is the stand-in serving `default/kubernetes` (client logic only); the
/// reload is real: haproxy's stats list the new servers, one of them serves, a connection opened
/// before the reload keeps working after it, and an unreachable API changes nothing.
#[test]
fn sync_reloads_haproxy_with_the_api_servers_the_cluster_lists() {
    require_tool("haproxy");
    require_tool("openssl");
    require_tool("curl");
    let node = Node::new();
    let cfg = endpoint_config(&node, ENDPOINT_DOC);
    node.run_ok(&["init", "phase", "certs", "all", "--config", &cfg]);
    node.run_ok(&["init", "phase", "control-plane-endpoint", "--config", &cfg]);
    let dir = endpoint_dir(&node);
    let haproxy_cfg = dir.join("haproxy.cfg");
    assert_eq!(
        server_lines(&haproxy_cfg),
        ["server 192.0.2.2:6443 192.0.2.2:6443"]
    );
    // The kubelet's rotating client certificate, as the sync reads it.
    let kubelet_pki = node.root().join("var/lib/kubelet/pki");
    std::fs::create_dir_all(&kubelet_pki).unwrap();
    let (crt, key) = signed_by_cluster_ca(
        &node,
        &kubelet_pki,
        "client",
        "/O=system:nodes/CN=system:node:cp1",
        "extendedKeyUsage=clientAuth\n",
    );
    let pem = kubelet_pki.join("kubelet-client-current.pem");
    let both = std::fs::read_to_string(&crt).unwrap() + &std::fs::read_to_string(&key).unwrap();
    std::fs::write(&pem, both).unwrap();
    let (api_crt, api_key) = signed_by_cluster_ca(
        &node,
        &kubelet_pki,
        "standin",
        "/CN=standin",
        "subjectAltName=IP:127.0.0.1\n",
    );

    // Nothing answers at the node's own address in here: the sync must ask the others.
    let ns = Netns::new("10.213.3.1");
    std::fs::create_dir_all(node.kubernetes_dir().join("endpoint-run")).unwrap();
    let mut processes = Vec::new();
    for (name, address) in [("a", "127.0.0.1"), ("b", "127.0.0.2")] {
        processes.push(readyz_backend(
            &ns,
            &node,
            &dir,
            (name, name),
            (address, "16443"),
        ));
    }
    let command = manifest_command(
        &node
            .kubernetes_dir()
            .join("manifests/kubeforge-haproxy.yaml"),
    );
    let mut c = ns.cmd(&command[0]);
    c.args(&command[1..]);
    processes.push(spawn(c));
    let port = free_port();
    let mut launcher = Command::new("ip");
    launcher.args(["netns", "exec", &ns.0]);
    let standin_dir = tempfile::tempdir().unwrap();
    let p = |p: &Path| p.display().to_string();
    let standin = common::standin::StandIn::start_in(
        standin_dir.path(),
        serde_json::json!({
            "api": {"host": "127.0.0.1", "port": port, "cert": p(&api_crt), "key": p(&api_key), "ca": p(&node.pki().join("ca.crt"))},
            "objects": [apiserver_slice(&["127.0.0.1", "127.0.0.2"])],
        }),
        launcher,
    );
    let server = format!("https://127.0.0.1:{port}");
    let states = |ns: &Netns| -> Vec<(String, String)> {
        let out = ns
            .cmd("curl")
            .args(["-s", "--max-time", "2", "http://127.0.0.1:8404/stats;csv"])
            .output()
            .unwrap();
        common::haproxy_backend_states(&String::from_utf8_lossy(&out.stdout))
    };
    let until = |what: &str, f: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !f() {
            assert!(start.elapsed() < Duration::from_secs(15), "never: {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    until("haproxy's stats page answers", &|| !states(&ns).is_empty());
    assert_eq!(
        states(&ns)
            .iter()
            .map(|(s, _)| s.as_str())
            .collect::<Vec<_>>(),
        ["192.0.2.2:6443"]
    );

    // A connection through haproxy's old worker, opened before the reload.
    let mut held = ns.cmd("openssl");
    held.args(["s_client", "-connect", "127.0.0.1:8443", "-quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());

    // Two API servers listed: both added, the node's own kept; haproxy reloaded, not restarted.
    sync_ok(&ns, &node, &server);
    assert_eq!(
        server_lines(&haproxy_cfg),
        [
            "server 127.0.0.1:16443 127.0.0.1:16443",
            "server 127.0.0.2:16443 127.0.0.2:16443",
            "server 192.0.2.2:6443 192.0.2.2:6443"
        ]
    );
    tool_ok("haproxy", &["-c", "-f", haproxy_cfg.to_str().unwrap()]);
    until("the new servers UP on the stats page", &|| {
        let s = states(&ns);
        s.len() == 3 && s.iter().filter(|(_, st)| st == "UP").count() == 2
    });
    let mut held = spawn_piped(held);
    until("a request through the balancer is served", &|| {
        let out = ns
            .cmd("curl")
            .args(["-sk", "--max-time", "2", "https://127.0.0.1:8443/version"])
            .output()
            .unwrap();
        out.stdout == b"a" || out.stdout == b"b"
    });
    std::thread::sleep(Duration::from_secs(1));

    // One of them gone from the slice: removed; the connection opened before survives the reload.
    let patch = serde_json::json!({"endpoints": [{"addresses": ["127.0.0.2"], "conditions": {"ready": true}}]});
    let out = ns
        .cmd("curl")
        .args(["-s", "--cacert"])
        .arg(node.pki().join("ca.crt"))
        .arg("--cert")
        .arg(&pem)
        .arg("--key")
        .arg(&pem)
        .args([
            "-X",
            "PATCH",
            "-H",
            "Content-Type: application/merge-patch+json",
            "-d",
            &patch.to_string(),
        ])
        .arg(format!(
            "{server}/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes"
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    sync_ok(&ns, &node, &server);
    assert_eq!(
        server_lines(&haproxy_cfg),
        [
            "server 127.0.0.2:16443 127.0.0.2:16443",
            "server 192.0.2.2:6443 192.0.2.2:6443"
        ]
    );
    until("127.0.0.1:16443 gone from the stats page", &|| {
        let s = states(&ns);
        s.len() == 2 && !s.iter().any(|(n, _)| n == "127.0.0.1:16443")
    });
    let answer = held.request("GET /version HTTP/1.0\r\n\r\n");
    assert!(
        answer.starts_with("HTTP/1.0 200"),
        "the held connection after the reload: {answer:?}"
    );

    // The API unreachable: the sync fails and haproxy keeps its servers.
    let before = std::fs::read(&haproxy_cfg).unwrap();
    drop(standin);
    let out = sync_command(&ns, &node, &server).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no API server answered"),
        "{out:?}"
    );
    assert_eq!(std::fs::read(&haproxy_cfg).unwrap(), before);
    assert_eq!(states(&ns).len(), 2);
    drop(processes);
}

/// The `server` lines of a haproxy.cfg, trimmed.
fn server_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("server "))
        .map(str::to_string)
        .collect()
}

/// `openssl s_client` holding one TLS connection through the balancer.
struct Held(Child);

fn spawn_piped(mut cmd: Command) -> Held {
    let held = Held(cmd.spawn().expect("openssl s_client"));
    // The TLS handshake through haproxy to a backend, before anything else happens.
    std::thread::sleep(Duration::from_secs(1));
    held
}

impl Held {
    /// Sends `request` on the held connection and reads the answer until the server closes it.
    fn request(&mut self, request: &str) -> String {
        use std::io::{Read, Write};
        let mut stdin = self.0.stdin.take().unwrap();
        stdin.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        self.0
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut answer)
            .unwrap();
        drop(stdin);
        answer
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A worker's node-local balancer (`nodeLocal: true`) as `join` renders it: haproxy on
/// 127.0.0.1:<balancerPort> in front of the control-plane endpoint until its sync (no `--local`:
/// a worker has no API server) lists the API servers — checked by Debian's haproxy and
/// kubernetes-validate; and kubelet.conf pointed at it with `tls-server-name: kubernetes`, which
/// kubectl (client-go, as the kubelet) accepts against the API server certificate kubeforge made,
/// served on 127.0.0.1 where that certificate has no SAN.
#[test]
fn node_local_worker_balancer_and_kubelet_conf() {
    require_tool("haproxy");
    let node = Node::new();
    let cfg = endpoint_config(&node, &format!("{ENDPOINT_DOC}nodeLocal: true\n"));
    node.run_ok(&["init", "phase", "certs", "all", "--config", &cfg]);
    node.run_ok(&["init", "phase", "kubeconfig", "kubelet", "--config", &cfg]);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let config =
        kubeforge::config::load_str(&text, "t.yaml", &Default::default(), &node.kubernetes_dir())
            .unwrap();
    let layout = kubeforge::node::Layout::new(
        &node.kubernetes_dir(),
        &node.root().join("var/lib/kubelet"),
        &node.pki(),
        &node.root().join("var/lib/etcd"),
    );
    for f in kubeforge::endpoint::worker_files(&config, &layout).unwrap() {
        std::fs::create_dir_all(f.path.parent().unwrap()).unwrap();
        std::fs::write(&f.path, &f.contents).unwrap();
    }
    let haproxy_cfg = endpoint_dir(&node).join("haproxy.cfg");
    tool_ok("haproxy", &["-c", "-f", haproxy_cfg.to_str().unwrap()]);
    let rendered = std::fs::read_to_string(&haproxy_cfg).unwrap();
    assert!(rendered.contains("    bind 127.0.0.1:8443\n"), "{rendered}");
    assert_eq!(
        server_lines(&haproxy_cfg),
        ["server 10.213.1.100:8443 10.213.1.100:8443"]
    );
    let manifest = node
        .kubernetes_dir()
        .join("manifests/kubeforge-haproxy.yaml");
    tool_ok(
        "kubernetes-validate",
        &["--strict", "-k", "1.35.0", manifest.to_str().unwrap()],
    );
    assert!(!node
        .kubernetes_dir()
        .join("manifests/kubeforge-keepalived.yaml")
        .exists());
    let pod: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    let sync: Vec<&str> = pod["spec"]["containers"][1]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(!sync.contains(&"--local"), "{sync:?}");
    assert!(
        sync.windows(2)
            .any(|w| w == ["--server", "https://10.213.1.100:8443"]),
        "{sync:?}"
    );

    let ep = config.endpoint.as_ref().unwrap();
    let kubelet_conf = node.kubernetes_dir().join("kubelet.conf");
    let pointed =
        kubeforge::endpoint::node_local_kubeconfig(&std::fs::read(&kubelet_conf).unwrap(), ep)
            .unwrap();
    std::fs::write(&kubelet_conf, pointed).unwrap();
    let apiserver_crt = node.pki().join("apiserver.crt");
    let sans = tool_ok(
        "openssl",
        &[
            "x509",
            "-in",
            apiserver_crt.to_str().unwrap(),
            "-noout",
            "-ext",
            "subjectAltName",
        ],
    );
    assert!(
        sans.contains("DNS:kubernetes,") && !sans.contains("127.0.0.1"),
        "{sans}"
    );
    let ns = Netns::new("10.213.4.1");
    let _backend = readyz_backend(
        &ns,
        &node,
        &endpoint_dir(&node),
        ("a", "through-127.0.0.1"),
        ("127.0.0.1", "8443"),
    );
    let kubectl = |args: &[&str]| {
        ns.cmd(&common::kubectl())
            .arg(format!("--kubeconfig={}", kubelet_conf.display()))
            .args(args)
            .output()
            .unwrap()
    };
    let view = kubectl(&[
        "config",
        "view",
        "-o",
        "jsonpath={.clusters[0].cluster.server} {.clusters[0].cluster.tls-server-name}",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&view.stdout),
        "https://127.0.0.1:8443 kubernetes"
    );
    let start = Instant::now();
    loop {
        let out = kubectl(&["get", "--raw", "/version"]);
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout), "through-127.0.0.1");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "kubectl through 127.0.0.1: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

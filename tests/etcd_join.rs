//! The etcd-join phase on real etcd: several hosts on this machine, each a network namespace on
//! one bridge with its own files under one path (each host's directory is bind-mounted on
//! `<lab>/node` inside its mount namespace, so the cluster-wide certificatesDir means each host's
//! own), one Debian etcd per host started from the kubeforge-rendered manifest, and the first
//! host's API played by the stand-in (tests/standin/apiserver.py) inside its namespace. Joins
//! run as `kubeforge join --config <JoinConfiguration>` inside the joining host's namespace.
//! Proves: a one-member cluster grows to three (learner, then promoted), two joins in a row keep
//! quorum, a join with one of three members down is refused at once without touching the
//! membership (etcd itself accepts no member then) and works once it is back, and a join whose
//! etcd never starts ends with the learner removed and the members as healthy as before.

mod common;
use common::standin::StandIn;
use common::*;

use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "abcdef.0123456789abcdef";

struct Lab {
    id: u32,
    hosts: usize,
    etcds: Vec<(usize, Child)>,
    dir: tempfile::TempDir,
}

fn ip(cmd: &[&str]) {
    let out = Command::new("ip").args(cmd).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    fn new(hosts: usize) -> Lab {
        require_tool("etcd");
        require_tool("etcdctl");
        let id = std::process::id() % 200;
        let lab = Lab {
            id,
            hosts,
            etcds: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        let bridge = lab.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", lab.addr(254)),
            "dev",
            &bridge,
        ]);
        ip(&["link", "set", &bridge, "up"]);
        for h in 1..=hosts {
            let ns = lab.ns(h);
            let outside = format!("kfj{id}h{h}");
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            ip(&["link", "set", &outside, "master", &bridge, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", lab.addr(h)),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            std::fs::create_dir_all(lab.etc(h)).unwrap();
        }
        std::fs::create_dir_all(lab.node()).unwrap();
        lab
    }
    fn bridge(&self) -> String {
        format!("kfjbr{}", self.id)
    }
    fn ns(&self, h: usize) -> String {
        format!("kfj{}-{h}", self.id)
    }
    fn addr(&self, h: usize) -> String {
        format!("10.77.{}.{h}", self.id)
    }
    /// Host h's files, seen from outside.
    fn etc(&self, h: usize) -> PathBuf {
        self.dir.path().join(format!("host{h}"))
    }
    /// Where every host sees its own files.
    fn node(&self) -> PathBuf {
        self.dir.path().join("node")
    }
    /// `<node>/kubernetes` as the hosts see it.
    fn k(&self) -> String {
        self.node().join("kubernetes").display().to_string()
    }
    /// A command run on host h: in its network namespace, with its files on `<node>`.
    fn exec(&self, h: usize) -> Command {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &self.ns(h),
            "sh",
            "-c",
            "mount --bind \"$0\" \"$1\" && shift && exec \"$@\"",
        ]);
        c.arg(self.etc(h)).arg(self.node());
        c
    }
    fn kubeforge(&self, h: usize, args: &[&str]) -> std::process::Output {
        self.exec(h)
            .arg(BIN)
            .args(args)
            .args(["--kubernetes-dir", &self.k()])
            .args(["--kubelet-dir", &format!("{}/kubelet", self.k())])
            .output()
            .unwrap()
    }
    fn kubeforge_ok(&self, h: usize, args: &[&str]) -> String {
        let out = self.kubeforge(h, args);
        assert!(
            out.status.success(),
            "host {h}: kubeforge {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    /// Plays the kubelet for etcd: runs the rendered etcd command of host h in its namespace.
    fn start_etcd(&mut self, h: usize) {
        let command = manifest_command(&self.etc(h).join("kubernetes/manifests/etcd.yaml"));
        let log = std::fs::File::create(self.dir.path().join(format!("etcd-{h}.log"))).unwrap();
        let child = self
            .exec(h)
            .args(&command)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.etcds.push((h, child));
    }
    fn stop_etcd(&mut self, h: usize) {
        if let Some(i) = self.etcds.iter().position(|(x, _)| *x == h) {
            let (_, mut child) = self.etcds.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        let pki = format!("{}/pki/etcd", self.k());
        self.exec(1)
            .args([
                "etcdctl",
                "--endpoints",
                &format!("https://{}:2379", self.addr(1)),
            ])
            .args(["--cacert", &format!("{pki}/ca.crt")])
            .args(["--cert", &format!("{pki}/healthcheck-client.crt")])
            .args(["--key", &format!("{pki}/healthcheck-client.key")])
            .args(["--command-timeout=5s"])
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .unwrap()
    }
    /// (name, is learner) of every member.
    fn members(&self) -> Vec<(String, bool)> {
        let out = self.etcdctl(&["member", "list", "-w", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut members: Vec<(String, bool)> = list["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap_or_default().to_string(),
                    m["isLearner"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        members.sort();
        members
    }
    fn wait_healthy(&self, h: usize) {
        let start = Instant::now();
        loop {
            let pki = format!("{}/pki/etcd", self.k());
            let out = self
                .exec(h)
                .args([
                    "etcdctl",
                    "--endpoints",
                    &format!("https://{}:2379", self.addr(h)),
                ])
                .args(["--cacert", &format!("{pki}/ca.crt")])
                .args(["--cert", &format!("{pki}/healthcheck-client.crt")])
                .args(["--key", &format!("{pki}/healthcheck-client.key")])
                .args(["endpoint", "health"])
                .env("ETCDCTL_API", "3")
                .output()
                .unwrap();
            if out.status.success() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "etcd of host {h} never became healthy: {}",
                std::fs::read_to_string(self.dir.path().join(format!("etcd-{h}.log")))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, mut c) in self.etcds.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for h in 1..=self.hosts {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(h)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .status();
    }
}

/// The first host: PKI, etcd, the stand-in with kubeadm-config, kubeadm-certs, the token,
/// cluster-info and the etcd pods' annotations. Returns the stand-in, the certificate key and
/// the CA pin.
fn first_host(lab: &mut Lab) -> (StandIn, String, String) {
    let a1 = lab.addr(1);
    let k = lab.k();
    let config = format!(
        "apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
bootstrapTokens:
- token: {TOKEN}
localAPIEndpoint:
  advertiseAddress: {a1}
nodeRegistration:
  name: cp1
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: v1.35.6
encryptionAlgorithm: ECDSA-P256
controlPlaneEndpoint: {a1}:6443
certificatesDir: {k}/pki
etcd:
  local:
    dataDir: {k}/etcd-data
    imageTag: 3.4.23-0
"
    );
    std::fs::create_dir_all(lab.etc(1).join("kubernetes")).unwrap();
    std::fs::write(lab.etc(1).join("kubeadm.yaml"), config).unwrap();
    let cfg_path = lab.node().join("kubeadm.yaml").display().to_string();
    let cfg = ["--config", cfg_path.as_str()];
    for phase in ["certs", "kubeconfig", "etcd"] {
        lab.kubeforge_ok(1, &[&["init", "phase", phase][..], &cfg[..]].concat());
    }
    lab.start_etcd(1);
    lab.wait_healthy(1);
    let pods: Vec<Value> = (1..=lab.hosts)
        .map(|h| {
            json!({"name": format!("etcd-cp{h}"), "ready_after": 0,
                   "annotations": {"kubeadm.kubernetes.io/etcd.advertise-client-urls": format!("https://{}:2379", lab.addr(h))}})
        })
        .collect();
    let pki = format!("{k}/pki");
    let standin = StandIn::start_in(
        lab.dir.path(),
        json!({
            "api": {"host": a1, "port": 6443, "cert": format!("{pki}/apiserver.crt"), "key": format!("{pki}/apiserver.key"), "ca": format!("{pki}/ca.crt")},
            "nodes": (1..=lab.hosts).map(|h| format!("cp{h}")).collect::<Vec<_>>(),
            "pods": pods,
            "sign": true,
        }),
        lab.exec(1),
    );
    lab.kubeforge_ok(
        1,
        &[&["init", "phase", "upload-config"][..], &cfg[..]].concat(),
    );
    lab.kubeforge_ok(
        1,
        &[&["init", "phase", "bootstrap-token"][..], &cfg[..]].concat(),
    );
    let out = lab.kubeforge_ok(
        1,
        &[
            &["init", "phase", "upload-certs", "--upload-certs"][..],
            &cfg[..],
        ]
        .concat(),
    );
    let key = printed_certificate_key(&out);
    let pin = openssl_ca_pin(&lab.etc(1).join("kubernetes/pki/ca.crt"));
    (standin, key, pin)
}

/// `kubeforge join` of host h as control plane h (no kubelet here: preflight, kubelet-start, the
/// wait and the marking skipped), its etcd started by this test as soon as its manifest appears unless `etcd_starts`
/// is false. Returns the output and how long the join took.
fn join(
    lab: &mut Lab,
    h: usize,
    key: &str,
    pin: &str,
    etcd_starts: bool,
) -> (std::process::Output, f64) {
    join_with(lab, h, key, pin, etcd_starts, None)
}

/// `join`, optionally killed right after phase `fault` (KUBEFORGE_FAULT).
fn join_with(
    lab: &mut Lab,
    h: usize,
    key: &str,
    pin: &str,
    etcd_starts: bool,
    fault: Option<&str>,
) -> (std::process::Output, f64) {
    let config = format!(
        "apiVersion: kubeadm.k8s.io/v1beta4
kind: JoinConfiguration
discovery:
  bootstrapToken:
    apiServerEndpoint: {}:6443
    token: {TOKEN}
    caCertHashes: [\"{pin}\"]
nodeRegistration:
  name: cp{h}
controlPlane:
  localAPIEndpoint:
    advertiseAddress: {}
  certificateKey: {key}
skipPhases: [preflight, kubelet-start, wait-control-plane, control-plane-join, kubelet-serving]
timeouts:
  etcdAPICall: 20s
",
        lab.addr(1),
        lab.addr(h)
    );
    std::fs::write(lab.etc(h).join("join.yaml"), config).unwrap();
    let start = Instant::now();
    let k = lab.k();
    let mut child = lab
        .exec(h)
        .arg(BIN)
        .args([
            "join",
            "--config",
            &format!("{}/join.yaml", lab.node().display()),
        ])
        .args([
            "--kubernetes-dir",
            &k,
            "--kubelet-dir",
            &format!("{k}/kubelet"),
        ])
        .envs(fault.map(|f| ("KUBEFORGE_FAULT", format!("after:{f}"))))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let manifest = lab.etc(h).join("kubernetes/manifests/etcd.yaml");
    let mut started = lab.etcds.iter().any(|(x, _)| *x == h);
    while child.try_wait().unwrap().is_none() {
        if etcd_starts && !started && manifest.exists() {
            std::thread::sleep(Duration::from_millis(100));
            lab.start_etcd(h);
            started = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (out, start.elapsed().as_secs_f64())
}

#[test]
fn etcd_grows_by_learners_keeps_quorum_and_undoes_a_failed_join() {
    let mut lab = Lab::new(5);
    let (_standin, key, pin) = first_host(&mut lab);
    assert_eq!(lab.members(), [("cp1".to_string(), false)]);

    // 1 → 3, two joins in a row; after each, every member votes and the cluster is healthy.
    for h in [2, 3] {
        let (out, seconds) = join(&mut lab, h, &key, &pin, true);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "join of cp{h}:\n{text}");
        assert!(
            text.contains("as a learner") && text.contains("is promoted"),
            "{text}"
        );
        let members = lab.members();
        assert_eq!(members.len(), h, "{members:?}");
        assert!(
            members
                .iter()
                .all(|(name, learner)| !learner && !name.is_empty()),
            "{members:?}"
        );
        println!("FIGURES: etcd join of cp{h} (learner → promoted) took {seconds:.1} s");
    }
    let health = lab.etcdctl(&["endpoint", "health", "--cluster"]);
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );

    // One of three down: quorum holds, but etcd's strict reconfiguration check accepts no new
    // member while a voting one is unreachable. The join says so at once, names cp3 and leaves
    // the membership as it was; with cp3 back, the same join works.
    lab.stop_etcd(3);
    let before = lab.members();
    let (out, seconds) = join(&mut lab, 4, &key, &pin, true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("strict reconfiguration") && stderr.contains(&lab.addr(3)),
        "{stderr}"
    );
    assert!(seconds < 10.0, "not refused at once: {seconds:.1} s");
    assert_eq!(
        lab.members(),
        before,
        "the refused join changed the membership"
    );
    assert!(!lab.etc(4).join("kubernetes/manifests/etcd.yaml").exists());
    println!("FIGURES: a join with one of three members down was refused after {seconds:.1} s");
    lab.start_etcd(3);
    lab.wait_healthy(3);
    // Killed after control-plane-prepare, then a plain re-run completes.
    let (out, _) = join_with(&mut lab, 4, &key, &pin, true, Some("control-plane-prepare"));
    assert!(
        !out.status.success(),
        "the fault hook did not stop the join"
    );
    assert_eq!(
        lab.members(),
        before,
        "an interrupted join changed the membership"
    );
    // Killed right after etcd-join (cp4 promoted), then a plain re-run completes.
    let (out, _) = join_with(&mut lab, 4, &key, &pin, true, Some("etcd-join"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("after phase etcd-join"),
        "the fault hook did not stop the join after etcd-join"
    );
    let (out, seconds) = join(&mut lab, 4, &key, &pin, true);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "join of cp4 with cp3 back:\n{text}");
    assert_eq!(lab.members().len(), 4);
    assert!(lab.members().iter().all(|(_, learner)| !learner));
    println!("FIGURES: the re-run of cp4's join interrupted after etcd-join took {seconds:.1} s");

    // A re-run on a joined node changes no file and no membership.
    // (etcd's own data changes by itself; the files kubeforge writes must not.)
    let written = |lab: &Lab| {
        snapshot(&lab.etc(2).join("kubernetes"))
            .into_iter()
            .filter(|(p, _)| !p.to_string_lossy().contains("etcd-data"))
            .map(|(p, (bytes, mtime, mode))| (p, (bytes.len(), mtime, mode)))
            .collect::<Vec<_>>()
    };
    let files = written(&lab);
    let members = lab.members();
    let (out, seconds) = join(&mut lab, 2, &key, &pin, true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lab.members(), members);
    assert_eq!(
        written(&lab),
        files,
        "a re-run of cp2's join changed its files"
    );
    println!("FIGURES: a re-run of cp2's join took {seconds:.1} s and changed nothing");

    // A join whose etcd never starts: the learner is removed, the manifest and data are gone,
    // and the four members are as before.
    let before = lab.members();
    let (out, seconds) = join(&mut lab, 5, &key, &pin, false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("never answered") && stderr.contains("the learner was removed again"),
        "{stderr}"
    );
    assert_eq!(
        lab.members(),
        before,
        "the failed join left a member behind"
    );
    assert!(!lab.etc(5).join("kubernetes/manifests/etcd.yaml").exists());
    let health = lab.etcdctl(&["endpoint", "health", "--cluster"]);
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
    println!("FIGURES: a join whose etcd never started was undone after {seconds:.1} s");

    // `reset` on a joined control plane takes its member out first, as kubeadm's
    // remove-etcd-member does: the other three stay a healthy cluster.
    let out = lab.kubeforge_ok(4, &["reset", "--force"]);
    assert!(out.contains("Removed this node's etcd member"), "{out}");
    let members = lab.members();
    assert_eq!(members.len(), 3, "{members:?}");
    assert!(
        !members.iter().any(|(name, _)| name == "cp4"),
        "{members:?}"
    );
    let health = lab.etcdctl(&["endpoint", "health", "--cluster"]);
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
}

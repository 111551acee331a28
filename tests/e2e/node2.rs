//! More nodes on the same host, for joins: node N (2, 3) is a network namespace on a bridge
//! routed through this host (address 10.78.0.N), a mount namespace where /etc/kubernetes,
//! /var/lib/{kubelet,etcd,containerd}, /run/containerd, /var/log/pods and /var/log/kubernetes (the
//! API server's audit log) are its own directories,
//! its own containerd (this host's control-plane images copied in) and its own kubelet under the
//! cgroup root /kf-e2e-nodeN — everything another machine brings to `join`, and all of it removed
//! again on drop (the bridge with the last node).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{self, Host, Supervisor, KUBELET_DIR, KUBERNETES_DIR};

pub const NODE2: &str = "kf-e2e-2";
pub const NODE2_ADDRESS: &str = "10.78.0.2";
const BRIDGE: &str = "kfe2ebr";

/// Node `index`'s name, address, network namespace, veth on the bridge and cgroup root.
pub fn node_name(index: u8) -> String {
    format!("kf-e2e-{index}")
}
pub fn node_address(index: u8) -> String {
    format!("10.78.0.{index}")
}
fn netns(index: u8) -> String {
    format!("kf-e2e-node{index}")
}
fn veth(index: u8) -> String {
    format!("kfe2eveth{index}")
}
fn cgroup_root(index: u8) -> String {
    format!("kf-e2e-node{index}")
}

/// Node 2's own directories, bound over the host's inside its mount namespace.
const OWN_DIRS: [&str; 7] = [
    KUBERNETES_DIR,
    KUBELET_DIR,
    "/var/lib/etcd",
    "/var/lib/containerd",
    "/run/containerd",
    "/var/log/pods",
    "/var/log/kubernetes",
];

pub struct ExtraNode {
    index: u8,
    dir: tempfile::TempDir,
    holder: Child,
    containerd: Child,
    kubelet: Supervisor,
    advertise_address: String,
}

fn ip(args: &[&str]) {
    harness::run(Command::new("ip").args(args));
}

fn cgroup_dirs(index: u8) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![root.join(cgroup_root(index))];
    }
    std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir() && !e.path().is_symlink())
                .map(|e| e.path().join(cgroup_root(index)))
                .collect()
        })
        .unwrap_or_default()
}

/// Removes a cgroup and its children, deepest first.
fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn snat_rule(advertise_address: &str) -> Vec<String> {
    let rule = format!(
        "POSTROUTING -s 10.78.0.254/32 -o {BRIDGE} -j SNAT --to-source {advertise_address}"
    );
    rule.split(' ').map(String::from).collect()
}

/// `nsenter` into the namespaces `holder` keeps: the prefix of every command run on a node.
fn wrap(holder: u32) -> Vec<String> {
    let pid = holder.to_string();
    ["nsenter", "-t", &pid, "-m", "-n"]
        .map(String::from)
        .to_vec()
}

/// Node `index`'s own containerd, in its namespaces.
fn spawn_containerd(host: &Host, index: u8, holder: u32) -> Child {
    let wrap = wrap(holder);
    let mut containerd = Command::new(&wrap[0]);
    containerd.args(&wrap[1..]).arg("containerd");
    if let Some(config) = std::env::var_os("KUBEFORGE_E2E_CONTAINERD_CONFIG")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/etc/containerd/config.toml")).filter(|p| p.exists()))
    {
        containerd.arg("--config").arg(config);
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(host.log_dir.join(format!("containerd-node{index}.log")))
        .unwrap();
    containerd
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Node `index`'s kubelet, supervised, under its own cgroup root.
fn supervise_kubelet(host: &Host, index: u8, dir: &Path, holder: u32) -> Supervisor {
    Supervisor::start_with(
        &host.kubelet,
        &dir.join("var-lib-kubelet"),
        &wrap(holder),
        &[format!("--cgroup-root=/{}", cgroup_root(index))],
        host.log_dir.join(format!("kubelet-node{index}.log")),
    )
}

impl ExtraNode {
    /// Node 2 with the images of the suite's config.
    pub fn start(host: &Host) -> ExtraNode {
        ExtraNode::start_as(host, 2, &[])
    }

    /// Node `index` (2 or 3) with the images of the suite's config and `more_images` (those of
    /// them this host holds).
    pub fn start_as(host: &Host, index: u8, more_images: &[String]) -> ExtraNode {
        for tool in ["nsenter", "unshare", "containerd", "ctr"] {
            crate::common::require_tool(tool);
        }
        ExtraNode::clean_leftovers(index, &host.advertise_address);
        let (ns, veth) = (netns(index), veth(index));
        if !Path::new(&format!("/sys/class/net/{BRIDGE}")).exists() {
            ip(&["link", "add", BRIDGE, "type", "bridge"]);
            ip(&["addr", "add", "10.78.0.254/24", "dev", BRIDGE]);
            ip(&["link", "set", BRIDGE, "up"]);
            // Node 1's etcd peer certificate names its advertise address, not the bridge's: etcd
            // 3.6 rejects a peer whose source address its certificate does not name, so this
            // host's traffic into the bridge leaves from the advertise address, as from a real
            // machine.
            harness::run(
                Command::new("iptables")
                    .args(["-t", "nat", "-A"])
                    .args(snat_rule(&host.advertise_address)),
            );
        }
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["link", "set", &veth, "master", BRIDGE, "up"]);
        let cidr = format!("{}/24", node_address(index));
        ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "route", "add", "default", "via", "10.78.0.254"]);

        // The kubelet's cgroup root must exist; a cpuset cgroup needs its CPUs and memory nodes.
        for dir in cgroup_dirs(index) {
            std::fs::create_dir_all(&dir).unwrap();
            for file in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(parent) = std::fs::read_to_string(dir.parent().unwrap().join(file)) {
                    std::fs::write(dir.join(file), parent.trim()).unwrap();
                }
            }
        }
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            let controllers =
                std::fs::read_to_string("/sys/fs/cgroup/cgroup.subtree_control").unwrap();
            let enable: Vec<String> = controllers
                .split_whitespace()
                .map(|c| format!("+{c}"))
                .collect();
            let _ = std::fs::write(
                Path::new("/sys/fs/cgroup")
                    .join(cgroup_root(index))
                    .join("cgroup.subtree_control"),
                enable.join(" "),
            );
        }

        // A process that holds the node's mount namespace (slave: the host's mounts still show)
        // with the bind mounts in place; everything on the node runs inside it through nsenter.
        let dir = tempfile::tempdir().unwrap();
        let mut binds = String::new();
        for own in OWN_DIRS {
            let mine = dir
                .path()
                .join(own.trim_start_matches('/').replace('/', "-"));
            std::fs::create_dir_all(&mine).unwrap();
            std::fs::create_dir_all(own).unwrap();
            binds += &format!("mount --bind '{}' '{own}' && ", mine.display());
        }
        let holder = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .args(["unshare", "--mount", "--propagation", "slave", "sh", "-c"])
            .arg(format!("{binds}exec sleep infinity"))
            .spawn()
            .unwrap();
        let comm = format!("/proc/{}/comm", holder.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&comm).unwrap_or_default().trim() != "sleep" {
            assert!(
                Instant::now() < deadline,
                "node {index}'s namespaces did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let containerd = spawn_containerd(host, index, holder.id());
        let kubelet = supervise_kubelet(host, index, dir.path(), holder.id());
        let node = ExtraNode {
            index,
            dir,
            holder,
            containerd,
            kubelet,
            advertise_address: host.advertise_address.clone(),
        };
        node.wait_containerd();
        node.copy_images(host, more_images);
        node
    }

    fn wait_containerd(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .command("ctr")
            .arg("version")
            .output()
            .unwrap()
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "node {}'s containerd did not answer",
                self.index
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The node's network namespace, as `/proc/<pid>/ns/net` links name it.
    pub fn net_namespace(&self) -> Option<PathBuf> {
        std::fs::read_link(format!("/proc/{}/ns/net", self.holder.id())).ok()
    }

    /// Its kubelet restarted by its supervisor (what kubeforge asks systemd for elsewhere).
    pub fn restart_kubelet(&self) {
        self.kubelet.restart();
    }

    /// The machine stopped hard: every process in its network namespace (the kubelet, containerd,
    /// the shims and every host-network container: the whole control plane) killed with SIGKILL,
    /// then its link down. Only the namespace holder stays, for `restart`.
    pub fn stop_hard(&mut self) {
        let net = self.net_namespace();
        if let (Some(net), Ok(procs)) = (net, std::fs::read_dir("/proc")) {
            for p in procs.flatten() {
                let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                if pid as u32 != self.holder.id()
                    && std::fs::read_link(p.path().join("ns/net")).ok().as_ref() == Some(&net)
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        self.kubelet.stop();
        let _ = self.containerd.wait();
        ip(&["-n", &netns(self.index), "link", "set", "eth0", "down"]);
    }

    /// The machine back: its link up (and its default route, which went with it), containerd
    /// and the kubelet started again; the kubelet restarts the static pods from their manifests.
    pub fn restart(&mut self, host: &Host) {
        let ns = netns(self.index);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        let _ = Command::new("ip")
            .args(["-n", &ns, "route", "add", "default", "via", "10.78.0.254"])
            .output();
        self.containerd = spawn_containerd(host, self.index, self.holder.id());
        self.wait_containerd();
        self.kubelet = supervise_kubelet(host, self.index, self.dir.path(), self.holder.id());
    }

    /// `program` run on this node.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.holder.id().to_string(), "-m", "-n"])
            .arg(program);
        c
    }

    /// A path of this node's as this host sees it, e.g. `/etc/kubernetes/admin.conf`.
    pub fn path(&self, inside: &str) -> PathBuf {
        let own = OWN_DIRS
            .iter()
            .find(|d| Path::new(inside).starts_with(d))
            .expect("one of the node's own directories");
        let rest = Path::new(inside).strip_prefix(own).unwrap();
        self.dir
            .path()
            .join(own.trim_start_matches('/').replace('/', "-"))
            .join(rest)
    }

    /// The control-plane images (and `more`) this host's containerd holds, exported and imported
    /// into this node's.
    fn copy_images(&self, host: &Host, more: &[String]) {
        let socket = host.cri_socket.trim_start_matches("unix://");
        let present = harness::run(Command::new("ctr").args([
            "--address",
            socket,
            "-n",
            "k8s.io",
            "images",
            "ls",
            "-q",
        ]));
        let wanted = harness::run(Command::new(harness::binary()).args([
            "config",
            "images",
            "list",
            "--config",
            host.config(&[]).to_str().unwrap(),
        ]));
        let refs: Vec<&str> = wanted
            .lines()
            .chain(more.iter().map(String::as_str))
            .filter(|r| present.lines().any(|p| p == *r))
            .collect();
        let mut export = Command::new("ctr")
            .args(["--address", socket, "-n", "k8s.io", "images", "export", "-"])
            .args(&refs)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let import = self
            .command("ctr")
            .args(["-n", "k8s.io", "images", "import", "-"])
            .stdin(export.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(
            export.wait().unwrap().success(),
            "ctr images export {refs:?}"
        );
        assert!(
            import.status.success(),
            "importing images into node {}: {}",
            self.index,
            String::from_utf8_lossy(&import.stderr)
        );
    }

    /// What an interrupted earlier run may have left of node `index`; the bridge too when no
    /// other node is on it.
    fn clean_leftovers(index: u8, advertise_address: &str) {
        for leftover in [
            ["netns", "del", &netns(index)],
            ["link", "del", &veth(index)],
        ] {
            let _ = Command::new("ip").args(leftover).output();
        }
        for dir in cgroup_dirs(index) {
            remove_cgroup(&dir);
        }
        let ports = Command::new("ip")
            .args(["-o", "link", "show", "master", BRIDGE])
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default();
        if ports.is_empty() {
            while Command::new("iptables")
                .args(["-t", "nat", "-D"])
                .args(snat_rule(advertise_address))
                .output()
                .is_ok_and(|o| o.status.success())
            {}
            let _ = Command::new("ip").args(["link", "del", BRIDGE]).output();
        }
    }
}

impl Drop for ExtraNode {
    fn drop(&mut self) {
        self.kubelet.stop();
        let crictl = |args: &[&str]| {
            let out = self
                .command("crictl")
                .arg("--runtime-endpoint=unix:///run/containerd/containerd.sock")
                .args(args)
                .stderr(Stdio::null())
                .output();
            out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        for pod in crictl(&["pods", "-q"]).lines() {
            crictl(&["stopp", pod]);
            crictl(&["rmp", "-f", pod]);
        }
        // Whatever still runs in the node's mount namespace (containerd, shims) goes with it.
        let ns = std::fs::read_link(format!("/proc/{}/ns/mnt", self.holder.id())).ok();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.containerd.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.containerd.wait();
        if let (Some(ns), Ok(procs)) = (ns, std::fs::read_dir("/proc")) {
            for p in procs.flatten() {
                let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                if pid as u32 != self.holder.id()
                    && std::fs::read_link(p.path().join("ns/mnt")).ok().as_ref() == Some(&ns)
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        std::thread::sleep(Duration::from_millis(200));
        ExtraNode::clean_leftovers(self.index, &self.advertise_address);
    }
}

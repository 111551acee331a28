//! A second node on the same host, for joins: a network namespace on a bridge routed through
//! this host, a mount namespace where /etc/kubernetes, /var/lib/{kubelet,etcd,containerd},
//! /run/containerd and /var/log/pods are its own directories, its own containerd (this host's
//! control-plane images copied in) and its own kubelet under the cgroup root /kf-e2e-node2 —
//! everything a second machine brings to `join`, and all of it removed again on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{self, Host, Supervisor, KUBELET_DIR, KUBERNETES_DIR};

pub const NODE2: &str = "kf-e2e-2";
pub const NODE2_ADDRESS: &str = "10.78.0.2";
const NS: &str = "kf-e2e-node2";
const BRIDGE: &str = "kfe2ebr";
const CGROUP_ROOT: &str = "kf-e2e-node2";

/// Node 2's own directories, bound over the host's inside its mount namespace.
const OWN_DIRS: [&str; 6] = [
    KUBERNETES_DIR,
    KUBELET_DIR,
    "/var/lib/etcd",
    "/var/lib/containerd",
    "/run/containerd",
    "/var/log/pods",
];

pub struct Node2 {
    dir: tempfile::TempDir,
    holder: Child,
    containerd: Child,
    kubelet: Supervisor,
}

fn ip(args: &[&str]) {
    harness::run(Command::new("ip").args(args));
}

fn cgroup_dirs() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![root.join(CGROUP_ROOT)];
    }
    std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir() && !e.path().is_symlink())
                .map(|e| e.path().join(CGROUP_ROOT))
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

impl Node2 {
    pub fn start(host: &Host) -> Node2 {
        for tool in ["nsenter", "unshare", "containerd", "ctr"] {
            crate::common::require_tool(tool);
        }
        Node2::clean_leftovers();
        ip(&["netns", "add", NS]);
        ip(&["link", "add", BRIDGE, "type", "bridge"]);
        ip(&["addr", "add", "10.78.0.254/24", "dev", BRIDGE]);
        ip(&["link", "set", BRIDGE, "up"]);
        ip(&[
            "link",
            "add",
            "kfe2eveth",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            NS,
        ]);
        ip(&["link", "set", "kfe2eveth", "master", BRIDGE, "up"]);
        ip(&[
            "-n",
            NS,
            "addr",
            "add",
            &format!("{NODE2_ADDRESS}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", NS, "link", "set", "eth0", "up"]);
        ip(&["-n", NS, "link", "set", "lo", "up"]);
        ip(&["-n", NS, "route", "add", "default", "via", "10.78.0.254"]);

        // The kubelet's cgroup root must exist; a cpuset cgroup needs its CPUs and memory nodes.
        for dir in cgroup_dirs() {
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
                    .join(CGROUP_ROOT)
                    .join("cgroup.subtree_control"),
                enable.join(" "),
            );
        }

        // A process that holds node 2's mount namespace (slave: the host's mounts still show)
        // with the bind mounts in place; everything on node 2 runs inside it through nsenter.
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
            .arg(format!("--net=/run/netns/{NS}"))
            .args(["unshare", "--mount", "--propagation", "slave", "sh", "-c"])
            .arg(format!("{binds}exec sleep infinity"))
            .spawn()
            .unwrap();
        let comm = format!("/proc/{}/comm", holder.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&comm).unwrap_or_default().trim() != "sleep" {
            assert!(
                Instant::now() < deadline,
                "node 2's namespaces did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let pid = holder.id().to_string();
        let wrap = ["nsenter", "-t", &pid, "-m", "-n"].map(String::from);

        let mut containerd = Command::new(&wrap[0]);
        containerd.args(&wrap[1..]).arg("containerd");
        if let Some(config) = std::env::var_os("KUBEFORGE_E2E_CONTAINERD_CONFIG")
            .map(PathBuf::from)
            .or_else(|| Some(PathBuf::from("/etc/containerd/config.toml")).filter(|p| p.exists()))
        {
            containerd.arg("--config").arg(config);
        }
        let log = std::fs::File::create(host.log_dir.join("containerd-node2.log")).unwrap();
        let containerd = containerd
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let kubelet = Supervisor::start_with(
            &host.kubelet,
            &dir.path().join("var-lib-kubelet"),
            &wrap,
            &[format!("--cgroup-root=/{CGROUP_ROOT}")],
            host.log_dir.join("kubelet-node2.log"),
        );
        let node = Node2 {
            dir,
            holder,
            containerd,
            kubelet,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !node
            .command("ctr")
            .arg("version")
            .output()
            .unwrap()
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "node 2's containerd did not answer"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        node.copy_images(host);
        node
    }

    /// `program` run on node 2.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.holder.id().to_string(), "-m", "-n"])
            .arg(program);
        c
    }

    /// A path of node 2's as this host sees it, e.g. `/etc/kubernetes/admin.conf`.
    pub fn path(&self, inside: &str) -> PathBuf {
        let own = OWN_DIRS
            .iter()
            .find(|d| Path::new(inside).starts_with(d))
            .expect("one of node 2's own directories");
        let rest = Path::new(inside).strip_prefix(own).unwrap();
        self.dir
            .path()
            .join(own.trim_start_matches('/').replace('/', "-"))
            .join(rest)
    }

    /// The control-plane images this host's containerd holds, exported and imported into node 2's.
    fn copy_images(&self, host: &Host) {
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
            "importing images into node 2: {}",
            String::from_utf8_lossy(&import.stderr)
        );
    }

    /// What an interrupted earlier run may have left.
    fn clean_leftovers() {
        for leftover in [
            &["netns", "del", NS][..],
            &["link", "del", BRIDGE],
            &["link", "del", "kfe2eveth"],
        ] {
            let _ = Command::new("ip").args(leftover).output();
        }
        for dir in cgroup_dirs() {
            remove_cgroup(&dir);
        }
    }
}

impl Drop for Node2 {
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
        // Whatever still runs in node 2's mount namespace (containerd, shims) goes with it.
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
        Node2::clean_leftovers();
    }
}

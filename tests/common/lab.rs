//! A container registry and a container runtime of a test's own: Debian's `docker-registry`
//! (distribution) on a free 127.0.0.1 port and a containerd whose root, state, socket and registry
//! hosts live under a temp dir, never the node's own; small OCI images made here and copied in with
//! `skopeo`; `ctr` reading the content store back. Needs root (the containerd).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{free_port, require_tool, tool_ok, Node, BIN};

/// The Kubernetes version whose images the labs serve.
pub const VERSION: &str = "v1.35.6";
/// The init preflight checks a test machine may fail that are not this file's business (no
/// kubelet, one CPU, ports an e2e run holds).
pub const OTHER_CHECKS: &str = "NumCPU,Mem,KubeletVersion,KubeforgeStaticBinary,FileContent--proc-sys-net-ipv4-ip_forward,Port-10250,Port-10257,Port-10259,Port-2379,Port-2380";

/// A registry and a containerd that pulls from it, both stopped when dropped.
pub struct Lab {
    dir: tempfile::TempDir,
    port: u16,
    registry: Child,
    containerd: Child,
}

impl Lab {
    pub fn start() -> Lab {
        assert!(
            nix::unistd::geteuid().is_root(),
            "tests/images.rs runs a containerd: run it as root (scripts/test.sh does)"
        );
        for tool in ["docker-registry", "skopeo", "containerd", "ctr", "tar"] {
            require_tool(tool);
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let registry = start_registry(dir.path(), port);
        let containerd = start_containerd(dir.path());
        let lab = Lab {
            dir,
            port,
            registry,
            containerd,
        };
        lab.allow_plain_http(&lab.repo());
        lab.wait_until_up();
        lab
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The registry's host:port, the imageRepository of every test.
    pub fn repo(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn socket(&self) -> String {
        format!("unix://{}", self.path().join("containerd.sock").display())
    }

    /// containerd reaches `host` over plain HTTP (its hosts.toml under the CRI's config_path).
    pub fn allow_plain_http(&self, host: &str) {
        let dir = self.path().join("certs.d").join(host);
        std::fs::create_dir_all(&dir).unwrap();
        let text = format!(
            "server = \"http://{host}\"\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        );
        std::fs::write(dir.join("hosts.toml"), text).unwrap();
    }

    pub fn wait_until_up(&self) {
        let socket = self.path().join("containerd.sock");
        let start = Instant::now();
        loop {
            let registry = std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            let runtime = self.ctr(&["version"]).status.success();
            if registry && runtime {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the registry (port {}) or containerd ({}) did not come up; see {}",
                self.port,
                socket.display(),
                self.path().display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        let socket = self.path().join("containerd.sock");
        Command::new("ctr")
            .args(["-a", socket.to_str().unwrap(), "-n", "k8s.io"])
            .args(args)
            .output()
            .expect("run ctr")
    }

    /// The image names in containerd's k8s.io namespace (what the CRI sees).
    pub fn stored(&self) -> Vec<String> {
        let out = self.ctr(&["images", "ls", "-q"]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with("sha256:"))
            .map(str::to_string)
            .collect()
    }

    /// Those of `images` the content store does not hold.
    pub fn missing(&self, images: &[String]) -> Vec<String> {
        let stored = self.stored();
        images
            .iter()
            .filter(|i| !stored.contains(i))
            .cloned()
            .collect()
    }

    /// Builds a one-layer OCI image whose only file names `image` and copies it into the
    /// registry as `image` with skopeo.
    pub fn push(&self, image: &str) {
        let layout = self.path().join("oci").join(image.replace(['/', ':'], "_"));
        write_oci_layout(&layout, image);
        let from = format!("oci:{}:image", layout.display());
        tool_ok(
            "skopeo",
            &[
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                &from,
                &format!("docker://{image}"),
            ],
        );
    }

    /// A kubeadm config for a node whose images come from this lab's registry through its
    /// containerd; `registration` is added to nodeRegistration.
    pub fn config(&self, node: &Node, registration: &str) -> PathBuf {
        let cfg = node.write_config("ECDSA-P256", &format!("imageRepository: {}\n", self.repo()));
        let text = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("bindPort: 6443", &format!("bindPort: {}", free_port()))
            .replace(
                "  name: cp1\n",
                &format!(
                    "  name: cp1\n  criSocket: {}\n{registration}",
                    self.socket()
                ),
            );
        std::fs::write(&cfg, text).unwrap();
        cfg
    }

    /// `kubeforge config images list` for this lab's registry.
    pub fn images(&self) -> Vec<String> {
        let out = tool_ok(
            BIN,
            &[
                "config",
                "images",
                "list",
                "--kubernetes-version",
                VERSION,
                "--image-repository",
                &self.repo(),
            ],
        );
        out.lines().map(str::to_string).collect()
    }

    /// `kubeforge config images pull` from this lab's registry into its containerd.
    pub fn pull_command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.args(["config", "images", "pull", "--kubernetes-version", VERSION])
            .args(["--image-repository", &self.repo()])
            .args(["--cri-socket", &self.socket()]);
        c
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in [&mut self.registry, &mut self.containerd] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_registry(dir: &Path, port: u16) -> Child {
    let config = dir.join("registry.yml");
    let text = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
        dir.join("registry").display()
    );
    std::fs::write(&config, text).unwrap();
    let log = std::fs::File::create(dir.join("registry.log")).unwrap();
    Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start docker-registry")
}

/// A containerd with everything under `dir`: no TCP listener, the native snapshotter (any
/// filesystem), registry hosts from `dir/certs.d`.
fn start_containerd(dir: &Path) -> Child {
    let d = dir.display();
    let text = format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/conf"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{d}/certs.d"
"#
    );
    let config = dir.join("containerd.toml");
    std::fs::write(&config, text).unwrap();
    let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
    Command::new("containerd")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start containerd")
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// An OCI image layout at `dir` tagged `image`: one uncompressed layer (made by tar) holding a
/// file that names `image`, so every image has its own digest.
fn write_oci_layout(dir: &Path, image: &str) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let blob = |bytes: &[u8]| {
        let digest = sha256(bytes);
        std::fs::write(blobs.join(&digest[7..]), bytes).unwrap();
        serde_json::json!({ "digest": digest, "size": bytes.len() })
    };
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("image"), format!("{image}\n")).unwrap();
    let layer_tar = dir.join("layer.tar");
    tool_ok(
        "tar",
        &[
            "-cf",
            layer_tar.to_str().unwrap(),
            "-C",
            files.to_str().unwrap(),
            "image",
        ],
    );
    let layer = std::fs::read(&layer_tar).unwrap();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::json!({
        "architecture": arch, "os": "linux", "config": {},
        "rootfs": { "type": "layers", "diff_ids": [sha256(&layer)] },
    });
    let mut config_ref = blob(config.to_string().as_bytes());
    config_ref["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let mut layer_ref = blob(&layer);
    layer_ref["mediaType"] = "application/vnd.oci.image.layer.v1.tar".into();
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_ref, "layers": [layer_ref],
    });
    let mut manifest_ref = blob(manifest.to_string().as_bytes());
    manifest_ref["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
    manifest_ref["annotations"] =
        serde_json::json!({ "org.opencontainers.image.ref.name": "image" });
    let index = serde_json::json!({ "schemaVersion": 2, "manifests": [manifest_ref] });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

//! Images on the node before anything waits on them, against a real registry and a real runtime:
//! Debian's `docker-registry` (distribution) on 127.0.0.1, `skopeo` copying small OCI images into
//! it, and a containerd of each test's own (its root, state, socket and registry hosts under a
//! temp dir) whose CRI kubeforge talks to. `ctr` reads the content store back. Needs root (the
//! containerd) — scripts/test.sh runs as root and installs docker-registry, skopeo and containerd.

mod common;
use common::*;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const VERSION: &str = "v1.35.6";
/// The init preflight checks a test machine may fail that are not this file's business (no
/// kubelet, one CPU, ports an e2e run holds).
const OTHER_CHECKS: &str = "NumCPU,Mem,KubeletVersion,FileContent--proc-sys-net-ipv4-ip_forward,Port-10250,Port-10257,Port-10259,Port-2379,Port-2380";

/// A registry and a containerd that pulls from it, both stopped when dropped.
struct Lab {
    dir: tempfile::TempDir,
    port: u16,
    registry: Child,
    containerd: Child,
}

impl Lab {
    fn start() -> Lab {
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

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The registry's host:port, the imageRepository of every test.
    fn repo(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn socket(&self) -> String {
        format!("unix://{}", self.path().join("containerd.sock").display())
    }

    /// containerd reaches `host` over plain HTTP (its hosts.toml under the CRI's config_path).
    fn allow_plain_http(&self, host: &str) {
        let dir = self.path().join("certs.d").join(host);
        std::fs::create_dir_all(&dir).unwrap();
        let text = format!(
            "server = \"http://{host}\"\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        );
        std::fs::write(dir.join("hosts.toml"), text).unwrap();
    }

    fn wait_until_up(&self) {
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

    fn ctr(&self, args: &[&str]) -> Output {
        let socket = self.path().join("containerd.sock");
        Command::new("ctr")
            .args(["-a", socket.to_str().unwrap(), "-n", "k8s.io"])
            .args(args)
            .output()
            .expect("run ctr")
    }

    /// The image names in containerd's k8s.io namespace (what the CRI sees).
    fn stored(&self) -> Vec<String> {
        let out = self.ctr(&["images", "ls", "-q"]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with("sha256:"))
            .map(str::to_string)
            .collect()
    }

    /// Builds a one-layer OCI image whose only file names `image` and copies it into the
    /// registry as `image` with skopeo.
    fn push(&self, image: &str) {
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
    fn config(&self, node: &Node, registration: &str) -> PathBuf {
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
    fn images(&self) -> Vec<String> {
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
    fn pull_command(&self) -> Command {
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

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The run failed in preflight on `image`, which the registry at `repo` does not have.
fn assert_refused_pull(out: &Output, image: &str, repo: &str) {
    assert_eq!(out.status.code(), Some(1), "{}", text(out));
    let err = String::from_utf8_lossy(&out.stderr);
    let expected =
        format!("[ERROR ImagePull]: failed to pull image {image} from registry {repo}: ");
    assert!(
        err.contains(&expected) && err.contains("not found"),
        "{err}"
    );
}

fn missing(lab: &Lab, images: &[String]) -> Vec<String> {
    let stored = lab.stored();
    images
        .iter()
        .filter(|i| !stored.contains(i))
        .cloned()
        .collect()
}

#[test]
fn config_images_pull_fills_a_fresh_content_store() {
    let lab = Lab::start();
    let images = lab.images();
    assert_eq!(images.len(), 7, "{images:?}");
    images.iter().for_each(|i| lab.push(i));
    assert!(lab.stored().is_empty());

    let out = lab.pull_command().output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(missing(&lab, &images), Vec::<String>::new());
    // Not a terminal: one line per image, kubeadm's words.
    let stdout = String::from_utf8_lossy(&out.stdout);
    for image in &images {
        assert!(
            stdout.contains(&format!("[config/images] Pulled {image} (")),
            "{stdout}"
        );
    }
    assert!(stdout.contains("7 images: 7 pulled"), "{stdout}");
}

#[test]
fn init_preflight_pulls_what_the_node_runs_in_parallel_and_dry_run_pulls_nothing() {
    let lab = Lab::start();
    let images = lab.images();
    images.iter().for_each(|i| lab.push(i));
    let node = Node::new();
    let cfg = lab.config(&node, "  imagePullSerial: false\n");

    let out = node.run(&["init", "--dry-run", "--config", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let would =
        "[preflight] Would pull the required images (like 'kubeforge config images pull'): ";
    assert!(text(&out).contains(would), "{}", text(&out));
    assert!(
        lab.stored().is_empty(),
        "a dry-run pulled {:?}",
        lab.stored()
    );

    let out = node.preflight(&cfg, OTHER_CHECKS);
    assert!(out.status.success(), "{}", text(&out));
    let pulling = "[preflight] Pulling images required for setting up a Kubernetes cluster";
    assert!(text(&out).contains(pulling), "{}", text(&out));
    // Every image but CoreDNS's (its pods wait for a pod network, and may run on any node).
    let (coredns, node_images): (Vec<String>, Vec<String>) =
        images.into_iter().partition(|i| i.contains("/coredns:"));
    assert_eq!(missing(&lab, &node_images), Vec::<String>::new());
    assert_eq!(missing(&lab, &coredns), coredns);
}

/// A node holds kube-scheduler's image, which the registry does not have: IfNotPresent pulls the
/// others and leaves it alone; Always tries it and fails, naming it; Never with an empty store
/// names every image missing.
#[test]
fn the_pull_policy_decides_what_is_pulled() {
    let lab = Lab::start();
    let images = lab.images();
    let scheduler = format!("{}/kube-scheduler:{VERSION}", lab.repo());
    let local_only = format!("{}/local-only:1", lab.repo());
    for image in images.iter().filter(|i| **i != scheduler) {
        lab.push(image);
    }
    lab.push(&local_only);
    for args in [
        ["images", "pull", "--plain-http", &local_only],
        ["images", "tag", &local_only, &scheduler],
    ] {
        assert!(lab.ctr(&args).status.success(), "ctr {args:?}");
    }
    let run = |lab: &Lab, policy: &str| {
        let node = Node::new();
        let cfg = lab.config(&node, &format!("  imagePullPolicy: {policy}\n"));
        node.preflight(&cfg, OTHER_CHECKS)
    };
    let out = run(&lab, "IfNotPresent");
    assert!(out.status.success(), "{}", text(&out));
    let kept = format!("[preflight] {scheduler} is on the node already");
    assert!(text(&out).contains(&kept), "{}", text(&out));

    assert_refused_pull(&run(&lab, "Always"), &scheduler, &lab.repo());

    let empty = Lab::start();
    let out = run(&empty, "Never");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let apiserver = format!("{}/kube-apiserver:{VERSION}", empty.repo());
    let never = format!(
        "[ERROR ImagePull]: image {apiserver} is not on the node and imagePullPolicy is Never"
    );
    assert!(text(&out).contains(&never), "{}", text(&out));
    assert!(empty.stored().is_empty());
}

#[test]
fn a_missing_tag_stops_init_before_anything_is_written() {
    let lab = Lab::start();
    let images = lab.images();
    let scheduler = format!("{}/kube-scheduler:{VERSION}", lab.repo());
    for image in images.iter().filter(|i| **i != scheduler) {
        lab.push(image);
    }
    let node = Node::new();
    let cfg = lab.config(&node, "");
    let before = node.snapshot();
    let cfg_arg = cfg.to_str().unwrap();
    let args = [
        "init",
        "--config",
        cfg_arg,
        "--ignore-preflight-errors",
        OTHER_CHECKS,
    ];
    let out = node.run(&args);
    assert_refused_pull(&out, &scheduler, &lab.repo());
    assert!(
        text(&out).contains("--ignore-preflight-errors"),
        "{}",
        text(&out)
    );
    assert_eq!(node.snapshot(), before, "a failed preflight wrote files");

    // ImagePull ignored, it is a warning.
    let out = node.preflight(&cfg, &format!("{OTHER_CHECKS},ImagePull"));
    assert!(out.status.success(), "{}", text(&out));
    let warning = format!("[WARNING ImagePull]: failed to pull image {scheduler}");
    assert!(text(&out).contains(&warning), "{}", text(&out));
}

/// A registry that accepts connections and never answers: the pull gives up after
/// KUBEFORGE_IMAGE_PULL_TIMEOUT, naming the image it was pulling; the other images of that
/// registry are not tried one by one (serial), or all give up together (parallel).
#[test]
fn a_stalled_registry_is_named_with_the_image_it_was_sending() {
    let lab = Lab::start();
    let stall = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = format!("127.0.0.1:{}", stall.local_addr().unwrap().port());
    lab.allow_plain_http(&host);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in stall.incoming().flatten() {
            held.push(conn); // accepted, never read from, never answered
        }
    });
    let pull = |serial: bool| {
        let node = Node::new();
        let config = node.root().join("images.yaml");
        let text = format!(
            "apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\nnodeRegistration:\n  criSocket: {}\n  imagePullSerial: {serial}\n---\napiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nkubernetesVersion: {VERSION}\nimageRepository: {host}\n",
            lab.socket()
        );
        std::fs::write(&config, text).unwrap();
        let mut c = Command::new(BIN);
        c.args([
            "config",
            "images",
            "pull",
            "--config",
            config.to_str().unwrap(),
        ])
        .env("KUBEFORGE_IMAGE_PULL_TIMEOUT", "3s");
        c.output().unwrap()
    };
    let apiserver = format!("{host}/kube-apiserver:{VERSION}");
    let out = pull(true);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "failed to pull image {apiserver}: registry {host} had not sent it after 3.0s"
        )),
        "{err}"
    );
    let scheduler = format!("{host}/kube-scheduler:{VERSION}");
    assert!(
        err.contains(&format!("did not pull image {scheduler}: registry {host} stopped answering while sending {apiserver}")),
        "{err}"
    );

    let out = pull(false);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for image in [&apiserver, &scheduler] {
        assert!(
            err.contains(&format!(
                "failed to pull image {image}: registry {host} had not sent it after 3.0s"
            )),
            "{err}"
        );
    }
    assert!(lab.stored().is_empty());
    let mut log = String::new();
    std::fs::File::open(lab.path().join("containerd.log"))
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(
        log.contains(&apiserver),
        "containerd never saw the pull:\n{log}"
    );
}

//! Images on the node before anything waits on them, against a real registry and a real runtime:
//! Debian's `docker-registry` (distribution) on 127.0.0.1, `skopeo` copying small OCI images into
//! it, and a containerd of each test's own (its root, state, socket and registry hosts under a
//! temp dir) whose CRI kubeforge talks to. `ctr` reads the content store back. Needs root (the
//! containerd) — scripts/test.sh runs as root and installs docker-registry, skopeo and containerd.

mod common;
use common::lab::{Lab, OTHER_CHECKS, VERSION};
use common::*;

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Output};

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

#[test]
fn config_images_pull_fills_a_fresh_content_store() {
    let lab = Lab::start();
    let images = lab.images();
    assert_eq!(images.len(), 7, "{images:?}");
    images.iter().for_each(|i| lab.push(i));
    assert!(lab.stored().is_empty());

    let out = lab.pull_command().output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(lab.missing(&images), Vec::<String>::new());
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
    assert_eq!(lab.missing(&node_images), Vec::<String>::new());
    assert_eq!(lab.missing(&coredns), coredns);
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
fn a_stalled_registry_is_named_with_the_image_being_pulled() {
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
            "failed to pull image {apiserver}: the pull from registry {host} had not finished after 3.0s"
        )),
        "{err}"
    );
    let scheduler = format!("{host}/kube-scheduler:{VERSION}");
    assert!(
        err.contains(&format!("did not pull image {scheduler}: the pull of {apiserver} from the same registry ran out of time")),
        "{err}"
    );

    let out = pull(false);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for image in [&apiserver, &scheduler] {
        assert!(
            err.contains(&format!(
                "failed to pull image {image}: the pull from registry {host} had not finished after 3.0s"
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

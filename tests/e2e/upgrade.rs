//! `kubeforge upgrade` on the real control plane: v1.35.6 → the next minor (KUBEFORGE_E2E_UPGRADE_TO,
//! its images on the node), etcd moved to another real etcd image (KUBEFORGE_E2E_UPGRADE_ETCD_TAG)
//! the way an operator asks for it (etcd.local.imageTag in kubeadm-config). The API server's
//! `/readyz` and an ordinary read are sampled every 100 ms throughout; a broken scheduler and a
//! broken etcd are rolled back to a healthy node; a run killed between components is completed by
//! a re-run; real kubeadm (KUBEADM_UPGRADE_BIN, the target's kubeadm) plans against the cluster and
//! runs its own `upgrade apply` on the same node from the same state, for the figures.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

/// What the upgrade scenarios move to.
pub(crate) struct Target {
    pub(crate) version: String,
    pub(crate) etcd_tag: String,
    kubeadm: PathBuf,
}

pub(crate) fn target() -> Target {
    let get = |name: &str, what: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| panic!("the upgrade scenarios need {name}: {what}"))
    };
    Target {
        version: get(
            "KUBEFORGE_E2E_UPGRADE_TO",
            "the version to upgrade to, e.g. v1.36.3, its images on the node",
        ),
        etcd_tag: get(
            "KUBEFORGE_E2E_UPGRADE_ETCD_TAG",
            "the etcd image tag to move to, e.g. 3.6.13-0",
        ),
        kubeadm: get("KUBEADM_UPGRADE_BIN", "real kubeadm of the target version").into(),
    }
}

/// The node's flags for every upgrade here: the Node is NotReady without a pod network.
pub(crate) const IGNORE: &str = "--ignore-preflight-errors=ControlPlaneNodesReady";
/// Real kubeadm's, which also checks the host's kernel config (absent here).
const IGNORE_KUBEADM: &str = "--ignore-preflight-errors=ControlPlaneNodesReady,SystemVerification";

/// Samples `/readyz` (anonymous) and a read as the admin every 100 ms until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<(f64, bool, bool)>>>,
    start: Instant,
}

/// The longest run of failures and their total, in seconds, for one of the sampled columns.
fn downtime(samples: &[(f64, bool, bool)], column: fn(&(f64, bool, bool)) -> bool) -> (f64, f64) {
    let (mut longest, mut total, mut since): (f64, f64, Option<f64>) = (0.0, 0.0, None);
    let mut last = 0.0;
    for s in samples {
        let ok = column(s);
        match (ok, since) {
            (false, None) => since = Some(s.0),
            (true, Some(t)) => {
                longest = longest.max(s.0 - t);
                total += s.0 - t;
                since = None;
            }
            _ => {}
        }
        last = s.0;
    }
    if let Some(t) = since {
        longest = longest.max(last - t);
        total += last - t;
    }
    (longest, total)
}

impl Sampler {
    fn start(s: &Scenario) -> Sampler {
        let dir = s.host.log_dir.join("admin-cert");
        std::fs::create_dir_all(&dir).unwrap();
        let admin: serde_yaml::Value = serde_yaml::from_str(
            &std::fs::read_to_string(format!("{KUBERNETES_DIR}/admin.conf")).unwrap(),
        )
        .unwrap();
        let user = &admin["users"][0]["user"];
        for (key, file) in [
            ("client-certificate-data", "cert.pem"),
            ("client-key-data", "key.pem"),
        ] {
            let pem = base64_decode(user[key].as_str().unwrap());
            std::fs::write(dir.join(file), pem).unwrap();
        }
        let base = format!("https://{}:6443", s.host.advertise_address);
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let curl = |url: &str, auth: bool| {
                    let mut c = Command::new("curl");
                    c.args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "-m", "1"]);
                    if auth {
                        c.arg("--cert")
                            .arg(dir.join("cert.pem"))
                            .arg("--key")
                            .arg(dir.join("key.pem"));
                    }
                    c.arg(url).output().is_ok_and(|o| o.stdout == b"200")
                };
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = start.elapsed().as_secs_f64();
                    let ready = curl(&format!("{base}/readyz"), false);
                    let read = curl(
                        &format!("{base}/api/v1/namespaces/default/configmaps/kf-e2e-before"),
                        true,
                    );
                    samples.push((t, ready, read));
                    std::thread::sleep(Duration::from_millis(100).saturating_sub(
                        Duration::from_secs_f64(start.elapsed().as_secs_f64() - t),
                    ));
                }
                samples
            })
        };
        Sampler {
            stop,
            thread: Some(thread),
            start,
        }
    }

    /// (readyz: longest gap, total; reads: longest gap, total), seconds.
    fn finish(mut self) -> ((f64, f64), (f64, f64)) {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.thread.take().unwrap().join().unwrap();
        println!(
            "sampled /readyz and a read {} times over {:.1} s",
            samples.len(),
            self.start.elapsed().as_secs_f64()
        );
        (downtime(&samples, |s| s.1), downtime(&samples, |s| s.2))
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let out = Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    out.stdin
        .as_ref()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    out.wait_with_output().unwrap().stdout
}

fn kubectl(s: &Scenario, args: &[&str]) -> (bool, String) {
    let out = Command::new(&s.host.kubectl)
        .arg(format!("--kubeconfig={KUBERNETES_DIR}/admin.conf"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// kubeadm's procedure drains the node first; without a pod network nothing runs to drain, and
/// the cordon keeps kubeadm's health-check Job from waiting for a pod that cannot start.
fn cordon(s: &Scenario) {
    let (ok, text) = kubectl(s, &["cordon", NODE]);
    assert!(ok, "{text}");
}

/// A key written before the upgrade, read back after it.
fn write_marker(s: &Scenario) {
    let (ok, text) = kubectl(
        s,
        &[
            "create",
            "configmap",
            "kf-e2e-before",
            "-n",
            "default",
            "--from-literal=written=before-the-upgrade",
        ],
    );
    assert!(ok, "{text}");
}

fn assert_marker(s: &Scenario) {
    let (ok, text) = kubectl(
        s,
        &[
            "get",
            "configmap",
            "kf-e2e-before",
            "-n",
            "default",
            "-o",
            "jsonpath={.data.written}",
        ],
    );
    assert!(
        ok && text == "before-the-upgrade",
        "the key written before the upgrade is gone: {text}"
    );
}

/// The ClusterConfiguration stored in kubeadm-config.
fn stored_config(s: &Scenario) -> serde_yaml::Value {
    let cm = kubectl_json(
        &s.host,
        &["get", "configmap", "-n", "kube-system", "kubeadm-config"],
    );
    serde_yaml::from_str(cm["data"]["ClusterConfiguration"].as_str().unwrap()).unwrap()
}

/// What an operator does to move etcd: etcd.local.imageTag in kubeadm-config, through
/// `kubeconfig` (this node's admin.conf, or another node's).
pub(crate) fn ask_for_etcd_through(kubeconfig: &Path, tag: &str) {
    let kubectl = |args: &[&str]| {
        let mut c = Command::new(crate::common::kubectl());
        c.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(args);
        c
    };
    let get = [
        "get",
        "configmap",
        "-n",
        "kube-system",
        "kubeadm-config",
        "-o",
        "json",
    ];
    let mut cm: serde_json::Value =
        serde_json::from_str(&harness::run(&mut kubectl(&get))).unwrap();
    let mut cluster: serde_yaml::Value =
        serde_yaml::from_str(cm["data"]["ClusterConfiguration"].as_str().unwrap()).unwrap();
    cluster["etcd"]["local"]["imageTag"] = tag.into();
    cm["data"]["ClusterConfiguration"] = serde_yaml::to_string(&cluster).unwrap().into();
    let file = std::env::temp_dir().join("kubeforge-e2e-kubeadm-config.json");
    std::fs::write(&file, cm.to_string()).unwrap();
    harness::run(&mut kubectl(&["replace", "-f", file.to_str().unwrap()]));
}

fn admin_conf() -> PathBuf {
    PathBuf::from(format!("{KUBERNETES_DIR}/admin.conf"))
}

/// What an operator does to change every kubelet: edit kube-system/kubelet-config. The upgrade
/// must keep the edit and write it to this node's config.yaml, as kubeadm's kubelet-config phase does.
fn ask_for_max_pods(s: &Scenario, max_pods: i64) {
    let mut cm = kubectl_json(
        &s.host,
        &["get", "configmap", "-n", "kube-system", "kubelet-config"],
    );
    let mut kubelet: serde_yaml::Value =
        serde_yaml::from_str(cm["data"]["kubelet"].as_str().unwrap()).unwrap();
    kubelet["maxPods"] = max_pods.into();
    cm["data"]["kubelet"] = serde_yaml::to_string(&kubelet).unwrap().into();
    let file = s.host.log_dir.join("kubelet-config.json");
    std::fs::write(&file, cm.to_string()).unwrap();
    let (ok, text) = kubectl(s, &["replace", "-f", file.to_str().unwrap()]);
    assert!(ok, "{text}");
}

fn assert_max_pods(s: &Scenario, max_pods: i64) {
    let cm = kubectl_json(
        &s.host,
        &["get", "configmap", "-n", "kube-system", "kubelet-config"],
    );
    let stored: serde_yaml::Value =
        serde_yaml::from_str(cm["data"]["kubelet"].as_str().unwrap()).unwrap();
    assert_eq!(
        stored["maxPods"].as_i64(),
        Some(max_pods),
        "kubelet-config lost the edit"
    );
    let file = std::fs::read_to_string(Path::new(KUBELET_DIR).join("config.yaml")).unwrap();
    let on_node: serde_yaml::Value = serde_yaml::from_str(&file).unwrap();
    assert_eq!(
        on_node["maxPods"].as_i64(),
        Some(max_pods),
        "the node's config.yaml was not rewritten from kubelet-config:\n{file}"
    );
}

/// `imagePullPolicy: Never` and a patch release whose images this node lacks: refused in
/// preflight, naming the image, with nothing changed.
fn assert_missing_images_refused(s: &Scenario) {
    let config = s.host.log_dir.join("upgrade-never.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubeadm.k8s.io/v1beta4\nkind: UpgradeConfiguration\napply:\n  imagePullPolicy: Never\n",
    )
    .unwrap();
    let files = node_files();
    let refused = apply("v1.36.2", &["--config", config.to_str().unwrap()], &[]);
    assert!(
        !refused.success
            && refused.text().contains("kube-apiserver:v1.36.2")
            && refused.text().contains("imagePullPolicy is Never"),
        "{}",
        refused.text()
    );
    assert_eq!(node_files(), files, "the refused upgrade changed the node");
}

/// Each component's image tag on this node, from its mirror pod.
fn running_versions() -> BTreeMap<String, String> {
    running_versions_on(NODE)
}

/// The image tag of each control-plane mirror pod on `node`: component → tag.
fn running_versions_on(node: &str) -> BTreeMap<String, String> {
    harness::control_plane_pods(&admin_conf(), node)
        .iter()
        .map(|p| {
            let image = p["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default();
            (
                p["metadata"]["labels"]["component"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                image.rsplit(':').next().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Waits until the four mirror pods run `versions` (component → tag) and are Ready.
fn assert_running(s: &Scenario, versions: &[(&str, &str)]) {
    assert_running_on(s, NODE, versions)
}

fn assert_running_on(s: &Scenario, node: &str, versions: &[(&str, &str)]) {
    let start = Instant::now();
    loop {
        let running = running_versions_on(node);
        let pods = pods_on(s, node);
        let ok = versions.iter().all(|(c, v)| {
            running.get(*c).map(String::as_str) == Some(*v)
                && pods.get(&format!("{c}-{node}")).is_some_and(|p| p.3)
        });
        if ok {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "{node} does not run {versions:?} Ready: {running:?} {pods:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The four components at the target.
fn at_target(t: &Target) -> [(&str, &str); 4] {
    [
        ("etcd", &t.etcd_tag),
        ("kube-apiserver", &t.version),
        ("kube-controller-manager", &t.version),
        ("kube-scheduler", &t.version),
    ]
}

fn coredns_image(s: &Scenario) -> String {
    let dns = kubectl_json(
        &s.host,
        &["get", "deployment", "-n", "kube-system", "coredns"],
    );
    dns["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_string()
}

fn apply(version: &str, extra: &[&str], env: &[(&str, &str)]) -> harness::Run {
    let mut args = vec!["upgrade", "apply", version, "--yes", IGNORE];
    args.extend_from_slice(extra);
    let run = kubeforge(&args, env);
    for (t, line) in &run.lines {
        println!("{t:7.2} {line}");
    }
    println!("{}", run.stderr);
    run
}

fn patches(s: &Scenario, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = s.host.log_dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, text) in files {
        std::fs::write(dir.join(file), text).unwrap();
    }
    dir
}

fn backups() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(format!("{KUBERNETES_DIR}/tmp"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with("kubeforge-backup-")
                })
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// Every component's step, from the output: `component → seconds to Ready`.
fn component_seconds(run: &harness::Run) -> String {
    run.lines
        .iter()
        .filter(|(_, l)| l.contains("upgraded successfully!"))
        .map(|(_, l)| {
            l.split("upgrade/staticpods] ")
                .nth(1)
                .unwrap_or(l)
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn upgrade_apply_moves_the_node_to_the_next_minor_and_a_rerun_changes_nothing() {
    if !asked_for() {
        return;
    }
    let t = target();
    let s = Scenario::start();
    assert_ok(&s, &init(&s, &[], &[]));
    assert_control_plane_ready(&s);
    write_marker(&s);
    let before_etcd = running_versions()["etcd"].clone();
    ask_for_etcd_through(&admin_conf(), &t.etcd_tag);
    ask_for_max_pods(&s, 123);
    cordon(&s);
    assert_missing_images_refused(&s);

    let plan = kubeforge(&["upgrade", "plan", IGNORE], &[]);
    println!("{}", plan.text());
    assert!(
        plan.success
            && plan
                .text()
                .contains(&format!("kubeforge upgrade apply {}", t.version)),
        "{}",
        plan.text()
    );
    let json = kubeforge(&["upgrade", "plan", IGNORE, "-o", "json"], &[]);
    let plan_json: serde_json::Value =
        serde_json::from_str(json.text().lines().next().unwrap_or("{}")).unwrap();
    let rows = plan_json["availableUpgrades"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["components"]
        .clone();
    assert!(
        rows.as_array().unwrap().iter().any(|r| r["name"] == "etcd"
            && r["currentVersion"] == before_etcd.as_str()
            && r["newVersion"] == t.etcd_tag.as_str()),
        "{rows}"
    );

    // Real kubeadm of the target plans against kubeforge's cluster.
    let kubeadm_plan = harness::measured(
        &t.kubeadm,
        &["upgrade", "plan", &t.version, IGNORE_KUBEADM],
        &[],
    );
    println!("{}", kubeadm_plan.text());
    assert!(
        kubeadm_plan.success
            && kubeadm_plan
                .text()
                .contains(&format!("kubeadm upgrade apply {}", t.version)),
        "kubeadm's plan:\n{}",
        kubeadm_plan.text()
    );

    let diff = kubeforge(&["upgrade", "diff", &t.version], &[]);
    assert!(
        diff.success
            && diff.text().contains(&format!(
                "+    image: {}/kube-apiserver:{}",
                s.host.image_repository, t.version
            )),
        "{}",
        diff.text()
    );

    let files = node_files();
    let dry = apply(&t.version, &["--dry-run"], &[]);
    assert!(
        dry.success
            && dry.text().contains("Would replace")
            && dry
                .text()
                .contains("Would change ConfigMap kube-system/kubeadm-config"),
        "{}",
        dry.text()
    );
    assert_eq!(node_files(), files, "the dry-run changed the node");

    let approver_conf = format!("{KUBERNETES_DIR}/kubeforge-approver.conf");
    let approver_serial = super::certs::kubeconfig_serial(&s, &approver_conf);
    let sampler = Sampler::start(&s);
    let run = apply(&t.version, &[], &[]);
    let ((ready_gap, ready_total), (read_gap, read_total)) = sampler.finish();
    assert!(
        run.success,
        "the upgrade failed:\n{}\n{}",
        run.text(),
        s.kubelet_log_tail()
    );
    let after_apply = Instant::now();
    assert_running(&s, &at_target(&t));
    let ready_after = after_apply.elapsed().as_secs_f64();
    assert_marker(&s);
    assert_max_pods(&s, 123);
    assert_eq!(
        stored_config(&s)["kubernetesVersion"].as_str(),
        Some(t.version.as_str())
    );
    assert_approver_at(&s, &t.version);
    // Renewed with the control plane's certificates, as kubeadm renews its kubeconfigs.
    assert_ne!(
        super::certs::kubeconfig_serial(&s, &approver_conf),
        approver_serial
    );
    let proxy = kubectl_json(
        &s.host,
        &["get", "daemonset", "-n", "kube-system", "kube-proxy"],
    );
    assert!(proxy["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .ends_with(&format!(":{}", t.version)));
    let dns_image = coredns_image(&s);
    assert!(
        !dns_image.ends_with(":v1.13.1"),
        "CoreDNS was not upgraded: {dns_image}"
    );
    let backup = backups().pop().expect("a backup directory");
    for file in [
        "etcd-snapshot.db",
        "etcd-snapshot.json",
        "etc/kubernetes/manifests/kube-apiserver.yaml",
    ] {
        assert!(
            backup.join(file).exists(),
            "{} has no {file}",
            backup.display()
        );
    }
    // A finished upgrade run again: not a byte, not a container.
    let files = node_files();
    let pods = mirror_pods(&s);
    let config_rv = kubectl_json(
        &s.host,
        &["get", "configmap", "-n", "kube-system", "kubeadm-config"],
    )["metadata"]["resourceVersion"]
        .clone();
    let again = apply(&t.version, &[], &[]);
    assert!(again.success, "{}", again.text());
    assert_eq!(node_files(), files, "the re-run changed files");
    // The control plane's containers (kube-proxy's pod may still be rolling from the upgrade).
    let ids = |p: &BTreeMap<String, (String, String, i64, bool)>| {
        p.iter()
            .filter(|(name, _)| {
                COMPONENTS
                    .iter()
                    .chain(&["kubeforge-approver"])
                    .any(|c| name.starts_with(c))
            })
            .map(|(_, v)| v.1.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&mirror_pods(&s)),
        ids(&pods),
        "the re-run restarted a pod"
    );
    assert_eq!(
        kubectl_json(
            &s.host,
            &["get", "configmap", "-n", "kube-system", "kubeadm-config"]
        )["metadata"]["resourceVersion"],
        config_rv
    );
    // One phase on its own, as an operator re-runs a step: the addons are already at the target.
    let addons = kubeforge(
        &[
            "upgrade", "apply", "phase", "addon", &t.version, "--yes", IGNORE,
        ],
        &[],
    );
    assert!(addons.success, "{}", addons.text());
    assert_eq!(node_files(), files, "the addon phase changed files");
    assert_eq!(backups().len(), backups().len().min(3));
    println!(
        "FIGURES: kubeforge upgrade apply {} → {}: wall {:.1} s, peak RSS {} KiB; /readyz down {:.1} s (longest gap {:.1} s), reads down {:.1} s (longest {:.1} s); pods Ready {:.1} s after it returned; {}; a re-run {:.1} s",
        s.host.version, t.version, run.seconds, run.peak_rss_kib, ready_total, ready_gap, read_total, read_gap, ready_after, component_seconds(&run), again.seconds
    );
}

/// Profile hardened: the approver's manifest names `version`'s pause image (the one
/// `config images list` gives for it) and its pod runs it, Ready.
fn assert_approver_at(s: &Scenario, version: &str) {
    let images = harness::run(std::process::Command::new(harness::binary()).args([
        "config",
        "images",
        "list",
        "--kubernetes-version",
        version,
    ]));
    let pause = images
        .lines()
        .find(|l| l.contains("/pause:"))
        .expect("a pause image");
    let tag = &pause[pause.rfind(':').unwrap()..];
    let manifest = std::fs::read_to_string(format!(
        "{KUBERNETES_DIR}/manifests/kubeforge-approver.yaml"
    ))
    .unwrap();
    assert!(
        manifest.contains(&format!("/pause{tag}\n")),
        "the approver's manifest is not at {pause}:\n{manifest}"
    );
    // Its mirror pod follows within a minute (the upgrade nudges a stale one).
    let start = Instant::now();
    loop {
        let pod = harness::kube_system_pod(&s.host, &format!("kubeforge-approver-{NODE}"));
        let image = pod["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap_or_default();
        let ready = pod["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        if image.ends_with(&format!("/pause{tag}")) && ready {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{pod}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The same node, the same state, real kubeadm's `upgrade apply`: the figures to compare with.
#[test]
fn kubeadm_upgrades_a_cluster_kubeforge_built_for_the_figures() {
    if !asked_for() {
        return;
    }
    let t = target();
    let s = Scenario::start();
    assert_ok(&s, &init(&s, &[], &[]));
    assert_control_plane_ready(&s);
    write_marker(&s);
    ask_for_etcd_through(&admin_conf(), &t.etcd_tag);
    cordon(&s);
    let sampler = Sampler::start(&s);
    let run = harness::measured(
        &t.kubeadm,
        &[
            "upgrade",
            "apply",
            &t.version,
            "--yes",
            "--ignore-preflight-errors=ControlPlaneNodesReady,SystemVerification,ImagePull",
        ],
        &[],
    );
    let ((ready_gap, ready_total), (read_gap, read_total)) = sampler.finish();
    println!("{}", run.text());
    assert!(
        run.success,
        "kubeadm's upgrade of kubeforge's cluster failed:\n{}",
        run.text()
    );
    let after = Instant::now();
    assert_running(&s, &at_target(&t));
    assert_marker(&s);
    // kubeadm keeps its backups forever; kubeforge's reset removes only its own.
    for dir in std::fs::read_dir(format!("{KUBERNETES_DIR}/tmp"))
        .unwrap()
        .flatten()
    {
        if dir.file_name().to_string_lossy().starts_with("kubeadm-") {
            let _ = std::fs::remove_dir_all(dir.path());
        }
    }
    println!(
        "FIGURES: kubeadm upgrade apply {} → {}: wall {:.1} s, peak RSS {} KiB; /readyz down {:.1} s (longest gap {:.1} s), reads down {:.1} s (longest {:.1} s); pods Ready {:.1} s after it returned",
        s.host.version, t.version, run.seconds, run.peak_rss_kib, ready_total, ready_gap, read_total, read_gap, after.elapsed().as_secs_f64()
    );
}

#[test]
fn a_broken_scheduler_and_a_broken_etcd_are_rolled_back_to_a_healthy_node() {
    if !asked_for() {
        return;
    }
    let t = target();
    let s = Scenario::start();
    assert_ok(&s, &init(&s, &[], &[]));
    assert_control_plane_ready(&s);
    write_marker(&s);
    let old = running_versions();
    let old_versions: Vec<(&str, &str)> =
        COMPONENTS.iter().map(|c| (*c, old[*c].as_str())).collect();
    ask_for_etcd_through(&admin_conf(), &t.etcd_tag);
    let config_before = kubectl_json(
        &s.host,
        &["get", "configmap", "-n", "kube-system", "kubeadm-config"],
    )["data"]
        .clone();

    // The new scheduler is given a flag it does not know.
    let bad_flag = patches(&s, "bad-scheduler", &[("kube-scheduler+json.yaml", "- op: add\n  path: /spec/containers/0/command/-\n  value: --this-flag-does-not-exist=1\n")]);
    let run = apply(&t.version, &["--patches", bad_flag.to_str().unwrap()], &[]);
    assert!(
        !run.success,
        "a broken scheduler was reported as a success:\n{}",
        run.text()
    );
    let text = run.text();
    assert!(
        text.contains("kube-scheduler")
            && text.contains("unknown flag")
            && text.contains("rolled back"),
        "{text}"
    );
    let failed_at = run
        .at("[upgrade/rollback] kube-scheduler failed")
        .expect("the failure is named");
    let swapped_at = run
        .at("Moving new manifest to \"/etc/kubernetes/manifests/kube-scheduler.yaml\"")
        .unwrap();
    assert_running(&s, &old_versions);
    assert_marker(&s);
    assert_eq!(
        kubectl_json(
            &s.host,
            &["get", "configmap", "-n", "kube-system", "kubeadm-config"]
        )["data"],
        config_before,
        "kubeadm-config changed"
    );
    println!("FIGURES: broken kube-scheduler: named {:.1} s after its manifest was swapped; the node back at {} and healthy {:.1} s after that (the whole run {:.1} s)", failed_at - swapped_at, s.host.version, run.seconds - failed_at, run.seconds);

    // A new etcd that will not start: the old one comes back on its own data.
    let bad_etcd = patches(
        &s,
        "bad-etcd",
        &[(
            "etcd+json.yaml",
            "- op: add\n  path: /spec/containers/0/command/-\n  value: --no-such-etcd-flag=1\n",
        )],
    );
    let run = apply(&t.version, &["--patches", bad_etcd.to_str().unwrap()], &[]);
    assert!(
        !run.success && run.text().contains("etcd failed"),
        "{}",
        run.text()
    );
    assert_running(&s, &old_versions);
    assert_marker(&s);
    let etcd_back = run.seconds - run.at("[upgrade/rollback] etcd failed").unwrap();

    // A new etcd that wrecks the data it leaves: the old one cannot start on it, and gets the
    // snapshot taken before the upgrade.
    let wrecking = patches(&s, "wrecking-etcd", &[("etcd+json.yaml", "- op: replace\n  path: /spec/containers/0/command\n  value: [\"sh\", \"-c\", \"echo not-a-database > /var/lib/etcd/member/snap/db; exit 1\"]\n")]);
    let run = apply(&t.version, &["--patches", wrecking.to_str().unwrap()], &[]);
    assert!(!run.success, "{}", run.text());
    assert!(
        run.text()
            .contains("Restored etcd's data from the snapshot"),
        "{}",
        run.text()
    );
    assert_running(&s, &old_versions);
    assert_marker(&s);
    let restored = run.seconds - run.at("[upgrade/rollback] etcd failed").unwrap();
    println!("FIGURES: an etcd that would not start was rolled back in {etcd_back:.1} s; one that wrecked its data was restored from the snapshot and Ready in {restored:.1} s");
}

#[test]
fn an_upgrade_killed_between_components_is_completed_by_a_rerun() {
    if !asked_for() {
        return;
    }
    let t = target();
    let s = Scenario::start();
    assert_ok(&s, &init(&s, &[], &[]));
    assert_control_plane_ready(&s);
    let killed = apply(
        &t.version,
        &[],
        &[("KUBEFORGE_FAULT", "after-swap:kube-apiserver")],
    );
    assert!(
        !killed.success && killed.stderr.contains("KUBEFORGE_FAULT"),
        "{}",
        killed.text()
    );
    let again = apply(&t.version, &[], &[]);
    assert!(
        again.success,
        "the re-run did not complete the upgrade:\n{}",
        again.text()
    );
    assert_running(
        &s,
        &[
            ("kube-apiserver", &t.version),
            ("kube-controller-manager", &t.version),
            ("kube-scheduler", &t.version),
        ],
    );
    assert_eq!(
        stored_config(&s)["kubernetesVersion"].as_str(),
        Some(t.version.as_str())
    );
    println!("FIGURES: an upgrade killed after swapping kube-apiserver was completed by a re-run in {:.1} s", again.seconds);
}

/// kubeforge upgrades a cluster real kubeadm built: kubeadm's manifests, kubeadm-config and
/// kubelet-config, read as kubeadm reads them; then real kubeadm of the target plans against it.
#[test]
fn kubeforge_upgrades_a_cluster_kubeadm_built() {
    if !asked_for() {
        return;
    }
    let t = target();
    let s = Scenario::start();
    let init = harness::measured(
        &s.host.kubeadm,
        &[
            "init",
            "--config",
            s.host.config(&[]).to_str().unwrap(),
            "--ignore-preflight-errors=all",
        ],
        &[],
    );
    let upgraded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert!(init.success, "kubeadm init:\n{}", init.text());
        assert_control_plane_ready(&s);
        write_marker(&s);
        ask_for_etcd_through(&admin_conf(), &t.etcd_tag);
        cordon(&s);
        let sampler = Sampler::start(&s);
        let run = apply(&t.version, &[], &[]);
        let ((ready_gap, _), _) = sampler.finish();
        assert!(
            run.success,
            "kubeforge's upgrade of kubeadm's cluster failed:\n{}",
            run.text()
        );
        assert_running(&s, &at_target(&t));
        assert_marker(&s);
        assert_eq!(
            stored_config(&s)["kubernetesVersion"].as_str(),
            Some(t.version.as_str())
        );
        let plan = harness::measured(&t.kubeadm, &["upgrade", "plan", IGNORE_KUBEADM], &[]);
        assert!(
            plan.success,
            "kubeadm's plan after the upgrade:\n{}",
            plan.text()
        );
        (run.seconds, ready_gap)
    }));
    kubeadm_reset(&s);
    match upgraded {
        Ok((seconds, gap)) => println!(
            "FIGURES: kubeforge upgrade apply of kubeadm's {} cluster → {}: wall {seconds:.1} s (longest /readyz gap {gap:.1} s)",
            s.host.version, t.version
        ),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Two control-plane nodes and a worker: `apply` on node 1 moves its control plane and leaves the
/// addons (node 2's API server is still at the old version), `upgrade node` on node 2 moves its
/// control plane and then the addons, `upgrade node` on the worker its kubelet configuration.
#[test]
fn two_control_planes_and_a_worker_are_upgraded_node_by_node() {
    if !asked_for() {
        return;
    }
    let Some((s, node2, token, hash, key)) = init_for_joins_with(&upgrade_images()) else {
        return;
    };
    let t = target();
    let key = key.expect("init printed a certificate key");
    let (ok, text, _) = join_on(&node2, &control_plane_join_args(&s, &token, &hash, &key));
    assert!(ok, "node 2's control-plane join failed:\n{text}");
    assert_node2_is_a_control_plane(&s, &COMPONENTS);
    let worker = ExtraNode::start_as(&s.host, 3, &[]);
    let worker_args: Vec<String> = [
        &format!("{}:6443", s.host.advertise_address),
        "--token",
        &token,
        "--discovery-token-ca-cert-hash",
        &hash,
        "--node-name",
        &node_name(3),
    ]
    .map(str::to_string)
    .to_vec();
    let (ok, text, _) = join_on(&worker, &worker_args);
    assert!(ok, "the worker's join failed:\n{text}");
    write_marker(&s);
    ask_for_etcd_through(&admin_conf(), &t.etcd_tag);
    let dns_before = coredns_image(&s);

    let first = apply(&t.version, &[], &[]);
    assert!(first.success, "apply on node 1:\n{}", first.text());
    assert!(
        first.text().contains("Skipping upgrade of addons"),
        "{}",
        first.text()
    );
    assert_running(&s, &at_target(&t));
    assert_eq!(
        coredns_image(&s),
        dns_before,
        "node 1's apply moved CoreDNS"
    );

    let upgrade_node = |node: &ExtraNode| {
        let start = Instant::now();
        let (ok, text) = finished(
            node.command(harness::binary())
                .args(["upgrade", "node", IGNORE])
                .output()
                .unwrap(),
        );
        println!("{text}");
        (ok, text, start.elapsed().as_secs_f64())
    };
    let (ok, text, second_seconds) = upgrade_node(&node2);
    assert!(ok, "upgrade node on node 2:\n{text}");
    assert_running_on(&s, NODE2, &at_target(&t));
    assert_ne!(coredns_image(&s), dns_before, "CoreDNS was not upgraded");
    assert_marker(&s);

    let (ok, text, worker_seconds) = upgrade_node(&worker);
    assert!(ok, "upgrade node on the worker:\n{text}");
    assert!(
        !worker
            .path(&format!("{KUBERNETES_DIR}/manifests/kube-apiserver.yaml"))
            .exists(),
        "the worker got a control plane"
    );
    println!(
        "FIGURES: 2 control planes + 1 worker → {}: apply on node 1 {:.1} s, upgrade node on node 2 {second_seconds:.1} s, on the worker {worker_seconds:.1} s",
        t.version, first.seconds
    );
}

/// The target's images, for node 2's containerd.
pub(crate) fn upgrade_images() -> Vec<String> {
    let t = target();
    let listed = harness::run(Command::new(harness::binary()).args([
        "config",
        "images",
        "list",
        "--kubernetes-version",
        &t.version,
    ]));
    let mut images: Vec<String> = listed.lines().map(str::to_string).collect();
    images.extend(
        listed
            .lines()
            .filter(|i| i.contains("/etcd:"))
            .map(|i| format!("{}:{}", i.rsplit_once(':').unwrap().0, t.etcd_tag)),
    );
    images
}

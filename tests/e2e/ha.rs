//! The highly available endpoint on real kubelets (docs/ha-endpoint.md): three control-plane
//! nodes and a worker built by kubeforge with a ControlPlaneEndpoint document, then the node
//! holding the virtual IP stopped hard.
//!
//! How "node 1 down" is made real. The suite's usual node 1 is this host itself, whose kubelet,
//! containerd and addresses the suite cannot take away without taking itself down, and whose
//! advertise address is not on the nodes' bridge (a VIP must live on one L2 segment). So this
//! scenario runs no control plane on the host: its "node 1" is `ExtraNode` 2 — a network namespace
//! on the bridge kfe2ebr, its own mount namespace, containerd and kubelet — and nodes 3 and 4 join
//! it as control planes, node 5 as a worker. The virtual IP 10.78.0.100 is on that bridge;
//! this host reaches it as any client on the segment would (the bridge address 10.78.0.254).
//! "Stopped hard" is `ExtraNode::stop_hard`: SIGKILL to every process in node 2's network
//! namespace (its kubelet, containerd, shims and every host-network container: API server,
//! etcd, haproxy, keepalived…), then its link down — no graceful shutdown, no VRRP priority-0
//! goodbye. `ExtraNode::restart` brings the link, containerd and the kubelet back.
//!
//! The document asks for `nodeLocal`: the worker (node 5) runs its own haproxy on
//! 127.0.0.1:8443 and its kubelet.conf points there, so it reaches the API servers directly,
//! not through the VIP.
//!
//! Checked: kubectl through the endpoint, sampled every 100 ms from before the stop, answers
//! again (longest gap reported as a figure, bounded only by a generous "keeps working" limit);
//! the worker's kubelet (through its node-local haproxy) keeps posting status (its Lease renews, its Ready condition never turns
//! Unknown; without a pod network the condition itself is False, as in the other scenarios); a
//! new host-network pod is scheduled onto the worker and runs; etcd keeps quorum (a write
//! through the endpoint, and a leader on the two remaining members); node 2 comes back, its
//! control plane Ready again, and the VIP holder's haproxy reports it UP (`/stats;csv`), while the
//! VIP stays where it is (`nopreempt`). Figures: the longest gap, the balancer's added latency on
//! a request (median of 50 `curl /readyz` through the VIP vs straight to an API server), and the
//! resident memory of haproxy + keepalived on one node.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{self, Host, KUBERNETES_DIR};
use crate::node2::{node_address, node_name, ExtraNode};

const VIP: &str = "10.78.0.100";
const ENDPOINT: &str = "10.78.0.100:8443";
const IMAGES: [&str; 2] = [
    "kubeforge.local/haproxy:2.6.12",
    "kubeforge.local/keepalived:2.2.7",
];

/// The suite's config for node `index` with the endpoint on: its address and name, the VIP as
/// controlPlaneEndpoint, and the ControlPlaneEndpoint document (interface found by kubeforge).
fn ha_config(host: &Host, index: u8) -> PathBuf {
    let text = std::fs::read_to_string(host.config(&[]))
        .unwrap()
        .replace(
            &format!("advertiseAddress: {}", host.advertise_address),
            &format!("advertiseAddress: {}", node_address(index)),
        )
        .replace(
            &format!("name: {}", harness::NODE),
            &format!("name: {}", node_name(index)),
        )
        .replace(
            &format!("controlPlaneEndpoint: {}:6443", host.advertise_address),
            &format!("controlPlaneEndpoint: {ENDPOINT}"),
        );
    let text = format!(
        "{text}---\napiVersion: kubeforge.io/v1alpha1\nkind: ControlPlaneEndpoint\nmode: vip\nvirtualIP: {VIP}\nnodeLocal: true\nimages:\n  haproxy: {}\n  keepalived: {}\n",
        IMAGES[0], IMAGES[1]
    );
    let path = host.log_dir.join(format!("kubeadm-ha-node{index}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// `kubeforge <args>` on `node`, its output printed; fails the test when it fails.
fn kubeforge_on(node: &ExtraNode, args: &[String]) -> String {
    let (ok, text) = crate::finished(node.command(harness::binary()).args(args).output().unwrap());
    println!("{text}");
    assert!(ok, "kubeforge {args:?} failed:\n{text}");
    text
}

/// kubectl through the endpoint with node 2's admin.conf (its server is the VIP).
fn kubectl(admin: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(crate::common::kubectl());
    c.arg(format!("--kubeconfig={}", admin.display()))
        .arg("--request-timeout=2s")
        .args(args);
    c
}

fn kubectl_json(admin: &Path, args: &[&str]) -> serde_json::Value {
    let out = harness::run(kubectl(admin, args).args(["-o", "json"]));
    serde_json::from_str(&out).expect("kubectl prints JSON")
}

/// Polls `f` every 500 ms until it holds, failing after `limit`.
fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
    start.elapsed()
}

/// kubectl through the endpoint every 100 ms on a thread: the end time of every success.
struct Sampler {
    stop: Arc<AtomicBool>,
    successes: Arc<Mutex<Vec<Instant>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(admin: &Path) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let successes: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let (stop2, successes2, admin) = (stop.clone(), successes.clone(), admin.to_path_buf());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let started = Instant::now();
                let ok = kubectl(&admin, &["get", "--raw", "/readyz"])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if ok {
                    successes2.lock().unwrap().push(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(100).saturating_sub(started.elapsed()));
            }
        });
        Sampler {
            stop,
            successes,
            thread: Some(thread),
        }
    }

    /// The longest time without a successful sample after `from`.
    fn longest_gap_after(&self, from: Instant) -> Duration {
        let times = self.successes.lock().unwrap().clone();
        let mut last = times
            .iter()
            .rev()
            .find(|t| **t <= from)
            .copied()
            .unwrap_or(from);
        let mut longest = Duration::ZERO;
        for t in times.into_iter().filter(|t| *t > from) {
            longest = longest.max(t - last);
            last = t;
        }
        longest
    }

    /// Stops sampling: the longest gap after `from`, which must be short enough for clients to
    /// ride out (under 30 s; the figure is reported, not asserted).
    fn finish(self, from: Instant) -> Duration {
        let gap = self.longest_gap_after(from);
        drop(self);
        assert!(
            gap < Duration::from_secs(30),
            "kubectl went unanswered for {gap:?}"
        );
        gap
    }

    fn succeeded_since(&self, from: Instant) -> bool {
        self.successes.lock().unwrap().iter().any(|t| *t > from)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a node needs to join the cluster: the printed token, CA hash and certificate key.
struct JoinKeys {
    token: String,
    hash: String,
    key: String,
}

impl JoinKeys {
    /// `join` through the endpoint as control-plane node `index`.
    fn control_plane(&self, index: u8) -> Vec<String> {
        let mut args = self.worker(index);
        args.extend(
            [
                "--control-plane",
                "--certificate-key",
                &self.key,
                "--apiserver-advertise-address",
                &node_address(index),
            ]
            .map(String::from),
        );
        args
    }

    /// `join` through the endpoint as worker `index`.
    fn worker(&self, index: u8) -> Vec<String> {
        [
            "join",
            ENDPOINT,
            "--token",
            &self.token,
            "--discovery-token-ca-cert-hash",
            &self.hash,
            "--node-name",
            &node_name(index),
        ]
        .map(String::from)
        .to_vec()
    }
}

/// The four nodes built: node 2 initialized, 3 and 4 joined as control planes through the
/// endpoint, 5 as a worker. Returns them in that order.
fn build_cluster(host: &Host, more_images: &[String]) -> (Vec<ExtraNode>, JoinKeys) {
    let nodes: Vec<ExtraNode> = (2..=5).map(|i| start_node(host, i, more_images)).collect();
    let config = ha_config(host, 2);
    let init = kubeforge_on(
        &nodes[0],
        &[
            "init",
            "--upload-certs",
            "--config",
            config.to_str().unwrap(),
        ]
        .map(String::from),
    );
    assert!(
        init.contains("[control-plane-endpoint] Writing the balancers"),
        "{init}"
    );
    let (token, hash, key) = crate::printed_join(&init);
    let keys = JoinKeys {
        token,
        hash,
        key: key.expect("init --upload-certs prints a certificate key"),
    };
    for index in [3u8, 4] {
        let text = kubeforge_on(&nodes[index as usize - 2], &keys.control_plane(index));
        assert!(text.contains("control-plane-endpoint"), "{text}");
    }
    let worker = kubeforge_on(&nodes[3], &keys.worker(5));
    assert!(worker.contains("node-local balancer"), "{worker}");
    // kubeforge restarts a systemd kubelet itself; the suite's kubelets have a supervisor.
    nodes[3].restart_kubelet();
    let kubelet_conf =
        std::fs::read_to_string(nodes[3].path(&format!("{KUBERNETES_DIR}/kubelet.conf"))).unwrap();
    assert!(
        kubelet_conf.contains("server: https://127.0.0.1:8443")
            && kubelet_conf.contains("tls-server-name: kubernetes"),
        "the worker's kubelet.conf:\n{kubelet_conf}"
    );
    (nodes, keys)
}

/// Node `index` with the balancers' images and `more`.
fn start_node(host: &Host, index: u8, more: &[String]) -> ExtraNode {
    let mut images: Vec<String> = IMAGES.iter().map(|i| i.to_string()).collect();
    images.extend_from_slice(more);
    ExtraNode::start_as(host, index, &images)
}

/// Which of `nodes` holds the VIP on its eth0.
fn vip_holder(nodes: &[ExtraNode]) -> Option<usize> {
    nodes.iter().position(|n| vip_on(n).is_some())
}

/// The VIP as `address/prefix` on `node`'s eth0 while its link is up.
fn vip_on(node: &ExtraNode) -> Option<String> {
    let out = node
        .command("ip")
        .args(["-o", "addr", "show", "up", "dev", "eth0"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|w| w.starts_with(&format!("{VIP}/")))
        .map(str::to_string)
}

/// What a machine stopped hard loses with its memory: the addresses keepalived had added (a
/// killed keepalived leaves them on the namespace's interface).
fn forget_vip(node: &ExtraNode, vip: &str) {
    let _ = node
        .command("ip")
        .args(["addr", "del", vip, "dev", "eth0"])
        .output();
}

/// haproxy's state of each API server on `node`: (server, status) from `/stats;csv`.
fn backend_states(node: &ExtraNode) -> Vec<(String, String)> {
    let out = node
        .command("curl")
        .args(["-s", "--max-time", "2", "http://127.0.0.1:8404/stats;csv"])
        .output()
        .unwrap();
    crate::common::haproxy_backend_states(&String::from_utf8_lossy(&out.stdout))
}

/// The worker's Ready condition status and its Lease's renew time.
fn worker_heartbeat(admin: &Path) -> (String, String) {
    let node = kubectl_json(admin, &["get", "node", &node_name(5)]);
    let ready = node["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .map(|c| c["status"].as_str().unwrap_or("").to_string())
        .unwrap_or_default();
    let lease = kubectl_json(
        admin,
        &["-n", "kube-node-lease", "get", "lease", &node_name(5)],
    );
    (
        ready,
        lease["spec"]["renewTime"]
            .as_str()
            .unwrap_or("")
            .to_string(),
    )
}

/// A host-network pod (no pod network needed) for the worker, tolerating its not-ready taint:
/// the scheduler (its leader elected again after the stop) must place it.
fn schedule_a_pod(admin: &Path, pause: &str) {
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "after-failover", "namespace": "default"},
        "spec": {
            "hostNetwork": true,
            "nodeSelector": {"kubernetes.io/hostname": node_name(5)},
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "pause", "image": pause}],
        },
    });
    let file = std::env::temp_dir().join("kubeforge-e2e-after-failover.json");
    std::fs::write(&file, pod.to_string()).unwrap();
    harness::run(&mut kubectl(
        admin,
        &["apply", "-f", file.to_str().unwrap()],
    ));
    until(
        "the new pod runs on the worker",
        Duration::from_secs(120),
        || {
            let pod = kubectl_json(admin, &["get", "pod", "after-failover"]);
            pod["status"]["phase"] == "Running" && pod["spec"]["nodeName"] == node_name(5).as_str()
        },
    );
}

/// etcd's remaining members answer and agree on a leader.
fn assert_quorum(nodes: &[ExtraNode]) {
    let pki = nodes[1].path(&format!("{KUBERNETES_DIR}/pki/etcd"));
    let endpoints = format!(
        "https://{}:2379,https://{}:2379",
        node_address(3),
        node_address(4)
    );
    let out = harness::run(
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &endpoints])
            .arg(format!("--cacert={}", pki.join("ca.crt").display()))
            .arg(format!(
                "--cert={}",
                pki.join("healthcheck-client.crt").display()
            ))
            .arg(format!(
                "--key={}",
                pki.join("healthcheck-client.key").display()
            ))
            .args(["endpoint", "status", "-w", "json"]),
    );
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let leaders: Vec<&serde_json::Value> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["Status"]["leader"])
        .collect();
    assert!(
        leaders.len() == 2
            && leaders
                .iter()
                .all(|l| l.as_u64().unwrap_or(0) != 0 && *l == leaders[0]),
        "no common etcd leader among the remaining members: {out}"
    );
}

/// Median `curl /readyz` time to `url` from this host, 50 requests.
fn median_request(url: &str) -> Duration {
    let mut times: Vec<f64> = (0..50)
        .filter_map(|_| {
            let out = Command::new("curl")
                .args(["-sk", "-o", "/dev/null", "-w", "%{time_total}", url])
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout).parse().ok()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    Duration::from_secs_f64(times[times.len() / 2])
}

/// Resident memory of haproxy and keepalived in `node`'s network namespace, in MiB (every node
/// runs them: the processes are told apart by their namespace).
fn balancer_rss_mib(node: &ExtraNode) -> f64 {
    let net = node.net_namespace();
    let mut kib = 0.0;
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
        if !["haproxy", "keepalived"].contains(&comm.trim())
            || std::fs::read_link(p.path().join("ns/net")).ok() != net
        {
            continue;
        }
        let status = std::fs::read_to_string(p.path().join("status")).unwrap_or_default();
        kib += status
            .lines()
            .find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .split_whitespace()
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0);
    }
    kib / 1024.0
}

#[test]
fn ha_endpoint_survives_losing_node_one() {
    if !crate::asked_for() {
        return;
    }
    crate::common::require_tool("etcdctl");
    crate::common::require_tool("curl");
    let host = Host::discover();
    // Every node's kubelet starts from the packages' units, as in the other scenarios.
    let _units = harness::KubeletUnits::install(&host.kubelet);
    let (mut nodes, _) = build_cluster(&host, &[]);
    let admin = nodes[0].path(&format!("{KUBERNETES_DIR}/admin.conf"));
    until("the endpoint answers", Duration::from_secs(60), || {
        kubectl(&admin, &["get", "--raw", "/readyz"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    assert_eq!(
        vip_holder(&nodes),
        Some(0),
        "node 2 (init, first ready) holds the VIP"
    );
    // The worker's own balancer: first in front of the VIP, then (its sync) every API server.
    until_servers(
        &nodes[3],
        "the worker's node-local haproxy has the three API servers",
        &[2, 3, 4],
    );
    until(
        "the worker's kubelet talks to the API through 127.0.0.1:8443",
        Duration::from_secs(60),
        || {
            let out = nodes[3]
                .command("ss")
                .args(["-Htnp", "state", "established", "dst", "127.0.0.1:8443"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains("\"kubelet\"")
        },
    );
    let through_vip = median_request(&format!("https://{ENDPOINT}/readyz"));
    let direct = median_request(&format!("https://{}:6443/readyz", node_address(3)));
    let rss = balancer_rss_mib(&nodes[1]);

    let sampler = Sampler::start(&admin);
    std::thread::sleep(Duration::from_secs(5));
    let (_, lease_before) = worker_heartbeat(&admin);
    let stopped = Instant::now();
    let vip = vip_on(&nodes[0]).expect("node 2 holds the VIP");
    nodes[0].stop_hard();
    forget_vip(&nodes[0], &vip);
    until(
        "kubectl through the endpoint answers again",
        Duration::from_secs(30),
        || sampler.succeeded_since(stopped + Duration::from_millis(200)),
    );
    let holder = vip_holder(&nodes).expect("a node took the VIP");
    assert_ne!(holder, 0);
    harness::run(&mut kubectl(
        &admin,
        &["create", "configmap", "written-after-failover"],
    ));
    assert_quorum(&nodes);
    for _ in 0..40 {
        let (ready, _) = worker_heartbeat(&admin);
        assert_ne!(
            ready, "Unknown",
            "the worker's kubelet stopped reaching the API"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let (_, lease_after) = worker_heartbeat(&admin);
    let states = backend_states(&nodes[3]);
    assert!(
        !states.iter().any(|(s, st)| *s == server(2) && st == "UP"),
        "the worker's haproxy still sends to the stopped node 2: {states:?}"
    );
    assert!(
        lease_after > lease_before,
        "the worker's Lease was not renewed after the stop"
    );
    let pause = harness::run(Command::new(harness::binary()).args([
        "config",
        "images",
        "list",
        "--config",
        ha_config(&host, 2).to_str().unwrap(),
    ]))
    .lines()
    .find(|l| l.contains("/pause:"))
    .expect("a pause image")
    .to_string();
    schedule_a_pod(&admin, &pause);
    let gap = sampler.finish(stopped);

    nodes[0].restart(&host);
    let back = until(
        "node 2 is UP again behind the VIP holder's haproxy",
        Duration::from_secs(180),
        || {
            backend_states(&nodes[holder])
                .iter()
                .any(|(s, st)| *s == server(2) && st == "UP")
        },
    );
    assert_eq!(
        vip_holder(&nodes),
        Some(holder),
        "the VIP moved back (nopreempt)"
    );
    println!(
        "FIGURES: HA endpoint: longest kubectl gap after node 1 stopped hard {:.1} s (sampled every 100 ms); node 1 back in the balancer {:.0} s after its restart; /readyz median through the VIP {:.2} ms vs direct {:.2} ms; haproxy + keepalived RSS on one node {rss:.1} MiB",
        gap.as_secs_f64(),
        back.as_secs_f64(),
        through_vip.as_secs_f64() * 1000.0,
        direct.as_secs_f64() * 1000.0,
    );
}

/// Node `index`'s API server as haproxy names it.
/// A worker of this `nodeLocal` cluster whose containerd lacks the haproxy image: its join stops
/// at preflight naming the image, before writing anything.
fn assert_join_names_missing_haproxy(host: &Host, keys: &JoinKeys) {
    let bare = ExtraNode::start_as(host, 7, &[]);
    let (ok, text) = crate::finished(
        bare.command(harness::binary())
            .args(keys.worker(7))
            .output()
            .unwrap(),
    );
    println!("{text}");
    assert!(
        !ok && text.contains("ImagePull") && text.contains(IMAGES[0]),
        "a worker without {} was not stopped by preflight:\n{text}",
        IMAGES[0]
    );
    for file in [
        "kubelet.conf",
        "bootstrap-kubelet.conf",
        "manifests/kubeforge-haproxy.yaml",
    ] {
        let path = bare.path(&format!("{KUBERNETES_DIR}/{file}"));
        assert!(
            !path.exists(),
            "{} written by a join that failed preflight",
            path.display()
        );
    }
}

fn server(index: u8) -> String {
    format!("{}:6443", node_address(index))
}

/// Waits until `node`'s haproxy balances over exactly the API servers of `indexes`, every one
/// UP: the sync beside it followed the cluster without any re-run.
fn until_servers(node: &ExtraNode, what: &str, indexes: &[u8]) -> Duration {
    let mut want: Vec<String> = indexes.iter().map(|i| server(*i)).collect();
    want.sort();
    until(what, Duration::from_secs(90), || {
        let states = backend_states(node);
        let mut names: Vec<String> = states.iter().map(|(s, _)| s.clone()).collect();
        names.sort();
        names == want && states.iter().all(|(_, st)| st == "UP")
    })
}

/// A control-plane node reset and a new one joined while kubectl through the endpoint is
/// sampled every 100 ms; every other node's haproxy takes the joined ones in and drops the reset
/// one by itself (`kubeforge endpoint sync`), no phase re-run.
#[test]
fn ha_endpoint_serves_through_a_reset_and_a_join() {
    if !crate::asked_for() {
        return;
    }
    crate::common::require_tool("etcdctl");
    crate::common::require_tool("curl");
    let host = Host::discover();
    // Every node's kubelet starts from the packages' units, as in the other scenarios.
    let _units = harness::KubeletUnits::install(&host.kubelet);
    let (nodes, keys) = build_cluster(&host, &[]);
    let admin = nodes[0].path(&format!("{KUBERNETES_DIR}/admin.conf"));
    until("the endpoint answers", Duration::from_secs(60), || {
        kubectl(&admin, &["get", "--raw", "/readyz"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    // Node 2 (init) knew only itself when it wrote haproxy.cfg, node 3 only 2 and 3.
    let joined = until_servers(&nodes[0], "node 2's haproxy has nodes 3 and 4", &[2, 3, 4]);
    until_servers(&nodes[1], "node 3's haproxy has node 4", &[2, 3, 4]);
    let sampler = Sampler::start(&admin);
    std::thread::sleep(Duration::from_secs(3));
    let from = Instant::now();
    let reset = kubeforge_on(&nodes[2], &["reset", "--force"].map(String::from));
    assert!(reset.contains("Removed this node's etcd member"), "{reset}");
    let dropped = until_servers(
        &nodes[0],
        "node 2's haproxy drops the reset node 4",
        &[2, 3],
    );
    until_servers(
        &nodes[1],
        "node 3's haproxy drops the reset node 4",
        &[2, 3],
    );
    harness::run(&mut kubectl(&admin, &["delete", "node", &node_name(4)]));
    let node6 = start_node(&host, 6, &[]);
    kubeforge_on(&node6, &keys.control_plane(6));
    assert_join_names_missing_haproxy(&host, &keys);
    let added = until_servers(&nodes[0], "node 2's haproxy takes node 6 in", &[2, 3, 6]);
    until_servers(&nodes[1], "node 3's haproxy takes node 6 in", &[2, 3, 6]);
    until_servers(&node6, "node 6's haproxy", &[2, 3, 6]);
    let gap = sampler.finish(from);
    println!(
        "FIGURES: HA endpoint: longest kubectl gap through a control-plane reset and join {:.1} s; node 2's haproxy had the joined nodes {:.0} s after the cluster was built, dropped the reset one {:.0} s after the reset began, took node 6 in {:.0} s after its join returned (sync every 5 s)",
        gap.as_secs_f64(),
        joined.as_secs_f64(),
        dropped.as_secs_f64(),
        added.as_secs_f64()
    );
}

/// Every control-plane pod on `node` (a node name) Ready, the balancers among them, and its
/// components at `t`'s version and etcd tag.
fn node_runs(admin: &Path, node: &str, t: &crate::upgrade::Target) -> bool {
    let pods = harness::control_plane_pods(admin, node);
    let component = |p: &serde_json::Value| p["metadata"]["labels"]["component"].clone();
    let ready = |p: &serde_json::Value| {
        p["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
    };
    let at_version = |p: &serde_json::Value| {
        let tag = match component(p).as_str().unwrap_or_default() {
            "etcd" => &t.etcd_tag,
            "kube-apiserver" | "kube-controller-manager" | "kube-scheduler" => &t.version,
            _ => return true,
        };
        p["spec"]["containers"][0]["image"]
            .as_str()
            .is_some_and(|i| i.ends_with(&format!(":{tag}")))
    };
    let balancers = ["kubeforge-haproxy", "kubeforge-keepalived"]
        .iter()
        .all(|b| pods.iter().any(|p| component(p) == *b));
    pods.len() >= 6 && balancers && pods.iter().all(|p| ready(p) && at_version(p))
}

/// `upgrade apply` on node 2 (etcd moved too, as the operator asked), `upgrade node` on nodes 3
/// and 4 and the worker, then `certs renew all` on node 2, while kubectl through the endpoint is sampled every 100 ms: each control-plane
/// node comes back at the target with its balancer pods Ready, every haproxy lists the three
/// API servers UP after each step, and the VIP stays served.
#[test]
fn ha_endpoint_carries_an_upgrade_and_a_certificate_renewal() {
    if !crate::asked_for() {
        return;
    }
    crate::common::require_tool("curl");
    let host = Host::discover();
    // Every node's kubelet starts from the packages' units, as in the other scenarios.
    let _units = harness::KubeletUnits::install(&host.kubelet);
    let t = crate::upgrade::target();
    let version = t.version.clone();
    let (nodes, _) = build_cluster(&host, &crate::upgrade::upgrade_images());
    let admin = nodes[0].path(&format!("{KUBERNETES_DIR}/admin.conf"));
    until("the endpoint answers", Duration::from_secs(60), || {
        kubectl(&admin, &["get", "--raw", "/readyz"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    for node in &nodes[..3] {
        until_servers(node, "every haproxy has the three API servers", &[2, 3, 4]);
    }
    crate::upgrade::ask_for_etcd_through(&admin, &t.etcd_tag);
    let sampler = Sampler::start(&admin);
    std::thread::sleep(Duration::from_secs(3));
    let from = Instant::now();
    let ignore = crate::upgrade::IGNORE.to_string();
    let mut seconds = vec![];
    for (i, node) in nodes.iter().enumerate() {
        let args: Vec<String> = match i {
            0 => ["upgrade", "apply", &version, "--yes", &ignore]
                .map(String::from)
                .to_vec(),
            _ => ["upgrade", "node", &ignore].map(String::from).to_vec(),
        };
        let start = Instant::now();
        kubeforge_on(node, &args);
        seconds.push(start.elapsed().as_secs_f64());
        if i < 3 {
            let name = node_name(i as u8 + 2);
            until(
                &format!("{name} runs {version} with its balancers, all Ready"),
                Duration::from_secs(120),
                || node_runs(&admin, &name, &t),
            );
            for node in &nodes[..3] {
                until_servers(
                    node,
                    "every haproxy has the three API servers UP",
                    &[2, 3, 4],
                );
            }
        }
    }
    let start = Instant::now();
    let renew = kubeforge_on(&nodes[0], &["certs", "renew", "all"].map(String::from));
    let renew_seconds = start.elapsed().as_secs_f64();
    assert!(renew.contains("apiserver"), "{renew}");
    until(
        "node 2 Ready again after the renewal, with its balancers",
        Duration::from_secs(120),
        || node_runs(&admin, &node_name(2), &t),
    );
    for node in &nodes[..3] {
        until_servers(
            node,
            "every haproxy has the three API servers UP",
            &[2, 3, 4],
        );
    }
    assert!(vip_holder(&nodes[..3]).is_some(), "no node holds the VIP");
    let gap = sampler.finish(from);
    println!(
        "FIGURES: HA endpoint through an upgrade to {version} (etcd {}): apply on node 2 {:.1} s, upgrade node on nodes 3 and 4 {:.1} s and {:.1} s, on the worker {:.1} s, then certs renew all on node 2 {renew_seconds:.1} s; longest kubectl gap through the VIP {:.1} s (sampled every 100 ms)",
        t.etcd_tag,
        seconds[0],
        seconds[1],
        seconds[2],
        seconds[3],
        gap.as_secs_f64()
    );
}

//! wait-control-plane's client logic against stand-ins (tests/standin/apiserver.py): the watch,
//! the timeouts, TLS verification of the API server, the super-admin fallback and the early
//! diagnosis. Only the logic: the real kubelet and API server are the e2e suite's.

mod common;
use common::standin::{host_ip, StandIn};
use common::*;

use serde_json::{json, Value};
use std::time::{Duration, Instant};

const COMPONENTS: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

struct Ports {
    api: u16,
    kcm: u16,
    scheduler: u16,
    kubelet: u16,
}

/// A node whose manifests point every health URL at stand-in ports, with short timeouts.
fn node(timeouts: &str, pod_logs: &std::path::Path) -> (Node, Ports) {
    let ports = Ports {
        api: free_port(),
        kcm: free_port(),
        scheduler: free_port(),
        kubelet: free_port(),
    };
    let node = Node::new();
    let text = format!(
        "apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: {ip}
  bindPort: {api}
nodeRegistration:
  name: cp1
  criSocket: unix://{root}/no-runtime.sock
timeouts:
{timeouts}
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: v1.35.6
encryptionAlgorithm: ECDSA-P256
certificatesDir: {pki}
etcd:
  local:
    dataDir: {root}/var/lib/etcd
controllerManager:
  extraArgs:
  - name: secure-port
    value: \"{kcm}\"
scheduler:
  extraArgs:
  - name: secure-port
    value: \"{scheduler}\"
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
healthzPort: {kubelet}
podLogsDir: {logs}
",
        api = ports.api,
        kcm = ports.kcm,
        scheduler = ports.scheduler,
        kubelet = ports.kubelet,
        root = node.root().display(),
        ip = host_ip(),
        pki = node.pki().display(),
        logs = pod_logs.display(),
    );
    std::fs::write(node.config_path(), text).unwrap();
    let cfg = node.config_path();
    let cfg = cfg.to_str().unwrap();
    for phase in ["certs", "kubeconfig", "etcd", "control-plane"] {
        node.run_ok(&["init", "phase", phase, "--config", cfg]);
    }
    (node, ports)
}

fn pods(overrides: &[(&str, Value)]) -> Value {
    COMPONENTS
        .iter()
        .map(|c| {
            let mut pod = json!({ "name": format!("{c}-cp1"), "ready_after": 0 });
            for (name, extra) in overrides {
                if name == c {
                    pod.as_object_mut()
                        .unwrap()
                        .extend(extra.as_object().unwrap().clone());
                }
            }
            pod
        })
        .collect()
}

/// The stand-ins: the API server with `api_tls` (cert, key) and `api`'s behaviour, the
/// controller-manager's and scheduler's self-signed endpoints, the kubelet's plain /healthz.
fn stand_in(node: &Node, ports: &Ports, api: Value, kubelet: bool) -> StandIn {
    let pki = node.pki();
    let file = |n: &str| pki.join(n).display().to_string();
    let mut health = vec![
        json!({"port": ports.kcm, "cert": file("apiserver.crt"), "key": file("apiserver.key")}),
        json!({"port": ports.scheduler, "cert": file("apiserver.crt"), "key": file("apiserver.key")}),
    ];
    if kubelet {
        health.push(json!({ "port": ports.kubelet }));
    }
    let mut config = json!({
        "api": {"host": host_ip(), "port": ports.api, "cert": file("apiserver.crt"), "key": file("apiserver.key"), "ca": file("ca.crt")},
        "node": "cp1",
        "health": health,
    });
    config
        .as_object_mut()
        .unwrap()
        .extend(api.as_object().unwrap().clone());
    StandIn::start(node.root(), config)
}

fn wait(node: &Node, json_output: bool) -> (std::process::Output, Duration) {
    let cfg = node.config_path();
    let mut args = vec![
        "init",
        "phase",
        "wait-control-plane",
        "--config",
        cfg.to_str().unwrap(),
    ];
    if json_output {
        args.extend(["-o", "json"]);
    }
    let start = Instant::now();
    let out = node.run(&args);
    (out, start.elapsed())
}

const SHORT: &str = "  kubeletHealthCheck: 3s\n  controlPlaneComponentHealthCheck: 6s\n";

#[test]
fn mirror_pods_are_followed_through_a_watch_one_event_per_change() {
    let logs = tempfile::tempdir().unwrap();
    let (node, ports) = node(SHORT, logs.path());
    let late = json!({ "ready_after": 2.5 });
    let api = json!({ "pods": pods(&[("kube-scheduler", late)]) });
    let standin = stand_in(&node, &ports, api, true);
    let (out, took) = wait(&node, true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // From the watch event that made the last pod Ready to kubeforge having reported it and
    // exited (an upper bound of the reaction): a figure for docs/figures.md, not a timed assertion.
    let exited = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let sent = standin
        .requests()
        .iter()
        .filter(|r| r["method"] == "WATCH-EVENT" && r["path"] == "kube-scheduler-cp1")
        .filter_map(|r| r["at"].as_f64())
        .next_back()
        .expect("the stand-in sent the scheduler's Ready through the watch");
    println!(
        "FIGURES: last component Ready (watch event sent) -> reported and exited: {:.0} ms",
        (exited - sent) * 1000.0
    );
    let events: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let scheduler: Vec<&Value> = events
        .iter()
        .filter(|e| e["component"] == "kube-scheduler" && e["state"].is_string())
        .collect();
    // One event per state change, not one per tick.
    let states: Vec<&str> = scheduler
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    let mut deduped = states.clone();
    deduped.dedup();
    assert_eq!(states, deduped, "{states:?}");
    assert_eq!(states.last(), Some(&"Ready"));
    let ready_at = scheduler.last().unwrap()["seconds"].as_f64().unwrap();
    assert!((2.0..5.0).contains(&ready_at), "Ready after {ready_at}s");
    // The pods come from one watch (plus the list that starts it), not from polling.
    let lists = standin.count("GET", "/api/v1/namespaces/kube-system/pods");
    let watches = standin
        .requests()
        .iter()
        .filter(|r| {
            r["path"].as_str().unwrap().ends_with("/pods")
                && r["query"].as_str().unwrap().contains("watch=true")
        })
        .count();
    assert!(
        watches >= 1 && lists <= 3,
        "{lists} pod requests, {watches} watches"
    );
    // The API server was asked with admin.conf's identity over verified TLS.
    let livez = standin
        .requests()
        .into_iter()
        .find(|r| r["path"] == "/livez")
        .expect("a /livez request");
    assert_eq!(livez["groups"], json!(["kubeadm:cluster-admins"]));
    assert!(took < Duration::from_secs(8), "{took:?}");
}

#[test]
fn admin_conf_forbidden_falls_back_to_super_admin_conf() {
    let logs = tempfile::tempdir().unwrap();
    let (node, ports) = node(SHORT, logs.path());
    let api = json!({ "pods": pods(&[]), "forbid_admin": true });
    let standin = stand_in(&node, &ports, api, true);
    let (out, _) = wait(&node, false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let creators: Vec<Value> = standin
        .requests()
        .into_iter()
        .filter(|r| {
            r["method"] == "POST"
                && r["path"]
                    .as_str()
                    .unwrap()
                    .ends_with("/clusterrolebindings")
        })
        .map(|r| r["groups"].clone())
        .collect();
    assert_eq!(
        creators,
        vec![json!(["kubeadm:cluster-admins"]), json!(["system:masters"])]
    );
}

#[test]
fn the_system_priority_classes_are_created_before_the_api_server_is_live() {
    let logs = tempfile::tempdir().unwrap();
    let (node, ports) = node(SHORT, logs.path());
    let api = json!({ "pods": pods(&[]), "livez": "never" });
    let standin = stand_in(&node, &ports, api, true);
    let (out, _) = wait(&node, false);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let created: Vec<(Value, Value, Value)> = standin
        .requests()
        .into_iter()
        .filter(|r| r["method"] == "CREATED" && r["path"] == "priorityclasses")
        .map(|r| {
            let o = &r["object"];
            (
                o["metadata"]["name"].clone(),
                o["value"].clone(),
                r["groups"].clone(),
            )
        })
        .collect();
    assert_eq!(
        created,
        vec![
            (
                json!("system-node-critical"),
                json!(2000001000),
                json!(["system:masters"])
            ),
            (
                json!("system-cluster-critical"),
                json!(2000000000),
                json!(["system:masters"])
            ),
        ]
    );
}

#[test]
fn an_api_server_with_a_certificate_from_another_ca_is_never_trusted() {
    let logs = tempfile::tempdir().unwrap();
    let (node, ports) = node(SHORT, logs.path());
    let other = Node::new();
    other.generate("ECDSA-P256");
    let pki = other.pki();
    let api = json!({
        "pods": pods(&[]),
        "api": {
            "port": ports.api,
            "cert": pki.join("apiserver.crt"),
            "key": pki.join("apiserver.key"),
            "ca": pki.join("ca.crt"),
        },
    });
    let standin = stand_in(&node, &ports, api, true);
    let (out, took) = wait(&node, false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("kube-apiserver is not healthy after 6s"),
        "{stdout}"
    );
    assert!(took >= Duration::from_secs(6), "{took:?}");
    assert_eq!(
        standin.count("GET", "/livez"),
        0,
        "a request got through TLS"
    );
}

#[test]
fn a_kubelet_that_never_answers_times_out_naming_the_url() {
    let logs = tempfile::tempdir().unwrap();
    let (node, ports) = node(SHORT, logs.path());
    let _standin = stand_in(&node, &ports, json!({ "pods": pods(&[]) }), false);
    let (out, took) = wait(&node, false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains(&format!(
            "the kubelet did not answer http://127.0.0.1:{}/healthz within 3s",
            ports.kubelet
        )),
        "{stderr}"
    );
    assert!(
        (Duration::from_secs(3)..Duration::from_secs(9)).contains(&took),
        "{took:?}"
    );
}

#[test]
fn a_crash_loop_is_reported_at_once_with_exit_code_log_and_cause() {
    let logs = tempfile::tempdir().unwrap();
    let (node, ports) = node(
        "  kubeletHealthCheck: 3s\n  controlPlaneComponentHealthCheck: 2m\n",
        logs.path(),
    );
    let dir = logs
        .path()
        .join("kube-system_kube-scheduler-cp1_0123/kube-scheduler");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("2.log"),
        "2026-11-30T10:00:00.1Z stderr F I1130 starting\n2026-11-30T10:00:00.2Z stderr F Error: unknown flag: --no-such-flag\n",
    )
    .unwrap();
    let crash =
        json!({ "ready_after": null, "reason": "CrashLoopBackOff", "exit_code": 1, "restarts": 2 });
    let api = json!({ "pods": pods(&[("kube-scheduler", crash)]) });
    let _standin = stand_in(&node, &ports, api, true);
    let (out, took) = wait(&node, false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        took < Duration::from_secs(20),
        "{took:?}: not early (the timeout is 2 min)"
    );
    for expected in [
        "[wait-control-plane] kube-scheduler will not come up",
        "code 1",
        "Error: unknown flag: --no-such-flag",
        "probable cause:",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing:\n{stdout}");
    }
    // Only the broken component is reported.
    assert!(!stdout.contains("kube-apiserver will not"), "{stdout}");
}

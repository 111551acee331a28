//! The CIS Kubernetes Benchmark on the real node (issue 21, docs/security.md): kube-bench's own
//! CIS 1.12 checks — its `cfg/` from `KUBEFORGE_E2E_KUBE_BENCH_CFG`, never committed — evaluated
//! the way kube-bench does by tests/e2e/kube_bench.py, and the API server's audit log (written,
//! JSON events, rotated).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::harness::{self, kubeforge, Scenario};
use crate::node2::ExtraNode;

/// What a control-plane node is scored on, and a worker.
pub const CONTROL_PLANE: &str = "master,etcd,controlplane,node";
pub const WORKER: &str = "node";
/// Node 2 as a control plane beside node 1: without `etcd`, whose checks read the etcd process's
/// environment through `ps -C etcd`, which in this rig's shared process list names both nodes'
/// etcd (kube-bench's audit then fails on two PIDs). Node 2's etcd manifest comes from the same
/// template as node 1's, scored with `etcd` after init.
pub const SECOND_CONTROL_PLANE: &str = "master,controlplane,node";

const AUDIT_LOG_DIR: &str = "/var/log/kubernetes/audit";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/kube_bench.py")
}

/// kube-bench's checks of `targets` on this host (`node` None) or in node 2's namespaces: the
/// report (`results`, `totals`), or None with a note when no kube-bench cfg was given.
fn evaluate(node: Option<&ExtraNode>, targets: &str) -> Option<serde_json::Value> {
    let Ok(cfg) = std::env::var("KUBEFORGE_E2E_KUBE_BENCH_CFG") else {
        println!("KUBEFORGE_E2E_KUBE_BENCH_CFG is not set: kube-bench's CIS checks are skipped");
        return None;
    };
    // kube-bench's node checks need kube-proxy's process (4.3.1 runs `ps -fC kube-proxy`), which
    // the kube-proxy DaemonSet starts shortly after init or a join.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !running("kube-proxy") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
    }
    if !running("kube-proxy") {
        println!("no kube-proxy process after 60 s: kube-bench's node checks will say so");
    }
    let mut command = match node {
        Some(node) => node.command("python3"),
        None => Command::new("python3"),
    };
    command.arg(script()).args([
        "--cfg",
        &cfg,
        "--benchmark",
        "cis-1.12",
        "--targets",
        targets,
        "--json",
    ]);
    let out = harness::run(&mut command);
    Some(serde_json::from_str(&out).expect("kube_bench.py prints JSON"))
}

/// Whether a process of that name runs (node 2 shares this host's process list).
fn running(name: &str) -> bool {
    Command::new("ps")
        .args(["-C", name, "-o", "pid="])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn print_tally(label: &str, targets: &str, report: &serde_json::Value) {
    let t = &report["totals"];
    println!(
        "FIGURES: CIS 1.12 (kube-bench's checks: {targets}) on {label}: {} PASS, {} FAIL ({} scored), {} WARN, {} INFO",
        t["PASS"], t["FAIL"], t["scored_fail"], t["WARN"], t["INFO"]
    );
    for r in report["results"].as_array().unwrap() {
        if r["status"] != "PASS" {
            println!(
                "  {} {} {}{}",
                r["status"].as_str().unwrap_or_default(),
                r["test_number"].as_str().unwrap_or_default(),
                r["test_desc"].as_str().unwrap_or_default(),
                if r["scored"] == true {
                    ""
                } else {
                    " (unscored)"
                }
            );
        }
    }
}

/// No scored check of `targets` fails on this host (`node` None) or node 2. The kubelet's unit
/// files the harness installed as the packages do (tests/e2e/harness.rs) are there: 4.1.1 and
/// 4.1.2 stat the one that starts the kubelet.
pub fn assert_cis_benchmark_passes(label: &str, node: Option<&ExtraNode>, targets: &str) {
    assert!(
        Path::new(harness::KUBELET_UNIT).is_file(),
        "no {}: 4.1.1 would have no file to stat",
        harness::KUBELET_UNIT
    );
    let Some(report) = evaluate(node, targets) else {
        return;
    };
    print_tally(label, targets, &report);
    let failed: Vec<&str> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "FAIL" && r["scored"] == true)
        .map(|r| r["test_number"].as_str().unwrap())
        .collect();
    assert!(
        failed.is_empty(),
        "scored CIS 1.12 checks fail on {label}: {failed:?}"
    );
}

/// After a hardened init: the kubelet's unit files the harness installed at 0644 are root:root
/// 0600 (CIS 4.1.1, 4.1.2), each named in the run's output.
pub fn assert_kubelet_units_restricted(run: &harness::Run) {
    use std::os::unix::fs::MetadataExt;
    let text = run.text();
    for unit in [harness::KUBELET_UNIT, harness::KUBEADM_DROP_IN] {
        let meta = std::fs::metadata(unit).unwrap_or_else(|e| panic!("{unit}: {e}"));
        let state = (meta.mode() & 0o7777, meta.uid(), meta.gid());
        assert_eq!(state, (0o600, 0, 0), "{unit}: mode, owner, group");
        let named = format!("Restricted the kubelet unit file {unit:?}");
        assert!(text.contains(&named), "init did not say {named}:\n{text}");
    }
}

/// The tally only (kubeadm's own cluster, the figure beside kubeforge's).
pub fn print_cis_benchmark(label: &str, node: Option<&ExtraNode>, targets: &str) {
    if let Some(report) = evaluate(node, targets) {
        print_tally(label, targets, &report);
    }
}

/// `count` requests the API server refuses an anonymous caller, each an audit event (Metadata).
fn anonymous_requests(s: &Scenario, name: &str, count: u32) {
    crate::common::require_tool("curl");
    let base = format!(
        "https://{}:6443/api/v1/namespaces/default/pods/{name}",
        s.host.advertise_address
    );
    let url = match count {
        1 => base,
        n => format!("{base}-[1-{n}]"),
    };
    let status = Command::new("curl")
        .args(["-sk", &url])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "curl {url}: {status}");
}

/// Whether the API server's only process runs with `flag` and answers /readyz.
fn api_server_ready_with(s: &Scenario, flag: &str) -> bool {
    // ps fails while no API server runs (between the old one and the new).
    let ps = Command::new("ps")
        .args(["-C", "kube-apiserver", "-o", "args="])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let one = ps.lines().count() == 1 && ps.split_whitespace().any(|a| a == flag);
    let url = format!("https://{}:6443/readyz", s.host.advertise_address);
    one && Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", &url])
        .output()
        .is_ok_and(|o| o.stdout == b"200")
}

/// The API server's audit log after init: JSON audit events, among them the one for a request
/// this test just made, at level Metadata.
pub fn assert_audit_log_written(s: &Scenario) {
    let marker = format!(
        "kf-audit-{}",
        SystemTime::UNIX_EPOCH.elapsed().unwrap().as_nanos()
    );
    anonymous_requests(s, &marker, 1);
    let log = Path::new(AUDIT_LOG_DIR).join("audit.log");
    let text = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    // Events are whole lines; the API server may be writing the last one.
    let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    let events: Vec<serde_json::Value> = complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(events
        .iter()
        .all(|e| e["apiVersion"] == "audit.k8s.io/v1" && e["kind"] == "Event"));
    let ours = events
        .iter()
        .find(|e| {
            e["requestURI"]
                .as_str()
                .unwrap_or_default()
                .contains(&marker)
        })
        .unwrap_or_else(|| panic!("no audit event for {marker} in {}", log.display()));
    assert_eq!(ours["level"], "Metadata", "{ours}");
    assert!(ours["responseObject"].is_null() && ours["requestObject"].is_null());
    println!(
        "FIGURES: audit log {} holds {} events after init",
        log.display(),
        events.len()
    );
}

fn backups() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(AUDIT_LOG_DIR)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    found.retain(|p| p.file_name().is_some_and(|n| n != "audit.log"));
    found.sort();
    found
}

/// With `--audit-log-maxsize=1` (the operator's apiServer.extraArgs over kubeforge's 100), the API
/// server rotates its audit log after 1 MiB: the API server is rewritten with it, and anonymous
/// requests fill the log until a new backup appears.
pub fn assert_audit_log_rotates(s: &Scenario) {
    let config = std::fs::read_to_string(s.host.config(&[]))
        .unwrap()
        .replacen(
        "networking:\n",
        "apiServer:\n  extraArgs:\n  - name: audit-log-maxsize\n    value: \"1\"\nnetworking:\n",
        1,
    );
    let path = s.host.log_dir.join("kubeadm-audit-rotation.yaml");
    std::fs::write(&path, config).unwrap();
    let path = path.to_str().unwrap();
    let run = kubeforge(
        &[
            "init",
            "phase",
            "control-plane",
            "apiserver",
            "--config",
            path,
        ],
        &[],
    );
    assert!(run.success, "{}", run.text());
    let deadline = Instant::now() + Duration::from_secs(120);
    while !api_server_ready_with(s, "--audit-log-maxsize=1") {
        assert!(
            Instant::now() < deadline,
            "the API server never served with --audit-log-maxsize=1"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let before = backups();
    let start = Instant::now();
    for round in 0.. {
        anonymous_requests(s, &format!("kf-rotate-{round}"), 3000);
        // Earlier runs' backups stay (10 at most, the oldest going): a new name is what counts.
        if backups().iter().any(|b| !before.contains(b)) {
            break;
        }
        assert!(
            round < 10,
            "no rotated audit log after {} requests",
            3000 * (round + 1)
        );
    }
    println!(
        "FIGURES: the audit log rotated at --audit-log-maxsize=1 after {:.1} s of requests; backups now: {:?}",
        start.elapsed().as_secs_f64(),
        backups()
    );
}

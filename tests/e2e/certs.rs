//! The certificate lifecycle on the real control plane: `certs renew all` restarts each
//! component whose certificates changed, one at a time (every container replaced, none stopped
//! before the one before it was Ready again, the API server serving its new certificate);
//! `--no-restart` leaves the containers alone, as kubeadm does; and a node whose leaf
//! certificates have all expired comes back with one `certs renew all`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

/// The serial of the certificate the API server serves, read over TLS.
fn serving_serial(s: &Scenario) -> String {
    let script = format!(
        "openssl s_client -connect {}:6443 </dev/null 2>/dev/null | openssl x509 -noout -serial",
        s.host.advertise_address
    );
    harness::run(Command::new("sh").args(["-c", &script]))
        .trim()
        .to_string()
}

fn file_serial(path: &str) -> String {
    harness::run(Command::new("openssl").args(["x509", "-noout", "-serial", "-in", path]))
        .trim()
        .to_string()
}

/// The serial of the client certificate embedded in a kubeconfig.
pub fn kubeconfig_serial(s: &Scenario, kubeconfig: &str) -> String {
    let script = format!(
        "{} --kubeconfig={kubeconfig} config view --raw -o jsonpath='{{.users[0].user.client-certificate-data}}' | base64 -d | openssl x509 -noout -serial",
        s.host.kubectl
    );
    harness::run(Command::new("sh").args(["-c", &script]))
        .trim()
        .to_string()
}

/// A pod's (new container's start, old container's end, the time it last became Ready), as
/// the API server has them (RFC 3339, seconds).
fn restart_times(s: &Scenario, pod: &str) -> (String, String, String) {
    let p = kubectl_json(&s.host, &["get", "pod", "-n", "kube-system", pod]);
    let status = &p["status"]["containerStatuses"][0];
    let ready = p["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .map(|c| {
            c["lastTransitionTime"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_default();
    (
        status["state"]["running"]["startedAt"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        status["lastState"]["terminated"]["finishedAt"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        ready,
    )
}

/// Waits (up to `limit`) until kubectl with admin.conf answers and the four mirror pods are
/// Running and Ready.
fn wait_ready(s: &Scenario, limit: Duration) -> f64 {
    let start = Instant::now();
    loop {
        let ok = Command::new(&s.host.kubectl)
            .arg(format!("--kubeconfig={KUBERNETES_DIR}/admin.conf"))
            .args(["get", "pods", "-n", "kube-system"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            let pods = mirror_pods(s);
            if COMPONENTS
                .iter()
                .all(|c| pods.get(&format!("{c}-{NODE}")).is_some_and(|p| p.3))
            {
                return start.elapsed().as_secs_f64();
            }
        }
        assert!(
            start.elapsed() < limit,
            "the control plane is not Ready again after {limit:?}:\n{}",
            s.kubelet_log_tail()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn certs_renew_all_restarts_each_component_one_at_a_time() {
    if !asked_for() {
        return;
    }
    let s = Scenario::start();
    assert_ok(&s, &init(&s, &[], &[]));
    assert_control_plane_ready(&s);
    let before = mirror_pods(&s);
    let old_serial = serving_serial(&s);
    let approver_conf = format!("{KUBERNETES_DIR}/kubeforge-approver.conf");
    let old_approver_serial = kubeconfig_serial(&s, &approver_conf);
    let renew = kubeforge(&["certs", "renew", "all"], &[]);
    for (t, line) in &renew.lines {
        println!("{t:7.2} {line}");
    }
    println!("{}", renew.stderr);
    assert!(renew.success, "certs renew all failed:\n{}", renew.text());
    let settled = wait_ready(&s, Duration::from_secs(60));
    let after = mirror_pods(&s);
    for c in COMPONENTS {
        let pod = format!("{c}-{NODE}");
        assert_ne!(
            after[&pod].1, before[&pod].1,
            "{pod} runs the same container: not restarted"
        );
    }
    // One at a time: each component was stopped only after the one before it ran again. The
    // old container's end is in the mirror pod unless the kubelet no longer has it (a component
    // that had exited on its own — the controller-manager and the scheduler can, when the API
    // server they hold a lease on restarts — is restarted by removing its exited containers):
    // then its new container's start stands in.
    let times: Vec<_> = COMPONENTS
        .iter()
        .map(|c| restart_times(&s, &format!("{c}-{NODE}")))
        .collect();
    for (i, pair) in times.windows(2).enumerate() {
        let (a, b) = (&pair[0], &pair[1]);
        let stopped = if b.1.is_empty() { &b.0 } else { &b.1 };
        assert!(
            !stopped.is_empty() && *stopped >= a.0,
            "{} was stopped ({stopped}) before {} ran again ({})",
            COMPONENTS[i + 1],
            COMPONENTS[i],
            a.0
        );
    }
    let new_serial = serving_serial(&s);
    assert_ne!(
        new_serial, old_serial,
        "the API server still serves its old certificate"
    );
    assert_eq!(
        new_serial,
        file_serial(&format!("{KUBERNETES_DIR}/pki/apiserver.crt"))
    );
    // Profile hardened: the approver's kubeconfig renewed (0640 kept) and its pod, which holds
    // the old certificate in memory, restarted last and Ready again.
    assert_ne!(
        kubeconfig_serial(&s, &approver_conf),
        old_approver_serial,
        "kubeforge-approver.conf not renewed"
    );
    let mode = std::fs::metadata(&approver_conf)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o640);
    let approver = format!("kubeforge-approver-{NODE}");
    assert_ne!(
        after[&approver].1, before[&approver].1,
        "{approver} runs the same container: not restarted"
    );
    assert!(after[&approver].3, "{approver} is not Ready");
    let kubelet_dir_ok = Path::new(KUBELET_DIR).join("config.yaml").exists();
    assert!(kubelet_dir_ok);
    println!(
        "FIGURES: certs renew all with restarts: {:.1} s (every component Ready again after {:.1} s more)",
        renew.seconds, settled
    );
}

#[test]
fn certs_renew_no_restart_is_kubeadms_and_kubeadm_renews_the_same_files() {
    if !asked_for() {
        return;
    }
    let s = Scenario::start();
    assert_ok(&s, &init(&s, &[], &[]));
    assert_control_plane_ready(&s);
    let before = mirror_pods(&s);
    let old = file_serial(&format!("{KUBERNETES_DIR}/pki/apiserver.crt"));
    let renew = kubeforge(&["certs", "renew", "all", "--no-restart"], &[]);
    assert!(renew.success, "{}", renew.text());
    assert!(renew.text().contains("Done renewing certificates. You must restart the kube-apiserver, kube-controller-manager, kube-scheduler and etcd"), "{}", renew.text());
    assert_ne!(
        file_serial(&format!("{KUBERNETES_DIR}/pki/apiserver.crt")),
        old
    );
    std::thread::sleep(Duration::from_secs(3));
    let after = mirror_pods(&s);
    // Profile hardened: the approver's kubeconfig too, and it is named for a restart.
    assert!(
        renew.text().contains(
            "The kubeforge-approver static pod reads a renewed kubeconfig: restart it too."
        ),
        "{}",
        renew.text()
    );
    for c in COMPONENTS.iter().chain(&["kubeforge-approver"]) {
        let pod = format!("{c}-{NODE}");
        assert_eq!(
            after[&pod].1, before[&pod].1,
            "{pod} was restarted although --no-restart"
        );
    }
    // Real kubeadm renews kubeforge's PKI too: the same node, the same files, for the figure.
    let start = Instant::now();
    harness::run(Command::new(&s.host.kubeadm).args(["certs", "renew", "all"]));
    let kubeadm = start.elapsed().as_secs_f64();
    println!(
        "FIGURES: certs renew all --no-restart (RSA-2048): kubeforge {:.2} s, kubeadm {kubeadm:.2} s",
        renew.seconds
    );
}

/// Every control-plane container of this node stopped through the CRI; the kubelet starts them
/// again, with what is on disk.
fn stop_control_plane(s: &Scenario) {
    for c in COMPONENTS {
        let id = harness::run(Command::new(&s.host.crictl).args([
            &format!("--runtime-endpoint={}", s.host.cri_socket),
            "ps",
            "-q",
            "--name",
            c,
        ]));
        for id in id.lines() {
            harness::run(Command::new(&s.host.crictl).args([
                &format!("--runtime-endpoint={}", s.host.cri_socket),
                "stop",
                id,
            ]));
        }
    }
}

#[test]
fn a_node_whose_certificates_all_expired_comes_back_with_certs_renew_all() {
    if !asked_for() {
        return;
    }
    let s = Scenario::start();
    assert_ok(&s, &init(&s, &[], &[]));
    assert_control_plane_ready(&s);
    // Every leaf certificate and kubeconfig client certificate replaced by one that expired a
    // month ago: renewed by kubeforge under faketime, 400 days back (1-year validity), signed by
    // the cluster CA; then the components restarted onto them.
    let expired = harness::run(Command::new("faketime").args([
        "-f",
        "-400d",
        &harness::binary(),
        "certs",
        "renew",
        "all",
        "--no-restart",
    ]));
    println!("{expired}");
    stop_control_plane(&s);
    std::thread::sleep(Duration::from_secs(30));
    let report = kubeforge(&["certs", "check-expiration"], &[]);
    assert!(
        report.text().contains("WARNING: apiserver EXPIRED"),
        "{}",
        report.text()
    );
    let down = Command::new(&s.host.kubectl)
        .arg(format!("--kubeconfig={KUBERNETES_DIR}/admin.conf"))
        .args(["get", "nodes", "--request-timeout=5s"])
        .output()
        .unwrap();
    assert!(
        !down.status.success(),
        "the cluster still answers with expired certificates"
    );
    let renew = kubeforge(&["certs", "renew", "all"], &[]);
    println!("{}", renew.text());
    assert!(
        renew.success,
        "certs renew all on the expired node failed:\n{}\n{}",
        renew.text(),
        s.kubelet_log_tail()
    );
    let settled = wait_ready(&s, Duration::from_secs(180));
    assert_control_plane_ready(&s);
    assert_eq!(
        serving_serial(&s),
        file_serial(&format!("{KUBERNETES_DIR}/pki/apiserver.crt"))
    );
    println!(
        "FIGURES: an expired node back: certs renew all {:.1} s, the four mirror pods Ready {:.1} s after",
        renew.seconds, settled
    );
}

/// `certs renew all` (with its restarts) on the real node killed at random instants — a delay
/// within a typical run, or inside a random file write — each kill on what the last one left; no
/// file is ever half-written, and a plain run leaves every certificate with its own key and the
/// four components Ready. Seeded: `KUBEFORGE_KILL_SEED` replays, `KUBEFORGE_KILLS` (default 24).
#[test]
fn certs_renew_killed_at_random_instants_is_completed_by_a_rerun() {
    if !asked_for() {
        return;
    }
    let s = Scenario::start();
    assert_ok(&s, &init(&s, &[], &[]));
    assert_control_plane_ready(&s);
    let mut killer = common::kill::Killer::from_env();
    let dirs = [std::path::PathBuf::from(KUBERNETES_DIR)];
    // Renewing writes about 20 files; the restarts after them take most of the run's 30-60 s.
    let typical = Duration::from_secs(40);
    for n in 1..=common::kill::Killer::count(24) {
        let kill = killer.instant(typical, 20);
        let mut command = Command::new(harness::binary());
        command.args(["certs", "renew", "all"]);
        let killed = common::kill::run_killed(command, kill);
        println!("kill #{n}: {kill:?}, killed: {killed}");
        let problems = common::tree::problems(Path::new("/"), &dirs, None);
        assert!(
            problems.is_empty(),
            "seed {}, kill #{n} {kill:?}: {problems:#?}",
            killer.seed
        );
    }
    let renew = kubeforge(&["certs", "renew", "all"], &[]);
    assert!(renew.success, "seed {}: {}", killer.seed, renew.text());
    wait_ready(&s, Duration::from_secs(90));
    assert_control_plane_ready(&s);
    assert_eq!(
        common::tree::temp_files(&dirs),
        Vec::<std::path::PathBuf>::new()
    );
    let pki = Path::new(KUBERNETES_DIR).join("pki");
    assert_eq!(
        common::tree::mismatched_pairs(&pki),
        Vec::<std::path::PathBuf>::new(),
        "seed {}",
        killer.seed
    );
}

//! Kubelet serving certificates (profile hardened, docs/security.md), on the real node: the
//! kubelet's serving certificate verifies against the cluster CA (on disk and on port 10250),
//! `kubectl logs` and `kubectl exec` work through it (the API server runs with
//! `--kubelet-certificate-authority`), and CSRs that do not match a Node stay unapproved.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{self, kubectl_json, Scenario, KUBELET_DIR, KUBERNETES_DIR};

const CA: &str = "/etc/kubernetes/pki/ca.crt";

fn kubectl(s: &Scenario) -> Command {
    let mut cmd = Command::new(&s.host.kubectl);
    cmd.arg(format!("--kubeconfig={KUBERNETES_DIR}/admin.conf"));
    cmd
}

/// The certificate block of the kubelet's `kubelet-server-current.pem` (under `kubelet_dir` as
/// the host sees it), waited for up to 90 s: a worker's CSR is approved by the approver pod.
fn serving_certificate(kubelet_dir: &Path) -> String {
    let path = kubelet_dir.join("pki/kubelet-server-current.pem");
    let start = Instant::now();
    loop {
        // The kubelet links it to an absolute path of its own mount namespace (node 2's
        // /var/lib/kubelet is a directory elsewhere on the host): follow the link by name.
        let target = std::fs::read_link(&path)
            .ok()
            .and_then(|t| t.file_name().map(|n| kubelet_dir.join("pki").join(n)))
            .unwrap_or_else(|| path.clone());
        if let Ok(text) = std::fs::read_to_string(&target) {
            let end = "-----END CERTIFICATE-----";
            if let (Some(a), Some(b)) = (text.find("-----BEGIN CERTIFICATE-----"), text.find(end)) {
                return text[a..b + end.len()].to_string() + "\n";
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "no serving certificate at {} after 90 s",
            path.display()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Node `node` (its kubelet dir as the host sees it): the serving certificate on disk and the
/// one port 10250 presents verify against the cluster CA for the Node's InternalIP, and
/// `kubectl logs`/`kubectl exec` reach a pod of the node.
pub fn assert_kubelet_serving(s: &Scenario, node: &str, kubelet_dir: &Path) {
    // The address the API server reaches the kubelet at (--kubelet-preferred-address-types).
    let status = kubectl_json(&s.host, &["get", "node", node]);
    let ip = status["status"]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .unwrap_or_else(|| panic!("Node {node} has no InternalIP: {status}"))
        .to_string();
    let ip = ip.as_str();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("serving.crt");
    std::fs::write(&cert, serving_certificate(kubelet_dir)).unwrap();
    let verify = harness::run(Command::new("openssl").args([
        "verify",
        "-CAfile",
        CA,
        "-verify_ip",
        ip,
        cert.to_str().unwrap(),
    ]));
    assert!(verify.contains(": OK"), "{verify}");
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("{ip}:10250"),
            "-CAfile",
            CA,
        ])
        .args(["-verify_ip", ip, "-verify_return_error"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Verify return code: 0 (ok)"),
        "port 10250 of {node}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (pod, program) = running_pod_on(s, node);
    harness::run(kubectl(s).args(["logs", "-n", "kube-system", &pod, "--tail=1"]));
    // A worker that rejoined may still be starting the DaemonSet pod's container the API lists
    // as Running ("container not found"): a minute for it.
    let start = Instant::now();
    let version = loop {
        let out = kubectl(s)
            .args([
                "exec",
                "-n",
                "kube-system",
                &pod,
                "--",
                &program,
                "--version",
            ])
            .output()
            .unwrap();
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).to_string();
        }
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "kubectl exec {pod} on {node}: {err}"
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    assert!(
        !version.trim().is_empty(),
        "kubectl exec {pod} printed nothing"
    );
}

/// A Running pod of `node` in kube-system and its first container's program.
fn running_pod_on(s: &Scenario, node: &str) -> (String, String) {
    let selector = format!("--field-selector=spec.nodeName={node},status.phase=Running");
    let pods = kubectl_json(
        &s.host,
        &["get", "pods", "--namespace=kube-system", &selector],
    );
    pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|p| {
            let name = p["metadata"]["name"].as_str()?;
            let program = p["spec"]["containers"][0]["command"][0].as_str()?;
            Some((name.to_string(), program.to_string()))
        })
        .unwrap_or_else(|| panic!("no Running pod with a command on {node}: {pods}"))
}

/// A kubelet-serving CSR for `subject_node` with IP SAN `ip`, created with `credentials`
/// (kubectl flags).
fn create_csr(
    s: &Scenario,
    dir: &Path,
    name: &str,
    subject_node: &str,
    ip: &str,
    credentials: &[String],
) {
    let pem = crate::common::node_serving_request(dir, name, subject_node, ip);
    use base64::Engine;
    let manifest = dir.join(format!("{name}.json"));
    let object = serde_json::json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": { "name": name },
        "spec": {
            "signerName": "kubernetes.io/kubelet-serving",
            "usages": ["digital signature", "server auth"],
            "request": base64::engine::general_purpose::STANDARD.encode(pem),
        },
    });
    std::fs::write(&manifest, object.to_string()).unwrap();
    harness::run(
        kubectl(s)
            .args(credentials)
            .args(["create", "-f", manifest.to_str().unwrap()]),
    );
}

/// CSRs that do not match a Node stay unapproved after the approver's next passes: one made
/// with this node's own kubelet credentials for an IP the node does not have, one for a node
/// that does not exist (made with admin credentials: the requester is no node either).
pub fn assert_foreign_csrs_stay_pending(s: &Scenario, node: &str) {
    let dir = tempfile::tempdir().unwrap();
    let kubelet_cert: PathBuf = Path::new(KUBELET_DIR).join("pki/kubelet-client-current.pem");
    let as_node = [
        format!("--client-certificate={}", kubelet_cert.display()),
        format!("--client-key={}", kubelet_cert.display()),
    ];
    create_csr(
        s,
        dir.path(),
        "kf-e2e-foreign-ip",
        node,
        "203.0.113.99",
        &as_node,
    );
    create_csr(
        s,
        dir.path(),
        "kf-e2e-no-such-node",
        "kf-e2e-ghost",
        "203.0.113.98",
        &[],
    );
    // The approver passes every 10 s.
    std::thread::sleep(Duration::from_secs(25));
    for name in ["kf-e2e-foreign-ip", "kf-e2e-no-such-node"] {
        let csr = kubectl_json(&s.host, &["get", "csr", name]);
        let conditions = csr["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            conditions.iter().all(|c| c["type"] != "Approved"),
            "{name} was approved: {csr}"
        );
        assert_eq!(
            csr["spec"]["username"] == format!("system:node:{node}"),
            name == "kf-e2e-foreign-ip",
            "{csr}"
        );
        harness::run(kubectl(s).args(["delete", "csr", name]));
    }
    // The approver pod itself runs (it is what approves workers).
    let pod = harness::kube_system_pod(&s.host, &format!("kubeforge-approver-{node}"));
    assert_eq!(pod["status"]["phase"], "Running", "{pod}");
}

/// After init: this node's serving certificate, and foreign CSRs left pending.
pub fn check_after_init(s: &Scenario) {
    assert_kubelet_serving(s, harness::NODE, Path::new(KUBELET_DIR));
    assert_foreign_csrs_stay_pending(s, harness::NODE);
}

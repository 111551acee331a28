//! The phases after wait-control-plane and `kubeforge token` against the stand-in API server
//! (tests/standin/apiserver.py): a second run changes nothing, a re-run keeps its token, the
//! uploaded certificates open with the printed key elsewhere, and tokens stay out of logs. Client
//! logic only: the real API server, bootstrapsigner and kubelet are the e2e suite's.

mod common;
use common::standin::{host_ip, StandIn};
use common::*;

use serde_json::{json, Value};

const CLUSTER_PHASES: &str =
    "preflight,etcd,control-plane,kubelet-start,wait-control-plane,kubelet-finalize,kubelet-serving";

fn setup() -> (Node, StandIn, u16) {
    setup_with(json!([]), "10s")
}

/// The stand-in playing `faults` (see its docstring), and kubernetesAPICall `api_call`.
fn setup_with(faults: Value, api_call: &str) -> (Node, StandIn, u16) {
    let port = free_port();
    let node = Node::new();
    let text = format!(
        "apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: {ip}
  bindPort: {port}
nodeRegistration:
  name: cp1
timeouts:
  kubernetesAPICall: {api_call}
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: v1.35.6
encryptionAlgorithm: ECDSA-P256
certificatesDir: {pki}
etcd:
  local:
    dataDir: {root}/var/lib/etcd
",
        pki = node.pki().display(),
        root = node.root().display(),
        ip = host_ip(),
    );
    std::fs::write(node.config_path(), text).unwrap();
    let cfg = node.config_path();
    for phase in ["certs", "kubeconfig"] {
        node.run_ok(&["init", "phase", phase, "--config", cfg.to_str().unwrap()]);
    }
    let file = |n: &str| node.pki().join(n).display().to_string();
    let standin = StandIn::start(
        node.root(),
        json!({
            "api": {"host": host_ip(), "port": port, "cert": file("apiserver.crt"), "key": file("apiserver.key"), "ca": file("ca.crt")},
            "nodes": ["cp1"],
            // No bootstrapsigner: kubeforge signs cluster-info for its tokens itself.
            "sign": false,
            "faults": faults,
        }),
    );
    (node, standin, port)
}

fn init(node: &Node, extra: &[&str]) -> std::process::Output {
    let cfg = node.config_path();
    let mut args = vec![
        "init",
        "--config",
        cfg.to_str().unwrap(),
        "--skip-phases",
        CLUSTER_PHASES,
    ];
    args.extend(extra);
    node.run(&args)
}

/// The `[phase] N objects in X ms: a created, b changed, c unchanged` lines as (phase, a, b, c).
fn summaries(stdout: &str) -> Vec<(String, usize, usize, usize)> {
    stdout
        .lines()
        .filter(|l| l.contains(" objects in ") || l.contains(" object in "))
        .map(|l| {
            let phase = l[1..l.find(']').unwrap()].to_string();
            let counts = l.rsplit(": ").next().unwrap();
            let n: Vec<usize> = counts
                .split(", ")
                .map(|p| p.split(' ').next().unwrap().parse().unwrap())
                .collect();
            (phase, n[0], n[1], n[2])
        })
        .collect()
}

fn join_token(stdout: &str) -> String {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("kubeforge join"))
        .unwrap_or_else(|| panic!("no join command in:\n{stdout}"));
    line.split_whitespace()
        .skip_while(|w| *w != "--token")
        .nth(1)
        .unwrap()
        .to_string()
}

#[test]
fn every_cluster_phase_converges_on_a_second_run() {
    let (node, standin, _) = setup();
    let first = init(&node, &["-vv"]);
    let stdout = String::from_utf8_lossy(&first.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&first.stderr).into_owned();
    assert!(first.status.success(), "{stdout}\n{stderr}");
    let runs = summaries(&stdout);
    let phases: Vec<&str> = runs.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        phases,
        ["upload-config", "bootstrap-token", "addon"],
        "{stdout}"
    );
    assert!(runs.iter().all(|r| r.1 > 0 && r.2 == 0), "{runs:?}");
    assert_eq!(standin.count("PATCH", "/api/v1/nodes/cp1"), 1);
    let token = join_token(&stdout);
    let secret = token.split('.').nth(1).unwrap();
    // The token's secret half is in the join command and nowhere else, -vv logs included.
    assert_eq!(stdout.matches(secret).count(), 1, "{stdout}");
    assert!(!stderr.contains(secret), "{stderr}");

    let second = init(&node, &[]);
    let stdout = String::from_utf8_lossy(&second.stdout).into_owned();
    assert!(second.status.success(), "{stdout}");
    for (phase, created, changed, _) in summaries(&stdout) {
        assert_eq!(
            (created, changed),
            (0, 0),
            "{phase} changed on a re-run:\n{stdout}"
        );
    }
    assert_eq!(join_token(&stdout), token, "a re-run minted another token");
    assert_eq!(
        standin.count("PATCH", "/api/v1/nodes/cp1"),
        1,
        "a re-run patched the node"
    );
}

/// GET through curl with admin.conf's certificate: what the stand-in stores.
fn get(node: &Node, port: u16, path: &str) -> Value {
    let admin = node.kubernetes_dir().join("admin.conf");
    let cert = extract_client_cert(&admin);
    let key = admin.with_extension("client.key");
    let key_pem = b64decode(&kubectl_jsonpath(
        &admin,
        "{.users[0].user.client-key-data}",
    ));
    std::fs::write(&key, key_pem).unwrap();
    let url = format!("https://{}:{port}{path}", host_ip());
    let ca = node.pki().join("ca.crt");
    let out = tool_ok(
        "curl",
        &[
            "-sf",
            "--cacert",
            ca.to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            &url,
        ],
    );
    serde_json::from_str(&out).unwrap()
}

#[test]
fn token_commands_create_list_delete_and_upload_certs() {
    let (node, _standin, port) = setup();
    let first = init(&node, &[]);
    assert!(first.status.success());

    // create --print-join-command --upload-certs: one line, usable at once.
    let out = node.run_ok(&[
        "token",
        "create",
        "abcdef.0123456789abcdef",
        "--print-join-command",
        "--upload-certs",
        "--description",
        "for cp2",
    ]);
    let line = out.trim();
    let ip = host_ip();
    assert!(
        line.starts_with(&format!(
            "kubeforge join {ip}:{port} --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash sha256:"
        )) && line.contains(" --control-plane --certificate-key "),
        "{out}"
    );
    let key = line.rsplit(' ').next().unwrap();
    // The uploaded ca.key opens with the printed key in an independent AES-GCM.
    let certs = get(
        &node,
        port,
        "/api/v1/namespaces/kube-system/secrets/kubeadm-certs",
    );
    let sealed = certs["data"]["ca.key"].as_str().unwrap();
    let script = "import base64,sys\nfrom cryptography.hazmat.primitives.ciphers.aead import AESGCM\nd=base64.b64decode(sys.argv[2])\nsys.stdout.buffer.write(AESGCM(bytes.fromhex(sys.argv[1])).decrypt(d[:12],d[12:],None))";
    let plain = std::process::Command::new("python3")
        .args(["-c", script, key, sealed])
        .output()
        .unwrap();
    assert!(
        plain.status.success(),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    assert_eq!(
        plain.stdout,
        std::fs::read(node.pki().join("ca.key")).unwrap()
    );
    assert_eq!(
        certs["metadata"]["ownerReferences"][0]["kind"], "Secret",
        "kubeadm-certs must expire with its token"
    );

    // Creating the same token again is refused; list shows it; delete removes it.
    let again = node.run(&["token", "create", "abcdef.0123456789abcdef"]);
    assert_eq!(again.status.code(), Some(2));
    let listed: Value =
        serde_json::from_str(&node.run_ok(&["token", "list", "-o", "json"])).unwrap();
    let mine: Vec<&Value> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["token"] == "abcdef.0123456789abcdef")
        .collect();
    assert_eq!(mine.len(), 1, "{listed}");
    assert_eq!(mine[0]["description"], "for cp2");
    assert_eq!(mine[0]["usages"], json!(["authentication", "signing"]));
    let table = node.run_ok(&["token", "list"]);
    assert!(table.starts_with("TOKEN"), "{table}");
    assert!(table.contains("abcdef.0123456789abcdef   23h"), "{table}");
    let info = || {
        get(
            &node,
            port,
            "/api/v1/namespaces/kube-public/configmaps/cluster-info",
        )
    };
    let signature = info()["data"]["jws-kubeconfig-abcdef"].clone();
    assert!(
        signature
            .as_str()
            .is_some_and(|s| s.starts_with("eyJhbGciOiJIUzI1NiIsImtpZCI6ImFiY2RlZiJ9..")),
        "{signature}"
    );
    node.run_ok(&["token", "delete", "abcdef"]);
    assert!(
        info()["data"]["jws-kubeconfig-abcdef"].is_null(),
        "a deleted token's signature stays"
    );
    let gone = node.run(&["token", "delete", "abcdef"]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("not found"));

    // Bad input: exit 2, nothing created.
    for bad in [
        vec!["token", "create", "--groups", "admins"],
        vec!["token", "create", "--usages", "everything"],
        vec!["token", "create", "--ttl", "soon"],
        vec!["token", "create", "ABCDEF.0123456789abcdef"],
        vec!["token", "delete", "nope"],
    ] {
        let out = node.run(&bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
    let generated = node.run_ok(&["token", "generate"]);
    assert_eq!(generated.trim().len(), 23);
}

#[test]
fn upload_certs_run_alone_prints_a_fresh_key() {
    let (node, _standin, port) = setup();
    let key = upload_certs(&node);
    assert_eq!(key.len(), 64, "{key}");
    let certs = get(
        &node,
        port,
        "/api/v1/namespaces/kube-system/secrets/kubeadm-certs",
    );
    assert!(certs["data"]["sa.key"].is_string());
}

/// The `FAULT` entries of the stand-in's log: the faults it played.
fn faults_played(standin: &StandIn) -> usize {
    standin
        .requests()
        .iter()
        .filter(|r| r["method"] == "FAULT")
        .count()
}

/// The bootstrap-token Secrets the stand-in holds.
fn token_secrets(node: &Node, port: u16) -> Vec<String> {
    let secrets = get(node, port, "/api/v1/namespaces/kube-system/secrets");
    secrets["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["type"] == "bootstrap.kubernetes.io/token")
        .map(|s| s["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_cluster_phases_ride_out_dropped_connections_429_500_slowness_and_a_lost_answer() {
    let fault = |method: &str, path: &str, play: &str, times: i32| json!({"method": method, "path": path, "play": play, "times": times, "seconds": 4});
    let faults = json!([
        fault("GET", "/configmaps/kubeadm-config", "drop", 1),
        fault("PATCH", "/configmaps/kubeadm-config", "429", 2),
        fault("PATCH", "/secrets/bootstrap-token-", "lose", 1),
        fault("PATCH", "/nodes/cp1", "500", 2),
        fault("PATCH", "/deployments/coredns", "slow", 1),
        fault("GET", "/configmaps/cluster-info", "drop", 1),
        // `token create`: its create is done but the answer lost.
        fault("POST", "/secrets", "lose", 1),
    ]);
    let (node, standin, port) = setup_with(faults, "10s");
    let first = init(&node, &[]);
    let stdout = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(
        first.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(faults_played(&standin), 8, "{:#?}", standin.requests());
    let token = join_token(&stdout);
    let id = token.split('.').next().unwrap();
    assert_eq!(
        token_secrets(&node, port),
        [format!("bootstrap-token-{id}")],
        "one token, the one in the join command"
    );
    assert_eq!(
        standin.count("PATCH", "/api/v1/nodes/cp1"),
        1,
        "the node marked once"
    );
    let second = init(&node, &[]);
    assert_eq!(join_token(&String::from_utf8_lossy(&second.stdout)), token);

    // A create whose answer is lost is sent again, finds its own Secret and succeeds.
    node.run_ok(&["token", "create", "ghijkl.0123456789abcdef"]);
    assert_eq!(faults_played(&standin), 9);
    let mut tokens = token_secrets(&node, port);
    let mut expected = vec![
        format!("bootstrap-token-{id}"),
        "bootstrap-token-ghijkl".to_string(),
    ];
    tokens.sort();
    expected.sort();
    assert_eq!(tokens, expected, "each token created once");
    let again = node.run(&["token", "create", "ghijkl.0123456789abcdef"]);
    assert_eq!(again.status.code(), Some(2), "an existing token is refused");
}

#[test]
fn an_api_server_that_keeps_failing_or_is_too_slow_fails_the_call_by_name() {
    for (play, expected) in [
        ("500", "the API server answered 500"),
        ("429", "the API server answered 429"),
        ("drop", "gave up after"),
        ("slow", "no answer within"),
    ] {
        let faults = json!([{"method": "PATCH", "path": "/configmaps/kubeadm-config",
                             "play": play, "times": -1, "seconds": 30}]);
        let (node, standin, _) = setup_with(faults, "4s");
        let start = std::time::Instant::now();
        let out = init(&node, &[]);
        let took = start.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{play}: {stderr}");
        assert!(
            stderr.contains("upload-config")
                && stderr
                    .contains("PATCH /api/v1/namespaces/kube-system/configmaps/kubeadm-config")
                && stderr.contains(expected),
            "{play}: {stderr}"
        );
        assert!(faults_played(&standin) >= 2, "{play}: not retried");
        println!(
            "{play}: failed after {took:?}, {} attempts: {}",
            faults_played(&standin),
            stderr.lines().last().unwrap_or_default()
        );
    }
}

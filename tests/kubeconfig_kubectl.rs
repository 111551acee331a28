//! Every kubeconfig as real kubectl reads it: names, context, server, embedded CA, mode.

mod common;
use common::*;

#[test]
fn kubectl_reads_every_kubeconfig() {
    let node = Node::new();
    let cfg = node.write_config("ECDSA-P256", "controlPlaneEndpoint: cp.example.com\n");
    let cfg = cfg.to_str().unwrap();
    node.run_ok(&["init", "phase", "certs", "all", "--config", cfg]);
    node.run_ok(&["init", "phase", "kubeconfig", "all", "--config", cfg]);
    let ca = std::fs::read(node.pki().join("ca.crt")).unwrap();
    for (file, user, server) in [
        (
            "admin.conf",
            "kubernetes-admin",
            "https://cp.example.com:6443",
        ),
        (
            "super-admin.conf",
            "kubernetes-super-admin",
            "https://cp.example.com:6443",
        ),
        ("kubelet.conf", "system:node:cp1", "https://192.0.2.2:6443"),
        (
            "controller-manager.conf",
            "system:kube-controller-manager",
            "https://192.0.2.2:6443",
        ),
        (
            "scheduler.conf",
            "system:kube-scheduler",
            "https://192.0.2.2:6443",
        ),
    ] {
        let path = node.kubernetes_dir().join(file);
        let p = path.to_str().unwrap();
        assert_eq!(mode(&path), 0o600, "{file}");
        let context = tool_ok(
            &kubectl(),
            &["config", "current-context", "--kubeconfig", p],
        );
        assert_eq!(context.trim(), format!("{user}@kubernetes"), "{file}");
        assert_eq!(
            kubectl_jsonpath(&path, "{.clusters[0].name}"),
            "kubernetes",
            "{file}"
        );
        assert_eq!(kubectl_jsonpath(&path, "{.users[0].name}"), user, "{file}");
        assert_eq!(
            kubectl_jsonpath(&path, "{.contexts[0].context.user}"),
            user,
            "{file}"
        );
        assert_eq!(
            kubectl_jsonpath(&path, "{.contexts[0].context.cluster}"),
            "kubernetes",
            "{file}"
        );
        assert_eq!(
            kubectl_jsonpath(&path, "{.clusters[0].cluster.server}"),
            server,
            "{file}"
        );
        let embedded = b64decode(&kubectl_jsonpath(
            &path,
            "{.clusters[0].cluster.certificate-authority-data}",
        ));
        assert_eq!(embedded, ca, "{file}: embedded CA differs from ca.crt");
        // kubeadm's key order and nothing else at the top level.
        let text = std::fs::read_to_string(&path).unwrap();
        let top: Vec<_> = text
            .lines()
            .filter(|l| !l.starts_with([' ', '-']))
            .map(|l| l.split(':').next().unwrap())
            .collect();
        assert_eq!(
            top,
            [
                "apiVersion",
                "clusters",
                "contexts",
                "current-context",
                "kind",
                "users"
            ],
            "{file}"
        );
    }
}

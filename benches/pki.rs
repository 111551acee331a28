//! The whole PKI as an operator runs it: two `kubeforge` processes (`init phase certs all`, then
//! `init phase kubeconfig all`) into a fresh node directory, for RSA-2048 and ECDSA-P256.
//! Peak RSS is not measured here (a child's max RSS includes the bench process's pages until
//! exec); docs/figures.md's figure comes from GNU time around the same two commands.
//!
//! cargo bench --bench pki

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_kubeforge");

fn config(root: &Path, algorithm: &str) -> String {
    format!(
        "apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: 192.0.2.2
nodeRegistration:
  name: cp1
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: v1.35.6
encryptionAlgorithm: {algorithm}
certificatesDir: {root}/etc/kubernetes/pki
etcd:
  local:
    dataDir: {root}/var/lib/etcd
",
        root = root.display()
    )
}

fn run(root: &Path, phase: &str) {
    let status = Command::new(BIN)
        .args(["init", "phase", phase, "all", "--config"])
        .arg(root.join("kubeadm.yaml"))
        .arg("--kubernetes-dir")
        .arg(root.join("etc/kubernetes"))
        .arg("--kubelet-dir")
        .arg(root.join("var/lib/kubelet"))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run kubeforge");
    assert!(status.success(), "kubeforge init phase {phase} all failed");
}

fn pki(c: &mut Criterion) {
    let mut group = c.benchmark_group("certs+kubeconfig (two processes)");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    for algorithm in ["RSA-2048", "ECDSA-P256"] {
        group.bench_function(algorithm, |b| {
            b.iter_batched(
                || {
                    let dir = tempfile::tempdir().expect("tempdir");
                    std::fs::write(
                        dir.path().join("kubeadm.yaml"),
                        config(dir.path(), algorithm),
                    )
                    .expect("write config");
                    dir
                },
                |dir| {
                    run(dir.path(), "certs");
                    run(dir.path(), "kubeconfig");
                    dir
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, pki);
criterion_main!(benches);

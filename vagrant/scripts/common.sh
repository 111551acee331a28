#!/usr/bin/env bash
# Every node: the lab's names in /etc/hosts, the kernel settings a kubelet needs, containerd and
# the kubelet (and kubectl) from the official Kubernetes package repository, and kubeforge.
# Usage: common.sh NAME IP
set -euo pipefail
# shellcheck source-path=SCRIPTDIR/.. source=lab.env
source /vagrant/lab.env
name="$1"
ip="$2"

for entry in $LAB_NODES; do
    IFS=: read -r node address _ <<<"$entry"
    grep -q " $node\$" /etc/hosts || echo "$address $node" >>/etc/hosts
done
grep -q " $LAB_ENDPOINT_NAME\$" /etc/hosts || echo "$LAB_ENDPOINT_IP $LAB_ENDPOINT_NAME" >>/etc/hosts

swapoff -a
sed -i '/\sswap\s/d' /etc/fstab
printf 'overlay\nbr_netfilter\n' >/etc/modules-load.d/kubernetes.conf
modprobe overlay
modprobe br_netfilter
printf 'net.ipv4.ip_forward = 1\nnet.bridge.bridge-nf-call-iptables = 1\nnet.bridge.bridge-nf-call-ip6tables = 1\n' \
    >/etc/sysctl.d/kubernetes.conf
sysctl --quiet --system

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq containerd apt-transport-https ca-certificates curl gpg jq >/dev/null
mkdir -p /etc/containerd
containerd config default | sed 's/SystemdCgroup = false/SystemdCgroup = true/' >/etc/containerd/config.toml
systemctl restart containerd

keyring=/etc/apt/keyrings/kubernetes-apt-keyring.gpg
mkdir -p /etc/apt/keyrings
curl -fsSL "https://pkgs.k8s.io/core:/stable:/$LAB_KUBERNETES_MINOR/deb/Release.key" | gpg --dearmor --yes -o "$keyring"
echo "deb [signed-by=$keyring] https://pkgs.k8s.io/core:/stable:/$LAB_KUBERNETES_MINOR/deb/ /" \
    >/etc/apt/sources.list.d/kubernetes.list
apt-get update -qq
apt-get install -y -qq --allow-change-held-packages \
    "kubelet=$LAB_KUBERNETES_PACKAGE_VERSION" "kubectl=$LAB_KUBERNETES_PACKAGE_VERSION" >/dev/null
apt-mark hold kubelet kubectl >/dev/null
# Two interfaces (Vagrant's NAT first): the kubelet must use the lab network's address.
echo "KUBELET_EXTRA_ARGS=--node-ip=$ip" >/etc/default/kubelet

install -m 0755 /tmp/kubeforge /usr/local/bin/kubeforge
echo "$name: $(kubelet --version), $(kubeforge version)"

#!/usr/bin/env bash
# The first control-plane node: kubeforge init with the lab's stable endpoint and uploaded
# certificates, then the join facts and admin.conf left in the shared .lab/ for the other nodes.
# Usage: init.sh NAME IP
set -euo pipefail
# shellcheck source-path=SCRIPTDIR/.. source=lab.env
source /vagrant/lab.env
name="$1"
ip="$2"
shared=/vagrant/.lab
mkdir -p "$shared"
chmod 700 "$shared"

cat >/root/kubeforge.yaml <<CONFIG
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: $ip
nodeRegistration:
  name: $name
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: $LAB_KUBERNETES_VERSION
controlPlaneEndpoint: $LAB_ENDPOINT_NAME:6443
networking:
  podSubnet: $LAB_POD_SUBNET
CONFIG

start=$(date +%s.%N)
kubeforge init --config /root/kubeforge.yaml --upload-certs -o json >"$shared/init.json"
end=$(date +%s.%N)
echo "$name: kubeforge init took $(awk "BEGIN { print $end - $start }") s"

# The last event of show-join-command carries what a join needs.
jq -r -s 'map(select(.phase == "show-join-command" and .token != null)) | last |
    "JOIN_ENDPOINT=\(.endpoint)\nJOIN_TOKEN=\(.token)\nJOIN_CA_CERT_HASH=\(.caCertHash)\nJOIN_CERTIFICATE_KEY=\(.certificateKey)"' \
    "$shared/init.json" >"$shared/join.env"
install -m 0600 /etc/kubernetes/admin.conf "$shared/admin.conf"

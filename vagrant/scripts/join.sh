#!/usr/bin/env bash
# Every other node: kubeforge join with the facts the first node left in .lab/, as a control
# plane (with the uploaded certificates) or as a worker.
# Usage: join.sh NAME IP ROLE
set -euo pipefail
# shellcheck source-path=SCRIPTDIR/.. source=lab.env
source /vagrant/lab.env
name="$1"
ip="$2"
role="$3"
# shellcheck disable=SC1091 # written by init.sh on the first node
source /vagrant/.lab/join.env

args=(join "$JOIN_ENDPOINT" --token "$JOIN_TOKEN" --discovery-token-ca-cert-hash "$JOIN_CA_CERT_HASH"
    --node-name "$name")
if [ "$role" = control-plane ]; then
    args+=(--control-plane --certificate-key "$JOIN_CERTIFICATE_KEY" --apiserver-advertise-address "$ip")
fi
start=$(date +%s.%N)
kubeforge "${args[@]}"
end=$(date +%s.%N)
echo "$name: kubeforge join ($role) took $(awk "BEGIN { print $end - $start }") s"

#!/usr/bin/env bash
# After every node is up: the checks of the e2e suite, on the whole lab, with the first node's
# admin.conf. Exits non-zero on the first failed check.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR/.. source=lab.env
source /vagrant/lab.env
export KUBECONFIG=/vagrant/.lab/admin.conf
fail() {
    echo "check failed: $*" >&2
    exit 1
}

expected_nodes=0
control_planes=()
for entry in $LAB_NODES; do
    IFS=: read -r node _ role <<<"$entry"
    expected_nodes=$((expected_nodes + 1))
    if [ "$role" = control-plane ]; then control_planes+=("$node"); fi
done

for _ in $(seq 60); do
    registered=$(kubectl get nodes -o name | wc -l)
    [ "$registered" -eq "$expected_nodes" ] && break
    sleep 5
done
[ "$registered" -eq "$expected_nodes" ] || fail "$registered of $expected_nodes nodes registered"

for node in "${control_planes[@]}"; do
    kubectl get node "$node" -o jsonpath='{.metadata.labels}' | grep -q 'node-role.kubernetes.io/control-plane' ||
        fail "$node is not labelled control-plane"
    for component in etcd kube-apiserver kube-controller-manager kube-scheduler; do
        kubectl -n kube-system wait --for=condition=Ready "pod/$component-$node" --timeout=300s >/dev/null ||
            fail "$component-$node is not Ready"
    done
done

first="${control_planes[0]}"
members=$(kubectl -n kube-system exec "etcd-$first" -- etcdctl --endpoints=https://127.0.0.1:2379 \
    --cacert=/etc/kubernetes/pki/etcd/ca.crt --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt \
    --key=/etc/kubernetes/pki/etcd/healthcheck-client.key member list -w json)
voting=$(echo "$members" | jq '[.members[] | select(.isLearner != true)] | length')
[ "$voting" -eq "${#control_planes[@]}" ] || fail "$voting voting etcd members, ${#control_planes[@]} expected"

kubectl -n kube-system get configmap kubeadm-config kubelet-config >/dev/null || fail "uploaded config missing"
kubectl -n kube-public get configmap cluster-info -o json | jq -e '.data | keys | map(select(startswith("jws-kubeconfig-"))) | length > 0' >/dev/null ||
    fail "cluster-info is not signed"
kubectl get nodes -o wide
echo "lab checks passed: $expected_nodes nodes, ${#control_planes[@]} control planes, $voting etcd voters"

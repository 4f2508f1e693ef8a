#!/usr/bin/env bash
# Sets up everything on a fresh machine and runs the demo: a local control
# plane (etcd + kube-apiserver built from Go modules), the operator, and a lab
# VM (real Debian kernel under QEMU) whose network namespaces are the cluster's
# nodes running tunlb-agent. Applies examples/seed/ with kubectl and prints the
# curl answers and `kubectl get tvs`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-deps.sh
tests/controlplane/build.sh >/dev/null
tests/lab/kernel.sh >/dev/null
cargo build --release --quiet -p tunlb-agent -p tunlb-operator
cargo run --release --quiet -p tunlb-tests --bin cluster-lab -- demo-cluster

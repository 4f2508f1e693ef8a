#!/usr/bin/env bash
# Sets up everything on a fresh machine and runs the demo: a local control
# plane (etcd + kube-apiserver built from Go modules), the operator, and a lab
# VM (real Debian kernel under QEMU) whose network namespaces are the cluster's
# nodes running tunlb-agent from its image. Applies examples/seed/ with kubectl,
# prints the curl answers and `kubectl get tvs`, and exits non-zero when an
# answer is not the reference walkthrough's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cache="${TUNLB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tunlb}"
# shellcheck source=../tests/controlplane/versions.env
source tests/controlplane/versions.env
t0=$SECONDS
phase() { printf '\n==> [%3d s] %s\n' "$((SECONDS - t0))" "$*"; }
cached() { [ -e "$1" ] && echo "cached" || echo "$2"; }

phase "Debian packages (qemu, busybox, ipvsadm, nftables, buildah, ...): $(
	cached /usr/bin/qemu-system-x86_64 "about 1 min the first time")"
bash scripts/install-deps.sh
phase "etcd $ETCD_VERSION, kube-apiserver and kubectl $KUBE_VERSION, helm $HELM_VERSION from Go modules: $(
	cached "$cache/bin/kubernetes-$KUBE_VERSION/kube-apiserver" "about 8 min on 2 cores the first time, cached after")"
tests/controlplane/build.sh >/dev/null
phase "lab kernel $LAB_KERNEL_PACKAGE $LAB_KERNEL_VERSION: $(
	cached "$cache/kernel/${LAB_KERNEL_PACKAGE}_$LAB_KERNEL_VERSION/vmlinuz" "about 30 s to download the first time")"
tests/lab/kernel.sh >/dev/null
phase "tunlb-operator and tunlb-agent (cargo, profile ci): $(
	cached target/ci/tunlb-agent "about 6 min on 2 cores the first time")"
cargo build --profile ci --quiet -p tunlb-agent -p tunlb-operator
cargo build --profile ci --quiet -p tunlb-tests --bin cluster-lab
phase "images ghcr.io/tunlb/tunlb-{operator,agent} with buildah, unpacked as a container runtime would (about 10 s)"
scripts/build-images.sh --bin-dir target/ci --out target/images | tail -n 3
tests/images/unpack.sh target/images/tunlb-agent-*.oci.tar target/images/agent
tests/images/unpack.sh target/images/tunlb-operator-*.oci.tar target/images/operator
export TUNLB_AGENT_IMAGE="$PWD/target/images/agent"
export TUNLB_OPERATOR_IMAGE="$PWD/target/images/operator"
export TUNLB_OPERATOR_BIN="$PWD/tests/images/run-operator.sh"
phase "control plane, operator, and the lab VM with director, rs1, rs2 and client as nodes (about 1 min)"
target/ci/cluster-lab demo-cluster --no-lab-pool
phase "done"

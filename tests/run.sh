#!/usr/bin/env bash
# The test command: lint, unit tests, the images, API-server tests (a real etcd
# + kube-apiserver built from Go modules), then the real-kernel lab tests (QEMU)
# including the end-to-end runs through Kubernetes. The lab and API-server tests
# run the agent and the operator from their images' unpacked root filesystems.
# Needs the packages from scripts/install-deps.sh and Go (for the control plane).
# Prints the wall time of each phase.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

t0=$SECONDS
last=$SECONDS
phase() {
	if [ -n "${current:-}" ]; then
		printf '   (%s: %d s)\n' "$current" "$((SECONDS - last))"
	fi
	current="$1"
	last=$SECONDS
	[ "$1" = done ] || echo "== $1"
}

# The control plane (Go builds, niced) and the lab kernel download start now,
# in the background: on a new machine they take about 15 minutes, mostly on the
# cores cargo leaves idle while it compiles large crates one at a time.
mkdir -p target
prereq_log=target/run-prerequisites.log
(tests/controlplane/build.sh >/dev/null && tests/lab/kernel.sh >/dev/null) >"$prereq_log" 2>&1 &
prereq_pid=$!

phase "format and lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

# One profile (ci) for unit tests, binaries and test harnesses: the
# dependencies compile once.
phase "unit tests"
cargo test --profile ci --workspace --quiet

phase "ci-profile binaries; waiting for the control plane (etcd, kube-apiserver, kubectl, helm; cached) and the lab kernel (pinned)"
cargo build --profile ci --quiet -p tunlb-agent -p tunlb-operator
if ! wait "$prereq_pid"; then
	cat "$prereq_log" >&2
	echo "tests/run.sh: building the control plane or fetching the lab kernel failed" >&2
	exit 1
fi

phase "images (buildah), unpacked as a container runtime sees them"
scripts/build-images.sh --bin-dir target/ci --out target/images
tests/images/unpack.sh target/images/tunlb-agent-*.oci.tar target/images/agent
tests/images/unpack.sh target/images/tunlb-operator-*.oci.tar target/images/operator
export TUNLB_IMAGES_DIR="$PWD/target/images"
export TUNLB_AGENT_IMAGE="$PWD/target/images/agent"
export TUNLB_OPERATOR_IMAGE="$PWD/target/images/operator"
export TUNLB_OPERATOR_BIN="$PWD/tests/images/run-operator.sh"
export TUNLB_AGENT_BIN="$PWD/target/ci/tunlb-agent"

phase "API server tests: CRD admission, server-side apply, RBAC, Helm chart and images, operator"
cargo test --profile ci --quiet --no-fail-fast -p tunlb-tests --test crd --test chart --test operator -- --include-ignored --test-threads 1

phase "lab tests (QEMU, Debian kernel) and end to end, in one pool, longest first"
tests/vm-tests.sh

phase done
echo "tests/run.sh: all phases passed in $((SECONDS - t0)) s"

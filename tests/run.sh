#!/usr/bin/env bash
# The test command: lint, unit tests, API-server tests (a real etcd +
# kube-apiserver built from Go modules), then the real-kernel lab tests
# (QEMU) including the end-to-end runs through Kubernetes.
# Needs the packages from scripts/install-deps.sh and Go (for the control plane).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "== format and lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== unit tests"
cargo test --workspace --quiet

echo "== release binaries, test control plane (etcd, kube-apiserver, kubectl, helm; cached), lab kernel"
cargo build --release --quiet -p tunlb-agent -p tunlb-operator
tests/controlplane/build.sh >/dev/null
tests/lab/kernel.sh >/dev/null
export TUNLB_AGENT_BIN="$PWD/target/release/tunlb-agent"
export TUNLB_OPERATOR_BIN="$PWD/target/release/tunlb-operator"

echo "== API server tests: CRD admission, server-side apply, RBAC, Helm chart, operator"
cargo test --quiet --no-fail-fast -p tunlb-tests --test crd --test chart --test operator -- --include-ignored --test-threads 1

echo "== lab tests (QEMU, Debian kernel) and end to end"
cargo test --quiet --no-fail-fast -p tunlb-tests --test lab --test e2e -- --include-ignored --test-threads 2

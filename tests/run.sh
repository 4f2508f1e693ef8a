#!/usr/bin/env bash
# The test command: lint, unit tests, then the real-kernel lab tests.
# Needs the packages from scripts/install-deps.sh (qemu, busybox-static, ...).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "== format and lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== unit tests"
cargo test --workspace --quiet

echo "== lab tests (QEMU, Debian kernel)"
cargo build --release --quiet -p tunlb-agent
tests/lab/kernel.sh >/dev/null
TUNLB_AGENT_BIN="$PWD/target/release/tunlb-agent" \
	cargo test --quiet -p tunlb-tests --test lab -- --include-ignored --test-threads 2

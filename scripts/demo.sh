#!/usr/bin/env bash
# Sets up everything on a fresh machine and runs the demo in the lab VM.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-deps.sh
cargo build --release --quiet -p tunlb-agent
tests/lab/run.sh --timeout 300 --bin target/release/tunlb-agent \
	--dir examples:/examples --dir tests/lab/guest:/lab --dir tests/lab/scenarios:/scenarios \
	-- sh /scenarios/demo.sh

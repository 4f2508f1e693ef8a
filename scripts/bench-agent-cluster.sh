#!/usr/bin/env bash
# The node agent in Kubernetes mode at scale (see BENCHMARKS.md): the host's
# API server holds SERVICES VirtualServices (x REALS tunnel real servers, the
# table of scripts/bench.sh), the operator judges them, then the director's
# `tunlb-agent run` in the lab programs them; the standalone agent applies the
# same table in the same boot as the peer.
# usage: scripts/bench-agent-cluster.sh [--services N] [--reals N] [--profile release|ci] [--log FILE]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
services=10000 reals=10 profile=release log=""
while [ $# -gt 0 ]; do
	case "$1" in
	--services) services="$2"; shift 2 ;;
	--reals) reals="$2"; shift 2 ;;
	--profile) profile="$2"; shift 2 ;;
	--log) log="$2"; shift 2 ;;
	*) sed -n '2,7s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
	esac
done
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
[ -n "$log" ] || log="$work/bench-agent-cluster.log"

cd "$root"
echo "bench-agent-cluster: control plane binaries, lab kernel (cached after the first run)"
tests/controlplane/build.sh >/dev/null
tests/lab/kernel.sh >/dev/null
echo "bench-agent-cluster: building tunlb-agent, tunlb-operator, cluster-lab (profile $profile)"
cargo build --profile "$profile" --quiet -p tunlb-agent -p tunlb-operator -p tunlb-tests
tests/bench/gen.sh "$work/in" "$services" "$reals"
# the 10 VirtualServices of the small case (same names, VIP and ports as the first 10)
tests/bench/gen.sh "$work/small" 10 "$reals"
cp "$work/small/vs.yaml" "$work/in/vs10.yaml"
echo "bench-agent-cluster: $services x $reals; host load $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)"
set +e
target="${CARGO_TARGET_DIR:-$root/target}/$profile"
echo "bench-agent-cluster: agent sha256 $(sha256sum "$target/tunlb-agent" | cut -c1-12), tree $(git rev-parse --short=12 HEAD)$(git diff --quiet HEAD || echo ' (modified)')"
TUNLB_AGENT_IMAGE="" TUNLB_AGENT_BIN="$target/tunlb-agent" TUNLB_OPERATOR_BIN="$target/tunlb-operator" \
	"$target/cluster-lab" bench-agent-cluster --timeout 3600 \
	--populate "$work/in/vs.yaml" --vip-cidr 10.2.0.0/16 \
	--dir "$work/in:/bench" --bin /usr/bin/time 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
echo "bench-agent-cluster: results:"
grep '^BENCH' "$log" || true
exit "$rc"

#!/usr/bin/env bash
# Cost of the Kubernetes path (see tests/bench/cluster/RESULTS.md): in one lab
# boot, 20 runs each of kubectl apply -> first request through the VIP and
# kubectl patch (weight) -> kernel weight, against the standalone agent
# applying the same change from a file; prints p50/p90/min/max and k8s/file.
# usage: scripts/bench-cluster.sh [--log FILE]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log=""
while [ $# -gt 0 ]; do
	case "$1" in
	--log) log="$2"; shift 2 ;;
	*) sed -n '2,6s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
	esac
done
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
[ -n "$log" ] || log="$work/bench-cluster.log"

cd "$root"
echo "bench-cluster: control plane binaries, lab kernel (cached after the first run)"
tests/controlplane/build.sh >/dev/null
tests/lab/kernel.sh >/dev/null
echo "bench-cluster: building tunlb-agent, tunlb-operator, cluster-lab (release)"
cargo build --release --quiet -p tunlb-agent -p tunlb-operator -p tunlb-tests
echo "bench-cluster: running scenario bench-cluster (TCG guest, ~5 minutes)"
set +e
"$root/target/release/cluster-lab" bench-cluster 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e

awk '
/^BENCH metric=/ {
	delete f
	for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
	m[++n] = sprintf("%-26s %4d %8d %8d %8d %8d %8d", f["metric"], f["n"], f["p50"], f["p90"], f["min"], f["max"], f["mean"])
}
/^BENCH ratio=/ {
	split($2, a, "="); split($4, b, "="); split($5, c, "=")
	r[++nr] = sprintf("%-26s %8s %8s", a[2] " k8s/file", b[2], c[2])
}
END {
	if (!n) exit
	printf "\n%-26s %4s %8s %8s %8s %8s %8s   (ms)\n", "metric", "n", "p50", "p90", "min", "max", "mean"
	for (i = 1; i <= n; i++) print m[i]
	printf "\n%-26s %8s %8s\n", "ratio", "p50", "p90"
	for (i = 1; i <= nr; i++) print r[i]
}' "$log"
exit "$rc"

#!/usr/bin/env bash
# The node agent's cost of director elections at scale (see BENCHMARKS.md):
# VIPS VirtualServices, one VIP each (10.50.x.y, port 80, the static backend
# rs1), elected by the two lab directors at 100 ms adverts with director
# preferred, so that it holds every VIP; in the same cluster lab boot,
# keepalived carries as many VIPs in as many VRRP instances, and the same agent
# programs the same VirtualServices with a single director. Each gets a 60 s
# idle window after convergence: CPU-seconds (utime+stime) per second, memory,
# adverts per second.
# usage: scripts/bench-election.sh [--vips N] [--profile ci|release] [--log FILE]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
vips=1000 profile=ci log=""
while [ $# -gt 0 ]; do
	case "$1" in
	--vips) vips="$2"; shift 2 ;;
	--profile) profile="$2"; shift 2 ;;
	--log) log="$2"; shift 2 ;;
	*) sed -n '2,10s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
	esac
done
if [ "$vips" -lt 1 ] || [ "$vips" -gt 62500 ]; then
	echo "--vips: 1 to 62500 (10.50.0.0/16, 250 per /24)" >&2
	exit 2
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [ -z "$log" ]; then
	log="$root/tests/bench/election/runs/$(date -u +%Y-%m-%d-%H%M).txt"
	mkdir -p "$(dirname "$log")"
fi
keepalived=/usr/sbin/keepalived
[ -x "$keepalived" ] || { echo "keepalived missing: run scripts/install-deps.sh" >&2; exit 1; }

cd "$root"
echo "bench-election: control plane binaries, lab kernel (cached after the first run)"
tests/controlplane/build.sh >/dev/null
tests/lab/kernel.sh >/dev/null
echo "bench-election: building tunlb-agent, tunlb-operator, cluster-lab (profile $profile)"
cargo build --profile "$profile" --quiet -p tunlb-agent -p tunlb-operator -p tunlb-tests
target="${CARGO_TARGET_DIR:-$root/target}/$profile"

# One VirtualService per VIP, 250 VIPs per /24 (.1 to .250).
mkdir -p "$work/in"
awk -v n="$vips" 'BEGIN {
	for (i = 0; i < n; i++)
		printf "---\napiVersion: tunlb.io/v1alpha1\nkind: VirtualService\nmetadata: {name: e%05d}\nspec:\n" \
			"  vip: 10.50.%d.%d\n  ports: [{port: 80}]\n" \
			"  directors: {election: {advertIntervalMs: 100, preferredNode: director}}\n" \
			"  backends: {static: [{address: 192.168.56.183}]}\n", i, int(i / 250), i % 250 + 1
}' >"$work/in/vs.yaml"

load() { cut -d' ' -f1-3 /proc/loadavg; }
{
	echo "bench-election: $(date -u '+%Y-%m-%d %H:%M UTC'); $vips VIPs, adverts every 100 ms"
	echo "bench-election: $("$keepalived" --version 2>&1 | head -n1); agent sha256 $(sha256sum "$target/tunlb-agent" | cut -c1-12), tree $(git rev-parse --short=12 HEAD)$(git diff --quiet HEAD || echo ' (modified)')"
	echo "bench-election: host load average before: $(load) ($(nproc) CPUs)"
} | tee "$log"
set +e
TUNLB_AGENT_BIN="$target/tunlb-agent" TUNLB_OPERATOR_BIN="$target/tunlb-operator" \
	"$target/cluster-lab" bench-election --timeout 3000 \
	--populate "$work/in/vs.yaml" --vip-cidr 10.50.0.0/16 --second-director \
	--host-bin "$keepalived" --dir "$work/in:/bench" 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
set -e
echo "bench-election: host load average after: $(load)" | tee -a "$log"

# field LINE KEY: the value of KEY=... in a BENCH line.
{
	echo
	printf '%-10s %-7s %-9s %7s %9s %12s %8s %10s %9s %9s %10s\n' \
		what role node routers window_s cpu_s_per_s pct_core vrrp_thr_% rss_mib hwm_mib adverts/s
	grep '^BENCH path=' "$log" | awk '
	function f(k,   i) { for (i = 2; i <= NF; i++) if (index($i, k "=") == 1) return substr($i, length(k) + 2); return "" }
	{
		a = f("adverts_sent_per_s"); if (a == "") a = f("adverts_received_per_s"); if (a != "") a = a (f("adverts_sent_per_s") != "" ? " sent" : " recv"); else a = "-"
		t = f("vrrp_thread_pct_core"); if (t == "") t = "-"
		printf "%-10s %-7s %-9s %7s %9s %12s %8s %10s %9.1f %9.1f %10s\n", f("path"), f("role"), f("node"), f("routers"), f("window_s"), \
			f("cpu_per_s"), f("pct_core"), t, f("rss_kb") / 1024, f("hwm_kb") / 1024, a
	}'
} | tee -a "$log"
echo "bench-election: raw output in $log"
exit "$rc"

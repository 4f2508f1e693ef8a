#!/usr/bin/env bash
# Director failover benchmark in the lab VM (see BENCHMARKS.md): time from
# the master's link cut to the first answer a client gets from the backup,
# tunlb-agent vrrp against keepalived at 100 ms and 1 s adverts, all four
# pairs in one boot; then long-lived connections across failovers with IPVS
# connection sync.
# usage: scripts/bench-vrrp.sh [--failovers N] [--sync-failovers N] [--agent PATH]
#          [--tcp-hold PATH] [--profile ci|release] [--mem MB] [--log FILE]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
failovers=20 sync=5 agent="" hold="" profile=ci mem=2048 log=""
while [ $# -gt 0 ]; do
	case "$1" in
	--failovers) failovers="$2"; shift 2 ;;
	--sync-failovers) sync="$2"; shift 2 ;;
	--agent) agent="$2"; shift 2 ;;
	--tcp-hold) hold="$2"; shift 2 ;;
	--profile) profile="$2"; shift 2 ;;
	--mem) mem="$2"; shift 2 ;;
	--log) log="$2"; shift 2 ;;
	*) sed -n '2,8s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
	esac
done

cache="${TUNLB_CACHE:-$HOME/.cache/tunlb}/bench"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [ -z "$log" ]; then
	log="$root/tests/bench/vrrp/runs/$(date -u +%Y-%m-%d-%H%M).txt"
	mkdir -p "$(dirname "$log")"
fi

keepalived=/usr/sbin/keepalived
[ -x "$keepalived" ] || { echo "keepalived missing: run scripts/install-deps.sh" >&2; exit 1; }
command -v go >/dev/null || { echo "go is required (tests/bench/vrrp/probe)" >&2; exit 1; }

target="${CARGO_TARGET_DIR:-$root/target}/$profile"
bins=()
[ -n "$agent" ] || bins+=(-p tunlb-agent --bin tunlb-agent)
[ -n "$hold" ] || bins+=(-p tunlb-tests --bin tcp-hold)
if [ ${#bins[@]} -gt 0 ]; then
	echo "bench-vrrp: building ${bins[*]} (profile $profile)"
	(cd "$root" && cargo build --profile "$profile" --quiet "${bins[@]}")
fi
[ -n "$agent" ] || agent="$target/tunlb-agent"
[ -n "$hold" ] || hold="$target/tcp-hold"

# The client's probe: static, cached by source.
pdir="$root/tests/bench/vrrp/probe"
phash="$(cat "$pdir/go.mod" "$pdir/main.go" | sha256sum | cut -c1-12)"
probe="$cache/vrrp-probe-$phash/vrrp-probe"
if [ ! -x "$probe" ]; then
	echo "bench-vrrp: building the probe"
	mkdir -p "$(dirname "$probe")"
	(cd "$pdir" && CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go build -trimpath -ldflags='-s -w' -o "$probe.tmp" .)
	mv "$probe.tmp" "$probe"
fi

mkdir -p "$work/in"
cp "$root/tests/bench/vrrp-guest.sh" "$work/in/"
load() { cut -d' ' -f1-3 /proc/loadavg; }
{
	echo "bench-vrrp: $(date -u '+%Y-%m-%d %H:%M UTC'); $failovers failovers per configuration, $sync with connection sync (TCG guest: expect ~20 minutes)"
	echo "bench-vrrp: $("$keepalived" --version 2>&1 | head -n1); agent $agent, sha256 $(sha256sum "$agent" | cut -c1-12), tree $(git -C "$root" rev-parse --short=12 HEAD)$(git -C "$root" diff --quiet HEAD || echo ' (modified)')"
	echo "bench-vrrp: host load average before: $(load) ($(nproc) CPUs)"
} | tee "$log"
set +e
"$root/tests/lab/run.sh" --timeout 3600 --mem "$mem" \
	--host-bin "$keepalived" --bin "$agent" --bin "$probe" --bin "$hold" \
	--dir "$root/tests/lab/guest:/lab" --dir "$work/in:/bench" \
	-- sh /bench/vrrp-guest.sh "$failovers" "$sync" 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
set -e
echo "bench-vrrp: host load average after: $(load)" | tee -a "$log"

# Per configuration, nearest-rank percentiles (with 20 failovers, p99 is
# the slowest one), in milliseconds.
awk '
function pct(a, n, p,   r) { r = int(p / 100 * n + 0.999999); if (r < 1) r = 1; return a[r] }
function sorted(src, k, n, dst,   j, x, y, t) {
	for (j = 1; j <= n; j++) dst[j] = src[k, j]
	for (x = 2; x <= n; x++) for (y = x; y > 1 && dst[y-1] > dst[y]; y--) { t = dst[y]; dst[y] = dst[y-1]; dst[y-1] = t }
}
function fields(   i, kv) { delete f; for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] } }
/^RESULT failover / {
	fields(); c = f["config"]
	if (!(c in seen)) { seen[c] = 1; order[++nc] = c }
	if (f["first_ms"] == "") { missed[c]++; next }
	v[c, ++n[c]] = f["first_ms"]
	if (f["vip_ms"] != "" && f["vip_ms"] != "none") vip[c, ++nv[c]] = f["vip_ms"]
	if (f["arp_ms"] != "" && f["arp_ms"] != "none") arp[c, ++na[c]] = f["arp_ms"]
}
/^RESULT speaker / {
	fields(); c = f["config"]; node = f["node"]
	cpu[c] += f["cpu_s"]
	# a becomes master at the start and after each return, b after each cut.
	extra[c] += f["to_master"] - (node ~ /a$/ ? 1 + n[c] + missed[c] : n[c] + missed[c])
}
/^RESULT takeback / { fields(); if (f["first_ms"] != "") tb[f["config"], ++ntb[f["config"]]] = f["first_ms"] }
/^RESULT sync failover=/ { fields(); syncn++; resets += f["reset_now"]; if (f["max_gap_ms"] > gap) gap = f["max_gap_ms"] }
/^RESULT sync final / { fields(); final = sprintf("alive %s of %s, reset %s, timeout %s", f["alive"], f["open"], f["reset"], f["timeout"]) }
END {
	if (!nc) exit
	printf "\nfailover, ms from the cut: to the first answer from the backup (min ... max), to the VIP on the\n"
	printf "backup (its address monitor), to the client ARP entry naming it (its neighbour monitor)\n"
	printf "%-6s %4s %7s %7s %7s %7s %6s | %-21s | %-21s | %s\n", "config", "n", "min", "p50", "p99", "max", "missed",
		"VIP on b p50 / p99", "client ARP p50 / p99", "return -> a answers p50 / max"
	for (i = 1; i <= nc; i++) {
		c = order[i]
		sorted(v, c, n[c], a); sorted(vip, c, nv[c], b); sorted(arp, c, na[c], d); sorted(tb, c, ntb[c], e)
		p50[c] = pct(a, n[c], 50); p99[c] = pct(a, n[c], 99)
		printf "%-6s %4d %7.1f %7.1f %7.1f %7.1f %6d | %8.1f / %-10.1f | %8.1f / %-10.1f | %.1f / %.1f\n", c, n[c], a[1], p50[c], p99[c], a[n[c]], missed[c] + 0,
			pct(b, nv[c], 50), pct(b, nv[c], 99), pct(d, na[c], 50), pct(d, na[c], 99), pct(e, ntb[c], 50), e[ntb[c]]
	}
	printf "CPU of both speakers over the phase, s / takeovers beyond one per cut and return:"
	for (i = 1; i <= nc; i++) printf " %s %.2f / %d;", order[i], cpu[order[i]], extra[order[i]]
	printf "\n"
	printf "tunlb / keepalived:"
	if (("t100" in p50) && ("k100" in p50)) printf " 100 ms adverts p50 %.2f, p99 %.2f;", p50["t100"] / p50["k100"], p99["t100"] / p99["k100"]
	if (("t1s" in p50) && ("k1s" in p50)) printf " 1 s adverts p50 %.2f, p99 %.2f", p50["t1s"] / p50["k1s"], p99["t1s"] / p99["k1s"]
	printf "\n"
	if ("t100" in p99) printf "target: tunlb p99 under 1 s at 100 ms adverts: %.1f ms (%s)\n", p99["t100"], p99["t100"] < 1000 && !missed["t100"] ? "met" : "MISSED"
	if (syncn) printf "sync: %d failovers of 20 connections, %d resets in all (target 0 each); longest wait for an answer %d ms; after the last: %s\n", syncn, resets, gap, final
}' "$log" | tee -a "$log"
echo "bench-vrrp: log in $log"
exit "$rc"

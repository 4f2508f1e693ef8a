#!/usr/bin/env bash
# Health-check benchmark in the lab VM (see BENCHMARKS.md): time from a real
# server's fault to its weight 0 in the director's kernel, tunlb-agent serve
# (probes through the tunnel) vs keepalived's TCP_CHECK (matched timing and
# keepalived's defaults), and tunlb-agent serve's CPU and memory while probing
# VIPS x 10 real servers every 2 s, against the same agent without checks.
# usage: scripts/bench-health.sh [--faults N] [--window SECONDS] [--vips N]
#          [--profile ci|release] [--mem MB] [--log FILE]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
faults=20 window=60 vips=100 profile=ci mem=2048 log=""
while [ $# -gt 0 ]; do
	case "$1" in
	--faults) faults="$2"; shift 2 ;;
	--window) window="$2"; shift 2 ;;
	--vips) vips="$2"; shift 2 ;;
	--profile) profile="$2"; shift 2 ;;
	--mem) mem="$2"; shift 2 ;;
	--log) log="$2"; shift 2 ;;
	*) sed -n '2,8s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
	esac
done

cache="${TUNLB_CACHE:-$HOME/.cache/tunlb}/bench"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
[ -n "$log" ] || log="$work/bench.log"

keepalived=/usr/sbin/keepalived
[ -x "$keepalived" ] || { echo "keepalived missing: run scripts/install-deps.sh" >&2; exit 1; }
command -v go >/dev/null || { echo "go is required (tests/bench/acceptor)" >&2; exit 1; }

echo "bench-health: building tunlb-agent (profile $profile)"
(cd "$root" && cargo build --profile "$profile" --quiet -p tunlb-agent)
agent="${CARGO_TARGET_DIR:-$root/target}/$profile/tunlb-agent"

# The acceptor (a real server for the probe load): static, cached by source.
adir="$root/tests/bench/acceptor"
ahash="$(cat "$adir/go.mod" "$adir/main.go" | sha256sum | cut -c1-12)"
acceptor="$cache/acceptor-$ahash/acceptor"
if [ ! -x "$acceptor" ]; then
	echo "bench-health: building the acceptor"
	mkdir -p "$(dirname "$acceptor")"
	(cd "$adir" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$acceptor.tmp" .)
	mv "$acceptor.tmp" "$acceptor"
fi

mkdir -p "$work/in"
cp "$root/tests/bench/health-guest.sh" "$work/in/"
load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "bench-health: $faults faults per kind and configuration, $vips x 10 real servers for ${window}s (TCG guest: expect ~30 minutes)"
echo "bench-health: $("$keepalived" --version 2>&1 | head -n1); agent $(git -C "$root" rev-parse --short=12 HEAD)$(git -C "$root" diff --quiet HEAD || echo ' (modified)')"
echo "bench-health: host load average before: $(load) ($(nproc) CPUs)"
set +e
"$root/tests/lab/run.sh" --timeout 2700 --mem "$mem" \
	--host-bin "$keepalived" --bin "$agent" --bin "$acceptor" \
	--dir "$root/tests/lab/guest:/lab" --dir "$work/in:/bench" \
	-- sh /bench/health-guest.sh "$faults" "$window" "$vips" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
echo "bench-health: host load average after: $(load)"

# Detection: per configuration and fault kind, the nearest-rank percentiles
# (with 20 faults, p99 is the slowest one).
awk '
function pct(a, n, p,   r) { r = int(p / 100 * n + 0.999999); if (r < 1) r = 1; return a[r] }
/^RESULT detect / {
	delete f
	for (i = 3; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
	k = f["config"] " " f["kind"]
	if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
	if (f["ms"] == "none") missed[k]++
	else v[k, ++n[k]] = f["ms"] / 1000
	if ("verdict_ms" in f && f["ms"] != "none") { vd[k, ++nvd[k]] = f["verdict_ms"] / 1000; pg[k, nvd[k]] = (f["ms"] - f["verdict_ms"]) / 1000 }
}
/^RESULT load / {
	delete f
	for (i = 3; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
	ag = f["agent"]; agents[++na] = ag
	cpu[ag] = f["cpu_pct"]; rss[ag] = f["rss_kb"]; hwm[ag] = f["hwm_kb"]; rate[ag] = f["probes_per_s"]
	cpus[ag] = f["cpu_s"]; usr[ag] = f["user_s"]; sys[ag] = f["sys_s"]; nprobes[ag] = f["probes"]
	idle = f["guest_idle_pct"]; win = f["window_s"]; if ("asked_per_s" in f) nprobes_asked = f["asked_per_s"]
}
END {
	if (nk) {
		printf "\ndetection (fault -> weight 0 in the kernel), seconds\n"
		printf "%-12s %-8s %4s %7s %7s %7s %7s %s\n", "config", "kind", "n", "min", "p50", "p99", "max", "missed"
		for (i = 1; i <= nk; i++) {
			k = order[i]; delete a
			for (j = 1; j <= n[k]; j++) a[j] = v[k, j]
			for (x = 2; x <= n[k]; x++) for (y = x; y > 1 && a[y-1] > a[y]; y--) { t = a[y]; a[y] = a[y-1]; a[y-1] = t }
			split(k, ck, " ")
			printf "%-12s %-8s %4d %7.2f %7.2f %7.2f %7.2f %d\n", ck[1], ck[2], n[k], a[1], pct(a, n[k], 50), pct(a, n[k], 99), a[n[k]], missed[k] + 0
			p50[k] = pct(a, n[k], 50); p99[k] = pct(a, n[k], 99)
		}
		for (i = 1; i <= nk; i++) {
			k = order[i]; if (!nvd[k]) continue
			delete a; delete b
			for (j = 1; j <= nvd[k]; j++) { a[j] = vd[k, j]; b[j] = pg[k, j] }
			for (x = 2; x <= nvd[k]; x++) for (y = x; y > 1 && a[y-1] > a[y]; y--) { t = a[y]; a[y] = a[y-1]; a[y-1] = t }
			for (x = 2; x <= nvd[k]; x++) for (y = x; y > 1 && b[y-1] > b[y]; y--) { t = b[y]; b[y] = b[y-1]; b[y-1] = t }
			printf "  %s: fault -> verdict (agent log) p50 %.2f p99 %.2f max %.2f s; verdict -> weight 0 p50 %.2f p99 %.2f max %.2f s\n", k, pct(a, nvd[k], 50), pct(a, nvd[k], 99), a[nvd[k]], pct(b, nvd[k], 50), pct(b, nvd[k], 99), b[nvd[k]]
		}
		printf "target: tunlb p99 <= interval x fall + timeout + 0.5 s = 5.50 s:"
		for (i = 1; i <= nk; i++) if (order[i] ~ /^tunlb /) printf " %s %.2f s (%s)", substr(order[i], 7), p99[order[i]], p99[order[i]] <= 5.5 && !missed[order[i]] ? "met" : "MISSED"
		printf "\nratios of p50 (tunlb / keepalived):"
		for (i = 1; i <= nk; i++) {
			k = order[i]; if (k !~ /^ka-/) continue
			split(k, ck, " "); t = "tunlb " ck[2]
			if (t in p50 && p50[k] > 0) printf " %s %s %.2f;", ck[1], ck[2], p50[t] / p50[k]
		}
		printf "\n"
	}
	if (na) {
		printf "\nprobe load, window %.1f s (guest idle %.1f%%)\n", win, idle
		printf "%-10s %8s %7s %7s %10s %10s %9s %11s\n", "agent", "CPU %", "user s", "sys s", "VmRSS MiB", "VmHWM MiB", "probes/s", "CPU ms/probe"
		for (i = 1; i <= na; i++) {
			ag = agents[i]
			printf "%-10s %8.2f %7.2f %7.2f %10.1f %10.1f %9.1f %11s\n", ag, cpu[ag], usr[ag], sys[ag], rss[ag] / 1024, hwm[ag] / 1024, rate[ag],
				(nprobes[ag] > 0 ? sprintf("%.2f", cpus[ag] * 1000 / nprobes[ag]) : "-")
		}
		if (idle < 5)
			printf "the guest was saturated (idle %.1f%%): the probes reached %.1f/s of the %.1f/s asked for, and CPU %% is the share the agent got\n", idle, rate["health"], nprobes_asked

		if (("health" in cpu) && ("none" in cpu)) {
			printf "target: CPU < 5%% of one core: %.2f%% (%s)\n", cpu["health"], cpu["health"] < 5 ? "met" : "MISSED"
			printf "target: memory < 10 MB more than without checks: VmRSS +%.1f MiB (%.1f MB), VmHWM +%.1f MiB (%.1f MB) (%s)\n",
				(rss["health"] - rss["none"]) / 1024, (rss["health"] - rss["none"]) * 1.024 / 1000,
				(hwm["health"] - hwm["none"]) / 1024, (hwm["health"] - hwm["none"]) * 1.024 / 1000,
				(hwm["health"] - hwm["none"]) * 1.024 / 1000 < 10 ? "met" : "MISSED"
		}
		if (nprobes["health"] > 0 && nprobes["keepalived"] > 0) {
			# Per probe, the checker that sends fewer probes is not favoured;
			# the tunlb figure includes the agent passes (the "none" row).
			th = cpus["health"] / nprobes["health"]; tk = cpus["keepalived"] / nprobes["keepalived"]
			printf "tunlb / keepalived, CPU per probe: %.2f (user %.2f, system %.2f); probes per second: %.2f\n", th / tk,
				(usr["health"] / nprobes["health"]) / (usr["keepalived"] / nprobes["keepalived"]),
				(sys["health"] / nprobes["health"]) / (sys["keepalived"] / nprobes["keepalived"]),
				rate["health"] / rate["keepalived"]
			printf "at the %.1f probes/s asked for, at these costs per probe: tunlb %.1f%%, keepalived %.1f%% of one guest core\n",
				nprobes_asked, th * nprobes_asked * 100, tk * nprobes_asked * 100
		}
	}
}' "$log"
exit "$rc"

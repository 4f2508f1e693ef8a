#!/usr/bin/env bash
# IPVS programming benchmark in the lab VM (see BENCHMARKS.md):
# tunlb-agent vs `ipvsadm -R` vs github.com/moby/ipvs, 10,000 services x 10
# tunnel real servers, in one guest boot; prints a results table.
# usage: scripts/bench.sh [--rounds N] [--services N] [--reals N] [--mem MB] [--log FILE]
#          [--tools "tunlb ipvsadm moby"] [--baseline GIT-REV]
# --baseline also runs tunlb-agent built from GIT-REV ("base"), side by side.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rounds=3 services=10000 reals=10 mem=2048 log="" tools="tunlb ipvsadm moby" baseline=""
while [ $# -gt 0 ]; do
	case "$1" in
	--rounds) rounds="$2"; shift 2 ;;
	--services) services="$2"; shift 2 ;;
	--reals) reals="$2"; shift 2 ;;
	--mem) mem="$2"; shift 2 ;;
	--log) log="$2"; shift 2 ;;
	--tools) tools="$2"; shift 2 ;;
	--baseline) baseline="$2"; shift 2 ;;
	*) sed -n '2,7s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
	esac
done

cache="${TUNLB_CACHE:-$HOME/.cache/tunlb}/bench"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
[ -n "$log" ] || log="$work/bench.log"

command -v /usr/bin/time >/dev/null || { echo "GNU time missing: run scripts/install-deps.sh" >&2; exit 1; }
command -v go >/dev/null || { echo "go is required (moby/ipvs comparison)" >&2; exit 1; }

bins=()
if [ -n "$baseline" ]; then
	rev="$(git -C "$root" rev-parse --short=12 "$baseline^{commit}")"
	base="$cache/tunlb-base-$rev/tunlb-agent-base"
	if [ ! -x "$base" ]; then
		echo "bench: building the baseline tunlb-agent at $rev (release)"
		mkdir -p "$work/base-src" "$(dirname "$base")"
		git -C "$root" archive "$rev" | tar -x -C "$work/base-src"
		# A target dir of its own: sharing the workspace's mixes the two
		# trees' crates (same names and versions, only the path differs).
		(cd "$work/base-src" && CARGO_TARGET_DIR="$(dirname "$base")/target" cargo build --release --quiet -p tunlb-agent)
		cp "$(dirname "$base")/target/release/tunlb-agent" "$base.tmp"
		mv "$base.tmp" "$base"
	fi
	bins+=(--bin "$base")
	tools="$tools base"
fi

echo "bench: building tunlb-agent (release)"
(cd "$root" && cargo build --release --quiet -p tunlb-agent)

# moby/ipvs program: static, cached by library version and source.
mdir="$root/tests/bench/mobyipvs"
mver="$(sed -n 's/^require github.com\/moby\/ipvs \(v[^ ]*\).*/\1/p' "$mdir/go.mod")"
mhash="$(cat "$mdir/go.mod" "$mdir/go.sum" "$mdir/main.go" | sha256sum | cut -c1-12)"
moby="$cache/mobyipvs-$mver-$mhash/mobyipvs"
if [ ! -x "$moby" ]; then
	echo "bench: building moby/ipvs $mver program"
	mkdir -p "$(dirname "$moby")"
	(cd "$mdir" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$moby.tmp" .)
	mv "$moby.tmp" "$moby"
fi

"$root/tests/bench/gen.sh" "$work/in" "$services" "$reals"
cp "$root/tests/bench/guest.sh" "$work/in/"

echo "bench: $services services x $reals real servers, $rounds rounds (TCG guest: expect ~$((rounds * 3)) minutes)"
load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "bench: host load average before: $(load) ($(nproc) CPUs)"
set +e
"$root/tests/lab/run.sh" --timeout $((300 + rounds * 420)) --mem "$mem" \
	--bin "$root/target/release/tunlb-agent" --bin "$moby" --bin /usr/bin/time "${bins[@]}" \
	--dir "$work/in:/bench" -- sh /bench/guest.sh "$rounds" "$tools" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
echo "bench: host load average after: $(load)"

# Table: per tool/phase the wall time of every round, the median, and max RSS.
awk -v moby="moby/ipvs $mver" '
function med(a, n,   i, j, t) {
	for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
	return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
}
/^RESULT / {
	delete f
	for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
	k = f["tool"] " " f["phase"]
	if (!(k in n)) order[++nk] = k
	n[k]++; w[k, n[k]] = f["wall"] + 0; runs[k] = runs[k] " " f["wall"]
	us[k, n[k]] = f["user"] + 0; sy[k, n[k]] = f["sys"] + 0
	byround[k, f["round"]] = f["wall"] + 0; if (f["round"] + 0 > nr) nr = f["round"] + 0
	if (f["rss"] + 0 > rss[k]) rss[k] = f["rss"] + 0
}
END {
	if (!nk) exit
	printf "\n%-16s %-28s %9s %8s %8s %9s\n", "tool phase", "wall s (each round)", "median s", "user s", "sys s", "max RSS"
	for (i = 1; i <= nk; i++) {
		k = order[i]; delete a
		for (j = 1; j <= n[k]; j++) a[j] = w[k, j]
		m[k] = med(a, n[k])
		delete a
		for (j = 1; j <= n[k]; j++) a[j] = us[k, j]
		mu = med(a, n[k])
		delete a
		for (j = 1; j <= n[k]; j++) a[j] = sy[k, j]
		printf "%-16s %-28s %9.2f %8.2f %8.2f %7.1fMB\n", k, runs[k], m[k], mu, med(a, n[k]), rss[k] / 1024
	}
	c = m["tunlb cold"]
	printf "\nratios of medians:\n"
	if (m["ipvsadm cold"]) printf "  tunlb/ipvsadm cold  %.2f  (target <= 0.5)\n", c / m["ipvsadm cold"]
	if (m["moby cold"])    printf "  tunlb/moby cold     %.2f  (target < 1; %s)\n", c / m["moby cold"], moby
	if (c) {
		printf "  no-op/cold          %.2f\n", m["tunlb noop"] / c
		printf "  weight/cold         %.2f\n", m["tunlb weight"] / c
		printf "  delete/cold         %.2f\n", m["tunlb delete"] / c
	}
	printf "  per round, tunlb/ipvsadm and tunlb/moby cold (same boot, noise):"
	for (r = 1; r <= nr; r++)
		if (byround["ipvsadm cold", r] && byround["moby cold", r])
			printf " %.2f/%.2f", byround["tunlb cold", r] / byround["ipvsadm cold", r], byround["tunlb cold", r] / byround["moby cold", r]
	printf "\n"
	if (m["base cold"]) {
		printf "  tunlb/base (this build / %s):", "baseline"
		printf " cold %.2f, no-op %.2f, weight %.2f, delete %.2f; max RSS %.2f\n", c / m["base cold"], m["tunlb noop"] / m["base noop"], m["tunlb weight"] / m["base weight"], m["tunlb delete"] / m["base delete"], rss["tunlb cold"] / rss["base cold"]
		printf "  per round, tunlb/base cold:"
		for (r = 1; r <= nr; r++) if (byround["base cold", r]) printf " %.2f", byround["tunlb cold", r] / byround["base cold", r]
		printf "\n"
	}
	printf "  tunlb max RSS       %.1f MB  (target <= 30 MB)\n", (rss["tunlb cold"] > rss["tunlb noop"] ? (rss["tunlb cold"] > rss["tunlb weight"] ? rss["tunlb cold"] : rss["tunlb weight"]) : (rss["tunlb noop"] > rss["tunlb weight"] ? rss["tunlb noop"] : rss["tunlb weight"])) / 1024
}' "$log"
exit "$rc"

# shellcheck shell=sh
# IPVS programming benchmark, run inside the lab guest by scripts/bench.sh:
#   sh /bench/guest.sh [ROUNDS] [TOOLS]   (TOOLS: "tunlb ipvsadm moby" by default;
#   "base" adds /usr/local/bin/tunlb-agent-base, an earlier build)
# Inputs in /bench (from tests/bench/gen.sh): vs.yaml, vs-weight.yaml,
# rules.ipvsadm; binaries in /usr/local/bin: tunlb-agent, mobyipvs, time (GNU).
#
# Each round programs the same table (10,000 services x 10 tunnel real
# servers) cold with each tool, in a rotating order, and checks the result.
# Every cold run gets a fresh network namespace (IPVS state is per netns):
# after a flush the kernel parks deleted destinations in a per-netns trash
# list for 1-3 minutes and scans that list linearly on every destination add,
# which would make whichever tool runs second ten times slower.
# tunlb additionally runs: a no-op re-apply, a one-weight change and a delete.
#
# Prints one line per measurement:
#   RESULT round=N tool=T phase=P wall=SECONDS rss=KB [key=value...]
# and "N passed, M failed" for the checks.
set -u

IP=/usr/sbin/ip
TIME=/usr/local/bin/time
AGENT=/usr/local/bin/tunlb-agent
MOBY=/usr/local/bin/mobyipvs
B=/bench
ROUNDS="${1:-2}"
TOOLS="${2:-tunlb ipvsadm moby}"
VIP=10.2.0.1
PASS=0
FAIL=0

check() { # check NAME EXPECTED ACTUAL
	if [ "$2" = "$3" ]; then
		PASS=$((PASS + 1))
	else
		FAIL=$((FAIL + 1))
		echo "FAIL $1: expected [$2], got [$3]"
	fi
}

# fresh NS: a namespace whose dummy interface routes the real servers
# (IPVS refuses a tunnel destination it has no route to).
fresh() {
	"$IP" netns add "$1"
	"$IP" -n "$1" link set lo up
	"$IP" -n "$1" link add bench0 type dummy
	"$IP" -n "$1" link set bench0 up
	"$IP" -n "$1" addr add 10.1.0.254/16 dev bench0
}

gone() {
	"$IP" netns exec "$1" ipvsadm -C
	"$IP" netns del "$1"
	sleep 3 # let the namespace teardown finish before the next measurement
}

# timed ROUND TOOL PHASE NS CMD...: runs CMD in NS under GNU time; output in
# /tmp/out, stderr in /tmp/err; prints the RESULT line (without newline).
timed() {
	_r="$1" _t="$2" _p="$3" _ns="$4"
	shift 4
	"$IP" netns exec "$_ns" "$TIME" -o /tmp/time -f '%e %M %U %S' "$@" >/tmp/out 2>/tmp/err
	_rc=$?
	[ "$_rc" = 0 ] || { echo "FAIL $_t $_p exited $_rc"; tail -5 /tmp/err; FAIL=$((FAIL + 1)); }
	result "$_r" "$_t" "$_p"
}

# result ROUND TOOL PHASE: the RESULT line's start, from /tmp/time.
result() {
	# shellcheck disable=SC2046 # four numbers
	set -- "$1" "$2" "$3" $(tail -n 1 /tmp/time)
	printf 'RESULT round=%s tool=%s phase=%s wall=%s rss=%s user=%s sys=%s' "$@"
}

# table NS: "services destinations tunnel-destinations-at-weight-1"
table() {
	"$IP" netns exec "$1" ipvsadm -Ln >/tmp/ln
	awk '/^TCP/ {s++} /->/ && $3 == "Tunnel" {d++; if ($4 == 1) w++}
		END {printf "%d %d %d", s, d, w}' /tmp/ln
}

writes() { sed -n 's/^kernel writes: //p' /tmp/out | tail -n 1; }

# debug log of tunlb-agent: dest_dumps=N of the IPVS sync.
dumps() { sed -n 's/.*IPVS synced.*dest_dumps=\([0-9]*\).*/\1/p' /tmp/err | tail -n 1; }

# phases ROUND PHASE: tunlb's own phase timings (debug log), first round only.
phases() {
	[ "$1" = 1 ] || return 0
	sed -n 's/^[^ ]* *DEBUG tunlb_agent::[a-z_:]*: \(.*ms=.*\)/LOG tunlb \1/p' /tmp/err | sed "s/^LOG tunlb /LOG tunlb $2: /"
}

# run_tunlb ROUND [TOOL AGENT]: TOOL "base" is an earlier tunlb-agent build
# (scripts/bench.sh --baseline), run the same way for a before/after ratio.
run_tunlb() {
	_r="$1" _tool="${2:-tunlb}" _agent="${3:-$AGENT}"
	ns="t$_tool$1" st="/tmp/state-$_tool-$1"
	fresh "$ns"
	export TUNLB_LOG=tunlb_agent=debug NO_COLOR=1
	ag() { timed "$_r" "$_tool" "$1" "$ns" "$_agent" "$2" -f "$3" --node bench --state-dir "$st" --director; }

	ag cold apply "$B/vs.yaml"
	echo " writes=\"$(writes)\""
	[ "$_tool" = tunlb ] && phases "$_r" cold
	check "$_tool cold writes" "ipvs=110000 links=2 sysctls=0 nft=0" "$(writes)"
	check "$_tool cold table" "10000 100000 100000" "$(table "$ns")"

	ag noop apply "$B/vs.yaml"
	echo " writes=\"$(writes)\" dest_dumps=$(dumps) service_dumps=1"
	[ "$_tool" = tunlb ] && phases "$_r" noop
	check "$_tool no-op writes" "ipvs=0 links=0 sysctls=0 nft=0" "$(writes)"

	ag weight apply "$B/vs-weight.yaml"
	echo " writes=\"$(writes)\" dest_dumps=$(dumps)"
	[ "$_tool" = tunlb ] && phases "$_r" weight
	check "$_tool weight writes" "ipvs=1 links=0 sysctls=0 nft=0" "$(writes)"
	check "$_tool weight table" "10000 100000 99999" "$(table "$ns")"
	check "$_tool weight 2 on 10.1.0.1:15000" "2" \
		"$("$IP" netns exec "$ns" ipvsadm -Ln -t "$VIP:15000" | awk '$2 == "10.1.0.1:15000" {print $4}')"

	ag delete delete "$B/vs-weight.yaml"
	echo " writes=\"$(writes)\" dest_dumps=$(dumps)"
	[ "$_tool" = tunlb ] && phases "$_r" delete
	check "$_tool delete table" "0 0 0" "$(table "$ns")"
	unset TUNLB_LOG NO_COLOR
	gone "$ns"
}

run_base() { run_tunlb "$1" base /usr/local/bin/tunlb-agent-base; }

run_ipvsadm() {
	ns="i$1"
	fresh "$ns"
	# ipvsadm -R reads stdin; GNU time passes it through.
	"$IP" netns exec "$ns" "$TIME" -o /tmp/time -f '%e %M %U %S' ipvsadm -R <"$B/rules.ipvsadm" >/tmp/out 2>/tmp/err ||
		{ echo "FAIL ipvsadm -R"; tail -5 /tmp/err; FAIL=$((FAIL + 1)); }
	result "$1" ipvsadm cold
	echo
	check "ipvsadm cold table" "10000 100000 100000" "$(table "$ns")"
	gone "$ns"
}

run_moby() {
	ns="m$1"
	fresh "$ns"
	timed "$1" moby cold "$ns" "$MOBY" "$B/rules.ipvsadm"
	echo
	check "moby cold table" "10000 100000 100000" "$(table "$ns")"
	gone "$ns"
}

echo "kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) vCPU, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MB"
echo "$(wc -l <"$B/rules.ipvsadm") ipvsadm rules"
_round=1
while [ "$_round" -le "$ROUNDS" ]; do
	case $((_round % 3)) in
	1) order="tunlb base ipvsadm moby" ;;
	2) order="moby ipvsadm base tunlb" ;;
	0) order="ipvsadm tunlb moby base" ;;
	esac
	echo "round $_round: $order"
	for tool in $order; do
		case " $TOOLS " in
		*" $tool "*) "run_$tool" "$_round" ;;
		esac
	done
	_round=$((_round + 1))
done
echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]

#!/bin/sh
# Benchmark of the Kubernetes path against the standalone agent, in one boot
# (scripts/bench-cluster.sh runs it; results in tests/bench/cluster/RESULTS.md).
#
#   k8s  apply : `kubectl apply` of a fresh VirtualService -> first successful
#                curl through its VIP (operator + agents `tunlb-agent run`)
#   k8s  weight: `kubectl patch` of a backend weight -> `ipvsadm -Ln` on the
#                director shows it
#   file apply : `tunlb-agent apply -f` on director, rs1, rs2 in turn (as an
#                operator's script would) -> first successful curl
#   file weight: `tunlb-agent apply -f` of the changed file on the director
#                -> `ipvsadm -Ln` shows it
#
# Each run uses a fresh name and VIP (k8s 192.168.56.201.., file .231..), port
# 80, wrr, static backends rs1/rs2, no port mapping (so no nft table), and is
# deleted afterwards (timed too: kubectl delete --wait / agent delete x3), so
# every run starts from the same kernel state. Paths alternate run by run so
# that the guest's speed drift hits both alike, and every timed step starts on
# an idle vCPU (cpu_settle). Run 0 of each path is a warm-up (agents' first sync,
# kubectl discovery cache, first tunl0 use) and is not counted.
#
# Output: "RUN ..." per run, "BENCH metric=... n= p50= p90= min= max= mean=
# unit=ms" per metric and "BENCH ratio=... p50= p90=" (k8s/file).
. /scenarios/cluster.sh

RUNS=20
# cluster-lab gives the guest 600 s: stop starting runs after this much guest
# uptime (a slow, loaded host), so that the summary still gets printed.
DEADLINE_S=500
OUT=/tmp/bench
mkdir -p "$OUT"

# record METRIC VALUE: one sample.
record() { echo "$2" >>"$OUT/$1"; }

# first_success VIP: curls from the client until one request succeeds (200);
# 0.2 s connect timeout, no pause between attempts. Gives up after 60 s.
# Prints the number of attempts on success.
first_success() {
	now_ms
	_end=$((NOW + 60000))
	_n=0
	while :; do
		_n=$((_n + 1))
		if ns_exec client curl -sf -o /dev/null --connect-timeout 0.2 --max-time 2 \
			-H 'Connection: close' "http://$1/" 2>/dev/null; then
			echo "$_n"
			return 0
		fi
		if [ $((_n % 5)) -eq 0 ]; then
			now_ms
			[ "$NOW" -gt "$_end" ] && return 1
		fi
	done
}

# weight_shows VIP RS W: polls `ipvsadm -Ln` in the director namespace until RS
# has weight W in VIP:80. Gives up after 60 s.
weight_shows() {
	now_ms
	_end=$((NOW + 60000))
	_n=0
	while :; do
		_n=$((_n + 1))
		ns_exec director ipvsadm -Ln -t "$1:80" 2>/dev/null | grep -Eq -- "-> $2:80 +Tunnel +$3 " && return 0
		if [ $((_n % 5)) -eq 0 ]; then
			now_ms
			[ "$NOW" -gt "$_end" ] && return 1
		fi
	done
}

# manifest NAME VIP W1 > FILE
manifest() {
	cat <<YAML
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata:
  name: $1
spec:
  vip: $2
  ports:
  - {name: http, port: 80}
  scheduler: wrr
  backends:
    static:
    - {address: $RS1, weight: $3}
    - {address: $RS2, weight: 1}
YAML
}

# file_agent NODE ARGS...: the standalone agent in NODE's namespace, with its
# own state dir (apart from `tunlb-agent run`'s /tmp/state-NODE).
file_agent() {
	_node="$1"
	shift
	if [ "$_node" = director ]; then
		ns_exec "$_node" "$AGENT" "$@" --node "$_node" --state-dir "/tmp/bench-state-$_node" --director
	else
		ns_exec "$_node" "$AGENT" "$@" --node "$_node" --state-dir "/tmp/bench-state-$_node"
	fi
}

FAILS=0
fail() {
	echo "FAIL $*"
	FAILS=$((FAILS + 1))
}

# k8s_run I: one Kubernetes-path run.
k8s_run() {
	_name="bench-k-$1"
	_vip="192.168.56.$((200 + $1))"
	manifest "$_name" "$_vip" 1 >"/tmp/$_name.yaml"
	cpu_settle
	now_ms
	_t0=$NOW
	k apply -f "/tmp/$_name.yaml" >/dev/null || fail "k8s $1: kubectl apply"
	now_ms
	_tk=$NOW
	_tries="$(first_success "$_vip")" || fail "k8s $1: no success through $_vip"
	now_ms
	_ta=$NOW
	cpu_settle
	_sa=$SETTLED
	_t1=$NOW
	k patch tvs "$_name" --type=json \
		-p '[{"op":"replace","path":"/spec/backends/static/0/weight","value":3}]' >/dev/null ||
		fail "k8s $1: kubectl patch"
	now_ms
	_tp=$NOW
	weight_shows "$_vip" "$RS1" 3 || fail "k8s $1: weight 3 never showed"
	now_ms
	_tw=$NOW
	cpu_settle
	_sw=$SETTLED
	_t2=$NOW
	k delete tvs "$_name" --wait --timeout=60s >/dev/null || fail "k8s $1: kubectl delete"
	now_ms
	_t3=$NOW
	ns_exec director ipvsadm -Ln | grep -q "$_vip:80" && fail "k8s $1: $_vip still in IPVS after delete"
	echo "RUN path=k8s i=$1 apply_ms=$((_ta - _t0)) kubectl_apply_ms=$((_tk - _t0)) curl_tries=${_tries:-0} settle_after_apply_ms=$_sa weight_ms=$((_tw - _t1)) kubectl_patch_ms=$((_tp - _t1)) settle_after_weight_ms=$_sw delete_ms=$((_t3 - _t2))"
	if [ "$1" -gt 0 ]; then
		record k8s_apply $((_ta - _t0))
		record k8s_apply_kubectl $((_tk - _t0))
		record k8s_apply_after_kubectl $((_ta - _tk))
		record k8s_apply_settle $_sa
		record k8s_weight $((_tw - _t1))
		record k8s_weight_kubectl $((_tp - _t1))
		record k8s_weight_after_kubectl $((_tw - _tp))
		record k8s_weight_settle $_sw
		record k8s_delete $((_t3 - _t2))
	fi
}

# file_run I: the same with the standalone agent.
file_run() {
	_name="bench-f-$1"
	_vip="192.168.56.$((230 + $1))"
	manifest "$_name" "$_vip" 1 >"/tmp/$_name.yaml"
	manifest "$_name" "$_vip" 3 >"/tmp/$_name-w3.yaml"
	cpu_settle
	now_ms
	_t0=$NOW
	for _n in director rs1 rs2; do
		file_agent "$_n" apply -f "/tmp/$_name.yaml" >/dev/null || fail "file $1: apply on $_n"
	done
	now_ms
	_tk=$NOW
	_tries="$(first_success "$_vip")" || fail "file $1: no success through $_vip"
	now_ms
	_ta=$NOW
	cpu_settle
	_sa=$SETTLED
	_t1=$NOW
	file_agent director apply -f "/tmp/$_name-w3.yaml" >/dev/null || fail "file $1: weight apply"
	now_ms
	_tp=$NOW
	weight_shows "$_vip" "$RS1" 3 || fail "file $1: weight 3 never showed"
	now_ms
	_tw=$NOW
	cpu_settle
	_sw=$SETTLED
	_t2=$NOW
	for _n in director rs1 rs2; do
		file_agent "$_n" delete -f "/tmp/$_name-w3.yaml" >/dev/null || fail "file $1: delete on $_n"
	done
	now_ms
	_t3=$NOW
	ns_exec director ipvsadm -Ln | grep -q "$_vip:80" && fail "file $1: $_vip still in IPVS after delete"
	echo "RUN path=file i=$1 apply_ms=$((_ta - _t0)) agent_apply_ms=$((_tk - _t0)) curl_tries=${_tries:-0} settle_after_apply_ms=$_sa weight_ms=$((_tw - _t1)) agent_weight_ms=$((_tp - _t1)) settle_after_weight_ms=$_sw delete_ms=$((_t3 - _t2))"
	if [ "$1" -gt 0 ]; then
		record file_apply $((_ta - _t0))
		record file_apply_agents $((_tk - _t0))
		record file_apply_after_agents $((_ta - _tk))
		record file_apply_settle $_sa
		record file_weight $((_tw - _t1))
		record file_weight_agent $((_tp - _t1))
		record file_weight_after_agent $((_tw - _tp))
		record file_weight_settle $_sw
		record file_delete $((_t3 - _t2))
	fi
}

# stats METRIC: "n p50 p90 min max mean" (nearest-rank percentiles).
stats() {
	sort -n "$OUT/$1" | awk '{v[NR] = $1; s += $1}
		END {
			if (!NR) { print "0 0 0 0 0 0"; exit }
			p50 = int((NR * 50 + 99) / 100); p90 = int((NR * 90 + 99) / 100)
			printf "%d %d %d %d %d %d\n", NR, v[p50], v[p90], v[1], v[NR], s / NR
		}'
}

cluster_setup
# cluster_setup starts the agents with --resync-seconds 3 (for the drift tests);
# every agent then runs a full pass (two `nft` spawns included) every 3 s, which
# loads the single TCG vCPU. Restart them as the chart runs them: default resync (30 s)
# and debounce (100 ms).
for n in director rs1 rs2; do
	eval "kill \"\$AGENT_PID_$n\"; wait \"\$AGENT_PID_$n\" 2>/dev/null"
	"$IP" netns exec "$n" env KUBECONFIG="/kube/agent-$n.kubeconfig" NODE_NAME="$n" TUNLB_LOG=info,kube=warn \
		"$AGENT" run --state-dir "/tmp/state-$n" --metrics-addr 127.0.0.1:9090 \
		>>"/tmp/agent-$n.log" 2>&1 &
done
# The bench itself polls as fast as it can; let ARP give up on a VIP that does
# not exist yet after 3 x 20 ms instead of 3 x 1 s (a probe sent just before the
# VIP appeared would otherwise add up to 1 s to the measurement, on both paths).
ns_exec client sysctl -qw net.ipv4.neigh.eth0.retrans_time_ms=20
ns_exec client sysctl -qw net.ipv4.neigh.default.retrans_time_ms=20

# The warm-up runs (i=0) wait for the agents' first sync through their 60 s polls.
wait_for 60 "API server reachable" k get tvs || exit 1

now_ms
BENCH_START=$NOW
i=0
while [ "$i" -le "$RUNS" ]; do
	read -r up _ </proc/uptime
	if [ "${up%%.*}" -ge "$DEADLINE_S" ]; then
		echo "bench: WARNING: guest uptime ${up}s, stopping after $((i - 1)) runs (host too slow for $RUNS)"
		break
	fi
	k8s_run "$i"
	file_run "$i"
	i=$((i + 1))
done
now_ms
echo "bench: $((i - 1)) runs per path in $(((NOW - BENCH_START) / 1000)) s (plus a warm-up run each)"

# Floors, to read the numbers against: one process of each kind, 5 times.
probe() {
	_m="$1"
	shift
	_j=0
	while [ "$_j" -lt 5 ]; do
		now_ms
		_a=$NOW
		"$@" >/dev/null 2>&1
		now_ms
		record "$_m" $((NOW - _a))
		_j=$((_j + 1))
	done
}
probe probe_kubectl_get k get tvs -o name
probe probe_curl_direct ns_exec client curl -sf -o /dev/null --max-time 2 "http://$RS1/"
probe probe_nft_list ns_exec director nft list table ip tunlb
probe probe_agent_show ns_exec director "$AGENT" show
probe probe_ipvsadm ns_exec director ipvsadm -Ln
probe probe_now_ms true

for m in k8s_apply file_apply k8s_weight file_weight k8s_apply_kubectl file_apply_agents \
	k8s_weight_kubectl file_weight_agent k8s_apply_after_kubectl file_apply_after_agents \
	k8s_weight_after_kubectl file_weight_after_agent k8s_apply_settle file_apply_settle k8s_weight_settle \
	file_weight_settle k8s_delete file_delete probe_kubectl_get \
	probe_curl_direct probe_nft_list probe_agent_show probe_ipvsadm probe_now_ms; do
	# shellcheck disable=SC2046 # n p50 p90 min max mean
	set -- $(stats "$m")
	echo "BENCH metric=$m n=$1 p50=$2 p90=$3 min=$4 max=$5 mean=$6 unit=ms"
done
# stat METRIC FIELD: 1 n, 2 p50, 3 p90.
stat() { stats "$1" | cut -d' ' -f"$2"; }
ratio() { awk -v a="$(stat "k8s_$1" "$2")" -v b="$(stat "file_$1" "$2")" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "nan" }'; }
for m in apply weight delete; do
	echo "BENCH ratio=$m k8s/file p50=$(ratio "$m" 2) p90=$(ratio "$m" 3)"
done

for n in director rs1 rs2; do
	echo "--- agent $n: sync passes (tunlb-agent run)"
	ns_exec "$n" curl -s 127.0.0.1:9090/metrics |
		awk '/^tunlb_agent_sync_duration_seconds_sum/ {s = $2} /^tunlb_agent_sync_duration_seconds_count/ {c = $2}
			/^tunlb_agent_(kernel_writes|sync_errors)_total/ {print}
			END {if (c) printf "passes %d, mean pass %.0f ms (wall, histogram)\n", c, s * 1000 / c}'
	grep -ciE 'warn|error' "/tmp/agent-$n.log" | sed 's/^/warnings+errors in log: /'
done

lab_assert_eq "no failed step" 0 "$FAILS"
lab_assert_eq "k8s and file samples" "$((i - 1)) $((i - 1))" "$(stat k8s_apply 1) $(stat file_apply 1)"
lab_assert_eq "at least 10 runs per path" yes "$([ "$((i - 1))" -ge 10 ] && echo yes || echo no)"
topo_cleanup
lab_summary

#!/bin/sh
# The node agent in Kubernetes mode at scale, against the standalone agent
# programming the same table in the same boot (scripts/bench-agent-cluster.sh
# runs it; the host has created /bench/vs.yaml's VirtualServices and the
# operator has judged them all before this starts).
#
#   cluster: `tunlb-agent run` (chart defaults) on the director: start ->
#            every service in the kernel, -> every status entry written, peak
#            RSS, CPU; 60 s idle; `kubectl patch` of one weight -> the kernel,
#            with all N VirtualServices present and, after deleting them, with
#            the 10 of /bench/vs10.yaml
#   file:    `tunlb-agent apply -f /bench/vs.yaml` in a fresh namespace
#
# Times end on the agent's own clock (tunlb_agent_last_change_timestamp_seconds:
# when the pass that wrote to the kernel finished writing), read every 2 s, so
# watching for the result does not load the vCPU the agent runs on.
#
# Output: "BENCH path=... key=value..." lines and "BENCH ratio ..." lines.
. /scenarios/cluster.sh

N="$(grep -c '^kind: VirtualService' /bench/vs.yaml)"
PATCHES=5
now() { awk '{print $1}' /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
cpu_s() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$1/stat"; }
mem() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
services() { "$IP" netns exec "$1" ipvsadm -Ln | grep -c '^TCP'; }
passes() { metric director tunlb_agent_sync_duration_seconds_count; }
writes() { metric director tunlb_agent_kernel_writes_total; }
changed_at() { metric director tunlb_agent_last_change_timestamp_seconds; }
# ms_after T_MS: the agent's last change, in ms after T_MS (epoch ms).
ms_after() { awk -v a="$(changed_at)" -v t="$1" 'BEGIN { printf "%d", a * 1000 - t }'; }
# wait_until SECONDS CMD...: polls every 2 s; returns 1 on timeout.
wait_until() {
	_end=$(($(date +%s) + $1))
	shift
	until "$@"; do
		[ "$(date +%s)" -lt "$_end" ] || return 1
		sleep 2
	done
}
# The first pass has written to the kernel (it holds every object: the agent
# waits for the initial lists).
first_pass_wrote() {
	_w="$(writes)"
	passes_at_least director 1 && [ "${_w:-0}" != 0 ]
}
# The first pass ends with its status entries: all of them written at once.
reported_all() { grep -q "status entries written.*entries[^ ]*$N[^0-9]" /tmp/agent-director.log; }
# changed_after EPOCH_S: the agent changed the kernel after that time.
changed_after() { awk -v a="$(changed_at)" -v t="$1" 'BEGIN { exit !(a > t) }'; }
# patch_weight NAME PORT WEIGHT: `kubectl patch` of NAME's first real server
# weight on an idle vCPU; PATCH_MS: from just before kubectl to the end of
# the agent's pass that wrote it, PATCH_CPU: the agent's CPU-s meanwhile.
patch_weight() {
	cpu_settle
	_before="$(changed_at)"
	_c0="$(cpu_s "$pid")"
	now_ms
	_t=$NOW
	k patch tvs "$1" -n default --type=json \
		-p "[{\"op\":\"replace\",\"path\":\"/spec/backends/static/0/weight\",\"value\":$3}]" >/dev/null || return 1
	wait_until 120 changed_after "$_before" || return 1
	PATCH_MS="$(ms_after "$_t")"
	PATCH_CPU="$(awk -v a="$_c0" -v b="$(cpu_s "$pid")" 'BEGIN { printf "%.2f", b - a }')"
	"$IP" netns exec director ipvsadm -Ln -t "10.2.0.1:$2" | grep -Eq -- "-> 10.1.0.1:$2 +Tunnel +$3 "
}
# patches NAME PORT LABEL: PATCHES weight patches (2, 3, ...); prints each and
# sets MEDIAN_MS.
patches() {
	: >"/tmp/patch-$3"
	_weight=2
	while [ "$_weight" -le $((PATCHES + 1)) ]; do
		patch_weight "$1" "$2" "$_weight"
		lab_assert_eq "$3: weight $_weight of $1 in the kernel" 0 "$?"
		echo "PATCH vs=$3 name=$1 weight=$_weight ms=$PATCH_MS agent_cpu_s=$PATCH_CPU"
		echo "$PATCH_MS" >>"/tmp/patch-$3"
		_weight=$((_weight + 1))
	done
	MEDIAN_MS="$(sort -n "/tmp/patch-$3" | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')"
}
# agent_quiet: the agent used under 2% of the vCPU over the last 10 s (after
# its first pass, the operator's and its own status writes keep it busy for a
# while: the idle minute starts once they are done).
agent_quiet() {
	_a="$(awk '{print $14 + $15}' "/proc/$pid/stat")"
	sleep 10
	[ $(($(awk '{print $14 + $15}' "/proc/$pid/stat") - _a)) -lt 20 ]
}
# programmed_entries: VirtualServices whose status has a programmed entry (the
# director is the only node here), read in pages of 500 (kubectl holding all
# 10,000 objects at once does not fit beside the agent in the guest).
programmed_entries() {
	_n=0
	_cont=""
	while :; do
		_page="$(k get --raw "/apis/tunlb.io/v1alpha1/namespaces/default/virtualservices?limit=500${_cont:+&continue=$_cont}")"
		_n=$((_n + $(echo "$_page" | grep -o '"programmed":true' | wc -l)))
		_cont="$(echo "$_page" | grep -o '"continue":"[^"]*"' | head -1 | cut -d'"' -f4)"
		[ -n "$_cont" ] || break
	done
	echo "$_n"
}
# none_left: the API server holds no VirtualService in default.
none_left() { k get --raw '/apis/tunlb.io/v1alpha1/namespaces/default/virtualservices?limit=1' | grep -q '"items":\[\]'; }
# bench0: the real servers' subnet (IPVS refuses a tunnel destination it cannot route).
bench_route() {
	"$IP" -n "$1" link add bench0 type dummy
	"$IP" -n "$1" link set bench0 up
	"$IP" -n "$1" addr add 10.1.0.254/16 dev bench0
}

topo_setup || exit 1
"$IP" addr add 192.168.56.1/24 dev br0
ns_exec director "$IP" route add default via 192.168.56.1
echo 1 >/proc/sys/net/ipv4/ip_forward
nft -f - <<'NFT'
table ip labnat {
	chain post { type nat hook postrouting priority srcnat; ip saddr 192.168.56.0/24 oifname "eth0" masquerade; }
}
NFT
bench_route director
echo "bench: $N VirtualServices, kernel $(uname -r), $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MB"

# cluster path
now_ms
t0_ms=$NOW
t0="$(now)"
"$IP" netns exec director env KUBECONFIG=/kube/agent-director.kubeconfig NODE_NAME=director TUNLB_LOG=info,kube=warn \
	"$AGENT" run --state-dir /tmp/state-director --metrics-addr 127.0.0.1:9090 \
	>>/tmp/agent-director.log 2>&1 &
pid=$!
wait_until 900 first_pass_wrote
programmed_ms="$(ms_after "$t0_ms")"
programmed="$(awk -v m="$programmed_ms" 'BEGIN { printf "%.1f", m / 1000 }')"
wait_until 1200 reported_all
reported="$(since "$t0")"
cpu="$(cpu_s "$pid")"
lab_assert_eq "cluster agent programmed every service" "$N" "$(services director)"
now_ms
q0=$NOW
wait_until 900 agent_quiet
lab_assert_eq "the agent goes quiet after its first pass" 0 "$?"
now_ms
quiet_s=$(((NOW - q0) / 1000))
# The agent's own write counter, checked from outside: monitors over the idle
# minute and a snapshot of the director's kernel before and after it.
idle_before="$(kernel_state director)"
watch_start director
c0="$(cpu_s "$pid")" p0="$(passes)" w0="$(writes)"
sleep 60
c1="$(cpu_s "$pid")" p1="$(passes)" w1="$(writes)"
idle_events="$(watch_stop)"
lab_assert_eq "idle: no kernel writes" "$w0" "$w1"
lab_assert_eq "idle: no address, link, route, netconf or nft event" "" "$idle_events"
lab_assert_same "idle: the director's kernel unchanged" "$idle_before" "$(kernel_state director)"
lab_assert_eq "a programmed status entry on every VirtualService" "$N" "$(programmed_entries)"
hwm="$(mem "$pid" VmHWM)"
echo "BENCH path=cluster services=$N programmed_s=$programmed reported_s=$reported quiet_after_reported_s=$quiet_s cpu_s=$cpu hwm_kb=$hwm rss_kb=$(mem "$pid" VmRSS) idle_60s_cpu_s=$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", b - a }') idle_60s_passes=$((p1 - p0))"

# One weight, with all N present (the middle service, as gen.sh's vs-weight.yaml)
mid=$((10000 + (N + 1) / 2))
patches "p$mid" "$mid" "$N"
patch_big=$MEDIAN_MS
# ... and with 10 present: delete them all (the agent removes its services
# and entries, the operator its finalizers), then create vs10.yaml's.
now_ms
d0=$NOW
# deletecollection, again until none is left: the API server ends one
# request at its own timeout (a minute) with part of 10,000 deleted
delete_all() {
	kubectl --request-timeout=900s delete --raw /apis/tunlb.io/v1alpha1/namespaces/default/virtualservices >/dev/null 2>&1
	none_left
}
wait_until 1800 delete_all
lab_assert_eq "every VirtualService deleted" 0 "$?"
now_ms
deleted_ms=$((NOW - d0))
no_services() { [ "$(services director)" = 0 ]; }
wait_until 300 no_services
lab_assert_eq "their services left the director's kernel" 0 "$?"
k create -f /bench/vs10.yaml >/dev/null
ten() { [ "$(services director)" = 10 ]; }
wait_until 300 ten
lab_assert_eq "the 10 programmed" 0 "$?"
patches p10005 10005 10
patch_small=$MEDIAN_MS
echo "BENCH path=patch services=$N weight_ms=$patch_big services_small=10 weight_small_ms=$patch_small patches=$PATCHES delete_all_ms=$deleted_ms"
echo "BENCH ratio patch/cold=$(awk -v a="$patch_big" -v b="$programmed_ms" 'BEGIN { printf "%.3f", a / b }') patch_N/patch_10=$(awk -v a="$patch_big" -v b="$patch_small" 'BEGIN { printf "%.2f", a / b }')"
kill "$pid"
wait "$pid" 2>/dev/null
tail -3 /tmp/agent-director.log

# file path, same table, fresh namespace
"$IP" netns add peer
"$IP" -n peer link set lo up
bench_route peer
"$IP" netns exec peer /usr/local/bin/time -o /tmp/time -f '%e %M %U %S' \
	"$AGENT" apply -f /bench/vs.yaml --node bench --state-dir /tmp/peer-state --director >/tmp/peer.out 2>&1
lab_assert_eq "standalone agent exited 0" 0 "$?"
lab_assert_eq "standalone agent programmed every service" "$N" "$(services peer)"
# shellcheck disable=SC2046 # four numbers
set -- $(tail -n 1 /tmp/time)
echo "BENCH path=file services=$N programmed_s=$1 hwm_kb=$2 cpu_s=$(awk -v u="$3" -v s="$4" 'BEGIN { printf "%.2f", u + s }')"
echo "BENCH ratio cluster/file programmed=$(awk -v a="$programmed" -v b="$1" 'BEGIN { printf "%.2f", a / b }') hwm=$(awk -v a="$hwm" -v b="$2" 'BEGIN { printf "%.2f", a / b }')"
echo "BENCH ratio patch/file_cold=$(awk -v a="$patch_big" -v b="$1" 'BEGIN { printf "%.3f", a / 1000 / b }')"
topo_cleanup
lab_summary

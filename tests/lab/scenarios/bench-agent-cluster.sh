#!/bin/sh
# The node agent in Kubernetes mode at scale, against the standalone agent
# programming the same table in the same boot (scripts/bench-agent-cluster.sh
# runs it; the host has created /bench/vs.yaml's VirtualServices and the
# operator has judged them all before this starts).
#
#   cluster: `tunlb-agent run` (chart defaults) on the director: start ->
#            every service in the kernel, -> every status entry written, peak
#            RSS, CPU; then 60 s idle
#   file:    `tunlb-agent apply -f /bench/vs.yaml` in a fresh namespace
#
# Output: "BENCH path=... key=value..." lines and "BENCH ratio ..." lines.
. /scenarios/cluster.sh

N="$(grep -c '^kind: VirtualService' /bench/vs.yaml)"
now() { awk '{print $1}' /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
cpu_s() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$1/stat"; }
mem() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
services() { "$IP" netns exec "$1" ipvsadm -Ln | grep -c '^TCP'; }
passes() { ns_exec director curl -s 127.0.0.1:9090/metrics | awk '/^tunlb_agent_sync_duration_seconds_count/ {print $2}'; }
writes() { ns_exec director curl -s 127.0.0.1:9090/metrics | awk '/^tunlb_agent_kernel_writes_total/ {print $2}'; }
# wait_until SECONDS CMD...: polls every 2 s; returns 1 on timeout.
wait_until() {
	_end=$(($(date +%s) + $1))
	shift
	until "$@"; do
		[ "$(date +%s)" -lt "$_end" ] || return 1
		sleep 2
	done
}
all_programmed() { [ "$(services director)" -ge "$N" ]; }
# The first pass ends with its status entries: all of them written at once.
reported_all() { grep -q "status entries written.*entries[^ ]*$N[^0-9]" /tmp/agent-director.log; }
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
t0="$(now)"
"$IP" netns exec director env KUBECONFIG=/kube/agent-director.kubeconfig NODE_NAME=director TUNLB_LOG=info,kube=warn \
	"$AGENT" run --state-dir /tmp/state-director --metrics-addr 127.0.0.1:9090 \
	>>/tmp/agent-director.log 2>&1 &
pid=$!
wait_until 900 all_programmed
programmed="$(since "$t0")"
wait_until 1200 reported_all
reported="$(since "$t0")"
cpu="$(cpu_s "$pid")"
lab_assert_eq "cluster agent programmed every service" "$N" "$(services director)"
sleep 5
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
entries="$(k get tvs -n default -o jsonpath='{.items[*].status.nodes[?(@.nodeName=="director")].programmed}' | tr ' ' '\n' | grep -c true)"
lab_assert_eq "a programmed status entry on every VirtualService" "$N" "$entries"
hwm="$(mem "$pid" VmHWM)"
echo "BENCH path=cluster services=$N programmed_s=$programmed reported_s=$reported cpu_s=$cpu hwm_kb=$hwm rss_kb=$(mem "$pid" VmRSS) idle_60s_cpu_s=$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", b - a }') idle_60s_passes=$((p1 - p0))"
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
topo_cleanup
lab_summary

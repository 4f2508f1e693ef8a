#!/bin/sh
# The node agent's cost of director elections at 1,000 VIPs, against
# keepalived carrying as many VIPs in as many VRRP instances, and against the
# same agent programming the same VirtualServices with a single director, all
# in one boot (scripts/bench-election.sh runs it; the host has created
# /bench/vs.yaml's VirtualServices, elections at 100 ms adverts with director
# preferred, and the operator has judged them all before this starts).
#
#   election:   `tunlb-agent run` (chart defaults) on director and director2;
#               converged = both program every service, director holds every
#               VIP on tunl0 and is master of every virtual router, director2
#               holds none, and no batch of status entries for 30 s; then
#               a 60 s idle window
#   keepalived: the agents stopped; keepalived in ka1 (master, priority 200)
#               and ka2 (backup, 150) on the same bridge, the same number of
#               VIPs (10.60.x.y on eth0) in as many vrrp_instances as director
#               ran virtual routers, advert_int 0.1; converged = ka1 holds
#               every VIP; then a 60 s idle window
#   single:     director2's label removed (the operator drops every election),
#               director's agent started again; converged = every service
#               programmed, every VIP on tunl0, no virtual router, no batch
#               of status entries for 30 s; then a 60 s idle window
#
# CPU is utime+stime from /proc/PID/stat (keepalived: its parent and its VRRP
# child added up), over the window's length from /proc/uptime; for the
# agents also that of their VRRP thread (tunlb-vrrp), the speakers alone.
# Output: "BENCH path=... key=value..." lines.
. /scenarios/cluster.sh

N="$(grep -c '^kind: VirtualService' /bench/vs.yaml)"
WINDOW=60
KA=/usr/sbin/keepalived
now() { awk '{print $1}' /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# threads PID: "TID COMM TICKS" for each thread of PID.
threads() {
	for _t in /proc/"$1"/task/*; do
		echo "${_t##*/} $(tr ' ' _ <"$_t/comm") $(awk '{ print $14 + $15 }' "$_t/stat")"
	done
}
# thread_cpu NAME BEFORE AFTER: per thread of the window, "THREAD ..." lines.
thread_cpu() {
	echo "$2" >/tmp/threads-before
	echo "$3" | awk -v who="$1" 'NR == FNR { b[$1] = $3; next } { printf "THREAD node=%s tid=%s comm=%s cpu_s=%.2f\n", who, $1, $2, ($3 - b[$1]) / 100 }' /tmp/threads-before -
}
# vrrp_ticks PID: the clock ticks of the agent's VRRP thread (its speakers).
vrrp_ticks() {
	for _t in /proc/"$1"/task/*; do
		[ "$(cat "$_t/comm")" = tunlb-vrrp ] && awk '{ print $14 + $15 }' "$_t/stat" && return
	done
	echo 0
}
mem() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
services() { "$IP" netns exec "$1" ipvsadm -Ln | grep -c '^TCP'; }
# vips NS DEV PREFIX: IPv4 addresses starting with PREFIX on NS's DEV.
vips() { "$IP" -n "$1" -o -4 addr show dev "$2" | grep -c "inet $3"; }
metrics() { ns_exec "$1" curl -s --max-time 10 127.0.0.1:9090/metrics; }
# msum NODE NAME: the sum of NAME over its label sets on NODE's agent.
msum() { metrics "$1" | awk -v m="$2" '$1 == m || index($1, m "{") == 1 { s += $2 } END { printf "%d", s }'; }
# mcount NODE NAME: how many label sets NAME has on NODE's agent.
mcount() { metrics "$1" | awk -v m="$2" 'index($1, m "{") == 1 { c++ } END { printf "%d", c }'; }
# snmp NS FIELD: the namespace's Ip counter FIELD (/proc/net is per namespace).
snmp() {
	ns_exec "$1" cat /proc/net/snmp | awk -v f="$2" '
		$1 == "Ip:" && !h { for (i = 2; i <= NF; i++) if ($i == f) c = i; h = 1; next }
		$1 == "Ip:" { print $c }'
}
# wait_until SECONDS CMD...: polls every 2 s; returns 1 on timeout.
wait_until() {
	_end=$(($(date +%s) + $1))
	shift
	until "$@"; do
		[ "$(date +%s)" -lt "$_end" ] || return 1
		sleep 2
	done
}
# written: the agents' batches of status entries so far (each logged when
# done). Not counted with kubectl: listing 1,000 objects every few seconds
# costs the 1-vCPU guest enough to delay adverts.
written() { cat /tmp/agent-*.log | grep -c "status entries written"; }
# quiet: no batch of status entries for 30 s.
quiet() {
	_q0="$(written)"
	sleep 30
	[ "$_q0" = "$(written)" ]
}
# start NODE: `tunlb-agent run` with the chart's defaults (resync 30 s); $!
# is the agent itself afterwards (ip netns exec and env both exec).
start() {
	"$IP" netns exec "$1" env KUBECONFIG="/kube/agent-$1.kubeconfig" NODE_NAME="$1" TUNLB_LOG=info,kube=warn \
		"$AGENT" run --state-dir "/tmp/state-$1" --metrics-addr 127.0.0.1:9090 \
		>>"/tmp/agent-$1.log" 2>&1 &
}
stop() {
	kill -TERM "$1"
	wait "$1" 2>/dev/null
}
pct() { awk -v c="$1" -v w="$2" 'BEGIN { printf "%.2f", 100 * c / w }'; }
cps() { awk -v c="$1" -v w="$2" 'BEGIN { printf "%.4f", c / w }'; }
rate() { awk -v c="$1" -v w="$2" 'BEGIN { printf "%.1f", c / w }'; }

topo_setup || exit 1
topo_add_ns director2 "$(topo_addr director2)" || exit 1
"$IP" addr add 192.168.56.1/24 dev br0
for n in director director2; do ns_exec "$n" "$IP" route add default via 192.168.56.1; done
echo 1 >/proc/sys/net/ipv4/ip_forward
nft -f - <<'NFT'
table ip labnat {
	chain post { type nat hook postrouting priority srcnat; ip saddr 192.168.56.0/24 oifname "eth0" masquerade; }
}
NFT
echo "bench: $N VirtualServices, kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) vCPU, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"
echo "bench: $("$KA" --version 2>&1 | head -n1)"

# --- election: two directors
t0="$(now)"
start director
PID1=$!
start director2
PID2=$!
routers() { mcount director tunlb_agent_vrrp_master; }
masters() { msum director tunlb_agent_vrrp_master; }
election_converged() {
	[ "$(services director)" -ge "$N" ] && [ "$(services director2)" -ge "$N" ] &&
		[ "$(vips director tunl0 10.50.)" -ge "$N" ] && [ "$(vips director2 tunl0 10.50.)" -eq 0 ] &&
		_r="$(routers)" && [ "$_r" -gt 0 ] && [ "$(masters)" -eq "$_r" ] &&
		[ "$(mcount director2 tunlb_agent_vrrp_master)" -eq "$_r" ] && [ "$(msum director2 tunlb_agent_vrrp_master)" -eq 0 ]
}
lab_assert_eq "election: converged" 0 "$(wait_until 1200 election_converged; echo $?)"
echo "election: converged after $(since "$t0") s"
lab_assert_eq "election: status entries written" 0 "$(wait_until 1200 quiet; echo $?)"
echo "election: no status entries for 30 s, $(since "$t0") s after the start; $(written) batches"
ROUTERS="$(routers)"
echo "election: director runs $ROUTERS virtual routers (vrids $(metrics director | sed -n 's/^tunlb_agent_vrrp_master{.*vrid="\([0-9]*\)".*/\1/p' | sort -n | xargs))"
sleep 5
tr0="$(msum director2 tunlb_agent_vrrp_transitions_total)"
w0="$(now)"
c0="$(ticks "$PID1")" d0="$(ticks "$PID2")"
v0="$(vrrp_ticks "$PID1")" u0="$(vrrp_ticks "$PID2")"
th0="$(threads "$PID1")"
s0="$(msum director tunlb_agent_vrrp_adverts_sent_total)" r0="$(msum director2 tunlb_agent_vrrp_adverts_received_total)"
p0="$(msum director tunlb_agent_sync_duration_seconds_count)" q0="$(msum director2 tunlb_agent_sync_duration_seconds_count)"
sleep "$WINDOW"
c1="$(ticks "$PID1")" d1="$(ticks "$PID2")"
v1="$(vrrp_ticks "$PID1")" u1="$(vrrp_ticks "$PID2")"
thread_cpu director "$th0" "$(threads "$PID1")"
w="$(since "$w0")"
s1="$(msum director tunlb_agent_vrrp_adverts_sent_total)" r1="$(msum director2 tunlb_agent_vrrp_adverts_received_total)"
p1="$(msum director tunlb_agent_sync_duration_seconds_count)" q1="$(msum director2 tunlb_agent_sync_duration_seconds_count)"
lab_assert_eq "election: no transition during the window" "$tr0" "$(msum director2 tunlb_agent_vrrp_transitions_total)"
lab_assert_eq "election: director still holds every VIP" yes "$([ "$(vips director tunl0 10.50.)" -ge "$N" ] && echo yes)"
cpu="$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", (b - a) / 100 }')"
echo "BENCH path=election role=master node=director vips=$N routers=$ROUTERS window_s=$w cpu_s=$cpu cpu_per_s=$(cps "$cpu" "$w") pct_core=$(pct "$cpu" "$w") rss_kb=$(mem "$PID1" VmRSS) hwm_kb=$(mem "$PID1" VmHWM) adverts_sent=$((s1 - s0)) adverts_sent_per_s=$(rate $((s1 - s0)) "$w") passes=$((p1 - p0)) vrrp_thread_cpu_s=$(awk -v a="$v0" -v b="$v1" 'BEGIN { printf "%.2f", (b - a) / 100 }') vrrp_thread_pct_core=$(pct "$(awk -v a="$v0" -v b="$v1" 'BEGIN { printf "%.2f", (b - a) / 100 }')" "$w")"
cpu="$(awk -v a="$d0" -v b="$d1" 'BEGIN { printf "%.2f", (b - a) / 100 }')"
echo "BENCH path=election role=backup node=director2 vips=$N routers=$ROUTERS window_s=$w cpu_s=$cpu cpu_per_s=$(cps "$cpu" "$w") pct_core=$(pct "$cpu" "$w") rss_kb=$(mem "$PID2" VmRSS) hwm_kb=$(mem "$PID2" VmHWM) adverts_received=$((r1 - r0)) adverts_received_per_s=$(rate $((r1 - r0)) "$w") passes=$((q1 - q0)) transitions_before=$tr0 vrrp_thread_cpu_s=$(awk -v a="$u0" -v b="$u1" 'BEGIN { printf "%.2f", (b - a) / 100 }') vrrp_thread_pct_core=$(pct "$(awk -v a="$u0" -v b="$u1" 'BEGIN { printf "%.2f", (b - a) / 100 }')" "$w")"
stop "$PID2"
stop "$PID1"
tail -n 2 /tmp/agent-director.log

# --- keepalived: the same VIPs in as many instances as director's routers
KA1=192.168.56.191 KA2=192.168.56.192
topo_add_ns ka1 "$KA1" || exit 1
topo_add_ns ka2 "$KA2" || exit 1
mkdir -p /run/keepalived
# ka_conf NAME PRIORITY SRC PEER: one vrrp_instance per router, VIPs
# 10.60.x.y dealt out in order, at most ceil(N / ROUTERS) each.
ka_conf() {
	awk -v n="$N" -v r="$ROUTERS" -v name="$1" -v prio="$2" -v src="$3" -v peer="$4" 'BEGIN {
		per = int((n + r - 1) / r)
		printf "global_defs {\n\trouter_id %s\n\tvrrp_version 3\n}\n", name
		for (i = 0; i < r; i++) {
			printf "vrrp_instance VI_%d {\n\tstate BACKUP\n\tinterface eth0\n\tvirtual_router_id %d\n", i + 1, 201 + i
			printf "\tpriority %d\n\tadvert_int 0.1\n\told_unicast_checksum never\n", prio
			printf "\tunicast_src_ip %s\n\tunicast_peer {\n\t\t%s\n\t}\n\tvirtual_ipaddress {\n", src, peer
			for (j = i * per; j < (i + 1) * per && j < n; j++)
				printf "\t\t10.60.%d.%d/32 dev eth0\n", int(j / 250), j % 250 + 1
			printf "\t}\n}\n"
		}
	}' >"/tmp/$1.conf"
}
ka_conf ka1 200 "$KA1" "$KA2"
ka_conf ka2 150 "$KA2" "$KA1"
echo "keepalived: $ROUTERS instances, $(grep -c '/32 dev eth0' /tmp/ka1.conf) VIPs"
t0="$(now)"
for n in ka1 ka2; do
	"$IP" netns exec "$n" "$KA" --dont-fork --log-console --no-syslog --vrrp \
		-f "/tmp/$n.conf" -p "/run/keepalived/$n.pid" -r "/run/keepalived/$n-vrrp.pid" \
		>"/tmp/keepalived-$n.log" 2>&1 &
done
ka_converged() {
	[ "$(vips ka1 eth0 10.60.)" -ge "$N" ] && [ "$(vips ka2 eth0 10.60.)" -eq 0 ] &&
		[ "$(grep -c 'Entering MASTER STATE' /tmp/keepalived-ka1.log)" -ge "$ROUTERS" ] &&
		[ -s /run/keepalived/ka2-vrrp.pid ]
}
lab_assert_eq "keepalived: converged" 0 "$(wait_until 600 ka_converged; echo $?)"
echo "keepalived: converged after $(since "$t0") s"
sleep 15
KP1="$(cat /run/keepalived/ka1.pid)" KV1="$(cat /run/keepalived/ka1-vrrp.pid)"
KP2="$(cat /run/keepalived/ka2.pid)" KV2="$(cat /run/keepalived/ka2-vrrp.pid)"
# kticks PARENT CHILD: keepalived's clock ticks, its parent and its VRRP child.
kticks() { echo $(($(ticks "$1") + $(ticks "$2"))); }
m0="$(grep -c 'Entering' /tmp/keepalived-ka2.log)"
w0="$(now)"
c0="$(kticks "$KP1" "$KV1")" d0="$(kticks "$KP2" "$KV2")"
o0="$(snmp ka1 OutRequests)" i0="$(snmp ka2 InReceives)"
sleep "$WINDOW"
c1="$(kticks "$KP1" "$KV1")" d1="$(kticks "$KP2" "$KV2")"
w="$(since "$w0")"
o1="$(snmp ka1 OutRequests)" i1="$(snmp ka2 InReceives)"
lab_assert_eq "keepalived: no transition during the window" "$m0" "$(grep -c 'Entering' /tmp/keepalived-ka2.log)"
lab_assert_eq "keepalived: ka1 still holds every VIP" yes "$([ "$(vips ka1 eth0 10.60.)" -ge "$N" ] && echo yes)"
# Each namespace carries nothing but VRRP: its IP packet counters are the adverts.
for n in ka1 ka2; do
	if [ "$n" = ka1 ]; then
		role=master kp="$KP1" kv="$KV1" cpu="$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", (b - a) / 100 }')"
		pk="adverts_sent=$((o1 - o0)) adverts_sent_per_s=$(rate $((o1 - o0)) "$w")"
	else
		role=backup kp="$KP2" kv="$KV2" cpu="$(awk -v a="$d0" -v b="$d1" 'BEGIN { printf "%.2f", (b - a) / 100 }')"
		pk="adverts_received=$((i1 - i0)) adverts_received_per_s=$(rate $((i1 - i0)) "$w")"
	fi
	echo "BENCH path=keepalived role=$role node=$n vips=$N routers=$ROUTERS window_s=$w cpu_s=$cpu cpu_per_s=$(cps "$cpu" "$w") pct_core=$(pct "$cpu" "$w") rss_kb=$(mem "$kv" VmRSS) hwm_kb=$(mem "$kv" VmHWM) parent_rss_kb=$(mem "$kp" VmRSS) parent_hwm_kb=$(mem "$kp" VmHWM) $pk"
done
stop "$KP1"
stop "$KP2"

# --- single director: the same VirtualServices, no election
k label node director2 tunlb.io/director-
no_election() { [ -z "$(k get tvs -o jsonpath='{.items[*].status.election.virtualRouterId}')" ]; }
lab_assert_eq "single: the operator dropped every election" 0 "$(wait_until 600 no_election; echo $?)"
t0="$(now)"
start director
PID1=$!
single_converged() {
	[ "$(services director)" -ge "$N" ] && [ "$(vips director tunl0 10.50.)" -ge "$N" ] &&
		_p="$(msum director tunlb_agent_sync_duration_seconds_count)" && [ "$_p" -ge 1 ] &&
		[ "$(mcount director tunlb_agent_vrrp_master)" -eq 0 ]
}
lab_assert_eq "single: converged" 0 "$(wait_until 1200 single_converged; echo $?)"
echo "single: converged after $(since "$t0") s"
lab_assert_eq "single: status entries written" 0 "$(wait_until 300 quiet; echo $?)"
echo "single: no status entries for 30 s, $(since "$t0") s after the start; $(written) batches"
sleep 5
w0="$(now)"
c0="$(ticks "$PID1")" p0="$(msum director tunlb_agent_sync_duration_seconds_count)"
sleep "$WINDOW"
c1="$(ticks "$PID1")" p1="$(msum director tunlb_agent_sync_duration_seconds_count)"
w="$(since "$w0")"
cpu="$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", (b - a) / 100 }')"
echo "BENCH path=single role=director node=director vips=$N routers=$(mcount director tunlb_agent_vrrp_master) window_s=$w cpu_s=$cpu cpu_per_s=$(cps "$cpu" "$w") pct_core=$(pct "$cpu" "$w") rss_kb=$(mem "$PID1" VmRSS) hwm_kb=$(mem "$PID1" VmHWM) passes=$((p1 - p0))"
stop "$PID1"
tail -n 2 /tmp/agent-director.log
lab_summary

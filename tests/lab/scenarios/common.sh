# shellcheck shell=sh
# Shared by the tunlb scenarios: the seed topology plus helpers to run the
# agent in a node's namespace. Sourced inside the lab guest.
set -u
# shellcheck source=../guest/topology.sh
. /lab/topology.sh

AGENT=/usr/local/bin/tunlb-agent
EX=/examples/seed
DIRECTOR=$(topo_addr director)
RS1=$(topo_addr rs1)
RS2=$(topo_addr rs2)
CLIENT=$(topo_addr client)

# agent NS ARGS...: tunlb-agent in NS with that node's own state dir; the
# director namespace carries the director label.
agent() {
	_ns="$1"
	shift
	_cmd="$1"
	shift
	if [ "$_ns" = director ]; then
		ns_exec "$_ns" "$AGENT" "$_cmd" --node "$_ns" --state-dir "/tmp/state-$_ns" --director "$@"
	else
		ns_exec "$_ns" "$AGENT" "$_cmd" --node "$_ns" --state-dir "/tmp/state-$_ns" "$@"
	fi
}

# apply_all FILE...: apply on every node, as a DaemonSet would; prints each
# node's output prefixed by its name.
apply_all() {
	for _n in director rs1 rs2; do
		agent "$_n" apply $(for f in "$@"; do printf -- '-f %s ' "$f"; done) 2>&1 | sed "s/^/[$_n] /"
	done
}

delete_all() {
	for _n in director rs1 rs2; do
		agent "$_n" delete $(for f in "$@"; do printf -- '-f %s ' "$f"; done) 2>&1 | sed "s/^/[$_n] /"
	done
}

# wait_for SECONDS DESCRIPTION CMD...: retries CMD until it succeeds. Its
# variables carry a prefix of their own: CMD runs in this shell, and a
# function that set the same names would end the wait early.
wait_for() {
	_wait_for_s="$1"
	_wait_for_what="$2"
	shift 2
	_wait_for_i=0
	while [ "$_wait_for_i" -lt "$((_wait_for_s * 4))" ]; do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.25
		_wait_for_i=$((_wait_for_i + 1))
	done
	echo "timed out after ${_wait_for_s}s: $_wait_for_what"
	return 1
}

# alternates LIST: "yes" when every answer is rs1 or rs2, no answer repeats
# the previous one and both servers appear; any other answer (ERR:28, a
# timeout) makes it "no".
alternates() {
	_prev=""
	for _w in $1; do
		case "$_w" in rs1 | rs2) ;; *) echo no; return ;; esac
		[ "$_w" = "$_prev" ] && { echo no; return; }
		_prev="$_w"
	done
	case "$1" in *rs1*rs2* | *rs2*rs1*) echo yes ;; *) echo no ;; esac
}

# ipvs_rows NS: "SERVICE DEST FORWARD WEIGHT" lines from ipvsadm -Ln, sorted.
# Firewall-mark services (FWM: the health probes' own) are left out.
ipvs_rows() {
	ns_exec "$1" ipvsadm -Ln | awk '/^(TCP|UDP|SCTP)/ {svc=$1" "$2" "$3; next} /^[A-Z]/ {svc=""} /->/ && svc != "" && $2 ~ /[0-9]/ {print svc" "$2" "$3" "$4}' | sort
}

# agent_rows NS: the same from `tunlb-agent show`.
agent_rows() {
	ns_exec "$1" "$AGENT" show | awk '/^(TCP|UDP|SCTP)/ {svc=$1" "$2" "$3; next} /^[A-Z]/ {svc=""} /->/ && svc != "" && $2 ~ /[0-9]/ {print svc" "$2" "$3" "$4}' | sort
}

start_backends() {
	start_http rs1 rs1 80 || exit 1
	start_http rs2 rs2 80 || exit 1
}

# sysctls NS [IFACE...]: IFACE/NAME:VALUE of every IPv4 per-interface sysctl of
# IFACE (default: all and tunl0), read from /proc as the kernel reports them.
sysctls() {
	_ns="$1"
	shift
	[ $# -gt 0 ] || set -- all tunl0
	for _i in "$@"; do
		# cd inside NS: /proc/sys/net shows the namespace of whoever looks it up.
		ns_exec "$_ns" sh -c "cd /proc/sys/net/ipv4/conf && grep -H '' $_i/*"
	done
}

# ipvs_conns NS: "SERVICE-OR-DEST CONNS" from ipvsadm --stats. Conns counts the
# connections scheduled since the service or destination was added: deleting
# and re-adding a service resets it, an edit in place keeps it. (A destination
# deleted while connections still use it waits in IPVS's trash and comes back
# with its counters when re-added, so for destinations the reset shows only
# once their connections are gone.)
ipvs_conns() {
	ns_exec "$1" ipvsadm -Ln --stats | awk '/^(TCP|UDP|SCTP)/ {svc = 1; print $1, $2, $3; next} /^[A-Z]/ {svc = 0} /->/ && svc && $2 ~ /[0-9]/ {print "->", $2, $3}'
}

# ipvs_conns_settled NS: ipvs_conns once the counters have caught up. IPVS
# folds its per-CPU counters into what it reports on a 2-second timer, so a
# connection made just before shows up to 2 s late: read until three reads a
# second apart (spanning a timer tick) agree.
ipvs_conns_settled() {
	_prev="$(ipvs_conns "$1")"
	[ -n "$_prev" ] || return 0
	_same=0
	_i=0
	while [ "$_same" -lt 2 ] && [ "$_i" -lt 30 ]; do
		sleep 1
		_cur="$(ipvs_conns "$1")"
		if [ "$_cur" = "$_prev" ]; then
			_same=$((_same + 1))
		else
			_same=0
			_prev="$_cur"
		fi
		_i=$((_i + 1))
	done
	echo "$_prev"
}

# service_conns NS VIP:PORT: the service's Conns counter as reported now.
service_conns() {
	ipvs_conns "$1" | awk -v s="$2" '$1 != "->" && $2 == s {print $3}'
}

# service_conns_above NS VIP:PORT N: the service has counted more than N.
service_conns_above() {
	_c="$(service_conns "$1" "$2")"
	[ -n "$_c" ] && [ "$_c" -gt "$3" ]
}

# kernel_state NS: what an outside observer sees of NS's data plane. IPVS
# rows without ActiveConn/InActConn (those follow connection timers, not
# writes) but with each service's and destination's Conns counter, every
# address and link, the nft ruleset and every IPv4 sysctl. Equal snapshots
# around an action mean it changed nothing visible; equal Conns mean no
# service was deleted and re-added (see ipvs_conns). Packet and byte counters are left out: the last
# packets of finished requests still arrive after their clients return. The
# health probes' mark services are listed, their counters are not: probes
# keep running.
kernel_state() {
	echo "## ipvsadm -Ln"
	ns_exec "$1" ipvsadm -Ln | awk '/->/ && $2 ~ /[0-9]/ {print $1, $2, $3, $4; next} {print}'
	echo "## ipvsadm -Ln --stats (Conns)"
	ipvs_conns_settled "$1"
	echo "## ip -o addr"
	ns_exec "$1" "$IP" -o addr show
	echo "## ip -o link"
	ns_exec "$1" "$IP" -o link show
	echo "## nft list ruleset"
	ns_exec "$1" nft list ruleset
	echo "## sysctls"
	# One grep for all of them: a process per file costs seconds under TCG.
	ns_exec "$1" sh -c 'cd /proc/sys/net/ipv4 && grep -H "" ip_forward conf/*/* vs/* 2>/dev/null'
}

# watch_start NS...: `ip monitor` (links, addresses, routes, netconf, which
# reports rp_filter changes) and `nft monitor` in the background in each NS.
# Returns once every monitor has reported a marker, so no later event is missed.
watch_start() {
	WATCHED="$*"
	WATCH_PIDS=""
	for _n in "$@"; do
		# Not through ns_exec: $! must be the monitor itself, to stop it.
		"$IP" netns exec "$_n" "$IP" -o monitor link address route netconf >"/tmp/watch-ip-$_n" 2>&1 &
		WATCH_PIDS="$WATCH_PIDS $!"
		"$IP" netns exec "$_n" nft monitor >"/tmp/watch-nft-$_n" 2>&1 &
		WATCH_PIDS="$WATCH_PIDS $!"
	done
	for _n in "$@"; do watch_mark "$_n" wstart; done
}

# watch_mark NS NAME: a dummy link and an nft table called NAME, created and
# deleted until both of NS's monitors have reported them (a monitor that is
# not subscribed yet misses the first ones).
watch_mark() {
	_i=0
	while [ "$_i" -lt 20 ]; do
		ns_exec "$1" "$IP" link add "$2" type dummy && ns_exec "$1" "$IP" link del "$2"
		ns_exec "$1" nft "add table ip $2; delete table ip $2"
		_j=0
		while [ "$_j" -lt 10 ]; do
			grep -q "$2" "/tmp/watch-ip-$1" && grep -q "$2" "/tmp/watch-nft-$1" && return 0
			sleep 0.1
			_j=$((_j + 1))
		done
		_i=$((_i + 1))
	done
	echo "$1: the monitors never reported the marker $2"
	return 1
}

# watch_stop: marks the end in every watched namespace, stops the monitors and
# prints each event seen between the last start marker and the first end
# marker as "NS ip|nft: EVENT"; nothing when the kernel saw no change.
watch_stop() {
	for _n in $WATCHED; do watch_mark "$_n" wend; done
	for _p in $WATCH_PIDS; do kill "$_p" 2>/dev/null; done
	for _n in $WATCHED; do
		for _m in ip nft; do
			# The generation line that ends a marker's own nft transaction is not an event.
			awk -v p="$_n $_m: " '/wend/ && s {printf "%s", buf; ok = 1; exit}
				/wstart/ {buf = ""; s = 1; g = 1; next}
				/^# new generation/ && g {g = 0; next}
				{g = 0; buf = buf p $0 "\n"}
				END {if (!ok) print p "no start and end markers: the monitor did not watch"}' "/tmp/watch-$_m-$_n"
		done
	done
}

# ipvs_calls_start: from now on, counts calls of the kernel functions that
# add, edit and remove IPVS services and destinations (kprobes on the ip_vs
# module: an observer outside tunlb, which sees a delete + re-add that
# leaves the table and its counters looking the same).
TRACING=/sys/kernel/tracing
IPVS_FNS="ip_vs_add_service ip_vs_edit_service ip_vs_unlink_service ip_vs_add_dest ip_vs_edit_dest ip_vs_del_dest"
ipvs_calls_start() {
	[ -d "$TRACING/events" ] || mount -t tracefs nodev "$TRACING" || return 1
	echo 0 >"$TRACING/tracing_on"
	if ! grep -q '^p:tlb/' "$TRACING/kprobe_events" 2>/dev/null; then
		for _f in $IPVS_FNS; do
			echo "p:tlb/$_f ip_vs:$_f" >>"$TRACING/kprobe_events" || return 1
		done
	fi
	echo >"$TRACING/trace"
	echo 1 >"$TRACING/events/tlb/enable"
	echo 1 >"$TRACING/tracing_on"
}

# ipvs_calls_stop: stops counting; prints "FUNCTION COUNT" for each function
# called since ipvs_calls_start, sorted; nothing when none was.
ipvs_calls_stop() {
	echo 0 >"$TRACING/tracing_on"
	echo 0 >"$TRACING/events/tlb/enable"
	grep -v '^#' "$TRACING/trace" | grep -o ' ip_vs_[a-z_]*:' | tr -d ' :' | sort | uniq -c | awk '{print $2, $1}'
}

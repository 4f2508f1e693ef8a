# shellcheck shell=sh
# Shared by the cluster scenarios (e2e, demo-cluster): the seed topology whose
# namespaces reach the host's API server, and helpers for kubectl and agents.
# Expects /kube/admin.kubeconfig and /kube/agent-NODE.kubeconfig per node
# (https://10.0.2.2:PORT; each agent token is bound to its Node).
. /scenarios/common.sh
export KUBECONFIG=/kube/admin.kubeconfig
k() { kubectl --request-timeout=20s "$@"; }

# start_agent NODE [RESYNC_SECONDS]: `tunlb-agent run` in NODE's namespace
# with the agent's ServiceAccount, resyncing every 3 s unless told otherwise;
# AGENT_ENV adds VAR=VALUE words to its environment.
# Not through the ns_exec function: a backgrounded function is a subshell, and
# $! must be the agent itself (ip netns exec and env both exec).
start_agent() {
	# shellcheck disable=SC2086 # one word per variable
	"$IP" netns exec "$1" env KUBECONFIG="/kube/agent-$1.kubeconfig" NODE_NAME="$1" TUNLB_LOG=info,kube=warn ${AGENT_ENV:-} \
		"$AGENT" run --state-dir "/tmp/state-$1" --resync-seconds "${2:-3}" --metrics-addr 127.0.0.1:9090 \
		>>"/tmp/agent-$1.log" 2>&1 &
	eval "AGENT_PID_$1=$!"
}

# metric NODE NAME: the value of NAME on NODE's agent /metrics (empty while it
# does not answer).
metric() {
	ns_exec "$1" curl -s --max-time 5 127.0.0.1:9090/metrics | awk -v m="$2" '$1 == m {print $2}'
}

# passes_at_least NODE N: NODE's agent has completed N sync passes (the
# counter is recorded when a pass has finished writing).
passes_at_least() {
	_p="$(metric "$1" tunlb_agent_sync_duration_seconds_count)"
	[ -n "$_p" ] && [ "$_p" -ge "$2" ]
}

# now_ms: wall clock in ms into $NOW. Busybox date has no %N; its ts applet
# prints microseconds ("1795644204.360290 ").
now_ms() {
	_t="$(echo | ts '%.s')"
	_u="${_t#*.}"
	_u="${_u%% *}"
	NOW=$((${_t%%.*} * 1000 + 1${_u%???} - 1000))
}

# cpu_settle: waits (up to 20 s) until the guest's single vCPU is idle: two
# consecutive 0.25 s windows of /proc/stat with >= 80% idle. Timed steps of
# the benchmarks start from there, so that none pays for another's (or its
# own previous step's) trailing work, e.g. agent passes woken by status
# writes. Sets SETTLED to the ms it waited.
cpu_times() {
	read -r _c _u _n _s _i _w _q _sq _st _rest </proc/stat
	IDLE=$((_i + _w))
	TOTAL=$((_u + _n + _s + _i + _w + _q + _sq + _st))
}
cpu_settle() {
	now_ms
	_s0=$NOW
	_ok=0
	_k=0
	cpu_times
	_pi=$IDLE
	_pt=$TOTAL
	while [ "$_ok" -lt 2 ] && [ "$_k" -lt 80 ]; do
		sleep 0.25
		cpu_times
		_di=$((IDLE - _pi))
		_dt=$((TOTAL - _pt))
		_pi=$IDLE
		_pt=$TOTAL
		if [ "$_dt" -gt 0 ] && [ $((_di * 100)) -ge $((_dt * 80)) ]; then _ok=$((_ok + 1)); else _ok=0; fi
		_k=$((_k + 1))
	done
	now_ms
	SETTLED=$((NOW - _s0))
}

# hostport ADDRESS PORT: ADDRESS:PORT as ipvsadm writes it ([v6]:port).
hostport() {
	case "$1" in *:*) echo "[$1]:$2" ;; *) echo "$1:$2" ;; esac
}

# weighted TVS...: the director's IPVS holds every real server of these
# VirtualServices, on each of their ports, at the weight status.realServers
# gives it. A real server on a node gets its weight once that node's agent
# has programmed it, in a status write that the director applies on its next
# pass: Ready can come that pass before the weights reach the kernel.
weighted() {
	_rows="$(ipvs_rows director)"
	# One kubectl for all: under TCG each one costs the guest seconds.
	_objs="$(k get tvs -o jsonpath='{range .items[*]}{.metadata.name}|{.spec.vip}|{.spec.ports[*].port}|{range .status.realServers[*]}{.address}={.weight} {end}{"\n"}{end}')" || return 1
	for _name in "$@"; do
		_line="$(echo "$_objs" | grep "^$_name|")" || return 1
		_vip="$(echo "$_line" | cut -d'|' -f2)"
		_ports="$(echo "$_line" | cut -d'|' -f3)"
		_rs="$(echo "$_line" | cut -d'|' -f4)"
		[ -n "$_rs" ] || return 1
		for _p in $_ports; do
			for _r in $_rs; do
				echo "$_rows" | awk -v s="$(hostport "$_vip" "$_p")" -v d="$(hostport "${_r%=*}" "$_p")" -v w="${_r#*=}" \
					'$2 == s && $4 == d && $6 == w { found = 1 } END { exit !found }' || return 1
			done
		done
	done
}

# api_outage_start / api_outage_end: the nodes' packets to and from the API
# server (the host, 10.0.2.2) vanish, as when its host is down; kubectl from
# the guest's root namespace still works.
api_outage_start() {
	nft -f - <<'NFT'
table ip outage {
	chain cut {
		type filter hook forward priority filter;
		ip saddr 192.168.56.0/24 ip daddr 10.0.2.2 drop
		ip saddr 10.0.2.2 ip daddr 192.168.56.0/24 drop
	}
}
NFT
}
api_outage_end() { nft delete table ip outage; }

# cluster_setup: topology, the backends' HTTP servers, the nodes' route to the
# host's API server (through the guest's root namespace) and an agent per node.
cluster_setup() {
	topo_setup || exit 1
	start_backends
	"$IP" addr add 192.168.56.1/24 dev br0
	for n in director rs1 rs2 client; do ns_exec "$n" "$IP" route add default via 192.168.56.1; done
	echo 1 >/proc/sys/net/ipv4/ip_forward
	nft -f - <<'NFT'
table ip labnat {
	chain post { type nat hook postrouting priority srcnat; ip saddr 192.168.56.0/24 oifname "eth0" masquerade; }
}
NFT
	for n in director rs1 rs2; do start_agent "$n"; done
}

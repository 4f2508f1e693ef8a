# shellcheck shell=sh
# Shared by the cluster scenarios (e2e, demo-cluster): the seed topology whose
# namespaces reach the host's API server, and helpers for kubectl and agents.
# Expects /kube/admin.kubeconfig and /kube/agent.kubeconfig (https://10.0.2.2:PORT).
. /scenarios/common.sh
export KUBECONFIG=/kube/admin.kubeconfig
k() { kubectl --request-timeout=20s "$@"; }

# start_agent NODE [RESYNC_SECONDS]: `tunlb-agent run` in NODE's namespace
# with the agent's ServiceAccount, resyncing every 3 s unless told otherwise.
# Not through the ns_exec function: a backgrounded function is a subshell, and
# $! must be the agent itself (ip netns exec and env both exec).
start_agent() {
	"$IP" netns exec "$1" env KUBECONFIG=/kube/agent.kubeconfig NODE_NAME="$1" TUNLB_LOG=info,kube=warn \
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

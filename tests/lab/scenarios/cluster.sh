# shellcheck shell=sh
# Shared by the cluster scenarios (e2e, demo-cluster): the seed topology whose
# namespaces reach the host's API server, and helpers for kubectl and agents.
# Expects /kube/admin.kubeconfig and /kube/agent.kubeconfig (https://10.0.2.2:PORT).
. /scenarios/common.sh
export KUBECONFIG=/kube/admin.kubeconfig
k() { kubectl --request-timeout=20s "$@"; }

# wait_for SECONDS DESCRIPTION CMD...: retries CMD until it succeeds.
wait_for() {
	_t="$1"
	_d="$2"
	shift 2
	_i=0
	while [ "$_i" -lt "$((_t * 4))" ]; do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.25
		_i=$((_i + 1))
	done
	echo "timed out after ${_t}s: $_d"
	return 1
}

# start_agent NODE: `tunlb-agent run` in NODE's namespace with the agent's
# ServiceAccount. Not through the ns_exec function: a backgrounded function is
# a subshell, and $! must be the agent itself (ip netns exec and env both exec).
start_agent() {
	"$IP" netns exec "$1" env KUBECONFIG=/kube/agent.kubeconfig NODE_NAME="$1" TUNLB_LOG=info,kube=warn \
		"$AGENT" run --state-dir "/tmp/state-$1" --resync-seconds 3 --metrics-addr 127.0.0.1:9090 \
		>>"/tmp/agent-$1.log" 2>&1 &
	eval "AGENT_PID_$1=$!"
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

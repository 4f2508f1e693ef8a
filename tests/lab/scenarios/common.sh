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

# alternates LIST: "yes" when no answer repeats the previous one and both servers appear.
alternates() {
	_prev=""
	for _w in $1; do
		[ "$_w" = "$_prev" ] && { echo no; return; }
		_prev="$_w"
	done
	case "$1" in *rs1*rs2* | *rs2*rs1*) echo yes ;; *) echo no ;; esac
}

# ipvs_rows NS: "SERVICE DEST FORWARD WEIGHT" lines from ipvsadm -Ln, sorted.
ipvs_rows() {
	ns_exec "$1" ipvsadm -Ln | awk '/^(TCP|UDP|SCTP)/ {svc=$1" "$2" "$3} /->/ && $2 ~ /[0-9]/ {print svc" "$2" "$3" "$4}' | sort
}

# agent_rows NS: the same from `tunlb-agent show`.
agent_rows() {
	ns_exec "$1" "$AGENT" show | awk '/^(TCP|UDP|SCTP)/ {svc=$1" "$2" "$3} /->/ && $2 ~ /[0-9]/ {print svc" "$2" "$3" "$4}' | sort
}

start_backends() {
	start_http rs1 rs1 80 || exit 1
	start_http rs2 rs2 80 || exit 1
}

#!/bin/sh
# End to end through Kubernetes: a Service whose ready endpoints come and go,
# several of them on one node. Pods are network namespaces behind rs1 and
# rs2 (on a bridge per node holding the pod subnet's gateway, as a bridge
# CNI's cni0 does), each serving its own name on :8080. The operator makes
# each node with ready endpoints one real server weighted by their number;
# that node's agent spreads VIP:80 over them with an nft numgen map. Checked
# as a user sees it: director weights, each node's nft table, which pods
# answer, status.nodes. Also: with nft_numgen missing from the kernel, rs1's
# status names the module, the operator takes rs1 out (weight 0) while it
# reports that failure, and once the module can be loaded again rs1
# programs and comes back.
. /scenarios/cluster.sh
cluster_setup

SVIP=192.168.56.190
URL="http://$SVIP/"

# cni_bridge NODE GATEWAY: NODE's pod bridge, holding the gateway address.
# With arp_ignore=1 (set by the agent on backends) a node answers ARP only
# for addresses on the asking interface: the bridge is that interface.
cni_bridge() {
	ns_exec "$1" "$IP" link add cni0 type bridge forward_delay 0 stp_state 0
	ns_exec "$1" "$IP" addr add "$2/24" dev cni0
	ns_exec "$1" "$IP" link set cni0 up
	ns_exec "$1" sh -c "echo 1 > /proc/sys/net/ipv4/ip_forward"
}

# Pods a1..a6 live on rs1 (10.244.1.11..16), b1 and b2 on rs2 (10.244.2.11..12).
pod_node() { case "$1" in a*) echo rs1 ;; b*) echo rs2 ;; esac; }
pod_ip() { case "$1" in a*) echo "10.244.1.1${1#a}" ;; b*) echo "10.244.2.1${1#b}" ;; esac; }

# add_pod NAME: a pod namespace on its node's bridge, answering NAME on :8080.
add_pod() {
	_node="$(pod_node "$1")"
	"$IP" netns add "$1"
	"$IP" link add "p-$1" type veth peer name eth0 netns "$1"
	"$IP" link set "p-$1" netns "$_node"
	ns_exec "$_node" "$IP" link set "p-$1" master cni0 up
	ns_exec "$1" "$IP" addr add "$(pod_ip "$1")/24" dev eth0
	ns_exec "$1" "$IP" link set eth0 up
	ns_exec "$1" "$IP" link set lo up
	ns_exec "$1" "$IP" route add default via "${2:-10.244.1.1}"
	start_http "$1" "$1" 8080
}

# slice ENDPOINT...: applies EndpointSlice shop-1 with these endpoints; an
# endpoint is a pod name, or NAME:false for a pod that is not ready.
slice() {
	{
		cat <<'YAML'
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: shop-1
  labels: {kubernetes.io/service-name: shop}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
YAML
		[ $# -gt 0 ] || echo "endpoints: []"
		[ $# -gt 0 ] && echo "endpoints:"
		for _e in "$@"; do
			_p="${_e%%:*}"
			_ready=true
			[ "$_e" = "$_p:false" ] && _ready=false
			echo "- {addresses: [$(pod_ip "$_p")], nodeName: $(pod_node "$_p"), conditions: {ready: $_ready}}"
		done
	} | k apply -f - >/dev/null
}

# dests: the director's real servers of SVIP:80 as "ADDRESS:PORT WEIGHT ...".
dests() { ipvs_rows director | awk -v s="$SVIP:80" '$2 == s {print $4, $6}' | tr '\n' ' ' | sed 's/ $//'; }
dests_are() { [ "$(dests)" = "$1" ]; }

# rule NODE: NODE's rule for SVIP:80 in table ip tunlb, as nft lists it.
rule() { ns_exec "$1" nft list table ip tunlb 2>/dev/null | grep "daddr $SVIP " | sed 's/^[[:space:]]*//'; }
rule_is() { [ "$(rule "$1")" = "$2" ]; }

# expected_rule POD...: the rule that DNATs VIP:80 to these pods' :8080: one
# target directly, several through a numgen map, in address order.
expected_rule() {
	if [ $# -eq 1 ]; then
		echo "ip daddr $SVIP tcp dport 80 dnat to $(pod_ip "$1"):8080"
		return
	fi
	_map=""
	_i=0
	for _p in "$@"; do
		_map="$_map${_map:+, }$_i : $(pod_ip "$_p") . 8080"
		_i=$((_i + 1))
	done
	echo "ip daddr $SVIP tcp dport 80 dnat ip to numgen inc mod $# map { $_map }"
}

# programmed: "NODE=PROGRAMMED ..." from status.nodes, sorted by node.
programmed() {
	k get tvs shop -o jsonpath='{range .status.nodes[*]}{.nodeName}={.programmed}{"\n"}{end}' | sort | tr '\n' ' ' | sed 's/ $//'
}
programmed_is() { [ "$(programmed)" = "$1" ]; }
node_message() { k get tvs shop -o jsonpath="{.status.nodes[?(@.nodeName==\"$1\")].message}"; }

# from PREFIX N: GETs through the VIP until N answers came from pods whose
# names start with PREFIX (at most 3N tries); prints every answer.
from() {
	_want="$2"
	_got=0
	_tries=0
	_out=""
	while [ "$_got" -lt "$_want" ] && [ "$_tries" -lt $((3 * _want)) ]; do
		_a="$(request client "$URL")"
		_out="$_out $_a"
		case "$_a" in "$1"*) _got=$((_got + 1)) ;; esac
		_tries=$((_tries + 1))
	done
	echo "${_out# }"
}

# tally PREFIX LIST: "NAME:COUNT ..." of the answers in LIST that start with
# PREFIX, by name; "ERR" and other answers are counted under their own words.
tally() {
	for _w in $2; do echo "$_w"; done | grep "^$1" | sort | uniq -c | awk '{printf "%s%s:%s", (NR > 1 ? " " : ""), $2, $1}'
}

# settled DESCRIPTION DESTS RS1_RULE RS2_RULE NODES: waits for the director's
# real servers, both nodes' rules and status.nodes, asserting each.
settled() {
	lab_assert_eq "$1: director real servers and weights" 0 \
		"$(wait_for 40 "dests $2" dests_are "$2"; echo $?)"
	lab_assert_eq "$1: rs1's DNAT" 0 "$(wait_for 40 "rs1 rule $3" rule_is rs1 "$3"; echo $?)"
	lab_assert_eq "$1: rs2's DNAT" 0 "$(wait_for 40 "rs2 rule $4" rule_is rs2 "$4"; echo $?)"
	lab_assert_eq "$1: status.nodes programmed" 0 \
		"$(wait_for 40 "status $5" programmed_is "$5"; echo $?)"
	echo "[$(($(date +%s) - t0)) s] $1: $(dests) | rs1: $(rule rs1) | rs2: $(rule rs2) | $(programmed)"
}

t0=$(date +%s)
cni_bridge rs1 10.244.1.1
cni_bridge rs2 10.244.2.1
for p in a1 a2 a3 a4 a5; do add_pod "$p" 10.244.1.1 || exit 1; done
add_pod b1 10.244.2.1 || exit 1
add_pod b2 10.244.2.1 || exit 1
echo "pods up after $(($(date +%s) - t0)) s"

# 1. One ready endpoint per node: one target each, no numgen.
slice a1 b1
k apply -f - <<YAML
apiVersion: v1
kind: Service
metadata: {name: shop}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata: {name: shop}
spec:
  vip: $SVIP
  ports: [{port: 80}]
  scheduler: wrr
  drainTimeoutSeconds: 30
  # Health probes are connections too: each would take a step of a node's
  # numgen rotation, and this scenario counts the rotation exactly.
  healthCheck: {type: none}
  backends: {service: {name: shop}}
YAML
lab_assert_eq "shop becomes Ready" 0 "$(k wait --for=condition=Ready tvs/shop --timeout=90s >/dev/null 2>&1; echo $?)"
settled "1 endpoint on rs1" "$RS1:80 1 $RS2:80 1" "$(expected_rule a1)" "$(expected_rule b1)" \
	"director=true rs1=true rs2=true"
got="$(from a 4)"
echo "1+1 endpoints -> $got"
lab_assert_eq "rs1's one endpoint answers" "a1:4" "$(tally a "$got")"
lab_assert_eq "rs2's one endpoint answers" 0 "$(echo "$got" | grep -q b1; echo $?)"

# 2. nft_numgen missing: unloaded (no rule uses it now) and its file moved
#    away, so the kernel cannot load it on demand either. A second endpoint
#    on rs1 needs it: rs1's status names the module and rs1 is not
#    programmed; its old table stays whole (nft transactions are atomic).
#    A node that reports a failure is taken out: status.realServers holds
#    rs1 at weight 0 (still ready) until it programs, so the director sends
#    every new connection to rs2.
ko="$(find "/lib/modules/$(uname -r)" -name nft_numgen.ko)"
mv "$ko" /tmp/nft_numgen.ko.away
lab_assert_eq "nft_numgen unloaded" 0 "$(rmmod nft_numgen; echo $?)"
slice a1 a2 b1
msg_names_numgen() { node_message rs1 | grep -q "kernel module nft_numgen"; }
lab_assert_eq "rs1's status names the missing module" 0 \
	"$(wait_for 40 "rs1 names nft_numgen" msg_names_numgen; echo $?)"
msg="$(node_message rs1)"
echo "rs1 status message: $msg"
lab_assert_eq "rs1 says which module and what needs it" \
	"port mapping: kernel module nft_numgen is not available (needed to spread $SVIP:80 over several local endpoints)" "$msg"
lab_assert_eq "rs1 is not programmed; the others are" "director=true rs1=false rs2=true" "$(programmed)"
ready="$(k get tvs shop -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].reason}')"
lab_assert_eq "shop is not Ready: ProgramFailed" "False ProgramFailed" "$ready"
lab_assert_contains "Ready's message names the node and the module" "node rs1: port mapping: kernel module nft_numgen is not available" \
	"$(k get tvs shop -o jsonpath='{.status.conditions[?(@.type=="Ready")].message}')"
lab_assert_eq "the director takes rs1 out: weight 0" 0 \
	"$(wait_for 40 "rs1 at weight 0" dests_are "$RS1:80 0 $RS2:80 1"; echo $?)"
lab_assert_eq "status.realServers: rs1 at weight 0 and still ready" "0 true" \
	"$(k get tvs shop -o jsonpath='{.status.realServers[?(@.nodeName=="rs1")].weight} {.status.realServers[?(@.nodeName=="rs1")].ready}')"
lab_assert_eq "rs1 keeps its previous rule" "$(expected_rule a1)" "$(rule rs1)"
got="$(requests 4 "$URL")"
echo "nft_numgen missing -> $got"
lab_assert_eq "every answer comes from rs2's b1" "b1:4" "$(tally "" "$got")"
lab_assert_contains "the agent log names the module" "nft_numgen" "$(grep 'kernel modules the table needs' /tmp/agent-rs1.log | tail -1)"

# 3. The module file is back: nobody loads it by hand, the kernel loads it
#    on demand during the agent's next pass, rs1 programs both endpoints and
#    gets its weight back.
mv /tmp/nft_numgen.ko.away "$ko"
settled "2 endpoints on rs1" "$RS1:80 2 $RS2:80 1" "$(expected_rule a1 a2)" "$(expected_rule b1)" \
	"director=true rs1=true rs2=true"
lab_assert_eq "the kernel loaded nft_numgen on demand" 0 "$([ -d /sys/module/nft_numgen ]; echo $?)"
lab_assert_eq "rs1's message is cleared" "" "$(node_message rs1)"
lab_assert_eq "shop Ready again" 0 "$(k wait --for=condition=Ready tvs/shop --timeout=30s >/dev/null 2>&1; echo $?)"
got="$(from a 6)"
echo "2+1 endpoints -> $got"
lab_assert_eq "numgen alternates rs1's two endpoints" "a1:3 a2:3" "$(tally a "$got")"
lab_assert_eq "rs2 answers too" 0 "$(echo "$got" | grep -q b1; echo $?)"

# 4. Five ready endpoints on rs1: weight 5, a map over exactly those five,
#    and numgen inc is round robin per new connection: 10 connections that
#    land on rs1 reach each pod exactly twice.
slice a1 a2 a3 a4 a5 b1
settled "5 endpoints on rs1" "$RS1:80 5 $RS2:80 1" "$(expected_rule a1 a2 a3 a4 a5)" "$(expected_rule b1)" \
	"director=true rs1=true rs2=true"
got="$(from a 10)"
echo "5+1 endpoints -> $got"
lab_assert_eq "10 connections on rs1: each of its 5 pods twice" "a1:2 a2:2 a3:2 a4:2 a5:2" "$(tally a "$got")"
lab_assert_eq "rs2's endpoint answers its share" 0 "$(echo "$got" | grep -q b1; echo $?)"
lab_assert_eq "no request failed" "" "$(tally ERR "$got")"

# 5. a3 becomes not ready: weight 4, the map loses it, no request reaches it.
slice a1 a2 a3:false a4 a5 b1
settled "a3 not ready" "$RS1:80 4 $RS2:80 1" "$(expected_rule a1 a2 a4 a5)" "$(expected_rule b1)" \
	"director=true rs1=true rs2=true"
got="$(from a 12)"
echo "a3 not ready -> $got"
lab_assert_eq "12 connections on rs1: its 4 ready pods three times each, a3 never" \
	"a1:3 a2:3 a4:3 a5:3" "$(tally a "$got")"

# 6. rs2 loses its only endpoint: it is no longer a real server. The
#    director first keeps it at weight 0 while its connections drain
#    (drainTimeoutSeconds 30: the connections of step 5 linger in IPVS as
#    TIME_WAIT entries, so the drain lasts its whole time), then removes it;
#    rs2 withdraws its VIP, its table and its status entry. Requests answer
#    from rs1. Weight 0 and the status are read together, while the drain
#    lasts.
slice a1 a2 a3:false a4 a5
draining_rs2() { [ "$(k get tvs shop -o jsonpath='{.status.nodes[?(@.nodeName=="director")].draining[*]}')" = "$RS2:80" ]; }
rs2_draining() { dests_are "$RS1:80 4 $RS2:80 0" && draining_rs2; }
lab_assert_eq "rs2 drains at weight 0 first, and the director's status lists it as draining" 0 \
	"$(wait_for 25 "rs2 at weight 0 and listed as draining" rs2_draining; echo $?)"
lab_assert_eq "rs2 is removed once its drain time is up" 0 \
	"$(wait_for 60 "rs2 removed" dests_are "$RS1:80 4"; echo $?)"
settled "no endpoint on rs2" "$RS1:80 4" "$(expected_rule a1 a2 a4 a5)" "" "director=true rs1=true"
lab_assert_eq "rs2 holds no VIP on tunl0" "" "$(ns_exec rs2 "$IP" -o addr show dev tunl0 | grep "$SVIP")"
lab_assert_eq "rs2 has no tunlb table" "" "$(ns_exec rs2 nft list tables | grep tunlb)"
got="$(from a 8)"
echo "rs2 without endpoints -> $got"
lab_assert_eq "every answer from rs1's ready pods" "a1:2 a2:2 a4:2 a5:2" "$(tally "" "$got")"

# 7. New endpoints: pod a6 starts on rs1, b2 on rs2. Both appear: rs1's
#    weight and map grow, rs2 is a real server again (at weight 0 until its
#    agent has programmed it once more).
#    A client loop runs while rs2 joins: since rs2 gets weight only once its
#    agent reports shop programmed, no request fails.
add_pod a6 10.244.1.1 || exit 1
(while :; do request client "$URL"; sleep 0.2; done) >/tmp/join-loop.log 2>&1 &
join_loop=$!
slice a1 a2 a3:false a4 a5 a6 b2
settled "new endpoints a6, b2" "$RS1:80 5 $RS2:80 1" "$(expected_rule a1 a2 a4 a5 a6)" "$(expected_rule b2)" \
	"director=true rs1=true rs2=true"
kill "$join_loop"
wait "$join_loop" 2>/dev/null
echo "while rs2 joined: $(wc -l </tmp/join-loop.log) requests, answers $(sort /tmp/join-loop.log | uniq -c | awk '{printf "%s:%s ", $2, $1}')"
lab_assert_eq "the client loop ran while rs2 joined" 0 "$([ "$(wc -l </tmp/join-loop.log)" -gt 0 ]; echo $?)"
lab_assert_eq "no request failed while rs2 joined" "" "$(grep '^ERR' /tmp/join-loop.log | tr '\n' ' ')"
got="$(from a 10)"
echo "a6 and b2 added -> $got"
lab_assert_eq "the new pod answers with the others" "a1:2 a2:2 a4:2 a5:2 a6:2" "$(tally a "$got")"
lab_assert_eq "rs2 answers from its new pod" 0 "$(echo "$got" | grep -q b2; echo $?)"
lab_assert_eq "and never from its old one" "" "$(tally b1 "$got")"

# 8. Delete: every node lets go.
k delete tvs shop --timeout=60s >/dev/null
lab_assert_eq "no tunlb table left on rs1" 0 \
	"$(wait_for 30 "rs1 table gone" sh -c "! $IP netns exec rs1 nft list tables | grep -q tunlb"; echo $?)"

echo "scenario took $(($(date +%s) - t0)) s after the cluster setup"
for n in director rs1 rs2; do echo "--- agent $n log (tail)"; tail -5 "/tmp/agent-$n.log"; done
topo_cleanup
lab_summary

#!/bin/sh
# End to end through Kubernetes: the API server and the operator run on the
# host; in the guest, namespaces director/rs1/rs2 are the cluster's Nodes,
# each running `tunlb-agent run` with the chart's agent ServiceAccount token.
# Users act with kubectl (admin). Expects /kube/admin.kubeconfig and
# /kube/agent-NODE.kubeconfig (server https://10.0.2.2:PORT).
. /scenarios/cluster.sh
cluster_setup

# 1. kubectl apply the seed; READY once every director and backend programmed it.
k apply -f /examples/seed/
lab_assert_eq "kubectl wait Ready for all seed VirtualServices" 0 \
	"$(k wait --for=condition=Ready tvs --all --timeout=90s >/dev/null 2>&1; echo $?)"
k get tvs
lab_assert_eq "the director weights every seed real server as its status says" 0 \
	"$(wait_for 30 "seed weights in IPVS" weighted web mapped eth-vip; echo $?)"
lab_assert_contains "web: rs1 and rs2 at weight 1" "TCP $VIP:80 wrr $RS1:80 Tunnel 1" "$(ipvs_rows director | grep "$RS1:80")"
lab_assert_eq "web status lists the three nodes" "director rs1 rs2" \
	"$(k get tvs web -o jsonpath='{.status.nodes[*].nodeName}' | tr ' ' '\n' | sort | tr '\n' ' ' | sed 's/ $//')"
lab_assert_eq "web programmed at its generation on every node" "true true true" \
	"$(k get tvs web -o jsonpath='{.status.nodes[*].programmed}')"
got="$(requests 4 "http://$VIP/")"
echo "kubectl apply, weights 1:1 -> $got"
lab_assert_eq "1:1 alternates" yes "$(alternates "$got")"

# 1b. Health through the tunnel: the director's status entry lists each real
# server port's verdict; a stopped server goes to weight 0 in the director's
# kernel and Unhealthy in its entry, with the failed probe in words, and
# comes back once it passes again.
health_of() {
	k get tvs web -o jsonpath='{range .status.nodes[?(@.nodeName=="director")].health[*]}{.address}:{.port}={.state}{"\n"}{end}' |
		sort | tr '\n' ' ' | sed 's/ $//'
}
health_is() { [ "$(health_of)" = "$1" ]; }
rs2_weight_is() { "$IP" netns exec director ipvsadm -Ln -t "$VIP:80" | tr -s ' ' | grep -q -- "-> $RS2:80 Tunnel $1 "; }
lab_assert_eq "the director reports rs1 and rs2 healthy" 0 \
	"$(wait_for 30 "healthy" health_is "$RS1:80=Healthy $RS2:80=Healthy"; echo $?)"
rs2_httpd="$(for p in $("$IP" netns pids rs2); do grep -q httpd "/proc/$p/cmdline" 2>/dev/null && echo "$p"; done)"
kill $rs2_httpd
lab_assert_eq "rs2's server stopped: weight 0 on the director" 0 "$(wait_for 30 "rs2 weight 0" rs2_weight_is 0; echo $?)"
lab_assert_eq "and Unhealthy in the director's entry" 0 \
	"$(wait_for 30 "unhealthy" health_is "$RS1:80=Healthy $RS2:80=Unhealthy"; echo $?)"
lab_assert_contains "the entry names the failed probe" "$VIP:80 through the tunnel to $RS2: connect: Connection refused" \
	"$(k get tvs web -o jsonpath='{.status.nodes[?(@.nodeName=="director")].health[?(@.state=="Unhealthy")].message}')"
got="$(requests 4 "http://$VIP/")"
echo "rs2 down -> $got"
lab_assert_eq "every request answers, from rs1" 4 "$(count rs1 "$got")"
start_http rs2 rs2 80
lab_assert_eq "rs2 back: weight 1" 0 "$(wait_for 30 "rs2 weight 1" rs2_weight_is 1; echo $?)"
lab_assert_eq "and Healthy" 0 "$(wait_for 30 "healthy" health_is "$RS1:80=Healthy $RS2:80=Healthy"; echo $?)"

# 2. Weight patch under an open connection: 2:1, nothing restarted or reset.
mkfifo /tmp/long.in
ns_exec client busybox nc "$VIP" 80 </tmp/long.in >/tmp/long.out 2>&1 &
exec 3>/tmp/long.in
sleep 1
k patch tvs web --type=json -p '[{"op":"replace","path":"/spec/backends/static/0/weight","value":2}]'
lab_assert_eq "kernel weight follows kubectl patch" 0 \
	"$(wait_for 30 "weight 2" sh -c "$IP netns exec director ipvsadm -Ln | tr -s ' ' | grep -q -- '-> $RS1:80 Tunnel 2'"; echo $?)"
printf 'GET / HTTP/1.0\r\n\r\n' >&3
sleep 1
exec 3>&-
lab_assert_contains "connection opened before the patch still answers" "200 OK" "$(cat /tmp/long.out)"
got="$(requests 6 "http://$VIP/")"
echo "after patch, weights 2:1 -> $got"
lab_assert_eq "2:1: rs1 four times of 6" 4 "$(count rs1 "$got")"
lab_assert_eq "Ready again for the new generation" 0 "$(k wait --for=condition=Ready tvs/web --timeout=60s >/dev/null 2>&1; echo $?)"

# 3. Port mapping and the VIP on an ordinary interface.
got="$(requests 4 "http://192.168.56.186:8099/")"
lab_assert_eq "8099 -> 80 through backend DNAT" yes "$(alternates "$got")"
got="$(requests 6 "http://192.168.56.187/")"
lab_assert_eq ".187 on the director's eth0, 1:2: rs2 four times of 6" 4 "$(count rs2 "$got")"

# 4. Drift repair: a hand-deleted service and address come back within the resync.
ns_exec director ipvsadm -D -t "$VIP:80"
ns_exec rs1 "$IP" addr del "$VIP/32" dev tunl0
lab_assert_eq "deleted IPVS service restored" 0 \
	"$(wait_for 20 "service restored" sh -c "$IP netns exec director ipvsadm -Ln | grep -q '$VIP:80'"; echo $?)"
lab_assert_eq "deleted tunl0 VIP restored" 0 \
	"$(wait_for 20 "address restored" sh -c "$IP netns exec rs1 $IP -o addr show dev tunl0 | grep -q '$VIP/32'"; echo $?)"

# 4b. Drift past the first 64 services: a destination deleted by hand from
# the last service in key order comes back within 10 resyncs (3 s here) and
# a pass. 64 more ports on the VIP (30001-30064): 30064 is past the first 64
# services. (At this size a resync reads the table whole; the turns a larger
# table is read in are unit-tested in dataplane::ipvs.)
{
	printf 'apiVersion: tunlb.io/v1alpha1\nkind: VirtualService\nmetadata: {name: many}\nspec:\n'
	printf '  vip: %s\n  scheduler: wrr\n  ports:\n' "$VIP"
	p=30001
	while [ "$p" -le 30064 ]; do
		printf '  - {name: p%s, port: %s}\n' "$p" "$p"
		p=$((p + 1))
	done
	printf '  directors: {nodeSelector: {matchLabels: {tunlb.io/director: "true"}}}\n'
	printf '  backends:\n    static:\n    - {address: %s, weight: 1}\n' "$RS1"
} >/tmp/many.yaml
k apply -f /tmp/many.yaml >/dev/null
many_programmed() { [ "$(ipvs_rows director | grep -c ":300[0-6][0-9] wrr $RS1:")" = 64 ]; }
lab_assert_eq "64 more services programmed" 0 "$(wait_for 60 "64 services" many_programmed; echo $?)"
# (A resync may restore it at once: the check is that it comes back.)
lab_assert_eq "a destination deleted by hand" 0 "$(ns_exec director ipvsadm -d -t "$VIP:30064" -r "$RS1:30064"; echo $?)"
lab_assert_eq "a destination deleted from the last service restored within 10 resyncs" 0 \
	"$(wait_for 40 "destination restored" many_programmed; echo $?)"
k delete tvs many --timeout=60s >/dev/null
many_gone() { ! ns_exec director ipvsadm -Ln | grep -q ":300[0-6][0-9] wrr"; }
lab_assert_eq "their services removed" 0 "$(wait_for 60 "64 services removed" many_gone; echo $?)"

# 5. Restart the director's agent under traffic: no flush, no write, connection
# kept. Watched from outside: no address, link, route, netconf or nft event
# from the stop to the end of the new agent's first pass, the same IPVS rows,
# counters, addresses, ruleset and sysctls. The new agent resyncs only hourly,
# so from here on each of its passes comes from a watch event (7b counts them).
ipvs_conns_settled director >/dev/null
c0="$(service_conns director "$VIP:80")"
mkfifo /tmp/long2.in
ns_exec client busybox nc "$VIP" 80 </tmp/long2.in >/tmp/long2.out 2>&1 &
exec 4>/tmp/long2.in
lab_assert_eq "a connection is open through the director" 0 \
	"$(wait_for 20 "the connection counted" service_conns_above director "$VIP:80" "$c0"; echo $?)"
before="$(ipvs_rows director)"
state_before="$(kernel_state director)"
watch_start director
eval "pid=\$AGENT_PID_director"
kill "$pid"
wait "$pid" 2>/dev/null
lab_assert_eq "director agent exited on SIGTERM" "" "$(ps | awk -v p="$pid" '$1 == p')"
lab_assert_eq "agent stopped: IPVS table untouched" "$before" "$(ipvs_rows director)"
start_agent director 3600
lab_assert_eq "restarted agent completed a pass" 0 "$(wait_for 60 "a completed pass" passes_at_least director 1; echo $?)"
# Read after the pass is counted: a pass records its writes with its duration.
writes="$(metric director tunlb_agent_kernel_writes_total)"
events="$(watch_stop)"
lab_assert_eq "restarted agent counted zero kernel writes" 0 "$writes"
lab_assert_eq "restarted agent's pass reported no error" 0 "$(metric director tunlb_agent_sync_errors_total)"
lab_assert_eq "restart: no kernel event on the director" "" "$events"
lab_assert_same "restart: the director's kernel unchanged (IPVS rows and counters, addresses, nft, sysctls)" \
	"$state_before" "$(kernel_state director)"
# A subshell that ignores SIGPIPE: if nc is gone, the assertion says so.
(trap '' PIPE; printf 'GET / HTTP/1.0\r\n\r\n' >&4)
exec 4>&-
lab_assert_eq "connection survived the agent restart" 0 \
	"$(wait_for 20 "the answer" grep -q "200 OK" /tmp/long2.out; echo $?)"

# 6. A Service-backed VirtualService: pods are namespaces behind rs1 and rs2.
# add_pod NAME NODE POD_IP GATEWAY: a pod namespace behind NODE, whose side of
# the veth holds the pod subnet's gateway (as a bridge CNI's cni0 would; with
# arp_ignore=1 a node answers ARP only for addresses on the asking interface).
add_pod() {
	"$IP" netns add "$1"
	"$IP" link add "p-$1" type veth peer name eth0 netns "$1"
	"$IP" link set "p-$1" netns "$2"
	ns_exec "$2" "$IP" addr add "$4/24" dev "p-$1"
	ns_exec "$2" "$IP" link set "p-$1" up
	ns_exec "$2" sh -c "echo 1 > /proc/sys/net/ipv4/ip_forward"
	ns_exec "$1" "$IP" addr add "$3/24" dev eth0
	ns_exec "$1" "$IP" link set eth0 up
	ns_exec "$1" "$IP" link set lo up
	ns_exec "$1" "$IP" route add default via "$4"
	start_http "$1" "$1" 8080
}
add_pod pod-a rs1 10.244.1.5 10.244.1.1
add_pod pod-b rs2 10.244.2.5 10.244.2.1
k apply -f - <<'YAML'
apiVersion: v1
kind: Service
metadata: {name: shop}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: shop-1
  labels: {kubernetes.io/service-name: shop}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.5], nodeName: rs1, conditions: {ready: true}}
- {addresses: [10.244.2.5], nodeName: rs2, conditions: {ready: true}}
---
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata: {name: shop}
spec:
  vip: 192.168.56.190
  ports: [{port: 80}]
  scheduler: rr
  backends: {service: {name: shop}}
YAML
lab_assert_eq "Service-backed VirtualService becomes Ready" 0 "$(k wait --for=condition=Ready tvs/shop --timeout=60s >/dev/null 2>&1; echo $?)"
lab_assert_eq "the director weights both nodes once they programmed shop" 0 \
	"$(wait_for 30 "shop weights in IPVS" weighted shop; echo $?)"
if ! weighted shop; then
	# What a user would look at next: the kernel's weights, the object's
	# status (probe verdicts per director) and the director agent's log.
	ns_exec director ipvsadm -Ln
	k get tvs shop -o yaml
	tail -40 /tmp/agent-director.log
fi
got="$(requests 4 "http://192.168.56.190/")"
echo "service backends -> $got"
lab_assert_eq "both pods answer through their nodes" 2 "$(count pod-a "$got")"
lab_assert_contains "rs1 DNATs the VIP to its local pod" "dnat to 10.244.1.5:8080" "$(ns_exec rs1 nft list table ip tunlb)"

# 7. GitOps: once synced, re-applying the same manifests server-side changes
# nothing, and the operator and agents (status writers only) cause no drift.
k apply --server-side --force-conflicts -f /examples/seed/ >/dev/null
k wait --for=condition=Ready tvs --all --timeout=60s >/dev/null 2>&1
sleep 4
gen_before="$(k get tvs web mapped eth-vip -o jsonpath='{.items[*].metadata.generation}')"
k apply --server-side -f /examples/seed/ >/dev/null
lab_assert_eq "server-side re-apply makes no new generation" "$gen_before" \
	"$(k get tvs web mapped eth-vip -o jsonpath='{.items[*].metadata.generation}')"

# 7b. Status writes by others (another node's entry, the operator's conditions)
# wake no pass. The director's agent no longer resyncs on a timer (section 5),
# so the count of its passes meanwhile is exact: zero. A spec edit afterwards
# does wake one, so the counter is live.
passes() { metric director tunlb_agent_sync_duration_seconds_count; }
observer_entry() {
	k apply --server-side --subresource=status --field-manager=observer -f - >/dev/null <<YAML
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata: {name: web}
status: {nodes: [$1]}
YAML
}
p0="$(passes)"
for i in 1 2 3 4 5 6 7 8 9 10; do
	observer_entry "{nodeName: elsewhere, roles: [], observedGeneration: 1, programmed: true, message: 'note $i'}"
done
p1="$(passes)"
echo "director passes during 10 foreign status writes: $((p1 - p0))"
lab_assert_eq "foreign status writes wake no pass" 0 "$((p1 - p0))"
k patch tvs web --type=json -p '[{"op":"replace","path":"/spec/backends/static/1/weight","value":2}]' >/dev/null
lab_assert_eq "a spec edit wakes a pass" 0 "$(wait_for 30 "a pass after the edit" passes_at_least director $((p1 + 1)); echo $?)"
observer_entry ""
lab_assert_eq "the director's own entry is still reported" 0 \
	"$(k get tvs web -o jsonpath='{.status.nodes[*].nodeName}' | grep -qw director; echo $?)"

# 7c. A removed real server drains: IPVS keeps it at weight 0 and the
# director's status entry lists it, until IPVS counts no connection on it or
# drainTimeoutSeconds (default 30) passes; then both let it go.
draining_is() {
	[ "$(k get tvs web -o jsonpath='{.status.nodes[?(@.nodeName=="director")].draining[*]}')" = "$1" ]
}
requests 4 "http://$VIP/" >/dev/null
k patch tvs web --type=json -p '[{"op":"remove","path":"/spec/backends/static/1"}]' >/dev/null
lab_assert_eq "status.nodes lists the removed server as draining" 0 \
	"$(wait_for 30 "draining reported" draining_is "$RS2:80"; echo $?)"
lab_assert_contains "IPVS keeps it at weight 0 meanwhile" "TCP $VIP:80 wrr $RS2:80 Tunnel 0" "$(ipvs_rows director)"
lab_assert_eq "new connections go to the remaining server" "rs1 rs1" "$(requests 2 "http://$VIP/")"
lab_assert_eq "once drained the status no longer lists it" 0 "$(wait_for 60 "drain done" draining_is ""; echo $?)"
lab_assert_eq "and IPVS no longer has it" "" "$(ipvs_rows director | grep "$VIP:80 wrr $RS2:80")"

# 7d. Other encapsulations and IPv6 through Kubernetes: GUE (the backends
# get a GUE port) and an IPv6 VIP over ip6ip6 with a mapped port (the Nodes
# are dual stack). READY only once every node programmed them; delete takes
# the GUE port and the IPv6 VIPs back.
i=1
for n in client director rs1 rs2; do
	ns_exec "$n" "$IP" -6 addr add "fd00:56::$i/64" dev eth0 nodad
	i=$((i + 1))
done
k apply -f /examples/tunnels/
lab_assert_eq "gue and IPv6 VirtualServices Ready" 0 \
	"$(k wait --for=condition=Ready tvs/web-gue tvs/web6 --timeout=90s >/dev/null 2>&1; echo $?)"
k get tvs web-gue web6
lab_assert_eq "the director weights their real servers" 0 \
	"$(wait_for 30 "web-gue and web6 weights in IPVS" weighted web-gue web6; echo $?)"
lab_assert_eq "web6 programmed on the director and both backends" "director=true rs1=true rs2=true" \
	"$(k get tvs web6 -o jsonpath='{range .status.nodes[*]}{.nodeName}={.programmed}{" "}{end}' | tr ' ' '\n' | sort | tr '\n' ' ' | sed 's/ $//')"
lab_assert_eq "web6's real servers are the Nodes' IPv6 InternalIPs" "fd00:56::3=rs1 fd00:56::4=rs2" \
	"$(k get tvs web6 -o jsonpath='{range .status.realServers[*]}{.address}={.nodeName}{" "}{end}' | sed 's/ $//')"
got="$(requests 4 "http://192.168.56.188/")"
echo "gue -> $got"
lab_assert_eq "gue VIP alternates rs1/rs2" yes "$(alternates "$got")"
lab_assert_contains "rs1 receives GUE on 6080" "port 6080 gue" "$(ns_exec rs1 "$IP" fou show)"
lab_assert_contains "the director's show names the encapsulation" "gue:6080 csum" "$(ns_exec director "$AGENT" show)"
got="$(requests 4 "http://[fd00:56::185]/")"
echo "ip6ip6 -> $got"
lab_assert_eq "IPv6 VIP alternates rs1/rs2" yes "$(alternates "$got")"
got="$(requests 4 "http://[fd00:56::185]:8099/")"
echo "ip6ip6 8099 -> $got"
lab_assert_eq "IPv6 mapped port alternates rs1/rs2" yes "$(alternates "$got")"
k delete tvs web-gue web6 --timeout=90s >/dev/null
no_fou() { [ -z "$(ns_exec rs1 "$IP" fou show)" ]; }
no_vip6() { [ -z "$(ns_exec rs1 "$IP" -o -6 addr show dev ip6tnl0 scope global)" ]; }
lab_assert_eq "GUE port gone from rs1" 0 "$(wait_for 30 "GUE port gone" no_fou; echo $?)"
lab_assert_eq "IPv6 VIP gone from rs1" 0 "$(wait_for 30 "IPv6 VIP gone" no_vip6; echo $?)"

# 8. Delete cleans every node, then the finalizer lets the object go. The
# deleted services drain first (their recent connections are inactive).
k delete tvs --all --timeout=60s
lab_assert_eq "no VirtualService left" "" "$(k get tvs -o name)"
ipvs_empty() { [ -z "$(ipvs_rows director)" ]; }
lab_assert_eq "director IPVS table empty once drained" 0 "$(wait_for 60 "IPVS table empty" ipvs_empty; echo $?)"
lab_assert_eq "no VIP left on rs1 tunl0" "" "$(ns_exec rs1 "$IP" -o addr show dev tunl0 | grep 192.168.56)"
lab_assert_eq "no tunlb nft table left on rs1" "" "$(ns_exec rs1 nft list tables | grep tunlb)"

for n in director rs1 rs2; do echo "--- agent $n log (tail)"; tail -5 "/tmp/agent-$n.log"; done
topo_cleanup
lab_summary

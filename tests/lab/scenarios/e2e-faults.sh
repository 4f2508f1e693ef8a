#!/bin/sh
# Faults through Kubernetes: a VirtualService one node cannot program, the API
# server unreachable from the nodes for 60 s under traffic, kube-apiserver and
# then etcd stopped and started again under traffic, and an object stored under
# an older (looser) schema.
. /scenarios/cluster.sh
cluster_setup

k apply -f /examples/seed/01-web.yaml
lab_assert_eq "web Ready" 0 "$(k wait --for=condition=Ready tvs/web --timeout=90s >/dev/null 2>&1; echo $?)"
lab_assert_eq "the director weights web's real servers" 0 "$(wait_for 30 "web weights in IPVS" weighted web; echo $?)"

# 1. The director lacks the interface one VirtualService asks for.
k apply -f - <<'YAML'
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata: {name: no-iface}
spec:
  vip: 192.168.56.188
  ports: [{port: 80}]
  directors: {interface: eth9}
  backends: {static: [{address: 192.168.56.183}]}
YAML
lab_assert_eq "no-iface reports ProgramFailed" 0 \
	"$(wait_for 40 "ProgramFailed" sh -c "kubectl get tvs no-iface -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].reason}' | grep -q ProgramFailed"; echo $?)"
ready_msg="$(k get tvs no-iface -o jsonpath='{.status.conditions[?(@.type=="Ready")].message}')"
echo "no-iface Ready message: $ready_msg"
lab_assert_contains "Ready names the node and the reason" "node director: interface eth9 does not exist on this node" "$ready_msg"
lab_assert_contains "the director's own entry says why" "interface eth9 does not exist" \
	"$(k get tvs no-iface -o jsonpath='{.status.nodes[?(@.nodeName=="director")].message}')"
lab_assert_eq "web is still programmed and answering" yes "$(alternates "$(requests 4 "http://$VIP/")")"
lab_assert_eq "web still Ready" True "$(k get tvs web -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')"
k delete tvs no-iface --timeout=60s

# 2. The nodes lose the API server for 60 s (their packets to it vanish, as
#    when its host is down) while clients keep using the VIP; a change made
#    meanwhile (kubectl from the guest's root namespace still works) lands after.
api_outage_start
lab_assert_eq "outage rule in place" 0 "$?"
errors=0
total=0
t0=$(date +%s)
patched=no
while [ "$(($(date +%s) - t0))" -lt 60 ]; do
	r="$(request client "http://$VIP/")"
	total=$((total + 1))
	case "$r" in rs1 | rs2) ;; *) errors=$((errors + 1)) ;; esac
	if [ "$patched" = no ] && [ "$(($(date +%s) - t0))" -ge 20 ]; then
		k patch tvs web --type=json -p '[{"op":"replace","path":"/spec/backends/static/1/weight","value":3}]' >/dev/null
		patched=yes
	fi
	sleep 0.5
done
echo "during the outage: $total requests, $errors failed"
lab_assert_eq "no request failed while the API server was unreachable" 0 "$errors"
lab_assert_eq "kernel kept the old weight during the outage" "" \
	"$(ipvs_rows director | grep "$RS2:80 Tunnel 3")"
api_outage_end
lab_assert_eq "the change made during the outage is applied after it" 0 \
	"$(wait_for 90 "weight 3" sh -c "$IP netns exec director ipvsadm -Ln | tr -s ' ' | grep -q -- '-> $RS2:80 Tunnel 3'"; echo $?)"
lab_assert_eq "web Ready again" 0 "$(k wait --for=condition=Ready tvs/web --timeout=60s >/dev/null 2>&1; echo $?)"

# 3. kube-apiserver itself stops for 60 s (the process, so connections are
#    refused rather than lost) and starts again on the same data; then etcd
#    behind it. Clients keep using the VIP throughout, and a change made right
#    after each restart reaches the kernel and the status: operator and agents
#    have re-established their watches, which is their only way to see it.
CONTROL="$(cat /kube/control-plane-url)"
# control stop|resume kube-apiserver|etcd: asks the host, and returns once done.
control() { curl -fsS -X POST --max-time 150 "$CONTROL/$1/$2"; }
# director_weight N: the director's IPVS sends to rs2 at weight N.
director_weight() { ns_exec director ipvsadm -Ln | tr -s ' ' | grep -q -- "-> $RS2:80 Tunnel $1 "; }
# status_weight N: web's status is judged at its generation, Ready, and gives rs2 weight N.
status_weight() {
	# shellcheck disable=SC2046 # one word per field
	set -- "$1" $(k get tvs web -o jsonpath="{.metadata.generation} {.status.observedGeneration} {.status.conditions[?(@.type==\"Ready\")].status} {.status.realServers[?(@.address==\"$RS2\")].weight}")
	[ "$2" = "$3" ] && [ "$4" = True ] && [ "$5" = "$1" ]
}
# converge N: sets rs2's weight in web's spec to N and waits for the
# director's kernel, then the status, to follow.
converge() {
	_t0=$(date +%s)
	# Retried as a user would: the API server may still be reconnecting to etcd.
	wait_for 30 "patch accepted" k patch tvs web --type=json \
		-p "[{\"op\":\"replace\",\"path\":\"/spec/backends/static/1/weight\",\"value\":$1}]" || return 1
	wait_for 120 "weight $1 in IPVS" director_weight "$1" || return 1
	echo "weight $1 reached the director's IPVS $(($(date +%s) - _t0)) s after the patch" >&2
	wait_for 60 "weight $1 in the status" status_weight "$1"
}
# A client keeps asking the VIP until told to stop, one answer a line.
rm -f /tmp/probes /tmp/probes.stop
(while [ ! -f /tmp/probes.stop ]; do request client "http://$VIP/" >>/tmp/probes; sleep 0.5; done) &
probes_pid=$!

lab_assert_eq "kube-apiserver stopped" 0 "$(control stop kube-apiserver >&2; echo $?)"
t0=$(date +%s)
lab_assert_eq "kubectl fails while it is stopped" 1 "$(kubectl --request-timeout=5s get tvs web >/tmp/refused 2>&1; echo $?)"
echo "kubectl while kube-apiserver is stopped: $(cat /tmp/refused)"
while [ "$(($(date +%s) - t0))" -lt 60 ]; do sleep 1; done
lab_assert_eq "kube-apiserver started again" 0 "$(control resume kube-apiserver >&2; echo $?)"
lab_assert_eq "a change made right after the restart reaches the kernel and the status" 0 "$(converge 4; echo $?)"

lab_assert_eq "etcd stopped" 0 "$(control stop etcd >&2; echo $?)"
t0=$(date +%s)
etcd_down() { ! kubectl --request-timeout=5s get --raw /readyz >/tmp/readyz 2>&1 && grep -q "etcd failed" /tmp/readyz; }
lab_assert_eq "kube-apiserver answers, not ready: etcd failed" 0 "$(wait_for 30 "readyz names etcd" etcd_down; echo $?)"
while [ "$(($(date +%s) - t0))" -lt 20 ]; do sleep 1; done
lab_assert_eq "etcd started again" 0 "$(control resume etcd >&2; echo $?)"
lab_assert_eq "a change made right after etcd's restart reaches the kernel and the status" 0 "$(converge 5; echo $?)"

touch /tmp/probes.stop
wait "$probes_pid"
total="$(wc -l </tmp/probes)"
errors="$(grep -cv '^rs[12]$' /tmp/probes)"
echo "through both restarts: $total requests, $errors failed"
lab_assert_eq "no request failed through the API server's and etcd's restarts" 0 "$errors"
lab_assert_eq "the client was answered throughout" yes "$([ "$total" -ge 60 ] && echo yes)"

# 4. An object admitted under an older schema (no CEL rules) that the current
#    rules reject: reported, never programmed, and the watch goes on.
crd=virtualservices.tunlb.io
rules_path=/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/tunnel/x-kubernetes-validations
saved="$(k get crd $crd -o jsonpath='{.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.tunnel.x-kubernetes-validations}')"
k patch crd $crd --type=json -p "[{\"op\":\"remove\",\"path\":\"$rules_path\"}]"
sleep 2
k apply -f - <<'YAML'
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata: {name: legacy}
spec:
  vip: 192.168.56.189
  ports: [{port: 80}]
  tunnel: {type: gue}
  backends: {static: [{address: 192.168.56.183}]}
YAML
k patch crd $crd --type=json -p "[{\"op\":\"add\",\"path\":\"$rules_path\",\"value\":$saved}]"
lab_assert_eq "legacy object is reported Invalid" 0 \
	"$(wait_for 30 "Invalid" sh -c "kubectl get tvs legacy -o jsonpath='{.status.conditions[?(@.type==\"Resolved\")].reason}' | grep -q Invalid"; echo $?)"
lab_assert_contains "with the field and reason" "spec.tunnel.port: gue encapsulation needs a UDP port" \
	"$(k get tvs legacy -o jsonpath='{.status.conditions[?(@.type=="Resolved")].message}')"
lab_assert_eq "nothing of it programmed" "" "$(ipvs_rows director | grep 192.168.56.189)"
k apply -f /examples/seed/02-mapped.yaml
lab_assert_eq "watch still works: a new VirtualService becomes Ready" 0 \
	"$(k wait --for=condition=Ready tvs/mapped --timeout=60s >/dev/null 2>&1; echo $?)"
lab_assert_eq "the director weights its real servers" 0 "$(wait_for 30 "mapped weights in IPVS" weighted mapped; echo $?)"
lab_assert_eq "and answers" yes "$(alternates "$(requests 4 "http://192.168.56.186:8099/")")"

k delete tvs --all --timeout=60s
ipvs_empty() { [ -z "$(ipvs_rows director)" ]; }
lab_assert_eq "director IPVS table empty once drained" 0 "$(wait_for 60 "IPVS table empty" ipvs_empty; echo $?)"
for n in director rs1 rs2; do echo "--- agent $n log (tail)"; tail -5 "/tmp/agent-$n.log"; done
topo_cleanup
lab_summary

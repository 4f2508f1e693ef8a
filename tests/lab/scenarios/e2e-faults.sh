#!/bin/sh
# Faults through Kubernetes: a VirtualService one node cannot program, the API
# server unreachable from the nodes for 60 s under traffic, and an object
# stored under an older (looser) schema.
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
nft -f - <<'NFT'
table ip outage {
	chain cut {
		type filter hook forward priority filter;
		ip saddr 192.168.56.0/24 ip daddr 10.0.2.2 drop
		ip saddr 10.0.2.2 ip daddr 192.168.56.0/24 drop
	}
}
NFT
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
nft delete table ip outage
lab_assert_eq "the change made during the outage is applied after it" 0 \
	"$(wait_for 90 "weight 3" sh -c "$IP netns exec director ipvsadm -Ln | tr -s ' ' | grep -q -- '-> $RS2:80 Tunnel 3'"; echo $?)"
lab_assert_eq "web Ready again" 0 "$(k wait --for=condition=Ready tvs/web --timeout=60s >/dev/null 2>&1; echo $?)"

# 3. An object admitted under an older schema (no CEL rules) that the current
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

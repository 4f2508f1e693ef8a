#!/bin/sh
# Bad input: each case is a file holding one bad VirtualService and one good
# one. The agent must exit non-zero, name the file, object and field, apply
# nothing of the bad object and still apply the good one.
. /scenarios/common.sh

topo_setup || { echo "topology setup failed"; exit 1; }
mkdir -p /tmp/bad

good() {
	cat <<YAML
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata: {name: good}
spec:
  vip: 192.168.56.199
  ports: [{port: 80}]
  backends: {static: [{address: $RS1}]}
---
YAML
}

# bad NAME SPEC_YAML: writes /tmp/bad/NAME.yaml (bad object "bad", then "good").
bad() {
	{
		good
		cat <<YAML
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata: {name: bad}
spec:
$2
YAML
	} >"/tmp/bad/$1.yaml"
}

BASE="  vip: 192.168.56.190
  ports: [{port: 80}]"
RSL="  backends: {static: [{address: $RS1}, {address: $RS2}]}"

bad unknown-field "$BASE
  shceduler: rr
$RSL"
bad invalid-vip "  vip: 192.168.56.300
  ports: [{port: 80}]
$RSL"
bad port-zero "  vip: 192.168.56.190
  ports: [{port: 0}]
$RSL"
bad port-big "  vip: 192.168.56.190
  ports: [{port: 80, targetPort: 70000}]
$RSL"
bad protocol "  vip: 192.168.56.190
  ports: [{port: 80, protocol: ICMP}]
$RSL"
bad scheduler "$BASE
  scheduler: fastest
$RSL"
bad weight "$BASE
  backends: {static: [{address: $RS1, weight: 70000}]}"
bad gue-no-port "$BASE
  tunnel: {type: gue}
$RSL"
bad dup-port "  vip: 192.168.56.199
  ports: [{port: 80}]
$RSL"
bad module "$BASE
  scheduler: twos
$RSL"
bad node-address "  vip: $DIRECTOR
  ports: [{port: 80}]
$RSL"
printf 'apiVersion: tunlb.io/v1alpha1\nkind: VirtualService\nmetadata: {name: x\nspec: [\n' >/tmp/bad/malformed.yaml

# case NAME EXPECTED_MESSAGE
case_() {
	rm -rf /tmp/state-director
	ns_exec director ipvsadm -C
	out="$(agent director apply -f "/tmp/bad/$1.yaml" 2>&1)"
	rc=$?
	echo "--- $1 (exit $rc)"
	echo "$out"
	lab_assert_eq "$1: non-zero exit" 1 "$rc"
	lab_assert_contains "$1: message" "$2" "$out"
	rows="$(ipvs_rows director)"
	lab_assert_eq "$1: nothing of the bad object applied" "" "$(echo "$rows" | grep -v 192.168.56.199)"
	if [ "$1" != malformed ]; then
		lab_assert_contains "$1: the good object still applied" "TCP 192.168.56.199:80 wlc $RS1:80 Tunnel 1" "$rows"
	fi
}

case_ unknown-field "/tmp/bad/unknown-field.yaml: document 2 (VirtualService default/bad): spec.shceduler: unknown field"
case_ invalid-vip "VirtualService default/bad: spec.vip: \"192.168.56.300\" is not an IPv4 or IPv6 address"
case_ port-zero "VirtualService default/bad: spec.ports[0].port: 0 is out of range 1-65535"
case_ port-big "VirtualService default/bad: spec.ports[0].targetPort: 70000 is out of range 1-65535"
case_ protocol "spec.ports[0].protocol: unknown variant \`ICMP\`, expected one of \`TCP\`, \`UDP\`, \`SCTP\`"
case_ scheduler "spec.scheduler: unknown variant \`fastest\`, expected one of \`rr\`, \`wrr\`, \`lc\`, \`wlc\`"
case_ weight "spec.backends.static[0].weight: 70000 is out of range 0-65535"
case_ gue-no-port "spec.tunnel.port: gue encapsulation needs a UDP port"
case_ dup-port "spec.ports[0]: TCP 192.168.56.199:80 is already served by default/good"
case_ module "module ip_vs_twos missing"
case_ node-address "spec.vip: $DIRECTOR is already an address of node director"
case_ malformed "/tmp/bad/malformed.yaml: document 1: invalid YAML"
lab_assert_eq "nothing added to the director's tunl0 by rejected objects" "" \
	"$(ns_exec director "$IP" -o addr show dev tunl0 | grep -v 192.168.56.199 | grep inet)"
lab_summary

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

# case_ NAME EXPECTED_MESSAGE: the message, from the object's name on, follows
# "error: FILE: " on one line. Each case starts from an empty IPVS table and
# tunl0, so what is there afterwards is exactly what this file programmed:
# the good object's service and VIP, nothing else (the dup-port case's bad
# object shares the good one's VIP and would show as a second destination).
case_() {
	rm -rf /tmp/state-director
	ns_exec director ipvsadm -C
	ns_exec director "$IP" addr flush dev tunl0
	out="$(agent director apply -f "/tmp/bad/$1.yaml" 2>&1)"
	rc=$?
	echo "--- $1 (exit $rc)"
	echo "$out"
	lab_assert_eq "$1: non-zero exit" 1 "$rc"
	lab_assert_contains "$1: message names the file, the object and the field" "error: /tmp/bad/$1.yaml: $2" "$out"
	if [ "$1" = malformed ]; then
		want_rows="" want_addrs=""
	else
		want_rows="TCP 192.168.56.199:80 wlc $RS1:80 Tunnel 1" want_addrs="192.168.56.199/32"
	fi
	lab_assert_eq "$1: IPVS holds the good object only" "$want_rows" "$(ipvs_rows director)"
	lab_assert_eq "$1: the director's tunl0 holds the good object's VIP only" "$want_addrs" \
		"$(ns_exec director "$IP" -o -4 addr show dev tunl0 | awk '{print $4}')"
}

B="VirtualService default/bad"
case_ unknown-field "document 2 ($B): spec.shceduler: unknown field"
case_ invalid-vip "$B: spec.vip: \"192.168.56.300\" is not an IPv4 or IPv6 address"
case_ port-zero "$B: spec.ports[0].port: 0 is out of range 1-65535"
case_ port-big "$B: spec.ports[0].targetPort: 70000 is out of range 1-65535"
case_ protocol "document 2 ($B): spec.ports[0].protocol: unknown variant \`ICMP\`, expected one of \`TCP\`, \`UDP\`, \`SCTP\`"
case_ scheduler "document 2 ($B): spec.scheduler: unknown variant \`fastest\`, expected one of \`rr\`, \`wrr\`, \`lc\`, \`wlc\`"
case_ weight "$B: spec.backends.static[0].weight: 70000 is out of range 0-65535"
case_ gue-no-port "$B: spec.tunnel.port: gue encapsulation needs a UDP port"
case_ dup-port "$B: spec.ports[0]: TCP 192.168.56.199:80 is already served by default/good"
case_ module "$B: add service TCP 192.168.56.190:80: No such file or directory (os error 2): scheduler \"twos\" is not available in this kernel (module ip_vs_twos missing)"
case_ node-address "$B: spec.vip: $DIRECTOR is already an address of node director"
case_ malformed "document 1: invalid YAML"
lab_summary

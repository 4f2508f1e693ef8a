#!/bin/sh
# Port mapping under TUN: VIP2 .186:8099 with real servers on :80. Without the
# backend DNAT the seed's failure shows (ipvsadm lists RIP:8099, clients are
# refused); with targetPort the backends DNAT and it balances.
. /scenarios/common.sh
VIP2=192.168.56.186

topo_setup || { echo "topology setup failed"; exit 1; }
start_backends

# First as plain LVS-TUN would do it: same port on the real servers, nothing mapped.
grep -v targetPort $EX/02-mapped.yaml >/tmp/unmapped.yaml
apply_all /tmp/unmapped.yaml
lab_assert_eq "ipvsadm lists RIP:8099 (TUN never rewrites ports)" \
	"TCP $VIP2:8099 wrr $RS1:8099 Tunnel 1
TCP $VIP2:8099 wrr $RS2:8099 Tunnel 1" "$(ipvs_rows director)"
lab_assert_eq "without DNAT the client is refused" "ERR:7" "$(request client "http://$VIP2:8099/")"

# The mapping changes only the backends: the director's kernel, watched from
# outside, sees nothing.
director_before="$(kernel_state director)"
watch_start director
out="$(apply_all $EX/02-mapped.yaml)"
events="$(watch_stop)"
echo "$out"
lab_assert_contains "rs1 DNAT rule in tunlb's table" "ip daddr $VIP2 tcp dport 8099 dnat to :80" "$(ns_exec rs1 nft list table ip tunlb)"
lab_assert_contains "director writes no nft rules" "[director] kernel writes: ipvs=0 links=0 sysctls=0 nft=0" "$out"
lab_assert_eq "mapping: no kernel event on the director" "" "$events"
lab_assert_same "mapping: the director's kernel unchanged" "$director_before" "$(kernel_state director)"
got="$(requests 4 "http://$VIP2:8099/")"
echo "8099 -> 80: $got"
lab_assert_eq "VIP2:8099 balances rs1/rs2 through the DNAT" yes "$(alternates "$got")"

# Weights still apply through the mapping.
awk '{ print } /- address: 192.168.56.183/ { print "      weight: 2" }' $EX/02-mapped.yaml >/tmp/mapped-2-1.yaml
agent director apply -f /tmp/mapped-2-1.yaml
got="$(requests 6 "http://$VIP2:8099/")"
echo "8099 weights 2:1 -> $got"
lab_assert_eq "mapped port honours weights 2:1" 4 "$(count rs1 "$got")"

# The optional MSS clamp for the 20-byte IPIP overhead loads next to the DNAT.
# nft monitor prints one "# new generation" line per committed transaction.
awk '{ print } /scheduler: wrr/ { print "  tunnel: {mssClamp: 1440}" }' $EX/02-mapped.yaml >/tmp/mapped-mss.yaml
no_nft() { awk '/^## / { skip = ($0 ~ /^## nft/) } !skip'; }
rs1_before="$(kernel_state rs1 | no_nft)"
watch_start rs1
out="$(agent rs1 apply -f /tmp/mapped-mss.yaml 2>&1)"
events="$(watch_stop)"
echo "$out"
echo "$events"
lab_assert_contains "MSS clamp is one nft transaction" "kernel writes: ipvs=0 links=0 sysctls=0 nft=1" "$out"
lab_assert_eq "MSS clamp: nft monitor sees one transaction" 1 "$(echo "$events" | grep -c '^rs1 nft: # new generation')"
lab_assert_eq "MSS clamp: no address, link, route or netconf event" "" "$(echo "$events" | grep '^rs1 ip:')"
lab_assert_same "MSS clamp: nothing but nft changed on rs1" "$rs1_before" "$(kernel_state rs1 | no_nft)"
lab_assert_contains "MSS clamp rule on SYN-ACKs of VIP connections" "tcp option maxseg size set 1440" "$(ns_exec rs1 nft list table ip tunlb)"
got="$(requests 6 "http://$VIP2:8099/")"
echo "8099 with the clamp on rs1 (weights 2:1) -> $got"
lab_assert_eq "mapping still answers with the clamp" 6 "$(($(count rs1 "$got") + $(count rs2 "$got")))"

delete_all $EX/02-mapped.yaml
lab_assert_eq "delete removes tunlb's nft table" "" "$(ns_exec rs1 nft list tables | grep tunlb)"
topo_cleanup
lab_summary

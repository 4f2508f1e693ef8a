#!/bin/sh
# VIP .187 on the director's ordinary interface (eth0) with weights 1:2.
. /scenarios/common.sh
VIP3=192.168.56.187

topo_setup || { echo "topology setup failed"; exit 1; }
start_backends
apply_all $EX/03-eth-vip.yaml
lab_assert_contains "VIP on the director's eth0" "$VIP3/32" "$(ns_exec director "$IP" -o addr show dev eth0)"
lab_assert_eq "not on the director's tunl0" "" "$(ns_exec director "$IP" -o addr show dev tunl0 | grep "$VIP3")"
got="$(requests 6 "http://$VIP3/")"
echo "weights 1:2 -> $got"
lab_assert_eq "weights 1:2: rs2 four times of 6" 4 "$(count rs2 "$got")"
lab_assert_eq "weights 1:2: rs1 twice of 6" 2 "$(count rs1 "$got")"
delete_all $EX/03-eth-vip.yaml
lab_assert_eq "VIP removed from eth0" "" "$(ns_exec director "$IP" -o addr show dev eth0 | grep "$VIP3")"
lab_assert_contains "director's own address untouched" "$DIRECTOR/24" "$(ns_exec director "$IP" -o addr show dev eth0)"
topo_cleanup
lab_summary

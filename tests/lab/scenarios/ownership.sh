#!/bin/sh
# What others created (ipvsadm services, addresses, nft tables) survives
# tunlb's apply and delete, and tunlb reads what ipvsadm programmed.
. /scenarios/common.sh
OTHER=10.9.9.9

topo_setup || { echo "topology setup failed"; exit 1; }
start_backends

# Someone else's state, made before the agent ever runs.
ns_exec director ipvsadm -A -t "$OTHER:80" -s rr
ns_exec director ipvsadm -a -t "$OTHER:80" -r "$RS1:80" -i -w 3
ns_exec director ipvsadm -A -u "$OTHER:53" -s sh -b sh-port
ns_exec director ipvsadm -a -u "$OTHER:53" -r "$RS2:53" -g -w 5
ns_exec director "$IP" addr add 10.8.8.8/32 dev tunl0
ns_exec rs1 nft add table ip someone
ns_exec rs1 nft add chain ip someone pre '{ type nat hook prerouting priority dstnat; }'
ns_exec rs1 nft add rule ip someone pre ip daddr 10.7.7.7 tcp dport 1 dnat to :2
theirs="$(ipvs_rows director)"

lab_assert_eq "tunlb-agent show reads what ipvsadm programmed" "$theirs" "$(agent_rows director)"
lab_assert_contains "show lists the -g destination as Route" "UDP $OTHER:53 sh $RS2:53 Route 5" "$(agent_rows director)"

apply_all $EX/01-web.yaml $EX/02-mapped.yaml
lab_assert_contains "foreign TCP service kept after apply" "TCP $OTHER:80 rr $RS1:80 Tunnel 3" "$(ipvs_rows director)"
lab_assert_eq "requests still balanced" yes "$(alternates "$(requests 4 "http://$VIP/")")"

delete_all $EX/01-web.yaml $EX/02-mapped.yaml
lab_assert_eq "after delete only the foreign services remain, unchanged" "$theirs" "$(ipvs_rows director)"
lab_assert_contains "foreign address on tunl0 kept" "10.8.8.8/32" "$(ns_exec director "$IP" -o addr show dev tunl0)"
lab_assert_contains "foreign nft table kept" "dnat to :2" "$(ns_exec rs1 nft list table ip someone)"

# A service that exists but is not tunlb's is never taken over.
ns_exec director ipvsadm -A -t "$VIP:80" -s rr
out="$(agent director apply -f $EX/01-web.yaml 2>&1)"
rc=$?
echo "$out"
lab_assert_eq "apply onto a foreign VIP:port fails" 1 "$rc"
lab_assert_contains "and says why" "already exists and was not created by tunlb" "$out"
lab_assert_eq "the foreign service keeps no destinations" "" "$(ipvs_rows director | grep "$VIP:80")"
lab_assert_contains "its scheduler unchanged" "TCP  $VIP:80 rr" "$(ns_exec director ipvsadm -Ln)"
topo_cleanup
lab_summary

#!/bin/sh
# The reference scenario through tunlb-agent: VIP .185:80, wrr 1:1, then a
# weight edit to 2:1 under an open connection, ipvsadm cross-check, no-op
# re-apply, and a delete that removes exactly what apply added.
. /scenarios/common.sh

topo_setup || { echo "topology setup failed"; exit 1; }
start_backends
before_sysctls="$(ns_exec rs1 sysctl -n net.ipv4.conf.all.arp_ignore net.ipv4.conf.all.arp_announce net.ipv4.conf.all.rp_filter | tr '\n' ' ')"
before_addrs_director="$(ns_exec director "$IP" -o addr show | awk '{print $2, $4}' | sort | tr '\n' ';')"

out="$(apply_all $EX/01-web.yaml)"
echo "$out"
lab_assert_contains "director applies as director" "[director] virtualservice default/web applied (director)" "$out"
lab_assert_contains "rs1 applies as backend" "[rs1] virtualservice default/web applied (backend)" "$out"

# Kernel state as the seed's manual steps would leave it.
lab_assert_contains "VIP on rs1 tunl0" "$VIP/32" "$(ns_exec rs1 "$IP" -o addr show dev tunl0)"
lab_assert_contains "VIP on director tunl0" "$VIP/32" "$(ns_exec director "$IP" -o addr show dev tunl0)"
lab_assert_eq "rs1 sysctls arp_ignore/arp_announce/rp_filter (all, tunl0)" "1 2 0 1 2 0 " \
	"$(ns_exec rs1 sysctl -n net.ipv4.conf.all.arp_ignore net.ipv4.conf.all.arp_announce net.ipv4.conf.all.rp_filter net.ipv4.conf.tunl0.arp_ignore net.ipv4.conf.tunl0.arp_announce net.ipv4.conf.tunl0.rp_filter | tr '\n' ' ')"
lab_assert_eq "ipvsadm -Ln shows what tunlb programmed" \
	"TCP $VIP:80 wrr $RS1:80 Tunnel 1
TCP $VIP:80 wrr $RS2:80 Tunnel 1" "$(ipvs_rows director)"
lab_assert_eq "tunlb-agent show reads the same table" "$(ipvs_rows director)" "$(agent_rows director)"

# The client finds the VIP by ARP: only the director may answer for it.
got="$(requests 4 "http://$VIP/")"
echo "weights 1:1 -> $got"
lab_assert_eq "weights 1:1 alternate rs1/rs2" yes "$(alternates "$got")"
director_mac="$(ns_exec director cat /sys/class/net/eth0/address)"
lab_assert_contains "VIP resolves to the director's MAC (backends keep ARP quiet)" "$director_mac" "$(ns_exec client "$IP" neigh show "$VIP")"

# Open a connection before the weight edit and use it after.
mkfifo /tmp/long.in
ns_exec client busybox nc "$VIP" 80 </tmp/long.in >/tmp/long.out 2>&1 &
ncpid=$!
exec 3>/tmp/long.in
sleep 1
lab_assert_contains "connection established before the edit" ESTABLISHED "$(ns_exec director ipvsadm -Lnc)"

# First real server (rs1) to weight 2.
awk '!done && /weight: 1/ { sub(/weight: 1/, "weight: 2"); done = 1 } { print }' $EX/01-web.yaml >/tmp/web-2-1.yaml
out="$(agent director apply -f /tmp/web-2-1.yaml 2>&1)"
echo "$out"
lab_assert_contains "weight edit is one IPVS write" "kernel writes: ipvs=1 links=0 sysctls=0 nft=0" "$out"
lab_assert_contains "ipvsadm shows weight 2" "TCP $VIP:80 wrr $RS1:80 Tunnel 2" "$(ipvs_rows director)"

printf 'GET / HTTP/1.0\r\n\r\n' >&3
sleep 1
exec 3>&-
wait "$ncpid" 2>/dev/null
long="$(cat /tmp/long.out)"
lab_assert_contains "connection opened before the edit still answers" "200 OK" "$long"

got="$(requests 6 "http://$VIP/")"
echo "weights 2:1 -> $got"
lab_assert_eq "weights 2:1: rs1 four times of 6" 4 "$(count rs1 "$got")"
lab_assert_eq "weights 2:1: rs2 twice of 6" 2 "$(count rs2 "$got")"

# Re-applying what is already there writes nothing, on every node.
out="$(agent director apply -f /tmp/web-2-1.yaml 2>&1; agent rs1 apply -f $EX/01-web.yaml 2>&1; agent rs2 apply -f $EX/01-web.yaml 2>&1)"
echo "$out"
lab_assert_eq "no-op re-apply: zero kernel writes on all three nodes" 3 "$(echo "$out" | grep -c 'kernel writes: ipvs=0 links=0 sysctls=0 nft=0')"

# Delete removes exactly what apply added.
out="$(delete_all /tmp/web-2-1.yaml)"
echo "$out"
lab_assert_eq "IPVS table empty after delete" "" "$(ipvs_rows director)"
lab_assert_eq "director addresses back to what they were" "$before_addrs_director" \
	"$(ns_exec director "$IP" -o addr show | awk '{print $2, $4}' | sort | tr '\n' ';')"
lab_assert_eq "no VIP left on rs1 tunl0" "" "$(ns_exec rs1 "$IP" -o addr show dev tunl0 | grep "$VIP")"
lab_assert_eq "rs1 sysctls restored" "$before_sysctls" \
	"$(ns_exec rs1 sysctl -n net.ipv4.conf.all.arp_ignore net.ipv4.conf.all.arp_announce net.ipv4.conf.all.rp_filter | tr '\n' ' ')"
lab_assert_eq "VIP no longer answers" "ERR:28" "$(request client "http://$VIP/")"

topo_cleanup
lab_summary

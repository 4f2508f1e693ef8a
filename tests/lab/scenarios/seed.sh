#!/bin/sh
# The reference scenario through tunlb-agent: VIP .185:80, wrr 1:1, then a
# weight edit to 2:1 under an open connection, ipvsadm cross-check, no-op
# re-apply, and a delete that removes exactly what apply added.
. /scenarios/common.sh

topo_setup || { echo "topology setup failed"; exit 1; }
start_backends
# Every node's all.* and tunl0.* sysctls as the kernel had them before tunlb.
for n in director rs1 rs2; do eval "before_sysctls_$n=\"\$(sysctls $n)\""; done
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

# Open a connection before the weight edit and use it after. It is open once
# the service's Conns counter has counted it.
ipvs_conns_settled director >/dev/null
c0="$(service_conns director "$VIP:80")"
mkfifo /tmp/long.in
ns_exec client busybox nc "$VIP" 80 </tmp/long.in >/tmp/long.out 2>&1 &
ncpid=$!
exec 3>/tmp/long.in
lab_assert_eq "connection established before the edit" 0 "$(wait_for 20 "the connection counted" service_conns_above director "$VIP:80" "$c0"; echo $?)"
lab_assert_contains "ipvsadm -Lnc lists it" ESTABLISHED "$(ns_exec director ipvsadm -Lnc)"

# First real server (rs1) to weight 2. The kernel, watched from outside,
# changes in exactly that weight: no address, link, route or nft event, and
# the IPVS counters carry on (re-adding the service would reset them).
awk '!done && /weight: 1/ { sub(/weight: 1/, "weight: 2"); done = 1 } { print }' $EX/01-web.yaml >/tmp/web-2-1.yaml
conns_before="$(ipvs_conns_settled director)"
lab_assert_eq "every IPVS counter has connections to lose" "" "$(echo "$conns_before" | awk '$NF == 0')"
state_before="$(kernel_state director)"
watch_start director
ipvs_calls_start
out="$(agent director apply -f /tmp/web-2-1.yaml 2>&1)"
calls="$(ipvs_calls_stop)"
events="$(watch_stop)"
echo "$out"
lab_assert_eq "weight edit: the kernel edited one destination and added or removed nothing (kprobes)" \
	"ip_vs_edit_dest 1" "$calls"
lab_assert_contains "weight edit is one IPVS write" "kernel writes: ipvs=1 links=0 sysctls=0 nft=0" "$out"
lab_assert_contains "ipvsadm shows weight 2" "TCP $VIP:80 wrr $RS1:80 Tunnel 2" "$(ipvs_rows director)"
lab_assert_eq "weight edit: no address, link, route, netconf or nft event" "" "$events"
lab_assert_same "weight edit: rs1's weight is the only change in the director's kernel" \
	"$(echo "$state_before" | sed "s/^-> $RS1:80 Tunnel 1\$/-> $RS1:80 Tunnel 2/")" "$(kernel_state director)"
lab_assert_same "weight edit: IPVS counters kept (service edited in place, not re-added)" "$conns_before" "$(ipvs_conns_settled director)"

# In a subshell that ignores SIGPIPE: if nc is gone, the write fails and the
# assertion below says so, instead of the scenario dying.
(trap '' PIPE; printf 'GET / HTTP/1.0\r\n\r\n' >&3)
sleep 1
exec 3>&-
wait "$ncpid" 2>/dev/null
long="$(cat /tmp/long.out)"
lab_assert_contains "connection opened before the edit still answers" "200 OK" "$long"

got="$(requests 6 "http://$VIP/")"
echo "weights 2:1 -> $got"
lab_assert_eq "weights 2:1: rs1 four times of 6" 4 "$(count rs1 "$got")"
lab_assert_eq "weights 2:1: rs2 twice of 6" 2 "$(count rs2 "$got")"

# Re-applying what is already there writes nothing, on every node: the
# agents' own count, the monitors and before/after snapshots agree.
for n in director rs1 rs2; do eval "state_$n=\"\$(kernel_state $n)\""; done
watch_start director rs1 rs2
ipvs_calls_start
out="$(agent director apply -f /tmp/web-2-1.yaml 2>&1; agent rs1 apply -f $EX/01-web.yaml 2>&1; agent rs2 apply -f $EX/01-web.yaml 2>&1)"
calls="$(ipvs_calls_stop)"
events="$(watch_stop)"
lab_assert_eq "no-op re-apply: no IPVS add, edit or remove in the kernel (kprobes)" "" "$calls"
echo "$out"
lab_assert_eq "no-op re-apply: zero kernel writes on all three nodes" 3 "$(echo "$out" | grep -c 'kernel writes: ipvs=0 links=0 sysctls=0 nft=0')"
lab_assert_eq "no-op re-apply: no kernel event on any node" "" "$events"
for n in director rs1 rs2; do
	eval "before=\"\$state_$n\""
	lab_assert_same "no-op re-apply: $n's kernel unchanged (IPVS with counters, addresses, links, nft, sysctls)" \
		"$before" "$(kernel_state $n)"
done

# Control for the kprobe checks above: a destination deleted and re-added
# by hand leaves the same table, and the observer still sees both calls.
ipvs_calls_start
ns_exec director ipvsadm -d -t "$VIP:80" -r "$RS2:80"
ns_exec director ipvsadm -a -t "$VIP:80" -r "$RS2:80" -i -w 1
lab_assert_eq "control: kprobes see a destination deleted and re-added by hand" "ip_vs_add_dest 1
ip_vs_del_dest 1" "$(ipvs_calls_stop)"

# Delete removes exactly what apply added.
out="$(delete_all /tmp/web-2-1.yaml)"
echo "$out"
lab_assert_eq "IPVS table empty after delete" "" "$(ipvs_rows director)"
lab_assert_eq "director addresses back to what they were" "$before_addrs_director" \
	"$(ns_exec director "$IP" -o addr show | awk '{print $2, $4}' | sort | tr '\n' ';')"
lab_assert_eq "no VIP left on rs1 tunl0" "" "$(ns_exec rs1 "$IP" -o addr show dev tunl0 | grep "$VIP")"
for n in director rs1 rs2; do
	eval "before=\"\$before_sysctls_$n\""
	lab_assert_same "$n: all.* and tunl0.* sysctls back to their values before the first apply" "$before" "$(sysctls $n)"
done
lab_assert_eq "VIP no longer answers" "ERR:28" "$(request client "http://$VIP/")"

topo_cleanup
lab_summary

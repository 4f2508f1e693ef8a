#!/bin/sh
# Proves the lab: the seed LVS-TUN scenario by hand (ipvsadm + ip + sysctl, no tunlb).
# Run: tests/lab/run.sh --dir tests/lab/guest:/lab -- sh /lab/seed-manual.sh
set -u
# shellcheck source=topology.sh
. /lab/topology.sh

DIRECTOR=$(topo_addr director)
RS1=$(topo_addr rs1)
RS2=$(topo_addr rs2)

topo_setup || { echo "topology setup failed"; exit 1; }

# Real servers: VIP on the IPIP fallback device tunl0, silent ARP, no rp_filter.
for rs in rs1 rs2; do
	start_http "$rs" "$rs" 80 || exit 1
	ns_exec "$rs" "$IP" addr add "$VIP/32" dev tunl0
	ns_exec "$rs" "$IP" link set tunl0 up
	ns_exec "$rs" "$IP" route add "$VIP/32" dev tunl0
	ns_exec "$rs" sysctl -q -w net.ipv4.conf.tunl0.arp_ignore=1 \
		net.ipv4.conf.tunl0.arp_announce=2 net.ipv4.conf.all.arp_ignore=1 \
		net.ipv4.conf.all.arp_announce=2 net.ipv4.conf.tunl0.rp_filter=0 \
		net.ipv4.conf.all.rp_filter=0
done

# Director: VIP on tunl0, IPVS service with two tunnel (-i) destinations.
# The RIPs are reachable through eth0's /24 (IPVS refuses unroutable tunnel targets).
ns_exec director "$IP" addr add "$VIP/32" dev tunl0
ns_exec director "$IP" link set tunl0 up
ns_exec director ipvsadm -A -t "$VIP:80" -s wrr
ns_exec director ipvsadm -a -t "$VIP:80" -r "$RS1:80" -i -w 1
ns_exec director ipvsadm -a -t "$VIP:80" -r "$RS2:80" -i -w 1

# Client: tunl0 is NOARP, so nobody answers ARP for the VIP; route it via the
# director instead, like a router in front of the director would.
ns_exec client "$IP" route add "$VIP/32" via "$DIRECTOR"

# Sanity: each real server answers directly on its own address.
lab_assert_eq "rs1 direct" rs1 "$(request client "http://$RS1/")"
lab_assert_eq "rs2 direct" rs2 "$(request client "http://$RS2/")"

ns_exec director ipvsadm -Ln
listing="$(ns_exec director ipvsadm -Ln | tr -s ' ')"
lab_assert_contains "ipvsadm -Ln shows Tunnel" Tunnel "$listing"
lab_assert_contains "rs1 listed: Tunnel, weight 1" "-> $RS1:80 Tunnel 1 " "$listing"
lab_assert_contains "rs2 listed: Tunnel, weight 1" "-> $RS2:80 Tunnel 1 " "$listing"

got="$(requests 4 "http://$VIP/")"
echo "weights 1:1 -> $got"
case "$got" in
"rs1 rs2 rs1 rs2" | "rs2 rs1 rs2 rs1") alt="$got" ;;
*) alt="not alternating" ;;
esac
lab_assert_eq "weights 1:1 alternate" "$got" "$alt"

ns_exec director ipvsadm -e -t "$VIP:80" -r "$RS1:80" -i -w 2
got="$(requests 6 "http://$VIP/")"
echo "weights 2:1 -> $got"
lab_assert_eq "weights 2:1: rs1 four times of 6" 4 "$(count rs1 "$got")"
lab_assert_eq "weights 2:1: rs2 twice of 6" 2 "$(count rs2 "$got")"

listing="$(ns_exec director ipvsadm -Ln | tr -s ' ')"
lab_assert_contains "rs1 listed with weight 2" "-> $RS1:80 Tunnel 2 " "$listing"

topo_cleanup
lab_summary

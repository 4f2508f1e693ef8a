#!/bin/sh
# Every encapsulation the CRD accepts carries traffic: IPv4 ipip, gue (no
# checksum, csum, remcsum) and gre; IPv6 ip6ip6, gue and gre. Each balances
# rr over rs1/rs2 on the VIP port and on a mapped port (DNAT on the
# backends), `tunlb-agent show` names the encapsulation IPVS uses, and delete
# takes back what the type added (GUE port, devices brought up, VIPs).
. /scenarios/common.sh
VIP6=fd00:56::185

topo_setup || { echo "topology setup failed"; exit 1; }
start_backends
i=0
for ns in client director rs1 rs2; do
	i=$((i + 1))
	ns_exec "$ns" "$IP" -6 addr add "fd00:56::$i/64" dev eth0 nodad
done
RS1_6=fd00:56::3
RS2_6=fd00:56::4

# manifest FILE VIP TUNNEL-YAML RS1 RS2 [EXTRA-SPEC-LINE]
manifest() {
	cat >"$1" <<Y
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata: {name: tun, namespace: default}
spec:
  vip: "$2"
  ports: [{port: 80}, {port: 8099, targetPort: 80}]
  scheduler: rr
  tunnel: $3
  backends:
    static: [{address: "$4"}, {address: "$5"}]
${6:-}
Y
}

url() {
	case "$1" in *:*) echo "http://[$1]:$2/" ;; *) echo "http://$1:$2/" ;; esac
}

rs_state() {
	for ns in rs1 rs2; do
		echo "== $ns"
		ns_exec "$ns" "$IP" -br link show | awk '$1 ~ /^(tunl0|gre0|ip6tnl0|ip6gre0|tlbgre.*)@/ {print $1, $2}'
		ns_exec "$ns" "$IP" -o addr show | awk '$2 ~ /^(tunl0|gre0|ip6tnl0|ip6gre0|tlbgre.*)$/ && $4 !~ /^fe80/ {print $2, $4}'
		ns_exec "$ns" "$IP" fou show
		ns_exec "$ns" nft list ruleset | grep -c 'dnat' || true
	done
}

baseline="$(rs_state)"

# received EVIDENCE: what rs1's kernel counts for the encapsulation that
# reaches it: a device's received packets (tunl0, gre0, ip6tnl0, ip6gre0,
# tunlb's own tlbgre*), or UDP datagrams received (udp, udp6) for GUE.
received() {
	case "$1" in
	udp) ns_exec rs1 awk '/^Udp: [0-9]/ {print $2}' /proc/net/snmp ;;
	udp6) ns_exec rs1 awk '$1 == "Udp6InDatagrams" {print $2}' /proc/net/snmp6 ;;
	*) ns_exec rs1 sh -c "cat /sys/class/net/$1/statistics/rx_packets" ;;
	esac
}

# check NAME VIP TUNNEL-YAML RS1 RS2 SHOW-TEXT EVIDENCE [EXTRA]
check() {
	_name="$1"
	manifest /tmp/tun.yaml "$2" "$3" "$4" "$5" "${8:-}"
	out="$(apply_all /tmp/tun.yaml)"
	echo "$out"
	lab_assert_eq "$_name: applied on every node" 3 "$(echo "$out" | grep -c 'applied')"
	if [ "${2#*:}" != "$2" ]; then
		# An IPv6 VIP on the director's eth0 answers neighbour solicitations
		# once duplicate address detection is skipped (it is).
		wait_for 10 "$_name: VIP reachable" ns_exec client ping -6 -c1 -W1 "$2"
	fi
	_before="$(received "$7")"
	got="$(requests 4 "$(url "$2" 80)")"
	echo "$_name VIP:80 -> $got"
	_after="$(received "$7")"
	echo "$_name: rs1 $7 received $_before -> $_after"
	lab_assert_eq "$_name: rs1's kernel counts the traffic as $7" yes \
		"$([ "${_after:-0}" -gt "${_before:-0}" ] && echo yes || echo no)"
	lab_assert_eq "$_name: VIP:80 alternates rs1/rs2" yes "$(alternates "$got")"
	got="$(requests 4 "$(url "$2" 8099)")"
	echo "$_name VIP:8099 -> $got"
	lab_assert_eq "$_name: mapped VIP:8099 alternates rs1/rs2" yes "$(alternates "$got")"
	lab_assert_eq "$_name: tunlb-agent show and ipvsadm -Ln agree" "$(ipvs_rows director)" "$(agent_rows director)"
	lab_assert_eq "$_name: show names the encapsulation of all 4 destinations" 4 \
		"$(ns_exec director "$AGENT" show | grep -c -- "-> .*Tunnel .* $6\$")"
}

# IPv4
check ipip "$VIP" "{type: ipip}" "$RS1" "$RS2" "ipip" "tunl0"
lab_assert_eq "ipip: rs1 holds the VIP on tunl0" "tunl0 $VIP/32" \
	"$(ns_exec rs1 "$IP" -o addr show dev tunl0 | awk '{print $2, $4}')"
check gue "$VIP" "{type: gue, port: 6080}" "$RS1" "$RS2" "gue:6080" "udp"
lab_assert_contains "gue: rs1 receives GUE on UDP 6080" "port 6080 gue" "$(ns_exec rs1 "$IP" fou show)"
check "gue csum" "$VIP" "{type: gue, port: 6080, checksum: csum}" "$RS1" "$RS2" "gue:6080 csum" "udp"
check "gue remcsum" "$VIP" "{type: gue, port: 6081, checksum: remcsum}" "$RS1" "$RS2" "gue:6081 remcsum" "udp"
lab_assert_eq "gue port change: only the new port stays" "port 6081 gue" "$(ns_exec rs1 "$IP" fou show)"
check gre "$VIP" "{type: gre}" "$RS1" "$RS2" "gre" "gre0"
lab_assert_eq "gre: no GUE port left" "" "$(ns_exec rs1 "$IP" fou show)"
lab_assert_contains "gre: rs1's gre0 is up" "UNKNOWN" "$(ns_exec rs1 "$IP" -br link show gre0)"
lab_assert_eq "gre: rs1's gre0 rp_filter off" 0 "$(ns_exec rs1 cat /proc/sys/net/ipv4/conf/gre0/rp_filter)"
# The fallback gre0 drops checksummed GRE: each backend address gets a GRE
# device of tunlb's own that expects checksums.
check "gre csum" "$VIP" "{type: gre, checksum: csum}" "$RS1" "$RS2" "gre csum" "tlbgre*"
lab_assert_eq "gre csum: rs1 receives on tlbgrec0a838b7 (local $RS1, checksums in)" "tlbgrec0a838b7 $RS1 icsum" \
	"$(ns_exec rs1 "$IP" -d link show tlbgrec0a838b7 | awk '/gre remote/ {for (i = 1; i <= NF; i++) if ($i == "local") l = $(i + 1); c = /icsum/ ? "icsum" : "-"; print "tlbgrec0a838b7", l, c}')"
lab_assert_eq "gre csum: its rp_filter off" 0 "$(ns_exec rs1 cat /proc/sys/net/ipv4/conf/tlbgrec0a838b7/rp_filter)"
check "gre again without checksums" "$VIP" "{type: gre}" "$RS1" "$RS2" "gre" "gre0"
lab_assert_eq "gre without checksums: tunlb's device is gone" "" "$(ns_exec rs1 "$IP" -br link show | grep tlbgre)"
delete_all /tmp/tun.yaml >/dev/null

# IPv6. On-link clients need the director's VIP on eth0: Linux answers
# neighbour solicitations only for addresses on the interface asked.
DIR6="  directors: {interface: eth0}"
check ip6ip6 "$VIP6" "{type: ipip}" "$RS1_6" "$RS2_6" "ipip" "ip6tnl0" "$DIR6"
lab_assert_eq "ip6ip6: rs1 holds the VIP on ip6tnl0" "ip6tnl0 $VIP6/128" \
	"$(ns_exec rs1 "$IP" -o -6 addr show dev ip6tnl0 scope global | awk '{print $2, $4}')"
lab_assert_contains "ip6ip6: the director's VIP is deprecated (never a source address)" "deprecated" \
	"$(ns_exec director "$IP" -o -6 addr show dev eth0 to "$VIP6/128")"
ns_exec client "$IP" -6 neigh flush dev eth0
ns_exec client ping -6 -c1 -W2 "$VIP6" >/dev/null
lab_assert_eq "ip6ip6: only the director answers neighbour solicitations for the VIP" \
	"$(ns_exec director cat /sys/class/net/eth0/address)" \
	"$(ns_exec client "$IP" -6 neigh show "$VIP6" | awk '{print $5}')"
# The default: the director holds an IPv6 VIP on ip6tnl0, for VIPs routed
# to the directors (here a host route on the client).
ns_exec client "$IP" -6 route add "$VIP6/128" via fd00:56::2
check "ip6ip6 routed, VIP on the director's ip6tnl0" "$VIP6" "{type: ipip}" "$RS1_6" "$RS2_6" "ipip" "ip6tnl0"
lab_assert_eq "routed: the director holds the VIP on ip6tnl0" "ip6tnl0 $VIP6/128" \
	"$(ns_exec director "$IP" -o -6 addr show dev ip6tnl0 scope global | awk '{print $2, $4}')"
ns_exec client "$IP" -6 route del "$VIP6/128" via fd00:56::2
check "ip6 gue" "$VIP6" "{type: gue, port: 6080}" "$RS1_6" "$RS2_6" "gue:6080" "udp6" "$DIR6"
lab_assert_contains "ip6 gue: rs1 receives GUE over IPv6" "port 6080 gue -6" "$(ns_exec rs1 "$IP" fou show)"
check "ip6 gue csum" "$VIP6" "{type: gue, port: 6080, checksum: csum}" "$RS1_6" "$RS2_6" "gue:6080 csum" "udp6" "$DIR6"
check "ip6 gue remcsum" "$VIP6" "{type: gue, port: 6080, checksum: remcsum}" "$RS1_6" "$RS2_6" "gue:6080 remcsum" "udp6" "$DIR6"
check "ip6 gre" "$VIP6" "{type: gre}" "$RS1_6" "$RS2_6" "gre" "ip6gre0" "$DIR6"
lab_assert_contains "ip6 gre: rs1's ip6gre0 is up" "UNKNOWN" "$(ns_exec rs1 "$IP" -br link show ip6gre0)"
lab_assert_contains "ip6 gre: DNAT in ip6 tunlb" "dnat to :80" "$(ns_exec rs1 nft list table ip6 tunlb)"
check "ip6 gre csum" "$VIP6" "{type: gre, checksum: csum}" "$RS1_6" "$RS2_6" "gre csum" "tlbgre6*" "$DIR6"
lab_assert_contains "ip6 gre csum: rs1 receives on a device of tunlb's" "tlbgre6" "$(ns_exec rs1 "$IP" -br link show)"
out="$(delete_all /tmp/tun.yaml)"
echo "$out"
lab_assert_same "delete takes back what each type added on the backends" "$baseline" "$(rs_state)"
lab_assert_eq "delete leaves no IPVS service" "" "$(ipvs_rows director)"

# UDP through the VIP: a server bound to the VIP answers from it; one bound
# to the wildcard answers from rs1's own address, and the client, whose
# socket is connected to the VIP, never sees that answer.
UDP_ECHO=/usr/local/bin/udp-echo
cat >/tmp/udp.yaml <<Y
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata: {name: dns, namespace: default}
spec:
  vip: "$VIP"
  ports: [{port: 5353, protocol: UDP}]
  scheduler: rr
  backends:
    static: [{address: "$RS1"}]
Y
apply_all /tmp/udp.yaml
# stop_udp: the server runs under a subshell, so $! is not its pid.
stop_udp() {
	kill $(pidof udp-echo) 2>/dev/null
	wait_for 10 "UDP server stopped" sh -c '! pidof udp-echo'
}
ns_exec rs1 "$UDP_ECHO" serve "$VIP:5353" rs1-bound &
wait_for 10 "UDP server bound" ns_exec client "$UDP_ECHO" ask "$VIP:5353" 1
lab_assert_eq "UDP: a server bound to the VIP answers through it" rs1-bound \
	"$(ns_exec client "$UDP_ECHO" ask "$VIP:5353")"
stop_udp
ns_exec rs1 "$UDP_ECHO" serve "0.0.0.0:5353" rs1-wildcard &
wait_for 10 "wildcard UDP server listening" sh -c "$IP netns exec rs1 cat /proc/net/udp | grep -q ':14E9 '"
# Udp NoPorts counts datagrams no socket accepted: the answer did arrive,
# from rs1's own address, which the client's socket is not connected to.
noports() { ns_exec client awk '/^Udp: [0-9]/ {print $3}' /proc/net/snmp; }
before="$(noports)"
lab_assert_eq "UDP: a wildcard-bound server's answer never reaches the client" NO-ANSWER \
	"$(ns_exec client "$UDP_ECHO" ask "$VIP:5353")"
lab_assert_eq "UDP: that answer arrived from another address and was dropped" yes \
	"$([ "$(noports)" -gt "$before" ] && echo yes || echo no)"
stop_udp
delete_all /tmp/udp.yaml >/dev/null

# Refused at once, naming the field: tunl0 for an IPv6 VIP; and a backend
# address receives GRE either with checksums or without: the younger object
# is refused there, the older one keeps working.
manifest /tmp/bad.yaml "$VIP6" "{type: ipip}" "$RS1_6" "$RS2_6" "  directors: {interface: tunl0}"
out="$(agent director apply -f /tmp/bad.yaml 2>&1)"
echo "$out"
lab_assert_contains "tunl0 for an IPv6 VIP refused" "spec.directors.interface: tunl0 cannot hold $VIP6" "$out"
lab_assert_eq "refusals leave no IPVS service" "" "$(ipvs_rows director)"
manifest /tmp/plain.yaml "$VIP" "{type: gre}" "$RS1" "$RS2"
manifest /tmp/csum.yaml 192.168.56.199 "{type: gre, checksum: csum}" "$RS1" "$RS2"
sed -i 's/name: tun,/name: tun-csum,/' /tmp/csum.yaml
apply_all /tmp/plain.yaml >/dev/null
out="$(agent rs1 apply -f /tmp/csum.yaml 2>&1)"
echo "$out"
lab_assert_contains "gre with and without checksums on one backend address: the younger refused" \
	"spec.tunnel.checksum: backend rs1 ($RS1) already receives GRE without checksums" "$out"
got="$(requests 4 "$(url "$VIP" 80)")"
lab_assert_eq "the older gre service still alternates" yes "$(alternates "$got")"
delete_all /tmp/plain.yaml >/dev/null
agent rs1 delete -f /tmp/csum.yaml >/dev/null 2>&1

topo_cleanup
lab_summary

#!/bin/sh
# A kernel module the backend's DNAT needs is missing: unloaded, and its file
# moved away so the kernel cannot load it on demand either. The standalone
# agent's output names the module and what needs it, the object is not
# applied (and nothing of it stays), the exit code says so. Once the file is
# back the same apply works, the kernel loading the module by itself.
. /scenarios/common.sh
VIP2=192.168.56.186

topo_setup || { echo "topology setup failed"; exit 1; }
start_backends
mods="/lib/modules/$(uname -r)"

# hide MODULE...: unloads each module and moves its file away.
hide() {
	for _m in "$@"; do
		_ko="$(find "$mods" -name "$_m.ko")"
		mv "$_ko" "/tmp/$_m.ko.away" || return 1
		echo "$_ko" >"/tmp/$_m.ko.path"
		rmmod "$_m" || return 1
	done
}
restore() {
	for _m in "$@"; do mv "/tmp/$_m.ko.away" "$(cat "/tmp/$_m.ko.path")"; done
}

# 1. nft_nat missing: the mapping 8099 -> 80 cannot be written.
lab_assert_eq "nft_nat unloaded and its file moved away" 0 "$(hide nft_nat >/dev/null 2>&1; echo $?)"
out="$(agent rs1 apply -f $EX/02-mapped.yaml 2>&1)"
rc=$?
echo "$out"
lab_assert_eq "apply fails" 1 "$rc"
lab_assert_contains "the output names the module and what needs it" \
	"error: $EX/02-mapped.yaml: VirtualService default/mapped: port mapping: kernel module nft_nat is not available (needed to DNAT $VIP2:8099)" "$out"
lab_assert_eq "the error line is not nft's bare errno" "" "$(echo "$out" | grep '^error:' | grep 'No such file or directory')"
lab_assert_eq "the object is not reported applied" "" "$(echo "$out" | grep 'virtualservice default/mapped applied')"
lab_assert_eq "no VIP on rs1" "" "$(ns_exec rs1 "$IP" -o addr show dev tunl0 2>/dev/null | grep "$VIP2")"
lab_assert_eq "no tunlb table on rs1" "" "$(ns_exec rs1 nft list tables | grep tunlb)"

# 2. nft_ct missing as well: the MSS clamp needs it; both are named.
lab_assert_eq "nft_ct unloaded and its file moved away" 0 "$(hide nft_ct >/dev/null 2>&1; echo $?)"
awk '{ print } /scheduler: wrr/ { print "  tunnel: {mssClamp: 1440}" }' $EX/02-mapped.yaml >/tmp/mapped-mss.yaml
out="$(agent rs1 apply -f /tmp/mapped-mss.yaml 2>&1)"
echo "$out"
lab_assert_contains "both modules are named" \
	"port mapping: kernel module nft_nat is not available (needed to DNAT $VIP2:8099); kernel module nft_ct is not available (needed to clamp the TCP MSS of $VIP2)" "$out"

# 3. The files are back: the same apply succeeds, the kernel loads the
#    modules on demand, and the mapping answers.
restore nft_nat nft_ct
out="$(apply_all /tmp/mapped-mss.yaml)"
echo "$out"
lab_assert_contains "rs1 applies it now" "[rs1] virtualservice default/mapped applied (backend)" "$out"
lab_assert_eq "the kernel loaded both on demand" 0 "$([ -d /sys/module/nft_nat ] && [ -d /sys/module/nft_ct ]; echo $?)"
lab_assert_contains "rs1 DNATs 8099 to 80" "ip daddr $VIP2 tcp dport 8099 dnat to :80" "$(ns_exec rs1 nft list table ip tunlb)"
lab_assert_eq "VIP2:8099 answers through both backends" yes "$(alternates "$(requests 4 "http://$VIP2:8099/")")"

delete_all /tmp/mapped-mss.yaml >/dev/null

# 3b. Only the MSS clamp's module is missing: the object that clamps is
#     refused on the backends, naming the module, while another object's
#     mapping on the same nodes is written and answers (one object's needs
#     do not hold up the node's other mappings).
VIP3=192.168.56.187
lab_assert_eq "nft_ct unloaded again and its file moved away" 0 "$(hide nft_ct >/dev/null 2>&1; echo $?)"
{
	cat $EX/02-mapped.yaml
	cat <<Y
---
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata: {name: clamped, namespace: default}
spec:
  vip: $VIP3
  ports: [{port: 80}]
  tunnel: {mssClamp: 1440}
  backends:
    static: [{address: $RS1}, {address: $RS2}]
Y
} >/tmp/two.yaml
out="$(apply_all /tmp/two.yaml)"
echo "$out"
lab_assert_contains "rs1 refuses the clamped object, naming nft_ct" \
	"[rs1] error: /tmp/two.yaml: VirtualService default/clamped: port mapping: kernel module nft_ct is not available (needed to clamp the TCP MSS of $VIP3)" "$out"
lab_assert_contains "rs1 applies the other object" "[rs1] virtualservice default/mapped applied (backend)" "$out"
lab_assert_contains "rs2 applies the other object" "[rs2] virtualservice default/mapped applied (backend)" "$out"
lab_assert_contains "rs1 DNATs 8099 to 80 all the same" "ip daddr $VIP2 tcp dport 8099 dnat to :80" "$(ns_exec rs1 nft list table ip tunlb)"
lab_assert_eq "rs1 holds the mapped VIP, not the refused one" "$VIP2" \
	"$(ns_exec rs1 "$IP" -o addr show dev tunl0 | awk '{print $4}' | cut -d/ -f1 | grep -E "^($VIP2|$VIP3)\$" | tr '\n' ' ' | sed 's/ $//')"
lab_assert_eq "VIP2:8099 answers through both backends" yes "$(alternates "$(requests 4 "http://$VIP2:8099/")")"
restore nft_ct
delete_all /tmp/two.yaml >/dev/null

# 4. A tunnel type whose receiving module is missing on a backend: gre needs
#    ip_gre (for gre0), gue needs fou. The backend names the module and does
#    not report the object applied.
tunnel_vs() {
	cat <<Y
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata: {name: tun, namespace: default}
spec:
  vip: 192.168.56.185
  ports: [{port: 80}]
  tunnel: $1
  backends:
    static: [{address: $RS1}, {address: $RS2}]
Y
}
tunnel_vs "{type: gre}" >/tmp/gre.yaml
tunnel_vs "{type: gue, port: 6080}" >/tmp/gue.yaml
lab_assert_eq "ip_gre unloaded and its file moved away" 0 "$(hide ip_gre >/dev/null 2>&1; echo $?)"
out="$(agent rs1 apply -f /tmp/gre.yaml 2>&1)"
echo "$out"
lab_assert_contains "gre: the backend names ip_gre" "gre0 is missing and could not be created" "$out"
lab_assert_contains "gre: ... and how to get it" "kernel module ip_gre is not available (modprobe ip_gre)" "$out"
lab_assert_eq "gre: not reported applied" "" "$(echo "$out" | grep 'applied')"
restore ip_gre
agent rs1 delete -f /tmp/gre.yaml >/dev/null 2>&1
# The kernel does not load fou on demand (it declares no generic netlink
# alias), so an unloaded fou is named even while its file is there.
lab_assert_eq "fou6 and fou unloaded" 0 "$(rmmod fou6 && rmmod fou; echo $?)"
out="$(agent rs1 apply -f /tmp/gue.yaml 2>&1)"
echo "$out"
lab_assert_contains "gue: the backend names fou" "GUE port 6080 (IPv4): kernel module fou is not loaded (modprobe fou; the kernel does not load it on demand)" "$out"
lab_assert_eq "gue: not reported applied" "" "$(echo "$out" | grep 'applied')"
insmod "$(find "$mods" -name fou.ko)"
out="$(agent rs1 apply -f /tmp/gue.yaml 2>&1)"
echo "$out"
lab_assert_contains "gue: applied once fou is loaded" "virtualservice default/tun applied (backend)" "$out"
lab_assert_contains "gue: the GUE port is there" "port 6080 gue" "$(ns_exec rs1 "$IP" fou show)"
agent rs1 delete -f /tmp/gue.yaml >/dev/null 2>&1
topo_cleanup
lab_summary

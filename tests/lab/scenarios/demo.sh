#!/bin/sh
# The demo: the reference LVS-TUN scenario, narrated.
. /scenarios/common.sh
say() { printf '\n### %s\n' "$*"; }

topo_setup || exit 1
start_backends
say "tunlb-agent apply -f examples/seed/ on the director and on rs1, rs2"
apply_all $EX
say "ipvsadm -Ln on the director"
ns_exec director ipvsadm -Ln
say "curl http://$VIP/ x4 (wrr 1:1)"
requests 4 "http://$VIP/"
awk '!done && /weight: 1/ { sub(/weight: 1/, "weight: 2"); done = 1 } { print }' $EX/01-web.yaml >/tmp/web.yaml
say "weight of rs1 -> 2, applied on the running director"
agent director apply -f /tmp/web.yaml
say "curl http://$VIP/ x6 (wrr 2:1)"
requests 6 "http://$VIP/"
say "curl http://192.168.56.186:8099/ x4 (port 8099 mapped to 80 on the backends)"
requests 4 "http://192.168.56.186:8099/"
say "curl http://192.168.56.187/ x6 (VIP on the director's eth0, weights 1:2)"
requests 6 "http://192.168.56.187/"
say "tunlb-agent show on rs1"
ns_exec rs1 "$AGENT" show
topo_cleanup

#!/bin/sh
# The demo through Kubernetes: kubectl apply the seed, watch it become Ready,
# and see the answers of the reference LVS-TUN walkthrough. Each answer is
# checked: the demo fails when one is wrong.
. /scenarios/cluster.sh
say() { printf '\n### %s\n' "$*"; }

cluster_setup
say "kubectl apply -f examples/seed/"
k apply -f /examples/seed/
ready=no
k wait --for=condition=Ready tvs --all --timeout=90s && ready=yes
lab_assert_eq "every VirtualService is Ready" yes "$ready"
lab_assert_eq "the director weights every real server as its status says" 0 \
	"$(wait_for 30 "weights in IPVS" weighted web mapped eth-vip; echo $?)"
say "kubectl get tvs"
k get tvs
say "curl http://$VIP/ x4 (wrr 1:1)"
got="$(requests 4 "http://$VIP/")"
echo "$got"
lab_assert_eq "weights 1:1: rs1 and rs2 alternate" yes "$(alternates "$got")"
say "kubectl patch tvs web: weight of rs1 -> 2"
k patch tvs web --type=json -p '[{"op":"replace","path":"/spec/backends/static/0/weight","value":2}]'
k wait --for=condition=Ready tvs/web --timeout=60s
wait_for 30 "weight 2 in the kernel" sh -c "$IP netns exec director ipvsadm -Ln | tr -s ' ' | grep -q -- '-> $RS1:80 Tunnel 2'"
say "curl http://$VIP/ x6 (wrr 2:1)"
got="$(requests 6 "http://$VIP/")"
echo "$got"
lab_assert_eq "weights 2:1: rs1 answers 4 of 6" 4 "$(count rs1 "$got")"
say "curl http://192.168.56.186:8099/ x4 (8099 mapped to 80 on the backends)"
got="$(requests 4 "http://192.168.56.186:8099/")"
echo "$got"
lab_assert_eq "mapped port 8099: rs1 and rs2 alternate" yes "$(alternates "$got")"
say "curl http://192.168.56.187/ x6 (VIP on the director's eth0, weights 1:2)"
got="$(requests 6 "http://192.168.56.187/")"
echo "$got"
lab_assert_eq "VIP on eth0, weights 1:2: rs2 answers 4 of 6" 4 "$(count rs2 "$got")"
say "ipvsadm -Ln on the director"
ns_exec director ipvsadm -Ln
say "kubectl get tvs web -o yaml (status)"
k get tvs web -o yaml | sed -n '/^status:/,$p'
say "kubectl get tvs"
k get tvs
topo_cleanup
say "demo checks"
lab_summary

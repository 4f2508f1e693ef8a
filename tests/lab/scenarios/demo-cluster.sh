#!/bin/sh
# The demo through Kubernetes: kubectl apply the seed, watch it become Ready,
# and see the answers of the reference LVS-TUN walkthrough.
. /scenarios/cluster.sh
say() { printf '\n### %s\n' "$*"; }

cluster_setup
say "kubectl apply -f examples/seed/"
k apply -f /examples/seed/
k wait --for=condition=Ready tvs --all --timeout=90s
say "kubectl get tvs"
k get tvs
say "curl http://$VIP/ x4 (wrr 1:1)"
requests 4 "http://$VIP/"
say "kubectl patch tvs web: weight of rs1 -> 2"
k patch tvs web --type=json -p '[{"op":"replace","path":"/spec/backends/static/0/weight","value":2}]'
k wait --for=condition=Ready tvs/web --timeout=60s
wait_for 30 "weight 2 in the kernel" sh -c "$IP netns exec director ipvsadm -Ln | tr -s ' ' | grep -q -- '-> $RS1:80 Tunnel 2'"
say "curl http://$VIP/ x6 (wrr 2:1)"
requests 6 "http://$VIP/"
say "curl http://192.168.56.186:8099/ x4 (8099 mapped to 80 on the backends)"
requests 4 "http://192.168.56.186:8099/"
say "curl http://192.168.56.187/ x6 (VIP on the director's eth0, weights 1:2)"
requests 6 "http://192.168.56.187/"
say "ipvsadm -Ln on the director"
ns_exec director ipvsadm -Ln
say "kubectl get tvs web -o yaml (status)"
k get tvs web -o jsonpath='{.status}' | tr ',' '\n' | head -40
echo
say "kubectl get tvs"
k get tvs
topo_cleanup

#!/bin/sh
# Trust boundaries through Kubernetes: VipPools written by the cluster admin
# decide what tenants' VirtualServices may make nodes do. A tenant allowed to
# write VirtualServices in team-a only is refused, with the pool and the rule
# named, for every grant it lacks, and no node's kernel changes; agents check
# the pools themselves, so an Accepted condition forged while the operator is
# frozen programs nothing outside them.
. /scenarios/cluster.sh
# The agents run IPVS connection sync as the chart's agent.ipvsSync sets it.
AGENT_ENV="TUNLB_IPVS_SYNC_INTERFACE=eth0 TUNLB_IPVS_SYNC_ID=42"
cluster_setup
CONTROL="$(cat /kube/control-plane-url)"
# control stop|resume operator: freezes or thaws the operator on the host.
control() { curl -fsS -X POST --max-time 60 "$CONTROL/$1/$2"; }
tenant() { k --as=tenant-a "$@"; }

# The cluster admin's side: namespaces, the tenant's RBAC, and the pools.
k create namespace team-a >/dev/null
k create namespace team-b >/dev/null
k apply -f - >/dev/null <<'EOF'
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: virtualservices, namespace: team-a}
rules:
- apiGroups: [tunlb.io]
  resources: [virtualservices]
  verbs: [get, list, watch, create, update, patch, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: tenant-a, namespace: team-a}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: virtualservices}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: tenant-a}]
---
apiVersion: tunlb.io/v1alpha1
kind: VipPool
metadata: {name: team-a}
spec:
  cidrs: [192.168.56.200/30]
  namespaces: [team-a]
  backends: {nodeSelector: {matchLabels: {tunlb.io/backend: "true"}}}
  targetPorts: [{from: 8080, to: 8089}]
---
apiVersion: tunlb.io/v1alpha1
kind: VipPool
metadata: {name: team-b}
spec:
  cidrs: [192.168.56.204/30]
  namespaces: [team-b]
  backends: {nodeSelector: {matchLabels: {tunlb.io/backend: "true"}}}
---
apiVersion: tunlb.io/v1alpha1
kind: VipPool
metadata: {name: shared-range}
spec:
  cidrs: [192.168.56.208/30]
  namespaces: [team-a, team-b]
  backends: {nodeSelector: {matchLabels: {tunlb.io/backend: "true"}}}
EOF

# vs NAME VIP PORT [EXTRA]: a team VirtualService with rs1 and rs2 as backends.
vs() {
	printf 'apiVersion: tunlb.io/v1alpha1\nkind: VirtualService\nmetadata: {name: %s}\nspec:\n  vip: %s\n  ports: [{port: %s}]\n  backends: {static: [{address: %s}, {address: %s}]}\n%s\n' \
		"$1" "$2" "$3" "$RS1" "$RS2" "${4:-}"
}
# allowed NS NAME: "status reason: message" of the VipAllowed condition.
allowed() {
	k get tvs -n "$1" "$2" -o jsonpath='{.status.conditions[?(@.type=="VipAllowed")].status} {.status.conditions[?(@.type=="VipAllowed")].reason}: {.status.conditions[?(@.type=="VipAllowed")].message}'
}
refused_with() { case "$(allowed "$1" "$2")" in "False $3:"*) return 0 ;; esac; return 1; }
before_director="$(kernel_state director)"

# 1. What the pool grants works: team-a's VIP, tunl0 on the default directors, rs1 and rs2.
vs good 192.168.56.200 80 | tenant apply -n team-a -f - >/dev/null
lab_assert_eq "team-a's VirtualService in its pool becomes Ready" 0 \
	"$(k wait -n team-a --for=condition=Ready tvs/good --timeout=90s >/dev/null 2>&1; echo $?)"
lab_assert_contains "VipAllowed names the pool" "True InPool: " "$(allowed team-a good)"
lab_assert_contains "and the pool's name" "team-a" "$(allowed team-a good)"
lab_assert_eq "it answers through the VIP" yes "$(alternates "$(requests 4 http://192.168.56.200/)")"
used_is() { [ "$(k get vippool "$1" -o jsonpath='{.status.used}')" = "$2" ]; }
lab_assert_eq "the pool counts one VIP in use" 0 "$(wait_for 30 "used 1" used_is team-a 1; echo $?)"
# daemons NODE: the IPVS sync daemons NODE's kernel runs.
daemons() { ns_exec "$1" ipvsadm -L --daemon | sort | tr '\n' ' '; }
lab_assert_contains "the directing node runs the master sync daemon, sync ID 42" \
	"master sync daemon (mcast=eth0, syncid=42," "$(daemons director)"
lab_assert_contains "and the backup" "backup sync daemon (mcast=eth0, syncid=42," "$(daemons director)"
lab_assert_eq "a backend runs none" "" "$(daemons rs1)"
k get vippools

# 2. Each grant the tenant lacks is refused, with the pool and the rule named.
vs elsewhere 192.168.56.201 80 "  directors: {nodeSelector: {matchExpressions: [{key: tunlb.io/director, operator: DoesNotExist}]}}" |
	tenant apply -n team-a -f - >/dev/null
vs on-eth0 192.168.56.202 80 "  directors: {interface: eth0}" | tenant apply -n team-a -f - >/dev/null
printf 'apiVersion: tunlb.io/v1alpha1\nkind: VirtualService\nmetadata: {name: kubelet}\nspec:\n  vip: 192.168.56.203\n  ports: [{port: 80, targetPort: 10250}]\n  backends: {static: [{address: %s}]}\n' "$RS1" |
	tenant apply -n team-a -f - >/dev/null
printf 'apiVersion: tunlb.io/v1alpha1\nkind: VirtualService\nmetadata: {name: director-as-backend}\nspec:\n  vip: 192.168.56.203\n  ports: [{port: 81}]\n  backends: {static: [{address: 192.168.56.181}]}\n' |
	tenant apply -n team-a -f - >/dev/null
vs theirs 192.168.56.204 80 | tenant apply -n team-a -f - >/dev/null
vs nowhere 198.51.100.10 80 | tenant apply -n team-a -f - >/dev/null
vs first 192.168.56.208 80 | k apply -n team-b -f - >/dev/null
lab_assert_eq "team-b's VirtualService on the shared range is Ready" 0 \
	"$(k wait -n team-b --for=condition=Ready tvs/first --timeout=90s >/dev/null 2>&1; echo $?)"
vs free-port 192.168.56.208 8080 | tenant apply -n team-a -f - >/dev/null
for c in "elsewhere DirectorNotAllowed node rs1 may not direct" \
	"on-eth0 InterfaceNotAllowed tunl0, ip6tnl0 only (spec.directors.interfaces), not on eth0" \
	"kubelet TargetPortNotAllowed may not map to 10250 (spec.targetPorts: 8080-8089)" \
	"director-as-backend BackendNotAllowed static backend 192.168.56.181 is node director" \
	"theirs NamespaceNotAllowed VipPool team-b: namespace team-a" \
	"nowhere NoPool VIP 198.51.100.10 is in no VipPool" \
	"free-port VipInUse belongs to namespace team-b"; do
	# shellcheck disable=SC2086 # name, reason, then the words expected
	set -- $c
	name="$1" reason="$2"
	shift 2
	lab_assert_eq "$name: refused with $reason" 0 "$(wait_for 30 "$name refused" refused_with team-a "$name" "$reason"; echo $?)"
	lab_assert_contains "$name: the message names the rule" "$*" "$(allowed team-a "$name")"
done
lab_assert_contains "refusals show as not Ready" "False" \
	"$(k get tvs -n team-a on-eth0 -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')"
lab_assert_eq "the tenant cannot write a VipPool" yes \
	"$(printf 'apiVersion: tunlb.io/v1alpha1\nkind: VipPool\nmetadata: {name: mine}\nspec: {cidrs: [192.168.56.0/24], namespaces: [team-a]}\n' |
		tenant apply -f - 2>&1 | grep -q Forbidden && echo yes)"
lab_assert_eq "nothing refused reached the director's kernel" "" \
	"$(kernel_state director | grep -E '192\.168\.56\.20[1-4]|192\.168\.56\.208:8080|198\.51\.100\.10' | head)"
lab_assert_eq "nor rs1's (no address, sysctl or DNAT to 10250)" "" \
	"$(kernel_state rs1 | grep -E '192\.168\.56\.20[1-4]|10250' | head)"
k delete -n team-a tvs good >/dev/null

# 3. A pool change that takes team-a out withdraws its VirtualService from the kernel.
vs good 192.168.56.200 80 | tenant apply -n team-a -f - >/dev/null
k wait -n team-a --for=condition=Ready tvs/good --timeout=90s >/dev/null
k patch vippool team-a --type=merge -p '{"spec":{"namespaces":["team-z"]}}' >/dev/null
lab_assert_eq "the pool no longer admits team-a: refused" 0 \
	"$(wait_for 30 "good refused" refused_with team-a good NamespaceNotAllowed; echo $?)"
no_vip() { ! ns_exec director ipvsadm -Ln | grep -q 192.168.56.200; }
lab_assert_eq "and withdrawn from the director's IPVS" 0 "$(wait_for 30 "withdrawn" no_vip; echo $?)"
lab_assert_eq "and from rs1's tunl0" "" "$(ns_exec rs1 "$IP" -o addr show dev tunl0 | grep 192.168.56.200)"
k patch vippool team-a --type=merge -p '{"spec":{"namespaces":["team-a"]}}' >/dev/null
lab_assert_eq "admitted again: Ready" 0 \
	"$(k wait -n team-a --for=condition=Ready tvs/good --timeout=90s >/dev/null 2>&1; echo $?)"
k delete -n team-a tvs good >/dev/null

# 4. Forged acceptance: with the operator frozen, a cluster admin writes
# Accepted=True and real servers on objects no pool admits. The agents check
# the pools themselves, refuse in their own entries, and program nothing.
control stop operator
forge() { # NAME VIP PORT TARGET_PORT EXTRA
	printf 'apiVersion: tunlb.io/v1alpha1\nkind: VirtualService\nmetadata: {name: %s}\nspec:\n  vip: %s\n  ports: [{port: %s, targetPort: %s}]\n  backends: {static: [{address: %s}, {address: %s}]}\n%s\n' \
		"$1" "$2" "$3" "$4" "$RS1" "$RS2" "${5:-}" | k apply -n team-a -f - >/dev/null
	_now="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	k patch tvs -n team-a "$1" --subresource=status --type=merge -p "{\"status\":{\"observedGeneration\":1,
		\"conditions\":[{\"type\":\"Accepted\",\"status\":\"True\",\"reason\":\"Accepted\",\"message\":\"forged\",\"lastTransitionTime\":\"$_now\"}],
		\"realServers\":[{\"address\":\"$RS1\",\"weight\":1,\"nodeName\":\"rs1\"},{\"address\":\"$RS2\",\"weight\":1,\"nodeName\":\"rs2\"}]}}" >/dev/null
}
forge forged-eth0 192.168.56.202 80 80 "  directors: {interface: eth0}"
forge forged-outside 192.168.56.230 80 80
forge forged-kubelet 192.168.56.203 80 10250
# entry NAME NODE: that node's message in NAME's status.
entry() { k get tvs -n team-a "$1" -o jsonpath="{.status.nodes[?(@.nodeName==\"$2\")].message}"; }
entry_has() { case "$(entry "$1" "$2")" in *"$3"*) return 0 ;; esac; return 1; }
lab_assert_eq "the director refuses the forged eth0 VIP in its own entry" 0 \
	"$(wait_for 30 "director refuses" entry_has forged-eth0 director "refused by this node: VipPool team-a"; echo $?)"
lab_assert_contains "naming the rule" "spec.directors.interfaces" "$(entry forged-eth0 director)"
lab_assert_eq "the director refuses the VIP outside team-a's pools" 0 \
	"$(wait_for 30 "director refuses" entry_has forged-outside director "refused by this node: VipPool lab"; echo $?)"
lab_assert_eq "rs1 refuses the mapping to 10250" 0 \
	"$(wait_for 30 "rs1 refuses" entry_has forged-kubelet rs1 "may not map to 10250"; echo $?)"
lab_assert_eq "the forged objects' entries are not programmed" "false" \
	"$(k get tvs -n team-a forged-eth0 -o jsonpath='{.status.nodes[?(@.nodeName=="director")].programmed}')"
# forged-kubelet's director part (a VIP of team-a's pool on tunl0) is within
# the pool; its mapping is rs1's part, which rs1 refuses.
lab_assert_eq "no forged eth0 or outside VIP in the director's kernel" "" \
	"$(kernel_state director | grep -E '192\.168\.56\.(202|230)' | head)"
lab_assert_eq "no forged VIP, sysctl or DNAT to 10250 on rs1" "" \
	"$(kernel_state rs1 | grep -E '192\.168\.56\.230|10250' | head)"
control resume operator
lab_assert_eq "the thawed operator refuses the forged objects too" 0 \
	"$(wait_for 60 "operator judged" refused_with team-a forged-outside NamespaceNotAllowed; echo $?)"
k delete -n team-a tvs --all >/dev/null
k delete -n team-b tvs --all >/dev/null
# tenant_state NS: what of the tenants' VIPs NS's kernel holds.
tenant_state() { kernel_state "$1" | grep -E '192\.168\.56\.(20[0-9]|210|230)|198\.51\.100\.10|10250'; }
no_tenant_state() { [ -z "$(tenant_state "$1")" ]; }
for n in director rs1 rs2; do
	lab_assert_eq "$n's kernel holds nothing of the tenants once they are deleted" 0 \
		"$(wait_for 60 "$n clean" no_tenant_state "$n"; echo $?)"
done
echo "director's kernel state, before the tenants -> now:"
printf '%s\n' "$before_director" >/tmp/before-director
kernel_state director | diff /tmp/before-director - || true
lab_summary

#!/bin/sh
# Chaos through Kubernetes. A churn loop adds, edits (weights, schedulers) and
# deletes VirtualServices and changes Service endpoints, while node agents are
# SIGKILLed at 20 random moments and restarted as the harness starts them.
# Four VirtualServices stay unchanged throughout and a client keeps requesting
# them: no request may fail. Foreign IPVS services, nft tables and addresses
# planted before the first object must be byte-identical after the churn.
# Once the churn stops and every agent has completed a pass over the final
# objects, each node's kernel must equal the plan computed here from the
# objects this script created: every IPVS service, destination and weight,
# every address, nft table and DNAT target; nothing missing, nothing left over.
#
# The whole schedule (every churn step, every kill delay and which agent
# dies) comes from one seed: /chaos/seed when the harness provides it, else a
# random one. The seed is printed; the same seed replays the same schedule
# (how it interleaves with the agents' own timing differs from run to run).
. /scenarios/cluster.sh

SEED="$(cat /chaos/seed 2>/dev/null || od -An -N4 -tu4 /dev/urandom | tr -d ' ')"
KILLS=20
echo "chaos seed: $SEED (TUNLB_CHAOS_SEED=$SEED replays this schedule)"
C=/tmp/chaos
mkdir -p "$C/steps"
read -r t_start _ </proc/uptime
elapsed() { awk -v t0="$t_start" '{ printf "%.1f", $1 - t0 }' /proc/uptime; }

cluster_setup
POD_PORT=8080

# add_pod NAME NODE POD_IP GATEWAY: a pod namespace behind NODE serving NAME
# on POD_PORT (the node's side of the veth holds the gateway, as a bridge
# CNI's cni0 would).
add_pod() {
	"$IP" netns add "$1"
	"$IP" link add "p-$1" type veth peer name eth0 netns "$1"
	"$IP" link set "p-$1" netns "$2"
	ns_exec "$2" "$IP" addr add "$4/24" dev "p-$1"
	ns_exec "$2" "$IP" link set "p-$1" up
	ns_exec "$2" sh -c "echo 1 > /proc/sys/net/ipv4/ip_forward"
	ns_exec "$1" "$IP" addr add "$3/24" dev eth0
	ns_exec "$1" "$IP" link set eth0 up
	ns_exec "$1" "$IP" link set lo up
	ns_exec "$1" "$IP" route add default via "$4"
	start_http "$1" "$1" "$POD_PORT"
}
add_pod pod-a rs1 10.244.1.5 10.244.1.1
add_pod pod-b rs2 10.244.2.5 10.244.2.1

# Each node's own addresses, before anything else touches it.
for n in director rs1 rs2; do
	ns_exec "$n" "$IP" -o -4 addr show | awk '{ print $2, $4 }' >"$C/base-$n"
done

# --- Foreign state: someone else's, on every node --------------------------------
# IPVS services (one on a port of web's VIP), an nft table with a DNAT, and
# addresses: one on tunl0, where tunlb puts its VIPs (ipip is loaded at boot,
# so every namespace has tunl0).
FOREIGN_SVCS="10.9.9.9:80 192.168.56.185:8443"
ns_exec director ipvsadm -A -t 10.9.9.9:80 -s rr
ns_exec director ipvsadm -a -t 10.9.9.9:80 -r "$RS1:80" -i -w 3
ns_exec director ipvsadm -A -t 192.168.56.185:8443 -s wlc
ns_exec director ipvsadm -a -t 192.168.56.185:8443 -r "$RS2:8443" -i -w 1
for n in director rs1; do
	ns_exec "$n" nft -f - <<'NFT'
table ip foreign {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 10.9.9.9 tcp dport 81 dnat to :80
	}
}
NFT
done
ns_exec director "$IP" link add name dummy0 type dummy
ns_exec director "$IP" addr add 10.8.8.8/32 dev dummy0
ns_exec rs1 "$IP" addr add 10.7.7.7/32 dev tunl0
ns_exec rs2 "$IP" addr add 10.6.6.6/32 dev lo
echo "dummy0 10.8.8.8/32" >"$C/foreign-addr-director"
echo "tunl0 10.7.7.7/32" >"$C/foreign-addr-rs1"
echo "lo 10.6.6.6/32" >"$C/foreign-addr-rs2"

# foreign_state NODE: what others made on NODE, as their own tools print it.
foreign_state() {
	for _s in $FOREIGN_SVCS; do ns_exec "$1" ipvsadm -Ln -t "$_s" 2>&1; done
	ns_exec "$1" nft list table ip foreign 2>&1
	ns_exec "$1" "$IP" -o addr show | grep -E ' (10\.8\.8\.8|10\.7\.7\.7|10\.6\.6\.6)/'
}
for n in director rs1 rs2; do foreign_state "$n" >"$C/foreign-before-$n"; done
lab_assert_contains "foreign IPVS service planted" "-> $RS1:80" "$(cat "$C/foreign-before-director")"
lab_assert_contains "foreign nft table planted" "dnat to :80" "$(cat "$C/foreign-before-rs1")"
lab_assert_contains "foreign address on tunl0 planted" "10.7.7.7/32" "$(cat "$C/foreign-before-rs1")"

# --- The schedule ------------------------------------------------------------------
# A snapshot of the objects is a file of lines
#   vs NAME VIP PORT TARGET_PORT DIRECTOR_IFACE SCHEDULER static ADDR=WEIGHT,...
#   vs NAME VIP PORT - DIRECTOR_IFACE SCHEDULER service SERVICE
#   ep SERVICE NODE POD_IP READY
# Every Service maps port 80 (named http) to POD_PORT on its endpoints. The
# unchanged objects: the seed's three (/examples/seed) and a Service-backed
# one with real pods.
cat >"$C/unchanged" <<EOF
vs web 192.168.56.185 80 80 tunl0 wrr static $RS1=1,$RS2=1
vs mapped 192.168.56.186 8099 80 tunl0 wrr static $RS1=1,$RS2=1
vs eth-vip 192.168.56.187 80 80 eth0 wrr static $RS1=1,$RS2=2
vs shop 192.168.56.190 80 - tunl0 rr service shop
ep shop rs1 10.244.1.5 true
ep shop rs2 10.244.2.5 true
EOF

# One awk run plans every churn step from the seed, simulating the objects
# as it goes: step N is a request ($C/steps/N.req: METHOD PATH PAUSE_MS, the
# pause, 0.3-1.5 s, coming before it), its body ($C/steps/N.yaml: a
# server-side apply) and the snapshot after it ($C/steps/N.snap; 0.snap is
# the start, which 0.yaml creates). The first four steps are an add, a
# weight edit, a delete and an endpoint change; then adds 30%, weight or
# scheduler edits 30%, deletes 15% and endpoint changes 25%, with 6-24
# churned objects live.
# Static objects get 1-3 real servers (the cluster's rs1/rs2 and hosts outside
# it), weights 0-4 (0 drains), sometimes port 443, a mapped target port or
# the VIP on the director's eth0; Service-backed objects use svc-0..3, whose
# endpoints are 0-3 pods on rs1/rs2, most of them ready.
awk -v seed="$SEED" -v rs1="$RS1" -v rs2="$RS2" -v podport="$POD_PORT" -v dir="$C/steps" '
	function rnd(n) { return int(rand() * n) }
	function vs_yaml(name, f, out,   c, b, i, aw) {
		printf "apiVersion: tunlb.io/v1alpha1\nkind: VirtualService\nmetadata: {name: %s}\nspec:\n  vip: %s\n", name, f[1] >out
		if (f[3] == "-" || f[3] == f[2]) printf "  ports: [{port: %s}]\n", f[2] >out
		else printf "  ports: [{port: %s, targetPort: %s}]\n", f[2], f[3] >out
		printf "  scheduler: %s\n", f[5] >out
		if (f[4] != "tunl0") printf "  directors: {interface: %s}\n", f[4] >out
		# Churned objects list hosts outside the cluster that answer nothing:
		# unchecked, so the kernel must hold exactly their planned weights.
		printf "  healthCheck: {type: none}\n" >out
		if (f[6] == "service") { printf "  backends: {service: {name: %s}}\n", f[7] >out; return }
		printf "  backends:\n    static:\n" >out
		c = split(f[7], b, ",")
		for (i = 1; i <= c; i++) { split(b[i], aw, "="); printf "    - {address: %s, weight: %s}\n", aw[1], aw[2] >out }
	}
	function slice_yaml(svc, out,   c, e, i, p) {
		printf "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: %s-1\n", svc >out
		printf "  labels: {kubernetes.io/service-name: %s}\naddressType: IPv4\n", svc >out
		printf "ports: [{name: http, port: %s, protocol: TCP}]\n", podport >out
		c = split(eps[svc], e, ";")
		if (eps[svc] == "") { print "endpoints: []" >out; return }
		print "endpoints:" >out
		for (i = 1; i <= c; i++) { split(e[i], p, " "); printf "- {addresses: [%s], nodeName: %s, conditions: {ready: %s}}\n", p[2], p[1], p[3] >out }
	}
	function new_eps(   c, i, node, ip, seen, out) {
		c = rnd(4); out = ""
		for (i = 0; i < c; i++) {
			node = rnd(2) + 1
			ip = "10.244." node "." (10 + rnd(60))
			if (ip in seen) continue
			seen[ip] = 1
			out = out (out == "" ? "" : ";") "rs" node " " ip " " (rnd(5) == 0 ? "false" : "true")
		}
		return out
	}
	# Every churned object gets a VIP of its own: 10.77.0.1, 10.77.0.2, ...
	function next_vip(   v) { v = vips++; return "10.77." int(v / 250) "." (v % 250 + 1) }
	function new_static(   c, start, step, j, b, port, target, iface) {
		c = rnd(3) + 1; start = rnd(5); step = rnd(2) + 1; b = ""
		for (j = 0; j < c; j++) b = b (j ? "," : "") addrs[(start + j * step) % 5] "=" rnd(5)
		port = rnd(4) == 0 ? 443 : 80
		target = rnd(2) ? 8080 : port
		iface = rnd(5) == 0 ? "eth0" : "tunl0"
		return next_vip() " " port " " target " " iface " " sched[rnd(3)] " static " b
	}
	function add(name, line) { obj[name] = line; order[++n_order] = name }
	function live_names(list,   i, c) { c = 0; for (i = 1; i <= n_order; i++) if (order[i] in obj) list[++c] = order[i]; return c }
	function snapshot(file,   i, s) {
		while ((getline s < unchanged) > 0) print s >file
		close(unchanged)
		for (i = 1; i <= n_order; i++) if (order[i] in obj) print "vs " order[i] " " obj[order[i]] >file
		for (i = 0; i < 4; i++) emit_eps("svc-" i, file)
		close(file)
	}
	function emit_eps(svc, file,   c, e, j) { c = split(eps[svc], e, ";"); for (j = 1; j <= c; j++) print "ep " svc " " e[j] >file }
	BEGIN {
		srand(seed)
		unchanged = dir "/../unchanged"
		addrs[0] = rs1; addrs[1] = rs2; addrs[2] = "192.168.56.100"; addrs[3] = "192.168.56.101"; addrs[4] = "192.168.56.102"
		sched[0] = "wrr"; sched[1] = "rr"; sched[2] = "wlc"
		vs_path = "/apis/tunlb.io/v1alpha1/namespaces/default/virtualservices/"
		slice_path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/"
		# The start: 8 static objects and one on each churned Service.
		out = dir "/0.yaml"
		for (i = 0; i < 8; i++) { name = "c-" (vips + 1); add(name, new_static()); split(obj[name], f, " "); print "---" >out; vs_yaml(name, f, out) }
		for (i = 0; i < 4; i++) {
			name = "s-" (vips + 1)
			add(name, next_vip() " 80 - tunl0 wrr service svc-" i)
			split(obj[name], f, " "); print "---" >out; vs_yaml(name, f, out)
			eps["svc-" i] = new_eps()
			printf "---\napiVersion: v1\nkind: Service\nmetadata: {name: svc-%d}\nspec:\n  ports: [{name: http, port: 80, targetPort: %s}]\n---\n", i, podport >out
			slice_yaml("svc-" i, out)
		}
		close(out)
		snapshot(dir "/0.snap")
		for (step = 1; step <= 200; step++) {
			r = rnd(100)
			if (step <= 4) r = (step - 1) * 25 + 10
			n_live = live_names(live)
			n_static = 0
			for (i = 1; i <= n_live; i++) if (obj[live[i]] ~ / static /) statics[++n_static] = live[i]
			if (r < 30 && n_live >= 24) r = 40
			if (r >= 60 && r < 75 && n_live <= 6) r = 40
			if (r >= 30 && r < 60 && n_static == 0) r = 80
			out = dir "/" step ".yaml"
			if (r < 30) {
				if (rnd(10) < 7) { name = "c-" (vips + 1); add(name, new_static()) }
				else { name = "s-" (vips + 1); add(name, next_vip() " 80 - tunl0 " sched[rnd(3)] " service svc-" rnd(4)) }
				split(obj[name], f, " "); vs_yaml(name, f, out)
				req = "PATCH " vs_path name; what = "add " name
			} else if (r < 60) {
				name = statics[rnd(n_static) + 1]
				split(obj[name], f, " ")
				if (step > 4 && rnd(10) == 0) { f[5] = sched[rnd(3)]; what = "scheduler " name }
				else {
					c = split(f[7], b, ",")
					i = rnd(c) + 1
					split(b[i], aw, "=")
					b[i] = aw[1] "=" rnd(5)
					f[7] = b[1]; for (j = 2; j <= c; j++) f[7] = f[7] "," b[j]
					what = "weight " name
				}
				obj[name] = f[1] " " f[2] " " f[3] " " f[4] " " f[5] " " f[6] " " f[7]
				vs_yaml(name, f, out)
				req = "PATCH " vs_path name
			} else if (r < 75) {
				name = live[rnd(n_live) + 1]
				delete obj[name]
				printf "" >out
				req = "DELETE " vs_path name; what = "delete " name
			} else {
				svc = "svc-" rnd(4)
				eps[svc] = new_eps()
				slice_yaml(svc, out)
				req = "PATCH " slice_path svc "-1"; what = "endpoints " svc
			}
			close(out)
			print req " " (300 + rnd(1200)) >(dir "/" step ".req"); close(dir "/" step ".req")
			print what >(dir "/" step ".what"); close(dir "/" step ".what")
			snapshot(dir "/" step ".snap")
		}
	}'

echo "planned at $(elapsed) s"

# Kill N: "DELAY_MS NODE PAUSE_MS": wait 0.5-3.5 s, SIGKILL NODE's agent,
# wait 0-1.5 s, start it again.
awk -v seed="$SEED" -v kills="$KILLS" 'BEGIN {
	srand(seed + 1)
	split("director rs1 rs2", nodes, " ")
	for (i = 0; i < kills; i++) printf "%d %s %d\n", 500 + int(rand() * 3000), nodes[int(rand() * 3) + 1], int(rand() * 1500)
}' >"$C/kills"

# --- Expectations, computed from a snapshot alone --------------------------------

# expected NODE SNAPSHOT: what NODE's kernel must hold, as `observed` prints it:
#   ipvs PROTO VIP:PORT SCHEDULER / ipvs PROTO VIP:PORT -> RIP:PORT Tunnel WEIGHT
#   addr IFACE ADDRESS/PREFIX   (every IPv4 address of the node)
#   table FAMILY NAME           (every nft table)
#   dnat VIP PORT -> TARGET     (one line per DNAT target in table ip tunlb)
# Addresses are the node's own ($C/base-NODE), the foreign ones and the VIPs
# of the plan.
expected() {
	{
		awk -v node="$1" -v rs1="$RS1" -v rs2="$RS2" -v podport="$POD_PORT" -v nodeip="$(node_ip "$1")" '
			$1 == "ep" { if ($5 == "true") { n[$2, $3]++; pods[$2, $3] = pods[$2, $3] " " $4 }; next }
			$1 == "vs" { vs[++count] = $0 }
			END {
				for (v = 1; v <= count; v++) {
					split(vs[v], f, " ")
					vip = f[3]; port = f[4]; key = "ipvs TCP " vip ":" port
					if (node == "director") {
						print key " " f[7]
						print "addr " f[6] " " vip "/32"
						if (f[8] == "static") {
							c = split(f[9], b, ",")
							for (i = 1; i <= c; i++) { split(b[i], aw, "="); print key " -> " aw[1] ":" port " Tunnel " aw[2] }
						} else {
							if (n[f[9], "rs1"] > 0) print key " -> " rs1 ":" port " Tunnel " n[f[9], "rs1"]
							if (n[f[9], "rs2"] > 0) print key " -> " rs2 ":" port " Tunnel " n[f[9], "rs2"]
						}
					} else if (f[8] == "static") {
						if (("," f[9]) !~ ("," nodeip "=")) continue
						print "addr tunl0 " vip "/32"
						if (f[5] != port) { print "dnat " vip " " port " -> :" f[5]; dnat = 1 }
					} else if (n[f[9], node] > 0) {
						print "addr tunl0 " vip "/32"
						c = split(pods[f[9], node], p, " ")
						for (i = 1; i <= c; i++) print "dnat " vip " " port " -> " p[i] ":" podport
						dnat = 1
					}
				}
				if (dnat) print "table ip tunlb"
			}' "$2"
		awk '{ print "addr", $1, $2 }' "$C/base-$1" "$C/foreign-addr-$1"
		case "$1" in director | rs1) echo "table ip foreign" ;; esac
	} | sort
}

node_ip() {
	case "$1" in director) echo "$DIRECTOR" ;; rs1) echo "$RS1" ;; rs2) echo "$RS2" ;; esac
}

# observed NODE: what NODE's kernel holds, normalised as `expected` prints it
# (the foreign IPVS services are left out: they are compared byte for byte;
# so are the health probes' mark services, checked on their own).
observed() {
	{
		# Every service line whole (flags included), every destination
		# without its connection counters; only the three header lines go.
		ns_exec "$1" ipvsadm -Ln | awk -v foreign=" $FOREIGN_SVCS " '
			NR <= 3 { next }
			/^[^ ]/ { svc = $1 " " $2; skip = index(foreign, " " $2 " ") || $1 == "FWM"; $1 = $1; if (!skip) print "ipvs " $0; next }
			!skip { print "ipvs " svc " " $1 " " $2 " " $3 " " $4 }'
		ns_exec "$1" "$IP" -o -4 addr show | awk '{ print "addr", $2, $4 }'
		ns_exec "$1" nft list tables | awk '{ print "table", $2, $3 }'
		ns_exec "$1" nft list table ip tunlb 2>/dev/null | awk '
			/^[ \t]*(table|chain|type|policy|comment)/ || /^[ \t]*}/ || /^[ \t]*$/ { next }
			/daddr/ && /dnat/ {
				vip = $3; port = $6; rest = $0
				if (match(rest, /dnat to :?[0-9.]*:?[0-9]+$/)) { print "dnat " vip " " port " -> " substr(rest, RSTART + 8); next }
				found = 0
				while (match(rest, /[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+ \. [0-9]+/)) {
					t = substr(rest, RSTART, RLENGTH); sub(/ \. /, ":", t)
					print "dnat " vip " " port " -> " t; found = 1
					rest = substr(rest, RSTART + RLENGTH)
				}
				if (found) next
			}
			{ sub(/^[ \t]+/, ""); print "nft-other " $0 }'
	} | sort
}

# api_expected SNAPSHOT / api_view SNAPSHOT: what the API must show once the
# operator judged the snapshot's objects and every agent reported them: each
# judged at its generation and Accepted, the entry of each node with a role
# in it at that generation and programmed, and the real servers the
# snapshot resolves to.
api_expected() {
	# Endpoints are counted on a first reading of the snapshot, objects
	# judged on the second.
	awk -v rs1="$RS1" -v rs2="$RS2" '
		FNR == NR { if ($1 == "ep" && $5 == "true") n[$2, $3]++; next }
		$1 == "vs" {
			name = $2
			print "obj " name " judged Accepted=True"
			print "node " name " director current programmed"
			if ($8 == "static") {
				c = split($9, b, ",")
				for (i = 1; i <= c; i++) {
					split(b[i], aw, "=")
					print "rs " name " " aw[1] "/" aw[2]
					if (aw[1] == rs1) print "node " name " rs1 current programmed"
					if (aw[1] == rs2) print "node " name " rs2 current programmed"
				}
			} else {
				if (n[$9, "rs1"] > 0) { print "rs " name " " rs1 "/" n[$9, "rs1"]; print "node " name " rs1 current programmed" }
				if (n[$9, "rs2"] > 0) { print "rs " name " " rs2 "/" n[$9, "rs2"]; print "node " name " rs2 current programmed" }
			}
		}' "$1" "$1" | sort
}

api_view() {
	k get tvs -o jsonpath='{range .items[*]}{.metadata.name}|{.metadata.generation}|{.status.observedGeneration}|{.status.conditions[?(@.type=="Accepted")].status}|{range .status.nodes[*]}{.nodeName}={.observedGeneration}={.programmed};{end}|{range .status.realServers[*]}{.address}/{.weight};{end}{"\n"}{end}' | tee "$C/api-raw" |
		awk -F'|' -v names=" $(awk '$1 == "vs" { printf "%s ", $2 }' "$1")" '
			!index(names, " " $1 " ") { next }
			{
				print "obj " $1 " " ($2 == $3 ? "judged" : "unjudged") " Accepted=" $4
				c = split($5, e, ";")
				for (i = 1; i <= c; i++) {
					if (e[i] == "") continue
					split(e[i], f, "=")
					print "node " $1 " " f[1] " " (f[2] == $2 ? "current" : "old") " " (f[3] == "true" ? "programmed" : "not-programmed")
				}
				c = split($6, r, ";")
				for (i = 1; i <= c; i++) if (r[i] != "") print "rs " $1 " " r[i]
			}' | sort
}

# api_settled SNAPSHOT: the API shows what api_expected says.
api_settled() {
	api_view "$1" >"$C/api-view"
	[ "$(cat "$C/api-view")" = "$(api_expected "$1")" ]
}

# wait_until SECONDS DESCRIPTION CMD...: retries CMD until it succeeds or
# SECONDS of wall time have passed (CMD itself may take seconds here).
wait_until() {
	_wait_until_s="$1"
	_wait_until_end="$(awk -v t="$1" '{ print int($1 + t) }' /proc/uptime)"
	_wait_until_what="$2"
	shift 2
	while :; do
		"$@" >/dev/null 2>&1 && return 0
		read -r _wait_until_now _ </proc/uptime
		[ "${_wait_until_now%.*}" -lt "$_wait_until_end" ] || break
		sleep 0.5
	done
	echo "timed out after $_wait_until_s s: $_wait_until_what"
	return 1
}

# two_more_passes: every agent completes two more passes; the second starts
# after the call.
two_more_passes() {
	for _n in director rs1 rs2; do
		_p="$(metric "$_n" tunlb_agent_sync_duration_seconds_count)"
		lab_assert_eq "$_n: two more passes complete" 0 \
			"$(wait_until 60 "two passes on $_n" passes_at_least "$_n" $((${_p:-0} + 2)); echo $?)"
	done
}

# --- The first objects --------------------------------------------------------------
# The seed's three (/examples/seed, as the unchanged lines above describe
# them), shop with its two pods, and the churn's start.
{
	for f in /examples/seed/*.yaml; do echo ---; cat "$f"; done
	cat <<EOF
---
apiVersion: v1
kind: Service
metadata: {name: shop}
spec:
  ports: [{name: http, port: 80, targetPort: $POD_PORT}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: shop-1
  labels: {kubernetes.io/service-name: shop}
addressType: IPv4
ports: [{name: http, port: $POD_PORT, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.5], nodeName: rs1, conditions: {ready: true}}
- {addresses: [10.244.2.5], nodeName: rs2, conditions: {ready: true}}
---
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata: {name: shop}
spec:
  vip: 192.168.56.190
  ports: [{port: 80}]
  scheduler: rr
  backends: {service: {name: shop}}
EOF
	cat "$C/steps/0.yaml"
} >"$C/first.yaml"
k apply --validate=false -f "$C/first.yaml" >/dev/null
ready=0
k wait --for=condition=Ready tvs --all --timeout=180s >/dev/null 2>&1 && ready=1
lab_assert_eq "the first objects become Ready" 1 "$ready"
if [ "$ready" != 1 ]; then
	k get tvs -o jsonpath='{range .items[*]}{.metadata.name}: {.status.conditions[?(@.type=="Ready")].message}{"\n"}{end}'
	for n in director rs1 rs2; do echo "--- agent $n log (tail)"; tail -20 "/tmp/agent-$n.log"; done
	topo_cleanup
	lab_summary
	exit 1
fi
echo "the first objects are Ready at $(elapsed) s"
lab_assert_eq "the director weights the unchanged ones' real servers" 0 \
	"$(wait_for 30 "weights in IPVS" weighted web mapped eth-vip shop; echo $?)"
lab_assert_eq "every unchanged VirtualService answers" "rs1 rs1 rs1 pod" \
	"$(for u in 192.168.56.185/ 192.168.56.186:8099/ 192.168.56.187/ 192.168.56.190/; do request client "http://$u"; done | sed 's/rs2/rs1/; s/pod-./pod/' | tr '\n' ' ' | sed 's/ $//')"

# --- The churn ------------------------------------------------------------------------
# The churn talks plain HTTP to one `kubectl proxy` (the admin user) with
# busybox nc: under TCG a kubectl process costs seconds of the guest's one
# CPU and a curl (its TLS and forty shared libraries) about one, nc a tenth.
kubectl proxy --address 127.0.0.1 --port 8001 >"$C/proxy.log" 2>&1 &
proxy_pid=$!

# api METHOD PATH BODY: one request (PATCH is a server-side apply of BODY).
# Succeeds on 2xx, and on 404 for DELETE (already gone).
api() {
	rm -f "$C/api-hold"
	{
		# nc half-closes the connection when its input ends, and the proxy
		# then cancels the request: the input stays open (a sleep, started
		# first) until nc has the answer and stops the sleep.
		sleep 30 &
		echo $! >"$C/api-hold"
		printf '%s %s?fieldManager=chaos&force=true HTTP/1.0\r\nHost: 127.0.0.1\r\n' "$1" "$2"
		[ "$1" = PATCH ] && printf 'Content-Type: application/apply-patch+yaml\r\n'
		printf 'Content-Length: %s\r\n\r\n' "$(wc -c <"$3")"
		cat "$3"
		wait
	} | {
		busybox nc -w 30 127.0.0.1 8001 >"$C/api-out" 2>&1
		# Only a failed connect can beat the sleep's start.
		until [ -s "$C/api-hold" ]; do sleep 0.1; done
		kill "$(cat "$C/api-hold")" 2>/dev/null
	}
	_code="$(head -n 1 "$C/api-out" | cut -d' ' -f2)"
	case "$_code" in
	2??) return 0 ;;
	404) [ "$1" = DELETE ] && return 0 ;;
	esac
	echo "$1 $2: HTTP ${_code:-none} $(tail -c 300 "$C/api-out")" >>"$C/churn-errors"
	return 1
}
: >"$C/empty"
lab_assert_eq "kubectl proxy serves the API" 0 \
	"$(wait_until 60 "the proxy answers" api GET /version "$C/empty"; echo $?)"
rm -f "$C/churn-errors"

VS_PATH=/apis/tunlb.io/v1alpha1/namespaces/default/virtualservices

# churn: the planned steps in order until $C/stop exists. Each is idempotent,
# so a failed call (a timeout under load, say) is repeated; $C/done holds the
# last step the API server accepted, whose snapshot is then the truth.
churn() {
	_i=1
	echo 0 >"$C/done"
	while [ ! -e "$C/stop" ] && [ -e "$C/steps/$_i.req" ]; do
		read -r _method _path _pause <"$C/steps/$_i.req"
		sleep "$((_pause / 1000)).$(printf %03d $((_pause % 1000)))"
		_try=0
		until api "$_method" "$_path" "$C/steps/$_i.yaml"; do
			_try=$((_try + 1))
			if [ "$_try" -ge 5 ]; then
				echo "step $_i: $_method $_path failed 5 times" >"$C/churn-gaveup"
				return
			fi
			sleep 1
		done
		echo "$_i" >"$C/done"
		_i=$((_i + 1))
	done
}

# The client: one request after another to the unchanged VirtualServices,
# until told to stop.
client() {
	while [ ! -e "$C/client-stop" ]; do
		for _u in 192.168.56.185/ 192.168.56.186:8099/ 192.168.56.187/ 192.168.56.190/; do
			read -r _now _ </proc/uptime
			echo "$_now $_u $(request client "http://$_u")" >>"$C/client-log"
		done
	done
}

echo "churn starts at $(elapsed) s"
: >"$C/client-log"
client &
client_pid=$!
churn &
churn_pid=$!

# --- The kills --------------------------------------------------------------------
kills=0
by_sigkill=0
while read -r delay node pause; do
	sleep "$((delay / 1000)).$(printf %03d $((delay % 1000)))"
	eval "pid=\$AGENT_PID_$node"
	kill -9 "$pid"
	wait "$pid" 2>/dev/null
	rc=$?
	kills=$((kills + 1))
	[ "$rc" -eq 137 ] && by_sigkill=$((by_sigkill + 1))
	echo "kill $kills at $(elapsed) s: $node agent (pid $pid) exited $rc; churn step $(cat "$C/done")"
	sleep "$((pause / 1000)).$(printf %03d $((pause % 1000)))"
	start_agent "$node"
done <"$C/kills"
touch "$C/stop"
wait "$churn_pid"
final="$(cat "$C/done")"
SNAP="$C/steps/$final.snap"
kinds="$(i=1; while [ "$i" -le "$final" ]; do cat "$C/steps/$i.what"; i=$((i + 1)); done | cut -d' ' -f1 | sort | uniq -c | tr -s ' \n' ' ')"
echo "churn stopped at $(elapsed) s after $final steps:$kinds"
echo "live churned objects: $(awk '$1 == "vs" && $2 ~ /^[cs]-/ { printf "%s ", $2 }' "$SNAP")"
lab_assert_eq "every kill hit a running agent (SIGKILL, exit 137)" "$KILLS" "$by_sigkill"
lab_assert_eq "every churn step reached the API server" "" "$(cat "$C/churn-gaveup" 2>/dev/null)"
# shellcheck disable=SC2086 # one word a line
lab_assert_eq "the churn made adds, weight edits, deletes and endpoint changes" "add delete endpoints weight" \
	"$(printf '%s\n' $kinds | grep -E '^(add|delete|endpoints|weight)$' | tr '\n' ' ' | sed 's/ $//')"

# --- Convergence --------------------------------------------------------------------
# First the API: the operator has judged every final object and every agent
# reported it at its generation. Then, since Service endpoint changes make no
# new generation, two more completed passes of every agent: the second of
# them started after the API showed the final state.
settled=0
wait_until 150 "the API shows every final object judged and programmed" api_settled "$SNAP" && settled=1
lab_assert_eq "the API settles on the final objects" 1 "$settled"
if [ "$settled" != 1 ]; then
	lab_assert_same "the API after the churn" "$(api_expected "$SNAP")" "$(cat "$C/api-view")"
	cat "$C/api-raw"
fi
two_more_passes
echo "converged at $(elapsed) s"

for n in director rs1 rs2; do
	lab_assert_same "$n: the kernel equals the plan (IPVS services, destinations, weights, addresses, nft tables, DNAT targets)" \
		"$(expected "$n" "$SNAP")" "$(observed "$n")"
	lab_assert_same "$n: foreign IPVS services, nft table and addresses byte-identical" \
		"$(cat "$C/foreign-before-$n")" "$(foreign_state "$n")"
	lab_assert_eq "$n: no pass since the agent's last start failed" 0 "$(metric "$n" tunlb_agent_sync_errors_total)"
done
# The probe services: one per checked real server (the unchanged objects'
# rs1 and rs2), none left from churned objects or from killed agents.
lab_assert_eq "director: one probe mark service per checked real server" "$RS1:0 $RS2:0" \
	"$(ns_exec director ipvsadm -Ln | awk '/^FWM/ {m = 1; next} /^[^ ]/ {m = 0} m && /->/ {print $2}' | sort | tr '\n' ' ' | sed 's/ $//')"
lab_assert_eq "the plan is not trivial: the director holds churned services" yes \
	"$([ "$(expected director "$SNAP" | grep -c '^ipvs TCP 10\.77\.[01]\.[0-9]*:[0-9]* [a-z]')" -ge 4 ] && echo yes || echo no)"

touch "$C/client-stop"
wait "$client_pid"
total="$(wc -l <"$C/client-log")"
bad="$(awk '$3 != "rs1" && $3 != "rs2" && $3 != "pod-a" && $3 != "pod-b"' "$C/client-log")"
wrong_backend="$(awk '($2 ~ /190/) != ($3 ~ /^pod-/)' "$C/client-log")"
echo "client: $total requests to the unchanged VirtualServices"
lab_assert_eq "no request to an unchanged VirtualService failed" "" "$bad"
lab_assert_eq "each answered from its own real servers" "" "$wrong_backend"
lab_assert_eq "the client kept requesting through the churn (at least 40 requests)" yes \
	"$([ "$total" -ge 40 ] && echo yes || echo no)"

# After the kills the agents still own exactly what they made: deleting every
# object (one delete of the collection) leaves each node as it was before the
# first one, plus foreign state, and every finalizer is released. The
# unchanged objects' servers have the client's connections, so they drain
# first (drainTimeoutSeconds, 30 s by default); the churned ones carry none
# and go at once, which is also why the plan above has no draining server.
echo "checked at $(elapsed) s"
: >"$C/empty.snap"
clean() { [ "$(expected "$1" "$C/empty.snap")" = "$(observed "$1")" ]; }
all_clean() { clean director && clean rs1 && clean rs2; }
no_objects() { api GET "$VS_PATH" "$C/empty" && grep -q '"items":\[\]' "$C/api-out"; }
lab_assert_eq "every VirtualService is deleted at once" 0 "$(api DELETE "$VS_PATH" "$C/empty"; echo $?)"
wait_until 90 "every node back to its own and foreign state" all_clean
for n in director rs1 rs2; do
	lab_assert_same "$n: after deleting everything only the node's own and foreign state remain" \
		"$(expected "$n" "$C/empty.snap")" "$(observed "$n")"
	lab_assert_same "$n: foreign state still byte-identical" \
		"$(cat "$C/foreign-before-$n")" "$(foreign_state "$n")"
done
lab_assert_eq "every finalizer is released" 0 "$(wait_until 90 "no VirtualService left" no_objects; echo $?)"
echo "deleted at $(elapsed) s"

[ -s "$C/churn-errors" ] && { echo "--- failed API calls of the churn (retried): $(grep -c '^[A-Z]* /' "$C/churn-errors")"; tail -3 "$C/churn-errors"; }
for n in director rs1 rs2; do
	echo "--- agent $n: $(grep -c 'agent starting' "/tmp/agent-$n.log") starts logged (a kill can come before the log line); last warnings"
	grep -E 'WARN|ERROR' "/tmp/agent-$n.log" | tail -3
done
echo "chaos seed: $SEED; finished at $(elapsed) s"
kill "$proxy_pid" 2>/dev/null
topo_cleanup
lab_summary

#!/bin/sh
# Health probes through the tunnel: a long-running director agent (serve)
# probes each real server at VIP:port through IPVS's tunnel to exactly that
# server, and sets the weight of one that fails to 0. Faults a direct check
# cannot see (rp_filter on the backend's tunl0, a missing port-mapping rule)
# are caught; an http check honours its expected statuses; when every
# server of a service fails, the director keeps them (fail open) and says so.
# A client loop runs through the VIP all along.
. /scenarios/common.sh
VIP3=192.168.56.187

topo_setup || { echo "topology setup failed"; exit 1; }
start_http rs1 rs1 80 || exit 1

# rs2's server is started and stopped by this scenario.
rs2_up() {
	mkdir -p /tmp/http-rs2
	echo rs2 >/tmp/http-rs2/index.html
	# Not through ns_exec: a backgrounded function would leave $! a subshell.
	"$IP" netns exec rs2 busybox httpd -f -p 80 -h /tmp/http-rs2 &
	RS2_HTTPD=$!
	wait_for 10 "rs2 listening" rs2_listening
}
rs2_listening() { ns_exec rs2 busybox netstat -ltn | grep -q ':80 '; }
rs2_down() { kill "$RS2_HTTPD"; wait "$RS2_HTTPD" 2>/dev/null; }
rs2_up || exit 1

cat >/tmp/web.yaml <<YAML
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata: {name: web}
spec:
  vip: $VIP
  ports:
  - {name: http, port: 80}
  - {name: mapped, port: 8099, targetPort: 80}
  scheduler: rr
  backends:
    static: [{address: $RS1}, {address: $RS2}]
YAML
cat >/tmp/api.yaml <<YAML
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata: {name: api}
spec:
  vip: $VIP3
  ports: [{port: 80}]
  scheduler: rr
  healthCheck: {type: http, path: /status}
  backends:
    static: [{address: $RS1}, {address: $RS2}]
YAML

agent rs1 apply -f /tmp/web.yaml >/dev/null
agent rs2 apply -f /tmp/web.yaml >/dev/null
"$IP" netns exec director env TUNLB_LOG=info "$AGENT" serve --node director --state-dir /tmp/state-director --director \
	-f /tmp/web.yaml >/tmp/serve.out 2>/tmp/serve.log &
SERVE=$!

# weight SERVICE RIP: the director's weight for RIP in SERVICE (VIP:PORT).
weight() { ipvs_rows director | awk -v s="$1" -v r="$2" '$2 == s && $4 == r {print $6}'; }
weight_is() { [ "$(weight "$1" "$2")" = "$3" ]; }
now_ms() { awk '{printf "%d\n", $1 * 1000}' /proc/uptime; }

lab_assert_eq "serve programs the service" 0 "$(wait_for 30 "rs2 in IPVS" weight_is "$VIP:80" "$RS2:80" 1; echo $?)"
probe_rows="$(ns_exec director ipvsadm -Ln | awk '/^FWM/ {m = $2} /->/ && m != "" {print "FWM", $2, $3}' | sort)"
echo "probe services: $probe_rows"
lab_assert_eq "one mark service per real server, tunnelling to it alone" 2 "$(echo "$probe_rows" | grep -c "Tunnel")"
lab_assert_eq "the director accepts answers from its own VIP on eth0" 1 "$(ns_exec director sysctl -n net.ipv4.conf.eth0.accept_local)"

# A client request every 200 ms, answers logged with a timestamp.
(while :; do _s=$(now_ms); _a="$(request client "http://$VIP/")"; echo "$_s $(now_ms) $_a"; sleep 0.2; done) >/tmp/loop.log 2>&1 &
LOOP=$!

# 1. rs2's web server stops: out within interval x fall + timeout (5 s by default).
t0=$(now_ms)
rs2_down
lab_assert_eq "rs2 stopped: weight 0" 0 "$(wait_for 30 "rs2 weight 0" weight_is "$VIP:80" "$RS2:80" 0; echo $?)"
t1=$(now_ms)
echo "$t0 $t1" >>/tmp/windows
# Detection time is measured by scripts/bench-health.sh, not asserted here.
echo "detection: $((t1 - t0)) ms"
lab_assert_eq "rs1 keeps its weight" 0 "$(weight_is "$VIP:80" "$RS1:80" 1; echo $?)"
lab_assert_contains "the log names the failed probe" "$VIP:80 through the tunnel to $RS2: connect: Connection refused" "$(cat /tmp/serve.log)"
got="$(requests 10 "http://$VIP/")"
echo "rs2 down -> $got"
lab_assert_eq "after detection every request answers, from rs1" 10 "$(count rs1 "$got")"

# 2. rs2 back: weight restored after rise (2) passes.
rs2_up
lab_assert_eq "rs2 restarted: weight back" 0 "$(wait_for 30 "rs2 weight 1" weight_is "$VIP:80" "$RS2:80" 1; echo $?)"
got="$(requests 6 "http://$VIP/")"
echo "rs2 back -> $got"
lab_assert_eq "rs2 answers again (the client loop shares the rotation)" 0 "$(echo "$got" | grep -q rs2; echo $?)"

# 3. rp_filter=1 on rs1's tunl0: decapsulated packets are dropped, while
#    rs1's own address still answers on port 80 (a direct check passes).
w0=$(now_ms)
ns_exec rs1 sysctl -qw net.ipv4.conf.tunl0.rp_filter=1
lab_assert_eq "rs1 answers directly on its own address" rs1 "$(request director "http://$RS1/")"
lab_assert_eq "rp_filter on rs1: weight 0" 0 "$(wait_for 30 "rs1 weight 0" weight_is "$VIP:80" "$RS1:80" 0; echo $?)"
lab_assert_eq "rp_filter on rs1: the mapped port too" 0 "$(wait_for 30 "rs1:8099 weight 0" weight_is "$VIP:8099" "$RS1:8099" 0; echo $?)"
echo "$w0 $(now_ms)" >>/tmp/windows
agent rs1 apply -f /tmp/web.yaml >/dev/null
lab_assert_eq "rs1's agent repairs rp_filter" 0 "$(ns_exec rs1 sysctl -n net.ipv4.conf.tunl0.rp_filter)"
lab_assert_eq "rs1 healthy again" 0 "$(wait_for 30 "rs1 weight 1" weight_is "$VIP:80" "$RS1:80" 1; echo $?)"

# 4. The mapping rule of 8099 -> 80 deleted by hand on rs1: only the mapped
#    port's probe fails.
ns_exec rs1 nft -a list table ip tunlb >/tmp/rules.txt
handle="$(awk '/dport 8099/ {print $NF}' /tmp/rules.txt)"
chain="$(awk '/chain/ {c = $2} /dport 8099/ {print c}' /tmp/rules.txt)"
ns_exec rs1 nft delete rule ip tunlb "$chain" handle "$handle"
lab_assert_eq "DNAT rule gone on rs1: VIP:8099 weight 0" 0 "$(wait_for 30 "rs1:8099 weight 0" weight_is "$VIP:8099" "$RS1:8099" 0; echo $?)"
lab_assert_eq "VIP:80 on rs1 keeps its weight" 0 "$(weight_is "$VIP:80" "$RS1:80" 1; echo $?)"
got="$(requests 6 "http://$VIP:8099/")"
lab_assert_eq "VIP:8099 answers every request, from rs2" 6 "$(count rs2 "$got")"
agent rs1 apply -f /tmp/web.yaml >/dev/null
lab_assert_eq "rs1's agent restores the rule; healthy again" 0 "$(wait_for 30 "rs1:8099 weight 1" weight_is "$VIP:8099" "$RS1:8099" 1; echo $?)"

# 5. An http check whose path is missing everywhere (404): every server
#    fails, so the director keeps them (fail open) and says so; requests
#    still answer. Expecting 404 makes them healthy.
agent rs1 apply -f /tmp/web.yaml -f /tmp/api.yaml >/dev/null
agent rs2 apply -f /tmp/web.yaml -f /tmp/api.yaml >/dev/null
cp /tmp/api.yaml /tmp/serve-api.yaml
kill -TERM $SERVE
wait $SERVE
lab_assert_contains "SIGTERM stops serve, leaving the kernel programmed" "$VIP:80" "$(ipvs_rows director)"
"$IP" netns exec director env TUNLB_LOG=info "$AGENT" serve --node director --state-dir /tmp/state-director --director \
	-f /tmp/web.yaml -f /tmp/serve-api.yaml >/tmp/serve.out 2>/tmp/serve.log &
SERVE=$!
failopen() { grep -q "virtualservice default/api: every checked real server of a service is unhealthy; sending to them anyway (fail open)" /tmp/serve.out; }
lab_assert_eq "all servers fail the http check: fail open, said" 0 "$(wait_for 40 "fail open" failopen; echo $?)"
lab_assert_eq "fail open keeps their weights" "1 1" "$(weight "$VIP3:80" "$RS1:80") $(weight "$VIP3:80" "$RS2:80")"
lab_assert_contains "the log names the status" "GET /status: status 404 (expected 2xx or 3xx)" "$(cat /tmp/serve.log)"
got="$(requests 4 "http://$VIP3/")"
lab_assert_eq "fail open: requests still answer" yes "$(alternates "$got")"
sed 's|healthCheck: {type: http, path: /status}|healthCheck: {type: http, path: /status, expectedStatuses: [404]}|' /tmp/api.yaml >/tmp/serve-api.yaml
: >/tmp/serve.out
healthy_again() { ! failopen && grep -q "virtualservice default/api applied" /tmp/serve.out; }
lab_assert_eq "expecting 404: no longer failing open" 0 "$(wait_for 40 "healthy" healthy_again; echo $?)"

kill $LOOP
# A request may fail only if it was under way between a fault and its
# detection.
awk 'NR == FNR {s[NR] = $1; e[NR] = $2; n = NR; next}
	$3 ~ /^ERR/ {ok = 0; for (i = 1; i <= n; i++) if ($2 >= s[i] && $1 <= e[i]) ok = 1; print (ok ? "window" : "outside"), $0}' \
	/tmp/windows /tmp/loop.log >/tmp/failures
cat /tmp/windows /tmp/failures
echo "client loop: $(wc -l </tmp/loop.log) requests; failed while a fault was undetected: $(grep -c ^window /tmp/failures)"
lab_assert_eq "no client request failed once a fault was detected" 0 "$(grep -c ^outside /tmp/failures)"

# 6. Probes travel every encapsulation and family: IPv6 (ip6ip6, the
#    director's VIP on eth0 for on-link clients) and GUE.
for ns in director rs1 rs2; do
	case $ns in director) i=2 ;; rs1) i=3 ;; rs2) i=4 ;; esac
	ns_exec "$ns" "$IP" -6 addr add "fd00:56::$i/64" dev eth0 nodad
done
ns_exec client "$IP" -6 addr add fd00:56::1/64 dev eth0 nodad
VIP6=fd00:56::185
VIPG=192.168.56.188
cat >/tmp/more.yaml <<YAML
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata: {name: web6}
spec:
  vip: $VIP6
  ports: [{port: 80}]
  scheduler: rr
  directors: {interface: eth0}
  backends:
    static: [{address: "fd00:56::3"}, {address: "fd00:56::4"}]
---
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata: {name: webg}
spec:
  vip: $VIPG
  ports: [{port: 80}]
  scheduler: rr
  tunnel: {type: gue, port: 6080}
  backends:
    static: [{address: $RS1}, {address: $RS2}]
YAML
agent rs1 apply -f /tmp/more.yaml >/dev/null
agent rs2 apply -f /tmp/more.yaml >/dev/null
kill -TERM $SERVE
wait $SERVE
"$IP" netns exec director env TUNLB_LOG=info "$AGENT" serve --node director --state-dir /tmp/state-director --director \
	-f /tmp/web.yaml -f /tmp/serve-api.yaml -f /tmp/more.yaml >/tmp/serve.out 2>/tmp/serve.log &
SERVE=$!
lab_assert_eq "IPv6: both servers in IPVS" 0 "$(wait_for 30 "v6 rs2" weight_is "[$VIP6]:80" "[fd00:56::4]:80" 1; echo $?)"
lab_assert_eq "GUE: both servers in IPVS" 0 "$(wait_for 30 "gue rs2" weight_is "$VIPG:80" "$RS2:80" 1; echo $?)"
healthy_v6() { grep -q "real server healthy service=TCP \[$VIP6\]:80 server=fd00:56::4" /tmp/serve.log; }
healthy_gue() { grep -q "real server healthy service=TCP $VIPG:80 server=$RS2" /tmp/serve.log; }
lab_assert_eq "IPv6: probes pass through ip6ip6" 0 "$(wait_for 30 "v6 healthy" healthy_v6; echo $?)"
lab_assert_eq "GUE: probes pass through GUE" 0 "$(wait_for 30 "gue healthy" healthy_gue; echo $?)"
gue_probes="$(ns_exec director ipvsadm -Ln | awk '/^FWM/ {m = $2} /->/ && m != "" && $2 ~ /^192/ {print m, $2}' | sort -u | wc -l)"
lab_assert_eq "a separate mark service per encapsulation to the same server (ipip and gue, to rs1 and rs2)" 4 "$gue_probes"
rs2_down
lab_assert_eq "IPv6: rs2 stopped -> weight 0" 0 "$(wait_for 30 "v6 rs2 weight 0" weight_is "[$VIP6]:80" "[fd00:56::4]:80" 0; echo $?)"
lab_assert_eq "GUE: rs2 stopped -> weight 0" 0 "$(wait_for 30 "gue rs2 weight 0" weight_is "$VIPG:80" "$RS2:80" 0; echo $?)"
got="$(requests 4 "http://[$VIP6]/")"
echo "IPv6 with rs2 down -> $got"
lab_assert_eq "IPv6: every request answers, from rs1" 4 "$(count rs1 "$got")"
rs2_up
lab_assert_eq "IPv6: rs2 back" 0 "$(wait_for 30 "v6 rs2 weight 1" weight_is "[$VIP6]:80" "[fd00:56::4]:80" 1; echo $?)"

# 7. delete removes the probe services and restores the director's sysctls.
kill -TERM $SERVE
wait $SERVE
agent director delete -f /tmp/web.yaml -f /tmp/serve-api.yaml -f /tmp/more.yaml >/dev/null
lab_assert_eq "no mark service left" "" "$(ns_exec director ipvsadm -Ln | grep FWM)"
lab_assert_eq "accept_local restored" 0 "$(ns_exec director sysctl -n net.ipv4.conf.eth0.accept_local)"
echo "--- serve log (tail)"
tail -20 /tmp/serve.log
topo_cleanup
lab_summary

#!/bin/sh
# Graceful drain and no black holes, judged by what the kernel and a client
# see:
# (a) with net.ipv4.vs.expire_nodest_conn=1 (which the agent sets on directors,
#     as kube-proxy's IPVS mode does), a real server removed while a connection uses it stays at weight 0, new
#     connections go elsewhere, the open connection completes, and the server
#     is deleted afterwards; with drainTimeoutSeconds: 0 the same connection
#     is cut (the control that shows the first part can fail);
# (b) a deleted VirtualService keeps its VIP and service at weight 0 while a
#     connection drains (--no-wait), and a later run removes both;
# (c) a director whose IPVS service the kernel refuses never puts the VIP on
#     an interface (ip monitor sees no address event for it);
# (d) a client that reuses the source port of a closed connection after its
#     server was deleted reaches a live server: the agent sets
#     net.ipv4.vs.expire_nodest_conn=1 on directors (with it at 0 by hand,
#     the same request times out: the control), and restores the original
#     once the node directs nothing.
. /scenarios/common.sh

topo_setup || { echo "topology setup failed"; exit 1; }
start_backends
NODEST=net.ipv4.vs.expire_nodest_conn
VIP2=192.168.56.191

# web FILE DRAIN RS...: VirtualService "web" on $VIP2:80 with those servers.
web() {
	_f="$1"
	_drain="$2"
	shift 2
	{
		cat <<YAML
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata: {name: web}
spec:
  vip: $VIP2
  ports: [{port: 80}]
  scheduler: rr
  drainTimeoutSeconds: $_drain
  directors: {nodeSelector: {matchLabels: {tunlb.io/director: "true"}}}
  backends:
    static:
YAML
		for a in "$@"; do echo "    - {address: $a}"; done
	} >"$_f"
}

# open_conn NAME: a TCP connection from the client to $VIP2:80 that stays
# open until `close_conn NAME` sends its request. Prints nothing; waits until
# IPVS lists it as established.
open_conn() {
	rm -f "/tmp/$1.in" "/tmp/$1.out"
	mkfifo "/tmp/$1.in"
	ns_exec client busybox nc "$VIP2" 80 <"/tmp/$1.in" >"/tmp/$1.out" 2>&1 &
	eval "pid_$1=$!"
	exec 3>"/tmp/$1.in"
	wait_for 20 "connection $1 established" established
}

established() {
	ns_exec director ipvsadm -Lnc | grep -q "ESTABLISHED.*$VIP2:80"
}

# at_zero ADDR: the director lists ADDR:80 under $VIP2:80 at weight 0.
at_zero() {
	[ "$(ipvs_rows director | awk -v v="$VIP2:80" -v d="$1:80" '$2 == v && $4 == d {print $6}')" = 0 ]
}

# conn_server: the real server IPVS scheduled the open connection to.
conn_server() {
	ns_exec director ipvsadm -Lnc | awk -v v="$VIP2:80" '$3 == "ESTABLISHED" && $5 == v {split($6, a, ":"); print a[1]; exit}'
}

# close_conn NAME: sends one HTTP request on the open connection and prints
# what came back (empty when the connection was cut), waiting at most 10 s.
close_conn() {
	(trap '' PIPE; printf 'GET / HTTP/1.0\r\n\r\n' >&3) 2>/dev/null
	exec 3>&-
	eval "_p=\$pid_$1"
	_i=0
	while kill -0 "$_p" 2>/dev/null && [ "$_i" -lt 40 ]; do sleep 0.25; _i=$((_i + 1)); done
	kill "$_p" 2>/dev/null
	wait "$_p" 2>/dev/null
	cat "/tmp/$1.out"
}

# --- (a) a removed real server drains ---------------------------------------------
# 30 s: enough for the checks below under emulation; a closed connection
# stays in IPVS as inactive for two minutes, so the drain ends on time.
web /tmp/both.yaml 30 "$RS1" "$RS2"
out="$(apply_all /tmp/both.yaml)"
echo "$out"
lab_assert_eq "both real servers programmed" 2 "$(ipvs_rows director | grep -c "$VIP2:80")"
open_conn long
busy="$(conn_server)"
if [ "$busy" = "$RS1" ]; then other="$RS2"; other_name=rs2; else other="$RS1"; other_name=rs1; fi
busy_name=$([ "$busy" = "$RS1" ] && echo rs1 || echo rs2)
echo "the open connection uses $busy ($busy_name)"
lab_assert_eq "the open connection was scheduled to a real server" yes "$([ -n "$busy" ] && echo yes || echo no)"

web /tmp/one.yaml 30 "$other"
agent director apply -f /tmp/one.yaml >/tmp/apply-one.out 2>&1 &
apply_pid=$!
lab_assert_eq "the removed server stays, at weight 0" 0 \
	"$(wait_for 30 "weight 0" at_zero "$busy"; echo $?)"
got="$(requests 4 "http://$VIP2/")"
echo "while draining -> $got"
lab_assert_eq "new connections go only to the remaining server" 4 "$(count "$other_name" "$got")"
lab_assert_eq "the apply is still waiting for the drain" yes "$(kill -0 $apply_pid 2>/dev/null && echo yes || echo no)"
long="$(close_conn long)"
lab_assert_contains "the connection through the removed server completes" "$busy_name" "$long"
lab_assert_contains "with a full answer" "200 OK" "$long"
# Its connection is done: the apply ends once IPVS sees no connection left
# or the drain time is up, whichever comes first.
wait "$apply_pid"
rc=$?
out="$(cat /tmp/apply-one.out)"
echo "$out"
lab_assert_eq "the waiting apply succeeds" 0 "$rc"
lab_assert_contains "and said it waited" "drain" "$out"
lab_assert_eq "the removed server is deleted afterwards" "" "$(ipvs_rows director | grep "$busy:80")"
lab_assert_eq "the remaining server is untouched" 1 "$(ipvs_rows director | grep -c "$other:80 Tunnel 1")"

# Control: the same with drainTimeoutSeconds: 0 cuts the connection, which
# is what expire_nodest_conn=1 does to a deleted server's connections.
web /tmp/both0.yaml 0 "$RS1" "$RS2"
agent director apply -f /tmp/both0.yaml >/dev/null 2>&1
open_conn cut
busy="$(conn_server)"
if [ "$busy" = "$RS1" ]; then other="$RS2"; else other="$RS1"; fi
web /tmp/one0.yaml 0 "$other"
out="$(agent director apply -f /tmp/one0.yaml 2>&1)"
echo "$out"
lab_assert_eq "drainTimeoutSeconds 0: the server is deleted at once" "" "$(ipvs_rows director | grep "$busy:80")"
cut="$(close_conn cut)"
echo "answer on the cut connection: ${cut:-<none>}"
lab_assert_eq "drainTimeoutSeconds 0: its connection gets no answer" "" "$(echo "$cut" | grep '200 OK')"

# --- (b) a deleted VirtualService drains --------------------------------------------
agent director apply -f /tmp/both.yaml >/dev/null 2>&1
open_conn del
out="$(agent director delete --no-wait -f /tmp/both.yaml 2>&1)"
echo "$out"
lab_assert_contains "delete --no-wait says what is left draining" "draining at weight 0" "$out"
lab_assert_eq "the service stays with every server at weight 0" "0 0" \
	"$(ipvs_rows director | awk -v v="$VIP2:80" '$2 == v {printf "%s ", $6}' | sed 's/ $//')"
lab_assert_contains "the VIP stays while it drains" "$VIP2/32" "$(ns_exec director "$IP" -o addr show)"
lab_assert_eq "no new connection is scheduled" "ERR" "$(request client "http://$VIP2/" | cut -c1-3)"
long="$(close_conn del)"
lab_assert_contains "the open connection completes" "200 OK" "$long"
# A later run carries the drain on: it ends once the connection is gone.
out="$(agent director delete -f /tmp/both.yaml 2>&1)"
echo "$out"
lab_assert_eq "then the service is gone" "" "$(ipvs_rows director | grep "$VIP2:80")"
lab_assert_eq "and so is the VIP" "" "$(ns_exec director "$IP" -o addr show | grep "$VIP2/")"

# --- (c) no VIP without its IPVS service ------------------------------------------
# The lab kernel (6.1) has no twos scheduler (5.x kernels lack it too): the
# kernel refuses the service.
sched=twos
lab_assert_eq "scheduler $sched is not in this kernel" "" "$(grep "^ip_vs_$sched " /proc/modules)"
cat >/tmp/nosched.yaml <<YAML
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata: {name: nosched}
spec:
  vip: 192.168.56.192
  ports: [{port: 80}]
  scheduler: $sched
  directors: {nodeSelector: {matchLabels: {tunlb.io/director: "true"}}}
  backends: {static: [{address: $RS1}]}
YAML
watch_start director
out="$(agent director apply -f /tmp/nosched.yaml 2>&1)"
rc=$?
events="$(watch_stop)"
echo "$out"
lab_assert_eq "apply fails" 1 "$rc"
lab_assert_contains "naming the missing scheduler" "scheduler \"$sched\" is not available" "$out"
lab_assert_contains "and the VIP it did not take" "VIP 192.168.56.192 is not held" "$out"
lab_assert_eq "the VIP never appeared on any interface (ip monitor)" "" "$(echo "$events" | grep 192.168.56.192)"
lab_assert_eq "no IPVS service left" "" "$(ipvs_rows director | grep 192.168.56.192)"

# --- (d) a reused client port after its server was deleted --------------------
# IPVS keeps a closed connection's entry for minutes: through a tunnel it sees
# only the client's packets, so the entry stays in FIN_WAIT. A new connection
# from the same client port matches that entry, not the scheduler.
# from_port PORT: one request from the client's source port PORT.
from_port() {
	ns_exec client curl -s --connect-timeout 3 --max-time 5 --local-port "$1" -H 'Connection: close' "http://$VIP2/" 2>/dev/null ||
		echo "ERR:$?"
}
# to_rs2 PORT...: the ports whose request rs2 answered.
to_rs2() {
	for _p in "$@"; do
		case "$(from_port "$_p")" in rs2*) printf '%s ' "$_p" ;; esac
	done
}
rs2_conns() { ns_exec director ipvsadm -Lnc | grep "$RS2:80"; }
web /tmp/reuse.yaml 0 "$RS1" "$RS2"
apply_all /tmp/reuse.yaml >/dev/null
lab_assert_eq "the director runs with $NODEST=1" 1 "$(ns_exec director sysctl -n $NODEST)"
set -- $(to_rs2 40001 40002 40003 40004)
lab_assert_eq "two of four connections went to rs2" 2 "$#"
web /tmp/reuse.yaml 0 "$RS1"
apply_all /tmp/reuse.yaml >/dev/null
lab_assert_eq "rs2 is deleted at once (drainTimeoutSeconds 0)" "" "$(ipvs_rows director | grep "$RS2:80")"
lab_assert_eq "with $NODEST=1 the kernel drops the deleted server's connection entries" 0 \
	"$(wait_for 10 "no entry for rs2" sh -c "! $IP netns exec director ipvsadm -Lnc | grep -q '$RS2:80'"; echo $?)"
lab_assert_eq "a reused port is answered by rs1" rs1 "$(from_port "$1")"
# Entries left from a deletion while the setting was 0 (as before tunlb set
# it): the reused port times out at 0 (the control), and is scheduled afresh
# once the agent has set it again.
web /tmp/reuse.yaml 0 "$RS1" "$RS2"
apply_all /tmp/reuse.yaml >/dev/null
set -- $(to_rs2 40011 40012 40013 40014)
lab_assert_eq "two of four new connections went to rs2" 2 "$#"
ns_exec director sysctl -qw $NODEST=0
web /tmp/reuse.yaml 0 "$RS1"
apply_all /tmp/reuse.yaml >/dev/null
lab_assert_contains "deleted at 0: IPVS still lists a closed connection to rs2" "$CLIENT:$1 " "$(rs2_conns)"
ns_exec director sysctl -qw $NODEST=0
lab_assert_eq "control, $NODEST=0 by hand: the reused port times out" "ERR:28" "$(from_port "$1")"
apply_all /tmp/reuse.yaml >/dev/null
lab_assert_eq "the agent sets $NODEST=1 again" 1 "$(ns_exec director sysctl -n $NODEST)"
lab_assert_eq "the other reused port is answered by rs1" rs1 "$(from_port "$2")"
delete_all /tmp/reuse.yaml /tmp/nosched.yaml >/dev/null
lab_assert_eq "directing nothing, the original $NODEST=0 is back" 0 "$(ns_exec director sysctl -n $NODEST)"

topo_cleanup
lab_summary

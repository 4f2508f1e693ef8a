# shellcheck shell=sh
# Director high availability by VRRPv3 (tunlb-agent vrrp), on one segment:
# client .10, directors d1 .181 and d2 .182 (each runs an HTTP server that
# answers its own name), VIP .185, VRID 51, 100 ms adverts, unicast peers.
# (a) two tunlb speakers: one holder at a time; link cut -> the backup takes
#     over within Master_Down_Interval, the cut one lets go; SIGTERM -> handover within about the
#     skew time; preemption on and off when the old master returns.
# (b) tunlb and keepalived (vrrp_version 3, unicast) elect one master and
#     fail over both ways.
# (c) IPVS connection sync: both directors run `tunlb-agent apply` for one
#     VirtualService (real server rs .183) with --ipvs-sync-interface, the
#     speakers move the VIP; 20 long-lived TCP connections (tcp-hold) keep
#     working across a link-cut failover and back. The control without the
#     sync daemons: the same failover resets them.
# (d) `tunlb-agent serve --peer` on both directors for one VirtualService
#     with an election (VIP .186): the agents elect (the preferred one holds
#     the VIP, the other keeps IPVS warm), SIGTERM hands over, a restart
#     takes it back; a malformed --peer is named.
# Times are read from `ip -ts monitor` (kernel notifications, wall clock).
. /scenarios/common.sh

D1=192.168.56.181
D2=192.168.56.182
VRID=51
LOGS=/tmp/vrrp
mkdir -p "$LOGS"

"$IP" link add "$LAB_BRIDGE" type bridge forward_delay 0 stp_state 0
"$IP" link set "$LAB_BRIDGE" up
topo_add_ns client "$CLIENT"
topo_add_ns d1 "$D1"
topo_add_ns d2 "$D2"
start_http d1 d1 80
start_http d2 d2 80

# Address events of each director and link events of the bridge side.
"$IP" netns exec d1 "$IP" -ts monitor address >"$LOGS/addr-d1" 2>&1 &
MON1=$!
"$IP" netns exec d2 "$IP" -ts monitor address >"$LOGS/addr-d2" 2>&1 &
MON2=$!
"$IP" -ts monitor link >"$LOGS/link-root" 2>&1 &
MONL=$!
LAB_PIDS="$LAB_PIDS $MON1 $MON2 $MONL"

# speaker NS PRIORITY PEER [FLAG...]: start tunlb's speaker in NS; its pid
# goes to SPK_<NS>. `ip netns exec` execs the agent, so $! is the agent.
speaker() {
	_ns="$1" _prio="$2" _peer="$3"
	shift 3
	echo "--- start speaker $_ns priority $_prio $*" >>"$LOGS/speaker-$_ns"
	"$IP" netns exec "$_ns" env TUNLB_LOG=info "$AGENT" vrrp --interface eth0 \
		--vrid "$VRID" --priority "$_prio" --advert-ms 100 --peer "$_peer" \
		--vip "$VIP/32" "$@" >>"$LOGS/speaker-$_ns" 2>&1 &
	eval "SPK_$_ns=$!"
}

# stop PID: SIGTERM and wait for the exit.
stop() {
	kill -TERM "$1" 2>/dev/null
	wait "$1" 2>/dev/null
}

holds() { ns_exec "$1" "$IP" -o addr show dev eth0 | grep -q "inet $VIP/"; }
# holders: the directors holding the VIP, space-separated.
holders() {
	_h=""
	for _n in d1 d2; do holds "$_n" && _h="$_h $_n"; done
	echo "${_h# }"
}
only_holder() { [ "$(holders)" = "$1" ]; }
nobody_holds() { [ -z "$(holders)" ]; }

lines() { wc -l <"$1" | tr -d ' '; }
# event_ms FILE FROM KIND: wall-clock ms (since midnight) of the first event
# after line FROM: KIND add|del (the VIP) or a link name.
event_ms() {
	awk -v from="$2" -v kind="$3" -v vip="inet $VIP/" '
		NR <= from { next }
		kind == "add" && index($0, vip) && !index($0, "Deleted") { hit = 1 }
		kind == "del" && index($0, vip) && index($0, "Deleted") { hit = 1 }
		kind != "add" && kind != "del" && index($0, " " kind "@") { hit = 1 }
		hit {
			t = substr($0, 13, 15)
			split(t, p, ":")
			printf "%d\n", ((p[1] * 60 + p[2]) * 60 + p[3]) * 1000
			exit
		}' "$1"
}
has_event() { [ -n "$(event_ms "$@")" ]; }
# within NAME MAX FROM TO: the time from event FROM to event TO (ms) is
# known, and 0..MAX; the measurement is printed either way.
within() {
	if [ -z "$3" ] || [ -z "$4" ]; then
		lab_assert_eq "$1" "yes" "no: an event is missing"
		return
	fi
	_d=$(($4 - $3))
	echo "measured: $_d ms ($1)"
	if [ "$_d" -ge 0 ] && [ "$_d" -le "$2" ]; then
		lab_assert_eq "$1" "yes" "yes"
	else
		lab_assert_eq "$1" "yes" "no: $_d ms"
	fi
}

mac_of() { ns_exec "$1" cat /sys/class/net/eth0/address; }
client_neigh() { ns_exec client "$IP" neigh show "$VIP" dev eth0; }
client_sees_mac() { client_neigh | grep -q "lladdr $1"; }
in_log() { grep -q "$2" "$LOGS/$1"; }
client_gets() { [ "$(request client "http://$VIP/")" = "$1" ]; }
last_transition_is() { grep "VRRP transition" "$LOGS/speaker-$1" | tail -n 1 | grep -q "$2"; }

echo "== (a) two tunlb speakers"
speaker d1 200 "$D2"
wait_for 20 "d1 holds the VIP" only_holder d1
speaker d2 100 "$D1"
wait_for 20 "d2 is a backup" in_log speaker-d2 "to=Backup"
# A window in which d2 must not take over (10 adverts of d1).
sleep 1
lab_assert_eq "one holder: the priority 200 speaker" "d1" "$(holders)"
lab_assert_eq "the client reaches the holder" "d1" "$(request client "http://$VIP/")"
lab_assert_eq "the client's ARP entry names d1" "yes" \
	"$(client_sees_mac "$(mac_of d1)" && echo yes || echo no)"

echo "-- cut d1's link"
from_l=$(lines "$LOGS/link-root")
from2=$(lines "$LOGS/addr-d2")
"$IP" link set v-d1 down
wait_for 20 "d2 takes the VIP" holds d2
wait_for 5 "events recorded" has_event "$LOGS/addr-d2" "$from2" add
cut=$(event_ms "$LOGS/link-root" "$from_l" v-d1)
took=$(event_ms "$LOGS/addr-d2" "$from2" add)
# The last advert before the cut was at most 100 ms earlier, so d2's timer
# fires at most Master_Down_Interval (361 ms) after the cut; 150 ms more
# allow for the emulated guest adding the address.
within "link cut: backup takes over within 3 x advert + skew (361 ms, +150)" 511 "$cut" "$took"
wait_for 5 "gratuitous ARP moved the client's entry to d2" client_sees_mac "$(mac_of d2)"
lab_assert_eq "gratuitous ARP: the client's entry names d2 before it asks" "yes" \
	"$(client_sees_mac "$(mac_of d2)" && echo yes || echo "no: $(client_neigh)")"
lab_assert_eq "the client reaches d2" "d2" "$(request client "http://$VIP/")"
wait_for 5 "d1 releases the VIP without a carrier" only_holder d2
lab_assert_eq "during the cut, one holder: d2 (d1 lost its carrier and let go)" "d2" "$(holders)"

echo "-- restore d1's link: d1 starts over as a backup and preempts"
"$IP" link set v-d1 up
wait_for 20 "d2 yields to the higher priority" only_holder d1
lab_assert_eq "after the link returns, one holder: d1" "d1" "$(holders)"
lab_assert_contains "d2 logged yielding to d1" "from=Master to=Backup" \
	"$(grep 'VRRP transition' "$LOGS/speaker-d2")"
wait_for 10 "the client reaches d1 again" client_gets d1
lab_assert_eq "the client reaches d1 again" "d1" "$(request client "http://$VIP/")"

echo "-- SIGTERM on the master d1"
from1=$(lines "$LOGS/addr-d1")
from2=$(lines "$LOGS/addr-d2")
stop "$SPK_d1"
wait_for 20 "d2 takes the VIP" only_holder d2
wait_for 5 "events recorded" has_event "$LOGS/addr-d2" "$from2" add
left=$(event_ms "$LOGS/addr-d1" "$from1" del)
took=$(event_ms "$LOGS/addr-d2" "$from2" add)
lab_assert_eq "SIGTERM: d1 released the VIP" "no" "$(holds d1 && echo yes || echo no)"
# Priority 0 sets d2's timer to its skew (61 ms); 150 ms for the guest.
within "SIGTERM: handover within skew + advert (+150 ms), under the 361 ms down interval" 311 "$left" "$took"
lab_assert_eq "the client reaches d2" "d2" "$(request client "http://$VIP/")"

echo "-- d1 returns with preemption (default)"
speaker d1 200 "$D2"
wait_for 20 "d1 preempts" only_holder d1
lab_assert_eq "preemption on: the priority 200 speaker takes the VIP back" "d1" "$(holders)"
lab_assert_eq "the client reaches d1" "d1" "$(request client "http://$VIP/")"

echo "-- d1 leaves, returns with --no-preempt"
stop "$SPK_d1"
wait_for 20 "d2 takes the VIP" only_holder d2
speaker d1 200 "$D2" --no-preempt
wait_for 20 "d1 is a backup" last_transition_is d1 "to=Backup"
sleep 2
lab_assert_eq "no preemption: d2 keeps the VIP" "d2" "$(holders)"
lab_assert_eq "the client still reaches d2" "d2" "$(request client "http://$VIP/")"

echo "-- both stop"
stop "$SPK_d1"
stop "$SPK_d2"
lab_assert_eq "stopped speakers leave no VIP behind" "" "$(holders)"

echo "== (b) tunlb (d1, priority 100) and keepalived (d2, priority 150)"
KA=/usr/sbin/keepalived
mkdir -p /etc/keepalived /run/keepalived
: >"$LOGS/keepalived.log"
# keepalived_conf NOPREEMPT: a generated config for d2.
keepalived_conf() {
	cat >"$LOGS/keepalived.conf" <<CONF
global_defs {
	router_id d2
	vrrp_version 3
}
vrrp_instance VI_1 {
	state BACKUP
	interface eth0
	virtual_router_id $VRID
	priority 150
	advert_int 0.1
	# RFC checksums only: by default keepalived silently adopts the
	# pre-1.3.7 unicast checksum (over 224.0.0.18) when a peer uses it.
	old_unicast_checksum never
	$1
	unicast_src_ip $D2
	unicast_peer {
		$D1
	}
	virtual_ipaddress {
		$VIP/32 dev eth0
	}
}
CONF
}
# keepalived_start: runs it in d2; the parent's pid goes to KA_PID.
keepalived_start() {
	echo "--- start keepalived" >>"$LOGS/keepalived.log"
	"$IP" netns exec d2 "$KA" --dont-fork --log-console --log-detail --no-syslog --vrrp \
		-f "$LOGS/keepalived.conf" -p /run/keepalived/ka.pid -r /run/keepalived/vrrp.pid \
		>>"$LOGS/keepalived.log" 2>&1 &
	KA_PID=$!
}
ka_state_since() { tail -n "+$1" "$LOGS/keepalived.log" | grep -q "Entering $2 STATE"; }

speaker d1 100 "$D2"
wait_for 20 "tunlb holds the VIP alone" only_holder d1
keepalived_conf ""
ka_from=$(lines "$LOGS/keepalived.log")
keepalived_start
wait_for 30 "keepalived preempts tunlb" only_holder d2
lab_assert_eq "keepalived (150) takes over from tunlb (100): one holder" "d2" "$(holders)"
lab_assert_eq "keepalived says MASTER" "yes" "$(ka_state_since "$ka_from" MASTER && echo yes || echo no)"
lab_assert_contains "tunlb yielded to keepalived's adverts" "from=Master to=Backup" \
	"$(tail -n 20 "$LOGS/speaker-d1" | grep 'VRRP transition')"
lab_assert_eq "the client reaches d2" "d2" "$(request client "http://$VIP/")"

echo "-- SIGTERM keepalived"
from1=$(lines "$LOGS/addr-d1")
from2=$(lines "$LOGS/addr-d2")
stop "$KA_PID"
wait_for 20 "tunlb takes the VIP" only_holder d1
wait_for 5 "events recorded" has_event "$LOGS/addr-d1" "$from1" add
left=$(event_ms "$LOGS/addr-d2" "$from2" del)
took=$(event_ms "$LOGS/addr-d1" "$from1" add)
lab_assert_eq "keepalived leaves: tunlb takes over, one holder" "d1" "$(holders)"
within "tunlb took over on keepalived's priority 0 (skew 61 ms, down interval 361 ms)" 311 "$left" "$took"
lab_assert_eq "the client reaches d1" "d1" "$(request client "http://$VIP/")"

echo "-- keepalived returns with nopreempt: it must hear tunlb's adverts"
keepalived_conf nopreempt
ka_from=$(lines "$LOGS/keepalived.log")
keepalived_start
wait_for 30 "keepalived is a backup" ka_state_since "$ka_from" BACKUP
# 20 of tunlb's adverts: keepalived would be master after 0.3 s if it
# rejected them (a checksum it disagrees with, say).
sleep 2
lab_assert_eq "keepalived accepts tunlb's adverts: tunlb stays the holder" "d1" "$(holders)"
lab_assert_eq "keepalived never entered MASTER" "no" \
	"$(ka_state_since "$ka_from" MASTER && echo yes || echo no)"
lab_assert_eq "keepalived found no bad checksum in tunlb's adverts" "" \
	"$(grep -i "checksum" "$LOGS/keepalived.log")"

echo "-- SIGTERM tunlb"
from1=$(lines "$LOGS/addr-d1")
from2=$(lines "$LOGS/addr-d2")
stop "$SPK_d1"
wait_for 20 "keepalived takes the VIP" only_holder d2
wait_for 5 "events recorded" has_event "$LOGS/addr-d2" "$from2" add
left=$(event_ms "$LOGS/addr-d1" "$from1" del)
took=$(event_ms "$LOGS/addr-d2" "$from2" add)
lab_assert_eq "tunlb leaves: keepalived takes over, one holder" "d2" "$(holders)"
within "keepalived took over on tunlb's priority 0 (skew 41 ms, down interval 341 ms)" 291 "$left" "$took"
lab_assert_eq "the client reaches d2" "d2" "$(request client "http://$VIP/")"
stop "$KA_PID"

echo "== (c) IPVS connection sync across a failover"
RS=192.168.56.183
SYNC_PORT=7000
HOLD=/usr/local/bin/tcp-hold
topo_add_ns rs "$RS"
cat >"$LOGS/chat.yaml" <<YAML
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata:
  name: chat
spec:
  vip: $VIP
  ports:
  - name: chat
    port: $SYNC_PORT
  scheduler: rr
  backends:
    static:
    - address: $RS
YAML
# director_apply NS [FLAG...]: the agent programs NS as a director of chat.
# The VIP it adds goes on tunl0, which with arp_ignore=1 on eth0 answers
# no ARP: only the VRRP master's eth0 copy does.
director_apply() {
	_ns="$1"
	shift
	ns_exec "$_ns" "$AGENT" apply --node "$_ns" --state-dir "/tmp/state-$_ns" --director \
		-f "$LOGS/chat.yaml" "$@" 2>&1 | sed "s/^/[$_ns] /"
}
SYNC_FLAGS="--ipvs-sync-interface eth0 --ipvs-sync-id $VRID"
for _n in d1 d2; do
	ns_exec "$_n" sysctl -qw net.ipv4.conf.eth0.arp_ignore=1
	director_apply "$_n" $SYNC_FLAGS
done
ns_exec rs "$AGENT" apply --node rs --state-dir /tmp/state-rs -f "$LOGS/chat.yaml" 2>&1 | sed "s/^/[rs] /"
for _n in d1 d2; do
	lab_assert_contains "$_n: tunlb-agent show lists tunlb's master sync daemon" \
		"master sync daemon on eth0, sync id $VRID" "$(ns_exec "$_n" "$AGENT" show)"
	lab_assert_contains "$_n: ipvsadm lists the backup daemon tunlb started" \
		"backup sync daemon (mcast=eth0, syncid=$VRID" "$(ns_exec "$_n" ipvsadm -L --daemon)"
done
"$IP" netns exec rs "$HOLD" serve "$SYNC_PORT" >"$LOGS/hold-server" 2>&1 &
LAB_PIDS="$LAB_PIDS $!"
listening() { ns_exec rs busybox netstat -ltn | grep -q ":$SYNC_PORT "; }
wait_for 10 "the chat server listens" listening
speaker d1 200 "$D2"
wait_for 20 "d1 holds the VIP" only_holder d1
speaker d2 100 "$D1"
wait_for 20 "d2 is a backup" last_transition_is d2 "to=Backup"

# status FILE KEY: a value from tcp-hold's status file.
status() { sed -n "s/.* $2=\([0-9]*\).*/\1/p; s/^$2=\([0-9]*\) .*/\1/p" "$1" | head -n 1; }
status_is() { [ "$(status "$1" "$2")" = "$3" ]; }
replies_above() { [ "$(status "$1" replies)" -gt "$2" ]; }
# synced NS FILE: how many of the held connections NS's IPVS lists as ESTABLISHED.
synced() {
	_ports=$(sed -n 's/^ports=//p' "$2" | tr ',' ' ')
	_table=$(ns_exec "$1" ipvsadm -Lnc)
	_c=0
	for _p in $_ports; do
		echo "$_table" | grep -q "ESTABLISHED *$CLIENT:$_p *$VIP:$SYNC_PORT" && _c=$((_c + 1))
	done
	echo "$_c"
}
synced_is() { [ "$(synced "$1" "$2")" = "$3" ]; }
# hold FILE: 20 connections through the VIP, a line every 200 ms on each.
hold() {
	"$IP" netns exec client "$HOLD" hold "$VIP:$SYNC_PORT" 20 200 "$1" >"$1.log" 2>&1 &
	HOLD_PID=$!
	wait_for 20 "20 connections up" status_is "$1" alive 20
	# Three packets make IPVS sync a connection (sync_threshold 3).
	wait_for 10 "a few lines on every connection" replies_above "$1" 100
}
answered_or_failed() { status_is "$1" alive 0 || replies_above "$1" "$2"; }
# failover FILE: cut d1's link; wait until d2 holds the VIP and the connections
# have had 10 more answers each (or all failed); the caller restores the link.
failover() {
	_before=$(status "$1" replies)
	"$IP" link set v-d1 down
	wait_for 20 "d2 takes the VIP" holds d2
	wait_for 15 "every connection answers again, or fails" answered_or_failed "$1" "$((_before + 200))"
}

ST="$LOGS/hold-sync"
hold "$ST"
wait_for 10 "d2's backup daemon learnt the 20 connections" synced_is d2 "$ST" 20
lab_assert_eq "before the failover, d2 (backup director) lists the 20 connections, synced" "20" "$(synced d2 "$ST")"
ns_exec d2 ipvsadm -Lnc | head -n 4
failover "$ST"
cat "$ST"
lab_assert_eq "with sync: 20 of 20 connections alive after the failover to d2" "20" "$(status "$ST" alive)"
lab_assert_eq "with sync: 0 of 20 reset" "0" "$(status "$ST" reset)"
echo "measured: longest wait for an answer across the failover: $(status "$ST" max_gap_ms) ms"
"$IP" link set v-d1 up
wait_for 20 "d1 takes the VIP back" only_holder d1
wait_for 10 "more answers after d1 is back" replies_above "$ST" "$(($(status "$ST" replies) + 100))"
lab_assert_eq "with sync: still 20 of 20 alive after failing back to d1" "20" "$(status "$ST" alive)"
kill "$HOLD_PID"
wait "$HOLD_PID" 2>/dev/null

echo "-- control: the same failover without the sync daemons"
for _n in d1 d2; do director_apply "$_n"; done
lab_assert_eq "without --ipvs-sync-*: tunlb stopped its daemons on d1" "" \
	"$(ns_exec d1 ipvsadm -L --daemon)"
# A daemon tunlb did not start: the next run leaves it running.
ns_exec d2 ipvsadm --start-daemon backup --mcast-interface eth0 --syncid 9
director_apply d2
lab_assert_contains "d2 keeps the daemon tunlb did not start (sync id 9), and only it" \
	"backup sync daemon (mcast=eth0, syncid=9" "$(ns_exec d2 ipvsadm -L --daemon | tr '\n' ' ')"
lab_assert_eq "d2 runs no master daemon" "" "$(ns_exec d2 ipvsadm -L --daemon | grep master)"
ST="$LOGS/hold-nosync"
hold "$ST"
lab_assert_eq "without sync: d2 knows none of the 20 connections" "0" "$(synced d2 "$ST")"
failover "$ST"
wait_for 15 "the connections fail" status_is "$ST" alive 0
cat "$ST"
lab_assert_eq "without sync: 20 of 20 connections reset by the new director" "20" "$(status "$ST" reset)"
"$IP" link set v-d1 up
kill "$HOLD_PID" 2>/dev/null
wait "$HOLD_PID" 2>/dev/null
ns_exec d2 ipvsadm --stop-daemon backup
stop "$SPK_d1"
stop "$SPK_d2"

echo "== (d) standalone serve --peer: the agents elect among themselves"
SITE=192.168.56.186
cat >"$LOGS/site.yaml" <<YAML
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata:
  name: site
spec:
  vip: $SITE
  ports:
  - port: 80
  backends:
    static:
    - address: $RS
  directors:
    election: {advertIntervalMs: 100, preferredNode: d1}
YAML
start_http rs rs 80
ns_exec rs "$AGENT" apply --node rs --state-dir /tmp/state-rs -f "$LOGS/site.yaml" 2>&1 | sed "s/^/[rs] /"
for _n in d1 d2; do
	ns_exec "$_n" "$AGENT" delete --node "$_n" --state-dir "/tmp/state-$_n" --no-wait -f "$LOGS/chat.yaml" 2>&1 | sed "s/^/[$_n] /"
	# The elected VIP is on tunl0: the master answers ARP for it on eth0.
	ns_exec "$_n" sysctl -qw net.ipv4.conf.eth0.arp_ignore=0
done
# serve NS PEER-NAME PEER-ADDRESS: `tunlb-agent serve` for site with the
# other director named; its pid goes to SRV_<NS>.
serve() {
	echo "--- serve $1" >>"$LOGS/serve-$1"
	"$IP" netns exec "$1" env TUNLB_LOG=info "$AGENT" serve --node "$1" --director \
		--state-dir "/tmp/state-$1" --resync-seconds 2 --peer "$2=$3" -f "$LOGS/site.yaml" \
		>>"$LOGS/serve-$1" 2>&1 &
	eval "SRV_$1=$!"
}
# site_holders: the directors holding site's VIP on tunl0.
site_holders() {
	for _n in d1 d2; do
		ns_exec "$_n" "$IP" -o addr show dev tunl0 | grep -q "inet $SITE/" && printf '%s ' "$_n"
	done | sed 's/ $//'
}
site_held_by() { [ "$(site_holders)" = "$1" ]; }
said() { grep -q "$2" "$LOGS/serve-$1"; }
serve d1 d2 "$D2"
serve d2 d1 "$D1"
lab_assert_eq "serve --peer: d1 (preferred) alone holds site's VIP" 0 "$(wait_for 30 "d1 holds .186" site_held_by d1; echo $?)"
lab_assert_eq "serve --peer: d1 prints that it is active" 0 \
	"$(wait_for 10 "d1 active" said d1 "virtualservice default/site: director active: holds the VIP"; echo $?)"
lab_assert_eq "serve --peer: d2 prints standby" 0 \
	"$(wait_for 10 "d2 standby" said d2 "virtualservice default/site: director standby"; echo $?)"
lab_assert_contains "serve --peer: d2 keeps site's IPVS service warm" "TCP  $SITE:80" "$(ns_exec d2 ipvsadm -Ln)"
lab_assert_eq "serve --peer: the client reaches rs through site's VIP" "rs" "$(request client "http://$SITE/")"
stop "$SRV_d1"
lab_assert_eq "serve --peer: d1 stopped (SIGTERM) and let go of the VIP" "" "$(ns_exec d1 "$IP" -o addr show dev tunl0 | grep "inet $SITE/")"
lab_assert_eq "serve --peer: d2 takes the VIP" 0 "$(wait_for 10 "d2 holds .186" site_held_by d2; echo $?)"
lab_assert_eq "serve --peer: the client reaches rs through d2" "rs" "$(request client "http://$SITE/")"
lab_assert_eq "serve --peer: d2 prints that it is active" 0 \
	"$(wait_for 10 "d2 active" said d2 "virtualservice default/site: director active: holds the VIP"; echo $?)"
serve d1 d2 "$D2"
lab_assert_eq "serve --peer: d1 back, it takes the VIP back (preferred, preemption)" 0 "$(wait_for 30 "d1 holds .186" site_held_by d1; echo $?)"
lab_assert_eq "serve --peer: the client reaches rs through d1 again" "rs" "$(request client "http://$SITE/")"
out="$(ns_exec d1 "$AGENT" serve --node d1 --director --state-dir /tmp/state-bad --peer d2 -f "$LOGS/site.yaml" 2>&1)"
lab_assert_contains "serve --peer: a peer without an address is named" '--peer "d2": expected NAME=ADDRESS' "$out"
stop "$SRV_d1"
stop "$SRV_d2"
lab_assert_eq "serve --peer: both stopped, nobody holds site's VIP" "" "$(site_holders)"

echo "== logs"
for f in speaker-d1 speaker-d2 keepalived.log serve-d1 serve-d2; do
	echo "--- $f"
	grep -E "transition|VIP|warn|WARN|error|ERROR|STATE|---" "$LOGS/$f" | tail -n 40
done
topo_cleanup
lab_summary

# shellcheck shell=sh
# Director failover benchmark, run inside the lab guest by scripts/bench-vrrp.sh:
#   sh /bench/vrrp-guest.sh [FAILOVERS] [SYNC_FAILOVERS]
# Binaries: /usr/local/bin/tunlb-agent, /usr/local/bin/vrrp-probe
# (tests/bench/vrrp/probe), /usr/local/bin/tcp-hold, /usr/sbin/keepalived
# (run.sh --host-bin); /lab/topology.sh.
#
# 1. Failover time. Four pairs of directors on one bridge, all running for
#    the whole benchmark, each pair a VRRPv3 virtual router of its own
#    (unicast peers, preemption on), priority 200 on director "a" and 100 on
#    "b", and a client .10:
#      t100  tunlb-agent vrrp --advert-ms 100    .21/.22 VIP .121 VRID 51
#      k100  keepalived, advert_int 0.1          .31/.32 VIP .131 VRID 52
#      t1s   tunlb-agent vrrp --advert-ms 1000   .41/.42 VIP .141 VRID 53
#      k1s   keepalived, advert_int 1            .51/.52 VIP .151 VRID 54
#    Every director answers HTTP on :80 with its own name. A failover: from
#    the client, vrrp-probe sends a GET through a new connection to the VIP
#    every 10 ms, sets a's bridge-side veth down once a answered, and times
#    the first answer from b after it (the link change is the probe's own
#    ioctl: no program start between the cut and its timestamp). Then the
#    link comes back, and the same probe times the first answer from a again
#    (preemption); the next failover waits until b has let go of the VIP,
#    and a random 1-2 s more. FAILOVERS rounds, each with one failover of
#    every pair, the pairs in a rotating order. `ip -ts monitor` of each b's
#    addresses and of the client's neighbours split a failover into cut ->
#    VIP added on b -> the client's ARP entry naming b -> answer. At the end,
#    each speaker's CPU time and how often it became master.
# 2. Connections across failovers with IPVS connection sync. Directors sa .61
#    (priority 200) and sb .62 (100), tunlb speakers at 100 ms, both
#    `tunlb-agent apply --director --ipvs-sync-interface eth0` for one
#    VirtualService VIP .161:7000 with real server rs .63; 20 long-lived
#    connections from the client (tcp-hold, a line every 200 ms on each)
#    through SYNC_FAILOVERS cuts of sa's link and as many returns; resets
#    counted after each.
#
# Prints "RESULT failover config=C round=R ..." per failover, "RESULT
# takeback ..." per return, "RESULT speaker ..." per speaker, "RESULT sync
# ..." per sync failover, then "N passed, M failed" for the checks.
set -u
# shellcheck source=../lab/guest/topology.sh
. /lab/topology.sh

AGENT=/usr/local/bin/tunlb-agent
PROBE=/usr/local/bin/vrrp-probe
HOLD=/usr/local/bin/tcp-hold
KA=/usr/sbin/keepalived
FAILOVERS="${1:-20}"
SYNC_FAILOVERS="${2:-5}"
CLIENT=192.168.56.10
CONFIGS="t100 k100 t1s k1s"
LOGS=/tmp/vrrp
mkdir -p "$LOGS" /run/keepalived /etc/keepalived

say() { echo "bench-vrrp: $*"; }

# wait_until SECONDS DESCRIPTION CMD...: CMD every 0.25 s until it succeeds.
wait_until() {
	_wu_t="$1" _wu_d="$2"
	shift 2
	_wu_i=0
	while [ "$_wu_i" -lt "$((_wu_t * 4))" ]; do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.25
		_wu_i=$((_wu_i + 1))
	done
	say "timed out after ${_wu_t}s: $_wu_d"
	return 1
}

# cfg NAME: the pair's settings in KIND ADV VRID A B AIP BIP CVIP.
cfg() {
	case "$1" in
	t100) KIND=tunlb ADV=100 VRID=51 _n=2 ;;
	k100) KIND=keepalived ADV=100 VRID=52 _n=3 ;;
	t1s) KIND=tunlb ADV=1000 VRID=53 _n=4 ;;
	k1s) KIND=keepalived ADV=1000 VRID=54 _n=5 ;;
	sync) KIND=tunlb ADV=100 VRID=55 _n=6 ;;
	*) say "unknown configuration $1"; exit 1 ;;
	esac
	A="${1}a" B="${1}b"
	AIP="192.168.56.${_n}1" BIP="192.168.56.${_n}2" CVIP="192.168.56.1${_n}1"
}

holds() { ns_exec "$1" "$IP" -o addr show dev eth0 | grep -q "inet $2/"; }
# only_holder NS OTHER VIP
only_holder() { holds "$1" "$3" && ! holds "$2" "$3"; }
lines() { wc -l <"$1" | tr -d ' '; }

# speaker NS PRIORITY PEER: tunlb's speaker in NS for the current cfg.
speaker() {
	"$IP" netns exec "$1" env TUNLB_LOG=info "$AGENT" vrrp --interface eth0 \
		--vrid "$VRID" --priority "$2" --advert-ms "$ADV" --peer "$3" \
		--vip "$CVIP/32" >>"$LOGS/speaker-$1" 2>&1 &
	LAB_PIDS="$LAB_PIDS $!"
	eval "PID_$1=$!"
}

# keepalived_start NS PRIORITY SOURCE PEER: keepalived's VRRP in NS, the
# same settings as the tunlb pairs (VRRPv3, unicast, preemption on).
keepalived_start() {
	_adv=$(awk -v ms="$ADV" 'BEGIN {printf "%g", ms / 1000}')
	cat >"$LOGS/$1.conf" <<CONF
global_defs {
	router_id $1
	vrrp_version 3
}
vrrp_instance VI_$VRID {
	state BACKUP
	interface eth0
	virtual_router_id $VRID
	priority $2
	advert_int $_adv
	# RFC checksums only (keepalived otherwise adopts the pre-1.3.7
	# unicast checksum when a peer uses it).
	old_unicast_checksum never
	unicast_src_ip $3
	unicast_peer {
		$4
	}
	virtual_ipaddress {
		$CVIP/32 dev eth0
	}
}
CONF
	"$IP" netns exec "$1" "$KA" --dont-fork --log-console --log-detail --no-syslog --vrrp \
		-f "$LOGS/$1.conf" -p "/run/keepalived/$1.pid" -r "/run/keepalived/$1-vrrp.pid" \
		>>"$LOGS/keepalived-$1.log" 2>&1 &
	LAB_PIDS="$LAB_PIDS $!"
	eval "PID_$1=$!"
}

# pair_start NAME: both directors of a pair, each with its HTTP server and
# an address monitor on b.
pair_start() {
	cfg "$1"
	topo_add_ns "$A" "$AIP"
	topo_add_ns "$B" "$BIP"
	start_http "$A" "$A" 80 || exit 1
	start_http "$B" "$B" 80 || exit 1
	"$IP" netns exec "$B" "$IP" -ts monitor address >"$LOGS/addr-$B" 2>&1 &
	LAB_PIDS="$LAB_PIDS $!"
	case "$KIND" in
	tunlb)
		speaker "$A" 200 "$BIP"
		speaker "$B" 100 "$AIP"
		;;
	keepalived)
		keepalived_start "$A" 200 "$AIP" "$BIP"
		keepalived_start "$B" 100 "$BIP" "$AIP"
		;;
	esac
}

# vip_added_tod NS FROM: time of day (s) of the first addition of CVIP in
# NS's address monitor after line FROM.
vip_added_tod() {
	awk -v from="$2" -v vip="inet $CVIP/" '
		NR <= from { next }
		index($0, vip) && !index($0, "Deleted") {
			split(substr($0, 13, 15), p, ":")
			printf "%.6f\n", (p[1] * 60 + p[2]) * 60 + p[3]
			exit
		}' "$LOGS/addr-$1"
}

# field LINE KEY: the value of KEY=... in LINE.
field() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

# failover NAME ROUND: a's link cut and restored, both timed.
failover() {
	cfg "$1"
	wait_until 30 "$1: a holds the VIP alone" only_holder "$A" "$B" "$CVIP" ||
		{ lab_assert_eq "$1 round $2: a holds the VIP alone before the cut" yes no; return 1; }
	# The same random wait for both pairs of equal settings in a round.
	sleep "$(awk -v s="$(($2 * 100000 + ADV))" 'BEGIN {srand(s); printf "%.3f", 1 + rand()}')"
	_from=$(lines "$LOGS/addr-$B") _nfrom=$(lines "$LOGS/neigh-client")
	_out=$("$IP" netns exec client "$PROBE" down "v-$A" "$CVIP:80" "$A" "$B" 10 60)
	_rc=$?
	if [ "$_rc" -ne 0 ] || [ -z "$(field "$_out" first_ms)" ]; then
		say "$1 round $2: $_out"
		lab_assert_eq "$1 round $2: b answers after the cut" yes no
		"$IP" link set "v-$A" up
		return 1
	fi
	wait_until 5 "$1: the address monitor saw b add the VIP" vip_added_tod_ok "$B" "$_from"
	_c=$(field "$_out" change_at)
	_vip_ms=$(since_ms "$(vip_added_tod "$B" "$_from")" "$_c")
	_arp_ms=$(since_ms "$(client_arp_tod "$_nfrom" "$(ns_exec "$B" cat /sys/class/net/eth0/address)")" "$_c")
	echo "RESULT failover config=$1 round=$2 vip_ms=$_vip_ms arp_ms=$_arp_ms $_out" | tee -a "$LOGS/results"
	wait_until 10 "$1: a lets go of the VIP without a carrier" only_holder "$B" "$A" "$CVIP"
	_out=$("$IP" netns exec client "$PROBE" up "v-$A" "$CVIP:80" "$B" "$A" 10 60)
	_rc=$?
	echo "RESULT takeback config=$1 round=$2 $_out" | tee -a "$LOGS/results"
	if [ "$_rc" -ne 0 ]; then
		lab_assert_eq "$1 round $2: a answers again after its link returns" yes no
		return 1
	fi
	wait_until 30 "$1: b lets go of the VIP" only_holder "$A" "$B" "$CVIP"
}
vip_added_tod_ok() { [ -n "$(vip_added_tod "$@")" ]; }

# client_arp_tod FROM MAC: time of day (s) of the first event after line FROM
# in the client's neighbour monitor that maps CVIP to MAC.
client_arp_tod() {
	awk -v from="$1" -v ip="$CVIP " -v mac="lladdr $2" '
		NR <= from { next }
		(index($0, "]" ip) || index($0, "] " ip)) && index($0, mac) && !index($0, "Deleted") {
			split(substr($0, 13, 15), p, ":")
			printf "%.6f\n", (p[1] * 60 + p[2]) * 60 + p[3]
			exit
		}' "$LOGS/neigh-client"
}

# since_ms TOD UNIX: milliseconds from Unix time UNIX to time of day TOD
# (the guest runs on UTC); "none" without TOD.
since_ms() {
	awk -v a="$1" -v c="$2" 'BEGIN {if (a == "") print "none"; else printf "%.1f", (a - (c - int(c / 86400) * 86400)) * 1000}'
}

# --- 1. failover time -------------------------------------------------------
"$IP" link add "$LAB_BRIDGE" type bridge forward_delay 0 stp_state 0
"$IP" link set "$LAB_BRIDGE" up
topo_add_ns client "$CLIENT"
# When the client's ARP entry for a VIP moves to the new holder.
"$IP" netns exec client "$IP" -ts monitor neigh >"$LOGS/neigh-client" 2>&1 &
LAB_PIDS="$LAB_PIDS $!"
for c in $CONFIGS; do pair_start "$c"; done
for c in $CONFIGS; do
	cfg "$c"
	wait_until 60 "$c: a is master" only_holder "$A" "$B" "$CVIP" || {
		tail -n 20 "$LOGS/speaker-$A" "$LOGS/keepalived-$A.log" 2>/dev/null
		exit 1
	}
	lab_assert_eq "$c: the VIP answers a" "$A" "$(request client "http://$CVIP/")"
done
say "all pairs elected; $FAILOVERS rounds of one failover per pair"
r=1
while [ "$r" -le "$FAILOVERS" ]; do
	# Rotate the order, so no configuration always follows the same one.
	order=$(echo "$CONFIGS" | awk -v r="$r" '{for (i = 0; i < NF; i++) printf "%s ", $((i + r - 1) % NF + 1)}')
	for c in $order; do failover "$c" "$r"; done
	r=$((r + 1))
done
for c in $CONFIGS; do
	lab_assert_eq "$c: $FAILOVERS failovers timed" "$FAILOVERS" "$(grep -c "^RESULT failover config=$c .*first_ms=" "$LOGS/results")"
done
for f in "$LOGS"/speaker-* "$LOGS"/keepalived-*.log; do
	echo "--- $(basename "$f"): $(grep -c 'VRRP transition\|Entering' "$f") transitions; warnings and errors:"
	grep -iE 'warn|error' "$f" | sort | uniq -c | sort -rn | head -n 5
done
# CPU time of each speaker over the whole phase (keepalived: its parent and
# its VRRP child), and how often each became master: a once at the start and
# once per return, b once per failover; more are takeovers from a live master.
for c in $CONFIGS; do
	cfg "$c"
	for n in "$A" "$B"; do
		eval "_p=\$PID_$n"
		[ "$KIND" = keepalived ] && _p="$_p $(cat "/run/keepalived/$n-vrrp.pid")"
		# shellcheck disable=SC2086 # a list of pids
		_cpu=$(for _q in $_p; do cat "/proc/$_q/stat"; done | awk '{t += $14 + $15} END {printf "%.2f", t / 100}')
		if [ "$KIND" = tunlb ]; then
			_m=$(grep -c 'VRRP transition.*to=Master' "$LOGS/speaker-$n")
		else
			_m=$(grep -c 'Entering MASTER STATE' "$LOGS/keepalived-$n.log")
		fi
		echo "RESULT speaker config=$c node=$n cpu_s=$_cpu to_master=$_m uptime_s=$(cut -d' ' -f1 /proc/uptime)"
	done
done
say "state transitions, as each speaker logged them:"
for f in "$LOGS"/speaker-*; do
	grep 'VRRP transition' "$f" | sed "s|^|$(basename "$f"): |"
done
for f in "$LOGS"/keepalived-*.log; do
	grep 'Entering' "$f" | sed "s|^|$(basename "$f"): |"
done
"$KA" --version 2>&1 | head -n 1
topo_cleanup

# --- 2. connections across failovers with IPVS connection sync --------------
if [ "$SYNC_FAILOVERS" -gt 0 ]; then
	cfg sync
	RS=192.168.56.63
	PORT=7000
	topo_add_ns "$A" "$AIP"
	topo_add_ns "$B" "$BIP"
	topo_add_ns rs "$RS"
	cat >"$LOGS/chat.yaml" <<YAML
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata: {name: chat}
spec:
  vip: $CVIP
  ports: [{name: chat, port: $PORT}]
  scheduler: rr
  backends:
    static: [{address: $RS}]
YAML
	# The agent puts the VIP on tunl0 as well; with arp_ignore=1 only the
	# VRRP master's eth0 copy answers ARP.
	for n in "$A" "$B"; do
		ns_exec "$n" sysctl -qw net.ipv4.conf.eth0.arp_ignore=1
		ns_exec "$n" "$AGENT" apply --node "$n" --state-dir "/tmp/state-$n" --director -f "$LOGS/chat.yaml" \
			--ipvs-sync-interface eth0 --ipvs-sync-id "$VRID" >"$LOGS/apply-$n" 2>&1 ||
			{ say "apply on $n failed:"; cat "$LOGS/apply-$n"; exit 1; }
	done
	ns_exec rs "$AGENT" apply --node rs --state-dir /tmp/state-rs -f "$LOGS/chat.yaml" >"$LOGS/apply-rs" 2>&1 ||
		{ say "apply on rs failed:"; cat "$LOGS/apply-rs"; exit 1; }
	"$IP" netns exec rs "$HOLD" serve "$PORT" >"$LOGS/hold-server" 2>&1 &
	LAB_PIDS="$LAB_PIDS $!"
	speaker "$A" 200 "$BIP"
	wait_until 20 "sync: a holds the VIP" holds "$A" "$CVIP" || exit 1
	speaker "$B" 100 "$AIP"
	wait_until 20 "sync: b is a backup" grep -q "to=Backup" "$LOGS/speaker-$B" || exit 1

	ST="$LOGS/hold"
	# status KEY: a value from tcp-hold's status file.
	status() { sed -n "s/.* $1=\([0-9]*\).*/\1/p; s/^$1=\([0-9]*\) .*/\1/p" "$ST" | head -n 1; }
	status_is() { [ "$(status "$1")" = "$2" ]; }
	replies_above() { [ "$(status replies)" -gt "$1" ]; }
	answered_or_failed() { status_is alive 0 || replies_above "$1"; }
	# synced NS: how many of the held connections NS's IPVS lists as ESTABLISHED.
	synced() {
		_table=$(ns_exec "$1" ipvsadm -Lnc)
		_c=0
		for _p in $(sed -n 's/^ports=//p' "$ST" | tr ',' ' '); do
			echo "$_table" | grep -q "ESTABLISHED *$CLIENT:$_p *$CVIP:$PORT" && _c=$((_c + 1))
		done
		echo "$_c"
	}
	synced_is() { [ "$(synced "$1")" = "$2" ]; }
	"$IP" netns exec client "$HOLD" hold "$CVIP:$PORT" 20 200 "$ST" >"$ST.log" 2>&1 &
	HOLD_PID=$!
	wait_until 20 "sync: 20 connections up" status_is alive 20 || { cat "$ST.log"; exit 1; }
	# Three packets on a connection make IPVS sync it (sync_threshold 3).
	wait_until 10 "sync: a few lines on every connection" replies_above 100
	wait_until 10 "sync: b learnt the 20 connections" synced_is "$B" 20
	lab_assert_eq "sync: b lists the 20 connections before the first failover" 20 "$(synced "$B")"

	# move DOWN|UP K: one failover; prints the counters after it.
	move() {
		_before=$(status replies) _reset=$(status reset)
		if [ "$1" = down ]; then
			wait_until 10 "sync: b knows the connections" synced_is "$B" 20
			"$IP" link set "v-$A" down
			wait_until 20 "sync: b takes the VIP" holds "$B" "$CVIP"
			_to=b
		else
			wait_until 10 "sync: a learnt the connections back" synced_is "$A" 20
			"$IP" link set "v-$A" up
			wait_until 20 "sync: a takes the VIP back" only_holder "$A" "$B" "$CVIP"
			_to=a
		fi
		# Ten answers a connection, or all failed.
		wait_until 20 "sync: every connection answers again, or fails" answered_or_failed "$((_before + 200))"
		echo "RESULT sync failover=$2 to=$_to reset_now=$(($(status reset) - _reset)) $(head -n 1 "$ST")"
	}
	k=1
	while [ "$k" -le "$SYNC_FAILOVERS" ]; do
		move down "$k"
		move up "$k"
		k=$((k + 1))
	done
	# A connection stuck without an answer counts as a timeout after 10 s.
	sleep 11
	echo "RESULT sync final $(head -n 1 "$ST")"
	lab_assert_eq "sync: 20 of 20 connections alive after $SYNC_FAILOVERS failovers and returns" 20 "$(status alive)"
	lab_assert_eq "sync: 0 resets" 0 "$(status reset)"
	lab_assert_eq "sync: 0 timeouts" 0 "$(status timeout)"
	kill "$HOLD_PID"
	wait "$HOLD_PID" 2>/dev/null
	grep -iE 'warn|error' "$LOGS/speaker-$A" "$LOGS/speaker-$B" | sort | uniq -c | sort -rn | head -n 5
	topo_cleanup
fi
lab_summary

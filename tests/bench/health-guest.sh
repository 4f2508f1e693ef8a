# shellcheck shell=sh
# Health-check benchmark, run inside the lab guest by scripts/bench-health.sh:
#   sh /bench/health-guest.sh [FAULTS] [WINDOW_SECONDS] [VIPS]
# Binaries: /usr/local/bin/tunlb-agent, /usr/local/bin/acceptor (tests/bench/
# acceptor), /usr/sbin/keepalived (run.sh --host-bin); /lab/topology.sh.
#
# 1. Detection. FAULTS VirtualServices 10.30.0.i:80, each with a stable real
#    server (rs1, 192.168.56.183, never faulted, so no service fails open)
#    and a faulted one, 10.20.0.i, an address of namespace "farm" with its
#    own busybox httpd on 10.20.0.i:80 (what direct checks reach) and one on
#    10.30.0.i:80 (what probes through the tunnel reach). A fault stops one
#    server: "refused" kills both of its httpds, "timeout" drops every packet
#    to its address in farm's prerouting (tunnelled or not). Faults are
#    injected one after another, a random 0-200 ms apart, so each meets its
#    checker at a random phase; all are restored before the next kind.
#    Configurations, one at a time on the same servers (different VIPs):
#      tunlb          tunlb-agent serve, healthCheck interval 2, timeout 1,
#                     fall 2, rise 2 (the defaults), probes through the tunnel;
#      ka-matched     keepalived -C, TCP_CHECK to the real server's address,
#                     delay_loop 2, connect_timeout 1, retry 1 (two failed
#                     checks), delay_before_retry 2;
#      ka-default     keepalived -C, TCP_CHECK with keepalived's defaults
#                     (delay_loop 60, connect_timeout 5, retry 1,
#                     delay_before_retry 1).
#    keepalived runs with inhibit_on_failure (weight 0 instead of removal), so
#    all three end a fault the same way: the destination's weight set to 0.
#    That moment is read from the kernel: a kprobe on ip_vs_edit_dest records
#    the address and new weight of every destination edit, and each fault
#    writes a marker into the same trace buffer right after it takes effect,
#    so detection = edit timestamp - marker timestamp (no polling).
# 2. Probe load. VIPS x 10 real servers (10.21.x.y, all addresses of farm,
#    where one acceptor answers on :80): tunlb-agent serve with the default
#    check in namespace director, the same manifests with
#    `healthCheck: {type: none}` in namespace dirnone, and keepalived -C with
#    TCP_CHECK at the same timing on the same servers in namespace kaload,
#    side by side. Over WINDOW seconds: each one's CPU time (/proc/PID/stat
#    utime+stime; keepalived's checker child), its VmRSS and VmHWM, the
#    probes each made (connections the acceptor took from its address) and
#    the guest's idle time.
#
# Prints "RESULT detect config=C kind=K rip=A ms=N" per fault, "RESULT load
# agent=A ..." per agent, then "N passed, M failed" for the checks.
set -u
. /lab/topology.sh

AGENT=/usr/local/bin/tunlb-agent
ACCEPTOR=/usr/local/bin/acceptor
KA=/usr/sbin/keepalived
FAULTS="${1:-20}"
WINDOW="${2:-60}"
VIPS="${3:-100}"
PER=10
T=/sys/kernel/tracing
STABLE=192.168.56.183
FARM=192.168.56.184
KALOAD=192.168.56.185
HZ=100 # USER_HZ: /proc/PID/stat counts CPU time in 1/100 s

say() { echo "bench-health: $*"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }

# wait_until SECONDS DESCRIPTION CMD...: CMD every 0.5 s until it succeeds.
wait_until() {
	_t="$1" _d="$2"
	shift 2
	_i=0
	while [ "$_i" -lt "$((_t * 2))" ]; do
		"$@" && return 0
		sleep 0.5
		_i=$((_i + 1))
	done
	say "timed out after ${_t}s: $_d"
	return 1
}

# --- topology: director, dirnone, rs1 (stable), farm (faulted servers) ----
"$IP" link add "$LAB_BRIDGE" type bridge forward_delay 0 stp_state 0
"$IP" link set "$LAB_BRIDGE" up
topo_add_ns director 192.168.56.181
topo_add_ns dirnone 192.168.56.182
topo_add_ns rs1 "$STABLE"
topo_add_ns farm "$FARM"
topo_add_ns kaload "$KALOAD"
for n in director dirnone kaload; do
	ns_exec "$n" "$IP" route add 10.20.0.0/16 via "$FARM"
	ns_exec "$n" "$IP" route add 10.21.0.0/16 via "$FARM"
done
i=1
while [ "$i" -le "$FAULTS" ]; do
	echo "addr add 10.20.0.$i/32 dev eth0"
	i=$((i + 1))
done >/tmp/farm-detect.ip
ns_exec farm "$IP" -batch /tmp/farm-detect.ip
ns_exec farm nft 'add table ip hbench; add chain ip hbench pre { type filter hook prerouting priority -300; }'
start_http rs1 stable 80 || exit 1

mount -t tracefs nodev "$T" 2>/dev/null
echo 0 >"$T/tracing_on"
# struct ip_vs_dest_user_kern: addr at 0 (IPv4 in its first 4 bytes), weight at 24.
echo 'p:hb/edit ip_vs:ip_vs_edit_dest a0=+0(%si):u8 a1=+1(%si):u8 a2=+2(%si):u8 a3=+3(%si):u8 weight=+24(%si):s32' >>"$T/kprobe_events" ||
	{ say "cannot place the kprobe on ip_vs_edit_dest"; exit 1; }
echo 1 >"$T/events/hb/enable"
echo 4096 >"$T/buffer_size_kb"
# TAI, when it equals the guest's UTC clock, puts trace times on the agent's log clock.
TAI=0
if echo tai >"$T/trace_clock" 2>/dev/null; then
	# (trace_marker refuses writes while tracing is off)
	echo 1 >"$T/tracing_on"
	echo "hb clock" >"$T/trace_marker"
	echo 0 >"$T/tracing_on"
	now=$(date +%s)
	mt=$(awk '/hb clock/ && match($0, / [0-9]+\.[0-9]+: /) {print int(substr($0, RSTART + 1, RLENGTH - 3))}' "$T/trace")
	[ -n "$mt" ] && [ $((now - mt)) -le 1 ] && [ $((mt - now)) -le 1 ] && TAI=1
	echo >"$T/trace"
fi
say "trace clock $(grep -o '\[[a-z0-9_]*\]' "$T/trace_clock"), on the log clock: $TAI"
echo 1 >"$T/tracing_on"

# --- 1. detection ----------------------------------------------------------
mkdir -p /tmp/www
echo farm >/tmp/www/index.html

# httpd_up I: the faulted server I's two web servers.
httpd_up() {
	"$IP" netns exec farm busybox httpd -f -p "10.30.0.$1:80" -h /tmp/www &
	echo $! >"/tmp/pid-v$1"
	"$IP" netns exec farm busybox httpd -f -p "10.20.0.$1:80" -h /tmp/www &
	echo $! >"/tmp/pid-r$1"
}
listening() { [ "$(ns_exec farm busybox netstat -ltn | grep -c ':80 ')" -ge "$1" ]; }

# tcp_dests NS: "SERVICE DESTINATION WEIGHT" for each destination of NS's
# TCP services; the destinations of tunlb's probe services (FWM) are not
# client traffic and are left out.
tcp_dests() {
	ns_exec "$1" ipvsadm -Ln | awk '$1 == "TCP" {s = $2; next} $1 ~ /^[A-Z]+$/ {s = ""; next} $1 == "->" && s != "" {print s, $2, $4}'
}

# weights PREFIX W: how many faulted servers (10.20.x) of the services whose
# VIP starts with PREFIX have weight W in the director's IPVS table.
weights() {
	tcp_dests director | awk -v p="$1" -v w="$2" \
		'index($1, p) == 1 && $2 ~ /^10\.20\./ && $3 == w {n++} END {print n + 0}'
}
weights_are() { [ "$(weights "$1" "$2")" -eq "$FAULTS" ]; }

inject() { # KIND I
	case "$1" in
	refused) kill "$(cat "/tmp/pid-v$2")" "$(cat "/tmp/pid-r$2")" ;;
	timeout) ns_exec farm nft add rule ip hbench pre ip daddr "10.20.0.$2" drop ;;
	esac
	echo "hb fault $2 10.20.0.$2" >"$T/trace_marker"
}

restore() { # KIND
	case "$1" in
	refused)
		_i=1
		while [ "$_i" -le "$FAULTS" ]; do httpd_up "$_i"; _i=$((_i + 1)); done
		wait_until 30 "httpd listening" listening "$((FAULTS * 2))"
		;;
	timeout) ns_exec farm nft flush chain ip hbench pre ;;
	esac
}

# faults CONFIG PREFIX KIND SEED [LOG]: injects a fault on every faulted server,
# waits for all to reach weight 0, prints one RESULT line per fault, then
# restores them and waits for their weight to come back.
faults() {
	_c="$1" _p="$2" _k="$3"
	say "$_c: $FAULTS faults of kind $_k"
	echo >"$T/trace"
	_i=1
	for _d in $(awk -v s="$4" -v n="$FAULTS" 'BEGIN {srand(s); for (i = 0; i < n; i++) printf "%.3f\n", rand() * 0.2}'); do
		sleep "$_d"
		inject "$_k" "$_i"
		_i=$((_i + 1))
	done
	wait_until 300 "$_c $_k: all faulted servers at weight 0" weights_are "$_p" 0
	lab_assert_eq "$_c $_k: every faulted server at weight 0" "$FAULTS" "$(weights "$_p" 0)"
	lab_assert_eq "$_c $_k: the stable server keeps weight 1" "$FAULTS" "$(tcp_dests director | awk -v p="$_p" -v d="$STABLE:80" 'index($1, p) == 1 && $2 == d && $3 == 1' | wc -l)"
	cp "$T/trace" "/tmp/trace-$_c-$_k"
	# With the trace clock on TAI (= UTC here: no leap-second offset is set
	# in the guest), tunlb's log times each verdict on the same clock, which
	# splits detection into probing (fault -> verdict) and programming
	# (verdict -> weight 0).
	awk -v c="$_c" -v k="$_k" -v tai="$TAI" '
		FILENAME ~ /serve-/ {
			if (!tai || $0 !~ /real server unhealthy/) next
			split($1, dt, "T"); split(dt[2], hms, ":")
			for (f = 1; f <= NF; f++) if ($f ~ /^server=/) { a = substr($f, 8); vt[a, ++nv[a]] = hms[1] * 3600 + hms[2] * 60 + hms[3] }
			next
		}
		match($0, / [0-9]+\.[0-9]+: /) { ts = substr($0, RSTART + 1, RLENGTH - 3) + 0 }
		/tracing_mark_write: hb fault / { t0[$NF] = ts; order[++n] = $NF; next }
		/ edit: / {
			a = ""; w = ""
			for (f = 1; f <= NF; f++) {
				split($f, kv, "=")
				if (kv[1] ~ /^a[0-3]$/) a = a (a == "" ? "" : ".") kv[2]
				if (kv[1] == "weight") w = kv[2]
			}
			if (w == 0 && (a in t0) && !(a in t1) && ts >= t0[a]) t1[a] = ts
		}
		END {
			for (i = 1; i <= n; i++) {
				a = order[i]
				# The first verdict after the fault (the log holds every round).
				v = ""
				tod = t0[a] - int(t0[a] / 86400) * 86400
				for (j = 1; j <= nv[a]; j++) if (vt[a, j] >= tod) { v = sprintf(" verdict_ms=%d", (vt[a, j] - tod) * 1000 + 0.5); break }
				printf "RESULT detect config=%s kind=%s rip=%s ms=%s%s\n", c, k, a, (a in t1) ? sprintf("%d", (t1[a] - t0[a]) * 1000 + 0.5) : "none", v
			}
		}' ${5:-} "/tmp/trace-$_c-$_k" | tee "/tmp/result-$_c-$_k"
	# A fault with no weight-0 edit after its marker: show what the trace holds for it.
	for _a in $(awk '/ ms=none/ {sub("rip=", "", $5); print $5}' "/tmp/result-$_c-$_k" | head -n 2); do
		say "$_c $_k: trace lines of $_a:"
		grep -F -e "$_a" -e "$(echo "$_a" | awk -F. '{printf "a0=%s a1=%s a2=%s a3=%s", $1, $2, $3, $4}')" "/tmp/trace-$_c-$_k" | head -n 8
	done
	restore "$_k"
	wait_until 300 "$_c $_k: all faulted servers back at weight 1" weights_are "$_p" 1
}

detect_yaml() { # FILE
	_i=1
	while [ "$_i" -le "$FAULTS" ]; do
		cat <<YAML
---
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata: {name: d$_i}
spec:
  vip: 10.30.0.$_i
  ports: [{port: 80}]
  scheduler: rr
  healthCheck: {type: tcp, intervalSeconds: 2, timeoutSeconds: 1, rise: 2, fall: 2}
  backends:
    static: [{address: $STABLE}, {address: 10.20.0.$_i}]
YAML
		_i=$((_i + 1))
	done >"$1"
}

# keepalived_conf FILE VIP-PREFIX TIMING-LINES
keepalived_conf() {
	{
		printf 'global_defs {\n  router_id hbench\n}\n'
		_i=1
		while [ "$_i" -le "$FAULTS" ]; do
			printf 'virtual_server %s%d 80 {\n  lvs_sched rr\n  lvs_method TUN\n  protocol TCP\n  inhibit_on_failure\n%s' "$2" "$_i" "$3"
			printf '  real_server %s 80 {\n    weight 1\n    TCP_CHECK {\n    }\n  }\n' "$STABLE"
			printf '  real_server 10.20.0.%d 80 {\n    weight 1\n    TCP_CHECK {\n    }\n  }\n}\n' "$_i"
			_i=$((_i + 1))
		done
	} >"$1"
}

# FAULTS 0: the probe load only.
if [ "$FAULTS" -gt 0 ]; then
	detect_yaml /tmp/detect.yaml
	for n in rs1 farm; do
		ns_exec "$n" "$AGENT" apply --node "$n" --state-dir "/tmp/state-$n" -f /tmp/detect.yaml >"/tmp/apply-$n.out" 2>&1 ||
			{ say "apply on $n failed:"; cat "/tmp/apply-$n.out"; exit 1; }
	done
	i=1
	while [ "$i" -le "$FAULTS" ]; do httpd_up "$i"; i=$((i + 1)); done
	wait_until 30 "farm's httpds listening" listening "$((FAULTS * 2))" || exit 1

	# tunlb
	say "tunlb: serve in director"
	"$IP" netns exec director env TUNLB_LOG=info "$AGENT" serve --node director --state-dir /tmp/state-director --director \
		-f /tmp/detect.yaml >/tmp/serve-detect.out 2>/tmp/serve-detect.log &
	SERVE=$!
	healthy_all() { [ "$(grep -c 'real server healthy' /tmp/serve-detect.log)" -ge "$((FAULTS * 2))" ]; }
	wait_until 120 "tunlb: every real server healthy" healthy_all || { tail -20 /tmp/serve-detect.log; exit 1; }
	sleep 4
	faults tunlb 10.30. refused 11 /tmp/serve-detect.log
	faults tunlb 10.30. timeout 12 /tmp/serve-detect.log
	kill -TERM "$SERVE"
	wait "$SERVE"
	ns_exec director "$AGENT" delete --node director --state-dir /tmp/state-director --director -f /tmp/detect.yaml >/dev/null 2>&1
	lab_assert_eq "tunlb: services removed" 0 "$(ns_exec director ipvsadm -Ln | grep -c '^[TF]')"

	# keepalived_run CONFIG PREFIX SETTLE TIMING-LINES
	keepalived_run() {
		keepalived_conf "/tmp/$1.conf" "$2" "$4"
		say "$1: keepalived -C in director"
		"$IP" netns exec director "$KA" -C -n -G -f "/tmp/$1.conf" -p "/tmp/$1.pid" -c "/tmp/$1-checkers.pid" >"/tmp/$1.log" 2>&1 &
		KAPID=$!
		wait_until 60 "$1: services programmed" weights_are "$2" 1 || { tail -30 "/tmp/$1.log"; return 1; }
		# Let every checker run once (the first check waits a random warmup up
		# to delay_loop).
		sleep "$3"
		faults "$1" "$2" refused 21
		faults "$1" "$2" timeout 22
		kill -TERM "$KAPID"
		wait "$KAPID"
		ns_exec director ipvsadm -C
	}
	keepalived_run ka-matched 10.31.0. 4 '  delay_loop 2
  connect_timeout 1
  retry 1
  delay_before_retry 2
'
	keepalived_run ka-default 10.32.0. 62 ''
	"$KA" --version 2>&1 | head -1
fi

# --- 2. probe load ---------------------------------------------------------
echo 0 >"$T/tracing_on"
i=1
while [ "$i" -le "$FAULTS" ]; do kill "$(cat "/tmp/pid-v$i")" "$(cat "/tmp/pid-r$i")" 2>/dev/null; i=$((i + 1)); done
for n in rs1 farm; do
	ns_exec "$n" "$AGENT" delete --node "$n" --state-dir "/tmp/state-$n" -f /tmp/detect.yaml >/dev/null 2>&1
done
N=$((VIPS * PER))
# load_yaml FILE HEALTHCHECK: VIPS services 10.40.x.y:80, 10 real servers each.
load_yaml() {
	awk -v vips="$VIPS" -v per="$PER" -v hc="$2" 'BEGIN {
		for (k = 0; k < vips; k++) {
			printf "---\napiVersion: tunlb.io/v1alpha1\nkind: VirtualService\nmetadata: {name: s%d}\nspec:\n", k + 1
			printf "  vip: 10.40.%d.%d\n  ports: [{port: 80}]\n  scheduler: rr\n  healthCheck: %s\n  backends:\n    static:\n", int(k / 250), k % 250 + 1, hc
			for (j = 0; j < per; j++) {
				n = k * per + j
				printf "    - {address: 10.21.%d.%d}\n", int(n / 250), n % 250 + 1
			}
		}
	}' >"$1"
}
load_yaml /tmp/load.yaml '{type: tcp, intervalSeconds: 2, timeoutSeconds: 1, rise: 2, fall: 2}'
load_yaml /tmp/load-none.yaml '{type: none}'
awk -v n="$N" 'BEGIN {for (i = 0; i < n; i++) printf "addr add 10.21.%d.%d/32 dev eth0\n", int(i / 250), i % 250 + 1}' >/tmp/farm-load.ip
say "load: $N addresses on farm, its VIPs by tunlb-agent apply"
ns_exec farm "$IP" -batch /tmp/farm-load.ip
ns_exec farm "$AGENT" apply --node farm --state-dir /tmp/state-farm -f /tmp/load.yaml >/tmp/apply-load.out 2>&1 ||
	{ say "apply on farm failed:"; tail -20 /tmp/apply-load.out; exit 1; }
"$IP" netns exec farm "$ACCEPTOR" :80 >/tmp/acceptor.log 2>&1 &
ACC=$!
say "load: $VIPS VIPs x $PER real servers = $N checked destinations"

# The peer: keepalived's TCP_CHECK with the same timing on the same real
# servers (straight to their addresses: keepalived has no tunnel path), in
# namespace kaload beside the two agents.
awk -v vips="$VIPS" -v per="$PER" 'BEGIN {
	printf "global_defs {\n  router_id hload\n}\n"
	for (k = 0; k < vips; k++) {
		printf "virtual_server 10.41.%d.%d 80 {\n  delay_loop 2\n  lvs_sched rr\n  lvs_method TUN\n  protocol TCP\n  inhibit_on_failure\n", int(k / 250), k % 250 + 1
		for (j = 0; j < per; j++) {
			n = k * per + j
			printf "  real_server 10.21.%d.%d 80 {\n    weight 1\n    TCP_CHECK {\n      connect_timeout 1\n      retry 1\n      delay_before_retry 2\n    }\n  }\n", int(n / 250), n % 250 + 1
		}
		printf "}\n"
	}
}' >/tmp/kaload.conf
"$IP" netns exec kaload "$KA" -C -n -G -f /tmp/kaload.conf -p /tmp/kaload.pid -c /tmp/kaload-checkers.pid >/tmp/kaload.log 2>&1 &
KALOADPID=$!

"$IP" netns exec dirnone env TUNLB_LOG=info "$AGENT" serve --node dirnone --state-dir /tmp/state-dirnone --director \
	-f /tmp/load-none.yaml >/tmp/serve-none.out 2>/tmp/serve-none.log &
NONE=$!
"$IP" netns exec director env TUNLB_LOG=info "$AGENT" serve --node director --state-dir /tmp/state-director --director \
	-f /tmp/load.yaml >/tmp/serve-load.out 2>/tmp/serve-load.log &
HEALTH=$!
load_healthy() { [ "$(grep -c 'real server healthy' /tmp/serve-load.log)" -ge "$N" ]; }
t0=$(uptime_s)
wait_until 900 "load: every real server healthy" load_healthy || { tail -20 /tmp/serve-load.log; exit 1; }
say "load: all $N healthy $(awk -v a="$t0" -v b="$(uptime_s)" 'BEGIN {printf "%.1f", b - a}') s after start"
programmed() { [ "$(tcp_dests "$1" | awk '$2 ~ /^10\.21\./' | wc -l)" -eq "$N" ]; }
wait_until 120 "load: dirnone programmed" programmed dirnone || exit 1
wait_until 120 "load: keepalived programmed" programmed kaload || { tail -20 /tmp/kaload.log; exit 1; }
sleep 20
# The checker child does keepalived's checks; its parent only watches it.
KACHECK=$(cat /tmp/kaload-checkers.pid)
# accepted ADDR: connections the acceptor took from ADDR so far.
accepted() {
	_before=$(grep -c '^accepted end' /tmp/acceptor.log)
	kill -USR1 "$ACC"
	_i=0
	while [ "$(grep -c '^accepted end' /tmp/acceptor.log)" -le "$_before" ] && [ "$_i" -lt 100 ]; do sleep 0.1; _i=$((_i + 1)); done
	awk -v a="$1" '$1 == "accepted" && $2 == a {n = $3} END {print n + 0}' /tmp/acceptor.log
}

# cpu PID...: "TOTAL USER" ticks of the PIDs together, both from one read of
# each stat file (two reads apart let user time outrun the total).
cpu() { for _p in "$@"; do cat "/proc/$_p/stat"; done | awk '{t += $14 + $15; u += $14} END {print t, u}'; }
fwm_conns() { ns_exec director ipvsadm -Ln --stats --exact | awk '/^FWM/ {s += $3} END {print s + 0}'; }
idle() { awk '/^cpu / {print $5; exit}' /proc/stat; }
mem() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
ta0=$(accepted 192.168.56.181) ka0=$(accepted "$KALOAD")
set -- $(cpu "$HEALTH") $(cpu "$NONE") $(cpu "$KALOADPID" "$KACHECK")
h0=$1 hu0=$2 n0=$3 nu0=$4 k0=$5 ku0=$6
c0=$(fwm_conns) i0=$(idle) w0=$(uptime_s) u0=$(grep -c 'real server unhealthy' /tmp/serve-load.log)
sleep "$WINDOW"
set -- $(cpu "$HEALTH") $(cpu "$NONE") $(cpu "$KALOADPID" "$KACHECK")
h1=$1 hu1=$2 n1=$3 nu1=$4 k1=$5 ku1=$6
c1=$(fwm_conns) i1=$(idle) w1=$(uptime_s) u1=$(grep -c 'real server unhealthy' /tmp/serve-load.log)
ta1=$(accepted 192.168.56.181) ka1=$(accepted "$KALOAD")
weight0=$(tcp_dests director | awk '$2 ~ /^10\.21\./ && $3 == 0' | wc -l)
unhealthy=$(grep -c 'real server unhealthy' /tmp/serve-load.log)
tw=$(ns_exec director cat /proc/net/sockstat | awk '/^TCP:/ {for (i = 2; i < NF; i++) if ($i == "tw") print $(i + 1)}')
marks=$(ns_exec director ipvsadm -Ln | grep -c '^FWM')
# probes: connections the acceptor took from each checker's address (for
# tunlb, also the IPVS connections of its mark services, as a cross-check).
echo "load: tunlb probes through its mark services $((c1 - c0)), accepted from the director $((ta1 - ta0))"
for a in health none keepalived; do
	case "$a" in
	health) p=$HEALTH c=$((h1 - h0)) u=$((hu1 - hu0)) probes=$((ta1 - ta0)) ;;
	none) p=$NONE c=$((n1 - n0)) u=$((nu1 - nu0)) probes=0 ;;
	keepalived) p=$KACHECK c=$((k1 - k0)) u=$((ku1 - ku0)) probes=$((ka1 - ka0)) ;;
	esac
	# Memory: the checking process (keepalived's checker child holds its checks).
	awk -v a="$a" -v c="$c" -v u="$u" -v hz="$HZ" -v w0="$w0" -v w1="$w1" -v rss="$(mem "$p" VmRSS)" -v hwm="$(mem "$p" VmHWM)" \
		-v probes="$probes" -v idle=$((i1 - i0)) -v n="$N" 'BEGIN {
		w = w1 - w0
		printf "RESULT load agent=%s window_s=%.2f cpu_s=%.2f user_s=%.2f sys_s=%.2f cpu_pct=%.2f rss_kb=%d hwm_kb=%d probes=%d probes_per_s=%.1f asked_per_s=%.1f cpu_ms_per_probe=%.3f guest_idle_pct=%.1f\n",
			a, w, c / hz, u / hz, (c - u) / hz, c / hz / w * 100, rss, hwm, probes, probes / w, n / 2, (probes > 0 ? c / hz * 1000 / probes : 0), idle / hz / w * 100
	}'
done
echo "load: mark services $marks, destinations at weight 0 $weight0, unhealthy verdicts $unhealthy ($((u1 - u0)) in the window), director TIME_WAIT sockets $tw"
lab_assert_eq "load: one mark service per real server" "$N" "$marks"
lab_assert_eq "load: no real server at weight 0" 0 "$weight0"
lab_assert_eq "load: no unhealthy verdict" 0 "$unhealthy"
kill -TERM "$HEALTH" "$NONE" "$KALOADPID"
wait "$HEALTH"
wait "$NONE"
wait "$KALOADPID"
kill "$ACC"
topo_cleanup
lab_summary

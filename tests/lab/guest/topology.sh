# shellcheck shell=sh
# Guest-side helpers, sourced by scenario scripts (busybox sh inside the lab VM).
#   topo_setup            build the seed topology: netns client/director/rs1/rs2
#                         on bridge br0 (root netns), 192.168.56.0/24, eth0 + lo up
#   topo_addr NS          print NS's address
#   ns_exec NS CMD...     run CMD in NS (ip netns exec)
#   start_http NS NAME PORT   busybox httpd in NS on PORT answering NAME
#   request NS URL        one HTTP GET from NS: prints the body or ERR:<curl rc>
#   requests N URL        N GETs from the client namespace, answers space-separated
#   count WORD LIST       occurrences of WORD in a space-separated LIST
#   lab_assert_eq NAME EXPECTED ACTUAL / lab_assert_contains NAME NEEDLE ACTUAL
#   lab_assert_same NAME BEFORE AFTER   multi-line snapshots; prints only the diff
#   lab_summary           prints "N passed, M failed"; non-zero if M > 0
#   topo_cleanup          stops the servers started by start_http
# Assertions count in shell variables: call them in the main shell, not in $(...).

# Busybox sh runs its own `ip` applet for a bare `ip`: always use iproute2's.
IP=/usr/sbin/ip
LAB_PASS=0
LAB_FAIL=0
LAB_PIDS=""
LAB_BRIDGE=br0
# shellcheck disable=SC2034 # used by the scenarios
VIP=192.168.56.185

topo_addr() {
	case "$1" in
	client) echo 192.168.56.10 ;;
	director) echo 192.168.56.181 ;;
	director2) echo 192.168.56.182 ;;
	rs1) echo 192.168.56.183 ;;
	rs2) echo 192.168.56.184 ;;
	*) echo "topo_addr: unknown namespace $1" >&2; return 1 ;;
	esac
}

ns_exec() {
	_ns="$1"
	shift
	"$IP" netns exec "$_ns" "$@"
}

# topo_add_ns NS ADDR: namespace NS with eth0 (ADDR/24) bridged on br0.
topo_add_ns() {
	"$IP" netns add "$1"
	"$IP" link add "v-$1" type veth peer name eth0 netns "$1"
	"$IP" link set "v-$1" master "$LAB_BRIDGE" up
	ns_exec "$1" "$IP" addr add "$2/24" dev eth0
	ns_exec "$1" "$IP" link set eth0 up
	ns_exec "$1" "$IP" link set lo up
}

topo_setup() {
	"$IP" link add "$LAB_BRIDGE" type bridge forward_delay 0 stp_state 0
	"$IP" link set "$LAB_BRIDGE" up
	for _ns in client director rs1 rs2; do
		topo_add_ns "$_ns" "$(topo_addr "$_ns")" || return 1
	done
}

# start_http NS NAME PORT: serve body NAME on PORT (all addresses) in NS.
start_http() {
	_dir="/tmp/http-$1-$3"
	mkdir -p "$_dir"
	echo "$2" >"$_dir/index.html"
	ns_exec "$1" busybox httpd -f -p "$3" -h "$_dir" &
	LAB_PIDS="$LAB_PIDS $!"
	_i=0
	while [ "$_i" -lt 50 ]; do
		ns_exec "$1" busybox netstat -ltn 2>/dev/null | grep -q ":$3 " && return 0
		_i=$((_i + 1))
		sleep 0.1
	done
	echo "start_http: $1:$3 not listening after 5 s" >&2
	return 1
}

# request NS URL: prints the body, or ERR:<curl exit code> (7 = refused, 28 = timeout).
request() {
	_body="$(ns_exec "$1" curl -s --connect-timeout 3 --max-time 5 \
		-H 'Connection: close' "$2" 2>/dev/null)"
	_rc=$?
	if [ "$_rc" -eq 0 ]; then echo "$_body"; else echo "ERR:$_rc"; fi
}

# requests N URL: N GETs from the client, answers space-separated.
requests() {
	_out=""
	_n=0
	while [ "$_n" -lt "$1" ]; do
		_out="$_out $(request client "$2")"
		_n=$((_n + 1))
	done
	echo "${_out# }"
}

# count WORD LIST: occurrences of WORD in the space-separated LIST.
count() {
	_c=0
	for _w in $2; do [ "$_w" = "$1" ] && _c=$((_c + 1)); done
	echo "$_c"
}

topo_cleanup() {
	for _p in $LAB_PIDS; do kill "$_p" 2>/dev/null; done
	LAB_PIDS=""
}

lab_assert_eq() {
	if [ "$2" = "$3" ]; then
		LAB_PASS=$((LAB_PASS + 1))
		echo "ok - $1"
	else
		LAB_FAIL=$((LAB_FAIL + 1))
		echo "not ok - $1 (expected '$2', got '$3')"
	fi
}

# lab_assert_same NAME BEFORE AFTER: BEFORE equals AFTER; on a mismatch only
# the changed lines are printed (snapshots are long).
lab_assert_same() {
	if [ "$2" = "$3" ]; then
		LAB_PASS=$((LAB_PASS + 1))
		echo "ok - $1"
	else
		LAB_FAIL=$((LAB_FAIL + 1))
		echo "not ok - $1 (changed lines:)"
		printf '%s\n' "$2" >/tmp/lab-before
		printf '%s\n' "$3" >/tmp/lab-after
		diff /tmp/lab-before /tmp/lab-after | sed 's/^/    /'
	fi
}

# lab_assert_contains NAME NEEDLE ACTUAL: ACTUAL contains the substring NEEDLE.
lab_assert_contains() {
	case "$3" in
	*"$2"*)
		LAB_PASS=$((LAB_PASS + 1))
		echo "ok - $1"
		;;
	*)
		LAB_FAIL=$((LAB_FAIL + 1))
		echo "not ok - $1 (expected to contain '$2', got '$3')"
		;;
	esac
}

lab_summary() {
	echo "$LAB_PASS passed, $LAB_FAIL failed"
	[ "$LAB_FAIL" -eq 0 ]
}

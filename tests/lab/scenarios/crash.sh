#!/bin/sh
# Crash-safe ownership, judged by what the kernel holds (ipvsadm -Ln, ip addr):
# (a) `apply` killed with SIGKILL while it writes addresses, then while it
#     writes IPVS services, and `delete` killed mid-way: the next run owns
#     everything, a weight edit reaches every service, and delete leaves nothing;
# (b) an empty, truncated or garbled state.json: apply succeeds, warns, moves
#     the file aside, the kernel matches the plan and foreign state survives;
# (c) two agents on one state dir: the second is refused and names the first;
# (d) records of a service and an address someone removed by hand: apply and
#     delete succeed, drop the stale records and touch nothing foreign.
. /scenarios/common.sh
OTHER=10.9.9.9
STATE=/tmp/state-director
# CRASH_N: fewer objects for a quicker run (a debug build, say).
N=${CRASH_N:-1000}
DESTS=10

topo_setup || { echo "topology setup failed"; exit 1; }

# gen FILE COUNT PREFIX WEIGHT: COUNT VirtualServices on VIPs PREFIX.x.y:80
# (named after PREFIX, so files of two prefixes are distinct objects), each
# with DESTS tunnel real servers on the bridge subnet.
gen() {
	awk -v n="$2" -v p="$3" -v w="$4" -v d="$DESTS" 'BEGIN {
		name = p
		gsub(/\./, "-", name)
		for (i = 0; i < n; i++) {
			printf "---\napiVersion: tunlb.io/v1alpha1\nkind: VirtualService\nmetadata:\n  name: vs-%s-%d\n", name, i
			printf "spec:\n  vip: %s.%d.%d\n  ports:\n  - port: 80\n  scheduler: wrr\n  backends:\n    static:\n", p, int(i / 200), i % 200 + 1
			for (j = 0; j < d; j++) printf "    - {address: 192.168.56.%d, weight: %d}\n", 100 + j, w
		}
	}' >"$1"
}

# Kernel views, each an independent observer of what the agent did.
services() { ns_exec director ipvsadm -Ln | grep -c "^TCP  $1\." ; }
dest_rows() { ipvs_rows director | grep -c "^TCP $1\..* Tunnel $2\$"; }
vips() { ns_exec director "$IP" -o addr show dev tunl0 2>/dev/null | grep -c " inet $1\."; }

# until_seen CMD MIN: polls until CMD prints at least MIN (30 s at most).
until_seen() {
	_end=$(($(date +%s) + 30))
	while [ "$(date +%s)" -lt "$_end" ]; do
		[ "$($1)" -ge "$2" ] 2>/dev/null && return 0
		sleep 0.01
	done
	return 1
}

# kill_when WHAT FILE CMD MIN: starts `tunlb-agent WHAT -f FILE`, waits until
# CMD (a kernel view) prints at least MIN, SIGKILLs it; prints the wait status.
kill_when() {
	"$IP" netns exec director "$AGENT" "$1" --node director --state-dir "$STATE" --director -f "$2" >/tmp/killed.out 2>&1 &
	_pid=$!
	until_seen "$3" "$4" || echo "no progress seen" >&2
	kill -9 "$_pid" 2>/dev/null
	wait "$_pid"
	echo "$?"
}

mkdir -p /tmp/crash
gen /tmp/crash/big.yaml "$N" 10.77 1
gen /tmp/crash/big-w3.yaml "$N" 10.77 3
gen /tmp/crash/small.yaml 20 10.78 1
gen /tmp/crash/small-w2.yaml 20 10.78 2
echo "generated $(grep -c '^kind:' /tmp/crash/big.yaml) VirtualServices"

# Someone else's state, which no run below may touch.
ns_exec director ipvsadm -A -t "$OTHER:80" -s rr
ns_exec director ipvsadm -a -t "$OTHER:80" -r "$RS1:80" -i -w 3
ns_exec director "$IP" link add name dummy0 type dummy
ns_exec director "$IP" addr add 10.8.8.8/32 dev dummy0
theirs="$(ipvs_rows director)"

# --- (a) SIGKILL mid-apply, mid-apply again, then mid-delete --------------------
# A state file exists first, as on any node that ran before: what the killed
# runs created must be owned through their own record, not through a rebuild.
out="$(agent director apply -f /tmp/crash/small.yaml 2>&1)"
lab_assert_eq "an earlier apply exits 0" 0 "$?"
vips_big() { vips 10.77; }
services_big() { services 10.77; }
# A director creates IPVS services first and adds each VIP once a service
# serves it: the first kill lands among the services, the second among the
# addresses.
rc="$(kill_when apply /tmp/crash/big.yaml services_big 1)"
seen="$(services 10.77)"
echo "killed while creating services: $seen of $N services present, $(vips 10.77) VIPs"
lab_assert_eq "first apply died of SIGKILL" 137 "$rc"
lab_assert_eq "it was killed before it finished (fewer than $N services or not all real servers, or no VIPs)" yes \
	"$({ [ "$seen" -lt "$N" ] || [ "$(dest_rows 10.77 1)" -lt $((N * DESTS)) ] || [ "$(vips 10.77)" -eq 0 ]; } && echo yes || echo no)"

rc="$(kill_when apply /tmp/crash/big.yaml vips_big $(($(vips 10.77) + 1)))"
seen="$(vips 10.77)"
echo "killed while adding addresses: $seen of $N VIPs present"
lab_assert_eq "second apply died of SIGKILL" 137 "$rc"
lab_assert_eq "it was killed before it finished (fewer than $N VIPs)" yes \
	"$([ "$seen" -lt "$N" ] && echo yes || echo no)"

out="$(agent director apply -f /tmp/crash/big.yaml 2>&1)"
rc=$?
echo "$out" | tail -3
lab_assert_eq "re-apply after two kills exits 0" 0 "$rc"
lab_assert_eq "nothing is called foreign" 0 "$(echo "$out" | grep -c 'not created by tunlb')"
lab_assert_eq "every service exists" "$N" "$(services 10.77)"
lab_assert_eq "the earlier objects are still programmed" "20 20" "$(services 10.78) $(vips 10.78)"
lab_assert_eq "every real server at weight 1" $((N * DESTS)) "$(dest_rows 10.77 1)"
lab_assert_eq "every VIP on tunl0, once" "$N" "$(vips 10.77)"

out="$(agent director apply -f /tmp/crash/big-w3.yaml 2>&1)"
rc=$?
echo "$out" | tail -3
lab_assert_eq "weight edit exits 0" 0 "$rc"
lab_assert_eq "the edit reaches every real server of every service" $((N * DESTS)) "$(dest_rows 10.77 3)"

vips_gone() { echo $((N - $(vips 10.77))); }
# A delete can end between two looks at the kernel (the pool runs two guests
# on two cores): a kill after the end says nothing, so apply and try again.
for _try in 1 2 3; do
	rc="$(kill_when delete /tmp/crash/big-w3.yaml vips_gone 1)"
	left="$(vips 10.77) $(services 10.77)"
	[ "$left" != "0 0" ] && break
	echo "the delete ended before the kill (try $_try); applying again"
	agent director apply -f /tmp/crash/big-w3.yaml >/dev/null 2>&1
done
echo "killed while deleting: VIPs and services left: $left"
lab_assert_eq "delete died of SIGKILL" 137 "$rc"
lab_assert_eq "it was killed before it finished" yes "$([ "$left" != "0 0" ] && echo yes || echo no)"
out="$(agent director delete -f /tmp/crash/big-w3.yaml 2>&1)"
rc=$?
echo "$out" | tail -3
lab_assert_eq "delete again exits 0" 0 "$rc"
lab_assert_eq "no service left behind" 0 "$(services 10.77)"
lab_assert_eq "no VIP left behind" 0 "$(vips 10.77)"
out="$(agent director delete -f /tmp/crash/small.yaml 2>&1)"
lab_assert_eq "the earlier objects delete too" "0 0 0" "$? $(services 10.78) $(vips 10.78)"
lab_assert_eq "foreign IPVS service untouched" "$theirs" "$(ipvs_rows director)"
lab_assert_contains "foreign address untouched" "10.8.8.8/32" "$(ns_exec director "$IP" -o addr show dev dummy0)"

# --- (b) a damaged state file ----------------------------------------------------
for case in empty truncated garbage; do
	rm -f "$STATE"/state.json.corrupt-*
	out="$(agent director apply -f /tmp/crash/small.yaml 2>&1)"
	lab_assert_eq "$case: setup apply exits 0" 0 "$?"
	case "$case" in
	empty) : >"$STATE/state.json" ;;
	truncated) head -c 150 "$STATE/state.json" >/tmp/crash/t && cp /tmp/crash/t "$STATE/state.json" ;;
	garbage) printf 'not json at all {{{\001\002' >"$STATE/state.json" ;;
	esac
	cp "$STATE/state.json" /tmp/crash/bad
	out="$(agent director apply -f /tmp/crash/small.yaml 2>&1)"
	rc=$?
	echo "$out"
	lab_assert_eq "$case: apply exits 0" 0 "$rc"
	lab_assert_contains "$case: warns, naming the file" "state file is unreadable" "$out"
	lab_assert_contains "$case: the warning names the path" "path=$STATE/state.json" "$out"
	lab_assert_contains "$case: the warning gives the parse error" "error=" "$out"
	lab_assert_contains "$case: the adopted services are logged" "exactly match this node's plan services=20" "$out"
	lab_assert_contains "$case: the adopted addresses are logged" "carrying tunlb's label addresses=20" "$out"
	moved="$(ls "$STATE"/state.json.corrupt-* 2>/dev/null)"
	lab_assert_eq "$case: one file moved aside" 1 "$(echo "$moved" | grep -c corrupt-)"
	lab_assert_eq "$case: it holds the bad bytes" same "$(cmp -s "$moved" /tmp/crash/bad && echo same)"
	lab_assert_eq "$case: the kernel matches the plan (services)" 20 "$(services 10.78)"
	lab_assert_eq "$case: the kernel matches the plan (real servers)" $((20 * DESTS)) "$(dest_rows 10.78 1)"
	lab_assert_eq "$case: the kernel matches the plan (VIPs)" 20 "$(vips 10.78)"
	lab_assert_eq "$case: foreign IPVS service untouched" "$theirs" "$(ipvs_rows director | grep -v '^TCP 10\.78\.')"
	out="$(agent director apply -f /tmp/crash/small-w2.yaml 2>&1)"
	lab_assert_eq "$case: the adopted services take a weight edit" "0 $((20 * DESTS))" "$? $(dest_rows 10.78 2)"
	out="$(agent director delete -f /tmp/crash/small-w2.yaml 2>&1)"
	lab_assert_eq "$case: delete removes every service and VIP" "0 0 0" "$? $(services 10.78) $(vips 10.78)"
done
lab_assert_eq "foreign IPVS service still untouched" "$theirs" "$(ipvs_rows director)"
lab_assert_contains "foreign address still untouched" "10.8.8.8/32" "$(ns_exec director "$IP" -o addr show dev dummy0)"

# --- (c) two agents on one state dir ---------------------------------------------
# The first is long-running (serve), so it holds the state directory for as
# long as the second runs, however fast its programming is.
"$IP" netns exec director "$AGENT" serve --node director --state-dir "$STATE" --director -f /tmp/crash/big.yaml >/tmp/first.out 2>&1 &
first=$!
# It holds the lock once the lock file names it (VIPs left by an earlier part
# would say nothing about this agent).
held_by_first() { grep -c "^pid $first:" "$STATE/agent.lock" 2>/dev/null || echo 0; }
until_seen held_by_first 1 || echo "first agent did not take the lock" >&2
out="$(agent director apply -f /tmp/crash/small.yaml 2>&1)"
rc=$?
echo "$out"
lab_assert_eq "second agent exits non-zero" 1 "$([ "$rc" -ne 0 ] && echo 1 || echo 0)"
lab_assert_contains "it says the state dir is in use" "state directory $STATE is in use by another tunlb-agent" "$out"
lab_assert_contains "it names the holder's pid" "pid $first:" "$out"
lab_assert_contains "and its command" "serve --node director" "$out"
lab_assert_eq "show still runs next to it" 0 "$(ns_exec director "$AGENT" show >/dev/null 2>&1; echo $?)"
lab_assert_eq "the second wrote nothing" 0 "$(services 10.78)"
until_seen "services 10.77" "$N" || echo "first agent did not program everything" >&2
kill "$first"
wait "$first"
lab_assert_eq "the first agent stops on SIGTERM (exit 0)" 0 "$?"
lab_assert_eq "the first programmed everything" "$N $N" "$(services 10.77) $(vips 10.77)"
out="$(agent director delete -f /tmp/crash/big.yaml 2>&1)"
lab_assert_eq "final delete leaves nothing of ours" "0 0 0" "$? $(services 10.77) $(vips 10.77)"
lab_assert_eq "and foreign state as it was" "$theirs" "$(ipvs_rows director)"

# --- (d) records of kernel objects removed by hand -------------------------------
# The state file records an IPVS service and a VIP address that someone then
# deleted by hand; others reuse the VIP: their own service on another port,
# the address on their own interface. The object moves to a new VIP, so the
# records are stale: apply succeeds, drops them and touches nothing else. A
# delete whose objects were all removed by hand succeeds too.
svc_rec='"vip":"10.78.0.1","port":80'
addr_rec='"interface":"tunl0","address":"10.78.0.1"'
records() { echo "$(grep -cF "$svc_rec" "$STATE/state.json") $(grep -cF "$addr_rec" "$STATE/state.json")"; }
at_old_vip() { echo "$(ns_exec director ipvsadm -Ln | grep -c '^TCP  10\.78\.0\.1:80 ') $(ns_exec director "$IP" -o addr show dev tunl0 | grep -c ' inet 10\.78\.0\.1/')"; }
out="$(agent director apply -f /tmp/crash/small.yaml 2>&1)"
lab_assert_eq "removed by hand: setup apply exits 0" 0 "$?"
lab_assert_eq "removed by hand: the state file records the service and the address" "1 1" "$(records)"
ns_exec director ipvsadm -D -t 10.78.0.1:80
ns_exec director "$IP" addr del 10.78.0.1/32 dev tunl0
lab_assert_eq "removed by hand: neither is in the kernel" "0 0" "$(at_old_vip)"
ns_exec director ipvsadm -A -t 10.78.0.1:8080 -s rr
ns_exec director ipvsadm -a -t 10.78.0.1:8080 -r "$RS2:8080" -i -w 2
ns_exec director "$IP" addr add 10.78.0.1/32 dev dummy0
foreign_now() {
	ns_exec director ipvsadm -Ln -t 10.78.0.1:8080
	ns_exec director ipvsadm -Ln -t "$OTHER:80"
	ns_exec director "$IP" -o addr show dev dummy0
}
foreign_before="$(foreign_now)"
sed 's/^  vip: 10\.78\.0\.1$/  vip: 10.78.9.1/' /tmp/crash/small.yaml >/tmp/crash/small-moved.yaml
out="$(agent director apply -f /tmp/crash/small-moved.yaml 2>&1)"
rc=$?
echo "$out" | tail -3
lab_assert_eq "removed by hand: apply of the moved object exits 0" 0 "$rc"
lab_assert_eq "removed by hand: it reports no error" "" "$(echo "$out" | grep -i error)"
lab_assert_eq "removed by hand: the stale records are dropped" "0 0" "$(records)"
lab_assert_eq "removed by hand: nothing of tunlb's returns at the old VIP" "0 0" "$(at_old_vip)"
lab_assert_eq "removed by hand: the moved object is programmed at its new VIP" "1 1" \
	"$(ns_exec director ipvsadm -Ln | grep -c '^TCP  10\.78\.9\.1:80 ') $(vips 10.78.9)"
lab_assert_eq "removed by hand: the other objects are untouched" "19 $((19 * DESTS)) 19" \
	"$(ns_exec director ipvsadm -Ln | grep -c '^TCP  10\.78\.0\.[0-9]*:80 ') $(dest_rows 10.78.0 1) $(vips 10.78.0)"
lab_assert_same "removed by hand: the foreign service and addresses are untouched" "$foreign_before" "$(foreign_now)"
ns_exec director ipvsadm -D -t 10.78.0.2:80
ns_exec director "$IP" addr del 10.78.0.2/32 dev tunl0
out="$(agent director delete -f /tmp/crash/small-moved.yaml 2>&1)"
rc=$?
echo "$out" | tail -3
lab_assert_eq "removed by hand: delete exits 0" 0 "$rc"
lab_assert_eq "removed by hand: no record of the deleted objects is left" 0 "$(grep -c '10\.78\.' "$STATE/state.json")"
lab_assert_eq "removed by hand: nothing of tunlb's is left" "0 0" \
	"$(ns_exec director ipvsadm -Ln | grep -c '^TCP  10\.78\..*:80 ') $(vips 10.78)"
lab_assert_same "removed by hand: the foreign service and addresses are still untouched" "$foreign_before" "$(foreign_now)"
ns_exec director ipvsadm -D -t 10.78.0.1:8080
ns_exec director "$IP" addr del 10.78.0.1/32 dev dummy0

topo_cleanup
lab_summary

#!/bin/sh
# Self-repair against the real kernel: an nft that hangs costs a run its port
# mapping within the configured kernel timeout, with an error that names the
# command and the time waited; the hung nft is killed, not left behind; and
# the next run, with the real nft back, programs the mapping and traffic flows.
# When the lab runs the agent image, the hanging nft goes into a copy of the
# image (as release.sh does); with a bare binary, it comes first in PATH.
. /scenarios/common.sh
VIP2=192.168.56.186
T=3

topo_setup || { echo "topology setup failed"; exit 1; }
start_backends

# Each hung nft records its pid, then sleeps far beyond the timeout.
if [ -d /image/agent/rootfs ]; then
	mkdir -p /tmp/hung-image
	cp -a /image/agent/. /tmp/hung-image/
	# The image has no shell: a static busybox runs the stand-in.
	cp /bin/busybox /tmp/hung-image/rootfs/usr/sbin/busybox
	printf '#!/usr/sbin/busybox sh\necho $$ >>/tmp/nft-hung.pids\nexec /usr/sbin/busybox sleep 600\n' \
		>/tmp/hung-image/rootfs/usr/sbin/nft
	chmod 0755 /tmp/hung-image/rootfs/usr/sbin/nft
	HUNG="TUNLB_IMAGE_DIR=/tmp/hung-image"
else
	mkdir -p /tmp/hung-bin
	printf '#!/bin/sh\necho $$ >>/tmp/nft-hung.pids\nexec sleep 600\n' >/tmp/hung-bin/nft
	chmod 0755 /tmp/hung-bin/nft
	HUNG="PATH=/tmp/hung-bin:$PATH"
fi

now_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }

agent director apply -f $EX/02-mapped.yaml
agent rs2 apply -f $EX/02-mapped.yaml

# rs1 with the hanging nft. The mapping is refused, so the run also takes the
# object back out, which lists the table once more: two nft runs time out.
t0=$(now_ms)
out="$(ns_exec rs1 env TUNLB_KERNEL_TIMEOUT_SECONDS=$T "$HUNG" "$AGENT" apply --node rs1 --state-dir /tmp/state-rs1 -f $EX/02-mapped.yaml 2>&1)"
rc=$?
took=$(($(now_ms) - t0))
echo "$out"
echo "run with the hanging nft: exit $rc after ${took} ms"
lab_assert_eq "the run with a hanging nft ends, failed" 1 "$rc"
lab_assert_contains "its error names the command and the timeout" \
	"port mapping: \`nft list table ip tunlb\` did not finish within ${T}s; killed it" "$out"
lab_assert_eq "it waited the timeout, not less" yes "$([ "$took" -ge $((T * 1000)) ] && echo yes || echo no)"
lab_assert_eq "and not much more than two timeouts" yes "$([ "$took" -le $((2 * T * 1000 + 10000)) ] && echo yes || echo no)"
pids="$(cat /tmp/nft-hung.pids 2>/dev/null)"
echo "hung nft pids: $pids"
lab_assert_eq "the hanging nft ran" yes "$([ -n "$pids" ] && echo yes || echo no)"
left=""
for p in $pids; do [ -d "/proc/$p" ] && left="$left $p"; done
lab_assert_eq "every hung nft was killed and reaped" "" "$left"
lab_assert_eq "no half-made DNAT table on rs1" "" "$(ns_exec rs1 nft list ruleset | grep 'table ip tunlb')"
lab_assert_eq "rs1's tunl0 holds no VIP of the refused object" "" \
	"$(ns_exec rs1 "$IP" -o addr show dev tunl0 2>/dev/null | grep "$VIP2/32")"

# The real nft again, the same state directory: the next run programs it.
out="$(agent rs1 apply -f $EX/02-mapped.yaml 2>&1)"
rc=$?
echo "$out"
lab_assert_eq "with the real nft back the next run succeeds" 0 "$rc"
lab_assert_contains "and nft list ruleset shows rs1's mapping" \
	"ip daddr $VIP2 tcp dport 8099 dnat to :80" "$(ns_exec rs1 nft list ruleset)"
got="$(requests 4 "http://$VIP2:8099/")"
echo "8099 -> 80 after the repair: $got"
lab_assert_eq "VIP2:8099 balances rs1/rs2 again" yes "$(alternates "$got")"

# A timeout that is not a number stops the command before it touches anything.
out="$(ns_exec rs1 env TUNLB_KERNEL_TIMEOUT_SECONDS=soon "$AGENT" apply --node rs1 --state-dir /tmp/state-rs1 -f $EX/02-mapped.yaml 2>&1)"
rc=$?
echo "$out"
lab_assert_eq "an invalid TUNLB_KERNEL_TIMEOUT_SECONDS is refused" yes "$([ "$rc" -ne 0 ] && echo yes || echo no)"
lab_assert_contains "naming the variable" 'TUNLB_KERNEL_TIMEOUT_SECONDS="soon" is not a number of seconds' "$out"

delete_all $EX/02-mapped.yaml
topo_cleanup
lab_summary

#!/bin/sh
# What a release carries: the guest boots the pinned lab kernel, and when the
# lab runs the agent image (TUNLB_AGENT_IMAGE on the host), the agent really
# runs from the image's root filesystem, and an image without nft fails the
# first port mapping with an error that names the missing program.
. /scenarios/common.sh
VIP2=192.168.56.186

# shellcheck source=../controlplane/versions.env
. /versions/versions.env
lab_assert_eq "the guest runs the pinned lab kernel (versions.env)" \
	"${LAB_KERNEL_PACKAGE#linux-image-}" "$(uname -r)"

if [ ! -d /image/agent/rootfs ]; then
	echo "no agent image in this run (TUNLB_AGENT_IMAGE unset): image checks skipped"
	lab_summary
	exit $?
fi

topo_setup || { echo "topology setup failed"; exit 1; }
start_backends

out="$(apply_all $EX/02-mapped.yaml)"
echo "$out"
lab_assert_contains "the image's nft programs the port mapping" "dnat to :80" "$(ns_exec rs1 nft list table ip tunlb)"
lab_assert_eq "and the mapped VIP port balances" yes "$(alternates "$(requests 4 "http://$VIP2:8099/")")"
delete_all $EX/02-mapped.yaml

# The same agent image without nft (as a careless rebuild would make it).
mkdir -p /tmp/no-nft
cp -a /image/agent/. /tmp/no-nft/
rm -f /tmp/no-nft/rootfs/usr/sbin/nft
# The guest itself still has /usr/sbin/nft: failing here shows the agent runs
# only what its image holds.
before="$(ns_exec rs1 "$IP" -o addr show; sysctls rs1)"
watch_start rs1
out="$(ns_exec rs1 env TUNLB_IMAGE_DIR=/tmp/no-nft "$AGENT" apply --node rs1 --state-dir /tmp/state-nonft -f $EX/02-mapped.yaml 2>&1)"
rc=$?
events="$(watch_stop)"
echo "$out"
lab_assert_eq "an image without nft fails the port mapping" 1 "$rc"
lab_assert_contains "naming the missing program" "cannot run nft" "$out"
lab_assert_eq "and leaves no DNAT behind" "" "$(ns_exec rs1 nft list table ip tunlb 2>/dev/null | grep dnat)"
lab_assert_same "the object is taken back whole: rs1's addresses and sysctls as before" \
	"$before" "$(ns_exec rs1 "$IP" -o addr show; sysctls rs1)"
lab_assert_eq "its VIP never appeared without its port mapping (ip monitor)" "" "$(echo "$events" | grep "$VIP2")"

topo_cleanup
lab_summary

#!/usr/bin/env bash
# Boot the lab kernel under QEMU (TCG) and run COMMAND in the guest.
# usage: run.sh [--timeout SECS] [--net] [--verbose] [--mem MB] [--keep PATH]
#               [--host-bin PATH]... [--bin PATH]... [--dir SRC:DEST]... -- COMMAND...
# Exits with the guest command's exit code (from the `LAB-EXIT <code>` line);
# 124 on timeout, 125 if the guest never printed LAB-EXIT.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
timeout_s=300 net=0 verbose=0 mem=1024 keep=""
args=()

usage() {
	sed -n '2,6s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
	exit 2
}

while [ $# -gt 0 ]; do
	case "$1" in
	--timeout) [ $# -ge 2 ] || usage; timeout_s="$2"; shift 2 ;;
	--net) net=1; shift ;;
	--verbose | -v) verbose=1; shift ;;
	--mem) [ $# -ge 2 ] || usage; mem="$2"; shift 2 ;;
	--keep) [ $# -ge 2 ] || usage; keep="$2"; shift 2 ;;
	--bin | --dir | --host-bin) [ $# -ge 2 ] || usage; args+=("$1" "$2"); shift 2 ;;
	--) shift; break ;;
	*) usage ;;
	esac
done
[ $# -gt 0 ] || usage

# Quote for a POSIX shell: 'a'\''b'.
shquote() {
	local s
	for s in "$@"; do printf "'%s' " "${s//\'/\'\\\'\'}"; done
}

t0=$(date +%s.%N)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
kdir="$("$here/kernel.sh")"
mkdir -p "$work/cmd"
printf '#!/bin/sh\ncd /\n%s\n' "$(shquote "$@")" >"$work/cmd/cmd.sh"
TUNLB_KERNEL_DIR="$kdir" "$here/build-initramfs.sh" "$work/initrd.cpio" \
	"${args[@]}" --dir "$work/cmd:/lab"
[ -z "$keep" ] || cp "$work/initrd.cpio" "$keep"
t1=$(date +%s.%N)

kernel="$kdir/vmlinuz"
[ ! -f "$kdir/vmlinux" ] || kernel="$kdir/vmlinux"
netargs=(-nic none)
if [ "$net" = 1 ]; then
	netargs=(-netdev "user,id=n0" -device "virtio-net-pci,netdev=n0,romfile=")
fi

# Guest console: hide firmware/kernel noise before LAB-START (kept in the log,
# shown on failure) and timestamped kernel lines after it, unless --verbose.
log="$work/console.log"
# mawk reads a pipe in large blocks unless -W interactive: without it the
# guest's lines reach the terminal kilobytes late, a long quiet phase looks
# like a hang.
awk_lines=(awk)
if awk -W version 2>&1 | grep -q mawk; then awk_lines=(awk -W interactive); fi
set +e
timeout -k 5 "$timeout_s" qemu-system-x86_64 \
	-nographic -no-reboot -m "$mem" -smp 1 -cpu max \
	-kernel "$kernel" -initrd "$work/initrd.cpio" \
	-append "console=ttyS0 quiet panic=-1" \
	"${netargs[@]}" </dev/null 2>&1 |
	tee "$log" |
	"${awk_lines[@]}" -v verbose="$verbose" '
		{ sub(/\r$/, ""); gsub(/\033(\[[0-9;?]*[A-Za-z]|c)/, "") }
		/LAB-START [0-9.]+$/ && !started { started = 1; if (!verbose) next }
		verbose { print; fflush(); next }
		started && !/^\[ *[0-9]+\.[0-9]+\] / { print; fflush() }'
qrc=${PIPESTATUS[0]}
set -e
t2=$(date +%s.%N)

start="$(tr -d '\r' <"$log" | sed -n 's/^.*LAB-START \([0-9.]*\).*/\1/p' | head -n1)"
code="$(tr -d '\r' <"$log" | sed -n 's/^LAB-EXIT \([0-9][0-9]*\)$/\1/p' | tail -n1)"
times="$(awk -v a="$t0" -v b="$t1" -v c="$t2" -v s="${start:-?}" \
	'BEGIN { printf "build %.1fs, guest %.1fs (command started at guest uptime %ss)", b-a, c-b, s }')"
if [ -n "$code" ]; then
	echo "lab: guest command exited $code; $times" >&2
	exit "$code"
fi
if [ -z "$start" ]; then
	echo "lab: --- console log (no LAB-START) ---" >&2
	tr -d '\r' <"$log" | tail -n 60 >&2
fi
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
	echo "lab: TIMEOUT after ${timeout_s}s without LAB-EXIT; $times" >&2
	exit 124
fi
echo "lab: guest stopped (qemu exit $qrc) without a LAB-EXIT line; $times" >&2
exit 125

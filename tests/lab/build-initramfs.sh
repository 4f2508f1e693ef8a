#!/usr/bin/env bash
# Build the lab initramfs: OUT [--host-bin PATH]... [--bin PATH]... [--dir SRC:DEST]...
# OUT = cached base image (busybox, ip, nft, ipvsadm, curl, modules, /init)
#       + with --host-bin, a cached layer of those host programs (at their own
#         paths) and the libraries the base lacks (e.g. /usr/sbin/keepalived,
#         17 MB with its libraries: too big for every boot, so not in the base)
#       + a cpio with the --bin/--dir payload, concatenated (the kernel unpacks
#       concatenated archives in order). All are uncompressed newc cpio:
#       gunzip in the TCG guest costs more (~2 s) than loading 30 MB.
# Env: TUNLB_CACHE (default ~/.cache/tunlb), TUNLB_KERNEL_DIR (default: kernel.sh).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${TUNLB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tunlb}"
PATH="$PATH:/usr/sbin:/sbin"

usage() {
	echo "usage: $0 OUT.cpio [--host-bin PATH]... [--bin PATH]... [--dir SRC:DEST]..." >&2
	exit 2
}

[ $# -ge 1 ] || usage
out="$1"
shift
bins=()
dirs=()
extras=()
while [ $# -gt 0 ]; do
	case "$1" in
	--host-bin) [ $# -ge 2 ] || usage; extras+=("$2"); shift 2 ;;
	--bin) [ $# -ge 2 ] || usage; bins+=("$2"); shift 2 ;;
	--dir) [ $# -ge 2 ] || usage; dirs+=("$2"); shift 2 ;;
	*) usage ;;
	esac
done

kdir="${TUNLB_KERNEL_DIR:-$("$here/kernel.sh")}"
kver="$(cat "$kdir/kver")"

# Modules to load, in this order (dependencies are added before each one).
# crc32c_generic first: libcrc32c (needed by ip_vs, nf_tables) soft-depends on it.
modules=(
	crc32c_generic libcrc32c
	ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_lblc ip_vs_lblcr ip_vs_dh
	ip_vs_sh ip_vs_sed ip_vs_nq ip_vs_fo ip_vs_ovf ip_vs_mh
	ipip fou ip_gre ip6_tunnel fou6 ip6_gre
	veth bridge dummy
	nf_tables nf_nat nft_nat nft_chain_nat nft_ct nft_masq nft_exthdr
	nft_numgen
	virtio_pci virtio_net
)
host_bins=(/usr/sbin/ip /usr/sbin/nft /usr/sbin/ipvsadm /usr/bin/curl)
busybox=/bin/busybox

# Copy an ELF binary plus its shared libraries (ldd closure) into root $1.
# Libraries listed in $skip_list (already in the base image) are not copied.
skip_list=/dev/null
copy_elf() {
	local root="$1" src="$2" dest="$3" lib libs
	install -D -m 0755 "$src" "$root$dest"
	# ldd fails for static binaries: nothing to copy then.
	libs="$(ldd "$src" 2>/dev/null | grep -o '/[^ ]*')" || true
	for lib in $libs; do
		[ -e "$root$lib" ] && continue
		grep -qxF ".$lib" "$skip_list" && continue
		install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
	done
}

# Pack directory $1 into an uncompressed newc cpio on stdout, owned by root.
pack() {
	(cd "$1" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
		cpio --null --quiet -o -H newc -R 0:0)
}

build_base() {
	local root="$1" m line f
	mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc,proc,sys,dev,tmp,run,var,root,lab}
	ln -s ../run "$root/var/run"
	install -m 0755 "$busybox" "$root/bin/busybox"
	"$busybox" --list-full | while read -r f; do
		[ "$f" = bin/busybox ] || ln -sf /bin/busybox "$root/$f"
	done
	for f in "${host_bins[@]}"; do
		rm -f "$root$f"
		copy_elf "$root" "$f" "$f"
	done
	# Busybox's sh prefers its ip applet for bare `ip`; keep /sbin/ip the real one too.
	rm -f "$root/sbin/ip"
	ln -s /usr/sbin/ip "$root/sbin/ip"
	for f in /usr/sbin/nft /usr/sbin/ipvsadm; do ln -sf "$f" "$root/sbin/${f##*/}"; done
	mkdir -p "$root/lib64"
	[ -e "$root/lib64/ld-linux-x86-64.so.2" ] ||
		install -m 0755 "$(readlink -f /lib64/ld-linux-x86-64.so.2)" "$root/lib64/ld-linux-x86-64.so.2"

	# Module closure, in load order, de-duplicated.
	local mroot="$root/lib/modules/$kver" order="$root/etc/lab-modules"
	mkdir -p "$mroot"
	: >"$order"
	for m in "${modules[@]}"; do
		if ! line="$(modprobe -d "$kdir" -S "$kver" --show-depends "$m" 2>/dev/null)"; then
			echo "build-initramfs: note: $m has no .ko of its own in $kver (built in), skipped" >&2
			continue
		fi
		while read -r verb f _; do
			[ "$verb" = insmod ] || continue
			f="${f#"$kdir/lib/modules/$kver/"}"
			grep -qxF "$f" "$order" && continue
			echo "$f" >>"$order"
			install -D -m 0644 "$kdir/lib/modules/$kver/$f" "$mroot/$f"
		done <<<"$line"
	done
	cp "$kdir/lib/modules/$kver"/modules.{order,builtin,builtin.modinfo} "$mroot/"
	depmod -b "$root" "$kver"

	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
	printf '127.0.0.1 localhost\n::1 localhost\n' >"$root/etc/hosts"
	printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
	echo lab >"$root/etc/hostname"
	install -m 0755 /dev/stdin "$root/init" <<'INIT'
#!/bin/sh
# Lab init: mount, load modules, run the command, print LAB-EXIT, power off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs tmpfs /dev/shm
[ -d /sys/fs/cgroup ] && mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
hostname lab

cmd="" printk=1
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	lab.cmd=*) cmd="${arg#lab.cmd=}" ;;
	lab.printk=*) printk="${arg#lab.printk=}" ;;
	esac
done
echo "$printk" >/proc/sys/kernel/printk

kver="$(uname -r)"
while read -r m; do
	case "$m" in */dummy.ko) p=numdummies=0 ;; *) p="" ;; esac
	# shellcheck disable=SC2086
	insmod "/lib/modules/$kver/$m" $p 2>/dev/null || {
		# crc32c-intel needs SSE4.2; other failures are reported.
		case "$m" in */crc32c-intel.ko) ;; *) echo "lab-init: insmod $m failed" ;; esac
	}
done </etc/lab-modules
/usr/sbin/ip link set lo up
# QEMU user networking (run.sh --net): static slirp address, host loopback = 10.0.2.2.
if [ -e /sys/class/net/eth0 ]; then
	/usr/sbin/ip link set eth0 up
	/usr/sbin/ip addr add 10.0.2.15/24 dev eth0
	/usr/sbin/ip route add default via 10.0.2.2
	echo "nameserver 10.0.2.3" >/etc/resolv.conf
fi

read -r up _ </proc/uptime
echo "LAB-START $up"

if [ -n "$cmd" ]; then
	sh -c "$cmd"
elif [ -f /lab/cmd.sh ]; then
	sh /lab/cmd.sh
else
	echo "lab-init: no lab.cmd= and no /lab/cmd.sh, starting a shell"
	sh
fi
rc=$?
sync
echo "LAB-EXIT $rc"
sleep 0.2
poweroff -f
INIT
}

# Base image cache key: kernel + this script + the host binaries it copies.
key="$( {
	echo "$kdir $kver"
	cat "${BASH_SOURCE[0]}"
	cat "$busybox" "${host_bins[@]}"
} | sha256sum | cut -c1-16)"
base="$cache/initramfs/base-$kver-$key.cpio"
if [ ! -f "$base" ]; then
	mkdir -p "$cache/initramfs"
	work="$(mktemp -d "$cache/initramfs/.build.XXXXXX")"
	trap 'rm -rf "$work"' EXIT
	build_base "$work/root"
	pack "$work/root" >"$work/base.cpio"
	(cd "$work/root" && find . -mindepth 1) >"$work/base.files"
	# Zero-pad so the next archive starts 512-aligned (the kernel skips zeros).
	truncate -s "%512" "$work/base.cpio"
	find "$cache/initramfs" -maxdepth 1 \( \( -name "base-$kver-*" ! -name "base-$kver-$key.*" \) \
		-o \( -name "extra-$kver-*" ! -name "extra-$kver-$key-*" \) \) -delete
	mv "$work/base.files" "${base%.cpio}.files"
	mv "$work/base.cpio" "$base"
	rm -rf "$work"
	trap - EXIT
fi

skip_list="${base%.cpio}.files"

# Extra host programs: a layer cached by the base and the programs' contents.
extra=/dev/null
if [ ${#extras[@]} -gt 0 ]; then
	for f in "${extras[@]}"; do
		[ -f "$f" ] || { echo "build-initramfs: no such host program: $f (scripts/install-deps.sh installs the lab's)" >&2; exit 1; }
	done
	ekey="$(printf '%s\n' "${extras[@]}" | cat - "${extras[@]}" | sha256sum | cut -c1-16)"
	extra="$cache/initramfs/extra-$kver-$key-$ekey.cpio"
	if [ ! -f "$extra" ]; then
		ework="$(mktemp -d "$cache/initramfs/.extra.XXXXXX")"
		trap 'rm -rf "$ework"' EXIT
		for f in "${extras[@]}"; do copy_elf "$ework/root" "$f" "$f"; done
		pack "$ework/root" >"$ework/extra.cpio"
		truncate -s "%512" "$ework/extra.cpio"
		mv "$ework/extra.cpio" "$extra"
		rm -rf "$ework"
		trap - EXIT
	fi
fi

if [ ${#bins[@]} -eq 0 ] && [ ${#dirs[@]} -eq 0 ]; then
	cat "$base" "$extra" >"$out"
	exit 0
fi

payload="$(mktemp -d)"
trap 'rm -rf "$payload"' EXIT
mkdir -p "$payload/root"
for b in "${bins[@]}"; do
	[ -f "$b" ] || { echo "build-initramfs: no such binary: $b" >&2; exit 1; }
	if [ "$(head -c4 "$b" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
		copy_elf "$payload/root" "$b" "/usr/local/bin/$(basename "$b")"
	else
		install -D -m 0755 "$b" "$payload/root/usr/local/bin/$(basename "$b")"
	fi
done
for d in "${dirs[@]}"; do
	src="${d%%:*}" dest="${d#*:}"
	if [ "$src" = "$d" ] || [ ! -d "$src" ]; then
		echo "build-initramfs: bad --dir $d (want SRC_DIR:DEST)" >&2
		exit 1
	fi
	mkdir -p "$payload/root/$dest"
	cp -a "$src/." "$payload/root/$dest/"
done
{
	cat "$base" "$extra"
	pack "$payload/root"
} >"$out.tmp"
mv "$out.tmp" "$out"

#!/usr/bin/env bash
# Ensure the pinned Debian kernel (vmlinuz + modules) is cached; print its cache dir.
# The package and version are pinned in tests/controlplane/versions.env
# (LAB_KERNEL_PACKAGE, LAB_KERNEL_VERSION).
# Layout: $CACHE/kernel/<package>_<version>/{vmlinuz,vmlinux,kver,lib/modules/<kver>/}
# Env: TUNLB_CACHE (default ~/.cache/tunlb); TUNLB_KERNEL_PKG=<package>=<version>
#      boots another kernel for an experiment (the pinned-kernel test then fails).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${TUNLB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tunlb}"
# shellcheck source=../controlplane/versions.env
source "$here/../controlplane/versions.env"
pkg="$LAB_KERNEL_PACKAGE" ver="$LAB_KERNEL_VERSION"
if [ -n "${TUNLB_KERNEL_PKG:-}" ]; then
	pkg="${TUNLB_KERNEL_PKG%%=*}" ver="${TUNLB_KERNEL_PKG#*=}"
	[ "$ver" != "$TUNLB_KERNEL_PKG" ] || { echo "kernel.sh: TUNLB_KERNEL_PKG wants <package>=<version>" >&2; exit 2; }
fi

as_root() {
	if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

kver="${pkg#linux-image-}"
dir="$cache/kernel/${pkg}_${ver}"
if [ -f "$dir/vmlinuz" ] && [ -f "$dir/kver" ] && [ -f "$dir/lib/modules/$kver/modules.dep" ]; then
	echo "$dir"
	exit 0
fi

mkdir -p "$cache/kernel"
tmp="$(mktemp -d "$cache/kernel/.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
if ! (cd "$tmp" && apt-get download -q "$pkg=$ver" 2>&1) | { grep -v 'unsandboxed as root' || true; } >&2; then
	# Stale apt lists (version gone from the mirror): update once and start over.
	if [ -z "${TUNLB_KERNEL_RETRY:-}" ]; then
		echo "kernel.sh: download failed, running apt-get update and retrying" >&2
		rm -rf "$tmp"
		as_root apt-get update -qq >&2
		TUNLB_KERNEL_RETRY=1 exec "$0" "$@"
	fi
	echo "kernel.sh: apt-get download $pkg=$ver failed: the pinned lab kernel is not served by the configured Debian mirrors (see LAB_KERNEL_* in tests/controlplane/versions.env for how to move it)" >&2
	exit 1
fi
deb="$(find "$tmp" -maxdepth 1 -name '*.deb' | head -n1)"
[ -n "$deb" ] || { echo "kernel.sh: apt-get download produced no .deb" >&2; exit 1; }
dpkg-deb -x "$deb" "$tmp/x"

out="$tmp/out"
mkdir -p "$out/lib/modules"
cp "$tmp/x/boot/vmlinuz-$kver" "$out/vmlinuz"
# Debian bookworm ships modules under /lib; newer releases under /usr/lib.
if [ -d "$tmp/x/lib/modules/$kver" ]; then
	mv "$tmp/x/lib/modules/$kver" "$out/lib/modules/"
else
	mv "$tmp/x/usr/lib/modules/$kver" "$out/lib/modules/"
fi
# Also unpack the ELF vmlinux: QEMU boots it directly (PVH entry), which skips
# ~6 s of in-guest xz decompression under TCG. run.sh falls back to vmlinuz.
off="$(LC_ALL=C grep -aboP '\xfd7zXZ\x00' "$out/vmlinuz" | head -n1 | cut -d: -f1 || true)"
if [ -n "$off" ]; then
	tail -c "+$((off + 1))" "$out/vmlinuz" | xz -dc >"$out/vmlinux" 2>/dev/null || true
	if [ "$(head -c4 "$out/vmlinux" | od -An -tx1 | tr -d ' ')" != 7f454c46 ]; then
		rm -f "$out/vmlinux"
	fi
fi
"$(command -v depmod || echo /sbin/depmod)" -b "$out" "$kver"
echo "$kver" >"$out/kver"
rm -rf "$dir"
mv "$out" "$dir"
echo "$dir"

#!/usr/bin/env bash
# Ensure a Debian kernel (vmlinuz + modules) is cached; print its cache dir.
# Layout: $CACHE/kernel/<package>_<version>/{vmlinuz,vmlinux,kver,lib/modules/<kver>/}
# Env: TUNLB_CACHE (default ~/.cache/tunlb), TUNLB_KERNEL_PKG (override package).
set -euo pipefail

cache="${TUNLB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tunlb}"
meta=linux-image-amd64

as_root() {
	if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# The concrete image package the metapackage depends on, e.g. linux-image-6.1.0-56-amd64.
resolve_pkg() {
	apt-cache depends "$meta" 2>/dev/null |
		sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1
}

# apt-cache is slow (~1 s); memoise the resolution until the apt lists change.
memo="$cache/kernel/resolved"
stamp="$(stat -c %Y /var/lib/apt/lists 2>/dev/null || echo 0)"
pkg="" ver=""
if [ -z "${TUNLB_KERNEL_PKG:-}" ] && [ -f "$memo" ]; then
	read -r m_stamp m_pkg m_ver <"$memo" || true
	if [ "${m_stamp:-}" = "$stamp" ]; then pkg="$m_pkg" ver="$m_ver"; fi
fi

if [ -z "$pkg" ]; then
	pkg="${TUNLB_KERNEL_PKG:-$(resolve_pkg)}"
	if [ -z "$pkg" ]; then
		echo "kernel.sh: $meta unknown to apt-cache, running apt-get update" >&2
		as_root apt-get update -qq >&2
		pkg="$(resolve_pkg)"
	fi
	[ -n "$pkg" ] || { echo "kernel.sh: cannot resolve $meta" >&2; exit 1; }
	ver="$(apt-cache policy "$pkg" 2>/dev/null | sed -n 's/^ *Candidate: //p')"
	if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
		echo "kernel.sh: no candidate for $pkg" >&2
		exit 1
	fi
	if [ -z "${TUNLB_KERNEL_PKG:-}" ]; then
		mkdir -p "$cache/kernel"
		stamp="$(stat -c %Y /var/lib/apt/lists 2>/dev/null || echo 0)"
		echo "$stamp $pkg $ver" >"$memo"
	fi
fi

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
		rm -rf "$tmp" "$memo"
		as_root apt-get update -qq >&2
		TUNLB_KERNEL_RETRY=1 exec "$0" "$@"
	fi
	echo "kernel.sh: apt-get download $pkg=$ver failed" >&2
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

#!/usr/bin/env bash
# Installs what tunlb's build, lab and tests need on a fresh Debian machine.
# Idempotent: skips apt when everything is present.
set -euo pipefail

pkgs=(qemu-system-x86 busybox-static ipvsadm nftables iproute2 curl cpio kmod xz-utils openssl time)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo (Rust) is required" >&2; exit 1; }
command -v go >/dev/null || { echo "go is required to build the test control plane" >&2; exit 1; }

#!/usr/bin/env bash
# Installs what tunlb's build, lab and tests need on a fresh Debian machine.
# Idempotent: skips apt when everything is present.
set -euo pipefail

# buildah, skopeo, umoci: the images (scripts/build-images.sh) and unpacking them for tests.
# jq: tests/vm-tests.sh reads cargo's list of test executables.
# keepalived: the VRRP peer of the vrrp lab test and of scripts/bench-health.sh (copied into the
# lab guest by run.sh --host-bin, never run on the host).
pkgs=(qemu-system-x86 busybox-static ipvsadm nftables iproute2 curl cpio kmod xz-utils openssl time
	buildah skopeo umoci keepalived jq)
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
# shellcheck source=../tests/controlplane/versions.env
source "$(dirname "${BASH_SOURCE[0]}")/../tests/controlplane/versions.env"
command -v go >/dev/null || {
	echo "Go $GO_MIN_VERSION or newer is required to build the test control plane (https://go.dev/dl)" >&2
	exit 1
}
have_go="$(go env GOVERSION | sed 's/^go//')"
if [ "$(printf '%s\n%s\n' "$GO_MIN_VERSION" "$have_go" | sort -V | head -n1)" != "$GO_MIN_VERSION" ]; then
	echo "Go $have_go is too old: the test control plane (Kubernetes ${KUBE_VERSION}) needs Go $GO_MIN_VERSION or newer" >&2
	exit 1
fi

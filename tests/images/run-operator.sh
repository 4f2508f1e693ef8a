#!/usr/bin/env bash
# tunlb-operator as its image runs it: the image's entrypoint, chrooted into the
# image's unpacked root filesystem as the image's user, in a private mount
# namespace with /proc, /dev and a private /tmp, so a library or file missing
# from the image fails here as it would in a cluster. $KUBECONFIG is copied into
# that /tmp, readable by the image's user only (as a mounted Secret would be).
# Arguments replace the image's Cmd, as a Pod's args do.
# Env: TUNLB_OPERATOR_IMAGE = a directory made by tests/images/unpack.sh.
set -euo pipefail
img="${TUNLB_OPERATOR_IMAGE:?set TUNLB_OPERATOR_IMAGE to a directory made by tests/images/unpack.sh}"
[ -d "$img/rootfs" ] || { echo "run-operator: $img/rootfs is missing" >&2; exit 127; }
user="$(cat "$img/user")"
mapfile -t entry <"$img/entrypoint"
[ ${#entry[@]} -gt 0 ] || { echo "run-operator: the image has no entrypoint" >&2; exit 126; }
exec unshare -m --propagation private -- bash -c '
	set -euo pipefail
	r="$1" user="$2"; shift 2
	for d in proc dev tmp; do mkdir -p "$r/$d"; done
	mount --rbind /proc "$r/proc"
	mount --rbind /dev "$r/dev"
	mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"
	if [ -n "${KUBECONFIG:-}" ]; then
		install -m 0400 -o "${user%%:*}" "$KUBECONFIG" "$r/tmp/kubeconfig"
		export KUBECONFIG=/tmp/kubeconfig
	fi
	exec chroot --userspec="$user" "$r" "$@"' bash "$img/rootfs" "$user" "${entry[@]}" "$@"

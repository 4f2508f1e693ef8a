#!/usr/bin/env bash
# Builds the tunlb-operator and tunlb-agent OCI images with buildah (no Docker
# engine needed) from already-built binaries, and writes them as OCI archives.
#
# usage: scripts/build-images.sh [--bin-dir DIR] [--out DIR] [--registry HOST[:PORT]]
#   --bin-dir   where tunlb-operator and tunlb-agent are (default target/release)
#   --out       where the archives go (default target/images)
#   --registry  also push both images there (skopeo; plain HTTP allowed for localhost)
# Env: TUNLB_CACHE (default ~/.cache/tunlb) holds buildah's own storage.
#
# Images: <repository>:<chart appVersion>, repositories as in charts/tunlb/values.yaml.
#   operator: the binary and its C library closure, user 65532, nothing else.
#   agent:    the binary, nft (its nftables transactions) and kmod's modprobe (the
#             chart's load-modules init container), each with its library closure.
# When podman or containerd's ctr is present, the archives are also loaded there.
# Prints each image's digest and sizes at the end; writes <out>/<name>.digest.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir="$root/target/release"
out="$root/target/images"
registry=""

usage() {
	sed -n '5,9s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
	exit 2
}
while [ $# -gt 0 ]; do
	case "$1" in
	--bin-dir) [ $# -ge 2 ] || usage; bin_dir="$2"; shift 2 ;;
	--out) [ $# -ge 2 ] || usage; out="$2"; shift 2 ;;
	--registry) [ $# -ge 2 ] || usage; registry="$2"; shift 2 ;;
	*) usage ;;
	esac
done

die() {
	echo "build-images: $*" >&2
	exit 1
}

command -v buildah >/dev/null ||
	die "buildah is not installed: apt-get install buildah (or run scripts/install-deps.sh)"
for b in tunlb-operator tunlb-agent; do
	[ -x "$bin_dir/$b" ] ||
		die "$bin_dir/$b not found: build it first (cargo build --release -p tunlb-operator -p tunlb-agent)"
done
for f in /usr/sbin/nft /usr/bin/kmod; do
	[ -x "$f" ] || die "$f not found: apt-get install nftables kmod (the agent image ships them)"
done

chart="$root/charts/tunlb"
version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$chart/Chart.yaml")"
[ -n "$version" ] || die "no appVersion in $chart/Chart.yaml"
# The repository each image is pushed as: the chart's default, so a plain
# `helm install` pulls what this script builds.
repository() {
	awk -v sect="$1:" '
		$0 == sect { inside = 1; next }
		inside && /^[^ #]/ { exit }
		inside && $1 == "repository:" { print $2; exit }' "$chart/values.yaml"
}
operator_repo="$(repository operator)"
agent_repo="$(repository agent)"
[ -n "$operator_repo" ] && [ -n "$agent_repo" ] || die "no image repositories in $chart/values.yaml"

revision="$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git -C "$root" status --porcelain 2>/dev/null)" ]; then revision="$revision-dirty"; fi
source_url="$(sed -n 's/^repository *= *"\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)"
created="$(git -C "$root" log -1 --format=%cI 2>/dev/null || date -u +%Y-%m-%dT%H:%M:%SZ)"
epoch="$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)"

cache="${TUNLB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tunlb}"
# buildah's own storage, kept apart from any system container storage; vfs
# needs no overlay mounts, which unprivileged or nested hosts often refuse.
bah=(buildah --root "$cache/buildah/storage" --runroot "$cache/buildah/run" --storage-driver vfs)

work="$(mktemp -d)"
# The working container of the image being built, removed if the build stops midway.
container=""
cleanup() {
	[ -z "$container" ] || "${bah[@]}" rm "$container" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

# Copies an ELF program and its shared-library closure (as ldd resolves it) into $1.
add_elf() {
	local rootfs="$1" src="$2" dest="$3" lib
	install -D -m 0755 "$src" "$rootfs$dest"
	for lib in $(ldd "$src" 2>/dev/null | grep -o '/[^ ]*' || true); do
		[ -e "$rootfs$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
	done
}

base_files() {
	local rootfs="$1"
	mkdir -p "$rootfs/etc" "$rootfs/tmp"
	chmod 1777 "$rootfs/tmp"
	printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n' >"$rootfs/etc/passwd"
	printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
	printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
}

# build NAME REPOSITORY ROOTFS USER ENTRYPOINT CMD TITLE
build() {
	local name="$1" repo="$2" rootfs="$3" user="$4" entrypoint="$5" cmd="$6" title="$7"
	local ref="$repo:$version" archive="$out/$name-$version.oci.tar" c
	# Every file gets the commit's time, so equal inputs give equal layers.
	find "$rootfs" -exec touch -h -d "@$epoch" {} +
	c="$("${bah[@]}" from --quiet scratch)"
	container="$c"
	"${bah[@]}" copy --quiet "$c" "$rootfs/" / >/dev/null
	"${bah[@]}" config \
		--entrypoint "$entrypoint" --cmd "$cmd" --user "$user" --workingdir / \
		--env PATH=/usr/local/bin:/usr/sbin:/usr/bin \
		--os linux --arch amd64 \
		--label "org.opencontainers.image.title=$title" \
		--label "org.opencontainers.image.source=$source_url" \
		--label "org.opencontainers.image.revision=$revision" \
		--label "org.opencontainers.image.version=$version" \
		--label "org.opencontainers.image.created=$created" \
		--label "org.opencontainers.image.licenses=Apache-2.0" \
		"$c"
	"${bah[@]}" commit --quiet --format oci --timestamp "$epoch" --rm "$c" "$ref" >/dev/null
	container=""
	rm -f "$archive"
	"${bah[@]}" push --quiet --digestfile "$out/$name.digest" "$ref" "oci-archive:$archive:$ref"
	"${bah[@]}" rmi --quiet "$ref" >/dev/null 2>&1 || true
	if [ -n "$registry" ]; then
		local tls=true
		case "$registry" in localhost* | 127.0.0.1*) tls=false ;; esac
		skopeo copy --quiet --dest-tls-verify="$tls" "oci-archive:$archive" \
			"docker://$registry/${repo#*/}:$version"
		echo "pushed $registry/${repo#*/}:$version"
	fi
	if command -v podman >/dev/null; then
		podman load --quiet -i "$archive" >/dev/null && echo "loaded $ref into podman"
	fi
	if command -v ctr >/dev/null && [ -S /run/containerd/containerd.sock ]; then
		ctr -n k8s.io images import --digests "$archive" >/dev/null && echo "imported $ref into containerd (k8s.io)"
	fi
	printf '%s\t%s\t%s\t%s\t%s\n' "$ref" "$(cat "$out/$name.digest")" \
		"$(du -sb "$rootfs" | cut -f1)" "$(du -b "$archive" | cut -f1)" "$archive" >>"$work/summary"
}

mkdir -p "$out"

op="$work/operator"
base_files "$op"
add_elf "$op" "$bin_dir/tunlb-operator" /usr/local/bin/tunlb-operator
build tunlb-operator "$operator_repo" "$op" 65532:65532 \
	'["/usr/local/bin/tunlb-operator"]' '[]' "tunlb operator"

ag="$work/agent"
base_files "$ag"
add_elf "$ag" "$bin_dir/tunlb-agent" /usr/local/bin/tunlb-agent
add_elf "$ag" /usr/sbin/nft /usr/sbin/nft
add_elf "$ag" /usr/bin/kmod /usr/bin/kmod
ln -s ../bin/kmod "$ag/usr/sbin/modprobe"
# Mount points the chart uses (the root filesystem is read-only there).
mkdir -p "$ag/var/lib/tunlb" "$ag/host/proc/sys" "$ag/lib/modules"
build tunlb-agent "$agent_repo" "$ag" 0:0 \
	'["/usr/local/bin/tunlb-agent"]' '["run"]' "tunlb node agent"

# Sizes in bytes: the unpacked root filesystem, and the archive (gzip layers,
# about what a registry stores and a node pulls).
echo "images (reference, digest, rootfs bytes, archive bytes, archive):"
column -t -s $'\t' "$work/summary" 2>/dev/null || cat "$work/summary"

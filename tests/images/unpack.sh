#!/usr/bin/env bash
# Unpacks an OCI archive (from scripts/build-images.sh) the way a container
# runtime sees it, so tests run what the image holds and nothing of the host:
#   DEST/rootfs/      the image's layers applied in order (umoci)
#   DEST/config.json  the image config (skopeo inspect --config)
#   DEST/entrypoint   the Entrypoint, one argument per line (a Pod's `args`
#                     replace the image's Cmd, so callers pass their own)
#   DEST/cmd          the Cmd, likewise
#   DEST/user         the config's User (uid:gid)
# usage: tests/images/unpack.sh ARCHIVE.oci.tar DEST
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 ARCHIVE DEST" >&2; exit 2; }
archive="$1" dest="$2"
[ -f "$archive" ] || { echo "unpack: no such archive: $archive (run scripts/build-images.sh)" >&2; exit 1; }
for t in skopeo umoci python3; do
	command -v "$t" >/dev/null || { echo "unpack: $t is not installed (scripts/install-deps.sh)" >&2; exit 1; }
done
rm -rf "$dest"
mkdir -p "$dest"
layout="$(mktemp -d)"
trap 'rm -rf "$layout"' EXIT
skopeo copy --quiet "oci-archive:$archive" "oci:$layout/oci:image"
umoci raw unpack --image "$layout/oci:image" "$dest/rootfs" >/dev/null 2>&1 ||
	umoci raw unpack --image "$layout/oci:image" "$dest/rootfs"
skopeo inspect --config "oci-archive:$archive" >"$dest/config.json"
python3 - "$dest" <<'PY'
import json, sys
dest = sys.argv[1]
cfg = json.load(open(f"{dest}/config.json"))["config"]
for key, name in (("Entrypoint", "entrypoint"), ("Cmd", "cmd")):
    args = cfg.get(key) or []
    open(f"{dest}/{name}", "w").write("".join(a + "\n" for a in args))
open(f"{dest}/user", "w").write((cfg.get("User") or "0:0") + "\n")
PY

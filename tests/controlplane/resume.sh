#!/usr/bin/env bash
# resume.sh DIR NAME -- start NAME (kube-apiserver or etcd) of the control
# plane in DIR again after `stop.sh DIR NAME`: the same command line as
# start.sh gave it (same ports, data and certificates), its log appended to.
# Returns once it answers its health check (the apiserver's /readyz needs etcd).
# Env: READY_TIMEOUT (default 120 s).
set -euo pipefail
[[ $# -eq 2 ]] || { echo "usage: $0 DIR kube-apiserver|etcd" >&2; exit 2; }
DIR=$(cd "$1" && pwd)
NAME=$2
READY_TIMEOUT=${READY_TIMEOUT:-120}
die() { echo "resume.sh: $*" >&2; exit 1; }

case $NAME in kube-apiserver | etcd) ;; *) die "unknown process $NAME" ;; esac
[[ -f $DIR/$NAME.cmdline ]] || die "no $DIR/$NAME.cmdline: was it started by start.sh?"
alive() { [[ -f $DIR/$NAME.pid ]] && kill -0 "$(cat "$DIR/$NAME.pid")" 2>/dev/null; }
alive && die "$NAME already running (pid $(cat "$DIR/$NAME.pid"))"
# shellcheck source=/dev/null
. "$DIR/env"

# start.sh wrote the command line space-joined; none of its words has a space.
read -r -a CMD < "$DIR/$NAME.cmdline"
echo "--- resumed $(date -u +%FT%TZ)" >> "$DIR/$NAME.log"
setsid "${CMD[@]}" >> "$DIR/$NAME.log" 2>&1 < /dev/null &
echo $! > "$DIR/$NAME.pid"

PKI=$DIR/pki
healthy() {
  case $NAME in
    etcd) curl -fsS "$TUNLB_ETCD_ENDPOINT/health" 2>/dev/null | grep -q '"health":"true"' ;;
    kube-apiserver) curl -fsS --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
      "$TUNLB_APISERVER_URL/readyz" 2>/dev/null | grep -qx ok ;;
  esac
}
deadline=$((SECONDS + READY_TIMEOUT))
until healthy; do
  alive || die "$NAME exited; see $DIR/$NAME.log"
  ((SECONDS < deadline)) || die "$NAME not healthy after $READY_TIMEOUT s"
  sleep 0.2
done
echo "resume.sh: $NAME healthy in ${SECONDS} s" >&2

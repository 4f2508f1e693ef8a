#!/usr/bin/env bash
# start.sh DIR -- run a throwaway etcd + kube-apiserver on loopback, envtest style.
# All state lives in DIR (created if needed):
#   DIR/pki/             CA, apiserver serving cert, admin client cert, SA key pair
#   DIR/etcd/            etcd data dir
#   DIR/admin.kubeconfig        system:masters client cert, server https://127.0.0.1:PORT
#   DIR/admin-guest.kubeconfig  same, server https://10.0.2.2:PORT (from a QEMU user-net guest)
#   DIR/env              `source DIR/env`: KUBECONFIG, PATH, TUNLB_APISERVER_URL, ports...
#   DIR/{etcd,kube-apiserver}.{pid,log}
# Ports are free ports picked at start (or ETCD_PORT, ETCD_PEER_PORT, APISERVER_PORT).
# Binaries come from $TUNLB_BIN (default ~/.cache/tunlb/bin/current, see build.sh),
# falling back to PATH. Prints the admin kubeconfig path on success.
# Env: BIND_ADDRESS (default 127.0.0.1), READY_TIMEOUT (default 120 s),
#      EXTRA_APISERVER_FLAGS (word-split, appended).
set -euo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
mkdir -p "$1"
DIR=$(cd "$1" && pwd)
TUNLB_BIN=${TUNLB_BIN:-${TUNLB_CACHE:-$HOME/.cache/tunlb}/bin/current}
BIND_ADDRESS=${BIND_ADDRESS:-127.0.0.1}
READY_TIMEOUT=${READY_TIMEOUT:-120}

log() { echo "start.sh: $*" >&2; }
die() { log "$*"; exit 1; }

bin() {
  if [[ -x $TUNLB_BIN/$1 ]]; then echo "$TUNLB_BIN/$1"
  elif command -v "$1" >/dev/null; then command -v "$1"
  else die "$1 not found in $TUNLB_BIN or PATH (run tests/controlplane/build.sh)"; fi
}
ETCD=$(bin etcd)
APISERVER=$(bin kube-apiserver)
KUBECTL=$(bin kubectl)

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
for p in etcd kube-apiserver; do
  alive "$DIR/$p.pid" && die "$p already running for $DIR (pid $(cat "$DIR/$p.pid")); run stop.sh $DIR"
done

# --- free ports -----------------------------------------------------------
declare -A TAKEN=()
free_port() {
  local used p i
  used=$(ss -Htan 2>/dev/null | awk '{print $4}' | sed -E 's/.*:([0-9]+)$/\1/' | sort -u)
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 40000))
    [[ -n ${TAKEN[$p]:-} ]] && continue
    grep -qx "$p" <<<"$used" && continue
    TAKEN[$p]=1; echo "$p"; return 0
  done
  die "no free port found"
}
ETCD_PORT=${ETCD_PORT:-$(free_port)}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-$(free_port)}
APISERVER_PORT=${APISERVER_PORT:-$(free_port)}

# --- PKI --------------------------------------------------------------------
PKI=$DIR/pki
mkdir -p "$PKI"
if [[ ! -f $PKI/admin.crt ]]; then
  (
    cd "$PKI"
    exec 2>openssl.log
    ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
    ec ca.key
    openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=tunlb-test-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -out ca.crt
    sign() { # name subj extfile-content
      ec "$1.key"
      openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
      printf '%b' "$3" > "$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 3650 \
        -extfile "$1.ext" -out "$1.crt"
      rm -f "$1.csr" "$1.ext"
    }
    sign apiserver "/CN=kube-apiserver" \
      "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:10.0.2.2,IP:10.96.0.1,IP:::1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
    sign admin "/O=system:masters/CN=tunlb-admin" \
      "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key
    openssl pkey -in sa.key -pubout -out sa.pub
    chmod 600 ./*.key
  ) || die "openssl failed, see $PKI/openssl.log"
fi

# --- kubeconfigs ----------------------------------------------------------
b64() { base64 -w0 < "$1"; }
write_kubeconfig() { # file server
  cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: tunlb-test
  cluster:
    server: $2
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: tunlb-admin
  user:
    client-certificate-data: $(b64 "$PKI/admin.crt")
    client-key-data: $(b64 "$PKI/admin.key")
contexts:
- name: tunlb-test
  context: {cluster: tunlb-test, user: tunlb-admin}
current-context: tunlb-test
KC
  chmod 600 "$1"
}
URL=https://127.0.0.1:$APISERVER_PORT
write_kubeconfig "$DIR/admin.kubeconfig" "$URL"
write_kubeconfig "$DIR/admin-guest.kubeconfig" "https://10.0.2.2:$APISERVER_PORT"

# --- processes ------------------------------------------------------------
STARTED=()
cleanup_on_fail() {
  local rc=$?
  [[ $rc -eq 0 ]] && return
  for p in "${STARTED[@]}"; do kill "$(cat "$DIR/$p.pid")" 2>/dev/null || true; done
  for p in "${STARTED[@]}"; do log "--- tail $DIR/$p.log"; tail -n 25 "$DIR/$p.log" >&2 || true; done
}
trap cleanup_on_fail EXIT

launch() { # name cmd...  (own session so it outlives the caller's process group)
  local name=$1; shift
  echo "$*" > "$DIR/$name.cmdline"
  setsid "$@" > "$DIR/$name.log" 2>&1 < /dev/null &
  echo $! > "$DIR/$name.pid"
  STARTED+=("$name")
}

launch etcd "$ETCD" \
  --name=default \
  --data-dir="$DIR/etcd" \
  --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster="default=http://127.0.0.1:$ETCD_PEER_PORT" \
  --unsafe-no-fsync=true \
  --log-level=warn

# wait for etcd (the apiserver retries too, but a clear error is nicer)
deadline=$((SECONDS + 30))
until curl -fsS "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'; do
  alive "$DIR/etcd.pid" || die "etcd exited"
  ((SECONDS < deadline)) || die "etcd not healthy after 30 s"
  sleep 0.2
done

# shellcheck disable=SC2086
launch kube-apiserver "$APISERVER" \
  --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --bind-address="$BIND_ADDRESS" \
  --advertise-address=127.0.0.1 \
  --secure-port="$APISERVER_PORT" \
  --cert-dir="$DIR/pki" \
  --tls-cert-file="$PKI/apiserver.crt" \
  --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" \
  --authorization-mode=Node,RBAC \
  --service-account-issuer=https://kubernetes.default.svc \
  --service-account-key-file="$PKI/sa.pub" \
  --service-account-signing-key-file="$PKI/sa.key" \
  --service-cluster-ip-range=10.96.0.0/12 \
  --disable-admission-plugins=ServiceAccount \
  --endpoint-reconciler-type=none \
  --allow-privileged=true \
  ${EXTRA_APISERVER_FLAGS:-}

deadline=$((SECONDS + READY_TIMEOUT))
until curl -fsS --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "$URL/readyz" 2>/dev/null | grep -qx ok; do
  alive "$DIR/kube-apiserver.pid" || die "kube-apiserver exited"
  ((SECONDS < deadline)) || die "kube-apiserver not ready after $READY_TIMEOUT s"
  sleep 0.3
done

cat > "$DIR/env" <<ENV
# source this file: . $DIR/env
export KUBECONFIG=$DIR/admin.kubeconfig
export PATH=$(dirname "$KUBECTL"):\$PATH
export TUNLB_CONTROLPLANE_DIR=$DIR
export TUNLB_APISERVER_URL=$URL
export TUNLB_APISERVER_GUEST_URL=https://10.0.2.2:$APISERVER_PORT
export TUNLB_APISERVER_PORT=$APISERVER_PORT
export TUNLB_ETCD_ENDPOINT=http://127.0.0.1:$ETCD_PORT
export TUNLB_CA_FILE=$PKI/ca.crt
ENV

trap - EXIT
log "ready in ${SECONDS} s: apiserver $URL, etcd http://127.0.0.1:$ETCD_PORT (source $DIR/env)"
echo "$DIR/admin.kubeconfig"

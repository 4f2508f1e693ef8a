#!/usr/bin/env bash
# token.sh DIR NAMESPACE SA [DURATION [NODE]]
# Ensures NAMESPACE and ServiceAccount SA exist (as admin), mints a token with
# `kubectl create token` (default 24h), and writes a kubeconfig that
# authenticates with that token only -- so requests are subject to SA's RBAC.
# With NODE (an existing Node), the token is bound to that Node, as a node
# agent's is: the API server then adds the user extra
# authentication.kubernetes.io/node-name=NODE, which the agent status policy reads.
# Writes DIR/sa-NAMESPACE-SA[-NODE].kubeconfig (127.0.0.1) and
#        DIR/sa-NAMESPACE-SA[-NODE]-guest.kubeconfig (10.0.2.2); prints the first path.
set -euo pipefail
[[ $# -ge 3 ]] || { echo "usage: $0 DIR NAMESPACE SA [DURATION [NODE]]" >&2; exit 2; }
DIR=$(cd "$1" && pwd); NS=$2; SA=$3; DUR=${4:-24h}; NODE=${5:-}
# shellcheck source=/dev/null
source "$DIR/env"
KC=(kubectl --kubeconfig "$DIR/admin.kubeconfig")
"${KC[@]}" create namespace "$NS" --dry-run=client -o yaml | "${KC[@]}" apply -f - >/dev/null
"${KC[@]}" -n "$NS" create serviceaccount "$SA" --dry-run=client -o yaml | "${KC[@]}" apply -f - >/dev/null
BIND=(); NAME="sa-$NS-$SA"
if [[ -n $NODE ]]; then
  BIND=(--bound-object-kind Node --bound-object-name "$NODE"); NAME="$NAME-$NODE"
fi
TOKEN=$("${KC[@]}" -n "$NS" create token "$SA" --duration="$DUR" "${BIND[@]}")
CA=$(base64 -w0 < "$TUNLB_CA_FILE")
write() { # file server
  cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: tunlb-test
  cluster:
    server: $2
    certificate-authority-data: $CA
users:
- name: $NS-$SA
  user:
    token: $TOKEN
contexts:
- name: $NS-$SA
  context: {cluster: tunlb-test, user: $NS-$SA, namespace: $NS}
current-context: $NS-$SA
KC
  chmod 600 "$1"
}
write "$DIR/$NAME.kubeconfig" "$TUNLB_APISERVER_URL"
write "$DIR/$NAME-guest.kubeconfig" "$TUNLB_APISERVER_GUEST_URL"
echo "$DIR/$NAME.kubeconfig"

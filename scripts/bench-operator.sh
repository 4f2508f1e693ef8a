#!/usr/bin/env bash
# tunlb-operator against a real kube-apiserver (tests/controlplane; see
# tests/bench/operator/RESULTS.md). Two runs, each on a fresh control plane:
#  latency: N VirtualServices (static backends) created C at a time; create ->
#           Resolved=True status latency vs the API server's create -> ADDED
#  scale:   VS VirtualServices + SLICES EndpointSlices created first, then the
#           operator started: time to converge, peak RSS, CPU and reconciles
#           over an idle window
# usage: scripts/bench-operator.sh [--count N] [--concurrency C] [--vs N] [--slices N]
#          [--idle SECONDS] [--out DIR] [--only latency|scale] [--keep] [--bin OPERATOR]
#          [--wait-timeout SECONDS]
# Needs: Go (control plane), python3 with `pip install kubernetes`, curl.
# OPERATOR_ARGS adds operator flags (e.g. OPERATOR_ARGS="--resync 3600").
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
count=1000 conc=32 nvs=10000 nslices=10000 idle=60 out="" only="" keep=0 op_bin="" wait_timeout=1200
while [ $# -gt 0 ]; do
	case "$1" in
	--count) count="$2"; shift 2 ;;
	--concurrency) conc="$2"; shift 2 ;;
	--vs) nvs="$2"; shift 2 ;;
	--slices) nslices="$2"; shift 2 ;;
	--idle) idle="$2"; shift 2 ;;
	--out) out="$2"; shift 2 ;;
	--only) only="$2"; shift 2 ;;
	--keep) keep=1; shift ;;
	--wait-timeout) wait_timeout="$2"; shift 2 ;;
	--bin) op_bin="$(realpath "$2")"; shift 2 ;;
	*) sed -n '2,10s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
	esac
done
[ -n "$out" ] || out="$(mktemp -d /tmp/bench-operator.XXXXXX)"
mkdir -p "$out"
gen="$root/tests/bench/operator/loadgen.py"
python3 -c 'import kubernetes' 2>/dev/null || { echo "python3 -m pip install kubernetes" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl missing" >&2; exit 1; }

echo "bench-operator: building the control plane and the operator (release)" >&2
eval "$("$root/tests/controlplane/build.sh" | tail -1)"
if [ -z "$op_bin" ]; then
	target="${CARGO_TARGET_DIR:-$root/target}"
	(cd "$root" && cargo build --release --quiet -p tunlb-operator)
	op_bin="$target/release/tunlb-operator"
fi

cp_dir="" op_pid="" sampler=""
cleanup() {
	[ -z "$sampler" ] || kill "$sampler" 2>/dev/null || true
	[ -z "$op_pid" ] || { kill "$op_pid" 2>/dev/null || true; wait "$op_pid" 2>/dev/null || true; }
	[ -z "$cp_dir" ] || "$root/tests/controlplane/stop.sh" "$cp_dir" >/dev/null 2>&1 || true
	[ "$keep" = 1 ] || [ -z "$cp_dir" ] || rm -rf "$cp_dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime, clock ticks
user_sys() { awk -v hz="$hz" '{printf "user %.2f s, sys %.2f s", $14 / hz, $15 / hz}' "/proc/$1/stat"; }
hz="$(getconf CLK_TCK)"
# voluntary + involuntary context switches: wake-ups, which cost the kernel's time
switches() { awk '$1 ~ /ctxt_switches:$/ {n += $2} END {print n}' "/proc/$1/status"; }
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
reconciles() { curl -fsS "http://$maddr/metrics" | awk '$1 == "tunlb_operator_reconciles_total" {print $2}'; }
rss_of() { [ -f "$1" ] && status_kb "$(cat "$1")" VmRSS || echo "?"; }

start_cp() { # DIR
	cp_dir="$1"
	"$root/tests/controlplane/start.sh" "$cp_dir" >/dev/null 2>&1
	# shellcheck disable=SC1091
	. "$cp_dir/env"
	kubectl apply -f "$root/crds/" >/dev/null
	kubectl wait --for condition=established crd/virtualservices.tunlb.io crd/vippools.tunlb.io --timeout=60s >/dev/null
	kubectl create namespace tunlb-system >/dev/null
	# The benchmark's VIPs (10.0.0.0/8) in a pool admitting its namespaces, as a
	# cluster admin would give a tenant: every VirtualService is judged against it.
	kubectl apply -f - >/dev/null <<-EOF
		apiVersion: tunlb.io/v1alpha1
		kind: VipPool
		metadata: {name: bench}
		spec:
		  cidrs: [10.0.0.0/8]
		  namespaces: [base, lat, scale]
		  backends: {nodeSelector: {}, cidrs: [0.0.0.0/0]}
	EOF
}
stop_cp() {
	"$root/tests/controlplane/stop.sh" "$cp_dir" >/dev/null
	[ "$keep" = 1 ] || rm -rf "$cp_dir"
	cp_dir=""
}
start_operator() { # LOG
	maddr="127.0.0.1:$(free_port)"
	TUNLB_LOG="${TUNLB_LOG:-info}" "$op_bin" --service-cidr 10.96.0.0/12 \
		--lease-namespace tunlb-system --identity bench --metrics-addr "$maddr" ${OPERATOR_ARGS:-} >"$1" 2>&1 &
	op_pid=$!
	op_t0=$(date +%s.%N)
	# RSS (kB) and CPU ticks once a second, for the timeline
	(while kill -0 "$op_pid" 2>/dev/null; do
		echo "$(date +%s.%N) $(status_kb "$op_pid" VmRSS) $(ticks "$op_pid")"
		sleep 1
	done) >"$1.samples" 2>/dev/null &
	sampler=$!
	local i
	for i in $(seq 1 600); do
		if curl -fsS "http://$maddr/metrics" 2>/dev/null | grep -q '^tunlb_operator_leader 1$'; then
			break
		fi
		sleep 0.1
	done
	ready_after=""
	for i in $(seq 1 3000); do
		if curl -fsS "http://$maddr/readyz" >/dev/null 2>&1; then
			ready_after=$(echo "$(date +%s.%N) - $op_t0" | bc)
			break
		fi
		sleep 0.1
	done
}
stop_operator() {
	kill "$op_pid"; wait "$op_pid" 2>/dev/null || true; op_pid=""
	kill "$sampler" 2>/dev/null || true; sampler=""
}
snapshot() { # LABEL: operator memory and CPU so far, apiserver/etcd RSS
	printf '%s: operator VmRSS=%s kB VmHWM=%s kB cpu=%.2f s (%s; %s context switches) fds=%s; kube-apiserver VmRSS=%s kB; etcd VmRSS=%s kB\n' \
		"$1" "$(status_kb "$op_pid" VmRSS)" "$(status_kb "$op_pid" VmHWM)" \
		"$(echo "$(ticks "$op_pid") / $hz" | bc -l)" "$(user_sys "$op_pid")" "$(switches "$op_pid")" \
		"$(ls "/proc/$op_pid/fd" | wc -l)" \
		"$(rss_of "$cp_dir/kube-apiserver.pid")" "$(rss_of "$cp_dir/etcd.pid")"
}

summary="$out/summary.txt"
: >"$summary"
say() { echo "$*" | tee -a "$summary"; }
say "# bench-operator $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
say "# operator $("$op_bin" --version) ($op_bin)"

if [ "$only" != scale ]; then
	say "== latency: $count VirtualServices, $conc in flight"
	start_cp "$out/cp-latency"
	kubectl create namespace base >/dev/null
	kubectl create namespace lat >/dev/null
	python3 "$gen" nodes --count 3 >/dev/null
	# API server alone (no operator): the create -> ADDED baseline, for reference
	python3 "$gen" latency --ns base --count "$count" --concurrency "$conc" --prefix base \
		--vip-octet 100 --nodes 3 --no-operator >"$out/latency-no-operator.json" 2>"$out/latency-no-operator.log"
	say "no operator: $(cat "$out/latency-no-operator.json")"
	# no finalizers yet, so this is immediate; the operator then starts on an empty cluster
	kubectl delete --raw /apis/tunlb.io/v1alpha1/namespaces/base/virtualservices >/dev/null # deletecollection
	start_operator "$out/operator-latency.log"
	say "operator leader and ready after ${ready_after}s"
	python3 "$gen" latency --ns lat --count "$count" --concurrency "$conc" --prefix lat \
		--vip-octet 200 --nodes 3 >"$out/latency.json" 2>"$out/latency.log"
	say "with operator: $(cat "$out/latency.json")"
	sleep 2
	say "$(snapshot "after latency run")"
	say "reconciles_total $(reconciles)"
	stop_operator
	stop_cp
fi

if [ "$only" != latency ]; then
	say "== scale: $nvs VirtualServices, $nslices EndpointSlices"
	start_cp "$out/cp-scale"
	kubectl create namespace scale >/dev/null
	python3 "$gen" nodes --count 20 >/dev/null
	python3 "$gen" populate --ns scale --vs "$nvs" --slices "$nslices" --nodes 20 \
		--concurrency "$conc" >"$out/populate.json" 2>"$out/populate.log"
	say "populate: $(cat "$out/populate.json")"
	say "$(printf 'before operator: kube-apiserver VmRSS=%s kB; etcd VmRSS=%s kB' \
		"$(rss_of "$cp_dir/kube-apiserver.pid")" "$(rss_of "$cp_dir/etcd.pid")")"
	start_operator "$out/operator-scale.log"
	say "operator leader after start; caches synced (readyz) after ${ready_after}s"
	python3 "$gen" wait --ns scale --count "$nvs" --timeout "$wait_timeout" >"$out/wait.json" 2>"$out/wait.log"
	conv=$(echo "$(date +%s.%N) - $op_t0" | bc)
	say "converged: $(cat "$out/wait.json") (wait started ${ready_after}s after operator start; all converged by ${conv}s)"
	say "$(snapshot "at convergence")"
	if ! grep -q '"ok": true' "$out/wait.json"; then
		say "not converged within ${wait_timeout}s: reconcile errors by kind:"
		sed 's/\x1b\[[0-9;]*m//g' "$out/operator-scale.log" | grep -o 'failed with [a-z]* [^:]*\|reconcile failed error=[^(]*' |
			sort | uniq -c | sort -rn | head -8 | tee -a "$summary"
		stop_operator
		stop_cp
		exit 1
	fi
	# let the queue drain (status-write echoes, events) until reconciles_total is stable for 10 s
	prev=-1
	for i in $(seq 1 60); do
		cur=$(reconciles)
		[ "$cur" = "$prev" ] && break
		prev=$cur
		sleep 10
	done
	say "settled: reconciles_total $cur; $(snapshot "settled")"
	r0=$(reconciles) c0=$(ticks "$op_pid") t0=$(date +%s.%N)
	sleep "$idle"
	r1=$(reconciles) c1=$(ticks "$op_pid") t1=$(date +%s.%N)
	say "$(printf 'idle %.1f s: cpu %.3f s (%.3f s/min), reconciles_total %s -> %s' \
		"$(echo "$t1 - $t0" | bc)" "$(echo "($c1 - $c0) / $hz" | bc -l)" \
		"$(echo "($c1 - $c0) / $hz * 60 / ($t1 - $t0)" | bc -l)" "$r0" "$r1")"
	say "$(snapshot "end")"
	say "peak RSS (VmHWM): $(status_kb "$op_pid" VmHWM) kB"
	stop_operator
	stop_cp
fi
echo "bench-operator: results in $out (summary.txt)" >&2

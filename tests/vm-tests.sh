#!/usr/bin/env bash
# Runs the lab and end-to-end tests (each boots QEMU guests) from both test
# binaries in one pool of TUNLB_VM_TESTS slots (default 2, one per core: the
# guests run under TCG and keep a core busy each), longest first, so neither
# binary waits at its end for its own last test while a slot stands idle.
# Each test runs in its own process; its output goes to
# target/vm-tests/NAME.log and is printed when it fails. Seconds per test are
# written to target/vm-tests/durations.tsv, in the format of
# tests/vm-test-durations.tsv, which orders the runs.
# Usage: tests/vm-tests.sh [NAME-FILTER]   (after the images are built; see tests/run.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
slots=${TUNLB_VM_TESTS:-2}
filter=${1:-}
out=$root/target/vm-tests
rm -rf "$out"
mkdir -p "$out"

# The test executables, by binary name.
declare -A exe
while IFS=$'\t' read -r name path; do
	exe[$name]=$path
done < <(cargo test --profile ci --quiet -p tunlb-tests --test lab --test e2e --no-run --message-format=json |
	jq -r 'select(.reason == "compiler-artifact" and .executable != null and .target.kind == ["test"]) | "\(.target.name)\t\(.executable)"')

# bin<TAB>test<TAB>expected seconds, longest first; tests not measured yet go
# first, as a new scenario is more often long than short.
plan=$out/plan.tsv
for bin in lab e2e; do
	(cd tests && "${exe[$bin]}" --include-ignored --list --format terse) |
		sed -n 's/: test$//p' | { grep -F -- "$filter" || true; } |
		while read -r t; do
			secs=$(awk -F'\t' -v t="$t" '$1 == t { print $2 }' tests/vm-test-durations.tsv)
			printf '%s\t%s\t%s\n' "$bin" "$t" "${secs:-100000}"
		done
done | sort -t$'\t' -k3,3nr >"$plan"
if [ ! -s "$plan" ]; then
	echo "tests/vm-tests.sh: no lab or e2e test matches '$filter'" >&2
	exit 1
fi
echo "$(wc -l <"$plan") tests, $slots at a time"

run_one() {
	local bin=$1 t=$2 start=$SECONDS rc=0
	(cd "$root/tests" && "${exe[$bin]}" --include-ignored --exact "$t" --nocapture) >"$out/$t.log" 2>&1 || rc=$?
	local secs=$((SECONDS - start))
	printf '%s\t%s\n' "$t" "$secs" >>"$out/durations.tsv"
	if [ "$rc" = 0 ]; then
		printf 'ok      %s (%s, %d s)\n' "$t" "$bin" "$secs"
	else
		printf 'FAILED  %s (%s, %d s); its output:\n' "$t" "$bin" "$secs"
		sed 's/^/    /' "$out/$t.log"
		touch "$out/$t.failed"
	fi
}
export -f run_one
export root out
exe_env=$(declare -p exe)
export exe_env
# xargs starts a fresh bash per test; the associative array travels as text.
cut -f1,2 "$plan" | tr '\t' ' ' |
	xargs -P "$slots" -L 1 bash -c 'eval "$exe_env"; run_one "$0" "$1"'

failed=$(find "$out" -name '*.failed' | wc -l)
if [ "$failed" != 0 ]; then
	echo "tests/vm-tests.sh: $failed failed:" $(find "$out" -name '*.failed' -printf '%f\n' | sed 's/\.failed$//')
	exit 1
fi
echo "tests/vm-tests.sh: all $(wc -l <"$plan") passed"

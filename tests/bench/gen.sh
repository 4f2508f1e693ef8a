#!/usr/bin/env bash
# Writes the benchmark's inputs: N services on one VIP (ports 10001..), each
# with R tunnel real servers 10.1.0.1..R at weight 1, scheduler wrr, health
# checks off (these benchmarks measure programming; probing is measured in
# the health-check benchmark).
# usage: gen.sh OUTDIR [SERVICES] [REALSERVERS]
#   OUTDIR/vs.yaml         one VirtualService per port (multi-document YAML)
#   OUTDIR/vs-weight.yaml  the same with one destination's weight 1 -> 2
#                          (the first real server of the middle service)
#   OUTDIR/rules.ipvsadm   the identical table as `ipvsadm -R` input, also read
#                          by the moby/ipvs program
set -euo pipefail
out="${1:?usage: gen.sh OUTDIR [SERVICES] [REALSERVERS]}"
n="${2:-10000}"
r="${3:-10}"
vip=10.2.0.1
mkdir -p "$out"

awk -v n="$n" -v r="$r" -v vip="$vip" -v yaml="$out/vs.yaml" \
	-v yamlw="$out/vs-weight.yaml" -v rules="$out/rules.ipvsadm" '
BEGIN {
	changed = 10000 + int((n + 1) / 2)
	for (i = 1; i <= n; i++) {
		p = 10000 + i
		doc = "---\napiVersion: tunlb.io/v1alpha1\nkind: VirtualService\nmetadata:\n  name: p" p \
			"\nspec:\n  vip: " vip "\n  ports:\n  - name: p\n    port: " p \
			"\n  scheduler: wrr\n  healthCheck: {type: none}\n  backends:\n    static:\n"
		printf "%s", doc >yaml
		printf "%s", doc >yamlw
		printf "-A -t %s:%d -s wrr\n", vip, p >rules
		for (j = 1; j <= r; j++) {
			rip = "10.1.0." j
			printf "    - {address: %s, weight: 1}\n", rip >yaml
			printf "    - {address: %s, weight: %d}\n", rip, (p == changed && j == 1) ? 2 : 1 >yamlw
			printf "-a -t %s:%d -r %s:%d -i -w 1\n", vip, p, rip, p >rules
		}
	}
}'

#!/bin/sh
# Director elections through Kubernetes: two directors (director .181,
# director2 .182) select the seed's `web` (VIP .185); the operator gives it a
# VRRP election, exactly one director holds the VIP and the other keeps IPVS
# warm. A client probes the VIP every 50 ms while: the master's link is cut
# and comes back (preemption takes it back without failing a request), the
# master's agent stops (SIGTERM: priority 0, handover) and starts again, and
# the master's link is cut while no node reaches the API server, and
# programming fails on the master (it steps back) and works again. Then: a
# second VIP gets the other director as master (its adverts multicast); 20
# established connections survive a failover (IPVS sync); a split brain (the backup
# stops hearing adverts) and a VRID clash (keepalived multicasting web's
# virtual router id for another address) are conditions, and the clash
# moves nothing; bad election input is named. Outages are the longest gap between two answered probes.
. /scenarios/cluster.sh
# Every agent runs IPVS connection sync; only directors start the daemons.
AGENT_ENV="TUNLB_IPVS_SYNC_INTERFACE=eth0 TUNLB_IPVS_SYNC_ID=7"
cluster_setup
topo_add_ns director2 "$(topo_addr director2)" || exit 1
ns_exec director2 "$IP" route add default via 192.168.56.1
start_agent director2

DIRECTORS="director director2"
# holders VIP: the directors holding VIP on tunl0, space-separated.
holders() {
	_h=""
	for _n in $DIRECTORS; do
		ns_exec "$_n" "$IP" -o addr show dev tunl0 2>/dev/null | grep -q "inet $1/" && _h="$_h $_n"
	done
	echo "${_h# }"
}
held_by() { [ "$(holders "$1")" = "$2" ]; }
# other NODE: the other director.
other() { if [ "$1" = director ]; then echo director2; else echo director; fi; }
status_of() { k get tvs "$1" -o jsonpath="$2"; }
entry_state() { status_of "$1" "{.status.nodes[?(@.nodeName==\"$2\")].directorState}"; }

# web_like NAME VIP ELECTION: the seed's web under another name and VIP,
# with spec.directors.election ELECTION (flow style).
web_like() {
	cat <<YAML
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata: {name: $1}
spec:
  vip: $2
  ports: [{port: 80}]
  scheduler: wrr
  directors: {election: $3}
  backends: {static: [{address: 192.168.56.183}, {address: 192.168.56.184}]}
YAML
}

# The probe loop (probe-loop): an HTTP GET through a new connection every
# 50 ms from the client, 500 ms to answer; its last line sums it up.
probe_start() {
	rm -f /tmp/probe.stop
	"$IP" netns exec client probe-loop "$1:80" 50 500 /tmp/probe.stop >/tmp/probe.log 2>&1 &
	PROBE_PID=$!
}
probe_stop() {
	touch /tmp/probe.stop
	wait "$PROBE_PID"
}
# summary FIELD: a field of the probe loop's summary line.
summary() { tail -1 /tmp/probe.log | tr ' ' '\n' | sed -n "s/^$1=//p"; }
longest_gap() { summary longest_gap_ms; }
failed_probes() { summary failed; }
# report PHASE: prints the phase's probes and returns its longest gap.
report() {
	echo "$1: $(tail -1 /tmp/probe.log)" >&2
	grep ERR /tmp/probe.log | head -3 >&2
	longest_gap
}
# answered N: the probe loop has N answers so far.
answered() { [ "$(grep -c ' rs[12]$' /tmp/probe.log)" -ge "$1" ]; }
# settle: waits for 10 more answers, so the phase's log frames the event.
settle() {
	_have="$(grep -c ' rs[12]$' /tmp/probe.log)"
	wait_for 20 "10 more answers" answered "$((_have + 10))"
}
one_holder() { [ "$(holders "$VIP" | wc -w)" = 1 ]; }

# --- one holder, the other warm
k apply -f /examples/seed/01-web.yaml
lab_assert_eq "web Ready" 0 "$(k wait --for=condition=Ready tvs/web --timeout=120s >/dev/null 2>&1; echo $?)"
lab_assert_eq "the election has both directors" "director director2" \
	"$(status_of web '{.status.election.directors[*].nodeName}' | tr ' ' '\n' | sort | xargs)"
vrid="$(status_of web '{.status.election.virtualRouterId}')"
echo "web's virtual router id: $vrid"
lab_assert_eq "a virtual router id is assigned" yes "$([ "${vrid:-0}" -ge 1 ] && [ "$vrid" -le 255 ] && echo yes)"
lab_assert_eq "exactly one director holds the VIP" 0 "$(wait_for 30 "one holder" one_holder; echo $?)"
MASTER="$(holders "$VIP")"
case "$MASTER" in
*" "* | "")
	echo "holders of $VIP: '$MASTER'; the failover checks need exactly one"
	lab_summary
	exit 1
	;;
esac
BACKUP="$(other "$MASTER")"
echo "master $MASTER, backup $BACKUP"
lab_assert_eq "by the VIP's hash, director is web's master" director "$MASTER"
lab_assert_eq "the ACTIVE column names it" 0 \
	"$(wait_for 30 "activeDirector" sh -c "[ \"\$(kubectl get tvs web -o jsonpath='{.status.election.activeDirector}')\" = $MASTER ]"; echo $?)"
lab_assert_contains "kubectl get shows it" "$MASTER" "$(k get tvs web)"
lab_assert_eq "the master's entry: active" active "$(entry_state web "$MASTER")"
lab_assert_eq "the backup's entry: standby" 0 \
	"$(wait_for 30 "standby entry" sh -c "[ \"\$(kubectl get tvs web -o jsonpath='{.status.nodes[?(@.nodeName==\"$BACKUP\")].directorState}')\" = standby ]"; echo $?)"
for n in $DIRECTORS; do
	lab_assert_eq "$n keeps web's IPVS service programmed" 0 \
		"$(wait_for 30 "IPVS on $n" sh -c "$IP netns exec $n ipvsadm -Ln | grep -q 'TCP  $VIP:80'"; echo $?)"
done
# vrrp_master VALUE NODE: NODE's agent exports vrrp_master VALUE for web's router.
vrrp_master() {
	[ "$(ns_exec "$2" curl -s --max-time 5 127.0.0.1:9090/metrics | grep "^tunlb_agent_vrrp_master{" | grep "vrid=\"$vrid\"" | awk '{print $2}')" = "$1" ]
}
lab_assert_eq "the master's agent exports vrrp_master 1" 0 "$(wait_for 20 "vrrp_master 1" vrrp_master 1 "$MASTER"; echo $?)"
lab_assert_eq "the backup's agent exports vrrp_master 0" 0 "$(wait_for 20 "vrrp_master 0" vrrp_master 0 "$BACKUP"; echo $?)"
lab_assert_eq "web answers through the master" yes "$(alternates "$(requests 4 "http://$VIP/")")"
echo "--- kubectl get tvs"
k get tvs

# --- link cut on the master, and back (preemption)
probe_start "$VIP"
settle
"$IP" link set "v-$MASTER" down
lab_assert_eq "link cut: the backup takes the VIP" 0 "$(wait_for 20 "backup holds" held_by "$VIP" "$BACKUP"; echo $?)"
lab_assert_eq "link cut: it reports active" 0 \
	"$(wait_for 30 "backup active" sh -c "[ \"\$(kubectl get tvs web -o jsonpath='{.status.election.activeDirector}')\" = $BACKUP ]"; echo $?)"
settle
probe_stop
gap="$(report "master's link cut")"
takeover="$(ns_exec "$BACKUP" curl -s --max-time 5 127.0.0.1:9090/metrics | grep "^tunlb_agent_vrrp_last_takeover_seconds{" | grep "vrid=\"$vrid\"" | awk '{print $2}')"
echo "the backup's vrrp_last_takeover_seconds: $takeover"
lab_assert_eq "the backup's takeover time is exported, under 2 s" yes "$(awk -v t="$takeover" 'BEGIN { print (t != "" && t > 0 && t < 2) ? "yes" : "no" }')"
lab_assert_eq "link cut: the clients' outage stays under 2 s" yes "$([ "$gap" -lt 2000 ] && echo yes)"
probe_start "$VIP"
settle
"$IP" link set "v-$MASTER" up
lab_assert_eq "link back: the master takes the VIP back (preemption)" 0 "$(wait_for 20 "master holds" held_by "$VIP" "$MASTER"; echo $?)"
settle
probe_stop
report "master back (preemption)" >/dev/null
lab_assert_eq "preemption: no outage beyond one probe timeout" yes "$([ "$(longest_gap)" -lt 1000 ] && echo yes)"

# --- the master's agent stops (SIGTERM) and starts again
probe_start "$VIP"
settle
eval "pid=\$AGENT_PID_$MASTER"
kill -TERM "$pid"
wait "$pid" 2>/dev/null
lab_assert_eq "SIGTERM: the stopped agent removed the VIP" "" "$(holders "$VIP" | tr ' ' '\n' | grep -x "$MASTER")"
lab_assert_eq "SIGTERM: the backup holds the VIP" 0 "$(wait_for 10 "backup holds" held_by "$VIP" "$BACKUP"; echo $?)"
settle
probe_stop
gap="$(report "master's agent stopped")"
lab_assert_eq "SIGTERM: the handover's outage stays under 2 s" yes "$([ "$gap" -lt 2000 ] && echo yes)"
probe_start "$VIP"
start_agent "$MASTER"
lab_assert_eq "restarted: the master takes the VIP back" 0 "$(wait_for 60 "master holds" held_by "$VIP" "$MASTER"; echo $?)"
settle
probe_stop
report "master's agent restarted" >/dev/null
lab_assert_eq "the restart: no outage beyond one probe timeout" yes "$([ "$(longest_gap)" -lt 1000 ] && echo yes)"

# --- programming fails on the master: a port added to web whose IPVS
# service already exists there, created by someone else, which the agent
# leaves untouched; the master steps back (priority 1) and the backup,
# which programs the port, takes the VIP; once the other service is gone
# the master programs it and takes the VIP back
entry_of() { status_of web "{.status.nodes[?(@.nodeName==\"$1\")].$2}"; }
ns_exec "$MASTER" ipvsadm -A -t "$VIP:8080" -s rr
probe_start "$VIP"
settle
k patch tvs web --type=json -p '[{"op":"add","path":"/spec/ports/-","value":{"port":8080,"targetPort":80}}]'
lab_assert_eq "failed programming: the backup takes the VIP" 0 "$(wait_for 30 "backup holds" held_by "$VIP" "$BACKUP"; echo $?)"
lab_assert_eq "failed programming: the master's entry says why" 0 \
	"$(wait_for 30 "programmed false" sh -c "[ \"\$(kubectl get tvs web -o jsonpath='{.status.nodes[?(@.nodeName==\"$MASTER\")].programmed}')\" = false ]"; echo $?)"
lab_assert_contains "it names the service left untouched" "$VIP:8080 already exists and was not created by tunlb" "$(entry_of "$MASTER" message)"
lab_assert_eq "failed programming: the master's entry is standby" 0 \
	"$(wait_for 30 "master standby" sh -c "[ \"\$(kubectl get tvs web -o jsonpath='{.status.nodes[?(@.nodeName==\"$MASTER\")].directorState}')\" = standby ]"; echo $?)"
lab_assert_contains "the backup programs the new port" "TCP  $VIP:8080" "$(ns_exec "$BACKUP" ipvsadm -Ln)"
lab_assert_eq "the other service on the master is left as it was" "rr" \
	"$(ns_exec "$MASTER" ipvsadm -Ln -t "$VIP:8080" | awk '$1 == "TCP" {print $3}')"
settle
probe_stop
gap="$(report "programming failed on the master")"
lab_assert_eq "failed programming: the handover's outage stays under 2 s" yes "$([ "$gap" -lt 2000 ] && echo yes)"
probe_start "$VIP"
ns_exec "$MASTER" ipvsadm -D -t "$VIP:8080"
lab_assert_eq "programmed again: the master takes the VIP back" 0 "$(wait_for 30 "master holds" held_by "$VIP" "$MASTER"; echo $?)"
lab_assert_eq "programmed again: its entry says so" 0 \
	"$(wait_for 30 "programmed true" sh -c "[ \"\$(kubectl get tvs web -o jsonpath='{.status.nodes[?(@.nodeName==\"$MASTER\")].programmed}')\" = true ]"; echo $?)"
settle
probe_stop
report "the master programs again" >/dev/null
lab_assert_eq "taking back: no outage beyond one probe timeout" yes "$([ "$(longest_gap)" -lt 1000 ] && echo yes)"
k patch tvs web --type=json -p '[{"op":"remove","path":"/spec/ports/1"}]'
lab_assert_eq "the port removed again" 0 "$(wait_for 30 "8080 gone" sh -c "! ip netns exec $MASTER ipvsadm -Ln | grep -q ':8080'"; echo $?)"

# --- no node reaches the API server; the master's link is cut
api_outage_start
lab_assert_eq "API server cut off from the nodes" 0 "$?"
probe_start "$VIP"
settle
"$IP" link set "v-$MASTER" down
lab_assert_eq "API server away: the backup still takes the VIP" 0 "$(wait_for 20 "backup holds" held_by "$VIP" "$BACKUP"; echo $?)"
settle
probe_stop
gap="$(report "link cut without the API server")"
lab_assert_eq "API server away: the outage stays under 2 s" yes "$([ "$gap" -lt 2000 ] && echo yes)"
"$IP" link set "v-$MASTER" up
lab_assert_eq "API server away: the master takes it back" 0 "$(wait_for 20 "master holds" held_by "$VIP" "$MASTER"; echo $?)"
api_outage_end
lab_assert_eq "the reports catch up once the API server is back" 0 \
	"$(wait_for 60 "master active" sh -c "[ \"\$(kubectl get tvs web -o jsonpath='{.status.election.activeDirector}')\" = $MASTER ]"; echo $?)"

# --- a second VIP, its adverts multicast: the other director is its master
# (the backup counts VRRP packets to the group in a table of its own)
ns_exec director nft add table inet tunlbmcast
ns_exec director nft add chain inet tunlbmcast in '{ type filter hook input priority -10; }'
ns_exec director nft add rule inet tunlbmcast in ip daddr 224.0.0.18 ip protocol 112 counter
web_like web2 192.168.56.187 '{multicast: true}' | k apply -f -
lab_assert_eq "web2 Ready" 0 "$(k wait --for=condition=Ready tvs/web2 --timeout=120s >/dev/null 2>&1; echo $?)"
lab_assert_eq "web2's VIP is held by director2 alone" 0 "$(wait_for 30 "director2 holds .187" held_by 192.168.56.187 director2; echo $?)"
lab_assert_eq "web's VIP stays on director" director "$(holders "$VIP")"
lab_assert_eq "web2 answers" yes "$(alternates "$(requests 4 "http://192.168.56.187/")")"
vrid2="$(status_of web2 '{.status.election.virtualRouterId}')"
lab_assert_eq "another master, another virtual router id" yes "$([ -n "$vrid2" ] && [ "$vrid2" != "$vrid" ] && echo yes)"
mcast_packets() { ns_exec director nft list table inet tunlbmcast | sed -n 's/.*counter packets \([0-9]*\).*/\1/p'; }
lab_assert_eq "web2's adverts reach the backup through the VRRP group" yes "$([ "$(mcast_packets)" -gt 0 ] && echo yes)"
ns_exec director nft delete table inet tunlbmcast

# --- 20 established connections across a failover: the directors run the
# IPVS sync daemons (AGENT_ENV above), so the backup knows each connection
# and its real server before it takes the VIP
CHAT_VIP=192.168.56.189
CHAT_PORT=7000
cat <<YAML | k apply -f -
apiVersion: tunlb.io/v1alpha1
kind: VirtualService
metadata: {name: chat}
spec:
  vip: $CHAT_VIP
  ports: [{port: $CHAT_PORT}]
  scheduler: rr
  backends: {static: [{address: $RS1}, {address: $RS2}]}
YAML
for n in rs1 rs2; do
	"$IP" netns exec "$n" tcp-hold serve "$CHAT_PORT" >"/tmp/hold-server-$n" 2>&1 &
	LAB_PIDS="$LAB_PIDS $!"
done
lab_assert_eq "chat Ready" 0 "$(k wait --for=condition=Ready tvs/chat --timeout=120s >/dev/null 2>&1; echo $?)"
one_chat_holder() { [ "$(holders "$CHAT_VIP" | wc -w)" = 1 ]; }
lab_assert_eq "chat has one holder" 0 "$(wait_for 30 "one holder of chat" one_chat_holder; echo $?)"
CHAT_MASTER="$(holders "$CHAT_VIP")"
CHAT_BACKUP="$(other "$CHAT_MASTER")"
for n in $DIRECTORS; do
	lab_assert_contains "$n runs tunlb's sync daemons" "backup sync daemon (mcast=eth0" "$(ns_exec "$n" ipvsadm -L --daemon | tr '\n' ' ')"
done
# hold_status KEY: a value from tcp-hold's status file.
hold_status() { sed -n "s/.* $1=\([0-9]*\).*/\1/p; s/^$1=\([0-9]*\) .*/\1/p" /tmp/hold | head -n 1; }
hold_is() { [ "$(hold_status "$1")" = "$2" ]; }
replies_above() { [ "$(hold_status replies)" -gt "$1" ]; }
# synced NS: how many of the held connections NS's IPVS lists as ESTABLISHED.
synced() {
	_table=$(ns_exec "$1" ipvsadm -Lnc)
	_c=0
	for _p in $(sed -n 's/^ports=//p' /tmp/hold | tr ',' ' '); do
		echo "$_table" | grep -q "ESTABLISHED *$CLIENT:$_p *$CHAT_VIP:$CHAT_PORT" && _c=$((_c + 1))
	done
	echo "$_c"
}
synced_is() { [ "$(synced "$1")" = "$2" ]; }
"$IP" netns exec client tcp-hold hold "$CHAT_VIP:$CHAT_PORT" 20 200 /tmp/hold >/tmp/hold.log 2>&1 &
HOLD_PID=$!
lab_assert_eq "20 connections through chat's VIP" 0 "$(wait_for 30 "20 alive" hold_is alive 20; echo $?)"
wait_for 20 "a few lines on every connection" replies_above 100
lab_assert_eq "the backup director lists the 20 connections, synced" 0 "$(wait_for 20 "20 synced" synced_is "$CHAT_BACKUP" 20; echo $?)"
_before="$(hold_status replies)"
"$IP" link set "v-$CHAT_MASTER" down
lab_assert_eq "link cut: the backup takes chat's VIP" 0 "$(wait_for 20 "backup holds chat" held_by "$CHAT_VIP" "$CHAT_BACKUP"; echo $?)"
wait_for 20 "every connection answers again" replies_above "$((_before + 200))"
cat /tmp/hold
lab_assert_eq "with sync: 20 of 20 connections alive after the failover" 20 "$(hold_status alive)"
lab_assert_eq "with sync: 0 of 20 reset" 0 "$(hold_status reset)"
echo "measured: longest wait for an answer across the failover: $(hold_status max_gap_ms) ms"
"$IP" link set "v-$CHAT_MASTER" up
lab_assert_eq "link back: the master takes chat back" 0 "$(wait_for 20 "master holds chat" held_by "$CHAT_VIP" "$CHAT_MASTER"; echo $?)"
_before="$(hold_status replies)"
wait_for 20 "more answers after the master is back" replies_above "$((_before + 200))"
lab_assert_eq "with sync: 20 of 20 still alive after failing back" 20 "$(hold_status alive)"
kill "$HOLD_PID"
wait "$HOLD_PID" 2>/dev/null
k delete tvs chat --timeout=60s

# --- a split brain: the backup stops hearing VRRP (its input drops
# protocol 112), takes the VIP, and its adverts reach a master that stays
cond() { status_of "$1" "{.status.conditions[?(@.type==\"ElectionConflict\")].$2}"; }
conflict_is() { [ "$(cond "$1" status)/$(cond "$1" reason)" = "$2" ]; }
metric_is() {
	[ "$(ns_exec "$3" curl -s --max-time 5 127.0.0.1:9090/metrics | grep "^tunlb_agent_$1{" | grep "vrid=\"$vrid\"" | awk '{print $2}')" = "$2" ]
}
lab_assert_eq "no conflict to begin with" 0 "$(wait_for 30 "ElectionConflict False" conflict_is web False/NoConflict; echo $?)"
ns_exec "$BACKUP" nft add table inet tunlbtest
ns_exec "$BACKUP" nft add chain inet tunlbtest in '{ type filter hook input priority -10; }'
ns_exec "$BACKUP" nft add rule inet tunlbtest in ip protocol 112 drop
lab_assert_eq "deaf backup: both directors hold the VIP" 0 "$(wait_for 20 "two holders" held_by "$VIP" "director director2"; echo $?)"
lab_assert_eq "split brain: a condition" 0 "$(wait_for 30 "SplitBrain" conflict_is web True/SplitBrain; echo $?)"
lab_assert_contains "it names the director that hears it and the other master" \
	"director $MASTER: split brain in virtual router $vrid: $(topo_addr "$BACKUP") keeps advertising as master" "$(cond web message)"
lab_assert_eq "split brain: the master's metric" 0 "$(wait_for 20 "vrrp_split_brain 1" metric_is vrrp_split_brain 1 "$MASTER"; echo $?)"
ns_exec "$BACKUP" nft delete table inet tunlbtest
lab_assert_eq "the backup hears again: it lets go" 0 "$(wait_for 20 "master alone" held_by "$VIP" "$MASTER"; echo $?)"
lab_assert_eq "split brain over: the condition clears" 0 "$(wait_for 30 "NoConflict" conflict_is web False/NoConflict; echo $?)"
lab_assert_eq "split brain over: the metric clears" 0 "$(wait_for 20 "vrrp_split_brain 0" metric_is vrrp_split_brain 0 "$MASTER"; echo $?)"

# --- keepalived in the client's namespace, multicasting adverts for web's
# virtual router id and another address at a higher priority: reported on
# both directors, ignored (nothing moves, no request fails)
mkdir -p /etc/keepalived /run/keepalived
cat >/tmp/ka-clash.conf <<CONF
global_defs {
	router_id clash
	vrrp_version 3
}
vrrp_instance CLASH {
	state MASTER
	interface eth0
	virtual_router_id $vrid
	priority 250
	advert_int 0.1
	virtual_ipaddress {
		192.168.56.199/32 dev eth0
	}
}
CONF
since_before="$(status_of web "{.status.nodes[?(@.nodeName==\"$MASTER\")].directorSince}")"
probe_start "$VIP"
settle
"$IP" netns exec client /usr/sbin/keepalived --dont-fork --log-console --no-syslog --vrrp \
	-f /tmp/ka-clash.conf -p /run/keepalived/clash.pid -r /run/keepalived/clash-vrrp.pid >/tmp/ka-clash.log 2>&1 &
KA_PID=$!
lab_assert_eq "VRID clash: a condition" 0 "$(wait_for 30 "VirtualRouterIdClash" conflict_is web True/VirtualRouterIdClash; echo $?)"
lab_assert_contains "it names the speaker, the id and its address" \
	"$CLIENT, not a member of virtual router $vrid, advertises the same id for [192.168.56.199]" "$(cond web message)"
for n in $DIRECTORS; do
	lab_assert_eq "VRID clash: $n's metric" 0 "$(wait_for 20 "vrrp_id_clash 1" metric_is vrrp_id_clash 1 "$n"; echo $?)"
done
lab_assert_contains "both directors report it" "director $BACKUP: $CLIENT" "$(cond web message)"
settle
lab_assert_eq "VRID clash: the VIP stays where it was" "$MASTER" "$(holders "$VIP")"
lab_assert_eq "VRID clash: no transition" "$since_before" \
	"$(status_of web "{.status.nodes[?(@.nodeName==\"$MASTER\")].directorSince}")"
kill -TERM "$KA_PID"
wait "$KA_PID" 2>/dev/null
lab_assert_eq "keepalived gone: the condition clears" 0 "$(wait_for 30 "NoConflict" conflict_is web False/NoConflict; echo $?)"
probe_stop
report "a clashing VRRP speaker" >/dev/null
lab_assert_eq "VRID clash: no request failed" 0 "$(failed_probes)"

# --- bad election input
out="$(web_like bad-interval 192.168.56.188 '{advertIntervalMs: 15}' | kubectl apply -f - 2>&1)"
lab_assert_contains "an advert interval not in centiseconds is refused" "must be a multiple of 10" "$out"
web_like bad-preferred 192.168.56.188 '{preferredNode: rs1}' | k apply -f -
lab_assert_eq "a preferred node that is not a director: not accepted" 0 \
	"$(wait_for 30 "PreferredNodeNotDirector" sh -c "kubectl get tvs bad-preferred -o jsonpath='{.status.conditions[?(@.type==\"Accepted\")].reason}' | grep -q PreferredNodeNotDirector"; echo $?)"
lab_assert_contains "the message names the field and the node" "spec.directors.election.preferredNode: node rs1 is not one of" \
	"$(status_of bad-preferred '{.status.conditions[?(@.type=="Accepted")].message}')"
lab_assert_eq "nothing of it on the directors" "" "$(holders 192.168.56.188)"

k delete tvs --all --timeout=90s
lab_assert_eq "no VIP left on either director" "" "$(wait_for 30 "VIPs gone" sh -c "[ -z \"\$(holders $VIP)\" ] && [ -z \"\$(holders 192.168.56.187)\" ]" >/dev/null; holders "$VIP"; holders 192.168.56.187)"
for n in director director2; do echo "--- agent $n log (election lines)"; grep -i "vrrp\|VIP" "/tmp/agent-$n.log" | tail -12; done
topo_cleanup
lab_summary

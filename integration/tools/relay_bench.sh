#!/usr/bin/env bash
# Relayed against direct, in a namespace lab (issue 14's relay figures):
# a `partybus dht` (a relay) on vps (203.0.113.10), h1 and h2 behind two NAT
# routers (r1 203.0.113.1, r2 203.0.113.2). Cone NATs: h1 and h2 punch a
# direct path. Symmetric NATs: they stay relayed through vps. Runs
# `partybus bench throughput` (16 B and 1 KiB for 4 s) and `bench latency`
# (2000 round trips) from h2 to h1 with `--role`, and reads the relay's CPU
# time from /proc. Root only; everything stays in the namespaces it makes,
# which it removes at the end.
#
#   integration/tools/relay_bench.sh [BIN] [RELAY OPTIONS...]
#   e.g. integration/tools/relay_bench.sh target/release/partybus --relay-client-rate 1GB/s --relay-total-rate 2GB/s
set -euo pipefail
B=$(realpath "${1:-target/release/partybus}"); shift || true
RELAYOPTS=("$@")
P=rb$$
W=$(mktemp -d)
cleanup() {
  pkill -f "$W" 2>/dev/null || true
  for n in inet vps r1 r2 h1 h2; do ip netns del $P-$n 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
lab() { # NAT type for both routers: cone | sym
  for n in inet vps r1 r2 h1 h2; do ip netns del $P-$n 2>/dev/null || true; done
  for n in inet vps r1 r2 h1 h2; do ip netns add $P-$n; ip -n $P-$n link set lo up; done
  ip -n $P-inet link add br0 type bridge; ip -n $P-inet link set br0 up
  ip netns exec $P-inet sysctl -qw net.bridge.bridge-nf-call-iptables=0 2>/dev/null || true
  local i=0
  for spec in vps:eth0:203.0.113.10 r1:wan:203.0.113.1 r2:wan:203.0.113.2; do
    IFS=: read -r ns ifn ip <<<"$spec"; i=$((i+1))
    ip link add $P-x$i type veth peer name $ifn netns $P-$ns
    ip link set $P-x$i netns $P-inet; ip -n $P-inet link set $P-x$i master br0 up
    ip -n $P-$ns addr add $ip/24 dev $ifn; ip -n $P-$ns link set $ifn up
  done
  local masq=masquerade; [ "$1" = sym ] && masq="masquerade fully-random"
  for k in 1 2; do
    ip link add lan netns $P-r$k type veth peer name eth0 netns $P-h$k
    ip -n $P-r$k addr add 198.18.$k.1/24 dev lan; ip -n $P-r$k link set lan up
    ip -n $P-h$k addr add 198.18.$k.2/24 dev eth0; ip -n $P-h$k link set eth0 up
    ip -n $P-h$k route add default via 198.18.$k.1
    ip netns exec $P-r$k sysctl -qw net.ipv4.ip_forward=1
    ip netns exec $P-r$k nft -f - <<NFT
table inet r {
  chain input { type filter hook input priority filter; policy drop; iifname "lo" accept; ct state established,related accept; iifname "lan" accept; }
  chain forward { type filter hook forward priority filter; policy drop; ct state established,related accept; iifname "lan" oifname "wan" accept; }
  chain post { type nat hook postrouting priority srcnat; policy accept; oifname "wan" ip saddr 198.18.$k.0/24 $masq; }
}
NFT
  done
}
cd "$W"
"$B" hood create lab >/dev/null
for n in h1 h2; do "$B" peer create lab $n >/dev/null; done
id() { echo "--ca lab.crt --cert lab.$1.crt --key lab.$1.key"; }
COMMON="--port 4816 --allow-non-global --no-mdns --dht 203.0.113.10:4000"
for nat in cone sym; do
  lab $nat
  path=$([ $nat = cone ] && echo direct || echo relayed)
  ip netns exec $P-vps "$B" dht --port 4000 --allow-non-global "${RELAYOPTS[@]}" >vps.out 2>vps.err &
  VPS=$!
  sleep 1
  for sc in throughput latency; do
    if [ $sc = throughput ]; then R=receiver; E=emitter; X="--payload 16,1024 --duration 4s"; else R=ponger; E=pinger; X="--payload 16 --count 2000"; fi
    ip netns exec $P-h1 env RUST_LOG=warn "$B" bench $sc --role $R $(id h1) $COMMON --json --timeout 30s >r.out 2>r.err &
    RP=$!
    sleep 1
    T0=$(awk '{print $14+$15}' /proc/$VPS/stat)
    ip netns exec $P-h2 env RUST_LOG=warn "$B" bench $sc --role $E $(id h2) $COMMON $X --json --timeout 30s >e.out 2>e.err
    T1=$(awk '{print $14+$15}' /proc/$VPS/stat)
    wait $RP 2>/dev/null || true
    # One JSON object per result, with the path and the relay's CPU seconds.
    grep '"result"' e.out | python3 -c '
import json, sys
for l in sys.stdin:
    r = json.loads(l)["result"]
    r["path"] = sys.argv[1]; r["relay_cpu_s"] = int(sys.argv[2]) / 100.0
    print(json.dumps(r))' "$path" $((T1 - T0))
  done
  kill $VPS; wait $VPS 2>/dev/null || true
done

#!/usr/bin/env bash
# Compare the TC fast-path prototype with kernel VXLAN and weft, interleaved,
# in a two-node weftlab cluster; then check its datagrams on the wire and
# against a weft peer. Needs root, iperf3, ping, ethtool and tcpdump.
#   sudo bench/experiments/tcfast/run.sh            # 3 rounds × 5 s
#   ROUNDS=5 SECONDS_PER_TEST=10 sudo bench/experiments/tcfast/run.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
rounds=${ROUNDS:-3}
secs=${SECONDS_PER_TEST:-5}
for c in iperf3 ping ethtool tcpdump; do
  command -v $c >/dev/null || { echo "run.sh needs $c: apt-get install -y iperf3 iputils-ping ethtool tcpdump"; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "run.sh needs root (network namespaces)"; exit 1; }

work=$(mktemp -d /tmp/tcfast.XXXXXX)
pids=()
labpid=
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "$labpid" ]; then kill -INT "$labpid" 2>/dev/null || true; wait "$labpid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

(cd "$root" && make -s build >/dev/null)
(cd "$here" && go build -o "$work/tcfast" .)
"$root/bin/weftlab" up -nodes 2 -weft "$root/bin/weft" >"$work/lab.out" 2>&1 &
labpid=$!
for _ in $(seq 100); do grep -q 'Ctrl-C tears it down' "$work/lab.out" && break; sleep 0.2; done
grep -q 'Ctrl-C tears it down' "$work/lab.out" || { cat "$work/lab.out"; exit 1; }
read -r N0 U0 P0 < <(awk '$1=="n0"{print $2, $3, $4}' "$work/lab.out")
read -r N1 U1 P1 < <(awk '$1=="n1"{print $2, $3, $4}' "$work/lab.out")
W0=${P0%/*}; W1=${P1%/*}
M0=$(ip -n "$N0" -br link show eth0 | awk '{print $3}')
M1=$(ip -n "$N1" -br link show eth0 | awk '{print $3}')

# Kernel VXLAN as flannel's vxlan backend sets it up, on addresses of its own.
ip -n "$N0" link add vx0 type vxlan id 7 remote "$U1" local "$U0" dstport 4790 dev eth0
ip -n "$N1" link add vx0 type vxlan id 7 remote "$U0" local "$U1" dstport 4790 dev eth0
ip -n "$N0" addr add 198.19.250.1/24 dev vx0
ip -n "$N1" addr add 198.19.250.2/24 dev vx0
# The prototype: a pod address on a bridge (as cni0 holds it), the peer's
# subnet routed to the TUN bx0, port 8289 so that it runs beside weft's 8285.
: >"$work/tc0.log"; : >"$work/tc1.log"
ip netns exec "$N0" "$work/tcfast" -dev bx0 -port 8289 -local "$U0" -peer "$U1" -peer-mac "$M1" -peer-net 198.19.232.0/24 >"$work/tc0.log" 2>&1 &
pids+=($!)
ip netns exec "$N1" "$work/tcfast" -dev bx0 -port 8289 -local "$U1" -peer "$U0" -peer-mac "$M0" -peer-net 198.19.231.0/24 >"$work/tc1.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do grep -q ready "$work/tc0.log" && grep -q ready "$work/tc1.log" && break; sleep 0.1; done
grep -q ready "$work/tc0.log" && grep -q ready "$work/tc1.log" || { cat "$work"/tc?.log; exit 1; }
for s in "$N0 231 232" "$N1 232 231"; do
  set -- $s
  ip -n "$1" link set vx0 up
  ip -n "$1" link add bp0 type bridge
  ip -n "$1" addr add "198.19.$2.1/24" dev bp0
  ip -n "$1" link set bp0 up
  ip -n "$1" link set bx0 mtu 1472 up
  ip -n "$1" route add "198.19.$3.0/24" dev bx0 src "198.19.$2.1"
done

busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
hz=$(getconf CLK_TCK)
server() { ip netns exec "$N1" iperf3 -s -1 -B "$1" >/dev/null 2>&1 & sp=$!; sleep 0.3; }
tcp() { # dst src streams → "Gb/s s/GB"
  server "$1"; local a b out
  a=$(busy)
  out=$(ip netns exec "$N0" iperf3 -c "$1" -B "$2" -t "$secs" -P "$3" -f g)
  b=$(busy); wait "$sp"
  echo "$out" | awk -v a="$a" -v b="$b" -v hz="$hz" '
    / sender$/ {gb=$(NF-5)} / receiver$/ {r=$(NF-2)}
    END {printf "%s %.3f\n", r, (b-a)/hz/gb}'
}
udp64() { # dst src → kpps delivered
  server "$1"
  ip netns exec "$N0" iperf3 -u -l 64 -b 0 -c "$1" -B "$2" -t "$secs" | awk -v s="$secs" '
    / receiver$/ {split($(NF-2), lt, "/"); printf "%.1f\n", (lt[2]-lt[1])/s/1000}'
  wait "$sp"
}
ping50() { ip netns exec "$N0" ping -i 0.01 -c 300 -I "$2" "$1" | sed -n 's/.*time=\([0-9.]*\).*/\1/p' | sort -n | awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}'; }

: >"$work/samples"
for r in $(seq "$rounds"); do
  for p in "tcfast 198.19.232.1 198.19.231.1" "vxlan 198.19.250.2 198.19.250.1" "weft $W1 $W0"; do
    set -- $p
    read -r g cpu < <(tcp "$2" "$3" 1)
    read -r g8 _ < <(tcp "$2" "$3" 8)
    k=$(udp64 "$2" "$3")
    l=$(ping50 "$2" "$3")
    echo "$r $1 $g $g8 $k $l $cpu" | tee -a "$work/samples"
  done
done

echo
echo "medians over $rounds rounds × ${secs} s (ratio: median of per-round ratios to VXLAN)"
printf "%-8s %-20s %-20s %-20s %-20s %-18s\n" path "TCP 1 stream Gb/s" "TCP 8 streams Gb/s" "UDP 64 B kpps" "ping p50 ms" "all CPU s/GB"
for path in tcfast vxlan weft; do
  line=$path
  for col in 3 4 5 6 7; do
    vals=$(awk -v p="$path" -v c="$col" '$2==p{print $c}' "$work/samples" | sort -g)
    ratios=$(awk -v p="$path" -v c="$col" '$2=="vxlan"{v[$1]=$c} $2==p{x[$1]=$c} END{for(r in x) print x[r]/v[r]}' "$work/samples" | sort -g)
    med() { awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}'; }
    line="$line|$(echo "$vals" | med) ($(printf '%.2f' "$(echo "$ratios" | med)")×)"
  done
  echo "$line" | awk -F'|' '{printf "%-8s %-20s %-20s %-20s %-20s %-18s\n", $1, $2, $3, $4, $5, $6}'
done

# The wire: force segmentation and checksums in software on node 0 (as a NIC
# without tunnel offloads would), capture what node 1 receives, check every
# datagram carries one whole IPv4 packet with valid checksums.
ip netns exec "$N0" ethtool -K eth0 tx off tx-udp_tnl-segmentation off tx-udp_tnl-csum-segmentation off >/dev/null 2>&1
wire() { # dst src port pcap
  server "$1"
  ip netns exec "$N1" timeout 5 tcpdump -nn -i eth0 -c 2000 -w "$4" src "$U0" and udp port "$3" 2>/dev/null & tp=$!
  sleep 0.5
  ip netns exec "$N0" iperf3 -c "$1" -B "$2" -t 2 >/dev/null
  wait "$sp"; wait "$tp" || true
}
echo
wire 198.19.232.1 198.19.231.1 8289 "$work/wire.pcap"
echo -n "wire, tcfast → tcfast: "; "$work/tcfast" -check-pcap "$work/wire.pcap" -port 8289
# Mixed: node 0's prototype encapsulates for weft's subnet on udp0 (port 8285)
# and decapsulates what node 1's weft sends back; node 1 runs weft alone.
: >"$work/tcm.log"
ip netns exec "$N0" "$work/tcfast" -create-tun=false -dev udp0 -port 8285 -local "$U0" -peer "$U1" -peer-mac "$M1" -peer-net "$(echo "$P1" | sed 's/\.[0-9]*\//.0\//')" >"$work/tcm.log" 2>&1 &
mp=$!; pids+=($mp)
for _ in $(seq 50); do grep -q ready "$work/tcm.log" && break; sleep 0.1; done
grep -q ready "$work/tcm.log" || { cat "$work/tcm.log"; exit 1; }
txpackets() { curl -s "http://$1:8471/status" | tr -d ' \n' | sed -n 's/.*"txPackets":\([0-9]*\).*/\1/p'; }
tx0=$(txpackets "$U0")
wire "$W1" "$W0" 8285 "$work/mixed.pcap"
echo -n "wire, tcfast → weft:    "; "$work/tcfast" -check-pcap "$work/mixed.pcap" -port 8285
echo "weft on node 0 sent $(($(txpackets "$U0") - tx0)) datagrams itself during the mixed run (the rest left through the prototype)"
drops=$(curl -s "http://$U1:8471/status" | tr -d ' \n' | sed -n 's/.*"drops":{\([^}]*\)}.*/\1/p' | tr ',' '\n' | { grep -v ':0$' || true; } | tr '\n' ' ')
echo "weft on node 1 (source check on), drops counted: ${drops:-none}"
kill "$mp"

#!/usr/bin/env bash
# Make the seed corpus from a real kernel: configure varied IPVS services in a fresh
# network namespace, send a little traffic through one, and capture the kernel's
# replies with fuzz/capture.py. Needs root and IPVS, so run it in the project's VM:
#
#   tests/vm/vm-run -- bash fuzz/capture-vm.sh build/vm/capture
#   cp build/vm/capture/*.bin tests/fuzz/corpus/ && cp build/vm/capture/manifest.json tests/fuzz/corpus.json
#
# Every address is in a documentation or benchmark range, inside the namespace.
set -euo pipefail
[ -n "${CAPTURE_TRACE:-}" ] && set -x
out=${1:?usage: $0 OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
ns=fuzzcap$$
ip netns add "$ns"
trap 'kill $(cat /tmp/$ns-httpd.pid 2>/dev/null) 2>/dev/null; ip netns del $ns' EXIT
x() { ip netns exec "$ns" "$@"; }
adm() { x ipvsadm "$@"; }
# optional: a feature this kernel or ipvsadm lacks must not stop the capture
try() { "$@" 2>/dev/null || echo "capture-vm: skipped: $*" >&2; }

x ip link set lo up
x ip link add dum0 type dummy
x ip link set dum0 up
x ip addr add 198.18.30.1/32 dev dum0
x ip addr add 2001:db8:30::1/128 dev dum0 nodad

# TCP, round robin, masquerading, three weights and thresholds
adm -A -t 192.0.2.10:80 -s rr
adm -a -t 192.0.2.10:80 -r 198.51.100.1:8080 -m -w 1
adm -a -t 192.0.2.10:80 -r 198.51.100.2:8080 -m -w 2 -x 100 -y 50
adm -a -t 192.0.2.10:80 -r 198.51.100.3:8081 -m -w 0           # quiesced
# UDP, weighted rr, direct routing, one-packet scheduling
try adm -A -u 192.0.2.10:53 -s wrr -o
adm -L -u 192.0.2.10:53 >/dev/null 2>&1 || adm -A -u 192.0.2.10:53 -s wrr
adm -a -u 192.0.2.10:53 -r 192.0.2.53 -g -w 5
adm -a -u 192.0.2.10:53 -r 192.0.2.54 -g -w 65535
# UDP on the same address and port as TCP would be: distinct service
adm -A -u 192.0.2.10:80 -s lc
# SCTP, source hashing with flags, tunnelling
try adm -A --sctp-service 192.0.2.11:5060 -s sh -b sh-fallback,sh-port
adm -L --sctp-service 192.0.2.11:5060 >/dev/null 2>&1 || adm -A --sctp-service 192.0.2.11:5060 -s sh
adm -a --sctp-service 192.0.2.11:5060 -r 198.51.100.20 -i
try adm -a --sctp-service 192.0.2.11:5060 -r 198.51.100.21 -i --tun-type gue --tun-port 6080
# swarm-like fwmark services: several marks, one without destinations, many destinations
adm -A -f 256 -s rr
for i in $(seq 2 13); do adm -a -f 256 -r 10.255.0.$i -m -w $((i % 4 + 1)); done
adm -A -f 257 -s rr
adm -a -f 257 -r 10.255.1.2 -m
adm -A -f 4294967295 -s wlc                                       # largest mark, no destinations
# persistent, with a netmask and a long scheduler name
adm -A -t 192.0.2.12:443 -s wlc -p 600 -M 255.255.255.0
adm -a -t 192.0.2.12:443 -r 198.51.100.30:443 -m -x 65535 -y 1
try adm -A -t 192.0.2.13:8443 -s lblcr -p
try adm -a -t 192.0.2.13:8443 -r 198.51.100.31 -g
# SIP persistence engine (PE name attribute)
try adm -A -u 192.0.2.14:5060 -s rr -p 30 --pe sip
try adm -a -u 192.0.2.14:5060 -r 198.51.100.40 -m
# IPv6: TCP persistent with a prefix, IPv6 fwmark, mixed families (IPv4 real server
# behind an IPv6 VIP needs tunnelling)
adm -A -t '[2001:db8::1]:443' -s wlc -p 300 -M 64
adm -a -t '[2001:db8::1]:443' -r '[2001:db8:1::1]:8443' -m -w 3
adm -a -t '[2001:db8::1]:443' -r '[2001:db8:1::2]:8443' -m -w 7 -x 1000 -y 10
adm -A -f 256 -6 -s rr
adm -a -f 256 -6 -r 2001:db8:2::1 -m
adm -A -u '[2001:db8::2]:53' -s rr
try adm -a -u '[2001:db8::2]:53' -r 198.51.100.50 -i
adm -A --sctp-service '[2001:db8::3]:9899' -s rr
# real traffic: a local real server behind a local VIP (counters and rates non-zero)
adm -A -t 198.18.30.1:8080 -s rr
adm -a -t 198.18.30.1:8080 -r 127.0.0.1:8080 -m
mkdir -p /tmp/$ns-www && echo hello > /tmp/$ns-www/index.html
x busybox httpd -p 8080 -h /tmp/$ns-www -f & echo $! > /tmp/$ns-httpd.pid
sleep 1
for i in $(seq 1 20); do x curl -s --max-time 5 -o /dev/null http://198.18.30.1:8080/ || true; done
sleep 3   # let the rate estimator see the traffic

adm -Ln --stats --exact >&2
x python3 "$here/capture.py" "$out"

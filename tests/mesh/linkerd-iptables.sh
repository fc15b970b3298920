#!/bin/sh
# Writes, in the current network namespace (a pod), the nat rules Linkerd's
# proxy-init writes (linkerd2-proxy-init, iptables/iptables.go): inbound TCP
# REDIRECTed to the proxy's 4143 except the ports it ignores (its own 4190 tap and
# 4191 admin, 4567/4568 for its own use, plus -i PORTS), the app's outbound TCP
# REDIRECTed to 4140 except the proxy's own (uid 2102), anything leaving through
# lo, and the ignored outbound ports (4567, 4568, plus -o PORTS).
#
# usage: linkerd-iptables.sh [-i INBOUND_PORTS_TO_IGNORE] [-o OUTBOUND_PORTS_TO_IGNORE]
set -eu
in_ex="4190,4191,4567,4568"; out_ex="4567,4568"
while getopts "i:o:" opt; do
    case $opt in
        i) in_ex="$in_ex,$OPTARG" ;;
        o) out_ex="$out_ex,$OPTARG" ;;
        *) exit 2 ;;
    esac
done
t="iptables -w -t nat"
$t -N PROXY_INIT_REDIRECT
$t -A PROXY_INIT_REDIRECT -p tcp --match multiport --dports "$in_ex" -j RETURN
$t -A PROXY_INIT_REDIRECT -p tcp -j REDIRECT --to-port 4143
$t -A PREROUTING -j PROXY_INIT_REDIRECT
$t -N PROXY_INIT_OUTPUT
$t -A PROXY_INIT_OUTPUT -m owner --uid-owner 2102 -j RETURN
$t -A PROXY_INIT_OUTPUT -o lo -j RETURN
$t -A PROXY_INIT_OUTPUT -p tcp --match multiport --dports "$out_ex" -j RETURN
$t -A PROXY_INIT_OUTPUT -p tcp -j REDIRECT --to-port 4140
$t -A OUTPUT -j PROXY_INIT_OUTPUT

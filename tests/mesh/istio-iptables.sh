#!/bin/sh
# Writes, in the current network namespace, the nat rules istio-iptables writes for
# a sidecar (shapes from istio/istio tools/istio-iptables/pkg/capture/testdata/*.golden):
# outbound TCP to ISTIO_REDIRECT (15001), inbound TCP to ISTIO_IN_REDIRECT (15006),
# the proxy's own traffic (uid/gid 1337) and its 127.0.0.6 passthrough skipped, the
# mesh's own inbound ports (15008 HBONE, 15090, 15021, 15020) not captured.
#
# usage: istio-iptables.sh [-o EXCLUDED_OUTBOUND_PORTS] [-i EXCLUDED_INBOUND_PORTS] [-6]
#   ports are comma-separated (traffic.sidecar.istio.io/excludeOutboundPorts,
#   excludeInboundPorts); -6 writes the same rules with ip6tables too.
set -eu
out_ex=""; in_ex="15090,15021,15020"; v6=0
while getopts "o:i:6" opt; do
    case $opt in
        o) out_ex=$OPTARG ;;
        i) in_ex="$in_ex,$OPTARG" ;;
        6) v6=1 ;;
        *) exit 2 ;;
    esac
done
rules() { # rules IPTABLES LOOPBACK PASSTHROUGH
    t="$1 -w -t nat"
    lo=$2; pt=$3
    $t -N ISTIO_INBOUND
    $t -N ISTIO_REDIRECT
    $t -N ISTIO_IN_REDIRECT
    $t -N ISTIO_OUTPUT
    $t -A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
    $t -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
    $t -A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
    $t -A PREROUTING -p tcp -j ISTIO_INBOUND
    for p in $(echo "$in_ex" | tr ',' ' '); do
        $t -A ISTIO_INBOUND -p tcp --dport "$p" -j RETURN
    done
    $t -A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
    $t -A OUTPUT -p tcp -j ISTIO_OUTPUT
    if [ -n "$out_ex" ]; then
        $t -A ISTIO_OUTPUT -p tcp -m multiport --dports "$out_ex" -j RETURN
    fi
    $t -A ISTIO_OUTPUT -o lo -s "$pt" -j RETURN
    $t -A ISTIO_OUTPUT -o lo ! -d "$lo" -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
    $t -A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
    $t -A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
    $t -A ISTIO_OUTPUT -o lo ! -d "$lo" -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
    $t -A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
    $t -A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
    $t -A ISTIO_OUTPUT -d "$lo" -j RETURN
    $t -A ISTIO_OUTPUT -j ISTIO_REDIRECT
}
rules iptables 127.0.0.1/32 127.0.0.6/32
if [ "$v6" = 1 ]; then
    rules ip6tables ::1/128 ::6/128
fi

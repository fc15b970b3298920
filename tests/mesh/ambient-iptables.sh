#!/bin/sh
# Writes, in the current network namespace (a pod enrolled in Istio ambient), the
# rules istio-cni writes in-pod (istio/istio cni/pkg/iptables, testdata/default.golden):
# the app's outbound TCP REDIRECTed to ztunnel's 15001, inbound TCP other than HBONE
# (15008) REDIRECTed to 15006, ztunnel's own sockets (mark 0x539) left alone, and the
# return path of ztunnel's transparent (client-address) connections: connmark 0x111
# and a policy route that delivers marked replies locally. The kubelet's probe source
# 169.254.7.127 is accepted without capture.
#
# usage: ambient-iptables.sh
set -eu
ip=iptables
$ip -w -t mangle -N ISTIO_PRERT
$ip -w -t mangle -N ISTIO_OUTPUT
$ip -w -t mangle -A PREROUTING -j ISTIO_PRERT
$ip -w -t mangle -A OUTPUT -j ISTIO_OUTPUT
$ip -w -t mangle -A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
$ip -w -t mangle -A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
$ip -w -t nat -N ISTIO_PRERT
$ip -w -t nat -N ISTIO_OUTPUT
$ip -w -t nat -A OUTPUT -j ISTIO_OUTPUT
$ip -w -t nat -A PREROUTING -j ISTIO_PRERT
$ip -w -t nat -A ISTIO_PRERT -s 169.254.7.127 -p tcp -m tcp -j ACCEPT
$ip -w -t nat -A ISTIO_OUTPUT -d 169.254.7.127 -p tcp -m tcp -j ACCEPT
$ip -w -t nat -A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006
$ip -w -t nat -A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp --dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053
$ip -w -t nat -A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT
$ip -w -t nat -A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT
$ip -w -t nat -A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
ip rule add fwmark 0x111/0xfff pref 32764 lookup 100
ip route add local 0.0.0.0/0 dev lo table 100

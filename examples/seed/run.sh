#!/usr/bin/env bash
# The seed example scenario on the mesh's own data path: example-service-a,
# example-service-b and example-service-c in namespace `default` as pods with Istio
# sidecars (network namespaces on one node bridge, the nat rules istio-iptables
# writes, an Envoy stand-in that speaks Istio mutual TLS between them), a
# `legacy-client` pod without a sidecar, the Istio policies of istio-policies.yaml
# (plus example-service-c.yaml and inventory.yaml), and traffic that shows every
# verdict:
#
#   b -> a:8080       through both sidecars, Istio mutual TLS      compliant
#   b -> a:9090       a port both pods exclude from capture        violation
#   legacy -> a:8080  plaintext, refused by a's STRICT sidecar     rejected
#   legacy -> a:8080  TLS without a client certificate, refused    rejected
#   legacy -> c:8080  plaintext, c's sidecar is PERMISSIVE         permissive
#   a -> a:8081       loopback hop inside one workload             exempt
#   node -> a:15021   the kubelet probing the sidecar's health     exempt
#
# With `--mode ambient` (first argument; `./x run --mode ambient`) the same pods are
# enrolled in Istio ambient instead: istio-cni's in-pod rules and one ztunnel
# stand-in (its own network namespace and cgroup, sockets in every enrolled pod)
# that carries b -> a:8080 over HBONE (mutual TLS to a's 15008) and delivers it from
# b's own address; legacy-client stays outside the mesh:
#
#   b -> a:8080       app -> ztunnel -> HBONE -> ztunnel -> app     compliant
#   legacy -> a:8080  plaintext, refused by a's STRICT ztunnel      rejected
#   legacy -> c:8080  plaintext, c is PERMISSIVE                    permissive
#   b -> legacy:8080  plaintext to a pod outside the mesh (STRICT)  violation
#   a -> a:8081       loopback inside one workload                  exempt
#   node -> a:8080    the kubelet's probe, SNATed to 169.254.7.127  exempt
#
# The agent runs alongside and prints one table row per connection that counts (or
# JSON with MTLS_AUDITOR_FORMAT=json, every hop). Runs until Ctrl-C; SEED_ROUNDS=N
# stops after N rounds of traffic (SEED_HOLD=1 then keeps the agent running until
# stopped). Everything it creates is removed on exit.
#
# usage (root): MTLS_AUDITOR_BIN=target/release/mtls-auditor examples/seed/run.sh [--mode sidecar|ambient] [agent args...]
set -euo pipefail
mode=sidecar
if [ "${1:-}" = --mode ]; then
    mode=${2:-}
    shift 2 || true
fi
case $mode in
    sidecar | ambient) ;;
    *) echo "seed: --mode must be sidecar or ambient, not '$mode'" >&2; exit 2 ;;
esac
here=$(cd "$(dirname "$0")" && pwd)
mesh=$(cd "$here/../../tests/mesh" && pwd)
bin=${MTLS_AUDITOR_BIN:-$here/../../target/release/mtls-auditor}
rounds=${SEED_ROUNDS:-0}
interval=${SEED_INTERVAL:-5}
export MTLS_AUDITOR_FORMAT=${MTLS_AUDITOR_FORMAT:-table}

[ "$(id -u)" = 0 ] || { echo "seed: needs root (network namespaces, cgroups, eBPF)" >&2; exit 1; }
[ -x "$bin" ] || { echo "seed: agent binary $bin not found (cargo xtask build)" >&2; exit 1; }
command -v iptables >/dev/null || { echo "seed: iptables is needed (apt-get install iptables)" >&2; exit 1; }

cgroot=$(awk '{for (i = 1; i <= NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2") print $5; break }}' /proc/self/mountinfo | head -n 1)
[ -n "$cgroot" ] || { echo "seed: cgroup v2 is not mounted" >&2; exit 1; }
cgbase=$cgroot/mtls-auditor-seed
work=$(mktemp -d /tmp/mtls-auditor-seed.XXXXXX)
chmod 755 "$work"
pods=(a b c legacy)
pids=()

cleanup() {
    set +e
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
    done
    # Whatever a pod's processes started (the sidecar's threads are its own).
    for d in "$cgbase"/*/*; do [ -f "$d/cgroup.kill" ] && echo 1 > "$d/cgroup.kill"; done 2>/dev/null
    for p in "${pods[@]}"; do ip netns del "mtlsa-seed-$p" 2>/dev/null; done
    ip netns del mtlsa-seed-node 2>/dev/null
    ip netns del mtlsa-seed-ztunnel 2>/dev/null
    for _ in $(seq 20); do
        [ -f "$cgbase/ztunnel/cgroup.kill" ] && echo 1 > "$cgbase/ztunnel/cgroup.kill"
        rmdir "$cgbase"/*/* "$cgbase"/* "$cgbase" 2>/dev/null
        [ -d "$cgbase" ] || break
        sleep 0.1
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

workload() { # workload POD: the inventory name of a pod
    case $1 in legacy) echo legacy-client ;; *) echo "example-service-$1" ;; esac
}
ip_of() { # ip_of POD
    case $1 in a) echo 10.213.51.1 ;; b) echo 10.213.51.2 ;; c) echo 10.213.51.3 ;; legacy) echo 10.213.51.4 ;; esac
}

# --- network: one node bridge, a veth per pod ------------------------------------
ip netns del mtlsa-seed-node 2>/dev/null || true
ip netns add mtlsa-seed-node
ip -n mtlsa-seed-node link set lo up
ip -n mtlsa-seed-node link add br0 type bridge
ip -n mtlsa-seed-node addr add 10.213.51.254/24 dev br0
ip -n mtlsa-seed-node link set br0 up
i=0
for p in "${pods[@]}"; do
    ns=mtlsa-seed-$p
    ip netns del "$ns" 2>/dev/null || true
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip link del "mtlsseed$i" 2>/dev/null || true
    ip link add "mtlsseed$i" type veth peer name "mtlsseedn$i"
    ip link set "mtlsseed$i" netns "$ns"
    ip link set "mtlsseedn$i" netns mtlsa-seed-node
    ip -n mtlsa-seed-node link set "mtlsseedn$i" master br0 up
    ip -n "$ns" addr add "$(ip_of "$p")/24" dev "mtlsseed$i"
    ip -n "$ns" link set "mtlsseed$i" up
    mkdir -p "$cgbase/$(workload "$p")/app"
    i=$((i + 1))
done

# Runs a command in pod P's app cgroup and network namespace (C: another cgroup of
# the pod). Every step execs, so the PID stays the command's own.
in_pod() { # in_pod P CGROUP CMD...
    local p=$1 cg=$2; shift 2
    exec bash -c 'echo $$ > "$0/cgroup.procs"; exec ip netns exec "$1" "${@:2}"' \
        "$cgbase/$(workload "$p")/$cg" "mtlsa-seed-$p" "$@"
}
as() { local p=$1; shift; in_pod "$p" app "$@"; }

# --- certificates: a mesh CA and a SPIFFE identity per meshed workload -----------
(
    cd "$work"
    openssl ecparam -name prime256v1 -genkey -noout -out ca.key
    openssl req -x509 -new -key ca.key -days 2 -subj "/CN=seed mesh CA" -out ca.pem 2>/dev/null
    for p in a b c; do
        w=$(workload $p)
        openssl ecparam -name prime256v1 -genkey -noout -out "$p.key"
        openssl req -new -key "$p.key" -subj "/CN=$w.default" -out "$p.csr" 2>/dev/null
        printf 'subjectAltName=URI:spiffe://cluster.local/ns/default/sa/%s\n' "$w" > "$p.ext"
        openssl x509 -req -in "$p.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile "$p.ext" -out "$p.pem" 2>/dev/null
    done
) || { echo "seed: making certificates failed" >&2; exit 1; }

# --- sidecars: istio-iptables' rules and the proxy, as uid 1337 -----------------
# sidecar POD MODE [istio-iptables args...]; the outbound routes: b sends Istio
# mutual TLS to a:8080 (its DestinationRule ISTIO_MUTUAL). Its pooled upstream
# connection closes after 1.5 s unused (Envoy's idle timeout is an hour), so each
# round's mutual TLS connection shows up as a record of its own.
sidecar() {
    local p=$1 mode=$2; shift 2
    ip netns exec "mtlsa-seed-$p" sh "$mesh/istio-iptables.sh" "$@"
    mkdir -p "$cgbase/$(workload "$p")/istio-proxy"
    local routes="[]"
    if [ "$p" = b ]; then
        routes='[{"address":"10.213.51.1","port":8080,"mode":"ISTIO_MUTUAL","http":true,"sni":"outbound_.8080_._.example-service-a.default.svc.cluster.local"}]'
    fi
    cat > "$work/sidecar-$p.json" <<JSON
{"pod_ip":"$(ip_of "$p")","cert":"$work/$p.pem","key":"$work/$p.key","ca":"$work/ca.pem",
 "inbound":{"mode":"$mode"},"outbound":$routes,"upstream_idle_timeout_s":1.5,"log":"$work/sidecar-$p.log"}
JSON
    in_pod "$p" istio-proxy /usr/bin/python3 "$mesh/sidecar.py" "$work/sidecar-$p.json" >/dev/null 2>&1 &
    pids+=($!)
}

# --- the agent ----------------------------------------------------------------
# Its log goes to stderr and to agent.log, where "ready" says the probes are attached.
"$bin" run --policy "$here" --stats-interval-s 0 "$@" 2> >(tee "$work/agent.log" >&2) &
agent=$!
pids+=("$agent")
for _ in $(seq 300); do
    grep -q "ready: reporting connections" "$work/agent.log" 2>/dev/null && break
    kill -0 "$agent" 2>/dev/null || { echo "seed: the agent exited" >&2; exit 1; }
    sleep 0.1
done
grep -q "ready: reporting connections" "$work/agent.log" || { echo "seed: the agent did not start" >&2; exit 1; }

# --- ambient: istio-cni's in-pod rules and one ztunnel for the node --------------
# The kubelet's probes reach enrolled pods from 169.254.7.127 (istio-cni's host
# SNAT rule), which the in-pod rules let past ztunnel.
ambient() {
    local entries=() p
    for p in a b c; do
        ip netns exec "mtlsa-seed-$p" sh "$mesh/ambient-iptables.sh"
        ip -n "mtlsa-seed-$p" route add 169.254.7.127/32 via 10.213.51.254
        ip netns exec mtlsa-seed-node iptables -w -t nat -A POSTROUTING -p tcp -d "$(ip_of "$p")" \
            -m owner --socket-exists -j SNAT --to-source 169.254.7.127
        local m=STRICT
        [ "$p" = c ] && m=PERMISSIVE
        entries+=("{\"name\":\"$p\",\"ip\":\"$(ip_of "$p")\",\"netns\":\"/var/run/netns/mtlsa-seed-$p\",\"identity\":\"spiffe://cluster.local/ns/default/sa/$(workload "$p")\",\"cert\":\"$work/$p.pem\",\"key\":\"$work/$p.key\",\"mode\":\"$m\"}")
    done
    local IFS=,
    printf '{"ca":"%s","log":"%s","pods":[%s]}\n' "$work/ca.pem" "$work/ztunnel.log" "${entries[*]}" > "$work/ztunnel.json"
    ip netns del mtlsa-seed-ztunnel 2>/dev/null || true
    ip netns add mtlsa-seed-ztunnel
    ip -n mtlsa-seed-ztunnel link set lo up
    mkdir -p "$cgbase/ztunnel"
    bash -c 'echo $$ > "$0/cgroup.procs"; exec ip netns exec mtlsa-seed-ztunnel "${@:1}"' \
        "$cgbase/ztunnel" /usr/bin/python3 "$mesh/ztunnel.py" "$work/ztunnel.json" >/dev/null 2>&1 &
    pids+=($!)
}

if [ "$mode" = ambient ]; then
    ambient
    listeners=(a:15008 b:15001 c:15006)
else
    sidecar a STRICT -i 9090
    sidecar b STRICT -o 9090
    sidecar c PERMISSIVE
    listeners=(a:15006 b:15001 c:15006)
fi

# --- the apps (plain HTTP/1.1: the sidecars do the mutual TLS) -------------------
as a /usr/bin/python3 "$mesh/app.py" example-service-a 0.0.0.0 8080 9090 >/dev/null 2>&1 &
pids+=($!)
# a:8081  a local-only endpoint a calls over loopback.
as a /usr/bin/python3 "$mesh/app.py" example-service-a 127.0.0.1 8081 >/dev/null 2>&1 &
pids+=($!)
as c /usr/bin/python3 "$mesh/app.py" example-service-c 0.0.0.0 8080 >/dev/null 2>&1 &
pids+=($!)
if [ "$mode" = ambient ]; then
    # The pod outside the mesh serves plain HTTP too.
    as legacy /usr/bin/python3 "$mesh/app.py" legacy-client 0.0.0.0 8080 >/dev/null 2>&1 &
    pids+=($!)
    listeners+=(legacy:8080)
fi
listening() { # listening POD:PORT
    ip netns exec "mtlsa-seed-${1%%:*}" ss -Hltn "sport = :${1##*:}" | grep -q .
}
for _ in $(seq 100); do
    ok=1
    for l in "${listeners[@]}" a:8080; do listening "$l" || { ok=0; break; }; done
    [ "$ok" = 1 ] && break
    sleep 0.1
done

curl_as() { # curl_as P ARGS...: runs a client to completion; failures are expected
    (as "$@") 2>/dev/null || true
}
get() { # get P URL [curl args]
    local p=$1 url=$2; shift 2
    curl_as "$p" curl -sS --max-time 5 --noproxy '*' --http1.1 -o /dev/null "$@" "$url"
}

round() {
    if [ "$mode" = ambient ]; then
        get b http://10.213.51.1:8080/
        get legacy http://10.213.51.1:8080/
        get legacy http://10.213.51.3:8080/
        get b http://10.213.51.4:8080/
        get a http://127.0.0.1:8081/
        (ip netns exec mtlsa-seed-node curl -sS --max-time 5 --noproxy '*' -o /dev/null http://10.213.51.1:8080/) 2>/dev/null || true
        return
    fi
    get b http://10.213.51.1:8080/
    get b http://10.213.51.1:9090/
    get legacy http://10.213.51.1:8080/
    get legacy https://10.213.51.1:8080/ --cacert "$work/ca.pem" -k
    get legacy http://10.213.51.3:8080/
    get a http://127.0.0.1:8081/
    (ip netns exec mtlsa-seed-node curl -sS --max-time 5 --noproxy '*' -o /dev/null http://10.213.51.1:15021/healthz/ready) 2>/dev/null || true
}

n=0
while :; do
    round
    n=$((n + 1))
    if [ "$rounds" -gt 0 ] && [ "$n" -ge "$rounds" ]; then
        sleep 3 # let the agent report the last connections
        if [ "${SEED_HOLD:-0}" = 1 ]; then
            echo "seed: $n rounds done; holding until stopped" >&2
            while :; do sleep 1; done
        fi
        break
    fi
    sleep "$interval"
done

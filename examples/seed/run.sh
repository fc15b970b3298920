#!/usr/bin/env bash
# The seed example scenario: example-service-a, example-service-b and
# example-service-c in namespace `default`, as network namespaces with their own
# cgroups, the Istio policies of istio-policies.yaml (plus example-service-c.yaml
# and inventory.yaml), and traffic that exercises every verdict:
#
#   b -> a:8443  mutual TLS                          compliant
#   b -> a:8443  plaintext, refused by a's listener  rejected
#   b -> a:8443  TLS without a client certificate    rejected
#   b -> a:8080  plaintext to an unprotected port    violation
#   b -> c:8080  plaintext, c is PERMISSIVE          permissive
#   a -> a       loopback hop inside one workload    exempt
#
# The agent runs alongside and prints one table row per connection (or JSON with
# MTLS_AUDITOR_FORMAT=json). Runs until Ctrl-C; SEED_ROUNDS=N stops after N rounds
# of traffic (SEED_HOLD=1 then keeps the agent running until stopped). Everything it
# creates is removed on exit.
#
# usage (root): MTLS_AUDITOR_BIN=target/release/mtls-auditor examples/seed/run.sh [agent args...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${MTLS_AUDITOR_BIN:-$here/../../target/release/mtls-auditor}
rounds=${SEED_ROUNDS:-0}
interval=${SEED_INTERVAL:-5}
export MTLS_AUDITOR_FORMAT=${MTLS_AUDITOR_FORMAT:-table}

[ "$(id -u)" = 0 ] || { echo "seed: needs root (network namespaces, cgroups, eBPF)" >&2; exit 1; }
[ -x "$bin" ] || { echo "seed: agent binary $bin not found (cargo xtask build)" >&2; exit 1; }

cgroot=$(awk '{for (i = 1; i <= NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2") print $5; break }}' /proc/self/mountinfo | head -n 1)
[ -n "$cgroot" ] || { echo "seed: cgroup v2 is not mounted" >&2; exit 1; }
cgbase=$cgroot/mtls-auditor-seed
work=$(mktemp -d /tmp/mtls-auditor-seed.XXXXXX)
pids=()

cleanup() {
    set +e
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
    done
    for ns in a b c; do ip netns del "mtlsa-seed-$ns" 2>/dev/null; done
    for w in a b c; do rmdir "$cgbase/example-service-$w" 2>/dev/null; done
    rmdir "$cgbase" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- network: b in the middle, a and c on their own links ---------------------
for ns in a b c; do
    ip netns del "mtlsa-seed-$ns" 2>/dev/null || true
    ip netns add "mtlsa-seed-$ns"
    ip -n "mtlsa-seed-$ns" link set lo up
done
link() { # link NS1 ADDR1 NS2 ADDR2 NAME
    ip link del "$5a" 2>/dev/null || true
    ip link add "$5a" type veth peer name "$5b"
    ip link set "$5a" netns "mtlsa-seed-$1"
    ip link set "$5b" netns "mtlsa-seed-$3"
    ip -n "mtlsa-seed-$1" addr add "$2/24" dev "$5a"
    ip -n "mtlsa-seed-$3" addr add "$4/24" dev "$5b"
    ip -n "mtlsa-seed-$1" link set "$5a" up
    ip -n "mtlsa-seed-$3" link set "$5b" up
}
link a 10.213.51.1 b 10.213.51.2 mtlsab
link c 10.213.52.1 b 10.213.52.2 mtlscb
for w in a b c; do mkdir -p "$cgbase/example-service-$w"; done

# Runs a command as workload W: in its cgroup first, then in its namespace. Every
# step execs, so the PID stays the command's own.
as() { # as W CMD...
    local w=$1; shift
    exec bash -c 'echo $$ > "$0/cgroup.procs"; exec ip netns exec "$1" "${@:2}"' \
        "$cgbase/example-service-$w" "mtlsa-seed-$w" "$@"
}

# --- certificates: a mesh CA, a's server certificate, b's client certificate ---
(
    cd "$work"
    openssl ecparam -name prime256v1 -genkey -noout -out ca.key
    openssl req -x509 -new -key ca.key -days 2 -subj "/CN=seed mesh CA" -out ca.pem 2>/dev/null
    for n in a b; do
        openssl ecparam -name prime256v1 -genkey -noout -out "$n.key"
        openssl req -new -key "$n.key" -subj "/CN=example-service-$n.default" -out "$n.csr" 2>/dev/null
        printf 'subjectAltName=URI:spiffe://cluster.local/ns/default/sa/example-service-%s,DNS:example-service-%s.default.svc.cluster.local,IP:10.213.51.1\n' "$n" "$n" > "$n.ext"
        openssl x509 -req -in "$n.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile "$n.ext" -out "$n.pem" 2>/dev/null
    done
) || { echo "seed: making certificates failed" >&2; exit 1; }
mkdir -p "$work/www"
echo "hello from the seed scenario" > "$work/www/index.html"

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

# --- the servers ----------------------------------------------------------------
# a:8443  STRICT listener: TLS, client certificate required (openssl s_server -Verify).
# s_server stops when its stdin closes: give it a FIFO this script holds open.
mkfifo "$work/s_server.stdin"
exec 3<>"$work/s_server.stdin"
as a openssl s_server -quiet -www -accept 10.213.51.1:8443 -cert "$work/a.pem" -key "$work/a.key" \
    -CAfile "$work/ca.pem" -Verify 1 <"$work/s_server.stdin" >/dev/null 2>&1 &
pids+=($!)
# a:8080  a port its server does not protect (plaintext HTTP).
as a /usr/bin/python3 -m http.server --bind 10.213.51.1 --directory "$work/www" 8080 >/dev/null 2>&1 &
pids+=($!)
# a:8081  a local-only endpoint a calls over loopback.
as a /usr/bin/python3 -m http.server --bind 127.0.0.1 --directory "$work/www" 8081 >/dev/null 2>&1 &
pids+=($!)
# c:8080  plaintext HTTP, PERMISSIVE.
as c /usr/bin/python3 -m http.server --bind 10.213.52.1 --directory "$work/www" 8080 >/dev/null 2>&1 &
pids+=($!)
sleep 1

curl_as() { # curl_as W CMD...: runs a client to completion; failures are expected
    (as "$@") 2>/dev/null || true
}

round() {
    curl_as b curl -sS --max-time 5 --noproxy '*' -o /dev/null --cacert "$work/ca.pem" --cert "$work/b.pem" --key "$work/b.key" https://10.213.51.1:8443/
    curl_as b curl -sS --max-time 5 --noproxy '*' -o /dev/null http://10.213.51.1:8443/
    curl_as b curl -sS --max-time 5 --noproxy '*' -o /dev/null --cacert "$work/ca.pem" https://10.213.51.1:8443/
    curl_as b curl -sS --max-time 5 --noproxy '*' -o /dev/null http://10.213.51.1:8080/
    curl_as b curl -sS --max-time 5 --noproxy '*' -o /dev/null http://10.213.52.1:8080/
    curl_as a curl -sS --max-time 5 --noproxy '*' -o /dev/null http://127.0.0.1:8081/
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

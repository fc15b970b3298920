#!/usr/bin/python3
"""A stand-in for Istio ambient's ztunnel at the socket level.

It runs in a network namespace (and cgroup) of its own, as ztunnel's pod does, and
opens its sockets inside each enrolled pod's network namespace (setns on the thread
that creates them, as ztunnel's in-pod socket factory does), all marked 0x539 (1337)
so that the pod's rules (ambient-iptables.sh) let them through. What it does:

- outbound (15001 in the pod): accepts what the pod's REDIRECT sent it, asks
  SO_ORIGINAL_DST, and carries the connection to an enrolled destination as an
  HTTP/2 CONNECT stream (`:authority` = destination ip:port) inside mutual TLS
  (ALPN `h2`, SPIFFE certificates, no SNI) to the destination pod's 15008, over one
  pooled HBONE connection per (source identity, destination identity, destination
  address); to a destination that is not enrolled it connects in plaintext;
- services (a ClusterIP and its pods): a connection to a service address goes to
  one of its pods as above (`:authority` = that pod's ip:port); when the service
  uses a waypoint (`istio.io/use-waypoint`), it goes to the waypoint's 15008
  instead, asserting the waypoint's identity, with `:authority` = the service's
  address and port (ztunnel's `RequestType::ToServerWaypoint`);
- HBONE inbound (15008 in the pod): terminates the mutual TLS, opens the CONNECT
  target in the pod from the HBONE peer's address (IP_TRANSPARENT: the app sees the
  real client's address, or the waypoint's when a waypoint sent it) and relays;
- plaintext inbound (15006 in the pod): SO_ORIGINAL_DST, then STRICT closes the
  connection unanswered, PERMISSIVE relays from the client's own address;
- DNS proxy (127.0.0.1:15053 in the pod, TCP): answers A queries for the names in
  `dns` and NXDOMAIN for others, without asking SO_ORIGINAL_DST (as ztunnel's
  in-pod DNS proxy does); the pod's rules REDIRECT its DNS over TCP there;
- in its own namespace: 15021 (readiness), 15020 (Prometheus metrics), 15000
  (admin, on loopback).

Where it differs from ztunnel: pods, services and names come from a JSON file
instead of istio-cni's UDS and xDS, no RBAC beyond STRICT/PERMISSIVE, no DNS over
UDP, HTTP/2 without HPACK compression (literal headers) and without flow-control
back-pressure beyond WINDOW_UPDATEs.

usage: ztunnel.py CONFIG.json   (as root; runs until SIGTERM)
"""

import ctypes
import json
import os
import signal
import socket
import ssl
import struct
import sys
import threading
import time

import hbone
from hbone import END_HEADERS, END_STREAM, H2, HEADERS, frame, literal, plain_http, pump, relay_stream, serve

CONFIG = json.load(open(sys.argv[1]))
LOG = open(CONFIG["log"], "a", buffering=1) if CONFIG.get("log") else None
LOG_LOCK = threading.Lock()
MARK = 1337
SO_ORIGINAL_DST = 80
IP_TRANSPARENT = 19
CLONE_NEWNET = 0x40000000
LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
HOME_NS = os.open("/proc/self/ns/net", os.O_RDONLY)
NS_LOCK = threading.Lock()
PODS = {p["ip"]: p for p in CONFIG["pods"]}
SERVICES = {s["vip"]: s for s in CONFIG.get("services", [])}
DNS = CONFIG.get("dns", {})


def log(*args):
    if LOG:
        with LOG_LOCK:
            print(time.strftime("%H:%M:%S"), *args, file=LOG)


def in_netns(pod, make):
    """Runs make() with this thread in the pod's network namespace."""
    with NS_LOCK:
        fd = os.open(pod["netns"], os.O_RDONLY)
        try:
            if LIBC.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns " + pod["netns"])
            try:
                return make()
            finally:
                LIBC.setns(HOME_NS, CLONE_NEWNET)
        finally:
            os.close(fd)


def marked_socket():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
    return s


def listen_in(pod, port, transparent=False, addr="0.0.0.0"):
    def make():
        s = marked_socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if transparent:
            s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        s.bind((addr, port))
        s.listen(128)
        return s

    return in_netns(pod, make)


def connect_in(pod, dst, source_ip=None):
    """A connection made inside the pod: from `source_ip` (transparent) if given."""

    def make():
        s = marked_socket()
        if source_ip:
            s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            s.bind((source_ip, 0))
        return s

    s = in_netns(pod, make)
    s.settimeout(5)
    s.connect(dst)
    s.settimeout(None)
    return s


def original_dst(sock):
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port, addr = struct.unpack("!2xH4s8x", raw)
        return socket.inet_ntoa(addr), port
    except OSError:
        return sock.getsockname()[:2]


for p in CONFIG["pods"]:
    p["client_ctx"], p["server_ctx"] = hbone.contexts(p["cert"], p["key"], CONFIG["ca"])


# --- HBONE pool ---------------------------------------------------------------------
POOL_LOCK = threading.Lock()
POOL = {}


def hbone_to(src, dst_pod):
    key = (src["identity"], dst_pod["identity"], dst_pod["ip"])
    with POOL_LOCK:
        conn = POOL.get(key)
        if conn is not None and not conn.closed:
            return conn
        raw = connect_in(src, (dst_pod["ip"], 15008))
        tls = src["client_ctx"].wrap_socket(raw, server_hostname=None)
        conn = H2(tls, server_side=False)
        POOL[key] = conn
        return conn


def route(ip, port):
    """Where ztunnel sends a connection for ip:port: (HBONE peer, CONNECT target),
    or None for a plaintext passthrough."""
    svc = SERVICES.get(ip)
    if svc is not None and svc.get("waypoint"):
        return svc["waypoint"], "%s:%d" % (ip, port)
    if svc is not None:
        pod = PODS[svc["endpoints"][0]]
        return pod, "%s:%d" % (pod["ip"], port)
    if ip in PODS:
        return PODS[ip], "%s:%d" % (ip, port)
    return None


def outbound(src, down):
    ip, port = original_dst(down)
    target = route(ip, port)
    log("outbound", src["name"], down.getpeername(), "->", ip, port,
        "hbone to %s as %s" % (target[0]["ip"], target[1]) if target else "passthrough")
    try:
        if target is None:
            up = connect_in(src, (ip, port))
            pump(down, up)
            up.close()
            down.close()
            return
        peer_pod, authority = target
        conn = hbone_to(src, peer_pod)
        peer = down.getpeername()
        st = conn.open(
            authority.encode(),
            [
                (b"forwarded", ('for="%s:%d"' % peer).encode()),
                (b"baggage", ("k8s.namespace.name=default,k8s.pod.name=%s" % src["name"]).encode()),
            ],
        )
        relay_stream(down, st)
    except (OSError, ssl.SSLError, EOFError, ValueError) as e:
        log("outbound error", e)
        down.close()


def hbone_inbound(pod, tls_sock):
    peer_ip = tls_sock.getpeername()[0]

    def on_stream(st, headers):
        authority = headers.get(b":authority", b"").decode()
        host, _, port = authority.rpartition(":")
        try:
            app = connect_in(pod, (host, int(port)), source_ip=peer_ip)
        except (OSError, ValueError) as e:
            log("hbone connect error", e)
            st.conn.send(frame(HEADERS, END_HEADERS | END_STREAM, st.sid, literal(b":status", b"503")))
            return
        st.conn.send(frame(HEADERS, END_HEADERS, st.sid, literal(b":status", b"200")))
        log("hbone", pod["name"], peer_ip, "->", authority)
        relay_stream(app, st)

    try:
        H2(tls_sock, server_side=True, on_stream=on_stream)
    except (OSError, EOFError, ValueError, ssl.SSLError) as e:
        log("hbone error", e)
        tls_sock.close()


def plaintext_inbound(pod, down):
    ip, port = original_dst(down)
    client = down.getpeername()
    if pod.get("mode", "PERMISSIVE") == "STRICT":
        log("inbound plaintext refused (STRICT)", client, "->", ip, port)
        down.close()
        return
    try:
        app = connect_in(pod, (ip, port), source_ip=client[0])
        pump(down, app)
        app.close()
    except OSError as e:
        log("inbound error", e)
    down.close()


def dns_answer(query):
    """A DNS response to `query`: an A record for a name in DNS, else NXDOMAIN."""
    qid, _flags, qdcount = struct.unpack("!HHH", query[:6])
    i, labels = 12, []
    while query[i] != 0:
        n = query[i]
        labels.append(query[i + 1 : i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    question = query[12 : i + 5]
    qtype = struct.unpack("!H", query[i + 1 : i + 3])[0]
    name = ".".join(labels).lower()
    ip = DNS.get(name)
    log("dns", name, qtype, "->", ip or "NXDOMAIN")
    if ip is None or qtype != 1 or qdcount != 1:
        return struct.pack("!HHHHHH", qid, 0x8183 if ip is None else 0x8180, 1, 0, 0, 0) + question
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + socket.inet_aton(ip)
    return struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + answer


def dns_tcp(conn):
    """DNS over TCP (RFC 7766): length-prefixed messages until the client closes."""
    try:
        conn.settimeout(5)
        while True:
            head = conn.recv(2, socket.MSG_WAITALL)
            if len(head) < 2:
                break
            query = conn.recv(struct.unpack("!H", head)[0], socket.MSG_WAITALL)
            reply = dns_answer(query)
            conn.sendall(struct.pack("!H", len(reply)) + reply)
    except (OSError, ValueError, IndexError, struct.error) as e:
        log("dns error", e)
    conn.close()


METRICS = (
    b"# HELP istio_build Istio component build info\n"
    b"# TYPE istio_build gauge\n"
    b'istio_build{component="ztunnel",tag="stand-in"} 1\n'
)


def main():
    for pod in CONFIG["pods"]:
        if not pod.get("enrolled", True):
            continue
        out = listen_in(pod, 15001, transparent=True)
        hb = listen_in(pod, 15008, transparent=True)
        plain = listen_in(pod, 15006, transparent=True)
        dns = listen_in(pod, 15053, addr="127.0.0.1")
        threading.Thread(target=serve, args=(out, lambda c, p=pod: outbound(p, c)), daemon=True).start()
        threading.Thread(target=serve, args=(hb, lambda c, p=pod: hbone_inbound(p, c), pod["server_ctx"], log), daemon=True).start()
        threading.Thread(target=serve, args=(plain, lambda c, p=pod: plaintext_inbound(p, c)), daemon=True).start()
        threading.Thread(target=serve, args=(dns, dns_tcp), daemon=True).start()
    own = [("0.0.0.0", 15021, b"ready\n"), ("0.0.0.0", 15020, METRICS), ("127.0.0.1", 15000, b"{}\n")]
    for addr, port, body in own:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr, port))
        except OSError as e:
            # No loopback in a namespace whose `lo` is down.
            log("cannot listen on", addr, port, e)
            continue
        s.listen(16)
        threading.Thread(target=serve, args=(s, lambda c, b=body: plain_http(c, b)), daemon=True).start()
    print("ztunnel ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    main()

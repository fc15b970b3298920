#!/usr/bin/python3
"""A stand-in for an Istio ambient waypoint (an Envoy of a Gateway of class
`istio-waypoint`) at the socket level.

It runs in the waypoint pod's own network namespace and cgroup; the pod is not
enrolled in ambient (istio-cni writes no rules there and ztunnel opens no sockets
in it), so its connections leave as they are. Its process name is `envoy`. What it
does, as the waypoint's listeners do (`connect_terminate` -> `main_internal` ->
`connect_originate`):

- 15008: terminates HBONE from ztunnel (mutual TLS, ALPN `h2`, its own SPIFFE
  certificate), one HTTP/2 CONNECT stream per app connection, whose `:authority`
  is the service address and port the app asked for;
- picks an endpoint of that service from `routes` and carries the stream on in an
  HBONE connection of its own (its own identity) to the endpoint pod's 15008, with
  `:authority` = endpoint ip:port, pooled per destination address; a route marked
  `plaintext` instead connects to the endpoint's port without HBONE (a waypoint
  misconfigured to skip mutual TLS on its way to the destination);
- 15021: readiness, plain HTTP.

Where it differs from Envoy: no xDS (routes from a JSON file), no L7 processing of
the relayed bytes (it relays them as they come), no HPACK compression.

usage: waypoint.py CONFIG.json   (as root; runs until SIGTERM)
"""

import ctypes
import json
import os
import signal
import socket
import ssl
import sys
import threading
import time

import hbone
from hbone import END_HEADERS, END_STREAM, H2, HEADERS, frame, literal, plain_http, relay_stream, serve

CONFIG = json.load(open(sys.argv[1]))
LOG = open(CONFIG["log"], "a", buffering=1) if CONFIG.get("log") else None
LOG_LOCK = threading.Lock()
PR_SET_NAME = 15
CLIENT_CTX, SERVER_CTX = hbone.contexts(CONFIG["cert"], CONFIG["key"], CONFIG["ca"])


def log(*args):
    if LOG:
        with LOG_LOCK:
            print(time.strftime("%H:%M:%S"), "waypoint", *args, file=LOG)


POOL_LOCK = threading.Lock()
POOL = {}


def hbone_to(ip):
    with POOL_LOCK:
        conn = POOL.get(ip)
        if conn is not None and not conn.closed:
            return conn
        raw = socket.create_connection((ip, 15008), timeout=5)
        raw.settimeout(None)
        tls = CLIENT_CTX.wrap_socket(raw, server_hostname=None)
        conn = H2(tls, server_side=False)
        POOL[ip] = conn
        return conn


def copy(src, dst):
    """Stream to stream, until `src` ends."""
    while True:
        data = os.read(src.r, 65536)
        if not data:
            break
        dst.send(data)
    dst.close()


def on_stream(st, headers):
    authority = headers.get(b":authority", b"").decode()
    routes = CONFIG["routes"].get(authority)
    if not routes:
        log("no route for", authority)
        st.conn.send(frame(HEADERS, END_HEADERS | END_STREAM, st.sid, literal(b":status", b"404")))
        return
    endpoint = routes[0]
    host, _, port = endpoint["address"].rpartition(":")
    try:
        if endpoint.get("plaintext"):
            up = socket.create_connection((host, int(port)), timeout=5)
            up.settimeout(None)
            st.conn.send(frame(HEADERS, END_HEADERS, st.sid, literal(b":status", b"200")))
            log(authority, "->", endpoint["address"], "in plaintext")
            relay_stream(up, st)
            return
        conn = hbone_to(host)
        out = conn.open(endpoint["address"].encode(), [])
        if not out.ready.wait(5) or out.headers.get(b":status") != b"200":
            raise OSError("upstream HBONE answered %r" % out.headers.get(b":status"))
    except (OSError, ssl.SSLError, EOFError, ValueError) as e:
        log("upstream error", authority, e)
        st.conn.send(frame(HEADERS, END_HEADERS | END_STREAM, st.sid, literal(b":status", b"503")))
        return
    st.conn.send(frame(HEADERS, END_HEADERS, st.sid, literal(b":status", b"200")))
    log(authority, "->", endpoint["address"], "over HBONE")
    t = threading.Thread(target=copy, args=(out, st), daemon=True)
    t.start()
    copy(st, out)
    t.join(30)
    os.close(st.r)
    os.close(out.r)
    st.conn.streams.pop(st.sid, None)
    out.conn.streams.pop(out.sid, None)


def terminate(tls_sock):
    try:
        H2(tls_sock, server_side=True, on_stream=on_stream)
    except (OSError, EOFError, ValueError, ssl.SSLError) as e:
        log("hbone error", e)
        tls_sock.close()


def listen(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(128)
    return s


def main():
    # Envoy's process name, for every thread started after this.
    ctypes.CDLL("libc.so.6").prctl(PR_SET_NAME, b"envoy", 0, 0, 0)
    threading.Thread(target=serve, args=(listen(15008), terminate, SERVER_CTX, log), daemon=True).start()
    threading.Thread(target=serve, args=(listen(15021), lambda c: plain_http(c, b"ready\n")), daemon=True).start()
    print("waypoint ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    main()

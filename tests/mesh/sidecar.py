#!/usr/bin/python3
"""A stand-in for Istio's sidecar (Envoy + istio-iptables) at the socket level.

It is what the mesh tests and the seed scenario run in a pod's network namespace,
next to iptables rules shaped like the ones istio-iptables writes (see mesh.sh).
What it does, as Envoy does it:

- outbound (15001): accepts what ISTIO_REDIRECT sent it, asks the kernel for the
  original destination (getsockopt SO_ORIGINAL_DST), and sends the bytes on to that
  destination: over Istio mutual TLS (SPIFFE client certificate, SNI
  `outbound_.PORT_._.HOST`, ALPN `istio-http/1.1`/`istio`) when the route says
  ISTIO_MUTUAL, in plaintext for DISABLE or destinations it does not know
  (PassthroughCluster). HTTP/1.1 routes reuse pooled upstream connections across
  downstream connections (keep-alive), as Envoy's connection pools do;
- inbound (15006): accepts what ISTIO_IN_REDIRECT sent it, finds the original
  port, terminates mutual TLS (client certificate required) or, where the port's
  mode allows plaintext (PERMISSIVE, DISABLE), takes plaintext; STRICT plaintext is
  closed unanswered. It forwards to the app at the pod's address and the original
  port from source address 127.0.0.6 (Envoy's inbound passthrough bind);
- 15021 (health), 15020 (merged metrics / rewritten probes), 15090 (Envoy's
  Prometheus endpoint) and 15000 (admin, 127.0.0.1 only) answer plain HTTP;
- it drops to uid/gid 1337 after binding and loading its certificates, which is
  what the iptables owner rules skip.

Where it differs from Envoy: no xDS (routes come from a JSON file), HTTP/1.1 only
(no HTTP/2 upstreams, no istio-peer-exchange metadata exchange), one upstream
connection per request at a time (Envoy multiplexes HTTP/2), and no retries.

With `"flavor": "linkerd"` it stands in for Linkerd's proxy instead (with the rules
of linkerd-iptables.sh): outbound on 4140 and inbound on 4143, uid/gid 2102, mutual
TLS with SNI = the server's identity (`SA.NS.serviceaccount.identity.linkerd.
cluster.local`, the route's `sni`) and no ALPN for HTTP routes (pooled, like the
Istio flavour); an `opaque` route goes to the destination pod's 4143 itself with
ALPN `transport.l5d.io/v1` and Linkerd's transport header (the app's port inside
the TLS), one TLS connection per app connection; inbound it delivers to the app
at the pod's address from the pod's own address, and it serves 4191 (admin:
metrics, readiness) and 4190 (tap) in plain HTTP. Linkerd's proxies speak HTTP/2
to each other; this one forwards HTTP/1.1 as it came.

usage: sidecar.py CONFIG.json   (as root; runs until SIGTERM)
"""

import json
import os
import select
import signal
import socket
import ssl
import struct
import sys
import threading
import time

SO_ORIGINAL_DST = 80
SOL_IPV6 = 41

CONFIG = json.load(open(sys.argv[1]))
POD_IP = CONFIG["pod_ip"]
LINKERD = CONFIG.get("flavor", "istio") == "linkerd"
# Linkerd's transport header (linkerd2-proxy, proxy/transport/header): this
# preface, a 4-byte big-endian length, a protobuf TransportHeader {port = 1}.
L5D_ALPN = "transport.l5d.io/v1"
L5D_PREFACE = b"transport.l5d.io/v1\r\n\r\n"
L5D_INBOUND = 4143
# Opened now: after the privileges are dropped its directory may be closed to us.
LOG = open(CONFIG["log"], "a", buffering=1) if CONFIG.get("log") else None
LOG_LOCK = threading.Lock()


def log(*args):
    if LOG:
        with LOG_LOCK:
            print(time.strftime("%H:%M:%S"), *args, file=LOG)


def original_dst(sock):
    """The pre-NAT destination of an accepted socket (what Envoy's original_dst
    listener filter asks); the socket's own address when there is no NAT entry."""
    try:
        if sock.family == socket.AF_INET:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port, addr = struct.unpack("!2xH4s8x", raw)
            return socket.inet_ntop(socket.AF_INET, addr), port
        raw = sock.getsockopt(SOL_IPV6, SO_ORIGINAL_DST, 28)
        port, addr = struct.unpack("!2xH4x16s4x", raw)
        return socket.inet_ntop(socket.AF_INET6, addr), port
    except OSError:
        return sock.getsockname()[:2]


def client_context(alpn):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_cert_chain(CONFIG["cert"], CONFIG["key"])
    ctx.load_verify_locations(CONFIG["ca"])
    # Istio checks the peer's SPIFFE identity, not a host name.
    ctx.check_hostname = False
    ctx.set_alpn_protocols(alpn)
    return ctx


def server_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(CONFIG["cert"], CONFIG["key"])
    ctx.load_verify_locations(CONFIG["ca"])
    ctx.verify_mode = ssl.CERT_REQUIRED
    if LINKERD:
        ctx.set_alpn_protocols([L5D_ALPN])
    else:
        ctx.set_alpn_protocols(["istio-http/1.1", "istio", "http/1.1", "istio-peer-exchange"])
    return ctx


# Built before the privileges are dropped: the key files are root's.
if LINKERD:
    HTTP_CLIENT_CTX = client_context([])
    TCP_CLIENT_CTX = client_context([L5D_ALPN])
else:
    HTTP_CLIENT_CTX = client_context(["istio-http/1.1", "istio", "http/1.1"])
    TCP_CLIENT_CTX = client_context(["istio-peer-exchange", "istio"])
SERVER_CTX = server_context()


def varint(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def transport_header(port):
    msg = b"\x08" + varint(port)
    return L5D_PREFACE + struct.pack("!I", len(msg)) + msg


def read_transport_header(sock):
    """The app's port from Linkerd's transport header, or None."""
    want = len(L5D_PREFACE) + 4
    got = b""
    while len(got) < want:
        chunk = sock.recv(want - len(got))
        if not chunk:
            return None
        got += chunk
    if got[: len(L5D_PREFACE)] != L5D_PREFACE:
        return None
    (n,) = struct.unpack("!I", got[len(L5D_PREFACE) :])
    msg = b""
    while len(msg) < n:
        chunk = sock.recv(n - len(msg))
        if not chunk:
            return None
        msg += chunk
    i = 0
    while i < len(msg):
        key = msg[i]
        i += 1
        if key & 7 == 0:
            v, shift = 0, 0
            while True:
                b = msg[i]
                i += 1
                v |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            if key >> 3 == 1:
                return v
        elif key & 7 == 2:
            ln = msg[i]
            i += 1 + ln
        else:
            return None
    return None


def route_for(addr, port):
    for r in CONFIG.get("outbound", []):
        if r["address"] == addr and int(r["port"]) == port:
            return r
    return {"mode": "PASSTHROUGH", "http": False}


def inbound_mode(port):
    return CONFIG.get("inbound", {}).get("ports", {}).get(str(port)) or CONFIG.get(
        "inbound", {}
    ).get("mode", "PERMISSIVE")


def connect_upstream(addr, port, route):
    opaque = LINKERD and route.get("opaque") and route["mode"] == "ISTIO_MUTUAL"
    raw = socket.create_connection((addr, L5D_INBOUND if opaque else port), timeout=5)
    raw.settimeout(None)
    if route["mode"] != "ISTIO_MUTUAL":
        return raw
    ctx = HTTP_CLIENT_CTX if route.get("http") else TCP_CLIENT_CTX
    sni = route.get("sni") or "outbound_.%d_._.%s" % (port, addr)
    tls = ctx.wrap_socket(raw, server_hostname=sni)
    if opaque:
        tls.sendall(transport_header(port))
    return tls


def read_ready(s):
    """One read from a socket select() found readable; None when that was only TLS
    records without application data (a TLS 1.3 session ticket): a blocking read
    would then wait for data that the other direction has not forwarded yet."""
    if not isinstance(s, ssl.SSLSocket):
        return s.recv(65536)
    s.setblocking(False)
    try:
        return s.recv(65536)
    except ssl.SSLWantReadError:
        return None
    finally:
        s.setblocking(True)


def pump(a, b):
    """Copies bytes both ways until either side closes."""
    socks = [a, b]
    try:
        while True:
            ready, _, _ = select.select(socks, [], [], 30)
            if not ready:
                return
            for s in ready:
                while True:
                    data = read_ready(s)
                    if data is None:
                        break
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
                    # TLS sockets may hold decrypted bytes select() cannot see.
                    if not (isinstance(s, ssl.SSLSocket) and s.pending()):
                        break
    except OSError:
        return


class Reader:
    """Buffered reads of HTTP/1.1 messages from a socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buf += data

    def head(self):
        while b"\r\n\r\n" not in self.buf:
            self.fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        return head + b"\r\n\r\n"

    def body(self, n):
        while len(self.buf) < n:
            self.fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return body

    def rest(self):
        out = self.buf
        self.buf = b""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return out
                out += data
        except OSError:
            return out


def header(head, name):
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == name:
            return v.strip()
    return None


class Pool:
    """Idle upstream connections per destination, reused across downstream ones
    and closed after `upstream_idle_timeout_s` unused (Envoy's idle_timeout)."""

    def __init__(self, idle_timeout):
        self.lock = threading.Lock()
        self.idle = {}
        self.timeout = idle_timeout
        threading.Thread(target=self.reap, daemon=True).start()

    def get(self, key):
        with self.lock:
            conns = self.idle.get(key) or []
            while conns:
                c, _ = conns.pop()
                # A pooled connection the upstream closed is readable (EOF).
                if not select.select([c.sock], [], [], 0)[0]:
                    return c
                c.sock.close()
        return None

    def put(self, key, conn):
        with self.lock:
            self.idle.setdefault(key, []).append((conn, time.monotonic()))

    def reap(self):
        while True:
            time.sleep(min(self.timeout / 4, 1.0))
            now = time.monotonic()
            with self.lock:
                for key, conns in self.idle.items():
                    for c, since in [x for x in conns if now - x[1] > self.timeout]:
                        c.sock.close()
                    self.idle[key] = [x for x in conns if now - x[1] <= self.timeout]


POOL = Pool(float(CONFIG.get("upstream_idle_timeout_s", 3600)))


def http_outbound(down, addr, port, route):
    reader = Reader(down)
    key = (addr, port)
    while True:
        try:
            head = reader.head()
        except (EOFError, OSError):
            return
        length = int(header(head, b"content-length") or 0)
        request = head + reader.body(length)
        up = POOL.get(key)
        fresh = up is None
        if fresh:
            up = Reader(connect_upstream(addr, port, route))
        try:
            up.sock.sendall(request)
            resp_head = up.head()
        except (EOFError, OSError):
            if fresh:
                return
            up = Reader(connect_upstream(addr, port, route))
            up.sock.sendall(request)
            resp_head = up.head()
        n = header(resp_head, b"content-length")
        if n is not None:
            down.sendall(resp_head + up.body(int(n)))
            keep = (header(resp_head, b"connection") or b"").lower() != b"close"
        else:
            down.sendall(resp_head + up.rest())
            keep = False
        if keep:
            POOL.put(key, up)
        else:
            up.sock.close()


def outbound(down):
    addr, port = original_dst(down)
    route = route_for(addr, port)
    log("outbound", down.getpeername(), "->", addr, port, route["mode"])
    try:
        if route.get("http") and route["mode"] == "ISTIO_MUTUAL":
            http_outbound(down, addr, port, route)
        else:
            up = connect_upstream(addr, port, route)
            pump(down, up)
            up.close()
    except (OSError, EOFError, ssl.SSLError) as e:
        log("outbound error", e)
    finally:
        down.close()


def inbound(down):
    addr, port = original_dst(down)
    mode = inbound_mode(port)
    try:
        first = down.recv(1, socket.MSG_PEEK)
        if first == b"\x16":
            down = SERVER_CTX.wrap_socket(down, server_side=True)
            if LINKERD and down.selected_alpn_protocol() == L5D_ALPN:
                port = read_transport_header(down)
                if port is None:
                    log("inbound: no transport header")
                    down.close()
                    return
        elif mode == "STRICT":
            log("inbound plaintext refused (STRICT)", down.getpeername(), "port", port)
            down.close()
            return
        log("inbound", down.getpeername(), "->", POD_IP, port, mode)
        family = socket.AF_INET6 if ":" in POD_IP else socket.AF_INET
        app = socket.socket(family, socket.SOCK_STREAM)
        if not LINKERD:
            # Envoy's inbound passthrough; Linkerd's proxy connects from the pod's
            # own address.
            app.bind(("::6" if family == socket.AF_INET6 else "127.0.0.6", 0))
        app.connect((POD_IP, port))
        pump(down, app)
        app.close()
    except (OSError, ssl.SSLError) as e:
        log("inbound error", e)
    finally:
        down.close()


def plain_http(conn, body):
    try:
        Reader(conn).head()
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
    except (OSError, EOFError):
        pass
    finally:
        conn.close()


def listen(addr, port):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(128)
    return s


def serve(sock, handler):
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=handler, args=(conn,), daemon=True).start()


def main():
    any_addr = "::" if ":" in POD_IP else "0.0.0.0"
    if LINKERD:
        listeners = [
            (listen(any_addr, 4140), outbound),
            (listen(any_addr, L5D_INBOUND), inbound),
            (listen(any_addr, 4191), lambda c: plain_http(c, b"request_total 1\n")),
            (listen(any_addr, 4190), lambda c: plain_http(c, b"tap\n")),
        ]
        uid = 2102
    else:
        listeners = [
            (listen(any_addr, CONFIG.get("outbound_port", 15001)), outbound),
            (listen(any_addr, CONFIG.get("inbound_port", 15006)), inbound),
            (listen(any_addr, 15021), lambda c: plain_http(c, b"ready\n")),
            (listen(any_addr, 15020), lambda c: plain_http(c, b"merged metrics\n")),
            (listen(any_addr, 15090), lambda c: plain_http(c, b"envoy_server_live 1\n")),
            (listen("127.0.0.1", 15000), lambda c: plain_http(c, b"admin\n")),
        ]
        uid = 1337
    # Everything is loaded and bound: become the proxy user the rules skip.
    os.setgroups([])
    os.setgid(CONFIG.get("gid", uid))
    os.setuid(CONFIG.get("uid", uid))
    for sock, handler in listeners:
        threading.Thread(target=serve, args=(sock, handler), daemon=True).start()
    print("sidecar ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    main()

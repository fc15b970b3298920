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
- HBONE inbound (15008 in the pod): terminates the mutual TLS, opens the CONNECT
  target in the pod from the HBONE peer's address (IP_TRANSPARENT: the app sees the
  real client's address) and relays;
- plaintext inbound (15006 in the pod): SO_ORIGINAL_DST, then STRICT closes the
  connection unanswered, PERMISSIVE relays from the client's own address;
- 15021 (readiness) and 15020 (metrics) in its own namespace.

Where it differs from ztunnel: pods come from a JSON file instead of istio-cni's
UDS, no xDS, no RBAC beyond STRICT/PERMISSIVE, no waypoints, HTTP/2 without HPACK
compression (literal headers) and without flow-control back-pressure beyond
WINDOW_UPDATEs, no DNS proxy.

usage: ztunnel.py CONFIG.json   (as root; runs until SIGTERM)
"""

import ctypes
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


def listen_in(pod, port, transparent=False):
    def make():
        s = marked_socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if transparent:
            s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        s.bind(("0.0.0.0", port))
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


def contexts(pod):
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_cert_chain(pod["cert"], pod["key"])
    client.load_verify_locations(CONFIG["ca"])
    client.check_hostname = False
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    client.set_alpn_protocols(["h2"])
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pod["cert"], pod["key"])
    server.load_verify_locations(CONFIG["ca"])
    server.verify_mode = ssl.CERT_REQUIRED
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    server.set_alpn_protocols(["h2"])
    return client, server


for p in CONFIG["pods"]:
    p["client_ctx"], p["server_ctx"] = contexts(p)


# --- a minimal HTTP/2: CONNECT streams over one connection --------------------------
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def frame(kind, flags, stream, payload=b""):
    return struct.pack("!I", len(payload))[1:] + bytes([kind, flags]) + struct.pack("!I", stream) + payload


def literal(name, value):
    """HPACK literal header field without indexing, new name, no Huffman."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def parse_literals(block):
    out, i = {}, 0
    while i < len(block):
        if block[i] != 0:
            raise ValueError("only literal headers are spoken here")
        n = block[i + 1]
        name = block[i + 2 : i + 2 + n]
        i += 2 + n
        m = block[i]
        out[name] = block[i + 1 : i + 1 + m]
        i += 1 + m
    return out


class H2:
    """One HTTP/2 connection carrying CONNECT streams; a reader thread feeds them."""

    def __init__(self, sock, server_side, on_stream=None):
        # One TLS connection must not be read and written by two threads at once
        # (OpenSSL does not allow it): every TLS read and write holds `lock`, and the
        # socket is non-blocking so that the reader never holds it while it waits.
        sock.setblocking(False)
        self.sock = sock
        self.lock = threading.Lock()
        self.buf = b""
        self.streams = {}
        self.next_id = 1
        self.on_stream = on_stream
        self.closed = False
        if server_side:
            got = self.recv_exact(len(PREFACE))
            if got != PREFACE:
                raise ValueError("not an HTTP/2 preface")
            self.send(frame(SETTINGS, 0, 0))
        else:
            self.send(PREFACE + frame(SETTINGS, 0, 0))
        threading.Thread(target=self.read_loop, daemon=True).start()

    def send(self, data):
        view = memoryview(data)
        with self.lock:
            while view:
                try:
                    view = view[self.sock.send(view):]
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                    select.select([], [self.sock], [], 1)

    def recv_exact(self, n):
        while len(self.buf) < n:
            with self.lock:
                try:
                    chunk = self.sock.recv(65536)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    chunk = None
            if chunk is None:
                select.select([self.sock], [], [], 1)
                continue
            if not chunk:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_loop(self):
        try:
            while True:
                head = self.recv_exact(9)
                length = int.from_bytes(head[:3], "big")
                kind, flags = head[3], head[4]
                stream = struct.unpack("!I", head[5:9])[0] & 0x7FFFFFFF
                payload = self.recv_exact(length) if length else b""
                if kind == SETTINGS and not flags & ACK:
                    self.send(frame(SETTINGS, ACK, 0))
                elif kind == PING and not flags & ACK:
                    self.send(frame(PING, ACK, 0, payload))
                elif kind == HEADERS:
                    headers = parse_literals(payload)
                    st = self.streams.get(stream)
                    if st is None and self.on_stream:
                        st = Stream(self, stream)
                        self.streams[stream] = st
                        threading.Thread(target=self.on_stream, args=(st, headers), daemon=True).start()
                    elif st is not None:
                        st.headers = headers
                        st.ready.set()
                    if flags & END_STREAM and st is not None:
                        st.feed(b"")
                elif kind == DATA:
                    st = self.streams.get(stream)
                    if length:
                        self.send(frame(WINDOW_UPDATE, 0, 0, struct.pack("!I", length))
                                  + frame(WINDOW_UPDATE, 0, stream, struct.pack("!I", length)))
                    if st is not None:
                        st.feed(payload)
                        if flags & END_STREAM:
                            st.feed(b"")
                elif kind == RST_STREAM:
                    st = self.streams.pop(stream, None)
                    if st is not None:
                        st.feed(b"")
                elif kind == GOAWAY:
                    break
        except (EOFError, OSError, ValueError):
            pass
        self.closed = True
        for st in list(self.streams.values()):
            st.feed(b"")
            st.ready.set()

    def open(self, authority, extra):
        with self.lock:
            sid = self.next_id
            self.next_id += 2
            st = Stream(self, sid)
            self.streams[sid] = st
        block = literal(b":method", b"CONNECT") + literal(b":authority", authority)
        for k, v in extra:
            block += literal(k, v)
        self.send(frame(HEADERS, END_HEADERS, sid, block))
        return st


class Stream:
    def __init__(self, conn, sid):
        self.conn, self.sid = conn, sid
        self.r, self.w = os.pipe()
        self.ready = threading.Event()
        self.headers = {}
        self.eof = False

    def feed(self, data):
        if self.eof:
            return
        if data:
            os.write(self.w, data)
        else:
            self.eof = True
            os.close(self.w)

    def send(self, data):
        while data:
            part, data = data[:16384], data[16384:]
            self.conn.send(frame(DATA, 0, self.sid, part))

    def close(self):
        try:
            self.conn.send(frame(DATA, END_STREAM, self.sid))
        except OSError:
            pass


def relay_stream(sock, st):
    """Copies bytes between a socket and a stream until both ends are done."""

    def down():
        while True:
            data = os.read(st.r, 65536)
            if not data:
                break
            sock.sendall(data)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    t = threading.Thread(target=down, daemon=True)
    t.start()
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            st.send(data)
    except OSError:
        pass
    st.close()
    t.join(timeout=30)
    sock.close()
    os.close(st.r)
    st.conn.streams.pop(st.sid, None)


def pump(a, b):
    socks = [a, b]
    try:
        while True:
            ready, _, _ = select.select(socks, [], [], 30)
            if not ready:
                return
            for s in ready:
                data = s.recv(65536)
                if not data:
                    return
                (b if s is a else a).sendall(data)
    except OSError:
        return


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


def outbound(src, down):
    ip, port = original_dst(down)
    dst = PODS.get(ip)
    log("outbound", src["name"], down.getpeername(), "->", ip, port, "hbone" if dst else "passthrough")
    try:
        if dst is None:
            up = connect_in(src, (ip, port))
            pump(down, up)
            up.close()
            down.close()
            return
        conn = hbone_to(src, dst)
        peer = down.getpeername()
        st = conn.open(
            ("%s:%d" % (ip, port)).encode(),
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


def serve(sock, handler, tls_ctx=None):
    while True:
        conn, _ = sock.accept()
        if tls_ctx is not None:

            def wrap(c=conn):
                try:
                    handler(tls_ctx.wrap_socket(c, server_side=True))
                except (OSError, ssl.SSLError) as e:
                    log("tls accept error", e)
                    c.close()

            threading.Thread(target=wrap, daemon=True).start()
        else:
            threading.Thread(target=handler, args=(conn,), daemon=True).start()


def plain_http(conn, body):
    try:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    except OSError:
        pass
    conn.close()


def main():
    for pod in CONFIG["pods"]:
        if not pod.get("enrolled", True):
            continue
        out = listen_in(pod, 15001, transparent=True)
        hb = listen_in(pod, 15008, transparent=True)
        plain = listen_in(pod, 15006, transparent=True)
        threading.Thread(target=serve, args=(out, lambda c, p=pod: outbound(p, c)), daemon=True).start()
        threading.Thread(target=serve, args=(hb, lambda c, p=pod: hbone_inbound(p, c), pod["server_ctx"]), daemon=True).start()
        threading.Thread(target=serve, args=(plain, lambda c, p=pod: plaintext_inbound(p, c)), daemon=True).start()
    for port, body in [(15021, b"ready\n"), (15020, b"ztunnel metrics\n")]:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(16)
        threading.Thread(target=serve, args=(s, lambda c, b=body: plain_http(c, b)), daemon=True).start()
    print("ztunnel ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    main()

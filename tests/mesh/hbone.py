"""HBONE for the mesh stand-ins (tests/mesh/ztunnel.py, tests/mesh/waypoint.py):
mutual TLS contexts with SPIFFE certificates and ALPN `h2`, and a minimal HTTP/2
that carries CONNECT streams over one connection (literal headers, no HPACK
compression, WINDOW_UPDATEs for every DATA frame, no other flow control).
"""

import os
import select
import socket
import ssl
import struct
import threading


def contexts(cert, key, ca):
    """(client, server) TLS 1.3 contexts for HBONE: ALPN h2, client certificates
    required, no SNI or host name check (HBONE peers are checked by SAN)."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_cert_chain(cert, key)
    client.load_verify_locations(ca)
    client.check_hostname = False
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    client.set_alpn_protocols(["h2"])
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    server.load_verify_locations(ca)
    server.verify_mode = ssl.CERT_REQUIRED
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    server.set_alpn_protocols(["h2"])
    return client, server


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


def serve(sock, handler, tls_ctx=None, log=lambda *a: None):
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

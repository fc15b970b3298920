"""Overlapping TCP segments with different bytes, sent for real.

    overlap_peer.py server PORT
    overlap_peer.py client HOST PORT hello-first|request-first

The server accepts one connection, reads until the client shuts down its side,
answers "OK\\n", and prints what it read as hex: what the receiving kernel
delivered.

The client connects with an ordinary socket and sends a first version of its
bytes (a TLS ClientHello made by Python's ssl module, or an HTTP request). It then
reads its socket's sequence numbers with TCP_REPAIR and sends, through a raw
socket (IPPROTO_RAW, so the kernel adds nothing), one TCP segment at the same
sequence number carrying a second, longer version (the request, or the
ClientHello). The receiver keeps the first version for the overlapping bytes and
takes the second one's tail. Last, the ordinary socket sends that same tail, so
both ends agree on the sequence numbers again, shuts down its side and reads the
answer: the connection ends normally.
The client prints both versions as JSON (hex).

TCP timestamps must be off in the client's namespace (the raw segment carries no
options): net.ipv4.tcp_timestamps=0.
"""

import json
import socket
import ssl
import struct
import sys
import time

TCP_REPAIR = 19
TCP_REPAIR_QUEUE = 20
TCP_QUEUE_SEQ = 21
TCP_RECV_QUEUE = 1
TCP_SEND_QUEUE = 2
TCP_REPAIR_OFF_NO_WP = -1


def client_hello():
    """A real ClientHello from OpenSSL, without any network."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="server.test")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def request(length):
    head = b"GET / HTTP/1.1\r\nHost: server.test\r\nX-Pad: "
    tail = b"\r\n\r\n"
    pad = max(0, length - len(head) - len(tail))
    return head + b"a" * pad + tail


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def segment(src, dst, sport, dport, seq, ack, payload):
    """An IPv4 packet holding one TCP segment (ACK|PSH) with `payload`."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, 0x18, 64240, 0, 0)
    pseudo = struct.pack("!4s4sBBH", src, dst, 0, socket.IPPROTO_TCP, len(tcp) + len(payload))
    csum = checksum(pseudo + tcp + payload)
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    total = 20 + len(tcp) + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0x4D54, 0x4000, 64, socket.IPPROTO_TCP, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + tcp + payload


def queue_seq(sock, queue):
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, queue)
    return sock.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ) & 0xFFFFFFFF


def client(host, port, order):
    hello = client_hello()
    if order == "hello-first":
        first, second = hello, request(len(hello) + 40)
    elif order == "request-first":
        first = request(64)
        second = hello
    else:
        sys.exit(f"overlap_peer: unknown order {order!r}")
    assert len(second) > len(first)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(first)
    time.sleep(0.3)  # acknowledged by now
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    snd_nxt = queue_seq(sock, TCP_SEND_QUEUE)
    rcv_nxt = queue_seq(sock, TCP_RECV_QUEUE)
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)
    start = (snd_nxt - len(first)) & 0xFFFFFFFF
    (src, sport), (dst, dport) = sock.getsockname(), sock.getpeername()
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    pkt = segment(socket.inet_aton(src), socket.inet_aton(dst), sport, dport, start, rcv_nxt, second)
    raw.sendto(pkt, (dst, 0))
    raw.close()
    time.sleep(0.3)
    # The receiver now holds len(second) bytes: send the same tail through the
    # socket so that its sequence numbers catch up.
    sock.sendall(second[len(first):])
    sock.shutdown(socket.SHUT_WR)
    answer = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    sock.close()
    print(json.dumps({"first": first.hex(), "second": second.hex(), "answer": answer.decode()}))


def server(port):
    with socket.create_server(("", port), family=socket.AF_INET) as ls:
        conn, _ = ls.accept()
        with conn:
            conn.settimeout(5)
            data = b""
            try:
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except socket.timeout:
                pass
            conn.sendall(b"OK\n")
            print(data.hex(), flush=True)


def main(argv):
    if len(argv) == 2 and argv[0] == "server":
        server(int(argv[1]))
    elif len(argv) == 4 and argv[0] == "client":
        client(argv[1], argv[2], argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

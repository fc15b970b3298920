#!/usr/bin/python3
"""One DNS query over TCP (RFC 7766): prints the A records of the answer, or the
response code when there are none.

usage: dnsq.py NAME SERVER[:PORT]
"""

import socket
import struct
import sys

name, server = sys.argv[1], sys.argv[2]
host, _, port = server.partition(":")
question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + question + struct.pack("!HH", 1, 1)
with socket.create_connection((host, int(port or 53)), timeout=5) as s:
    s.sendall(struct.pack("!H", len(query)) + query)
    length = struct.unpack("!H", s.recv(2, socket.MSG_WAITALL))[0]
    reply = s.recv(length, socket.MSG_WAITALL)
qid, flags, _qd, ancount = struct.unpack("!HHHH", reply[:8])
i = 12 + len(question) + 4
out = []
for _ in range(ancount):
    i += 2  # a compressed name pointer
    rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", reply[i : i + 10])
    i += 10
    if rtype == 1 and rdlen == 4:
        out.append(socket.inet_ntoa(reply[i : i + 4]))
    i += rdlen
print(" ".join(out) if out else "rcode %d" % (flags & 0xF))

#!/usr/bin/env python3
"""Regenerates fuzz/seeds/<target>/: starting inputs for the fuzz targets, cut from
the project's own test captures (agent/tests/data, see its README). Needs tshark.
`cargo xtask fuzz` copies them into fuzz/corpus/<target>/ before a run.

  classify                   the first 1.5 KiB of each direction of every TCP
                             connection (TLS stacks, STARTTLS, proxies, plaintext)
  upgrade, tunnel            the same, of the STARTTLS and proxy captures
  link_layer                 single frames of each link layer and tunnel capture
  ip_fragments               the raw IP packets of the fragments capture
  sslv2_hello                an SSLv2-format ClientHello (OpenSSL 0.9.8's shape)
"""
import os, shutil, struct, subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "agent", "tests", "data")
SEEDS = os.path.join(HERE, "seeds")
CUT = 1536


def streams(capture):
    """(client bytes, server bytes) of every TCP stream, via tshark's follow."""
    path = os.path.join(DATA, capture)
    n = subprocess.run(["tshark", "-r", path, "-T", "fields", "-e", "tcp.stream"],
                       capture_output=True, text=True, check=True).stdout.split()
    out = []
    for s in sorted({int(x) for x in n if x}):
        text = subprocess.run(["tshark", "-r", path, "-q", "-z", f"follow,tcp,raw,{s}"],
                              capture_output=True, text=True, check=True).stdout
        c, d = b"", b""
        for line in text.splitlines():
            if not line or line.startswith(("=", "Follow", "Filter", "Node")):
                continue
            if line.startswith("\t"):
                d += bytes.fromhex(line.strip())
            else:
                c += bytes.fromhex(line.strip())
        if c or d:
            out.append((c[:CUT], d[:CUT]))
    return out


def frames(capture):
    """(link type, frame) of every packet of a pcap or single-section pcapng file."""
    data = open(os.path.join(DATA, capture), "rb").read()
    if data[:4] == b"\xd4\xc3\xb2\xa1":
        link = struct.unpack_from("<I", data, 20)[0]
        at, out = 24, []
        while at + 16 <= len(data):
            incl = struct.unpack_from("<I", data, at + 8)[0]
            out.append((link, data[at + 16 : at + 16 + incl]))
            at += 16 + incl
        return out
    out, links, at = [], [], 0
    while at + 12 <= len(data):
        ty, total = struct.unpack_from("<II", data, at)
        body = data[at + 8 : at + total - 4]
        if ty == 1:
            links.append(struct.unpack_from("<H", body, 0)[0])
        elif ty == 6:
            iface, _, _, caplen, _ = struct.unpack_from("<IIIII", body, 0)
            out.append((links[iface], body[20 : 20 + caplen]))
        at += total
    return out


def write(target, name, blob):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(blob)


def main():
    shutil.rmtree(SEEDS, ignore_errors=True)
    for cap in ["handshakes.pcapng", "stacks.pcapng", "upgrades.pcapng"]:
        for i, (c, s) in enumerate(streams(cap)):
            two = struct.pack(">H", len(c)) + c + s
            name = f"{cap.split('.')[0]}-{i}"
            if cap == "upgrades.pcapng":
                write("upgrade", name, two)
                write("tunnel", name, two)
            # classify: split, closing flags (closed), port byte, then the streams.
            write("classify", name, struct.pack(">H", len(c)) + b"\x01\x00" + c + s)
    # link_layer: index into its table of link types, a UDP port, the frame.
    index = {1: 0, 113: 1, 276: 2, 101: 3}
    for cap, port in [("sll-arphrd.pcap", 0), ("sll2.pcap", 0), ("qinq-pppoe.pcap", 0),
                      ("udp-tunnels.pcap", 4789), ("ip-tunnels.pcap", 0), ("gre.pcap", 0),
                      ("fragments.pcap", 0)]:
        for i, (link, fr) in enumerate(frames(cap)[:6]):
            write("link_layer", f"{cap.split('.')[0]}-{i}", bytes([index[link]]) + struct.pack(">H", port) + fr)
    blob = b""
    for link, fr in frames("fragments.pcap"):
        ip = fr[14:]
        blob += struct.pack(">H", len(ip)) + ip
    write("ip_fragments", "fragments", blob)
    hello = bytes([0x80, 0, 1, 3, 1, 0, 9, 0, 0, 0, 16, 7, 0, 0xC0, 0, 0, 0x2F, 0, 0, 0x35]) + b"\xab" * 16
    hello = hello[:1] + bytes([len(hello) - 2]) + hello[2:]
    write("sslv2_hello", "openssl-0.9.8", hello)


if __name__ == "__main__":
    main()

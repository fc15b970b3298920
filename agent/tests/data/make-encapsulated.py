#!/usr/bin/env python3
"""Re-wraps real handshakes from handshakes.pcapng in other link layers, tunnels and
file defects, one small capture per case (see README.md). Deterministic: run it from
this directory with no arguments; needs only Python 3.

The IP packets of three connections of handshakes.pcapng are taken as they are:
19001 (TLS 1.3 mutual TLS), 19002 (TLS 1.3 one-way) and 19008 (plaintext HTTP).
"""
import struct

SRC = "handshakes.pcapng"


def read_pcapng(path):
    """(link type, ts_ns, frame) of every packet; assumes little-endian, one section."""
    data = open(path, "rb").read()
    out, links, at = [], [], 0
    while at + 12 <= len(data):
        ty, total = struct.unpack_from("<II", data, at)
        body = data[at + 8 : at + total - 4]
        if ty == 1:
            resol, o = 6, 8
            while o + 4 <= len(body):
                code, ln = struct.unpack_from("<HH", body, o)
                if code == 0:
                    break
                if code == 9:
                    resol = body[o + 4]
                o += 4 + ln + (-ln % 4)
            links.append((struct.unpack_from("<H", body, 0)[0], resol))
        elif ty == 6:
            iface, hi, lo, caplen, _ = struct.unpack_from("<IIIII", body, 0)
            ts = ((hi << 32) | lo) * 10 ** (9 - links[iface][1])
            out.append((links[iface][0], ts, body[20 : 20 + caplen]))
        at += total
    return out


def connections():
    """IP packets (after the 14-byte Ethernet header) per server port, with times."""
    conns = {19001: [], 19002: [], 19008: []}
    for link, ts, frame in read_pcapng(SRC):
        assert link == 1, "handshakes.pcapng is Ethernet"
        ip = frame[14:]
        if ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        ihl = (ip[0] & 15) * 4
        sport, dport = struct.unpack_from(">HH", ip, ihl)
        for port in conns:
            if port in (sport, dport):
                conns[port].append((ts, ip))
    return conns


def pcap(path, link, frames):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, link))
        for ts, fr in frames:
            f.write(struct.pack("<IIII", ts // 10**9, (ts % 10**9) // 1000, len(fr), len(fr)))
            f.write(fr)


def block(ty, body):
    body += b"\0" * (-len(body) % 4)
    total = 12 + len(body)
    return struct.pack("<II", ty, total) + body + struct.pack("<I", total)


def pcapng(path, links, packets):
    """links: list of link types; packets: (interface, ts_ns, frame, caplen override)."""
    with open(path, "wb") as f:
        f.write(block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)))
        for lt in links:
            f.write(block(1, struct.pack("<HHI", lt, 0, 262144)))
        for iface, ts, fr in packets:
            us = ts // 1000
            f.write(block(6, struct.pack("<IIIII", iface, us >> 32, us & 0xFFFFFFFF, len(fr), len(fr)) + fr))


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(">%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src, dst, proto, payload, ident=1, frag=0):
    h = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, frag, 64, proto, 0, bytes(src), bytes(dst))
    h = h[:10] + struct.pack(">H", csum(h)) + h[12:]
    return h + payload


def ipv6(src, dst, nh, payload):
    return struct.pack(">IHBB16s16s", 6 << 28, len(payload), nh, 64, bytes(src), bytes(dst)) + payload


def v6addr(last):
    return bytes([0xFD, 0x13, 0x02, 0x13] + [0] * 11 + [last])


def to_v6(ip4):
    """The same TCP segment in an IPv6 packet (fd13:213::1 and ::2 for 127.0.0.1's ends)."""
    ihl = (ip4[0] & 15) * 4
    seg = ip4[ihl:]
    sport = struct.unpack_from(">H", seg, 0)[0]
    client = sport not in (19001, 19002, 19008)
    a, b = (v6addr(1), v6addr(2)) if client else (v6addr(2), v6addr(1))
    return ipv6(a, b, 6, seg)


def eth(ethertype, payload):
    return b"\x02\0\0\0\0\x01" + b"\x02\0\0\0\0\x02" + struct.pack(">H", ethertype) + payload


def udp(sport, dport, payload):
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


OUT_A, OUT_B = [10, 213, 100, 1], [10, 213, 100, 2]


def sll(hatype, proto, payload):
    return struct.pack(">HHH8sH", 0, hatype, 6, b"\x02\0\0\0\0\x01\0\0", proto) + payload


def sll2(hatype, proto, payload):
    return struct.pack(">HHIHBB8s", proto, 0, 1, hatype, 0, 6, b"\x02\0\0\0\0\x01\0\0") + payload


def main():
    c = connections()
    mtls, oneway, http = c[19001], c[19002], c[19008]
    every = sorted(mtls + oneway + http)

    # Linux cooked v1: ARPHRD_LOOPBACK (772), 530, ARPHRD_IPGRE (778), ARPHRD_NONE.
    frames = [(ts, sll(772, 0x0800, ip)) for ts, ip in mtls]
    frames += [(ts, sll(530, 0x0800, ip)) for ts, ip in oneway]
    frames += [(ts, sll(778, 0x0800, ip)) for ts, ip in http]
    pcap("sll-arphrd.pcap", 113, sorted(frames))
    # Linux cooked v2, ARPHRD_NONE (65534, a tun device) and 776 (sit) with IPv6.
    frames = [(ts, sll2(65534, 0x0800, ip)) for ts, ip in mtls]
    frames += [(ts, sll2(776, 0x86DD, to_v6(ip))) for ts, ip in oneway]
    pcap("sll2.pcap", 276, sorted(frames))

    # 802.1ad + 802.1Q, then PPPoE session with PPP (IPv4).
    def qinq_pppoe(ip):
        ppp = struct.pack(">BBHHH", 0x11, 0, 0x1234, len(ip) + 2, 0x0021) + ip
        return eth(0x88A8, struct.pack(">HH", 100, 0x8100) + struct.pack(">HH", 200, 0x8864) + ppp)

    pcap("qinq-pppoe.pcap", 1, [(ts, qinq_pppoe(ip)) for ts, ip in every])

    # UDP tunnels: VXLAN (Ethernet inside), Geneve (Ethernet inside), GTP-U (IP inside).
    def vxlan(ip):
        inner = eth(0x0800, ip)
        return eth(0x0800, ipv4(OUT_A, OUT_B, 17, udp(40000, 4789, b"\x08\0\0\0\0\0\x2a\0" + inner)))

    def geneve(ip):
        opt = b"\x01\x02\x03\x01" + b"\0\0\0\0"  # one 4-byte option
        hdr = bytes([len(opt) // 4, 0]) + struct.pack(">H", 0x6558) + b"\0\0\x2a\0"
        return eth(0x0800, ipv4(OUT_A, OUT_B, 17, udp(40001, 6081, hdr + opt + eth(0x0800, ip))))

    def gtp(ip):
        hdr = struct.pack(">BBHI", 0x30, 0xFF, len(ip), 0x1000)
        return eth(0x0800, ipv4(OUT_A, OUT_B, 17, udp(2152, 2152, hdr + ip)))

    frames = [(ts, vxlan(ip)) for ts, ip in mtls]
    frames += [(ts, geneve(ip)) for ts, ip in oneway]
    frames += [(ts, gtp(ip)) for ts, ip in http]
    pcap("udp-tunnels.pcap", 1, sorted(frames))

    # IP in IP (4in4), GRE (IPv4 inside, with a key), 6in4 and 4in6.
    def ipip(ip):
        return eth(0x0800, ipv4(OUT_A, OUT_B, 4, ip))

    def gre(ip):
        return eth(0x0800, ipv4(OUT_A, OUT_B, 47, struct.pack(">HHI", 0x2000, 0x0800, 7) + ip))

    def six_in_four(ip):
        return eth(0x0800, ipv4(OUT_A, OUT_B, 41, to_v6(ip)))

    def four_in_six(ip):
        return eth(0x86DD, ipv6(v6addr(0xA), v6addr(0xB), 4, ip))

    frames = [(ts, ipip(ip)) for ts, ip in mtls]
    frames += [(ts, six_in_four(ip)) for ts, ip in oneway]
    frames += [(ts, four_in_six(ip)) for ts, ip in http]
    pcap("ip-tunnels.pcap", 1, sorted(frames))
    frames = [(ts, gre(ip)) for ts, ip in mtls]
    pcap("gre.pcap", 1, frames)

    # IP fragments: every IPv4 packet of the mutual-TLS connection longer than 200
    # bytes (the ClientHello among them) is sent as 3 fragments, last first; the
    # one-way connection goes as IPv6 with fragment headers.
    def fragments4(ip, ident):
        ihl = (ip[0] & 15) * 4
        hdr, data = ip[:ihl], ip[ihl:]
        if len(data) <= 200:
            return [ip]
        cut1, cut2 = 96, 192
        parts = [(0, data[:cut1], True), (cut1, data[cut1:cut2], True), (cut2, data[cut2:], False)]
        out = []
        for off, part, more in parts:
            frag = (0x2000 if more else 0) | (off // 8)
            out.append(ipv4(hdr[12:16], hdr[16:20], 6, part, ident=ident, frag=frag))
        return out[::-1]

    def fragments6(ip, ident):
        p6 = to_v6(ip)
        seg = p6[40:]
        if len(seg) <= 200:
            return [p6]
        src, dst = p6[8:24], p6[24:40]
        out = []
        for off, part, more in [(0, seg[:104], True), (104, seg[104:], False)]:
            fh = struct.pack(">BBHI", 6, 0, off | (1 if more else 0), ident)
            out.append(ipv6(src, dst, 44, fh + part))
        return out

    frames = []
    for i, (ts, ip) in enumerate(mtls):
        frames += [(ts, eth(0x0800, f)) for f in fragments4(ip, 0x100 + i)]
    for i, (ts, ip) in enumerate(oneway):
        frames += [(ts, eth(0x86DD, f)) for f in fragments6(ip, 0x200 + i)]
    pcap("fragments.pcap", 1, frames)

    # A file copied while tcpdump was still writing it: cut 100 bytes into the last
    # packet record (the plaintext connection's last segment).
    pcap("truncated.pcap", 1, [(ts, eth(0x0800, ip)) for ts, ip in every])
    data = open("truncated.pcap", "rb").read()
    last = len(every[-1][1]) + 14
    open("truncated.pcap", "wb").write(data[: len(data) - last + 10])

    # pcapng with what cannot be read beside what can: interface 0 Ethernet (the
    # one-way connection), interface 1 a link type nobody decodes (147, USER0),
    # interface 2 labelled raw IP (101) but holding Ethernet frames (the
    # plaintext connection), and two records with no bytes.
    pkts = [(0, ts, eth(0x0800, ip)) for ts, ip in oneway]
    pkts += [(1, ts, b"\x99" * 40) for ts, _ in oneway[:3]]
    pkts += [(2, ts, eth(0x0800, ip)) for ts, ip in http]
    pkts += [(0, oneway[-1][0] + 1000, b""), (0, oneway[-1][0] + 2000, b"")]
    pcapng("skipped.pcapng", [1, 147, 101], sorted(pkts, key=lambda p: p[1]))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Regenerates upgrades.pcapng: real clients upgrading to TLS in-band and through
proxies, on loopback, ports 19110-19122. Run as root from this directory
(needs openssl, curl, dumpcap, python3).

  19110 SMTP  19111 POP3  19112 IMAP  19113 FTP  19114 XMPP  19115 LDAP  19116 NNTP
      OpenSSL's `s_client -starttls <dialect>` against a small server here that
      speaks just enough of the dialect, then TLS (Python ssl).
  19120 HTTP CONNECT proxy, 19121 SOCKS proxy (4, 4a, 5 with and without a
      password), both here; curl asks them for https://.../ on 19122, where
      `openssl s_server -www` answers.
"""
import os, socket, ssl, struct, subprocess, sys, tempfile, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = tempfile.mkdtemp()


def sh(*args, **kw):
    return subprocess.run(args, cwd=WORK, check=True, capture_output=True, **kw)


def certs():
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
       "-keyout", "key.pem", "-out", "cert.pem", "-days", "3650", "-subj", "/CN=upgrade.test")


def tls_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(WORK, "cert.pem"), os.path.join(WORK, "key.pem"))
    return ctx


def read_until(c, marker, limit=8192):
    buf = b""
    while marker not in buf and len(buf) < limit:
        d = c.recv(1)
        if not d:
            break
        buf += d
    return buf


def dialect_server(port, script):
    ls = socket.create_server(("127.0.0.1", port))
    ls.settimeout(20)

    def run():
        try:
            c, _ = ls.accept()
            c.settimeout(10)
            script(c)
            with tls_ctx().wrap_socket(c, server_side=True) as s:
                s.recv(1024)
                s.sendall(b"bye\n")
        except Exception as e:  # the capture still shows what happened
            print(f"server {port}: {e}", file=sys.stderr)
        finally:
            ls.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def smtp(c):
    c.sendall(b"220 mx.upgrade.test ESMTP ready\r\n")
    read_until(c, b"\n")
    c.sendall(b"250-mx.upgrade.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
    read_until(c, b"\n")
    c.sendall(b"220 2.0.0 Ready to start TLS\r\n")


def pop3(c):
    c.sendall(b"+OK POP3 ready\r\n")
    read_until(c, b"\n")
    c.sendall(b"+OK Begin TLS negotiation\r\n")


def imap(c):
    c.sendall(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n")
    read_until(c, b"\n")
    c.sendall(b"* CAPABILITY IMAP4rev1 STARTTLS\r\n. OK CAPABILITY completed\r\n")
    read_until(c, b"\n")
    c.sendall(b". OK Begin TLS negotiation now\r\n")


def ftp(c):
    c.sendall(b"220 ftp.upgrade.test ready\r\n")
    read_until(c, b"\n")
    c.sendall(b"234 AUTH TLS successful\r\n")


def xmpp(c):
    read_until(c, b"<stream:stream", 4096)
    read_until(c, b">", 4096)
    c.sendall(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
              b"xmlns:stream='http://etherx.jabber.org/streams' id='1' from='upgrade.test' version='1.0'>"
              b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
              b"</stream:features>")
    read_until(c, b"/>")
    c.sendall(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")


def ldap(c):
    head = c.recv(2)
    n = head[1]
    if n & 0x80:
        n = int.from_bytes(c.recv(n & 0x7F), "big")
    body = b""
    while len(body) < n:
        body += c.recv(n - len(body))
    msgid = body[2:2 + body[1]]
    resp = b"\x0a\x01\x00\x04\x00\x04\x00"
    op = b"\x78" + bytes([len(resp)]) + resp
    inner = b"\x02" + bytes([len(msgid)]) + msgid + op
    c.sendall(b"\x30" + bytes([len(inner)]) + inner)


def nntp(c):
    c.sendall(b"200 news.upgrade.test ready\r\n")
    read_until(c, b"\n")
    c.sendall(b"101 Capability list:\r\nVERSION 2\r\nSTARTTLS\r\n.\r\n")
    read_until(c, b"\n")
    c.sendall(b"382 Continue with TLS negotiation\r\n")


def relay(a, b):
    def pump(x, y):
        try:
            while True:
                d = x.recv(65536)
                if not d:
                    break
                y.sendall(d)
        except OSError:
            pass
        finally:
            try:
                y.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    t = threading.Thread(target=pump, args=(b, a), daemon=True)
    t.start()
    pump(a, b)
    t.join(5)


def connect_proxy(port):
    ls = socket.create_server(("127.0.0.1", port))

    def serve(c):
        req = read_until(c, b"\r\n\r\n")
        target = req.split(b" ")[1].decode()
        host, p = target.rsplit(":", 1)
        up = socket.create_connection((host, int(p)))
        c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        relay(c, up)

    def run():
        while True:
            c, _ = ls.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=run, daemon=True).start()


def socks_proxy(port):
    ls = socket.create_server(("127.0.0.1", port))

    def exact(c, n):
        b = b""
        while len(b) < n:
            d = c.recv(n - len(b))
            if not d:
                raise OSError("closed")
            b += d
        return b

    def serve(c):
        ver = exact(c, 1)[0]
        if ver == 4:
            _, dport, ip = struct.unpack(">BH4s", exact(c, 7))
            read_until(c, b"\0")
            host = socket.inet_ntoa(ip)
            if ip[:3] == b"\0\0\0" and ip[3]:
                host = read_until(c, b"\0")[:-1].decode()
            up = socket.create_connection((host, dport))
            c.sendall(b"\0\x5a" + b"\0" * 6)
        else:
            methods = exact(c, exact(c, 1)[0])
            if 2 in methods:
                c.sendall(b"\x05\x02")
                exact(c, 1)
                exact(c, exact(c, 1)[0])
                exact(c, exact(c, 1)[0])
                c.sendall(b"\x01\x00")
            else:
                c.sendall(b"\x05\x00")
            _, _, _, atyp = exact(c, 4)
            if atyp == 1:
                host = socket.inet_ntoa(exact(c, 4))
            elif atyp == 3:
                host = exact(c, exact(c, 1)[0]).decode()
            else:
                host = socket.inet_ntop(socket.AF_INET6, exact(c, 16))
            dport = struct.unpack(">H", exact(c, 2))[0]
            up = socket.create_connection((host, dport))
            c.sendall(b"\x05\x00\x00\x01\x7f\x00\x00\x01" + struct.pack(">H", dport))
        relay(c, up)

    def run():
        while True:
            c, _ = ls.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=run, daemon=True).start()


def main():
    certs()
    cap = os.path.join(WORK, "cap.pcapng")
    dumpcap = subprocess.Popen(["dumpcap", "-q", "-i", "lo", "-f", "tcp portrange 19110-19122", "-w", cap],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    try:
        for port, proto, script in [(19110, "smtp", smtp), (19111, "pop3", pop3), (19112, "imap", imap),
                                    (19113, "ftp", ftp), (19114, "xmpp", xmpp), (19115, "ldap", ldap),
                                    (19116, "nntp", nntp)]:
            t = dialect_server(port, script)
            time.sleep(0.3)
            subprocess.run(["timeout", "10", "openssl", "s_client", "-quiet", "-starttls", proto,
                            "-connect", f"127.0.0.1:{port}"], input=b"hello\n", cwd=WORK,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            t.join(12)
        server = subprocess.Popen(["openssl", "s_server", "-quiet", "-www", "-accept", "19122",
                                   "-cert", "cert.pem", "-key", "key.pem"], cwd=WORK,
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        connect_proxy(19120)
        socks_proxy(19121)
        time.sleep(1)
        for proxy in ["http://127.0.0.1:19120", "socks4://127.0.0.1:19121", "socks4a://127.0.0.1:19121",
                      "socks5://127.0.0.1:19121", "socks5h://user:secret@127.0.0.1:19121"]:
            subprocess.run(["timeout", "10", "curl", "-sk", "--http1.1", "-o", "/dev/null", "-x", proxy,
                            "https://localhost:19122/"], cwd=WORK)
        time.sleep(1)
        server.kill()
    finally:
        time.sleep(1)
        dumpcap.terminate()
        dumpcap.wait(10)
    with open(cap, "rb") as f, open(os.path.join(HERE, "upgrades.pcapng"), "wb") as out:
        out.write(f.read())


if __name__ == "__main__":
    main()

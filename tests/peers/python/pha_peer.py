"""TLS 1.3 post-handshake client authentication with Python's ssl module (OpenSSL).

    pha_peer.py server PORT CERT KEY CA require|optional|never
    pha_peer.py client HOST PORT NAME CA [CERT KEY]

Both ends enable `SSLContext.post_handshake_auth`, so the client offers the
post_handshake_auth extension and the handshake itself asks for no certificate.
Every connection then runs the same exchange: the client sends a request; the
server (unless `never`) calls `verify_client_post_handshake()`, which sends a
CertificateRequest with its next write, and answers "step 1"; the client, reading
that answer, sends its Certificate (empty without CERT), CertificateVerify and
Finished, then a second request; the server reads it (verifying the certificate:
`require` refuses an empty one, `optional` accepts it) and answers with the
subject it saw.
"""

import socket
import ssl
import sys


def read_until(conn, end):
    data = b""
    while not data.endswith(end):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def server(port, cert, key, ca, mode):
    modes = {"require": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "never": ssl.CERT_REQUIRED}
    if mode not in modes:
        sys.exit(f"pha_peer: unknown mode {mode!r} (require, optional or never)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = modes[mode]
    # With post-handshake authentication on, OpenSSL asks for the certificate only
    # when verify_client_post_handshake() is called, not in the handshake.
    ctx.post_handshake_auth = True
    with socket.create_server(("", port), family=socket.AF_INET) as ls:
        while True:
            raw, _ = ls.accept()
            try:
                with ctx.wrap_socket(raw, server_side=True) as conn:
                    read_until(conn, b"\r\n\r\n")
                    if mode != "never":
                        conn.verify_client_post_handshake()
                    conn.sendall(b"step 1\n")
                    read_until(conn, b"\n")
                    peer = conn.getpeercert()
                    subject = dict(x[0] for x in peer["subject"]).get("commonName") if peer else "none"
                    conn.sendall(f"client certificate: {subject}\n".encode())
            except (ssl.SSLError, OSError) as e:
                print(f"pha_peer server: {e}", file=sys.stderr)


def client(host, port, name, ca, cert=None, key=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    ctx.post_handshake_auth = True
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            first = read_until(conn, b"\n")
            conn.sendall(b"second\n")
            rest = read_until(conn, b"\n")
            print((first + rest).decode("utf-8", "replace"), end="")


def main(argv):
    if len(argv) == 6 and argv[0] == "server":
        server(int(argv[1]), *argv[2:])
    elif len(argv) in (5, 7) and argv[0] == "client":
        client(*argv[1:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

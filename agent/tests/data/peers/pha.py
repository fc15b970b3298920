"""TLS 1.3 post-handshake authentication with Python's ssl (OpenSSL), for
make-stacks.sh. `pha.py server PORT CERT KEY CA` answers one connection: reads a
request, asks for the client's certificate after the handshake, answers.
`pha.py client PORT CA [CERT KEY]` offers post_handshake_auth and sends a request."""
import socket, ssl, sys

def server(port, cert, key, ca):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.post_handshake_auth = True
    with socket.create_server(("127.0.0.1", port)) as ls:
        ls.settimeout(10)
        c, _ = ls.accept()
        with ctx.wrap_socket(c, server_side=True) as s:
            s.recv(1024)
            s.verify_client_post_handshake()
            s.sendall(b"HTTP/1.0 200 OK\r\n\r\nfirst\n")
            s.recv(1024)  # the client's certificate flight arrives with its next read
            s.sendall(b"peer: %s\n" % str(s.getpeercert() is not None).encode())

def client(port, ca, cert=None, key=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(ca)
    ctx.post_handshake_auth = True
    if cert:
        ctx.load_cert_chain(cert, key)
    with socket.create_connection(("127.0.0.1", port)) as c:
        with ctx.wrap_socket(c) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            s.recv(1024)
            s.sendall(b"more\n")
            s.recv(1024)

if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(int(sys.argv[2]), *sys.argv[3:6])
    else:
        client(int(sys.argv[2]), *sys.argv[3:])

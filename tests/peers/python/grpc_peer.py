"""gRPC server and client on grpcio (which links BoringSSL statically).

    grpc_peer.py server PORT CERT KEY CA require|none
    grpc_peer.py client HOST:PORT NAME CA [CERT KEY]

The server serves one unary method, /mtlsa.Echo/Echo, that returns the request's
bytes (no protobuf: the identity serializer), with `require_client_auth` as given.
The client calls it once over TLS, verifying the server certificate for NAME, with
a client certificate when CERT and KEY are given, and prints the answer; it exits 1
if the call fails (a server that requires a certificate refuses one without).
"""

import sys
import time

import grpc

METHOD = "/mtlsa.Echo/Echo"


def read(path):
    with open(path, "rb") as f:
        return f.read()


def server(port, cert, key, ca, mode):
    if mode not in ("require", "none"):
        sys.exit(f"grpc_peer: unknown mode {mode!r} (require or none)")
    creds = grpc.ssl_server_credentials(
        [(read(key), read(cert))],
        root_certificates=read(ca),
        require_client_auth=(mode == "require"),
    )
    srv = grpc.server(
        __import__("concurrent.futures").futures.ThreadPoolExecutor(max_workers=2)
    )
    handler = grpc.method_handlers_generic_handler(
        "mtlsa.Echo",
        {"Echo": grpc.unary_unary_rpc_method_handler(lambda req, ctx: b"echo: " + req)},
    )
    srv.add_generic_rpc_handlers((handler,))
    if srv.add_secure_port(f"[::]:{port}", creds) == 0:
        sys.exit(f"grpc_peer: cannot listen on port {port}")
    srv.start()
    while True:
        time.sleep(3600)


def client(target, name, ca, cert=None, key=None):
    creds = grpc.ssl_channel_credentials(
        root_certificates=read(ca),
        private_key=read(key) if key else None,
        certificate_chain=read(cert) if cert else None,
    )
    with grpc.secure_channel(
        target, creds, options=(("grpc.ssl_target_name_override", name),)
    ) as channel:
        call = channel.unary_unary(METHOD)
        try:
            answer = call(b"hello from grpcio", timeout=10)
        except grpc.RpcError as e:
            print(f"grpc_peer: call failed: {e.code()}: {e.details()}", file=sys.stderr)
            sys.exit(1)
        print(answer.decode("utf-8", "replace"))


def main(argv):
    if len(argv) == 6 and argv[0] == "server":
        server(int(argv[1]), argv[2], argv[3], argv[4], argv[5])
    elif len(argv) in (4, 6) and argv[0] == "client":
        client(*argv[1:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

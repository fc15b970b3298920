#!/usr/bin/python3
"""A meshed workload's app: plain HTTP/1.1 with keep-alive (as most apps behind a
sidecar are), answering `hello from NAME` on every port given.

usage: app.py NAME ADDRESS PORT [PORT...]
"""

import http.server
import sys
import threading

NAME = sys.argv[1].encode()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"hello from " + NAME + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


servers = [Server((sys.argv[2], int(p)), Handler) for p in sys.argv[3:]]
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("app ready", flush=True)
servers[0].serve_forever()

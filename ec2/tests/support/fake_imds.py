"""A fake EC2 instance metadata service (IMDSv2 only), for enipool's tests.

    python fake_imds.py FILE.json

FILE.json maps metadata paths below /latest/meta-data/ to their text, e.g.
{"instance-id": "i-0123", "mac": "02:00:00:00:00:01", "network/interfaces/macs/02:..:01/subnet-id": "subnet-1"}.
A directory path (ending in "/") lists its children as the real service does.

PUT /latest/api/token (with X-aws-ec2-metadata-token-ttl-seconds) returns a token; every
GET must carry it in X-aws-ec2-metadata-token, or gets 401 (IMDSv1 is refused, as on an
instance that requires IMDSv2). GET /_calls returns {"tokens": n, "gets": n, "refused": n}.
Prints `listening 127.0.0.1:PORT` once it serves.
"""

import json
import secrets
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = secrets.token_hex(16)
STATS = {"tokens": 0, "gets": 0, "refused": 0}
LOCK = threading.Lock()
PREFIX = "/latest/meta-data/"


def load(path):
    with open(path) as f:
        return {k.strip("/"): str(v) for k, v in json.load(f).items()}


class Handler(BaseHTTPRequestHandler):
    data = {}

    def log_message(self, *args):
        pass

    def reply(self, status, body, content_type="text/plain"):
        raw = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_PUT(self):
        if self.path != "/latest/api/token" or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            return self.reply(400, "bad token request")
        with LOCK:
            STATS["tokens"] += 1
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("X-aws-ec2-metadata-token-ttl-seconds", self.headers["X-aws-ec2-metadata-token-ttl-seconds"])
        self.send_header("Content-Length", str(len(TOKEN)))
        self.end_headers()
        self.wfile.write(TOKEN.encode())

    def do_GET(self):
        if self.path == "/_calls":
            with LOCK:
                return self.reply(200, json.dumps(STATS), "application/json")
        if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
            with LOCK:
                STATS["refused"] += 1
            return self.reply(401, "")
        with LOCK:
            STATS["gets"] += 1
        if not self.path.startswith(PREFIX):
            return self.reply(404, "not found")
        key = self.path[len(PREFIX) :]
        if key.endswith("/") or key == "":
            base = key.strip("/")
            children = set()
            for k in self.data:
                if base == "" or k.startswith(base + "/"):
                    rest = k[len(base) + 1 :] if base else k
                    head, sep, _ = rest.partition("/")
                    children.add(head + ("/" if sep else ""))
            if not children:
                return self.reply(404, "not found")
            return self.reply(200, "\n".join(sorted(children)))
        value = self.data.get(key.strip("/"))
        if value is None:
            return self.reply(404, "not found")
        return self.reply(200, value)


def main():
    Handler.data = load(sys.argv[1])
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

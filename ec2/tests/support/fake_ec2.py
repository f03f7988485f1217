"""moto's EC2 server with a fault layer in front, for enipool's tests.

Run with the virtualenv's python (moto[server] installed there):

    python fake_ec2.py            # binds 127.0.0.1 on a free port

It prints `listening 127.0.0.1:PORT` once it serves. Every request goes to moto's own WSGI
application (the one `moto_server` runs), unless the fault layer was told to fail its action:

    POST /_fault/inject  {"action": "AttachNetworkInterface", "kind": "throttle", "times": 2}
         kinds: throttle (503 RequestLimitExceeded), 500 (InternalError), invalid (400
         InvalidParameterValue), subnet (400 InsufficientFreeAddressesInSubnet), hang (the
         request blocks until /_fault/release or 60 s, then fails with 500; it never reaches moto)
         action "*" matches every action; times -1 means until cleared.
    POST /_fault/clear       forget every injected fault (and release hung requests)
    POST /_fault/release     let hung requests fail now
    GET  /_fault/calls       {"calls": {action: n}, "failed": {action: n}, "hanging": n}
                             every EC2 request seen, per action, and the ones the layer failed
    GET  /_fault/requests    {action: [{param: value}, ...]}: the parameters of the last 100
                             requests of each action (moto ignores some, e.g. DeleteOnTermination)

Standard library plus moto only; no sleeps except the bounded wait of a hung request.
"""

import io
import json
import sys
import threading
import urllib.parse

from werkzeug.serving import make_server

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

ERRORS = {
    "throttle": (503, "RequestLimitExceeded", "Request limit exceeded."),
    "500": (500, "InternalError", "An internal error has occurred."),
    "invalid": (400, "InvalidParameterValue", "Injected invalid parameter value."),
    "subnet": (400, "InsufficientFreeAddressesInSubnet", "The specified subnet has no free addresses."),
    "hang": (500, "InternalError", "Hung request released."),
}


class Faults:
    def __init__(self):
        self.lock = threading.Lock()
        self.rules = []  # [action, kind, remaining]
        self.calls = {}
        self.failed = {}
        self.requests = {}
        self.hanging = 0
        self.release = threading.Event()

    def take(self, action, params):
        """Counts the call; returns the fault kind to answer with, or None."""
        with self.lock:
            self.calls[action] = self.calls.get(action, 0) + 1
            seen = self.requests.setdefault(action, [])
            seen.append({k: v[0] for k, v in params.items() if k not in ("Action", "Version")})
            del seen[:-100]
            for rule in self.rules:
                if rule[0] in (action, "*") and rule[2] != 0:
                    if rule[2] > 0:
                        rule[2] -= 1
                    self.failed[action] = self.failed.get(action, 0) + 1
                    return rule[1]
        return None


def error_response(start_response, kind, action):
    status, code, message = ERRORS[kind]
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message} ({action})</Message>"
        "</Error></Errors><RequestID>fault-layer</RequestID></Response>"
    ).encode()
    reason = {400: "Bad Request", 500: "Internal Server Error", 503: "Service Unavailable"}[status]
    start_response(f"{status} {reason}", [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))])
    return [body]


def json_response(start_response, value, status="200 OK"):
    body = json.dumps(value).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class FaultLayer:
    def __init__(self, app):
        self.app = app
        self.faults = Faults()

    def control(self, environ, start_response, path, body):
        f = self.faults
        if path == "/_fault/inject":
            try:
                rule = json.loads(body or b"{}")
                action, kind, times = rule["action"], rule["kind"], int(rule.get("times", 1))
            except (ValueError, KeyError, TypeError) as e:
                return json_response(start_response, {"error": str(e)}, "400 Bad Request")
            if kind not in ERRORS:
                return json_response(start_response, {"error": f"unknown kind {kind}"}, "400 Bad Request")
            with f.lock:
                f.rules.append([action, kind, times])
            return json_response(start_response, {"ok": True})
        if path == "/_fault/clear":
            with f.lock:
                f.rules.clear()
            f.release.set()
            return json_response(start_response, {"ok": True})
        if path == "/_fault/release":
            f.release.set()
            return json_response(start_response, {"ok": True})
        if path == "/_fault/calls":
            with f.lock:
                return json_response(
                    start_response, {"calls": dict(f.calls), "failed": dict(f.failed), "hanging": f.hanging}
                )
        if path == "/_fault/requests":
            with f.lock:
                return json_response(start_response, f.requests)
        return json_response(start_response, {"error": "no such control path"}, "404 Not Found")

    def __call__(self, environ, start_response):
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_fault/"):
            return self.control(environ, start_response, path, body)
        params = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        params.update(urllib.parse.parse_qs(environ.get("QUERY_STRING", "")))
        action = (params.get("Action") or ["?"])[0]
        kind = self.faults.take(action, params)
        if kind == "hang":
            with self.faults.lock:
                self.faults.hanging += 1
            self.faults.release.wait(60)
            with self.faults.lock:
                self.faults.hanging -= 1
        if kind is not None:
            return error_response(start_response, kind, action)
        return self.app(environ, start_response)


def main():
    host = "127.0.0.1"
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    app = FaultLayer(DomainDispatcherApplication(create_backend_app))
    server = make_server(host, port, app, threaded=True)
    print(f"listening {host}:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

"""moto's EC2 server with a fault layer in front, for enipool's tests.

Run with the virtualenv's python (moto[server] installed there):

    python fake_ec2.py            # binds 127.0.0.1 on a free port

It prints `listening 127.0.0.1:PORT` once it serves. Every request goes to moto's own WSGI
application (the one `moto_server` runs), through the subnet model (`subnet_model.py`: it picks
every IPv4 address and /28 prefix, and serves prefix delegation, which moto lacks), unless the
fault layer was told to fail its action:

    POST /_fault/inject  {"action": "AttachNetworkInterface", "kind": "throttle", "times": 2}
         kinds: throttle (503 RequestLimitExceeded), 500 (InternalError), invalid (400
         InvalidParameterValue), subnet (400 InsufficientFreeAddressesInSubnet), cidr (400
         InsufficientCidrBlocks), hang (the request blocks until /_fault/release or 60 s, then
         fails with 500; it never reaches moto), stale (a Describe* request answered with the
         answer the same request got last before the fault was injected, as an eventually
         consistent read would; a request never answered before passes through, uncounted)
         action "*" matches every action; times -1 means until cleared.
         A stale rule may name a mark ("from_mark": "x") to answer from instead of the latest answers.
    POST /_fault/mark        {"name": "x"}: remember the latest answers as they are now, under "x"
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

from subnet_model import SubnetModel

ERRORS = {
    "throttle": (503, "RequestLimitExceeded", "Request limit exceeded."),
    "500": (500, "InternalError", "An internal error has occurred."),
    "invalid": (400, "InvalidParameterValue", "Injected invalid parameter value."),
    "subnet": (400, "InsufficientFreeAddressesInSubnet", "The specified subnet has no free addresses."),
    "cidr": (400, "InsufficientCidrBlocks", "There are not enough free cidr blocks in the specified subnet."),
    "hang": (500, "InternalError", "Hung request released."),
}
# Kinds that answer without an error.
QUIET_KINDS = ("stale",)


class Faults:
    def __init__(self):
        self.lock = threading.Lock()
        self.rules = []  # [action, kind, remaining, snapshot of answers (stale only)]
        # The last answer to each distinct Describe* request: {(action, params): body}.
        self.answers = {}
        self.marks = {}
        self.stale = {}
        self.calls = {}
        self.failed = {}
        self.requests = {}
        self.hanging = 0
        self.release = threading.Event()

    def take(self, action, params):
        """Counts the call; returns (the fault kind to answer with, a stale answer), or (None, None)."""
        key = answer_key(action, params)
        with self.lock:
            self.calls[action] = self.calls.get(action, 0) + 1
            seen = self.requests.setdefault(action, [])
            seen.append({k: v[0] for k, v in params.items() if k not in ("Action", "Version")})
            del seen[:-100]
            for rule in self.rules:
                if rule[0] in (action, "*") and rule[2] != 0:
                    stale = None
                    if rule[1] == "stale":
                        stale = rule[3].get(key)
                        if stale is None:
                            continue
                    if rule[2] > 0:
                        rule[2] -= 1
                    counter = self.stale if stale is not None else self.failed
                    counter[action] = counter.get(action, 0) + 1
                    return rule[1], stale
        return None, None

    def remember(self, action, params, body):
        with self.lock:
            self.answers[answer_key(action, params)] = body


def answer_key(action, params):
    return (action, tuple(sorted((k, tuple(v)) for k, v in params.items() if k != "Version")))


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


def error_xml(start_response, status, code, message):
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message>"
        "</Error></Errors><RequestID>subnet-model</RequestID></Response>"
    ).encode()
    start_response(f"{status} Bad Request", [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))])
    return [body]


def xml_response(start_response, body):
    data = body.encode() if isinstance(body, str) else body
    start_response("200 OK", [("Content-Type", "text/xml"), ("Content-Length", str(len(data)))])
    return [data]


class FaultLayer:
    def __init__(self, app):
        self.app = app
        self.faults = Faults()
        self.model = SubnetModel()

    def control(self, environ, start_response, path, body):
        f = self.faults
        if path == "/_fault/inject":
            try:
                rule = json.loads(body or b"{}")
                action, kind, times = rule["action"], rule["kind"], int(rule.get("times", 1))
            except (ValueError, KeyError, TypeError) as e:
                return json_response(start_response, {"error": str(e)}, "400 Bad Request")
            if kind not in ERRORS and kind not in QUIET_KINDS:
                return json_response(start_response, {"error": f"unknown kind {kind}"}, "400 Bad Request")
            with f.lock:
                mark = rule.get("from_mark")
                if mark is not None and mark not in f.marks:
                    return json_response(start_response, {"error": f"no mark {mark}"}, "400 Bad Request")
                answers = dict(f.marks[mark] if mark is not None else f.answers)
                f.rules.append([action, kind, times, answers if kind == "stale" else None])
            return json_response(start_response, {"ok": True})
        if path == "/_fault/mark":
            try:
                name = json.loads(body or b"{}")["name"]
            except (ValueError, KeyError, TypeError) as e:
                return json_response(start_response, {"error": str(e)}, "400 Bad Request")
            with f.lock:
                f.marks[name] = dict(f.answers)
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
                    start_response,
                    {"calls": dict(f.calls), "failed": dict(f.failed), "stale": dict(f.stale), "hanging": f.hanging},
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
        kind, stale = self.faults.take(action, params)
        if stale is not None:
            return xml_response(start_response, stale)
        if kind == "hang":
            with self.faults.lock:
                self.faults.hanging += 1
            self.faults.release.wait(60)
            with self.faults.lock:
                self.faults.hanging -= 1
        if kind is not None:
            return error_response(start_response, kind, action)
        # moto is not safe to call from several threads at once, and the model's picks must not
        # interleave with another request's: one request at a time.
        with self.model.lock:
            answer = self.model.handle(action, params, environ)
            if answer is not None and answer[0] == "error":
                return error_xml(start_response, 400, answer[1], answer[2])
            if answer is not None:
                return xml_response(start_response, answer[1])
            status = []

            def capture(s, headers, exc_info=None):
                status.append((s, headers))
                return start_response(s, headers, exc_info) if exc_info else start_response(s, headers)

            try:
                body = b"".join(self.app(environ, capture))
            finally:
                self.model.done()
        if action.startswith("Describe") and status and status[0][0].startswith("200"):
            self.faults.remember(action, params, body)
        return [body]


def main():
    host = "127.0.0.1"
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    app = FaultLayer(DomainDispatcherApplication(create_backend_app))
    server = make_server(host, port, app, threaded=True)
    print(f"listening {host}:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""A strict AWS Lambda Runtime API (version 2018-06-01) for tests, written from the published API: the OpenAPI
specification in the Lambda developer guide (runtime-api.zip) and the documented state rules, as the Runtime
Interface Emulator enforces them. Anything the real API would reject is answered as it would be AND recorded as a
violation, so a test fails on it; so is what the documented contract asks of a runtime beyond that (an error body
in the standard format with its Lambda-Runtime-Function-Error-Type header, a result before the deadline).

    runtime_api.py SCENARIO.json

SCENARIO.json is a list of invocations, handed out in order by GET /runtime/invocation/next:
    [{"event": "<the raw event text>", "deadline_in": SECONDS}, ...]
After the last one, /next blocks for ever, as the real API does while no invocation comes.

Standard output gets one JSON object per line: {"listening": PORT} first, then for each request
{"next": ID, "deadline_ms": ...}, {"response": ID, "body": TEXT, "ms_before_deadline": N},
{"error": ID, "type": HEADER, "body": {...}, "ms_before_deadline": N}, {"init_error": {...}, "type": HEADER},
and {"violation": TEXT} for each rule broken.

The rules (runtime state -> what may come):
- started: GET next (-> invoking) or POST init/error (-> init-error). A response or error is 403 InvalidStateTransition.
- invoking (one invocation handed out): POST its response or error (-> answered). Another GET next is 403
  InvalidStateTransition: one invocation at a time. An id other than the current one is 400 InvalidRequestID.
  init/error is 403.
- answered: GET next (-> invoking). A response or error is 403 InvalidStateTransition; init/error is 403.
- init-error: everything is 403 (the runtime must exit after reporting).
- Paths other than the four documented ones are 404; a wrong method is 405; a response body over 6 MiB (6291456
  bytes) is 413 RequestEntityTooLarge; a POST without Content-Length is 411; a request without Host is 400.
"""
import json, sys, threading, time, uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BASE = "/2018-06-01/runtime"
MAX_PAYLOAD = 6 * 1024 * 1024
scenario = json.load(open(sys.argv[1]))
lock = threading.Lock()
state = {"name": "started", "current": None, "deadline_ms": 0, "handed": 0}


def emit(record):
    with lock:
        print(json.dumps(record), flush=True)


def now_ms():
    return int(time.time() * 1000)


class RuntimeAPI(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body=None, headers=()):
        data = json.dumps(body if body is not None else {"status": "OK"}).encode()
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def refuse(self, status, error_type, message):
        emit({"violation": f"{self.command} {self.path}: {message}"})
        self.reply(status, {"errorType": error_type, "errorMessage": message})

    def read_body(self):
        length = self.headers.get("Content-Length")
        if length is None:
            self.refuse(411, "LengthRequired", "a POST without Content-Length")
            return None
        return self.rfile.read(int(length))

    def checked(self):
        if self.request_version != "HTTP/1.1":
            self.refuse(400, "BadRequest", f"{self.request_version} instead of HTTP/1.1")
            return False
        if not self.headers.get("Host"):
            self.refuse(400, "BadRequest", "no Host header (HTTP/1.1 requires one)")
            return False
        return True

    def do_GET(self):
        if not self.checked():
            return
        if self.path != f"{BASE}/invocation/next":
            return self.refuse(404 if not self.known_path() else 405, "NotFound", "not a GET endpoint of the Runtime API")
        with lock:
            if state["name"] not in ("started", "answered"):
                name = state["name"]
                invalid = True
            else:
                invalid = False
                index = state["handed"]
                state["handed"] += 1
                if index < len(scenario):
                    request_id = str(uuid.uuid4())
                    state.update(name="invoking", current=request_id)
                    state["deadline_ms"] = now_ms() + int(scenario[index]["deadline_in"] * 1000)
                    deadline = state["deadline_ms"]
        if invalid:
            return self.refuse(403, "InvalidStateTransition", f"next while the runtime is {name}: one invocation at a time")
        if index >= len(scenario):
            while True:  # no invocation comes: the real API keeps the request open (the platform freezes the runtime)
                time.sleep(3600)
        emit({"next": request_id, "deadline_ms": deadline})
        data = scenario[index]["event"].encode()
        self.send_response(200)
        self.send_header("Lambda-Runtime-Aws-Request-Id", request_id)
        self.send_header("Lambda-Runtime-Deadline-Ms", str(deadline))
        self.send_header("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:eu-central-1:123456789012:function:boxer-mesh")
        self.send_header("Lambda-Runtime-Trace-Id", f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Sampled=0")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def known_path(self):
        parts = self.path.split("/")
        return self.path in (f"{BASE}/invocation/next", f"{BASE}/init/error") or (
            len(parts) == 6 and self.path.startswith(f"{BASE}/invocation/") and parts[5] in ("response", "error"))

    def do_POST(self):
        if not self.checked():
            return
        body = self.read_body()
        if body is None:
            return
        parts = self.path.split("/")
        if self.path == f"{BASE}/init/error":
            return self.init_error(body)
        if not (len(parts) == 6 and self.path.startswith(f"{BASE}/invocation/") and parts[5] in ("response", "error")):
            return self.refuse(405 if self.known_path() else 404, "NotFound", "not a POST endpoint of the Runtime API")
        request_id, kind = parts[4], parts[5]
        with lock:
            name, current, deadline = state["name"], state["current"], state["deadline_ms"]
            accepted = name == "invoking" and request_id == current
            if accepted and not (kind == "response" and len(body) > MAX_PAYLOAD):
                state["name"] = "answered"
        if name != "invoking":
            return self.refuse(403, "InvalidStateTransition", f"{kind} while the runtime is {name}")
        if request_id != current:
            return self.refuse(400, "InvalidRequestID", f"{kind} for {request_id}, not the current invocation {current}")
        left = deadline - now_ms()
        if left < 0:
            emit({"violation": f"the {kind} of {request_id} came {-left} ms after the deadline"})
        if kind == "response":
            if len(body) > MAX_PAYLOAD:
                with lock:
                    state["name"] = "answered"  # the API fails the invocation itself
                return self.refuse(413, "RequestEntityTooLarge", f"Exceeded maximum allowed payload size ({MAX_PAYLOAD} bytes).")
            emit({"response": request_id, "body": body.decode("utf-8", "replace"), "ms_before_deadline": left})
        else:
            emit({"error": request_id, "type": self.error_type(), "body": self.error_body(body), "ms_before_deadline": left})
        self.reply(202)

    def init_error(self, body):
        with lock:
            name = state["name"]
            if name == "started":
                state["name"] = "init-error"
        if name != "started":
            return self.refuse(403, "InvalidStateTransition", f"init/error while the runtime is {name}")
        emit({"init_error": self.error_body(body), "type": self.error_type()})
        self.reply(202)

    def error_type(self):
        value = self.headers.get("Lambda-Runtime-Function-Error-Type")
        if not value:
            emit({"violation": f"POST {self.path} without a Lambda-Runtime-Function-Error-Type header"})
        return value

    def error_body(self, body):
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if not (isinstance(parsed, dict) and isinstance(parsed.get("errorMessage"), str)
                and isinstance(parsed.get("errorType"), str)):
            emit({"violation": f"POST {self.path}: the body is not the standard error format: {body[:200]!r}"})
        return parsed


server = ThreadingHTTPServer(("127.0.0.1", 0), RuntimeAPI)
server.daemon_threads = True
emit({"listening": server.server_address[1]})
server.serve_forever()

"""The explorer's HTTP layer: the request handler, the server and the bounds on what a client
may send and hold. demos/explore.py is the model side (what each request computes); this file
only reads requests, refuses what it must and writes answers.

No other web page can make it compute: a request must name this server in its Host header (so
a DNS-rebound name is refused), must not come from another Origin, and posts JSON, which a
page elsewhere cannot send without a CORS preflight this server never answers. A client has
READ_TIMEOUT seconds to send its whole request (line, headers and body together, however it
trickles in), and at most MAX_CONNECTIONS connections are open at once (more: a 503 at once).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import select
import socket
import sys
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PAGE = Path(__file__).with_name("explore.html")
ROOT = Path(__file__).resolve().parents[1]  # the checkout the page's code imports contgpt from
MAX_BODY = 64 * 1024  # bytes of a request
MAX_REQUESTS = 32  # computed or waiting at once; more are answered 503 at once
READ_TIMEOUT = 10.0  # seconds a client has to send its request line, headers and body, all together
MAX_CONNECTIONS = 100  # open at once (each holds a thread); more are answered 503 at once and closed
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class BadRequest(ValueError):
    """What the page asked for is not possible: answered 400 with the reason."""


class ClientGone(Exception):
    """The client closed its connection: whatever it asked for is dropped."""


class DeadlineReader(io.RawIOBase):
    """A socket's reading side that gives up at a deadline, however the bytes trickle in: each
    receive may wait only for what is left of the time (a timeout per read would let a client
    that sends a byte a second hold its connection for ever)."""

    def __init__(self, sock: socket.socket):
        self.sock, self.deadline = sock, math.inf

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request's deadline passed")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class Handler(BaseHTTPRequestHandler):
    """One connection's requests. What it serves and its bounds come from its Server: the
    explorer, the slots of MAX_REQUESTS, the page's Content-Security-Policy, the read timeout."""

    server_version = "contgpt-explorer"

    def setup(self):
        self.timeout = self.server.read_timeout  # on the socket, for what the server sends
        super().setup()
        self.reader = DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self.reader)

    def handle_one_request(self):
        """One request: its request line, headers and body must all arrive within the server's read timeout."""
        self.reader.deadline = time.monotonic() + self.server.read_timeout
        super().handle_one_request()

    def do_GET(self):
        if doubled := self.doubled_header():
            return self.send_json(HTTPStatus.BAD_REQUEST, {"error": doubled})
        if refused := self.cross_origin():
            return self.send_json(HTTPStatus.FORBIDDEN, {"error": refused})
        if self.path == "/":
            return self.send(HTTPStatus.OK, PAGE.read_bytes(), "text/html; charset=utf-8")
        if self.path == "/api/info":
            return self.send_json(HTTPStatus.OK, self.server.explorer.info())
        self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no page {self.path[:100]!r}"})

    def do_OPTIONS(self):  # no CORS preflight is answered: a page elsewhere gets nothing to go on
        self.close_connection = True
        self.send_json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "the explorer answers GET and POST from its own page only"})

    def send_error(self, code, message=None, explain=None):
        """The standard library's own refusals (431 headers too large, 501 unknown method, 414...) as JSON, like every answer."""
        self.close_connection = True
        self.send_json(code, {"error": message or HTTPStatus(code).phrase})

    def do_POST(self):
        if doubled := self.doubled_header():
            self.close_connection = True
            return self.send_json(HTTPStatus.BAD_REQUEST, {"error": doubled})
        if refused := self.cross_origin():
            return self.send_json(HTTPStatus.FORBIDDEN, {"error": refused})
        if self.headers.get_content_type() != "application/json":
            self.close_connection = True
            return self.send_json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "the explorer takes application/json bodies only"})
        try:
            body = self.read_body()
        except BadRequest as e:
            return self.send_json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        except TimeoutError:  # a slow sender holds no slot and no model time: it is just dropped
            self.close_connection = True
            return self.send_json(HTTPStatus.REQUEST_TIMEOUT, {"error": f"the request took over {self.server.read_timeout:g} s to arrive"})
        if not self.server.slots.acquire(blocking=False):
            return self.send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "too many requests at once; try again"})
        try:
            self.post(body)
        except (ClientGone, BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the page moved on; nobody is listening
        finally:
            self.server.slots.release()

    def cross_origin(self) -> str | None:
        """Why this request may come from a page of another origin, or None. The Host must be
        this server's own address (a loopback name and its port) unless --host opened it to
        the network; an Origin, when a browser sends one, must be this server's."""
        host = self.headers.get("Host", "").lower()
        port = self.server.server_address[1]
        own = {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]")}
        if not self.server.open_to_network and host not in own:
            return f"this server answers to http://127.0.0.1:{port}/ only, not to Host {host[:100]!r}"
        origin = self.headers.get("Origin")
        if origin is not None and origin.lower() != f"http://{host}":
            return f"requests from another origin ({origin[:100]!r}) are refused"
        return None

    def doubled_header(self) -> str | None:
        """Why the request is refused for a checked header sent twice (a check must see it exactly once), or None."""
        for name in ("Host", "Origin"):
            if len(self.headers.get_all(name, [])) > 1:
                return f"the request carries the {name} header more than once"
        return None

    def client_gone(self) -> bool:
        """Whether the client closed its connection (a page reloaded, a fetch cancelled):
        its end of the socket reads as closed, not as more data."""
        try:  # poll, not select: select() fails for descriptors numbered 1024 and above
            poller = select.poll()
            poller.register(self.connection, select.POLLIN)
            return bool(poller.poll(0)) and not self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True

    def post(self, body: dict):
        routes = {"/api/tokenize": self.server.explorer.tokenize, "/api/predict": self.server.explorer.predict, "/api/sweep": None}
        if self.path not in routes:
            return self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no endpoint {self.path[:100]!r}"})
        try:
            client = f"{str(body.get('client', ''))[:64]}{self.path}"
            if self.path == "/api/sweep":
                return self.stream_sweep(self.server.explorer.sweep_plan(body), client)
            # no check that the client left: a prediction is one forward, and a client that
            # half-closes its side after sending (as some do) still waits for the answer
            result = self.server.explorer.run(client, lambda: routes[self.path](body))
        except BadRequest as e:
            return self.send_json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        except ValueError as e:  # the library's own checks (a token that sees no key, a word with no token...)
            return self.send_json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        except (ClientGone, BrokenPipeError, ConnectionResetError):
            raise
        except Exception as e:  # a bug: the page says what went wrong, the console has the traceback
            return self.send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": unexpected(e)})
        self.send_json(HTTPStatus.OK, {"superseded": True} if result is None else result)

    def read_body(self) -> dict:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise BadRequest("a request needs a Content-Length") from None
        if not 0 < length <= MAX_BODY:
            self.close_connection = True
            raise BadRequest(f"a request body must be 1 to {MAX_BODY} bytes, not {length}")
        raw = self.rfile.read(length)
        if len(raw) < length:
            self.close_connection = True
            raise BadRequest(f"the request body ended after {len(raw)} of {length} bytes")
        try:
            body = json.loads(raw, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as e:
            raise BadRequest(f"the request is not valid JSON ({e})") from None
        if not isinstance(body, dict):
            raise BadRequest("the request must be a JSON object")
        return body

    def stream_sweep(self, plan, client: str):
        """One JSON object per line: progress, then the result (or an error). The plan was
        checked before: bad input is a 400, not a stream. A client that leaves stops the
        sweep at its next batch."""
        self.connection.settimeout(self.server.read_timeout)
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.close_connection = True
        write = lambda data: (self.wfile.write((json.dumps(data) + "\n").encode()), self.wfile.flush())

        def progress(done, total):
            if self.client_gone():
                raise ClientGone
            write({"done": done, "total": total})

        started = time.perf_counter()
        try:
            result = self.server.explorer.run(client, lambda: self.server.explorer.sweep(plan, progress), self.client_gone)
        except ValueError as e:
            return write({"error": str(e)})
        except (ClientGone, BrokenPipeError, ConnectionResetError):
            raise
        except Exception as e:  # mid-stream: the status is sent already, so the error is the last line
            return write({"error": unexpected(e)})
        write({"superseded": True} if result is None else {**result, "seconds": time.perf_counter() - started})

    def send_json(self, status, data):
        self.send(status, json.dumps(data).encode(), "application/json")

    def send(self, status, body: bytes, kind: str):
        try:
            self.connection.settimeout(self.server.read_timeout)  # what the deadline left for reading is no bound on sending
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Frame-Options", "DENY")
            self.send_header("Content-Security-Policy", self.server.policy)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client left before its answer: nothing to tell it

    def log_message(self, *args):
        pass


def _refuse_constant(name: str):
    raise BadRequest(f"{name} is not a number the explorer takes")


def content_policy(page: str) -> str:
    """The page's Content-Security-Policy: no page may frame it (clickjacking), and the only
    script that runs is its own inline one, named by its hash; it talks to this server only."""
    script = page.split("<script>", 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    return (
        f"default-src 'self'; script-src 'sha256-{digest}'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        f"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )


def unexpected(error: Exception) -> str:
    """What a client is told of an unexpected exception: its type and message, no traceback, no
    local path. Called while handling it: the traceback goes to the server's console."""
    traceback.print_exc()
    message = str(error).replace(str(ROOT), "<contgpt>").replace(str(Path.home()), "~")
    return f"{type(error).__name__}: {message[:200]}"


class Server(ThreadingHTTPServer):
    """The explorer's server: one thread per connection, at most MAX_CONNECTIONS at once (past
    that, a new connection is answered 503 at once and closed; each idle one is dropped at its
    request's deadline), at most MAX_REQUESTS computing or waiting."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: a flood is accepted and answered 503, not left half-open

    def __init__(self, address, explorer, open_to_network: bool):
        super().__init__(address, Handler)
        self.explorer, self.open_to_network = explorer, open_to_network
        self.slots = threading.BoundedSemaphore(MAX_REQUESTS)
        self.policy = content_policy(PAGE.read_text(encoding="utf-8"))
        self.read_timeout = READ_TIMEOUT
        self.connections = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.busy = json.dumps({"error": f"the explorer has {MAX_CONNECTIONS} connections open; try again"}).encode()

    def process_request(self, request, client_address):
        if not self.connections.acquire(blocking=False):
            try:
                request.sendall(
                    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(self.busy), self.busy)
                )
            except OSError:
                pass
            return self.shutdown_request(request)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.connections.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()

    def handle_error(self, request, client_address):
        """A client that left mid-answer is no error worth a traceback; anything else is."""
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError, TimeoutError)):
            super().handle_error(request, client_address)


def serve(explorer, host: str = "127.0.0.1", port: int = 8000) -> Server:
    """A server for the page of `explorer` (a demos.explore.Explorer), not yet serving (call
    serve_forever, or run it in a thread). On a loopback address it answers only requests that
    name it; on any other, every Host."""
    return Server((host, port), explorer, open_to_network=host not in LOOPBACK)

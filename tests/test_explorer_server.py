"""The explorer's server against what a page of another origin, a slow client and a client that
leaves can do. A tiny random model with a trained tokenizer stands in for the default model (the
server's rules do not depend on it), so these run in the quick tier; every connection goes to
127.0.0.1, and every loop is bounded in count and time."""

import base64
import hashlib
import http.client
import json
import socket
import threading
import time

import pytest

from conftest import tiny_explorer_model
from demos import explore, explore_http
from tokenizer import Tokenizer

BATCH_SECONDS = 0.1  # of the slow sweep below
READ_TIMEOUT = 1.5  # the server's, shortened for these tests


class CountingExplorer(explore.Explorer):
    """Counts what it computes; its sweeps take BATCH_SECONDS a batch, for 100 batches."""

    def __init__(self, *args):
        super().__init__(*args)
        self.predictions = self.batches = 0

    def predict(self, body):
        self.predictions += 1
        return super().predict(body)

    def sweep(self, plan, progress):
        for done in range(1, 101):
            time.sleep(BATCH_SECONDS)
            self.batches += 1
            progress(done, 100)
        return {"x": [], "curves": {}, "other": []}


@pytest.fixture(scope="module")
def server(trained_bpe_json):
    tokenizer = Tokenizer.from_file(trained_bpe_json)
    explorer = CountingExplorer(tiny_explorer_model(tokenizer, 0.1), tokenizer, "tiny")
    saved, explore_http.READ_TIMEOUT = explore_http.READ_TIMEOUT, READ_TIMEOUT
    try:
        httpd = explore.serve(explorer, "127.0.0.1", 0)
    finally:
        explore_http.READ_TIMEOUT = saved
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield explorer, httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


PREDICT = {"prompt": "apple apple apple", "answers": ["1", "2"], "layer": 0}


def post(port, path, body, headers=None, timeout=10):
    """(status, JSON answer) of one POST, with the headers a same-origin page sends unless overridden."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    sent = {"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{port}", **(headers or {})}
    connection.request("POST", path, json.dumps(body).encode(), sent)
    response = connection.getresponse()
    status, text = response.status, response.read().decode()
    connection.close()
    return status, json.loads(text.splitlines()[-1])


def test_the_page_s_own_requests_are_served(server):
    explorer, port = server
    assert post(port, "/api/predict", PREDICT)[0] == 200
    assert post(port, "/api/predict", PREDICT, {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"})[0] == 200


@pytest.mark.parametrize(
    "headers, status, reason",
    [
        ({"Host": "evil.example:8000", "Origin": "http://evil.example:8000"}, 403, "answers to http://127.0.0.1"),  # DNS rebinding
        ({"Origin": "http://evil.example"}, 403, "another origin"),
        ({"Origin": "null"}, 403, "another origin"),
        ({"Content-Type": "text/plain"}, 415, "application/json"),  # what a page elsewhere can send without preflight
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
    ],
)
def test_nothing_another_origin_could_send_is_computed(server, headers, status, reason):
    explorer, port = server
    before = explorer.predictions
    answer = post(port, "/api/predict", PREDICT, headers)
    assert answer[0] == status and reason in answer[1]["error"]
    assert explorer.predictions == before


def test_no_cors_headers_are_sent(server):
    _, port = server
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("OPTIONS", "/api/predict", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    response = connection.getresponse()
    assert response.status == 405 and not any(h.lower().startswith("access-control") for h in response.headers)
    assert response.getheader("Content-Type") == "application/json" and "GET and POST" in json.loads(response.read())["error"]
    connection.close()


def test_slow_senders_hold_no_slot_and_are_dropped(server):
    """40 connections that announce 1000 bytes and send 10 (more than the 32 slots): a normal
    request is answered at once, and each slow one is dropped after READ_TIMEOUT."""
    explorer, port = server
    slow = []
    for _ in range(40):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(
            f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f'Content-Length: 1000\r\n\r\n{{"prompt":'.encode()
        )
        slow.append(s)
    started = time.perf_counter()
    assert post(port, "/api/predict", PREDICT)[0] == 200
    assert time.perf_counter() - started < 2.0
    deadline = time.perf_counter() + READ_TIMEOUT + 5
    for s in slow:
        s.settimeout(max(0.1, deadline - time.perf_counter()))
        answer = s.recv(4096)  # the 408, then the close; never a hang
        assert answer.startswith(b"HTTP/1.0 408") or answer == b"", answer[:100]
        s.close()
    assert time.perf_counter() < deadline


def test_an_abandoned_sweep_stops_at_its_next_batch(server, capfd):
    explorer, port = server
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = {**PREDICT, "points": 5, "selected": [0], "low": 0.5, "high": 1.0}
    connection.request("POST", "/api/sweep", json.dumps(body).encode(), {"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{port}"})
    response = connection.getresponse()
    assert json.loads(response.fp.readline()) == {"done": 1, "total": 100}
    response.close()  # the page cancelled, or moved on: its end of the connection closes
    connection.close()
    started = time.perf_counter()
    assert post(port, "/api/predict", PREDICT)[0] == 200  # waits for one batch at most
    waited = time.perf_counter() - started
    batches = explorer.batches
    time.sleep(5 * BATCH_SECONDS)
    assert waited < 2 * BATCH_SECONDS + 1.0 and explorer.batches == batches < 10
    assert "Traceback" not in capfd.readouterr().err


def test_a_sweep_past_the_work_cap_is_refused_before_it_runs(server):
    explorer, port = server
    long = " ".join(["apple"] * 150)
    status, answer = post(port, "/api/sweep", {**PREDICT, "prompt": long, "points": 200, "selected": [0], "low": 0.1, "high": 1.0})
    assert status == 400 and "points x tokens" in answer["error"]


def test_a_prompt_with_braces_and_emoji_can_be_interpolated(server):
    """Offsets arrive in UTF-16 units (the page's); braces in the prompt are text, not the word's place."""
    explorer, port = server
    prompt = 'Is {"🍎": "apple"} red?'
    at = prompt.index("apple")
    start = len(prompt[:at].encode("utf-16-le")) // 2  # the emoji before it takes two units
    spec = {"start": start, "end": start + 5, "other": "pear", "alpha": 0.5}
    status, answer = post(port, "/api/predict", {**PREDICT, "prompt": prompt, "interpolation": spec})
    assert status == 200 and "apple → pear" in answer["labels"], answer
    status, answer = post(port, "/api/predict", {**PREDICT, "prompt": prompt, "interpolation": {**spec, "start": 6, "end": 8}})
    assert status == 400 and "start = 6 falls inside a character" in answer["error"]  # the second half of the emoji


def test_no_answers_are_proposed_for_a_prediction_and_refused_for_a_sweep(server):
    explorer, port = server
    status, answer = post(port, "/api/predict", {**PREDICT, "answers": []})
    assert status == 200 and answer["proposed"] and list(answer["answers"]) == explore._proposals([t for t, _ in answer["top"]])
    status, answer = post(port, "/api/sweep", {**PREDICT, "answers": [], "points": 3, "selected": [0], "low": 0.5, "high": 1.0})
    assert status == 400 and "a sweep tracks answers" in answer["error"]


def raw_request(port, head: str, body: bytes = b"") -> tuple[int, dict]:
    """(status, JSON answer) of a request written by hand (headers a client library would not repeat)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.encode() + b"\r\n" + body)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2].decode().splitlines()[-1])


@pytest.mark.parametrize("doubled", ["Host: evil.example", "Origin: http://evil.example"])
def test_a_checked_header_sent_twice_is_refused(server, doubled):
    """The right value first, another second: a check that reads one of them must not pass it."""
    explorer, port = server
    before = explorer.predictions
    body = json.dumps(PREDICT).encode()
    head = (
        f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://127.0.0.1:{port}\r\n{doubled}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    )
    status, answer = raw_request(port, head, body)
    name = doubled.split(":")[0]
    assert status == 400 and answer["error"] == f"the request carries the {name} header more than once"
    assert explorer.predictions == before
    own = f"Host: 127.0.0.1:{port}\r\nOrigin: http://127.0.0.1:{port}\r\n"
    status, answer = raw_request(port, f"GET /api/info HTTP/1.1\r\n{own}{doubled}\r\n")
    assert status == 400 and name in answer["error"]


def test_descriptors_past_1024_do_not_matter(server):
    """With over 1,024 files open in the process, the server's next connection gets a descriptor
    past select()'s limit; a prediction (which asks whether its client left) is still answered."""
    import os

    explorer, port = server
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        assert min(held) < 1024 < max(held)
        status, answer = post(port, "/api/predict", PREDICT)
        assert status == 200, answer
    finally:
        for fd in held:
            os.close(fd)


def test_the_standard_library_s_refusals_are_json_too(server):
    _, port = server
    many = "".join(f"X-Filler-{k}: {k}\r\n" for k in range(120))  # more than http.server's 100 headers
    status, answer = raw_request(port, f"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{many}")
    assert status == 431 and answer["error"] == "Too many headers"
    status, answer = raw_request(port, f"BREW /api/info HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n")
    assert status == 501 and "BREW" in answer["error"]


def test_an_unexpected_exception_is_a_500_that_names_it_and_the_server_goes_on(server, monkeypatch, capfd):
    explorer, port = server

    def broken(body):
        raise KeyError(f"no such thing in {explore.ROOT}")

    monkeypatch.setattr(explorer, "tokenize", broken)
    status, answer = post(port, "/api/tokenize", {"prompt": "apple"})
    assert status == 500 and answer == {"error": "KeyError: 'no such thing in <contgpt>'"}
    err = capfd.readouterr().err
    assert "Traceback" in err and "KeyError" in err  # the console has the whole story
    assert post(port, "/api/predict", PREDICT)[0] == 200


def test_the_page_forbids_framing_and_runs_only_its_own_script(server):
    _, port = server
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/")
    response = connection.getresponse()
    page = response.read().decode()
    connection.close()
    policy = response.getheader("Content-Security-Policy")
    assert response.status == 200 and response.getheader("X-Frame-Options") == "DENY"
    assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy
    script = page.split("<script>", 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}';" in policy and page.count("<script") == 1


def test_a_dripping_client_is_dropped_at_the_request_s_deadline(server):
    """One header byte every 0.3 s: each read is quick, the request never ends. The deadline
    covers the whole request, so the connection is closed READ_TIMEOUT after it opened."""
    _, port = server
    header = f"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Drip: {'a' * 40}".encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    started = time.perf_counter()
    closed_at = None
    for byte in header[:40]:  # at most 12 s of dripping; the server must have hung up long before
        try:
            s.sendall(bytes([byte]))
            s.settimeout(0.3)
            if s.recv(4096) == b"":
                closed_at = time.perf_counter() - started
                break
        except TimeoutError:
            continue  # still open: drip on
        except (BrokenPipeError, ConnectionResetError):
            closed_at = time.perf_counter() - started
            break
    s.close()
    assert closed_at is not None and READ_TIMEOUT - 0.1 <= closed_at <= READ_TIMEOUT + 1.0, closed_at


def test_open_connections_are_bounded_and_a_flood_passes(server, monkeypatch):
    """A server of 8 connections: 8 idle ones fill it, a ninth is answered 503 at once; when the
    idle ones reach their deadline they are dropped, a normal request is answered, and the
    server's threads are back to their count."""
    explorer, _ = server
    monkeypatch.setattr(explore_http, "MAX_CONNECTIONS", 8)
    monkeypatch.setattr(explore_http, "READ_TIMEOUT", READ_TIMEOUT)
    httpd = explore.serve(explorer, "127.0.0.1", 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    try:
        assert post(port, "/api/predict", PREDICT)[0] == 200
        time.sleep(0.2)
        threads = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(8)]
        time.sleep(0.3)
        started = time.perf_counter()
        status, answer = raw_request(port, f"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n")
        assert status == 503 and "8 connections open" in answer["error"] and time.perf_counter() - started < 1.0
        time.sleep(READ_TIMEOUT + 0.5)  # the idle ones' deadline
        assert post(port, "/api/predict", PREDICT)[0] == 200
        for s in idle:
            s.close()
        deadline = time.perf_counter() + 5
        while threading.active_count() > threads and time.perf_counter() < deadline:
            time.sleep(0.05)
        assert threading.active_count() <= threads
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_client_that_half_closes_after_sending_gets_its_prediction(server):
    _, port = server
    body = json.dumps(PREDICT).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        s.shutdown(socket.SHUT_WR)  # nothing more to send; still reading
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.0 200") and b'"top"' in answer

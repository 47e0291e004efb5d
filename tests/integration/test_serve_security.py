"""`horovod-llm serve` trusts no web page (issue 25), over real HTTP on loopback: the
Host allow-list (DNS rebinding), JSON-only POST bodies (a page's no-preflight "simple"
POST), no CORS headers unless asked for, an API key on every route but /health, no open
bind beyond loopback, no pending slot leaked by a failed submit; and the whole API fuzzed
from its OpenAPI schema with schemathesis, bounded in count and time."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading

import pytest
import uvicorn

from horovod_llm.inference.batching import Batcher
from horovod_llm.inference.generate import TextGenerator
from horovod_llm.inference.serve import API_KEY_ENV, Limits, create_app
from tests import tiny_checkpoint
from tests.integration.test_serve import cli_server

KEY = "k3y-for-tests-only"


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, dict]:
    """(status, JSON body, lower-cased headers), sending exactly the headers given."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in {"Host": f"127.0.0.1:{port}", **(headers or {})}.items():
            if value is not None:
                conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        data, headers = response.read(), {k.lower(): v for k, v in response.getheaders()}
        return response.status, json.loads(data) if headers.get("content-type", "").startswith("application/json") else {"text": data}, headers
    finally:
        conn.close()


PROMPT = json.dumps({"prompt": "KING:\n", "max_new_tokens": 3, "temperature": 0}).encode()
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("serve-security")
    tiny_checkpoint.save_tiny_checkpoint(str(out), step=3)
    return str(out)


@pytest.fixture(scope="module")
def server(checkpoint):
    with cli_server(checkpoint, "--allowed-host", "models.example", "--cors-origin", "http://app.example") as port:
        yield port


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil.example"])
def test_a_request_for_another_host_name_is_refused(server, host):
    # DNS rebinding: a page of evil.example whose name now points at 127.0.0.1
    status, body, _ = request(server, "POST", "/generate", PROMPT, {**JSON, "Host": host})
    assert status == 403 and "is not one this server answers" in body["error"] and "--allowed-host" in body["error"]
    assert request(server, "GET", "/health", headers={"Host": host})[0] == 403  # its checkpoint URL too


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "models.example"])
def test_loopback_names_and_allowed_hosts_are_answered(server, host):
    status, body, _ = request(server, "POST", "/generate", PROMPT, {**JSON, "Host": f"{host}:{server}"})
    assert status == 200 and body["completion_tokens"] == 3


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"])
@pytest.mark.parametrize("path", ["/generate", "/v1/completions"])
def test_a_body_that_is_not_declared_json_starts_no_work(server, path, content_type):
    status, body, _ = request(server, "POST", path, PROMPT, {"Content-Type": content_type})
    assert status == 415
    assert "Content-Type: application/json" in (body["error"]["message"] if path.startswith("/v1/") else body["error"])
    status, _, _ = request(server, "GET", "/health")
    assert status == 200


def test_json_with_a_charset_is_json(server):
    assert request(server, "POST", "/generate", PROMPT, {"Content-Type": "application/json; charset=utf-8"})[0] == 200


def test_no_cors_headers_but_for_the_origins_asked_for(server):
    _, _, headers = request(server, "POST", "/generate", PROMPT, {**JSON, "Origin": "http://evil.example"})
    assert not [name for name in headers if name.startswith("access-control-")]
    status, _, headers = request(
        server,
        "OPTIONS",
        "/generate",
        headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"},
    )
    assert status == 200 and headers["access-control-allow-origin"] == "http://app.example"
    status, _, headers = request(server, "OPTIONS", "/generate", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert headers.get("access-control-allow-origin") != "http://evil.example"


@pytest.fixture(scope="module")
def keyed(checkpoint):
    os.environ[API_KEY_ENV] = KEY  # the server reads it from its environment
    try:
        # short answers: the fuzzing is about what requests the server takes, not their length
        with cli_server(checkpoint, "--max-new-tokens", "32") as port:
            yield port
    finally:
        del os.environ[API_KEY_ENV]


@pytest.mark.parametrize(
    "method, path", [("POST", "/generate"), ("POST", "/v1/completions"), ("GET", "/v1/models"), ("GET", "/openapi.json"), ("GET", "/docs")]
)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {KEY}", KEY])
def test_every_route_but_health_needs_the_key(keyed, method, path, authorization):
    body = PROMPT if method == "POST" else None
    status, answer, headers = request(keyed, method, path, body, {**JSON, "Authorization": authorization})
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    message = answer["error"]["message"] if path.startswith("/v1/") else answer["error"]
    assert "Authorization: Bearer" in message and KEY not in json.dumps(answer)


def test_the_key_opens_every_route_and_health_needs_none(keyed):
    auth = {**JSON, "Authorization": f"Bearer {KEY}"}
    assert request(keyed, "POST", "/generate", PROMPT, auth)[0] == 200
    assert request(keyed, "GET", "/v1/models", headers=auth)[0] == 200
    assert request(keyed, "GET", "/health")[0] == 200


def run_serve(*args: str) -> subprocess.CompletedProcess:
    """`serve` with no API key in its environment (another fixture of this module sets one)."""
    env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    return subprocess.run([sys.executable, "-m", "horovod_llm.cli", "serve", *args], capture_output=True, text=True, timeout=120, env=env)


def test_binding_beyond_loopback_needs_a_key_or_insecure(checkpoint):
    done = run_serve("--checkpoint", checkpoint, "--host", "0.0.0.0", "--port", "0")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: binding 0.0.0.0 without an API key would let anyone who reaches it use the model: set {API_KEY_ENV} (or --api-key), "
        "or pass --insecure to serve it open"
    )
    # --insecure (or a key) gets past that rule: here to an address no interface has, so
    # that nothing listens beyond loopback in the suite
    done = run_serve("--checkpoint", checkpoint, "--host", "192.0.2.1", "--port", "0", "--insecure")
    assert "without an API key (--insecure)" in done.stderr and "would let anyone" not in done.stderr


class FailingSubmit(Batcher):
    def submit(self, job) -> None:
        raise RuntimeError("the batcher is closed")


def test_a_failed_submit_leaks_no_pending_slot(monkeypatch):
    monkeypatch.setattr("horovod_llm.inference.serve.Batcher", FailingSubmit)
    generator = TextGenerator(tiny_checkpoint.tiny_model(), tiny_checkpoint.tiny_tokenizer())
    config = uvicorn.Config(create_app(generator, {"checkpoint": "tiny"}, Limits(max_pending=2)), host="127.0.0.1", port=0, log_level="critical")
    server = uvicorn.Server(config)
    sock = config.bind_socket()
    sock.listen(config.backlog)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    port = sock.getsockname()[1]
    try:
        for path, body in [("/v1/completions", {"prompt": "KING:", "max_tokens": 2}), ("/generate", {"prompt": "KING:"})] * 3:
            status, _, _ = request(port, "POST", path, json.dumps(body).encode(), JSON)
            assert status == 500
        assert request(port, "GET", "/health")[1]["pending"] == 0  # with 2 slots, a leak would show as 503s and here
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_fuzzing_the_api_from_its_schema_finds_no_500_and_no_hang(keyed, tmp_path):
    events = tmp_path / "events.ndjson"
    done = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"http://127.0.0.1:{keyed}/openapi.json", "-H", f"Authorization: Bearer {KEY}",
         "--checks", "not_a_server_error", "--max-examples", "40", "--max-time", "45", "--request-timeout", "20", "--workers", "1",
         "--seed", "1", "--generation-deterministic", "--report", "ndjson", "--report-ndjson-path", str(events), "--no-color"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,  # its example database stays out of the checkout
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    statuses: dict[int, int] = {}
    for line in events.read_text().splitlines():
        for status in _statuses(json.loads(line)):
            statuses[status] = statuses.get(status, 0) + 1
    sent = sum(statuses.values())
    print(f"schemathesis sent {sent} requests; statuses {dict(sorted(statuses.items()))}")
    assert sent >= 50 and not [s for s in statuses if s >= 500]


def _statuses(event) -> list[int]:
    """Every HTTP status recorded anywhere in one of schemathesis's ndjson events."""
    found = []
    if isinstance(event, dict):
        if isinstance(event.get("status_code"), int) and "elapsed" in event:
            found.append(event["status_code"])
        for value in event.values():
            found += _statuses(value)
    elif isinstance(event, list):
        for value in event:
            found += _statuses(value)
    return found

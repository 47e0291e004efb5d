"""`horovod-llm serve` over real HTTP on loopback.

The main server is the CLI in a subprocess, on a free port it reports itself; a second
one runs uvicorn in a thread around a generator that fails or blocks on demand. Every
request loop here is bounded, and all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import uvicorn

from horovod_llm.inference.generate import TextGenerator
from horovod_llm.inference.sampling import Sampling
from horovod_llm.inference.serve import Limits, create_app
from tests import tiny_checkpoint

HOST = "127.0.0.1"


def call(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None, chunked: bool = False) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    try:
        if chunked:
            chunks = iter([body[i : i + 1000] for i in range(0, len(body), 1000)])
            conn.request(method, path, body=chunks, headers={"Content-Type": "application/json", **(headers or {})}, encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def post(port: int, payload) -> tuple[int, dict]:
    return call(port, "POST", "/generate", json.dumps(payload).encode())


@contextlib.contextmanager
def cli_server(checkpoint: str, *args: str):
    """The port of `horovod-llm serve` on a checkpoint, with these extra flags."""
    command = [sys.executable, "-m", "horovod_llm.cli", "serve", "--checkpoint", checkpoint, "--port", "0", *args]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    log = []

    def drain():  # keep reading, so that the access log never fills the pipe
        for line in process.stderr:
            log.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    port = None
    while port is None:
        line = lines.get(timeout=180)
        assert line is not None, "the server exited before serving:\n" + "".join(log)
        match = re.search(r"serving .* on http://127\.0\.0\.1:(\d+)", line)
        port = int(match.group(1)) if match else None
    yield port
    process.terminate()
    # uvicorn shuts down cleanly on SIGTERM, then exits by the signal it caught
    assert process.wait(timeout=60) in (0, -15), "".join(log[-20:])
    assert "Application shutdown complete" in "".join(log)
    assert "Traceback" not in "".join(log)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The port of `horovod-llm serve` on the tiny checkpoint, with small limits."""
    out = tmp_path_factory.mktemp("serve")
    tiny_checkpoint.save_tiny_checkpoint(str(out), step=3)
    limits = ["--max-body-bytes", "4096", "--max-prompt-chars", "1000", "--max-new-tokens", "64", "--threads", "2"]
    with cli_server(str(out), *limits) as port:
        yield port


def test_health_says_what_is_served(server):
    status, body = call(server, "GET", "/health")
    assert status == 200 and body["status"] == "ok"
    assert body["checkpoint"].endswith("checkpoints/step-00000003") and body["step"] == 3
    assert body["limits"] == {"max_body_bytes": 4096, "max_prompt_chars": 1000, "max_new_tokens": 64}


def test_50_concurrent_requests_each_get_their_own_answer(server):
    prompts = ["QUEEN:\n", "KING:\n", "Made glorious", ""]
    requests = [
        {"prompt": prompts[i % 4], "max_new_tokens": 4 + i % 9, "temperature": 0.0 if i % 3 == 0 else 1.3, "top_k": i % 5, "top_p": 0.9, "seed": 1000 + i}
        for i in range(50)
    ]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(lambda r: post(server, r), requests))
    wall = time.perf_counter() - started
    # the same model in this process gives each request's expected answer
    generator = TextGenerator(tiny_checkpoint.tiny_model(), tiny_checkpoint.tiny_tokenizer())
    for request, (status, answer) in zip(requests, answers, strict=True):
        assert status == 200, answer
        expected = generator.complete(
            request["prompt"], Sampling(request["max_new_tokens"], request["temperature"], request["top_k"], request["top_p"], request["seed"])
        )[0]
        assert answer["text"] == expected.text
        assert answer["prompt_tokens"] == expected.prompt_tokens and answer["completion_tokens"] == expected.completion_tokens
        assert answer["stop_reason"] == expected.stop_reason and answer["seed"] == request["seed"]
        assert 0 < answer["seconds"] <= wall  # its own decoding time, within the batch's
    assert len({a["text"] for _, a in answers}) > 10


BAD_REQUESTS = [
    # (body, chunked, status, fragment of the error)
    (b'{"prompt": ', False, 400, "malformed JSON"),
    (b"\xff\xfe\x00", False, 400, "malformed JSON"),
    (b'["QUEEN:"]', False, 400, "must be a JSON object"),
    (b'{"prompt": "' + b"a" * 5000 + b'"}', False, 413, "request body over 4096 bytes"),
    (b'{"prompt": "' + b"a" * 5000 + b'"}', True, 413, "request body over 4096 bytes"),
    (json.dumps({"prompt": "a" * 1001}).encode(), False, 422, "prompt (1001 characters) is over this server's limit of 1000"),
    (json.dumps({"max_new_tokens": 65}).encode(), False, 422, "max_new_tokens (65) must be between 1 and 64"),
    (json.dumps({"temperature": -1, "top_p": 0}).encode(), False, 422, "temperature (-1.0)"),
    (json.dumps({"top_k": "many"}).encode(), False, 422, "top_k: Input should be a valid integer"),
    (json.dumps({"prompt": "x", "tokens": 5}).encode(), False, 422, "tokens: Extra inputs are not permitted"),
]


@pytest.mark.parametrize("body, chunked, status, fragment", BAD_REQUESTS)
def test_bad_requests_get_a_4xx_with_a_message_and_the_server_goes_on(server, body, chunked, status, fragment):
    got, answer = call(server, "POST", "/generate", body, chunked=chunked)
    assert got == status and fragment in answer["error"], answer
    assert call(server, "GET", "/health")[0] == 200
    assert post(server, {"prompt": "QUEEN:\n", "temperature": 0, "max_new_tokens": 3})[0] == 200


class Flaky(TextGenerator):
    """Fails on the prompt "boom"; holds the worker on "wait" until released (the
    batcher's thread encodes each prompt as it admits it)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.release = threading.Event()

    def encode(self, prompt):
        if prompt == "boom":
            raise RuntimeError("a bug")
        if prompt == "wait":
            assert self.release.wait(timeout=120)
        return super().encode(prompt)


@pytest.fixture
def threaded_server():
    """(port, generator) of a server in a thread, with at most one request pending."""
    generator = Flaky(tiny_checkpoint.tiny_model(), tiny_checkpoint.tiny_tokenizer())
    config = uvicorn.Config(create_app(generator, {"checkpoint": "tiny"}, Limits(max_pending=1)), host=HOST, port=0, log_level="warning")
    server = uvicorn.Server(config)
    sock = config.bind_socket()
    sock.listen(config.backlog)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    yield sock.getsockname()[1], generator
    generator.release.set()
    server.should_exit = True
    thread.join(timeout=60)
    assert not thread.is_alive()


def test_an_internal_error_is_a_500_and_the_server_goes_on(threaded_server):
    port, _ = threaded_server
    status, answer = post(port, {"prompt": "boom"})
    assert status == 500 and "internal error (RuntimeError)" in answer["error"]
    status, answer = post(port, {"prompt": "QUEEN:\n", "temperature": 0, "max_new_tokens": 4})
    assert status == 200 and answer["text"].startswith("And all")
    assert call(port, "GET", "/health")[0] == 200


def test_health_answers_while_generating_and_extra_requests_are_refused(threaded_server):
    port, generator = threaded_server
    with ThreadPoolExecutor(max_workers=1) as pool:
        held = pool.submit(post, port, {"prompt": "wait", "max_new_tokens": 2, "seed": 1})
        for _ in range(1000):  # bounded: until the held request occupies the worker
            status, health = call(port, "GET", "/health")
            if health["pending"] == 1:
                break
            threading.Event().wait(0.05)
        assert status == 200 and health["pending"] == 1  # /health is not stuck behind the generation
        status, answer = post(port, {"prompt": "QUEEN:\n"})
        assert status == 503 and "busy" in answer["error"]
        generator.release.set()
        assert held.result(timeout=120)[0] == 200
    assert call(port, "GET", "/health")[1]["pending"] == 0

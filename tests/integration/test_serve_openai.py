"""OpenAI's completions API of `horovod-llm serve`, through the official `openai` client
and curl, over real HTTP on loopback (the CLI server of test_serve.py)."""

from __future__ import annotations

import json
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from horovod_llm.inference.generate import TextGenerator
from horovod_llm.inference.sampling import Sampling
from tests import tiny_checkpoint
from tests.integration.test_serve import HOST, Flaky, call, cli_server, post, threaded_server  # noqa: F401 (a fixture)

MODEL = "tiny-shakespeare"
QUEEN = "And all the clouds that lour'd upon our house\nIn the deep bosom of the ocean buried.\n"


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    out = tmp_path_factory.mktemp("openai")
    tiny_checkpoint.save_tiny_checkpoint(str(out), step=3)
    limits = ["--max-body-bytes", "4096", "--max-prompt-chars", "1000", "--max-new-tokens", "64", "--max-batch", "8"]
    with cli_server(str(out), *limits, "--model-name", MODEL) as port:
        yield port


@pytest.fixture(scope="module")
def client(port) -> openai.OpenAI:
    # No retries: a refusal must show as it is (the client retries 5xx by default).
    return openai.OpenAI(base_url=f"http://{HOST}:{port}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def local() -> TextGenerator:
    """The same model in this process: each request's expected answer."""
    return TextGenerator(tiny_checkpoint.tiny_model(), tiny_checkpoint.tiny_tokenizer())


def expected(local: TextGenerator, prompt: str, max_tokens: int, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, stop=()):
    return local.complete(prompt, Sampling(max_tokens, temperature, 0, top_p, seed, tuple(stop)))[0]


def test_the_model_list_names_the_served_model(client):
    assert [m.id for m in client.models.list()] == [MODEL]


def test_the_openai_client_gets_completions_with_usage(client, local):
    answer = client.completions.create(model=MODEL, prompt="QUEEN:\n", max_tokens=60, temperature=0)
    assert answer.object == "text_completion" and answer.model == MODEL and answer.id.startswith("cmpl-")
    assert answer.choices[0].text == QUEEN and answer.choices[0].finish_reason == "stop"  # EOS
    want = expected(local, "QUEEN:\n", 60, temperature=0)
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (want.prompt_tokens, want.completion_tokens)
    assert answer.usage.total_tokens == want.prompt_tokens + want.completion_tokens
    sampled = client.completions.create(model=MODEL, prompt="KING:\n", max_tokens=12, temperature=1.3, top_p=0.9, seed=11, stop=["York"])
    want = expected(local, "KING:\n", 12, 1.3, 0.9, 11, ["York"])
    assert sampled.choices[0].text == want.text and sampled.usage.completion_tokens == want.completion_tokens
    short = client.completions.create(model=MODEL, prompt="QUEEN:\n", max_tokens=3, temperature=0)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3 and QUEEN.startswith(short.choices[0].text)
    stopped = client.completions.create(model=MODEL, prompt="QUEEN:\n", max_tokens=30, temperature=0, stop="clouds")
    assert stopped.choices[0].text == "And all the " and stopped.choices[0].finish_reason == "stop"


def test_the_openai_client_streams_the_same_text(client):
    settings = dict(model=MODEL, prompt="KING:\n", max_tokens=40, temperature=1.2, seed=5)
    whole = client.completions.create(**settings)
    chunks = list(client.completions.create(**settings, stream=True, stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len([t for t in texts if t]) > 3  # text arrives as it is decoded
    assert "".join(texts) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert all(c.object == "text_completion" and c.id == chunks[0].id for c in chunks)
    assert not chunks[-1].choices and chunks[-1].usage == whole.usage  # include_usage: a last chunk with the counts


def test_n_choices_of_a_list_of_prompts(client, local):
    answer = client.completions.create(model=MODEL, prompt=["KING:\n", "QUEEN:\n"], n=2, max_tokens=10, temperature=1.5, seed=9)
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]
    # choice 0 of each prompt is what the seed gives alone; the second choice is another sample
    assert answer.choices[0].text == expected(local, "KING:\n", 10, 1.5, seed=9).text
    assert answer.choices[2].text == expected(local, "QUEEN:\n", 10, 1.5, seed=9).text
    assert answer.choices[0].text != answer.choices[1].text
    prompt_tokens = len(tiny_checkpoint.encode("KING:\n")) + len(tiny_checkpoint.encode("QUEEN:\n"))
    assert answer.usage.prompt_tokens == prompt_tokens


@pytest.mark.parametrize(
    "field, value", [("logprobs", 1), ("echo", True), ("best_of", 2), ("presence_penalty", 0.5), ("suffix", "!"), ("logit_bias", {"5": 10})]
)
def test_unsupported_fields_are_a_400_naming_the_field(client, field, value):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="QUEEN:\n", max_tokens=2, **{field: value})
    assert caught.value.status_code == 400 and caught.value.param == field and caught.value.type == "invalid_request_error"
    assert f"{field} (" in caught.value.message and "not supported" in caught.value.message


def test_another_model_is_a_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="x")
    assert caught.value.code == "model_not_found" and MODEL in caught.value.message


V1_LIMITS = [
    # (body, status, param, fragment): the limits of POST /generate, in OpenAI's error shape
    (b'{"prompt": "' + b"a" * 5000 + b'"}', 413, None, "request body over 4096 bytes"),
    (json.dumps({"prompt": "a" * 1001}).encode(), 422, "prompt", "prompt (1001 characters) is over this server's limit of 1000"),
    (json.dumps({"prompt": "x", "max_tokens": 65}).encode(), 422, "max_tokens", "max_tokens (65) is over this server's limit of 64"),
    (json.dumps({"prompt": "x", "n": 9}).encode(), 422, "n", "over this server's limit of 8 completions"),
    (b'{"prompt": ', 400, None, "malformed JSON"),
    (b'["x"]', 400, None, "must be a JSON object"),
]


@pytest.mark.parametrize("body, status, param, fragment", V1_LIMITS)
def test_limits_hold_on_v1_in_openai_error_shape(port, body, status, param, fragment):
    got, answer = call(port, "POST", "/v1/completions", body)
    assert got == status and set(answer["error"]) == {"message", "type", "param", "code"}, answer
    assert answer["error"]["param"] == param and fragment in answer["error"]["message"]
    assert call(port, "POST", "/v1/completions", json.dumps({"prompt": "KING:\n", "max_tokens": 2}).encode())[0] == 200


def curl(port: int, payload: dict) -> str:
    command = [
        "curl",
        "-sS",
        "-N",
        "--max-time",
        "120",
        f"http://{HOST}:{port}/v1/completions",
        "-H",
        "Content-Type: application/json",
        "-d",
        json.dumps(payload),
    ]
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=150).stdout


def test_curl_gets_a_completion_and_a_stream_ending_in_done(port):
    payload = {"model": MODEL, "prompt": "QUEEN:\n", "max_tokens": 30, "temperature": 0.9, "seed": 4}
    whole = json.loads(curl(port, payload))
    assert whole["object"] == "text_completion" and whole["usage"]["completion_tokens"] > 0
    events = curl(port, {**payload, "stream": True}).split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1]) and all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]


def test_concurrent_requests_are_batched_and_each_gets_what_it_gets_alone(port, client):
    # both APIs: every fourth request goes to POST /generate
    requests = [
        {
            "prompt": ["QUEEN:\n", "KING:\n", "Made glorious", ""][i % 4],
            "max_tokens": 6 + (i * 5) % 40,
            "temperature": 0.0 if i % 5 == 0 else 1.3,
            "seed": 50 + i,
        }
        for i in range(16)
    ]

    def send(numbered):
        number, request = numbered
        if number % 4 == 3:
            body = {
                "prompt": request["prompt"],
                "max_new_tokens": request["max_tokens"],
                "temperature": request["temperature"],
                "top_k": 0,
                "seed": request["seed"],
            }
            status, answer = post(port, body)
            assert status == 200, answer
            return answer["text"], answer["stop_reason"]
        choice = client.completions.create(model=MODEL, **request).choices[0]
        return choice.text, choice.finish_reason

    before = call(port, "GET", "/health")[1]["decoding"]
    with ThreadPoolExecutor(max_workers=16) as pool:
        together = list(pool.map(send, enumerate(requests)))
    middle = call(port, "GET", "/health")[1]["decoding"]
    one_at_a_time = [send(numbered) for numbered in enumerate(requests)]
    after = call(port, "GET", "/health")[1]["decoding"]
    assert together == one_at_a_time
    assert len({text for text, _ in together}) > 10
    # decoded together indeed, then alone
    assert (middle["rows"] - before["rows"]) / (middle["steps"] - before["steps"]) > 2
    assert after["rows"] - middle["rows"] == after["steps"] - middle["steps"]


def test_v1_is_refused_with_a_503_when_too_many_wait(threaded_server):  # noqa: F811 (the fixture)
    port, generator = threaded_server
    with ThreadPoolExecutor(max_workers=1) as pool:
        held = pool.submit(call, port, "POST", "/v1/completions", json.dumps({"prompt": "wait", "max_tokens": 2}).encode())
        for _ in range(1000):  # bounded: until the held request occupies the batcher
            if call(port, "GET", "/health")[1]["pending"] == 1:
                break
            threading.Event().wait(0.05)
        status, answer = call(port, "POST", "/v1/completions", json.dumps({"prompt": "QUEEN:\n"}).encode())
        assert status == 503 and "busy" in answer["error"]["message"] and answer["error"]["type"] == "server_error"
        generator.release.set()
        assert held.result(timeout=120)[0] == 200
    status, answer = call(port, "POST", "/v1/completions", json.dumps({"prompt": "boom"}).encode())
    assert status == 500 and "internal error (RuntimeError)" in answer["error"]["message"]

"""Requests of OpenAI's completions API checked into Sampling, and their refusals."""

import pytest

from horovod_llm.inference import openai_api
from horovod_llm.inference.generate import Completion
from horovod_llm.inference.openai_api import RequestError, parse


def plan(**values):
    return parse(values, "tiny-step-3", max_new_tokens=64, max_prompt_chars=1000, max_choices=8)


def refusal(**values) -> RequestError:
    with pytest.raises(RequestError) as caught:
        plan(**values)
    return caught.value


def test_openai_defaults_and_supported_fields():
    p = plan(model="tiny-step-3", prompt="QUEEN:", seed=3)
    assert p.prompts == ["QUEEN:"] and p.n == 1 and not p.stream and not p.include_usage
    assert (p.sampling.max_new_tokens, p.sampling.temperature, p.sampling.top_p, p.sampling.top_k, p.sampling.seed) == (16, 1.0, 1.0, 0, 3)
    p = plan(prompt=["a", "b"], max_tokens=5, temperature=0, top_p=0.5, n=3, stop="\n", stream=True, stream_options={"include_usage": True}, user="u1")
    assert p.prompts == ["a", "b"] and p.n == 3 and p.stream and p.include_usage
    assert (p.sampling.max_new_tokens, p.sampling.temperature, p.sampling.top_p, p.sampling.stop) == (5, 0.0, 0.5, ("\n",))
    assert plan(stop=["x", "y"]).sampling.stop == ("x", "y")
    assert plan().sampling.seed != plan().sampling.seed  # drawn when absent
    assert plan(max_tokens=None, temperature=None, n=None, stop=None, seed=None, stream=None).sampling.max_new_tokens == 16


@pytest.mark.parametrize(
    "field, value",
    [("logprobs", 2), ("echo", True), ("best_of", 2), ("presence_penalty", 0.5), ("frequency_penalty", 1), ("suffix", "end"), ("logit_bias", {"5": 1})],
)
def test_unsupported_fields_are_refused_by_name_unless_neutral(field, value):
    error = refusal(prompt="x", **{field: value})
    assert error.status == 400 and error.param == field and error.message.startswith(f"{field} (") and "not supported" in error.message
    neutral = openai_api.NEUTRAL[field]
    for harmless in neutral:
        plan(prompt="x", **{field: harmless})


@pytest.mark.parametrize(
    "values, status, param, fragment",
    [
        ({"tokens": 5}, 400, "tokens", "unrecognized request argument supplied: tokens"),
        ({"model": "gpt-4"}, 404, "model", "this server serves 'tiny-step-3'"),
        ({"prompt": [1, 2, 3]}, 400, "prompt", "token ids are not supported"),
        ({"prompt": []}, 400, "prompt", "empty list"),
        ({"prompt": "a" * 1001}, 422, "prompt", "prompt (1001 characters) is over this server's limit of 1000"),
        ({"max_tokens": 65}, 422, "max_tokens", "max_tokens (65) is over this server's limit of 64"),
        ({"max_tokens": 0}, 400, "max_tokens", "max_tokens (0) must be between 1 and 64"),
        ({"n": 3, "prompt": ["a", "b", "c"]}, 422, "n", "n (3) x 3 prompts is over this server's limit of 8"),
        ({"n": 0}, 400, "n", "n (0) must be at least 1"),
        ({"temperature": -1}, 400, "temperature", "temperature (-1.0)"),
        ({"top_p": 0}, 400, "top_p", "top_p (0.0)"),
        ({"temperature": "hot"}, 400, "temperature", "temperature: Input should be a valid number"),
        ({"stop": [""]}, 400, "stop", "stop ('') must not be an empty string"),
        ({"stream_options": {"x": 1}}, 400, "stream_options", "unrecognized request argument supplied: stream_options.x"),
    ],
)
def test_bad_requests_name_the_field(values, status, param, fragment):
    error = refusal(**values)
    assert (error.status, error.param) == (status, param) and fragment in error.message, error.message


def test_bodies_in_openai_shapes():
    choices = [Completion("a", 3, 2, "eos"), Completion("bc", 3, 5, "length"), Completion("d", 4, 1, "stop"), Completion("", 4, 1, "eos")]
    body = openai_api.completion_body("cmpl-1", 7, "m", choices, n=2)
    assert [(c["index"], c["text"], c["finish_reason"]) for c in body["choices"]] == [(0, "a", "stop"), (1, "bc", "length"), (2, "d", "stop"), (3, "", "stop")]
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}  # each prompt counted once
    assert body["object"] == "text_completion" and body["model"] == "m" and body["choices"][0]["logprobs"] is None
    assert openai_api.error_body("busy", 503) == {"error": {"message": "busy", "type": "server_error", "param": None, "code": None}}
    assert openai_api.models_body("m", 7)["data"] == [{"id": "m", "object": "model", "created": 7, "owned_by": "horovod-llm"}]


def test_the_default_model_id_names_the_run_and_the_step():
    from horovod_llm.inference.serve import default_model_id

    assert default_model_id("/work/runs/demo/checkpoints/step-00000150", 150) == "demo-step-150"
    assert default_model_id("s3://bucket/runs/demo/model.zip", 389) == "demo-step-389"
    assert default_model_id("s3://bucket/model.zip", 3) == "bucket-step-3"

"""The shapes of OpenAI's completions API: requests checked into `Sampling`s, and the
bodies, stream chunks and errors that its clients read. No HTTP here (serve.py).

Supported: prompt (a string or a list of strings), max_tokens, temperature, top_p, n,
stop (a string or a list), seed, stream (with stream_options.include_usage), model
(the served model's id, or absent) and user (accepted and ignored, as an id for abuse
monitoring). OpenAI's other fields are refused, naming the field, unless they hold
their neutral value (`"echo": false`, `"presence_penalty": 0`, ...), which some clients
send on every request. Defaults are OpenAI's: 16 tokens, temperature 1, top_p 1.
Choices of a list of prompts are numbered prompt by prompt: prompt p's choice j is
index p * n + j.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, ValidationError

from horovod_llm.inference.generate import Completion
from horovod_llm.inference.sampling import MAX_SEED, Sampling

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions
MAX_STOP = 16  # as POST /generate

# OpenAI's fields this server cannot honour, with the value that asks nothing of it.
NEUTRAL = {
    "best_of": (None, 1),
    "echo": (None, False),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "logprobs": (None,),
    "suffix": (None, ""),
}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    prompt: str | list[str] = ""
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None


class RequestError(Exception):
    """A request refused: the HTTP status, a message that says what to do, the field."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


@dataclass(frozen=True)
class Plan:
    """A checked request: what to generate and how to answer."""

    prompts: list[str]
    sampling: Sampling
    n: int
    stream: bool
    include_usage: bool


def parse(values: dict, model_id: str, max_new_tokens: int, max_prompt_chars: int, max_choices: int) -> Plan:
    """A request body (a JSON object) -> Plan, or RequestError for its first problem:
    400 for what OpenAI would refuse, 404 for another model, and the statuses of
    POST /generate for this server's limits (422)."""
    for name, neutral in NEUTRAL.items():
        if name in values and not any(values[name] == v and type(values[name]) is type(v) for v in neutral):
            raise RequestError(400, f"{name} ({values[name]!r}) is not supported by this server: leave it out", name, "unsupported_parameter")
    prompt = values.get("prompt")
    if isinstance(prompt, list) and any(isinstance(item, int | list) for item in prompt):
        raise RequestError(400, "prompt: token ids are not supported by this server: send a string or a list of strings", "prompt")
    known = {k: v for k, v in values.items() if k not in NEUTRAL}
    try:
        req = CompletionRequest.model_validate(known)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(p) for p in error["loc"][:1]) or None
        where = ".".join(str(p) for p in error["loc"])
        if error["type"] == "extra_forbidden":
            raise RequestError(400, f"unrecognized request argument supplied: {where}", param) from None
        raise RequestError(400, f"{where}: {error['msg']}", param) from None
    if req.model is not None and req.model != model_id:
        raise RequestError(404, f"the model {req.model!r} does not exist: this server serves {model_id!r} (GET /v1/models)", "model", "model_not_found")
    prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if not prompts:
        raise RequestError(400, "prompt: an empty list has nothing to complete: send a string or a list of strings", "prompt")
    for prompt in prompts:
        if len(prompt) > max_prompt_chars:
            raise RequestError(422, f"prompt ({len(prompt)} characters) is over this server's limit of {max_prompt_chars}: send a shorter prompt", "prompt")
    n = 1 if req.n is None else req.n
    if n < 1:
        raise RequestError(400, f"n ({n}) must be at least 1", "n")
    if n * len(prompts) > max_choices:
        message = f"n ({n}) x {len(prompts)} prompts is over this server's limit of {max_choices} completions per request: ask for fewer"
        raise RequestError(422, message, "n")
    max_tokens = DEFAULT_MAX_TOKENS if req.max_tokens is None else req.max_tokens
    if max_tokens > max_new_tokens:
        raise RequestError(422, f"max_tokens ({max_tokens}) is over this server's limit of {max_new_tokens}: ask for fewer", "max_tokens")
    stop = () if req.stop is None else (req.stop,) if isinstance(req.stop, str) else tuple(req.stop)
    if len(stop) > MAX_STOP:
        raise RequestError(400, f"stop: at most {MAX_STOP} strings, not {len(stop)}", "stop")
    seed = req.seed if req.seed is not None else random.randrange(MAX_SEED)
    temperature = 1.0 if req.temperature is None else req.temperature
    top_p = 1.0 if req.top_p is None else req.top_p
    # top_k 0: OpenAI's API has no top-k filter.
    sampling = Sampling(max_new_tokens=max_tokens, temperature=temperature, top_k=0, top_p=top_p, seed=seed, stop=stop)
    problems = sampling.problems(max_new_tokens=max_new_tokens)
    if problems:
        # Sampling names max_new_tokens; OpenAI's clients know it as max_tokens.
        message = "; ".join(problems).replace("max_new_tokens", "max_tokens")
        raise RequestError(400, message, problems[0].split(" ", 1)[0].replace("max_new_tokens", "max_tokens"))
    include_usage = bool(req.stream and req.stream_options and req.stream_options.include_usage)
    return Plan(prompts, sampling, n, bool(req.stream), include_usage)


def error_body(message: str, status: int, param: str | None = None, code: str | None = None) -> dict:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def finish_reason(completion: Completion) -> str:
    """OpenAI's names: "stop" for EOS or a stop string, "length" for max_tokens."""
    return "length" if completion.stop_reason == "length" else "stop"


def new_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def completion_body(completion_id: str, created: int, model_id: str, choices: list[Completion], n: int) -> dict:
    """The whole answer; choices in index order. A prompt's tokens count once, not once
    per choice (as OpenAI counts them)."""
    prompt_tokens = sum(c.prompt_tokens for c in choices[::n])
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model_id,
        "choices": [{"text": c.text, "index": i, "logprobs": None, "finish_reason": finish_reason(c)} for i, c in enumerate(choices)],
        "usage": usage(prompt_tokens, sum(c.completion_tokens for c in choices)),
    }


def chunk(completion_id: str, created: int, model_id: str, index: int, text: str, reason: str | None) -> dict:
    """One server-sent event's data while streaming: text that follows the choice's earlier chunks."""
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model_id,
        "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": reason}],
    }


def usage_chunk(completion_id: str, created: int, model_id: str, usage_counts: dict) -> dict:
    """The last chunk before [DONE] with stream_options.include_usage: no choices."""
    return {"id": completion_id, "object": "text_completion", "created": created, "model": model_id, "choices": [], "usage": usage_counts}


def models_body(model_id: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created, "owned_by": "horovod-llm"}]}


def now() -> int:
    return int(time.time())

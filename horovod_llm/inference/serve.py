"""`horovod-llm serve`: an HTTP JSON API over one checkpoint, loaded once.

    POST /generate  {"prompt": "ROMEO:", "max_new_tokens": 200, "temperature": 0.8,
                     "top_k": 50, "top_p": 1.0, "seed": 42, "stop": ["\\n\\n"]}   (all optional)
                 -> {"text", "prompt_tokens", "completion_tokens", "seconds", "stop_reason", "seed"}
    POST /v1/completions, GET /v1/models: OpenAI's completions API (openai_api.py)
    GET  /health -> {"status": "ok", "checkpoint", "step", ...}

`text` is the completion only, without the prompt; `seconds` is the time spent
generating it, from its admission into the batch. Without a seed a random one is drawn
and returned, so any answer can be reproduced. Mistakes are answered with
`{"error": "<problem>: <fix>"}` (on /v1, OpenAI's `{"error": {"message", "type",
"param", "code"}}`): 400 for a body that is not a JSON object, 413 for a body over the
size limit, 422 for a bad or out-of-limit value (on /v1, 400 for what OpenAI refuses
and 422 for this server's limits), 503 when too many requests wait, and 500 for an
internal error, which is logged and never stops the server.

Concurrency: one thread runs every forward pass, for all requests of both APIs at once
(batching.py: continuous batching, each request's output the same as alone). Torch
already spreads one forward pass over all cores (intra-op threads), so generations
side by side would only contend for the same cores; and with one thread touching the
model and the tokenizer there is no question of their thread safety. The event loop
stays free meanwhile: /health and refusals answer at once.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import random
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from horovod_llm.inference import openai_api
from horovod_llm.inference.batching import Batcher, Delta, Event, Failed, Finished, Job
from horovod_llm.inference.generate import TextGenerator
from horovod_llm.inference.sampling import MAX_SEED, Sampling, sampling_fields

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 64 * 1024
    max_prompt_chars: int = 16_000
    max_new_tokens: int = 1024
    max_pending: int = 256  # requests waiting or running; beyond it, 503
    max_batch: int = 16  # sequences decoded together; a request's choices (n x prompts) must fit


# Host headers a loopback server answers by default: a page served from elsewhere that
# rebinds its own name to 127.0.0.1 still sends its name, and is refused.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
API_KEY_ENV = "HOROVOD_LLM_API_KEY"


@dataclass(frozen=True)
class Access:
    """Who may use the API: Host names it answers ('*': any), the key every route but
    /health requires as `Authorization: Bearer KEY` (None: none), and the origins whose
    pages may read its answers (CORS; none by default)."""

    allowed_hosts: tuple[str, ...] = LOOPBACK_NAMES
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()


def _host_name(header: str) -> str:
    """'example.org:8000' -> 'example.org'; '[::1]:8000' -> '::1'."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def request_model(limits: Limits) -> type[BaseModel]:
    """The body of POST /generate, derived from `Sampling`: its fields, types and
    defaults, with a prompt, no seed by default (one is drawn and returned), and a
    default length no longer than the server's limit. Unknown fields are refused."""
    fields: dict = {"prompt": (str, "")}
    for f in sampling_fields():
        if f.name == "seed":
            fields["seed"] = (int | None, None)
        elif f.name == "stop":
            fields["stop"] = (list[str], Field(default_factory=list, max_length=16))
        elif f.name == "max_new_tokens":
            fields[f.name] = (int, min(f.default, limits.max_new_tokens))
        else:
            fields[f.name] = (type(f.default), f.default)
    return create_model("GenerateRequest", __config__=ConfigDict(extra="forbid"), **fields)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _openai_error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(openai_api.error_body(message, status, param, code), status_code=status)


def _sse(data: dict | str) -> str:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


INTERNAL_ERROR = "internal error ({}): the server goes on; report it if it repeats"


def _describe(exc: ValidationError) -> str:
    """Pydantic's errors as one line: `field: problem; ...`."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is larger than `limit` bytes (checked before reading
    when the client declares its length, and while reading when it streams)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def create_app(generator: TextGenerator, info: dict, limits: Limits = Limits(), model_id: str = "horovod-llm", access: Access = Access()) -> FastAPI:
    """The API around one TextGenerator; `info` is shown by /health, `model_id` by /v1/models."""
    request_type = request_model(limits)
    batcher = Batcher(generator, limits.max_batch)
    pending = 0  # only the event loop's thread touches it
    created = openai_api.now()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await asyncio.get_running_loop().run_in_executor(None, batcher.close)

    app = FastAPI(title="horovod-llm", description=__doc__.split("\n\n")[0], lifespan=lifespan)

    def refuse(request: Request, status: int, message: str, headers: dict | None = None) -> JSONResponse:
        response = _openai_error(status, message) if request.url.path.startswith("/v1/") else _error(status, message)
        response.headers.update(headers or {})
        return response

    # Written here rather than Starlette's TrustedHostMiddleware, which answers in plain
    # text: every refusal of this API is JSON in its route's shape.
    @app.middleware("http")
    async def guard(request: Request, call_next):
        host = _host_name(request.headers.get("host", ""))
        if "*" not in access.allowed_hosts and host not in access.allowed_hosts:
            return refuse(
                request,
                403,
                f"host {host!r} is not one this server answers: ask for it by one of {', '.join(access.allowed_hosts)}, or start it with --allowed-host {host or 'NAME'}",
            )
        if request.method == "POST" and request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            # a page's no-preflight POST (text/plain, a form) never starts work here
            return refuse(request, 415, "send the body as JSON with the header Content-Type: application/json")
        if access.api_key is not None and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {access.api_key}".encode()):
                return refuse(request, 401, "missing or wrong API key: send the header Authorization: Bearer <key>", {"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    if access.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(access.cors_origins), allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"]
        )

    def submit(jobs: list[tuple[str, Sampling, int, bool]]) -> tuple[list[Job], asyncio.Queue]:
        """Jobs (prompt, sampling, choices, stream) into the batch; their events arrive on
        one queue as (job number, event)."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        submitted = []
        try:
            for number, (prompt, sampling, num_choices, stream) in enumerate(jobs):

                def emit(event: Event, number: int = number) -> None:  # on the batcher's thread
                    loop.call_soon_threadsafe(events.put_nowait, (number, event))

                job = Job(prompt, sampling, emit, num_choices, stream)
                batcher.submit(job)
                submitted.append(job)
        except BaseException:
            for job in submitted:  # no one will read their results
                job.cancelled = True
            raise
        return submitted, events

    @app.get("/health")
    async def health() -> dict:
        # Steps and the rows they decoded: their ratio is the mean batch size so far.
        decoding = {"steps": batcher.steps, "rows": batcher.decoded_rows}
        return {"status": "ok", "pending": pending, "decoding": decoding, **info}

    @app.post(
        "/generate",
        openapi_extra={"requestBody": {"required": False, "content": {"application/json": {"schema": request_type.model_json_schema()}}}},
    )
    async def generate(request: Request) -> JSONResponse:
        nonlocal pending
        body = await _read_body(request, limits.max_body_bytes)
        if body is None:
            return _error(413, f"request body over {limits.max_body_bytes} bytes: send a shorter prompt")
        try:
            values = json.loads(body) if body.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _error(400, f'malformed JSON ({exc}): send a JSON object such as {{"prompt": "ROMEO:"}}')
        if not isinstance(values, dict):
            return _error(400, f'the body must be a JSON object, not {type(values).__name__}: send {{"prompt": ...}}')
        try:
            req = request_type.model_validate(values)
        except ValidationError as exc:
            return _error(422, _describe(exc))
        if len(req.prompt) > limits.max_prompt_chars:
            return _error(422, f"prompt ({len(req.prompt)} characters) is over this server's limit of {limits.max_prompt_chars}: send a shorter prompt")
        seed = req.seed if req.seed is not None else random.randrange(MAX_SEED)
        sampling = Sampling(max_new_tokens=req.max_new_tokens, temperature=req.temperature, top_k=req.top_k, top_p=req.top_p, seed=seed, stop=tuple(req.stop))
        problems = sampling.problems(max_new_tokens=limits.max_new_tokens)
        if problems:
            return _error(422, "; ".join(problems))
        if pending >= limits.max_pending:
            return _error(503, f"busy: {pending} requests are waiting; retry later")
        pending += 1
        jobs: list[Job] = []
        try:
            jobs, events = submit([(req.prompt, sampling, 1, False)])
            _, event = await events.get()
        finally:
            pending -= 1
            for job in jobs:
                job.cancelled = True  # a no-op once it has finished; else (a client gone) its row leaves
        if isinstance(event, Failed):
            return _error(500, INTERNAL_ERROR.format(type(event.error).__name__))
        completion = event.completion
        return JSONResponse(
            {
                "text": completion.text,
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
                "seconds": round(event.seconds, 4),
                "stop_reason": completion.stop_reason,
                "seed": seed,
            }
        )

    @app.get("/v1/models")
    async def models() -> dict:
        return openai_api.models_body(model_id, created)

    @app.post("/v1/completions")
    async def completions(request: Request):
        nonlocal pending
        body = await _read_body(request, limits.max_body_bytes)
        if body is None:
            return _openai_error(413, f"request body over {limits.max_body_bytes} bytes: send a shorter prompt")
        try:
            values = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _openai_error(400, f'malformed JSON ({exc}): send a JSON object such as {{"model": "{model_id}", "prompt": "ROMEO:"}}')
        if not isinstance(values, dict):
            return _openai_error(400, f"the body must be a JSON object, not {type(values).__name__}")
        try:
            plan = openai_api.parse(values, model_id, limits.max_new_tokens, limits.max_prompt_chars, limits.max_batch)
        except openai_api.RequestError as exc:
            return _openai_error(exc.status, exc.message, exc.param, exc.code)
        if pending >= limits.max_pending:
            return _openai_error(503, f"busy: {pending} requests are waiting; retry later")
        pending += 1
        jobs: list[Job] = []

        def finish() -> None:
            nonlocal pending
            pending -= 1
            for job in jobs:
                job.cancelled = True

        try:
            jobs, events = submit([(prompt, plan.sampling, plan.n, plan.stream) for prompt in plan.prompts])
        except BaseException:
            finish()  # counted, so uncounted: a failed submit must not leak a pending slot
            raise
        completion_id, started = openai_api.new_id(), openai_api.now()

        if not plan.stream:
            try:
                choices: dict[int, object] = {}
                while len(choices) < plan.n * len(jobs):
                    number, event = await events.get()
                    if isinstance(event, Failed):
                        return _openai_error(500, INTERNAL_ERROR.format(type(event.error).__name__))
                    choices[number * plan.n + event.index] = event.completion
            finally:
                finish()
            ordered = [choices[i] for i in range(len(choices))]
            return JSONResponse(openai_api.completion_body(completion_id, started, model_id, ordered, plan.n))

        async def stream():
            try:
                sent: dict[int, str] = {}
                prompt_tokens = completion_tokens = finished = 0
                while finished < plan.n * len(jobs):
                    number, event = await events.get()
                    if isinstance(event, Failed):
                        yield _sse(openai_api.error_body(INTERNAL_ERROR.format(type(event.error).__name__), 500))
                        return  # no [DONE]: the client reads the error as the stream's end
                    index = number * plan.n + event.index
                    if isinstance(event, Delta):
                        sent[index] = sent.get(index, "") + event.text
                        yield _sse(openai_api.chunk(completion_id, started, model_id, index, event.text, None))
                    elif isinstance(event, Finished):
                        text, before = event.completion.text, sent.get(index, "")
                        if not text.startswith(before):  # a decoding that changed what it had given: cannot be taken back
                            log.warning("streamed text of choice %d is not a prefix of its final text", index)
                        rest = text[len(before) :] if text.startswith(before) else ""
                        yield _sse(openai_api.chunk(completion_id, started, model_id, index, rest, openai_api.finish_reason(event.completion)))
                        finished += 1
                        completion_tokens += event.completion.completion_tokens
                        prompt_tokens += event.completion.prompt_tokens if event.index == 0 else 0
                if plan.include_usage:
                    yield _sse(openai_api.usage_chunk(completion_id, started, model_id, openai_api.usage(prompt_tokens, completion_tokens)))
                yield _sse("[DONE]")
            finally:
                finish()

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        message = INTERNAL_ERROR.format(type(exc).__name__)
        return _openai_error(500, message) if request.url.path.startswith("/v1/") else _error(500, message)

    return app


def default_model_id(url: str, step: int) -> str:
    """The id /v1/models shows: the run's folder (a checkpoint folder's run, a model.zip's
    folder) and the step, as `demo-step-150`."""
    parts = [p for p in url.rstrip("/").split("/") if p and not p.endswith(":")]
    if len(parts) >= 3 and parts[-2] == "checkpoints":
        return f"{parts[-3]}-step-{step}"
    if len(parts) >= 2 and parts[-1].endswith(".zip"):
        return f"{parts[-2]}-step-{step}"
    return f"{parts[-1] if parts else 'horovod-llm'}-step-{step}"


def serve(
    checkpoint_url: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Limits = Limits(),
    log_level: str = "info",
    model_name: str | None = None,
    access: Access = Access(),
    device: str = "cpu",
) -> None:
    """Load the checkpoint onto `device` (cpu, cuda or auto), bind host:port (0: any free
    port) and answer until interrupted."""
    import uvicorn

    from horovod_llm.checkpoint import load_checkpoint
    from horovod_llm.training.device import inference_device

    placed = inference_device(device)
    loaded = load_checkpoint(checkpoint_url)
    loaded.model.to(placed)
    generator = TextGenerator.from_checkpoint(loaded)
    model_id = model_name or default_model_id(loaded.url, loaded.step)
    info = {
        "checkpoint": loaded.url,
        "step": loaded.step,
        "model": model_id,
        "max_batch": limits.max_batch,
        "block_size": loaded.model.config.block_size,
        "vocab_size": loaded.model.config.vocab_size,
        "limits": {"max_body_bytes": limits.max_body_bytes, "max_prompt_chars": limits.max_prompt_chars, "max_new_tokens": limits.max_new_tokens},
    }
    config = uvicorn.Config(create_app(generator, info, limits, model_id, access), host=host, port=port, log_level=log_level.lower())
    # Bound and listening here, so that port 0 can be reported as the real port, and a
    # client that connects as soon as it reads the line waits in the backlog.
    sock = config.bind_socket()
    sock.listen(config.backlog)
    bound_host, bound_port = sock.getsockname()[:2]
    log.info("serving %s (step %d) as model %r on http://%s:%d", loaded.url, loaded.step, model_id, bound_host, bound_port)
    uvicorn.Server(config).run(sockets=[sock])

"""`horovod-llm serve`: an HTTP JSON API over one checkpoint, loaded once.

    POST /generate  {"prompt": "ROMEO:", "max_new_tokens": 200, "temperature": 0.8,
                     "top_k": 50, "top_p": 1.0, "seed": 42, "stop": ["\\n\\n"]}   (all optional)
                 -> {"text", "prompt_tokens", "completion_tokens", "seconds", "stop_reason", "seed"}
    GET  /health -> {"status": "ok", "checkpoint", "step", ...}

`text` is the completion only, without the prompt; `seconds` is the time spent
generating it. Without a seed a random one is drawn and returned, so any answer can be
reproduced. Mistakes are answered with `{"error": "<problem>: <fix>"}`: 400 for a body
that is not a JSON object, 413 for a body over the size limit, 422 for a bad or
out-of-limit value, 503 when too many requests wait, and 500 for an internal error,
which is logged and never stops the server.

Concurrency: a single worker thread runs every generation, in arrival order. Torch
already spreads one forward pass over all cores (intra-op threads), so generations
side by side would only contend for the same cores; and with one thread touching the
model and the tokenizer there is no question of their thread safety. The event loop
stays free meanwhile: /health and refusals answer at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from horovod_llm.generate import TextGenerator
from horovod_llm.sampling import MAX_SEED, Sampling, sampling_fields

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 64 * 1024
    max_prompt_chars: int = 16_000
    max_new_tokens: int = 1024
    max_pending: int = 256  # requests waiting or running; beyond it, 503


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


def create_app(generator: TextGenerator, info: dict, limits: Limits = Limits()) -> FastAPI:
    """The API around one TextGenerator; `info` is shown by /health."""
    request_type = request_model(limits)
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
    pending = 0  # only the event loop's thread touches it

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        worker.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="horovod-llm", description=__doc__.split("\n\n")[0], lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "pending": pending, **info}

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
        sampling = Sampling(req.max_new_tokens, req.temperature, req.top_k, req.top_p, seed, tuple(req.stop))
        problems = sampling.problems(max_new_tokens=limits.max_new_tokens)
        if problems:
            return _error(422, "; ".join(problems))
        if pending >= limits.max_pending:
            return _error(503, f"busy: {pending} requests are waiting; retry later")

        def run():
            started = time.perf_counter()
            completion = generator.complete(req.prompt, sampling)[0]
            return completion, time.perf_counter() - started

        pending += 1
        try:
            completion, seconds = await asyncio.get_running_loop().run_in_executor(worker, run)
        except Exception as exc:
            log.exception("generation failed for a prompt of %d characters", len(req.prompt))
            return _error(500, f"internal error ({type(exc).__name__}): the server goes on; report it if it repeats")
        finally:
            pending -= 1
        return JSONResponse(
            {
                "text": completion.text,
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
                "seconds": round(seconds, 4),
                "stop_reason": completion.stop_reason,
                "seed": seed,
            }
        )

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}): the server goes on; report it if it repeats")

    return app


def serve(checkpoint_url: str, host: str = "127.0.0.1", port: int = 8000, limits: Limits = Limits(), log_level: str = "info") -> None:
    """Load the checkpoint, bind host:port (0: any free port) and answer until interrupted."""
    import uvicorn

    from horovod_llm.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint_url)
    generator = TextGenerator.from_checkpoint(loaded)
    info = {
        "checkpoint": loaded.url,
        "step": loaded.step,
        "block_size": loaded.model.config.block_size,
        "vocab_size": loaded.model.config.vocab_size,
        "limits": {"max_body_bytes": limits.max_body_bytes, "max_prompt_chars": limits.max_prompt_chars, "max_new_tokens": limits.max_new_tokens},
    }
    config = uvicorn.Config(create_app(generator, info, limits), host=host, port=port, log_level=log_level.lower())
    # Bound and listening here, so that port 0 can be reported as the real port, and a
    # client that connects as soon as it reads the line waits in the backlog.
    sock = config.bind_socket()
    sock.listen(config.backlog)
    bound_host, bound_port = sock.getsockname()[:2]
    log.info("serving %s (step %d) on http://%s:%d", loaded.url, loaded.step, bound_host, bound_port)
    uvicorn.Server(config).run(sockets=[sock])

"""`horovod-llm`: one command, a dispatch table of subcommands.

User mistakes end as one line `error: <problem>: <fix>` on stderr and exit status 2;
generated text is the only thing written to stdout.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import os
import sys
import threading
import time

from horovod_llm import __version__, progress, storage
from horovod_llm.config import CONFIG_DIR, RunConfig, load_config
from horovod_llm.emr.commands import add_subcommands as add_emr_subcommands
from horovod_llm.errors import JobFailed, UserError, user_error_in
from horovod_llm.inference.sampling import Sampling, flag, sampling_fields
from horovod_llm.log import setup_logging

log = logging.getLogger("horovod_llm")

DEFAULT_CONFIG = CONFIG_DIR / "local.yaml"


def _load(args: argparse.Namespace) -> RunConfig:
    overrides = list(args.overrides)
    if args.log_level:
        overrides.append(f"log_level={args.log_level}")
    config = load_config(args.config, overrides)
    # Bars only where log records keep off their line (log.TerminalHandler).
    bars = progress.wants_bars(config.progress, progress.is_terminal(sys.stderr))
    setup_logging(config.log_level, progress=bars)
    progress.enable(bars)
    storage.use(storage.storage_settings(config))
    return config


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check each part of the stack and print one row per part."""
    from horovod_llm.doctor import print_report, run_checks

    setup_logging(args.log_level or "WARNING")
    results = run_checks()
    print_report(results)
    return 0 if all(r.ok for r in results) else 1


def cmd_preprocess(args: argparse.Namespace) -> int:
    """Spark job: corpus -> tokenizer -> windows -> Parquet dataset with a manifest."""
    from horovod_llm.data.preprocess import run_preprocess
    from horovod_llm.spark import spark_session

    config = _load(args)
    run_preprocess(config, spark_session(config.spark), force=args.force)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train on the dataset under output_url with the configured launcher."""
    from horovod_llm.launchers.launch import launch_training

    config = _load(args)
    result = launch_training(config)
    final = result.get("summary", {}).get("final", {})
    log.info("training done: val loss %s, checkpoint %s", final.get("val_loss"), result.get("summary", {}).get("checkpoint_url"))
    return 0


def _unescape(text: str) -> str:
    """`\\n` and `\\t` as typed in a shell, for --stop."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def _set_threads(threads: int) -> None:
    import torch

    if threads < 0:
        raise UserError(f"--threads ({threads}) must be 0 (torch's default) or more")
    if threads:
        torch.set_num_threads(threads)


def _read_prompt(args: argparse.Namespace) -> str:
    """--prompt, else --prompt-file (a path, URL or - for stdin), else stdin when it is
    not a terminal, else empty (start from BOS). Taken exactly, trailing newline included."""
    from horovod_llm import storage

    if args.prompt is not None:
        return args.prompt
    source = args.prompt_file
    if source is None and sys.stdin.isatty():
        return ""
    if source is None or source == "-":
        return sys.stdin.read()
    if not storage.exists(source):
        raise UserError(f"--prompt-file {source} does not exist: pass an existing file or URL, or - for standard input")
    try:
        return storage.read_text(source)
    except UnicodeDecodeError:
        raise UserError(f"--prompt-file {source} is not UTF-8 text: convert it to UTF-8") from None


def cmd_generate(args: argparse.Namespace) -> int:
    """Print text generated from a prompt by a checkpoint, a run's latest one or a model.zip."""
    import time

    from horovod_llm.checkpoint import load_checkpoint
    from horovod_llm.inference.generate import TextGenerator
    from horovod_llm.training.device import inference_device

    setup_logging(args.log_level or "WARNING")
    sampling = Sampling(**{f.name: getattr(args, f.name) for f in sampling_fields()} | {"stop": tuple(args.stop)})
    # Every bad flag at once. Problems name settings as the fields do (top_p): the flags are --top-p.
    problems = [flag(name) + " " + rest for name, rest in (p.split(" ", 1) for p in sampling.problems())]
    if not 1 <= args.num_samples <= 64:
        problems.append(f"--num-samples ({args.num_samples}) must be between 1 and 64")
    if problems:
        raise UserError("; ".join(problems))
    _set_threads(args.threads)
    device = inference_device(args.device)
    prompt = _read_prompt(args)
    started = time.perf_counter()
    loaded = load_checkpoint(args.checkpoint)
    loaded.model.to(device)
    generator = TextGenerator.from_checkpoint(loaded, use_cache=not args.no_cache)
    loaded_at = time.perf_counter()
    completions = generator.complete(prompt, sampling, args.num_samples)
    seconds = time.perf_counter() - loaded_at
    sys.stdout.write("---\n".join(prompt + c.text + "\n" for c in completions))
    new_tokens = sum(c.completion_tokens for c in completions)
    sys.stderr.write(
        f"{loaded.url} (step {loaded.step}) loaded in {loaded_at - started:.2f} s; prompt {completions[0].prompt_tokens} tokens; "
        f"{new_tokens} new tokens in {seconds:.2f} s ({new_tokens / max(seconds, 1e-9):.1f} tokens/s); "
        f"stopped by {', '.join(sorted({c.stop_reason for c in completions}))}\n"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a checkpoint on a text or on its run's validation split; print one JSON object."""
    import json
    import time

    from horovod_llm import storage
    from horovod_llm.checkpoint import load_checkpoint
    from horovod_llm.inference.evaluate import evaluate_split, evaluate_text, run_of_checkpoint
    from horovod_llm.training.device import inference_device

    setup_logging(args.log_level or "WARNING")
    if args.batch_size < 1:
        raise UserError(f"--batch-size ({args.batch_size}) must be at least 1")
    if args.stride is not None and args.stride < 1:
        raise UserError(f"--stride ({args.stride}) must be at least 1")
    _set_threads(args.threads)
    device = inference_device(args.device)
    started = time.perf_counter()
    loaded = load_checkpoint(args.checkpoint)
    loaded.model.to(device)
    if args.text_file is not None:
        if not storage.exists(args.text_file):
            raise UserError(f"--text-file {args.text_file} does not exist: pass an existing file or URL")
        try:
            text = storage.read_text(args.text_file)
        except UnicodeDecodeError:
            raise UserError(f"--text-file {args.text_file} is not UTF-8 text: convert it to UTF-8") from None
        result = {"text_file": storage.normalize(args.text_file)} | evaluate_text(loaded.model, loaded.tokenizer_bytes, text, args.stride, args.batch_size)
    else:
        output_url = args.output_url or run_of_checkpoint(loaded.url) or loaded.config.output_url
        result = evaluate_split(loaded.model, loaded.tokenizer_bytes, output_url, args.split, args.batch_size)
    result = {"checkpoint": loaded.url, "step": loaded.step} | result
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stderr.write(f"scored {result['tokens']} tokens in {time.perf_counter() - started:.2f} s\n")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Answer POST /generate, OpenAI's /v1/completions and /v1/models, and GET /health over HTTP with one checkpoint, loaded once.

    Concurrent requests are decoded together (continuous batching, up to --max-batch sequences)."""
    import ipaddress

    from horovod_llm.inference.serve import API_KEY_ENV, LOOPBACK_NAMES, Access, Limits, serve

    setup_logging(args.log_level or "INFO")
    limits = Limits(args.max_body_bytes, args.max_prompt_chars, args.max_new_tokens, args.max_pending, args.max_batch)
    for name, value in vars(limits).items():
        if value < 1:
            raise UserError(f"--{name.replace('_', '-')} ({value}) must be at least 1")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port ({args.port}) must be between 0 (any free port) and 65535")
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if not loopback and api_key is None:
        if not args.insecure:
            raise UserError(
                f"binding {args.host} without an API key would let anyone who reaches it use the model: set {API_KEY_ENV} (or --api-key), "
                "or pass --insecure to serve it open"
            )
        log.warning("binding %s without an API key (--insecure): anyone who can reach this address can use the model", args.host)
    bound = () if loopback or args.host in ("0.0.0.0", "::") else (args.host,)
    access = Access(allowed_hosts=(*LOOPBACK_NAMES, *bound, *args.allowed_host), api_key=api_key, cors_origins=tuple(args.cors_origin))
    _set_threads(args.threads)
    serve(args.checkpoint, args.host, args.port, limits, log_level=args.log_level or "INFO", model_name=args.model_name, access=access, device=args.device)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a checkpoint in a format other tools load: hf (a folder for Hugging Face transformers) or zip (a model.zip)."""
    setup_logging(args.log_level or "INFO")
    if args.format == "hf":
        from horovod_llm.inference.export import export_hf

        export_hf(args.checkpoint, args.out)
    else:
        from horovod_llm.checkpoint import export_model_zip

        if not args.out.endswith(".zip"):
            raise UserError(f"--out {args.out} must end in .zip for --format zip")
        log.info("wrote %s from %s", args.out, export_model_zip(args.checkpoint, args.out))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The whole job: preprocess, train, then generate a sample."""
    config = _load(args)
    started = None
    if config.train.device != "cuda":  # a CUDA run is refused where there is none before Spark starts
        began = time.perf_counter()
        started = (_spark_while_torch_imports(config), time.perf_counter() - began)
    from horovod_llm.pipeline import run_pipeline

    report = run_pipeline(config, force=args.force, started_spark=started)
    sys.stdout.write(report + "\n")
    return 0


def _spark_while_torch_imports(config: RunConfig):
    """The SparkSession, started while a thread imports torch: the pipeline's modules
    need torch (a second to import) and the JVM's start (3 s) is a wait that holds no
    GIL. Only torch goes to the thread, and numpy, which both import, is imported first:
    two threads importing modules that import each other could deadlock."""
    import numpy  # noqa: F401

    from horovod_llm.spark import spark_session

    importing = threading.Thread(target=importlib.import_module, args=("torch",), name="import-torch", daemon=True)
    importing.start()
    spark = spark_session(config.spark)
    importing.join()
    return spark


def cmd_emr(args: argparse.Namespace) -> int:
    """Run the pipeline on AWS EMR: up, submit, status, logs, down (docs/emr.md)."""
    return args.emr_handler(args, _load(args))


def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per field of `Sampling`, with its default and help."""
    for f in sampling_fields():
        if f.name == "stop":
            parser.add_argument(
                flag(f.name), dest=f.name, action="append", type=_unescape, default=[], metavar="TEXT", help=f.metadata["help"] + "; \\n and \\t understood"
            )
        else:
            parser.add_argument(flag(f.name), dest=f.name, type=type(f.default), default=f.default, help=f.metadata["help"])


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    # cpu by default: this package's models decode one token at a time, which a GPU
    # speeds up only for large ones; and batch invariance is tested on CPUs.
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu", help="where the model computes (auto: cuda where torch finds a GPU)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="horovod-llm", description="Train a GPT-style decoder from raw text with Spark and Horovod.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="overrides log_level from the config")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config file (default: configs/local.yaml)")
        p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. train.max_steps=20")

    def add(name: str, handler) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=handler.__doc__.splitlines()[0], description=handler.__doc__)
        p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default=argparse.SUPPRESS, help="overrides log_level")
        p.set_defaults(handler=handler)
        return p

    add("doctor", cmd_doctor)
    p = add("preprocess", cmd_preprocess)
    with_config(p)
    p.add_argument("--force", action="store_true", help="rebuild even when a complete dataset for this config exists")
    with_config(add("train", cmd_train))
    threads_help = "torch threads (0: torch's default, one per core)"
    # Decoding runs many tiny operations per token: on this package's model sizes one
    # thread beats several, by far on busy cores (bench/generate_throughput.py).
    decode_threads_help = "torch threads (default 1: fastest for small models, one token at a time; 0: torch's default)"
    checkpoint_help = "a checkpoints/step-XXXXXXXX folder, a run's output_url (its latest checkpoint) or a model.zip; local or s3://"
    p = add("generate", cmd_generate)
    p.add_argument("--checkpoint", required=True, help=checkpoint_help)
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", help="text to continue (default: standard input when it is not a terminal, else empty: start from BOS)")
    prompt.add_argument("--prompt-file", metavar="PATH_OR_URL", help="read the prompt from a file or URL; - for standard input")
    add_sampling_flags(p)
    p.add_argument("--num-samples", type=int, default=1, help="samples to draw (printed one after another, separated by a line ---)")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context at every step (slower; for comparison)")
    p.add_argument("--threads", type=int, default=1, help=decode_threads_help)
    add_device_flag(p)

    p = add("evaluate", cmd_evaluate)
    p.add_argument("--checkpoint", required=True, help=checkpoint_help)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--text-file", metavar="PATH_OR_URL", help="a UTF-8 text file or URL to score")
    source.add_argument("--split", choices=["val", "train"], help="a split of the run's dataset (val: the validation windows)")
    p.add_argument("--output-url", help="with --split: the run whose dataset to read (default: the run the checkpoint belongs to)")
    p.add_argument("--stride", type=int, help="with --text-file: ids between window starts (default: half the model's block_size)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    p.add_argument("--threads", type=int, default=0, help=threads_help)
    add_device_flag(p)

    p = add("serve", cmd_serve)
    p.add_argument("--checkpoint", required=True, help=checkpoint_help)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (the log says which)")
    p.add_argument("--max-body-bytes", type=int, default=64 * 1024, help="larger request bodies get 413")
    p.add_argument("--max-prompt-chars", type=int, default=16_000, help="longer prompts get 422")
    p.add_argument("--max-new-tokens", type=int, default=1024, help="requests for more get 422")
    p.add_argument("--max-pending", type=int, default=256, help="requests waiting or running beyond which new ones get 503")
    p.add_argument("--max-batch", type=int, default=16, help="sequences decoded together (1: one at a time); a request's n must fit")
    p.add_argument("--model-name", help="the model id /v1/models shows and requests may name (default: the run's folder and step)")
    p.add_argument("--threads", type=int, default=1, help=decode_threads_help)
    add_device_flag(p)
    p.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' on every route but /health (prefer the environment variable HOROVOD_LLM_API_KEY: "
        "a command line is visible to every local user); required to bind beyond loopback",
    )
    p.add_argument("--insecure", action="store_true", help="bind beyond loopback without an API key: anyone who reaches the port can use the model")
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests for this Host name (repeatable; '*': any); default: loopback names",
    )
    p.add_argument(
        "--cors-origin", action="append", default=[], metavar="ORIGIN", help="let pages of this origin read the answers (CORS; repeatable); default: none"
    )
    p = add("export", cmd_export)
    p.add_argument("--format", required=True, choices=["hf", "zip"], help="hf: GPT-2 weights, config and a fast tokenizer for transformers; zip: a model.zip")
    p.add_argument("--checkpoint", required=True, help=checkpoint_help)
    p.add_argument("--out", required=True, metavar="PATH_OR_URL", help="hf: a new folder; zip: the archive's path; local or s3://")
    p = add("run", cmd_run)
    with_config(p)
    p.add_argument("--force", action="store_true", help="rebuild the dataset even when a complete one exists")
    add_emr_subcommands(add("emr", cmd_emr))
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line (argv None: this process's own, and this process is the CLI's to
    end; a caller passing argv keeps its SparkSession)."""
    args = build_parser().parse_args(argv)
    args.log_level = getattr(args, "log_level", None)
    fail = functools.partial(failed, owns_process=argv is None)
    try:
        return args.handler(args)
    except UserError as exc:
        return fail(str(exc), 2)
    except JobFailed as exc:
        return fail(str(exc), 1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # A UserError raised inside a Spark task or a Horovod rank reaches the driver
        # wrapped in Java and Spark exceptions; show the user its message, not the stack.
        message = user_error_in(exc)
        if message is None:
            raise
        return fail(message, 2)


def failed(message: str, status: int, owns_process: bool) -> int:
    """The one-line error, as the last line of stderr; `status` to exit with."""
    if owns_process:
        quiet_spark()
    print(f"error: {message}", file=sys.stderr)
    return status


def quiet_spark() -> None:
    """Stop this process's SparkContext, its JVM's log off first: what the JVM logs while
    a failed job's tasks are torn down (stack traces of interrupted tasks) would otherwise
    land after the error line, or between its words."""
    pyspark = sys.modules.get("pyspark")
    context = pyspark and pyspark.SparkContext._active_spark_context
    if not context:
        return
    try:
        context.setLogLevel("OFF")
        context.stop()
    except Exception:  # a JVM already gone has nothing more to say
        log.debug("stopping Spark after the error failed", exc_info=True)


if __name__ == "__main__":
    sys.exit(main())

"""`horovod-llm`: one command, a dispatch table of subcommands.

User mistakes end as one line `error: <problem>: <fix>` on stderr and exit status 2;
generated text is the only thing written to stdout.
"""

from __future__ import annotations

import argparse
import logging
import sys

from horovod_llm import __version__
from horovod_llm.config import CONFIG_DIR, RunConfig, load_config
from horovod_llm.emr.commands import add_subcommands as add_emr_subcommands
from horovod_llm.errors import JobFailed, UserError, user_error_in
from horovod_llm.log import setup_logging

log = logging.getLogger("horovod_llm")

DEFAULT_CONFIG = CONFIG_DIR / "local.yaml"


def _load(args: argparse.Namespace) -> RunConfig:
    overrides = list(args.overrides)
    if args.log_level:
        overrides.append(f"log_level={args.log_level}")
    config = load_config(args.config, overrides)
    setup_logging(config.log_level)
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
    from horovod_llm.preprocess import run_preprocess
    from horovod_llm.spark import spark_session

    config = _load(args)
    run_preprocess(config, spark_session(config.spark), force=args.force)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train on the dataset under output_url with the configured launcher."""
    from horovod_llm.launch import launch_training

    config = _load(args)
    result = launch_training(config)
    final = result.get("summary", {}).get("final", {})
    log.info("training done: val loss %s, checkpoint %s", final.get("val_loss"), result.get("summary", {}).get("checkpoint_url"))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Print text generated from a prompt by a checkpoint (or a run's latest one)."""
    from horovod_llm.checkpoint import load_checkpoint
    from horovod_llm.generate import generate_text

    setup_logging(args.log_level or "WARNING")
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens ({args.max_new_tokens}) must be at least 1")
    if args.temperature < 0:
        raise UserError(f"--temperature ({args.temperature}) must be 0 (greedy) or more")
    if args.top_k < 0:
        raise UserError(f"--top-k ({args.top_k}) must be 0 (off) or more")
    loaded = load_checkpoint(args.checkpoint)
    text = generate_text(loaded, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    sys.stdout.write(text + "\n")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The whole job: preprocess, train, then generate a sample."""
    from horovod_llm.pipeline import run_pipeline

    config = _load(args)
    report = run_pipeline(config, force=args.force)
    sys.stdout.write(report + "\n")
    return 0


def cmd_emr(args: argparse.Namespace) -> int:
    """Run the pipeline on AWS EMR: up, submit, status, logs, down (docs/emr.md)."""
    return args.emr_handler(args, _load(args))


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
    p = add("generate", cmd_generate)
    p.add_argument("--checkpoint", required=True, help="a checkpoints/step-XXXXXXXX folder, or a run's output_url (its latest checkpoint)")
    p.add_argument("--prompt", default="", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    p.add_argument("--top-k", type=int, default=50, help="0 means no top-k filter")
    p.add_argument("--seed", type=int, default=42)
    p = add("run", cmd_run)
    with_config(p)
    p.add_argument("--force", action="store_true", help="rebuild the dataset even when a complete one exists")
    add_emr_subcommands(add("emr", cmd_emr))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.log_level = getattr(args, "log_level", None)
    try:
        return args.handler(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except JobFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # A UserError raised inside a Spark task or a Horovod rank reaches the driver
        # wrapped in Java and Spark exceptions; show the user its message, not the stack.
        message = user_error_in(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Does Word2Vec initialisation change the validation loss after a fixed number of steps?

Preprocesses the demo corpus once, then trains the demo model twice from the same seed,
with and without `model.init_from_word2vec`, on one in-process rank, and prints both
validation losses after `--steps` steps.

    .venv/bin/python bench/word2vec_ablation.py --steps 200
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from horovod_llm.config import CONFIG_DIR, load_config
from horovod_llm.data.preprocess import run_preprocess
from horovod_llm.launchers.launch import launch_training
from horovod_llm.log import setup_logging
from horovod_llm.spark import spark_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--output", default="runs/word2vec-ablation")
    parser.add_argument("--eval-batches", type=int, default=100)
    args = parser.parse_args()
    setup_logging("INFO")
    root = Path(args.output)
    base = root / "with-word2vec"
    common = [
        f"train.max_steps={args.steps}",
        "train.launcher=local",
        "train.num_proc=1",
        "train.eval_interval=0",
        f"train.eval_max_batches={args.eval_batches}",
    ]
    config = load_config(CONFIG_DIR / "local.yaml", [f"output_url={base}", *common])
    run_preprocess(config, spark_session(config.spark))
    results = {}
    for name, init in (("with-word2vec", True), ("random-init", False)):
        out = root / name
        if out != base:
            shutil.rmtree(out, ignore_errors=True)
            for part in ("dataset", "tokenizer", "embeddings"):
                shutil.copytree(base / part, out / part)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        shutil.rmtree(out / "stats", ignore_errors=True)
        run = load_config(CONFIG_DIR / "local.yaml", [f"output_url={out}", f"model.init_from_word2vec={str(init).lower()}", *common])
        results[name] = launch_training(run)["summary"]["final"]
    for name, final in results.items():
        print(f"{name:14s} val loss {final['val_loss']:.4f}  perplexity {final['val_perplexity']:.1f}  accuracy {final['val_accuracy']:.4f}")
    delta = results["random-init"]["val_loss"] - results["with-word2vec"]["val_loss"]
    print(f"word2vec lowers validation loss by {delta:+.4f} nats/token after {args.steps} steps")
    (root / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

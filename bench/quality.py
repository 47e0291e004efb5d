"""Quality per CPU-second: held-out nats per character after a wall-clock budget of
training, the product's recipe against a reference trainer, on three corpora, in one run.

    .venv/bin/python bench/quality.py [--budgets 90 350] [--seeds 3] [--corpora shakespeare code python_docs]
                                      [--arms recipe reference_bare] [--json PATH] [--recipe key=value ...]

Corpora (built here, from what every machine with this stack has; nothing downloaded):
  shakespeare  the first 1.1 M characters of the embedded plays (markdown turned into text),
               about the size of tiny-Shakespeare
  code         the first 1.1 M characters of CPython's standard library (Lib/*.py, in
               name order): a corpus with nothing of Shakespeare in it
  python_docs  the Python documentation's topics as CPython ships them (pydoc_data, about
               0.47 M characters of English technical prose): a corpus neither the sweeps
               nor the recipe's rule ever saw
Each is split by position, cut at line breaks (`split_by_position`): the first 80% trains,
80-90% is the development slice the sweeps (bench/sweep.py) score on and tune the rule
by, and the last 10% is the test slice only this bench scores on, with seeds no sweep
uses (QUALITY_SEEDS): no figure here comes from text or seeds the rule was tuned on.

Arms, each but reference_bare the product's own main job: `horovod-llm run --config
configs/local.yaml` with data.input_url = the training text and train.max_minutes = the
budget (2 ranks x 1 thread, as the demo), then `horovod-llm evaluate --text-file` on the
held-out text:
  recipe     the settings the product chooses for the corpus and the budget (recipe.py),
             plus any --recipe overrides (the sweeps use these)
  reference  nanoGPT's CPU example for character-level Shakespeare inside this pipeline
             (4 layers, 4 heads, width 128, context 64, batch 12, dropout 0, learning
             rate 1e-3 decayed to 1e-4, learned positions), built from this package's
             model with a character-level sentencepiece tokenizer and no Word2Vec
  recipe_random_init  the recipe without Word2Vec initialisation (its effect)
  reference_bare  nanoGPT's CPU example in nanoGPT's own kind of loop: one plain process,
             random offsets into the token array, no pipeline (bench/reference_trainer.py);
             the reported reference (REPORTED_REFERENCE): recipe - reference_bare is what
             a user gains over nanoGPT's trainer on the same machine
The budget counts the training loop only; each run also reports the wall time of the whole
job (Spark start, preprocessing, Horovod start, training, generation).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from common import BENCH_RUNS, LOCAL_CONFIG, REPO_ROOT, cpu_model, git_commit, report, write_result

QUALITY_RUNS = BENCH_RUNS / "quality"
# Where the development and the test slice start, as fractions of a corpus by position.
DEV_FROM, TEST_FROM = 0.8, 0.9
CORPUS_CHARS = 1_100_000
# Sweeps train with seed 1 (bench/sweep.py); the quality bench's seeds start here.
QUALITY_SEEDS_FROM = 101
HOROVOD_LLM = str(Path(sys.executable).parent / "horovod-llm")

REFERENCE = [
    "tokenizer.model_type=char",
    "tokenizer.vocab_size=1024",  # a ceiling: a character model has one piece per character
    "data.window_size=64",
    "data.overlap=48",  # a window every 16 characters: nanoGPT samples windows anywhere
    "model.n_layer=4",
    "model.n_head=4",
    "model.n_embd=128",
    "model.dropout=0.0",
    "model.positional=learned",
    "model.init_from_word2vec=false",
    "embedding.word2vec.enabled=false",
    "train.batch_size=6",  # x 2 ranks: nanoGPT's batch of 12
    "train.learning_rate=0.001",
    "train.min_lr=0.0001",
    "train.warmup_steps=100",
]
ARMS = {
    "recipe": [],
    "reference": REFERENCE,
    "recipe_random_init": ["model.init_from_word2vec=false", "embedding.word2vec.enabled=false"],
    "reference_bare": [],  # not the product: run_reference
}
# The arm the recipe is reported against (recipe - reference): nanoGPT's trainer in its own
# loop, so that the difference is what a user gains over it, not this pipeline's overhead
# on the same configuration (the `reference` arm, which a run may add for that).
REPORTED_REFERENCE = "reference_bare"


def shakespeare_text() -> str:
    from horovod_llm.data import corpus

    texts = []
    for f in corpus.embedded_corpus():
        text, _ = corpus.decode(Path(f.url).read_bytes(), f.url)
        texts.append(text.strip("\n"))
    return "\n\n".join(texts) + "\n"


def code_text() -> str:
    library = Path(sysconfig.get_paths()["stdlib"])
    return "\n\n".join(path.read_text(encoding="utf-8", errors="replace") for path in sorted(library.glob("*.py")))


def python_docs_text() -> str:
    import pydoc_data.topics

    return "\n\n".join(pydoc_data.topics.topics[name].strip("\n") for name in sorted(pydoc_data.topics.topics)) + "\n"


CORPORA = {"shakespeare": shakespeare_text, "code": code_text, "python_docs": python_docs_text}
# The text each kind of run scores on: the sweeps tune on "dev", this bench reports "test".
SLICES = ("train", "dev", "test")


def split_by_position(text: str) -> dict[str, str]:
    """{train, dev, test}: the text cut at the line breaks before DEV_FROM and TEST_FROM of
    its length; consecutive, disjoint, and together the whole text."""
    cuts = []
    for fraction in (DEV_FROM, TEST_FROM):
        mark = int(len(text) * fraction)
        cuts.append(text.rfind("\n", 0, mark) + 1 or mark)
    return {"train": text[: cuts[0]], "dev": text[cuts[0] : cuts[1]], "test": text[cuts[1] :]}


def prepare_corpus(name: str) -> Path:
    """runs/bench/quality/corpora-v2/NAME/{train,dev,test}.txt: a slice of CORPUS_CHARS,
    split by position (a folder of its own: the older one held a 90/10 split)."""
    folder = QUALITY_RUNS / "corpora-v2" / name
    if not (folder / "test.txt").exists():
        text = CORPORA[name]()[:CORPUS_CHARS]
        text = text[: text.rfind("\n") + 1]
        folder.mkdir(parents=True, exist_ok=True)
        slices = split_by_position(text)
        for part in SLICES:  # test.txt last: the folder is complete
            (folder / f"{part}.txt").write_text(slices[part], encoding="utf-8")
    return folder


def run_arm(corpus_dir: Path, arm: str, budget_s: float, seed: int, overrides: list[str], out: Path, score_on: str = "test") -> dict:
    """One `horovod-llm run` on the train slice, then `horovod-llm evaluate` on the
    `score_on` slice ("dev" for sweeps, "test" for this bench), from an empty folder: a
    run left there would be resumed, and its dataset reused."""
    if score_on not in ("dev", "test"):
        raise ValueError(f"score_on must be 'dev' or 'test', not {score_on!r}")
    if arm == "reference_bare":
        return run_reference(corpus_dir, budget_s, seed, out, score_on)
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    args = [
        f"output_url={out}",
        f"data.input_url={corpus_dir / 'train.txt'}",
        f"train.max_minutes={budget_s / 60}",
        f"train.seed={seed}",
        "train.checkpoint_interval=0",
        "generate.max_new_tokens=40",
        *ARMS[arm],
        *overrides,
    ]
    started = time.perf_counter()
    done = subprocess.run([HOROVOD_LLM, "run", "--config", str(LOCAL_CONFIG), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{arm} on {corpus_dir.name} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    scored = subprocess.run(
        [HOROVOD_LLM, "evaluate", "--checkpoint", str(out), "--text-file", str(corpus_dir / f"{score_on}.txt"), "--batch-size", "16", "--threads", "2"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    scores = json.loads(scored.stdout)
    summary = json.loads((out / "stats" / "summary.json").read_text())
    pipeline = json.loads((out / "stats" / "pipeline.json").read_text())
    from horovod_llm.data.manifest import read_manifest

    manifest = read_manifest(str(out))
    trained_with = trained_settings(Path(summary["checkpoint_url"]) / "config.yaml")
    return {
        "arm": arm,
        "budget_s": budget_s,
        "seed": seed,
        "scored_on": score_on,
        "overrides": [*ARMS[arm], *overrides],
        "nats_per_character": scores["nats_per_character"],
        "nll_per_token": scores["nll_per_token"],
        "characters_per_token": scores["characters"] / scores["tokens"],
        "steps": summary["steps"],
        "trained_seconds": summary["trained_seconds"],
        "tokens_per_s": summary["tokens_per_s"],
        # what the ranks trained in (train.precision=auto decides by measuring); older runs: fp32
        "precision": summary.get("precision", {}).get("used", "fp32"),
        "parameters": summary["parameters"],
        "epochs": summary["steps"] * summary["global_batch_windows"] / manifest.splits["train"].windows,
        "recipe": trained_with,
        "run_wall_s": wall,
        "stages_s": pipeline["stages"],
        "train_stage_s": pipeline["train_stage"],
    }


def run_reference(corpus_dir: Path, budget_s: float, seed: int, out: Path, score_on: str) -> dict:
    """bench/reference_trainer.py on the train slice for the budget, scored on `score_on`,
    as a run of this bench (its whole job is the one process)."""
    out.mkdir(parents=True, exist_ok=True)
    script = Path(__file__).resolve().parent / "reference_trainer.py"
    command = [sys.executable, str(script), "--train", str(corpus_dir / "train.txt"), "--score", str(corpus_dir / f"{score_on}.txt")]
    command += ["--seconds", str(budget_s), "--seed", str(seed), "--json", str(out / "reference.json")]
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    result = json.loads((out / "reference.json").read_text())
    characters = len((corpus_dir / "train.txt").read_text(encoding="utf-8"))
    config = result["config"]
    return {
        "arm": "reference_bare",
        "budget_s": budget_s,
        "seed": seed,
        "scored_on": score_on,
        "overrides": [],
        "nats_per_character": result["nats_per_character"],
        "nll_per_token": result["nats_per_character"],
        "characters_per_token": 1.0,
        "steps": result["steps"],
        "trained_seconds": budget_s,
        "tokens_per_s": result["tokens_per_s"],
        "precision": "fp32",
        "parameters": result["parameters"],
        "epochs": result["steps"] * config["batch_size"] * config["block_size"] / characters,
        "recipe": {
            "model_type": "char",
            "vocab_size": result["vocabulary"],
            "window_size": config["block_size"],
            "overlap": None,
            "n_layer": config["n_layer"],
            "n_head": config["n_head"],
            "n_embd": config["n_embd"],
            "dropout": config["dropout"],
            "batch_size": config["batch_size"],
            "learning_rate": config["learning_rate"],
        },
        "run_wall_s": wall,
    }


def trained_settings(config_yaml: Path) -> dict:
    """The recipe's settings a run trained with, from its final checkpoint's config (the
    dataset's manifest would do for the data's settings, but a reused dataset keeps the
    model settings of the run that built it)."""
    import yaml

    config = yaml.safe_load(config_yaml.read_text())
    return {key: config[section][key] for section, key in RECIPE_KEYS}


# Settings reported with each run (the resolved config).
RECIPE_KEYS = [
    ("tokenizer", "model_type"),
    ("tokenizer", "vocab_size"),
    ("data", "window_size"),
    ("data", "overlap"),
    ("model", "n_layer"),
    ("model", "n_head"),
    ("model", "n_embd"),
    ("model", "dropout"),
    ("train", "batch_size"),
    ("train", "learning_rate"),
]


def summarize(runs: list[dict], corpora: list[str], budgets: list[float]) -> list[dict]:
    """Per corpus and budget: each arm's median over seeds, and recipe - reference."""
    rows = []
    for name in corpora:
        for budget in budgets:
            row = {"corpus": name, "budget_s": budget}
            for arm in ARMS:
                values = [r["nats_per_character"] for r in runs if (r["corpus"], r["budget_s"], r["arm"]) == (name, budget, arm)]
                if values:
                    row[arm] = {"median": statistics.median(values), "seeds": len(values), "values": values}
            if "recipe" in row and REPORTED_REFERENCE in row:
                row["recipe_minus_reference"] = row["recipe"]["median"] - row[REPORTED_REFERENCE]["median"]
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[90.0, 350.0], help="seconds of training per run")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=list(CORPORA))
    parser.add_argument("--arms", nargs="+", default=["recipe", REPORTED_REFERENCE], choices=list(ARMS))
    parser.add_argument("--recipe", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for the recipe arm (sweeps)")
    parser.add_argument("--json", help="write the results to this file (after every run, so that a stopped bench keeps what it measured)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs already in --json that this kind of machine measured, and add only the missing ones (another arm, more seeds, another budget)",
    )
    args = parser.parse_args()
    runs = resumable_runs(Path(args.json)) if args.resume and args.json and Path(args.json).exists() else []
    # Seeds outermost: a bench stopped early still has every corpus and budget, with fewer seeds.
    for seed in range(QUALITY_SEEDS_FROM, QUALITY_SEEDS_FROM + args.seeds):
        for name in args.corpora:
            corpus_dir = prepare_corpus(name)
            for budget in args.budgets:
                for arm in args.arms:  # arms alternate, so that load on the machine hits them alike
                    if any((r["corpus"], r["arm"], r["budget_s"], r["seed"]) == (name, arm, budget, seed) for r in runs):
                        continue
                    overrides = args.recipe if arm.startswith("recipe") else []
                    # a folder per results file: two benchmarks' runs never share one
                    out = QUALITY_RUNS / "runs" / Path(args.json or "quality").stem / f"{name}-{arm}-{int(budget)}-{seed}"
                    result = {"corpus": name, **run_arm(corpus_dir, arm, budget, seed, overrides, out), **this_machine()}
                    runs.append(result)
                    report(
                        f"{name:11s} {int(budget):4d} s seed {seed} {arm:18s}: {result['nats_per_character']:.3f} nats/char "
                        f"({result['steps']} steps, {result['tokens_per_s']:.0f} tok/s, {result['epochs']:.1f} epochs, "
                        f"{result['parameters'] / 1e6:.2f}M parameters; whole run {result['run_wall_s']:.0f} s)"
                    )
                    write_result(args.json, _results(runs))
    for row in _results(runs)["summary"]:
        if "recipe_minus_reference" in row:
            report(
                f"{row['corpus']:11s} {int(row['budget_s']):4d} s: recipe {row['recipe']['median']:.3f}, reference {row[REPORTED_REFERENCE]['median']:.3f} "
                f"(medians of {row['recipe']['seeds']} seeds): {row['recipe_minus_reference']:+.3f} nats/char"
            )
    write_result(args.json, _results(runs))


def this_machine() -> dict:
    """What each run records of where it ran: a bench resumed in a later session keeps
    only the runs of the same kind of machine, and names the commits its runs used."""
    return {"cpu_model": cpu_model(), "nproc": len(os.sched_getaffinity(0)), "commit": git_commit()}


def resumable_runs(path: Path) -> list[dict]:
    """The runs of an earlier, stopped bench that this one may continue: those measured on
    the same CPU model and core count (arms compared across machines say nothing)."""
    here = this_machine()
    runs = json.loads(path.read_text())["runs"]
    kept = [r for r in runs if (r.get("cpu_model"), r.get("nproc")) == (here["cpu_model"], here["nproc"])]
    if len(kept) < len(runs):
        report(f"resuming {path}: {len(runs) - len(kept)} of its {len(runs)} runs were measured on another kind of machine and are measured again")
    return kept


def _results(runs: list[dict]) -> dict:
    corpora = [name for name in CORPORA if any(r["corpus"] == name for r in runs)]
    budgets = sorted({r["budget_s"] for r in runs})
    return {
        "budgets_s": budgets,
        "seeds": len({r["seed"] for r in runs}),
        "corpus_chars": CORPUS_CHARS,
        "reference_arm": REPORTED_REFERENCE,
        "commits": sorted({r["commit"] for r in runs if "commit" in r}),
        "runs": runs,
        "summary": summarize(runs, corpora, budgets),
    }


if __name__ == "__main__":
    main()

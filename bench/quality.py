"""Quality per CPU-minute: validation nats and bits per character after a fixed wall-clock
budget of training, with and without Word2Vec initialisation.

    .venv/bin/python bench/quality.py [--budgets 120 600] [--text-file PATH] [--ranks 2] [--json PATH] [key=value ...]

The corpus (the embedded Shakespeare, its plays' text joined in order, or --text-file)
is split by position: the first 90% trains, the last 10% validates (cut at a line
break). On the training text, as preprocessing does: a BPE tokenizer
(`tokenizer.train_bpe`, configs/local.yaml's settings), windows (`windows.sliding_windows`)
and Word2Vec vectors (`embeddings.train_word2vec`); these are cached under
runs/bench/quality by a hash of the text and settings. Then configs/local.yaml's model
trains for each budget, with the demo's layout (--ranks 2 ranks x 1 thread under
horovodrun, train.batch_size windows per rank) and its optimizer, step
(`step.train_step`) and learning rates: linear warm-up over train.warmup_steps, then
a cosine decay to train.min_lr that follows the wall clock, so that it ends with the
budget whatever the machine's speed. The budget counts training steps only, not
start-up or evaluation. Validation: `evaluate.evaluate_text` over the held-out text
(every token scored once, with at least half a block of context).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import BENCH_RUNS, REPO_ROOT, default_gpt_config, local_config, report, write_result

QUALITY_RUNS = BENCH_RUNS / "quality"
TRAIN_FRACTION = 0.9


def corpus_text(text_file: str | None, normalization: str) -> str:
    from horovod_llm import corpus, storage

    if text_file:
        text, _ = corpus.decode(storage.read_bytes(text_file), text_file, normalization)
        if text is None:
            raise SystemExit(f"{text_file} looks binary: pass a text file")
        return text
    texts = []
    for f in corpus.embedded_corpus():
        text, _ = corpus.decode(Path(f.url).read_bytes(), f.url, normalization)
        texts.append(text.strip("\n"))
    return "\n\n".join(texts) + "\n"


def split_by_position(text: str, fraction: float = TRAIN_FRACTION) -> tuple[str, str]:
    """(first `fraction` of the text, the rest), cut at the line break before the mark."""
    mark = int(len(text) * fraction)
    cut = text.rfind("\n", 0, mark) + 1 or mark
    return text[:cut], text[cut:]


def prepare(train_text: str, val_text: str, config, folder: Path) -> None:
    """Tokenizer, training windows and Word2Vec matrix for `train_text`, and the
    validation text, into `folder`; info.json last."""
    from horovod_llm import embeddings, tokenizer
    from horovod_llm.preprocess import _sample_passages, encode_texts
    from horovod_llm.windows import join_documents, sliding_windows

    folder.mkdir(parents=True, exist_ok=True)
    tc, w2v = config.tokenizer, config.embedding.word2vec
    passages = _sample_passages(train_text)
    sample = folder / "sample.txt"
    budget, lines = tc.sample_bytes, []
    for passage in passages:
        budget -= len(passage.encode("utf-8")) + 1
        if budget < 0:
            break
        lines.append(passage)
    sample.write_text("\n".join(lines) + "\n", encoding="utf-8")
    model_bytes = tokenizer.train_bpe(sample, tc.vocab_size, tc.character_coverage, tc.seed)
    processor = tokenizer.load(model_bytes)
    stream = join_documents(encode_texts(processor, [train_text]), tokenizer.EOS_ID)
    windows = sliding_windows(stream, config.data.window_size, config.data.overlap)
    np.save(folder / "windows.npy", windows)
    sentences, tokens = [], 0
    for ids in processor.encode(passages):
        if len(ids) > 1 and tokens < w2v.sample_tokens:
            sentences.append(" ".join(map(str, ids)))
            tokens += len(ids)
    (folder / "sentences.txt").write_text("\n".join(sentences) + "\n")
    vector_size = w2v.vector_size or config.model.n_embd
    vectors = embeddings.train_word2vec(
        folder / "sentences.txt", vector_size=vector_size, window=w2v.window, min_count=w2v.min_count, epochs=w2v.epochs, workers=w2v.workers, seed=w2v.seed
    )
    matrix, coverage = embeddings.aligned_matrix(vectors.wv, processor.get_piece_size(), vector_size, w2v.seed, config.model.init_std)
    np.save(folder / "word2vec.npy", matrix)
    (folder / "tokenizer.model").write_bytes(model_bytes)
    (folder / "val.txt").write_text(val_text, encoding="utf-8")
    info = {"train_tokens": int(len(stream)), "windows": int(len(windows)), "word2vec_coverage": coverage}
    (folder / "info.json").write_text(json.dumps(info))  # written last: the folder is complete


# -- one rank (under horovodrun, or in-process for --ranks 1) -------------------------


def train_rank(folder: Path, budget: float, unit: str, init: str, threads: int, out: Path, overrides: list[str]) -> None:
    """Train configs/local.yaml's model on this rank's share of the windows for `budget`
    seconds (or steps) of training, then score the validation text; rank 0 writes the
    figures to `out`."""
    import horovod.torch as hvd
    import torch

    from horovod_llm.job import set_horovod_environment
    from horovod_llm.model import GPT
    from horovod_llm.schedule import learning_rate_at
    from horovod_llm.step import distributed_optimizer, train_step

    config = local_config(overrides)
    set_horovod_environment(config.train)
    hvd.init()
    rank, world_size = hvd.rank(), hvd.size()
    torch.set_num_threads(threads)
    tc = config.train
    windows = np.load(folder / "windows.npy")
    mine = windows[rank::world_size]  # (N / world_size, window_size + 1)
    matrix = np.load(folder / "word2vec.npy")
    torch.manual_seed(tc.seed)
    model = GPT(default_gpt_config(config, matrix.shape[0]))
    if init == "word2vec" and rank == 0:
        model.init_token_embedding(torch.from_numpy(matrix))
    optimizer = distributed_optimizer(model, tc, tc.learning_rate, hvd)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    torch.manual_seed(tc.seed + 1 + rank)
    model.train()
    rng = np.random.default_rng(tc.seed + rank)
    order, position = rng.permutation(len(mine)), 0
    step, losses, started = 0, [], time.perf_counter()
    control = torch.zeros(2, dtype=torch.float64)  # learning rate, stop flag: rank 0 decides
    while True:
        step += 1
        if rank == 0:
            elapsed = time.perf_counter() - started
            done = elapsed / budget if unit == "seconds" else (step - 1) / budget
            if step <= tc.warmup_steps:
                lr = learning_rate_at(step, max_lr=tc.learning_rate, min_lr=tc.min_lr, warmup_steps=tc.warmup_steps, total_steps=step + 1)
            else:  # cosine over the budget (the wall clock, or steps): done when it is
                lr = tc.min_lr + 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0))) * (tc.learning_rate - tc.min_lr)
            control = torch.tensor([lr, float(done >= 1.0)], dtype=torch.float64)
        control = hvd.broadcast(control, root_rank=0, name="control")
        if control[1] > 0:
            break
        for group in optimizer.param_groups:
            group["lr"] = float(control[0])
        if position + tc.batch_size > len(order):
            order, position = rng.permutation(len(mine)), 0
        batch = torch.from_numpy(mine[order[position : position + tc.batch_size]].astype(np.int64))
        position += tc.batch_size
        losses.append(train_step(model, optimizer, [batch], tc.grad_clip).loss)
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    scores = evaluate_ranks(model, folder, rank, world_size, hvd)
    if rank == 0:
        steps = step - 1
        tokens = steps * tc.batch_size * world_size * model.config.block_size
        meta = {"steps": steps, "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds, "train_loss_last_10": float(np.mean(losses[-10:]))}
        meta["epochs"] = steps * tc.batch_size * world_size / len(windows)
        out.write_text(json.dumps({**meta, **scores, "eval_seconds": time.perf_counter() - started}))


def evaluate_ranks(model, folder: Path, rank: int, world_size: int, hvd) -> dict:
    """`evaluate.evaluate_text`'s figures for the validation text, its windows shared
    by the ranks (`evaluate.score_ids` with rank and world_size)."""
    import torch

    from horovod_llm import tokenizer
    from horovod_llm.evaluate import Totals, count_words, score_ids, summarize

    val_text = (folder / "val.txt").read_text(encoding="utf-8")
    ids = [tokenizer.BOS_ID] + tokenizer.encode(tokenizer.load((folder / "tokenizer.model").read_bytes()), [val_text])[0]
    model.eval()
    with torch.no_grad():
        mine = score_ids(model, ids, max(1, model.config.block_size // 2), batch_size=16, rank=rank, world_size=world_size)
    sums = hvd.allreduce(torch.tensor([mine.nll, mine.correct, mine.tokens], dtype=torch.float64), op=hvd.Sum, name="eval_sums").tolist()
    totals = Totals(nll=sums[0], correct=int(sums[1]), tokens=int(sums[2]), characters=len(val_text), words=count_words(val_text))
    return summarize(totals)


def run_training(folder: Path, budget: float, unit: str, init: str, ranks: int, out: Path, overrides: list[str]) -> None:
    args = ["--unit", unit, "--rank", str(folder), str(budget), init, str(out), *overrides]
    if ranks == 1:
        command = [sys.executable, __file__, "--threads", str(len(os.sched_getaffinity(0))), *args]
    else:
        command = [sys.executable, "-m", "horovod.runner.launch", "-np", str(ranks), "-H", f"localhost:{ranks}", "--gloo", "--network-interface", "lo"]
        command += [sys.executable, __file__, "--threads", "1", *args]
    subprocess.run(command, cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[120.0], help="seconds of training per run (the issue asks for 120 and 600)")
    parser.add_argument(
        "--unit", choices=["seconds", "steps"], default="seconds", help="budgets in steps compare settings at equal work, whatever the load on the machine"
    )
    parser.add_argument("--text-file", help="a text file (or URL) instead of the embedded corpus")
    parser.add_argument("--ranks", type=int, default=2, help="Horovod ranks of 1 thread each; 1: one process on every core")
    parser.add_argument("--inits", default="word2vec,random", help="comma-separated: word2vec, random")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--rank", nargs=4, metavar=("FOLDER", "BUDGET", "INIT", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="section.key=value for configs/local.yaml")
    args = parser.parse_args()
    if args.rank:
        folder, budget, init, out = args.rank
        train_rank(Path(folder), float(budget), args.unit, init, args.threads, Path(out), args.overrides)
        return

    from horovod_llm.log import setup_logging

    setup_logging("WARNING")
    config = local_config(args.overrides)
    text = corpus_text(args.text_file, config.data.normalization)
    train_text, val_text = split_by_position(text)
    settings = json.dumps([config.data.window_size, config.data.overlap, str(config.tokenizer), str(config.embedding), config.model.n_embd])
    key = hashlib.sha256((settings + train_text).encode("utf-8")).hexdigest()[:16]
    folder = QUALITY_RUNS / key
    started = time.perf_counter()
    if not (folder / "info.json").exists():
        prepare(train_text, val_text, config, folder)
    prepare_s = time.perf_counter() - started
    info = json.loads((folder / "info.json").read_text())
    report(
        f"corpus {args.text_file or 'embedded Shakespeare'}: {len(train_text) / 1e6:.2f} M characters train, {len(val_text) / 1e6:.2f} M validation; "
        f"{info['train_tokens']} training tokens, {info['windows']} windows (prepared in {prepare_s:.0f} s)"
    )
    runs = []
    for budget in args.budgets:
        for init in args.inits.split(","):
            out = folder / f"result-{init}-{int(budget)}-{args.unit}.json"
            out.unlink(missing_ok=True)
            run_training(folder, budget, args.unit, init, args.ranks, out, args.overrides)
            scores = json.loads(out.read_text())
            runs.append({"budget": budget, "unit": args.unit, "init": init, **scores})
            report(
                f"{int(budget):4d} {args.unit}, {init:8s}: {scores['steps']} steps ({scores['tokens_per_s']:.0f} tok/s, {scores['epochs']:.2f} epochs), "
                f"validation {scores['nats_per_character']:.3f} nats/char = {scores['bits_per_character']:.3f} bits/char "
                f"({scores['nll_per_token']:.3f} nats/token)"
            )
    result = {"corpus": args.text_file or "embedded", "ranks": args.ranks, "train_characters": len(train_text), "val_characters": len(val_text), **info}
    result["runs"] = runs
    for budget in args.budgets:
        by_init = {r["init"]: r for r in runs if r["budget"] == budget}
        if {"word2vec", "random"} <= set(by_init):
            delta = by_init["random"]["nats_per_character"] - by_init["word2vec"]["nats_per_character"]
            result[f"word2vec_gain_nats_per_char_{int(budget)}_{args.unit}"] = delta
            report(f"{int(budget)} {args.unit}: Word2Vec initialisation lowers validation loss by {delta:+.3f} nats/char")
    write_result(args.json, result)


if __name__ == "__main__":
    main()

"""The server's continuous batching: total tokens/s with 16 concurrent clients, batched
against the same server decoding one request at a time.

    .venv/bin/python bench/serve_batching.py [--size demo|large] [--clients 16] [--requests 8]
        [--max-tokens 64] [--repeats 3] [--threads 1] [--json PATH]

Two `horovod-llm serve` processes on one checkpoint: `--max-batch 16` and
`--max-batch 1` (the one-at-a-time baseline: the same code, each request decoded alone
while the others wait). Both get the same workload: --clients threads, each sending
--requests POST /v1/completions one after another (non-streaming; prompts of a few
words, max_tokens --max-tokens, temperature 0.8, top_p 0.95, a seed per request).
Total tokens/s is the completion tokens of all requests (from `usage`) over the wall
time from the first request to the last answer. The two servers take turns, --repeats
times (medians), so that a burst of load from elsewhere slows both alike; the idle one
waits on a condition and takes no CPU. Every request's text is the same from both
(batching.py's guarantee), which the script checks: the work is the same.

The model (--size demo) is the demo's, trained by bench/end_to_end.py
(runs/bench/end-to-end): what it learned matters here, since top_p sampling looks at
few ids when the model is sure and at most of the vocabulary when it is not. Without
that run, and for --size large (the older default: 4 layers, n_embd 256, context 128),
the model has random weights of those dimensions and the bench dataset's tokenizer
(bench/prepare.py); the JSON says which. The issue's target is a ratio of at least 4
on 2 cores.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import BENCH_RUNS, DATASET_URL, REPO_ROOT, load_average, local_config, report, write_result

OUTPUT = BENCH_RUNS / "serve-batching"
SIZES = {"demo": {"n_layer": 2, "n_head": 4, "n_embd": 128, "block_size": 64}, "large": {"n_layer": 4, "n_head": 4, "n_embd": 256, "block_size": 128}}
PROMPTS = ["ROMEO:\n", "JULIET:\n", "KING HENRY:\n", "HAMLET:\n", "First Citizen:\n", "MACBETH:\n", "Enter", "O, what a", "My lord,", "LEAR:\n"]


TRAINED = BENCH_RUNS / "end-to-end"


def trained_checkpoint() -> tuple[str, dict] | None:
    """The demo's trained checkpoint (bench/end_to_end.py), if there is one; its model args."""
    from horovod_llm.checkpoint import load_checkpoint

    if not (TRAINED / "checkpoints").exists():
        return None
    loaded = load_checkpoint(str(TRAINED))
    c = loaded.model.config
    dims = {"n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd, "block_size": c.block_size, "vocab_size": c.vocab_size}
    return loaded.url, {"parameters": loaded.model.num_parameters(), **dims, "weights": f"the demo's trained weights (step {loaded.step})"}


def build_checkpoint(size: str) -> tuple[str, dict]:
    """A checkpoint of random weights under runs/bench/serve-batching/SIZE; its model args."""
    import torch

    from horovod_llm import checkpoint
    from horovod_llm.data import tokenizer
    from horovod_llm.model import GPT, GPTConfig

    tokenizer_path = Path(DATASET_URL) / "tokenizer" / "tokenizer.model"
    if not tokenizer_path.exists():
        raise SystemExit(f"no tokenizer at {tokenizer_path}: run bench/prepare.py first")
    tokenizer_bytes = tokenizer_path.read_bytes()
    vocab_size = tokenizer.load(tokenizer_bytes).get_piece_size()
    args = GPTConfig(vocab_size=vocab_size, pad_id=tokenizer.PAD_ID, **SIZES[size])
    torch.manual_seed(0)
    model = GPT(args).eval()
    out = OUTPUT / size
    shutil.rmtree(out, ignore_errors=True)
    url = checkpoint.save_checkpoint(str(out), 1, model, None, local_config(), tokenizer_bytes, {"metrics": {}})
    return url, {"parameters": model.num_parameters(), **SIZES[size], "vocab_size": vocab_size, "weights": "random weights"}


class Server:
    """`horovod-llm serve` in a subprocess, on a free port it reports itself."""

    def __init__(self, checkpoint_url: str, max_batch: int, threads: int, max_tokens: int):
        command = [sys.executable, "-m", "horovod_llm.cli", "serve", "--checkpoint", checkpoint_url, "--port", "0", "--max-batch", str(max_batch)]
        command += ["--threads", str(threads), "--max-new-tokens", str(max_tokens), "--max-pending", "1024"]
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines: queue.Queue = queue.Queue()
        self.log: list[str] = []

        def drain():  # keep reading: the access log must never fill the pipe
            for line in self.process.stderr:
                self.log.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=drain, daemon=True).start()
        self.port = None
        while self.port is None:
            line = lines.get(timeout=300)
            if line is None:
                raise SystemExit("the server exited before serving:\n" + "".join(self.log[-30:]))
            match = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
            self.port = int(match.group(1)) if match else None

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body), headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = json.loads(response.read())
            if response.status != 200:
                raise SystemExit(f"{path} answered {response.status}: {answer}")
            return answer
        finally:
            conn.close()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def workload(clients: int, requests: int, max_tokens: int) -> list[list[dict]]:
    """Each client's requests, in the order it sends them."""
    return [
        [
            {"prompt": PROMPTS[(c * requests + r) % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0.8, "top_p": 0.95, "seed": 1000 + c * requests + r}
            for r in range(requests)
        ]
        for c in range(clients)
    ]


def run_round(server: Server, plan: list[list[dict]]) -> dict:
    """Every client's requests, the clients side by side: tokens, seconds, texts, batch size."""
    before = server.request("GET", "/health")["decoding"]

    def client(requests: list[dict]) -> list[dict]:
        return [server.request("POST", "/v1/completions", body) for body in requests]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(plan)) as pool:
        answers = [a for answers in pool.map(client, plan) for a in answers]
    seconds = time.perf_counter() - started
    after = server.request("GET", "/health")["decoding"]
    tokens = sum(a["usage"]["completion_tokens"] for a in answers)
    return {
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_second": tokens / seconds,
        "mean_batch": (after["rows"] - before["rows"]) / max(1, after["steps"] - before["steps"]),
        "texts": [a["choices"][0]["text"] for a in answers],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="demo")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=8, help="requests per client, sent one after another")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="the servers' torch threads (serve's default: 1)")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    url, model = (args.size == "demo" and trained_checkpoint()) or build_checkpoint(args.size)
    plan = workload(args.clients, args.requests, args.max_tokens)
    modes = {"batched": args.clients, "one_at_a_time": 1}
    servers = {mode: Server(url, max_batch, args.threads, args.max_tokens) for mode, max_batch in modes.items()}
    load_before = load_average()
    rounds: dict[str, list[dict]] = {mode: [] for mode in modes}
    try:
        for server in servers.values():  # warm-up: first requests pay for lazy initialisation
            run_round(server, workload(2, 1, 8))
        for repeat in range(args.repeats):
            for mode, server in servers.items():
                rounds[mode].append(run_round(server, plan))
                r = rounds[mode][-1]
                report(
                    f"{mode:>14} run {repeat + 1}: {r['tokens']} tokens in {r['seconds']:.2f} s, {r['tokens_per_second']:.0f} tokens/s, mean batch {r['mean_batch']:.1f}"
                )
    finally:
        for server in servers.values():
            server.stop()
    same = all(a["texts"] == b["texts"] for mode in modes for a, b in zip(rounds[mode], rounds["batched"], strict=True))
    tps = {mode: statistics.median(r["tokens_per_second"] for r in rounds[mode]) for mode in modes}
    ratio = tps["batched"] / tps["one_at_a_time"]
    result = {
        "size": args.size,
        "model": model,
        "clients": args.clients,
        "requests_per_client": args.requests,
        "max_tokens": args.max_tokens,
        "repeats": args.repeats,
        "threads": args.threads,
        "max_batch": args.clients,
        "tokens_per_round": rounds["batched"][0]["tokens"],
        "tokens_per_second_batched": round(tps["batched"], 1),
        "tokens_per_second_one_at_a_time": round(tps["one_at_a_time"], 1),
        "mean_batch": round(statistics.median(r["mean_batch"] for r in rounds["batched"]), 2),
        "ratio": round(ratio, 2),
        "same_texts": same,
        "load_before": load_before,
        "load_after": load_average(),
    }
    report(
        f"model: {model['parameters'] / 1e6:.2f}M parameters ({args.size}, {model['weights']}), {args.clients} clients x {args.requests} requests x "
        f"{args.max_tokens} tokens, {args.threads} thread(s)\n"
        f"batched (max batch {args.clients}): {tps['batched']:8.0f} tokens/s (mean batch {result['mean_batch']:.1f})\n"
        f"one at a time (max batch 1):  {tps['one_at_a_time']:8.0f} tokens/s\n"
        f"ratio:                        {ratio:8.2f}x (target >= 4)\n"
        f"same texts in every run and mode: {same}; load average {load_before} -> {result['load_after']}"
    )
    write_result(args.json, result)


if __name__ == "__main__":
    main()

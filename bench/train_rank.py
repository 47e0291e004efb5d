"""One rank of the training-throughput benchmark, for `horovodrun` (or alone, as 1 rank):

    horovodrun -np 2 -H localhost:2 --gloo --network-interface lo \\
        .venv/bin/python bench/train_rank.py --out result.json [--threads 1] [key=value ...]

Times the real training step (`step.train_step` with `train.distributed_optimizer`) of
configs/local.yaml's model on this rank's batches, first from memory, then from the
bench dataset through the Petastorm loader (`dataset.window_batches`); then the
allreduce of the model's gradients alone, with no compute to hide behind. Rank 0
writes every rank's medians to --out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from common import DATASET_URL, default_gpt_config, local_config, median


def time_steps(model, optimizer, next_batch, steps: int, warmup: int, grad_clip: float) -> dict:
    """Seconds per step, waiting for the allreduce and CPU seconds, over `steps` timed steps."""
    import torch

    from horovod_llm.training.step import train_step

    seconds, sync, cpu = [], [], []
    for index in range(warmup + steps):
        started, cpu_started = time.perf_counter(), time.process_time()
        result = train_step(model, optimizer, [torch.from_numpy(next_batch())], grad_clip)
        if index >= warmup:
            seconds.append(time.perf_counter() - started)
            # CPU seconds of the whole process (compute, Horovod's thread, the loader):
            # unlike wall time, hardly affected by other processes taking turns on the cores.
            cpu.append(time.process_time() - cpu_started)
            sync.append(result.sync_seconds)
    return {"step_s": median(seconds), "sync_s": median(sync), "cpu_s": median(cpu), "step_s_all": seconds, "sync_s_all": sync, "cpu_s_all": cpu}


def time_allreduce(model, hvd, repeats: int) -> float:
    """Median seconds to allreduce every gradient the way DistributedOptimizer does (one
    asynchronous allreduce per parameter, fused by Horovod), with nothing else running."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    seconds = []
    for repeat in range(repeats + 1):
        hvd.barrier()
        started = time.perf_counter()
        handles = [hvd.allreduce_async_(g, name=f"bench.grad.{i}", op=hvd.Average) for i, g in enumerate(grads)]
        for handle in handles:
            hvd.synchronize(handle)
        if repeat:  # the first one negotiates the tensors' names
            seconds.append(time.perf_counter() - started)
    return median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=0, help="windows per rank per step (0: train.batch_size)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--data", default="memory,petastorm", help="comma-separated: memory, petastorm")
    parser.add_argument("--allreduce-repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (the warm-up steps absorb the compilation)")
    parser.add_argument("overrides", nargs="*", help="section.key=value for configs/local.yaml")
    args = parser.parse_args()

    import numpy as np
    import torch

    from horovod_llm.data import dataset
    from horovod_llm.data.manifest import read_manifest
    from horovod_llm.log import quiet_library_warnings
    from horovod_llm.model import GPT
    from horovod_llm.training.comm import HorovodCollectives
    from horovod_llm.training.metrics import calibrated_peak_flops
    from horovod_llm.training.step import distributed_optimizer

    quiet_library_warnings()
    config = local_config(args.overrides)
    comm = HorovodCollectives(config.train)  # the product's Horovod settings (--env wins)
    hvd = comm.hvd
    rank, world_size = hvd.rank(), hvd.size()
    torch.set_num_threads(args.threads)
    tc = config.train
    batch_size = args.batch_size or tc.batch_size
    manifest = read_manifest(DATASET_URL)
    torch.manual_seed(tc.seed)
    model = GPT(default_gpt_config(config, manifest.tokenizer.vocab_size))
    optimizer = distributed_optimizer(model, tc, tc.learning_rate, comm)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    torch.manual_seed(tc.seed + 1 + rank)
    model.train()
    step_model = torch.compile(model) if args.compile else model

    result: dict = {"ranks": world_size, "threads": args.threads, "batch_size": batch_size, "block_size": model.config.block_size, "compiled": args.compile}
    result["flops_per_token"] = model.flops_per_token()
    result["parameters"] = model.num_parameters()
    # The denominator of MFU, as training takes it: every rank's best fp32 matmul reading
    # of this machine type and layout (metrics.calibrated_peak_flops), summed over ranks.
    peak, source = calibrated_peak_flops(args.threads, hvd.local_size())
    result["peak_flops"] = float(sum(hvd.allgather_object(peak, name="peak")))
    result["peak_source"] = hvd.allgather_object(source, name="peak_source")
    kinds = [k for k in args.data.split(",") if k]
    for kind in kinds:
        if kind == "memory":
            rng = np.random.default_rng(rank)
            window = model.config.block_size + 1
            fixed = itertools.cycle([rng.integers(4, model.config.vocab_size, (batch_size, window)).astype(np.int64) for _ in range(4)])
            result["memory"] = time_steps(step_model, optimizer, fixed.__next__, args.steps, args.warmup, tc.grad_clip)
        elif kind == "petastorm":
            with dataset.window_batches(DATASET_URL, "train", rank, world_size, batch_size, num_epochs=None, seed=tc.seed, shuffle=True) as batches:
                result["petastorm"] = time_steps(step_model, optimizer, lambda: next(batches), args.steps, args.warmup, tc.grad_clip)
        else:
            raise SystemExit(f"--data: unknown kind {kind!r}")
        tokens_per_step = world_size * batch_size * model.config.block_size
        result[kind]["model_flops_per_s"] = result["flops_per_token"] * tokens_per_step / result[kind]["step_s"]
        result[kind]["mfu"] = result[kind]["model_flops_per_s"] / result["peak_flops"]
    result["allreduce_s"] = time_allreduce(model, hvd, args.allreduce_repeats) if world_size > 1 else 0.0
    result["gradient_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    # The slowest rank sets the pace of a synchronous step.
    per_rank = hvd.allgather_object({k: {"step_s": result[k]["step_s"], "cpu_s": result[k]["cpu_s"]} for k in kinds}, name="per_rank")
    result["step_s_per_rank"] = per_rank
    if rank == 0:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

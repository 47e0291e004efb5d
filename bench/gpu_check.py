"""One-shot check of the model on one CUDA GPU: NCCL, bf16 training speed and MFU, the
loss falling, and a GPU-to-CPU checkpoint round trip. Exit status 1 if a check fails.

    python bench/gpu_check.py --out OUT.json [--quick] [--peak-tflops 790] [--no-compile]
    python bench/gpu_check.py --device cpu --quick --out OUT.json   # dry run: gloo, tiny

Needs torch only (horovod_llm.model imports nothing else). The data is a seeded Markov
chain (each id followed by one of 4 fixed ids): learnable, unlike noise, so the loss must
fall from ln(vocab) towards ln 4. Each step averages the gradients with one all_reduce
(world size 1), inside the timed steps, so the collective path really runs. TF32 is off:
bf16 arms multiply in bf16 under autocast; the fp32 arm and checkpoint logits in true fp32.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import logging
import os
import platform
import signal
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from horovod_llm.model import GPT, GPTConfig  # noqa: E402  (torch only)

log = logging.getLogger("gpu_check")

RECIPE = dict(n_layer=2, n_head=4, n_embd=128, block_size=64, vocab_size=2048)  # the small default recipe
GPT2_SMALL = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304)
CPU_STANDIN = dict(n_layer=2, n_head=4, n_embd=256, block_size=128, vocab_size=50304)  # GPT-2's vocabulary, a tiny body
SUCCESSORS = 4  # ids that may follow each id of the chain: its entropy is ln 4 = 1.39 nats per id
POOL = 4  # distinct training batches, cycled
# (warm-up, timed) steps per arm: a full run takes about 2 minutes on an H200, most of it compiling.
PLANS = {"cpu": {"recipe": (2, 10), "fp32": (1, 4), "big": (2, 8)}, "quick": {"recipe": (5, 40), "fp32": (3, 20), "big": (3, 15)},
         "full": {"recipe": (10, 150), "fp32": (5, 50), "big": (5, 40)}}  # fmt: skip


def markov_rows(vocab_size: int, rows: int, length: int, chain_seed: int, seed: int) -> torch.Tensor:
    """(rows, length) ids of a seeded chain over at most 512 ids (never the pad id 0, whose
    targets carry no loss); the same chain_seed gives the same chain, seed other rows."""
    g = torch.Generator().manual_seed(chain_seed)
    states = min(512, vocab_size - 1)
    ids = torch.randperm(vocab_size - 1, generator=g)[:states] + 1
    successors = torch.randint(states, (states, SUCCESSORS), generator=g)
    g.manual_seed(seed)
    state, choice = torch.randint(states, (rows,), generator=g), torch.randint(SUCCESSORS, (rows, length), generator=g)
    out = torch.empty(rows, length, dtype=torch.long)
    for t in range(length):
        out[:, t] = state
        state = successors[state, choice[:, t]]
    return ids[out]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def init_distributed(device: torch.device) -> dict:
    """World size 1 on a free local port; NCCL on CUDA, gloo on the CPU."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")  # one rank: bootstrap over loopback, whatever else is up
    backend, cuda = ("nccl", True) if device.type == "cuda" else ("gloo", False)
    timeout = datetime.timedelta(seconds=120)  # a hang becomes an error, not the whole budget
    dist.init_process_group(backend, rank=0, world_size=1, timeout=timeout, **({"device_id": device} if cuda else {}))
    probe = torch.full((1 << 20,), 2.0, device=device)
    dist.all_reduce(probe)
    return {"backend": backend, "world_size": dist.get_world_size(), "port": port, "allreduce_ok": bool((probe == 2.0).all())}


def environment(device: torch.device) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device)}
    env["date"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    env["host_cpus"] = os.cpu_count()
    env["tf32_matmul"], env["tf32_cudnn"] = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if device.type == "cuda":
        nccl = torch.cuda.nccl.version()
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=torch.cuda.get_device_name(device), capability=list(torch.cuda.get_device_capability(device)))
        env.update(nccl=".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl), bf16=torch.cuda.is_bf16_supported())
        env.update(memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count)
    return env


def adamw(model: GPT, lr: float) -> tuple[torch.optim.Optimizer, bool]:
    """The project's AdamW (betas 0.9, 0.95; decay 0.1 on matrices), fused where torch has it."""
    groups = model.param_groups(0.1)
    with contextlib.suppress(RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=True), True
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95)), False


def train_step(model, optimizer, params: list, rows: torch.Tensor, autocast) -> torch.Tensor:
    with autocast():
        _, loss = model(rows[:, :-1], rows[:, 1:])
    loss.backward()
    # One flat all_reduce (as Horovod fuses tensors), averaged over the world.
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(dist.get_world_size())
    for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        g.copy_(part.view_as(g))
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


@torch.no_grad()
def eval_loss(model: GPT, rows: torch.Tensor, autocast) -> float:
    model.eval()
    with autocast():
        loss = model(rows[:, :-1], rows[:, 1:])[1]
    model.train()
    return float(loss)


def run_arm(shape: dict, batch: int, steps: tuple[int, int], lr: float, bf16: bool, device: torch.device, peak: float | None, compile_model: bool = False):
    """Train a fresh model on the chain: warm-up steps, then timed steps. (model, result)."""
    warmup, timed = steps
    cfg = GPTConfig(**shape)
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    step_model = torch.compile(model) if compile_model else model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, fused = adamw(model, lr)
    pool = markov_rows(cfg.vocab_size, POOL * batch, cfg.block_size + 1, 0, 1).to(device)
    held_out = markov_rows(cfg.vocab_size, min(batch, 8), cfg.block_size + 1, 0, 2).to(device)  # same chain, other rows

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step(i: int) -> torch.Tensor:
        return train_step(step_model, optimizer, params, pool[(i % POOL) * batch : (i % POOL + 1) * batch], autocast)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loss_start = eval_loss(model, held_out, autocast)
    result = {"shape": shape, "params": model.num_parameters(), "batch": batch, "tokens_per_step": batch * cfg.block_size}
    result.update(dtype="bf16-autocast, fp32 master weights" if bf16 else "fp32 (TF32 off)", fused_adamw=fused, lr=lr, compiled=compile_model)
    start = time.perf_counter()
    for i in range(warmup):
        step(i)
        sync(device)
        if i == 0:  # in the compiled arm, the first step compiles forward and backward
            result["compile_s" if compile_model else "first_step_s"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    for i in range(timed):
        last = step(warmup + i)
    sync(device)
    seconds = time.perf_counter() - start
    tokens_per_s = batch * cfg.block_size * timed / seconds
    flops_per_token = model.flops_per_token()
    result.update(warmup_steps=warmup, steps_timed=timed, seconds=round(seconds, 3), tokens_per_s=round(tokens_per_s))
    result.update(step_ms=round(1000 * seconds / timed, 2), flops_per_token=flops_per_token, model_tflops=round(flops_per_token * tokens_per_s / 1e12, 2))
    result.update(mfu=round(flops_per_token * tokens_per_s / peak, 4) if peak else None, loss_last_train_step=round(float(last), 4))
    result.update(loss_start=round(loss_start, 4), loss_end=round(eval_loss(model, held_out, autocast), 4))
    result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None
    return model, result


@torch.no_grad()
def checkpoint_roundtrip(model: GPT, device: torch.device, tolerance: float) -> dict:
    """Save the state_dict as the project keeps it (fp32), load it on the CPU into a fresh
    GPT, and compare logits with the device model's fp32 logits (the math attention kernel
    on CUDA, so that the difference is about the checkpoint, not fused kernels)."""
    cfg = model.config
    idx = torch.randint(1, cfg.vocab_size, (2, min(128, cfg.block_size)), generator=torch.Generator().manual_seed(3))
    model.eval()
    with sdpa_kernel(SDPBackend.MATH) if device.type == "cuda" else contextlib.nullcontext():
        reference = model(idx.to(device))[0].float().cpu()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        torch.save(model.state_dict(), path)
        size_mb = path.stat().st_size / 1e6
        state = torch.load(path, map_location="cpu", weights_only=True)
    cpu_model = GPT(cfg)
    cpu_model.load_state_dict(state)
    cpu_model.eval()
    diff = float((cpu_model(idx)[0] - reference).abs().max())
    dtypes = sorted({str(v.dtype) for v in state.values()})
    passed = diff < tolerance and dtypes == ["torch.float32"]
    return {"file_mb": round(size_mb, 1), "dtypes": dtypes, "input": list(idx.shape), "max_abs_logit": round(float(reference.abs().max()), 3),
            "max_abs_diff": diff, "tolerance": tolerance, "passed": passed}  # fmt: skip


@contextlib.contextmanager
def time_limit(seconds: int):
    """Raise TimeoutError in the main thread after `seconds` (a compile that hangs)."""

    def expire(signum, frame):
        raise TimeoutError(f"over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class Check:
    """The report: sections, arms and failed checks, rewritten to --out after each section
    so that a run killed later keeps what it had."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        self.args, self.device, self.began = args, device, time.perf_counter()
        self.peak = args.peak_tflops * 1e12 if device.type == "cuda" else None  # none for the dry run
        self.failed: list[str] = []
        mfu = f"model FLOP/s (6N + 12 L H Q T) / {args.peak_tflops} TFLOP/s, the bf16 dense peak (fp32 arm too)" if self.peak else None
        self.report: dict = {"passed": None, "failed": self.failed, "settings": {"quick": args.quick, "min_loss_drop": args.min_loss_drop, "mfu": mfu}}
        self.arms: dict = {}

    def save(self, section: str, value) -> None:
        log.info("%s %s", section, value)
        self.report.update(arms=self.arms, total_s=round(time.perf_counter() - self.began, 1))
        self.args.out.parent.mkdir(parents=True, exist_ok=True)
        self.args.out.write_text(json.dumps(self.report, indent=2) + "\n")

    def section(self, name: str, fn, required: bool = True):
        """Run fn and record its value, or its error: a required section's error fails the
        check, not the run."""
        try:
            value, error = fn(), None
        except Exception as exc:  # noqa: BLE001 - recorded, and the run goes on
            log.error("%s failed:\n%s", name, traceback.format_exc())
            value, error = None, f"{name}: {type(exc).__name__}: {exc}"
            if required:
                self.failed.append(error)
        return value, error

    def arm(self, name: str, *run_args, required: bool = True, **kwargs) -> GPT | None:
        """A training arm (run_arm); a required one must also bring the held-out loss down."""
        outcome, error = self.section(name, lambda: run_arm(*run_args, self.device, self.peak, **kwargs), required)
        if error:
            self.arms[name] = {"error": error}
            self.save(name, error)
            return None
        model, result = outcome
        result["loss_fell"] = result["loss_end"] < result["loss_start"] - self.args.min_loss_drop
        if required and not result["loss_fell"]:
            self.failed.append(f"{name}: held-out loss {result['loss_start']} -> {result['loss_end']}, not {self.args.min_loss_drop} nats lower")
        self.arms[name] = result
        self.save(name, result)
        return model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="fewer steps, no compiled arm")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="bf16 dense peak for MFU (measured on this H200)")
    parser.add_argument("--gpt2-batch", type=int, default=32, help="sequences of 1024 per gpt2-small step")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile arm")
    parser.add_argument("--compile-timeout", type=int, default=120, help="seconds the compiled arm may take")
    parser.add_argument("--min-loss-drop", type=float, default=0.5, help="nats the held-out loss must fall by")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="max abs logit difference, GPU vs CPU checkpoint")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cpu = args.device == "cpu"
    device = torch.device("cpu") if cpu else torch.device("cuda", 0)
    if cpu:
        torch.set_num_threads(1)  # a dry run on a shared machine
    else:
        torch.cuda.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32; bf16 autocast does not use TF32
    torch.backends.cudnn.allow_tf32 = False
    check = Check(args, device)
    report = check.report
    report["settings"]["plan_warmup_timed"] = plan = PLANS["cpu" if cpu else "quick" if args.quick else "full"]
    big_name, big_shape, big_batch = ("gpt2-vocab-standin", CPU_STANDIN, 2) if cpu else ("gpt2-small", GPT2_SMALL, args.gpt2_batch)
    report["environment"] = environment(device)
    report["machine"] = {"date": report["environment"]["date"], "gpu": report["environment"].get("gpu", "none (CPU dry run)")}
    check.save("environment", report["environment"])
    report["distributed"], error = check.section("distributed", lambda: init_distributed(device))
    check.save("distributed", report["distributed"] or error)
    if error is None:
        if not report["distributed"]["allreduce_ok"]:
            check.failed.append("distributed: all_reduce gave a wrong sum")
        check.arm("recipe-bf16", RECIPE, 16, plan["recipe"], 4e-3, True)  # the recipe's learning rate
        check.arm("recipe-fp32", RECIPE, 16, plan["fp32"], 4e-3, False)
        model = check.arm(f"{big_name}-bf16", big_shape, big_batch, plan["big"], 6e-4, True)  # GPT-2's
        if model is not None:
            report["checkpoint"], _ = check.section("checkpoint", lambda: checkpoint_roundtrip(model, device, args.tolerance))
            check.save("checkpoint", report["checkpoint"])
            if report["checkpoint"] and not report["checkpoint"]["passed"]:
                check.failed.append(f"checkpoint: logits differ by {report['checkpoint']['max_abs_diff']} or dtypes {report['checkpoint']['dtypes']}")
        del model  # free the GPU for the compiled arm
        gc.collect()
        if not cpu:
            torch.cuda.empty_cache()
        # Optional: a compile failure or timeout is recorded, never a failed check.
        name, limit = f"{big_name}-compiled-bf16", min(args.compile_timeout, int(270 - (time.perf_counter() - check.began)))
        if cpu or args.quick or args.no_compile or limit < 30:
            check.arms[name] = {"skipped": "cpu, --quick, --no-compile or under 30 s left of the time budget"}
        else:
            check.arms[name] = {"error": f"{name}: over its {limit} s limit"}  # unless arm() finishes
            with contextlib.suppress(TimeoutError), time_limit(limit):  # a timeout outside run_arm too
                check.arm(name, big_shape, big_batch, plan["big"], 6e-4, True, required=False, compile_model=True)
        dist.destroy_process_group()
    else:
        check.failed.append("distributed: no process group, so no training arms")
    report["passed"] = not check.failed
    check.save("done", f"{'PASSED' if not check.failed else 'FAILED'}, {len(check.failed)} failed checks: {args.out}")
    print(json.dumps(report, indent=2))
    return 0 if not check.failed else 1


if __name__ == "__main__":
    sys.exit(main())

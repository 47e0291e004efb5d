"""train.precision (training/precision.py): bf16 and fp16 training against fp32's from
the same seed, through the real step and optimizer wrapper; what `auto` decides and keeps."""

import json
import math
from pathlib import Path

import pytest
import torch

from horovod_llm.config import TrainConfig
from horovod_llm.data.corpus import embedded_corpus
from horovod_llm.model import GPT, GPTConfig
from horovod_llm.training import calibration as calibration_module
from horovod_llm.training.calibration import calibrate
from horovod_llm.training.comm import TorchCollectives
from horovod_llm.training.precision import MIN_SPEEDUP, Calibration, Precision, choose
from horovod_llm.training.step import distributed_optimizer, train_step

# Steps per precision: fp16 on a CPU is emulated and 5x slower (20 s for 300 steps), so it
# is held to a shorter stretch of the same curve.
STEPS = {"fp32": 300, "bf16": 300, "fp16": 50}
# Mean training loss over the last 50 steps: how far bf16 and fp16 may end from fp32 at
# the same step. Measured on an AMD EPYC (avx512_bf16, no AMX), same seed and batches,
# over 300 steps: bf16 0.027 nats from fp32, fp16 0.006. The bounds leave about twice
# that for other CPUs' kernels.
END_TOLERANCE = 0.06
# Any 25-step stretch of the curve on the way down (the loss falls from 4.8 to 2.4):
# measured at most 0.072 (bf16) and 0.030 (fp16).
CURVE_TOLERANCE = 0.15


@pytest.fixture(scope="module")
def text_ids() -> torch.Tensor:
    """Characters of one embedded play as ids below 128: real text, so the loss falls."""
    text = Path(embedded_corpus()[0].url).read_text(errors="replace")[:200_000]
    return torch.tensor([min(ord(c), 127) for c in text], dtype=torch.long)


@pytest.fixture(scope="module")
def comm():
    collectives = TorchCollectives(TrainConfig())  # one rank in this process
    yield collectives
    collectives.close()


def train_curve(ids: torch.Tensor, comm, name: str) -> tuple[list[float], list[float], GPT]:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = GPT(GPTConfig(vocab_size=128, block_size=32, n_layer=2, n_head=2, n_embd=64, dropout=0.0))
    optimizer = distributed_optimizer(model, TrainConfig(), 3e-3, comm)
    chosen = Precision(name)
    scaler = chosen.grad_scaler()
    generator = torch.Generator().manual_seed(1)  # the same batches for every precision
    losses, norms = [], []
    for _ in range(STEPS[name]):
        starts = torch.randint(0, len(ids) - 33, (16,), generator=generator)
        batch = torch.stack([ids[s : s + 33] for s in starts.tolist()])
        result = train_step(model, optimizer, [batch], 1.0, chosen, scaler)
        losses.append(result.loss)
        norms.append(result.grad_norm)
    return losses, norms, model


@pytest.fixture(scope="module")
def curves(text_ids, comm):
    return {name: train_curve(text_ids, comm, name) for name in ("fp32", "bf16", "fp16")}


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_a_low_precision_loss_curve_follows_fp32s_from_the_same_seed(curves, name):
    reference, reference_norms, _ = curves["fp32"]
    losses, norms, _ = curves[name]
    reference = reference[: len(losses)]
    assert losses != reference  # the arithmetic really was another precision
    assert reference[-1] < reference[0] - 1.0  # it learned: the comparison means something
    assert all(math.isfinite(x) for x in losses)

    def mean(values):
        return sum(values) / len(values)

    assert abs(mean(losses[-50:]) - mean(reference[-50:])) <= END_TOLERANCE
    for start in range(0, len(losses), 25):
        assert abs(mean(losses[start : start + 25]) - mean(reference[start : start + 25])) <= CURVE_TOLERANCE, start
    # The logged gradient norm is the true one: fp16's loss scale is divided out before
    # clipping (AdamW would hide a missing unscale from the loss; the norm shows it).
    ratios = sorted(n / r for n, r in zip(norms, reference_norms[: len(norms)], strict=True) if math.isfinite(n))
    assert 0.8 < ratios[len(ratios) // 2] < 1.25


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_weights_and_optimizer_state_stay_fp32(curves, name):
    *_, model = curves[name]
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {t.dtype for t in model.state_dict().values()} == {torch.float32}


def test_auto_picks_bf16_only_when_measurably_faster():
    assert choose("auto", MIN_SPEEDUP) == "bf16"
    assert choose("auto", MIN_SPEEDUP - 0.01) == "fp32"
    assert choose("auto", None) == "fp32"
    assert choose("fp16", 0.5) == choose("fp16", 3.0) == "fp16"  # a setting is kept as it is
    assert Calibration(0.3, 0.2, "measured").bf16_speedup == pytest.approx(1.5)


def test_calibration_keeps_the_best_readings_per_model_shape(tmp_path, monkeypatch):
    cache = tmp_path / "precision.json"
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32))
    readings = iter([(0.30, 0.20), (0.40, 0.10), (0.50, 0.50)])
    monkeypatch.setattr(calibration_module, "measure", lambda *a, **k: next(readings))
    cpu = torch.device("cpu")
    assert calibrate(model, 8, cpu, 1, 2, cache) == Calibration(0.30, 0.20, "measured")
    # each precision keeps its own best: a busy moment can slow a reading, never speed it up
    assert calibrate(model, 8, cpu, 1, 2, cache) == Calibration(0.30, 0.10, "measured")
    assert calibrate(model, 8, cpu, 1, 2, cache) == Calibration(0.30, 0.10, "calibrated")
    (key,) = json.loads(cache.read_text())
    assert "1x32" in key and "batch 8" in key and "1 thread(s) x 2 rank(s)" in key
    # READINGS_TO_TRUST readings later, a rank start measures no more (readings is spent)
    assert json.loads(cache.read_text())[key]["readings"] == calibration_module.READINGS_TO_TRUST
    assert calibrate(model, 8, cpu, 1, 2, cache) == Calibration(0.30, 0.10, "calibrated")


def test_a_real_calibration_leaves_the_model_and_the_rng_as_they_were():
    torch.manual_seed(3)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32, dropout=0.1))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    fp32_s, bf16_s = calibration_module.measure(model, 4, torch.device("cpu"), seconds=0.1)
    assert fp32_s > 0 and bf16_s > 0
    assert torch.equal(torch.get_rng_state(), rng)  # dropout and the data order go on as if never measured
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())

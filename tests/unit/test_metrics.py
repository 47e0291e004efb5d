"""The measurements taken during training: the fp32 peak MFU is measured against."""

import json

import torch


def test_the_mfu_peak_is_the_best_reading_of_the_machine_type(tmp_path, monkeypatch):
    # issue 12: a peak measured on a busy machine fell, and MFU rose with it
    from horovod_llm.training import metrics

    cache = tmp_path / "peak-flops.json"
    readings = iter([5e10, 2e10, 8e10])
    monkeypatch.setattr(metrics, "measure_matmul_flops", lambda **_: next(readings))
    assert metrics.calibrated_peak_flops(1, 2, cache) == (5e10, "measured")
    assert metrics.calibrated_peak_flops(1, 2, cache) == (5e10, "calibrated")  # a slower reading changes nothing
    assert metrics.calibrated_peak_flops(1, 2, cache) == (8e10, "measured")
    assert json.loads(cache.read_text()) == {metrics.peak_key(1, 2): {"flops": 8e10, "readings": 3}}
    cache.write_text("not json")
    monkeypatch.setattr(metrics, "measure_matmul_flops", lambda **_: 1e10)
    assert metrics.calibrated_peak_flops(2, 1, cache) == (1e10, "measured")  # a damaged cache is replaced
    # each precision has its own peak: a bf16 reading does not lift fp32's denominator
    monkeypatch.setattr(metrics, "measure_matmul_flops", lambda dtype, **_: 9e10 if str(dtype) == "torch.bfloat16" else 1e9)
    assert metrics.calibrated_peak_flops(2, 1, cache, precision="bf16") == (9e10, "measured")
    assert metrics.calibrated_peak_flops(2, 1, cache) == (1e10, "calibrated")
    assert metrics.peak_key(2, 1, "bf16") != metrics.peak_key(2, 1)


def test_a_trusted_peak_is_not_read_again(tmp_path, monkeypatch):
    # issue 28: every rank start spent a second reading the matmul peak of both precisions
    from horovod_llm.training import metrics

    cache = tmp_path / "peak-flops.json"
    key = metrics.peak_key(1, 2)
    cache.write_text(json.dumps({key: 4e10}))  # an older version's entry: one reading
    readings = []
    monkeypatch.setattr(metrics, "measure_matmul_flops", lambda **_: readings.append(1) or 3e10)
    for _ in range(metrics.READINGS_TO_TRUST + 2):
        assert metrics.calibrated_peak_flops(1, 2, cache) == (4e10, "calibrated")
    assert len(readings) == metrics.READINGS_TO_TRUST - 1  # then the cached best, unread
    assert json.loads(cache.read_text())[key] == {"flops": 4e10, "readings": metrics.READINGS_TO_TRUST}
    assert metrics.cached_peak_flops(key, cache) == 4e10 and metrics.cached_peak_flops("another machine", cache) == 0.0


def test_a_matmul_reading_is_a_plausible_flop_rate():
    from horovod_llm.training.metrics import measure_matmul_flops

    assert 1e8 < measure_matmul_flops(size=128, seconds=0.5, readings=10) < 1e14
    # bf16 matmuls run on any CPU (natively with avx512_bf16 or AMX, else converted)
    assert 1e7 < measure_matmul_flops(size=128, seconds=0.2, readings=4, dtype=torch.bfloat16) < 1e15

"""The measurements taken during training: the fp32 peak MFU is measured against."""

import json


def test_the_mfu_peak_is_the_best_reading_of_the_machine_type(tmp_path, monkeypatch):
    # issue 12: a peak measured on a busy machine fell, and MFU rose with it
    from horovod_llm.training import metrics

    cache = tmp_path / "peak-flops.json"
    readings = iter([5e10, 2e10, 8e10])
    monkeypatch.setattr(metrics, "measure_matmul_flops", lambda: next(readings))
    assert metrics.calibrated_peak_flops(1, 2, cache) == (5e10, "measured")
    assert metrics.calibrated_peak_flops(1, 2, cache) == (5e10, "calibrated")  # a slower reading changes nothing
    assert metrics.calibrated_peak_flops(1, 2, cache) == (8e10, "measured")
    assert json.loads(cache.read_text()) == {metrics.peak_key(1, 2): 8e10}
    cache.write_text("not json")
    monkeypatch.setattr(metrics, "measure_matmul_flops", lambda: 1e10)
    assert metrics.calibrated_peak_flops(2, 1, cache) == (1e10, "measured")  # a damaged cache is replaced


def test_a_matmul_reading_is_a_plausible_flop_rate():
    from horovod_llm.training.metrics import measure_matmul_flops

    assert 1e8 < measure_matmul_flops(size=128, seconds=0.5, readings=10) < 1e14

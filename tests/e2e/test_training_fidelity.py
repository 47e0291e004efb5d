"""Issue 4's guarantees with real Horovod ranks: gradient averaging, exact resumption,
statistics, curves, Horovod options."""

import dataclasses
import json
import math
import shutil

import pytest
import torch

from horovod_llm import checkpoint, layout, storage
from horovod_llm.checkpoint import load_checkpoint
from horovod_llm.errors import UserError
from horovod_llm.inference.evaluate import evaluate_split
from horovod_llm.launchers.launch import launch_training
from tests.e2e.test_train import with_output

pytestmark = pytest.mark.horovod


def one_step(config_values: dict, batch_path: str, out_path: str, backend: str = "horovod") -> dict:
    """A rank that takes one optimizer step on its slice of a fixed global batch; rank 0
    saves the parameters before and after it, with the step's gradient norm. `backend`:
    the collectives (comm.py), Horovod's or torch.distributed's.

    Defined at module level but shipped by value: horovod.spark.run and TorchDistributor
    pickle it with cloudpickle, and the ranks import only horovod_llm.
    """
    import os

    import torch

    from horovod_llm.config import from_dict
    from horovod_llm.model import GPT, GPTConfig
    from horovod_llm.training.comm import init_collectives
    from horovod_llm.training.step import distributed_optimizer, train_step

    config = from_dict(config_values)
    if backend == "torch":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # as the launcher sets it locally
    comm = init_collectives(backend, config.train)
    try:
        torch.set_num_threads(1)
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0))
        optimizer = distributed_optimizer(model, config.train, 1e-2, comm)
        comm.broadcast_model(model, optimizer)
        before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
        batch = torch.load(batch_path)
        share = batch.shape[0] // comm.size
        mine = batch[comm.rank * share : (comm.rank + 1) * share]
        micro = config.train.backward_passes_per_step
        result = train_step(model, optimizer, list(mine.chunk(micro)), grad_clip=1.0)
        if comm.rank == 0:
            torch.save({"before": before, "after": model.state_dict(), "grad_norm": result.grad_norm}, out_path)
        return {"size": comm.size, "grad_norm": result.grad_norm}
    finally:
        comm.close()


def two_ranks(backend: str, *args) -> list[dict]:
    """one_step on 2 ranks started as Spark tasks: by horovod.spark.run, or by TorchDistributor."""
    import cloudpickle
    from pyspark import cloudpickle as spark_cloudpickle  # TorchDistributor's own copy

    for pickler in (cloudpickle, spark_cloudpickle):
        pickler.register_pickle_by_value(__import__(__name__, fromlist=["one_step"]))
    if backend == "horovod":
        import horovod.spark

        return horovod.spark.run(one_step, args=(*args, backend), num_proc=2, use_gloo=True, nics={"lo"}, start_timeout=60)
    from pyspark.ml.torch.distributor import TorchDistributor

    rank_0 = TorchDistributor(num_processes=2, local_mode=False, use_gpu=False).run(one_step, *args, backend)
    return [rank_0]  # TorchDistributor returns rank 0's result


@pytest.mark.parametrize("backend", ["horovod", "torch"])
def test_one_step_on_two_ranks_equals_one_step_on_one_rank(tiny_dataset, spark, tmp_path, backend):
    config, _ = tiny_dataset
    batch_path, two, one, accumulated = (str(tmp_path / name) for name in ("batch.pt", "two.pt", "one.pt", "accumulated.pt"))
    torch.save(torch.randint(4, 50, (8, 17), generator=torch.Generator().manual_seed(1)), batch_path)  # no PAD
    values = dataclasses.asdict(config)
    ranks = two_ranks(backend, values, batch_path, two)
    assert all(r["size"] == 2 for r in ranks)
    assert one_step(values, batch_path, one, backend)["size"] == 1  # the same global batch on one rank, in-process
    accumulate = dataclasses.replace(config, train=dataclasses.replace(config.train, backward_passes_per_step=2))
    one_step(dataclasses.asdict(accumulate), batch_path, accumulated, backend)  # 2 micro-batches of 4
    reference, two_ranks_result, micro_batches = (torch.load(path) for path in (one, two, accumulated))
    # The step did something: every trained matrix moved (a no-op step fails here).
    for name, tensor in reference["after"].items():
        if tensor.dim() >= 2:
            assert not torch.allclose(tensor, reference["before"][name]), name
    assert reference["before"].keys() == two_ranks_result["before"].keys()
    for name in reference["before"]:
        assert torch.equal(two_ranks_result["before"][name], reference["before"][name]), name  # the same start
    # Adam's first step barely depends on the gradient's scale, so the parameters alone
    # could not tell a sum over ranks from an average: the gradient norm can. Every rank
    # sees the same averaged gradient.
    assert [r["grad_norm"] for r in ranks] == pytest.approx([reference["grad_norm"]] * len(ranks), rel=1e-5)
    assert two_ranks_result["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-5)
    assert micro_batches["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-5)
    for result in (two_ranks_result, micro_batches):
        for name, tensor in result["after"].items():
            assert torch.allclose(tensor, reference["after"][name], atol=1e-6, rtol=1e-5), name


def final_state(out):
    return checkpoint.load_checkpoint(out).model.state_dict()


def interrupted_at(out, step):
    """Make `out` look like a run that died right after its checkpoint at `step`."""
    for later, url in checkpoint.complete_checkpoints(out):
        if later > step:
            shutil.rmtree(url)


def test_resume_on_one_rank_is_exact(fresh_run, tiny_dataset):
    config, _ = tiny_dataset
    run = with_output(config, fresh_run, launcher="local", num_proc=1, max_steps=6, checkpoint_interval=3, keep_last=5)
    run = dataclasses.replace(run, model=dataclasses.replace(run.model, dropout=0.1))  # RNG state matters
    launch_training(run)
    uninterrupted = final_state(fresh_run)
    interrupted_at(fresh_run, 3)
    result = launch_training(run)
    assert result["summary"]["resumed_from_step"] == 3
    resumed = final_state(fresh_run)
    for name, tensor in uninterrupted.items():
        assert torch.equal(tensor, resumed[name]), name  # bit for bit


# Two ranks: the same data order and RNG states are replayed; what may differ is the
# order in which Gloo sums floating-point gradients. Documented tolerance: 1e-5.
TWO_RANK_TOLERANCE = 1e-5


def test_resume_on_two_ranks_within_tolerance(fresh_run, tiny_dataset, spark):
    config, _ = tiny_dataset
    run = with_output(config, fresh_run, launcher="spark", max_steps=6, checkpoint_interval=3, keep_last=5)
    launch_training(run, spark)
    uninterrupted = final_state(fresh_run)
    interrupted_at(fresh_run, 3)
    result = launch_training(run, spark)
    assert result["summary"]["resumed_from_step"] == 3  # it resumed: a run that ignored the checkpoint would retrain from 0
    resumed = final_state(fresh_run)
    for name, tensor in uninterrupted.items():
        assert torch.allclose(tensor, resumed[name], atol=TWO_RANK_TOLERANCE, rtol=0), name


def read_jsonl(out, name):
    return [json.loads(line) for line in storage.read_text(storage.join(layout.stats_url(out), name)).splitlines()]


def test_statistics_curves_and_horovod_options(fresh_run, tiny_dataset):
    """horovodrun with fp16 compression and gradient accumulation; every statistic present."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config, _ = tiny_dataset
    # peak_flops_per_rank=0: the ranks measure the matmul peak (tiny.yaml gives one);
    # precision=auto: they time fp32 and bf16 passes and agree on one (tiny.yaml: fp32)
    options = {"fp16_allreduce": True, "backward_passes_per_step": 2, "horovod_cycle_time_ms": 5.0, "peak_flops_per_rank": 0.0, "precision": "auto"}
    run = with_output(config, fresh_run, launcher="horovodrun", max_steps=8, eval_interval=4, eval_max_batches=0, **options)
    summary = launch_training(run)["summary"]
    expected = {
        "backend": "horovod",
        "compression": "fp16",
        "op": "average",
        "backward_passes_per_step": 2,
        "lr_scaled_by_ranks": False,
        "elastic": False,
        "cycle_time_ms": 5.0,
        "gradient_reduction": "horovod",  # fp16 on the wire: never through shared memory
    }
    assert summary["collectives"] == expected
    assert summary["launch"]["launcher"] == "horovodrun" and summary["ranks"] == 2
    assert summary["global_batch_windows"] == config.train.batch_size * 2 * 2
    assert summary["peak_flops"] > 1e9 and 0 < summary["mfu_mean"] < 1 and summary["peak_source"] in ("measured", "calibrated")
    chosen = summary["precision"]
    assert chosen["setting"] == "auto" and chosen["bf16_speedup"] > 0 and chosen["calibration"] in ("measured", "calibrated")
    assert chosen["denormals_flushed"] is True  # in the rank processes horovodrun started
    assert chosen["used"] == ("bf16" if chosen["bf16_speedup"] >= chosen["min_speedup"] else "fp32")
    # MFU against the peak of the precision used: the cached best reading of that precision
    from horovod_llm.training.metrics import cached_peak_flops, peak_key

    # (each rank's own reading or a better earlier one: the two ranks read at once)
    best = cached_peak_flops(peak_key(1, 2, chosen["used"]))
    assert 0.5 * 2 * best <= summary["peak_flops"] <= 2 * best * (1 + 1e-9)
    steps = read_jsonl(fresh_run, "steps.jsonl")
    for record in steps:
        assert 0 < record["mfu"] < 1 and 0 <= record["allreduce_share"] < 1
        assert record["step_time_s"] > 0 and record["tokens_per_s"] > 0 and math.isfinite(record["grad_norm"])
        assert 0 < record["load_share"] < 1 and record["load_share"] + record["allreduce_share"] < 1
    assert steps[-1]["loss"] < steps[0]["loss"]
    # where rank 0's loop time went: every phase measured, together within the loop's time
    from horovod_llm.training.loop import LOOP_PHASES

    spent = summary["loop_seconds"]
    assert set(spent) == {*LOOP_PHASES, "other", "total"}
    assert all(spent[phase] > 0 for phase in ("load", "compute", "allreduce_wait", "logging", "evaluation", "checkpoints", "epochs_and_commits"))
    assert sum(spent[phase] for phase in LOOP_PHASES) <= spent["total"] and spent["other"] >= 0
    assert spent["total"] <= summary["total_seconds"]
    evals = read_jsonl(fresh_run, "evals.jsonl")
    assert [e["step"] for e in evals] == [4, 8]
    assert all(math.isclose(e["val_perplexity"], math.exp(e["val_loss"]), rel_tol=1e-9) for e in evals)
    epochs = read_jsonl(fresh_run, "epochs.jsonl")
    assert epochs[-1]["val_loss"] == evals[-1]["val_loss"] and epochs[-1]["seconds"] > 0
    # One meaning of "validation loss": training's (2 ranks, each its shard, summed) is what
    # `horovod-llm evaluate --split val` prints for the same checkpoint (1 process, all of it).
    final = load_checkpoint(fresh_run)
    scored = evaluate_split(final.model, final.tokenizer_bytes, fresh_run, "val")
    assert final.step == evals[-1]["step"] and scored["tokens"] == evals[-1]["val_tokens"]
    assert math.isclose(scored["nll_per_token"], evals[-1]["val_loss"], rel_tol=1e-6)
    assert math.isclose(scored["nats_per_character"], evals[-1]["val_nats_per_character"], rel_tol=1e-6)

    stats = layout.stats_url(fresh_run)
    png = storage.read_bytes(storage.join(stats, "training.png"))
    assert png.startswith(b"\x89PNG")
    accumulator = EventAccumulator(storage.join(stats, "tensorboard"))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_s", "val/loss"} <= tags
    assert [e.step for e in accumulator.Scalars("val/loss")] == [4, 8]


def test_adasum_is_refused_on_a_gloo_only_build(fresh_run, tiny_dataset):
    config, _ = tiny_dataset
    with pytest.raises(UserError, match="adasum needs Horovod built with MPI"):
        launch_training(with_output(config, fresh_run, launcher="local", num_proc=1, allreduce_op="adasum"))


def test_validation_from_kept_batches_scores_as_a_fresh_read(tiny_dataset):
    """The loop reads its validation batches and counts their text once per entry
    (step.validation_shard) and scores them at every evaluation: the same figures as
    reading and counting the split again, at the first evaluation and at later ones."""
    from horovod_llm.data.manifest import read_manifest
    from horovod_llm.model import GPT, GPTConfig
    from horovod_llm.training.step import validate, validation_shard

    config, _ = tiny_dataset
    out = config.output_url
    manifest = read_manifest(out)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=manifest.tokenizer.vocab_size, block_size=manifest.window_size, n_layer=1, n_head=2, n_embd=16, dropout=0.0))
    tokenizer_bytes = storage.read_bytes(layout.tokenizer_url(out))

    overlap = manifest.overlap_of("val")

    def score(shard):
        return validate(model, tokenizer_bytes, out, overlap, 0, 1, 2, 3, lambda t: t, shard=shard)

    kept = validation_shard(out, 0, 1, 2, 3, overlap, tokenizer_bytes)
    assert len(kept.batches) == 3 and kept.counts[0] > 0
    fresh = score(None)
    assert fresh["val_windows"] == 6
    assert score(kept) == fresh and score(kept) == fresh  # a list, not a spent iterator
    assert validation_shard(out, 0, 1, 2, 0, overlap, tokenizer_bytes) is None  # unbounded: read at each evaluation

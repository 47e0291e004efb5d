"""`launch_training`: the checks before any rank starts, the configured launcher's run
(launchers/__init__.py), and the restarts from the latest complete checkpoint."""

from __future__ import annotations

import dataclasses
import logging

from horovod_llm import checkpoint, launchers, layout
from horovod_llm.config import RunConfig, validate
from horovod_llm.data.dataset import check_only_our_files
from horovod_llm.data.manifest import read_manifest
from horovod_llm.errors import JobFailed, UserError
from horovod_llm.launchers.horovod_env import horovod_mpi_built
from horovod_llm.spark import is_local
from horovod_llm.training import recipe
from horovod_llm.training.device import check_cuda_here
from horovod_llm.training.job import check_job, model_config
from horovod_llm.training.tracking import mlflow_missing
from horovod_llm.training.train import train_worker

log = logging.getLogger(__name__)


def check_device_here(config: RunConfig) -> None:
    """train.device=cuda refused at once where the ranks will run on this machine
    (local mode, horovodrun, the in-process rank) and it has no CUDA."""
    if not launchers.launcher(config.train.launcher).on_spark_tasks or is_local(config.spark.master):
        check_cuda_here(config.train.device)


def preflight(config: RunConfig) -> RunConfig:
    """The config with the recipe resolved for the dataset; refuse, in the driver and
    before any rank starts, what the ranks would refuse."""
    validate(config)  # a config built in code, not loaded, is checked here
    check_device_here(config)
    if config.tracking.mlflow_uri and (missing := mlflow_missing()):
        raise UserError(missing)  # the ranks would only warn and train untracked
    mpi_built = horovod_mpi_built(launchers.launcher(config.train.launcher))
    manifest = read_manifest(config.output_url)
    for split in layout.SPLITS:  # what every rank would refuse, refused once, here
        check_only_our_files(config.output_url, split)
    config = recipe.resolve(config, manifest.corpus.bytes)
    check_job(config, manifest, mpi_built)
    latest = checkpoint.checkpoint_to_resume(config.output_url, config.train.resume)
    if latest is not None:
        checkpoint.check_compatible(latest[1], dataclasses.asdict(model_config(config, manifest)), manifest.tokenizer.sha256)
    return config


def launch_training(config: RunConfig, spark=None) -> dict:
    """Train with the configured launcher; rank 0's result (with its summary).

    A failed job (a rank killed, a lost process) is started again from the latest
    complete checkpoint up to `train.max_restarts` times, as torchrun's --max-restarts
    does, so a lost rank costs at most `train.checkpoint_interval` steps.
    """
    config = preflight(config)
    launcher = launchers.launcher(config.train.launcher)
    restarts = config.train.max_restarts
    for attempt in range(restarts + 1):
        try:
            return launcher.run(train_worker, config, spark)
        except JobFailed as exc:
            if not exc.retryable or attempt == restarts:
                raise
            latest = checkpoint.complete_checkpoints(config.output_url)
            origin = f"checkpoint step {latest[-1][0]}" if latest else "the start"
            log.warning("training failed (%s); restart %d of %d from %s", exc, attempt + 1, restarts, origin)
            launcher.before_restart(config, spark, exc.lost_host)
    raise AssertionError("unreachable")

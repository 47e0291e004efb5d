"""TensorBoard events written while the run trains (rank 0), so that `tensorboard
--logdir {output_url}/stats/tensorboard` shows it live, and a killed run keeps its curves
up to its last log line.

A loop entry (a start, a resume, an elastic reset) opens a new event file that begins
with TensorBoard's purge marker at its first step: readers then drop what an earlier
file logged from that step on (the steps a killed run logged after its checkpoint, or
after the commit an elastic reset rolled back to), so that the curves continue the same
series with no step twice. Old files stay: TensorBoard servers already watching keep
them loaded, and the marker is how they learn to forget those steps.

On S3 the events are written to a local spool and uploaded at each `sync` (checkpoints,
elastic commits, the end): TensorBoard reads S3 only through extra plugins, and an
object store cannot be appended to.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from horovod_llm import storage

log = logging.getLogger(__name__)

STEP_SCALARS = {
    "train/loss": "loss",
    "train/accuracy": "accuracy",
    "train/grad_norm": "grad_norm",
    "train/lr": "lr",
    "perf/tokens_per_s": "tokens_per_s",
    "perf/step_time_s": "step_time_s",
    "perf/mfu": "mfu",
    "perf/allreduce_share": "allreduce_share",
    "perf/load_share": "load_share",
    "perf/peak_rss_mb": "peak_rss_mb",
    "perf/page_faults_per_step": "page_faults_per_step",
}
EVAL_SCALARS = {"val/loss": "val_loss", "val/perplexity": "val_perplexity", "val/accuracy": "val_accuracy", "val/nats_per_character": "val_nats_per_character"}
EPOCH_SCALARS = {"epoch/train_loss": "train_loss", "epoch/seconds": "seconds"}
# Seconds between the writer thread's own flushes; `flush` after each log line anyway.
FLUSH_SECONDS = 5


def tensorboard_url(stats_url: str) -> str:
    return storage.join(stats_url, "tensorboard")


def watch_hint(stats_url: str) -> str:
    """How to watch the run, for the log."""
    url = tensorboard_url(stats_url)
    if storage.is_remote(url):
        return f"aws s3 sync {url} ./tensorboard && tensorboard --logdir ./tensorboard (the events reach S3 at each checkpoint)"
    return f"tensorboard --logdir {url}"


class EventsWriter:
    """One event file for one loop entry, from `first_step` on."""

    def __init__(self, stats_url: str, first_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.url = tensorboard_url(stats_url)
        self.remote = storage.is_remote(self.url)
        if self.remote:
            self.folder = Path(tempfile.mkdtemp(prefix="horovod-llm-events-"))
        else:
            self.folder = Path(self.url)
            self.folder.mkdir(parents=True, exist_ok=True)
        # purge_step: readers drop earlier files' events from first_step on.
        self.writer = SummaryWriter(log_dir=str(self.folder), purge_step=first_step, flush_secs=FLUSH_SECONDS)

    def add(self, record: dict, scalars: dict[str, str]) -> None:
        for tag, key in scalars.items():
            value = record.get(key)
            if value is not None:
                self.writer.add_scalar(tag, value, record["step"])

    def flush(self) -> None:
        """Make what was added readable: on local disk, where TensorBoard reads it."""
        self.writer.flush()

    def sync(self) -> int:
        """Flush; on S3, upload this entry's event file whole. Returns the bytes sent."""
        self.writer.flush()
        if not self.remote:
            return 0
        sent = 0
        for path in self.folder.iterdir():
            data = path.read_bytes()
            storage.write_bytes(storage.join(self.url, path.name), data)
            sent += len(data)
        return sent

    def close(self) -> None:
        self.writer.close()
        if self.remote:
            shutil.rmtree(self.folder, ignore_errors=True)

"""Curves for people who never open the JSON: TensorBoard event files and PNG plots,
written at the end of training from the statistics records."""

from __future__ import annotations

import logging
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
    "perf/peak_rss_mb": "peak_rss_mb",
}
EVAL_SCALARS = {"val/loss": "val_loss", "val/perplexity": "val_perplexity", "val/accuracy": "val_accuracy"}


def write_tensorboard(stats_url: str, steps: list[dict], evals: list[dict]) -> None:
    """Event files under {stats_url}/tensorboard/ (written locally, then uploaded)."""
    from torch.utils.tensorboard import SummaryWriter

    with tempfile.TemporaryDirectory() as tmp:
        writer = SummaryWriter(log_dir=tmp)
        for records, scalars in ((steps, STEP_SCALARS), (evals, EVAL_SCALARS)):
            for record in records:
                for tag, key in scalars.items():
                    if record.get(key) is not None:
                        writer.add_scalar(tag, record[key], record["step"])
        writer.close()
        for path in Path(tmp).iterdir():
            storage.write_bytes(storage.join(stats_url, "tensorboard", path.name), path.read_bytes())


def write_plots(stats_url: str, steps: list[dict], evals: list[dict]) -> None:
    """One PNG with four panels: losses, learning rate, gradient norm, throughput."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training nodes
    import matplotlib.pyplot as plt

    x = [r["step"] for r in steps]
    figure, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    panels = [
        (axes[0, 0], "loss (nats/token)", [("train", "loss", steps)] + ([("validation", "val_loss", evals)] if evals else [])),
        (axes[0, 1], "learning rate", [("lr", "lr", steps)]),
        (axes[1, 0], "gradient norm (before clipping)", [("grad norm", "grad_norm", steps)]),
        (axes[1, 1], "throughput (tokens/s, all ranks)", [("tokens/s", "tokens_per_s", steps)]),
    ]
    for axis, title, series in panels:
        for label, key, records in series:
            axis.plot([r["step"] for r in records], [r[key] for r in records], marker="o" if records is evals else None, label=label)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if len(series) > 1:
            axis.legend()
    if x:
        axes[1, 0].set_yscale("log")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "training.png"
        figure.savefig(path, dpi=100)
        storage.write_bytes(storage.join(stats_url, "training.png"), path.read_bytes())
    plt.close(figure)


def write_curves(stats_url: str, steps: list[dict], evals: list[dict]) -> None:
    write_tensorboard(stats_url, steps, evals)
    write_plots(stats_url, steps, evals)
    log.info("curves written: %s (TensorBoard: tensorboard --logdir %s)", storage.join(stats_url, "training.png"), storage.join(stats_url, "tensorboard"))

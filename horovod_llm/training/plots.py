"""Curves for people who never open the JSON or TensorBoard's events (events.py): PNG
plots, drawn at the end of training from the statistics records."""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path

from horovod_llm import storage

log = logging.getLogger(__name__)


def import_in_background() -> None:
    """Import matplotlib (0.3 s) on a thread beside the first training steps, where the
    loop's budget absorbs it, so that the curves at the end start drawing at once: every
    rank waits for rank 0's curves before the job ends."""
    threading.Thread(target=_import_pyplot, name="import-matplotlib", daemon=True).start()


def _import_pyplot() -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on training nodes
    import matplotlib.pyplot  # noqa: F401


def write_plots(stats_url: str, steps: list[dict], evals: list[dict]) -> None:
    """One PNG with four panels: losses, learning rate, gradient norm, throughput."""
    _import_pyplot()  # at once when import_in_background has done it
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
    log.info("curves written: %s", storage.join(stats_url, "training.png"))

"""Training statistics under {output_url}/stats: steps.jsonl (per logged step),
evals.jsonl (per evaluation), epochs.jsonl (per epoch) and summary.json; and the other
outputs of a finished run (model.zip, the curves).

Only the logging rank writes; the others get a `NullStats`, which keeps `if rank == 0`
out of the training loop. Files are rewritten whole on each flush because object
stores cannot append; they stay small (one line per logged step).
"""

from __future__ import annotations

import json

from horovod_llm import layout, storage


class NullStats:
    def resume(self, step: int) -> None:
        pass

    def log_step(self, record: dict) -> None:
        pass

    def log_epoch(self, record: dict) -> None:
        pass

    def log_eval(self, record: dict) -> None:
        pass

    def write_summary(self, summary: dict) -> None:
        pass

    def flush(self) -> None:
        pass


class StatsWriter(NullStats):
    def __init__(self, output_url: str):
        self.root = layout.stats_url(output_url)
        self.steps: list[dict] = []
        self.epochs: list[dict] = []
        self.evals: list[dict] = []

    def resume(self, step: int) -> None:
        """Keep the records of an earlier run up to `step`, the checkpoint resumed from."""
        for name, records in self._files():
            url = storage.join(self.root, name)
            if storage.exists(url):
                records[:] = [r for r in map(json.loads, storage.read_text(url).splitlines()) if r["step"] <= step]

    def log_step(self, record: dict) -> None:
        self.steps.append(record)

    def log_epoch(self, record: dict) -> None:
        self.epochs.append(record)
        self.flush()

    def log_eval(self, record: dict) -> None:
        self.evals.append(record)

    def _files(self):
        return (("steps.jsonl", self.steps), ("epochs.jsonl", self.epochs), ("evals.jsonl", self.evals))

    def flush(self) -> None:
        for name, records in self._files():
            storage.write_text(storage.join(self.root, name), "".join(json.dumps(r) + "\n" for r in records))

    def write_summary(self, summary: dict) -> None:
        self.flush()
        storage.write_json(storage.join(self.root, "summary.json"), summary)


def write_run_outputs(stats: StatsWriter, summary: dict, checkpoint_url: str, output_url: str) -> None:
    """The end of a run (rank 0): the final model as one self-contained file (weights,
    config, tokenizer), the summary with the statistics, TensorBoard events and plots."""
    from horovod_llm import checkpoint
    from horovod_llm.plots import write_curves

    summary["model_zip_url"] = storage.join(output_url, checkpoint.MODEL_ZIP)
    checkpoint.export_model_zip(checkpoint_url, summary["model_zip_url"])
    stats.write_summary(summary)
    write_curves(layout.stats_url(output_url), stats.steps, stats.evals)

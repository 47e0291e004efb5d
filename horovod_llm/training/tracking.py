"""MLflow tracking (tracking.mlflow_uri, or MLFLOW_TRACKING_URI): rank 0 logs the
resolved config as params, every step record, evaluation and epoch as metrics against
the step, where and how the run ran as tags, and its outputs as artifacts.

Tracking never stops training. The run is opened when the loop starts (one request,
with MLflow's retries kept short); metrics then go through a queue to a thread that
sends them in batches, so a slow or vanished server costs the loop nothing. The first
failure warns once, and tracking is off for the rest of the run.

The MLflow run's id is kept in every checkpoint (meta.json's `tracking`): a resumed run,
or the new rank 0 after an elastic reset, logs into the same MLflow run.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from horovod_llm import checkpoint, layout, storage
from horovod_llm.redaction import redact_urls, redacted_dict

log = logging.getLogger(__name__)

# MLflow's HTTP retries (7, with a backoff that doubles) could hold the loop's start for
# minutes against a server that is down: a few seconds instead, unless the user set them.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# MLflow's limits per log_batch call, and per param value.
MAX_BATCH_METRICS = 1000
MAX_BATCH_PARAMS = 100
MAX_PARAM_CHARS = 6000
# How long the end of a run waits for queued metrics and artifacts to be sent.
DRAIN_SECONDS = 60.0


def mlflow_missing() -> str | None:
    """Why tracking cannot run in this process, or None."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        return "tracking.mlflow_uri is set but MLflow is not installed: pip install 'horovod-llm[mlflow]', or unset tracking.mlflow_uri"
    return None


def checkpointed_run_id(output_url: str) -> str | None:
    """The MLflow run id the latest complete checkpoint recorded."""
    complete = checkpoint.complete_checkpoints(output_url)
    if not complete:
        return None
    meta = storage.read_json(storage.join(complete[-1][1], "meta.json"))
    return (meta.get("tracking") or {}).get("mlflow_run_id")


def flat_params(config) -> dict[str, str]:
    """The resolved config, secrets redacted, as MLflow params: `train.batch_size`."""
    flat: dict[str, str] = {}

    def walk(value, prefix: str) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(item, f"{prefix}.{key}" if prefix else str(key))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            flat[prefix] = text[:MAX_PARAM_CHARS]

    walk(redacted_dict(config), "")
    return flat


def git_commit() -> str | None:
    """This package's commit, where it runs from a git checkout; None elsewhere (a wheel)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """Where the run's page is, on a tracking server; the store's path and ids elsewhere."""
    if uri.startswith(("http://", "https://")):
        return f"{redact_urls(uri.rstrip('/'))}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{redact_urls(uri)} (experiment {experiment_id}, run {run_id})"


class NullTracker:
    """Tracking off (no URI, or MLflow missing where the rank runs): nothing to send."""

    run_id: str | None = None

    def log(self, record: dict, scalars: dict[str, str]) -> None:
        pass

    def finish(self, output_url: str, summary: dict) -> None:
        pass

    def close(self) -> None:
        pass


class MlflowTracker(NullTracker):
    """One loop entry's tracking on rank 0. `start` opens (or reopens) the run."""

    def __init__(self, uri: str):
        from mlflow.tracking import MlflowClient

        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.failed = False
        self.queue: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None

    def _failure(self, what: str, exc: Exception) -> None:
        if not self.failed:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            log.warning("MLflow tracking at %s failed to %s (%s): training goes on without it", redact_urls(self.uri), what, first)
        self.failed = True

    def start(self, config, run_id: str | None, step: int, tags: dict[str, str]) -> None:
        """Open the run (`run_id`'s, else a new one), with the config as params and `tags`."""
        from mlflow.entities import Param, RunTag

        tracking = config.tracking
        try:
            run = self._existing(run_id) if run_id is not None else None
            if run is not None:
                self.client.update_run(run_id, status="RUNNING")
                logged = run.data.params
            else:
                experiment = self.client.get_experiment_by_name(tracking.experiment)
                experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(tracking.experiment)
                name = tracking.run_name or storage.normalize(config.output_url).rstrip("/").rsplit("/", 1)[-1]
                run = self.client.create_run(experiment_id, run_name=name)
                logged = {}
            self.run_id, experiment_id = run.info.run_id, run.info.experiment_id
            params = flat_params(config)
            # Params are immutable in MLflow: a resume logs the new keys, and the values it
            # changed (train.max_steps, say) as one tag.
            new = [Param(k, v) for k, v in params.items() if k not in logged]
            changed = {k: v for k, v in params.items() if k in logged and logged[k] != v}
            all_tags = {**tags, **({f"horovod_llm.params_changed_at_step_{step}": json.dumps(changed)} if changed else {})}
            for start in range(0, len(new), MAX_BATCH_PARAMS):
                self.client.log_batch(self.run_id, params=new[start : start + MAX_BATCH_PARAMS])
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in all_tags.items()])
        except Exception as exc:  # tracking never stops training
            self._failure("open the run", exc)
            return
        log.info("MLflow run: %s", run_url(self.uri, experiment_id, self.run_id))
        self.thread = threading.Thread(target=self._send, name="mlflow", daemon=True)
        self.thread.start()

    def _existing(self, run_id: str):
        """The checkpoint's MLflow run, or None where this server does not know it (the
        run was deleted, or tracking.mlflow_uri names another server): a new run then."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            log.warning("MLflow run %s, which the checkpoint names, is not on %s: logging into a new run", run_id, redact_urls(self.uri))
            return None

    def log(self, record: dict, scalars: dict[str, str]) -> None:
        if self.thread is None or self.failed:
            return
        stamp = int(record.get("time", time.time()) * 1000)
        self.queue.put(("metrics", [(tag, float(record[key]), stamp, int(record["step"])) for tag, key in scalars.items() if record.get(key) is not None]))

    def _send(self) -> None:
        """The sending thread, in queue order: metrics batched with those queued behind
        them, then the end's artifacts, then stop."""
        from mlflow.entities import Metric

        pending = None
        while True:
            kind, payload = pending or self.queue.get()
            pending = None
            if kind == "stop":
                return
            if self.failed:
                continue
            try:
                if kind == "metrics":
                    metrics = list(payload)
                    while len(metrics) < MAX_BATCH_METRICS:  # what else waits goes along
                        try:
                            item = self.queue.get_nowait()
                        except queue.Empty:
                            break
                        if item[0] != "metrics":
                            pending = item  # next, after these are sent
                            break
                        metrics.extend(item[1])
                    for start in range(0, len(metrics), MAX_BATCH_METRICS):
                        self.client.log_batch(self.run_id, metrics=[Metric(*m) for m in metrics[start : start + MAX_BATCH_METRICS]])
                else:
                    payload()
            except Exception as exc:
                self._failure("log", exc)

    def finish(self, output_url: str, summary: dict) -> None:
        """After the run's outputs are written: summary.json, training.png and model.zip
        as artifacts (model.zip on S3 as a link tag: it can be large), the run FINISHED."""
        if self.thread is None:
            return
        stats = layout.stats_url(output_url)
        model_zip = summary.get("model_zip_url")

        def upload() -> None:
            with tempfile.TemporaryDirectory() as tmp:
                for url in (storage.join(stats, "summary.json"), storage.join(stats, "training.png")):
                    if storage.exists(url):
                        self.client.log_artifact(self.run_id, str(storage.copy_to_local(url, Path(tmp) / Path(url).name)))
            if model_zip and not storage.is_remote(model_zip):
                self.client.log_artifact(self.run_id, model_zip)
            elif model_zip:
                self.client.set_tag(self.run_id, "horovod_llm.model_zip_url", model_zip)
            self.client.set_terminated(self.run_id, "FINISHED")

        self.queue.put(("call", upload))

    def close(self) -> None:
        """Send what is queued (bounded: a gone server was given up on already), then stop."""
        if self.thread is None:
            return
        self.queue.put(("stop", None))
        self.thread.join(DRAIN_SECONDS)
        if self.thread.is_alive():
            log.warning("MLflow tracking: %d record(s) still unsent after %.0f s; left behind", self.queue.qsize(), DRAIN_SECONDS)


def start_tracking(config, step: int, run_id: str | None, tags: dict[str, str]) -> NullTracker:
    """Rank 0's tracker for a loop entry: MLflow where tracking.mlflow_uri is set."""
    uri = config.tracking.mlflow_uri
    if not uri:
        return NullTracker()
    missing = mlflow_missing()
    if missing:
        log.warning("%s; training goes on without tracking", missing)
        return NullTracker()
    tracker = MlflowTracker(uri)
    tracker.start(config, run_id or checkpointed_run_id(config.output_url), step, tags)
    return tracker

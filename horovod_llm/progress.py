"""What a person sees on a terminal while long steps run: one progress bar, with the
log lines scrolling above it; and nothing but plain log lines anywhere else.

- Preprocessing: a bar over the Spark tasks of the named step that runs, fed by a daemon
  thread polling the SparkContext's status tracker. Spark's own console bar is off
  (spark.py): it draws over whatever line the log is on, from the JVM, and its carriage
  returns end up in log files.
- Training: rank 0 draws a bar with the step, loss and time left, where its output
  reaches the terminal as it is written: local mode's ranks (Spark tasks whose output
  Horovod forwards at every carriage return or newline, each piece prefixed with
  `[rank]<stderr>:`) and the in-process rank. Under horovodrun (whose output the driver
  reads line by line) and on a cluster (output collected in chunks) ranks log plain lines.
- A log record on a terminal goes through `log.TerminalHandler`: it erases the line it
  lands on, where another process's bar may be drawn, and writes with tqdm.write, which
  lifts this process's bar out of the way and draws it again below.

The config's `progress`: null (the default) draws bars only when stderr is a terminal;
true always; false never.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from tqdm import tqdm

log = logging.getLogger(__name__)

# Seconds between two polls of Spark's status tracker, and between two draws of the
# training bar (a draw is a line's worth of output, through two pipes in local mode).
POLL_SECONDS = 0.5
DRAW_SECONDS = 0.5
# Room for Horovod's `[rank]<stderr>:` before a rank's bar: a bar that fills the line
# would wrap, and tqdm's erasing of it would leave the wrapped half behind.
RANK_PREFIX_ROOM = 14

# Bars on the driver's stderr: the CLI decides (library callers get none); a rank follows
# the `progress` of the config it is given.
_shown = False


def is_terminal(stream) -> bool:
    """Whether `stream` is a terminal that bars can redraw: not a file or a pipe, and not
    a dumb terminal (an editor's shell buffer), which prints escapes as they are."""
    return stream.isatty() and os.environ.get("TERM", "") != "dumb"


def wants_bars(setting: bool | None, on_terminal: bool) -> bool:
    """The config's `progress` resolved: null means bars only on a terminal."""
    return on_terminal if setting is None else setting


def enable(on: bool) -> None:
    """Set by the CLI together with `setup_logging(progress=on)`: bars are drawn only where
    log records go through the handler that keeps them off a bar's line."""
    global _shown
    _shown = on


def rank_setting(output_is_live: bool) -> bool:
    """The `progress` the ranks get: a bar on rank 0 only where the driver draws bars and
    the ranks' output reaches its terminal as it is written."""
    return _shown and output_is_live


# -- Spark stages ----------------------------------------------------------------------


def stage_progress(stages: Sequence) -> tuple[int, int, str]:
    """(tasks done, tasks in all, what runs) over the active stages: pyspark's
    SparkStageInfo rows. No stage: the driver itself works (training the tokenizer or
    Word2Vec, writing files)."""
    if not stages:
        return 0, 0, "on the driver"
    ids = sorted(s.stageId for s in stages)
    total = sum(s.numTasks for s in stages)
    done = sum(min(s.numCompletedTasks, s.numTasks) for s in stages)
    running = sum(s.numActiveTasks for s in stages)
    named = f"stage {ids[0]}" if len(ids) == 1 else "stages " + ", ".join(map(str, ids))
    return done, total, f"{named}, {running} running"


# The bar while tasks run, and the line while only the driver works (tqdm's `{postfix}`
# comes with its ", ").
STAGE_BAR = "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} tasks{postfix} [{elapsed}]"
DRIVER_LINE = "{desc}{postfix} [{elapsed}]"


class _StageBar:
    """A tqdm bar over the tasks of one named step, redrawn by a polling thread."""

    def __init__(self, tracker, label: str, interval: float):
        self.tracker, self.interval = tracker, interval
        self.bar = tqdm(desc=label, total=0, bar_format=DRIVER_LINE, postfix="starting", file=sys.stderr, leave=False, dynamic_ncols=sys.stderr.isatty())
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._poll, name="spark-progress", daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        from py4j.protocol import Py4JError

        while not self.stopped.wait(self.interval):
            try:
                stages = [info for info in map(self.tracker.getStageInfo, self.tracker.getActiveStageIds()) if info is not None]
            except Py4JError as exc:  # the JVM went away: the step fails on its own thread
                log.debug("Spark's status tracker stopped answering: %s", str(exc).splitlines()[0][:200])
                return
            done, total, postfix = stage_progress(stages)
            self.bar.bar_format = STAGE_BAR if total else DRIVER_LINE
            self.bar.total, self.bar.n = total, done
            self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.bar.close()


@contextmanager
def spark_step(context, label: str, interval: float = POLL_SECONDS) -> Iterator[None]:
    """A bar over the Spark tasks that run inside the block, named `label`; nothing when
    bars are off, or when the user turned Spark's own console bar back on (two bars
    would draw over each other)."""
    if not _shown or context.getConf().get("spark.ui.showConsoleProgress", "false").lower() == "true":
        yield
        return
    bar = _StageBar(context.statusTracker(), label, interval)
    try:
        yield
    finally:
        bar.close()


# -- training --------------------------------------------------------------------------


def training_fraction(step: int, total_steps: int | None, budget_fraction: float) -> float:
    """How far the run is, by whichever ends it first: the steps or the budget."""
    by_steps = step / total_steps if total_steps else 0.0
    return min(max(by_steps, budget_fraction), 1.0)


def training_text(step: int, total_steps: int | None, loss: float | None, remaining: str) -> str:
    """The bar's text, as the step log lines say it: `step 120/500, loss 3.210, eta 1m12s`."""
    parts = [f"step {step}" + (f"/{total_steps}" if total_steps else "")]
    if loss is not None:
        parts.append(f"loss {loss:.3f}")
    return ", ".join([*parts, remaining])


TRAINING_BAR = "{desc} {percentage:3.0f}%|{bar}| {text}"


class _TextBar(tqdm):
    """A tqdm bar with a `{text}` field: tqdm's own `{postfix}` always starts with ", ".
    (tqdm documents overriding format_dict to add fields to bar_format.)"""

    text = "starting"

    @property
    def format_dict(self):
        return {**super().format_dict, "text": self.text}


class NullTrainingBar:
    """What the other ranks (and every rank without a terminal) get."""

    def show(self, step: int, fraction: float, remaining: str, *, force: bool = False) -> None:
        pass

    def set_loss(self, loss: float) -> None:
        pass


class TrainingBar(NullTrainingBar):
    """Rank 0's bar: steps, the last logged loss, and the time left (the step lines'
    countdown). Drawn at most every DRAW_SECONDS."""

    def __init__(self, total_steps: int | None, stream=None):
        stream = sys.stderr if stream is None else stream
        terminal = stream.isatty()
        # A rank's stderr is a pipe even when its output reaches a terminal: the width is
        # COLUMNS's, else 80, less room for Horovod's prefix.
        ncols = None if terminal else max(shutil.get_terminal_size((80, 24)).columns - RANK_PREFIX_ROOM, 40)
        self.total_steps, self.loss, self.drawn_at = total_steps, None, 0.0
        self.bar = _TextBar(desc="train", total=1.0, bar_format=TRAINING_BAR, file=stream, leave=False, ncols=ncols, dynamic_ncols=terminal)

    def set_loss(self, loss: float) -> None:
        self.loss = loss

    def show(self, step: int, fraction: float, remaining: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.drawn_at < DRAW_SECONDS:
            return
        self.drawn_at = now
        self.bar.n = fraction
        self.bar.text = training_text(step, self.total_steps, self.loss, remaining)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


@contextmanager
def training_bar(shown: bool, total_steps: int | None) -> Iterator[NullTrainingBar]:
    """Rank 0's bar while the block runs (`shown`), else one that draws nothing."""
    if not shown:
        yield NullTrainingBar()
        return
    bar = TrainingBar(total_steps)
    try:
        yield bar
    finally:
        bar.close()

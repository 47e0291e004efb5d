"""The terminal's progress display (progress.py, log.TerminalHandler): when bars are
drawn, what they say, and that log records never share a line with one."""

import io
import logging
import re
import sys
import time

import pytest
from pyspark.status import SparkStageInfo

from horovod_llm import progress
from horovod_llm.config import SparkConfig, load_config
from horovod_llm.errors import UserError
from horovod_llm.log import CurrentStderrHandler, TerminalHandler
from horovod_llm.spark import session_settings
from tests.terminal import render

RECORD = re.compile(r"^\d\d:\d\d:\d\d INFO horovod_llm\.test: ")


def bars_on(monkeypatch) -> io.StringIO:
    """Bars enabled, as the CLI does on a terminal; stderr is a buffer. Called in the test
    itself: pytest puts its own sys.stderr back between a fixture and the test."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(progress, "_shown", True)
    return stream


@pytest.mark.parametrize(
    ("setting", "on_terminal", "bars"),
    [(None, True, True), (None, False, False), (True, False, True), (True, True, True), (False, True, False), (False, False, False)],
)
def test_null_means_bars_only_on_a_terminal(setting, on_terminal, bars):
    assert progress.wants_bars(setting, on_terminal) is bars


class Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_a_file_a_pipe_or_a_dumb_terminal_is_no_terminal(monkeypatch):
    monkeypatch.setenv("TERM", "xterm-256color")
    assert progress.is_terminal(Stream(tty=True))
    assert not progress.is_terminal(Stream(tty=False))
    monkeypatch.setenv("TERM", "dumb")  # an editor's shell: escapes would print as text
    assert not progress.is_terminal(Stream(tty=True))


def test_ranks_draw_only_where_the_driver_does_and_their_output_is_live(monkeypatch):
    monkeypatch.setattr(progress, "_shown", True)
    assert progress.rank_setting(output_is_live=True) is True
    assert progress.rank_setting(output_is_live=False) is False  # horovodrun, a cluster
    monkeypatch.setattr(progress, "_shown", False)
    assert progress.rank_setting(output_is_live=True) is False


def test_the_setting_is_a_boolean_or_null():
    assert load_config(None).progress is None
    # YAML's on and off are booleans: they work, as true and false do.
    assert load_config(None, ["progress=on"]).progress is True
    assert load_config(None, ["progress=false"]).progress is False
    with pytest.raises(UserError, match="progress: Value 'auto' is not a valid bool"):
        load_config(None, ["progress=auto"])


def test_spark_console_bar_is_off_unless_the_user_turns_it_on():
    assert session_settings(SparkConfig())["spark.ui.showConsoleProgress"] == "false"
    assert session_settings(SparkConfig(conf={"spark.ui.showConsoleProgress": "true"}))["spark.ui.showConsoleProgress"] == "true"
    assert session_settings(SparkConfig(), {"spark.ui.showConsoleProgress": "true"})["spark.ui.showConsoleProgress"] == "true"


def stage(stage_id, tasks, running, done):
    return SparkStageInfo(stage_id, 0, f"collect at preprocess.py:{stage_id}", tasks, running, done, 0)


def test_stage_progress_counts_the_tasks_of_the_running_stages():
    assert progress.stage_progress([stage(20, 8, 2, 3)]) == (3, 8, "stage 20, 2 running")
    assert progress.stage_progress([stage(21, 4, 1, 0), stage(20, 8, 2, 3)]) == (3, 12, "stages 20, 21, 3 running")
    # Retried or speculative tasks can complete twice: never more than all of them.
    assert progress.stage_progress([stage(5, 2, 0, 3)]) == (2, 2, "stage 5, 0 running")
    assert progress.stage_progress([]) == (0, 0, "on the driver")


def test_training_fraction_follows_whichever_ends_the_run_first():
    assert progress.training_fraction(10, 40, 0.0) == 0.25
    assert progress.training_fraction(10, None, 0.6) == 0.6  # only the budget
    assert progress.training_fraction(10, 40, 0.6) == 0.6  # the budget runs out first
    assert progress.training_fraction(30, 40, 0.1) == 0.75
    assert progress.training_fraction(41, 40, 0.0) == 1.0


def test_training_text_reads_as_the_step_lines():
    assert progress.training_text(12, 40, 5.6104, "eta 0m03s") == "step 12/40, loss 5.610, eta 0m03s"
    assert progress.training_text(120, None, None, "2m12s of budget left") == "step 120, 2m12s of budget left"


def test_training_bar_draws_steps_and_time_left_then_clears():
    stream = io.StringIO()
    bar = progress.TrainingBar(40, stream=stream)
    bar.set_loss(5.61)
    bar.show(12, 0.3, "eta 0m03s", force=True)
    assert re.search(r"train  30%\|.*\| step 12/40, loss 5\.610, eta 0m03s", stream.getvalue())
    assert "\n" not in stream.getvalue()  # a bar redraws its line
    bar.show(13, 0.325, "eta 0m03s")  # within DRAW_SECONDS: not drawn
    assert "step 13/40" not in stream.getvalue()
    bar.close()
    assert render(stream.getvalue()) == [""]


def test_no_bar_writes_nothing(capsys):
    with progress.training_bar(False, 40) as bar:
        bar.set_loss(1.0)
        bar.show(1, 0.1, "eta 0m03s", force=True)
    assert capsys.readouterr().err == ""


def emit(handler, message):
    handler.handle(logging.LogRecord("horovod_llm.test", logging.INFO, __file__, 1, message, None, None))


def test_log_records_never_share_a_line_with_a_bar(monkeypatch):
    stderr = bars_on(monkeypatch)
    handler = TerminalHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    bar = progress.TrainingBar(40, stream=sys.stderr)
    try:
        bar.show(4, 0.1, "eta 0m09s", force=True)
        emit(handler, "step 4/40 | loss 5.6")
        bar.show(8, 0.2, "eta 0m08s", force=True)
        emit(handler, "checkpoint written")
        screen = render(stderr.getvalue())
        assert RECORD.match(screen[0]) and screen[0].endswith("step 4/40 | loss 5.6")
        assert RECORD.match(screen[1]) and screen[1].endswith("checkpoint written")
        assert re.match(r"train  20%\|.*\| step 8/40, eta 0m08s$", screen[2])  # drawn again below
    finally:
        bar.close()  # an open bar would push the next test's bar a line down
    assert render(stderr.getvalue())[2] == ""

    # The control: another process's bar on the line (this process's tqdm cannot lift
    # it); the record erases it first. A plain handler's record lands after it instead.
    sys.stderr.write("\r[0]<stderr>:train  50%|#####     | step 20/40")
    emit(handler, "from the driver")
    assert RECORD.match(render(stderr.getvalue())[2])
    sys.stderr.write("\r[0]<stderr>:train  50%|#####     | step 20/40")
    plain = CurrentStderrHandler()
    plain.setFormatter(handler.formatter)
    emit(plain, "glued to the bar")
    assert render(stderr.getvalue())[3].startswith("[0]<stderr>:train  50%|")


class FakeTracker:
    """Spark's status tracker while a stage of 8 tasks runs: one more done per poll."""

    def __init__(self):
        self.polls = 0

    def getActiveStageIds(self):
        self.polls += 1
        return [20] if self.polls > 1 else []

    def getStageInfo(self, stage_id):
        done = min(self.polls, 8)
        return stage(stage_id, 8, min(2, 8 - done), done)


class FakeContext:
    def __init__(self, conf=None):
        self.tracker, self.conf = FakeTracker(), conf or {}

    def statusTracker(self):
        return self.tracker

    def getConf(self):
        return self.conf


def wait_for(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert condition()


def test_spark_step_shows_the_tasks_of_the_running_stage_then_clears(monkeypatch):
    stderr = bars_on(monkeypatch)
    context = FakeContext()
    with progress.spark_step(context, "preprocess: encode train windows", interval=0.01):
        wait_for(lambda: context.tracker.polls >= 5)
        wait_for(lambda: "tasks, stage 20" in stderr.getvalue())
    output = stderr.getvalue()
    assert "preprocess: encode train windows, starting" in output
    assert re.search(r"preprocess: encode train windows +\d+%\|.*\| [1-8]/8 tasks, stage 20, [0-2] running \[00:0\d\]", output)
    assert "\n" not in output
    polls = context.tracker.polls
    time.sleep(0.05)
    assert context.tracker.polls == polls  # the thread stopped with the step
    assert render(output) == [""]


def test_spark_step_draws_nothing_when_bars_are_off_or_spark_draws_its_own(monkeypatch):
    stderr = bars_on(monkeypatch)
    own_bar = FakeContext({"spark.ui.showConsoleProgress": "true"})
    with progress.spark_step(own_bar, "preprocess: read", interval=0.01):
        time.sleep(0.05)
    monkeypatch.setattr(progress, "_shown", False)
    off = FakeContext()
    with progress.spark_step(off, "preprocess: read", interval=0.01):
        time.sleep(0.05)
    assert stderr.getvalue() == ""
    assert own_bar.tracker.polls == off.tracker.polls == 0

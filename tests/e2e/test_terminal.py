"""`horovod-llm run` on a terminal, as a person sees it (issue 16): one progress bar at a
time (a stage's tasks while preprocessing, rank 0's steps while training), none of
Spark's, and every log line whole on a line of its own."""

import os
import re
import sys

import pytest

from tests.conftest import TINY_CONFIG
from tests.terminal import render, run_in_terminal

pytestmark = [pytest.mark.spark, pytest.mark.horovod]

# A log record as log.setup_logging formats it; a rank's behind Horovod's `[0]<stderr>:`.
RECORD = re.compile(r"\d\d:\d\d:\d\d (?:DEBUG|INFO|WARNING|ERROR) (?:\[rank \d+\] )?horovod_llm[\w.]*: ")
WHOLE_LINE = re.compile(r"^(?:\[\d+\]<stderr>:)?(" + RECORD.pattern + r".*)$")


def test_run_on_a_terminal_shows_one_bar_and_whole_log_lines(tmp_path, tiny_corpus):
    out = tmp_path / "run"
    # As a terminal emulator sets them (a CI runner's TERM may be dumb); the width is the
    # pseudo-terminal's.
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "TERM": "xterm-256color"}
    env.pop("COLUMNS", None)
    status, written = run_in_terminal(
        [sys.executable, "-m", "horovod_llm.cli", "run", "--config", str(TINY_CONFIG), f"output_url={out}", f"data.input_url={tiny_corpus}"],
        env=env,
        timeout=600,
    )
    assert status == 0, written[-4000:]
    assert "[Stage " not in written  # Spark's console bar

    # tqdm's bars: a preprocessing stage's tasks (polled every 0.5 s; the corpus stage
    # alone runs for seconds), then rank 0's steps, forwarded by Horovod.
    assert re.search(r"\rpreprocess: [a-zA-Z ]+ +\d+%\|[^\r\n]*\| \d+/\d+ tasks, stages? \d+", written), written[-4000:]
    assert re.search(r"\[0\]<stderr>:train +\d+%\|[^\r\n]*\| step \d/8", written), written[-4000:]

    # Every record written appears, whole and in order, as a line of the screen; no bar
    # is left on it.
    screen = render(written)
    records = re.findall(r"(" + RECORD.pattern + r"[^\r\n]*)\r?\n", written)
    on_screen = [match.group(1) for line in screen if (match := WHOLE_LINE.match(line))]
    assert on_screen == records
    assert not [line for line in screen if RECORD.search(line) and not WHOLE_LINE.match(line)]
    assert not [line for line in screen if "%|" in line]
    for expected in (
        "horovod_llm.data.preprocess: corpus: 3 files",
        "horovod_llm.training.loop: step 8/8 | epoch 0 | loss ",
        "horovod_llm.training.loop: checkpoint written",
    ):
        assert any(expected in line for line in on_screen), expected
    assert any(line.startswith("--- sample from") for line in screen)
